//! A pre-dump, end to end. Read mode finds the pages while the target is frozen,
//! thaws it, then copies them with process_vm_readv: the frozen window holds only
//! the freeze, one read of /proc/PID/maps and the page scan. Splice mode also
//! references the pages into pipes while frozen (see `splice`), and falls back to
//! read mode where vmsplice is refused.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::drain::{self, DrainConfig, DrainEnd, DrainStats};
use crate::freeze::{FreezeTimes, Frozen};
use crate::inject::Injector;
use crate::mem_times::MemTimes;
use crate::pages_out::{PagesFile, PagesOut};
use crate::pageserver::sender::ServerPages;
use crate::scan::{self, ScanMethod, Scanner};
use crate::{maps, proc, shmem, splice, track, Error, PageRange, Result};

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
    /// The pages image synced (fsync and close, or the page server's answer).
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

/// Pre-dumps `pid` into a new pages image at `pages_path` (created 0600; it must
/// not exist).
///
/// A run that starts the target's dirty tracking (uffd-wp: the first one) and
/// then fails ends it again, so that a failure leaves nothing in the target;
/// a run that found tracking and fails leaves it, recording a generation that
/// no images directory holds (the next run then copies every page).
pub fn pre_dump(
    pid: i32,
    pages_path: &Path,
    mode: Mode,
    config: &DrainConfig,
    tracking: &TrackOptions,
    progress: Option<&Progress>,
) -> Result<PreDumpReport> {
    pre_dump_to(
        pid,
        &mut PagesDest::File(pages_path),
        mode,
        config,
        tracking,
        progress,
    )
}

/// Where a pre-dump's pages go.
pub enum PagesDest<'a> {
    /// A new pages image (created 0600; it must not exist).
    File(&'a Path),
    /// A page server, connected, its parent asked (see `ServerPages::connect`):
    /// the pagemap is opened before the freeze and closed after the drain.
    Server(&'a mut ServerPages),
}

/// A [`PagesDest`] made ready for pages.
enum Opened<'a> {
    File(PagesFile),
    Server(&'a mut ServerPages),
}

impl PagesDest<'_> {
    fn open(&mut self) -> Result<Opened<'_>> {
        Ok(match self {
            PagesDest::File(path) => Opened::File(PagesFile::create(path)?),
            PagesDest::Server(s) => {
                s.open()?;
                Opened::Server(s)
            }
        })
    }
}

