//! userfaultfd(2) and its ioctls (include/uapi/linux/userfaultfd.h): the ABI
//! and one wrapper per call. The ranges an ioctl takes are in the address space
//! of the process that created the uffd, whoever calls: predump registers a
//! target's memory through a uffd made in the target and taken with pidfd_getfd.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

pub const UFFD_API: u64 = 0xaa;
/// userfaultfd() flag: only faults from user mode go to the uffd. Lets an
/// unprivileged process create one whatever vm.unprivileged_userfaultfd says;
/// harmless for WP async, whose faults never reach the uffd at all.
pub const UFFD_USER_MODE_ONLY: libc::c_int = 1;
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

/// The `_IOWR` encoding (asm-generic/ioctl.h, used by x86_64 and arm64).
const fn iowr(ty: u8, nr: u8, size: usize) -> libc::c_ulong {
    (3 << 30) | ((size as libc::c_ulong) << 16) | ((ty as libc::c_ulong) << 8) | nr as libc::c_ulong
}

/// `_IOWR(0xAA, 0x3F, struct uffdio_api)`.
const UFFDIO_API: libc::c_ulong = iowr(0xaa, 0x3f, std::mem::size_of::<UffdioApi>());
/// `_IOWR(0xAA, 0x00, struct uffdio_register)`.
const UFFDIO_REGISTER: libc::c_ulong = iowr(0xaa, 0x00, std::mem::size_of::<UffdioRegister>());
/// `_IO(0xAA, 0x00)` on /dev/userfaultfd.
const USERFAULTFD_IOC_NEW: libc::c_ulong = 0xaa << 8;

/// A new userfaultfd of this process (the system call).
pub fn userfaultfd(flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: userfaultfd takes one integer and returns a new fd or -1.
    let r = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// A new userfaultfd of this process through /dev/userfaultfd (allowed where the
/// system call is refused: vm.unprivileged_userfaultfd = 0, no CAP_SYS_PTRACE).
pub fn userfaultfd_dev(flags: libc::c_int) -> io::Result<OwnedFd> {
    let dev = File::options()
        .read(true)
        .write(true)
        .open("/dev/userfaultfd")?;
    // SAFETY: USERFAULTFD_IOC_NEW takes the new fd's flags as an integer and
    // returns a new fd or -1; `dev` is open for the whole call.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW as libc::Ioctl, flags) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above, a fresh fd that we alone own.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// UFFDIO_API with `features`; Ok(the features the kernel offers). Works once
/// per uffd: a second call fails with EINVAL.
pub fn api(uffd: &impl AsRawFd, features: u64) -> io::Result<u64> {
    let mut api = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: `api` is a properly sized uffdio_api the kernel reads and writes
    // during the call only.
    if unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            UFFDIO_API as libc::Ioctl,
            &mut api as *mut UffdioApi,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(api.features)
}

/// UFFDIO_REGISTER of [start, start+len) in `mode`.
pub fn register(uffd: &impl AsRawFd, start: u64, len: u64, mode: u64) -> io::Result<()> {
    let mut reg = UffdioRegister {
        start,
        len,
        mode,
        ioctls: 0,
    };
    // SAFETY: `reg` is a properly sized uffdio_register the kernel reads and
    // writes during the call only. Registering changes no memory of ours.
    if unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            UFFDIO_REGISTER as libc::Ioctl,
            &mut reg as *mut UffdioRegister,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
