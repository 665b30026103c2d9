//! predump's page-server client: what it sends is checked against what CRIU
//! 4.2's client sent for the same pages (recorded in
//! shared/criu-reference/page-server-4.2), byte for byte, through a relay in
//! front of predump's server; and every way a server can fail it (refused,
//! reset mid-stream, not reading, not answering, a bad status, an abort) ends
//! the transfer with an error that says so, never a hang.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use predump_core::image::pagemap::{Pagemap, PE_PRESENT};
use predump_core::pageserver::client::{Client, ClientOptions};
use predump_core::pageserver::link::Abort;
use predump_core::pageserver::wire::{Dst, Format, Header};
use predump_core::pageserver::{Server, ServerOptions, ServerReport};
use predump_core::PAGE_SIZE;

const PID: u64 = 9740;

fn ps_ref() -> PathBuf {
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
    .expect("shared/criu-reference next to the project")
}

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "predump-psc-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// CRIU's server images of session `name`: its pagemap and page data.
fn criu_images(name: &str) -> (Pagemap, Vec<u8>) {
    let dir = ps_ref().join("images").join(name);
    let map = Pagemap::decode(
        &std::fs::read(dir.join(format!("pagemap-{PID}.img"))).unwrap(),
        name,
    )
    .unwrap();
    let pages = std::fs::read(dir.join(map.pages_file_name())).unwrap();
    (map, pages)
}

fn options(port: u16, format: Format) -> ClientOptions {
    ClientOptions {
        address: "127.0.0.1".into(),
        port,
        format,
        tls: None,
        timeout: Duration::from_secs(30),
    }
}

/// predump's server in `dir` behind a relay that records what the client sends.
struct Relayed {
    port: u16,
    recorded: Arc<Mutex<Vec<u8>>>,
    server: std::thread::JoinHandle<predump_core::Result<ServerReport>>,
    relay: std::thread::JoinHandle<()>,
}

fn relayed(dir: &Path) -> Relayed {
    let server = Server::listen(Some("127.0.0.1"), 0, None).unwrap();
    let server_port = server.local_addr().port();
    let options = ServerOptions {
        dir: dir.to_path_buf(),
        timeout: Some(Duration::from_secs(30)),
    };
    let server = std::thread::spawn(move || server.serve(&options));
    let front = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = front.local_addr().unwrap().port();
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let rec = recorded.clone();
    let relay = std::thread::spawn(move || {
        let (client, _) = front.accept().unwrap();
        let upstream = TcpStream::connect(("127.0.0.1", server_port)).unwrap();
        let (mut c_in, mut u_out) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
        let up = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = c_in.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    let _ = u_out.shutdown(Shutdown::Write);
                    return;
                }
                rec.lock().unwrap().extend_from_slice(&buf[..n]);
                if u_out.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        });
        let (mut u_in, mut c_out) = (upstream, client);
        let _ = std::io::copy(&mut u_in, &mut c_out);
        let _ = c_out.shutdown(Shutdown::Write);
        up.join().unwrap();
    });
    Relayed {
        port,
        recorded,
        server,
        relay,
    }
}

/// Sends CRIU's session `name` as predump's client would send those pages:
/// with PS_IOV_PARENT first for a pre-dump, from buffers or from a pipe.
fn send_session(client: &mut Client, name: &str, pre_dump: bool, from_pipe: bool) {
    let (map, pages) = criu_images(name);
    let dst = Dst::process(PID);
    let parent_wanted = map.entries.iter().any(|e| e.in_parent());
    if pre_dump {
        assert_eq!(client.parent(dst).unwrap(), parent_wanted);
    }
    assert_eq!(client.open(dst).unwrap(), parent_wanted);
    let (reader, writer): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
    let feeder = from_pipe.then(|| {
        let data = pages.clone();
        std::thread::spawn(move || std::fs::File::from(writer).write_all(&data).unwrap())
    });
    let mut off = 0usize;
    for e in &map.entries {
        if e.is_present() {
            let len = (e.nr_pages * PAGE_SIZE) as usize;
            if from_pipe {
                client
                    .pages_from_pipe(dst, e.vaddr, e.nr_pages, e.flags, reader.as_fd())
                    .unwrap();
            } else {
                client
                    .pages(dst, e.vaddr, e.flags, &pages[off..off + len])
                    .unwrap();
            }
            off += len;
        } else {
            client.entry(dst, e.vaddr, e.nr_pages, e.flags).unwrap();
        }
    }
    if let Some(f) = feeder {
        f.join().unwrap();
    }
}

