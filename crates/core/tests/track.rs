//! Dirty tracking against real processes (the predump-testee binary, case
//! `track`): a "run" is what one predump invocation does — freeze, inject into
//! the main thread (blocked in read(0)), attach, …, restore, thaw.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use predump_core::freeze::Frozen;
use predump_core::inject::Injector;
use predump_core::maps::{parse_maps, skip_reason, Vma};
use predump_core::track::{find_ours, Backend, Tracker};
use predump_core::{proc, PageRange, PAGE_SIZE};

mod common;
use common::{fds, maps, Testee};

/// The VMAs a pre-dump would track: those CRIU keeps.
fn eligible(pid: i32) -> Vec<Vma> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    parse_maps(&text)
        .unwrap()
        .into_iter()
        .filter(|v| skip_reason(v, None, false).is_none())
        .collect()
}

/// One predump "run": freeze, injector into the main thread, `f`, restore, thaw.
fn run<R>(pid: i32, f: impl FnOnce(&Frozen, &mut Injector) -> R) -> R {
    let frozen = Frozen::freeze(pid).unwrap();
    let mut inj = Injector::new(&frozen, pid).unwrap();
    let r = f(&frozen, &mut inj);
    inj.restore().unwrap();
    frozen.thaw();
    r
}

fn attach(frozen: &Frozen, inj: &mut Injector) -> Tracker {
    let vmas = eligible(frozen.pid());
    let refs: Vec<&Vma> = vmas.iter().collect();
    Tracker::attach_with(Backend::UffdWp, frozen, inj, &refs).unwrap()
}

/// Page ranges from (first page, pages) of a region at `base`.
fn pages(base: u64, list: &[(u64, u64)]) -> Vec<PageRange> {
    list.iter()
        .map(|&(p, n)| PageRange::new(base + p * PAGE_SIZE, n))
        .collect()
}

fn covers(list: &[(u64, u64)], (s, e): (u64, u64)) -> bool {
    list.iter().any(|&(a, b)| a <= s && e <= b)
}

/// Is the uffd-wp backend usable here at all? (Not on kernels before 6.7, nor
/// without injection.)
fn uffd_wp() -> bool {
    // The probe makes a uffd and mappings in this process: once is enough.
    static WORKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *WORKS.get_or_init(|| Backend::UffdWp.works());
    if !ok {
        assert!(
            !required("uffd-wp"),
            "PREDUMP_TEST_REQUIRE says this kernel has uffd-wp, but its probe says no"
        );
        eprintln!("no uffd-wp on this kernel: test skipped");
        return false;
    }
    // The tracker's userfaultfd is made inside the target: injection (not on every
    // aarch64 kernel: inject/aarch64.rs).
    if let Err(why) = predump_core::inject::supported() {
        eprintln!("{why}: test skipped");
        return false;
    }
    true
}

/// The span of one page table on x86_64 and on aarch64 with 4 KiB pages.
const PMD_SIZE: u64 = 2 << 20;

