//! The bf16-state SSM head step (`crate::ssm::head_step_bf16_scalar` is the spec) with AVX-512
//! (16 lanes) and AVX2 (8 lanes). Per lane: widen the stored bf16 to f32 (`u32 << 16`), update
//! `v = decay·s + sx·b` with a separate multiply and add (no FMA, so the stored state has the
//! scalar twin's bits), accumulate `v·c` in f32, store `v` rounded to nearest even:
//! `(bits + 0x7FFF + ((bits >> 16) & 1)) >> 16`, NaN kept quiet as `(bits >> 16) | 0x40`.
//! Tails run the scalar formula.

use std::arch::x86_64::*;

use crate::ssm::{bf16_round, bf16_widen};

/// # Safety
/// The CPU must support AVX-512 F/BW/VL; shapes as `head_step_bf16_with` checks them.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub unsafe fn head_step_bf16_avx512(
    s: &mut [u16],
    x: &[f32],
    b: &[f32],
    c: &[f32],
    dt: f32,
    decay: f32,
    y: &mut [f32],
) {
    unsafe {
        const L: usize = 16;
        let n = b.len();
        let full = n / L * L;
        let dec = _mm512_set1_ps(decay);
        let round_bias = _mm512_set1_epi32(0x7FFF);
        let one = _mm512_set1_epi32(1);
        let quiet = _mm512_set1_epi32(0x40);
        for (p, row) in s.chunks_exact_mut(n).enumerate() {
            let sx = dt * x[p];
            let sxv = _mm512_set1_ps(sx);
            let mut acc = _mm512_setzero_ps();
            let rp = row.as_mut_ptr();
            let mut k = 0;
            while k < full {
                let raw = _mm256_loadu_si256(rp.add(k) as *const __m256i);
                let sv = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(raw)));
                let v = _mm512_add_ps(_mm512_mul_ps(dec, sv), _mm512_mul_ps(sxv, _mm512_loadu_ps(b.as_ptr().add(k))));
                acc = _mm512_fmadd_ps(v, _mm512_loadu_ps(c.as_ptr().add(k)), acc);
                let bits = _mm512_castps_si512(v);
                let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), one);
                let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(_mm512_add_epi32(bits, round_bias), lsb));
                let nan = _mm512_or_si512(_mm512_srli_epi32::<16>(bits), quiet);
                let is_nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                let out = _mm512_mask_blend_epi32(is_nan, rounded, nan);
                _mm256_storeu_si256(rp.add(k) as *mut __m256i, _mm512_cvtepi32_epi16(out));
                k += L;
            }
            let mut total = _mm512_reduce_add_ps(acc);
            for k in full..n {
                let v = decay * bf16_widen(row[k]) + sx * b[k];
                row[k] = bf16_round(v);
                total += v * c[k];
            }
            y[p] = total;
        }
    }
}

/// Whether this CPU has what [`head_step_bf16_avx512bf16`] needs: AVX-512 F/BW/VL/DQ and
/// AVX512_BF16 (Zen 4, Sapphire Rapids and later).
pub fn has_avx512bf16() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512dq")
        && is_x86_feature_detected!("avx512bf16")
}

/// 16 f32 rounded to bf16 bits by the scalar twin's integer formula (the kernel above).
#[inline(always)]
unsafe fn round_exact(v: __m512) -> __m256i {
    unsafe {
        let bits = _mm512_castps_si512(v);
        let hi = _mm512_srli_epi32::<16>(bits);
        let lsb = _mm512_and_si512(hi, _mm512_set1_epi32(1));
        let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7FFF)), lsb));
        let nan = _mm512_or_si512(hi, _mm512_set1_epi32(0x40));
        let is_nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
        _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(is_nan, rounded, nan))
    }
}

