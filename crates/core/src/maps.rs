//! The target's mappings, from /proc/PID/maps (cheap, read while frozen) and the
//! `VmFlags` lines of /proc/PID/smaps (costly: the kernel walks every page table to
//! fill in the sizes, so it is read before freezing and joined by address).

use std::collections::HashMap;

use crate::{Error, Result};

/// One line of /proc/PID/maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    /// MAP_SHARED ('s'), as opposed to private ('p').
    pub shared: bool,
    pub offset: u64,
    /// The backing file's inode; 0 for anonymous memory.
    pub inode: u64,
    /// Path, `[heap]`, `[stack]`, `[vvar]`… or empty.
    pub name: String,
}

impl Vma {
    pub fn pages(&self) -> u64 {
        (self.end - self.start) / crate::PAGE_SIZE
    }
}

/// Parses the whole text of /proc/PID/maps.
pub fn parse_maps(text: &str) -> Result<Vec<Vma>> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(parse_maps_line)
        .collect()
}

fn parse_maps_line(line: &str) -> Result<Vma> {
    let bad = || Error::Parse {
        file: "/proc/PID/maps".into(),
        detail: format!("bad line {line:?}"),
    };
    // Six fields, the last (the name) may hold spaces and is optional.
    let mut fields = line.splitn(6, ' ');
    let mut next = || fields.next().ok_or_else(bad);
    let (range, perms, offset, _dev, inode) = (next()?, next()?, next()?, next()?, next()?);
    let name = fields.next().unwrap_or("").trim_start().to_string();
    let (start, end) = range.split_once('-').ok_or_else(bad)?;
    let hex = |s: &str| u64::from_str_radix(s, 16).map_err(|_| bad());
    let perms = perms.as_bytes();
    if perms.len() != 4 {
        return Err(bad());
    }
    Ok(Vma {
        start: hex(start)?,
        end: hex(end)?,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        shared: perms[3] == b's',
        offset: hex(offset)?,
        inode: inode.parse().map_err(|_| bad())?,
        name,
    })
}

/// The kernel's VM_* flags of a mapping that predump cares about, from smaps'
/// `VmFlags:` two-letter mnemonics (fs/proc/task_mmu.c).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmFlags {
    /// `io`: VM_IO, memory-mapped I/O; reading it may have side effects.
    pub io: bool,
    /// `pf`: VM_PFNMAP, raw page frames without struct page.
    pub pfnmap: bool,
    /// `ht`: hugetlb pages, which CRIU dumps through another path.
    pub hugetlb: bool,
}

impl VmFlags {
    fn parse(mnemonics: &str) -> VmFlags {
        let mut flags = VmFlags::default();
        for m in mnemonics.split_whitespace() {
            match m {
                "io" => flags.io = true,
                "pf" => flags.pfnmap = true,
                "ht" => flags.hugetlb = true,
                _ => {}
            }
        }
        flags
    }
}

/// VmFlags of each mapping of /proc/PID/smaps, by (start, end).
pub fn parse_smaps_flags(text: &str) -> Result<HashMap<(u64, u64), VmFlags>> {
    let mut out = HashMap::new();
    let mut current: Option<(u64, u64)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("VmFlags:") {
            if let Some(key) = current.take() {
                out.insert(key, VmFlags::parse(rest));
            }
        } else if is_header(line) {
            let vma = parse_maps_line(line)?;
            current = Some((vma.start, vma.end));
        }
    }
    Ok(out)
}

/// A mapping header line of smaps starts with `start-end `; the other lines are
/// `Name:   value`. A header's path may contain ':' so test the address part only.
fn is_header(line: &str) -> bool {
    let Some((range, _)) = line.split_once(' ') else {
        return false;
    };
    range.split_once('-').is_some_and(|(a, b)| {
        !a.is_empty() && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_hexdigit())
    })
}

/// Why a mapping is left out of a pre-dump; `None` means it is dumped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// [vvar], [vvar_vclock], [vsyscall]: the kernel's, restored by the kernel.
    KernelArea,
    /// A shared mapping: its pages live in the file or in shmem, not in the task.
    Shared,
    /// Not readable: process_vm_readv cannot read it (read mode).
    Unreadable,
    /// VM_IO or VM_PFNMAP: device memory.
    Device,
    /// hugetlbfs pages.
    HugeTlb,
}

/// Which pages of a mapping a pre-dump takes: those CRIU's `should_dump_page`
/// takes (criu/mem.c). A chain that `criu dump --track-mem --prev-images-dir`
/// continues must hold every page CRIU may ask the parent for (a page it calls
/// clean, by soft-dirty, is written as a hole that must be found in the parent's
/// pagemap, else "Missing … in parent pagemap"); and what CRIU never dumps need
/// not be copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Present or swapped pages that are not the shared zero page.
    Present,
    /// The same, less the pages that are still the file's own (pagemap's PM_FILE,
    /// PAGEMAP_SCAN's PAGE_IS_FILE): a private file mapping's pages not written
    /// since mapped (libc, ld.so, the binary). Restoring maps the file again.
    PresentNotFile,
    /// Every page, present or not: the vDSO. CRIU always dumps it whole, and a
    /// vDSO page the process never touched is absent and never soft-dirty, so a
    /// `criu dump` on top of our images asks the parent for it.
    All,
}

