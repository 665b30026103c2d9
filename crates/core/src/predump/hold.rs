//! The hold phase of a pre-dump, the last work inside the frozen window after
//! the plan: splice mode references the chosen pages into pipes (after the
//! scan, so that the injector's scratch mapping is not in the scan); a final
//! dump ends the dirty tracking and copies the pages while still frozen. Read
//! mode holds nothing: it copies after the thaw.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use super::gate::drain_gated;
use super::plan::Plan;
use super::FinalDump;
use crate::drain::{DrainConfig, DrainOutcome};
use crate::freeze::Frozen;
use crate::inject::{leftovers, Injector};
use crate::pages_out::PagesOut;
use crate::{splice, track, Result};

/// Splice mode's pipes, made and sized before the freeze, and how many fds
/// the target can take.
pub(crate) struct SplicePipes {
    pipes: splice::Pipes,
    fd_room: usize,
}

impl SplicePipes {
    /// Made now, not while the target waits.
    pub(crate) fn prepare(pid: i32) -> Result<SplicePipes> {
        Ok(SplicePipes {
            pipes: splice::Pipes::prepare(crate::proc::resident_bytes(pid)?)?,
            fd_room: splice::target_fd_room(pid)?,
        })
    }
}

/// What the frozen window leaves for after the thaw.
#[derive(Default)]
pub(crate) struct Held {
    /// Splice mode: the pages referenced into pipes, or why splice was refused
    /// (the pages are then copied as in read mode).
    pub(crate) referenced: Option<Result<std::result::Result<splice::Pinned, splice::Refused>>>,
    pub(crate) reference_time: Duration,
    /// A final dump: the pages copied while frozen, and the copy's own time.
    pub(crate) copied: Option<Result<(DrainOutcome, Duration)>>,
    /// Ending the tracking and the copy: a dump's page work after the scan.
    pub(crate) frozen_copy_time: Duration,
}

/// Splice mode's references (with `pipes`) and a final dump's copy (with
/// `final_dump`), while `frozen`. Their failures are kept in `Held`, for the
/// caller to report after the thaw.
#[allow(clippy::too_many_arguments)]
pub(crate) fn hold(
    frozen: &Frozen,
    plan: &Plan,
    pipes: Option<&mut SplicePipes>,
    leftovers: &leftovers::Found,
    final_dump: Option<FinalDump>,
    out: &mut dyn PagesOut,
    config: &DrainConfig,
    progress: Option<&AtomicU64>,
) -> Held {
    let referenced_started = Instant::now();
    let referenced = match pipes {
        // A thread still inside a dead run's stub needs it as it is: no
        // injection until it ran its epilogue (inject::leftovers::Found).
        Some(_) if leftovers.in_use.is_some() => Some(Ok(Err(splice::Refused {
            reason: "a thread of the target is still inside the injected code of a predump \
                     that died (is the process stopped? continue it): nothing is injected \
                     until it has left it"
                .to_string(),
        }))),
        Some(p) => Some(splice::reference(
            frozen,
            &plan.found.ranges,
            &mut p.pipes,
            p.fd_room,
        )),
        None => None,
    };
    let reference_time = referenced_started.elapsed();
    // A final dump ends tracking, then copies while still frozen: copying last,
    // after every injected call, the images equal the memory the target is left
    // with. The calls' returns to user mode make the kernel rewrite the threads'
    // rseq areas after the dirty pages were taken: those pages are copied
    // whatever tracking says (see `plan::plan_frozen`).
    let frozen_copy_started = Instant::now();
    let copied = final_dump.map(|_| copy_final(frozen, plan, out, config, progress));
    Held {
        referenced,
        reference_time,
        copied,
        frozen_copy_time: frozen_copy_started.elapsed(),
    }
}

fn copy_final(
    frozen: &Frozen,
    plan: &Plan,
    out: &mut dyn PagesOut,
    config: &DrainConfig,
    progress: Option<&AtomicU64>,
) -> Result<(DrainOutcome, Duration)> {
    let pid = frozen.pid();
    if track::find_ours(pid)?.is_some() {
        let mut inj = Injector::any(frozen)?;
        track::Tracker::attach_with(track::Backend::UffdWp, frozen, &mut inj, &[])?
            .release(&mut inj)?;
        inj.restore()?;
    }
    let copy_started = Instant::now();
    drain_gated(pid, &plan.found.ranges, out, config, progress)
        .map(|outcome| (outcome, copy_started.elapsed()))
}
