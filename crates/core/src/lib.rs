//! predump-core: freeze a live Linux process, find its present pages, and drain them
//! into a CRIU pages image. No napi here: the binding crate only converts types.

pub mod anon;
pub mod bench;
pub mod check;
pub mod drain;
pub mod error;
pub mod freeze;
pub mod inject;
pub mod maps;
pub mod pattern;
pub mod predump;
pub mod proc;
pub mod scan;
pub mod splice;
pub mod track;

pub use error::{Error, Result};

/// The size of a base page. predump supports 4 KiB base pages only (x86_64, and
/// aarch64 kernels built with 4 KiB pages).
pub const PAGE_SIZE: u64 = 4096;

/// A page-aligned range of a target's address space: `pages` pages from `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageRange {
    pub start: u64,
    pub pages: u64,
}

impl PageRange {
    pub fn new(start: u64, pages: u64) -> Self {
        debug_assert_eq!(start % PAGE_SIZE, 0);
        PageRange { start, pages }
    }
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.start + self.pages * PAGE_SIZE
    }
    pub fn len(&self) -> u64 {
        self.pages * PAGE_SIZE
    }
    pub fn is_empty(&self) -> bool {
        self.pages == 0
    }
}

/// Appends `pages` pages at `start` to sorted ranges, extending the last range
/// when they touch. A part already covered by the last range is dropped, so the
/// list stays sorted and disjoint even if a source repeats itself (the kernel's
/// PAGEMAP_SCAN can, see `scan`).
pub fn push_merged(out: &mut Vec<PageRange>, start: u64, pages: u64) {
    let end = start + pages * PAGE_SIZE;
    let start = match out.last() {
        Some(last) if last.end() > start => last.end(),
        _ => start,
    };
    if end <= start {
        return;
    }
    let pages = (end - start) / PAGE_SIZE;
    if let Some(last) = out.last_mut() {
        if last.end() == start {
            last.pages += pages;
            return;
        }
    }
    out.push(PageRange { start, pages });
}
