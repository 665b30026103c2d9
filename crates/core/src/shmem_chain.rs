//! Anonymous shared memory against its chain (issue 12): a tree pre-dump (or
//! dump) on parent images copies a page of a shared object only if its
//! content differs from the chain's copy of that page, or the chain does not
//! hold it; the other pages become `PE_PARENT` entries of
//! `pagemap-shmem-<shmid>.img` (by offset, as CRIU writes them: criu/shmem.c
//! `do_dump_one_shmem`, `page_pipe_add_hole(.., PP_HOLE_PARENT)`).
//!
//! # Why by content, not by dirty tracking
//!
//! A write to a shared page is recorded only in the page table of the process
//! that made it, and that record is lost when the entry goes while the page
//! stays in the object (reclaim, MADV_DONTNEED, a writer that exited or
//! unmapped): a chain trusting the union of the processes' records could leave
//! a rewritten page to the parent (docs/TREES.md, "Dirty tracking on trees").
//! Comparing the object's page with the chain's copy needs no record: a page
//! left to the parent is, byte for byte, the page the chain gives back. The
//! cost is a read of the chain's page (usually in the page cache) instead of a
//! write.
//!
//! # The chain's copy of a page
//!
//! Found as CRIU's restore finds it (criu/pagemap.c `read_parent_page`): the
//! parent directory's `pagemap-shmem-<shmid>.img`; a `PE_PRESENT` entry is in
//! its `pages-<id>.img` (the present runs back to back); a `PE_PARENT` entry
//! leads to the same file in the directory its `parent` link names, and so on;
//! a page no entry covers is not held (CRIU's restore would fail on a
//! `PE_PARENT` entry over it, so it is copied). Parsing (`held`, `split`) is
//! separate from the reading (`read_chain`, `compare`).
//!
//! # Which object the parent's shmid was
//!
//! A shmid is an inode number of the kernel's internal shmem mount, and inode
//! numbers are reused once an object is freed (on the internal mount they
//! come from a 32-bit counter that wraps). By content alone a page left to a
//! parent holding another object under the same number would still restore
//! right (the comparison is with exactly what the restore reads), but it would
//! be a chain of unrelated objects, read for nothing. So each pre-dump records
//! the identity of every object it wrote (the caller: in predump-track.json),
//! and an object is compared with its parent's only if the parent recorded the
//! same identity: the object's file handle (`name_to_handle_at`), which for
//! shmem holds its inode number and its generation, a random 32-bit number
//! drawn when the inode is made (mm/shmem.c). A parent that recorded none
//! (made by CRIU, or by an earlier predump) is not trusted: its objects are
//! copied whole, as before.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::image::pagemap::{pages_file_name, shmem_pagemap_file_name, Entry, Pagemap};
use crate::shmem::Handle;
use crate::{push_merged, Error, PageRange, Result, PAGE_SIZE};

/// The parent images of a tree pre-dump, for its shared objects.
#[derive(Debug, Clone, Default)]
pub struct ShmemParent {
    /// The parent images directory.
    pub dir: PathBuf,
    /// The identity (`Handle::identity`) of each object the parent wrote, by
    /// shmid, as it recorded them.
    pub identities: HashMap<u64, String>,
}

/// What a pre-dump of one object made of its parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InParent {
    /// No parent images (or a page server's: the caller says so).
    NoParent,
    /// Compared with the chain's copy, page by page.
    Compared,
    /// The parent images hold no object of this shmid: copied whole.
    New,
    /// The parent recorded another object under this shmid: copied whole.
    OtherObject,
    /// The parent does not record which object this shmid was: copied whole.
    Unrecorded,
    /// The chain cannot be used (why): copied whole.
    Unusable(String),
}

impl InParent {
    pub fn name(&self) -> &'static str {
        match self {
            InParent::NoParent => "none",
            InParent::Compared => "yes",
            InParent::New => "new",
            InParent::OtherObject => "other-object",
            InParent::Unrecorded => "unrecorded",
            InParent::Unusable(_) => "unusable",
        }
    }

    /// Why the object was copied whole despite parent images (None: it was
    /// not, or there are none).
    pub fn note(&self, shmid: u64) -> Option<String> {
        match self {
            InParent::NoParent | InParent::Compared | InParent::New => None,
            InParent::OtherObject => Some(format!(
                "shared memory {shmid}: the parent images recorded another object under this number (its inode was reused): copied whole"
            )),
            InParent::Unrecorded => Some(format!(
                "shared memory {shmid}: the parent images do not record which object had this number (made by CRIU or an older predump): copied whole"
            )),
            InParent::Unusable(why) => {
                Some(format!("shared memory {shmid}: {why}: copied whole"))
            }
        }
    }
}

