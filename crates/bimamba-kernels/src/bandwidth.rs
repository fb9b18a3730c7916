//! A STREAM-style read-bandwidth probe: the denominator of every speed we report.
//!
//! Batch-1 decoding reads every weight once per token, so tokens/s is bounded by
//! `read bandwidth / bytes per token` (ARCHITECTURE.md §7). This measures the read side only: each thread
//! XOR-reduces its own contiguous part of a buffer as 8 interleaved sequential streams (wide
//! loads, no stores); passes are timed in 16 MiB segments and the fastest segment is reported.
//! Use a buffer much larger than the last level cache (e.g. 512 MiB - 1 GiB) to measure DRAM
//! rather than cache. A measurement takes about two seconds.

use rayon::prelude::*;
use std::time::Instant;

/// Passes over the buffer: at least `MIN_PASSES`, and more until `MIN_SECONDS` have passed, so
/// that on a busy machine some segments run with every thread on a core (as the kernels'
/// best-of-many timings do).
const MIN_PASSES: usize = 3;
const MIN_SECONDS: f64 = 2.0;
/// Each pass is timed in segments of this many bytes; the fastest segment is reported.
const SEGMENT_BYTES: usize = 16 << 20;

/// Concurrent sequential streams per thread. One stream leaves a Zen 4 core far below what the
/// kernels reach (they walk 8-16 weight rows at once), so the probe walks 8 as well.
const STREAMS: usize = 8;
/// Words per stream step: one 64-byte cache line.
const LINE_WORDS: usize = 8;

/// XOR of all words (portable fallback): `STREAMS` interleaved streams of whole lines, then
/// the remainder.
fn xor_reduce_lanes(words: &[u64]) -> u64 {
    let lines = words.len() / (STREAMS * LINE_WORDS);
    let len = lines * LINE_WORDS;
    let mut acc = [[0u64; LINE_WORDS]; STREAMS];
    for l in 0..lines {
        for (s, a) in acc.iter_mut().enumerate() {
            let line = &words[s * len + l * LINE_WORDS..s * len + (l + 1) * LINE_WORDS];
            for (ai, w) in a.iter_mut().zip(line) {
                *ai ^= w;
            }
        }
    }
    acc.iter().flatten().chain(&words[STREAMS * len..]).fold(0, |x, y| x ^ y)
}

/// [`xor_reduce_lanes`] with one 512-bit load per stream step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn xor_reduce_avx512(words: &[u64]) -> u64 {
    unsafe {
        use std::arch::x86_64::*;
        let lines = words.len() / (STREAMS * LINE_WORDS);
        let len = lines * LINE_WORDS;
        let p = words.as_ptr();
        let mut a = [_mm512_setzero_si512(); STREAMS];
        for l in 0..lines {
            for (s, acc) in a.iter_mut().enumerate() {
                *acc = _mm512_xor_si512(*acc, _mm512_loadu_si512(p.add(s * len + l * LINE_WORDS).cast()));
            }
        }
        let mut lanes = [0u64; 8];
        let v = a.iter().fold(_mm512_setzero_si512(), |x, y| _mm512_xor_si512(x, *y));
        _mm512_storeu_si512(lanes.as_mut_ptr().cast(), v);
        lanes.iter().chain(&words[STREAMS * len..]).fold(0, |x, y| x ^ y)
    }
}

/// [`xor_reduce_lanes`] with two 256-bit loads per stream step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn xor_reduce_avx2(words: &[u64]) -> u64 {
    unsafe {
        use std::arch::x86_64::*;
        let lines = words.len() / (STREAMS * LINE_WORDS);
        let len = lines * LINE_WORDS;
        let p = words.as_ptr();
        let mut a = [_mm256_setzero_si256(); STREAMS];
        for l in 0..lines {
            for (s, acc) in a.iter_mut().enumerate() {
                let q = p.add(s * len + l * LINE_WORDS);
                let both = _mm256_xor_si256(_mm256_loadu_si256(q.cast()), _mm256_loadu_si256(q.add(4).cast()));
                *acc = _mm256_xor_si256(*acc, both);
            }
        }
        let mut lanes = [0u64; 4];
        let v = a.iter().fold(_mm256_setzero_si256(), |x, y| _mm256_xor_si256(x, *y));
        _mm256_storeu_si256(lanes.as_mut_ptr().cast(), v);
        lanes.iter().chain(&words[STREAMS * len..]).fold(0, |x, y| x ^ y)
    }
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
        // Time segments rather than whole passes: on a shared machine a 40 ms pass is rarely
        // left alone by the scheduler, a 1-2 ms segment often is. Segments are read in order,
        // so each one was last touched a whole buffer earlier and comes from DRAM.
        let seg = SEGMENT_BYTES.div_ceil(8).min(words);
        let mut best_gbs: f64 = 0.0;
        let t0 = Instant::now();
        let mut passes = 0;
        while passes < MIN_PASSES || t0.elapsed().as_secs_f64() < MIN_SECONDS {
            passes += 1;
            for s in buf.chunks(seg) {
                let start = Instant::now();
                let x = s.par_chunks(s.len().div_ceil(n)).map(xor_reduce).reduce(|| 0, |a, b| a ^ b);
                let secs = start.elapsed().as_secs_f64();
                std::hint::black_box(x);
                best_gbs = best_gbs.max((s.len() * 8) as f64 / secs / 1e9);
            }
        }
        best_gbs
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xor_reduce_covers_every_word() {
        // Lengths around the 64-word (8 streams x 1 line) step, every word a distinct bit.
        for n in [0, 1, 7, 8, 9, 63, 64] {
            let w: Vec<u64> = (0..n).map(|i| 1u64 << i).collect();
            let want = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
            assert_eq!(xor_reduce(&w), want, "n={n}");
            assert_eq!(xor_reduce_lanes(&w), want, "n={n}");
        }
        // Longer buffers: every stream and the tail must be read.
        for n in [128, 200, 1000] {
            let w: Vec<u64> = (0..n as u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect();
            let want = w.iter().fold(0, |a, b| a ^ b);
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
