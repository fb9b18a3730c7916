//! Speed of the LLaMA forward on a GGUF model: load time, prefill and decode tokens/s.
//!
//! `cargo run --release -p bimamba-llama --example bench_llama -- MODEL.gguf [PREFILL] [DECODE] [REPEATS] [f32|q8]`
//! (defaults 512, 64, 3, f32 activations; the best of the repeats is reported). The prompt is a fixed cycle of
//! token ids, so the figures do not depend on a text file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use bimamba_llama::{Activations, LlamaModel};

fn arg(args: &[String], i: usize, default: usize) -> Result<usize, String> {
    match args.get(i) {
        None => Ok(default),
        Some(s) => s.parse().map_err(|_| format!("argument {i}: expected a count, got {s:?}")),
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1).map(PathBuf::from) else {
        return Err("usage: bench_llama MODEL.gguf [PREFILL] [DECODE] [REPEATS] [f32|q8]".into());
    };
    let (prefill, decode, repeats) = (arg(&args, 2, 512)?, arg(&args, 3, 64)?, arg(&args, 4, 3)?.max(1));
    let t0 = Instant::now();
    let act: Activations = args.get(5).map_or(Ok(Activations::F32), |s| s.parse())?;
    let model = LlamaModel::load_with(&path, act).map_err(|e| e.to_string())?;
    let load_s = t0.elapsed().as_secs_f64();
    let c = &model.config;
    let vocab = c.vocab_size as u32;
    let prompt: Vec<u32> = (0..prefill as u32).map(|i| (i * 7919 + 13) % vocab).collect();
    let (mut best_prefill, mut best_decode) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..repeats {
        let mut cache = model.new_cache();
        let t = Instant::now();
        let mut logits = model.forward_last(&mut cache, &prompt).map_err(|e| e.to_string())?;
        best_prefill = best_prefill.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for _ in 0..decode {
            let next = logits
                .iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
                .0 as u32;
            logits = model.forward_last(&mut cache, &[next]).map_err(|e| e.to_string())?;
        }
        best_decode = best_decode.min(t.elapsed().as_secs_f64());
    }
    println!("command: {}", args.join(" "));
    println!(
        "machine: {} threads, kernel ISA {:?}, activations {act}",
        rayon::current_num_threads(),
        bimamba_kernels::selected_isa()
    );
    println!(
        "model: {} layers, d_model {}, {:.1} M parameters, {:.1} MB of weights in memory, loaded in {:.2} s",
        c.n_layer,
        c.d_model,
        model.parameter_count() as f64 / 1e6,
        model.weight_bytes() as f64 / 1e6,
        load_s
    );
    println!(
        "prefill: {prefill} tokens in {best_prefill:.3} s = {:.1} tokens/s (best of {repeats})",
        prefill as f64 / best_prefill
    );
    println!(
        "decode: {decode} tokens after the prefill in {best_decode:.3} s = {:.1} tokens/s (best of {repeats})",
        decode as f64 / best_decode
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
