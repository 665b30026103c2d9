//! x86_64 part of syscall injection: registers, the injected instructions, and how
//! the kernel decides whether to restart an interrupted system call.
//!
//! Restart semantics (arch/x86/kernel/signal.c, `arch_do_signal_or_restart`): the
//! kernel decides *after* `get_signal()` returns, from the registers as they are
//! then: `orig_rax >= 0` and `rax` = -ERESTARTSYS/-ERESTARTNOHAND/-ERESTARTNOINTR
//! → `rax = orig_rax, rip -= 2`; -ERESTART_RESTARTBLOCK → `rax =
//! __NR_restart_syscall, rip -= 2`; with a handler to run, `handle_signal()` turns
//! them into -EINTR as the handler's SA_RESTART says. A ptrace stop happens inside
//! `get_signal()`, so a tracer sees `orig_rax` = the interrupted call and `rax` =
//! -ERESTART…, and whatever registers it leaves there at the *last* stop before the
//! thread runs on are what the decision uses. Hence:
//! - every injected call runs with `orig_rax = -1`, so the resume from the original
//!   stop does not restart the interrupted call on top of ours;
//! - our last stop (the `int3` SIGTRAP) is also inside `get_signal()`, and restoring
//!   all saved registers there lets the kernel take exactly the decision it would
//!   have taken at the original stop, at thaw time, with the signals pending then.

use std::io;

use super::{getregset, setregset, NT_PRSTATUS};

/// The general registers as PTRACE_GETREGSET(NT_PRSTATUS) gives them: rax…r15,
/// orig_rax, rip, cs, eflags, rsp, ss, fs_base, gs_base, ds, es, fs, gs.
pub(super) type Regs = libc::user_regs_struct;

/// `syscall; int3`.
pub(super) const CODE: [u8; 3] = [0x0f, 0x05, 0xcc];
/// Offset of the trap instruction inside `CODE`.
pub(super) const TRAP_OFFSET: u64 = 2;
/// `int3` is a trap: the stop reports rip *after* it.
pub(super) const TRAP_STOP_OFFSET: u64 = 3;
/// si_code of the SIGTRAP that `int3` raises (do_int3_user → SI_KERNEL).
pub(super) const TRAP_SI_CODE: i32 = libc::SI_KERNEL;

/// The batch loop: runs the calls of a table (rbx: its address, r12: the number
/// of calls; per call 8 words: number, six arguments, result) until the count
/// runs out or a call fails, then traps. Only rcx and r11 (clobbered by
/// `syscall`), rax, the argument registers, rbx and r12 change: all put back at
/// the re-stop. Assembled with llvm-mc:
///
/// ```text
///  0: test r12, r12          ; 4d 85 e4
///  3: je 0x37                ; 74 32
///  5: mov rax, [rbx]         ; 48 8b 03
///  8: mov rdi, [rbx+8]       ; 48 8b 7b 08
///  c: mov rsi, [rbx+16]      ; 48 8b 73 10
/// 10: mov rdx, [rbx+24]      ; 48 8b 53 18
/// 14: mov r10, [rbx+32]      ; 4c 8b 53 20
/// 18: mov r8, [rbx+40]       ; 4c 8b 43 28
/// 1c: mov r9, [rbx+48]       ; 4c 8b 4b 30
/// 20: syscall                ; 0f 05
/// 22: mov [rbx+56], rax      ; 48 89 43 38
/// 26: cmp rax, -4095         ; 48 3d 01 f0 ff ff
/// 2c: jae 0x37               ; 73 09    (unsigned: rax in -4095..-1, an error)
/// 2e: add rbx, 64            ; 48 83 c3 40
/// 32: dec r12                ; 49 ff cc
/// 35: jmp 0x0                ; eb c9
/// 37: int3                   ; cc
/// ```
pub(super) const BATCH_CODE: [u8; 0x38] = [
    0x4d, 0x85, 0xe4, 0x74, 0x32, 0x48, 0x8b, 0x03, 0x48, 0x8b, 0x7b, 0x08, 0x48, 0x8b, 0x73, 0x10,
    0x48, 0x8b, 0x53, 0x18, 0x4c, 0x8b, 0x53, 0x20, 0x4c, 0x8b, 0x43, 0x28, 0x4c, 0x8b, 0x4b, 0x30,
    0x0f, 0x05, 0x48, 0x89, 0x43, 0x38, 0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, 0x73, 0x09, 0x48, 0x83,
    0xc3, 0x40, 0x49, 0xff, 0xcc, 0xeb, 0xc9, 0xcc,
];
/// Offset of the batch's trap instruction.
pub(super) const BATCH_TRAP_OFFSET: u64 = 0x37;
pub(super) const BATCH_TRAP_STOP_OFFSET: u64 = 0x38;

