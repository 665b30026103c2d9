//! aarch64 part of syscall injection. COMPILE-CHECKED ONLY: no arm64 machine was
//! available; nothing here has run. The constants and kernel behaviours below are
//! from the kernel sources (arch/arm64/kernel/{signal,ptrace,entry-common}.c,
//! debug-monitors.c, Documentation/arch/arm64/sve.rst).
//!
//! Registers: PTRACE_GETREGSET/SETREGSET with NT_PRSTATUS (`user_pt_regs`: x0…x30,
//! sp, pc, pstate). A system call is `svc #0` with the number in x8, arguments in
//! x0…x5, the result in x0. The kernel's own syscall number (`syscallno`, which is
//! not in user_pt_regs) is the NT_ARM_SYSTEM_CALL regset.
//!
//! Restart semantics differ from x86_64 and limit what injection can preserve
//! (`do_signal()` in arch/arm64/kernel/signal.c): the kernel applies the restart
//! *before* `get_signal()` (so a debugger sees pc already moved back to the `svc`,
//! x0 = the original first argument, syscallno = -1) and keeps `retval`,
//! `restart_addr` and `continue_addr` in local variables of that `do_signal()`
//! call. After the stop it consults only those locals and the current pc:
//! - no handler to run, pc == restart_addr, retval == -ERESTART_RESTARTBLOCK →
//!   x8 = __NR_restart_syscall;
//! - a handler to run, pc == restart_addr, and the call may not restart → x0 =
//!   -EINTR, pc = continue_addr.
//!
//! Consequences for injection (all UNTESTED):
//! - The first resume leaves the *original* stop, so if our pc equalled
//!   restart_addr the kernel would overwrite our x8 with restart_syscall and run
//!   the interrupted call instead of ours. `injection_point()` therefore never
//!   returns the stopped pc itself.
//! - Our last stop is the SIGTRAP of `brk`, taken in a `do_signal()` whose entry
//!   was not a system call. Restoring the saved registers there makes the thread
//!   re-execute its `svc` with the original x8/x0…x5: exact for
//!   -ERESTARTSYS/-ERESTARTNOHAND/-ERESTARTNOINTR without a handler; but a call
//!   interrupted with -ERESTART_RESTARTBLOCK (nanosleep, clock_nanosleep relative,
//!   futex wait with a timeout, poll with a timeout) starts over with its full
//!   timeout instead of the remaining time, and a signal handler run at thaw no
//!   longer turns an interrupted call into -EINTR (the call is restarted instead).
//!   The original retval is not visible to a tracer on arm64, so this cannot be
//!   repaired from user space; x86_64 has no such limitation.
//! - A system call discards the SVE state beyond the FPSIMD registers (the Z
//!   registers' upper bits, P, FFR: sve.rst "System call behaviour"), so a thread
//!   stopped in user code with live SVE state gets it saved (NT_ARM_SVE) and put
//!   back. SME (streaming mode, ZA) is not handled: a thread in streaming mode
//!   leaves it at a system call.

use std::io;

use super::{getregset, setregset, NT_PRSTATUS};

/// `user_pt_regs`: x0…x30, sp, pc, pstate.
pub(super) type Regs = libc::user_regs_struct;

/// `svc #0` (0xd4000001) then `brk #0` (0xd4200000), little-endian.
pub(super) const CODE: [u8; 8] = [0x01, 0x00, 0x00, 0xd4, 0x00, 0x00, 0x20, 0xd4];
/// Offset of the `brk` inside `CODE`.
pub(super) const TRAP_OFFSET: u64 = 4;
/// `brk` is reported with pc *at* the brk instruction (the exception return
/// address is the faulting instruction).
pub(super) const TRAP_STOP_OFFSET: u64 = 4;
/// si_code of the SIGTRAP a user `brk` raises (send_user_sigtrap(TRAP_BRKPT)).
pub(super) const TRAP_SI_CODE: i32 = libc::TRAP_BRKPT;

