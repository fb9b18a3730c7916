//! AVX-512 binary product by table lookup: `y[k, i] = Σ_g T_k[g][nibble_g(row i)]` with the
//! f32 tables of [`crate::lut`] (built once per call, shared by all rows and threads).
//!
//! # The kernel
//! Sixteen rows at a time live in the 16 lanes of a vector. A 16 × 16 transpose of 32-bit words
//! turns 64 bytes of each of 16 rows into 16 vectors whose lane `r` is word `w` of row `r`; word
//! `w` holds nibbles `8w .. 8w+8`. For nibble `q`, `vpermps(word >> 4q, T[8w + q])` looks up 16
//! rows at once (it uses the low 4 bits of each lane as the index): one shift, one permute and one
//! add per 64 weights per token, with no mask registers.
//!
//! Loop order: token blocks of [`TB`], then panels of [`LUT_PANEL`] rows; within a panel,
//! 512-column blocks outside (their tables, 8 KiB per token, stay in L1/L2) and 16-row sets
//! inside, with per-set accumulators waiting on the stack. The next panel's bits are
//! software-prefetched, since the column-strip walk defeats the hardware prefetchers.

// Register tiles index accumulators as acc[row][token]; explicit ranges read clearer.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::ops::Range;

use crate::lut::{groups, tables_len};
use crate::pack::row_bytes;

/// Rows per panel: 8 sets of 16.
const LUT_PANEL: usize = 128;
const SETS: usize = LUT_PANEL / 16;
/// Tokens per block (one add chain each); 2 and 8 measured no better on Zen 4.
const TB: usize = 4;

