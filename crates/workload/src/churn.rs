//! The churn thread: keeps the target's address space changing (mappings appearing,
//! disappearing and changing protection) while a pre-dump runs, so the dumper must
//! cope with VMAs that move under it.
//!
//! It works inside an area of `slots` x SLOT_PAGES pages reserved once with a
//! PROT_NONE mapping, so its mappings never collide with anyone else's and the area
//! is easy to spot in /proc/PID/maps. Any readable slot page always holds the full
//! epoch-0 pattern of its address: content is only ever written before it lands in
//! a slot, and pages are never zapped with MADV_DONTNEED.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use predump_bench::pattern::{fill_page, page_matches};
use predump_core::PAGE_SIZE;

use crate::mem::{die, map_anon};

pub const SLOT_PAGES: usize = 16;
const SLOT_BYTES: usize = SLOT_PAGES * PAGE_SIZE as usize;
const P: usize = PAGE_SIZE as usize;

#[derive(Clone, Copy, PartialEq)]
enum Slot {
    /// Only the PROT_NONE reservation: no content.
    Reserved,
    /// A filled mapping with this protection (it may be PROT_NONE, yet keeps content).
    Mapped(i32),
}

pub struct Churn {
    base: usize,
    nslots: usize,
    /// Slot states. Held for the whole of one churn operation, so whoever holds it
    /// sees the mappings exactly as recorded.
    slots: Mutex<Vec<Slot>>,
    ops: AtomicU64,
    /// Set by the checker while it waits for the lock: the churn loop relocks at once
    /// after each op and would otherwise starve it.
    checker_waiting: AtomicBool,
}

impl Churn {
    /// Reserve the area and map every slot, before anyone else looks at it.
    pub fn new(slots: usize) -> Arc<Churn> {
        let base = map_anon(slots * SLOT_BYTES, libc::PROT_NONE, libc::MAP_NORESERVE) as usize;
        let churn = Churn {
            base,
            nslots: slots,
            slots: Mutex::new(vec![Slot::Reserved; slots]),
            ops: AtomicU64::new(0),
            checker_waiting: AtomicBool::new(false),
        };
        {
            let mut state = churn.slots.lock().unwrap();
            for i in 0..slots {
                churn.map_fresh(&mut state, i);
            }
        }
        Arc::new(churn)
    }

    pub fn start(&self) -> usize {
        self.base
    }
    pub fn bytes(&self) -> usize {
        self.nslots * SLOT_BYTES
    }
    pub fn ops(&self) -> u64 {
        self.ops.load(Relaxed)
    }

    fn slot_addr(&self, i: usize) -> usize {
        self.base + i * SLOT_BYTES
    }

    /// Start the churn thread; it runs until the process exits.
    pub fn spawn(self: &Arc<Self>) {
        let me = self.clone();
        std::thread::Builder::new()
            .name("churn".into())
            .spawn(move || me.run())
            .unwrap_or_else(|_| die("spawn churn thread"));
    }

    fn run(&self) -> ! {
        let mut rng = crate::SplitMix(0xC4E7);
        loop {
            while self.checker_waiting.load(Relaxed) {
                std::thread::yield_now();
            }
            let r = rng.next_u64();
            let mut state = self.slots.lock().unwrap();
            let i = (r % state.len() as u64) as usize;
            match ((r >> 32) % 5, state[i]) {
                // mprotect of a bare reservation would expose zero pages: map instead.
                (_, Slot::Reserved) | (0, _) => self.map_fresh(&mut state, i),
                (1, _) => self.protect(&mut state, i, libc::PROT_READ),
                (2, _) => self.protect(&mut state, i, libc::PROT_NONE),
                (3, _) => self.protect(&mut state, i, libc::PROT_READ | libc::PROT_WRITE),
                _ => self.unmap(&mut state, i),
            }
            drop(state);
            self.ops.fetch_add(1, Relaxed);
        }
    }

    /// Build a filled mapping elsewhere, then move it onto the slot in one mremap, so
    /// the slot never shows a half-filled page.
    fn map_fresh(&self, state: &mut [Slot], i: usize) {
        let addr = self.slot_addr(i);
        let fresh = map_anon(SLOT_BYTES, libc::PROT_READ | libc::PROT_WRITE, 0);
        // SAFETY: `fresh` is a new private RW mapping of SLOT_BYTES owned by us alone.
        let buf = unsafe { std::slice::from_raw_parts_mut(fresh, SLOT_BYTES) };
        fill_page(addr as u64, 0, buf); // the pattern of the FINAL address
                                        // SAFETY: moves our own fresh mapping onto a slot of our own reserved area;
                                        // MREMAP_FIXED atomically replaces whatever the slot held (we hold the lock,
                                        // so no one is reading it).
        let moved = unsafe {
            libc::mremap(
                fresh.cast(),
                SLOT_BYTES,
                SLOT_BYTES,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                addr as *mut libc::c_void,
            )
        };
        if moved == libc::MAP_FAILED {
            die("mremap");
        }
        state[i] = Slot::Mapped(libc::PROT_READ | libc::PROT_WRITE);
    }

    fn protect(&self, state: &mut [Slot], i: usize, prot: i32) {
        // SAFETY: the slot is a mapping of ours; changing its protection is harmless
        // as no reader touches it without the lock we hold.
        if unsafe { libc::mprotect(self.slot_addr(i) as *mut _, SLOT_BYTES, prot) } != 0 {
            die("mprotect");
        }
        state[i] = Slot::Mapped(prot);
    }

    /// Drop the slot's mapping and put the PROT_NONE reservation back. One
    /// mmap(MAP_FIXED) does both at once: a separate munmap would leave a hole where
    /// another thread's mmap could land.
    fn unmap(&self, state: &mut [Slot], i: usize) {
        // SAFETY: MAP_FIXED over our own slot only; nothing else lives there.
        let p = unsafe {
            libc::mmap(
                self.slot_addr(i) as *mut _,
                SLOT_BYTES,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            die("mmap reservation");
        }
        state[i] = Slot::Reserved;
    }

    /// Verify every readable slot page holds epoch 0: (pages checked, mismatches).
    pub fn check(&self) -> (u64, u64) {
        self.checker_waiting.store(true, Relaxed);
        let state = self.slots.lock().unwrap();
        self.checker_waiting.store(false, Relaxed);
        let (mut checked, mut bad) = (0, 0);
        for (i, slot) in state.iter().enumerate() {
            let Slot::Mapped(prot) = *slot else { continue };
            if prot & libc::PROT_READ == 0 {
                continue;
            }
            let addr = self.slot_addr(i);
            // SAFETY: the slot is mapped readable and stays so while we hold the lock.
            let mem = unsafe { std::slice::from_raw_parts(addr as *const u8, SLOT_BYTES) };
            for (k, page) in mem.chunks_exact(P).enumerate() {
                checked += 1;
                if !page_matches((addr + k * P) as u64, 0, page) {
                    bad += 1;
                }
            }
        }
        (checked, bad)
    }
}
