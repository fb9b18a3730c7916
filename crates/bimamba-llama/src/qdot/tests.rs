//! The 8-bit-activation product against its definition, the SIMD kernel against the scalar one,
//! and the layout against the loader's dequantization.

use super::*;
use crate::testing::{q4_0, q4_1, q8_0, Lcg};
use crate::weights::dequantize;

/// GGUF bytes and decoded values of a random `rows × cols` matrix of `dtype`.
fn matrix(dtype: DType, rows: usize, cols: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
    let v = Lcg(seed).vec(rows * cols, 1.0);
    match dtype {
        DType::Q8_0 => q8_0(&v),
        DType::Q4_0 => q4_0(&v),
        _ => q4_1(&v),
    }
}

const TYPES: [DType; 3] = [DType::Q8_0, DType::Q4_0, DType::Q4_1];

/// Σ_j w_j · (dx_b q_j) in f64 from the decoded weights, and Σ |w_j · dx_b q_j| (the tolerance scale).
fn reference(w: &[f32], rows: usize, cols: usize, a: &QActs) -> (Vec<f64>, Vec<f64>) {
    let (mut y, mut mag) = (vec![0.0; a.t * rows], vec![0.0; a.t * rows]);
    for k in 0..a.t {
        for r in 0..rows {
            for j in 0..cols {
                let x = a.dx[k * (cols / QK) + j / QK] as f64 * a.q[k * cols + j] as f64;
                let p = w[r * cols + j] as f64 * x;
                y[k * rows + r] += p;
                mag[k * rows + r] += p.abs();
            }
        }
    }
    (y, mag)
}

fn check(got: &[f32], want: &[f64], mag: &[f64], what: &str) {
    for (i, ((&g, &w), &s)) in got.iter().zip(want).zip(mag).enumerate() {
        assert!((g as f64 - w).abs() <= 1e-5 * s + 1e-30, "{what}: output {i}: {g} vs {w} (scale {s})");
    }
}

