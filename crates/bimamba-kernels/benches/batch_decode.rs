//! The kernels of a batched decode step on the shipped model's shapes (d_model 256, d_inner
//! 512, 8 heads of 64 × 64 state), for 1 and 8 sequences: what `bimamba serve --max-batch 8`
//! runs per layer besides the LM head (`benches/q8_head.rs`).
//!
//! - `act8::quantize` of 1 and 8 tokens at 256 and 512 columns, the selected ISA against the
//!   scalar twin (`act8::quantize_with(Isa::Scalar, ..)`);
//! - `binary_gemm_i8` for in_proj `[1160, 256]` and out_proj `[256, 512]` at 1 and 8 tokens, on 1
//!   and 2 threads (quantization and the row split included);
//! - the bf16-state head step (`ssm::head_step_bf16_with`) on every supported ISA, over 1,024
//!   heads in turn (8 MB of state: 16 layers × 8 sequences × 8 heads, as a batched step of 8 walks
//!   it) and over one head (cache-hot).
//!
//! Each figure is the minimum over `BIMAMBA_AB_ROUNDS` (10) rounds of the mean time per call over
//! `BIMAMBA_AB_MS` (50) milliseconds: on a shared machine the minimum is the steadiest figure.
//!
//! ```text
//! cargo bench -p bimamba-kernels --bench batch_decode
//! ```

use std::hint::black_box;
use std::time::Duration;

use bimamba_kernels::{act8, binary_gemm_i8, pack, selected_isa, ssm, Isa};

mod ab;
#[path = "../tests/common/mod.rs"]
mod common;

use ab::{env_usize, pools, run_for};

fn best(rounds: usize, budget: Duration, mut call: impl FnMut()) -> f64 {
    (0..rounds).map(|_| run_for(budget, &mut call)).fold(f64::INFINITY, f64::min)
}

fn main() {
    let rounds = env_usize("BIMAMBA_AB_ROUNDS", 10);
    let budget = Duration::from_millis(env_usize("BIMAMBA_AB_MS", 50) as u64);
    let isa = selected_isa();
    let mut rng = common::Rng(0x5eed_0b47);
    println!("selected ISA {}; microseconds per call, minimum of {rounds} rounds", isa.name());

    for cols in [256usize, 512] {
        for t in [1usize, 8] {
            let x = rng.vec(t * cols);
            let scalar = best(rounds, budget, || {
                black_box(act8::quantize_with(Isa::Scalar, black_box(&x), cols, t));
            });
            let fast = best(rounds, budget, || {
                black_box(act8::quantize_with(isa, black_box(&x), cols, t));
            });
            println!("act8::quantize cols {cols} t {t}: scalar {:.2}, {} {:.2}", scalar * 1e6, isa.name(), fast * 1e6);
        }
    }

    let pools = pools(&[1, 2]);
    for (name, rows, cols) in [("in_proj", 1160usize, 256usize), ("out_proj", 256, 512)] {
        let bits = pack::pack_signs(&rng.vec(rows * cols), rows, cols);
        for t in [1usize, 8] {
            let x = rng.vec(t * cols);
            let mut y = vec![0.0f32; t * rows];
            let per_pool: Vec<String> = pools
                .iter()
                .map(|pool| {
                    let s = pool.install(|| {
                        best(rounds, budget, || binary_gemm_i8(&bits, rows, cols, black_box(&x), t, &mut y))
                    });
                    format!("{} threads {:.2}", pool.current_num_threads(), s * 1e6)
                })
                .collect();
            println!("binary_gemm_i8 {name} [{rows} x {cols}] t {t}: {}", per_pool.join(", "));
        }
    }

    let (p, n) = (64usize, 64usize);
    let x = rng.vec(p);
    let b = rng.vec(n);
    let c = rng.vec(n);
    for heads in [1024usize, 1] {
        let mut s: Vec<u16> = rng.vec(heads * p * n).iter().map(|&v| ssm::bf16_round(v)).collect();
        let mut y = vec![0.0f32; p];
        let per_isa: Vec<String> = [Isa::Scalar, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|i| i.is_supported())
            .map(|i| {
                let t = best(rounds, budget, || {
                    for h in s.chunks_exact_mut(p * n) {
                        ssm::head_step_bf16_with(i, h, black_box(&x), &b, &c, 0.1, 0.97, &mut y);
                    }
                });
                format!("{} {:.3}", i.name(), t * 1e6 / heads as f64)
            })
            .collect();
        println!("ssm::head_step_bf16 64 x 64, {heads} heads in turn, per head: {}", per_isa.join(", "));
    }
}
