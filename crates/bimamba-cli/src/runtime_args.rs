//! The options that say how a model runs, one flattened group that every model command takes:
//! the kernels' instruction set and threads, and the arithmetic settings of each kind of model.

use anyhow::{bail, Context, Result};
use bimamba_engine::linear::BinaryAct;
use bimamba_engine::StateDtype;
use bimamba_kernels::Isa;
use bimamba_llama::Activations;
use bimamba_models::{ModelKind, SettingError, Settings};
use clap::{Args, ValueEnum};

/// The environment variable that chooses the ISA when `--isa` is not given.
const ENV: &str = bimamba_kernels::isa::ISA_ENV;

/// The heading these options are listed under in every command's help.
const HEADING: &str = "Runtime options";

#[derive(Args, Clone, Debug)]
pub struct RuntimeArgs {
    /// Kernel instruction set (default: the best this CPU has; also settable with BIMAMBA_ISA).
    #[arg(long, help_heading = HEADING, value_enum, ignore_case = true, value_name = "ISA")]
    pub isa: Option<IsaArg>,

    /// Worker threads for the kernels (default: all cores).
    #[arg(long, help_heading = HEADING, value_name = "N", value_parser = parse_threads)]
    pub threads: Option<usize>,

    /// Storage precision of the SSM state (Mamba-2 / Bi-Mamba models only; default bf16, f32
    /// with --exact).
    #[arg(long, help_heading = HEADING, value_enum, value_name = "f32|bf16", conflicts_with = "exact")]
    pub state_dtype: Option<StateDtypeArg>,

    /// Activations of the 1-bit projections (Mamba-2 / Bi-Mamba models only; default int8 where
    /// this CPU has an AVX512-VNNI or AVX2 kernel for it, else f32; f32 with --exact). int8 also
    /// quantizes the input of a q8 LM head where the CPU has AVX512-VNNI.
    #[arg(long, help_heading = HEADING, value_enum, value_name = "f32|int8", conflicts_with = "exact")]
    pub binary_act: Option<BinaryActArg>,

    /// Activations in the products of a .gguf model's quantized (Q8_0/Q4_0/Q4_1) matrices.
    #[arg(long, help_heading = HEADING, value_enum, value_name = "f32|q8", default_value_t = GgufActArg::F32)]
    pub gguf_act: GgufActArg,

