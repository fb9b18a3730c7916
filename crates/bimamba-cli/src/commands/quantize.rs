//! `bimamba quantize`: post-training quantization of a full-precision model's in_proj/out_proj
//! with the baselines the Bi-Mamba paper compares against (ARCHITECTURE.md §6). The output is a model
//! directory every command accepts, holding the dequantized weights as f32.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use bimamba_quant::calibrate::{proj_name, windows_overlap};
use bimamba_quant::output::{check_out_dir, metadata, write_model_dir, CalibInfo};
use bimamba_quant::{calibration_windows, quantize_model, Method, ProjReport, Settings};
use bimamba_text::{read_text_file, Tokenizer};
use clap::{Args, ValueEnum};

use crate::model_args::ModelArgs;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    /// Row-wise sign with mean and mean-absolute-deviation scale; no calibration (1 bit).
    Xnor,
    /// GPTQ: asymmetric per-row min-max grid at --bits, act-order, Hessian error compensation.
    Gptq,
    /// BiLLM: salient columns with two sign terms, the rest in two magnitude groups (~1.1 bits).
    Billm,
    /// PB-LLM: --salient-fraction of the weights at 8 bits, the rest XNOR-binarized, compensated.
    Pbllm,
}

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Quantization method.
    #[arg(long, value_enum)]
    pub method: MethodArg,

    #[command(flatten)]
    pub model: ModelArgs,

    /// Output model directory. It must not exist or must be empty; it is written under a
    /// temporary name and renamed into place.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// gptq only: bits per weight (the paper uses 2 and 3) [default: 2].
    #[arg(long, value_name = "B")]
    pub bits: Option<u32>,

    /// Calibration text (UTF-8), tokenized with the model's tokenizer. Required by gptq, billm and
    /// pbllm; xnor ignores it.
    #[arg(long, value_name = "FILE")]
    pub calib: Option<PathBuf>,

    /// Calibration windows, taken evenly spaced over the text (the paper: 128).
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub calib_samples: usize,

    /// Tokens per calibration window (the paper: 2048).
    #[arg(long, value_name = "L", default_value_t = 512)]
    pub calib_seq_len: usize,

    /// pbllm only: fraction of the weights (largest Hessian salience) kept at 8 bits [default: 0.1].
    #[arg(long, value_name = "F")]
    pub salient_fraction: Option<f64>,

    /// Columns per block of the GPTQ/BiLLM/PB-LLM sweep (the paper: 128).
    #[arg(long, value_name = "C", default_value_t = 128)]
    pub block_size: usize,

    /// Hessian damping, as a fraction of the mean of its diagonal (the paper: 0.01).
    #[arg(long, value_name = "D", default_value_t = 0.01)]
    pub damp: f64,

    /// gptq only: quantize columns in their original order instead of by decreasing Hessian
    /// diagonal (act-order is the paper's setting).
    #[arg(long)]
    pub no_act_order: bool,

    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The method with its own options; options given to a method that does not use them are errors.
fn method(a: &QuantizeArgs) -> Result<Method> {
    if a.bits.is_some() && a.method != MethodArg::Gptq {
        bail!("--bits applies to --method gptq only");
    }
    if a.salient_fraction.is_some() && a.method != MethodArg::Pbllm {
        bail!("--salient-fraction applies to --method pbllm only");
    }
    if a.no_act_order && a.method != MethodArg::Gptq {
        bail!("--no-act-order applies to --method gptq only");
    }
    Ok(match a.method {
        MethodArg::Xnor => Method::Xnor,
        MethodArg::Gptq => Method::Gptq { bits: a.bits.unwrap_or(2) },
        MethodArg::Billm => Method::Billm,
        MethodArg::Pbllm => Method::Pbllm { salient_fraction: a.salient_fraction.unwrap_or(0.1) },
    })
}

fn report_line(r: &ProjReport, n_layer: usize) -> String {
    let mut s = format!(
        "layer {:>3}/{n_layer} {:<8} [{} x {}] {:.3} bits ({:.3} stored)",
        r.layer + 1,
        proj_name(r.proj),
        r.rows,
        r.cols,
        r.bits.paper,
        r.bits.storage
    );
    if let Some(e) = r.rel_error {
        s += &format!(", rel. output error {e:.4}");
    }
    s + &format!(", {:.2} s", r.seconds)
}

