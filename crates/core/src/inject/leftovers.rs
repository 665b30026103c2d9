//! What a predump that died while injecting may leave in the target, and how
//! the next run finds and removes it (docs/INJECTION-SAFETY.md, "Leftovers").
//!
//! The stub in the vDSO padding is the marker: it begins with `STUB_MAGIC`, the
//! pid and tid it was made for, and after its code it holds a *journal* of what
//! of ours may be in the target, and a random *nonce* of the run. Each entry is
//! written *before* the call that makes the thing it names, and taken out once
//! it is gone:
//!
//! * `Mapping`: the scratch mapping, at an address chosen before its mmap
//!   (MAP_FIXED_NOREPLACE). It counts as ours only while its last page holds
//!   `STUB_MAGIC` and the nonce (`SCRATCH_MARK`), written by predump at the
//!   mmap's exit stop, before the thread can do anything else; a predump that
//!   dies before that lets the thread go on into the stub, which unmaps what
//!   the mmap made (`Injector::scratch`). So a range the target mapped for
//!   itself is never taken for ours, whether the mmap never ran or ran and was
//!   undone, or our munmap ran and the entry was not taken out yet;
//! * `FdPair` / `FdCmsg`: the place in the scratch mapping where the *kernel*
//!   writes the fds a socketpair or a recvmsg(SCM_RIGHTS) makes: read after
//!   predump's death, they name those fds even if predump never saw them;
//! * `FdWord`: the place in the scratch mapping where the *stub* stores the
//!   result of a call that returns an fd (userfaultfd, memfd_create, fcntl's
//!   dup) if predump dies before it read it, and where predump stores it
//!   itself, at the call's exit stop, if it lives;
//! * `Fd`: fds predump knows by number.
//!
//! Entries that point into the scratch mapping count only while that mapping
//! is recognised as ours (above). An fd is closed only if it is still of the
//! kind journaled (a socket, a pipe, a userfaultfd, a tracking marker); a
//! mapping is removed only if it is ours. The stub itself goes last (zeroed), so
//! a run that dies while cleaning leaves the journal for the next: a cleaning
//! run takes the journal over as it is, with its nonce, and drops the old
//! entries only when its own name all that they did.

use std::os::unix::fs::FileExt;

use super::{place, Injector, JOURNAL_AT, STUB_MAGIC};
use crate::freeze::Frozen;
use crate::{proc, Error, Result, PAGE_SIZE};

/// The journal's size in the stub: a count, the run's nonce, then 16-byte
/// entries. It must fit the vDSO's padding after the stub: x86_64's 544
/// bytes, where Debian's 6.12 kernel leaves 960 bytes (6.1: 3,520), so 20
/// entries of 16 bytes (888 bytes in all, less than the 904 of the first
/// layout); aarch64's 1,344 bytes (its sigreturn frame), where Debian's arm64
/// 6.12 leaves 3,456 (1,688 in all; 6.1's 704 are too few: refused there).
pub(crate) const JOURNAL_BYTES: u64 = 8 + NONCE_BYTES as u64 + ENTRY_BYTES * MAX_ENTRIES as u64;
const ENTRY_BYTES: u64 = 16;
const ENTRIES_AT: usize = 8 + NONCE_BYTES;
// Debian 6.12's vDSO leaves 960 bytes of padding on x86_64, 3,456 on aarch64:
// stub and journal fit there.
#[cfg(target_arch = "x86_64")]
const _: () = assert!(JOURNAL_AT + JOURNAL_BYTES <= 904);
#[cfg(target_arch = "aarch64")]
const _: () = assert!(JOURNAL_AT + JOURNAL_BYTES <= 1688);
const MAX_ENTRIES: usize = 20;
/// The run's random nonce, in the journal and in its scratch mapping's mark.
pub(crate) const NONCE_BYTES: usize = 16;
/// Where in the scratch mapping's last page (the injector's own) its mark lies:
/// `STUB_MAGIC`, then the nonce.
pub(crate) const SCRATCH_MARK: u64 = 64;
/// An entry's first word holds its tag and fd kind in the low byte, and a value
/// of up to 56 bits above them (a user-space address, an fd, or a range).
const VALUE_BITS: u32 = 56;
/// A `ClosingRange` holds its first fd and how many follow, up to this many.
const MAX_RANGE_SPAN: u64 = (1 << (VALUE_BITS - 32)) - 1;
/// The most fds one `FdCmsg` names (SCM_MAX_FD).
const MAX_CMSG_FDS: u64 = 253;

