//! Dirty tracking: which pages of a target were written since the previous
//! pre-dump, so that iterative pre-dumps copy only those.
//!
//! Two kernel mechanisms (DESIGN.md, "Dirty tracking"):
//!
//! * **soft-dirty** (CONFIG_MEM_SOFT_DIRTY: x86_64, ppc64, s390): writing `4` to
//!   /proc/PID/clear_refs clears the bit of every page of the process; a write
//!   sets it again. Nothing is left in the target. The clear covers the *whole*
//!   process, so `take_dirty` must be given every range in one call, while frozen.
//!   The development kernel lacks the option: tested in the kernel matrix
//!   (`.ci/vm`: Debian 6.1 and 6.12 under qemu).
//! * **uffd-wp async** (Linux ≥ 6.7): a userfaultfd is created *in the target*
//!   by an injected `userfaultfd(O_CLOEXEC|O_NONBLOCK|UFFD_USER_MODE_ONLY)`, taken
//!   with pidfd_getfd, switched on with `UFFDIO_API{WP_ASYNC|WP_UNPOPULATED}` and
//!   given every VMA with `UFFDIO_REGISTER(MODE_WP)`. A PAGEMAP_SCAN on
//!   /proc/PID/pagemap with `PM_SCAN_WP_MATCHING` and category `PAGE_IS_WRITTEN`
//!   then reports the pages written since the previous scan *and* write-protects
//!   them again, in one atomic walk: no write can fall between "read" and "re-arm",
//!   so it is safe even while the target runs. One imprecision, the kernel's: the
//!   walk write-protects unpopulated pages (WP_UNPOPULATED markers) only where a
//!   page table exists; a 2 MiB stretch with none gets no marker, so a *read*
//!   there maps the zero page unprotected and the page is reported once, as if
//!   written (a superset, never a lost write; seen on Debian's 6.12).
//!
//! # What stays in the target between runs (uffd-wp)
//!
//! The uffd must outlive predump: closing its last fd unregisters everything and
//! the next run would know nothing. So between runs the target holds:
//!
//! * **one fd of type `anon_inode:[userfaultfd]`** at a high-ish fd number N
//!   (the lowest free fd ≥ `fd_base`: near the top of the target's current fd
//!   table, 56 for a process with fewer than 56 fds, so that it takes none of
//!   the low numbers a program gets from open(), and does not grow the table:
//!   growing a shared table costs an RCU grace period, measured 12–14 ms here,
//!   all of it inside the freeze), close-on-exec;
//! * **one empty memfd** named `predump-uffd pid=P fd=N ino=I` at a high fd too,
//!   close-on-exec, holding no page: the marker by which a later run finds the
//!   uffd (see `find_ours`);
//! * **the registrations**: every VMA given to `attach` is registered
//!   (VM_UFFD_WP, shown as `uw` in smaps' VmFlags). Their effect: the first write
//!   to a page after it was armed takes a write-protect fault that the kernel
//!   resolves by itself (async mode: no thread waits, nothing is queued on the
//!   uffd); the cost is one minor fault per page per arming interval (about a
//!   microsecond), after which the page is written at full speed until the next
//!   `take_dirty`. Reads cost nothing. Registered VMAs do not merge with
//!   unregistered neighbours (a grown heap shows as a second VMA).
//!
//! `release` closes both fds in the target (and ours): the kernel unregisters
//! every range and clears the protections; the target is as before tracking.
//! A child forked by the target meanwhile inherits the two fds (until it execs:
//! close-on-exec) but none of the registrations (no UFFD_FEATURE_EVENT_FORK); as
//! long as it holds its copy, the uffd stays open after `release`.
//!
//! Dropping a `Tracker` (or `keep`) closes only predump's own copy of the uffd:
//! the target keeps tracking, for the next run to find.
//!
//! For the caller: `take_dirty` re-arms what it reports. If the pages it
//! reported do not reach an image (the pre-dump fails afterwards), the next
//! pre-dump must not rely on the chain: make it a full one, or `release` and
//! start tracking again.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt};
use std::sync::OnceLock;

use crate::freeze::Frozen;
use crate::inject::{FdKind, Injector};
use crate::maps::Vma;
use crate::proc::proc_error;
use crate::sys::pagemap::{
    self, PageRegion, ScanQuery, PAGE_IS_PRESENT, PAGE_IS_SOFT_DIRTY, PAGE_IS_SWAPPED,
    PAGE_IS_WPALLOWED, PAGE_IS_WRITTEN, PM_PRESENT, PM_SCAN_CHECK_WPASYNC, PM_SCAN_WP_MATCHING,
    PM_SOFT_DIRTY, PM_SWAP,
};
use crate::sys::pidfd::PidFd;
use crate::{probe, push_merged, Error, PageRange, Result, PAGE_SIZE};

use crate::sys::uffd::{
    self, UFFDIO_REGISTER_MODE_WP, UFFD_FEATURE_WP_ASYNC, UFFD_FEATURE_WP_UNPOPULATED,
    UFFD_USER_MODE_ONLY,
};

/// How written pages are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    SoftDirty,
    UffdWp,
    /// No tracking: every page is dirty, every pre-dump a full one.
    None,
}

