//! `--tree N`: the workload as a tree of N processes, for pre-dumps of whole trees.
//!
//! Process 0 (the root, the one started) forks the others before any thread
//! exists: process i > 0 is a child of process (i - 1) / 2, so the tree has
//! grandchildren and more. Every process then makes its own private data region
//! and compute threads, and shares the root's shared regions (`--shared`,
//! `--devzero`, mapped before the fork). Each child has the parent death signal
//! set to SIGKILL: killing the root takes the whole tree down.
//!
//! The root alone talks to the caller. `proc K CMD` runs any workload command in
//! process K; the root passes it down the tree as `@A/B/…/K CMD`, each process
//! forwarding it to the child on the path over a pair of pipes and the answer
//! back up. Tree commands, at the root:
//!   tree                 every process: {"processes":[{index,pid,parent,alive,data}]}
//!   spawn K              a new child of process K (fork): {"index","pid"}
//!   proc K exit          process K exits (its parent reaps it; its subtree dies)
//!   proc K zombie        process K forks a child that exits at once and is never
//!                        reaped: a zombie in the tree, {"zombie":pid}

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::FromRawFd;

/// A direct child of this process and the pipes to it.
struct Link {
    index: usize,
    pid: i32,
    to: File,
    from: BufReader<File>,
}

/// One process of the tree, as the root knows it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub pid: i32,
    pub parent: Option<usize>,
    pub alive: bool,
    /// Its private data region: (start, bytes).
    pub data: (u64, usize),
}

/// (index, pid, parent index, data start, data bytes) of one process.
pub type Ready = (usize, i32, Option<usize>, u64, usize);

/// This process's place in the tree.
pub struct Node {
    pub index: usize,
    links: Vec<Link>,
    /// The root's table of every process ever made (empty elsewhere).
    table: Vec<Entry>,
}

/// What `grow` made of this process.
pub enum Role {
    /// The root, with its children forked.
    Root(Node),
    /// A process of the tree: it serves commands from its parent.
    Member(Node, Parent),
}

/// The pipes to this process's parent.
pub struct Parent {
    from: BufReader<File>,
    to: File,
}

/// Where a command goes (`Node::route`).
pub enum Routed {
    /// The answer: a tree command, or another process's.
    Answer(String),
    /// A command for this process itself.
    Local(String),
    /// Fork a new child here with this index (`Node::spawn`).
    Spawn(usize),
}

/// What `Node::spawn` made of this process.
pub enum Spawned {
    /// Still the parent: the new child's answer.
    Parent(String),
    /// The new child, to serve its parent (`Parent`).
    Child(Parent),
}

enum Forked {
    Parent(Link),
    Child(Parent),
}

fn die(what: &str) -> ! {
    crate::mem::die(what)
}

fn pipe() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid out array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        die("pipe2");
    }
    // SAFETY: two fresh fds owned by nobody else.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

/// The children of process `i` in a tree of `n` made at start.
fn children_of(i: usize, n: usize) -> Vec<usize> {
    [2 * i + 1, 2 * i + 2]
        .into_iter()
        .filter(|&c| c < n)
        .collect()
}

/// Forks child `index` with a pair of pipes to it.
///
/// # Safety
/// In a multi-threaded process the child may only use what is safe after
/// fork: here glibc's malloc (made fork-safe by glibc) and its own state.
unsafe fn fork_link(index: usize) -> Forked {
    let (down_r, down_w) = pipe();
    let (up_r, up_w) = pipe();
    let parent_pid = std::process::id() as i32;
    // SAFETY: see the function's contract.
    match unsafe { libc::fork() } {
        -1 => die("fork"),
        0 => {
            // SAFETY: prctl and getppid take integers; the check closes the
            // race with a parent that died before prctl.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent_pid {
                    libc::_exit(0);
                }
            }
            quiet_stdio();
            drop(down_w);
            drop(up_r);
            Forked::Child(Parent {
                from: BufReader::new(down_r),
                to: up_w,
            })
        }
        pid => {
            drop(down_r);
            drop(up_w);
            Forked::Parent(Link {
                index,
                pid,
                to: down_w,
                from: BufReader::new(up_r),
            })
        }
    }
}

