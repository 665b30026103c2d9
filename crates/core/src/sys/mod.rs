//! The kernel interfaces predump uses, as safe wrappers: one function per call
//! (or per ioctl), in the manner of rustix. The features (`freeze`, `scan`,
//! `track`, `inject`, `splice`, `probe`) use these; nothing here uses a feature.
//!
//! Each module owns one interface and its ABI (structs, constants, ioctl
//! numbers), so a number is written once: the userfaultfd ABI in [`uffd`],
//! PAGEMAP_SCAN and the pagemap entry bits in [`pagemap`], the ptrace requests
//! and regsets in [`ptrace`], pidfd_open/pidfd_getfd in [`pidfd`], the
//! calling thread's scheduling policy in [`sched`], a file's handle in
//! [`handle`].
//!
//! Errors are `io::Error` (the caller knows which process and which step the
//! call was for, and names them), except [`pidfd`], whose failures already
//! have a meaning of their own (no such process, not permitted).

pub mod handle;
pub mod pagemap;
pub mod pidfd;
pub mod ptrace;
pub mod sched;
pub mod uffd;
