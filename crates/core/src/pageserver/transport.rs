//! How the server reads a client's stream: plain TCP, with page data spliced
//! from the socket into a pipe that a writer thread splices into the images
//! meanwhile (see `spool`); TLS (see `tls`) decrypted into a few buffers
//! whose pages are put into the same kind of pipe by reference, so that
//! decrypting and writing overlap there too. The client's side is in `client`.

use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{splice, vmsplice, SpliceFFlags};
use nix::poll::PollFlags;

use super::link::{connection_error, is_aborted, Link};
use super::spool::Spool;
use crate::anon::AnonMap;
use crate::{Error, Result};

/// A client connection, as the session reads it.
pub trait Conn: Read + Write {
    /// Moves exactly `len` bytes of the stream into `out` (at its position).
    /// The bytes may still be on their way into the file when this returns:
    /// [`Conn::flush_writes`] waits for them.
    fn copy_to_file(&mut self, out: &Arc<File>, len: u64) -> std::result::Result<(), CopyError>;
    /// Waits until every byte of [`Conn::copy_to_file`] is in its file; a
    /// failed write is returned here if no copy returned it before.
    fn flush_writes(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// How the session describes a read failure of this connection.
    fn read_error(&self, what: String, e: io::Error) -> Error {
        connection_error(what, e)
    }
    /// After the last reply: TLS says goodbye (close_notify), as GnuTLS's
    /// `gnutls_bye` in CRIU; plain TCP has nothing to say.
    fn say_goodbye(&mut self) {}
    /// The raw bytes received (TLS records included).
    fn received(&self) -> u64;
}

/// Why page data did not reach the image.
#[derive(Debug)]
pub enum CopyError {
    /// The connection failed or ended, with `missing` bytes not received.
    Net { e: io::Error, missing: u64 },
    /// Writing the image failed.
    File(io::Error),
}

/// Plain TCP: page data is spliced from the socket into the spool's pipe and
/// from there into the image by the spool's writer, never copied through user
/// memory.
pub struct Plain {
    pub link: Link,
    spool: Option<Spool>,
    /// Set when the kernel refused splice for this socket.
    copy_buf: Vec<u8>,
}

impl Plain {
    pub fn new(link: Link) -> Plain {
        Plain {
            link,
            spool: None,
            copy_buf: Vec::new(),
        }
    }

    /// The fallback when splice from the socket is refused: through a bounded
    /// buffer into the spool's pipe.
    fn copy_through_buffer(&mut self, mut len: u64) -> std::result::Result<(), CopyError> {
        if self.copy_buf.is_empty() {
            self.copy_buf = vec![0; 1 << 16];
        }
        let spool = self.spool.as_ref().expect("started by copy_to_file");
        while len > 0 {
            let want = (len as usize).min(self.copy_buf.len());
            let n = match self.link.read(&mut self.copy_buf[..want]) {
                Ok(0) => {
                    return Err(CopyError::Net {
                        e: eof(),
                        missing: len,
                    })
                }
                Ok(n) => n,
                Err(e) => return Err(CopyError::Net { e, missing: len }),
            };
            // The writer empties the pipe (into nothing after a failed write).
            let mut data = &self.copy_buf[..n];
            while !data.is_empty() {
                match nix::unistd::write(spool.pipe(), data) {
                    Ok(m) => data = &data[m..],
                    Err(Errno::EINTR) => {}
                    Err(e) => return Err(CopyError::File(e.into())),
                }
            }
            if spool.failed() {
                return Err(spool_error(spool));
            }
            len -= n as u64;
        }
        Ok(())
    }
}

fn spool_error(spool: &Spool) -> CopyError {
    CopyError::File(
        spool
            .take_error()
            .unwrap_or_else(|| io::Error::other("writing the pages image failed")),
    )
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "the connection was closed")
}

impl Read for Plain {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.link.read(buf)
    }
}

impl Write for Plain {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.link.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Conn for Plain {
    fn received(&self) -> u64 {
        self.link.received
    }

    fn copy_to_file(&mut self, out: &Arc<File>, len: u64) -> std::result::Result<(), CopyError> {
        if self.spool.is_none() {
            self.spool = Some(Spool::start().map_err(CopyError::File)?);
        }
        let spool = self.spool.as_mut().expect("started above");
        if spool.failed() {
            return Err(spool_error(spool));
        }
        spool.submit(out, len).map_err(CopyError::File)?;
        let mut left = len;
        while left > 0 {
            let spool = self.spool.as_ref().expect("started above");
            let moved = splice(
                self.link.fd(),
                None,
                spool.pipe(),
                None,
                (left as usize).min(spool.size()),
                SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
            );
            let n = match moved {
                Ok(0) => {
                    return Err(CopyError::Net {
                        e: eof(),
                        missing: left,
                    })
                }
                Ok(n) => n,
                // The pipe is full (the writer behind) or the socket empty:
                // wait for room first (at once if there is), then for data.
                // Room comes as fast as the disk takes the data: no timeout
                // (the client's is for the client), an abort ends it.
                Err(Errno::EAGAIN) => {
                    let waited = self
                        .link
                        .abort()
                        .wait(spool.pipe(), PollFlags::POLLOUT, None)
                        .and_then(|()| self.link.wait(PollFlags::POLLIN));
                    if spool.failed() {
                        return Err(spool_error(spool));
                    }
                    waited.map_err(|e| CopyError::Net { e, missing: left })?;
                    continue;
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EINVAL) => return self.copy_through_buffer(left),
                Err(e) => {
                    return Err(CopyError::Net {
                        e: e.into(),
                        missing: left,
                    })
                }
            };
            self.link.received += n as u64;
            left -= n as u64;
            if spool.failed() {
                return Err(spool_error(spool));
            }
        }
        Ok(())
    }

