//! predump's page server against CRIU 4.2's own clients: the four recorded
//! connections of shared/criu-reference/page-server-4.2 are replayed into it,
//! byte for byte and in their recorded order of sends and replies, and what it
//! stores is compared with what `criu page-server` stored from the same bytes.
//! Then the same streams in CRIU ≤ 4.1's 24-byte layout, and streams that break
//! the protocol in every way a peer can, each refused with its message and
//! leaving nothing in the images directory.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use predump_core::image::pagemap::{Pagemap, PE_LAZY, PE_PARENT, PE_PRESENT};
use predump_core::pageserver::link::Abort;
use predump_core::pageserver::wire::{self, Dst, Format, Header, Request};
use predump_core::pageserver::{Server, ServerOptions, ServerReport};
use predump_core::{Error, PAGE_SIZE};

const REF_PID: u64 = 9740;

fn reference() -> Option<PathBuf> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    [
        std::env::var_os("PREDUMP_CRIU_REFERENCE").map(PathBuf::from),
        Some(here.join("../../../shared/criu-reference")),
        Some(PathBuf::from("/work/shared/criu-reference")),
    ]
    .into_iter()
    .flatten()
    .map(|p| p.join("page-server-4.2"))
    .find(|p| p.is_dir())
}

/// The recordings are part of the project's shared reference set; CI lays a
/// copy next to the repository. Without them these tests fail: say why.
fn ps_ref() -> PathBuf {
    reference().expect(
        "shared/criu-reference/page-server-4.2 next to the project (or PREDUMP_CRIU_REFERENCE)",
    )
}

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "predump-ps-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server on a free loopback port, serving on a thread of its own.
struct Running {
    addr: SocketAddr,
    abort: Abort,
    done: JoinHandle<predump_core::Result<ServerReport>>,
}

fn serve(dir: &Path, timeout: Option<Duration>) -> Running {
    let server = Server::listen(Some("127.0.0.1"), 0, None).unwrap();
    let addr = server.local_addr();
    let abort = server.abort_handle();
    let options = ServerOptions {
        dir: dir.to_path_buf(),
        timeout,
    };
    let done = std::thread::spawn(move || server.serve(&options));
    Running { addr, abort, done }
}

