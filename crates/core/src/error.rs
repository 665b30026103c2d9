//! One error type for the whole core, with stable codes that reach JavaScript as
//! `error.code`. Codes are part of the public interface: never renumber or rename.

use std::io;

/// Errors of predump's core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pid names no process (or it is gone before we could attach).
    #[error("no such process: {pid}")]
    NoSuchProcess { pid: i32 },

    /// The id names a thread, not a process.
    #[error("{pid} is a thread of process {tgid}, not a process: pre-dump process {tgid}")]
    NotAProcess { pid: i32, tgid: i32 },

    /// The pid is a kernel thread: it has no user memory and cannot be traced.
    #[error("process {pid} is a kernel thread: it has no user memory to dump")]
    KernelThread { pid: i32 },

    /// The process has exited and waits to be reaped by its parent.
    #[error("process {pid} is a zombie: it has exited and has no memory left")]
    Zombie { pid: i32 },

    /// The caller asked to dump itself: freezing ourselves would deadlock.
    #[error("process {pid} is predump itself: it cannot freeze its own process")]
    SelfTarget { pid: i32 },

    /// The tree to pre-dump holds the calling process: freezing it would
    /// freeze predump itself.
    #[error("the tree of process {root} holds this predump process ({pid}): pre-dump a tree that does not contain the caller")]
    SelfInTree { root: i32, pid: i32 },

    /// The target is a child of the calling process, whose own wait calls would
    /// take the target's ptrace stops.
    #[error("process {pid} is a child of this process: its parent's waitpid (Node's child_process does one) would take the ptrace stops predump waits for; start it through a launcher that exits (double fork), or run the predump CLI")]
    OwnChild { pid: i32 },

    /// ptrace or process_vm_readv was refused. The kernel says only EPERM: why, as far
    /// as the uids, capabilities and Yama tell, is worked out when the message is made
    /// (access.rs), while the target is still there to look at.
    #[error("not permitted to {action} process {pid}: {source}: {}", crate::access::why_refused(*pid))]
    Permission {
        pid: i32,
        action: &'static str,
        #[source]
        source: io::Error,
    },

    /// The process is already traced by another tracer (a debugger, strace, CRIU).
    #[error(
        "process {pid} (thread {tid}) is already traced by pid {tracer}: detach that tracer first"
    )]
    AlreadyTraced { pid: i32, tid: i32, tracer: i32 },

    /// The target exited while we were working on it.
    #[error("process {pid} exited during the pre-dump")]
    TargetExited { pid: i32 },

    /// A system call failed where it should not; `what` names the step.
    #[error("{what} failed: {source}")]
    Sys {
        what: String,
        #[source]
        source: io::Error,
    },

    /// Writing the image failed because the file system is full.
    #[error("no space left while writing {path}")]
    NoSpace { path: String },

    /// A text file of /proc did not parse.
    #[error("cannot parse {file}: {detail}")]
    Parse { file: String, detail: String },

    /// An image file is not what its name says (bad magic, truncated, a
    /// record that does not decode, entries out of order).
    #[error("{file}: {detail}")]
    Image { file: String, detail: String },

    /// Another predump run works on this process's dirty tracking right now:
    /// two runs taking each other's dirty pages would break both chains.
    #[error("another predump is working on process {pid} right now (pre-dump, dump or untrack): wait for it to finish")]
    Busy { pid: i32 },

    /// A page-server peer sent something the protocol does not allow (or is not
    /// a page-server peer at all).
    #[error("page-server protocol: {detail}")]
    Protocol { detail: String },

    /// A page-server connection failed: refused, reset, closed early, timed out.
    #[error("{what}: {source}")]
    Connection {
        what: String,
        #[source]
        source: io::Error,
    },

    /// TLS could not be set up, or the peer's certificate was refused.
    #[error("TLS: {0}")]
    Tls(String),

    /// The caller asked to stop (SIGINT, SIGTERM, an abort handle).
    #[error("interrupted")]
    Interrupted,

    /// The caller passed something that cannot work.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl Error {
    /// A stable, machine-readable code (`error.code` in JavaScript).
    pub fn code(&self) -> &'static str {
        match self {
            Error::NoSuchProcess { .. } => "ESRCH",
            Error::NotAProcess { .. } => "ETHREAD",
            Error::KernelThread { .. } => "EKTHREAD",
            Error::Zombie { .. } => "EZOMBIE",
            Error::SelfTarget { .. } | Error::SelfInTree { .. } => "ESELF",
            Error::OwnChild { .. } => "ECHILDTARGET",
            Error::Permission { .. } => "EPERM",
            Error::AlreadyTraced { .. } => "ETRACED",
            Error::TargetExited { .. } => "EEXITED",
            Error::Sys { .. } => "ESYS",
            Error::NoSpace { .. } => "ENOSPC",
            Error::Parse { .. } => "EPARSE",
            Error::Image { .. } => "EIMAGE",
            Error::Busy { .. } => "EBUSY",
            Error::Protocol { .. } => "EPROTO",
            Error::Connection { .. } => "ECONN",
            Error::Tls(_) => "ETLS",
            Error::Interrupted => "EINTERRUPTED",
            Error::InvalidArgument(_) => "EINVAL",
        }
    }

    /// Wraps an I/O error of step `what`.
    pub fn sys(what: impl Into<String>, source: impl Into<io::Error>) -> Self {
        Error::Sys {
            what: what.into(),
            source: source.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
