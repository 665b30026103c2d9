//! What the integration tests share: starting the test target program.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;

pub const TESTEE: &str = env!("CARGO_BIN_EXE_predump-testee");

/// Starts `predump-testee ARGS`: the child, its stdin, and its stdout lines as
/// they come (read on a thread of their own, so a test can wait with a timeout).
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
