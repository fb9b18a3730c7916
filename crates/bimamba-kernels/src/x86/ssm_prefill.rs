//! The prefill scan of one head with each state row held in registers (AVX-512), for
//! `crate::ssm::head_steps_prefill`.
//!
//! A row of `N = 16·V` f32 values (V ≤ 8 vectors) is loaded once per block of
//! [`BLOCK`] tokens and taken through all of them in registers:
//! ```text
//! s ← fma(decay_k, s, (dt_k·x_k[p])·B_k)       y[k, p] = Σ_n s·C_k  (two 16-lane partial sums)
//! ```
//! Per 16 state values and token: one multiply, two FMAs (B and C loads folded, from L1: the
//! block's B and C are 2 · 16 · N floats). The token-by-token kernels (`head_step`, `head_steps`)
//! keep the specification's separate multiply and add and its 8-lane readout; this one fuses the
//! update and sums in 16 lanes, so it agrees with them to f32 rounding, not bit for bit.

use std::arch::x86_64::*;

use crate::ssm::HeadBlock;

/// Tokens per pass over the state rows.
const BLOCK: usize = 16;

/// # Safety
/// The CPU must support AVX-512 F. `s: [P, 16·V]`, `y: [t, P]`, and `blk`'s rows must hold
/// `x_off + P`, `b_off + 16·V` and `c_off + 16·V` values (checked by the caller).
#[target_feature(enable = "avx512f")]
pub unsafe fn head_steps<const V: usize>(s: &mut [f32], blk: &HeadBlock, y: &mut [f32]) {
    unsafe {
        let n = 16 * V;
        let t = blk.dt.len();
        let p_n = s.len() / n;
        let xbc = blk.xbc.as_ptr();
        let mut k0 = 0;
        while k0 < t {
            let k1 = (k0 + BLOCK).min(t);
            for p in 0..p_n {
                let rp = s.as_mut_ptr().add(p * n);
                let mut row = [_mm512_setzero_ps(); V];
                for (v, r) in row.iter_mut().enumerate() {
                    *r = _mm512_loadu_ps(rp.add(16 * v));
                }
                for k in k0..k1 {
                    let base = xbc.add(k * blk.stride);
                    let (b, c) = (base.add(blk.b_off), base.add(blk.c_off));
                    let dec = _mm512_set1_ps(*blk.decay.get_unchecked(k));
                    let sx = _mm512_set1_ps(*blk.dt.get_unchecked(k) * *base.add(blk.x_off + p));
                    let mut acc = [_mm512_setzero_ps(); 2];
                    for v in 0..V {
                        let upd = _mm512_mul_ps(sx, _mm512_loadu_ps(b.add(16 * v)));
                        row[v] = _mm512_fmadd_ps(dec, row[v], upd);
                        acc[v % 2] = _mm512_fmadd_ps(row[v], _mm512_loadu_ps(c.add(16 * v)), acc[v % 2]);
                    }
                    *y.get_unchecked_mut(k * p_n + p) = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
                }
                for (v, r) in row.iter().enumerate() {
                    _mm512_storeu_ps(rp.add(16 * v), *r);
                }
            }
            k0 = k1;
        }
    }
}
