//! One linear-layer abstraction for every weight format, so that one model definition serves
//! full-precision and 1-bit checkpoints alike.
//!
//! FBI-Linear (ARCHITECTURE.md §2.1), column pattern: W̃[i,j] = α_j·s_ij + β_j with s = sign(W) ∈ {±1}, so
//! ```text
//! y_i = Σ_j W̃_ij x_j = Σ_j s_ij (α_j x_j) + (β · x)
//! ```
//! i.e. scale the input by α, one ±1 matrix-vector product, then add one scalar (β·x) to every
//! output. Row pattern: W̃[i,j] = α_i·s_ij + β_i, so y_i = α_i Σ_j s_ij x_j + β_i Σ_j x_j.

use std::fmt;
use std::str::FromStr;

use bimamba_kernels as kernels;
use half::{bf16, f16};

use crate::workspace::prefix;

/// Precision of the activations entering a 1-bit product (a run-time choice, not part of the
/// weights). `F32` is Bi-Mamba's own arithmetic (ARCHITECTURE.md §2: activations stay high precision);
/// `Int8` quantizes the (α-scaled) input per token to int8 (`bimamba_kernels::act8`) and runs
/// integer dot products, with its perplexity change measured in crates/bimamba-kernels/KERNELS.md.
/// A loaded [`crate::Model`] starts exact (`F32`); the commands and `bimamba_models::Settings`
/// choose [`BinaryAct::fastest`] unless asked for the exact arithmetic. A q8 layer (the LM head
/// of a `--embed q8` model) follows `Int8` too where the CPU has the integer kernel
/// ([`Linear::effective_act`]; there [`crate::Model::set_binary_act`] also stores the head's
/// codes in the kernel's panel order, [`DenseWeight::Q8Panels`]); other dense layers ignore it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BinaryAct {
    #[default]
    F32,
    Int8,
}

impl BinaryAct {
    /// The faster of the two on this CPU and the selected ISA: `Int8` where the kernels have a
    /// SIMD int8 product (AVX512-VNNI or AVX2), else `F32` (elsewhere the int8 product runs its
    /// scalar twin, slower than the f32 kernels).
    pub fn fastest() -> BinaryAct {
        if kernels::act8_has_simd(kernels::selected_isa()) {
            BinaryAct::Int8
        } else {
            BinaryAct::F32
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BinaryAct::F32 => "f32",
            BinaryAct::Int8 => "int8",
        }
    }
}

impl fmt::Display for BinaryAct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BinaryAct {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(BinaryAct::F32),
            "int8" => Ok(BinaryAct::Int8),
            other => Err(format!("unknown binary-product activation precision {other:?}, expected f32 or int8")),
        }
    }
}

/// Dense weights in the dtype they were stored in (row-major [rows, cols]).
#[derive(Clone, Debug)]
pub enum DenseWeight {
    F32(Vec<f32>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    /// 8-bit rows (`bimamba_kernels::q8`): W[i, j] = scales[i] · q[i, j]; the embedding / LM
    /// head of a model packed with `--embed q8`.
    Q8 {
        /// [rows, cols]
        q: Vec<i8>,
        /// [rows]
        scales: Vec<f32>,
        /// [rows]: `Σ_j q[i, j]`, what the int8-activation kernel needs besides the codes
        /// (`bimamba_kernels::q8_act8::row_sums`); derived, never stored in files.
        row_sums: Vec<i32>,
    },
    /// The same q8 matrix with its codes in panels (`bimamba_kernels::q8_panels`: 32 rows × 4
    /// columns per 128 bytes, the operand order of the AVX512-VNNI head kernel, rows past the
    /// last whole panel row-major). Only the order of `q` differs from [`DenseWeight::Q8`]:
    /// products give the same bits, lookups the same rows. Made by [`Linear::arrange_q8`].
    Q8Panels {
        /// [rows, cols] codes in panel order
        q: Vec<i8>,
        /// [rows]
        scales: Vec<f32>,
        /// [rows]: `Σ_j q[i, j]`, as for [`DenseWeight::Q8`]
        row_sums: Vec<i32>,
    },
}

impl DenseWeight {
    /// A q8 matrix from its codes `q: [rows, cols]` and row scales (the row sums derived here).
    pub fn q8(q: Vec<i8>, scales: Vec<f32>, cols: usize) -> DenseWeight {
        let rows = scales.len();
        let row_sums = kernels::q8_act8::row_sums(&q, rows, cols);
        DenseWeight::Q8 { q, scales, row_sums }
    }

