//! Where a batched decode step goes: times `Model::step_batch` for 1 and 8 sequences (what
//! `bimamba serve --max-batch 8` runs per step, without HTTP, tokenizer or sampling) with the
//! section timers on, in the default arithmetic and in the exact one (f32 activations and state).
//!
//! `cargo run --release -p bimamba-engine --example batch_profile -- MODEL_DIR [THREADS] [STEPS]`
//!
//! Prints per configuration and batch size: steps/s, tokens/s (steps · n) and milliseconds per
//! step in each section.

use std::time::Instant;

use bimamba_engine::linear::BinaryAct;
use bimamba_engine::{profile, Model, StateDtype};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 2 {
        return Err("usage: batch_profile MODEL_DIR [THREADS] [STEPS]".into());
    }
    let threads: usize = args.get(2).map_or(Ok(2), |s| s.parse())?;
    let steps: usize = args.get(3).map_or(Ok(200), |s| s.parse())?;
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global()?;
    let mut model = Model::load(std::path::Path::new(&args[1]))?;
    let prompt: Vec<u32> = (0..32).map(|i| 100 + 37 * i).collect();
    for (name, act, dtype) in
        [("default", BinaryAct::fastest(), StateDtype::Bf16), ("exact", BinaryAct::F32, StateDtype::F32)]
    {
        model.set_binary_act(act);
        model.set_state_dtype(dtype);
        for n in [1usize, 8] {
            let mut states: Vec<_> = (0..n).map(|_| model.new_state()).collect();
            for (i, s) in states.iter_mut().enumerate() {
                model.forward_last(s, &prompt[i % 4..])?;
            }
            let mut refs: Vec<_> = states.iter_mut().collect();
            let tokens: Vec<u32> = (0..n as u32).map(|i| 500 + i).collect();
            for _ in 0..10 {
                model.step_batch(&mut refs, &tokens)?;
            }
            profile::enable(true);
            profile::take();
            let t0 = Instant::now();
            for _ in 0..steps {
                model.step_batch(&mut refs, &tokens)?;
            }
            let secs = t0.elapsed().as_secs_f64();
            profile::enable(false);
            let per_step: Vec<String> = profile::take()
                .into_iter()
                .filter(|&(_, s)| s > 0.0)
                .map(|(k, s)| format!("{k}={:.3}", 1e3 * s / steps as f64))
                .collect();
            println!(
                "{name} n={n}: {:.0} steps/s, {:.0} tok/s, {:.3} ms/step: {}",
                steps as f64 / secs,
                (steps * n) as f64 / secs,
                1e3 * secs / steps as f64,
                per_step.join(" ")
            );
        }
    }
    Ok(())
}