    fn flush_writes(&mut self) -> io::Result<()> {
        match &self.spool {
            Some(s) => s.flush(),
            None => Ok(()),
        }
    }
}

/// TLS: page data is decrypted into one of [`TLS_BUFFERS`] buffers, whose
/// pages are then put into a spool's pipe by reference (vmsplice, no copy)
/// and written into the image by the spool's writer while the next records
/// are decrypted into the next buffer.
pub struct Tls<C> {
    pub stream: rustls::StreamOwned<C, Link>,
    /// The server's page data path, made at the first page data.
    pages: Option<Decrypted>,
}

/// How many buffers of decrypted page data may wait for the writer.
const TLS_BUFFERS: usize = 4;
/// The size of each (64 TLS records of 16 KiB).
const TLS_BUFFER_BYTES: usize = 1 << 20;

/// The spool and the buffers that feed its pipe. The spool comes first so
/// that it is dropped (its writer joined) before the buffers are unmapped.
struct Decrypted {
    spool: Spool,
    /// Each buffer, and how many bytes the spool must have written before it
    /// may be filled again (its bytes are out of the pipe then).
    bufs: Vec<(AnonMap, u64)>,
    next: usize,
}

impl Decrypted {
    fn start() -> io::Result<Decrypted> {
        let spool = Spool::start()?;
        let mut bufs = Vec::with_capacity(TLS_BUFFERS);
        for _ in 0..TLS_BUFFERS {
            let b = AnonMap::new(TLS_BUFFER_BYTES, "a TLS receive buffer")
                .map_err(|e| io::Error::other(e.to_string()))?;
            bufs.push((b, 0));
        }
        Ok(Decrypted {
            spool,
            bufs,
            next: 0,
        })
    }
}

impl<C, S> Tls<C>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    /// Runs the handshake to its end over `link`.
    pub fn handshake(conn: C, link: Link, peer: &str) -> Result<Tls<C>> {
        let mut stream = rustls::StreamOwned::new(conn, link);
        while stream.conn.is_handshaking() {
            if let Err(e) = stream.conn.complete_io(&mut stream.sock) {
                if is_aborted(&e) {
                    return Err(Error::Interrupted);
                }
                return Err(Error::Tls(format!("the handshake with {peer} failed: {e}")));
            }
        }
        Ok(Tls {
            stream,
            pages: None,
        })
    }

    pub fn link(&self) -> &Link {
        &self.stream.sock
    }

    /// The peer's certificate (the first of its chain).
    pub fn peer_certificate(&self) -> Option<rustls::pki_types::CertificateDer<'static>> {
        self.stream
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned())
    }
}

impl<C, S> Read for Tls<C>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

impl<C, S> Write for Tls<C>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

impl Conn for Tls<rustls::ServerConnection> {
    fn copy_to_file(
        &mut self,
        out: &Arc<File>,
        mut len: u64,
    ) -> std::result::Result<(), CopyError> {
        if self.pages.is_none() {
            self.pages = Some(Decrypted::start().map_err(CopyError::File)?);
        }
        let Tls { stream, pages } = self;
        let d = pages.as_mut().expect("made above");
        if d.spool.failed() {
            return Err(spool_error(&d.spool));
        }
        while len > 0 {
            let (buf, mark) = &mut d.bufs[d.next];
            // The buffer's last bytes must be out of the pipe before it is
            // overwritten.
            d.spool.wait_written(*mark).map_err(CopyError::File)?;
            let want = (len as usize).min(buf.len());
            let mut got = 0;
            while got < want {
                match stream.read(&mut buf.as_mut_slice()[got..want]) {
                    Ok(0) => {
                        return Err(CopyError::Net {
                            e: eof(),
                            missing: len - got as u64,
                        })
                    }
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(CopyError::Net {
                            e,
                            missing: len - got as u64,
                        })
                    }
                }
            }
            d.spool.submit(out, got as u64).map_err(CopyError::File)?;
            let mut data = &buf.as_slice()[..got];
            while !data.is_empty() {
                // SAFETY: `data` is in a live mapping of ours; the pipe then
                // references its pages, and the buffer is not written again
                // before `wait_written` has said that the writer spliced these
                // bytes out of the pipe (the mark set below).
                let put = unsafe {
                    vmsplice(
                        d.spool.pipe(),
                        &[IoSlice::new(data)],
                        SpliceFFlags::SPLICE_F_NONBLOCK,
                    )
                };
                match put {
                    Ok(n) => data = &data[n..],
                    Err(Errno::EINTR) => {}
                    // The pipe is full: the writer empties it (into nothing
                    // after a failed write); an abort ends the wait.
                    Err(Errno::EAGAIN) => {
                        stream
                            .sock
                            .abort()
                            .wait(d.spool.pipe(), PollFlags::POLLOUT, None)
                            .map_err(|e| CopyError::Net { e, missing: len })?;
                    }
                    Err(e) => return Err(CopyError::File(e.into())),
                }
            }
            *mark = d.spool.submitted();
            d.next = (d.next + 1) % d.bufs.len();
            len -= got as u64;
            if d.spool.failed() {
                return Err(spool_error(&d.spool));
            }
        }
        Ok(())
    }

    fn flush_writes(&mut self) -> io::Result<()> {
        match &self.pages {
            Some(d) => d.spool.flush(),
            None => Ok(()),
        }
    }

    fn say_goodbye(&mut self) {
        self.stream.conn.send_close_notify();
        let _ = self.stream.flush();
    }

    fn received(&self) -> u64 {
        self.stream.sock.received
    }
}