    /// The storage's short name: `f32`, `bf16`, `f16` or `q8` (either order of the codes).
    pub fn name(&self) -> &'static str {
        match self {
            DenseWeight::F32(_) => "f32",
            DenseWeight::BF16(_) => "bf16",
            DenseWeight::F16(_) => "f16",
            DenseWeight::Q8 { .. } | DenseWeight::Q8Panels { .. } => "q8",
        }
    }
}

/// Per-column (α, β ∈ R^in) or per-row (α, β ∈ R^out) scales of a binary layer.
#[derive(Clone, Debug, PartialEq)]
pub enum BinaryScales {
    /// Shape [1, in] in checkpoints: the official `scaling_pattern='column'`.
    Column { alpha: Vec<f32>, beta: Vec<f32> },
    /// Shape [out, 1] in checkpoints.
    Row { alpha: Vec<f32>, beta: Vec<f32> },
}

#[derive(Clone, Debug)]
pub enum Linear {
    Dense {
        rows: usize,
        cols: usize,
        weight: DenseWeight,
    },
    /// Sign bits packed as `bimamba_kernels::pack` documents (1 bit per weight, rows padded to 64).
    Binary {
        rows: usize,
        cols: usize,
        bits: Vec<u8>,
        scales: BinaryScales,
    },
}

impl Linear {
    /// Output features.
    pub fn rows(&self) -> usize {
        match self {
            Linear::Dense { rows, .. } | Linear::Binary { rows, .. } => *rows,
        }
    }
    /// Input features.
    pub fn cols(&self) -> usize {
        match self {
            Linear::Dense { cols, .. } | Linear::Binary { cols, .. } => *cols,
        }
    }

    /// Binarizes a latent weight with its FBI scales (sign at load, exact zero → +1).
    pub fn binarize(latent: &[f32], rows: usize, cols: usize, scales: BinaryScales) -> Linear {
        Linear::Binary { rows, cols, bits: kernels::pack::pack_signs(latent, rows, cols), scales }
    }

    /// y = x · Wᵀ, activations in f32.
    ///
    /// # Shapes
    /// - `x`: [t, cols]
    /// - `y`: [t, rows] (overwritten)
    pub fn forward(&self, x: &[f32], t: usize, y: &mut [f32]) {
        self.forward_act(x, t, y, BinaryAct::F32)
    }

    /// y = x · Wᵀ with the 1-bit product's activations in `act`; a q8 layer (the LM head of a
    /// `--embed q8` model) follows it too where [`kernels::q8_act8_has_simd`], other dense layers
    /// ignore it.
    ///
    /// # Shapes
    /// - `x`: [t, cols]
    /// - `y`: [t, rows] (overwritten)
    pub fn forward_act(&self, x: &[f32], t: usize, y: &mut [f32], act: BinaryAct) {
        self.forward_with(x, t, y, act, &mut Vec::new())
    }

