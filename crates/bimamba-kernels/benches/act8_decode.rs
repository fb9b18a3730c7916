//! A/B of the AVX-512 int8-activation decode kernels, in one process: the VNNI multiply-add
//! kernel (`x86/avx512_vnni.rs`) against the table-lookup kernel (`x86/avx512_tmac.rs`), both
//! through the public `binary_gemm_i8` (quantization, tables and the rayon row split included)
//! with `set_act8_decode` switching between them; and, as a third column, the table kernel on the
//! interleaved layout (`tmac::interleave16`, no transpose), which the engine does not use.
//!
//! Shapes: in_proj `[2·d_inner + 2·d_state + n_heads, d_model]` and out_proj `[d_model, d_inner]`
//! of the 780M, 1.3B and 2.7B Bi-Mamba (d_model 1536 / 2048 / 2560, expand 2, d_state 128,
//! head dim 64). For each shape and thread count (1, 2), `BIMAMBA_AB_ROUNDS` rounds (9); each
//! round runs the three for `BIMAMBA_AB_MS` milliseconds (100) of calls each, the order rotating
//! from round to round, and records the mean time per call of each. Printed: the median over
//! rounds of each mean and the median of the per-round ratios (on a shared machine the paired
//! ratio is the steadier figure), and the table build alone. Each call uses the next of several
//! weight copies (`BIMAMBA_BENCH_ROTATION_MB`, 256 by default; 0 = one copy, cache-hot).
//!
//! ```text
//! cargo bench -p bimamba-kernels --bench act8_decode
//! BIMAMBA_BENCH_ROTATION_MB=0 cargo bench -p bimamba-kernels --bench act8_decode     # cache-hot
//! BIMAMBA_AB_ONLY=2.7b BIMAMBA_AB_ROUNDS=15 cargo bench -p bimamba-kernels --bench act8_decode
//! BIMAMBA_AB_SHAPE=2560x5120 BIMAMBA_BENCH_TOKENS=2 cargo bench -p bimamba-kernels --bench act8_decode
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use bimamba_kernels::{
    act8, act8_kernel, act8_kernel_for, binary_gemm_i8, pack, selected_isa, set_act8_decode, tmac, Act8Decode,
};

const SHAPES: [(&str, usize, usize); 6] = [
    ("780m/in_proj", 2 * 3072 + 2 * 128 + 48, 1536),
    ("780m/out_proj", 1536, 3072),
    ("1.3b/in_proj", 2 * 4096 + 2 * 128 + 64, 2048),
    ("1.3b/out_proj", 2048, 4096),
    ("2.7b/in_proj", 2 * 5120 + 2 * 128 + 80, 2560),
    ("2.7b/out_proj", 2560, 5120),
];
const THREADS: [usize; 2] = [1, 2];
const KERNELS: [Act8Decode; 2] = [Act8Decode::Vnni, Act8Decode::Tmac];

mod ab;
#[path = "../tests/common/mod.rs"]
mod common;

use ab::{env_usize, median};

fn random_f32(n: usize, seed: u64) -> Vec<f32> {
    common::Rng(seed | 1).vec(n)
}

/// Calls for about `budget` (at least 3): (mean seconds per call, best call).
fn run_for(budget: Duration, mut call: impl FnMut(usize)) -> (f64, f64) {
    let start = Instant::now();
    let mut best = f64::INFINITY;
    let mut n = 0usize;
    while n < 3 || start.elapsed() < budget {
        let t0 = Instant::now();
        call(n);
        best = best.min(t0.elapsed().as_secs_f64());
        n += 1;
    }
    (start.elapsed().as_secs_f64() / n as f64, best)
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let isa = selected_isa();
    if act8_kernel(isa) != Some("avx512-vnni") {
        println!("no AVX512-VNNI + VBMI int8 kernel on this CPU/ISA ({}): nothing to compare", isa.name());
        return;
    }
    let rounds = if bench_mode { env_usize("BIMAMBA_AB_ROUNDS", 9) } else { 1 };
    let budget = Duration::from_millis(if bench_mode { env_usize("BIMAMBA_AB_MS", 150) as u64 } else { 1 });
    let rotation = env_usize("BIMAMBA_BENCH_ROTATION_MB", 256) << 20;
    let t = env_usize("BIMAMBA_BENCH_TOKENS", 1);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("cpu: {cpu} | load average at start: {} | t = {t} | {rounds} rounds x {budget:?} per kernel", load.trim());
    println!(
        "\n| shape | rows x cols | threads | vnni ms | tmac ms | tmac, interleaved layout ms | vnni/tmac | vnni/interleaved | tables µs |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let pools = ab::pools(&THREADS);
    let shapes = ab::shapes(&SHAPES);
    for &(name, rows, cols) in &shapes {
        let bytes = pack::packed_len(rows, cols);
        let copies = if bench_mode { rotation.div_ceil(bytes).max(1) } else { 1 };
        let w = random_f32(rows * cols, 17);
        let packed = pack::pack_signs(&w, rows, cols);
        let interleaved = vec![tmac::interleave16(&packed, rows, cols); copies];
        let weights = vec![packed; copies];
        let x = random_f32(t * cols, 5);
        let mut y = vec![0.0f32; t * rows];
        // The table build alone (part of every tmac call), single-threaded.
        let a = act8::quantize(&x, cols, t);
        let (tab_s, _) = run_for(budget / 4, |_| {
            black_box(tmac::build_tables(black_box(&a)));
        });
        for (ti, &threads) in THREADS.iter().enumerate() {
            let mut means = [Vec::new(), Vec::new(), Vec::new()];
            let mut ratios = [Vec::new(), Vec::new()];
            let mut i = 0usize;
            for round in 0..rounds {
                let mut m = [0.0; 3];
                for o in 0..3 {
                    // Rotate which kernel goes first.
                    let kix = (o + round) % 3;
                    let (mean, _) = pools[ti].install(|| {
                        run_for(budget, |_| {
                            i += 1;
                            if kix == 2 {
                                tmac::binary_gemm_i8_interleaved(
                                    &interleaved[i % copies],
                                    rows,
                                    cols,
                                    black_box(&x),
                                    t,
                                    &mut y,
                                );
                            } else {
                                set_act8_decode(KERNELS[kix]);
                                binary_gemm_i8(&weights[i % copies], rows, cols, black_box(&x), t, &mut y);
                            }
                            black_box(&y);
                        })
                    });
                    m[kix] = mean;
                }
                for (v, mk) in means.iter_mut().zip(m) {
                    v.push(mk);
                }
                ratios[0].push(m[0] / m[1]);
                ratios[1].push(m[0] / m[2]);
            }
            let [mv, mt, mi] = means.map(|mut v| median(&mut v));
            println!(
                "| {name} | {rows} x {cols} | {threads} | {:.4} | {:.4} | {:.4} | {:.3} | {:.3} | {:.1} |",
                mv * 1e3,
                mt * 1e3,
                mi * 1e3,
                median(&mut ratios[0]),
                median(&mut ratios[1]),
                tab_s * 1e6
            );
        }
    }
    set_act8_decode(Act8Decode::Auto);
    let auto: Vec<String> =
        shapes.iter().map(|&(name, r, c)| format!("{name} {}", act8_kernel_for(isa, r, c, t))).collect();
    println!("\nBIMAMBA_ACT8_DECODE=auto runs: {}", auto.join(", "));
}
