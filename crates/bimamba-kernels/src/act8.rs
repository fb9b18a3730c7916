//! The opt-in int8-activation binary product (`--binary-act int8`): the spec and its scalar twin.
//!
//! Bi-Mamba keeps activations in high precision (ARCHITECTURE.md §2); this path trades a small, measured
//! accuracy loss (crates/bimamba-kernels/KERNELS.md) for integer dot-product instructions
//! (AVX512-VNNI `vpdpbusd`: 64 byte products per instruction).
//!
//! # Quantization (per token, symmetric absmax)
//! For token `k` with activations `x[k, 0..cols]`: `m = max_j |x[k, j]|`,
//! `scale_k = m / 127`, `q[k, j] = clamp(rne(x[k, j] · (127 / m)), −127, 127)` where `rne`
//! rounds to nearest, ties to even. An all-zero token has `scale = 0` and `q = 0`; a token
//! holding a NaN or an infinity has `scale = NaN` (its outputs are NaN, as the f32 path's would
//! be non-finite). `q` rows are padded with zeros to a multiple of 64 columns (the packed row
//! width), so padding bits of the weights never contribute.
//!
//! # The product
//! With sign bits `b_ij ∈ {0, 1}` (`s_ij = 2·b_ij − 1`, bit 1 = +1, see [`crate::pack`]):
//! ```text
//! y[k, i] = scale_k · Σ_j s_ij q[k, j] = scale_k · (2 · Σ_{j: b_ij = 1} q[k, j] − Σ_j q[k, j])
//! ```
//! The integer part is exact in i32 (|·| ≤ 127 · cols) and converts exactly to f32 below 2²⁴
//! (cols < 66 000), so every ISA computes the same bits as the scalar twin.

use std::ops::Range;

use rayon::prelude::*;

use crate::pack::row_bytes;
use crate::Isa;

/// Tokens per rayon task in [`quantize`] (decode's single token stays on the calling thread).
const PAR_MIN_TOKENS: usize = 16;

/// Largest quantized magnitude.
pub const QMAX: f32 = 127.0;

/// `t` tokens of activations quantized to int8 (see the module doc).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Act8 {
    /// Columns of the activations (before padding).
    pub cols: usize,
    /// Row stride of `q`: `8 · row_bytes(cols)`, a multiple of 64.
    pub stride: usize,
    /// [t, stride], zero beyond `cols`.
    pub q: Vec<i8>,
    /// [t]: `scale_k = max_j |x[k, j]| / 127`.
    pub scales: Vec<f32>,
    /// [t]: `Σ_j q[k, j]`.
    pub sums: Vec<i32>,
}

impl Act8 {
    pub fn tokens(&self) -> usize {
        self.scales.len()
    }
}

/// Round to nearest, ties to even, for |v| < 2²²: adding and removing 1.5 · 2²³ leaves the
/// integer part in the last mantissa bit (IEEE default rounding). Written this way so that the
/// compiler vectorizes it on every ISA (SSE2 has no rounding instruction).
#[inline(always)]
fn rne(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// The spec of one token's quantization, the scalar twin of `x86::act8_quantize`: writes
/// `q[..x.len()]` (the rest of `q` zero) and returns `(scale, Σ q)`.
pub fn quantize_row_scalar(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    let m = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    // `f32::max` ignores NaN: look for non-finite values explicitly.
    if !x.iter().all(|v| v.is_finite()) {
        q.fill(0);
        return (f32::NAN, 0);
    }
    if m == 0.0 {
        q.fill(0);
        return (0.0, 0);
    }
    let inv = QMAX / m;
    let mut sum = 0i32;
    for (d, v) in q.iter_mut().zip(x) {
        let r = rne(*v * inv).clamp(-QMAX, QMAX) as i32;
        *d = r as i8;
        sum += r;
    }
    q[x.len()..].fill(0);
    (m / QMAX, sum)
}

/// One token's quantization with `isa`'s kernel: AVX-512 where selected and supported, else the
/// scalar twin (the same bits either way).
fn quantize_row(isa: Isa, x: &[f32], q: &mut [i8]) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && isa.is_supported() {
        // SAFETY: `is_supported` checked AVX-512 F/BW (and VL).
        return unsafe { crate::x86::act8_quantize::quantize_row(x, q) };
    }
    let _ = isa;
    quantize_row_scalar(x, q)
}

/// Quantizes `x: [t, cols]` per token (the spec; see the module doc), with the kernel of
/// [`crate::selected_isa`].
pub fn quantize(x: &[f32], cols: usize, t: usize) -> Act8 {
    quantize_with(crate::selected_isa(), x, cols, t)
}

/// [`quantize`] with the kernel of `isa` (an ISA the CPU lacks runs the scalar twin); every ISA
/// gives the same bits. For tests and benchmarks.
pub fn quantize_with(isa: Isa, x: &[f32], cols: usize, t: usize) -> Act8 {
    let mut a = Act8::default();
    quantize_into_with(isa, x, cols, t, &mut a);
    a
}

/// [`quantize`] into `a`, reusing its buffers (every element is rewritten).
pub fn quantize_into(x: &[f32], cols: usize, t: usize, a: &mut Act8) {
    quantize_into_with(crate::selected_isa(), x, cols, t, a)
}

