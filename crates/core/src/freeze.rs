//! Freezing a process: PTRACE_SEIZE + PTRACE_INTERRUPT on every thread, and
//! thawing by PTRACE_DETACH.
//!
//! ptrace over SIGSTOP or the freezer cgroup because a tracer that dies (even by
//! SIGKILL) detaches its tracees and they run on: a crash of predump can never
//! leave the target frozen. All ptrace requests must come from the thread that
//! seized, so `Frozen` is neither `Send` nor `Sync`.

use std::collections::HashSet;
use std::io;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::ptrace;
use nix::unistd::Pid;

use crate::{proc, Error, Result};

/// `PTRACE_EVENT_STOP` (include/uapi/linux/ptrace.h): the stop that
/// PTRACE_INTERRUPT and group-stops of a seized thread report.
const PTRACE_EVENT_STOP: i32 = 128;

/// A thread we hold stopped, and the signal its stop intercepted (if any), to be
/// handed back at detach so the process never loses a signal because of us.
#[derive(Debug, Clone, Copy)]
struct Held {
    tid: i32,
    /// A raw signal number: real-time signals have no name in nix's enum.
    signal: i32,
}

/// Every thread of a process, stopped under ptrace. Dropping it thaws.
#[derive(Debug)]
pub struct Frozen {
    pid: i32,
    held: Vec<Held>,
    started: Instant,
    stopped: Instant,
    thawed: bool,
    // ptrace requests are only valid from the seizing thread.
    _not_send: PhantomData<*const ()>,
}

/// How long freezing and being frozen took.
#[derive(Debug, Clone, Copy, Default)]
pub struct FreezeTimes {
    /// From the first PTRACE_SEIZE to the last thread stopped (CRIU's freezing_time).
    pub freezing: Duration,
    /// From the last thread stopped to the last detach (CRIU's frozen_time).
    pub frozen: Duration,
    /// From the first thread stopped to the last thread running again: the whole
    /// time any thread of the target was held.
    pub stopped_window: Duration,
}