/// Forks the tree of `n` processes; returns in every one of them, each with its
/// role. Call it while the process has one thread.
pub fn grow(n: usize) -> Role {
    let mut index = 0;
    let mut parent = None;
    let mut links = Vec::new();
    let mut todo = children_of(0, n);
    let mut k = 0;
    while k < todo.len() {
        // SAFETY: single-threaded: nothing has started a thread yet.
        match unsafe { fork_link(todo[k]) } {
            Forked::Parent(link) => {
                links.push(link);
                k += 1;
            }
            Forked::Child(p) => {
                // Now process todo[k]: our parent's links are not ours.
                index = todo[k];
                parent = Some(p);
                links.clear();
                todo = children_of(index, n);
                k = 0;
            }
        }
    }
    let node = Node {
        index,
        links,
        table: Vec::new(),
    };
    match parent {
        None => Role::Root(node),
        Some(p) => Role::Member(node, p),
    }
}

impl Node {
    /// Sends `line` to child `link` and returns its one-line answer (None: it
    /// is gone).
    fn ask(link: &mut Link, line: &str) -> Option<String> {
        writeln!(link.to, "{line}").ok()?;
        link.to.flush().ok()?;
        let mut answer = String::new();
        match link.from.read_line(&mut answer) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(answer.trim_end().to_string()),
        }
    }

    /// Waits for every child's ready line (its subtree) and returns them with
    /// this process's own entry.
    pub fn gather(&mut self, data: (u64, usize)) -> Vec<Ready> {
        let me = self.index;
        let parent = (me > 0).then(|| (me - 1) / 2);
        let mut all = vec![(me, std::process::id() as i32, parent, data.0, data.1)];
        for link in &mut self.links {
            let mut line = String::new();
            if link.from.read_line(&mut line).unwrap_or(0) == 0 {
                die("a child of the tree exited before it was ready");
            }
            all.extend(parse_entries(&line));
        }
        all
    }

    /// The root: records the gathered entries.
    pub fn set_table(&mut self, entries: &[Ready]) {
        let mut table = vec![
            Entry {
                pid: 0,
                parent: None,
                alive: false,
                data: (0, 0),
            };
            entries.len()
        ];
        for &(i, pid, parent, start, bytes) in entries {
            table[i] = Entry {
                pid,
                parent,
                alive: true,
                data: (start, bytes),
            };
        }
        self.table = table;
    }

    /// Where `line` goes: the tree's commands and other processes' are
    /// answered here, this process's own handed back.
    pub fn route(&mut self, line: &str) -> Routed {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["tree"] if self.index == 0 => Routed::Answer(self.tree_json()),
            ["proc", k, rest @ ..] if self.index == 0 => {
                let Some(k) = k.parse::<usize>().ok().filter(|&k| k < self.table.len()) else {
                    return Routed::Answer(crate::error(&format!("no process {k} in the tree")));
                };
                if !self.table[k].alive {
                    return Routed::Answer(crate::error(&format!("process {k} has exited")));
                }
                let cmd = rest.join(" ");
                if k == 0 {
                    return Routed::Local(cmd);
                }
                let path = self.path_to(k);
                let answer = self.forward(&path, &cmd);
                if cmd == "exit" && answer.contains("\"exited\"") {
                    self.mark_gone(k);
                }
                Routed::Answer(answer)
            }
            ["spawn", k] if self.index == 0 => {
                let Some(k) = k
                    .parse::<usize>()
                    .ok()
                    .filter(|&k| k < self.table.len() && self.table[k].alive)
                else {
                    return Routed::Answer(crate::error(&format!(
                        "no live process {k} in the tree"
                    )));
                };
                let index = self.table.len();
                if k == 0 {
                    return Routed::Spawn(index);
                }
                let path = self.path_to(k);
                let answer = self.forward(&path, &format!("spawn-as {index}"));
                self.record_spawn(k, &answer);
                Routed::Answer(answer)
            }
            [p, rest @ ..] if p.starts_with('@') => {
                let path: Vec<usize> = p[1..].split('/').filter_map(|s| s.parse().ok()).collect();
                let cmd = rest.join(" ");
                match path.as_slice() {
                    [me] if *me == self.index => {
                        match cmd.split_whitespace().collect::<Vec<_>>()[..] {
                            ["spawn-as", i] => match i.parse() {
                                Ok(i) => Routed::Spawn(i),
                                Err(_) => Routed::Answer(crate::error("bad spawn-as")),
                            },
                            _ => Routed::Local(cmd),
                        }
                    }
                    [me, rest @ ..] if *me == self.index => {
                        Routed::Answer(self.forward(rest, &cmd))
                    }
                    _ => Routed::Answer(crate::error(&format!("bad path {p}"))),
                }
            }
            _ => Routed::Local(line.to_string()),
        }
    }

    /// Forks a new child with `index` here (for `Routed::Spawn`). In the child
    /// this node becomes the new process's.
    pub fn spawn(&mut self, index: usize) -> Spawned {
        // SAFETY: the child keeps to glibc's fork-safe malloc and its own
        // state: it builds its own region and threads and never touches the
        // parent's (whose threads do not exist in it).
        match unsafe { fork_link(index) } {
            Forked::Child(parent) => {
                self.index = index;
                self.links.clear();
                self.table.clear();
                Spawned::Child(parent)
            }
            Forked::Parent(mut link) => {
                let mut line = String::new();
                let answer = if link.from.read_line(&mut line).unwrap_or(0) == 0 {
                    crate::error("the new process exited before it was ready")
                } else {
                    match parse_entries(&line).first() {
                        Some(&(_, pid, _, start, bytes)) => format!(
                            "{{\"index\":{index},\"pid\":{pid},\"data\":{{\"start\":\"{start:#x}\",\"bytes\":{bytes}}}}}"
                        ),
                        None => crate::error("the new process's ready line did not parse"),
                    }
                };
                self.links.push(link);
                if self.index == 0 {
                    self.record_spawn(0, &answer);
                }
                Spawned::Parent(answer)
            }
        }
    }

    fn record_spawn(&mut self, parent: usize, answer: &str) {
        if let Some((pid, start, bytes)) = parse_spawned(answer) {
            self.table.push(Entry {
                pid,
                parent: Some(parent),
                alive: true,
                data: (start, bytes),
            });
        }
    }

    /// Sends `cmd` down `path` (starting with a child of ours).
    fn forward(&mut self, path: &[usize], cmd: &str) -> String {
        let Some(&next) = path.first() else {
            return crate::error("empty path");
        };
        let Some(at) = self.links.iter().position(|l| l.index == next) else {
            return crate::error(&format!(
                "process {next} is not a child of process {}",
                self.index
            ));
        };
        let line = format!(
            "@{} {cmd}",
            path.iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join("/")
        );
        let last_hop = path.len() == 1;
        let link = &mut self.links[at];
        let pid = link.pid;
        match Self::ask(link, &line) {
            Some(answer) => answer,
            None => {
                // Gone: reap it (an `exit` asked for, or killed).
                let mut status = 0;
                // SAFETY: waits for our own child; `status` is a valid out pointer.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                self.links.remove(at);
                if last_hop && cmd == "exit" {
                    format!("{{\"ok\":true,\"exited\":{pid}}}")
                } else {
                    crate::error(&format!("process {next} (pid {pid}) is gone"))
                }
            }
        }
    }

    /// The root's path to process k: the indices from a child of the root down to k.
    fn path_to(&self, k: usize) -> Vec<usize> {
        let mut path = vec![k];
        let mut at = k;
        while let Some(p) = self.table[at].parent {
            if p == 0 {
                break;
            }
            path.push(p);
            at = p;
        }
        path.reverse();
        path
    }

    fn mark_gone(&mut self, k: usize) {
        let mut gone = vec![k];
        while let Some(g) = gone.pop() {
            self.table[g].alive = false;
            for (i, e) in self.table.iter().enumerate() {
                if e.parent == Some(g) && e.alive {
                    gone.push(i);
                }
            }
        }
    }

    fn tree_json(&self) -> String {
        let mut s = String::from("{\"processes\":[");
        for (i, e) in self.table.iter().enumerate() {
            let sep = if i > 0 { "," } else { "" };
            let parent = e.parent.map_or("null".to_string(), |p| p.to_string());
            write!(
                s,
                "{sep}{{\"index\":{i},\"pid\":{},\"parent\":{parent},\"alive\":{},\"data\":{{\"start\":\"{:#x}\",\"bytes\":{}}}}}",
                e.pid, e.alive, e.data.0, e.data.1
            )
            .unwrap();
        }
        s.push_str("]}");
        s
    }
}

