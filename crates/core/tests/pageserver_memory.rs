//! The page server's memory stays flat whatever it receives: a test binary of
//! its own, so that no other test's allocations run in the same process while
//! the peak is measured.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use predump_core::pageserver::wire::{Dst, Format, Request, MAX_HEADER_LEN, PE_PRESENT};
use predump_core::pageserver::{Server, ServerOptions};
use predump_core::PAGE_SIZE;

/// Peak resident memory of this process, in bytes.
fn vm_hwm() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    kb * 1024
}

fn header(req: Request) -> Vec<u8> {
    let mut buf = [0u8; MAX_HEADER_LEN];
    let n = req.header().encode(Format::Criu42, &mut buf).unwrap();
    buf[..n].to_vec()
}

#[test]
fn receiving_512_mib_keeps_the_servers_memory_flat() {
    let dir = std::env::temp_dir().join(format!("predump-ps-flat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    let server = Server::listen(Some("127.0.0.1"), 0, None).unwrap();
    let addr = server.local_addr();
    let options = ServerOptions {
        dir: dir.clone(),
        timeout: Some(Duration::from_secs(60)),
    };
    let before = vm_hwm();
    let done = std::thread::spawn(move || server.serve(&options));
    let mut sock = TcpStream::connect(addr).unwrap();
    let dst = Dst::process(1);
    sock.write_all(&header(Request::Open { dst, reply: true }))
        .unwrap();
    let mut reply = [0u8; 1];
    sock.read_exact(&mut reply).unwrap();
    // One 256 MiB entry, then 256 MiB in 4-page entries.
    let big: u64 = 256 << 20;
    sock.write_all(&header(Request::Add {
        dst,
        vaddr: 0x1000_0000,
        nr_pages: big / PAGE_SIZE,
        flags: PE_PRESENT,
    }))
    .unwrap();
    for _ in 0..big / chunk.len() as u64 {
        sock.write_all(&chunk).unwrap();
    }
    let mut vaddr = 0x4000_0000;
    let small = 4 * PAGE_SIZE as usize;
    for _ in 0..big / small as u64 {
        sock.write_all(&header(Request::Add {
            dst,
            vaddr,
            nr_pages: 4,
            flags: PE_PRESENT,
        }))
        .unwrap();
        sock.write_all(&chunk[..small]).unwrap();
        vaddr += 5 * PAGE_SIZE;
    }
    sock.write_all(&header(Request::Close { force: false }))
        .unwrap();
    let mut reply = [0u8; 4];
    sock.read_exact(&mut reply).unwrap();
    drop(sock);
    let report = done.join().unwrap().unwrap();
    let grew = vm_hwm().saturating_sub(before);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(report.page_bytes, 2 * big);
    assert_eq!(report.pagemaps[0].entries, 1 + big / small as u64);
    // The client's 1 MiB chunk, the server's stack and buffers: a few MiB.
    assert!(grew < 12 << 20, "peak memory grew by {} MiB", grew >> 20);
}
