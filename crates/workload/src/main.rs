//! predump-workload: a target process for predump's tests, benchmarks and demo.
//!
//! It fills a data region with a verifiable pattern (see `predump_bench::pattern`),
//! runs compute threads that check their own work, optionally churns its address
//! space, prints one JSON "ready" line, then answers one-line commands on stdin with
//! one JSON line each. EOF on stdin exits, so it never outlives whoever started it.
//!
//! With `--control DIR` the commands come through the FIFOs DIR/cmd and DIR/reply
//! instead, each opened only for one exchange: between two commands the process
//! holds no pipe of its starter (it waits in `open`), so CRIU can dump it and
//! restore it, and it answers again after the restore.

mod churn;
mod compute;
mod data;
mod mem;
mod seccomp;
mod tree;
mod vmops;

use std::fmt::Write as _;
use std::io::{BufRead, Write};
use std::sync::atomic::Ordering::Relaxed;

use predump_core::PAGE_SIZE;

const USAGE: &str = "\
usage: predump-workload [--size BYTES] [--threads N] [--churn] [--churn-slots N]
                        [--writer BYTES] [--deny-vmsplice] [--ignore-sigtrap] [--grandchild]
                        [--tree N] [--shared BYTES] [--devzero BYTES]
                        [--control DIR]

  --size BYTES      data region size; suffixes K, M, G (powers of 1024); default 64M
  --threads N       compute threads besides the command thread; default 1
  --churn           run a thread that keeps mapping, mprotecting and unmapping
  --churn-slots N   slots of 16 pages in the churn area; default 16
  --writer BYTES    run a thread writing random words into a region of its own
                    of BYTES, as fast as it can
  --deny-vmsplice   install a seccomp filter making vmsplice fail with EPERM
  --ignore-sigtrap  ignore SIGTRAP (syscall injection must then refuse to run)
  --grandchild      run in a forked child while the first process only waits for
                    it and exits with its status: the workload is then not a child
                    of its starter, whose own waitpid would take the ptrace stops
                    of a child it also traces (Node's child_process reads them as
                    exits); stdin and stdout are shared
  --tree N          N processes in all: this one forks the others (process i is a
                    child of process (i-1)/2), each with its own data region of
                    --size and its own threads; commands go to process K with
                    `proc K CMD` (see tree.rs for tree, spawn K, proc K exit|zombie)
  --shared BYTES    a MAP_SHARED|MAP_ANONYMOUS region, mapped before the tree is
                    forked: shared by every process, pattern by offset
  --devzero BYTES   the same, made by a shared mapping of /dev/zero
  --control DIR     read commands from the FIFO DIR/cmd and write the ready line
                    and each answer to the FIFO DIR/reply (both made by the
                    caller), opening each for one exchange only; stdin is not
                    read. A process that holds no pipe between commands can be
                    checkpointed and restored by CRIU. The FIFO gone: exit

Prints one JSON ready line, then answers commands on stdin, one JSON line each:
  dirty PERMILLE SEED | dirty-range OFFSET_PAGES COUNT | check | epochs | progress | exit
and, outside the data region (no pattern: compare images with the live memory):
  map PAGES SEED | map-shared PAGES SEED (a new anonymous shared object)
  | write ADDR PAGES SEED | unmap ADDR PAGES | protect ADDR PAGES none|r|rw
  | dontneed ADDR PAGES | thread PAGES SEED | fork ADDR PAGES SEED
and for the shared regions (NAME shared or devzero; pattern by offset in the object):
  shared-dirty NAME PERMILLE SEED | shared-dirty-range NAME OFFSET_PAGES COUNT
  | shared-epochs NAME
  | aio (an AIO ring) | hugetlb PAGES SEED (2 MiB pages from vm.nr_hugepages)
";

/// splitmix64: a tiny, good-enough deterministic generator for page selection and
/// churn decisions.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

struct Args {
    size: usize,
    threads: usize,
    churn: bool,
    churn_slots: usize,
    writer: usize,
    grandchild: bool,
    deny_vmsplice: bool,
    ignore_sigtrap: bool,
    tree: usize,
    shared: usize,
    devzero: usize,
    control: Option<std::path::PathBuf>,
}

