//! `predump page-server`: receives pages from one client (`criu pre-dump|dump
//! --page-server`, or predump's own client) and writes the pagemap and pages
//! images as CRIU's page server does: `pagemap-<pid>.img` with
//! `pagemap_head { pages_id }` and one entry per ADD_F (flags as sent),
//! `pages-<id>.img` numbered from 0x10000 + 1 per opened pagemap, the page data
//! back to back. Then it exits, as CRIU's does.
//!
//! Unlike CRIU's server it keeps nothing that looks complete after a failure:
//! the images are written under temporary names, synced, and renamed only when
//! the client closes the session with PS_IOV_CLOSE; before the reply to it, so
//! that a client told "0" knows its pages are stored. It refuses what CRIU's
//! would store blindly: entries out of order or overlapping, a PE_PARENT range
//! that the parent's pagemap does not cover (CRIU checks that only when a parent
//! exists), a second open of the same pagemap, and any header that does not
//! parse (see `wire::parse`). Page data goes socket → pipe → file with splice,
//! the file side in a writer thread of its own (`spool`) so that receiving and
//! writing overlap; memory stays flat whatever the size of the transfer.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use super::link::{is_aborted, Abort, Link, Listener};
use super::tls::{self, TlsOptions};
use super::transport::{Conn, CopyError, Plain, Tls};
use super::wire::{self, Detected, Dst, Format, Header, Request, PE_LAZY, PE_PARENT, PE_PRESENT};
use crate::image::pagemap::{Pagemap, PagemapEntryRecord, PagemapHead};
use crate::image::{self, Kind};
use crate::{Error, Result, PAGE_SIZE};

/// CRIU's page server numbers its pages images from here + 1 (`up_page_ids_base`),
/// so that they never collide with those of a local dump in the same directory.
pub const PAGES_ID_BASE: u32 = 0x10000;

/// The most pagemaps one session may open: a guard against a stream of OPENs
/// making files without end, far above any real process tree.
pub const MAX_PAGEMAPS: usize = 1 << 16;

/// How long the server waits for the client to hang up after answering its
/// PS_IOV_CLOSE (CRIU waits for that EOF; its clients close at once).
const HANG_UP_WAIT: Duration = Duration::from_secs(30);

/// Where and how to serve.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The images directory (must exist). Its `parent` link, if any, is the
    /// parent CRIU's clients ask about (made from `--prev-images-dir`).
    pub dir: PathBuf,
    /// How long one read may wait for the client (None: as long as it takes,
    /// as CRIU's server; TCP keepalive still notices a vanished host).
    pub timeout: Option<Duration>,
}

/// One pagemap the client sent.
#[derive(Debug, Clone)]
pub struct PagemapReport {
    pub dst: Dst,
    pub pagemap_file: String,
    pub pages_file: String,
    pub pages_id: u32,
    /// The client was told the parent holds this pagemap.
    pub has_parent: bool,
    pub entries: u64,
    /// Pages with data (PE_PRESENT), left to the parent (PE_PARENT), and lazy
    /// pages that stayed on the client (PE_LAZY alone).
    pub pages_present: u64,
    pub pages_parent: u64,
    pub pages_lazy: u64,
}

/// What a session did.
#[derive(Debug, Clone)]
pub struct ServerReport {
    pub local: SocketAddr,
    pub peer: Option<SocketAddr>,
    /// None: the client sent only a close.
    pub format: Option<Format>,
    pub tls: bool,
    pub pagemaps: Vec<PagemapReport>,
    pub bytes_received: u64,
    pub page_bytes: u64,
    /// From the connection to the reply to PS_IOV_CLOSE.
    pub time: Duration,
    /// Time spent moving page data from the socket into the pages images.
    pub write_time: Duration,
    /// Things that did not fail the session but that a person should know.
    pub warnings: Vec<String>,
}

/// A page server listening for its one client.
pub struct Server {
    listener: Listener,
    abort: Abort,
    local: SocketAddr,
    /// The address given to listen on: CRIU's server checks a TLS client's
    /// certificate against it.
    address: Option<String>,
    tls: Option<(Arc<rustls::ServerConfig>, bool)>,
}

