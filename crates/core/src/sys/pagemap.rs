//! /proc/PID/pagemap: its PAGEMAP_SCAN ioctl (Linux 6.7+, include/uapi/linux/fs.h),
//! its 8-byte entries (Documentation/admin-guide/mm/pagemap.rst), and
//! /proc/PID/clear_refs, which resets the soft-dirty bits the entries show.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use crate::PAGE_SIZE;

/// One region of a PAGEMAP_SCAN answer: [start, end) with `categories`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// A PAGEMAP_SCAN query: `struct pm_scan_arg` without its output vector (given
/// to [`scan`] separately) and size.
#[derive(Debug, Default, Clone, Copy)]
pub struct ScanQuery {
    pub flags: u64,
    pub start: u64,
    pub end: u64,
    /// The most regions to return (0: as many as the output holds).
    pub vec_len: u64,
    /// The most pages to report (0: no limit).
    pub max_pages: u64,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
}

#[repr(C)]
#[derive(Debug, Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: libc::c_ulong = (3 << 30)
    | ((std::mem::size_of::<PmScanArg>() as libc::c_ulong) << 16)
    | ((b'f' as libc::c_ulong) << 8)
    | 16;

/// Flags of pm_scan_arg: write-protect the matching pages (uffd-wp async), and
/// fail unless the whole range is registered with WP_ASYNC.
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

/// Page categories of PAGEMAP_SCAN.
pub const PAGE_IS_WPALLOWED: u64 = 1 << 0;
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
pub const PAGE_IS_FILE: u64 = 1 << 2;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;
pub const PAGE_IS_HUGE: u64 = 1 << 6;
pub const PAGE_IS_SOFT_DIRTY: u64 = 1 << 7;

/// Bits of a pagemap entry.
pub const PM_PRESENT: u64 = 1 << 63;
pub const PM_SWAP: u64 = 1 << 62;
/// A page cache page, not anonymous memory: in a private file mapping, a page
/// not written since it was mapped.
pub const PM_FILE: u64 = 1 << 61;
pub const PM_SOFT_DIRTY: u64 = 1 << 55;
/// The frame number of a present page (0 without CAP_SYS_ADMIN); the swap
/// type (low 5 bits) and offset of a swapped one.
pub const PM_PFN_MASK: u64 = (1 << 55) - 1;
/// The swap type of a pte marker (SWP_PTE_MARKER: the last of the 32 types that
/// MAX_SWAPFILES_SHIFT = 5 allows, on every architecture). uffd-wp installs
/// markers on unpopulated pages of registered ranges (WP_UNPOPULATED) and where
/// write-protected pages are zapped; pagemap reports them as swapped (type in
/// the low 5 bits of the frame field), but they hold no data.
pub const SWP_PTE_MARKER: u64 = 31;
pub const SWP_TYPE_MASK: u64 = 0x1f;

/// One PAGEMAP_SCAN ioctl on an open /proc/PID/pagemap: the regions of
/// `query`'s range that match its filters, written to `out` (at most
/// `query.vec_len` of them when not 0). Returns how many were written and the
/// address where the kernel's walk ended.
pub fn scan(pagemap: &File, query: ScanQuery, out: &mut [PageRegion]) -> io::Result<(usize, u64)> {
    let vec_len = match query.vec_len {
        0 => out.len() as u64,
        n => n.min(out.len() as u64),
    };
    let mut arg = PmScanArg {
        size: std::mem::size_of::<PmScanArg>() as u64,
        flags: query.flags,
        start: query.start,
        end: query.end,
        walk_end: 0,
        vec: out.as_mut_ptr() as u64,
        vec_len,
        max_pages: query.max_pages,
        category_inverted: query.category_inverted,
        category_mask: query.category_mask,
        category_anyof_mask: query.category_anyof_mask,
        return_mask: query.return_mask,
    };
    // SAFETY: `arg` is a properly sized pm_scan_arg whose `vec` points to
    // `vec_len` ≤ out.len() writable PageRegion entries, borrowed mutably for the
    // whole call; the kernel writes only within them and into `arg`. (With
    // PM_SCAN_WP_MATCHING it write-protects the *scanned* process's pages, never
    // our memory.)
    let n = unsafe {
        libc::ioctl(
            pagemap.as_raw_fd(),
            PAGEMAP_SCAN as libc::Ioctl,
            &mut arg as *mut PmScanArg,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((n as usize, arg.walk_end))
}

/// Reads the pagemap entries of `out.len()` pages from page number `page`
/// (address / PAGE_SIZE) on.
pub fn read_entries(pagemap: &File, page: u64, out: &mut [u64]) -> io::Result<()> {
    // SAFETY: the byte view covers exactly `out`, borrowed mutably for the
    // call; any 8 bytes are a valid u64, and u8 has no alignment to meet.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u8, std::mem::size_of_val(out))
    };
    pagemap.read_exact_at(bytes, page * 8)
}

/// The pagemap entry of the page at `addr`.
pub fn entry(pagemap: &File, addr: u64) -> io::Result<u64> {
    let mut e = [0u64];
    read_entries(pagemap, addr / PAGE_SIZE, &mut e)?;
    Ok(e[0])
}

/// `4` into /proc/PID/clear_refs (None: this process): clears every soft-dirty
/// bit of the process and write-protects its pages, so that the next write
/// sets the bit again. Without CONFIG_MEM_SOFT_DIRTY it is accepted and does
/// nothing.
pub fn clear_soft_dirty(pid: Option<i32>) -> io::Result<()> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/clear_refs"),
        None => "/proc/self/clear_refs".to_string(),
    };
    OpenOptions::new().write(true).open(path)?.write_all(b"4")
}
