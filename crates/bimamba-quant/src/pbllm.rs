//! PB-LLM (Shang et al., arXiv 2310.00034; github.com/hahnyuan/PB-LLM, `gptq_pb`), the
//! GPTQ-compensated variant with the Hessian salience metric (ARCHITECTURE.md §6):
//!
//! 1. Salience of every weight `S_ij = W_ij² / U_jj²` (U the upper Cholesky factor of the damped
//!    `H⁻¹`); the fraction f with the largest S (exactly round(f·rows·cols) weights, ties by
//!    position) stays in 8 bits, on the row's asymmetric min-max grid fitted to the original row.
//! 2. The rest is XNOR-binarized with per-row μ, α fitted once to the original binarized entries:
//!    `Ŵ_ij = α_i · sign(W_ij − μ_i) + μ_i`.
//! 3. Columns are quantized left to right with GPTQ's compensation ([`crate::sweep`]), no act-order.
//!
//! Where the official code averages μ and α over the whole row with the salient entries set to 0
//! (its own comment flags this), μ and α here average over the binarized entries only, which is
//! what the formula means.

use rayon::prelude::*;

use crate::gptq::Grid;
use crate::linalg::Hessian;
use crate::sweep::{sweep, Prepared};
use crate::{sign, Bits, Quantized, Result, Settings};

/// Bits of the salient weights.
const HIGH_BITS: u32 = 8;

/// Mask of the `k` largest values of `v` (ties broken by position, lowest first).
fn top_k(v: &[f64], k: usize) -> Vec<bool> {
    let n = v.len();
    let mut mask = vec![false; n];
    if k == 0 || n == 0 {
        return mask;
    }
    if k >= n {
        return vec![true; n];
    }
    let mut c = v.to_vec();
    let (_, &mut thresh, _) = c.select_nth_unstable_by(n - k, f64::total_cmp);
    let mut taken = 0;
    for (m, &x) in mask.iter_mut().zip(v) {
        if x.total_cmp(&thresh).is_gt() {
            *m = true;
            taken += 1;
        }
    }
    for (m, &x) in mask.iter_mut().zip(v) {
        if taken == k {
            break;
        }
        if x.total_cmp(&thresh).is_eq() {
            *m = true;
            taken += 1;
        }
    }
    mask
}

