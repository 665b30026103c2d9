//! A target program for the syscall-injection tests (crates/core/tests/inject.rs).
//! Not part of predump.
//!
//! `predump-testee CASE [ARG]` starts one worker thread that blocks in the system
//! call CASE names (or computes, or just waits), prints its thread ids and fds,
//! then `ready`. The main thread blocks in read(0) waiting for commands (one per
//! line) and answers on stdout. The worker prints one `result …` line each time
//! its blocking call returns, with the raw return value and errno, so that the
//! test can compare what the kernel did with and without injection.
//!
//! Cases: nanosleep MS | clock_nanosleep MS | clock_nanosleep_abs MS | read |
//! futex | futex_timeout | epoll | sigread restart|norestart | signals | compute N |
//! track (for tests/track.rs: a worker blocked in read, memory made on command)
//! Commands: echo TEXT | wake | ready | count | check | exit |
//! region NAME PAGES POPULATED (mmap; answers `region NAME ADDR`) |
//! write NAME P A..B … (one byte into each page; answers `written N`) |
//! read NAME P A..B … (one byte of each page; answers `read SUM`) | close FD |
//! ownuffd NAME (registers the region with a userfaultfd of our own, MODE_MISSING;
//! answers `ownuffd NAME FD`; the region must be fully populated)

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

static FUTEX_WORD: AtomicU32 = AtomicU32::new(0);
static EVENT_FD: AtomicU32 = AtomicU32::new(0);
static USR1: AtomicU64 = AtomicU64::new(0);
static USR2: AtomicU64 = AtomicU64::new(0);
/// SIGUSR1s that arrived with the siginfo the tests queue (SI_QUEUE, value 4242).
static QUEUED: AtomicU64 = AtomicU64::new(0);
static ITERATIONS: AtomicU64 = AtomicU64::new(0);
static ERRORS: AtomicU64 = AtomicU64::new(0);

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn gettid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

extern "C" fn on_signal(sig: i32, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // Atomics only: async-signal-safe.
    if sig == libc::SIGUSR1 {
        USR1.fetch_add(1, Ordering::SeqCst);
        // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
        let (code, value) = unsafe {
            (
                (*info).si_code,
                (*info).si_value().sival_ptr as usize as i32,
            )
        };
        if code == libc::SI_QUEUE && value == 4242 {
            QUEUED.fetch_add(1, Ordering::SeqCst);
        }
    } else {
        USR2.fetch_add(1, Ordering::SeqCst);
    }
}

fn install(sig: i32, restart: bool) {
    // SAFETY: a zeroed sigaction is valid; we fill handler, flags and an empty mask.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction =
            on_signal as extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void) as usize;
        sa.sa_flags = libc::SA_SIGINFO | if restart { libc::SA_RESTART } else { 0 };
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(sig, &sa, std::ptr::null_mut()), 0);
    }
}

fn ms_arg(args: &[String]) -> u64 {
    args.get(2).and_then(|s| s.parse().ok()).unwrap_or(800)
}

fn timespec_ms(ms: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: (ms / 1000) as _,
        tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
    }
}

fn pipe() -> [i32; 2] {
    let mut p = [0i32; 2];
    // SAFETY: p has room for the two fds.
    assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
    p
}

/// Blocks in read(fd) once and reports what it returned.
fn read_once(fd: i32) {
    let mut buf = [0u8; 64];
    // SAFETY: buf is valid for 64 bytes.
    let r = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
    let e = if r < 0 { errno() } else { 0 };
    let data = if r > 0 {
        String::from_utf8_lossy(&buf[..r as usize]).into_owned()
    } else {
        String::new()
    };
    println!(
        "result read ret={r} errno={e} data={data} handled={}",
        USR1.load(Ordering::SeqCst)
    );
}

/// A computation with a known answer, using integer and floating-point registers.
#[inline(never)]
fn compute(i: u64) -> (u64, u64) {
    let mut x = std::hint::black_box(i);
    let mut a = 0u64;
    let mut f = std::hint::black_box(i as f64) + 0.5;
    let mut g = 1.0f64;
    for k in 0..256u64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407 ^ k);
        a = a.rotate_left(7) ^ x ^ (x >> 29);
        f = (f * 1.000001 + (x & 0xffff) as f64).sqrt() + 3.0;
        g = g * 0.999 + f / 1024.0;
    }
    (a ^ x, (f + g).to_bits())
}

