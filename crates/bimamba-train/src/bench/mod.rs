//! Training-step throughput and model-FLOPs utilization (MFU) against the matrix-product rate
//! measured on the same device.
//!
//! Model FLOPs per token = 3 × forward FLOPs (forward + backward ≈ 2× forward), forward FLOPs =
//! 2 × (projection and LM-head multiply-adds) + the SSD matrix-form products
//! ([`ModelConfig::matmul_flops_per_token`], [`ModelConfig::ssd_flops_per_token`]). Elementwise work,
//! the STE and the optimizer are not counted (as usual for MFU).

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, Int, Tensor, TensorData};
use serde::Serialize;

use crate::backend::BackendKind;
use crate::config::{ModelConfig, ModelSpec, Precision};
use crate::error::Result;
use crate::loss::cross_entropy;
use crate::model::Mamba2Lm;
use crate::optim::{AdamW, OptimConfig};
use crate::rng::SplitMix64;

#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub mod matmul;
pub mod parts;

/// `bench` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// ndarray (CPU) or cuda.
    #[arg(long, default_value = "ndarray")]
    pub backend: BackendKind,
    /// Residual width (130M class: 768).
    #[arg(long, default_value_t = 768)]
    pub d_model: usize,
    /// Layers (130M class: 24).
    #[arg(long, default_value_t = 24)]
    pub n_layer: usize,
    /// Vocabulary (GPT-NeoX padded: 50280).
    #[arg(long, default_value_t = 50280)]
    pub vocab: usize,
    /// SSM state size N.
    #[arg(long, default_value_t = 128)]
    pub d_state: usize,
    /// Head dimension P.
    #[arg(long, default_value_t = 64)]
    pub headdim: usize,
    /// SSD chunk length.
    #[arg(long, default_value_t = 256)]
    pub chunk_size: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 2048)]
    pub seq_len: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Untimed warm-up steps (kernel compilation, autotuning).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Full-precision projections instead of FBI-Linear.
    #[arg(long)]
    pub full_precision: bool,
    /// Projections and LM head in bf16 (mixed precision; parameters, norms and the SSD stay f32).
    #[arg(long)]
    pub bf16: bool,
    /// Run the SSD's products over positions and states in bf16 too (with --bf16).
    #[arg(long)]
    pub ssd_bf16: bool,
    /// Side of the square matrices of the peak matmul measurement.
    #[arg(long, default_value_t = 8192)]
    pub matmul_size: usize,
    /// Time each section of the forward (waits for the device after each: slower, but shows where
    /// the time goes).
    #[arg(long)]
    pub profile: bool,
    /// Also time each part of the model alone, forward and backward (see [`parts`]).
    #[arg(long)]
    pub parts: bool,
    /// Run the SSD scan as one autodiff node (on CUDA and WGPU: the scan's own kernels, forward
    /// and backward; see `fused::set_ssd_scan`) instead of differentiating it op by op.
    #[arg(long)]
    pub ssd_node: bool,
    /// Run the bf16 projection and head products with this CubeCL matmul kernel family
    /// (`bimamba-train matmul-kernels` lists and times them; `burn` is Burn's own product; on CUDA
    /// the default is `specialized_tma_mma`).
    #[arg(long)]
    pub matmul_kernel: Option<String>,
    /// Run the op-by-op reference paths instead of the fused kernels (the before/after
    /// comparison in one binary).
    #[arg(long)]
    pub reference: bool,
    /// Write the report as JSON here too.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// What `bench` measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The backend type.
    pub backend: String,
    /// The model.
    pub model: ModelConfig,
    /// Parameters.
    pub params: usize,
    /// Tokens per step.
    pub tokens_per_step: usize,
    /// Mean seconds per step (forward, backward, optimizer).
    pub step_s: f64,
    /// Mean seconds in the forward.
    pub forward_s: f64,
    /// Mean seconds in the backward.
    pub backward_s: f64,
    /// Mean seconds in the optimizer.
    pub optimizer_s: f64,
    /// Training throughput.
    pub tokens_per_s: f64,
    /// Model FLOPs per token (forward + backward).
    pub flops_per_token: f64,
    /// Achieved model TFLOP/s.
    pub model_tflops: f64,
    /// Measured dense matmul TFLOP/s and its dtype.
    pub peak_tflops: f64,
    /// The dtype of the peak measurement.
    pub peak_dtype: String,
    /// The dtype of the model's projection and head products.
    pub matmul_dtype: String,
    /// model_tflops / peak_tflops.
    pub mfu: f64,
    /// Microseconds per launch of a tiny elementwise op (2,000 adds of 256 floats, one wait at
    /// the end): the host cost of one unfused tensor operation.
    pub op_launch_us: f64,
    /// With `--profile`: milliseconds per step in each forward section (summed over layers), the
    /// loss, the backward and the optimizer.
    pub profile_ms: Option<std::collections::BTreeMap<String, f64>>,
    /// With `--parts`: milliseconds per step of each part timed alone, `[forward, backward]` (the
    /// backward less the cost of one empty `backward()` call, itself reported as `backward_call`).
    pub parts_ms: Option<std::collections::BTreeMap<String, [f64; 2]>>,
}

