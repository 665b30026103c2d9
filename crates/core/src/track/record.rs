//! Which run armed a target's tracking last: the generation (and, for
//! soft-dirty, the time) recorded by that run, kept in the target's marker
//! (uffd-wp) or in a file of predump's (soft-dirty).

use std::io;
use std::os::unix::fs::DirBuilderExt;

use crate::{Error, Result};

/// The run that armed a target's tracking last: the generation it recorded and,
/// for soft-dirty, when (CLOCK_BOOTTIME µs, taken while the target was frozen,
/// before the bits were cleared). The time orders our clears against those of
/// CRIU's pre-dumps, whose images say when they were made (`dump_uptime`, taken
/// in their own frozen window, after their clear): two runs cannot hold one
/// process frozen at once, so the one whose time is earlier also cleared first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Armed {
    pub generation: String,
    pub at_us: Option<u64>,
}

impl Armed {
    fn parse(text: &str) -> Option<Armed> {
        let mut words = text.split_whitespace();
        let generation = words.next()?.to_string();
        let at_us = words.next().and_then(|w| w.parse().ok());
        Some(Armed { generation, at_us })
    }
}

/// Where soft-dirty tracking records which run cleared a process's bits last.
///
/// Soft-dirty keeps no state in the target (the bits are the kernel's), so the
/// generation that uffd-wp keeps in its marker lives in a file of predump's:
/// `/run/predump/soft-dirty-PID-START` (root), else under the temporary
/// directory, per user: `GENERATION UPTIME_US`. The process's start time in the
/// name keeps a reused pid from finding its predecessor's record. Records are a
/// few bytes each, removed once their process is gone (and a tmpfs empties at boot).
#[derive(Debug)]
pub struct SoftDirtyRecord {
    path: std::path::PathBuf,
}

impl SoftDirtyRecord {
    pub fn of(pid: i32) -> Result<SoftDirtyRecord> {
        let start = crate::proc::stat(pid)?.start_time;
        Ok(Self::at(&record_dir(), pid, start))
    }

    pub(super) fn at(dir: &std::path::Path, pid: i32, start: u64) -> SoftDirtyRecord {
        SoftDirtyRecord {
            path: dir.join(format!("soft-dirty-{pid}-{start}")),
        }
    }

    pub fn read(&self) -> Result<Option<Armed>> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => Ok(Armed::parse(&text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::sys(format!("reading {}", self.path.display()), e)),
        }
    }

    /// Written whole or not at all (temporary file, then rename), with the time
    /// of writing: call it while the target is frozen, before clearing.
    pub fn write(&self, generation: &str) -> Result<()> {
        let dir = self.path.parent().expect("a file in a directory");
        let failed = |e| Error::sys(format!("writing {}", self.path.display()), e);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(failed)?;
        let tmp = self
            .path
            .with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, format!("{generation} {}\n", crate::proc::uptime_us()))
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .map_err(failed)?;
        self.prune_others(dir);
        Ok(())
    }

    /// Removes the records of processes that are gone (their pid free, or
    /// reused by a process started later), so the directory does not grow with
    /// every target ever tracked. Best effort: a record that cannot be removed
    /// stays, and a stale one is never trusted anyway (the start time is in
    /// its name).
    fn prune_others(&self, dir: &std::path::Path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path == self.path {
                continue;
            }
            let name = entry.file_name();
            let Some((pid, start)) = name
                .to_str()
                .and_then(|n| n.strip_prefix("soft-dirty-"))
                .and_then(|rest| rest.split_once('-'))
                .and_then(|(pid, start)| {
                    Some((pid.parse::<i32>().ok()?, start.parse::<u64>().ok()?))
                })
            else {
                continue; // not a record (a temporary file of a run in progress)
            };
            let alive = crate::proc::stat(pid).is_ok_and(|st| st.start_time == start);
            if !alive {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

fn record_dir() -> std::path::PathBuf {
    // SAFETY: geteuid takes no arguments and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        std::path::PathBuf::from("/run/predump")
    } else {
        std::env::temp_dir().join(format!("predump-{euid}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_dirty_records() {
        let dir = std::env::temp_dir().join(format!("predump-record-test-{}", std::process::id()));
        let r = SoftDirtyRecord::at(&dir, 42, 7);
        assert_eq!(r.read().unwrap(), None);
        let before = crate::proc::uptime_us();
        r.write("abc").unwrap();
        let first = r.read().unwrap().unwrap();
        assert_eq!(first.generation, "abc");
        let at = first.at_us.expect("the time of the arming");
        assert!(before <= at && at <= crate::proc::uptime_us());
        r.write("def").unwrap();
        assert_eq!(r.read().unwrap().unwrap().generation, "def");
        // Another start time of the same pid: another process.
        assert_eq!(SoftDirtyRecord::at(&dir, 42, 8).read().unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writing_a_soft_dirty_record_removes_those_of_gone_processes() {
        let dir = std::env::temp_dir().join(format!("predump-prune-test-{}", std::process::id()));
        let me = std::process::id() as i32;
        let my_start = crate::proc::stat(me).unwrap().start_time;
        let live = SoftDirtyRecord::at(&dir, me, my_start);
        live.write("mine").unwrap();
        // Above any pid_max: no such process. And our pid with another start
        // time: a process that had our pid before us.
        let gone = SoftDirtyRecord::at(&dir, 4_194_305, 1);
        let reused = SoftDirtyRecord::at(&dir, me, my_start + 1);
        gone.write("g").unwrap();
        reused.write("r").unwrap(); // prunes `gone`, keeps itself and `live`
        assert_eq!(gone.read().unwrap(), None);
        assert_eq!(reused.read().unwrap().unwrap().generation, "r");
        let other = dir.join("not-a-record");
        std::fs::write(&other, "x").unwrap();
        live.write("mine-again").unwrap(); // prunes `reused`
        assert_eq!(reused.read().unwrap(), None);
        assert_eq!(live.read().unwrap().unwrap().generation, "mine-again");
        assert!(other.exists(), "only records are touched");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
