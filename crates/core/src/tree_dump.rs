//! A pre-dump of a whole process tree, as `criu pre-dump -t ROOT` makes it:
//! ROOT and every descendant frozen together (`tree::FrozenTree`), each
//! process's present private pages found while frozen, the anonymous shared
//! memory objects of the tree found and opened while frozen (each object once,
//! `shmem`), then everything thawed together and copied: one pages image per
//! process and one per shared object, numbered as CRIU numbers them. (A
//! shared object's pages are listed when it is copied: see `copy_all`.)
//!
//! # Image ids (criu/cr-dump.c, criu/shmem.c, criu/image.c)
//!
//! CRIU's pre-dump dumps the shared objects first (`cr_dump_shmem`, before
//! `cr_pre_dump_finish` writes the processes' pagemaps), and every pagemap
//! takes the next id of one counter starting at 1: the objects get 1..=S in the
//! order of CRIU's shmem hash walk (bucket `shmid % 32` ascending, newest
//! first within a bucket: objects are added in tree order, each process's
//! mappings in address order), then the processes S+1..=S+N in tree order.
//!
//! # A page server
//!
//! With [`TreeDest::Server`] the pages go over one connection instead of into
//! files, as `criu pre-dump -t ROOT --page-server` sends them: each shared
//! object and each process a pagemap of its own (PS_IOV_OPEN2 under its
//! dst_id, see `pageserver::sender::TreeSession`), in the order the files
//! would be written, then PS_IOV_CLOSE. The caller connects and asks
//! PS_IOV_PARENT before the tree is frozen, and gives a chain only to the
//! processes whose pagemap the server's parent holds.
//!
//! # What this mode does not do yet
//!
//! Read mode only: the caller refuses splice and freeze-free for a tree of
//! more than one process. A final dump (`predump dump`) copies everything
//! while the whole tree stays frozen, after ending the uffd-wp tracking that
//! pre-dumps of single processes may have left.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::drain::{DrainConfig, DrainEnd, DrainStats};
use crate::freeze::Urgent;
use crate::maps::{self, VmFlags, Vma};
use crate::mem_times::MemTimes;
use crate::pages_out::{PagesFile, PagesOut};
use crate::pageserver::sender::TreeSession;
use crate::pageserver::wire::Dst;
use crate::predump::{FinalDump, Progress};
use crate::scan::{self, ScanMethod, Scanner};
use crate::shmem::{self, NotDumped, SharedKind};
use crate::track::{Backend, TrackLock};
use crate::tree::{self, FrozenTree, Left, Member, TreeFreezeTimes};
use crate::tree_track::{self, Chosen, TreeTracking};
use crate::{proc, Error, PageRange, Result};

/// What was pre-dumped of one process of the tree.
#[derive(Debug, Clone)]
pub struct ProcessDump {
    pub member: Member,
    /// The id of its pages image (`pages-<id>.img`), named by its pagemap.
    pub pages_id: u32,
    pub threads: usize,
    pub scan_method: ScanMethod,
    pub vmas_scanned: usize,
    pub vmas_skipped: usize,
    pub pages_scanned: u64,
    pub pages_present: u64,
    /// Present pages of unreadable mappings, left out (as by the single-process
    /// read mode).
    pub unreadable_pages: u64,
    /// The pages in its pages image, in file order.
    pub regions: Vec<PageRange>,
    pub drain: DrainStats,
    /// It exited during the copy: its image holds what was read before.
    pub partial: bool,
    /// Its present pages its parent images hold (PE_PARENT in its pagemap).
    pub parent_regions: Vec<PageRange>,
    /// Why every page of it was copied despite a parent, or why it is untracked.
    pub track_note: Option<String>,
    /// The backend that took its dirty pages (None: not tracked by this run).
    pub tracking: Option<Backend>,
    /// This run started its tracking.
    pub created_tracking: bool,
    /// What a predump that died while injecting had left in it, removed.
    pub leftovers_removed: Option<String>,
    /// It holds predump's uffd-wp tracking, left by an earlier pre-dump of it
    /// alone: a tree pre-dump neither uses nor ends it.
    pub tracked: bool,
}