/// Dense matmul rate of the device in TFLOP/s for `dtype` (with the chosen matmul family, if any).
pub fn matmul_tflops<B: crate::fused::FusedOps>(n: usize, dtype: DType, device: &B::Device) -> f64 {
    let a = Tensor::<B, 2>::random([n, n], Distribution::Normal(0.0, 1.0), (device, dtype));
    let b = Tensor::<B, 2>::random([n, n], Distribution::Normal(0.0, 1.0), (device, dtype));
    let _ = B::matmul(a.clone(), b.clone());
    let _ = B::sync(device);
    let reps = 10;
    let t = Instant::now();
    let mut outs = Vec::new();
    for _ in 0..reps {
        outs.push(B::matmul(a.clone(), b.clone()));
    }
    let _ = B::sync(device);
    let s = t.elapsed().as_secs_f64();
    drop(outs);
    2.0 * (n as f64).powi(3) * reps as f64 / s / 1e12
}

/// Host cost of one small tensor operation in microseconds: `n` dependent adds, one sync.
pub fn op_launch_us<B: Backend>(device: &B::Device, n: usize) -> f64 {
    let mut x = Tensor::<B, 1>::zeros([256], crate::ops::opts::<B>(device));
    x = x + 1.0;
    let _ = B::sync(device);
    let t = Instant::now();
    for _ in 0..n {
        x = x + 1.0;
    }
    let _ = B::sync(device);
    let s = t.elapsed().as_secs_f64();
    drop(x);
    1e6 * s / n as f64
}

/// Times training steps of a freshly initialized model on random tokens.
pub fn bench<B: crate::fused::TrainBackend>(
    a: &BenchArgs,
    device: &B::Device,
    peak_dtype: DType,
) -> Result<BenchReport> {
    let spec = ModelSpec {
        d_state: a.d_state,
        headdim: a.headdim,
        chunk_size: a.chunk_size,
        pad_vocab_size_multiple: 16,
        precision: if a.full_precision { Precision::Full } else { Precision::Binary },
        ..ModelSpec::new(a.d_model, a.n_layer, a.vocab)
    };
    let cfg = spec.resolve(0)?;
    let mut model = Mamba2Lm::<B>::init(&cfg, 0, device).with_matmul_dtype(a.bf16.then_some(DType::BF16));
    if a.bf16 && a.ssd_bf16 {
        model = model.with_ssd_dtype(Some(DType::BF16));
    }
    let mut opt = AdamW::<B::InnerBackend>::new(OptimConfig::default());
    opt.fused = !a.reference;
    crate::fused::set_enabled(!a.reference);
    crate::fused::set_ssd_scan(a.ssd_node);
    let cuda = matches!(a.backend, BackendKind::Cuda);
    crate::fused::set_matmul_kernel(crate::fused::matmul_kernel_for(a.matmul_kernel.as_deref(), cuda))
        .map_err(crate::error::Error::Config)?;
    let mut rng = SplitMix64::new(1);
    let (b, l) = (a.batch, a.seq_len);
    let (mut fw, mut bw, mut op) = (0.0, 0.0, 0.0);
    for i in 0..a.warmup + a.steps {
        let toks: Vec<i64> = (0..b * (l + 1)).map(|_| rng.below(a.vocab as u64) as i64).collect();
        let t = Tensor::<B, 2, Int>::from_data(TensorData::new(toks, [b, l + 1]), device);
        let _ = B::sync(device);
        let t0 = Instant::now();
        if i == a.warmup {
            crate::profile::enable(a.profile);
        }
        let loss = if a.reference {
            crate::loss::reference_cross_entropy(model.forward(t.clone().narrow(1, 0, l)), t.narrow(1, 1, l))
        } else {
            cross_entropy(model.forward_logits(t.clone().narrow(1, 0, l)), t.narrow(1, 1, l))
        };
        crate::profile::mark::<B>("loss", device);
        let _ = B::sync(device);
        let t1 = Instant::now();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let _ = B::sync(device);
        let t2 = Instant::now();
        let (m, _) = opt.step::<B, _>(model, grads, 1e-4);
        model = m;
        let _ = B::sync(device);
        let t3 = Instant::now();
        if i >= a.warmup {
            fw += (t1 - t0).as_secs_f64();
            bw += (t2 - t1).as_secs_f64();
            op += (t3 - t2).as_secs_f64();
        }
        eprintln!("step {i}: {:.3} s{}", (t3 - t0).as_secs_f64(), if i < a.warmup { " (warm-up)" } else { "" });
    }
    let parts_ms = a.parts.then(|| parts::parts(&model, b, l, a.steps.max(1), device));
    let _ = model.valid();
    let n = a.steps.max(1) as f64;
    let profile_ms = a.profile.then(|| {
        let mut t: std::collections::BTreeMap<String, f64> =
            crate::profile::totals().into_iter().map(|(k, v)| (format!("forward.{k}"), 1e3 * v / n)).collect();
        t.insert("backward".into(), 1e3 * bw / n);
        t.insert("optimizer".into(), 1e3 * op / n);
        t
    });
    crate::profile::enable(false);
    let (fw, bw, op) = (fw / n, bw / n, op / n);
    let step_s = fw + bw + op;
    let tokens = b * l;
    let flops_per_token = 3.0 * (cfg.matmul_flops_per_token() + cfg.ssd_flops_per_token()) as f64;
    let model_tflops = flops_per_token * tokens as f64 / step_s / 1e12;
    let peak = matmul_tflops::<B::InnerBackend>(a.matmul_size, peak_dtype, device);
    let launch_us = op_launch_us::<B::InnerBackend>(device, 2000);
    Ok(BenchReport {
        backend: std::any::type_name::<B>().to_string(),
        params: cfg.num_params(),
        model: cfg,
        tokens_per_step: tokens,
        step_s,
        forward_s: fw,
        backward_s: bw,
        optimizer_s: op,
        tokens_per_s: tokens as f64 / step_s,
        flops_per_token,
        model_tflops,
        peak_tflops: peak,
        peak_dtype: format!("{peak_dtype:?}"),
        matmul_dtype: if a.bf16 { "BF16".into() } else { "F32".into() },
        mfu: model_tflops / peak,
        op_launch_us: launch_us,
        profile_ms,
        parts_ms,
    })
}

