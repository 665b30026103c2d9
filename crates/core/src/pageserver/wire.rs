// Over 800 lines with its tests: the code is 575 lines (the protocol as data),
// the rest are its unit tests, which belong next to the byte layouts they check.

//! CRIU's page-server wire protocol (criu/page-xfer.c), as data: no I/O here.
//!
//! A connection carries headers (`struct page_server_iov`), each maybe followed by
//! page data, from the client (`criu pre-dump|dump --page-server`) to the server
//! (`criu page-server`); the server answers only three commands. There is no
//! handshake and no version field: the header layout changed with CRIU 4.2, and a
//! server tells the two apart from the first header ([`detect`]).
//!
//! ```text
//! CRIU ≤ 4.1, 24 bytes:  u32 cmd | u32 nr_pages | u64 vaddr    | u64 dst_id
//! CRIU ≥ 4.2, 32 bytes:  u32 cmd | u32 padding  | u64 nr_pages | u64 vaddr | u64 dst_id
//! ```
//!
//! All in the machine's byte order (little-endian on both architectures predump
//! runs on). CRIU 4.2 leaves the padding uninitialised (stack garbage), so it is
//! never looked at. `cmd` holds the command in its low 16 bits and, for ADD_F, the
//! pagemap entry's PE_* flags in its high 16 bits. `dst_id` names the pagemap the
//! command is about: `id << 8 | type`, type 1 a process (id = pid), 2 a shared
//! memory segment (id = shmid); older CRIUs used other type numbers, still
//! understood here as CRIU's server does.
//!
//! The replies, whatever the header format: PARENT gets an `int` (4 bytes, 1 or
//! 0: does the server's parent directory hold that pagemap), OPEN2 a `char` (the
//! same question, asked again when the pagemap is opened), CLOSE and FORCE_CLOSE
//! an `int32` status 0 once everything before it is stored.

use std::fmt;

use crate::PAGE_SIZE;

/// A pagemap entry's flags (criu/include/pagemap.h).
pub const PE_PARENT: u32 = 1;
pub const PE_LAZY: u32 = 2;
pub const PE_PRESENT: u32 = 4;
const PE_ALL: u32 = PE_PARENT | PE_LAZY | PE_PRESENT;

/// The highest user address any supported kernel hands out (x86_64 with 5-level
/// page tables: 2^56; aarch64 tops out at 2^52). A range ending above it is garbage.
pub const USER_ADDRESS_LIMIT: u64 = 1 << 57;

/// The two header layouts, by the CRIU versions that send them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// CRIU up to 4.1 (Debian 12's 3.17 among them): 24 bytes, u32 nr_pages.
    Criu41,
    /// CRIU 4.2 and later: 32 bytes, u64 nr_pages at offset 8.
    Criu42,
}

impl Format {
    pub const fn header_len(self) -> usize {
        match self {
            Format::Criu41 => 24,
            Format::Criu42 => 32,
        }
    }

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Format::Criu41 => "criu-4.1",
            Format::Criu42 => "criu-4.2",
        }
    }

    pub fn from_name(name: &str) -> Option<Format> {
        match name {
            "criu-4.1" => Some(Format::Criu41),
            "criu-4.2" => Some(Format::Criu42),
            _ => None,
        }
    }
}

/// The longest header: what a reader needs room for.
pub const MAX_HEADER_LEN: usize = 32;
/// What a server reads before it knows the format: the shorter header.
pub const MIN_HEADER_LEN: usize = 24;

/// The commands (`PS_IOV_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Pages with data (PE_PRESENT), of CRIUs before ADD_F existed.
    Add,
    /// Pages the parent holds (PE_PARENT), likewise.
    Hole,
    /// Open a pagemap without asking for a reply (old CRIUs).
    Open,
    /// Open a pagemap; the server answers with a `char` has_parent.
    Open2,
    /// Does the server's parent hold this pagemap? Answered with an `int`.
    Parent,
    /// A pagemap entry with its flags in the high bits of `cmd`; page data follows
    /// when they include PE_PRESENT.
    AddF,
    /// Lazy restore asks for pages: served by CRIU's page server in --lazy-pages
    /// mode only, which predump does not have.
    Get,
    /// The end; the server answers with an `int32` 0.
    Close,
    /// The end, for a client whose socket stays open (`--ps-socket`).
    ForceClose,
}

