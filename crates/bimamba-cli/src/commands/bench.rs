//! `bimamba bench`: decode and prefill speed of the whole engine as a fraction of this machine's
//! memory-bandwidth ceiling (ARCHITECTURE.md §7), and for a Mamba model the same engine with
//! dense f32 / bf16 projections in the same run. Ratios within one run are the figures to quote,
//! never absolute timings alone. A .gguf model is measured the same way (KV cache in the bytes).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use bimamba_engine::linear::BinaryAct;
use bimamba_engine::profile;
use bimamba_engine::random::{random_model, shape_config, ProjFormat, SHAPES};
use bimamba_engine::Model;
use bimamba_llama::{Activations, LlamaModel};
use bimamba_lm::sampling::{argmax, Rng};
use bimamba_lm::LanguageModel;
use bimamba_models::{AnyModel, ModelKind, Settings};
use clap::builder::PossibleValuesParser;
use clap::Args;
use serde_json::json;

use crate::commands::pack::EmbedArg;
use crate::model_args::cli_error;
use crate::runtime_args::{setting_error, RuntimeArgs};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// A built-in Bi-Mamba shape with random weights; no files needed.
    #[arg(long, conflicts_with = "model", value_parser = PossibleValuesParser::new(SHAPES))]
    pub shape: Option<String>,

    /// A real model instead of a built-in shape: a model directory or a LLaMA-architecture .gguf
    /// file.
    #[arg(long, value_name = "DIR|FILE.gguf")]
    pub model: Option<PathBuf>,

    #[command(flatten)]
    pub runtime: RuntimeArgs,

    /// Tokens to decode for the timing.
    #[arg(long, default_value_t = 32)]
    pub decode_tokens: usize,

    /// Prompt length for the prefill timing.
    #[arg(long, default_value_t = 512)]
    pub prefill_tokens: usize,

    /// Embedding / tied LM head storage in memory during the measurement (Mamba-2 / Bi-Mamba
    /// models only; default: q8 for --shape, as `bimamba pack --embed q8` and the shipped model
    /// store it; as stored for --model).
    #[arg(long, value_enum, value_name = "dense|q8")]
    pub embed: Option<EmbedArg>,

    /// Skip the dense f32 / bf16 comparison (it needs 4x / 2x the memory of the weights;
    /// Mamba-2 / Bi-Mamba models only).
    #[arg(long)]
    pub no_dense: bool,

    /// Also report the milliseconds per token spent in each section of the forward pass
    /// (in_proj, conv, scan, ...), for prefill and for decode (Mamba-2 / Bi-Mamba models only).
    #[arg(long)]
    pub profile: bool,

    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Bytes one decode step of a Mamba model must move: every weight once (the embedding only one
/// row, unless it is also the lm_head), and the state (f32 conv windows, SSM state in its storage
/// dtype) read and written.
pub fn bytes_per_token(m: &Model) -> usize {
    let mut b = m.lm_head().weight_bytes();
    if m.lm_head.is_some() {
        b += m.embedding.weight_bytes() / m.embedding.rows();
    }
    for l in &m.layers {
        b += l.mixer.in_proj.weight_bytes() + l.mixer.out_proj.weight_bytes() + 4 * l.small_params();
    }
    b + 2 * m.new_state().bytes()
}

/// Bytes of a LLaMA model's KV cache (f32 keys and values) holding `positions` tokens.
fn kv_cache_bytes(m: &LlamaModel, positions: usize) -> usize {
    2 * 4 * m.config.n_layer * m.config.kv_dim() * positions
}

/// Bytes one decode step of a LLaMA model must move with `context` tokens cached: every weight
/// once in its stored form (the embedding only one row, unless it is also the output head), the
/// cache read, and one position written.
fn llama_bytes_per_token(m: &LlamaModel, context: usize) -> usize {
    let emb = &m.embedding;
    let unread_embedding = if m.output.is_some() { emb.bytes() - emb.bytes() / emb.rows } else { 0 };
    m.weight_bytes() - unread_embedding + kv_cache_bytes(m, context + 1)
}

/// Peak resident memory of this process so far (VmHWM), in MiB (2^20 bytes: VmHWM's kB / 1024);
/// 0 where /proc is absent.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Minor page faults of this process so far (field 10 of /proc/self/stat: first touches of memory
/// that need no disk read, such as fresh allocations); `None` where /proc is absent.
pub fn minor_faults() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces: state (3), ...,
    // minflt (10).
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(7)?.parse().ok()
}

