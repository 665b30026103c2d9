//! Splice mode (CRIU's default pre-dump): while the target is frozen, its present
//! pages are referenced into pipes by `vmsplice` calls run *inside* the target
//! (one injected call per pipe of up to 1024 iovecs); after thaw the pipes are
//! spliced into the pages image.
//!
//! The pipes belong to the target only for the few injected calls that fill
//! them: each is made with an injected `pipe2`, its read end taken with
//! `pidfd_getfd`, filled, and both of the target's ends closed at once, so the
//! target never holds more than two extra fds and keeps none. What the pipes
//! reference is pinned until drained: splice mode's cost in memory.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, splice, FcntlArg, SpliceFFlags};

use crate::drain::{self, MAX_IOVS};
use crate::freeze::Frozen;
use crate::inject::{Injector, PidFd};
use crate::{Error, PageRange, Result, PAGE_SIZE};

/// The pipe size asked for; without CAP_SYS_RESOURCE the kernel stops at
/// /proc/sys/fs/pipe-max-size (1 MiB by default).
const WANTED_PIPE_BYTES: usize = 4 << 20;
const SPLICE_F_NONBLOCK: u64 = 0x02;
const SPLICE_F_GIFT: u64 = 0x08;

/// Pages referenced into pipes, waiting to be drained.
pub struct Pinned {
    /// Our read ends, in address order, with the regions each one holds.
    pipes: Vec<(File, Vec<PageRange>)>,
    pub pinned_bytes: u64,
    pub pipe_bytes: usize,
    pub pages_gone: u64,
    pub inject_time: Duration,
    pub injected_calls: u64,
}

impl Pinned {
    pub fn pipes(&self) -> usize {
        self.pipes.len()
    }
}

/// Why splice mode could not be used; the caller falls back to read mode.
#[derive(Debug)]
pub struct Refused {
    pub reason: String,
}

/// References `ranges` (sorted) of the frozen process into pipes. `Ok(Err(_))`:
/// the kernel or a seccomp filter refuses vmsplice; nothing is left in the target.
pub fn reference(
    frozen: &Frozen,
    ranges: &[PageRange],
) -> Result<std::result::Result<Pinned, Refused>> {
    let started = Instant::now();
    let pid = frozen.pid();
    let pidfd = PidFd::open(pid)?;
    let mut inj = Injector::new(frozen, pid)?;
    let iov_area = inj.scratch((MAX_IOVS * 16) as u64)?;
    let mut pinned = Pinned {
        pipes: Vec::new(),
        pinned_bytes: 0,
        pipe_bytes: 0,
        pages_gone: 0,
        inject_time: Duration::ZERO,
        injected_calls: 1,
    };

    // The first pipe tells how large a pipe may be; the batches follow from it.
    let first = make_pipe(&mut inj, &pidfd, None, &mut pinned.injected_calls)?;
    pinned.pipe_bytes = first.2;
    if let Err(e) = raise_nofile_limit(ranges, pinned.pipe_bytes) {
        close_in_target(&mut inj, first.1, &mut pinned.injected_calls)?;
        return Err(e);
    }
    let mut spare = Some(first);
    for batch in drain::batches(ranges, MAX_IOVS, pinned.pipe_bytes as u64) {
        let (ours, target_fds, _) = match spare.take() {
            Some(p) => p,
            None => make_pipe(
                &mut inj,
                &pidfd,
                Some(pinned.pipe_bytes),
                &mut pinned.injected_calls,
            )?,
        };
        let filled = fill_pipe(
            &mut inj,
            target_fds[1],
            iov_area,
            &batch,
            &mut pinned.injected_calls,
        );
        close_in_target(&mut inj, target_fds, &mut pinned.injected_calls)?;
        match filled? {
            Fill::Refused(errno) => {
                inj.restore()?;
                return Ok(Err(Refused {
                    reason: format!("vmsplice in the target failed: {}", errno.desc()),
                }));
            }
            Fill::Done { regions, gone } => {
                pinned.pinned_bytes += regions.iter().map(|r| r.len()).sum::<u64>();
                pinned.pages_gone += gone;
                pinned.pipes.push((File::from(ours), regions));
            }
        }
    }
    if let Some((_, target_fds, _)) = spare {
        close_in_target(&mut inj, target_fds, &mut pinned.injected_calls)?;
    }
    inj.restore()?;
    pinned.inject_time = started.elapsed();
    Ok(Ok(pinned))
}