impl Command {
    pub const fn code(self) -> u16 {
        match self {
            Command::Add => 1,
            Command::Hole => 2,
            Command::Open => 3,
            Command::Open2 => 4,
            Command::Parent => 5,
            Command::AddF => 6,
            Command::Get => 7,
            Command::Close => 0x1023,
            Command::ForceClose => 0x1024,
        }
    }

    pub fn from_code(code: u16) -> Option<Command> {
        Some(match code {
            1 => Command::Add,
            2 => Command::Hole,
            3 => Command::Open,
            4 => Command::Open2,
            5 => Command::Parent,
            6 => Command::AddF,
            7 => Command::Get,
            0x1023 => Command::Close,
            0x1024 => Command::ForceClose,
            _ => return None,
        })
    }

    /// CRIU's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Command::Add => "PS_IOV_ADD",
            Command::Hole => "PS_IOV_HOLE",
            Command::Open => "PS_IOV_OPEN",
            Command::Open2 => "PS_IOV_OPEN2",
            Command::Parent => "PS_IOV_PARENT",
            Command::AddF => "PS_IOV_ADD_F",
            Command::Get => "PS_IOV_GET",
            Command::Close => "PS_IOV_CLOSE",
            Command::ForceClose => "PS_IOV_FORCE_CLOSE",
        }
    }

    /// Bytes of the server's answer to this command.
    pub const fn reply_len(self) -> usize {
        match self {
            Command::Parent | Command::Close | Command::ForceClose => 4,
            Command::Open2 => 1,
            _ => 0,
        }
    }
}

/// What kind of pagemap a `dst_id` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DstKind {
    /// A process's memory: `pagemap-<pid>.img`.
    Process,
    /// A shared memory segment: `pagemap-shmem-<shmid>.img`.
    Shmem,
}

/// The pagemap a command is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dst {
    pub kind: DstKind,
    pub id: u64,
}

impl Dst {
    pub fn process(pid: u64) -> Dst {
        Dst {
            kind: DstKind::Process,
            id: pid,
        }
    }

    /// `id << 8 | type`, as CRIU ≥ 3.3 sends it.
    pub fn encode(self) -> u64 {
        let ty = match self.kind {
            DstKind::Process => 1,
            DstKind::Shmem => 2,
        };
        self.id << 8 | ty
    }

    /// Decodes a `dst_id`, accepting the type numbers of older CRIUs as CRIU's
    /// own server does (they were CR_FD_* values, which moved between releases).
    pub fn decode(dst_id: u64) -> Option<Dst> {
        let kind = match dst_id & 0xff {
            1 | 10 | 11 | 16 | 17 => DstKind::Process,
            2 | 27 | 28 | 29 | 32 | 33 | 34 => DstKind::Shmem,
            _ => return None,
        };
        Some(Dst {
            kind,
            id: dst_id >> 8,
        })
    }

    /// The pagemap image's file name.
    pub fn pagemap_file(self) -> String {
        match self.kind {
            DstKind::Process => format!("pagemap-{}.img", self.id),
            DstKind::Shmem => format!("pagemap-shmem-{}.img", self.id),
        }
    }
}

impl fmt::Display for Dst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            DstKind::Process => write!(f, "process {}", self.id),
            DstKind::Shmem => write!(f, "shared memory {}", self.id),
        }
    }
}

