//! Running single system calls inside a stopped thread of a frozen process.
//!
//! The splice mode and uffd dirty tracking need a few system calls made *by the
//! target* (pipe2, mmap, vmsplice, userfaultfd, close, munmap). CRIU does this with
//! a parasite blob; we need no blob: single calls, plus one small loop for runs
//! of calls, do. Single calls work as CRIU's compel does for its bootstrap calls
//! (compel_execute_syscall):
//!
//! 1. save the thread's registers, its signal mask and the siginfo of its stop;
//! 2. once, at the thread's pc: write `syscall; int3` (aarch64: `svc #0; brk #0`)
//!    there through PTRACE_POKEDATA (which writes through read-only text mappings
//!    by copy-on-write), run `mmap(PROT_READ|PROT_EXEC, MAP_PRIVATE|MAP_ANONYMOUS)`
//!    from it for a *code page* of our own, put the original bytes back at once,
//!    and poke `syscall; int3` into the code page (POKEDATA writes through its
//!    missing PROT_WRITE as well);
//! 3. per call: set pc to the code page, the number and arguments in the syscall
//!    registers, PTRACE_CONT, wait for the SIGTRAP of the trap instruction, read
//!    the result register, then *re-stop* (below);
//! 4. a batch (`Injector::batch`, splice mode's vmsplice per pipe): the code
//!    page also holds a loop (`arch::BATCH_CODE`) that runs the calls of a table
//!    in the scratch mapping (number, six arguments, a result slot each) and
//!    traps after the last or after the first that fails. One resume and one
//!    re-stop for the whole run, instead of ~10 ptrace requests and a scheduler
//!    round trip per call (1 GiB in splice mode: 1,024 vmsplices, frozen 91 →
//!    31 ms);
//! 5. restore: unmap the scratch mapping from the code page; unmap the code page
//!    with one last call run at the thread's pc again (the bytes written, the
//!    call run, the bytes put back: a munmap run *from* the code page would take
//!    away the page under its own trap instruction, a SIGSEGV); put back the
//!    registers, the mask and the siginfo.
//!
//! Re-stop: a thread stopped at our trap sits in a *signal-delivery stop* for the
//! trap's SIGTRAP. If predump died there, the kernel would detach it without
//! clearing that stop's signal (exit_ptrace → __ptrace_detach, unlike
//! PTRACE_DETACH) and deliver the SIGTRAP: the target would die. So after each
//! call we set the thread's own registers (and signal mask, rseq pointer) back,
//! PTRACE_INTERRUPT it and PTRACE_CONT it with signal 0: the SIGTRAP is
//! discarded, and `get_signal()`'s loop takes the pending interrupt trap before
//! it dequeues any signal or returns to user mode, so the thread stops again in a
//! PTRACE_EVENT_STOP with its original registers, at its original code: the state
//! a freeze leaves it in (test: the state read between two calls equals the state
//! read right after the freeze). A tracer that dies there leaves a thread that
//! simply goes on, restarting or finishing its interrupted call as after a thaw.
//!
//! Why the last stop keeps the thread's behaviour exact (x86_64): the freeze stops
//! a thread inside the kernel's `get_signal()`, where a thread blocked in a system
//! call has not yet decided whether to restart it; that decision is taken from the
//! registers after the stop. Our trap's stop and the re-stop are also inside
//! `get_signal()`, so with the saved registers back the kernel takes, at thaw, the
//! decision it would have taken without us (restart, restart_syscall with the
//! remaining time, or -EINTR for a handler without SA_RESTART). Each injected call
//! runs with orig_rax = -1 so that leaving the stop does not restart the
//! interrupted call. aarch64 decides before the stop and cannot be made exact:
//! see aarch64.rs.
//!
//! Signals: while our code runs, every signal the thread may block is blocked
//! (PTRACE_SETSIGMASK), so a signal sent meanwhile stays *pending* with its
//! siginfo and is delivered after thaw, never into our code. The blocking mask is
//! set right before each call and the thread's own mask put back before the
//! re-stop, so a thread left behind by a dead tracer between calls never keeps
//! it. Left unblocked: SIGTRAP and the fault signals (the kernel resets the
//! handler of a forced signal that is blocked, which would change the target's
//! dispositions if our code faulted), and SIGKILL/SIGSTOP (unblockable). If one
//! of those arrives from outside during a call, we take it at its
//! signal-delivery stop and send it again when we restore (kill/tgkill: the
//! signal is kept, its sender pid is then ours).
//!
//! A freeze that caught the thread at a signal-delivery stop (a signal dequeued
//! just before our interrupt) hands that signal back at thaw, which only a
//! signal-delivery stop can deliver. Between calls such a thread waits in the
//! re-stop (an interrupt stop) like any other, and `restore` ends it at the trap
//! of its last call (the munmap of the code page) with the original registers
//! and siginfo, so the thaw delivers the same signal with the same siginfo.
//!
//! Restrictions: one Injector per process at a time (two at one pc would save
//! each other's code bytes); the process must not ignore SIGTRAP (the kernel would
//! reset that disposition to SIG_DFL at our int3); a thread in an rseq critical
//! section has its rseq_cs pointer cleared while each call runs and put back at
//! each re-stop, or the kernel would divert our pc to the section's abort handler
//! (first and last call, at pc) or clear the pointer (calls at the code page).
//!
//! If predump is killed (even by SIGKILL) while an Injector is active, the kernel
//! detaches the thread. Harmless whenever the thread is in its re-stop, i.e.
//! between calls and before `new` / after `restore` returns: it resumes as after
//! a thaw. Harmful (the thread dies of our SIGTRAP, runs with our registers or
//! blocking mask, or runs our code at its pc) only inside these windows:
//! - each call, from the moment we set its mask and registers until the
//!   PTRACE_CONT of its re-stop (which discards the SIGTRAP): the run of the
//!   call itself plus about ten ptrace requests, ~10 µs for a short call, as long
//!   as the call for a blocking one (bounded by the timeout, default 10 s, after
//!   which the call is interrupted and the thread re-stopped); for a batch, the
//!   run of all its calls (splice mode: ~7 ms per group of 253 1-MiB pipes);
//! - the first call (`new`) and the last one (`restore`): from writing our bytes
//!   at pc to putting them back (two or three more ptrace requests);
//! - for a thread frozen at a signal-delivery stop: from the last call of
//!   `restore` until the thaw (the thread then waits in our trap's stop, whose
//!   SIGTRAP a dying tracer would deliver). Between calls, such a thread loses
//!   the signal the freeze held if the tracer dies (it does not die).
//!
//! Signals taken from outside during a call (only unblockable or fault signals)
//! are lost if the tracer dies before `restore` sends them again.

