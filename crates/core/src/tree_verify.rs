//! Verifying a tree's anonymous shared memory images (`pagemap-shmem-<shmid>.img`)
//! against the live object: every page the chain holds is compared with the
//! object's page at the same offset, read through the object's file (opened
//! by the map_files link of one live mapping). The chain is resolved as CRIU's
//! restore resolves it (`shmem_chain::held`: a PE_PARENT entry leads to the
//! next directory's pagemap, and a page no entry there covers is not in the
//! chain), so a page counted as compared is one the restore would find. The
//! processes' own images are verified one by one by `verify::verify`.
//!
//! Nothing is frozen here: an object is written by every process that maps it,
//! so a comparison is exact only while all of them are stopped (after
//! `dump --leave-stopped`, or a tree the caller stopped).

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::image::pagemap::Entry;
use crate::shmem::{Mapping, Object};
use crate::shmem_chain::{self, Level};
use crate::verify::VerifyReport;
use crate::{subtract, Error, PageRange, Result, PAGE_SIZE};

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
/// from `chain` (its pagemap in each directory, the newest first, each the
/// parent of the one before) with the live object. `missing`: pages the
/// object holds that the chain does not.
pub fn verify_shmem(
    live: LiveObject,
    chain: &[Level],
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
    let entries: Vec<&[Entry]> = chain.iter().map(|l| &l.entries[..]).collect();
    let (not_held, within) = shmem_chain::split(wanted, &shmem_chain::held(&entries));
    report.not_in_chain = not_held.iter().map(|r| r.pages).sum();
    let page = PAGE_SIZE as usize;
    let mut image = vec![0u8; CHUNK_PAGES as usize * page];
    let mut now = vec![0u8; CHUNK_PAGES as usize * page];
    let mut files: Vec<Option<File>> = chain.iter().map(|_| None).collect();
    for h in within {
        let level = &chain[h.level];
        let file = match &mut files[h.level] {
            Some(f) => f,
            slot => slot.insert(
                File::open(&level.pages_path)
                    .map_err(|e| Error::sys(format!("open {}", level.pages_path.display()), e))?,
            ),
        };
        let mut done = 0;
        while done < h.pages {
            let n = (h.pages - done).min(CHUNK_PAGES) as usize;
            let at = h.start + done * PAGE_SIZE;
            file.read_exact_at(&mut image[..n * page], h.file_offset + done * PAGE_SIZE)
                .map_err(|e| Error::sys(format!("reading {}", level.pages_path.display()), e))?;
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
            done += n as u64;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::pagemap::{PE_PARENT, PE_PRESENT};

    /// Our own shared memory against a chain of three levels: a PE_PARENT
    /// page is found only through the levels in between, as CRIU finds it.
    #[test]
    fn the_chain_is_resolved_as_criu_s_restore_resolves_it() {
        let p = PAGE_SIZE;
        let len = 4 * p as usize;
        // SAFETY: a fresh shared anonymous mapping, unmapped at the end.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        for i in 0..4u64 {
            // SAFETY: page i (< 4) is inside the mapping.
            unsafe {
                std::ptr::write_bytes((base as u64 + i * p) as *mut u8, i as u8 + 1, p as usize)
            };
        }
        let me = std::process::id() as i32;
        let text = std::fs::read_to_string("/proc/self/maps").unwrap();
        let vmas = crate::maps::parse_maps(&text).unwrap();
        let shmid = crate::shmem::objects([(me, &vmas[..])])
            .into_iter()
            .find(|o| o.mappings.iter().any(|m| m.start == base as u64))
            .unwrap()
            .shmid;
        let dir = std::env::temp_dir().join(format!("predump-tree-verify-{me}"));
        std::fs::create_dir_all(&dir).unwrap();
        let level = |name: &str, bytes: &[u8], entries: Vec<Entry>| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            Level {
                pages_path: path,
                entries,
            }
        };
        let e = |page: u64, pages: u64, flags: u32| Entry {
            vaddr: page * p,
            nr_pages: pages,
            flags,
        };
        let page = |v: u8| vec![v; p as usize];
        // Newest: page 0 present, 1-3 in its parent. Middle: 1 present (wrong
        // bytes), 2 in its parent, nothing for 3. Oldest: 1-3 present.
        let newest = level("n", &page(1), vec![e(0, 1, PE_PRESENT), e(1, 3, PE_PARENT)]);
        let middle = level("m", &page(9), vec![e(1, 1, PE_PRESENT), e(2, 1, PE_PARENT)]);
        let oldest = level(
            "o",
            &[page(2), page(3), page(4)].concat(),
            vec![e(1, 3, PE_PRESENT)],
        );
        let live = LiveObject {
            shmid,
            size: len as u64,
            pid: me,
            start: base as u64,
            end: base as u64 + len as u64,
        };
        let wanted = [PageRange::new(0, 4)];
        let r = verify_shmem(live, &[newest, middle, oldest], &wanted).unwrap();
        // Page 3 is in the oldest level, but the middle one does not lead
        // there: not in the chain (a loose lookup would compare it, equal).
        assert_eq!(
            (r.pages_compared, r.mismatches, r.not_in_chain, r.missing),
            (3, 1, 1, 0)
        );
        assert_eq!(r.first_mismatches, vec![p]);
        std::fs::remove_dir_all(&dir).unwrap();
        // SAFETY: our mapping, nothing points into it any more.
        unsafe { libc::munmap(base, len) };
    }
}