/// One header, fields as sent (nothing checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Command in the low 16 bits, flags in the high 16.
    pub cmd: u32,
    pub nr_pages: u64,
    pub vaddr: u64,
    pub dst_id: u64,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Header {
    pub fn new(command: Command, flags: u32, nr_pages: u64, vaddr: u64, dst: Option<Dst>) -> Self {
        Header {
            cmd: flags << 16 | command.code() as u32,
            nr_pages,
            vaddr,
            dst_id: dst.map_or(0, Dst::encode),
        }
    }

    /// The command bits, whether known or not.
    pub fn command_code(&self) -> u16 {
        self.cmd as u16
    }

    pub fn flags(&self) -> u32 {
        self.cmd >> 16
    }

    /// Decodes `bytes` (exactly `format.header_len()` of them).
    pub fn decode(format: Format, bytes: &[u8]) -> Header {
        assert_eq!(bytes.len(), format.header_len(), "a whole header");
        match format {
            Format::Criu41 => Header {
                cmd: u32_at(bytes, 0),
                nr_pages: u32_at(bytes, 4) as u64,
                vaddr: u64_at(bytes, 8),
                dst_id: u64_at(bytes, 16),
            },
            Format::Criu42 => Header {
                cmd: u32_at(bytes, 0),
                nr_pages: u64_at(bytes, 8),
                vaddr: u64_at(bytes, 16),
                dst_id: u64_at(bytes, 24),
            },
        }
    }

    /// Encodes the header into the front of `out`; returns its length. The 4.2
    /// padding is written as zeros. A count of pages that the 4.1 layout cannot
    /// carry is an error: the caller must split the range.
    pub fn encode(
        &self,
        format: Format,
        out: &mut [u8; MAX_HEADER_LEN],
    ) -> Result<usize, WireError> {
        out.fill(0);
        out[0..4].copy_from_slice(&self.cmd.to_le_bytes());
        match format {
            Format::Criu41 => {
                let nr = u32::try_from(self.nr_pages).map_err(|_| WireError::TooManyPages {
                    nr_pages: self.nr_pages,
                    format,
                })?;
                out[4..8].copy_from_slice(&nr.to_le_bytes());
                out[8..16].copy_from_slice(&self.vaddr.to_le_bytes());
                out[16..24].copy_from_slice(&self.dst_id.to_le_bytes());
            }
            Format::Criu42 => {
                out[8..16].copy_from_slice(&self.nr_pages.to_le_bytes());
                out[16..24].copy_from_slice(&self.vaddr.to_le_bytes());
                out[24..32].copy_from_slice(&self.dst_id.to_le_bytes());
            }
        }
        Ok(format.header_len())
    }
}

/// The most pages one header may carry in `format`: the 4.1 layout's u32.
pub fn max_pages_per_header(format: Format) -> u64 {
    match format {
        Format::Criu41 => u32::MAX as u64,
        Format::Criu42 => u64::MAX,
    }
}

/// What the first 24 bytes of a connection say about its format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// The format is known: read the rest of the header if it is the longer one.
    Format(Format),
    /// A first header of CLOSE or FORCE_CLOSE with nothing else set reads the same
    /// in both layouts, and the client waits for the reply before it sends
    /// anything more: answer it, then accept up to 8 more zero bytes (the rest of
    /// a 4.2 header) before the end of the connection.
    EmptyClose(Command),
}

/// Tells the layout from the first 24 bytes of a connection.
///
/// The u64 at offset 16 tells them apart: in the 4.1 layout it is `dst_id`,
/// whose low byte (the type) is never 0 in any command that names a pagemap; in
/// the 4.2 layout it is `vaddr`, which is page-aligned (0 in PARENT and OPEN2,
/// a page address in ADD_F). CRIU's first command names a pagemap (PARENT for a
/// pre-dump, OPEN2 for a dump, OPEN or ADD from older ones), so the two never
/// meet; a close with nothing before it is [`Detected::EmptyClose`].
pub fn detect(first: &[u8]) -> Result<Detected, WireError> {
    assert!(first.len() >= MIN_HEADER_LEN, "24 bytes to look at");
    let cmd = u32_at(first, 0);
    let code = cmd as u16;
    let command = Command::from_code(code).ok_or(WireError::NotAHeader { cmd })?;
    let at16 = u64_at(first, 16);
    if matches!(command, Command::Close | Command::ForceClose)
        && cmd >> 16 == 0
        && first[4..MIN_HEADER_LEN].iter().all(|&b| b == 0)
    {
        return Ok(Detected::EmptyClose(command));
    }
    if at16 & 0xff != 0 && Dst::decode(at16).is_some() {
        return Ok(Detected::Format(Format::Criu41));
    }
    if at16.is_multiple_of(PAGE_SIZE) {
        return Ok(Detected::Format(Format::Criu42));
    }
    Err(WireError::NotAHeader { cmd })
}

