//! One process's pages sent to a page server, as CRIU's `page_xfer` over a
//! socket: PS_IOV_PARENT when connected (before the target is stopped, so that
//! the answer costs no frozen time), PS_IOV_OPEN2 when the pages image would be
//! created, then the pagemap in address order: PE_PRESENT ranges with their
//! data as the drain delivers them, the PE_PARENT holes between them, and
//! PS_IOV_CLOSE, whose answer says the server has stored everything.

use std::os::fd::BorrowedFd;

use super::client::{Client, ClientOptions, ClientStats};
use super::link::Abort;
use super::wire::{Dst, PE_PARENT, PE_PRESENT};
use crate::pages_out::PagesOut;
use crate::{Error, PageRange, Result, PAGE_SIZE};

/// One pagemap entry as sent: (vaddr, nr_pages, flags).
pub type SentEntry = (u64, u64, u32);

pub struct ServerPages {
    client: Option<Client>,
    dst: Dst,
    has_parent: bool,
    opened: bool,
    holes: Vec<PageRange>,
    next_hole: usize,
    /// The pagemap as sent, in order (present ranges merged).
    sent: Vec<SentEntry>,
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
            dst,
            has_parent,
            opened: false,
            holes: Vec::new(),
            next_hole: 0,
            sent: Vec::new(),
            stats: ClientStats::default(),
            server: format!("{}:{}", o.address, o.port),
        })
    }

    /// The server's parent images hold this process's pagemap: only then may
    /// pages be left to them.
    pub fn has_parent(&self) -> bool {
        self.has_parent
    }

    /// PS_IOV_OPEN2: the server starts the pagemap.
    pub fn open(&mut self) -> Result<()> {
        let dst = self.dst;
        let has_parent = self.client()?.open(dst)?;
        if has_parent != self.has_parent {
            return Err(Error::Protocol {
                detail: format!(
                    "the page server at {} answered PS_IOV_PARENT with {} and PS_IOV_OPEN2 with {has_parent}",
                    self.server, self.has_parent
                ),
            });
        }
        self.opened = true;
        Ok(())
    }

    /// The pagemap sent, in order.
    pub fn sent(&self) -> &[SentEntry] {
        &self.sent
    }

    /// What the connection moved (complete once [`PagesOut::finish`] returned).
    pub fn stats(&self) -> ClientStats {
        match &self.client {
            Some(c) => c.stats(),
            None => self.stats.clone(),
        }
    }

    fn client(&mut self) -> Result<&mut Client> {
        self.client.as_mut().ok_or_else(|| Error::Protocol {
            detail: "the page-server session is closed".into(),
        })
    }

    fn record(&mut self, vaddr: u64, pages: u64, flags: u32) {
        if let Some(last) = self.sent.last_mut() {
            if last.2 == flags && last.0 + last.1 * PAGE_SIZE == vaddr {
                last.1 += pages;
                return;
            }
        }
        self.sent.push((vaddr, pages, flags));
    }

    /// Sends the holes that lie below `vaddr`.
    fn holes_below(&mut self, vaddr: u64) -> Result<()> {
        while let Some(h) = self.holes.get(self.next_hole).copied() {
            if h.start >= vaddr {
                break;
            }
            let dst = self.dst;
            self.client()?.entry(dst, h.start, h.pages, PE_PARENT)?;
            self.record(h.start, h.pages, PE_PARENT);
            self.next_hole += 1;
        }
        Ok(())
    }
}

impl PagesOut for ServerPages {
    fn needs_owned_pipe(&self) -> bool {
        true
    }

    fn parent_ranges(&mut self, ranges: &[PageRange]) -> Result<()> {
        if !ranges.is_empty() && !self.has_parent {
            return Err(Error::InvalidArgument(format!(
                "the page server at {} holds no parent images: no page can be left to them",
                self.server
            )));
        }
        self.holes = ranges.to_vec();
        self.next_hole = 0;
        Ok(())
    }

    fn from_pipe(
        &mut self,
        pipe: BorrowedFd<'_>,
        regions: &[PageRange],
        len: usize,
    ) -> std::result::Result<(), (Error, usize)> {
        let taken = |s: &Self| s.client.as_ref().map_or(0, |c| c.pipe_taken());
        let before = taken(self);
        let left = |s: &Self| len - (taken(s) - before) as usize;
        if !self.opened {
            return Err((
                Error::InvalidArgument("pages sent before PS_IOV_OPEN2".into()),
                len,
            ));
        }
        for r in regions {
            let dst = self.dst;
            let sent = self.holes_below(r.start).and_then(|()| {
                self.client()?
                    .pages_from_pipe(dst, r.start, r.pages, PE_PRESENT, pipe)
            });
            if let Err(e) = sent {
                return Err((e, left(self)));
            }
            self.record(r.start, r.pages, PE_PRESENT);
        }
        Ok(())
    }

    /// The holes left, then PS_IOV_CLOSE: returns once the server has stored
    /// everything, and hangs up.
    fn finish(&mut self) -> Result<()> {
        self.holes_below(u64::MAX)?;
        let client = self.client.take().ok_or_else(|| Error::Protocol {
            detail: "the page-server session is closed".into(),
        })?;
        self.stats = client.close()?;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("the page server at {}", self.server)
    }
}