/// What an fd of ours is, to check before closing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind {
    Socket,
    Pipe,
    /// A userfaultfd (dirty tracking's).
    Uffd,
    /// A memfd named as dirty tracking's marker (`predump-uffd …`).
    Marker,
}

impl FdKind {
    const ALL: [FdKind; 4] = [FdKind::Socket, FdKind::Pipe, FdKind::Uffd, FdKind::Marker];

    fn code(self) -> u32 {
        match self {
            FdKind::Socket => 1,
            FdKind::Pipe => 2,
            FdKind::Uffd => 3,
            FdKind::Marker => 4,
        }
    }
    fn of(code: u32) -> Option<FdKind> {
        FdKind::ALL.into_iter().find(|k| k.code() == code)
    }
    pub(crate) fn matches(self, link: &str) -> bool {
        match self {
            FdKind::Socket => link.starts_with("socket:"),
            FdKind::Pipe => link.starts_with("pipe:"),
            FdKind::Uffd => link == "anon_inode:[userfaultfd]",
            FdKind::Marker => link.starts_with("/memfd:predump-uffd "),
        }
    }
    /// The kind of fd `fd` of process `pid`, if it is one of ours'.
    pub(crate) fn of_fd(pid: i32, fd: i32) -> Option<FdKind> {
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
        let link = link.to_string_lossy();
        FdKind::ALL.into_iter().find(|k| k.matches(&link))
    }
}

/// One journal entry (see the module comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leftover {
    /// An anonymous read-write mapping of ours.
    Mapping { addr: u64, len: u64 },
    /// Two `int`s at `addr` (in our scratch mapping) that the kernel fills
    /// with fds (socketpair, pipe2); -1 where one was closed already.
    FdPair { addr: u64, kind: FdKind },
    /// A `struct cmsghdr` at `addr` that a recvmsg fills with SCM_RIGHTS fds.
    FdCmsg { addr: u64, kind: FdKind },
    /// One fd known by number.
    Fd { fd: i32, kind: FdKind },
    /// An `i64` at `addr` (in our scratch mapping) where a call's result, an
    /// fd, is stored: by the stub if predump died before it read it, else by
    /// predump; `NOT_RUN` or negative: no fd.
    FdWord { addr: u64, kind: FdKind },
    /// An fd being closed by an injected close whose stub stores its result at
    /// `done` (in our scratch mapping), `NOT_RUN` until it ran: ours while
    /// that still reads `NOT_RUN`, closed already otherwise.
    Closing { fd: i32, kind: FdKind, done: u64 },
    /// close_range(first, last) as `Closing`.
    ClosingRange {
        first: i32,
        last: i32,
        kind: FdKind,
        done: u64,
    },
}

/// The journal as the stub holds it; None if it has too many entries or a
/// value does not fit an entry.
pub(crate) fn encode(entries: &[Leftover], nonce: &[u8; NONCE_BYTES]) -> Option<Vec<u8>> {
    if entries.len() > MAX_ENTRIES {
        return None;
    }
    let mut out = vec![0u8; JOURNAL_BYTES as usize];
    out[..8].copy_from_slice(&(entries.len() as u64).to_ne_bytes());
    out[8..ENTRIES_AT].copy_from_slice(nonce);
    for (i, e) in entries.iter().enumerate() {
        let fd = |fd: i32| fd as u32 as u64;
        let (tag, kind, a, b) = match *e {
            Leftover::Mapping { addr, len } => (1u64, 0, addr, len),
            Leftover::FdPair { addr, kind } => (2, kind.code(), addr, 0),
            Leftover::FdCmsg { addr, kind } => (3, kind.code(), addr, 0),
            Leftover::Fd { fd: n, kind } => (4, kind.code(), fd(n), 0),
            Leftover::FdWord { addr, kind } => (7, kind.code(), addr, 0),
            Leftover::Closing { fd: n, kind, done } => (5, kind.code(), fd(n), done),
            Leftover::ClosingRange {
                first,
                last,
                kind,
                done,
            } => {
                // Only the first MAX_CMSG_FDS of a range are ever looked at
                // (`find`), so a longer span is kept at what fits.
                let span = (last as i64 - first as i64).clamp(0, MAX_RANGE_SPAN as i64) as u64;
                (6, kind.code(), fd(first) | span << 32, done)
            }
        };
        if a >> VALUE_BITS != 0 {
            return None;
        }
        let at = ENTRIES_AT + ENTRY_BYTES as usize * i;
        let head = tag | (kind as u64) << 4 | a << 8;
        out[at..at + 8].copy_from_slice(&head.to_ne_bytes());
        out[at + 8..at + 16].copy_from_slice(&b.to_ne_bytes());
    }
    Some(out)
}