/// A request, checked: what the server acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Answer whether the parent holds `dst`'s pagemap (an `int`).
    Parent(Dst),
    /// Open `dst`'s pagemap; `reply`: answer has_parent (a `char`; OPEN2).
    Open {
        dst: Dst,
        reply: bool,
    },
    /// One pagemap entry; `nr_pages * PAGE_SIZE` bytes of data follow if `flags`
    /// has PE_PRESENT.
    Add {
        dst: Dst,
        vaddr: u64,
        nr_pages: u64,
        flags: u32,
    },
    Get,
    /// The end: answer 0 (an `int32`), then wait for the client to hang up.
    Close {
        force: bool,
    },
}

impl Request {
    /// Bytes of page data that follow the header.
    pub fn data_len(&self) -> u64 {
        match *self {
            Request::Add {
                nr_pages, flags, ..
            } if flags & PE_PRESENT != 0 => nr_pages * PAGE_SIZE,
            _ => 0,
        }
    }

    /// The header of this request.
    pub fn header(&self) -> Header {
        match *self {
            Request::Parent(dst) => Header::new(Command::Parent, 0, 0, 0, Some(dst)),
            Request::Open { dst, reply } => Header::new(
                if reply { Command::Open2 } else { Command::Open },
                0,
                0,
                0,
                Some(dst),
            ),
            Request::Add {
                dst,
                vaddr,
                nr_pages,
                flags,
            } => Header::new(Command::AddF, flags, nr_pages, vaddr, Some(dst)),
            Request::Get => Header::new(Command::Get, 0, 0, 0, None),
            Request::Close { force } => Header::new(
                if force {
                    Command::ForceClose
                } else {
                    Command::Close
                },
                0,
                0,
                0,
                None,
            ),
        }
    }
}

/// Checks a header and says what it asks for. Everything a stream of garbage
/// could put in a header is refused here, before the server acts on it: an
/// unknown command or pagemap type, flags that are not PE_* bits or that no
/// entry may have, an unaligned address, and a range that is empty or does not
/// fit in a user address space (which also bounds the data that may follow).
pub fn parse(h: &Header) -> Result<Request, WireError> {
    let command =
        Command::from_code(h.command_code()).ok_or(WireError::UnknownCommand { cmd: h.cmd })?;
    if command != Command::AddF && h.flags() != 0 {
        return Err(WireError::UnexpectedFlags {
            command,
            flags: h.flags(),
        });
    }
    let dst = || {
        Dst::decode(h.dst_id).ok_or(WireError::UnknownDst {
            dst_id: h.dst_id,
            command,
        })
    };
    match command {
        Command::Parent => Ok(Request::Parent(dst()?)),
        Command::Open | Command::Open2 => Ok(Request::Open {
            dst: dst()?,
            reply: command == Command::Open2,
        }),
        Command::Add | Command::Hole | Command::AddF => {
            let flags = match command {
                Command::Add => PE_PRESENT,
                Command::Hole => PE_PARENT,
                _ => h.flags(),
            };
            if flags & !PE_ALL != 0 || flags & (PE_PARENT | PE_PRESENT) == PE_PARENT | PE_PRESENT {
                return Err(WireError::BadFlags { flags });
            }
            if flags & (PE_PARENT | PE_PRESENT | PE_LAZY) == 0 {
                return Err(WireError::BadFlags { flags });
            }
            let dst = dst()?;
            check_range(h.vaddr, h.nr_pages)?;
            Ok(Request::Add {
                dst,
                vaddr: h.vaddr,
                nr_pages: h.nr_pages,
                flags,
            })
        }
        Command::Get => Ok(Request::Get),
        Command::Close | Command::ForceClose => Ok(Request::Close {
            force: command == Command::ForceClose,
        }),
    }
}

