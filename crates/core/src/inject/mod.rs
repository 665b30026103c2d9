// Over 800 lines, on purpose: the injection protocol's description below and the
// Injector's life cycle (take a thread, run calls in it, restore it), whose steps
// share its private state and invariants. Its parts with their own concern are
// apart: calls.rs, memory.rs, journal.rs, wait.rs, thread.rs, leftovers.rs, place.rs.

//! Running system calls inside a stopped thread of a frozen process, such that
//! nothing predump can suffer (SIGKILL included) harms the target.
//!
//! The splice mode and uffd dirty tracking need a few system calls made *by the
//! target* (mmap, socketpair, recvmsg, vmsplice, userfaultfd, close, munmap). We
//! need no parasite blob: a small *stub* of ours, written into the unused tail
//! of the target's vDSO (`place`), runs one call, or a table of calls, at a time.
//! docs/INJECTION-SAFETY.md is the safety argument, step by step; in short:
//!
//! * The stub never ends in a trap. After its call(s) comes an **epilogue** that
//!   puts back, by itself, the signal mask, every general register, the flags,
//!   the stack pointer and the pc the thread had at the freeze (with the restart
//!   of an interrupted call applied, as a thaw without a signal to handle does):
//!   with `mov`s and a memory-indirect jump on x86_64, with an `rt_sigreturn`
//!   from a frame in the stub on aarch64 (which also carries the FPSIMD state).
//!   The epilogue runs only if predump is gone: while predump lives the thread
//!   never gets there.
//! * One call (`syscall`) is run with PTRACE_SYSCALL and `PTRACE_O_TRACESYSGOOD`:
//!   the thread stops at the call's entry and exit, syscall stops. A tracer that
//!   dies there leaves `SIGTRAP|0x80` as the stop's code, which the kernel's
//!   `ptrace_report_syscall()` hands to `send_sig()` as a signal number, which
//!   fails (no such signal): the thread goes on into the epilogue, with no signal.
//!   Between calls the thread waits in such a stop.
//! * A batch (`batch`: splice mode's vmsplices) runs with PTRACE_CONT: the stub
//!   loops over a table of calls in the scratch mapping, writes one byte to a
//!   *lifeline* socket whose other end only predump holds, and blocks reading
//!   it. predump wakes on the byte and interrupts the read (an interrupt stop);
//!   a dead predump's end is closed by its exit, so the read returns 0 and the
//!   thread goes on into the epilogue.
//! * Restore puts back the mask, the rseq pointer and then the registers, and
//!   leaves the thread in an interrupt stop: the state of a freeze. Each partial
//!   step leaves a thread that either waits as after a freeze or goes on into
//!   the epilogue.
//!
//! Signals: while our code runs every signal the thread may block is blocked, so
//! a signal sent meanwhile stays pending with its siginfo and is delivered after
//! thaw (or after the epilogue), never to a handler inside our code while
//! predump lives. Left unblocked: the fault signals (the kernel resets the handler
//! of a forced signal that is blocked, which would change the target's
//! dispositions if our code faulted) and SIGKILL/SIGSTOP. If one of those
//! arrives from outside during a call, we take it at its signal-delivery stop
//! and send it again when we restore (its sender pid is then ours).
//!
//! Restrictions: one Injector per process at a time; a thread stopped at a
//! signal-delivery stop by the freeze is refused (its signal could only be
//! handed back from such a stop: `Injector::any` picks another thread); a
//! thread that single-steps itself, 32-bit code, a process without this
//! kernel's vDSO (or with too little room in it), and on aarch64 threads with
//! live SVE or streaming-mode state or about to run restart_syscall (see
//! aarch64.rs) are refused. No injected call may
//! block or use the kernel's restart block: all ours are non-blocking.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use crate::freeze::Frozen;
use crate::sys::pidfd::PidFd;
use crate::sys::ptrace::{
    self as pt, get_sigmask, set_sigmask, stop_siginfo, PTRACE_EVENT_STOP, PTRACE_O_TRACESYSGOOD,
};
use crate::{proc, Error, Result, PAGE_SIZE};

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
use aarch64 as arch;
#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
use x86_64 as arch;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("syscall injection supports x86_64 and aarch64 only");

mod calls;
mod journal;
pub mod leftovers;
mod memory;
mod place;
mod thread;
mod wait;