use std::cell::RefCell;
use std::io::{self, IoSlice, IoSliceMut};
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use nix::sys::uio::{process_vm_readv, process_vm_writev, RemoteIoVec};
use nix::unistd::Pid;

use crate::freeze::Frozen;
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

pub mod fd;
pub use fd::{pidfd_getfd, PidFd};

/// include/uapi/linux/elf.h
const NT_PRSTATUS: u32 = 1;
const NT_PRFPREG: u32 = 2;
/// ptrace requests (include/uapi/linux/ptrace.h), as u32 on every libc flavour.
const PTRACE_CONT: u32 = 7;
const PTRACE_GETREGSET: u32 = 0x4204;
const PTRACE_SETREGSET: u32 = 0x4205;
const PTRACE_INTERRUPT: u32 = 0x4207;
const PTRACE_GETSIGMASK: u32 = 0x420a;
const PTRACE_SETSIGMASK: u32 = 0x420b;
/// Linux 5.13.
const PTRACE_GET_RSEQ_CONFIGURATION: u32 = 0x420f;
/// include/uapi/linux/ptrace.h: `status >> 16` of PTRACE_INTERRUPT and group stops.
const PTRACE_EVENT_STOP: i32 = 128;
/// si_code of a tkill/tgkill signal.
const SI_TKILL: i32 = -6;
/// Largest errno a raw system call returns as -errno.
const MAX_ERRNO: i64 = 4095;

/// Signals left deliverable while an injected call runs (see the module comment).
const UNBLOCKED: [i32; 6] = [
    libc::SIGTRAP,
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

/// Runs single system calls inside a stopped thread of a frozen process.
/// Not `Send`: ptrace requests must come from the thread that froze.
pub struct Injector<'f> {
    frozen: &'f Frozen,
    pid: i32,
    tid: i32,
    /// Everything saved at creation, put back by `restore`.
    regs: arch::Regs,
    extra: arch::Extra,
    sigmask: u64,
    siginfo: Option<libc::siginfo_t>,
    /// Where the first and last calls run (at or next to pc), and the bytes our
    /// code replaces there while they run.
    point: u64,
    code: Vec<u8>,
    code_written: bool,
    /// Our code page in the target (`syscall; int3`), where every other call runs.
    code_page: Option<u64>,
    /// Where the call being run has its code (point or the code page), and which.
    at: u64,
    kind: Code,
    /// The thread was changed (registers, mask, code): restore has work to do.
    touched: bool,
    /// (address of the thread's rseq.rseq_cs, its value) while we keep it cleared.
    rseq_cs: Option<(u64, u64)>,
    /// Our scratch mapping in the target: (address, length).
    scratch: Option<(u64, u64)>,
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
            .field("point", &format_args!("{:#x}", self.point))
            .field("scratch", &self.scratch)
            .finish_non_exhaustive()
    }
}

/// A thread's state as far as injection could change it, for comparisons: taken
/// right after a freeze and again after `restore`, the two must be equal.
#[derive(Clone, PartialEq, Eq)]
pub struct ThreadState {
    pub pc: u64,
    /// The general registers (NT_PRSTATUS) as words in the kernel's order, incl.
    /// orig_rax, fs_base and gs_base on x86_64; x0…x30, sp, pc, pstate on aarch64.
    pub regs: Vec<u64>,
    /// NT_PRFPREG: x87/SSE state on x86_64, the FPSIMD registers on aarch64.
    pub fpregs: Vec<u8>,
    /// Architecture extras (aarch64: NT_ARM_SYSTEM_CALL, live SVE state).
    pub extra: Vec<u8>,
    /// The blocked-signal mask as PTRACE_GETSIGMASK reports it.
    pub sigmask: u64,
    /// The siginfo of the current ptrace stop (PTRACE_GETSIGINFO).
    pub siginfo: Option<Vec<u8>>,
}

impl std::fmt::Debug for ThreadState {
    /// Registers in hex; byte blobs in hex with trailing zero bytes cut.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn hex(b: &[u8]) -> String {
            let used = b.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1);
            let mut s: String = b[..used].iter().map(|x| format!("{x:02x}")).collect();
            if used < b.len() {
                s.push_str(&format!("…(+{} zero bytes)", b.len() - used));
            }
            s
        }
        f.debug_struct("ThreadState")
            .field("pc", &format_args!("{:#x}", self.pc))
            .field("regs", &format_args!("{:x?}", self.regs))
            .field("fpregs", &hex(&self.fpregs))
            .field("extra", &hex(&self.extra))
            .field("sigmask", &format_args!("{:#x}", self.sigmask))
            .field("siginfo", &self.siginfo.as_deref().map(hex))
            .finish()
    }
}

/// Reads the state of thread `tid` of a frozen process (see [`ThreadState`]).
pub fn thread_state(frozen: &Frozen, tid: i32) -> Result<ThreadState> {
    let pid = frozen.pid();
    check_held(frozen, tid)?;
    let err = |what: &str, e: io::Error| os_error(pid, tid, what, e);
    let regs = arch::get_regs(tid).map_err(|e| err("reading the registers", e))?;
    let mut fp = vec![0u8; 4096];
    let n = getregset(tid, NT_PRFPREG, &mut fp).map_err(|e| err("reading the FP registers", e))?;
    fp.truncate(n);
    let extra = arch::save_extra(tid).map_err(|e| err("reading the extra registers", e))?;
    let sigmask = get_sigmask(tid).map_err(|e| err("PTRACE_GETSIGMASK", e))?;
    let siginfo = get_siginfo(tid).map_err(|e| err("PTRACE_GETSIGINFO", e))?;
    Ok(ThreadState {
        pc: arch::pc(&regs),
        regs: arch::words(&regs),
        fpregs: fp,
        extra: arch::extra_bytes(&extra),
        sigmask,
        siginfo: siginfo.as_ref().map(siginfo_bytes),
    })
}