/// The entries and the nonce of a journal; unknown entries are skipped.
fn decode(bytes: &[u8]) -> (Vec<Leftover>, [u8; NONCE_BYTES]) {
    let word = |at: usize| u64::from_ne_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let n = (word(0) as usize).min(MAX_ENTRIES);
    let nonce: [u8; NONCE_BYTES] = bytes[8..ENTRIES_AT].try_into().expect("nonce");
    let entries = (0..n)
        .filter_map(|i| {
            let at = ENTRIES_AT + ENTRY_BYTES as usize * i;
            let (head, b) = (word(at), word(at + 8));
            let (tag, a) = (head & 0xf, head >> 8);
            let kind = FdKind::of(((head >> 4) & 0xf) as u32);
            let fd = |v: u64| v as u32 as i32;
            match tag {
                1 => Some(Leftover::Mapping { addr: a, len: b }),
                2 => Some(Leftover::FdPair {
                    addr: a,
                    kind: kind?,
                }),
                3 => Some(Leftover::FdCmsg {
                    addr: a,
                    kind: kind?,
                }),
                4 => Some(Leftover::Fd {
                    fd: fd(a),
                    kind: kind?,
                }),
                5 => Some(Leftover::Closing {
                    fd: fd(a),
                    kind: kind?,
                    done: b,
                }),
                6 => Some(Leftover::ClosingRange {
                    first: fd(a),
                    last: fd(a).saturating_add((a >> 32) as i32),
                    kind: kind?,
                    done: b,
                }),
                7 => Some(Leftover::FdWord {
                    addr: a,
                    kind: kind?,
                }),
                _ => None,
            }
        })
        .collect();
    (entries, nonce)
}

/// What a dead predump left in a process, found from its stub's journal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    /// The stub's address and length (the whole journaled area).
    pub stub: Option<(u64, u64)>,
    /// Mappings of ours still there.
    pub mappings: Vec<(u64, u64)>,
    /// Fds of ours still open (and of the kind journaled).
    pub fds: Vec<i32>,
    /// A thread of the target still runs the stub (a process stopped when
    /// predump died: it goes on into the stub's epilogue when continued, and
    /// needs the stub as it is until then): nothing is removed.
    pub in_use: Option<i32>,
    /// The journal's entries that still name something, and its nonce: what
    /// the run that removes them takes over first.
    pub(crate) live: Vec<Leftover>,
    pub(crate) nonce: [u8; NONCE_BYTES],
}

impl Found {
    pub fn is_empty(&self) -> bool {
        self.stub.is_none()
    }

    /// "a stub, 1 mapping and 3 fds" (for messages).
    pub fn describe(&self) -> String {
        if let Some(tid) = self.in_use {
            return format!(
                "none of the things (thread {tid} is still inside predump's injected code: \
                 continue the process if it is stopped, then run predump again)"
            );
        }
        format!(
            "predump's injection stub, {} mapping{} and {} fd{}",
            self.mappings.len(),
            if self.mappings.len() == 1 { "" } else { "s" },
            self.fds.len(),
            if self.fds.len() == 1 { "" } else { "s" },
        )
    }
}

