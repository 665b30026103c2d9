//! Freezing a process: PTRACE_SEIZE + PTRACE_INTERRUPT on every thread, and
//! thawing by PTRACE_DETACH.
//!
//! ptrace over SIGSTOP or the freezer cgroup because a tracer that dies (even by
//! SIGKILL) detaches its tracees and they run on: a crash of predump can never
//! leave the target frozen. All ptrace requests must come from the thread that
//! seized, so `Frozen` is neither `Send` nor `Sync`.

use std::collections::HashSet;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use crate::sys::ptrace::{self, PTRACE_EVENT_STOP};
use crate::sys::sched;
use crate::{proc, Error, Result};

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
    /// Seized and interrupted, not yet seen stopped (`start` without `finish`).
    pending: Vec<i32>,
    /// Every thread ever seized.
    seen: HashSet<i32>,
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
        let mut frozen = Frozen::start(pid)?;
        frozen.finish()?;
        Ok(frozen)
    }

    /// The first half of `freeze`: seizes and interrupts every thread listed
    /// now, without waiting for them to stop, so that the threads of many
    /// processes (a tree) stop at once instead of one process after the other:
    /// on a busy machine each wait is a scheduling delay. `finish` completes
    /// the freeze; dropping the result waits for the threads, then thaws them.
    pub fn start(pid: i32) -> Result<Frozen> {
        let now = Instant::now();
        let mut frozen = Frozen {
            pid,
            held: Vec::new(),
            pending: Vec::new(),
            seen: HashSet::new(),
            started: now,
            stopped: now,
            thawed: false,
            _not_send: PhantomData,
        };
        if let Err(e) = frozen.seize_new() {
            // Every thread seized is waited for and held, so that dropping
            // `frozen` detaches it: none is left traced.
            frozen.settle();
            return Err(e);
        }
        Ok(frozen)
    }

    /// Waits until every thread `start` interrupted is stopped, and catches the
    /// threads created meanwhile.
    pub fn finish(&mut self) -> Result<()> {
        loop {
            if let Some(e) = self.settle() {
                return Err(e);
            }
            match self.seize_new() {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    self.settle();
                    return Err(e);
                }
            }
        }
        if self.held.is_empty() {
            return Err(Error::NoSuchProcess { pid: self.pid });
        }
        self.stopped = Instant::now();
        Ok(())
    }

    /// Seizes the threads listed now that were not seized before; how many.
    /// After an error the threads seized so far are pending.
    fn seize_new(&mut self) -> Result<usize> {
        let tids = proc::tasks(self.pid)?;
        let mut n = 0;
        for tid in tids {
            if !self.seen.insert(tid) {
                continue;
            }
            if self.seize(tid)? {
                self.pending.push(tid);
                n += 1;
            }
        }
        Ok(n)
    }

    /// Waits for every pending thread; the first error, if any (the process
    /// exited, or waitpid failed). Threads that stopped are held either way.
    fn settle(&mut self) -> Option<Error> {
        let mut failed = None;
        for tid in std::mem::take(&mut self.pending) {
            match wait_for_stop(tid) {
                Ok(Some(signal)) => self.held.push(Held { tid, signal }),
                Ok(None) if tid == self.pid => {
                    failed.get_or_insert(Error::TargetExited { pid: self.pid });
                }
                Ok(None) => {} // the thread exited before it stopped
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        failed
    }

    /// Seizes and interrupts one thread. Ok(false): the thread is already gone.
    fn seize(&mut self, tid: i32) -> Result<bool> {
        let pid = self.pid;
        match ptrace::seize(tid).map_err(|e| (e.raw_os_error(), e)) {
            Ok(()) => {}
            Err((Some(libc::ESRCH), _)) if tid != pid => return Ok(false),
            Err((Some(libc::ESRCH), _)) => return Err(Error::NoSuchProcess { pid }),
            Err((Some(libc::EPERM), e)) => {
                // Tell "someone else traces it" apart from "you may not".
                if let Ok(tracer) = proc::tracer_pid(pid, tid) {
                    if tracer != 0 {
                        return Err(Error::AlreadyTraced { pid, tid, tracer });
                    }
                }
                return Err(Error::Permission {
                    pid,
                    action: "trace",
                    source: e,
                });
            }
            Err((_, e)) => return Err(Error::sys(format!("PTRACE_SEIZE of thread {tid}"), e)),
        }
        match ptrace::interrupt(tid) {
            Ok(()) => Ok(true),
            // Seized but gone already: the wait will reap the exit.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(true),
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
    /// But that loop takes the lowest-numbered pending signal first: a caught
    /// signal below SIGSTOP (SIGUSR1, …) pending at the detach gets its frame
    /// written onto the thread's stack on the way into the stop (its handler runs
    /// after SIGCONT), so the live stack then differs from what was copied
    /// (docs/TREES.md, the PostgreSQL trial). A process already job-stopped when
    /// frozen keeps its signals pending. Masking them meanwhile would avoid it, but
    /// a tracer killed in that window would leave them blocked.
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
        // Threads interrupted but not waited for (a `start` never finished)
        // can only be detached once stopped.
        self.settle();
        self.thawed = true;
        let _urgent = Urgent::raise();
        for h in &self.held {
            // ESRCH: the thread died while stopped (SIGKILL still works on a
            // traced thread); nothing is left to thaw.
            if ptrace::detach(h.tid, h.signal).is_err_and(|e| e.raw_os_error() == Some(libc::ESRCH))
            {
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
    previous: Option<(libc::c_int, sched::Param)>,
}

impl Urgent {
    pub(crate) fn raise() -> Urgent {
        Self::raise_with(sched::SCHED_RESET_ON_FORK)
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
        let (Ok(policy), Ok(param)) = (sched::get_scheduler(), sched::get_param()) else {
            return urgent;
        };
        // Only from the normal policies: a real-time or deadline caller (chrt)
        // chose its own, and a deadline one could not be put back by
        // sched_setscheduler.
        if !matches!(
            policy & !sched::SCHED_RESET_ON_FORK,
            sched::SCHED_OTHER | sched::SCHED_BATCH | sched::SCHED_IDLE
        ) {
            return urgent;
        }
        // With SCHED_RESET_ON_FORK nothing we spawn meanwhile inherits it.
        let fifo = sched::Param { priority: 1 };
        if sched::set_scheduler(sched::SCHED_FIFO | reset_on_fork, fifo).is_ok() {
            urgent.previous = Some((policy, param));
        }
        urgent
    }
}

impl Drop for Urgent {
    fn drop(&mut self) {
        if let Some((policy, param)) = self.previous.take() {
            // Lowering one's own priority is always allowed.
            let _ = sched::set_scheduler(policy, param);
        }
    }
}

/// Waits until a seized, interrupted thread stops. Returns the signal to hand
/// back at detach (0 for none), or `None` if the thread exited. Raw waitpid:
/// a stop at a real-time signal has no name in nix's `Signal`.
fn wait_for_stop(tid: i32) -> Result<Option<i32>> {
    loop {
        let status = match ptrace::waitpid(tid, 0) {
            Ok(Some(status)) => status,
            Ok(None) => continue,
            Err(e) => match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ECHILD) => return Ok(None),
                _ => return Err(Error::sys(format!("waitpid of thread {tid}"), e)),
            },
        };
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
    // The thread is dying (SIGKILL is the only way out of a ptrace stop), so
    // this returns.
    while ptrace::waitpid(tid, 0).is_err_and(|e| e.raw_os_error() == Some(libc::EINTR)) {}
}