/// The headers of a 4.2 stream, field by field (the padding left out: CRIU
/// leaves it uninitialised), with the data that follows each.
fn headers(stream: &[u8]) -> Vec<(Header, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let h = Header::decode(Format::Criu42, &stream[at..at + 32]);
        at += 32;
        let data = if h.command_code() == 6 && h.flags() & PE_PRESENT != 0 {
            (h.nr_pages * PAGE_SIZE) as usize
        } else {
            0
        };
        out.push((h, data));
        at += data;
    }
    out
}

#[test]
fn predumps_client_sends_what_criu_4_2_sent_byte_for_byte() {
    for (session, name, pre_dump) in [("s1-predump", "ps1", true), ("s3-dump", "ps3", false)] {
        let tmp = TempDir::new("same");
        let r = relayed(&tmp.0);
        let mut client =
            Client::connect(&options(r.port, Format::Criu42), &Abort::new().unwrap()).unwrap();
        send_session(&mut client, name, pre_dump, false);
        let stats = client.close().unwrap();
        r.server.join().unwrap().unwrap();
        r.relay.join().unwrap();
        let recorded = std::fs::read(
            ps_ref()
                .join("wire")
                .join(session)
                .join("client-to-server.bin"),
        )
        .unwrap();
        let ours = r.recorded.lock().unwrap().clone();
        // CRIU's padding happens to be zero in s1 and s3, as ours always is.
        assert!(
            ours == recorded,
            "{session}: {} bytes sent, {} recorded",
            ours.len(),
            recorded.len()
        );
        assert_eq!(stats.bytes_sent, recorded.len() as u64);
        assert_eq!(stats.page_bytes, 487 * PAGE_SIZE);
    }
}

#[test]
fn an_iterative_pre_dump_sends_criu_4_2s_headers_and_the_server_checks_every_hole() {
    let tmp = TempDir::new("holes");
    let ps1 = tmp.0.join("ps1");
    std::fs::create_dir(&ps1).unwrap();
    for f in ["pagemap-9740.img", "pages-65537.img"] {
        std::fs::copy(ps_ref().join("images/ps1").join(f), ps1.join(f)).unwrap();
    }
    let ps2 = tmp.0.join("ps2");
    std::fs::create_dir(&ps2).unwrap();
    std::os::unix::fs::symlink("../ps1", ps2.join("parent")).unwrap();
    let r = relayed(&ps2);
    let mut client =
        Client::connect(&options(r.port, Format::Criu42), &Abort::new().unwrap()).unwrap();
    send_session(&mut client, "ps2", true, false);
    client.close().unwrap();
    let report = r.server.join().unwrap().unwrap();
    r.relay.join().unwrap();
    assert_eq!(report.pagemaps[0].pages_parent, 487);
    let recorded =
        std::fs::read(ps_ref().join("wire/s2-predump-parent/client-to-server.bin")).unwrap();
    // s2's padding is stack garbage: compare the fields.
    assert_eq!(headers(&r.recorded.lock().unwrap()), headers(&recorded));
}

