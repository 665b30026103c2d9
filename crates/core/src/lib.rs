//! predump-core: freeze a live Linux process, find its present pages, and drain them
//! into a CRIU pages image. No napi here: the binding crate only converts types.

pub mod access;
pub mod anon;
pub mod check;
pub mod drain;
pub mod error;
pub mod freeze;
pub mod image;
pub mod inject;
pub mod maps;
pub mod mem_times;
pub mod mode;
pub mod pages_out;
pub mod pageserver;
pub mod predump;
pub mod probe;
pub mod proc;
pub mod scan;
pub mod shmem;
pub mod shmem_chain;
pub mod splice;
pub mod sys;
mod test_hooks;
pub mod track;
pub mod tree;
pub mod tree_dump;
pub mod tree_track;
pub mod tree_verify;
pub mod verify;

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

/// Any ranges, sorted, overlapping and adjacent ones joined.
pub fn merged(mut ranges: Vec<PageRange>) -> Vec<PageRange> {
    ranges.sort_unstable();
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        push_merged(&mut out, r.start, r.pages);
    }
    out
}

/// The pages in both sorted, disjoint lists.
pub fn intersect(a: &[PageRange], b: &[PageRange]) -> Vec<PageRange> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let start = a[i].start.max(b[j].start);
        let end = a[i].end().min(b[j].end());
        if start < end {
            push_merged(&mut out, start, (end - start) / PAGE_SIZE);
        }
        if a[i].end() <= b[j].end() {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// The pages of sorted, disjoint `a` that are not in sorted, disjoint `b`.
pub fn subtract(a: &[PageRange], b: &[PageRange]) -> Vec<PageRange> {
    let mut out = Vec::new();
    let mut j = 0;
    for r in a {
        let mut at = r.start;
        while j < b.len() && b[j].end() <= at {
            j += 1;
        }
        let mut k = j;
        while at < r.end() {
            match b.get(k) {
                Some(h) if h.start < r.end() => {
                    if h.start > at {
                        push_merged(&mut out, at, (h.start - at) / PAGE_SIZE);
                    }
                    at = at.max(h.end());
                    k += 1;
                }
                _ => {
                    push_merged(&mut out, at, (r.end() - at) / PAGE_SIZE);
                    at = r.end();
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start_page: u64, pages: u64) -> PageRange {
        PageRange::new(start_page * PAGE_SIZE, pages)
    }

    #[test]
    fn set_operations() {
        let a = [r(0, 10), r(20, 5)];
        let b = [r(2, 3), r(8, 14), r(30, 1)];
        assert_eq!(intersect(&a, &b), vec![r(2, 3), r(8, 2), r(20, 2)]);
        assert_eq!(subtract(&a, &b), vec![r(0, 2), r(5, 3), r(22, 3)]);
        assert_eq!(subtract(&a, &[]), a.to_vec());
        assert_eq!(intersect(&a, &[]), vec![]);
        // Every page of a is in exactly one of a∩b and a−b.
        let both = intersect(&a, &b);
        let only = subtract(&a, &b);
        let count = |v: &[PageRange]| v.iter().map(|r| r.pages).sum::<u64>();
        assert_eq!(count(&both) + count(&only), count(&a));
    }
}
