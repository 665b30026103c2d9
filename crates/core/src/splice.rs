//! Splice mode (CRIU's default pre-dump): while the target is frozen, its present
//! pages are referenced into pipes by `vmsplice` calls run *inside* the target
//! (one vmsplice per pipe of up to 1024 iovecs); after thaw the pipes are
//! spliced into the pages image.
//!
//! The frozen window holds as little as possible. The pipes are made and sized
//! in predump's own process before the freeze (`Pipes::prepare`); while frozen,
//! their write ends reach the target 253 at a time (SCM_MAX_FD) over a datagram
//! socket pair whose one end we take from the target with pidfd_getfd, through
//! one injected `recvmsg`; then the group's `vmsplice` calls, one per pipe, as
//! one injected batch (a loop of ours in the target: one resume for all of
//! them), and one `close_range` per run of received fds. The target is left with no fd and no
//! mapping of ours. What the pipes reference is pinned until drained: splice
//! mode's cost in memory.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

use crate::drain::{self, MAX_IOVS};
use crate::freeze::Frozen;
use crate::inject::{Call, FdKind, Injector, Leftover, BATCH_ENTRY_BYTES};
use crate::pages_out::PagesOut;
use crate::sys::pidfd::PidFd;
use crate::{Error, PageRange, Result, PAGE_SIZE};

/// The pipe size asked for; without CAP_SYS_RESOURCE the kernel stops at
/// /proc/sys/fs/pipe-max-size (1 MiB by default).
const WANTED_PIPE_BYTES: usize = 4 << 20;
const SPLICE_F_NONBLOCK: u64 = 0x02;
const SPLICE_F_GIFT: u64 = 0x08;
/// The most fds one SCM_RIGHTS message carries (include/net/scm.h).
const SCM_MAX_FD: usize = 253;
/// Target fds kept free for the target's own use while we borrow some.
const FD_HEADROOM: usize = 16;

/// Scratch layout in the target: a control page (socketpair result, msghdr,
/// iovec, data byte, cmsg buffer), the iovec arrays of one group of pipes, room
/// for the iovecs of a retried vmsplice, and the table of a group's batch.
const CTL_PAIR: u64 = 0;
const CTL_MSGHDR: u64 = 64;
const CTL_IOVEC: u64 = 128;
const CTL_BYTE: u64 = 144;
const CTL_CMSG: u64 = 256;
const CTL_CMSG_LEN: u64 = 16 + 4 * SCM_MAX_FD as u64 + 4; // CMSG_SPACE(253 * 4)
const IOVS_AT: u64 = PAGE_SIZE;

/// Pipes made before the freeze: our read and write ends, and the pipe size.
pub struct Pipes {
    free: Vec<(OwnedFd, OwnedFd)>,
    pub pipe_bytes: usize,
}

impl Pipes {
    /// Makes pipes for about `bytes` of pages (the target's resident memory:
    /// more than will be dumped, as it counts file pages too), sized as large as
    /// allowed, and raises our open-file limit for them.
    pub fn prepare(bytes: u64) -> Result<Pipes> {
        let (r, w) = new_pipe()?;
        let pipe_bytes = grow_pipe(&w)?;
        let count = (bytes.div_ceil(pipe_bytes as u64) as usize).max(1) + 4;
        raise_nofile_limit(2 * count as u64)?;
        let mut free = Vec::with_capacity(count);
        free.push((r, w));
        for _ in 1..count {
            let (r, w) = new_pipe()?;
            fcntl(&w, FcntlArg::F_SETPIPE_SZ(pipe_bytes as i32))
                .map_err(|e| Error::sys("F_SETPIPE_SZ", e))?;
            free.push((r, w));
        }
        free.reverse(); // taken with pop(), in order
        Ok(Pipes { free, pipe_bytes })
    }

