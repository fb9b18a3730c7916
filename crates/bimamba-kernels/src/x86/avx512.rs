//! AVX-512 (F + BW + VL) dense kernels. Every function here requires those features at runtime;
//! the dispatcher in `lib.rs` checks [`crate::Isa::is_supported`] before calling. The AVX-512
//! binary kernel is in `avx512_lut.rs`.
//!
//! bf16 widens by a 16-bit left shift, f16 by `vcvtph2ps`, i8 (the q8 codes) by sign extension
//! to i32 (`vpmovsxbd`) and `vcvtdq2ps` (exact: |q| ≤ 127); all in registers, then FMA over
//! register tiles of 4 rows × 4 tokens (8 rows for one token).

// Register tiles index accumulators as acc[row][token]; explicit ranges read clearer.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::ops::Range;

use half::{bf16, f16};

use crate::tiling::{for_each_tile, Tiles};

/// Dense tiles: 4 rows × 4 tokens, 8 rows for one token.
const DENSE_TILES: Tiles = Tiles { rb: 4, tb: 4, rbv: 8 };

/// How many rows ahead the single-token dense tiles prefetch their weights (into L2).
const DENSE_PREFETCH_ROWS: usize = 16;

/// Mask of the first `n < 16` lanes.
#[inline(always)]
fn tail_mask(n: usize) -> u16 {
    ((1u32 << n) - 1) as u16
}

/// Loading 16 consecutive weights as f32 lanes.
trait Load16: Copy {
    /// Loads the lanes set in `lanes` from `p`, zeroing the others (never touching their memory).
    unsafe fn load16(p: *const Self, lanes: u16) -> __m512;
}

impl Load16 for f32 {
    #[inline(always)]
    unsafe fn load16(p: *const f32, lanes: u16) -> __m512 {
        unsafe {
            if lanes == 0xffff {
                _mm512_loadu_ps(p)
            } else {
                _mm512_maskz_loadu_ps(lanes, p)
            }
        }
    }
}

#[inline(always)]
unsafe fn load16_u16(p: *const u16, lanes: u16) -> __m256i {
    unsafe {
        if lanes == 0xffff {
            _mm256_loadu_si256(p.cast())
        } else {
            _mm256_maskz_loadu_epi16(lanes, p.cast())
        }
    }
}

impl Load16 for bf16 {
    /// bf16 is the top half of an f32: zero-extend to 32 bits and shift left by 16 (exact).
    #[inline(always)]
    unsafe fn load16(p: *const bf16, lanes: u16) -> __m512 {
        unsafe {
            let h = load16_u16(p.cast(), lanes);
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        }
    }
}

impl Load16 for f16 {
    #[inline(always)]
    unsafe fn load16(p: *const f16, lanes: u16) -> __m512 {
        unsafe { _mm512_cvtph_ps(load16_u16(p.cast(), lanes)) }
    }
}

impl Load16 for i8 {
    /// Sign-extend 16 codes to i32, convert to f32 (exact for every i8).
    #[inline(always)]
    unsafe fn load16(p: *const i8, lanes: u16) -> __m512 {
        unsafe {
            let b = if lanes == 0xffff { _mm_loadu_si128(p.cast()) } else { _mm_maskz_loadu_epi8(lanes, p) };
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b))
        }
    }
}

struct DenseCtx<'a, E> {
    w: &'a [E],
    cols: usize,
    x: &'a [f32],
    r0: usize,
    nr: usize,
}

