//! Compute threads: CPU-bound work whose every result can be verified, so a pre-dump
//! that disturbs a running thread (a lost register, a skipped or repeated step, a
//! corrupted stack page) shows up as an error, and whose progress counter measures
//! how much a pre-dump slows the target down.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Knuth's MMIX LCG: state' = state * A + C (mod 2^64).
const A: u64 = 6364136223846793005;
const C: u64 = 1442695040888963407;
/// Elements per pass: 8 KiB, on the thread's own stack.
const LEN: usize = 1024;
/// Every this many passes (a power of two), also check the chain against a closed-form jump-ahead.
const JUMP_CHECK_EVERY: u64 = 256;

#[derive(Default)]
pub struct Stats {
    /// Completed passes of LEN steps.
    pub iterations: AtomicU64,
    /// Verification failures seen by the thread itself.
    pub errors: AtomicU64,
}

fn lcg(x: u64) -> u64 {
    x.wrapping_mul(A).wrapping_add(C)
}

/// `lcg` applied `n` times, in O(log n): composing the affine map with itself gives
/// (mul, add) -> (mul*mul, add*(mul+1)), and powers of one map commute.
fn lcg_jump(mut x: u64, mut n: u64) -> u64 {
    let (mut mul, mut add) = (A, C);
    while n > 0 {
        if n & 1 == 1 {
            x = x.wrapping_mul(mul).wrapping_add(add);
        }
        add = add.wrapping_mul(mul.wrapping_add(1));
        mul = mul.wrapping_mul(mul);
        n >>= 1;
    }
    x
}

/// Start `n` compute threads; thread k's chain starts from seed k+1.
pub fn spawn(n: usize) -> Vec<Arc<Stats>> {
    (0..n)
        .map(|k| {
            let stats = Arc::new(Stats::default());
            let s = stats.clone();
            std::thread::Builder::new()
                .name(format!("compute-{k}"))
                .spawn(move || run(k as u64 + 1, &s))
                .unwrap_or_else(|_| crate::mem::die("spawn compute thread"));
            stats
        })
        .collect()
}

fn run(seed: u64, stats: &Stats) -> ! {
    let mut chain = [0u64; LEN];
    let mut state = seed;
    let mut passes = 0u64;
    loop {
        let before = state;
        for x in chain.iter_mut() {
            state = lcg(state);
            *x = state;
        }
        // Make the compiler forget what it just stored, so the check below really
        // reads the array back instead of being proven true and optimized away.
        black_box(&mut chain);
        let mut prev = before;
        let mut bad = false;
        for &x in chain.iter() {
            bad |= x != lcg(prev);
            prev = x;
        }
        passes += 1;
        if passes & (JUMP_CHECK_EVERY - 1) == 0 {
            let expected = lcg_jump(seed, passes * LEN as u64);
            if state != expected {
                bad = true;
                state = expected; // resync so one fault counts once
            }
        }
        if bad {
            stats.errors.fetch_add(1, Relaxed);
        }
        stats.iterations.store(passes, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_equals_steps() {
        let mut x = 42;
        for n in 0..3000u64 {
            assert_eq!(lcg_jump(42, n), x);
            x = lcg(x);
        }
    }
}
