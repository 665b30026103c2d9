//! aarch64 part of syscall injection: registers, our stub, and what the kernel
//! does about restarts and vector state. docs/INJECTION-SAFETY.md ("aarch64")
//! has the whole argument.
//!
//! Why the epilogue is a sigreturn: the x86_64 stub puts every general
//! register back and jumps through memory; arm64 has no memory-indirect
//! branch, so the last jump would need a register, and no register of an
//! arbitrary stopped thread is free (x16/x17 included: compilers allocate
//! them). Here the epilogue blocks every signal, points sp at an
//! `rt_sigframe` prepared in the stub's data block, and calls `rt_sigreturn`:
//! the kernel loads x0…x30, sp, pc, pstate, the FPSIMD registers (fpsr, fpcr,
//! v0…v31) and the signal mask from it in one step (arch/arm64/kernel/
//! signal.c: `restore_sigframe`).
//!
//! The frame (the stub's first 1,136 bytes; sp must be 16-aligned, and the
//! stub's place is 64-aligned): `siginfo` (128 bytes, not read by
//! rt_sigreturn: the stub's header and the all-blocked mask lie there), then
//! `ucontext`: uc_flags and uc_link (not read), uc_stack at 144 (read by
//! `restore_altstack`: we put ss_flags = 3, a mode `do_sigaltstack` refuses
//! with EINVAL before it changes anything, so the thread's alternate signal
//! stack stays as it is; the error is squashed), uc_sigmask at 168,
//! uc_mcontext at 304: fault_address (not read), regs[31] at 312, sp 560,
//! pc 568, pstate 576, then `__reserved` at 592: one `fpsimd_context` (magic
//! 0x46508001, size 528, fpsr, fpcr, vregs[32]) and a null terminator record
//! at 1120. No SVE/ZA/TPIDR2/FPMR/POE/GCS record: restore_sigframe leaves
//! what has no record as it is, and a thread whose state would need one is
//! refused (`check_injectable`).
//!
//! Restart semantics (`do_signal`): arm64 applies the restart *before*
//! `get_signal()`, so a thread frozen in an interrupted call already has pc
//! back on its `svc` and x0 = orig_x0 when we read its registers; the number
//! in x8 is the call's own, and only after the stop, for -ERESTART_RESTARTBLOCK,
//! would the kernel put __NR_restart_syscall there. So the resume point is the
//! registers as read: the call starts over (with its whole timeout, for a
//! relative sleep: the one difference from a thaw). rt_sigreturn resets the
//! thread's restart block, so a thread that is *about to run* restart_syscall
//! (x8 = 128 and pc on an `svc`, left by an earlier thaw) is refused: its
//! restart would fail with EINTR. At syscall-entry and -exit stops the kernel keeps the call number
//! apart (`NT_ARM_SYSTEM_CALL`); `set_regs` sets it to -1 first, so that
//! leaving a stop never takes the registers for an interrupted call to
//! restart (what orig_rax = -1 does on x86_64). x7 is reported as 0/1 at
//! syscall stops and put back by the kernel after them: our code never
//! uses x7, and every register set we give the thread carries its own x7.
//!
//! The stub (assembled with `zig cc -target aarch64-linux-gnu -c`, then
//! `objcopy -O binary`; `.Lstart` is the stub's first byte):
//!
//! ```text
//! .Lstart:
//! .fill 1136,1,0            /* the frame and data block (above); code at 1136 */
//! single:                   /* 1136: x8 nr, x0..x5 args; x19: where to store the
//!                              result, or 0; x20: 0, or the length of the mapping
//!                              an mmap makes, to unmap it again */
//!     svc #0
//!     cbz x19, 1f
//!     str x0, [x19]
//! 1:  cbz x20, epi
//!     cmn x0, #4095         /* -4095..-1: failed */
//!     b.hs epi
//!     mov x1, x20           /* munmap(x0, x20): reached only when predump is gone */
//!     mov x8, #215
//!     svc #0
//!     b epi
//! .balign 16
//! batch:                    /* 1184: x19 table, x20 count, x21 lifeline fd, x22 byte */
//!     cbz x20, 2f
//!     ldp x8, x0, [x19]
//!     ldp x1, x2, [x19, #16]
//!     ldp x3, x4, [x19, #32]
//!     ldr x5, [x19, #48]
//!     svc #0
//!     str x0, [x19, #56]
//!     cmn x0, #4095
//!     b.hs 2f
//!     add x19, x19, #64
//!     sub x20, x20, #1
//!     b batch
//! 2:  mov x8, #206          /* sendto(x21, x22, 1, MSG_NOSIGNAL, 0, 0) */
//!     mov x0, x21
//!     mov x1, x22
//!     mov x2, #1
//!     mov x3, #0x4000
//!     mov x4, #0
//!     mov x5, #0
//!     svc #0
//!     mov x8, #63           /* read(x21, x22, 1): ends by the tracer's interrupt,
//!                              or at EOF when it is gone */
//!     mov x0, x21
//!     mov x1, x22
//!     mov x2, #1
//!     svc #0
//! epi:                      /* everything blockable blocked while sp points at our frame */
//!     mov x8, #135          /* rt_sigprocmask(SIG_SETMASK, all, NULL, 8) */
//!     mov x0, #2
//!     adr x1, .Lstart + 24
//!     mov x2, #0
//!     mov x3, #8
//!     svc #0
//!     adr x9, .Lstart
//!     mov sp, x9
//!     mov x8, #139          /* rt_sigreturn: registers, mask, FPSIMD from the frame */
//!     svc #0
//! ```

