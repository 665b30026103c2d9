// About 800 lines with its tests: the code is under 500; the unit tests below it
// need real mappings of this process and belong next to the walk they check.

//! Finding the pages worth dumping: present (or swapped) and not the shared zero
//! page, in the mappings CRIU's pre-dump keeps; of a private file mapping only the
//! pages no longer the file's, of the vDSO every page (`maps::Take`: CRIU's rules).
//!
//! The kernel's PAGEMAP_SCAN ioctl (Linux 6.7+) answers with ranges, filtered in
//! the kernel, at about 2.75 ms per GiB here; older kernels get /proc/PID/pagemap
//! read in large chunks (8 bytes a page, about three times slower).
//!
//! The walk is the kernel's, one page table entry at a time, and a frozen target
//! leaves the other CPUs free: a large scan is cut into chunks that the calling
//! thread and helpers (one per further CPU, up to 3) take in turn, so a helper
//! that does not get a CPU costs at most the chunk it holds. For a frozen target
//! they run real-time (`present_frozen`); 1 GiB here: 3.1 → 1.8 ms, 4 GiB:
//! 11.7 → 6.3 ms. `PREDUMP_SCAN_THREADS=1` keeps the scan on one thread.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::freeze::{Frozen, Urgent};
use crate::maps::{Skip, Take, VmFlags, Vma};
use crate::sys::pagemap::{
    self, PageRegion, ScanQuery, PAGE_IS_FILE, PAGE_IS_PFNZERO, PAGE_IS_PRESENT, PAGE_IS_SWAPPED,
    PM_FILE, PM_PFN_MASK, PM_PRESENT, PM_SWAP, SWP_PTE_MARKER, SWP_TYPE_MASK,
};
use crate::{push_merged, Error, PageRange, Result, PAGE_SIZE};

/// Regions asked of the kernel per PAGEMAP_SCAN call; a full vector is continued
/// from `walk_end`.
const SCAN_VEC_LEN: usize = 4096;
/// Pagemap entries read per pread in the fallback (512 KiB).
const PAGEMAP_CHUNK: usize = 64 * 1024;
/// Scans smaller than this (64 MiB) run on the calling thread alone: starting a
/// helper costs about what scanning 10 MiB does.
const PARALLEL_MIN_PAGES: u64 = 16 * 1024;
/// Pages per chunk of a parallel scan (32 MiB, ~90 µs of walking here).
const CHUNK_PAGES: u64 = 8 * 1024;
/// Helper threads at most, besides the caller.
const MAX_HELPERS: usize = 3;

/// How present pages are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanMethod {
    PagemapScan,
    PagemapRead,
}

impl ScanMethod {
    pub fn name(self) -> &'static str {
        match self {
            ScanMethod::PagemapScan => "PAGEMAP_SCAN",
            ScanMethod::PagemapRead => "pagemap",
        }
    }
}

/// What a scan found.
#[derive(Debug, Clone, Default)]
pub struct ScanResult {
    /// Present pages, sorted, adjacent pages merged (across mappings too).
    pub ranges: Vec<PageRange>,
    /// Pages of the mappings examined (CRIU's pages_scanned).
    pub pages_scanned: u64,
    pub pages_present: u64,
    pub vmas_scanned: usize,
    pub vmas_skipped: usize,
    /// Pages of the mappings left out for being unreadable (see
    /// `PreDumpReport::unreadable_pages`).
    pub unreadable_pages: u64,
}

/// An open /proc/PID/pagemap and the method that works on it.
pub struct Scanner {
    pagemap: File,
    method: ScanMethod,
    /// Our shared zero page's frame number, to drop zero pages in the fallback
    /// (None when PFNs are hidden from us).
    zero_pfn: Option<u64>,
    /// The caller's PAGEMAP_SCAN result vector (helpers make their own).
    vec: Vec<PageRegion>,
    helpers: usize,
    pid: i32,
}

/// A failed PAGEMAP_SCAN or pagemap read (`what`) of process `pid`, mapped
/// the same way wherever a target's pagemap is read (here and in `track`):
/// ESRCH means the process exited.
pub(crate) fn pagemap_error(pid: i32, what: &str, e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::ESRCH) => Error::TargetExited { pid },
        _ => Error::sys(format!("{what} of process {pid}"), e),
    }
}

