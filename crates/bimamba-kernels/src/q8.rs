//! The 8-bit row-quantization spec ("q8") of the embedding / tied LM head.
//!
//! This module is the reference for the q8 kernels ([`crate::q8_gemm`], `scalar::q8_rows`) and
//! for the packed format's q8 embedding (`bimamba_engine::pack`).
//!
//! # Rule
//! Each row `v` of a `[rows, cols]` matrix `W` is quantized on its own, symmetric absmax:
//! ```text
//! scale_v = max_d |W[v,d]| / 127          (f32; 1 when the row is all zeros)
//! q[v,d]  = clamp(round(W[v,d] / scale_v), -127, 127)     (i8; round half away from zero)
//! W[v,d] ≈ scale_v · q[v,d]               |error| ≤ scale_v / 2 = max_d |W[v,d]| / 254
//! ```
//! `-128` is never produced, so the code is symmetric. A scale that underflows to zero (a row of
//! f32 subnormals) is also replaced by 1, which stores that row as zeros. NaN entries are
//! ignored by the absmax and stored as 0; an infinite entry gives an infinite scale (the row
//! then dequantizes to NaN, as an f32 product with that row would).
//!
//! # Layout
//! `q` is row-major `[rows, cols]` i8, `scales` is `[rows]` f32. Products never dequantize the
//! matrix: `y[k,v] = scale_v · Σ_d q[v,d] · x[k,d]` with `x` in f32.

/// Largest magnitude of a quantized value.
pub const Q8_MAX: f32 = 127.0;

/// Quantizes one row into `q` (same length) and returns its scale.
pub fn quantize_row(w: &[f32], q: &mut [i8]) -> f32 {
    assert_eq!(w.len(), q.len(), "quantize_row: {} weights, {} outputs", w.len(), q.len());
    let absmax = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let mut scale = absmax / Q8_MAX;
    if scale == 0.0 {
        scale = 1.0;
    }
    for (o, &v) in q.iter_mut().zip(w) {
        // `as i8` maps NaN to 0; the clamp keeps -128 out of the code.
        *o = (v / scale).round().clamp(-Q8_MAX, Q8_MAX) as i8;
    }
    scale
}

/// Quantizes a row-major `w: [rows, cols]`: returns `(q: [rows, cols], scales: [rows])`.
///
/// # Panics
/// If `w.len() != rows * cols` (a caller bug).
pub fn quantize_rows(w: &[f32], rows: usize, cols: usize) -> (Vec<i8>, Vec<f32>) {
    assert_eq!(w.len(), rows * cols, "quantize_rows: w has {} elements, expected {rows}x{cols}", w.len());
    let mut q = vec![0i8; rows * cols];
    let mut scales = vec![1.0f32; rows];
    if cols > 0 {
        for ((wr, qr), s) in w.chunks_exact(cols).zip(q.chunks_exact_mut(cols)).zip(&mut scales) {
            *s = quantize_row(wr, qr);
        }
    }
    (q, scales)
}

/// `out[d] = scale · q[d]` (one f32 multiplication per entry: the embedding lookup).
pub fn dequantize_row(q: &[i8], scale: f32, out: &mut [f32]) {
    assert_eq!(q.len(), out.len(), "dequantize_row: {} codes, {} outputs", q.len(), out.len());
    for (o, &v) in out.iter_mut().zip(q) {
        *o = scale * v as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_error_is_at_most_half_a_step() {
        let mut s = 3u64;
        let (rows, cols) = (7, 33);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let v = ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
                v * (1 + i / cols) as f32 // rows of different ranges
            })
            .collect();
        let (q, scales) = quantize_rows(&w, rows, cols);
        for v in 0..rows {
            let row = &w[v * cols..(v + 1) * cols];
            let absmax = row.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            assert_eq!(scales[v], absmax / 127.0);
            let mut back = vec![0.0; cols];
            dequantize_row(&q[v * cols..(v + 1) * cols], scales[v], &mut back);
            for (a, b) in row.iter().zip(&back) {
                // Half a step, plus the f32 rounding of the division and the product.
                assert!((a - b).abs() <= scales[v] * (0.5 + 1e-5), "row {v}: {a} vs {b}");
            }
            // The largest entry maps to ±127.
            assert!(q[v * cols..(v + 1) * cols].iter().any(|&c| c.unsigned_abs() == 127));
        }
    }

    #[test]
    fn special_rows() {
        // All zeros: scale 1, codes 0.
        let mut q = [5i8; 4];
        assert_eq!(quantize_row(&[0.0, -0.0, 0.0, 0.0], &mut q), 1.0);
        assert_eq!(q, [0; 4]);
        // Exact multiples of the step stay exact; halves round away from zero; no -128.
        let mut q5 = [0i8; 5];
        assert_eq!(quantize_row(&[-127.0, 127.0, 0.5, -0.5, 3.0], &mut q5), 1.0);
        assert_eq!(q5, [-127, 127, 1, -1, 3]);
        // NaN is stored as 0 and does not poison the scale.
        let mut q3 = [0i8; 3];
        assert_eq!(quantize_row(&[f32::NAN, 254.0, -127.0], &mut q3), 2.0);
        assert_eq!(q3, [0, 127, -64]);
    }
}