pub fn run(a: QuantizeArgs) -> Result<()> {
    let method = method(&a)?;
    let settings = Settings { act_order: !a.no_act_order, block: a.block_size, damp: a.damp, ..Settings::new(method) };
    settings.validate()?;
    if method.needs_calibration() && a.calib.is_none() {
        bail!("--method {} needs calibration text: pass --calib FILE", method.name());
    }
    // Refuse a non-empty --out and settings that would change nothing before any work.
    check_out_dir(&a.out)?;
    a.model.runtime.refuse_settings("quantize calibrates in f32")?;
    let t0 = Instant::now();
    let (mut model, dir) = a.model.open_mamba("quantize")?;
    let tok_path = a.model.tokenizer.clone().unwrap_or_else(|| dir.join("tokenizer.json"));

    let (windows, calib) = match (&a.calib, method.needs_calibration()) {
        (Some(file), true) => {
            let tok = Tokenizer::for_model(&dir, a.model.tokenizer.as_deref())?;
            bimamba_models::check_vocab(&model, &tok, &dir)?;
            let text = read_text_file(file)?;
            let ids = tok.encode(&text)?;
            let windows = calibration_windows(&ids, a.calib_samples, a.calib_seq_len)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let overlapping = windows_overlap(ids.len(), a.calib_samples, a.calib_seq_len);
            if overlapping {
                eprintln!(
                    "note: {} encodes to {} tokens, fewer than {} x {}; the calibration windows overlap",
                    file.display(),
                    ids.len(),
                    a.calib_samples,
                    a.calib_seq_len
                );
            }
            let info = CalibInfo {
                file: file.clone(),
                samples: a.calib_samples,
                seq_len: a.calib_seq_len,
                text_tokens: ids.len(),
                overlapping,
            };
            (windows, Some(info))
        }
        (Some(_), false) => {
            eprintln!("note: {} uses no calibration; --calib is ignored", method.name());
            (Vec::new(), None)
        }
        (None, _) => (Vec::new(), None),
    };

    let n_layer = model.config.n_layer;
    let header = format!(
        "quantizing {} with {} ({} layers{})",
        dir.display(),
        method.name(),
        n_layer,
        calib.as_ref().map_or(String::new(), |c| format!(", {} windows of {} tokens", c.samples, c.seq_len))
    );
    // The header goes out with the first finished projection, so that an early error stays one line.
    let mut header = Some(header);
    let reports = quantize_model(&mut model, &windows, &settings, &mut |r| {
        if let Some(h) = header.take() {
            eprintln!("{h}");
        }
        eprintln!("{}", report_line(r, n_layer))
    })?;
    let seconds = t0.elapsed().as_secs_f64();
    let meta = metadata(&settings, calib.as_ref(), &reports, &dir, seconds);
    let tokenizer = tok_path.is_file().then_some(tok_path.as_path());
    write_model_dir(&dir, &a.out, &model, tokenizer, &meta)?;
    let total = t0.elapsed().as_secs_f64();

    let bits = &meta["quant.bits_per_weight"];
    let stored = &meta["quant.storage_bits_per_weight"];
    if a.json {
        let mut v = serde_json::json!({
            "method": method.name(),
            "model": dir.display().to_string(),
            "out": a.out.display().to_string(),
            "bits_per_weight": bits.parse::<f64>().ok(),
            "storage_bits_per_weight": stored.parse::<f64>().ok(),
            "quantize_s": seconds,
            "total_s": total,
        });
        if let Some(e) = meta.get("quant.mean_rel_error") {
            v["mean_rel_error"] = e.parse::<f64>().ok().into();
        }
        println!("{v}");
    } else {
        let err = meta.get("quant.mean_rel_error").map_or(String::new(), |e| format!(", mean rel. output error {e}"));
        println!(
            "{}: {} bits/weight ({} stored){err}; wrote {} (dequantized f32 weights) in {:.1} s",
            method.name(),
            bits,
            stored,
            a.out.display(),
            total
        );
    }
    Ok(())
}
