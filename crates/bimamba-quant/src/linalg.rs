//! The second-order statistics every calibrated method needs, by hand in f64:
//! the layer Hessian `H = 2/N Σ x xᵀ` and the upper Cholesky factor of its (damped) inverse.
//!
//! Matrices are row-major `n × n` `Vec<f64>`. Sizes go up to 5120 (out_proj of the 2.7B model), so
//! the O(n³) steps are blocked and split over the rayon pool.

use rayon::prelude::*;

/// Features per block column of the Gram product.
const GRAM_BLOCK: usize = 128;

/// Accumulates `Σ_t x_t x_tᵀ` over the calibration inputs of one projection.
///
/// # Shapes
/// - inputs `x`: [t, n] (one row per token), the sum: [n, n]
#[derive(Clone, Debug)]
pub struct Hessian {
    n: usize,
    /// [n, n] f64: Σ x xᵀ, filled on and below the diagonal blocks of GRAM_BLOCK features.
    sum: Vec<f64>,
    tokens: usize,
    /// f32 scratch for one block column of a batch's Gram matrix.
    scratch: Vec<f32>,
}

impl Hessian {
    pub fn new(n: usize) -> Hessian {
        Hessian { n, sum: vec![0.0; n * n], tokens: 0, scratch: Vec::new() }
    }

    /// A Hessian of one batch of inputs (tests, single-shot use).
    pub fn from_inputs(x: &[f32], t: usize, n: usize) -> Hessian {
        let mut h = Hessian::new(n);
        h.add(x, t);
        h
    }

    /// Input features (the projection's `cols`).
    pub fn dim(&self) -> usize {
        self.n
    }

    /// Tokens seen so far (N).
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Adds the Gram matrix `XᵀX` of a batch `x: [t, n]`. The batch product runs in f32 through the
    /// SIMD kernels (at most one window of tokens per sum); batches are summed in f64. Only the
    /// blocks on and below the diagonal are computed (about half the work); [`Hessian::matrix`]
    /// mirrors them.
    pub fn add(&mut self, x: &[f32], t: usize) {
        let n = self.n;
        assert_eq!(x.len(), t * n, "Hessian::add: x has {} elements, expected [{t} x {n}]", x.len());
        if t == 0 {
            return;
        }
        // xt: [n, t], one row per input feature.
        let mut xt = vec![0.0f32; n * t];
        for (k, row) in x.chunks_exact(n).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                xt[i * t + k] = v;
            }
        }
        for b0 in (0..n).step_by(GRAM_BLOCK) {
            let b1 = (b0 + GRAM_BLOCK).min(n);
            let (nb, below) = (b1 - b0, n - b0);
            // dense_gemm: y[k, i] = Σ_j w[i, j] · x[k, j]. With w = features b0..b1 and
            // x = features b0..n this is y[k, i] = Σ_tok X[tok, b0 + i] · X[tok, b0 + k]: the
            // block column b0..b1 of XᵀX from its diagonal block down.
            self.scratch.resize(below * nb, 0.0);
            bimamba_kernels::dense_gemm_f32(&xt[b0 * t..b1 * t], nb, t, &xt[b0 * t..], below, &mut self.scratch);
            self.sum[b0 * n..]
                .par_chunks_mut(n)
                .zip(self.scratch.par_chunks(nb))
                .for_each(|(s, g)| s[b0..b1].iter_mut().zip(g).for_each(|(a, &v)| *a += v as f64));
        }
        self.tokens += t;
    }

    /// `H = 2/N Σ x xᵀ` (GPTQ's normalization; the factor does not change any method's result).
    pub fn matrix(&self) -> Vec<f64> {
        let n = self.n;
        let scale = if self.tokens == 0 { 0.0 } else { 2.0 / self.tokens as f64 };
        // `sum` is filled on and below the diagonal blocks, so its lower triangle is complete;
        // reading only that makes H exactly symmetric.
        let mut h = vec![0.0f64; n * n];
        h.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
            for (k, v) in row.iter_mut().enumerate() {
                let src = if k <= i { i * n + k } else { k * n + i };
                *v = self.sum[src] * scale;
            }
        });
        h
    }

    /// Root mean square of the inputs: sqrt(Σ_t ‖x_t‖² / (N · n)).
    pub fn input_rms(&self) -> f64 {
        let n = self.n;
        let trace: f64 = (0..n).map(|i| self.sum[i * n + i]).sum();
        (trace / (self.tokens.max(1) * n.max(1)) as f64).sqrt()
    }
}

