//! The architecture a run trains. There is one architecture type, the engine's
//! [`bimamba_engine::Config`]: the `[model]` section of a training config ([`ModelSpec`]) is only
//! what a user writes, and becomes a [`ModelConfig`] by going through the engine's parser and its
//! rules, the same code that loads the exported model (ARCHITECTURE.md §1.1).

use std::ops::Deref;
use std::path::Path;

use bimamba_engine::{Config as EngineConfig, Dialect};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which kind of projection the mixers use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// FBI-Linear in_proj/out_proj: α ⊙ sign(W) + β with a straight-through estimator (Bi-Mamba).
    #[default]
    Binary,
    /// Plain full-precision projections (teachers and baselines).
    Full,
}

/// `[model]` as a user writes it: the state-spaces `MambaConfig` names, flat, with the trainer's
/// defaults. It holds no rules and no derived sizes; [`ModelSpec::resolve`] gives it to the engine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Width of the residual stream D.
    pub d_model: usize,
    /// Number of Mamba-2 blocks.
    pub n_layer: usize,
    /// Vocabulary size before padding; taken from the data's tokenizer when absent.
    #[serde(default)]
    pub vocab_size: Option<usize>,
    /// SSM state size N.
    #[serde(default = "defaults::d_state")]
    pub d_state: usize,
    /// Depthwise causal convolution width.
    #[serde(default = "defaults::d_conv")]
    pub d_conv: usize,
    /// d_inner = expand · d_model.
    #[serde(default = "defaults::expand")]
    pub expand: usize,
    /// Channels per head P.
    #[serde(default = "defaults::headdim")]
    pub headdim: usize,
    /// Groups G sharing B and C (head h uses group h / (H/G)).
    #[serde(default = "defaults::ngroups")]
    pub ngroups: usize,
    /// Chunk length of the SSD matrix form.
    #[serde(default = "defaults::chunk_size")]
    pub chunk_size: usize,
    /// The embedding rows are padded to a multiple of this.
    #[serde(default = "defaults::pad_vocab")]
    pub pad_vocab_size_multiple: usize,
    /// RMSNorm epsilon.
    #[serde(default = "defaults::eps")]
    pub norm_eps: f64,
    /// Binarized (Bi-Mamba) or full-precision projections.
    #[serde(default)]
    pub precision: Precision,
}

mod defaults {
    pub fn d_state() -> usize {
        128
    }
    pub fn d_conv() -> usize {
        4
    }
    pub fn expand() -> usize {
        2
    }
    pub fn headdim() -> usize {
        64
    }
    pub fn ngroups() -> usize {
        1
    }
    pub fn chunk_size() -> usize {
        256
    }
    pub fn pad_vocab() -> usize {
        16
    }
    pub fn eps() -> f64 {
        1e-5
    }
}

impl ModelSpec {
    /// A spec with the trainer's defaults for everything but the three sizes.
    pub fn new(d_model: usize, n_layer: usize, vocab_size: usize) -> Self {
        Self {
            d_model,
            n_layer,
            vocab_size: Some(vocab_size),
            d_state: defaults::d_state(),
            d_conv: defaults::d_conv(),
            expand: defaults::expand(),
            headdim: defaults::headdim(),
            ngroups: defaults::ngroups(),
            chunk_size: defaults::chunk_size(),
            pad_vocab_size_multiple: defaults::pad_vocab(),
            norm_eps: defaults::eps(),
            precision: Precision::default(),
        }
    }

    /// The state-spaces `config.json` of this architecture (what [`crate::export`] writes), with
    /// `vocab` where the spec gives no vocabulary.
    pub fn state_spaces_json(&self, vocab: usize) -> serde_json::Value {
        serde_json::json!({
            "d_model": self.d_model,
            "d_intermediate": 0,
            "n_layer": self.n_layer,
            "vocab_size": self.vocab_size.unwrap_or(vocab),
            "ssm_cfg": {
                "layer": "Mamba2",
                "d_state": self.d_state,
                "d_conv": self.d_conv,
                "expand": self.expand,
                "headdim": self.headdim,
                "ngroups": self.ngroups,
                "chunk_size": self.chunk_size,
            },
            "attn_layer_idx": [],
            "attn_cfg": {},
            "rms_norm": true,
            "residual_in_fp32": true,
            "fused_add_norm": true,
            "pad_vocab_size_multiple": self.pad_vocab_size_multiple,
            "norm_epsilon": self.norm_eps,
            "tie_embeddings": true,
        })
    }

