//! Thin wrappers over mmap and friends. Any failure here means the workload cannot do
//! its job (out of memory, a bad address computed by us), so it exits loudly rather
//! than carrying on with a region in an unknown state.

use std::io;

/// Print what failed with errno and exit with status 3 (2 is for bad arguments).
pub fn die(what: &str) -> ! {
    eprintln!("predump-workload: {what}: {}", io::Error::last_os_error());
    std::process::exit(3)
}

/// A new private anonymous mapping of `len` bytes, placed by the kernel.
pub fn map_anon(len: usize, prot: i32, extra_flags: i32) -> *mut u8 {
    // SAFETY: a fresh mapping at a kernel-chosen address cannot alias anything we use.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra_flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        die("mmap");
    }
    p.cast()
}

/// A new shared anonymous mapping of `len` bytes: an object of the kernel's shmem
/// that the children forked afterwards share.
pub fn map_shared(len: usize, prot: i32) -> *mut u8 {
    // SAFETY: a fresh mapping at a kernel-chosen address cannot alias anything we use.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        die("mmap(MAP_SHARED|MAP_ANONYMOUS)");
    }
    p.cast()
}

/// A new shared mapping of /dev/zero: the kernel makes it an anonymous shared
/// object, exactly as `map_shared` does.
pub fn map_dev_zero(len: usize, prot: i32) -> *mut u8 {
    // SAFETY: a constant NUL-terminated path.
    let fd = unsafe { libc::open(c"/dev/zero".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        die("open /dev/zero");
    }
    // SAFETY: a fresh mapping at a kernel-chosen address; the fd is ours.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, 0) };
    // SAFETY: our own fd; the mapping keeps what it needs.
    unsafe { libc::close(fd) };
    if p == libc::MAP_FAILED {
        die("mmap /dev/zero");
    }
    p.cast()
}
