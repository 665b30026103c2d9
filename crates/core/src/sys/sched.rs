//! The calling thread's scheduling policy, by the kernel's own calls.
//!
//! Raw system calls rather than libc's wrappers: musl's `sched_getscheduler`,
//! `sched_getparam` and `sched_setscheduler` are stubs that fail with ENOSYS
//! (POSIX describes them per process, Linux implements them per thread, and musl
//! refuses to pretend), so on the musl packages the freeze's real-time raise
//! would silently never happen. The kernel's `struct sched_param` is one `int`.

use std::io;

pub use libc::{SCHED_BATCH, SCHED_FIFO, SCHED_IDLE, SCHED_OTHER, SCHED_RESET_ON_FORK};

/// The kernel's `struct sched_param` (include/uapi/linux/sched/types.h).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Param {
    pub priority: libc::c_int,
}

/// The calling thread's policy (with SCHED_RESET_ON_FORK or-ed in when set).
pub fn get_scheduler() -> io::Result<libc::c_int> {
    // SAFETY: tid 0 is the calling thread; no pointer.
    let r = unsafe { libc::syscall(libc::SYS_sched_getscheduler, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as libc::c_int)
}

/// The calling thread's scheduling parameters.
pub fn get_param() -> io::Result<Param> {
    let mut param = Param::default();
    // SAFETY: tid 0 is the calling thread; `param` is a valid, writable
    // `struct sched_param` for the duration of the call.
    let r = unsafe { libc::syscall(libc::SYS_sched_getparam, 0, &mut param as *mut Param) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(param)
}

/// Sets the calling thread's policy (SCHED_RESET_ON_FORK may be or-ed in).
pub fn set_scheduler(policy: libc::c_int, param: Param) -> io::Result<()> {
    // SAFETY: tid 0 is the calling thread; `param` is a valid `struct
    // sched_param` the kernel only reads.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            0,
            policy,
            &param as *const Param,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_calling_threads_policy() {
        let policy = get_scheduler().unwrap();
        let param = get_param().unwrap();
        assert!(matches!(
            policy & !SCHED_RESET_ON_FORK,
            SCHED_OTHER | SCHED_BATCH | SCHED_IDLE | SCHED_FIFO | libc::SCHED_RR
        ));
        if policy & !SCHED_RESET_ON_FORK == SCHED_OTHER {
            assert_eq!(param.priority, 0);
        }
        // Setting what is already set is always allowed.
        set_scheduler(policy, param).unwrap();
        assert_eq!(get_scheduler().unwrap(), policy);
    }
}