use std::io;
use std::sync::OnceLock;

use crate::sys::ptrace::{self, NT_PRFPREG};

/// `user_pt_regs`: x0…x30, sp, pc, pstate.
pub(super) type Regs = libc::user_regs_struct;

/// Where the code starts in the stub (after the frame).
pub(super) const CODE_AT: u64 = 1136;
/// One call, its result stored at x19 (if not 0), the mapping it made
/// unmapped again if x20 is not 0, then the epilogue.
pub(super) const SINGLE_AT: u64 = CODE_AT;
/// The batch loop, then notify and wait, then the epilogue.
pub(super) const BATCH_AT: u64 = CODE_AT + 48;
/// Where the journal of leftovers starts (after the code's 188 bytes).
pub(super) const JOURNAL_AT: u64 = 1344;

/// The frame's fields (offsets from the stub's start = the frame's).
const D_MASK_ALL: usize = 24;
const F_SS_FLAGS: usize = 128 + 16 + 8;
const F_SIGMASK: usize = 128 + 40;
const F_REGS: usize = 128 + 176 + 8;
const F_SP: usize = F_REGS + 31 * 8;
const F_PC: usize = F_SP + 8;
const F_PSTATE: usize = F_PC + 8;
const F_FPSIMD: usize = 128 + 176 + 288;
const F_END: usize = F_FPSIMD + FPSIMD_CONTEXT_BYTES;
const FPSIMD_MAGIC: u32 = 0x4650_8001;
const FPSIMD_CONTEXT_BYTES: usize = 528;
const _: () = assert!(F_SIGMASK == 168 && F_REGS == 312 && F_FPSIMD == 592 && F_END == 1120);
const _: () = assert!(F_END + 16 <= CODE_AT as usize);
const _: () = assert!(CODE_AT as usize + 4 * CODE.len() <= JOURNAL_AT as usize);
/// A mode `do_sigaltstack` refuses (neither 0, SS_ONSTACK nor SS_DISABLE):
/// rt_sigreturn's restore_altstack then changes nothing.
const SS_NO_CHANGE: u32 = 3;

/// The stub's code, from `single:` on (see the assembly above).
const CODE: [u32; 47] = [
    0xd4000001, 0xb4000053, 0xf9000260, 0xb4000454, 0xb13ffc1f, 0x54000402, 0xaa1403e1, 0xd2801ae8,
    0xd4000001, 0x1400001c, 0xd503201f, 0xd503201f, 0xb4000194, 0xa9400268, 0xa9410a61, 0xa9421263,
    0xf9401a65, 0xd4000001, 0xf9001e60, 0xb13ffc1f, 0x54000082, 0x91010273, 0xd1000694, 0x17fffff5,
    0xd28019c8, 0xaa1503e0, 0xaa1603e1, 0xd2800022, 0xd2880003, 0xd2800004, 0xd2800005, 0xd4000001,
    0xd28007e8, 0xaa1503e0, 0xaa1603e1, 0xd2800022, 0xd4000001, 0xd28010e8, 0xd2800040, 0x10ffd861,
    0xd2800002, 0xd2800103, 0xd4000001, 0x10ffd729, 0x9100013f, 0xd2801168, 0xd4000001,
];

/// include/uapi/linux/elf.h
const NT_ARM_SYSTEM_CALL: u32 = 0x404;
const NT_ARM_SVE: u32 = 0x405;
const NT_ARM_SSVE: u32 = 0x40b;
const NT_ARM_POE: u32 = 0x40f;
const NT_ARM_GCS: u32 = 0x410;
/// arch/arm64/include/uapi/asm/ptrace.h
const PSR_MODE32_BIT: u64 = 0x10;
const PSR_BTYPE_MASK: u64 = 0xc00;
const SVE_PT_REGS_SVE: u16 = 1;
const NR_RESTART_SYSCALL: u64 = 128;
/// `svc #0`.
const SVC_0: u32 = 0xd400_0001;