/// A range of pages that a user address space can hold.
pub fn check_range(vaddr: u64, nr_pages: u64) -> Result<(), WireError> {
    // Compared without arithmetic that could wrap around.
    let fits = vaddr.is_multiple_of(PAGE_SIZE)
        && nr_pages > 0
        && vaddr < USER_ADDRESS_LIMIT
        && nr_pages <= (USER_ADDRESS_LIMIT - vaddr) / PAGE_SIZE;
    if fits {
        Ok(())
    } else {
        Err(WireError::BadRange { vaddr, nr_pages })
    }
}

/// The server's replies.
pub fn parent_reply(has_parent: bool) -> [u8; 4] {
    (has_parent as i32).to_le_bytes()
}
pub fn open2_reply(has_parent: bool) -> [u8; 1] {
    [has_parent as u8]
}
pub fn close_reply() -> [u8; 4] {
    0i32.to_le_bytes()
}

/// What is wrong with a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The first bytes of the connection are not a page-server header at all.
    NotAHeader {
        cmd: u32,
    },
    UnknownCommand {
        cmd: u32,
    },
    UnexpectedFlags {
        command: Command,
        flags: u32,
    },
    BadFlags {
        flags: u32,
    },
    UnknownDst {
        dst_id: u64,
        command: Command,
    },
    BadRange {
        vaddr: u64,
        nr_pages: u64,
    },
    /// The 4.1 layout carries at most 2^32 - 1 pages per header.
    TooManyPages {
        nr_pages: u64,
        format: Format,
    },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::NotAHeader { cmd } => write!(
                f,
                "the connection does not start with a CRIU page-server header (first word {cmd:#010x})"
            ),
            WireError::UnknownCommand { cmd } => {
                write!(f, "unknown command {:#x} (cmd word {cmd:#010x})", *cmd as u16)
            }
            WireError::UnexpectedFlags { command, flags } => {
                write!(f, "{} with flags {flags:#x} (only PS_IOV_ADD_F carries flags)", command.name())
            }
            WireError::BadFlags { flags } => write!(
                f,
                "pagemap entry flags {flags:#x} are not a valid combination of PE_PARENT, PE_LAZY and PE_PRESENT"
            ),
            WireError::UnknownDst { dst_id, command } => {
                write!(f, "{} names an unknown pagemap type (dst_id {dst_id:#x})", command.name())
            }
            WireError::BadRange { vaddr, nr_pages } => write!(
                f,
                "{nr_pages} pages at {vaddr:#x} do not fit in a user address space (unaligned, empty or too long)"
            ),
            WireError::TooManyPages { nr_pages, format } => write!(
                f,
                "{nr_pages} pages do not fit in one {} header",
                format.name()
            ),
        }
    }
}

impl std::error::Error for WireError {}

#[cfg(test)]
mod tests {
    use super::*;

    const PID_DST: u64 = 9740 << 8 | 1;

