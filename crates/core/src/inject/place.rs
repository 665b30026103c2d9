//! Where the stub goes: the unused tail of the target's vDSO.
//!
//! The stub must sit in executable memory that no code of the target ever
//! reaches, and that exists before the first injected call (making it with an
//! injected mmap would need a stub already) and after the last (removing it with
//! an injected munmap would pull the page from under the instruction after the
//! call). The vDSO is mapped into every process by the kernel, its image is the
//! same in every process of one kernel, and it ends in zero padding after the
//! section header table: bytes that no symbol, section or segment covers, so no
//! code jumps there and no loader reads them. PTRACE_POKEDATA and
//! /proc/PID/mem write through its read-only protection with FOLL_FORCE: the
//! page becomes a private copy of the target's (as a debugger's breakpoint
//! does), other processes keep the kernel's. The first vDSO page, whose frame
//! number CRIU compares with its own vDSO's, is never written: the tail lies in
//! the last page.
//!
//! Found without guessing: our own vDSO (AT_SYSINFO_EHDR) is parsed for the end
//! of its contents, and the target's must be byte for byte the same up to there.

use std::sync::OnceLock;

use crate::{proc, Error, Result, PAGE_SIZE};

/// Our vDSO: its contents up to the tail, the tail's offset and the mapping size.
struct Own {
    image: Vec<u8>,
    tail: u64,
    size: u64,
}

fn own() -> Option<&'static Own> {
    static OWN: OnceLock<Option<Own>> = OnceLock::new();
    OWN.get_or_init(|| {
        // SAFETY: getauxval reads our auxiliary vector; no pointer is passed.
        let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
        if base == 0 {
            return None;
        }
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        let (start, end) = maps.lines().find_map(|l| {
            if !l.ends_with("[vdso]") {
                return None;
            }
            let range = l.split_whitespace().next()?;
            let (s, e) = range.split_once('-')?;
            Some((
                u64::from_str_radix(s, 16).ok()?,
                u64::from_str_radix(e, 16).ok()?,
            ))
        })?;
        if start != base as u64 {
            return None;
        }
        let size = end - start;
        // SAFETY: the kernel maps the whole vDSO readable at `base` for the
        // life of the process; we only read `size` bytes of it.
        let all = unsafe { std::slice::from_raw_parts(base as *const u8, size as usize) };
        let tail = contents_end(all)?.div_ceil(64) * 64;
        if tail + 512 > size || tail < size - PAGE_SIZE {
            return None;
        }
        if all[tail as usize..].iter().any(|&b| b != 0) {
            return None;
        }
        Some(Own {
            image: all[..tail as usize].to_vec(),
            tail,
            size,
        })
    })
    .as_ref()
}

/// How many bytes of padding this kernel's vDSO leaves for the stub (our
/// own vDSO's: every process's is the same), or None if it has none we can
/// use.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
pub(super) fn own_room() -> Option<u64> {
    own().map(|o| o.size - o.tail)
}

/// The end of an ELF64 image's contents: the furthest of its segments' file
/// ranges and its section header table.
fn contents_end(elf: &[u8]) -> Option<u64> {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 {
        return None;
    }
    let u16_at = |at: usize| u16::from_ne_bytes(elf[at..at + 2].try_into().unwrap()) as u64;
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .map(|b| u64::from_ne_bytes(b.try_into().unwrap()))
    };
    let (phoff, shoff) = (u64_at(32)?, u64_at(40)?);
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    let (shentsize, shnum) = (u16_at(58), u16_at(60));
    let mut end = shoff + shentsize * shnum;
    for i in 0..phnum {
        let ph = (phoff + i * phentsize) as usize;
        end = end.max(u64_at(ph + 8)? + u64_at(ph + 32)?); // p_offset + p_filesz
    }
    Some(end)
}

/// The [vdso] line's range in a maps text.
fn vdso(maps: &str) -> Option<(u64, u64)> {
    maps.lines()
        .find(|l| l.ends_with("[vdso]"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|r| r.split_once('-'))
        .and_then(|(s, e)| {
            Some((
                u64::from_str_radix(s, 16).ok()?,
                u64::from_str_radix(e, 16).ok()?,
            ))
        })
}

/// Where a stub of ours would be in the process whose maps text is `maps`,
/// if its vDSO is this kernel's size: for a quick look at its first bytes.
/// `locate` checks the vDSO's contents as well; a marker found here is only
/// worth that closer look.
pub(super) fn stub_at(maps: &str) -> Option<u64> {
    let own = own()?;
    let (start, end) = vdso(maps)?;
    (end - start == own.size).then_some(start + own.tail)
}

/// Where the stub can go in process `pid`: (address, room in bytes).
pub(super) fn locate(pid: i32) -> Result<(u64, u64)> {
    let refuse = |why: &str| {
        Error::sys(
            format!("injecting into process {pid}: {why}"),
            std::io::Error::from_raw_os_error(libc::ENOEXEC),
        )
    };
    let own = own().ok_or_else(|| refuse("predump's own vDSO has no room for the stub"))?;
    let maps = proc::read_proc(pid, &format!("/proc/{pid}/maps"))?;
    let Some((start, end)) = vdso(&maps) else {
        return Err(refuse("it has no vDSO"));
    };
    if end - start != own.size {
        return Err(refuse("its vDSO is not this kernel's"));
    }
    let mut theirs = vec![0u8; own.tail as usize];
    super::read_memory(pid, start, &mut theirs)?;
    if theirs != own.image {
        return Err(refuse(
            "its vDSO differs from this kernel's (changed by a debugger?)",
        ));
    }
    Ok((start + own.tail, own.size - own.tail))
}
