//! The finish phase of a pre-dump, after the thaw: the pages drained (from
//! splice mode's pipes, or copied with process_vm_readv unless a final dump
//! copied them while frozen), the pages image synced and its pagemap written
//! (by the output, which owns the pair), and the report, written here once for
//! every mode.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::gate::drain_gated;
use super::hold::Held;
use super::plan::Plan;
use super::{Mode, PreDumpReport, Progress, SpliceStats};
use crate::drain::{DrainConfig, DrainEnd, DrainStats};
use crate::freeze::FreezeTimes;
use crate::mem_times::MemTimes;
use crate::pages_out::PagesOut;
use crate::scan::ScanMethod;
use crate::{splice, PageRange, Result};

/// The pages written and synced.
pub(crate) struct Drained {
    pub(crate) regions: Vec<PageRange>,
    pub(crate) pagemap_entries: usize,
    pub(crate) drain: DrainStats,
    /// The target exited during the copy.
    pub(crate) partial: bool,
    /// Splice mode's figures (None: the pages were copied).
    pub(crate) splice: Option<SpliceStats>,
    /// Why splice mode fell back to read mode.
    pub(crate) fallback: Option<String>,
    pub(crate) copied_frozen: bool,
    pub(crate) drain_time: Duration,
    pub(crate) copy_time: Duration,
    pub(crate) sync_time: Duration,
    pub(crate) mem: MemTimes,
}

/// Drains what `held` holds, or copies the plan's pages, into `out`, then
/// finishes it (the pages synced, their pagemap written). A reference or a final copy that failed while frozen fails here.
pub(crate) fn drain(
    pid: i32,
    plan: &Plan,
    held: Held,
    out: &mut dyn PagesOut,
    config: &DrainConfig,
    progress: Option<&Progress>,
) -> Result<Drained> {
    let (pinned, fallback) = match held.referenced.transpose()? {
        Some(Ok(pinned)) => (Some(pinned), None),
        Some(Err(refused)) => (None, Some(refused.reason)),
        None => (None, None),
    };
    let found = &plan.found;
    if let Some(p) = progress {
        let bytes: u64 = found.ranges.iter().map(|r| r.len()).sum();
        p.total.store(bytes, Ordering::Relaxed);
    }
    let done = progress.map(|p| &p.done);
    let copied_frozen = held.copied.is_some();
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
            let (regions, write_time) = splice::drain_pipes(pinned, out, done)?;
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
            let (outcome, copy_time) = match held.copied {
                Some(copied) => copied?,
                None => {
                    let copy_started = Instant::now();
                    let outcome = drain_gated(pid, &found.ranges, out, config, done)?;
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
    // The page work of the frozen window (freeze-free: done while running).
    let found_time = plan.scan_time + held.reference_time;
    let mem = if copied_frozen {
        MemTimes::copied_frozen(found_time + held.frozen_copy_time, &drain)
    } else if splice.is_some() {
        MemTimes::spliced(found_time, copy_time, sync_time)
    } else {
        MemTimes::copied_after_thaw(found_time, &drain, sync_time)
    };
    Ok(Drained {
        regions,
        pagemap_entries: out.pagemap_entries(),
        drain,
        partial,
        splice,
        fallback,
        copied_frozen,
        drain_time,
        copy_time,
        sync_time,
        mem,
    })
}

/// What a run knew of its target besides the pages.
pub(crate) struct Run {
    pub(crate) pid: i32,
    pub(crate) start_time: u64,
    pub(crate) requested_mode: Mode,
    pub(crate) dump_uptime_us: u64,
    pub(crate) threads: usize,
    pub(crate) freeze: FreezeTimes,
    pub(crate) scan_method: ScanMethod,
    pub(crate) created_tracking: bool,
    pub(crate) leftovers_removed: Option<String>,
}

/// The report of a run, its plan and its drain.
pub(crate) fn report(run: Run, plan: Plan, drained: Drained) -> PreDumpReport {
    let mode = match (run.requested_mode, &drained.splice) {
        (Mode::FreezeFree, _) => Mode::FreezeFree,
        (_, Some(_)) => Mode::Splice,
        (_, None) => Mode::Read,
    };
    PreDumpReport {
        requested_mode: run.requested_mode,
        mode,
        fallback: drained.fallback,
        splice: drained.splice,
        pid: run.pid,
        start_time: run.start_time,
        dump_uptime_us: run.dump_uptime_us,
        regions: drained.regions,
        pagemap_entries: drained.pagemap_entries,
        parent_regions: plan.to_parent,
        track_note: plan.track_note,
        tracking: plan.tracking,
        created_tracking: run.created_tracking,
        threads: run.threads,
        scan_method: run.scan_method,
        vmas_scanned: plan.found.vmas_scanned,
        vmas_skipped: plan.found.vmas_skipped,
        pages_scanned: plan.found.pages_scanned,
        pages_present: plan.found.pages_present,
        unreadable_pages: plan.found.unreadable_pages,
        not_dumped: plan.not_dumped,
        freeze: run.freeze,
        scan_time: plan.scan_time,
        drain_time: drained.drain_time,
        copy_time: drained.copy_time,
        sync_time: drained.sync_time,
        copied_frozen: drained.copied_frozen,
        mem: drained.mem,
        drain: drained.drain,
        partial: drained.partial,
        leftovers_removed: run.leftovers_removed,
    }
}
