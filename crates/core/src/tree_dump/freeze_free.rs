//! The freeze-free pre-dump of a tree (uffd-wp): the tree is never frozen as
//! a whole. Its members are listed while they run, and each process is
//! pre-dumped by the single process's freeze-free path
//! (`predump::pre_dump_to` in `Mode::FreezeFree`), one after another: its
//! lock, its uffd found through its marker and taken with pidfd_getfd, its
//! new VMAs registered, this run's generation recorded before its written
//! pages are taken and re-armed, its present pages found, chosen against its
//! own parent images, and copied with process_vm_readv while it runs. A
//! process that holds no tracking yet is stopped once, alone, for the
//! injected calls that make it (the others run on). The anonymous shared
//! memory objects are found from the maps read while running and copied as
//! the read mode copies them (whole, or compared with the chain's copy on
//! parent images). docs/TREES.md, "Freeze-free pre-dumps of a tree", says why
//! the chain stays correct.
//!
//! To a page server ([`TreeDest::Server`]) the same run goes over the tree's
//! one connection: the shared objects' pagemaps first, then each process's
//! (`predump::PagesDest::Tree`, PS_IOV_OPEN2 under its own dst_id), in the
//! order the files would be written, then PS_IOV_CLOSE. The shared objects
//! are sent whole (the chain's copy is on the server), as in read mode.

use std::cell::Cell;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::drain::DrainConfig;
use crate::image::pagemap::{pagemap_file_name, pages_file_name};
use crate::mem_times::MemTimes;
use crate::predump::{self, Mode, PagesDest, PreDumpReport, Progress, TrackOptions};
use crate::shmem::{self, NotDumped, SharedKind};
use crate::shmem_chain::ShmemParent;
use crate::track::Backend;
use crate::tree::{self, Left, Member, TreeFreezeTimes};
use crate::tree_track::TreeTracking;
use crate::{maps, proc, Error, Result};

use super::copy::{copy_some, Copied};
use super::scan::{criu_shmem_order, FoundObject};
use super::{ProcessDump, TreeDest, TreeReport};

/// Refuses what the freeze-free mode cannot do, before anything is touched:
/// the messages are the single process's.
pub fn refused(tracking: Option<&TreeTracking>) -> Option<Error> {
    if tracking.is_some_and(|t| t.final_dump) {
        return Some(Error::InvalidArgument(
            "a final dump is frozen throughout: it has no freeze-free mode".to_string(),
        ));
    }
    if let Err(why) = crate::inject::supported() {
        return Some(Error::InvalidArgument(format!(
            "the freeze-free mode makes the target's userfaultfd with an injected call: {why}"
        )));
    }
    match tracking.map(|t| t.backend) {
        Some(Backend::UffdWp) => None,
        other => Some(Error::InvalidArgument(format!(
            "the freeze-free mode needs uffd-wp dirty tracking, not {}",
            other.map_or("none", |b| b.name())
        ))),
    }
}