#[test]
fn pages_spliced_from_a_pipe_and_the_4_1_layout_are_stored_alike() {
    for format in [Format::Criu42, Format::Criu41] {
        let tmp = TempDir::new("pipe");
        let r = relayed(&tmp.0);
        let mut client = Client::connect(&options(r.port, format), &Abort::new().unwrap()).unwrap();
        send_session(&mut client, "ps1", true, true);
        client.close().unwrap();
        let report = r.server.join().unwrap().unwrap();
        r.relay.join().unwrap();
        assert_eq!(report.format, Some(format));
        let (want, want_pages) = criu_images("ps1");
        let got = Pagemap::decode(
            &std::fs::read(tmp.0.join("pagemap-9740.img")).unwrap(),
            "ours",
        )
        .unwrap();
        assert_eq!(got.entries, want.entries);
        assert!(std::fs::read(tmp.0.join("pages-65537.img")).unwrap() == want_pages);
    }
}

// ---- servers that fail the client ---------------------------------------------------------------

fn fake_server() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

fn short(port: u16) -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_millis(500),
        ..options(port, Format::Criu42)
    }
}

fn assert_error(e: predump_core::Error, code: &str, parts: &[&str]) {
    assert_eq!(e.code(), code, "{e}");
    for p in parts {
        assert!(e.to_string().contains(p), "{e:?} does not say {p:?}");
    }
}

#[test]
fn a_refused_connection_says_where() {
    let (l, port) = fake_server();
    drop(l);
    let e = Client::connect(&options(port, Format::Criu42), &Abort::new().unwrap())
        .err()
        .unwrap();
    assert_error(
        e,
        "ECONN",
        &[
            &format!("connecting to the page server at 127.0.0.1:{port}"),
            "refused",
        ],
    );
    let e = Client::connect(
        &ClientOptions {
            address: "no-such-host.invalid".into(),
            ..options(port, Format::Criu42)
        },
        &Abort::new().unwrap(),
    )
    .err()
    .unwrap();
    assert_error(
        e,
        "ECONN",
        &["resolving the page server's address no-such-host.invalid"],
    );
}

#[test]
fn a_server_that_resets_mid_stream_ends_the_transfer() {
    let (l, port) = fake_server();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut open = [0u8; 32];
        s.read_exact(&mut open).unwrap();
        s.write_all(&[0]).unwrap();
        let mut some = vec![0u8; 100_000];
        s.read_exact(&mut some).unwrap();
        // A reset, not a FIN: close with unread data and linger 0.
        nix::sys::socket::setsockopt(
            &s,
            nix::sys::socket::sockopt::Linger,
            &libc::linger {
                l_onoff: 1,
                l_linger: 0,
            },
        )
        .unwrap();
    });
    let mut client = Client::connect(&short(port), &Abort::new().unwrap()).unwrap();
    let dst = Dst::process(1);
    client.open(dst).unwrap();
    let data = vec![1u8; 64 << 20];
    let e = client
        .pages(dst, 0x1000_0000, PE_PRESENT, &data)
        .unwrap_err();
    server.join().unwrap();
    assert_error(
        e,
        "ECONN",
        &[
            "sending 16384 pages at 0x10000000 of process 1",
            "closed the connection",
        ],
    );
}

#[test]
fn a_server_that_stops_reading_is_given_up_after_the_timeout() {
    let (l, port) = fake_server();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut open = [0u8; 32];
        s.read_exact(&mut open).unwrap();
        s.write_all(&[0]).unwrap();
        // Then read nothing until the test is over.
        let _ = rx.recv();
    });
    let mut client = Client::connect(&short(port), &Abort::new().unwrap()).unwrap();
    let dst = Dst::process(1);
    client.open(dst).unwrap();
    let data = vec![1u8; 64 << 20];
    let e = client
        .pages(dst, 0x1000_0000, PE_PRESENT, &data)
        .unwrap_err();
    assert_error(
        e,
        "ECONN",
        &[
            "sending 16384 pages",
            "the page server read nothing for 0.5 s",
        ],
    );
    tx.send(()).unwrap();
    server.join().unwrap();
}

