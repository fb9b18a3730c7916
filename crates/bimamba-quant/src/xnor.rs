//! XNOR / sign binarization, row-wise, without calibration (ARCHITECTURE.md §6):
//! ```text
//! μ_i = mean_j W_ij        α_i = mean_j |W_ij − μ_i|        Ŵ_ij = α_i · sign(W_ij − μ_i) + μ_i
//! ```
//! α_i is the L2-optimal scale for fixed signs and μ_i; storage is one sign bit per weight plus
//! (α_i, μ_i) per row.

use rayon::prelude::*;

use crate::{sign, Bits, Quantized};

/// (μ, α) of one row, computed in f64.
pub(crate) fn row_params(row: &[f32]) -> (f64, f64) {
    let n = row.len().max(1) as f64;
    let mu = row.iter().map(|&v| v as f64).sum::<f64>() / n;
    let alpha = row.iter().map(|&v| (v as f64 - mu).abs()).sum::<f64>() / n;
    (mu, alpha)
}

/// Row-wise XNOR binarization of `w: [rows, cols]`.
pub fn xnor(w: &[f32], rows: usize, cols: usize) -> Quantized {
    assert_eq!(w.len(), rows * cols, "weight has {} elements, expected [{rows} x {cols}]", w.len());
    let mut weight = vec![0.0f32; rows * cols];
    if cols > 0 {
        weight.par_chunks_mut(cols).zip(w.par_chunks(cols)).for_each(|(out, row)| {
            let (mu, alpha) = row_params(row);
            for (o, &v) in out.iter_mut().zip(row) {
                *o = (alpha * sign(v as f64 - mu) + mu) as f32;
            }
        });
    }
    Quantized {
        weight,
        bits: Bits {
            paper: 1.0,
            // α and μ per row at 16 bits each.
            storage: 1.0 + 32.0 / cols.max(1) as f64,
        },
        salient_fraction: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::tests::Lcg;

    /// A hand-worked row: μ = 3, |W − μ| = [2, 1, 0, 3] so α = 1.5; W − μ = 0 counts as +1.
    #[test]
    fn hand_worked_row() {
        let q = xnor(&[1.0, 2.0, 3.0, 6.0, -1.0, -1.0, 1.0, 1.0], 2, 4);
        assert_eq!(q.weight, vec![1.5, 1.5, 4.5, 4.5, -1.0, -1.0, 1.0, 1.0]);
        assert_eq!(q.bits.paper, 1.0);
        assert_eq!(q.bits.storage, 1.0 + 32.0 / 4.0);
    }

    /// Every element equals the formula evaluated independently, bit for bit.
    #[test]
    fn matches_formula_exactly() {
        let mut r = Lcg(9);
        let (rows, cols) = (13, 77);
        let w: Vec<f32> = (0..rows * cols).map(|_| (r.next() * 0.1 + 0.01) as f32).collect();
        let q = xnor(&w, rows, cols);
        for i in 0..rows {
            let row = &w[i * cols..(i + 1) * cols];
            let mut mu = 0.0f64;
            for &v in row {
                mu += v as f64;
            }
            mu /= cols as f64;
            let mut alpha = 0.0f64;
            for &v in row {
                alpha += (v as f64 - mu).abs();
            }
            alpha /= cols as f64;
            for j in 0..cols {
                let d = w[i * cols + j] as f64 - mu;
                let want = if d >= 0.0 { alpha + mu } else { -alpha + mu } as f32;
                assert_eq!(q.weight[i * cols + j], want, "({i},{j})");
            }
            // Two levels per row, symmetric about μ.
            let mut levels: Vec<f32> = q.weight[i * cols..(i + 1) * cols].to_vec();
            levels.sort_by(f32::total_cmp);
            levels.dedup();
            assert!(levels.len() <= 2, "row {i} has levels {levels:?}");
        }
    }
}
