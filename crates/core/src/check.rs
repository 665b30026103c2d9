//! `predump check`: which of the kernel features predump relies on work on this
//! machine.
//!
//! Every feature is tried for real, because none can be read from a version
//! number: distributions backport, configurations differ (soft-dirty is a build
//! option the kernel does not advertise: `clear_refs` accepts `4` either way), and
//! seccomp or Yama can refuse what the kernel has. The probes touch only memory of
//! this process or of a short-lived child forked here, never another process, and
//! put everything back: mappings unmapped, fds closed, the child killed and reaped.
//!
//! A feature that is missing or refused is a result (`supported: false`, with the
//! reason in words), not an error: only a failure of the probing itself (no memory
//! for a test mapping, no pipe, no fork) is an `Error`.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt};

use nix::errno::Errno;
use nix::fcntl::{vmsplice, OFlag, SpliceFFlags};
use nix::sys::ptrace;
use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::{pipe2, Pid};

use crate::anon::AnonMap;
use crate::inject::PidFd;
use crate::scan::{PAGE_IS_PRESENT, PAGE_IS_SWAPPED, PAGE_IS_WRITTEN};
use crate::{proc, Error, Result, PAGE_SIZE};

/// Capability names, as reported (and as JavaScript tests them).
pub const PROCESS_VM_READV: &str = "process_vm_readv";
pub const PTRACE: &str = "ptrace";
pub const PAGEMAP_SCAN: &str = "PAGEMAP_SCAN";
pub const SOFT_DIRTY: &str = "soft-dirty";
pub const UFFD_WP: &str = "uffd-wp";
pub const PIDFD_GETFD: &str = "pidfd_getfd";
pub const GIFT_VMSPLICE: &str = "vmsplice-gift";

/// One feature, and why it does or does not work here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    pub name: &'static str,
    pub supported: bool,
    pub detail: String,
}

/// The dirty-tracking backend `--track-mem auto` chooses (defined with the
/// tracker itself; the old name is kept for the binding).
pub use crate::track::Backend as TrackBackend;

/// Everything `predump check` found.
#[derive(Debug, Clone)]
pub struct Report {
    /// uname's release, e.g. "6.18.44".
    pub kernel: String,
    /// uname's machine, e.g. "x86_64".
    pub arch: String,
    pub root: bool,
    pub cap_sys_ptrace: bool,
    /// Pipes above pipe-max-size need it (the 4 MiB drain pipe).
    pub cap_sys_resource: bool,
    /// /proc/sys/kernel/yama/ptrace_scope; None without Yama.
    pub ptrace_scope: Option<u32>,
    /// /proc/sys/fs/pipe-max-size in bytes.
    pub pipe_max_size: Option<u64>,
    /// In a fixed order: process_vm_readv, ptrace, pidfd_getfd, PAGEMAP_SCAN,
    /// soft-dirty, uffd-wp, vmsplice-gift.
    pub capabilities: Vec<Capability>,
    pub track_mem_auto: TrackBackend,
    /// read mode needs ptrace (freeze) and process_vm_readv (copy).
    pub read_mode: bool,
    /// splice mode also needs pidfd_getfd (take the pipes made in the target) and
    /// GIFT vmsplice (run inside the target).
    pub splice_mode: bool,
}

impl Report {
    /// Whether the capability `name` works (false for an unknown name).
    pub fn supported(&self, name: &str) -> bool {
        self.capabilities
            .iter()
            .any(|c| c.name == name && c.supported)
    }
}

/// Probes every capability. Runs on the calling thread: the ptrace probe's
/// requests must all come from one thread.
pub fn check() -> Result<Report> {
    let (kernel, arch) = uname()?;
    let cap_eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_cap_eff(&s))
        .unwrap_or(0);
    let ptrace_scope = read_number("/proc/sys/kernel/yama/ptrace_scope").map(|n| n as u32);
    let pipe_max_size = read_number("/proc/sys/fs/pipe-max-size");

    let mut capabilities = probe_with_child(ptrace_scope)?;
    capabilities.push(capability(PAGEMAP_SCAN, probe_pagemap_scan()?));
    capabilities.push(capability(SOFT_DIRTY, probe_soft_dirty()?));
    capabilities.push(capability(UFFD_WP, probe_uffd_wp()?));
    capabilities.push(capability(GIFT_VMSPLICE, probe_gift_vmsplice()?));

    let mut report = Report {
        kernel,
        arch,
        // SAFETY: geteuid has no arguments and cannot fail.
        root: unsafe { libc::geteuid() } == 0,
        cap_sys_ptrace: cap_eff & (1 << CAP_SYS_PTRACE) != 0,
        cap_sys_resource: cap_eff & (1 << CAP_SYS_RESOURCE) != 0,
        ptrace_scope,
        pipe_max_size,
        capabilities,
        track_mem_auto: TrackBackend::None,
        read_mode: false,
        splice_mode: false,
    };
    report.track_mem_auto = auto_backend(report.supported(SOFT_DIRTY), report.supported(UFFD_WP));
    (report.read_mode, report.splice_mode) = modes(
        report.supported(PTRACE),
        report.supported(PROCESS_VM_READV),
        report.supported(PIDFD_GETFD),
        report.supported(GIFT_VMSPLICE),
    );
    Ok(report)
}