pub use leftovers::{FdKind, Leftover};
use leftovers::{NONCE_BYTES, SCRATCH_MARK};
pub use memory::{read_memory, write_memory};
use thread::find_rseq_cs;
pub use thread::{rseq_pages, thread_state, ThreadState};

/// The injector's own page (the scratch mapping's last): where the batch's
/// byte, the lifeline's pair, the two result slots of recorded closes, the
/// scratch mapping's mark and the result slots of calls that make an fd lie.
const OWN_BYTE: u64 = 8;
const OWN_LIFELINE: u64 = 16;
const OWN_DONE: [u64; 2] = [40, 48];
const OWN_FD_WORDS: u64 = 128;
const FD_WORDS: u64 = 64;
const _: () = assert!(SCRATCH_MARK >= 56 && SCRATCH_MARK + 32 <= OWN_FD_WORDS);

/// Where the journal of leftovers lies in the stub (after its data and code:
/// 529 bytes on x86_64, 1,324 on aarch64), and its size.
const JOURNAL_AT: u64 = arch::JOURNAL_AT;
const JOURNAL_BYTES: u64 = leftovers::JOURNAL_BYTES;

/// si_code of a tkill/tgkill signal.
const SI_TKILL: i32 = -6;
/// Largest errno a raw system call returns as -errno.
const MAX_ERRNO: i64 = 4095;

/// The first bytes of a stub of ours: how a later run knows a leftover stub.
pub(crate) const STUB_MAGIC: &[u8; 16] = b"predump-inject\0\0";

/// Signals left deliverable while an injected call runs (see the module comment).
const UNBLOCKED: [i32; 5] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGSYS,
];

/// Waiting: yield this many times before sleeping. An injected call takes a few
/// microseconds, a sleep at least ~50; yielding keeps the common case fast.
const SPINS: u32 = 200;

thread_local! {
    /// Pids with a live Injector on this thread. Frozen is !Send, so every
    /// Injector of one process lives on the thread that froze it.
    static ACTIVE: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
}

/// Runs system calls inside a stopped thread of a frozen process.
/// Not `Send`: ptrace requests must come from the thread that froze.
pub struct Injector<'f> {
    frozen: &'f Frozen,
    pid: i32,
    tid: i32,
    /// Everything saved at creation, put back by `restore`.
    regs: arch::Regs,
    sigmask: u64,
    /// /proc/PID/mem, to write the stub (FOLL_FORCE).
    mem: File,
    /// The stub's address, and the bytes it covers (zeros: the vDSO's padding).
    stub: u64,
    stub_len: usize,
    stub_written: bool,
    /// Our registers or mask are in the thread: restore has work to do.
    engaged: bool,
    /// The thread waits in a syscall stop (else an interrupt or freeze stop).
    at_syscall_stop: bool,
    /// (address of the thread's rseq.rseq_cs, its value) while we keep it cleared.
    rseq_cs: Option<(u64, u64)>,
    /// Our scratch mapping in the target: (address, length). Its last page is
    /// the injector's own (the lifeline's byte and socket pair).
    scratch: Option<(u64, u64)>,
    /// The lifeline: our end, and the target's fd of the other end.
    lifeline: Option<(OwnedFd, i32)>,
    /// What of ours may be in the target, written after the stub for a later
    /// run to find if predump dies (see `leftovers`).
    journal: Vec<Leftover>,
    /// Which of the two result slots the next recorded call uses.
    flip: bool,
    /// This run's random nonce (or the dead run's whose journal it took
    /// over): in the journal and in the scratch mapping's mark.
    nonce: [u8; NONCE_BYTES],
    /// How many result slots of calls that make an fd were used.
    fd_words: u64,
    /// Signals taken from outside during our calls: (signo, si_code), sent again
    /// at restore.
    caught: Vec<(i32, i32)>,
    timeout: Duration,
    /// The thread is gone: nothing left to restore.
    gone: bool,
    /// restore ran (or was attempted): Drop does nothing more.
    done: bool,
    _not_send: PhantomData<*const ()>,
}

impl std::fmt::Debug for Injector<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injector")
            .field("pid", &self.pid)
            .field("tid", &self.tid)
            .field("stub", &format_args!("{:#x}", self.stub))
            .field("scratch", &self.scratch)
            .finish_non_exhaustive()
    }
}

