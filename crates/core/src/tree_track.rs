//! Dirty tracking of a tree's processes: each one's written pages taken and
//! re-armed while the whole tree is frozen, with the backend, generation and
//! parent-trust rule of a single process's pre-dump (`predump::take_dirty`,
//! `predump::choose_pages`), so that a pre-dump of the tree on its parent
//! copies only what each process wrote since.
//!
//! A final dump of the tree reads the tracking too, as `criu dump --track-mem`
//! does, so that it copies (inside its frozen window) only what each process
//! wrote since the last pre-dump; it never starts tracking a process, and
//! ends it in every process after taking it (the caller).
//!
//! Anonymous shared memory is not tracked through the processes: each shared
//! object is compared with its chain's copy instead (`shmem_chain`).

use std::collections::HashMap;

use crate::freeze::Frozen;
use crate::maps::Vma;
use crate::predump::{self, ParentChain, TrackOptions};
use crate::track::{self, Backend};
use crate::{PageRange, Result};

/// The tracking asked of a tree's pre-dump.
#[derive(Debug, Clone)]
pub struct TreeTracking {
    pub backend: Backend,
    /// This run's arming, recorded in every process it tracks (and, by the
    /// caller, in the images directory).
    pub generation: String,
    /// Chosen for the caller (`--track-mem auto`): a process that cannot be
    /// tracked is copied whole, with a note, instead of failing the tree.
    pub auto: bool,
    /// The chain of each process's parent images, by pid and start time
    /// (clock ticks after boot): only a process that is the one the parent
    /// images were made of has one.
    pub parents: HashMap<(i32, u64), ParentChain>,
    /// For a final dump: take what the chain's tracking recorded, never start
    /// it (a process that holds none is copied whole).
    pub final_dump: bool,
}

/// What tracking decided for one process.
#[derive(Debug, Default)]
pub struct Chosen {
    /// The present pages to copy (the caller takes them).
    pub dump: Vec<PageRange>,
    /// The present pages its parent images hold (PE_PARENT).
    pub to_parent: Vec<PageRange>,
    /// Why every page is copied, when it is despite a parent.
    pub note: Option<String>,
    /// The backend that took its dirty pages (None: untracked, see `note`).
    pub used: Option<Backend>,
    /// This run started its tracking (a failure of the run must end it).
    pub created: bool,
}

/// Takes and re-arms the dirty pages of one frozen process of the tree and
/// chooses what to copy of its `present` pages (`keep`: its scanned mappings).
/// On the tracer thread: the first arming injects calls.
pub fn choose(
    frozen: &Frozen,
    start_time: u64,
    keep: &[&Vma],
    present: &[PageRange],
    t: &TreeTracking,
) -> Result<Chosen> {
    if t.final_dump && t.backend == Backend::UffdWp {
        // Only processes without predump's uffd-wp come here (`choose_tracked`
        // took the others): starting it now would inject calls inside the
        // frozen window only to end it again, with nothing to read.
        let parent = t.parents.contains_key(&(frozen.pid(), start_time));
        return Ok(Chosen {
            dump: present.to_vec(),
            note: parent.then(|| predump::NOT_TRACKED_AT_DUMP.to_string()),
            ..Chosen::default()
        });
    }
    let taken = predump::take_dirty(frozen, t.backend, keep, &t.generation);
    decide(frozen.pid(), start_time, present, t, taken)
}

/// `choose` for a process that already holds predump's uffd-wp tracking
/// (found through its marker): nothing is injected, so it runs on any thread,
/// the tree's scan threads included, while the tree is frozen. None: the
/// process holds none (or the backend is not uffd-wp): `choose` it on the
/// tracer thread.
pub fn choose_tracked(
    pid: i32,
    start_time: u64,
    keep: &[&Vma],
    present: &[PageRange],
    t: &TreeTracking,
) -> Result<Option<Chosen>> {
    if t.backend != Backend::UffdWp {
        return Ok(None);
    }
    let taken = match track::Tracker::open_running(pid) {
        Ok(None) => return Ok(None),
        Ok(Some(mut tracker)) => tracker
            .add_vmas(keep)
            .and_then(|()| predump::arm(&mut tracker, keep, &t.generation))
            .inspect(|_| tracker.keep()),
        Err(e) => Err(e),
    };
    decide(pid, start_time, present, t, taken).map(Some)
}

/// The pages to copy of one process, once its dirty pages are taken (or
/// could not be).
fn decide(
    pid: i32,
    start_time: u64,
    present: &[PageRange],
    t: &TreeTracking,
    taken: Result<predump::Dirty>,
) -> Result<Chosen> {
    let options = TrackOptions {
        backend: Some(t.backend),
        generation: t.generation.clone(),
        parent: t.parents.get(&(pid, start_time)).cloned(),
        final_dump: None,
        auto: t.auto,
    };
    let (dirty, given_up) = match taken {
        Ok(d) => (Some(d), None),
        Err(e) if t.auto && predump::tracking_refused(&e) => {
            (None, Some(predump::untracked_note(t.backend, &e)))
        }
        Err(e) => return Err(e),
    };
    let used = dirty.as_ref().map(|_| t.backend);
    let created = dirty.as_ref().is_some_and(|d| d.created);
    let (dump, to_parent, note) = predump::choose_pages(present, dirty, &options);
    Ok(Chosen {
        dump,
        to_parent,
        note: given_up.or(note),
        used,
        created,
    })
}

/// Ends the tracking this run started in `pids` (after a failure; best
/// effort: the error that matters is the caller's).
pub fn undo_created(pids: &[i32]) {
    for &pid in pids {
        let _ = track::untrack(pid);
    }
}
