//! The tree's dirty-page tracking on the tracer thread (taken for the
//! processes the scan threads could not, ended by a final dump): split out of
//! `tree_dump` to keep the phases' file short.

use crate::scan;
use crate::tree::FrozenTree;
use crate::tree_track::{self, TreeTracking};
use crate::Result;

use super::scan::Found;

/// Takes and re-arms the dirty pages of every frozen process the scan threads
/// could not (those not tracked yet), one after another on this thread (the
/// tracer: a first arming injects calls), and keeps in each `Found` only the
/// pages to copy. `created`: the processes whose tracking this run started.
pub(super) fn track_all(
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
            crate::predump::force_rseq(p, &mut f.scan.ranges, &mut chosen.to_parent)?;
        }
    }
    Ok(())
}

/// Ends predump's uffd-wp tracking in every process of the frozen tree that
/// holds it, and closes the copies of a parent's tracking a process inherited
/// by fork (`track::inherited`: they would keep the parent's uffd, and its
/// registrations, alive): after a final dump nothing of predump is left in
/// the tree.
pub(super) fn end_tracking(frozen: &FrozenTree) -> Result<()> {
    for p in frozen.processes() {
        let ours = crate::track::find_ours(p.member.pid)?.is_some();
        let copies = crate::track::inherited(p.member.pid)?;
        if ours || !copies.is_empty() {
            let mut inj = crate::inject::Injector::any(&p.frozen)?;
            if ours {
                crate::track::Tracker::attach_with(
                    crate::track::Backend::UffdWp,
                    &p.frozen,
                    &mut inj,
                    &[],
                )?
                .release(&mut inj)?;
            }
            for fd in copies {
                inj.close(fd)?;
            }
            inj.restore()?;
        }
    }
    Ok(())
}
