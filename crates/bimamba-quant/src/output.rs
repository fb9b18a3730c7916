//! Writing a quantized model as a model directory that every command loads: `config.json` and the
//! tokenizer copied from the source, and `model.safetensors` holding every source tensor
//! unchanged except the in_proj / out_proj weights, which hold the dequantized values as f32.
//! The quantization is recorded in the safetensors `__metadata__` (keys `quant.*`).
//!
//! The directory is built under a temporary name next to `--out` and renamed into place, so a
//! reader never sees a half-written model; an existing non-empty `--out` is never touched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bimamba_engine::{Model, Proj};
use bimamba_formats::{Checkpoint, DType};
use serde_json::json;

use crate::calibrate::{proj_name, ProjReport};
use crate::{Method, QuantError, Result, Settings};

/// `__metadata__["format"]` of a quantized model, and its version.
pub const FORMAT: &str = "bimamba-quant";
pub const FORMAT_VERSION: &str = "1";

/// Files besides the weights that travel with a model directory when present.
const SIDE_FILES: [&str; 4] =
    ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"];

/// Where the calibration windows came from, for the metadata.
#[derive(Clone, Debug)]
pub struct CalibInfo {
    pub file: PathBuf,
    pub samples: usize,
    pub seq_len: usize,
    /// Tokens the whole calibration text encodes to.
    pub text_tokens: usize,
    pub overlapping: bool,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> QuantError + '_ {
    move |source| QuantError::Io { path: path.to_path_buf(), source }
}

/// Ok when `out` does not exist or is an empty directory; an error naming it otherwise.
pub fn check_out_dir(out: &Path) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    let refuse = |detail: &str| Err(QuantError::Output { path: out.to_path_buf(), detail: detail.into() });
    if !out.is_dir() {
        return refuse("exists and is not a directory; choose another --out");
    }
    let mut entries = std::fs::read_dir(out).map_err(io_err(out))?;
    if entries.next().is_some() {
        return refuse("exists and is not empty; refusing to overwrite it (remove it or choose another --out)");
    }
    Ok(())
}

/// Tensor name of a projection weight.
fn proj_tensor(layer: usize, proj: Proj) -> String {
    format!("backbone.layers.{layer}.mixer.{}.weight", proj_name(proj))
}

/// Averages of (paper, storage) bits over all projection weights.
fn mean_bits(reports: &[ProjReport]) -> (f64, f64) {
    let n: f64 = reports.iter().map(|r| (r.rows * r.cols) as f64).sum();
    let avg = |f: &dyn Fn(&ProjReport) -> f64| {
        reports.iter().map(|r| f(r) * (r.rows * r.cols) as f64).sum::<f64>() / n.max(1.0)
    };
    (avg(&|r| r.bits.paper), avg(&|r| r.bits.storage))
}

