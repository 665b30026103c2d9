//! Hooks for predump's own tests, compiled in with the `test-hooks` feature
//! only: the test builds enable it (`npm run build:native`, and `cargo test`
//! through the crate's dev-dependency on itself), a release does not
//! (`scripts/pack-release` builds without it and checks that the addon holds
//! no `PREDUMP_TEST_` name). Without the feature there is no gate: each hook
//! is a no-op.
//!
//! Tests use the gates to act at an exact point of a run (kill the target,
//! unmap memory, kill predump) without guessing with sleeps: the run opens a
//! FIFO the test names and waits for a byte from it; the test's open of the
//! FIFO for writing returns once the run is there.

#[cfg(feature = "test-hooks")]
use crate::Error;
use crate::{PageRange, Result};

/// The drain gate: when `PREDUMP_TEST_DRAIN_GATE` names a FIFO, the drain
/// copies a first buffer's worth of pages, waits at the gate, then copies the
/// rest (see `predump::drain_gated`).
pub(crate) struct DrainGate {
    #[cfg(feature = "test-hooks")]
    fifo: std::ffi::OsString,
}

impl DrainGate {
    /// The gate, if this run has one.
    pub(crate) fn find() -> Option<DrainGate> {
        #[cfg(feature = "test-hooks")]
        if let Some(fifo) = std::env::var_os("PREDUMP_TEST_DRAIN_GATE") {
            return Some(DrainGate { fifo });
        }
        None
    }

    /// Waits at the gate.
    pub(crate) fn wait(&self) -> Result<()> {
        #[cfg(feature = "test-hooks")]
        wait_at(std::path::Path::new(&self.fifo), "the drain gate")?;
        Ok(())
    }
}

/// The drain gate in a tree's splice mode: each process spliced waits at it
/// once, before its pipes are drained (its pages are pinned: a test can kill it
/// there and see its image whole).
pub(crate) fn splice_drain_gate() -> Result<()> {
    match DrainGate::find() {
        Some(gate) => gate.wait(),
        None => Ok(()),
    }
}

/// A gate in injection: when `PREDUMP_TEST_INJECT_GATE` is `POINT:FIFO` and
/// this is `POINT`, the run waits at the FIFO. The points:
/// `leftovers-journaled` (`inject::leftovers::remove`, after the journal that
/// names what it is about to close and unmap was written, before the first
/// close), `splice-pipes-received` (splice mode, after the target received a
/// group of pipes, before their vmsplices).
pub(crate) fn inject_gate(point: &str) -> Result<()> {
    #[cfg(feature = "test-hooks")]
    if let Some(spec) = std::env::var_os("PREDUMP_TEST_INJECT_GATE") {
        if let Some((at, fifo)) = spec.to_string_lossy().split_once(':') {
            if at == point {
                return wait_at(std::path::Path::new(fifo), "the injection gate");
            }
        }
    }
    let _ = point;
    Ok(())
}

/// Waits for one byte from the FIFO at `path`.
#[cfg(feature = "test-hooks")]
fn wait_at(path: &std::path::Path, what: &str) -> Result<()> {
    let mut byte = [0u8; 1];
    let mut fifo =
        std::fs::File::open(path).map_err(|e| Error::sys(format!("opening {what}"), e))?;
    std::io::Read::read_exact(&mut fifo, &mut byte)
        .map_err(|e| Error::sys(format!("waiting at {what}"), e))
}

/// Splits sorted ranges after `pages` pages: what the drain copies before its
/// gate, and after.
pub(crate) fn split_ranges(
    ranges: &[PageRange],
    mut pages: u64,
) -> (Vec<PageRange>, Vec<PageRange>) {
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

    /// The test builds have the hooks (the crate's dev-dependency on itself).
    #[test]
    #[allow(clippy::assertions_on_constants)]
    fn the_test_build_has_the_hooks() {
        assert!(cfg!(feature = "test-hooks"));
    }
}
