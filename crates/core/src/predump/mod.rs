//! A pre-dump of one process, end to end, in phases, each its own function:
//!
//! 1. **prepare** (`Prepared`, `hold::SplicePipes`): everything that can be done
//!    before the freeze is: the target checked and locked, smaps read, the
//!    pagemap and the pages destination opened, splice mode's pipes made.
//! 2. **freeze** (`Frozen::freeze`), and a dead run's leftovers removed.
//! 3. **plan** (`plan`): the maps read, the present pages scanned, the dirty
//!    state taken and re-armed, the pages chosen (to copy, or left to the parent).
//! 4. **hold** (`hold`): splice mode references the pages into pipes; a final
//!    dump ends the tracking and copies them, still frozen.
//! 5. **thaw**.
//! 6. **finish** (`finish`): the pages drained or copied, the image synced, the
//!    report.
//!
//! Read mode's frozen window thus holds only the freeze, one read of
//! /proc/PID/maps and the page scan; splice mode falls back to read mode where
//! vmsplice is refused. The freeze-free mode (`pre_dump_freeze_free`) runs a
//! plan of its own with the target running, then the same finish. A tree
//! (`tree_dump`) can run the plan and hold phases per process inside its one
//! freeze.

mod finish;
mod gate;
mod hold;
mod plan;

use std::cell::Cell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::drain::{DrainConfig, DrainStats};
use crate::freeze::{FreezeTimes, Frozen};
use crate::inject::Injector;
use crate::maps::VmFlags;
use crate::mem_times::MemTimes;
use crate::pages_out::{PagesFile, PagesOut};
use crate::pageserver::sender::{ServerPages, TreePagemap, TreeSession};
use crate::pageserver::wire::Dst;
use crate::scan::{ScanMethod, Scanner};
use crate::{maps, proc, shmem, track, Error, PageRange, Result};

pub(crate) use gate::drain_gated;
pub(crate) use plan::{arm, choose_pages, force_rseq, take_dirty, Dirty, NOT_TRACKED_AT_DUMP};

/// How far a pre-dump has come, for a progress bar: readable from any thread.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes of pages to copy, known once the scan is done.
    pub total: AtomicU64,
    /// Bytes copied so far.
    pub done: AtomicU64,
    /// Every thread of the target runs again (set right after the thaw): from
    /// here on the caller may exit at any moment without harming it.
    pub thawed: std::sync::atomic::AtomicBool,
}

/// How pages are drained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Read,
    Splice,
    /// uffd-wp only: the dirty pages are taken and re-armed while the target
    /// runs, then copied; the target is never stopped, except once on the first
    /// run, to make the uffd (docs/FREEZE-FREE.md has the correctness argument).
    FreezeFree,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Read => "read",
            Mode::Splice => "splice",
            Mode::FreezeFree => "freeze-free",
        }
    }
}

/// What splice mode did while the target was frozen.
#[derive(Debug, Clone, Default)]
pub struct SpliceStats {
    pub pipes: usize,
    pub pipe_bytes: usize,
    /// Bytes of the target's pages held in pipes until drained.
    pub pinned_bytes: u64,
    pub injected_calls: u64,
    pub inject_time: Duration,
}

