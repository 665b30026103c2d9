//! CRIU image files: the framing every image shares, and the images the data
//! plane writes itself (`pagemap`: pagemap-PID.img, pagemap-shmem-ID.img).
//!
//! An image is one or two u32 magics (criu/include/magic.h), then records, each a
//! u32 length and that many bytes of one protobuf message (proto2, CRIU's
//! criu/images/*.proto). CRIU writes the integers in the byte order of the
//! machine; both architectures predump runs on are little-endian, and so is what
//! is written and read here (a big-endian build refuses to compile). `pages-ID.img`
//! is raw page data without any framing: see `pagemap` for how the two pair up.
//!
//! The protobuf messages are declared with prost's derive, field for field as in
//! CRIU's .proto files, so no code generator is needed at build time.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

pub mod pagemap;

#[cfg(not(target_endian = "little"))]
compile_error!("CRIU images are written in the machine's byte order: predump reads and writes little-endian only");

/// Magic numbers (criu/include/magic.h).
pub mod magic {
    /// First magic of most images.
    pub const IMG_COMMON: u32 = 0x5456_4319;
    /// First magic of service images (stats-dump, irmap-cache).
    pub const IMG_SERVICE: u32 = 0x5510_5940;
    /// inventory.img has this one magic only.
    pub const INVENTORY: u32 = 0x5831_3116;
    /// pagemap-PID.img and pagemap-shmem-ID.img alike.
    pub const PAGEMAP: u32 = 0x5608_4025;
    pub const STATS: u32 = 0x5709_3306;
}

/// The kinds of image this module frames, by the magics their files start with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Inventory,
    Pagemap,
    Stats,
}

impl Kind {
    pub fn magics(self) -> &'static [u32] {
        match self {
            Kind::Inventory => &[magic::INVENTORY],
            Kind::Pagemap => &[magic::IMG_COMMON, magic::PAGEMAP],
            Kind::Stats => &[magic::IMG_SERVICE, magic::STATS],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Inventory => "inventory",
            Kind::Pagemap => "pagemap",
            Kind::Stats => "stats",
        }
    }
}

/// The bytes of an image of `kind` holding `records` (each a protobuf message).
pub fn encode<M: prost::Message>(kind: Kind, records: &[M]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(8 + records.iter().map(|m| 4 + m.encoded_len()).sum::<usize>());
    for m in kind.magics() {
        out.extend_from_slice(&m.to_le_bytes());
    }
    for m in records {
        push_record(&mut out, m);
    }
    out
}

/// Appends one record (length, then message) to `out`.
pub fn push_record<M: prost::Message>(out: &mut Vec<u8>, m: &M) {
    let len = m.encoded_len();
    out.extend_from_slice(&(len as u32).to_le_bytes());
    m.encode(out).expect("a Vec grows as needed");
}

/// The records of an image file, checked to be of `kind`. `file` names it in errors.
pub fn records<'a>(bytes: &'a [u8], kind: Kind, file: &str) -> Result<Vec<&'a [u8]>> {
    let bad = |detail: String| image_error(file, detail);
    let magics = kind.magics();
    let head = magics.len() * 4;
    if bytes.len() < head {
        return Err(bad(format!(
            "too short for a {} image ({} bytes)",
            kind.name(),
            bytes.len()
        )));
    }
    for (i, want) in magics.iter().enumerate() {
        let got = u32_at(bytes, i * 4);
        if got != *want {
            return Err(bad(format!(
                "not a {} image: magic {got:#010x} where {want:#010x} belongs",
                kind.name()
            )));
        }
    }
    let mut out = Vec::new();
    let mut at = head;
    while at < bytes.len() {
        if bytes.len() - at < 4 {
            return Err(bad(format!(
                "truncated: record {} at offset {at} has {} of 4 length bytes",
                out.len(),
                bytes.len() - at
            )));
        }
        let len = u32_at(bytes, at) as usize;
        at += 4;
        if len > bytes.len() - at {
            return Err(bad(format!(
                "truncated: record {} at offset {} needs {len} bytes, {} left",
                out.len(),
                at - 4,
                bytes.len() - at
            )));
        }
        out.push(&bytes[at..at + len]);
        at += len;
    }
    Ok(out)
}

/// Decodes record `index` of `file` as message `M`.
pub fn decode_record<M: prost::Message + Default>(
    bytes: &[u8],
    file: &str,
    index: usize,
) -> Result<M> {
    M::decode(bytes).map_err(|e| image_error(file, format!("record {index}: {e}")))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

pub(crate) fn image_error(file: &str, detail: String) -> Error {
    Error::Image {
        file: file.to_string(),
        detail,
    }
}

/// Writes `data` to `dir/name` as every image is written: under a temporary name
/// in the same directory, mode 0600, synced, then renamed. A final name therefore
/// never holds a half-written file, whatever happens to predump. The directory
/// entry itself is made durable by `sync_dir`, which the caller runs once after a
/// group of files (before writing the one that marks the set complete).
pub fn write_file_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    let tmp = temp_name(dir, name);
    let written = (|| -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        write_error(&dir.join(name), e)
    })
}

/// fsyncs directory `dir`, so that the renames done in it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::sys(format!("syncing directory {}", dir.display()), e))
}

/// `.NAME.PID-N.tmp`: the shape of temporary file that `ts/images-dir.ts`
/// removes after a failed run.
fn temp_name(dir: &Path, name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{name}.{}-{n}.tmp", std::process::id()))
}

/// A write error of `path`: ENOSPC/EDQUOT as `Error::NoSpace`.
pub fn write_error(path: &Path, e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => Error::NoSpace {
            path: path.display().to_string(),
        },
        _ => Error::sys(format!("writing {}", path.display()), e),
    }
}

#[cfg(test)]
mod tests {
    use super::pagemap::PagemapHead;
    use super::*;

    #[test]
    fn framing_round_trip() {
        let bytes = encode(Kind::Pagemap, &[PagemapHead { pages_id: 7 }]);
        assert_eq!(
            &bytes[..8],
            &[0x19, 0x43, 0x56, 0x54, 0x25, 0x40, 0x08, 0x56]
        );
        let recs = records(&bytes, Kind::Pagemap, "x").unwrap();
        assert_eq!(recs.len(), 1);
        let head: PagemapHead = decode_record(recs[0], "x", 0).unwrap();
        assert_eq!(head.pages_id, 7);
    }

    #[test]
    fn bad_framing_is_an_image_error() {
        let bytes = encode(Kind::Pagemap, &[PagemapHead { pages_id: 7 }]);
        let e = records(&bytes, Kind::Stats, "f.img").unwrap_err();
        assert_eq!(e.code(), "EIMAGE");
        assert!(e.to_string().contains("not a stats image"), "{e}");
        let e = records(&bytes[..bytes.len() - 1], Kind::Pagemap, "f.img").unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        let e = records(&bytes[..5], Kind::Pagemap, "f.img").unwrap_err();
        assert!(e.to_string().contains("too short"), "{e}");
        // A length that claims more than the file holds is refused before any allocation.
        let mut huge = bytes[..8].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        let e = records(&huge, Kind::Pagemap, "f.img").unwrap_err();
        assert!(e.to_string().contains("needs 4294967295 bytes"), "{e}");
    }

    #[test]
    fn atomic_write_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("predump-image-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_file_atomic(&dir, "a.img", b"abc").unwrap();
        write_file_atomic(&dir, "a.img", b"de").unwrap();
        sync_dir(&dir).unwrap();
        assert_eq!(std::fs::read(dir.join("a.img")).unwrap(), b"de");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.img")]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("a.img"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