impl Backend {
    /// The name used by `--track-mem` and `predump check`.
    pub const fn name(self) -> &'static str {
        match self {
            Backend::SoftDirty => "soft-dirty",
            Backend::UffdWp => "uffd-wp",
            Backend::None => "none",
        }
    }

    /// What `--track-mem auto` takes, given which backends work: soft-dirty
    /// first (it leaves nothing in the target), uffd-wp next.
    pub fn auto(soft_dirty: bool, uffd_wp: bool) -> Backend {
        if soft_dirty {
            Backend::SoftDirty
        } else if uffd_wp {
            Backend::UffdWp
        } else {
            Backend::None
        }
    }

    /// `auto` on this machine: soft-dirty if a real probe (write a page, clear,
    /// write, look at bit 55) shows it, else uffd-wp if its probe works (and
    /// system calls can be injected here: not on aarch64 kernels whose vDSO
    /// leaves too little room for the stub), else
    /// None. The probes (probe.rs, the same as `predump check`'s) run on our
    /// own memory, once per process: the kernel does not change under us.
    pub fn detect() -> Backend {
        static DETECTED: OnceLock<Backend> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            // uffd-wp tracking makes its userfaultfd inside the target: injection.
            let uffd_wp = crate::inject::supported().is_ok() && Backend::UffdWp.works();
            Backend::auto(Backend::SoftDirty.works(), uffd_wp)
        })
    }

    /// Whether this backend works here: the real probe of `predump check`.
    pub fn works(self) -> bool {
        match self {
            Backend::SoftDirty => probe::soft_dirty().is_ok_and(|p| p.supported),
            Backend::UffdWp => probe::uffd_wp().is_ok_and(|p| p.supported),
            Backend::None => true,
        }
    }
}

/// The prefix of the marker memfd's name (memfd names show in /proc/PID/fd as
/// `/memfd:NAME (deleted)`; at most 249 bytes).
const MARKER_PREFIX: &str = "predump-uffd";
/// The flags of the uffd made in the target: close-on-exec (an exec replaces the
/// memory anyway), non-blocking (nobody in the target ever reads it).
const TARGET_UFFD_FLAGS: libc::c_int = libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY;
/// Regions asked of the kernel per PAGEMAP_SCAN call.
const SCAN_VEC_LEN: usize = 4096;
/// The size of the fd table every process starts with (NR_OPEN_DEFAULT,
/// BITS_PER_LONG); larger tables are powers of two times 128 fds on 64-bit.
const FD_TABLE_MIN: u64 = 64;
/// The moved fds go this far below the top of the table.
const FD_TOP_GAP: u64 = 8;

/// predump's uffd in a target, as found by its marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ours {
    uffd_fd: i32,
    marker_fd: i32,
}

// The tracking generation is a string that the run which armed the tracking
// last writes into the marker (`Tracker::set_generation`): an images directory
// made by that run records the same string, so a later run can tell whether the
// target's dirty state is relative to that directory, and not to a run that
// armed and then failed. The marker then holds one page.

/// The target's marker, taken with pidfd_getfd.
fn marker_file(pid: i32, marker_fd: i32) -> Result<File> {
    Ok(File::from(PidFd::open(pid)?.get_fd(marker_fd)?))
}

fn read_generation(pid: i32, marker_fd: i32) -> Result<Option<String>> {
    let mut buf = [0u8; 256];
    let n = marker_file(pid, marker_fd)?
        .read_at(&mut buf, 0)
        .map_err(|e| Error::sys("reading the tracking marker", e))?;
    Ok((n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned()))
}

fn write_generation(pid: i32, marker_fd: i32, generation: &str) -> Result<()> {
    let marker = marker_file(pid, marker_fd)?;
    marker
        .set_len(0)
        .and_then(|()| marker.write_all_at(generation.as_bytes(), 0))
        .map_err(|e| Error::sys("writing the tracking marker", e))
}

/// The fd number of predump's uffd in process `pid`, if any.
///
/// How it is recognised: `attach` leaves, next to the uffd, an empty memfd named
/// `predump-uffd pid=P fd=N ino=I`. An fd N of the target is ours only if a
/// marker of this process (P = `pid`, so a forked child holding its parent's
/// copy never takes the parent's uffd for its own) names it, N links to
/// `anon_inode:[userfaultfd]`, and its inode number is I. Every userfaultfd has an
/// inode of its own (anon_inode_create_getfile; the tests check it), so the
/// target's own userfaultfd, even at fd N after ours was closed, cannot match;
/// only a program that made a memfd with our name on purpose could. The fd
/// number alone (or the uffd's features in fdinfo) would not do: a program may
/// make uffds with the same features and dup them anywhere.
pub fn find_ours(pid: i32) -> Result<Option<i32>> {
    Ok(scan_fds(pid)?.0.map(|o| o.uffd_fd))
}

/// (our uffd if its marker is valid, the fds of stale markers: markers whose
/// uffd is gone, e.g. closed by the target's close_range).
/// Also returns the highest fd open in the target.
fn scan_fds(pid: i32) -> Result<(Option<Ours>, Vec<i32>, i32)> {
    let dir = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&dir).map_err(|e| proc_error(pid, &dir, e))?;
    let mut found = None;
    let mut stale = Vec::new();
    let mut max_fd = 0;
    for entry in entries {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        max_fd = max_fd.max(fd);
        // An fd closed meanwhile has no link: not ours.
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let link = link.to_string_lossy();
        let Some(name) = link
            .strip_prefix("/memfd:")
            .map(|n| n.strip_suffix(" (deleted)").unwrap_or(n))
        else {
            continue;
        };
        let Some((marker_pid, uffd_fd, ino)) = parse_marker(name) else {
            continue;
        };
        if marker_pid != pid {
            // A parent's marker inherited by fork: not this process's tracking.
            continue;
        }
        if found.is_none() && is_uffd_with_ino(pid, uffd_fd, ino) {
            found = Some(Ours {
                uffd_fd,
                marker_fd: fd,
            });
        } else {
            stale.push(fd);
        }
    }
    Ok((found, stale, max_fd))
}

/// The marker's name for uffd fd `fd` with inode `ino` of process `pid`.
fn marker_name(pid: i32, fd: i32, ino: u64) -> String {
    format!("{MARKER_PREFIX} pid={pid} fd={fd} ino={ino}")
}

/// (pid, fd, ino) of a marker name.
fn parse_marker(name: &str) -> Option<(i32, i32, u64)> {
    let rest = name.strip_prefix(MARKER_PREFIX)?.strip_prefix(' ')?;
    let mut it = rest.split(' ');
    let pid = it.next()?.strip_prefix("pid=")?.parse().ok()?;
    let fd = it.next()?.strip_prefix("fd=")?.parse().ok()?;
    let ino = it.next()?.strip_prefix("ino=")?.parse().ok()?;
    it.next().is_none().then_some((pid, fd, ino))
}