// ---- decisions (no I/O) ---------------------------------------------------------------------

/// soft-dirty first: it needs nothing injected into the target; uffd-wp next.
pub fn auto_backend(soft_dirty: bool, uffd_wp: bool) -> TrackBackend {
    if soft_dirty {
        TrackBackend::SoftDirty
    } else if uffd_wp {
        TrackBackend::UffdWp
    } else {
        TrackBackend::None
    }
}

/// (read mode works, splice mode works).
pub fn modes(ptrace: bool, readv: bool, getfd: bool, gift: bool) -> (bool, bool) {
    (ptrace && readv, ptrace && getfd && gift)
}

/// include/uapi/linux/capability.h
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_RESOURCE: u32 = 24;

/// The effective capability set of a /proc/PID/status text.
fn parse_cap_eff(status: &str) -> Option<u64> {
    u64::from_str_radix(proc::parse_status_field(status, "CapEff")?, 16).ok()
}

/// pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const PM_PRESENT: u64 = 1 << 63;
const PM_SOFT_DIRTY: u64 = 1 << 55;

/// The soft-dirty verdict from the test page's pagemap entries right after
/// `clear_refs 4` and after writing the page again.
fn soft_dirty_verdict(after_clear: u64, after_write: u64) -> Probe {
    if after_clear & PM_PRESENT == 0 || after_write & PM_PRESENT == 0 {
        no("the written test page is not present in /proc/self/pagemap (bit 63): cannot tell")
    } else if after_clear & PM_SOFT_DIRTY != 0 {
        no("bit 55 is still set right after clear_refs 4: the kernel does not clear soft-dirty bits")
    } else if after_write & PM_SOFT_DIRTY == 0 {
        no(
            "clear_refs 4 accepted but bit 55 never set by a write: CONFIG_MEM_SOFT_DIRTY is off \
            (x86_64, ppc64 and s390 kernels may have it, arm64 never)",
        )
    } else {
        yes("clear_refs 4 cleared pagemap bit 55 of a test page and a write set it again")
    }
}

/// The page numbers (from `base`) that PAGEMAP_SCAN's regions cover.
fn region_pages(regions: &[PageRegion], base: u64) -> Vec<u64> {
    regions
        .iter()
        .flat_map(|r| {
            (r.start.saturating_sub(base) / PAGE_SIZE)..(r.end.saturating_sub(base) / PAGE_SIZE)
        })
        .collect()
}

/// None when PAGEMAP_SCAN reported exactly `want`, else what went wrong, in words.
fn mismatch(what: &str, got: &[u64], want: &[u64]) -> Option<String> {
    (got != want)
        .then(|| format!("{what} reported pages {got:?} of the test mapping, not {want:?}"))
}

/// "EPERM: Operation not permitted" for an I/O error of a system call.
fn errno_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => Errno::from_raw(n).to_string(),
        None => e.to_string(),
    }
}

// ---- probes ---------------------------------------------------------------------------------

/// A probe's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Probe {
    supported: bool,
    detail: String,
}

fn yes(detail: impl Into<String>) -> Probe {
    Probe {
        supported: true,
        detail: detail.into(),
    }
}

fn no(detail: impl Into<String>) -> Probe {
    Probe {
        supported: false,
        detail: detail.into(),
    }
}

fn capability(name: &'static str, p: Probe) -> Capability {
    Capability {
        name,
        supported: p.supported,
        detail: p.detail,
    }
}

/// A byte of the test page: position-dependent, so a shifted or partial copy shows.
fn pattern(i: usize, seed: u8) -> u8 {
    (i as u8).wrapping_mul(31) ^ seed
}

const CHILD_SEED: u8 = 0x5a;

/// process_vm_readv, pidfd_getfd and ptrace, on one forked child: with a child,
/// the permission checks are the real ones (PTRACE_MODE_ATTACH_REALCREDS),
/// which a process passes trivially on itself.
fn probe_with_child(ptrace_scope: Option<u32>) -> Result<Vec<Capability>> {
    let mut area = AnonMap::pages(1, "a probe mapping")?;
    for (i, b) in area.as_mut_slice().iter_mut().enumerate() {
        *b = pattern(i, CHILD_SEED);
    }
    let child = Child::spawn()?;
    // From here our copy differs from the child's: reading ours by mistake shows.
    area.as_mut_slice().fill(0);
    let readv = probe_process_vm_readv(&child, &area);
    let getfd = probe_pidfd_getfd(&child)?;
    let ptrace = probe_ptrace(&child, ptrace_scope)?;
    drop(child);
    Ok(vec![
        capability(PROCESS_VM_READV, readv),
        capability(PTRACE, ptrace),
        capability(PIDFD_GETFD, getfd),
    ])
}

