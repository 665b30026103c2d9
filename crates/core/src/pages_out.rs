//! Where a pre-dump's pages go: the pages image on this host ([`PagesFile`]),
//! or a page server ([`crate::pageserver::sender::ServerPages`]). The drain
//! (read mode's pipe, splice mode's pipes) hands each output whole ranges of
//! pages waiting in a pipe, with their addresses.
//!
//! Each output owns the pair of a pages image and its pagemap, as CRIU's
//! `page_xfer` owns `write_pagemap` and `write_pages`: the entries come from
//! the same calls that move the bytes (the pages left to the parent, then each
//! run as it is written), so they are in the order of the bytes by
//! construction, by one piece of code for a file and a socket
//! (`image::pagemap::PagemapBuilder`). The file writes `pagemap-*.img` itself
//! when it is finished; the page server is sent the entries with the pages.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{splice, SpliceFFlags};

use crate::image::pagemap::PagemapBuilder;
use crate::image::{write_error, write_file_atomic};
use crate::{Error, PageRange, Result, PAGE_SIZE};

/// An output of drained pages.
pub trait PagesOut: Send {
    /// Whether the pipes handed to [`PagesOut::write_from_pipe`] must own their pages
    /// (filled by a copy, not by vmsplice of a buffer that is reused): true for
    /// a socket, which keeps referencing spliced pages until the peer has them.
    fn needs_owned_pipe(&self) -> bool {
        false
    }

    /// Whether the read mode's drain hands this output its filled buffers
    /// ([`PagesOut::write_from_buffer`]) instead of a pipe: true for a socket,
    /// where sending from the buffer is the one copy the bytes need, while a
    /// pipe would cost that copy (into pipe pages the socket may keep), a page
    /// allocation per page and a splice.
    fn takes_buffers(&self) -> bool {
        false
    }

    /// Moves `regions` (sorted, back to back) out of `data`, their bytes: the
    /// buffer is reused as soon as this returns. Only called on an output
    /// whose [`PagesOut::takes_buffers`] is true.
    fn write_from_buffer(&mut self, _data: &[u8], _regions: &[PageRange]) -> Result<()> {
        Err(Error::InvalidArgument(format!(
            "{} takes its pages from a pipe, not from a buffer",
            self.describe()
        )))
    }

    /// The pages that stay in the parent images (PE_PARENT), sorted: told
    /// before any page is moved.
    fn parent_ranges(&mut self, _ranges: &[PageRange]) -> Result<()> {
        Ok(())
    }

    /// Moves `regions` (sorted, back to back: `len` bytes in all) out of `pipe`.
    /// On error, also the number of this call's bytes still in the pipe (so
    /// that a writer can drop them and let the pipe's filler finish).
    fn write_from_pipe(
        &mut self,
        pipe: BorrowedFd<'_>,
        regions: &[PageRange],
        len: usize,
    ) -> std::result::Result<(), (Error, usize)>;

    /// Everything moved is stored (synced, or acknowledged by the server),
    /// and so is the pagemap of it.
    fn finish(&mut self) -> Result<()>;

    /// The entries of the pagemap written or sent (known once finished).
    fn pagemap_entries(&self) -> usize;

    /// What the output is, for messages ("the pages image /x/pages-1.img").
    fn describe(&self) -> String;
}

/// The pages image, written by splicing from the pipes, and its pagemap.
pub struct PagesFile {
    file: File,
    path: PathBuf,
    /// False once splice refused the image (EINVAL: O_APPEND, or a file system
    /// without splice support): then read + write through `scratch`.
    splice_ok: bool,
    scratch: Vec<u8>,
    /// The pagemap of the bytes written, and where it goes (None: a bare pages
    /// file, or the pagemap is written).
    pagemap: Option<PagemapOut>,
    entries: usize,
}

/// A pagemap being built, and its file.
struct PagemapOut {
    builder: PagemapBuilder,
    dir: PathBuf,
    name: String,
}

impl PagesFile {
    /// Creates `pages-<pages_id>.img` in `dir` (0600; it must not exist), whose
    /// pagemap [`PagesOut::finish`] writes as `dir/pagemap_name` (a temporary
    /// name, synced, renamed: see `image::write_file_atomic`; the caller syncs
    /// the directory before the image that marks the set complete).
    pub fn create(dir: &Path, pages_id: u32, pagemap_name: String) -> Result<PagesFile> {
        let path = dir.join(crate::image::pagemap::pages_file_name(pages_id));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| write_error(&path, e))?;
        let mut out = PagesFile::new(file, &path);
        out.pagemap = Some(PagemapOut {
            builder: PagemapBuilder::new(pages_id),
            dir: dir.to_path_buf(),
            name: pagemap_name,
        });
        Ok(out)
    }

    /// An already open file, without a pagemap (tests, benchmarks).
    pub fn new(file: File, path: &Path) -> PagesFile {
        PagesFile {
            file,
            path: path.to_path_buf(),
            splice_ok: true,
            scratch: Vec::new(),
            pagemap: None,
            entries: 0,
        }
    }

    /// The file, for a writer that appends to it directly, then says what it
    /// wrote with [`PagesFile::appended`].
    pub fn file(&self) -> &File {
        &self.file
    }

    /// `regions`' pages (sorted) were appended to [`PagesFile::file`], in order.
    pub fn appended(&mut self, regions: &[PageRange]) -> Result<()> {
        match &mut self.pagemap {
            Some(pm) => regions
                .iter()
                .try_for_each(|r| pm.builder.written(r.start, r.pages).map(|_| ())),
            None => Ok(()),
        }
    }

    /// The pagemap of what was written, into its file; checked against the
    /// pages image's size first.
    fn write_pagemap(&mut self) -> Result<()> {
        let Some(pm) = self.pagemap.take() else {
            return Ok(());
        };
        let present = pm.builder.present_pages();
        let map = pm.builder.finish()?;
        let bytes = self
            .file
            .metadata()
            .map_err(|e| Error::sys(format!("fstat {}", self.path.display()), e))?
            .len();
        if bytes != present * PAGE_SIZE {
            return Err(Error::Image {
                file: self.path.display().to_string(),
                detail: format!(
                    "holds {bytes} bytes, but the pages written into it are {present} pages"
                ),
            });
        }
        write_file_atomic(&pm.dir, &pm.name, &map.encode()?)?;
        self.entries = map.entries.len();
        Ok(())
    }
}

