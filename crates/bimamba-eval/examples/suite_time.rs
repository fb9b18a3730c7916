//! Wall time of the zero-shot suite on a model of a given shape with random weights (no trained
//! 130M model exists yet): the same `tasks::evaluate` path as `bimamba eval tasks`.
//!
//! ```text
//! cargo run --release -p bimamba-eval --example suite_time -- \
//!     --tokenizer ../shared/data/tokenizers/gpt-neox-20b.tokenizer.json --data-dir data/eval \
//!     [--limit N] [--tasks LIST] [--binary] [--d-model 768] [--n-layer 24] [--d-state 128] [--count-only]
//! ```
//!
//! With `--limit N` each task's time is also extrapolated to the whole file by tokens fed. Defaults:
//! the state-spaces mamba2-130m shape (d_model 768, 24 layers, d_state 128, headdim 64, vocab
//! 50277 padded to 50288, tied embeddings); `--binary` makes in_proj/out_proj 1-bit (Bi-Mamba).
//! `--count-only` builds no model and prints the tokens and boundary merges of each task.

use std::path::PathBuf;
use std::time::Instant;

use bimamba_engine::linear::{BinaryScales, DenseWeight};
use bimamba_engine::mixer::Mixer;
use bimamba_engine::{Config, Layer, Linear, Model};
use bimamba_eval::tasks::data::Docs;
use bimamba_eval::tasks::{self, request, Task};
use bimamba_text::Tokenizer;

struct Opts {
    tokenizer: PathBuf,
    data_dir: PathBuf,
    limit: Option<usize>,
    tasks: String,
    binary: bool,
    count_only: bool,
    d_model: usize,
    n_layer: usize,
    d_state: usize,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        tokenizer: PathBuf::new(),
        data_dir: tasks::default_data_dir(),
        limit: None,
        tasks: "all".into(),
        binary: false,
        count_only: false,
        d_model: 768,
        n_layer: 24,
        d_state: 128,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--binary" || flag == "--count-only" {
            o.binary |= flag == "--binary";
            o.count_only |= flag == "--count-only";
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag}: missing value"))?;
        let num = |v: &str| v.parse::<usize>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--tokenizer" => o.tokenizer = value.into(),
            "--data-dir" => o.data_dir = value.into(),
            "--limit" => o.limit = Some(num(&value)?),
            "--tasks" => o.tasks = value,
            "--d-model" => o.d_model = num(&value)?,
            "--n-layer" => o.n_layer = num(&value)?,
            "--d-state" => o.d_state = num(&value)?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if o.tokenizer.as_os_str().is_empty() {
        return Err("--tokenizer FILE is required".into());
    }
    Ok(o)
}

/// splitmix64 → uniform in [-1, 1).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| scale * self.next()).collect()
    }
}

fn linear(rng: &mut Rng, rows: usize, cols: usize, binary: bool) -> Linear {
    let scale = (3.0 / cols as f32).sqrt();
    let w = rng.vec(rows * cols, scale);
    if binary {
        let alpha = (0..cols).map(|_| scale * (1.0 + 0.5 * rng.next())).collect();
        let beta = rng.vec(cols, 0.1 * scale);
        Linear::binarize(&w, rows, cols, BinaryScales::Column { alpha, beta })
    } else {
        Linear::Dense { rows, cols, weight: DenseWeight::F32(w) }
    }
}

fn random_model(o: &Opts) -> Result<Model, String> {
    let json = format!(
        r#"{{"d_model": {}, "n_layer": {}, "vocab_size": 50277, "pad_vocab_size_multiple": 16,
            "ssm_cfg": {{"layer": "Mamba2", "d_state": {}, "d_conv": 4, "expand": 2, "headdim": 64,
            "ngroups": 1, "chunk_size": 256}}, "rms_norm": true, "tie_embeddings": true}}"#,
        o.d_model, o.n_layer, o.d_state
    );
    let c = Config::from_json_str(&json, &PathBuf::from("(suite_time)")).map_err(|e| e.to_string())?;
    let mut rng = Rng(42);
    let (d, h) = (c.d_model, c.nheads);
    let layers = (0..c.n_layer)
        .map(|_| Layer {
            norm: vec![1.0; d],
            mixer: Mixer {
                in_proj: linear(&mut rng, c.d_in_proj(), d, o.binary),
                conv_weight: rng.vec(c.conv_dim() * c.d_conv, 0.5),
                conv_bias: rng.vec(c.conv_dim(), 0.5),
                dt_bias: (0..h).map(|i| -4.0 + 3.0 * i as f32 / h as f32).collect(),
                a: (0..h).map(|i| -(1.0 + 15.0 * i as f32 / h as f32)).collect(),
                d: vec![1.0; h],
                norm_weight: if c.gated_norm { vec![1.0; c.d_inner()] } else { Vec::new() },
                out_proj: linear(&mut rng, d, c.d_inner(), o.binary),
            },
        })
        .collect();
    let embedding = Linear::Dense {
        rows: c.padded_vocab_size,
        cols: d,
        weight: DenseWeight::F32(rng.vec(c.padded_vocab_size * d, 0.05)),
    };
    Ok(Model { config: c, embedding, layers, norm_f: vec![1.0; d], lm_head: None })
}