fn is_uffd_with_ino(pid: i32, fd: i32, ino: u64) -> bool {
    let path = format!("/proc/{pid}/fd/{fd}");
    let is_uffd =
        std::fs::read_link(&path).is_ok_and(|l| l.to_string_lossy() == "anon_inode:[userfaultfd]");
    // metadata() follows the magic link to the open file's inode.
    is_uffd && std::fs::metadata(&path).is_ok_and(|m| m.ino() == ino)
}

/// Where the fds left in the target go: the lowest free fd from here up.
/// The target's fd table holds at least `FD_TABLE_MIN` fds and more than its
/// highest open fd, in sizes of 64, 128, 256…: a base just below the smallest
/// such size above `max_fd` lies inside the table, so F_DUPFD does not grow it
/// (unless every fd from there up is taken). Below the RLIMIT_NOFILE soft limit
/// (F_DUPFD fails with EINVAL at or above it), at least 3.
fn fd_base(pid: i32, max_fd: i32) -> u64 {
    let soft = crate::proc::nofile_soft(pid).unwrap_or(1024);
    base_for(max_fd, soft)
}

/// `fd_base` without I/O: `soft` is the RLIMIT_NOFILE soft limit.
fn base_for(max_fd: i32, soft: u64) -> u64 {
    let table = (max_fd.max(0) as u64 + 1)
        .next_power_of_two()
        .max(FD_TABLE_MIN);
    (table - FD_TOP_GAP)
        .min(soft.saturating_sub(FD_TOP_GAP))
        .max(3)
}

/// Keeps other predump runs off one target's dirty tracking while held.
///
/// A run that takes the dirty pages re-arms them: two runs at once would each
/// take some of the other's pages, and both chains would silently miss writes.
/// Frozen runs exclude each other through ptrace already; a freeze-free run
/// does not stop the target, so nothing else would. The lock is an abstract
/// unix socket named after the process (pid and start time): only one can be
/// bound, it needs no file, and the kernel frees it when its holder exits, even
/// by SIGKILL, so a crashed run never leaves the target locked. (Abstract names
/// are per network namespace: runs from different namespaces do not see each
/// other's locks.)
#[derive(Debug)]
pub struct TrackLock {
    _socket: std::os::unix::net::UnixDatagram,
}

impl TrackLock {
    /// Takes the lock of process `pid` started at `start_time` (clock ticks
    /// after boot), or fails with `Error::Busy` at once: never waits.
    pub fn acquire(pid: i32, start_time: u64) -> Result<TrackLock> {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("predump-track pid={pid} start={start_time}");
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .map_err(|e| Error::sys("naming the tracking lock", e))?;
        match std::os::unix::net::UnixDatagram::bind_addr(&addr) {
            Ok(socket) => Ok(TrackLock { _socket: socket }),
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => Err(Error::Busy { pid }),
            Err(e) => Err(Error::sys("binding the tracking lock", e)),
        }
    }
}

/// The run that armed a target's tracking last: the generation it recorded and,
/// for soft-dirty, when (CLOCK_BOOTTIME µs, taken while the target was frozen,
/// before the bits were cleared). The time orders our clears against those of
/// CRIU's pre-dumps, whose images say when they were made (`dump_uptime`, taken
/// in their own frozen window, after their clear): two runs cannot hold one
/// process frozen at once, so the one whose time is earlier also cleared first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Armed {
    pub generation: String,
    pub at_us: Option<u64>,
}

impl Armed {
    fn parse(text: &str) -> Option<Armed> {
        let mut words = text.split_whitespace();
        let generation = words.next()?.to_string();
        let at_us = words.next().and_then(|w| w.parse().ok());
        Some(Armed { generation, at_us })
    }
}

/// Where soft-dirty tracking records which run cleared a process's bits last.
///
/// Soft-dirty keeps no state in the target (the bits are the kernel's), so the
/// generation that uffd-wp keeps in its marker lives in a file of predump's:
/// `/run/predump/soft-dirty-PID-START` (root), else under the temporary
/// directory, per user: `GENERATION UPTIME_US`. The process's start time in the
/// name keeps a reused pid from finding its predecessor's record. Records are a
/// few bytes each, removed once their process is gone (and a tmpfs empties at boot).
#[derive(Debug)]
pub struct SoftDirtyRecord {
    path: std::path::PathBuf,
}

impl SoftDirtyRecord {
    pub fn of(pid: i32) -> Result<SoftDirtyRecord> {
        let start = crate::proc::stat(pid)?.start_time;
        Ok(Self::at(&record_dir(), pid, start))
    }

    fn at(dir: &std::path::Path, pid: i32, start: u64) -> SoftDirtyRecord {
        SoftDirtyRecord {
            path: dir.join(format!("soft-dirty-{pid}-{start}")),
        }
    }

