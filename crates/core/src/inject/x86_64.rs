//! x86_64 part of syscall injection: registers, our stub, and how the kernel
//! decides whether to restart an interrupted system call.
//!
//! Restart semantics (arch/x86/kernel/signal.c, `arch_do_signal_or_restart`): the
//! kernel decides *after* `get_signal()` returns, from the registers as they are
//! then: `orig_rax >= 0` and `rax` = -ERESTARTSYS/-ERESTARTNOHAND/-ERESTARTNOINTR
//! → `rax = orig_rax, rip -= 2`; -ERESTART_RESTARTBLOCK → `rax =
//! __NR_restart_syscall, rip -= 2`; with a handler to run, `handle_signal()` turns
//! them into -EINTR as the handler's SA_RESTART says. A ptrace stop happens inside
//! `get_signal()`, so a tracer sees `orig_rax` = the interrupted call and `rax` =
//! -ERESTART…; putting every saved register back at the last stop lets the kernel
//! take, at thaw, the decision it would have taken without us. The stub's
//! epilogue (run only when predump is gone) cannot wait for that decision: it
//! takes the no-handler one itself (`resume_point`), as a thaw with no signal
//! pending does. docs/INJECTION-SAFETY.md has the whole argument.
//!
//! The stub (assembled from the source below with GNU as, then `ld --oformat
//! binary`) is written into the unused tail of the target's vDSO. Its data block
//! comes first and is addressed rip-relative; the code follows at `CODE_AT`:
//!
//! ```text
//! .intel_syntax noprefix
//! .text
//! .globl stub_start
//! stub_start:
//! /* data: 0 magic(16) 16 ident(8) 24 mask_all 32 mask_orig 40 rflags 48 rsp 56 rip
//!    64 rax 72 rbx 80 rcx 88 rdx 96 rsi 104 rdi 112 rbp 120 r8 128 r9 136 r10 144 r11
//!    152 r12 160 r13 168 r14 176 r15 ; code at 192 */
//! .fill 192,1,0
//! single:                     /* 192: the call, regs set by the tracer; r12: where to store its result, or 0;
//!                                r13: 0, or the length of the mapping an mmap makes, to unmap it again */
//!     syscall
//!     test r12, r12
//!     je 1f
//!     mov [r12], rax
//! 1:  test r13, r13
//!     je epi
//!     cmp rax, -4095
//!     jae epi
//!     mov rdi, rax                /* munmap(result, r13): reached only when predump is gone */
//!     mov rsi, r13
//!     mov eax, 11
//!     syscall
//!     jmp epi
//! .balign 16
//! batch:                      /* 240: rbx table, r12 count, r13 lifeline fd, r14 scratch byte */
//!     test r12, r12
//!     je 2f
//!     mov rax, [rbx]
//!     mov rdi, [rbx+8]
//!     mov rsi, [rbx+16]
//!     mov rdx, [rbx+24]
//!     mov r10, [rbx+32]
//!     mov r8, [rbx+40]
//!     mov r9, [rbx+48]
//!     syscall
//!     mov [rbx+56], rax
//!     cmp rax, -4095
//!     jae 2f
//!     add rbx, 64
//!     dec r12
//!     jmp batch
//! 2:  /* notify: sendto(r13, r14, 1, MSG_NOSIGNAL, 0, 0) */
//!     mov eax, 44
//!     mov edi, r13d
//!     mov rsi, r14
//!     mov edx, 1
//!     mov r10d, 0x4000
//!     xor r8d, r8d
//!     xor r9d, r9d
//!     syscall
//!     /* wait: read(r13, r14, 1): ends by the tracer's interrupt, or at EOF when it is gone */
//!     mov eax, 0
//!     mov edi, r13d
//!     mov rsi, r14
//!     mov edx, 1
//!     syscall
//! epi:
//!     /* everything blockable blocked while rsp points at our data */
//!     mov eax, 14
//!     mov edi, 2
//!     lea rsi, [rip + stub_start + 24]
//!     mov edx, 0
//!     mov r10d, 8
//!     syscall
//!     lea rsp, [rip + stub_start + 40]
//!     popfq
//!     mov rsp, [rip + stub_start + 48]
//!     /* from here no instruction changes the flags */
//!     mov eax, 14
//!     mov edi, 2
//!     lea rsi, [rip + stub_start + 32]
//!     mov edx, 0
//!     mov r10d, 8
//!     syscall
//!     mov rax, [rip + stub_start + 64]
//!     mov rbx, [rip + stub_start + 72]
//!     mov rcx, [rip + stub_start + 80]
//!     mov rdx, [rip + stub_start + 88]
//!     mov rsi, [rip + stub_start + 96]
//!     mov rdi, [rip + stub_start + 104]
//!     mov rbp, [rip + stub_start + 112]
//!     mov r8, [rip + stub_start + 120]
//!     mov r9, [rip + stub_start + 128]
//!     mov r10, [rip + stub_start + 136]
//!     mov r11, [rip + stub_start + 144]
//!     mov r12, [rip + stub_start + 152]
//!     mov r13, [rip + stub_start + 160]
//!     mov r14, [rip + stub_start + 168]
//!     mov r15, [rip + stub_start + 176]
//!     jmp qword ptr [rip + stub_start + 56]
//! .globl stub_end
//! stub_end:
//! ```