/// A stretch of address space to scan, and whether the file's own pages are left
/// out (`Take::PresentNotFile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u64,
    end: u64,
    not_file: bool,
}

/// What one scanning thread needs: the shared pagemap and how to read it.
/// Who scans: the calling thread alone, or with helpers when the scan is big.
#[derive(Clone, Copy)]
enum Threads {
    Caller,
    Helpers { realtime: bool },
}

#[derive(Clone, Copy)]
struct Walk<'a> {
    pagemap: &'a File,
    method: ScanMethod,
    zero_pfn: Option<u64>,
    pid: i32,
}

impl Scanner {
    /// Opens the target's pagemap (before freezing: opening is not free) and
    /// finds out whether PAGEMAP_SCAN works.
    pub fn open(pid: i32) -> Result<Scanner> {
        Self::open_with(pid, None)
    }

    /// Like `open`, forcing a method (tests and the kernel matrix use it).
    pub fn open_with(pid: i32, force: Option<ScanMethod>) -> Result<Scanner> {
        let pagemap =
            File::open(format!("/proc/{pid}/pagemap")).map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ESRCH) => Error::NoSuchProcess { pid },
                Some(libc::EACCES) | Some(libc::EPERM) => Error::Permission {
                    pid,
                    action: "read the page map of",
                    source: e,
                },
                _ => Error::sys(format!("open /proc/{pid}/pagemap"), e),
            })?;
        // PREDUMP_SCAN_THREADS=N: at most N threads in all (1: the caller alone).
        let wanted = std::env::var("PREDUMP_SCAN_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n >= 1);
        let helpers = std::thread::available_parallelism()
            .map_or(0, |n| n.get() - 1)
            .min(wanted.map_or(MAX_HELPERS, |n| n - 1))
            .min(MAX_HELPERS);
        let mut scanner = Scanner {
            pagemap,
            method: ScanMethod::PagemapScan,
            zero_pfn: None,
            vec: vec![PageRegion::default(); SCAN_VEC_LEN],
            helpers,
            pid,
        };
        scanner.method = match force {
            Some(m) => m,
            None if scanner.pagemap_scan_works() => ScanMethod::PagemapScan,
            None => ScanMethod::PagemapRead,
        };
        if scanner.method == ScanMethod::PagemapRead {
            scanner.zero_pfn = own_zero_pfn();
        }
        Ok(scanner)
    }

    pub fn method(&self) -> ScanMethod {
        self.method
    }

    /// An empty scan of page 0, where nothing is ever mapped: ENOTTY on kernels
    /// without the ioctl.
    fn pagemap_scan_works(&mut self) -> bool {
        scan_call(&self.pagemap, 0, PAGE_SIZE, false, &mut self.vec).is_ok()
    }

    /// Finds the present pages of `vmas` (already filtered; sorted by address)
    /// of a running target: at normal priority, whatever the target needs the
    /// CPUs for.
    pub fn present(&mut self, vmas: &[&Vma]) -> Result<ScanResult> {
        self.present_with(vmas, false)
    }

    /// `present` for a target we hold frozen: its CPUs are idle until the thaw,
    /// so the scan threads run real-time (see freeze::Urgent) and no other
    /// work on the machine can stretch the stop.
    /// (`_frozen` is only the proof that it is.)
    pub fn present_frozen(&mut self, _frozen: &Frozen, vmas: &[&Vma]) -> Result<ScanResult> {
        self.present_with(vmas, true)
    }

    /// `present_frozen` for a target the caller holds stopped on another
    /// thread (a tree's processes, scanned concurrently while the tree is
    /// frozen): the caller vouches that it is. In the calling thread alone:
    /// the caller already keeps every CPU busy with one process each, and
    /// starting helpers for every process cost more than the scans (a tree of
    /// 100 processes, each with two 64 MiB malloc arena reservations: 19 ms
    /// stopped with helpers, see docs/TREES.md).
    pub(crate) fn present_stopped(&mut self, vmas: &[&Vma]) -> Result<ScanResult> {
        self.present_in(vmas, Threads::Caller)
    }

    fn present_with(&mut self, vmas: &[&Vma], realtime: bool) -> Result<ScanResult> {
        self.present_in(vmas, Threads::Helpers { realtime })
    }

    fn present_in(&mut self, vmas: &[&Vma], threads: Threads) -> Result<ScanResult> {
        let mut out = ScanResult {
            vmas_scanned: vmas.len(),
            pages_scanned: vmas.iter().map(|v| v.pages()).sum(),
            ..Default::default()
        };
        let mut whole = Vec::new();
        let mut spans = Vec::with_capacity(vmas.len());
        for v in vmas {
            match crate::maps::take(v) {
                Take::All => whole.push(PageRange::new(v.start, v.pages())),
                take => spans.push(Span {
                    start: v.start,
                    end: v.end,
                    not_file: take == Take::PresentNotFile,
                }),
            }
        }
        let parallel = match threads {
            Threads::Helpers { realtime }
                if self.helpers > 0 && out.pages_scanned >= PARALLEL_MIN_PAGES =>
            {
                Some(realtime)
            }
            _ => None,
        };
        if let Some(realtime) = parallel {
            out.ranges = self.present_parallel(&spans, realtime)?;
        } else {
            let walk = Walk {
                pagemap: &self.pagemap,
                method: self.method,
                zero_pfn: self.zero_pfn,
                pid: self.pid,
            };
            for &span in &spans {
                walk.range(span, &mut self.vec, &mut out.ranges)?;
            }
        }
        if !whole.is_empty() {
            whole.append(&mut out.ranges);
            out.ranges = crate::merged(whole);
        }
        out.pages_present = out.ranges.iter().map(|r| r.pages).sum();
        Ok(out)
    }

    /// The chunks of `spans`, taken in turn by this thread and the helpers;
    /// the results put back in address order.
    fn present_parallel(&mut self, spans: &[Span], realtime: bool) -> Result<Vec<PageRange>> {
        let chunks = chunks(spans, CHUNK_PAGES);
        let next = AtomicUsize::new(0);
        let done: Vec<Mutex<Option<Result<Vec<PageRange>>>>> =
            chunks.iter().map(|_| Mutex::new(None)).collect();
        let walk = Walk {
            pagemap: &self.pagemap,
            method: self.method,
            zero_pfn: self.zero_pfn,
            pid: self.pid,
        };
        let work = |vec: &mut Vec<PageRegion>| loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(chunk) = chunks.get(i) else { break };
            let mut found = Vec::new();
            let r = chunk
                .iter()
                .try_for_each(|&span| walk.range(span, vec, &mut found))
                .map(|()| found);
            let failed = r.is_err();
            *done[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
            if failed {
                // The others stop taking chunks; the error is reported below.
                next.store(chunks.len(), Ordering::Relaxed);
            }
        };
        let vec = &mut self.vec;
        // Real-time while scanning (see freeze::Urgent), helpers included from
        // their start: one that waits for a CPU busy with other work adds nothing.
        let urgent = realtime.then(Urgent::raise_inherited);
        std::thread::scope(|s| {
            for _ in 0..self.helpers.min(chunks.len() - 1) {
                // A helper that cannot be started (thread limit, memory) is
                // no error: the caller takes its chunks.
                let _ = std::thread::Builder::new()
                    .name("predump-scan".into())
                    .spawn_scoped(s, || work(&mut vec![PageRegion::default(); SCAN_VEC_LEN]));
            }
            work(vec);
        });
        drop(urgent);
        let mut ranges = Vec::new();
        for slot in done {
            match slot.into_inner().unwrap_or_else(|p| p.into_inner()) {
                Some(Ok(found)) => {
                    for r in found {
                        push_merged(&mut ranges, r.start, r.pages);
                    }
                }
                Some(Err(e)) => return Err(e),
                // Not taken: only after another chunk failed (returned above,
                // as chunks are taken in order).
                None => {}
            }
        }
        Ok(ranges)
    }
}