impl Server {
    /// Listens on `address` (an IP literal; None: every IPv4 address) and `port`
    /// (0: one the kernel picks, see [`Server::local_addr`]). With `tls`, the
    /// certificates are read now, so that a bad file is said before a client
    /// comes.
    pub fn listen(address: Option<&str>, port: u16, tls: Option<&TlsOptions>) -> Result<Server> {
        let tls = match tls {
            Some(o) => Some((tls::server_config(o)?, o.no_cn_verify)),
            None => None,
        };
        let abort = Abort::new()?;
        let listener = Listener::bind(address, port, abort.clone())?;
        let local = listener.local_addr()?;
        Ok(Server {
            listener,
            abort,
            local,
            address: address.map(str::to_string),
            tls,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops the server from another thread: a wait for the client or for its
    /// data ends with [`Error::Interrupted`], and nothing is kept.
    pub fn abort_handle(&self) -> Abort {
        self.abort.clone()
    }

    /// Waits for one client, serves it, and returns what was stored. On any
    /// failure the images of the session are removed.
    pub fn serve(self, options: &ServerOptions) -> Result<ServerReport> {
        let sock = self.listener.accept_one()?;
        let started = Instant::now();
        let link = Link::new(sock, self.abort.clone(), options.timeout)?;
        // The client waits for three of our replies: never hold them back.
        link.set_nodelay(true);
        let peer = link.peer();
        let peer_name = peer.map_or_else(|| "the client".to_string(), |p| p.to_string());
        let mut session = Session::new(&options.dir)?;
        let mut conn: Box<dyn Conn> = match &self.tls {
            None => Box::new(Plain::new(link)),
            Some((config, no_cn_verify)) => {
                let server = rustls::ServerConnection::new(config.clone())
                    .map_err(|e| Error::Tls(e.to_string()))?;
                let conn = Tls::handshake(server, link, &peer_name)?;
                if let (Some(address), false) = (&self.address, no_cn_verify) {
                    let cert = conn.peer_certificate().ok_or_else(|| {
                        Error::Tls(format!("{peer_name} presented no certificate"))
                    })?;
                    tls::check_name(&cert, address).map_err(|e| {
                        Error::Tls(format!(
                            "{peer_name}: {e} (as CRIU's, this server checks a client's certificate \
                             against its own --address; --tls-no-cn-verify turns that off)"
                        ))
                    })?;
                }
                Box::new(conn)
            }
        };
        let outcome = session.run(conn.as_mut());
        match outcome {
            Ok(format) => Ok(ServerReport {
                local: self.local,
                peer,
                format,
                tls: self.tls.is_some(),
                pagemaps: session.reports(),
                bytes_received: conn.received(),
                page_bytes: session.page_bytes,
                time: session.closed_at.unwrap_or_else(Instant::now) - started,
                write_time: session.write_time,
                warnings: std::mem::take(&mut session.warnings),
            }),
            Err(e) => {
                session.discard();
                Err(e)
            }
        }
    }
}

/// A pagemap being received: its two images under temporary names.
struct Receiving {
    dst: Dst,
    has_parent: bool,
    /// The parent's entries, for checking PE_PARENT ranges.
    parent: Option<Arc<Pagemap>>,
    pagemap: BufWriter<File>,
    pages: Arc<File>,
    pagemap_tmp: PathBuf,
    pages_tmp: PathBuf,
    /// Where the next entry may start (entries sorted, not overlapping).
    next_vaddr: u64,
    report: PagemapReport,
    record: Vec<u8>,
}

/// A pagemap whose images are complete under their temporary names.
struct Received {
    pagemap_tmp: PathBuf,
    pages_tmp: PathBuf,
    report: PagemapReport,
}

/// The state of one connection.
struct Session {
    dir: PathBuf,
    /// `dir/parent`, when it leads to a directory.
    parent_dir: Option<PathBuf>,
    format: Option<Format>,
    next_pages_id: u32,
    current: Option<Receiving>,
    received: Vec<Received>,
    opened: HashSet<Dst>,
    /// Parent pagemaps read so far (None: the parent does not hold it).
    parents: HashMap<Dst, Option<Arc<Pagemap>>>,
    /// Final names made by this session (removed if it fails after all).
    renamed: Vec<PathBuf>,
    page_bytes: u64,
    write_time: Duration,
    /// When PS_IOV_CLOSE was answered.
    closed_at: Option<Instant>,
    warnings: Vec<String>,
}

fn protocol(detail: impl Into<String>) -> Error {
    Error::Protocol {
        detail: detail.into(),
    }
}

impl Session {
    fn new(dir: &Path) -> Result<Session> {
        let link = dir.join("parent");
        let parent_dir = match std::fs::metadata(&link) {
            Ok(m) if m.is_dir() => Some(link),
            Ok(_) => {
                return Err(Error::InvalidArgument(format!(
                    "{}: the parent link does not lead to a directory",
                    link.display()
                )))
            }
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    && std::fs::symlink_metadata(&link).is_err() =>
            {
                None
            }
            Err(e) => {
                return Err(Error::InvalidArgument(format!(
                    "{}: the parent link is broken ({e})",
                    link.display()
                )))
            }
        };
        Ok(Session {
            dir: dir.to_path_buf(),
            parent_dir,
            format: None,
            next_pages_id: PAGES_ID_BASE + 1,
            current: None,
            received: Vec::new(),
            opened: HashSet::new(),
            parents: HashMap::new(),
            renamed: Vec::new(),
            page_bytes: 0,
            write_time: Duration::ZERO,
            closed_at: None,
            warnings: Vec::new(),
        })
    }

    /// Serves the connection to its end. Returns the header format seen.
    fn run(&mut self, conn: &mut dyn Conn) -> Result<Option<Format>> {
        let mut buf = [0u8; wire::MAX_HEADER_LEN];
        let mut headers = 0u64;
        // The first header: its layout is known only after 24 bytes.
        if !read_header(conn, &mut buf[..wire::MIN_HEADER_LEN], headers)? {
            return Err(protocol(
                "the client closed the connection without sending anything: nothing was stored",
            ));
        }
        match wire::detect(&buf).map_err(|e| protocol(e.to_string()))? {
            Detected::EmptyClose(_) => {
                conn.write_all(&wire::close_reply())
                    .map_err(|e| conn.read_error("answering PS_IOV_CLOSE".into(), e))?;
                self.closed_at = Some(Instant::now());
                conn.say_goodbye();
                self.wait_hang_up(conn, true);
                return Ok(None);
            }
            Detected::Format(f) => {
                self.format = Some(f);
                if f.header_len() > wire::MIN_HEADER_LEN {
                    let rest = &mut buf[wire::MIN_HEADER_LEN..f.header_len()];
                    conn.read_exact(rest)
                        .map_err(|e| conn.read_error("reading the first header".into(), e))?;
                }
            }
        }
        let format = self.format.expect("set above");
        let len = format.header_len();
        loop {
            let h = Header::decode(format, &buf[..len]);
            headers += 1;
            let req = wire::parse(&h).map_err(|e| protocol(format!("header {headers}: {e}")))?;
            if let Request::Close { .. } = req {
                self.finish(conn)?;
                conn.write_all(&wire::close_reply())
                    .map_err(|e| conn.read_error("answering PS_IOV_CLOSE".into(), e))?;
                self.closed_at = Some(Instant::now());
                conn.say_goodbye();
                self.wait_hang_up(conn, false);
                return Ok(Some(format));
            }
            self.handle(conn, req, headers)?;
            if !read_header(conn, &mut buf[..len], headers)? {
                return Err(protocol(format!(
                    "the client closed the connection before PS_IOV_CLOSE, after {headers} headers: \
                     the transfer is incomplete, nothing was stored"
                )));
            }
        }
    }

    fn handle(&mut self, conn: &mut dyn Conn, req: Request, n: u64) -> Result<()> {
        match req {
            Request::Parent(dst) => {
                let has = self.parent_of(dst)?.is_some();
                conn.write_all(&wire::parent_reply(has))
                    .map_err(|e| conn.read_error("answering PS_IOV_PARENT".into(), e))
            }
            Request::Open { dst, reply } => {
                self.open(conn, dst)?;
                if reply {
                    let has = self.current.as_ref().is_some_and(|c| c.has_parent);
                    conn.write_all(&wire::open2_reply(has))
                        .map_err(|e| conn.read_error("answering PS_IOV_OPEN2".into(), e))?;
                }
                Ok(())
            }
            Request::Add {
                dst,
                vaddr,
                nr_pages,
                flags,
            } => {
                // Old CRIUs add without opening first (CRIU's server opens then).
                if self.current.as_ref().map(|c| c.dst) != Some(dst) {
                    self.open(conn, dst)?;
                }
                self.add(conn, vaddr, nr_pages, flags, n)
            }
            Request::Get => Err(protocol(format!(
                "header {n}: PS_IOV_GET asks for pages (a lazy restore): predump's page server only receives them"
            ))),
            Request::Close { .. } => unreachable!("handled by run"),
        }
    }

    /// The parent's pagemap of `dst`, read once.
    fn parent_of(&mut self, dst: Dst) -> Result<Option<Arc<Pagemap>>> {
        if let Some(p) = self.parents.get(&dst) {
            return Ok(p.clone());
        }
        let found = match &self.parent_dir {
            None => None,
            Some(dir) => {
                let file = dir.join(dst.pagemap_file());
                match std::fs::read(&file) {
                    Ok(bytes) => match Pagemap::decode(&bytes, &file.display().to_string()) {
                        Ok(map) => Some(Arc::new(map)),
                        // A client told "no parent" sends every page: a broken
                        // parent costs a full transfer, not a broken chain.
                        Err(e) => {
                            self.warnings.push(format!(
                                "the parent's {} is unreadable ({e}): {dst} was sent whole",
                                dst.pagemap_file()
                            ));
                            None
                        }
                    },
                    Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                    Err(e) => return Err(Error::sys(format!("reading {}", file.display()), e)),
                }
            }
        };
        self.parents.insert(dst, found.clone());
        Ok(found)
    }

    fn open(&mut self, conn: &mut dyn Conn, dst: Dst) -> Result<()> {
        if !self.opened.insert(dst) {
            return Err(protocol(format!(
                "{dst} was opened a second time in one session (its pages would be lost)"
            )));
        }
        if self.opened.len() > MAX_PAGEMAPS {
            return Err(protocol(format!(
                "more than {MAX_PAGEMAPS} pagemaps in one session"
            )));
        }
        self.close_current(conn)?;
        let parent = self.parent_of(dst)?;
        let pages_id = self.next_pages_id;
        self.next_pages_id += 1;
        let pagemap_file = dst.pagemap_file();
        let pages_file = image::pagemap::pages_file_name(pages_id);
        let pagemap_tmp = temp_path(&self.dir, &pagemap_file);
        let pages_tmp = temp_path(&self.dir, &pages_file);
        let pagemap = create(&pagemap_tmp)?;
        let pages = match create(&pages_tmp) {
            Ok(f) => Arc::new(f),
            Err(e) => {
                let _ = std::fs::remove_file(&pagemap_tmp);
                return Err(e);
            }
        };
        let mut r = Receiving {
            dst,
            has_parent: parent.is_some(),
            parent,
            pagemap: BufWriter::with_capacity(64 << 10, pagemap),
            pages,
            pagemap_tmp,
            pages_tmp,
            next_vaddr: 0,
            report: PagemapReport {
                dst,
                pagemap_file,
                pages_file,
                pages_id,
                has_parent: false,
                entries: 0,
                pages_present: 0,
                pages_parent: 0,
                pages_lazy: 0,
            },
            record: Vec::with_capacity(64),
        };
        r.report.has_parent = r.has_parent;
        let head = image::encode(Kind::Pagemap, &[PagemapHead { pages_id }]);
        let written = r.pagemap.write_all(&head);
        let tmp = r.pagemap_tmp.clone();
        self.current = Some(r);
        written.map_err(|e| image::write_error(&tmp, e))
    }

    fn add(
        &mut self,
        conn: &mut dyn Conn,
        vaddr: u64,
        nr_pages: u64,
        flags: u32,
        n: u64,
    ) -> Result<()> {
        let r = self.current.as_mut().expect("opened by handle");
        if vaddr < r.next_vaddr {
            return Err(protocol(format!(
                "header {n}: {nr_pages} pages at {vaddr:#x} for {} come before the end of the previous \
                 entry ({:#x}): entries must be sorted and must not overlap",
                r.dst, r.next_vaddr
            )));
        }
        let end = vaddr + nr_pages * PAGE_SIZE;
        if flags & PE_PARENT != 0 {
            match &r.parent {
                None => {
                    return Err(protocol(format!(
                        "header {n}: {nr_pages} pages at {vaddr:#x} of {} are said to be in the parent, \
                         but this server has no parent images for it (--prev-images-dir)",
                        r.dst
                    )))
                }
                Some(p) => {
                    if let Some(missing) = not_covered(p, vaddr, end) {
                        return Err(protocol(format!(
                            "header {n}: the page at {missing:#x} of {} is said to be in the parent, \
                             but the parent's {} does not hold it",
                            r.dst, r.report.pagemap_file
                        )));
                    }
                }
            }
        }
        r.next_vaddr = end;
        // A 4.2 client may send more pages than older readers' u32 count holds:
        // split the entry (its data stays one run in the pages image).
        let (mut at, mut left) = (vaddr, nr_pages);
        while left > 0 {
            let part = left.min(u32::MAX as u64);
            r.record.clear();
            image::push_record(
                &mut r.record,
                &PagemapEntryRecord {
                    vaddr: at,
                    compat_nr_pages: part as u32,
                    in_parent: None,
                    flags: Some(flags),
                    nr_pages: Some(part),
                },
            );
            r.pagemap
                .write_all(&r.record)
                .map_err(|e| image::write_error(&r.pagemap_tmp, e))?;
            r.report.entries += 1;
            at += part * PAGE_SIZE;
            left -= part;
        }
        if flags & PE_PRESENT != 0 {
            r.report.pages_present += nr_pages;
            let len = nr_pages * PAGE_SIZE;
            let started = Instant::now();
            let copied = conn.copy_to_file(&r.pages, len);
            self.write_time += started.elapsed();
            match copied {
                Ok(()) => self.page_bytes += len,
                Err(CopyError::File(e)) => return Err(image::write_error(&r.pages_tmp, e)),
                Err(CopyError::Net { e, missing }) => {
                    let what = format!(
                        "receiving {nr_pages} pages at {vaddr:#x} of {} ({missing} of {len} bytes missing)",
                        r.dst
                    );
                    return Err(if e.kind() == io::ErrorKind::UnexpectedEof {
                        protocol(format!(
                            "the client closed the connection in the middle of the page data: {what}; nothing was stored"
                        ))
                    } else {
                        conn.read_error(what, e)
                    });
                }
            }
        } else if flags & PE_PARENT != 0 {
            r.report.pages_parent += nr_pages;
        } else if flags & PE_LAZY != 0 {
            r.report.pages_lazy += nr_pages;
        }
        Ok(())
    }

    /// Syncs and closes the pagemap being received, once its page data is
    /// all in its pages image.
    fn close_current(&mut self, conn: &mut dyn Conn) -> Result<()> {
        let Some(r) = self.current.take() else {
            return Ok(());
        };
        let Receiving {
            pagemap,
            pages,
            pagemap_tmp,
            pages_tmp,
            report,
            ..
        } = r;
        // Registered first: a failure below still removes both files.
        self.received.push(Received {
            pagemap_tmp: pagemap_tmp.clone(),
            pages_tmp: pages_tmp.clone(),
            report,
        });
        let pagemap = pagemap
            .into_inner()
            .map_err(|e| image::write_error(&pagemap_tmp, e.into_error()))?;
        pagemap
            .sync_all()
            .map_err(|e| image::write_error(&pagemap_tmp, e))?;
        let started = Instant::now();
        let flushed = conn.flush_writes();
        self.write_time += started.elapsed();
        flushed.map_err(|e| image::write_error(&pages_tmp, e))?;
        pages
            .sync_all()
            .map_err(|e| image::write_error(&pages_tmp, e))?;
        Ok(())
    }

    /// Gives every image its final name (pages first: a pagemap is what readers
    /// look for), then makes the names durable.
    fn finish(&mut self, conn: &mut dyn Conn) -> Result<()> {
        self.close_current(conn)?;
        for i in 0..self.received.len() {
            let (pages_tmp, pagemap_tmp) = (
                self.received[i].pages_tmp.clone(),
                self.received[i].pagemap_tmp.clone(),
            );
            let names = [
                self.received[i].report.pages_file.clone(),
                self.received[i].report.pagemap_file.clone(),
            ];
            for (tmp, name) in [(pages_tmp, &names[0]), (pagemap_tmp, &names[1])] {
                let target = self.dir.join(name);
                rename_noreplace(&tmp, &target)?;
                self.renamed.push(target);
            }
        }
        image::sync_dir(&self.dir)
    }

    /// After the reply to PS_IOV_CLOSE: CRIU's server waits for the client to
    /// hang up. Anything else it sends is reported, not stored.
    fn wait_hang_up(&mut self, conn: &mut dyn Conn, unknown_format: bool) {
        let mut buf = [0u8; 64];
        let mut extra = 0usize;
        let started = Instant::now();
        loop {
            if started.elapsed() > HANG_UP_WAIT {
                break;
            }
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    extra += n;
                    // The rest of a 4.2 close header after an empty first close.
                    if unknown_format && extra <= 8 && buf[..n].iter().all(|&b| b == 0) {
                        continue;
                    }
                    self.warnings.push(
                        "the client sent data after PS_IOV_CLOSE (ignored; the images were complete)".into(),
                    );
                    break;
                }
                Err(e) if is_aborted(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::TimedOut => break,
                // A reset after the close: the client is gone, which is all we wait for.
                Err(_) => break,
            }
        }
    }

    fn reports(&self) -> Vec<PagemapReport> {
        self.received.iter().map(|r| r.report.clone()).collect()
    }

    /// Removes every file of a failed session.
    fn discard(&mut self) {
        if let Some(r) = self.current.take() {
            drop(r.pagemap.into_inner());
            let _ = std::fs::remove_file(&r.pagemap_tmp);
            let _ = std::fs::remove_file(&r.pages_tmp);
        }
        for r in self.received.drain(..) {
            let _ = std::fs::remove_file(&r.pagemap_tmp);
            let _ = std::fs::remove_file(&r.pages_tmp);
        }
        for f in self.renamed.drain(..) {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Reads one header; false at a clean end of the connection before it.
fn read_header(conn: &mut dyn Conn, buf: &mut [u8], after: u64) -> Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match conn.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => {
                return Err(protocol(format!(
                    "the connection ended in the middle of header {} ({got} of {} bytes): nothing was stored",
                    after + 1,
                    buf.len()
                )))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(conn.read_error(format!("reading header {}", after + 1), e)),
        }
    }
    Ok(true)
}

/// The first address in `[start, end)` that no entry of `parent` covers.
fn not_covered(parent: &Pagemap, start: u64, end: u64) -> Option<u64> {
    let entries = &parent.entries;
    let mut at = start;
    while at < end {
        // The last entry starting at or before `at`.
        let i = entries.partition_point(|e| e.vaddr <= at);
        match i.checked_sub(1).map(|i| entries[i]) {
            Some(e) if e.end() > at => at = e.end(),
            _ => return Some(at),
        }
    }
    None
}

fn create(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| image::write_error(path, e))
}

/// `.NAME.PID-N.tmp`, the temporary names that predump's clean-up recognises.
fn temp_path(dir: &Path, name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{name}.{}-{n}.tmp", std::process::id()))
}

/// Renames without replacing: an image of the same name made meanwhile (by
/// another writer in the directory) is an error, not overwritten.
fn rename_noreplace(from: &Path, to: &Path) -> Result<()> {
    // The system call itself: glibc's renameat2() wrapper is 2.28+ (the prebuilt
    // addon links against 2.17's symbols) and musl has none.
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::InvalidArgument(format!("{} has a NUL byte", p.display())))
    };
    let (cfrom, cto) = (c(from)?, c(to)?);
    // SAFETY: both paths are NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            cfrom.as_ptr(),
            libc::AT_FDCWD,
            cto.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = Errno::last();
    if e == Errno::EEXIST {
        Err(Error::InvalidArgument(format!(
            "{} appeared in the images directory during the transfer: not overwritten",
            to.display()
        )))
    } else {
        Err(Error::sys(
            format!("renaming {} to {}", from.display(), to.display()),
            e,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_noreplace_moves_and_never_overwrites() {
        let dir = std::env::temp_dir().join(format!("predump-rename-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b, c) = (dir.join("a"), dir.join("b"), dir.join("c"));
        std::fs::write(&a, "a").unwrap();
        std::fs::write(&c, "c").unwrap();
        rename_noreplace(&a, &b).unwrap();
        assert!(!a.exists());
        assert_eq!(std::fs::read(&b).unwrap(), b"a");
        let e = rename_noreplace(&b, &c).unwrap_err();
        assert!(e.to_string().contains("not overwritten"), "{e}");
        assert_eq!(
            std::fs::read(&c).unwrap(),
            b"c",
            "the existing file is untouched"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
    use crate::image::pagemap::Entry;

    #[test]
    fn parent_coverage_spans_adjacent_entries() {
        let e = |vaddr, nr_pages| Entry {
            vaddr,
            nr_pages,
            flags: PE_PRESENT,
        };
        let p = Pagemap {
            pages_id: 1,
            entries: vec![e(0x1000, 2), e(0x3000, 1), e(0x8000, 1)],
        };
        assert_eq!(not_covered(&p, 0x1000, 0x4000), None);
        assert_eq!(not_covered(&p, 0x2000, 0x3000), None);
        assert_eq!(not_covered(&p, 0x3000, 0x5000), Some(0x4000));
        assert_eq!(not_covered(&p, 0x0, 0x2000), Some(0x0));
        assert_eq!(not_covered(&p, 0x9000, 0xa000), Some(0x9000));
    }
}
