//! pagemap images: which pages of a process (pagemap-PID.img) or of a shared
//! memory object (pagemap-shmem-ID.img) an images directory accounts for, and
//! where their bytes are.
//!
//! A pagemap is one `pagemap_head { pages_id }` record, then one `pagemap_entry`
//! per run of pages, sorted by address and not overlapping. Each entry says where
//! the run's contents are: `PE_PRESENT` in `pages-<pages_id>.img`, whose bytes are
//! the PE_PRESENT runs back to back in entry order; `PE_PARENT` in the parent
//! images directory (the run was not written since); `PE_LAZY` marks pages a lazy
//! restore may fetch later (CRIU sets it on anonymous private memory). The page
//! count is in field 5 (u64) since CRIU 4.0, which leaves field 2
//! (`compat_nr_pages`, u32) at 0; older readers (Debian's crit 3.17) know only
//! field 2. predump writes both.

use crate::image::{self, Kind};
use crate::{Error, PageRange, Result, PAGE_SIZE};

/// pagemap_entry.flags (criu/include/pagemap.h).
pub const PE_PARENT: u32 = 1 << 0;
pub const PE_LAZY: u32 = 1 << 1;
pub const PE_PRESENT: u32 = 1 << 2;

/// `message pagemap_head` (criu/images/pagemap.proto).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PagemapHead {
    #[prost(uint32, required, tag = "1")]
    pub pages_id: u32,
}

/// `message pagemap_entry` (criu/images/pagemap.proto).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PagemapEntryRecord {
    #[prost(uint64, required, tag = "1")]
    pub vaddr: u64,
    /// The page count before CRIU 4.0 (CRIU 4.2 writes 0 here).
    #[prost(uint32, required, tag = "2")]
    pub compat_nr_pages: u32,
    /// Obsolete: replaced by `flags & PE_PARENT`.
    #[prost(bool, optional, tag = "3")]
    pub in_parent: Option<bool>,
    #[prost(uint32, optional, tag = "4")]
    pub flags: Option<u32>,
    #[prost(uint64, optional, tag = "5")]
    pub nr_pages: Option<u64>,
}

/// One run of pages and where its contents are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub vaddr: u64,
    pub nr_pages: u64,
    /// PE_* bits.
    pub flags: u32,
}

impl Entry {
    pub fn end(&self) -> u64 {
        self.vaddr + self.nr_pages * PAGE_SIZE
    }
    pub fn is_present(&self) -> bool {
        self.flags & PE_PRESENT != 0
    }
    pub fn in_parent(&self) -> bool {
        self.flags & PE_PARENT != 0
    }
}

/// The contents of a pagemap image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pagemap {
    /// Names `pages-<pages_id>.img`.
    pub pages_id: u32,
    pub entries: Vec<Entry>,
}

/// The largest run one entry may hold: `compat_nr_pages` is a u32 that older
/// readers rely on, so longer runs are split (16 TiB: never in practice).
const MAX_ENTRY_PAGES: u64 = u32::MAX as u64;

impl Pagemap {
    pub fn new(pages_id: u32) -> Pagemap {
        Pagemap {
            pages_id,
            entries: Vec::new(),
        }
    }

    /// Appends a run of `nr_pages` at `vaddr` with `flags`, joining it to the last
    /// entry when it continues it with the same flags. Runs must come in address
    /// order without overlapping (`encode` checks).
    pub fn push(&mut self, vaddr: u64, nr_pages: u64, flags: u32) {
        if nr_pages == 0 {
            return;
        }
        if let Some(last) = self.entries.last_mut() {
            if last.flags == flags
                && last.end() == vaddr
                && last.nr_pages + nr_pages <= MAX_ENTRY_PAGES
            {
                last.nr_pages += nr_pages;
                return;
            }
        }
        let (mut at, mut left) = (vaddr, nr_pages);
        while left > 0 {
            let n = left.min(MAX_ENTRY_PAGES);
            self.entries.push(Entry {
                vaddr: at,
                nr_pages: n,
                flags,
            });
            at += n * PAGE_SIZE;
            left -= n;
        }
    }