/// `bench` subcommand: runs, prints the table and the exact command.
pub fn run_cli(a: &BenchArgs) -> Result<()> {
    let r = crate::backend::bench(a.backend, a)?;
    let cmd: Vec<String> = std::env::args().collect();
    println!("command: {}", cmd.join(" "));
    println!("backend: {}", r.backend);
    println!(
        "model: d_model {} n_layer {} vocab {} N {} P {} chunk {} {:?}, {:.1}M params",
        r.model.d_model,
        r.model.n_layer,
        r.model.vocab_size,
        r.model.d_state,
        r.model.headdim,
        r.model.chunk_size,
        r.model.precision,
        r.params as f64 / 1e6
    );
    println!("projection/head matmul dtype: {}", r.matmul_dtype);
    println!(
        "tokens/step {} | step {:.3} s (forward {:.3}, backward {:.3}, optimizer {:.3})",
        r.tokens_per_step, r.step_s, r.forward_s, r.backward_s, r.optimizer_s
    );
    println!(
        "throughput {:.0} tokens/s | model {:.2} TFLOP/s ({:.3} GFLOP/token)",
        r.tokens_per_s,
        r.model_tflops,
        r.flops_per_token / 1e9
    );
    println!("peak matmul {:.1} TFLOP/s ({}) | MFU {:.1}%", r.peak_tflops, r.peak_dtype, 100.0 * r.mfu);
    println!("one small tensor op: {:.1} µs (host cost of an unfused launch)", r.op_launch_us);
    if let Some(p) = &r.profile_ms {
        println!("ms per step by section (forward sections summed over layers, each followed by a device sync):");
        for (k, v) in p {
            println!("  {k:<24} {v:9.2}");
        }
    }
    if let Some(p) = &r.parts_ms {
        println!("ms per step by part, each timed alone (forward, backward less one empty backward call):");
        let (mut fw, mut bw) = (0.0, 0.0);
        for (k, [f, b]) in p {
            println!("  {k:<24} {f:9.2} {b:9.2}");
            if !k.contains('.') && k != "backward_call" {
                fw += f;
                bw += b;
            }
        }
        println!("  {:<24} {fw:9.2} {bw:9.2}", "sum");
    }
    if let Some(p) = &a.json {
        let text = serde_json::to_string_pretty(&r).map_err(|e| crate::error::Error::Config(e.to_string()))?;
        crate::params::write_atomic(p, text.as_bytes())?;
    }
    Ok(())
}
