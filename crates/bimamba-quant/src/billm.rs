//! BiLLM (Huang et al., arXiv 2402.04291; github.com/Aaronhuang-778/BiLLM), as its official code
//! runs with the Hessian salience metric (ARCHITECTURE.md §6). Per block of 128 columns, left to right:
//!
//! 1. Salience of the block's current weights: `S_ij = W_ij² / U_jj²`, with U the upper Cholesky
//!    factor of the damped `H⁻¹` (the code divides by the diagonal of that factor).
//! 2. Salient columns: columns ranked by `Σ_i S_ij`; the count c ∈ [1, 50) minimizing the error of
//!    binarizing S with two residual terms on the top-c columns and two on the rest.
//! 3. Split of the other columns' entries into two groups by `S < p` / `S ≥ p`, p searched over the
//!    81 percentiles 10%..90% of `|S|` over the block (salient entries counted as 0), minimizing
//!    the error of binarizing each group of S with one term.
//! 4. The block's weights are binarized with those masks: salient columns with the order-2 residual
//!    approximation, each group with one term; all statistics are per row over the member entries:
//!    ```text
//!    order 1: μ = mean x, α = mean |x − μ|, b = α·sign(x − μ) + μ;   order 2: b + the same on x − b
//!    ```
//! 5. GPTQ-style compensation to the later blocks only: `E_ij = (W_ij − Ŵ_ij)/U_jj`,
//!    `W[:, end:] −= E · U[block, end:]` (BiLLM applies no update inside a block).
//!
//! Searches (2, 3) measure error on S itself, as the official code does. Ties go to the first
//! candidate. Where torch.sign gives 0 the sign here is +1 (one bit per weight).

use rayon::prelude::*;

use crate::linalg::Hessian;
use crate::sweep::{propagate_block, Prepared};
use crate::{sign, Bits, Quantized, Result, Settings};

/// Salient-column counts searched: 1..SALIENT_SEARCH (BiLLM's `up_lim` = 50).
const SALIENT_SEARCH: usize = 50;
/// Split candidates: percentiles 0.10, 0.11, ..., 0.90 of the block's |S|.
const SPLIT_PERCENTILES: usize = 81;

/// Residual binarization of `x` with `order` sign terms (see the module doc); writes the
/// approximation to `approx` and returns `Σ (x − approx)²`. An empty set costs nothing.
pub(crate) fn braq(x: &[f64], order: usize, approx: &mut [f64]) -> f64 {
    let approx = &mut approx[..x.len()];
    approx.iter_mut().for_each(|a| *a = 0.0);
    if x.is_empty() {
        return 0.0;
    }
    let n = x.len() as f64;
    for _ in 0..order {
        let mu = x.iter().zip(approx.iter()).map(|(v, a)| v - a).sum::<f64>() / n;
        let alpha = x.iter().zip(approx.iter()).map(|(v, a)| (v - a - mu).abs()).sum::<f64>() / n;
        for (a, v) in approx.iter_mut().zip(x) {
            *a += alpha * sign(v - *a - mu) + mu;
        }
    }
    x.iter().zip(approx.iter()).map(|(v, a)| (v - a) * (v - a)).sum()
}

/// The masks of one block.
#[derive(Clone, Debug, PartialEq)]
struct BlockPlan {
    /// [nb]: column j of the block is salient.
    salient: Vec<bool>,
    /// Non-salient entries with `S ≥ split` form the second group.
    split: f64,
}

