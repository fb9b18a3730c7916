//! The prefill scan of the 2.7B shape (80 heads, P = 64, N = 128, one group) over one block of
//! 64 tokens (`BIMAMBA_BENCH_TOKENS` changes it): the token-by-token register kernel (`ssm::head_steps_prefill`) against the chunked
//! SSD (`ssd::head_chunks`, chunk lengths 16 / 32 / 64, the group's `GroupChunks` built once per
//! block and counted), and what the engine adds around either (decays `exp(dt·A)`, widening the
//! bf16 state to f32 and rounding it back). Figures are milliseconds per token for all 64 layers
//! (time per block / 64 tokens × 64 layers), on 1 thread and on 2 (heads split by rayon, as the
//! mixer does). `BIMAMBA_AB_ROUNDS` rounds (9), each running every variant for `BIMAMBA_AB_MS`
//! (100) ms in rotating order; printed: the median over rounds and the median paired ratio
//! against the register kernel.
//!
//! ```text
//! cargo bench -p bimamba-kernels --bench ssd_prefill
//! ```

use std::hint::black_box;
use std::time::Duration;

use bimamba_kernels::ssd::{self, GroupChunks};
use bimamba_kernels::ssm::{self, HeadBlock};
use rayon::prelude::*;

mod ab;
#[path = "../tests/common/mod.rs"]
mod common;

use ab::{env_usize, median, run_for};

const HEADS: usize = 80;
const P: usize = 64;
const N: usize = 128;
const LAYERS: f64 = 64.0;

/// Tokens per block: `BIMAMBA_BENCH_TOKENS` (64, the engine's prefill block).
fn tokens() -> usize {
    env_usize("BIMAMBA_BENCH_TOKENS", 64).max(1)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    /// `ssm::head_steps_prefill` on an f32 state.
    Steps,
    /// `ssd::head_chunks` with this chunk length, `GroupChunks` included.
    Chunks(usize),
    /// The engine's work around the kernel per head: decays, widen bf16 → f32, round back.
    Around,
    /// Just the decays `exp(dt·A)` of every head and token.
    Decays,
}

/// The block's inputs, shared by every head.
struct Inputs {
    xbc: Vec<f32>,
    stride: usize,
    dt: Vec<Vec<f32>>,
    decay: Vec<Vec<f32>>,
    a: Vec<f32>,
}

/// Per head: the f32 state, the bf16 state, the readout `[T, P]`.
struct Outs {
    states: Vec<Vec<f32>>,
    bf16: Vec<Vec<u16>>,
    ys: Vec<Vec<f32>>,
}

fn block(d: &Inputs, h: usize) -> HeadBlock<'_> {
    let d_inner = HEADS * P;
    HeadBlock {
        xbc: &d.xbc,
        stride: d.stride,
        x_off: h * P,
        b_off: d_inner,
        c_off: d_inner + N,
        dt: &d.dt[h],
        decay: &d.decay[h],
    }
}

fn run(v: Variant, d: &Inputs, o: &mut Outs, parallel: bool) {
    let grp = match v {
        Variant::Chunks(q) => Some(GroupChunks::new(&block(d, 0), N, q)),
        _ => None,
    };
    let per_head = |h: usize, ((s, sb), y): ((&mut Vec<f32>, &mut Vec<u16>), &mut Vec<f32>)| match v {
        Variant::Steps => ssm::head_steps_prefill(s, P, N, &block(d, h), y),
        Variant::Chunks(_) => ssd::head_chunks(s, P, N, &block(d, h), grp.as_ref().expect("built above"), y),
        Variant::Around => {
            let dec: Vec<f32> = d.dt[h].iter().map(|&x| (x * d.a[h]).exp()).collect();
            black_box(dec);
            let wide: Vec<f32> = sb.iter().map(|&b| ssm::bf16_widen(b)).collect();
            for (b, w) in sb.iter_mut().zip(&wide) {
                *b = ssm::bf16_round(*w);
            }
        }
        Variant::Decays => {
            let dec: Vec<f32> = d.dt[h].iter().map(|&x| (x * d.a[h]).exp()).collect();
            black_box(dec);
        }
    };
    if parallel {
        o.states
            .par_iter_mut()
            .zip(o.bf16.par_iter_mut())
            .zip(o.ys.par_iter_mut())
            .enumerate()
            .for_each(|(h, w)| per_head(h, w));
    } else {
        o.states.iter_mut().zip(o.bf16.iter_mut()).zip(o.ys.iter_mut()).enumerate().for_each(|(h, w)| per_head(h, w));
    }
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let rounds = if bench_mode { env_usize("BIMAMBA_AB_ROUNDS", 9) } else { 1 };
    let budget = Duration::from_millis(if bench_mode { env_usize("BIMAMBA_AB_MS", 100) as u64 } else { 1 });
    let t = tokens();
    let mut rng = common::Rng(0xB10C);
    let stride = HEADS * P + 2 * N;
    let a: Vec<f32> = (0..HEADS).map(|_| -1.0 - 15.0 * rng.f32().abs()).collect();
    let dt: Vec<Vec<f32>> =
        (0..HEADS).map(|_| (0..t).map(|_| 10f32.powf(-3.0 + 2.0 * rng.f32().abs())).collect()).collect();
    let decay = dt.iter().zip(&a).map(|(d, &a)| d.iter().map(|&x| (x * a).exp()).collect()).collect();
    let d = Inputs { xbc: rng.vec(t * stride), stride, dt, decay, a };
    let mut o = Outs {
        states: (0..HEADS).map(|_| rng.vec(P * N)).collect(),
        bf16: (0..HEADS).map(|_| rng.vec(P * N).iter().map(|&v| ssm::bf16_round(v)).collect()).collect(),
        ys: vec![vec![0.0; t * P]; HEADS],
    };
    let variants = [
        Variant::Steps,
        Variant::Chunks(16),
        Variant::Chunks(32),
        Variant::Chunks(64),
        Variant::Around,
        Variant::Decays,
    ];
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "isa {} | load average at start: {} | {t} tokens | {rounds} rounds x {budget:?} | ms per token, 64 layers",
        bimamba_kernels::selected_isa().name(),
        load.trim()
    );
    println!("\n| variant | threads | ms/token | vs head_steps_prefill (paired) |");
    println!("|---|---|---|---|");
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("building a rayon pool");
        let mut times = vec![Vec::new(); variants.len()];
        let mut ratios = vec![Vec::new(); variants.len()];
        for round in 0..rounds {
            let mut m = vec![0.0; variants.len()];
            for j in 0..variants.len() {
                let i = (j + round) % variants.len();
                m[i] = pool.install(|| run_for(budget, || run(variants[i], &d, &mut o, threads > 1)));
            }
            for i in 0..variants.len() {
                times[i].push(m[i]);
                ratios[i].push(m[0] / m[i]);
            }
        }
        for (i, v) in variants.iter().enumerate() {
            let ms = median(&mut times[i]) / t as f64 * LAYERS * 1e3;
            println!("| {v:?} | {threads} | {ms:.3} | {:.3} |", median(&mut ratios[i]));
        }
    }
}
