//! Whole pre-dump chains through `pre_dump`, with every tracking backend this
//! kernel has (uffd-wp here, soft-dirty in the kernel matrix's Linux 6.1):
//! pre-dumps while the target writes between them, then the final dump; the
//! pages the chain gives (each run's pages image read as the pagemap the run
//! wrote says, plus its PE_PARENT pages looked up in the run before) must equal
//! the stopped target's memory.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::Path;

use predump_core::drain::DrainConfig;
use predump_core::image::pagemap::{pagemap_file_name, pages_file_name, Pagemap};
use predump_core::predump::{pre_dump, FinalDump, Mode, ParentChain, ParentOrigin, TrackOptions};
use predump_core::track::Backend;
use predump_core::{PageRange, PAGE_SIZE};

mod common;
use common::Testee;

/// The chain so far: page address -> contents.
type Chain = HashMap<u64, Vec<u8>>;

fn ranges_pages(ranges: &[PageRange]) -> impl Iterator<Item = u64> + '_ {
    ranges
        .iter()
        .flat_map(|r| (0..r.pages).map(move |i| r.start + i * PAGE_SIZE))
}

/// The pagemap a run wrote into `dir`, as its (PE_PRESENT, PE_PARENT) ranges.
fn read_pagemap(dir: &Path, pid: i32) -> (Pagemap, Vec<PageRange>, Vec<PageRange>) {
    let file = dir.join(pagemap_file_name(pid));
    let m = Pagemap::decode(&std::fs::read(&file).unwrap(), "pagemap").unwrap();
    let (mut present, mut parent) = (Vec::new(), Vec::new());
    for e in &m.entries {
        let to = if e.is_present() {
            &mut present
        } else {
            &mut parent
        };
        to.push(PageRange::new(e.vaddr, e.nr_pages));
    }
    (m, present, parent)
}

/// Applies one run's images to the chain: its pages image in its pagemap's
/// order, its PE_PARENT pages from the chain before (which must hold them).
fn apply(chain: &Chain, pages_path: &Path, regions: &[PageRange], parent: &[PageRange]) -> Chain {
    let mut next = Chain::new();
    for p in ranges_pages(parent) {
        let old = chain
            .get(&p)
            .unwrap_or_else(|| panic!("PE_PARENT for {p:#x}, which the chain does not hold"));
        next.insert(p, old.clone());
    }
    let file = std::fs::File::open(pages_path).unwrap();
    let pages = file.metadata().unwrap().len() / PAGE_SIZE;
    assert_eq!(
        pages,
        regions.iter().map(|r| r.pages).sum::<u64>(),
        "the pages image holds the pagemap's present pages"
    );
    for (i, p) in ranges_pages(regions).enumerate() {
        let mut buf = vec![0u8; PAGE_SIZE as usize];
        file.read_exact_at(&mut buf, i as u64 * PAGE_SIZE).unwrap();
        next.insert(p, buf);
    }
    next
}

fn chain_pages(chain: &Chain) -> Vec<PageRange> {
    let mut v: Vec<u64> = chain.keys().copied().collect();
    v.sort_unstable();
    let mut out = Vec::new();
    for p in v {
        predump_core::push_merged(&mut out, p, 1);
    }
    out
}

fn run_chain(backend: Backend, mode: Mode) {
    let dir = std::env::temp_dir().join(format!(
        "predump-chain-{}-{}-{}",
        backend.name(),
        mode.name(),
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut t = Testee::track_detached();
    t.ask("region a 512 512", "region");
    t.ask("region b 64 16", "region");
    let mut chain = Chain::new();
    let mut generation: Option<String> = None;
    for i in 0..5 {
        let last = i == 4;
        let opts = TrackOptions {
            backend: Some(backend),
            generation: format!("g{i}"),
            parent: generation.as_ref().map(|g| ParentChain {
                pages: chain_pages(&chain),
                origin: ParentOrigin::Armed(g.clone()),
            }),
            final_dump: last.then_some(FinalDump {
                leave_stopped: true,
            }),
            auto: false,
        };
        let run_dir = dir.join(format!("{i}"));
        std::fs::create_dir(&run_dir).unwrap();
        let run_mode = if last { Mode::Read } else { mode };
        let r = pre_dump(
            t.pid,
            &run_dir,
            run_mode,
            &DrainConfig::default(),
            &opts,
            None,
        )
        .unwrap_or_else(|e| panic!("run {i}: {e}"));
        assert_eq!(r.track_note, None, "run {i}");
        if i > 0 {
            assert!(
                !r.parent_regions.is_empty(),
                "run {i} left nothing to its parent"
            );
        }
        // The pagemap the run wrote is the report's pages, in the pages image's order.
        let (m, present, parent) = read_pagemap(&run_dir, t.pid);
        assert_eq!(
            (&present, &parent),
            (&r.regions, &r.parent_regions),
            "run {i}"
        );
        assert_eq!(m.entries.len(), r.pagemap_entries, "run {i}");
        let path = run_dir.join(pages_file_name(m.pages_id));
        chain = apply(&chain, &path, &present, &parent);
        generation = Some(opts.generation.clone());
        if !last {
            // New contents in both regions, a new region, pages never touched before.
            t.ask(
                &format!("write a {} {}..{}", i * 7, 100 + i * 50, 120 + i * 50),
                "written",
            );
            t.ask(&format!("write b {}", 20 + i), "written");
            t.ask(&format!("region n{i} 8 4"), "region");
        }
    }
    // Left stopped: compare every page the chain holds with the memory.
    let mem = std::fs::File::open(format!("/proc/{}/mem", t.pid)).unwrap();
    let mut bad = Vec::new();
    let mut buf = vec![0u8; PAGE_SIZE as usize];
    for (p, page) in &chain {
        mem.read_exact_at(&mut buf, *p).unwrap();
        if buf != *page {
            bad.push(*p);
        }
    }
    bad.sort_unstable();
    assert!(
        bad.is_empty(),
        "{} of {} pages differ: {bad:x?}",
        bad.len(),
        chain.len()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn works(backend: Backend) -> bool {
    let ok = backend.works();
    if !ok {
        let required = std::env::var("PREDUMP_TEST_REQUIRE")
            .is_ok_and(|v| v.split(',').any(|b| b.trim() == backend.name()));
        assert!(
            !required,
            "PREDUMP_TEST_REQUIRE names {}, but its probe says no",
            backend.name()
        );
        eprintln!("no {} on this kernel: test skipped", backend.name());
        return false;
    }
    // uffd-wp tracking makes its userfaultfd inside the target: injection (not on
    // every aarch64 kernel: inject/aarch64.rs).
    if let (Backend::UffdWp, Err(why)) = (backend, predump_core::inject::supported()) {
        eprintln!("{why}: test skipped");
        return false;
    }
    true
}

#[test]
fn chain_with_soft_dirty_equals_memory() {
    if works(Backend::SoftDirty) {
        run_chain(Backend::SoftDirty, Mode::Read);
    }
}

#[test]
fn chain_with_uffd_wp_equals_memory() {
    if works(Backend::UffdWp) {
        run_chain(Backend::UffdWp, Mode::Read);
    }
}

#[test]
fn freeze_free_chain_equals_memory() {
    if works(Backend::UffdWp) {
        run_chain(Backend::UffdWp, Mode::FreezeFree);
    }
}