/// An injected pipe2, sized from our side (`size`, or as large as allowed);
/// returns our copy of the read end, the target's fds, and the pipe's real size.
/// On failure the target's fds are closed again.
fn make_pipe(
    inj: &mut Injector,
    pidfd: &PidFd,
    size: Option<usize>,
    calls: &mut u64,
) -> Result<(OwnedFd, [i32; 2], usize)> {
    *calls += 1;
    let fds = inj.pipe2(libc::O_CLOEXEC)?;
    let made = pidfd.get_fd(fds[0]).and_then(|ours| {
        let bytes = match size {
            None => grow_pipe(&ours)?,
            Some(bytes) => {
                fcntl(&ours, FcntlArg::F_SETPIPE_SZ(bytes as i32))
                    .map_err(|e| Error::sys("F_SETPIPE_SZ", e))?;
                bytes
            }
        };
        Ok((ours, bytes))
    });
    match made {
        Ok((ours, bytes)) => Ok((ours, fds, bytes)),
        Err(e) => {
            close_in_target(inj, fds, calls)?;
            Err(e)
        }
    }
}

/// Closes both of the target's ends of a pipe: one close_range when they are
/// adjacent (the usual case: pipe2 takes the lowest free fds).
fn close_in_target(inj: &mut Injector, fds: [i32; 2], calls: &mut u64) -> Result<()> {
    let (lo, hi) = (fds[0].min(fds[1]), fds[0].max(fds[1]));
    if hi == lo + 1 {
        *calls += 1;
        inj.syscall_ok(libc::SYS_close_range, &[lo as u64, hi as u64, 0])?;
    } else {
        *calls += 2;
        inj.close(lo)?;
        inj.close(hi)?;
    }
    Ok(())
}

/// Raises a pipe to the largest size allowed; returns its real size (a power of
/// two of pages, as the kernel rounds).
fn grow_pipe(fd: &OwnedFd) -> Result<usize> {
    let want = WANTED_PIPE_BYTES as i32;
    if let Err(Errno::EPERM) = fcntl(fd, FcntlArg::F_SETPIPE_SZ(want)) {
        let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .filter(|&m| m < want);
        if let Some(max) = max {
            // EPERM again (the user's pipe quota): keep the default size.
            let _ = fcntl(fd, FcntlArg::F_SETPIPE_SZ(max));
        }
    }
    let size = fcntl(fd, FcntlArg::F_GETPIPE_SZ).map_err(|e| Error::sys("F_GETPIPE_SZ", e))?;
    Ok(size as usize)
}

/// One read end per pipe stays open in this process until drained: make sure
/// the soft limit on open files allows them.
fn raise_nofile_limit(ranges: &[PageRange], pipe_bytes: usize) -> Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let bytes: u64 = ranges.iter().map(|r| r.len()).sum();
    let pipes = bytes.div_ceil(pipe_bytes as u64) + ranges.len() as u64 / MAX_IOVS as u64 + 1;
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| Error::sys("getrlimit", e))?;
    let need = pipes + 256; // what the process has open already, with room
    if need <= soft {
        return Ok(());
    }
    if need > hard {
        return Err(Error::InvalidArgument(format!(
            "splice mode needs {pipes} pipes but the open-file limit is {hard}: raise it (ulimit -n) or use read mode"
        )));
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(|e| Error::sys("setrlimit", e))
}

enum Fill {
    Done { regions: Vec<PageRange>, gone: u64 },
    Refused(Errno),
}