/// The stub left in process `pid`, if any: its address, its length and its bytes.
fn read_stub(pid: i32) -> Result<Option<(u64, u64, Vec<u8>)>> {
    let Ok((stub, room)) = place::locate(pid) else {
        // No vDSO of this kernel: no stub of ours could have been written.
        return Ok(None);
    };
    let len = JOURNAL_AT + JOURNAL_BYTES;
    if len > room {
        return Ok(None);
    }
    let mut bytes = vec![0u8; len as usize];
    super::read_memory(pid, stub, &mut bytes)?;
    if &bytes[..16] != STUB_MAGIC {
        return Ok(None);
    }
    Ok(Some((stub, len, bytes)))
}

/// Whether [addr, addr+len) is a scratch mapping of the run with `nonce`:
/// anonymous, private, read-write, and its last page marked (`SCRATCH_MARK`).
fn is_ours(pid: i32, maps: &str, addr: u64, len: u64, nonce: &[u8; NONCE_BYTES]) -> bool {
    if len < PAGE_SIZE || !is_anon_rw(maps, addr, len) {
        return false;
    }
    let mut mark = [0u8; 16 + NONCE_BYTES];
    super::read_memory(pid, addr + len - PAGE_SIZE + SCRATCH_MARK, &mut mark).is_ok()
        && &mark[..16] == STUB_MAGIC
        && mark[16..] == nonce[..]
}

/// Whether process `pid`, whose maps text is `maps`, may hold a dead run's
/// leftovers: its vDSO tail begins with our stub's magic. One read of 16
/// bytes, for many processes at once from any thread (a tree's scan); a
/// process found marked (or not readable) is then given to `clean`.
pub fn may_hold(pid: i32, maps: &str) -> bool {
    let Some(stub) = place::stub_at(maps) else {
        return false; // no vDSO of this kernel: no stub of ours was ever written
    };
    let mut magic = [0u8; 16];
    super::read_memory(pid, stub, &mut magic).is_err() || &magic[..] == STUB_MAGIC
}

/// Looks for a dead predump's leftovers in process `pid` (which may be running:
/// nothing is changed). Cheap when there are none: one read of the vDSO tail.
pub fn find(pid: i32) -> Result<Found> {
    let Some((stub, len, bytes)) = read_stub(pid)? else {
        return Ok(Found::default());
    };
    let (entries, nonce) = decode(&bytes[JOURNAL_AT as usize..]);
    let mut found = Found {
        stub: Some((stub, len)),
        nonce,
        ..Found::default()
    };
    let maps = proc::read_proc(pid, &format!("/proc/{pid}/maps"))?;
    // The scratch mappings that are ours; what lies in any other range is not
    // read (the target may have mapped it for itself).
    let ours: Vec<(u64, u64)> = entries
        .iter()
        .filter_map(|e| match *e {
            Leftover::Mapping { addr, len } if is_ours(pid, &maps, addr, len, &nonce) => {
                Some((addr, len))
            }
            _ => None,
        })
        .collect();
    let inside = |at: u64, n: u64| ours.iter().any(|&(a, l)| at >= a && at + n <= a + l);
    let read = |at: u64, buf: &mut [u8]| {
        inside(at, buf.len() as u64) && super::read_memory(pid, at, buf).is_ok()
    };
    let fd_link = |fd: i32| {
        std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
            .ok()
            .map(|l| l.to_string_lossy().into_owned())
    };
    // Whether fd `fd` is open and of `kind`; added to `found` if so.
    let push_fd = |fd: i32, kind: FdKind, found: &mut Found| {
        let ok = fd >= 0 && fd_link(fd).is_some_and(|l| kind.matches(&l));
        if ok && !found.fds.contains(&fd) {
            found.fds.push(fd);
        }
        ok
    };
    let not_run = |done: u64| {
        let mut b = [0u8; 8];
        read(done, &mut b) && i64::from_ne_bytes(b) == super::NOT_RUN
    };
    for entry in entries {
        let live = match entry {
            Leftover::Mapping { addr, len } => {
                let mine = ours.contains(&(addr, len));
                if mine {
                    found.mappings.push((addr, len));
                }
                mine
            }
            Leftover::FdPair { addr, kind } => {
                let mut b = [0u8; 8];
                read(addr, &mut b) && {
                    let mut any = false;
                    for half in b.chunks_exact(4) {
                        any |= push_fd(
                            i32::from_ne_bytes(half.try_into().unwrap()),
                            kind,
                            &mut found,
                        );
                    }
                    any
                }
            }
            Leftover::FdCmsg { addr, kind } => {
                let mut b = vec![0u8; (16 + 4 * MAX_CMSG_FDS) as usize];
                read(addr, &mut b) && {
                    // struct cmsghdr { size_t len; int level; int type; int fds[]; }
                    let clen = u64::from_ne_bytes(b[..8].try_into().unwrap()).min(b.len() as u64);
                    let is_rights = i32::from_ne_bytes(b[8..12].try_into().unwrap())
                        == libc::SOL_SOCKET
                        && i32::from_ne_bytes(b[12..16].try_into().unwrap()) == libc::SCM_RIGHTS;
                    let mut any = false;
                    if is_rights && clen >= 16 {
                        for fd in b[16..clen as usize].chunks_exact(4) {
                            any |= push_fd(
                                i32::from_ne_bytes(fd.try_into().unwrap()),
                                kind,
                                &mut found,
                            );
                        }
                    }
                    any
                }
            }
            Leftover::Fd { fd, kind } => push_fd(fd, kind, &mut found),
            Leftover::FdWord { addr, kind } => {
                let mut b = [0u8; 8];
                read(addr, &mut b) && {
                    let v = i64::from_ne_bytes(b);
                    (0..=i32::MAX as i64).contains(&v) && push_fd(v as i32, kind, &mut found)
                }
            }
            Leftover::Closing { fd, kind, done } => not_run(done) && push_fd(fd, kind, &mut found),
            Leftover::ClosingRange {
                first,
                last,
                kind,
                done,
            } => {
                not_run(done) && {
                    let mut any = false;
                    for fd in first..=last.min(first.saturating_add(MAX_CMSG_FDS as i32)) {
                        any |= push_fd(fd, kind, &mut found);
                    }
                    any
                }
            }
        };
        if live {
            found.live.push(entry);
        }
    }
    found.fds.sort_unstable();
    Ok(found)
}