fn probe_process_vm_readv(child: &Child, area: &AnonMap) -> Probe {
    let len = area.len();
    let mut buf = vec![0u8; len];
    let remote = [RemoteIoVec {
        base: area.addr() as usize,
        len,
    }];
    match process_vm_readv(child.pid(), &mut [IoSliceMut::new(&mut buf)], &remote) {
        Ok(n) if n != len => no(format!(
            "process_vm_readv read {n} bytes of a forked child's page, not {len}"
        )),
        Ok(_)
            if buf
                .iter()
                .enumerate()
                .any(|(i, &b)| b != pattern(i, CHILD_SEED)) =>
        {
            no("process_vm_readv returned bytes that differ from the forked child's page")
        }
        Ok(_) => yes("read a page of a forked child, byte for byte"),
        Err(e) => no(format!(
            "process_vm_readv of a forked child failed: {e}{}",
            match e {
                Errno::EPERM | Errno::EACCES => {
                    " (it needs ptrace rights on the process: root, or its owner where Yama allows)"
                }
                Errno::ENOSYS =>
                    " (kernel without CONFIG_CROSS_MEMORY_ATTACH, or a seccomp filter)",
                _ => "",
            }
        )),
    }
}

fn probe_pidfd_getfd(child: &Child) -> Result<Probe> {
    let pidfd = match PidFd::open(child.pid().as_raw()) {
        Ok(p) => p,
        Err(e) => return Ok(no(format!("{e} (pidfd_open needs Linux 5.3)"))),
    };
    let taken = match pidfd.get_fd(child.fd()) {
        Ok(fd) => File::from(fd),
        Err(e) => {
            return Ok(no(format!(
                "{e} (pidfd_getfd needs Linux 5.6 and ptrace rights on the process)"
            )))
        }
    };
    // The copy must be the child's fd: the pipe we made before forking.
    let ours = File::from(
        child
            .read_end
            .try_clone()
            .map_err(|e| Error::sys("dup of the test pipe", e))?,
    );
    let (a, b) = (
        taken.metadata().map_err(|e| Error::sys("fstat", e))?,
        ours.metadata().map_err(|e| Error::sys("fstat", e))?,
    );
    Ok(if (a.dev(), a.ino()) == (b.dev(), b.ino()) {
        yes("took a file descriptor of a forked child with pidfd_open + pidfd_getfd")
    } else {
        no("pidfd_getfd returned a file other than the forked child's fd")
    })
}

/// `PTRACE_EVENT_STOP` (include/uapi/linux/ptrace.h).
const PTRACE_EVENT_STOP: i32 = 128;

fn probe_ptrace(child: &Child, ptrace_scope: Option<u32>) -> Result<Probe> {
    let pid = child.pid();
    if let Err(e) = ptrace::seize(pid, ptrace::Options::empty()) {
        let why = match (e, ptrace_scope) {
            (Errno::EPERM, Some(3)) => " (Yama ptrace_scope 3: ptrace is off until reboot)",
            (Errno::EPERM, Some(2)) => " (Yama ptrace_scope 2: only CAP_SYS_PTRACE may trace)",
            (Errno::EPERM, _) => " (a seccomp filter or a security module refuses ptrace)",
            (Errno::ENOSYS, _) => " (a seccomp filter blocks ptrace)",
            _ => "",
        };
        return Ok(no(format!(
            "PTRACE_SEIZE of a forked child failed: {e}{why}"
        )));
    }
    // Seized: from here a failure leaves the child traced, which its kill and
    // reap at drop end cleanly (SIGKILL works on a tracee; we are its tracer).
    if let Err(e) = ptrace::interrupt(pid) {
        return Ok(no(format!(
            "PTRACE_INTERRUPT of a seized child failed: {e}"
        )));
    }
    let status = loop {
        let mut status = 0;
        // SAFETY: waits for our own child only; `status` is a valid out pointer.
        let r = unsafe { libc::waitpid(pid.as_raw(), &mut status, libc::__WALL) };
        if r == pid.as_raw() {
            break status;
        }
        match Errno::last() {
            Errno::EINTR => continue,
            e => return Err(Error::sys("waitpid of the ptrace test child", e)),
        }
    };
    if !libc::WIFSTOPPED(status) {
        return Ok(no(format!(
            "the seized child did not stop at PTRACE_INTERRUPT (wait status {status:#x})"
        )));
    }
    let stop = if status >> 16 == PTRACE_EVENT_STOP {
        0
    } else {
        libc::WSTOPSIG(status) // a signal caught first: hand it back
    };
    // SAFETY: PTRACE_DETACH takes a pid and a signal number, no pointer.
    if unsafe { libc::ptrace(libc::PTRACE_DETACH, pid.as_raw(), 0, stop as libc::c_long) } == -1 {
        return Ok(no(format!("PTRACE_DETACH failed: {}", Errno::last())));
    }
    Ok(match proc::tracer_pid(pid.as_raw(), pid.as_raw()) {
        Ok(0) => yes("PTRACE_SEIZE, PTRACE_INTERRUPT and PTRACE_DETACH of a forked child: it stopped and ran on"),
        Ok(t) => no(format!("the child is still traced by {t} after PTRACE_DETACH")),
        Err(e) => no(format!("after PTRACE_DETACH: {e}")),
    })
}

