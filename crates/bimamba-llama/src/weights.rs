//! One weight-matrix type for every GGUF format the loader accepts: f32 (plain and F16/BF16/F64,
//! converted at load), the Q8_0 / Q4_0 / Q4_1 blocks kept as they are in the file, or those blocks
//! re-laid for 8-bit dot products ([`crate::qdot`], [`Activations::Q8`]).
//!
//! A quantized product `y = x · Wᵀ` runs panel by panel: each task dequantizes [`PANEL`] rows
//! into an f32 scratch buffer (64 rows × 1536 columns = 384 KiB at most for SmolLM2, so it stays
//! in L2) and runs the dense f32 SIMD kernel of `bimamba_kernels` over it, which reuses the panel
//! for every token. The weights cross the memory bus once per call in their packed size (Q4_1:
//! 5 bits per weight instead of 32), and the arithmetic is the dense f32 kernel's: the result
//! equals the f32 product on the dequantized matrix.

use rayon::prelude::*;

use bimamba_formats::{DType, QK};
use bimamba_kernels::{dense_gemm_f32, dense_gemm_with, selected_isa};
use half::f16;

use crate::qdot::QdotMatrix;

/// Rows dequantized at once by one task.
pub const PANEL: usize = 64;

/// How a matrix's elements are stored.
#[derive(Clone, Debug)]
pub enum Storage {
    /// [rows · cols] row-major
    F32(Vec<f32>),
    /// GGUF blocks of [`QK`] consecutive elements of a row, rows one after another.
    Quant { dtype: DType, bytes: Vec<u8> },
    /// GGUF blocks re-laid for products with 8-bit activations.
    Qdot(QdotMatrix),
}

/// How the products of a model with block-quantized (Q8_0 / Q4_0 / Q4_1) weights treat the
/// activations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Activations {
    /// f32 activations against the exactly dequantized weights: the result of an f32 (or
    /// Hugging Face `transformers`) forward on the GGUF's values. The default.
    #[default]
    F32,
    /// Activations quantized to 8 bits per block of 32 and integer dot products, as llama.cpp's
    /// CPU backend computes (Q8_1 / Q8_0 activations). Faster; slightly different numbers.
    Q8,
}

impl std::str::FromStr for Activations {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Activations::F32),
            "q8" => Ok(Activations::Q8),
            _ => Err(format!("unknown activation precision '{s}' (expected f32 or q8)")),
        }
    }
}

impl Activations {
    /// The lower-case name [`FromStr`](std::str::FromStr) reads.
    pub fn name(self) -> &'static str {
        match self {
            Activations::F32 => "f32",
            Activations::Q8 => "q8",
        }
    }
}

impl std::fmt::Display for Activations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// In [`Activations::F32`] mode a model whose block-quantized matrices would take at most this
/// much as f32 is dequantized once at load (same numbers, no per-product dequantization: SmolLM2
/// -135M takes 538 MB); a larger model keeps its GGUF blocks and dequantizes them panel by panel
/// inside each product, so its memory stays near the file's size.
pub const DEQUANTIZE_AT_LOAD_MAX_BYTES: usize = 2 << 30;

/// A weight matrix of `rows × cols`, multiplied as `y = x · Wᵀ`.
#[derive(Clone, Debug)]
pub struct Matrix {
    pub storage: Storage,
    pub rows: usize,
    pub cols: usize,
}

/// Dequantizes whole blocks of Q8_0, Q4_0 or Q4_1 (`bytes` holds `out.len() / 32` blocks).
///
/// | type | block | value |
/// |---|---|---|
/// | Q8_0 | f16 d, 32 × i8 q | d·q |
/// | Q4_0 | f16 d, 16 bytes | d·(q − 8) |
/// | Q4_1 | f16 d, f16 m, 16 bytes | d·q + m |
///
/// Nibbles: byte j holds element j (low nibble) and element j + 16 (high nibble).
///
/// On x86-64 CPUs with AVX2, FMA and F16C (unless `--isa scalar` / `BIMAMBA_ISA=scalar` chose
/// the portable kernels), the same code is run compiled for AVX2; it does the same operations in
/// the same order (no contraction into FMA), so both paths give identical bits.
pub fn dequantize(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2_usable() {
        // SAFETY: avx2_usable() checked that the CPU has AVX2, FMA and F16C.
        unsafe { dequantize_avx2(dtype, bytes, out) };
        return;
    }
    dequantize_portable(dtype, bytes, out)
}

