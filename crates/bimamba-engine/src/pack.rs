//! The packed Bi-Mamba format: a safetensors container with real 1-bit weights.
//!
//! Layout (format `bimamba-packed`, version 1):
//! - `{layer}.mixer.{in_proj,out_proj}.bits`: U8 [out, row_bytes], the sign bits of the latent
//!   weight in the bit order of `bimamba_kernels::pack` (row-major, LSB first within each byte,
//!   each row padded to a multiple of 64 bits with zero bits; bit 1 = +1, bit 0 = −1; an exact
//!   zero latent weight is stored as +1);
//! - `{...}.wscale`, `{...}.wbias`: f32, [1, in] (column pattern) or [out, 1] (row pattern);
//! - every other tensor (embedding, conv, norms, A_log, D, dt_bias, an untied lm_head) in f32,
//!   f16 or bf16; a tied `lm_head.weight` is dropped.
//!
//! Metadata: `format`, `version`, `binarization` (`sign, exact zero -> +1`), `bit_order`,
//! `scaling_pattern`. The loader rejects another version or an unknown format with a clear error.
//!
//! Version 2 is version 1 plus 8-bit vocabulary matrices (`bimamba pack --embed q8`); it is
//! written only when they are present, so files without them stay version 1 and readable by
//! version-1 readers, which refuse version 2 by its version string:
//! - metadata `embedding_storage` = `q8` (and `q8_rule`, a human-readable copy of the rule);
//! - the embedding (`backbone.embedding.weight` or `backbone.embeddings.weight`) and an untied
//!   `lm_head.weight` are I8 `[rows, d_model]`, row-major: the codes `q` of
//!   `bimamba_kernels::q8` (per row v: `scale_v = max_d |W[v,d]| / 127`, 1 for an all-zero
//!   row; `q = round(W / scale_v)` half away from zero, clamped to ±127);
//! - next to each, `{name}_scale` (e.g. `backbone.embedding.weight_scale`): F32 `[rows]`
//!   (F16 is read too), the row scales, so that `W[v,d] ≈ scale_v · q[v,d]`.
//!
//! The codes are computed from the source matrix at its stored precision (before `--dtype`).

use std::collections::BTreeMap;
use std::path::Path;

use bimamba_formats::{Checkpoint, DType};
use half::{bf16, f16};

use crate::linear::{BinaryScales, DenseWeight, Linear};
use crate::model::Model;
use bimamba_lm::{ModelError, Result};

pub const PACKED_FORMAT: &str = "bimamba-packed";
/// The version of a packed file whose vocabulary matrices are f32/f16/bf16.
pub const PACKED_VERSION: &str = "1";
/// The version of a packed file with q8 vocabulary matrices.
pub const PACKED_VERSION_Q8: &str = "2";
/// Metadata key of the vocabulary matrices' storage (version 2).
pub const EMBEDDING_STORAGE: &str = "embedding_storage";
/// Suffix of the row-scale tensor of a q8 matrix: `{name}_scale`.
pub const Q8_SCALE_SUFFIX: &str = "_scale";
pub const Q8_RULE: &str = "per row v: scale_v = max_d |W[v,d]| / 127 (1 for an all-zero row), q[v,d] = round(W[v,d] / scale_v) half away from zero, clamped to [-127, 127]; W[v,d] ~ scale_v * q[v,d]";
pub const BIT_ORDER: &str =
    "row-major; bit j of row i at byte i*row_bytes + j/8, bit j%8 (LSB first); rows padded to 64 bits; 1 = +1, 0 = -1";

/// Precision of the tensors that stay high precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepDType {
    /// As stored in the source checkpoint.
    Source,
    F32,
    F16,
    BF16,
}

/// How `bimamba pack` stores the embedding and an untied lm_head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmbedStorage {
    /// Like the other high-precision tensors (`--dtype`); a q8 source is dequantized.
    Dense,
    /// 8-bit rows with one f32 scale each (format version 2).
    Q8,
}

impl EmbedStorage {
    /// Parses `dense | q8` (the `--embed` values).
    pub fn from_name(s: &str) -> std::result::Result<EmbedStorage, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "dense" => Ok(EmbedStorage::Dense),
            "q8" => Ok(EmbedStorage::Q8),
            _ => Err(format!("unknown embedding storage '{s}' (expected dense or q8)")),
        }
    }
}

/// What a packed checkpoint's metadata declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedMeta {
    /// The vocabulary matrices are q8 (version 2, `embedding_storage = q8`).
    pub vocab_q8: bool,
}

