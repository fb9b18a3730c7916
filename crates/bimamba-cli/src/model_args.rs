//! The options every model-consuming command shares: which model, which tokenizer, how to run.
//!
//! `--model` names a Mamba-2 / Bi-Mamba model directory or a LLaMA-architecture `.gguf` file
//! (the SmolLM2 teacher); [`ModelArgs::load`] returns either as a [`LoadedModel`], and
//! [`with_model!`] runs code generic over `LanguageModel` on whichever it is.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bimamba_engine::{Model, StateDtype};
use bimamba_formats::Checkpoint;
use bimamba_llama::{Activations, LlamaModel};
use bimamba_lm::LanguageModel;
use bimamba_text::Tokenizer;
use clap::Args;

/// Where the default model lives, relative to the repository root or the current directory.
pub const DEFAULT_MODEL: &str = "models/default";

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model directory (config.json + model.safetensors or pytorch_model.bin, and usually
    /// tokenizer.json), or a LLaMA-architecture .gguf file (its tokenizer is read from the file).
    /// Defaults to $BIMAMBA_MODEL, else the model shipped in models/default.
    #[arg(long, value_name = "DIR|FILE.gguf")]
    pub model: Option<PathBuf>,

    /// Tokenizer file (tokenizer.json) to use instead of the model directory's.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,

    /// Kernel instruction set: scalar, avx2, avx512 or neon (default: the best this CPU has;
    /// also settable with BIMAMBA_ISA).
    #[arg(long, value_name = "ISA")]
    pub isa: Option<String>,

    /// Worker threads for the kernels (default: all cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Activations in the products of a .gguf model's quantized (Q8_0/Q4_0/Q4_1) matrices: f32
    /// (the exact product on the dequantized weights) or q8 (8-bit per block of 32 and integer
    /// dot products, as llama.cpp computes; about 3x faster with AVX-512 VNNI).
    #[arg(long, value_name = "f32|q8", default_value = "f32")]
    pub gguf_act: String,
}

impl ModelArgs {
    /// Applies --isa and --threads; call once before any model work.
    pub fn setup_runtime(&self) -> Result<()> {
        if let Some(name) = &self.isa {
            let isa = bimamba_kernels::Isa::from_name(name).map_err(|e| anyhow::anyhow!("--isa: {e}"))?;
            bimamba_kernels::set_isa(isa).map_err(|e| anyhow::anyhow!("--isa {name}: {e}"))?;
        }
        if let Some(n) = self.threads {
            if n == 0 {
                bail!("--threads: expected at least 1, got 0");
            }
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build_global()
                .context("--threads: could not start the thread pool")?;
        }
        Ok(())
    }

    /// The model directory: --model, else $BIMAMBA_MODEL, else models/default found from the
    /// current directory or next to the executable (target/release/bimamba → repo root).
    pub fn model_dir(&self) -> Result<PathBuf> {
        if let Some(m) = &self.model {
            return Ok(m.clone());
        }
        if let Some(env) = std::env::var_os("BIMAMBA_MODEL") {
            return Ok(PathBuf::from(env));
        }
        let mut candidates = vec![PathBuf::from(DEFAULT_MODEL)];
        if let Ok(exe) = std::env::current_exe() {
            candidates.extend(exe.ancestors().skip(1).map(|a| a.join(DEFAULT_MODEL)));
        }
        candidates
            .into_iter()
            .find(|c| c.join("config.json").is_file())
            .ok_or_else(|| anyhow::anyhow!("no --model given and no default model found in ./{DEFAULT_MODEL}"))
    }

    /// Loads the model and its tokenizer (--tokenizer, else the model directory's tokenizer.json,
    /// else, for a GGUF file, the tokenizer stored in it); returns them with the model's path.
    pub fn load(&self) -> Result<(LoadedModel, Tokenizer, PathBuf)> {
        self.setup_runtime()?;
        let path = self.model_dir()?;
        let act: Activations = self.gguf_act.parse().map_err(|e| anyhow::anyhow!("--gguf-act: {e}"))?;
        if is_gguf(&path)? {
            let ck = Checkpoint::open(&path)?;
            let model = LlamaModel::from_checkpoint_with(&ck, act)?;
            let tok = match &self.tokenizer {
                Some(p) => Tokenizer::from_file(p)?,
                None => bimamba_llama::gguf_tokenizer(&ck)?,
            };
            check_vocab(&model, &tok, &path)?;
            return Ok((LoadedModel::Llama(model), tok, path));
        }
        if act != Activations::F32 {
            bail!(
                "--gguf-act {act}: {} is not a .gguf model (the option applies to GGUF LLaMA models only)",
                path.display()
            );
        }
        let model = Model::load(&path)?;
        let tok = Tokenizer::for_model(&path, self.tokenizer.as_deref())?;
        check_vocab(&model, &tok, &path)?;
        Ok((LoadedModel::Mamba(model), tok, path))
    }
}

/// Parses `--state-dtype` (one line on a bad value).
pub fn parse_state_dtype(name: &str) -> Result<StateDtype> {
    name.parse().map_err(|e| anyhow::anyhow!("--state-dtype: {e}"))
}

/// Applies `--state-dtype` to a loaded model; a LLaMA model has no SSM state, so only f32 (the
/// default, meaning "unchanged") is accepted for it.
pub fn apply_state_dtype(model: &mut LoadedModel, dtype: StateDtype, path: &Path) -> Result<()> {
    match model {
        LoadedModel::Mamba(m) => m.set_state_dtype(dtype),
        LoadedModel::Llama(_) if dtype != StateDtype::F32 => {
            bail!("--state-dtype {dtype}: {} is a LLaMA-architecture model, which has no SSM state", path.display())
        }
        LoadedModel::Llama(_) => {}
    }
    Ok(())
}

/// A file that starts with GGUF's magic bytes.
fn is_gguf(path: &Path) -> Result<bool> {
    if !path.is_file() {
        return Ok(false);
    }
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let n = f.read(&mut magic).with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(n == 4 && &magic == b"GGUF")
}

/// A model of either engine. Code generic over [`LanguageModel`] runs on it through
/// [`with_model!`].
pub enum LoadedModel {
    /// Mamba-2 or Bi-Mamba (a model directory).
    Mamba(Model),
    /// A LLaMA-architecture GGUF model (the SmolLM2 teacher).
    Llama(LlamaModel),
}

/// `with_model!(&loaded, m => expr)` evaluates `expr` with `m` bound to the concrete model
/// (`&Model` or `&LlamaModel`), so a generic function is instantiated for each engine.
macro_rules! with_model {
    ($loaded:expr, $m:ident => $body:expr) => {
        match $loaded {
            $crate::model_args::LoadedModel::Mamba($m) => $body,
            $crate::model_args::LoadedModel::Llama($m) => $body,
        }
    };
}
pub(crate) use with_model;

/// Every id the tokenizer can produce must index a row of the embedding.
pub fn check_vocab<M: LanguageModel>(model: &M, tok: &Tokenizer, dir: &Path) -> Result<()> {
    if tok.vocab_size() > model.vocab_size() {
        bail!(
            "{}: the tokenizer has {} entries but the model {} has only {} embedding rows; use the model's own tokenizer",
            tok.path().display(),
            tok.vocab_size(),
            dir.display(),
            model.vocab_size()
        );
    }
    Ok(())
}
