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
//! * **the registrations**: every VMA given to `Tracker::attach_with` is registered
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
//! long as it holds its copy, the uffd stays open after `release`. `untrack`
//! and a tree's dump close such copies (`inherited`) in the processes they
//! end the tracking of.
//!
//! Dropping a `Tracker` (or `keep`) closes only predump's own copy of the uffd:
//! the target keeps tracking, for the next run to find.
//!
//! For the caller: `take_dirty` re-arms what it reports. If the pages it
//! reported do not reach an image (the pre-dump fails afterwards), the next
//! pre-dump must not rely on the chain: make it a full one, or `release` and
//! start tracking again.

mod dirty;
mod lock;
mod marker;
mod record;
mod untrack;

pub use lock::TrackLock;
pub use marker::{find_ours, inherited};
pub use record::{Armed, SoftDirtyRecord};
pub use untrack::{untrack, Untracked};

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::OnceLock;

use crate::freeze::Frozen;
use crate::inject::{FdKind, Injector};
use crate::maps::Vma;
use crate::proc::proc_error;
use crate::sys::pagemap::{PageRegion, PAGE_IS_WPALLOWED, PM_SCAN_CHECK_WPASYNC};
use crate::sys::pidfd::PidFd;
use crate::{probe, Error, Result};
use marker::{fd_base, marker_name, read_generation, scan_fds, write_generation};

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

/// The flags of the uffd made in the target: close-on-exec (an exec replaces the
/// memory anyway), non-blocking (nobody in the target ever reads it).
const TARGET_UFFD_FLAGS: libc::c_int = libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY;
/// Regions asked of the kernel per PAGEMAP_SCAN call.
const SCAN_VEC_LEN: usize = 4096;

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
    /// `always_dirty`.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{push_merged, PageRange};

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
    fn names() {
        assert_eq!(Backend::SoftDirty.name(), "soft-dirty");
        assert_eq!(Backend::UffdWp.name(), "uffd-wp");
        assert_eq!(Backend::None.name(), "none");
    }
}