/// Checks the metadata of a checkpoint that declares itself packed: `None` when it is not
/// packed, an error for a version or an embedding storage this build does not read.
pub fn check_metadata(ckpt: &Checkpoint) -> Result<Option<PackedMeta>> {
    let meta = ckpt.metadata();
    if meta.get("format").map(String::as_str) != Some(PACKED_FORMAT) {
        return Ok(None);
    }
    let invalid = |detail: String| ModelError::Invalid { file: crate::load::weights_file(ckpt), detail };
    let version = meta.get("version").map(String::as_str);
    if version != Some(PACKED_VERSION) && version != Some(PACKED_VERSION_Q8) {
        return Err(invalid(format!(
            "packed format version {} is not supported; this build reads versions {PACKED_VERSION} and {PACKED_VERSION_Q8}",
            version.map_or("(none given)".to_string(), |v| format!("\"{}\"", v.escape_debug()))
        )));
    }
    let vocab_q8 = match meta.get(EMBEDDING_STORAGE).map(String::as_str) {
        None | Some("dense") => false,
        Some("q8") if version == Some(PACKED_VERSION_Q8) => true,
        Some("q8") => {
            return Err(invalid(format!(
                "{EMBEDDING_STORAGE} \"q8\" needs packed format version {PACKED_VERSION_Q8}, the file says {PACKED_VERSION}"
            )))
        }
        Some(other) => {
            return Err(invalid(format!(
                "{EMBEDDING_STORAGE} \"{other}\" is not supported; this build reads \"dense\" and \"q8\""
            )))
        }
    };
    Ok(Some(PackedMeta { vocab_q8 }))
}

/// Writes `model` (loaded from `src`) in the packed format to `out/model.safetensors`, with the
/// vocabulary matrices stored as `embed` says. Returns (binarized matrices, bytes written).
pub fn write_packed(
    model: &Model,
    src: &Checkpoint,
    out: &Path,
    keep: KeepDType,
    embed: EmbedStorage,
) -> Result<(usize, u64)> {
    let mut owned: Vec<Tensor> = Vec::new();
    let mut packed = 0usize;
    let mut pattern = None;
    for (i, layer) in model.layers.iter().enumerate() {
        for (name, lin) in [("in_proj", &layer.mixer.in_proj), ("out_proj", &layer.mixer.out_proj)] {
            let prefix = format!("backbone.layers.{i}.mixer.{name}");
            let Linear::Binary { rows, cols, bits, scales } = lin else {
                return Err(ModelError::Invalid {
                    file: src.path().to_path_buf(),
                    detail: format!(
                        "`{prefix}` has no wscale/wbias: only Bi-Mamba checkpoints (latent weights + FBI scales) can be packed"
                    ),
                });
            };
            let rb = bimamba_kernels::pack::row_bytes(*cols);
            owned.push((format!("{prefix}.bits"), DType::U8, vec![*rows, rb], bits.clone()));
            let (alpha, beta, shape, pat) = match scales {
                BinaryScales::Column { alpha, beta } => (alpha, beta, vec![1, *cols], "column"),
                BinaryScales::Row { alpha, beta } => (alpha, beta, vec![*rows, 1], "row"),
            };
            pattern.get_or_insert(pat);
            owned.push((format!("{prefix}.wscale"), DType::F32, shape.clone(), f32_bytes(alpha)));
            owned.push((format!("{prefix}.wbias"), DType::F32, shape, f32_bytes(beta)));
            packed += 1;
        }
    }
    // Written above from the model (`.bits` too, so that a packed model can be packed again).
    let replaced = |n: &str| {
        ["in_proj", "out_proj"]
            .iter()
            .any(|p| ["weight", "bits", "wscale", "wbias"].iter().any(|t| n.ends_with(&format!(".mixer.{p}.{t}"))))
    };
    // The vocabulary matrices as the model holds them (the embedding's name is the source's).
    let vocab = |n: &str| -> Option<&Linear> {
        match n {
            "backbone.embedding.weight" | "backbone.embeddings.weight" => Some(&model.embedding),
            "lm_head.weight" => model.lm_head.as_ref(),
            _ => None,
        }
    };
    let is_vocab_scale = |n: &str| n.strip_suffix(Q8_SCALE_SUFFIX).is_some_and(|m| vocab(m).is_some());
    for info in src.tensors() {
        let n = &info.name;
        if replaced(n) || (n == "lm_head.weight" && model.lm_head.is_none()) || is_vocab_scale(n) {
            continue;
        }
        match vocab(n) {
            Some(lin) => owned.extend(vocab_tensors(src, n, info.dtype, lin, keep, embed)?),
            None => {
                let (dtype, bytes) = convert(src, n, info.dtype, keep)?;
                owned.push((n.clone(), dtype, info.shape.clone(), bytes));
            }
        }
    }
    let mut meta = BTreeMap::new();
    meta.insert("format".into(), PACKED_FORMAT.into());
    if embed == EmbedStorage::Q8 {
        meta.insert("version".into(), PACKED_VERSION_Q8.into());
        meta.insert(EMBEDDING_STORAGE.into(), "q8".into());
        meta.insert("q8_rule".into(), Q8_RULE.into());
    } else {
        meta.insert("version".into(), PACKED_VERSION.into());
    }
    meta.insert("binarization".into(), "FBI-Linear sign(W), exact zero -> +1".into());
    meta.insert("bit_order".into(), BIT_ORDER.into());
    meta.insert("scaling_pattern".into(), pattern.unwrap_or("column").into());
    let views: Vec<(String, DType, Vec<usize>, &[u8])> =
        owned.iter().map(|(n, d, s, b)| (n.clone(), *d, s.clone(), b.as_slice())).collect();
    let path = out.join("model.safetensors");
    bimamba_formats::write_safetensors_atomic(&path, &views, &meta)?;
    let size = std::fs::metadata(&path).map_err(|source| ModelError::Io { path: path.clone(), source })?.len();
    Ok((packed, size))
}