    pub fn read(&self) -> Result<Option<Armed>> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => Ok(Armed::parse(&text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::sys(format!("reading {}", self.path.display()), e)),
        }
    }

    /// Written whole or not at all (temporary file, then rename), with the time
    /// of writing: call it while the target is frozen, before clearing.
    pub fn write(&self, generation: &str) -> Result<()> {
        let dir = self.path.parent().expect("a file in a directory");
        let failed = |e| Error::sys(format!("writing {}", self.path.display()), e);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(failed)?;
        let tmp = self
            .path
            .with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, format!("{generation} {}\n", crate::proc::uptime_us()))
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .map_err(failed)?;
        self.prune_others(dir);
        Ok(())
    }

    /// Removes the records of processes that are gone (their pid free, or
    /// reused by a process started later), so the directory does not grow with
    /// every target ever tracked. Best effort: a record that cannot be removed
    /// stays, and a stale one is never trusted anyway (the start time is in
    /// its name).
    fn prune_others(&self, dir: &std::path::Path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path == self.path {
                continue;
            }
            let name = entry.file_name();
            let Some((pid, start)) = name
                .to_str()
                .and_then(|n| n.strip_prefix("soft-dirty-"))
                .and_then(|rest| rest.split_once('-'))
                .and_then(|(pid, start)| {
                    Some((pid.parse::<i32>().ok()?, start.parse::<u64>().ok()?))
                })
            else {
                continue; // not a record (a temporary file of a run in progress)
            };
            let alive = crate::proc::stat(pid).is_ok_and(|st| st.start_time == start);
            if !alive {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

fn record_dir() -> std::path::PathBuf {
    // SAFETY: geteuid takes no arguments and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        std::path::PathBuf::from("/run/predump")
    } else {
        std::env::temp_dir().join(format!("predump-{euid}"))
    }
}

/// The tracking state of one target, found again across separate predump runs.
pub struct Tracker {
    pid: i32,
    backend: Backend,
    pagemap: File,
    /// predump's copy of the target's uffd (uffd-wp only).
    uffd: Option<OwnedFd>,
    /// The target's fd numbers of the uffd and of its marker.
    target_uffd_fd: Option<i32>,
    target_marker_fd: Option<i32>,
    /// Whether this attach made the uffd (first run).
    created: bool,
    /// Registered to our uffd: scanned with WP_MATCHING. Sorted, merged.
    tracked: Vec<(u64, u64)>,
    /// Registered by this attach: written at any time before, dump them whole.
    new_vmas: Vec<(u64, u64)>,
    /// Not trackable: registered to the target's own userfaultfd (EBUSY), or of a
    /// kind that cannot be registered. Always reported dirty.
    always_dirty: Vec<(u64, u64)>,
    vec: Vec<PageRegion>,
    /// PAGEMAP_SCAN refused (soft-dirty on old kernels): read pagemap entries.
    pagemap_read: bool,
}

impl std::fmt::Debug for Tracker {
    // Without the 96 KiB scan vector.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("pid", &self.pid)
            .field("backend", &self.backend)
            .field("target_uffd_fd", &self.target_uffd_fd)
            .field("target_marker_fd", &self.target_marker_fd)
            .field("created", &self.created)
            .field("tracked", &self.tracked.len())
            .field("new_vmas", &self.new_vmas.len())
            .field("always_dirty", &self.always_dirty)
            .finish_non_exhaustive()
    }
}

impl Tracker {
    /// While frozen: finds our uffd in the target (left there by an earlier run)
    /// or creates one, takes it with pidfd_getfd, and registers every VMA of
    /// `vmas` not registered yet; those are listed by `new_vmas` (dump them
    /// whole). VMAs registered by the target's own userfaultfd are listed by
    /// `always_dirty`. The backend is `Backend::detect()`'s.
    pub fn attach(frozen: &Frozen, injector: &mut Injector, vmas: &[&Vma]) -> Result<Tracker> {
        Self::attach_with(Backend::detect(), frozen, injector, vmas)
    }

    /// `attach` with a chosen backend.
    pub fn attach_with(
        backend: Backend,
        frozen: &Frozen,
        injector: &mut Injector,
        vmas: &[&Vma],
    ) -> Result<Tracker> {
        if injector.pid() != frozen.pid() {
            return Err(Error::InvalidArgument(format!(
                "the injector works on process {}, not {}",
                injector.pid(),
                frozen.pid()
            )));
        }
        Self::attach_inner(backend, frozen, Some(injector), vmas)
    }

    /// `attach_with` for the backends that put nothing into the target
    /// (soft-dirty, none): no injector, so nothing is written into the target's
    /// vDSO and no thread runs our code. uffd-wp is refused: its userfaultfd is
    /// made by an injected call.
    pub fn attach_without_injection(
        backend: Backend,
        frozen: &Frozen,
        vmas: &[&Vma],
    ) -> Result<Tracker> {
        Self::attach_inner(backend, frozen, None, vmas)
    }

    fn attach_inner(
        backend: Backend,
        frozen: &Frozen,
        injector: Option<&mut Injector>,
        vmas: &[&Vma],
    ) -> Result<Tracker> {
        let pid = frozen.pid();
        let path = format!("/proc/{pid}/pagemap");
        let pagemap = File::open(&path).map_err(|e| proc_error(pid, &path, e))?;
        let mut t = Tracker {
            pid,
            backend,
            pagemap,
            uffd: None,
            target_uffd_fd: None,
            target_marker_fd: None,
            created: false,
            tracked: Vec::new(),
            new_vmas: Vec::new(),
            always_dirty: Vec::new(),
            vec: vec![PageRegion::default(); SCAN_VEC_LEN],
            pagemap_read: false,
        };
        let mut ranges: Vec<(u64, u64)> = vmas.iter().map(|v| (v.start, v.end)).collect();
        ranges.sort_unstable();
        match backend {
            Backend::None => t.always_dirty = merge(ranges),
            // Soft-dirty needs no state: a never-cleared page, or a page of a VMA
            // made after the last clear (VM_SOFTDIRTY), reads as dirty by itself.
            Backend::SoftDirty => t.tracked = merge(ranges),
            Backend::UffdWp => {
                let Some(injector) = injector else {
                    return Err(Error::InvalidArgument(
                        "uffd-wp tracking makes its userfaultfd by an injected call: it needs an \
                         injector"
                            .into(),
                    ));
                };
                t.open_uffd(injector)?;
                if let Err(e) = t.register(&ranges) {
                    // A uffd made by this run goes again: the next run starts
                    // afresh. One found stays: it holds earlier runs' tracking.
                    if t.created {
                        let _ = t.close_in_target(injector);
                    }
                    return Err(e);
                }
            }
        }
        Ok(t)
    }