    fn bytes42(cmd: u32, pad: u32, nr: u64, vaddr: u64, dst: u64) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&cmd.to_le_bytes());
        b.extend_from_slice(&pad.to_le_bytes());
        b.extend_from_slice(&nr.to_le_bytes());
        b.extend_from_slice(&vaddr.to_le_bytes());
        b.extend_from_slice(&dst.to_le_bytes());
        b
    }

    fn bytes41(cmd: u32, nr: u32, vaddr: u64, dst: u64) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&cmd.to_le_bytes());
        b.extend_from_slice(&nr.to_le_bytes());
        b.extend_from_slice(&vaddr.to_le_bytes());
        b.extend_from_slice(&dst.to_le_bytes());
        b
    }

    #[test]
    fn the_recorded_first_header_of_criu_4_2() {
        // wire/s1-predump/client-to-server.bin, bytes 0..32.
        let first = bytes42(5, 0, 0, 0, 0x260c01);
        assert_eq!(detect(&first[..24]), Ok(Detected::Format(Format::Criu42)));
        let h = Header::decode(Format::Criu42, &first);
        assert_eq!(parse(&h), Ok(Request::Parent(Dst::process(9740))));
        // The dump's first header (s3) is OPEN2.
        let first = bytes42(4, 0, 0, 0, 0x260c01);
        assert_eq!(detect(&first[..24]), Ok(Detected::Format(Format::Criu42)));
    }

    #[test]
    fn criu_4_1_first_headers() {
        for cmd in [Command::Parent, Command::Open2, Command::Open] {
            let first = bytes41(cmd.code() as u32, 0, 0, PID_DST);
            assert_eq!(
                detect(&first),
                Ok(Detected::Format(Format::Criu41)),
                "{cmd:?}"
            );
            let h = Header::decode(Format::Criu41, &first);
            assert_eq!(h.dst_id, PID_DST);
        }
        // An old CRIU's ADD without OPEN: dst_id at 16, vaddr at 8.
        let add = bytes41(1, 3, 0x7f00_0000_0000, 9740 << 8 | 11);
        assert_eq!(detect(&add), Ok(Detected::Format(Format::Criu41)));
        let h = Header::decode(Format::Criu41, &add);
        assert_eq!(
            parse(&h),
            Ok(Request::Add {
                dst: Dst::process(9740),
                vaddr: 0x7f00_0000_0000,
                nr_pages: 3,
                flags: PE_PRESENT
            })
        );
        // The same in 4.2 layout, with padding garbage as recorded in s2.
        let add = bytes42(6 | PE_PRESENT << 16, 0x7fff, 3, 0x7f00_0000_0000, PID_DST);
        assert_eq!(detect(&add[..24]), Ok(Detected::Format(Format::Criu42)));
    }

    #[test]
    fn an_empty_close_is_ambiguous_and_said_so() {
        let close = bytes42(0x1023, 0, 0, 0, 0);
        assert_eq!(
            detect(&close[..24]),
            Ok(Detected::EmptyClose(Command::Close))
        );
        // Garbage in the 4.2 padding makes it a 4.2 header (4.1's nr_pages of a
        // close is 0).
        let close = bytes42(0x1023, 0x7fff, 0, 0, 0);
        assert_eq!(detect(&close[..24]), Ok(Detected::Format(Format::Criu42)));
    }

    #[test]
    fn garbage_is_not_a_header() {
        let http = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n";
        assert!(matches!(
            detect(&http[..24]),
            Err(WireError::NotAHeader { .. })
        ));
        // A known command but an offset-16 word that is neither a dst_id nor a page address.
        let odd = bytes41(4, 0, 0, 0x1000_0100);
        assert!(matches!(detect(&odd), Err(WireError::NotAHeader { .. })));
        assert!(matches!(
            detect(&[0xffu8; 24]),
            Err(WireError::NotAHeader { .. })
        ));
    }

    #[test]
    fn every_command_round_trips_in_both_layouts() {
        let reqs = [
            Request::Parent(Dst::process(1)),
            Request::Open {
                dst: Dst::process(1),
                reply: true,
            },
            Request::Open {
                dst: Dst {
                    kind: DstKind::Shmem,
                    id: 77,
                },
                reply: false,
            },
            Request::Add {
                dst: Dst::process(1 << 40),
                vaddr: 0x7ffe_0000_0000,
                nr_pages: 512,
                flags: PE_PRESENT | PE_LAZY,
            },
            Request::Add {
                dst: Dst::process(2),
                vaddr: 0x1000,
                nr_pages: 1,
                flags: PE_PARENT,
            },
            Request::Close { force: false },
            Request::Close { force: true },
        ];
        for format in [Format::Criu41, Format::Criu42] {
            for r in reqs {
                let mut buf = [0u8; MAX_HEADER_LEN];
                let n = r.header().encode(format, &mut buf).unwrap();
                assert_eq!(n, format.header_len());
                let h = Header::decode(format, &buf[..n]);
                assert_eq!(parse(&h), Ok(r), "{format:?} {r:?}");
            }
        }
    }

    #[test]
    fn the_4_1_layout_cannot_carry_2_to_the_32_pages() {
        let h = Header::new(Command::AddF, PE_PRESENT, 1 << 32, 0, Some(Dst::process(1)));
        let mut buf = [0u8; MAX_HEADER_LEN];
        assert!(matches!(
            h.encode(Format::Criu41, &mut buf),
            Err(WireError::TooManyPages { .. })
        ));
        assert_eq!(h.encode(Format::Criu42, &mut buf), Ok(32));
    }

    #[test]
    fn bad_headers_are_refused_with_what_is_wrong() {
        let dst = Some(Dst::process(1));
        let bad = |h: Header| parse(&h).unwrap_err().to_string();
        assert!(bad(Header {
            cmd: 0x99,
            ..Default::default()
        })
        .contains("unknown command 0x99"));
        assert!(bad(Header::new(Command::Open2, 4, 0, 0, dst))
            .contains("only PS_IOV_ADD_F carries flags"));
        assert!(bad(Header::new(Command::AddF, 8, 1, 0x1000, dst)).contains("flags 0x8"));
        assert!(bad(Header::new(
            Command::AddF,
            PE_PARENT | PE_PRESENT,
            1,
            0x1000,
            dst
        ))
        .contains("flags 0x5"));
        assert!(bad(Header::new(Command::AddF, 0, 1, 0x1000, dst)).contains("flags 0x0"));
        assert!(bad(Header {
            cmd: 4,
            dst_id: 9740 << 8 | 3,
            ..Default::default()
        })
        .contains("unknown pagemap type"));
        // Huge nr_pages: refused before anything is read or allocated.
        assert!(bad(Header::new(
            Command::AddF,
            PE_PRESENT,
            u64::MAX,
            0x1000,
            dst
        ))
        .contains("do not fit"));
        assert!(bad(Header::new(Command::AddF, PE_PRESENT, 1 << 46, 0, dst)).contains("do not fit"));
        assert!(bad(Header::new(Command::AddF, PE_PRESENT, 1, 0x1001, dst)).contains("do not fit"));
        assert!(bad(Header::new(Command::AddF, PE_PRESENT, 0, 0x1000, dst)).contains("do not fit"));
        // An address range that wraps around.
        assert!(bad(Header::new(
            Command::AddF,
            PE_PARENT,
            2,
            u64::MAX - 4095,
            dst
        ))
        .contains("do not fit"));
        // The largest range that fits is fine.
        let whole = USER_ADDRESS_LIMIT / PAGE_SIZE;
        assert!(parse(&Header::new(Command::AddF, PE_PARENT, whole, 0, dst)).is_ok());
    }

    #[test]
    fn data_follows_only_present_entries() {
        let add = |flags| Request::Add {
            dst: Dst::process(1),
            vaddr: 0,
            nr_pages: 3,
            flags,
        };
        assert_eq!(add(PE_PRESENT).data_len(), 3 * PAGE_SIZE);
        assert_eq!(add(PE_PRESENT | PE_LAZY).data_len(), 3 * PAGE_SIZE);
        assert_eq!(add(PE_LAZY).data_len(), 0);
        assert_eq!(add(PE_PARENT).data_len(), 0);
    }

    #[test]
    fn legacy_dst_types_decode_as_criu_does() {
        assert_eq!(Dst::decode(5 << 8 | 11), Some(Dst::process(5)));
        assert_eq!(
            Dst::decode(5 << 8 | 34),
            Some(Dst {
                kind: DstKind::Shmem,
                id: 5
            })
        );
        assert_eq!(Dst::decode(5 << 8 | 12), None);
        assert_eq!(Dst::process(9740).encode(), 0x260c01);
        assert_eq!(Dst::process(9740).pagemap_file(), "pagemap-9740.img");
        assert_eq!(
            Dst {
                kind: DstKind::Shmem,
                id: 3
            }
            .pagemap_file(),
            "pagemap-shmem-3.img"
        );
    }

    #[test]
    fn replies_are_the_recorded_bytes() {
        // wire/s1-predump/server-to-client.bin: 00 00 00 00 | 00 | 00 00 00 00
        assert_eq!(parent_reply(false), [0, 0, 0, 0]);
        assert_eq!(open2_reply(false), [0]);
        assert_eq!(close_reply(), [0, 0, 0, 0]);
        // s2 (a parent): 01 00 00 00 | 01 | 00 00 00 00
        assert_eq!(parent_reply(true), [1, 0, 0, 0]);
        assert_eq!(open2_reply(true), [1]);
    }
}
