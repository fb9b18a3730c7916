//! Building a [`Model`] from a checkpoint: weights are found by key path, every shape is checked,
//! and a missing or misshapen tensor is reported by name with the expected and actual shapes.
//!
//! Projection formats, told apart by the tensors present next to `{prefix}.weight`:
//! - `{prefix}.bits` (U8 [out, row_bytes]) + `wscale`/`wbias`: packed 1-bit (see `bimamba pack`);
//! - `{prefix}.weight` + `wscale`/`wbias`: a latent Bi-Mamba weight, binarized here at load;
//! - `{prefix}.weight` alone: full precision, kept in its stored dtype (f32, f16 or bf16).
//!
//! `wscale`/`wbias` of shape [1, in] are the column pattern, [out, 1] the row pattern.
//!
//! Vocabulary matrices (embedding, untied lm_head) are dense, or, in a packed version-2 file
//! declaring `embedding_storage = q8`, I8 codes plus `{name}_scale` row scales (see `pack`).

use std::path::{Path, PathBuf};

use bimamba_formats::{Checkpoint, DType};
use half::{bf16, f16};

use crate::config::{Config, Dialect};
use crate::linear::{BinaryAct, BinaryScales, DenseWeight, Linear};
use crate::mixer::Mixer;
use crate::model::{Layer, Model};
use crate::pack::{PackedMeta, EMBEDDING_STORAGE, PACKED_FORMAT, PACKED_VERSION_Q8, Q8_SCALE_SUFFIX};
use crate::state::StateDtype;
use bimamba_lm::{ModelError, Result};

impl Model {
    /// Loads a model directory: `config.json` plus `model.safetensors` (or shards) or
    /// `pytorch_model.bin`.
    pub fn load(dir: &Path) -> Result<Model> {
        if !dir.exists() {
            return Err(ModelError::Invalid { file: dir.to_path_buf(), detail: "no such model directory".into() });
        }
        if !dir.is_dir() {
            return Err(ModelError::Invalid {
                file: dir.to_path_buf(),
                detail: "expected a model directory holding config.json and the weights".into(),
            });
        }
        let config = Config::from_file(dir)?;
        let ckpt = Checkpoint::open(dir)?;
        Model::from_checkpoint(&ckpt, config)
    }

    pub fn from_checkpoint(ckpt: &Checkpoint, config: Config) -> Result<Model> {
        let ld = Loader { ckpt, file: weights_file(ckpt), packed: crate::pack::check_metadata(ckpt)? };
        let c = &config;
        let (d, v) = (c.d_model, c.padded_vocab_size);
        let emb_names = match c.dialect {
            Dialect::StateSpaces => ["backbone.embedding.weight", "backbone.embeddings.weight"],
            Dialect::Transformers => ["backbone.embeddings.weight", "backbone.embedding.weight"],
        };
        let emb_name = emb_names.iter().find(|n| ckpt.info(n).is_some()).ok_or_else(|| ModelError::MissingTensor {
            file: ld.file.clone(),
            tensor: emb_names[0].to_string(),
            hint: format!(" (nor `{}`)", emb_names[1]),
        })?;
        // The embedding decides the vocabulary rows; the config must agree with it.
        let emb_rows = ckpt.info(emb_name).map(|i| i.shape[0]).unwrap_or(0);
        let rows_ok = emb_rows == v || (emb_rows >= c.vocab_size && emb_rows <= v);
        let embedding = ld.vocab(emb_name, if rows_ok { emb_rows } else { v }, d)?;

        // The layer count comes from config.json: checked against the file before anything is
        // sized by it.
        let held = layers_in(ckpt);
        if held < c.n_layer {
            return Err(ModelError::Invalid {
                file: ld.file.clone(),
                detail: format!(
                    "config.json declares n_layer = {} but the weights hold {held} layers (`backbone.layers.0` to `backbone.layers.{}`)",
                    c.n_layer,
                    held.saturating_sub(1)
                ),
            });
        }
        let mut layers = Vec::new();
        for i in 0..c.n_layer {
            let p = format!("backbone.layers.{i}");
            let m = format!("{p}.mixer");
            let a_log = ld.vector(&format!("{m}.A_log"), c.nheads)?;
            // Stored [conv_dim, d_conv]; kept tap-major [d_conv, conv_dim] (see `Mixer::conv_weight`).
            let conv_weight = crate::mixer::conv_taps_major(
                &ld.f32_any(&format!("{m}.conv1d.weight"), &[&[c.conv_dim(), 1, c.d_conv], &[c.conv_dim(), c.d_conv]])?,
                c.d_conv,
            );
            layers.push(Layer {
                norm: ld.vector(&format!("{p}.norm.weight"), d)?,
                mixer: Mixer {
                    in_proj: ld.linear(&format!("{m}.in_proj"), c.d_in_proj(), d)?,
                    conv_weight,
                    conv_bias: ld.vector(&format!("{m}.conv1d.bias"), c.conv_dim())?,
                    dt_bias: ld.vector(&format!("{m}.dt_bias"), c.nheads)?,
                    a: a_log.iter().map(|x| -x.exp()).collect(),
                    d: ld.vector(&format!("{m}.D"), c.nheads)?,
                    norm_weight: if c.gated_norm {
                        ld.vector(&format!("{m}.norm.weight"), c.d_inner())?
                    } else {
                        Vec::new()
                    },
                    out_proj: ld.linear(&format!("{m}.out_proj"), d, c.d_inner())?,
                },
            });
        }
        let norm_f = ld.vector("backbone.norm_f.weight", d)?;
        let lm_head = if c.tie_embeddings {
            None
        } else {
            if ckpt.info("lm_head.weight").is_none() {
                return Err(ModelError::MissingTensor {
                    file: ld.file.clone(),
                    tensor: "lm_head.weight".into(),
                    hint: " (the config says the embeddings are not tied)".into(),
                });
            }
            Some(ld.vocab("lm_head.weight", embedding.rows(), d)?)
        };
        Ok(Model {
            config,
            embedding,
            layers,
            norm_f,
            lm_head,
            state_dtype: StateDtype::F32,
            binary_act: BinaryAct::F32,
        })
    }
}

