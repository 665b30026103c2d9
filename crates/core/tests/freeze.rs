//! Freezing and thawing real processes: every thread stops, and after thaw the
//! process is exactly as it was (running or job-stopped, untraced, no signal lost).

use std::process::{Child, Command, Stdio};

use predump_core::freeze::Frozen;
use predump_core::proc;
use predump_core::sys::sched;

/// A child killed and reaped when the test ends, pass or fail.
struct Target(Child);

impl Target {
    fn spawn(cmd: &str) -> Target {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // The command says it is ready by printing a line.
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        Target(child)
    }
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (bounded, by re-reading /proc) until a thread shows `want`: a detached
/// thread passes through R on its way back to its own sleep or stop.
fn settles_to(pid: i32, tid: i32, want: char) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if state(pid, tid) == want {
            return true;
        }
        std::thread::yield_now();
    }
    false
}

fn state(pid: i32, tid: i32) -> char {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
    proc::parse_stat(&text).unwrap().state
}

#[test]
fn every_thread_stops_and_runs_again() {
    // `exec` so the pid is the sleeping program itself. (Many threads are covered
    // by the end-to-end tests with the workload.)
    let t = Target::spawn("echo ready; exec sleep 100");
    let frozen = Frozen::freeze(t.pid()).unwrap();
    let tids: Vec<i32> = frozen.tids().collect();
    assert_eq!(tids, proc::tasks(t.pid()).unwrap());
    for &tid in &tids {
        assert_eq!(
            state(t.pid(), tid),
            't',
            "thread {tid} is in a tracing stop"
        );
        assert_eq!(
            proc::tracer_pid(t.pid(), tid).unwrap(),
            nix::unistd::gettid().as_raw()
        );
    }
    let times = frozen.thaw();
    assert!(times.stopped_window >= times.freezing);
    for &tid in &tids {
        assert_eq!(proc::tracer_pid(t.pid(), tid).unwrap(), 0);
        assert!(settles_to(t.pid(), tid, 'S'), "thread {tid} sleeps again");
    }
}

#[test]
fn a_job_stopped_process_stays_stopped() {
    let t = Target::spawn("echo ready; exec sleep 100");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(t.pid()),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    // SIGSTOP is asynchronous: wait (bounded) until the kernel shows the stop.
    assert!(
        settles_to(t.pid(), t.pid(), 'T'),
        "the process did not stop"
    );
    let frozen = Frozen::freeze(t.pid()).unwrap();
    drop(frozen);
    assert!(
        settles_to(t.pid(), t.pid(), 'T'),
        "job-stopped again after thaw"
    );
    assert_eq!(proc::tracer_pid(t.pid(), t.pid()).unwrap(), 0);
}

#[test]
fn a_signal_arriving_while_frozen_is_delivered_after_thaw() {
    // The shell prints "got" when SIGUSR1 arrives.
    let mut t =
        Target::spawn("trap 'echo got; exit 0' USR1; echo ready; while :; do sleep 0.01; done");
    let frozen = Frozen::freeze(t.pid()).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(t.pid()),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    frozen.thaw();
    let mut rest = String::new();
    std::io::Read::read_to_string(t.0.stdout.as_mut().unwrap(), &mut rest).unwrap();
    assert_eq!(rest.trim(), "got");
}

#[test]
fn a_missing_process_is_no_such_process() {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id() as i32;
    child.wait().unwrap();
    let err = Frozen::freeze(pid).unwrap_err();
    assert_eq!(err.code(), "ESRCH", "{err}");
}

#[test]
fn a_traced_process_is_refused_with_its_tracer() {
    let t = Target::spawn("echo ready; exec sleep 100");
    // Another tracer: a thread of ours that seizes the target first.
    let pid = t.pid();
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        nix::sys::ptrace::seize(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::ptrace::Options::empty(),
        )
        .unwrap();
        tx.send(()).unwrap();
        done_rx.recv().unwrap();
        // Detaching a running (not stopped) seized tracee needs it stopped first;
        // exiting the thread is not enough, so interrupt, wait and detach.
        nix::sys::ptrace::interrupt(nix::unistd::Pid::from_raw(pid)).unwrap();
        nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::__WALL),
        )
        .unwrap();
        nix::sys::ptrace::detach(nix::unistd::Pid::from_raw(pid), None).unwrap();
    });
    rx.recv().unwrap();
    let err = Frozen::freeze(pid).unwrap_err();
    done_tx.send(()).unwrap();
    holder.join().unwrap();
    assert_eq!(err.code(), "ETRACED", "{err}");
    assert!(err.to_string().contains("already traced"), "{err}");
}

/// The tracer runs at real-time priority only while it interrupts and detaches
/// the target's threads: never left raised, whatever it was before.
#[test]
fn the_tracer_priority_is_back_after_freeze_and_thaw() {
    fn policy() -> i32 {
        sched::get_scheduler().unwrap()
    }
    let t = Target::spawn("echo ready; exec sleep 100");
    assert_eq!(policy(), libc::SCHED_OTHER);
    let frozen = Frozen::freeze(t.pid()).unwrap();
    assert_eq!(policy(), libc::SCHED_OTHER, "while frozen");
    frozen.thaw();
    assert_eq!(policy(), libc::SCHED_OTHER, "after thaw");
    let frozen = Frozen::freeze(t.pid()).unwrap();
    drop(frozen);
    assert_eq!(policy(), libc::SCHED_OTHER, "after a thaw by drop");
}

/// A tracer that already runs real-time (under chrt) keeps its own policy.
#[test]
fn a_real_time_caller_keeps_its_own_priority() {
    fn get() -> (i32, i32) {
        (
            sched::get_scheduler().unwrap(),
            sched::get_param().unwrap().priority,
        )
    }
    fn set(policy: i32, priority: i32) -> bool {
        sched::set_scheduler(policy, sched::Param { priority }).is_ok()
    }
    if !set(libc::SCHED_RR, 2) {
        eprintln!("real-time priority not allowed here: test skipped");
        return;
    }
    let t = Target::spawn("echo ready; exec sleep 100");
    let frozen = Frozen::freeze(t.pid()).unwrap();
    let during = get();
    frozen.thaw();
    let after = get();
    assert!(set(libc::SCHED_OTHER, 0));
    assert_eq!(during, (libc::SCHED_RR, 2));
    assert_eq!(after, (libc::SCHED_RR, 2));
}
