//! Anonymous shared memory (`MAP_SHARED|MAP_ANONYMOUS`, shared mappings of
//! `/dev/zero`), as CRIU's pre-dump takes it (criu/shmem.c): each shared
//! object once for the whole tree, whichever processes map it and at whatever
//! addresses, its pages by offset in the object.
//!
//! # Identity
//!
//! Such a mapping is backed by a file of the kernel's internal tmpfs (shmem),
//! shown in /proc/PID/maps as `/dev/zero (deleted)` with that file's inode
//! number. Processes that share the object (by fork) show the same inode; CRIU
//! calls it the object's `shmid` and names its images `pagemap-shmem-<shmid>.img`.
//! Its size is the largest `offset + length` among its mappings.
//!
//! # Pages
//!
//! The object is read through the file itself, opened as
//! /proc/PID/map_files/START-END of any one mapping (root or
//! CAP_CHECKPOINT_RESTORE): `lseek(SEEK_DATA/SEEK_HOLE)` finds the pages the
//! object holds (resident or swapped; a page only read through a shared
//! mapping is allocated, zero-filled, and counts), and `sendfile` copies them
//! into the pages image. No process's mappings are needed once the file is
//! open: a process unmapping or exiting meanwhile changes nothing.
//!
//! # What is not taken here (`SharedKind`)
//!
//! CRIU's pre-dump leaves these to its final dump, or skips them, and so does
//! predump: SysV shared memory (dumped with the IPC namespace), memfd (dumped
//! with its file), shared mappings of regular files (their pages are the
//! file's) and hugetlb.
//!
//! # Dirty tracking: not through the processes
//!
//! A write to a shared page shows only in the page tables of the process that
//! wrote it, and that record is lost when the entry goes while the page stays
//! in the object (reclaim, MADV_DONTNEED, a writer that exited or unmapped).
//! So no union of the mappings' tracking is trusted here (one was written and
//! removed, unused): a tree's pre-dump on parent images compares each object
//! with the chain's copy instead, which needs no record (`shmem_chain`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::maps::Vma;
use crate::{push_merged, Error, PageRange, Result, PAGE_SIZE};

/// What a shared mapping is, for what a pre-dump does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedKind {
    /// Anonymous shared memory: pre-dumped once per object.
    Anonymous,
    /// SysV shared memory (`shmat`): CRIU dumps it with the IPC namespace.
    SysV,
    /// A memfd: CRIU dumps its contents with the file, in the final dump.
    Memfd,
    /// hugetlbfs pages (shared anonymous huge pages included).
    HugeTlb,
    /// A regular file's pages: the file holds them.
    File,
}

impl SharedKind {
    /// Why a mapping of this kind is not in a pre-dump (None: it is).
    pub fn reason(self) -> Option<&'static str> {
        match self {
            SharedKind::Anonymous => None,
            SharedKind::SysV => {
                Some("SysV shared memory: CRIU dumps it with the IPC namespace, in the final dump")
            }
            SharedKind::Memfd => {
                Some("memfd: CRIU dumps its contents with the file, in the final dump")
            }
            SharedKind::HugeTlb => Some("hugetlb: CRIU dumps it in the final dump"),
            SharedKind::File => Some("a shared mapping of a file: its pages are the file's"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SharedKind::Anonymous => "shmem",
            SharedKind::SysV => "sysv-shm",
            SharedKind::Memfd => "memfd",
            SharedKind::HugeTlb => "hugetlb",
            SharedKind::File => "file-shared",
        }
    }
}

/// A shared mapping that is not in the pre-dump, and why.
#[derive(Debug, Clone)]
pub struct NotDumped {
    pub pid: i32,
    pub start: u64,
    pub end: u64,
    pub name: String,
    pub kind: SharedKind,
    pub reason: &'static str,
}

impl NotDumped {
    pub fn bytes(&self) -> u64 {
        self.end - self.start
    }
    pub fn pages(&self) -> u64 {
        self.bytes() / PAGE_SIZE
    }
}

/// Why a single-process pre-dump leaves anonymous shared memory out: only the
/// tree's path writes pagemap-shmem images, and a process of its own that maps
/// such memory takes that path in every mode (see `maps_anonymous`): one that
/// got here mapped it after it was listed.
pub const ANONYMOUS_OF_ONE_PROCESS: &str =
    "anonymous shared memory mapped after predump looked for it: not written by this \
     pre-dump (the next one writes it)";

/// Whether process `pid` maps anonymous shared memory (a pre-dump of it then
/// writes pagemap-shmem images, as a tree's does).
pub fn maps_anonymous(pid: i32) -> Result<bool> {
    let text = crate::proc::read_proc(pid, &format!("/proc/{pid}/maps"))?;
    Ok(crate::maps::parse_maps(&text)?
        .iter()
        .any(|v| v.shared && kind(v) == SharedKind::Anonymous))
}

