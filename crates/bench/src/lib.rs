//! predump-bench: what is measured and checked beside a pre-dump, kept out of
//! predump-core (which only pre-dumps): the memory pattern the workload writes
//! and the checker of dumped pages against it (`pattern`: the demo, the tests,
//! the bench), and the bench's reference figures (`reference`: memcpy,
//! process_vm_readv alone, a file write, a TCP send).

pub mod pattern;
pub mod reference;
