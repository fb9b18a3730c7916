//! The SSM state update and readout of one head for one token, fused so that each state row is
//! read and written once (ARCHITECTURE.md §1.2):
//! ```text
//! S[p,n] ← decay·S[p,n] + (dt·x[p])·B[n]          decay = exp(dt·A)
//! y[p]   = Σ_n S[p,n]·C[n]
//! ```
//! `head_step_scalar` is the spec (sequential sums); the fast path is the same body written with
//! eight independent partial sums so that the compiler vectorizes it, compiled once per ISA
//! (`#[target_feature]`) and chosen by [`crate::selected_isa`]. Results differ from the scalar
//! twin only by summation order.
//!
//! The bf16-state variant (`head_step_bf16*`) stores `S` as bf16 (the high half of an f32) and
//! halves the state traffic of decode: each row is loaded once, widened to f32, updated, reduced
//! against `C` in f32 (with the unrounded f32 values), and rounded to nearest even when stored.
//! Its SIMD versions (`x86/ssm_bf16.rs`, `aarch64/ssm_bf16.rs`) store the scalar twin's bits.

use crate::isa::Isa;

/// bf16 bits → f32 (exact).
#[inline(always)]
pub fn bf16_widen(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// f32 → bf16 bits, rounded to nearest, ties to even; NaN stays NaN (quiet bit set);
/// values beyond the largest bf16 round to ±inf.
#[inline(always)]
pub fn bf16_round(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) as u16
}

/// The specification: one head, one token.
///
/// # Shapes
/// - `s`: [P, N] (updated in place); `x`, `y`: [P]; `b`, `c`: [N]
pub fn head_step_scalar(s: &mut [f32], x: &[f32], b: &[f32], c: &[f32], dt: f32, decay: f32, y: &mut [f32]) {
    let n = b.len();
    for (p, row) in s.chunks_exact_mut(n).enumerate() {
        let sx = dt * x[p];
        let mut acc = 0.0f32;
        for k in 0..n {
            let v = decay * row[k] + sx * b[k];
            row[k] = v;
            acc += v * c[k];
        }
        y[p] = acc;
    }
}