/// Cuts `spans` (sorted, disjoint) into chunks of about `pages` pages each, in
/// address order; a span larger than a chunk is cut at page boundaries.
fn chunks(spans: &[Span], pages: u64) -> Vec<Vec<Span>> {
    let limit = pages * PAGE_SIZE;
    let mut out: Vec<Vec<Span>> = Vec::new();
    let mut current: Vec<Span> = Vec::new();
    let mut filled = 0;
    for &span in spans {
        let mut at = span.start;
        while at < span.end {
            let take = (span.end - at).min(limit - filled);
            current.push(Span {
                start: at,
                end: at + take,
                ..span
            });
            filled += take;
            at += take;
            if filled == limit {
                out.push(std::mem::take(&mut current));
                filled = 0;
            }
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

impl Walk<'_> {
    fn range(self, span: Span, vec: &mut [PageRegion], out: &mut Vec<PageRange>) -> Result<()> {
        match self.method {
            ScanMethod::PagemapScan => self.scan_ioctl(span, vec, out),
            ScanMethod::PagemapRead => self.scan_read(span, out),
        }
    }

    fn scan_ioctl(
        self,
        span: Span,
        vec: &mut [PageRegion],
        out: &mut Vec<PageRange>,
    ) -> Result<()> {
        let (end, mut at) = (span.end, span.start);
        while at < end {
            let (n, walk_end) = scan_call(self.pagemap, at, end, span.not_file, vec)
                .map_err(|e| pagemap_error(self.pid, "PAGEMAP_SCAN", e))?;
            let mut reported = at;
            for r in &vec[..n] {
                if r.categories & PAGE_IS_PRESENT == 0 {
                    // Swapped: a real page in swap, or a uffd-wp marker.
                    let swapped = Span {
                        start: r.start,
                        end: r.end,
                        ..span
                    };
                    self.scan_read(swapped, out)?;
                } else {
                    push_merged(out, r.start, (r.end - r.start) / PAGE_SIZE);
                }
                reported = reported.max(r.end);
            }
            // When the vector fills up, Linux 6.18 can return a walk_end below the
            // end of ranges it has already reported: go on after both.
            let next = walk_end.max(reported);
            if next <= at {
                break; // no progress: never loop forever on a kernel surprise
            }
            at = next;
        }
        Ok(())
    }

    fn scan_read(self, span: Span, out: &mut Vec<PageRange>) -> Result<()> {
        let mut page = span.start / PAGE_SIZE;
        let last = span.end / PAGE_SIZE;
        let mut buf = vec![0u64; ((last.saturating_sub(page)) as usize).min(PAGEMAP_CHUNK)];
        while page < last {
            let n = ((last - page) as usize).min(PAGEMAP_CHUNK);
            let entries = &mut buf[..n];
            pagemap::read_entries(self.pagemap, page, entries)
                .map_err(|e| pagemap_error(self.pid, "reading the pagemap", e))?;
            for (i, &e) in entries.iter().enumerate() {
                let present = e & PM_PRESENT != 0;
                let is_zero = present && self.zero_pfn.is_some_and(|z| e & PM_PFN_MASK == z);
                // Without CAP_SYS_ADMIN the frame field reads 0: markers then
                // look like swap type 0 and are kept (copied as zeros).
                let is_marker = !present && e & PM_SWAP != 0 && e & SWP_TYPE_MASK == SWP_PTE_MARKER;
                let is_files = span.not_file && e & PM_FILE != 0;
                if (present || e & PM_SWAP != 0) && !is_zero && !is_marker && !is_files {
                    push_merged(out, (page + i as u64) * PAGE_SIZE, 1);
                }
            }
            page += n as u64;
        }
        Ok(())
    }
}

/// One PAGEMAP_SCAN: present or swapped pages that are not the zero page (nor,
/// with `not_file`, the file's own pages).
fn scan_call(
    pagemap: &File,
    start: u64,
    end: u64,
    not_file: bool,
    vec: &mut [PageRegion],
) -> io::Result<(usize, u64)> {
    // Asking about PAGE_IS_FILE costs the kernel a page lookup per entry: only
    // where it matters.
    let excluded = PAGE_IS_PFNZERO | if not_file { PAGE_IS_FILE } else { 0 };
    let query = ScanQuery {
        start,
        end,
        category_inverted: excluded,
        category_mask: excluded,
        category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        ..Default::default()
    };
    pagemap::scan(pagemap, query, vec)
}

/// The frame number of the shared zero page, read from our own pagemap after
/// reading (not writing) a fresh anonymous page. None without CAP_SYS_ADMIN,
/// where the kernel shows frame numbers as 0.
fn own_zero_pfn() -> Option<u64> {
    // SAFETY: a fresh private anonymous mapping of one page, read once through a
    // volatile load (so the read fault maps the zero page) and unmapped before
    // returning; no reference to it escapes.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            PAGE_SIZE as usize,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return None;
        }
        std::ptr::read_volatile(p as *const u8);
        let entry = File::open("/proc/self/pagemap").and_then(|f| pagemap::entry(&f, p as u64));
        libc::munmap(p, PAGE_SIZE as usize);
        let pfn = entry.ok()? & PM_PFN_MASK;
        (pfn != 0).then_some(pfn)
    }
}

