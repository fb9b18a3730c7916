//! Model configuration, read from `config.json` in either dialect:
//! state-spaces `MambaConfig` (`d_model`, `n_layer`, `ssm_cfg {...}`) or transformers
//! `Mamba2Config` (`hidden_size`, `num_hidden_layers`, `state_size`, ...).
//!
//! Every knob the engine honours is read here; a knob it cannot honour is rejected with the
//! field's name, its value and what is supported.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use bimamba_lm::{ModelError, Result};

/// Which config.json dialect a model directory uses (and so which tensor names to expect first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// state-spaces `MambaLMHeadModel` (`backbone.embedding.weight`).
    StateSpaces,
    /// Hugging Face transformers `Mamba2ForCausalLM` (`backbone.embeddings.weight`).
    Transformers,
}

/// Everything needed to build a Mamba-2 / Bi-Mamba model. Derived sizes are methods.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub dialect: Dialect,
    /// Residual stream width D.
    pub d_model: usize,
    pub n_layer: usize,
    /// Vocabulary as declared (state-spaces: before padding).
    pub vocab_size: usize,
    /// Rows of the embedding: `vocab_size` rounded up to `pad_vocab_size_multiple`.
    pub padded_vocab_size: usize,
    /// The rounding of `padded_vocab_size` (state-spaces default 8; transformers: 1, its
    /// `vocab_size` already counts the rows).
    pub pad_vocab_size_multiple: usize,
    /// SSM state size N.
    pub d_state: usize,
    /// Depthwise causal conv width.
    pub d_conv: usize,
    pub expand: usize,
    /// Head dimension P.
    pub headdim: usize,
    /// Number of B/C groups G (heads are split evenly over groups).
    pub ngroups: usize,
    /// Number of heads H = d_inner / P.
    pub nheads: usize,
    /// Chunk length of the training-time chunked SSD (kept for export; the CPU prefill works in
    /// blocks of `model::PREFILL_BLOCK` tokens and gives the same result for any chunking).
    pub chunk_size: usize,
    pub norm_eps: f64,
    /// Gated RMSNorm before out_proj (mamba_ssm `rmsnorm=True`).
    pub gated_norm: bool,
    /// `norm_before_gate`: false (the default) means `RMSNorm(y * silu(z))`.
    pub norm_before_gate: bool,
    pub tie_embeddings: bool,
    /// `dt` is clamped to this range after the softplus.
    pub dt_limit: (f64, f64),
}

impl Config {
    pub fn d_inner(&self) -> usize {
        self.expand * self.d_model
    }
    /// Width of the in_proj output: z, xBC, dt.
    pub fn d_in_proj(&self) -> usize {
        2 * self.d_inner() + 2 * self.ngroups * self.d_state + self.nheads
    }
    /// Channels that go through the conv: x, B, C.
    pub fn conv_dim(&self) -> usize {
        self.d_inner() + 2 * self.ngroups * self.d_state
    }
    pub fn heads_per_group(&self) -> usize {
        self.nheads / self.ngroups
    }

    /// Parameters of the model this config describes (embedding, untied head, every layer's
    /// projections, conv, norms and head vectors), or `None` when a size overflows.
    pub fn parameter_count(&self) -> Option<usize> {
        let d_inner = self.expand.checked_mul(self.d_model)?;
        let gn = self.ngroups.checked_mul(self.d_state)?.checked_mul(2)?;
        let d_in_proj = d_inner.checked_mul(2)?.checked_add(gn)?.checked_add(self.nheads)?;
        let conv_dim = d_inner.checked_add(gn)?;
        let per_layer = d_in_proj
            .checked_mul(self.d_model)?
            .checked_add(d_inner.checked_mul(self.d_model)?)?
            .checked_add(conv_dim.checked_mul(self.d_conv.checked_add(1)?)?)?
            .checked_add(self.nheads.checked_mul(3)?)?
            .checked_add(d_inner)?
            .checked_add(self.d_model)?;
        let vocab = self.padded_vocab_size.checked_mul(self.d_model)?;
        let heads = if self.tie_embeddings { vocab } else { vocab.checked_mul(2)? };
        // Bytes must be addressable too (8 per f64 parameter at most).
        per_layer.checked_mul(self.n_layer)?.checked_add(heads)?.checked_add(self.d_model)?.checked_mul(8)?;
        per_layer.checked_mul(self.n_layer)?.checked_add(heads)?.checked_add(self.d_model)
    }

