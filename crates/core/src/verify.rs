//! Verifying an image chain against the live process: every page the chain
//! holds is compared with the target's memory while the target is frozen.
//!
//! The threads' rseq areas are left out of the comparison: the kernel rewrites
//! their cpu and concurrency ids whenever a thread returns to user mode (after
//! every freeze, and after a restore: CRIU's restored threads run before they
//! stop), so a page holding one may differ in those bytes alone. Such pages are
//! counted apart (`rseq_only`), the rest of them is compared.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;

use crate::freeze::Frozen;
use crate::scan::{self, Scanner};
use crate::{intersect, maps, proc, subtract, Error, PageRange, Result, PAGE_SIZE};

/// One image directory of a chain: its pages image and the pages it holds
/// itself (PE_PRESENT entries, in file order).
#[derive(Debug, Clone)]
pub struct Layer {
    pub pages_path: PathBuf,
    pub present: Vec<PageRange>,
}

#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub pages_compared: u64,
    pub mismatches: u64,
    /// Addresses of the first mismatching pages.
    pub first_mismatches: Vec<u64>,
    /// Pages of the newest pagemap that no layer holds (a broken chain).
    pub not_in_chain: u64,
    /// Pages the chain holds that the process cannot read any more.
    pub unreadable: u64,
    /// Present pages of the process that the chain does not hold.
    pub missing: u64,
    /// Pages that differ only inside a thread's rseq area.
    pub rseq_only: u64,
}

const CHUNK_PAGES: u64 = 256;

/// Freezes `pid` and compares `wanted` (the newest pagemap's pages) rebuilt
/// from `chain` (newest first) with its memory.
pub fn verify(pid: i32, chain: &[Layer], wanted: &[PageRange]) -> Result<VerifyReport> {
    proc::check_target(pid)?;
    let smaps = proc::read_proc(pid, &format!("/proc/{pid}/smaps"))?;
    let vm_flags = maps::parse_smaps_flags(&smaps)?;
    let mut scanner = Scanner::open(pid)?;
    let files: Vec<File> = chain
        .iter()
        .map(|l| {
            File::open(&l.pages_path)
                .map_err(|e| Error::sys(format!("open {}", l.pages_path.display()), e))
        })
        .collect::<Result<_>>()?;

    let frozen = Frozen::freeze(pid)?;
    let mut report = VerifyReport::default();
    let outcome = (|| {
        let rseq = rseq_areas(&frozen)?;
        let text = proc::read_proc(pid, &format!("/proc/{pid}/maps"))?;
        let vmas = maps::parse_maps(&text)?;
        let (keep, _) = scan::select(&vmas, &vm_flags, true);
        let live = scanner.present_frozen(&frozen, &keep)?;
        report.missing = subtract(&live.ranges, wanted).iter().map(|r| r.pages).sum();
        let mut remaining = wanted.to_vec();
        for (layer, file) in chain.iter().zip(&files) {
            let starts = offsets(&layer.present);
            for r in intersect(&remaining, &layer.present) {
                compare(pid, layer, &starts, file, r, &rseq, &mut report)?;
            }
            remaining = subtract(&remaining, &layer.present);
        }
        report.not_in_chain = remaining.iter().map(|r| r.pages).sum();
        Ok::<_, Error>(())
    })();
    frozen.thaw();
    outcome?;
    Ok(report)
}

