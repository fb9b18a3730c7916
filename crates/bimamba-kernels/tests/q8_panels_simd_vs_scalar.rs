//! The q8 product with int8 activations over a matrix stored in panels
//! (`bimamba_kernels::q8_panels`): every ISA against the panel twin bit for bit, the panel twin
//! against the row-major twin (`q8_act8::rows_scalar`, the same spec) bit for bit, over columns
//! around the 4-column group, rows around the 32-row panel (the row-major tail), t = 1..17 and
//! prefill counts (token blocks of 12), row sub-ranges that cut panels, saturated codes whose
//! sums pass 2²⁴; the parallel entry points against the row-major ones (`q8_gemm_i8`, and the
//! f32-activation fallback against `q8_gemm`).

use bimamba_kernels::{
    act8, q8, q8_act8, q8_gemm, q8_gemm_i8, q8_gemm_i8_panels, q8_gemm_i8_panels_with, q8_gemm_panels, q8_panels, Isa,
};

const ISAS: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon];

mod common;
use common::Rng;

/// Random q8 weights with rows of different ranges: `(row-major q, q in panels, scales, row sums)`.
fn weights(rng: &mut Rng, rows: usize, cols: usize) -> (Vec<i8>, Vec<i8>, Vec<f32>, Vec<i32>) {
    let mut w = rng.vec(rows * cols);
    for (i, r) in w.chunks_exact_mut(cols).enumerate() {
        r.iter_mut().for_each(|v| *v *= 0.01 * (1 + i % 7) as f32);
    }
    let (q, s) = q8::quantize_rows(&w, rows, cols);
    let sums = q8_act8::row_sums(&q, rows, cols);
    let mut p = q.clone();
    q8_panels::to_panels(&mut p, rows, cols);
    (q, p, s, sums)
}

/// Activations with a different magnitude per token (the scale is per token).
fn activations(rng: &mut Rng, t: usize, cols: usize) -> Vec<f32> {
    let mut x = rng.vec(t * cols);
    for (k, xr) in x.chunks_exact_mut(cols).enumerate() {
        xr.iter_mut().for_each(|v| *v *= (1 << (k % 5)) as f32);
    }
    x
}

fn shapes(rng: &mut Rng) -> Vec<(usize, usize, usize)> {
    let mut v = Vec::new();
    // Every token count up to 17 (full and partial blocks of 12, a second block).
    for t in 1..=17 {
        v.push((1 + rng.below(100), 4 * (1 + rng.below(80)), t));
    }
    // Columns: one group, a few, around 64 bytes and the shipped d_model.
    for cols in [4, 8, 12, 60, 64, 68, 128, 252, 256, 260, 520] {
        v.push((1 + rng.below(100), cols, 1 + rng.below(17)));
    }
    // Rows around the 32-row panel (all tail, one panel, a panel and a tail, ...).
    for rows in [1, 16, 31, 32, 33, 47, 63, 64, 65, 96, 100] {
        v.push((rows, 4 * (16 + rng.below(50)), 1 + rng.below(17)));
    }
    // Prefill counts (several blocks of 12) and a wide row.
    v.extend([(70, 256, 33), (33, 128, 64), (19, 1100, 23), (40, 4100, 3)]);
    v
}