/// The 64-bit user code segment (__USER_CS): a thread running 32-bit code would
/// decode `0f 05` differently and use the compat syscall table.
const USER_CS: u64 = 0x33;
/// The trap flag (single-step).
const X86_EFLAGS_TF: u64 = 0x100;

pub(super) fn get_regs(tid: i32) -> io::Result<Regs> {
    // SAFETY: user_regs_struct is plain integers; all-zero is a valid value.
    let mut regs: Regs = unsafe { std::mem::zeroed() };
    // SAFETY: the slice covers exactly `regs`, which outlives the call; any bytes
    // the kernel writes form a valid user_regs_struct (integers only).
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
    regs.rip
}

pub(super) fn set_pc(regs: &mut Regs, pc: u64) {
    regs.rip = pc;
}

/// Where to write `CODE`: at rip, so the bytes land in a page the thread executes
/// from anyway; moved back if they would cross into the next page, which may not
/// be mapped.
pub(super) fn injection_point(regs: &Regs) -> u64 {
    let rip = regs.rip;
    if rip % 4096 + CODE.len() as u64 > 4096 {
        rip - CODE.len() as u64
    } else {
        rip
    }
}

/// Refuses threads we cannot inject into with a 64-bit `syscall`.
pub(super) fn check_injectable(regs: &Regs) -> Result<(), String> {
    if regs.cs != USER_CS {
        return Err(format!(
            "the thread runs 32-bit code (cs {:#x}); only 64-bit threads can be injected",
            regs.cs
        ));
    }
    Ok(())
}

/// Sets up one system call at `point`: number in rax, arguments in rdi, rsi, rdx,
/// r10, r8, r9 (the syscall ABI: r10, not rcx, which `syscall` overwrites), and
/// orig_rax = -1 so that the kernel does not treat the resume as the restart of
/// the call the thread was interrupted in.
pub(super) fn set_syscall(regs: &mut Regs, point: u64, nr: i64, args: &[u64; 6]) {
    regs.rip = point;
    regs.rax = nr as u64;
    regs.rdi = args[0];
    regs.rsi = args[1];
    regs.rdx = args[2];
    regs.r10 = args[3];
    regs.r8 = args[4];
    regs.r9 = args[5];
    regs.orig_rax = u64::MAX; // -1
                              // A thread that single-steps itself (TF set with popf) would trap after our
                              // `syscall` instead of at our int3; the saved eflags come back at restore.
    regs.eflags &= !X86_EFLAGS_TF;
}

/// Sets up the batch loop at `at` over `count` calls of the table at `table`
/// (see `BATCH_CODE`), with orig_rax = -1 and no single-step as for one call.
pub(super) fn set_batch(regs: &mut Regs, at: u64, table: u64, count: u64) {
    regs.rip = at;
    regs.rbx = table;
    regs.r12 = count;
    regs.orig_rax = u64::MAX;
    regs.eflags &= !X86_EFLAGS_TF;
}

/// Makes sure a resume does not restart a system call (used when we interrupted
/// one of our own injected calls and jump to the trap instead).
pub(super) fn no_restart(regs: &mut Regs) {
    regs.orig_rax = u64::MAX;
}

pub(super) fn result(regs: &Regs) -> i64 {
    regs.rax as i64
}

/// The general registers as words, in the kernel's order (for comparisons).
pub(super) fn words(regs: &Regs) -> Vec<u64> {
    vec![
        regs.r15,
        regs.r14,
        regs.r13,
        regs.r12,
        regs.rbp,
        regs.rbx,
        regs.r11,
        regs.r10,
        regs.r9,
        regs.r8,
        regs.rax,
        regs.rcx,
        regs.rdx,
        regs.rsi,
        regs.rdi,
        regs.orig_rax,
        regs.rip,
        regs.cs,
        regs.eflags,
        regs.rsp,
        regs.ss,
        regs.fs_base,
        regs.gs_base,
        regs.ds,
        regs.es,
        regs.fs,
        regs.gs,
    ]
}

/// Thread state beyond the general registers that an injected call could change.
/// On x86_64 there is none: `syscall` clobbers only rcx and r11 (general
/// registers), the kernel preserves the FPU/SSE/AVX state across system calls,
/// and nothing we run calls or returns (so shadow stacks are untouched).
#[derive(Debug, Clone)]
pub(super) struct Extra;

pub(super) fn save_extra(_tid: i32) -> io::Result<Extra> {
    Ok(Extra)
}

/// Nothing to set up beyond the general registers.
pub(super) fn prepare(_tid: i32, _extra: &Extra) -> io::Result<()> {
    Ok(())
}

pub(super) fn restore_extra(_tid: i32, _extra: &Extra) -> io::Result<()> {
    Ok(())
}

pub(super) fn extra_bytes(_extra: &Extra) -> Vec<u8> {
    Vec::new()
}
