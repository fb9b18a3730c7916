//! The training loop: batches, distillation loss, accumulation, AdamW, metrics, checkpoints,
//! exact resume, and the stop on a non-finite loss.
//!
//! Run directory: `config.toml` (resolved) and `run.json` (git commit, backend, parameter count),
//! both written before step 0, with a copy of the data's `tokenizer.json`; `metrics.jsonl` (one
//! JSON object per step; `val_loss` on the steps where it is measured); `checkpoints/`; `loss.png`
//! at the end. `--max-seconds` ends the loop early with a checkpoint, for `--resume` to continue.
//!
//! Data-parallel ([`crate::dist`]): every rank runs this loop on its share of each step's global
//! batch, the gradients and the loss are averaged across ranks, and rank 0 alone writes the run
//! directory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::checkpoint::{self, TrainState, CHECKPOINT_VERSION};
use crate::config::ModelConfig;
use crate::data::{Dataset, WindowSampler};
use crate::dist::{self, RankEnv};
use crate::error::{Error, Result};
use crate::loss::{cross_entropy, soft_cross_entropy, soft_cross_entropy_topk};
use crate::model::Mamba2Lm;
use crate::optim::AdamW;
use crate::params;
use crate::runconfig::{TeacherConfig, TrainConfig};
use crate::teacher::{check_tokenizer, load_llama_teacher, load_mamba_teacher, Frozen, TopkFile};

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The run directory.
    pub out: PathBuf,
    /// Continue from the latest checkpoint in `out`.
    pub resume: bool,
    /// No progress bar and no per-evaluation lines (tests).
    pub quiet: bool,
    /// Stop (with a checkpoint) once this process has run this many seconds.
    pub max_seconds: Option<f64>,
    /// This process's place among the data-parallel ranks ([`RankEnv::solo`] for one process).
    pub ranks: RankEnv,
    /// The model is on CUDA GPU `ranks.local_rank` (set by the backend dispatch).
    pub gpu: bool,
}

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct RunSummary {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Steps completed.
    pub steps: u64,
    /// Training loss of the last step.
    pub last_train_loss: f64,
    /// Validation loss before the first step (None without validation data).
    pub first_val_loss: Option<f64>,
    /// Validation loss after the last step.
    pub last_val_loss: Option<f64>,
    /// The run stopped at `--max-seconds` before `train.steps` (a checkpoint holds its state).
    pub stopped_early: bool,
}

enum Teacher<B: Backend> {
    None,
    Model(Box<dyn Frozen<B>>),
    Topk(TopkFile),
}

/// The git commit of the working directory, with `-dirty` when it has changes.
pub fn git_commit() -> String {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match run(&["rev-parse", "HEAD"]) {
        Some(c) => {
            let dirty = run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{c}-dirty")
            } else {
                c
            }
        }
        None => "unknown".into(),
    }
}

fn int_tensor<B: Backend>(v: Vec<i64>, dims: [usize; 2], device: &B::Device) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(v, dims), device)
}

/// Mean next-token cross-entropy of `model` on the first `windows` non-overlapping windows of the
/// validation split (None when it holds no whole window).
pub fn validation_loss<B: crate::fused::FusedOps>(
    model: &Mamba2Lm<B>,
    data: &Dataset,
    seq_len: usize,
    windows: usize,
    batch: usize,
    device: &B::Device,
) -> Option<f64> {
    let n = (data.val.len().saturating_sub(1) / seq_len).min(windows);
    if n == 0 {
        return None;
    }
    let mut total = 0.0;
    let mut i = 0;
    while i < n {
        let nb = batch.max(1).min(n - i);
        let toks: Vec<i64> = (i..i + nb).flat_map(|w| data.val.window(w * seq_len, seq_len + 1)).collect();
        let t = int_tensor::<B>(toks, [nb, seq_len + 1], device);
        let logits = model.forward_logits(t.clone().narrow(1, 0, seq_len));
        let ce: f64 = cross_entropy(logits, t.narrow(1, 1, seq_len)).into_scalar().elem();
        total += ce * nb as f64;
        i += nb;
    }
    Some(total / n as f64)
}

fn append_line(path: &Path, v: &serde_json::Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(Error::io(path))?;
    writeln!(f, "{v}").map_err(Error::io(path))
}

/// Keeps the metric lines of steps ≤ `step` (a resumed run rewrites what came after).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    params::write_atomic(path, kept.as_bytes())
}

