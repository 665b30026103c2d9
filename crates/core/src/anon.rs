//! A private anonymous mapping owned by predump, unmapped on drop: page-aligned
//! memory that no other Rust object aliases, for what `Vec` cannot be used for
//! (pages referenced from pipes by vmsplice, memory whose page-table state the
//! probes observe, fresh memory for reference timings).

use std::num::NonZeroUsize;
use std::ptr::NonNull;

use nix::sys::mman::{mmap_anonymous, munmap, MapFlags, ProtFlags};

use crate::{Error, Result, PAGE_SIZE};

#[derive(Debug)]
pub struct AnonMap {
    ptr: NonNull<u8>,
    len: usize,
}

impl AnonMap {
    /// A read-write mapping of `len` bytes (rounded up to whole pages by the
    /// kernel), untouched: no page is populated yet.
    pub fn new(len: usize, what: &str) -> Result<AnonMap> {
        let size = NonZeroUsize::new(len)
            .ok_or_else(|| Error::InvalidArgument(format!("empty {what}")))?;
        // SAFETY: a fresh anonymous mapping at an address the kernel chooses cannot
        // alias any existing Rust object.
        let ptr = unsafe {
            mmap_anonymous(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE,
            )
        }
        .map_err(|e| Error::sys(format!("mmap of {what}"), e))?;
        Ok(AnonMap {
            ptr: ptr.cast(),
            len,
        })
    }

    /// A mapping of `pages` whole pages.
    pub fn pages(pages: usize, what: &str) -> Result<AnonMap> {
        Self::new(pages * PAGE_SIZE as usize, what)
    }

    pub fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    pub fn end(&self) -> u64 {
        self.addr() + self.len as u64
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first byte, for system calls and copies. Writing through it while a
    /// slice from [`as_slice`](Self::as_slice) is alive is undefined behaviour:
    /// write through [`as_mut_slice`](Self::as_mut_slice) or [`touch`](Self::touch).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes, alive as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Writes `value` to the first byte of page `page` for real (volatile): the
    /// write fault is what the dirty-tracking probes observe.
    ///
    /// It takes `&mut self`: a write through `&self` could change bytes that a
    /// slice from [`as_slice`](Self::as_slice) still lends out (undefined
    /// behaviour in safe code). The borrow checker now refuses that:
    ///
    /// ```compile_fail,E0502
    /// let mut m = predump_core::anon::AnonMap::pages(1, "a doc test mapping").unwrap();
    /// let seen = m.as_slice();
    /// m.touch(0, 1); // error[E0502]: `m` is also borrowed as immutable
    /// assert_eq!(seen[0], 0);
    /// ```
    ///
    /// while the same steps one after the other compile and run:
    ///
    /// ```
    /// let mut m = predump_core::anon::AnonMap::pages(1, "a doc test mapping").unwrap();
    /// assert_eq!(m.as_slice()[0], 0);
    /// m.touch(0, 1);
    /// assert_eq!(m.as_slice()[0], 1);
    /// ```
    pub fn touch(&mut self, page: usize, value: u8) {
        assert!(
            page * (PAGE_SIZE as usize) < self.len,
            "page {page} outside the mapping"
        );
        // SAFETY: the byte lies inside our live read-write mapping, and `&mut self`
        // means no slice of the mapping is lent out while we write.
        unsafe { std::ptr::write_volatile(self.ptr.as_ptr().add(page * PAGE_SIZE as usize), value) }
    }
}

// SAFETY: an AnonMap owns its mapping exclusively, as a `Box<[u8]>` owns its
// allocation: moving it to another thread moves that ownership, and no other
// object refers to the memory (the drain passes its buffers between its reader
// and its writer this way).
unsafe impl Send for AnonMap {}

impl Drop for AnonMap {
    fn drop(&mut self) {
        // SAFETY: we own the mapping and no slice of it outlives `self`. A pipe that
        // still references its pages holds page references of its own, so
        // unmapping is safe for vmsplice'd buffers too.
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}