/// Test 1: exactly the pages written between two scans, then nothing.
#[test]
fn known_writes() {
    if !uffd_wp() {
        return;
    }
    let mut t = Testee::track();
    let r = t.region("r", 256, 128);
    let mut tracker = run(t.pid, |frozen, inj| {
        let t0 = std::time::Instant::now();
        let mut tr = attach(frozen, inj);
        eprintln!(
            "first attach ({} VMAs): {:?}",
            eligible(frozen.pid()).len(),
            t0.elapsed()
        );
        assert!(tr.created());
        assert!(covers(tr.new_vmas(), r), "{:x?} not new", r);
        assert!(covers(tr.tracked(), r));
        // Arming: everything written so far (at least the populated half).
        let armed = tr.take_dirty(&[r]).unwrap();
        eprintln!("arming scan of 128 populated + 128 untouched pages: {armed:x?}");
        let n: u64 = armed.iter().map(|p| p.pages).sum();
        assert!(n >= 128, "arming reported {armed:x?}");
        tr
    });
    t.write("r", "3 7 100..110");
    let dirty = run(t.pid, |_, _| tracker.take_dirty(&[r]).unwrap());
    assert_eq!(dirty, pages(r.0, &[(3, 1), (7, 1), (100, 10)]));
    let dirty = run(t.pid, |_, _| tracker.take_dirty(&[r]).unwrap());
    assert_eq!(dirty, vec![]);
    // Reads are not writes; writes to never-populated pages count. One
    // exception, the kernel's: a 2 MiB stretch that had no page table when it was
    // armed (nothing populated there) gets no write-protect markers, so reading
    // it maps the zero page unprotected and it counts as written once (a
    // superset: safe; newer kernels may mark it). The region is placed by ASLR: when its populated first
    // half ends before a 2 MiB boundary that lies inside it (about one run in
    // four; seen on Debian's 6.12), the pages after that boundary are such a stretch.
    t.write("r", "200 255");
    t.ask("read r 0..256", "read");
    let dirty = run(t.pid, |_, _| tracker.take_dirty(&[r]).unwrap());
    let want = page_set(&pages(r.0, &[(200, 1), (255, 1)]));
    let mut may = want.clone();
    let boundary = r.0.div_ceil(PMD_SIZE) * PMD_SIZE;
    if boundary >= r.0 + 128 * PAGE_SIZE && boundary < r.1 {
        may.extend(page_set(&[PageRange::new(
            boundary,
            (r.1 - boundary) / PAGE_SIZE,
        )]));
    }
    let got = page_set(&dirty);
    assert!(got.is_superset(&want) && got.is_subset(&may), "{dirty:x?}");
    // The whole process: no error, and the region is still exact (nothing new).
    let all: Vec<(u64, u64)> = eligible(t.pid).iter().map(|v| (v.start, v.end)).collect();
    run(t.pid, |_, _| tracker.take_dirty(&all).unwrap());
    t.write("r", "0");
    let dirty = run(t.pid, |_, _| tracker.take_dirty(&[r]).unwrap());
    assert_eq!(dirty, pages(r.0, &[(0, 1)]));
    run(t.pid, |_, inj| tracker.release(inj).unwrap());
}

/// Test 2: a Tracker dropped without release leaves the uffd in the target; the next
/// run finds it and sees the writes made in between.
#[test]
fn persists_across_runs() {
    if !uffd_wp() {
        return;
    }
    let mut t = Testee::track();
    let r = t.region("r", 64, 64);
    assert_eq!(find_ours(t.pid).unwrap(), None);
    let fd = run(t.pid, |frozen, inj| {
        let mut tr = attach(frozen, inj);
        tr.take_dirty(&[r]).unwrap();
        let fd = tr.target_fd().unwrap();
        tr.keep();
        fd
    });
    assert_eq!(find_ours(t.pid).unwrap(), Some(fd));
    let link = std::fs::read_link(format!("/proc/{}/fd/{fd}", t.pid)).unwrap();
    assert_eq!(link.to_string_lossy(), "anon_inode:[userfaultfd]");
    // The fd is moved up, away from the numbers the program would get.
    assert!(fd >= 56, "fd {fd}");
    // predump's copy is closed: no fd of this process is that uffd (other
    // tests' trackers hold other uffds here meanwhile).
    let ino = std::fs::metadata(format!("/proc/{}/fd/{fd}", t.pid))
        .unwrap()
        .ino();
    let ours = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .any(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("userfaultfd"))
                && std::fs::metadata(e.path()).is_ok_and(|m| m.ino() == ino)
        });
    assert!(!ours, "predump's copy of the uffd is still open");
    t.write("r", "5 9..12");
    run(t.pid, |frozen, inj| {
        let t0 = std::time::Instant::now();
        let mut tr = attach(frozen, inj);
        eprintln!("attach finding the uffd: {:?}", t0.elapsed());
        assert!(!tr.created());
        assert_eq!(tr.target_fd(), Some(fd));
        assert!(!covers(tr.new_vmas(), r), "{:x?} reported new again", r);
        assert_eq!(tr.take_dirty(&[r]).unwrap(), pages(r.0, &[(5, 1), (9, 3)]));
        tr.release(inj).unwrap();
    });
    assert_eq!(find_ours(t.pid).unwrap(), None);
}

/// Test 3: a VMA made after attach is new (dump whole) at the next attach, and
/// tracked from then on.
#[test]
fn new_vma_after_attach() {
    if !uffd_wp() {
        return;
    }
    let mut t = Testee::track();
    let r = t.region("r", 32, 32);
    run(t.pid, |frozen, inj| {
        let mut tr = attach(frozen, inj);
        tr.take_dirty(&[r]).unwrap();
    });
    let n = t.region("n", 64, 10);
    // Untracked so far: a Tracker of the earlier run reports it whole.
    run(t.pid, |frozen, inj| {
        let mut tr = attach(frozen, inj);
        assert!(!tr.created());
        assert!(
            covers(tr.new_vmas(), n),
            "{n:x?} not in {:x?}",
            tr.new_vmas()
        );
        assert!(!covers(tr.new_vmas(), r));
        tr.take_dirty(&[n, r]).unwrap(); // arms n
    });
    t.write("n", "1 50");
    t.write("r", "31");
    run(t.pid, |frozen, inj| {
        let mut tr = attach(frozen, inj);
        assert!(tr.new_vmas().iter().all(|&v| v != n && !covers(&[v], n)));
        assert_eq!(tr.take_dirty(&[n]).unwrap(), pages(n.0, &[(1, 1), (50, 1)]));
        assert_eq!(tr.take_dirty(&[r]).unwrap(), pages(r.0, &[(31, 1)]));
        tr.release(inj).unwrap();
    });
}