/// One level of an object's chain: a directory's pagemap of it.
#[derive(Debug, Clone)]
pub struct Level {
    pub pages_path: PathBuf,
    pub entries: Vec<Entry>,
}

/// How many directories a chain may have: a loop of `parent` links ends here.
const MAX_LEVELS: usize = 256;

/// Reads the chain of object `shmid` from `dir` (the parent images): its
/// pagemap there and, while a level has PE_PARENT entries, the same pagemap in
/// the directory the level's `parent` link names. Empty: `dir` holds no
/// pagemap of it. A deeper directory without it (or without a parent link)
/// ends the chain: the PE_PARENT pages above are then not held.
pub fn read_chain(dir: &Path, shmid: u64) -> Result<Vec<Level>> {
    let name = shmem_pagemap_file_name(shmid);
    let mut levels = Vec::new();
    let mut at = dir.to_path_buf();
    loop {
        let file = at.join(&name);
        let bytes = match std::fs::read(&file) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(e) => return Err(Error::sys(format!("reading {}", file.display()), e)),
        };
        let map = Pagemap::decode(&bytes, &file.display().to_string())?;
        let deeper = map.entries.iter().any(|e| e.in_parent());
        levels.push(Level {
            pages_path: at.join(pages_file_name(map.pages_id)),
            entries: map.entries,
        });
        if !deeper || levels.len() >= MAX_LEVELS {
            break;
        }
        match std::fs::read_link(at.join("parent")) {
            Ok(link) => at = at.join(link),
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(e) => {
                return Err(Error::sys(
                    format!("reading {}", at.join("parent").display()),
                    e,
                ))
            }
        }
    }
    Ok(levels)
}

/// A run of offsets the chain holds, all in one level's pages file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// Offset in the object, bytes.
    pub start: u64,
    pub pages: u64,
    /// Index of the level (0: the parent directory).
    pub level: usize,
    /// Where `start`'s page is in that level's pages file, bytes.
    pub file_offset: u64,
}

impl Held {
    fn end(&self) -> u64 {
        self.start + self.pages * PAGE_SIZE
    }

    /// The part of this run within [start, end) (None: empty).
    fn clip(&self, start: u64, end: u64) -> Option<Held> {
        let s = self.start.max(start);
        let e = self.end().min(end);
        (s < e).then(|| Held {
            start: s,
            pages: (e - s) / PAGE_SIZE,
            level: self.level,
            file_offset: self.file_offset + (s - self.start),
        })
    }
}

/// Where the chain (levels newest first, each one's entries sorted as in its
/// pagemap) holds each page, sorted by offset: a PE_PRESENT entry holds its
/// pages in its own level, a PE_PARENT entry those the level below holds in
/// its range, nothing else holds a page.
pub fn held(levels: &[&[Entry]]) -> Vec<Held> {
    let mut below: Vec<Held> = Vec::new();
    for (level, entries) in levels.iter().enumerate().rev() {
        let mut now = Vec::new();
        let mut file_offset = 0;
        let mut j = 0; // the first run below that may reach the next entry
        for e in entries.iter() {
            if e.is_present() {
                now.push(Held {
                    start: e.vaddr,
                    pages: e.nr_pages,
                    level,
                    file_offset,
                });
                file_offset += e.nr_pages * PAGE_SIZE;
            } else if e.in_parent() {
                while j < below.len() && below[j].end() <= e.vaddr {
                    j += 1;
                }
                let mut k = j;
                while k < below.len() && below[k].start < e.end() {
                    now.extend(below[k].clip(e.vaddr, e.end()));
                    k += 1;
                }
            }
        }
        below = now;
    }
    below
}

/// Splits `present` (the object's pages, sorted offsets) into the pages the
/// chain does not hold and the runs of `held` within `present`.
pub fn split(present: &[PageRange], held: &[Held]) -> (Vec<PageRange>, Vec<Held>) {
    let mut missing = Vec::new();
    let mut within = Vec::new();
    let mut j = 0;
    for r in present {
        let mut at = r.start;
        while j < held.len() && held[j].end() <= r.start {
            j += 1;
        }
        let mut k = j;
        while k < held.len() && held[k].start < r.end() {
            if let Some(h) = held[k].clip(r.start, r.end()) {
                if h.start > at {
                    push_merged(&mut missing, at, (h.start - at) / PAGE_SIZE);
                }
                at = h.end();
                within.push(h);
            }
            k += 1;
        }
        if at < r.end() {
            push_merged(&mut missing, at, (r.end() - at) / PAGE_SIZE);
        }
    }
    (missing, within)
}

