//! How the server reads a client's stream: plain TCP, with page data spliced
//! from the socket into a pipe that a writer thread splices into the images
//! meanwhile (see `spool`); TLS (see `tls`) through a bounded buffer. The
//! client's side is in `client`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{splice, SpliceFFlags};
use nix::poll::PollFlags;

use super::link::{connection_error, is_aborted, Link};
use super::spool::Spool;
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

/// TLS: page data is decrypted through a bounded buffer (no splice).
pub struct Tls<C> {
    pub stream: rustls::StreamOwned<C, Link>,
    buf: Vec<u8>,
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
            buf: Vec::new(),
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
        if self.buf.is_empty() {
            self.buf = vec![0; 256 << 10];
        }
        while len > 0 {
            let want = (len as usize).min(self.buf.len());
            let n = match self.stream.read(&mut self.buf[..want]) {
                Ok(0) => {
                    return Err(CopyError::Net {
                        e: eof(),
                        missing: len,
                    })
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CopyError::Net { e, missing: len }),
            };
            (&**out)
                .write_all(&self.buf[..n])
                .map_err(CopyError::File)?;
            len -= n as u64;
        }
        Ok(())
    }

    fn say_goodbye(&mut self) {
        self.stream.conn.send_close_notify();
        let _ = self.stream.flush();
    }

    fn received(&self) -> u64 {
        self.stream.sock.received
    }
}
