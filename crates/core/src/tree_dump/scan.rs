//! What is read of a tree's processes while it is frozen (maps, present pages,
//! the shared objects opened), scanned on threads of its own: split out of
//! `tree_dump` to keep the phases' file short.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::freeze::Urgent;
use crate::maps::{self, VmFlags, Vma};
use crate::scan::{self, Scanner};
use crate::shmem::{self, NotDumped, SharedKind};
use crate::tree::{FrozenTree, Member};
use crate::tree_track::{self, Chosen, TreeTracking};
use crate::{proc, Result};

/// What is read of a process before the tree is frozen (slow: smaps walks every
/// page table), keyed by pid and start time.
pub(super) struct Prepared {
    vm_flags: HashMap<(u64, u64), VmFlags>,
    scanner: Scanner,
    tracked: bool,
    /// Splice mode: how many fds it can take (`splice::target_fd_room`).
    fd_room: Option<usize>,
}

/// What is read of `pid` before the freeze; in splice mode (`splice`) its
/// room for our pipes' fds too.
pub(super) fn prepare(pid: i32, splice: bool) -> Result<Prepared> {
    let smaps = proc::read_proc(pid, &format!("/proc/{pid}/smaps"))?;
    Ok(Prepared {
        vm_flags: maps::parse_smaps_flags(&smaps)?,
        scanner: Scanner::open(pid)?,
        tracked: crate::track::find_ours(pid)?.is_some(),
        fd_room: match splice {
            true => Some(crate::splice::target_fd_room(pid)?),
            false => None,
        },
    })
}

/// One process as found while frozen.
pub(super) struct Found {
    pub(super) member: Member,
    pub(super) threads: usize,
    pub(super) vm_flags: HashMap<(u64, u64), VmFlags>,
    /// What tracking chose (None: no tracking asked).
    pub(super) chosen: Option<Chosen>,
    pub(super) scanner: Scanner,
    pub(super) scan: scan::ScanResult,
    pub(super) vmas: Vec<Vma>,
    pub(super) leftovers_removed: Option<String>,
    pub(super) tracked: bool,
    /// How many fds it can take (None: not read before the freeze).
    pub(super) fd_room: Option<usize>,
    /// A thread of it is inside a dead run's injected code: nothing may be
    /// injected (splice mode falls back to read for it).
    pub(super) in_stub: bool,
}

/// A shared object of the tree, opened while it was frozen.
pub(super) type FoundObject = (shmem::Object, shmem::Handle);

/// Everything read while the tree is frozen: each process's present pages, the
/// tree's shared objects (opened; their pages are found when they are copied,
/// see `copy_all`), and the shared mappings left out.
pub(super) fn scan_frozen(
    frozen: &FrozenTree,
    prepared: &mut HashMap<(i32, u64), Prepared>,
    tracking: Option<&TreeTracking>,
) -> Result<(Vec<Found>, Vec<FoundObject>, Vec<NotDumped>)> {
    // A dead run's leftovers must not be scanned: the scan looks for its
    // marker (one small read per process, on the scan threads); the few
    // marked processes are cleaned here, by this thread (the tracer: removing
    // them injects calls), and scanned again.
    let mut jobs = Vec::with_capacity(frozen.processes().len());
    for p in frozen.processes() {
        jobs.push(Job {
            member: p.member.clone(),
            threads: p.frozen.tids().count(),
            prepared: prepared.remove(&(p.member.pid, p.member.start_time)),
            leftovers_removed: None,
            tracking,
        });
    }
    let mut found = Vec::with_capacity(jobs.len());
    for scanned in scan_all(jobs)? {
        match scanned {
            Scanned::Found(f) => found.push(f),
            Scanned::Marked(mut job) => {
                let p = frozen
                    .get(job.member.pid)
                    .expect("a scanned process is one of the frozen tree's");
                let removed = crate::inject::leftovers::clean(p)?;
                // Empty: the marker was there but nothing to remove.
                job.leftovers_removed = Some(if removed.is_empty() {
                    String::new()
                } else {
                    removed.describe()
                });
                let mut f = scan_one(job)?.found_after_clean();
                f.in_stub = removed.in_use.is_some();
                found.push(f);
            }
        }
    }
    let objects = shmem::objects(found.iter().map(|f| (f.member.pid, &f.vmas[..])));
    let seen: Vec<u64> = found
        .iter()
        .flat_map(|f| f.vmas.iter())
        .filter(|v| v.shared && shmem::kind(v) == SharedKind::Anonymous)
        .map(|v| v.inode)
        .collect();
    let mut out = Vec::with_capacity(objects.len());
    for id in criu_shmem_order(&seen) {
        let Some(obj) = objects.iter().find(|o| o.shmid == id).cloned() else {
            continue;
        };
        let handle = obj.open()?;
        out.push((obj, handle));
    }
    let left_out = not_dumped(&found);
    Ok((found, out, left_out))
}

/// One process of the frozen tree, to scan.
struct Job<'t> {
    member: Member,
    threads: usize,
    /// Read before the freeze (None: a process that appeared since).
    prepared: Option<Prepared>,
    /// None: not looked at yet. Some: cleaned of a dead run's leftovers (the
    /// text says what was removed, empty for nothing).
    leftovers_removed: Option<String>,
    /// The tracking asked: a process already tracked has its dirty pages
    /// taken here too (the others on the tracer thread, see `track_all`).
    tracking: Option<&'t TreeTracking>,
}