/// Whether injection can work on this machine: the vDSO's padding must hold
/// the stub, its frame and the journal (Debian's arm64 6.12 leaves 3,456
/// bytes; 6.1's one-page vDSO leaves 704, less than the frame alone needs).
pub(super) fn supported() -> Result<(), &'static str> {
    static WHY: OnceLock<Result<(), String>> = OnceLock::new();
    let need = JOURNAL_AT + super::JOURNAL_BYTES;
    let r = WHY.get_or_init(|| match super::place::own_room() {
        Some(room) if room >= need => Ok(()),
        Some(room) => Err(format!(
            "system call injection (splice mode, uffd-wp dirty tracking) needs {need} bytes of \
             the vDSO's padding on aarch64 (its sigreturn frame, code and journal), and this \
             kernel's vDSO leaves {room}"
        )),
        None => Err(
            "system call injection (splice mode, uffd-wp dirty tracking) needs the \
                     vDSO's zero padding, and this process's vDSO has none that predump can find"
                .to_string(),
        ),
    });
    r.as_ref().map(|_| ()).map_err(String::as_str)
}

/// The whole stub for thread `tid` whose registers were `orig` and signal
/// mask `mask`, resuming at `pc` with x0 `x0` (see `resume_point`): the
/// frame, with the thread's FPSIMD registers read now (NT_PRFPREG: our code
/// and our calls leave them as they are), then the code. `head` is the
/// 24-byte header (magic and identity) that marks it as ours.
pub(super) fn stub_image(
    head: &[u8; 24],
    orig: &Regs,
    mask: u64,
    pc: u64,
    x0: u64,
    tid: i32,
) -> io::Result<Vec<u8>> {
    // user_fpsimd_state: vregs[32] (16 bytes each), fpsr, fpcr, 8 reserved.
    let mut fp = [0u8; 528];
    let n = ptrace::getregset(tid, NT_PRFPREG, &mut fp)?;
    if n < 520 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("NT_PRFPREG gave {n} bytes"),
        ));
    }
    let mut img = vec![0u8; CODE_AT as usize];
    img[..24].copy_from_slice(head);
    let mut put = |at: usize, v: u64| img[at..at + 8].copy_from_slice(&v.to_ne_bytes());
    put(D_MASK_ALL, u64::MAX);
    put(F_SIGMASK, mask);
    for (i, v) in orig.regs.iter().enumerate() {
        put(F_REGS + 8 * i, if i == 0 { x0 } else { *v });
    }
    put(F_SP, orig.sp);
    put(F_PC, pc);
    put(F_PSTATE, orig.pstate);
    img[F_SS_FLAGS..F_SS_FLAGS + 4].copy_from_slice(&SS_NO_CHANGE.to_ne_bytes());
    img[F_FPSIMD..F_FPSIMD + 4].copy_from_slice(&FPSIMD_MAGIC.to_ne_bytes());
    img[F_FPSIMD + 4..F_FPSIMD + 8].copy_from_slice(&(FPSIMD_CONTEXT_BYTES as u32).to_ne_bytes());
    img[F_FPSIMD + 8..F_FPSIMD + 16].copy_from_slice(&fp[512..520]); // fpsr, fpcr
    img[F_FPSIMD + 16..F_END].copy_from_slice(&fp[..512]); // v0…v31
                                                           // The null terminator record: the 16 bytes at F_END stay zero.
    for w in CODE {
        img.extend_from_slice(&w.to_le_bytes());
    }
    Ok(img)
}

/// Where and with which x0 the thread goes on if it is let go without a
/// signal to handle: the registers as read, since arm64 applied the restart
/// of an interrupted call before the stop (module comment).
pub(super) fn resume_point(regs: &Regs) -> (u64, u64) {
    (regs.pc, regs.regs[0])
}

pub(super) fn get_regs(tid: i32) -> io::Result<Regs> {
    ptrace::get_regs(tid)
}

/// Sets the general registers, after setting the call number the kernel
/// keeps for the current stop to -1 (`NT_ARM_SYSTEM_CALL`): leaving a
/// syscall-exit stop then never restarts anything, whatever x0 holds (at a
/// freeze or interrupt stop it is -1 already: `do_signal` forgot it). First,
/// so that a predump dying between the two writes leaves a thread that goes
/// on in our stub, never one whose own registers are taken for a restart.
pub(super) fn set_regs(tid: i32, regs: &Regs) -> io::Result<()> {
    ptrace::setregset(tid, NT_ARM_SYSTEM_CALL, &(-1i32).to_ne_bytes())?;
    ptrace::set_regs(tid, regs)
}

pub(super) fn pc(regs: &Regs) -> u64 {
    regs.pc
}

