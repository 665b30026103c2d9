//! The copy of a tree's pages images, the shared objects' first and then the
//! processes', into a directory or to a page server: split out of `tree_dump`
//! to keep the phases' file short.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::drain::{DrainConfig, DrainEnd, DrainOutcome, DrainStats};
use crate::image::pagemap::{pagemap_file_name, pages_file_name, shmem_pagemap_file_name};
use crate::pages_out::{PagesFile, PagesOut};
use crate::pageserver::wire::Dst;
use crate::predump::Progress;
use crate::shmem_chain::{self, InParent, ShmemParent};
use crate::Result;

use super::scan::{Found, FoundObject};
use super::splice::{self, Hold};
use super::{ProcessDump, ShmemDump, TreeDest};

/// The pages images of a tree, and what writing them took.
pub(super) struct Copied {
    pub(super) processes: Vec<ProcessDump>,
    pub(super) shmem: Vec<ShmemDump>,
    /// The reading and the writing of every copy, summed (a shared object's
    /// copy, one call that does both, in each).
    pub(super) copy: DrainStats,
    /// The copies, the fsyncs left out.
    pub(super) copy_time: Duration,
    /// The fsyncs.
    pub(super) sync_time: Duration,
}

/// Writes the pages images and their pagemaps (each by its [`PagesFile`]): the
/// shared objects first, then the processes, ids as CRIU gives them.
///
/// A shared object's pages are found here, right before they are copied: in
/// a pre-dump after the thaw, as the contents of every page are read (without
/// dirty tracking nothing needs the set as it was at the freeze, and walking
/// a 256 MiB object's pages took 2.5 to 5 ms of a tree's stop), in a dump
/// while the tree is still frozen. So is its comparison with the chain's copy
/// (`shmem_parent`): a page left to the parent in a dump is the object's page
/// at the dump.
///
/// In splice mode (`holds`, one for each of `found`) a process's pages are
/// drained from its pipes, or copied as in read mode where it was not spliced.
#[allow(clippy::too_many_arguments)]
pub(super) fn copy_all(
    found: &[Found],
    holds: Option<Vec<Hold>>,
    objects: &[FoundObject],
    dest: &mut TreeDest<'_>,
    config: &DrainConfig,
    shmem_parent: Option<&ShmemParent>,
    progress: Option<&Progress>,
) -> Result<Copied> {
    let mut copied = copy_some(found, holds, objects, dest, config, shmem_parent, progress)?;
    if let TreeDest::Server(s) = dest {
        // Everything is stored once the server answers PS_IOV_CLOSE: the
        // session's "sync".
        let close_started = Instant::now();
        s.close()?;
        copied.sync_time += close_started.elapsed();
    }
    Ok(copied)
}

