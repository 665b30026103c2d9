//! The binding of process trees: listing one, and pre-dumping a whole tree
//! (predump_core::tree_dump). Types and errors are converted, nothing else.

use std::collections::HashMap;
use std::path::PathBuf;

use napi::bindgen_prelude::*;
use napi::Env;
use napi_derive::napi;

use predump_core::drain::DrainConfig;
use predump_core::pageserver::link::Abort;
use predump_core::pageserver::sender::TreeSession;
use predump_core::pageserver::wire::{Dst, DstKind};
use predump_core::predump::{Mode, ParentChain, ParentOrigin};
use predump_core::shmem_chain::ShmemParent;
use predump_core::tree::{self, Left, Member};
use predump_core::tree_dump::{self, TreeDest, TreeReport};
use predump_core::tree_track::TreeTracking;

use crate::{on_own_thread, Progress};

/// A process of a tree.
#[napi(object)]
pub struct TreeMember {
    pub pid: i32,
    pub ppid: i32,
    /// Clock ticks after boot: with the pid, names the process across pid reuse.
    pub start_time: f64,
    pub comm: String,
}

fn member(m: &Member) -> TreeMember {
    TreeMember {
        pid: m.pid,
        ppid: m.ppid,
        start_time: m.start_time as f64,
        comm: m.comm.clone(),
    }
}

/// A process of the tree that is not pre-dumped.
#[napi(object)]
pub struct TreeLeft {
    pub pid: i32,
    pub ppid: i32,
    /// "zombie" (exited, not reaped: no memory left) or "exited" (while the
    /// tree was being frozen).
    pub reason: String,
    pub comm: Option<String>,
}

fn left(l: &Left) -> TreeLeft {
    match l {
        Left::Zombie(m) => TreeLeft {
            pid: m.pid,
            ppid: m.ppid,
            reason: "zombie".into(),
            comm: Some(m.comm.clone()),
        },
        Left::Exited { pid, ppid } => TreeLeft {
            pid: *pid,
            ppid: *ppid,
            reason: "exited".into(),
            comm: None,
        },
    }
}

/// A tree as listed now, without freezing it (it may change at once).
#[napi(object)]
pub struct TreeListing {
    /// The root first, each process after its parent (CRIU's order).
    pub members: Vec<TreeMember>,
    pub left: Vec<TreeLeft>,
    /// A process of its own (no descendants) that maps anonymous shared memory:
    /// the tree's path writes that memory, the single process's does not.
    pub alone_with_shared_memory: bool,
}

/// Lists `root` and its descendants (without freezing them).
#[napi(ts_return_type = "Promise<TreeListing>")]
pub fn list_tree<'env>(env: &'env Env, root: i32) -> Result<Object<'env>> {
    on_own_thread(env, move || {
        let (members, gone) = tree::list(root)?;
        let alone = members.len() == 1 && gone.is_empty();
        Ok(TreeListing {
            alone_with_shared_memory: alone && predump_core::shmem::maps_anonymous(root)?,
            members: members.iter().map(member).collect(),
            left: gone.iter().map(left).collect(),
        })
    })
}

/// Options of a tree pre-dump.
#[napi(object)]
pub struct TreePreDumpOptions {
    pub root: i32,
    /// "read", "splice" or "freeze-free" (absent, or "auto": read, a tree's default).
    pub mode: Option<String>,
    /// The images directory (it exists; the pages images are created in it).
    pub dir: String,
    pub buffer_bytes: Option<u32>,
    /// "auto", "uffd-wp", "soft-dirty" or "none" (absent: none); resolved by
    /// the core as for one process.
    pub track_mem: Option<String>,
    /// This run's arming of the tracking.
    pub generation: Option<String>,
    /// The parent images' arming (absent: made by CRIU or without tracking;
    /// then `parentMadeUs`, their dump_uptime).
    pub parent_generation: Option<String>,
    pub parent_made_us: Option<f64>,
    /// The pages each process's parent images hold: only for processes that
    /// are the ones the parent was made of (same pid, started before it).
    pub parents: Option<Vec<TreeParentPages>>,
    /// `predump dump`: copy while the whole tree stays frozen, end predump's
    /// tracking in it, and leave it running or (leaveStopped) job-stopped.
    pub final_dump: Option<bool>,
    pub leave_stopped: Option<bool>,
    /// The parent images, for the shared objects: each one the parent holds
    /// (and recorded as this very object) is compared with the chain's copy
    /// and only its differing pages copied. Not used with a page server.
    pub shmem_parent: Option<TreeShmemParent>,
}

