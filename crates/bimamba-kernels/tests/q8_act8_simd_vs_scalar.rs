//! The q8 product with int8 activations (`bimamba_kernels::q8_act8`): every ISA against the
//! scalar twin, bit for bit (integer sums, the same two roundings), over odd shapes (columns not a
//! multiple of 64 or of a step, rows not a multiple of the 16-row tile, t = 1..17 and prefill
//! counts, row sub-ranges), saturated codes whose sums pass 2²⁴, the parallel entry point, and
//! the distance to the f32-activation `q8_gemm` under the bound derived in `q8_act8`.

use bimamba_kernels::{act8, q8, q8_act8, q8_act8_has_simd, q8_gemm_i8, q8_gemm_i8_with, q8_gemm_with, Isa};

const ISAS: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon];

/// Relative rounding of the f32 kernel's own sum (`REL_TOL` of tests/simd_vs_scalar.rs) on top
/// of the quantization bound.
const F32_SUM_TOL: f64 = 1e-5;

mod common;
use common::Rng;

/// Random q8 weights with rows of different ranges: `(q, scales, row_sums)`.
fn weights(rng: &mut Rng, rows: usize, cols: usize) -> (Vec<i8>, Vec<f32>, Vec<i32>) {
    let mut w = rng.vec(rows * cols);
    if cols > 0 {
        for (i, r) in w.chunks_exact_mut(cols).enumerate() {
            r.iter_mut().for_each(|v| *v *= 0.01 * (1 + i % 7) as f32);
        }
    }
    let (q, s) = q8::quantize_rows(&w, rows, cols);
    let sums = q8_act8::row_sums(&q, rows, cols);
    (q, s, sums)
}

/// Activations with a different magnitude per token (the scale is per token).
fn activations(rng: &mut Rng, t: usize, cols: usize) -> Vec<f32> {
    let mut x = rng.vec(t * cols);
    if cols > 0 {
        for (k, xr) in x.chunks_exact_mut(cols).enumerate() {
            xr.iter_mut().for_each(|v| *v *= (1 << (k % 5)) as f32);
        }
    }
    x
}

fn shapes(rng: &mut Rng) -> Vec<(usize, usize, usize)> {
    let mut v = Vec::new();
    // Every token count up to 17 (every lane width, padded blocks, a second block).
    for t in 1..=17 {
        v.push((1 + rng.below(40), 1 + rng.below(300), t));
    }
    // Columns around every step width (4, 8, 16, 32, 64 bytes) and the shipped d_model.
    for cols in [1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 127, 255, 256, 257, 520] {
        v.push((1 + rng.below(50), cols, 1 + rng.below(17)));
    }
    // Rows around the 16-row tile.
    for rows in [1, 15, 16, 17, 31, 33, 47, 100] {
        v.push((rows, 64 + rng.below(200), 1 + rng.below(17)));
    }
    // Prefill counts (several blocks of 16) and a wide row.
    v.extend([(70, 256, 33), (33, 129, 64), (19, 1100, 23), (5, 4100, 3)]);
    v
}

#[test]
fn every_isa_matches_the_scalar_twin_bit_for_bit() {
    let mut rng = Rng(0x5eed_0a08);
    let supported: Vec<Isa> = ISAS.into_iter().filter(|i| i.is_supported()).collect();
    eprintln!("q8 int8 SIMD kernel on this CPU: {}", supported.iter().any(|&i| q8_act8_has_simd(i)));
    for shape @ (rows, cols, t) in shapes(&mut rng) {
        let (q, s, sums) = weights(&mut rng, rows, cols);
        let x = activations(&mut rng, t, cols);
        let a = act8::quantize(&x, cols, t);
        let r0 = rng.below(rows);
        let r1 = r0 + 1 + rng.below(rows - r0);
        for (lo, hi) in [(0, rows), (r0, r1)] {
            let mut want = vec![0.0; t * (hi - lo)];
            q8_act8::rows_scalar(&q, &s, &sums, cols, &a, lo..hi, &mut want);
            for &isa in &supported {
                let mut got = vec![f32::NAN; t * (hi - lo)];
                q8_gemm_i8_with(isa, &q, &s, &sums, rows, cols, &x, t, lo..hi, &mut got);
                let same = got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits());
                assert!(same, "{} {shape:?} rows {lo}..{hi}", isa.name());
            }
        }
    }
}

