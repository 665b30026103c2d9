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
//! # Modes
//!
//! Read mode; splice mode (`splice`: inside the one freeze each process's
//! pages are referenced into pipes by an injected vmsplice, drained after the
//! thaw; the shared objects are read through their file as in read mode); and
//! the freeze-free mode (`pre_dump_tree_freeze_free`, in `freeze_free`: the
//! tree is never frozen as a whole, each process is pre-dumped as one
//! process's freeze-free pre-dump is); each into a directory or to a page
//! server (`*_to`). A final dump (`predump dump`) freezes the whole tree, reads
//! each process's tracking and ends it, and copies while the tree stays frozen.
//!
//! # The files
//!
//! Six files, so that none runs to 800 lines (issue 11). This one holds the
//! entry points and the phases in order (prepare, freeze,
//! scan, track, hold, thaw, copy); `scan` what is read while the tree is frozen, on
//! the scan threads; `copy` the pages images written, the shared objects' and
//! the processes'; `track` the dirty-page tracking taken and ended on the
//! tracer thread; `splice` splice mode's pipes; `freeze_free` the freeze-free mode.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::drain::{DrainConfig, DrainStats};
use crate::mem_times::MemTimes;
use crate::pageserver::sender::TreeSession;
use crate::predump::{FinalDump, Mode, Progress, SpliceStats};
use crate::scan::ScanMethod;
use crate::shmem::NotDumped;
use crate::shmem_chain::{InParent, ShmemParent};
use crate::track::{Backend, TrackLock};
use crate::tree::{self, FrozenTree, Left, Member, TreeFreezeTimes};
use crate::tree_track::{self, TreeTracking};
use crate::{proc, Error, PageRange, Result};

mod copy;
mod freeze_free;
mod scan;
mod splice;
mod track;

use copy::{copy_all, Copied};
pub use freeze_free::refused as freeze_free_refused;
use scan::{prepare, scan_frozen, Prepared};
use track::{end_tracking, track_all};

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
    /// The entries of its pagemap, written (or sent to the page server).
    pub pagemap_entries: usize,
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
    /// Splice mode: what its pages took in pipes (None: copied, in read mode,
    /// or after a fallback).
    pub splice: Option<SpliceStats>,
    /// Splice mode: why it was not spliced (its pages copied as in read mode).
    pub fallback: Option<String>,
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
    /// Its present pages equal to the chain's copy (PE_PARENT), as offsets.
    pub parent_regions: Vec<PageRange>,
    /// The entries of its pagemap, written (or sent to the page server).
    pub pagemap_entries: usize,
    /// What was made of the parent images for it (`shmem_chain`).
    pub in_parent: InParent,
    /// Pages compared with the chain's copy.
    pub compared: u64,
    /// Its identity (`shmem::Handle::identity`), for the next pre-dump to
    /// check that its parent's object of this shmid is this one; or why it
    /// cannot be had.
    pub identity: std::result::Result<String, String>,
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
    /// Splice mode: referencing every process's pages into pipes, frozen.
    pub reference_time: Duration,
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
/// no pages images): `pages-<id>.img` for every process and shared object, each
/// with its pagemap (`pagemap-PID.img`, `pagemap-shmem-SHMID.img`); the caller
/// writes the images around them (stats, inventory). `mode`: read or splice
/// (splice: each process's pages referenced into pipes while the tree is
/// frozen, see `splice`; never in a final dump).
///
/// With `shmem_parent` (the parent images, into a directory only), each shared
/// object the parent holds is compared with the chain's copy page by page and
/// only the pages that differ (or that the chain lacks) are copied: see
/// `shmem_chain`. In a dump the comparison happens while the tree is frozen.
///
/// With `tracking`, each process's dirty pages are taken and re-armed while
/// the tree is frozen and only those (and pages its parent images lack) are
/// copied. A run that started the tracking of some processes and then fails
/// ends it in them again. A final dump (`tracking.final_dump` agrees with
/// `final_dump`) takes the tracking and ends it, never starts it.
#[allow(clippy::too_many_arguments)]
pub fn pre_dump_tree(
    root: i32,
    dir: &Path,
    mode: Mode,
    config: &DrainConfig,
    final_dump: Option<FinalDump>,
    tracking: Option<&TreeTracking>,
    shmem_parent: Option<&ShmemParent>,
    progress: Option<&Progress>,
) -> Result<TreeReport> {
    pre_dump_tree_to(
        root,
        &mut TreeDest::Dir(dir),
        mode,
        config,
        final_dump,
        tracking,
        shmem_parent,
        progress,
    )
}

/// [`pre_dump_tree`] into a directory or to a page server. To a page server
/// `shmem_parent` is not used: the chain's pages are on the server, so each
/// shared object is copied whole.
#[allow(clippy::too_many_arguments)]
pub fn pre_dump_tree_to(
    root: i32,
    dest: &mut TreeDest<'_>,
    mode: Mode,
    config: &DrainConfig,
    final_dump: Option<FinalDump>,
    tracking: Option<&TreeTracking>,
    shmem_parent: Option<&ShmemParent>,
    progress: Option<&Progress>,
) -> Result<TreeReport> {
    debug_assert!(tracking.is_none_or(|t| t.final_dump == final_dump.is_some()));
    match (mode, final_dump) {
        (Mode::FreezeFree, _) => {
            return Err(Error::InvalidArgument(
                "the freeze-free mode of a tree is pre_dump_tree_freeze_free".to_string(),
            ))
        }
        (Mode::Splice, Some(_)) => {
            return Err(Error::InvalidArgument(
                "a final dump copies while frozen throughout: it has no splice mode".to_string(),
            ))
        }
        _ => {}
    }
    let shmem_parent = match dest {
        TreeDest::Dir(_) => shmem_parent,
        TreeDest::Server(_) => None,
    };
    let mut created = Vec::new();
    let asked = Asked {
        mode,
        final_dump,
        tracking,
        shmem_parent,
    };
    let r = pre_dump_tree_inner(root, dest, config, asked, progress, &mut created);
    undo_on_error(&r, &created, progress);
    r
}

