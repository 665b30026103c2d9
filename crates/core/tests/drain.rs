//! drain.rs against real processes: this process lays out page regions filled with an
//! address-derived pattern, forks a child that inherits them, has the child unmap or
//! protect exactly the pages a case needs (acknowledged through a pipe, so no sleeps),
//! then reads the child with `fill_userbuf` / `drain` and checks regions and bytes.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use predump_core::drain::{batches, drain, fill_userbuf, DrainConfig, DrainEnd, Fill};
use predump_core::pages_out::PagesFile;
use predump_core::{Error, PageRange, PAGE_SIZE};

const P: usize = PAGE_SIZE as usize;

fn r(start: u64, pages: u64) -> PageRange {
    PageRange { start, pages }
}

/// The pattern: every u64 holds its own address, scrambled.
fn word(addr: u64) -> u64 {
    addr ^ 0x9E37_79B9_7F4A_7C15
}

fn pattern(regions: &[PageRange]) -> Vec<u8> {
    let mut v = Vec::new();
    for reg in regions {
        for a in (reg.start..reg.end()).step_by(8) {
            v.extend_from_slice(&word(a).to_ne_bytes());
        }
    }
    v
}

/// Checks that `buf` starts with exactly the pattern of `regions`' pages, back to back.
fn assert_pattern(buf: &[u8], regions: &[PageRange]) {
    let want = pattern(regions);
    assert!(buf.len() >= want.len(), "buffer shorter than the regions");
    for (i, (got, exp)) in buf.chunks(P).zip(want.chunks(P)).enumerate() {
        let addr = u64::from_ne_bytes(exp[..8].try_into().unwrap()) ^ word(0);
        assert!(
            got == exp,
            "page {i} (target address {addr:#x}) has wrong bytes"
        );
    }
}

/// `ranges` minus the `gone` pages (addresses), merged: what a read should yield.
fn minus(ranges: &[PageRange], gone: &[u64]) -> Vec<PageRange> {
    let mut out: Vec<PageRange> = Vec::new();
    for reg in ranges {
        for a in (reg.start..reg.end()).step_by(P) {
            if gone.contains(&a) {
                continue;
            }
            match out.last_mut() {
                Some(l) if l.end() == a => l.pages += 1,
                _ => out.push(r(a, 1)),
            }
        }
    }
    out
}

/// Page regions in this process, each preceded by a PROT_NONE guard page so no two
/// regions are adjacent (each is its own iovec). Unmapped on drop.
struct Layout {
    base: usize,
    len: usize,
    regions: Vec<PageRange>,
}

impl Layout {
    fn new(sizes: &[u64]) -> Layout {
        let pages: u64 = sizes.iter().map(|s| s + 1).sum::<u64>() + 1;
        let len = pages as usize * P;
        // SAFETY: a fresh PROT_NONE reservation aliases nothing.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let base = base as usize;
        let mut regions = Vec::new();
        let mut at = base + P;
        for &s in sizes {
            let n = s as usize * P;
            // SAFETY: [at, at+n) lies inside our reservation; nothing else uses it.
            unsafe {
                assert_eq!(
                    libc::mprotect(at as *mut _, n, libc::PROT_READ | libc::PROT_WRITE),
                    0
                );
                let words = std::slice::from_raw_parts_mut(at as *mut u64, n / 8);
                for (k, w) in words.iter_mut().enumerate() {
                    *w = word((at + 8 * k) as u64);
                }
            }
            regions.push(r(at as u64, s));
            at += n + P;
        }
        Layout { base, len, regions }
    }

    /// The address of page `page` of region `region`.
    fn page(&self, region: usize, page: u64) -> u64 {
        self.regions[region].start + page * PAGE_SIZE
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: our own reservation; no reference into it survives the test.
        unsafe { libc::munmap(self.base as *mut _, self.len) };
    }
}

/// Forks are serialized so that a child forked by a concurrent test never inherits
/// the child ends of our pipes (the ack pipe would then never report EOF).
static FORK_LOCK: Mutex<()> = Mutex::new(());

const OP_UNMAP: u64 = 0;
const OP_PROTECT_NONE: u64 = 1;

