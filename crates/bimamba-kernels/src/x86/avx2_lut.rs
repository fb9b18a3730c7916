//! AVX2 binary product by table lookup: `y[k, i] = Σ_g T_k[g][nibble_g(row i)]` with the f32
//! tables of [`crate::lut`] (built once per call, shared by all rows and threads).
//!
//! # The kernel
//! Eight rows at a time live in the 8 lanes of a vector. An 8 × 8 transpose of 32-bit words turns
//! 32 bytes of each of 8 rows into 8 vectors whose lane `r` is word `w` of row `r`; word `w` holds
//! nibbles `8w .. 8w+8`. AVX2 permutes index only 8 entries (3 bits), so a 16-entry table is
//! two vectors: for nibble `q`, with `idx = word >> 4q`,
//! `vpermps(T[0..8], idx)` and `vpermps(T[8..16], idx)` are blended on bit 3 of the nibble
//! (`idx << 28` puts it in the sign bit that `vblendvps` reads). Per 32 weights per token: two
//! permutes, a blend and an add, against 8 sign flips and 8 adds for the bit-by-bit form.
//!
//! Loop order as in `avx512_lut`: token blocks, then panels of [`LUT_PANEL`] rows; within a
//! panel, 256-column blocks outside and 8-row sets inside; the next panel is prefetched.

// Register tiles index accumulators as acc[token][partial]; explicit ranges read clearer.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::ops::Range;

use crate::lut::{groups, tables_len};
use crate::pack::row_bytes;

/// Rows per panel: 8 sets of 8.
const LUT_PANEL: usize = 64;
const SETS: usize = LUT_PANEL / 8;
/// Tokens per block.
const TB: usize = 2;

/// Transposes an 8 × 8 matrix of 32-bit words held as 8 row vectors.
#[inline(always)]
unsafe fn transpose8(r: &mut [__m256i; 8]) {
    unsafe {
        let z = _mm256_setzero_si256();
        // Within each 128-bit lane L: t[2p] = [r2p[4L], r2p+1[4L], r2p[4L+1], r2p+1[4L+1]], ...
        let mut t = [z; 8];
        for p in 0..4 {
            t[2 * p] = _mm256_unpacklo_epi32(r[2 * p], r[2 * p + 1]);
            t[2 * p + 1] = _mm256_unpackhi_epi32(r[2 * p], r[2 * p + 1]);
        }
        // u[4h + e] lane L = element 4L + e of rows 4h .. 4h+4.
        let mut u = [z; 8];
        for h in 0..2 {
            u[4 * h] = _mm256_unpacklo_epi64(t[4 * h], t[4 * h + 2]);
            u[4 * h + 1] = _mm256_unpackhi_epi64(t[4 * h], t[4 * h + 2]);
            u[4 * h + 2] = _mm256_unpacklo_epi64(t[4 * h + 1], t[4 * h + 3]);
            u[4 * h + 3] = _mm256_unpackhi_epi64(t[4 * h + 1], t[4 * h + 3]);
        }
        // Output word 4L + e = lane L of u[e] (rows 0..4) then lane L of u[4 + e] (rows 4..8).
        for e in 0..4 {
            r[e] = _mm256_permute2x128_si256::<0x20>(u[e], u[4 + e]);
            r[4 + e] = _mm256_permute2x128_si256::<0x31>(u[e], u[4 + e]);
        }
    }
}

/// Lane mask (all ones in lanes `< n`) for AVX2 masked loads and stores.
#[inline(always)]
unsafe fn lanes_below(n: usize) -> __m256i {
    unsafe { _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)) }
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

