//! The chunked SSD scan of one head (AVX-512), for `crate::ssd::head_chunks_with`; the math and
//! its notation are in `crate::ssd`. Chunks of `q = 16·W` tokens; tokens sit in the 16 lanes of
//! the readout (`W` vectors), so the carried-in readout is a product with the group's `Cᵀ`
//! instead of a horizontal sum per output, and the state keeps its `[P, N]` layout:
//! ```text
//! per chunk:  Mᵀ[s][t] = L[t][s]·dt_s·Gᵀ[s][t]      xw[s][p] = L[q−1][s]·dt_s·x_s[p]
//! per tile of RP state rows p:
//!   yᵀ[p][t] = e[t]·Σ_n S[p][n]·Cᵀ[n][t] + Σ_s x_s[p]·Mᵀ[s][t]      RP × W accumulators
//!   S[p][n]  = e[q−1]·S[p][n] + Σ_s xw[s][p]·B_s[n]                  4 rows × 4 vectors of N
//! yᵀ → y by 16 × 16 transposes
//! ```
//! Each multiply-add is one broadcast (folded into the FMA) against one vector loaded once per
//! `n` or `s` and shared by the tile's rows. A tile reads its `RP` state rows for the readout and
//! then updates them, so each row passes through L1 once per chunk. The intra-chunk sum skips
//! the vectors of tokens before `s` (zeros of the triangle).
//!
//! Arrays of vectors are filled by loops, not `std::array::from_fn`: its closure is compiled
//! outside this `target_feature` function, and the f32 intrinsics in it became function calls
//! (`_mm512_loadu_ps` and `_mm512_mul_ps` as symbols of their own in a profile of prefill).

use std::arch::x86_64::*;

use super::avx512_lut::transpose16;
use crate::ssd::{flush, GroupChunks};
use crate::ssm::HeadBlock;