/// Transposes a 16 × 16 matrix of 32-bit words held as 16 row vectors.
#[inline(always)]
pub(crate) unsafe fn transpose16(r: &mut [__m512i; 16]) {
    unsafe {
        let z = _mm512_setzero_si512();
        // Within each 128-bit lane L: t[4g] = [r4g[4L], r4g+1[4L], r4g[4L+1], r4g+1[4L+1]], ...
        let mut t = [z; 16];
        for p in 0..8 {
            t[2 * p] = _mm512_unpacklo_epi32(r[2 * p], r[2 * p + 1]);
            t[2 * p + 1] = _mm512_unpackhi_epi32(r[2 * p], r[2 * p + 1]);
        }
        // u[4g + e] lane L = element 4L + e of rows 4g .. 4g+4.
        let mut u = [z; 16];
        for g in 0..4 {
            u[4 * g] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
            u[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
            u[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
            u[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
        }
        // Gather lane L of u[e], u[4+e], u[8+e], u[12+e] into output word 4L + e.
        for e in 0..4 {
            let v = _mm512_shuffle_i32x4::<0x88>(u[e], u[4 + e]);
            let v2 = _mm512_shuffle_i32x4::<0xdd>(u[e], u[4 + e]);
            let w = _mm512_shuffle_i32x4::<0x88>(u[8 + e], u[12 + e]);
            let w2 = _mm512_shuffle_i32x4::<0xdd>(u[8 + e], u[12 + e]);
            r[e] = _mm512_shuffle_i32x4::<0x88>(v, w);
            r[4 + e] = _mm512_shuffle_i32x4::<0x88>(v2, w2);
            r[8 + e] = _mm512_shuffle_i32x4::<0xdd>(v, w);
            r[12 + e] = _mm512_shuffle_i32x4::<0xdd>(v2, w2);
        }
    }
}

struct LutCtx<'a> {
    bits: &'a [u8],
    rbytes: usize,
    tab: &'a [f32],
    groups: usize,
    /// First row of the output block and its width: `y[k, i]` is at `y[k·nr + i − r0]`.
    r0: usize,
    nr: usize,
}

/// Rows `p0 .. p1` (at most [`LUT_PANEL`]) × tokens `k .. k + TB`, with `A` partial
/// accumulators per token (enough independent add chains to hide the add latency).
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn lut_panel<const TB: usize, const A: usize>(c: &LutCtx, p0: usize, p1: usize, k: usize, y: &mut [f32]) {
    unsafe {
        let nsets = (p1 - p0).div_ceil(16);
        let words = c.rbytes / 4;
        let z = _mm512_setzero_ps();
        let mut accs = [[[z; A]; TB]; SETS];
        let tab = c.tab.as_ptr();
        // Software prefetch of the next panel, spread over this panel's steps: the loop below walks
        // the panel in 64-byte column strips, which hardware prefetchers follow poorly.
        let next = c.bits.as_ptr().wrapping_add(p1 * c.rbytes);
        let next_lines = (LUT_PANEL * c.rbytes).div_ceil(64);
        let steps = words.div_ceil(16) * nsets;
        let per_step = next_lines.div_ceil(steps.max(1));
        let mut line = 0;
        for d in 0..words.div_ceil(16) {
            let nd = (words - 16 * d).min(16);
            let dmask = ((1u32 << nd) - 1) as u16;
            for (s, acc_slot) in accs.iter_mut().enumerate().take(nsets) {
                // A by-value copy keeps the accumulators in registers (a reference into the
                // runtime-indexed array would make every add a load and a store).
                let mut acc = *acc_slot;
                for _ in 0..per_step {
                    if line < next_lines {
                        _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(64 * line).cast());
                        line += 1;
                    }
                }
                let row0 = p0 + 16 * s;
                let mut v = [_mm512_setzero_si512(); 16];
                for (r, vr) in v.iter_mut().enumerate().take((p1 - row0).min(16)) {
                    *vr = _mm512_maskz_loadu_epi32(dmask, c.bits.as_ptr().add((row0 + r) * c.rbytes + 64 * d).cast());
                }
                transpose16(&mut v);
                for (w, &vw) in v.iter().enumerate().take(nd) {
                    let g0 = (16 * d + w) * 8;
                    let mut idx = vw;
                    for q in 0..8 {
                        for (kk, acc_k) in acc.iter_mut().enumerate() {
                            let tv = _mm512_loadu_ps(tab.add(((k + kk) * c.groups + g0 + q) * 16));
                            acc_k[q % A] = _mm512_add_ps(acc_k[q % A], _mm512_permutexvar_ps(idx, tv));
                        }
                        idx = _mm512_srli_epi32::<4>(idx);
                    }
                }
                *acc_slot = acc;
            }
        }
        for (s, acc) in accs.iter().enumerate().take(nsets) {
            let row0 = p0 + 16 * s;
            let n = (p1 - row0).min(16);
            let lanes = ((1u32 << n) - 1) as u16;
            for (kk, acc_k) in acc.iter().enumerate() {
                let mut sum = acc_k[0];
                for a in &acc_k[1..] {
                    sum = _mm512_add_ps(sum, *a);
                }
                _mm512_mask_storeu_ps(y.as_mut_ptr().add((k + kk) * c.nr + row0 - c.r0), lanes, sum);
            }
        }
    }
}

/// Binary product over output rows `range`: `y: [t, range.len()]`, `tab` from
/// [`crate::lut::build_tables`].
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VL.
pub unsafe fn binary_rows(bits: &[u8], cols: usize, t: usize, tab: &[f32], range: Range<usize>, y: &mut [f32]) {
    unsafe {
        let rbytes = row_bytes(cols);
        let groups = groups(cols);
        // The panels index with raw pointers; these bounds make every access in range.
        assert!(bits.len() >= range.end * rbytes && tab.len() >= tables_len(cols, t));
        assert_eq!(y.len(), t * range.len());
        let c = LutCtx { bits, rbytes, tab, groups, r0: range.start, nr: range.len() };
        let full = t / TB * TB;
        // Token blocks outside panels: a block's tables (TB · groups · 64 B, 160 KiB for 4 tokens
        // at cols = 2560) stay in L2 while the whole row range streams past them.
        for k in (0..full).step_by(TB) {
            let mut p0 = range.start;
            while p0 < range.end {
                let p1 = (p0 + LUT_PANEL).min(range.end);
                lut_panel::<TB, 1>(&c, p0, p1, k, y);
                p0 = p1;
            }
        }
        for k in full..t {
            let mut p0 = range.start;
            while p0 < range.end {
                let p1 = (p0 + LUT_PANEL).min(range.end);
                lut_panel::<1, 4>(&c, p0, p1, k, y);
                p0 = p1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose16_is_a_transpose() {
        if !crate::Isa::Avx512.is_supported() {
            eprintln!("skipping: no AVX-512");
            return;
        }
        let m: Vec<i32> = (0..256).collect();
        // SAFETY: AVX-512 F support checked above.
        unsafe {
            let mut r: [__m512i; 16] = std::array::from_fn(|i| _mm512_loadu_si512(m[16 * i..].as_ptr().cast()));
            transpose16(&mut r);
            for (w, rw) in r.iter().enumerate() {
                let mut out = [0i32; 16];
                _mm512_storeu_si512(out.as_mut_ptr().cast(), *rw);
                let want: Vec<i32> = (0..16).map(|row| m[16 * row + w]).collect();
                assert_eq!(out.to_vec(), want, "word {w}");
            }
        }
    }
}