/// One 16-column chunk `ch` of a dense tile; `lanes` limits the loads to valid columns.
/// (A helper rather than a closure: it is inlined into the `target_feature` caller.)
#[inline(always)]
unsafe fn dense_chunk<E: Load16, const RB: usize, const TB: usize>(
    acc: &mut [[__m512; TB]; RB],
    wp: *const E,
    xp: *const f32,
    cols: usize,
    ch: usize,
    lanes: u16,
) {
    unsafe {
        let mut wv = [_mm512_setzero_ps(); RB];
        for (i, wi) in wv.iter_mut().enumerate() {
            *wi = E::load16(wp.add(i * cols + 16 * ch), lanes);
        }
        // Single-token tiles stream each weight once: fetch the same columns DENSE_PREFETCH_ROWS
        // rows further on into L2, once per 64-byte line (the hardware prefetchers alone left the
        // q8 head at 45% of one core's read bandwidth). Multi-token tiles reuse rows from cache.
        if TB == 1 && (16 * ch * std::mem::size_of::<E>()).is_multiple_of(64) {
            for i in 0..RB {
                _mm_prefetch::<_MM_HINT_T1>(wp.wrapping_add((i + DENSE_PREFETCH_ROWS) * cols + 16 * ch).cast());
            }
        }
        for kk in 0..TB {
            let xv = f32::load16(xp.add(kk * cols + 16 * ch), lanes);
            for i in 0..RB {
                acc[i][kk] = _mm512_fmadd_ps(wv[i], xv, acc[i][kk]);
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn dense_tile<E: Load16, const RB: usize, const TB: usize>(c: &DenseCtx<E>, r: usize, k: usize, y: &mut [f32]) {
    unsafe {
        let cols = c.cols;
        let wp = c.w.as_ptr().add(r * cols);
        let xp = c.x.as_ptr().add(k * cols);
        let mut acc = [[_mm512_setzero_ps(); TB]; RB];
        let nfull = cols / 16;
        for ch in 0..nfull {
            dense_chunk(&mut acc, wp, xp, cols, ch, 0xffff);
        }
        if !cols.is_multiple_of(16) {
            dense_chunk(&mut acc, wp, xp, cols, nfull, tail_mask(cols % 16));
        }
        for (i, acc_i) in acc.iter().enumerate() {
            for (kk, a) in acc_i.iter().enumerate() {
                *y.get_unchecked_mut((k + kk) * c.nr + r - c.r0 + i) = _mm512_reduce_add_ps(*a);
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn dense_rows<E: Load16>(w: &[E], cols: usize, x: &[f32], t: usize, range: Range<usize>, y: &mut [f32]) {
    unsafe {
        assert!(w.len() >= range.end * cols && x.len() >= t * cols);
        assert_eq!(y.len(), t * range.len());
        let c = DenseCtx { w, cols, x, r0: range.start, nr: range.len() };
        for_each_tile(range, t, DENSE_TILES, |r, nrows, k, ntok| match (nrows, ntok) {
            (4, 4) => dense_tile::<E, 4, 4>(&c, r, k, y),
            (1, 4) => dense_tile::<E, 1, 4>(&c, r, k, y),
            (8, 1) => dense_tile::<E, 8, 1>(&c, r, k, y),
            _ => dense_tile::<E, 1, 1>(&c, r, k, y),
        });
    }
}

/// Dense f32 product over output rows `range`: `y: [t, range.len()]`.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VL.
pub unsafe fn dense_rows_f32(w: &[f32], cols: usize, x: &[f32], t: usize, range: Range<usize>, y: &mut [f32]) {
    unsafe { dense_rows(w, cols, x, t, range, y) }
}

/// Dense bf16 product (see [`dense_rows_f32`]).
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VL.
pub unsafe fn dense_rows_bf16(w: &[bf16], cols: usize, x: &[f32], t: usize, range: Range<usize>, y: &mut [f32]) {
    unsafe { dense_rows(w, cols, x, t, range, y) }
}

/// Dense f16 product (see [`dense_rows_f32`]).
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VL.
pub unsafe fn dense_rows_f16(w: &[f16], cols: usize, x: &[f32], t: usize, range: Range<usize>, y: &mut [f32]) {
    unsafe { dense_rows(w, cols, x, t, range, y) }
}

/// Dense product over i8 codes (the q8 kernel before its row scales; see `crate::q8_gemm`).
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VL.
pub unsafe fn dense_rows_i8(w: &[i8], cols: usize, x: &[f32], t: usize, range: Range<usize>, y: &mut [f32]) {
    unsafe { dense_rows(w, cols, x, t, range, y) }
}
