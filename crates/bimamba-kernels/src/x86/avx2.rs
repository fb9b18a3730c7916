//! AVX2 + FMA + F16C dense kernels. Every function here requires those features at runtime; the
//! dispatcher in `lib.rs` checks [`crate::Isa::is_supported`] before calling. The AVX2 binary
//! kernel is in `avx2_lut.rs`.
//!
//! bf16 widens by a 16-bit left shift, f16 by F16C `vcvtph2ps`, i8 (the q8 codes) by sign
//! extension to i32 (`vpmovsxbd`) and `vcvtdq2ps` (exact: |q| ≤ 127); all in registers, then FMA
//! over register tiles of 4 rows × 2 tokens (8 rows for one token; 16 ymm registers).

// Register tiles index accumulators as acc[row][token]; explicit ranges read clearer.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::ops::Range;

use half::{bf16, f16};

use crate::tiling::{for_each_tile, Tiles};

/// Dense tiles: 4 rows × 2 tokens, 8 rows for one token.
const DENSE_TILES: Tiles = Tiles { rb: 4, tb: 2, rbv: 8 };

/// Horizontal sum of 8 lanes.
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

/// Loading 8 consecutive weights as f32 lanes.
trait Load8: Copy + Default {
    /// Loads 8 elements from `p` (all must be readable).
    unsafe fn load8(p: *const Self) -> __m256;
    /// Loads the first `n < 8` elements from `p`, zeros in the other lanes, reading only `n`.
    #[inline(always)]
    unsafe fn load_partial(p: *const Self, n: usize) -> __m256 {
        unsafe {
            let mut buf = [Self::default(); 8];
            std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n);
            Self::load8(buf.as_ptr())
        }
    }
}

impl Load8 for f32 {
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> __m256 {
        unsafe { _mm256_loadu_ps(p) }
    }
}

impl Load8 for bf16 {
    /// bf16 is the top half of an f32: zero-extend to 32 bits and shift left by 16 (exact).
    #[inline(always)]
    unsafe fn load8(p: *const bf16) -> __m256 {
        unsafe {
            let h = _mm_loadu_si128(p.cast());
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        }
    }
}

impl Load8 for f16 {
    #[inline(always)]
    unsafe fn load8(p: *const f16) -> __m256 {
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }
}

impl Load8 for i8 {
    /// Sign-extend 8 codes to i32, convert to f32 (exact for every i8).
    #[inline(always)]
    unsafe fn load8(p: *const i8) -> __m256 {
        unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p.cast()))) }
    }
}

struct DenseCtx<'a, E> {
    w: &'a [E],
    cols: usize,
    x: &'a [f32],
    r0: usize,
    nr: usize,
}

/// One 8-column chunk `ch` of a dense tile; `n < 8` marks the partial tail chunk.
#[inline(always)]
unsafe fn dense_chunk<E: Load8, const RB: usize, const TB: usize>(
    acc: &mut [[__m256; TB]; RB],
    wp: *const E,
    xp: *const f32,
    cols: usize,
    ch: usize,
    n: usize,
) {
    unsafe {
        let mut wv = [_mm256_setzero_ps(); RB];
        for (i, wi) in wv.iter_mut().enumerate() {
            let p = wp.add(i * cols + 8 * ch);
            *wi = if n == 8 { E::load8(p) } else { E::load_partial(p, n) };
        }
        for kk in 0..TB {
            let p = xp.add(kk * cols + 8 * ch);
            let xv = if n == 8 { f32::load8(p) } else { f32::load_partial(p, n) };
            for i in 0..RB {
                acc[i][kk] = _mm256_fmadd_ps(wv[i], xv, acc[i][kk]);
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dense_tile<E: Load8, const RB: usize, const TB: usize>(c: &DenseCtx<E>, r: usize, k: usize, y: &mut [f32]) {
    unsafe {
        let cols = c.cols;
        let wp = c.w.as_ptr().add(r * cols);
        let xp = c.x.as_ptr().add(k * cols);
        let mut acc = [[_mm256_setzero_ps(); TB]; RB];
        let nfull = cols / 8;
        for ch in 0..nfull {
            dense_chunk(&mut acc, wp, xp, cols, ch, 8);
        }
        if !cols.is_multiple_of(8) {
            dense_chunk(&mut acc, wp, xp, cols, nfull, cols % 8);
        }
        for (i, acc_i) in acc.iter().enumerate() {
            for (kk, a) in acc_i.iter().enumerate() {
                *y.get_unchecked_mut((k + kk) * c.nr + r - c.r0 + i) = hsum(*a);
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dense_rows<E: Load8>(w: &[E], cols: usize, x: &[f32], t: usize, range: Range<usize>, y: &mut [f32]) {
    unsafe {
        assert!(w.len() >= range.end * cols && x.len() >= t * cols);
        assert_eq!(y.len(), t * range.len());
        let c = DenseCtx { w, cols, x, r0: range.start, nr: range.len() };
        for_each_tile(range, t, DENSE_TILES, |r, nrows, k, ntok| match (nrows, ntok) {
            (4, 2) => dense_tile::<E, 4, 2>(&c, r, k, y),
            (1, 2) => dense_tile::<E, 1, 2>(&c, r, k, y),
            (8, 1) => dense_tile::<E, 8, 1>(&c, r, k, y),
            _ => dense_tile::<E, 1, 1>(&c, r, k, y),
        });
    }
}

/// Dense f32 product over output rows `range`: `y: [t, range.len()]`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
pub unsafe fn dense_rows_f32(w: &[f32], cols: usize, x: &[f32], t: usize, range: Range<usize>, y: &mut [f32]) {
    unsafe { dense_rows(w, cols, x, t, range, y) }
}

/// Dense bf16 product (see [`dense_rows_f32`]).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
pub unsafe fn dense_rows_bf16(w: &[bf16], cols: usize, x: &[f32], t: usize, range: Range<usize>, y: &mut [f32]) {
    unsafe { dense_rows(w, cols, x, t, range, y) }
}

/// Dense f16 product (see [`dense_rows_f32`]).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
pub unsafe fn dense_rows_f16(w: &[f16], cols: usize, x: &[f32], t: usize, range: Range<usize>, y: &mut [f32]) {
    unsafe { dense_rows(w, cols, x, t, range, y) }
}

/// Dense product over i8 codes (the q8 kernel before its row scales; see `crate::q8_gemm`).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
pub unsafe fn dense_rows_i8(w: &[i8], cols: usize, x: &[f32], t: usize, range: Range<usize>, y: &mut [f32]) {
    unsafe { dense_rows(w, cols, x, t, range, y) }
}