/// Compares the pages of `r` (all held by `layer`) with the live memory.
fn compare(
    pid: i32,
    layer: &Layer,
    starts: &[u64],
    file: &File,
    r: PageRange,
    rseq: &[(u64, u64)],
    report: &mut VerifyReport,
) -> Result<()> {
    let page = PAGE_SIZE as usize;
    let mut image = vec![0u8; CHUNK_PAGES as usize * page];
    let mut live = vec![0u8; CHUNK_PAGES as usize * page];
    let mut at = r.start;
    while at < r.end() {
        let n = ((r.end() - at) / PAGE_SIZE).min(CHUNK_PAGES) as usize;
        let offset = file_offset(&layer.present, starts, at);
        file.read_exact_at(&mut image[..n * page], offset)
            .map_err(|e| Error::sys(format!("reading {}", layer.pages_path.display()), e))?;
        let got = read_live(pid, at, &mut live[..n * page])?;
        for i in 0..n {
            let addr = at + (i * page) as u64;
            if i * page >= got {
                report.unreadable += 1;
                continue;
            }
            report.pages_compared += 1;
            let (want, got) = (
                &image[i * page..(i + 1) * page],
                &live[i * page..(i + 1) * page],
            );
            if want != got && masked(want, addr, rseq) == masked(got, addr, rseq) {
                report.rseq_only += 1;
            } else if want != got {
                report.mismatches += 1;
                if report.first_mismatches.len() < 16 {
                    report.first_mismatches.push(addr);
                }
            }
        }
        at += (n * page) as u64;
    }
    Ok(())
}

/// The rseq areas of the frozen threads, as [start, end) (at least the 32
/// bytes of the original struct rseq).
fn rseq_areas(frozen: &Frozen) -> Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    for tid in frozen.tids() {
        let conf = crate::sys::ptrace::rseq_configuration(tid)
            .map_err(|e| Error::sys(format!("PTRACE_GET_RSEQ_CONFIGURATION of thread {tid}"), e))?;
        if let Some(c) = conf.filter(|c| c.area != 0) {
            out.push((c.area, c.area + u64::from(c.size).max(32)));
        }
    }
    Ok(out)
}

/// A copy of the page at `addr` with the bytes of every rseq area zeroed.
fn masked(page: &[u8], addr: u64, rseq: &[(u64, u64)]) -> Vec<u8> {
    let mut out = page.to_vec();
    let end = addr + page.len() as u64;
    for &(s, e) in rseq {
        let (s, e) = (s.max(addr), e.min(end));
        if s < e {
            out[(s - addr) as usize..(e - addr) as usize].fill(0);
        }
    }
    out
}

/// Bytes read from the process at `addr` (a short count: the rest is unreadable).
fn read_live(pid: i32, addr: u64, buf: &mut [u8]) -> Result<usize> {
    let len = buf.len();
    match process_vm_readv(
        Pid::from_raw(pid),
        &mut [std::io::IoSliceMut::new(buf)],
        &[RemoteIoVec {
            base: addr as usize,
            len,
        }],
    ) {
        Ok(n) => Ok(n),
        Err(Errno::EFAULT) => Ok(0),
        Err(Errno::ESRCH) => Err(Error::TargetExited { pid }),
        Err(e) => Err(Error::sys("process_vm_readv", e)),
    }
}

/// The file offset of each range of a pages image holding `present` in order.
fn offsets(present: &[PageRange]) -> Vec<u64> {
    let mut at = 0;
    present
        .iter()
        .map(|r| {
            let o = at;
            at += r.len();
            o
        })
        .collect()
}

/// Where page `addr` (held by the layer) lies in its pages image.
fn file_offset(present: &[PageRange], starts: &[u64], addr: u64) -> u64 {
    let i = present.partition_point(|r| r.end() <= addr);
    debug_assert!(i < present.len() && present[i].start <= addr);
    starts[i] + (addr - present[i].start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_rseq_bytes_of_a_page_are_masked() {
        let page = vec![7u8; PAGE_SIZE as usize];
        let at = 0x10000;
        // One area inside the page, one across its end, one elsewhere.
        let areas = [
            (at + 16, at + 48),
            (at + 4090, at + 4122),
            (0x20000, 0x20020),
        ];
        let m = masked(&page, at, &areas);
        assert!(m[16..48].iter().all(|&b| b == 0));
        assert!(m[4090..].iter().all(|&b| b == 0));
        assert!(m[..16].iter().chain(&m[48..4090]).all(|&b| b == 7));
        assert_eq!(masked(&page, 0x30000, &areas), page, "no area in that page");
    }
}
