//! `export`: a trained run → a model directory in the official state-spaces layout (ARCHITECTURE.md §1.5, §2.1):
//! `config.json` (MambaConfig with a Mamba2 `ssm_cfg`), `model.safetensors` (f32; latent
//! `in_proj`/`out_proj` weights with their `[1, in]` `wscale`/`wbias`; tied head, so no
//! `lm_head.weight`) and the tokenizer the data was prepared with.

use std::path::Path;

use crate::checkpoint;
use crate::config::{ModelConfig, Precision};
use crate::error::{Error, Result};
use crate::params::{write_atomic, write_safetensors, NamedTensors};
use crate::runconfig::TrainConfig;

/// The state-spaces `config.json` of a model.
pub fn mamba_config_json(cfg: &ModelConfig) -> serde_json::Value {
    cfg.spec().state_spaces_json(cfg.vocab_size)
}

/// Writes a model directory from a config, weights by name and a tokenizer file.
///
/// The files are written into a temporary sibling folder first and each is then renamed into
/// `out`, so a failure (a missing tokenizer, a full disk) leaves `out` as it was.
pub fn write_model_dir(out: &Path, cfg: &ModelConfig, tensors: &NamedTensors, tokenizer: &Path) -> Result<()> {
    let has_scales = tensors.keys().any(|k| k.ends_with(".wscale"));
    if has_scales != (cfg.precision == Precision::Binary) {
        return Err(Error::Config(format!(
            "the weights {} binarization scales but the model is {:?}",
            if has_scales { "have" } else { "lack" },
            cfg.precision
        )));
    }
    let tok = std::fs::read(tokenizer).map_err(Error::io(tokenizer))?;
    let name = out.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "model".into());
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(Error::io(parent))?;
    let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let staged = (|| -> Result<()> {
        std::fs::create_dir_all(&tmp).map_err(Error::io(&tmp))?;
        let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        write_safetensors(&tmp.join("model.safetensors"), tensors, Some(meta))?;
        write_atomic(&tmp.join("config.json"), format!("{:#}\n", mamba_config_json(cfg)).as_bytes())?;
        write_atomic(&tmp.join("tokenizer.json"), &tok)?;
        std::fs::create_dir_all(out).map_err(Error::io(out))?;
        for f in ["model.safetensors", "config.json", "tokenizer.json"] {
            std::fs::rename(tmp.join(f), out.join(f)).map_err(Error::io(out.join(f)))?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    staged
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
    // Runs keep a copy of their tokenizer; older runs point at their data directory.
    let own = run_dir.join("tokenizer.json");
    let tokenizer = if own.exists() { own } else { cfg.data.dir.join("tokenizer.json") };
    write_model_dir(out, &mcfg, &ck.model, &tokenizer)?;
    Ok(mcfg)
}
