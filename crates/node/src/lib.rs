//! The napi-rs binding of predump-core: it converts types and errors, nothing else.
//!
//! Every call that ptraces runs on a dedicated OS thread of its own ("tracer"),
//! never on the libuv pool: ptrace requests are only valid from the thread that
//! attached, and a long drain must not starve Node's pool. The promise is settled
//! from that thread through a napi deferred.

use std::path::PathBuf;
use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi::{Env, JsDeferred};
use napi_derive::napi;

use predump_core::drain::DrainConfig;

// Public, as `tree`: its items are the addon's interface (registered by napi, which
// a test build leaves out; private, they would count as dead code there).
pub mod pageserver;
pub mod tree;
use predump_core::predump::{self as core_predump, PreDumpReport as CoreReport};

/// Options of a pre-dump.
#[napi(object)]
pub struct PreDumpOptions {
    pub pid: i32,
    /// "auto" (default: freeze-free with uffd-wp tracking, else read), "read",
    /// "splice" or "freeze-free".
    pub mode: Option<String>,
    /// Dirty tracking: "uffd-wp", "soft-dirty", "auto" or "none" (default).
    pub track_mem: Option<String>,
    /// A name for this run's arming of the tracking (recorded in the target).
    pub generation: Option<String>,
    /// The parent images: the pages they hold as [vaddr, nrPages] pairs, the
    /// generation recorded with them by the predump run that made them, and when
    /// they were made (their dump_uptime, µs): without a generation (CRIU's
    /// pre-dump, or predump's without tracking) soft-dirty tracking can still
    /// trust them if no predump run cleared the bits since.
    pub parent_pages: Option<Float64Array>,
    pub parent_generation: Option<String>,
    pub parent_made_us: Option<f64>,
    /// `predump dump`: copy while frozen throughout, end tracking, and leave the
    /// target running or (leaveStopped) job-stopped.
    pub final_dump: Option<bool>,
    pub leave_stopped: Option<bool>,
    /// The images directory (it must exist), where the core writes the pages
    /// image (`pages-1.img`, which must not exist) and its pagemap
    /// (`pagemap-PID.img`); not used when the pages go to a page server.
    pub images_dir: String,
    /// Size of each drain buffer; the real size is the pipe's (a power of two).
    pub buffer_bytes: Option<u32>,
}

/// What a pre-dump did. Times in microseconds.
#[napi(object)]
pub struct PreDumpReport {
    /// The mode used: "read" after a splice fallback.
    pub mode: String,
    pub requested_mode: String,
    /// Why splice mode fell back to read mode.
    pub fallback: Option<String>,
    /// Splice mode: pipes used, their size, bytes pinned in them until drained,
    /// system calls injected into the target, and the time that took (frozen).
    pub pipes: u32,
    pub pipe_bytes: f64,
    pub pinned_bytes: f64,
    pub injected_calls: f64,
    pub inject_us: f64,
    pub pid: i32,
    pub start_time: f64,
    pub dump_uptime_us: f64,
    /// The dumped regions as [vaddr, nrPages] pairs, flat, in pages-image order.
    pub regions: Float64Array,
    /// Its pages image is `pages-<pagesId>.img`.
    pub pages_id: u32,
    /// The entries of the pagemap the core wrote (or sent to the page server).
    pub pagemap_entries: u32,
    /// Present pages left to the parent (PE_PARENT), as [vaddr, nrPages] pairs.
    pub parent_regions: Float64Array,
    /// Why a pre-dump with a parent still copied every page.
    pub track_note: Option<String>,
    /// What a predump that died while injecting had left in the target, removed.
    pub leftovers_removed: Option<String>,
    /// The dirty tracking used: "uffd-wp", "soft-dirty" or "none" ("auto" resolved).
    pub track_backend: String,
    /// This run started the target's tracking: undo it (untrack) if the images
    /// cannot be completed.
    pub created_tracking: bool,
    pub threads: u32,
    pub scan_method: String,
    pub vmas_scanned: u32,
    pub vmas_skipped: u32,
    /// Pages of unreadable mappings left out (see the core's PreDumpReport).
    pub unreadable_pages: f64,
    pub pages_scanned: f64,
    pub pages_present: f64,
    pub pages_written: f64,
    pub pages_gone: f64,
    pub freezing_us: f64,
    pub frozen_us: f64,
    pub stopped_window_us: f64,
    pub scan_us: f64,
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
    pub read_us: f64,
    pub write_us: f64,
    pub readv_calls: f64,
    pub buffer_bytes: f64,
    pub partial: bool,
    /// Its shared mappings left out, each with the reason.
    pub not_dumped: Vec<tree::NotDumpedMapping>,
}

