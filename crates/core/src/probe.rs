//! Probes of the kernel features predump relies on, each tried for real on
//! memory of this process or on a short-lived child forked here, never on
//! another process; everything is put back (mappings unmapped, fds closed, the
//! child killed and reaped). `predump check` reports them (check.rs), and
//! `--track-mem auto` chooses its backend from them (`track::Backend::detect`).
//!
//! None can be read from a version number: distributions backport,
//! configurations differ (soft-dirty is a build option the kernel does not
//! advertise: `clear_refs` accepts `4` either way), and seccomp or Yama can
//! refuse what the kernel has. A feature that is missing or refused is a
//! result (`supported: false`, with the reason in words), not an error: only a
//! failure of the probing itself (no memory for a test mapping, no pipe, no
//! fork) is an `Error`.

use std::fs::File;
use std::io::{self, IoSliceMut, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

use nix::errno::Errno;
use nix::fcntl::{vmsplice, OFlag, SpliceFFlags};
use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::{pipe2, Pid};

use crate::anon::AnonMap;
use crate::sys::pagemap::{
    self, PageRegion, ScanQuery, PAGE_IS_PRESENT, PAGE_IS_SWAPPED, PAGE_IS_WRITTEN, PM_PRESENT,
    PM_SCAN_CHECK_WPASYNC, PM_SCAN_WP_MATCHING, PM_SOFT_DIRTY,
};
use crate::sys::pidfd::PidFd;
use crate::sys::ptrace::{self, PTRACE_EVENT_STOP};
use crate::sys::uffd::{
    self, UFFDIO_REGISTER_MODE_WP, UFFD_FEATURE_WP_ASYNC, UFFD_FEATURE_WP_UNPOPULATED,
    UFFD_USER_MODE_ONLY,
};
use crate::{proc, Error, Result, PAGE_SIZE};

/// A probe's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub supported: bool,
    /// Why, in words.
    pub detail: String,
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

/// A byte of the test page: position-dependent, so a shifted or partial copy shows.
fn pattern(i: usize, seed: u8) -> u8 {
    (i as u8).wrapping_mul(31) ^ seed
}

const CHILD_SEED: u8 = 0x5a;

/// What the probes on a forked child found.
#[derive(Debug, Clone)]
pub struct ChildProbes {
    pub process_vm_readv: Probe,
    pub ptrace: Probe,
    pub pidfd_getfd: Probe,
}

/// process_vm_readv, pidfd_getfd and ptrace, on one forked child: with a child,
/// the permission checks are the real ones (PTRACE_MODE_ATTACH_REALCREDS),
/// which a process passes trivially on itself. `ptrace_scope` (Yama's) only
/// explains a refusal.
pub fn with_child(ptrace_scope: Option<u32>) -> Result<ChildProbes> {
    let mut area = AnonMap::pages(1, "a probe mapping")?;
    for (i, b) in area.as_mut_slice().iter_mut().enumerate() {
        *b = pattern(i, CHILD_SEED);
    }
    let child = Child::spawn()?;
    // From here our copy differs from the child's: reading ours by mistake shows.
    area.as_mut_slice().fill(0);
    let process_vm_readv = probe_process_vm_readv(&child, &area);
    let pidfd_getfd = probe_pidfd_getfd(&child)?;
    let ptrace = probe_ptrace(&child, ptrace_scope)?;
    drop(child);
    Ok(ChildProbes {
        process_vm_readv,
        ptrace,
        pidfd_getfd,
    })
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

fn probe_ptrace(child: &Child, ptrace_scope: Option<u32>) -> Result<Probe> {
    let pid = child.pid().as_raw();
    if let Err(e) = ptrace::seize(pid) {
        let why = match (e.raw_os_error(), ptrace_scope) {
            (Some(libc::EPERM), Some(3)) => " (Yama ptrace_scope 3: ptrace is off until reboot)",
            (Some(libc::EPERM), Some(2)) => " (Yama ptrace_scope 2: only CAP_SYS_PTRACE may trace)",
            (Some(libc::EPERM), _) => " (a seccomp filter or a security module refuses ptrace)",
            (Some(libc::ENOSYS), _) => " (a seccomp filter blocks ptrace)",
            _ => "",
        };
        return Ok(no(format!(
            "PTRACE_SEIZE of a forked child failed: {}{why}",
            errno_text(&e)
        )));
    }
    // Seized: from here a failure leaves the child traced, which its kill and
    // reap at drop end cleanly (SIGKILL works on a tracee; we are its tracer).
    if let Err(e) = ptrace::interrupt(pid) {
        return Ok(no(format!(
            "PTRACE_INTERRUPT of a seized child failed: {}",
            errno_text(&e)
        )));
    }
    let status = loop {
        match ptrace::waitpid(pid, 0) {
            Ok(Some(status)) => break status,
            Ok(None) => continue,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(Error::sys("waitpid of the ptrace test child", e)),
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
    if let Err(e) = ptrace::detach(pid, stop) {
        return Ok(no(format!("PTRACE_DETACH failed: {}", errno_text(&e))));
    }
    Ok(match proc::tracer_pid(pid, pid) {
        Ok(0) => yes("PTRACE_SEIZE, PTRACE_INTERRUPT and PTRACE_DETACH of a forked child: it stopped and ran on"),
        Ok(t) => no(format!("the child is still traced by {t} after PTRACE_DETACH")),
        Err(e) => no(format!("after PTRACE_DETACH: {e}")),
    })
}

/// PAGEMAP_SCAN on our own pagemap must report exactly the pages we wrote.
pub fn pagemap_scan() -> Result<Probe> {
    let mut area = AnonMap::pages(4, "a probe mapping")?;
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
pub fn soft_dirty() -> Result<Probe> {
    let mut area = guarded_page()?;
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

/// Clears the soft-dirty bits of our whole process (harmless: nothing of ours
/// tracks them; without CONFIG_MEM_SOFT_DIRTY it does nothing at all).
fn clear_soft_dirty() -> io::Result<()> {
    pagemap::clear_soft_dirty(None)
}

fn pagemap_entry(pagemap: &File, addr: u64) -> Result<u64> {
    pagemap::entry(pagemap, addr).map_err(|e| Error::sys("reading /proc/self/pagemap", e))
}

/// A new userfaultfd: the system call, or /dev/userfaultfd where the system call
/// is refused (vm.unprivileged_userfaultfd = 0 and no CAP_SYS_PTRACE).
fn open_userfaultfd() -> std::result::Result<OwnedFd, String> {
    let flags = libc::O_CLOEXEC | UFFD_USER_MODE_ONLY;
    let syscall_err = match uffd::userfaultfd(flags) {
        Ok(fd) => return Ok(fd),
        Err(e) => errno_text(&e),
    };
    uffd::userfaultfd_dev(flags).map_err(|e| {
        format!(
            "userfaultfd(): {syscall_err}; /dev/userfaultfd: {}",
            errno_text(&e)
        )
    })
}

/// The features a fresh userfaultfd offers (UFFDIO_API works once per fd).
fn offered_uffd_features() -> Option<u64> {
    uffd::api(&open_userfaultfd().ok()?, 0).ok()
}

/// uffd-wp in async mode, the way predump tracks a target: register a mapping for
/// write-protection, arm it with one PAGEMAP_SCAN WP_MATCHING, write some pages,
/// and the next PAGEMAP_SCAN must report exactly those (and re-arm them).
pub fn uffd_wp() -> Result<Probe> {
    const PAGES: usize = 8;
    // Populated pages 0..4 before registering; 4..8 never touched, so the arming
    // must protect unpopulated pages too (WP_UNPOPULATED).
    let mut area = AnonMap::pages(PAGES, "a probe mapping")?;
    for i in 0..4 {
        area.touch(i, 1);
    }
    let uffd_fd = match open_userfaultfd() {
        Ok(fd) => fd,
        Err(e) => return Ok(no(format!("no userfaultfd: {e}"))),
    };
    let wanted = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
    if let Err(e) = uffd::api(&uffd_fd, wanted) {
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
    // The range is our own mapping, alive until after `uffd_fd` is closed
    // (which unregisters it).
    if let Err(e) = uffd::register(
        &uffd_fd,
        area.addr(),
        area.len() as u64,
        UFFDIO_REGISTER_MODE_WP,
    ) {
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
    let (start, end) = (area.addr(), area.end());
    let mut written = |what: &str| -> std::result::Result<Vec<u64>, String> {
        scan.call(
            start,
            end,
            PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
            PAGE_IS_WRITTEN,
            0,
        )
        .map(|r| region_pages(&r, start))
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
    drop(uffd_fd); // unregisters the mapping before it is unmapped
    Ok(match verdict {
        Ok(()) => yes(
            "UFFDIO_API WP_ASYNC|WP_UNPOPULATED, UFFDIO_REGISTER MODE_WP, and PAGEMAP_SCAN \
             WP_MATCHING saw exactly the 2 pages written since arming, then none",
        ),
        Err(why) => no(why),
    })
}

/// vmsplice(SPLICE_F_GIFT) of a page of ours into a pipe, read back intact.
pub fn gift_vmsplice() -> Result<Probe> {
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
        let query = ScanQuery {
            flags,
            start,
            end,
            category_mask: mask,
            category_anyof_mask: anyof,
            return_mask: mask | anyof,
            ..Default::default()
        };
        let (n, _) = pagemap::scan(self.pagemap, query, &mut self.vec)?;
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

#[cfg(test)]
pub(crate) mod tests {
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
    fn scan_answers() {
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
    /// one between the write and the read of the other would fail it (check's
    /// report test takes it too).
    pub(crate) static CLEARS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// The probe's soft-dirty answer agrees with a direct look at our pagemap.
    #[test]
    fn soft_dirty_probe_matches_pagemap() {
        let _one = CLEARS.lock().unwrap_or_else(|e| e.into_inner());
        let probe = soft_dirty().unwrap();
        let mut area = guarded_page().unwrap();
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
                let mut m = AnonMap::pages(1, "a test mapping").unwrap();
                m.touch(0, 1);
                MAPS.fetch_add(1, Ordering::Relaxed);
            }
        });
        while MAPS.load(Ordering::Relaxed) == 0 {
            std::thread::yield_now();
        }
        let answers: Vec<bool> = (0..100).map(|_| soft_dirty().unwrap().supported).collect();
        STOP.store(true, Ordering::Relaxed);
        mapper.join().unwrap();
        let maps = MAPS.load(Ordering::Relaxed);
        let yes = answers.iter().filter(|&&a| a).count();
        eprintln!("soft-dirty probes: {yes} of 100 yes, {maps} mappings made meanwhile");
        assert!(yes == 0 || yes == 100, "{yes} of 100 probes said yes");
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
