//! AVX512-VNNI binary product with int8 activations (spec: [`crate::act8`]).
//!
//! # The kernel
//! A 64-bit word `w` of a packed row holds the signs of 64 consecutive columns, bit `8i + m`
//! (bit `m` of byte `i`) for column `64w + 8i + m`. Broadcast the word to the 8 qwords of a
//! vector and AND qword `m` with `1 << m` in every byte: byte `8m + i` becomes
//! `2^m · b[64w + 8i + m]`, the sign bits expanded to bytes (8×8-transposed within the 64
//! columns, scaled by a power of two that is the same within each qword). The activations are
//! transposed the same way once per token and word (`vpermb`), and `vpdpbusd(acc, bytes, q)`
//! adds `2^m · b · q` in groups of four into i32 lanes `2m, 2m + 1`. At the end each lane is
//! shifted right by its `m` (exact: every term is a multiple of `2^m`; |lane| ≤ 2⁷ · 4 · 127 per
//! word, far from overflow) and the 16 lanes summed. Per 64 weights and token: one broadcast
//! load and one AND (shared by the tokens of a tile) and one `vpdpbusd`. (Earlier versions
//! used each word as a `k` byte mask for `vmovdqu8 zmm{k}{z}`, 2.4 cycles per word on Zen 4,
//! limited by the mask loads; then `vgf2p8affineqb` to make 0/1 bytes, 2 cycles per word,
//! sharing the multiplier pipes with `vpdpbusd`.) Then
//! `y = scale · (2 · Σ_{bit=1} q − Σ q)` ([`crate::act8::dequantize`]), bit-identical to the
//! scalar twin (integer sums).
//!
//! Tiles: `R` rows × `K` tokens of accumulators. Decode (`t = 1`) uses 8 rows × 1 token (eight
//! independent `vpdpbusd` chains hide its latency); prefill uses 4 × 4: the activations of 4
//! tokens (≤ 20 KiB at 5120 columns) stay in L1 while the range's sign words (a row chunk of
//! the parallel split, a few hundred KiB) stream past them from L2.

// Register tiles index accumulators as acc[row][token]; explicit ranges read clearer.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::ops::Range;

use crate::act8::{check_rows, dequantize, Act8};
use crate::pack::row_bytes;

struct Ctx<'a> {
    bits: &'a [u8],
    /// u64 words per packed row.
    words: usize,
    a: &'a Act8,
    /// First row of the output block and its width: `y[k, i]` is at `y[k·nr + i − r0]`.
    r0: usize,
    nr: usize,
}

/// How many tiles ahead the sign words are prefetched (see [`tile`]): 12 tiles of 8 rows are
/// 30-60 KiB at SSM shapes, far enough to hide DRAM latency at the kernel's pace.
const PREFETCH_TILES: usize = 12;

/// `vpermb` indices: byte `8m + i` ← byte `8i + m` (an 8×8 byte transpose).
const TRANSPOSE8: [u8; 64] = {
    let mut t = [0u8; 64];
    let mut j = 0;
    while j < 64 {
        t[j] = ((j % 8) * 8 + j / 8) as u8;
        j += 1;
    }
    t
};

/// Qword `m`: `1 << m` in each of its 8 bytes.
const BIT_SELECT: [u64; 8] = {
    let mut a = [0u64; 8];
    let mut m = 0;
    while m < 8 {
        a[m] = 0x0101_0101_0101_0101u64 << m;
        m += 1;
    }
    a
};

/// Lane `l` of an accumulator carries the factor `2^(l / 2)`.
const LANE_SHIFT: [u32; 16] = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7];