/// What a pre-dump did.
#[derive(Debug, Clone)]
pub struct PreDumpReport {
    /// The mode asked for, and the mode used (read after a splice fallback).
    pub requested_mode: Mode,
    pub mode: Mode,
    /// Why splice mode fell back to read mode.
    pub fallback: Option<String>,
    pub splice: Option<SpliceStats>,
    pub pid: i32,
    /// The target's start time (clock ticks after boot): names it across pid reuse.
    pub start_time: u64,
    /// CLOCK_BOOTTIME in µs when it was frozen (CRIU's dump_uptime).
    pub dump_uptime_us: u64,
    /// The pages in the pages image, in file order.
    pub regions: Vec<PageRange>,
    /// The entries of the pagemap written (or sent to the page server).
    pub pagemap_entries: usize,
    /// Present pages left to the parent images (PE_PARENT entries).
    pub parent_regions: Vec<PageRange>,
    /// Why a pre-dump with a parent still copied every page, if it did (or
    /// why tracking was given up).
    pub track_note: Option<String>,
    /// The dirty tracking used (None: none).
    pub tracking: Option<track::Backend>,
    /// This run started the target's tracking (uffd-wp): a caller that fails
    /// afterwards should end it again (`track::untrack`).
    pub created_tracking: bool,
    pub threads: usize,
    pub scan_method: ScanMethod,
    pub vmas_scanned: usize,
    pub vmas_skipped: usize,
    pub pages_scanned: u64,
    pub pages_present: u64,
    /// Pages of unreadable mappings, which predump leaves out in every mode.
    /// CRIU's splice pre-dump copies them, so its next pre-dump expects them in
    /// a parent whose inventory says "splice" (criu/mem.c, generate_vma_iovs):
    /// the caller must then write "read" (which CRIU never asks them of).
    pub unreadable_pages: u64,
    /// Its shared mappings left out of the pre-dump, each with the reason.
    pub not_dumped: Vec<shmem::NotDumped>,
    pub freeze: FreezeTimes,
    /// Time spent reading maps and scanning pages, inside the frozen window
    /// (freeze-free: while the target ran).
    pub scan_time: Duration,
    /// From thaw to the pages image synced: the copy and the fsync in a
    /// pre-dump, the fsync alone in a dump (which copied while frozen).
    pub drain_time: Duration,
    /// The pages read and written into the pages image (or sent), the fsync
    /// left out: after the thaw in a pre-dump, inside the frozen window in a
    /// dump (`copied_frozen`).
    pub copy_time: Duration,
    /// The pages image synced and its pagemap written (fsync, then the
    /// pagemap's file written, synced and renamed), or the page server's answer.
    pub sync_time: Duration,
    /// The copy was made inside the frozen window (a dump).
    pub copied_frozen: bool,
    /// CRIU's memdump_time and memwrite_time (see `mem_times`).
    pub mem: MemTimes,
    pub drain: DrainStats,
    /// The target exited during the drain: the images hold what was read before.
    pub partial: bool,
    /// What a predump that died while injecting had left in the target, removed
    /// by this run (see inject::leftovers).
    pub leftovers_removed: Option<String>,
}

/// Dirty tracking for a pre-dump.
#[derive(Debug, Clone, Default)]
pub struct TrackOptions {
    /// The backend to track with; None: no tracking, every pre-dump is full.
    pub backend: Option<track::Backend>,
    /// A name for this run's arming, recorded in the target (uffd-wp) and, by the
    /// caller, in the images it writes.
    pub generation: String,
    /// The parent images: the pages the chain holds, and the generation that
    /// armed the tracking when they were made.
    pub parent: Option<ParentChain>,
    /// Set for `predump dump`.
    pub final_dump: Option<FinalDump>,
    /// The backend was chosen for the caller (`--track-mem auto`): where it
    /// cannot work with this process (a seccomp filter refusing userfaultfd, a
    /// target ignoring SIGTRAP…), the pre-dump goes on without tracking and
    /// says why, instead of failing.
    pub auto: bool,
}

/// Whether a tracking failure leaves the pre-dump possible without tracking:
/// not when the target is gone or another run holds it.
pub(crate) fn tracking_refused(e: &Error) -> bool {
    !matches!(
        e,
        Error::NoSuchProcess { .. } | Error::TargetExited { .. } | Error::Busy { .. }
    )
}

pub(crate) fn untracked_note(backend: track::Backend, e: &Error) -> String {
    format!(
        "dirty tracking ({}) is not possible for this process ({e}): this pre-dump \
         copies every page, and so will the next",
        backend.name()
    )
}

/// A final dump instead of a pre-dump: the pages are copied while every thread
/// stays frozen (a consistent snapshot), dirty tracking is released, and the
/// target is left running or job-stopped.
#[derive(Debug, Clone, Copy)]
pub struct FinalDump {
    pub leave_stopped: bool,
}

#[derive(Debug, Clone)]
pub struct ParentChain {
    /// The pages the chain holds (present or left to its own parents).
    pub pages: Vec<PageRange>,
    pub origin: ParentOrigin,
}

/// What is known of how the parent relates to the target's dirty state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParentOrigin {
    /// Made by a predump run that armed the tracking with this generation:
    /// trusted if that run is the one that armed it last.
    Armed(String),
    /// Made by CRIU's pre-dump, or by predump without tracking: a snapshot
    /// taken while the target was frozen at this CLOCK_BOOTTIME time (µs; its
    /// `dump_uptime`). With soft-dirty, trusted if no predump run cleared the
    /// bits since: it then holds every page they call clean.
    Snapshot { at_us: u64 },
}