/// The portable build of [`dequantize`] (also its reference in tests).
pub fn dequantize_portable(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    dequantize_body(dtype, bytes, out)
}

#[cfg(target_arch = "x86_64")]
fn avx2_usable() -> bool {
    use bimamba_kernels::Isa;
    matches!(selected_isa(), Isa::Avx2 | Isa::Avx512)
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}

/// [`dequantize_body`] compiled for AVX2 (the compiler vectorizes the nibble and byte loops).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequantize_avx2(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    dequantize_body(dtype, bytes, out)
}

#[inline(always)]
fn dequantize_body(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    let bb = dtype.block_bytes();
    assert_eq!(
        bytes.len() / bb * QK,
        out.len(),
        "dequantize: {} bytes of {dtype} for {} values",
        bytes.len(),
        out.len()
    );
    // The const (bit-manipulation) conversion inlines into the block loops; `to_f32` would
    // make a call with a CPU-feature test per block.
    #[inline(always)]
    fn h(b: &[u8]) -> f32 {
        f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32_const()
    }
    let blocks = bytes.chunks_exact(bb).zip(out.chunks_exact_mut(QK));
    // One loop per type, so the type test is not inside the block loop.
    match dtype {
        DType::Q8_0 => {
            for (blk, o) in blocks {
                let d = h(blk);
                for (v, &q) in o.iter_mut().zip(&blk[2..]) {
                    *v = d * (q as i8) as f32;
                }
            }
        }
        DType::Q4_0 => {
            for (blk, o) in blocks {
                let d = h(blk);
                let (lo, hi) = o.split_at_mut(QK / 2);
                for ((a, b), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&blk[2..]) {
                    *a = d * ((q & 15) as i32 - 8) as f32;
                    *b = d * ((q >> 4) as i32 - 8) as f32;
                }
            }
        }
        DType::Q4_1 => {
            for (blk, o) in blocks {
                let (d, m) = (h(blk), h(&blk[2..]));
                let (lo, hi) = o.split_at_mut(QK / 2);
                for ((a, b), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&blk[4..]) {
                    *a = d * (q & 15) as f32 + m;
                    *b = d * (q >> 4) as f32 + m;
                }
            }
        }
        other => unreachable!("Matrix::quantized accepts only Q8_0, Q4_0 and Q4_1, not {other}"),
    }
}

impl Matrix {
    pub fn f32(w: Vec<f32>, rows: usize, cols: usize) -> Matrix {
        assert_eq!(w.len(), rows * cols, "f32 matrix: {} elements for [{rows} x {cols}]", w.len());
        Matrix { storage: Storage::F32(w), rows, cols }
    }

    /// Wraps GGUF blocks; `None` unless `dtype` is Q8_0/Q4_0/Q4_1, `cols` is a whole number of
    /// blocks and `bytes` has the size of `rows × cols` elements.
    pub fn quantized(dtype: DType, bytes: Vec<u8>, rows: usize, cols: usize) -> Option<Matrix> {
        let ok = dtype.is_quantized()
            && cols.is_multiple_of(QK)
            && rows.checked_mul(cols).and_then(|n| dtype.byte_len(n)) == Some(bytes.len());
        ok.then_some(Matrix { storage: Storage::Quant { dtype, bytes }, rows, cols })
    }

    /// Bytes the weights occupy in memory.
    pub fn bytes(&self) -> usize {
        match &self.storage {
            Storage::F32(w) => 4 * w.len(),
            Storage::Quant { bytes, .. } => bytes.len(),
            Storage::Qdot(m) => m.bytes(),
        }
    }

