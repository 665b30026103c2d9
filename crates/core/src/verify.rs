//! Verifying an image chain against the live process: every page the chain
//! holds is compared with the target's memory while the target is frozen.

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
        let text = proc::read_proc(pid, &format!("/proc/{pid}/maps"))?;
        let vmas = maps::parse_maps(&text)?;
        let (keep, _) = scan::select(&vmas, &vm_flags, true);
        let live = scanner.present_frozen(&frozen, &keep)?;
        report.missing = subtract(&live.ranges, wanted).iter().map(|r| r.pages).sum();
        let mut remaining = wanted.to_vec();
        for (layer, file) in chain.iter().zip(&files) {
            let starts = offsets(&layer.present);
            for r in intersect(&remaining, &layer.present) {
                compare(pid, layer, &starts, file, r, &mut report)?;
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
            if image[i * page..(i + 1) * page] != live[i * page..(i + 1) * page] {
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
