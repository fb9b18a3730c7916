//! What a path holds ([`ModelKind`]) and the run-time settings chosen when a model is opened
//! ([`Settings`]), with the one table of which setting applies to which kind of model.

use std::io::Read;
use std::path::{Path, PathBuf};

use bimamba_engine::linear::BinaryAct;
use bimamba_engine::StateDtype;
use bimamba_llama::Activations;
use bimamba_lm::{ModelError, Result};

/// The two kinds of model this workspace runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// A Mamba-2 / Bi-Mamba model directory (`config.json`, weights, usually `tokenizer.json`).
    Mamba,
    /// A LLaMA-architecture GGUF file (the SmolLM2 teacher), tokenizer included.
    Llama,
}

impl ModelKind {
    /// A file that starts with GGUF's magic bytes is a LLaMA GGUF; anything else is taken for a
    /// Mamba model directory, whose loader then names what is missing or wrong.
    pub fn of(path: &Path) -> Result<ModelKind> {
        if !path.is_file() {
            return Ok(ModelKind::Mamba);
        }
        let io = |source| ModelError::Io { path: path.to_path_buf(), source };
        let mut magic = [0u8; 4];
        let mut f = std::fs::File::open(path).map_err(io)?;
        let n = f.read(&mut magic).map_err(io)?;
        if n == 4 && &magic == b"GGUF" {
            return Ok(ModelKind::Llama);
        }
        // A file named .gguf that lacks the magic is a damaged or mislabelled GGUF, not a
        // misplaced model directory: say so.
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            let shown: Vec<String> = magic[..n].iter().map(|b| format!("{b:02x}")).collect();
            return Err(ModelError::Invalid {
                file: path.to_path_buf(),
                detail: format!(
                    "not a GGUF file: it begins with the bytes [{}], not the magic \"GGUF\" (47 47 55 46)",
                    shown.join(" ")
                ),
            });
        }
        Ok(ModelKind::Mamba)
    }

    /// The architecture's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Mamba => "Mamba-2",
            ModelKind::Llama => "LLaMA",
        }
    }
}

/// How a model runs, chosen when it is opened. Each setting belongs to one kind of model; its
/// default means "unchanged" and is accepted by both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Activations of a GGUF model's block-quantized products (LLaMA only).
    pub gguf_act: Activations,
    /// Storage precision of the SSM state (Mamba only).
    pub state_dtype: StateDtype,
    /// Activations of the 1-bit projections (Mamba only).
    pub binary_act: BinaryAct,
}

/// A setting that the model at `file` cannot honour.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{setting} {value}: {} {reason}", .file.display())]
pub struct SettingError {
    pub file: PathBuf,
    /// The setting's name as results record it: `gguf_act`, `state_dtype` or `binary_act`.
    pub setting: &'static str,
    pub value: &'static str,
    /// Completes "FILE …": why the setting does not apply.
    pub reason: &'static str,
}

impl Settings {
    /// Refuses every setting other than its default that `kind` has no use for.
    pub fn check(&self, kind: ModelKind, file: &Path) -> std::result::Result<(), SettingError> {
        let refuse = |setting, value, reason| Err(SettingError { file: file.to_path_buf(), setting, value, reason });
        match kind {
            ModelKind::Mamba if self.gguf_act != Activations::F32 => refuse(
                "gguf_act",
                self.gguf_act.name(),
                "is not a .gguf model (the setting applies to GGUF LLaMA models only)",
            ),
            ModelKind::Llama if self.state_dtype != StateDtype::F32 => {
                refuse("state_dtype", self.state_dtype.name(), "is a LLaMA-architecture model, which has no SSM state")
            }
            ModelKind::Llama if self.binary_act != BinaryAct::F32 => refuse(
                "binary_act",
                self.binary_act.name(),
                "is a LLaMA-architecture model, which has no 1-bit projections",
            ),
            _ => Ok(()),
        }
    }
}