/// Steps 2 and 3 of the module doc on the salience `s: [rows, nb]`.
fn search_block(s: &[f64], rows: usize, nb: usize) -> BlockPlan {
    let score: Vec<f64> = (0..nb).map(|j| (0..rows).map(|r| s[r * nb + j].abs()).sum()).collect();
    let mut order: Vec<usize> = (0..nb).collect();
    order.sort_by(|&a, &b| score[b].total_cmp(&score[a]));

    // Candidate c = 1..up-1 salient columns; per-row errors first, then summed in row order so
    // that the choice does not depend on the thread count.
    let up = SALIENT_SEARCH.min(nb);
    let mut count = 0;
    if up > 1 {
        let m = up - 1;
        let mut per_row = vec![0.0f64; rows * m];
        per_row.par_chunks_mut(m).enumerate().for_each(|(r, e)| {
            let row: Vec<f64> = order.iter().map(|&j| s[r * nb + j]).collect();
            let mut scratch = vec![0.0f64; nb];
            for c in 1..up {
                e[c - 1] = braq(&row[..c], 2, &mut scratch) + braq(&row[c..], 2, &mut scratch);
            }
        });
        count = 1 + argmin(&column_sums(&per_row, rows, m));
    }
    let mut salient = vec![false; nb];
    for &j in &order[..count] {
        salient[j] = true;
    }

    // Percentiles of |S ∘ ¬salient| over the whole block (numpy's linear interpolation).
    let mut flat: Vec<f64> = (0..rows * nb).map(|idx| if salient[idx % nb] { 0.0 } else { s[idx].abs() }).collect();
    flat.sort_by(f64::total_cmp);
    let splits: Vec<f64> = (0..SPLIT_PERCENTILES)
        .map(|k| quantile_sorted(&flat, 0.10 + 0.80 * k as f64 / (SPLIT_PERCENTILES - 1) as f64))
        .collect();
    // The salient columns' error is the same for every split, so it is left out of the sum.
    let mut per_row = vec![0.0f64; rows * SPLIT_PERCENTILES];
    per_row.par_chunks_mut(SPLIT_PERCENTILES).enumerate().for_each(|(r, e)| {
        let mut rest: Vec<f64> = (0..nb).filter(|&j| !salient[j]).map(|j| s[r * nb + j]).collect();
        rest.sort_by(|a, b| a.abs().total_cmp(&b.abs()));
        let mut scratch = vec![0.0f64; nb];
        for (k, &p) in splits.iter().enumerate() {
            let cut = rest.partition_point(|v| v.abs() < p);
            e[k] = braq(&rest[..cut], 1, &mut scratch) + braq(&rest[cut..], 1, &mut scratch);
        }
    });
    let split = splits[argmin(&column_sums(&per_row, rows, SPLIT_PERCENTILES))];
    BlockPlan { salient, split }
}

/// Σ over rows of a [rows, m] table, in row order.
fn column_sums(t: &[f64], rows: usize, m: usize) -> Vec<f64> {
    let mut sums = vec![0.0f64; m];
    for row in t.chunks_exact(m).take(rows) {
        sums.iter_mut().zip(row).for_each(|(a, b)| *a += b);
    }
    sums
}

/// Index of the first strict minimum.
fn argmin(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x < v[best] {
            best = i;
        }
    }
    best
}

/// numpy.quantile(method='linear') of ascending `v` at q ∈ [0, 1].
fn quantile_sorted(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let pos = q * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    v[lo] + (pos - lo as f64) * (v[hi] - v[lo])
}

/// Step 4 on one row of the block: `w` current weights, `s` salience, both [nb]; writes Ŵ to `q`.
fn binarize_row(w: &[f64], s: &[f64], plan: &BlockPlan, q: &mut [f64]) {
    let nb = w.len();
    let group = |j: usize| {
        if plan.salient[j] {
            0
        } else if s[j].abs() < plan.split {
            1
        } else {
            2
        }
    };
    let mut scratch = vec![0.0f64; nb];
    for (g, order) in [(0, 2), (1, 1), (2, 1)] {
        let idx: Vec<usize> = (0..nb).filter(|&j| group(j) == g).collect();
        let vals: Vec<f64> = idx.iter().map(|&j| w[j]).collect();
        braq(&vals, order, &mut scratch);
        for (k, &j) in idx.iter().enumerate() {
            q[j] = scratch[k];
        }
    }
}