/// The raw journal of a stub left in process `pid` (None: no stub), for
/// diagnostics.
pub fn journal(pid: i32) -> Option<Vec<Leftover>> {
    let (_, _, bytes) = read_stub(pid).ok()??;
    Some(decode(&bytes[JOURNAL_AT as usize..]).0)
}

/// Whether [addr, addr+len) is covered by anonymous, private, read-write
/// mappings (possibly merged with neighbours).
fn is_anon_rw(maps: &str, addr: u64, len: u64) -> bool {
    let mut at = addr;
    for line in maps.lines() {
        let mut w = line.split_whitespace();
        let (Some(range), Some(perms), Some(_off), Some(_dev), Some(inode)) =
            (w.next(), w.next(), w.next(), w.next(), w.next())
        else {
            continue;
        };
        let Some((s, e)) = range.split_once('-') else {
            continue;
        };
        let (Ok(s), Ok(e)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16)) else {
            continue;
        };
        if s <= at && at < e {
            if perms != "rw-p" || inode != "0" || w.next().is_some() {
                return false;
            }
            at = e;
            if at >= addr + len {
                return true;
            }
        }
    }
    false
}

/// A thread of `frozen` whose pc lies in the stub at `stub` (see
/// `Found::in_use`).
fn thread_in_stub(frozen: &Frozen, stub: u64) -> Option<i32> {
    frozen.tids().find(|&tid| {
        super::arch::get_regs(tid)
            .map(|r| (stub..stub + JOURNAL_AT).contains(&super::arch::pc(&r)))
            .unwrap_or(false)
    })
}

