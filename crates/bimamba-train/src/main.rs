//! `bimamba-train`: the training half of the `bimamba` CLI (`bimamba train ...` runs this
//! binary). Subcommands: train, data prepare, export, teacher-logits, bench, check-kernels,
//! matmul-kernels.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand};

use bimamba_train::backend::{self, BackendKind};
use bimamba_train::dist::{self, RankEnv};
use bimamba_train::runconfig::TrainConfig;
use bimamba_train::{bench, data, export, params, run};

#[derive(Parser, Debug)]
#[command(
    name = "bimamba-train",
    version,
    about = "Train Bi-Mamba (1-bit Mamba-2) models by autoregressive distillation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train (or resume) a model as configured by a TOML file.
    Train(TrainArgs),
    /// Data preparation.
    #[command(subcommand)]
    Data(DataCommand),
    /// Write a trained run's latest checkpoint as a state-spaces model directory.
    Export(ExportArgs),
    /// Precompute a teacher's top-k log-probabilities over the training windows.
    TeacherLogits(TeacherArgs),
    /// Measure training throughput and model-FLOPs utilization.
    Bench(bench::BenchArgs),
    /// Compare the backend's fused kernels with their op-by-op references on random inputs.
    CheckKernels(CheckArgs),
    /// Time every CubeCL matmul kernel family at the training step's product shapes (cuda).
    MatmulKernels(MatmulArgs),
}

#[derive(Args, Debug)]
struct MatmulArgs {
    /// cuda (the families are CubeCL kernels).
    #[arg(long, default_value = "cuda")]
    backend: backend::BackendKind,
    /// Rows of the step's products: batch × sequence length.
    #[arg(long, default_value_t = 8192)]
    rows: usize,
    /// Only these families (comma-separated names; default all).
    #[arg(long, value_delimiter = ',')]
    kernels: Vec<String>,
    /// Timed products per family and shape.
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// Write the rows as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct CheckArgs {
    /// ndarray (CPU) or cuda.
    #[arg(long, default_value = "ndarray")]
    backend: backend::BackendKind,
    /// Write the results as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The matmul family of the f32 products inside the op-by-op references (the names
    /// `matmul-kernels` lists; default: Burn's product, which on CUDA multiplies f32 inputs on
    /// TF32 tensor cores; `simple_unit` multiplies them in f32).
    #[arg(long)]
    f32_matmul_kernel: Option<String>,
}

#[derive(Args, Debug)]
struct TrainArgs {
    /// The run configuration (TOML: [model], [data], [optim], [loss], [teacher], [train]).
    #[arg(long)]
    config: PathBuf,
    /// Run directory (default: train.out of the config, else runs/<config name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from the latest checkpoint in the run directory.
    #[arg(long)]
    resume: bool,
    /// Override train.backend: ndarray (CPU) or cuda.
    #[arg(long)]
    backend: Option<BackendKind>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Stop after this many seconds of this process (checkpoint written; continue with --resume).
    #[arg(long)]
    max_seconds: Option<f64>,
    /// Run the bf16 projection and head products with this CubeCL matmul kernel family (cuda;
    /// `matmul-kernels` lists and times them; `burn` is Burn's own product; the default on CUDA
    /// is `specialized_tma_mma`).
    #[arg(long)]
    matmul_kernel: Option<String>,
    /// Differentiate the SSD scan op by op (Burn's operations) instead of running it as one
    /// autodiff node on its own kernels (the default on CUDA and WGPU).
    #[arg(long, conflicts_with = "ssd_node")]
    ssd_op_by_op: bool,
    /// The SSD scan as one node on its kernels: the default (kept so that earlier commands run).
    #[arg(long, hide = true)]
    ssd_node: bool,
    /// The kernel of the SSD scan's products: `simple` (f32 multiply-adds, 4 × 4 per thread; the
    /// fastest measured on the H100 so far), `blocked` (8 × 8 per thread, the same sums; not yet
    /// measured on a GPU) or `tensor-cores` (TF32, CUDA from sm_80; measured slower).
    #[arg(long, value_enum, default_value = "simple")]
    ssd_products: bimamba_train::fused::SsdProducts,
    /// `--ssd-products tensor-cores` (kept so that earlier commands run).
    #[arg(long, hide = true)]
    ssd_tensor_cores: bool,
    /// Keep the SSD scan's chunk states and carried-in outputs from the forward for the backward
    /// (two fewer products and no second state passing per layer; two more batch × length ×
    /// d_inner f32 tensors per layer held); not yet measured on a GPU.
    #[arg(long)]
    ssd_keep: bool,
    /// Run the teacher's attention through CubeCL's flash-attention kernel (no [b, heads, L, L]
    /// scores in memory) instead of op by op; checked by `check-kernels`, not yet measured on a GPU.
    #[arg(long)]
    flash_attention: bool,
    /// Data-parallel ranks to start on this host, one per GPU with `--backend cuda` (rank r uses
    /// GPU r); each rank trains on `data.batch_size` windows of every step. Under an external
    /// launcher (torchrun-style WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) leave
    /// it out.
    #[arg(long, visible_alias = "gpus", value_parser = clap::value_parser!(u16).range(1..=1024))]
    nproc: Option<u16>,
}

