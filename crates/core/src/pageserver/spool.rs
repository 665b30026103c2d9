//! The server's two stages overlapped: the session splices page data from the
//! socket into a pipe while a writer thread of its own splices the pipe into
//! the pages image. Receiving (the network stack's work, the next headers)
//! and writing (the copy into the file's pages, the one copy on the server's
//! side) then run at the same time instead of taking turns, as they do in
//! CRIU's page server (`page_server_add`: one splice in, then one splice out).
//!
//! The writer is told, in order, how many bytes of the pipe go into which
//! file ([`Spool::submit`]) before the session puts them there. A write that
//! fails (a full disk) is kept for the session to report, and the writer goes
//! on emptying the pipe into nothing, so that the session never waits on a
//! pipe nobody empties; the session asks [`Spool::failed`] after each step and
//! [`Spool::flush`] before it syncs a file. Closing the pipe's write end (the
//! spool dropped) ends a writer waiting for data that will not come.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};

/// The pipe size asked for: 4 MiB of page data in flight between the socket
/// and the file. Without CAP_SYS_RESOURCE the kernel caps it at
/// /proc/sys/fs/pipe-max-size (1 MiB by default), which is then taken.
const PIPE_BYTES: usize = 4 << 20;

/// How much of a file the writer leaves to the kernel's writeback timer: after
/// every this many bytes it starts the writeback of what it wrote (on a disk,
/// the final fsync then waits for the tail, not for the whole image; on
/// tmpfs it is nothing).
const WRITEBACK_EVERY: u64 = 8 << 20;

/// One run of bytes for the writer: the next `len` bytes of the pipe go to
/// `file`, at its position.
struct Job {
    file: Arc<File>,
    len: u64,
}

#[derive(Default)]
struct Progress {
    submitted: u64,
    written: u64,
    error: Option<io::Error>,
}

struct Shared {
    progress: Mutex<Progress>,
    changed: Condvar,
    failed: AtomicBool,
}

/// The writer thread and the pipe that feeds it.
pub struct Spool {
    pipe_w: Option<OwnedFd>,
    size: usize,
    jobs: Option<mpsc::Sender<Job>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Spool {
    /// Makes the pipe (as large as allowed) and starts the writer.
    pub fn start() -> io::Result<Spool> {
        let (pipe_r, pipe_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        if fcntl(&pipe_w, FcntlArg::F_SETPIPE_SZ(PIPE_BYTES as i32)).is_err() {
            let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok());
            if let Some(max) = max.filter(|&m| (m as usize) < PIPE_BYTES) {
                let _ = fcntl(&pipe_w, FcntlArg::F_SETPIPE_SZ(max));
            }
        }
        let size = fcntl(&pipe_w, FcntlArg::F_GETPIPE_SZ)? as usize;
        let shared = Arc::new(Shared {
            progress: Mutex::new(Progress::default()),
            changed: Condvar::new(),
            failed: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            pipe: File::from(pipe_r),
            size,
            shared: shared.clone(),
            scratch: Vec::new(),
            at: None,
        };
        let thread = std::thread::Builder::new()
            .name("ps-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok(Spool {
            pipe_w: Some(pipe_w),
            size,
            jobs: Some(tx),
            shared,
            thread: Some(thread),
        })
    }

    /// The pipe's write end, where the session puts page data.
    pub fn pipe(&self) -> BorrowedFd<'_> {
        self.pipe_w.as_ref().expect("open until dropped").as_fd()
    }

    /// The pipe's real size.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The next `len` bytes put into the pipe go to `file`.
    pub fn submit(&mut self, file: &Arc<File>, len: u64) -> io::Result<()> {
        self.shared.progress.lock().expect("not poisoned").submitted += len;
        let sent = self.jobs.as_ref().map(|j| {
            j.send(Job {
                file: file.clone(),
                len,
            })
        });
        match sent {
            Some(Ok(())) => Ok(()),
            _ => Err(self
                .take_error()
                .unwrap_or_else(|| io::Error::other("the image writer thread is gone"))),
        }
    }

