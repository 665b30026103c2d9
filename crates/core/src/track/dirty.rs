//! Taking the dirty pages: the pages written since the last arming, read and
//! re-armed in one walk (uffd-wp: PAGEMAP_SCAN with WP_MATCHING), or read
//! and cleared (soft-dirty: PAGEMAP_SCAN or pagemap entries, then
//! clear_refs).

use std::io;

use super::{merge, Backend, Tracker};
use crate::proc::proc_error;
use crate::sys::pagemap::{
    self, ScanQuery, PAGE_IS_PRESENT, PAGE_IS_SOFT_DIRTY, PAGE_IS_SWAPPED, PAGE_IS_WRITTEN,
    PM_PRESENT, PM_SCAN_CHECK_WPASYNC, PM_SCAN_WP_MATCHING, PM_SOFT_DIRTY, PM_SWAP,
};
use crate::{push_merged, Error, PageRange, Result, PAGE_SIZE};

impl Tracker {
    /// The pages written in `ranges` since the previous call (or since
    /// registration), re-armed atomically: sorted, adjacent pages merged. Parts of
    /// `ranges` not tracked are reported whole (a superset is always safe).
    ///
    /// uffd-wp: may run while the target runs (the scan both reads and re-arms
    /// under the page-table lock). soft-dirty: only while frozen, and `ranges`
    /// must be every range of interest: the clear is process-wide.
    pub fn take_dirty(&mut self, ranges: &[(u64, u64)]) -> Result<Vec<PageRange>> {
        let mut ranges: Vec<(u64, u64)> = ranges
            .iter()
            .map(|&(s, e)| (s / PAGE_SIZE * PAGE_SIZE, e.div_ceil(PAGE_SIZE) * PAGE_SIZE))
            .filter(|&(s, e)| s < e)
            .collect();
        ranges.sort_unstable();
        let mut out = Vec::new();
        for (start, end) in merge(ranges) {
            let mut at = start;
            // The tracked intervals meeting [start, end), in order.
            let tracked: Vec<(u64, u64)> = self
                .tracked
                .iter()
                .filter(|&&(s, e)| s < end && e > start)
                .map(|&(s, e)| (s.max(start), e.min(end)))
                .collect();
            for (s, e) in tracked {
                if at < s {
                    push_merged(&mut out, at, (s - at) / PAGE_SIZE);
                }
                self.scan_dirty(s, e, &mut out)?;
                at = e;
            }
            if at < end {
                push_merged(&mut out, at, (end - at) / PAGE_SIZE);
            }
        }
        if self.backend == Backend::SoftDirty {
            self.clear_soft_dirty()?;
        }
        Ok(out)
    }

    /// The written pages of one tracked interval, into `out`.
    fn scan_dirty(&mut self, start: u64, end: u64, out: &mut Vec<PageRange>) -> Result<()> {
        // soft-dirty: of present or swapped pages only. PAGEMAP_SCAN also calls
        // every page of a VMA made since the last clear soft-dirty (VM_SOFTDIRTY),
        // never-populated ones and whole page-table holes included (seen on
        // Debian's 6.12: 66,000 untouched pages reported), where pagemap's bit 55
        // is only read for pages that exist (`soft_dirty_read`).
        let (flags, category, anyof) = match self.backend {
            Backend::UffdWp => (
                PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                PAGE_IS_WRITTEN,
                0,
            ),
            Backend::SoftDirty => (0, PAGE_IS_SOFT_DIRTY, PAGE_IS_PRESENT | PAGE_IS_SWAPPED),
            Backend::None => {
                push_merged(out, start, (end - start) / PAGE_SIZE);
                return Ok(());
            }
        };
        if self.pagemap_read {
            return self.soft_dirty_read(start, end, out);
        }
        let mut at = start;
        while at < end {
            let vec_len = self.vec.len() as u64;
            match self.scan_call(at, end, flags, category, anyof, category, vec_len, 0) {
                Ok((n, walk_end)) => {
                    let mut reported = at;
                    for i in 0..n {
                        let r = self.vec[i];
                        push_merged(out, r.start, (r.end - r.start) / PAGE_SIZE);
                        reported = reported.max(r.end);
                    }
                    // As in scan.rs: a full vector can come back with walk_end
                    // below what was reported; go on after both.
                    let next = walk_end.max(reported);
                    if next <= at {
                        // No progress: never loop; report the rest (safe superset).
                        push_merged(out, at, (end - at) / PAGE_SIZE);
                        break;
                    }
                    at = next;
                }
                // EPERM: part of the interval is no longer registered WP-async
                // (unmapped and mapped again while running). Whatever was re-armed
                // before the failure lies inside [at, end): report all of it.
                Err(e)
                    if e.raw_os_error() == Some(libc::EPERM) && self.backend == Backend::UffdWp =>
                {
                    push_merged(out, at, (end - at) / PAGE_SIZE);
                    break;
                }
                // Kernels before 6.7 (soft-dirty is older than PAGEMAP_SCAN).
                Err(e)
                    if e.raw_os_error() == Some(libc::ENOTTY)
                        && self.backend == Backend::SoftDirty =>
                {
                    self.pagemap_read = true;
                    return self.soft_dirty_read(at, end, out);
                }
                Err(e) => return Err(self.scan_error(e)),
            }
        }
        Ok(())
    }

    /// One PAGEMAP_SCAN: (regions written to `self.vec`, walk_end).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn scan_call(
        &mut self,
        start: u64,
        end: u64,
        flags: u64,
        mask: u64,
        anyof: u64,
        ret: u64,
        vec_len: u64,
        max_pages: u64,
    ) -> io::Result<(usize, u64)> {
        let query = ScanQuery {
            flags,
            start,
            end,
            vec_len: vec_len.max(1),
            max_pages,
            category_mask: mask,
            category_anyof_mask: anyof,
            return_mask: ret,
            ..Default::default()
        };
        pagemap::scan(&self.pagemap, query, &mut self.vec)
    }

    pub(super) fn scan_error(&self, e: io::Error) -> Error {
        crate::scan::pagemap_error(self.pid, "PAGEMAP_SCAN", e)
    }

    /// soft-dirty without PAGEMAP_SCAN: pagemap bit 55 of present or swapped pages.
    fn soft_dirty_read(&mut self, start: u64, end: u64, out: &mut Vec<PageRange>) -> Result<()> {
        const CHUNK: u64 = 64 * 1024;
        let mut buf = vec![0u64; CHUNK as usize];
        let mut page = start / PAGE_SIZE;
        let last = end / PAGE_SIZE;
        while page < last {
            let n = (last - page).min(CHUNK);
            let entries = &mut buf[..n as usize];
            pagemap::read_entries(&self.pagemap, page, entries)
                .map_err(|e| crate::scan::pagemap_error(self.pid, "reading the pagemap", e))?;
            for (i, &e) in entries.iter().enumerate() {
                if e & (PM_PRESENT | PM_SWAP) != 0 && e & PM_SOFT_DIRTY != 0 {
                    push_merged(out, (page + i as u64) * PAGE_SIZE, 1);
                }
            }
            page += n;
        }
        Ok(())
    }

    /// Clears every soft-dirty bit of the process (and write-protects the pages
    /// so the next write sets it again).
    fn clear_soft_dirty(&self) -> Result<()> {
        pagemap::clear_soft_dirty(Some(self.pid))
            .map_err(|e| proc_error(self.pid, &format!("/proc/{}/clear_refs", self.pid), e))
    }
}