use std::io;

use crate::sys::ptrace;

/// The general registers as PTRACE_GETREGSET(NT_PRSTATUS) gives them: rax…r15,
/// orig_rax, rip, cs, eflags, rsp, ss, fs_base, gs_base, ds, es, fs, gs.
pub(super) type Regs = libc::user_regs_struct;

/// Injection is implemented here.
pub(super) fn supported() -> Result<(), &'static str> {
    Ok(())
}

/// Where the code starts in the stub (after the data block).
pub(super) const CODE_AT: u64 = 192;
/// One call: `syscall`, its result stored at r12 (if not 0), the mapping it
/// made unmapped again if r13 is not 0, then the epilogue.
pub(super) const SINGLE_AT: u64 = CODE_AT;
/// The batch loop, then notify and wait, then the epilogue.
pub(super) const BATCH_AT: u64 = CODE_AT + 48;
/// Where the journal of leftovers starts (after the stub's 529 bytes).
pub(super) const JOURNAL_AT: u64 = 544;

/// Data block offsets (see the assembly).
const D_MASK_ALL: usize = 24;
const D_MASK: usize = 32;
const D_FLAGS: usize = 40;
const D_RSP: usize = 48;
const D_RIP: usize = 56;
const D_REGS: usize = 64;

/// The stub's code, from `single:` on.
const CODE: [u8; 337] = [
    0x0f, 0x05, 0x4d, 0x85, 0xe4, 0x74, 0x04, 0x49, 0x89, 0x04, 0x24, 0x4d, 0x85, 0xed, 0x0f, 0x84,
    0x83, 0x00, 0x00, 0x00, 0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, 0x73, 0x7b, 0x48, 0x89, 0xc7, 0x4c,
    0x89, 0xee, 0xb8, 0x0b, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xeb, 0x6c, 0x0f, 0x1f, 0x44, 0x00, 0x00,
    0x4d, 0x85, 0xe4, 0x74, 0x32, 0x48, 0x8b, 0x03, 0x48, 0x8b, 0x7b, 0x08, 0x48, 0x8b, 0x73, 0x10,
    0x48, 0x8b, 0x53, 0x18, 0x4c, 0x8b, 0x53, 0x20, 0x4c, 0x8b, 0x43, 0x28, 0x4c, 0x8b, 0x4b, 0x30,
    0x0f, 0x05, 0x48, 0x89, 0x43, 0x38, 0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, 0x73, 0x09, 0x48, 0x83,
    0xc3, 0x40, 0x49, 0xff, 0xcc, 0xeb, 0xc9, 0xb8, 0x2c, 0x00, 0x00, 0x00, 0x44, 0x89, 0xef, 0x4c,
    0x89, 0xf6, 0xba, 0x01, 0x00, 0x00, 0x00, 0x41, 0xba, 0x00, 0x40, 0x00, 0x00, 0x45, 0x31, 0xc0,
    0x45, 0x31, 0xc9, 0x0f, 0x05, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x44, 0x89, 0xef, 0x4c, 0x89, 0xf6,
    0xba, 0x01, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xb8, 0x0e, 0x00, 0x00, 0x00, 0xbf, 0x02, 0x00, 0x00,
    0x00, 0x48, 0x8d, 0x35, 0xb0, 0xfe, 0xff, 0xff, 0xba, 0x00, 0x00, 0x00, 0x00, 0x41, 0xba, 0x08,
    0x00, 0x00, 0x00, 0x0f, 0x05, 0x48, 0x8d, 0x25, 0xac, 0xfe, 0xff, 0xff, 0x9d, 0x48, 0x8b, 0x25,
    0xac, 0xfe, 0xff, 0xff, 0xb8, 0x0e, 0x00, 0x00, 0x00, 0xbf, 0x02, 0x00, 0x00, 0x00, 0x48, 0x8d,
    0x35, 0x8b, 0xfe, 0xff, 0xff, 0xba, 0x00, 0x00, 0x00, 0x00, 0x41, 0xba, 0x08, 0x00, 0x00, 0x00,
    0x0f, 0x05, 0x48, 0x8b, 0x05, 0x97, 0xfe, 0xff, 0xff, 0x48, 0x8b, 0x1d, 0x98, 0xfe, 0xff, 0xff,
    0x48, 0x8b, 0x0d, 0x99, 0xfe, 0xff, 0xff, 0x48, 0x8b, 0x15, 0x9a, 0xfe, 0xff, 0xff, 0x48, 0x8b,
    0x35, 0x9b, 0xfe, 0xff, 0xff, 0x48, 0x8b, 0x3d, 0x9c, 0xfe, 0xff, 0xff, 0x48, 0x8b, 0x2d, 0x9d,
    0xfe, 0xff, 0xff, 0x4c, 0x8b, 0x05, 0x9e, 0xfe, 0xff, 0xff, 0x4c, 0x8b, 0x0d, 0x9f, 0xfe, 0xff,
    0xff, 0x4c, 0x8b, 0x15, 0xa0, 0xfe, 0xff, 0xff, 0x4c, 0x8b, 0x1d, 0xa1, 0xfe, 0xff, 0xff, 0x4c,
    0x8b, 0x25, 0xa2, 0xfe, 0xff, 0xff, 0x4c, 0x8b, 0x2d, 0xa3, 0xfe, 0xff, 0xff, 0x4c, 0x8b, 0x35,
    0xa4, 0xfe, 0xff, 0xff, 0x4c, 0x8b, 0x3d, 0xa5, 0xfe, 0xff, 0xff, 0xff, 0x25, 0x27, 0xfe, 0xff,
    0xff,
];