fn quantize_into_with(isa: Isa, x: &[f32], cols: usize, t: usize, a: &mut Act8) {
    assert_eq!(x.len(), t * cols, "act8 quantize: x has {} elements, expected [{t} x {cols}]", x.len());
    let stride = 8 * row_bytes(cols);
    a.cols = cols;
    a.stride = stride;
    a.q.resize(t * stride, 0);
    a.scales.resize(t, 0.0);
    a.sums.resize(t, 0);
    if cols > 0 {
        // Tokens are independent: split them over the rayon pool when there are many (prefill).
        let rows = x.par_chunks_exact(cols).zip(a.q.par_chunks_exact_mut(stride));
        let out = a.scales.par_iter_mut().zip(a.sums.par_iter_mut());
        rows.zip(out)
            .with_min_len(PAR_MIN_TOKENS)
            .for_each(|((xr, qr), (sc, su))| (*sc, *su) = quantize_row(isa, xr, qr));
    }
}

/// `y[k, i − r0] = scale_k · (2 · Σ_{b_ij = 1} q[k, j] − Σ_j q[k, j])` from the integer sum.
#[inline(always)]
pub fn dequantize(pos_sum: i32, k: usize, a: &Act8) -> f32 {
    (2 * pos_sum - a.sums[k]) as f32 * a.scales[k]
}

/// The argument checks every int8-activation kernel makes before it reads (the SIMD ones index
/// with raw pointers, so these bounds make every access in range).
pub(crate) fn check_rows(bits: &[u8], cols: usize, a: &Act8, range: &Range<usize>, y: &[f32]) {
    let rb = row_bytes(cols);
    let (t, nr) = (a.tokens(), range.len());
    assert_eq!(a.cols, cols, "act8 kernel: activations have {} columns, weights {cols}", a.cols);
    assert!(a.stride == 8 * rb && a.q.len() == t * a.stride, "act8 kernel: activation layout");
    assert!(bits.len() >= range.end * rb, "act8 kernel: packed bits too short for rows {range:?}");
    assert_eq!(y.len(), t * nr, "act8 kernel: y has {} elements, expected [{t} x {nr}]", y.len());
}

/// The scalar twin: binary product with int8 activations over output rows `range` of a packed
/// `[rows, cols]` sign matrix; `y: [t, range.len()]`.
pub fn binary_rows_scalar(bits: &[u8], cols: usize, a: &Act8, range: Range<usize>, y: &mut [f32]) {
    check_rows(bits, cols, a, &range, y);
    let rb = row_bytes(cols);
    let (t, nr) = (a.tokens(), range.len());
    for (ii, i) in range.enumerate() {
        let row = &bits[i * rb..(i + 1) * rb];
        for k in 0..t {
            let q = &a.q[k * a.stride..(k + 1) * a.stride];
            let mut pos = 0i32;
            for (byte, qs) in row.iter().zip(q.chunks_exact(8)) {
                for (b, &qv) in qs.iter().enumerate() {
                    // Bit b of byte j/8 is column j (LSB first); bit 1 = +1.
                    pos += ((byte >> b) & 1) as i32 * qv as i32;
                }
            }
            y[k * nr + ii] = dequantize(pos, k, a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::{pack_signs, unpack_signs};

    #[test]
    fn rne_rounds_half_to_even() {
        for (v, want) in [(0.5, 0.0), (1.5, 2.0), (2.5, 2.0), (-0.5, 0.0), (-1.5, -2.0), (126.5, 126.0), (0.49, 0.0)] {
            assert_eq!(rne(v), want, "{v}");
            assert_eq!(rne(v), f32::round_ties_even(v), "{v}");
        }
        let mut s = 3u64;
        for _ in 0..100_000 {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let v = ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 300.0;
            assert_eq!(rne(v), v.round_ties_even(), "{v}");
        }
    }

    #[test]
    fn quantize_follows_the_spec() {
        let x = [1.0f32, -2.0, 0.5, 4.0, -4.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let a = quantize(&x, 5, 2);
        assert_eq!(a.stride, 64);
        assert_eq!(a.scales, vec![4.0 / 127.0, 0.0]);
        // 1·127/4 = 31.75 → 32; −63.5 → −64 (tie to even); 15.875 → 16; ±127.
        assert_eq!(&a.q[..5], &[32, -64, 16, 127, -127]);
        assert!(a.q[5..].iter().all(|&v| v == 0), "padding and the all-zero token are 0");
        assert_eq!(a.sums, vec![32 - 64 + 16, 0]);
        let bad = quantize(&[1.0, f32::NAN, 2.0, f32::INFINITY], 2, 2);
        assert!(bad.scales[0].is_nan() && bad.scales[1].is_nan());
    }

    #[test]
    fn scalar_kernel_is_the_signed_integer_sum() {
        let mut s = 5u64;
        let mut r = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        for (rows, cols, t) in [(3, 1, 1), (5, 70, 3), (9, 129, 2), (2, 64, 4)] {
            let w: Vec<f32> = (0..rows * cols).map(|_| r()).collect();
            let x: Vec<f32> = (0..t * cols).map(|_| r()).collect();
            let bits = pack_signs(&w, rows, cols);
            let signs = unpack_signs(&bits, rows, cols);
            let a = quantize(&x, cols, t);
            let mut y = vec![f32::NAN; t * rows];
            binary_rows_scalar(&bits, cols, &a, 0..rows, &mut y);
            for k in 0..t {
                for i in 0..rows {
                    let exact: i32 = (0..cols).map(|j| signs[i * cols + j] as i32 * a.q[k * a.stride + j] as i32).sum();
                    assert_eq!(y[k * rows + i], exact as f32 * a.scales[k], "({rows},{cols},{t}) [{k},{i}]");
                    // Within half a quantization step per column of the f32 product.
                    let f: f32 = (0..cols).map(|j| signs[i * cols + j] * x[k * cols + j]).sum();
                    assert!((y[k * rows + i] - f).abs() <= 0.5 * a.scales[k] * cols as f32 + 1e-6);
                }
            }
        }
    }
}