/// Pre-dumps `pid` into the images directory `dir` (which must exist): its
/// pages image `pages-1.img` (created 0600; it must not exist) and the pagemap
/// of it, `pagemap-PID.img`, written once the pages image is synced (see
/// [`PAGES_ID`]). The caller writes the images around them (stats, inventory).
///
/// A run that starts the target's dirty tracking (uffd-wp: the first one) and
/// then fails ends it again, so that a failure leaves nothing in the target;
/// a run that found tracking and fails leaves it, recording a generation that
/// no images directory holds (the next run then copies every page).
pub fn pre_dump(
    pid: i32,
    dir: &Path,
    mode: Mode,
    config: &DrainConfig,
    tracking: &TrackOptions,
    progress: Option<&Progress>,
) -> Result<PreDumpReport> {
    pre_dump_to(
        pid,
        &mut PagesDest::Dir {
            dir,
            pages_id: PAGES_ID,
        },
        mode,
        config,
        tracking,
        progress,
    )
}

/// The id of one process's pages image (`pages-1.img`), as CRIU numbers it.
pub const PAGES_ID: u32 = 1;

/// Where a pre-dump's pages go.
pub enum PagesDest<'a> {
    /// An images directory: a new pages image `pages-<pages_id>.img` (created
    /// 0600; it must not exist) and its pagemap `pagemap-PID.img`.
    Dir { dir: &'a Path, pages_id: u32 },
    /// A page server, connected, its parent asked (see `ServerPages::connect`):
    /// the pagemap is opened before the freeze and closed after the drain.
    Server(&'a mut ServerPages),
    /// One process of a tree sent over the tree's connection (its parent
    /// asked by the caller): the process's pagemap is opened (PS_IOV_OPEN2
    /// under its own dst_id) when the pages destination is, and ended after
    /// the drain; the session stays open for the tree's next pagemap.
    Tree(&'a mut TreeSession),
}

/// A [`PagesDest`] made ready for pages.
enum Opened<'a> {
    File(PagesFile),
    Server(&'a mut ServerPages),
    Tree(TreePagemap<'a>),
}

impl PagesDest<'_> {
    fn open(&mut self, pid: i32) -> Result<Opened<'_>> {
        Ok(match self {
            PagesDest::Dir { dir, pages_id } => Opened::File(PagesFile::create(
                dir,
                *pages_id,
                crate::image::pagemap::pagemap_file_name(pid),
            )?),
            PagesDest::Server(s) => {
                s.open()?;
                Opened::Server(s)
            }
            PagesDest::Tree(s) => Opened::Tree(s.open(Dst::process(pid as u64))?),
        })
    }
}

impl Opened<'_> {
    fn out(&mut self) -> &mut dyn PagesOut {
        match self {
            Opened::File(f) => f,
            Opened::Server(s) => *s,
            Opened::Tree(t) => t,
        }
    }
}

/// [`pre_dump`] into a file or to a page server.
pub fn pre_dump_to(
    pid: i32,
    dest: &mut PagesDest<'_>,
    mode: Mode,
    config: &DrainConfig,
    tracking: &TrackOptions,
    progress: Option<&Progress>,
) -> Result<PreDumpReport> {
    let created = std::cell::Cell::new(false);
    let r = match mode {
        Mode::FreezeFree => pre_dump_freeze_free(pid, dest, config, tracking, progress, &created),
        _ => pre_dump_frozen(pid, dest, mode, config, tracking, progress, &created),
    };
    if r.is_err() && created.get() {
        // Undoing it freezes and injects again: until that is over the caller
        // must not exit (see `Progress::thawed`). Best effort: the error that
        // matters is the one being returned.
        if let Some(p) = progress {
            p.thawed.store(false, Ordering::SeqCst);
        }
        let _ = track::untrack(pid);
        if let Some(p) = progress {
            p.thawed.store(true, Ordering::SeqCst);
        }
    }
    r
}

/// The prepare phase's work common to every mode, done before any freeze:
/// smaps is slow (the kernel walks every page table for its sizes), opening
/// files is not free.
struct Prepared {
    start_time: u64,
    /// Runs that take or end the dirty state exclude each other (see TrackLock).
    _lock: Option<track::TrackLock>,
    vm_flags: HashMap<(u64, u64), VmFlags>,
    scanner: Scanner,
}

