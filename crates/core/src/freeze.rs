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
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
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
    signal: Option<Signal>,
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
            for tid in new {
                seen.insert(tid);
                if frozen.seize(tid)? {
                    seized.push(tid);
                }
            }
            for tid in seized {
                match wait_for_stop(tid)? {
                    Some(signal) => frozen.held.push(Held { tid, signal }),
                    None if tid == pid => return Err(Error::TargetExited { pid }),
                    None => {} // the thread exited before it stopped
                }
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
        self.detach_all();
        let now = Instant::now();
        FreezeTimes {
            freezing: self.stopped - self.started,
            frozen: now - self.stopped,
            stopped_window: now - self.started,
        }
    }

    fn detach_all(&mut self) {
        if self.thawed {
            return;
        }
        self.thawed = true;
        for h in &self.held {
            // ESRCH: the thread died while stopped (SIGKILL still works on a
            // traced thread); nothing is left to thaw.
            let _ = ptrace::detach(Pid::from_raw(h.tid), h.signal);
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// Waits until a seized, interrupted thread stops. Returns the signal to hand
/// back at detach (`Some(None)` for none), or `None` if the thread exited.
fn wait_for_stop(tid: i32) -> Result<Option<Option<Signal>>> {
    loop {
        match waitpid(Pid::from_raw(tid), Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::PtraceEvent(_, _, PTRACE_EVENT_STOP)) => return Ok(Some(None)),
            // A signal arrived before our interrupt: the thread stopped to deliver
            // it. It is stopped all the same; the signal goes back at detach.
            Ok(WaitStatus::Stopped(_, sig)) => return Ok(Some(Some(sig))),
            Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..)) => return Ok(None),
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD) => return Ok(None),
            Err(e) => return Err(Error::sys(format!("waitpid of thread {tid}"), e)),
        }
    }
}