    /// Pipes for a whole tree, made before its freeze: about `bytes` of pages
    /// (at least one pipe), never more than `max_pipes`. Unlike [`Pipes::prepare`]
    /// a pipe that cannot be made (the open-file limit, the user's pipe quota)
    /// is no error past the first: the pool is smaller, and
    /// [`Pipes::reserve`] says so when a process needs more.
    pub fn prepare_pool(bytes: u64, max_pipes: usize) -> Result<Pipes> {
        let (r, w) = new_pipe()?;
        let pipe_bytes = grow_pipe(&w)?;
        let count = (bytes.div_ceil(pipe_bytes as u64) as usize)
            .max(1)
            .min(max_pipes.max(1));
        let mut pool = Pipes {
            free: vec![(r, w)],
            pipe_bytes,
        };
        let _ = pool.reserve(count);
        Ok(pool)
    }

    /// Makes pipes until `count` are free (none taken yet); the error of the
    /// first that could not be made, the pool keeping those that were.
    pub fn reserve(&mut self, count: usize) -> Result<()> {
        let mut made = Vec::new();
        let r = (|| {
            while self.free.len() + made.len() < count {
                let (r, w) = new_pipe()?;
                fcntl(&w, FcntlArg::F_SETPIPE_SZ(self.pipe_bytes as i32))
                    .map_err(|e| Error::sys("F_SETPIPE_SZ", e))?;
                made.push((r, w));
            }
            Ok(())
        })();
        // Taken with pop(): the new ones after those already waiting.
        made.reverse();
        made.append(&mut self.free);
        self.free = made;
        r
    }

    /// Pipes made and not taken yet (each holds two of our fds).
    pub fn spare(&self) -> usize {
        self.free.len()
    }

    /// How many pipes `ranges` take when referenced (see [`reference`]).
    pub fn needed(&self, ranges: &[PageRange]) -> usize {
        drain::batches(ranges, MAX_IOVS, self.pipe_bytes as u64).count()
    }

    /// The next pipe; made on the spot if the estimate fell short.
    fn take(&mut self) -> Result<(OwnedFd, OwnedFd)> {
        if let Some(p) = self.free.pop() {
            return Ok(p);
        }
        let (r, w) = new_pipe()?;
        fcntl(&w, FcntlArg::F_SETPIPE_SZ(self.pipe_bytes as i32))
            .map_err(|e| Error::sys("F_SETPIPE_SZ", e))?;
        Ok((r, w))
    }
}

fn new_pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))
}

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

/// How many fds the target can take: its soft RLIMIT_NOFILE less what it has
/// open, less headroom. Read before the freeze.
pub fn target_fd_room(pid: i32) -> Result<usize> {
    let limits = crate::proc::read_proc(pid, &format!("/proc/{pid}/limits"))?;
    let soft: usize = crate::proc::parse_nofile_soft(&limits)
        .unwrap_or(1024)
        .try_into()
        .unwrap_or(usize::MAX);
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    Ok(soft.saturating_sub(open + FD_HEADROOM))
}

