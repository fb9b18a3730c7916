//! `bimamba bench`: decode and prefill speed of the whole engine as a fraction of this machine's
//! memory-bandwidth ceiling (ARCHITECTURE.md §7), and the same engine with dense f32 / bf16 projections in
//! the same run. Ratios within one run are the figures to quote, never absolute timings alone.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use bimamba_engine::pack::EmbedStorage;
use bimamba_engine::profile;
use bimamba_engine::random::{random_model, shape_config, ProjFormat, SHAPES};
use bimamba_engine::Model;
use bimamba_lm::sampling::Rng;
use clap::Args;
use serde_json::json;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// A built-in Bi-Mamba shape with random weights (130m, 780m, 1.3b, 2.7b); no files needed.
    #[arg(long, conflicts_with = "model")]
    pub shape: Option<String>,

    /// A real model directory instead of a built-in shape.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,

    /// Worker threads (default: all cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Kernel instruction set: scalar, avx2, avx512 or neon (default: the best available).
    #[arg(long, value_name = "ISA")]
    pub isa: Option<String>,

    /// Tokens to decode for the timing.
    #[arg(long, default_value_t = 32)]
    pub decode_tokens: usize,

    /// Prompt length for the prefill timing.
    #[arg(long, default_value_t = 512)]
    pub prefill_tokens: usize,

    /// Embedding / tied LM head storage: q8 quantizes it to 8-bit rows in memory before
    /// measuring; dense (default) keeps it as built (bf16 for --shape) or as stored.
    #[arg(long, value_name = "dense|q8", default_value = "dense")]
    pub embed: String,

    /// Storage precision of the SSM state: f32 (default) or bf16 (half the state traffic per
    /// token; update and readout still in f32). Mamba-2 / Bi-Mamba models only.
    #[arg(long, value_name = "f32|bf16", default_value = "f32")]
    pub state_dtype: String,

    #[arg(long, value_name = "f32|int8", default_value = "f32", help = crate::binary_act::HELP)]
    pub binary_act: String,

    /// Skip the dense f32 / bf16 comparison (it needs 4x / 2x the memory of the weights).
    #[arg(long)]
    pub no_dense: bool,

    /// Also report the milliseconds per token spent in each section of the forward pass
    /// (in_proj, conv, scan, ...), for prefill and for decode.
    #[arg(long)]
    pub profile: bool,

    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Bytes one decode step must move: every weight once (the embedding only one row, unless it is
/// also the lm_head), and the state (f32 conv windows, SSM state in its storage dtype) read
/// and written.
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

struct Speed {
    prefill_tok_s: f64,
    decode_tok_s: f64,
    /// Milliseconds per token by section (`--profile`), prefill then decode; empty otherwise.
    prefill_profile: Vec<(&'static str, f64)>,
    decode_profile: Vec<(&'static str, f64)>,
}

/// Seconds per section → milliseconds per token.
fn per_token_ms(sections: Vec<(&'static str, f64)>, tokens: usize) -> Vec<(&'static str, f64)> {
    sections.into_iter().map(|(n, s)| (n, s * 1e3 / tokens as f64)).collect()
}

fn measure(m: &Model, prefill: usize, decode: usize, seed: u64, profile: bool) -> Result<Speed> {
    let mut rng = Rng::new(seed);
    let vocab = m.vocab_size() as u64;
    let prompt: Vec<u32> = (0..prefill).map(|_| (rng.next_u64() % vocab) as u32).collect();
    // Warm-up: page in every weight once.
    m.forward_last(&mut m.new_state(), &prompt[..prompt.len().min(8)])?;
    let mut state = m.new_state();
    profile::enable(profile);
    profile::take();
    let t0 = Instant::now();
    let mut logits = m.forward_last(&mut state, &prompt)?;
    let prefill_s = t0.elapsed().as_secs_f64();
    let prefill_profile = per_token_ms(profile::take(), prefill);
    let t1 = Instant::now();
    for _ in 0..decode {
        let next = bimamba_lm::sampling::argmax(&logits) as u32;
        logits = m.step(&mut state, next)?;
    }
    let decode_s = t1.elapsed().as_secs_f64();
    let decode_profile = per_token_ms(profile::take(), decode);
    profile::enable(false);
    let (prefill_profile, decode_profile) =
        if profile { (prefill_profile, decode_profile) } else { (Vec::new(), Vec::new()) };
    Ok(Speed {
        prefill_tok_s: prefill as f64 / prefill_s,
        decode_tok_s: decode as f64 / decode_s,
        prefill_profile,
        decode_profile,
    })
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.decode_tokens == 0 || a.prefill_tokens == 0 {
        bail!("--decode-tokens and --prefill-tokens must be at least 1");
    }
    let state_dtype = crate::model_args::parse_state_dtype(&a.state_dtype)?;
    let binary_act = crate::binary_act::parse(&a.binary_act)?;
    let embed = EmbedStorage::from_name(&a.embed).map_err(|e| anyhow::anyhow!("--embed: {e}"))?;
    let with_embed = |mut m: Model| {
        if embed == EmbedStorage::Q8 {
            m.quantize_vocab_q8();
        }
        m.set_state_dtype(state_dtype);
        m.set_binary_act(binary_act);
        m
    };
    if let Some(name) = &a.isa {
        let isa = bimamba_kernels::Isa::from_name(name).map_err(|e| anyhow::anyhow!("--isa: {e}"))?;
        bimamba_kernels::set_isa(isa).map_err(|e| anyhow::anyhow!("--isa {name}: {e}"))?;
    }
    let threads = a.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads == 0 {
        bail!("--threads: expected at least 1, got 0");
    }
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global()?;

    let (label, model) = match (&a.shape, &a.model) {
        (Some(s), _) => {
            let cfg = shape_config(s).ok_or_else(|| {
                anyhow::anyhow!("--shape: unknown shape \"{s}\"; expected one of {}", SHAPES.join(", "))
            })?;
            (format!("shape {s} (random Bi-Mamba)"), with_embed(random_model(cfg, ProjFormat::Binary, 1)?))
        }
        (None, Some(dir)) => (dir.display().to_string(), with_embed(Model::load(dir)?)),
        (None, None) => bail!("give --shape {} or --model DIR", SHAPES.join("|")),
    };
    let isa = bimamba_kernels::selected_isa().name();
    let emb_storage = model.embedding.storage();
    let model_tied = model.lm_head.is_none();
    let bpt = bytes_per_token(&model);
    let model_state_bytes = model.new_state().bytes();
    let speed = measure(&model, a.prefill_tokens, a.decode_tokens, 7, a.profile)?;
    // Read before the bandwidth probe, whose 1 GiB buffer would dominate it.
    let rss = peak_rss_mb();
    let bw = bimamba_kernels::measure_read_bandwidth_gbs(1 << 30, threads);
    let ceiling = bw * 1e9 / bpt as f64;
    let fraction = speed.decode_tok_s / ceiling;

    // The same engine with dense projections, in the same run (after the peak RSS reading), with
    // the same embedding storage and state dtype, decoding the same number of tokens (up to 32).
    let mut dense = json!(null);
    if !a.no_dense {
        let cfg = model.config.clone();
        drop(model);
        let n = a.decode_tokens.min(32);
        let mut out = serde_json::Map::new();
        for (key, f) in [("bf16", ProjFormat::DenseBF16), ("f32", ProjFormat::DenseF32)] {
            let m = with_embed(random_model(cfg.clone(), f, 1)?);
            let s = measure(&m, 16, n, 7, false)?;
            out.insert(key.into(), json!({ "decode_tok_s": s.decode_tok_s, "bytes_per_token": bytes_per_token(&m) }));
        }
        dense = serde_json::Value::Object(out);
    }
    let dense_tok = |k: &str| dense.get(k).and_then(|v| v["decode_tok_s"].as_f64());
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let v = json!({
        "model": label,
        "command": command,
        "isa": isa,
        "threads": threads,
        "embedding": emb_storage,
        "state_dtype": state_dtype.name(),
        "binary_act": binary_act.name(),
        "binary_act_kernel": bimamba_kernels::act8_kernel(bimamba_kernels::selected_isa()).unwrap_or("scalar"),
        "state_bytes": model_state_bytes,
        "decode_tok_s": speed.decode_tok_s,
        "prefill_tok_s": speed.prefill_tok_s,
        "prefill_over_decode": speed.prefill_tok_s / speed.decode_tok_s,
        "bytes_per_token": bpt,
        "bandwidth_gbs": bw,
        "ceiling_tok_s": ceiling,
        "fraction_of_ceiling": fraction,
        "dense_bf16_decode_tok_s": dense_tok("bf16"),
        "dense_f32_decode_tok_s": dense_tok("f32"),
        "speedup_vs_dense_bf16": dense_tok("bf16").map(|d| speed.decode_tok_s / d),
        "peak_rss_mb": rss,
        "dense": dense,
        "profile_ms_per_token": if a.profile {
            let obj = |p: &[(&str, f64)]| p.iter().map(|&(n, v)| (n.to_string(), json!(v))).collect::<serde_json::Map<_, _>>();
            json!({ "prefill": obj(&speed.prefill_profile), "decode": obj(&speed.decode_profile) })
        } else {
            json!(null)
        },
    });
    if a.json {
        println!("{v}");
        return Ok(());
    }
    println!("command      {command}");
    println!("model        {label}");
    println!("isa/threads  {isa} / {threads}");
    println!("embedding    {emb_storage} (tied LM head: {})", model_tied);
    println!("state        SSM state in {state_dtype}, {:.1} MB", model_state_bytes as f64 / 1e6);
    println!(
        "1-bit acts   {binary_act}{}",
        match (binary_act, bimamba_kernels::act8_kernel(bimamba_kernels::selected_isa())) {
            (bimamba_engine::linear::BinaryAct::Int8, Some(k)) => format!(" ({k} kernel)"),
            (bimamba_engine::linear::BinaryAct::Int8, None) => " (scalar kernel on this ISA)".to_string(),
            _ => String::new(),
        }
    );
    println!("bandwidth    {bw:.2} GB/s (read, measured now)");
    println!("bytes/token  {:.1} MB  -> ceiling {ceiling:.2} tok/s", bpt as f64 / 1e6);
    println!("decode       {:.2} tok/s = {:.1}% of the ceiling", speed.decode_tok_s, 100.0 * fraction);
    println!(
        "prefill      {:.2} tok/s ({} tokens) = {:.1}x decode",
        speed.prefill_tok_s,
        a.prefill_tokens,
        speed.prefill_tok_s / speed.decode_tok_s
    );
    println!("peak RSS     {rss:.0} MiB");
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