/// Test 4, release: fds and maps as before tracking; the target runs, untraced.
#[test]
fn release_restores_the_target() {
    if !uffd_wp() {
        return;
    }
    let mut t = Testee::track();
    let r = t.region("r", 16, 16);
    let (fds_before, maps_before) = (fds(t.pid), maps(t.pid));
    let mut tracker = run(t.pid, |frozen, inj| {
        let mut tr = attach(frozen, inj);
        tr.take_dirty(&[r]).unwrap();
        tr
    });
    assert_eq!(fds(t.pid).len(), fds_before.len() + 2, "uffd + marker");
    t.write("r", "2");
    assert_eq!(
        run(t.pid, |_, _| tracker.take_dirty(&[r]).unwrap()),
        pages(r.0, &[(2, 1)])
    );
    run(t.pid, |_, inj| tracker.release(inj).unwrap());
    assert_eq!(fds(t.pid), fds_before);
    assert_eq!(maps(t.pid), maps_before);
    assert_eq!(find_ours(t.pid).unwrap(), None);
    assert_eq!(proc::tracer_pid(t.pid, t.pid).unwrap(), 0);
    // It runs: answers, and writes to the formerly tracked region.
    t.write("r", "0..16");
    t.ask("echo alive", "echo alive");
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", t.pid)).unwrap();
    assert!(
        !smaps
            .lines()
            .any(|l| l.starts_with("VmFlags:") && l.contains(" uw")),
        "a VMA is still registered for WP"
    );
}

/// Test 5: a VMA the target registered with its own userfaultfd is always dirty,
/// without error; the target's uffd is never taken for ours, nor touched.
#[test]
fn targets_own_userfaultfd() {
    if !uffd_wp() {
        return;
    }
    let mut t = Testee::track();
    let u = t.region("u", 16, 16);
    let r = t.region("r", 16, 16);
    let l = t.ask("ownuffd u", "ownuffd");
    let own_fd: i32 = l.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert_eq!(find_ours(t.pid).unwrap(), None);
    let mut tracker = run(t.pid, |frozen, inj| {
        let mut tr = attach(frozen, inj);
        assert!(covers(tr.always_dirty(), u), "{:x?}", tr.always_dirty());
        assert!(!covers(tr.tracked(), u));
        assert_eq!(tr.take_dirty(&[u]).unwrap(), pages(u.0, &[(0, 16)]));
        tr.take_dirty(&[r]).unwrap();
        tr
    });
    assert_ne!(find_ours(t.pid).unwrap(), Some(own_fd));
    t.write("r", "4");
    let dirty = run(t.pid, |_, _| tracker.take_dirty(&[u, r]).unwrap());
    // u and r may be adjacent: compare page sets.
    let mut want = pages(u.0, &[(0, 16)]);
    want.extend(pages(r.0, &[(4, 1)]));
    assert_eq!(page_set(&dirty), page_set(&want));
    run(t.pid, |_, inj| tracker.release(inj).unwrap());
    let link = std::fs::read_link(format!("/proc/{}/fd/{own_fd}", t.pid)).unwrap();
    assert_eq!(link.to_string_lossy(), "anon_inode:[userfaultfd]");
    t.ask("echo alive", "echo alive");
}

fn page_set(v: &[PageRange]) -> std::collections::BTreeSet<u64> {
    v.iter()
        .flat_map(|p| (0..p.pages).map(move |i| p.start + i * PAGE_SIZE))
        .collect()
}