    /// Pages whose bytes are in the pages file (PE_PRESENT), i.e. its size / 4096.
    pub fn present_pages(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.is_present())
            .map(|e| e.nr_pages)
            .sum()
    }

    /// The name of the pages file these entries point into.
    pub fn pages_file_name(&self) -> String {
        pages_file_name(self.pages_id)
    }

    /// Checks the entries as CRIU's restore would rely on them: page-aligned,
    /// non-empty, sorted, not overlapping, known flags, not both PE_PARENT and
    /// PE_PRESENT. The error names the first bad entry.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let mut prev_end = 0u64;
        for (i, e) in self.entries.iter().enumerate() {
            let at = || format!("entry {i} ({:#x}, {} pages)", e.vaddr, e.nr_pages);
            if e.vaddr % PAGE_SIZE != 0 {
                return Err(format!("{}: not page-aligned", at()));
            }
            if e.nr_pages == 0 {
                return Err(format!("{}: no pages", at()));
            }
            if e.flags == 0 || e.flags & !(PE_PARENT | PE_LAZY | PE_PRESENT) != 0 {
                return Err(format!("{}: flags {:#x} are not PE_* bits", at(), e.flags));
            }
            if e.is_present() && e.in_parent() {
                return Err(format!("{}: both PE_PARENT and PE_PRESENT", at()));
            }
            let end = e
                .nr_pages
                .checked_mul(PAGE_SIZE)
                .and_then(|b| e.vaddr.checked_add(b))
                .ok_or_else(|| format!("{}: the end overflows", at()))?;
            if i > 0 && e.vaddr < prev_end {
                return Err(format!(
                    "{}: {} (the previous entry ends at {prev_end:#x})",
                    at(),
                    if e.vaddr < self.entries[i - 1].vaddr {
                        "not sorted by address"
                    } else {
                        "overlaps the previous entry"
                    }
                ));
            }
            prev_end = end;
        }
        Ok(())
    }

    /// The image's bytes (both page-count fields filled in).
    pub fn encode(&self) -> Result<Vec<u8>> {
        self.validate()
            .map_err(|d| Error::InvalidArgument(format!("pagemap: {d}")))?;
        let mut out = image::encode(
            Kind::Pagemap,
            &[PagemapHead {
                pages_id: self.pages_id,
            }],
        );
        for e in &self.entries {
            image::push_record(
                &mut out,
                &PagemapEntryRecord {
                    vaddr: e.vaddr,
                    compat_nr_pages: u32::try_from(e.nr_pages).expect("split at u32::MAX by push"),
                    in_parent: None,
                    flags: Some(e.flags),
                    nr_pages: Some(e.nr_pages),
                },
            );
        }
        Ok(out)
    }

    /// Reads a pagemap image as CRIU does (criu/pagemap.c,
    /// init_compat_pagemap_entry): `in_parent` adds PE_PARENT, missing flags
    /// otherwise mean PE_PRESENT, the count comes from field 5 if set, else
    /// field 2. `file` names it in errors.
    pub fn decode(bytes: &[u8], file: &str) -> Result<Pagemap> {
        let recs = image::records(bytes, Kind::Pagemap, file)?;
        let Some(first) = recs.first() else {
            return Err(image::image_error(file, "no pagemap_head record".into()));
        };
        let head: PagemapHead = image::decode_record(first, file, 0)?;
        let mut map = Pagemap::new(head.pages_id);
        for (i, r) in recs.iter().enumerate().skip(1) {
            let e: PagemapEntryRecord = image::decode_record(r, file, i)?;
            let flags = match (e.in_parent, e.flags) {
                (Some(true), flags) => flags.unwrap_or(0) | PE_PARENT,
                (_, Some(flags)) => flags,
                (_, None) => PE_PRESENT,
            };
            map.entries.push(Entry {
                vaddr: e.vaddr,
                nr_pages: e.nr_pages.unwrap_or(e.compat_nr_pages as u64),
                flags,
            });
        }
        map.validate().map_err(|d| image::image_error(file, d))?;
        Ok(map)
    }
}

/// The pagemap of a pages image as it is written, built from the writer's own
/// calls: first the pages left to the parent images (PE_PARENT), then each run
/// of pages in the order its bytes go into the pages image (PE_PRESENT). The
/// image's bytes are the PE_PRESENT entries back to back in entry order, and
/// entries are in address order, so runs must be written in address order:
/// [`PagemapBuilder::written`] refuses one that is not, or that overlaps a run
/// left to the parent. Pure (no I/O): `pages_out::PagesFile`, the owner of the
/// pair, feeds it and writes the result.
#[derive(Debug, Clone)]
pub struct PagemapBuilder {
    map: Pagemap,
    parent: Vec<PageRange>,
    /// The first of `parent` not yet in `map`.
    next_parent: usize,
}

impl PagemapBuilder {
    pub fn new(pages_id: u32) -> PagemapBuilder {
        PagemapBuilder {
            map: Pagemap::new(pages_id),
            parent: Vec::new(),
            next_parent: 0,
        }
    }