/// Whether this machine can inject system calls at all; `Err` says why not
/// (aarch64: not where the vDSO leaves too little room for the stub and its
/// sigreturn frame, as on Debian's 6.1). Callers that can do without injection
/// (splice mode, automatic dirty tracking, `predump check`) ask first.
pub fn supported() -> std::result::Result<(), &'static str> {
    arch::supported()
}

/// How a thread is let go from a stop.
#[derive(Clone, Copy)]
enum Resume {
    Cont,
    /// Stopping at the next system call's entry and exit.
    Syscall,
}

/// How a stop we waited for ended.
enum Stop {
    /// A syscall-entry or -exit stop (SIGTRAP|0x80).
    Syscall,
    /// A signal-delivery stop for this signal.
    Signal(i32),
    /// A PTRACE_EVENT stop (group stop or PTRACE_INTERRUPT).
    Event,
    /// The thread exited.
    Gone,
}

/// Bytes per call in a batch table: number, six arguments, result.
pub const BATCH_ENTRY_BYTES: u64 = 64;
/// The result slot of a call that did not run (no system call returns it).
pub(crate) const NOT_RUN: i64 = i64::MIN;

/// One system call of a [`Injector::batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    pub nr: i64,
    pub args: [u64; 6],
}

impl Call {
    /// A call with up to six arguments (the rest zero).
    pub fn new(nr: i64, args: &[u64]) -> Call {
        let mut a = [0u64; 6];
        a[..args.len().min(6)].copy_from_slice(&args[..args.len().min(6)]);
        Call { nr, args: a }
    }
}

/// The signal a freeze stop of `tid` intercepted (to be handed back at thaw), or
/// None for an interrupt or group stop.
fn stop_signal(tid: i32) -> io::Result<Option<i32>> {
    Ok(stop_siginfo(tid)?
        .and_then(|si| (si.si_code >> 8 != PTRACE_EVENT_STOP).then_some(si.si_signo)))
}