fn run() -> Result<(), String> {
    let o = parse()?;
    let list = Task::parse_list(&o.tasks).map_err(|e| e.to_string())?;
    let tok = Tokenizer::from_file(&o.tokenizer).map_err(|e| e.to_string())?;
    if o.count_only {
        return count(&o, &tok, &list);
    }
    let t0 = Instant::now();
    let model = random_model(&o)?;
    let (binary, dense) = model.parameter_counts();
    println!(
        "model: random {} d_model {} n_layer {} d_state {}: {:.1} M parameters ({:.1} M binary), built in {:.1} s",
        if o.binary { "Bi-Mamba" } else { "Mamba-2 f32" },
        o.d_model,
        o.n_layer,
        o.d_state,
        (binary + dense) as f64 / 1e6,
        binary as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );
    println!(
        "isa {:?}, {} rayon threads, data {}",
        bimamba_kernels::selected_isa(),
        rayon::current_num_threads(),
        o.data_dir.display()
    );
    // Reference: the engine's prefill speed on one 256-token block from a fresh state.
    let block: Vec<u32> = (0..256u32).map(|i| (i * 7919) % 50000).collect();
    let t1 = Instant::now();
    model.forward_last(&mut model.new_state(), &block).map_err(|e| e.to_string())?;
    let prefill = block.len() as f64 / t1.elapsed().as_secs_f64();
    println!("engine prefill of one 256-token block: {prefill:.0} tokens/s");
    println!(
        "{:<15} {:>6} {:>8} {:>9} {:>9} {:>8} {:>10} {:>12}",
        "task", "docs", "requests", "tokens", "time s", "tok/s", "all tokens", "all docs s"
    );
    let (mut measured, mut full) = (0.0, 0.0);
    for t in list {
        let docs = tasks::load_task(&o.data_dir, t, o.limit).map_err(|e| e.to_string())?;
        let all = tasks::load_task(&o.data_dir, t, None).map_err(|e| e.to_string())?;
        let all_tokens = plan(&tok, t, &all)?.0;
        let r = tasks::evaluate(&model, &tok, t, &docs, &|_, _| {}).map_err(|e| e.to_string())?;
        // Extrapolate by tokens fed (documents differ in length more than tasks do in speed).
        let extrapolated = r.elapsed_s * all_tokens as f64 / r.tokens_fed as f64;
        measured += r.elapsed_s;
        full += extrapolated;
        println!(
            "{:<15} {:>6} {:>8} {:>9} {:>9.1} {:>8.0} {:>10} {:>12.0}",
            t.name(),
            r.n,
            r.requests,
            r.tokens_fed,
            r.elapsed_s,
            r.tokens_fed as f64 / r.elapsed_s,
            all_tokens,
            extrapolated
        );
    }
    println!(
        "measured {measured:.1} s; all documents (extrapolated by tokens fed) {full:.0} s = {:.1} min",
        full / 60.0
    );
    Ok(())
}

/// For a whole task: (tokens the model is fed: contexts once, continuations without their last
/// token; continuations; boundary merges).
fn plan(tok: &Tokenizer, t: Task, docs: &Docs) -> Result<(usize, usize, usize), String> {
    let groups = match docs {
        Docs::Choice(d) => request::choice_groups(tok, t.name(), d),
        Docs::Partial(d) => request::partial_groups(tok, t.name(), d).map(|(g, _)| g),
        Docs::Lambada(d) => request::lambada_groups(tok, t.name(), d),
    }
    .map_err(|e| e.to_string())?;
    let fed = groups.iter().map(|g| g.context.len() + g.continuations.iter().map(|c| c.len() - 1).sum::<usize>()).sum();
    let requests = groups.iter().map(|g| g.continuations.len()).sum();
    Ok((fed, requests, groups.iter().map(|g| g.merges).sum()))
}

/// `--count-only`: what the whole suite asks of a model under this tokenizer, without a model.
fn count(o: &Opts, tok: &Tokenizer, list: &[Task]) -> Result<(), String> {
    println!("tokenizer {}, data {}", o.tokenizer.display(), o.data_dir.display());
    println!("{:<15} {:>6} {:>9} {:>11} {:>15}", "task", "docs", "requests", "tokens fed", "boundary merges");
    let mut total = (0, 0, 0, 0);
    for &t in list {
        let docs = tasks::load_task(&o.data_dir, t, o.limit).map_err(|e| e.to_string())?;
        let (fed, requests, merges) = plan(tok, t, &docs)?;
        println!("{:<15} {:>6} {:>9} {:>11} {:>15}", t.name(), docs.len(), requests, fed, merges);
        total = (total.0 + docs.len(), total.1 + requests, total.2 + fed, total.3 + merges);
    }
    println!("{:<15} {:>6} {:>9} {:>11} {:>15}", "total", total.0, total.1, total.2, total.3);
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