struct Speed {
    prefill_tok_s: f64,
    decode_tok_s: f64,
    /// Minor page faults during the prefill and during the decode steps (`None` without /proc).
    prefill_faults: Option<u64>,
    decode_faults: Option<u64>,
    /// Milliseconds per token by section (`--profile`), prefill then decode; empty otherwise.
    prefill_profile: Vec<(&'static str, f64)>,
    decode_profile: Vec<(&'static str, f64)>,
}

/// Seconds per section → milliseconds per token.
fn per_token_ms(sections: Vec<(&'static str, f64)>, tokens: usize) -> Vec<(&'static str, f64)> {
    sections.into_iter().map(|(n, s)| (n, s * 1e3 / tokens as f64)).collect()
}

/// Times a prefill of `prefill` random tokens, then `decode` greedy steps. The section timers
/// (`profile`) exist in the Mamba engine only.
fn measure<M: LanguageModel>(m: &M, prefill: usize, decode: usize, seed: u64, profile: bool) -> Result<Speed> {
    let mut rng = Rng::new(seed);
    let vocab = m.vocab_size() as u64;
    let prompt: Vec<u32> = (0..prefill).map(|_| (rng.next_u64() % vocab) as u32).collect();
    // Warm-up: page in every weight once.
    m.forward_last(&mut m.new_state(), &prompt[..prompt.len().min(8)])?;
    let mut state = m.new_state();
    profile::enable(profile);
    profile::take();
    let faults0 = minor_faults();
    let t0 = Instant::now();
    let mut logits = m.forward_last(&mut state, &prompt)?;
    let prefill_s = t0.elapsed().as_secs_f64();
    let faults1 = minor_faults();
    let prefill_profile = per_token_ms(profile::take(), prefill);
    let t1 = Instant::now();
    for _ in 0..decode {
        let next = argmax(&logits) as u32;
        logits = m.forward_last(&mut state, &[next])?;
    }
    let decode_s = t1.elapsed().as_secs_f64();
    let faults2 = minor_faults();
    let between = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?));
    let decode_profile = per_token_ms(profile::take(), decode);
    profile::enable(false);
    let (prefill_profile, decode_profile) =
        if profile { (prefill_profile, decode_profile) } else { (Vec::new(), Vec::new()) };
    Ok(Speed {
        prefill_tok_s: prefill as f64 / prefill_s,
        decode_tok_s: decode as f64 / decode_s,
        prefill_faults: between(faults0, faults1),
        decode_faults: between(faults1, faults2),
        prefill_profile,
        decode_profile,
    })
}

/// The model under test and what the report says about it.
struct Subject {
    label: String,
    model: AnyModel,
    /// Storage of the embedding (which is also the head when `tied`).
    embedding: &'static str,
    tied: bool,
    bytes_per_token: usize,
    /// The decoding state: the SSM state and conv windows, or the KV cache after the run.
    state_bytes: usize,
    state_desc: String,
}

/// Builds (`--shape`) or opens (`--model`) the model with every option applied; an option the
/// model has no use for is refused before anything is loaded.
fn subject(a: &BenchArgs) -> Result<Subject> {
    let settings = a.runtime.settings();
    let mamba = |m: Model, label: String| Subject {
        label,
        embedding: m.embedding.storage(),
        tied: m.lm_head.is_none(),
        bytes_per_token: bytes_per_token(&m),
        state_bytes: m.new_state().bytes(),
        state_desc: format!("SSM state in {}", settings.state_dtype()),
        model: AnyModel::Mamba(m),
    };
    match (&a.shape, &a.model) {
        (Some(s), _) => {
            let label = format!("--shape {s}");
            settings.check(ModelKind::Mamba, Path::new(&label)).map_err(|e| setting_error(&e))?;
            let cfg = shape_config(s)
                .ok_or_else(|| anyhow::anyhow!("--shape {s}: unknown shape; expected one of {}", SHAPES.join(", ")))?;
            let m = prepare(random_model(cfg, ProjFormat::Binary, 1)?, embed_of(a), &settings);
            Ok(mamba(m, format!("shape {s} (random Bi-Mamba)")))
        }
        (None, Some(path)) => {
            if ModelKind::of(path)? == ModelKind::Llama {
                for (given, flag) in [(a.embed == Some(EmbedArg::Q8), "--embed q8"), (a.profile, "--profile")] {
                    if given {
                        bail!(
                            "{flag}: {} is a LLaMA-architecture model; the option applies to Mamba-2 / Bi-Mamba models",
                            path.display()
                        );
                    }
                }
            }
            let label = path.display().to_string();
            Ok(match AnyModel::open_with(path, &settings).map_err(cli_error)? {
                AnyModel::Mamba(m) => mamba(prepare(m, embed_of(a), &settings), label),
                AnyModel::Llama(m) => {
                    let positions = a.prefill_tokens + a.decode_tokens;
                    Subject {
                        label,
                        embedding: m.embedding.storage_name(),
                        tied: m.output.is_none(),
                        bytes_per_token: llama_bytes_per_token(&m, a.prefill_tokens + a.decode_tokens / 2),
                        state_bytes: kv_cache_bytes(&m, positions),
                        state_desc: format!("KV cache of {positions} tokens"),
                        model: AnyModel::Llama(m),
                    }
                }
            })
        }
        (None, None) => bail!("give --shape {} or --model DIR|FILE.gguf", SHAPES.join("|")),
    }
}

/// The embedding storage `--embed` asks for: q8 by default for a built-in shape (as the shipped
/// model stores it), the stored one for a model read from disk.
fn embed_of(a: &BenchArgs) -> EmbedArg {
    a.embed.unwrap_or(if a.shape.is_some() { EmbedArg::Q8 } else { EmbedArg::Dense })
}

/// A Mamba model as the options ask: embedding storage, state dtype, 1-bit activations.
fn prepare(mut m: Model, embed: EmbedArg, settings: &Settings) -> Model {
    if embed == EmbedArg::Q8 {
        m.quantize_vocab_q8();
    }
    m.set_state_dtype(settings.state_dtype());
    m.set_binary_act(settings.binary_act());
    m
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.decode_tokens == 0 || a.prefill_tokens == 0 {
        bail!("--decode-tokens and --prefill-tokens must be at least 1");
    }
    let threads = a.runtime.setup()?;
    let settings = a.runtime.settings();
    let Subject {
        label,
        model,
        embedding: emb_storage,
        tied: model_tied,
        bytes_per_token: bpt,
        state_bytes,
        state_desc,
    } = subject(&a)?;
    let isa = bimamba_kernels::selected_isa().name();
    let kind = model.kind();
    let speed = measure(&model, a.prefill_tokens, a.decode_tokens, 7, a.profile)?;
    // The model's peak, read before the bandwidth probe, whose 1 GiB buffer would dominate it;
    // the process's own peak, probe included, is reported beside it.
    let rss = peak_rss_mb();
    let bw = bimamba_kernels::measure_read_bandwidth_gbs(1 << 30, threads);
    let rss_with_probe = peak_rss_mb();
    let ceiling = bw * 1e9 / bpt as f64;
    let fraction = speed.decode_tok_s / ceiling;

    // The same Mamba engine with dense projections, in the same run (after the peak RSS reading),
    // with the same embedding storage and state dtype, decoding the same number of tokens (up to
    // 32).
    let mut dense = json!(null);
    let dense_cfg = match &model {
        AnyModel::Mamba(m) if !a.no_dense => Some(m.config.clone()),
        _ => None,
    };
    // The int8 kernel a decode step's in_proj runs (what `BIMAMBA_ACT8_DECODE` or the per-shape
    // rule picks), else the ISA's int8 family.
    let isa_kind = bimamba_kernels::selected_isa();
    let act_kernel = match &model {
        AnyModel::Mamba(m) => bimamba_kernels::act8_kernel_for(isa_kind, m.config.d_in_proj(), m.config.d_model, 1),
        _ => bimamba_kernels::act8_kernel(isa_kind).unwrap_or("scalar"),
    };
    // The activations of the LM head's product (int8 for a q8 head under int8 activations where
    // the CPU has the VNNI kernel).
    let head_act = match &model {
        AnyModel::Mamba(m) => m.lm_head().effective_act(m.binary_act).name(),
        _ => "f32",
    };
    drop(model);
    if let Some(cfg) = dense_cfg {
        let n = a.decode_tokens.min(32);
        let mut out = serde_json::Map::new();
        for (key, f) in [("bf16", ProjFormat::DenseBF16), ("f32", ProjFormat::DenseF32)] {
            let m = prepare(random_model(cfg.clone(), f, 1)?, embed_of(&a), &settings);
            let s = measure(&m, 16, n, 7, false)?;
            out.insert(key.into(), json!({ "decode_tok_s": s.decode_tok_s, "bytes_per_token": bytes_per_token(&m) }));
        }
        dense = serde_json::Value::Object(out);
    }
    let dense_tok = |k: &str| dense.get(k).and_then(|v| v["decode_tok_s"].as_f64());
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut v = json!({
        "model": label,
        "command": command,
        "isa": isa,
        "threads": threads,
        "embedding": emb_storage,
        "binary_act_kernel": act_kernel,
        "head_act": head_act,
        "state_bytes": state_bytes,
        "decode_tok_s": speed.decode_tok_s,
        "prefill_tok_s": speed.prefill_tok_s,
        "prefill_over_decode": speed.prefill_tok_s / speed.decode_tok_s,
        "prefill_page_faults": speed.prefill_faults,
        "decode_page_faults": speed.decode_faults,
        "bytes_per_token": bpt,
        "bandwidth_gbs": bw,
        "ceiling_tok_s": ceiling,
        "fraction_of_ceiling": fraction,
        "dense_bf16_decode_tok_s": dense_tok("bf16"),
        "dense_f32_decode_tok_s": dense_tok("f32"),
        "speedup_vs_dense_bf16": dense_tok("bf16").map(|d| speed.decode_tok_s / d),
        "peak_rss_mb": rss,
        "peak_rss_with_probe_mb": rss_with_probe,
        "dense": dense,
        "profile_ms_per_token": if a.profile {
            let obj = |p: &[(&str, f64)]| p.iter().map(|&(n, v)| (n.to_string(), json!(v))).collect::<serde_json::Map<_, _>>();
            json!({ "prefill": obj(&speed.prefill_profile), "decode": obj(&speed.decode_profile) })
        } else {
            json!(null)
        },
    });
    a.runtime.record(kind, &mut v);
    if a.json {
        println!("{v}");
        return Ok(());
    }
    println!("command      {command}");
    println!("model        {label}");
    println!("isa/threads  {isa} / {threads}");
    println!("embedding    {emb_storage} (tied LM head: {}, head activations {head_act})", model_tied);
    println!("state        {state_desc}, {:.1} MB", state_bytes as f64 / 1e6);
    if settings.gguf_act != Activations::F32 {
        println!("gguf acts    {}", settings.gguf_act);
    } else {
        println!(
            "1-bit acts   {}{}",
            settings.binary_act(),
            match (settings.binary_act(), bimamba_kernels::act8_kernel(bimamba_kernels::selected_isa())) {
                (BinaryAct::Int8, Some(k)) => format!(" ({k} kernel)"),
                (BinaryAct::Int8, None) => " (scalar kernel on this ISA)".to_string(),
                _ => String::new(),
            }
        );
    }
    println!("bandwidth    {bw:.2} GB/s (read, measured now)");
    println!("bytes/token  {:.1} MB  -> ceiling {ceiling:.2} tok/s", bpt as f64 / 1e6);
    println!("decode       {:.2} tok/s = {:.1}% of the ceiling", speed.decode_tok_s, 100.0 * fraction);
    println!(
        "prefill      {:.2} tok/s ({} tokens) = {:.1}x decode",
        speed.prefill_tok_s,
        a.prefill_tokens,
        speed.prefill_tok_s / speed.decode_tok_s
    );
    if let (Some(p), Some(d)) = (speed.prefill_faults, speed.decode_faults) {
        println!("page faults  {p} in the prefill, {d} in the decode steps (minor)");
    }
    println!(
        "peak RSS     {rss:.0} MiB with the model loaded and run; {rss_with_probe:.0} MiB for the process once the bandwidth probe's 1 GiB buffer is added"
    );
    if a.profile {
        println!("profile      ms/token   prefill   decode");
        for ((name, p), (_, d)) in speed.prefill_profile.iter().zip(&speed.decode_profile) {
            println!("  {name:10}            {p:8.3} {d:8.3}");
        }
    }
    if let (Some(b), Some(f)) = (dense_tok("bf16"), dense_tok("f32")) {
        println!("dense bf16   {b:.2} tok/s  (1-bit is {:.1}x faster)", speed.decode_tok_s / b);
        println!("dense f32    {f:.2} tok/s  (1-bit is {:.1}x faster)", speed.decode_tok_s / f);
    }
    Ok(())
}