/// References `ranges` (sorted) of the frozen process into `pipes`. `Ok(Err(_))`:
/// the kernel or a seccomp filter refuses vmsplice, or this architecture cannot
/// inject; nothing is left in the target.
pub fn reference(
    frozen: &Frozen,
    ranges: &[PageRange],
    pipes: &mut Pipes,
    fd_room: usize,
) -> Result<std::result::Result<Pinned, Refused>> {
    // Without injection (aarch64 where the vDSO leaves too little room for the
    // stub, as Debian's 6.1) the vmsplice calls cannot run in the target.
    if let Err(why) = crate::inject::supported() {
        return Ok(Err(Refused {
            reason: why.to_string(),
        }));
    }
    let started = Instant::now();
    let group_max = fd_room.clamp(1, SCM_MAX_FD);
    let batches: Vec<Vec<PageRange>> =
        drain::batches(ranges, MAX_IOVS, pipes.pipe_bytes as u64).collect();
    let iov_room = (group_max * MAX_IOVS * 16) as u64;
    let retry_at = IOVS_AT + iov_room;
    let table_at = retry_at + (MAX_IOVS * 16) as u64;

    let mut inj = Injector::any(frozen)?;
    let scratch = inj.scratch(table_at + group_max as u64 * BATCH_ENTRY_BYTES)?;
    let mut pinned = Pinned {
        pipes: Vec::with_capacity(batches.len()),
        pinned_bytes: 0,
        pipe_bytes: pipes.pipe_bytes,
        pages_gone: 0,
        inject_time: Duration::ZERO,
        injected_calls: 1, // the scratch mmap
    };
    let channel = Channel::open(&mut inj, scratch, &mut pinned.injected_calls)?;
    let outcome = reference_groups(
        &mut inj,
        &channel,
        Layout {
            scratch,
            retry: scratch + retry_at,
            table: scratch + table_at,
        },
        &batches,
        group_max,
        pipes,
        &mut pinned,
    );
    channel.close(&mut inj, &mut pinned.injected_calls)?;
    if let Some(errno) = outcome? {
        inj.restore()?;
        return Ok(Err(Refused {
            reason: format!("vmsplice in the target failed: {}", errno.desc()),
        }));
    }
    inj.restore()?;
    pinned.inject_time = started.elapsed();
    Ok(Ok(pinned))
}

/// Addresses in the target's scratch mapping.
#[derive(Clone, Copy)]
struct Layout {
    scratch: u64,
    /// The iovecs of a retried vmsplice.
    retry: u64,
    /// The batch table of one group's vmsplice calls.
    table: u64,
}

/// Sends pipes to the target group by group and vmsplices each batch into its
/// pipe. Returns the errno of a refused vmsplice.
fn reference_groups(
    inj: &mut Injector,
    channel: &Channel,
    at: Layout,
    batches: &[Vec<PageRange>],
    group_max: usize,
    pipes: &mut Pipes,
    pinned: &mut Pinned,
) -> Result<Option<Errno>> {
    let mut next = 0;
    while next < batches.len() {
        let group = &batches[next..batches.len().min(next + group_max)];
        let mut taken = Vec::with_capacity(group.len());
        for _ in group {
            taken.push(pipes.take()?);
        }
        let writes: Vec<i32> = taken.iter().map(|(_, w)| w.as_raw_fd()).collect();
        let target_fds = channel.pass(inj, at.scratch, &writes, &mut pinned.injected_calls)?;
        crate::test_hooks::inject_gate("splice-pipes-received")?;
        // The target may take fewer than sent (its fd limit): use what arrived.
        let used = target_fds.len();
        let outcome = fill_group(inj, at, &group[..used], &target_fds, pinned);
        close_runs(inj, &target_fds, &mut pinned.injected_calls)?;
        inj.forget(&Leftover::FdCmsg {
            addr: at.scratch + CTL_CMSG,
            kind: FdKind::Pipe,
        })?;
        let filled = match outcome? {
            Ok(filled) => filled,
            Err(errno) => return Ok(Some(errno)),
        };
        for ((r, _w), (regions, gone)) in taken.into_iter().zip(filled) {
            pinned.pinned_bytes += regions.iter().map(|r| r.len()).sum::<u64>();
            pinned.pages_gone += gone;
            pinned.pipes.push((File::from(r), regions));
        }
        next += used;
    }
    Ok(None)
}