fn compute_loop() {
    let table: Vec<(u64, u64)> = (0..512).map(compute).collect();
    let mut i = 0u64;
    loop {
        let got = compute(i % 512);
        if got != table[(i % 512) as usize] {
            ERRORS.fetch_add(1, Ordering::SeqCst);
        }
        ITERATIONS.fetch_add(1, Ordering::Relaxed);
        i += 1;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let case = args.get(1).cloned().unwrap_or_default();
    println!("tid main {}", gettid());
    let (tx, rx) = std::sync::mpsc::channel::<i32>();
    let spawn = |f: Box<dyn FnOnce() + Send>| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            tx.send(gettid()).unwrap();
            f();
        })
    };
    let mut workers = 1;
    match case.as_str() {
        "nanosleep" => {
            let ms = ms_arg(&args);
            spawn(Box::new(move || {
                let t = Instant::now();
                let ts = timespec_ms(ms);
                // The nanosleep system call itself (glibc's nanosleep() makes a
                // clock_nanosleep call).
                // SAFETY: valid timespec pointer; a null remainder is allowed.
                let r = unsafe {
                    libc::syscall(libc::SYS_nanosleep, &ts as *const libc::timespec, 0usize)
                };
                let e = if r < 0 { errno() } else { 0 };
                println!(
                    "result nanosleep ret={r} errno={e} ms={}",
                    t.elapsed().as_millis()
                );
            }));
        }
        "clock_nanosleep" | "clock_nanosleep_abs" => {
            let ms = ms_arg(&args);
            let abs = case == "clock_nanosleep_abs";
            spawn(Box::new(move || {
                let t = Instant::now();
                let mut ts = timespec_ms(ms);
                if abs {
                    let mut now = timespec_ms(0);
                    // SAFETY: valid timespec pointer.
                    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
                    let ns = now.tv_nsec as u64 + ts.tv_nsec as u64;
                    // Two values below a second each: at most one second to carry.
                    ts.tv_sec += now.tv_sec + if ns >= 1_000_000_000 { 1 } else { 0 };
                    ts.tv_nsec = (ns % 1_000_000_000) as libc::c_long;
                }
                let flags = if abs { libc::TIMER_ABSTIME } else { 0 };
                // SAFETY: valid timespec pointers. Returns the error number itself.
                let r = unsafe {
                    libc::clock_nanosleep(libc::CLOCK_MONOTONIC, flags, &ts, std::ptr::null_mut())
                };
                println!(
                    "result {case} ret={r} errno={r} ms={}",
                    t.elapsed().as_millis()
                );
            }));
        }
        "read" => {
            let p = pipe();
            println!("fd pipe_w {}", p[1]);
            spawn(Box::new(move || read_once(p[0])));
        }
        "futex" | "futex_timeout" => {
            let timed = case == "futex_timeout";
            spawn(Box::new(move || {
                let ts = timespec_ms(60_000);
                let tp = if timed {
                    &ts as *const libc::timespec
                } else {
                    std::ptr::null()
                };
                // SAFETY: FUTEX_WAIT on a live static word; tp is null or valid.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_futex,
                        FUTEX_WORD.as_ptr(),
                        libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                        0u32,
                        tp,
                    )
                };
                let e = if r < 0 { errno() } else { 0 };
                println!(
                    "result futex ret={r} errno={e} word={}",
                    FUTEX_WORD.load(Ordering::SeqCst)
                );
            }));
        }
        "epoll" => {
            // SAFETY: plain fd-creating calls; ev is a valid epoll_event.
            let (efd, ep) = unsafe {
                let efd = libc::eventfd(0, 0);
                let ep = libc::epoll_create1(0);
                let mut ev = libc::epoll_event {
                    events: libc::EPOLLIN as u32,
                    u64: 7,
                };
                assert_eq!(libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, efd, &mut ev), 0);
                (efd, ep)
            };
            EVENT_FD.store(efd as u32, Ordering::SeqCst);
            spawn(Box::new(move || loop {
                let mut ev = libc::epoll_event { events: 0, u64: 0 };
                // SAFETY: room for one event.
                let r = unsafe { libc::epoll_wait(ep, &mut ev, 1, -1) };
                let e = if r < 0 { errno() } else { 0 };
                println!("result epoll ret={r} errno={e}");
                if r == 1 {
                    break;
                }
            }));
        }
        "sigread" => {
            install(
                libc::SIGUSR1,
                args.get(2).map(String::as_str) != Some("norestart"),
            );
            let p = pipe();
            println!("fd pipe_w {}", p[1]);
            // Where the handler counts, for a test that watches it from outside.
            println!("addr usr1 {}", USR1.as_ptr() as usize);
            spawn(Box::new(move || loop {
                read_once(p[0]);
            }));
        }
        "signals" => {
            install(libc::SIGUSR1, true);
            install(libc::SIGUSR2, true);
            let p = pipe();
            println!("fd pipe_w {}", p[1]);
            spawn(Box::new(move || loop {
                read_once(p[0]);
            }));
        }
        "ignoretrap" => {
            // SAFETY: SIG_IGN for SIGTRAP; no handler involved.
            unsafe { libc::signal(libc::SIGTRAP, libc::SIG_IGN) };
            let p = pipe();
            spawn(Box::new(move || read_once(p[0])));
        }
        "rseq" => {
            rseq::print_range();
            spawn(Box::new(rseq::spin));
        }
        "track" => {
            let p = pipe();
            spawn(Box::new(move || read_once(p[0])));
        }
        "compute" => {
            workers = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2);
            for _ in 0..workers {
                spawn(Box::new(compute_loop));
            }
        }
        other => panic!("unknown case {other:?}"),
    }
    for _ in 0..workers {
        println!("tid worker {}", rx.recv().unwrap());
    }
    println!("ready");
    commands();
}