/// PAGEMAP_SCAN on our own pagemap must report exactly the pages we wrote.
fn probe_pagemap_scan() -> Result<Probe> {
    let area = AnonMap::pages(4, "a probe mapping")?;
    area.touch(1, 1);
    area.touch(2, 1);
    let pagemap = match File::open("/proc/self/pagemap") {
        Ok(f) => f,
        Err(e) => {
            return Ok(no(format!(
                "cannot open /proc/self/pagemap: {}",
                errno_text(&e)
            )))
        }
    };
    let mut scan = PmScan::new(&pagemap);
    let regions = match scan.call(
        area.addr(),
        area.end(),
        0,
        0,
        PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
    ) {
        Ok(r) => r,
        Err(e) if e.raw_os_error() == Some(libc::ENOTTY) => {
            return Ok(no(
                "the PAGEMAP_SCAN ioctl is absent (ENOTTY): Linux < 6.7; predump reads /proc/PID/pagemap instead",
            ))
        }
        Err(e) => return Ok(no(format!("PAGEMAP_SCAN failed: {}", errno_text(&e)))),
    };
    Ok(
        match mismatch(
            "PAGEMAP_SCAN",
            &region_pages(&regions, area.addr()),
            &[1, 2],
        ) {
            Some(m) => no(m),
            None => yes("the ioctl on /proc/self/pagemap found exactly the 2 written pages of 4"),
        },
    )
}

/// Write a page, `clear_refs 4`, bit 55 must be clear; write again, bit 55 must
/// be set. Only that shows soft-dirty: kernels without it accept `4` silently.
///
/// Other threads of this process (Node's, or a concurrent probe) must not be
/// able to fake a "no": the test page lies between guard pages, so that no mmap
/// of theirs can merge with its VMA (a new or grown VMA reads as soft-dirty as a
/// whole: VM_SOFTDIRTY, "still set right after the clear"); and a clear_refs of
/// theirs between our write and our read ("never set by a write") is met by
/// trying again, which only a kernel that showed bit 55 on our first write gets.
fn probe_soft_dirty() -> Result<Probe> {
    let area = guarded_page()?;
    let page = area.addr() + PAGE_SIZE;
    let pagemap = match File::open("/proc/self/pagemap") {
        Ok(f) => f,
        Err(e) => {
            return Ok(no(format!(
                "cannot open /proc/self/pagemap: {}",
                errno_text(&e)
            )))
        }
    };
    let mut verdict = None;
    for _ in 0..3 {
        area.touch(1, 1);
        let written = pagemap_entry(&pagemap, page)?;
        if let Err(e) = clear_soft_dirty() {
            return Ok(no(format!(
                "writing 4 to /proc/self/clear_refs failed: {}",
                errno_text(&e)
            )));
        }
        let after_clear = pagemap_entry(&pagemap, page)?;
        area.touch(1, 2);
        let after_write = pagemap_entry(&pagemap, page)?;
        let v = soft_dirty_verdict(after_clear, after_write);
        if v.supported || written & PM_SOFT_DIRTY == 0 {
            return Ok(v);
        }
        verdict = Some(v);
    }
    Ok(verdict.expect("3 attempts"))
}

/// Three pages: the middle one read-write (page 1 of the map), the others
/// PROT_NONE guards. The middle VMA then has no read-write neighbour that an
/// mmap could extend into it.
fn guarded_page() -> Result<AnonMap> {
    let area = AnonMap::pages(3, "a probe mapping")?;
    for guard in [area.addr(), area.end() - PAGE_SIZE] {
        // SAFETY: mprotect of a page of our own mapping, which no Rust reference
        // covers; nothing of ours touches the guard pages.
        if unsafe { libc::mprotect(guard as *mut libc::c_void, PAGE_SIZE as usize, 0) } < 0 {
            return Err(Error::sys(
                "mprotect of a probe guard page",
                io::Error::last_os_error(),
            ));
        }
    }
    Ok(area)
}

/// Whether soft-dirty tracking works here (the real probe of `check`).
pub(crate) fn soft_dirty_works() -> bool {
    probe_soft_dirty().is_ok_and(|p| p.supported)
}

/// Whether uffd-wp async tracking works here (the real probe of `check`).
pub(crate) fn uffd_wp_works() -> bool {
    probe_uffd_wp().is_ok_and(|p| p.supported)
}

/// Clears the soft-dirty bits of our whole process (harmless: nothing of ours
/// tracks them; without CONFIG_MEM_SOFT_DIRTY it does nothing at all).
fn clear_soft_dirty() -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .open("/proc/self/clear_refs")?
        .write_all(b"4")
}

fn pagemap_entry(pagemap: &File, addr: u64) -> Result<u64> {
    let mut entry = [0u8; 8];
    pagemap
        .read_exact_at(&mut entry, addr / PAGE_SIZE * 8)
        .map_err(|e| Error::sys("reading /proc/self/pagemap", e))?;
    Ok(u64::from_ne_bytes(entry))
}

