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
use crate::fused::SsdProducts;
use crate::llama::LlamaTeacher;
use crate::loss::{cross_entropy, soft_cross_entropy};
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
    /// Sequences per step, or `auto`: the largest batch whose memory, extrapolated from steps at
    /// batches 1, 2, 4, … (doubling while the next still fits), fits in 90% of the device (or of
    /// `--memory-gb`).
    #[arg(long, default_value = "4")]
    pub batch: BatchSize,
    /// Memory `--batch auto` may fill, in GB (default: the device's capacity, known on CUDA).
    #[arg(long)]
    pub memory_gb: Option<f64>,
    /// Time the distillation step: a LLaMA-architecture teacher of SmolLM2-135M's shape (random
    /// weights, the vocabulary of `--vocab`, products in the student's dtype) gives the soft
    /// targets, and the loss is the paper's soft-target CE at T = 1.
    #[arg(long)]
    pub distill: bool,
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
    /// Differentiate the SSD scan op by op (Burn's operations) instead of running it as one
    /// autodiff node on its own kernels (the default on CUDA and WGPU; see `fused::set_ssd_scan`).
    #[arg(long, conflicts_with = "ssd_node")]
    pub ssd_op_by_op: bool,
    /// The SSD scan as one node on its kernels: the default (kept so that earlier commands run).
    #[arg(long, hide = true)]
    pub ssd_node: bool,
    /// The kernel of the SSD scan's products: `simple` (f32 multiply-adds, 4 × 4 per thread; the
    /// fastest measured on the H100 so far), `blocked` (8 × 8 per thread, the same sums; not yet
    /// measured on a GPU) or `tensor-cores` (TF32, CUDA from sm_80; measured slower).
    #[arg(long, value_enum, default_value = "simple")]
    pub ssd_products: crate::fused::SsdProducts,
    /// `--ssd-products tensor-cores` (kept so that earlier commands run).
    #[arg(long, hide = true)]
    pub ssd_tensor_cores: bool,
    /// Keep the SSD scan's chunk states and carried-in outputs from the forward for the backward
    /// (two fewer products and no second state passing per layer; two more batch × length ×
    /// d_inner f32 tensors per layer held); not yet measured on a GPU.
    #[arg(long)]
    pub ssd_keep: bool,
    /// Run the teacher's attention through CubeCL's flash-attention kernel (no [b, heads, L, L]
    /// scores in memory) instead of op by op; checked by `check-kernels`, not yet measured on a GPU.
    #[arg(long)]
    pub flash_attention: bool,
    /// Run the bf16 projection and head products with this CubeCL matmul kernel family
    /// (`bimamba-train matmul-kernels` lists and times them; `burn` is Burn's own product; on CUDA
    /// the default is `specialized_tma_mma`).
    #[arg(long)]
    pub matmul_kernel: Option<String>,
    /// Run the f32 products (the op-by-op SSD's) with this family (default: Burn's product, on
    /// CUDA TF32 tensor cores).
    #[arg(long)]
    pub f32_matmul_kernel: Option<String>,
    /// Run the op-by-op reference paths instead of the fused kernels (the before/after
    /// comparison in one binary).
    #[arg(long)]
    pub reference: bool,
    /// Write the report as JSON here too.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

impl BenchArgs {
    /// The SSD products' kernel these flags choose.
    pub fn products(&self) -> SsdProducts {
        SsdProducts::from_flags(self.ssd_products, self.ssd_tensor_cores)
    }
}

/// `--batch`: a number of sequences, or `auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchSize {
    /// The largest batch that fits (see [`BenchArgs::batch`]).
    Auto,
    /// This many sequences.
    Fixed(usize),
}

impl std::str::FromStr for BatchSize {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            _ => match s.parse::<usize>() {
                Ok(n) if n > 0 => Ok(Self::Fixed(n)),
                _ => Err(format!("expected `auto` or a number of sequences of at least 1, got `{s}`")),
            },
        }
    }
}

