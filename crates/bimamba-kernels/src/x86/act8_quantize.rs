//! The per-token int8 quantization of [`crate::act8`] with AVX-512 (the spec and scalar twin:
//! `act8::quantize_row_scalar`). Two passes over the token's 16-lane vectors: the absolute
//! maximum (exact in any order) with a check for a NaN or an infinity; then `v · (127 / m)`,
//! round to nearest even by adding and removing 1.5 · 2²³ (the scalar twin's two IEEE additions),
//! clamp to ±127, convert (exact: the values are integers), narrow to bytes (`vpmovdb`) and sum
//! in i32 lanes. The same operations on the same values as the scalar twin, so the same bits.
//! The column tail is read and written with masks.

use std::arch::x86_64::*;

use crate::act8::QMAX;

/// 1.5 · 2²³: adding and removing it rounds |v| < 2²² to an integer, ties to even.
const MAGIC: f32 = 12_582_912.0;

/// Quantizes one token `x` into `q` (`q.len() ≥ x.len()`, the rest zero-filled) and returns
/// `(scale, Σ q)`, as `act8::quantize_row_scalar` does.
///
/// # Safety
/// The CPU must support AVX-512 F and BW.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn quantize_row(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    unsafe {
        let n = x.len();
        debug_assert!(q.len() >= n);
        let full = n / 16 * 16;
        let tail_mask: __mmask16 = ((1u32 << (n - full)) - 1) as __mmask16;
        let xp = x.as_ptr();
        let abs = _mm512_set1_epi32(0x7FFF_FFFF);
        let fmax = _mm512_set1_ps(f32::MAX);
        let mut m = _mm512_setzero_ps();
        let mut bad: __mmask16 = 0;
        let mut i = 0;
        while i <= full {
            // The last round reads the tail; masked-off lanes are 0, which changes neither the
            // maximum nor the check.
            let mask = if i < full { 0xFFFF } else { tail_mask };
            let v = _mm512_maskz_loadu_ps(mask, xp.add(i));
            let a = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), abs));
            // Not (|v| ≤ MAX): an infinity or a NaN.
            bad |= _mm512_cmp_ps_mask::<_CMP_NLE_UQ>(a, fmax);
            m = _mm512_max_ps(m, a);
            i += 16;
        }
        if bad != 0 {
            q.fill(0);
            return (f32::NAN, 0);
        }
        let mx = _mm512_reduce_max_ps(m);
        if mx == 0.0 {
            q.fill(0);
            return (0.0, 0);
        }
        let inv = _mm512_set1_ps(QMAX / mx);
        let magic = _mm512_set1_ps(MAGIC);
        let (hi, lo) = (_mm512_set1_ps(QMAX), _mm512_set1_ps(-QMAX));
        let qp = q.as_mut_ptr();
        let mut sum = _mm512_setzero_si512();
        let mut i = 0;
        while i <= full {
            // Masked-off lanes of the tail quantize 0 to 0 and are not stored.
            let mask = if i < full { 0xFFFF } else { tail_mask };
            let v = _mm512_maskz_loadu_ps(mask, xp.add(i));
            let r = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(v, inv), magic), magic);
            let r = _mm512_cvtps_epi32(_mm512_max_ps(_mm512_min_ps(r, hi), lo));
            sum = _mm512_add_epi32(sum, r);
            _mm512_mask_cvtepi32_storeu_epi8(qp.add(i), mask, r);
            i += 16;
        }
        q[n..].fill(0);
        (mx / QMAX, _mm512_reduce_add_epi32(sum))
    }
}
