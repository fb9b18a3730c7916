//! GPTQ's error-compensating column sweep (Frantar et al., arXiv 2210.17323, Algorithm 1), shared
//! by GPTQ, PB-LLM and (its block-wise form) BiLLM.
//!
//! The layer objective is `‖X Wᵀ − X Ŵᵀ‖² = Σ_rows (w − ŵ) H (w − ŵ)ᵀ` with `H = 2/N XᵀX`, so
//! rows are independent and share H. Quantizing columns left to right, the optimal brain surgeon
//! update for column i, given `H⁻¹ = UᵀU` (U upper), is
//! ```text
//! q   = Q(w_i)
//! e   = (w_i − q) / U_ii
//! w_j ← w_j − e · U_ij          for every later column j > i
//! ```
//! Within a block of 128 columns the update is applied at once; to the columns after the block
//! it is applied lazily, as one product `W[:, end:] −= E · U[block, end:]` ("lazy batch").
//! Because every step acts on one row, the sweep runs over chunks of rows in parallel.

use rayon::prelude::*;

use crate::linalg::{axpy, inverse_upper_cholesky, Hessian};
use crate::QuantError;

/// Rows per parallel task of the sweep: each task streams `U` once per block.
const ROW_CHUNK: usize = 32;

/// A weight matrix readied for a sweep: columns permuted, dead columns zeroed, and the factor U.
pub(crate) struct Prepared {
    /// [rows, cols] f64, columns in sweep order (position k holds original column `perm[k]`).
    pub w: Vec<f64>,
    /// [cols, cols] upper Cholesky factor of the damped `H⁻¹`, in sweep order.
    pub u: Vec<f64>,
    pub perm: Vec<usize>,
    pub rows: usize,
    pub cols: usize,
}

impl Prepared {
    /// As GPTQ: a column that no input ever touched (`H_jj = 0`) gets `H_jj = 1` and `W[:, j] = 0`;
    /// with `act_order` the columns are sorted by decreasing `H_jj`; then `H += damp · mean(diag H) · I`
    /// and `U = chol(H⁻¹)ᵀ`.
    pub fn new(
        w: &[f32],
        rows: usize,
        cols: usize,
        hess: &Hessian,
        damp: f64,
        act_order: bool,
    ) -> Result<Prepared, QuantError> {
        assert_eq!(w.len(), rows * cols, "weight has {} elements, expected [{rows} x {cols}]", w.len());
        assert_eq!(hess.dim(), cols, "Hessian is {0}x{0}, the weight has {cols} columns", hess.dim());
        if hess.tokens() == 0 {
            return Err(QuantError::Setting {
                name: "calibration",
                detail: "no calibration tokens reached this projection".into(),
            });
        }
        let mut h = hess.matrix();
        let mut wd: Vec<f64> = w.iter().map(|&v| v as f64).collect();
        for j in 0..cols {
            if h[j * cols + j] == 0.0 {
                h[j * cols + j] = 1.0;
                for r in 0..rows {
                    wd[r * cols + j] = 0.0;
                }
            }
        }
        let mut perm: Vec<usize> = (0..cols).collect();
        if act_order {
            // Stable: ties keep their original order.
            perm.sort_by(|&a, &b| h[b * cols + b].total_cmp(&h[a * cols + a]));
            let hp: Vec<f64> = (0..cols * cols).map(|idx| h[perm[idx / cols] * cols + perm[idx % cols]]).collect();
            h = hp;
            let mut wp = vec![0.0f64; rows * cols];
            for r in 0..rows {
                for (k, &j) in perm.iter().enumerate() {
                    wp[r * cols + k] = wd[r * cols + j];
                }
            }
            wd = wp;
        }
        let mean_diag = (0..cols).map(|j| h[j * cols + j]).sum::<f64>() / cols as f64;
        for j in 0..cols {
            h[j * cols + j] += damp * mean_diag;
        }
        let u = inverse_upper_cholesky(&h, cols)
            .map_err(|e| QuantError::NotPositiveDefinite { column: perm[e.column], pivot: e.pivot })?;
        Ok(Prepared { w: wd, u, perm, rows, cols })
    }

    /// `U_jj` in sweep order.
    pub fn u_diag(&self) -> Vec<f64> {
        (0..self.cols).map(|j| self.u[j * self.cols + j]).collect()
    }

    /// The quantized matrix (held in `w` after a sweep) back in the original column order, as f32.
    pub fn into_weight(self) -> Vec<f32> {
        let (rows, cols) = (self.rows, self.cols);
        let mut out = vec![0.0f32; rows * cols];
        for r in 0..rows {
            for (k, &j) in self.perm.iter().enumerate() {
                out[r * cols + j] = self.w[r * cols + k] as f32;
            }
        }
        out
    }
}