/// Rows `p0 .. p1` (at most [`LUT_PANEL`]) × tokens `k .. k + NT`, with `A` partial
/// accumulators per token.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn lut_panel<const NT: usize, const A: usize>(c: &LutCtx, p0: usize, p1: usize, k: usize, y: &mut [f32]) {
    unsafe {
        let nsets = (p1 - p0).div_ceil(8);
        let words = c.rbytes / 4;
        let z = _mm256_setzero_ps();
        let mut accs = [[[z; A]; NT]; SETS];
        let tab = c.tab.as_ptr();
        let next = c.bits.as_ptr().wrapping_add(p1 * c.rbytes);
        let next_lines = (LUT_PANEL * c.rbytes).div_ceil(64);
        let per_step = next_lines.div_ceil((words.div_ceil(8) * nsets).max(1));
        let mut line = 0;
        for d in 0..words.div_ceil(8) {
            let nd = (words - 8 * d).min(8);
            let dmask = lanes_below(nd);
            for (s, acc_slot) in accs.iter_mut().enumerate().take(nsets) {
                for _ in 0..per_step {
                    if line < next_lines {
                        _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(64 * line).cast());
                        line += 1;
                    }
                }
                // A by-value copy keeps the accumulators in registers.
                let mut acc = *acc_slot;
                let row0 = p0 + 8 * s;
                let mut v = [_mm256_setzero_si256(); 8];
                for (r, vr) in v.iter_mut().enumerate().take((p1 - row0).min(8)) {
                    let p = c.bits.as_ptr().add((row0 + r) * c.rbytes + 32 * d);
                    *vr = if nd == 8 { _mm256_loadu_si256(p.cast()) } else { _mm256_maskload_epi32(p.cast(), dmask) };
                }
                transpose8(&mut v);
                for (w, &vw) in v.iter().enumerate().take(nd) {
                    let g0 = (8 * d + w) * 8;
                    let mut idx = vw;
                    for q in 0..8 {
                        // Bit 3 of the nibble into the sign bit: selects the upper half-table.
                        let hi_sel = _mm256_castsi256_ps(_mm256_slli_epi32::<28>(idx));
                        for kk in 0..NT {
                            let tp = tab.add(((k + kk) * c.groups + g0 + q) * 16);
                            let lo = _mm256_permutevar8x32_ps(_mm256_loadu_ps(tp), idx);
                            let hi = _mm256_permutevar8x32_ps(_mm256_loadu_ps(tp.add(8)), idx);
                            acc[kk][q % A] = _mm256_add_ps(acc[kk][q % A], _mm256_blendv_ps(lo, hi, hi_sel));
                        }
                        idx = _mm256_srli_epi32::<4>(idx);
                    }
                }
                *acc_slot = acc;
            }
        }
        for (s, acc) in accs.iter().enumerate().take(nsets) {
            let row0 = p0 + 8 * s;
            let lanes = lanes_below((p1 - row0).min(8));
            for (kk, acc_k) in acc.iter().enumerate() {
                let mut sum = acc_k[0];
                for a in &acc_k[1..] {
                    sum = _mm256_add_ps(sum, *a);
                }
                _mm256_maskstore_ps(y.as_mut_ptr().add((k + kk) * c.nr + row0 - c.r0), lanes, sum);
            }
        }
    }
}

/// Binary product over output rows `range`: `y: [t, range.len()]`, `tab` from
/// [`crate::lut::build_tables`].
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
pub unsafe fn binary_rows(bits: &[u8], cols: usize, t: usize, tab: &[f32], range: Range<usize>, y: &mut [f32]) {
    unsafe {
        let rbytes = row_bytes(cols);
        // The panels index with raw pointers; these bounds make every access in range.
        assert!(bits.len() >= range.end * rbytes && tab.len() >= tables_len(cols, t));
        assert_eq!(y.len(), t * range.len());
        let c = LutCtx { bits, rbytes, tab, groups: groups(cols), r0: range.start, nr: range.len() };
        let full = t / TB * TB;
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
                lut_panel::<1, 2>(&c, p0, p1, k, y);
                p0 = p1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose8_is_a_transpose() {
        if !crate::Isa::Avx2.is_supported() {
            eprintln!("skipping: no AVX2");
            return;
        }
        let m: Vec<i32> = (0..64).collect();
        // SAFETY: AVX2 support checked above.
        unsafe {
            let mut r: [__m256i; 8] = std::array::from_fn(|i| _mm256_loadu_si256(m[8 * i..].as_ptr().cast()));
            transpose8(&mut r);
            for (w, rw) in r.iter().enumerate() {
                let mut out = [0i32; 8];
                _mm256_storeu_si256(out.as_mut_ptr().cast(), *rw);
                let want: Vec<i32> = (0..8).map(|row| m[8 * row + w]).collect();
                assert_eq!(out.to_vec(), want, "word {w}");
            }
        }
    }
}