/// BiLLM of `w: [rows, cols]` with the Hessian of its inputs.
pub fn billm(w: &[f32], rows: usize, cols: usize, hess: &Hessian, s: &Settings) -> Result<Quantized> {
    let mut p = Prepared::new(w, rows, cols, hess, s.damp, false)?;
    let ud = p.u_diag();
    let block = s.block;
    let mut salient_cols = 0usize;
    let mut blocks = 0usize;
    for st in (0..cols).step_by(block) {
        let ed = (st + block).min(cols);
        let nb = ed - st;
        blocks += 1;
        // sal: [rows, nb] salience of the current (already compensated) weights.
        let mut sal = vec![0.0f64; rows * nb];
        sal.par_chunks_mut(nb).enumerate().for_each(|(r, out)| {
            for (k, o) in out.iter_mut().enumerate() {
                let v = p.w[r * cols + st + k];
                *o = v * v / (ud[st + k] * ud[st + k]);
            }
        });
        let plan = search_block(&sal, rows, nb);
        salient_cols += plan.salient.iter().filter(|&&b| b).count();
        let mut err = vec![0.0f64; rows * nb];
        p.w.par_chunks_mut(cols).zip(err.par_chunks_mut(nb)).zip(sal.par_chunks(nb)).for_each(|((row, e), srow)| {
            let wb = &mut row[st..ed];
            let mut q = vec![0.0f64; nb];
            binarize_row(wb, srow, &plan, &mut q);
            for k in 0..nb {
                e[k] = (wb[k] - q[k]) / ud[st + k];
                wb[k] = q[k];
            }
        });
        propagate_block(&mut p.w, cols, &p.u, st, ed, &err);
    }
    let numel = (rows * cols).max(1) as f64;
    let salient_weights = (rows * salient_cols) as f64;
    let paper = 1.0 + salient_weights / numel;
    // Group marker per non-salient weight, salient-column bitmap, 8 scales per row per block
    // (α, μ for each of the two groups and of the two residual terms) at 16 bits.
    let extra = (numel - salient_weights) + cols as f64 + (rows * blocks * 8 * 16) as f64;
    Ok(Quantized {
        weight: p.into_weight(),
        bits: Bits { paper, storage: paper + extra / numel },
        salient_fraction: Some(salient_weights / numel),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gptq::tests::{inputs, output_error, weights};
    use crate::Method;

    #[test]
    fn braq_orders() {
        let mut a = vec![0.0; 4];
        // Order 1 on [1, 2, 3, 6]: μ = 3, α = 1.5.
        let e = braq(&[1.0, 2.0, 3.0, 6.0], 1, &mut a);
        assert_eq!(a, vec![1.5, 1.5, 4.5, 4.5]);
        assert_eq!(e, 0.25 + 0.25 + 2.25 + 2.25);
        // Order 2 fits four distinct values exactly when they are ±a ± b.
        let e2 = braq(&[-3.0, -1.0, 1.0, 3.0], 2, &mut a);
        assert_eq!(a, vec![-3.0, -1.0, 1.0, 3.0]);
        assert_eq!(e2, 0.0);
        assert_eq!(braq(&[], 2, &mut a), 0.0);
    }

    #[test]
    fn quantiles_match_numpy() {
        let v = [0.0, 1.0, 2.0, 10.0];
        assert_eq!(quantile_sorted(&v, 0.0), 0.0);
        assert_eq!(quantile_sorted(&v, 0.5), 1.5);
        assert!((quantile_sorted(&v, 0.9) - 7.6).abs() < 1e-12);
        assert_eq!(quantile_sorted(&v, 1.0), 10.0);
    }

    /// A block with a few columns of large salience picks (at least) those as salient.
    #[test]
    fn search_finds_outlier_columns() {
        let (rows, nb) = (40, 64);
        let w = weights(rows, nb, 3);
        let mut s: Vec<f64> = w.iter().map(|&v| (v as f64).powi(2)).collect();
        for r in 0..rows {
            for j in [5, 17, 40] {
                s[r * nb + j] = 50.0 * (1.0 + (r % 3) as f64) * 2.5e-3;
            }
        }
        let plan = search_block(&s, rows, nb);
        for j in [5, 17, 40] {
            assert!(plan.salient[j], "column {j} should be salient");
        }
        assert!(plan.split > 0.0);
    }

    /// About 1.1 bits per weight by the paper's count, and less layer error than XNOR; each row
    /// of each block holds at most 2 + 2 non-salient levels and 4 salient levels.
    #[test]
    fn bits_in_range_and_beats_xnor() {
        let (rows, cols, t) = (64, 256, 800);
        let x = inputs(t, cols, 11);
        let w = weights(rows, cols, 12);
        let h = Hessian::from_inputs(&x, t, cols);
        let q = billm(&w, rows, cols, &h, &Settings::new(Method::Billm)).expect("billm");
        assert!(q.bits.paper > 1.0 && q.bits.paper <= 1.4, "paper bits {}", q.bits.paper);
        assert!(q.bits.storage > q.bits.paper + 1.0, "storage bits {}", q.bits.storage);
        let f = q.salient_fraction.expect("billm reports its salient fraction");
        assert!((q.bits.paper - 1.0 - f).abs() < 1e-12);
        let xn = crate::xnor::xnor(&w, rows, cols);
        let e = output_error(&x, t, &w, &q.weight, rows, cols);
        let e_x = output_error(&x, t, &w, &xn.weight, rows, cols);
        assert!(e < 0.8 * e_x, "billm {e:.4e} vs xnor {e_x:.4e}");
        for r in 0..rows {
            for st in (0..cols).step_by(128) {
                let mut lv: Vec<f32> = q.weight[r * cols + st..r * cols + st + 128].to_vec();
                lv.sort_by(f32::total_cmp);
                lv.dedup();
                assert!(lv.len() <= 8, "row {r} block {st}: {} levels", lv.len());
            }
        }
    }
}
