//! Backend choice at run time: NdArray on the CPU always, CUDA with the `cuda` feature.
//! Everything computes in f32 (see DEVELOPERS.md for the precision of each part).

use std::path::Path;
use std::str::FromStr;

use burn::backend::{Autodiff, NdArray};

use crate::data::Dataset;
use crate::error::Error;
use crate::error::Result;
use crate::run::{self, RunOptions, RunSummary};
use crate::runconfig::TrainConfig;
use crate::teacher;

/// CPU autodiff backend.
pub type CpuTrain = Autodiff<NdArray<f32>>;
/// CPU inference backend.
pub type Cpu = NdArray<f32>;
/// CUDA autodiff backend.
#[cfg(feature = "cuda")]
pub type CudaTrain = Autodiff<burn::backend::Cuda<f32, i32>>;
/// CUDA inference backend.
#[cfg(feature = "cuda")]
pub type CudaInfer = burn::backend::Cuda<f32, i32>;

/// Which backend to run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// Burn's NdArray backend (CPU, f32).
    Ndarray,
    /// Burn's CUDA backend (JIT kernels through NVRTC; needs the `cuda` feature).
    Cuda,
    /// Burn's WGPU backend with the same CubeCL kernels (Vulkan, Metal or DX12; with Mesa's
    /// lavapipe, on the CPU: kernel tests and launch counts, not speed; needs the `wgpu` feature).
    Wgpu,
}

impl FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "ndarray" | "cpu" => Ok(Self::Ndarray),
            "cuda" => Ok(Self::Cuda),
            "wgpu" => Ok(Self::Wgpu),
            other => Err(format!("unknown backend `{other}` (ndarray, cuda or wgpu)")),
        }
    }
}

#[cfg(not(feature = "wgpu"))]
fn no_wgpu() -> Error {
    Error::Config("this binary was built without the `wgpu` feature (cargo build --release --features wgpu)".into())
}

#[cfg(not(feature = "cuda"))]
fn no_cuda() -> Error {
    Error::Config("this binary was built without the `cuda` feature (cargo build --release --features cuda)".into())
}

/// Trains on the chosen backend.
pub fn train(kind: BackendKind, cfg: &TrainConfig, opts: &RunOptions) -> Result<RunSummary> {
    match kind {
        BackendKind::Ndarray => run::train::<CpuTrain>(cfg, opts, &Default::default()),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            // One GPU per rank on each host.
            let device = burn::backend::cuda::CudaDevice::new(opts.ranks.local_rank);
            run::train::<CudaTrain>(cfg, &RunOptions { gpu: true, ..opts.clone() }, &device)
        }
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => Err(no_cuda()),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => run::train::<Autodiff<burn::backend::Wgpu>>(cfg, opts, &Default::default()),
        #[cfg(not(feature = "wgpu"))]
        BackendKind::Wgpu => Err(no_wgpu()),
    }
}

/// Runs `teacher-logits` on the chosen backend; returns the number of windows written.
#[allow(clippy::too_many_arguments)]
pub fn teacher_logits(
    kind: BackendKind,
    teacher_dir: &Path,
    data_dir: &Path,
    out: &Path,
    seq_len: usize,
    k: usize,
    max_windows: usize,
    batch: usize,
) -> Result<usize> {
    let data = Dataset::open(data_dir)?;
    let progress = |done: usize, total: usize| eprint!("\r{done}/{total} windows");
    let n = match kind {
        BackendKind::Ndarray => {
            let dev = Default::default();
            let t = teacher::load_any::<Cpu>(teacher_dir, &data, &dev)?;
            teacher::write_topk(t.as_ref(), &data, out, seq_len, k, max_windows, batch, &dev, progress)?
        }
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            let dev = burn::backend::cuda::CudaDevice::new(0);
            let t = teacher::load_any::<CudaInfer>(teacher_dir, &data, &dev)?;
            teacher::write_topk(t.as_ref(), &data, out, seq_len, k, max_windows, batch, &dev, progress)?
        }
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => return Err(no_cuda()),
        BackendKind::Wgpu => {
            return Err(Error::Config("teacher-logits runs on ndarray or cuda".into()));
        }
    };
    eprintln!();
    Ok(n)
}