fn connect(r: &Running) -> TcpStream {
    let s = TcpStream::connect(r.addr).unwrap();
    // A broken server must fail the test, not hang it.
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

/// One line of relay-chunks.jsonl.
struct Chunk {
    c2s: bool,
    off: usize,
    len: Option<usize>,
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let at = line.find(&format!("\"{name}\": "))? + name.len() + 4;
    let rest = &line[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim().trim_matches('"'))
}

fn chunks(session: &Path) -> Vec<Chunk> {
    std::fs::read_to_string(session.join("relay-chunks.jsonl"))
        .unwrap()
        .lines()
        .map(|l| Chunk {
            c2s: field(l, "dir") == Some("c2s"),
            off: field(l, "off").unwrap().parse().unwrap(),
            len: if field(l, "eof").is_some() {
                None
            } else {
                Some(field(l, "len").unwrap().parse().unwrap())
            },
        })
        .collect()
}

/// Replays a recorded connection exactly as the relay saw it: each client
/// chunk is sent when it was, each server reply read (and compared with the
/// recording) before the client's next chunk, the client's hang-up last.
fn replay_recorded(session: &Path, r: &Running) {
    let c2s = std::fs::read(session.join("client-to-server.bin")).unwrap();
    let s2c = std::fs::read(session.join("server-to-client.bin")).unwrap();
    let mut sock = connect(r);
    for ch in chunks(session) {
        match (ch.c2s, ch.len) {
            (true, Some(len)) => sock.write_all(&c2s[ch.off..ch.off + len]).unwrap(),
            (true, None) => sock.shutdown(std::net::Shutdown::Write).unwrap(),
            (false, Some(len)) => {
                let mut got = vec![0u8; len];
                sock.read_exact(&mut got).unwrap();
                assert_eq!(
                    got,
                    &s2c[ch.off..ch.off + len],
                    "reply at offset {}",
                    ch.off
                );
            }
            (false, None) => {
                let mut rest = Vec::new();
                sock.read_to_end(&mut rest).unwrap();
                assert!(rest.is_empty(), "the server sent {} more bytes", rest.len());
            }
        }
    }
}

/// The pagemap and pages images in `dir`, decoded.
fn stored(dir: &Path) -> (Pagemap, Vec<u8>) {
    let file = dir.join(format!("pagemap-{REF_PID}.img"));
    let map = Pagemap::decode(&std::fs::read(&file).unwrap(), &file.display().to_string()).unwrap();
    let pages = std::fs::read(dir.join(format!("pages-{}.img", map.pages_id))).unwrap();
    (map, pages)
}

/// What is in `dir` (names, sorted), symlinks included.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Our images equal CRIU's: the same entries (vaddr, count, flags) in the same
/// order, the same pages id, the same page bytes.
fn assert_same_as_criu(ours: &Path, criu: &Path) {
    let (a, a_pages) = stored(ours);
    let (b, b_pages) = stored(criu);
    assert_eq!(a.pages_id, 0x10001);
    assert_eq!(a.pages_id, b.pages_id);
    assert_eq!(a.entries, b.entries);
    assert!(
        a_pages == b_pages,
        "pages images differ ({} and {} bytes)",
        a_pages.len(),
        b_pages.len()
    );
    assert_eq!(a.present_pages() * PAGE_SIZE, a_pages.len() as u64);
}

/// A copy of CRIU's images of session `name` in `dir/name` (0600 files, like ours).
fn copy_criu_images(name: &str, dir: &Path) -> PathBuf {
    let to = dir.join(name);
    std::fs::create_dir(&to).unwrap();
    for e in std::fs::read_dir(ps_ref().join("images").join(name)).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
    to
}

#[test]
fn replayed_criu_4_2_pre_dump_is_stored_as_criu_stored_it() {
    let tmp = TempDir::new("s1");
    let r = serve(tmp.path(), None);
    replay_recorded(&ps_ref().join("wire/s1-predump"), &r);
    let report = r.done.join().unwrap().unwrap();
    assert_same_as_criu(tmp.path(), &ps_ref().join("images/ps1"));
    assert_eq!(report.format, Some(Format::Criu42));
    assert_eq!(report.pagemaps.len(), 1);
    let pm = &report.pagemaps[0];
    assert_eq!(pm.dst, Dst::process(REF_PID));
    assert_eq!(
        (pm.entries, pm.pages_present, pm.pages_parent),
        (35, 487, 0)
    );
    assert!(!pm.has_parent);
    assert_eq!(report.bytes_received, 1_995_968);
    assert_eq!(names(tmp.path()), ["pagemap-9740.img", "pages-65537.img"]);
}

#[test]
fn replayed_criu_4_2_pre_dump_with_a_parent_answers_yes_and_checks_every_hole() {
    let tmp = TempDir::new("s2");
    copy_criu_images("ps1", tmp.path());
    let ps2 = tmp.path().join("ps2");
    std::fs::create_dir(&ps2).unwrap();
    std::os::unix::fs::symlink("../ps1", ps2.join("parent")).unwrap();
    let r = serve(&ps2, None);
    // The recorded replies say "parent exists" twice: compared in the replay.
    replay_recorded(&ps_ref().join("wire/s2-predump-parent"), &r);
    let report = r.done.join().unwrap().unwrap();
    assert_same_as_criu(&ps2, &ps_ref().join("images/ps2"));
    let pm = &report.pagemaps[0];
    assert!(pm.has_parent);
    assert_eq!(
        (pm.entries, pm.pages_present, pm.pages_parent),
        (35, 0, 487)
    );
    assert_eq!(
        names(&ps2),
        ["pagemap-9740.img", "pages-65537.img", "parent"]
    );
}

#[test]
fn replayed_criu_4_2_dump_is_stored_as_criu_stored_it() {
    let tmp = TempDir::new("s3");
    let r = serve(tmp.path(), None);
    replay_recorded(&ps_ref().join("wire/s3-dump"), &r);
    r.done.join().unwrap().unwrap();
    assert_same_as_criu(tmp.path(), &ps_ref().join("images/ps3"));
}

#[test]
fn replayed_criu_4_2_read_mode_pre_dump_is_stored_as_criu_stored_it() {
    let tmp = TempDir::new("s4");
    let r = serve(tmp.path(), None);
    replay_recorded(&ps_ref().join("wire/s4-predump-read"), &r);
    r.done.join().unwrap().unwrap();
    // s4's page contents are CRIU's bug (see the README), but the same bytes.
    assert_same_as_criu(tmp.path(), &ps_ref().join("images/ps4"));
}

/// A recorded stream cut into requests, each with its page data.
fn requests(stream: &[u8]) -> Vec<(Request, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let h = Header::decode(Format::Criu42, &stream[at..at + 32]);
        at += 32;
        let req = wire::parse(&h).unwrap();
        let len = req.data_len() as usize;
        out.push((req, &stream[at..at + len]));
        at += len;
    }
    out
}