/// Progress of a running pre-dump, polled from JavaScript for a progress bar.
#[napi]
pub struct Progress {
    pub(crate) inner: Arc<core_predump::Progress>,
}

#[napi]
impl Progress {
    #[napi(constructor)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Progress {
            inner: Arc::new(core_predump::Progress::default()),
        }
    }
    /// Bytes to copy (0 until the scan is done).
    #[napi(getter)]
    pub fn total(&self) -> f64 {
        self.inner.total.load(std::sync::atomic::Ordering::Relaxed) as f64
    }
    /// Bytes copied so far.
    #[napi(getter)]
    pub fn done(&self) -> f64 {
        self.inner.done.load(std::sync::atomic::Ordering::Relaxed) as f64
    }
    /// The target runs again: exiting now cannot harm it.
    #[napi(getter)]
    pub fn thawed(&self) -> bool {
        self.inner.thawed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Pre-dumps a process, writing its pages image and pagemap. Rejects with an Error whose
/// `code` is one of predump-core's stable codes.
#[napi(ts_return_type = "Promise<PreDumpReport>")]
pub fn pre_dump<'env>(
    env: &'env Env,
    options: PreDumpOptions,
    progress: Option<&Progress>,
) -> Result<Object<'env>> {
    let dir = PathBuf::from(&options.images_dir);
    let Planned {
        pid,
        mode,
        tracking,
        config,
    } = plan(options)?;
    let progress = progress.map(|p| p.inner.clone());
    on_own_thread(env, move || {
        core_predump::pre_dump(pid, &dir, mode, &config, &tracking, progress.as_deref()).map(report)
    })
}

/// A pre-dump's options, converted.
pub(crate) struct Planned {
    pub pid: i32,
    pub mode: core_predump::Mode,
    pub tracking: core_predump::TrackOptions,
    pub config: DrainConfig,
}

/// Why a pre-dump's mode and dirty tracking names (absent mode: "auto", absent
/// tracking: "none") cannot work together, or null: the core's check, which
/// probes nothing (the CLI asks before it touches the target or a directory).
#[napi]
pub fn pre_dump_choice_refused(
    mode: Option<String>,
    track_mem: Option<String>,
    final_dump: Option<bool>,
) -> Option<String> {
    match predump_core::mode::check_names(
        mode.as_deref(),
        track_mem.as_deref(),
        final_dump == Some(true),
    ) {
        Ok(_) => None,
        Err(predump_core::Error::InvalidArgument(why)) => Some(why),
        Err(e) => Some(e.to_string()),
    }
}

/// The mode a pre-dump of one process takes for these names (auto resolved as
/// the core resolves it, probing the kernel): "read", "splice" or "freeze-free".
#[napi]
pub fn resolve_pre_dump_mode(
    mode: Option<String>,
    track_mem: Option<String>,
    final_dump: Option<bool>,
) -> Result<String> {
    let choice = predump_core::mode::resolve(
        mode.as_deref(),
        track_mem.as_deref(),
        final_dump == Some(true),
    )
    .map_err(|e| Error::new(Status::InvalidArg, e.to_string()))?;
    Ok(choice.mode.name().to_string())
}