fn parse_size(s: &str) -> Option<usize> {
    let (num, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    num.parse::<usize>()
        .ok()?
        .checked_mul(1 << shift)
        .filter(|&n| n > 0)
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        size: 64 << 20,
        threads: 1,
        churn: false,
        churn_slots: 16,
        writer: 0,
        grandchild: false,
        deny_vmsplice: false,
        ignore_sigtrap: false,
        tree: 1,
        shared: 0,
        devzero: 0,
        control: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        // Accept both `--opt value` and `--opt=value`.
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or(format!("{name} needs a value"))
        };
        match name.as_str() {
            "--help" | "-h" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            "--size" => {
                let v = value()?;
                a.size = parse_size(&v).ok_or(format!(
                    "bad --size {v:?}: want BYTES > 0 with optional K, M or G"
                ))?;
            }
            "--threads" => {
                let v = value()?;
                a.threads = v.parse().map_err(|_| format!("bad --threads {v:?}"))?;
            }
            "--churn-slots" => {
                let v = value()?;
                a.churn_slots = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or(format!("bad --churn-slots {v:?}: want N > 0"))?;
            }
            "--writer" => {
                let v = value()?;
                a.writer = parse_size(&v).ok_or(format!(
                    "bad --writer {v:?}: want BYTES > 0 with optional K, M or G"
                ))?;
            }
            "--tree" => {
                let v = value()?;
                a.tree = v
                    .parse()
                    .ok()
                    .filter(|&n| (1..=4096).contains(&n))
                    .ok_or(format!("bad --tree {v:?}: want 1..4096 processes"))?;
            }
            "--shared" | "--devzero" => {
                let v = value()?;
                let bytes = parse_size(&v).ok_or(format!(
                    "bad {name} {v:?}: want BYTES > 0 with optional K, M or G"
                ))?;
                let bytes = bytes
                    .checked_next_multiple_of(PAGE_SIZE as usize)
                    .ok_or(format!("{name} too large"))?;
                if name == "--shared" {
                    a.shared = bytes;
                } else {
                    a.devzero = bytes;
                }
            }
            "--control" => a.control = Some(value()?.into()),
            "--churn" if inline.is_none() => a.churn = true,
            "--grandchild" if inline.is_none() => a.grandchild = true,
            "--deny-vmsplice" if inline.is_none() => a.deny_vmsplice = true,
            "--ignore-sigtrap" if inline.is_none() => a.ignore_sigtrap = true,
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    // Round the data region up to whole pages.
    let p = PAGE_SIZE as usize;
    a.size = a
        .size
        .checked_next_multiple_of(p)
        .ok_or("--size too large")?;
    Ok(a)
}

fn hex(addr: u64) -> String {
    format!("\"{addr:#x}\"")
}

/// A JSON string literal (escapes quotes, backslashes and control characters).
fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32).unwrap(),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Write one line and flush. If stdout is gone, so is whoever reads our answers:
/// exit quietly, as on EOF.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
        std::process::exit(0);
    }
}

struct Workload {
    data: data::Data,
    compute: Vec<std::sync::Arc<compute::Stats>>,
    churn: Option<std::sync::Arc<churn::Churn>>,
    writer: Option<vmops::Writer>,
    /// The regions shared by the whole tree, by name ("shared", "devzero").
    shared: Vec<(&'static str, data::Data)>,
    /// This process's place in a `--tree` (None: a single process).
    node: Option<tree::Node>,
    /// --size and --threads, for a process spawned later.
    size: usize,
    threads: usize,
}

impl Workload {
    fn epochs_answer(runs: &[(u64, usize, u32)]) -> String {
        let mut s = String::from("{\"pages\":[");
        for (k, (start, n, e)) in runs.iter().enumerate() {
            let sep = if k > 0 { "," } else { "" };
            write!(s, "{sep}[{},{n},{e}]", hex(*start)).unwrap();
        }
        s.push_str("]}");
        s
    }

    fn dirty_answer(epoch: u32, runs: &[(u64, usize)]) -> String {
        let dirtied: usize = runs.iter().map(|r| r.1).sum();
        let mut s = format!("{{\"dirtied\":{dirtied},\"epoch\":{epoch},\"pages\":[");
        for (k, (start, n)) in runs.iter().enumerate() {
            let sep = if k > 0 { "," } else { "" };
            write!(s, "{sep}[{},{n}]", hex(*start)).unwrap();
        }
        s.push_str("]}");
        s
    }

