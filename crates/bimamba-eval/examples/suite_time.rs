//! Wall time of the zero-shot suite on a model of a given shape with random weights (no trained
//! 130M model exists yet): the same `tasks::evaluate` path as `bimamba eval tasks`.
//!
//! ```text
//! cargo run --release -p bimamba-eval --example suite_time -- \
//!     --tokenizer ../shared/data/tokenizers/gpt-neox-20b.tokenizer.json --data-dir data/eval \
//!     [--limit N] [--tasks LIST] [--shape 130m|780m|1.3b|2.7b] [--format binary|f32|bf16] [--count-only]
//! ```
//!
//! The model is `bimamba_engine::random::random_model` of the paper's shape (default 130m: d_model
//! 768, 24 layers, d_state 128, headdim 64; bf16 tied embedding) with the vocabulary resized to the
//! tokenizer's, padded to a multiple of 16; `--format` picks the in_proj/out_proj storage (default
//! binary, i.e. Bi-Mamba). With `--limit N` each task's time is also extrapolated to the whole file
//! by tokens fed. `--count-only` builds no model and prints the tokens and boundary merges of each task.

use std::path::PathBuf;
use std::time::Instant;

use bimamba_engine::random::{random_model, shape_config, ProjFormat};
use bimamba_eval::tasks::data::Docs;
use bimamba_eval::tasks::{self, request, Task};
use bimamba_text::Tokenizer;

struct Opts {
    tokenizer: PathBuf,
    data_dir: PathBuf,
    limit: Option<usize>,
    tasks: String,
    shape: String,
    format: ProjFormat,
    count_only: bool,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        tokenizer: PathBuf::new(),
        data_dir: tasks::default_data_dir(),
        limit: None,
        tasks: "all".into(),
        shape: "130m".into(),
        format: ProjFormat::Binary,
        count_only: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--count-only" {
            o.count_only = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag}: missing value"))?;
        match flag.as_str() {
            "--tokenizer" => o.tokenizer = value.into(),
            "--data-dir" => o.data_dir = value.into(),
            "--limit" => o.limit = Some(value.parse().map_err(|e| format!("--limit {value}: {e}"))?),
            "--tasks" => o.tasks = value,
            "--shape" => o.shape = value,
            "--format" => {
                o.format = match value.as_str() {
                    "binary" => ProjFormat::Binary,
                    "f32" => ProjFormat::DenseF32,
                    "bf16" => ProjFormat::DenseBF16,
                    _ => return Err(format!("--format {value}: expected binary, f32 or bf16")),
                }
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if o.tokenizer.as_os_str().is_empty() {
        return Err("--tokenizer FILE is required".into());
    }
    Ok(o)
}

fn run() -> Result<(), String> {
    let o = parse()?;
    let list = Task::parse_list(&o.tasks).map_err(|e| e.to_string())?;
    let tok = Tokenizer::from_file(&o.tokenizer).map_err(|e| e.to_string())?;
    if o.count_only {
        return count(&o, &tok, &list);
    }
    let t0 = Instant::now();
    let mut cfg =
        shape_config(&o.shape).ok_or_else(|| format!("--shape {}: expected 130m, 780m, 1.3b or 2.7b", o.shape))?;
    cfg.vocab_size = tok.vocab_size();
    cfg.padded_vocab_size = cfg.vocab_size.div_ceil(16) * 16;
    let model = random_model(cfg, o.format, 42).map_err(|e| e.to_string())?;
    let (binary, dense) = model.parameter_counts();
    let c = &model.config;
    println!(
        "model: random {} {:?} (d_model {}, {} layers, d_state {}, vocab {}): {:.1} M parameters ({:.1} M binary), built in {:.1} s",
        o.shape,
        o.format,
        c.d_model,
        c.n_layer,
        c.d_state,
        c.padded_vocab_size,
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