/// The parent images of a tree pre-dump, for its shared objects.
#[napi(object)]
pub struct TreeShmemParent {
    /// The parent images directory.
    pub dir: String,
    /// The objects the parent recorded: shmid and identity.
    pub objects: Vec<TreeShmemIdentity>,
}

/// Which object a shmid was in parent images (see predump_core::shmem_chain).
#[napi(object)]
pub struct TreeShmemIdentity {
    pub shmid: f64,
    pub identity: String,
}

/// The pages one process's parent images hold (its chain).
#[napi(object)]
pub struct TreeParentPages {
    pub pid: i32,
    /// Its start time (clock ticks after boot), as the listing gave it.
    pub start_time: f64,
    /// [vaddr, nrPages] pairs.
    pub pages: Float64Array,
}

/// One process's part of a tree pre-dump.
#[napi(object)]
pub struct TreeProcessReport {
    pub pid: i32,
    pub ppid: i32,
    pub start_time: f64,
    pub comm: String,
    pub pages_id: u32,
    pub threads: u32,
    pub scan_method: String,
    pub vmas_scanned: u32,
    pub vmas_skipped: u32,
    pub pages_scanned: f64,
    pub pages_present: f64,
    pub unreadable_pages: f64,
    pub pages_written: f64,
    pub pages_gone: f64,
    pub readv_calls: f64,
    pub buffer_bytes: f64,
    /// The dumped regions as [vaddr, nrPages] pairs, in pages-image order.
    pub regions: Float64Array,
    /// The entries of its pagemap, written by the core (or sent).
    pub pagemap_entries: u32,
    pub partial: bool,
    pub leftovers_removed: Option<String>,
    /// It held predump's uffd-wp tracking before this run.
    pub tracked: bool,
    /// The present pages its parent holds, as [vaddr, nrPages] pairs (PE_PARENT).
    pub parent_regions: Float64Array,
    /// Why every page was copied despite a parent, or why it is untracked.
    pub track_note: Option<String>,
    /// The backend that took its dirty pages: "uffd-wp", "soft-dirty" or "none".
    pub tracking: String,
    pub created_tracking: bool,
    /// Splice mode: its pages went through pipes (false: copied, see `fallback`).
    pub spliced: bool,
    pub pipes: u32,
    pub pinned_bytes: f64,
    pub injected_calls: f64,
    pub inject_us: f64,
    /// Splice mode: why it was not spliced (its pages copied as in read mode).
    pub fallback: Option<String>,
}

/// One anonymous shared memory object, pre-dumped once for the tree.
#[napi(object)]
pub struct TreeShmemReport {
    pub shmid: f64,
    pub size: f64,
    pub pages_id: u32,
    /// [offset, nrPages] pairs, in pages-image order.
    pub regions: Float64Array,
    /// Its present pages equal to the chain's copy (PE_PARENT): [offset, nrPages] pairs.
    pub parent_regions: Float64Array,
    /// The entries of its pagemap, written by the core (or sent).
    pub pagemap_entries: u32,
    /// What was made of the parent images for it: "none" (no parent), "yes"
    /// (compared with the chain's copy), "new", "other-object", "unrecorded"
    /// or "unusable" (copied whole; `note` says why).
    pub in_parent: String,
    /// Why it was copied whole despite parent images.
    pub note: Option<String>,
    /// Pages compared with the chain's copy.
    pub pages_compared: f64,
    /// Its identity, for the next pre-dump's check (absent: it cannot be had
    /// here, `identityError` says why).
    pub identity: Option<String>,
    pub identity_error: Option<String>,
    pub pids: Vec<i32>,
    pub mappings: u32,
}

/// A shared mapping left out of the pre-dump (of a tree, or of one process).
#[napi(object)]
pub struct NotDumpedMapping {
    pub pid: i32,
    pub start: f64,
    pub end: f64,
    pub name: String,
    /// "shmem" (one process's anonymous shared memory), "sysv-shm", "memfd",
    /// "hugetlb" or "file-shared".
    pub kind: String,
    pub reason: String,
}