type Tensor = (String, DType, Vec<usize>, Vec<u8>);

/// The stored tensors of one vocabulary matrix `lin` (source tensor `name` of `dtype`).
fn vocab_tensors(
    src: &Checkpoint,
    name: &str,
    dtype: DType,
    lin: &Linear,
    keep: KeepDType,
    embed: EmbedStorage,
) -> Result<Vec<Tensor>> {
    let (rows, cols) = (lin.rows(), lin.cols());
    if embed == EmbedStorage::Q8 {
        let q8 = lin.to_q8();
        let Linear::Dense { weight: DenseWeight::Q8 { q, scales, .. }, .. } = &q8 else {
            unreachable!("Linear::to_q8 returns a q8 layer")
        };
        return Ok(vec![
            (name.to_string(), DType::I8, vec![rows, cols], q.iter().map(|&v| v as u8).collect()),
            (format!("{name}{Q8_SCALE_SUFFIX}"), DType::F32, vec![rows], f32_bytes(scales)),
        ]);
    }
    if dtype.is_float() {
        let (dtype, bytes) = convert(src, name, dtype, keep)?;
        return Ok(vec![(name.to_string(), dtype, vec![rows, cols], bytes)]);
    }
    // A q8 source packed dense: its dequantized matrix, in `keep` (f32 for `Source`).
    let w = lin.to_dense_f32();
    let (dtype, bytes) = match keep {
        KeepDType::F16 => (DType::F16, w.iter().flat_map(|x| f16::from_f32(*x).to_le_bytes()).collect()),
        KeepDType::BF16 => (DType::BF16, w.iter().flat_map(|x| bf16::from_f32(*x).to_le_bytes()).collect()),
        KeepDType::Source | KeepDType::F32 => (DType::F32, f32_bytes(&w)),
    };
    Ok(vec![(name.to_string(), dtype, vec![rows, cols], bytes)])
}

fn convert(src: &Checkpoint, name: &str, dtype: DType, keep: KeepDType) -> Result<(DType, Vec<u8>)> {
    let target = match keep {
        KeepDType::Source => return Ok((dtype, src.bytes(name)?.to_vec())),
        KeepDType::F32 => DType::F32,
        KeepDType::F16 => DType::F16,
        KeepDType::BF16 => DType::BF16,
    };
    if dtype == target || !dtype.is_float() {
        return Ok((dtype, src.bytes(name)?.to_vec()));
    }
    let v = src.to_f32(name)?;
    let bytes = match target {
        DType::F16 => v.iter().flat_map(|x| f16::from_f32(*x).to_le_bytes()).collect(),
        DType::BF16 => v.iter().flat_map(|x| bf16::from_f32(*x).to_le_bytes()).collect(),
        _ => f32_bytes(&v),
    };
    Ok((target, bytes))
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