/// The column sweep with per-element quantizer `quant(row, col, value) -> q` (`col` in sweep
/// order). On return `p.w` holds the quantized values.
pub(crate) fn sweep(p: &mut Prepared, block: usize, quant: &(dyn Fn(usize, usize, f64) -> f64 + Sync)) {
    let (cols, u) = (p.cols, &p.u);
    p.w.par_chunks_mut(ROW_CHUNK * cols)
        .enumerate()
        .for_each(|(c, wc)| sweep_rows(wc, c * ROW_CHUNK, cols, u, block, quant));
}

/// The sweep for rows `row0..` held in `wc: [r, cols]`.
fn sweep_rows(
    wc: &mut [f64],
    row0: usize,
    cols: usize,
    u: &[f64],
    block: usize,
    quant: &(dyn Fn(usize, usize, f64) -> f64 + Sync),
) {
    let r = wc.len() / cols;
    let mut err = vec![0.0f64; r * block]; // [r, nb]: e of each quantized column
    for st in (0..cols).step_by(block) {
        let ed = (st + block).min(cols);
        let nb = ed - st;
        for i in st..ed {
            let urow = &u[i * cols..(i + 1) * cols];
            let d = urow[i];
            for (k, row) in wc.chunks_exact_mut(cols).enumerate() {
                let x = row[i];
                let q = quant(row0 + k, i, x);
                row[i] = q;
                let e = (x - q) / d;
                err[k * nb + (i - st)] = e;
                if e != 0.0 {
                    axpy(&mut row[i + 1..ed], -e, &urow[i + 1..ed]);
                }
            }
        }
        if ed < cols {
            for (k, row) in wc.chunks_exact_mut(cols).enumerate() {
                for ii in 0..nb {
                    let e = err[k * nb + ii];
                    if e != 0.0 {
                        axpy(&mut row[ed..], -e, &u[(st + ii) * cols + ed..(st + ii + 1) * cols]);
                    }
                }
            }
        }
    }
}

/// The lazy batch update alone, for methods that quantize a whole block at once (BiLLM):
/// `W[:, ed:] −= E · U[st..ed, ed:]` with `err: [rows, ed − st]`.
pub(crate) fn propagate_block(w: &mut [f64], cols: usize, u: &[f64], st: usize, ed: usize, err: &[f64]) {
    let nb = ed - st;
    if ed == cols {
        return;
    }
    w.par_chunks_mut(cols).zip(err.par_chunks(nb)).for_each(|(row, e)| {
        for (ii, &ev) in e.iter().enumerate() {
            if ev != 0.0 {
                axpy(&mut row[ed..], -ev, &u[(st + ii) * cols + ed..(st + ii + 1) * cols]);
            }
        }
    });
}

/// `‖X Wᵀ − X Ŵᵀ‖²_F / ‖X Wᵀ‖²_F` on the calibration inputs, through H:
/// `Σ_rows Δ H Δᵀ / Σ_rows W H Wᵀ` (f32 products via the SIMD kernels, sums in f64).
pub fn relative_output_error(w: &[f32], q: &[f32], rows: usize, cols: usize, hess: &Hessian) -> f64 {
    let h: Vec<f32> = hess.matrix().iter().map(|&v| v as f32).collect();
    // x = [W; Δ]: [2·rows, cols]; y = x · Hᵀ = x · H.
    let mut x = Vec::with_capacity(2 * rows * cols);
    x.extend_from_slice(w);
    x.extend(w.iter().zip(q).map(|(a, b)| a - b));
    let mut y = vec![0.0f32; 2 * rows * cols];
    bimamba_kernels::dense_gemm_f32(&h, cols, cols, &x, 2 * rows, &mut y);
    // Per-row partial sums, added in row order: the result does not depend on the thread count.
    let quad = |range: std::ops::Range<usize>| -> f64 {
        let rows: Vec<f64> = x[range.clone()]
            .par_chunks(cols.max(1))
            .zip(y[range].par_chunks(cols.max(1)))
            .map(|(a, b)| a.iter().zip(b).map(|(&p, &q)| p as f64 * q as f64).sum())
            .collect();
        rows.iter().sum()
    };
    let num = quad(rows * cols..2 * rows * cols);
    let den = quad(0..rows * cols);
    if den > 0.0 {
        num / den
    } else if num > 0.0 {
        f64::INFINITY
    } else {
        0.0
    }
}
