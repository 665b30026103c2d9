//! Taking file descriptors out of another process: pidfd_open + pidfd_getfd
//! (Linux 5.6). Used to get the pipes (and the userfaultfd) that injected calls
//! created in the target. The copy is a new fd of ours on the same open file,
//! close-on-exec; the target keeps its own fd until it is closed there.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::{Error, Result};

/// A pidfd: a handle on one process that cannot be confused with a later process
/// reusing its pid.
#[derive(Debug)]
pub struct PidFd {
    fd: OwnedFd,
    pid: i32,
}

impl PidFd {
    pub fn open(pid: i32) -> Result<PidFd> {
        // SAFETY: pidfd_open takes two integers and returns a new fd or -1.
        let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ESRCH) => Error::NoSuchProcess { pid },
                _ => Error::sys(format!("pidfd_open of process {pid}"), e),
            });
        }
        // SAFETY: the kernel just returned this fd to us; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(r as i32) };
        Ok(PidFd { fd, pid })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// A copy of the process's file descriptor `target_fd`. Needs
    /// PTRACE_MODE_ATTACH_REALCREDS on the process (root, or its tracer's rights).
    pub fn get_fd(&self, target_fd: i32) -> Result<OwnedFd> {
        // SAFETY: pidfd_getfd takes three integers and returns a new fd or -1.
        let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, self.fd.as_raw_fd(), target_fd, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            let pid = self.pid;
            return Err(match e.raw_os_error() {
                Some(libc::ESRCH) => Error::TargetExited { pid },
                Some(libc::EPERM) => Error::Permission {
                    pid,
                    action: "take a file descriptor of",
                    source: e,
                },
                _ => Error::sys(format!("pidfd_getfd of fd {target_fd} of process {pid}"), e),
            });
        }
        // SAFETY: the kernel just returned this fd to us; nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
    }
}

impl AsRawFd for PidFd {
    fn as_raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}

/// pidfd_open + pidfd_getfd in one: a copy of fd `target_fd` of process `pid`.
pub fn pidfd_getfd(pid: i32, target_fd: i32) -> Result<OwnedFd> {
    PidFd::open(pid)?.get_fd(target_fd)
}
