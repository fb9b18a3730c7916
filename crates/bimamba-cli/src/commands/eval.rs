//! `bimamba eval`: perplexity (and, as the evaluation crate grows, zero-shot tasks).

use std::path::PathBuf;

use anyhow::{bail, Result};
use bimamba_text::read_text_file;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::model_args::ModelArgs;

#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// Perplexity over non-overlapping windows of a text file (the paper's protocol).
    Ppl(PplArgs),
}

#[derive(Args, Debug)]
pub struct PplArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// UTF-8 text file, encoded once without special tokens.
    #[arg(long, value_name = "FILE")]
    pub text: PathBuf,

    /// Window length in tokens; the remainder after the last full window is dropped.
    #[arg(long, default_value_t = 2048)]
    pub seq_len: usize,

    /// Print one JSON object instead of a sentence.
    #[arg(long)]
    pub json: bool,
}

pub fn run(c: EvalCommand) -> Result<()> {
    match c {
        EvalCommand::Ppl(a) => ppl(a),
    }
}

fn ppl(a: PplArgs) -> Result<()> {
    if a.seq_len < 2 {
        bail!("--seq-len: expected at least 2 tokens per window, got {}", a.seq_len);
    }
    let text = read_text_file(&a.text)?;
    let (model, tok, dir) = a.model.load()?;
    let (ids, ends) = tok.encode_with_ends(&text)?;
    let windows = ids.len() / a.seq_len;
    if windows == 0 {
        bail!(
            "{}: the text encodes to {} tokens, fewer than one window of --seq-len {}",
            a.text.display(),
            ids.len(),
            a.seq_len
        );
    }
    let bar = ProgressBar::new(windows as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} windows [{elapsed_precise} < {eta_precise}]")
            .expect("the progress template is a valid constant"),
    );
    if windows < 4 {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let t0 = std::time::Instant::now();
    let r = bimamba_eval::perplexity(&model, &ids, &ends, a.seq_len, |w| bar.set_position(w as u64))?
        .expect("at least one window was checked above");
    bar.finish_and_clear();
    let elapsed = t0.elapsed().as_secs_f64();
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        v["model"] = dir.display().to_string().into();
        v["text"] = a.text.display().to_string().into();
        v["tokenizer"] = tok.path().display().to_string().into();
        v["tokenizer_vocab"] = tok.vocab_size().into();
        v["elapsed_s"] = elapsed.into();
        v["tokens_per_s"] = ((r.windows * r.seq_len) as f64 / elapsed.max(1e-9)).into();
        println!("{v}");
    } else {
        println!(
            "perplexity {:.4} over {} tokens ({} windows of {}), {:.4} bits/byte, {:.1} s",
            r.ppl, r.tokens, r.windows, r.seq_len, r.bits_per_byte, elapsed
        );
    }
    Ok(())
}
