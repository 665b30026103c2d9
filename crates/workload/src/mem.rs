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
