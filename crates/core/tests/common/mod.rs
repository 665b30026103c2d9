//! What the integration tests share: starting the test target program.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;

pub const TESTEE: &str = env!("CARGO_BIN_EXE_predump-testee");

/// Starts `predump-testee ARGS`: the child, its stdin, and its stdout lines as
/// they come (read on a thread of their own, so a test can wait with a timeout).
#[allow(dead_code)] // not every test file starts it this way
pub fn spawn_testee(args: &[&str]) -> (Child, ChildStdin, Receiver<String>) {
    let mut child = Command::new(TESTEE)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn predump-testee");
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

/// Starts `predump-testee ARGS` through `/bin/sh` so that it is not our child
/// (`pre_dump` refuses the caller's own children): (the shell, the testee's
/// pid from its first line, its stdin, its stdout lines after that).
#[allow(dead_code)] // not every test file starts it this way
pub fn spawn_testee_detached(args: &[&str]) -> (Child, i32, ChildStdin, Receiver<String>) {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        // An asynchronous command's stdin is /dev/null unless redirected.
        .arg("exec 3<&0; \"$0\" \"$@\" <&3 3<&- & wait")
        .arg(TESTEE)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn /bin/sh running predump-testee");
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
    let first = lines
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the testee's first line");
    let pid = first
        .strip_prefix("tid main ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
    (child, pid, stdin, lines)
}