impl Prepared {
    fn new(pid: i32, lock: bool) -> Result<Prepared> {
        let st = proc::check_target(pid)?;
        let lock = match lock {
            true => Some(track::TrackLock::acquire(pid, st.start_time)?),
            false => None,
        };
        let smaps = proc::read_proc(pid, &format!("/proc/{pid}/smaps"))?;
        Ok(Prepared {
            start_time: st.start_time,
            _lock: lock,
            vm_flags: maps::parse_smaps_flags(&smaps)?,
            scanner: Scanner::open(pid)?,
        })
    }
}

/// Read and splice mode, and the final dump: prepare, freeze, plan, hold, thaw,
/// finish (see the top of this module).
fn pre_dump_frozen(
    pid: i32,
    dest: &mut PagesDest<'_>,
    mode: Mode,
    config: &DrainConfig,
    tracking: &TrackOptions,
    progress: Option<&Progress>,
    created: &Cell<bool>,
) -> Result<PreDumpReport> {
    // Prepare.
    let locks = tracking.backend.is_some() || tracking.final_dump.is_some();
    let mut prepared = Prepared::new(pid, locks)?;
    let mut opened = dest.open(pid)?;
    let out = opened.out();
    let mut pipes = match mode {
        Mode::Splice => Some(hold::SplicePipes::prepare(pid)?),
        Mode::Read | Mode::FreezeFree => None,
    };

    // Freeze. A dead run's leftovers go first: they must not be scanned, and
    // an injector would refuse to write over their journal.
    let frozen = Frozen::freeze(pid)?;
    let leftovers = crate::inject::leftovers::clean(&frozen)?;
    let dump_uptime_us = proc::uptime_us();
    let threads = frozen.tids().count();

    // Plan and hold, whose failures wait for the thaw.
    let planned = plan::plan_frozen(
        &frozen,
        &mut prepared.scanner,
        &prepared.vm_flags,
        tracking,
        created,
    )
    .and_then(|plan| {
        out.parent_ranges(&plan.to_parent)?;
        Ok(plan)
    });
    let held = match &planned {
        Ok(plan) => hold::hold(
            &frozen,
            plan,
            pipes.as_mut(),
            &leftovers,
            tracking.final_dump,
            out,
            config,
            progress.map(|p| &p.done),
        ),
        Err(_) => hold::Held::default(),
    };

    // Thaw.
    let freeze = match tracking.final_dump {
        Some(FinalDump {
            leave_stopped: true,
        }) if planned.is_ok() => frozen.thaw_stopped(),
        _ => frozen.thaw(),
    };
    if let Some(p) = progress {
        p.thawed.store(true, Ordering::SeqCst);
    }

    // Finish.
    let plan = planned?;
    let drained = finish::drain(pid, &plan, held, out, config, progress)?;
    let run = finish::Run {
        pid,
        start_time: prepared.start_time,
        requested_mode: mode,
        dump_uptime_us,
        threads,
        freeze,
        scan_method: prepared.scanner.method(),
        created_tracking: created.get(),
        leftovers_removed: (!leftovers.is_empty()).then(|| leftovers.describe()),
    };
    Ok(finish::report(run, plan, drained))
}