/// The marker scheme relies on every userfaultfd having an inode of its own.
#[test]
fn userfaultfd_inodes_are_distinct() {
    let make = || {
        // SAFETY: userfaultfd with integer flags (1 = UFFD_USER_MODE_ONLY).
        let r = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | 1) };
        assert!(r >= 0, "userfaultfd");
        // SAFETY: a fresh fd that we alone own.
        unsafe { OwnedFd::from_raw_fd(r as i32) }
    };
    let (a, b) = (make(), make());
    let ino = |fd: &OwnedFd| {
        use std::os::fd::AsRawFd;
        std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap()
            .ino()
    };
    assert_ne!(ino(&a), ino(&b));
}

/// Is the soft-dirty backend usable here? (CONFIG_MEM_SOFT_DIRTY: the 6.1
/// kernel of the kernel matrix has it, the development machines do not.)
fn soft_dirty() -> bool {
    static WORKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *WORKS.get_or_init(|| Backend::SoftDirty.works());
    if !ok {
        // The kernel matrix knows its kernel has it: a skip there would hide a
        // failing probe and leave soft-dirty untested.
        assert!(
            !required("soft-dirty"),
            "PREDUMP_TEST_REQUIRE says this kernel has soft-dirty, but its probe says no"
        );
        eprintln!("no soft-dirty on this kernel (CONFIG_MEM_SOFT_DIRTY): test skipped");
    }
    ok
}

/// Whether the environment variable PREDUMP_TEST_REQUIRE (comma-separated
/// backend names) says that `backend` must work here: then its tests fail
/// rather than skip.
fn required(backend: &str) -> bool {
    std::env::var("PREDUMP_TEST_REQUIRE").is_ok_and(|v| v.split(',').any(|b| b.trim() == backend))
}

/// Soft-dirty as a pre-dump attaches it: without an injector (the run's one is
/// there for `release`, which needs it for uffd-wp only).
fn attach_soft_dirty(frozen: &Frozen, _inj: &mut Injector) -> Tracker {
    let vmas = eligible(frozen.pid());
    let refs: Vec<&Vma> = vmas.iter().collect();
    Tracker::attach_without_injection(Backend::SoftDirty, frozen, &refs).unwrap()
}

/// The backends that leave nothing in the target attach without an injector:
/// nothing is written into its vDSO, none of its threads runs our code (and a
/// vDSO without room for the stub does not matter). uffd-wp is refused: its
/// userfaultfd is made by an injected call.
#[test]
fn attach_without_injection_only_for_what_injects_nothing() {
    let mut t = Testee::track();
    let r = t.region("r", 16, 16);
    let (fds_before, maps_before) = (fds(t.pid), maps(t.pid));
    let vmas = eligible(t.pid);
    let refs: Vec<&Vma> = vmas.iter().collect();
    let frozen = Frozen::freeze(t.pid).unwrap();
    let err = Tracker::attach_without_injection(Backend::UffdWp, &frozen, &refs).unwrap_err();
    assert!(
        matches!(err, predump_core::Error::InvalidArgument(_))
            && err.to_string().contains("injected call"),
        "{err}"
    );
    let mut none = Tracker::attach_without_injection(Backend::None, &frozen, &refs).unwrap();
    assert_eq!((none.created(), none.target_fd()), (false, None));
    // Untracked: every page of every range counts as written.
    assert_eq!(none.take_dirty(&[r]).unwrap(), pages(r.0, &[(0, 16)]));
    none.keep();
    if soft_dirty() {
        let sd = Tracker::attach_without_injection(Backend::SoftDirty, &frozen, &refs).unwrap();
        assert_eq!((sd.created(), sd.target_fd()), (false, None));
        sd.keep();
    }
    frozen.thaw();
    assert_eq!(fds(t.pid), fds_before);
    assert_eq!(maps(t.pid), maps_before);
    assert_eq!(proc::tracer_pid(t.pid, t.pid).unwrap(), 0);
    t.ask("echo alive", "echo alive");
}

