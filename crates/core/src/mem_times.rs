//! What happened when, in the two memory times of CRIU's `stats-dump`
//! (`dump_stats_entry.memdump_time` and `memwrite_time`), as CRIU 4.2 counts them.
//!
//! CRIU (criu/mem.c `__parasite_dump_pages_seized`, criu/page-xfer.c
//! `page_xfer_predump_pages`, criu/cr-dump.c `cr_pre_dump_finish`) times them so:
//!
//! - a **dump**: `memdump_time` is all its page work, frozen: the pagemap
//!   generated, the pages drained into pipes and written into the images;
//!   `memwrite_time` is the writing of the pages images alone, a part of it,
//!   frozen as well.
//! - a **splice pre-dump**: `memdump_time` is the pagemap and the pages
//!   referenced into pipes, frozen; `memwrite_time` is the pipes written into
//!   the images after the thaw.
//! - a **read pre-dump**: `memdump_time` is the pagemap (frozen) and, after the
//!   thaw, the reading of the pages (`process_vm_readv`); `memwrite_time` is the
//!   writing of what was read, after the thaw.
//!
//! predump's copy reads and writes at once (a reader and a writer thread), so the
//! reading and the writing of one copy each have their own time, which overlap.
//! CRIU never syncs its images; predump's fsync is writing, counted in
//! `memwrite_time` when it comes after the thaw as the rest of the writing does
//! (a pre-dump), left out of a dump's, whose writing is inside the frozen
//! window while the fsync is not.

use std::time::Duration;

use crate::drain::DrainStats;

/// `memdump_time` and `memwrite_time`, as CRIU's stats-dump means them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemTimes {
    pub memdump: Duration,
    pub memwrite: Duration,
}

impl MemTimes {
    /// Read mode and freeze-free mode: the pages found (`found`: frozen, or, freeze-free,
    /// while the target ran), then read and written after the thaw, then synced.
    pub fn copied_after_thaw(found: Duration, copy: &DrainStats, sync: Duration) -> Self {
        MemTimes {
            memdump: found + copy.read_time,
            memwrite: copy.write_time + sync,
        }
    }

    /// Splice mode: the pages found and referenced into pipes while frozen
    /// (`referenced`, the two together), the pipes written into the images after the
    /// thaw (`copy`), then synced.
    pub fn spliced(referenced: Duration, copy: Duration, sync: Duration) -> Self {
        MemTimes {
            memdump: referenced,
            memwrite: copy + sync,
        }
    }

    /// A dump: everything done to the pages inside the frozen window (`frozen_work`:
    /// found, tracking ended, read and written), of which `copy`'s writing was the
    /// writing of the images. The fsync after the thaw is neither.
    pub fn copied_frozen(frozen_work: Duration, copy: &DrainStats) -> Self {
        MemTimes {
            memdump: frozen_work,
            memwrite: copy.write_time.min(frozen_work),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn copy(read: u64, write: u64) -> DrainStats {
        DrainStats {
            read_time: ms(read),
            write_time: ms(write),
            ..Default::default()
        }
    }

    #[test]
    fn a_pre_dump_reads_into_memdump_and_writes_into_memwrite() {
        let t = MemTimes::copied_after_thaw(ms(2), &copy(30, 40), ms(5));
        assert_eq!(t.memdump, ms(32));
        assert_eq!(t.memwrite, ms(45));
    }

    #[test]
    fn a_splice_pre_dump_writes_the_pipes_after_the_thaw() {
        let t = MemTimes::spliced(ms(9), ms(50), ms(5));
        assert_eq!(t.memdump, ms(9));
        assert_eq!(t.memwrite, ms(55));
    }

    #[test]
    fn a_dump_writes_inside_its_memdump_and_leaves_the_fsync_out() {
        let t = MemTimes::copied_frozen(ms(600), &copy(300, 400));
        assert_eq!(t.memdump, ms(600));
        assert_eq!(t.memwrite, ms(400));
        assert!(t.memwrite <= t.memdump);
    }
}