/// The 64-bit user code segment (__USER_CS): a thread running 32-bit code would
/// decode `0f 05` differently and use the compat syscall table.
const USER_CS: u64 = 0x33;
/// The trap flag (single-step).
const X86_EFLAGS_TF: u64 = 0x100;
/// -ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND, -ERESTART_RESTARTBLOCK.
const ERESTARTSYS: i64 = -512;
const ERESTARTNOINTR: i64 = -513;
const ERESTARTNOHAND: i64 = -514;
const ERESTART_RESTARTBLOCK: i64 = -516;
const NR_RESTART_SYSCALL: u64 = 219;

/// The whole stub for a thread whose registers were `orig` and signal mask
/// `mask`, resuming at `pc` with rax `rax` (see `resume_point`). `head` is the
/// 24-byte header (magic and identity) that marks it as ours.
/// (`_tid`: aarch64 reads the thread's FP registers for its frame; the x86_64
/// stub needs nothing more.)
pub(super) fn stub_image(
    head: &[u8; 24],
    orig: &Regs,
    mask: u64,
    pc: u64,
    rax: u64,
    _tid: i32,
) -> io::Result<Vec<u8>> {
    let mut img = vec![0u8; CODE_AT as usize];
    img[..24].copy_from_slice(head);
    let mut put = |at: usize, v: u64| img[at..at + 8].copy_from_slice(&v.to_ne_bytes());
    put(D_MASK_ALL, u64::MAX);
    put(D_MASK, mask);
    put(D_FLAGS, orig.eflags);
    put(D_RSP, orig.rsp);
    put(D_RIP, pc);
    let regs = [
        rax, orig.rbx, orig.rcx, orig.rdx, orig.rsi, orig.rdi, orig.rbp, orig.r8, orig.r9,
        orig.r10, orig.r11, orig.r12, orig.r13, orig.r14, orig.r15,
    ];
    for (i, v) in regs.iter().enumerate() {
        put(D_REGS + 8 * i, *v);
    }
    img.extend_from_slice(&CODE);
    Ok(img)
}

