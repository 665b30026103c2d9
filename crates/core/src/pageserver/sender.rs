//! Pages sent to a page server, as CRIU's `page_xfer` over a socket.
//!
//! - [`ServerPages`]: one process, a connection of its own: PS_IOV_PARENT when
//!   connected (before the target is stopped, so that the answer costs no
//!   frozen time), PS_IOV_OPEN2 when the pages image would be created, then
//!   the pagemap in address order: PE_PRESENT ranges with their data as the
//!   drain delivers them, the PE_PARENT holes between them, and PS_IOV_CLOSE,
//!   whose answer says the server has stored everything.
//! - [`TreeSession`]: a process tree over one connection, as `criu pre-dump -t
//!   ROOT --page-server` sends it: PS_IOV_PARENT for each process with a chain
//!   (before the tree is frozen), then one PS_IOV_OPEN2 per pagemap, each
//!   process's under its own `dst_id` (`pid << 8 | 1`) and each anonymous
//!   shared memory object's under `shmid << 8 | 2`, with offsets in the object
//!   as addresses (criu/shmem.c: `xfer.offset`), and one PS_IOV_CLOSE at the
//!   end.

use std::collections::HashMap;
use std::os::fd::BorrowedFd;

use super::client::{Client, ClientOptions, ClientStats};
use super::link::Abort;
use super::wire::{Dst, DstKind, PE_PARENT, PE_PRESENT};
use crate::image::pagemap::PagemapBuilder;
use crate::pages_out::PagesOut;
use crate::{Error, PageRange, Result};

/// One pagemap entry as sent: (vaddr, nr_pages, flags).
pub type SentEntry = (u64, u64, u32);

/// One pagemap on its way, built as the pages file builds its own
/// ([`PagemapBuilder`]): from the calls that send it, each present run after
/// the runs left to the parent below it, those above the last at the end.
struct PagemapTx {
    dst: Dst,
    has_parent: bool,
    /// None once the pagemap is ended.
    map: Option<PagemapBuilder>,
    /// The pagemap as sent, in order (runs merged), once ended.
    sent: Vec<SentEntry>,
}

impl PagemapTx {
    fn new(dst: Dst, has_parent: bool) -> PagemapTx {
        PagemapTx {
            dst,
            has_parent,
            // The server names the pages image: no pages id here.
            map: Some(PagemapBuilder::new(0)),
            sent: Vec::new(),
        }
    }

    fn map(&mut self) -> Result<&mut PagemapBuilder> {
        self.map.as_mut().ok_or_else(|| Error::Protocol {
            detail: format!("the pagemap of {} is already ended", self.dst),
        })
    }

    fn parent_ranges(&mut self, ranges: &[PageRange], server: &str) -> Result<()> {
        if !ranges.is_empty() && !self.has_parent {
            return Err(Error::InvalidArgument(format!(
                "the page server at {server} holds no parent images of {}: no page can be left to them",
                self.dst
            )));
        }
        self.map()?.parent(ranges)
    }

    /// Sends a run of `pages` present pages at `vaddr` with `send`, after
    /// the runs left to the parent below it.
    fn send_run(
        &mut self,
        client: &mut Client,
        vaddr: u64,
        pages: u64,
        send: impl FnOnce(&mut Client) -> Result<()>,
    ) -> Result<()> {
        let dst = self.dst;
        for h in self.map()?.written(vaddr, pages)? {
            client.entry(dst, h.start, h.pages, PE_PARENT)?;
        }
        send(client)
    }

    /// Sends the runs left to the parent above the last present one: the
    /// pagemap is complete (idempotent).
    fn end(&mut self, client: &mut Client) -> Result<()> {
        let Some(map) = &self.map else {
            return Ok(());
        };
        for h in map.parent_left() {
            client.entry(self.dst, h.start, h.pages, PE_PARENT)?;
        }
        let map = self.map.take().ok_or_else(closed)?.finish()?;
        self.sent = map
            .entries
            .iter()
            .map(|e| (e.vaddr, e.nr_pages, e.flags))
            .collect();
        Ok(())
    }