/// What the comparison of an object with its chain found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compared {
    /// The pages to copy, sorted offsets.
    pub copy: Vec<PageRange>,
    /// The pages equal to the chain's copy: PE_PARENT.
    pub to_parent: Vec<PageRange>,
    /// Pages compared (those the chain holds).
    pub compared: u64,
}

/// Pages read at once from the object and from the chain (1 MiB).
const CHUNK_PAGES: usize = 256;

/// Compares the `present` pages of the object with the chain's copy, page by
/// page: equal ones go to the parent, the others (and those the chain does
/// not hold, or whose copy cannot be read: a short pages file) are copied.
pub fn compare(handle: &Handle, present: &[PageRange], levels: &[Level]) -> Result<Compared> {
    let entries: Vec<&[Entry]> = levels.iter().map(|l| &l.entries[..]).collect();
    let (missing, within) = split(present, &held(&entries));
    let mut files: Vec<Option<io::Result<File>>> = levels.iter().map(|_| None).collect();
    let page = PAGE_SIZE as usize;
    let mut chain = vec![0u8; CHUNK_PAGES * page];
    let mut object = vec![0u8; CHUNK_PAGES * page];
    let mut differ = Vec::new();
    let mut to_parent = Vec::new();
    let mut compared = 0;
    for h in within {
        let file = files[h.level].get_or_insert_with(|| File::open(&levels[h.level].pages_path));
        let mut done = 0;
        while done < h.pages {
            let n = ((h.pages - done) as usize).min(CHUNK_PAGES);
            let at = h.start + done * PAGE_SIZE;
            let bytes = n * page;
            let read = match file {
                Ok(f) => f
                    .read_exact_at(&mut chain[..bytes], h.file_offset + done * PAGE_SIZE)
                    .is_ok(),
                Err(_) => false,
            };
            let got = handle.read_at(&mut object[..bytes], at)?;
            for i in 0..n {
                let off = at + (i * page) as u64;
                let same = read
                    && (i + 1) * page <= got
                    && chain[i * page..(i + 1) * page] == object[i * page..(i + 1) * page];
                compared += 1;
                push_merged(if same { &mut to_parent } else { &mut differ }, off, 1);
            }
            done += n as u64;
        }
    }
    let mut copy = missing;
    copy.extend(differ);
    Ok(Compared {
        copy: crate::merged(copy),
        to_parent,
        compared,
    })
}

/// What to do with one object on parent images: compared (or why not), the
/// pages to copy and those left to the parent.
#[derive(Debug, Clone)]
pub struct Against {
    pub in_parent: InParent,
    pub copy: Vec<PageRange>,
    pub to_parent: Vec<PageRange>,
    pub compared: u64,
}

/// Whether the parent's object `shmid` may be compared with ours: the parent
/// holds a pagemap of it (`in_dir`), recorded its identity, and it is ours
/// (`now`: our object's, or why it cannot be had).
pub fn trust(
    in_dir: bool,
    recorded: Option<&str>,
    now: std::result::Result<&str, &str>,
) -> InParent {
    match (in_dir, recorded, now) {
        (false, _, _) => InParent::New,
        (true, None, _) => InParent::Unrecorded,
        (true, Some(_), Err(why)) => {
            InParent::Unusable(format!("its identity cannot be read here ({why})"))
        }
        (true, Some(r), Ok(n)) if r == n => InParent::Compared,
        (true, Some(_), Ok(_)) => InParent::OtherObject,
    }
}

/// The pages of an object to copy on parent images `parent` (`identity`: the
/// object's, or why it cannot be had): compared with the chain when the
/// parent holds this very object, else all of `present`.
pub fn against(
    parent: &ShmemParent,
    shmid: u64,
    identity: std::result::Result<&str, &str>,
    handle: &Handle,
    present: &[PageRange],
) -> Result<Against> {
    let whole = |in_parent| Against {
        in_parent,
        copy: present.to_vec(),
        to_parent: Vec::new(),
        compared: 0,
    };
    let in_dir = parent.dir.join(shmem_pagemap_file_name(shmid)).exists();
    let decided = trust(
        in_dir,
        parent.identities.get(&shmid).map(String::as_str),
        identity,
    );
    if decided != InParent::Compared {
        return Ok(whole(decided));
    }
    let levels = match read_chain(&parent.dir, shmid) {
        Ok(l) => l,
        Err(e) => {
            return Ok(whole(InParent::Unusable(format!(
                "its parent images cannot be read ({e})"
            ))))
        }
    };
    let c = compare(handle, present, &levels)?;
    Ok(Against {
        in_parent: InParent::Compared,
        copy: c.copy,
        to_parent: c.to_parent,
        compared: c.compared,
    })
}

