//! The data regions: a mapping filled with the pattern, and the epoch of each of its
//! pages. A private region (the process's own) is touched by its main (command)
//! thread only, so it needs no locking; the pre-dumper reads it from outside.
//!
//! A shared region (`--shared`, `--devzero`: one anonymous shared object mapped by
//! every process of a `--tree`) holds the pattern of its *offsets* (page k holds
//! the words of address k * PAGE_SIZE), as predump's pagemap-shmem images list its
//! pages, and keeps its epochs in shared memory too: any process may rewrite it on
//! command (commands are handled one at a time for the whole tree), and every
//! process checks it against the same epochs.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use predump_bench::pattern::{fill_page, page_matches};
use predump_core::PAGE_SIZE;

const P: usize = PAGE_SIZE as usize;

pub struct Data {
    /// The whole mapping. It is never unmapped: the process exits with it mapped.
    mem: &'static mut [u8],
    /// The pattern epoch each page holds now (in shared memory for a shared region).
    epochs: &'static mut [u32],
    /// The epoch the next `dirty` command writes.
    next_epoch: &'static AtomicU32,
    /// The pattern address of page 0: its own address (private), or 0 (shared:
    /// offsets).
    base: u64,
}

/// How a region's memory is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    Private,
    /// MAP_SHARED|MAP_ANONYMOUS.
    SharedAnonymous,
    /// MAP_SHARED of /dev/zero (the same kind of object, made the other way).
    DevZero,
}

impl Data {
    /// Map `bytes` (a multiple of the page size) and fill every page with epoch 0.
    pub fn new(bytes: usize) -> Data {
        Self::with(bytes, Backing::Private)
    }

    pub fn with(bytes: usize, backing: Backing) -> Data {
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let pages = bytes / P;
        let (base, epochs, next) = match backing {
            Backing::Private => {
                let base = crate::mem::map_anon(bytes, prot, 0);
                let epochs: &'static mut [u32] = Box::leak(vec![0u32; pages].into_boxed_slice());
                let next: &'static AtomicU32 = Box::leak(Box::new(AtomicU32::new(1)));
                (base, epochs, next)
            }
            Backing::SharedAnonymous | Backing::DevZero => {
                let base = if backing == Backing::DevZero {
                    crate::mem::map_dev_zero(bytes, prot)
                } else {
                    crate::mem::map_shared(bytes, prot)
                };
                // The epochs after one page holding the next epoch: a shared
                // object of its own (fresh pages are zero: epoch 0).
                let meta = crate::mem::map_shared(P + pages * 4, prot);
                // SAFETY: `meta` is a fresh read-write mapping of P + 4*pages bytes,
                // page-aligned, never unmapped, used only through these two views.
                let (next, epochs) = unsafe {
                    let next = &*(meta as *const AtomicU32);
                    next.store(1, Relaxed);
                    let epochs = std::slice::from_raw_parts_mut(meta.add(P) as *mut u32, pages);
                    (next, epochs)
                };
                (base, epochs, next)
            }
        };
        // SAFETY: `base` is a fresh read-write mapping of `bytes` bytes that nothing
        // else references, and it stays mapped for the life of the process.
        let mem = unsafe { std::slice::from_raw_parts_mut(base, bytes) };
        let pattern_base = match backing {
            Backing::Private => mem.as_ptr() as u64,
            _ => 0,
        };
        // Filling is bound by page faults; spread it over the cores (it runs before
        // the compute threads start, so it steals nothing from them).
        for_chunks(mem, |offset, chunk| {
            fill_page(pattern_base + offset as u64, 0, chunk)
        });
        Data {
            mem,
            epochs,
            next_epoch: next,
            base: pattern_base,
        }
    }

    pub fn start(&self) -> u64 {
        self.mem.as_ptr() as u64
    }
    pub fn bytes(&self) -> usize {
        self.mem.len()
    }
    pub fn pages(&self) -> usize {
        self.epochs.len()
    }
    /// The pattern address of page `index` (its address, or its offset if shared).
    fn page_addr(&self, index: usize) -> u64 {
        self.base + (index * P) as u64
    }