/// Sends `reqs` in `format`, reading each reply as a CRIU client does (before
/// the next header); returns the replies.
fn send(sock: &mut TcpStream, format: Format, reqs: &[(Request, &[u8])]) -> Vec<u8> {
    let mut replies = Vec::new();
    for (req, data) in reqs {
        let mut buf = [0u8; wire::MAX_HEADER_LEN];
        let n = req.header().encode(format, &mut buf).unwrap();
        sock.write_all(&buf[..n]).unwrap();
        sock.write_all(data).unwrap();
        let cmd = wire::Command::from_code(req.header().command_code()).unwrap();
        let mut reply = vec![0u8; cmd.reply_len()];
        sock.read_exact(&mut reply).unwrap();
        replies.extend(reply);
    }
    replies
}

#[test]
fn the_same_streams_in_criu_4_1_layout_are_stored_alike() {
    for (session, images) in [("s1-predump", "ps1"), ("s3-dump", "ps3")] {
        let stream = std::fs::read(
            ps_ref()
                .join("wire")
                .join(session)
                .join("client-to-server.bin"),
        )
        .unwrap();
        let tmp = TempDir::new("41");
        let r = serve(tmp.path(), None);
        let mut sock = connect(&r);
        let replies = send(&mut sock, Format::Criu41, &requests(&stream));
        drop(sock);
        let report = r.done.join().unwrap().unwrap();
        assert_eq!(report.format, Some(Format::Criu41), "{session}");
        let recorded = std::fs::read(
            ps_ref()
                .join("wire")
                .join(session)
                .join("server-to-client.bin"),
        )
        .unwrap();
        assert_eq!(replies, recorded, "{session}");
        assert_same_as_criu(tmp.path(), &ps_ref().join("images").join(images));
    }
}