/// A forked copy of this process that changes its own mappings on command.
/// Killed (SIGKILL) and reaped on drop.
struct Child {
    pid: i32,
    cmd: File,
    ack: File,
    reaped: bool,
}

fn pipe() -> (RawFd, RawFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    (fds[0], fds[1])
}

/// The child's whole life: only async-signal-safe calls (we forked a threaded process).
///
/// # Safety
/// Call only in a freshly forked child, with the two fds it owns.
unsafe fn child_main(cmd_r: RawFd, ack_w: RawFd) -> ! {
    let mut msg = [0u64; 3];
    loop {
        let mut got = 0usize;
        while got < 24 {
            let n = libc::read(
                cmd_r,
                (msg.as_mut_ptr() as *mut u8).add(got).cast(),
                24 - got,
            );
            if n <= 0 {
                libc::_exit(0);
            }
            got += n as usize;
        }
        let (addr, len) = (msg[1] as *mut libc::c_void, msg[2] as usize);
        let rc = match msg[0] {
            OP_UNMAP => libc::munmap(addr, len),
            _ => libc::mprotect(addr, len, libc::PROT_NONE),
        };
        let ack = [u8::from(rc == 0)];
        libc::write(ack_w, ack.as_ptr().cast(), 1);
    }
}

impl Child {
    fn spawn() -> Child {
        let _guard = FORK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let (cmd_r, cmd_w) = pipe();
        let (ack_r, ack_w) = pipe();
        // SAFETY: the child runs only async-signal-safe code (child_main).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: we are the fresh child and own these fds.
            unsafe {
                libc::close(cmd_w);
                libc::close(ack_r);
                child_main(cmd_r, ack_w)
            }
        }
        // SAFETY: the child's ends are ours to close; the others become Files we own.
        unsafe {
            libc::close(cmd_r);
            libc::close(ack_w);
            Child {
                pid,
                cmd: File::from_raw_fd(cmd_w),
                ack: File::from_raw_fd(ack_r),
                reaped: false,
            }
        }
    }

    fn command(&mut self, op: u64, addr: u64, pages: u64) {
        let mut msg = Vec::with_capacity(24);
        for v in [op, addr, pages * PAGE_SIZE] {
            msg.extend_from_slice(&v.to_ne_bytes());
        }
        self.cmd.write_all(&msg).unwrap();
        let mut ack = [0u8];
        self.ack.read_exact(&mut ack).expect("child died");
        assert_eq!(ack[0], 1, "child's munmap/mprotect failed");
    }

    fn unmap(&mut self, addr: u64, pages: u64) {
        self.command(OP_UNMAP, addr, pages);
    }

    fn protect_none(&mut self, addr: u64, pages: u64) {
        self.command(OP_PROTECT_NONE, addr, pages);
    }

    /// SIGKILL, then wait until it is a zombie without reaping it: its pid stays
    /// taken (no reuse), and it has no memory left.
    fn kill_to_zombie(&mut self) {
        // SAFETY: plain syscalls on our own child's pid.
        unsafe {
            assert_eq!(libc::kill(self.pid, libc::SIGKILL), 0);
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let rc = libc::waitid(
                libc::P_PID,
                self.pid as _,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            );
            assert_eq!(rc, 0);
        }
    }

    fn kill_and_reap(&mut self) {
        // SAFETY: plain syscalls on our own child's pid.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            assert_eq!(libc::waitpid(self.pid, std::ptr::null_mut(), 0), self.pid);
        }
        self.reaped = true;
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: our own child, not yet reaped, so the pid is still its.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// A file in the temp directory, removed on drop.
struct TempFile {
    path: PathBuf,
    file: File,
}

impl TempFile {
    fn new(append: bool) -> TempFile {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "predump-drain-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .append(append)
            .create_new(true)
            .open(&path)
            .unwrap();
        TempFile { path, file }
    }

    /// The file as a drain's output (the same open file: one position).
    fn out(&self) -> PagesFile {
        PagesFile::new(self.file.try_clone().unwrap(), &self.path)
    }