#[test]
fn a_server_that_does_not_answer_or_answers_a_bad_status_fails_the_transfer() {
    // Hangs up instead of answering PS_IOV_OPEN2.
    let (l, port) = fake_server();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut open = [0u8; 32];
        s.read_exact(&mut open).unwrap();
    });
    let mut client = Client::connect(&short(port), &Abort::new().unwrap()).unwrap();
    let e = client.open(Dst::process(1)).unwrap_err();
    server.join().unwrap();
    assert_error(
        e,
        "ECONN",
        &[
            "waiting for the answer to PS_IOV_OPEN2",
            "closed the connection without answering",
        ],
    );
    // Answers, but never PS_IOV_CLOSE.
    let (l, port) = fake_server();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 32];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&[0]).unwrap();
        s.read_exact(&mut buf).unwrap();
        let _ = s.read(&mut buf);
    });
    let mut client = Client::connect(&short(port), &Abort::new().unwrap()).unwrap();
    client.open(Dst::process(1)).unwrap();
    let e = client.close().unwrap_err();
    assert_error(
        e,
        "ECONN",
        &[
            "waiting for the answer to PS_IOV_CLOSE",
            "answered nothing for 0.5 s",
        ],
    );
    server.join().unwrap();
    // Answers PS_IOV_CLOSE with a failure.
    let (l, port) = fake_server();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 32];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&(-1i32).to_le_bytes()).unwrap();
    });
    let client = Client::connect(&short(port), &Abort::new().unwrap()).unwrap();
    let e = client.close().unwrap_err();
    server.join().unwrap();
    assert_error(e, "EPROTO", &["answered PS_IOV_CLOSE with status -1"]);
}

#[test]
fn an_abort_ends_a_transfer_stuck_on_the_server() {
    let (l, port) = fake_server();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut open = [0u8; 32];
        s.read_exact(&mut open).unwrap();
        s.write_all(&[0]).unwrap();
        let _ = rx.recv();
    });
    let abort = Abort::new().unwrap();
    let mut client = Client::connect(&options(port, Format::Criu42), &abort).unwrap();
    let dst = Dst::process(1);
    client.open(dst).unwrap();
    // Aborted (from this thread: any thread may) before the send: the 64 MiB
    // fill the socket's buffers, the wait that follows sees the abort.
    abort.abort();
    let data = vec![1u8; 64 << 20];
    let e = client
        .pages(dst, 0x1000_0000, PE_PRESENT, &data)
        .unwrap_err();
    assert_eq!(e.code(), "EINTERRUPTED", "{e}");
    tx.send(()).unwrap();
    server.join().unwrap();
}

// ---- one process's pages as a drain's output ----------------------------------------------------

/// ServerPages, as a pre-dump uses it: PS_IOV_PARENT at connect, OPEN2, the
/// holes told first, then ranges from a pipe; the server gets one pagemap in
/// address order, each hole between the ranges where it lies.
#[test]
fn server_pages_interleave_the_parents_holes_with_the_ranges_sent() {
    server_pages_session("sender", false);
}

/// The same, the ranges handed over in the drain's buffers (read mode's way
/// to a socket: sent from the buffer, no pipe).
#[test]
fn server_pages_sent_from_buffers_are_stored_alike() {
    server_pages_session("sender-buf", true);
}