pub(crate) fn not_dumped(n: &[predump_core::shmem::NotDumped]) -> Vec<NotDumpedMapping> {
    n.iter()
        .map(|n| NotDumpedMapping {
            pid: n.pid,
            start: n.start as f64,
            end: n.end as f64,
            name: n.name.clone(),
            kind: n.kind.name().to_string(),
            reason: n.reason.to_string(),
        })
        .collect()
}

/// What a tree pre-dump did. Times in microseconds.
#[napi(object)]
pub struct TreePreDumpReport {
    pub root: i32,
    /// "read", "splice" or "freeze-free".
    pub mode: String,
    pub dump_uptime_us: f64,
    pub processes: Vec<TreeProcessReport>,
    pub shmem: Vec<TreeShmemReport>,
    pub not_dumped: Vec<NotDumpedMapping>,
    pub left: Vec<TreeLeft>,
    pub threads: u32,
    pub freezing_us: f64,
    pub frozen_us: f64,
    pub stopped_window_us: f64,
    pub scan_us: f64,
    /// Splice mode: every process's pages referenced into pipes, frozen.
    pub reference_us: f64,
    /// From the thaw to the pages images synced.
    pub drain_us: f64,
    /// The pages read and written, the fsync left out: after the thaw, or
    /// inside the frozen window when `copied_frozen` (a dump).
    pub copy_us: f64,
    /// The pages images synced.
    pub sync_us: f64,
    pub copied_frozen: bool,
    /// CRIU's memdump_time and memwrite_time, as its stats-dump means them.
    pub memdump_us: f64,
    pub memwrite_us: f64,
}

fn flat(v: &[predump_core::PageRange]) -> Float64Array {
    Float64Array::new(
        v.iter()
            .flat_map(|g| [g.start as f64, g.pages as f64])
            .collect(),
    )
}

fn report_of(r: TreeReport, mode: Mode) -> TreePreDumpReport {
    let us = |d: std::time::Duration| d.as_secs_f64() * 1e6;
    TreePreDumpReport {
        root: r.root,
        mode: mode.name().to_string(),
        dump_uptime_us: r.dump_uptime_us as f64,
        threads: r.freeze.threads as u32,
        processes: r
            .processes
            .iter()
            .map(|p| TreeProcessReport {
                pid: p.member.pid,
                ppid: p.member.ppid,
                start_time: p.member.start_time as f64,
                comm: p.member.comm.clone(),
                pages_id: p.pages_id,
                threads: p.threads as u32,
                scan_method: p.scan_method.name().to_string(),
                vmas_scanned: p.vmas_scanned as u32,
                vmas_skipped: p.vmas_skipped as u32,
                pages_scanned: p.pages_scanned as f64,
                pages_present: p.pages_present as f64,
                unreadable_pages: p.unreadable_pages as f64,
                pages_written: p.drain.pages_written as f64,
                pages_gone: p.drain.pages_gone as f64,
                readv_calls: p.drain.readv_calls as f64,
                buffer_bytes: p.drain.buffer_bytes as f64,
                regions: flat(&p.regions),
                pagemap_entries: p.pagemap_entries as u32,
                partial: p.partial,
                leftovers_removed: p.leftovers_removed.clone(),
                tracked: p.tracked,
                parent_regions: flat(&p.parent_regions),
                track_note: p.track_note.clone(),
                tracking: p.tracking.map_or("none", |b| b.name()).to_string(),
                created_tracking: p.created_tracking,
                spliced: p.splice.is_some(),
                pipes: p.splice.as_ref().map_or(0, |s| s.pipes as u32),
                pinned_bytes: p.splice.as_ref().map_or(0.0, |s| s.pinned_bytes as f64),
                injected_calls: p.splice.as_ref().map_or(0.0, |s| s.injected_calls as f64),
                inject_us: p.splice.as_ref().map_or(0.0, |s| us(s.inject_time)),
                fallback: p.fallback.clone(),
            })
            .collect(),
        shmem: r
            .shmem
            .iter()
            .map(|s| TreeShmemReport {
                shmid: s.shmid as f64,
                size: s.size as f64,
                pages_id: s.pages_id,
                regions: flat(&s.regions),
                parent_regions: flat(&s.parent_regions),
                pagemap_entries: s.pagemap_entries as u32,
                in_parent: s.in_parent.name().to_string(),
                note: s.in_parent.note(s.shmid),
                pages_compared: s.compared as f64,
                identity: s.identity.as_ref().ok().cloned(),
                identity_error: s.identity.as_ref().err().cloned(),
                pids: s.pids.clone(),
                mappings: s.mappings as u32,
            })
            .collect(),
        not_dumped: not_dumped(&r.not_dumped),
        left: r.left.iter().map(left).collect(),
        freezing_us: us(r.freeze.freezing),
        frozen_us: us(r.freeze.frozen),
        stopped_window_us: us(r.freeze.stopped_window),
        scan_us: us(r.scan_time),
        reference_us: us(r.reference_time),
        drain_us: us(r.drain_time),
        copy_us: us(r.copy_time),
        sync_us: us(r.sync_time),
        copied_frozen: r.copied_frozen,
        memdump_us: us(r.mem.memdump),
        memwrite_us: us(r.mem.memwrite),
    }
}

