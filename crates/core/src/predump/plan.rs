//! The plan phase of a pre-dump: which pages to copy. The mappings are read and
//! selected, their present pages found, the dirty state taken (and re-armed),
//! and the present pages split into those to copy and those the parent images
//! hold. `plan_frozen` does it inside the frozen window (read, splice, final
//! dump); `plan_running` with the target running (freeze-free). A tree can run
//! `plan_frozen` per process inside its one freeze.

use std::cell::Cell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{tracking_refused, untracked_note, ParentChain, ParentOrigin, TrackOptions};
use crate::freeze::Frozen;
use crate::inject::Injector;
use crate::maps::{self, VmFlags};
use crate::scan::{self, ScanResult, Scanner};
use crate::{proc, shmem, track, PageRange, Result};

/// What a pre-dump copies and what it leaves to the parent images.
pub(crate) struct Plan {
    /// The scan's figures; its `ranges` are the pages to copy.
    pub(crate) found: ScanResult,
    /// Present pages the parent images hold (PE_PARENT entries).
    pub(crate) to_parent: Vec<PageRange>,
    /// Why every page is copied despite a parent, or why tracking was given up.
    pub(crate) track_note: Option<String>,
    /// The dirty tracking whose state was taken (None: none).
    pub(crate) tracking: Option<track::Backend>,
    /// Shared mappings left out, each with the reason.
    pub(crate) not_dumped: Vec<shmem::NotDumped>,
    /// Reading maps, scanning pages and taking the dirty state.
    pub(crate) scan_time: Duration,
}

/// What the scan found while frozen, before the pages are chosen.
struct Scanned {
    found: ScanResult,
    dirty: Option<Dirty>,
    /// Why tracking was given up (`--track-mem auto`), if it was.
    given_up: Option<String>,
    not_dumped: Vec<shmem::NotDumped>,
}

/// The plan of a frozen process: its mappings, present pages (and those of its
/// unreadable mappings, counted only), its dirty state taken and re-armed, and
/// the pages chosen. A final dump copies the threads' rseq areas whatever the
/// tracking says (see `hold`). Sets `created` when this run made the tracking.
pub(crate) fn plan_frozen(
    frozen: &Frozen,
    scanner: &mut Scanner,
    vm_flags: &HashMap<(u64, u64), VmFlags>,
    tracking: &TrackOptions,
    created: &Cell<bool>,
) -> Result<Plan> {
    let started = Instant::now();
    let scanned = scan_frozen(frozen, scanner, vm_flags, tracking, created);
    let scan_time = started.elapsed();
    let Scanned {
        mut found,
        dirty,
        given_up,
        not_dumped,
    } = scanned?;
    let used_tracking = dirty.as_ref().and(tracking.backend);
    // What to copy: with a valid parent, only present pages that were written
    // since it was made, or that it does not hold; the rest become PE_PARENT.
    let (mut dump, mut to_parent, note) = choose_pages(&found.ranges, dirty, tracking);
    if tracking.final_dump.is_some() {
        force_rseq(frozen, &mut dump, &mut to_parent)?;
    }
    found.ranges = dump;
    Ok(Plan {
        found,
        to_parent,
        track_note: given_up.or(note),
        tracking: used_tracking,
        not_dumped,
        scan_time,
    })
}

