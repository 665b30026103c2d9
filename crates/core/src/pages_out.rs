//! Where a pre-dump's pages go: the pages image on this host ([`PagesFile`]),
//! or a page server ([`crate::pageserver::sender::ServerPages`]). The drain
//! (read mode's pipe, splice mode's pipes) hands each output whole ranges of
//! pages waiting in a pipe, with their addresses; a page server needs the
//! addresses for its headers, the file does not.
//!
//! This is the seam that the pages-and-pagemap owner (CRIU's `page_xfer`) is
//! to grow from: today the local pagemap is still written by the TS side from
//! the report's regions, the server's by the server.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{splice, SpliceFFlags};

use crate::image::write_error;
use crate::{Error, PageRange, Result};

/// An output of drained pages.
pub trait PagesOut: Send {
    /// Whether the pipes handed to [`PagesOut::write_from_pipe`] must own their pages
    /// (filled by a copy, not by vmsplice of a buffer that is reused): true for
    /// a socket, which keeps referencing spliced pages until the peer has them.
    fn needs_owned_pipe(&self) -> bool {
        false
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

    /// Everything moved is stored (synced, or acknowledged by the server).
    fn finish(&mut self) -> Result<()>;

    /// What the output is, for messages ("the pages image /x/pages-1.img").
    fn describe(&self) -> String;
}

/// The pages image, written by splicing from the pipes.
pub struct PagesFile {
    file: File,
    path: PathBuf,
    /// False once splice refused the image (EINVAL: O_APPEND, or a file system
    /// without splice support): then read + write through `scratch`.
    splice_ok: bool,
    scratch: Vec<u8>,
}

impl PagesFile {
    /// Creates the image (0600; it must not exist).
    pub fn create(path: &Path) -> Result<PagesFile> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| write_error(path, e))?;
        Ok(PagesFile::new(file, path))
    }

    /// An already open file (tests, benchmarks).
    pub fn new(file: File, path: &Path) -> PagesFile {
        PagesFile {
            file,
            path: path.to_path_buf(),
            splice_ok: true,
            scratch: Vec::new(),
        }
    }

    pub fn file(&self) -> &File {
        &self.file
    }
}

impl PagesOut for PagesFile {
    fn write_from_pipe(
        &mut self,
        pipe: BorrowedFd<'_>,
        _regions: &[PageRange],
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
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        self.file.sync_all().map_err(|e| write_error(&self.path, e))
    }

    fn describe(&self) -> String {
        format!("the pages image {}", self.path.display())
    }
}
