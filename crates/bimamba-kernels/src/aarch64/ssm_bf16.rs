//! The bf16-state SSM head step with NEON (4 lanes of f32, 8 bf16 per load);
//! `crate::ssm::head_step_bf16_scalar` is the spec. Widening is `vshll_n_u16(.., 16)`, rounding
//! to nearest even adds `0x7FFF + lsb` before `vshrn_n_u32(.., 16)`; NaN stays quiet
//! (`(bits >> 16) | 0x40`). Multiply and add are separate (no FMA) so the stored state has the
//! scalar twin's bits. Type-checked only (no AArch64 machine here).

use std::arch::aarch64::*;

use crate::ssm::{bf16_round, bf16_widen};

#[inline(always)]
unsafe fn round4(v: float32x4_t) -> uint16x4_t {
    let bits = vreinterpretq_u32_f32(v);
    let lsb = vandq_u32(vshrq_n_u32::<16>(bits), vdupq_n_u32(1));
    let rounded = vaddq_u32(vaddq_u32(bits, vdupq_n_u32(0x7FFF)), lsb);
    let nan = vorrq_u32(bits, vdupq_n_u32(0x40 << 16));
    let not_nan = vceqq_f32(v, v);
    vshrn_n_u32::<16>(vbslq_u32(not_nan, rounded, nan))
}

/// # Safety
/// The CPU must support NEON; shapes as `head_step_bf16_with` checks them.
#[target_feature(enable = "neon")]
pub unsafe fn head_step_bf16_neon(s: &mut [u16], x: &[f32], b: &[f32], c: &[f32], dt: f32, decay: f32, y: &mut [f32]) {
    unsafe {
        const L: usize = 8;
        let n = b.len();
        let full = n / L * L;
        let dec = vdupq_n_f32(decay);
        for (p, row) in s.chunks_exact_mut(n).enumerate() {
            let sx = dt * x[p];
            let sxv = vdupq_n_f32(sx);
            let (mut acc0, mut acc1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
            let rp = row.as_mut_ptr();
            let mut k = 0;
            while k < full {
                let raw = vld1q_u16(rp.add(k));
                let s0 = vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(raw)));
                let s1 = vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_high_u16(raw)));
                let v0 = vaddq_f32(vmulq_f32(dec, s0), vmulq_f32(sxv, vld1q_f32(b.as_ptr().add(k))));
                let v1 = vaddq_f32(vmulq_f32(dec, s1), vmulq_f32(sxv, vld1q_f32(b.as_ptr().add(k + 4))));
                acc0 = vfmaq_f32(acc0, v0, vld1q_f32(c.as_ptr().add(k)));
                acc1 = vfmaq_f32(acc1, v1, vld1q_f32(c.as_ptr().add(k + 4)));
                vst1q_u16(rp.add(k), vcombine_u16(round4(v0), round4(v1)));
                k += L;
            }
            let mut total = vaddvq_f32(vaddq_f32(acc0, acc1));
            for k in full..n {
                let v = decay * bf16_widen(row[k]) + sx * b[k];
                row[k] = bf16_round(v);
                total += v * c[k];
            }
            y[p] = total;
        }
    }
}
