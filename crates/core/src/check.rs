//! `predump check`: which of the kernel features predump relies on work on this
//! machine, and what follows from that. Every feature is tried for real by
//! `probe` (on memory of this process or of a child it forks, never another
//! process); a feature that is missing or refused is a result, not an error.

use std::io;

use crate::predump::Mode;
use crate::probe::{self, Probe};
use crate::track::Backend;
use crate::{proc, Error, Result};

/// Capability names, as reported (and as JavaScript tests them).
pub const PROCESS_VM_READV: &str = "process_vm_readv";
pub const PTRACE: &str = "ptrace";
pub const PAGEMAP_SCAN: &str = "PAGEMAP_SCAN";
pub const SOFT_DIRTY: &str = Backend::SoftDirty.name();
pub const UFFD_WP: &str = Backend::UffdWp.name();
pub const PIDFD_GETFD: &str = "pidfd_getfd";
pub const GIFT_VMSPLICE: &str = "vmsplice-gift";
pub const INJECTION: &str = "injection";

/// One feature, and why it does or does not work here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    pub name: &'static str,
    pub supported: bool,
    pub detail: String,
}

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
    /// soft-dirty, uffd-wp, vmsplice-gift, injection.
    pub capabilities: Vec<Capability>,
    pub track_mem_auto: Backend,
    /// read mode needs ptrace (freeze) and process_vm_readv (copy).
    pub read_mode: bool,
    /// splice mode also needs pidfd_getfd (take the pipes made in the target),
    /// GIFT vmsplice and injection (to run it inside the target).
    pub splice_mode: bool,
    /// The freeze-free mode needs read mode's calls, uffd-wp (async) and
    /// injection (the target's userfaultfd is made by an injected call).
    pub freeze_free_mode: bool,
    /// What `--pre-dump-mode auto` takes here ([`crate::mode::default_mode`]
    /// with the tracking `auto` takes, where the freeze-free mode works).
    pub default_mode: Mode,
    /// What `--pre-dump-mode auto` takes on a tree
    /// ([`crate::mode::DEFAULT_TREE_MODE`]).
    pub default_tree_mode: Mode,
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

    let child = probe::with_child(ptrace_scope)?;
    let capabilities = vec![
        capability(PROCESS_VM_READV, child.process_vm_readv),
        capability(PTRACE, child.ptrace),
        capability(PIDFD_GETFD, child.pidfd_getfd),
        capability(PAGEMAP_SCAN, probe::pagemap_scan()?),
        capability(SOFT_DIRTY, probe::soft_dirty()?),
        capability(UFFD_WP, probe::uffd_wp()?),
        capability(GIFT_VMSPLICE, probe::gift_vmsplice()?),
        injection(),
    ];

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
        track_mem_auto: Backend::None,
        read_mode: false,
        splice_mode: false,
        freeze_free_mode: false,
        default_mode: Mode::Read,
        default_tree_mode: crate::mode::DEFAULT_TREE_MODE,
    };
    // uffd-wp tracking makes its userfaultfd inside the target: injection.
    report.track_mem_auto = Backend::auto(
        report.supported(SOFT_DIRTY),
        report.supported(UFFD_WP) && report.supported(INJECTION),
    );
    (report.read_mode, report.splice_mode) = modes(
        report.supported(PTRACE),
        report.supported(PROCESS_VM_READV),
        report.supported(PIDFD_GETFD),
        report.supported(GIFT_VMSPLICE) && report.supported(INJECTION),
    );
    report.freeze_free_mode =
        report.read_mode && report.supported(UFFD_WP) && report.supported(INJECTION);
    let auto_backend = if report.freeze_free_mode {
        report.track_mem_auto
    } else {
        Backend::None
    };
    report.default_mode = crate::mode::default_mode(auto_backend, false);
    Ok(report)
}

// ---- decisions (no I/O) ---------------------------------------------------------------------

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

/// Not a kernel feature but predump's own: whether it can run system calls inside
/// a frozen target on this machine (a stub in the vDSO's tail: x86_64, and
/// aarch64 where the vDSO leaves room for it and its sigreturn frame; the
/// injection tests prove it there). Not tried here: that takes a target.
fn injection() -> Capability {
    match crate::inject::supported() {
        Ok(()) => Capability {
            name: INJECTION,
            supported: true,
            detail: format!(
                "predump runs system calls inside the frozen target ({}): splice mode's \
                 vmsplice, uffd-wp tracking's userfaultfd",
                std::env::consts::ARCH
            ),
        },
        Err(why) => Capability {
            name: INJECTION,
            supported: false,
            detail: format!(
                "{why}: splice mode falls back to read mode, and dirty tracking is not uffd-wp"
            ),
        },
    }
}

fn capability(name: &'static str, p: Probe) -> Capability {
    Capability {
        name,
        supported: p.supported,
        detail: p.detail,
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
    fn decisions() {
        assert_eq!(Backend::auto(true, true), Backend::SoftDirty);
        assert_eq!(Backend::auto(false, true), Backend::UffdWp);
        assert_eq!(Backend::auto(false, false), Backend::None);
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
    }

    /// The whole report: every capability once, with a reason, nothing left open.
    #[test]
    fn report_is_complete_and_cleans_up() {
        let r = {
            let _one = probe::tests::CLEARS
                .lock()
                .unwrap_or_else(|e| e.into_inner());
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
                GIFT_VMSPLICE,
                INJECTION
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
            Backend::auto(
                r.supported(SOFT_DIRTY),
                r.supported(UFFD_WP) && r.supported(INJECTION)
            )
        );
        // x86_64 always; aarch64 where the vDSO leaves room (inject/aarch64.rs),
        // which PREDUMP_TEST_REQUIRE=inject says it does.
        let required = std::env::var("PREDUMP_TEST_REQUIRE")
            .is_ok_and(|v| v.split(',').any(|b| b.trim() == "inject"));
        assert!(cfg!(target_arch = "aarch64") && !required || r.supported(INJECTION));
        if !r.supported(INJECTION) {
            assert!(!r.splice_mode);
            assert_ne!(r.track_mem_auto, Backend::UffdWp);
        }
        // No other test of this crate makes a userfaultfd: any left is the probe's.
        for fd in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            let link = std::fs::read_link(fd.path()).unwrap_or_default();
            assert!(
                !link.to_string_lossy().contains("userfaultfd"),
                "{link:?} left open"
            );
        }
    }
}