    /// [`Linear::forward_act`] with the temporary it may need, the activations scaled per column
    /// ([t, cols], 1-bit layers with [`BinaryScales::Column`] only), in `xs`: a buffer reused from
    /// call to call, grown when too short.
    ///
    /// # Shapes
    /// - `x`: [t, cols]
    /// - `y`: [t, rows] (overwritten)
    pub fn forward_with(&self, x: &[f32], t: usize, y: &mut [f32], act: BinaryAct, xs: &mut Vec<f32>) {
        let binary_gemm = match act {
            BinaryAct::F32 => kernels::binary_gemm,
            BinaryAct::Int8 => kernels::binary_gemm_i8,
        };
        let (rows, cols) = (self.rows(), self.cols());
        debug_assert_eq!(x.len(), t * cols);
        debug_assert_eq!(y.len(), t * rows);
        match self {
            Linear::Dense { weight, .. } => match weight {
                DenseWeight::F32(w) => kernels::dense_gemm_f32(w, rows, cols, x, t, y),
                DenseWeight::BF16(w) => kernels::dense_gemm_bf16(w, rows, cols, x, t, y),
                DenseWeight::F16(w) => kernels::dense_gemm_f16(w, rows, cols, x, t, y),
                // logits[k, v] = scale_v · Σ_d q[v, d] · x[k, d]: x quantized per token like the
                // 1-bit products' under `Int8` where the CPU has the integer kernel, else f32.
                DenseWeight::Q8 { q, scales, row_sums } => match self.effective_act(act) {
                    BinaryAct::Int8 => kernels::q8_gemm_i8(q, scales, row_sums, rows, cols, x, t, y),
                    BinaryAct::F32 => kernels::q8_gemm(q, scales, rows, cols, x, t, y),
                },
                // The same sums over the codes in panel order (the same bits as above).
                DenseWeight::Q8Panels { q, scales, row_sums } => match self.effective_act(act) {
                    BinaryAct::Int8 => kernels::q8_gemm_i8_panels(q, scales, row_sums, rows, cols, x, t, y),
                    BinaryAct::F32 => kernels::q8_gemm_panels(q, scales, rows, cols, x, t, y),
                },
            },
            Linear::Binary { bits, scales, .. } => match scales {
                BinaryScales::Column { alpha, beta } => {
                    // α⊙x per token, one ±1 product, then + β·x on every output.
                    let xs = prefix(xs, x.len());
                    for (row, xrow) in xs.chunks_exact_mut(cols).zip(x.chunks_exact(cols)) {
                        for ((v, xv), a) in row.iter_mut().zip(xrow).zip(alpha) {
                            *v = xv * a;
                        }
                    }
                    binary_gemm(bits, rows, cols, xs, t, y);
                    token_sums(x, cols, rows, y, |j, v| v * beta[j], |yt, bx| yt.iter_mut().for_each(|v| *v += bx));
                }
                BinaryScales::Row { alpha, beta } => {
                    binary_gemm(bits, rows, cols, x, t, y);
                    token_sums(
                        x,
                        cols,
                        rows,
                        y,
                        |_, v| v,
                        |yt, sx| {
                            for ((v, a), b) in yt.iter_mut().zip(alpha).zip(beta) {
                                *v = a * *v + b * sx;
                            }
                        },
                    );
                }
            },
        }
    }

    /// The activations [`Linear::forward_act`] runs this layer's product in under `act`: `act`
    /// for a 1-bit layer; for a q8 layer `Int8` only where the CPU and the selected ISA have
    /// the integer kernel ([`kernels::q8_act8_has_simd`]: AVX512-VNNI), since elsewhere it
    /// would run a scalar twin slower than the f32 kernel; `F32` for other dense layers.
    pub fn effective_act(&self, act: BinaryAct) -> BinaryAct {
        match self {
            Linear::Binary { .. } => act,
            Linear::Dense { weight: DenseWeight::Q8 { .. } | DenseWeight::Q8Panels { .. }, .. }
                if act == BinaryAct::Int8 && kernels::q8_act8_has_simd(kernels::selected_isa()) =>
            {
                BinaryAct::Int8
            }
            Linear::Dense { .. } => BinaryAct::F32,
        }
    }