/// Runs (or resumes) training as configured. `B` is the autodiff backend.
pub fn train<B: crate::fused::TrainBackend>(
    cfg: &TrainConfig,
    opts: &RunOptions,
    device: &B::Device,
) -> Result<RunSummary> {
    let data = Dataset::open(&cfg.data.dir)?;
    let mcfg: ModelConfig = cfg.model.resolve(data.meta.vocab_size)?;
    if mcfg.padded_vocab_size < data.meta.vocab_size {
        return Err(Error::Config(format!(
            "model.vocab_size {} is smaller than the tokenizer's {}",
            mcfg.vocab_size, data.meta.vocab_size
        )));
    }
    let (seq_len, bs, accum) = (cfg.data.seq_len, cfg.data.batch_size, cfg.data.grad_accum);
    // Every rank trains on `bs` windows of a global batch of `world · bs`.
    let (rank, world) = (opts.ranks.rank, opts.ranks.world);
    let root = rank == 0;
    // The in-process teacher runs its products in the student's product dtype (bf16 on GPUs).
    let matmul_dtype = crate::runconfig::parse_dtype(cfg.train.matmul_dtype.as_deref())?;
    let teacher: Teacher<B::InnerBackend> = match &cfg.teacher {
        TeacherConfig::None => Teacher::None,
        TeacherConfig::Mamba { path } => {
            Teacher::Model(Box::new(load_mamba_teacher(path, &data, device)?.with_matmul_dtype(matmul_dtype)))
        }
        TeacherConfig::Gguf { path } => {
            Teacher::Model(Box::new(load_llama_teacher(path, &data, device)?.with_matmul_dtype(matmul_dtype)))
        }
        TeacherConfig::Topk { path } => {
            let f = TopkFile::open(path)?;
            check_tokenizer(&f.vocab_hash, &path.display().to_string(), &data)?;
            if f.seq_len != seq_len {
                return Err(Error::Config(format!(
                    "{} holds windows of {} tokens but data.seq_len is {seq_len}",
                    path.display(),
                    f.seq_len
                )));
            }
            Teacher::Topk(f)
        }
    };
    // With a top-k file, windows must be the ones it covers.
    let (aligned, train_len) = match &teacher {
        Teacher::Topk(f) => (true, data.train.len().min(f.windows * seq_len + 1)),
        _ => (false, data.train.len()),
    };

    let run_dir = opts.out.clone();
    std::fs::create_dir_all(&run_dir).map_err(Error::io(&run_dir))?;
    let mut resolved = cfg.clone();
    resolved.model.vocab_size = Some(mcfg.vocab_size);
    let resolved_toml = resolved.to_toml()?;
    let cfg_path = run_dir.join("config.toml");
    let latest = checkpoint::latest(&run_dir)?;
    let resumed = match (&latest, opts.resume) {
        (Some(dir), true) => {
            let stored = std::fs::read_to_string(&cfg_path).map_err(Error::io(&cfg_path))?;
            let mut a: TrainConfig = toml::from_str(&stored).map_err(|e| Error::format(&cfg_path, e.to_string()))?;
            let mut b = resolved.clone();
            // Only the step count may change on resume (to train longer).
            a.train.steps = 0;
            b.train.steps = 0;
            if a != b {
                return Err(Error::Config(format!(
                    "--resume: the configuration differs from the run's {} (only train.steps may change)",
                    cfg_path.display()
                )));
            }
            let ck = checkpoint::load(dir)?;
            let windows = (bs * accum * world) as u64;
            ck.check(&checkpoint::RunShape {
                seq_len,
                aligned,
                world,
                windows_per_step: windows,
                tokens_per_step: windows * seq_len as u64,
            })?;
            Some(ck)
        }
        (Some(_), false) => {
            return Err(Error::Config(format!(
                "{} already holds checkpoints: pass --resume to continue it, or choose another --out",
                run_dir.display()
            )))
        }
        (None, _) => None,
    };
    // Every rank has checked the run directory; from here on only rank 0 writes to it.
    // GPU tensors are summed by NCCL on the rank's GPU; host ones over TCP.
    let mut comm = opts.ranks.connect(opts.gpu.then_some(opts.ranks.local_rank))?;
    if root {
        params::write_atomic(&cfg_path, resolved_toml.as_bytes())?;
        let run_info = json!({
            "git_commit": git_commit(),
            "backend": std::any::type_name::<B>(),
            "params": mcfg.num_params(),
            "model": mcfg,
            "ranks": world,
            "tokens_per_step": bs * accum * seq_len * world,
        });
        params::write_atomic(&run_dir.join("run.json"), format!("{run_info:#}\n").as_bytes())?;
        // The run keeps its own tokenizer, so `export` needs nothing outside the run directory.
        let tok_src = cfg.data.dir.join("tokenizer.json");
        let tok = std::fs::read(&tok_src).map_err(Error::io(&tok_src))?;
        params::write_atomic(&run_dir.join("tokenizer.json"), &tok)?;
    }

    let mut model = Mamba2Lm::<B>::init(&mcfg, cfg.train.seed, device).with_matmul_dtype(matmul_dtype);
    let mut optim = AdamW::<B::InnerBackend>::new(cfg.optim.clone());
    let mut state = TrainState {
        version: CHECKPOINT_VERSION,
        step: 0,
        adam_steps: 0,
        sampler: WindowSampler::new(seq_len, aligned, cfg.train.seed),
        tokens_seen: 0,
        elapsed_s: 0.0,
        world_size: world,
    };
    let metrics = run_dir.join("metrics.jsonl");
    if let Some(ck) = resumed {
        model = params::load(model, &ck.model, &ck.dir.display().to_string())?;
        optim.load_state(&ck.optim, ck.state.adam_steps, device)?;
        state = ck.state;
        if root {
            truncate_metrics(&metrics, state.step)?;
        }
    } else if root && metrics.exists() {
        std::fs::remove_file(&metrics).map_err(Error::io(&metrics))?;
    }

    let total = cfg.train.steps;
    let started = Instant::now();
    let mut stopped_early = false;
    let quiet = opts.quiet || !root;
    let pb = if quiet { ProgressBar::hidden() } else { ProgressBar::new(total) };
    pb.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {pos}/{len} {msg} ETA {eta}")
            .map_err(|e| Error::Config(e.to_string()))?,
    );
    pb.set_position(state.step);
    // A hidden bar (no terminal) prints nothing, so evaluation lines go to stderr then.
    let say = |pb: &ProgressBar, s: String| {
        if quiet {
        } else if pb.is_hidden() {
            eprintln!("{s}");
        } else {
            pb.println(s);
        }
    };

    // Rank 0 alone measures the validation loss (it alone reports it).
    let eval = |m: &Mamba2Lm<B>| {
        root.then(|| validation_loss(&m.valid(), &data, seq_len, cfg.train.eval_windows, bs, device)).flatten()
    };
    let mut first_val = None;
    if state.step == 0 {
        first_val = eval(&model);
        if let Some(v) = first_val {
            append_line(&metrics, &json!({"step": 0, "val_loss": v}))?;
            say(&pb, format!("step 0: val_loss {v:.4}"));
        }
    }
    let mut last_loss = f64::NAN;
    let mut last_val = None;
    while state.step < total {
        let t0 = Instant::now();
        let mut acc = GradientsAccumulator::<Mamba2Lm<B>>::new();
        let mut loss_sum = 0.0;
        for _ in 0..accum {
            let (toks, starts) = state.sampler.next_batch_in(&data.train, train_len, bs * world)?;
            let mine = rank * bs..(rank + 1) * bs;
            let toks = toks[mine.start * (seq_len + 1)..mine.end * (seq_len + 1)].to_vec();
            let starts = &starts[mine];
            let t = int_tensor::<B>(toks, [bs, seq_len + 1], device);
            let (inputs, targets) = (t.clone().narrow(1, 0, seq_len), t.narrow(1, 1, seq_len));
            let logits = model.forward_logits(inputs.clone());
            let mut loss = if cfg.loss.hard_weight > 0.0 {
                Some(cross_entropy(logits.clone(), targets) * cfg.loss.hard_weight)
            } else {
                None
            };
            let temp = cfg.loss.temperature;
            let soft = match &teacher {
                Teacher::None => None,
                Teacher::Model(tm) => {
                    let tl = tm.logits(inputs.inner());
                    let v = tl.dims()[2].min(data.meta.vocab_size);
                    let tl = Tensor::<B, 3>::from_inner(tl.narrow(2, 0, v));
                    Some(soft_cross_entropy(logits, tl, temp))
                }
                Teacher::Topk(f) => {
                    let (ids, lp) = f.batch::<B>(starts, data.meta.vocab_size, device)?;
                    Some(soft_cross_entropy_topk(logits, ids, lp, temp))
                }
            };
            if let Some(s) = soft.filter(|_| cfg.loss.soft_weight > 0.0) {
                let s = s * cfg.loss.soft_weight;
                loss = Some(match loss {
                    Some(l) => l + s,
                    None => s,
                });
            }
            let loss =
                loss.ok_or_else(|| Error::Config("the loss has no term: check [loss] weights".into()))? / accum as f64;
            let value: f64 = loss.clone().into_scalar().elem();
            loss_sum += value;
            if !value.is_finite() {
                break;
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            acc.accumulate(&model, grads);
        }
        // The step's loss over the global batch; a non-finite loss on any rank stops every rank.
        let loss_sum = dist::all_reduce_scalars(comm.as_mut(), &[loss_sum])?[0] / world as f64;
        if !loss_sum.is_finite() {
            let msg = format!(
                "non-finite loss ({loss_sum}) at step {}: stopping; the last good checkpoint is kept{}",
                state.step + 1,
                checkpoint::latest(&run_dir)?.map(|p| format!(" ({})", p.display())).unwrap_or_default()
            );
            pb.abandon();
            if root {
                params::write_atomic(&run_dir.join("STOPPED"), format!("{msg}\n").as_bytes())?;
            }
            return Err(Error::Config(msg));
        }
        let lr = cfg.optim.lr_at(state.step, total);
        let exchange = Instant::now();
        let grads = dist::average_gradients::<B, _>(&model, acc.grads(), comm.as_mut())?;
        let exchange_s = exchange.elapsed().as_secs_f64();
        let (m, grad_norm) = optim.step::<B, _>(model, grads, lr);
        model = m;
        state.step += 1;
        state.adam_steps = optim.steps;
        let step_tokens = (bs * accum * seq_len * world) as u64;
        state.tokens_seen += step_tokens;
        let dt = t0.elapsed().as_secs_f64();
        state.elapsed_s += dt;
        last_loss = loss_sum;
        let tps = step_tokens as f64 / dt;
        let mut line = json!({
            "step": state.step, "train_loss": loss_sum, "lr": lr, "grad_norm": grad_norm,
            "tokens_per_s": tps, "tokens": state.tokens_seen, "elapsed_s": state.elapsed_s,
        });
        if world > 1 {
            // The gradient exchange's share of the step (gather, sum across ranks, scatter).
            line["exchange_s"] = json!(exchange_s);
        }
        let eval_now =
            (cfg.train.eval_every > 0 && state.step.is_multiple_of(cfg.train.eval_every)) || state.step == total;
        if eval_now {
            if let Some(v) = eval(&model) {
                line["val_loss"] = json!(v);
                last_val = Some(v);
                say(&pb, format!("step {}: train_loss {loss_sum:.4} val_loss {v:.4}", state.step));
            }
        }
        if root {
            append_line(&metrics, &line)?;
        }
        pb.set_message(format!("loss {loss_sum:.4} {tps:.0} tok/s"));
        pb.set_position(state.step);
        let mut out_of_time =
            opts.max_seconds.is_some_and(|m| started.elapsed().as_secs_f64() >= m) && state.step < total;
        if opts.max_seconds.is_some() {
            // Every rank stops at the same step when any rank's clock has run out.
            out_of_time = dist::all_reduce_scalars(comm.as_mut(), &[out_of_time as u8 as f64])?[0] > 0.0;
        }
        let ck_now = (cfg.train.checkpoint_every > 0 && state.step.is_multiple_of(cfg.train.checkpoint_every))
            || state.step == total
            || out_of_time;
        if ck_now && root {
            checkpoint::save(
                &run_dir,
                &params::collect(&model),
                &optim.state_tensors(),
                &state,
                cfg.train.keep_checkpoints,
            )?;
        }
        if out_of_time {
            stopped_early = true;
            break;
        }
    }
    pb.finish();
    if root {
        if let Err(e) = crate::plot::plot_losses(&metrics, &run_dir.join("loss.png")) {
            say(&pb, format!("warning: no loss plot: {e}"));
        }
    }
    Ok(RunSummary {
        run_dir,
        steps: state.step,
        last_train_loss: last_loss,
        first_val_loss: first_val,
        last_val_loss: last_val,
        stopped_early,
    })
}