    /// Whether a write failed (then [`Spool::take_error`] says why).
    pub fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }

    /// The write error, once (later calls: a generic one).
    pub fn take_error(&self) -> Option<io::Error> {
        if !self.failed() {
            return None;
        }
        let mut p = self.shared.progress.lock().expect("not poisoned");
        Some(
            p.error
                .take()
                .unwrap_or_else(|| io::Error::other("writing the pages image failed before")),
        )
    }

    /// Bytes submitted so far.
    pub fn submitted(&self) -> u64 {
        self.shared.progress.lock().expect("not poisoned").submitted
    }

    /// Waits until everything submitted is in its file (not synced).
    pub fn flush(&self) -> io::Result<()> {
        self.wait_written(self.submitted())
    }

    /// Waits until the first `mark` bytes submitted are in their files (not
    /// synced): the pipe holds no reference to them any more.
    pub fn wait_written(&self, mark: u64) -> io::Result<()> {
        let mut p = self.shared.progress.lock().expect("not poisoned");
        loop {
            if self.shared.failed.load(Ordering::Acquire) {
                return Err(p
                    .error
                    .take()
                    .unwrap_or_else(|| io::Error::other("writing the pages image failed before")));
            }
            if p.written >= mark {
                return Ok(());
            }
            if self.thread.as_ref().is_none_or(|t| t.is_finished()) {
                return Err(io::Error::other("the image writer thread ended early"));
            }
            p = self.shared.changed.wait(p).expect("not poisoned");
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        // EOF for a writer waiting in the pipe, the end of its jobs.
        self.pipe_w.take();
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The writer thread's side.
struct Writer {
    pipe: File,
    size: usize,
    shared: Arc<Shared>,
    scratch: Vec<u8>,
    /// The file written last, how far, and from where its writeback is not
    /// started yet.
    at: Option<(Arc<File>, u64, u64)>,
}

/// How a job ended.
enum Ended {
    Done,
    /// The pipe's write end closed: the session is over.
    Closed,
    Failed(io::Error, u64),
}

impl Writer {
    fn run(mut self, jobs: mpsc::Receiver<Job>) {
        for job in jobs {
            if self.shared.failed.load(Ordering::Acquire) {
                if !self.discard(job.len) {
                    return;
                }
                continue;
            }
            match self.write(&job) {
                Ended::Done => {
                    self.shared.progress.lock().expect("not poisoned").written += job.len;
                    self.shared.changed.notify_all();
                }
                Ended::Closed => return,
                Ended::Failed(e, left) => {
                    self.shared.progress.lock().expect("not poisoned").error = Some(e);
                    self.shared.failed.store(true, Ordering::Release);
                    self.shared.changed.notify_all();
                    if !self.discard(left) {
                        return;
                    }
                }
            }
        }
    }

    fn write(&mut self, job: &Job) -> Ended {
        let mut left = job.len;
        let mut splice_ok = true;
        while left > 0 {
            let want = (left as usize).min(self.size);
            let moved = if splice_ok {
                match splice(
                    self.pipe.as_fd(),
                    None,
                    job.file.as_fd(),
                    None,
                    want,
                    SpliceFFlags::SPLICE_F_MOVE,
                ) {
                    Ok(n) => n,
                    Err(Errno::EINTR) => continue,
                    // A file that splice cannot write: through a buffer.
                    Err(Errno::EINVAL) => {
                        splice_ok = false;
                        continue;
                    }
                    Err(e) => return Ended::Failed(e.into(), left),
                }
            } else {
                if self.scratch.is_empty() {
                    self.scratch = vec![0; 1 << 16];
                }
                let want = want.min(self.scratch.len());
                let n = match (&self.pipe).read(&mut self.scratch[..want]) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Ended::Failed(e, left),
                };
                if let Err(e) = (&*job.file).write_all(&self.scratch[..n]) {
                    return Ended::Failed(e, left - n as u64);
                }
                n
            };
            if moved == 0 {
                return Ended::Closed;
            }
            left -= moved as u64;
            self.wrote(&job.file, moved as u64);
        }
        Ended::Done
    }

    /// Counts `n` bytes written to `file`, and starts the writeback of every
    /// [`WRITEBACK_EVERY`] bytes.
    fn wrote(&mut self, file: &Arc<File>, n: u64) {
        let same = self.at.as_ref().is_some_and(|(f, ..)| Arc::ptr_eq(f, file));
        if !same {
            self.at = Some((file.clone(), 0, 0));
        }
        let (f, end, synced) = self.at.as_mut().expect("set above");
        *end += n;
        if *end - *synced >= WRITEBACK_EVERY {
            // SAFETY: a plain system call on an open descriptor, no memory
            // passed. Its result does not matter: it only starts writeback,
            // whose errors the final fsync reports.
            unsafe {
                libc::sync_file_range(
                    f.as_raw_fd(),
                    *synced as libc::off64_t,
                    (*end - *synced) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
            *synced = *end;
        }
    }

    /// Drops `len` bytes of the pipe; false once the write end is closed.
    fn discard(&mut self, mut len: u64) -> bool {
        if self.scratch.is_empty() {
            self.scratch = vec![0; 1 << 16];
        }
        while len > 0 {
            let want = (len as usize).min(self.scratch.len());
            match (&self.pipe).read(&mut self.scratch[..want]) {
                Ok(0) => return false,
                Ok(n) => len -= n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(spool: &Spool, data: &[u8]) {
        let mut d = data;
        while !d.is_empty() {
            let n = nix::unistd::write(spool.pipe(), d).unwrap();
            d = &d[n..];
        }
    }

    fn temp(tag: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("predump-spool-{tag}-{}", std::process::id()))
    }

    #[test]
    fn runs_go_to_their_files_in_order() {
        let (pa, pb) = (temp("a"), temp("b"));
        let a = Arc::new(File::create(&pa).unwrap());
        let b = Arc::new(File::create(&pb).unwrap());
        let mut spool = Spool::start().unwrap();
        // More than the pipe holds, so that the writer must run meanwhile.
        let big: Vec<u8> = (0..(spool.size() * 3)).map(|i| (i % 251) as u8).collect();
        spool.submit(&a, big.len() as u64).unwrap();
        put(&spool, &big);
        spool.submit(&b, 5).unwrap();
        put(&spool, b"hello");
        spool.submit(&a, 3).unwrap();
        put(&spool, b"end");
        spool.flush().unwrap();
        drop(spool);
        let mut want = big.clone();
        want.extend_from_slice(b"end");
        assert_eq!(std::fs::read(&pa).unwrap(), want);
        assert_eq!(std::fs::read(&pb).unwrap(), b"hello");
        let _ = std::fs::remove_file(pa);
        let _ = std::fs::remove_file(pb);
    }

    #[test]
    fn a_failed_write_is_reported_and_the_pipe_still_drains() {
        let p = temp("ro");
        std::fs::write(&p, b"").unwrap();
        // Read-only: the writer's splice fails (EBADF), as a full disk would.
        let ro = Arc::new(File::open(&p).unwrap());
        let mut spool = Spool::start().unwrap();
        let data = vec![7u8; spool.size() * 2];
        spool.submit(&ro, data.len() as u64).unwrap();
        // Twice the pipe: only a writer that keeps draining lets this finish.
        put(&spool, &data);
        let e = spool.flush().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}");
        assert!(spool.failed());
        spool.submit(&ro, 4).unwrap();
        put(&spool, b"more");
        drop(spool); // joins the writer: no hang
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn dropping_the_spool_ends_a_writer_waiting_for_data() {
        let p = temp("short");
        let f = Arc::new(File::create(&p).unwrap());
        let mut spool = Spool::start().unwrap();
        spool.submit(&f, 1 << 20).unwrap();
        put(&spool, &[1u8; 4096]);
        drop(spool); // the session failed midway: the writer sees EOF
        let _ = std::fs::remove_file(p);
    }
}
