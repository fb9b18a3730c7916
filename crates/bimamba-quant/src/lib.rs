//! Post-training binarization baselines for the in_proj / out_proj of a full-precision Mamba-2,
//! the methods Bi-Mamba (arXiv 2411.11843) compares against (ARCHITECTURE.md §6):
//!
//! - [`xnor`]: row-wise sign with mean and scale, no calibration.
//! - [`gptq`]: GPTQ (arXiv 2210.17323), 2 or 3 bits, asymmetric per-row min-max grid, act-order.
//! - [`billm`]: BiLLM (arXiv 2402.04291), about 1.1 bits: residual binarization of salient columns,
//!   two magnitude groups for the rest, GPTQ-style compensation.
//! - [`pbllm`]: PB-LLM (arXiv 2310.00034), salient weights at 8 bits, the rest binarized, GPTQ-style
//!   compensation.
//!
//! Data flow: [`linalg`] (Hessian, Cholesky factors) → [`sweep`] (the compensating column sweep)
//! → one file per method → [`calibrate`] (layer-by-layer calibration of a whole [`Model`]) →
//! [`output`] (writing a model directory every command loads).
//!
//! Every method returns dequantized f32 weights (the values the quantized format represents) and
//! its bits per weight under two conventions, see [`Bits`].
//!
//! [`Model`]: bimamba_engine::Model

pub mod billm;
pub mod calibrate;
pub mod gptq;
pub mod linalg;
pub mod output;
pub mod pbllm;
pub mod sweep;
pub mod xnor;

use std::path::PathBuf;

pub use calibrate::{calibration_windows, quantize_model, ProjReport};
pub use linalg::Hessian;

#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error(transparent)]
    Model(#[from] bimamba_lm::ModelError),
    #[error(transparent)]
    Format(#[from] bimamba_formats::FormatError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}: {detail}")]
    Setting { name: &'static str, detail: String },
    #[error("the damped Hessian is not positive definite (pivot {pivot:e} at input column {column}); are the calibration inputs finite?")]
    NotPositiveDefinite { column: usize, pivot: f64 },
    #[error("layer {layer} {proj}: {source}")]
    Layer {
        layer: usize,
        proj: &'static str,
        #[source]
        source: Box<QuantError>,
    },
    #[error("{path}: {detail}")]
    Output { path: PathBuf, detail: String },
}

pub type Result<T> = std::result::Result<T, QuantError>;

/// Which post-training method, with its method-specific setting.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    Xnor,
    Gptq { bits: u32 },
    Billm,
    Pbllm { salient_fraction: f64 },
}

impl Method {
    pub fn name(&self) -> &'static str {
        match self {
            Method::Xnor => "xnor",
            Method::Gptq { .. } => "gptq",
            Method::Billm => "billm",
            Method::Pbllm { .. } => "pbllm",
        }
    }

    /// Whether the method needs calibration inputs (a Hessian per projection).
    pub fn needs_calibration(&self) -> bool {
        !matches!(self, Method::Xnor)
    }
}

/// Everything that decides a quantization besides the weights and the calibration data.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    pub method: Method,
    /// Columns per block of the sweep (GPTQ's lazy batch, BiLLM's search unit). Paper: 128.
    pub block: usize,
    /// Hessian damping as a fraction of its mean diagonal. Paper: 0.01.
    pub damp: f64,
    /// GPTQ only: quantize columns in order of decreasing `H_jj`.
    pub act_order: bool,
}

impl Settings {
    /// The paper's settings for `method`: blocks of 128, damping 0.01, act-order on.
    pub fn new(method: Method) -> Settings {
        Settings { method, block: 128, damp: 0.01, act_order: true }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |name, detail: String| Err(QuantError::Setting { name, detail });
        if self.block == 0 {
            return bad("block", "expected at least 1 column per block, got 0".into());
        }
        if !(self.damp >= 0.0 && self.damp.is_finite()) {
            return bad("damp", format!("expected a finite number >= 0, got {}", self.damp));
        }
        match self.method {
            Method::Gptq { bits } if !(2..=8).contains(&bits) => {
                bad("bits", format!("expected 2 to 8 (the paper uses 2 and 3), got {bits}"))
            }
            Method::Pbllm { salient_fraction: f } if !(0.0..1.0).contains(&f) => {
                bad("salient fraction", format!("expected a fraction in [0, 1), got {f}"))
            }
            _ => Ok(()),
        }
    }
}

/// Bits per weight of one quantized matrix, under two conventions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bits {
    /// What the method's paper reports: the bits of the weight codes alone (XNOR 1, GPTQ b,
    /// BiLLM 1 + the salient-column fraction, PB-LLM 1 + 7·salient fraction). Scales, group
    /// markers and masks are not counted.
    pub paper: f64,
    /// What a packed file would have to store: the codes plus per-row/per-block scales at 16 bits,
    /// zero points, and BiLLM's group markers or PB-LLM's salient mask at one bit per weight.
    pub storage: f64,
}

/// A quantized weight matrix, dequantized.
#[derive(Clone, Debug)]
pub struct Quantized {
    /// Ŵ: [rows, cols], the values the quantized representation stands for.
    pub weight: Vec<f32>,
    pub bits: Bits,
    /// Fraction of the weights given extra precision: BiLLM's salient columns (two sign terms),
    /// PB-LLM's 8-bit weights. `None` for XNOR and GPTQ.
    pub salient_fraction: Option<f64>,
}

/// Quantizes one projection `w: [rows, cols]`; `hess` (over its `cols` inputs) is required by every
/// method but XNOR.
pub fn quantize_weight(
    settings: &Settings,
    w: &[f32],
    rows: usize,
    cols: usize,
    hess: Option<&Hessian>,
) -> Result<Quantized> {
    settings.validate()?;
    assert_eq!(w.len(), rows * cols, "weight has {} elements, expected [{rows} x {cols}]", w.len());
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        return Err(QuantError::Setting {
            name: "weights",
            detail: format!("weight [{}, {}] is {}; only finite weights can be quantized", i / cols, i % cols, w[i]),
        });
    }
    let need = || {
        hess.ok_or(QuantError::Setting {
            name: "calibration",
            detail: format!("{} needs calibration inputs", settings.method.name()),
        })
    };
    match settings.method {
        Method::Xnor => Ok(xnor::xnor(w, rows, cols)),
        Method::Gptq { bits } => gptq::gptq(w, rows, cols, need()?, bits, settings),
        Method::Billm => billm::billm(w, rows, cols, need()?, settings),
        Method::Pbllm { salient_fraction } => pbllm::pbllm(w, rows, cols, need()?, salient_fraction, settings),
    }
}

/// sign(x) ∈ {−1, +1}: exact zeros (and −0.0) map to +1, as the packed 1-bit format does (ARCHITECTURE.md §2.2);
/// torch.sign would give 0.
#[inline]
pub(crate) fn sign(x: f64) -> f64 {
    if x >= 0.0 {
        1.0
    } else {
        -1.0
    }
}