/// A freeze-free pre-dump of the tree of `root` into `dir` (uffd-wp): the
/// tree is never frozen as a whole, each process is pre-dumped as one
/// process's freeze-free pre-dump is, one after another (see `freeze_free`).
/// A process that holds no tracking yet is stopped alone, once, to make it.
/// With `shmem_parent`, the shared objects are compared with the chain's
/// copy, as in read mode. A run that started the tracking of some processes
/// and then fails ends it in them again.
pub fn pre_dump_tree_freeze_free(
    root: i32,
    dir: &Path,
    config: &DrainConfig,
    tracking: Option<&TreeTracking>,
    shmem_parent: Option<&ShmemParent>,
    progress: Option<&Progress>,
) -> Result<TreeReport> {
    pre_dump_tree_freeze_free_to(
        root,
        &mut TreeDest::Dir(dir),
        config,
        tracking,
        shmem_parent,
        progress,
    )
}

/// [`pre_dump_tree_freeze_free`] into a directory or to a page server (the
/// session connected and asked PS_IOV_PARENT, as for [`pre_dump_tree_to`];
/// `shmem_parent` is not used there: each shared object is sent whole). The
/// session is closed once every pagemap is sent.
pub fn pre_dump_tree_freeze_free_to(
    root: i32,
    dest: &mut TreeDest<'_>,
    config: &DrainConfig,
    tracking: Option<&TreeTracking>,
    shmem_parent: Option<&ShmemParent>,
    progress: Option<&Progress>,
) -> Result<TreeReport> {
    let mut created = Vec::new();
    let r = freeze_free::pre_dump_tree_freeze_free(
        root,
        dest,
        config,
        tracking,
        shmem_parent,
        progress,
        &mut created,
    );
    undo_on_error(&r, &created, progress);
    r
}

/// After a failed run, ends the tracking it started in `created`.
fn undo_on_error<T>(r: &Result<T>, created: &[i32], progress: Option<&Progress>) {
    if r.is_err() && !created.is_empty() {
        // Undoing it freezes and injects again: until that is over the caller
        // must not exit (see `Progress::thawed`).
        if let Some(p) = progress {
            p.thawed.store(false, Ordering::SeqCst);
        }
        tree_track::undo_created(created);
        if let Some(p) = progress {
            p.thawed.store(true, Ordering::SeqCst);
        }
    }
}

/// What a tree pre-dump was asked for besides its pages' destination.
struct Asked<'a> {
    mode: Mode,
    final_dump: Option<FinalDump>,
    tracking: Option<&'a TreeTracking>,
    shmem_parent: Option<&'a ShmemParent>,
}

fn pre_dump_tree_inner(
    root: i32,
    dest: &mut TreeDest<'_>,
    config: &DrainConfig,
    asked: Asked<'_>,
    progress: Option<&Progress>,
    created: &mut Vec<i32>,
) -> Result<TreeReport> {
    let Asked {
        mode,
        final_dump,
        tracking,
        shmem_parent,
    } = asked;
    let splice = mode == Mode::Splice;
    tree::check_root(root)?;
    // Everything that can be done before freezing is: a process that appears
    // while the tree freezes is prepared while frozen instead.
    let (listed, _) = tree::list(root)?;
    let mut prepared: HashMap<(i32, u64), Prepared> = HashMap::new();
    for m in &listed {
        match prepare(m.pid, splice) {
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

    // Splice mode's pipes, made now rather than while the tree waits.
    let mut pool = match splice {
        true => Some(splice::TreePipes::prepare(&listed)?),
        false => None,
    };

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
    // Splice mode: every process's pages into pipes, still frozen (after the
    // scan and the tracking, so that the injector's scratch mapping is in
    // neither). A failure fails the run after the thaw.
    let (holds, reference_time) = match (&found, pool.as_mut()) {
        (Ok((found, _, _)), Some(pool)) => match splice::hold_all(&frozen, found, pool) {
            Ok((holds, took)) => (Some(Ok(holds)), took),
            Err(e) => (Some(Err(e)), Duration::ZERO),
        },
        _ => (None, Duration::ZERO),
    };
    let left = frozen.left().to_vec();
    // A final dump ends predump's tracking and copies everything while the
    // whole tree stays frozen: the images are one consistent state.
    let frozen_copy_started = Instant::now();
    let copied =
        match (&found, final_dump) {
            (Ok((found, objects, _)), Some(_)) => Some(end_tracking(&frozen).and_then(|()| {
                copy_all(found, None, objects, dest, config, shmem_parent, progress)
            })),
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
    let holds = holds.transpose()?;
    let drain_started = Instant::now();
    let copied_frozen = copied.is_some();
    let all = match copied {
        Some(c) => c?,
        None => copy_all(
            &found,
            holds,
            &objects,
            dest,
            config,
            shmem_parent,
            progress,
        )?,
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
        // Splice mode's references are its dump of the pages (CRIU's
        // memdump_time), the pipes' draining a write like a copy's.
        MemTimes::copied_after_thaw(scan_time + reference_time, &copy_stats, sync_time)
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
        reference_time,
        drain_time,
        copy_time,
        sync_time,
        copied_frozen,
        mem,
    })
}
