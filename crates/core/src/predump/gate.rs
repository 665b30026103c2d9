//! The drain of a pre-dump, with a test hook (`drain_gated`).

use std::fs::File;
use std::sync::atomic::AtomicU64;

use crate::drain::{self, DrainConfig, DrainEnd};
use crate::pages_out::PagesOut;
use crate::{Error, PageRange, Result};

/// The drain, with a test hook: when `PREDUMP_TEST_DRAIN_GATE` names a FIFO, the
/// first buffer's worth of pages is copied, then the drain waits for one byte
/// from the FIFO before the rest. Tests use it to act in the middle of a drain
/// (kill the target, unmap memory) without guessing with sleeps.
pub(crate) fn drain_gated(
    pid: i32,
    ranges: &[PageRange],
    out: &mut dyn PagesOut,
    config: &DrainConfig,
    progress: Option<&AtomicU64>,
) -> Result<drain::DrainOutcome> {
    let Some(gate) = std::env::var_os("PREDUMP_TEST_DRAIN_GATE") else {
        return drain::drain(pid, ranges, out, config, progress);
    };
    let (first, rest) = split_ranges(
        ranges,
        (config.buffer_bytes as u64 / crate::PAGE_SIZE).max(1),
    );
    let mut outcome = drain::drain(pid, &first, out, config, progress)?;
    let mut byte = [0u8; 1];
    std::io::Read::read_exact(
        &mut File::open(&gate).map_err(|e| Error::sys("opening the drain gate", e))?,
        &mut byte,
    )
    .map_err(|e| Error::sys("waiting at the drain gate", e))?;
    if outcome.end == DrainEnd::Complete {
        let second = drain::drain(pid, &rest, out, config, progress)?;
        for r in second.regions {
            crate::push_merged(&mut outcome.regions, r.start, r.pages);
        }
        let (a, b) = (&mut outcome.stats, second.stats);
        a.pages_requested += b.pages_requested;
        a.pages_written += b.pages_written;
        a.pages_gone += b.pages_gone;
        a.bytes_written += b.bytes_written;
        a.read_time += b.read_time;
        a.write_time += b.write_time;
        a.readv_calls += b.readv_calls;
        outcome.end = second.end;
    }
    Ok(outcome)
}

/// Splits sorted ranges after `pages` pages.
fn split_ranges(ranges: &[PageRange], mut pages: u64) -> (Vec<PageRange>, Vec<PageRange>) {
    let mut first = Vec::new();
    let mut rest = Vec::new();
    for r in ranges {
        if pages >= r.pages {
            pages -= r.pages;
            first.push(*r);
        } else if pages > 0 {
            first.push(PageRange::new(r.start, pages));
            rest.push(PageRange::new(
                r.start + pages * crate::PAGE_SIZE,
                r.pages - pages,
            ));
            pages = 0;
        } else {
            rest.push(*r);
        }
    }
    (first, rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PAGE_SIZE;

    fn r(page: u64, pages: u64) -> PageRange {
        PageRange::new(page * PAGE_SIZE, pages)
    }

    #[test]
    fn split_inside_a_range() {
        let (first, rest) = split_ranges(&[r(0, 2), r(10, 5), r(20, 1)], 4);
        assert_eq!(first, [r(0, 2), r(10, 2)]);
        assert_eq!(rest, [r(12, 3), r(20, 1)]);
    }

    #[test]
    fn split_at_a_range_boundary() {
        let (first, rest) = split_ranges(&[r(0, 2), r(10, 5)], 2);
        assert_eq!(first, [r(0, 2)]);
        assert_eq!(rest, [r(10, 5)]);
    }

    #[test]
    fn split_after_nothing_or_everything() {
        let ranges = [r(0, 2), r(10, 5)];
        assert_eq!(split_ranges(&ranges, 0), (Vec::new(), ranges.to_vec()));
        assert_eq!(split_ranges(&ranges, 7), (ranges.to_vec(), Vec::new()));
        assert_eq!(split_ranges(&ranges, 100), (ranges.to_vec(), Vec::new()));
        assert_eq!(split_ranges(&[], 3), (Vec::new(), Vec::new()));
    }
}
