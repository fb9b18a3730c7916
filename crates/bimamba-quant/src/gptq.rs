//! GPTQ (Frantar et al., arXiv 2210.17323) as the Bi-Mamba paper ran it (ARCHITECTURE.md §6): b ∈ {2, 3}
//! bits, an asymmetric min-max grid per output row, act-order, damping 0.01, blocks of 128 with
//! lazy batch updates. The sweep itself lives in [`crate::sweep`].
//!
//! Grid of row i (GPTQ's `Quantizer.find_params`, per channel): the range is widened to contain 0,
//! ```text
//! lo = min(min_j W_ij, 0)   hi = max(max_j W_ij, 0)   s = (hi − lo)/(2^b − 1)   z = round(−lo/s)
//! Q(x) = s · (clamp(round(x/s) + z, 0, 2^b − 1) − z)
//! ```
//! with round-half-to-even as torch.round. The grid is fitted once on the original row.

use rayon::prelude::*;

use crate::linalg::Hessian;
use crate::sweep::{sweep, Prepared};
use crate::{Bits, Quantized, Result, Settings};

/// An asymmetric uniform grid of `2^bits` levels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Grid {
    pub scale: f64,
    pub zero: f64,
    pub maxq: f64,
}

impl Grid {
    /// The min-max grid of `row` (see the module doc).
    pub fn fit(row: &[f32], bits: u32) -> Grid {
        let maxq = ((1u64 << bits) - 1) as f64;
        let mut lo = row.iter().fold(0.0f64, |m, &v| m.min(v as f64));
        let mut hi = row.iter().fold(0.0f64, |m, &v| m.max(v as f64));
        if lo == 0.0 && hi == 0.0 {
            lo = -1.0;
            hi = 1.0;
        }
        let scale = (hi - lo) / maxq;
        Grid { scale, zero: (-lo / scale).round_ties_even(), maxq }
    }

    #[inline]
    pub fn quantize(&self, x: f64) -> f64 {
        let q = ((x / self.scale).round_ties_even() + self.zero).clamp(0.0, self.maxq);
        self.scale * (q - self.zero)
    }
}

/// Bits of a `bits`-bit per-row grid: the codes, plus a 16-bit scale and a `bits`-bit zero per row.
fn grid_bits(bits: u32, cols: usize) -> Bits {
    let b = bits as f64;
    Bits { paper: b, storage: b + (16.0 + b) / cols.max(1) as f64 }
}

/// Round-to-nearest on the same grid, without compensation (the baseline GPTQ improves on).
pub fn rtn(w: &[f32], rows: usize, cols: usize, bits: u32) -> Quantized {
    assert_eq!(w.len(), rows * cols, "weight has {} elements, expected [{rows} x {cols}]", w.len());
    let mut weight = vec![0.0f32; rows * cols];
    if cols > 0 {
        weight.par_chunks_mut(cols).zip(w.par_chunks(cols)).for_each(|(out, row)| {
            let g = Grid::fit(row, bits);
            for (o, &v) in out.iter_mut().zip(row) {
                *o = g.quantize(v as f64) as f32;
            }
        });
    }
    Quantized { weight, bits: grid_bits(bits, cols), salient_fraction: None }
}

