//! The client's end: `predump pre-dump|dump --page-server`, speaking to
//! `criu page-server` or `predump page-server` as `criu pre-dump|dump
//! --page-server` does (criu/page-xfer.c): PS_IOV_PARENT while the target is
//! frozen, PS_IOV_OPEN2 when the pages are written, one PS_IOV_ADD_F per range
//! (followed by its data when PE_PRESENT), PS_IOV_CLOSE and its status.
//!
//! Like CRIU's client, the socket stays TCP_CORKed so that headers and page data
//! leave in full segments; unlike it, the cork is lifted while a reply is
//! awaited, the last one included (CRIU's client leaves the tail of a transfer
//! to the kernel's 200 ms cork timer).
//!
//! Page data comes from a pipe (spliced into the socket: zero-copy, for pages
//! the pipe references in the target) or from a buffer (sent, which copies:
//! right for a buffer that is reused, since a splice into a socket keeps
//! referencing the buffer's pages until the peer has acknowledged them; CRIU
//! 4.2's read mode to a page server sends wrong pages for that reason, see
//! shared/criu-reference/page-server-4.2/README.md). Every wait for the server
//! is bounded by a timeout and abortable; each failure says what was being
//! sent and why.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{splice, SpliceFFlags};
use nix::poll::PollFlags;

use super::link::{is_aborted, Abort, Link, TimedOut};
use super::tls::{self, TlsOptions};
use super::transport::Tls;
use super::wire::{self, Command, Dst, Format, Header, MAX_HEADER_LEN, PE_PRESENT};
use crate::{Error, Result, PAGE_SIZE};

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// A host name or an IP address (resolved as CRIU does, every address tried).
    pub address: String,
    pub port: u16,
    /// The header layout the server expects: [`Format::Criu42`] for CRIU 4.2 and
    /// later (and predump), [`Format::Criu41`] for CRIU up to 4.1 (Debian 12's
    /// 3.17). There is no handshake to find out.
    pub format: Format,
    pub tls: Option<TlsOptions>,
    /// How long a connect, or any wait for the server to read or answer, may
    /// take before the transfer is given up.
    pub timeout: Duration,
}

/// What a connection moved.
#[derive(Debug, Clone, Default)]
pub struct ClientStats {
    pub headers: u64,
    pub page_bytes: u64,
    /// Bytes written to the socket (TLS records included).
    pub bytes_sent: u64,
    /// Time spent sending page data.
    pub send_time: Duration,
}

enum Stream {
    Plain(Link),
    Tls(Box<Tls<rustls::ClientConnection>>),
}

