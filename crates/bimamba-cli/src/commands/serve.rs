//! `bimamba serve`: an OpenAI-compatible HTTP server (crates/bimamba-serve, docs/SERVING.md).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bimamba_engine::random::{random_model, shape_config, ProjFormat, SHAPES};
use bimamba_models::{check_vocab, AnyModel, ModelKind};
use bimamba_serve::{ChatTemplate, ServeOptions, Server};
use bimamba_text::Tokenizer;
use clap::Args;

use crate::model_args::ModelArgs;
use crate::runtime_args::setting_error;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Address to listen on. The default answers this machine only; 0.0.0.0 answers every
    /// network the machine is on (then give --api-key).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,

    /// Sequences decoded together in one batched step at most.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub max_batch: u64,

    /// Requests waiting for a place in the batch at most; more are answered 429.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_queue: u64,

    /// Memory for the prefix-state cache, in MiB (0: no cache).
    #[arg(long, value_name = "M", default_value_t = 512)]
    pub state_cache_mb: usize,

    /// Require `Authorization: Bearer KEY` on every endpoint but /health (also read from
    /// $BIMAMBA_API_KEY).
    #[arg(long, value_name = "KEY", env = "BIMAMBA_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Longest prompt accepted, in tokens.
    #[arg(long, value_name = "N", default_value_t = 16384, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_prompt_tokens: u64,

    /// Largest `max_tokens` a request may ask for.
    #[arg(long, value_name = "N", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_tokens_limit: u64,

    /// The model's id in /v1/models and requests (default: the model's file or directory name).
    #[arg(long, value_name = "NAME")]
    pub model_name: Option<String>,

    /// Seconds that running requests may take to finish after SIGTERM before they are cancelled.
    #[arg(long, value_name = "S", default_value_t = 30)]
    pub drain_timeout: u64,

    /// Chat template: a Jinja file, or `builtin` for the plain `User:` / `Assistant:` transcript
    /// (default: the model's own, from chat_template.jinja or tokenizer_config.json next to its
    /// tokenizer.json or from its GGUF metadata, else the transcript).
    #[arg(long, value_name = "FILE|builtin")]
    pub chat_template: Option<String>,

    /// Serve a random Bi-Mamba of one of the paper's shapes instead of --model (for load tests;
    /// it writes noise). Needs --tokenizer with at most 32000 entries.
    #[arg(long, value_name = "SHAPE", conflicts_with = "model")]
    pub shape: Option<String>,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let (model, tokenizer, default_id, path) = match &a.shape {
        Some(shape) => {
            let (model, tokenizer, id) = random_shape(&a, shape)?;
            (model, tokenizer, id, None)
        }
        None => {
            let opened = a.model.open()?;
            let id = opened.path.file_stem().map_or_else(|| "model".to_string(), |n| n.to_string_lossy().into_owned());
            (opened.model, opened.tokenizer, id, Some(opened.path))
        }
    };
    let chat = ChatTemplate::load(path.as_deref(), &tokenizer, a.chat_template.as_deref())?;
    let options = ServeOptions {
        addr: SocketAddr::new(a.host, a.port),
        model_id: a.model_name.clone().unwrap_or(default_id),
        max_batch: a.max_batch as usize,
        max_queue: a.max_queue as usize,
        state_cache_bytes: a.state_cache_mb.saturating_mul(1 << 20),
        api_key: a.api_key.clone().filter(|k| !k.is_empty()),
        max_prompt_tokens: a.max_prompt_tokens as usize,
        max_tokens: a.max_tokens_limit as usize,
        drain_timeout: Duration::from_secs(a.drain_timeout),
    };
    if !a.host.is_loopback() && options.api_key.is_none() {
        eprintln!("warning: --host {}: listening beyond this machine without --api-key", a.host);
    }
    let chat_format = chat.describe();
    let server = Server::bind_with_template(model, tokenizer, chat, &options)?;
    let addr = server.local_addr().context("the listening socket has no address")?;
    eprintln!(
        "serving `{}` on http://{addr} (max batch {}, queue {}, state cache {} MiB, chat: {chat_format}{})",
        options.model_id,
        options.max_batch,
        options.max_queue,
        a.state_cache_mb,
        if options.api_key.is_some() { ", API key required" } else { "" }
    );
    server.run(bimamba_serve::termination_signal())?;
    Ok(())
}

/// A random 1-bit model of a paper shape with the runtime options applied, and the tokenizer
/// given with --tokenizer.
fn random_shape(a: &ServeArgs, shape: &str) -> Result<(AnyModel, Tokenizer, String)> {
    let settings = a.model.runtime.settings();
    let label = format!("--shape {shape}");
    settings.check(ModelKind::Mamba, Path::new(&label)).map_err(|e| setting_error(&e))?;
    let cfg = shape_config(shape)
        .ok_or_else(|| anyhow::anyhow!("--shape {shape}: unknown shape; expected one of {}", SHAPES.join(", ")))?;
    let Some(tok_path) = &a.model.tokenizer else {
        bail!("--shape {shape}: give --tokenizer FILE (a random model has no tokenizer of its own)");
    };
    a.model.runtime.setup()?;
    let tokenizer = Tokenizer::from_file(tok_path)?;
    let mut m = random_model(cfg, ProjFormat::Binary, 1)?;
    m.set_state_dtype(settings.state_dtype());
    m.set_binary_act(settings.binary_act());
    check_vocab(&m, &tokenizer, Path::new(&label))?;
    Ok((AnyModel::Mamba(m), tokenizer, format!("random-{shape}")))
}
