//! Verifying a tree's anonymous shared memory images (`pagemap-shmem-<shmid>.img`)
//! against the live object: every page the chain holds is compared with the
//! object's page at the same offset, read through the object's file (opened
//! by the map_files link of one live mapping). The processes' own images are
//! verified one by one by `verify::verify`.
//!
//! Nothing is frozen here: an object is written by every process that maps it,
//! so a comparison is exact only while all of them are stopped (after
//! `dump --leave-stopped`, or a tree the caller stopped).

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::shmem::{Mapping, Object};
use crate::verify::{Layer, VerifyReport};
use crate::{intersect, subtract, Error, PageRange, Result, PAGE_SIZE};

const CHUNK_PAGES: u64 = 256;

/// Where the object is mapped now (any live mapping of it) and its size.
#[derive(Debug, Clone, Copy)]
pub struct LiveObject {
    pub shmid: u64,
    pub size: u64,
    pub pid: i32,
    pub start: u64,
    pub end: u64,
}

/// Compares `wanted` (the newest shmem pagemap's pages, as offsets) rebuilt
/// from `chain` (newest first, offsets) with the live object. `missing`: pages
/// the object holds that the chain does not.
pub fn verify_shmem(
    live: LiveObject,
    chain: &[Layer],
    wanted: &[PageRange],
) -> Result<VerifyReport> {
    let obj = Object {
        shmid: live.shmid,
        size: live.size,
        mappings: vec![Mapping {
            pid: live.pid,
            start: live.start,
            end: live.end,
            offset: 0,
        }],
    };
    let handle = obj.open()?;
    let mut report = VerifyReport {
        missing: subtract(&handle.present()?, wanted)
            .iter()
            .map(|r| r.pages)
            .sum(),
        ..Default::default()
    };
    let page = PAGE_SIZE as usize;
    let mut image = vec![0u8; CHUNK_PAGES as usize * page];
    let mut now = vec![0u8; CHUNK_PAGES as usize * page];
    let mut remaining = wanted.to_vec();
    for layer in chain {
        let file = File::open(&layer.pages_path)
            .map_err(|e| Error::sys(format!("open {}", layer.pages_path.display()), e))?;
        for r in intersect(&remaining, &layer.present) {
            let mut at = r.start;
            while at < r.end() {
                let n = ((r.end() - at) / PAGE_SIZE).min(CHUNK_PAGES) as usize;
                let offset = file_offset(&layer.present, at).ok_or_else(|| {
                    Error::InvalidArgument(format!("offset {at:#x} is not in its layer"))
                })?;
                file.read_exact_at(&mut image[..n * page], offset)
                    .map_err(|e| {
                        Error::sys(format!("reading {}", layer.pages_path.display()), e)
                    })?;
                let got = handle.read_at(&mut now[..n * page], at)?;
                for i in 0..n {
                    if (i + 1) * page > got {
                        // Beyond the object's end now: it was truncated.
                        report.unreadable += 1;
                        continue;
                    }
                    report.pages_compared += 1;
                    if image[i * page..(i + 1) * page] != now[i * page..(i + 1) * page] {
                        report.mismatches += 1;
                        if report.first_mismatches.len() < 8 {
                            report.first_mismatches.push(at + (i * page) as u64);
                        }
                    }
                }
                at += (n * page) as u64;
            }
        }
        remaining = subtract(&remaining, &layer.present);
    }
    report.not_in_chain = remaining.iter().map(|r| r.pages).sum();
    Ok(report)
}

/// Where the page at `addr` (held by `present`, in file order) is in the file.
fn file_offset(present: &[PageRange], addr: u64) -> Option<u64> {
    let mut before = 0;
    for r in present {
        if addr >= r.start && addr < r.end() {
            return Some(before + (addr - r.start));
        }
        before += r.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_offsets_follow_the_present_pages() {
        let p = PAGE_SIZE;
        let present = [PageRange::new(0, 2), PageRange::new(10 * p, 3)];
        assert_eq!(file_offset(&present, 0), Some(0));
        assert_eq!(file_offset(&present, p), Some(p));
        assert_eq!(file_offset(&present, 10 * p), Some(2 * p));
        assert_eq!(file_offset(&present, 12 * p), Some(4 * p));
        assert_eq!(file_offset(&present, 2 * p), None);
    }
}
