//! ptrace(2) and the waitpid(2) that goes with it, one wrapper per request.
//!
//! Every request must come from the thread that seized the tracee; these
//! wrappers do not check that (`freeze::Frozen` is `!Send` for this reason).
//! Errors are the kernel's errno as `io::Error`: ESRCH on a tracee we hold
//! means it died (SIGKILL is the only way out of a ptrace stop).

use std::io;

use nix::unistd::Pid;

/// `status >> 16` of a PTRACE_INTERRUPT stop or of a seized thread's group stop
/// (include/uapi/linux/ptrace.h).
pub const PTRACE_EVENT_STOP: i32 = 128;

/// include/uapi/linux/elf.h: the general registers, and the FP registers.
pub const NT_PRSTATUS: u32 = 1;
pub const NT_PRFPREG: u32 = 2;

/// ptrace requests (include/uapi/linux/ptrace.h), as u32 on every libc flavour.
const PTRACE_CONT: u32 = 7;
const PTRACE_DETACH: u32 = 17;
const PTRACE_SYSCALL: u32 = 24;
const PTRACE_SETOPTIONS: u32 = 0x4200;
const PTRACE_GETREGSET: u32 = 0x4204;
const PTRACE_SETREGSET: u32 = 0x4205;
const PTRACE_INTERRUPT: u32 = 0x4207;
const PTRACE_GETSIGMASK: u32 = 0x420a;
const PTRACE_SETSIGMASK: u32 = 0x420b;
/// Linux 5.13.
const PTRACE_GET_RSEQ_CONFIGURATION: u32 = 0x420f;

/// A raw ptrace request with integer address and data.
fn request(req: u32, tid: i32, addr: u64, data: u64) -> io::Result<i64> {
    // SAFETY: every caller in this module passes a request whose addr/data are
    // either integers or pointers to buffers that are valid (and large enough)
    // for the request during the call. ptrace reports errors through -1 and
    // errno, and no caller uses a PEEK request here (whose result may
    // legitimately be -1: `peek_bytes` goes through nix, which tells them apart).
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

/// PTRACE_SEIZE without options: the thread is traced but keeps running.
pub fn seize(tid: i32) -> io::Result<()> {
    nix::sys::ptrace::seize(Pid::from_raw(tid), nix::sys::ptrace::Options::empty())?;
    Ok(())
}

/// PTRACE_INTERRUPT: a seized thread enters a PTRACE_EVENT_STOP.
pub fn interrupt(tid: i32) -> io::Result<()> {
    request(PTRACE_INTERRUPT, tid, 0, 0).map(drop)
}

/// PTRACE_CONT, delivering `signal` (0: none; a signal-delivery stop's signal
/// is then discarded).
pub fn cont(tid: i32, signal: i32) -> io::Result<()> {
    request(PTRACE_CONT, tid, 0, signal as u64).map(drop)
}

/// PTRACE_SYSCALL: as `cont`, and the thread stops at its next system call's
/// entry and at its exit (syscall stops).
pub fn syscall(tid: i32, signal: i32) -> io::Result<()> {
    request(PTRACE_SYSCALL, tid, 0, signal as u64).map(drop)
}

/// `PTRACE_O_TRACESYSGOOD`: syscall stops report `SIGTRAP | 0x80`.
pub const PTRACE_O_TRACESYSGOOD: u64 = 1;

/// PTRACE_SETOPTIONS (at a stop).
pub fn set_options(tid: i32, options: u64) -> io::Result<()> {
    request(PTRACE_SETOPTIONS, tid, 0, options).map(drop)
}

/// PTRACE_DETACH, delivering `signal` (0: none).
pub fn detach(tid: i32, signal: i32) -> io::Result<()> {
    request(PTRACE_DETACH, tid, 0, signal as u64).map(drop)
}

/// PTRACE_GETREGSET of regset `nt` into `buf`; returns how many bytes the
/// kernel filled.
pub fn getregset(tid: i32, nt: u32, buf: &mut [u8]) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    request(
        PTRACE_GETREGSET,
        tid,
        nt as u64,
        &mut iov as *mut libc::iovec as u64,
    )?;
    Ok(iov.iov_len)
}

/// PTRACE_SETREGSET of regset `nt` from `buf` (the kernel only reads it).
pub fn setregset(tid: i32, nt: u32, buf: &[u8]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    request(
        PTRACE_SETREGSET,
        tid,
        nt as u64,
        &mut iov as *mut libc::iovec as u64,
    )
    .map(drop)
}

/// The general registers (NT_PRSTATUS): `user_regs_struct` on x86_64,
/// `user_pt_regs` (x0…x30, sp, pc, pstate) on aarch64.
pub fn get_regs(tid: i32) -> io::Result<libc::user_regs_struct> {
    // SAFETY: user_regs_struct is plain integers; all-zero is a valid value.
    let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    // SAFETY: the slice covers exactly `regs`, which outlives the call; any bytes
    // the kernel writes form a valid user_regs_struct (integers only).
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(
            &mut regs as *mut libc::user_regs_struct as *mut u8,
            std::mem::size_of::<libc::user_regs_struct>(),
        )
    };
    let n = getregset(tid, NT_PRSTATUS, bytes)?;
    if n != std::mem::size_of::<libc::user_regs_struct>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("NT_PRSTATUS gave {n} bytes"),
        ));
    }
    Ok(regs)
}