#[derive(Subcommand, Debug)]
enum DataCommand {
    /// Tokenize text files into a token directory (train.tok, val.tok, meta.json, tokenizer.json).
    Prepare(PrepareArgs),
    /// Write text sampled from a LLaMA-architecture teacher (.gguf), continuing prompts cut from
    /// a token directory's training split: more distillation text (prepare it with the rest).
    SampleTeacher(SampleTeacherArgs),
}

#[derive(Args, Debug)]
struct SampleTeacherArgs {
    /// The teacher (.gguf).
    #[arg(long)]
    teacher: PathBuf,
    /// Token directory from `data prepare` (the teacher's tokenizer) to cut the prompts from.
    #[arg(long)]
    data: PathBuf,
    /// The text file to write (a record of the run goes beside it, `.json` appended).
    #[arg(long)]
    out: PathBuf,
    /// Samples in all.
    #[arg(long, default_value_t = 512)]
    samples: usize,
    /// Sequences generated at once.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Tokens per prompt.
    #[arg(long, default_value_t = 16)]
    prompt_tokens: usize,
    /// Tokens generated after each prompt.
    #[arg(long, default_value_t = 512)]
    new_tokens: usize,
    /// Softmax temperature (0: the most likely token).
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Seed of the prompts' places and of the draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run the teacher's products in bf16 (cuda).
    #[arg(long)]
    bf16: bool,
    /// ndarray (CPU) or cuda.
    #[arg(long, default_value = "ndarray")]
    backend: BackendKind,
}

#[derive(Args, Debug)]
struct PrepareArgs {
    /// The tokenizer.json to use (the teacher's, when distilling), or a .gguf file whose
    /// embedded tokenizer is used.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Fraction of each text held out for validation (its last tokens).
    #[arg(long, default_value_t = 0.05)]
    val_fraction: f64,
    /// Plain-text files; each is one document.
    #[arg(required = true)]
    texts: Vec<PathBuf>,
}