    /// Answer one command line: a tree's routing first (another process's
    /// command, a tree command), then this process's own.
    fn command(&mut self, line: &str) -> String {
        let Some(mut node) = self.node.take() else {
            return self.local(line);
        };
        let answer = match node.route(line) {
            tree::Routed::Answer(a) => a,
            tree::Routed::Local(cmd) => {
                self.node = Some(node);
                return self.local(&cmd);
            }
            tree::Routed::Spawn(index) => match node.spawn(index) {
                tree::Spawned::Parent(a) => a,
                tree::Spawned::Child(parent) => {
                    self.node = Some(node);
                    self.become_spawned(parent)
                }
            },
        };
        self.node = Some(node);
        answer
    }

    /// In a process just forked by `spawn K`: its own region and threads (the
    /// parent's threads do not exist here), then it serves its parent.
    fn become_spawned(&mut self, mut parent: tree::Parent) -> ! {
        self.data = data::Data::new(self.size);
        self.compute = compute::spawn(self.threads);
        self.churn = None;
        self.writer = None;
        let index = self.node.as_ref().map_or(0, |n| n.index);
        parent.ready(&[(
            index,
            std::process::id() as i32,
            None,
            self.data.start(),
            self.data.bytes(),
        )]);
        self.serve(parent)
    }

    /// A process of the tree: answers its parent's commands until it is gone.
    fn serve(&mut self, mut parent: tree::Parent) -> ! {
        loop {
            let line = parent.next();
            let a = self.command(&line);
            parent.answer(&a);
        }
    }

    fn shared_region(&mut self, name: &str) -> Option<&mut data::Data> {
        self.shared
            .iter_mut()
            .find(|(n, _)| *n == name)
            .map(|(_, d)| d)
    }