/// A process scanned, or found marked by a dead run and to be cleaned first.
enum Scanned<'t> {
    Found(Found),
    Marked(Job<'t>),
}

impl Scanned<'_> {
    fn found_after_clean(self) -> Found {
        match self {
            Scanned::Found(f) => f,
            Scanned::Marked(_) => unreachable!("a cleaned process is not looked at for marks"),
        }
    }
}

/// Scans the processes of the frozen tree concurrently, one thread per CPU
/// each taking the next process: the whole tree stays stopped until the last
/// is done, and one after another 100 processes took 45 ms of a 57 ms stop
/// (docs/TREES.md). Nothing here needs the tracer thread: maps, smaps and
/// PAGEMAP_SCAN are read through /proc. The results in tree order; the first
/// error in tree order wins.
fn scan_all(jobs: Vec<Job<'_>>) -> Result<Vec<Scanned<'_>>> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(jobs.len());
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let jobs: Vec<Mutex<Option<Job<'_>>>> = jobs.into_iter().map(|j| Mutex::new(Some(j))).collect();
    let done: Vec<Mutex<Option<Result<Scanned<'_>>>>> =
        jobs.iter().map(|_| Mutex::new(None)).collect();
    let work = || {
        // Real-time while the tree is stopped (see freeze::Urgent).
        let _urgent = Urgent::raise();
        while !failed.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(slot) = jobs.get(i) else { break };
            let Some(job) = slot.lock().unwrap_or_else(|p| p.into_inner()).take() else {
                continue;
            };
            let r = scan_one(job);
            if r.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            *done[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        }
    };
    std::thread::scope(|s| {
        for _ in 1..workers {
            // A worker that cannot be started (thread limit, memory) is no
            // error: the others take its processes.
            let _ = std::thread::Builder::new()
                .name("predump-tree-scan".into())
                .spawn_scoped(s, work);
        }
        work();
    });
    let mut found = Vec::with_capacity(done.len());
    // A slot left empty: another process's scan failed first.
    for r in done
        .into_iter()
        .filter_map(|d| d.into_inner().unwrap_or_else(|p| p.into_inner()))
    {
        found.push(r?);
    }
    Ok(found)
}

/// A process's maps and present pages. Its threads are stopped (the tree is
/// frozen), so the scan helpers run real-time.
fn scan_one(mut job: Job<'_>) -> Result<Scanned<'_>> {
    let pid = job.member.pid;
    let text = proc::read_proc(pid, &format!("/proc/{pid}/maps"))?;
    if job.leftovers_removed.is_none() {
        if crate::inject::leftovers::may_hold(pid, &text) {
            return Ok(Scanned::Marked(job));
        }
        job.leftovers_removed = Some(String::new());
    }
    let Job {
        member,
        threads,
        prepared,
        leftovers_removed,
        tracking,
    } = job;
    let Prepared {
        vm_flags,
        mut scanner,
        tracked,
        fd_room,
    } = match prepared {
        Some(p) => p,
        None => prepare(pid, false)?,
    };
    let vmas = maps::parse_maps(&text)?;
    let (keep, skipped) = scan::select(&vmas, &vm_flags, true);
    let mut scan = scanner.present_stopped(&keep)?;
    scan.vmas_skipped = skipped.len();
    let unreadable = scan::unreadable(&skipped);
    if !unreadable.is_empty() {
        scan.unreadable_pages = scanner.present_stopped(&unreadable)?.pages_present;
    }
    let mut chosen = match tracking {
        Some(t) => tree_track::choose_tracked(pid, member.start_time, &keep, &scan.ranges, t)?,
        None => None,
    };
    if let Some(c) = &mut chosen {
        scan.ranges = std::mem::take(&mut c.dump);
    }
    Ok(Scanned::Found(Found {
        member,
        threads,
        vm_flags,
        chosen,
        scanner,
        scan,
        vmas,
        leftovers_removed: leftovers_removed.filter(|r| !r.is_empty()),
        tracked,
        fd_room,
        in_stub: false,
    }))
}

/// The order of CRIU's walk of its shmem hash (`for_each_shmem`): bucket
/// `shmid % 32` ascending, and within a bucket the object added last first
/// (hlist_add_head). `seen`: the shmids in the order CRIU adds them, i.e. the
/// processes in tree order and each one's mappings in address order.
pub(super) fn criu_shmem_order(seen: &[u64]) -> Vec<u64> {
    let mut order: Vec<(usize, u64)> = Vec::new();
    for &id in seen {
        if !order.iter().any(|&(_, o)| o == id) {
            order.push((order.len(), id));
        }
    }
    order.sort_by_key(|&(i, id)| (id % 32, std::cmp::Reverse(i)));
    order.into_iter().map(|(_, id)| id).collect()
}

/// The shared mappings that are not anonymous shared memory: left out, each
/// with its reason.
fn not_dumped(found: &[Found]) -> Vec<NotDumped> {
    found
        .iter()
        .flat_map(|f| shmem::not_dumped(f.member.pid, &f.vmas, None))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_objects_in_criu_s_hash_order() {
        // Buckets 1 (33 then 1 added), 2 (2), 3 (35): newest first in a bucket.
        assert_eq!(criu_shmem_order(&[33, 2, 33, 1, 35]), vec![1, 33, 2, 35]);
        assert_eq!(criu_shmem_order(&[]), Vec::<u64>::new());
        assert_eq!(criu_shmem_order(&[1036, 1037]), vec![1036, 1037]);
    }
}
