//! The decoding state, separate from the weights: per layer a conv window and an SSM state.
//! Constant size whatever the sequence length (no KV cache). It can be saved to and restored from
//! a safetensors file that records the shapes it belongs to and the SSM state's storage dtype.
//!
//! The SSM state is stored in f32 (a loaded model's own default, the exact arithmetic) or in bf16
//! (what the commands and `bimamba_models::Settings` choose unless asked to be exact): half the
//! bytes that decode reads and writes per token; the update and the readout still run in f32
//! (`bimamba_kernels::ssm::head_step_bf16`), and each new value is rounded to nearest even once.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use bimamba_formats::{Checkpoint, DType};
use bimamba_kernels::ssm::{bf16_round, bf16_widen};

use crate::config::Config;
use bimamba_lm::{ModelError, Result};

/// Format tag written into a saved state's metadata.
pub const STATE_FORMAT: &str = "bimamba-state";
/// Version 2 records `ssm_dtype`; version 1 files (f32 only) are still read.
pub const STATE_VERSION: &str = "2";

/// Storage precision of the SSM state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StateDtype {
    #[default]
    F32,
    Bf16,
}

impl StateDtype {
    pub fn name(self) -> &'static str {
        match self {
            StateDtype::F32 => "f32",
            StateDtype::Bf16 => "bf16",
        }
    }

    /// Bytes per stored SSM state element.
    pub fn bytes(self) -> usize {
        match self {
            StateDtype::F32 => 4,
            StateDtype::Bf16 => 2,
        }
    }
}

impl fmt::Display for StateDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for StateDtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(StateDtype::F32),
            "bf16" => Ok(StateDtype::Bf16),
            other => Err(format!("unknown state dtype {other:?}, expected f32 or bf16")),
        }
    }
}

/// The SSM state of one layer in its storage precision.
#[derive(Clone, Debug, PartialEq)]
pub enum SsmState {
    /// [H, P, N]
    F32(Vec<f32>),
    /// [H, P, N], bf16 bits (the high half of the f32 bits).
    Bf16(Vec<u16>),
}

impl SsmState {
    pub fn zeros(dtype: StateDtype, len: usize) -> SsmState {
        match dtype {
            StateDtype::F32 => SsmState::F32(vec![0.0; len]),
            StateDtype::Bf16 => SsmState::Bf16(vec![0; len]),
        }
    }

    pub fn dtype(&self) -> StateDtype {
        match self {
            SsmState::F32(_) => StateDtype::F32,
            SsmState::Bf16(_) => StateDtype::Bf16,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            SsmState::F32(v) => v.len(),
            SsmState::Bf16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values widened to f32 (exact).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            SsmState::F32(v) => v.clone(),
            SsmState::Bf16(v) => v.iter().map(|&h| bf16_widen(h)).collect(),
        }
    }

    /// The same values in another storage precision (bf16: rounded to nearest even).
    pub fn to_dtype(&self, dtype: StateDtype) -> SsmState {
        match (self, dtype) {
            (SsmState::F32(v), StateDtype::Bf16) => SsmState::Bf16(v.iter().map(|&x| bf16_round(x)).collect()),
            (_, StateDtype::F32) => SsmState::F32(self.to_f32()),
            (SsmState::Bf16(v), StateDtype::Bf16) => SsmState::Bf16(v.clone()),
        }
    }

