//! Every SIMD kernel (binary, dense f32/bf16/f16/i8, q8) against its scalar twin over random shapes, including tails: cols that are
//! not multiples of 8/16/32/64, odd row counts, row sub-ranges, and t = 1..9 tokens.
//! Kernels this CPU cannot run are reported and skipped.

use bimamba_kernels::{binary_gemm_with, dense_gemm_with, pack, q8, q8_gemm_with, scalar, Isa, SimdElem};
use half::{bf16, f16};

/// Float tolerance: |simd − scalar| ≤ REL_TOL · Σ_j |w_ij · x_kj| (for binary, |w| = 1).
/// f32 sums of a few thousand terms in two different orders differ by far less than this.
const REL_TOL: f64 = 1e-5;

const SIMD: [Isa; 3] = [Isa::Avx512, Isa::Avx2, Isa::Neon];

mod common;
use common::Rng;

/// Shapes: every awkward column count near the SIMD widths, then random ones.
fn shapes(rng: &mut Rng) -> Vec<(usize, usize, usize)> {
    let mut v = Vec::new();
    for cols in [1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 127, 129, 255, 257, 520] {
        v.push((1 + rng.below(21), cols, 1 + rng.below(9)));
    }
    for _ in 0..40 {
        v.push((1 + rng.below(150), 1 + rng.below(700), 1 + rng.below(9)));
    }
    v
}

fn check(isa: Isa, what: &str, shape: (usize, usize, usize), got: &[f32], want: &[f32], bound: &[f64]) {
    for (idx, ((g, w), b)) in got.iter().zip(want).zip(bound).enumerate() {
        let err = (*g as f64 - *w as f64).abs();
        assert!(
            err <= REL_TOL * b + 1e-30,
            "{} {what} {shape:?} at {idx}: simd {g} scalar {w} (bound {b})",
            isa.name()
        );
    }
}

/// Σ_j |w_ij x_kj| for every output of the row range, laid out like y: [t, nr].
fn abs_bound(w: &[f32], cols: usize, x: &[f32], t: usize, r0: usize, r1: usize) -> Vec<f64> {
    let nr = r1 - r0;
    let mut b = vec![0.0; t * nr];
    for k in 0..t {
        for i in r0..r1 {
            b[k * nr + i - r0] = (0..cols).map(|j| (w[i * cols + j] * x[k * cols + j]).abs() as f64).sum();
        }
    }
    b
}

#[test]
fn binary_simd_matches_scalar() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for isa in SIMD {
        if !isa.is_supported() {
            eprintln!("skipping {}: not supported on this CPU", isa.name());
            continue;
        }
        for shape @ (rows, cols, t) in shapes(&mut rng) {
            let w = rng.vec(rows * cols);
            let x = rng.vec(t * cols);
            let bits = pack::pack_signs(&w, rows, cols);
            let signs = pack::unpack_signs(&bits, rows, cols);
            // The whole matrix, then a random sub-range of rows.
            let r0 = rng.below(rows);
            let r1 = r0 + 1 + rng.below(rows - r0);
            for (a, b) in [(0, rows), (r0, r1)] {
                let mut want = vec![0.0; t * (b - a)];
                scalar::binary_rows(&bits, cols, &x, t, a..b, &mut want);
                let mut got = vec![f32::NAN; t * (b - a)];
                binary_gemm_with(isa, &bits, rows, cols, &x, t, a..b, &mut got);
                check(isa, "binary", shape, &got, &want, &abs_bound(&signs, cols, &x, t, a, b));
            }
        }
    }
}

#[test]
fn binary_simd_ignores_padding_bits() {
    let mut rng = Rng(99);
    for isa in SIMD.into_iter().filter(|i| i.is_supported()) {
        for (rows, cols, t) in [(5, 1, 1), (9, 13, 3), (7, 70, 5), (3, 100, 9)] {
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
            binary_gemm_with(isa, &clean, rows, cols, &x, t, 0..rows, &mut a);
            binary_gemm_with(isa, &dirty, rows, cols, &x, t, 0..rows, &mut b);
            assert_eq!(a, b, "{} ({rows},{cols},{t})", isa.name());
        }
    }
}

