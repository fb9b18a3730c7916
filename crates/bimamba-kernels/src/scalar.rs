//! Portable scalar kernels: the reference every SIMD kernel is tested against, and the fallback
//! on CPUs without a SIMD path. Single-threaded; the parallel entry points live in `lib.rs`.
//!
//! # Shapes (all row-major)
//! - `x: [t, cols]` activations, `y: [t, nr]` outputs for the row range `r0..r0 + nr`.
//! - binary: `bits` is a packed sign matrix `[rows, cols]` (see [`crate::pack`]);
//!   `y[k, i - r0] = Σ_j s_ij · x[k, j]`, `s_ij ∈ {+1, -1}`.
//! - dense: `w: [rows, cols]`; `y[k, i - r0] = Σ_j w_ij · x[k, j]`, i.e. `y = x · Wᵀ`.
//! - q8: `q: [rows, cols]` i8 and `scales: [rows]` (see [`crate::q8`]);
//!   `y[k, i - r0] = scales[i] · Σ_j q_ij · x[k, j]`.
//!
//! # Summation order
//! Sums run over eight interleaved lanes (lane `l` takes columns `j ≡ l mod 8`, each lane in
//! increasing `j`), then the lanes are added as `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`.
//! The order is fixed so that results are reproducible; SIMD kernels use other orders and are
//! compared against these under a named tolerance, never bit for bit.

use half::{bf16, f16};
use std::ops::Range;

use crate::pack::row_bytes;

/// A dense weight element that widens exactly to f32 (f32 itself, bf16, f16).
pub trait DenseElem: Copy + Send + Sync + 'static {
    /// Exact widening conversion to f32.
    fn to_f32(self) -> f32;
}

impl DenseElem for f32 {
    #[inline]
    fn to_f32(self) -> f32 {
        self
    }
}

