//! The drain of a pre-dump, with its test gate (`test_hooks::DrainGate`, in
//! test builds only): shared by the single-process and the tree pre-dumps.

use std::sync::atomic::AtomicU64;

use crate::drain::{self, DrainConfig, DrainEnd, DrainOutcome};
use crate::pages_out::PagesOut;
use crate::test_hooks::{split_ranges, DrainGate};
use crate::{PageRange, Result};

/// `drain::drain`; where a test set the drain gate, the first buffer's worth
/// of pages is copied, then the drain waits at the gate before the rest.
pub(crate) fn drain_gated(
    pid: i32,
    ranges: &[PageRange],
    out: &mut dyn PagesOut,
    config: &DrainConfig,
    progress: Option<&AtomicU64>,
) -> Result<DrainOutcome> {
    let Some(gate) = DrainGate::find() else {
        return drain::drain(pid, ranges, out, config, progress);
    };
    let (first, rest) = split_ranges(
        ranges,
        (config.buffer_bytes as u64 / crate::PAGE_SIZE).max(1),
    );
    let mut outcome = drain::drain(pid, &first, out, config, progress)?;
    gate.wait()?;
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
