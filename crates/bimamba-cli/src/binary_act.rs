//! `--binary-act f32|int8`: the activation precision of the 1-bit projections (generate, eval
//! ppl, eval tasks, bench). f32 is Bi-Mamba's own arithmetic and the default; int8 quantizes each
//! token's input to int8 and runs integer dot products (AVX512-VNNI or AVX2; the scalar twin elsewhere),
//! with the perplexity change measured in crates/bimamba-kernels/KERNELS.md.

use std::path::Path;

use anyhow::{bail, Result};
use bimamba_engine::linear::BinaryAct;

use crate::model_args::LoadedModel;

/// Help text shared by every command that takes the flag.
pub const HELP: &str = "Activations of the 1-bit projections: f32 (default; exact Bi-Mamba arithmetic) or int8 \
    (per-token int8 and integer dot products, faster with AVX512-VNNI or AVX2; changes perplexity slightly, \
    see crates/bimamba-kernels/KERNELS.md). Mamba-2 / Bi-Mamba models only.";

/// Parses `--binary-act` (one line on a bad value).
pub fn parse(name: &str) -> Result<BinaryAct> {
    name.parse().map_err(|e| anyhow::anyhow!("--binary-act: {e}"))
}

/// Applies `--binary-act` to a loaded model; a LLaMA model has no 1-bit projections, so only f32
/// (the default, meaning "unchanged") is accepted for it.
pub fn apply(model: &mut LoadedModel, act: BinaryAct, path: &Path) -> Result<()> {
    match model {
        LoadedModel::Mamba(m) => m.set_binary_act(act),
        LoadedModel::Llama(_) if act != BinaryAct::F32 => {
            bail!(
                "--binary-act {act}: {} is a LLaMA-architecture model, which has no 1-bit projections",
                path.display()
            )
        }
        LoadedModel::Llama(_) => {}
    }
    Ok(())
}