impl Parent {
    /// Sends the ready line: this process's subtree.
    pub fn ready(&mut self, entries: &[Ready]) {
        let mut s = String::from("ready");
        for &(i, pid, parent, start, bytes) in entries {
            let parent = parent.map_or(-1, |p| p as i64);
            write!(s, " {i}:{pid}:{parent}:{start}:{bytes}").unwrap();
        }
        if writeln!(self.to, "{s}").is_err() {
            std::process::exit(0);
        }
    }

    /// Reads the next command from the parent; exits when it is gone.
    pub fn next(&mut self) -> String {
        let mut line = String::new();
        match self.from.read_line(&mut line) {
            Ok(0) | Err(_) => std::process::exit(0),
            Ok(_) => line.trim_end().to_string(),
        }
    }

    pub fn answer(&mut self, a: &str) {
        if writeln!(self.to, "{a}").is_err() {
            std::process::exit(0);
        }
    }
}

/// `ready 0:PID:-1:START:BYTES …` → entries.
fn parse_entries(line: &str) -> Vec<(usize, i32, Option<usize>, u64, usize)> {
    line.split_whitespace()
        .skip(1)
        .filter_map(|w| {
            let f: Vec<&str> = w.split(':').collect();
            if f.len() != 5 {
                return None;
            }
            let parent: i64 = f[2].parse().ok()?;
            Some((
                f[0].parse().ok()?,
                f[1].parse().ok()?,
                (parent >= 0).then_some(parent as usize),
                f[3].parse().ok()?,
                f[4].parse().ok()?,
            ))
        })
        .collect()
}

