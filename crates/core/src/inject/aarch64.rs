//! aarch64 part of syscall injection: NOT IMPLEMENTED for the SIGKILL-safe
//! design (docs/INJECTION-SAFETY.md, "aarch64"). `SUPPORTED` refuses every
//! injection, so splice mode falls back to read mode and dirty tracking that
//! needs an injected userfaultfd is not started (`--track-mem auto` goes on
//! without it). What stays here is what `thread_state` reads.
//!
//! Why the x86_64 stub does not carry over as it is: its epilogue puts every
//! general register back from memory and jumps with a memory-indirect `jmp`;
//! arm64 has no such branch, so the last jump needs a register, and no register
//! of an arbitrary stopped thread is free. The aarch64 epilogue must instead be
//! an `rt_sigreturn` from a frame holding x0…x30, sp, pc, pstate, the FPSIMD
//! record (NT_PRFPREG) and the SVE/ZA records of a thread with live SVE/SME
//! state, and arm64 applies its syscall restart before the stop (the
//! `-ERESTART_RESTARTBLOCK` case cannot be seen from user space).

use std::io;

use crate::sys::ptrace;

/// `user_pt_regs`: x0…x30, sp, pc, pstate.
pub(super) type Regs = libc::user_regs_struct;

pub(super) const SUPPORTED: Result<(), &str> = Err(
    "system call injection (splice mode, uffd-wp dirty tracking) is not implemented on aarch64 yet",
);

pub(super) const CODE_AT: u64 = 192;
pub(super) const SINGLE_AT: u64 = CODE_AT;
pub(super) const BATCH_AT: u64 = CODE_AT + 16;

/// include/uapi/linux/elf.h
const NT_ARM_SYSTEM_CALL: u32 = 0x404;
const NT_ARM_SVE: u32 = 0x405;
const PSR_MODE32_BIT: u64 = 0x10;

pub(super) fn stub_image(head: &[u8; 24], _orig: &Regs, _mask: u64, _pc: u64, _x0: u64) -> Vec<u8> {
    head.to_vec()
}

pub(super) fn resume_point(regs: &Regs) -> (u64, u64) {
    (regs.pc, regs.regs[0])
}

pub(super) fn get_regs(tid: i32) -> io::Result<Regs> {
    ptrace::get_regs(tid)
}

pub(super) fn set_regs(tid: i32, regs: &Regs) -> io::Result<()> {
    ptrace::set_regs(tid, regs)
}

pub(super) fn pc(regs: &Regs) -> u64 {
    regs.pc
}

pub(super) fn check_injectable(regs: &Regs) -> Result<(), String> {
    if regs.pstate & PSR_MODE32_BIT != 0 {
        return Err("the thread runs AArch32 code; only AArch64 threads can be injected".into());
    }
    Ok(())
}

pub(super) fn set_single(
    regs: &mut Regs,
    stub: u64,
    nr: i64,
    args: &[u64; 6],
    _done: u64,
    _undo: u64,
) {
    regs.pc = stub + SINGLE_AT;
    regs.regs[8] = nr as u64;
    regs.regs[..6].copy_from_slice(args);
}

pub(super) fn set_batch(regs: &mut Regs, stub: u64, table: u64, count: u64, fd: i32, byte: u64) {
    regs.pc = stub + BATCH_AT;
    regs.regs[19] = table;
    regs.regs[20] = count;
    regs.regs[21] = fd as u32 as u64;
    regs.regs[22] = byte;
}

pub(super) fn no_restart(_regs: &mut Regs) {}

pub(super) fn result(regs: &Regs) -> i64 {
    regs.regs[0] as i64
}

pub(super) fn words(regs: &Regs) -> Vec<u64> {
    let mut w = regs.regs.to_vec();
    w.extend_from_slice(&[regs.sp, regs.pc, regs.pstate]);
    w
}

/// NT_ARM_SYSTEM_CALL and the NT_ARM_SVE header, for comparisons.
pub(super) fn extra_bytes(tid: i32) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    let mut no = [0u8; 4];
    match ptrace::getregset(tid, NT_ARM_SYSTEM_CALL, &mut no) {
        Ok(4) => v.extend_from_slice(&no),
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
        Err(e) => return Err(e),
    }
    let mut header = [0u8; 16];
    match ptrace::getregset(tid, NT_ARM_SVE, &mut header) {
        Ok(_) => v.extend_from_slice(&header),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENODEV)) => {}
        Err(e) => return Err(e),
    }
    Ok(v)
}
