//! What the integration tests share: starting the test target program (or
//! any piped child), and reading a process's fds and mappings.
#![allow(dead_code)] // each test file uses a part of it

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

pub const TESTEE: &str = env!("CARGO_BIN_EXE_predump-testee");

/// Spawns `cmd` with piped stdin and stdout: the child, its stdin, and its
/// stdout lines as they come (read on a thread of their own, so a test can
/// wait with a timeout).
pub fn spawn_piped(mut cmd: Command) -> (Child, ChildStdin, Receiver<String>) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
    let stdin = child.stdin.take().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, stdin, lines)
}

/// Starts `predump-testee ARGS` as our child.
pub fn spawn_testee(args: &[&str]) -> (Child, ChildStdin, Receiver<String>) {
    let mut cmd = Command::new(TESTEE);
    cmd.args(args);
    spawn_piped(cmd)
}

/// Starts `predump-testee ARGS` through `/bin/sh` so that it is not our child
/// (`pre_dump` refuses the caller's own children): (the shell, the testee's
/// pid from its first line, its stdin, its stdout lines after that).
pub fn spawn_testee_detached(args: &[&str]) -> (Child, i32, ChildStdin, Receiver<String>) {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        // An asynchronous command's stdin is /dev/null unless redirected.
        .arg("exec 3<&0; \"$0\" \"$@\" <&3 3<&- & wait")
        .arg(TESTEE)
        .args(args);
    let (child, stdin, lines) = spawn_piped(cmd);
    let first = lines
        .recv_timeout(Duration::from_secs(10))
        .expect("the testee's first line");
    let pid = first
        .strip_prefix("tid main ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
    (child, pid, stdin, lines)
}

/// A testee of case `track` (a worker blocked in read, memory made on
/// command): killed by pid and reaped when the test ends, pass or fail.
pub struct Testee {
    /// The testee itself, or the shell that started it (`detached`).
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    pub pid: i32,
}

impl Testee {
    /// Our child.
    pub fn track() -> Testee {
        let (child, stdin, lines) = spawn_testee(&["track"]);
        let pid = child.id() as i32;
        Self::ready(child, pid, stdin, lines)
    }

    /// Not our child, so that `pre_dump` accepts it.
    pub fn track_detached() -> Testee {
        let (child, pid, stdin, lines) = spawn_testee_detached(&["track"]);
        Self::ready(child, pid, stdin, lines)
    }

    fn ready(child: Child, pid: i32, stdin: ChildStdin, lines: Receiver<String>) -> Testee {
        let t = Testee {
            child,
            stdin,
            lines,
            pid,
        };
        while t.line() != "ready" {}
        t
    }

    pub fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(20))
            .expect("testee answers")
    }

    /// Sends a command and returns the answer, which must start with `prefix`.
    pub fn ask(&mut self, cmd: &str, prefix: &str) -> String {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        let l = self.line();
        assert!(
            l.starts_with(prefix),
            "{cmd}: expected {prefix:?}, got {l:?}"
        );
        l
    }

    /// A new region of `pages` pages, the first `populated` written; its range.
    pub fn region(&mut self, name: &str, pages: u64, populated: u64) -> (u64, u64) {
        let l = self.ask(&format!("region {name} {pages} {populated}"), "region");
        let addr: u64 = l.split_whitespace().nth(2).unwrap().parse().unwrap();
        (addr, addr + pages * predump_core::PAGE_SIZE)
    }

    pub fn write(&mut self, name: &str, pages: &str) {
        self.ask(&format!("write {name} {pages}"), "written");
    }
}

impl Drop for Testee {
    fn drop(&mut self) {
        // By pid, never by name; SIGCONT first in case a dump left it stopped.
        // SAFETY: kill with integer arguments, on the testee we started.
        unsafe {
            libc::kill(self.pid, libc::SIGCONT);
            libc::kill(self.pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// fd number → what it points to, of process `pid`.
pub fn fds(pid: i32) -> BTreeMap<i32, String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let n = e.file_name().to_str().unwrap().parse().unwrap();
            let target = std::fs::read_link(e.path()).unwrap();
            (n, target.to_string_lossy().into_owned())
        })
        .collect()
}

/// /proc/PID/maps of process `pid`.
pub fn maps(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap()
}