/// The iovecs of a whole group in one write, then the group's vmsplice calls
/// (one per pipe) as one injected batch: the frozen time no longer grows with
/// ~10 ptrace requests per pipe. A pipe whose call fell short or failed is
/// finished call by call, and the batch goes on after it.
fn fill_group(
    inj: &mut Injector,
    at: Layout,
    group: &[Vec<PageRange>],
    target_fds: &[i32],
    pinned: &mut Pinned,
) -> Result<std::result::Result<Vec<Filled>, Errno>> {
    let mut iov = Vec::new();
    let mut calls = Vec::with_capacity(group.len());
    for (batch, &fd) in group.iter().zip(target_fds) {
        let iov_addr = at.scratch + IOVS_AT + iov.len() as u64;
        push_iovs(&mut iov, batch);
        calls.push(Call::new(
            libc::SYS_vmsplice,
            &[
                fd as u64,
                iov_addr,
                batch.len() as u64,
                SPLICE_F_GIFT | SPLICE_F_NONBLOCK,
            ],
        ));
    }
    inj.write_memory(at.scratch + IOVS_AT, &iov)?;
    let mut out = Vec::with_capacity(group.len());
    while out.len() < calls.len() {
        let first = out.len();
        let results = inj.batch(at.table, &calls[first..])?;
        if results.is_empty() {
            return Err(Error::sys(
                "vmsplice in the target",
                std::io::Error::other("the injected batch ran no call"),
            ));
        }
        pinned.injected_calls += results.len() as u64;
        for (i, &n) in (first..).zip(&results) {
            match fill_pipe(
                inj,
                target_fds[i],
                at.retry,
                &group[i],
                n,
                &mut pinned.injected_calls,
            )? {
                Fill::Done { regions, gone } => out.push((regions, gone)),
                Fill::Refused(errno) => return Ok(Err(errno)),
            }
        }
    }
    Ok(Ok(out))
}

fn push_iovs(iov: &mut Vec<u8>, batch: &[PageRange]) {
    for r in batch {
        iov.extend_from_slice(&r.start.to_ne_bytes());
        iov.extend_from_slice(&r.len().to_ne_bytes());
    }
}

/// A datagram socket pair between us and the target, for SCM_RIGHTS.
struct Channel {
    ours: OwnedFd,
    /// The target's end.
    theirs: i32,
}

impl Channel {
    /// Injected socketpair; we take one end and close it in the target.
    fn open(inj: &mut Injector, scratch: u64, calls: &mut u64) -> Result<Channel> {
        // Journaled before the call (the kernel writes the pair there), as one
        // fd by number once known; a closed end is never named.
        let pair_at = Leftover::FdPair {
            addr: scratch + CTL_PAIR,
            kind: FdKind::Socket,
        };
        inj.write_memory(scratch + CTL_PAIR, &[0xff; 8])?;
        inj.note(pair_at)?;
        *calls += 1;
        inj.syscall_ok(
            libc::SYS_socketpair,
            &[
                libc::AF_UNIX as u64,
                (libc::SOCK_DGRAM | libc::SOCK_CLOEXEC) as u64,
                0,
                scratch + CTL_PAIR,
            ],
        )?;
        let mut b = [0u8; 8];
        inj.read_memory(scratch + CTL_PAIR, &mut b)?;
        let pair = [
            i32::from_ne_bytes(b[0..4].try_into().expect("4 bytes")),
            i32::from_ne_bytes(b[4..8].try_into().expect("4 bytes")),
        ];
        let theirs = Leftover::Fd {
            fd: pair[1],
            kind: FdKind::Socket,
        };
        inj.note(theirs)?;
        let taken = PidFd::open(inj.pid()).and_then(|p| p.get_fd(pair[0]));
        *calls += 1;
        // The pair stays journaled until our end is closed: `close` journals
        // that end as being closed before it scrubs it from the pair.
        inj.close(pair[0])?;
        inj.forget(&pair_at)?;
        match taken {
            Ok(ours) => Ok(Channel {
                ours,
                theirs: pair[1],
            }),
            Err(e) => {
                *calls += 1;
                inj.close(pair[1])?;
                Err(e)
            }
        }
    }