/// Dot product with four independent accumulators (so that it vectorizes).
#[inline]
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f64; 4];
    let mut ca = a.chunks_exact(4);
    let mut cb = b.chunks_exact(4);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..4 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// `y ← y + a·x`.
#[inline]
pub(crate) fn axpy(y: &mut [f64], a: f64, x: &[f64]) {
    for (v, &u) in y.iter_mut().zip(x) {
        *v += a * u;
    }
}

/// Cholesky failed: the pivot of `column` was not positive (or not finite).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NotPositiveDefinite {
    pub column: usize,
    pub pivot: f64,
}

/// Panel width of the blocked factorizations.
const NB: usize = 64;

/// In-place lower Cholesky `A = L Lᵀ` of a symmetric positive definite `a: [n, n]` (only the
/// lower triangle is read); on return the lower triangle holds L and the strict upper one is zero.
///
/// Right-looking blocked algorithm: factor a 64-column diagonal block, solve the panel below it
/// (`L21 = A21 · L11⁻ᵀ`, rows in parallel), then subtract `L21 L21ᵀ` from the trailing matrix
/// (rows in parallel). The trailing update is the O(n³) part.
pub fn cholesky_in_place(a: &mut [f64], n: usize) -> Result<(), NotPositiveDefinite> {
    assert_eq!(a.len(), n * n, "cholesky: matrix has {} elements, expected {n} x {n}", a.len());
    for k0 in (0..n).step_by(NB) {
        let k1 = (k0 + NB).min(n);
        // Diagonal block: earlier panels' contributions were already subtracted.
        for j in k0..k1 {
            let s = dot(&a[j * n + k0..j * n + j], &a[j * n + k0..j * n + j]);
            let d = a[j * n + j] - s;
            if !(d > 0.0 && d.is_finite()) {
                return Err(NotPositiveDefinite { column: j, pivot: d });
            }
            let ljj = d.sqrt();
            a[j * n + j] = ljj;
            for i in j + 1..k1 {
                let s = dot(&a[i * n + k0..i * n + j], &a[j * n + k0..j * n + j]);
                a[i * n + j] = (a[i * n + j] - s) / ljj;
            }
        }
        if k1 == n {
            break;
        }
        let (top, bottom) = a.split_at_mut(k1 * n);
        let diag = &top[k0 * n..];
        // Panel: rows below the diagonal block, forward substitution against L11.
        bottom.par_chunks_mut(n).for_each(|row| {
            for j in k0..k1 {
                let s = dot(&row[k0..j], &diag[(j - k0) * n + k0..(j - k0) * n + j]);
                row[j] = (row[j] - s) / diag[(j - k0) * n + j];
            }
        });
        // Trailing update A22 -= L21 L21ᵀ (lower triangle), from a contiguous copy of the panel.
        let nb = k1 - k0;
        let panel: Vec<f64> = bottom.chunks_exact(n).flat_map(|row| row[k0..k1].iter().copied()).collect();
        bottom.par_chunks_mut(n).enumerate().for_each(|(ii, row)| {
            let pi = &panel[ii * nb..(ii + 1) * nb];
            for (jj, pj) in panel.chunks_exact(nb).take(ii + 1).enumerate() {
                row[k1 + jj] -= dot(pi, pj);
            }
        });
    }
    for i in 0..n {
        a[i * n + i + 1..(i + 1) * n].iter_mut().for_each(|v| *v = 0.0);
    }
    Ok(())
}

