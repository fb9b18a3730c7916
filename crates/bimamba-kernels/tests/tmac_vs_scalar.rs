//! The table-lookup int8-activation product (`bimamba_kernels::tmac`): the tables of the AVX-512
//! builder against the scalar builder byte for byte, and the kernel against its scalar twin, the
//! act8 scalar twin and the AVX512-VNNI kernel bit for bit (the sums are integers), over random
//! shapes with tails: cols not multiples of 4, 32 or 512 (the transpose's strip), rows not
//! multiples of the 16-row tile, row sub-ranges, t = 1..9 (token pairs and a single token),
//! padding bits set, and the parallel entry on 1, 2 and 3 threads (with the kernel forced by
//! `set_act8_decode`). Also the interleaved-layout variant (`tmac::interleave16`).

use bimamba_kernels::{
    act8, act8_kernel, act8_kernel_for, binary_gemm_i8, binary_gemm_i8_tmac_with, binary_gemm_i8_with, pack,
    set_act8_decode, tmac, Act8Decode, Isa,
};

mod common;
use common::Rng;

fn shapes(rng: &mut Rng) -> Vec<(usize, usize, usize)> {
    let mut v = Vec::new();
    for cols in [1, 3, 4, 5, 31, 32, 33, 63, 64, 65, 127, 128, 129, 511, 512, 513, 600, 1023, 1025] {
        v.push((1 + rng.below(40), cols, 1 + rng.below(9)));
    }
    for _ in 0..40 {
        v.push((1 + rng.below(150), 1 + rng.below(1500), 1 + rng.below(9)));
    }
    v.extend([(16, 512, 1), (17, 2560, 1), (33, 5120, 2), (15, 1536, 3), (48, 2048, 1)]);
    v
}

/// Activations of mixed magnitudes per token, some tokens saturating ±127 (the scale is per token).
fn activations(rng: &mut Rng, t: usize, cols: usize) -> Vec<f32> {
    let mut x = rng.vec(t * cols);
    for (k, xr) in x.chunks_exact_mut(cols.max(1)).enumerate() {
        xr.iter_mut().for_each(|v| *v *= (1 << (k % 5)) as f32);
        if k % 3 == 2 {
            // Half the columns at ±max: every table entry near ±508.
            xr.iter_mut().step_by(2).for_each(|v| *v = if *v < 0.0 { -16.0 } else { 16.0 });
        }
    }
    x
}

#[test]
fn simd_tables_equal_the_scalar_tables() {
    let mut rng = Rng(0x7ab1e5);
    for (_, cols, t) in shapes(&mut rng) {
        let a = act8::quantize(&activations(&mut rng, t, cols), cols, t);
        assert_eq!(tmac::build_tables(&a), tmac::build_tables_scalar(&a), "cols {cols} t {t}");
    }
}

#[test]
fn kernel_matches_both_twins_and_the_vnni_kernel_bit_for_bit() {
    let mut rng = Rng(0x05ee_d7ac);
    let vnni = Isa::Avx512.is_supported();
    eprintln!("AVX-512 on this CPU: {vnni}");
    for shape @ (rows, cols, t) in shapes(&mut rng) {
        let w = rng.vec(rows * cols);
        let x = activations(&mut rng, t, cols);
        let bits = pack::pack_signs(&w, rows, cols);
        let a = act8::quantize(&x, cols, t);
        let tab = tmac::build_tables_scalar(&a);
        let r0 = rng.below(rows);
        let r1 = r0 + 1 + rng.below(rows - r0);
        for (lo, hi) in [(0, rows), (r0, r1)] {
            let n = t * (hi - lo);
            let (mut want, mut twin, mut got) = (vec![0.0; n], vec![f32::NAN; n], vec![f32::NAN; n]);
            act8::binary_rows_scalar(&bits, cols, &a, lo..hi, &mut want);
            tmac::binary_rows_scalar(&bits, cols, &a, &tab, lo..hi, &mut twin);
            binary_gemm_i8_tmac_with(&bits, rows, cols, &x, t, lo..hi, &mut got);
            assert_eq!(twin, want, "tmac twin {shape:?} rows {lo}..{hi}");
            assert_eq!(got, want, "tmac kernel {shape:?} rows {lo}..{hi}");
            if vnni {
                let mut v = vec![f32::NAN; n];
                binary_gemm_i8_with(Isa::Avx512, &bits, rows, cols, &x, t, lo..hi, &mut v);
                assert_eq!(got, v, "against the AVX-512 int8 kernel {shape:?} rows {lo}..{hi}");
            }
        }
    }
}

