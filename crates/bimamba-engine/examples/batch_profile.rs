//! Where a batched decode step goes: times `Model::step_batch` for 1 and 8 sequences (what
//! `bimamba serve --max-batch 8` runs per step, without HTTP, tokenizer or sampling) with the
//! section timers on, in the default arithmetic, in the default arithmetic with a q8 head's codes
//! in row order (the int8 head kernel before the panel order, `x86/avx512_vnni_q8.rs`; the same
//! bits), and in the exact arithmetic (f32 activations and state).
//!
//! `cargo run --release -p bimamba-engine --example batch_profile -- MODEL_DIR|SHAPE [THREADS] [STEPS] [ROUNDS]`
//!
//! SHAPE (130m, 780m, 1.3b, 2.7b) profiles a random 1-bit model of that shape, built in memory.
//!
//! The configurations take turns: each round runs STEPS steps (200) of each, the order rotating
//! from round to round, so that on a shared machine they see the same load. Prints per
//! configuration and batch size the medians over ROUNDS rounds (1) of steps/s, tokens/s
//! (steps · n) and milliseconds per step in each section.

use std::time::Instant;

use bimamba_engine::linear::BinaryAct;
use bimamba_engine::{profile, random, Model, State, StateDtype};

/// One configuration's model and its figures per round: `(ms per step, [(section, ms per step)])`.
struct Config {
    name: &'static str,
    model: Model,
    rounds: Vec<(f64, Vec<(&'static str, f64)>)>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 2 {
        return Err("usage: batch_profile MODEL_DIR|SHAPE [THREADS] [STEPS] [ROUNDS]".into());
    }
    let threads: usize = args.get(2).map_or(Ok(2), |s| s.parse())?;
    let steps: usize = args.get(3).map_or(Ok(200), |s| s.parse())?;
    let rounds: usize = args.get(4).map_or(Ok(1), |s| s.parse())?.max(1);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global()?;
    let loaded = match random::shape_config(&args[1]) {
        Some(cfg) => random::random_model(cfg, random::ProjFormat::Binary, 1)?,
        None => Model::load(std::path::Path::new(&args[1]))?,
    };
    let with = |act: BinaryAct, dtype: StateDtype| {
        let mut m = loaded.clone();
        m.set_binary_act(act);
        m.set_state_dtype(dtype);
        m
    };
    let mut rows_head = with(BinaryAct::fastest(), StateDtype::Bf16);
    match &mut rows_head.lm_head {
        Some(head) => head.arrange_q8(false),
        None => rows_head.embedding.arrange_q8(false),
    }
    let mut configs = vec![
        Config { name: "default", model: with(BinaryAct::fastest(), StateDtype::Bf16), rounds: Vec::new() },
        Config { name: "default, head in row order", model: rows_head, rounds: Vec::new() },
        Config { name: "exact", model: with(BinaryAct::F32, StateDtype::F32), rounds: Vec::new() },
    ];
    let prompt: Vec<u32> = (0..32).map(|i| 100 + 37 * i).collect();
    for n in [1usize, 8] {
        let tokens: Vec<u32> = (0..n as u32).map(|i| 500 + i).collect();
        let mut states: Vec<Vec<State>> = Vec::new();
        for c in configs.iter_mut() {
            c.rounds.clear();
            let mut s: Vec<State> = (0..n).map(|_| c.model.new_state()).collect();
            for (i, st) in s.iter_mut().enumerate() {
                c.model.forward_last(st, &prompt[i % 4..])?;
            }
            let mut refs: Vec<_> = s.iter_mut().collect();
            for _ in 0..10 {
                c.model.step_batch(&mut refs, &tokens)?;
            }
            states.push(s);
        }
        for r in 0..rounds {
            for o in 0..configs.len() {
                let ci = (o + r) % configs.len();
                let c = &mut configs[ci];
                let mut refs: Vec<_> = states[ci].iter_mut().collect();
                profile::enable(true);
                profile::take();
                let t0 = Instant::now();
                for _ in 0..steps {
                    c.model.step_batch(&mut refs, &tokens)?;
                }
                let secs = t0.elapsed().as_secs_f64();
                profile::enable(false);
                let sections =
                    profile::take().into_iter().filter(|&(_, s)| s > 0.0).map(|(k, s)| (k, 1e3 * s / steps as f64));
                c.rounds.push((1e3 * secs / steps as f64, sections.collect()));
            }
        }
        for c in &configs {
            let ms = median(c.rounds.iter().map(|r| r.0).collect());
            let names: Vec<&str> = c.rounds[0].1.iter().map(|&(k, _)| k).collect();
            let per_section: Vec<String> = names
                .iter()
                .map(|&k| {
                    let v = c.rounds.iter().map(|r| r.1.iter().find(|s| s.0 == k).map_or(0.0, |s| s.1)).collect();
                    format!("{k}={:.3}", median(v))
                })
                .collect();
            println!(
                "{} n={n}: {:.0} steps/s, {:.0} tok/s, {ms:.3} ms/step: {}",
                c.name,
                1e3 / ms,
                1e3 * n as f64 / ms,
                per_section.join(" ")
            );
        }
    }
    Ok(())
}