    /// How the elements are stored, for reports: `f32`, the GGUF block type (`Q4_1`, ...) or
    /// `q8-dot` (blocks re-laid for 8-bit activations).
    pub fn storage_name(&self) -> &'static str {
        match &self.storage {
            Storage::F32(_) => "f32",
            Storage::Quant { dtype, .. } => dtype.name(),
            Storage::Qdot(_) => "q8-dot",
        }
    }

    /// Bytes an f32 copy of a block-quantized matrix would take (0 for f32 storage).
    pub fn dequantized_bytes(&self) -> usize {
        match self.storage {
            Storage::F32(_) => 0,
            _ => 4 * self.rows * self.cols,
        }
    }

    /// Re-stores a block-quantized matrix for `act`: [`Activations::Q8`] re-lays the blocks for
    /// 8-bit dot products; [`Activations::F32`] dequantizes GGUF blocks to f32 when `dequantize`
    /// says so (else they stay; a re-laid matrix always goes back to f32). f32 matrices stay as
    /// they are in both modes.
    pub fn prepare(&mut self, act: Activations, dequantize: bool) {
        let (rows, cols) = (self.rows, self.cols);
        let new = match (&self.storage, act) {
            (Storage::F32(_), _) => None,
            (Storage::Quant { dtype, bytes }, Activations::Q8) => {
                QdotMatrix::from_gguf(*dtype, bytes, rows, cols).map(Storage::Qdot)
            }
            (Storage::Qdot(_), Activations::Q8) => None,
            (Storage::Quant { .. }, Activations::F32) if !dequantize => None,
            (_, Activations::F32) => {
                let mut w = vec![0.0f32; rows * cols];
                self.rows_into(0..rows, &mut w);
                Some(Storage::F32(w))
            }
        };
        if let Some(s) = new {
            self.storage = s;
        }
    }

    /// Copies row `r`, dequantized, into `out`.
    ///
    /// # Shapes
    /// - `out`: [cols]
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        self.rows_into(r..r + 1, out);
    }

    /// Rows `range`, dequantized, into `out`: [range.len(), cols].
    fn rows_into(&self, range: std::ops::Range<usize>, out: &mut [f32]) {
        let c = self.cols;
        match &self.storage {
            Storage::F32(w) => out.copy_from_slice(&w[range.start * c..range.end * c]),
            Storage::Quant { dtype, bytes } => {
                let rb = c / QK * dtype.block_bytes();
                dequantize(*dtype, &bytes[range.start * rb..range.end * rb], out);
            }
            Storage::Qdot(m) => {
                for (r, o) in range.zip(out.chunks_exact_mut(c)) {
                    m.row_into(r, o);
                }
            }
        }
    }

    /// `y = x · Wᵀ`.
    ///
    /// # Shapes
    /// - `x`: [t, cols]; returns [t, rows]
    pub fn forward(&self, x: &[f32], t: usize) -> Vec<f32> {
        assert_eq!(
            x.len(),
            t * self.cols,
            "matrix product: x has {} elements, expected [{t} x {}]",
            x.len(),
            self.cols
        );
        let mut y = vec![0.0f32; t * self.rows];
        match &self.storage {
            Storage::F32(w) => {
                dense_gemm_f32(w, self.rows, self.cols, x, t, &mut y);
                return y;
            }
            Storage::Qdot(m) => return m.forward(x, t),
            Storage::Quant { .. } => {}
        }
        let isa = selected_isa();
        let (rows, cols) = (self.rows, self.cols);
        // Panel p covers rows p·PANEL .. min((p+1)·PANEL, rows) and yields its [t, nr] block.
        let panel = |p: usize, scratch: &mut Vec<f32>, out: &mut [f32]| {
            let r0 = p * PANEL;
            let nr = (rows - r0).min(PANEL);
            if scratch.len() < nr * cols {
                scratch.resize(nr * cols, 0.0);
            }
            let w = &mut scratch[..nr * cols];
            self.rows_into(r0..r0 + nr, w);
            dense_gemm_with(isa, w, nr, cols, x, t, 0..nr, out);
        };
        if t == 1 {
            // y is [1, rows]: panel p owns the contiguous slice y[p·PANEL ..].
            y.par_chunks_mut(PANEL).enumerate().for_each_init(Vec::new, |scratch, (p, out)| panel(p, scratch, out));
            return y;
        }
        // y is [t, rows]: a panel is a strided column block, computed apart and copied in.
        let blocks: Vec<Vec<f32>> = (0..rows.div_ceil(PANEL))
            .into_par_iter()
            .map_init(Vec::new, |scratch, p| {
                let mut out = vec![0.0f32; t * (rows - p * PANEL).min(PANEL)];
                panel(p, scratch, &mut out);
                out
            })
            .collect();
        for (p, block) in blocks.iter().enumerate() {
            let nr = block.len() / t;
            for (k, src) in block.chunks_exact(nr).enumerate() {
                y[k * rows + p * PANEL..k * rows + p * PANEL + nr].copy_from_slice(src);
            }
        }
        y
    }
}