    /// Sends `regions` (their bytes back to back in `data`), each after the
    /// holes below it.
    fn send_from_buffer(
        &mut self,
        client: &mut Client,
        data: &[u8],
        regions: &[PageRange],
    ) -> Result<()> {
        let dst = self.dst;
        let mut off = 0usize;
        for r in regions {
            let len = r.len() as usize;
            let bytes = data.get(off..off + len).ok_or_else(|| {
                Error::InvalidArgument(format!("{} bytes of pages for regions of more", data.len()))
            })?;
            self.send_run(client, r.start, r.pages, |c| {
                c.pages(dst, r.start, PE_PRESENT, bytes)
            })?;
            off += len;
        }
        Ok(())
    }

    /// Sends `regions` (their data waiting in `pipe`, `len` bytes), each
    /// after the holes below it. On error, also the bytes of this call still
    /// in the pipe.
    fn send_from_pipe(
        &mut self,
        client: &mut Client,
        pipe: BorrowedFd<'_>,
        regions: &[PageRange],
        len: usize,
    ) -> std::result::Result<(), (Error, usize)> {
        let before = client.pipe_taken();
        let left = |c: &Client| len - (c.pipe_taken() - before) as usize;
        let dst = self.dst;
        for r in regions {
            let sent = self.send_run(client, r.start, r.pages, |c| {
                c.pages_from_pipe(dst, r.start, r.pages, PE_PRESENT, pipe)
            });
            if let Err(e) = sent {
                return Err((e, left(client)));
            }
        }
        Ok(())
    }
}

/// One process's pages over a connection of its own.
pub struct ServerPages {
    client: Option<Client>,
    tx: PagemapTx,
    opened: bool,
    stats: ClientStats,
    server: String,
}

impl ServerPages {
    /// Connects and asks whether the server's parent holds `pid`'s pagemap.
    pub fn connect(o: &ClientOptions, abort: &Abort, pid: i32) -> Result<ServerPages> {
        let mut client = Client::connect(o, abort)?;
        let dst = Dst::process(pid as u64);
        let has_parent = client.parent(dst)?;
        Ok(ServerPages {
            client: Some(client),
            tx: PagemapTx::new(dst, has_parent),
            opened: false,
            stats: ClientStats::default(),
            server: format!("{}:{}", o.address, o.port),
        })
    }

    /// The server's parent images hold this process's pagemap: only then may
    /// pages be left to them.
    pub fn has_parent(&self) -> bool {
        self.tx.has_parent
    }

    /// PS_IOV_OPEN2: the server starts the pagemap.
    pub fn open(&mut self) -> Result<()> {
        let dst = self.tx.dst;
        let has_parent = self.client()?.open(dst)?;
        if has_parent != self.tx.has_parent {
            return Err(Error::Protocol {
                detail: format!(
                    "the page server at {} answered PS_IOV_PARENT with {} and PS_IOV_OPEN2 with {has_parent}",
                    self.server, self.tx.has_parent
                ),
            });
        }
        self.opened = true;
        Ok(())
    }

    /// The pagemap sent, in order.
    pub fn sent(&self) -> &[SentEntry] {
        &self.tx.sent
    }

    /// What the connection moved (complete once [`PagesOut::finish`] returned).
    pub fn stats(&self) -> ClientStats {
        match &self.client {
            Some(c) => c.stats(),
            None => self.stats.clone(),
        }
    }

    fn client(&mut self) -> Result<&mut Client> {
        self.client.as_mut().ok_or_else(closed)
    }
}

fn closed() -> Error {
    Error::Protocol {
        detail: "the page-server session is closed".into(),
    }
}

impl PagesOut for ServerPages {
    fn needs_owned_pipe(&self) -> bool {
        true
    }

    fn takes_buffers(&self) -> bool {
        true
    }