/// Removes what `find` found, while `frozen` holds the target: closes the
/// fds and unmaps the mappings with injected calls, then the stub (a new
/// Injector's own stub overwrites it, and its restore zeroes the place).
/// Nothing is done while a thread still runs the stub (`Found::in_use`).
pub fn remove(frozen: &Frozen, found: &mut Found) -> Result<()> {
    let Some((stub, _)) = found.stub else {
        return Ok(());
    };
    if let Some(tid) = thread_in_stub(frozen, stub) {
        found.in_use = Some(tid);
        return Ok(());
    }
    let pid = frozen.pid();
    // The new stub takes the old one's place with the old journal as it is (its
    // entries that still name something, its nonce): nothing is unnamed at any
    // moment. What is left to remove is then journaled afresh (lists shaped as
    // received cmsgs, one per kind, up to 253 fds each, from which each close
    // strikes its fd exactly), and only then the old entries go, in the same
    // write.
    let mut inj = Injector::any_inner(frozen, Some((found.live.clone(), found.nonce)))?;
    let mut lists: Vec<(FdKind, Vec<i32>)> = Vec::new();
    for &fd in &found.fds {
        let Some(kind) = FdKind::of_fd(pid, fd) else {
            continue;
        };
        match lists
            .iter_mut()
            .find(|(k, l)| *k == kind && (l.len() as u64) < MAX_CMSG_FDS)
        {
            Some((_, l)) => l.push(fd),
            None => lists.push((kind, vec![fd])),
        }
    }
    let list_bytes = 16 + 4 * MAX_CMSG_FDS;
    // Closes are journaled in a scratch mapping; munmaps need none.
    let at = match lists.is_empty() {
        true => 0,
        false => inj.scratch(lists.len() as u64 * list_bytes)?,
    };
    let mut entries: Vec<Leftover> = inj.scratch_entry().into_iter().collect();
    for (i, (kind, fds)) in lists.iter().enumerate() {
        let addr = at + i as u64 * list_bytes;
        let mut b = Vec::with_capacity(16 + 4 * fds.len());
        b.extend_from_slice(&((16 + 4 * fds.len()) as u64).to_ne_bytes());
        b.extend_from_slice(&libc::SOL_SOCKET.to_ne_bytes());
        b.extend_from_slice(&libc::SCM_RIGHTS.to_ne_bytes());
        for fd in fds {
            b.extend_from_slice(&fd.to_ne_bytes());
        }
        inj.write_memory(addr, &b)?;
        entries.push(Leftover::FdCmsg { addr, kind: *kind });
    }
    for &(addr, len) in &found.mappings {
        entries.push(Leftover::Mapping { addr, len });
    }
    inj.set_journal(entries)?;
    crate::test_hooks::inject_gate("leftovers-journaled")?;
    for (_, fds) in &lists {
        for &fd in fds {
            inj.close(fd)?;
        }
    }
    for &(addr, len) in &found.mappings {
        // Unmapped first, then out of the journal: in between, the range is
        // no longer marked as ours, whatever the target maps there.
        inj.munmap(addr, len)?;
        inj.forget(&Leftover::Mapping { addr, len })?;
    }
    inj.restore()
}

/// `find`, and `remove` if anything was found: for a caller holding `frozen`.
/// Returns what was removed (empty: nothing).
pub fn clean(frozen: &Frozen) -> Result<Found> {
    let mut found = find(frozen.pid())?;
    remove(frozen, &mut found)?;
    Ok(found)
}

#[cfg(target_arch = "x86_64")]
const USER_TOP: u64 = 1 << 47;
#[cfg(target_arch = "aarch64")]
const USER_TOP: u64 = 1 << 52;

/// A free range of `len` bytes in process `pid`'s address space, with a free
/// page on each side (so it merges with nothing): the highest such gap below
/// the topmost mapping. The target is frozen: nothing maps meanwhile.
pub(crate) fn free_range(pid: i32, len: u64) -> Result<u64> {
    let maps = proc::read_proc(pid, &format!("/proc/{pid}/maps"))?;
    let mut ranges: Vec<(u64, u64)> = maps
        .lines()
        .filter_map(|l| {
            let (s, e) = l.split_whitespace().next()?.split_once('-')?;
            Some((
                u64::from_str_radix(s, 16).ok()?,
                u64::from_str_radix(e, 16).ok()?,
            ))
        })
        // Userspace only (the x86_64 vsyscall page lies above it; on aarch64,
        // whose user space reaches 2^48 or 2^52, every line is user space).
        .filter(|&(s, _)| s < USER_TOP)
        .collect();
    ranges.sort_unstable();
    for pair in ranges.windows(2).rev() {
        let (below_end, above_start) = (pair[0].1, pair[1].0);
        if above_start >= below_end + len + 2 * PAGE_SIZE {
            return Ok(above_start - PAGE_SIZE - len);
        }
    }
    Err(Error::sys(
        format!("finding {len} free bytes in process {pid}'s address space"),
        std::io::Error::from_raw_os_error(libc::ENOMEM),
    ))
}