/// The same step with the rounding done by `vcvtne2ps2bf16`, 32 values per instruction. That
/// instruction computes the scalar twin's formula (round to nearest even by adding
/// `0x7FFF + lsb`, infinities kept, a NaN truncated with its quiet bit set) except for
/// denormal inputs, which it flushes to zero: a block of 32 holding one (found by `vfpclassps`)
/// is rounded by the integer formula instead, so the stored bits are always the scalar twin's.
/// About half the vector instructions of [`head_step_bf16_avx512`] per state value.
///
/// # Safety
/// The CPU must pass [`has_avx512bf16`]; shapes as `head_step_bf16_with` checks them.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")]
pub unsafe fn head_step_bf16_avx512bf16(
    s: &mut [u16],
    x: &[f32],
    b: &[f32],
    c: &[f32],
    dt: f32,
    decay: f32,
    y: &mut [f32],
) {
    unsafe {
        const DENORMAL: i32 = 0x20;
        let n = b.len();
        let (full32, full16) = (n / 32 * 32, n / 16 * 16);
        let dec = _mm512_set1_ps(decay);
        let (bp, cp) = (b.as_ptr(), c.as_ptr());
        let widen = |p: *const u16| {
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast()))))
        };
        for (p, row) in s.chunks_exact_mut(n).enumerate() {
            let sx = dt * x[p];
            let sxv = _mm512_set1_ps(sx);
            let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let rp = row.as_mut_ptr();
            let mut k = 0;
            while k < full32 {
                let v0 =
                    _mm512_add_ps(_mm512_mul_ps(dec, widen(rp.add(k))), _mm512_mul_ps(sxv, _mm512_loadu_ps(bp.add(k))));
                let v1 = _mm512_add_ps(
                    _mm512_mul_ps(dec, widen(rp.add(k + 16))),
                    _mm512_mul_ps(sxv, _mm512_loadu_ps(bp.add(k + 16))),
                );
                acc0 = _mm512_fmadd_ps(v0, _mm512_loadu_ps(cp.add(k)), acc0);
                acc1 = _mm512_fmadd_ps(v1, _mm512_loadu_ps(cp.add(k + 16)), acc1);
                let den = _mm512_fpclass_ps_mask::<DENORMAL>(v0) | _mm512_fpclass_ps_mask::<DENORMAL>(v1);
                if den == 0 {
                    // Low half: v0, high half: v1.
                    let out = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(v1, v0));
                    _mm512_storeu_si512(rp.add(k).cast(), out);
                } else {
                    _mm256_storeu_si256(rp.add(k).cast(), round_exact(v0));
                    _mm256_storeu_si256(rp.add(k + 16).cast(), round_exact(v1));
                }
                k += 32;
            }
            if k < full16 {
                let v =
                    _mm512_add_ps(_mm512_mul_ps(dec, widen(rp.add(k))), _mm512_mul_ps(sxv, _mm512_loadu_ps(bp.add(k))));
                acc0 = _mm512_fmadd_ps(v, _mm512_loadu_ps(cp.add(k)), acc0);
                let out: __m256i = if _mm512_fpclass_ps_mask::<DENORMAL>(v) == 0 {
                    std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v))
                } else {
                    round_exact(v)
                };
                _mm256_storeu_si256(rp.add(k).cast(), out);
                k += 16;
            }
            let mut total = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
            for k in k..n {
                let v = decay * bf16_widen(row[k]) + sx * b[k];
                row[k] = bf16_round(v);
                total += v * c[k];
            }
            y[p] = total;
        }
    }
}

/// # Safety
/// The CPU must support AVX2 and FMA; shapes as `head_step_bf16_with` checks them.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn head_step_bf16_avx2(s: &mut [u16], x: &[f32], b: &[f32], c: &[f32], dt: f32, decay: f32, y: &mut [f32]) {
    unsafe {
        const L: usize = 8;
        let n = b.len();
        let full = n / L * L;
        let dec = _mm256_set1_ps(decay);
        let round_bias = _mm256_set1_epi32(0x7FFF);
        let one = _mm256_set1_epi32(1);
        let quiet = _mm256_set1_epi32(0x40);
        for (p, row) in s.chunks_exact_mut(n).enumerate() {
            let sx = dt * x[p];
            let sxv = _mm256_set1_ps(sx);
            let mut acc = _mm256_setzero_ps();
            let rp = row.as_mut_ptr();
            let mut k = 0;
            while k < full {
                let raw = _mm_loadu_si128(rp.add(k) as *const __m128i);
                let sv = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(raw)));
                let v = _mm256_add_ps(_mm256_mul_ps(dec, sv), _mm256_mul_ps(sxv, _mm256_loadu_ps(b.as_ptr().add(k))));
                acc = _mm256_fmadd_ps(v, _mm256_loadu_ps(c.as_ptr().add(k)), acc);
                let bits = _mm256_castps_si256(v);
                let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(bits), one);
                let rounded = _mm256_srli_epi32::<16>(_mm256_add_epi32(_mm256_add_epi32(bits, round_bias), lsb));
                let nan = _mm256_or_si256(_mm256_srli_epi32::<16>(bits), quiet);
                let is_nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
                let out = _mm256_blendv_epi8(rounded, nan, is_nan);
                // Every lane is ≤ 0xFFFF, so the unsigned-saturating pack is exact; it interleaves
                // the 128-bit halves, and the permute brings words 0..3 and 4..7 together.
                let packed = _mm256_permute4x64_epi64::<0b1000>(_mm256_packus_epi32(out, out));
                _mm_storeu_si128(rp.add(k) as *mut __m128i, _mm256_castsi256_si128(packed));
                k += L;
            }
            // Horizontal sum of the 8 lanes.
            let h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
            let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            let h = _mm_add_ss(h, _mm_movehdup_ps(h));
            let mut total = _mm_cvtss_f32(h);
            for k in full..n {
                let v = decay * bf16_widen(row[k]) + sx * b[k];
                row[k] = bf16_round(v);
                total += v * c[k];
            }
            y[p] = total;
        }
    }
}