impl Stream {
    fn link(&self) -> &Link {
        match self {
            Stream::Plain(l) => l,
            Stream::Tls(t) => t.link(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(l) => l.read(buf),
            Stream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(l) => l.write(buf),
            Stream::Tls(t) => t.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(_) => Ok(()),
            Stream::Tls(t) => t.flush(),
        }
    }
}

/// A connection to a page server.
pub struct Client {
    stream: Stream,
    format: Format,
    /// `address:port`, for messages.
    server: String,
    timeout: Duration,
    stats: ClientStats,
    /// Pipe data on its way into TLS records.
    buf: Vec<u8>,
    /// Bytes taken out of pipes so far (see [`Client::pipe_taken`]).
    pipe_taken: u64,
}

/// What a refused or broken send means for a user.
fn send_error(server: &str, what: String, e: io::Error, timeout: Duration) -> Error {
    if is_aborted(&e) {
        return Error::Interrupted;
    }
    let why = if e.get_ref().is_some_and(|i| i.is::<TimedOut>()) {
        let did = if what.starts_with("waiting") {
            "answered"
        } else {
            "read"
        };
        format!(
            "the page server {did} nothing for {} s",
            timeout.as_secs_f64()
        )
    } else {
        match e.raw_os_error() {
            Some(libc::EPIPE) | Some(libc::ECONNRESET) => {
                "the page server closed the connection (its own messages say why: a refused \
                 entry, a full disk, ...)"
                    .to_string()
            }
            _ => e.to_string(),
        }
    };
    Error::Connection {
        what: format!("{what} to the page server at {server}"),
        source: io::Error::new(e.kind(), why),
    }
}

impl Client {
    /// Connects (and shakes hands, with TLS).
    pub fn connect(o: &ClientOptions, abort: &Abort) -> Result<Client> {
        let server = format!("{}:{}", o.address, o.port);
        let addrs = (o.address.as_str(), o.port)
            .to_socket_addrs()
            .map_err(|e| Error::Connection {
                what: format!("resolving the page server's address {}", o.address),
                source: e,
            })?;
        let mut last = None;
        let mut sock = None;
        for a in addrs {
            if abort.is_aborted() {
                return Err(Error::Interrupted);
            }
            match TcpStream::connect_timeout(&a, o.timeout) {
                Ok(s) => {
                    sock = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let sock = sock.ok_or_else(|| Error::Connection {
            what: format!("connecting to the page server at {server}"),
            source: last.unwrap_or_else(|| io::Error::other("the name has no address")),
        })?;
        let link = Link::new(sock, abort.clone(), Some(o.timeout))?;
        // Full segments for page data; lifted while a reply is awaited. With
        // TCP_NODELAY too, lifting it sends the tail at once instead of after
        // Nagle's wait for the data in flight to be acknowledged.
        link.set_nodelay(true);
        link.set_cork(true);
        let stream = match &o.tls {
            None => Stream::Plain(link),
            Some(t) => {
                let config = tls::client_config(t, &o.address)?;
                let conn = rustls::ClientConnection::new(config, tls::server_name(&o.address))
                    .map_err(|e| Error::Tls(e.to_string()))?;
                Stream::Tls(Box::new(Tls::handshake(conn, link, &server)?))
            }
        };
        Ok(Client {
            stream,
            format: o.format,
            server,
            timeout: o.timeout,
            stats: ClientStats::default(),
            buf: Vec::new(),
            pipe_taken: 0,
        })
    }

    pub fn format(&self) -> Format {
        self.format
    }

    fn send_header(&mut self, h: &Header, what: &str) -> Result<()> {
        let mut buf = [0u8; MAX_HEADER_LEN];
        let n = h
            .encode(self.format, &mut buf)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        self.stats.headers += 1;
        let (server, timeout) = (self.server.clone(), self.timeout);
        self.stream
            .write_all(&buf[..n])
            .map_err(|e| send_error(&server, format!("sending {what}"), e, timeout))
    }

    /// Sends what is buffered now, and waits for `N` bytes of reply to `cmd`.
    fn reply<const N: usize>(&mut self, cmd: Command) -> Result<[u8; N]> {
        let (server, timeout) = (self.server.clone(), self.timeout);
        let ask = |e| send_error(&server, format!("sending {}", cmd.name()), e, timeout);
        self.stream.flush().map_err(ask)?;
        // Uncorked until the answer is in, not only for a moment: when the
        // server's window is shut at that moment, the tail cannot leave then,
        // and corked again it would wait for the kernel's 200 ms cork timer
        // once the window opens (seen at the end of every 1 GiB splice-mode
        // session: 200 ms with both sides idle, a sixth of the session).
        self.stream.link().set_cork(false);
        let mut out = [0u8; N];
        let got = self.stream.read_exact(&mut out);
        self.stream.link().set_cork(true);
        got.map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                send_error(
                    &server,
                    format!("waiting for the answer to {}", cmd.name()),
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the page server closed the connection without answering (its own messages say why)",
                    ),
                    timeout,
                )
            } else {
                send_error(&server, format!("waiting for the answer to {}", cmd.name()), e, timeout)
            }
        })?;
        Ok(out)
    }

    /// PS_IOV_PARENT: does the server's parent hold `dst`'s pagemap?
    pub fn parent(&mut self, dst: Dst) -> Result<bool> {
        self.send_header(
            &Header::new(Command::Parent, 0, 0, 0, Some(dst)),
            "PS_IOV_PARENT",
        )?;
        let r: [u8; 4] = self.reply(Command::Parent)?;
        Ok(i32::from_le_bytes(r) != 0)
    }

    /// PS_IOV_OPEN2: starts `dst`'s pagemap; answers whether the server's parent
    /// holds it (only then may PE_PARENT ranges be sent).
    pub fn open(&mut self, dst: Dst) -> Result<bool> {
        self.send_header(
            &Header::new(Command::Open2, 0, 0, 0, Some(dst)),
            "PS_IOV_OPEN2",
        )?;
        let r: [u8; 1] = self.reply(Command::Open2)?;
        Ok(r[0] != 0)
    }