    /// Row `i` of the effective weight, as f32 (embedding lookup; tests).
    pub fn row_f32(&self, i: usize) -> Vec<f32> {
        let cols = self.cols();
        match self {
            Linear::Dense { weight, .. } => {
                let r = i * cols..(i + 1) * cols;
                match weight {
                    DenseWeight::F32(w) => w[r].to_vec(),
                    DenseWeight::BF16(w) => w[r].iter().map(|v| v.to_f32()).collect(),
                    DenseWeight::F16(w) => w[r].iter().map(|v| v.to_f32()).collect(),
                    DenseWeight::Q8 { q, scales, .. } => {
                        let mut out = vec![0.0; cols];
                        kernels::q8::dequantize_row(&q[r], scales[i], &mut out);
                        out
                    }
                    DenseWeight::Q8Panels { q, scales, .. } => {
                        let mut codes = vec![0i8; cols];
                        kernels::q8_panels::row_into(q, self.rows(), cols, i, &mut codes);
                        let mut out = vec![0.0; cols];
                        kernels::q8::dequantize_row(&codes, scales[i], &mut out);
                        out
                    }
                }
            }
            Linear::Binary { bits, scales, .. } => {
                let rb = kernels::pack::row_bytes(cols);
                let signs = kernels::pack::unpack_signs(&bits[i * rb..(i + 1) * rb], 1, cols);
                match scales {
                    BinaryScales::Column { alpha, beta } => {
                        signs.iter().zip(alpha).zip(beta).map(|((s, a), b)| a * s + b).collect()
                    }
                    BinaryScales::Row { alpha, beta } => signs.iter().map(|s| alpha[i] * s + beta[i]).collect(),
                }
            }
        }
    }

    /// The effective weight W̃ as a dense f32 [rows, cols] matrix.
    pub fn to_dense_f32(&self) -> Vec<f32> {
        (0..self.rows()).flat_map(|i| self.row_f32(i)).collect()
    }

    /// Bytes the weights occupy in memory (what one full pass over them reads).
    pub fn weight_bytes(&self) -> usize {
        match self {
            Linear::Dense { weight, .. } => match weight {
                DenseWeight::F32(w) => w.len() * 4,
                DenseWeight::BF16(w) => w.len() * 2,
                DenseWeight::F16(w) => w.len() * 2,
                DenseWeight::Q8 { q, scales, .. } | DenseWeight::Q8Panels { q, scales, .. } => {
                    q.len() + scales.len() * 4
                }
            },
            Linear::Binary { bits, scales, .. } => {
                let s = match scales {
                    BinaryScales::Column { alpha, beta } | BinaryScales::Row { alpha, beta } => {
                        (alpha.len() + beta.len()) * 4
                    }
                };
                bits.len() + s
            }
        }
    }

    /// Stored bits per weight (scales included).
    pub fn bits_per_weight(&self) -> f64 {
        8.0 * self.weight_bytes() as f64 / (self.rows() * self.cols()) as f64
    }

    pub fn is_binary(&self) -> bool {
        matches!(self, Linear::Binary { .. })
    }

    /// How the weights are stored: `f32`, `bf16`, `f16`, `q8` or `1-bit`.
    pub fn storage(&self) -> &'static str {
        match self {
            Linear::Dense { weight, .. } => weight.name(),
            Linear::Binary { .. } => "1-bit",
        }
    }

    /// The effective weight quantized row by row to q8 (`bimamba_kernels::q8`), codes in row
    /// order ([`DenseWeight::Q8`]); a q8 layer is returned with the same codes.
    pub fn to_q8(&self) -> Linear {
        let (rows, cols) = (self.rows(), self.cols());
        if let Linear::Dense { weight: DenseWeight::Q8 { .. }, .. } = self {
            return self.clone();
        }
        if let Linear::Dense { weight: DenseWeight::Q8Panels { .. }, .. } = self {
            let mut rows_order = self.clone();
            rows_order.arrange_q8(false);
            return rows_order;
        }
        let mut q = vec![0i8; rows * cols];
        let mut scales = vec![1.0f32; rows];
        if cols > 0 {
            for (i, (qr, s)) in q.chunks_exact_mut(cols).zip(&mut scales).enumerate() {
                *s = kernels::q8::quantize_row(&self.row_f32(i), qr);
            }
        }
        Linear::Dense { rows, cols, weight: DenseWeight::q8(q, scales, cols) }
    }

    /// Stores a q8 layer's codes in panel order ([`DenseWeight::Q8Panels`], `panels`) or in row
    /// order ([`DenseWeight::Q8`]), in place (a permutation within each 32-row panel, no second
    /// copy). Other layers, and widths the panels do not support (`cols` not a multiple of 4),
    /// are left as they are. Either order computes the same bits.
    pub fn arrange_q8(&mut self, panels: bool) {
        let (rows, cols) = (self.rows(), self.cols());
        let Linear::Dense { weight, .. } = self else { return };
        if !kernels::q8_panels::supports(cols) {
            return;
        }
        *weight = match std::mem::replace(weight, DenseWeight::F32(Vec::new())) {
            DenseWeight::Q8 { mut q, scales, row_sums } if panels => {
                kernels::q8_panels::to_panels(&mut q, rows, cols);
                DenseWeight::Q8Panels { q, scales, row_sums }
            }
            DenseWeight::Q8Panels { mut q, scales, row_sums } if !panels => {
                kernels::q8_panels::to_rows(&mut q, rows, cols);
                DenseWeight::Q8 { q, scales, row_sums }
            }
            other => other,
        };
    }
}

