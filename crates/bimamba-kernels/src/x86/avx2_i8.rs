//! AVX2 binary product with int8 activations (spec: [`crate::act8`]), for CPUs without
//! AVX512-VNNI.
//!
//! # The kernel
//! A 32-bit word `w` of a packed row holds the signs of columns `32w .. 32w + 32` (bit `j` of the
//! word, LSB first, is column `32w + j`). Broadcast it, `vpshufb` byte `j / 8` into byte lane `j`,
//! AND with `1 << (j % 8)` and compare with the same mask: byte `j` becomes 0xFF where the bit is 1
//! and 0 elsewhere. AND that with the 32 int8 activations and `vpmaddubsw(1, ·)` adds adjacent
//! pairs into i16 lanes (|pair| ≤ 254); 128 words of pairs fit in i16 (128 · 254 < 2¹⁵), so the
//! i16 accumulators are widened to i32 (`vpmaddwd` with 1) once per 128 words. Per 32 weights and
//! token: one AND, one `vpmaddubsw`, one `vpaddw`; the 4-instruction expansion is shared by the
//! tokens of a tile (4 rows × 1 token for decode, 2 × 4 for prefill). Integer sums, so the result
//! is bit-identical to the scalar twin.

// Register tiles index accumulators as acc[row][token]; explicit ranges read clearer.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::ops::Range;

use crate::act8::{check_rows, dequantize, Act8};
use crate::pack::row_bytes;

/// How many tiles ahead the sign words are prefetched.
const PREFETCH_TILES: usize = 4;

/// Words (of 32 columns) between two widenings of the i16 accumulators.
const WIDEN_EVERY: usize = 128;

/// `vpshufb` control: byte lane `j` takes byte `j / 8` of the broadcast word (within each 128-bit
/// half the word's 4 bytes repeat, so lanes 16..32 find bytes 2 and 3 at positions 2 and 3).
const SHUF: [u8; 32] = {
    let mut s = [0u8; 32];
    let mut j = 0;
    while j < 32 {
        s[j] = (j / 8) as u8;
        j += 1;
    }
    s
};

/// Byte lane `j`: `1 << (j % 8)`.
const SELECT: [u8; 32] = {
    let mut s = [0u8; 32];
    let mut j = 0;
    while j < 32 {
        s[j] = 1 << (j % 8);
        j += 1;
    }
    s
};

struct Ctx<'a> {
    bits: &'a [u8],
    /// u32 words per packed row.
    words: usize,
    a: &'a Act8,
    r0: usize,
    nr: usize,
}

#[inline(always)]
unsafe fn hsum_epi32(v: __m256i) -> i32 {
    unsafe {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        _mm_cvtsi128_si32(s)
    }
}

/// Rows `row0 .. row0 + n` (n ≤ R) × tokens `k0 .. k0 + K`.
#[inline(always)]
unsafe fn tile<const R: usize, const K: usize>(c: &Ctx, row0: usize, n: usize, k0: usize, y: &mut [f32]) {
    unsafe {
        let shuf = _mm256_loadu_si256(SHUF.as_ptr().cast());
        let select = _mm256_loadu_si256(SELECT.as_ptr().cast());
        let ones8 = _mm256_set1_epi8(1);
        let ones16 = _mm256_set1_epi16(1);
        let mut acc32 = [[_mm256_setzero_si256(); K]; R];
        let bits = c.bits.as_ptr().cast::<i32>();
        let q = c.a.q.as_ptr();
        // Rows past the range read the last row again (in bounds); they are never stored.
        let rows: [usize; R] = std::array::from_fn(|r| (row0 + r.min(n - 1)) * c.words);
        // Prefetch the tile PREFETCH_TILES ahead, R·4 bytes per word step (as the AVX-512 kernel).
        let ahead = c.bits.as_ptr().wrapping_add((row0 + PREFETCH_TILES * R) * c.words * 4);
        let mut w0 = 0;
        while w0 < c.words {
            let w1 = (w0 + WIDEN_EVERY).min(c.words);
            let mut acc16 = [[_mm256_setzero_si256(); K]; R];
            for w in w0..w1 {
                if (w * R * 4) % 64 < R * 4 {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(w * R * 4).cast());
                }
                let qv: [__m256i; K] =
                    std::array::from_fn(|kk| _mm256_loadu_si256(q.add((k0 + kk) * c.a.stride + 32 * w).cast()));
                for r in 0..R {
                    let word = _mm256_set1_epi32(bits.add(rows[r] + w).read_unaligned());
                    let spread = _mm256_and_si256(_mm256_shuffle_epi8(word, shuf), select);
                    let mask = _mm256_cmpeq_epi8(spread, select);
                    for kk in 0..K {
                        let sel = _mm256_and_si256(mask, qv[kk]);
                        acc16[r][kk] = _mm256_add_epi16(acc16[r][kk], _mm256_maddubs_epi16(ones8, sel));
                    }
                }
            }
            for r in 0..R {
                for kk in 0..K {
                    acc32[r][kk] = _mm256_add_epi32(acc32[r][kk], _mm256_madd_epi16(acc16[r][kk], ones16));
                }
            }
            w0 = w1;
        }
        for r in 0..n {
            for kk in 0..K {
                let k = k0 + kk;
                y[k * c.nr + row0 + r - c.r0] = dequantize(hsum_epi32(acc32[r][kk]), k, c.a);
            }
        }
    }
}

#[target_feature(enable = "avx2")]
unsafe fn rows_k1(c: &Ctx, range: Range<usize>, k: usize, y: &mut [f32]) {
    unsafe {
        let mut i = range.start;
        while i < range.end {
            let n = (range.end - i).min(4);
            tile::<4, 1>(c, i, n, k, y);
            i += n;
        }
    }
}

#[target_feature(enable = "avx2")]
unsafe fn rows_k4(c: &Ctx, range: Range<usize>, k: usize, y: &mut [f32]) {
    unsafe {
        let mut i = range.start;
        while i < range.end {
            let n = (range.end - i).min(2);
            tile::<2, 4>(c, i, n, k, y);
            i += n;
        }
    }
}

/// Binary product with int8 activations over output rows `range`: `y: [t, range.len()]`.
///
/// # Safety
/// The CPU must support AVX2.
pub unsafe fn binary_rows(bits: &[u8], cols: usize, a: &Act8, range: Range<usize>, y: &mut [f32]) {
    unsafe {
        check_rows(bits, cols, a, &range, y);
        let rb = row_bytes(cols);
        let t = a.tokens();
        let c = Ctx { bits, words: rb / 4, a, r0: range.start, nr: range.len() };
        let full = t / 4 * 4;
        for k in (0..full).step_by(4) {
            rows_k4(&c, range.clone(), k, y);
        }
        for k in full..t {
            rows_k1(&c, range.clone(), k, y);
        }
    }
}