pub(crate) fn plan(options: PreDumpOptions) -> Result<Planned> {
    let choice = predump_core::mode::resolve(
        options.mode.as_deref(),
        options.track_mem.as_deref(),
        options.final_dump == Some(true),
    )
    .map_err(|e| Error::new(Status::InvalidArg, e.to_string()))?;
    let parent = match (
        options.parent_pages,
        options.parent_generation,
        options.parent_made_us,
    ) {
        (Some(pages), Some(generation), _) => Some(core_predump::ParentChain {
            pages: pairs(&pages),
            origin: core_predump::ParentOrigin::Armed(generation),
        }),
        (Some(pages), None, Some(made)) => Some(core_predump::ParentChain {
            pages: pairs(&pages),
            origin: core_predump::ParentOrigin::Snapshot { at_us: made as u64 },
        }),
        _ => None,
    };
    let tracking = core_predump::TrackOptions {
        backend: choice.backend,
        generation: options.generation.unwrap_or_default(),
        parent,
        final_dump: options
            .final_dump
            .unwrap_or(false)
            .then_some(core_predump::FinalDump {
                leave_stopped: options.leave_stopped.unwrap_or(false),
            }),
        auto: choice.auto_track,
    };
    let mut config = DrainConfig::default();
    if let Some(bytes) = options.buffer_bytes {
        config.buffer_bytes = bytes as usize;
    }
    Ok(Planned {
        pid: options.pid,
        mode: choice.mode,
        tracking,
        config,
    })
}

pub(crate) fn report(r: CoreReport) -> PreDumpReport {
    let us = |d: std::time::Duration| d.as_secs_f64() * 1e6;
    let flat = |v: &[predump_core::PageRange]| -> Vec<f64> {
        v.iter()
            .flat_map(|g| [g.start as f64, g.pages as f64])
            .collect()
    };
    let regions = flat(&r.regions);
    let parent_regions = flat(&r.parent_regions);
    let splice = r.splice.clone().unwrap_or_default();
    PreDumpReport {
        mode: r.mode.name().to_string(),
        requested_mode: r.requested_mode.name().to_string(),
        fallback: r.fallback.clone(),
        pipes: splice.pipes as u32,
        pipe_bytes: splice.pipe_bytes as f64,
        pinned_bytes: splice.pinned_bytes as f64,
        injected_calls: splice.injected_calls as f64,
        inject_us: us(splice.inject_time),
        pid: r.pid,
        start_time: r.start_time as f64,
        dump_uptime_us: r.dump_uptime_us as f64,
        regions: Float64Array::new(regions),
        pages_id: core_predump::PAGES_ID,
        pagemap_entries: r.pagemap_entries as u32,
        parent_regions: Float64Array::new(parent_regions),
        track_note: r.track_note.clone(),
        leftovers_removed: r.leftovers_removed.clone(),
        track_backend: r.tracking.map_or("none", |b| b.name()).to_string(),
        created_tracking: r.created_tracking,
        threads: r.threads as u32,
        scan_method: r.scan_method.name().to_string(),
        vmas_scanned: r.vmas_scanned as u32,
        vmas_skipped: r.vmas_skipped as u32,
        unreadable_pages: r.unreadable_pages as f64,
        pages_scanned: r.pages_scanned as f64,
        pages_present: r.pages_present as f64,
        pages_written: r.drain.pages_written as f64,
        pages_gone: r.drain.pages_gone as f64,
        freezing_us: us(r.freeze.freezing),
        frozen_us: us(r.freeze.frozen),
        stopped_window_us: us(r.freeze.stopped_window),
        scan_us: us(r.scan_time),
        drain_us: us(r.drain_time),
        copy_us: us(r.copy_time),
        sync_us: us(r.sync_time),
        copied_frozen: r.copied_frozen,
        memdump_us: us(r.mem.memdump),
        memwrite_us: us(r.mem.memwrite),
        read_us: us(r.drain.read_time),
        write_us: us(r.drain.write_time),
        readv_calls: r.drain.readv_calls as f64,
        buffer_bytes: r.drain.buffer_bytes as f64,
        partial: r.partial,
        not_dumped: tree::not_dumped(&r.not_dumped),
    }
}