// The userfaultfd ABI (structs, ioctl numbers, features) lives with the tracker,
// which uses it on targets; the probes use it on our own memory.
use crate::track::uffd::{
    uffdio_api, UffdioRegister, UFFDIO_REGISTER, UFFDIO_REGISTER_MODE_WP, UFFD_FEATURE_WP_ASYNC,
    UFFD_FEATURE_WP_UNPOPULATED, UFFD_USER_MODE_ONLY,
};

/// `_IO(0xAA, 0x00)` on /dev/userfaultfd.
const USERFAULTFD_IOC_NEW: libc::c_ulong = 0xaa << 8;

/// A new userfaultfd: the system call, or /dev/userfaultfd where the system call
/// is refused (vm.unprivileged_userfaultfd = 0 and no CAP_SYS_PTRACE).
fn open_userfaultfd() -> std::result::Result<OwnedFd, String> {
    let flags = libc::O_CLOEXEC | UFFD_USER_MODE_ONLY;
    // SAFETY: userfaultfd takes one integer and returns a new fd or -1.
    let r = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if r >= 0 {
        // SAFETY: the kernel just returned this fd to us; nothing else owns it.
        return Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) });
    }
    let syscall_err = errno_text(&io::Error::last_os_error());
    let dev = File::options()
        .read(true)
        .write(true)
        .open("/dev/userfaultfd")
        .map_err(|e| {
            format!(
                "userfaultfd(): {syscall_err}; /dev/userfaultfd: {}",
                errno_text(&e)
            )
        })?;
    // SAFETY: USERFAULTFD_IOC_NEW takes the new fd's flags as an integer and
    // returns a new fd or -1; `dev` is open for the whole call.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW, flags) };
    if r < 0 {
        let e = errno_text(&io::Error::last_os_error());
        return Err(format!(
            "userfaultfd(): {syscall_err}; /dev/userfaultfd: {e}"
        ));
    }
    // SAFETY: as above, a fresh fd that we alone own.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// The features a fresh userfaultfd offers (UFFDIO_API works once per fd).
fn offered_uffd_features() -> Option<u64> {
    uffdio_api(&open_userfaultfd().ok()?, 0).ok()
}

/// uffd-wp in async mode, the way predump tracks a target: register a mapping for
/// write-protection, arm it with one PAGEMAP_SCAN WP_MATCHING, write some pages,
/// and the next PAGEMAP_SCAN must report exactly those (and re-arm them).
fn probe_uffd_wp() -> Result<Probe> {
    const PAGES: usize = 8;
    // Populated pages 0..4 before registering; 4..8 never touched, so the arming
    // must protect unpopulated pages too (WP_UNPOPULATED).
    let area = AnonMap::pages(PAGES, "a probe mapping")?;
    for i in 0..4 {
        area.touch(i, 1);
    }
    let uffd = match open_userfaultfd() {
        Ok(fd) => fd,
        Err(e) => return Ok(no(format!("no userfaultfd: {e}"))),
    };
    let wanted = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
    if let Err(e) = uffdio_api(&uffd, wanted) {
        let offered = match offered_uffd_features() {
            Some(f) => format!(
                "; this kernel offers features {f:#x}: WP_ASYNC {}, WP_UNPOPULATED {}",
                if f & UFFD_FEATURE_WP_ASYNC != 0 {
                    "yes"
                } else {
                    "no"
                },
                if f & UFFD_FEATURE_WP_UNPOPULATED != 0 {
                    "yes"
                } else {
                    "no"
                },
            ),
            None => String::new(),
        };
        return Ok(no(format!(
            "UFFDIO_API with UFFD_FEATURE_WP_ASYNC|WP_UNPOPULATED failed: {}{offered} (Linux >= 6.7 with CONFIG_PTE_MARKER_UFFD_WP)",
            errno_text(&e)
        )));
    }
    let mut reg = UffdioRegister {
        start: area.addr(),
        len: area.len() as u64,
        mode: UFFDIO_REGISTER_MODE_WP,
        ioctls: 0,
    };
    // SAFETY: `reg` is a properly sized uffdio_register the kernel reads and writes
    // during the call only; the range is our own mapping, alive until after `uffd`
    // is closed (which unregisters it).
    if unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            UFFDIO_REGISTER,
            &mut reg as *mut UffdioRegister,
        )
    } < 0
    {
        let e = io::Error::last_os_error();
        return Ok(no(format!(
            "UFFDIO_REGISTER with UFFDIO_REGISTER_MODE_WP on an anonymous mapping failed: {}",
            errno_text(&e)
        )));
    }
    // Async mode is on (UFFDIO_API accepted WP_ASYNC): writes to protected pages
    // are resolved by the kernel, never by us, so touching them cannot block.
    let pagemap = match File::open("/proc/self/pagemap") {
        Ok(f) => f,
        Err(e) => {
            return Ok(no(format!(
                "cannot open /proc/self/pagemap: {}",
                errno_text(&e)
            )))
        }
    };
    let mut scan = PmScan::new(&pagemap);
    let mut written = |what: &str| -> std::result::Result<Vec<u64>, String> {
        scan.call(
            area.addr(),
            area.end(),
            PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
            PAGE_IS_WRITTEN,
            0,
        )
        .map(|r| region_pages(&r, area.addr()))
        .map_err(|e| {
            format!(
                "PAGEMAP_SCAN with PM_SCAN_WP_MATCHING|PM_SCAN_CHECK_WPASYNC ({what}) failed: {}",
                errno_text(&e)
            )
        })
    };
    let verdict = (|| {
        // Nothing was protected yet: the pages written before must be reported.
        // Unpopulated ones may be too (Linux 6.18 counts them as written), which
        // costs a first pre-dump nothing: it copies every present page anyway.
        let armed = written("arming")?;
        if ![0, 1, 2, 3].iter().all(|p| armed.contains(p)) {
            return Err(format!(
                "the arming scan reported pages {armed:?} of the test mapping, without all of the written [0, 1, 2, 3]"
            ));
        }
        area.touch(2, 2); // a populated page
        area.touch(5, 2); // a page unpopulated when armed
        if let Some(m) = mismatch(
            "the scan after writing pages 2 and 5",
            &written("dirty pages")?,
            &[2, 5],
        ) {
            return Err(m);
        }
        if let Some(m) = mismatch("a scan after re-arming", &written("re-armed")?, &[]) {
            return Err(m);
        }
        Ok(())
    })();
    drop(uffd); // unregisters the mapping before it is unmapped
    Ok(match verdict {
        Ok(()) => yes(
            "UFFDIO_API WP_ASYNC|WP_UNPOPULATED, UFFDIO_REGISTER MODE_WP, and PAGEMAP_SCAN \
             WP_MATCHING saw exactly the 2 pages written since arming, then none",
        ),
        Err(why) => no(why),
    })
}

