//! Softmax arithmetic that vectorizes: a Cephes `expf` for non-positive arguments, lane-wise max
//! and sum, and the log-sum-exp of a row of logits that perplexity and task scoring call once per
//! scored token (over 49 152 to 50 288 logits).

/// e^x for x ≤ 0 (softmax after subtracting the maximum), straight-line code the compiler
/// vectorizes: Cephes' `expf`. With n = round(x · log2 e) and r = x − n · ln 2 (ln 2 split in a
/// high part exact in f32 and a low correction), e^x = 2^n · e^r, |r| ≤ ln 2 / 2, where
/// e^r ≈ 1 + r + r² · p(r) with Cephes' degree-5 minimax p (relative error about 1e-7), and 2^n
/// is built in the exponent bits. Inputs below −87 (where 2^n would leave the normal range) are
/// clamped: e^−87 ≈ 1.6e−38 instead of a smaller number, harmless next to the maximum's 1.
#[inline(always)]
#[allow(clippy::excessive_precision)] // Cephes' constants, digit for digit as published
pub fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_375;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 · 2^23 rounds to the nearest integer (the default rounding
    // mode) without a call to roundf.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 0.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    // The integer n also sits in the low mantissa bits of `shifted` (its exponent is fixed by
    // ROUND), which avoids a float-to-int conversion that does not vectorize (`as` saturates).
    let n_int = shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 5.000_000_1e-1;
    let er = p * r * r + r + 1.0;
    er * f32::from_bits((n_int.wrapping_add(127) as u32) << 23)
}

/// Maximum over eight interleaved lanes (a plain fold with `f32::max` does not vectorize).
#[inline(always)]
pub fn lane_max(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = v.chunks_exact(8);
    let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |a, &x| if x > a { x } else { a });
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    acc.iter().fold(tail, |a, &x| if x > a { x } else { a })
}

/// Sum over eight interleaved lanes (vectorizes; a sequential f32 sum cannot be reordered).
#[inline(always)]
pub fn lane_sum(v: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = v.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Elements per f32 partial sum of [`log_sum_exp`]; the partial sums are added in f64.
const SUM_CHUNK: usize = 256;

/// log Σ exp(v), stable: the maximum m, then Σ e^(v − m) with [`exp_nonpositive`] in f32 over
/// chunks of 256 (each at most 256, so f32 keeps about 7 digits) added in f64. Agrees with an
/// f64 evaluation to about 1e-6 in the sum's relative error (tested). An empty row gives −∞.
pub fn log_sum_exp(v: &[f32]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: AVX2 and FMA support checked just above.
        return unsafe { log_sum_exp_avx2(v) };
    }
    log_sum_exp_body(v)
}

/// [`log_sum_exp_body`] compiled for AVX2 (the lanes of `exp_nonpositive` become 8-wide).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn log_sum_exp_avx2(v: &[f32]) -> f64 {
    log_sum_exp_body(v)
}

#[inline(always)]
fn log_sum_exp_body(v: &[f32]) -> f64 {
    let m = lane_max(v);
    if m == f32::NEG_INFINITY {
        // Empty or all −∞: Σ e^v = 0.
        return f64::NEG_INFINITY;
    }
    if !m.is_finite() || v.iter().any(|x| x.is_nan()) {
        // A +∞ or a NaN: the plain f64 formula says what that means (NaN).
        let m = m as f64;
        return m + v.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
    }
    let mut s = 0.0f64;
    let mut e = [0.0f32; SUM_CHUNK];
    for c in v.chunks(SUM_CHUNK) {
        for (o, &x) in e.iter_mut().zip(c) {
            *o = exp_nonpositive(x - m);
        }
        s += lane_sum(&e[..c.len()]) as f64;
    }
    m as f64 + s.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_reductions_handle_tails() {
        for n in [0usize, 1, 7, 8, 9, 17, 100] {
            let v: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.5).collect();
            let want_max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(lane_max(&v), want_max, "n = {n}");
            let want_sum: f64 = v.iter().map(|&x| x as f64).sum();
            assert!((lane_sum(&v) as f64 - want_sum).abs() < 1e-5, "n = {n}");
        }
    }

    /// The vectorizable exp against f64 over its whole domain: relative error below 4e-7.
    #[test]
    fn exp_nonpositive_is_accurate() {
        let mut worst = 0.0f64;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let got = exp_nonpositive(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(-1000.0) < 2e-38 && exp_nonpositive(f32::NEG_INFINITY) < 2e-38);
    }

    fn lse_f64(v: &[f32]) -> f64 {
        let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        m + v.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
    }

    /// Rows shaped like logits (vocabulary-sized, a few large entries) and edge cases.
    #[test]
    fn log_sum_exp_matches_f64() {
        let mut state = 12345u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        for (n, scale) in [(1usize, 1.0f32), (7, 3.0), (300, 10.0), (50_280, 8.0), (49_152, 30.0)] {
            let v: Vec<f32> = (0..n).map(|_| next() * scale).collect();
            let (got, want) = (log_sum_exp(&v), lse_f64(&v));
            assert!((got - want).abs() < 2e-6, "n {n}: {got} vs {want}");
            assert!((log_sum_exp_body(&v) - got).abs() < 1e-12, "the AVX2 build and the portable one agree");
        }
        assert_eq!(log_sum_exp(&[]), f64::NEG_INFINITY);
        assert_eq!(log_sum_exp(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), f64::NEG_INFINITY);
        assert!((log_sum_exp(&[f32::NEG_INFINITY, 0.0]) - 0.0).abs() < 1e-12);
        assert!(log_sum_exp(&[1.0, f32::NAN]).is_nan());
    }
}
