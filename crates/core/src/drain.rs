//! Read mode's data plane: copy a list of page ranges out of a *running* target with
//! `process_vm_readv`, and move them into the pages image through a pipe.
//!
//! The target runs while we read, so any page may vanish under us (unmapped, or made
//! unreadable). The kernel reports that one way only: `process_vm_readv` stops at the
//! first page it cannot pin, returning the bytes before it, or EFAULT if it read none.
//! [`fill_userbuf`] turns that into "restart exactly at the faulting page; if that page
//! itself faults, it is gone: skip it alone". Unlike the 2019 CRIU patch, no other errno
//! is mistaken for "gone", and no page is skipped because an earlier one faulted.
//!
//! [`drain`] overlaps reading and writing on two cores with two page-aligned buffers:
//! the calling thread fills one buffer while a writer thread `splice`s the other one's
//! bytes from the pipe into the image, or, for an output that takes buffers (a page
//! server's socket, [`PagesOut::takes_buffers`]), sends them straight from the buffer. The buffers are the size of the pipe, so one
//! fill always fits into it and memory stays bounded whatever the target's size.

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, vmsplice, FcntlArg, OFlag, SpliceFFlags};
use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::{pipe2, Pid};

use crate::anon::AnonMap;
use crate::pages_out::PagesOut;
use crate::{push_merged, Error, PageRange, Result, PAGE_SIZE};

/// The kernel's UIO_MAXIOV: the most iovecs one `process_vm_readv` accepts.
pub const MAX_IOVS: usize = 1024;

const PAGE: usize = PAGE_SIZE as usize;

/// How [`drain`] sizes its work.
#[derive(Debug, Clone)]
pub struct DrainConfig {
    /// The wished pipe (and buffer) size. The kernel rounds it up to a power of two
    /// pages, or caps it at `/proc/sys/fs/pipe-max-size` without CAP_SYS_RESOURCE;
    /// the real size is reported in [`DrainStats::buffer_bytes`].
    pub buffer_bytes: usize,
    /// The most iovecs per `process_vm_readv` (capped at [`MAX_IOVS`]).
    pub max_iovs: usize,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            buffer_bytes: 4 << 20,
            max_iovs: MAX_IOVS,
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct DrainStats {
    /// Pages asked for (the sum of the input ranges).
    pub pages_requested: u64,
    /// Pages read and written to the image.
    pub pages_written: u64,
    /// Pages that were unmapped or made unreadable before we could read them.
    pub pages_gone: u64,
    pub bytes_written: u64,
    /// Time spent in [`fill_userbuf`] (the `process_vm_readv` loop).
    pub read_time: Duration,
    /// Time the writer thread spent moving bytes from the pipe into the image.
    pub write_time: Duration,
    pub readv_calls: u64,
    /// The real buffer (= pipe) size used, in bytes.
    pub buffer_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainEnd {
    /// Every requested page was read or found gone.
    Complete,
    /// The target exited midway: the image holds what was read before (a partial
    /// pre-dump, which the caller must say it is).
    TargetExited,
}

#[derive(Debug)]
pub struct DrainOutcome {
    /// The pages actually written, in image order: sorted, adjacent ranges merged.
    pub regions: Vec<PageRange>,
    pub stats: DrainStats,
    pub end: DrainEnd,
}

/// What one [`fill_userbuf`] put into its buffer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fill {
    /// Bytes at the start of the buffer: `regions`' pages, back to back.
    pub bytes: usize,
    /// The pages read, in order, adjacent ranges merged.
    pub regions: Vec<PageRange>,
    pub pages_gone: u64,
    /// The target exited (ESRCH): the batch was cut short.
    pub exited: bool,
    pub readv_calls: u64,
}

/// Cuts sorted, non-overlapping `ranges` into batches for [`fill_userbuf`]: adjacent
/// ranges merged into one iovec, at most `max_iovs` iovecs and `max_bytes` bytes
/// (rounded down to whole pages, at least one page) per batch. A range longer than the
/// byte limit is split across batches. Empty ranges are dropped.
///
/// Lazy: the batches are computed as the iterator is consumed, so the whole list of
/// a large target is never duplicated.
pub fn batches(
    ranges: &[PageRange],
    max_iovs: usize,
    max_bytes: u64,
) -> impl Iterator<Item = Vec<PageRange>> + '_ {
    let max_iovs = max_iovs.max(1);
    let max_pages = (max_bytes / PAGE_SIZE).max(1);
    // The cursor: ranges[i], of which `done` pages are already in earlier batches.
    let (mut i, mut done) = (0usize, 0u64);
    std::iter::from_fn(move || {
        let mut batch: Vec<PageRange> = Vec::new();
        let mut pages = 0u64;
        while i < ranges.len() && pages < max_pages {
            let r = ranges[i];
            let start = r.start + done * PAGE_SIZE;
            let adjacent = batch.last().is_some_and(|l| l.end() == start);
            if !adjacent && batch.len() == max_iovs {
                break;
            }
            let take = (r.pages - done).min(max_pages - pages);
            push_merged(&mut batch, start, take);
            pages += take;
            done += take;
            if done == r.pages {
                i += 1;
                done = 0;
            }
        }
        (!batch.is_empty()).then_some(batch)
    })
}