/// vmsplice(SPLICE_F_GIFT) of a page of ours into a pipe, read back intact.
fn probe_gift_vmsplice() -> Result<Probe> {
    const SEED: u8 = 0xa5;
    let mut area = AnonMap::pages(1, "a probe mapping")?;
    for (i, b) in area.as_mut_slice().iter_mut().enumerate() {
        *b = pattern(i, SEED);
    }
    let (r, w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
    let len = area.len();
    // SAFETY: the page is whole and page-aligned (as GIFT wants) and is not
    // written again before the pipe's copy has been read out below; the pipe holds
    // its own page reference, so unmapping later is safe either way.
    let n = match unsafe {
        vmsplice(
            &w,
            &[io::IoSlice::new(area.as_slice())],
            SpliceFFlags::SPLICE_F_GIFT,
        )
    } {
        Ok(n) => n,
        Err(e) => {
            let why = match e {
                Errno::EOPNOTSUPP | Errno::EINVAL => {
                    " (this kernel no longer takes gifts: splice mode falls back to read mode)"
                }
                Errno::EPERM | Errno::ENOSYS => {
                    " (a seccomp profile forbids vmsplice: splice mode falls back to read mode)"
                }
                _ => "",
            };
            return Ok(no(format!(
                "vmsplice with SPLICE_F_GIFT into a pipe failed: {e}{why}"
            )));
        }
    };
    if n != len {
        return Ok(no(format!(
            "vmsplice with SPLICE_F_GIFT took {n} bytes of {len}"
        )));
    }
    drop(w);
    let mut back = vec![0u8; len];
    File::from(r)
        .read_exact(&mut back)
        .map_err(|e| Error::sys("reading the vmsplice test pipe", e))?;
    Ok(
        if back.iter().enumerate().all(|(i, &b)| b == pattern(i, SEED)) {
            yes("vmsplice(SPLICE_F_GIFT) moved a page of ours into a pipe intact")
        } else {
            no("the page read back from the pipe differs from the one given")
        },
    )
}

// ---- PAGEMAP_SCAN ------------------------------------------------------------------------------

use crate::scan::{PageRegion, PmScanArg, PM_SCAN_CHECK_WPASYNC, PM_SCAN_WP_MATCHING};

/// One PAGEMAP_SCAN caller over small test ranges (a vector of 16 regions is
/// more than the probes' 8 pages can need).
struct PmScan<'a> {
    pagemap: &'a File,
    vec: [PageRegion; 16],
}

impl<'a> PmScan<'a> {
    fn new(pagemap: &'a File) -> Self {
        PmScan {
            pagemap,
            vec: [PageRegion::default(); 16],
        }
    }

    /// The regions of [start, end) whose categories match `mask` (all of) and
    /// `anyof` (one of, when not 0); every category is returned.
    fn call(
        &mut self,
        start: u64,
        end: u64,
        flags: u64,
        mask: u64,
        anyof: u64,
    ) -> io::Result<Vec<PageRegion>> {
        let query = PmScanArg {
            flags,
            start,
            end,
            category_mask: mask,
            category_anyof_mask: anyof,
            return_mask: mask | anyof,
            ..Default::default()
        };
        let (n, _) = crate::scan::pagemap_scan(self.pagemap, query, &mut self.vec)?;
        Ok(self.vec[..n].to_vec())
    }
}