/// The mode a tree pre-dump of `processes` processes takes for these names
/// (absent mode: "auto", which is read on a tree; absent tracking: "none"):
/// "read", "splice" or "freeze-free". Throws an Error with code EINVAL, the core's
/// message, for a mode a tree cannot run (`toPageServer`: its pages go to a
/// page server). Probes nothing.
#[napi]
pub fn resolve_tree_mode(
    env: Env,
    mode: Option<String>,
    track_mem: Option<String>,
    final_dump: bool,
    to_page_server: bool,
    processes: u32,
) -> Result<String> {
    predump_core::mode::check_tree(
        mode.as_deref(),
        track_mem.as_deref(),
        final_dump,
        to_page_server,
        Some(processes as usize),
    )
    .map(|(mode, _)| mode.name().to_string())
    .map_err(|e| crate::js_error(&env, &e))
}

/// Whether a tree pre-dump runs in `mode` ("read", "splice" or
/// "freeze-free"; `toPageServer`: its pages go to a page server).
#[napi]
pub fn tree_runs_mode(mode: String, to_page_server: bool) -> bool {
    Mode::parse(&mode).is_some_and(|m| predump_core::mode::tree_runs(m, to_page_server))
}

/// What a tree pre-dump's options come to in the core.
struct TreePlan {
    root: i32,
    mode: Mode,
    config: DrainConfig,
    final_dump: Option<predump_core::predump::FinalDump>,
    tracking: Option<TreeTracking>,
    shmem_parent: Option<ShmemParent>,
}

fn plan(options: TreePreDumpOptions, to_page_server: bool) -> Result<TreePlan> {
    let mut config = DrainConfig::default();
    if let Some(bytes) = options.buffer_bytes {
        config.buffer_bytes = bytes as usize;
    }
    let final_dump =
        options
            .final_dump
            .unwrap_or(false)
            .then_some(predump_core::predump::FinalDump {
                leave_stopped: options.leave_stopped.unwrap_or(false),
            });
    // The core decides the tree's mode (its `auto` is read) and refuses what a
    // tree cannot run.
    let choice = predump_core::mode::resolve_tree(
        options.mode.as_deref(),
        options.track_mem.as_deref(),
        final_dump.is_some(),
        to_page_server,
        None,
    )
    .map_err(|e| Error::new(Status::InvalidArg, e.to_string()))?;
    let origin = match (options.parent_generation, options.parent_made_us) {
        (Some(g), _) => Some(ParentOrigin::Armed(g)),
        (None, Some(made)) => Some(ParentOrigin::Snapshot { at_us: made as u64 }),
        (None, None) => None,
    };
    let tracking = choice.backend.map(|backend| TreeTracking {
        final_dump: final_dump.is_some(),
        backend,
        generation: options.generation.clone().unwrap_or_default(),
        auto: choice.auto_track,
        parents: match &origin {
            Some(origin) => options
                .parents
                .iter()
                .flatten()
                .map(|p| {
                    (
                        (p.pid, p.start_time as u64),
                        ParentChain {
                            pages: crate::pairs(&p.pages),
                            origin: origin.clone(),
                        },
                    )
                })
                .collect(),
            None => HashMap::new(),
        },
    });
    let shmem_parent = options.shmem_parent.map(|p| ShmemParent {
        dir: PathBuf::from(p.dir),
        identities: p
            .objects
            .into_iter()
            .map(|o| (o.shmid as u64, o.identity))
            .collect(),
    });
    Ok(TreePlan {
        root: options.root,
        mode: choice.mode,
        config,
        final_dump,
        tracking,
        shmem_parent,
    })
}

