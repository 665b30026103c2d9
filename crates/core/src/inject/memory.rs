//! The target's memory as the injector uses it: the scratch mapping it owns
//! in the target, and reads and writes of the target's memory
//! (process_vm_readv/writev).

use std::io::{self, IoSlice, IoSliceMut};

use nix::sys::uio::{process_vm_readv, process_vm_writev, RemoteIoVec};
use nix::unistd::Pid;

use super::leftovers::{self, Leftover, SCRATCH_MARK};
use super::{arch, Injector, STUB_MAGIC};
use crate::{Error, Result, PAGE_SIZE};

impl<'f> Injector<'f> {
    /// A read-write scratch mapping of at least `len` bytes in the target, owned by
    /// this Injector and unmapped by `restore`. A larger request replaces it.
    /// (One more page, the injector's own, follows the caller's part.)
    pub fn scratch(&mut self, len: u64) -> Result<u64> {
        let need = len.max(1).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        if let Some((addr, have)) = self.scratch {
            if have - PAGE_SIZE >= need {
                return Ok(addr);
            }
            if self.lifeline.is_some()
                || !self
                    .journal
                    .iter()
                    .all(|e| matches!(e, Leftover::Mapping { .. }))
            {
                return Err(Error::InvalidArgument(
                    "the scratch mapping cannot grow once it holds fds of ours".into(),
                ));
            }
            self.munmap(addr, have)?;
            self.forget(&Leftover::Mapping { addr, len: have })?;
            self.scratch = None;
        }
        // The address is chosen, and journaled, before the call; the mapping
        // counts as ours only once marked (see `leftovers`). The stub unmaps
        // it again if the thread gets past the call, which it does only if
        // predump is gone: then it was never marked. At the exit stop predump
        // marks it, and only then gives the thread its next call.
        let len = need + PAGE_SIZE;
        let at = leftovers::free_range(self.pid, len)?;
        self.note(Leftover::Mapping { addr: at, len })?;
        let r = self.run_single(
            libc::SYS_mmap,
            &[
                at,
                len,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64,
                u64::MAX,
                0,
            ],
            0,
            len,
        )?;
        if r as u64 != at {
            self.forget(&Leftover::Mapping { addr: at, len })?;
            let errno = if r < 0 { -r as i32 } else { libc::EEXIST };
            return Err(self.call_error(libc::SYS_mmap, errno));
        }
        self.scratch = Some((at, len));
        let mut mark = STUB_MAGIC.to_vec();
        mark.extend_from_slice(&self.nonce);
        self.write_memory(at + need + SCRATCH_MARK, &mark)?;
        self.disarm()?;
        self.fd_words = 0;
        Ok(at)
    }

    /// Takes the scratch mmap's undo out of the thread, which waits at the
    /// mmap's exit stop: a thread let go from there with the mmap's registers
    /// unmaps what the mmap made (the stub's undo, for a predump dead before
    /// the mark), and the mapping is soon more than a marked range: it holds
    /// what the journal names (the fd lists a cleaning run journals in it,
    /// dropping the dead run's entries in the same write). Disarmed, a dead
    /// predump's thread runs a getpid and the epilogue from here. Marked, then
    /// disarmed: a kill in between unmaps a mapping that names nothing yet.
    /// (Before, a cleaning run killed between its journal write and its first
    /// close left the dead run's fds named only inside a mapping the stub had
    /// just unmapped: the "known gap" of the kill tests.)
    pub(super) fn disarm(&mut self) -> Result<()> {
        let mut regs = self.regs;
        arch::set_single(&mut regs, self.stub, libc::SYS_getpid, &[0; 6], 0, 0);
        arch::set_regs(self.tid, &regs).map_err(|e| self.os("setting the registers", e))
    }

    /// The journal entry of the scratch mapping, if there is one.
    pub(crate) fn scratch_entry(&self) -> Option<Leftover> {
        self.scratch
            .map(|(addr, len)| Leftover::Mapping { addr, len })
    }

    /// Writes `data` into the target's memory at `addr` (process_vm_writev: the
    /// page protections apply, so this cannot scribble over read-only memory).
    pub fn write_memory(&self, addr: u64, data: &[u8]) -> Result<()> {
        write_memory(self.pid, addr, data)
    }

    /// Reads the target's memory at `addr` into `buf`.
    pub fn read_memory(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        read_memory(self.pid, addr, buf)
    }
}

/// Writes into a process's memory with process_vm_writev.
pub fn write_memory(pid: i32, addr: u64, data: &[u8]) -> Result<()> {
    remote_io(pid, addr, data.len(), "writing", |done, remote| {
        process_vm_writev(Pid::from_raw(pid), &[IoSlice::new(&data[done..])], remote)
    })
}

/// Reads a process's memory with process_vm_readv.
pub fn read_memory(pid: i32, addr: u64, buf: &mut [u8]) -> Result<()> {
    let len = buf.len();
    remote_io(pid, addr, len, "reading", |done, remote| {
        process_vm_readv(
            Pid::from_raw(pid),
            &mut [IoSliceMut::new(&mut buf[done..])],
            remote,
        )
    })
}

/// The loop of [`write_memory`] and [`read_memory`]: `call(done, remote)` moves
/// the bytes from offset `done` on (`remote` is where they are in the process)
/// and says how many it moved. A call that moves none is EFAULT; ESRCH means
/// the process exited.
pub(super) fn remote_io(
    pid: i32,
    addr: u64,
    len: usize,
    verb: &str,
    mut call: impl FnMut(usize, &[RemoteIoVec]) -> nix::Result<usize>,
) -> Result<()> {
    let mut done = 0;
    while done < len {
        let remote = [RemoteIoVec {
            base: (addr + done as u64) as usize,
            len: len - done,
        }];
        let e = match call(done, &remote) {
            Ok(0) => io::Error::from_raw_os_error(libc::EFAULT),
            Ok(n) => {
                done += n;
                continue;
            }
            Err(nix::errno::Errno::ESRCH) => return Err(Error::TargetExited { pid }),
            Err(e) => e.into(),
        };
        return Err(Error::sys(
            format!(
                "{verb} {} bytes at {:#x} in process {pid}",
                len - done,
                addr + done as u64
            ),
            e,
        ));
    }
    Ok(())
}