fn dense_case<E: SimdElem>(name: &str, conv: fn(f32) -> E) {
    let mut rng = Rng(0xfeed_beef ^ name.len() as u64);
    for isa in SIMD {
        if !isa.is_supported() {
            eprintln!("skipping {} {name}: not supported on this CPU", isa.name());
            continue;
        }
        for shape @ (rows, cols, t) in shapes(&mut rng) {
            let w: Vec<E> = rng.vec(rows * cols).into_iter().map(conv).collect();
            let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
            let x = rng.vec(t * cols);
            let r0 = rng.below(rows);
            let r1 = r0 + 1 + rng.below(rows - r0);
            for (a, b) in [(0, rows), (r0, r1)] {
                let mut want = vec![0.0; t * (b - a)];
                scalar::dense_rows(&w, cols, &x, t, a..b, &mut want);
                let mut got = vec![f32::NAN; t * (b - a)];
                dense_gemm_with(isa, &w, rows, cols, &x, t, a..b, &mut got);
                check(isa, name, shape, &got, &want, &abs_bound(&wf, cols, &x, t, a, b));
            }
        }
    }
}

#[test]
fn dense_f32_simd_matches_scalar() {
    dense_case::<f32>("f32", |v| v);
}

#[test]
fn dense_bf16_simd_matches_scalar() {
    dense_case::<bf16>("bf16", bf16::from_f32);
}

#[test]
fn dense_f16_simd_matches_scalar() {
    // Include f16 subnormals and large values so the widening is exercised across exponents.
    dense_case::<f16>("f16", |v| f16::from_f32(if v.abs() < 0.05 { v * 1e-4 } else { v * 1000.0 }));
}

#[test]
fn dense_i8_simd_matches_scalar() {
    // Every code, -128 included (the q8 rule never produces it; the kernel must still be exact).
    dense_case::<i8>("i8", |v| (v * 128.0).floor().clamp(-128.0, 127.0) as i8);
}

/// Random q8 matrices: codes in [-127, 127], row scales spanning several binades.
fn random_q8(rng: &mut Rng, rows: usize, cols: usize) -> (Vec<i8>, Vec<f32>) {
    let w: Vec<f32> = (0..rows * cols).map(|_| rng.f32()).collect();
    let (q, mut scales) = q8::quantize_rows(&w, rows, cols);
    for s in &mut scales {
        *s *= 2f32.powi(rng.below(17) as i32 - 8);
    }
    (q, scales)
}

/// The effective (dequantized) weights `scales[i] · q[i, j]`, to bound the error by Σ|w x|.
fn dequantize(q: &[i8], scales: &[f32], cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; q.len()];
    if cols > 0 {
        for ((qr, or), &s) in q.chunks_exact(cols).zip(out.chunks_exact_mut(cols)).zip(scales) {
            q8::dequantize_row(qr, s, or);
        }
    }
    out
}

#[test]
fn q8_simd_matches_scalar() {
    let mut rng = Rng(0x0808_0808_5eed);
    for isa in SIMD {
        if !isa.is_supported() {
            eprintln!("skipping {} q8: not supported on this CPU", isa.name());
            continue;
        }
        for shape @ (rows, cols, t) in shapes(&mut rng) {
            let (q, scales) = random_q8(&mut rng, rows, cols);
            let wf = dequantize(&q, &scales, cols);
            let x = rng.vec(t * cols);
            let r0 = rng.below(rows);
            let r1 = r0 + 1 + rng.below(rows - r0);
            for (a, b) in [(0, rows), (r0, r1)] {
                let mut want = vec![0.0; t * (b - a)];
                scalar::q8_rows(&q, &scales, cols, &x, t, a..b, &mut want);
                let mut got = vec![f32::NAN; t * (b - a)];
                q8_gemm_with(isa, &q, &scales, rows, cols, &x, t, a..b, &mut got);
                check(isa, "q8", shape, &got, &want, &abs_bound(&wf, cols, &x, t, a, b));
            }
        }
    }
}

/// The q8 product equals the dense f32 product with the dequantized matrix `scale_i · q_ij`
/// (the same real-number sum; only the rounding of `scale · q` and the order differ).
#[test]
fn q8_matches_dequantized_f32() {
    let mut rng = Rng(0x51_7e);
    for isa in [Isa::Scalar, Isa::Avx512, Isa::Avx2, Isa::Neon].into_iter().filter(|i| i.is_supported()) {
        for shape @ (rows, cols, t) in shapes(&mut rng).into_iter().take(30) {
            let (q, scales) = random_q8(&mut rng, rows, cols);
            let wf = dequantize(&q, &scales, cols);
            let x = rng.vec(t * cols);
            let mut want = vec![0.0; t * rows];
            scalar::dense_gemm_f32(&wf, rows, cols, &x, t, &mut want);
            let mut got = vec![f32::NAN; t * rows];
            q8_gemm_with(isa, &q, &scales, rows, cols, &x, t, 0..rows, &mut got);
            check(isa, "q8 vs dequantized f32", shape, &got, &want, &abs_bound(&wf, cols, &x, t, 0, rows));
        }
    }
}