/// vmsplice of one batch into the target's pipe end `wfd`. Every byte must move:
/// a short count (a page unreadable although the scan saw it present) skips that
/// one page and goes on with the rest.
fn fill_pipe(
    inj: &mut Injector,
    wfd: i32,
    iov_area: u64,
    batch: &[PageRange],
    calls: &mut u64,
) -> Result<Fill> {
    let mut rest: Vec<PageRange> = batch.to_vec();
    let mut regions: Vec<PageRange> = Vec::new();
    let mut gone = 0;
    while !rest.is_empty() {
        let mut iov = Vec::with_capacity(rest.len() * 16);
        for r in &rest {
            iov.extend_from_slice(&r.start.to_ne_bytes());
            iov.extend_from_slice(&r.len().to_ne_bytes());
        }
        inj.write_memory(iov_area, &iov)?;
        *calls += 1;
        let n = inj.syscall(
            libc::SYS_vmsplice,
            &[
                wfd as u64,
                iov_area,
                rest.len() as u64,
                SPLICE_F_GIFT | SPLICE_F_NONBLOCK,
            ],
        )?;
        if n < 0 {
            let errno = Errno::from_raw(-n as i32);
            return match errno {
                Errno::EOPNOTSUPP | Errno::EPERM | Errno::ENOSYS | Errno::EACCES => {
                    Ok(Fill::Refused(errno))
                }
                // The first page at the cursor cannot be referenced: skip it.
                Errno::EFAULT => {
                    gone += 1;
                    advance(&mut rest, &mut Vec::new(), 1);
                    continue;
                }
                e => Err(Error::sys(
                    "vmsplice in the target",
                    std::io::Error::from(e),
                )),
            };
        }
        let pages = n as u64 / PAGE_SIZE;
        advance(&mut rest, &mut regions, pages);
        if !rest.is_empty() {
            gone += 1;
            advance(&mut rest, &mut Vec::new(), 1);
        }
    }
    Ok(Fill::Done { regions, gone })
}

/// Moves `pages` pages from the front of `rest` to the end of `done` (merged).
fn advance(rest: &mut Vec<PageRange>, done: &mut Vec<PageRange>, mut pages: u64) {
    while pages > 0 && !rest.is_empty() {
        let r = rest[0];
        let take = r.pages.min(pages);
        let moved = PageRange::new(r.start, take);
        match done.last_mut() {
            Some(last) if last.end() == moved.start => last.pages += take,
            _ => done.push(moved),
        }
        if take == r.pages {
            rest.remove(0);
        } else {
            rest[0] = PageRange::new(r.start + take * PAGE_SIZE, r.pages - take);
        }
        pages -= take;
    }
}

/// Splices every pipe into `out`, in order; returns the regions written and the
/// time it took. `progress` counts bytes done.
pub fn drain_pipes(
    pinned: Pinned,
    out: &File,
    progress: Option<&std::sync::atomic::AtomicU64>,
) -> Result<(Vec<PageRange>, Duration)> {
    let started = Instant::now();
    let mut regions: Vec<PageRange> = Vec::new();
    for (pipe, held) in pinned.pipes {
        let mut left: usize = held.iter().map(|r| r.len() as usize).sum();
        while left > 0 {
            match splice(
                pipe.as_fd(),
                None,
                out.as_fd(),
                None,
                left,
                SpliceFFlags::SPLICE_F_MOVE,
            ) {
                Ok(0) => {
                    return Err(Error::sys(
                        "splicing a pipe into the pages image",
                        std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                    ))
                }
                Ok(n) => {
                    left -= n;
                    if let Some(p) = progress {
                        p.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                Err(Errno::EINTR) => {}
                Err(e @ (Errno::ENOSPC | Errno::EDQUOT)) => {
                    return Err(Error::NoSpace {
                        path: format!("pages image ({e})"),
                    })
                }
                Err(e) => return Err(Error::sys("splicing a pipe into the pages image", e)),
            }
        }
        for r in held {
            match regions.last_mut() {
                Some(last) if last.end() == r.start => last.pages += r.pages,
                _ => regions.push(r),
            }
        }
    }
    Ok((regions, started.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_moves_and_merges() {
        let mut rest = vec![PageRange::new(0x1000, 2), PageRange::new(0x3000, 3)];
        let mut done = Vec::new();
        advance(&mut rest, &mut done, 3);
        assert_eq!(done, vec![PageRange::new(0x1000, 3)]);
        assert_eq!(rest, vec![PageRange::new(0x4000, 2)]);
        advance(&mut rest, &mut Vec::new(), 1);
        assert_eq!(rest, vec![PageRange::new(0x5000, 1)]);
    }
}
