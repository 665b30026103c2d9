//! A process and all its descendants, as `criu pre-dump -t` takes them: found
//! through /proc/PID/task/TID/children and frozen together.
//!
//! Freezing a tree is freezing each process (see `freeze`), parents before their
//! children: once every thread of a process is stopped it cannot fork, so the
//! children its threads list are all it will have until the thaw. Reading them
//! only then, breadth first from the root, catches every child made while the
//! tree was being frozen, and ends (the tree is finite and each process is read
//! once). A descendant that exits meanwhile is no longer part of the tree; a
//! zombie has no memory and is listed, not frozen. Any other failure (a process
//! we may not trace, one already traced) thaws every process frozen so far, by
//! dropping them: no process of the tree is ever left stopped or traced.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::freeze::{Frozen, Urgent};
use crate::{proc, Error, Result};

/// One process of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub pid: i32,
    /// Its parent's pid (the root's parent is outside the tree).
    pub ppid: i32,
    /// Clock ticks after boot: with the pid, names the process across pid reuse.
    pub start_time: u64,
    pub comm: String,
}

impl Member {
    fn of(st: &proc::Stat) -> Member {
        Member {
            pid: st.pid,
            ppid: st.ppid,
            start_time: st.start_time,
            comm: st.comm.clone(),
        }
    }
}

/// Why a process of the tree is not in the pre-dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Left {
    /// It has exited and waits for its parent to reap it: no memory left.
    Zombie(Member),
    /// It exited while the tree was being frozen.
    Exited { pid: i32, ppid: i32 },
}

impl Left {
    pub fn pid(&self) -> i32 {
        match self {
            Left::Zombie(m) => m.pid,
            Left::Exited { pid, .. } => *pid,
        }
    }
}

/// Parses a /proc/PID/task/TID/children file: pids separated by spaces.
pub fn parse_children(text: &str) -> Result<Vec<i32>> {
    text.split_whitespace()
        .map(|w| {
            w.parse().map_err(|_| Error::Parse {
                file: "/proc/PID/task/TID/children".into(),
                detail: format!("bad pid {w:?}"),
            })
        })
        .collect()
}

/// The children of every thread of `pid`, in thread order and then in the
/// order the kernel lists them (creation order), each once. A child belongs
/// to the thread that forked it, so one thread's file is not enough.
pub fn children(pid: i32) -> Result<Vec<i32>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for tid in proc::tasks(pid)? {
        let text = match std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/children")) {
            Ok(t) => t,
            // A thread that exited since the listing has no children left.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && tid != pid => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Err(Error::NoSuchProcess { pid })
            }
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => continue,
            Err(e) => {
                return Err(Error::sys(
                    format!("reading /proc/{pid}/task/{tid}/children"),
                    e,
                ))
            }
        };
        for child in parse_children(&text)? {
            if seen.insert(child) {
                out.push(child);
            }
        }
    }
    Ok(out)
}

/// Checks that `root` can head a pre-dumped tree: `proc::check_target`'s
/// checks, and predump itself is not one of its descendants (it would freeze
/// itself and never thaw).
pub fn check_root(root: i32) -> Result<proc::Stat> {
    let st = proc::check_target(root)?;
    let me = std::process::id() as i32;
    let mut at = me;
    // Our ancestors, up to pid 1 (or a parent outside our pid namespace: 0).
    for _ in 0..4096 {
        let parent = match proc::stat(at) {
            Ok(s) => s.ppid,
            Err(_) => break,
        };
        if parent == root {
            return Err(Error::SelfInTree { root, pid: me });
        }
        if parent <= 1 {
            break;
        }
        at = parent;
    }
    Ok(st)
}

/// The processes of a tree found without freezing it: the root and its
/// descendants in CRIU's order (`TreeOrder`), and the zombies among them.
/// The list may be stale as soon as it is returned; `FrozenTree` is the one
/// to trust.
pub fn list(root: i32) -> Result<(Vec<Member>, Vec<Left>)> {
    let st = proc::stat(root)?;
    let mut members = vec![Member::of(&st)];
    let mut left = Vec::new();
    let mut kids: HashMap<i32, Vec<i32>> = HashMap::new();
    let mut queue = VecDeque::from([root]);
    let mut seen = HashSet::from([root]);
    while let Some(pid) = queue.pop_front() {
        let found = match children(pid) {
            Ok(c) => c,
            Err(Error::NoSuchProcess { .. }) if pid != root => continue,
            Err(e) => return Err(e),
        };
        for child in found {
            if !seen.insert(child) {
                continue;
            }
            match proc::stat(child) {
                Ok(s) if s.is_zombie() => left.push(Left::Zombie(Member::of(&s))),
                Ok(s) => {
                    members.push(Member::of(&s));
                    kids.entry(pid).or_default().push(child);
                    queue.push_back(child);
                }
                Err(Error::NoSuchProcess { .. }) => left.push(Left::Exited {
                    pid: child,
                    ppid: pid,
                }),
                Err(e) => return Err(e),
            }
        }
    }
    let order = pre_order(root, &kids);
    members.sort_by_key(|m| order[&m.pid]);
    Ok((members, left))
}