#[test]
fn layout_decodes_to_the_gguf_values() {
    for dtype in TYPES {
        for &(rows, cols) in &[(1, 32), (17, 64), (40, 96)] {
            let (bytes, _) = matrix(dtype, rows, cols, 7);
            let m = QdotMatrix::from_gguf(dtype, &bytes, rows, cols).expect("valid sizes");
            let mut want = vec![0.0f32; rows * cols];
            dequantize(dtype, &bytes, &mut want);
            let mut row = vec![0.0f32; cols];
            for r in 0..rows {
                m.row_into(r, &mut row);
                assert_eq!(row, want[r * cols..(r + 1) * cols], "{dtype} [{rows} x {cols}] row {r}");
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn avx512_quantization_equals_scalar_bit_for_bit() {
    if !avx512::usable() {
        eprintln!("qdot: AVX-512 VNNI not available on this CPU; the SIMD quantizer is not tested here");
        return;
    }
    let mut x = Lcg(8).vec(40 * QK, 3.0);
    x[..QK].fill(0.0); // an all-zero block
    x[QK..2 * QK].iter_mut().enumerate().for_each(|(j, v)| *v = j as f32 - 15.5); // halves
    let n = x.len();
    let mut s = QActs::quantize(&x, n / 64, 64);
    let v = s.clone();
    quantize_scalar(&x, &mut s);
    assert_eq!((s.q, s.sum_q), (v.q, v.sum_q));
    assert_eq!(
        s.dx.iter().map(|f| f.to_bits()).collect::<Vec<_>>(),
        v.dx.iter().map(|f| f.to_bits()).collect::<Vec<_>>()
    );
    assert_eq!(
        s.sx.iter().map(|f| f.to_bits()).collect::<Vec<_>>(),
        v.sx.iter().map(|f| f.to_bits()).collect::<Vec<_>>()
    );
}

#[test]
fn rejects_other_types_and_sizes() {
    let (bytes, _) = matrix(DType::Q8_0, 4, 64, 1);
    assert!(QdotMatrix::from_gguf(DType::Q8_0, &bytes, 4, 64).is_some());
    assert!(QdotMatrix::from_gguf(DType::Q8_0, &bytes, 4, 32).is_none());
    assert!(QdotMatrix::from_gguf(DType::Q8_0, &bytes[1..], 4, 64).is_none());
    assert!(QdotMatrix::from_gguf(DType::F32, &bytes, 4, 64).is_none());
}

#[test]
fn activation_quantization_hand_checked() {
    // amax 1.27 → dx 0.01; −0.635 / 0.01 = −63.5 rounds half to even, to −64.
    let mut x = vec![0.0f32; 64];
    x[0] = 1.27;
    x[1] = -0.635;
    x[2] = 0.004; // 0.4 → 0
    x[3] = 0.006; // 0.6 → 1
    x[4] = -0.031; // −3.1 → −3
    let a = QActs::quantize(&x, 2, 32);
    assert_eq!(&a.q[..5], &[127, -64, 0, 1, -3]);
    assert!((a.dx[0] - 0.01).abs() < 1e-9);
    assert_eq!(a.sum_q[0], 127 - 64 + 1 - 3);
    assert!((a.sx[0] - 0.61).abs() < 1e-6);
    // Exact halves (dx = 1 when the block's largest magnitude is 127): half to even.
    let mut h = vec![0.0f32; 32];
    h[..5].copy_from_slice(&[127.0, 2.5, -2.5, 3.5, 0.5]);
    assert_eq!(&QActs::quantize(&h, 1, 32).q[..5], &[127, 2, -2, 4, 0]);
    // An all-zero block: scale 0, codes 0.
    assert_eq!((a.dx[1], a.sum_q[1], a.sx[1]), (0.0, 0, 0.0));
    assert!(a.q[32..].iter().all(|&q| q == 0));
}

#[test]
fn scalar_kernel_matches_the_definition() {
    for dtype in TYPES {
        for &(rows, cols, t) in &[(1, 32, 1), (16, 64, 3), (19, 96, 5), (33, 160, 2)] {
            let (bytes, w) = matrix(dtype, rows, cols, 11 + rows as u64);
            let m = QdotMatrix::from_gguf(dtype, &bytes, rows, cols).expect("valid sizes");
            let a = QActs::quantize(&Lcg(3).vec(t * cols, 2.0), t, cols);
            let mut y = vec![0.0f32; t * rows];
            groups_scalar(&m, &a, &m.zero_terms(&a), 0..m.groups, &mut y);
            let (want, mag) = reference(&w, rows, cols, &a);
            check(&y, &want, &mag, &format!("scalar {dtype} [{rows} x {cols}] t={t}"));
        }
    }
}

#[test]
fn quantization_error_is_within_half_a_step() {
    // |x·w − x̂·w| ≤ Σ_j |w_j| · dx_b / 2 per output, plus f32 rounding.
    let (rows, cols, t) = (24, 128, 3);
    for dtype in TYPES {
        let (bytes, w) = matrix(dtype, rows, cols, 5);
        let m = QdotMatrix::from_gguf(dtype, &bytes, rows, cols).expect("valid sizes");
        let x = Lcg(9).vec(t * cols, 1.5);
        let a = QActs::quantize(&x, t, cols);
        let y = m.forward(&x, t);
        for k in 0..t {
            for r in 0..rows {
                let (mut exact, mut bound, mut mag) = (0.0f64, 0.0f64, 0.0f64);
                for j in 0..cols {
                    let wj = w[r * cols + j] as f64;
                    exact += wj * x[k * cols + j] as f64;
                    bound += wj.abs() * a.dx[k * (cols / QK) + j / QK] as f64 / 2.0;
                    mag += (wj * x[k * cols + j] as f64).abs();
                }
                let got = y[k * rows + r] as f64;
                assert!(
                    (got - exact).abs() <= bound + 1e-5 * mag,
                    "{dtype} ({k}, {r}): {got} vs {exact}, bound {bound}"
                );
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn avx512_matches_scalar_on_random_shapes() {
    if !avx512::usable() {
        // Not a silent skip: the line is printed, and CI's machine has VNNI (see KERNELS.md).
        eprintln!("qdot: AVX-512 VNNI not available on this CPU; the SIMD kernel is not tested here");
        return;
    }
    let mut rng = Lcg(2024);
    let mut pick = |n: usize| ((rng.next_f32() + 1.0) * 0.5 * n as f32) as usize % n;
    for case in 0..60 {
        let dtype = TYPES[case % 3];
        let rows = 1 + pick(70);
        let cols = QK * (1 + pick(12));
        let t = 1 + pick(9);
        let (bytes, w) = matrix(dtype, rows, cols, case as u64);
        let m = QdotMatrix::from_gguf(dtype, &bytes, rows, cols).expect("valid sizes");
        let a = QActs::quantize(&Lcg(case as u64 + 100).vec(t * cols, 3.0), t, cols);
        let zx = m.zero_terms(&a);
        let (want, mag) = reference(&w, rows, cols, &a);
        // Whole matrix, then a sub-range of groups.
        for gr in [0..m.groups, (m.groups / 2)..m.groups] {
            let r0 = gr.start * GROUP;
            let nr = (gr.end * GROUP).min(rows) - r0;
            let (mut ys, mut yv) = (vec![0.0f32; t * nr], vec![f32::NAN; t * nr]);
            groups_scalar(&m, &a, &zx, gr.clone(), &mut ys);
            avx512::groups_safe(&m, &a, &zx, gr.clone(), &mut yv);
            let cut = |v: &[f64]| -> Vec<f64> {
                (0..t).flat_map(|k| v[k * rows + r0..k * rows + r0 + nr].to_vec()).collect()
            };
            let what = format!("case {case}: {dtype} [{rows} x {cols}] t={t} groups {gr:?}");
            check(&ys, &cut(&want), &cut(&mag), &format!("scalar, {what}"));
            check(&yv, &cut(&want), &cut(&mag), &format!("avx512, {what}"));
        }
    }
}

#[test]
fn parallel_product_equals_one_thread() {
    let (rows, cols, t) = (200, 512, 12); // above PAR_MIN_WORK
    let (bytes, _) = matrix(DType::Q4_1, rows, cols, 77);
    let m = QdotMatrix::from_gguf(DType::Q4_1, &bytes, rows, cols).expect("valid sizes");
    let x = Lcg(4).vec(t * cols, 1.0);
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool").install(|| m.forward(&x, t));
    let three = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("pool").install(|| m.forward(&x, t));
    assert_eq!(one, three);
}