// ---- resources that clean up after themselves ------------------------------------------------

/// A child forked for the probes. It blocks reading a pipe, so it stays put
/// while we read its memory, take its fd and ptrace it; it exits by itself at EOF
/// if we die. Nobody else waits for it (Node's libuv waits for its own children
/// by pid), so its ptrace stops are ours. Dropping it kills and reaps it.
struct Child {
    pid: Pid,
    read_end: OwnedFd,
    /// Held open until the child is dead, so that it does not see EOF early.
    _write_end: OwnedFd,
}

impl Child {
    fn spawn() -> Result<Child> {
        let (r, w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
        let (rfd, wfd) = (r.as_raw_fd(), w.as_raw_fd());
        // SAFETY: fork in a multi-threaded process: the child runs `child_main`
        // only, which makes async-signal-safe system calls and takes no lock,
        // allocates nothing, and never returns into Rust code.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            child_main(rfd, wfd);
        }
        if pid < 0 {
            return Err(Error::sys(
                "fork of a test child",
                io::Error::last_os_error(),
            ));
        }
        Ok(Child {
            pid: Pid::from_raw(pid),
            read_end: r,
            _write_end: w,
        })
    }

    fn pid(&self) -> Pid {
        self.pid
    }

    /// The child's fd of the pipe's read end (fork keeps fd numbers).
    fn fd(&self) -> RawFd {
        self.read_end.as_raw_fd()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // Unreaped, the pid cannot name another process: killing by pid is safe.
        // SAFETY: kill and waitpid take integers and a valid out pointer.
        unsafe {
            libc::kill(self.pid.as_raw(), libc::SIGKILL);
            let mut status = 0;
            while libc::waitpid(self.pid.as_raw(), &mut status, libc::__WALL) == -1
                && Errno::last() == Errno::EINTR
            {}
        }
    }
}

/// The forked child: closes every fd but the pipe's read end (so it holds no one
/// else's pipe open), blocks reading it, and exits at EOF or on any error.
fn child_main(read_fd: RawFd, write_fd: RawFd) -> ! {
    // SAFETY: only async-signal-safe system calls on integers and a local byte;
    // `_exit` ends the process without running any Rust code of the parent's copy.
    unsafe {
        libc::close(write_fd);
        if read_fd > 0 {
            libc::syscall(libc::SYS_close_range, 0u32, (read_fd - 1) as u32, 0u32);
        }
        libc::syscall(libc::SYS_close_range, (read_fd + 1) as u32, u32::MAX, 0u32);
        let mut byte = 0u8;
        while libc::read(read_fd, (&mut byte as *mut u8).cast(), 1) == -1
            && *libc::__errno_location() == libc::EINTR
        {}
        libc::_exit(0)
    }
}

// ---- small readers ---------------------------------------------------------------------------