/// # Safety
/// The CPU must support AVX-512 F. `s: [P, N]`, `y: [t, P]` with `t = blk.dt.len()`, `N` a
/// multiple of 16, `P` a multiple of `RP` (and of 4), `RP` a multiple of 4; `blk`'s rows hold
/// `x_off + P`, `b_off + N` and `c_off + N` values; `grp` was built over `t` tokens with
/// `q = 16·W` and this `N` (all checked by the caller).
#[target_feature(enable = "avx512f")]
pub unsafe fn head_chunks<const W: usize, const RP: usize>(
    s: &mut [f32],
    p_n: usize,
    n: usize,
    blk: &HeadBlock,
    grp: &GroupChunks,
    y: &mut [f32],
) {
    unsafe {
        let q = 16 * W;
        let t = blk.dt.len();
        let stride = blk.stride;
        let xbc = blk.xbc.as_ptr();
        let mut mt = vec![0.0f32; q * q]; // Mᵀ: [q, q]
        let mut xw = vec![0.0f32; q * p_n]; // [q, P]
        let mut yt = vec![0.0f32; p_n * q]; // yᵀ: [P, q]
        let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let (zero, one, min_pos) = (_mm512_setzero_ps(), _mm512_set1_ps(1.0), _mm512_set1_ps(f32::MIN_POSITIVE));
        let mut k0 = 0;
        let mut chunk = 0;
        while k0 < t {
            let len = q.min(t - k0);
            let gt = grp.gt.as_ptr().add(chunk * q * q);
            let ct = grp.ct.as_ptr().add(chunk * n * q);

            // Lᵀ rows from the last token down: row_s[t] = L[t][s] = a_{s+1}·row_{s+1}[t], lane s
            // set to 1 (lanes before s are 0 already; lanes from len on stay 0). `ws` follows
            // lane len−1, L[len−1][s], with the same multiplies.
            let mut row = [zero; W];
            let mut ws = 0.0f32;
            for ss in (0..len).rev() {
                let a = if ss + 1 < len { *blk.decay.get_unchecked(k0 + ss + 1) } else { 0.0 };
                ws = if ss + 1 == len { 1.0 } else { flush(a * ws) };
                let dts = *blk.dt.get_unchecked(k0 + ss);
                let (av, dtv, sv) = (_mm512_set1_ps(a), _mm512_set1_ps(dts), _mm512_set1_epi32(ss as i32));
                for (w, rw) in row.iter_mut().enumerate() {
                    let idx = _mm512_add_epi32(iota, _mm512_set1_epi32(16 * w as i32));
                    let mut r = _mm512_mul_ps(av, *rw);
                    r = _mm512_mask_mov_ps(r, _mm512_cmp_ps_mask::<_CMP_LT_OQ>(r, min_pos), zero);
                    r = _mm512_mask_mov_ps(r, _mm512_cmpeq_epi32_mask(idx, sv), one);
                    *rw = r;
                    let g = _mm512_loadu_ps(gt.add(ss * q + 16 * w));
                    _mm512_storeu_ps(mt.as_mut_ptr().add(ss * q + 16 * w), _mm512_mul_ps(_mm512_mul_ps(r, dtv), g));
                }
                let coef = ws * dts;
                let xs = &blk.xbc[(k0 + ss) * stride + blk.x_off..][..p_n];
                for (d, &v) in xw[ss * p_n..(ss + 1) * p_n].iter_mut().zip(xs) {
                    *d = coef * v;
                }
            }
            // e[t] = a_0·L[t][0]; e_end = e[len−1].
            let a0 = _mm512_set1_ps(*blk.decay.get_unchecked(k0));
            let mut e = [zero; W];
            for w in 0..W {
                let v = _mm512_mul_ps(a0, row[w]);
                e[w] = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v, min_pos), zero);
            }
            let e_end = _mm512_set1_ps(flush(*blk.decay.get_unchecked(k0) * ws));

            let xk = xbc.add(k0 * stride + blk.x_off);
            let bk = xbc.add(k0 * stride + blk.b_off);
            let mut p0 = 0;
            while p0 < p_n {
                let sp = s.as_mut_ptr().add(p0 * n);
                // Carried-in readout: Σ_n S[p][n]·Cᵀ[n][..], then × e.
                let mut acc = [[zero; W]; RP];
                for j in 0..n {
                    let mut cv = [zero; W];
                    for (w, c) in cv.iter_mut().enumerate() {
                        *c = _mm512_loadu_ps(ct.add(j * q + 16 * w));
                    }
                    for (r, ar) in acc.iter_mut().enumerate() {
                        let sv = _mm512_set1_ps(*sp.add(r * n + j));
                        for w in 0..W {
                            ar[w] = _mm512_fmadd_ps(sv, cv[w], ar[w]);
                        }
                    }
                }
                for ar in acc.iter_mut() {
                    for w in 0..W {
                        ar[w] = _mm512_mul_ps(ar[w], e[w]);
                    }
                }
                // Intra-chunk: vector w holds tokens 16w.., which only tokens s < 16(w+1) reach.
                for w in 0..W {
                    for ss in 0..len.min(16 * (w + 1)) {
                        let mv = _mm512_loadu_ps(mt.as_ptr().add(ss * q + 16 * w));
                        let xs = xk.add(ss * stride + p0);
                        for (r, ar) in acc.iter_mut().enumerate() {
                            ar[w] = _mm512_fmadd_ps(_mm512_set1_ps(*xs.add(r)), mv, ar[w]);
                        }
                    }
                }
                for (r, ar) in acc.iter().enumerate() {
                    for (w, a) in ar.iter().enumerate() {
                        _mm512_storeu_ps(yt.as_mut_ptr().add((p0 + r) * q + 16 * w), *a);
                    }
                }
                // State update of the same rows, 4 rows × up to 4 vectors of N at a time.
                for r0 in (0..RP).step_by(4) {
                    let rows = sp.add(r0 * n);
                    let xwp = xw.as_ptr().add(p0 + r0);
                    let mut c0 = 0;
                    while c0 + 64 <= n {
                        update_tile::<4>(rows.add(c0), n, e_end, xwp, p_n, bk.add(c0), stride, len);
                        c0 += 64;
                    }
                    while c0 < n {
                        update_tile::<1>(rows.add(c0), n, e_end, xwp, p_n, bk.add(c0), stride, len);
                        c0 += 16;
                    }
                }
                p0 += RP;
            }

            // yᵀ [P, q] → y rows k0..k0+len.
            let yk = y.as_mut_ptr().add(k0 * p_n);
            if p_n.is_multiple_of(16) {
                for pb in (0..p_n).step_by(16) {
                    for w in 0..W {
                        let mut m = [_mm512_setzero_si512(); 16];
                        for (i, v) in m.iter_mut().enumerate() {
                            *v = _mm512_loadu_si512(yt.as_ptr().add((pb + i) * q + 16 * w).cast());
                        }
                        transpose16(&mut m);
                        for (j, v) in m.iter().enumerate().take(len.saturating_sub(16 * w).min(16)) {
                            _mm512_storeu_si512(yk.add((16 * w + j) * p_n + pb).cast(), *v);
                        }
                    }
                }
            } else {
                for p in 0..p_n {
                    for tt in 0..len {
                        *yk.add(tt * p_n + p) = yt[p * q + tt];
                    }
                }
            }
            k0 += len;
            chunk += 1;
        }
    }
}

/// `S[r][c..c+16·NV] = e_end·S[r][..] + Σ_s xw[s][r]·B_s[c..]` for 4 state rows `r`.
///
/// # Safety
/// AVX-512 F; `rows` points at column `c` of the first of 4 rows `n` apart, `xw` at column `r`
/// of `xw[0]` (rows `p_n` apart), `b` at column `c` of `B_0` (tokens `stride` apart).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn update_tile<const NV: usize>(
    rows: *mut f32,
    n: usize,
    e_end: __m512,
    xw: *const f32,
    p_n: usize,
    b: *const f32,
    stride: usize,
    len: usize,
) {
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); NV]; 4];
        for (r, ar) in acc.iter_mut().enumerate() {
            for (v, a) in ar.iter_mut().enumerate() {
                *a = _mm512_mul_ps(e_end, _mm512_loadu_ps(rows.add(r * n + 16 * v)));
            }
        }
        for ss in 0..len {
            let bs = b.add(ss * stride);
            let mut bv = [_mm512_setzero_ps(); NV];
            for (v, b) in bv.iter_mut().enumerate() {
                *b = _mm512_loadu_ps(bs.add(16 * v));
            }
            let xs = xw.add(ss * p_n);
            for (r, ar) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_ps(*xs.add(r));
                for v in 0..NV {
                    ar[v] = _mm512_fmadd_ps(a, bv[v], ar[v]);
                }
            }
        }
        for (r, ar) in acc.iter().enumerate() {
            for (v, a) in ar.iter().enumerate() {
                _mm512_storeu_ps(rows.add(r * n + 16 * v), *a);
            }
        }
    }
}
