//! The int8-activation binary product (`bimamba_kernels::act8`): every ISA against the scalar
//! twin, bit for bit (the sums are integers), over random shapes with tails (cols not multiples
//! of 64, cols past the AVX2 kernel's widening period, odd row counts, row sub-ranges, t = 1..9
//! and prefill counts up to 64), padding bits set, the parallel entry point,
//! and the distance to the exact f32 product under its named budget.

use bimamba_kernels::{act8, act8_has_simd, binary_gemm_i8, binary_gemm_i8_with, binary_gemm_with, pack, Isa};

const ISAS: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon];

/// Budget against the f32 product: per-token absmax int8 rounds each activation by at most half
/// a step, so |y_int8 − y_f32| ≤ ACT8_STEP_BUDGET · scale_k · cols (plus the f32 sum's own
/// rounding, far below).
const ACT8_STEP_BUDGET: f64 = 0.5;

mod common;
use common::Rng;

fn shapes(rng: &mut Rng) -> Vec<(usize, usize, usize)> {
    let mut v = Vec::new();
    for cols in [1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 127, 128, 129, 255, 257, 520] {
        v.push((1 + rng.below(21), cols, 1 + rng.below(9)));
    }
    for _ in 0..40 {
        v.push((1 + rng.below(150), 1 + rng.below(700), 1 + rng.below(9)));
    }
    // Wider than 128 words of 32 columns: the AVX2 kernel's i16 accumulators widen in between.
    v.extend([(5, 4096, 2), (3, 4097, 5), (7, 8300, 1), (2, 9000, 4)]);
    // Prefill token counts (the AVX512-VNNI GEMM from ACT8_GEMM_MIN_TOKENS on): odd counts, a
    // partial token block and panels of 32 rows with tails.
    v.extend([(70, 300, 13), (33, 129, 25), (97, 2560, 37), (64, 5120, 64), (1, 65, 11)]);
    v
}