    fn write_from_buffer(&mut self, data: &[u8], regions: &[PageRange]) -> Result<()> {
        if !self.opened {
            return Err(Error::InvalidArgument(
                "pages sent before PS_IOV_OPEN2".into(),
            ));
        }
        let client = self.client.as_mut().ok_or_else(closed)?;
        self.tx.send_from_buffer(client, data, regions)
    }

    fn parent_ranges(&mut self, ranges: &[PageRange]) -> Result<()> {
        self.tx.parent_ranges(ranges, &self.server)
    }

    fn write_from_pipe(
        &mut self,
        pipe: BorrowedFd<'_>,
        regions: &[PageRange],
        len: usize,
    ) -> std::result::Result<(), (Error, usize)> {
        if !self.opened {
            return Err((
                Error::InvalidArgument("pages sent before PS_IOV_OPEN2".into()),
                len,
            ));
        }
        let Some(client) = self.client.as_mut() else {
            return Err((closed(), len));
        };
        self.tx.send_from_pipe(client, pipe, regions, len)
    }

    /// The holes left, then PS_IOV_CLOSE: returns once the server has stored
    /// everything, and hangs up.
    fn finish(&mut self) -> Result<()> {
        let client = self.client.as_mut().ok_or_else(closed)?;
        self.tx.end(client)?;
        let client = self.client.take().ok_or_else(closed)?;
        self.stats = client.close()?;
        Ok(())
    }

    fn pagemap_entries(&self) -> usize {
        self.tx.sent.len()
    }

    fn describe(&self) -> String {
        format!("the page server at {}", self.server)
    }
}

/// A pagemap sent in a tree's session: what was sent and what the server said.
#[derive(Debug, Clone)]
pub struct SentPagemap {
    pub dst: Dst,
    /// The server's answer to PS_IOV_OPEN2: its parent holds this pagemap.
    pub has_parent: bool,
    pub entries: Vec<SentEntry>,
}

/// A process tree's pagemaps over one connection (see the module's text).
pub struct TreeSession {
    client: Option<Client>,
    server: String,
    /// PS_IOV_PARENT's answers, by pagemap.
    asked: HashMap<Dst, bool>,
    sent: Vec<SentPagemap>,
    stats: ClientStats,
    /// Shared memory on its way to the socket.
    buf: Vec<u8>,
}

impl TreeSession {
    /// Connects (nothing is asked yet).
    pub fn connect(o: &ClientOptions, abort: &Abort) -> Result<TreeSession> {
        Ok(TreeSession {
            client: Some(Client::connect(o, abort)?),
            server: format!("{}:{}", o.address, o.port),
            asked: HashMap::new(),
            sent: Vec::new(),
            stats: ClientStats::default(),
            buf: Vec::new(),
        })
    }

    /// `address:port`, for messages.
    pub fn server(&self) -> &str {
        &self.server
    }

    fn client(&mut self) -> Result<&mut Client> {
        self.client.as_mut().ok_or_else(closed)
    }

    /// PS_IOV_PARENT: does the server's parent hold `dst`'s pagemap?
    pub fn ask_parent(&mut self, dst: Dst) -> Result<bool> {
        let has = self.client()?.parent(dst)?;
        self.asked.insert(dst, has);
        Ok(has)
    }