/// The `__metadata__` of a quantized model.
pub fn metadata(
    settings: &Settings,
    calib: Option<&CalibInfo>,
    reports: &[ProjReport],
    source: &Path,
    seconds: f64,
) -> BTreeMap<String, String> {
    let mut s = json!({
        "method": settings.method.name(),
        "block": settings.block,
        "damp": settings.damp,
    });
    match settings.method {
        Method::Gptq { bits } => {
            s["bits"] = bits.into();
            s["act_order"] = settings.act_order.into();
            s["grid"] = "asymmetric min-max per row".into();
        }
        Method::Pbllm { salient_fraction } => {
            s["salient_fraction"] = salient_fraction.into();
            s["salient_bits"] = 8.into();
        }
        Method::Billm => s["salience"] = "hessian".into(),
        Method::Xnor => s["scales"] = "row-wise mean and mean |W - mean|".into(),
    }
    if let Some(c) = calib {
        s["calibration"] = json!({
            "file": c.file.display().to_string(),
            "samples": c.samples,
            "seq_len": c.seq_len,
            "text_tokens": c.text_tokens,
            "windows": "evenly spaced over the text",
            "overlapping": c.overlapping,
        });
    }
    let projections: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| {
            json!({
                "layer": r.layer, "proj": proj_name(r.proj), "rows": r.rows, "cols": r.cols,
                "bits": r.bits.paper, "storage_bits": r.bits.storage,
                "salient_fraction": r.salient_fraction, "rel_error": r.rel_error,
                "input_rms": r.input_rms, "seconds": r.seconds,
            })
        })
        .collect();
    let (paper, storage) = mean_bits(reports);
    let mut m = BTreeMap::new();
    m.insert("format".into(), FORMAT.into());
    m.insert("format_version".into(), FORMAT_VERSION.into());
    m.insert("quant.method".into(), settings.method.name().into());
    m.insert("quant.settings".into(), s.to_string());
    m.insert(
        "quant.weights".into(),
        "dequantized: every in_proj/out_proj weight holds its quantized values as plain f32 (no packed low-bit form is stored); all other tensors are the source's, unchanged".into(),
    );
    m.insert("quant.bits_per_weight".into(), format!("{paper:.4}"));
    m.insert("quant.storage_bits_per_weight".into(), format!("{storage:.4}"));
    m.insert(
        "quant.bits_note".into(),
        "bits_per_weight counts the weight codes as the method's paper does (scales, group markers and masks excluded); storage_bits_per_weight adds 16-bit scales, zero points and BiLLM group markers / PB-LLM masks at 1 bit per weight; both averaged over all in_proj/out_proj weights".into(),
    );
    let errs: Vec<f64> = reports.iter().filter_map(|r| r.rel_error).collect();
    if !errs.is_empty() {
        m.insert("quant.mean_rel_error".into(), format!("{:.6e}", errs.iter().sum::<f64>() / errs.len() as f64));
    }
    m.insert("quant.projections".into(), serde_json::Value::Array(projections).to_string());
    m.insert("quant.source".into(), source.display().to_string());
    m.insert("quant.seconds".into(), format!("{seconds:.3}"));
    m
}