/// The per-token quantization: every ISA's kernel gives the scalar twin's codes, scales and sums,
/// bit for bit, on column counts with every tail length, tokens of different magnitudes, exact
/// ties of the rounding, an all-zero token and tokens holding a NaN or an infinity.
#[test]
fn every_isa_quantizes_as_the_scalar_twin() {
    let mut rng = Rng(0x5eed_0018);
    let supported: Vec<Isa> = ISAS.into_iter().filter(|i| i.is_supported()).collect();
    for cols in (1..=70).chain([127, 128, 129, 255, 256, 257, 512, 1000, 2560]) {
        let t = 7;
        let mut x = rng.vec(t * cols);
        for (k, xr) in x.chunks_exact_mut(cols).enumerate() {
            match k {
                // A maximum of 127 (a step of 1) and every other value half-way between two
                // codes: each rounds to even.
                0 => xr
                    .iter_mut()
                    .enumerate()
                    .for_each(|(j, v)| *v = if j == 0 { -127.0 } else { (j % 253) as f32 - 125.5 }),
                1 => xr.fill(0.0),
                2 => xr[rng.below(cols)] = f32::NAN,
                3 => xr[rng.below(cols)] = f32::NEG_INFINITY,
                4 => xr.iter_mut().for_each(|v| *v *= 1e-30),
                _ => xr.iter_mut().for_each(|v| *v *= (1 << (3 * k)) as f32),
            }
        }
        let want = act8::quantize_with(Isa::Scalar, &x, cols, t);
        for &isa in &supported {
            let got = act8::quantize_with(isa, &x, cols, t);
            assert_eq!(got.q, want.q, "{} cols {cols}", isa.name());
            assert_eq!(got.sums, want.sums, "{} cols {cols}", isa.name());
            let bits = |a: &act8::Act8| a.scales.iter().map(|s| s.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{} cols {cols}", isa.name());
        }
    }
}

#[test]
fn every_isa_matches_the_scalar_twin_bit_for_bit() {
    let mut rng = Rng(0x5eed_0008);
    let supported: Vec<Isa> = ISAS.into_iter().filter(|i| i.is_supported()).collect();
    eprintln!("act8 SIMD kernel on this CPU: {}", supported.iter().any(|&i| act8_has_simd(i)));
    for shape @ (rows, cols, t) in shapes(&mut rng) {
        let w = rng.vec(rows * cols);
        let mut x = rng.vec(t * cols);
        // Different magnitudes per token (the scale is per token).
        for (k, xr) in x.chunks_exact_mut(cols).enumerate() {
            xr.iter_mut().for_each(|v| *v *= (1 << (k % 5)) as f32);
        }
        let bits = pack::pack_signs(&w, rows, cols);
        let r0 = rng.below(rows);
        let r1 = r0 + 1 + rng.below(rows - r0);
        for (a, b) in [(0, rows), (r0, r1)] {
            let mut want = vec![0.0; t * (b - a)];
            act8::binary_rows_scalar(&bits, cols, &act8::quantize_with(Isa::Scalar, &x, cols, t), a..b, &mut want);
            for &isa in &supported {
                let mut got = vec![f32::NAN; t * (b - a)];
                binary_gemm_i8_with(isa, &bits, rows, cols, &x, t, a..b, &mut got);
                assert_eq!(got, want, "{} {shape:?} rows {a}..{b}", isa.name());
            }
        }
    }
}

#[test]
fn padding_bits_are_ignored() {
    let mut rng = Rng(77);
    for isa in ISAS.into_iter().filter(|i| i.is_supported()) {
        for (rows, cols, t) in [(5, 1, 1), (9, 13, 3), (7, 70, 5), (3, 100, 9), (10, 200, 4)] {
            let w = rng.vec(rows * cols);
            let x = rng.vec(t * cols);
            let clean = pack::pack_signs(&w, rows, cols);
            let mut dirty = clean.clone();
            let rb = pack::row_bytes(cols);
            for i in 0..rows {
                for j in cols..rb * 8 {
                    dirty[i * rb + j / 8] |= 1 << (j % 8);
                }
            }
            let (mut a, mut b) = (vec![0.0; t * rows], vec![0.0; t * rows]);
            binary_gemm_i8_with(isa, &clean, rows, cols, &x, t, 0..rows, &mut a);
            binary_gemm_i8_with(isa, &dirty, rows, cols, &x, t, 0..rows, &mut b);
            assert_eq!(a, b, "{} ({rows},{cols},{t})", isa.name());
        }
    }
}

#[test]
fn parallel_entry_matches_scalar_and_stays_within_budget_of_f32() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("thread pool");
    let mut rng = Rng(4242);
    // Large enough for the parallel split (rows · cols · t ≥ 2^20).
    for (rows, cols, t) in [(1000, 1100, 1), (700, 520, 5), (333, 2561, 9)] {
        let w = rng.vec(rows * cols);
        let x = rng.vec(t * cols);
        let bits = pack::pack_signs(&w, rows, cols);
        let mut want = vec![0.0; t * rows];
        let a = act8::quantize(&x, cols, t);
        act8::binary_rows_scalar(&bits, cols, &a, 0..rows, &mut want);
        let mut got = vec![f32::NAN; t * rows];
        pool.install(|| binary_gemm_i8(&bits, rows, cols, &x, t, &mut got));
        assert_eq!(got, want, "({rows},{cols},{t})");
        let mut exact = vec![0.0; t * rows];
        binary_gemm_with(Isa::Scalar, &bits, rows, cols, &x, t, 0..rows, &mut exact);
        for k in 0..t {
            let budget = ACT8_STEP_BUDGET * a.scales[k] as f64 * cols as f64 + 1e-4;
            for i in 0..rows {
                let err = (got[k * rows + i] as f64 - exact[k * rows + i] as f64).abs();
                assert!(err <= budget, "({rows},{cols},{t}) [{k},{i}]: error {err} > {budget}");
            }
        }
    }
}

#[test]
fn degenerate_shapes() {
    for isa in ISAS.into_iter().filter(|i| i.is_supported()) {
        let mut y: Vec<f32> = vec![];
        binary_gemm_i8_with(isa, &[], 0, 5, &[0.0; 10], 2, 0..0, &mut y);
        let bits = pack::pack_signs(&[1.0; 3], 3, 1);
        binary_gemm_i8_with(isa, &bits, 3, 1, &[], 0, 0..3, &mut y);
        let mut y = vec![f32::NAN; 3];
        binary_gemm_i8_with(isa, &[], 3, 0, &[], 1, 0..3, &mut y);
        assert_eq!(y, vec![0.0; 3], "{}: no columns gives 0", isa.name());
        // An all-zero token gives 0 everywhere.
        let bits = pack::pack_signs(&[1.0, -1.0, 1.0, -1.0], 2, 2);
        let mut y = vec![f32::NAN; 2];
        binary_gemm_i8_with(isa, &bits, 2, 2, &[0.0, 0.0], 1, 0..2, &mut y);
        assert_eq!(y, vec![0.0; 2]);
    }
}
