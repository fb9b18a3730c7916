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

/// How a model runs, chosen when it is opened. Each setting belongs to one kind of model.
///
/// The default is the fast arithmetic, as llama.cpp's is: a Mamba model's 1-bit products take
/// int8 activations (where this CPU has a SIMD kernel for them, see
/// [`BinaryAct::fastest`]) and its SSM state is stored in bf16; a GGUF model keeps f32
/// activations. [`Settings::exact`] asks for the reference arithmetic instead (f32 activations,
/// f32 state). A field left `None` takes that default; a field set names a choice the model
/// must have a use for ([`Settings::check`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Activations of a GGUF model's block-quantized products (LLaMA only).
    pub gguf_act: Activations,
    /// Storage precision of the SSM state (Mamba only); `None`: bf16, f32 when `exact`.
    pub state_dtype: Option<StateDtype>,
    /// Activations of the 1-bit projections (Mamba only); `None`: int8 where this CPU has a SIMD
    /// kernel for it, f32 when `exact`.
    pub binary_act: Option<BinaryAct>,
    /// The reference arithmetic for whatever is not set: f32 activations and f32 state.
    pub exact: bool,
}

impl Settings {
    /// The reference arithmetic: f32 activations for the 1-bit products, f32 SSM state, f32 GGUF
    /// activations.
    pub fn exact() -> Settings {
        Settings { exact: true, ..Settings::default() }
    }

    /// The SSM state precision a Mamba model runs with.
    pub fn state_dtype(&self) -> StateDtype {
        self.state_dtype.unwrap_or(if self.exact { StateDtype::F32 } else { StateDtype::Bf16 })
    }

    /// The activation precision of a Mamba model's 1-bit products.
    pub fn binary_act(&self) -> BinaryAct {
        self.binary_act.unwrap_or(if self.exact { BinaryAct::F32 } else { BinaryAct::fastest() })
    }
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
    /// Refuses every setting that `kind` has no use for: a GGUF activation other than f32 for a
    /// Mamba model, an SSM state or 1-bit activation precision set for a LLaMA model.
    pub fn check(&self, kind: ModelKind, file: &Path) -> std::result::Result<(), SettingError> {
        let refuse = |setting, value, reason| Err(SettingError { file: file.to_path_buf(), setting, value, reason });
        match kind {
            ModelKind::Mamba if self.gguf_act != Activations::F32 => refuse(
                "gguf_act",
                self.gguf_act.name(),
                "is not a .gguf model (the setting applies to GGUF LLaMA models only)",
            ),
            ModelKind::Llama if self.state_dtype.is_some() => refuse(
                "state_dtype",
                self.state_dtype().name(),
                "is a LLaMA-architecture model, which has no SSM state",
            ),
            ModelKind::Llama if self.binary_act.is_some() => refuse(
                "binary_act",
                self.binary_act().name(),
                "is a LLaMA-architecture model, which has no 1-bit projections",
            ),
            _ => Ok(()),
        }
    }
}