/// Pre-dumps `root` and its descendants into a directory or to a page server
/// without freezing the tree (see the top of this module). `created`: the
/// processes whose tracking this run started (the caller ends it again if the
/// run fails).
pub(super) fn pre_dump_tree_freeze_free(
    root: i32,
    dest: &mut TreeDest<'_>,
    config: &DrainConfig,
    tracking: Option<&TreeTracking>,
    shmem_parent: Option<&ShmemParent>,
    progress: Option<&Progress>,
    created: &mut Vec<i32>,
) -> Result<TreeReport> {
    if let Some(e) = refused(tracking) {
        return Err(e);
    }
    let t = tracking.expect("refused above");
    tree::check_root(root)?;
    // Before the listing: a process given its chain next time must have been
    // started before this instant (the caller's pid-reuse rule), so it is the
    // very process this listing found.
    let dump_uptime_us = proc::uptime_us();
    let (listed, mut left) = tree::list(root)?;

    // Each process's maps, read while it runs: the tree's shared objects, and
    // the shared mappings left out. A process gone already is left out.
    let mut members: Vec<(Member, Vec<maps::Vma>)> = Vec::with_capacity(listed.len());
    for m in listed {
        let pid = m.pid;
        match proc::read_proc(pid, &format!("/proc/{pid}/maps")).and_then(|t| maps::parse_maps(&t))
        {
            Ok(vmas) => members.push((m, vmas)),
            Err(Error::NoSuchProcess { .. }) if pid != root => {
                left.push(Left::Exited { pid, ppid: m.ppid })
            }
            Err(e) => return Err(e),
        }
    }
    let objects = shmem::objects(members.iter().map(|(m, v)| (m.pid, &v[..])));
    let seen: Vec<u64> = members
        .iter()
        .flat_map(|(_, vmas)| vmas.iter())
        .filter(|v| v.shared && shmem::kind(v) == SharedKind::Anonymous)
        .map(|v| v.inode)
        .collect();
    let mut found_objects: Vec<FoundObject> = Vec::with_capacity(objects.len());
    for id in criu_shmem_order(&seen) {
        let Some(obj) = objects.iter().find(|o| o.shmid == id).cloned() else {
            continue;
        };
        match obj.open() {
            Ok(handle) => found_objects.push((obj, handle)),
            // Every process mapping it is gone: nothing left to pre-dump.
            Err(Error::NoSuchProcess { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let not_dumped: Vec<NotDumped> = members
        .iter()
        .flat_map(|(m, vmas)| shmem::not_dumped(m.pid, vmas, None))
        .collect();

    // The shared objects first (ids 1..=S, as CRIU numbers them), read while
    // the tree runs: copied whole, or compared with the chain's copy as in
    // read mode (a page left to the parent equals the object's page at the
    // moment it was compared; the final dump compares again, frozen).
    let shmem_parent = match dest {
        TreeDest::Dir(_) => shmem_parent,
        TreeDest::Server(_) => None,
    };
    let shared = copy_some(
        &[],
        None,
        &found_objects,
        dest,
        config,
        shmem_parent,
        progress,
    )?;
    let mut next_id = shared.shmem.len() as u32 + 1;
    let mut copy = shared.copy.clone();
    let mut copy_time = shared.copy_time;
    let mut sync_time = shared.sync_time;
    let mut drain_time = shared.copy_time + shared.sync_time;
    let mut scan_time = Duration::ZERO;
    let mut freeze = TreeFreezeTimes::default();
    let mut total = progress.map_or(0, |p| p.total.load(Ordering::Relaxed));
    let mut processes = Vec::with_capacity(members.len());

    // Then each process, one after another, as one process's freeze-free
    // pre-dump.
    for (m, _) in members {
        let pid = m.pid;
        let options = TrackOptions {
            backend: Some(Backend::UffdWp),
            generation: t.generation.clone(),
            parent: t.parents.get(&(pid, m.start_time)).cloned(),
            final_dump: None,
            auto: t.auto,
        };
        if let Some(p) = progress {
            // Its drain says its own total (the tree's is summed below).
            p.total.store(0, Ordering::Relaxed);
        }
        let made = Cell::new(false);
        let r = same_process(&m).and_then(|()| {
            predump::pre_dump_to(
                pid,
                &mut match dest {
                    TreeDest::Dir(dir) => PagesDest::Dir {
                        dir,
                        pages_id: next_id,
                    },
                    TreeDest::Server(s) => PagesDest::Tree(s),
                },
                Mode::FreezeFree,
                config,
                &options,
                progress,
            )
            .inspect(|r| made.set(r.created_tracking))
        });
        if let Some(p) = progress {
            total += p.total.load(Ordering::Relaxed);
            p.total
                .store(total.max(p.done.load(Ordering::Relaxed)), Ordering::Relaxed);
            p.thawed.store(true, Ordering::SeqCst);
        }
        let report = match r {
            Ok(report) => report,
            // Gone before any of its pages were read (a pre-dump that exits
            // during the copy is a partial one, Ok above): left out, as a
            // process that exits while a tree freezes.
            Err(
                e @ (Error::NoSuchProcess { .. }
                | Error::TargetExited { .. }
                | Error::Zombie { .. }),
            ) if pid != root => {
                // (Its pagemap is opened once its plan is made: none was, on
                // a page server either.)
                if let TreeDest::Dir(dir) = dest {
                    let _ = std::fs::remove_file(dir.join(pages_file_name(next_id)));
                    let _ = std::fs::remove_file(dir.join(pagemap_file_name(pid)));
                }
                left.push(match e {
                    Error::Zombie { .. } => Left::Zombie(m),
                    _ => Left::Exited { pid, ppid: m.ppid },
                });
                continue;
            }
            Err(e) => return Err(e),
        };
        if made.get() {
            created.push(pid);
        }
        next_id += 1;
        scan_time += report.scan_time;
        drain_time += report.drain_time;
        copy_time += report.copy_time;
        sync_time += report.sync_time;
        copy.read_time += report.drain.read_time;
        copy.write_time += report.drain.write_time;
        freeze.freezing += report.freeze.freezing;
        freeze.frozen += report.freeze.frozen;
        freeze.stopped_window = freeze.stopped_window.max(report.freeze.stopped_window);
        freeze.threads += report.threads;
        processes.push(process_dump(m, next_id - 1, report));
    }
    if let TreeDest::Server(s) = dest {
        // Everything is stored once the server answers PS_IOV_CLOSE.
        let close_started = Instant::now();
        s.close()?;
        let closed = close_started.elapsed();
        sync_time += closed;
        drain_time += closed;
    }
    let Copied { shmem, .. } = shared;
    Ok(TreeReport {
        root,
        dump_uptime_us,
        processes,
        shmem,
        not_dumped,
        left,
        freeze,
        scan_time,
        reference_time: Duration::ZERO,
        drain_time,
        copy_time,
        sync_time,
        copied_frozen: false,
        mem: MemTimes::copied_after_thaw(scan_time, &copy, sync_time),
    })
}

/// The listed process is still the one at its pid (a pid is never trusted
/// across its reuse): else it is gone.
fn same_process(m: &Member) -> Result<()> {
    let st = proc::stat(m.pid)?;
    if st.start_time != m.start_time {
        return Err(Error::NoSuchProcess { pid: m.pid });
    }
    Ok(())
}

fn process_dump(member: Member, pages_id: u32, r: PreDumpReport) -> ProcessDump {
    let tracked = r.tracking == Some(Backend::UffdWp) && !r.created_tracking;
    ProcessDump {
        member,
        pages_id,
        threads: r.threads,
        scan_method: r.scan_method,
        vmas_scanned: r.vmas_scanned,
        vmas_skipped: r.vmas_skipped,
        pages_scanned: r.pages_scanned,
        pages_present: r.pages_present,
        unreadable_pages: r.unreadable_pages,
        regions: r.regions,
        pagemap_entries: r.pagemap_entries,
        drain: r.drain,
        partial: r.partial,
        parent_regions: r.parent_regions,
        // A process whose tracking was refused (`--track-mem auto`) was
        // pre-dumped in read mode, alone: the fallback says why.
        track_note: r.fallback.or(r.track_note),
        tracking: r.tracking,
        created_tracking: r.created_tracking,
        leftovers_removed: r.leftovers_removed,
        tracked,
        splice: None,
        fallback: None,
    }
}