/// How a stop we waited for ended.
enum Stop {
    /// A signal-delivery stop for this signal.
    Signal(i32),
    /// A PTRACE_EVENT stop (group stop or PTRACE_INTERRUPT).
    Event,
    /// The thread exited.
    Gone,
}

/// What a signal-delivery stop during our call was.
enum Class {
    /// The trap after our system call: the call is done; its registers.
    Trap(Box<arch::Regs>),
    /// A signal from outside, kept to be sent again at restore.
    Foreign,
}

/// Which of our code a call runs.
#[derive(Clone, Copy)]
enum Code {
    /// `syscall; int3`: one call (at pc, or at the start of the code page).
    Single,
    /// The batch loop, at `BATCH_AT` in the code page.
    Batch,
}

impl Code {
    fn len(self) -> u64 {
        match self {
            Code::Single => arch::CODE.len() as u64,
            Code::Batch => arch::BATCH_CODE.len() as u64,
        }
    }
    fn trap_offset(self) -> u64 {
        match self {
            Code::Single => arch::TRAP_OFFSET,
            Code::Batch => arch::BATCH_TRAP_OFFSET,
        }
    }
    fn trap_stop_offset(self) -> u64 {
        match self {
            Code::Single => arch::TRAP_STOP_OFFSET,
            Code::Batch => arch::BATCH_TRAP_STOP_OFFSET,
        }
    }
}

/// Where the batch loop sits in our code page (after `CODE`, aligned).
const BATCH_AT: u64 = 64;
/// Bytes per call in a batch table: number, six arguments, result.
pub const BATCH_ENTRY_BYTES: u64 = 64;
/// The result slot of a call that did not run (no system call returns it).
const NOT_RUN: i64 = i64::MIN;

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