    /// The model this spec describes, with `vocab` used when the spec gives none. The engine
    /// parses and validates the `config.json` that the export will write: one set of rules for
    /// what is trained and what is run. An error is one line naming the `[model]` field.
    pub fn resolve(&self, vocab: usize) -> Result<ModelConfig> {
        let json = self.state_spaces_json(vocab).to_string();
        // The one field whose name differs between the two: `norm_eps` here, `norm_epsilon` there.
        let arch = EngineConfig::from_json_str(&json, Path::new("[model]"))
            .map_err(|e| Error::Config(e.to_string().replace("`norm_epsilon`", "`norm_eps`")))?;
        let cfg = ModelConfig { arch, precision: self.precision };
        cfg.check_fits_memory().map_err(Error::Config)?;
        Ok(cfg)
    }
}

/// The model a run trains: the engine's architecture, and the precision of the projections
/// (which only training chooses; an exported model tells it by its tensors). Every size is read
/// from the engine's `Config` (`d_inner()`, `nheads`, `padded_vocab_size`, ...), by `Deref`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// The architecture, as parsed and validated by the engine.
    pub arch: EngineConfig,
    /// Binarized or full-precision projections.
    pub precision: Precision,
}

impl Deref for ModelConfig {
    type Target = EngineConfig;
    fn deref(&self) -> &EngineConfig {
        &self.arch
    }
}

/// Written as its [`ModelSpec`] (run directories, benchmark reports).
impl Serialize for ModelConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.spec().serialize(s)
    }
}

impl ModelConfig {
    /// The architecture of a model directory's `config.json`, as parsed (either dialect) and
    /// validated by the engine, which already refuses what neither crate implements (Mamba-1,
    /// MLP blocks, LayerNorm, biases, a per-channel D, ...). Here the knobs the engine runs but
    /// this model does not are refused too, naming `file` and the field. Precision is `Full`:
    /// the caller sets it from the tensors.
    pub fn from_engine(c: &EngineConfig, file: &Path) -> Result<Self> {
        let ss = c.dialect == Dialect::StateSpaces;
        let refuse = |field: &str, detail: String| Error::format(file, format!("field `{field}`: {detail}"));
        if !c.gated_norm {
            return Err(refuse("ssm_cfg.rmsnorm", "false is not supported by the trainer; only true is".into()));
        }
        if c.norm_before_gate {
            let field = if ss { "ssm_cfg.norm_before_gate" } else { "norm_before_gate" };
            return Err(refuse(field, "true is not supported by the trainer; only false is".into()));
        }
        // dt is a softplus, so a lower bound of 0 and no upper bound leave it unclamped.
        if c.dt_limit.0 > 0.0 || c.dt_limit.1.is_finite() {
            let field = if ss { "ssm_cfg.dt_limit" } else { "time_step_limit" };
            let (lo, hi) = c.dt_limit;
            return Err(refuse(field, format!("[{lo}, {hi}] is not supported by the trainer; only [0, inf] is")));
        }
        Ok(Self { arch: c.clone(), precision: Precision::Full })
    }

    /// The `[model]` section that describes this model (a transformers config keeps its row
    /// count as `vocab_size` with a padding multiple of 1).
    pub fn spec(&self) -> ModelSpec {
        let c = &self.arch;
        ModelSpec {
            d_model: c.d_model,
            n_layer: c.n_layer,
            vocab_size: Some(c.vocab_size),
            d_state: c.d_state,
            d_conv: c.d_conv,
            expand: c.expand,
            headdim: c.headdim,
            ngroups: c.ngroups,
            chunk_size: c.chunk_size,
            pad_vocab_size_multiple: c.pad_vocab_size_multiple,
            norm_eps: c.norm_eps,
            precision: self.precision,
        }
    }