/// The freeze-free pre-dump (uffd-wp): the target runs throughout. Its
/// correctness rests on one kernel guarantee, that PAGEMAP_SCAN with
/// PM_SCAN_WP_MATCHING reports a page as written and write-protects it again
/// under the page-table lock, so that no write can fall between the two; the
/// whole argument is in docs/FREEZE-FREE.md. In short, per page, in this order:
/// register new VMAs (arms them), record the generation, take-and-re-arm the
/// written pages, find the present pages, copy. A page written after it was
/// re-armed is copied again by the next pre-dump, and the final dump, frozen
/// throughout, closes the chain with a consistent state.
fn pre_dump_freeze_free(
    pid: i32,
    dest: &mut PagesDest<'_>,
    config: &DrainConfig,
    tracking: &TrackOptions,
    progress: Option<&Progress>,
    created: &Cell<bool>,
) -> Result<PreDumpReport> {
    if tracking.final_dump.is_some() {
        return Err(Error::InvalidArgument(
            "a final dump is frozen throughout: it has no freeze-free mode".to_string(),
        ));
    }
    if let Err(why) = crate::inject::supported() {
        return Err(Error::InvalidArgument(format!(
            "the freeze-free mode makes the target's userfaultfd with an injected call: {why}"
        )));
    }
    if tracking.backend != Some(track::Backend::UffdWp) {
        return Err(Error::InvalidArgument(format!(
            "the freeze-free mode needs uffd-wp dirty tracking, not {}",
            tracking.backend.map_or("none", |b| b.name())
        )));
    }
    // Prepare.
    let mut prepared = Prepared::new(pid, true)?;

    // The one stop, on the first run only: making the uffd takes an injected
    // userfaultfd() (and the marker's memfd_create). Registering, scanning and
    // copying are done from here, with the target running.
    // A dead run's leftovers need a freeze to go (injected closes): only then.
    // The caller must not exit while the target is frozen (see
    // `Progress::thawed`): a tree runs this once per process, each frozen
    // alone, so the flag goes down around each of those freezes.
    let held = |frozen: bool| {
        if let Some(p) = progress {
            p.thawed.store(!frozen, Ordering::SeqCst);
        }
    };
    let mut leftovers_removed = None;
    if !crate::inject::leftovers::find(pid)?.is_empty() {
        held(true);
        let frozen = Frozen::freeze(pid).inspect_err(|_| held(false))?;
        let removed = crate::inject::leftovers::clean(&frozen);
        frozen.thaw();
        held(false);
        leftovers_removed = Some(removed?.describe());
    }
    let (tracker, freeze) = match open_tracker(pid, &held) {
        Ok(opened) => opened,
        // Chosen for the caller and impossible here: a plain read-mode pre-dump.
        Err(e) if tracking.auto && tracking_refused(&e) => {
            drop(prepared);
            held(true);
            let untracked = TrackOptions {
                backend: None,
                ..tracking.clone()
            };
            let mut report =
                pre_dump_frozen(pid, dest, Mode::Read, config, &untracked, progress, created)?;
            report.requested_mode = Mode::FreezeFree;
            report.fallback = Some(untracked_note(track::Backend::UffdWp, &e));
            return Ok(report);
        }
        Err(e) => return Err(e),
    };
    created.set(tracker.created());
    if let Some(p) = progress {
        p.thawed.store(true, Ordering::SeqCst);
    }
    let dump_uptime_us = proc::uptime_us();
    let threads = proc::tasks(pid)?.len();

    // Plan, with the target running; nothing to hold.
    let plan = plan::plan_running(
        pid,
        tracker,
        &mut prepared.scanner,
        &prepared.vm_flags,
        tracking,
    )?;
    // The destination opened once the plan is made (nothing is frozen to
    // wait for it): a process of a tree that is gone before then leaves no
    // pagemap behind, not even on a page server, which cannot take one back.
    let mut opened = dest.open(pid)?;
    let out = opened.out();
    out.parent_ranges(&plan.to_parent)?;

    // Finish.
    let drained = finish::drain(pid, &plan, hold::Held::default(), out, config, progress)?;
    let run = finish::Run {
        pid,
        start_time: prepared.start_time,
        requested_mode: Mode::FreezeFree,
        dump_uptime_us,
        threads,
        freeze,
        scan_method: prepared.scanner.method(),
        created_tracking: created.get(),
        leftovers_removed,
    };
    Ok(finish::report(run, plan, drained))
}

/// The target's uffd-wp tracking, found, or made in a freeze of its own (with
/// that freeze's times).
fn open_tracker(pid: i32, held: &dyn Fn(bool)) -> Result<(track::Tracker, FreezeTimes)> {
    if let Some(tracker) = track::Tracker::open_running(pid)? {
        return Ok((tracker, FreezeTimes::default()));
    }
    held(true);
    let frozen = Frozen::freeze(pid).inspect_err(|_| held(false))?;
    let made = (|| {
        let mut inj = Injector::any(&frozen)?;
        let tracker = track::Tracker::attach_with(track::Backend::UffdWp, &frozen, &mut inj, &[])?;
        inj.restore()?;
        Ok::<_, Error>(tracker)
    })();
    let freeze = frozen.thaw();
    held(false);
    Ok((made?, freeze))
}
