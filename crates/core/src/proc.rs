//! What /proc tells about a process: its state, its threads, its tracer.
//! Parsing is kept apart from reading so that it can be tested on fixed text.

use std::fs;
use std::io;

use crate::{Error, Result};

/// `PF_KTHREAD` from include/linux/sched.h: the task is a kernel thread.
const PF_KTHREAD: u32 = 0x0020_0000;

/// The fields of /proc/PID/stat that predump needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub flags: u32,
    /// Start time after boot, in clock ticks: with the pid it names a process
    /// uniquely, even after pid reuse.
    pub start_time: u64,
}

impl Stat {
    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }
    pub fn is_zombie(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses the text of /proc/PID/stat. `comm` may hold spaces and parentheses,
/// so the fields after it are found from the *last* ')'.
pub fn parse_stat(text: &str) -> Result<Stat> {
    let bad = |detail: &str| Error::Parse {
        file: "/proc/PID/stat".into(),
        detail: detail.into(),
    };
    let open = text.find('(').ok_or_else(|| bad("no '('"))?;
    let close = text.rfind(')').ok_or_else(|| bad("no ')'"))?;
    let pid = text[..open].trim().parse().map_err(|_| bad("bad pid"))?;
    let comm = text[open + 1..close].to_string();
    // Fields after comm, numbered from 3 (state) as in proc(5).
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let field = |n: usize| {
        rest.get(n - 3)
            .copied()
            .ok_or_else(|| bad("too few fields"))
    };
    let state = field(3)?.chars().next().ok_or_else(|| bad("empty state"))?;
    let ppid = field(4)?.parse().map_err(|_| bad("bad ppid"))?;
    let flags = field(9)?.parse().map_err(|_| bad("bad flags"))?;
    let start_time = field(22)?.parse().map_err(|_| bad("bad starttime"))?;
    Ok(Stat {
        pid,
        comm,
        state,
        ppid,
        flags,
        start_time,
    })
}

/// Reads /proc/PID/stat; a missing process is `Error::NoSuchProcess`.
pub fn stat(pid: i32) -> Result<Stat> {
    let text = read_proc(pid, &format!("/proc/{pid}/stat"))?;
    parse_stat(&text)
}

/// The thread ids of a process, from /proc/PID/task.
pub fn tasks(pid: i32) -> Result<Vec<i32>> {
    let task = format!("/proc/{pid}/task");
    let dir = fs::read_dir(&task).map_err(|e| proc_error(pid, &task, e))?;
    let mut tids = Vec::new();
    for entry in dir {
        let entry = entry.map_err(|e| proc_error(pid, &task, e))?;
        if let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
            tids.push(tid);
        }
    }
    tids.sort_unstable();
    Ok(tids)
}

/// The pid of the thread's tracer, 0 when none (TracerPid of /proc/PID/task/TID/status).
pub fn tracer_pid(pid: i32, tid: i32) -> Result<i32> {
    let text = read_proc(pid, &format!("/proc/{pid}/task/{tid}/status"))?;
    parse_status_field(&text, "TracerPid")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::Parse {
            file: format!("/proc/{pid}/task/{tid}/status"),
            detail: "no TracerPid".into(),
        })
}

/// The value of one `Name:\tvalue` line of a status file.
pub fn parse_status_field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim())
    })
}