/// The main thread: read(0) commands, one per line.
fn commands() {
    let mut pending = Vec::new();
    loop {
        let mut buf = [0u8; 256];
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::read(0, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n < 0 {
            println!("main read errno={}", errno());
            continue;
        }
        if n == 0 {
            return;
        }
        pending.extend_from_slice(&buf[..n as usize]);
        while let Some(i) = pending.iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&pending[..i]).into_owned();
            pending.drain(..=i);
            command(line.trim());
        }
    }
}

fn command(line: &str) {
    let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
    match cmd {
        "echo" => println!("echo {rest}"),
        "wake" => {
            FUTEX_WORD.store(1, Ordering::SeqCst);
            // SAFETY: FUTEX_WAKE on a live static word.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    FUTEX_WORD.as_ptr(),
                    libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                    1,
                )
            };
            println!("woken");
        }
        "ready" => {
            let one = 1u64;
            // SAFETY: writes 8 bytes from a live u64 to our eventfd.
            let r = unsafe {
                libc::write(
                    EVENT_FD.load(Ordering::SeqCst) as i32,
                    &one as *const u64 as *const libc::c_void,
                    8,
                )
            };
            println!("made ready {r}");
        }
        "count" => println!(
            "count usr1={} usr2={} queued={}",
            USR1.load(Ordering::SeqCst),
            USR2.load(Ordering::SeqCst),
            QUEUED.load(Ordering::SeqCst)
        ),
        "aborts" => println!("aborts {}", rseq::ABORTS.load(Ordering::SeqCst)),
        "check" => println!(
            "compute iterations={} errors={}",
            ITERATIONS.load(Ordering::SeqCst),
            ERRORS.load(Ordering::SeqCst)
        ),
        "exit" => std::process::exit(0),
        "region" => region(rest),
        "write" => write_pages(rest),
        "read" => read_pages(rest),
        "close" => {
            let fd: i32 = rest.trim().parse().unwrap();
            // SAFETY: close takes an integer; the test names an fd it knows of.
            let r = unsafe { libc::close(fd) };
            println!("closed {r}");
        }
        "ownuffd" => own_uffd(rest),
        other => println!("unknown {other}"),
    }
}

/// Regions made by `region`: (name, address, pages).
static REGIONS: std::sync::Mutex<Vec<(String, usize, usize)>> = std::sync::Mutex::new(Vec::new());

fn find_region(name: &str) -> (usize, usize) {
    let r = REGIONS.lock().unwrap();
    let (_, addr, pages) = r
        .iter()
        .find(|(n, _, _)| n == name)
        .expect("no such region");
    (*addr, *pages)
}

/// One byte into page `page` of the region at `addr`: a real write fault.
fn poke(addr: usize, page: usize, value: u8) {
    // SAFETY: the page lies inside a live read-write mapping of ours that no Rust
    // reference covers.
    unsafe { std::ptr::write_volatile((addr + page * 4096) as *mut u8, value) }
}

