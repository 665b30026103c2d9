//! What uffd-wp tracking leaves in the target, from predump's side: the
//! marker memfd that names our userfaultfd (how a later run finds it, and
//! tells it from the target's own), the generation the marker records, and
//! where in the target's fd table the two fds go.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};

use crate::proc::proc_error;
use crate::sys::pidfd::PidFd;
use crate::{Error, Result};

/// The prefix of the marker memfd's name (memfd names show in /proc/PID/fd as
/// `/memfd:NAME (deleted)`; at most 249 bytes).
const MARKER_PREFIX: &str = "predump-uffd";
/// The size of the fd table every process starts with (NR_OPEN_DEFAULT,
/// BITS_PER_LONG); larger tables are powers of two times 128 fds on 64-bit.
const FD_TABLE_MIN: u64 = 64;
/// The moved fds go this far below the top of the table.
const FD_TOP_GAP: u64 = 8;

/// predump's uffd in a target, as found by its marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ours {
    pub(super) uffd_fd: i32,
    pub(super) marker_fd: i32,
}

// The tracking generation is a string that the run which armed the tracking
// last writes into the marker (`Tracker::set_generation`): an images directory
// made by that run records the same string, so a later run can tell whether the
// target's dirty state is relative to that directory, and not to a run that
// armed and then failed. The marker then holds one page.

/// The target's marker, taken with pidfd_getfd.
fn marker_file(pid: i32, marker_fd: i32) -> Result<File> {
    Ok(File::from(PidFd::open(pid)?.get_fd(marker_fd)?))
}

pub(super) fn read_generation(pid: i32, marker_fd: i32) -> Result<Option<String>> {
    let mut buf = [0u8; 256];
    let n = marker_file(pid, marker_fd)?
        .read_at(&mut buf, 0)
        .map_err(|e| Error::sys("reading the tracking marker", e))?;
    Ok((n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned()))
}

pub(super) fn write_generation(pid: i32, marker_fd: i32, generation: &str) -> Result<()> {
    let marker = marker_file(pid, marker_fd)?;
    marker
        .set_len(0)
        .and_then(|()| marker.write_all_at(generation.as_bytes(), 0))
        .map_err(|e| Error::sys("writing the tracking marker", e))
}

/// The fd number of predump's uffd in process `pid`, if any.
///
/// How it is recognised: `Tracker::attach_with` leaves, next to the uffd, an empty memfd named
/// `predump-uffd pid=P fd=N ino=I`. An fd N of the target is ours only if a
/// marker of this process (P = `pid`, so a forked child holding its parent's
/// copy never takes the parent's uffd for its own) names it, N links to
/// `anon_inode:[userfaultfd]`, and its inode number is I. Every userfaultfd has an
/// inode of its own (anon_inode_create_getfile; the tests check it), so the
/// target's own userfaultfd, even at fd N after ours was closed, cannot match;
/// only a program that made a memfd with our name on purpose could. The fd
/// number alone (or the uffd's features in fdinfo) would not do: a program may
/// make uffds with the same features and dup them anywhere.
pub fn find_ours(pid: i32) -> Result<Option<i32>> {
    Ok(scan_fds(pid)?.0.map(|o| o.uffd_fd))
}

/// (our uffd if its marker is valid, the fds of stale markers: markers whose
/// uffd is gone, e.g. closed by the target's close_range).
/// Also returns the highest fd open in the target.
pub(super) fn scan_fds(pid: i32) -> Result<(Option<Ours>, Vec<i32>, i32)> {
    let dir = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&dir).map_err(|e| proc_error(pid, &dir, e))?;
    let mut found = None;
    let mut stale = Vec::new();
    let mut max_fd = 0;
    for entry in entries {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        max_fd = max_fd.max(fd);
        // An fd closed meanwhile has no link: not ours.
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let link = link.to_string_lossy();
        let Some(name) = link
            .strip_prefix("/memfd:")
            .map(|n| n.strip_suffix(" (deleted)").unwrap_or(n))
        else {
            continue;
        };
        let Some((marker_pid, uffd_fd, ino)) = parse_marker(name) else {
            continue;
        };
        if marker_pid != pid {
            // A parent's marker inherited by fork: not this process's tracking.
            continue;
        }
        if found.is_none() && is_uffd_with_ino(pid, uffd_fd, ino) {
            found = Some(Ours {
                uffd_fd,
                marker_fd: fd,
            });
        } else {
            stale.push(fd);
        }
    }
    Ok((found, stale, max_fd))
}