fn scan_frozen(
    frozen: &Frozen,
    scanner: &mut Scanner,
    vm_flags: &HashMap<(u64, u64), VmFlags>,
    tracking: &TrackOptions,
    created: &Cell<bool>,
) -> Result<Scanned> {
    let pid = frozen.pid();
    let text = proc::read_proc(pid, &format!("/proc/{pid}/maps"))?;
    let vmas = maps::parse_maps(&text)?;
    let not_dumped = shmem::not_dumped(pid, &vmas, Some(shmem::ANONYMOUS_OF_ONE_PROCESS));
    let (keep, skipped) = scan::select(&vmas, vm_flags, true);
    let mut found = scanner.present_frozen(frozen, &keep)?;
    found.vmas_skipped = skipped.len();
    let unreadable = scan::unreadable(&skipped);
    if !unreadable.is_empty() {
        found.unreadable_pages = scanner.present_frozen(frozen, &unreadable)?.pages_present;
    }
    // Tracking reads and re-arms the dirty state while every thread is
    // stopped, before splice mode's injector (one at a time per process).
    let mut given_up = None;
    let dirty = match tracking.backend {
        // A final dump of a process that holds no uffd-wp tracking of ours would make
        // one (injected calls, inside the frozen window) only to end it again: there is
        // no dirty state to read, so none is taken.
        Some(track::Backend::UffdWp)
            if tracking.final_dump.is_some() && track::find_ours(pid)?.is_none() =>
        {
            if tracking.parent.is_some() {
                given_up = Some(NOT_TRACKED_AT_DUMP.to_string());
            }
            None
        }
        Some(backend) => match take_dirty(frozen, backend, &keep, &tracking.generation) {
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
    Ok(Scanned {
        found,
        dirty,
        given_up,
        not_dumped,
    })
}

/// Why a final dump copies every page of a process with a parent: it holds
/// no uffd-wp tracking of predump's to read (a dump never starts it).
pub(crate) const NOT_TRACKED_AT_DUMP: &str =
    "the process holds no uffd-wp tracking (no pre-dump of the chain tracked it, or it was \
     ended since): what was written since the parent is not known, so every page is copied";

/// A final dump copies each thread's rseq area whatever the tracking says: the
/// kernel rewrites it (cpu_id) as the injected calls that end the tracking
/// return to user mode, after the dirty pages were taken (see `hold`). Moves
/// those pages from `to_parent` into `dump`. On the tracer thread
/// (PTRACE_GET_RSEQ_CONFIGURATION).
pub(crate) fn force_rseq(
    frozen: &Frozen,
    dump: &mut Vec<PageRange>,
    to_parent: &mut Vec<PageRange>,
) -> Result<()> {
    let mut rseq = Vec::new();
    for tid in frozen.tids() {
        rseq.extend(crate::inject::rseq_pages(tid)?);
    }
    let forced = crate::intersect(&crate::merged(rseq), to_parent);
    if !forced.is_empty() {
        *dump = crate::merged(dump.drain(..).chain(forced.iter().copied()).collect());
        *to_parent = crate::subtract(to_parent, &forced);
    }
    Ok(())
}

/// The plan of a running process holding uffd-wp tracking (the freeze-free
/// mode), in the order its correctness needs (docs/FREEZE-FREE.md): register
/// new VMAs (arms them), record the generation, take-and-re-arm the written
/// pages, then find the present pages.
pub(crate) fn plan_running(
    pid: i32,
    mut tracker: track::Tracker,
    scanner: &mut Scanner,
    vm_flags: &HashMap<(u64, u64), VmFlags>,
    tracking: &TrackOptions,
) -> Result<Plan> {
    let started = Instant::now();
    let text = proc::read_proc(pid, &format!("/proc/{pid}/maps"))?;
    let vmas = maps::parse_maps(&text)?;
    let not_dumped = shmem::not_dumped(pid, &vmas, Some(shmem::ANONYMOUS_OF_ONE_PROCESS));
    let (keep, skipped) = scan::select(&vmas, vm_flags, true);
    tracker.add_vmas(&keep)?;
    let dirty = arm(&mut tracker, &keep, &tracking.generation)?;
    // After the re-arm: a page present now and not reported written holds what
    // the chain holds (or is written later, and then reported next time).
    let mut found = scanner.present(&keep)?;
    found.vmas_skipped = skipped.len();
    // Read-mode images: CRIU never asks the parent for unreadable pages.
    found.unreadable_pages = 0;
    tracker.keep();
    let scan_time = started.elapsed();
    let (dump, to_parent, track_note) = choose_pages(&found.ranges, Some(dirty), tracking);
    found.ranges = dump;
    Ok(Plan {
        found,
        to_parent,
        track_note,
        tracking: Some(track::Backend::UffdWp),
        not_dumped,
        scan_time,
    })
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

    fn pr(page: u64, pages: u64) -> PageRange {
        PageRange::new(page * crate::PAGE_SIZE, pages)
    }

    fn dirty(pages: Vec<PageRange>, previous: Option<Armed>) -> Option<Dirty> {
        Some(Dirty {
            pages,
            previous,
            created: false,
        })
    }

    fn options(backend: Option<Backend>, parent: Option<ParentChain>) -> TrackOptions {
        TrackOptions {
            backend,
            generation: "g2".into(),
            parent,
            ..Default::default()
        }
    }

    /// Pages 0-9 and 20-29 present; the parent holds 0-9 and 20-24.
    fn present() -> Vec<PageRange> {
        vec![pr(0, 10), pr(20, 10)]
    }

    fn held_by_parent() -> ParentChain {
        ParentChain {
            pages: vec![pr(0, 10), pr(20, 5)],
            origin: ParentOrigin::Armed("g1".into()),
        }
    }

    #[test]
    fn without_a_parent_every_present_page_is_copied() {
        let t = options(Some(Backend::SoftDirty), None);
        let d = dirty(vec![pr(3, 1)], Some(armed("g1", None)));
        assert_eq!(choose_pages(&present(), d, &t), (present(), vec![], None));
    }

    #[test]
    fn with_a_trusted_parent_the_written_pages_and_those_it_lacks_are_copied() {
        let t = options(Some(Backend::UffdWp), Some(held_by_parent()));
        // Written: page 3, pages 8-11 (10-11 not present), page 22.
        let d = dirty(vec![pr(3, 1), pr(8, 4), pr(22, 1)], Some(armed("g1", None)));
        let (dump, to_parent, note) = choose_pages(&present(), d, &t);
        assert_eq!(dump, [pr(3, 1), pr(8, 2), pr(22, 1), pr(25, 5)]);
        assert_eq!(to_parent, [pr(0, 3), pr(4, 4), pr(20, 2), pr(23, 2)]);
        assert_eq!(note, None);
    }

    #[test]
    fn with_nothing_written_only_what_the_parent_lacks_is_copied() {
        let t = options(Some(Backend::SoftDirty), Some(held_by_parent()));
        let (dump, to_parent, note) =
            choose_pages(&present(), dirty(vec![], Some(armed("g1", None))), &t);
        assert_eq!(dump, [pr(25, 5)]);
        assert_eq!(to_parent, [pr(0, 10), pr(20, 5)]);
        assert_eq!(note, None);
    }

    #[test]
    fn an_untrusted_parent_or_no_dirty_state_copies_everything_and_says_why() {
        // No dirty state (no tracking, or tracking given up).
        let t = options(None, Some(held_by_parent()));
        let (dump, to_parent, note) = choose_pages(&present(), None, &t);
        assert_eq!((dump, to_parent), (present(), vec![]));
        assert!(note.unwrap().contains("--track-mem none"));
        // Re-armed by another run since the parent.
        let t = options(Some(Backend::UffdWp), Some(held_by_parent()));
        let d = dirty(vec![pr(3, 1)], Some(armed("g0", None)));
        let (dump, to_parent, note) = choose_pages(&present(), d, &t);
        assert_eq!((dump, to_parent), (present(), vec![]));
        assert!(note.unwrap().contains("re-armed after the parent"));
    }
}