/// [`copy_all`] without closing a page server's session: the freeze-free
/// mode sends the shared objects with it, then each process's pagemap, and
/// closes the session itself.
#[allow(clippy::too_many_arguments)]
pub(super) fn copy_some(
    found: &[Found],
    holds: Option<Vec<Hold>>,
    objects: &[FoundObject],
    dest: &mut TreeDest<'_>,
    config: &DrainConfig,
    shmem_parent: Option<&ShmemParent>,
    progress: Option<&Progress>,
) -> Result<Copied> {
    let started = Instant::now();
    let mut copy = DrainStats::default();
    let mut sync_time = Duration::ZERO;
    // The pages synced and their pagemap written: its entries.
    let mut sync = |mut file: PagesFile| -> Result<usize> {
        let sync_started = Instant::now();
        file.finish()?;
        sync_time += sync_started.elapsed();
        Ok(file.pagemap_entries())
    };
    // Ids as CRIU gives them: the shared objects first, then the processes.
    let mut next_id = 1u32;
    let mut shmem_out = Vec::with_capacity(objects.len());
    for (obj, handle) in objects {
        let present = handle.present()?;
        let identity = handle.identity().map_err(|e| e.to_string());
        let compare_started = Instant::now();
        let against = match shmem_parent {
            Some(p) => Some(shmem_chain::against(
                p,
                obj.shmid,
                identity.as_deref().map_err(String::as_str),
                handle,
                &present,
            )?),
            None => None,
        };
        copy.read_time += compare_started.elapsed();
        let (regions, parent_regions, in_parent, compared) = match against {
            Some(a) => (a.copy, a.to_parent, a.in_parent, a.compared),
            None => (present, Vec::new(), InParent::NoParent, 0),
        };
        let mut pids: Vec<i32> = Vec::new();
        for m in &obj.mappings {
            if !pids.contains(&m.pid) {
                pids.push(m.pid);
            }
        }
        shmem_out.push((
            ShmemDump {
                shmid: obj.shmid,
                size: obj.size,
                pages_id: next_id,
                regions,
                parent_regions,
                pagemap_entries: 0,
                in_parent,
                compared,
                identity,
                pids,
                mappings: obj.mappings.len(),
            },
            handle,
        ));
        next_id += 1;
    }
    if let Some(p) = progress {
        let private: u64 = found
            .iter()
            .flat_map(|f| f.scan.ranges.iter())
            .map(|r| r.len())
            .sum();
        let shared: u64 = shmem_out
            .iter()
            .flat_map(|(d, _)| d.regions.iter())
            .map(|r| r.len())
            .sum();
        p.total.store(private + shared, Ordering::Relaxed);
    }

    let mut shmem = Vec::with_capacity(shmem_out.len());
    for (mut dump, handle) in shmem_out {
        let copy_started = Instant::now();
        let bytes = match dest {
            TreeDest::Dir(dir) => {
                let mut file =
                    PagesFile::create(dir, dump.pages_id, shmem_pagemap_file_name(dump.shmid))?;
                file.parent_ranges(&dump.parent_regions)?;
                let path = dir.join(pages_file_name(dump.pages_id));
                let bytes = handle.copy_to(&dump.regions, file.file(), &path)?;
                file.appended(&dump.regions)?;
                let took = copy_started.elapsed();
                copy.read_time += took;
                copy.write_time += took;
                dump.pagemap_entries = sync(file)?;
                bytes
            }
            TreeDest::Server(s) => {
                let bytes = s.send_object(dump.shmid, &dump.regions, |buf, off| {
                    handle.read_at(buf, off)
                })?;
                let took = copy_started.elapsed();
                copy.read_time += took;
                copy.write_time += took;
                dump.pagemap_entries = s.sent().last().map_or(0, |p| p.entries.len());
                bytes
            }
        };
        if let Some(p) = progress {
            p.done.fetch_add(bytes, Ordering::Relaxed);
        }
        shmem.push(dump);
    }
    let mut processes = Vec::with_capacity(found.len());
    let mut holds = holds.map(Vec::into_iter);
    for f in found {
        let pages_id = next_id;
        next_id += 1;
        let to_parent = f.chosen.as_ref().map_or(&[][..], |c| &c.to_parent[..]);
        let hold = holds.as_mut().and_then(Iterator::next);
        let splice_stats = hold.as_ref().and_then(Hold::stats);
        let fallback = match &hold {
            Some(Hold::Read(why)) => Some(why.clone()),
            _ => None,
        };
        // The pages into `out`: drained from the pipes, or copied.
        let done = progress.map(|p| &p.done);
        let move_pages = |out: &mut dyn PagesOut| -> Result<DrainOutcome> {
            match hold {
                Some(Hold::Pinned(pinned)) => {
                    crate::test_hooks::splice_drain_gate()?;
                    let (regions, stats) = splice::drain(pinned, f.scan.pages_present, out, done)?;
                    Ok(DrainOutcome {
                        regions,
                        stats,
                        end: DrainEnd::Complete,
                    })
                }
                Some(Hold::Nothing) => Ok(DrainOutcome {
                    regions: Vec::new(),
                    stats: DrainStats::default(),
                    end: DrainEnd::Complete,
                }),
                Some(Hold::Read(_)) | None => {
                    crate::predump::drain_gated(f.member.pid, &f.scan.ranges, out, config, done)
                }
            }
        };
        let (outcome, pagemap_entries) = match dest {
            TreeDest::Dir(dir) => {
                let mut file = PagesFile::create(dir, pages_id, pagemap_file_name(f.member.pid))?;
                file.parent_ranges(to_parent)?;
                let outcome = move_pages(&mut file)?;
                (outcome, sync(file)?)
            }
            TreeDest::Server(s) => {
                let mut pm = s.open(Dst::process(f.member.pid as u64))?;
                pm.parent_ranges(to_parent)?;
                let outcome = move_pages(&mut pm)?;
                pm.finish()?;
                (outcome, pm.pagemap_entries())
            }
        };
        copy.read_time += outcome.stats.read_time;
        copy.write_time += outcome.stats.write_time;
        processes.push(ProcessDump {
            pages_id,
            threads: f.threads,
            scan_method: f.scanner.method(),
            vmas_scanned: f.scan.vmas_scanned,
            vmas_skipped: f.scan.vmas_skipped,
            pages_scanned: f.scan.pages_scanned,
            pages_present: f.scan.pages_present,
            unreadable_pages: f.scan.unreadable_pages,
            regions: outcome.regions,
            pagemap_entries,
            drain: outcome.stats,
            partial: outcome.end == DrainEnd::TargetExited,
            splice: splice_stats,
            fallback,
            leftovers_removed: f.leftovers_removed.clone(),
            tracked: f.tracked,
            parent_regions: f
                .chosen
                .as_ref()
                .map_or_else(Vec::new, |c| c.to_parent.clone()),
            track_note: f.chosen.as_ref().and_then(|c| c.note.clone()),
            tracking: f.chosen.as_ref().and_then(|c| c.used),
            created_tracking: f.chosen.as_ref().is_some_and(|c| c.created),
            member: f.member.clone(),
        });
    }
    let copy_time = started.elapsed().saturating_sub(sync_time);
    Ok(Copied {
        processes,
        shmem,
        copy,
        copy_time,
        sync_time,
    })
}