impl<'f> Injector<'f> {
    /// Prepares injection into thread `tid` of `frozen` (`frozen.pid()` for the main
    /// thread): saves its registers, signal mask and stop siginfo, writes the
    /// syscall and trap instructions next to its pc, and blocks its signals.
    pub fn new(frozen: &'f Frozen, tid: i32) -> Result<Injector<'f>> {
        let pid = frozen.pid();
        check_held(frozen, tid)?;
        if ACTIVE.with(|a| a.borrow().contains(&pid)) {
            return Err(Error::InvalidArgument(format!(
                "another injection into process {pid} is active: restore it first"
            )));
        }
        if sigtrap_ignored(pid)? {
            // The kernel forces int3/brk's SIGTRAP and resets an ignored
            // disposition to SIG_DFL: injecting would change the target.
            return Err(Error::sys(
                format!("injecting into process {pid}: it ignores SIGTRAP, which a trap would reset to the default action"),
                io::Error::from_raw_os_error(libc::EPERM),
            ));
        }
        let err = |what: &str, e: io::Error| os_error(pid, tid, what, e);
        let regs = arch::get_regs(tid).map_err(|e| err("reading the registers", e))?;
        arch::check_injectable(&regs).map_err(|detail| {
            Error::sys(
                format!("injecting into process {pid} (thread {tid}): {detail}"),
                io::Error::from_raw_os_error(libc::ENOEXEC),
            )
        })?;
        let extra = arch::save_extra(tid).map_err(|e| err("reading the extra registers", e))?;
        let sigmask = get_sigmask(tid).map_err(|e| err("PTRACE_GETSIGMASK", e))?;
        let siginfo = get_siginfo(tid).map_err(|e| err("PTRACE_GETSIGINFO", e))?;
        let point = arch::injection_point(&regs);

        // From here on, Drop undoes whatever was done if a step fails.
        ACTIVE.with(|a| a.borrow_mut().push(pid));
        let mut inj = Injector {
            frozen,
            pid,
            tid,
            regs,
            extra,
            sigmask,
            siginfo,
            point,
            code: Vec::new(),
            code_written: false,
            code_page: None,
            at: point,
            kind: Code::Single,
            touched: false,
            rseq_cs: None,
            scratch: None,
            caught: Vec::new(),
            timeout: Duration::from_secs(10),
            gone: false,
            done: false,
            _not_send: PhantomData,
        };
        match peek_bytes(tid, point, arch::CODE.len()) {
            Ok(code) => inj.code = code,
            Err(e) => return Err(inj.os("reading the code at the injection point", e)),
        }
        inj.find_rseq_cs()?;
        // The code page, mapped by a call run at pc (the one time our code sits
        // there besides the last call of restore).
        let page = inj.call_at_point(
            libc::SYS_mmap,
            &[
                0,
                PAGE_SIZE,
                libc::PROT_READ as u64 | libc::PROT_EXEC as u64,
                libc::MAP_PRIVATE as u64 | libc::MAP_ANONYMOUS as u64,
                u64::MAX,
                0,
            ],
        );
        let page = match page {
            Ok(r) if !(-MAX_ERRNO..0).contains(&r) => r as u64,
            Ok(r) => return Err(inj.call_error(libc::SYS_mmap, -r as i32)),
            Err(e) => return Err(e),
        };
        inj.code_page = Some(page);
        poke_bytes(tid, page, &arch::CODE).map_err(|e| inj.os("writing our code page", e))?;
        poke_bytes(tid, page + BATCH_AT, &arch::BATCH_CODE)
            .map_err(|e| inj.os("writing our code page", e))?;
        inj.settle()?;
        Ok(inj)
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// The address our code is written to for the first and last call (at or
    /// next to the thread's pc; the other calls run in a code page of our own).
    pub fn point(&self) -> u64 {
        self.point
    }

    /// The signal the thread was stopped to deliver when we took it (the freeze
    /// hands it back at thaw), or None for an interrupt or group stop.
    pub fn stop_signal(&self) -> Option<i32> {
        let si = self.siginfo.as_ref()?;
        if si.si_code >> 8 == PTRACE_EVENT_STOP {
            None
        } else {
            Some(si.si_signo)
        }
    }

    /// How long one injected call may take before it is interrupted (default 10 s).
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
        if self.gone {
            return Err(Error::TargetExited { pid: self.pid });
        }
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        let Some(page) = self.code_page else {
            return Err(Error::InvalidArgument(format!(
                "injection into process {} is being restored",
                self.pid
            )));
        };
        let out = self.call_at(page, nr, &a);
        // Back to the freeze's state even if the call failed (a fault of our
        // code, a timeout): the thread must not wait in a signal-delivery stop.
        let settled = if self.gone { Ok(()) } else { self.settle() };
        let out = out?;
        settled?;
        Ok(arch::result(&out))
    }

    /// `syscall`, with -errno turned into an error naming the call.
    pub fn syscall_ok(&mut self, nr: i64, args: &[u64]) -> Result<i64> {
        let r = self.syscall(nr, args)?;
        if (-MAX_ERRNO..0).contains(&r) {
            return Err(self.call_error(nr, -r as i32));
        }
        Ok(r)
    }

    /// Runs `calls` in order inside the thread with a single resume: our code
    /// loops over a table of them at `table` (inside the scratch mapping,
    /// [`BATCH_ENTRY_BYTES`] per call) and stops after the first that fails.
    /// Returns the raw results of the calls that ran: all of them, or up to and
    /// including the first -errno. One batch costs about what one `syscall`
    /// does in ptrace requests, whatever its length; signals, the timeout (for
    /// the whole batch) and the re-stop are as for `syscall`.
    pub fn batch(&mut self, table: u64, calls: &[Call]) -> Result<Vec<i64>> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        let bytes = calls.len() as u64 * BATCH_ENTRY_BYTES;
        match self.scratch {
            Some((addr, len)) if table >= addr && table + bytes <= addr + len => {}
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "a batch table of {} calls at {table:#x} is not inside the scratch mapping",
                    calls.len()
                )))
            }
        }
        if self.gone {
            return Err(Error::TargetExited { pid: self.pid });
        }
        let Some(page) = self.code_page else {
            return Err(Error::InvalidArgument(format!(
                "injection into process {} is being restored",
                self.pid
            )));
        };
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
        arch::set_batch(&mut regs, page + BATCH_AT, table, calls.len() as u64);
        let what = format!(
            "batch of {} calls ({}, …)",
            calls.len(),
            syscall_name(calls[0].nr)
        );
        let out = self.enter(page + BATCH_AT, Code::Batch, &regs, &what);
        let settled = if self.gone { Ok(()) } else { self.settle() };
        out?;
        settled?;
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

    pub fn getpid(&mut self) -> Result<i32> {
        Ok(self.syscall_ok(libc::SYS_getpid, &[])? as i32)
    }

    /// An anonymous or other fd-less mapping in the target (fd -1, offset 0).
    pub fn mmap(&mut self, len: u64, prot: i32, flags: i32) -> Result<u64> {
        let r = self.syscall_ok(
            libc::SYS_mmap,
            &[0, len, prot as u32 as u64, flags as u32 as u64, u64::MAX, 0],
        )?;
        Ok(r as u64)
    }

    pub fn munmap(&mut self, addr: u64, len: u64) -> Result<()> {
        self.syscall_ok(libc::SYS_munmap, &[addr, len])?;
        Ok(())
    }

    /// pipe2 in the target: returns [read end, write end] as the target's fds.
    /// The kernel writes the two fds into the target's memory; we give it our
    /// scratch mapping (not the thread's stack: below the red zone is free by the
    /// ABI, but its page may be unmapped, and a fault there would grow the stack
    /// VMA, a lasting change to the target's maps).
    pub fn pipe2(&mut self, flags: i32) -> Result<[i32; 2]> {
        let at = self.scratch(8)?;
        self.syscall_ok(libc::SYS_pipe2, &[at, flags as u32 as u64])?;
        let mut b = [0u8; 8];
        self.read_memory(at, &mut b)?;
        Ok([
            i32::from_ne_bytes(b[0..4].try_into().unwrap()),
            i32::from_ne_bytes(b[4..8].try_into().unwrap()),
        ])
    }

    pub fn close(&mut self, fd: i32) -> Result<()> {
        self.syscall_ok(libc::SYS_close, &[fd as u32 as u64])?;
        Ok(())
    }

    /// vmsplice in the target: `n` iovecs at `iov_addr` (target memory, e.g. the
    /// scratch mapping filled with `write_memory`) into the target's fd `fd`.
    pub fn vmsplice(&mut self, fd: i32, iov_addr: u64, n: u64, flags: u32) -> Result<usize> {
        let r = self.syscall_ok(
            libc::SYS_vmsplice,
            &[fd as u32 as u64, iov_addr, n, flags as u64],
        )?;
        Ok(r as usize)
    }

    pub fn fcntl(&mut self, fd: i32, cmd: i32, arg: u64) -> Result<i64> {
        self.syscall_ok(libc::SYS_fcntl, &[fd as u32 as u64, cmd as u32 as u64, arg])
    }

    /// A read-write scratch mapping of at least `len` bytes in the target, owned by
    /// this Injector and unmapped by `restore`. A larger request replaces it.
    pub fn scratch(&mut self, len: u64) -> Result<u64> {
        let need = len.max(1).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        if let Some((addr, have)) = self.scratch {
            if have >= need {
                return Ok(addr);
            }
            self.munmap(addr, have)?;
            self.scratch = None;
        }
        let addr = self.mmap(
            need,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        )?;
        self.scratch = Some((addr, need));
        Ok(addr)
    }

    /// Writes `data` into the target's memory at `addr` (process_vm_writev: the
    /// page protections apply, so this cannot scribble over read-only memory).
    pub fn write_memory(&self, addr: u64, data: &[u8]) -> Result<()> {
        write_memory(self.pid, addr, data)
    }

    /// Reads the target's memory at `addr` into `buf`.
    pub fn read_memory(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        read_memory(self.pid, addr, buf)
    }

    /// Unmaps the scratch mapping and our code page, puts back the registers, the
    /// signal mask, the stop's siginfo and the rseq pointer, and sends again the
    /// signals taken from outside during the calls. The code at pc is the
    /// original again (it is only ours during the first and last call).
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
        if !self.touched {
            return Ok(());
        }
        // Every step is tried even if an earlier one failed; the first error wins.
        let mut first: Option<Error> = None;
        fn keep(e: Error, first: &mut Option<Error>) {
            if first.is_none() {
                *first = Some(e);
            }
        }
        if let Some((addr, len)) = self.scratch.take() {
            if let Err(e) = self.munmap(addr, len) {
                keep(e, &mut first);
            }
        }
        if self.gone {
            return Err(Error::TargetExited { pid: self.pid });
        }
        // The last call, at pc: the code page cannot unmap itself (its trap
        // instruction would be gone when the thread fetches it). Without a code
        // page (new failed), a getpid: a thread frozen at a signal-delivery stop
        // must end in one, our trap's, to get its signal back at thaw.
        let last = match self.code_page.take() {
            Some(page) => (libc::SYS_munmap, [page, PAGE_SIZE, 0, 0, 0, 0]),
            None => (libc::SYS_getpid, [0; 6]),
        };
        match self.call_at_point(last.0, &last.1) {
            Ok(r) if (-MAX_ERRNO..0).contains(&r) => {
                keep(self.call_error(last.0, -r as i32), &mut first)
            }
            Ok(_) => {}
            Err(e) => keep(e, &mut first),
        }
        if self.gone {
            return Err(Error::TargetExited { pid: self.pid });
        }
        let tid = self.tid;
        if self.code_written {
            // call_at_point failed to put the bytes back: once more.
            if let Err(e) = poke_bytes(tid, self.point, &self.code) {
                keep(self.os("putting back the code", e), &mut first);
            } else {
                self.code_written = false;
            }
        }
        if self.stop_signal().is_none() {
            // Frozen at an interrupt or group stop: end in the same kind of stop,
            // with everything put back (settle does all of it).
            if let Err(e) = self.settle() {
                keep(e, &mut first);
            }
        } else {
            // Frozen at a signal-delivery stop: stay in our trap's stop, with the
            // original siginfo, so that the thaw delivers the same signal.
            if let Err(e) = self.put_back() {
                keep(e, &mut first);
            }
            if let Some(si) = self.siginfo {
                if let Err(e) = set_siginfo(tid, &si) {
                    keep(self.os("putting back the stop's siginfo", e), &mut first);
                }
            }
        }
        for (sig, code) in std::mem::take(&mut self.caught) {
            // SAFETY: plain system calls with integer arguments.
            let r = unsafe {
                if code == SI_TKILL && sig != libc::SIGSTOP {
                    libc::syscall(libc::SYS_tgkill, self.pid, tid, sig) as i32
                } else {
                    libc::kill(self.pid, sig)
                }
            };
            if r != 0 {
                keep(
                    Error::sys(
                        format!("sending signal {sig} back to process {}", self.pid),
                        io::Error::last_os_error(),
                    ),
                    &mut first,
                );
            }
        }
        if self.gone {
            return Err(Error::TargetExited { pid: self.pid });
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Finds the thread's rseq critical-section pointer: with our pc inside a
    /// critical section (first and last call), the kernel's rseq fixup on return
    /// to user space would move pc to the section's abort handler instead of our
    /// code; with pc outside (our code page) it would clear the pointer. So it is
    /// cleared while each call runs and put back at each re-stop.
    fn find_rseq_cs(&mut self) -> Result<()> {
        let mut conf = [0u8; 24];
        let r = ptrace(
            PTRACE_GET_RSEQ_CONFIGURATION,
            self.tid,
            conf.len() as u64,
            conf.as_mut_ptr() as u64,
        );
        match r {
            Ok(_) => {}
            // Before Linux 5.13 (or without CONFIG_RSEQ): no way to know; go on.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL)) => {
                return Ok(())
            }
            Err(e) => return Err(self.os("PTRACE_GET_RSEQ_CONFIGURATION", e)),
        }
        let area = u64::from_ne_bytes(conf[0..8].try_into().unwrap());
        if area == 0 {
            return Ok(());
        }
        // struct rseq { u32 cpu_id_start; u32 cpu_id; u64 rseq_cs; … }
        let field = area + 8;
        let mut b = [0u8; 8];
        self.read_memory(field, &mut b)?;
        let value = u64::from_ne_bytes(b);
        if value != 0 {
            self.rseq_cs = Some((field, value));
        }
        Ok(())
    }

    /// Sets up and runs one call with our code at `at` (which must be there),
    /// and waits for its trap: the thread is left in the trap's signal-delivery
    /// stop, with the blocking mask; `settle` or `put_back` must follow.
    fn call_at(&mut self, at: u64, nr: i64, args: &[u64; 6]) -> Result<arch::Regs> {
        // Start from the thread's own registers: sp and the rest stay sane.
        let mut regs = self.regs;
        arch::set_syscall(&mut regs, at, nr, args);
        self.enter(at, Code::Single, &regs, &syscall_name(nr))
    }

    /// Runs our code `kind` at `at` with `regs` (set up by the caller) and waits
    /// for its trap, as `call_at`.
    fn enter(&mut self, at: u64, kind: Code, regs: &arch::Regs, what: &str) -> Result<arch::Regs> {
        self.touched = true;
        self.at = at;
        self.kind = kind;
        let tid = self.tid;
        set_sigmask(tid, injection_mask()).map_err(|e| self.os("PTRACE_SETSIGMASK", e))?;
        if let Some((addr, _)) = self.rseq_cs {
            write_memory(self.pid, addr, &0u64.to_ne_bytes())?;
        }
        arch::prepare(tid, &self.extra).map_err(|e| self.os("preparing the registers", e))?;
        arch::set_regs(tid, regs).map_err(|e| self.os("setting the registers", e))?;
        self.run(what)
    }

    /// One call with our code written at the injection point for its duration
    /// (first and last call). Leaves the thread in the trap's stop.
    fn call_at_point(&mut self, nr: i64, args: &[u64; 6]) -> Result<i64> {
        // Marked first: if the write fails halfway, restore rewrites the original.
        self.touched = true;
        self.code_written = true;
        poke_bytes(self.tid, self.point, &arch::CODE)
            .map_err(|e| self.os("writing the code at the injection point", e))?;
        let out = self.call_at(self.point, nr, args);
        if !self.gone {
            poke_bytes(self.tid, self.point, &self.code)
                .map_err(|e| self.os("putting back the code", e))?;
            self.code_written = false;
        }
        Ok(arch::result(&out?))
    }

    /// Puts back the thread's registers, extra state, signal mask and rseq
    /// pointer (at a stop of ours).
    fn put_back(&mut self) -> Result<()> {
        let tid = self.tid;
        arch::set_regs(tid, &self.regs).map_err(|e| self.os("putting back the registers", e))?;
        arch::restore_extra(tid, &self.extra)
            .map_err(|e| self.os("putting back the extra registers", e))?;
        // PTRACE_SETSIGMASK also clears TIF_RESTORE_SIGMASK; the mask we put
        // back is the one GETSIGMASK gave, i.e. the saved mask of a thread in
        // ppoll/pselect/epoll_pwait/sigsuspend, which is what the kernel would
        // restore after the call returns anyway.
        set_sigmask(tid, self.sigmask).map_err(|e| self.os("putting back the signal mask", e))?;
        if let Some((addr, value)) = self.rseq_cs {
            write_memory(self.pid, addr, &value.to_ne_bytes())?;
        }
        Ok(())
    }

    /// The re-stop: from the stop after a call (our trap, or a fault of our
    /// code), back to an interrupt stop (PTRACE_EVENT_STOP) inside get_signal()
    /// with the thread's own registers, mask and code: the state of a freeze.
    /// Everything is put back *before* the PTRACE_CONT that discards our
    /// SIGTRAP, so a tracer dying at any point after it leaves a thread that goes
    /// on as after a thaw (the detach also drops the pending interrupt).
    fn settle(&mut self) -> Result<()> {
        self.put_back()?;
        ptrace(PTRACE_INTERRUPT, self.tid, 0, 0).map_err(|e| self.os("PTRACE_INTERRUPT", e))?;
        self.cont()?;
        // get_signal() takes a pending interrupt trap before it dequeues a
        // signal, so the next stop is that trap; a signal-delivery stop is not
        // expected here, but would be someone else's signal: kept.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.wait_stop(deadline)? {
                None => {
                    return Err(Error::sys(
                        format!(
                            "thread {} of process {} does not stop again after an injected call",
                            self.tid, self.pid
                        ),
                        io::Error::from_raw_os_error(libc::ETIMEDOUT),
                    ))
                }
                Some(Stop::Gone) => return Err(self.exited()),
                Some(Stop::Event) => return Ok(()),
                Some(Stop::Signal(sig)) => {
                    let info = nix::sys::ptrace::getsiginfo(Pid::from_raw(self.tid))
                        .map_err(|e| self.os("PTRACE_GETSIGINFO", e.into()))?;
                    self.caught.push((sig, info.si_code));
                    self.cont()?;
                }
            }
        }
    }

    /// Resumes the thread into our code and waits for the trap after the call.
    fn run(&mut self, what: &str) -> Result<arch::Regs> {
        self.cont()?;
        if let Some(regs) = self.wait_trap(what, Instant::now() + self.timeout)? {
            return Ok(regs);
        }
        self.interrupt_own_call(what)?;
        Err(Error::sys(
            format!(
                "injected {} in process {} (thread {}) did not return within {:?}; it was interrupted",
                what,
                self.pid,
                self.tid,
                self.timeout
            ),
            io::Error::from_raw_os_error(libc::ETIMEDOUT),
        ))
    }

    /// Waits for the trap; takes foreign signals on the way. None: deadline passed.
    fn wait_trap(&mut self, what: &str, deadline: Instant) -> Result<Option<arch::Regs>> {
        loop {
            match self.wait_stop(deadline)? {
                None => return Ok(None),
                Some(Stop::Gone) => return Err(self.exited()),
                // A group stop or interrupt we did not ask for: a seized thread
                // resumes from it with PTRACE_CONT; the detach at thaw re-enters
                // a group stop that is still in effect.
                Some(Stop::Event) => self.cont()?,
                Some(Stop::Signal(sig)) => match self.classify(sig, what)? {
                    Class::Trap(regs) => return Ok(Some(*regs)),
                    Class::Foreign => self.cont()?,
                },
            }
        }
    }

    /// Our call blocks past the timeout: interrupt it (PTRACE_INTERRUPT makes it
    /// return -ERESTART…/-EINTR into an interrupt stop), then jump over the
    /// restart to our trap, so the thread ends in the same kind of stop as after
    /// a completed call and `restore` works as usual.
    fn interrupt_own_call(&mut self, what: &str) -> Result<()> {
        ptrace(PTRACE_INTERRUPT, self.tid, 0, 0).map_err(|e| self.os("PTRACE_INTERRUPT", e))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.wait_stop(deadline)? {
                None => {
                    return Err(Error::sys(
                        format!("thread {} of process {} does not stop", self.tid, self.pid),
                        io::Error::from_raw_os_error(libc::ETIMEDOUT),
                    ))
                }
                Some(Stop::Gone) => return Err(self.exited()),
                Some(Stop::Event) => break,
                Some(Stop::Signal(sig)) => match self.classify(sig, what)? {
                    // The call finished just now; the interrupt stays pending and
                    // shows up (and is skipped) at the next resume, or is dropped
                    // by the detach.
                    Class::Trap(_) => return Ok(()),
                    Class::Foreign => self.cont()?,
                },
            }
        }
        let mut regs = arch::get_regs(self.tid).map_err(|e| self.os("reading the registers", e))?;
        arch::set_pc(&mut regs, self.at + self.kind.trap_offset());
        arch::no_restart(&mut regs);
        arch::set_regs(self.tid, &regs).map_err(|e| self.os("setting the registers", e))?;
        self.cont()?;
        match self.wait_trap(what, Instant::now() + Duration::from_secs(5))? {
            Some(_) => Ok(()),
            None => Err(Error::sys(
                format!(
                    "thread {} of process {} does not reach the trap",
                    self.tid, self.pid
                ),
                io::Error::from_raw_os_error(libc::ETIMEDOUT),
            )),
        }
    }

    /// Tells our trap from a fault of our code and from someone else's signal.
    fn classify(&mut self, sig: i32, what: &str) -> Result<Class> {
        let info = nix::sys::ptrace::getsiginfo(Pid::from_raw(self.tid))
            .map_err(|e| self.os("PTRACE_GETSIGINFO", e.into()))?;
        let regs = arch::get_regs(self.tid).map_err(|e| self.os("reading the registers", e))?;
        let pc = arch::pc(&regs);
        let code = info.si_code;
        if sig == libc::SIGTRAP
            && code == arch::TRAP_SI_CODE
            && pc == self.at + self.kind.trap_stop_offset()
        {
            return Ok(Class::Trap(Box::new(regs)));
        }
        // si_code > 0: raised by the kernel, and at our code: caused by our code
        // (not executable there, single-step, or seccomp's SIGSYS for our call).
        // Not sent again: the thread never caused it.
        if code > 0 && (self.at..=self.at + self.kind.len()).contains(&pc) {
            let (errno, why) = if sig == libc::SIGSYS {
                (libc::EPERM, " (a seccomp filter traps this call)")
            } else {
                (libc::EFAULT, "")
            };
            return Err(Error::sys(
                format!(
                    "injected {} in process {} (thread {}): signal {sig} (si_code {code}) at {pc:#x}{why}",
                    what,
                    self.pid,
                    self.tid
                ),
                io::Error::from_raw_os_error(errno),
            ));
        }
        self.caught.push((sig, code));
        Ok(Class::Foreign)
    }

    /// Waits for the next stop of our thread until `deadline` (None: passed).
    /// Polls with WNOHANG, so that a call that blocks cannot hang us.
    fn wait_stop(&mut self, deadline: Instant) -> Result<Option<Stop>> {
        let mut spins = 0;
        let mut nap = Duration::from_micros(5);
        loop {
            let mut status = 0;
            // SAFETY: `status` is a valid place for waitpid's result.
            let r = unsafe { libc::waitpid(self.tid, &mut status, libc::__WALL | libc::WNOHANG) };
            if r == self.tid {
                if libc::WIFSTOPPED(status) {
                    return Ok(Some(if status >> 16 != 0 {
                        Stop::Event
                    } else {
                        Stop::Signal(libc::WSTOPSIG(status))
                    }));
                }
                if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                    return Ok(Some(Stop::Gone));
                }
                continue; // WIFCONTINUED: not a stop
            }
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::ECHILD) => return Ok(Some(Stop::Gone)),
                    _ => return Err(Error::sys(format!("waitpid of thread {}", self.tid), e)),
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            if spins < SPINS {
                spins += 1;
                std::thread::yield_now();
                continue;
            }
            // A killed thread group leader reports its exit only once every
            // other (traced, stopped) thread is reaped: look at /proc instead.
            if thread_dead(self.pid, self.tid) {
                return Ok(Some(Stop::Gone));
            }
            std::thread::sleep(nap.min(deadline - now));
            nap = (nap * 2).min(Duration::from_millis(1));
        }
    }

    fn cont(&mut self) -> Result<()> {
        // data 0: a signal-delivery stop we resume from is discarded (our SIGTRAP,
        // or one we caught and will send again).
        ptrace(PTRACE_CONT, self.tid, 0, 0).map_err(|e| self.os("PTRACE_CONT", e))?;
        Ok(())
    }

    /// The target died under us (SIGKILL: the only way out of a ptrace stop).
    /// Its traced threads stay zombies until their tracer reaps them, and the
    /// leader's exit is not even reported (to us or to its real parent) before
    /// that: reap them all, once, so the parent sees its child die.
    fn exited(&mut self) -> Error {
        if !self.gone {
            self.gone = true;
            reap(self.frozen);
        }
        Error::TargetExited { pid: self.pid }
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

/// Every blockable signal but those in UNBLOCKED (bit n-1 is signal n).
fn injection_mask() -> u64 {
    UNBLOCKED.iter().fold(!0u64, |m, &s| m & !(1u64 << (s - 1)))
}

fn sigtrap_ignored(pid: i32) -> Result<bool> {
    let text = proc::read_proc(pid, &format!("/proc/{pid}/status"))?;
    let ign = text
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| Error::Parse {
            file: format!("/proc/{pid}/status"),
            detail: "no SigIgn line".into(),
        })?;
    Ok(ign & (1 << (libc::SIGTRAP - 1)) != 0)
}

