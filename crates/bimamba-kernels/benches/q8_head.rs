//! A/B/C of the q8 LM head in one process: `q8_gemm` (f32 activations, the dense i8 tiles; what
//! `--exact` runs), `q8_gemm_i8` (int8 activations over row-major codes,
//! `x86/avx512_vnni_q8.rs`) and `q8_gemm_i8_panels` (int8 activations over the codes in panels,
//! `x86/avx512_vnni_q8_panels.rs`; the default), all through the public entry points
//! (quantization, operand layout and the rayon row split included).
//!
//! Shapes: the shipped model's tied head `[49152 x 256]` and the 2.7B head `[50288 x 2560]`
//! (`BIMAMBA_AB_ONLY=substring` picks; `BIMAMBA_AB_SHAPE=ROWSxCOLS` measures another). For each token count (`BIMAMBA_BENCH_TOKENS`, default
//! 1,8,16,64) and thread count (1, 2), `BIMAMBA_AB_ROUNDS` rounds (7); each round runs each for
//! `BIMAMBA_AB_MS` milliseconds (100) of calls, the order rotating, and records the mean time
//! per call. Printed: the median over rounds of each mean, the medians of the per-round ratios
//! f32 / int8 rows and int8 rows / int8 panels (> 1: the latter faster; on a shared machine the
//! paired ratio is the steadier figure), and the panel kernel's multiply-adds per second. One copy of the weights (the shipped head,
//! 12.6 MB, stays in L3 between calls, as it does between decode steps).
//!
//! ```text
//! cargo bench -p bimamba-kernels --bench q8_head
//! BIMAMBA_AB_ONLY=shipped BIMAMBA_BENCH_TOKENS=8 cargo bench -p bimamba-kernels --bench q8_head
//! ```

use std::hint::black_box;
use std::time::Duration;

use bimamba_kernels::{q8, q8_act8, q8_act8_kernel, q8_gemm, q8_gemm_i8, q8_gemm_i8_panels, q8_panels, selected_isa};

const SHAPES: [(&str, usize, usize); 2] = [("shipped", 49152, 256), ("2.7b", 50288, 2560)];
const THREADS: [usize; 2] = [1, 2];

mod ab;
#[path = "../tests/common/mod.rs"]
mod common;

use ab::{env_usize, median, run_for};

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let isa = selected_isa();
    let kernel = q8_act8_kernel(isa).unwrap_or("scalar twin");
    let rounds = if bench_mode { env_usize("BIMAMBA_AB_ROUNDS", 7) } else { 1 };
    let budget = Duration::from_millis(if bench_mode { env_usize("BIMAMBA_AB_MS", 100) as u64 } else { 1 });
    let tokens: Vec<usize> = std::env::var("BIMAMBA_BENCH_TOKENS")
        .unwrap_or_else(|_| "1,8,16,64".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "isa {} | int8 kernel {kernel} | load average at start: {} | {rounds} rounds x {budget:?}",
        isa.name(),
        load.trim()
    );
    println!(
        "\n| shape | rows x cols | t | threads | f32-act ms | int8 rows ms | int8 panels ms | f32/rows | rows/panels | panels GMAC/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let pools = ab::pools(&THREADS);
    let shapes = ab::shapes(&SHAPES);
    for &(name, rows, cols) in &shapes {
        let w: Vec<f32> = common::Rng(17).vec(rows * cols).iter().map(|v| 0.05 * v).collect();
        let (q, scales) = q8::quantize_rows(&w, rows, cols);
        drop(w);
        let sums = q8_act8::row_sums(&q, rows, cols);
        let mut panels = q.clone();
        q8_panels::to_panels(&mut panels, rows, cols);
        for &t in &tokens {
            let x = common::Rng(5).vec(t * cols);
            let mut y = vec![0.0f32; t * rows];
            for (ti, &threads) in THREADS.iter().enumerate() {
                let (mut f, mut i, mut p) = (Vec::new(), Vec::new(), Vec::new());
                let (mut f_i, mut i_p) = (Vec::new(), Vec::new());
                for round in 0..rounds {
                    let mut m = [0.0; 3];
                    for o in 0..3 {
                        let which = (o + round) % 3;
                        m[which] = pools[ti].install(|| {
                            run_for(budget, || {
                                match which {
                                    0 => q8_gemm(&q, &scales, rows, cols, black_box(&x), t, &mut y),
                                    1 => q8_gemm_i8(&q, &scales, &sums, rows, cols, black_box(&x), t, &mut y),
                                    _ => {
                                        q8_gemm_i8_panels(&panels, &scales, &sums, rows, cols, black_box(&x), t, &mut y)
                                    }
                                }
                                black_box(&y);
                            })
                        });
                    }
                    f.push(m[0] * 1e3);
                    i.push(m[1] * 1e3);
                    p.push(m[2] * 1e3);
                    f_i.push(m[0] / m[1]);
                    i_p.push(m[1] / m[2]);
                }
                let (fm, im, pm) = (median(&mut f), median(&mut i), median(&mut p));
                let gmac = (rows * cols * t) as f64 / (pm * 1e-3) / 1e9;
                println!(
                    "| {name} | {rows} x {cols} | {t} | {threads} | {fm:.3} | {im:.3} | {pm:.3} | {:.2} | {:.2} | {gmac:.0} |",
                    median(&mut f_i),
                    median(&mut i_p)
                );
            }
        }
    }
}