/// Each pid's place in CRIU's walk of a tree (for_each_pstree_item): the root,
/// then each child's whole subtree in turn, children in the order found.
fn pre_order(root: i32, kids: &HashMap<i32, Vec<i32>>) -> HashMap<i32, usize> {
    let mut order = HashMap::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        order.insert(pid, order.len());
        if let Some(c) = kids.get(&pid) {
            stack.extend(c.iter().rev());
        }
    }
    order
}

/// How long freezing and being frozen took, for the whole tree.
#[derive(Debug, Clone, Copy, Default)]
pub struct TreeFreezeTimes {
    /// From the first PTRACE_SEIZE to the last process stopped.
    pub freezing: Duration,
    /// From the last process stopped to the last detach.
    pub frozen: Duration,
    /// From the first thread stopped to the last thread running again: the
    /// longest any process of the tree was held (all are held together).
    pub stopped_window: Duration,
    pub threads: usize,
}

/// One frozen process of a tree.
#[derive(Debug)]
pub struct FrozenProcess {
    pub member: Member,
    pub frozen: Frozen,
}

/// Every process of a tree, each with all its threads stopped. Dropping it
/// thaws them all.
#[derive(Debug)]
pub struct FrozenTree {
    root: i32,
    /// In CRIU's order: the root first, each subtree after its parent.
    procs: Vec<FrozenProcess>,
    left: Vec<Left>,
    started: Instant,
    stopped: Instant,
}

impl FrozenTree {
    /// Freezes `root` and every descendant (see the module's comment). The
    /// root must be `check_root`-able; a root that exits meanwhile is an error
    /// (`NoSuchProcess` or `TargetExited`), a descendant that does is listed
    /// by `left`.
    pub fn freeze(root: i32) -> Result<FrozenTree> {
        Self::freeze_with(root, |_| {})
    }