/// PB-LLM of `w: [rows, cols]` keeping `fraction` of the weights in 8 bits.
pub fn pbllm(w: &[f32], rows: usize, cols: usize, hess: &Hessian, fraction: f64, s: &Settings) -> Result<Quantized> {
    let grids: Vec<Grid> =
        if cols == 0 { Vec::new() } else { w.chunks_exact(cols).map(|row| Grid::fit(row, HIGH_BITS)).collect() };
    let mut p = Prepared::new(w, rows, cols, hess, s.damp, false)?;
    let ud = p.u_diag();
    let numel = rows * cols;
    let sal: Vec<f64> = p.w.iter().enumerate().map(|(idx, &v)| v * v / (ud[idx % cols] * ud[idx % cols])).collect();
    let k = ((fraction * numel as f64).round() as usize).min(numel);
    let salient = top_k(&sal, k);
    // (μ, α) per row over the binarized entries.
    let params: Vec<(f64, f64)> = (0..rows)
        .into_par_iter()
        .map(|r| {
            let vals: Vec<f64> = (0..cols).filter(|&j| !salient[r * cols + j]).map(|j| p.w[r * cols + j]).collect();
            if vals.is_empty() {
                return (0.0, 0.0);
            }
            let n = vals.len() as f64;
            let mu = vals.iter().sum::<f64>() / n;
            (mu, vals.iter().map(|v| (v - mu).abs()).sum::<f64>() / n)
        })
        .collect();
    sweep(&mut p, s.block, &|r, c, x| {
        if salient[r * cols + c] {
            grids[r].quantize(x)
        } else {
            let (mu, alpha) = params[r];
            alpha * sign(x - mu) + mu
        }
    });
    let nf = numel.max(1) as f64;
    let paper = (k as f64 * HIGH_BITS as f64 + (numel - k) as f64) / nf;
    // One mask bit per weight; per row α, μ and the 8-bit grid's scale at 16 bits, its zero at 8.
    let storage = paper + 1.0 + (3.0 * 16.0 + HIGH_BITS as f64) / cols.max(1) as f64;
    Ok(Quantized { weight: p.into_weight(), bits: Bits { paper, storage }, salient_fraction: Some(k as f64 / nf) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gptq::tests::{inputs, output_error, weights};
    use crate::Method;

    #[test]
    fn top_k_exact_count_with_ties() {
        let v = [1.0, 3.0, 2.0, 3.0, 3.0, 0.0];
        assert_eq!(top_k(&v, 2), vec![false, true, false, true, false, false]);
        assert_eq!(top_k(&v, 4), vec![false, true, true, true, true, false]);
        assert_eq!(top_k(&v, 0), vec![false; 6]);
        assert_eq!(top_k(&v, 6), vec![true; 6]);
    }

    /// 1 + 7f bits by the paper's count, less layer error than XNOR, the binarized entries of a
    /// row on two levels and the rest on the row's 8-bit grid.
    #[test]
    fn bits_in_range_and_beats_xnor() {
        let (rows, cols, t) = (64, 200, 800);
        let x = inputs(t, cols, 21);
        let w = weights(rows, cols, 22);
        let h = Hessian::from_inputs(&x, t, cols);
        let f = 0.1;
        let q = pbllm(&w, rows, cols, &h, f, &Settings::new(Method::Pbllm { salient_fraction: f })).expect("pbllm");
        let k = (f * (rows * cols) as f64).round();
        assert_eq!(q.salient_fraction, Some(k / (rows * cols) as f64));
        assert!((q.bits.paper - (1.0 + 7.0 * k / (rows * cols) as f64)).abs() < 1e-12);
        assert!(q.bits.paper > 1.6 && q.bits.paper < 1.8, "paper bits {}", q.bits.paper);
        assert!(q.bits.storage > q.bits.paper + 1.0);
        let xn = crate::xnor::xnor(&w, rows, cols);
        let e = output_error(&x, t, &w, &q.weight, rows, cols);
        let e_x = output_error(&x, t, &w, &xn.weight, rows, cols);
        assert!(e < 0.5 * e_x, "pbllm {e:.4e} vs xnor {e_x:.4e}");
        // Per row, the binarized entries share two values (the row's two most frequent); every
        // other entry is on the row's 8-bit grid.
        let mut in_top2 = 0usize;
        for r in 0..rows {
            let g = Grid::fit(&w[r * cols..(r + 1) * cols], 8);
            let row = &q.weight[r * cols..(r + 1) * cols];
            let mut counts: Vec<(f32, usize)> = Vec::new();
            for &v in row {
                match counts.iter_mut().find(|(u, _)| *u == v) {
                    Some((_, c)) => *c += 1,
                    None => counts.push((v, 1)),
                }
            }
            counts.sort_by_key(|c| std::cmp::Reverse(c.1));
            let top: Vec<f32> = counts.iter().take(2).map(|c| c.0).collect();
            for &v in row {
                if top.contains(&v) {
                    in_top2 += 1;
                } else {
                    let code = v as f64 / g.scale + g.zero;
                    assert!(
                        (code - code.round()).abs() < 1e-3,
                        "row {r}: {v} is neither binarized nor on the 8-bit grid"
                    );
                }
            }
        }
        assert!(in_top2 as f64 >= (rows * cols) as f64 - k, "{in_top2} entries on the binary levels");
    }

    /// With no salient weights PB-LLM is GPTQ-compensated XNOR: two levels per row, 1 bit.
    #[test]
    fn zero_fraction_is_compensated_xnor() {
        let (rows, cols, t) = (16, 64, 300);
        let x = inputs(t, cols, 31);
        let w = weights(rows, cols, 32);
        let h = Hessian::from_inputs(&x, t, cols);
        let q = pbllm(&w, rows, cols, &h, 0.0, &Settings::new(Method::Pbllm { salient_fraction: 0.0 })).expect("pbllm");
        assert_eq!(q.bits.paper, 1.0);
        for r in 0..rows {
            let mut lv: Vec<f32> = q.weight[r * cols..(r + 1) * cols].to_vec();
            lv.sort_by(f32::total_cmp);
            lv.dedup();
            assert!(lv.len() <= 2);
        }
        let xn = crate::xnor::xnor(&w, rows, cols);
        assert!(output_error(&x, t, &w, &q.weight, rows, cols) < output_error(&x, t, &w, &xn.weight, rows, cols));
    }
}
