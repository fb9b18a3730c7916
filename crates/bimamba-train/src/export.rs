//! `export`: a trained run → a model directory in the official state-spaces layout (SPEC §1-§2):
//! `config.json` (MambaConfig with a Mamba2 `ssm_cfg`), `model.safetensors` (f32; latent
//! `in_proj`/`out_proj` weights with their `[1, in]` `wscale`/`wbias`; tied head, so no
//! `lm_head.weight`) and the tokenizer the data was prepared with.

use std::path::Path;

use serde_json::json;

use crate::checkpoint;
use crate::config::{ModelConfig, Precision};
use crate::error::{Error, Result};
use crate::params::{write_atomic, write_safetensors, NamedTensors};
use crate::runconfig::TrainConfig;

/// The state-spaces `config.json` of a model.
pub fn mamba_config_json(cfg: &ModelConfig) -> serde_json::Value {
    json!({
        "d_model": cfg.d_model,
        "d_intermediate": 0,
        "n_layer": cfg.n_layer,
        "vocab_size": cfg.vocab_size,
        "ssm_cfg": {
            "layer": "Mamba2",
            "d_state": cfg.d_state,
            "d_conv": cfg.d_conv,
            "expand": cfg.expand,
            "headdim": cfg.headdim,
            "ngroups": cfg.ngroups,
            "chunk_size": cfg.chunk_size,
        },
        "attn_layer_idx": [],
        "attn_cfg": {},
        "rms_norm": true,
        "residual_in_fp32": true,
        "fused_add_norm": true,
        "pad_vocab_size_multiple": cfg.pad_vocab_size_multiple,
        "tie_embeddings": true,
    })
}

/// Writes a model directory from a config, weights by name and a tokenizer file.
pub fn write_model_dir(out: &Path, cfg: &ModelConfig, tensors: &NamedTensors, tokenizer: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(Error::io(out))?;
    let has_scales = tensors.keys().any(|k| k.ends_with(".wscale"));
    if has_scales != (cfg.precision == Precision::Binary) {
        return Err(Error::Config(format!(
            "the weights {} binarization scales but the model is {:?}",
            if has_scales { "have" } else { "lack" },
            cfg.precision
        )));
    }
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(&out.join("model.safetensors"), tensors, Some(meta))?;
    let text = format!("{:#}\n", mamba_config_json(cfg));
    write_atomic(&out.join("config.json"), text.as_bytes())?;
    let tok = std::fs::read(tokenizer).map_err(Error::io(tokenizer))?;
    write_atomic(&out.join("tokenizer.json"), &tok)
}

/// Exports the latest checkpoint of `run_dir` to `out`.
pub fn export_run(run_dir: &Path, out: &Path) -> Result<ModelConfig> {
    let cfg_path = run_dir.join("config.toml");
    let text = std::fs::read_to_string(&cfg_path).map_err(Error::io(&cfg_path))?;
    let cfg: TrainConfig = toml::from_str(&text).map_err(|e| Error::format(&cfg_path, e.to_string()))?;
    let vocab = cfg
        .model
        .vocab_size
        .ok_or_else(|| Error::format(&cfg_path, "model.vocab_size is missing (not a resolved run config)"))?;
    let mcfg = cfg.model.resolve(vocab)?;
    let ck_dir = checkpoint::latest(run_dir)?
        .ok_or_else(|| Error::Config(format!("{} has no checkpoint to export", run_dir.display())))?;
    let ck = checkpoint::load(&ck_dir)?;
    write_model_dir(out, &mcfg, &ck.model, &cfg.data.dir.join("tokenizer.json"))?;
    Ok(mcfg)
}