fn thread_dead(pid: i32, tid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")) {
        Ok(text) => proc::parse_stat(&text)
            .map(|s| s.is_zombie())
            .unwrap_or(false),
        Err(_) => true,
    }
}

/// A raw ptrace request with integer address and data.
fn ptrace(req: u32, tid: i32, addr: u64, data: u64) -> io::Result<i64> {
    // SAFETY: every caller passes a request whose addr/data are either integers
    // or pointers to buffers that are valid (and large enough) for the request
    // during the call. ptrace reports errors through -1 and errno, and no caller
    // uses a PEEK request (whose result may legitimately be -1).
    let r = unsafe {
        libc::ptrace(
            req as _,
            tid,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as i64)
    }
}

/// PTRACE_GETREGSET into `buf`; returns how many bytes the kernel filled.
fn getregset(tid: i32, nt: u32, buf: &mut [u8]) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    ptrace(
        PTRACE_GETREGSET,
        tid,
        nt as u64,
        &mut iov as *mut libc::iovec as u64,
    )?;
    Ok(iov.iov_len)
}

/// PTRACE_SETREGSET from `buf` (the kernel only reads it).
fn setregset(tid: i32, nt: u32, buf: &[u8]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    ptrace(
        PTRACE_SETREGSET,
        tid,
        nt as u64,
        &mut iov as *mut libc::iovec as u64,
    )?;
    Ok(())
}