    /// Answer one command of this process.
    fn local(&mut self, line: &str) -> String {
        let words: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
        match words.as_slice() {
            ["dirty", _, _] => {
                let (Some(permille), Some(seed)) = (num(1), num(2)) else {
                    return error("usage: dirty PERMILLE SEED (decimal integers)");
                };
                if permille > 1000 {
                    return error("PERMILLE must be 0..=1000");
                }
                let pages = self.data.select(permille as u32, seed);
                let (epoch, runs) = self.data.dirty(pages);
                Self::dirty_answer(epoch, &runs)
            }
            ["dirty-range", _, _] => {
                let (Some(offset), Some(count)) = (num(1), num(2)) else {
                    return error("usage: dirty-range OFFSET_PAGES COUNT (decimal integers)");
                };
                let total = self.data.pages() as u64;
                if count > total || offset > total - count {
                    return error(&format!(
                        "range {offset}+{count} is outside the {total} data pages"
                    ));
                }
                let (epoch, runs) = self.data.dirty(offset as usize..(offset + count) as usize);
                Self::dirty_answer(epoch, &runs)
            }
            ["check"] => {
                let (mut checked, mut bad) = self.data.check();
                for (_, d) in &self.shared {
                    let (c, b) = d.check();
                    checked += c;
                    bad += b;
                }
                if let Some(churn) = &self.churn {
                    let (c, b) = churn.check();
                    checked += c;
                    bad += b;
                }
                let errors: u64 = self.compute.iter().map(|s| s.errors.load(Relaxed)).sum();
                let ok = bad == 0 && errors == 0;
                format!("{{\"ok\":{ok},\"pagesChecked\":{checked},\"mismatches\":{bad},\"computeErrors\":{errors}}}")
            }
            ["shared-dirty", name, _, _] => {
                let (Some(permille), Some(seed)) = (num(2), num(3)) else {
                    return error("usage: shared-dirty NAME PERMILLE SEED (decimal integers)");
                };
                if permille > 1000 {
                    return error("PERMILLE must be 0..=1000");
                }
                let Some(d) = self.shared_region(name) else {
                    return error(&format!("no shared region {name:?}"));
                };
                let pages = d.select(permille as u32, seed);
                let (epoch, runs) = d.dirty(pages);
                Self::dirty_answer(epoch, &runs)
            }
            ["shared-dirty-range", name, _, _] => {
                let (Some(offset), Some(count)) = (num(2), num(3)) else {
                    return error("usage: shared-dirty-range NAME OFFSET_PAGES COUNT");
                };
                let Some(d) = self.shared_region(name) else {
                    return error(&format!("no shared region {name:?}"));
                };
                let total = d.pages() as u64;
                if count > total || offset > total - count {
                    return error(&format!(
                        "range {offset}+{count} is outside the {total} pages of {name}"
                    ));
                }
                let (epoch, runs) = d.dirty(offset as usize..(offset + count) as usize);
                Self::dirty_answer(epoch, &runs)
            }
            ["shared-epochs", name] => {
                let Some(d) = self.shared_region(name) else {
                    return error(&format!("no shared region {name:?}"));
                };
                Self::epochs_answer(&d.epoch_runs())
            }
            ["epochs"] => {
                let mut s = String::from("{\"pages\":[");
                for (k, (start, n, e)) in self.data.epoch_runs().iter().enumerate() {
                    let sep = if k > 0 { "," } else { "" };
                    write!(s, "{sep}[{},{n},{e}]", hex(*start)).unwrap();
                }
                s.push_str("]}");
                s
            }
            ["progress"] => {
                let iters: Vec<String> = self
                    .compute
                    .iter()
                    .map(|s| s.iterations.load(Relaxed).to_string())
                    .collect();
                let ops = self.churn.as_ref().map_or(0, |c| c.ops());
                let writes = self.writer.as_ref().map_or(0, |w| w.writes.load(Relaxed));
                format!(
                    "{{\"compute\":[{}],\"churnOps\":{ops},\"writerWrites\":{writes}}}",
                    iters.join(",")
                )
            }
            ["map", pages, seed] => match (pages.parse::<usize>(), seed.parse::<u64>()) {
                (Ok(pages), Ok(seed)) if pages > 0 => {
                    let addr = vmops::map(pages, seed);
                    format!("{{\"addr\":{},\"pages\":{pages}}}", hex(addr as u64))
                }
                _ => error("usage: map PAGES SEED (PAGES > 0)"),
            },
            ["map-shared", pages, seed] => match (pages.parse::<usize>(), seed.parse::<u64>()) {
                (Ok(pages), Ok(seed)) if pages > 0 => {
                    let addr = vmops::map_shared(pages, seed);
                    format!(
                        "{{\"addr\":{},\"pages\":{pages},\"inode\":{}}}",
                        hex(addr as u64),
                        inode_of(addr as u64)
                    )
                }
                _ => error("usage: map-shared PAGES SEED (PAGES > 0)"),
            },
            ["write" | "unmap" | "protect" | "dontneed" | "fork", addr, pages, rest @ ..] => {
                let (Some(addr), Ok(pages)) = (vmops::parse_addr(addr), pages.parse::<usize>())
                else {
                    return error(&format!("usage: {} ADDR PAGES …", words[0]));
                };
                let seed = || {
                    rest.first()
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or("want a SEED".to_string())
                };
                let done = match (words[0], rest) {
                    ("write", [_]) => seed()
                        .and_then(|s| vmops::write(addr, pages, s))
                        .map(|()| None),
                    ("unmap", []) => vmops::unmap(addr, pages).map(|()| None),
                    ("protect", [prot]) => vmops::protect(addr, pages, prot).map(|()| None),
                    ("dontneed", []) => vmops::dontneed(addr, pages).map(|()| None),
                    ("fork", [_]) => seed().and_then(|s| vmops::fork(addr, pages, s)).map(Some),
                    _ => Err(format!("wrong arguments for {}", words[0])),
                };
                match done {
                    Ok(None) => "{\"ok\":true}".to_string(),
                    Ok(Some(child)) => format!("{{\"ok\":true,\"child\":{child}}}"),
                    Err(msg) => error(&msg),
                }
            }
            ["aio"] => match vmops::aio() {
                Ok(addr) => format!("{{\"addr\":{}}}", hex(addr as u64)),
                Err(msg) => error(&msg),
            },
            ["hugetlb", pages, seed] => match (pages.parse::<usize>(), seed.parse::<u64>()) {
                (Ok(pages), Ok(seed)) if pages > 0 => match vmops::hugetlb(pages, seed) {
                    Ok(addr) => format!("{{\"addr\":{},\"pages\":{pages}}}", hex(addr as u64)),
                    Err(msg) => error(&msg),
                },
                _ => error("usage: hugetlb PAGES SEED (PAGES > 0, huge pages of 2 MiB)"),
            },
            ["thread", pages, seed] => match (pages.parse::<usize>(), seed.parse::<u64>()) {
                (Ok(pages), Ok(seed)) if pages > 0 => {
                    let (tid, addr) = vmops::thread(pages, seed);
                    format!(
                        "{{\"tid\":{tid},\"addr\":{},\"pages\":{pages}}}",
                        hex(addr as u64)
                    )
                }
                _ => error("usage: thread PAGES SEED (PAGES > 0)"),
            },
            ["zombie"] => tree::zombie(),
            ["exit"] => std::process::exit(0),
            _ => error(&format!("unknown command {line:?}")),
        }
    }
}

fn error(msg: &str) -> String {
    format!("{{\"error\":{}}}", json_str(msg))
}

/// `--control DIR`: the ready line, then commands, each FIFO opened for one
/// exchange. Never returns: exits when a FIFO cannot be opened any more.
///
/// The command FIFO is read to its end and closed *before* anything is
/// answered. Answering first (and closing after the next read found the
/// writer gone) lost commands: the caller, answered, writes its next command
/// at once, its open succeeds on the reader still open here, its line goes
/// into that pipe, and the close that follows frees the pipe with the line in
/// it; the workload then waits for a command that never comes (seen once in 60
/// commands on 6.12 under TCG, 2026-12-05). Closed first, the next command's
/// writer can only open once the next open here is waiting for it.
fn serve_fifos(w: &mut Workload, dir: &std::path::Path, ready: &str) -> ! {
    let (cmd, reply) = (dir.join("cmd"), dir.join("reply"));
    let gone = |what: &str, e: std::io::Error| -> ! {
        // The harness reads the output when a command is not answered.
        eprintln!("predump-workload: {what}: {e}; exiting");
        std::process::exit(0)
    };
    let answer = |line: &str| {
        // Blocks until the caller opens the FIFO to read the answer.
        let written = std::fs::OpenOptions::new()
            .write(true)
            .open(&reply)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = written {
            gone("answering through the reply FIFO", e);
        }
    };
    answer(ready);
    loop {
        // Blocks until the caller opens it to write a command: the wait in
        // which a checkpoint finds the process.
        let f = std::fs::File::open(&cmd).unwrap_or_else(|e| gone("opening the command FIFO", e));
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(f).lines() {
            match line {
                Ok(line) if line.trim().is_empty() => {}
                Ok(line) => lines.push(line),
                Err(e) => {
                    eprintln!("predump-workload: reading the command FIFO: {e}");
                    break;
                }
            }
        }
        for line in lines {
            answer(&w.command(&line));
        }
    }
}

/// Forks; the first process waits for the child and exits as it did. A real
/// parent's waitpid sees only the child's exit (ptrace stops go to the tracer),
/// so it never disturbs a tracer.
fn become_grandchild() {
    // SAFETY: called first thing in main, while the process has a single thread,
    // so the child inherits no lock held by another thread.
    let child = unsafe { libc::fork() };
    match child {
        -1 => {
            eprintln!(
                "predump-workload: fork: {}",
                std::io::Error::last_os_error()
            );
            std::process::exit(3);
        }
        0 => {}
        _ => {
            let mut status = 0;
            // SAFETY: waits for our own child; `status` is a valid out pointer.
            while unsafe { libc::waitpid(child, &mut status, 0) } == -1 {
                if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                    std::process::exit(3);
                }
            }
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
            // SAFETY: _exit skips atexit handlers and stdio flushing: stdout is
            // the child's to flush.
            unsafe { libc::_exit(code) }
        }
    }
}