/// The shared mappings of process `pid` left out of its pre-dump, each with
/// its reason: those CRIU's pre-dump leaves out (`SharedKind::reason`), and
/// anonymous shared memory too when `anonymous` gives a reason for it.
pub fn not_dumped(pid: i32, vmas: &[Vma], anonymous: Option<&'static str>) -> Vec<NotDumped> {
    vmas.iter()
        .filter(|v| v.shared)
        .filter_map(|v| {
            let kind = kind(v);
            let reason = kind.reason().or(anonymous)?;
            Some(NotDumped {
                pid,
                start: v.start,
                end: v.end,
                name: v.name.clone(),
                kind,
                reason,
            })
        })
        .collect()
}

/// The kind of a shared mapping (`vma.shared`), from its name in
/// /proc/PID/maps. An anonymous one is confirmed when its file is opened
/// (`Object::open` checks that it lives on the kernel's shmem).
pub fn kind(vma: &Vma) -> SharedKind {
    let name = vma.name.as_str();
    if name.starts_with("/SYSV") {
        SharedKind::SysV
    } else if name.starts_with("/memfd:") {
        SharedKind::Memfd
    } else if name.starts_with("/anon_hugepage") {
        SharedKind::HugeTlb
    } else if (name == "/dev/zero (deleted)" || name.starts_with("[anon_shmem:")) && vma.inode != 0
    {
        SharedKind::Anonymous
    } else {
        SharedKind::File
    }
}

/// One process's mapping of a shared object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mapping {
    pub pid: i32,
    pub start: u64,
    pub end: u64,
    /// Where in the object `start` is, in bytes.
    pub offset: u64,
}

impl Mapping {
    fn of(pid: i32, vma: &Vma) -> Mapping {
        Mapping {
            pid,
            start: vma.start,
            end: vma.end,
            offset: vma.offset,
        }
    }

    /// The pages of `ranges` (addresses of this process, sorted) that fall in
    /// this mapping, as offsets in the object.
    pub fn to_offsets(&self, ranges: &[PageRange]) -> Vec<PageRange> {
        let mut out = Vec::new();
        let own = [PageRange::new(
            self.start,
            (self.end - self.start) / PAGE_SIZE,
        )];
        for r in crate::intersect(ranges, &own) {
            push_merged(&mut out, r.start - self.start + self.offset, r.pages);
        }
        out
    }

    /// This mapping's part of the object, as offsets.
    pub fn span(&self) -> PageRange {
        PageRange::new(self.offset, (self.end - self.start) / PAGE_SIZE)
    }
}

/// One anonymous shared memory object of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Its inode number: CRIU's shmid.
    pub shmid: u64,
    /// Bytes: the largest offset + length of its mappings (CRIU's size).
    pub size: u64,
    /// Every mapping of it, in the order given (processes in tree order).
    pub mappings: Vec<Mapping>,
}

impl Object {
    pub fn pages(&self) -> u64 {
        self.size / PAGE_SIZE
    }

    /// Opens the object through the map_files link of one of its mappings
    /// (the first that still exists), checking that it is the shmem file of
    /// this inode.
    pub fn open(&self) -> Result<Handle> {
        let mut last = None;
        for m in &self.mappings {
            let path = format!("/proc/{}/map_files/{:x}-{:x}", m.pid, m.start, m.end);
            match File::open(&path) {
                Ok(file) => {
                    let meta = file
                        .metadata()
                        .map_err(|e| Error::sys(format!("fstat of {path}"), e))?;
                    if meta.ino() != self.shmid || meta.dev() != shmem_dev()? {
                        return Err(Error::InvalidArgument(format!(
                            "{path} is not the shared memory object {} (inode {} on device {:#x})",
                            self.shmid,
                            meta.ino(),
                            meta.dev()
                        )));
                    }
                    return Ok(Handle {
                        file,
                        shmid: self.shmid,
                        size: self.size,
                    });
                }
                // Unmapped, or the process is gone: try the next mapping.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH)) => {
                    last = Some(Error::NoSuchProcess { pid: m.pid });
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) => {
                    return Err(Error::Permission {
                        pid: m.pid,
                        action: "open the shared memory (/proc/PID/map_files needs CAP_CHECKPOINT_RESTORE or root) of",
                        source: e,
                    })
                }
                Err(e) => return Err(Error::sys(format!("opening {path}"), e)),
            }
        }
        Err(last.unwrap_or_else(|| {
            Error::InvalidArgument(format!(
                "shared memory object {} has no mapping",
                self.shmid
            ))
        }))
    }
}