/// The kernel's sigset_t is 64 bits on x86_64 and aarch64.
fn get_sigmask(tid: i32) -> io::Result<u64> {
    let mut mask = 0u64;
    ptrace(PTRACE_GETSIGMASK, tid, 8, &mut mask as *mut u64 as u64)?;
    Ok(mask)
}

fn set_sigmask(tid: i32, mask: u64) -> io::Result<()> {
    ptrace(PTRACE_SETSIGMASK, tid, 8, &mask as *const u64 as u64)?;
    Ok(())
}

/// The siginfo of the current stop; None when the stop has none (EINVAL).
fn get_siginfo(tid: i32) -> io::Result<Option<libc::siginfo_t>> {
    match nix::sys::ptrace::getsiginfo(Pid::from_raw(tid)) {
        Ok(si) => Ok(Some(si)),
        Err(nix::errno::Errno::EINVAL) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn set_siginfo(tid: i32, si: &libc::siginfo_t) -> io::Result<()> {
    nix::sys::ptrace::setsiginfo(Pid::from_raw(tid), si)?;
    Ok(())
}

fn siginfo_bytes(si: &libc::siginfo_t) -> Vec<u8> {
    // SAFETY: siginfo_t is 128 plain bytes as the kernel copied them out.
    unsafe {
        std::slice::from_raw_parts(
            si as *const libc::siginfo_t as *const u8,
            std::mem::size_of::<libc::siginfo_t>(),
        )
    }
    .to_vec()
}

/// Reads `len` bytes of the target's memory with PTRACE_PEEKDATA, by aligned
/// words (an aligned word never straddles two pages).
fn peek_bytes(tid: i32, addr: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(len);
    let end = addr + len as u64;
    let mut word = addr & !7;
    while word < end {
        let w = nix::sys::ptrace::read(Pid::from_raw(tid), word as nix::sys::ptrace::AddressType)?;
        for (i, b) in (w as u64).to_ne_bytes().iter().enumerate() {
            let a = word + i as u64;
            if a >= addr && a < end {
                out.push(*b);
            }
        }
        word += 8;
    }
    Ok(out)
}

/// Writes `data` into the target's memory with PTRACE_POKEDATA (read-modify-write
/// of aligned words). ptrace writes with FOLL_FORCE: read-only text gets a
/// private copy-on-write page, as for a debugger's breakpoint.
fn poke_bytes(tid: i32, addr: u64, data: &[u8]) -> io::Result<()> {
    let end = addr + data.len() as u64;
    let mut word = addr & !7;
    while word < end {
        let pid = Pid::from_raw(tid);
        let w = nix::sys::ptrace::read(pid, word as nix::sys::ptrace::AddressType)?;
        let mut bytes = (w as u64).to_ne_bytes();
        for (i, b) in bytes.iter_mut().enumerate() {
            let a = word + i as u64;
            if a >= addr && a < end {
                *b = data[(a - addr) as usize];
            }
        }
        let new = u64::from_ne_bytes(bytes) as libc::c_long;
        if new != w {
            nix::sys::ptrace::write(pid, word as nix::sys::ptrace::AddressType, new)?;
        }
        word += 8;
    }
    Ok(())
}

/// The pages holding thread `tid`'s rseq area (the thread must be
/// ptrace-stopped by us), or None if it registered none. The kernel rewrites its
/// cpu and concurrency ids whenever the thread returns to user mode, as it does
/// after every injected call: a dump that must equal the memory afterwards
/// copies these pages after its last injection.
pub fn rseq_pages(tid: i32) -> Result<Option<crate::PageRange>> {
    let mut conf = [0u8; 24];
    match ptrace(
        PTRACE_GET_RSEQ_CONFIGURATION,
        tid,
        conf.len() as u64,
        conf.as_mut_ptr() as u64,
    ) {
        Ok(_) => {}
        Err(e) if matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL)) => {
            return Ok(None)
        }
        Err(e) => {
            return Err(Error::sys(
                format!("PTRACE_GET_RSEQ_CONFIGURATION of thread {tid}"),
                e,
            ))
        }
    }
    // struct ptrace_rseq_configuration { u64 rseq_abi_pointer; u32 rseq_abi_size; … }
    let area = u64::from_ne_bytes(conf[0..8].try_into().expect("8 bytes"));
    let size = u32::from_ne_bytes(conf[8..12].try_into().expect("4 bytes")) as u64;
    if area == 0 {
        return Ok(None);
    }
    let first = area / crate::PAGE_SIZE * crate::PAGE_SIZE;
    let end = (area + size.max(32)).div_ceil(crate::PAGE_SIZE) * crate::PAGE_SIZE;
    Ok(Some(crate::PageRange::new(
        first,
        (end - first) / crate::PAGE_SIZE,
    )))
}

