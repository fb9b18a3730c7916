//! `bimamba generate`: prefill the prompt, then decode token by token, streaming UTF-8 text.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bimamba_lm::sampling::{Sampler, SamplingParams};
use bimamba_lm::LanguageModel;
use bimamba_models::ModelKind;
use bimamba_text::{read_text_file, text_from_bytes, StreamDecoder, Tokenizer};
use clap::Args;

use crate::model_args::{ModelArgs, Opened};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// The prompt; encoded without special tokens.
    #[arg(long, required_unless_present = "prompt_file", conflicts_with = "prompt_file")]
    pub prompt: Option<String>,

    /// Read the prompt from a UTF-8 file instead, `-` for standard input (for prompts too long
    /// for a command line); one final line break is dropped.
    #[arg(long, value_name = "FILE|-")]
    pub prompt_file: Option<PathBuf>,

    /// Maximum number of tokens to generate, at least 1 (stops earlier at end-of-sequence).
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,

    /// Do not stop at end-of-sequence: generate exactly --max-tokens tokens.
    #[arg(long)]
    pub ignore_eos: bool,

    /// Print one JSON object (prompt and generated token ids, text, speeds) instead of streaming.
    #[arg(long)]
    pub json: bool,

    /// Always take the most likely token (the default when no --temperature is given).
    #[arg(long, conflicts_with_all = ["temperature", "top_k", "top_p"])]
    pub greedy: bool,

    /// Sampling temperature; 0 means greedy.
    #[arg(long)]
    pub temperature: Option<f32>,

    /// Sample only among the K most likely tokens (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,

    /// Sample only among the most likely tokens whose probabilities sum to P (1: no limit).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,

    /// Seed of the sampler's random generator.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Repetition penalty applied to every token already seen (1: none).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
}

/// The prompt: `--prompt`, or the contents of `--prompt-file` (a file, or `-` for stdin).
fn prompt_text(a: &GenerateArgs) -> Result<String> {
    let Some(path) = &a.prompt_file else {
        let p = a.prompt.clone().unwrap_or_default();
        if p.is_empty() {
            bail!("--prompt: the prompt is empty; give some text to continue");
        }
        return Ok(p);
    };
    let mut text = if path.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes).context("--prompt-file -: cannot read standard input")?;
        text_from_bytes(bytes, Path::new("standard input"))?
    } else {
        read_text_file(path)?
    };
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

pub fn run(a: GenerateArgs) -> Result<()> {
    if a.max_tokens == 0 {
        bail!("--max-tokens 0: nothing would be generated; expected at least 1");
    }
    let prompt = prompt_text(&a)?;
    let temperature = if a.greedy { 0.0 } else { a.temperature.unwrap_or(0.0) };
    if !temperature.is_finite() || temperature < 0.0 {
        bail!("--temperature: expected a number >= 0, got {temperature}");
    }
    if !(a.top_p > 0.0 && a.top_p <= 1.0) {
        bail!("--top-p: expected a number in (0, 1], got {}", a.top_p);
    }
    if !a.repeat_penalty.is_finite() || a.repeat_penalty <= 0.0 {
        bail!("--repeat-penalty: expected a number > 0, got {}", a.repeat_penalty);
    }
    let Opened { model, tokenizer, .. } = a.model.open()?;
    let stops = if a.ignore_eos { Vec::new() } else { model.stop_tokens(&tokenizer) };
    generate(&model, model.kind(), &tokenizer, &a, &prompt, temperature, &stops)
}

/// Prefill, then sample and step until `max_tokens` or a stop token.
fn generate<M: LanguageModel>(
    model: &M,
    kind: ModelKind,
    tok: &Tokenizer,
    a: &GenerateArgs,
    text: &str,
    temperature: f32,
    stops: &[u32],
) -> Result<()> {
    let prompt = tok.encode(text)?;
    if prompt.is_empty() {
        bail!("--prompt: the prompt encodes to no tokens");
    }
    let mut sampler = Sampler::new(SamplingParams {
        temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        repeat_penalty: a.repeat_penalty,
        seed: a.seed,
    });

    let mut state = model.new_state();
    let t0 = Instant::now();
    let mut logits = model.forward_last(&mut state, &prompt)?;
    let prefill_s = t0.elapsed().as_secs_f64();

    let mut history = prompt.clone();
    let mut decoder = StreamDecoder::new();
    let mut out = std::io::stdout().lock();
    // With --json the text is collected and printed once at the end.
    let mut text = String::new();
    let t1 = Instant::now();
    let mut generated = 0usize;
    for i in 0..a.max_tokens {
        let next = sampler.sample(&logits, &history, tok.vocab_size());
        if stops.contains(&next) {
            break;
        }
        history.push(next);
        generated += 1;
        let piece = decoder.push(tok, next)?;
        if a.json {
            text.push_str(&piece);
        } else if out.write_all(piece.as_bytes()).and_then(|_| out.flush()).is_err() {
            break; // stdout closed (e.g. piped into `head`): stop quietly
        }
        if i + 1 < a.max_tokens {
            logits = model.forward_last(&mut state, &[next])?;
        }
    }
    let rest = decoder.finish(tok)?;
    let decode_s = t1.elapsed().as_secs_f64();
    if a.json {
        text.push_str(&rest);
        let mut v = serde_json::json!({
            "prompt_tokens": prompt,
            "tokens": history[prompt.len()..],
            "text": text,
            "prefill_tok_s": prompt.len() as f64 / prefill_s.max(1e-9),
            "decode_tok_s": generated as f64 / decode_s.max(1e-9),
        });
        a.model.runtime.record(kind, &mut v);
        let _ = writeln!(out, "{v}");
        return Ok(());
    }
    let _ = write!(out, "{rest}");
    let _ = writeln!(out);
    eprintln!(
        "prefill: {} tokens in {:.3} s ({:.1} tok/s); decode: {} tokens in {:.3} s ({:.1} tok/s)",
        prompt.len(),
        prefill_s,
        prompt.len() as f64 / prefill_s.max(1e-9),
        generated,
        decode_s,
        generated as f64 / decode_s.max(1e-9),
    );
    Ok(())
}