fn region(rest: &str) {
    let w: Vec<&str> = rest.split_whitespace().collect();
    let (name, pages, populated): (&str, usize, usize) =
        (w[0], w[1].parse().unwrap(), w[2].parse().unwrap());
    // SAFETY: a fresh anonymous mapping at an address the kernel chooses.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            pages * 4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(addr, libc::MAP_FAILED);
    // Page-exact dirty tracking needs page-sized faults: with transparent huge
    // pages "always" (Debian's 6.1 kernel), a write could fill and dirty 512
    // pages at once (correct for a pre-dump, a superset, but not what the tests
    // count).
    // SAFETY: madvise on the mapping just made, changing no content.
    let r = unsafe { libc::madvise(addr, pages * 4096, libc::MADV_NOHUGEPAGE) };
    assert_eq!(r, 0, "madvise(MADV_NOHUGEPAGE)");
    let addr = addr as usize;
    for p in 0..populated {
        poke(addr, p, 1);
    }
    REGIONS
        .lock()
        .unwrap()
        .push((name.to_string(), addr, pages));
    println!("region {name} {addr}");
}

/// Write commands so far: each one writes values no earlier one wrote, so a
/// stale copy of a page never equals the page.
static WRITES: AtomicU32 = AtomicU32::new(0);

fn write_pages(rest: &str) {
    let round = WRITES.fetch_add(1, Ordering::SeqCst) as u8;
    let mut w = rest.split_whitespace();
    let (addr, pages) = find_region(w.next().unwrap());
    let mut n = 0;
    for spec in w {
        let (a, b) = match spec.split_once("..") {
            Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
            None => {
                let p: usize = spec.parse().unwrap();
                (p, p + 1)
            }
        };
        for p in a..b {
            assert!(p < pages);
            poke(
                addr,
                p,
                (p as u8)
                    .wrapping_add(7)
                    .wrapping_add(round.wrapping_mul(31)),
            );
            n += 1;
        }
    }
    println!("written {n}");
}

fn read_pages(rest: &str) {
    let mut w = rest.split_whitespace();
    let (addr, pages) = find_region(w.next().unwrap());
    let mut sum = 0u64;
    for spec in w {
        let (a, b) = match spec.split_once("..") {
            Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
            None => {
                let p: usize = spec.parse().unwrap();
                (p, p + 1)
            }
        };
        for p in a..b {
            assert!(p < pages);
            // SAFETY: inside a live readable mapping of ours.
            sum += unsafe { std::ptr::read_volatile((addr + p * 4096) as *const u8) } as u64;
        }
    }
    println!("read {sum}");
}

/// A userfaultfd of the testee's own over a region (MODE_MISSING), as a program
/// using userfaultfd for itself would have.
fn own_uffd(rest: &str) {
    let name = rest.trim();
    let (addr, pages) = find_region(name);
    #[repr(C)]
    struct Api {
        api: u64,
        features: u64,
        ioctls: u64,
    }
    #[repr(C)]
    struct Register {
        start: u64,
        len: u64,
        mode: u64,
        ioctls: u64,
    }
    // SAFETY: userfaultfd with integer flags (1 = UFFD_USER_MODE_ONLY); the
    // ioctls get properly sized structs (_IOWR(0xAA, 0x3F / 0x00, …)) alive
    // during the calls.
    unsafe {
        let fd = libc::syscall(
            libc::SYS_userfaultfd,
            libc::O_CLOEXEC | libc::O_NONBLOCK | 1,
        ) as i32;
        assert!(fd >= 0, "userfaultfd: {}", errno());
        let mut api = Api {
            api: 0xaa,
            features: 0,
            ioctls: 0,
        };
        let api_nr = (3u64 << 30) | (24 << 16) | (0xaa << 8) | 0x3f;
        assert_eq!(
            libc::ioctl(fd, api_nr as _, &mut api),
            0,
            "UFFDIO_API: {}",
            errno()
        );
        let mut reg = Register {
            start: addr as u64,
            len: (pages * 4096) as u64,
            mode: 1, // UFFDIO_REGISTER_MODE_MISSING
            ioctls: 0,
        };
        let reg_nr = (3u64 << 30) | (32 << 16) | (0xaa << 8);
        assert_eq!(
            libc::ioctl(fd, reg_nr as _, &mut reg),
            0,
            "UFFDIO_REGISTER: {}",
            errno()
        );
        println!("ownuffd {name} {fd}");
    }
}