    /// The pages the parent images hold (sorted, disjoint, page-aligned): told
    /// before any page is written.
    pub fn parent(&mut self, ranges: &[PageRange]) -> Result<()> {
        if !self.map.entries.is_empty() {
            return Err(bad(
                "the pages left to the parent are told after pages were written",
            ));
        }
        for (i, r) in ranges.iter().enumerate() {
            if !r.start.is_multiple_of(PAGE_SIZE) || (i > 0 && ranges[i - 1].end() > r.start) {
                return Err(bad(format!(
                    "the pages left to the parent are not page-aligned, sorted and disjoint (at {:#x})",
                    r.start
                )));
            }
        }
        self.parent = ranges.to_vec();
        self.next_parent = 0;
        Ok(())
    }

    /// `pages` pages at `start` were appended to the pages image (or are
    /// sent). Returns the runs left to the parent that went into the map just
    /// before them (a page server sends them first).
    pub fn written(&mut self, start: u64, pages: u64) -> Result<&[PageRange]> {
        let first = self.next_parent;
        if pages == 0 {
            return Ok(&[]);
        }
        let end = start + pages * PAGE_SIZE;
        if !start.is_multiple_of(PAGE_SIZE) {
            return Err(bad(format!(
                "pages written at {start:#x}: not page-aligned"
            )));
        }
        // Before the parent runs below it go in: the last entry is the last run written.
        if let Some(last) = self.map.entries.last() {
            if start < last.end() {
                return Err(bad(format!(
                    "pages written at {start:#x} after pages up to {:#x}: the pages image \
                     would not be in address order",
                    last.end()
                )));
            }
        }
        while let Some(h) = self.parent.get(self.next_parent).copied() {
            if h.start >= end {
                break;
            }
            if h.end() > start {
                return Err(bad(format!(
                    "pages written at {start:#x} ({pages} pages) overlap pages left to the parent at {:#x}",
                    h.start
                )));
            }
            self.map.push(h.start, h.pages, PE_PARENT);
            self.next_parent += 1;
        }
        self.map.push(start, pages, PE_PRESENT);
        Ok(&self.parent[first..self.next_parent])
    }

    /// The runs left to the parent above every run written so far, which
    /// [`PagemapBuilder::finish`] appends.
    pub fn parent_left(&self) -> &[PageRange] {
        &self.parent[self.next_parent..]
    }

    /// Pages written so far: the pages image's size / 4096.
    pub fn present_pages(&self) -> u64 {
        self.map.present_pages()
    }

    /// The pagemap: every entry, the runs left to the parent after the last
    /// written one included.
    pub fn finish(mut self) -> Result<Pagemap> {
        for h in &self.parent[self.next_parent..] {
            self.map.push(h.start, h.pages, PE_PARENT);
        }
        self.map.validate().map_err(bad)?;
        Ok(self.map)
    }
}

fn bad(detail: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("pagemap: {detail}"))
}

/// The pagemap of a pages image holding the runs of `written`, in that order,
/// with `parent` left to the parent images (see [`PagemapBuilder`]).
pub fn pagemap_of_written(
    pages_id: u32,
    written: &[PageRange],
    parent: &[PageRange],
) -> Result<Pagemap> {
    let mut b = PagemapBuilder::new(pages_id);
    b.parent(parent)?;
    for r in written {
        b.written(r.start, r.pages)?;
    }
    b.finish()
}

pub fn pages_file_name(pages_id: u32) -> String {
    format!("pages-{pages_id}.img")
}

/// `pagemap-PID.img`.
pub fn pagemap_file_name(pid: i32) -> String {
    format!("pagemap-{pid}.img")
}