/// The anonymous shared objects of a set of processes (pid, its mappings), by
/// shmid: each object once, with all its mappings. Other shared mappings are
/// not objects here (see `kind`).
pub fn objects<'a>(procs: impl IntoIterator<Item = (i32, &'a [Vma])>) -> Vec<Object> {
    let mut by_id: BTreeMap<u64, Object> = BTreeMap::new();
    for (pid, vmas) in procs {
        for vma in vmas
            .iter()
            .filter(|v| v.shared && kind(v) == SharedKind::Anonymous)
        {
            let o = by_id.entry(vma.inode).or_insert_with(|| Object {
                shmid: vma.inode,
                size: 0,
                mappings: Vec::new(),
            });
            o.size = o.size.max(vma.offset + (vma.end - vma.start));
            o.mappings.push(Mapping::of(pid, vma));
        }
    }
    by_id.into_values().collect()
}

/// The device of the kernel's internal shmem mount, from a shared anonymous
/// page of our own (CRIU's kerndat_get_shmemdev): memfds and anonymous shared
/// mappings live there.
pub fn shmem_dev() -> Result<u64> {
    static DEV: std::sync::OnceLock<std::result::Result<u64, String>> = std::sync::OnceLock::new();
    DEV.get_or_init(|| {
        // SAFETY: a fresh shared anonymous mapping of one page, unmapped
        // before returning; no reference to it escapes.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                PAGE_SIZE as usize,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                return Err(io::Error::last_os_error().to_string());
            }
            let path = format!(
                "/proc/self/map_files/{:x}-{:x}",
                p as u64,
                p as u64 + PAGE_SIZE
            );
            let dev = std::fs::metadata(&path).map(|m| m.dev());
            libc::munmap(p, PAGE_SIZE as usize);
            dev.map_err(|e| format!("{path}: {e}"))
        }
    })
    .clone()
    .map_err(|e| Error::sys("finding the shmem device", io::Error::other(e)))
}

/// An open shared memory object.
#[derive(Debug)]
pub struct Handle {
    file: File,
    shmid: u64,
    size: u64,
}

impl Handle {
    pub fn shmid(&self) -> u64 {
        self.shmid
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// The pages the object holds (resident or swapped), as offsets, sorted:
    /// the data segments of its file within the object's size.
    pub fn present(&self) -> Result<Vec<PageRange>> {
        let fd = self.file.as_raw_fd();
        let mut out = Vec::new();
        let mut at: i64 = 0;
        let end = self.size as i64;
        while at < end {
            // SAFETY: lseek on an fd we own; no pointer.
            let data = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
            if data < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENXIO) {
                    break; // no data after `at`
                }
                return Err(Error::sys(
                    format!("SEEK_DATA in shared memory {}", self.shmid),
                    e,
                ));
            }
            if data >= end {
                break;
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
            if hole < 0 {
                return Err(Error::sys(
                    format!("SEEK_HOLE in shared memory {}", self.shmid),
                    io::Error::last_os_error(),
                ));
            }
            let first = data as u64 / PAGE_SIZE;
            let last = (hole.min(end) as u64).div_ceil(PAGE_SIZE);
            if last > first {
                push_merged(&mut out, first * PAGE_SIZE, last - first);
            }
            if hole <= at {
                break; // no progress: never loop on a kernel surprise
            }
            at = hole;
        }
        Ok(out)
    }