/// One anonymous shared memory object of the tree, pre-dumped once.
#[derive(Debug, Clone)]
pub struct ShmemDump {
    /// CRIU's shmid (the object's inode): `pagemap-shmem-<shmid>.img`.
    pub shmid: u64,
    /// Bytes (the largest offset + length among its mappings).
    pub size: u64,
    pub pages_id: u32,
    /// The pages in its pages image, as offsets in the object, in file order.
    pub regions: Vec<PageRange>,
    /// The processes mapping it, in tree order, each once.
    pub pids: Vec<i32>,
    pub mappings: usize,
}

/// What a tree pre-dump did.
#[derive(Debug, Clone)]
pub struct TreeReport {
    pub root: i32,
    /// CLOCK_BOOTTIME in µs when the tree was frozen (CRIU's dump_uptime).
    pub dump_uptime_us: u64,
    /// In CRIU's tree order, the root first.
    pub processes: Vec<ProcessDump>,
    /// In CRIU's order (their pages ids come first: 1..).
    pub shmem: Vec<ShmemDump>,
    pub not_dumped: Vec<NotDumped>,
    /// Zombies of the tree, and processes that exited while it was frozen.
    pub left: Vec<Left>,
    pub freeze: TreeFreezeTimes,
    /// Reading maps, scanning pages and finding the shared objects, frozen.
    pub scan_time: Duration,
    /// From the thaw to the last pages image synced (in a dump, which copied
    /// and synced everything while frozen, next to nothing).
    pub drain_time: Duration,
    /// Every pages image read and written, the fsyncs left out: after the
    /// thaw in a pre-dump, inside the frozen window in a dump (`copied_frozen`).
    pub copy_time: Duration,
    /// The pages images synced, one after the other (fsync and close).
    pub sync_time: Duration,
    pub copied_frozen: bool,
    /// CRIU's memdump_time and memwrite_time (see `mem_times`).
    pub mem: MemTimes,
}

impl TreeReport {
    pub fn partial(&self) -> bool {
        self.processes.iter().any(|p| p.partial)
    }
}

/// What is read of a process before the tree is frozen (slow: smaps walks every
/// page table), keyed by pid and start time.
struct Prepared {
    vm_flags: HashMap<(u64, u64), VmFlags>,
    scanner: Scanner,
    tracked: bool,
}

fn prepare(pid: i32) -> Result<Prepared> {
    let smaps = proc::read_proc(pid, &format!("/proc/{pid}/smaps"))?;
    Ok(Prepared {
        vm_flags: maps::parse_smaps_flags(&smaps)?,
        scanner: Scanner::open(pid)?,
        tracked: crate::track::find_ours(pid)?.is_some(),
    })
}

/// One process as found while frozen.
struct Found {
    member: Member,
    threads: usize,
    vm_flags: HashMap<(u64, u64), VmFlags>,
    /// What tracking chose (None: no tracking asked).
    chosen: Option<Chosen>,
    scanner: Scanner,
    scan: scan::ScanResult,
    vmas: Vec<Vma>,
    leftovers_removed: Option<String>,
    tracked: bool,
}

