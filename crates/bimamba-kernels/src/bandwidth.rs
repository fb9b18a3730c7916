//! A STREAM-style read-bandwidth probe: the denominator of every speed we report.
//!
//! Batch-1 decoding reads every weight once per token, so tokens/s is bounded by
//! `read bandwidth / bytes per token` (SPEC §7). This measures the read side only: each thread
//! XOR-reduces its own contiguous part of a buffer (wide loads, no stores), the best of a few
//! passes is kept, and bytes are counted once per pass. Use a buffer much larger than the last
//! level cache (e.g. 1 GiB) to measure DRAM rather than cache.

use rayon::prelude::*;
use std::time::Instant;

/// Passes over the buffer; the fastest one is reported.
const PASSES: usize = 5;

/// XOR of all words, in eight independent lanes (portable fallback).
fn xor_reduce_lanes(words: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let chunks = words.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] ^= c[l];
        }
    }
    rest.iter().fold(acc.iter().fold(0, |a, b| a ^ b), |a, b| a ^ b)
}

/// XOR of all words with four independent 512-bit accumulators (four loads in flight).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn xor_reduce_avx512(words: &[u64]) -> u64 {
    use std::arch::x86_64::*;
    let blocks = words.len() / 32;
    let p = words.as_ptr();
    let mut a = [_mm512_setzero_si512(); 4];
    for b in 0..blocks {
        for (l, al) in a.iter_mut().enumerate() {
            *al = _mm512_xor_si512(*al, _mm512_loadu_si512(p.add(32 * b + 8 * l).cast()));
        }
    }
    let v = _mm512_xor_si512(_mm512_xor_si512(a[0], a[1]), _mm512_xor_si512(a[2], a[3]));
    let mut lanes = [0u64; 8];
    _mm512_storeu_si512(lanes.as_mut_ptr().cast(), v);
    lanes.iter().chain(&words[32 * blocks..]).fold(0, |x, y| x ^ y)
}

/// XOR of all words with four independent 256-bit accumulators.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn xor_reduce_avx2(words: &[u64]) -> u64 {
    use std::arch::x86_64::*;
    let blocks = words.len() / 16;
    let p = words.as_ptr();
    let mut a = [_mm256_setzero_si256(); 4];
    for b in 0..blocks {
        for (l, al) in a.iter_mut().enumerate() {
            *al = _mm256_xor_si256(*al, _mm256_loadu_si256(p.add(16 * b + 4 * l).cast()));
        }
    }
    let v = _mm256_xor_si256(_mm256_xor_si256(a[0], a[1]), _mm256_xor_si256(a[2], a[3]));
    let mut lanes = [0u64; 4];
    _mm256_storeu_si256(lanes.as_mut_ptr().cast(), v);
    lanes.iter().chain(&words[16 * blocks..]).fold(0, |x, y| x ^ y)
}

/// XOR of all words with the widest vectors this CPU has (the probe must not be slower than the
/// kernels it is the yardstick for).
fn xor_reduce(words: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was just detected.
            return unsafe { xor_reduce_avx512(words) };
        }
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the feature was just detected.
            return unsafe { xor_reduce_avx2(words) };
        }
    }
    xor_reduce_lanes(words)
}

/// Measured read bandwidth in GB/s (10⁹ bytes per second) over a buffer of `bytes` bytes read by
/// `threads` threads (0 means rayon's default). Returns 0.0 for an empty buffer or if a thread
/// pool cannot be built.
pub fn measure_read_bandwidth_gbs(bytes: usize, threads: usize) -> f64 {
    let words = bytes / 8;
    if words == 0 {
        return 0.0;
    }
    let Ok(pool) = rayon::ThreadPoolBuilder::new().num_threads(threads).build() else {
        return 0.0;
    };
    pool.install(|| {
        let n = rayon::current_num_threads();
        let part = words.div_ceil(n);
        // First touch from the threads that will read, so pages land near them.
        let mut buf = vec![0u64; words];
        buf.par_chunks_mut(part).enumerate().for_each(|(c, s)| {
            for (i, w) in s.iter_mut().enumerate() {
                *w = ((c * part + i) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            }
        });
        let mut best = f64::INFINITY;
        for _ in 0..PASSES {
            let start = Instant::now();
            let x = buf.par_chunks(part).map(xor_reduce).reduce(|| 0, |a, b| a ^ b);
            let secs = start.elapsed().as_secs_f64();
            std::hint::black_box(x);
            best = best.min(secs);
        }
        (words * 8) as f64 / best / 1e9
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xor_reduce_covers_every_word() {
        // Every length around the 16- and 32-word blocks, every word a distinct bit.
        for n in [0, 1, 15, 16, 17, 31, 32, 33, 63, 64] {
            let w: Vec<u64> = (0..n).map(|i| 1u64 << i).collect();
            let want = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
            assert_eq!(xor_reduce(&w), want, "n={n}");
            assert_eq!(xor_reduce_lanes(&w), want, "n={n}");
        }
    }

    #[test]
    fn bandwidth_is_positive_and_finite() {
        let g = measure_read_bandwidth_gbs(4 << 20, 1);
        assert!(g.is_finite() && g > 0.0, "{g}");
        assert_eq!(measure_read_bandwidth_gbs(0, 1), 0.0);
    }
}