    /// The engine refused sizes that overflow; a size that fits a usize can still be far more
    /// than this machine holds, and Burn would abort on the allocation.
    fn check_fits_memory(&self) -> std::result::Result<(), String> {
        let Some(memory) = physical_memory() else { return Ok(()) };
        let need = self.num_params() as u128 * TRAIN_BYTES_PER_PARAM as u128;
        if need > memory as u128 {
            return Err(format!(
                "[model]: {:.3e} parameters (d_model {}, n_layer {}, vocab {}) need {:.1} GB for their f32 weights and AdamW moments alone; this machine has {:.1} GB",
                self.num_params() as f64,
                self.d_model,
                self.n_layer,
                self.padded_vocab_size,
                need as f64 / 1e9,
                memory as f64 / 1e9
            ));
        }
        Ok(())
    }

    /// Trainable parameters (tied head).
    pub fn num_params(&self) -> usize {
        let (d, di, h) = (self.d_model, self.d_inner(), self.nheads);
        let scales = match self.precision {
            Precision::Binary => 2 * (d + di),
            Precision::Full => 0,
        };
        let per_layer = d + self.d_in_proj() * d + self.conv_dim() * (self.d_conv + 1) + 3 * h + di + d * di + scales;
        self.padded_vocab_size * d + self.n_layer * per_layer + d
    }

    /// Multiply-adds of the projections and the LM head per token, times 2 (FLOPs), i.e. the
    /// "6N" numerator of model-FLOPs utilization uses 3× this for forward + backward.
    pub fn matmul_flops_per_token(&self) -> usize {
        let d = self.d_model;
        2 * (self.n_layer * (self.d_in_proj() * d + d * self.d_inner()) + self.padded_vocab_size * d)
    }

    /// Forward FLOPs per token of the SSD matrix form (intra-chunk quadratic part and states),
    /// for a sequence chunked by `chunk_size`.
    pub fn ssd_flops_per_token(&self) -> usize {
        let (h, p, n, g, t) = (self.nheads, self.headdim, self.d_state, self.ngroups, self.chunk_size);
        // C·Bᵀ per group (t·n per token), scores·X per head (t·p), chunk states (p·n per head),
        // state outputs (p·n per head); the decay matrices are elementwise and not counted.
        self.n_layer * 2 * (g * t * n + h * t * p + 2 * h * p * n)
    }
}

/// Bytes per parameter that training surely holds in this machine's memory: the f32 weight and
/// AdamW's two f32 moments, which a checkpoint copies to the host together (on the CPU the
/// gradient comes on top). A model refused by this bound could never train here.
pub const TRAIN_BYTES_PER_PARAM: usize = 12;