#[test]
fn a_stream_sent_without_waiting_for_replies_is_stored_alike() {
    let stream = std::fs::read(ps_ref().join("wire/s1-predump/client-to-server.bin")).unwrap();
    let tmp = TempDir::new("blast");
    let r = serve(tmp.path(), None);
    let mut sock = connect(&r);
    sock.write_all(&stream).unwrap();
    sock.shutdown(std::net::Shutdown::Write).unwrap();
    let mut replies = Vec::new();
    sock.read_to_end(&mut replies).unwrap();
    r.done.join().unwrap().unwrap();
    assert_eq!(replies, [0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_same_as_criu(tmp.path(), &ps_ref().join("images/ps1"));
}

#[test]
fn an_empty_session_of_either_layout_is_answered_and_stores_nothing() {
    for len in [24, 32] {
        let tmp = TempDir::new("empty");
        let r = serve(tmp.path(), None);
        let mut sock = connect(&r);
        let mut close = vec![0u8; len];
        close[..4].copy_from_slice(&0x1023u32.to_le_bytes());
        // A 4.2 client sends its 32 bytes at once; its reply comes after 24.
        sock.write_all(&close).unwrap();
        let mut reply = [9u8; 4];
        sock.read_exact(&mut reply).unwrap();
        assert_eq!(reply, [0, 0, 0, 0]);
        drop(sock);
        let report = r.done.join().unwrap().unwrap();
        assert!(report.pagemaps.is_empty());
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        assert!(names(tmp.path()).is_empty());
    }
}

// ---- streams that break the protocol ------------------------------------------------------------

/// Sends `bytes`, hangs up, and returns the server's error; checks that the
/// images directory holds nothing afterwards but `keep`.
fn refused(bytes: &[u8], dir: &Path, keep: &[&str]) -> Error {
    let r = serve(dir, None);
    let mut sock = connect(&r);
    // The server may hang up before it has read everything: that is its right.
    let _ = sock.write_all(bytes);
    let _ = sock.shutdown(std::net::Shutdown::Write);
    let mut sink = Vec::new();
    let _ = sock.read_to_end(&mut sink);
    let e = r.done.join().unwrap().unwrap_err();
    assert_eq!(names(dir), keep, "after {e}");
    e
}

fn h42(req: Request) -> Vec<u8> {
    let mut buf = [0u8; wire::MAX_HEADER_LEN];
    let n = req.header().encode(Format::Criu42, &mut buf).unwrap();
    buf[..n].to_vec()
}

fn raw42(cmd: u32, nr_pages: u64, vaddr: u64, dst_id: u64) -> Vec<u8> {
    let h = Header {
        cmd,
        nr_pages,
        vaddr,
        dst_id,
    };
    let mut buf = [0u8; wire::MAX_HEADER_LEN];
    h.encode(Format::Criu42, &mut buf).unwrap();
    buf.to_vec()
}

const DST: Dst = Dst {
    kind: wire::DstKind::Process,
    id: 42,
};

fn open() -> Vec<u8> {
    h42(Request::Open {
        dst: DST,
        reply: true,
    })
}

fn add(vaddr: u64, nr_pages: u64, flags: u32) -> Vec<u8> {
    h42(Request::Add {
        dst: DST,
        vaddr,
        nr_pages,
        flags,
    })
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn assert_message(e: &Error, code: &str, want: &str) {
    assert_eq!(e.code(), code, "{e}");
    assert!(e.to_string().contains(want), "{e:?} does not say {want:?}");
}

#[test]
fn garbage_on_the_port_is_refused_and_leaves_nothing() {
    let tmp = TempDir::new("garbage");
    let e = refused(b"GET / HTTP/1.1\r\nHost: predump\r\n\r\n", tmp.path(), &[]);
    assert_message(
        &e,
        "EPROTO",
        "does not start with a CRIU page-server header",
    );
    let e = refused(&[0xff; 100], tmp.path(), &[]);
    assert_message(
        &e,
        "EPROTO",
        "does not start with a CRIU page-server header",
    );
    let e = refused(b"", tmp.path(), &[]);
    assert_message(&e, "EPROTO", "without sending anything");
    let e = refused(&open()[..10], tmp.path(), &[]);
    assert_message(&e, "EPROTO", "in the middle of header 1 (10 of 24 bytes)");
}

#[test]
fn a_bad_header_in_the_middle_is_refused_and_the_images_removed() {
    let tmp = TempDir::new("bad");
    let page = vec![7u8; PAGE_SIZE as usize];
    let good = cat(&[&open(), &add(0x1000, 1, PE_PRESENT), &page]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            raw42(0x77, 0, 0, DST.encode()),
            "header 3: unknown command 0x77",
        ),
        (
            raw42(6 | 8 << 16, 1, 0x2000, DST.encode()),
            "header 3: pagemap entry flags 0x8",
        ),
        (
            raw42(6 | (PE_PRESENT | PE_PARENT) << 16, 1, 0x2000, DST.encode()),
            "flags 0x5",
        ),
        (
            raw42(6 | PE_PRESENT << 16, 1, 0x2000, 42 << 8 | 9),
            "unknown pagemap type",
        ),
        // A length that does not fit: refused before a byte of it is read.
        (
            raw42(
                6 | PE_PRESENT << 16,
                u64::MAX / PAGE_SIZE,
                0x2000,
                DST.encode(),
            ),
            "do not fit in a user address space",
        ),
        (
            raw42(6 | PE_PRESENT << 16, 1, 0x2001, DST.encode()),
            "do not fit",
        ),
        (
            add(0x1000, 1, PE_PRESENT),
            "come before the end of the previous entry (0x2000)",
        ),
        (
            add(0x2000, 1, PE_PARENT),
            "this server has no parent images for it",
        ),
        (h42(Request::Get), "PS_IOV_GET asks for pages"),
        (open(), "process 42 was opened a second time"),
    ];
    for (bad, want) in cases {
        let e = refused(&cat(&[&good, &bad]), tmp.path(), &[]);
        assert_message(&e, "EPROTO", want);
    }
}

#[test]
fn a_connection_that_ends_before_close_keeps_nothing() {
    let tmp = TempDir::new("cut");
    let page = vec![7u8; PAGE_SIZE as usize];
    // In the middle of page data.
    let e = refused(
        &cat(&[&open(), &add(0x1000, 2, PE_PRESENT), &page]),
        tmp.path(),
        &[],
    );
    assert_message(&e, "EPROTO", "in the middle of the page data");
    assert_message(&e, "EPROTO", "4096 of 8192 bytes missing");
    // After whole entries, without PS_IOV_CLOSE.
    let e = refused(
        &cat(&[&open(), &add(0x1000, 1, PE_PRESENT), &page]),
        tmp.path(),
        &[],
    );
    assert_message(&e, "EPROTO", "before PS_IOV_CLOSE, after 2 headers");
}

#[test]
fn holes_the_parent_does_not_hold_are_refused() {
    let tmp = TempDir::new("holes");
    let parent = copy_criu_images("ps1", tmp.path());
    let child = tmp.path().join("child");
    std::fs::create_dir(&child).unwrap();
    std::os::unix::fs::symlink("../ps1", child.join("parent")).unwrap();
    let pid = Dst::process(REF_PID);
    let open = h42(Request::Open {
        dst: pid,
        reply: true,
    });
    let hole = |vaddr, nr_pages| {
        h42(Request::Add {
            dst: pid,
            vaddr,
            nr_pages,
            flags: PE_PARENT,
        })
    };
    // ps1 holds 0x10000000 + 15 pages, then nothing until 0x10010000.
    let e = refused(&cat(&[&open, &hole(0x1000_0000, 16)]), &child, &["parent"]);
    assert_message(
        &e,
        "EPROTO",
        "the page at 0x1000f000 of process 9740 is said to be in the parent",
    );
    // Another process's pagemap is not in the parent at all.
    let other = h42(Request::Open {
        dst: DST,
        reply: true,
    });
    let e = refused(
        &cat(&[&other, &add(0x1000_0000, 1, PE_PARENT)]),
        &child,
        &["parent"],
    );
    assert_message(&e, "EPROTO", "no parent images for it");
    assert!(parent.join("pagemap-9740.img").exists());
}

#[test]
fn a_silent_client_times_out_and_an_abort_ends_any_wait() {
    let tmp = TempDir::new("wait");
    // A client that sends part of a header, then nothing.
    let r = serve(tmp.path(), Some(Duration::from_millis(300)));
    let mut sock = connect(&r);
    sock.write_all(&open()).unwrap();
    sock.write_all(&add(0x1000, 1, PE_PRESENT)).unwrap();
    let e = r.done.join().unwrap().unwrap_err();
    assert_message(&e, "ECONN", "receiving 1 pages at 0x1000 of process 42");
    assert_message(&e, "ECONN", "no progress within the timeout");
    assert!(names(tmp.path()).is_empty());
    drop(sock);
    // Aborted while it waits for a client, and while it waits for data.
    let r = serve(tmp.path(), None);
    r.abort.abort();
    assert_eq!(r.done.join().unwrap().unwrap_err().code(), "EINTERRUPTED");
    let r = serve(tmp.path(), None);
    let mut sock = connect(&r);
    sock.write_all(&open()).unwrap();
    let mut reply = [0u8; 1];
    sock.read_exact(&mut reply).unwrap();
    r.abort.abort();
    assert_eq!(r.done.join().unwrap().unwrap_err().code(), "EINTERRUPTED");
    assert!(names(tmp.path()).is_empty());
}

#[test]
fn an_old_criu_adding_without_open_and_two_pagemaps_get_their_own_pages_ids() {
    let tmp = TempDir::new("two");
    let r = serve(tmp.path(), None);
    let mut sock = connect(&r);
    let a = Dst::process(100);
    let b = Dst {
        kind: wire::DstKind::Shmem,
        id: 7,
    };
    let pages = |n: u8, count: usize| vec![n; count * PAGE_SIZE as usize];
    let (p1, p2, p3) = (pages(1, 2), pages(2, 1), pages(3, 3));
    let add = |dst, vaddr, nr_pages, flags| Request::Add {
        dst,
        vaddr,
        nr_pages,
        flags,
    };
    let replies = send(
        &mut sock,
        Format::Criu42,
        &[
            // No OPEN first: CRIU's server opens on the first ADD.
            (add(a, 0x1000, 2, PE_PRESENT), &p1[..]),
            (add(a, 0x5000, 1, PE_PRESENT | PE_LAZY), &p2[..]),
            (add(a, 0x9000, 4, PE_LAZY), &[][..]),
            (
                Request::Open {
                    dst: b,
                    reply: true,
                },
                &[][..],
            ),
            (add(b, 0, 3, PE_PRESENT), &p3[..]),
            (Request::Close { force: true }, &[][..]),
        ],
    );
    assert_eq!(replies, [0, 0, 0, 0, 0]);
    drop(sock);
    let report = r.done.join().unwrap().unwrap();
    assert_eq!(
        names(tmp.path()),
        [
            "pagemap-100.img",
            "pagemap-shmem-7.img",
            "pages-65537.img",
            "pages-65538.img"
        ]
    );
    assert_eq!(report.pagemaps[0].pages_lazy, 4);
    let read = |name: &str| {
        let file = tmp.path().join(name);
        Pagemap::decode(&std::fs::read(&file).unwrap(), name).unwrap()
    };
    let ma = read("pagemap-100.img");
    assert_eq!(ma.pages_id, 65537);
    assert_eq!(ma.entries.len(), 3);
    assert_eq!(ma.entries[2].flags, PE_LAZY);
    assert_eq!(read("pagemap-shmem-7.img").pages_id, 65538);
    assert_eq!(
        std::fs::read(tmp.path().join("pages-65537.img")).unwrap(),
        [p1, p2].concat()
    );
    assert_eq!(
        std::fs::read(tmp.path().join("pages-65538.img")).unwrap(),
        p3
    );
}