/// Tokens per group of [`token_sums`]: independent sums whose additions overlap.
const SUM_GROUP: usize = 8;

/// For every token `k` of `x: [t, cols]`, `s_k = Σ_j term(j, x[k, j])` added in column order
/// from −0.0, as `Iterator::sum` adds (so the same bits as `x_k.iter().map(..).sum()`), then
/// `apply(y_k, s_k)` on its output row `y_k` (`y: [t, rows]`). Each sum is a chain of dependent
/// additions (4 cycles each, not vectorized, since the order is kept); the tokens of a group of
/// [`SUM_GROUP`] advance together, so a batched step of 8 sequences waits for one chain instead
/// of eight in turn.
fn token_sums(
    x: &[f32],
    cols: usize,
    rows: usize,
    y: &mut [f32],
    term: impl Fn(usize, f32) -> f32,
    apply: impl Fn(&mut [f32], f32),
) {
    if cols == 0 || rows == 0 {
        y.chunks_exact_mut(rows.max(1)).for_each(|yt| apply(yt, -0.0));
        return;
    }
    for (xg, yg) in x.chunks(SUM_GROUP * cols).zip(y.chunks_mut(SUM_GROUP * rows)) {
        let g = xg.len() / cols;
        let mut acc = [-0.0f32; SUM_GROUP];
        for j in 0..cols {
            for (k, a) in acc.iter_mut().enumerate().take(g) {
                *a += term(j, xg[k * cols + j]);
            }
        }
        for (yt, &s) in yg.chunks_exact_mut(rows).zip(&acc) {
            apply(yt, s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The grouped sums are `Iterator::sum`'s bits, token by token: every group size and
    /// remainder, signed zeros included.
    #[test]
    fn token_sums_equal_iterator_sums() {
        let mut seed = 5;
        for (cols, t) in [(1, 1), (7, 3), (256, 8), (512, 9), (33, 17), (3, 2)] {
            let mut x: Vec<f32> = (0..t * cols).map(|_| lcg(&mut seed) * 10.0).collect();
            // An all −0.0 token (its sum is −0.0) and a mixed-sign-zero one.
            x[..cols].fill(-0.0);
            if t > 1 {
                x[cols..2 * cols].iter_mut().enumerate().for_each(|(j, v)| *v = if j % 2 == 0 { 0.0 } else { -0.0 });
            }
            let w: Vec<f32> = (0..cols).map(|_| lcg(&mut seed)).collect();
            let rows = 3;
            let mut y = vec![0.0f32; t * rows];
            token_sums(&x, cols, rows, &mut y, |j, v| v * w[j], |yt, s| yt.fill(s));
            for (k, xt) in x.chunks_exact(cols).enumerate() {
                let want: f32 = xt.iter().zip(&w).map(|(a, b)| a * b).sum();
                assert_eq!(y[k * rows].to_bits(), want.to_bits(), "cols {cols} t {t} token {k}");
            }
            token_sums(&x, cols, rows, &mut y, |_, v| v, |yt, s| yt.fill(s));
            for (k, xt) in x.chunks_exact(cols).enumerate() {
                let want: f32 = xt.iter().sum();
                assert_eq!(y[k * rows + 2].to_bits(), want.to_bits(), "cols {cols} t {t} token {k}");
            }
        }
    }

    /// A q8 layer: forward equals the f32 layer holding the dequantized matrix, and the row
    /// lookup returns exactly that matrix's row.
    #[test]
    fn q8_matches_its_dequantized_f32_twin() {
        let mut seed = 11;
        for (rows, cols, t) in [(7, 33, 1), (130, 70, 5), (64, 128, 3)] {
            let w: Vec<f32> = (0..rows * cols).map(|_| 0.3 * lcg(&mut seed)).collect();
            let x: Vec<f32> = (0..t * cols).map(|_| lcg(&mut seed)).collect();
            let q8 = Linear::Dense { rows, cols, weight: DenseWeight::F32(w) }.to_q8();
            assert_eq!(q8.storage(), "q8");
            assert_eq!(q8.weight_bytes(), rows * cols + 4 * rows);
            let deq = Linear::Dense { rows, cols, weight: DenseWeight::F32(q8.to_dense_f32()) };
            for i in [0, rows / 2, rows - 1] {
                assert_eq!(q8.row_f32(i), deq.row_f32(i));
            }
            let (mut a, mut b) = (vec![0.0; t * rows], vec![0.0; t * rows]);
            q8.forward(&x, t, &mut a);
            deq.forward(&x, t, &mut b);
            let dq = q8.to_dense_f32();
            for k in 0..t {
                for i in 0..rows {
                    let bound: f32 = (0..cols).map(|j| (dq[i * cols + j] * x[k * cols + j]).abs()).sum();
                    let (p, r) = (a[k * rows + i], b[k * rows + i]);
                    assert!((p - r).abs() <= 1e-5 * bound, "({rows},{cols},{t}) [{k},{i}]: {p} vs {r}");
                }
            }
        }
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Both scale patterns: the 1-bit identity equals a dense product with W̃ = α·sign(W)+β.
    #[test]
    fn binary_identity_matches_dense_effective_weight() {
        let mut seed = 7;
        for (rows, cols, t) in [(5, 70, 3), (17, 129, 1), (8, 64, 4)] {
            let mut w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
            w[3] = 0.0; // sign(0) → +1
            let x: Vec<f32> = (0..t * cols).map(|_| lcg(&mut seed)).collect();
            for column in [true, false] {
                let n = if column { cols } else { rows };
                let alpha: Vec<f32> = (0..n).map(|_| lcg(&mut seed).abs() + 0.1).collect();
                let beta: Vec<f32> = (0..n).map(|_| 0.1 * lcg(&mut seed)).collect();
                let scales = if column {
                    BinaryScales::Column { alpha: alpha.clone(), beta: beta.clone() }
                } else {
                    BinaryScales::Row { alpha: alpha.clone(), beta: beta.clone() }
                };
                let lin = Linear::binarize(&w, rows, cols, scales);
                let mut y = vec![0.0; t * rows];
                lin.forward(&x, t, &mut y);
                for k in 0..t {
                    for i in 0..rows {
                        let mut want = 0.0f64;
                        for j in 0..cols {
                            let s = if w[i * cols + j] >= 0.0 { 1.0 } else { -1.0 };
                            let (a, b) = if column { (alpha[j], beta[j]) } else { (alpha[i], beta[i]) };
                            want += (a * s + b) as f64 * x[k * cols + j] as f64;
                        }
                        let got = y[k * rows + i] as f64;
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{rows}x{cols} t{t} col={column}: {got} vs {want}"
                        );
                    }
                }
                let dense = lin.to_dense_f32();
                let s3 = dense[3] - if column { beta[3] } else { beta[0] };
                assert!(s3 > 0.0, "exact zero must binarize to +1");
            }
        }
    }
}