/// This machine's physical memory in bytes (`MemTotal` of /proc/meminfo), where it can be read.
fn physical_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_sizes_match_the_spec_table() {
        // ARCHITECTURE.md §1.1: 780M has d_in_proj 6448, conv_dim 3328, 752.1M params with V=32000.
        let s: ModelSpec =
            serde_json::from_str(r#"{"d_model":1536,"n_layer":48,"vocab_size":32000,"precision":"full"}"#)
                .expect("valid json");
        let c = s.resolve(0).expect("valid");
        assert_eq!(c.d_inner(), 3072);
        assert_eq!(c.nheads, 48);
        assert_eq!(c.d_in_proj(), 6448);
        assert_eq!(c.conv_dim(), 3328);
        assert_eq!((c.num_params() as f64 / 1e5).round() / 10.0, 752.1);
        assert_eq!(c.spec(), s);
        // The engine's rules, naming the `[model]` field.
        let cases = [
            (ModelSpec { headdim: 100, ..s.clone() }, "field `headdim`"),
            (ModelSpec { headdim: 0, ..s.clone() }, "field `headdim`"),
            (ModelSpec { ngroups: 5, ..s.clone() }, "field `ngroups`"),
            (ModelSpec { norm_eps: 0.0, ..s.clone() }, "field `norm_eps`"),
            (ModelSpec { n_layer: 0, ..s.clone() }, "field `n_layer`"),
        ];
        for (bad, field) in cases {
            let err = bad.resolve(0).expect_err("refused").to_string();
            assert!(err.contains("[model]: ") && err.contains(field) && !err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn the_vocabulary_comes_from_the_data_when_the_spec_has_none() {
        let s = ModelSpec { vocab_size: None, ..ModelSpec::new(64, 2, 0) };
        let c = s.resolve(451).expect("valid");
        assert_eq!((c.vocab_size, c.padded_vocab_size), (451, 464));
        let c = ModelSpec::new(64, 2, 100).resolve(451).expect("valid");
        assert_eq!(c.vocab_size, 100);
    }

    #[test]
    fn absurd_sizes_are_refused_before_anything_is_allocated() {
        let s = ModelSpec::new(128, 4, 451);
        s.resolve(0).expect("a tiny model is fine");
        let cases = [
            // Sizes that overflow a usize somewhere: the engine's rule.
            (ModelSpec { d_model: 1_000_000_000, ..s.clone() }, "too large"),
            (ModelSpec { vocab_size: Some(usize::MAX - 3), ..s.clone() }, "overflows"),
            // Sizes that fit a usize but no machine (about 4e12 parameters).
            (ModelSpec { d_model: 100_000, n_layer: 64, ..s.clone() }, "AdamW moments alone"),
        ];
        for (bad, needle) in cases {
            let err = bad.resolve(0).expect_err("refused").to_string();
            assert!(err.contains("[model]: ") && err.contains(needle) && !err.contains('\n'), "{err}");
        }
    }

    fn from_json(json: &str) -> Result<ModelConfig> {
        let file = Path::new("dir/config.json");
        ModelConfig::from_engine(&EngineConfig::from_json_str(json, file)?, file)
    }

    #[test]
    fn export_config_parses_back_to_the_same_model() {
        let s = ModelSpec {
            d_state: 8,
            d_conv: 3,
            headdim: 12,
            ngroups: 2,
            chunk_size: 8,
            precision: Precision::Full,
            ..ModelSpec::new(48, 3, 451)
        };
        let c = s.resolve(0).expect("valid");
        let json = crate::export::mamba_config_json(&c).to_string();
        assert_eq!(from_json(&json).expect("exported config loads"), c);
    }

    #[test]
    fn transformers_config_keeps_its_row_count() {
        // fixtures/hf-mamba2-g2: vocab_size is the embedding's row count, so no padding.
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/hf-mamba2-g2/config.json"),
        )
        .expect("fixture config");
        let c = from_json(&text).expect("fixture loads");
        assert_eq!((c.vocab_size, c.pad_vocab_size_multiple, c.padded_vocab_size), (464, 1, 464));
        assert_eq!((c.d_model, c.n_layer, c.d_state, c.headdim, c.ngroups, c.chunk_size), (48, 3, 8, 12, 2, 8));
        assert_eq!(c.norm_eps, 1e-5);
    }

    #[test]
    fn refusals_are_one_line_naming_file_and_field() {
        let ss = |extra: &str, ssm: &str| {
            format!(
                r#"{{"d_model": 64, "n_layer": 1, "vocab_size": 10{extra}, "ssm_cfg": {{"layer": "Mamba2"{ssm}}}}}"#
            )
        };
        let cases = [
            // Refused by the engine's parser.
            (ss("", "").replace("Mamba2", "Mamba1"), "ssm_cfg.layer"),
            (ss(r#", "d_intermediate": 128"#, ""), "d_intermediate"),
            (ss(r#", "rms_norm": false"#, ""), "rms_norm"),
            (ss("", r#", "bias": true"#), "bias"),
            (ss("", r#", "D_has_hdim": true"#), "D_has_hdim"),
            (ss("", r#", "headdim": 48"#), "headdim"),
            // Run by the engine, refused by the trainer's model.
            (ss("", r#", "norm_before_gate": true"#), "ssm_cfg.norm_before_gate"),
            (ss("", r#", "rmsnorm": false"#), "ssm_cfg.rmsnorm"),
            (ss("", r#", "dt_limit": [0.001, 0.1]"#), "ssm_cfg.dt_limit"),
            (
                concat!(
                    r#"{"hidden_size": 48, "num_hidden_layers": 1, "vocab_size": 10, "head_dim": 12,"#,
                    r#" "time_step_limit": [0.0, 1.0]}"#
                )
                .to_string(),
                "time_step_limit",
            ),
        ];
        for (json, field) in cases {
            let msg = from_json(&json).expect_err(&json).to_string();
            assert!(
                msg.starts_with("dir/config.json: field `") && msg.contains(&format!("`{field}`")),
                "{json}: {msg}"
            );
            assert!(!msg.contains('\n'), "{msg}");
        }
    }
}
