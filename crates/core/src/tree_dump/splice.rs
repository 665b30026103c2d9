//! Splice mode on a tree, as `criu pre-dump -t ROOT` (whose default it is)
//! runs it: inside the tree's one freeze, after every process was scanned and
//! its tracking taken, each process's pages are referenced into pipes by
//! vmsplice calls injected into it (`splice::reference`, one process after
//! the other on the tracer thread); the tree is thawed, then every process's
//! pipes are drained into its pages image (`copy::copy_all`).
//!
//! # Shared memory
//!
//! A tree's anonymous shared objects are not spliced: they are read through
//! their file after the thaw, as in read mode. A pre-dump's pages need not
//! be one instant's (the final dump, frozen throughout, is); what splice mode
//! buys is a shorter stop, and an object's pages, read through its file with
//! nothing injected, never stop the tree at all (their walk took 2.5 to 5 ms
//! of a 256 MiB object's stop: `copy_all`). Splicing them would also pin each
//! object whole until drained, and their comparison with the chain's copy
//! reads every page anyway.
//!
//! # What can be held
//!
//! Every page spliced stays pinned in a pipe until drained, and each pipe
//! keeps one of our fds open until then (both until it is used): a tree's
//! pipes are bounded by predump's open-file limit (the soft limit raised to
//! the hard one). The pool is made before the freeze for the processes'
//! anonymous resident memory; a process that needs more pipes than the pool
//! holds has them made in the freeze. A process whose pipes would pass the
//! limit, or for which no more pipes can be made (the user's pipe quota,
//! /proc/sys/fs/pipe-user-pages-*, for a user without CAP_SYS_RESOURCE), is
//! not spliced: its pages are copied after the thaw, as in read mode, and the
//! report says why (its `fallback`), as a single process's splice mode falls
//! back where vmsplice is refused. The pinned memory is the tree's own pages,
//! not copies of them (CRIU's pre-dump pins the whole tree's too); it costs
//! memory only for the pages a process frees before they are drained.

use std::time::{Duration, Instant};

use crate::drain::DrainStats;
use crate::predump::SpliceStats;
use crate::splice::{self, Pinned, Pipes};
use crate::tree::{FrozenTree, Member};
use crate::{Error, PageRange, Result};

use super::scan::Found;

/// Our fds kept free for everything else a run opens while the tree's pipes
/// are held (images, scanners, the page server's socket).
const FD_HEADROOM: usize = 64;

/// The tree's pipes, made before the freeze, and how many more fds they may take.
pub(super) struct TreePipes {
    pipes: Pipes,
    /// Our open-file limit.
    limit: u64,
    /// The fds still free below it (less the headroom).
    room: usize,
}

impl TreePipes {
    /// The pool for the anonymous resident memory of `members`, within our
    /// open-file limit (raised to the hard one).
    pub(super) fn prepare(members: &[Member]) -> Result<TreePipes> {
        let bytes: u64 = members.iter().map(|m| anon_resident(m.pid)).sum();
        let limit = splice::raise_nofile_to_hard()?;
        let room = |open: usize| {
            usize::try_from(limit)
                .unwrap_or(usize::MAX)
                .saturating_sub(open + FD_HEADROOM)
        };
        // Half of what is free at most goes to the pool (two fds a pipe):
        // what is left is for the pipes of processes that need more.
        let pipes = Pipes::prepare_pool(bytes, room(open_fds()?) / 4)?;
        let room = room(open_fds()?);
        Ok(TreePipes { pipes, limit, room })
    }
}

/// RssAnon of a process (0 if it cannot be read: it may be gone; the
/// freeze says so).
fn anon_resident(pid: i32) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    crate::proc::parse_status_field(&status, "RssAnon")
        .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn open_fds() -> Result<usize> {
    Ok(std::fs::read_dir("/proc/self/fd")
        .map_err(|e| Error::sys("reading /proc/self/fd", e))?
        .count())
}

/// What splice mode holds of one process at the thaw.
pub(super) enum Hold {
    /// Its pages in pipes, to drain.
    Pinned(Pinned),
    /// No page to copy: nothing was injected.
    Nothing,
    /// Not spliced (why): its pages are copied after the thaw, as in read mode.
    Read(String),
}

impl Hold {
    /// Its splice figures (None: not spliced).
    pub(super) fn stats(&self) -> Option<SpliceStats> {
        match self {
            Hold::Pinned(p) => Some(SpliceStats {
                pipes: p.pipes(),
                pipe_bytes: p.pipe_bytes,
                pinned_bytes: p.pinned_bytes,
                injected_calls: p.injected_calls,
                inject_time: p.inject_time,
            }),
            Hold::Nothing => Some(SpliceStats::default()),
            Hold::Read(_) => None,
        }
    }
}