#[test]
fn padding_bits_are_ignored() {
    let mut rng = Rng(99);
    for (rows, cols, t) in [(5, 1, 1), (19, 13, 3), (7, 70, 2), (33, 100, 1), (10, 530, 4)] {
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
        binary_gemm_i8_tmac_with(&clean, rows, cols, &x, t, 0..rows, &mut a);
        binary_gemm_i8_tmac_with(&dirty, rows, cols, &x, t, 0..rows, &mut b);
        assert_eq!(a, b, "({rows},{cols},{t})");
    }
}

#[test]
fn degenerate_shapes() {
    let mut y: Vec<f32> = vec![];
    binary_gemm_i8_tmac_with(&[], 0, 5, &[0.0; 10], 2, 0..0, &mut y);
    let bits = pack::pack_signs(&[1.0; 3], 3, 1);
    binary_gemm_i8_tmac_with(&bits, 3, 1, &[], 0, 0..3, &mut y);
    let mut y = vec![f32::NAN; 3];
    binary_gemm_i8_tmac_with(&[], 3, 0, &[], 1, 0..3, &mut y);
    assert_eq!(y, vec![0.0; 3], "no columns gives 0");
    let bits = pack::pack_signs(&[1.0, -1.0, 1.0, -1.0], 2, 2);
    let mut y = vec![f32::NAN; 2];
    binary_gemm_i8_tmac_with(&bits, 2, 2, &[0.0, 0.0], 1, 0..2, &mut y);
    assert_eq!(y, vec![0.0; 2], "an all-zero token gives 0");
    let mut y = vec![0.0; 2];
    binary_gemm_i8_tmac_with(&bits, 2, 2, &[1.0, f32::NAN], 1, 0..2, &mut y);
    assert!(y.iter().all(|v| v.is_nan()), "a non-finite token gives NaN");
}

#[test]
fn parallel_entry_with_the_table_kernel_forced_matches_the_twin() {
    let mut rng = Rng(2024);
    // Large enough for the parallel split (rows · cols · t ≥ 2^20); row counts no chunk divides.
    for (rows, cols, t) in [(1000, 1100, 1), (777, 2560, 2), (333, 5121, 3), (1100, 1536, 7)] {
        let w = rng.vec(rows * cols);
        let x = activations(&mut rng, t, cols);
        let bits = pack::pack_signs(&w, rows, cols);
        let mut want = vec![0.0; t * rows];
        act8::binary_rows_scalar(&bits, cols, &act8::quantize(&x, cols, t), 0..rows, &mut want);
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
            for choice in [Act8Decode::Tmac, Act8Decode::Vnni, Act8Decode::Auto] {
                set_act8_decode(choice);
                if act8_kernel(Isa::Avx512) == Some("avx512-vnni") {
                    let want = if choice == Act8Decode::Tmac { "avx512-tmac" } else { "avx512-vnni" };
                    assert_eq!(act8_kernel_for(Isa::Avx512, rows, cols, t), want);
                    assert_eq!(act8_kernel_for(Isa::Avx512, rows, cols, 8), "avx512-vnni-gemm");
                }
                let mut got = vec![f32::NAN; t * rows];
                pool.install(|| binary_gemm_i8(&bits, rows, cols, &x, t, &mut got));
                assert_eq!(got, want, "({rows},{cols},{t}) {threads} threads, {}", choice.name());
            }
            let ibits = tmac::interleave16(&bits, rows, cols);
            let mut got = vec![f32::NAN; t * rows];
            pool.install(|| tmac::binary_gemm_i8_interleaved(&ibits, rows, cols, &x, t, &mut got));
            assert_eq!(got, want, "interleaved ({rows},{cols},{t}) {threads} threads");
        }
    }
    set_act8_decode(Act8Decode::Auto);
}

#[test]
fn interleaved_layout_matches_the_twins() {
    let mut rng = Rng(0x11ea5e);
    for shape @ (rows, cols, t) in shapes(&mut rng) {
        let w = rng.vec(rows * cols);
        let x = activations(&mut rng, t, cols);
        let bits = pack::pack_signs(&w, rows, cols);
        let ibits = tmac::interleave16(&bits, rows, cols);
        let a = act8::quantize(&x, cols, t);
        let tab = tmac::build_tables_scalar(&a);
        let mut want = vec![0.0; t * rows];
        act8::binary_rows_scalar(&bits, cols, &a, 0..rows, &mut want);
        let mut twin = vec![f32::NAN; t * rows];
        tmac::binary_rows_interleaved_scalar(&ibits, cols, &a, &tab, 0..rows, &mut twin);
        assert_eq!(twin, want, "interleaved twin {shape:?}");
        let mut got = vec![f32::NAN; t * rows];
        tmac::binary_gemm_i8_interleaved(&ibits, rows, cols, &x, t, &mut got);
        assert_eq!(got, want, "interleaved kernel {shape:?}");
    }
}