/// The same arithmetic with 8 lanes of partial sums (vectorizable).
#[inline(always)]
fn head_step_lanes(s: &mut [f32], x: &[f32], b: &[f32], c: &[f32], dt: f32, decay: f32, y: &mut [f32]) {
    const L: usize = 8;
    let n = b.len();
    let full = n / L * L;
    for (p, row) in s.chunks_exact_mut(n).enumerate() {
        let sx = dt * x[p];
        let mut acc = [0.0f32; L];
        let (head, tail) = row.split_at_mut(full);
        for ((r, bb), cc) in head.chunks_exact_mut(L).zip(b.chunks_exact(L)).zip(c.chunks_exact(L)) {
            for l in 0..L {
                let v = decay * r[l] + sx * bb[l];
                r[l] = v;
                acc[l] += v * cc[l];
            }
        }
        let mut total: f32 = acc.iter().sum();
        for (k, r) in tail.iter_mut().enumerate() {
            let v = decay * *r + sx * b[full + k];
            *r = v;
            total += v * c[full + k];
        }
        y[p] = total;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn head_step_avx512(s: &mut [f32], x: &[f32], b: &[f32], c: &[f32], dt: f32, decay: f32, y: &mut [f32]) {
    head_step_lanes(s, x, b, c, dt, decay, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn head_step_avx2(s: &mut [f32], x: &[f32], b: &[f32], c: &[f32], dt: f32, decay: f32, y: &mut [f32]) {
    head_step_lanes(s, x, b, c, dt, decay, y)
}

/// One head, one token, on the given ISA (falls back to the portable lane version).
///
/// # Shapes
/// - `s`: [P, N]; `x`, `y`: [P]; `b`, `c`: [N]
#[allow(clippy::too_many_arguments)]
pub fn head_step_with(isa: Isa, s: &mut [f32], x: &[f32], b: &[f32], c: &[f32], dt: f32, decay: f32, y: &mut [f32]) {
    let (p, n) = (x.len(), b.len());
    assert!(
        s.len() == p * n && c.len() == n && y.len() == p,
        "ssm head_step: s {} x {} b {} c {} y {}",
        s.len(),
        p,
        n,
        c.len(),
        y.len()
    );
    match isa {
        Isa::Scalar => head_step_scalar(s, x, b, c, dt, decay, y),
        // SAFETY: the ISA was checked to be supported by this CPU when it was selected.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { head_step_avx512(s, x, b, c, dt, decay, y) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { head_step_avx2(s, x, b, c, dt, decay, y) },
        _ => head_step_lanes(s, x, b, c, dt, decay, y),
    }
}

/// [`head_step_with`] on the selected ISA.
pub fn head_step(s: &mut [f32], x: &[f32], b: &[f32], c: &[f32], dt: f32, decay: f32, y: &mut [f32]) {
    head_step_with(crate::selected_isa(), s, x, b, c, dt, decay, y)
}

/// The inputs of one head over a block of `t` tokens, read in place from the mixer's
/// `xBC: [t, stride]` rows: token `k`'s `x` is `xbc[k·stride + x_off ..][..P]`, its `B` and `C`
/// start at `b_off` and `c_off` (`N` values each).
#[derive(Clone, Copy, Debug)]
pub struct HeadBlock<'a> {
    pub xbc: &'a [f32],
    pub stride: usize,
    pub x_off: usize,
    pub b_off: usize,
    pub c_off: usize,
    /// [t]
    pub dt: &'a [f32],
    /// [t]: `exp(dt·A)`
    pub decay: &'a [f32],
}

/// Tokens per block of [`head_steps_with`]: their `B` and `C` (2 · 16 · N floats, 16 KiB at
/// N = 128) stay in L1 while every state row passes through them.
const STEPS_BLOCK: usize = 16;

/// `t` tokens of one head, with the loop order turned around: for each block of
/// [`STEPS_BLOCK`] tokens, each state row is loaded once and taken through all of them (the
/// per-token order reads and writes the whole `[P, N]` state once per token). Every state element
/// sees the same operations in the same token order, and each readout is [`head_step_lanes`]'s
/// sum, so results are bit-identical to calling [`head_step_with`] token by token.
#[inline(always)]
fn head_steps_lanes(s: &mut [f32], n: usize, blk: &HeadBlock, y: &mut [f32]) {
    const L: usize = 8;
    let t = blk.dt.len();
    let p_n = s.len().checked_div(n).unwrap_or(0);
    let full = n / L * L;
    let mut k0 = 0;
    while k0 < t {
        let k1 = (k0 + STEPS_BLOCK).min(t);
        for (p, row) in s.chunks_exact_mut(n.max(1)).enumerate().take(p_n) {
            for k in k0..k1 {
                let base = k * blk.stride;
                let b = &blk.xbc[base + blk.b_off..base + blk.b_off + n];
                let c = &blk.xbc[base + blk.c_off..base + blk.c_off + n];
                let (dt, decay) = (blk.dt[k], blk.decay[k]);
                let sx = dt * blk.xbc[base + blk.x_off + p];
                let mut acc = [0.0f32; L];
                let (head, tail) = row.split_at_mut(full);
                for ((r, bb), cc) in head.chunks_exact_mut(L).zip(b.chunks_exact(L)).zip(c.chunks_exact(L)) {
                    for l in 0..L {
                        let v = decay * r[l] + sx * bb[l];
                        r[l] = v;
                        acc[l] += v * cc[l];
                    }
                }
                let mut total: f32 = acc.iter().sum();
                for (j, r) in tail.iter_mut().enumerate() {
                    let v = decay * *r + sx * b[full + j];
                    *r = v;
                    total += v * c[full + j];
                }
                y[k * p_n + p] = total;
            }
        }
        k0 = k1;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn head_steps_avx512(s: &mut [f32], n: usize, blk: &HeadBlock, y: &mut [f32]) {
    head_steps_lanes(s, n, blk, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn head_steps_avx2(s: &mut [f32], n: usize, blk: &HeadBlock, y: &mut [f32]) {
    head_steps_lanes(s, n, blk, y)
}

/// `t = blk.dt.len()` tokens of one head on the given ISA: the state `s: [P, N]` is updated in
/// place and `y: [t, P]` receives each token's readout, exactly as `t` calls of
/// [`head_step_with`] would (the scalar ISA runs those calls).
pub fn head_steps_with(isa: Isa, s: &mut [f32], p_n: usize, n: usize, blk: &HeadBlock, y: &mut [f32]) {
    let t = blk.dt.len();
    assert!(
        s.len() == p_n * n && blk.decay.len() == t && y.len() == t * p_n,
        "ssm head_steps: s {} for [{p_n} x {n}], {t} tokens, {} decays, y {}",
        s.len(),
        blk.decay.len(),
        y.len()
    );
    let need = |off: usize, len: usize| t == 0 || (t - 1) * blk.stride + off + len <= blk.xbc.len();
    assert!(need(blk.x_off, p_n) && need(blk.b_off, n) && need(blk.c_off, n), "ssm head_steps: xBC rows too short");
    match isa {
        Isa::Scalar => {
            for k in 0..t {
                let row = &blk.xbc[k * blk.stride..];
                head_step_scalar(
                    s,
                    &row[blk.x_off..blk.x_off + p_n],
                    &row[blk.b_off..blk.b_off + n],
                    &row[blk.c_off..blk.c_off + n],
                    blk.dt[k],
                    blk.decay[k],
                    &mut y[k * p_n..(k + 1) * p_n],
                );
            }
        }
        // SAFETY: the ISA was checked to be supported by this CPU when it was selected.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { head_steps_avx512(s, n, blk, y) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { head_steps_avx2(s, n, blk, y) },
        _ => head_steps_lanes(s, n, blk, y),
    }
}

/// [`head_steps_with`] on the selected ISA.
pub fn head_steps(s: &mut [f32], p_n: usize, n: usize, blk: &HeadBlock, y: &mut [f32]) {
    head_steps_with(crate::selected_isa(), s, p_n, n, blk, y)
}

/// The fast prefill scan: `t = blk.dt.len()` tokens of one head, the same recurrence and readout
/// as [`head_steps_with`] but with the update fused (`fma(decay, s, sx·B)`) and the readout summed
/// in 16 lanes, each state row held in registers across blocks of tokens (AVX-512, `N` a multiple
/// of 16 up to 128: `x86/ssm_prefill.rs`). It agrees with the specification to f32 rounding, not
/// bit for bit; other ISAs and shapes run [`head_steps_with`]. The engine uses it for the
/// prefill of a bf16 state (widened to f32 for the call, rounded once at its end); the exact
/// arithmetic keeps [`head_steps_with`].
///
/// # Shapes
/// - `s`: [P, N] (updated in place); `y`: [t, P]
pub fn head_steps_prefill_with(isa: Isa, s: &mut [f32], p_n: usize, n: usize, blk: &HeadBlock, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && isa.is_supported() && n.is_multiple_of(16) && (16..=128).contains(&n) {
        let t = blk.dt.len();
        assert!(
            s.len() == p_n * n && blk.decay.len() == t && y.len() == t * p_n,
            "ssm head_steps_prefill: s {} for [{p_n} x {n}], {t} tokens, {} decays, y {}",
            s.len(),
            blk.decay.len(),
            y.len()
        );
        let need = |off: usize, len: usize| t == 0 || (t - 1) * blk.stride + off + len <= blk.xbc.len();
        assert!(
            need(blk.x_off, p_n) && need(blk.b_off, n) && need(blk.c_off, n),
            "ssm head_steps_prefill: xBC rows too short"
        );
        use crate::x86::ssm_prefill::head_steps as k;
        // SAFETY: AVX-512 F is supported (checked above); the shapes and the xBC extent were
        // checked above, which is all the kernel reads and writes.
        unsafe {
            match n / 16 {
                1 => k::<1>(s, blk, y),
                2 => k::<2>(s, blk, y),
                3 => k::<3>(s, blk, y),
                4 => k::<4>(s, blk, y),
                5 => k::<5>(s, blk, y),
                6 => k::<6>(s, blk, y),
                7 => k::<7>(s, blk, y),
                _ => k::<8>(s, blk, y),
            }
        }
        return;
    }
    head_steps_with(isa, s, p_n, n, blk, y)
}

/// [`head_steps_prefill_with`] on the selected ISA.
pub fn head_steps_prefill(s: &mut [f32], p_n: usize, n: usize, blk: &HeadBlock, y: &mut [f32]) {
    head_steps_prefill_with(crate::selected_isa(), s, p_n, n, blk, y)
}

/// The specification of the bf16-state step: as [`head_step_scalar`], with `S` stored as bf16.
///
/// # Shapes
/// - `s`: [P, N] bf16 bits (updated in place); `x`, `y`: [P]; `b`, `c`: [N]
pub fn head_step_bf16_scalar(s: &mut [u16], x: &[f32], b: &[f32], c: &[f32], dt: f32, decay: f32, y: &mut [f32]) {
    let n = b.len();
    if n == 0 {
        y.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    for (p, row) in s.chunks_exact_mut(n).enumerate() {
        let sx = dt * x[p];
        let mut acc = 0.0f32;
        for k in 0..n {
            let v = decay * bf16_widen(row[k]) + sx * b[k];
            row[k] = bf16_round(v);
            acc += v * c[k];
        }
        y[p] = acc;
    }
}

/// One head, one token, bf16 state, on the given ISA (falls back to the scalar spec).
///
/// # Shapes
/// - `s`: [P, N] bf16 bits; `x`, `y`: [P]; `b`, `c`: [N]
#[allow(clippy::too_many_arguments)]
pub fn head_step_bf16_with(
    isa: Isa,
    s: &mut [u16],
    x: &[f32],
    b: &[f32],
    c: &[f32],
    dt: f32,
    decay: f32,
    y: &mut [f32],
) {
    let (p, n) = (x.len(), b.len());
    assert!(
        s.len() == p * n && c.len() == n && y.len() == p,
        "ssm head_step_bf16: s {} x {} b {} c {} y {}",
        s.len(),
        p,
        n,
        c.len(),
        y.len()
    );
    if n == 0 {
        return head_step_bf16_scalar(s, x, b, c, dt, decay, y);
    }
    match isa {
        // SAFETY: the ISA was checked to be supported by this CPU when it was selected; the
        // shapes were checked above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if has_avx512bf16() => unsafe {
            crate::x86::ssm_bf16::head_step_bf16_avx512bf16(s, x, b, c, dt, decay, y)
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { crate::x86::ssm_bf16::head_step_bf16_avx512(s, x, b, c, dt, decay, y) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { crate::x86::ssm_bf16::head_step_bf16_avx2(s, x, b, c, dt, decay, y) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { crate::aarch64::ssm_bf16::head_step_bf16_neon(s, x, b, c, dt, decay, y) },
        _ => head_step_bf16_scalar(s, x, b, c, dt, decay, y),
    }
}

/// Whether the AVX-512 bf16-state step runs its `vcvtne2ps2bf16` kernel on this CPU
/// (AVX512_BF16; `x86/ssm_bf16.rs`), detected once.
#[cfg(target_arch = "x86_64")]
fn has_avx512bf16() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(crate::x86::ssm_bf16::has_avx512bf16)
}

/// [`head_step_bf16_with`] on the selected ISA.
pub fn head_step_bf16(s: &mut [u16], x: &[f32], b: &[f32], c: &[f32], dt: f32, decay: f32, y: &mut [f32]) {
    head_step_bf16_with(crate::selected_isa(), s, x, b, c, dt, decay, y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_round_is_nearest_even() {
        // Against the `half` crate on a sweep of bit patterns (it rounds to nearest even too).
        let mut bits = 0u32;
        for _ in 0..200_000 {
            bits = bits.wrapping_mul(2654435761).wrapping_add(0x9E37_79B9);
            let v = f32::from_bits(bits);
            let ours = bf16_round(v);
            let theirs = half::bf16::from_f32(v);
            if v.is_nan() {
                assert!(bf16_widen(ours).is_nan(), "{bits:#x}");
            } else {
                assert_eq!(ours, theirs.to_bits(), "{bits:#x} ({v})");
            }
            assert_eq!(bf16_round(bf16_widen(ours)), ours, "round trip {bits:#x}");
        }
        // Ties: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 → 1 (even); 1 + 3·2^-8 → 1 + 2^-6.
        assert_eq!(bf16_widen(bf16_round(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(bf16_widen(bf16_round(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
        assert_eq!(bf16_widen(bf16_round(f32::MAX)), f32::INFINITY);
    }

    #[test]
    fn every_isa_matches_the_bf16_scalar_spec() {
        let mut seed = 7u64;
        let mut r = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let mut shapes =
            vec![(1, 1), (3, 7), (4, 8), (2, 15), (5, 16), (5, 17), (3, 31), (16, 128), (2, 130), (0, 8), (3, 0)];
        for _ in 0..40 {
            let p = 1 + ((r() + 1.0) * 10.0) as usize;
            let n = 1 + ((r() + 1.0) * 150.0) as usize;
            shapes.push((p, n));
        }
        for (p, n) in shapes {
            let s0: Vec<u16> = (0..p * n).map(|_| bf16_round(r() * 4.0)).collect();
            let x: Vec<f32> = (0..p).map(|_| r()).collect();
            let b: Vec<f32> = (0..n).map(|_| r()).collect();
            let c: Vec<f32> = (0..n).map(|_| r()).collect();
            let (dt, decay) = (0.05 + 0.5 * r().abs(), 0.5 + 0.49 * r().abs());
            let mut s_ref = s0.clone();
            let mut y_ref = vec![0.0; p];
            head_step_bf16_scalar(&mut s_ref, &x, &b, &c, dt, decay, &mut y_ref);
            for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon] {
                if !isa.is_supported() {
                    continue;
                }
                let mut s = s0.clone();
                let mut y = vec![f32::NAN; p];
                head_step_bf16_with(isa, &mut s, &x, &b, &c, dt, decay, &mut y);
                // The update and its rounding are elementwise: identical bits. The readout
                // differs only by summation order (and FMA): budget 1e-5 of Σ|v·C|.
                assert_eq!(s, s_ref, "{isa:?} p{p} n{n}: state");
                for k in 0..p {
                    let mag: f32 =
                        (0..n).map(|j| ((decay * bf16_widen(s0[k * n + j]) + dt * x[k] * b[j]) * c[j]).abs()).sum();
                    assert!(
                        (y[k] - y_ref[k]).abs() <= 1e-5 * mag.max(1e-6),
                        "{isa:?} p{p} n{n}: {} vs {}",
                        y[k],
                        y_ref[k]
                    );
                }
            }
        }
    }

    /// Both AVX-512 bf16-state kernels, called directly (the dispatch runs only one of them on a
    /// given CPU), against the scalar spec on special values: denormal results (the
    /// `vcvtne2ps2bf16` kernel's fallback, in blocks of 32 and of 16), zeros of both signs,
    /// infinities, NaNs, sums rounding to infinity, and every column tail.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_bf16_kernels_store_the_spec_bits_on_special_values() {
        use crate::x86::ssm_bf16::{has_avx512bf16, head_step_bf16_avx512, head_step_bf16_avx512bf16};
        type Kernel = unsafe fn(&mut [u16], &[f32], &[f32], &[f32], f32, f32, &mut [f32]);
        let mut kernels: Vec<(&str, Kernel)> = Vec::new();
        if Isa::Avx512.is_supported() {
            kernels.push(("avx512", head_step_bf16_avx512));
        }
        if has_avx512bf16() {
            kernels.push(("avx512bf16", head_step_bf16_avx512bf16));
        }
        if kernels.is_empty() {
            eprintln!("skipped: no AVX-512 on this CPU");
            return;
        }
        let mut seed = 11u64;
        let mut r = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let special: [u16; 12] =
            [0x0001, 0x8003, 0x007F, 0x0040, 0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC1, 0xFF81, 0x7F7F, 0x0080];
        for (p, n) in [(3, 64), (2, 48), (5, 16), (4, 37), (2, 100), (3, 15), (2, 31), (2, 33)] {
            for case in 0..4 {
                let s0: Vec<u16> = (0..p * n)
                    .map(|i| match case {
                        // Sparse special values among ordinary ones.
                        0 if i % 7 == 3 => special[i / 7 % special.len()],
                        // Only denormals, kept denormal by decay 1 and B = 0 (case 1).
                        1 => special[i % 4],
                        _ => bf16_round(r() * 4.0),
                    })
                    .collect();
                let mut x: Vec<f32> = (0..p).map(|_| r()).collect();
                let mut b: Vec<f32> = (0..n).map(|_| r()).collect();
                let mut c: Vec<f32> = (0..n).map(|_| r()).collect();
                let (dt, decay) = match case {
                    1 => {
                        b.fill(0.0);
                        (0.1, 1.0)
                    }
                    // Updates that land on denormals: tiny B.
                    2 => {
                        b.iter_mut().for_each(|v| *v *= 1e-39);
                        (1.0, 0.0)
                    }
                    // Updates around the largest bf16 (3.39e38), about half of them rounding to
                    // infinity; C small enough that the readout stays finite.
                    3 => {
                        x.fill(1.0);
                        b.iter_mut().for_each(|v| *v = v.signum() * (3.38e38 + 2e36 * v.abs()));
                        c.iter_mut().for_each(|v| *v *= 1e-4);
                        (1.0, 1.0)
                    }
                    _ => (0.05 + 0.5 * r().abs(), 0.5 + 0.49 * r().abs()),
                };
                let mut s_ref = s0.clone();
                let mut y_ref = vec![0.0; p];
                head_step_bf16_scalar(&mut s_ref, &x, &b, &c, dt, decay, &mut y_ref);
                for (name, kernel) in &kernels {
                    let mut s = s0.clone();
                    let mut y = vec![f32::NAN; p];
                    // SAFETY: each kernel is listed only where the CPU supports it; shapes agree.
                    unsafe { kernel(&mut s, &x, &b, &c, dt, decay, &mut y) };
                    assert_eq!(s, s_ref, "{name} p{p} n{n} case {case}: state");
                    for k in 0..p {
                        // In f64: the magnitudes of case 3 overflow f32 where the sums do not.
                        let mag: f64 = (0..n)
                            .map(|j| {
                                ((decay * bf16_widen(s0[k * n + j]) + dt * x[k] * b[j]) as f64 * c[j] as f64).abs()
                            })
                            .sum();
                        let ok = if y_ref[k].is_finite() && mag.is_finite() {
                            (y[k] as f64 - y_ref[k] as f64).abs() <= 1e-5 * mag.max(1e-30)
                        } else {
                            // A NaN or infinity in the row: the kernels agree that the sum is not finite.
                            !y[k].is_finite()
                        };
                        assert!(ok, "{name} p{p} n{n} case {case}: {} vs {}", y[k], y_ref[k]);
                    }
                }
            }
        }
    }

    #[test]
    fn bf16_state_tracks_the_f32_state() {
        // Same inputs, state starting from the same (bf16-representable) values: after one step
        // each stored entry is the f32 one rounded once (relative error ≤ 2^-8, bf16's unit roundoff).
        let (p, n) = (4, 33);
        let s0: Vec<f32> = (0..p * n).map(|i| bf16_widen(bf16_round((i as f32 * 0.37).sin()))).collect();
        let x: Vec<f32> = (0..p).map(|i| (i as f32).cos()).collect();
        let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).sin()).collect();
        let c: Vec<f32> = (0..n).map(|i| (i as f32 * 0.23).cos()).collect();
        let mut sf = s0.clone();
        let mut sb: Vec<u16> = s0.iter().map(|&v| bf16_round(v)).collect();
        let (mut yf, mut yb) = (vec![0.0; p], vec![0.0; p]);
        head_step_scalar(&mut sf, &x, &b, &c, 0.1, 0.9, &mut yf);
        head_step_bf16_scalar(&mut sb, &x, &b, &c, 0.1, 0.9, &mut yb);
        assert_eq!(yf, yb, "the readout uses the unrounded f32 values");
        for (f, h) in sf.iter().zip(&sb) {
            assert!((bf16_widen(*h) - f).abs() <= f.abs() / 256.0, "{f} vs {}", bf16_widen(*h));
        }
    }

    #[test]
    fn multi_token_steps_equal_single_steps_bit_for_bit() {
        let mut seed = 3u64;
        let mut r = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        // (P, N, t): tails in N, token counts around the block size.
        for (p, n, t) in [(1, 1, 1), (3, 7, 5), (4, 8, 16), (5, 17, 17), (16, 128, 40), (2, 130, 3), (3, 9, 0)] {
            let (x_off, b_off, c_off) = (2, 2 + p + 1, 2 + p + 1 + n + 3);
            let stride = c_off + n + 1;
            let xbc: Vec<f32> = (0..t * stride).map(|_| r()).collect();
            let dt: Vec<f32> = (0..t).map(|_| 0.01 + 0.1 * r().abs()).collect();
            let decay: Vec<f32> = (0..t).map(|_| 0.5 + 0.49 * r().abs()).collect();
            let s0: Vec<f32> = (0..p * n).map(|_| r()).collect();
            let blk = HeadBlock { xbc: &xbc, stride, x_off, b_off, c_off, dt: &dt, decay: &decay };
            for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon] {
                if !isa.is_supported() {
                    continue;
                }
                let (mut s1, mut y1) = (s0.clone(), vec![0.0; t * p]);
                for k in 0..t {
                    let row = &xbc[k * stride..];
                    head_step_with(
                        isa,
                        &mut s1,
                        &row[x_off..x_off + p],
                        &row[b_off..b_off + n],
                        &row[c_off..c_off + n],
                        dt[k],
                        decay[k],
                        &mut y1[k * p..(k + 1) * p],
                    );
                }
                let (mut s2, mut y2) = (s0.clone(), vec![f32::NAN; t * p]);
                head_steps_with(isa, &mut s2, p, n, &blk, &mut y2);
                assert_eq!(s2, s1, "{isa:?} ({p},{n},{t}): state");
                assert_eq!(y2, y1, "{isa:?} ({p},{n},{t}): readout");
            }
        }
    }

    #[test]
    fn every_isa_matches_the_scalar_spec() {
        let mut seed = 1u64;
        let mut r = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        for (p, n) in [(1, 1), (3, 7), (4, 8), (5, 17), (16, 128), (2, 130)] {
            let s0: Vec<f32> = (0..p * n).map(|_| r()).collect();
            let x: Vec<f32> = (0..p).map(|_| r()).collect();
            let b: Vec<f32> = (0..n).map(|_| r()).collect();
            let c: Vec<f32> = (0..n).map(|_| r()).collect();
            let (dt, decay) = (0.05, 0.93);
            let mut s_ref = s0.clone();
            let mut y_ref = vec![0.0; p];
            head_step_scalar(&mut s_ref, &x, &b, &c, dt, decay, &mut y_ref);
            for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon] {
                if !isa.is_supported() {
                    continue;
                }
                let mut s = s0.clone();
                let mut y = vec![0.0; p];
                head_step_with(isa, &mut s, &x, &b, &c, dt, decay, &mut y);
                // The state update is elementwise: identical bits. The readout differs only by
                // summation order: budget 1e-5 of Σ|S·C|.
                assert_eq!(s, s_ref, "{isa:?} p{p} n{n}: state");
                for k in 0..p {
                    let mag: f32 = (0..n).map(|j| (s_ref[k * n + j] * c[j]).abs()).sum();
                    assert!(
                        (y[k] - y_ref[k]).abs() <= 1e-5 * mag.max(1e-6),
                        "{isa:?} p{p} n{n}: {} vs {}",
                        y[k],
                        y_ref[k]
                    );
                }
            }
        }
    }

    /// The fast prefill scan against the scalar spec token by token: every N the register kernel
    /// takes (16..128) and some it leaves to `head_steps_with`, token counts around its block of
    /// 16, decays near 1 (long memory, where fused rounding accumulates most). State within
    /// 1e-5 of its magnitude per token, readout within 1e-5 of Σ|S·C|.
    #[test]
    fn prefill_scan_matches_the_scalar_spec() {
        let mut seed = 11u64;
        let mut r = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let shapes = [(1, 16, 1), (3, 32, 15), (4, 48, 16), (5, 64, 17), (2, 80, 33), (7, 96, 3), (64, 128, 64)];
        for (p, n, t) in shapes.into_iter().chain([(3, 7, 5), (2, 130, 9), (4, 144, 2), (2, 16, 0)]) {
            let (x_off, b_off, c_off) = (1, 1 + p + 2, 1 + p + 2 + n + 1);
            let stride = c_off + n + 3;
            let xbc: Vec<f32> = (0..t * stride).map(|_| r()).collect();
            let dt: Vec<f32> = (0..t).map(|_| 0.01 + 0.1 * r().abs()).collect();
            let decay: Vec<f32> = (0..t).map(|_| 0.9 + 0.0999 * r().abs()).collect();
            let s0: Vec<f32> = (0..p * n).map(|_| r()).collect();
            let blk = HeadBlock { xbc: &xbc, stride, x_off, b_off, c_off, dt: &dt, decay: &decay };
            let (mut s_ref, mut y_ref, mut mag) = (s0.clone(), vec![0.0; t * p], vec![0.0f32; t * p]);
            for k in 0..t {
                let row = &xbc[k * stride..];
                let c = &row[c_off..c_off + n];
                head_step_scalar(
                    &mut s_ref,
                    &row[x_off..x_off + p],
                    &row[b_off..b_off + n],
                    c,
                    dt[k],
                    decay[k],
                    &mut y_ref[k * p..(k + 1) * p],
                );
                for i in 0..p {
                    mag[k * p + i] = (0..n).map(|j| (s_ref[i * n + j] * c[j]).abs()).sum();
                }
            }
            for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon].into_iter().filter(|i| i.is_supported()) {
                let (mut s, mut y) = (s0.clone(), vec![f32::NAN; t * p]);
                head_steps_prefill_with(isa, &mut s, p, n, &blk, &mut y);
                for (i, (a, b)) in s.iter().zip(&s_ref).enumerate() {
                    assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{isa:?} ({p},{n},{t}) state[{i}]: {a} vs {b}");
                }
                for (i, (a, b)) in y.iter().zip(&y_ref).enumerate() {
                    assert!((a - b).abs() <= 1e-5 * mag[i].max(1e-6), "{isa:?} ({p},{n},{t}) y[{i}]: {a} vs {b}");
                }
            }
        }
    }
}