/// The soft-dirty backend: exact pages between two scans; reads are not writes;
/// nothing is left in the target.
#[test]
fn soft_dirty_known_writes() {
    if !soft_dirty() {
        return;
    }
    let mut t = Testee::track();
    let r = t.region("r", 256, 128);
    let (fds_before, maps_before) = (fds(t.pid), maps(t.pid));
    let mut tracker = run(t.pid, |frozen, inj| {
        let mut tr = attach_soft_dirty(frozen, inj);
        assert_eq!(tr.backend(), Backend::SoftDirty);
        assert!(covers(tr.tracked(), r));
        // Nothing made in the target: no uffd, no marker, nothing "new".
        assert!(!tr.created());
        assert_eq!(tr.target_fd(), None);
        assert_eq!(tr.new_vmas(), &[]);
        // Never cleared before: every populated page reads as written.
        let armed = tr.take_dirty(&[r]).unwrap();
        assert!(
            page_set(&armed).is_superset(&page_set(&pages(r.0, &[(0, 128)]))),
            "{armed:x?}"
        );
        tr
    });
    assert_eq!(fds(t.pid), fds_before);
    assert_eq!(maps(t.pid), maps_before);
    t.write("r", "3 7 100..110");
    let dirty = run(t.pid, |_, _| tracker.take_dirty(&[r]).unwrap());
    assert_eq!(dirty, pages(r.0, &[(3, 1), (7, 1), (100, 10)]));
    let dirty = run(t.pid, |_, _| tracker.take_dirty(&[r]).unwrap());
    assert_eq!(dirty, vec![]);
    // Reads are not writes (the zero page mapped by reading is not dirty);
    // writes to never-populated pages count.
    t.write("r", "200 255");
    t.ask("read r 0..256", "read");
    let dirty = run(t.pid, |_, _| tracker.take_dirty(&[r]).unwrap());
    assert_eq!(dirty, pages(r.0, &[(200, 1), (255, 1)]));
    run(t.pid, |_, inj| tracker.release(inj).unwrap());
    assert_eq!(fds(t.pid), fds_before);
    assert_eq!(proc::tracer_pid(t.pid, t.pid).unwrap(), 0);
    t.ask("echo alive", "echo alive");
}

/// soft-dirty needs no state: a Tracker of a later run (a new predump process)
/// sees the writes made since the last clear.
#[test]
fn soft_dirty_persists_across_runs() {
    if !soft_dirty() {
        return;
    }
    let mut t = Testee::track();
    let r = t.region("r", 64, 64);
    run(t.pid, |frozen, inj| {
        let mut tr = attach_soft_dirty(frozen, inj);
        tr.take_dirty(&[r]).unwrap();
        tr.keep();
    });
    assert_eq!(find_ours(t.pid).unwrap(), None);
    t.write("r", "5 9..12");
    run(t.pid, |frozen, inj| {
        let mut tr = attach_soft_dirty(frozen, inj);
        assert_eq!(tr.take_dirty(&[r]).unwrap(), pages(r.0, &[(5, 1), (9, 3)]));
        tr.release(inj).unwrap();
    });
    t.write("r", "63");
    run(t.pid, |frozen, inj| {
        let mut tr = attach_soft_dirty(frozen, inj);
        assert_eq!(tr.take_dirty(&[r]).unwrap(), pages(r.0, &[(63, 1)]));
    });
}

/// A VMA made after the last clear reads as written (VM_SOFTDIRTY: its populated
/// pages) until the next clear; a scan of the whole process works; then both
/// regions are exact again.
#[test]
fn soft_dirty_new_vma_and_whole_process() {
    if !soft_dirty() {
        return;
    }
    let mut t = Testee::track();
    let r = t.region("r", 32, 32);
    let all = |pid| -> Vec<(u64, u64)> { eligible(pid).iter().map(|v| (v.start, v.end)).collect() };
    run(t.pid, |frozen, inj| {
        let mut tr = attach_soft_dirty(frozen, inj);
        tr.take_dirty(&all(frozen.pid())).unwrap();
    });
    let n = t.region("n", 64, 10);
    let mut tracker = run(t.pid, |frozen, inj| {
        let mut tr = attach_soft_dirty(frozen, inj);
        assert!(covers(tr.tracked(), n));
        let dirty = tr.take_dirty(&all(frozen.pid())).unwrap();
        let populated = page_set(&pages(n.0, &[(0, 10)]));
        assert!(page_set(&dirty).is_superset(&populated), "{dirty:x?}");
        // Never-populated pages are not: nothing to copy there.
        assert!(!page_set(&dirty).contains(&(n.0 + 10 * PAGE_SIZE)));
        tr
    });
    t.write("n", "1 50");
    t.write("r", "31");
    let dirty = run(t.pid, |_, _| tracker.take_dirty(&[n, r]).unwrap());
    // n and r may be adjacent: compare page sets.
    let mut want = pages(n.0, &[(1, 1), (50, 1)]);
    want.extend(pages(r.0, &[(31, 1)]));
    assert_eq!(page_set(&dirty), page_set(&want));
}