/// The inode of the mapping at `start` in /proc/self/maps (a shared object's id).
fn inode_of(start: u64) -> u64 {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines()
        .find(|l| {
            l.split_once('-')
                .and_then(|(a, _)| u64::from_str_radix(a, 16).ok())
                == Some(start)
        })
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|i| i.parse().ok())
        .unwrap_or(0)
}

/// Waits (bounded) until /proc/self/task lists exactly `want` threads.
fn settle_threads(want: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        let n = std::fs::read_dir("/proc/self/task")
            .map(|d| d.count())
            .unwrap_or(want);
        if n == want {
            return;
        }
        std::thread::yield_now();
    }
}

fn main() {
    let args = parse_args().unwrap_or_else(|msg| {
        eprintln!("predump-workload: {msg}\n{USAGE}");
        std::process::exit(2)
    });
    if args.grandchild {
        become_grandchild();
    }
    if args.ignore_sigtrap {
        // SAFETY: setting a disposition to SIG_IGN installs no handler code.
        unsafe { libc::signal(libc::SIGTRAP, libc::SIG_IGN) };
    }
    if args.deny_vmsplice {
        if let Err(msg) = seccomp::deny_vmsplice() {
            eprintln!("predump-workload: {msg}");
            std::process::exit(3);
        }
    }

    // The shared regions first: every process of the tree maps them.
    let mut shared = Vec::new();
    if args.shared > 0 {
        shared.push((
            "shared",
            data::Data::with(args.shared, data::Backing::SharedAnonymous),
        ));
    }
    if args.devzero > 0 {
        shared.push((
            "devzero",
            data::Data::with(args.devzero, data::Backing::DevZero),
        ));
    }
    // Then the tree, while this process still has one thread.
    let (node, parent) = match (args.tree > 1).then(|| tree::grow(args.tree)) {
        None => (None, None),
        Some(tree::Role::Root(node)) => (Some(node), None),
        Some(tree::Role::Member(node, parent)) => (Some(node), Some(parent)),
    };

    let data = data::Data::new(args.size);
    let churn = args.churn.then(|| churn::Churn::new(args.churn_slots));
    let compute = compute::spawn(args.threads);
    if let Some(c) = &churn {
        c.spawn();
    }
    let writer = (args.writer > 0).then(|| vmops::Writer::spawn(args.writer));
    // "ready" promises a stable thread list: the fill threads have exited (a
    // joined thread can linger in /proc for a moment) and the others exist.
    settle_threads(1 + args.threads + usize::from(args.churn) + usize::from(writer.is_some()));

    let mut w = Workload {
        data,
        compute,
        churn,
        writer,
        shared,
        node,
        size: args.size,
        threads: args.threads,
    };
    // A tree's processes report to their parents, which report to theirs: the
    // root is ready once the whole tree is.
    let own = (w.data.start(), w.data.bytes());
    let entries = w.node.as_mut().map(|n| n.gather(own));
    if let Some(mut parent) = parent {
        parent.ready(&entries.unwrap_or_default());
        w.serve(parent);
    }
    if let (Some(node), Some(entries)) = (w.node.as_mut(), entries) {
        node.set_table(&entries);
    }

    let churn_json = w.churn.as_ref().map_or("null".to_string(), |c| {
        format!(
            "{{\"start\":{},\"bytes\":{}}}",
            hex(c.start() as u64),
            c.bytes()
        )
    });
    let writer_json = w.writer.as_ref().map_or("null".to_string(), |wr| {
        format!(
            "{{\"start\":{},\"bytes\":{}}}",
            hex(wr.start as u64),
            wr.bytes
        )
    });
    let region_json = |name: &str| {
        w.shared
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("null".to_string(), |(_, d)| {
                format!(
                    "{{\"start\":{},\"bytes\":{},\"inode\":{}}}",
                    hex(d.start()),
                    d.bytes(),
                    inode_of(d.start())
                )
            })
    };
    let tree_json = match &mut w.node {
        Some(node) => match node.route("tree") {
            tree::Routed::Answer(a) => a,
            _ => "null".to_string(),
        },
        None => "null".to_string(),
    };
    let ready = format!(
        "{{\"ready\":true,\"pid\":{},\"data\":{{\"start\":{},\"bytes\":{}}},\"churn\":{churn_json},\"writer\":{writer_json},\"shared\":{},\"devzero\":{},\"tree\":{tree_json},\"threads\":{},\"pageSize\":{PAGE_SIZE}}}",
        std::process::id(),
        hex(w.data.start()),
        w.data.bytes(),
        region_json("shared"),
        region_json("devzero"),
        args.threads,
    );

    if let Some(dir) = &args.control {
        serve_fifos(&mut w, dir, &ready);
    }
    say(&ready);
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        say(&w.command(&line));
    }
    // EOF (or an unreadable stdin): whoever drove us is gone.
    std::process::exit(0)
}
