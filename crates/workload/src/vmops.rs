//! Address-space changes made on command, between pre-dumps: the cases dirty
//! tracking must survive (new and removed mappings, protection changes, pages
//! zapped with MADV_DONTNEED, new threads, a fork), and a writer thread that
//! writes as fast as it can while predump works.
//!
//! Unlike the data region, these pages carry no checkable pattern: tests compare
//! what predump's images rebuild with the live memory instead.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use predump_core::PAGE_SIZE;

use crate::mem::{die, map_anon};
use crate::SplitMix;

const P: usize = PAGE_SIZE as usize;

/// Parses a `0x…` or decimal address.
pub fn parse_addr(s: &str) -> Option<usize> {
    match s.strip_prefix("0x") {
        Some(hex) => usize::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Fills `pages` pages at `addr` with words from `seed`: every page non-zero
/// and different from any other seed's.
///
/// # Safety
/// [addr, addr + pages * PAGE_SIZE) must be mapped writable in this process and
/// not in use by anything else.
pub unsafe fn fill(addr: usize, pages: usize, seed: u64) {
    let mut rng = SplitMix(seed ^ addr as u64);
    let words = addr as *mut u64;
    for i in 0..pages * P / 8 {
        // SAFETY: inside the range the caller vouches for.
        unsafe { words.add(i).write_volatile(rng.next_u64() | 1) };
    }
}

/// `map PAGES`: a new private anonymous read-write mapping, filled.
pub fn map(pages: usize, seed: u64) -> usize {
    let addr = map_anon(pages * P, libc::PROT_READ | libc::PROT_WRITE, 0) as usize;
    // SAFETY: just mapped, read-write, ours alone.
    unsafe { fill(addr, pages, seed) };
    addr
}

/// `map-shared PAGES SEED`: a new anonymous shared object (MAP_SHARED|
/// MAP_ANONYMOUS) of this process alone, every page written.
pub fn map_shared(pages: usize, seed: u64) -> usize {
    let addr = crate::mem::map_shared(pages * P, libc::PROT_READ | libc::PROT_WRITE) as usize;
    // SAFETY: just mapped, read-write; no other process maps it yet.
    unsafe { fill(addr, pages, seed) };
    addr
}

/// Checks a range the test names: page-aligned, non-empty.
pub fn range(addr: usize, pages: usize) -> Result<(usize, usize), String> {
    if !addr.is_multiple_of(P) || pages == 0 {
        return Err(format!(
            "{addr:#x}+{pages} pages: want a page-aligned address and PAGES > 0"
        ));
    }
    Ok((addr, pages * P))
}

fn check(rc: libc::c_int, what: &str) -> Result<(), String> {
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("{what}: {}", std::io::Error::last_os_error()))
    }
}

/// `unmap ADDR PAGES`.
pub fn unmap(addr: usize, pages: usize) -> Result<(), String> {
    let (a, len) = range(addr, pages)?;
    // SAFETY: the test names mappings it made with `map`; unmapping them removes
    // memory nothing of ours refers to.
    check(unsafe { libc::munmap(a as *mut _, len) }, "munmap")
}

/// `protect ADDR PAGES none|r|rw`.
pub fn protect(addr: usize, pages: usize, prot: &str) -> Result<(), String> {
    let (a, len) = range(addr, pages)?;
    let prot = match prot {
        "none" => libc::PROT_NONE,
        "r" => libc::PROT_READ,
        "rw" => libc::PROT_READ | libc::PROT_WRITE,
        other => return Err(format!("protection {other:?}: want none, r or rw")),
    };
    // SAFETY: changes the protection of the test's own mappings; nothing of the
    // workload's runtime lives there.
    check(
        unsafe { libc::mprotect(a as *mut _, len, prot) },
        "mprotect",
    )
}

/// `dontneed ADDR PAGES`: the pages read as zeros afterwards.
pub fn dontneed(addr: usize, pages: usize) -> Result<(), String> {
    let (a, len) = range(addr, pages)?;
    // SAFETY: zaps the test's own mapping; nothing of ours keeps pointers into it.
    check(
        unsafe { libc::madvise(a as *mut _, len, libc::MADV_DONTNEED) },
        "madvise(MADV_DONTNEED)",
    )
}

/// `aio`: an AIO context (io_setup). The kernel maps its ring into the process
/// (`/[aio] (deleted)`, shared), which the kernel itself writes: CRIU's pre-dump
/// leaves it out and its dump copies it whole. Answers the ring's address.
pub fn aio() -> Result<usize, String> {
    let mut ctx: libc::c_ulong = 0;
    // SAFETY: io_setup writes the new context (the ring's address) into `ctx`.
    let rc = unsafe { libc::syscall(libc::SYS_io_setup, 128, &mut ctx as *mut libc::c_ulong) };
    if rc != 0 {
        return Err(format!("io_setup: {}", std::io::Error::last_os_error()));
    }
    Ok(ctx as usize)
}