    /// Sends `fds` (ours) and receives them in the target with one injected
    /// recvmsg; returns the target's fd numbers (possibly fewer, if the target
    /// ran out of fds: the kernel then closes the rest).
    fn pass(
        &self,
        inj: &mut Injector,
        scratch: u64,
        fds: &[i32],
        calls: &mut u64,
    ) -> Result<Vec<i32>> {
        let byte = [0u8; 1];
        let iov = [std::io::IoSlice::new(&byte)];
        sendmsg::<()>(
            self.ours.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(fds)],
            MsgFlags::empty(),
            None,
        )
        .map_err(|e| Error::sys("sendmsg of pipe fds", e))?;
        // struct msghdr and struct iovec in the target's scratch page.
        let mut ctl = vec![0u8; (CTL_CMSG + CTL_CMSG_LEN) as usize];
        let put = |buf: &mut [u8], at: u64, v: u64| {
            buf[at as usize..at as usize + 8].copy_from_slice(&v.to_ne_bytes())
        };
        put(&mut ctl, CTL_MSGHDR + 16, scratch + CTL_IOVEC); // msg_iov
        put(&mut ctl, CTL_MSGHDR + 24, 1); // msg_iovlen
        put(&mut ctl, CTL_MSGHDR + 32, scratch + CTL_CMSG); // msg_control
        put(&mut ctl, CTL_MSGHDR + 40, CTL_CMSG_LEN); // msg_controllen
        put(&mut ctl, CTL_IOVEC, scratch + CTL_BYTE); // iov_base
        put(&mut ctl, CTL_IOVEC + 8, 1); // iov_len
        inj.write_memory(scratch, &ctl)?;
        // The kernel writes the received fds into the (zeroed) cmsg buffer: a
        // run that dies from here on leaves them named there.
        inj.note(Leftover::FdCmsg {
            addr: scratch + CTL_CMSG,
            kind: FdKind::Pipe,
        })?;
        *calls += 1;
        inj.syscall_ok(
            libc::SYS_recvmsg,
            &[
                self.theirs as u64,
                scratch + CTL_MSGHDR,
                (libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) as u64,
            ],
        )?;
        inj.read_memory(scratch, &mut ctl)?;
        let word = |at: u64| {
            u64::from_ne_bytes(
                ctl[at as usize..at as usize + 8]
                    .try_into()
                    .expect("8 bytes"),
            )
        };
        let controllen = word(CTL_MSGHDR + 40);
        let cmsg_len = word(CTL_CMSG);
        if controllen < 16 || cmsg_len < 16 {
            return Err(Error::sys(
                "passing pipes to the target",
                std::io::Error::from_raw_os_error(libc::EMFILE),
            ));
        }
        let n = ((cmsg_len - 16) / 4) as usize;
        Ok((0..n)
            .map(|i| {
                let at = (CTL_CMSG + 16) as usize + 4 * i;
                i32::from_ne_bytes(ctl[at..at + 4].try_into().expect("4 bytes"))
            })
            .collect())
    }

    fn close(self, inj: &mut Injector, calls: &mut u64) -> Result<()> {
        *calls += 1;
        inj.close(self.theirs)
    }
}

/// Closes fds in the target: one close_range per run of consecutive numbers
/// (received fds take the lowest free numbers, so usually one run).
fn close_runs(inj: &mut Injector, fds: &[i32], calls: &mut u64) -> Result<()> {
    let mut sorted = fds.to_vec();
    sorted.sort_unstable();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        *calls += 1;
        inj.close_range(sorted[i], sorted[j], FdKind::Pipe)?;
        i = j + 1;
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

/// Raises our soft open-file limit to the hard one, and returns it: the most
/// fds a tree's splice mode may hold (see `tree_dump::splice`).
pub fn raise_nofile_to_hard() -> Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| Error::sys("getrlimit", e))?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(|e| Error::sys("setrlimit", e))?;
    }
    Ok(hard)
}

