//! The lock that keeps two predump runs off one target's dirty tracking.

use crate::{Error, Result};

/// Keeps other predump runs off one target's dirty tracking while held.
///
/// A run that takes the dirty pages re-arms them: two runs at once would each
/// take some of the other's pages, and both chains would silently miss writes.
/// Frozen runs exclude each other through ptrace already; a freeze-free run
/// does not stop the target, so nothing else would. The lock is an abstract
/// unix socket named after the process (pid and start time): only one can be
/// bound, it needs no file, and the kernel frees it when its holder exits, even
/// by SIGKILL, so a crashed run never leaves the target locked. (Abstract names
/// are per network namespace: runs from different namespaces do not see each
/// other's locks.)
#[derive(Debug)]
pub struct TrackLock {
    _socket: std::os::unix::net::UnixDatagram,
}

impl TrackLock {
    /// Takes the lock of process `pid` started at `start_time` (clock ticks
    /// after boot), or fails with `Error::Busy` at once: never waits.
    pub fn acquire(pid: i32, start_time: u64) -> Result<TrackLock> {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("predump-track pid={pid} start={start_time}");
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .map_err(|e| Error::sys("naming the tracking lock", e))?;
        match std::os::unix::net::UnixDatagram::bind_addr(&addr) {
            Ok(socket) => Ok(TrackLock { _socket: socket }),
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => Err(Error::Busy { pid }),
            Err(e) => Err(Error::sys("binding the tracking lock", e)),
        }
    }
}