/// Rows `row0 .. row0 + n` (n ≤ R) × tokens `k0 .. k0 + K`.
#[inline(always)]
unsafe fn tile<const R: usize, const K: usize>(c: &Ctx, row0: usize, n: usize, k0: usize, y: &mut [f32]) {
    unsafe {
        let transpose = _mm512_loadu_si512(TRANSPOSE8.as_ptr().cast());
        let select = _mm512_loadu_si512(BIT_SELECT.as_ptr().cast());
        let mut acc = [[_mm512_setzero_si512(); K]; R];
        let bits = c.bits.as_ptr().cast::<i64>();
        let q = c.a.q.as_ptr();
        // Rows past the range read the last row again (in bounds); they are never stored.
        let rows: [usize; R] = std::array::from_fn(|r| (row0 + r.min(n - 1)) * c.words);
        // The tile walks R rows word by word, a pattern the hardware prefetchers follow poorly from
        // DRAM: prefetch the tile PREFETCH_TILES ahead, R·8 bytes per word step (its R rows are
        // contiguous, R · words · 8 bytes, so the steps cover it exactly). A prefetch past the end
        // of the matrix is harmless (never faults).
        let ahead = c.bits.as_ptr().wrapping_add((row0 + PREFETCH_TILES * R) * c.words * 8);
        for w in 0..c.words {
            _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(w * R * 8).cast());
            let qv: [__m512i; K] = std::array::from_fn(|kk| {
                _mm512_permutexvar_epi8(transpose, _mm512_loadu_si512(q.add((k0 + kk) * c.a.stride + 64 * w).cast()))
            });
            for r in 0..R {
                let word = _mm512_set1_epi64(bits.add(rows[r] + w).read_unaligned());
                let bm = _mm512_and_si512(word, select);
                for kk in 0..K {
                    acc[r][kk] = _mm512_dpbusd_epi32(acc[r][kk], bm, qv[kk]);
                }
            }
        }
        let shift = _mm512_loadu_si512(LANE_SHIFT.as_ptr().cast());
        for r in 0..n {
            for kk in 0..K {
                let pos = _mm512_reduce_add_epi32(_mm512_srav_epi32(acc[r][kk], shift));
                let k = k0 + kk;
                y[k * c.nr + row0 + r - c.r0] = dequantize(pos, k, c.a);
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
unsafe fn rows_k1(c: &Ctx, range: Range<usize>, k: usize, y: &mut [f32]) {
    unsafe {
        let mut i = range.start;
        while i < range.end {
            let n = (range.end - i).min(8);
            tile::<8, 1>(c, i, n, k, y);
            i += n;
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
unsafe fn rows_k4(c: &Ctx, range: Range<usize>, k: usize, y: &mut [f32]) {
    unsafe {
        let mut i = range.start;
        while i < range.end {
            let n = (range.end - i).min(4);
            tile::<4, 4>(c, i, n, k, y);
            i += n;
        }
    }
}

/// Binary product with int8 activations over output rows `range`: `y: [t, range.len()]`.
///
/// # Safety
/// The CPU must support AVX-512 F, BW, VNNI and VBMI.
pub unsafe fn binary_rows(bits: &[u8], cols: usize, a: &Act8, range: Range<usize>, y: &mut [f32]) {
    unsafe {
        check_rows(bits, cols, a, &range, y);
        let rb = row_bytes(cols);
        let t = a.tokens();
        let c = Ctx { bits, words: rb / 8, a, r0: range.start, nr: range.len() };
        // The tiles prefetch PREFETCH_TILES ahead of themselves; request the range's first
        // PREFETCH_TILES tiles (in decode each range is one of a few row chunks) before starting.
        let head = (range.len().min(PREFETCH_TILES * 8) * rb).div_ceil(64);
        let first = bits.as_ptr().add(range.start * rb);
        for line in 0..head {
            _mm_prefetch::<_MM_HINT_T1>(first.add(64 * line).cast());
        }
        let full = t / 4 * 4;
        for k in (0..full).step_by(4) {
            rows_k4(&c, range.clone(), k, y);
        }
        for k in full..t {
            rows_k1(&c, range.clone(), k, y);
        }
    }
}
