//! The run-time choices of the fused operations: which kernels run (every one has its
//! reference, and the flags that choose are `bench`'s and `train`'s), set once per process
//! before the first step.

static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns the fused forward/backward kernels of the autodiff backend on (the default) or off
/// (every operation then runs its op-by-op reference: the before/after comparison in one binary).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, std::sync::atomic::Ordering::SeqCst);
}

/// Whether the fused kernels are on.
pub fn enabled() -> bool {
    ENABLED.load(std::sync::atomic::Ordering::Relaxed)
}

static SSD_SCAN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns the single-node SSD scan with its hand-written backward on (the default) or off (the
/// scan differentiated op by op through Burn's operations, its score kernel fused:
/// `--ssd-op-by-op`). On backends with kernels the node runs the scan's own kernels
/// (`ssd_cube.rs`); on the H100 it trains the 130M-class step at batch 4 1.12x faster than op by
/// op, holding two thirds of the memory (docs/TRAINING_KERNELS.md). Backends without kernels
/// (NdArray) always differentiate the op-by-op scan.
pub fn set_ssd_scan(on: bool) {
    SSD_SCAN.store(on, std::sync::atomic::Ordering::SeqCst);
}

/// Whether the single-node SSD scan is on.
pub fn ssd_scan_enabled() -> bool {
    SSD_SCAN.load(std::sync::atomic::Ordering::Relaxed)
}

/// The kernel that runs the SSD scan's products (`kernels/ssd_product.rs`,
/// `kernels/ssd_product_blocked.rs`; `--ssd-products`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SsdProducts {
    /// f32 multiply-adds, 4 × 4 per thread, 64 × 64 tiles: the default, the fastest measured on
    /// the H100 so far, and the reference of the other two.
    Simple,
    /// f32 multiply-adds, 8 × 8 per thread, 128 × 64 tiles: the same sums in the same order
    /// with a quarter of the shared-memory loads per multiply-add; not yet measured on a GPU.
    Blocked,
    /// TF32 tensor cores (CUDA from sm_80; elsewhere the simple kernel): on the H100 slower than
    /// multiply-adds (docs/TRAINING_KERNELS.md).
    TensorCores,
}

impl SsdProducts {
    /// The kernel chosen by `--ssd-products` and the older `--ssd-tensor-cores`, which means
    /// `tensor-cores`.
    pub fn from_flags(products: SsdProducts, tensor_cores: bool) -> SsdProducts {
        if tensor_cores {
            SsdProducts::TensorCores
        } else {
            products
        }
    }
}

static SSD_PRODUCTS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(SsdProducts::Simple as u8);

/// Chooses the kernel of the SSD scan's products.
pub fn set_ssd_products(kind: SsdProducts) {
    SSD_PRODUCTS.store(kind as u8, std::sync::atomic::Ordering::SeqCst);
}

/// The kernel of the SSD scan's products.
pub fn ssd_products() -> SsdProducts {
    [SsdProducts::Simple, SsdProducts::Blocked, SsdProducts::TensorCores]
        .into_iter()
        .find(|k| *k as u8 == SSD_PRODUCTS.load(std::sync::atomic::Ordering::Relaxed))
        .unwrap_or(SsdProducts::Simple)
}

static SSD_KEEP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Keeps, from the SSD scan's forward, what its backward would otherwise compute again: the
/// states entering each chunk and the carried-in outputs ([`super::SsdKept`]: two tensors of batch ×
/// length × d_inner f32 per layer at d_state = chunk length), which saves two of the backward's
/// eleven products and the state passing (`--ssd-keep`; off by default until measured on a GPU).
pub fn set_ssd_keep(on: bool) {
    SSD_KEEP.store(on, std::sync::atomic::Ordering::SeqCst);
}

/// Whether the SSD scan's forward keeps its states for the backward.
pub fn ssd_keep_enabled() -> bool {
    SSD_KEEP.load(std::sync::atomic::Ordering::Relaxed)
}

static FLASH_ATTENTION: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Runs the teacher's attention through one flash-attention kernel (CubeCL's, on the backends
/// with kernels: `--flash-attention`) instead of op by op (the default until it is measured on
/// a GPU: [`super::FusedOps::causal_attention`]).
pub fn set_flash_attention(on: bool) {
    FLASH_ATTENTION.store(on, std::sync::atomic::Ordering::SeqCst);
}

/// Whether the teacher's attention runs through the flash-attention kernel.
pub fn flash_attention_enabled() -> bool {
    FLASH_ATTENTION.load(std::sync::atomic::Ordering::Relaxed)
}

static MATMUL_KERNEL: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Chooses the matmul kernel family of the projection, head and SSD products on CubeCL backends
/// (`matmul.rs`; `bimamba-train matmul-kernels` lists and times them); `None` leaves them to
/// Burn's own product (the default). An unknown name is refused with the list of known ones.
pub fn set_matmul_kernel(name: Option<&str>) -> Result<(), String> {
    let known = matmul_kernel_known(name)?;
    *MATMUL_KERNEL.lock().unwrap_or_else(|e| e.into_inner()) = known;
    Ok(())
}

/// `name` if it is a family this binary can launch.
fn matmul_kernel_known(name: Option<&str>) -> Result<Option<String>, String> {
    if let Some(n) = name {
        #[cfg(any(feature = "cuda", feature = "wgpu"))]
        if super::matmul::family(n).is_none() {
            let known: Vec<&str> = super::matmul::families().into_iter().map(|(k, _)| k).collect();
            return Err(format!("unknown matmul kernel `{n}` (one of: {})", known.join(", ")));
        }
        #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
        return Err(format!("matmul kernel `{n}`: this binary has no CubeCL backend (build with --features cuda)"));
    }
    Ok(name.map(str::to_string))
}

static F32_MATMUL_KERNEL: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Chooses the matmul kernel family of the f32 products on CubeCL backends (`None`, the default:
/// Burn's product, which on CUDA multiplies f32 inputs on TF32 tensor cores). `check-kernels`
/// takes `simple_unit` to compare the fused kernels with references multiplied in f32.
pub fn set_f32_matmul_kernel(name: Option<&str>) -> Result<(), String> {
    let known = matmul_kernel_known(name)?;
    *F32_MATMUL_KERNEL.lock().unwrap_or_else(|e| e.into_inner()) = known;
    Ok(())
}

/// The family of the f32 products, if one was chosen.
pub fn f32_matmul_kernel() -> Option<String> {
    F32_MATMUL_KERNEL.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The matmul family that CUDA runs when `--matmul-kernel` is not given: of CubeCL's families, the
/// one with the least product time per step at the 130M-class step's shapes on an H100
/// (docs/TRAINING_KERNELS.md, "Matrix-product kernels"). A GPU that cannot run it (it needs the
/// Hopper TMA) falls back to Burn's product, problem by problem.
pub const CUDA_DEFAULT_MATMUL: &str = "specialized_tma_mma";

/// The family a `--matmul-kernel` value means: `burn` is Burn's own product, none is the backend's
/// default ([`CUDA_DEFAULT_MATMUL`] on CUDA, Burn's product elsewhere).
pub fn matmul_kernel_for(flag: Option<&str>, cuda: bool) -> Option<&str> {
    match flag {
        Some("burn") => None,
        Some(name) => Some(name),
        None => cuda.then_some(CUDA_DEFAULT_MATMUL),
    }
}

/// The chosen matmul kernel family, if any.
pub fn matmul_kernel() -> Option<String> {
    MATMUL_KERNEL.lock().unwrap_or_else(|e| e.into_inner()).clone()
}
