//! The options every model command shares: which model, which tokenizer, how to run it.
//!
//! `--model` names a Mamba-2 / Bi-Mamba model directory or a LLaMA-architecture `.gguf` file
//! (the SmolLM2 teacher); [`ModelArgs::open`] returns either as a `bimamba_models::AnyModel`,
//! which runs code generic over `LanguageModel` on whichever it is.

use std::path::PathBuf;

use anyhow::Result;
use bimamba_engine::Model;
use bimamba_models::{AnyModel, ModelKind, OpenError};
use bimamba_text::Tokenizer;
use clap::Args;

use crate::runtime_args::{setting_error, RuntimeArgs};

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

    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// A model opened for a command, with its tokenizer and where it came from.
pub struct Opened {
    pub model: AnyModel,
    pub tokenizer: Tokenizer,
    pub path: PathBuf,
}

impl ModelArgs {
    /// The model path: --model, else $BIMAMBA_MODEL, else models/default found from the
    /// current directory or next to the executable (target/release/bimamba → repo root).
    pub fn model_path(&self) -> Result<PathBuf> {
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

    /// Sets up the kernels, then opens the model with the runtime options applied and its
    /// tokenizer (--tokenizer, else the model directory's tokenizer.json, else, for a GGUF file,
    /// the tokenizer stored in it).
    pub fn open(&self) -> Result<Opened> {
        self.runtime.setup()?;
        let path = self.model_path()?;
        let model = AnyModel::open_with(&path, &self.runtime.settings()).map_err(cli_error)?;
        let tokenizer = model.open_tokenizer(&path, self.tokenizer.as_deref()).map_err(cli_error)?;
        Ok(Opened { model, tokenizer, path })
    }

    /// For commands that read Mamba-2 / Bi-Mamba directories only (`what` names the command):
    /// sets up the kernels and loads the model with the runtime options applied. A GGUF file is
    /// refused before it is loaded.
    pub fn open_mamba(&self, what: &str) -> Result<(Model, PathBuf)> {
        self.runtime.setup()?;
        let path = self.model_path()?;
        let refuse = || {
            anyhow::anyhow!("{}: {what} reads Mamba-2 / Bi-Mamba model directories, not .gguf files", path.display())
        };
        // Checked first, so that a GGUF file is refused without loading it.
        if ModelKind::of(&path)? == ModelKind::Llama {
            return Err(refuse());
        }
        match AnyModel::open_with(&path, &self.runtime.settings()).map_err(cli_error)? {
            AnyModel::Mamba(m) => Ok((m, path)),
            AnyModel::Llama(_) => Err(refuse()),
        }
    }
}

/// An error opening a model, with a refused setting named by its flag.
pub fn cli_error(e: OpenError) -> anyhow::Error {
    match e {
        OpenError::Setting(s) => setting_error(&s),
        other => other.into(),
    }
}