/// Inverse of a lower-triangular `l: [n, n]` with a positive diagonal, itself lower triangular.
/// Column j of `L⁻¹` solves `L m = e_j` by forward substitution; columns are independent, so they
/// run in parallel (n³/6 multiply-adds in all).
pub fn lower_inverse(l: &[f64], n: usize) -> Vec<f64> {
    assert_eq!(l.len(), n * n, "lower_inverse: matrix has {} elements, expected {n} x {n}", l.len());
    // cols[j] holds m[j..n] of column j.
    let cols: Vec<Vec<f64>> = (0..n)
        .into_par_iter()
        .map(|j| {
            let mut m = vec![0.0f64; n - j];
            m[0] = 1.0 / l[j * n + j];
            for i in j + 1..n {
                let s = dot(&l[i * n + j..i * n + i], &m[..i - j]);
                m[i - j] = -s / l[i * n + i];
            }
            m
        })
        .collect();
    let mut out = vec![0.0f64; n * n];
    for (j, m) in cols.iter().enumerate() {
        for (k, &v) in m.iter().enumerate() {
            out[(j + k) * n + j] = v;
        }
    }
    out
}

/// The upper Cholesky factor U of `H⁻¹` (`H⁻¹ = UᵀU`), GPTQ's `cholesky(cholesky_inverse(
/// cholesky(H)), upper=True)`, computed without forming `H⁻¹`:
///
/// with J the order-reversing permutation, factor `J H J = L Lᵀ`; then
/// `H⁻¹ = J L⁻ᵀ L⁻¹ J = (J L⁻¹ J)ᵀ (J L⁻¹ J)`, and `J L⁻¹ J` is upper triangular with a positive
/// diagonal, so by uniqueness it is U. One Cholesky and one triangular inverse (2n³/3 flops in
/// place of n³), and no rounding from an explicit inverse.
pub fn inverse_upper_cholesky(h: &[f64], n: usize) -> Result<Vec<f64>, NotPositiveDefinite> {
    assert_eq!(h.len(), n * n, "inverse_upper_cholesky: matrix has {} elements, expected {n} x {n}", h.len());
    let rev = |i: usize| n - 1 - i;
    let mut p = vec![0.0f64; n * n];
    for a in 0..n {
        for b in 0..=a {
            p[a * n + b] = h[rev(a) * n + rev(b)];
        }
    }
    cholesky_in_place(&mut p, n).map_err(|e| NotPositiveDefinite { column: rev(e.column), pivot: e.pivot })?;
    let m = lower_inverse(&p, n);
    let mut u = vec![0.0f64; n * n];
    for a in 0..n {
        for b in a..n {
            u[a * n + b] = m[rev(a) * n + rev(b)];
        }
    }
    Ok(u)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) struct Lcg(pub u64);
    impl Lcg {
        /// Uniform in [-1, 1).
        pub fn next(&mut self) -> f64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        }
        /// Approximately standard normal (sum of 12 uniforms).
        pub fn normal(&mut self) -> f64 {
            (0..12).map(|_| 0.5 * (self.next() + 1.0)).sum::<f64>() - 6.0
        }
    }

    /// A random SPD matrix B Bᵀ + 0.1 I with B [n, n+3].
    fn spd(n: usize, seed: u64) -> Vec<f64> {
        let mut r = Lcg(seed);
        let m = n + 3;
        let b: Vec<f64> = (0..n * m).map(|_| r.next()).collect();
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = dot(&b[i * m..(i + 1) * m], &b[j * m..(j + 1) * m]) + if i == j { 0.1 } else { 0.0 };
            }
        }
        a
    }

    fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
        let mut c = vec![0.0; n * n];
        for i in 0..n {
            for k in 0..n {
                let v = a[i * n + k];
                for j in 0..n {
                    c[i * n + j] += v * b[k * n + j];
                }
            }
        }
        c
    }

    fn transpose(a: &[f64], n: usize) -> Vec<f64> {
        (0..n * n).map(|idx| a[(idx % n) * n + idx / n]).collect()
    }

    /// Sizes around the 64-wide panel, including tails.
    const SIZES: [usize; 6] = [1, 5, 63, 64, 65, 150];

    #[test]
    fn cholesky_reconstructs() {
        for (s, &n) in SIZES.iter().enumerate() {
            let a = spd(n, 11 + s as u64);
            let mut l = a.clone();
            cholesky_in_place(&mut l, n).expect("SPD");
            for i in 0..n {
                assert!(l[i * n + i] > 0.0);
                for j in i + 1..n {
                    assert_eq!(l[i * n + j], 0.0, "upper triangle must be zero");
                }
            }
            let llt = matmul(&l, &transpose(&l, n), n);
            let scale = a.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for (x, y) in llt.iter().zip(&a) {
                assert!((x - y).abs() <= 1e-11 * scale, "n={n}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn cholesky_rejects_indefinite() {
        let n = 70;
        let mut a = spd(n, 3);
        a[67 * n + 67] = -1.0;
        let e = cholesky_in_place(&mut a, n).expect_err("indefinite");
        assert_eq!(e.column, 67);
    }

    #[test]
    fn lower_inverse_is_inverse() {
        for (s, &n) in SIZES.iter().enumerate() {
            let mut l = spd(n, 40 + s as u64);
            cholesky_in_place(&mut l, n).expect("SPD");
            let m = lower_inverse(&l, n);
            let id = matmul(&l, &m, n);
            for i in 0..n {
                for j in 0..n {
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((id[i * n + j] - want).abs() < 1e-9, "n={n} ({i},{j}): {}", id[i * n + j]);
                    if j > i {
                        assert_eq!(m[i * n + j], 0.0);
                    }
                }
            }
        }
    }

    /// UᵀU H = I with U upper triangular and a positive diagonal.
    #[test]
    fn inverse_upper_cholesky_factors_the_inverse() {
        for (s, &n) in SIZES.iter().enumerate() {
            let h = spd(n, 70 + s as u64);
            let u = inverse_upper_cholesky(&h, n).expect("SPD");
            for i in 0..n {
                assert!(u[i * n + i] > 0.0);
                for j in 0..i {
                    assert_eq!(u[i * n + j], 0.0, "U must be upper triangular");
                }
            }
            let hinv = matmul(&transpose(&u, n), &u, n);
            let id = matmul(&hinv, &h, n);
            for i in 0..n {
                for j in 0..n {
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((id[i * n + j] - want).abs() < 1e-8, "n={n} ({i},{j}): {}", id[i * n + j]);
                }
            }
        }
    }

    #[test]
    fn hessian_is_two_over_n_gram() {
        let (t, n) = (37, 300);
        let mut r = Lcg(5);
        let x: Vec<f32> = (0..t * n).map(|_| r.next() as f32).collect();
        let mut h = Hessian::new(n);
        h.add(&x[..20 * n], 20);
        h.add(&x[20 * n..], t - 20);
        assert_eq!(h.tokens(), t);
        let m = h.matrix();
        for i in 0..n {
            for j in 0..n {
                let want: f64 = (0..t).map(|k| x[k * n + i] as f64 * x[k * n + j] as f64).sum::<f64>() * 2.0 / t as f64;
                assert!((m[i * n + j] - want).abs() < 1e-5, "({i},{j}) {} vs {want}", m[i * n + j]);
                assert_eq!(m[i * n + j], m[j * n + i], "symmetric");
            }
        }
        let rms = (x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / (t * n) as f64).sqrt();
        assert!((h.input_rms() - rms).abs() < 1e-6);
    }
}
