//! The memory pattern shared by the workload (which writes it) and the checker
//! (which verifies dumped pages against it).
//!
//! Every 8-byte word's value is a pure function of its address and an `epoch`
//! (0 when the workload first fills a page, bumped each time it re-dirties it). So a
//! dumped page can be checked without the target: it must hold exactly the words of
//! its address at the epoch the workload reports for it. A page copied from the wrong
//! address, a stale copy from an older epoch, or a zero page all fail.

use std::io::{self, Read};

use predump_core::{PageRange, PAGE_SIZE};

/// Odd constant that spreads epochs over the key space (the 64-bit golden ratio).
const EPOCH_STEP: u64 = 0x9E37_79B9_7F4A_7C15;
/// Odd multiplier of the mix: multiplying by an odd number is a bijection mod 2^64.
const MIX_MUL: u64 = 0xD6E8_FEB8_6659_FD93;

/// The pattern word at `addr` (rounded down to 8 bytes) for `epoch`.
///
/// `key = addr/8 + epoch*EPOCH_STEP`, then `x = key*MIX_MUL; x ^ (x >> 32)`. Both
/// steps after the key are bijections of u64, so:
/// - for one epoch, every 8-byte address below 2^64 gets a different word;
/// - for one address, every epoch gets a different word (EPOCH_STEP is odd, so
///   `(e1 - e2) * EPOCH_STEP != 0 mod 2^64` for distinct u32 epochs);
/// - a page's 512 words are 512 distinct values, so at most one of them is zero and
///   a whole page is never zero.
///
/// One multiply and a shift/xor per word: filling GiBs is bound by page faults and
/// memory bandwidth, not by this.
#[inline]
pub fn word(addr: u64, epoch: u32) -> u64 {
    let key = (addr >> 3).wrapping_add((epoch as u64).wrapping_mul(EPOCH_STEP));
    let x = key.wrapping_mul(MIX_MUL);
    x ^ (x >> 32)
}

/// Fill `page` (normally one page; any multiple of 8 bytes works, e.g. a run of
/// pages) with the pattern of `epoch` as if it lay at `page_addr`. Words are stored
/// little-endian, as a CRIU pages image of an x86_64/aarch64 process holds them.
pub fn fill_page(page_addr: u64, epoch: u32, page: &mut [u8]) {
    assert_eq!(page.len() & 7, 0, "pattern buffers are whole words");
    for (i, w) in page.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&word(page_addr + 8 * i as u64, epoch).to_le_bytes());
    }
}

/// Whether `page` holds exactly the pattern of `epoch` at `page_addr`.
pub fn page_matches(page_addr: u64, epoch: u32, page: &[u8]) -> bool {
    if page.len() & 7 != 0 {
        return false;
    }
    page.chunks_exact(8)
        .enumerate()
        // `chunks_exact(8)` always yields 8 bytes, so the conversion cannot fail.
        .all(|(i, w)| {
            u64::from_le_bytes(w.try_into().unwrap()) == word(page_addr + 8 * i as u64, epoch)
        })
}

/// How many mismatching page addresses a [`CheckReport`] keeps.
pub const MAX_REPORTED_MISMATCHES: usize = 16;

/// The result of checking a pages image against the pattern.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Pages compared with their expected pattern.
    pub pages_checked: u64,
    /// Pages not compared: `expected()` said they are not pattern pages.
    pub pages_skipped: u64,
    /// Checked pages that did not hold their expected pattern.
    pub mismatches: u64,
    /// The addresses of the first [`MAX_REPORTED_MISMATCHES`] mismatching pages.
    pub first_mismatches: Vec<u64>,
    /// Bytes found after the last region's pages (0 for a well-formed image).
    pub trailing_bytes: u64,
}

impl CheckReport {
    /// True if every checked page matched and the image had no extra bytes.
    pub fn ok(&self) -> bool {
        self.mismatches == 0 && self.trailing_bytes == 0
    }