/// The parallel entry points (selected ISA, rayon chunks, scattered t > 1 output) against the
/// scalar twins, at sizes large enough to take the parallel path.
#[test]
fn parallel_entry_points_match_scalar() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("thread pool");
    let mut rng = Rng(4242);
    for (rows, cols, t) in [(1000, 1100, 1), (333, 1100, 5), (130, 2049, 9)] {
        let w = rng.vec(rows * cols);
        let x = rng.vec(t * cols);
        let bits = pack::pack_signs(&w, rows, cols);
        let signs = pack::unpack_signs(&bits, rows, cols);
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let isa = bimamba_kernels::selected_isa();
        let shape = (rows, cols, t);
        let run = |f: &(dyn Fn(&mut [f32]) + Sync)| {
            let mut y = vec![f32::NAN; t * rows];
            pool.install(|| f(&mut y));
            y
        };

        let mut want = vec![0.0; t * rows];
        scalar::binary_gemm(&bits, rows, cols, &x, t, &mut want);
        let got = run(&|y| bimamba_kernels::binary_gemm(&bits, rows, cols, &x, t, y));
        check(isa, "binary_gemm", shape, &got, &want, &abs_bound(&signs, cols, &x, t, 0, rows));
        if t == 1 {
            let got = run(&|y| bimamba_kernels::binary_gemv(&bits, rows, cols, &x, y));
            check(isa, "binary_gemv", shape, &got, &want, &abs_bound(&signs, cols, &x, t, 0, rows));
        }

        scalar::dense_gemm_f32(&w, rows, cols, &x, t, &mut want);
        let got = run(&|y| bimamba_kernels::dense_gemm_f32(&w, rows, cols, &x, t, y));
        check(isa, "dense_gemm_f32", shape, &got, &want, &abs_bound(&w, cols, &x, t, 0, rows));

        let wbf: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
        scalar::dense_gemm_bf16(&wb, rows, cols, &x, t, &mut want);
        let got = run(&|y| bimamba_kernels::dense_gemm_bf16(&wb, rows, cols, &x, t, y));
        check(isa, "dense_gemm_bf16", shape, &got, &want, &abs_bound(&wbf, cols, &x, t, 0, rows));

        let whf: Vec<f32> = wh.iter().map(|v| v.to_f32()).collect();
        scalar::dense_gemm_f16(&wh, rows, cols, &x, t, &mut want);
        let got = run(&|y| bimamba_kernels::dense_gemm_f16(&wh, rows, cols, &x, t, y));
        check(isa, "dense_gemm_f16", shape, &got, &want, &abs_bound(&whf, cols, &x, t, 0, rows));

        let (q, scales) = random_q8(&mut rng, rows, cols);
        scalar::q8_gemm(&q, &scales, rows, cols, &x, t, &mut want);
        let got = run(&|y| bimamba_kernels::q8_gemm(&q, &scales, rows, cols, &x, t, y));
        check(isa, "q8_gemm", shape, &got, &want, &abs_bound(&dequantize(&q, &scales, cols), cols, &x, t, 0, rows));
    }
}

/// Empty shapes: zero columns give zeros, zero rows or tokens write nothing, on every ISA.
#[test]
fn degenerate_shapes() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("thread pool");
    for isa in [Isa::Scalar, Isa::Avx512, Isa::Avx2, Isa::Neon] {
        for (rows, cols, t) in [(3, 0, 2), (0, 5, 2), (4, 7, 0), (0, 0, 0)] {
            let bits = pack::pack_signs(&vec![1.0; rows * cols], rows, cols);
            let w = vec![0.5f32; rows * cols];
            let x = vec![1.0f32; t * cols];
            let mut y = vec![f32::NAN; t * rows];
            binary_gemm_with(isa, &bits, rows, cols, &x, t, 0..rows, &mut y);
            assert!(y.iter().all(|&v| v == 0.0), "{} binary ({rows},{cols},{t})", isa.name());
            let mut y = vec![f32::NAN; t * rows];
            dense_gemm_with(isa, &w, rows, cols, &x, t, 0..rows, &mut y);
            assert!(y.iter().all(|&v| v == 0.0), "{} dense ({rows},{cols},{t})", isa.name());
            let (q, scales) = (vec![3i8; rows * cols], vec![0.5f32; rows]);
            let mut y = vec![f32::NAN; t * rows];
            q8_gemm_with(isa, &q, &scales, rows, cols, &x, t, 0..rows, &mut y);
            assert!(y.iter().all(|&v| v == 0.0), "{} q8 ({rows},{cols},{t})", isa.name());
        }
    }
    let mut y = vec![f32::NAN; 6];
    pool.install(|| bimamba_kernels::binary_gemm(&[], 3, 0, &[], 2, &mut y));
    assert_eq!(y, vec![0.0; 6]);
}
