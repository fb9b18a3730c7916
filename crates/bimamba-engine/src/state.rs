//! The decoding state, separate from the weights: per layer a conv window and an SSM state.
//! Constant size whatever the sequence length (no KV cache). It can be saved to and restored from
//! a safetensors file that records the shapes it belongs to.

use std::collections::BTreeMap;
use std::path::Path;

use bimamba_formats::{Checkpoint, DType};

use crate::config::Config;
use crate::error::{EngineError, Result};

/// Format tag written into a saved state's metadata.
pub const STATE_FORMAT: &str = "bimamba-state";
pub const STATE_VERSION: &str = "1";

#[derive(Clone, Debug, PartialEq)]
pub struct LayerState {
    /// [conv_dim, d_conv]: the last d_conv conv inputs of each channel, oldest first (as mamba_ssm).
    pub conv: Vec<f32>,
    /// [H, P, N]: S[h,p,n].
    pub ssm: Vec<f32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct State {
    pub layers: Vec<LayerState>,
    /// Tokens consumed so far.
    pub position: usize,
}

impl State {
    /// The zero state a sequence starts from.
    pub fn new(cfg: &Config) -> State {
        let layer = LayerState {
            conv: vec![0.0; cfg.conv_dim() * cfg.d_conv],
            ssm: vec![0.0; cfg.nheads * cfg.headdim * cfg.d_state],
        };
        State { layers: vec![layer; cfg.n_layer], position: 0 }
    }

    /// Bytes of f32 state (read and written once per decoded token).
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| 4 * (l.conv.len() + l.ssm.len())).sum()
    }

    /// Writes the state atomically (temp file + rename) as safetensors.
    pub fn save(&self, cfg: &Config, path: &Path) -> Result<()> {
        let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            owned.push((format!("layers.{i}.conv"), vec![cfg.conv_dim(), cfg.d_conv], f32_bytes(&l.conv)));
            owned.push((format!("layers.{i}.ssm"), vec![cfg.nheads, cfg.headdim, cfg.d_state], f32_bytes(&l.ssm)));
        }
        let tensors: Vec<(String, DType, Vec<usize>, &[u8])> =
            owned.iter().map(|(n, s, b)| (n.clone(), DType::F32, s.clone(), b.as_slice())).collect();
        let mut meta = BTreeMap::new();
        meta.insert("format".to_string(), STATE_FORMAT.to_string());
        meta.insert("version".to_string(), STATE_VERSION.to_string());
        meta.insert("position".to_string(), self.position.to_string());
        meta.insert("n_layer".to_string(), cfg.n_layer.to_string());
        bimamba_formats::write_safetensors_atomic(path, &tensors, &meta)?;
        Ok(())
    }

    /// Reads a state saved by [`State::save`], checking that it fits this model.
    pub fn load(cfg: &Config, path: &Path) -> Result<State> {
        let ckpt = Checkpoint::open(path)?;
        let meta = ckpt.metadata();
        let invalid = |detail: String| EngineError::Invalid { file: path.to_path_buf(), detail };
        if meta.get("format").map(String::as_str) != Some(STATE_FORMAT) {
            return Err(invalid(format!("metadata `format` is {:?}, expected \"{STATE_FORMAT}\"", meta.get("format"))));
        }
        if meta.get("version").map(String::as_str) != Some(STATE_VERSION) {
            return Err(invalid(format!(
                "metadata `version` is {:?}, this build reads version {STATE_VERSION}",
                meta.get("version")
            )));
        }
        let position = meta
            .get("position")
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| invalid("metadata `position` is missing or not an integer".into()))?;
        let mut state = State::new(cfg);
        state.position = position;
        for (i, l) in state.layers.iter_mut().enumerate() {
            for (name, shape, dst) in [
                (format!("layers.{i}.conv"), vec![cfg.conv_dim(), cfg.d_conv], &mut l.conv),
                (format!("layers.{i}.ssm"), vec![cfg.nheads, cfg.headdim, cfg.d_state], &mut l.ssm),
            ] {
                let info = ckpt.info(&name).ok_or_else(|| EngineError::MissingTensor {
                    file: path.to_path_buf(),
                    tensor: name.clone(),
                    hint: format!(" (the state has fewer than the model's {} layers)", cfg.n_layer),
                })?;
                if info.shape != shape {
                    return Err(EngineError::Shape {
                        file: path.to_path_buf(),
                        tensor: name,
                        expected: shape,
                        actual: info.shape.clone(),
                    });
                }
                *dst = ckpt.to_f32(&name)?;
            }
        }
        Ok(state)
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