impl DenseElem for bf16 {
    #[inline]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

impl DenseElem for f16 {
    #[inline]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

impl DenseElem for i8 {
    #[inline]
    fn to_f32(self) -> f32 {
        self as f32
    }
}

const LANES: usize = 8;

#[inline]
fn reduce_lanes(a: [f32; LANES]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// `±x` as selected by a sign bit: bit 1 keeps `x`, bit 0 flips its IEEE sign bit (exact).
#[inline]
fn signed(x: f32, bit: u64) -> f32 {
    f32::from_bits(x.to_bits() ^ ((((bit & 1) ^ 1) as u32) << 31))
}

/// f16 → f32 without a conversion instruction; the NEON kernel does exactly this per lane.
///
/// For `h = sign | e (5 bits) | m (10 bits)`, the bits `(h & 0x7fff) << 13` read as an f32 are
/// `2^(e−127) · 1.m` (or the f32 subnormal `2^−126 · 0.m` when `e = 0`); multiplying by `2^112`
/// gives `2^(e−15) · 1.m` (resp. `2^−14 · 0.m`), the f16 value, exactly (a power-of-two scale
/// that lands in the normal range). `e = 31` (inf/NaN) instead takes exponent 255, keeping `m`.
pub fn f16_to_f32_magic(h: u16) -> f32 {
    let em = (h & 0x7fff) as u32;
    let shifted = em << 13;
    let mag = if em >= 0x7c00 {
        shifted | 0x7f80_0000
    } else {
        (f32::from_bits(shifted) * f32::from_bits(0x7780_0000)).to_bits()
    };
    f32::from_bits(mag | (((h & 0x8000) as u32) << 16))
}

/// `Σ_j s_j · x_j` for one packed row (`row.len() == row_bytes(x.len())`).
pub fn binary_dot(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    // Each packed byte covers exactly the eight columns 8b..8b+8, one per lane.
    for (b, xs) in x.chunks(LANES).enumerate() {
        let byte = row[b] as u64;
        for (l, &xj) in xs.iter().enumerate() {
            acc[l] += signed(xj, byte >> l);
        }
    }
    reduce_lanes(acc)
}

/// `Σ_j w_j · x_j` for one dense row.
pub fn dense_dot<E: DenseElem>(w: &[E], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    for (ws, xs) in w.chunks(LANES).zip(x.chunks(LANES)) {
        for l in 0..xs.len() {
            acc[l] += ws[l].to_f32() * xs[l];
        }
    }
    reduce_lanes(acc)
}

/// Binary kernel over output rows `rows` (a sub-range of the matrix): `y: [t, rows.len()]`.
pub fn binary_rows(bits: &[u8], cols: usize, x: &[f32], t: usize, rows: Range<usize>, y: &mut [f32]) {
    let rb = row_bytes(cols);
    let nr = rows.len();
    debug_assert!(bits.len() >= rows.end * rb && x.len() == t * cols && y.len() == t * nr);
    for (ii, i) in rows.enumerate() {
        let row = &bits[i * rb..(i + 1) * rb];
        for k in 0..t {
            y[k * nr + ii] = binary_dot(row, &x[k * cols..(k + 1) * cols]);
        }
    }
}

/// Dense kernel over output rows `rows`: `y: [t, rows.len()]`.
pub fn dense_rows<E: DenseElem>(w: &[E], cols: usize, x: &[f32], t: usize, rows: Range<usize>, y: &mut [f32]) {
    let nr = rows.len();
    debug_assert!(w.len() >= rows.end * cols && x.len() == t * cols && y.len() == t * nr);
    for (ii, i) in rows.enumerate() {
        let row = &w[i * cols..(i + 1) * cols];
        for k in 0..t {
            y[k * nr + ii] = dense_dot(row, &x[k * cols..(k + 1) * cols]);
        }
    }
}

/// q8 kernel over output rows `rows`: `y: [t, rows.len()]`, `y[k, i - r0] = scales[i] · Σ_j
/// q_ij · x[k, j]` (the integer codes widen exactly to f32; the scale multiplies the sum once).
pub fn q8_rows(q: &[i8], scales: &[f32], cols: usize, x: &[f32], t: usize, rows: Range<usize>, y: &mut [f32]) {
    let nr = rows.len();
    debug_assert!(q.len() >= rows.end * cols && scales.len() >= rows.end && x.len() == t * cols && y.len() == t * nr);
    for (ii, i) in rows.enumerate() {
        let row = &q[i * cols..(i + 1) * cols];
        for k in 0..t {
            y[k * nr + ii] = scales[i] * dense_dot(row, &x[k * cols..(k + 1) * cols]);
        }
    }
}

/// Single-threaded `y[k, i] = Σ_j s_ij · x[k, j]`; `x: [t, cols]`, `y: [t, rows]`.
pub fn binary_gemm(bits: &[u8], rows: usize, cols: usize, x: &[f32], t: usize, y: &mut [f32]) {
    crate::check_binary_shapes(bits, rows, cols, x, t, y);
    binary_rows(bits, cols, x, t, 0..rows, y);
}

/// Single-threaded binary matrix-vector product (`t = 1`).
pub fn binary_gemv(bits: &[u8], rows: usize, cols: usize, x: &[f32], y: &mut [f32]) {
    binary_gemm(bits, rows, cols, x, 1, y);
}

/// Single-threaded `y = x · Wᵀ` for f32 weights `w: [rows, cols]`.
pub fn dense_gemm_f32(w: &[f32], rows: usize, cols: usize, x: &[f32], t: usize, y: &mut [f32]) {
    crate::check_dense_shapes(w.len(), rows, cols, x, t, y);
    dense_rows(w, cols, x, t, 0..rows, y);
}

/// Single-threaded `y = x · Wᵀ` for bf16 weights, widened to f32.
pub fn dense_gemm_bf16(w: &[bf16], rows: usize, cols: usize, x: &[f32], t: usize, y: &mut [f32]) {
    crate::check_dense_shapes(w.len(), rows, cols, x, t, y);
    dense_rows(w, cols, x, t, 0..rows, y);
}

/// Single-threaded `y = x · Wᵀ` for f16 weights, widened to f32.
pub fn dense_gemm_f16(w: &[f16], rows: usize, cols: usize, x: &[f32], t: usize, y: &mut [f32]) {
    crate::check_dense_shapes(w.len(), rows, cols, x, t, y);
    dense_rows(w, cols, x, t, 0..rows, y);
}

/// Single-threaded q8 product: `y[k, i] = scales[i] · Σ_j q_ij · x[k, j]`.
pub fn q8_gemm(q: &[i8], scales: &[f32], rows: usize, cols: usize, x: &[f32], t: usize, y: &mut [f32]) {
    crate::check_q8_shapes(q, scales, rows, cols, x, t, y);
    q8_rows(q, scales, cols, x, t, 0..rows, y);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::{pack_signs, unpack_signs};

    fn lcg(state: &mut u64) -> f32 {
        *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// The scalar binary kernel against an f64 sum over unpacked ±1 signs.
    #[test]
    fn binary_matches_unpacked_f64() {
        let mut s = 7u64;
        for &(rows, cols, t) in &[(1, 1, 1), (3, 7, 2), (5, 64, 3), (4, 65, 1), (9, 300, 4)] {
            let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut s)).collect();
            let x: Vec<f32> = (0..t * cols).map(|_| lcg(&mut s)).collect();
            let bits = pack_signs(&w, rows, cols);
            let signs = unpack_signs(&bits, rows, cols);
            let mut y = vec![f32::NAN; t * rows];
            binary_gemm(&bits, rows, cols, &x, t, &mut y);
            for k in 0..t {
                for i in 0..rows {
                    let xr = &x[k * cols..(k + 1) * cols];
                    let exact: f64 = (0..cols).map(|j| signs[i * cols + j] as f64 * xr[j] as f64).sum();
                    let abs: f64 = xr.iter().map(|v| v.abs() as f64).sum();
                    let got = y[k * rows + i] as f64;
                    assert!((got - exact).abs() <= 1e-6 * abs + 1e-30, "({rows},{cols},{t}) y[{k},{i}]");
                }
            }
        }
    }

    #[test]
    fn f16_magic_matches_half_on_all_inputs() {
        for h in 0..=u16::MAX {
            let want = f16::from_bits(h).to_f32();
            let got = f16_to_f32_magic(h);
            if want.is_nan() {
                assert!(got.is_nan(), "{h:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{h:#06x}");
            }
        }
    }

    #[test]
    fn binary_padding_bits_are_ignored() {
        // A row whose padding bits are all set must give the same result: x stops at cols.
        let cols = 10;
        let x: Vec<f32> = (0..cols).map(|j| j as f32 + 1.0).collect();
        let mut bits = pack_signs(&[1.0; 10], 1, cols);
        let mut y0 = [0.0];
        binary_gemv(&bits, 1, cols, &x, &mut y0);
        bits[1] |= 0xfc;
        bits[2..8].fill(0xff);
        let mut y1 = [0.0];
        binary_gemv(&bits, 1, cols, &x, &mut y1);
        assert_eq!(y0, y1);
        assert_eq!(y0[0], 55.0);
    }

    #[test]
    fn dense_formats_agree_on_representable_weights() {
        // Small integers are exact in f32, bf16 and f16, so all three must agree exactly.
        let (rows, cols, t) = (3, 19, 2);
        let w: Vec<f32> = (0..rows * cols).map(|v| (v % 7) as f32 - 3.0).collect();
        let x: Vec<f32> = (0..t * cols).map(|v| (v % 5) as f32 - 2.0).collect();
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let (mut y, mut yb, mut yh) = (vec![0.0; t * rows], vec![0.0; t * rows], vec![0.0; t * rows]);
        dense_gemm_f32(&w, rows, cols, &x, t, &mut y);
        dense_gemm_bf16(&wb, rows, cols, &x, t, &mut yb);
        dense_gemm_f16(&wh, rows, cols, &x, t, &mut yh);
        for k in 0..t {
            for i in 0..rows {
                let exact: f32 = (0..cols).map(|j| w[i * cols + j] * x[k * cols + j]).sum();
                assert_eq!(y[k * rows + i], exact);
            }
        }
        assert_eq!(y, yb);
        assert_eq!(y, yh);
    }
}
