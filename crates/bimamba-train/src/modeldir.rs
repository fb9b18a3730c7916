//! Reading a model directory (config.json + model.safetensors [+ tokenizer.json]) in either
//! dialect: state-spaces `MambaConfig` or transformers `Mamba2Config` (SPEC §1).

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use serde_json::Value;

use crate::config::{ModelConfig, Precision};
use crate::error::{Error, Result};
use crate::model::Mamba2Lm;
use crate::params::{self, NamedTensors};

/// A model directory's configuration and tensors, names normalized to the state-spaces dialect.
#[derive(Debug)]
pub struct ModelDir {
    /// The directory.
    pub dir: PathBuf,
    /// The architecture (precision inferred from the presence of `wscale` tensors).
    pub config: ModelConfig,
    /// Whether the file has its own `lm_head.weight` (untied).
    pub untied_head: bool,
    /// All tensors, f32 (or f64 if stored so).
    pub tensors: NamedTensors,
}

fn field<'a>(v: &'a Value, path: &Path, key: &str) -> Result<&'a Value> {
    v.get(key).ok_or_else(|| Error::format(path, format!("missing field `{key}`")))
}

fn usize_of(v: &Value, path: &Path, key: &str) -> Result<usize> {
    field(v, path, key)?
        .as_u64()
        .map(|x| x as usize)
        .ok_or_else(|| Error::format(path, format!("field `{key}` is not a non-negative integer")))
}

fn usize_or(v: &Value, key: &str, default: usize) -> usize {
    v.get(key).and_then(Value::as_u64).map(|x| x as usize).unwrap_or(default)
}

/// Parses config.json of either dialect. Precision is set to Full; callers fix it from the tensors.
pub fn parse_config(text: &str, path: &Path) -> Result<(ModelConfig, bool)> {
    let v: Value = serde_json::from_str(text).map_err(|e| Error::format(path, e.to_string()))?;
    if v.get("d_model").is_some() {
        // state-spaces MambaConfig.
        let ssm = v.get("ssm_cfg").cloned().unwrap_or(Value::Null);
        if let Some(layer) = ssm.get("layer").and_then(Value::as_str) {
            if layer != "Mamba2" {
                return Err(Error::format(path, format!("ssm_cfg.layer is {layer}; only Mamba2 is supported")));
            }
        }
        if usize_or(&v, "d_intermediate", 0) != 0 {
            return Err(Error::format(path, "d_intermediate > 0 (MLP blocks) is not supported"));
        }
        let cfg = ModelConfig {
            d_model: usize_of(&v, path, "d_model")?,
            n_layer: usize_of(&v, path, "n_layer")?,
            vocab_size: usize_of(&v, path, "vocab_size")?,
            d_state: usize_or(&ssm, "d_state", 128),
            d_conv: usize_or(&ssm, "d_conv", 4),
            expand: usize_or(&ssm, "expand", 2),
            headdim: usize_or(&ssm, "headdim", 64),
            ngroups: usize_or(&ssm, "ngroups", 1),
            chunk_size: usize_or(&ssm, "chunk_size", 256),
            pad_vocab_size_multiple: usize_or(&v, "pad_vocab_size_multiple", 8),
            norm_eps: 1e-5,
            precision: Precision::Full,
        };
        let tied = v.get("tie_embeddings").and_then(Value::as_bool).unwrap_or(true);
        Ok((cfg, tied))
    } else if v.get("hidden_size").is_some() {
        // transformers Mamba2Config (vocab_size is already the padded row count).
        let cfg = ModelConfig {
            d_model: usize_of(&v, path, "hidden_size")?,
            n_layer: usize_of(&v, path, "num_hidden_layers")?,
            vocab_size: usize_of(&v, path, "vocab_size")?,
            d_state: usize_or(&v, "state_size", 128),
            d_conv: usize_or(&v, "conv_kernel", 4),
            expand: usize_or(&v, "expand", 2),
            headdim: usize_or(&v, "head_dim", 64),
            ngroups: usize_or(&v, "n_groups", 1),
            chunk_size: usize_or(&v, "chunk_size", 256),
            pad_vocab_size_multiple: 1,
            norm_eps: v.get("layer_norm_epsilon").and_then(Value::as_f64).unwrap_or(1e-5),
            precision: Precision::Full,
        };
        let tied = v.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(true);
        Ok((cfg, tied))
    } else {
        Err(Error::format(path, "neither a state-spaces nor a transformers Mamba-2 config"))
    }
}