    /// Rewrite the given pages (ascending indices) with the next epoch. Returns the
    /// epoch and the runs of consecutive pages as (start address, count).
    pub fn dirty(&mut self, indices: impl IntoIterator<Item = usize>) -> (u32, Vec<(u64, usize)>) {
        let epoch = self.next_epoch.fetch_add(1, Relaxed);
        let mut runs: Vec<(u64, usize)> = Vec::new();
        for i in indices {
            let addr = self.page_addr(i);
            let page = i * P;
            fill_page(addr, epoch, &mut self.mem[page..page + P]);
            self.epochs[i] = epoch;
            match runs.last_mut() {
                Some((start, n)) if *start + (*n * P) as u64 == addr => *n += 1,
                _ => runs.push((addr, 1)),
            }
        }
        (epoch, runs)
    }

    /// Exactly round(pages * permille / 1000) page indices, ascending, chosen
    /// uniformly from `seed` (selection sampling, Knuth's Algorithm S: one pass,
    /// no memory, and the same seed always picks the same pages).
    pub fn select(&self, permille: u32, seed: u64) -> Vec<usize> {
        let n = self.pages();
        let mut wanted = (n * permille as usize + 500) / 1000;
        let mut rng = crate::SplitMix(seed);
        let mut out = Vec::with_capacity(wanted);
        for i in 0..n {
            if wanted == 0 {
                break;
            }
            if rng.next_u64() % ((n - i) as u64) < (wanted as u64) {
                out.push(i);
                wanted -= 1;
            }
        }
        out
    }

    /// Compare every page with its expected epoch: (pages checked, mismatches).
    pub fn check(&self) -> (u64, u64) {
        let start = self.base;
        let bad = std::sync::atomic::AtomicU64::new(0);
        for_chunks_ro(&self.mem[..], |offset, chunk| {
            let first = offset / P;
            let n = chunk
                .chunks_exact(P)
                .enumerate()
                .filter(|(k, page)| {
                    !page_matches(
                        start + (offset + k * P) as u64,
                        self.epochs[first + k],
                        page,
                    )
                })
                .count();
            bad.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        });
        (self.pages() as u64, bad.into_inner())
    }

    /// Runs of consecutive pages with the same non-zero epoch: (pattern address,
    /// count, epoch).
    pub fn epoch_runs(&self) -> Vec<(u64, usize, u32)> {
        let mut runs: Vec<(u64, usize, u32)> = Vec::new();
        for (i, &e) in self.epochs.iter().enumerate() {
            if e == 0 {
                continue;
            }
            let addr = self.page_addr(i);
            match runs.last_mut() {
                Some((start, n, re)) if *re == e && *start + (*n * P) as u64 == addr => *n += 1,
                _ => runs.push((addr, 1, e)),
            }
        }
        runs
    }
}

/// How many threads to spread fill/check over, and the page-aligned chunk size.
fn split(len: usize) -> usize {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    len.div_ceil(threads).div_ceil(P).max(1) * P
}

/// Run `f(offset, chunk)` on page-aligned chunks of `mem`, one thread per core.
fn for_chunks(mem: &mut [u8], f: impl Fn(usize, &mut [u8]) + Sync) {
    let size = split(mem.len());
    std::thread::scope(|s| {
        for (k, chunk) in mem.chunks_mut(size).enumerate() {
            let f = &f;
            s.spawn(move || f(k * size, chunk));
        }
    });
}

/// Read-only twin of [`for_chunks`].
fn for_chunks_ro(mem: &[u8], f: impl Fn(usize, &[u8]) + Sync) {
    let size = split(mem.len());
    std::thread::scope(|s| {
        for (k, chunk) in mem.chunks(size).enumerate() {
            let f = &f;
            s.spawn(move || f(k * size, chunk));
        }
    });
}