/// The largest batch whose memory fits `budget`: `held` after a step at batch `at`, and `per`
/// for each sequence more. An error where the memory did not grow or batch `at + 1` would not fit.
pub fn batch_that_fits(at: usize, held: u64, per: u64, budget: u64) -> std::result::Result<usize, String> {
    if per == 0 {
        return Err(format!(
            "--batch auto: the memory of a step did not grow from a smaller batch to batch {at}, so it cannot be \
             extrapolated; give --batch N"
        ));
    }
    if held + per > budget {
        return Err(format!(
            "--batch auto: a step at batch {} would need about {:.1} GB of the {:.1} GB allowed",
            at + 1,
            (held + per) as f64 / 1e9,
            budget as f64 / 1e9
        ));
    }
    Ok(at + ((budget - held) / per) as usize)
}

/// The memory that the sequences added between two steps take: the growth of what the allocator
/// holds after the step, or twice the growth of the live tensors at the end of the forward if
/// that is more (early in the backward the gradients of the activations live beside
/// the activations the forward kept).
pub fn per_sequence(held1: u64, held2: u64, forward1: u64, forward2: u64) -> u64 {
    held2.saturating_sub(held1).max(2 * forward2.saturating_sub(forward1))
}

/// SmolLM2-135M's shape (the paper-style teacher of the 130M class) with `vocab` rows.
pub fn smollm2_135m_shape(vocab: usize) -> bimamba_llama::LlamaConfig {
    bimamba_llama::LlamaConfig {
        n_layer: 30,
        d_model: 576,
        d_ff: 1536,
        n_head: 9,
        n_kv_head: 3,
        head_dim: 64,
        rope_dim: 64,
        rope_theta: 100_000.0,
        norm_eps: 1e-5,
        vocab_size: vocab,
        context_length: 8192,
    }
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
    /// Mean seconds of the teacher's forward (with `--distill`; included in the forward).
    pub teacher_s: f64,
    /// Whether the step was the distillation step (`--distill`).
    pub distill: bool,
    /// Sequences per step (chosen by `--batch auto`, or given).
    pub batch: usize,
    /// GB the device allocator held after the timed steps (None on the CPU).
    pub memory_reserved_gb: Option<f64>,
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
    /// How the SSD scan ran: `op by op`, or as one node with its products on `tf32 tensor
    /// cores` or `f32 multiply-adds`.
    pub ssd_scan: String,
    /// Whether the teacher's attention (`--distill`) was sent to the flash-attention kernel
    /// (`--flash-attention` on a backend that has one; a problem the kernel refuses still runs op
    /// by op).
    pub flash_attention: bool,
    /// Seconds of the first step (kernel compilation and autotuning included: a cold or warm
    /// kernel cache shows here).
    pub first_step_s: f64,
    /// Seconds from the start of the bench (model and teacher made, batch chosen) to the end of
    /// the first step.
    pub to_first_step_s: f64,
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

/// The model `bench` trains, freshly initialized.
fn bench_model<B: crate::fused::TrainBackend>(a: &BenchArgs, device: &B::Device) -> Result<Mamba2Lm<B>> {
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
    Ok(model)
}

/// Seconds of one step's phases: forward (teacher included), backward, optimizer, and the
/// teacher alone.
#[derive(Clone, Copy, Default)]
struct StepTimes {
    forward: f64,
    backward: f64,
    optimizer: f64,
    teacher: f64,
    /// Bytes of live device tensors at the end of the forward (None on the CPU).
    forward_in_use: Option<u64>,
}

/// One training step on random tokens: the loss (next-token CE, or the soft CE against the
/// teacher), its backward and the optimizer update.
#[allow(clippy::too_many_arguments)]
fn train_step<B: crate::fused::TrainBackend>(
    a: &BenchArgs,
    model: Mamba2Lm<B>,
    opt: &mut AdamW<B::InnerBackend>,
    teacher: Option<&LlamaTeacher<B::InnerBackend>>,
    rng: &mut SplitMix64,
    b: usize,
    device: &B::Device,
) -> (Mamba2Lm<B>, StepTimes) {
    let l = a.seq_len;
    let toks: Vec<i64> = (0..b * (l + 1)).map(|_| rng.below(a.vocab as u64) as i64).collect();
    let t = Tensor::<B, 2, Int>::from_data(TensorData::new(toks, [b, l + 1]), device);
    let (inputs, targets) = (t.clone().narrow(1, 0, l), t.narrow(1, 1, l));
    let _ = B::sync(device);
    let t0 = Instant::now();
    let soft = teacher.map(|tm| {
        let tl = tm.forward(inputs.clone().inner());
        let _ = B::sync(device);
        (Tensor::<B, 3>::from_inner(tl), t0.elapsed().as_secs_f64())
    });
    let teacher_s = soft.as_ref().map_or(0.0, |s| s.1);
    let loss = match (soft, a.reference) {
        (Some((tl, _)), true) => soft_cross_entropy(model.forward(inputs), tl, 1.0),
        (Some((tl, _)), false) => soft_cross_entropy(model.forward_logits(inputs), tl, 1.0),
        (None, true) => crate::loss::reference_cross_entropy(model.forward(inputs), targets),
        (None, false) => cross_entropy(model.forward_logits(inputs), targets),
    };
    crate::profile::mark::<B>("loss", device);
    let _ = B::sync(device);
    let t1 = Instant::now();
    let forward_in_use = B::device_memory(device).map(|m| m.in_use);
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let _ = B::sync(device);
    let t2 = Instant::now();
    let (model, _) = opt.step::<B, _>(model, grads, 1e-4);
    let _ = B::sync(device);
    let t3 = Instant::now();
    let times = StepTimes {
        forward: (t1 - t0).as_secs_f64(),
        backward: (t2 - t1).as_secs_f64(),
        optimizer: (t3 - t2).as_secs_f64(),
        teacher: teacher_s,
        forward_in_use,
    };
    (model, times)
}

/// `--batch auto`: steps at batches 1, 2, 4, … (each on a fresh model) while a doubled batch
/// stays within 90% of the budget on a linear estimate (what the allocator holds at most 45% of
/// it), then the largest batch whose memory, extrapolated from the last two steps
/// ([`per_sequence`], [`batch_that_fits`]), fits 90% of the budget; a step at that batch checks
/// the choice, which shrinks while it does not fit.
fn auto_batch<B: crate::fused::TrainBackend>(
    a: &BenchArgs,
    teacher: Option<&LlamaTeacher<B::InnerBackend>>,
    device: &B::Device,
) -> Result<usize> {
    let fail = |m: String| crate::error::Error::Config(m);
    let no_allocator = || fail("--batch auto needs a GPU backend (cuda or wgpu)".into());
    // One step at batch b on a fresh model: (live tensors at the end of the forward, the allocator after the step).
    let probe = |b: usize| -> Result<(u64, crate::fused::DeviceMemory)> {
        let model = bench_model::<B>(a, device)?;
        let mut opt = AdamW::<B::InnerBackend>::new(OptimConfig::default());
        opt.fused = !a.reference;
        let mut rng = SplitMix64::new(1);
        B::release_free_memory(device);
        let (model, times) = train_step(a, model, &mut opt, teacher, &mut rng, b, device);
        let after = B::device_memory(device).ok_or_else(no_allocator)?;
        drop((model, opt));
        Ok((times.forward_in_use.ok_or_else(no_allocator)?, after))
    };
    let (forward, first) = probe(1)?;
    let limit = match (a.memory_gb, first.capacity) {
        (Some(gb), _) if gb > 0.0 => 0.9 * gb * 1e9,
        (Some(gb), _) => return Err(fail(format!("--memory-gb must be positive, got {gb}"))),
        (None, Some(c)) => 0.9 * c as f64,
        (None, None) => {
            return Err(fail("--batch auto: this backend does not report its memory; give --memory-gb".into()))
        }
    } as u64;
    let mut probes = vec![(1usize, forward, first.reserved)];
    let mut b = 1usize;
    while probes.len() < 2 || (2 * probes[probes.len() - 1].2 <= limit && b < MAX_AUTO_PROBE) {
        b *= 2;
        let (forward, after) = probe(b)?;
        probes.push((b, forward, after.reserved));
    }
    let [(b1, forward1, held1), (b2, forward2, held2)] = [probes[probes.len() - 2], probes[probes.len() - 1]];
    let per = per_sequence(held1, held2, forward1, forward2) / (b2 - b1) as u64;
    // Where the estimate says no more fits (or cannot say), the probes decide.
    let mut chosen = batch_that_fits(b2, held2, per, limit).unwrap_or(b2);
    eprintln!(
        "--batch auto: {:.2} GB held after a step at batch {b1}, {:.2} GB at batch {b2}, {:.3} GB per more sequence, \
         {:.1} GB allowed: batch {chosen}",
        held1 as f64 / 1e9,
        held2 as f64 / 1e9,
        per as f64 / 1e9,
        limit as f64 / 1e9
    );
    // The allocator's pages do not grow linearly: the choice is stepped, and shrunk toward the
    // last probe in proportion to any overshoot, until a step fits (or the probe is all that did).
    for _ in 0..MAX_AUTO_CHECKS {
        if chosen <= b2 {
            break;
        }
        let (_, after) = probe(chosen)?;
        if after.reserved <= limit {
            B::release_free_memory(device);
            return Ok(chosen);
        }
        let room = limit.saturating_sub(held2) as f64 / after.reserved.saturating_sub(held2).max(1) as f64;
        let next = b2 + ((chosen - b2) as f64 * room * 0.95) as usize;
        eprintln!(
            "--batch auto: batch {chosen} held {:.2} GB, over the {:.1} GB allowed: trying batch {next}",
            after.reserved as f64 / 1e9,
            limit as f64 / 1e9
        );
        chosen = next;
    }
    B::release_free_memory(device);
    // The largest probe that fitted.
    probes.iter().filter(|p| p.2 <= limit).map(|p| p.0).max().ok_or_else(|| {
        fail(format!(
            "--batch auto: a step at batch 1 holds {:.1} GB, more than the {:.1} GB allowed",
            first.reserved as f64 / 1e9,
            limit as f64 / 1e9
        ))
    })
}

/// The largest batch `--batch auto` steps at while it measures.
const MAX_AUTO_PROBE: usize = 1024;

/// Steps `--batch auto` takes to check (and shrink) its choice.
const MAX_AUTO_CHECKS: usize = 4;

/// Times training steps of a freshly initialized model on random tokens.
pub fn bench<B: crate::fused::TrainBackend>(
    a: &BenchArgs,
    device: &B::Device,
    peak_dtype: DType,
) -> Result<BenchReport> {
    let started = Instant::now();
    crate::fused::set_enabled(!a.reference);
    crate::fused::set_ssd_scan(!a.ssd_op_by_op);
    crate::fused::set_ssd_products(a.products());
    crate::fused::set_flash_attention(a.flash_attention);
    crate::fused::set_ssd_keep(a.ssd_keep);
    let cuda = matches!(a.backend, BackendKind::Cuda);
    crate::fused::set_matmul_kernel(crate::fused::matmul_kernel_for(a.matmul_kernel.as_deref(), cuda))
        .map_err(crate::error::Error::Config)?;
    crate::fused::set_f32_matmul_kernel(a.f32_matmul_kernel.as_deref()).map_err(crate::error::Error::Config)?;
    let teacher = a.distill.then(|| {
        LlamaTeacher::<B::InnerBackend>::random(smollm2_135m_shape(a.vocab), 7, device)
            .with_matmul_dtype(a.bf16.then_some(DType::BF16))
    });
    let b = match a.batch {
        BatchSize::Fixed(n) => n,
        BatchSize::Auto => auto_batch::<B>(a, teacher.as_ref(), device)?,
    };
    let mut model = bench_model::<B>(a, device)?;
    let cfg = model.config.clone();
    let mut opt = AdamW::<B::InnerBackend>::new(OptimConfig::default());
    opt.fused = !a.reference;
    let mut rng = SplitMix64::new(1);
    let l = a.seq_len;
    let mut sum = StepTimes::default();
    let (mut first_step_s, mut to_first_step_s) = (0.0, 0.0);
    for i in 0..a.warmup + a.steps {
        let timed = i >= a.warmup;
        if i == a.warmup {
            crate::profile::enable(a.profile);
        }
        let (m, t) = train_step(a, model, &mut opt, teacher.as_ref(), &mut rng, b, device);
        model = m;
        if timed {
            sum.forward += t.forward;
            sum.backward += t.backward;
            sum.optimizer += t.optimizer;
            sum.teacher += t.teacher;
        }
        let total = t.forward + t.backward + t.optimizer;
        if i == 0 {
            (first_step_s, to_first_step_s) = (total, started.elapsed().as_secs_f64());
        }
        eprintln!("step {i}: {total:.3} s{}", if timed { "" } else { " (warm-up)" });
    }
    let memory_reserved_gb = B::device_memory(device).map(|m| m.reserved as f64 / 1e9);
    let n = a.steps.max(1) as f64;
    let (fw, bw, op, te) = (sum.forward / n, sum.backward / n, sum.optimizer / n, sum.teacher / n);
    let profile_ms = a.profile.then(|| {
        let mut t: std::collections::BTreeMap<String, f64> =
            crate::profile::totals().into_iter().map(|(k, v)| (format!("forward.{k}"), 1e3 * v / n)).collect();
        t.insert("backward".into(), 1e3 * bw);
        t.insert("optimizer".into(), 1e3 * op);
        if a.distill {
            t.insert("teacher".into(), 1e3 * te);
        }
        t
    });
    crate::profile::enable(false);
    let parts_ms = a.parts.then(|| parts::parts(&model, b, l, a.steps.max(1), device));
    let _ = model.valid();
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
        teacher_s: te,
        distill: a.distill,
        batch: b,
        memory_reserved_gb,
        tokens_per_s: tokens as f64 / step_s,
        flops_per_token,
        model_tflops,
        peak_tflops: peak,
        peak_dtype: format!("{peak_dtype:?}"),
        matmul_dtype: if a.bf16 { "BF16".into() } else { "F32".into() },
        ssd_scan: if a.ssd_op_by_op || matches!(a.backend, BackendKind::Ndarray) {
            "op by op".into()
        } else {
            let products = match a.products() {
                SsdProducts::TensorCores if B::ssd_tensor_cores_available(device) => "node, tf32 tensor cores",
                SsdProducts::Blocked => "node, f32 multiply-adds, blocked 128 x 64 tiles",
                _ => "node, f32 multiply-adds, 64 x 64 tiles",
            };
            format!("{products}{}", if a.ssd_keep { ", states kept for the backward" } else { "" })
        },
        flash_attention: a.flash_attention && <B::InnerBackend as crate::fused::FusedOps>::KERNELS,
        first_step_s,
        to_first_step_s,
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
    println!("SSD scan: {}", r.ssd_scan);
    println!(
        "batch {} | tokens/step {} | step {:.3} s (forward {:.3}, backward {:.3}, optimizer {:.3})",
        r.batch, r.tokens_per_step, r.step_s, r.forward_s, r.backward_s, r.optimizer_s
    );
    println!(
        "first step {:.1} s (kernel compilation included), {:.1} s from the start of the bench",
        r.first_step_s, r.to_first_step_s
    );
    if r.distill {
        println!(
            "distillation step: the teacher's forward took {:.3} s of the forward (attention {})",
            r.teacher_s,
            if r.flash_attention { "through the flash kernel" } else { "op by op" }
        );
    }
    if let Some(gb) = r.memory_reserved_gb {
        println!("device memory held by the allocator after the steps: {gb:.2} GB");
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_flag_parses() {
        assert_eq!("auto".parse::<BatchSize>(), Ok(BatchSize::Auto));
        assert_eq!("12".parse::<BatchSize>(), Ok(BatchSize::Fixed(12)));
        for bad in ["0", "-1", "four", ""] {
            let e = bad.parse::<BatchSize>().expect_err(bad);
            assert!(e.contains("auto"), "{e}");
        }
    }

    #[test]
    fn the_chosen_batch_is_the_largest_that_fits() {
        // 13 GB held at batch 1, 3 GB more per sequence.
        let gb = 1_000_000_000u64;
        assert_eq!(batch_that_fits(1, 13 * gb, 3 * gb, 40 * gb), Ok(10));
        assert_eq!(batch_that_fits(1, 13 * gb, 3 * gb, 39 * gb), Ok(9));
        assert_eq!(batch_that_fits(1, 13 * gb, 3 * gb, 16 * gb), Ok(2));
        assert!(batch_that_fits(1, 13 * gb, 3 * gb, 15 * gb).is_err());
        assert!(batch_that_fits(1, 13 * gb, 0, 40 * gb).is_err());
        // The same memory seen from a step at batch 4 (22 GB held).
        assert_eq!(batch_that_fits(4, 22 * gb, 3 * gb, 40 * gb), Ok(10));
        // Pages held grew by 1 GB, the forward's live tensors by 0.8 GB: 1.6 GB per sequence.
        assert_eq!(per_sequence(13 * gb, 14 * gb, 5 * gb, 5 * gb + 800_000_000), 1_600_000_000);
        assert_eq!(per_sequence(13 * gb, 16 * gb, 5 * gb, 6 * gb), 3 * gb);
    }
}