/// The pages of `vma` a pre-dump takes (see `Take`).
pub fn take(vma: &Vma) -> Take {
    if vma.name == "[vdso]" {
        Take::All
    } else if vma.inode != 0 {
        Take::PresentNotFile
    } else {
        Take::Present
    }
}

/// What CRIU's pre-dump leaves out, decided per mapping. `flags` is None when the
/// mapping appeared after smaps was read; then its name decides.
pub fn skip_reason(vma: &Vma, flags: Option<VmFlags>, need_readable: bool) -> Option<Skip> {
    if matches!(vma.name.as_str(), "[vvar]" | "[vvar_vclock]" | "[vsyscall]") {
        return Some(Skip::KernelArea);
    }
    if vma.shared {
        return Some(Skip::Shared);
    }
    let flags = flags.unwrap_or_else(|| VmFlags {
        hugetlb: vma.name.starts_with("/anon_hugepage"),
        // A private mapping of a device node is the usual way to get VM_IO.
        io: vma.name.starts_with("/dev/") && vma.name != "/dev/zero",
        pfnmap: false,
    });
    if flags.io || flags.pfnmap {
        return Some(Skip::Device);
    }
    if flags.hugetlb {
        return Some(Skip::HugeTlb);
    }
    if need_readable && !vma.read {
        return Some(Skip::Unreadable);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
00400000-00401000 r--p 00000000 fe:01 1234                               /usr/bin/cat
7f0000000000-7f0000021000 rw-p 00000000 00:00 0 
7f0000021000-7f0000022000 ---p 00000000 00:00 0 
7f0000100000-7f0000200000 rw-s 00000000 00:05 42                         /dev/shm/a file: with spaces
7ffc00000000-7ffc00002000 r--p 00000000 00:00 0                          [vvar]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    #[test]
    fn maps_lines() {
        let vmas = parse_maps(MAPS).unwrap();
        assert_eq!(vmas.len(), 6);
        assert_eq!(vmas[0].name, "/usr/bin/cat");
        assert_eq!(vmas[0].inode, 1234);
        assert!(vmas[0].read && !vmas[0].write && !vmas[0].shared);
        assert_eq!(vmas[1].name, "");
        assert_eq!(vmas[1].pages(), 0x21);
        assert_eq!(vmas[3].name, "/dev/shm/a file: with spaces");
        assert!(vmas[3].shared);
        assert_eq!(vmas[5].start, 0xffffffffff600000);
    }

    #[test]
    fn skips() {
        let vmas = parse_maps(MAPS).unwrap();
        let reasons: Vec<_> = vmas.iter().map(|v| skip_reason(v, None, true)).collect();
        assert_eq!(
            reasons,
            vec![
                None,
                None,
                Some(Skip::Unreadable),
                Some(Skip::Shared),
                Some(Skip::KernelArea),
                Some(Skip::KernelArea)
            ]
        );
        let io = VmFlags {
            io: true,
            ..Default::default()
        };
        assert_eq!(skip_reason(&vmas[1], Some(io), true), Some(Skip::Device));
    }

    #[test]
    fn pages_taken_as_criu_does() {
        let vmas = parse_maps(MAPS).unwrap();
        assert_eq!(
            take(&vmas[0]),
            Take::PresentNotFile,
            "a private file mapping"
        );
        assert_eq!(take(&vmas[1]), Take::Present, "anonymous memory");
        let vdso = parse_maps("7ffc00002000-7ffc00004000 r-xp 00000000 00:00 0  [vdso]\n").unwrap();
        assert_eq!(take(&vdso[0]), Take::All);
        // An AIO ring is a shared mapping: left out (CRIU's pre-dump skips it too,
        // and its dump copies it whole, never from a parent).
        let aio = parse_maps("7f0000000000-7f0000001000 rw-s 00000000 00:0f 3  /[aio] (deleted)\n")
            .unwrap();
        assert_eq!(skip_reason(&aio[0], None, true), Some(Skip::Shared));
    }

    #[test]
    fn smaps_flags() {
        let text = "\
7f0000000000-7f0000021000 rw-p 00000000 00:00 0 
Size:                132 kB
VmFlags: rd wr mr mw me ac sd 
7f0000100000-7f0000200000 rw-s 00000000 00:05 42                         /dev/dri: card0
Size:                1024 kB
VmFlags: rd wr sh mr mw me ms io pf dd 
";
        let flags = parse_smaps_flags(text).unwrap();
        assert_eq!(flags[&(0x7f0000000000, 0x7f0000021000)], VmFlags::default());
        let dev = flags[&(0x7f0000100000, 0x7f0000200000)];
        assert!(dev.io && dev.pfnmap && !dev.hugetlb);
    }

    #[test]
    fn own_maps_parse() {
        let text = std::fs::read_to_string("/proc/self/maps").unwrap();
        let vmas = parse_maps(&text).unwrap();
        assert!(vmas.iter().any(|v| v.name == "[stack]"));
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        assert!(!parse_smaps_flags(&smaps).unwrap().is_empty());
    }
}