impl Handle {
    /// The object's identity: its file handle (`name_to_handle_at` on the
    /// open object), `TYPE:HEX`. For shmem the handle is the generation (a
    /// random number drawn when the inode was made) and the inode number, so
    /// two objects that had the same inode number one after the other differ.
    pub fn identity(&self) -> Result<String> {
        let (handle_type, bytes) = crate::sys::handle::of_fd(self.file().as_fd()).map_err(|e| {
            Error::sys(
                format!("name_to_handle_at of shared memory {}", self.shmid()),
                e,
            )
        })?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok(format!("{handle_type}:{hex}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::pagemap::{PE_PARENT, PE_PRESENT};

    const P: u64 = PAGE_SIZE;

    fn e(page: u64, pages: u64, flags: u32) -> Entry {
        Entry {
            vaddr: page * P,
            nr_pages: pages,
            flags,
        }
    }

    fn h(page: u64, pages: u64, level: usize, file_page: u64) -> Held {
        Held {
            start: page * P,
            pages,
            level,
            file_offset: file_page * P,
        }
    }

    #[test]
    fn held_follows_parent_entries_down_the_chain() {
        // Level 0 (the parent): pages 0-1 present, 2-9 in its parent, 12 present.
        let l0 = [
            e(0, 2, PE_PRESENT),
            e(2, 8, PE_PARENT),
            e(12, 1, PE_PRESENT),
        ];
        // Level 1: 3-4 present, 5-7 in its parent, nothing for 8-9.
        let l1 = [e(0, 2, PE_PRESENT), e(3, 2, PE_PRESENT), e(5, 3, PE_PARENT)];
        // Level 2: 0-9 present (only 5-7 reachable).
        let l2 = [e(0, 10, PE_PRESENT)];
        let got = held(&[&l0, &l1, &l2]);
        assert_eq!(
            got,
            vec![
                h(0, 2, 0, 0),
                h(3, 2, 1, 2), // after level 1's pages 0-1 in its file
                h(5, 3, 2, 5),
                h(12, 1, 0, 2),
            ]
        );
        // A chain whose parent is gone: PE_PARENT holds nothing.
        assert_eq!(held(&[&l0]), vec![h(0, 2, 0, 0), h(12, 1, 0, 2)]);
        assert_eq!(held(&[]), vec![]);
    }

    #[test]
    fn split_separates_what_the_chain_lacks() {
        let held = [h(0, 2, 0, 0), h(3, 2, 1, 2), h(12, 1, 0, 2)];
        let present = [PageRange::new(P, 6), PageRange::new(12 * P, 2)];
        let (missing, within) = split(&present, &held);
        assert_eq!(
            missing,
            vec![
                PageRange::new(2 * P, 1),
                PageRange::new(5 * P, 2),
                PageRange::new(13 * P, 1)
            ]
        );
        // Page 1 of the first run, at its place in the file; all of the others.
        assert_eq!(within, vec![h(1, 1, 0, 1), h(3, 2, 1, 2), h(12, 1, 0, 2)]);
        assert_eq!(split(&[], &held), (vec![], vec![]));
        assert_eq!(split(&present, &[]), (present.to_vec(), vec![]));
    }

    #[test]
    fn trust_needs_the_same_object_recorded() {
        assert_eq!(trust(false, Some("1:ab"), Ok("1:ab")), InParent::New);
        assert_eq!(trust(true, None, Ok("1:ab")), InParent::Unrecorded);
        assert_eq!(trust(true, Some("1:ab"), Ok("1:ab")), InParent::Compared);
        assert_eq!(trust(true, Some("1:ab"), Ok("1:cd")), InParent::OtherObject);
        assert!(matches!(
            trust(true, Some("1:ab"), Err("EOPNOTSUPP")),
            InParent::Unusable(_)
        ));
        assert!(InParent::OtherObject
            .note(7)
            .unwrap()
            .contains("another object"));
        assert_eq!(InParent::Compared.note(7), None);
    }

    /// Our own shared memory compared with a chain of two levels written here.
    #[test]
    fn own_shared_memory_is_compared_with_its_chain() {
        let pages = 8usize;
        let len = pages * P as usize;
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
        let fill = |i: u64, v: u8| {
            // SAFETY: page i (< 8) is inside the mapping.
            unsafe { std::ptr::write_bytes((base as u64 + i * P) as *mut u8, v, P as usize) }
        };
        for i in 0..7 {
            fill(i, i as u8 + 1); // page 7 stays a hole
        }
        let me = std::process::id() as i32;
        let text = std::fs::read_to_string("/proc/self/maps").unwrap();
        let vmas = crate::maps::parse_maps(&text).unwrap();
        let objs = crate::shmem::objects([(me, &vmas[..])]);
        let obj = objs
            .iter()
            .find(|o| o.mappings.iter().any(|m| m.start == base as u64))
            .unwrap();
        let handle = obj.open().unwrap();
        let id = handle.identity().unwrap();
        assert!(id.contains(':'), "{id}");
        assert_eq!(handle.identity().unwrap(), id, "stable");

        // Two directories: "1" holds pages 0-5 as they are now, except page 2;
        // "2" (the parent given) holds page 0 present and 1-5 in "1".
        let root = std::env::temp_dir().join(format!("predump-shmem-chain-{me}"));
        let _ = std::fs::remove_dir_all(&root);
        let (d1, d2) = (root.join("1"), root.join("2"));
        std::fs::create_dir_all(&d1).unwrap();
        std::fs::create_dir_all(&d2).unwrap();
        std::os::unix::fs::symlink("../1", d2.join("parent")).unwrap();
        let write = |dir: &Path, pages_id: u32, entries: &[Entry], bytes: &[u8]| {
            let mut map = Pagemap::new(pages_id);
            for x in entries {
                map.push(x.vaddr, x.nr_pages, x.flags);
            }
            std::fs::write(
                dir.join(shmem_pagemap_file_name(obj.shmid)),
                map.encode().unwrap(),
            )
            .unwrap();
            std::fs::write(dir.join(pages_file_name(pages_id)), bytes).unwrap();
        };
        let page = |v: u8| vec![v; P as usize];
        let mut one = Vec::new();
        for i in 0..6u8 {
            one.extend(page(if i == 2 { 0xee } else { i + 1 }));
        }
        write(&d1, 1, &[e(0, 6, PE_PRESENT)], &one);
        write(&d2, 1, &[e(0, 1, PE_PRESENT), e(1, 5, PE_PARENT)], &page(1));

        let levels = read_chain(&d2, obj.shmid).unwrap();
        assert_eq!(levels.len(), 2);
        let present = handle.present().unwrap();
        assert_eq!(present, vec![PageRange::new(0, 7)]);
        let c = compare(&handle, &present, &levels).unwrap();
        // Page 2 differs, page 6 is not in the chain; the rest are equal.
        assert_eq!(
            c.copy,
            vec![PageRange::new(2 * P, 1), PageRange::new(6 * P, 1)]
        );
        assert_eq!(
            c.to_parent,
            vec![PageRange::new(0, 2), PageRange::new(3 * P, 3)]
        );
        assert_eq!(c.compared, 6);

        // A page written since: copied.
        fill(4, 0x55);
        let c = compare(&handle, &present, &levels).unwrap();
        assert_eq!(
            c.copy,
            vec![
                PageRange::new(2 * P, 1),
                PageRange::new(4 * P, 1),
                PageRange::new(6 * P, 1)
            ]
        );

        // The parent's record decides: another object's identity, none, ours.
        let mut parent = ShmemParent {
            dir: d2.clone(),
            identities: HashMap::from([(obj.shmid, "1:00".to_string())]),
        };
        let a = against(&parent, obj.shmid, Ok(&id), &handle, &present).unwrap();
        assert_eq!(
            (a.in_parent, a.copy),
            (InParent::OtherObject, present.clone())
        );
        parent.identities.clear();
        let a = against(&parent, obj.shmid, Ok(&id), &handle, &present).unwrap();
        assert_eq!(a.in_parent, InParent::Unrecorded);
        parent.identities.insert(obj.shmid, id.clone());
        let a = against(&parent, obj.shmid, Ok(&id), &handle, &present).unwrap();
        assert_eq!((a.in_parent, a.compared), (InParent::Compared, 6));
        // The pages file of "1" cut short: its pages cannot be read, so copied.
        std::fs::write(d1.join(pages_file_name(1)), &one[..2 * P as usize]).unwrap();
        let a = against(&parent, obj.shmid, Ok(&id), &handle, &present).unwrap();
        assert_eq!(
            a.copy,
            vec![PageRange::new(P, 6)],
            "only page 0 (in \"2\") is left"
        );
        // Another shmid: the parent holds no such object.
        let a = against(&parent, obj.shmid + 1, Ok(&id), &handle, &present).unwrap();
        assert_eq!(a.in_parent, InParent::New);

        std::fs::remove_dir_all(&root).unwrap();
        // SAFETY: our mapping, nothing points into it any more.
        unsafe { libc::munmap(base, len) };
    }
}