fn server_pages_session(tag: &str, from_buffer: bool) {
    use predump_core::pages_out::PagesOut;
    use predump_core::pageserver::sender::ServerPages;
    use predump_core::PageRange;

    let tmp = TempDir::new(tag);
    let ps1 = tmp.0.join("ps1");
    std::fs::create_dir(&ps1).unwrap();
    for f in ["pagemap-9740.img", "pages-65537.img"] {
        std::fs::copy(ps_ref().join("images/ps1").join(f), ps1.join(f)).unwrap();
    }
    let ps2 = tmp.0.join("ps2");
    std::fs::create_dir(&ps2).unwrap();
    std::os::unix::fs::symlink("../ps1", ps2.join("parent")).unwrap();
    let r = relayed(&ps2);

    // Every other range of ps1 "changed" (sent again), the others left to ps1.
    let (map, pages) = criu_images("ps1");
    let (mut sent, mut holes, mut data) = (Vec::new(), Vec::new(), Vec::new());
    let mut off = 0usize;
    for (i, e) in map.entries.iter().filter(|e| e.is_present()).enumerate() {
        let len = (e.nr_pages * PAGE_SIZE) as usize;
        let range = PageRange::new(e.vaddr, e.nr_pages);
        if i % 2 == 0 {
            sent.push(range);
            data.extend_from_slice(&pages[off..off + len]);
        } else {
            holes.push(range);
        }
        off += len;
    }
    let mut sp = ServerPages::connect(
        &options(r.port, Format::Criu41),
        &Abort::new().unwrap(),
        PID as i32,
    )
    .unwrap();
    assert!(sp.has_parent());
    sp.open().unwrap();
    sp.parent_ranges(&holes).unwrap();
    assert!(sp.takes_buffers());
    // Two calls, as a drain hands over its buffers.
    let half = sent.len() / 2;
    if from_buffer {
        let mut off = 0;
        for part in [&sent[..half], &sent[half..]] {
            let len: usize = part.iter().map(|r| r.len() as usize).sum();
            sp.write_from_buffer(&data[off..off + len], part).unwrap();
            off += len;
        }
    } else {
        let (reader, writer): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
        let feed = data.clone();
        let feeder =
            std::thread::spawn(move || std::fs::File::from(writer).write_all(&feed).unwrap());
        for part in [&sent[..half], &sent[half..]] {
            let len = part.iter().map(|r| r.len() as usize).sum();
            sp.write_from_pipe(reader.as_fd(), part, len)
                .map_err(|(e, _)| e)
                .unwrap();
        }
        feeder.join().unwrap();
    }
    sp.finish().unwrap();
    let report = r.server.join().unwrap().unwrap();
    r.relay.join().unwrap();

    let got = Pagemap::decode(
        &std::fs::read(ps2.join("pagemap-9740.img")).unwrap(),
        "ours",
    )
    .unwrap();
    let want: Vec<(u64, u64, bool)> = map
        .entries
        .iter()
        .filter(|e| e.is_present())
        .enumerate()
        .map(|(i, e)| (e.vaddr, e.nr_pages, i % 2 == 0))
        .collect();
    let seen: Vec<(u64, u64, bool)> = got
        .entries
        .iter()
        .map(|e| (e.vaddr, e.nr_pages, e.is_present()))
        .collect();
    assert_eq!(seen, want);
    assert_eq!(sp.sent().len(), want.len());
    assert!(std::fs::read(ps2.join("pages-65537.img")).unwrap() == data);
    let held: u64 = holes.iter().map(|h| h.pages).sum();
    assert_eq!(report.pagemaps[0].pages_parent, held);
    assert_eq!(sp.stats().page_bytes, data.len() as u64);
}

// ---- a process tree over one connection ---------------------------------------------------------