/// Sets the general registers (NT_PRSTATUS).
pub fn set_regs(tid: i32, regs: &libc::user_regs_struct) -> io::Result<()> {
    // SAFETY: the slice covers exactly `*regs`, borrowed for the call.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            regs as *const libc::user_regs_struct as *const u8,
            std::mem::size_of::<libc::user_regs_struct>(),
        )
    };
    setregset(tid, NT_PRSTATUS, bytes)
}

/// The thread's blocked-signal mask (the kernel's sigset_t is 64 bits on
/// x86_64 and aarch64).
pub fn get_sigmask(tid: i32) -> io::Result<u64> {
    let mut mask = 0u64;
    request(PTRACE_GETSIGMASK, tid, 8, &mut mask as *mut u64 as u64)?;
    Ok(mask)
}

pub fn set_sigmask(tid: i32, mask: u64) -> io::Result<()> {
    request(PTRACE_SETSIGMASK, tid, 8, &mask as *const u64 as u64).map(drop)
}

/// PTRACE_GETSIGINFO: the siginfo of the current stop.
pub fn get_siginfo(tid: i32) -> io::Result<libc::siginfo_t> {
    Ok(nix::sys::ptrace::getsiginfo(Pid::from_raw(tid))?)
}

/// The siginfo of the current stop; None when the stop has none (EINVAL: a
/// group stop).
pub fn stop_siginfo(tid: i32) -> io::Result<Option<libc::siginfo_t>> {
    match nix::sys::ptrace::getsiginfo(Pid::from_raw(tid)) {
        Ok(si) => Ok(Some(si)),
        Err(nix::errno::Errno::EINVAL) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// PTRACE_SETSIGINFO.
pub fn set_siginfo(tid: i32, si: &libc::siginfo_t) -> io::Result<()> {
    nix::sys::ptrace::setsiginfo(Pid::from_raw(tid), si)?;
    Ok(())
}

/// The bytes of a siginfo, for comparisons.
pub fn siginfo_bytes(si: &libc::siginfo_t) -> Vec<u8> {
    // SAFETY: siginfo_t is 128 plain bytes as the kernel copied them out.
    unsafe {
        std::slice::from_raw_parts(
            si as *const libc::siginfo_t as *const u8,
            std::mem::size_of::<libc::siginfo_t>(),
        )
    }
    .to_vec()
}

/// Reads `len` bytes of the tracee's memory with PTRACE_PEEKDATA, by aligned
/// words (an aligned word never straddles two pages).
pub fn peek_bytes(tid: i32, addr: u64, len: usize) -> io::Result<Vec<u8>> {
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

/// Writes `data` into the tracee's memory with PTRACE_POKEDATA (read-modify-write
/// of aligned words). ptrace writes with FOLL_FORCE: read-only text gets a
/// private copy-on-write page, as for a debugger's breakpoint.
pub fn poke_bytes(tid: i32, addr: u64, data: &[u8]) -> io::Result<()> {
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

/// A thread's registered rseq area (`struct ptrace_rseq_configuration`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RseqConfig {
    /// Address of its `struct rseq`; 0 when it registered none.
    pub area: u64,
    pub size: u32,
}

/// PTRACE_GET_RSEQ_CONFIGURATION; None on kernels without it (before 5.13, or
/// without CONFIG_RSEQ: EIO or EINVAL).
pub fn rseq_configuration(tid: i32) -> io::Result<Option<RseqConfig>> {
    let mut conf = [0u8; 24];
    match request(
        PTRACE_GET_RSEQ_CONFIGURATION,
        tid,
        conf.len() as u64,
        conf.as_mut_ptr() as u64,
    ) {
        Ok(_) => {}
        Err(e) if matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL)) => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    }
    // struct ptrace_rseq_configuration { u64 rseq_abi_pointer; u32 rseq_abi_size; … }
    Ok(Some(RseqConfig {
        area: u64::from_ne_bytes(conf[0..8].try_into().expect("8 bytes")),
        size: u32::from_ne_bytes(conf[8..12].try_into().expect("4 bytes")),
    }))
}

/// waitpid(tid, flags | __WALL): Some(status) when the thread changed state,
/// None when WNOHANG found nothing. EINTR is the caller's to retry (some retry
/// at once, some look at a deadline first).
pub fn waitpid(tid: i32, flags: i32) -> io::Result<Option<i32>> {
    let mut status = 0;
    // SAFETY: waits for one tid; `status` is a valid out pointer.
    let r = unsafe { libc::waitpid(tid, &mut status, flags | libc::__WALL) };
    match r {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        _ => Ok(Some(status)),
    }
}

/// How a waited-for thread changed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// A signal-delivery stop for this signal.
    Signal(i32),
    /// A PTRACE_EVENT stop: `PTRACE_EVENT_STOP` for an interrupt or group stop.
    Event(i32),
    /// The thread exited or was killed.
    Gone,
    /// Resumed by SIGCONT (not a stop).
    Continued,
}

/// Decodes a wait status.
pub fn status(raw: i32) -> Status {
    if libc::WIFSTOPPED(raw) {
        if raw >> 16 != 0 {
            Status::Event(raw >> 16)
        } else {
            Status::Signal(libc::WSTOPSIG(raw))
        }
    } else if libc::WIFEXITED(raw) || libc::WIFSIGNALED(raw) {
        Status::Gone
    } else {
        Status::Continued
    }
}
