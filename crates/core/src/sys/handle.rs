//! `name_to_handle_at(2)`: a file's handle, which names it across the reuse of
//! its inode number (for shmem: the inode number and the random generation the
//! kernel draws for each inode).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// MAX_HANDLE_SZ: the most any file system's handle takes.
const MAX_HANDLE_SZ: usize = 128;

/// `struct file_handle` with room for any handle.
#[repr(C)]
struct FileHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; MAX_HANDLE_SZ],
}

/// The handle of the open file `fd` (`AT_EMPTY_PATH`): its type and bytes.
pub fn of_fd(fd: BorrowedFd<'_>) -> io::Result<(i32, Vec<u8>)> {
    let mut fh = FileHandle {
        handle_bytes: MAX_HANDLE_SZ as u32,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `fd` is open for the call (borrowed) and the path is empty with
    // AT_EMPTY_PATH (the fd itself); `fh` is a file_handle whose handle_bytes
    // says the room it has, and `mount_id` an int, both alive for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            fd.as_raw_fd(),
            c"".as_ptr(),
            &mut fh as *mut FileHandle,
            &mut mount_id as *mut libc::c_int,
            libc::AT_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = (fh.handle_bytes as usize).min(MAX_HANDLE_SZ);
    Ok((fh.handle_type, fh.f_handle[..n].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_file_s_handle_is_stable_and_differs_from_another_s() {
        let dir = std::env::temp_dir();
        let a = tempfile_in(&dir, "a");
        let b = tempfile_in(&dir, "b");
        let ha = of_fd(a.1.as_fd()).unwrap();
        assert_eq!(ha, of_fd(a.1.as_fd()).unwrap());
        assert_ne!(ha, of_fd(b.1.as_fd()).unwrap());
        std::fs::remove_file(a.0).unwrap();
        std::fs::remove_file(b.0).unwrap();
    }

    fn tempfile_in(dir: &std::path::Path, tag: &str) -> (std::path::PathBuf, std::fs::File) {
        let p = dir.join(format!("predump-handle-{}-{tag}", std::process::id()));
        let f = std::fs::File::create(&p).unwrap();
        (p, f)
    }
}