impl PagesOut for PagesFile {
    fn parent_ranges(&mut self, ranges: &[PageRange]) -> Result<()> {
        match &mut self.pagemap {
            Some(pm) => pm.builder.parent(ranges),
            None => Ok(()),
        }
    }

    fn write_from_pipe(
        &mut self,
        pipe: BorrowedFd<'_>,
        regions: &[PageRange],
        len: usize,
    ) -> std::result::Result<(), (Error, usize)> {
        let mut left = len;
        while left > 0 {
            let moved = if self.splice_ok {
                match splice(
                    pipe,
                    None,
                    self.file.as_fd(),
                    None,
                    left,
                    SpliceFFlags::SPLICE_F_MOVE,
                ) {
                    Ok(n) => n,
                    Err(Errno::EINTR) => continue,
                    Err(Errno::EINVAL) => {
                        self.splice_ok = false;
                        continue;
                    }
                    Err(e) => return Err((write_error(&self.path, e.into()), left)),
                }
            } else {
                if self.scratch.is_empty() {
                    self.scratch = vec![0; 1 << 16];
                }
                let want = left.min(self.scratch.len());
                let n = match nix::unistd::read(pipe, &mut self.scratch[..want]) {
                    Ok(n) => n,
                    Err(Errno::EINTR) => continue,
                    Err(e) => return Err((Error::sys("read drain pipe", e), left)),
                };
                if let Err(e) = self.file.write_all(&self.scratch[..n]) {
                    return Err((write_error(&self.path, e), left - n));
                }
                n
            };
            if moved == 0 {
                let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "drain pipe ran dry");
                return Err((Error::sys("splice pages", eof), 0));
            }
            left -= moved;
        }
        self.appended(regions).map_err(|e| (e, 0))
    }

    /// Syncs the pages image, then writes its pagemap.
    fn finish(&mut self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| write_error(&self.path, e))?;
        self.write_pagemap()
    }

    fn pagemap_entries(&self) -> usize {
        self.entries
    }

    fn describe(&self) -> String {
        format!("the pages image {}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::pagemap::{Entry, Pagemap, PE_PARENT, PE_PRESENT};
    use std::os::fd::AsFd;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("predump-pages-out-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        dir
    }

    fn pr(page: u64, pages: u64) -> PageRange {
        PageRange::new(page * PAGE_SIZE, pages)
    }

    /// Pages through a pipe, as the drain hands them: the pagemap the file
    /// writes lists them in the order of its bytes, with the parent's runs.
    #[test]
    fn the_pages_file_writes_the_pagemap_of_its_bytes() {
        let dir = temp_dir("pair");
        let mut out = PagesFile::create(&dir, 3, "pagemap-42.img".into()).unwrap();
        out.parent_ranges(&[pr(0x10, 2), pr(0x40, 1)]).unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        for (regions, fill) in [
            (vec![pr(0x12, 1), pr(0x20, 1)], 1u8),
            (vec![pr(0x21, 1)], 2),
        ] {
            let len = regions.len() * PAGE_SIZE as usize;
            nix::unistd::write(&w, &vec![fill; len]).unwrap();
            out.write_from_pipe(r.as_fd(), &regions, len).unwrap();
        }
        out.finish().unwrap();
        let bytes = std::fs::read(dir.join("pagemap-42.img")).unwrap();
        let m = Pagemap::decode(&bytes, "pagemap-42.img").unwrap();
        let e = |page: u64, nr_pages, flags| Entry {
            vaddr: page * PAGE_SIZE,
            nr_pages,
            flags,
        };
        assert_eq!(m.pages_id, 3);
        assert_eq!(
            m.entries,
            vec![
                e(0x10, 2, PE_PARENT),
                e(0x12, 1, PE_PRESENT),
                e(0x20, 2, PE_PRESENT),
                e(0x40, 1, PE_PARENT),
            ]
        );
        assert_eq!(out.pagemap_entries(), 4);
        let pages = std::fs::read(dir.join("pages-3.img")).unwrap();
        assert_eq!(pages.len() as u64, 3 * PAGE_SIZE);
        assert_eq!(pages[2 * PAGE_SIZE as usize], 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A writer that appends to the file itself says what it wrote; bytes the
    /// pagemap does not account for are an EIMAGE, and no pagemap is written.
    #[test]
    fn bytes_not_accounted_for_are_refused() {
        let dir = temp_dir("size");
        let mut out = PagesFile::create(&dir, 1, "pagemap-shmem-9.img".into()).unwrap();
        out.file().write_all(&[7; 2 * PAGE_SIZE as usize]).unwrap();
        out.appended(&[pr(0, 1)]).unwrap();
        let e = out.finish().unwrap_err();
        assert_eq!(e.code(), "EIMAGE");
        assert!(
            e.to_string()
                .contains("holds 8192 bytes, but the pages written into it are 1 pages"),
            "{e}"
        );
        assert!(!dir.join("pagemap-shmem-9.img").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