/// Where a tree's pages go.
pub enum TreeDest<'a> {
    /// `pages-<id>.img` files in this directory (it exists and holds no pages
    /// images).
    Dir(&'a Path),
    /// A page server, connected (and asked PS_IOV_PARENT for the processes
    /// given a chain): each pagemap is opened when its pages are sent, and the
    /// session is closed once all are.
    Server(&'a mut TreeSession),
}

/// Pre-dumps `root` and its descendants into `dir` (which must exist and hold
/// no pages images): `pages-<id>.img` for every process and shared object; the
/// caller writes the pagemaps from the report. Read mode, no tracking.
///
/// With `tracking`, each process's dirty pages are taken and re-armed while
/// the tree is frozen and only those (and pages its parent images lack) are
/// copied. A run that started the tracking of some processes and then fails
/// ends it in them again. A final dump (`tracking.final_dump` agrees with
/// `final_dump`) takes the tracking and ends it, never starts it.
pub fn pre_dump_tree(
    root: i32,
    dir: &Path,
    config: &DrainConfig,
    final_dump: Option<FinalDump>,
    tracking: Option<&TreeTracking>,
    progress: Option<&Progress>,
) -> Result<TreeReport> {
    pre_dump_tree_to(
        root,
        &mut TreeDest::Dir(dir),
        config,
        final_dump,
        tracking,
        progress,
    )
}

/// [`pre_dump_tree`] into a directory or to a page server.
pub fn pre_dump_tree_to(
    root: i32,
    dest: &mut TreeDest<'_>,
    config: &DrainConfig,
    final_dump: Option<FinalDump>,
    tracking: Option<&TreeTracking>,
    progress: Option<&Progress>,
) -> Result<TreeReport> {
    debug_assert!(tracking.is_none_or(|t| t.final_dump == final_dump.is_some()));
    let mut created = Vec::new();
    let r = pre_dump_tree_inner(
        root,
        dest,
        config,
        final_dump,
        tracking,
        progress,
        &mut created,
    );
    if r.is_err() && !created.is_empty() {
        // Undoing it freezes and injects again: until that is over the caller
        // must not exit (see `Progress::thawed`).
        if let Some(p) = progress {
            p.thawed.store(false, Ordering::SeqCst);
        }
        tree_track::undo_created(&created);
        if let Some(p) = progress {
            p.thawed.store(true, Ordering::SeqCst);
        }
    }
    r
}

fn pre_dump_tree_inner(
    root: i32,
    dest: &mut TreeDest<'_>,
    config: &DrainConfig,
    final_dump: Option<FinalDump>,
    tracking: Option<&TreeTracking>,
    progress: Option<&Progress>,
    created: &mut Vec<i32>,
) -> Result<TreeReport> {
    tree::check_root(root)?;
    // Everything that can be done before freezing is: a process that appears
    // while the tree freezes is prepared while frozen instead.
    let (listed, _) = tree::list(root)?;
    let mut prepared: HashMap<(i32, u64), Prepared> = HashMap::new();
    for m in &listed {
        match prepare(m.pid) {
            Ok(p) => {
                prepared.insert((m.pid, m.start_time), p);
            }
            // Gone already: the freeze will say so, or leave it out.
            Err(Error::NoSuchProcess { .. }) if m.pid != root => {}
            Err(e) => return Err(e),
        }
    }

    // Runs that take the dirty state exclude each other (see TrackLock); a
    // process that appears while the tree freezes is frozen before it could
    // be tracked by anyone.
    let mut _locks = Vec::new();
    if tracking.is_some() {
        for m in &listed {
            _locks.push(TrackLock::acquire(m.pid, m.start_time)?);
        }
    }

    let frozen = FrozenTree::freeze(root)?;
    let dump_uptime_us = proc::uptime_us();
    let scan_started = Instant::now();
    let found = scan_frozen(&frozen, &mut prepared, tracking);
    let scan_time = scan_started.elapsed();
    let track_started = Instant::now();
    let found = match (found, tracking) {
        (Ok((mut found, objects, left_out)), Some(t)) => {
            track_all(&frozen, &mut found, t, created).map(|()| (found, objects, left_out))
        }
        (r, _) => r,
    };
    let track_time = track_started.elapsed();
    let scan_time = scan_time + track_time;
    let left = frozen.left().to_vec();
    // A final dump ends predump's tracking and copies everything while the
    // whole tree stays frozen: the images are one consistent state.
    let frozen_copy_started = Instant::now();
    let copied = match (&found, final_dump) {
        (Ok((found, objects, _)), Some(_)) => Some(
            end_tracking(&frozen).and_then(|()| copy_all(found, objects, dest, config, progress)),
        ),
        _ => None,
    };
    // Ending the tracking, the copy and the fsyncs: a dump's page work after the scan.
    let frozen_copy_time = frozen_copy_started.elapsed();
    let freeze = match final_dump {
        Some(FinalDump {
            leave_stopped: true,
        }) if matches!(copied, Some(Ok(_))) => frozen.thaw_stopped(),
        _ => frozen.thaw(),
    };
    if let Some(p) = progress {
        p.thawed.store(true, Ordering::SeqCst);
    }
    let (found, objects, not_dumped) = found?;
    let drain_started = Instant::now();
    let copied_frozen = copied.is_some();
    let all = match copied {
        Some(c) => c?,
        None => copy_all(&found, &objects, dest, config, progress)?,
    };
    let drain_time = drain_started.elapsed();
    let Copied {
        processes,
        shmem,
        copy: copy_stats,
        copy_time,
        sync_time,
    } = all;
    let mem = if copied_frozen {
        MemTimes::copied_frozen(scan_time + frozen_copy_time, &copy_stats)
    } else {
        MemTimes::copied_after_thaw(scan_time, &copy_stats, sync_time)
    };
    Ok(TreeReport {
        root,
        dump_uptime_us,
        processes,
        shmem,
        not_dumped,
        left,
        freeze,
        scan_time,
        drain_time,
        copy_time,
        sync_time,
        copied_frozen,
        mem,
    })
}

/// The pages images of a tree, and what writing them took.
struct Copied {
    processes: Vec<ProcessDump>,
    shmem: Vec<ShmemDump>,
    /// The reading and the writing of every copy, summed (a shared object's
    /// copy, one call that does both, in each).
    copy: DrainStats,
    /// The copies, the fsyncs left out.
    copy_time: Duration,
    /// The fsyncs.
    sync_time: Duration,
}

/// Writes the pages images: the shared objects first, then the processes, ids
/// as CRIU gives them.
///
/// A shared object's pages are found here, right before they are copied: in
/// a pre-dump after the thaw, as the contents of every page are read (without
/// dirty tracking nothing needs the set as it was at the freeze, and walking
/// a 256 MiB object's pages took 2.5 to 5 ms of a tree's stop), in a dump
/// while the tree is still frozen.
fn copy_all(
    found: &[Found],
    objects: &[FoundObject],
    dest: &mut TreeDest<'_>,
    config: &DrainConfig,
    progress: Option<&Progress>,
) -> Result<Copied> {
    let started = Instant::now();
    let mut copy = DrainStats::default();
    let mut sync_time = Duration::ZERO;
    let mut sync = |mut file: PagesFile| -> Result<()> {
        let sync_started = Instant::now();
        file.finish()?;
        sync_time += sync_started.elapsed();
        Ok(())
    };
    // Ids as CRIU gives them: the shared objects first, then the processes.
    let mut next_id = 1u32;
    let mut shmem_out = Vec::with_capacity(objects.len());
    for (obj, handle) in objects {
        let present = handle.present()?;
        let mut pids: Vec<i32> = Vec::new();
        for m in &obj.mappings {
            if !pids.contains(&m.pid) {
                pids.push(m.pid);
            }
        }
        shmem_out.push((
            ShmemDump {
                shmid: obj.shmid,
                size: obj.size,
                pages_id: next_id,
                regions: present,
                pids,
                mappings: obj.mappings.len(),
            },
            handle,
        ));
        next_id += 1;
    }
    if let Some(p) = progress {
        let private: u64 = found
            .iter()
            .flat_map(|f| f.scan.ranges.iter())
            .map(|r| r.len())
            .sum();
        let shared: u64 = shmem_out
            .iter()
            .flat_map(|(d, _)| d.regions.iter())
            .map(|r| r.len())
            .sum();
        p.total.store(private + shared, Ordering::Relaxed);
    }

    let mut shmem = Vec::with_capacity(shmem_out.len());
    for (dump, handle) in shmem_out {
        let copy_started = Instant::now();
        let bytes = match dest {
            TreeDest::Dir(dir) => {
                let path = dir.join(format!("pages-{}.img", dump.pages_id));
                let file = PagesFile::create(&path)?;
                let bytes = handle.copy_to(&dump.regions, file.file(), &path)?;
                let took = copy_started.elapsed();
                copy.read_time += took;
                copy.write_time += took;
                sync(file)?;
                bytes
            }
            TreeDest::Server(s) => {
                let bytes = s.send_object(dump.shmid, &dump.regions, |buf, off| {
                    handle.read_at(buf, off)
                })?;
                let took = copy_started.elapsed();
                copy.read_time += took;
                copy.write_time += took;
                bytes
            }
        };
        if let Some(p) = progress {
            p.done.fetch_add(bytes, Ordering::Relaxed);
        }
        shmem.push(dump);
    }
    let mut processes = Vec::with_capacity(found.len());
    for f in found {
        let pages_id = next_id;
        next_id += 1;
        let to_parent = f.chosen.as_ref().map_or(&[][..], |c| &c.to_parent[..]);
        let outcome = match dest {
            TreeDest::Dir(dir) => {
                let path = dir.join(format!("pages-{pages_id}.img"));
                let mut file = PagesFile::create(&path)?;
                let outcome = crate::predump::drain_gated(
                    f.member.pid,
                    &f.scan.ranges,
                    &mut file,
                    config,
                    progress.map(|p| &p.done),
                )?;
                sync(file)?;
                outcome
            }
            TreeDest::Server(s) => {
                let mut pm = s.open(Dst::process(f.member.pid as u64))?;
                pm.parent_ranges(to_parent)?;
                let outcome = crate::predump::drain_gated(
                    f.member.pid,
                    &f.scan.ranges,
                    &mut pm,
                    config,
                    progress.map(|p| &p.done),
                )?;
                pm.finish()?;
                outcome
            }
        };
        copy.read_time += outcome.stats.read_time;
        copy.write_time += outcome.stats.write_time;
        processes.push(ProcessDump {
            pages_id,
            threads: f.threads,
            scan_method: f.scanner.method(),
            vmas_scanned: f.scan.vmas_scanned,
            vmas_skipped: f.scan.vmas_skipped,
            pages_scanned: f.scan.pages_scanned,
            pages_present: f.scan.pages_present,
            unreadable_pages: f.scan.unreadable_pages,
            regions: outcome.regions,
            drain: outcome.stats,
            partial: outcome.end == DrainEnd::TargetExited,
            leftovers_removed: f.leftovers_removed.clone(),
            tracked: f.tracked,
            parent_regions: f
                .chosen
                .as_ref()
                .map_or_else(Vec::new, |c| c.to_parent.clone()),
            track_note: f.chosen.as_ref().and_then(|c| c.note.clone()),
            tracking: f.chosen.as_ref().and_then(|c| c.used),
            created_tracking: f.chosen.as_ref().is_some_and(|c| c.created),
            member: f.member.clone(),
        });
    }
    if let TreeDest::Server(s) = dest {
        // Everything is stored once the server answers PS_IOV_CLOSE: the
        // session's "sync".
        let close_started = Instant::now();
        s.close()?;
        sync_time += close_started.elapsed();
    }
    let copy_time = started.elapsed().saturating_sub(sync_time);
    Ok(Copied {
        processes,
        shmem,
        copy,
        copy_time,
        sync_time,
    })
}

/// Takes and re-arms the dirty pages of every frozen process the scan threads
/// could not (those not tracked yet), one after another on this thread (the
/// tracer: a first arming injects calls), and keeps in each `Found` only the
/// pages to copy. `created`: the processes whose tracking this run started.
fn track_all(
    frozen: &FrozenTree,
    found: &mut [Found],
    t: &TreeTracking,
    created: &mut Vec<i32>,
) -> Result<()> {
    for f in found.iter_mut() {
        let p = frozen
            .get(f.member.pid)
            .expect("a scanned process is one of the frozen tree's");
        // Those already tracked were done by the scan threads.
        if f.chosen.is_none() {
            let (keep, _) = scan::select(&f.vmas, &f.vm_flags, true);
            let mut chosen = tree_track::choose(p, f.member.start_time, &keep, &f.scan.ranges, t)?;
            if chosen.created {
                created.push(f.member.pid);
            }
            f.scan.ranges = std::mem::take(&mut chosen.dump);
            f.chosen = Some(chosen);
        }
        if t.final_dump {
            let chosen = f.chosen.as_mut().expect("chosen above");
            tree_track::force_rseq(p, &mut f.scan.ranges, chosen)?;
        }
    }
    Ok(())
}

/// Ends predump's uffd-wp tracking in every process of the frozen tree that
/// holds it (left by pre-dumps of it alone): after a final dump nothing of
/// predump is left in the tree.
fn end_tracking(frozen: &FrozenTree) -> Result<()> {
    for p in frozen.processes() {
        if crate::track::find_ours(p.member.pid)?.is_some() {
            let mut inj = crate::inject::Injector::any(&p.frozen)?;
            crate::track::Tracker::attach_with(
                crate::track::Backend::UffdWp,
                &p.frozen,
                &mut inj,
                &[],
            )?
            .release(&mut inj)?;
            inj.restore()?;
        }
    }
    Ok(())
}

/// A shared object of the tree, opened while it was frozen.
type FoundObject = (shmem::Object, shmem::Handle);

/// Everything read while the tree is frozen: each process's present pages, the
/// tree's shared objects (opened; their pages are found when they are copied,
/// see `copy_all`), and the shared mappings left out.
fn scan_frozen(
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
                found.push(scan_one(job)?.found_after_clean());
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
    } = match prepared {
        Some(p) => p,
        None => prepare(pid)?,
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
    }))
}

/// The order of CRIU's walk of its shmem hash (`for_each_shmem`): bucket
/// `shmid % 32` ascending, and within a bucket the object added last first
/// (hlist_add_head). `seen`: the shmids in the order CRIU adds them, i.e. the
/// processes in tree order and each one's mappings in address order.
fn criu_shmem_order(seen: &[u64]) -> Vec<u64> {
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