impl ModelDir {
    /// Reads `dir/config.json` and `dir/model.safetensors`.
    pub fn open(dir: &Path) -> Result<Self> {
        let cpath = dir.join("config.json");
        let text = std::fs::read_to_string(&cpath).map_err(Error::io(&cpath))?;
        let (mut config, tied) = parse_config(&text, &cpath)?;
        config.validate().map_err(|m| Error::format(&cpath, m))?;
        let wpath = dir.join("model.safetensors");
        if !wpath.exists() && dir.join("pytorch_model.bin").exists() {
            return Err(Error::format(
                dir.join("pytorch_model.bin"),
                "the trainer reads model.safetensors only; convert this PyTorch checkpoint first",
            ));
        }
        let mut tensors = NamedTensors::new();
        for (name, t) in params::read_safetensors(&wpath)? {
            let name = name.replace("backbone.embeddings.", "backbone.embedding.");
            tensors.insert(name, t);
        }
        if tensors.keys().any(|k| k.ends_with(".wscale")) {
            config.precision = Precision::Binary;
        }
        // A tied checkpoint may still store lm_head.weight (shared storage): drop it.
        let untied_head = !tied && tensors.contains_key("lm_head.weight");
        if !untied_head {
            tensors.remove("lm_head.weight");
        }
        Ok(Self { dir: dir.to_path_buf(), config, untied_head, tensors })
    }

    /// Builds the model on `device` with these weights.
    pub fn build<B: Backend>(&self, device: &B::Device) -> Result<Mamba2Lm<B>> {
        let mut model = Mamba2Lm::<B>::init(&self.config, 0, device);
        if self.untied_head {
            model = model.untie_head();
        }
        // Column (`[1, in]`) and row (`[out, 1]`) scales: shape the scale params like the file.
        model = reshape_scales(model, &self.tensors);
        params::load(model, &self.tensors, &self.dir.display().to_string())
    }
}

/// Row-pattern checkpoints store α, β as [out, 1]; give the model parameters that shape.
fn reshape_scales<B: Backend>(mut model: Mamba2Lm<B>, tensors: &NamedTensors) -> Mamba2Lm<B> {
    use burn::module::Param;
    use burn::tensor::Tensor;
    for (i, layer) in model.backbone.layers.iter_mut().enumerate() {
        for (name, proj) in [("in_proj", &mut layer.mixer.in_proj), ("out_proj", &mut layer.mixer.out_proj)] {
            let key = format!("backbone.layers.{i}.mixer.{name}.wscale");
            let Some(shape) = tensors.get(&key).map(|t| t.shape.to_vec()) else { continue };
            if shape.len() == 2 && shape[1] == 1 {
                let device = proj.weight.val().device();
                let dims = [shape[0], 1];
                let z = || Param::from_tensor(Tensor::zeros(dims, crate::ops::opts::<B>(&device)));
                proj.wscale = Some(z());
                proj.wbias = Some(z());
            }
        }
    }
    model
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::{Int, Tensor, TensorData};

    type B = NdArray<f64>;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures").join(name)
    }

    /// Forward of a fixture model against the float64 NumPy recurrence (`logits_ref`).
    fn check_fixture(name: &str) -> f64 {
        let dir = fixture(name);
        let md = ModelDir::open(&dir).expect("fixture model dir");
        let model = md.build::<B>(&Default::default()).expect("fixture weights load");
        let refs = params::read_safetensors(&dir.join("reference.safetensors")).expect("reference");
        let tokens: Vec<i64> = refs["tokens"].iter::<i64>().collect();
        let want: Vec<f64> = refs["logits_ref"].iter::<f64>().collect();
        let l = tokens.len();
        let t = Tensor::<B, 2, Int>::from_data(TensorData::new(tokens, [1, l]), &Default::default());
        let got: Vec<f64> = model.forward(t).to_data().iter::<f64>().collect();
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
        assert!(got.iter().all(|x| x.is_finite()), "non-finite logits");
        got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f64, |m, d| if d.is_nan() || d > m { d } else { m })
            / scale
    }

    #[test]
    fn bimamba_column_fixture_matches_reference_logits() {
        let err = check_fixture("ss-bimamba-col");
        assert!(err < 1e-10, "max relative error {err}");
    }

    #[test]
    fn grouped_fp_fixture_matches_reference_logits() {
        // ngroups = 2, untied head, bf16 weights, transformers names.
        let err = check_fixture("hf-mamba2-g2");
        assert!(err < 1e-10, "max relative error {err}");
    }
}