/// `hugetlb PAGES SEED`: a private anonymous mapping of PAGES huge pages (2 MiB
/// each, from the kernel's pool: vm.nr_hugepages), filled.
pub fn hugetlb(pages: usize, seed: u64) -> Result<usize, String> {
    const HUGE: usize = 2 << 20;
    // SAFETY: a fresh mapping at a kernel-chosen address, ours alone.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            pages * HUGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!(
            "mmap(MAP_HUGETLB): {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: just mapped, read-write, ours alone. (A pool too small for the
    // pages would fault here: the caller sizes vm.nr_hugepages first.)
    unsafe { fill(p as usize, pages * HUGE / P, seed) };
    Ok(p as usize)
}

/// `write ADDR PAGES SEED`: new contents.
pub fn write(addr: usize, pages: usize, seed: u64) -> Result<(), String> {
    let _ = range(addr, pages)?;
    // SAFETY: the test names a read-write mapping it made with `map`. A wrong
    // range faults and kills the workload, which the test then sees.
    unsafe { fill(addr, pages, seed) };
    Ok(())
}

/// `thread PAGES`: a new thread maps and fills PAGES pages of its own, then
/// waits forever. Answers (its tid, its region).
pub fn thread(pages: usize, seed: u64) -> (i32, usize) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let addr = map(pages, seed);
        // The system call, not glibc's gettid() wrapper: that one is glibc 2.30+,
        // and the prebuilt workload must run on glibc 2.17.
        // SAFETY: gettid has no arguments and cannot fail.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
        let _ = tx.send((tid, addr));
        loop {
            std::thread::park();
        }
    });
    rx.recv()
        .unwrap_or_else(|_| die("the new thread did not start"))
}

/// Forks a copy of this process that rewrites `pages` pages of its copy of
/// `addr` (from `seed`), then waits until this process exits. The copy is
/// detached (double fork: its parent exits at once), so that this process
/// stays a single process and not a tree for predump's `-t`: what is tested
/// is this process's memory after a fork (copy-on-write breaks, tracking).
/// Returns the copy's pid.
pub fn fork(addr: usize, pages: usize, seed: u64) -> Result<i32, String> {
    let _ = range(addr, pages)?;
    let mut fds = [0; 2];
    let mut pid_fds = [0; 2];
    // SAFETY: `fds` is a valid out array of two ints.
    check(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) },
        "pipe2",
    )?;
    // SAFETY: as above.
    check(
        unsafe { libc::pipe2(pid_fds.as_mut_ptr(), libc::O_CLOEXEC) },
        "pipe2",
    )?;
    // SAFETY: the children only call async-signal-safe functions (close,
    // fork, getpid, write, read, _exit) and write plain memory: safe after
    // fork in a multi-threaded process.
    match unsafe { libc::fork() } {
        -1 => Err(format!("fork: {}", std::io::Error::last_os_error())),
        0 => unsafe {
            libc::close(fds[1]);
            libc::close(pid_fds[0]);
            match libc::fork() {
                0 => {}
                -1 => libc::_exit(1),
                _ => libc::_exit(0),
            }
            let me = libc::getpid().to_ne_bytes();
            libc::write(pid_fds[1], me.as_ptr().cast(), me.len());
            libc::close(pid_fds[1]);
            fill(addr, pages, seed);
            // EOF when this process is gone (it holds the only write end).
            let mut b = 0u8;
            libc::read(fds[0], (&mut b as *mut u8).cast(), 1);
            libc::_exit(0)
        },
        child => {
            // SAFETY: our copies of the ends the children use; the write end
            // of `fds` stays open for the life of this process, so the copy
            // waits until we exit. The intermediate child is reaped at once.
            unsafe {
                libc::close(fds[0]);
                libc::close(pid_fds[1]);
                let mut status = 0;
                libc::waitpid(child, &mut status, 0);
            }
            let mut buf = [0u8; 4];
            // SAFETY: reads into a local buffer of 4 bytes.
            let n = unsafe { libc::read(pid_fds[0], buf.as_mut_ptr().cast(), buf.len()) };
            // SAFETY: our read end, used no more.
            unsafe { libc::close(pid_fds[0]) };
            if n != 4 {
                return Err("fork: the copy did not start".to_string());
            }
            Ok(i32::from_ne_bytes(buf))
        }
    }
}

/// The writer thread: random words into its own region, as fast as it can.
pub struct Writer {
    pub start: usize,
    pub bytes: usize,
    pub writes: Arc<AtomicU64>,
}

impl Writer {
    pub fn spawn(bytes: usize) -> Writer {
        let pages = bytes.div_ceil(P).max(1);
        let start = map(pages, 7);
        let writes = Arc::new(AtomicU64::new(0));
        let counter = writes.clone();
        std::thread::spawn(move || {
            let words = pages * P / 8;
            let mut rng = SplitMix(99);
            let base = start as *mut u64;
            loop {
                for _ in 0..4096 {
                    let r = rng.next_u64();
                    // SAFETY: the index is below `words`: inside the region this
                    // thread alone writes.
                    unsafe { base.add(r as usize % words).write_volatile(r) };
                }
                counter.fetch_add(4096, Relaxed);
            }
        });
        Writer {
            start,
            bytes: pages * P,
            writes,
        }
    }
}