/// `pagemap-shmem-SHMID.img` (CRIU names a shared memory object by the inode of
/// its shmem file).
pub fn shmem_pagemap_file_name(shmid: u64) -> String {
    format!("pagemap-shmem-{shmid}.img")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Pagemap {
        let mut m = Pagemap::new(3);
        m.push(0x1000, 2, PE_PRESENT);
        m.push(0x3000, 1, PE_PRESENT); // continues the first
        m.push(0x4000, 4, PE_PARENT);
        m.push(0x10000, 1, PE_PRESENT | PE_LAZY);
        m
    }

    #[test]
    fn push_joins_runs_of_the_same_kind() {
        let m = sample();
        assert_eq!(
            m.entries,
            vec![
                Entry {
                    vaddr: 0x1000,
                    nr_pages: 3,
                    flags: PE_PRESENT
                },
                Entry {
                    vaddr: 0x4000,
                    nr_pages: 4,
                    flags: PE_PARENT
                },
                Entry {
                    vaddr: 0x10000,
                    nr_pages: 1,
                    flags: PE_PRESENT | PE_LAZY
                },
            ]
        );
        assert_eq!(m.present_pages(), 4);
    }

    #[test]
    fn round_trip_writes_both_page_counts() {
        let m = sample();
        let bytes = m.encode().unwrap();
        assert_eq!(Pagemap::decode(&bytes, "t").unwrap(), m);
        let recs = image::records(&bytes, Kind::Pagemap, "t").unwrap();
        let e: PagemapEntryRecord = image::decode_record(recs[1], "t", 1).unwrap();
        assert_eq!((e.compat_nr_pages, e.nr_pages), (3, Some(3)));
    }

    #[test]
    fn old_and_new_criu_entries_read_alike() {
        // CRIU < 4.0: the count in field 2, no flags (present) or in_parent.
        // CRIU >= 4.0: field 2 is 0, the count in field 5.
        let mut bytes = image::encode(Kind::Pagemap, &[PagemapHead { pages_id: 1 }]);
        let old = PagemapEntryRecord {
            vaddr: 0x1000,
            compat_nr_pages: 2,
            in_parent: None,
            flags: None,
            nr_pages: None,
        };
        let parent = PagemapEntryRecord {
            vaddr: 0x3000,
            compat_nr_pages: 1,
            in_parent: Some(true),
            flags: None,
            nr_pages: None,
        };
        let new = PagemapEntryRecord {
            vaddr: 0x8000,
            compat_nr_pages: 0,
            in_parent: None,
            flags: Some(PE_PRESENT | PE_LAZY),
            nr_pages: Some(5),
        };
        for r in [&old, &parent, &new] {
            image::push_record(&mut bytes, r);
        }
        let m = Pagemap::decode(&bytes, "t").unwrap();
        assert_eq!(
            m.entries,
            vec![
                Entry {
                    vaddr: 0x1000,
                    nr_pages: 2,
                    flags: PE_PRESENT
                },
                Entry {
                    vaddr: 0x3000,
                    nr_pages: 1,
                    flags: PE_PARENT
                },
                Entry {
                    vaddr: 0x8000,
                    nr_pages: 5,
                    flags: PE_PRESENT | PE_LAZY
                },
            ]
        );
    }

    #[test]
    fn bad_entries_are_refused_with_their_index() {
        type Entries = Vec<(u64, u64, u32)>;
        let cases: [(Entries, &str); 5] = [
            (
                vec![(0x1001, 1, PE_PRESENT)],
                "entry 0 (0x1001, 1 pages): not page-aligned",
            ),
            (
                vec![(0x1000, 1, PE_PRESENT | PE_PARENT)],
                "both PE_PARENT and PE_PRESENT",
            ),
            (vec![(0x1000, 1, 8)], "flags 0x8 are not PE_* bits"),
            (
                vec![(0x3000, 1, PE_PRESENT), (0x1000, 1, PE_PRESENT)],
                "entry 1 (0x1000, 1 pages): not sorted",
            ),
            (
                vec![(0x1000, 2, PE_PRESENT), (0x2000, 1, PE_PARENT)],
                "overlaps the previous entry",
            ),
        ];
        for (entries, want) in cases {
            let m = Pagemap {
                pages_id: 1,
                entries: entries
                    .iter()
                    .map(|&(vaddr, nr_pages, flags)| Entry {
                        vaddr,
                        nr_pages,
                        flags,
                    })
                    .collect(),
            };
            let e = m.encode().unwrap_err();
            assert_eq!(e.code(), "EINVAL");
            assert!(e.to_string().contains(want), "{e} lacks {want:?}");
        }
    }

    fn pr(page: u64, pages: u64) -> PageRange {
        PageRange::new(page * PAGE_SIZE, pages)
    }

    fn entry(page: u64, nr_pages: u64, flags: u32) -> Entry {
        Entry {
            vaddr: page * PAGE_SIZE,
            nr_pages,
            flags,
        }
    }

    #[test]
    fn written_runs_and_parent_runs_interleave_in_address_order() {
        // Written in three calls, the second continuing the first; parent runs
        // before, between and after them.
        let written = [pr(2, 2), pr(4, 1), pr(10, 3)];
        let parent = [pr(0, 2), pr(5, 3), pr(20, 1)];
        let m = pagemap_of_written(7, &written, &parent).unwrap();
        assert_eq!(m.pages_id, 7);
        assert_eq!(
            m.entries,
            vec![
                entry(0, 2, PE_PARENT),
                entry(2, 3, PE_PRESENT),
                entry(5, 3, PE_PARENT),
                entry(10, 3, PE_PRESENT),
                entry(20, 1, PE_PARENT),
            ]
        );
        // The pages image holds the PE_PRESENT entries back to back, in order.
        assert_eq!(m.present_pages(), 6);
        assert!(m.encode().is_ok());

        // Each run says which parent runs went in before it (what a page
        // server sends first), and the rest is left for the end.
        let mut b = PagemapBuilder::new(7);
        b.parent(&parent).unwrap();
        assert_eq!(b.written(0x2000, 2).unwrap(), [pr(0, 2)]);
        assert_eq!(b.written(0x4000, 1).unwrap(), []);
        assert_eq!(b.written(0xa000, 3).unwrap(), [pr(5, 3)]);
        assert_eq!(b.parent_left(), [pr(20, 1)]);
        assert_eq!(b.finish().unwrap(), m);
    }

    #[test]
    fn nothing_written_is_a_pagemap_of_parent_runs_or_of_nothing() {
        let m = pagemap_of_written(1, &[], &[pr(3, 1)]).unwrap();
        assert_eq!(m.entries, vec![entry(3, 1, PE_PARENT)]);
        let m = pagemap_of_written(1, &[], &[]).unwrap();
        assert!(m.entries.is_empty());
        assert_eq!(Pagemap::decode(&m.encode().unwrap(), "t").unwrap(), m);
    }

    #[test]
    fn runs_out_of_address_order_or_over_parent_runs_are_refused() {
        let cases: [(Vec<PageRange>, Vec<PageRange>, &str); 5] = [
            (
                vec![pr(10, 1), pr(2, 1)],
                vec![],
                "pages written at 0x2000 after pages up to 0xb000",
            ),
            (vec![pr(2, 2), pr(3, 1)], vec![], "after pages up to 0x4000"),
            (
                vec![pr(2, 4)],
                vec![pr(5, 1)],
                "overlap pages left to the parent at 0x5000",
            ),
            (vec![pr(2, 1)], vec![pr(1, 2)], "overlap"),
            (
                vec![],
                vec![pr(4, 1), pr(2, 1)],
                "not page-aligned, sorted and disjoint (at 0x2000)",
            ),
        ];
        for (written, parent, want) in cases {
            let e = pagemap_of_written(1, &written, &parent).unwrap_err();
            assert_eq!(e.code(), "EINVAL");
            assert!(e.to_string().contains(want), "{e} lacks {want:?}");
        }
        let mut b = PagemapBuilder::new(1);
        b.written(0x1000, 1).unwrap();
        assert!(b.parent(&[pr(5, 1)]).is_err(), "parent runs come first");
        assert!(b.written(0x2001, 1).is_err(), "page-aligned");
    }

    /// The reference images CRIU 4.2 wrote (see shared/criu-reference).
    #[test]
    fn reads_criu_4_2_pagemaps() {
        let Some(dir) = reference_dir() else {
            eprintln!("skipped: no shared/criu-reference next to the project");
            return;
        };
        for sub in ["predump-read", "predump-splice"] {
            let file = dir.join(sub).join("pagemap-30583.img");
            let bytes = std::fs::read(&file).unwrap();
            let m = Pagemap::decode(&bytes, &file.display().to_string()).unwrap();
            assert_eq!(m.pages_id, 1);
            assert_eq!(
                m.entries[0],
                Entry {
                    vaddr: 0x401000,
                    nr_pages: 1,
                    flags: PE_PRESENT
                }
            );
            assert!(m.entries.iter().any(|e| e.flags == PE_PRESENT | PE_LAZY));
            let pages = std::fs::metadata(dir.join(sub).join("pages-1.img"))
                .unwrap()
                .len();
            assert_eq!(m.present_pages() * PAGE_SIZE, pages);
            // What we write decodes to the same entries (with field 2 filled in).
            assert_eq!(Pagemap::decode(&m.encode().unwrap(), "again").unwrap(), m);
        }
    }

    fn reference_dir() -> Option<std::path::PathBuf> {
        let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        [
            std::env::var_os("PREDUMP_CRIU_REFERENCE").map(std::path::PathBuf::from),
            Some(here.join("../../../shared/criu-reference")),
            Some(std::path::PathBuf::from("/work/shared/criu-reference")),
        ]
        .into_iter()
        .flatten()
        .find(|p| p.is_dir())
    }
}