/// References every process's chosen pages into pipes, in tree order, while
/// the tree is frozen; returns one [`Hold`] for each of `found` and the time
/// it took. A process that cannot be spliced falls back to read mode (see the
/// module's comment); one that is gone (killed while frozen) too, and its copy
/// then finds it gone (a partial pre-dump naming it). Any other failure fails
/// the run: what was pinned is dropped with it, and nothing is left in any
/// process (each injection restores its process, see `splice::reference`).
pub(super) fn hold_all(
    frozen: &FrozenTree,
    found: &[Found],
    pool: &mut TreePipes,
) -> Result<(Vec<Hold>, Duration)> {
    let started = Instant::now();
    let mut holds = Vec::with_capacity(found.len());
    for f in found {
        let p = frozen
            .get(f.member.pid)
            .expect("a scanned process is one of the frozen tree's");
        holds.push(hold_one(p, f, pool)?);
    }
    Ok((holds, started.elapsed()))
}

fn hold_one(p: &crate::freeze::Frozen, f: &Found, pool: &mut TreePipes) -> Result<Hold> {
    let ranges: &[PageRange] = &f.scan.ranges;
    if ranges.is_empty() {
        return Ok(Hold::Nothing);
    }
    // A thread still inside a dead run's stub needs it as it is (as for one
    // process, `predump::hold`).
    if f.in_stub {
        return Ok(Hold::Read(
            "a thread of it is still inside the injected code of a predump that died (is the \
             process stopped? continue it): nothing is injected until it has left it"
                .to_string(),
        ));
    }
    let needed = pool.pipes.needed(ranges);
    let spare = pool.pipes.spare();
    let new = needed.saturating_sub(spare);
    if 2 * new > pool.room {
        return Ok(Hold::Read(format!(
            "the tree's pages pinned in splice mode reached what predump's open-file limit \
             ({}) can hold ({new} more pipes needed): its pages are copied after the thaw, \
             as in read mode",
            pool.limit
        )));
    }
    let before = spare;
    if let Err(e) = pool.pipes.reserve(needed) {
        pool.room = pool
            .room
            .saturating_sub(2 * pool.pipes.spare().saturating_sub(before));
        return Ok(Hold::Read(format!(
            "no more pipes could be made for splice mode ({e}): its pages are copied after the \
             thaw, as in read mode"
        )));
    }
    pool.room = pool.room.saturating_sub(2 * new);
    let fd_room = match f.fd_room {
        Some(r) => r,
        None => match splice::target_fd_room(f.member.pid) {
            Ok(r) => r,
            Err(e) if gone(&e) => return Ok(Hold::Read(format!("it is gone ({e})"))),
            Err(e) => return Err(e),
        },
    };
    match splice::reference(p, ranges, &mut pool.pipes, fd_room) {
        Ok(Ok(pinned)) => {
            // Each pipe used closed its write end.
            pool.room += pinned.pipes();
            Ok(Hold::Pinned(pinned))
        }
        Ok(Err(refused)) => Ok(Hold::Read(refused.reason)),
        Err(e) if gone(&e) => Ok(Hold::Read(format!("it is gone ({e})"))),
        Err(e) => Err(e),
    }
}

fn gone(e: &Error) -> bool {
    matches!(e, Error::NoSuchProcess { .. } | Error::TargetExited { .. })
}

/// Drains one process's pipes into `out`: the regions written, and the
/// drain's figures as read mode's copy gives them.
pub(super) fn drain(
    pinned: Pinned,
    pages_present: u64,
    out: &mut dyn crate::pages_out::PagesOut,
    progress: Option<&std::sync::atomic::AtomicU64>,
) -> Result<(Vec<PageRange>, DrainStats)> {
    let gone = pinned.pages_gone;
    let pipe_bytes = pinned.pipe_bytes;
    let (regions, write_time) = splice::drain_pipes(pinned, out, progress)?;
    let written: u64 = regions.iter().map(|r| r.pages).sum();
    Ok((
        regions,
        DrainStats {
            pages_requested: pages_present,
            pages_written: written,
            pages_gone: gone,
            bytes_written: written * crate::PAGE_SIZE,
            write_time,
            buffer_bytes: pipe_bytes,
            ..Default::default()
        },
    ))
}