/// Runs `job` on a new, dedicated OS thread and returns a promise of its result.
/// For the pre-dump itself that thread is the tracer: every ptrace request of
/// the job comes from it.
pub(crate) fn on_own_thread<'env, T, F>(env: &'env Env, job: F) -> Result<Object<'env>>
where
    T: ToNapiValue + Send + 'static,
    F: FnOnce() -> predump_core::Result<T> + Send + 'static,
{
    let (deferred, promise): (JsDeferred<T, _>, _) = env.create_deferred()?;
    std::thread::Builder::new()
        .name("predump-tracer".into())
        .spawn(move || {
            let outcome = job();
            deferred.resolve(move |env| outcome.map_err(|e| js_error(&env, &e)));
        })
        .map_err(|e| Error::from_reason(format!("cannot start the tracer thread: {e}")))?;
    Ok(promise)
}

/// A JavaScript Error carrying the core's stable code in `error.code`.
pub(crate) fn js_error(env: &Env, e: &predump_core::Error) -> Error {
    let made = env
        .create_error(Error::new(Status::GenericFailure, e.to_string()))
        .and_then(|mut obj| {
            obj.set_named_property("code", e.code())?;
            Ok(Error::from(obj.into_unknown(env)?))
        });
    made.unwrap_or_else(|err| err)
}

/// The result of checking a pages image against the workload's pattern.
#[napi(object)]
pub struct PatternCheck {
    pub pages_checked: f64,
    pub pages_skipped: f64,
    pub mismatches: f64,
    /// Addresses of the first mismatching pages.
    pub first_mismatches: Vec<f64>,
    pub trailing_bytes: f64,
}

/// Checks every page of a pages image against the bundled workload's pattern.
/// `regions`: [vaddr, nrPages] pairs in image order; `areas`: [start, bytes]
/// pairs of pattern memory (epoch 0); `epochs`: [start, pages, epoch] runs of
/// pages rewritten since. Pages outside `areas` are skipped.
#[napi(ts_return_type = "Promise<PatternCheck>")]
pub fn check_pattern<'env>(
    env: &'env Env,
    pages_path: String,
    regions: Float64Array,
    areas: Float64Array,
    epochs: Float64Array,
) -> Result<Object<'env>> {
    let regions: Vec<predump_core::PageRange> = regions
        .chunks_exact(2)
        .map(|p| predump_core::PageRange::new(p[0] as u64, p[1] as u64))
        .collect();
    let areas: Vec<(u64, u64)> = areas
        .chunks_exact(2)
        .map(|a| (a[0] as u64, a[0] as u64 + a[1] as u64))
        .collect();
    let mut runs: Vec<(u64, u64, u32)> = epochs
        .chunks_exact(3)
        .map(|r| {
            (
                r[0] as u64,
                r[0] as u64 + r[1] as u64 * predump_core::PAGE_SIZE,
                r[2] as u32,
            )
        })
        .collect();
    runs.sort_unstable();
    on_own_thread(env, move || {
        let file = std::fs::File::open(&pages_path)
            .map_err(|e| predump_core::Error::sys(format!("open {pages_path}"), e))?;
        let expected = |addr: u64| {
            let i = runs.partition_point(|r| r.0 <= addr);
            if i > 0 && addr < runs[i - 1].1 {
                return Some(runs[i - 1].2);
            }
            areas
                .iter()
                .any(|&(s, e)| addr >= s && addr < e)
                .then_some(0)
        };
        let r = predump_bench::pattern::check_pages_file(
            std::io::BufReader::new(file),
            &regions,
            expected,
        )
        .map_err(|e| predump_core::Error::sys(format!("reading {pages_path}"), e))?;
        Ok(PatternCheck {
            pages_checked: r.pages_checked as f64,
            pages_skipped: r.pages_skipped as f64,
            mismatches: r.mismatches as f64,
            first_mismatches: r.first_mismatches.iter().map(|&a| a as f64).collect(),
            trailing_bytes: r.trailing_bytes as f64,
        })
    })
}

/// Reference figures for benchmarks, in milliseconds.
#[napi(object)]
pub struct MemcpyReference {
    /// memcpy into a fresh destination (paying its page faults, like a new image).
    pub fresh_ms: f64,
    /// memcpy into the same destination again.
    pub warm_ms: f64,
}