/// Runs `data sample-teacher` on the chosen backend.
pub fn sample_teacher(kind: BackendKind, job: &crate::sample::SampleJob<'_>) -> Result<crate::sample::SampleRecord> {
    match kind {
        BackendKind::Ndarray => crate::sample::run_job::<Cpu>(job, &Default::default()),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => crate::sample::run_job::<CudaInfer>(job, &burn::backend::cuda::CudaDevice::new(0)),
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => Err(no_cuda()),
        BackendKind::Wgpu => Err(Error::Config("sample-teacher runs on ndarray or cuda".into())),
    }
}

/// Runs the training-step benchmark on the chosen backend.
pub fn bench(kind: BackendKind, args: &crate::bench::BenchArgs) -> Result<crate::bench::BenchReport> {
    match kind {
        BackendKind::Ndarray => crate::bench::bench::<CpuTrain>(args, &Default::default(), burn::tensor::DType::F32),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            let device = burn::backend::cuda::CudaDevice::new(0);
            crate::bench::bench::<CudaTrain>(args, &device, burn::tensor::DType::BF16)
        }
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => Err(no_cuda()),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => {
            crate::bench::bench::<Autodiff<burn::backend::Wgpu>>(args, &Default::default(), burn::tensor::DType::F32)
        }
        #[cfg(not(feature = "wgpu"))]
        BackendKind::Wgpu => Err(no_wgpu()),
    }
}

/// Runs the fused-kernel checks on the chosen backend.
pub fn check_kernels(kind: BackendKind) -> Result<Vec<crate::fused::check::Check>> {
    match kind {
        BackendKind::Ndarray => Ok(crate::fused::check::run::<Cpu>(&Default::default(), false)),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => Ok(crate::fused::check::run::<CudaInfer>(&burn::backend::cuda::CudaDevice::new(0), true)),
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => Err(no_cuda()),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => Ok(crate::fused::check::run::<burn::backend::Wgpu>(&Default::default(), false)),
        #[cfg(not(feature = "wgpu"))]
        BackendKind::Wgpu => Err(no_wgpu()),
    }
}

/// Runs `matmul-kernels` (CUDA only): every family at the 130M-class step's product shapes with
/// `rows` rows, printing each row as it is measured.
#[cfg(feature = "cuda")]
pub fn matmul_kernels(
    kind: BackendKind,
    rows: usize,
    only: &[String],
    reps: usize,
) -> Result<Vec<crate::bench::matmul::Row>> {
    if kind != BackendKind::Cuda {
        return Err(Error::Config("matmul-kernels times CubeCL kernels: use --backend cuda".into()));
    }
    for name in only {
        crate::fused::set_matmul_kernel(Some(name)).map_err(Error::Config)?;
    }
    crate::fused::set_matmul_kernel(None).map_err(Error::Config)?;
    let problems = crate::bench::matmul::step_problems(rows, 768, 1536, 2 * 1536 + 2 * 128 + 24, 50288);
    let device = burn::backend::cuda::CudaDevice::new(0);
    println!("{:<26} {:<26} {:>9} {:>10} {:>9}", "kernel", "product", "TFLOP/s", "rel_l2", "first s");
    let report = |r: &crate::bench::matmul::Row| match (&r.tflops, &r.error) {
        (Some(t), _) => println!(
            "{:<26} {:<26} {t:>9.1} {:>10.2e} {:>9.2}",
            r.kernel,
            r.problem,
            r.rel_l2.unwrap_or(f64::NAN),
            r.first_call_s
        ),
        (None, e) => println!("{:<26} {:<26} unavailable: {}", r.kernel, r.problem, e.as_deref().unwrap_or("")),
    };
    Ok(crate::bench::matmul::probe::<cubecl::cuda::CudaRuntime>(&problems, only, reps, &device, report))
}

/// Without the `cuda` feature there is nothing to time.
#[cfg(not(feature = "cuda"))]
pub fn matmul_kernels(_: BackendKind, _: usize, _: &[String], _: usize) -> Result<Vec<serde_json::Value>> {
    Err(no_cuda())
}