fn read_error(pid: i32, e: Errno) -> Error {
    match e {
        Errno::EPERM | Errno::EACCES => Error::Permission {
            pid,
            action: "read the memory of",
            source: e.into(),
        },
        _ => Error::sys(format!("process_vm_readv of process {pid}"), e),
    }
}

/// Reads the pages of one batch from process `pid` into `buf`, back to back: the
/// `fill_userbuf` loop of CRIU's read mode, with its faulty-iovec cases handled
/// uniformly.
///
/// A cursor walks the batch's pages. Each `process_vm_readv` starts at the cursor (the
/// first iovec trimmed to it) and takes up to [`MAX_IOVS`] iovecs:
/// - it returns n bytes: the cursor moves over n bytes' whole pages, which are read.
///   If the batch is not done, the call stopped at a page it could not pin, and the next
///   call starts exactly there (seed cases 2, 3.1 and 3.2: the pages before and after a
///   hole, inside an iovec or not, are all read);
/// - EFAULT: it read nothing, so the cursor's page is gone: skip that one page and count
///   it in `pages_gone` (case 1, and the second half of the others);
/// - ESRCH: the target exited: return what was read, with `exited` set;
/// - EINTR is retried; any other errno is an error (EPERM/EACCES as
///   [`Error::Permission`]).
///
/// `buf` must hold the batch (`buf.len()` ≥ its bytes); `batch` must be page-aligned.
pub fn fill_userbuf(pid: i32, batch: &[PageRange], buf: &mut [u8]) -> Result<Fill> {
    let total: u64 = batch.iter().map(|r| r.pages).sum();
    if (buf.len() as u64) < total * PAGE_SIZE {
        return Err(Error::InvalidArgument(format!(
            "fill_userbuf: a {} byte buffer cannot hold {total} pages",
            buf.len()
        )));
    }
    if let Some(r) = batch.iter().find(|r| r.start % PAGE_SIZE != 0) {
        return Err(Error::InvalidArgument(format!(
            "fill_userbuf: range at {:#x} is not page-aligned",
            r.start
        )));
    }
    let mut remote: Vec<RemoteIoVec> = batch
        .iter()
        .map(|r| RemoteIoVec {
            base: r.start as usize,
            len: r.len() as usize,
        })
        .collect();
    let mut fill = Fill::default();
    // Cursor: batch[i], of which `off` pages are already read or skipped.
    let (mut i, mut off) = (0usize, 0u64);
    loop {
        while i < batch.len() && off == batch[i].pages {
            i += 1;
            off = 0;
        }
        if i == batch.len() {
            return Ok(fill);
        }
        // The cursor only moves forward, so trimming the iovec in place is safe.
        remote[i] = RemoteIoVec {
            base: (batch[i].start + off * PAGE_SIZE) as usize,
            len: ((batch[i].pages - off) * PAGE_SIZE) as usize,
        };
        let call = &remote[i..remote.len().min(i + MAX_IOVS)];
        let mut local = [IoSliceMut::new(&mut buf[fill.bytes..])];
        fill.readv_calls += 1;
        match process_vm_readv(Pid::from_raw(pid), &mut local, call) {
            // A whole call that moves no full page would loop forever: treat its first
            // page as unreadable (the kernel pins whole pages, so this is not expected).
            Ok(n) if n < PAGE => {
                fill.pages_gone += 1;
                off += 1;
            }
            Ok(n) => {
                let mut pages = (n / PAGE) as u64;
                fill.bytes += pages as usize * PAGE;
                while pages > 0 {
                    let r = batch[i];
                    let take = (r.pages - off).min(pages);
                    push_merged(&mut fill.regions, r.start + off * PAGE_SIZE, take);
                    pages -= take;
                    off += take;
                    if off == r.pages {
                        i += 1;
                        off = 0;
                    }
                }
            }
            Err(Errno::EFAULT) => {
                fill.pages_gone += 1;
                off += 1;
            }
            Err(Errno::ESRCH) => {
                fill.exited = true;
                return Ok(fill);
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err(read_error(pid, e)),
        }
    }
}

/// A pipe as large as `wished` allows; returns (read end, write end, real size).
fn sized_pipe(wished: usize) -> Result<(File, File, usize)> {
    let (r, w): (OwnedFd, OwnedFd) = pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
    let wished = libc::c_int::try_from(wished)
        .map_err(|_| Error::InvalidArgument(format!("drain buffer of {wished} bytes")))?;
    match fcntl(&w, FcntlArg::F_SETPIPE_SZ(wished)) {
        Ok(_) => {}
        // Without CAP_SYS_RESOURCE the pipe stops at pipe-max-size (or the user's pipe
        // quota is used up): take the largest allowed, else keep the default.
        Err(Errno::EPERM) => {
            let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
                .ok()
                .and_then(|s| s.trim().parse::<libc::c_int>().ok());
            if let Some(max) = max.filter(|&m| m < wished) {
                let _ = fcntl(&w, FcntlArg::F_SETPIPE_SZ(max));
            }
        }
        Err(e) => return Err(Error::sys("F_SETPIPE_SZ", e)),
    }
    let real = fcntl(&w, FcntlArg::F_GETPIPE_SZ).map_err(|e| Error::sys("F_GETPIPE_SZ", e))?;
    Ok((File::from(r), File::from(w), real as usize))
}

/// How the reader puts a filled buffer into the pipe. Kernels are moving away from
/// GIFT vmsplice and seccomp profiles may forbid vmsplice: degrade, never fail.
#[derive(Clone, Copy, PartialEq)]
enum Feed {
    Gift,
    Plain,
    Copy,
}

/// Puts all of `data` into the pipe. Unless it fell back to copying, the pipe then
/// references `data`'s pages until the writer has spliced them out.
fn feed_pipe(pipe: &File, data: &[u8], mode: &mut Feed) -> Result<()> {
    let mut done = 0;
    while done < data.len() {
        let flags = match *mode {
            Feed::Gift => SpliceFFlags::SPLICE_F_GIFT,
            Feed::Plain => SpliceFFlags::empty(),
            Feed::Copy => {
                return (&*pipe)
                    .write_all(&data[done..])
                    .map_err(|e| Error::sys("write to drain pipe", e));
            }
        };
        // SAFETY: `data` is whole pages of an `AnonMap` (page-aligned, page-sized
        // lengths, as GIFT requires), and `drain` does not write to them again before
        // the writer thread has spliced these bytes out of the pipe, after which the
        // kernel holds no reference to them (splice to a file copies).
        match unsafe { vmsplice(pipe, &[IoSlice::new(&data[done..])], flags) } {
            Ok(n) => done += n,
            Err(Errno::EINTR) => {}
            Err(Errno::EOPNOTSUPP | Errno::EINVAL | Errno::EPERM | Errno::ENOSYS) => {
                *mode = if *mode == Feed::Gift {
                    Feed::Plain
                } else {
                    Feed::Copy
                };
            }
            Err(e) => return Err(Error::sys("vmsplice", e)),
        }
    }
    Ok(())
}

/// The writer thread's side: moves chunks of the pipe into the output.
struct Writer<'a> {
    pipe: File,
    out: &'a mut dyn PagesOut,
    scratch: Vec<u8>,
    time: Duration,
    bytes: u64,
}