/// (release, machine) of uname.
fn uname() -> Result<(String, String)> {
    // SAFETY: utsname is arrays of c_char, for which all zeroes is a valid value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname fills the struct it is given, NUL-terminating every field.
    if unsafe { libc::uname(&mut u) } != 0 {
        return Err(Error::sys("uname", io::Error::last_os_error()));
    }
    let text = |field: &[libc::c_char]| {
        let bytes: Vec<u8> = field
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Ok((text(&u.release), text(&u.machine)))
}

/// A number of a /proc/sys file; None when the file is absent or odd.
fn read_number(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_dirty_verdicts() {
        let p = PM_PRESENT;
        let sd = PM_SOFT_DIRTY;
        assert!(soft_dirty_verdict(p, p | sd).supported);
        let off = soft_dirty_verdict(p, p);
        assert!(!off.supported);
        assert!(off.detail.contains("bit 55") && off.detail.contains("CONFIG_MEM_SOFT_DIRTY"));
        assert!(!soft_dirty_verdict(p | sd, p | sd).supported);
        assert!(soft_dirty_verdict(0, p | sd).detail.contains("not present"));
    }

    #[test]
    fn decisions() {
        assert_eq!(auto_backend(true, true), TrackBackend::SoftDirty);
        assert_eq!(auto_backend(false, true), TrackBackend::UffdWp);
        assert_eq!(auto_backend(false, false), TrackBackend::None);
        assert_eq!(modes(true, true, true, true), (true, true));
        assert_eq!(modes(true, true, true, false), (true, false));
        assert_eq!(modes(false, true, true, true), (false, false));
        assert_eq!(modes(true, false, true, true), (false, true));
    }

    #[test]
    fn parsing() {
        let status = "Name:\tnode\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\n";
        let eff = parse_cap_eff(status).unwrap();
        assert!(eff & (1 << CAP_SYS_PTRACE) != 0);
        assert_eq!(parse_cap_eff("CapEff:\t0000000000000000\n"), Some(0));
        assert_eq!(parse_cap_eff("Name:\tx\n"), None);
        let base = 0x10000;
        let regions = [
            PageRegion {
                start: base + 0x1000,
                end: base + 0x3000,
                categories: 0,
            },
            PageRegion {
                start: base + 0x5000,
                end: base + 0x6000,
                categories: 0,
            },
        ];
        assert_eq!(region_pages(&regions, base), vec![1, 2, 5]);
        assert_eq!(mismatch("x", &[1], &[1]), None);
        assert!(mismatch("x", &[1], &[2]).unwrap().contains("[1]"));
    }

    /// The tests that clear our soft-dirty bits run one at a time: a clear of
    /// one between the write and the read of the other would fail it.
    static CLEARS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// The probe's soft-dirty answer agrees with a direct look at our pagemap.
    #[test]
    fn soft_dirty_probe_matches_pagemap() {
        let _one = CLEARS.lock().unwrap_or_else(|e| e.into_inner());
        let probe = probe_soft_dirty().unwrap();
        let area = guarded_page().unwrap();
        area.touch(1, 1);
        clear_soft_dirty().unwrap();
        area.touch(1, 2);
        let pagemap = File::open("/proc/self/pagemap").unwrap();
        let entry = pagemap_entry(&pagemap, area.addr() + PAGE_SIZE).unwrap();
        assert!(entry & PM_PRESENT != 0);
        assert_eq!(
            probe.supported,
            entry & PM_SOFT_DIRTY != 0,
            "{}",
            probe.detail
        );
    }

    /// Another thread mapping and unmapping memory all the time (as Node's do)
    /// cannot change the probe's answer: 100 probes meanwhile, all alike.
    #[test]
    fn soft_dirty_probe_ignores_other_threads_mappings() {
        let _one = CLEARS.lock().unwrap_or_else(|e| e.into_inner());
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        static STOP: AtomicBool = AtomicBool::new(false);
        static MAPS: AtomicU64 = AtomicU64::new(0);
        let mapper = std::thread::spawn(|| {
            while !STOP.load(Ordering::Relaxed) {
                let m = AnonMap::pages(1, "a test mapping").unwrap();
                m.touch(0, 1);
                MAPS.fetch_add(1, Ordering::Relaxed);
            }
        });
        while MAPS.load(Ordering::Relaxed) == 0 {
            std::thread::yield_now();
        }
        let answers: Vec<bool> = (0..100)
            .map(|_| probe_soft_dirty().unwrap().supported)
            .collect();
        STOP.store(true, Ordering::Relaxed);
        mapper.join().unwrap();
        let maps = MAPS.load(Ordering::Relaxed);
        let yes = answers.iter().filter(|&&a| a).count();
        eprintln!("soft-dirty probes: {yes} of 100 yes, {maps} mappings made meanwhile");
        assert!(yes == 0 || yes == 100, "{yes} of 100 probes said yes");
    }

    /// The whole report: every capability once, with a reason, nothing left open.
    #[test]
    fn report_is_complete_and_cleans_up() {
        let r = {
            let _one = CLEARS.lock().unwrap_or_else(|e| e.into_inner());
            check().unwrap()
        };
        let names: Vec<&str> = r.capabilities.iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                PROCESS_VM_READV,
                PTRACE,
                PIDFD_GETFD,
                PAGEMAP_SCAN,
                SOFT_DIRTY,
                UFFD_WP,
                GIFT_VMSPLICE
            ]
        );
        assert!(r.capabilities.iter().all(|c| !c.detail.is_empty()));
        assert!(!r.kernel.is_empty() && !r.arch.is_empty());
        // The development machines (DESIGN.md) and the kernel matrix's 6.1: as
        // root, all of these work.
        if r.root {
            for name in [PROCESS_VM_READV, PTRACE, PIDFD_GETFD] {
                assert!(r.supported(name), "{name}: {:?}", r.capabilities);
            }
            assert!(r.read_mode);
        }
        // PAGEMAP_SCAN works (6.7+) or is absent (6.1: ENOTTY), never broken.
        let scan = r
            .capabilities
            .iter()
            .find(|c| c.name == PAGEMAP_SCAN)
            .unwrap();
        assert!(scan.supported || scan.detail.contains("ENOTTY"), "{scan:?}");
        assert_eq!(
            r.track_mem_auto,
            auto_backend(r.supported(SOFT_DIRTY), r.supported(UFFD_WP))
        );
        // No other test of this crate makes a userfaultfd: any left is the probe's.
        for fd in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            let link = std::fs::read_link(fd.path()).unwrap_or_default();
            assert!(
                !link.to_string_lossy().contains("userfaultfd"),
                "{link:?} left open"
            );
        }
    }

    /// A dropped test child is dead and reaped: its pid names no process.
    #[test]
    fn child_is_killed_and_reaped() {
        let child = Child::spawn().unwrap();
        let pid = child.pid().as_raw();
        assert_eq!(proc::tracer_pid(pid, pid).unwrap(), 0);
        drop(child);
        // SAFETY: signal 0 only checks that the pid exists.
        let r = unsafe { libc::kill(pid, 0) };
        assert_eq!((r, Errno::last()), (-1, Errno::ESRCH));
    }
}