/// How many consecutive layers `backbone.layers.{0,1,...}` the checkpoint holds tensors of.
fn layers_in(ckpt: &Checkpoint) -> usize {
    let present: std::collections::BTreeSet<usize> = ckpt
        .tensors()
        .iter()
        .filter_map(|t| t.name.strip_prefix("backbone.layers.")?.split('.').next()?.parse().ok())
        .collect();
    (0..).find(|i| !present.contains(i)).unwrap_or(0)
}

/// Refuses a tensor holding NaN or an infinity: such a model only ever computes NaN.
fn check_finite(file: &Path, name: &str, values: impl IntoIterator<Item = bool>) -> Result<()> {
    match values.into_iter().position(|finite| !finite) {
        None => Ok(()),
        Some(i) => Err(ModelError::Invalid {
            file: file.to_path_buf(),
            detail: format!(
                "tensor `{}` holds a non-finite value (NaN or infinity) at element {i}",
                name.escape_debug()
            ),
        }),
    }
}

/// The file the tensors come from, for error messages (the directory's weights file when a
/// model directory was opened; same order of preference as `Checkpoint::open`).
pub(crate) fn weights_file(ckpt: &Checkpoint) -> PathBuf {
    let p = ckpt.path();
    if p.is_dir() {
        for f in ["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"] {
            if p.join(f).is_file() {
                return p.join(f);
            }
        }
    }
    p.to_path_buf()
}

struct Loader<'a> {
    ckpt: &'a Checkpoint,
    file: PathBuf,
    /// What the checkpoint declares when it is in the packed format (a version this build reads).
    packed: Option<PackedMeta>,
}