/// Many separate written pages, and pages on both sides of page 65,536 of a
/// region: found exactly, merged across the boundary. Without PAGEMAP_SCAN (the
/// kernel matrix's 6.1: ENOTTY) the tracker reads /proc/PID/pagemap in chunks of
/// 65,536 entries from the start of each range; with it, more written ranges
/// than one PAGEMAP_SCAN vector holds (4096).
#[test]
fn soft_dirty_many_ranges_and_pagemap_chunks() {
    if !soft_dirty() {
        return;
    }
    let method = predump_core::scan::Scanner::open(std::process::id() as i32)
        .unwrap()
        .method();
    eprintln!("scan method here: {}", method.name());
    let mut t = Testee::track();
    const N: u64 = 66_000;
    let r = t.region("big", N, 0);
    let mut tracker = run(t.pid, |frozen, inj| {
        let mut tr = attach_soft_dirty(frozen, inj);
        // Nothing populated: nothing to report.
        assert_eq!(tr.take_dirty(&[r]).unwrap(), vec![]);
        tr
    });
    let many: Vec<u64> = (1000..11_000).step_by(2).collect();
    for chunk in many.chunks(400) {
        let list: Vec<String> = chunk.iter().map(|p| p.to_string()).collect();
        t.write("big", &list.join(" "));
    }
    t.write("big", "0 65535 65536 65999");
    let dirty = run(t.pid, |_, _| tracker.take_dirty(&[r]).unwrap());
    let mut want: Vec<(u64, u64)> = vec![(0, 1)];
    want.extend(many.iter().map(|&p| (p, 1)));
    want.extend([(65535, 2), (65999, 1)]);
    assert_eq!(dirty.len(), want.len());
    assert_eq!(dirty, pages(r.0, &want));
    let again = run(t.pid, |_, _| tracker.take_dirty(&[r]).unwrap());
    assert!(again.is_empty(), "{} ranges reported again", again.len());
    t.write("big", "65535 65536");
    let dirty = run(t.pid, |_, _| tracker.take_dirty(&[r]).unwrap());
    assert_eq!(dirty, pages(r.0, &[(65535, 2)]));
}

/// The target closed our uffd (as a daemon's close_range would): the stale
/// marker is cleaned up, a new uffd made, and every VMA is new again.
#[test]
fn target_closed_our_uffd() {
    if !uffd_wp() {
        return;
    }
    let mut t = Testee::track();
    let r = t.region("r", 8, 8);
    let fd = run(t.pid, |frozen, inj| {
        let mut tr = attach(frozen, inj);
        tr.take_dirty(&[r]).unwrap();
        tr.target_fd().unwrap()
    });
    t.ask(&format!("close {fd}"), "closed 0");
    assert_eq!(find_ours(t.pid).unwrap(), None);
    let before = fds(t.pid).len();
    run(t.pid, |frozen, inj| {
        let mut tr = attach(frozen, inj);
        assert!(tr.created());
        assert!(covers(tr.new_vmas(), r));
        // Old marker closed, new uffd and marker made.
        assert_eq!(fds(t.pid).len(), before + 1);
        tr.take_dirty(&[r]).unwrap();
        tr.keep();
    });
    t.write("r", "6");
    run(t.pid, |frozen, inj| {
        let mut tr = attach(frozen, inj);
        assert!(!tr.created());
        assert_eq!(tr.take_dirty(&[r]).unwrap(), pages(r.0, &[(6, 1)]));
        tr.release(inj).unwrap();
    });
}

/// uffd-wp scans need no freeze; and more written ranges than one PAGEMAP_SCAN
/// vector holds (4096) are all found and all re-armed.
#[test]
fn while_running_and_many_ranges() {
    if !uffd_wp() {
        return;
    }
    let mut t = Testee::track();
    const N: u64 = 10_000;
    let r = t.region("big", N, N);
    let mut tracker = run(t.pid, attach);
    // Running from here on.
    tracker.take_dirty(&[r]).unwrap();
    let even: Vec<String> = (0..N).step_by(2).map(|p| p.to_string()).collect();
    for chunk in even.chunks(400) {
        t.write("big", &chunk.join(" "));
    }
    let dirty = tracker.take_dirty(&[r]).unwrap();
    let want: Vec<(u64, u64)> = (0..N).step_by(2).map(|p| (p, 1)).collect();
    assert_eq!(dirty.len(), want.len());
    assert_eq!(dirty, pages(r.0, &want));
    assert_eq!(tracker.take_dirty(&[r]).unwrap(), vec![]);
    t.write("big", "9999");
    assert_eq!(tracker.take_dirty(&[r]).unwrap(), pages(r.0, &[(9999, 1)]));
    run(t.pid, |_, inj| tracker.release(inj).unwrap());
}