/// GPTQ of `w: [rows, cols]` with the Hessian of its inputs.
pub fn gptq(w: &[f32], rows: usize, cols: usize, hess: &Hessian, bits: u32, s: &Settings) -> Result<Quantized> {
    let grids: Vec<Grid> =
        if cols == 0 { Vec::new() } else { w.chunks_exact(cols).map(|row| Grid::fit(row, bits)).collect() };
    let mut p = Prepared::new(w, rows, cols, hess, s.damp, s.act_order)?;
    sweep(&mut p, s.block, &|r, _c, x| grids[r].quantize(x));
    Ok(Quantized { weight: p.into_weight(), bits: grid_bits(bits, cols), salient_fraction: None })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::linalg::tests::Lcg;
    use crate::Method;

    /// Calibration-like inputs: correlated channels (a random mixing of fewer latent factors) and
    /// a few channels with large magnitude, as in real activations.
    pub(crate) fn inputs(t: usize, n: usize, seed: u64) -> Vec<f32> {
        let mut r = Lcg(seed);
        let k = (n / 2).max(1);
        let mix: Vec<f64> = (0..k * n).map(|_| r.normal() / (k as f64).sqrt()).collect();
        let gain: Vec<f64> = (0..n).map(|j| if j % 17 == 3 { 6.0 } else { 0.5 + r.next().abs() }).collect();
        let mut x = vec![0.0f32; t * n];
        for tok in 0..t {
            let z: Vec<f64> = (0..k).map(|_| r.normal()).collect();
            for j in 0..n {
                let v: f64 = (0..k).map(|a| z[a] * mix[a * n + j]).sum::<f64>() + 0.3 * r.normal();
                x[tok * n + j] = (v * gain[j]) as f32;
            }
        }
        x
    }

    pub(crate) fn weights(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut r = Lcg(seed);
        (0..rows * cols).map(|_| (r.normal() * 0.05) as f32).collect()
    }

    /// ‖X Wᵀ − X Ŵᵀ‖²_F computed directly from the inputs.
    pub(crate) fn output_error(x: &[f32], t: usize, w: &[f32], q: &[f32], rows: usize, cols: usize) -> f64 {
        let mut e = 0.0f64;
        for tok in 0..t {
            let xt = &x[tok * cols..(tok + 1) * cols];
            for i in 0..rows {
                let d: f64 = (0..cols).map(|j| xt[j] as f64 * (w[i * cols + j] as f64 - q[i * cols + j] as f64)).sum();
                e += d * d;
            }
        }
        e
    }

    #[test]
    fn grid_levels_and_rounding() {
        let g = Grid::fit(&[-1.0, 0.5, 2.0], 2);
        assert_eq!((g.scale, g.zero, g.maxq), (1.0, 1.0, 3.0));
        assert_eq!(g.quantize(0.5), 0.0, "0.5 rounds half to even");
        assert_eq!(g.quantize(1.5), 2.0);
        assert_eq!(g.quantize(9.0), 2.0, "clamped to the top level");
        assert_eq!(g.quantize(-9.0), -1.0, "clamped to the bottom level");
        // A positive row still contains 0 in its range.
        let g = Grid::fit(&[1.0, 4.0], 3);
        assert_eq!(g.quantize(0.0), 0.0);
        assert_eq!(Grid::fit(&[0.0, 0.0], 2).quantize(0.0), 0.0);
    }

    /// GPTQ beats round-to-nearest on the layer output error, at 2 and 3 bits, with and without
    /// act-order, and its values stay on each row's grid.
    #[test]
    fn gptq_lowers_output_error_against_rtn() {
        let (rows, cols, t) = (48, 160, 600);
        let x = inputs(t, cols, 1);
        let w = weights(rows, cols, 2);
        let h = Hessian::from_inputs(&x, t, cols);
        for bits in [2, 3] {
            let base = rtn(&w, rows, cols, bits);
            let e_rtn = output_error(&x, t, &w, &base.weight, rows, cols);
            for act_order in [true, false] {
                let s = Settings { act_order, ..Settings::new(Method::Gptq { bits }) };
                let q = gptq(&w, rows, cols, &h, bits, &s).expect("gptq");
                let e = output_error(&x, t, &w, &q.weight, rows, cols);
                assert!(e < 0.8 * e_rtn, "{bits} bits, act_order={act_order}: gptq {e:.4e} vs rtn {e_rtn:.4e}");
                for i in 0..rows {
                    let g = Grid::fit(&w[i * cols..(i + 1) * cols], bits);
                    for j in 0..cols {
                        let v = q.weight[i * cols + j] as f64;
                        let code = v / g.scale + g.zero;
                        assert!(
                            (code - code.round()).abs() < 1e-4 && code.round() >= 0.0 && code.round() <= g.maxq,
                            "({i},{j}) {v} off the grid"
                        );
                    }
                }
                // The H-based error agrees with the direct one.
                let rel = crate::sweep::relative_output_error(&w, &q.weight, rows, cols, &h);
                let e_w = output_error(&x, t, &w, &vec![0.0; rows * cols], rows, cols);
                assert!((rel - e / e_w).abs() < 1e-3 * (e / e_w) + 1e-6, "relative error {rel} vs {}", e / e_w);
            }
            assert_eq!(base.bits.paper, bits as f64);
        }
    }

    /// A column that no input touches is zeroed, as GPTQ does.
    #[test]
    fn dead_columns_are_zeroed() {
        let (rows, cols, t) = (8, 20, 50);
        let mut x = inputs(t, cols, 4);
        for tok in 0..t {
            x[tok * cols + 7] = 0.0;
        }
        let w = weights(rows, cols, 5);
        let h = Hessian::from_inputs(&x, t, cols);
        let q = gptq(&w, rows, cols, &h, 3, &Settings::new(Method::Gptq { bits: 3 })).expect("gptq");
        for i in 0..rows {
            assert_eq!(q.weight[i * cols + 7], 0.0);
        }
    }
}
