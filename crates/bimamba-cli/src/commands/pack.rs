//! `bimamba pack`: a latent Bi-Mamba checkpoint (weights + wscale/wbias), or an already packed
//! one, into the packed 1-bit format (see `bimamba_engine::pack`), optionally with an 8-bit
//! embedding / tied LM head (`--embed q8`). The output is a model directory every command accepts.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bimamba_engine::pack::{write_packed, EmbedStorage, KeepDType};
use bimamba_engine::{Config, Model};
use bimamba_formats::Checkpoint;
use clap::{Args, ValueEnum};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum KeepArg {
    /// Keep each tensor's stored precision.
    Source,
    F32,
    F16,
    Bf16,
}

/// Storage of the embedding / tied LM head (and an untied lm_head).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EmbedArg {
    /// As stored (as --dtype says when packing; bf16 for bench --shape).
    Dense,
    /// 8-bit rows with one f32 scale each (symmetric absmax; packed format version 2).
    Q8,
}

impl EmbedArg {
    pub fn storage(self) -> EmbedStorage {
        match self {
            EmbedArg::Dense => EmbedStorage::Dense,
            EmbedArg::Q8 => EmbedStorage::Q8,
        }
    }
}

#[derive(Args, Debug)]
pub struct PackArgs {
    /// Source model directory (a Bi-Mamba checkpoint with wscale/wbias).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,

    /// Output model directory (must not exist, or be empty).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Precision of the tensors that stay high precision (embedding, conv, norms, A_log, D, dt_bias).
    #[arg(long, value_enum, default_value = "source")]
    pub dtype: KeepArg,

    /// Storage of the embedding / tied LM head (and an untied lm_head); default: as the source
    /// stores it (q8 stays q8, anything else is dense).
    #[arg(long, value_enum, value_name = "dense|q8")]
    pub embed: Option<EmbedArg>,
}

pub fn run(a: PackArgs) -> Result<()> {
    let model = Model::load(&a.model)?;
    // Re-packing a packed model keeps its 8-bit embedding unless told otherwise.
    let embed = match a.embed {
        Some(e) => e.storage(),
        None if model.embedding.storage() == "q8" => EmbedStorage::Q8,
        None => EmbedStorage::Dense,
    };
    let src = Checkpoint::open(&a.model)?;
    let keep = match a.dtype {
        KeepArg::Source => KeepDType::Source,
        KeepArg::F32 => KeepDType::F32,
        KeepArg::F16 => KeepDType::F16,
        KeepArg::Bf16 => KeepDType::BF16,
    };
    let staging = staging_dir(&a.out)?;
    let result = (|| -> Result<(usize, u64, &'static str, usize)> {
        let r = write_packed(&model, &src, &staging, keep, embed)?;
        copy_into(&a.model.join("config.json"), &staging)?;
        let tok = a.model.join("tokenizer.json");
        if tok.is_file() {
            copy_into(&tok, &staging)?;
        }
        // The packed model must load and agree with its source before it replaces anything.
        let check = Model::load(&staging).context("the packed model does not load back")?;
        let _: &Config = &check.config;
        Ok((r.0, r.1, check.embedding.storage(), check.embedding.weight_bytes()))
    })();
    match result {
        Ok((matrices, bytes, emb_storage, emb_bytes)) => {
            finish_dir(&staging, &a.out)?;
            let src_bytes = src.file_bytes();
            eprintln!(
                "packed {matrices} projection matrices, embedding {emb_storage} ({:.2} MB): {} -> {} ({:.2} MB -> {:.2} MB, {:.1}x smaller)",
                emb_bytes as f64 / 1e6,
                a.model.display(),
                a.out.display(),
                src_bytes as f64 / 1e6,
                bytes as f64 / 1e6,
                src_bytes as f64 / bytes.max(1) as f64
            );
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

/// A fresh sibling directory to write into; the output appears only when complete.
pub fn staging_dir(out: &Path) -> Result<PathBuf> {
    if out.exists() {
        let empty = out.is_dir()
            && std::fs::read_dir(out).with_context(|| format!("{}: cannot read", out.display()))?.next().is_none();
        if !empty {
            bail!("{}: already exists and is not empty; choose another --out", out.display());
        }
    }
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("{}: cannot create", parent.display()))?;
    let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging).with_context(|| format!("{}: cannot create", staging.display()))?;
    Ok(staging)
}

/// Moves a completed staging directory into place.
pub fn finish_dir(staging: &Path, out: &Path) -> Result<()> {
    if out.is_dir() {
        std::fs::remove_dir(out).with_context(|| format!("{}: cannot replace the empty directory", out.display()))?;
    }
    std::fs::rename(staging, out).with_context(|| format!("{}: cannot move the result into place", out.display()))
}

fn copy_into(file: &Path, dir: &Path) -> Result<()> {
    let name = file.file_name().context("a file name")?;
    std::fs::copy(file, dir.join(name)).with_context(|| format!("{}: cannot copy", file.display()))?;
    Ok(())
}
