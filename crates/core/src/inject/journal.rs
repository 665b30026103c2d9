//! The journal of what the injector leaves in the target while it works
//! (fds, the scratch mapping), kept in the scratch mapping itself so that a
//! later run can remove what a killed predump left (see `leftovers`).

use std::os::unix::fs::FileExt;

use super::leftovers::{self, Leftover};
use super::{Injector, JOURNAL_AT};
use crate::{Error, Result};

impl<'f> Injector<'f> {
    /// Journals something of ours that may stay in the target (see `leftovers`).
    pub fn note(&mut self, what: Leftover) -> Result<()> {
        if self.journal.contains(&what) {
            return Ok(());
        }
        self.journal.push(what);
        let written = self.write_journal();
        if written.is_err() {
            self.journal.pop();
        }
        written
    }

    /// Replaces the whole journal in one write (`leftovers::remove`).
    pub(crate) fn set_journal(&mut self, entries: Vec<Leftover>) -> Result<()> {
        let old = std::mem::replace(&mut self.journal, entries);
        let written = self.write_journal();
        if written.is_err() {
            self.journal = old;
        }
        written
    }

    /// The entries that point into the scratch mapping at [addr, addr+len),
    /// replaced (in one write) by the fds they name, by number.
    pub(super) fn entries_by_number(&mut self, addr: u64, len: u64) -> Result<()> {
        let inside = |at: u64| at >= addr && at < addr + len;
        let mut entries = Vec::with_capacity(self.journal.len());
        for e in self.journal.clone() {
            let (at, bytes) = match e {
                Leftover::FdPair { addr, .. } => (addr, 8),
                Leftover::FdCmsg { addr, .. } => (addr, 16 + 4 * 253),
                Leftover::FdWord { addr, .. } => (addr, 8),
                // Recorded closes are out of the journal once they returned.
                Leftover::Closing { done, .. } | Leftover::ClosingRange { done, .. }
                    if inside(done) =>
                {
                    continue
                }
                _ => {
                    entries.push(e);
                    continue;
                }
            };
            if !inside(at) {
                entries.push(e);
                continue;
            }
            let mut b = vec![0u8; bytes];
            self.read_memory(at, &mut b)?;
            let fds: Vec<i32> = match e {
                Leftover::FdPair { .. } => b
                    .chunks_exact(4)
                    .map(|c| i32::from_ne_bytes(c.try_into().unwrap()))
                    .collect(),
                Leftover::FdCmsg { .. } => {
                    let clen = u64::from_ne_bytes(b[..8].try_into().unwrap()) as usize;
                    b[16..clen.clamp(16, bytes) / 4 * 4]
                        .chunks_exact(4)
                        .map(|c| i32::from_ne_bytes(c.try_into().unwrap()))
                        .collect()
                }
                _ => {
                    let v = i64::from_ne_bytes(b[..8].try_into().unwrap());
                    if (0..=i32::MAX as i64).contains(&v) {
                        vec![v as i32]
                    } else {
                        Vec::new()
                    }
                }
            };
            let kind = match e {
                Leftover::FdPair { kind, .. }
                | Leftover::FdCmsg { kind, .. }
                | Leftover::FdWord { kind, .. } => kind,
                _ => unreachable!(),
            };
            for fd in fds.into_iter().filter(|&fd| fd >= 0) {
                let by_number = Leftover::Fd { fd, kind };
                if !entries.contains(&by_number) {
                    entries.push(by_number);
                }
            }
        }
        if entries != self.journal {
            self.set_journal(entries)?;
        }
        Ok(())
    }

    /// Takes it out of the journal again (it is gone from the target).
    pub fn forget(&mut self, what: &Leftover) -> Result<()> {
        if let Some(i) = self.journal.iter().position(|j| j == what) {
            self.journal.remove(i);
        }
        self.write_journal()
    }

    pub(super) fn write_journal(&mut self) -> Result<()> {
        let bytes = leftovers::encode(&self.journal, &self.nonce)
            .ok_or_else(|| Error::InvalidArgument("too many leftovers journaled at once".into()))?;
        self.mem
            .write_all_at(&bytes, self.stub + JOURNAL_AT)
            .map_err(|e| self.os("writing the stub's journal", e))
    }
}
