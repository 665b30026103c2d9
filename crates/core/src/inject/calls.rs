//! The system calls predump runs in the target, one typed method each, on
//! top of `Injector::syscall` (`mmap`, `pipe2`, `close`, `close_range`, ...).

use super::leftovers::{FdKind, Leftover};
use super::memory::read_memory;
use super::{Injector, MAX_ERRNO, NOT_RUN};
use crate::Result;

impl<'f> Injector<'f> {
    pub fn getpid(&mut self) -> Result<i32> {
        Ok(self.syscall_ok(libc::SYS_getpid, &[])? as i32)
    }

    /// An anonymous or other fd-less mapping in the target (fd -1, offset 0).
    pub fn mmap(&mut self, len: u64, prot: i32, flags: i32) -> Result<u64> {
        let r = self.syscall_ok(
            libc::SYS_mmap,
            &[0, len, prot as u32 as u64, flags as u32 as u64, u64::MAX, 0],
        )?;
        Ok(r as u64)
    }

    pub fn munmap(&mut self, addr: u64, len: u64) -> Result<()> {
        self.syscall_ok(libc::SYS_munmap, &[addr, len])?;
        Ok(())
    }

    /// pipe2 in the target: returns [read end, write end] as the target's fds.
    /// The kernel writes the two fds into our scratch mapping (never the
    /// thread's stack: the memory below a Go goroutine's stack pointer is
    /// another goroutine's).
    pub fn pipe2(&mut self, flags: i32) -> Result<[i32; 2]> {
        let at = self.scratch(8)?;
        // Journaled before the call: the kernel writes the fds there.
        self.write_memory(at, &[0xff; 8])?;
        self.note(Leftover::FdPair {
            addr: at,
            kind: FdKind::Pipe,
        })?;
        self.syscall_ok(libc::SYS_pipe2, &[at, flags as u32 as u64])?;
        let mut b = [0u8; 8];
        self.read_memory(at, &mut b)?;
        Ok([
            i32::from_ne_bytes(b[0..4].try_into().unwrap()),
            i32::from_ne_bytes(b[4..8].try_into().unwrap()),
        ])
    }

    /// close in the target. A journaled fd is journaled as being closed, with
    /// the slot where the stub stores close's result, before the call; a later
    /// run then knows exactly whether it ran (see `leftovers`).
    pub fn close(&mut self, fd: i32) -> Result<()> {
        let kind = FdKind::of_fd(self.pid, fd);
        let closing = match (self.own_page(), kind) {
            (Some(own), Some(kind)) => {
                let done = self.done_slot(own);
                self.write_memory(done, &NOT_RUN.to_ne_bytes())?;
                let c = Leftover::Closing { fd, kind, done };
                self.note(c)?;
                Some(c)
            }
            _ => None,
        };
        self.scrub(fd)?;
        let done = match closing {
            Some(Leftover::Closing { done, .. }) => done,
            _ => 0,
        };
        let r = self.run_single(libc::SYS_close, &[fd as u32 as u64, 0, 0, 0, 0, 0], done, 0)?;
        if let Some(c) = closing {
            self.forget(&c)?;
        }
        if (-MAX_ERRNO..0).contains(&r) {
            return Err(self.call_error(libc::SYS_close, -r as i32));
        }
        Ok(())
    }

    /// Takes fd `fd` out of the journal before it is closed (see `scrub_all`).
    pub fn scrub(&mut self, fd: i32) -> Result<()> {
        self.scrub_all(&[fd])
    }

    /// Takes `fds` out of the journal: a later run must never close a number
    /// the target may have reused. Where the kernel wrote them (a socketpair's
    /// or pipe2's pair, a received cmsg) they become -1.
    pub fn scrub_all(&mut self, fds: &[i32]) -> Result<()> {
        let before = self.journal.len();
        let pid = self.pid;
        self.journal.retain(|e| match *e {
            Leftover::Fd { fd, .. } => !fds.contains(&fd),
            Leftover::FdWord { addr, .. } => {
                let mut b = [0u8; 8];
                let v = read_memory(pid, addr, &mut b).map(|()| i64::from_ne_bytes(b));
                !v.is_ok_and(|v| fds.iter().any(|&fd| fd as i64 == v))
            }
            _ => true,
        });
        if self.journal.len() != before {
            self.write_journal()?;
        }
        for e in self.journal.clone() {
            let (addr, len) = match e {
                Leftover::FdPair { addr, .. } => (addr, 8),
                Leftover::FdCmsg { addr, .. } => (addr, 16 + 4 * 253),
                _ => continue,
            };
            let mut b = vec![0u8; len];
            if self.read_memory(addr, &mut b).is_err() {
                continue;
            }
            let (start, end) = if len == 8 {
                (0, 8)
            } else {
                let clen = u64::from_ne_bytes(b[..8].try_into().unwrap()) as usize;
                (16, clen.clamp(16, len) / 4 * 4)
            };
            let mut changed = false;
            for at in (start..end).step_by(4) {
                if fds.contains(&i32::from_ne_bytes(b[at..at + 4].try_into().unwrap())) {
                    b[at..at + 4].copy_from_slice(&(-1i32).to_ne_bytes());
                    changed = true;
                }
            }
            if changed {
                self.write_memory(addr + start as u64, &b[start..end])?;
            }
        }
        Ok(())
    }

    /// close_range(first, last) in the target, journaled as `close` is.
    pub fn close_range(&mut self, first: i32, last: i32, kind: FdKind) -> Result<()> {
        let fds: Vec<i32> = (first..=last).collect();
        let closing = match self.own_page() {
            Some(own) => {
                let done = self.done_slot(own);
                self.write_memory(done, &NOT_RUN.to_ne_bytes())?;
                let c = Leftover::ClosingRange {
                    first,
                    last,
                    kind,
                    done,
                };
                self.note(c)?;
                Some((c, done))
            }
            None => None,
        };
        self.scrub_all(&fds)?;
        let done = closing.map_or(0, |(_, d)| d);
        let r = self.run_single(
            libc::SYS_close_range,
            &[first as u32 as u64, last as u32 as u64, 0, 0, 0, 0],
            done,
            0,
        )?;
        if let Some((c, _)) = closing {
            self.forget(&c)?;
        }
        if (-MAX_ERRNO..0).contains(&r) {
            return Err(self.call_error(libc::SYS_close_range, -r as i32));
        }
        Ok(())
    }

    pub fn fcntl(&mut self, fd: i32, cmd: i32, arg: u64) -> Result<i64> {
        self.syscall_ok(libc::SYS_fcntl, &[fd as u32 as u64, cmd as u32 as u64, arg])
    }
}