/// Times a memcpy of `bytes` (fresh and warm destination) on its own thread.
#[napi(ts_return_type = "Promise<MemcpyReference>")]
pub fn memcpy_reference<'env>(env: &'env Env, bytes: f64) -> Result<Object<'env>> {
    on_own_thread(env, move || {
        let t = predump_bench::reference::memcpy(bytes as usize)?;
        Ok(MemcpyReference {
            fresh_ms: t.fresh.as_secs_f64() * 1e3,
            warm_ms: t.warm.as_secs_f64() * 1e3,
        })
    })
}

/// process_vm_readv alone over every present page of `pid`, nothing written.
#[napi(object)]
pub struct ReadvReference {
    pub ms: f64,
    pub bytes: f64,
}

#[napi(ts_return_type = "Promise<ReadvReference>")]
pub fn readv_reference<'env>(env: &'env Env, pid: i32) -> Result<Object<'env>> {
    on_own_thread(env, move || {
        let (t, bytes) = predump_bench::reference::readv_reference(pid)?;
        Ok(ReadvReference {
            ms: t.as_secs_f64() * 1e3,
            bytes: bytes as f64,
        })
    })
}

/// Checks that `pid` can be pre-dumped (exists, is not us, not a kernel
/// thread, not a zombie, not our child) without touching it; resolves with its
/// start time (clock ticks after boot), which names it across pid reuse.
#[napi(ts_return_type = "Promise<number>")]
pub fn check_target<'env>(env: &'env Env, pid: i32) -> Result<Object<'env>> {
    on_own_thread(env, move || {
        predump_core::proc::check_target(pid).map(|st| st.start_time as f64)
    })
}

/// Clock ticks per second, to turn a start time into seconds after boot.
#[napi]
pub fn clock_ticks_per_second() -> u32 {
    // SAFETY: sysconf reads a constant of the system.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as u32 }
}

/// One kernel feature predump relies on, and why it does or does not work here.
#[napi(object)]
pub struct KernelCapability {
    /// process_vm_readv, ptrace, pidfd_getfd, PAGEMAP_SCAN, soft-dirty, uffd-wp,
    /// vmsplice-gift.
    pub name: String,
    pub supported: bool,
    pub detail: String,
}

/// What `predump check` found, each feature tried for real.
#[napi(object)]
pub struct KernelCheck {
    pub kernel: String,
    pub arch: String,
    pub root: bool,
    pub cap_sys_ptrace: bool,
    pub cap_sys_resource: bool,
    /// /proc/sys/kernel/yama/ptrace_scope; absent without Yama.
    pub ptrace_scope: Option<u32>,
    /// /proc/sys/fs/pipe-max-size in bytes.
    pub pipe_max_size: Option<f64>,
    pub capabilities: Vec<KernelCapability>,
    /// The dirty-tracking backend `auto` chooses: "soft-dirty", "uffd-wp" or "none".
    pub track_mem_auto: String,
    pub read_mode: bool,
    pub splice_mode: bool,
    /// The freeze-free mode works: read mode, uffd-wp and injection.
    pub freeze_free_mode: bool,
    /// What `--pre-dump-mode auto` takes here: "freeze-free" or "read".
    pub default_mode: String,
    /// What `--pre-dump-mode auto` takes on a tree: "read".
    pub default_tree_mode: String,
}