/// The batch loop: runs the calls of a table (x19: its address, x20: the number
/// of calls; per call 8 words: number, six arguments, result) until the count
/// runs out or a call fails, then traps. Changes x0…x5, x8, x19, x20 and the
/// flags: all put back at the re-stop. Assembled with llvm-mc (UNTESTED, like the
/// rest of this file):
///
/// ```text
///  0: cbz x20, 0x30          ; 94 01 00 b4
///  4: ldp x8, x0, [x19]      ; 68 02 40 a9
///  8: ldp x1, x2, [x19, #16] ; 61 0a 41 a9
///  c: ldp x3, x4, [x19, #32] ; 63 12 42 a9
/// 10: ldr x5, [x19, #48]     ; 65 1a 40 f9
/// 14: svc #0                 ; 01 00 00 d4
/// 18: str x0, [x19, #56]     ; 60 1e 00 f9
/// 1c: cmn x0, #4095          ; 1f fc 3f b1
/// 20: b.hs 0x30              ; 82 00 00 54  (unsigned: x0 in -4095..-1, an error)
/// 24: add x19, x19, #64      ; 73 02 01 91
/// 28: sub x20, x20, #1       ; 94 06 00 d1
/// 2c: b 0x0                  ; f5 ff ff 17
/// 30: brk #0                 ; 00 00 20 d4
/// ```
pub(super) const BATCH_CODE: [u8; 0x34] = [
    0x94, 0x01, 0x00, 0xb4, 0x68, 0x02, 0x40, 0xa9, 0x61, 0x0a, 0x41, 0xa9, 0x63, 0x12, 0x42, 0xa9,
    0x65, 0x1a, 0x40, 0xf9, 0x01, 0x00, 0x00, 0xd4, 0x60, 0x1e, 0x00, 0xf9, 0x1f, 0xfc, 0x3f, 0xb1,
    0x82, 0x00, 0x00, 0x54, 0x73, 0x02, 0x01, 0x91, 0x94, 0x06, 0x00, 0xd1, 0xf5, 0xff, 0xff, 0x17,
    0x00, 0x00, 0x20, 0xd4,
];
/// Offset of the batch's `brk`; reported with pc at it.
pub(super) const BATCH_TRAP_OFFSET: u64 = 0x30;
pub(super) const BATCH_TRAP_STOP_OFFSET: u64 = 0x30;

/// include/uapi/linux/elf.h
const NT_ARM_SYSTEM_CALL: u32 = 0x404;
const NT_ARM_SVE: u32 = 0x405;
/// `user_sve_header.flags`: the payload holds live SVE registers (not FPSIMD).
const SVE_PT_REGS_SVE: u16 = 1;
/// `PSR_MODE32_BIT`: the thread runs AArch32 code.
const PSR_MODE32_BIT: u64 = 0x10;

pub(super) fn get_regs(tid: i32) -> io::Result<Regs> {
    // SAFETY: user_pt_regs is plain integers; all-zero is a valid value.
    let mut regs: Regs = unsafe { std::mem::zeroed() };
    // SAFETY: the slice covers exactly `regs`, which outlives the call; any bytes
    // the kernel writes form a valid user_pt_regs (integers only).
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(
            &mut regs as *mut Regs as *mut u8,
            std::mem::size_of::<Regs>(),
        )
    };
    let n = getregset(tid, NT_PRSTATUS, bytes)?;
    if n != std::mem::size_of::<Regs>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("NT_PRSTATUS gave {n} bytes"),
        ));
    }
    Ok(regs)
}

pub(super) fn set_regs(tid: i32, regs: &Regs) -> io::Result<()> {
    // SAFETY: the slice covers exactly `*regs`, borrowed for the call.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            regs as *const Regs as *const u8,
            std::mem::size_of::<Regs>(),
        )
    };
    setregset(tid, NT_PRSTATUS, bytes)
}

pub(super) fn pc(regs: &Regs) -> u64 {
    regs.pc
}

pub(super) fn set_pc(regs: &mut Regs, pc: u64) {
    regs.pc = pc;
}

/// Where to write `CODE`: in the page of pc (executable, since the thread runs
/// there), but never at pc itself (see the module comment: pc may be the
/// restart address the kernel compares against on the first resume).
pub(super) fn injection_point(regs: &Regs) -> u64 {
    let pc = regs.pc;
    if pc % 4096 + 4 + CODE.len() as u64 <= 4096 {
        pc + 4
    } else {
        pc - CODE.len() as u64
    }
}

pub(super) fn check_injectable(regs: &Regs) -> Result<(), String> {
    if regs.pstate & PSR_MODE32_BIT != 0 {
        return Err("the thread runs AArch32 code; only AArch64 threads can be injected".into());
    }
    Ok(())
}