/// TreeSession, as a tree pre-dump uses it: one connection, PS_IOV_PARENT for
/// each process with a chain, then a shared memory object's pagemap (dst type
/// 2, offsets as addresses) and two processes' pagemaps, each opened by its
/// own PS_IOV_OPEN2, and one PS_IOV_CLOSE: predump's server stores each under
/// its own name and pages id, the holes checked against the parent's pagemap
/// of that process only.
#[test]
fn a_tree_session_sends_every_pagemap_under_its_own_id_over_one_connection() {
    use predump_core::pages_out::PagesOut;
    use predump_core::pageserver::sender::TreeSession;
    use predump_core::pageserver::wire::DstKind;
    use predump_core::PageRange;

    let tmp = TempDir::new("tree");
    let ps1 = tmp.0.join("ps1");
    std::fs::create_dir(&ps1).unwrap();
    for f in ["pagemap-9740.img", "pages-65537.img"] {
        std::fs::copy(ps_ref().join("images/ps1").join(f), ps1.join(f)).unwrap();
    }
    let ps2 = tmp.0.join("ps2");
    std::fs::create_dir(&ps2).unwrap();
    std::os::unix::fs::symlink("../ps1", ps2.join("parent")).unwrap();
    let r = relayed(&ps2);

    let (map, pages) = criu_images("ps1");
    let present: Vec<PageRange> = map
        .entries
        .iter()
        .filter(|e| e.is_present())
        .map(|e| PageRange::new(e.vaddr, e.nr_pages))
        .collect();
    let child = 9741i32;
    let mut s =
        TreeSession::connect(&options(r.port, Format::Criu42), &Abort::new().unwrap()).unwrap();
    assert!(s.ask_parent(Dst::process(PID)).unwrap());
    assert!(!s.ask_parent(Dst::process(child as u64)).unwrap());

    // A shared object of 3 pages, its pages 0 and 2 present.
    let object: Vec<u8> = (0..3 * PAGE_SIZE as usize)
        .map(|i| (i / 4096 * 7 + i % 251) as u8)
        .collect();
    let obj_ranges = [PageRange::new(0, 1), PageRange::new(2 * PAGE_SIZE, 1)];
    let bytes = s
        .send_object(77, &obj_ranges, |buf, off| {
            let off = off as usize;
            buf.copy_from_slice(&object[off..off + buf.len()]);
            Ok(buf.len())
        })
        .unwrap();
    assert_eq!(bytes, 2 * PAGE_SIZE);

    // The process with a chain: its first range sent, the rest left to ps1.
    let first_len = (present[0].pages * PAGE_SIZE) as usize;
    {
        let mut pm = s.open(Dst::process(PID)).unwrap();
        assert!(pm.has_parent());
        pm.parent_ranges(&present[1..]).unwrap();
        let (reader, writer): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
        std::fs::File::from(writer)
            .write_all(&pages[..first_len])
            .unwrap();
        pm.write_from_pipe(reader.as_fd(), &present[..1], first_len)
            .map_err(|(e, _)| e)
            .unwrap();
        pm.finish().unwrap();
    }
    // The new process: no parent, so no page may be left to one.
    {
        let mut pm = s.open(Dst::process(child as u64)).unwrap();
        assert!(!pm.has_parent());
        let e = pm.parent_ranges(&present[..1]).unwrap_err();
        assert!(
            e.to_string()
                .contains("holds no parent images of process 9741"),
            "{e}"
        );
        pm.parent_ranges(&[]).unwrap();
        let (reader, writer): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
        std::fs::File::from(writer)
            .write_all(&pages[..first_len])
            .unwrap();
        pm.write_from_pipe(reader.as_fd(), &present[..1], first_len)
            .map_err(|(e, _)| e)
            .unwrap();
        pm.finish().unwrap();
    }
    s.close().unwrap();
    let report = r.server.join().unwrap().unwrap();
    r.relay.join().unwrap();

    // The stream: PARENT ×2, then OPEN2 + ADD_Fs per pagemap, CLOSE once at the end.
    let stream = r.recorded.lock().unwrap().clone();
    let cmds: Vec<(u16, u64)> = headers(&stream)
        .iter()
        .map(|(h, _)| (h.command_code(), h.dst_id))
        .collect();
    let p = |id: u64| id << 8 | 1;
    assert_eq!(
        &cmds[..3],
        &[(5, p(PID)), (5, p(child as u64)), (4, 77 << 8 | 2)]
    );
    assert_eq!(
        cmds.iter().filter(|c| c.0 == 4).count(),
        3,
        "one OPEN2 per pagemap"
    );
    assert_eq!(cmds.last().unwrap().0, 0x1023, "one CLOSE, last");
    assert_eq!(cmds.iter().filter(|c| c.0 == 0x1023).count(), 1);

    // What the server stored, pagemap by pagemap.
    let kinds: Vec<(DstKind, u64, u32)> = report
        .pagemaps
        .iter()
        .map(|p| (p.dst.kind, p.dst.id, p.pages_id))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (DstKind::Shmem, 77, 65537),
            (DstKind::Process, PID, 65538),
            (DstKind::Process, child as u64, 65539)
        ]
    );
    let shm = Pagemap::decode(
        &std::fs::read(ps2.join("pagemap-shmem-77.img")).unwrap(),
        "shm",
    )
    .unwrap();
    assert_eq!(
        shm.entries
            .iter()
            .map(|e| (e.vaddr, e.nr_pages))
            .collect::<Vec<_>>(),
        vec![(0, 1), (2 * PAGE_SIZE, 1)]
    );
    let mut want = object[..4096].to_vec();
    want.extend_from_slice(&object[8192..]);
    assert!(std::fs::read(ps2.join("pages-65537.img")).unwrap() == want);
    let held: u64 = present[1..].iter().map(|h| h.pages).sum();
    assert_eq!(report.pagemaps[1].pages_parent, held);
    assert_eq!(report.pagemaps[2].pages_parent, 0);
    assert!(std::fs::read(ps2.join("pages-65539.img")).unwrap() == pages[..first_len]);
    let sent = s.sent();
    assert_eq!(sent.len(), 3);
    assert!(sent[1].has_parent && !sent[2].has_parent);
    assert_eq!(sent[1].entries.len(), present.len());
    assert_eq!(s.stats().page_bytes, 2 * PAGE_SIZE + 2 * first_len as u64);
}

