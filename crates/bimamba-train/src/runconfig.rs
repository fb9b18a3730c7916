//! The training run configuration: one TOML file with `[model]`, `[data]`, `[optim]`, `[loss]`,
//! `[teacher]` and `[train]` sections. The resolved form (defaults filled in, vocabulary taken
//! from the data) is written to the run directory before step 0.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::ModelSpec;
use crate::error::{Error, Result};
use crate::loss::LossMix;
use crate::optim::OptimConfig;

/// Where batches come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A directory written by `data prepare` (relative paths are relative to the config file).
    pub dir: PathBuf,
    /// Tokens per training window.
    pub seq_len: usize,
    /// Windows per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[serde(default = "one")]
    pub grad_accum: usize,
}

fn one() -> usize {
    1
}

/// The frozen teacher of autoregressive distillation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum TeacherConfig {
    /// No teacher: next-token cross-entropy only.
    #[default]
    None,
    /// A full-precision Mamba-2 model directory, run in-process.
    Mamba {
        /// The model directory (config.json, model.safetensors, tokenizer.json).
        path: PathBuf,
    },
    /// A LLaMA-architecture GGUF file (e.g. SmolLM2-135M), dequantized to f32 and run in-process.
    Gguf {
        /// The .gguf file.
        path: PathBuf,
    },
    /// Top-k log-probabilities precomputed by `teacher-logits`.
    Topk {
        /// The file.
        path: PathBuf,
    },
}

/// Loop settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoopConfig {
    /// Optimizer steps.
    pub steps: u64,
    /// Seed of the initialization and of the window sampler.
    #[serde(default)]
    pub seed: u64,
    /// Measure validation loss every this many steps (0: only at the end).
    #[serde(default)]
    pub eval_every: u64,
    /// Validation windows (non-overlapping, from the start of val.tok).
    #[serde(default = "eval_windows")]
    pub eval_windows: usize,
    /// Write a checkpoint every this many steps (0: only at the end).
    #[serde(default)]
    pub checkpoint_every: u64,
    /// Checkpoints kept on disk.
    #[serde(default = "keep")]
    pub keep_checkpoints: usize,
    /// "ndarray" (CPU) or "cuda".
    #[serde(default = "backend")]
    pub backend: String,
    /// Run directory when `--out` is not given.
    #[serde(default)]
    pub out: Option<PathBuf>,
    /// Dtype of the projection and LM-head matrix products: "f32" (default), "bf16" or "f16".
    /// Latent weights, optimizer state, residual stream, norms and the SSD stay f32.
    #[serde(default)]
    pub matmul_dtype: Option<String>,
}

/// Parses a matmul dtype name.
pub fn parse_dtype(name: Option<&str>) -> Result<Option<burn::tensor::DType>> {
    use burn::tensor::DType;
    match name {
        None | Some("f32") => Ok(None),
        Some("bf16") => Ok(Some(DType::BF16)),
        Some("f16") => Ok(Some(DType::F16)),
        Some(other) => Err(Error::Config(format!("train.matmul_dtype `{other}`: use f32, bf16 or f16"))),
    }
}

fn eval_windows() -> usize {
    16
}
fn keep() -> usize {
    2
}
fn backend() -> String {
    "ndarray".into()
}

/// A whole training configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Architecture (`vocab_size` may be omitted: it is taken from the data).
    pub model: ModelSpec,
    /// Batches.
    pub data: DataConfig,
    /// AdamW and schedule.
    #[serde(default)]
    pub optim: OptimConfig,
    /// Objective weights.
    #[serde(default)]
    pub loss: LossMix,
    /// Teacher.
    #[serde(default)]
    pub teacher: TeacherConfig,
    /// Loop.
    pub train: LoopConfig,
}

impl TrainConfig {
    /// Reads a TOML file; relative paths inside it become relative to the file's folder.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        let mut cfg: TrainConfig = toml::from_str(&text).map_err(|e| Error::format(path, e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut cfg.data.dir);
        match &mut cfg.teacher {
            TeacherConfig::None => {}
            TeacherConfig::Mamba { path } | TeacherConfig::Gguf { path } | TeacherConfig::Topk { path } => fix(path),
        }
        if let Some(out) = &mut cfg.train.out {
            fix(out);
        }
        cfg.check()?;
        Ok(cfg)
    }

    /// Range checks that serde cannot express.
    pub fn check(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(m.to_string()));
        if self.data.seq_len == 0 || self.data.batch_size == 0 || self.data.grad_accum == 0 {
            return bad("data.seq_len, data.batch_size and data.grad_accum must be positive");
        }
        parse_dtype(self.train.matmul_dtype.as_deref())?;
        if self.train.steps == 0 {
            return bad("train.steps must be positive");
        }
        if !(self.optim.lr > 0.0 && self.optim.lr.is_finite()) {
            return bad("optim.lr must be a positive number");
        }
        if self.loss.temperature <= 0.0 {
            return bad("loss.temperature must be positive");
        }
        if self.loss.soft_weight < 0.0 || self.loss.hard_weight < 0.0 {
            return bad("loss weights must not be negative");
        }
        if self.teacher == TeacherConfig::None && self.loss.hard_weight == 0.0 {
            return bad("without a teacher, loss.hard_weight must be positive (the soft term needs a teacher)");
        }
        Ok(())
    }

    /// The TOML text of this configuration.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| Error::Config(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_resolves_and_rejects_mistakes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            r#"
[model]
d_model = 32
n_layer = 2
d_state = 8
headdim = 16
[data]
dir = "data"
seq_len = 64
batch_size = 4
[loss]
soft_weight = 0.0
hard_weight = 1.0
temperature = 1.0
[train]
steps = 10
"#,
        )
        .expect("write");
        let c = TrainConfig::load(&p).expect("valid config");
        assert_eq!(c.data.dir, dir.path().join("data"));
        assert_eq!(c.optim.beta2, 0.95);
        assert_eq!(c.optim.weight_decay, 0.1);
        let m = c.model.resolve(451).expect("resolves");
        assert_eq!((m.vocab_size, m.d_state, m.headdim, m.expand), (451, 8, 16, 2));
        // The resolved TOML reads back to the same config.
        let again: TrainConfig = toml::from_str(&c.to_toml().expect("toml")).expect("parses");
        assert_eq!(again, c);
        std::fs::write(&p, "[model]\nd_model = 32\nn_layer = 2\nbogus = 1\n[data]\ndir='d'\nseq_len=8\nbatch_size=1\n[train]\nsteps=1\n[loss]\nsoft_weight=0.0\nhard_weight=1.0\ntemperature=1.0\n").expect("write");
        let e = TrainConfig::load(&p).expect_err("unknown key");
        assert!(e.to_string().contains("bogus"), "{e}");
        std::fs::write(
            &p,
            "[model]\nd_model = 32\nn_layer = 2\n[data]\ndir='d'\nseq_len=8\nbatch_size=1\n[train]\nsteps=1\n",
        )
        .expect("write");
        let e = TrainConfig::load(&p).expect_err("no teacher and no hard loss");
        assert!(e.to_string().contains("hard_weight"), "{e}");
    }
}
