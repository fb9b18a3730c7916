//! Reading a model directory (config.json + model.safetensors [+ tokenizer.json]) in either
//! dialect: state-spaces `MambaConfig` or transformers `Mamba2Config` (ARCHITECTURE.md §1.5). The config is
//! parsed by the inference engine's [`bimamba_engine::Config`], so both crates accept and refuse
//! the same files.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;

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

impl ModelDir {
    /// Reads `dir/config.json` and `dir/model.safetensors`.
    pub fn open(dir: &Path) -> Result<Self> {
        let cpath = dir.join("config.json");
        let parsed = bimamba_engine::Config::from_file(&cpath)?;
        let mut config = ModelConfig::from_engine(&parsed, &cpath)?;
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
        let untied_head = !parsed.tie_embeddings && tensors.contains_key("lm_head.weight");
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
    fn every_fixture_config_is_accepted() {
        for (name, precision, untied) in
            [("ss-bimamba-col", Precision::Binary, false), ("hf-mamba2-g2", Precision::Full, true)]
        {
            let md = ModelDir::open(&fixture(name)).expect(name);
            assert_eq!(
                (md.config.precision, md.untied_head, md.config.padded_vocab_size),
                (precision, untied, 464),
                "{name}"
            );
        }
        // PyTorch-only fixtures: the config is accepted, then the weights file is refused.
        for name in ["ss-bimamba-row", "ss-mamba2-g1"] {
            let msg = ModelDir::open(&fixture(name)).expect_err(name).to_string();
            assert!(msg.contains("pytorch_model.bin: the trainer reads model.safetensors only"), "{name}: {msg}");
        }
    }

    #[test]
    fn an_unsupported_config_is_refused_in_one_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cpath = dir.path().join("config.json");
        std::fs::write(&cpath, r#"{"d_model": 64, "n_layer": 1, "vocab_size": 10, "ssm_cfg": {"layer": "Mamba1"}}"#)
            .expect("write config");
        let msg = ModelDir::open(dir.path()).expect_err("Mamba-1 is refused").to_string();
        assert!(msg.starts_with(&format!("{}: field `ssm_cfg.layer`", cpath.display())), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn grouped_fp_fixture_matches_reference_logits() {
        // ngroups = 2, untied head, bf16 weights, transformers names.
        let err = check_fixture("hf-mamba2-g2");
        assert!(err < 1e-10, "max relative error {err}");
    }
}