    /// Without stopping the target: our uffd, left there by an earlier run, taken
    /// with pidfd_getfd; None if there is none (making one needs an injected
    /// call, see `attach_with`). No VMA is registered yet: see `add_vmas`. Stale
    /// markers stay (closing them needs an injection; the next frozen run does it).
    pub fn open_running(pid: i32) -> Result<Option<Tracker>> {
        let Some(ours) = scan_fds(pid)?.0 else {
            return Ok(None);
        };
        let path = format!("/proc/{pid}/pagemap");
        let pagemap = File::open(&path).map_err(|e| proc_error(pid, &path, e))?;
        let uffd = PidFd::open(pid)?.get_fd(ours.uffd_fd)?;
        Ok(Some(Tracker {
            pid,
            backend: Backend::UffdWp,
            pagemap,
            uffd: Some(uffd),
            target_uffd_fd: Some(ours.uffd_fd),
            target_marker_fd: Some(ours.marker_fd),
            created: false,
            tracked: Vec::new(),
            new_vmas: Vec::new(),
            always_dirty: Vec::new(),
            vec: vec![PageRegion::default(); SCAN_VEC_LEN],
            pagemap_read: false,
        }))
    }

    /// Registers `vmas` (uffd-wp; the target may be running): those not
    /// registered before are listed by `new_vmas` afterwards. Registration arms
    /// every page of a VMA, so pages read after this call and written later are
    /// reported by the next `take_dirty`.
    pub fn add_vmas(&mut self, vmas: &[&Vma]) -> Result<()> {
        if self.backend != Backend::UffdWp {
            return Err(Error::InvalidArgument(
                "only uffd-wp tracking registers VMAs".to_string(),
            ));
        }
        let mut ranges: Vec<(u64, u64)> = vmas.iter().map(|v| (v.start, v.end)).collect();
        ranges.sort_unstable();
        self.register(&ranges)
    }