/// Pre-dumps a whole tree (read, splice or freeze-free mode), writing its pages images
/// into `dir`. Rejects with an Error whose `code` is one of predump-core's.
#[napi(ts_return_type = "Promise<TreePreDumpReport>")]
pub fn pre_dump_tree<'env>(
    env: &'env Env,
    options: TreePreDumpOptions,
    progress: Option<&Progress>,
) -> Result<Object<'env>> {
    let dir = PathBuf::from(&options.dir);
    let progress = progress.map(|p| p.inner.clone());
    let TreePlan {
        root,
        mode,
        config,
        final_dump,
        tracking,
        shmem_parent,
    } = plan(options, false)?;
    on_own_thread(env, move || {
        match mode {
            Mode::FreezeFree => tree_dump::pre_dump_tree_freeze_free(
                root,
                &dir,
                &config,
                tracking.as_ref(),
                shmem_parent.as_ref(),
                progress.as_deref(),
            ),
            _ => tree_dump::pre_dump_tree(
                root,
                &dir,
                mode,
                &config,
                final_dump,
                tracking.as_ref(),
                shmem_parent.as_ref(),
                progress.as_deref(),
            ),
        }
        .map(|r| report_of(r, mode))
    })
}

/// One pagemap a tree pre-dump sent to a page server.
#[napi(object)]
pub struct TreeSentPagemap {
    /// "process" or "shmem".
    pub kind: String,
    /// The pid, or the shared object's shmid.
    pub id: f64,
    /// The server's parent holds it (its answer to PS_IOV_OPEN2).
    pub has_parent: bool,
    /// [vaddr, nrPages, flags] triples, flat, in order.
    pub entries: Float64Array,
}

/// What a tree pre-dump sent, besides its own report.
#[napi(object)]
pub struct TreeSent {
    pub pagemaps: Vec<TreeSentPagemap>,
    /// Processes given a chain by the caller whose pagemap the server's
    /// parent does not hold (PS_IOV_PARENT said 0): copied whole.
    pub not_in_server_parent: Vec<i32>,
    pub headers: f64,
    pub page_bytes: f64,
    pub bytes_sent: f64,
    pub send_us: f64,
    /// From the connect to the server's answer to PS_IOV_CLOSE.
    pub session_us: f64,
}

#[napi(object)]
pub struct TreePreDumpSentReport {
    pub report: TreePreDumpReport,
    pub sent: TreeSent,
}