/// Probes the kernel features predump needs, on memory of this process and of a
/// short-lived child it forks (never another process).
#[napi(ts_return_type = "Promise<KernelCheck>")]
pub fn check_kernel<'env>(env: &'env Env) -> Result<Object<'env>> {
    on_own_thread(env, move || {
        let r = predump_core::check::check()?;
        Ok(KernelCheck {
            kernel: r.kernel,
            arch: r.arch,
            root: r.root,
            cap_sys_ptrace: r.cap_sys_ptrace,
            cap_sys_resource: r.cap_sys_resource,
            ptrace_scope: r.ptrace_scope,
            pipe_max_size: r.pipe_max_size.map(|n| n as f64),
            capabilities: r
                .capabilities
                .into_iter()
                .map(|c| KernelCapability {
                    name: c.name.to_string(),
                    supported: c.supported,
                    detail: c.detail,
                })
                .collect(),
            track_mem_auto: r.track_mem_auto.name().to_string(),
            read_mode: r.read_mode,
            splice_mode: r.splice_mode,
            freeze_free_mode: r.freeze_free_mode,
            default_mode: r.default_mode.name().to_string(),
            default_tree_mode: r.default_tree_mode.name().to_string(),
        })
    })
}

/// Time to write `bytes` into a new file in `dir` (removed afterwards), in ms.
#[napi(ts_return_type = "Promise<number>")]
pub fn write_reference<'env>(env: &'env Env, dir: String, bytes: f64) -> Result<Object<'env>> {
    on_own_thread(env, move || {
        let t =
            predump_bench::reference::write_reference(std::path::Path::new(&dir), bytes as usize)?;
        Ok(t.as_secs_f64() * 1e3)
    })
}

/// Time of a plain TCP send of `bytes` over loopback (to a reader that throws
/// them away), in ms: the reference of the page-server benchmark.
#[napi(ts_return_type = "Promise<number>")]
pub fn tcp_reference<'env>(env: &'env Env, bytes: f64) -> Result<Object<'env>> {
    on_own_thread(env, move || {
        let t = predump_bench::reference::tcp_reference(bytes as usize)?;
        Ok(t.as_secs_f64() * 1e3)
    })
}

/// [vaddr, nrPages] pairs as page ranges.
pub(crate) fn pairs(flat: &[f64]) -> Vec<predump_core::PageRange> {
    flat.chunks_exact(2)
        .map(|p| predump_core::PageRange::new(p[0] as u64, p[1] as u64))
        .collect()
}

/// What `untrack` did.
#[napi(object)]
pub struct UntrackReport {
    /// The target had dirty tracking of predump's, now ended.
    pub untracked: bool,
    /// What a predump that died while injecting had left in it, now removed.
    pub leftovers_removed: Option<String>,
}

/// Ends predump's dirty tracking of `pid` and removes a dead run's leftovers.
#[napi(ts_return_type = "Promise<UntrackReport>")]
pub fn untrack<'env>(env: &'env Env, pid: i32) -> Result<Object<'env>> {
    on_own_thread(env, move || {
        predump_core::track::untrack(pid).map(|u| UntrackReport {
            untracked: u.tracking,
            leftovers_removed: u.leftovers,
        })
    })
}

/// One image directory of a chain, newest first.
#[napi(object)]
pub struct ChainLayer {
    pub pages_path: String,
    /// Its own pages (PE_PRESENT), as [vaddr, nrPages] pairs in file order.
    pub present: Float64Array,
}

#[napi(object)]
pub struct VerifyResult {
    pub pages_compared: f64,
    pub mismatches: f64,
    pub first_mismatches: Vec<f64>,
    pub not_in_chain: f64,
    pub unreadable: f64,
    pub missing: f64,
    /// Pages that differ only inside a thread's rseq area (rewritten by the
    /// kernel whenever the thread returns to user mode).
    pub rseq_only: f64,
}

/// Freezes `pid` and compares every page of `wanted` rebuilt from `chain` with
/// its memory.
#[napi(ts_return_type = "Promise<VerifyResult>")]
pub fn verify<'env>(
    env: &'env Env,
    pid: i32,
    chain: Vec<ChainLayer>,
    wanted: Float64Array,
) -> Result<Object<'env>> {
    let layers: Vec<predump_core::verify::Layer> = chain
        .iter()
        .map(|l| predump_core::verify::Layer {
            pages_path: PathBuf::from(&l.pages_path),
            present: pairs(&l.present),
        })
        .collect();
    let wanted = pairs(&wanted);
    on_own_thread(env, move || {
        let r = predump_core::verify::verify(pid, &layers, &wanted)?;
        Ok(VerifyResult {
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