/// {"index":…,"pid":P,"data":{"start":"0x…","bytes":B}} → (P, start, B).
fn parse_spawned(answer: &str) -> Option<(i32, u64, usize)> {
    let num = |key: &str| -> Option<&str> {
        let at = answer.find(key)? + key.len();
        let rest = &answer[at..];
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        Some(rest[..end].trim_matches('"'))
    };
    let pid = num("\"pid\":")?.parse().ok()?;
    let start = u64::from_str_radix(num("\"start\":")?.trim_start_matches("0x"), 16).ok()?;
    let bytes = num("\"bytes\":")?.parse().ok()?;
    Some((pid, start, bytes))
}

/// A child that exits at once and is never reaped: a zombie of this process.
pub fn zombie() -> String {
    // SAFETY: the child calls only _exit.
    match unsafe { libc::fork() } {
        -1 => crate::error(&format!("fork: {}", std::io::Error::last_os_error())),
        // SAFETY: _exit is async-signal-safe.
        0 => unsafe { libc::_exit(0) },
        pid => {
            // Answer once it is a zombie, so that the caller sees one.
            let path = format!("/proc/{pid}/stat");
            for _ in 0..100_000 {
                if std::fs::read_to_string(&path).is_ok_and(|s| {
                    s.rsplit_once(')')
                        .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
                }) {
                    break;
                }
                std::thread::yield_now();
            }
            format!("{{\"zombie\":{pid}}}")
        }
    }
}

/// A child of the tree reads and writes only its pipes: its stdin and stdout
/// go to /dev/null, so that the caller sees EOF on the root's stdout when the
/// root exits, whatever the others do.
fn quiet_stdio() {
    // SAFETY: open of a constant path, dup2 onto the standard fds, close.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            if null > 2 {
                libc::close(null);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape() {
        assert_eq!(children_of(0, 5), vec![1, 2]);
        assert_eq!(children_of(1, 5), vec![3, 4]);
        assert_eq!(children_of(2, 5), Vec::<usize>::new());
    }

    #[test]
    fn lines() {
        let e = parse_entries("ready 1:100:0:4096:8192 3:300:1:0:0");
        assert_eq!(
            e,
            vec![(1, 100, Some(0), 4096, 8192), (3, 300, Some(1), 0, 0)]
        );
        assert_eq!(
            parse_spawned(
                "{\"index\":5,\"pid\":77,\"data\":{\"start\":\"0x1000\",\"bytes\":8192}}"
            ),
            Some((77, 0x1000, 8192))
        );
    }
}