/// A tree pre-dump (read or freeze-free mode, or a dump) whose pages go to a
/// page server over one connection (`dir` is not used): the connection and PS_IOV_PARENT for each
/// process given a chain come before the tree is touched, so that a server
/// that cannot be reached leaves it alone; a process whose pagemap the
/// server's parent does not hold is copied whole.
#[napi(ts_return_type = "Promise<TreePreDumpSentReport>")]
pub fn pre_dump_tree_to_server<'env>(
    env: &'env Env,
    options: TreePreDumpOptions,
    server: crate::pageserver::PageServerClient,
    progress: Option<&Progress>,
) -> Result<Object<'env>> {
    let client = crate::pageserver::client_options(server)?;
    let progress = progress.map(|p| p.inner.clone());
    // The chain's shared memory is on the server: each object is copied whole.
    let TreePlan {
        root,
        mode,
        config,
        final_dump,
        mut tracking,
        shmem_parent: _,
    } = plan(options, true)?;
    on_own_thread(env, move || {
        let started = std::time::Instant::now();
        let abort = Abort::new()?;
        let mut session = TreeSession::connect(&client, &abort)?;
        let mut not_in_server_parent = Vec::new();
        if let Some(t) = tracking.as_mut() {
            let mut keys: Vec<(i32, u64)> = t.parents.keys().copied().collect();
            keys.sort();
            for key in keys {
                if !session.ask_parent(Dst::process(key.0 as u64))? {
                    t.parents.remove(&key);
                    not_in_server_parent.push(key.0);
                }
            }
        }
        let dest = &mut TreeDest::Server(&mut session);
        let report = match mode {
            Mode::FreezeFree => tree_dump::pre_dump_tree_freeze_free_to(
                root,
                dest,
                &config,
                tracking.as_ref(),
                None,
                progress.as_deref(),
            ),
            _ => tree_dump::pre_dump_tree_to(
                root,
                dest,
                mode,
                &config,
                final_dump,
                tracking.as_ref(),
                None,
                progress.as_deref(),
            ),
        }?;
        let stats = session.stats();
        Ok(TreePreDumpSentReport {
            report: report_of(report, mode),
            sent: TreeSent {
                pagemaps: session
                    .sent()
                    .iter()
                    .map(|p| TreeSentPagemap {
                        kind: match p.dst.kind {
                            DstKind::Process => "process",
                            DstKind::Shmem => "shmem",
                        }
                        .to_string(),
                        id: p.dst.id as f64,
                        has_parent: p.has_parent,
                        entries: Float64Array::new(
                            p.entries
                                .iter()
                                .flat_map(|&(v, n, f)| [v as f64, n as f64, f as f64])
                                .collect(),
                        ),
                    })
                    .collect(),
                not_in_server_parent,
                headers: stats.headers as f64,
                page_bytes: stats.page_bytes as f64,
                bytes_sent: stats.bytes_sent as f64,
                send_us: stats.send_time.as_secs_f64() * 1e6,
                session_us: started.elapsed().as_secs_f64() * 1e6,
            },
        })
    })
}

/// A live mapping of a shared memory object, to read the object through.
#[napi(object)]
pub struct LiveShmem {
    pub shmid: f64,
    pub size: f64,
    pub pid: i32,
    pub start: f64,
    pub end: f64,
}

/// One directory's pagemap of a shared memory object, in a chain (newest
/// first, each the parent of the one before).
#[napi(object)]
pub struct ShmemChainLevel {
    pub pages_path: String,
    /// Its entries as [offset, nrPages, flags] triples, in order.
    pub entries: Float64Array,
}

/// Compares a shared memory object's image chain (offsets, resolved as CRIU's
/// restore resolves it) with the live object (see
/// predump_core::tree_verify; nothing is frozen).
#[napi(ts_return_type = "Promise<VerifyResult>")]
pub fn verify_shmem<'env>(
    env: &'env Env,
    live: LiveShmem,
    chain: Vec<ShmemChainLevel>,
    wanted: Float64Array,
) -> Result<Object<'env>> {
    let levels: Vec<predump_core::shmem_chain::Level> = chain
        .iter()
        .map(|l| predump_core::shmem_chain::Level {
            pages_path: PathBuf::from(&l.pages_path),
            entries: l
                .entries
                .chunks_exact(3)
                .map(|t| predump_core::image::pagemap::Entry {
                    vaddr: t[0] as u64,
                    nr_pages: t[1] as u64,
                    flags: t[2] as u32,
                })
                .collect(),
        })
        .collect();
    let wanted = crate::pairs(&wanted);
    let live = predump_core::tree_verify::LiveObject {
        shmid: live.shmid as u64,
        size: live.size as u64,
        pid: live.pid,
        start: live.start as u64,
        end: live.end as u64,
    };
    on_own_thread(env, move || {
        let r = predump_core::tree_verify::verify_shmem(live, &levels, &wanted)?;
        Ok(crate::VerifyResult {
            pages_compared: r.pages_compared as f64,
            mismatches: r.mismatches as f64,
            first_mismatches: r.first_mismatches.iter().map(|&a| a as f64).collect(),
            not_in_chain: r.not_in_chain as f64,
            unreadable: r.unreadable as f64,
            missing: r.missing as f64,
            rseq_only: r.rseq_only as f64,
        })
    })
}