    /// Reads `DIR/config.json` (or the given file).
    pub fn from_file(path: &Path) -> Result<Config> {
        let file = if path.is_dir() { path.join("config.json") } else { path.to_path_buf() };
        let text = std::fs::read_to_string(&file).map_err(|source| ModelError::Io { path: file.clone(), source })?;
        Config::from_json_str(&text, &file)
    }

    /// Parses either dialect; `file` is only used in error messages. Python's `json.dumps`
    /// writes the bare literals `Infinity`, `-Infinity` and `NaN`, which JSON lacks; they are read
    /// as transformers reads them (see [`python_floats`]).
    pub fn from_json_str(text: &str, file: &Path) -> Result<Config> {
        let value: Value = serde_json::from_str(&python_floats(text))
            .map_err(|e| ModelError::Invalid { file: file.to_path_buf(), detail: format!("not valid JSON: {e}") })?;
        let Value::Object(obj) = value else {
            return Err(ModelError::Invalid { file: file.to_path_buf(), detail: "expected a JSON object".into() });
        };
        let fields = Fields { file: file.to_path_buf() };
        let config = if obj.contains_key("d_model") {
            fields.state_spaces(&obj)?
        } else if obj.contains_key("hidden_size") {
            fields.transformers(&obj)?
        } else {
            return Err(fields.err(
                "d_model",
                "neither `d_model` (state-spaces MambaConfig) nor `hidden_size` (transformers Mamba2Config) is present",
            ));
        };
        config.validate(file)?;
        Ok(config)
    }

    /// Structural checks shared by both dialects.
    fn validate(&self, file: &Path) -> Result<()> {
        let f = Fields { file: file.to_path_buf() };
        for (name, v) in [
            ("d_model", self.d_model),
            ("n_layer", self.n_layer),
            ("vocab_size", self.vocab_size),
            ("d_state", self.d_state),
            ("d_conv", self.d_conv),
            ("expand", self.expand),
            ("headdim", self.headdim),
            ("ngroups", self.ngroups),
            ("chunk_size", self.chunk_size),
        ] {
            if v == 0 {
                return Err(f.err(name, "must be at least 1, got 0"));
            }
        }
        if self.padded_vocab_size == 0 {
            return Err(f.err(
                "pad_vocab_size_multiple",
                &format!(
                    "vocab_size {} rounded up to a multiple of {} overflows",
                    self.vocab_size, self.pad_vocab_size_multiple
                ),
            ));
        }
        // Every size the model is built from must be computable: a dimension so large that one of
        // them overflows is no model (the weight file's shapes are checked against them later).
        if self.parameter_count().is_none() {
            return Err(f.err(
                "d_model",
                &format!(
                    "the sizes (d_model {}, n_layer {}, vocab {}, d_state {}, expand {}, ngroups {}, d_conv {}) give a model too large to address",
                    self.d_model, self.n_layer, self.padded_vocab_size, self.d_state, self.expand, self.ngroups, self.d_conv
                ),
            ));
        }
        if !self.d_inner().is_multiple_of(self.headdim) {
            return Err(f.err(
                "headdim",
                &format!("d_inner = expand*d_model = {} is not a multiple of headdim {}", self.d_inner(), self.headdim),
            ));
        }
        if self.nheads.checked_mul(self.headdim) != Some(self.d_inner()) {
            return Err(f.err(
                "num_heads",
                &format!("expected d_inner/headdim = {}, got {}", self.d_inner() / self.headdim, self.nheads),
            ));
        }
        if !self.nheads.is_multiple_of(self.ngroups) {
            return Err(f.err(
                "ngroups",
                &format!("{} heads cannot be split evenly into {} groups", self.nheads, self.ngroups),
            ));
        }
        if self.norm_eps.is_nan() || self.norm_eps <= 0.0 {
            let field = match self.dialect {
                Dialect::StateSpaces => "norm_epsilon",
                Dialect::Transformers => "layer_norm_epsilon",
            };
            return Err(f.err(field, &format!("must be > 0, got {}", self.norm_eps)));
        }
        Ok(())
    }
}