    /// Reads `buf.len()` bytes of the object from `offset` (short at its end).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match std::os::unix::fs::FileExt::read_at(
                &self.file,
                &mut buf[done..],
                offset + done as u64,
            ) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Error::sys(
                        format!("reading shared memory {}", self.shmid),
                        e,
                    ))
                }
            }
        }
        Ok(done)
    }

    /// Appends the pages of `ranges` (offsets, sorted) to `out` at its current
    /// position, in order: sendfile, one copy in the kernel. Returns the bytes
    /// written (the object's file never shrinks under an open mapping, so a
    /// short copy is an error).
    pub fn copy_to(&self, ranges: &[PageRange], out: &File, out_path: &Path) -> Result<u64> {
        let mut written = 0;
        for r in ranges {
            let mut off = r.start as libc::off_t;
            let mut left = r.len() as usize;
            while left > 0 {
                // SAFETY: sendfile between two fds we own; `off` is a valid
                // in/out offset for the input, which is not moved.
                let n = unsafe {
                    libc::sendfile(out.as_raw_fd(), self.file.as_raw_fd(), &mut off, left)
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() == Some(libc::EINTR) {
                        continue;
                    }
                    return Err(match e.raw_os_error() {
                        Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
                            crate::image::write_error(out_path, e)
                        }
                        _ => Error::sys(format!("copying shared memory {}", self.shmid), e),
                    });
                }
                if n == 0 {
                    return Err(Error::sys(
                        format!("copying shared memory {}", self.shmid),
                        io::Error::from(io::ErrorKind::UnexpectedEof),
                    ));
                }
                left -= n as usize;
                written += n as u64;
            }
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vma(start: u64, pages: u64, offset: u64, inode: u64, name: &str) -> Vma {
        Vma {
            start,
            end: start + pages * PAGE_SIZE,
            read: true,
            write: true,
            exec: false,
            shared: true,
            offset,
            inode,
            name: name.to_string(),
        }
    }

    #[test]
    fn kinds_by_name() {
        let k = |n: &str, ino| kind(&vma(0x1000, 1, 0, ino, n));
        assert_eq!(k("/dev/zero (deleted)", 7), SharedKind::Anonymous);
        assert_eq!(k("[anon_shmem:pool]", 7), SharedKind::Anonymous);
        assert_eq!(k("/SYSV0000002a (deleted)", 7), SharedKind::SysV);
        assert_eq!(k("/memfd:buf (deleted)", 7), SharedKind::Memfd);
        assert_eq!(k("/anon_hugepage (deleted)", 7), SharedKind::HugeTlb);
        assert_eq!(k("/var/lib/db/file", 7), SharedKind::File);
        assert!(SharedKind::Memfd.reason().unwrap().contains("memfd"));
        assert!(SharedKind::Anonymous.reason().is_none());
    }

    #[test]
    fn objects_group_mappings_by_inode() {
        let p = PAGE_SIZE;
        let a = [
            vma(0x10000, 4, 0, 7, "/dev/zero (deleted)"),
            vma(0x40000, 2, 0, 9, "/dev/zero (deleted)"),
            vma(0x50000, 2, 0, 3, "/memfd:x (deleted)"),
        ];
        let b = [
            // The same object 7 at another address, its second half only.
            vma(0x90000, 2, 2 * p, 7, "/dev/zero (deleted)"),
            // mremap grew it here: 6 pages from offset 0.
            vma(0xa0000, 6, 0, 9, "/dev/zero (deleted)"),
        ];
        let objs = objects([(10, &a[..]), (11, &b[..])]);
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[0].shmid, 7);
        assert_eq!(objs[0].size, 4 * p);
        assert_eq!(objs[0].mappings.len(), 2);
        assert_eq!(objs[1].shmid, 9);
        assert_eq!(objs[1].size, 6 * p);
        let m = objs[0].mappings[1];
        assert_eq!((m.pid, m.offset), (11, 2 * p));
        // Addresses of process 11 → offsets in object 7.
        let written = [PageRange::new(0x8f000, 2), PageRange::new(0x91000, 5)];
        assert_eq!(m.to_offsets(&written), vec![PageRange::new(2 * p, 2)]);
    }

    /// Our own shared memory, found, scanned and copied as a tree's would be.
    #[test]
    fn own_shared_memory_is_found_and_copied() {
        let pages = 16usize;
        let len = pages * PAGE_SIZE as usize;
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
        let base = base as u64;
        for i in [0u64, 1, 5, 15] {
            // SAFETY: page i is inside the mapping.
            unsafe {
                std::ptr::write_bytes(
                    (base + i * PAGE_SIZE) as *mut u8,
                    i as u8 + 1,
                    PAGE_SIZE as usize,
                )
            };
        }
        let me = std::process::id() as i32;
        let text = std::fs::read_to_string("/proc/self/maps").unwrap();
        let vmas = crate::maps::parse_maps(&text).unwrap();
        let objs = objects([(me, &vmas[..])]);
        let obj = objs
            .iter()
            .find(|o| o.mappings.iter().any(|m| m.start == base))
            .expect("our mapping is an object");
        assert_eq!(obj.size, len as u64);
        let h = obj.open().unwrap();
        let present = h.present().unwrap();
        let p = PAGE_SIZE;
        assert_eq!(
            present,
            vec![
                PageRange::new(0, 2),
                PageRange::new(5 * p, 1),
                PageRange::new(15 * p, 1)
            ]
        );
        let path = std::env::temp_dir().join(format!("predump-shmem-test-{me}"));
        let out = File::create(&path).unwrap();
        assert_eq!(h.copy_to(&present, &out, &path).unwrap(), 4 * p);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let firsts: Vec<u8> = bytes.chunks(p as usize).map(|c| c[0]).collect();
        assert_eq!(firsts, vec![1, 2, 6, 16]);
        assert!(bytes
            .chunks(p as usize)
            .all(|c| c.iter().all(|&b| b == c[0])));
        // SAFETY: our mapping, nothing points into it any more.
        unsafe { libc::munmap(base as *mut libc::c_void, len) };
    }
}
