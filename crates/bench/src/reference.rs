//! Reference figures measured beside a pre-dump, so that its times can be read
//! as ratios on a noisy machine: a memcpy of the same size, and
//! process_vm_readv alone (no image written).

use std::time::{Duration, Instant};

use predump_core::anon::AnonMap;
use predump_core::drain::{self, MAX_IOVS};
use predump_core::{Error, PageRange, Result};

/// memcpy of `bytes` from a warm source into a fresh destination (which pays for
/// its page faults, as a new image file does) and again into the same, now warm,
/// destination.
#[derive(Debug, Clone, Copy)]
pub struct MemcpyTimes {
    pub fresh: Duration,
    pub warm: Duration,
}

pub fn memcpy(bytes: usize) -> Result<MemcpyTimes> {
    let mut src = AnonMap::new(bytes, "a memcpy buffer")?;
    src.as_mut_slice().fill(0x5a);
    let dst = AnonMap::new(bytes, "a memcpy buffer")?;
    let copy = || {
        let t = Instant::now();
        // SAFETY: two distinct live mappings of `bytes` bytes each.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_ptr(), bytes) };
        // Keep the copy from being optimised out.
        // SAFETY: dst is readable and at least one byte long.
        unsafe { std::ptr::read_volatile(dst.as_ptr().add(bytes - 1)) };
        t.elapsed()
    };
    let fresh = copy();
    let warm = copy();
    Ok(MemcpyTimes { fresh, warm })
}

/// process_vm_readv of every present page of `pid` (found without freezing it)
/// into one reused 4 MiB buffer: the floor of read mode's drain, nothing written.
/// Returns the time and the bytes read.
pub fn readv_reference(pid: i32) -> Result<(Duration, u64)> {
    let text = predump_core::proc::read_proc(pid, &format!("/proc/{pid}/maps"))?;
    let vmas = predump_core::maps::parse_maps(&text)?;
    let (keep, _) = predump_core::scan::select(&vmas, &Default::default(), true);
    let found = predump_core::scan::Scanner::open(pid)?.present(&keep)?;
    let t = readv_only(pid, &found.ranges)?;
    Ok((t, found.pages_present * predump_core::PAGE_SIZE))
}

fn readv_only(pid: i32, ranges: &[PageRange]) -> Result<Duration> {
    let cap = 4 << 20;
    let mut buf = AnonMap::new(cap, "a readv buffer")?;
    let slice = buf.as_mut_slice();
    let t = Instant::now();
    for batch in drain::batches(ranges, MAX_IOVS, cap as u64) {
        drain::fill_userbuf(pid, &batch, slice)?;
    }
    Ok(t.elapsed())
}

/// Writing `bytes` from a warm buffer into a new file in `dir` (1 MiB writes,
/// then fsync; the file is removed): the floor of any image writer on that
/// file system, which pays for allocating the file's pages as a pre-dump does.
pub fn write_reference(dir: &std::path::Path, bytes: usize) -> Result<Duration> {
    use std::io::Write;
    let chunk = 1 << 20;
    let buf = vec![0x5au8; chunk];
    let path = dir.join(format!(".predump-write-reference-{}", std::process::id()));
    let mut f =
        std::fs::File::create(&path).map_err(|e| Error::sys("create write reference", e))?;
    let t = Instant::now();
    let mut left = bytes;
    let result = (|| {
        while left > 0 {
            let n = left.min(chunk);
            f.write_all(&buf[..n])?;
            left -= n;
        }
        f.sync_all()
    })();
    let elapsed = t.elapsed();
    let _ = std::fs::remove_file(&path);
    result.map_err(|e| Error::sys("write reference", e))?;
    Ok(elapsed)
}

/// A plain TCP send of `bytes` over loopback: from a warm buffer of that size,
/// in 1 MiB writes, to a thread of this process that reads into one reused
/// 1 MiB buffer and throws it away. The floor of any page-server transfer of
/// the same bytes on this machine (no target to read, no image to write);
/// timed from the connect to the receiver's end of stream.
pub fn tcp_reference(bytes: usize) -> Result<Duration> {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    let sys = |what: &'static str| move |e: std::io::Error| Error::sys(what, e);
    let mut src = AnonMap::new(bytes.max(1), "a TCP reference buffer")?;
    src.as_mut_slice()[..bytes].fill(0x5a);
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(sys("bind the TCP reference's listener"))?;
    let at = listener
        .local_addr()
        .map_err(sys("the TCP reference's port"))?;
    let t = Instant::now();
    // Connected before the receiver runs (loopback completes it from the backlog),
    // so that no failure can leave a thread waiting in accept.
    let mut s = TcpStream::connect(at).map_err(sys("connect to the TCP reference's listener"))?;
    let (mut r, _) = listener
        .accept()
        .map_err(sys("accept the TCP reference's connection"))?;
    let receiver = std::thread::spawn(move || -> std::io::Result<u64> {
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        loop {
            match r.read(&mut buf)? {
                0 => return Ok(got),
                n => got += n as u64,
            }
        }
    });
    let sent = (|| {
        let data = &src.as_slice()[..bytes];
        for chunk in data.chunks(1 << 20) {
            s.write_all(chunk)?;
        }
        s.shutdown(Shutdown::Write)
    })();
    // On a failed send the receiver still ends: the socket is closed here.
    drop(s);
    let got = receiver
        .join()
        .map_err(|_| Error::InvalidArgument("the TCP reference's receiver panicked".into()))?;
    let elapsed = t.elapsed();
    sent.map_err(sys("send the TCP reference"))?;
    let got = got.map_err(sys("receive the TCP reference"))?;
    if got != bytes as u64 {
        return Err(Error::InvalidArgument(format!(
            "the TCP reference received {got} of {bytes} bytes"
        )));
    }
    Ok(elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tcp_reference_sends_every_byte() {
        // An odd size: the last write is shorter than the others.
        let t = tcp_reference((8 << 20) + 4096).unwrap();
        assert!(t > Duration::ZERO);
        assert!(tcp_reference(0).unwrap() >= Duration::ZERO);
    }
}
