//! Freezing whole process trees: every process of the tree stops together and
//! runs again; descendants made, gone or unreachable while freezing are
//! handled, and no process is ever left stopped or traced.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Child, ChildStdin, Command};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

mod common;

use predump_core::freeze::Frozen;
use predump_core::proc;
use predump_core::tree::{self, FrozenTree, Left};

/// A tree of shell processes headed by `sh -c SCRIPT`, which is not our child
/// (a launcher shell in between): the script's first line must be `echo $$`.
/// Every process of the tree is killed by pid when the test ends.
struct Tree {
    launcher: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    root: i32,
    seen: BTreeSet<i32>,
}

impl Tree {
    fn start(script: &str) -> Tree {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            // An asynchronous command's stdin is /dev/null unless redirected.
            .arg("exec 3<&0; /bin/sh -c \"$0\" <&3 3<&- & wait")
            .arg(script);
        let (launcher, stdin, lines) = common::spawn_piped(cmd);
        let mut t = Tree {
            launcher,
            stdin,
            lines,
            root: 0,
            seen: BTreeSet::new(),
        };
        t.root = t.line().parse().expect("the root's pid");
        t.seen.insert(t.root);
        t
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(20))
            .expect("a line from the tree")
    }

    fn say(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Re-reads /proc (bounded) until the tree has `n` live processes; their pids.
    fn wait_for(&mut self, n: usize) -> Vec<i32> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (members, _) = tree::list(self.root).unwrap();
            let pids: Vec<i32> = members.iter().map(|m| m.pid).collect();
            self.seen.extend(&pids);
            if pids.len() == n {
                return pids;
            }
            assert!(
                Instant::now() < deadline,
                "the tree never had {n} processes: {pids:?}"
            );
            std::thread::yield_now();
        }
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        if let Ok((members, _)) = tree::list(self.root) {
            self.seen.extend(members.iter().map(|m| m.pid));
        }
        for &pid in self.seen.iter().rev() {
            // By pid, never by name; SIGCONT first in case a test left it stopped.
            // SAFETY: kill with integer arguments, on processes this test started.
            unsafe {
                libc::kill(pid, libc::SIGCONT);
                libc::kill(pid, libc::SIGKILL);
            }
        }
        let _ = self.launcher.kill();
        let _ = self.launcher.wait();
    }
}

fn state(pid: i32) -> char {
    proc::stat(pid).map(|s| s.state).unwrap_or('?')
}

/// Waits (bounded, re-reading /proc) until every thread of `pid` is untraced
/// and not in a tracing stop.
fn runs_untraced(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let tids = proc::tasks(pid).unwrap_or_default();
        if tids
            .iter()
            .all(|&t| proc::tracer_pid(pid, t).unwrap_or(0) == 0)
            && state(pid) != 't'
        {
            return true;
        }
        std::thread::yield_now();
    }
    false
}

const FOUR: &str = "echo $$; sleep 1000 & sleep 1000 & /bin/sh -c 'sleep 1000 & wait' & wait";

#[test]
fn every_process_of_a_tree_stops_together_and_runs_again() {
    let mut t = Tree::start(FOUR);
    let pids = t.wait_for(5);
    let frozen = FrozenTree::freeze(t.root).unwrap();
    let held: Vec<i32> = frozen.processes().iter().map(|p| p.member.pid).collect();
    // While frozen the tree cannot change: the listing is exact.
    let (members, left) = tree::list(t.root).unwrap();
    assert_eq!(held, members.iter().map(|m| m.pid).collect::<Vec<_>>());
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        held.iter().copied().collect::<BTreeSet<_>>(),
        pids.iter().copied().collect()
    );
    assert_eq!(held[0], t.root, "the root first");
    // CRIU's order: each process after its parent.
    for (i, p) in frozen.processes().iter().enumerate().skip(1) {
        let parent = held.iter().position(|&q| q == p.member.ppid).unwrap();
        assert!(parent < i, "{held:?}");
    }
    let me = nix::unistd::gettid().as_raw();
    for &pid in &held {
        assert_eq!(state(pid), 't', "process {pid} is in a tracing stop");
        assert_eq!(proc::tracer_pid(pid, pid).unwrap(), me);
    }
    let times = frozen.thaw();
    assert_eq!(times.threads, 5);
    assert!(times.stopped_window >= times.freezing);
    for &pid in &held {
        assert!(runs_untraced(pid), "process {pid} runs again, untraced");
    }
}

#[test]
fn a_tree_left_stopped_is_job_stopped_and_untraced() {
    let mut t = Tree::start(FOUR);
    let pids = t.wait_for(5);
    FrozenTree::freeze(t.root).unwrap().thaw_stopped();
    for &pid in &pids {
        let deadline = Instant::now() + Duration::from_secs(5);
        while state(pid) != 'T' && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(state(pid), 'T', "process {pid} is job-stopped");
        assert_eq!(proc::tracer_pid(pid, pid).unwrap(), 0);
    }
    for &pid in &pids {
        // SAFETY: kill with integer arguments, on a process of this test.
        unsafe { libc::kill(pid, libc::SIGCONT) };
    }
    for &pid in &pids {
        assert!(runs_untraced(pid));
    }
}