/// Sets up one system call at `point`: number in x8, arguments in x0…x5. No
/// "orig" register needs clearing: arm64 decides restarts from do_signal()'s
/// locals and pc (see the module comment), and `injection_point()` keeps pc away
/// from the restart address.
pub(super) fn set_syscall(regs: &mut Regs, point: u64, nr: i64, args: &[u64; 6]) {
    regs.pc = point;
    regs.regs[8] = nr as u64;
    regs.regs[..6].copy_from_slice(args);
}

/// Sets up the batch loop at `at` over `count` calls of the table at `table`
/// (see `BATCH_CODE`).
pub(super) fn set_batch(regs: &mut Regs, at: u64, table: u64, count: u64) {
    regs.pc = at;
    regs.regs[19] = table;
    regs.regs[20] = count;
}

/// After we interrupted one of our own calls, do_signal() has moved pc back to
/// our `svc`; jumping to the `brk` (pc != restart_addr) is enough to prevent the
/// restart, so no register needs changing here.
pub(super) fn no_restart(_regs: &mut Regs) {}

pub(super) fn result(regs: &Regs) -> i64 {
    regs.regs[0] as i64
}

pub(super) fn words(regs: &Regs) -> Vec<u64> {
    let mut w = regs.regs.to_vec();
    w.extend_from_slice(&[regs.sp, regs.pc, regs.pstate]);
    w
}

/// What an injected call could change beyond user_pt_regs.
#[derive(Debug, Clone)]
pub(super) struct Extra {
    /// NT_ARM_SYSTEM_CALL (the kernel's syscallno): -1 at any stop predump takes,
    /// saved and put back so the thread is left exactly as found.
    syscallno: Option<i32>,
    /// The NT_ARM_SVE regset, when the thread has live SVE state.
    sve: Option<Vec<u8>>,
}

pub(super) fn save_extra(tid: i32) -> io::Result<Extra> {
    let mut no = [0u8; 4];
    let syscallno = match getregset(tid, NT_ARM_SYSTEM_CALL, &mut no) {
        Ok(4) => Some(i32::from_ne_bytes(no)),
        Ok(_) => None,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => None,
        Err(e) => return Err(e),
    };
    Ok(Extra {
        syscallno,
        sve: save_sve(tid)?,
    })
}

/// Reads NT_ARM_SVE if the thread's SVE registers are live: first the 16-byte
/// `user_sve_header` (its `size` is the whole regset's size), then all of it.
fn save_sve(tid: i32) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; 16];
    match getregset(tid, NT_ARM_SVE, &mut header) {
        Ok(n) if n >= 16 => {}
        Ok(_) => return Ok(None),
        // No SVE on this CPU or kernel.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENODEV)) => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    }
    let size = u32::from_ne_bytes(header[0..4].try_into().unwrap()) as usize;
    let flags = u16::from_ne_bytes(header[12..14].try_into().unwrap());
    if flags & SVE_PT_REGS_SVE == 0 || size < 16 {
        // FPSIMD-only payload: system calls preserve the FPSIMD registers.
        return Ok(None);
    }
    let mut all = vec![0u8; size];
    let n = getregset(tid, NT_ARM_SVE, &mut all)?;
    all.truncate(n);
    Ok(Some(all))
}

/// Makes the saved NT_ARM_SYSTEM_CALL -1 for the injection if it was not
/// already (it always is at the stops predump takes; this is only belt and braces).
pub(super) fn prepare(tid: i32, extra: &Extra) -> io::Result<()> {
    match extra.syscallno {
        Some(n) if n != -1 => setregset(tid, NT_ARM_SYSTEM_CALL, &(-1i32).to_ne_bytes()),
        _ => Ok(()),
    }
}

pub(super) fn restore_extra(tid: i32, extra: &Extra) -> io::Result<()> {
    if let Some(sve) = &extra.sve {
        setregset(tid, NT_ARM_SVE, sve)?;
    }
    if let Some(n) = extra.syscallno {
        setregset(tid, NT_ARM_SYSTEM_CALL, &n.to_ne_bytes())?;
    }
    Ok(())
}

pub(super) fn extra_bytes(extra: &Extra) -> Vec<u8> {
    let mut v = Vec::new();
    if let Some(n) = extra.syscallno {
        v.extend_from_slice(&n.to_ne_bytes());
    }
    if let Some(sve) = &extra.sve {
        v.extend_from_slice(sve);
    }
    v
}