/// A worker that spins inside an rseq critical section (x86_64, glibc >= 2.35
/// registers the rseq area): the kernel moves a preempted thread's pc from inside
/// the section to its abort handler when it returns to user space.
mod rseq {
    use std::sync::atomic::AtomicU64;
    #[cfg(all(target_arch = "x86_64", target_env = "gnu"))]
    use std::sync::atomic::Ordering;

    pub static ABORTS: AtomicU64 = AtomicU64::new(0);

    #[cfg(all(target_arch = "x86_64", target_env = "gnu"))]
    std::arch::global_asm!(
        ".text",
        ".globl predump_testee_rseq_loop",
        "predump_testee_rseq_loop:",
        ".globl predump_testee_rseq_start",
        "predump_testee_rseq_start:",
        "    add qword ptr [rdi], 1",
        "    jmp predump_testee_rseq_start",
        ".globl predump_testee_rseq_end",
        "predump_testee_rseq_end:",
        // The signature the kernel checks in the 4 bytes before the abort
        // handler: glibc registers RSEQ_SIG 0x53053053 (as `ud1 …, %edi`).
        "    .byte 0x0f, 0xb9, 0x3d",
        "    .long 0x53053053",
        ".globl predump_testee_rseq_abort",
        "predump_testee_rseq_abort:",
        "    ret",
    );

    #[cfg(all(target_arch = "x86_64", target_env = "gnu"))]
    extern "C" {
        fn predump_testee_rseq_loop(counter: *mut u64);
        fn predump_testee_rseq_start();
        fn predump_testee_rseq_end();
        fn predump_testee_rseq_abort();
        static __rseq_offset: isize;
        static __rseq_size: u32;
    }

    /// struct rseq_cs (include/uapi/linux/rseq.h), 32-byte aligned.
    #[cfg(all(target_arch = "x86_64", target_env = "gnu"))]
    #[repr(C, align(32))]
    struct Cs {
        version: u32,
        flags: u32,
        start_ip: u64,
        post_commit_offset: u64,
        abort_ip: u64,
    }

    #[cfg(all(target_arch = "x86_64", target_env = "gnu"))]
    pub fn spin() {
        // SAFETY: glibc's exported rseq layout symbols, read-only.
        let (offset, size) = unsafe { (__rseq_offset, __rseq_size) };
        if size == 0 {
            println!("rseq unavailable");
            return;
        }
        let start = predump_testee_rseq_start as unsafe extern "C" fn() as usize as u64;
        let cs = Box::leak(Box::new(Cs {
            version: 0,
            flags: 0,
            start_ip: start,
            post_commit_offset: predump_testee_rseq_end as unsafe extern "C" fn() as usize as u64
                - start,
            abort_ip: predump_testee_rseq_abort as unsafe extern "C" fn() as usize as u64,
        }));
        let tp: usize;
        // SAFETY: on x86_64 glibc, fs:0 holds the thread pointer (the TCB's self pointer).
        unsafe { std::arch::asm!("mov {}, fs:0", out(reg) tp) };
        let field = (tp as isize + offset + 8) as *mut u64; // rseq.rseq_cs
        let mut counter = 0u64;
        loop {
            // SAFETY: `field` is this thread's registered rseq area; the loop only
            // increments `counter` until the kernel aborts it to the handler.
            unsafe {
                std::ptr::write_volatile(field, cs as *const Cs as u64);
                predump_testee_rseq_loop(&mut counter);
            }
            ABORTS.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The critical section's code range, for the test to check where pc is.
    #[cfg(all(target_arch = "x86_64", target_env = "gnu"))]
    pub fn print_range() {
        println!(
            "addr rseq_start {}",
            predump_testee_rseq_start as unsafe extern "C" fn() as usize
        );
        println!(
            "addr rseq_end {}",
            predump_testee_rseq_end as unsafe extern "C" fn() as usize
        );
    }

    // The section is x86_64 assembly, and the registration is glibc's (its
    // __rseq_offset/__rseq_size, 2.35+; musl registers no rseq). Said before
    // "ready", where the test looks for it.
    #[cfg(not(all(target_arch = "x86_64", target_env = "gnu")))]
    pub fn print_range() {
        println!("rseq unavailable");
    }

    #[cfg(not(all(target_arch = "x86_64", target_env = "gnu")))]
    pub fn spin() {}
}