/// Refuses targets that cannot or must not be pre-dumped, with a message that
/// says why: ourselves, kernel threads, zombies, missing processes.
pub fn check_target(pid: i32) -> Result<Stat> {
    if pid <= 0 {
        return Err(Error::InvalidArgument(format!(
            "pid must be a positive integer, got {pid}"
        )));
    }
    if pid == std::process::id() as i32 {
        return Err(Error::SelfTarget { pid });
    }
    let st = stat(pid)?;
    // A thread id has a /proc entry of its own (hidden from listings): dumping
    // a process through one of its threads would name the images wrongly.
    let status = read_proc(pid, &format!("/proc/{pid}/status"))?;
    let tgid: i32 = parse_status_field(&status, "Tgid")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::Parse {
            file: format!("/proc/{pid}/status"),
            detail: "no Tgid".into(),
        })?;
    if tgid != pid {
        return Err(Error::NotAProcess { pid, tgid });
    }
    if st.is_kernel_thread() {
        return Err(Error::KernelThread { pid });
    }
    if st.is_zombie() {
        return Err(Error::Zombie { pid });
    }
    // Any thread of a parent may collect its children's ptrace stops with
    // waitpid, and event loops do (libuv reads a stop as an exit): our own stop
    // notifications would be stolen and the freeze would never see them.
    if st.ppid == std::process::id() as i32 {
        return Err(Error::OwnChild { pid });
    }
    Ok(st)
}

/// Resident memory of a process in bytes (the second field of /proc/PID/statm).
pub fn resident_bytes(pid: i32) -> Result<u64> {
    let text = read_proc(pid, &format!("/proc/{pid}/statm"))?;
    let pages: u64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::Parse {
            file: format!("/proc/{pid}/statm"),
            detail: "no resident field".into(),
        })?;
    Ok(pages * crate::PAGE_SIZE)
}

/// Seconds since boot as CRIU records `dump_uptime`: microseconds of CLOCK_BOOTTIME.
pub fn uptime_us() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .expect("CLOCK_BOOTTIME is always available on Linux");
    ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1000
}

/// Reads a /proc file of process `pid`; ENOENT/ESRCH mean the process is gone.
pub fn read_proc(pid: i32, path: &str) -> Result<String> {
    fs::read_to_string(path).map_err(|e| proc_error(pid, path, e))
}

/// An error opening or reading `path`, a /proc file of process `pid`:
/// ENOENT/ESRCH mean the process is gone, EACCES/EPERM a refusal, the rest
/// name the file.
pub fn proc_error(pid: i32, path: &str, e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ESRCH) => Error::NoSuchProcess { pid },
        Some(libc::EACCES) | Some(libc::EPERM) => Error::Permission {
            pid,
            action: "inspect",
            source: e,
        },
        _ => Error::sys(format!("reading {path}"), e),
    }
}

/// The soft RLIMIT_NOFILE of process `pid`, from /proc/PID/limits (None if
/// that cannot be read or parsed).
pub fn nofile_soft(pid: i32) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()
        .and_then(|t| parse_nofile_soft(&t))
}

/// The soft limit of "Max open files" in a /proc/PID/limits text; "unlimited"
/// is `u64::MAX`.
pub fn parse_nofile_soft(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    if soft == "unlimited" {
        Some(u64::MAX)
    } else {
        soft.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_comm() {
        let text = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 98765 1000 50 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let st = parse_stat(text).unwrap();
        assert_eq!(st.pid, 1234);
        assert_eq!(st.comm, "a) b (c)");
        assert_eq!(st.state, 'S');
        assert_eq!(st.ppid, 1);
        assert_eq!(st.flags, 4194560);
        assert_eq!(st.start_time, 98765);
        assert!(!st.is_kernel_thread());
    }

    #[test]
    fn kthreadd_is_a_kernel_thread() {
        let st = stat(2).unwrap();
        assert!(st.is_kernel_thread(), "{st:?}");
        assert_eq!(check_target(2).unwrap_err().code(), "EKTHREAD");
    }

    #[test]
    fn self_is_refused() {
        let me = std::process::id() as i32;
        assert_eq!(check_target(me).unwrap_err().code(), "ESELF");
    }

    #[test]
    fn truncated_stat_is_a_parse_error() {
        assert_eq!(parse_stat("12 (x) S 1").unwrap_err().code(), "EPARSE");
    }

    #[test]
    fn status_field() {
        let text = "Name:\tcat\nTracerPid:\t0\nUid:\t0\t0\t0\t0\n";
        assert_eq!(parse_status_field(text, "TracerPid"), Some("0"));
        assert_eq!(parse_status_field(text, "Missing"), None);
    }
}
