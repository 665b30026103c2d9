//! Running the injected thread and waiting for its stops: resuming it,
//! syscall and event stops, the lifeline, time-outs, and the target dying
//! under us.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::{arch, reap, thread_dead, Injector, Resume, Stop, SPINS};
use crate::sys::ptrace as pt;
use crate::{Error, Result};

impl<'f> Injector<'f> {
    pub(super) fn resume(&mut self, how: Resume) -> Result<()> {
        self.at_syscall_stop = false;
        // Signal 0: a signal-delivery stop we resume from is discarded (one we
        // caught and will send again).
        let r = match how {
            Resume::Cont => pt::cont(self.tid, 0),
            Resume::Syscall => pt::syscall(self.tid, 0),
        };
        r.map_err(|e| self.os("resuming the thread", e))
    }

    /// Waits for the next syscall stop of a call run with PTRACE_SYSCALL; takes
    /// other stops on the way. None: the deadline passed.
    pub(super) fn wait_syscall(
        &mut self,
        what: &str,
        deadline: Instant,
    ) -> Result<Option<arch::Regs>> {
        loop {
            match self.wait_stop(deadline)? {
                None => return Ok(None),
                Some(Stop::Gone) => return Err(self.exited()),
                Some(Stop::Syscall) => {
                    self.at_syscall_stop = true;
                    let regs = arch::get_regs(self.tid)
                        .map_err(|e| self.os("reading the registers", e))?;
                    return Ok(Some(regs));
                }
                // A group stop or an interrupt we did not ask for: a seized thread
                // resumes from it; the detach at thaw re-enters a group stop that
                // is still in effect.
                Some(Stop::Event) => self.resume(Resume::Syscall)?,
                Some(Stop::Signal(sig)) => {
                    self.classify(sig, what)?;
                    self.resume(Resume::Syscall)?;
                }
            }
        }
    }

