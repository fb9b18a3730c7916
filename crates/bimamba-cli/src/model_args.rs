//! The options every model-consuming command shares: which model, which tokenizer, how to run.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bimamba_engine::{LanguageModel, Model};
use bimamba_text::Tokenizer;
use clap::Args;

/// Where the default model lives, relative to the repository root or the current directory.
pub const DEFAULT_MODEL: &str = "models/default";

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model directory (config.json + model.safetensors or pytorch_model.bin, and usually
    /// tokenizer.json). Defaults to $BIMAMBA_MODEL, else the model shipped in models/default.
    #[arg(long, value_name = "DIR")]
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

    pub fn load(&self) -> Result<(Model, Tokenizer, PathBuf)> {
        self.setup_runtime()?;
        let dir = self.model_dir()?;
        let model = Model::load(&dir)?;
        let tok = Tokenizer::for_model(&dir, self.tokenizer.as_deref())?;
        check_vocab(&model, &tok, &dir)?;
        Ok((model, tok, dir))
    }
}

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
