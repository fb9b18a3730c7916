//! SiLU over slices, vectorized: the conv output (conv_dim values per layer and token) and the
//! gate (d_inner) call it. `f32::exp` is a library call per element and was the largest cost of
//! both sections; [`exp_nonpositive`] (Cephes, relative error below 4e-7) is straight-line code
//! the compiler turns into AVX-512 / AVX2 lanes.
//!
//! ```text
//! silu(v) = v · σ(v),   σ(v) = 1 / (1 + e^−v)   = e^v / (1 + e^v)
//! ```
//! With e = e^(−|v|) ≤ 1 (never overflows): σ(v) = 1 / (1 + e) for v ≥ 0 and e / (1 + e) for
//! v < 0. The arithmetic is plain f32 multiplies, adds and one division (Rust never fuses them),
//! so every ISA build produces the same bits.

use bimamba_lm::softmax::exp_nonpositive;

/// The scalar spec: silu(v) = v · σ(v), σ from e^(−|v|) as in the module comment.
#[inline(always)]
pub fn silu(v: f32) -> f32 {
    // Below −87 e^v is under f32's normal range: σ is taken as 0 there (silu within 1.5e-36).
    let e = if v.abs() > 87.0 { 0.0 } else { exp_nonpositive(-v.abs()) };
    let sigma = if v >= 0.0 { 1.0 } else { e } / (1.0 + e);
    v * sigma
}

/// v ← silu(v) for every element.
pub fn silu_in_place(v: &mut [f32]) {
    dispatch(v, &[], |x, _| silu(x))
}

/// y ← y ⊙ silu(z) (the gate of the Mamba-2 output).
pub fn mul_silu(y: &mut [f32], z: &[f32]) {
    assert_eq!(y.len(), z.len(), "mul_silu: y and z differ in length");
    dispatch(y, z, |yv, zv| yv * silu(zv))
}

/// Runs `f(y[i], z[i])` (z may be empty: then `f(y[i], 0)`) into `y`, compiled for the widest
/// vectors available.
#[inline(always)]
fn dispatch<F: Fn(f32, f32) -> f32 + Copy>(y: &mut [f32], z: &[f32], f: F) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F support checked just above.
            return unsafe { map_avx512(y, z, f) };
        }
        if is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 support checked just above.
            return unsafe { map_avx2(y, z, f) };
        }
    }
    map(y, z, f)
}

#[inline(always)]
fn map<F: Fn(f32, f32) -> f32 + Copy>(y: &mut [f32], z: &[f32], f: F) {
    if z.is_empty() {
        y.iter_mut().for_each(|v| *v = f(*v, 0.0));
    } else {
        y.iter_mut().zip(z).for_each(|(v, &w)| *v = f(*v, w));
    }
}

/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn map_avx512<F: Fn(f32, f32) -> f32 + Copy>(y: &mut [f32], z: &[f32], f: F) {
    map(y, z, f)
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn map_avx2<F: Fn(f32, f32) -> f32 + Copy>(y: &mut [f32], z: &[f32], f: F) {
    map(y, z, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn silu_f64(v: f32) -> f64 {
        let v = v as f64;
        v / (1.0 + (-v).exp())
    }

    /// Against f64 over [−100, 100] and the edges: within 5e-7 relative down to −80; below −87
    /// σ is taken as 0 (e^v has left f32's normal range), so silu is −0 there, within 1.5e-36.
    #[test]
    fn silu_is_accurate() {
        let mut worst = 0.0f64;
        let xs: Vec<f32> = (-1_000_000..=1_000_000).map(|i| i as f32 * 1e-4).collect();
        let mut got = xs.clone();
        silu_in_place(&mut got);
        for (&x, &g) in xs.iter().zip(&got) {
            let want = silu_f64(x);
            assert_eq!(g, silu(x), "the vector build and the scalar spec agree at {x}");
            if x >= -80.0 {
                worst = worst.max((g as f64 - want).abs() / want.abs().max(f64::MIN_POSITIVE));
            } else {
                assert!((g as f64 - want).abs() < 1.5e-36, "silu({x}) = {g}, want {want}");
            }
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(silu(0.0), 0.0);
        assert_eq!(silu(1000.0), 1000.0);
        assert_eq!(silu(f32::INFINITY), f32::INFINITY);
        assert_eq!(silu(-1000.0), 0.0);
        assert_eq!(silu(-1e30), 0.0);
        assert!(silu(f32::NAN).is_nan());
    }

    #[test]
    fn mul_silu_multiplies_and_handles_tails() {
        for n in [0usize, 1, 7, 16, 17, 100] {
            let z: Vec<f32> = (0..n).map(|i| (i as f32 - 50.0) * 0.37).collect();
            let y0: Vec<f32> = (0..n).map(|i| 1.0 + i as f32 * 0.01).collect();
            let mut y = y0.clone();
            mul_silu(&mut y, &z);
            for i in 0..n {
                assert_eq!(y[i], y0[i] * silu(z[i]), "n {n}, i {i}");
            }
        }
    }
}
