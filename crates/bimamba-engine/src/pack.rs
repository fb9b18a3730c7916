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
//! Metadata: `format`, `version`, `binarization` (`sign, exact zero -> +1`), `bit_order`,
//! `scaling_pattern`. The loader rejects another version or an unknown format with a clear error.

use std::collections::BTreeMap;
use std::path::Path;

use bimamba_formats::{Checkpoint, DType};
use half::{bf16, f16};

use crate::error::{EngineError, Result};
use crate::linear::{BinaryScales, Linear};
use crate::model::Model;

pub const PACKED_FORMAT: &str = "bimamba-packed";
pub const PACKED_VERSION: &str = "1";
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

/// Checks the version of a checkpoint that declares itself packed; returns whether it is packed.
pub fn check_metadata(ckpt: &Checkpoint) -> Result<bool> {
    let meta = ckpt.metadata();
    if meta.get("format").map(String::as_str) != Some(PACKED_FORMAT) {
        return Ok(false);
    }
    match meta.get("version").map(String::as_str) {
        Some(PACKED_VERSION) => Ok(true),
        other => Err(EngineError::Invalid {
            file: crate::load::weights_file(ckpt),
            detail: format!(
                "packed format version {other:?} is not supported; this build reads version {PACKED_VERSION}"
            ),
        }),
    }
}

/// Writes `model` (loaded from `src`) in the packed format to `out/model.safetensors`.
/// Returns (binarized matrices, bytes written).
pub fn write_packed(model: &Model, src: &Checkpoint, out: &Path, keep: KeepDType) -> Result<(usize, u64)> {
    let mut owned: Vec<(String, DType, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut packed = 0usize;
    let mut pattern = None;
    for (i, layer) in model.layers.iter().enumerate() {
        for (name, lin) in [("in_proj", &layer.mixer.in_proj), ("out_proj", &layer.mixer.out_proj)] {
            let prefix = format!("backbone.layers.{i}.mixer.{name}");
            let Linear::Binary { rows, cols, bits, scales } = lin else {
                return Err(EngineError::Invalid {
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
    let replaced = |n: &str| {
        ["in_proj", "out_proj"].iter().any(|p| {
            n.ends_with(&format!(".mixer.{p}.weight"))
                || n.ends_with(&format!(".mixer.{p}.wscale"))
                || n.ends_with(&format!(".mixer.{p}.wbias"))
        })
    };
    for info in src.tensors() {
        let n = &info.name;
        if replaced(n) || (n == "lm_head.weight" && model.lm_head.is_none()) {
            continue;
        }
        let (dtype, bytes) = convert(src, n, info.dtype, keep)?;
        owned.push((n.clone(), dtype, info.shape.clone(), bytes));
    }
    let mut meta = BTreeMap::new();
    meta.insert("format".into(), PACKED_FORMAT.into());
    meta.insert("version".into(), PACKED_VERSION.into());
    meta.insert("binarization".into(), "FBI-Linear sign(W), exact zero -> +1".into());
    meta.insert("bit_order".into(), BIT_ORDER.into());
    meta.insert("scaling_pattern".into(), pattern.unwrap_or("column").into());
    let views: Vec<(String, DType, Vec<usize>, &[u8])> =
        owned.iter().map(|(n, d, s, b)| (n.clone(), *d, s.clone(), b.as_slice())).collect();
    let path = out.join("model.safetensors");
    bimamba_formats::write_safetensors_atomic(&path, &views, &meta)?;
    let size = std::fs::metadata(&path).map_err(|source| EngineError::Io { path: path.clone(), source })?.len();
    Ok((packed, size))
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
