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