/// Rewrites the bare literals `NaN`, `Infinity` and `-Infinity` that Python's `json.dumps` writes
/// outside strings into transformers' own spelling `{"__float__": "..."}`, which JSON can hold.
/// Outside a string no valid JSON has these words, so a valid document comes back unchanged.
pub fn python_floats(text: &str) -> std::borrow::Cow<'_, str> {
    const WORDS: [&str; 3] = ["-Infinity", "Infinity", "NaN"];
    let b = text.as_bytes();
    let (mut out, mut copied) = (String::new(), 0);
    let (mut in_string, mut escaped) = (false, false);
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if c == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        let word = WORDS.iter().find(|w| {
            b[i..].starts_with(w.as_bytes())
                && !b.get(i + w.len()).is_some_and(|n| n.is_ascii_alphanumeric() || *n == b'_')
                && !(i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
        });
        match word {
            Some(w) => {
                out.push_str(&text[copied..i]);
                out.push_str(&format!(r#"{{"__float__": "{w}"}}"#));
                i += w.len();
                copied = i;
            }
            None => i += 1,
        }
    }
    if copied == 0 {
        return std::borrow::Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    std::borrow::Cow::Owned(out)
}

/// A float in any spelling transformers reads: a JSON number, `{"__float__": "Infinity"}`, or a
/// string Python's `float()` takes (`"Infinity"`, `"-inf"`, `"NaN"`, `"1e-5"`).
fn float_value(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        Value::Object(o) if o.len() == 1 => o.get("__float__").and_then(Value::as_str)?.trim().parse().ok(),
        _ => None,
    }
}

/// Field readers that turn a bad value into an error naming the file and field.
struct Fields {
    file: PathBuf,
}

impl Fields {
    fn err(&self, field: &str, detail: &str) -> ModelError {
        ModelError::Config { file: self.file.clone(), field: field.to_string(), detail: detail.to_string() }
    }

    fn usize_or(&self, obj: &Map<String, Value>, key: &str, default: Option<usize>) -> Result<usize> {
        match obj.get(key) {
            None | Some(Value::Null) => default.ok_or_else(|| self.err(key, "is required but missing")),
            Some(v) => v
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| self.err(key, &format!("expected a non-negative integer, got {v}"))),
        }
    }

    fn f64_or(&self, obj: &Map<String, Value>, key: &str, default: f64) -> Result<f64> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => float_value(v).ok_or_else(|| self.err(key, &format!("expected a number, got {v}"))),
        }
    }

    fn bool_or(&self, obj: &Map<String, Value>, key: &str, default: bool) -> Result<bool> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.err(key, &format!("expected true or false, got {v}"))),
        }
    }

    /// `[lo, hi]` pair; `null` or missing mean (0, +inf), as does a `null` upper end; each end
    /// may be spelled as [`float_value`] reads.
    fn limit_or(&self, obj: &Map<String, Value>, key: &str) -> Result<(f64, f64)> {
        let bad = |v: &Value| self.err(key, &format!("expected [lo, hi] with lo <= hi, got {v}"));
        match obj.get(key) {
            None | Some(Value::Null) => Ok((0.0, f64::INFINITY)),
            Some(whole @ Value::Array(a)) if a.len() == 2 => {
                let lo = match &a[0] {
                    Value::Null => 0.0,
                    v => float_value(v).ok_or_else(|| bad(whole))?,
                };
                let hi = match &a[1] {
                    Value::Null => f64::INFINITY,
                    v => float_value(v).ok_or_else(|| bad(whole))?,
                };
                if lo.is_nan() || hi.is_nan() || lo > hi {
                    return Err(bad(whole));
                }
                Ok((lo, hi))
            }
            Some(v) => Err(bad(v)),
        }
    }

    /// Rejects a boolean knob whose value the engine does not implement.
    fn require_bool(
        &self,
        obj: &Map<String, Value>,
        key: &str,
        default: bool,
        supported: bool,
        what: &str,
    ) -> Result<()> {
        let v = self.bool_or(obj, key, default)?;
        if v != supported {
            return Err(self.err(key, &format!("{v} is not supported ({what}); only {supported} is")));
        }
        Ok(())
    }

    /// state-spaces `MambaConfig` with an `ssm_cfg` for the Mamba2 layer.
    fn state_spaces(&self, obj: &Map<String, Value>) -> Result<Config> {
        let empty = Map::new();
        let ssm = match obj.get("ssm_cfg") {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(m)) => m,
            Some(v) => return Err(self.err("ssm_cfg", &format!("expected an object, got {v}"))),
        };
        match ssm.get("layer").and_then(Value::as_str) {
            Some("Mamba2") => {}
            Some(other) => {
                return Err(self.err(
                    "ssm_cfg.layer",
                    &format!("\"{other}\" is not supported; only \"Mamba2\" is"),
                ))
            }
            None => {
                return Err(self.err(
                    "ssm_cfg.layer",
                    "is missing: without it mamba_ssm builds a Mamba-1 model, which this engine does not run; expected \"Mamba2\"",
                ))
            }
        }
        let d_intermediate = self.usize_or(obj, "d_intermediate", Some(0))?;
        if d_intermediate != 0 {
            return Err(self.err(
                "d_intermediate",
                &format!("{d_intermediate} (an MLP after each mixer) is not supported; only 0 is"),
            ));
        }
        if let Some(Value::Array(a)) = obj.get("attn_layer_idx") {
            if !a.is_empty() {
                return Err(self.err("attn_layer_idx", "hybrid attention layers are not supported; expected []"));
            }
        }
        self.require_bool(obj, "rms_norm", true, true, "LayerNorm blocks")?;
        self.require_bool(ssm, "D_has_hdim", false, false, "a per-channel D")?;
        self.require_bool(ssm, "bias", false, false, "in_proj/out_proj biases")?;
        self.require_bool(ssm, "conv_bias", true, true, "conv1d without bias")?;

        let d_model = self.usize_or(obj, "d_model", None)?;
        let vocab_size = self.usize_or(obj, "vocab_size", None)?;
        let pad = self.usize_or(obj, "pad_vocab_size_multiple", Some(8))?.max(1);
        let expand = self.usize_or(ssm, "expand", Some(2))?;
        let headdim = self.usize_or(ssm, "headdim", Some(64))?;
        let nheads = expand.checked_mul(d_model).and_then(|d| d.checked_div(headdim)).unwrap_or(0);
        Ok(Config {
            dialect: Dialect::StateSpaces,
            d_model,
            n_layer: self.usize_or(obj, "n_layer", None)?,
            vocab_size,
            // An overflow is left as 0, which `validate` refuses.
            padded_vocab_size: vocab_size.div_ceil(pad).checked_mul(pad).unwrap_or(0),
            pad_vocab_size_multiple: pad,
            d_state: self.usize_or(ssm, "d_state", Some(128))?,
            d_conv: self.usize_or(ssm, "d_conv", Some(4))?,
            expand,
            headdim,
            ngroups: self.usize_or(ssm, "ngroups", Some(1))?,
            nheads,
            chunk_size: self.usize_or(ssm, "chunk_size", Some(256))?,
            norm_eps: self.f64_or(obj, "norm_epsilon", 1e-5)?,
            gated_norm: self.bool_or(ssm, "rmsnorm", true)?,
            norm_before_gate: self.bool_or(ssm, "norm_before_gate", false)?,
            tie_embeddings: self.bool_or(obj, "tie_embeddings", true)?,
            dt_limit: self.limit_or(ssm, "dt_limit")?,
        })
    }

    /// transformers `Mamba2Config`.
    fn transformers(&self, obj: &Map<String, Value>) -> Result<Config> {
        self.require_bool(obj, "use_bias", false, false, "in_proj/out_proj biases")?;
        self.require_bool(obj, "use_conv_bias", true, true, "conv1d without bias")?;
        if let Some(act) = obj.get("hidden_act").and_then(Value::as_str) {
            if act != "silu" {
                return Err(self.err("hidden_act", &format!("\"{act}\" is not supported; only \"silu\" is")));
            }
        }
        let d_model = self.usize_or(obj, "hidden_size", None)?;
        let expand = self.usize_or(obj, "expand", Some(2))?;
        let headdim = self.usize_or(obj, "head_dim", Some(64))?;
        let derived = expand.checked_mul(d_model).and_then(|d| d.checked_div(headdim)).unwrap_or(0);
        let vocab_size = self.usize_or(obj, "vocab_size", None)?;
        Ok(Config {
            dialect: Dialect::Transformers,
            d_model,
            n_layer: self.usize_or(obj, "num_hidden_layers", None)?,
            vocab_size,
            padded_vocab_size: vocab_size,
            pad_vocab_size_multiple: 1,
            d_state: self.usize_or(obj, "state_size", Some(128))?,
            d_conv: self.usize_or(obj, "conv_kernel", Some(4))?,
            expand,
            headdim,
            ngroups: self.usize_or(obj, "n_groups", Some(1))?,
            nheads: self.usize_or(obj, "num_heads", Some(derived))?,
            chunk_size: self.usize_or(obj, "chunk_size", Some(256))?,
            norm_eps: self.f64_or(obj, "layer_norm_epsilon", 1e-5)?,
            gated_norm: true,
            norm_before_gate: self.bool_or(obj, "norm_before_gate", false)?,
            tie_embeddings: self.bool_or(obj, "tie_word_embeddings", true)?,
            dt_limit: self.limit_or(obj, "time_step_limit")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config> {
        Config::from_json_str(s, Path::new("config.json"))
    }

    #[test]
    fn state_spaces_130m() {
        let c = parse(
            r#"{"d_model": 768, "d_intermediate": 0, "n_layer": 24, "vocab_size": 50277,
                "ssm_cfg": {"layer": "Mamba2"}, "attn_layer_idx": [], "attn_cfg": {},
                "rms_norm": true, "residual_in_fp32": true, "fused_add_norm": true,
                "pad_vocab_size_multiple": 16, "tie_embeddings": true}"#,
        )
        .unwrap();
        assert_eq!(c.dialect, Dialect::StateSpaces);
        assert_eq!((c.padded_vocab_size, c.pad_vocab_size_multiple), (50288, 16));
        assert_eq!((c.d_inner(), c.nheads, c.d_state, c.ngroups), (1536, 24, 128, 1));
        assert_eq!(c.d_in_proj(), 2 * 1536 + 2 * 128 + 24);
        assert_eq!(c.conv_dim(), 1536 + 256);
    }

    #[test]
    fn spec_table_shapes() {
        // ARCHITECTURE.md §1.1 table: d_in_proj and conv_dim of the three Bi-Mamba sizes.
        for (d, dip, cd) in [(1536, 6448, 3328), (2048, 8512, 4352), (2560, 10576, 5376)] {
            let c = parse(&format!(
                r#"{{"d_model": {d}, "n_layer": 2, "vocab_size": 32000, "ssm_cfg": {{"layer": "Mamba2"}}}}"#
            ))
            .unwrap();
            assert_eq!((c.d_in_proj(), c.conv_dim()), (dip, cd));
        }
    }

    #[test]
    fn transformers_dialect() {
        let c = parse(
            r#"{"hidden_size": 48, "num_hidden_layers": 3, "vocab_size": 512, "state_size": 8,
                "head_dim": 12, "num_heads": 8, "n_groups": 2, "expand": 2, "conv_kernel": 4,
                "layer_norm_epsilon": 1e-6, "tie_word_embeddings": false,
                "time_step_limit": [0.0, {"__float__": "Infinity"}]}"#,
        )
        .unwrap();
        assert_eq!(c.dialect, Dialect::Transformers);
        assert_eq!((c.padded_vocab_size, c.pad_vocab_size_multiple), (512, 1));
        assert_eq!((c.nheads, c.ngroups, c.heads_per_group()), (8, 2, 4));
        assert!(!c.tie_embeddings);
        assert_eq!(c.norm_eps, 1e-6);
        assert_eq!(c.dt_limit, (0.0, f64::INFINITY));
    }

    #[test]
    fn rejections_name_the_field() {
        let cases = [
            (r#"{"d_model": 64, "n_layer": 1, "vocab_size": 10, "ssm_cfg": {}}"#, "ssm_cfg.layer"),
            (r#"{"d_model": 64, "n_layer": 1, "vocab_size": 10, "ssm_cfg": {"layer": "Mamba1"}}"#, "ssm_cfg.layer"),
            (
                r#"{"d_model": 64, "n_layer": 1, "vocab_size": 10, "d_intermediate": 128, "ssm_cfg": {"layer": "Mamba2"}}"#,
                "d_intermediate",
            ),
            (r#"{"d_model": 64, "n_layer": "two", "vocab_size": 10, "ssm_cfg": {"layer": "Mamba2"}}"#, "n_layer"),
            (
                r#"{"d_model": 64, "n_layer": 1, "vocab_size": 10, "ssm_cfg": {"layer": "Mamba2", "headdim": 48}}"#,
                "headdim",
            ),
            (
                r#"{"d_model": 64, "n_layer": 1, "vocab_size": 10, "ssm_cfg": {"layer": "Mamba2", "headdim": 16, "ngroups": 3}}"#,
                "ngroups",
            ),
            (
                r#"{"hidden_size": 48, "num_hidden_layers": 1, "vocab_size": 10, "head_dim": 12, "num_heads": 5}"#,
                "num_heads",
            ),
            (r#"{"n_layer": 1}"#, "d_model"),
        ];
        for (json, field) in cases {
            match parse(json) {
                Err(ModelError::Config { field: f, .. }) => assert_eq!(f, field, "{json}"),
                other => panic!("{json}: expected a config error on {field}, got {other:?}"),
            }
        }
    }
}