    fn record(&mut self, addr: u64, page: &[u8], epoch: Option<u32>) {
        match epoch {
            None => self.pages_skipped += 1,
            Some(epoch) => {
                self.pages_checked += 1;
                if !page_matches(addr, epoch, page) {
                    self.mismatches += 1;
                    if self.first_mismatches.len() < MAX_REPORTED_MISMATCHES {
                        self.first_mismatches.push(addr);
                    }
                }
            }
        }
    }
}

/// How much of a pages image [`check_pages_file`] reads at a time.
const CHUNK_BYTES: usize = 4 << 20;

/// Check a pages image read from `pages`: it holds the pages of `regions`, in order,
/// back to back (the layout of a CRIU `pages-N.img` described by its pagemap).
/// `expected(page_addr)` gives the epoch a page must hold, or `None` for a page that
/// is not a pattern page (it is counted as skipped).
///
/// Reads in chunks of a few MiB, so images of many GiB are fine. An image shorter than
/// its regions is an error (`UnexpectedEof`); bytes after them are counted in
/// `trailing_bytes`.
pub fn check_pages_file<R: Read>(
    mut pages: R,
    regions: &[PageRange],
    expected: impl Fn(u64) -> Option<u32>,
) -> io::Result<CheckReport> {
    let page_size = PAGE_SIZE as usize;
    let mut report = CheckReport::default();
    let mut buf = vec![0u8; CHUNK_BYTES];
    for region in regions {
        let mut addr = region.start;
        let mut left = region.pages;
        while left > 0 {
            let n = (left as usize).min(CHUNK_BYTES / page_size);
            let chunk = &mut buf[..n * page_size];
            pages.read_exact(chunk).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "pages image ends within the region at {:#x} (+{} pages)",
                            region.start, region.pages
                        ),
                    )
                } else {
                    e
                }
            })?;
            for page in chunk.chunks_exact(page_size) {
                report.record(addr, page, expected(addr));
                addr += PAGE_SIZE;
            }
            left -= n as u64;
        }
    }
    report.trailing_bytes = io::copy(&mut pages, &mut io::sink())?;
    Ok(report)
}