impl Frozen {
    /// Stops every thread of `pid`. Threads created while we freeze are caught by
    /// re-reading /proc/PID/task until it shows no thread we do not hold: a
    /// stopped thread cannot clone, so this ends.
    pub fn freeze(pid: i32) -> Result<Frozen> {
        let _urgent = Urgent::raise();
        let started = Instant::now();
        let mut frozen = Frozen {
            pid,
            held: Vec::new(),
            started,
            stopped: started,
            thawed: false,
            _not_send: PhantomData,
        };
        let mut seen: HashSet<i32> = HashSet::new();
        loop {
            let tids = proc::tasks(pid)?;
            let new: Vec<i32> = tids.into_iter().filter(|t| !seen.contains(t)).collect();
            if new.is_empty() {
                break;
            }
            let mut seized = Vec::with_capacity(new.len());
            let mut failed = None;
            for tid in new {
                seen.insert(tid);
                match frozen.seize(tid) {
                    Ok(true) => seized.push(tid),
                    Ok(false) => {}
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            // Every thread seized is waited for and held, even after a failure,
            // so that dropping `frozen` detaches it: none is left traced.
            for tid in seized {
                match wait_for_stop(tid) {
                    Ok(Some(signal)) => frozen.held.push(Held { tid, signal }),
                    Ok(None) if tid == pid => {
                        failed.get_or_insert(Error::TargetExited { pid });
                    }
                    Ok(None) => {} // the thread exited before it stopped
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
        }
        if frozen.held.is_empty() {
            return Err(Error::NoSuchProcess { pid });
        }
        frozen.stopped = Instant::now();
        Ok(frozen)
    }

    /// Seizes and interrupts one thread. Ok(false): the thread is already gone.
    fn seize(&mut self, tid: i32) -> Result<bool> {
        let pid = self.pid;
        match ptrace::seize(Pid::from_raw(tid), ptrace::Options::empty()) {
            Ok(()) => {}
            Err(Errno::ESRCH) if tid != pid => return Ok(false),
            Err(Errno::ESRCH) => return Err(Error::NoSuchProcess { pid }),
            Err(Errno::EPERM) => {
                // Tell "someone else traces it" apart from "you may not".
                if let Ok(tracer) = proc::tracer_pid(pid, tid) {
                    if tracer != 0 {
                        return Err(Error::AlreadyTraced { pid, tid, tracer });
                    }
                }
                return Err(Error::Permission {
                    pid,
                    action: "trace",
                    source: io::Error::from(Errno::EPERM),
                });
            }
            Err(e) => return Err(Error::sys(format!("PTRACE_SEIZE of thread {tid}"), e)),
        }
        match ptrace::interrupt(Pid::from_raw(tid)) {
            Ok(()) => Ok(true),
            // Seized but gone already: the wait will reap the exit.
            Err(Errno::ESRCH) => Ok(true),
            Err(e) => Err(Error::sys(format!("PTRACE_INTERRUPT of thread {tid}"), e)),
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The ids of the threads held stopped.
    pub fn tids(&self) -> impl Iterator<Item = i32> + '_ {
        self.held.iter().map(|h| h.tid)
    }

    pub fn freezing_time(&self) -> Duration {
        self.stopped - self.started
    }

    /// Lets every thread run again, handing back intercepted signals.
    pub fn thaw(mut self) -> FreezeTimes {
        let now = self.detach_all().unwrap_or_else(Instant::now);
        FreezeTimes {
            freezing: self.stopped - self.started,
            frozen: now - self.stopped,
            stopped_window: now - self.started,
        }
    }

    /// Leaves the process job-stopped (as by SIGSTOP) and untraced: SIGSTOP is
    /// queued while every thread is still held, so each one, resuming inside the
    /// kernel's signal loop, enters the group stop before any user code runs.
    pub fn thaw_stopped(self) -> FreezeTimes {
        // SAFETY: kill with a pid and a signal number, no pointer.
        unsafe { libc::kill(self.pid, libc::SIGSTOP) };
        self.thaw()
    }

    /// Detaches every thread; returns when the last one was let go (None if
    /// that happened before).
    fn detach_all(&mut self) -> Option<Instant> {
        if self.thawed {
            return None;
        }
        self.thawed = true;
        let _urgent = Urgent::raise();
        for h in &self.held {
            // ESRCH: the thread died while stopped (SIGKILL still works on a
            // traced thread); nothing is left to thaw.
            // SAFETY: PTRACE_DETACH takes a tid and a signal number, no pointer.
            let r =
                unsafe { libc::ptrace(libc::PTRACE_DETACH, h.tid, 0, h.signal as libc::c_long) };
            if r == -1 && Errno::last() == Errno::ESRCH {
                // Killed while we held it: a traced thread's exit is reported to
                // its tracer first, and its parent hears of it only once we reap.
                reap(h.tid);
            }
        }
        // Before the guard drops: back at normal priority, the tracer is
        // preempted at once by the threads it just let go.
        Some(Instant::now())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// The calling thread at real-time priority (SCHED_FIFO 1) while this lives,
/// where allowed (CAP_SYS_NICE or RLIMIT_RTPRIO), for the two moments the
/// target's threads wake while the tracer still has work: interrupting them one
/// after another, and detaching them. Each woken thread otherwise preempts the
/// tracer (after a scan its time slice is spent), and on a machine with fewer
/// CPUs than busy threads the tracer waits its turn with the rest still stopped:
/// 9 detaches of a target with 8 busy threads on 2 vCPUs took 2.7–4.7 ms instead
/// of 50 µs, in 5 of 6 runs. The scan's threads hold it too (scan.rs: pure
/// work while the target is stopped). Not held during injected calls: the
/// tracer waits for the target there, and a real-time tracer spinning on a busy
/// CPU would only delay it. PREDUMP_NO_REALTIME=1 turns it off.
pub(crate) struct Urgent {
    previous: Option<(libc::c_int, libc::sched_param)>,
}

impl Urgent {
    pub(crate) fn raise() -> Urgent {
        Self::raise_with(libc::SCHED_RESET_ON_FORK)
    }

    /// `raise`, and threads the caller starts meanwhile start real-time too
    /// (the scan's helpers: they need a CPU at once); they must end before it drops.
    pub(crate) fn raise_inherited() -> Urgent {
        Self::raise_with(0)
    }

    fn raise_with(reset_on_fork: libc::c_int) -> Urgent {
        let mut urgent = Urgent { previous: None };
        if std::env::var_os("PREDUMP_NO_REALTIME").is_some_and(|v| v != "0") {
            return urgent;
        }
        let mut param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; no pointer.
        let policy = unsafe { libc::sched_getscheduler(0) };
        // SAFETY: pid 0 is the calling thread; `param` is a valid out pointer.
        if policy < 0 || unsafe { libc::sched_getparam(0, &mut param) } != 0 {
            return urgent;
        }
        // Only from the normal policies: a real-time or deadline caller (chrt)
        // chose its own, and a deadline one could not be put back by
        // sched_setscheduler.
        if !matches!(
            policy & !libc::SCHED_RESET_ON_FORK,
            libc::SCHED_OTHER | libc::SCHED_BATCH | libc::SCHED_IDLE
        ) {
            return urgent;
        }
        let fifo = libc::sched_param { sched_priority: 1 };
        // SAFETY: pid 0 is the calling thread; `fifo` is a valid sched_param.
        // With SCHED_RESET_ON_FORK nothing we spawn meanwhile inherits it.
        let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO | reset_on_fork, &fifo) };
        if r == 0 {
            urgent.previous = Some((policy, param));
        }
        urgent
    }
}

impl Drop for Urgent {
    fn drop(&mut self) {
        if let Some((policy, param)) = self.previous.take() {
            // SAFETY: pid 0 is the calling thread; `param` is the sched_param
            // read for it. Lowering one's own priority is always allowed.
            unsafe { libc::sched_setscheduler(0, policy, &param) };
        }
    }
}

/// Waits until a seized, interrupted thread stops. Returns the signal to hand
/// back at detach (0 for none), or `None` if the thread exited. Raw waitpid:
/// a stop at a real-time signal has no name in nix's `Signal`.
fn wait_for_stop(tid: i32) -> Result<Option<i32>> {
    loop {
        let mut status = 0;
        // SAFETY: waits for one tid; `status` is a valid out pointer.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        if r == -1 {
            match Errno::last() {
                Errno::EINTR => continue,
                Errno::ECHILD => return Ok(None),
                e => return Err(Error::sys(format!("waitpid of thread {tid}"), e)),
            }
        }
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            return Ok(None);
        }
        if libc::WIFSTOPPED(status) {
            // PTRACE_EVENT_STOP: our interrupt, or a group stop of a seized thread.
            if status >> 16 == PTRACE_EVENT_STOP {
                return Ok(Some(0));
            }
            // A signal arrived before our interrupt: the thread stopped to deliver
            // it. It is stopped all the same; the signal goes back at detach.
            return Ok(Some(libc::WSTOPSIG(status)));
        }
    }
}

/// Collects the exit of a thread that died while traced.
fn reap(tid: i32) {
    let mut status = 0;
    // SAFETY: waits for one tid; `status` is a valid out pointer. The thread is
    // dying (SIGKILL is the only way out of a ptrace stop), so this returns.
    while unsafe { libc::waitpid(tid, &mut status, libc::__WALL) } == -1
        && Errno::last() == Errno::EINTR
    {}
}