/// All codes ±127 against tokens at ±absmax: integer sums up to 127² · cols, past 2²⁴ (where the
/// conversion to f32 rounds) and with the +128 offset far past it.
#[test]
fn saturated_sums_match() {
    for (rows, cols, t) in [(17, 1100, 3), (3, 5000, 9), (20, 64, 16)] {
        let q: Vec<i8> = (0..rows * cols).map(|i| if (i / 3) % 5 == 0 { -127 } else { 127 }).collect();
        let s: Vec<f32> = (0..rows).map(|i| 1.0 + i as f32 / 8.0).collect();
        let sums = q8_act8::row_sums(&q, rows, cols);
        let x: Vec<f32> = (0..t * cols).map(|i| if i % 7 == 0 { -2.0 } else { 2.0 }).collect();
        let a = act8::quantize(&x, cols, t);
        let mut want = vec![0.0; t * rows];
        q8_act8::rows_scalar(&q, &s, &sums, cols, &a, 0..rows, &mut want);
        for isa in ISAS.into_iter().filter(|i| i.is_supported()) {
            let mut got = vec![f32::NAN; t * rows];
            q8_gemm_i8_with(isa, &q, &s, &sums, rows, cols, &x, t, 0..rows, &mut got);
            assert_eq!(got, want, "{} ({rows},{cols},{t})", isa.name());
        }
    }
}

/// `|y_int8 − y_f32| ≤ ½ · xs_k · s_v · Σ_d |q[v, d]|` (q8_act8's module doc) plus the f32
/// kernel's summation rounding, on the parallel entry point (3 threads), which must also give
/// the twin's bits.
#[test]
fn parallel_entry_matches_the_twin_and_stays_within_the_bound() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("thread pool");
    let mut rng = Rng(4343);
    // Large enough for the parallel split (rows · cols · t ≥ 2^20).
    for (rows, cols, t) in [(4099, 256, 1), (2000, 256, 8), (1500, 300, 5), (777, 520, 17)] {
        let (q, s, sums) = weights(&mut rng, rows, cols);
        let x = activations(&mut rng, t, cols);
        let a = act8::quantize(&x, cols, t);
        let mut want = vec![0.0; t * rows];
        q8_act8::rows_scalar(&q, &s, &sums, cols, &a, 0..rows, &mut want);
        let mut got = vec![f32::NAN; t * rows];
        pool.install(|| q8_gemm_i8(&q, &s, &sums, rows, cols, &x, t, &mut got));
        assert_eq!(got, want, "({rows},{cols},{t})");
        let mut f32_act = vec![0.0; t * rows];
        q8_gemm_with(Isa::Scalar, &q, &s, rows, cols, &x, t, 0..rows, &mut f32_act);
        let mut worst = 0.0f64;
        for v in 0..rows {
            let qr = &q[v * cols..(v + 1) * cols];
            let l1: f64 = qr.iter().map(|&c| (c as f64).abs()).sum();
            for k in 0..t {
                let xr = &x[k * cols..(k + 1) * cols];
                let abs: f64 = qr.iter().zip(xr).map(|(&c, &xv)| (c as f64 * xv as f64).abs()).sum();
                let bound = (0.5 * a.scales[k] as f64 * l1 + F32_SUM_TOL * abs) * s[v] as f64 + 1e-30;
                let err = (got[k * rows + v] as f64 - f32_act[k * rows + v] as f64).abs();
                assert!(err <= bound, "({rows},{cols},{t}) [{k},{v}]: error {err} > {bound}");
                worst = worst.max(err / bound);
            }
        }
        eprintln!("({rows},{cols},{t}): largest error / bound {worst:.3}");
    }
}

#[test]
fn degenerate_shapes_and_special_tokens() {
    for isa in ISAS.into_iter().filter(|i| i.is_supported()) {
        let mut y: Vec<f32> = vec![];
        q8_gemm_i8_with(isa, &[], &[], &[], 0, 5, &[0.0; 10], 2, 0..0, &mut y);
        q8_gemm_i8_with(isa, &[1, 2, 3], &[1.0; 3], &[1, 2, 3], 3, 1, &[], 0, 0..3, &mut y);
        let mut y = vec![f32::NAN; 3];
        q8_gemm_i8_with(isa, &[], &[1.0; 3], &[0; 3], 3, 0, &[], 1, 0..3, &mut y);
        assert_eq!(y, vec![0.0; 3], "{}: no columns gives 0", isa.name());
        // An all-zero token gives 0, a token with a NaN gives NaN, the others are unaffected.
        let q = [1i8, -2, 3, -4, 5, 6];
        let sums = q8_act8::row_sums(&q, 2, 3);
        let x = [0.0, 0.0, 0.0, 1.0, f32::NAN, 2.0, 1.0, 2.0, 3.0];
        let mut y = vec![f32::NAN; 6];
        q8_gemm_i8_with(isa, &q, &[0.5, 2.0], &sums, 2, 3, &x, 3, 0..2, &mut y);
        assert_eq!(&y[..2], &[0.0, 0.0], "{}", isa.name());
        assert!(y[2].is_nan() && y[3].is_nan(), "{}", isa.name());
        // Token 2 quantizes to [42, 85, 127] · 3/127: exact integer sums 1·42 − 2·85 + 3·127 and
        // −4·42 + 5·85 + 6·127.
        let xs = 3.0f32 / 127.0;
        assert_eq!(y[4], (253.0 * xs) * 0.5, "{}", isa.name());
        assert_eq!(y[5], (1019.0 * xs) * 2.0, "{}", isa.name());
    }
}