/// The fds of other processes' tracking that `pid` inherited by fork (a child
/// forked while its parent held predump's tracking gets copies of the parent's
/// uffd and marker, close-on-exec but kept until it execs): each uffd named
/// by such a marker that `pid` holds, then the markers. They are no tracking of
/// `pid`'s own (the parent holds its own fds), but they keep the parent's uffd
/// open, and with it the registrations its release should drop: a run that
/// ends the tracking of a tree closes them too.
pub fn inherited(pid: i32) -> Result<Vec<i32>> {
    let dir = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&dir).map_err(|e| proc_error(pid, &dir, e))?;
    let mut uffds = Vec::new();
    let mut markers = Vec::new();
    for entry in entries {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let link = link.to_string_lossy();
        let Some((marker_pid, uffd_fd, ino)) = link
            .strip_prefix("/memfd:")
            .map(|n| n.strip_suffix(" (deleted)").unwrap_or(n))
            .and_then(parse_marker)
        else {
            continue;
        };
        if marker_pid == pid {
            continue;
        }
        markers.push(fd);
        if is_uffd_with_ino(pid, uffd_fd, ino) && !uffds.contains(&uffd_fd) {
            uffds.push(uffd_fd);
        }
    }
    // The uffds first: a run killed in between leaves a marker alone, which the
    // next run closes (it names a uffd no longer there, but it is still a copy).
    uffds.extend(markers);
    Ok(uffds)
}

/// The marker's name for uffd fd `fd` with inode `ino` of process `pid`.
pub(super) fn marker_name(pid: i32, fd: i32, ino: u64) -> String {
    format!("{MARKER_PREFIX} pid={pid} fd={fd} ino={ino}")
}

/// (pid, fd, ino) of a marker name.
fn parse_marker(name: &str) -> Option<(i32, i32, u64)> {
    let rest = name.strip_prefix(MARKER_PREFIX)?.strip_prefix(' ')?;
    let mut it = rest.split(' ');
    let pid = it.next()?.strip_prefix("pid=")?.parse().ok()?;
    let fd = it.next()?.strip_prefix("fd=")?.parse().ok()?;
    let ino = it.next()?.strip_prefix("ino=")?.parse().ok()?;
    it.next().is_none().then_some((pid, fd, ino))
}

fn is_uffd_with_ino(pid: i32, fd: i32, ino: u64) -> bool {
    let path = format!("/proc/{pid}/fd/{fd}");
    let is_uffd =
        std::fs::read_link(&path).is_ok_and(|l| l.to_string_lossy() == "anon_inode:[userfaultfd]");
    // metadata() follows the magic link to the open file's inode.
    is_uffd && std::fs::metadata(&path).is_ok_and(|m| m.ino() == ino)
}

/// Where the fds left in the target go: the lowest free fd from here up.
/// The target's fd table holds at least `FD_TABLE_MIN` fds and more than its
/// highest open fd, in sizes of 64, 128, 256…: a base just below the smallest
/// such size above `max_fd` lies inside the table, so F_DUPFD does not grow it
/// (unless every fd from there up is taken). Below the RLIMIT_NOFILE soft limit
/// (F_DUPFD fails with EINVAL at or above it), at least 3.
pub(super) fn fd_base(pid: i32, max_fd: i32) -> u64 {
    let soft = crate::proc::nofile_soft(pid).unwrap_or(1024);
    base_for(max_fd, soft)
}

/// `fd_base` without I/O: `soft` is the RLIMIT_NOFILE soft limit.
fn base_for(max_fd: i32, soft: u64) -> u64 {
    let table = (max_fd.max(0) as u64 + 1)
        .next_power_of_two()
        .max(FD_TABLE_MIN);
    (table - FD_TOP_GAP)
        .min(soft.saturating_sub(FD_TOP_GAP))
        .max(3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers() {
        let n = marker_name(42, 997, 123456);
        assert_eq!(n, "predump-uffd pid=42 fd=997 ino=123456");
        assert_eq!(parse_marker(&n), Some((42, 997, 123456)));
        assert_eq!(parse_marker("predump-uffd pid=1 fd=2"), None);
        assert_eq!(parse_marker("predump-uffd pid=1 fd=2 ino=3 x"), None);
        assert_eq!(parse_marker("other pid=1 fd=2 ino=3"), None);
    }

    #[test]
    fn limits() {
        let text =
            "Limit                     Soft Limit           Hard Limit           Units     \n\
Max processes             63883                63883                processes \n\
Max open files            1024                 524288               files     \n";
        assert_eq!(crate::proc::parse_nofile_soft(text), Some(1024));
        assert_eq!(
            crate::proc::parse_nofile_soft(
                "Max open files            unlimited            unlimited            files\n"
            ),
            Some(u64::MAX)
        );
        assert_eq!(base_for(5, 1024), 56);
        assert_eq!(base_for(63, 1024), 56);
        assert_eq!(base_for(64, 1024), 120);
        assert_eq!(base_for(200, 1 << 20), 248);
        assert_eq!(base_for(200, 100), 92);
        assert_eq!(base_for(0, 4), 3);
        assert!(fd_base(std::process::id() as i32, 3) >= 3);
    }
}