impl<'f> Injector<'f> {
    /// An Injector into some thread of `frozen`: the main thread if it can take
    /// one, else the first other thread that can (see `new`).
    pub fn any(frozen: &'f Frozen) -> Result<Injector<'f>> {
        Self::any_inner(frozen, None)
    }

    fn any_inner(frozen: &'f Frozen, inherit: Option<Inherited>) -> Result<Injector<'f>> {
        let pid = frozen.pid();
        let mut tids: Vec<i32> = frozen.tids().collect();
        tids.sort_by_key(|&t| t != pid);
        let mut first = None;
        for tid in tids {
            match Injector::new_inner(frozen, tid, inherit.clone()) {
                Ok(inj) => return Ok(inj),
                Err(e @ Error::TargetExited { .. }) => return Err(e),
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        Err(first.unwrap_or(Error::NoSuchProcess { pid }))
    }

    /// Prepares injection into thread `tid` of `frozen` (`frozen.pid()` for the
    /// main thread): saves its registers and signal mask, and writes our stub
    /// (with the epilogue's copy of them) into the tail of the vDSO. Nothing of
    /// the thread changes before the first call.
    pub fn new(frozen: &'f Frozen, tid: i32) -> Result<Injector<'f>> {
        Self::new_inner(frozen, tid, None)
    }

    /// `new`; with `inherit`, a dead run's stub is overwritten, its journal
    /// kept as it is (`leftovers::remove`), else it is refused.
    fn new_inner(frozen: &'f Frozen, tid: i32, inherit: Option<Inherited>) -> Result<Injector<'f>> {
        let pid = frozen.pid();
        check_held(frozen, tid)?;
        let refuse = |detail: &str| {
            Error::sys(
                format!("injecting into process {pid} (thread {tid}): {detail}"),
                io::Error::from_raw_os_error(libc::ENOEXEC),
            )
        };
        arch::supported().map_err(|why| {
            Error::InvalidArgument(format!(
                "cannot inject system calls into process {pid}: {why}"
            ))
        })?;
        if ACTIVE.with(|a| a.borrow().contains(&pid)) {
            return Err(Error::InvalidArgument(format!(
                "another injection into process {pid} is active: restore it first"
            )));
        }
        let err = |what: &str, e: io::Error| os_error(pid, tid, what, e);
        if let Some(sig) = stop_signal(tid).map_err(|e| err("PTRACE_GETSIGINFO", e))? {
            return Err(refuse(&format!(
                "the freeze stopped it delivering signal {sig}, which only that stop can hand back"
            )));
        }
        let regs = arch::get_regs(tid).map_err(|e| err("reading the registers", e))?;
        arch::check_injectable(tid, &regs).map_err(|d| refuse(&d))?;
        let sigmask = get_sigmask(tid).map_err(|e| err("PTRACE_GETSIGMASK", e))?;
        let rseq = find_rseq_cs(pid, tid)?;
        // Where the epilogue resumes: the kernel's restart, and the rseq abort a
        // thaw would do for a thread stopped inside its critical section.
        let (mut pc, rax) = arch::resume_point(&regs);
        if let Some((_, _, Some(abort))) = rseq {
            pc = abort;
        }
        let (stub, room) = place::locate(pid)?;
        if inherit.is_none() && !leftovers::find(pid)?.is_empty() {
            return Err(refuse(
                "a predump that died while injecting left things in it; \
                 any predump command on it (or `predump untrack`) removes them first",
            ));
        }
        let mut head = [0u8; 24];
        head[..16].copy_from_slice(STUB_MAGIC);
        head[16..20].copy_from_slice(&pid.to_ne_bytes());
        head[20..24].copy_from_slice(&tid.to_ne_bytes());
        let image = arch::stub_image(&head, &regs, sigmask, pc, rax, tid)
            .map_err(|e| err("preparing the stub", e))?;
        if image.len() as u64 > room {
            return Err(refuse("the vDSO has no room for the stub"));
        }
        let path = format!("/proc/{pid}/mem");
        let mem = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| err("opening /proc/PID/mem", e))?;
        pt::set_options(tid, PTRACE_O_TRACESYSGOOD).map_err(|e| err("PTRACE_SETOPTIONS", e))?;

        // From here on, Drop undoes whatever was done if a step fails.
        let (journal, nonce) = match inherit {
            Some(old) => old,
            None => (Vec::new(), random_nonce()?),
        };
        ACTIVE.with(|a| a.borrow_mut().push(pid));
        let mut inj = Injector {
            frozen,
            pid,
            tid,
            regs,
            sigmask,
            mem,
            stub,
            stub_len: image.len(),
            stub_written: false,
            engaged: false,
            at_syscall_stop: false,
            rseq_cs: rseq.map(|(addr, value, _)| (addr, value)),
            scratch: None,
            lifeline: None,
            journal,
            flip: false,
            nonce,
            fd_words: 0,
            caught: Vec::new(),
            timeout: Duration::from_secs(10),
            gone: false,
            done: false,
            _not_send: PhantomData,
        };
        inj.stub_written = true;
        if image.len() as u64 > JOURNAL_AT || JOURNAL_AT + JOURNAL_BYTES > room {
            return Err(refuse("the vDSO has no room for the stub's journal"));
        }
        // Stub and journal in one write (one page): a journal taken over is
        // never missing, not even for a moment.
        let journal = leftovers::encode(&inj.journal, &inj.nonce)
            .ok_or_else(|| Error::InvalidArgument("too many leftovers journaled at once".into()))?;
        let mut all = image;
        all.resize(JOURNAL_AT as usize, 0);
        all.extend_from_slice(&journal);
        inj.stub_len = all.len();
        if let Err(e) = inj.mem.write_all_at(&all, stub) {
            return Err(inj.os("writing our stub into the vDSO", e));
        }
        Ok(inj)
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// Where our stub lies (in the tail of the target's vDSO).
    pub fn stub(&self) -> u64 {
        self.stub
    }

    /// How long one injected call or batch may take before it is interrupted
    /// (default 10 s). Our calls never block; this bounds a broken kernel.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Runs system call `nr` with up to 6 arguments in the thread and returns the
    /// raw result (-errno on failure). A signal arriving meanwhile stays pending for
    /// the thread (or is sent again at restore); the thread's exit is
    /// `Error::TargetExited`.
    pub fn syscall(&mut self, nr: i64, args: &[u64]) -> Result<i64> {
        if args.len() > 6 {
            return Err(Error::InvalidArgument(format!(
                "a system call takes at most 6 arguments, got {}",
                args.len()
            )));
        }
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        self.run_single(nr, &a, 0, 0)
    }

    /// One call; the stub stores its result at `done` (0: nowhere) and unmaps
    /// `undo` bytes at it (0: nothing) if predump is gone when the call ends.
    fn run_single(&mut self, nr: i64, a: &[u64; 6], done: u64, undo: u64) -> Result<i64> {
        self.usable()?;
        let mut regs = self.regs;
        arch::set_single(&mut regs, self.stub, nr, a, done, undo);
        self.enter(&regs)?;
        let what = syscall_name(nr);
        let deadline = Instant::now() + self.timeout;
        // The entry stop, then the exit stop.
        self.resume(Resume::Syscall)?;
        if self.wait_syscall(&what, deadline)?.is_none() {
            return Err(self.timed_out(&what));
        }
        self.resume(Resume::Syscall)?;
        match self.wait_syscall(&what, deadline)? {
            Some(regs) => Ok(arch::result(&regs)),
            None => Err(self.timed_out(&what)),
        }
    }

    /// `syscall`, with -errno turned into an error naming the call.
    pub fn syscall_ok(&mut self, nr: i64, args: &[u64]) -> Result<i64> {
        let r = self.syscall(nr, args)?;
        if (-MAX_ERRNO..0).contains(&r) {
            return Err(self.call_error(nr, -r as i32));
        }
        Ok(r)
    }

    /// A call that makes one fd (userfaultfd, memfd_create, fcntl's dup…), of
    /// kind `kind`, journaled so that a predump dying at any moment leaves the
    /// fd named (`Leftover::FdWord`): the stub stores the result in a slot of
    /// the injector's page if the thread gets past the call (predump is gone),
    /// and predump stores it there itself at the call's exit stop, before the
    /// thread is given anything else. Returns the raw result. The fd stays
    /// journaled until it is closed with `close`, or the injector is restored
    /// (then the run that made it is done with it). Needs the scratch mapping.
    pub fn syscall_fd(&mut self, nr: i64, args: &[u64], kind: FdKind) -> Result<i64> {
        let Some(own) = self.own_page() else {
            return Err(Error::InvalidArgument(
                "a call that makes an fd is journaled in the scratch mapping: make it first".into(),
            ));
        };
        if args.len() > 6 || self.fd_words >= FD_WORDS {
            return Err(Error::InvalidArgument(
                "too many arguments, or too many fds made by one injector".into(),
            ));
        }
        let slot = own + OWN_FD_WORDS + 8 * self.fd_words;
        self.fd_words += 1;
        self.write_memory(slot, &NOT_RUN.to_ne_bytes())?;
        let entry = Leftover::FdWord { addr: slot, kind };
        self.note(entry)?;
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        let r = self.run_single(nr, &a, slot, 0)?;
        if (0..=i32::MAX as i64).contains(&r) {
            self.write_memory(slot, &r.to_ne_bytes())?;
        } else {
            self.forget(&entry)?;
        }
        Ok(r)
    }

    /// Runs `calls` in order inside the thread with a single resume: our stub
    /// loops over a table of them at `table` (inside the scratch mapping,
    /// [`BATCH_ENTRY_BYTES`] per call) and stops after the first that fails.
    /// Returns the raw results of the calls that ran: all of them, or up to and
    /// including the first -errno.
    pub fn batch(&mut self, table: u64, calls: &[Call]) -> Result<Vec<i64>> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        let bytes = calls.len() as u64 * BATCH_ENTRY_BYTES;
        let own = match self.scratch {
            Some((addr, len)) if table >= addr && table + bytes <= addr + len - PAGE_SIZE => {
                addr + len - PAGE_SIZE
            }
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "a batch table of {} calls at {table:#x} is not inside the scratch mapping",
                    calls.len()
                )))
            }
        };
        self.usable()?;
        let theirs = self.lifeline(own)?;
        let mut raw = Vec::with_capacity(bytes as usize);
        for call in calls {
            raw.extend_from_slice(&(call.nr as u64).to_ne_bytes());
            for a in call.args {
                raw.extend_from_slice(&a.to_ne_bytes());
            }
            raw.extend_from_slice(&NOT_RUN.to_ne_bytes());
        }
        self.write_memory(table, &raw)?;
        let mut regs = self.regs;
        arch::set_batch(
            &mut regs,
            self.stub,
            table,
            calls.len() as u64,
            theirs,
            own + OWN_BYTE,
        );
        self.enter(&regs)?;
        let what = format!(
            "batch of {} calls ({}, …)",
            calls.len(),
            syscall_name(calls[0].nr)
        );
        self.resume(Resume::Cont)?;
        let finished = self.wait_lifeline(&what)?;
        // Done or not, the thread is taken out of our wait into an interrupt stop.
        self.stop_in_stub(&what)?;
        if !finished {
            return Err(Error::sys(
                format!(
                    "injected {what} in process {} (thread {}) did not return within {:?}; it was interrupted",
                    self.pid, self.tid, self.timeout
                ),
                io::Error::from_raw_os_error(libc::ETIMEDOUT),
            ));
        }
        self.read_memory(table, &mut raw)?;
        let mut results = Vec::with_capacity(calls.len());
        for entry in raw.chunks_exact(BATCH_ENTRY_BYTES as usize) {
            let r = i64::from_ne_bytes(entry[56..64].try_into().expect("8 bytes"));
            if r == NOT_RUN {
                break;
            }
            results.push(r);
            if (-MAX_ERRNO..0).contains(&r) {
                break;
            }
        }
        Ok(results)
    }

    /// Closes the lifeline and unmaps the scratch mapping in the target, puts
    /// back the signal mask, the rseq pointer and the registers, leaves the
    /// thread in an interrupt stop (the state of a freeze), takes our stub out of
    /// the vDSO, and sends again the signals taken from outside during the calls.
    pub fn restore(mut self) -> Result<()> {
        self.restore_inner()
    }

    fn restore_inner(&mut self) -> Result<()> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        if self.gone {
            return Err(Error::TargetExited { pid: self.pid });
        }
        // Every step is tried even if an earlier one failed; the first error wins.
        let mut first: Option<Error> = None;
        fn keep<T>(r: Result<T>, first: &mut Option<Error>) {
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        if let Some((_, theirs)) = self.lifeline.take() {
            // Ours is dropped just after: the target's end is gone first.
            let own = self.own_page().expect("a lifeline lives in the scratch");
            let r = self.close(theirs);
            keep(r, &mut first);
            let r = self.forget(&Leftover::FdPair {
                addr: own + OWN_LIFELINE,
                kind: FdKind::Socket,
            });
            keep(r, &mut first);
        }
        if let Some((addr, len)) = self.scratch {
            // What the journal names through the scratch mapping is named by
            // number before the mapping goes: fds this run made and keeps
            // (dirty tracking's), until the stub goes below.
            let r = self.entries_by_number(addr, len);
            keep(r, &mut first);
            // Unmapped, then out of the journal: in between, a later run finds
            // no marked mapping there, whatever the target maps in its place.
            let r = self.munmap(addr, len);
            keep(r, &mut first);
            self.scratch = None;
            let r = self.forget(&Leftover::Mapping { addr, len });
            keep(r, &mut first);
        }
        if self.gone {
            return Err(Error::TargetExited { pid: self.pid });
        }
        if self.engaged {
            let r = self.put_back();
            keep(r, &mut first);
        }
        if self.stub_written && !self.gone {
            let zeros = vec![0u8; self.stub_len];
            match self.mem.write_all_at(&zeros, self.stub) {
                Ok(()) => self.stub_written = false,
                Err(e) => {
                    let e = self.os("taking our stub out of the vDSO", e);
                    keep::<()>(Err(e), &mut first)
                }
            }
        }
        for (sig, code) in std::mem::take(&mut self.caught) {
            // SAFETY: plain system calls with integer arguments.
            let r = unsafe {
                if code == SI_TKILL && sig != libc::SIGSTOP {
                    libc::syscall(libc::SYS_tgkill, self.pid, self.tid, sig) as i32
                } else {
                    libc::kill(self.pid, sig)
                }
            };
            if r != 0 {
                keep::<()>(
                    Err(Error::sys(
                        format!("sending signal {sig} back to process {}", self.pid),
                        io::Error::last_os_error(),
                    )),
                    &mut first,
                );
            }
        }
        if self.gone {
            return Err(Error::TargetExited { pid: self.pid });
        }
        first.map_or(Ok(()), Err)
    }

    /// Where the stub stores the result of the next recorded call: two slots in
    /// turn, because a thread let go at the exit stop of the previous call
    /// still stores that call's result into its slot.
    fn done_slot(&mut self, own: u64) -> u64 {
        self.flip = !self.flip;
        own + OWN_DONE[self.flip as usize]
    }

    /// The injector's own page (the last of the scratch mapping).
    fn own_page(&self) -> Option<u64> {
        self.scratch.map(|(addr, len)| addr + len - PAGE_SIZE)
    }

    fn usable(&self) -> Result<()> {
        if self.gone {
            return Err(Error::TargetExited { pid: self.pid });
        }
        Ok(())
    }

    /// Puts our registers in the thread; the first time also our signal mask and
    /// a cleared rseq pointer. The registers go first: a predump dying right
    /// after leaves a thread that runs the stub and its epilogue, never its own
    /// code with our mask.
    fn enter(&mut self, regs: &arch::Regs) -> Result<()> {
        arch::set_regs(self.tid, regs).map_err(|e| self.os("setting the registers", e))?;
        if !self.engaged {
            self.engaged = true;
            set_sigmask(self.tid, injection_mask()).map_err(|e| self.os("PTRACE_SETSIGMASK", e))?;
            if let Some((addr, _)) = self.rseq_cs {
                write_memory(self.pid, addr, &0u64.to_ne_bytes())?;
            }
        }
        Ok(())
    }

    /// Back to the state of a freeze: mask, rseq pointer, then registers (each
    /// prefix leaves a thread that goes into the epilogue if predump dies), then
    /// an interrupt stop inside get_signal(), where the registers decide the
    /// restart at thaw.
    fn put_back(&mut self) -> Result<()> {
        let tid = self.tid;
        set_sigmask(tid, self.sigmask).map_err(|e| self.os("putting back the signal mask", e))?;
        if let Some((addr, value)) = self.rseq_cs {
            write_memory(self.pid, addr, &value.to_ne_bytes())?;
        }
        arch::set_regs(tid, &self.regs).map_err(|e| self.os("putting back the registers", e))?;
        if self.at_syscall_stop {
            // From a syscall-exit stop into an interrupt stop: the exit path
            // enters get_signal() with the pending interrupt before it could
            // return to user mode.
            pt::interrupt(tid).map_err(|e| self.os("PTRACE_INTERRUPT", e))?;
            self.resume(Resume::Cont)?;
            self.wait_event("putting the thread back")?;
        }
        self.engaged = false;
        Ok(())
    }

    /// The lifeline's target fd, made on first use: an injected socketpair
    /// (written into the injector's page `own`), one end taken with pidfd_getfd
    /// and closed in the target.
    fn lifeline(&mut self, own: u64) -> Result<i32> {
        if let Some((_, theirs)) = &self.lifeline {
            return Ok(*theirs);
        }
        // The kernel writes the pair into our page: journaled before the call.
        self.write_memory(own + OWN_LIFELINE, &[0xff; 8])?;
        self.note(Leftover::FdPair {
            addr: own + OWN_LIFELINE,
            kind: FdKind::Socket,
        })?;
        self.syscall_ok(
            libc::SYS_socketpair,
            &[
                libc::AF_UNIX as u64,
                (libc::SOCK_STREAM | libc::SOCK_CLOEXEC) as u64,
                0,
                own + OWN_LIFELINE,
            ],
        )?;
        let mut b = [0u8; 8];
        self.read_memory(own + OWN_LIFELINE, &mut b)?;
        let pair = [
            i32::from_ne_bytes(b[0..4].try_into().expect("4 bytes")),
            i32::from_ne_bytes(b[4..8].try_into().expect("4 bytes")),
        ];
        let taken = PidFd::open(self.pid).and_then(|p| p.get_fd(pair[0]));
        // `close` journals the fd as being closed and only then takes it out
        // of the journal's pair: a kill between the two never leaves it
        // unnamed, and a later run never closes a number the target reused.
        let closed = self.close(pair[0]);
        match taken {
            Ok(ours) => {
                self.lifeline = Some((ours, pair[1]));
                closed?;
                Ok(pair[1])
            }
            Err(e) => {
                let _ = self.close(pair[1]);
                Err(e)
            }
        }
    }

    /// A ptrace error: ESRCH on a thread we hold stopped means it died.
    fn os(&mut self, what: &str, e: io::Error) -> Error {
        if e.raw_os_error() == Some(libc::ESRCH) {
            return self.exited();
        }
        os_error(self.pid, self.tid, what, e)
    }

    fn call_error(&self, nr: i64, errno: i32) -> Error {
        Error::sys(
            format!(
                "injected {} in process {} (thread {})",
                syscall_name(nr),
                self.pid,
                self.tid
            ),
            io::Error::from_raw_os_error(errno),
        )
    }
}

impl Drop for Injector<'_> {
    fn drop(&mut self) {
        let _ = self.restore_inner();
        let pid = self.pid;
        ACTIVE.with(|a| {
            let mut a = a.borrow_mut();
            if let Some(i) = a.iter().position(|&p| p == pid) {
                a.swap_remove(i);
            }
        });
    }
}

