//! The TCP side of a page-server connection: sockets that wait in `poll` (never
//! in a blocking system call), so that a caller can abort a server waiting for a
//! client or a transfer stuck on a peer from another thread, and so that a peer
//! that stops sending or reading is noticed after a timeout instead of hanging
//! predump forever.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{setsockopt, sockopt};

use crate::{Error, Result};

/// Stops a server or a transfer from another thread: every wait of every
/// [`Link`] made with it returns [`Aborted`] from then on.
#[derive(Clone)]
pub struct Abort {
    inner: Arc<AbortInner>,
}

struct AbortInner {
    /// Readable once aborted: waits poll it beside their socket.
    read: OwnedFd,
    write: OwnedFd,
    aborted: AtomicBool,
}

impl Abort {
    pub fn new() -> Result<Abort> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
            .map_err(|e| Error::sys("pipe2", e))?;
        Ok(Abort {
            inner: Arc::new(AbortInner {
                read,
                write,
                aborted: AtomicBool::new(false),
            }),
        })
    }

    /// Aborts: idempotent, callable from any thread.
    pub fn abort(&self) {
        if !self.inner.aborted.swap(true, Ordering::SeqCst) {
            // A full pipe is readable already: the result does not matter.
            let _ = nix::unistd::write(&self.inner.write, &[1]);
        }
    }

    pub fn is_aborted(&self) -> bool {
        self.inner.aborted.load(Ordering::SeqCst)
    }

    /// Waits until `fd` is ready for `events`, the abort comes, or `timeout`
    /// passes (None: no limit).
    pub fn wait(
        &self,
        fd: BorrowedFd<'_>,
        events: PollFlags,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if self.is_aborted() {
                return Err(aborted());
            }
            let left = match deadline {
                None => PollTimeout::NONE,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, TimedOut));
                    }
                    PollTimeout::try_from(left.as_millis().clamp(1, i32::MAX as u128) as i32)
                        .unwrap_or(PollTimeout::MAX)
                }
            };
            let mut fds = [
                PollFd::new(fd, events),
                PollFd::new(self.inner.read.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, left) {
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => {
                    if fds[1].any().unwrap_or(false) {
                        return Err(aborted());
                    }
                    // Readiness, an error or a hang-up: the next call says which.
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The error payload of a wait that was aborted.
#[derive(Debug)]
pub struct Aborted;
impl std::fmt::Display for Aborted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}
impl std::error::Error for Aborted {}

/// The error payload of a wait that timed out.
#[derive(Debug)]
pub struct TimedOut;
impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the peer made no progress within the timeout")
    }
}
impl std::error::Error for TimedOut {}

fn aborted() -> io::Error {
    io::Error::other(Aborted)
}

/// Whether `e` is an abort (as opposed to a failure of the connection).
pub fn is_aborted(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Aborted>())
}

/// A connected TCP socket, non-blocking underneath, blocking for its user
/// through [`Abort::wait`] with an optional timeout per wait.
pub struct Link {
    sock: TcpStream,
    abort: Abort,
    /// How long one read or write may wait for the peer.
    pub timeout: Option<Duration>,
    /// Bytes moved through the socket, both ways.
    pub received: u64,
    pub sent: u64,
}

impl Link {
    pub fn new(sock: TcpStream, abort: Abort, timeout: Option<Duration>) -> Result<Link> {
        sock.set_nonblocking(true)
            .map_err(|e| Error::sys("making the socket non-blocking", e))?;
        // A peer whose host vanishes (no FIN, no RST) is noticed within about
        // 90 s instead of the kernel's default two hours.
        let fd = sock.as_fd();
        let _ = setsockopt(&fd, sockopt::KeepAlive, &true);
        let _ = setsockopt(&fd, sockopt::TcpKeepIdle, &30);
        let _ = setsockopt(&fd, sockopt::TcpKeepInterval, &10);
        let _ = setsockopt(&fd, sockopt::TcpKeepCount, &6);
        Ok(Link {
            sock,
            abort,
            timeout,
            received: 0,
            sent: 0,
        })
    }

    pub fn peer(&self) -> Option<SocketAddr> {
        self.sock.peer_addr().ok()
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    pub fn wait(&self, events: PollFlags) -> io::Result<()> {
        self.abort.wait(self.sock.as_fd(), events, self.timeout)
    }

    pub fn set_nodelay(&self, on: bool) {
        let _ = self.sock.set_nodelay(on);
    }

    pub fn set_cork(&self, on: bool) {
        let _ = setsockopt(&self.sock.as_fd(), sockopt::TcpCork, &on);
    }

    /// Ends our sending side (FIN): the peer reads EOF once it has read the rest.
    pub fn shutdown_write(&self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
    }

    pub fn abort(&self) -> &Abort {
        &self.abort
    }
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match (&self.sock).read(buf) {
                Ok(n) => {
                    self.received += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait(PollFlags::POLLIN)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match (&self.sock).write(buf) {
                Ok(n) => {
                    self.sent += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait(PollFlags::POLLOUT)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for Link {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.sock.as_raw_fd()
    }
}

/// A listening socket for one connection, as CRIU's page server makes it:
/// `address` an IPv4 or IPv6 literal (None: every IPv4 address), port 0 for
/// one the kernel picks.
pub struct Listener {
    sock: TcpListener,
    abort: Abort,
}

impl Listener {
    pub fn bind(address: Option<&str>, port: u16, abort: Abort) -> Result<Listener> {
        let ip: IpAddr = match address {
            None => IpAddr::from([0, 0, 0, 0]),
            Some(a) => a.parse().map_err(|_| {
                Error::InvalidArgument(format!(
                    "--address {a}: the page server listens on an IPv4 or IPv6 address, not a host name"
                ))
            })?,
        };
        let at = SocketAddr::new(ip, port);
        let sock =
            TcpListener::bind(at).map_err(|e| connection_error(format!("listening on {at}"), e))?;
        sock.set_nonblocking(true)
            .map_err(|e| Error::sys("making the listening socket non-blocking", e))?;
        Ok(Listener { sock, abort })
    }

    /// The address and port it listens on (the port the kernel chose for 0).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.sock
            .local_addr()
            .map_err(|e| Error::sys("getsockname", e))
    }

    /// Waits for one connection (no time limit; an abort ends the wait) and
    /// closes the listening socket, as CRIU's page server does.
    pub fn accept_one(self) -> Result<TcpStream> {
        loop {
            match self.sock.accept() {
                Ok((s, _)) => return Ok(s),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self
                    .abort
                    .wait(self.sock.as_fd(), PollFlags::POLLIN, None)
                    .map_err(|e| connection_error("waiting for a client".into(), e))?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => return Err(connection_error("accepting a client".into(), e)),
            }
        }
    }
}

/// A failure of the connection (or the wait for it), as the core's error.
pub fn connection_error(what: String, e: io::Error) -> Error {
    if is_aborted(&e) {
        return Error::Interrupted;
    }
    Error::Connection { what, source: e }
}
