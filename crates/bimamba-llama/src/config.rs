//! Hyper-parameters of a LLaMA-architecture GGUF, read from its `llama.*` metadata keys (the
//! names llama.cpp's converter writes).

use std::path::Path;

use bimamba_formats::GgufMetadata;
use bimamba_lm::{ModelError, Result};

/// Shape and constants of a LLaMA-architecture model.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// `llama.block_count`
    pub n_layer: usize,
    /// `llama.embedding_length`
    pub d_model: usize,
    /// `llama.feed_forward_length`: hidden width of the SwiGLU feed-forward.
    pub d_ff: usize,
    /// `llama.attention.head_count`
    pub n_head: usize,
    /// `llama.attention.head_count_kv` (defaults to `n_head`: plain multi-head attention).
    pub n_kv_head: usize,
    /// `llama.attention.key_length` (defaults to `d_model / n_head`).
    pub head_dim: usize,
    /// `llama.rope.dimension_count`: the leading dimensions of each head that RoPE rotates
    /// (defaults to `head_dim`).
    pub rope_dim: usize,
    /// `llama.rope.freq_base` (defaults to 10000, LLaMA-1's value).
    pub rope_theta: f32,
    /// `llama.attention.layer_norm_rms_epsilon`
    pub norm_eps: f32,
    /// Rows of `token_embd.weight`.
    pub vocab_size: usize,
    /// `llama.context_length`: the longest sequence the model was trained on; the KV cache
    /// refuses to grow past it.
    pub context_length: usize,
}

impl LlamaConfig {
    /// Width of the concatenated query heads.
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Width of the concatenated key (or value) heads.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_head * self.head_dim
    }

    /// Query heads sharing one key/value head (grouped-query attention).
    pub fn group_size(&self) -> usize {
        self.n_head / self.n_kv_head
    }

    /// Reads and validates the `llama.*` keys; `vocab_size` is the embedding's row count, found
    /// by the caller from the tensor itself.
    pub fn from_gguf(meta: &GgufMetadata, vocab_size: usize, file: &Path) -> Result<LlamaConfig> {
        let bad = |field: &str, detail: String| ModelError::Config {
            file: file.to_path_buf(),
            field: field.to_string(),
            detail,
        };
        match meta.architecture() {
            Some("llama") => {}
            Some(other) => {
                return Err(bad("general.architecture", format!("`{other}` is not supported here (only `llama`)")))
            }
            None => return Err(bad("general.architecture", "missing".into())),
        }
        let uint = |suffix: &str| -> Result<Option<usize>> {
            let key = format!("llama.{suffix}");
            match meta.get(&key) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .and_then(|x| usize::try_from(x).ok())
                    .map(Some)
                    .ok_or_else(|| bad(&key, format!("expected an unsigned integer, found {}", v.type_name()))),
            }
        };
        let need = |suffix: &str| -> Result<usize> {
            match uint(suffix)? {
                Some(0) => Err(bad(&format!("llama.{suffix}"), "must be positive, found 0".into())),
                Some(v) => Ok(v),
                None => Err(bad(&format!("llama.{suffix}"), "missing".into())),
            }
        };
        let float = |suffix: &str, default: Option<f32>| -> Result<f32> {
            let key = format!("llama.{suffix}");
            match meta.get(&key) {
                None => default.ok_or_else(|| bad(&key, "missing".into())),
                Some(v) => v
                    .as_f32()
                    .filter(|x| x.is_finite() && *x > 0.0)
                    .ok_or_else(|| bad(&key, format!("expected a positive float, found {v:?}"))),
            }
        };

        let n_layer = need("block_count")?;
        let d_model = need("embedding_length")?;
        let d_ff = need("feed_forward_length")?;
        let n_head = need("attention.head_count")?;
        let n_kv_head = uint("attention.head_count_kv")?.unwrap_or(n_head);
        if n_kv_head == 0 || n_head % n_kv_head != 0 {
            return Err(bad(
                "llama.attention.head_count_kv",
                format!("{n_kv_head} does not divide head_count {n_head}"),
            ));
        }
        let head_dim = match uint("attention.key_length")? {
            Some(k) => k,
            None if d_model % n_head == 0 => d_model / n_head,
            None => {
                return Err(bad(
                    "llama.attention.head_count",
                    format!("{n_head} heads do not divide embedding_length {d_model}"),
                ))
            }
        };
        if let Some(vl) = uint("attention.value_length")? {
            if vl != head_dim {
                return Err(bad(
                    "llama.attention.value_length",
                    format!("{vl} differs from key_length {head_dim}; only equal lengths are supported"),
                ));
            }
        }
        if head_dim == 0 {
            return Err(bad("llama.attention.key_length", "must be positive, found 0".into()));
        }
        let rope_dim = uint("rope.dimension_count")?.unwrap_or(head_dim);
        if rope_dim == 0 || rope_dim > head_dim || rope_dim % 2 != 0 {
            return Err(bad(
                "llama.rope.dimension_count",
                format!("{rope_dim} must be even and at most the head dimension {head_dim}"),
            ));
        }
        if let Some(kind) = meta.get_str("llama.rope.scaling.type") {
            if kind != "none" {
                return Err(bad(
                    "llama.rope.scaling.type",
                    format!("RoPE scaling `{kind}` is not supported (only unscaled RoPE)"),
                ));
            }
        }
        if let Some(n) = uint("expert_count")? {
            if n > 0 {
                return Err(bad("llama.expert_count", format!("{n} experts: mixture-of-experts is not supported")));
            }
        }
        let rope_theta = float("rope.freq_base", Some(10000.0))?;
        let norm_eps = float("attention.layer_norm_rms_epsilon", None)?;
        let context_length = need("context_length")?;
        if let Some(v) = uint("vocab_size")? {
            if v != vocab_size {
                return Err(bad("llama.vocab_size", format!("{v}, but token_embd.weight has {vocab_size} rows")));
            }
        }
        Ok(LlamaConfig {
            n_layer,
            d_model,
            d_ff,
            n_head,
            n_kv_head,
            head_dim,
            rope_dim,
            rope_theta,
            norm_eps,
            vocab_size,
            context_length,
        })
    }
}