    /// The reference arithmetic: f32 activations for the 1-bit products and the LM head, an f32 SSM state
    /// (slower; crates/bimamba-kernels/KERNELS.md has what the defaults change).
    #[arg(long, help_heading = HEADING, conflicts_with = "gguf_act")]
    pub exact: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum IsaArg {
    /// Portable Rust, on every CPU.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 F + BW + VL.
    Avx512,
    /// AArch64 Advanced SIMD.
    Neon,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StateDtypeArg {
    /// Exact.
    F32,
    /// Half the state traffic per token; update and readout still in f32 (the default).
    Bf16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BinaryActArg {
    /// Exact Bi-Mamba arithmetic.
    F32,
    /// Per-token int8 and integer dot products: faster with AVX512-VNNI or AVX2, perplexity
    /// changes slightly (crates/bimamba-kernels/KERNELS.md); the default where a SIMD kernel runs it.
    Int8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GgufActArg {
    /// The exact product on the dequantized weights.
    F32,
    /// 8 bits per block of 32 and integer dot products, as llama.cpp computes: about 3x faster
    /// with AVX-512 VNNI (crates/bimamba-llama/KERNELS.md).
    Q8,
}

/// The kernels' worker threads: `asked` (all cores when `None`), at most the threads this machine
/// runs at once. More would only take turns on the same cores (10,000 threads start slowly and
/// gain nothing), so a larger value is lowered with a one-line warning.
fn usable_threads(asked: Option<usize>) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    match asked {
        None => cores,
        Some(n) if n > cores => {
            eprintln!("warning: --threads {n}: this machine runs {cores} threads at once; using {cores}");
            cores
        }
        Some(n) => n,
    }
}

/// `--threads`: a whole number of at least 1.
fn parse_threads(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("expected a whole number of at least 1".into()),
    }
}

impl RuntimeArgs {
    /// Applies `--isa` and `--threads` (the rayon pool: all cores when not given); call once,
    /// before any model work. Returns the number of threads.
    pub fn setup(&self) -> Result<usize> {
        match self.isa {
            Some(isa) => {
                let isa = isa.isa();
                bimamba_kernels::set_isa(isa).map_err(|e| anyhow::anyhow!("--isa {isa}: {e}"))?;
            }
            // The variable is refused as the flag is (the flag, when given, wins over it).
            None => match bimamba_kernels::isa_from_env() {
                Ok(Some(isa)) => bimamba_kernels::set_isa(isa).map_err(|e| anyhow::anyhow!("{ENV}={isa}: {e}"))?,
                Ok(None) => {}
                Err(e) if e.starts_with(ENV) => bail!("{e}"),
                Err(e) => bail!("{ENV}={}: {e}", std::env::var(ENV).unwrap_or_default()),
            },
        }
        let threads = usable_threads(self.threads);
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .context("--threads: could not start the thread pool")?;
        Ok(threads)
    }

    /// The settings a model is opened with (call after [`RuntimeArgs::setup`]: the default
    /// 1-bit activations depend on the selected ISA).
    pub fn settings(&self) -> Settings {
        Settings {
            gguf_act: match self.gguf_act {
                GgufActArg::F32 => Activations::F32,
                GgufActArg::Q8 => Activations::Q8,
            },
            state_dtype: self.state_dtype.map(|d| match d {
                StateDtypeArg::F32 => StateDtype::F32,
                StateDtypeArg::Bf16 => StateDtype::Bf16,
            }),
            binary_act: self.binary_act.map(|a| match a {
                BinaryActArg::F32 => BinaryAct::F32,
                BinaryActArg::Int8 => BinaryAct::Int8,
            }),
            exact: self.exact,
        }
    }
}

impl RuntimeArgs {
    /// For commands the arithmetic settings do not reach (`why` says so): refuses any of them
    /// that was given, naming the flag.
    pub fn refuse_settings(&self, why: &str) -> Result<()> {
        let s = self.settings();
        let given = [
            ("--state-dtype", s.state_dtype().name(), s.state_dtype.is_some()),
            ("--binary-act", s.binary_act().name(), s.binary_act.is_some()),
            ("--gguf-act", s.gguf_act.name(), s.gguf_act != Activations::F32),
        ];
        match given.into_iter().find(|g| g.2) {
            Some((flag, value, _)) => {
                bail!("{flag} {value}: {why}; the option applies to generate, eval and bench")
            }
            None => Ok(()),
        }
    }

    /// Records the arithmetic settings in a result object (`state_dtype`, `binary_act`,
    /// `gguf_act`), so that every result file says how it was computed; a model of `kind` that
    /// has no use for a setting records it as f32 (the arithmetic it runs).
    pub fn record(&self, kind: ModelKind, v: &mut serde_json::Value) {
        let s = self.settings();
        let mamba = kind == ModelKind::Mamba;
        v["state_dtype"] = if mamba { s.state_dtype() } else { StateDtype::F32 }.name().into();
        v["binary_act"] = if mamba { s.binary_act() } else { BinaryAct::F32 }.name().into();
        v["gguf_act"] = if mamba { Activations::F32 } else { s.gguf_act }.name().into();
    }
}

impl IsaArg {
    pub fn isa(self) -> Isa {
        match self {
            IsaArg::Scalar => Isa::Scalar,
            IsaArg::Avx2 => Isa::Avx2,
            IsaArg::Avx512 => Isa::Avx512,
            IsaArg::Neon => Isa::Neon,
        }
    }
}

/// A setting refused for the model at hand, as one line naming the flag the user gave.
pub fn setting_error(e: &SettingError) -> anyhow::Error {
    anyhow::anyhow!("--{} {}: {} {}", e.setting.replace('_', "-"), e.value, e.file.display(), e.reason)
}