/// [`check_pages_file`] for an image already in memory.
pub fn check_pages(
    pages: &[u8],
    regions: &[PageRange],
    expected: impl Fn(u64) -> Option<u32>,
) -> io::Result<CheckReport> {
    check_pages_file(pages, regions, expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const P: usize = PAGE_SIZE as usize;

    fn page(addr: u64, epoch: u32) -> Vec<u8> {
        let mut p = vec![0u8; P];
        fill_page(addr, epoch, &mut p);
        p
    }

    #[test]
    fn words_differ_by_address_and_epoch() {
        let mut seen = HashSet::new();
        for epoch in 0..8u32 {
            for i in 0..4096u64 {
                assert!(
                    seen.insert(word(0x7f00_0000_0000 + 8 * i, epoch)),
                    "collision at {i} epoch {epoch}"
                );
            }
        }
        // Same word for every byte address inside one 8-byte word.
        assert_eq!(word(0x1000, 3), word(0x1007, 3));
        // Far-apart epochs too (the full u32 range).
        assert_ne!(word(0x1000, 0), word(0x1000, u32::MAX));
    }

    #[test]
    fn no_page_is_zero() {
        // The page whose key range contains the one zero word: key 0 at epoch 0 is
        // address 0. It still has 511 non-zero words.
        for (addr, epoch) in [
            (0u64, 0u32),
            (0x1000, 0),
            (0x7fff_ffff_f000, 7),
            (0xdead_b000, u32::MAX),
        ] {
            let p = page(addr, epoch);
            assert!(p.iter().any(|&b| b != 0));
            assert!(!page_matches(addr, epoch, &[0u8; P]));
        }
    }

    #[test]
    fn fill_then_match() {
        let p = page(0x5555_0000_0000, 2);
        assert!(page_matches(0x5555_0000_0000, 2, &p));
        assert!(!page_matches(0x5555_0000_0000, 1, &p), "older epoch");
        assert!(!page_matches(0x5555_0000_0000, 3, &p), "newer epoch");
        assert!(
            !page_matches(0x5555_0000_1000, 2, &p),
            "neighbour's address"
        );
        let mut q = p.clone();
        q[P - 1] ^= 1;
        assert!(!page_matches(0x5555_0000_0000, 2, &q), "one flipped bit");
        assert!(
            !page_matches(0x5555_0000_0000, 2, &p[..P - 1]),
            "short page"
        );
    }

    #[test]
    fn fill_of_a_run_equals_fill_of_its_pages() {
        let mut run = vec![0u8; 3 * P];
        fill_page(0x10000, 5, &mut run);
        for i in 0..3 {
            assert_eq!(
                run[i * P..(i + 1) * P],
                page(0x10000 + (i * P) as u64, 5)[..]
            );
        }
    }

    #[test]
    fn check_good_image() {
        let regions = [PageRange::new(0x10000, 3), PageRange::new(0x40000, 2)];
        let mut img = Vec::new();
        for r in &regions {
            for i in 0..r.pages {
                let a = r.start + i * PAGE_SIZE;
                img.extend(page(a, if a == 0x41000 { 4 } else { 0 }));
            }
        }
        let rep = check_pages(&img, &regions, |a| Some(if a == 0x41000 { 4 } else { 0 })).unwrap();
        assert_eq!(
            rep,
            CheckReport {
                pages_checked: 5,
                ..Default::default()
            }
        );
        assert!(rep.ok());

        // Skipped pages are neither checked nor mismatched.
        let rep = check_pages(&img, &regions, |a| (a < 0x40000).then_some(0)).unwrap();
        assert_eq!(
            (rep.pages_checked, rep.pages_skipped, rep.mismatches),
            (3, 2, 0)
        );
    }

    #[test]
    fn check_reports_bad_pages() {
        let regions = [PageRange::new(0x10000, 4)];
        let mut img = Vec::new();
        img.extend(page(0x10000, 0));
        img.extend(vec![0u8; P]); // a zero page where a pattern page belongs
        img.extend(page(0x12000, 0)); // stale epoch: the workload re-dirtied it to 1
        img.extend(page(0x12000, 0)); // the right bytes at the wrong address
        let rep = check_pages(&img, &regions, |a| Some(if a == 0x12000 { 1 } else { 0 })).unwrap();
        assert_eq!(rep.pages_checked, 4);
        assert_eq!(rep.mismatches, 3);
        assert_eq!(rep.first_mismatches, vec![0x11000, 0x12000, 0x13000]);
        assert!(!rep.ok());
    }

    #[test]
    fn check_image_size_errors() {
        let regions = [PageRange::new(0x10000, 2)];
        let img = page(0x10000, 0);
        let err = check_pages(&img, &regions, |_| Some(0)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);

        let mut img = [page(0x10000, 0), page(0x11000, 0)].concat();
        img.extend([1, 2, 3]);
        let rep = check_pages(&img, &regions, |_| Some(0)).unwrap();
        assert_eq!((rep.mismatches, rep.trailing_bytes), (0, 3));
        assert!(!rep.ok());
    }

    #[test]
    fn check_streams_across_chunks() {
        // A region larger than one read chunk, with a bad page on each side of the
        // chunk boundary, read through a reader that returns short reads.
        struct Dribble<'a>(&'a [u8]);
        impl Read for Dribble<'_> {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                let n = out.len().min(self.0.len()).min(12345);
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let pages = (CHUNK_BYTES / P + 3) as u64;
        let start = 0x7000_0000_0000u64;
        let mut img = vec![0u8; pages as usize * P];
        fill_page(start, 9, &mut img);
        let boundary = CHUNK_BYTES / P;
        img[(boundary - 1) * P] ^= 0xff;
        img[boundary * P + 8] ^= 0xff;
        let rep =
            check_pages_file(Dribble(&img), &[PageRange::new(start, pages)], |_| Some(9)).unwrap();
        assert_eq!(rep.pages_checked, pages);
        assert_eq!(
            rep.first_mismatches,
            vec![
                start + (boundary as u64 - 1) * PAGE_SIZE,
                start + boundary as u64 * PAGE_SIZE
            ]
        );
    }
}