/// Reaps the exit of every held thread of a dying process (bounded: 2 s).
fn reap(frozen: &Frozen) {
    let mut left: Vec<i32> = frozen.tids().collect();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !left.is_empty() && Instant::now() < deadline {
        left.retain(|&tid| {
            let mut status = 0;
            // SAFETY: `status` is a valid place for waitpid's result.
            let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
            if r == tid {
                !(libc::WIFEXITED(status) || libc::WIFSIGNALED(status))
            } else {
                r == 0 // still there; -1 (ECHILD): already reaped
            }
        });
        if !left.is_empty() {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

fn check_held(frozen: &Frozen, tid: i32) -> Result<()> {
    if frozen.tids().any(|t| t == tid) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "thread {tid} is not a frozen thread of process {}",
            frozen.pid()
        )))
    }
}

fn os_error(pid: i32, tid: i32, what: &str, e: io::Error) -> Error {
    if e.raw_os_error() == Some(libc::ESRCH) {
        return Error::TargetExited { pid };
    }
    Error::sys(format!("{what} of thread {tid} of process {pid}"), e)
}

/// A dead run's journal and nonce, taken over by the run that removes what it
/// names (`leftovers::remove`).
type Inherited = (Vec<Leftover>, [u8; NONCE_BYTES]);