    /// Finds our uffd or makes one in the target; takes our copy.
    fn open_uffd(&mut self, inj: &mut Injector) -> Result<()> {
        let pid = self.pid;
        let (found, stale, max_fd) = scan_fds(pid)?;
        // Markers whose uffd is gone would only confuse later runs.
        for fd in stale {
            inj.close(fd)?;
        }
        if let Some(o) = found {
            self.uffd = Some(PidFd::open(pid)?.get_fd(o.uffd_fd)?);
            self.target_uffd_fd = Some(o.uffd_fd);
            self.target_marker_fd = Some(o.marker_fd);
            return Ok(());
        }
        let base = fd_base(pid, max_fd);
        // The scratch mapping first: every fd made below is journaled in it
        // before the call that makes it (Injector::syscall_fd), so a predump
        // that dies at any moment leaves the uffd and its marker named for the
        // next run to remove: a tracking is kept only once the injector is
        // restored (its journal then goes with its stub), and a half-made one
        // never stays. The marker's name goes into the same mapping later.
        let name_at = inj.scratch(256)?;
        let first = inj.syscall_fd(
            libc::SYS_userfaultfd,
            &[TARGET_UFFD_FLAGS as u32 as u64],
            FdKind::Uffd,
        )?;
        if first < 0 {
            return Err(Error::sys(
                format!("injected userfaultfd in process {pid}"),
                io::Error::from_raw_os_error(-first as i32),
            ));
        }
        let first = first as i32;
        let uffd_fd = match move_high(inj, first, base, FdKind::Uffd) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = inj.close(first);
                return Err(e);
            }
        };
        self.target_uffd_fd = Some(uffd_fd);
        self.created = true;
        // From here a failure closes what we made in the target (close_in_target).
        let made = (|| -> Result<()> {
            let ours = PidFd::open(pid)?.get_fd(uffd_fd)?;
            uffd::api(&ours, UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED).map_err(|e| {
                Error::sys(
                    "UFFDIO_API with UFFD_FEATURE_WP_ASYNC|WP_UNPOPULATED on the target's uffd",
                    e,
                )
            })?;
            let ino = std::fs::metadata(format!("/proc/self/fd/{}", ours.as_raw_fd()))
                .map_err(|e| Error::sys("fstat of the uffd", e))?
                .ino();
            self.uffd = Some(ours);
            let name = marker_name(pid, uffd_fd, ino);
            let mut bytes = name.into_bytes();
            bytes.push(0);
            inj.write_memory(name_at, &bytes)?;
            let mfd = inj.syscall_fd(
                libc::SYS_memfd_create,
                &[name_at, libc::MFD_CLOEXEC as u64],
                FdKind::Marker,
            )?;
            if mfd < 0 {
                return Err(Error::sys(
                    format!("injected memfd_create in process {pid}"),
                    io::Error::from_raw_os_error(-mfd as i32),
                ));
            }
            let mfd = mfd as i32;
            match move_high(inj, mfd, base, FdKind::Marker) {
                Ok(fd) => {
                    self.target_marker_fd = Some(fd);
                    Ok(())
                }
                Err(e) => {
                    let _ = inj.close(mfd);
                    Err(e)
                }
            }
        })();
        if let Err(e) = made {
            let _ = self.close_in_target(inj);
            self.uffd = None;
            return Err(e);
        }
        Ok(())
    }

    /// Registers `ranges` (sorted) for MODE_WP, sorting each into tracked, new
    /// or always-dirty.
    fn register(&mut self, ranges: &[(u64, u64)]) -> Result<()> {
        // Held out of `self` while the scans below borrow it; put back after.
        let uffd = self.uffd.take().expect("uffd opened");
        let r = self.register_with(&uffd, ranges);
        self.uffd = Some(uffd);
        r
    }

    fn register_with(&mut self, uffd: &OwnedFd, ranges: &[(u64, u64)]) -> Result<()> {
        let mut tracked = Vec::new();
        for &(start, end) in ranges {
            // Registered WP-async before? Then (if our register succeeds) it is
            // ours from an earlier run, not new. Asked before registering, since
            // registering makes the answer yes.
            let before = self.wp_async_registered(start, end)?;
            match uffd::register(uffd, start, end - start, UFFDIO_REGISTER_MODE_WP) {
                Ok(()) => {
                    tracked.push((start, end));
                    if !before {
                        self.new_vmas.push((start, end));
                    }
                }
                // EBUSY: another uffd (the target's own) has it. EINVAL: a kind
                // of mapping that cannot be registered (VM_DROPPABLE…). Either way
                // no tracking; never an error: report the pages every time.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EINVAL)) => {
                    self.always_dirty.push((start, end))
                }
                // The VMA went away (only while running: freeze-free runs). A
                // range partly unmapped meanwhile gives EINVAL: always dirty above.
                Err(e) if e.raw_os_error() == Some(libc::ENOMEM) => {}
                Err(e) => {
                    return Err(Error::sys(
                        format!(
                            "UFFDIO_REGISTER(MODE_WP) of {start:#x}-{end:#x} in process {}",
                            self.pid
                        ),
                        e,
                    ))
                }
            }
        }
        self.tracked = merge(tracked);
        self.new_vmas = merge(std::mem::take(&mut self.new_vmas));
        self.always_dirty = merge(std::mem::take(&mut self.always_dirty));
        Ok(())
    }

    /// Whether all of [start, end) is registered with a WP_ASYNC uffd: an empty
    /// PAGEMAP_SCAN with PM_SCAN_CHECK_WPASYNC fails with EPERM otherwise. It
    /// stops at the first page (max_pages 1): cheap whatever the size.
    fn wp_async_registered(&mut self, start: u64, end: u64) -> Result<bool> {
        match self.scan_call(
            start,
            end,
            PM_SCAN_CHECK_WPASYNC,
            0,
            0,
            PAGE_IS_WPALLOWED,
            1,
            1,
        ) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(false),
            Err(e) => Err(self.scan_error(e)),
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether this attach created the uffd (no earlier run left one).
    pub fn created(&self) -> bool {
        self.created
    }

    /// The target's fd number of the uffd (uffd-wp).
    pub fn target_fd(&self) -> Option<i32> {
        self.target_uffd_fd
    }

    /// Ranges registered by this attach: their earlier writes are unknown, dump
    /// them whole (`take_dirty` reports their pages as written the first time on
    /// this kernel anyway, but not necessarily every one of them on others).
    pub fn new_vmas(&self) -> &[(u64, u64)] {
        &self.new_vmas
    }

    /// Ranges that cannot be tracked (another userfaultfd owns them), always
    /// reported dirty as a whole.
    pub fn always_dirty(&self) -> &[(u64, u64)] {
        &self.always_dirty
    }

    /// The ranges tracked (registered to our uffd, or all for soft-dirty).
    pub fn tracked(&self) -> &[(u64, u64)] {
        &self.tracked
    }

    /// The pages written in `ranges` since the previous call (or since
    /// registration), re-armed atomically: sorted, adjacent pages merged. Parts of
    /// `ranges` not tracked are reported whole (a superset is always safe).
    ///
    /// uffd-wp: may run while the target runs (the scan both reads and re-arms
    /// under the page-table lock). soft-dirty: only while frozen, and `ranges`
    /// must be every range of interest: the clear is process-wide.
    pub fn take_dirty(&mut self, ranges: &[(u64, u64)]) -> Result<Vec<PageRange>> {
        let mut ranges: Vec<(u64, u64)> = ranges
            .iter()
            .map(|&(s, e)| (s / PAGE_SIZE * PAGE_SIZE, e.div_ceil(PAGE_SIZE) * PAGE_SIZE))
            .filter(|&(s, e)| s < e)
            .collect();
        ranges.sort_unstable();
        let mut out = Vec::new();
        for (start, end) in merge(ranges) {
            let mut at = start;
            // The tracked intervals meeting [start, end), in order.
            let tracked: Vec<(u64, u64)> = self
                .tracked
                .iter()
                .filter(|&&(s, e)| s < end && e > start)
                .map(|&(s, e)| (s.max(start), e.min(end)))
                .collect();
            for (s, e) in tracked {
                if at < s {
                    push_merged(&mut out, at, (s - at) / PAGE_SIZE);
                }
                self.scan_dirty(s, e, &mut out)?;
                at = e;
            }
            if at < end {
                push_merged(&mut out, at, (end - at) / PAGE_SIZE);
            }
        }
        if self.backend == Backend::SoftDirty {
            self.clear_soft_dirty()?;
        }
        Ok(out)
    }

    /// The written pages of one tracked interval, into `out`.
    fn scan_dirty(&mut self, start: u64, end: u64, out: &mut Vec<PageRange>) -> Result<()> {
        // soft-dirty: of present or swapped pages only. PAGEMAP_SCAN also calls
        // every page of a VMA made since the last clear soft-dirty (VM_SOFTDIRTY),
        // never-populated ones and whole page-table holes included (seen on
        // Debian's 6.12: 66,000 untouched pages reported), where pagemap's bit 55
        // is only read for pages that exist (`soft_dirty_read`).
        let (flags, category, anyof) = match self.backend {
            Backend::UffdWp => (
                PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                PAGE_IS_WRITTEN,
                0,
            ),
            Backend::SoftDirty => (0, PAGE_IS_SOFT_DIRTY, PAGE_IS_PRESENT | PAGE_IS_SWAPPED),
            Backend::None => {
                push_merged(out, start, (end - start) / PAGE_SIZE);
                return Ok(());
            }
        };
        if self.pagemap_read {
            return self.soft_dirty_read(start, end, out);
        }
        let mut at = start;
        while at < end {
            let vec_len = self.vec.len() as u64;
            match self.scan_call(at, end, flags, category, anyof, category, vec_len, 0) {
                Ok((n, walk_end)) => {
                    let mut reported = at;
                    for i in 0..n {
                        let r = self.vec[i];
                        push_merged(out, r.start, (r.end - r.start) / PAGE_SIZE);
                        reported = reported.max(r.end);
                    }
                    // As in scan.rs: a full vector can come back with walk_end
                    // below what was reported; go on after both.
                    let next = walk_end.max(reported);
                    if next <= at {
                        // No progress: never loop; report the rest (safe superset).
                        push_merged(out, at, (end - at) / PAGE_SIZE);
                        break;
                    }
                    at = next;
                }
                // EPERM: part of the interval is no longer registered WP-async
                // (unmapped and mapped again while running). Whatever was re-armed
                // before the failure lies inside [at, end): report all of it.
                Err(e)
                    if e.raw_os_error() == Some(libc::EPERM) && self.backend == Backend::UffdWp =>
                {
                    push_merged(out, at, (end - at) / PAGE_SIZE);
                    break;
                }
                // Kernels before 6.7 (soft-dirty is older than PAGEMAP_SCAN).
                Err(e)
                    if e.raw_os_error() == Some(libc::ENOTTY)
                        && self.backend == Backend::SoftDirty =>
                {
                    self.pagemap_read = true;
                    return self.soft_dirty_read(at, end, out);
                }
                Err(e) => return Err(self.scan_error(e)),
            }
        }
        Ok(())
    }

    /// One PAGEMAP_SCAN: (regions written to `self.vec`, walk_end).
    #[allow(clippy::too_many_arguments)]
    fn scan_call(
        &mut self,
        start: u64,
        end: u64,
        flags: u64,
        mask: u64,
        anyof: u64,
        ret: u64,
        vec_len: u64,
        max_pages: u64,
    ) -> io::Result<(usize, u64)> {
        let query = ScanQuery {
            flags,
            start,
            end,
            vec_len: vec_len.max(1),
            max_pages,
            category_mask: mask,
            category_anyof_mask: anyof,
            return_mask: ret,
            ..Default::default()
        };
        pagemap::scan(&self.pagemap, query, &mut self.vec)
    }

    fn scan_error(&self, e: io::Error) -> Error {
        match e.raw_os_error() {
            Some(libc::ESRCH) => Error::TargetExited { pid: self.pid },
            _ => Error::sys(format!("PAGEMAP_SCAN of process {}", self.pid), e),
        }
    }

    /// soft-dirty without PAGEMAP_SCAN: pagemap bit 55 of present or swapped pages.
    fn soft_dirty_read(&mut self, start: u64, end: u64, out: &mut Vec<PageRange>) -> Result<()> {
        const CHUNK: u64 = 64 * 1024;
        let mut buf = vec![0u64; CHUNK as usize];
        let mut page = start / PAGE_SIZE;
        let last = end / PAGE_SIZE;
        while page < last {
            let n = (last - page).min(CHUNK);
            let entries = &mut buf[..n as usize];
            pagemap::read_entries(&self.pagemap, page, entries)
                .map_err(|e| Error::sys(format!("reading /proc/{}/pagemap", self.pid), e))?;
            for (i, &e) in entries.iter().enumerate() {
                if e & (PM_PRESENT | PM_SWAP) != 0 && e & PM_SOFT_DIRTY != 0 {
                    push_merged(out, (page + i as u64) * PAGE_SIZE, 1);
                }
            }
            page += n;
        }
        Ok(())
    }

    /// Clears every soft-dirty bit of the process (and write-protects the pages
    /// so the next write sets it again).
    fn clear_soft_dirty(&self) -> Result<()> {
        pagemap::clear_soft_dirty(Some(self.pid))
            .map_err(|e| proc_error(self.pid, &format!("/proc/{}/clear_refs", self.pid), e))
    }

    /// Ends tracking: closes the uffd and its marker in the target (injected
    /// close), then ours: the kernel unregisters every range and drops the write
    /// protections. The target is as before tracking. Needs the target frozen.
    pub fn release(mut self, injector: &mut Injector) -> Result<()> {
        if injector.pid() != self.pid {
            return Err(Error::InvalidArgument(format!(
                "the injector works on process {}, not {}",
                injector.pid(),
                self.pid
            )));
        }
        let r = self.close_in_target(injector);
        self.uffd = None;
        r
    }

    /// Keeps tracking for a later run: closes only predump's copy of the uffd
    /// (the same as dropping the Tracker; spelled out for readers).
    pub fn keep(self) {}

    /// The generation recorded by the run that armed this tracking last (see
    /// `generation`), read through the marker this Tracker already knows.
    /// soft-dirty leaves nothing in the target: its generation is kept in a
    /// file of ours instead (`SoftDirtyRecord`).
    pub fn generation(&self) -> Result<Option<Armed>> {
        match (self.backend, self.target_marker_fd) {
            (Backend::SoftDirty, _) => SoftDirtyRecord::of(self.pid)?.read(),
            (_, Some(fd)) if !self.created => {
                Ok(read_generation(self.pid, fd)?.map(|generation| Armed {
                    generation,
                    at_us: None,
                }))
            }
            _ => Ok(None),
        }
    }

    /// Records this run's generation in the marker (see `set_generation`).
    pub fn set_generation(&self, generation: &str) -> Result<()> {
        match (self.backend, self.target_marker_fd) {
            (Backend::SoftDirty, _) => SoftDirtyRecord::of(self.pid)?.write(generation),
            (_, Some(fd)) => write_generation(self.pid, fd, generation),
            _ => Ok(()),
        }
    }

    /// The uffd goes first: a predump killed between the two closes leaves a
    /// stale marker, which the next run (any command, `untrack` too) recognises
    /// and closes; the other way round it would leave a bare userfaultfd that
    /// nothing names.
    fn close_in_target(&mut self, inj: &mut Injector) -> Result<()> {
        let mut first = None;
        for fd in [self.target_uffd_fd.take(), self.target_marker_fd.take()]
            .into_iter()
            .flatten()
        {
            if let Err(e) = inj.close(fd) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// `F_DUPFD_CLOEXEC(fd, base)` in the target, then closes `fd`: the lowest free
/// fd ≥ base. If the target's limit refuses (EINVAL/EMFILE), `fd` stays where it is.
/// The new fd is journaled as `kind` (Injector::syscall_fd).
fn move_high(inj: &mut Injector, fd: i32, base: u64, kind: FdKind) -> Result<i32> {
    if fd as u64 >= base {
        return Ok(fd);
    }
    let r = inj.syscall_fd(
        libc::SYS_fcntl,
        &[fd as u32 as u64, libc::F_DUPFD_CLOEXEC as u64, base],
        kind,
    )?;
    if r == -(libc::EINVAL as i64) || r == -(libc::EMFILE as i64) {
        return Ok(fd);
    }
    if r < 0 {
        return Err(Error::sys(
            format!("fcntl(F_DUPFD_CLOEXEC) in process {}", inj.pid()),
            io::Error::from_raw_os_error(-r as i32),
        ));
    }
    inj.close(fd)?;
    Ok(r as i32)
}

/// Sorted intervals with overlapping or touching ones joined.
fn merge(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

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
/// range. Also removes what a predump that died while injecting left in it.
pub fn untrack(pid: i32) -> Result<Untracked> {
    let st = crate::proc::check_target(pid)?;
    let _lock = TrackLock::acquire(pid, st.start_time)?;
    let (ours, stale, _) = scan_fds(pid)?;
    if ours.is_none() && stale.is_empty() && crate::inject::leftovers::find(pid)?.is_empty() {
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
    if ours.is_some() || !stale.is_empty() {
        let mut inj = Injector::any(&frozen)?;
        if ours.is_some() {
            let tracker = Tracker::attach_with(Backend::UffdWp, &frozen, &mut inj, &[])?;
            tracker.release(&mut inj)?;
        } else {
            for fd in stale {
                inj.close(fd)?;
            }
        }
        inj.restore()?;
        out.tracking = true;
    }
    frozen.thaw();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers() {
        let n = marker_name(42, 997, 123456);
        assert_eq!(n, "predump-uffd pid=42 fd=997 ino=123456");
        assert_eq!(parse_marker(&n), Some((42, 997, 123456)));
        assert_eq!(parse_marker("predump-uffd pid=1 fd=2"), None);
        assert_eq!(parse_marker("predump-uffd pid=1 fd=2 ino=3 x"), None);
        assert_eq!(parse_marker("other pid=1 fd=2 ino=3"), None);
    }

    #[test]
    fn limits() {
        let text =
            "Limit                     Soft Limit           Hard Limit           Units     \n\
Max processes             63883                63883                processes \n\
Max open files            1024                 524288               files     \n";
        assert_eq!(crate::proc::parse_nofile_soft(text), Some(1024));
        assert_eq!(
            crate::proc::parse_nofile_soft(
                "Max open files            unlimited            unlimited            files\n"
            ),
            Some(u64::MAX)
        );
        assert_eq!(base_for(5, 1024), 56);
        assert_eq!(base_for(63, 1024), 56);
        assert_eq!(base_for(64, 1024), 120);
        assert_eq!(base_for(200, 1 << 20), 248);
        assert_eq!(base_for(200, 100), 92);
        assert_eq!(base_for(0, 4), 3);
        assert!(fd_base(std::process::id() as i32, 3) >= 3);
    }

    #[test]
    fn merging() {
        assert_eq!(merge(vec![(5, 6), (1, 3), (3, 4)]), vec![(1, 4), (5, 6)]);
        let mut out = Vec::new();
        push_merged(&mut out, 0x1000, 1);
        push_merged(&mut out, 0x2000, 2);
        push_merged(&mut out, 0x2000, 1);
        push_merged(&mut out, 0x8000, 1);
        assert_eq!(
            out,
            vec![PageRange::new(0x1000, 3), PageRange::new(0x8000, 1)]
        );
    }

    #[test]
    fn soft_dirty_records() {
        let dir = std::env::temp_dir().join(format!("predump-record-test-{}", std::process::id()));
        let r = SoftDirtyRecord::at(&dir, 42, 7);
        assert_eq!(r.read().unwrap(), None);
        let before = crate::proc::uptime_us();
        r.write("abc").unwrap();
        let first = r.read().unwrap().unwrap();
        assert_eq!(first.generation, "abc");
        let at = first.at_us.expect("the time of the arming");
        assert!(before <= at && at <= crate::proc::uptime_us());
        r.write("def").unwrap();
        assert_eq!(r.read().unwrap().unwrap().generation, "def");
        // Another start time of the same pid: another process.
        assert_eq!(SoftDirtyRecord::at(&dir, 42, 8).read().unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writing_a_soft_dirty_record_removes_those_of_gone_processes() {
        let dir = std::env::temp_dir().join(format!("predump-prune-test-{}", std::process::id()));
        let me = std::process::id() as i32;
        let my_start = crate::proc::stat(me).unwrap().start_time;
        let live = SoftDirtyRecord::at(&dir, me, my_start);
        live.write("mine").unwrap();
        // Above any pid_max: no such process. And our pid with another start
        // time: a process that had our pid before us.
        let gone = SoftDirtyRecord::at(&dir, 4_194_305, 1);
        let reused = SoftDirtyRecord::at(&dir, me, my_start + 1);
        gone.write("g").unwrap();
        reused.write("r").unwrap(); // prunes `gone`, keeps itself and `live`
        assert_eq!(gone.read().unwrap(), None);
        assert_eq!(reused.read().unwrap().unwrap().generation, "r");
        let other = dir.join("not-a-record");
        std::fs::write(&other, "x").unwrap();
        live.write("mine-again").unwrap(); // prunes `reused`
        assert_eq!(reused.read().unwrap(), None);
        assert_eq!(live.read().unwrap().unwrap().generation, "mine-again");
        assert!(other.exists(), "only records are touched");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names() {
        assert_eq!(Backend::SoftDirty.name(), "soft-dirty");
        assert_eq!(Backend::UffdWp.name(), "uffd-wp");
        assert_eq!(Backend::None.name(), "none");
    }
}