impl Loader<'_> {
    fn shape_of(&self, name: &str) -> Result<Vec<usize>> {
        self.ckpt.info(name).map(|i| i.shape.clone()).ok_or_else(|| ModelError::MissingTensor {
            file: self.file.clone(),
            tensor: name.to_string(),
            hint: String::new(),
        })
    }

    fn shape_err(&self, name: &str, expected: &[usize], actual: Vec<usize>) -> ModelError {
        ModelError::Shape { file: self.file.clone(), tensor: name.to_string(), expected: expected.to_vec(), actual }
    }

    /// f32 data of a tensor whose shape must be one of `shapes` (the first is reported).
    fn f32_any(&self, name: &str, shapes: &[&[usize]]) -> Result<Vec<f32>> {
        let actual = self.shape_of(name)?;
        if !shapes.contains(&actual.as_slice()) {
            return Err(self.shape_err(name, shapes[0], actual));
        }
        self.finite_f32(name)
    }

    /// f32 data of a tensor, refused when any value is NaN or infinite.
    fn finite_f32(&self, name: &str) -> Result<Vec<f32>> {
        let v = self.ckpt.to_f32(name)?;
        check_finite(&self.file, name, v.iter().map(|x| x.is_finite()))?;
        Ok(v)
    }

    fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>> {
        self.f32_any(name, &[&[n]])
    }

    /// A dense [rows, cols] matrix kept in its stored dtype (f64 becomes f32).
    fn dense(&self, name: &str, rows: usize, cols: usize) -> Result<Linear> {
        let actual = self.shape_of(name)?;
        if actual != [rows, cols] {
            return Err(self.shape_err(name, &[rows, cols], actual));
        }
        let info = self.ckpt.info(name).expect("shape_of checked presence");
        let weight = match info.dtype {
            DType::F16 => {
                let w: Vec<f16> =
                    self.ckpt.bytes(name)?.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect();
                check_finite(&self.file, name, w.iter().map(|x| x.is_finite()))?;
                DenseWeight::F16(w)
            }
            DType::BF16 => {
                let w: Vec<bf16> =
                    self.ckpt.bytes(name)?.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]])).collect();
                check_finite(&self.file, name, w.iter().map(|x| x.is_finite()))?;
                DenseWeight::BF16(w)
            }
            _ => DenseWeight::F32(self.finite_f32(name)?),
        };
        Ok(Linear::Dense { rows, cols, weight })
    }

    /// A vocabulary matrix (embedding, lm_head) [rows, cols]: dense, or q8 when the packed
    /// metadata declares it (then the tensor must be I8 with `{name}_scale` [rows] next to it).
    fn vocab(&self, name: &str, rows: usize, cols: usize) -> Result<Linear> {
        let actual = self.shape_of(name)?;
        let dtype = self.ckpt.info(name).expect("shape_of checked presence").dtype;
        let declared = self.packed.is_some_and(|p| p.vocab_q8);
        let invalid = |detail: String| ModelError::Invalid { file: self.file.clone(), detail };
        match (dtype, declared) {
            (DType::I8, true) => {}
            (DType::I8, false) => {
                return Err(invalid(format!(
                    "tensor `{name}` is I8 but the metadata does not declare {EMBEDDING_STORAGE} \"q8\" (format \"{PACKED_FORMAT}\" version {PACKED_VERSION_Q8})"
                )))
            }
            (other, true) => {
                return Err(invalid(format!(
                    "the metadata declares {EMBEDDING_STORAGE} \"q8\" but tensor `{name}` is {}, not I8",
                    other.name()
                )))
            }
            (_, false) => return self.dense(name, rows, cols),
        }
        if actual != [rows, cols] {
            return Err(self.shape_err(name, &[rows, cols], actual));
        }
        let scale_name = format!("{name}{Q8_SCALE_SUFFIX}");
        let scales = self.vector(&scale_name, rows)?;
        if let Some((i, s)) = scales.iter().enumerate().find(|(_, s)| !(s.is_finite() && **s > 0.0)) {
            return Err(invalid(format!("tensor `{scale_name}`: row {i} has scale {s}; q8 scales are finite and > 0")));
        }
        let q = self.ckpt.bytes(name)?.iter().map(|&b| b as i8).collect();
        Ok(Linear::Dense { rows, cols, weight: DenseWeight::q8(q, scales, cols) })
    }

    /// A projection in any of the three formats (see the module doc).
    fn linear(&self, prefix: &str, rows: usize, cols: usize) -> Result<Linear> {
        let scale_name = format!("{prefix}.wscale");
        let bias_name = format!("{prefix}.wbias");
        if self.ckpt.info(&scale_name).is_none() {
            if self.ckpt.info(&bias_name).is_some() {
                return Err(ModelError::MissingTensor {
                    file: self.file.clone(),
                    tensor: scale_name,
                    hint: format!(" (`{bias_name}` is present: a Bi-Mamba layer needs both)"),
                });
            }
            return self.dense(&format!("{prefix}.weight"), rows, cols);
        }
        let s_shape = self.shape_of(&scale_name)?;
        let column = if s_shape == [1, cols] || s_shape == [cols] {
            true
        } else if s_shape == [rows, 1] {
            false
        } else {
            return Err(ModelError::Invalid {
                file: self.file.clone(),
                detail: format!(
                    "tensor `{scale_name}` has shape {s_shape:?}, expected {:?} (column pattern) or {:?} (row pattern)",
                    [1, cols],
                    [rows, 1]
                ),
            });
        };
        let n = if column { cols } else { rows };
        let alpha = self.finite_f32(&scale_name)?;
        let b_shape = self.shape_of(&bias_name)?;
        if b_shape != s_shape {
            return Err(self.shape_err(&bias_name, &s_shape, b_shape));
        }
        let beta = self.finite_f32(&bias_name)?;
        debug_assert_eq!(alpha.len(), n);
        let scales = if column { BinaryScales::Column { alpha, beta } } else { BinaryScales::Row { alpha, beta } };
        let bits_name = format!("{prefix}.bits");
        if self.ckpt.info(&bits_name).is_some() {
            if self.packed.is_none() {
                return Err(ModelError::Invalid {
                    file: self.file.clone(),
                    detail: format!(
                        "tensor `{bits_name}` holds packed bits but the metadata does not declare format \"{}\"",
                        crate::pack::PACKED_FORMAT
                    ),
                });
            }
            let rb = bimamba_kernels::pack::row_bytes(cols);
            let actual = self.shape_of(&bits_name)?;
            if actual != [rows, rb] {
                return Err(self.shape_err(&bits_name, &[rows, rb], actual));
            }
            let bits = self.ckpt.bytes(&bits_name)?.to_vec();
            return Ok(Linear::Binary { rows, cols, bits, scales });
        }
        let wname = format!("{prefix}.weight");
        let actual = self.shape_of(&wname)?;
        if actual != [rows, cols] {
            return Err(self.shape_err(&wname, &[rows, cols], actual));
        }
        // Only the signs are kept, but a NaN latent weight means a broken checkpoint.
        let latent = self.finite_f32(&wname)?;
        Ok(Linear::binarize(&latent, rows, cols, scales))
    }
}