    fn le_bytes(&self) -> Vec<u8> {
        match self {
            SsmState::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            SsmState::Bf16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct LayerState {
    /// [d_conv, conv_dim]: the last d_conv conv inputs, oldest first, one row per input (so the
    /// conv reads each tap as one contiguous row). Saved state files and mamba_ssm use the
    /// transpose, [conv_dim, d_conv]: see [`LayerState::conv_channel_major`].
    pub conv: Vec<f32>,
    /// [H, P, N]: S[h,p,n].
    pub ssm: SsmState,
}

impl LayerState {
    /// The zero state of one layer.
    pub fn new(cfg: &Config, dtype: StateDtype) -> LayerState {
        LayerState {
            conv: vec![0.0; cfg.conv_dim() * cfg.d_conv],
            ssm: SsmState::zeros(dtype, cfg.nheads * cfg.headdim * cfg.d_state),
        }
    }

    /// The conv window as mamba_ssm and state files hold it: [conv_dim, d_conv].
    pub fn conv_channel_major(&self, d_conv: usize) -> Vec<f32> {
        transpose(&self.conv, d_conv)
    }
}

/// [a, b] row-major → [b, a] row-major, where `a` = `rows`.
fn transpose(v: &[f32], rows: usize) -> Vec<f32> {
    let cols = v.len().checked_div(rows).unwrap_or(0);
    let mut out = vec![0.0; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

#[derive(Clone, Debug, PartialEq)]
pub struct State {
    pub layers: Vec<LayerState>,
    /// Tokens consumed so far.
    pub position: usize,
}

impl State {
    /// The zero state a sequence starts from, SSM state in f32.
    pub fn new(cfg: &Config) -> State {
        State::with_dtype(cfg, StateDtype::F32)
    }

    /// The zero state with the SSM state stored in `dtype`.
    pub fn with_dtype(cfg: &Config, dtype: StateDtype) -> State {
        State { layers: vec![LayerState::new(cfg, dtype); cfg.n_layer], position: 0 }
    }

    /// Storage precision of the SSM state (f32 for a model without layers).
    pub fn dtype(&self) -> StateDtype {
        self.layers.first().map_or(StateDtype::F32, |l| l.ssm.dtype())
    }

    /// Bytes of state (read and written once per decoded token): f32 conv windows and the SSM
    /// state in its storage precision.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| 4 * l.conv.len() + l.ssm.dtype().bytes() * l.ssm.len()).sum()
    }

    /// Writes the state atomically (temp file + rename) as safetensors.
    pub fn save(&self, cfg: &Config, path: &Path) -> Result<()> {
        let dtype = self.dtype();
        let st_dtype = match dtype {
            StateDtype::F32 => DType::F32,
            StateDtype::Bf16 => DType::BF16,
        };
        let mut owned: Vec<(String, DType, Vec<usize>, Vec<u8>)> = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let conv: Vec<u8> = l.conv_channel_major(cfg.d_conv).iter().flat_map(|x| x.to_le_bytes()).collect();
            owned.push((format!("layers.{i}.conv"), DType::F32, vec![cfg.conv_dim(), cfg.d_conv], conv));
            let shape = vec![cfg.nheads, cfg.headdim, cfg.d_state];
            owned.push((format!("layers.{i}.ssm"), st_dtype, shape, l.ssm.le_bytes()));
        }
        let tensors: Vec<(String, DType, Vec<usize>, &[u8])> =
            owned.iter().map(|(n, d, s, b)| (n.clone(), *d, s.clone(), b.as_slice())).collect();
        let mut meta = BTreeMap::new();
        meta.insert("format".to_string(), STATE_FORMAT.to_string());
        meta.insert("version".to_string(), STATE_VERSION.to_string());
        meta.insert("position".to_string(), self.position.to_string());
        meta.insert("n_layer".to_string(), cfg.n_layer.to_string());
        meta.insert("ssm_dtype".to_string(), dtype.name().to_string());
        bimamba_formats::write_safetensors_atomic(path, &tensors, &meta)?;
        Ok(())
    }

    /// Reads a state saved by [`State::save`], checking that it fits this model and that its SSM
    /// state is stored in `dtype` (a mismatch is refused, not converted).
    pub fn load(cfg: &Config, dtype: StateDtype, path: &Path) -> Result<State> {
        let ckpt = Checkpoint::open(path)?;
        let meta = ckpt.metadata();
        let invalid = |detail: String| ModelError::Invalid { file: path.to_path_buf(), detail };
        if meta.get("format").map(String::as_str) != Some(STATE_FORMAT) {
            return Err(invalid(format!("metadata `format` is {:?}, expected \"{STATE_FORMAT}\"", meta.get("format"))));
        }
        let saved = match meta.get("version").map(String::as_str) {
            Some("1") => StateDtype::F32,
            Some("2") => meta
                .get("ssm_dtype")
                .ok_or_else(|| invalid("metadata `ssm_dtype` is missing".into()))?
                .parse()
                .map_err(|e| invalid(format!("metadata `ssm_dtype`: {e}")))?,
            v => {
                return Err(invalid(format!(
                    "metadata `version` is {v:?}, this build reads versions 1 and {STATE_VERSION}"
                )))
            }
        };
        if saved != dtype {
            return Err(invalid(format!(
                "the SSM state was saved in {saved} but this run stores it in {dtype} (use --state-dtype {saved})"
            )));
        }
        let position = meta
            .get("position")
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| invalid("metadata `position` is missing or not an integer".into()))?;
        let mut state = State::with_dtype(cfg, dtype);
        state.position = position;
        for (i, l) in state.layers.iter_mut().enumerate() {
            let conv_shape = vec![cfg.conv_dim(), cfg.d_conv];
            let ssm_shape = vec![cfg.nheads, cfg.headdim, cfg.d_state];
            for (name, shape) in [(format!("layers.{i}.conv"), conv_shape), (format!("layers.{i}.ssm"), ssm_shape)] {
                let info = ckpt.info(&name).ok_or_else(|| ModelError::MissingTensor {
                    file: path.to_path_buf(),
                    tensor: name.clone(),
                    hint: format!(" (the state has fewer than the model's {} layers)", cfg.n_layer),
                })?;
                if info.shape != shape {
                    return Err(ModelError::Shape {
                        file: path.to_path_buf(),
                        tensor: name,
                        expected: shape,
                        actual: info.shape.clone(),
                    });
                }
            }
            l.conv = transpose(&ckpt.to_f32(&format!("layers.{i}.conv"))?, cfg.conv_dim());
            let name = format!("layers.{i}.ssm");
            l.ssm = match dtype {
                StateDtype::F32 => SsmState::F32(ckpt.to_f32(&name)?),
                StateDtype::Bf16 => {
                    let info = ckpt.info(&name).expect("checked above");
                    if info.dtype != DType::BF16 {
                        return Err(invalid(format!("tensor `{name}` is {}, expected BF16", info.dtype.name())));
                    }
                    SsmState::Bf16(
                        ckpt.bytes(&name)?.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect(),
                    )
                }
            };
        }
        Ok(state)
    }
}