/// Both ends of every pipe stay open here until used: make sure the soft limit
/// on open files allows `fds` more.
fn raise_nofile_limit(fds: u64) -> Result<()> {
    use nix::sys::resource::{getrlimit, Resource};
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| Error::sys("getrlimit", e))?;
    let need = fds + 256; // what the process has open already, with room
    if need <= soft {
        return Ok(());
    }
    if need > hard {
        return Err(Error::InvalidArgument(format!(
            "splice mode needs {fds} pipe fds but the open-file limit is {hard}: raise it (ulimit -n) or use read mode"
        )));
    }
    raise_nofile_to_hard().map(drop)
}

/// What one pipe holds, and the pages that could not be referenced.
type Filled = (Vec<PageRange>, u64);

enum Fill {
    Done { regions: Vec<PageRange>, gone: u64 },
    Refused(Errno),
}

/// Takes the result `n` of the first vmsplice of `batch` into the target's
/// pipe end `wfd` and finishes the pipe. Every byte must move: a short count (a
/// page unreadable although the scan saw it present) skips that one page and
/// goes on with the rest, whose iovecs are written at `retry_addr`, one
/// injected call at a time (rare: the target is frozen, its pages stay).
fn fill_pipe(
    inj: &mut Injector,
    wfd: i32,
    retry_addr: u64,
    batch: &[PageRange],
    mut n: i64,
    calls: &mut u64,
) -> Result<Fill> {
    let mut rest: Vec<PageRange> = batch.to_vec();
    let mut regions: Vec<PageRange> = Vec::new();
    let mut gone = 0;
    loop {
        if n < 0 {
            let errno = Errno::from_raw(-n as i32);
            match errno {
                Errno::EOPNOTSUPP | Errno::EPERM | Errno::ENOSYS | Errno::EACCES => {
                    return Ok(Fill::Refused(errno))
                }
                // The first page at the cursor cannot be referenced: skip it.
                Errno::EFAULT => {
                    gone += 1;
                    advance(&mut rest, &mut Vec::new(), 1);
                }
                e => {
                    return Err(Error::sys(
                        "vmsplice in the target",
                        std::io::Error::from(e),
                    ))
                }
            }
        } else {
            advance(&mut rest, &mut regions, n as u64 / PAGE_SIZE);
            if !rest.is_empty() {
                gone += 1;
                advance(&mut rest, &mut Vec::new(), 1);
            }
        }
        if rest.is_empty() {
            return Ok(Fill::Done { regions, gone });
        }
        let mut iov = Vec::with_capacity(rest.len() * 16);
        push_iovs(&mut iov, &rest);
        inj.write_memory(retry_addr, &iov)?;
        *calls += 1;
        n = inj.syscall(
            libc::SYS_vmsplice,
            &[
                wfd as u64,
                retry_addr,
                rest.len() as u64,
                SPLICE_F_GIFT | SPLICE_F_NONBLOCK,
            ],
        )?;
    }
}

/// Moves `pages` pages from the front of `rest` to the end of `done` (merged).
fn advance(rest: &mut Vec<PageRange>, done: &mut Vec<PageRange>, mut pages: u64) {
    while pages > 0 && !rest.is_empty() {
        let r = rest[0];
        let take = r.pages.min(pages);
        crate::push_merged(done, r.start, take);
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
    out: &mut dyn PagesOut,
    progress: Option<&std::sync::atomic::AtomicU64>,
) -> Result<(Vec<PageRange>, Duration)> {
    let started = Instant::now();
    let mut regions: Vec<PageRange> = Vec::new();
    for (pipe, held) in pinned.pipes {
        let len: usize = held.iter().map(|r| r.len() as usize).sum();
        out.write_from_pipe(pipe.as_fd(), &held, len)
            .map_err(|(e, _)| e)?;
        if let Some(p) = progress {
            p.fetch_add(len as u64, std::sync::atomic::Ordering::Relaxed);
        }
        for r in held {
            crate::push_merged(&mut regions, r.start, r.pages);
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