/// Reads the stub's header (pid and tid it was made for) for messages and
/// tests; None if there is no stub.
pub fn stub_owner(pid: i32) -> Option<(i32, i32)> {
    let (stub, _) = place::locate(pid).ok()?;
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut b = [0u8; 24];
    mem.read_exact_at(&mut b, stub).ok()?;
    (&b[..16] == STUB_MAGIC).then(|| {
        (
            i32::from_ne_bytes(b[16..20].try_into().unwrap()),
            i32::from_ne_bytes(b[20..24].try_into().unwrap()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_round_trip() {
        let entries = vec![
            Leftover::Mapping {
                addr: 0x7f00_0000_0000,
                len: 0x3000,
            },
            Leftover::FdPair {
                addr: 0x7f00_0000_2010,
                kind: FdKind::Socket,
            },
            Leftover::FdCmsg {
                addr: 0x7f00_0000_0100,
                kind: FdKind::Pipe,
            },
            Leftover::Fd {
                fd: 77,
                kind: FdKind::Pipe,
            },
            Leftover::Closing {
                fd: 78,
                kind: FdKind::Socket,
                done: 0x7f00_0000_2028,
            },
            Leftover::ClosingRange {
                first: 80,
                last: 90,
                kind: FdKind::Pipe,
                done: 0x7f00_0000_2028,
            },
            Leftover::FdWord {
                addr: 0x7f00_0000_2100,
                kind: FdKind::Uffd,
            },
            Leftover::Fd {
                fd: 91,
                kind: FdKind::Marker,
            },
        ];
        let nonce = *b"0123456789abcdef";
        let bytes = encode(&entries, &nonce).unwrap();
        assert_eq!(bytes.len() as u64, JOURNAL_BYTES);
        assert_eq!(decode(&bytes), (entries.clone(), nonce));
        assert!(encode(&vec![entries[3]; MAX_ENTRIES + 1], &nonce).is_none());
    }

    #[test]
    fn values_that_do_not_fit_are_refused_or_kept_at_what_is_read() {
        let high = Leftover::Mapping {
            addr: 1 << 56,
            len: 0x1000,
        };
        let nonce = [7u8; NONCE_BYTES];
        assert!(encode(&[high], &nonce).is_none());
        let top = Leftover::Mapping {
            addr: (1 << 56) - 0x1000,
            len: 0x1000,
        };
        assert_eq!(decode(&encode(&[top], &nonce).unwrap()).0, vec![top]);
        let wide = Leftover::ClosingRange {
            first: 3,
            last: i32::MAX,
            kind: FdKind::Pipe,
            done: 8,
        };
        let back = decode(&encode(&[wide], &nonce).unwrap()).0;
        let Leftover::ClosingRange { first, last, .. } = back[0] else {
            panic!("{back:?}")
        };
        assert_eq!(first, 3);
        assert!(last - first >= MAX_CMSG_FDS as i32);
    }

    #[test]
    fn anonymous_read_write_ranges() {
        let maps = "1000-3000 rw-p 00000000 00:00 0 \n\
                    3000-5000 rw-p 00000000 00:00 0 \n\
                    5000-6000 r--p 00000000 08:01 42 /lib/x\n\
                    7000-8000 rw-p 00000000 00:00 0 [heap]\n";
        assert!(is_anon_rw(maps, 0x1000, 0x4000));
        assert!(is_anon_rw(maps, 0x2000, 0x1000));
        assert!(!is_anon_rw(maps, 0x4000, 0x2000));
        assert!(!is_anon_rw(maps, 0x7000, 0x1000));
        assert!(!is_anon_rw(maps, 0x6000, 0x1000));
    }
}