/// A regset's first bytes, or None if this kernel or CPU has no such regset.
fn regset_head<const N: usize>(tid: i32, nt: u32) -> io::Result<Option<[u8; N]>> {
    let mut b = [0u8; N];
    match ptrace::getregset(tid, nt, &mut b) {
        Ok(n) if n >= N => Ok(Some(b)),
        Ok(_) => Ok(None),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENODEV)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Refuses threads we cannot inject into, saying why: AArch32 code; a thread
/// about to run restart_syscall (x8 = its number and pc on an `svc`, or pc
/// unreadable: rt_sigreturn would make it fail with EINTR);
/// live SVE or streaming-mode (SME) registers, which our first system call
/// would discard (the kernel keeps only the FPSIMD part across a call); a
/// guarded control stack, whose rt_sigreturn expects a signal token on it;
/// and a CPU with permission overlays (POE), whose POR_EL0 our frame does
/// not carry.
pub(super) fn check_injectable(tid: i32, regs: &Regs) -> Result<(), String> {
    if regs.pstate & PSR_MODE32_BIT != 0 {
        return Err("the thread runs AArch32 code; only AArch64 threads can be injected".into());
    }
    // The kernel's setup for restart_syscall: x8 = its number, pc on the `svc`.
    // (x8 alone is any register's value in code that is not making a call.)
    if regs.regs[8] == NR_RESTART_SYSCALL
        && !ptrace::peek_bytes(tid, regs.pc, 4).is_ok_and(|b| b[..] != SVC_0.to_le_bytes())
    {
        return Err(
            "the thread is about to restart an interrupted call (restart_syscall), \
                    which a predump dying meanwhile would make fail with EINTR"
                .into(),
        );
    }
    let os = |what: &str, e: io::Error| format!("reading its {what} registers: {e}");
    // user_sve_header: size, max_size (u32), vl, max_vl, flags (u16)…
    let sve_flags = |h: [u8; 16]| u16::from_ne_bytes([h[12], h[13]]);
    if let Some(h) = regset_head::<16>(tid, NT_ARM_SVE).map_err(|e| os("SVE", e))? {
        if sve_flags(h) & SVE_PT_REGS_SVE != 0 {
            return Err(
                "the thread has live SVE register state, which an injected system \
                        call would discard (not saved by predump)"
                    .into(),
            );
        }
    }
    if let Some(h) = regset_head::<16>(tid, NT_ARM_SSVE).map_err(|e| os("SSVE", e))? {
        if sve_flags(h) & SVE_PT_REGS_SVE != 0 {
            return Err(
                "the thread is in SME streaming mode, which an injected system call \
                        would end (not saved by predump)"
                    .into(),
            );
        }
    }
    // user_gcs: features_enabled (bit 0: PR_SHADOW_STACK_ENABLE), …
    if let Some(g) = regset_head::<8>(tid, NT_ARM_GCS).map_err(|e| os("GCS", e))? {
        if u64::from_ne_bytes(g) & 1 != 0 {
            return Err("the thread uses a guarded control stack, which predump's \
                        sigreturn frame does not handle"
                .into());
        }
    }
    if regset_head::<8>(tid, NT_ARM_POE)
        .map_err(|e| os("POE", e))?
        .is_some()
    {
        return Err(
            "the CPU has permission overlays (POE), whose register predump's \
                    sigreturn frame does not carry"
                .into(),
        );
    }
    Ok(())
}

/// One system call at `stub`: number in x8, arguments in x0…x5. `done` (0
/// for none) is where the stub stores the result, even if predump is gone by
/// then; `undo` (0 for none) is the length of the mapping an mmap makes, which
/// the stub unmaps again if the thread gets past the call (only when predump
/// is gone). PSTATE.BTYPE is cleared: a thread stopped just after an indirect
/// branch would otherwise take a branch-target exception on our first
/// instruction (the frame keeps its own pstate for the epilogue).
pub(super) fn set_single(
    regs: &mut Regs,
    stub: u64,
    nr: i64,
    args: &[u64; 6],
    done: u64,
    undo: u64,
) {
    regs.pc = stub + SINGLE_AT;
    regs.pstate &= !PSR_BTYPE_MASK;
    regs.regs[8] = nr as u64;
    regs.regs[..6].copy_from_slice(args);
    regs.regs[19] = done;
    regs.regs[20] = undo;
}

/// The batch loop over `count` calls of the table at `table`, then a byte sent
/// on the lifeline `fd` and a read of it into `byte` (target addresses).
pub(super) fn set_batch(regs: &mut Regs, stub: u64, table: u64, count: u64, fd: i32, byte: u64) {
    regs.pc = stub + BATCH_AT;
    regs.pstate &= !PSR_BTYPE_MASK;
    regs.regs[19] = table;
    regs.regs[20] = count;
    regs.regs[21] = fd as u32 as u64;
    regs.regs[22] = byte;
}

/// Leaving a stop never restarts a call here: `set_regs` sees to it.
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