impl Opened<'_> {
    fn out(&mut self) -> &mut dyn PagesOut {
        match self {
            Opened::File(f) => f,
            Opened::Server(s) => *s,
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

fn pre_dump_frozen(
    pid: i32,
    dest: &mut PagesDest<'_>,
    mode: Mode,
    config: &DrainConfig,
    tracking: &TrackOptions,
    progress: Option<&Progress>,
    created: &std::cell::Cell<bool>,
) -> Result<PreDumpReport> {
    let st = proc::check_target(pid)?;
    // Runs that take or end the dirty state exclude each other (see TrackLock).
    let _lock = match (tracking.backend, tracking.final_dump) {
        (None, None) => None,
        _ => Some(track::TrackLock::acquire(pid, st.start_time)?),
    };
    // Everything that can be done before freezing is: smaps is slow (the kernel
    // walks every page table for its sizes), opening files is not free.
    let smaps = proc::read_proc(pid, &format!("/proc/{pid}/smaps"))?;
    let vm_flags = maps::parse_smaps_flags(&smaps)?;
    let mut scanner = Scanner::open(pid)?;
    let mut opened = dest.open()?;
    let out = opened.out();
    // Splice mode's pipes are made and sized now, not while the target waits.
    let mut spliced = match mode {
        Mode::Splice => Some((
            splice::Pipes::prepare(proc::resident_bytes(pid)?)?,
            splice::target_fd_room(pid)?,
        )),
        Mode::Read | Mode::FreezeFree => None,
    };

    let frozen = Frozen::freeze(pid)?;
    // A dead run's leftovers go first: they must not be scanned, and an
    // injector would refuse to write over their journal.
    let leftovers_removed = crate::inject::leftovers::clean(&frozen)?;
    let dump_uptime_us = proc::uptime_us();
    let threads = frozen.tids().count();
    let scan_started = Instant::now();
    let mut given_up = None;
    let mut not_dumped = Vec::new();
    let found = (|| {
        let text = proc::read_proc(pid, &format!("/proc/{pid}/maps"))?;
        let vmas = maps::parse_maps(&text)?;
        not_dumped = shmem::not_dumped(pid, &vmas, Some(shmem::ANONYMOUS_OF_ONE_PROCESS));
        let (keep, skipped) = scan::select(&vmas, &vm_flags, true);
        let mut found = scanner.present_frozen(&frozen, &keep)?;
        found.vmas_skipped = skipped.len();
        let unreadable = scan::unreadable(&skipped);
        if !unreadable.is_empty() {
            found.unreadable_pages = scanner.present_frozen(&frozen, &unreadable)?.pages_present;
        }
        // Tracking reads and re-arms the dirty state while every thread is
        // stopped, before splice mode's injector (one at a time per process).
        let dirty = match tracking.backend {
            // A final dump of a process that holds no uffd-wp tracking of ours would make
            // one (injected calls, inside the frozen window) only to end it again: there is
            // no dirty state to read, so none is taken.
            Some(track::Backend::UffdWp)
                if tracking.final_dump.is_some() && track::find_ours(pid)?.is_none() =>
            {
                if tracking.parent.is_some() {
                    given_up = Some(
                        "the process holds no uffd-wp tracking (no pre-dump of the chain \
                         tracked it, or it was ended since): what was written since the \
                         parent is not known, so every page is copied"
                            .to_string(),
                    );
                }
                None
            }
            Some(backend) => match take_dirty(&frozen, backend, &keep, &tracking.generation) {
                Ok(dirty) => {
                    created.set(dirty.created);
                    Some(dirty)
                }
                Err(e) if tracking.auto && tracking_refused(&e) => {
                    given_up = Some(untracked_note(backend, &e));
                    None
                }
                Err(e) => return Err(e),
            },
            None => None,
        };
        Ok::<_, Error>((found, dirty))
    })();
    let scan_time = scan_started.elapsed();
    // What to copy: with a valid parent, only present pages that were written
    // since it was made, or that it does not hold; the rest become PE_PARENT.
    let used_tracking = match &found {
        Ok((_, Some(_))) => tracking.backend,
        _ => None,
    };
    let chosen = found.and_then(|(mut found, dirty)| {
        let (mut dump, mut to_parent, note) = choose_pages(&found.ranges, dirty, tracking);
        let note = given_up.take().or(note);
        if tracking.final_dump.is_some() {
            // Rewritten by the kernel after the dirty pages are taken (below).
            let mut rseq = Vec::new();
            for tid in frozen.tids() {
                rseq.extend(crate::inject::rseq_pages(tid)?);
            }
            let forced = crate::intersect(&crate::merged(rseq), &to_parent);
            dump = crate::merged(dump.into_iter().chain(forced.iter().copied()).collect());
            to_parent = crate::subtract(&to_parent, &forced);
        }
        found.ranges = dump;
        out.parent_ranges(&to_parent)?;
        Ok((found, to_parent, note))
    });
    let (found, to_parent, track_note) = match chosen {
        Ok((found, to_parent, note)) => (Ok(found), to_parent, note),
        Err(e) => (Err(e), Vec::new(), None),
    };
    // Splice mode references the pages while still frozen (after the scan, so
    // that the injector's scratch mapping is not in the scan).
    let referenced_started = Instant::now();
    let referenced = match (&found, spliced.as_mut()) {
        // A thread still inside a dead run's stub needs it as it is: no
        // injection until it ran its epilogue (inject::leftovers::Found).
        (Ok(_), Some(_)) if leftovers_removed.in_use.is_some() => Some(Ok(Err(splice::Refused {
            reason: "a thread of the target is still inside the injected code of a predump \
                     that died (is the process stopped? continue it): nothing is injected \
                     until it has left it"
                .to_string(),
        }))),
        (Ok(found), Some((pipes, fd_room))) => {
            Some(splice::reference(&frozen, &found.ranges, pipes, *fd_room))
        }
        _ => None,
    };
    let reference_time = referenced_started.elapsed();
    // A final dump ends tracking, then copies while still frozen: copying last,
    // after every injected call, the images equal the memory the target is left
    // with. The calls' returns to user mode make the kernel rewrite the threads'
    // rseq areas after the dirty pages were taken: those pages are copied
    // whatever tracking says (above).
    let frozen_copy_started = Instant::now();
    let copied = match (&found, tracking.final_dump) {
        (Ok(found), Some(_)) => Some((|| {
            if track::find_ours(pid)?.is_some() {
                let mut inj = Injector::any(&frozen)?;
                track::Tracker::attach_with(track::Backend::UffdWp, &frozen, &mut inj, &[])?
                    .release(&mut inj)?;
                inj.restore()?;
            }
            let copy_started = Instant::now();
            drain_gated(pid, &found.ranges, out, config, progress.map(|p| &p.done))
                .map(|outcome| (outcome, copy_started.elapsed()))
        })()),
        _ => None,
    };
    // Ending the tracking and the copy: a dump's page work after the scan.
    let frozen_copy_time = frozen_copy_started.elapsed();
    let freeze = match tracking.final_dump {
        Some(FinalDump {
            leave_stopped: true,
        }) if found.is_ok() => frozen.thaw_stopped(),
        _ => frozen.thaw(),
    };
    if let Some(p) = progress {
        p.thawed.store(true, Ordering::SeqCst);
    }
    let found = found?;
    let (pinned, fallback) = match referenced.transpose()? {
        Some(Ok(pinned)) => (Some(pinned), None),
        Some(Err(refused)) => (None, Some(refused.reason)),
        None => (None, None),
    };

    if let Some(p) = progress {
        let bytes: u64 = found.ranges.iter().map(|r| r.len()).sum();
        p.total.store(bytes, Ordering::Relaxed);
    }
    let drain_started = Instant::now();
    let (regions, drain, partial, splice, copy_time) = match pinned {
        Some(pinned) => {
            let stats = SpliceStats {
                pipes: pinned.pipes(),
                pipe_bytes: pinned.pipe_bytes,
                pinned_bytes: pinned.pinned_bytes,
                injected_calls: pinned.injected_calls,
                inject_time: pinned.inject_time,
            };
            let gone = pinned.pages_gone;
            let (regions, write_time) =
                splice::drain_pipes(pinned, out, progress.map(|p| &p.done))?;
            let written: u64 = regions.iter().map(|r| r.pages).sum();
            let drain = DrainStats {
                pages_requested: found.pages_present,
                pages_written: written,
                pages_gone: gone,
                bytes_written: written * crate::PAGE_SIZE,
                write_time,
                buffer_bytes: stats.pipe_bytes,
                ..Default::default()
            };
            (regions, drain, false, Some(stats), write_time)
        }
        None => {
            let (outcome, copy_time) = match copied {
                Some(copied) => copied?,
                None => {
                    let copy_started = Instant::now();
                    let outcome =
                        drain_gated(pid, &found.ranges, out, config, progress.map(|p| &p.done))?;
                    (outcome, copy_started.elapsed())
                }
            };
            let partial = outcome.end == DrainEnd::TargetExited;
            (outcome.regions, outcome.stats, partial, None, copy_time)
        }
    };
    let sync_started = Instant::now();
    out.finish()?;
    let sync_time = sync_started.elapsed();
    let drain_time = drain_started.elapsed();
    let copied_frozen = tracking.final_dump.is_some();
    let mem = if copied_frozen {
        MemTimes::copied_frozen(scan_time + reference_time + frozen_copy_time, &drain)
    } else if splice.is_some() {
        MemTimes::spliced(scan_time + reference_time, copy_time, sync_time)
    } else {
        MemTimes::copied_after_thaw(scan_time + reference_time, &drain, sync_time)
    };

    Ok(PreDumpReport {
        requested_mode: mode,
        mode: if splice.is_some() {
            Mode::Splice
        } else {
            Mode::Read
        },
        fallback,
        splice,
        pid,
        start_time: st.start_time,
        dump_uptime_us,
        regions,
        parent_regions: to_parent,
        track_note,
        tracking: used_tracking,
        created_tracking: created.get(),
        threads,
        scan_method: scanner.method(),
        vmas_scanned: found.vmas_scanned,
        vmas_skipped: found.vmas_skipped,
        pages_scanned: found.pages_scanned,
        pages_present: found.pages_present,
        unreadable_pages: found.unreadable_pages,
        freeze,
        scan_time,
        drain_time,
        copy_time,
        sync_time,
        copied_frozen,
        mem,
        drain,
        partial,
        not_dumped,
        leftovers_removed: (!leftovers_removed.is_empty()).then(|| leftovers_removed.describe()),
    })
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
    created: &std::cell::Cell<bool>,
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
    let st = proc::check_target(pid)?;
    let lock = track::TrackLock::acquire(pid, st.start_time)?;
    let smaps = proc::read_proc(pid, &format!("/proc/{pid}/smaps"))?;
    let vm_flags = maps::parse_smaps_flags(&smaps)?;
    let mut scanner = Scanner::open(pid)?;

    // The one stop, on the first run only: making the uffd takes an injected
    // userfaultfd() (and the marker's memfd_create). Registering, scanning and
    // copying are done from here, with the target running.
    // A dead run's leftovers need a freeze to go (injected closes): only then.
    let mut leftovers_removed = None;
    if !crate::inject::leftovers::find(pid)?.is_empty() {
        let frozen = Frozen::freeze(pid)?;
        let removed = crate::inject::leftovers::clean(&frozen);
        frozen.thaw();
        leftovers_removed = Some(removed?.describe());
    }
    let opened = track::Tracker::open_running(pid).and_then(|found| match found {
        Some(tracker) => Ok((tracker, FreezeTimes::default())),
        None => {
            let frozen = Frozen::freeze(pid)?;
            let made = (|| {
                let mut inj = Injector::any(&frozen)?;
                let tracker =
                    track::Tracker::attach_with(track::Backend::UffdWp, &frozen, &mut inj, &[])?;
                inj.restore()?;
                Ok::<_, Error>(tracker)
            })();
            let freeze = frozen.thaw();
            Ok((made?, freeze))
        }
    });
    let (mut tracker, freeze) = match opened {
        Ok(opened) => opened,
        // Chosen for the caller and impossible here: a plain read-mode pre-dump.
        Err(e) if tracking.auto && tracking_refused(&e) => {
            drop(lock);
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
    let mut opened = dest.open()?;
    let out = opened.out();
    if let Some(p) = progress {
        p.thawed.store(true, Ordering::SeqCst);
    }
    let dump_uptime_us = proc::uptime_us();
    let threads = proc::tasks(pid)?.len();

    let scan_started = Instant::now();
    let text = proc::read_proc(pid, &format!("/proc/{pid}/maps"))?;
    let vmas = maps::parse_maps(&text)?;
    let not_dumped = shmem::not_dumped(pid, &vmas, Some(shmem::ANONYMOUS_OF_ONE_PROCESS));
    let (keep, skipped) = scan::select(&vmas, &vm_flags, true);
    tracker.add_vmas(&keep)?;
    let dirty = arm(&mut tracker, &keep, &tracking.generation)?;
    // After the re-arm: a page present now and not reported written holds what
    // the chain holds (or is written later, and then reported next time).
    let mut found = scanner.present(&keep)?;
    found.vmas_skipped = skipped.len();
    tracker.keep();
    let scan_time = scan_started.elapsed();

    let (dump, to_parent, track_note) = choose_pages(&found.ranges, Some(dirty), tracking);
    out.parent_ranges(&to_parent)?;
    if let Some(p) = progress {
        let bytes: u64 = dump.iter().map(|r| r.len()).sum();
        p.total.store(bytes, Ordering::Relaxed);
    }
    let drain_started = Instant::now();
    let outcome = drain_gated(pid, &dump, out, config, progress.map(|p| &p.done))?;
    let copy_time = drain_started.elapsed();
    out.finish()?;
    let drain_time = drain_started.elapsed();
    let sync_time = drain_time.saturating_sub(copy_time);
    Ok(PreDumpReport {
        requested_mode: Mode::FreezeFree,
        mode: Mode::FreezeFree,
        fallback: None,
        splice: None,
        pid,
        start_time: st.start_time,
        dump_uptime_us,
        regions: outcome.regions,
        parent_regions: to_parent,
        track_note,
        tracking: Some(track::Backend::UffdWp),
        created_tracking: created.get(),
        threads,
        scan_method: scanner.method(),
        vmas_scanned: found.vmas_scanned,
        vmas_skipped: found.vmas_skipped,
        pages_scanned: found.pages_scanned,
        pages_present: found.pages_present,
        // Read-mode images: CRIU never asks them of the parent.
        unreadable_pages: 0,
        freeze,
        scan_time,
        drain_time,
        copy_time,
        sync_time,
        copied_frozen: false,
        mem: MemTimes::copied_after_thaw(scan_time, &outcome.stats, sync_time),
        partial: outcome.end == DrainEnd::TargetExited,
        drain: outcome.stats,
        not_dumped,
        leftovers_removed,
    })
}

/// The drain, with a test hook: when `PREDUMP_TEST_DRAIN_GATE` names a FIFO, the
/// first buffer's worth of pages is copied, then the drain waits for one byte
/// from the FIFO before the rest. Tests use it to act in the middle of a drain
/// (kill the target, unmap memory) without guessing with sleeps.
pub(crate) fn drain_gated(
    pid: i32,
    ranges: &[PageRange],
    out: &mut dyn PagesOut,
    config: &DrainConfig,
    progress: Option<&AtomicU64>,
) -> Result<drain::DrainOutcome> {
    let Some(gate) = std::env::var_os("PREDUMP_TEST_DRAIN_GATE") else {
        return drain::drain(pid, ranges, out, config, progress);
    };
    let (first, rest) = split_ranges(
        ranges,
        (config.buffer_bytes as u64 / crate::PAGE_SIZE).max(1),
    );
    let mut outcome = drain::drain(pid, &first, out, config, progress)?;
    let mut byte = [0u8; 1];
    std::io::Read::read_exact(
        &mut File::open(&gate).map_err(|e| Error::sys("opening the drain gate", e))?,
        &mut byte,
    )
    .map_err(|e| Error::sys("waiting at the drain gate", e))?;
    if outcome.end == DrainEnd::Complete {
        let second = drain::drain(pid, &rest, out, config, progress)?;
        for r in second.regions {
            crate::push_merged(&mut outcome.regions, r.start, r.pages);
        }
        let (a, b) = (&mut outcome.stats, second.stats);
        a.pages_requested += b.pages_requested;
        a.pages_written += b.pages_written;
        a.pages_gone += b.pages_gone;
        a.bytes_written += b.bytes_written;
        a.read_time += b.read_time;
        a.write_time += b.write_time;
        a.readv_calls += b.readv_calls;
        outcome.end = second.end;
    }
    Ok(outcome)
}

/// Splits sorted ranges after `pages` pages.
fn split_ranges(ranges: &[PageRange], mut pages: u64) -> (Vec<PageRange>, Vec<PageRange>) {
    let mut first = Vec::new();
    let mut rest = Vec::new();
    for r in ranges {
        if pages >= r.pages {
            pages -= r.pages;
            first.push(*r);
        } else if pages > 0 {
            first.push(PageRange::new(r.start, pages));
            rest.push(PageRange::new(
                r.start + pages * crate::PAGE_SIZE,
                r.pages - pages,
            ));
            pages = 0;
        } else {
            rest.push(*r);
        }
    }
    (first, rest)
}

/// What tracking found while frozen: the written pages since the previous
/// arming, and the generation that armed it (None: tracking starts now).
pub(crate) struct Dirty {
    pages: Vec<PageRange>,
    previous: Option<track::Armed>,
    /// This run made the tracking (no earlier run left it).
    pub(crate) created: bool,
}

/// Attaches (or finds) the target's tracking, takes and re-arms its dirty pages,
/// and records this run's generation. The injector is gone when this returns.
pub(crate) fn take_dirty(
    frozen: &Frozen,
    backend: track::Backend,
    keep: &[&maps::Vma],
    generation: &str,
) -> Result<Dirty> {
    let pid = frozen.pid();
    // Tracking left by an earlier run needs no injected call: no injector.
    if backend == track::Backend::UffdWp {
        if let Some(mut tracker) = track::Tracker::open_running(pid)? {
            tracker.add_vmas(keep)?;
            let dirty = arm(&mut tracker, keep, generation)?;
            tracker.keep();
            return Ok(dirty);
        }
    }
    // Soft-dirty lives in the kernel's page tables: nothing to inject, so no
    // injector (which would write its stub into the target's vDSO, and fails
    // where the vDSO has no room for it).
    if backend != track::Backend::UffdWp {
        let mut tracker = track::Tracker::attach_without_injection(backend, frozen, keep)?;
        let dirty = arm(&mut tracker, keep, generation)?;
        tracker.keep();
        return Ok(dirty);
    }
    let mut inj = Injector::any(frozen)?;
    let mut tracker = track::Tracker::attach_with(backend, frozen, &mut inj, keep)?;
    let dirty = arm(&mut tracker, keep, generation)?;
    inj.restore()?;
    tracker.keep();
    Ok(dirty)
}

/// Takes the dirty pages of `keep` and re-arms them, in the order that keeps a
/// chain safe whenever the run dies: this run's generation is recorded *before*
/// any page is re-armed, so a run that dies after re-arming leaves a generation
/// that no images directory records, and the next run copies everything instead
/// of trusting a parent that lacks the pages this one took.
pub(crate) fn arm(
    tracker: &mut track::Tracker,
    keep: &[&maps::Vma],
    generation: &str,
) -> Result<Dirty> {
    // Only uffd-wp leaves a marker to name the arming run; without one the
    // previous arming cannot be checked against a parent.
    let previous = tracker.generation()?;
    tracker.set_generation(generation)?;
    let ranges: Vec<(u64, u64)> = keep.iter().map(|v| (v.start, v.end)).collect();
    let mut pages = tracker.take_dirty(&ranges)?;
    let created = tracker.created();
    // VMAs registered by this run hold writes made before: all of their pages
    // count as written (this kernel reports them so anyway; others need not).
    if !tracker.new_vmas().is_empty() {
        pages.extend(
            tracker
                .new_vmas()
                .iter()
                .map(|&(s, e)| PageRange::new(s, (e - s) / crate::PAGE_SIZE)),
        );
        pages = crate::merged(pages);
    }
    Ok(Dirty {
        pages,
        previous,
        created,
    })
}

/// Why the parent cannot be trusted to hold every page the tracking calls clean
/// (None: it can). The rule: a parent is usable only if it was made after the
/// last reset of the target's dirty state, i.e. by the run that armed it last.
/// predump knows its own runs (the generation in the marker or the soft-dirty
/// record); a CRIU pre-dump leaves no trace in the process, but its images say
/// when it was frozen, and predump's soft-dirty record when predump cleared
/// last. (A CRIU run whose images are not the parent cannot be seen at all: as
/// with CRIU's own chains, the parent must be the latest pre-dump.)
fn distrust(
    parent: &ParentChain,
    backend: Option<track::Backend>,
    previous: Option<&track::Armed>,
) -> Option<&'static str> {
    match (&parent.origin, previous) {
        (ParentOrigin::Armed(g), Some(p)) if p.generation == *g => None,
        (ParentOrigin::Armed(_), None) => {
            Some("dirty tracking starts with this pre-dump: every page is copied")
        }
        (ParentOrigin::Armed(_), Some(_)) => Some(
            "the target's dirty tracking was re-armed after the parent images were made, \
             by a later pre-dump (is the parent the newest of its chain?) or by one that \
             failed: what was written since the parent is not known, so every page is copied",
        ),
        (ParentOrigin::Snapshot { .. }, _) if backend != Some(track::Backend::SoftDirty) => Some(
            "the parent was made by CRIU or without dirty tracking, which only \
                 soft-dirty tracking can continue: every page is copied",
        ),
        // No predump run cleared this process's bits: the parent's run (CRIU's
        // pre-dump) or an earlier one did, or nobody did and every page written
        // since the process started is soft-dirty.
        (ParentOrigin::Snapshot { .. }, None) => None,
        (ParentOrigin::Snapshot { at_us }, Some(p)) if p.at_us.is_some_and(|t| t < *at_us) => None,
        (ParentOrigin::Snapshot { .. }, Some(_)) => Some(
            "a predump pre-dump cleared the target's soft-dirty bits after the parent \
             was made: it may lack pages they now call clean; every page is copied",
        ),
    }
}

/// Splits the present pages into those to copy and those the parent holds.
pub(crate) fn choose_pages(
    present: &[PageRange],
    dirty: Option<Dirty>,
    tracking: &TrackOptions,
) -> (Vec<PageRange>, Vec<PageRange>, Option<String>) {
    let Some(parent) = &tracking.parent else {
        return (present.to_vec(), Vec::new(), None);
    };
    let full = |why: &str| (present.to_vec(), Vec::new(), Some(why.to_string()));
    let Some(dirty) = dirty else {
        return full("no dirty tracking (--track-mem none): every page is copied");
    };
    if let Some(why) = distrust(parent, tracking.backend, dirty.previous.as_ref()) {
        return full(why);
    }
    let mut must: Vec<PageRange> = dirty.pages;
    must.extend(crate::subtract(present, &parent.pages));
    let dump = crate::intersect(present, &crate::merged(must));
    let to_parent = crate::subtract(present, &dump);
    (dump, to_parent, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use track::{Armed, Backend};

    fn armed(generation: &str, at_us: Option<u64>) -> Armed {
        Armed {
            generation: generation.into(),
            at_us,
        }
    }

    fn parent(origin: ParentOrigin) -> ParentChain {
        ParentChain {
            pages: Vec::new(),
            origin,
        }
    }

    /// The rule: a parent is trusted only if it was made after the last reset of
    /// the dirty state, as far as predump can tell.
    #[test]
    fn which_parents_are_trusted() {
        let sd = Some(Backend::SoftDirty);
        let uffd = Some(Backend::UffdWp);
        let ours = parent(ParentOrigin::Armed("g1".into()));
        // predump's own parent: only the run that armed last.
        assert_eq!(distrust(&ours, sd, Some(&armed("g1", Some(5)))), None);
        assert_eq!(distrust(&ours, uffd, Some(&armed("g1", None))), None);
        assert!(distrust(&ours, sd, Some(&armed("g2", Some(5))))
            .unwrap()
            .contains("re-armed after the parent images were made"));
        assert!(distrust(&ours, sd, None)
            .unwrap()
            .contains("starts with this"));
        // CRIU's pre-dump (or an untracked one), frozen at 1000 µs after boot.
        let criu = parent(ParentOrigin::Snapshot { at_us: 1000 });
        assert_eq!(distrust(&criu, sd, None), None, "no predump clear at all");
        assert_eq!(distrust(&criu, sd, Some(&armed("g", Some(999)))), None);
        for later in [Some(1000), Some(1001), None] {
            assert!(
                distrust(&criu, sd, Some(&armed("g", later)))
                    .unwrap()
                    .contains("cleared the target's soft-dirty bits after"),
                "{later:?}"
            );
        }
        // uffd-wp arming knows nothing of CRIU's clears.
        assert!(distrust(&criu, uffd, None)
            .unwrap()
            .contains("only soft-dirty"));
    }
}
