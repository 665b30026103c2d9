//! The thread injected into: its state as far as injection could change it
//! (registers, FP state, signal mask, siginfo: compared before and after), and
//! its rseq area (cleared while our code runs, rewritten by the kernel after
//! every injected call).

use std::io;

use super::memory::read_memory;
use super::{arch, check_held, os_error};
use crate::freeze::Frozen;
use crate::sys::ptrace::{
    get_sigmask, getregset, rseq_configuration, siginfo_bytes, stop_siginfo, NT_PRFPREG,
};
use crate::{Error, Result};

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
    let extra = arch::extra_bytes(tid).map_err(|e| err("reading the extra registers", e))?;
    let sigmask = get_sigmask(tid).map_err(|e| err("PTRACE_GETSIGMASK", e))?;
    let siginfo = stop_siginfo(tid).map_err(|e| err("PTRACE_GETSIGINFO", e))?;
    Ok(ThreadState {
        pc: arch::pc(&regs),
        regs: arch::words(&regs),
        fpregs: fp,
        extra,
        sigmask,
        siginfo: siginfo.as_ref().map(siginfo_bytes),
    })
}

/// The thread's rseq critical-section pointer: (its address, its value, the
/// abort handler if the thread's pc lies inside that critical section). The
/// pointer is cleared while our code runs (the kernel's rseq fixup would
/// otherwise move our pc to an abort handler, or clear it itself) and put back at
/// restore; the epilogue resumes at the abort handler where a thaw would.
pub(super) fn find_rseq_cs(pid: i32, tid: i32) -> Result<Option<(u64, u64, Option<u64>)>> {
    // Before Linux 5.13 (or without CONFIG_RSEQ): no way to know; go on.
    let area = match rseq_configuration(tid) {
        Ok(Some(conf)) => conf.area,
        Ok(None) => return Ok(None),
        Err(e) => return Err(os_error(pid, tid, "PTRACE_GET_RSEQ_CONFIGURATION", e)),
    };
    if area == 0 {
        return Ok(None);
    }
    // struct rseq { u32 cpu_id_start; u32 cpu_id; u64 rseq_cs; … }
    let field = area + 8;
    let mut b = [0u8; 8];
    read_memory(pid, field, &mut b)?;
    let value = u64::from_ne_bytes(b);
    if value == 0 {
        return Ok(None);
    }
    // struct rseq_cs { u32 version; u32 flags; u64 start_ip; u64
    // post_commit_offset; u64 abort_ip; }
    let mut cs = [0u8; 32];
    let abort = match read_memory(pid, value, &mut cs) {
        Ok(()) => {
            let word = |at: usize| u64::from_ne_bytes(cs[at..at + 8].try_into().unwrap());
            let (start, len, abort) = (word(8), word(16), word(24));
            let pc = arch::pc(
                &arch::get_regs(tid).map_err(|e| os_error(pid, tid, "reading the registers", e))?,
            );
            (pc >= start && pc - start < len).then_some(abort)
        }
        Err(_) => None,
    };
    Ok(Some((field, value, abort)))
}

/// The pages holding thread `tid`'s rseq area (the thread must be
/// ptrace-stopped by us), or None if it registered none. The kernel rewrites its
/// cpu and concurrency ids whenever the thread returns to user mode, as it does
/// after every injected call: a dump that must equal the memory afterwards
/// copies these pages after its last injection.
pub fn rseq_pages(tid: i32) -> Result<Option<crate::PageRange>> {
    let conf = rseq_configuration(tid)
        .map_err(|e| Error::sys(format!("PTRACE_GET_RSEQ_CONFIGURATION of thread {tid}"), e))?;
    let Some(conf) = conf else { return Ok(None) };
    let (area, size) = (conf.area, conf.size as u64);
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