/// The mappings of `skipped` left out only for being unreadable.
pub fn unreadable<'a>(skipped: &[(&'a Vma, Skip)]) -> Vec<&'a Vma> {
    skipped
        .iter()
        .filter(|(_, why)| *why == Skip::Unreadable)
        .map(|(v, _)| *v)
        .collect()
}

/// The mappings a pre-dump reads, with the reason for each one left out.
pub fn select<'a>(
    vmas: &'a [Vma],
    flags: &std::collections::HashMap<(u64, u64), VmFlags>,
    need_readable: bool,
) -> (Vec<&'a Vma>, Vec<(&'a Vma, Skip)>) {
    let mut keep = Vec::new();
    let mut skipped = Vec::new();
    for vma in vmas {
        match crate::maps::skip_reason(
            vma,
            flags.get(&(vma.start, vma.end)).copied(),
            need_readable,
        ) {
            None => keep.push(vma),
            Some(why) => skipped.push((vma, why)),
        }
    }
    (keep, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    /// Whether the PAGEMAP_SCAN ioctl exists here: anything but ENOTTY (Linux
    /// < 6.7) on an empty scan of our own page 0.
    fn has_pagemap_scan() -> bool {
        let pagemap = File::open("/proc/self/pagemap").unwrap();
        let query = ScanQuery {
            start: 0,
            end: PAGE_SIZE,
            category_anyof_mask: PAGE_IS_PRESENT,
            return_mask: PAGE_IS_PRESENT,
            ..Default::default()
        };
        let mut vec = [PageRegion::default(); 1];
        match pagemap::scan(&pagemap, query, &mut vec) {
            Err(e) => e.raw_os_error() != Some(libc::ENOTTY),
            Ok(_) => true,
        }
    }

    /// Page-sized expectations need page-sized faults: with transparent huge
    /// pages "always" (Debian's 6.1 kernel), one write could make 512 pages
    /// present.
    fn no_thp(addr: u64, len: usize) {
        // SAFETY: madvise on a mapping of the calling test, changing no content.
        let r = unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_NOHUGEPAGE) };
        assert_eq!(r, 0, "madvise(MADV_NOHUGEPAGE)");
    }

    /// A private anonymous mapping of the test's own, in base pages, unmapped
    /// when dropped.
    struct Mapping {
        base: u64,
        len: usize,
    }

    impl Mapping {
        fn new(pages: usize) -> Mapping {
            let len = pages * PAGE_SIZE as usize;
            // SAFETY: a fresh private anonymous mapping, owned by the Mapping.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(base, libc::MAP_FAILED, "mmap");
            no_thp(base as u64, len);
            Mapping {
                base: base as u64,
                len,
            }
        }

        fn page(&self, i: u64) -> u64 {
            self.base + i * PAGE_SIZE
        }

        /// Writes to page `i`, or only reads it (which maps the zero page).
        fn touch(&self, i: u64, write: bool) {
            assert!(i * PAGE_SIZE < self.len as u64);
            let p = self.page(i) as *mut u8;
            // SAFETY: page i is inside the mapping (checked above).
            unsafe {
                if write {
                    std::ptr::write_volatile(p, 1)
                } else {
                    std::ptr::read_volatile(p);
                }
            }
        }

        fn vma(&self) -> Vma {
            Vma {
                start: self.base,
                end: self.base + self.len as u64,
                read: true,
                write: true,
                exec: false,
                shared: false,
                offset: 0,
                inode: 0,
                name: String::new(),
            }
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: unmapping the Mapping's own pages; nothing points into them.
            unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
        }
    }

    /// Maps `pages` pages in this process, touches `touched` of them for writing,
    /// reads others (zero page), and scans with both methods.
    #[test]
    fn both_methods_agree_on_own_memory() {
        let m = Mapping::new(64);
        let base = m.base;
        for i in [0, 1, 2, 10, 63] {
            m.touch(i, true);
        }
        for i in [5, 6] {
            m.touch(i, false); // zero page: must not be reported
        }
        let vma = m.vma();
        let me = std::process::id() as i32;
        let expect = vec![
            PageRange::new(base, 3),
            PageRange::new(base + 10 * PAGE_SIZE, 1),
            PageRange::new(base + 63 * PAGE_SIZE, 1),
        ];
        let mut ioctl = Scanner::open(me).unwrap();
        // PAGEMAP_SCAN where the kernel has it (6.7+), the pagemap read where it
        // has not (the 6.1 kernel of the kernel matrix): then both are the read.
        let want = if has_pagemap_scan() {
            ScanMethod::PagemapScan
        } else {
            eprintln!("no PAGEMAP_SCAN on this kernel: the pagemap read alone is checked");
            ScanMethod::PagemapRead
        };
        assert_eq!(ioctl.method(), want);
        let a = ioctl.present(&[&vma]).unwrap();
        let mut read = Scanner::open_with(me, Some(ScanMethod::PagemapRead)).unwrap();
        let b = read.present(&[&vma]).unwrap();
        assert_eq!(a.ranges, expect);
        assert_eq!(b.ranges, expect);
        assert_eq!(a.pages_scanned, 64);
        assert_eq!(a.pages_present, 5);
    }

    /// More separate runs than one PAGEMAP_SCAN vector holds: the continuation
    /// must neither repeat nor miss a range.
    #[test]
    fn sparse_memory_needs_several_calls() {
        let pages = 4 * SCAN_VEC_LEN;
        let m = Mapping::new(pages);
        let base = m.base;
        for i in (0..pages as u64).step_by(2) {
            m.touch(i, true);
        }
        let vma = m.vma();
        let me = std::process::id() as i32;
        let a = Scanner::open(me).unwrap().present(&[&vma]).unwrap();
        let b = Scanner::open_with(me, Some(ScanMethod::PagemapRead))
            .unwrap()
            .present(&[&vma])
            .unwrap();
        let expect: Vec<PageRange> = (0..pages as u64)
            .step_by(2)
            .map(|i| PageRange::new(base + i * PAGE_SIZE, 1))
            .collect();
        assert_eq!(a.ranges.len(), expect.len());
        assert_eq!(a.ranges, expect);
        assert_eq!(b.ranges, expect);
    }

    /// Both methods, on our own memory: the ranges found in `vma`.
    fn both_methods(vma: &Vma) -> (Vec<PageRange>, Vec<PageRange>) {
        let me = std::process::id() as i32;
        let a = Scanner::open(me).unwrap().present(&[vma]).unwrap();
        let b = Scanner::open_with(me, Some(ScanMethod::PagemapRead))
            .unwrap()
            .present(&[vma])
            .unwrap();
        (a.ranges, b.ranges)
    }

    /// A private file mapping: pages only read are the file's (CRIU does not dump
    /// them, nor do we); a page written is a copy of our own, taken.
    #[test]
    fn a_private_file_mappings_own_pages_only() {
        let path = std::env::temp_dir().join(format!("predump-scan-file-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 8 * PAGE_SIZE as usize]).unwrap();
        let file = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let len = 8 * PAGE_SIZE as usize;
        // SAFETY: a fresh private mapping of our own file, unmapped below; nothing
        // else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let base = base as u64;
        // SAFETY: pages 0..4 and 5 are inside the mapping.
        unsafe {
            for i in 0..4 {
                std::ptr::read_volatile((base + i * PAGE_SIZE) as *const u8);
            }
            std::ptr::write_volatile((base + 5 * PAGE_SIZE) as *mut u8, 1);
        }
        let vma = Vma {
            start: base,
            end: base + len as u64,
            read: true,
            write: true,
            exec: false,
            shared: false,
            offset: 0,
            inode: file.metadata().unwrap().ino(),
            name: "/tmp/predump-scan-file (deleted)".into(),
        };
        let (a, b) = both_methods(&vma);
        // SAFETY: unmapping our own mapping; nothing points into it any more.
        unsafe { libc::munmap(base as *mut libc::c_void, len) };
        let want = vec![PageRange::new(base + 5 * PAGE_SIZE, 1)];
        assert_eq!(a, want, "{:?}", ScanMethod::PagemapScan);
        assert_eq!(b, want, "{:?}", ScanMethod::PagemapRead);
    }

    /// The vDSO is taken whole, whichever of its pages were ever touched.
    #[test]
    fn the_vdso_whole() {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let vmas = crate::maps::parse_maps(&maps).unwrap();
        let Some(vdso) = vmas.iter().find(|v| v.name == "[vdso]") else {
            eprintln!("no [vdso] in this process: test skipped");
            return;
        };
        let (a, b) = both_methods(vdso);
        let want = vec![PageRange::new(vdso.start, vdso.pages())];
        assert_eq!(a, want);
        assert_eq!(b, want);
    }

    #[test]
    fn chunks_cut_spans_at_page_boundaries_in_order() {
        let p = PAGE_SIZE;
        let span = |start, end, not_file| Span {
            start: start * p,
            end: end * p,
            not_file,
        };
        let spans = [span(0, 3, false), span(10, 11, true), span(20, 25, false)];
        assert_eq!(
            chunks(&spans, 4),
            vec![
                vec![span(0, 3, false), span(10, 11, true)],
                vec![span(20, 24, false)],
                vec![span(24, 25, false)],
            ]
        );
        assert_eq!(chunks(&spans, 100), vec![spans.to_vec()]);
    }

    /// A scan large enough to be cut into chunks for the helper threads gives
    /// what the calling thread alone finds, runs merged across chunk borders.
    #[test]
    fn a_parallel_scan_finds_what_one_thread_does() {
        let pages = 3 * CHUNK_PAGES as usize + 100;
        let m = Mapping::new(pages);
        // Runs of written pages, one across each chunk border, and read-only
        // (zero) pages between them.
        let mut expect = Vec::new();
        for i in 0..pages as u64 {
            let written =
                i % 7 < 3 || (CHUNK_PAGES - 5..CHUNK_PAGES + 5).contains(&(i % CHUNK_PAGES));
            m.touch(i, written);
            if written {
                push_merged(&mut expect, m.page(i), 1);
            }
        }
        let vma = m.vma();
        let me = std::process::id() as i32;
        let mut scanner = Scanner::open(me).unwrap();
        scanner.helpers = 2; // whatever this machine has
        let parallel = scanner.present(&[&vma]).unwrap();
        let again = scanner.present_with(&[&vma], true).unwrap();
        assert_eq!(again.ranges, parallel.ranges);
        let policy = crate::sys::sched::get_scheduler().unwrap();
        assert_eq!(policy, libc::SCHED_OTHER, "real-time only while scanning");
        let mut alone = Scanner::open(me).unwrap();
        alone.helpers = 0;
        let single = alone.present(&[&vma]).unwrap();
        assert_eq!(single.ranges, expect);
        assert_eq!(parallel.ranges, expect);
        assert_eq!(parallel.pages_scanned, pages as u64);
        assert_eq!(parallel.pages_present, single.pages_present);
    }

    #[test]
    fn merging() {
        let mut v = Vec::new();
        push_merged(&mut v, 0x1000, 2);
        push_merged(&mut v, 0x3000, 1);
        push_merged(&mut v, 0x5000, 1);
        assert_eq!(
            v,
            vec![PageRange::new(0x1000, 3), PageRange::new(0x5000, 1)]
        );
        // A repeat, and a range overlapping the last one, keep the list disjoint.
        push_merged(&mut v, 0x5000, 1);
        push_merged(&mut v, 0x4000, 3);
        assert_eq!(
            v,
            vec![PageRange::new(0x1000, 3), PageRange::new(0x5000, 2)]
        );
    }
}