/// This process's own end of the TCP connection whose local port is `port`: a
/// duplicate, found among the descriptors in /proc/self/fd.
fn own_socket(port: u16) -> TcpStream {
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: the descriptor is only borrowed to be duplicated at once. Other
        // tests run in this process: if it was closed since it was listed the
        // duplication fails, and if its number was reused meanwhile the
        // duplicate is of another file, whose address does not match below.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(n) };
        let Ok(dup) = fd.try_clone_to_owned() else {
            continue;
        };
        let s = TcpStream::from(dup);
        if s.local_addr().is_ok_and(|a| a.port() == port) && s.peer_addr().is_ok() {
            return s;
        }
    }
    panic!("no socket of this process at port {port}");
}

fn corked(s: &TcpStream) -> bool {
    nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::TcpCork).unwrap()
}

/// The client corks its socket so that headers and page data leave in full
/// segments, and lifts the cork while it waits for an answer, until the
/// answer is in. Lifted for a moment only, a tail that a shut window held back
/// at that moment waited, corked again, for the kernel's 200 ms cork timer
/// once the window opened: the end of every 1 GiB splice-mode session to a
/// page server did (docs/PAGE-SERVER.md).
#[test]
fn the_socket_is_uncorked_while_an_answer_is_awaited() {
    let (l, port) = fake_server();
    let client = std::thread::spawn(move || {
        let mut client = Client::connect(&short(port), &Abort::new().unwrap()).unwrap();
        let held = client.open(Dst::process(1)).unwrap();
        (client, held)
    });
    let (mut s, peer) = l.accept().unwrap();
    let mut open = [0u8; 32];
    s.read_exact(&mut open).unwrap();
    // The client has sent PS_IOV_OPEN2 and waits for the answer, which is not
    // given yet.
    let theirs = own_socket(peer.port());
    assert!(!corked(&theirs), "corked while waiting for the answer");
    s.write_all(&[1]).unwrap();
    let (client, held) = client.join().unwrap();
    assert!(held);
    assert!(corked(&theirs), "not corked again for the page data");
    drop(client);
}