#[derive(Args, Debug)]
struct ExportArgs {
    /// The run directory.
    #[arg(long)]
    run: PathBuf,
    /// The model directory to write.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args, Debug)]
struct TeacherArgs {
    /// The teacher: a full-precision Mamba-2 model directory (config.json, model.safetensors,
    /// tokenizer.json) or a LLaMA-architecture .gguf file.
    #[arg(long)]
    teacher: PathBuf,
    /// Data directory from `data prepare` (made with the teacher's tokenizer).
    #[arg(long)]
    data: PathBuf,
    /// Output file (.topk).
    #[arg(long)]
    out: PathBuf,
    /// Tokens per window: must equal data.seq_len of the training config.
    #[arg(long)]
    seq_len: usize,
    /// Log-probabilities kept per position.
    #[arg(long, default_value_t = 32)]
    top_k: usize,
    /// At most this many windows (from the start of the training split).
    #[arg(long, default_value_t = usize::MAX)]
    max_windows: usize,
    /// Windows per teacher forward.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// ndarray (CPU) or cuda.
    #[arg(long, default_value = "ndarray")]
    backend: BackendKind,
}

/// A mistake is one line on stderr and a non-zero exit, as in the `bimamba` CLI: clap's message
/// without its usage, or the error and its causes joined by ": " (no backtrace).
fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => e.exit(),
        Err(e) => {
            let text = e.render().to_string();
            let first = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("invalid arguments");
            eprintln!("error: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A data-parallel rank says which one it is.
            let rank = match (std::env::var("WORLD_SIZE"), std::env::var("RANK")) {
                (Ok(w), Ok(r)) if w.trim() != "1" => format!("rank {}: ", r.trim()),
                _ => String::new(),
            };
            eprintln!("error: {rank}{}", bimamba_lm::one_line(e.chain()));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(a) => {
            let cfg = TrainConfig::load(&a.config).with_context(|| format!("reading {}", a.config.display()))?;
            let launched = std::env::var_os("WORLD_SIZE").is_some();
            let ranks = RankEnv::from_env()?;
            match a.nproc.map(usize::from) {
                Some(n) if n > 1 && !launched => {
                    // Start the ranks (this same command line, with the launcher's environment).
                    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
                    dist::launch::local(n, &args)?;
                    println!("all {n} ranks finished");
                    return Ok(());
                }
                Some(n) if launched && n != ranks.world => {
                    bail!("--nproc {n} but the environment says WORLD_SIZE {}", ranks.world)
                }
                _ => {}
            }
            let out = match (a.out, &cfg.train.out) {
                (Some(o), _) => o,
                (None, Some(o)) => o.clone(),
                (None, None) => {
                    let stem = a.config.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or("run".into());
                    PathBuf::from("runs").join(stem)
                }
            };
            let kind = match a.backend {
                Some(k) => k,
                None => cfg.train.backend.parse().map_err(anyhow::Error::msg)?,
            };
            let cuda = matches!(kind, BackendKind::Cuda);
            let family = bimamba_train::fused::matmul_kernel_for(a.matmul_kernel.as_deref(), cuda);
            bimamba_train::fused::set_matmul_kernel(family).map_err(anyhow::Error::msg)?;
            bimamba_train::fused::set_ssd_scan(!a.ssd_op_by_op);
            bimamba_train::fused::set_flash_attention(a.flash_attention);
            bimamba_train::fused::set_ssd_keep(a.ssd_keep);
            bimamba_train::fused::set_ssd_products(bimamba_train::fused::SsdProducts::from_flags(
                a.ssd_products,
                a.ssd_tensor_cores,
            ));
            let root = ranks.rank == 0;
            let opts = run::RunOptions {
                out,
                resume: a.resume,
                quiet: a.quiet,
                max_seconds: a.max_seconds,
                ranks,
                gpu: false,
            };
            let s = backend::train(kind, &cfg, &opts)?;
            if !root {
                return Ok(());
            }
            let fmt = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or("-".into());
            if s.stopped_early {
                println!("time limit reached: checkpoint at step {}; continue with --resume", s.steps);
            }
            println!(
                "trained {} steps in {}: last train loss {:.4}, val loss {} -> {}",
                s.steps,
                s.run_dir.display(),
                s.last_train_loss,
                fmt(s.first_val_loss),
                fmt(s.last_val_loss)
            );
        }
        Command::Data(DataCommand::Prepare(a)) => {
            let m = data::prepare(&a.tokenizer, &a.out, &a.texts, a.val_fraction)?;
            println!(
                "{}: {} train + {} val tokens from {} documents (vocab {}, eos {}, {} bytes/token)",
                a.out.display(),
                m.train_tokens,
                m.val_tokens,
                m.documents,
                m.vocab_size,
                m.eos_id,
                m.token_bytes
            );
        }
        Command::Export(a) => {
            let c = export::export_run(&a.run, &a.out)?;
            println!("wrote {} ({:?}, {} parameters)", a.out.display(), c.precision, c.num_params());
        }
        Command::Data(DataCommand::SampleTeacher(a)) => {
            let job = bimamba_train::sample::SampleJob {
                teacher: &a.teacher,
                data: &a.data,
                out: &a.out,
                samples: a.samples,
                batch: a.batch,
                prompt_tokens: a.prompt_tokens,
                bf16: a.bf16,
                options: bimamba_train::sample::SampleOptions {
                    new_tokens: a.new_tokens,
                    temperature: a.temperature,
                    seed: a.seed,
                },
            };
            let r = backend::sample_teacher(a.backend, &job)?;
            println!(
                "{}: {} samples, {} tokens generated in {:.1} s ({:.0} tokens/s)",
                a.out.display(),
                r.samples,
                r.generated_tokens,
                r.seconds,
                r.generated_tokens as f64 / r.seconds.max(1e-9)
            );
        }
        Command::TeacherLogits(a) => {
            if a.seq_len == 0 {
                bail!("--seq-len must be positive");
            }
            let n = backend::teacher_logits(
                a.backend,
                &a.teacher,
                &a.data,
                &a.out,
                a.seq_len,
                a.top_k,
                a.max_windows,
                a.batch,
            )?;
            println!("wrote {} ({n} windows of {} tokens, top {})", a.out.display(), a.seq_len, a.top_k);
        }
        Command::Bench(a) => bench::run_cli(&a)?,
        Command::CheckKernels(a) => {
            bimamba_train::fused::set_f32_matmul_kernel(a.f32_matmul_kernel.as_deref()).map_err(anyhow::Error::msg)?;
            let checks = backend::check_kernels(a.backend)?;
            for c in &checks {
                println!(
                    "{:<5} {:<14} {:>24} rel_l2 {:.2e} rel_max {:.2e} (tolerance {:.0e})",
                    if c.pass { "ok" } else { "FAIL" },
                    c.name,
                    format!("{:?}", c.shape),
                    c.rel_l2,
                    c.rel_max,
                    c.tolerance
                );
            }
            if let Some(p) = &a.json {
                params::write_atomic(p, serde_json::to_string_pretty(&checks)?.as_bytes())?;
            }
            let failed = checks.iter().filter(|c| !c.pass).count();
            if failed > 0 {
                anyhow::bail!("{failed} of {} kernel checks failed", checks.len());
            }
            println!("all {} kernel checks passed", checks.len());
        }
        Command::MatmulKernels(a) => {
            let rows = backend::matmul_kernels(a.backend, a.rows, &a.kernels, a.reps)?;
            if let Some(p) = &a.json {
                params::write_atomic(p, serde_json::to_string_pretty(&rows)?.as_bytes())?;
            }
        }
    }
    Ok(())
}
