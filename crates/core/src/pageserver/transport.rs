//! How the server reads a client's stream: plain TCP, with page data spliced
//! from the socket into the images; TLS (see `tls`) through a bounded buffer.
//! The client's side is in `client`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;

use nix::errno::Errno;
use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use nix::poll::PollFlags;

use super::link::{connection_error, is_aborted, Link};
use crate::{Error, Result};

/// A client connection, as the session reads it.
pub trait Conn: Read + Write {
    /// Moves exactly `len` bytes of the stream into `out` (at its position).
    fn copy_to_file(&mut self, out: &File, len: u64) -> std::result::Result<(), CopyError>;
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

/// Plain TCP: page data is spliced from the socket into a pipe and from the
/// pipe into the image, never copied through user memory.
pub struct Plain {
    pub link: Link,
    pipe: Option<(OwnedFd, OwnedFd, usize)>,
    /// Set when the kernel refused splice for this image or socket.
    copy_buf: Vec<u8>,
}

/// The pipe size asked for; capped by /proc/sys/fs/pipe-max-size without
/// CAP_SYS_RESOURCE.
const PIPE_BYTES: i32 = 1 << 20;

impl Plain {
    pub fn new(link: Link) -> Plain {
        Plain {
            link,
            pipe: None,
            copy_buf: Vec::new(),
        }
    }

    fn make_pipe(&mut self) -> io::Result<()> {
        if self.pipe.is_none() {
            let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
            let _ = fcntl(&w, FcntlArg::F_SETPIPE_SZ(PIPE_BYTES));
            let size = fcntl(&w, FcntlArg::F_GETPIPE_SZ)? as usize;
            self.pipe = Some((r, w, size));
        }
        Ok(())
    }

    /// The fallback when splice is refused: through a bounded buffer.
    fn copy_through_buffer(
        &mut self,
        out: &File,
        mut len: u64,
    ) -> std::result::Result<(), CopyError> {
        if self.copy_buf.is_empty() {
            self.copy_buf = vec![0; 1 << 16];
        }
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
            (&*out)
                .write_all(&self.copy_buf[..n])
                .map_err(CopyError::File)?;
            len -= n as u64;
        }
        Ok(())
    }
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

    fn copy_to_file(&mut self, out: &File, len: u64) -> std::result::Result<(), CopyError> {
        self.make_pipe().map_err(CopyError::File)?;
        let mut left = len;
        while left > 0 {
            let (pipe_r, pipe_w, size) = self.pipe.as_ref().expect("made above");
            let size = *size;
            // The pipe is empty here: one splice in, then all of it out.
            let moved = splice(
                self.link.fd(),
                None,
                pipe_w,
                None,
                (left as usize).min(size),
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
                Err(Errno::EAGAIN) => {
                    self.link
                        .wait(PollFlags::POLLIN)
                        .map_err(|e| CopyError::Net { e, missing: left })?;
                    continue;
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EINVAL) => return self.copy_through_buffer(out, left),
                Err(e) => {
                    return Err(CopyError::Net {
                        e: e.into(),
                        missing: left,
                    })
                }
            };
            self.link.received += n as u64;
            let mut out_left = n;
            while out_left > 0 {
                match splice(
                    pipe_r,
                    None,
                    out,
                    None,
                    out_left,
                    SpliceFFlags::SPLICE_F_MOVE,
                ) {
                    Ok(0) => return Err(CopyError::File(io::Error::other("the pipe ran dry"))),
                    Ok(m) => out_left -= m,
                    Err(Errno::EINTR) => {}
                    Err(e) => return Err(CopyError::File(e.into())),
                }
            }
            left -= n as u64;
        }
        Ok(())
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
    fn copy_to_file(&mut self, out: &File, mut len: u64) -> std::result::Result<(), CopyError> {
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
            (&*out).write_all(&self.buf[..n]).map_err(CopyError::File)?;
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