/// Where and with which rax the thread goes on if it is let go without a signal
/// to handle: a call interrupted with -ERESTART… is restarted (its `syscall`
/// again, or restart_syscall for -ERESTART_RESTARTBLOCK), as the kernel does.
pub(super) fn resume_point(regs: &Regs) -> (u64, u64) {
    let nr = regs.orig_rax as i64;
    match regs.rax as i64 {
        ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND if nr >= 0 => (regs.rip - 2, regs.orig_rax),
        ERESTART_RESTARTBLOCK if nr >= 0 => (regs.rip - 2, NR_RESTART_SYSCALL),
        _ => (regs.rip, regs.rax),
    }
}

pub(super) fn get_regs(tid: i32) -> io::Result<Regs> {
    ptrace::get_regs(tid)
}

pub(super) fn set_regs(tid: i32, regs: &Regs) -> io::Result<()> {
    ptrace::set_regs(tid, regs)
}

pub(super) fn pc(regs: &Regs) -> u64 {
    regs.rip
}

/// Refuses threads we cannot inject into: 32-bit code (`0f 05` means something
/// else there), or a thread single-stepping itself (the epilogue's `popfq` would
/// set the trap flag and trap inside our code).
pub(super) fn check_injectable(_tid: i32, regs: &Regs) -> Result<(), String> {
    if regs.cs != USER_CS {
        return Err(format!(
            "the thread runs 32-bit code (cs {:#x}); only 64-bit threads can be injected",
            regs.cs
        ));
    }
    if regs.eflags & X86_EFLAGS_TF != 0 {
        return Err("the thread single-steps itself (trap flag set)".into());
    }
    Ok(())
}

/// One system call at `stub`: number in rax, arguments in rdi, rsi, rdx, r10, r8,
/// r9 (r10, not rcx, which `syscall` overwrites); orig_rax = -1 so that leaving
/// the stop does not restart the call the thread was interrupted in.
/// `done` (0 for none) is where the stub stores the result, even if predump is
/// gone by then: how a later run knows whether the call ran. `undo` (0 for
/// none) is the length of the mapping an mmap makes: the stub unmaps it again
/// if the thread gets past the call, which it does only when predump is gone
/// (while predump lives the thread never leaves the call's exit stop by itself).
pub(super) fn set_single(
    regs: &mut Regs,
    stub: u64,
    nr: i64,
    args: &[u64; 6],
    done: u64,
    undo: u64,
) {
    regs.rip = stub + SINGLE_AT;
    regs.r12 = done;
    regs.r13 = undo;
    regs.rax = nr as u64;
    regs.rdi = args[0];
    regs.rsi = args[1];
    regs.rdx = args[2];
    regs.r10 = args[3];
    regs.r8 = args[4];
    regs.r9 = args[5];
    regs.orig_rax = u64::MAX;
}

/// The batch loop over `count` calls of the table at `table`, then a byte sent
/// on the lifeline `fd` and a read of it into `byte` (target addresses).
pub(super) fn set_batch(regs: &mut Regs, stub: u64, table: u64, count: u64, fd: i32, byte: u64) {
    regs.rip = stub + BATCH_AT;
    regs.rbx = table;
    regs.r12 = count;
    regs.r13 = fd as u32 as u64;
    regs.r14 = byte;
    regs.orig_rax = u64::MAX;
}

/// Makes sure leaving a stop does not restart the call the stop interrupted.
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

/// Thread state beyond the general registers that injection could change: none
/// on x86_64 (the kernel keeps the FPU/SSE/AVX state across system calls, and
/// the stub uses general registers only).
pub(super) fn extra_bytes(_tid: i32) -> io::Result<Vec<u8>> {
    Ok(Vec::new())
}