/// Writes `model` (quantized from the checkpoint in `source`) to the directory `out`, with
/// `tokenizer` (else the source's tokenizer.json, when it has one) as `out/tokenizer.json`.
pub fn write_model_dir(
    source: &Path,
    out: &Path,
    model: &Model,
    tokenizer: Option<&Path>,
    meta: &BTreeMap<String, String>,
) -> Result<()> {
    check_out_dir(out)?;
    let name = out.file_name().ok_or_else(|| QuantError::Output {
        path: out.to_path_buf(),
        detail: "expected a directory path with a final name".into(),
    })?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let tmp = parent.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(io_err(&tmp))?;
    let result = fill_dir(source, &tmp, model, tokenizer, meta).and_then(|()| {
        check_out_dir(out)?;
        if out.exists() {
            std::fs::remove_dir(out).map_err(io_err(out))?;
        }
        std::fs::rename(&tmp, out).map_err(io_err(out))
    });
    if result.is_err() {
        // Best effort: the temporary directory is ours alone.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn fill_dir(
    source: &Path,
    dir: &Path,
    model: &Model,
    tokenizer: Option<&Path>,
    meta: &BTreeMap<String, String>,
) -> Result<()> {
    let ckpt = Checkpoint::open(source)?;
    let mut replaced: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (i, layer) in model.layers.iter().enumerate() {
        for (p, lin) in [(Proj::In, &layer.mixer.in_proj), (Proj::Out, &layer.mixer.out_proj)] {
            let name = proj_tensor(i, p);
            match ckpt.info(&name) {
                Some(info) if info.shape == [lin.rows(), lin.cols()] => {}
                Some(info) => {
                    return Err(QuantError::Output {
                        path: source.to_path_buf(),
                        detail: format!(
                            "tensor `{name}` has shape {:?}, the model's is [{}, {}]",
                            info.shape,
                            lin.rows(),
                            lin.cols()
                        ),
                    })
                }
                None => {
                    return Err(QuantError::Output {
                        path: source.to_path_buf(),
                        detail: format!("the checkpoint has no tensor `{name}` to replace"),
                    })
                }
            }
            let bytes = lin.to_dense_f32().iter().flat_map(|v| v.to_le_bytes()).collect();
            replaced.insert(name, bytes);
        }
    }
    let mut tensors: Vec<(String, DType, Vec<usize>, &[u8])> = Vec::new();
    for info in ckpt.tensors() {
        match replaced.get(&info.name) {
            Some(bytes) => tensors.push((info.name.clone(), DType::F32, info.shape.clone(), bytes)),
            None => {
                if info.dtype.is_quantized() {
                    return Err(QuantError::Output {
                        path: source.to_path_buf(),
                        detail: format!(
                            "tensor `{}` is block-quantized ({}), which safetensors cannot hold",
                            info.name, info.dtype
                        ),
                    });
                }
                tensors.push((info.name.clone(), info.dtype, info.shape.clone(), ckpt.bytes(&info.name)?));
            }
        }
    }
    bimamba_formats::write_safetensors_atomic(&dir.join("model.safetensors"), &tensors, meta)?;
    let copy =
        |from: &Path, to: &str| -> Result<()> { std::fs::copy(from, dir.join(to)).map(|_| ()).map_err(io_err(from)) };
    copy(&source.join("config.json"), "config.json")?;
    for f in SIDE_FILES {
        let from = match (f, tokenizer) {
            ("tokenizer.json", Some(t)) => t.to_path_buf(),
            _ => source.join(f),
        };
        if from.is_file() {
            copy(&from, f)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibrate::tests::{fixture, random_windows};
    use crate::quantize_model;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bimamba-quant-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// The written directory loads; projections hold Ŵ, every other tensor is byte-identical to
    /// the source, and the metadata names the method and its bits.
    #[test]
    fn written_model_round_trips() {
        let src = fixture("ss-mamba2-g1");
        let mut m = Model::load(&src).expect("fixture");
        let settings = Settings::new(Method::Pbllm { salient_fraction: 0.1 });
        let windows = random_windows(2, 32, m.vocab_size(), 8);
        let reports = quantize_model(&mut m, &windows, &settings, &mut |_| {}).expect("quantize");
        let meta = metadata(&settings, None, &reports, &src, 1.0);
        let root = temp_dir("roundtrip");
        let out = root.join("nested").join("q");
        write_model_dir(&src, &out, &m, None, &meta).expect("write");
        let back = Model::load(&out).expect("the output loads");
        for (a, b) in m.layers.iter().zip(&back.layers) {
            assert_eq!(a.mixer.in_proj.to_dense_f32(), b.mixer.in_proj.to_dense_f32());
            assert_eq!(a.mixer.out_proj.to_dense_f32(), b.mixer.out_proj.to_dense_f32());
        }
        let (s, o) = (Checkpoint::open(&src).expect("src"), Checkpoint::open(&out).expect("out"));
        assert_eq!(s.tensors().len(), o.tensors().len());
        for info in s.tensors() {
            if !info.name.contains("_proj.weight") {
                assert_eq!(s.bytes(&info.name).expect("src"), o.bytes(&info.name).expect("out"), "{}", info.name);
            }
        }
        assert_eq!(o.metadata().get("quant.method").map(String::as_str), Some("pbllm"));
        let bits: f64 = o.metadata()["quant.bits_per_weight"].parse().expect("number");
        assert!((bits - 1.7).abs() < 0.01, "{bits}");
        assert!(out.join("tokenizer.json").is_file() && out.join("config.json").is_file());
        let leftovers: Vec<_> = std::fs::read_dir(root.join("nested")).expect("dir").collect();
        assert_eq!(leftovers.len(), 1, "no temporary directory is left behind");

        // A non-empty --out is refused and left alone; an empty one is filled.
        let err = write_model_dir(&src, &out, &m, None, &meta).expect_err("non-empty");
        assert!(err.to_string().contains("not empty"), "{err}");
        assert!(Model::load(&out).is_ok());
        let empty = root.join("empty");
        std::fs::create_dir_all(&empty).expect("mkdir");
        write_model_dir(&src, &empty, &m, None, &meta).expect("empty dir is accepted");
        assert!(empty.join("model.safetensors").is_file());
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
