//! The q8 product (LM head / embedding of a `--embed q8` model, [`crate::q8`]) with int8
//! activations: the spec and its scalar twin. The default with `--binary-act int8` where
//! [`crate::q8_act8_has_simd`]; `--exact` keeps f32 activations ([`crate::q8_gemm`]).
//!
//! # The product
//! Activations are quantized per token exactly as for the 1-bit products ([`crate::act8`]:
//! `xs_k = max_d |x[k, d]| / 127`, `xq[k, d] = clamp(rne(x[k, d] / xs_k), ±127)`). With the q8
//! weights `W[v, d] ≈ s_v · q[v, d]`:
//! ```text
//! S[k, v] = Σ_d q[v, d] · xq[k, d]               exact in i32 (|S| ≤ 127² · cols < 2³¹)
//! y[k, v] = (f32(S[k, v]) · xs_k) · s_v          two f32 roundings, in this order
//! ```
//! `f32(S)` is exact below 2²⁴ (cols ≤ 1040) and otherwise rounded to nearest even by every
//! ISA alike, so every kernel returns the scalar twin's bits.
//!
//! # Distance to the f32-activation product
//! `xq` rounds each activation by at most half a step, `|x[k, d] − xs_k · xq[k, d]| ≤ xs_k / 2`
//! (up to the f32 rounding of `x · 127/m`, a few units of 2⁻²³ relative; the clamp never cuts
//! more than that), so against the exact `s_v · Σ_d q[v, d] · x[k, d]`:
//! ```text
//! |y − y_exact| = s_v · |Σ_d q[v, d] · (xs_k · xq[k, d] − x[k, d])| ≤ ½ · xs_k · s_v · Σ_d |q[v, d]|
//! ```
//! plus two f32 roundings of `y` (≤ 2⁻²³ |y|); the f32 kernel [`crate::q8_gemm`] has its own
//! summation rounding on top. The errors of the columns are independent and of both signs, so
//! the typical error is about `√cols` times smaller than this worst case.
//!
//! # Fast paths
//! `vpdpbusd` multiplies unsigned by signed bytes. The kernels feed `xq + 128 ∈ [1, 255]` as the
//! unsigned operand and the weight codes as the signed one, which adds `128 · Σ_d q[v, d]` to
//! every sum of row `v`; [`row_sums`] precomputes those sums once per matrix and the kernel
//! subtracts them (i32 arithmetic wraps, and the true `S` fits, so the result is exact).

use std::ops::Range;

use crate::act8::Act8;

/// Largest column count the kernels accept: `127² · cols` must fit in i32.
pub const MAX_COLS: usize = 1 << 17;

/// `Σ_d q[v, d]` for every row of `q: [rows, cols]`: the correction of the `+128` offset the
/// SIMD kernels give the activations (see the module doc). Computed once per matrix.
pub fn row_sums(q: &[i8], rows: usize, cols: usize) -> Vec<i32> {
    assert_eq!(q.len(), rows * cols, "q8 row sums: q has {} elements, expected [{rows} x {cols}]", q.len());
    if cols == 0 {
        return vec![0; rows];
    }
    q.chunks_exact(cols).map(|r| r.iter().map(|&v| v as i32).sum()).collect()
}

/// `y = (f32(S) · xs_k) · s_v`: the one dequantization every kernel applies.
#[inline(always)]
pub fn dequantize(sum: i32, xscale: f32, scale: f32) -> f32 {
    (sum as f32 * xscale) * scale
}

/// The argument checks every q8 int8-activation kernel makes before it reads (the SIMD one
/// indexes with raw pointers, so these bounds make every access in range).
pub(crate) fn check_rows(
    q: &[i8],
    scales: &[f32],
    row_sums: &[i32],
    cols: usize,
    a: &Act8,
    range: &Range<usize>,
    y: &[f32],
) {
    let (t, nr) = (a.tokens(), range.len());
    assert!(cols <= MAX_COLS, "q8 int8 kernel: {cols} columns, at most {MAX_COLS}");
    assert_eq!(a.cols, cols, "q8 int8 kernel: activations have {} columns, weights {cols}", a.cols);
    assert!(
        a.stride >= cols && a.stride.is_multiple_of(64) && a.q.len() == t * a.stride,
        "q8 int8 kernel: activation layout"
    );
    assert!(q.len() >= range.end * cols, "q8 int8 kernel: codes too short for rows {range:?}");
    assert!(scales.len() >= range.end && row_sums.len() >= range.end, "q8 int8 kernel: scales or row sums too short");
    assert_eq!(y.len(), t * nr, "q8 int8 kernel: y has {} elements, expected [{t} x {nr}]", y.len());
}

/// The scalar twin (the spec): `y: [t, range.len()]`, `y[k, v − r0] = (f32(Σ_d q[v, d] ·
/// xq[k, d]) · xs_k) · s_v`. `row_sums` is checked for length only (the twin does not need it).
pub fn rows_scalar(
    q: &[i8],
    scales: &[f32],
    row_sums: &[i32],
    cols: usize,
    a: &Act8,
    range: Range<usize>,
    y: &mut [f32],
) {
    check_rows(q, scales, row_sums, cols, a, &range, y);
    let (t, nr) = (a.tokens(), range.len());
    for (ii, v) in range.enumerate() {
        let row = &q[v * cols..(v + 1) * cols];
        for k in 0..t {
            let xq = &a.q[k * a.stride..k * a.stride + cols];
            let s: i32 = row.iter().zip(xq).map(|(&w, &x)| w as i32 * x as i32).sum();
            y[k * nr + ii] = dequantize(s, a.scales[k], scales[v]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::act8::quantize;

    #[test]
    fn twin_is_the_integer_sum_and_within_the_bound() {
        let mut s = 17u64;
        let mut r = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        for (rows, cols, t) in [(3, 1, 1), (5, 70, 3), (9, 257, 2)] {
            let w: Vec<f32> = (0..rows * cols).map(|_| r()).collect();
            let x: Vec<f32> = (0..t * cols).map(|_| 3.0 * r()).collect();
            let (q, sc) = crate::q8::quantize_rows(&w, rows, cols);
            let sums = row_sums(&q, rows, cols);
            let a = quantize(&x, cols, t);
            let mut y = vec![f32::NAN; t * rows];
            rows_scalar(&q, &sc, &sums, cols, &a, 0..rows, &mut y);
            for k in 0..t {
                for v in 0..rows {
                    let qr = &q[v * cols..(v + 1) * cols];
                    let exact: f64 =
                        (0..cols).map(|d| qr[d] as f64 * x[k * cols + d] as f64).sum::<f64>() * sc[v] as f64;
                    let l1: f64 = qr.iter().map(|&c| (c as f64).abs()).sum();
                    let bound = 0.5 * a.scales[k] as f64 * sc[v] as f64 * l1 * (1.0 + 1e-4) + 1e-6;
                    let got = y[k * rows + v] as f64;
                    assert!((got - exact).abs() <= bound, "({rows},{cols},{t}) [{k},{v}] {got} vs {exact}");
                }
            }
        }
    }

    #[test]
    fn row_sums_of_empty_rows() {
        assert_eq!(row_sums(&[], 3, 0), vec![0, 0, 0]);
        assert_eq!(row_sums(&[1, -2, 3, 127, -127, 0], 2, 3), vec![2, 0]);
    }
}