/// A fresh random nonce for a run (getrandom: the kernel's CSPRNG).
fn random_nonce() -> Result<[u8; NONCE_BYTES]> {
    let mut nonce = [0u8; NONCE_BYTES];
    let mut done = 0;
    while done < NONCE_BYTES {
        // SAFETY: writes at most the rest of `nonce`, a valid buffer.
        let r = unsafe {
            libc::getrandom(
                nonce[done..].as_mut_ptr() as *mut libc::c_void,
                NONCE_BYTES - done,
                0,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(Error::sys("getrandom", e));
        }
        done += r as usize;
    }
    Ok(nonce)
}

/// Every blockable signal but those in UNBLOCKED (bit n-1 is signal n).
fn injection_mask() -> u64 {
    UNBLOCKED.iter().fold(!0u64, |m, &s| m & !(1u64 << (s - 1)))
}

fn thread_dead(pid: i32, tid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")) {
        Ok(text) => proc::parse_stat(&text)
            .map(|s| s.is_zombie())
            .unwrap_or(false),
        Err(_) => true,
    }
}

/// A readable name for the calls predump injects (error messages).
fn syscall_name(nr: i64) -> String {
    let known: &[(i64, &str)] = &[
        (libc::SYS_getpid, "getpid"),
        (libc::SYS_mmap, "mmap"),
        (libc::SYS_munmap, "munmap"),
        (libc::SYS_pipe2, "pipe2"),
        (libc::SYS_close, "close"),
        (libc::SYS_vmsplice, "vmsplice"),
        (libc::SYS_fcntl, "fcntl"),
        (libc::SYS_userfaultfd, "userfaultfd"),
        (libc::SYS_madvise, "madvise"),
        (libc::SYS_mprotect, "mprotect"),
    ];
    match known.iter().find(|(n, _)| *n == nr) {
        Some((_, name)) => (*name).to_string(),
        None => format!("system call {nr}"),
    }
}