#[test]
fn a_process_already_traced_fails_the_freeze_and_leaves_none_frozen() {
    let mut t = Tree::start(FOUR);
    let pids = t.wait_for(5);
    let victim = *pids.last().unwrap();
    // Another tracer (a thread of ours, as a debugger would be) holds one
    // process of the tree.
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let f = Frozen::freeze(victim).unwrap();
        tx.send(nix::unistd::gettid().as_raw()).unwrap();
        done_rx.recv().unwrap();
        f.thaw();
    });
    let other = rx.recv().unwrap();
    let e = FrozenTree::freeze(t.root).unwrap_err();
    assert_eq!(e.code(), "ETRACED", "{e}");
    let msg = e.to_string();
    assert!(msg.contains(&format!("process {victim}")), "{msg}");
    assert!(msg.contains(&format!("traced by pid {other}")), "{msg}");
    for &pid in pids.iter().filter(|&&p| p != victim) {
        assert!(
            runs_untraced(pid),
            "process {pid} was thawed after the failure"
        );
    }
    done_tx.send(()).unwrap();
    holder.join().unwrap();
    assert!(runs_untraced(victim));
}

#[test]
fn a_zombie_in_the_tree_is_listed_not_frozen() {
    // A child that exits when told, under a parent that never reaps (sleep).
    let mut t = Tree::start("echo $$; exec 3<&0; { read x <&3; exit 0; } & exec sleep 1000");
    let pids = t.wait_for(2);
    let child = pids[1];
    t.say("go");
    let deadline = Instant::now() + Duration::from_secs(10);
    while state(child) != 'Z' {
        assert!(Instant::now() < deadline, "the child never became a zombie");
        std::thread::yield_now();
    }
    let frozen = FrozenTree::freeze(t.root).unwrap();
    assert_eq!(frozen.processes().len(), 1);
    assert!(
        matches!(frozen.left(), [Left::Zombie(m)] if m.pid == child),
        "{:?}",
        frozen.left()
    );
    frozen.thaw();
    assert!(runs_untraced(t.root));
}

#[test]
fn a_process_killed_while_the_tree_freezes_is_left_out() {
    let mut t = Tree::start(FOUR);
    let pids = t.wait_for(5);
    // A leaf: killing a parent would also take its children out of the tree.
    let victim = *pids
        .iter()
        .find(|&&p| p != t.root && tree::children(p).unwrap().is_empty())
        .unwrap();
    let mut killed = false;
    // Killed once the root is frozen and before the walk reaches it.
    let frozen = FrozenTree::freeze_with(t.root, |m| {
        if m.pid == t.root {
            // SAFETY: kill with integer arguments, on a process of this test.
            unsafe { libc::kill(victim, libc::SIGKILL) };
            killed = true;
        }
    })
    .unwrap();
    assert!(killed);
    let held: Vec<i32> = frozen.processes().iter().map(|p| p.member.pid).collect();
    assert!(!held.contains(&victim), "{held:?}");
    assert_eq!(held.len(), 4);
    // Its parent is frozen and cannot reap it: a zombie, or gone if the
    // kernel was quicker than our walk.
    assert_eq!(frozen.left().len(), 1, "{:?}", frozen.left());
    assert_eq!(frozen.left()[0].pid(), victim);
    frozen.thaw();
    for &pid in &held {
        assert!(runs_untraced(pid));
    }
}

#[test]
fn the_caller_s_own_child_and_the_caller_s_tree_are_refused() {
    let mut child = Command::new("sleep").arg("1000").spawn().unwrap();
    let e = tree::check_root(child.id() as i32).unwrap_err();
    assert_eq!(e.code(), "ECHILDTARGET", "{e}");
    child.kill().unwrap();
    child.wait().unwrap();
    let me = std::process::id() as i32;
    assert_eq!(tree::check_root(me).unwrap_err().code(), "ESELF");
}

#[test]
fn a_tree_that_forks_all_the_time_is_frozen_whole() {
    // The root forks a short-lived child again and again: whatever it has
    // when frozen, the frozen set is the whole tree, and it stays so.
    let t = Tree::start("echo $$; while :; do sleep 0.001 & wait; done");
    for _ in 0..20 {
        let frozen = FrozenTree::freeze(t.root).unwrap();
        let held: BTreeSet<i32> = frozen.processes().iter().map(|p| p.member.pid).collect();
        let (members, left) = tree::list(t.root).unwrap();
        assert_eq!(held, members.iter().map(|m| m.pid).collect::<BTreeSet<_>>());
        for l in &left {
            assert!(!held.contains(&l.pid()));
        }
        frozen.thaw();
    }
    assert!(runs_untraced(t.root));
}
