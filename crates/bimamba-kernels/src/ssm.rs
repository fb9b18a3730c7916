//! The SSM state update and readout of one head for one token, fused so that each state row is
//! read and written once (SPEC §1):
//! ```text
//! S[p,n] ← decay·S[p,n] + (dt·x[p])·B[n]          decay = exp(dt·A)
//! y[p]   = Σ_n S[p,n]·C[n]
//! ```
//! `head_step_scalar` is the spec (sequential sums); the fast path is the same body written with
//! eight independent partial sums so that the compiler vectorizes it, compiled once per ISA
//! (`#[target_feature]`) and chosen by [`crate::selected_isa`]. Results differ from the scalar
//! twin only by summation order.

use crate::isa::Isa;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