    /// The headers of one range: one, unless the 4.1 layout's u32 page count
    /// cannot carry it.
    fn parts(&self, vaddr: u64, nr_pages: u64) -> impl Iterator<Item = (u64, u64)> {
        let max = wire::max_pages_per_header(self.format);
        let (mut at, mut left) = (vaddr, nr_pages);
        std::iter::from_fn(move || {
            (left > 0).then(|| {
                let n = left.min(max);
                let part = (at, n);
                at += n * PAGE_SIZE;
                left -= n;
                part
            })
        })
    }

    /// A range without data: PE_PARENT (the server's parent holds it) or PE_LAZY.
    pub fn entry(&mut self, dst: Dst, vaddr: u64, nr_pages: u64, flags: u32) -> Result<()> {
        if flags & PE_PRESENT != 0 {
            return Err(Error::InvalidArgument(
                "a PE_PRESENT range needs its pages".into(),
            ));
        }
        wire::check_range(vaddr, nr_pages).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        for (at, n) in self.parts(vaddr, nr_pages).collect::<Vec<_>>() {
            self.send_header(
                &Header::new(Command::AddF, flags, n, at, Some(dst)),
                &format!("{n} pages at {at:#x}"),
            )?;
        }
        Ok(())
    }

    /// A PE_PRESENT range whose data is `data` (copied into the socket: the
    /// buffer may be reused as soon as this returns).
    pub fn pages(&mut self, dst: Dst, vaddr: u64, flags: u32, data: &[u8]) -> Result<()> {
        let nr_pages = data.len() as u64 / PAGE_SIZE;
        self.check_present(vaddr, nr_pages, flags, data.len() as u64)?;
        let started = Instant::now();
        let mut off = 0usize;
        for (at, n) in self.parts(vaddr, nr_pages).collect::<Vec<_>>() {
            let what = format!("{n} pages at {at:#x} of {dst}");
            self.send_header(&Header::new(Command::AddF, flags, n, at, Some(dst)), &what)?;
            let len = (n * PAGE_SIZE) as usize;
            let (server, timeout) = (self.server.clone(), self.timeout);
            self.stream
                .write_all(&data[off..off + len])
                .map_err(|e| send_error(&server, format!("sending {what}"), e, timeout))?;
            off += len;
        }
        self.stats.page_bytes += data.len() as u64;
        self.stats.send_time += started.elapsed();
        Ok(())
    }

    /// A PE_PRESENT range of `nr_pages` whose data `fill` puts into `buf`,
    /// a piece at a time (`fill(piece, offset in the range)` fills the whole
    /// piece): one header for the range, however large, and its data copied
    /// into the socket from `buf`, which is reused.
    pub fn pages_with(
        &mut self,
        dst: Dst,
        vaddr: u64,
        nr_pages: u64,
        flags: u32,
        buf: &mut [u8],
        mut fill: impl FnMut(&mut [u8], u64) -> Result<()>,
    ) -> Result<()> {
        self.check_present(vaddr, nr_pages, flags, nr_pages * PAGE_SIZE)?;
        if buf.is_empty() {
            return Err(Error::InvalidArgument("pages_with needs a buffer".into()));
        }
        let started = Instant::now();
        let mut done = 0u64;
        for (at, n) in self.parts(vaddr, nr_pages).collect::<Vec<_>>() {
            let what = format!("{n} pages at {at:#x} of {dst}");
            self.send_header(&Header::new(Command::AddF, flags, n, at, Some(dst)), &what)?;
            let mut left = n * PAGE_SIZE;
            while left > 0 {
                let len = (left as usize).min(buf.len());
                fill(&mut buf[..len], done)?;
                let (server, timeout) = (self.server.clone(), self.timeout);
                self.stream
                    .write_all(&buf[..len])
                    .map_err(|e| send_error(&server, format!("sending {what}"), e, timeout))?;
                left -= len as u64;
                done += len as u64;
            }
        }
        self.stats.page_bytes += nr_pages * PAGE_SIZE;
        self.stats.send_time += started.elapsed();
        Ok(())
    }