    /// PS_IOV_OPEN2: starts `dst`'s pagemap. A server that said yes to
    /// PS_IOV_PARENT for it must say so again.
    pub fn open(&mut self, dst: Dst) -> Result<TreePagemap<'_>> {
        let has_parent = self.client()?.open(dst)?;
        if self.asked.get(&dst) == Some(&true) && !has_parent {
            return Err(Error::Protocol {
                detail: format!(
                    "the page server at {} answered PS_IOV_PARENT for {dst} with 1 and PS_IOV_OPEN2 with 0",
                    self.server
                ),
            });
        }
        let client = self.client.as_mut().ok_or_else(closed)?;
        Ok(TreePagemap {
            client,
            tx: PagemapTx::new(dst, has_parent),
            server: &self.server,
            sent: &mut self.sent,
            done: false,
        })
    }

    /// Sends a shared memory object's pages as one pagemap: `ranges` are
    /// offsets in the object (sorted), `read_at` fills a buffer from an offset.
    /// Returns the bytes sent.
    pub fn send_object(
        &mut self,
        shmid: u64,
        ranges: &[PageRange],
        mut read_at: impl FnMut(&mut [u8], u64) -> Result<usize>,
    ) -> Result<u64> {
        let dst = Dst {
            kind: DstKind::Shmem,
            id: shmid,
        };
        let mut buf = std::mem::take(&mut self.buf);
        if buf.is_empty() {
            buf = vec![0; 1 << 20];
        }
        let mut bytes = 0;
        let r = (|| {
            let mut pm = self.open(dst)?;
            for r in ranges {
                let TreePagemap { client, tx, .. } = &mut pm;
                tx.send_run(client, r.start, r.pages, |c| {
                    c.pages_with(dst, r.start, r.pages, PE_PRESENT, &mut buf, |piece, off| {
                        let at = r.start + off;
                        let n = read_at(piece, at)?;
                        if n < piece.len() {
                            return Err(Error::InvalidArgument(format!(
                                "shared memory {shmid} ended at offset {:#x}, inside its pages",
                                at + n as u64
                            )));
                        }
                        Ok(())
                    })
                })?;
                bytes += r.len();
            }
            pm.end_pagemap()
        })();
        self.buf = buf;
        r.map(|()| bytes)
    }

    /// PS_IOV_CLOSE: returns once the server has stored everything, and hangs up.
    pub fn close(&mut self) -> Result<()> {
        let client = self.client.take().ok_or_else(closed)?;
        self.stats = client.close()?;
        Ok(())
    }

    /// The pagemaps sent, in order.
    pub fn sent(&self) -> &[SentPagemap] {
        &self.sent
    }

    /// What the connection moved (complete once [`TreeSession::close`] returned).
    pub fn stats(&self) -> ClientStats {
        match &self.client {
            Some(c) => c.stats(),
            None => self.stats.clone(),
        }
    }
}

/// One pagemap of a [`TreeSession`], opened: a drain's output. Its
/// [`PagesOut::finish`] sends the holes left (the session stays open).
pub struct TreePagemap<'s> {
    client: &'s mut Client,
    tx: PagemapTx,
    server: &'s str,
    sent: &'s mut Vec<SentPagemap>,
    done: bool,
}

impl TreePagemap<'_> {
    /// Whether the server's parent holds this pagemap.
    pub fn has_parent(&self) -> bool {
        self.tx.has_parent
    }

    fn end_pagemap(&mut self) -> Result<()> {
        if self.done {
            return Ok(());
        }
        self.tx.end(self.client)?;
        self.done = true;
        self.sent.push(SentPagemap {
            dst: self.tx.dst,
            has_parent: self.tx.has_parent,
            entries: std::mem::take(&mut self.tx.sent),
        });
        Ok(())
    }
}

impl PagesOut for TreePagemap<'_> {
    fn needs_owned_pipe(&self) -> bool {
        true
    }

    fn takes_buffers(&self) -> bool {
        true
    }

    fn write_from_buffer(&mut self, data: &[u8], regions: &[PageRange]) -> Result<()> {
        self.tx.send_from_buffer(self.client, data, regions)
    }

    fn parent_ranges(&mut self, ranges: &[PageRange]) -> Result<()> {
        self.tx.parent_ranges(ranges, self.server)
    }

    fn write_from_pipe(
        &mut self,
        pipe: BorrowedFd<'_>,
        regions: &[PageRange],
        len: usize,
    ) -> std::result::Result<(), (Error, usize)> {
        self.tx.send_from_pipe(self.client, pipe, regions, len)
    }

    fn finish(&mut self) -> Result<()> {
        self.end_pagemap()
    }

    fn pagemap_entries(&self) -> usize {
        self.sent.last().map_or(0, |p| p.entries.len())
    }

    fn describe(&self) -> String {
        format!("the page server at {} ({})", self.server, self.tx.dst)
    }
}
