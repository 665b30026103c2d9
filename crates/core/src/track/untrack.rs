//! `predump untrack`: ends predump's dirty tracking of a process.

use super::marker::{inherited, scan_fds};
use super::{Backend, TrackLock, Tracker};
use crate::freeze::Frozen;
use crate::inject::Injector;
use crate::Result;

/// What `untrack` did.
#[derive(Debug, Clone, Default)]
pub struct Untracked {
    /// The target had tracking of ours, now ended.
    pub tracking: bool,
    /// What a predump that died while injecting had left, now removed.
    pub leftovers: Option<String>,
}

/// Ends predump's dirty tracking of `pid`: closes the uffd and its marker in the
/// target (briefly frozen for the injected closes), which unregisters every
/// range. Also removes what a predump that died while injecting left in it,
/// and the copies of its parent's tracking it inherited by fork (`inherited`).
pub fn untrack(pid: i32) -> Result<Untracked> {
    let st = crate::proc::check_target(pid)?;
    let _lock = TrackLock::acquire(pid, st.start_time)?;
    let (ours, stale, _) = scan_fds(pid)?;
    if ours.is_none()
        && stale.is_empty()
        && inherited(pid)?.is_empty()
        && crate::inject::leftovers::find(pid)?.is_empty()
    {
        return Ok(Untracked::default());
    }
    let frozen = Frozen::freeze(pid)?;
    let removed = crate::inject::leftovers::clean(&frozen)?;
    let mut out = Untracked {
        tracking: false,
        leftovers: (!removed.is_empty()).then(|| removed.describe()),
    };
    // One injector for both: our uffd and its marker, or markers whose uffd is gone (a
    // run killed while ending the tracking), which attaching closes as well.
    let (ours, stale, _) = scan_fds(pid)?;
    let copies = inherited(pid)?;
    if ours.is_some() || !stale.is_empty() || !copies.is_empty() {
        let mut inj = Injector::any(&frozen)?;
        if ours.is_some() {
            let tracker = Tracker::attach_with(Backend::UffdWp, &frozen, &mut inj, &[])?;
            tracker.release(&mut inj)?;
        } else {
            for fd in stale {
                inj.close(fd)?;
            }
        }
        for fd in copies {
            inj.close(fd)?;
        }
        inj.restore()?;
        out.tracking = true;
    }
    frozen.thaw();
    Ok(out)
}
