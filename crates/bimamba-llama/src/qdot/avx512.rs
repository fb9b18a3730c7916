//! The AVX-512 VNNI kernel of [`super`]: 16 rows in the lanes of a vector, `vpdpbusd` for the
//! integer block sums, f32 for the block scales.
//!
//! Per row group, tokens are taken [`TB`] at a time; per block the group's eight code vectors are
//! loaded once and used by every token of the tile:
//!
//! ```text
//! V_t   = Σ_k vpdpbusd(codes[k], broadcast(q_t[4k .. 4k+4]))     (two chains of four)
//! y_t  += cvt(V_t − z·X_tb) · (d ⊙ dx_tb)  [+ m ⊙ sx_tb]          (one fma, one more for Q4_1)
//! ```

use std::arch::x86_64::*;
use std::ops::Range;

use super::{QActs, QdotMatrix, GROUP, TILE};
use bimamba_formats::QK;

/// Tokens per tile: 4 tokens × 2 chains keep eight `vpdpbusd` in flight.
const TB: usize = 4;

/// AVX-512 F/BW and VNNI present, and the kernel ISA (`--isa`, `BIMAMBA_ISA`) is AVX-512.
pub fn usable() -> bool {
    matches!(bimamba_kernels::selected_isa(), bimamba_kernels::Isa::Avx512)
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// [`super::Kernel`] entry; panics (a programming error) when called without [`usable`].
pub fn groups_safe(m: &QdotMatrix, a: &QActs, zx: &[i32], gr: Range<usize>, out: &mut [f32]) {
    assert!(usable(), "qdot::avx512 called on a CPU without AVX-512 VNNI");
    // SAFETY: the CPU features were checked just above.
    unsafe { groups(m, a, zx, gr, out) }
}

/// # Safety
/// The CPU must support AVX-512 F, BW and VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn groups(m: &QdotMatrix, a: &QActs, zx: &[i32], gr: Range<usize>, out: &mut [f32]) {
    unsafe {
        let t = a.t;
        let r0 = gr.start * GROUP;
        let nr = (gr.end * GROUP).min(m.rows) - r0;
        // The tiles index with raw pointers; these bounds make every access in range.
        assert!(gr.end <= m.groups && out.len() == t * nr);
        assert!(a.q.len() == t * m.cols && a.dx.len() == t * m.nb && a.sx.len() == t * m.nb && zx.len() == t * m.nb);
        assert!(m.codes.len() >= m.groups * m.nb * TILE && m.d.len() >= m.groups * m.nb * GROUP);
        for g in gr {
            let lanes = (m.rows - g * GROUP).min(GROUP);
            let mut k = 0;
            while k + TB <= t {
                tile::<TB>(m, a, zx, g, k, lanes, g * GROUP - r0, nr, out);
                k += TB;
            }
            while k < t {
                tile::<1>(m, a, zx, g, k, lanes, g * GROUP - r0, nr, out);
                k += 1;
            }
        }
    }
}

/// [`super::quantize_scalar`] with 16 lanes: same operations, same bits.
///
/// # Safety
/// The CPU must support AVX-512 F; `a` must have been sized for `x` ([`QActs::quantize`]).
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn quantize(x: &[f32], a: &mut QActs) {
    unsafe {
        assert!(
            x.len() == a.q.len()
                && a.dx.len() * QK == x.len()
                && a.sx.len() == a.dx.len()
                && a.sum_q.len() == a.dx.len()
        );
        let (lim, nlim) = (_mm512_set1_ps(127.0), _mm512_set1_ps(-127.0));
        for i in 0..a.dx.len() {
            let p = x.as_ptr().add(i * QK);
            let (v0, v1) = (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)));
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
            let d = amax / 127.0;
            let id = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
            let r = |v| {
                let c = _mm512_max_ps(_mm512_min_ps(_mm512_mul_ps(v, id), lim), nlim);
                _mm512_cvtps_epi32(_mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(c))
            };
            let (q0, q1) = (r(v0), r(v1));
            let out = a.q.as_mut_ptr().add(i * QK);
            _mm_storeu_si128(out.cast(), _mm512_cvtepi32_epi8(q0));
            _mm_storeu_si128(out.add(16).cast(), _mm512_cvtepi32_epi8(q1));
            let s = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
            a.dx[i] = d;
            a.sum_q[i] = s;
            a.sx[i] = d * s as f32;
        }
    }
}

/// Tokens `k0 .. k0 + T` of row group `g`; results go to `out[(k0 + tt) · nr + col0 ..]`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile<const T: usize>(
    m: &QdotMatrix,
    a: &QActs,
    zx: &[i32],
    g: usize,
    k0: usize,
    lanes: usize,
    col0: usize,
    nr: usize,
    out: &mut [f32],
) {
    unsafe {
        let nb = m.nb;
        let has_m = !m.m.is_empty();
        let zero_point = m.zero != 0;
        let mut y = [_mm512_setzero_ps(); T];
        let codes = m.codes.as_ptr().add(g * nb * TILE);
        let q = a.q.as_ptr();
        for b in 0..nb {
            let base = codes.add(b * TILE);
            let w: [__m512i; 8] = std::array::from_fn(|v| _mm512_loadu_si512(base.add(64 * v).cast()));
            let s = (g * nb + b) * GROUP;
            let dv = _mm512_loadu_ps(m.d.as_ptr().add(s));
            for (tt, yt) in y.iter_mut().enumerate() {
                let kb = (k0 + tt) * nb + b;
                let qp = q.add((k0 + tt) * m.cols + b * QK).cast::<i32>();
                let mut acc0 = _mm512_setzero_si512();
                let mut acc1 = _mm512_setzero_si512();
                for v in (0..8).step_by(2) {
                    acc0 = _mm512_dpbusd_epi32(acc0, w[v], _mm512_set1_epi32(qp.add(v).read_unaligned()));
                    acc1 = _mm512_dpbusd_epi32(acc1, w[v + 1], _mm512_set1_epi32(qp.add(v + 1).read_unaligned()));
                }
                let mut acc = _mm512_add_epi32(acc0, acc1);
                if zero_point {
                    acc = _mm512_sub_epi32(acc, _mm512_set1_epi32(*zx.get_unchecked(kb)));
                }
                let scale = _mm512_mul_ps(dv, _mm512_set1_ps(*a.dx.get_unchecked(kb)));
                *yt = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), scale, *yt);
                if has_m {
                    let mv = _mm512_loadu_ps(m.m.as_ptr().add(s));
                    *yt = _mm512_fmadd_ps(mv, _mm512_set1_ps(*a.sx.get_unchecked(kb)), *yt);
                }
            }
        }
        let mask = ((1u32 << lanes) - 1) as u16;
        for (tt, yt) in y.iter().enumerate() {
            _mm512_mask_storeu_ps(out.as_mut_ptr().add((k0 + tt) * nr + col0), mask, *yt);
        }
    }
}