/// Writes into a process's memory with process_vm_writev.
pub fn write_memory(pid: i32, addr: u64, data: &[u8]) -> Result<()> {
    let mut done = 0;
    while done < data.len() {
        let remote = [RemoteIoVec {
            base: (addr + done as u64) as usize,
            len: data.len() - done,
        }];
        match process_vm_writev(Pid::from_raw(pid), &[IoSlice::new(&data[done..])], &remote) {
            Ok(0) => {
                return Err(Error::sys(
                    format!(
                        "writing {} bytes at {:#x} in process {pid}",
                        data.len() - done,
                        addr + done as u64
                    ),
                    io::Error::from_raw_os_error(libc::EFAULT),
                ))
            }
            Ok(n) => done += n,
            Err(nix::errno::Errno::ESRCH) => return Err(Error::TargetExited { pid }),
            Err(e) => {
                return Err(Error::sys(
                    format!(
                        "writing {} bytes at {:#x} in process {pid}",
                        data.len() - done,
                        addr + done as u64
                    ),
                    e,
                ))
            }
        }
    }
    Ok(())
}

/// Reads a process's memory with process_vm_readv.
pub fn read_memory(pid: i32, addr: u64, buf: &mut [u8]) -> Result<()> {
    let mut done = 0;
    let total = buf.len();
    while done < total {
        let remote = [RemoteIoVec {
            base: (addr + done as u64) as usize,
            len: total - done,
        }];
        match process_vm_readv(
            Pid::from_raw(pid),
            &mut [IoSliceMut::new(&mut buf[done..])],
            &remote,
        ) {
            Ok(0) => {
                return Err(Error::sys(
                    format!(
                        "reading {} bytes at {:#x} in process {pid}",
                        total - done,
                        addr + done as u64
                    ),
                    io::Error::from_raw_os_error(libc::EFAULT),
                ))
            }
            Ok(n) => done += n,
            Err(nix::errno::Errno::ESRCH) => return Err(Error::TargetExited { pid }),
            Err(e) => {
                return Err(Error::sys(
                    format!(
                        "reading {} bytes at {:#x} in process {pid}",
                        total - done,
                        addr + done as u64
                    ),
                    e,
                ))
            }
        }
    }
    Ok(())
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