    fn contents(&self) -> Vec<u8> {
        let mut f = File::open(&self.path).unwrap();
        let mut v = Vec::new();
        f.read_to_end(&mut v).unwrap();
        v
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Layout `sizes`, fork, make the `gone` pages (region, page) disappear with `op`,
/// then read all regions as one batch. Checks the bytes and pages_gone, returns the fill.
fn fill_case(sizes: &[u64], gone: &[(usize, u64)], op: u64) -> (Layout, Fill) {
    let layout = Layout::new(sizes);
    let mut child = Child::spawn();
    let gone: Vec<u64> = gone.iter().map(|&(reg, p)| layout.page(reg, p)).collect();
    for &a in &gone {
        child.command(op, a, 1);
    }
    let all: Vec<Vec<PageRange>> = batches(&layout.regions, 1024, u64::MAX).collect();
    assert_eq!(all.len(), 1);
    let mut buf = vec![0u8; sizes.iter().sum::<u64>() as usize * P];
    let fill = fill_userbuf(child.pid, &all[0], &mut buf).unwrap();
    assert!(!fill.exited);
    assert_eq!(fill.regions, minus(&layout.regions, &gone));
    assert_eq!(fill.pages_gone, gone.len() as u64);
    let read: u64 = fill.regions.iter().map(|x| x.pages).sum();
    assert_eq!(fill.bytes as u64, read * PAGE_SIZE);
    assert_pattern(&buf[..fill.bytes], &fill.regions);
    (layout, fill)
}

// The seed's layout {A,1}{B,1}{C,4}.
const SEED: [u64; 3] = [1, 1, 4];
const A: usize = 0;
const B: usize = 1;
const C: usize = 2;

#[test]
fn nothing_gone_reads_all_in_one_call() {
    let (l, fill) = fill_case(&SEED, &[], OP_UNMAP);
    assert_eq!(fill.regions, l.regions);
    assert_eq!(fill.readv_calls, 1);
}

#[test]
fn case1_first_iov_gone() {
    let (l, fill) = fill_case(&SEED, &[(A, 0)], OP_UNMAP);
    assert_eq!(fill.regions, vec![l.regions[B], l.regions[C]]);
    // EFAULT on A, then B and C in one call.
    assert_eq!(fill.readv_calls, 2);
}

#[test]
fn case2_middle_one_page_iov_gone() {
    let (l, fill) = fill_case(&SEED, &[(B, 0)], OP_UNMAP);
    assert_eq!(fill.regions, vec![l.regions[A], l.regions[C]]);
    // A (short read), EFAULT on B, then C.
    assert_eq!(fill.readv_calls, 3);
}

#[test]
fn case31_first_page_of_multi_page_iov_gone() {
    let (l, fill) = fill_case(&SEED, &[(C, 0)], OP_UNMAP);
    assert_eq!(
        fill.regions,
        vec![l.regions[A], l.regions[B], r(l.page(C, 1), 3)]
    );
    assert_eq!(fill.readv_calls, 3);
}

#[test]
fn case32_middle_page_of_multi_page_iov_gone() {
    let (l, fill) = fill_case(&SEED, &[(C, 2)], OP_UNMAP);
    assert_eq!(
        fill.regions,
        vec![
            l.regions[A],
            l.regions[B],
            r(l.page(C, 0), 2),
            r(l.page(C, 3), 1)
        ]
    );
    // A, B, C+0..2 (short read inside C), EFAULT on C+2, then C+3.
    assert_eq!(fill.readv_calls, 3);
}

#[test]
fn case32_with_prot_none_instead_of_unmap() {
    let (l, fill) = fill_case(&SEED, &[(C, 2)], OP_PROTECT_NONE);
    assert_eq!(
        fill.regions,
        vec![
            l.regions[A],
            l.regions[B],
            r(l.page(C, 0), 2),
            r(l.page(C, 3), 1)
        ]
    );
}

#[test]
fn several_pages_gone_across_iovs() {
    let (l, fill) = fill_case(&SEED, &[(A, 0), (C, 1), (C, 3)], OP_UNMAP);
    assert_eq!(
        fill.regions,
        vec![l.regions[B], r(l.page(C, 0), 1), r(l.page(C, 2), 1)]
    );
}

#[test]
fn adjacent_pages_gone_inside_a_long_iov() {
    let (l, fill) = fill_case(&[2, 40, 3], &[(1, 5), (1, 6), (1, 7), (1, 30)], OP_UNMAP);
    assert_eq!(fill.regions.len(), 5);
    assert_eq!(fill.regions[1], r(l.page(1, 0), 5));
}

#[test]
fn last_page_of_batch_gone() {
    let (l, fill) = fill_case(&SEED, &[(C, 3)], OP_UNMAP);
    assert_eq!(
        fill.regions,
        vec![l.regions[A], l.regions[B], r(l.page(C, 0), 3)]
    );
    assert_eq!(fill.readv_calls, 2);
}

#[test]
fn everything_gone() {
    let gone: Vec<(usize, u64)> = vec![(A, 0), (B, 0), (C, 0), (C, 1), (C, 2), (C, 3)];
    let (_l, fill) = fill_case(&SEED, &gone, OP_UNMAP);
    assert!(fill.regions.is_empty());
    assert_eq!(fill.bytes, 0);
    assert_eq!(fill.readv_calls, 6);
}

#[test]
fn exactly_1024_iovs_in_one_call() {
    let (l, fill) = fill_case(&[1; 1024], &[], OP_UNMAP);
    assert_eq!(fill.regions, l.regions);
    assert_eq!(fill.readv_calls, 1);
}

#[test]
fn more_than_1024_iovs_in_one_batch_are_chunked() {
    let layout = Layout::new(&[1; 1100]);
    let child = Child::spawn();
    let mut buf = vec![0u8; 1100 * P];
    let fill = fill_userbuf(child.pid, &layout.regions, &mut buf).unwrap();
    assert_eq!(fill.regions, layout.regions);
    assert_eq!(fill.readv_calls, 2);
    assert_pattern(&buf, &layout.regions);
}

#[test]
fn fill_userbuf_rejects_a_short_buffer() {
    let mut buf = vec![0u8; P];
    let err = fill_userbuf(1, &[r(0x10000, 2)], &mut buf).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
}

#[test]
fn fill_userbuf_on_a_reaped_child_says_exited() {
    let layout = Layout::new(&SEED);
    let mut child = Child::spawn();
    child.kill_and_reap();
    let mut buf = vec![0u8; 6 * P];
    let fill = fill_userbuf(child.pid, &layout.regions, &mut buf).unwrap();
    assert!(fill.exited);
    assert_eq!(fill.bytes, 0);
    assert!(fill.regions.is_empty());
}

#[test]
fn batches_merge_adjacent_ranges() {
    let got: Vec<_> = batches(&[r(0x1000, 2), r(0x3000, 1), r(0x5000, 1)], 1024, 1 << 20).collect();
    assert_eq!(got, vec![vec![r(0x1000, 3), r(0x5000, 1)]]);
}

#[test]
fn batches_respect_1024_iovs() {
    let ranges: Vec<_> = (0..2049)
        .map(|i| r(0x10000 + i * 2 * PAGE_SIZE, 1))
        .collect();
    let got: Vec<_> = batches(&ranges, 1024, u64::MAX).collect();
    assert_eq!(
        got.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![1024, 1024, 1]
    );
    assert_eq!(got.concat(), ranges);
}

#[test]
fn batches_iov_limit_does_not_count_merged_ranges() {
    // 3000 adjacent one-page ranges are one iovec.
    let ranges: Vec<_> = (0..3000).map(|i| r(0x10000 + i * PAGE_SIZE, 1)).collect();
    let got: Vec<_> = batches(&ranges, 2, u64::MAX).collect();
    assert_eq!(got, vec![vec![r(0x10000, 3000)]]);
}

#[test]
fn batches_split_long_ranges_at_max_bytes() {
    // 4.5 pages round down to 4.
    let got: Vec<_> =
        batches(&[r(0x10000, 10), r(0x30000, 3)], 1024, 4 * PAGE_SIZE + 2048).collect();
    assert_eq!(
        got,
        vec![
            vec![r(0x10000, 4)],
            vec![r(0x14000, 4)],
            vec![r(0x18000, 2), r(0x30000, 2)],
            vec![r(0x32000, 1)],
        ]
    );
}

#[test]
fn batches_skip_empty_ranges() {
    assert_eq!(batches(&[], 1024, 1 << 20).count(), 0);
    let got: Vec<_> = batches(&[r(0x1000, 0), r(0x4000, 1), r(0x8000, 0)], 1024, 1 << 20).collect();
    assert_eq!(got, vec![vec![r(0x4000, 1)]]);
}

/// What a 4 MiB pipe request gives here: 4 MiB with CAP_SYS_RESOURCE, else the
/// largest size /proc/sys/fs/pipe-max-size allows (1 MiB by default).
fn default_pipe_size() -> usize {
    let (rd, wr) = pipe();
    // SAFETY: plain fcntl calls on a pipe we own, closed right after.
    unsafe {
        if libc::fcntl(wr, libc::F_SETPIPE_SZ, 4 << 20) < 0 {
            let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size").unwrap();
            libc::fcntl(
                wr,
                libc::F_SETPIPE_SZ,
                max.trim().parse::<i32>().unwrap().min(4 << 20),
            );
        }
        let size = libc::fcntl(wr, libc::F_GETPIPE_SZ) as usize;
        libc::close(rd);
        libc::close(wr);
        size
    }
}

fn small_config(buffer_bytes: usize) -> DrainConfig {
    DrainConfig {
        buffer_bytes,
        ..DrainConfig::default()
    }
}

#[test]
fn drain_writes_pattern_from_current_position_and_merges_regions() {
    let layout = Layout::new(&[3, 1, 8, 2]);
    let mut child = Child::spawn();
    let gone = layout.page(2, 6);
    child.unmap(gone, 1);
    // Region 2 comes split in two adjacent ranges: the output merges them again.
    let mut ranges = layout.regions.clone();
    let second = r(ranges[2].start + 4 * PAGE_SIZE, 4);
    ranges[2].pages = 4;
    ranges.insert(3, second);

    let mut tmp = TempFile::new(false);
    tmp.file.write_all(b"header").unwrap();
    let progress = AtomicU64::new(0);
    let out = drain(
        child.pid,
        &ranges,
        &mut tmp.out(),
        &DrainConfig::default(),
        Some(&progress),
    )
    .unwrap();

    assert_eq!(out.end, DrainEnd::Complete);
    assert_eq!(out.regions, minus(&layout.regions, &[gone]));
    assert_eq!(out.regions[2], r(layout.page(2, 0), 6));
    assert_eq!(out.stats.pages_requested, 14);
    assert_eq!(out.stats.pages_written, 13);
    assert_eq!(out.stats.pages_gone, 1);
    assert_eq!(out.stats.bytes_written, 13 * PAGE_SIZE);
    assert_eq!(progress.load(Ordering::Relaxed), 13 * PAGE_SIZE);
    assert_eq!(out.stats.buffer_bytes, default_pipe_size());
    let data = tmp.contents();
    assert_eq!(&data[..6], b"header");
    assert_eq!(data[6..], pattern(&out.regions)[..]);
    assert_eq!(tmp.file.stream_position().unwrap(), data.len() as u64);
}

#[test]
fn drain_splits_a_range_longer_than_the_buffer() {
    let layout = Layout::new(&[2, 100, 1]);
    let child = Child::spawn();
    let tmp = TempFile::new(false);
    let out = drain(
        child.pid,
        &layout.regions,
        &mut tmp.out(),
        &small_config(64 << 10),
        None,
    )
    .unwrap();
    assert_eq!(out.stats.buffer_bytes, 64 << 10);
    assert_eq!(out.regions, layout.regions);
    // 103 pages in batches of 16 pages.
    assert_eq!(out.stats.readv_calls, 7);
    assert_eq!(tmp.contents(), pattern(&layout.regions));
}

#[test]
fn drain_buffer_is_the_real_pipe_size() {
    // 100 KiB = 25 pages: the kernel rounds pipes up to a power of two pages.
    let layout = Layout::new(&[40]);
    let child = Child::spawn();
    let tmp = TempFile::new(false);
    let out = drain(
        child.pid,
        &layout.regions,
        &mut tmp.out(),
        &small_config(100 << 10),
        None,
    )
    .unwrap();
    assert_eq!(out.stats.buffer_bytes, 128 << 10);
    assert_eq!(out.stats.readv_calls, 2);
    assert_eq!(tmp.contents(), pattern(&layout.regions));
}

#[test]
fn drain_many_mappings_over_several_batches() {
    let layout = Layout::new(&[1; 2500]);
    let mut child = Child::spawn();
    let gone = [
        layout.page(0, 0),
        layout.page(1023, 0),
        layout.page(1024, 0),
        layout.page(2499, 0),
    ];
    for &g in &gone {
        child.protect_none(g, 1);
    }
    let tmp = TempFile::new(false);
    let out = drain(
        child.pid,
        &layout.regions,
        &mut tmp.out(),
        &DrainConfig::default(),
        None,
    )
    .unwrap();
    assert_eq!(out.regions, minus(&layout.regions, &gone));
    assert_eq!(out.stats.pages_gone, 4);
    assert_eq!(tmp.contents(), pattern(&out.regions));
}

#[test]
fn drain_into_an_append_only_file() {
    // splice refuses O_APPEND files (EINVAL): drain falls back to read + write.
    let layout = Layout::new(&[5, 20]);
    let child = Child::spawn();
    let mut tmp = TempFile::new(true);
    tmp.file.write_all(b"x").unwrap();
    let out = drain(
        child.pid,
        &layout.regions,
        &mut tmp.out(),
        &small_config(32 << 10),
        None,
    )
    .unwrap();
    assert_eq!(out.regions, layout.regions);
    let data = tmp.contents();
    assert_eq!(data[0], b'x');
    assert_eq!(data[1..], pattern(&layout.regions)[..]);
}

#[test]
fn drain_everything_gone_writes_nothing() {
    let layout = Layout::new(&SEED);
    let mut child = Child::spawn();
    for reg in layout.regions.clone() {
        child.unmap(reg.start, reg.pages);
    }
    let tmp = TempFile::new(false);
    let out = drain(
        child.pid,
        &layout.regions,
        &mut tmp.out(),
        &DrainConfig::default(),
        None,
    )
    .unwrap();
    assert_eq!(out.end, DrainEnd::Complete);
    assert!(out.regions.is_empty());
    assert_eq!(out.stats.pages_gone, 6);
    assert!(tmp.contents().is_empty());
}

#[test]
fn drain_of_an_exited_target_is_a_partial_dump_not_an_error() {
    let layout = Layout::new(&SEED);
    let mut child = Child::spawn();
    child.kill_to_zombie();
    let tmp = TempFile::new(false);
    let out = drain(
        child.pid,
        &layout.regions,
        &mut tmp.out(),
        &DrainConfig::default(),
        None,
    )
    .unwrap();
    assert_eq!(out.end, DrainEnd::TargetExited);
    assert!(out.regions.is_empty());
    assert_eq!(out.stats.pages_written, 0);
    assert!(tmp.contents().is_empty());
}

#[test]
fn drain_of_nothing() {
    let tmp = TempFile::new(false);
    let out = drain(1, &[], &mut tmp.out(), &DrainConfig::default(), None).unwrap();
    assert_eq!(out.end, DrainEnd::Complete);
    assert!(out.regions.is_empty());
    assert_eq!(out.stats.readv_calls, 0);
}

#[test]
fn drain_rejects_unsorted_ranges() {
    let tmp = TempFile::new(false);
    let err = drain(
        1,
        &[r(0x5000, 1), r(0x1000, 1)],
        &mut tmp.out(),
        &DrainConfig::default(),
        None,
    )
    .unwrap_err();
    assert_eq!(err.code(), "EINVAL");
}

#[test]
fn drain_to_a_full_device_is_no_space_and_does_not_hang() {
    // /dev/full has no splice_write (EINVAL, so the copy fallback runs) and fails
    // every write with ENOSPC, while the reader still has batches to feed.
    let layout = Layout::new(&[64, 64, 64]);
    let child = Child::spawn();
    let full = OpenOptions::new().write(true).open("/dev/full").unwrap();
    let err = drain(
        child.pid,
        &layout.regions,
        &mut PagesFile::new(full, std::path::Path::new("/dev/full")),
        &small_config(64 << 10),
        None,
    )
    .unwrap_err();
    assert!(matches!(err, Error::NoSpace { .. }), "{err}");
}

/// An output that takes the drain's buffers (as a page server's connection
/// does): keeps what it is handed, or fails at its `fail_at`-th call.
struct Buffers {
    data: Vec<u8>,
    regions: Vec<PageRange>,
    calls: usize,
    fail_at: Option<usize>,
}

impl predump_core::pages_out::PagesOut for Buffers {
    fn takes_buffers(&self) -> bool {
        true
    }
    fn write_from_buffer(
        &mut self,
        data: &[u8],
        regions: &[PageRange],
    ) -> predump_core::Result<()> {
        self.calls += 1;
        if self.fail_at == Some(self.calls) {
            return Err(Error::InvalidArgument("the test's output failed".into()));
        }
        assert_eq!(
            data.len() as u64,
            regions.iter().map(|r| r.len()).sum::<u64>(),
            "the bytes handed over are the regions'"
        );
        self.data.extend_from_slice(data);
        self.regions.extend_from_slice(regions);
        Ok(())
    }
    fn write_from_pipe(
        &mut self,
        _: std::os::fd::BorrowedFd<'_>,
        _: &[PageRange],
        len: usize,
    ) -> std::result::Result<(), (Error, usize)> {
        Err((
            Error::InvalidArgument("a pipe for an output that takes buffers".into()),
            len,
        ))
    }
    fn finish(&mut self) -> predump_core::Result<()> {
        Ok(())
    }
    fn pagemap_entries(&self) -> usize {
        0
    }
    fn describe(&self) -> String {
        "the test's buffers".into()
    }
}

#[test]
fn an_output_that_takes_buffers_gets_every_page_from_them_in_order() {
    // 2 + 100 + 1 pages in 16-page buffers, one page gone: both buffers reused
    // several times, and what the output was handed is the pattern.
    let layout = Layout::new(&[2, 100, 1]);
    let mut child = Child::spawn();
    let gone = layout.page(1, 40);
    child.unmap(gone, 1);
    let mut out = Buffers {
        data: Vec::new(),
        regions: Vec::new(),
        calls: 0,
        fail_at: None,
    };
    let progress = AtomicU64::new(0);
    let got = drain(
        child.pid,
        &layout.regions,
        &mut out,
        &small_config(64 << 10),
        Some(&progress),
    )
    .unwrap();
    assert_eq!(got.regions, minus(&layout.regions, &[gone]));
    assert_eq!(got.stats.pages_written, 102);
    assert_eq!(got.stats.bytes_written, 102 * PAGE_SIZE);
    assert_eq!(progress.load(Ordering::Relaxed), 102 * PAGE_SIZE);
    assert_eq!(out.calls, 7);
    assert_eq!(out.data, pattern(&got.regions));
    let mut merged = Vec::new();
    for r in &out.regions {
        predump_core::push_merged(&mut merged, r.start, r.pages);
    }
    assert_eq!(merged, got.regions);
}

#[test]
fn an_output_that_takes_buffers_and_fails_ends_the_drain_with_its_error() {
    // Fails at its second buffer of 19: the reader, with batches left, must
    // neither hang nor hide the error.
    let layout = Layout::new(&[300]);
    let child = Child::spawn();
    let mut out = Buffers {
        data: Vec::new(),
        regions: Vec::new(),
        calls: 0,
        fail_at: Some(2),
    };
    let err = drain(
        child.pid,
        &layout.regions,
        &mut out,
        &small_config(64 << 10),
        None,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("the test's output failed"),
        "{err}"
    );
    assert_eq!(
        out.data,
        pattern(&layout.regions)[..16 * PAGE_SIZE as usize]
    );
}