    /// `freeze`, calling `each` with every process as soon as its threads are
    /// interrupted (they may still be on their way to the stop; the others may
    /// not be interrupted yet): for progress, and for tests that make a
    /// descendant exit at a known point of the freeze.
    ///
    /// Every thread of the processes listed before the freeze is interrupted
    /// first, and only then waited for: they stop together, in one scheduling
    /// delay rather than one per process (on a busy machine that is the
    /// difference between milliseconds and seconds for a hundred processes).
    /// The tree is then walked from the root through the frozen processes'
    /// children: children made meanwhile are frozen as they are found, and a
    /// listed process that is no longer a descendant (reparented when its
    /// parent exited, or a reused pid) is let go at once.
    pub fn freeze_with(root: i32, mut each: impl FnMut(&Member)) -> Result<FrozenTree> {
        // Real-time for the whole walk (see freeze::Urgent): each process's
        // own raise inside it is then a no-op.
        let _urgent = Urgent::raise();
        let started = Instant::now();
        let (listed, _) = list(root)?;
        let mut tree = FrozenTree {
            root,
            procs: Vec::new(),
            left: Vec::new(),
            started,
            stopped: started,
        };
        // Interrupt them all; on a failure, stop starting others.
        let mut started_procs: Vec<(Member, Frozen)> = Vec::with_capacity(listed.len());
        let mut failed = None;
        for m in listed {
            match Frozen::start(m.pid) {
                Ok(f) => {
                    each(&m);
                    started_procs.push((m, f));
                }
                Err(e) if m.pid == root => {
                    failed = Some(e);
                    break;
                }
                Err(e) => match tree.gone(&m, e) {
                    Ok(()) => {}
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                },
            }
        }
        // Then wait for them all, even after a failure: only stopped threads
        // can be detached (which dropping them does).
        let mut frozen: HashMap<i32, FrozenProcess> = HashMap::new();
        for (m, mut f) in started_procs {
            match f.finish() {
                Ok(()) => {
                    frozen.insert(
                        m.pid,
                        FrozenProcess {
                            member: m,
                            frozen: f,
                        },
                    );
                }
                Err(e) if m.pid == root => {
                    failed.get_or_insert(e);
                }
                Err(e) => {
                    drop(f);
                    if let Err(e) = tree.gone(&m, e) {
                        failed.get_or_insert(e);
                    }
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        let Some(root_proc) = frozen.remove(&root) else {
            return Err(Error::NoSuchProcess { pid: root });
        };
        tree.procs.push(root_proc);
        // The tree as it is now that its processes cannot fork: from the root,
        // through each frozen process's children.
        let mut kids: HashMap<i32, Vec<i32>> = HashMap::new();
        let mut seen = HashSet::from([root]);
        let mut queue = VecDeque::from([root]);
        while let Some(pid) = queue.pop_front() {
            for child in children(pid)? {
                if !seen.insert(child) {
                    continue;
                }
                let is_member = match frozen.remove(&child) {
                    Some(p) => {
                        tree.procs.push(p);
                        true
                    }
                    // Found gone or a zombie while the others froze.
                    None if tree.left.iter().any(|l| l.pid() == child) => false,
                    // Made while the others froze.
                    None => tree.freeze_child(pid, child, &mut each)?,
                };
                if is_member {
                    kids.entry(pid).or_default().push(child);
                    queue.push_back(child);
                }
            }
        }
        // Listed, frozen, but no longer in the tree: let go now (dropped).
        drop(frozen);
        tree.stopped = Instant::now();
        let order = pre_order(root, &kids);
        tree.procs.sort_by_key(|p| order[&p.member.pid]);
        Ok(tree)
    }

    /// A listed descendant could not be frozen because of `e`: if it exited
    /// (or became a zombie) meanwhile it is only left out, else `e` stands.
    fn gone(&mut self, m: &Member, e: Error) -> Result<()> {
        match proc::stat(m.pid) {
            Ok(now) if now.start_time == m.start_time && now.is_zombie() => {
                self.left.push(Left::Zombie(Member::of(&now)));
                Ok(())
            }
            Ok(now) if now.start_time == m.start_time => Err(e),
            _ => {
                self.left.push(Left::Exited {
                    pid: m.pid,
                    ppid: m.ppid,
                });
                Ok(())
            }
        }
    }

    /// Freezes one child of `parent` (frozen) found by the walk. Ok(true) when
    /// frozen, Ok(false) when it is a zombie or exited (recorded in `left`).
    fn freeze_child(
        &mut self,
        parent: i32,
        pid: i32,
        each: &mut impl FnMut(&Member),
    ) -> Result<bool> {
        let st = match proc::stat(pid) {
            Ok(st) => st,
            Err(Error::NoSuchProcess { .. }) => {
                self.left.push(Left::Exited { pid, ppid: parent });
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let member = Member::of(&st);
        if st.is_zombie() {
            self.left.push(Left::Zombie(member));
            return Ok(false);
        }
        match Frozen::freeze(pid) {
            Ok(frozen) => {
                each(&member);
                self.procs.push(FrozenProcess { member, frozen });
                Ok(true)
            }
            // Did it exit (or die) while we froze it? Then it simply is no
            // longer part of the tree. (A zombie cannot be traced: seizing
            // one fails with EPERM.)
            Err(e) => self.gone(&member, e).map(|()| false),
        }
    }

    pub fn root(&self) -> i32 {
        self.root
    }

    /// The frozen processes, the root first, in CRIU's tree order.
    pub fn processes(&self) -> &[FrozenProcess] {
        &self.procs
    }

    /// Zombies and processes that exited while the tree was frozen.
    pub fn left(&self) -> &[Left] {
        &self.left
    }

    pub fn get(&self, pid: i32) -> Option<&Frozen> {
        self.procs
            .iter()
            .find(|p| p.member.pid == pid)
            .map(|p| &p.frozen)
    }

    pub fn threads(&self) -> usize {
        self.procs.iter().map(|p| p.frozen.tids().count()).sum()
    }

    /// Lets every process run again.
    pub fn thaw(self) -> TreeFreezeTimes {
        self.release(false)
    }

    /// Leaves every process job-stopped (as by SIGSTOP) and untraced: see
    /// `Frozen::thaw_stopped`.
    pub fn thaw_stopped(self) -> TreeFreezeTimes {
        self.release(true)
    }

    fn release(mut self, stopped: bool) -> TreeFreezeTimes {
        let threads = self.threads();
        let _urgent = Urgent::raise();
        // Children first: a parent let go first could wait for a child that
        // is still held, but it never notices a stopped one otherwise. The
        // order does not matter for correctness; it keeps the root, which
        // usually coordinates the others, stopped until last.
        for p in std::mem::take(&mut self.procs).into_iter().rev() {
            if stopped {
                p.frozen.thaw_stopped();
            } else {
                p.frozen.thaw();
            }
        }
        let now = Instant::now();
        TreeFreezeTimes {
            freezing: self.stopped - self.started,
            frozen: now - self.stopped,
            stopped_window: now - self.started,
            threads,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_files() {
        assert_eq!(parse_children("").unwrap(), Vec::<i32>::new());
        assert_eq!(parse_children("12 345 ").unwrap(), vec![12, 345]);
        assert_eq!(parse_children("12 x").unwrap_err().code(), "EPARSE");
    }

    #[test]
    fn criu_order_is_depth_first() {
        // 1 ─┬─ 2 ─── 4
        //    └─ 3 ─┬─ 5
        //          └─ 6
        let kids = HashMap::from([(1, vec![2, 3]), (2, vec![4]), (3, vec![5, 6])]);
        let order = pre_order(1, &kids);
        let mut pids: Vec<i32> = order.keys().copied().collect();
        pids.sort_by_key(|p| order[p]);
        assert_eq!(pids, vec![1, 2, 4, 3, 5, 6]);
    }

    #[test]
    fn our_own_ancestor_is_refused_as_a_root() {
        let parent = proc::stat(std::process::id() as i32).unwrap().ppid;
        if parent > 1 {
            let e = check_root(parent).unwrap_err();
            // Our parent is either refused as the tree holding us, or (if it
            // is not ours to trace) for permission; never accepted.
            assert!(matches!(e.code(), "ESELF" | "EPERM"), "{e}");
        }
    }
}