#[test]
fn every_isa_matches_the_twins_bit_for_bit() {
    let mut rng = Rng(0x9a4e_1508);
    let supported: Vec<Isa> = ISAS.into_iter().filter(|i| i.is_supported()).collect();
    eprintln!("q8 int8 SIMD kernel on this CPU: {}", bimamba_kernels::q8_act8_has_simd(Isa::Avx512));
    for shape @ (rows, cols, t) in shapes(&mut rng) {
        let (q, p, s, sums) = weights(&mut rng, rows, cols);
        let x = activations(&mut rng, t, cols);
        let a = act8::quantize(&x, cols, t);
        let r0 = rng.below(rows);
        let r1 = r0 + 1 + rng.below(rows - r0);
        for (lo, hi) in [(0, rows), (r0, r1)] {
            let mut want = vec![0.0; t * (hi - lo)];
            q8_act8::rows_scalar(&q, &s, &sums, cols, &a, lo..hi, &mut want);
            let mut twin = vec![f32::NAN; t * (hi - lo)];
            q8_panels::rows_scalar(&p, &s, &sums, rows, cols, &a, lo..hi, &mut twin);
            let same = twin.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits());
            assert!(same, "panel twin {shape:?} rows {lo}..{hi}");
            for &isa in &supported {
                let mut got = vec![f32::NAN; t * (hi - lo)];
                q8_gemm_i8_panels_with(isa, &p, &s, &sums, rows, cols, &x, t, lo..hi, &mut got);
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
    for (rows, cols, t) in [(33, 1100, 3), (3, 5000, 9), (64, 5200, 13), (40, 64, 16)] {
        let q: Vec<i8> = (0..rows * cols).map(|i| if (i / 3) % 5 == 0 { -127 } else { 127 }).collect();
        let s: Vec<f32> = (0..rows).map(|i| 1.0 + i as f32 / 8.0).collect();
        let sums = q8_act8::row_sums(&q, rows, cols);
        let mut p = q.clone();
        q8_panels::to_panels(&mut p, rows, cols);
        let x: Vec<f32> = (0..t * cols).map(|i| if i % 7 == 0 { -2.0 } else { 2.0 }).collect();
        let a = act8::quantize(&x, cols, t);
        let mut want = vec![0.0; t * rows];
        q8_act8::rows_scalar(&q, &s, &sums, cols, &a, 0..rows, &mut want);
        for isa in ISAS.into_iter().filter(|i| i.is_supported()) {
            let mut got = vec![f32::NAN; t * rows];
            q8_gemm_i8_panels_with(isa, &p, &s, &sums, rows, cols, &x, t, 0..rows, &mut got);
            assert_eq!(got, want, "{} ({rows},{cols},{t})", isa.name());
        }
    }
}

/// The parallel entry points on 3 threads: the int8 product over panels gives `q8_gemm_i8`'s
/// bits, the f32-activation fallback `q8_gemm`'s.
#[test]
fn parallel_entries_match_the_row_major_products() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("thread pool");
    let mut rng = Rng(7171);
    // Large enough for the parallel split (rows · cols · t ≥ 2^20).
    for (rows, cols, t) in [(4099, 256, 1), (2000, 256, 8), (1500, 300, 5), (777, 520, 17)] {
        let (q, p, s, sums) = weights(&mut rng, rows, cols);
        let x = activations(&mut rng, t, cols);
        let (mut want, mut got) = (vec![0.0; t * rows], vec![f32::NAN; t * rows]);
        pool.install(|| q8_gemm_i8(&q, &s, &sums, rows, cols, &x, t, &mut want));
        pool.install(|| q8_gemm_i8_panels(&p, &s, &sums, rows, cols, &x, t, &mut got));
        assert_eq!(got, want, "int8 ({rows},{cols},{t})");
        pool.install(|| q8_gemm(&q, &s, rows, cols, &x, t, &mut want));
        pool.install(|| q8_gemm_panels(&p, &s, rows, cols, &x, t, &mut got));
        assert_eq!(got, want, "f32 ({rows},{cols},{t})");
    }
    // Below the parallel split, on the calling thread.
    let (q, p, s, sums) = weights(&mut rng, 45, 64);
    let x = activations(&mut rng, 3, 64);
    let (mut want, mut got) = (vec![0.0; 3 * 45], vec![f32::NAN; 3 * 45]);
    q8_gemm(&q, &s, 45, 64, &x, 3, &mut want);
    q8_gemm_panels(&p, &s, 45, 64, &x, 3, &mut got);
    assert_eq!(got, want);
    q8_gemm_i8(&q, &s, &sums, 45, 64, &x, 3, &mut want);
    q8_gemm_i8_panels(&p, &s, &sums, 45, 64, &x, 3, &mut got);
    assert_eq!(got, want);
}

#[test]
fn degenerate_calls_and_special_tokens() {
    for isa in ISAS.into_iter().filter(|i| i.is_supported()) {
        // No rows, no tokens, an empty range.
        let mut y: Vec<f32> = vec![];
        q8_gemm_i8_panels_with(isa, &[], &[], &[], 0, 4, &[0.0; 8], 2, 0..0, &mut y);
        q8_gemm_i8_panels_with(isa, &[1; 8], &[1.0; 2], &[4; 2], 2, 4, &[], 0, 0..2, &mut y);
        let mut rng = Rng(3);
        let (_, p, s, sums) = weights(&mut rng, 40, 8);
        q8_gemm_i8_panels_with(isa, &p, &s, &sums, 40, 8, &[1.0; 8], 1, 5..5, &mut y);
        // An all-zero token gives 0, a token with a NaN gives NaN, the others are unaffected.
        let mut x = activations(&mut rng, 3, 8);
        x[..8].fill(0.0);
        x[9] = f32::NAN;
        let mut y = vec![f32::NAN; 3 * 40];
        q8_gemm_i8_panels_with(isa, &p, &s, &sums, 40, 8, &x, 3, 0..40, &mut y);
        assert!(y[..40].iter().all(|&v| v == 0.0), "{}", isa.name());
        assert!(y[40..80].iter().all(|v| v.is_nan()), "{}", isa.name());
        assert!(y[80..].iter().all(|v| v.is_finite()), "{}", isa.name());
    }
}