    /// A PE_PRESENT range of `nr_pages` whose data waits in `pipe`: spliced into
    /// the socket without a copy (through a bounded buffer with TLS). The pipe
    /// must reference pages that nobody reuses (the target's own, as splice
    /// mode holds them), since the socket keeps referencing them until sent.
    pub fn pages_from_pipe(
        &mut self,
        dst: Dst,
        vaddr: u64,
        nr_pages: u64,
        flags: u32,
        pipe: BorrowedFd<'_>,
    ) -> Result<()> {
        self.check_present(vaddr, nr_pages, flags, nr_pages * PAGE_SIZE)?;
        let started = Instant::now();
        for (at, n) in self.parts(vaddr, nr_pages).collect::<Vec<_>>() {
            let what = format!("{n} pages at {at:#x} of {dst}");
            self.send_header(&Header::new(Command::AddF, flags, n, at, Some(dst)), &what)?;
            let (server, timeout) = (self.server.clone(), self.timeout);
            self.pipe_to_socket(pipe, n * PAGE_SIZE)
                .map_err(|e| send_error(&server, format!("sending {what}"), e, timeout))?;
        }
        self.stats.page_bytes += nr_pages * PAGE_SIZE;
        self.stats.send_time += started.elapsed();
        Ok(())
    }

    /// Bytes taken out of pipes by [`Client::pages_from_pipe`] so far, sent or
    /// not: after a failed send, what is left of a range in its pipe.
    pub fn pipe_taken(&self) -> u64 {
        self.pipe_taken
    }

    fn check_present(&self, vaddr: u64, nr_pages: u64, flags: u32, len: u64) -> Result<()> {
        if flags & PE_PRESENT == 0 || len != nr_pages * PAGE_SIZE {
            return Err(Error::InvalidArgument(format!(
                "pages sent with flags {flags:#x} and {len} bytes: PE_PRESENT and whole pages"
            )));
        }
        wire::check_range(vaddr, nr_pages).map_err(|e| Error::InvalidArgument(e.to_string()))
    }

    fn pipe_to_socket(&mut self, pipe: BorrowedFd<'_>, len: u64) -> io::Result<()> {
        let mut left = len;
        match &mut self.stream {
            Stream::Plain(link) => {
                while left > 0 {
                    let flags = SpliceFFlags::SPLICE_F_MOVE
                        | SpliceFFlags::SPLICE_F_MORE
                        | SpliceFFlags::SPLICE_F_NONBLOCK;
                    match splice(pipe, None, link.fd(), None, left as usize, flags) {
                        Ok(0) => return Err(io::Error::other("the pages' pipe ran dry")),
                        Ok(n) => {
                            left -= n as u64;
                            link.sent += n as u64;
                            self.pipe_taken += n as u64;
                        }
                        Err(Errno::EAGAIN) => link.wait(PollFlags::POLLOUT)?,
                        Err(Errno::EINTR) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Stream::Tls(t) => {
                if self.buf.is_empty() {
                    self.buf = vec![0; 256 << 10];
                }
                while left > 0 {
                    let want = (left as usize).min(self.buf.len());
                    let n = nix::unistd::read(pipe.as_fd(), &mut self.buf[..want])?;
                    if n == 0 {
                        return Err(io::Error::other("the pages' pipe ran dry"));
                    }
                    self.pipe_taken += n as u64;
                    t.write_all(&self.buf[..n])?;
                    left -= n as u64;
                }
            }
        }
        Ok(())
    }

    /// PS_IOV_CLOSE: waits until the server says everything is stored (status
    /// 0), then hangs up.
    pub fn close(mut self) -> Result<ClientStats> {
        self.send_header(&Header::new(Command::Close, 0, 0, 0, None), "PS_IOV_CLOSE")?;
        let r: [u8; 4] = self.reply(Command::Close)?;
        let status = i32::from_le_bytes(r);
        if let Stream::Tls(t) = &mut self.stream {
            t.stream.conn.send_close_notify();
            let _ = t.flush();
        }
        self.stats.bytes_sent = self.stream.link().sent;
        if status != 0 {
            return Err(Error::Protocol {
                detail: format!(
                    "the page server at {} answered PS_IOV_CLOSE with status {status}",
                    self.server
                ),
            });
        }
        self.stream.link().shutdown_write();
        Ok(self.stats)
    }

    pub fn stats(&self) -> ClientStats {
        ClientStats {
            bytes_sent: self.stream.link().sent,
            ..self.stats.clone()
        }
    }
}