impl Writer<'_> {
    fn scratch_len(&mut self) -> usize {
        if self.scratch.is_empty() {
            self.scratch = vec![0; 1 << 16];
        }
        self.scratch.len()
    }

    /// Reads `len` bytes out of the pipe and drops them, so that a reader blocked in
    /// vmsplice on a full pipe can finish after a write error.
    fn discard(&mut self, mut len: usize) {
        while len > 0 {
            let want = len.min(self.scratch_len());
            match (&self.pipe).read(&mut self.scratch[..want]) {
                Ok(0) => return,
                Ok(n) => len -= n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Serves (buffer, bytes) chunks until the reader hangs up, giving each buffer
    /// back once its bytes have left the pipe (or, for an output that takes
    /// buffers, the buffer itself). After an error it keeps draining (and
    /// dropping) chunks so that the reader never blocks; `failed` tells it to stop.
    fn run(
        mut self,
        work: mpsc::Receiver<(AnonMap, usize, Vec<PageRange>)>,
        free: mpsc::Sender<AnonMap>,
        failed: &AtomicBool,
        progress: Option<&AtomicU64>,
    ) -> Result<(Duration, u64)> {
        let mut error = None;
        let from_buffer = self.out.takes_buffers();
        for (buffer, len, regions) in work {
            if error.is_some() {
                if !from_buffer {
                    self.discard(len);
                }
            } else {
                let start = Instant::now();
                let res = if from_buffer {
                    self.out
                        .write_from_buffer(&buffer.as_slice()[..len], &regions)
                        .map_err(|e| (e, 0))
                } else {
                    self.out.write_from_pipe(self.pipe.as_fd(), &regions, len)
                };
                self.time += start.elapsed();
                match res {
                    Ok(()) => {
                        self.bytes += len as u64;
                        if let Some(p) = progress {
                            p.fetch_add(len as u64, Ordering::Relaxed);
                        }
                    }
                    Err((e, left)) => {
                        failed.store(true, Ordering::Release);
                        error = Some(e);
                        self.discard(left);
                    }
                }
            }
            let _ = free.send(buffer);
        }
        match error {
            Some(e) => Err(e),
            None => Ok((self.time, self.bytes)),
        }
    }
}

/// What the reader side of [`drain`] collected.
#[derive(Default)]
struct ReadState {
    regions: Vec<PageRange>,
    pages_gone: u64,
    readv_calls: u64,
    read_time: Duration,
    exited: bool,
}

/// The reader side of [`drain`]: fills free buffers and feeds them to the pipe
/// (or, for an output that takes buffers, hands them to the writer as they are).
/// Consumes `work` so that the writer sees the hang-up however this returns.
#[allow(clippy::too_many_arguments)]
fn read_loop(
    pid: i32,
    ranges: &[PageRange],
    max_iovs: usize,
    mut idle: Vec<AnonMap>,
    pipe: &File,
    work: mpsc::Sender<(AnonMap, usize, Vec<PageRange>)>,
    free: mpsc::Receiver<AnonMap>,
    failed: &AtomicBool,
    mut feed: Option<Feed>,
    st: &mut ReadState,
) -> Result<()> {
    let limit = idle.first().map_or(0, |b| b.len()) as u64;
    for batch in batches(ranges, max_iovs, limit) {
        let mut b = match idle.pop() {
            Some(b) => b,
            // The writer gives a buffer back only after splicing out all its bytes
            // (or sending them): only then may it be overwritten.
            None => match free.recv() {
                Ok(b) => b,
                Err(_) => return Ok(()), // writer gone: its result tells why
            },
        };
        if failed.load(Ordering::Acquire) {
            return Ok(());
        }
        let start = Instant::now();
        let fill = fill_userbuf(pid, &batch, b.as_mut_slice());
        st.read_time += start.elapsed();
        let fill = fill?;
        st.readv_calls += fill.readv_calls;
        st.pages_gone += fill.pages_gone;
        if fill.bytes > 0 {
            if let Some(feed) = feed.as_mut() {
                feed_pipe(pipe, &b.as_slice()[..fill.bytes], feed)?;
            }
            for r in &fill.regions {
                push_merged(&mut st.regions, r.start, r.pages);
            }
            if work.send((b, fill.bytes, fill.regions)).is_err() {
                return Ok(());
            }
        } else {
            idle.push(b);
        }
        if fill.exited {
            st.exited = true;
            return Ok(());
        }
    }
    Ok(())
}

/// Copies the pages of `ranges` (sorted, non-overlapping, page-aligned, any size) from
/// the running process `pid` into `out`, from its current position on, in the order of
/// the returned `regions`. Pages that vanished meanwhile are skipped (counted in
/// `pages_gone`); if the target exits, the pages read so far are written and `end` is
/// [`DrainEnd::TargetExited`].
///
/// `progress`, if given, is increased by the bytes written after each batch. A
/// write error is the output's ([`Error::NoSpace`] naming the file, a connection
/// error…); bytes already written stay in `out`.
pub fn drain(
    pid: i32,
    ranges: &[PageRange],
    out: &mut dyn PagesOut,
    config: &DrainConfig,
    progress: Option<&AtomicU64>,
) -> Result<DrainOutcome> {
    if config.buffer_bytes < PAGE || config.max_iovs == 0 {
        return Err(Error::InvalidArgument(format!(
            "drain needs a buffer of at least one page and one iovec, got {config:?}"
        )));
    }
    for (i, r) in ranges.iter().enumerate() {
        let sorted = i == 0 || ranges[i - 1].end() <= r.start;
        if r.start % PAGE_SIZE != 0 || !sorted {
            return Err(Error::InvalidArgument(format!(
                "drain: ranges must be page-aligned, sorted and disjoint (at {:#x})",
                r.start
            )));
        }
    }
    let (pipe_r, pipe_w, pipe_size) = sized_pipe(config.buffer_bytes)?;
    // One fill must fit in the pipe, so the buffers are exactly the pipe's real size.
    let buffers = vec![
        AnonMap::new(pipe_size, "a drain buffer")?,
        AnonMap::new(pipe_size, "a drain buffer")?,
    ];
    let failed = AtomicBool::new(false);
    let mut st = ReadState::default();
    // How the reader puts a buffer into the pipe: not at all for an output that
    // takes the buffers (a socket sends from them); by a copy for one that keeps
    // referencing spliced pages, since the buffers are reused as soon as the
    // pipe is emptied; else by giving the pages away.
    let feed = if out.takes_buffers() {
        None
    } else if out.needs_owned_pipe() {
        Some(Feed::Copy)
    } else {
        Some(Feed::Gift)
    };
    let writer = Writer {
        pipe: pipe_r,
        out,
        scratch: Vec::new(),
        time: Duration::ZERO,
        bytes: 0,
    };
    let (read_res, write_res) = std::thread::scope(|s| {
        let (work_tx, work_rx) = mpsc::channel();
        let (free_tx, free_rx) = mpsc::channel();
        let failed = &failed;
        let handle = s.spawn(move || writer.run(work_rx, free_tx, failed, progress));
        let read_res = read_loop(
            pid,
            ranges,
            config.max_iovs.min(MAX_IOVS),
            buffers,
            &pipe_w,
            work_tx,
            free_rx,
            failed,
            feed,
            &mut st,
        );
        let write_res = handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (read_res, write_res)
    });
    read_res?;
    let (write_time, bytes_written) = write_res?;
    let pages_written = st.regions.iter().map(|r| r.pages).sum();
    debug_assert_eq!(pages_written * PAGE_SIZE, bytes_written);
    Ok(DrainOutcome {
        regions: st.regions,
        stats: DrainStats {
            pages_requested: ranges.iter().map(|r| r.pages).sum(),
            pages_written,
            pages_gone: st.pages_gone,
            bytes_written,
            read_time: st.read_time,
            write_time,
            readv_calls: st.readv_calls,
            buffer_bytes: pipe_size,
        },
        end: if st.exited {
            DrainEnd::TargetExited
        } else {
            DrainEnd::Complete
        },
    })
}