    /// A call past its deadline: interrupt it, and at its exit stop make sure
    /// leaving the stop does not restart it.
    pub(super) fn timed_out(&mut self, what: &str) -> Error {
        let out = (|| {
            pt::interrupt(self.tid).map_err(|e| self.os("PTRACE_INTERRUPT", e))?;
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match self.wait_stop(deadline)? {
                    None | Some(Stop::Gone) => return Err(self.exited()),
                    Some(Stop::Syscall) | Some(Stop::Event) => break,
                    Some(Stop::Signal(sig)) => {
                        self.classify(sig, what)?;
                        self.resume(Resume::Cont)?;
                    }
                }
            }
            let mut regs =
                arch::get_regs(self.tid).map_err(|e| self.os("reading the registers", e))?;
            arch::no_restart(&mut regs);
            arch::set_regs(self.tid, &regs).map_err(|e| self.os("setting the registers", e))?;
            self.at_syscall_stop = true;
            Ok(())
        })();
        if let Err(e) = out {
            return e;
        }
        Error::sys(
            format!(
                "injected {what} in process {} (thread {}) did not return within {:?}; it was interrupted",
                self.pid, self.tid, self.timeout
            ),
            io::Error::from_raw_os_error(libc::ETIMEDOUT),
        )
    }

    /// Waits until the batch's byte arrives on the lifeline (true) or the
    /// timeout passes (false); takes the thread's stops on the way.
    pub(super) fn wait_lifeline(&mut self, what: &str) -> Result<bool> {
        let deadline = Instant::now() + self.timeout;
        let fd = self.lifeline.as_ref().expect("lifeline").0.as_raw_fd();
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            let wait = (deadline - now).min(Duration::from_millis(2));
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the call.
            let r = unsafe { libc::poll(&mut pfd, 1, wait.as_millis().max(1) as i32) };
            if r > 0 {
                let mut byte = 0u8;
                // SAFETY: reads at most one byte into `byte`.
                let n = unsafe {
                    libc::recv(
                        fd,
                        &mut byte as *mut u8 as *mut libc::c_void,
                        1,
                        libc::MSG_DONTWAIT,
                    )
                };
                if n == 1 {
                    return Ok(true);
                }
            }
            // Stops do not wake poll(): look for them.
            match self.wait_stop(Instant::now())? {
                None => {}
                Some(Stop::Gone) => return Err(self.exited()),
                Some(Stop::Syscall) | Some(Stop::Event) => self.resume(Resume::Cont)?,
                Some(Stop::Signal(sig)) => {
                    self.classify(sig, what)?;
                    self.resume(Resume::Cont)?;
                }
            }
        }
    }

    /// Interrupts the thread (in our wait, or wherever it is in the stub) into an
    /// interrupt stop.
    pub(super) fn stop_in_stub(&mut self, what: &str) -> Result<()> {
        pt::interrupt(self.tid).map_err(|e| self.os("PTRACE_INTERRUPT", e))?;
        self.wait_event(what)
    }

    /// Waits for an interrupt stop (after PTRACE_INTERRUPT), taking signal stops
    /// on the way.
    pub(super) fn wait_event(&mut self, what: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.wait_stop(deadline)? {
                None => {
                    return Err(Error::sys(
                        format!("thread {} of process {} does not stop", self.tid, self.pid),
                        io::Error::from_raw_os_error(libc::ETIMEDOUT),
                    ))
                }
                Some(Stop::Gone) => return Err(self.exited()),
                Some(Stop::Event) => {
                    self.at_syscall_stop = false;
                    return Ok(());
                }
                // Resumed with PTRACE_CONT: no syscall stop is expected; go on.
                Some(Stop::Syscall) => self.resume(Resume::Cont)?,
                Some(Stop::Signal(sig)) => {
                    self.classify(sig, what)?;
                    self.resume(Resume::Cont)?;
                }
            }
        }
    }

    /// A signal-delivery stop during our code: a fault of our code (an error),
    /// or someone else's signal, kept to be sent again at restore.
    pub(super) fn classify(&mut self, sig: i32, what: &str) -> Result<()> {
        let info = nix::sys::ptrace::getsiginfo(Pid::from_raw(self.tid))
            .map_err(|e| self.os("PTRACE_GETSIGINFO", e.into()))?;
        let regs = arch::get_regs(self.tid).map_err(|e| self.os("reading the registers", e))?;
        let pc = arch::pc(&regs);
        let code = info.si_code;
        // si_code > 0: raised by the kernel, and inside our stub: caused by it
        // (or seccomp's SIGSYS for our call). Not sent again: the thread never
        // caused it.
        if code > 0 && (self.stub..self.stub + self.stub_len as u64).contains(&pc) {
            let (errno, why) = if sig == libc::SIGSYS {
                (libc::EPERM, " (a seccomp filter traps this call)")
            } else {
                (libc::EFAULT, "")
            };
            return Err(Error::sys(
                format!(
                    "injected {what} in process {} (thread {}): signal {sig} (si_code {code}) at {pc:#x}{why}",
                    self.pid, self.tid
                ),
                io::Error::from_raw_os_error(errno),
            ));
        }
        self.caught.push((sig, code));
        Ok(())
    }

    /// Waits for the next stop of our thread until `deadline` (None: passed).
    /// Polls with WNOHANG, so that a call that blocks cannot hang us.
    pub(super) fn wait_stop(&mut self, deadline: Instant) -> Result<Option<Stop>> {
        let mut spins = 0;
        let mut nap = Duration::from_micros(5);
        loop {
            let mut status = 0;
            // SAFETY: `status` is a valid place for waitpid's result.
            let r = unsafe { libc::waitpid(self.tid, &mut status, libc::__WALL | libc::WNOHANG) };
            if r == self.tid {
                if libc::WIFSTOPPED(status) {
                    return Ok(Some(if status >> 16 != 0 {
                        Stop::Event
                    } else if libc::WSTOPSIG(status) == libc::SIGTRAP | 0x80 {
                        Stop::Syscall
                    } else {
                        Stop::Signal(libc::WSTOPSIG(status))
                    }));
                }
                if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                    return Ok(Some(Stop::Gone));
                }
                continue; // WIFCONTINUED: not a stop
            }
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::ECHILD) => return Ok(Some(Stop::Gone)),
                    _ => return Err(Error::sys(format!("waitpid of thread {}", self.tid), e)),
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            if spins < SPINS {
                spins += 1;
                std::thread::yield_now();
                continue;
            }
            // A killed thread group leader reports its exit only once every
            // other (traced, stopped) thread is reaped: look at /proc instead.
            if thread_dead(self.pid, self.tid) {
                return Ok(Some(Stop::Gone));
            }
            std::thread::sleep(nap.min(deadline - now));
            nap = (nap * 2).min(Duration::from_millis(1));
        }
    }

    /// The target died under us (SIGKILL: the only way out of a ptrace stop).
    /// Its traced threads stay zombies until their tracer reaps them, and the
    /// leader's exit is not even reported (to us or to its real parent) before
    /// that: reap them all, once, so the parent sees its child die.
    pub(super) fn exited(&mut self) -> Error {
        if !self.gone {
            self.gone = true;
            reap(self.frozen);
        }
        Error::TargetExited { pid: self.pid }
    }
}