/// `x · Wᵀ` for several matrices that share their input: when all are re-laid for 8-bit products,
/// `x` is quantized once for all of them.
///
/// # Shapes
/// - `x`: [t, cols]; returns [t, rows of each matrix]
pub fn forward_shared<const N: usize>(mats: [&Matrix; N], x: &[f32], t: usize) -> [Vec<f32>; N] {
    let quantized: Option<Vec<&QdotMatrix>> = mats
        .iter()
        .map(|m| match &m.storage {
            Storage::Qdot(q) => Some(q),
            _ => None,
        })
        .collect();
    match quantized {
        Some(qs) if N > 0 && qs.iter().all(|q| q.cols == qs[0].cols) => {
            let a = crate::qdot::QActs::quantize(x, t, qs[0].cols);
            std::array::from_fn(|i| qs[i].forward_q(&a))
        }
        _ => mats.map(|m| m.forward(x, t)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{q4_0, q4_1, q8_0, Lcg};

    /// Every format and shape (rows not a multiple of the panel, t = 1 and t > 1): the packed
    /// product equals the f32 product of the dequantized matrix, and `dequantize` equals the
    /// test's independent decoding.
    #[test]
    fn quantized_product_equals_dense() {
        let mut rng = Lcg(42);
        for (dtype, quant) in
            [(DType::Q8_0, q8_0 as fn(&[f32]) -> (Vec<u8>, Vec<f32>)), (DType::Q4_0, q4_0), (DType::Q4_1, q4_1)]
        {
            for &(rows, cols) in &[(1, 32), (63, 64), (64, 96), (130, 160), (200, 32)] {
                let (bytes, deq) = quant(&rng.vec(rows * cols, 1.0));
                let q = Matrix::quantized(dtype, bytes, rows, cols).expect("valid blocks");
                let mut row = vec![0.0f32; cols];
                q.row_into(rows - 1, &mut row);
                assert_eq!(row, &deq[(rows - 1) * cols..], "{dtype} last row");
                let Storage::Quant { bytes, .. } = &q.storage else { unreachable!("built quantized") };
                let (mut fast, mut portable) = (vec![0.0f32; rows * cols], vec![1.0f32; rows * cols]);
                dequantize(dtype, bytes, &mut fast);
                dequantize_portable(dtype, bytes, &mut portable);
                assert_eq!(fast, portable, "{dtype}: the dispatched build differs from the portable one");
                assert_eq!(fast, deq, "{dtype}: dequantize differs from the test's decoding");
                let dense = Matrix::f32(deq, rows, cols);
                for t in [1usize, 2, 5, 17] {
                    let x = rng.vec(t * cols, 1.0);
                    let (a, b) = (q.forward(&x, t), dense.forward(&x, t));
                    let err = a.iter().zip(&b).map(|(u, v)| (u - v).abs()).fold(0.0f32, f32::max);
                    assert!(err <= 1e-4, "{dtype} [{rows} x {cols}] t = {t}: max error {err}");
                }
            }
        }
    }

    #[test]
    fn quantized_rejects_bad_sizes() {
        let (bytes, _) = q8_0(&[0.5; 64]);
        assert!(Matrix::quantized(DType::Q8_0, bytes.clone(), 2, 32).is_some());
        assert!(Matrix::quantized(DType::Q8_0, bytes.clone(), 1, 32).is_none());
        assert!(Matrix::quantized(DType::Q4_1, bytes.clone(), 2, 32).is_none());
        assert!(Matrix::quantized(DType::F32, bytes, 2, 32).is_none());
    }
}
