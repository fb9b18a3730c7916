//! CPU kernels for Bi-Mamba (arXiv 2411.11843): the 1-bit packing spec, `y = sign(W) · x`,
//! dense f32 / bf16 / f16 matrix products and the 8-bit row-quantized ("q8") product of the
//! embedding / LM head, each with a portable scalar twin.
//!
//! Layout of the crate (data flows top to bottom):
//! - [`pack`]: the binarization and bit-packing spec (the on-disk and in-memory format).
//! - [`q8`]: the 8-bit per-row quantization spec of the embedding / LM head.
//! - [`scalar`]: single-threaded reference kernels, also the fallback on any CPU.
//! - [`act8`]: the opt-in int8-activation binary product (spec and scalar twin);
//!   `x86::avx512_vnni` and `x86::avx2_i8` are its fast paths.
//! - [`q8_act8`]: the q8 product with int8 activations (spec and scalar twin);
//!   `x86::avx512_vnni_q8` is its fast path.
//! - [`q8_panels`]: the same product over a q8 matrix stored in `vpdpbusd`'s operand order
//!   (layout, conversions, scalar twin); `x86::avx512_vnni_q8_panels` is its fast path.
//! - [`tmac`]: the same product by byte-table lookup (T-MAC style; tables, layout, scalar twin);
//!   `x86::avx512_tmac` is its fast path, [`act8_choice`] picks it or the VNNI kernel.
//! - [`ssm`] (the SSM recurrence, token by token) and [`ssd`] (its chunked matrix form for
//!   prefill); `x86::{ssm_bf16, ssm_prefill, ssd_chunk}` are their fast paths.
//! - [`lut`]: the f32 lookup tables that turn 4 sign bits into one lookup (x86 binary kernels).
//! - `x86::{avx512_lut, avx2_lut}` (binary), `x86::{avx512, avx2}` (dense), `aarch64::neon`:
//!   per-ISA single-threaded kernels, chosen at runtime, each with a scalar twin.
//! - this file: ISA dispatch ([`selected_isa`]) and the rayon-parallel entry points.
//! - `scratch`: per-thread buffers the entry points reuse for their temporaries (row-chunk
//!   outputs, quantized activations, lookup tables) instead of allocating them every call.
//! - [`bandwidth`]: a read-bandwidth probe, the denominator of every speed we report (ARCHITECTURE.md §7).
//!
//! # Shapes
//! Every product takes `x: [t, cols]` and writes `y: [t, rows]` (row-major, overwritten):
//! `y[k, i] = Σ_j W[i, j] · x[k, j]`, where `W` is either the sign matrix of a packed
//! `[rows, cols]` bit matrix, a dense `[rows, cols]` matrix, or `scales[i] · q[i, j]` (q8). Shape mismatches are caller bugs
//! and panic with the shapes in the message (loaders validate files before calling kernels).

pub mod act8;
pub mod act8_choice;
pub mod bandwidth;
pub mod isa;
pub mod lut;
pub mod pack;
pub mod q8;
pub mod q8_act8;
pub mod q8_panels;
pub mod scalar;
pub mod ssd;
pub mod ssm;
pub mod tmac;

#[cfg(target_arch = "aarch64")]
mod aarch64;
mod parallel;
mod scratch;
#[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(dead_code))]
mod tiling;
#[cfg(target_arch = "x86_64")]
mod x86;

use half::{bf16, f16};
use std::ops::Range;

pub use act8_choice::{act8_decode, set_act8_decode, Act8Decode};
pub use bandwidth::measure_read_bandwidth_gbs;
pub use isa::{isa_from_env, selected_isa, set_isa, Isa};
pub use scalar::DenseElem;

/// Panics unless the binary-product shapes agree (a caller bug, never user input).
pub(crate) fn check_binary_shapes(bits: &[u8], rows: usize, cols: usize, x: &[f32], t: usize, y: &[f32]) {
    assert_eq!(
        bits.len(),
        pack::packed_len(rows, cols),
        "binary kernel: {} packed bytes, expected [{rows} x {cols}] -> {rows} x {} bytes",
        bits.len(),
        pack::row_bytes(cols)
    );
    assert_eq!(x.len(), t * cols, "binary kernel: x has {} elements, expected [{t} x {cols}]", x.len());
    assert_eq!(y.len(), t * rows, "binary kernel: y has {} elements, expected [{t} x {rows}]", y.len());
}

/// Panics unless the dense-product shapes agree.
pub(crate) fn check_dense_shapes(w_len: usize, rows: usize, cols: usize, x: &[f32], t: usize, y: &[f32]) {
    assert_eq!(w_len, rows * cols, "dense kernel: w has {w_len} elements, expected [{rows} x {cols}]");
    assert_eq!(x.len(), t * cols, "dense kernel: x has {} elements, expected [{t} x {cols}]", x.len());
    assert_eq!(y.len(), t * rows, "dense kernel: y has {} elements, expected [{t} x {rows}]", y.len());
}

/// Panics unless the q8-product shapes agree.
pub(crate) fn check_q8_shapes(q: &[i8], scales: &[f32], rows: usize, cols: usize, x: &[f32], t: usize, y: &[f32]) {
    assert_eq!(scales.len(), rows, "q8 kernel: {} scales, expected one per row ({rows})", scales.len());
    check_dense_shapes(q.len(), rows, cols, x, t, y);
}

fn check_range(range: &Range<usize>, rows: usize, t: usize, y: &[f32]) {
    assert!(range.start <= range.end && range.end <= rows, "row range {range:?} outside 0..{rows}");
    assert_eq!(y.len(), t * range.len(), "y has {} elements, expected [{t} x {}]", y.len(), range.len());
}

/// Runs `f` with the data a binary kernel of `isa` derives from `x` once per call and shares
/// between all row chunks: for AVX-512 and AVX2 the lookup tables `[t, groups, 16]` (see [`lut`];
/// in this thread's reused buffer), otherwise nothing.
fn with_binary_tables<R>(isa: Isa, x: &[f32], cols: usize, t: usize, f: impl FnOnce(&[f32]) -> R) -> R {
    if matches!(isa, Isa::Avx512 | Isa::Avx2) && isa.is_supported() {
        return scratch::with_buffer(&scratch::LUT_TABLES, lut::tables_len(cols, t), f32::NAN, |tables| {
            lut::build_tables(x, cols, t, tables);
            f(tables)
        });
    }
    f(&[])
}

/// One ISA's binary kernel over `range` of output rows, `tables` from [`with_binary_tables`]. An
/// ISA the CPU does not support runs the scalar kernel.
#[allow(clippy::too_many_arguments)]
fn binary_range(
    isa: Isa,
    bits: &[u8],
    cols: usize,
    x: &[f32],
    t: usize,
    tables: &[f32],
    range: Range<usize>,
    y: &mut [f32],
) {
    let _ = tables;
    match isa {
        // SAFETY (all arms): each per-ISA kernel requires exactly what `is_supported` checks;
        // `tables` were built for this isa, x, cols and t.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if isa.is_supported() => unsafe { x86::avx512_lut::binary_rows(bits, cols, t, tables, range, y) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa.is_supported() => unsafe { x86::avx2_lut::binary_rows(bits, cols, t, tables, range, y) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon if isa.is_supported() => unsafe { aarch64::neon::binary_rows(bits, cols, x, t, range, y) },
        _ => scalar::binary_rows(bits, cols, x, t, range, y),
    }
}

/// Whether the int8-activation binary product has a SIMD kernel for `isa` on this CPU: AVX-512
/// with VNNI and VBMI (Ice Lake, Zen 4 and later) or AVX2; otherwise (NEON, scalar) it runs the
/// scalar twin.
pub fn act8_has_simd(isa: Isa) -> bool {
    act8_kernel(isa).is_some()
}

/// The int8-activation kernel family `isa` runs on this CPU, by name (`avx512-vnni`, `avx2`).
pub fn act8_kernel(isa: Isa) -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    if isa.is_supported() {
        return match isa {
            Isa::Avx512 if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vbmi") => {
                Some("avx512-vnni")
            }
            // An AVX-512 CPU without VNNI/VBMI has AVX2.
            Isa::Avx512 | Isa::Avx2 => Some("avx2"),
            _ => None,
        };
    }
    let _ = isa;
    None
}

/// From this many tokens on, the AVX512-VNNI int8 product unpacks each panel of sign bits once
/// and runs the register-blocked GEMM (`x86/avx512_vnni_gemm.rs`); below, the decode kernel
/// expands the bits per tile. Both return the scalar twin's bits.
pub const ACT8_GEMM_MIN_TOKENS: usize = 8;

/// One ISA's int8-activation binary kernel over `range` of output rows.
fn act8_range(isa: Isa, bits: &[u8], cols: usize, a: &act8::Act8, range: Range<usize>, y: &mut [f32]) {
    match act8_kernel(isa) {
        // SAFETY (both arms): `act8_kernel` names a kernel only after checking `is_supported` (AVX-512
        // F/BW/VL resp. AVX2) and, for the VNNI kernel, VNNI and VBMI.
        #[cfg(target_arch = "x86_64")]
        Some("avx512-vnni") if a.tokens() >= ACT8_GEMM_MIN_TOKENS => unsafe {
            x86::avx512_vnni_gemm::binary_rows(bits, cols, a, range, y)
        },
        #[cfg(target_arch = "x86_64")]
        Some("avx512-vnni") => unsafe { x86::avx512_vnni::binary_rows(bits, cols, a, range, y) },
        #[cfg(target_arch = "x86_64")]
        Some("avx2") => unsafe { x86::avx2_i8::binary_rows(bits, cols, a, range, y) },
        _ => act8::binary_rows_scalar(bits, cols, a, range, y),
    }
}

/// One ISA's dense kernel over `range` of output rows.
fn dense_range<E: SimdElem>(isa: Isa, w: &[E], cols: usize, x: &[f32], t: usize, range: Range<usize>, y: &mut [f32]) {
    E::dense_rows_isa(isa, w, cols, x, t, range, y)
}

/// Dense weight element types with per-ISA kernels: f32, bf16, f16, and i8 (the q8 codes).
pub trait SimdElem: DenseElem {
    /// `y: [t, range.len()] = x · W[range]ᵀ` with `isa`'s kernel (scalar if unsupported).
    #[doc(hidden)]
    fn dense_rows_isa(isa: Isa, w: &[Self], cols: usize, x: &[f32], t: usize, range: Range<usize>, y: &mut [f32]);
}

macro_rules! impl_simd_elem {
    ($ty:ty, $kernel:ident) => {
        impl SimdElem for $ty {
            fn dense_rows_isa(
                isa: Isa,
                w: &[Self],
                cols: usize,
                x: &[f32],
                t: usize,
                range: Range<usize>,
                y: &mut [f32],
            ) {
                match isa {
                    // SAFETY (all arms): each per-ISA kernel requires exactly what
                    // `is_supported` checks.
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 if isa.is_supported() => unsafe { x86::avx512::$kernel(w, cols, x, t, range, y) },
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 if isa.is_supported() => unsafe { x86::avx2::$kernel(w, cols, x, t, range, y) },
                    #[cfg(target_arch = "aarch64")]
                    Isa::Neon if isa.is_supported() => unsafe { aarch64::neon::$kernel(w, cols, x, t, range, y) },
                    _ => scalar::dense_rows(w, cols, x, t, range, y),
                }
            }
        }
    };
}

impl_simd_elem!(f32, dense_rows_f32);
impl_simd_elem!(bf16, dense_rows_bf16);
impl_simd_elem!(f16, dense_rows_f16);
impl_simd_elem!(i8, dense_rows_i8);

/// One ISA's q8 kernel over `range` of output rows: the i8 dense kernel (codes widened exactly
/// to f32 in registers), then each output times its row's scale, as `scalar::q8_rows` does.
#[allow(clippy::too_many_arguments)]
fn q8_range(isa: Isa, q: &[i8], scales: &[f32], cols: usize, x: &[f32], t: usize, range: Range<usize>, y: &mut [f32]) {
    let nr = range.len();
    let s = &scales[range.clone()];
    dense_range(isa, q, cols, x, t, range, y);
    for yk in y.chunks_exact_mut(nr.max(1)).take(t) {
        for (v, sc) in yk.iter_mut().zip(s) {
            *v *= sc;
        }
    }
}

/// Single-threaded binary kernel of one ISA over output rows `range` of a packed `[rows, cols]`
/// matrix: `y: [t, range.len()]`, `y[k, i - range.start] = Σ_j s_ij · x[k, j]`. An ISA this CPU
/// does not support falls back to the scalar kernel. For tests and benchmarks.
#[allow(clippy::too_many_arguments)]
pub fn binary_gemm_with(
    isa: Isa,
    bits: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    t: usize,
    range: Range<usize>,
    y: &mut [f32],
) {
    assert_eq!(bits.len(), pack::packed_len(rows, cols), "binary kernel: packed size does not match [{rows} x {cols}]");
    assert_eq!(x.len(), t * cols, "binary kernel: x has {} elements, expected [{t} x {cols}]", x.len());
    check_range(&range, rows, t, y);
    with_binary_tables(isa, x, cols, t, |tables| binary_range(isa, bits, cols, x, t, tables, range, y));
}

/// Single-threaded dense kernel of one ISA over output rows `range` (see [`binary_gemm_with`]).
#[allow(clippy::too_many_arguments)]
pub fn dense_gemm_with<E: SimdElem>(
    isa: Isa,
    w: &[E],
    rows: usize,
    cols: usize,
    x: &[f32],
    t: usize,
    range: Range<usize>,
    y: &mut [f32],
) {
    assert_eq!(w.len(), rows * cols, "dense kernel: w has {} elements, expected [{rows} x {cols}]", w.len());
    assert_eq!(x.len(), t * cols, "dense kernel: x has {} elements, expected [{t} x {cols}]", x.len());
    check_range(&range, rows, t, y);
    dense_range(isa, w, cols, x, t, range, y);
}

/// Single-threaded q8 kernel of one ISA over output rows `range` (see [`binary_gemm_with`]).
#[allow(clippy::too_many_arguments)]
pub fn q8_gemm_with(
    isa: Isa,
    q: &[i8],
    scales: &[f32],
    rows: usize,
    cols: usize,
    x: &[f32],
    t: usize,
    range: Range<usize>,
    y: &mut [f32],
) {
    assert_eq!(q.len(), rows * cols, "q8 kernel: q has {} elements, expected [{rows} x {cols}]", q.len());
    assert_eq!(scales.len(), rows, "q8 kernel: {} scales, expected one per row ({rows})", scales.len());
    assert_eq!(x.len(), t * cols, "q8 kernel: x has {} elements, expected [{t} x {cols}]", x.len());
    check_range(&range, rows, t, y);
    q8_range(isa, q, scales, cols, x, t, range, y);
}

/// Single-threaded int8-activation binary kernel of one ISA over output rows `range` (see
/// [`binary_gemm_with`] and [`act8`]); the activations are quantized here. For tests and
/// benchmarks.
#[allow(clippy::too_many_arguments)]
pub fn binary_gemm_i8_with(
    isa: Isa,
    bits: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    t: usize,
    range: Range<usize>,
    y: &mut [f32],
) {
    assert_eq!(bits.len(), pack::packed_len(rows, cols), "act8 kernel: packed size does not match [{rows} x {cols}]");
    check_range(&range, rows, t, y);
    let a = act8::quantize(x, cols, t);
    act8_range(isa, bits, cols, &a, range, y);
}

/// Single-threaded table-lookup int8-activation kernel ([`tmac`]) over output rows `range`:
/// `x86::avx512_tmac` where the CPU has AVX-512 VNNI + VBMI, else its scalar twin. Same contract
/// and bits as [`binary_gemm_i8_with`]. For tests and benchmarks.
#[allow(clippy::too_many_arguments)]
pub fn binary_gemm_i8_tmac_with(
    bits: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    t: usize,
    range: Range<usize>,
    y: &mut [f32],
) {
    assert_eq!(bits.len(), pack::packed_len(rows, cols), "tmac kernel: packed size does not match [{rows} x {cols}]");
    check_range(&range, rows, t, y);
    let a = act8::quantize(x, cols, t);
    let tab = tmac::build_tables(&a);
    tmac_range(bits, cols, &a, &tab, range, y);
}

/// The table-lookup kernel over `range`: the AVX-512 one where supported, else the scalar twin.
fn tmac_range(bits: &[u8], cols: usize, a: &act8::Act8, tab: &tmac::Tables, range: Range<usize>, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if x86::avx512_tmac::is_supported() {
        // SAFETY: `is_supported` checked every feature the kernel is compiled for.
        return unsafe { x86::avx512_tmac::binary_rows(bits, cols, a, tab, range, y) };
    }
    tmac::binary_rows_scalar(bits, cols, a, tab, range, y)
}

/// `y[k, i] ≈ Σ_j s_ij · x[k, j]` with `x` quantized to int8 per token ([`act8`]): the opt-in
/// `--binary-act int8` product. Same shapes as [`binary_gemm`]; dispatches on [`selected_isa`]
/// (AVX512-VNNI, AVX2, else the scalar twin) and splits rows over the rayon pool.
pub fn binary_gemm_i8(bits: &[u8], rows: usize, cols: usize, x: &[f32], t: usize, y: &mut [f32]) {
    check_binary_shapes(bits, rows, cols, x, t, y);
    let isa = selected_isa();
    scratch::with_act8(x, cols, t, |a| {
        if uses_tmac(isa, rows, cols, t) {
            // The tables are built once per call and shared by every row chunk.
            let tab = tmac::build_tables(a);
            parallel::for_row_chunks(rows, cols, t, y, |range, yc| tmac_range(bits, cols, a, &tab, range, yc));
            return;
        }
        parallel::for_row_chunks(rows, cols, t, y, |range, yc| act8_range(isa, bits, cols, a, range, yc));
    })
}

/// Whether the table-lookup kernel ([`tmac`]) beats the AVX512-VNNI decode kernel on a
/// `[rows, cols]` product: at no Bi-Mamba shape, measured (KERNELS.md, "The table-lookup int8
/// kernel"): it ties at best with the weights streamed from memory and loses on wide rows. A
/// per-shape rule goes here if a CPU or layout changes that.
fn tmac_wins(rows: usize, cols: usize) -> bool {
    let _ = (rows, cols);
    false
}

/// Whether [`binary_gemm_i8`] runs the table-lookup kernel: only where the VNNI decode kernel
/// would run (AVX-512 selected, VNNI + VBMI, fewer than [`ACT8_GEMM_MIN_TOKENS`] tokens), then as
/// [`act8_decode`] says.
fn uses_tmac(isa: Isa, rows: usize, cols: usize, t: usize) -> bool {
    if t >= ACT8_GEMM_MIN_TOKENS || act8_kernel(isa) != Some("avx512-vnni") {
        return false;
    }
    match act8_decode() {
        Act8Decode::Vnni => false,
        Act8Decode::Tmac => true,
        Act8Decode::Auto => tmac_wins(rows, cols),
    }
}

/// The int8-activation kernel [`binary_gemm_i8`] runs for a `[rows, cols]` product of `t` tokens
/// under `isa`, by name: `avx512-tmac`, `avx512-vnni` (decode) / `avx512-vnni-gemm` (from
/// [`ACT8_GEMM_MIN_TOKENS`] tokens), `avx2`, or `scalar`.
pub fn act8_kernel_for(isa: Isa, rows: usize, cols: usize, t: usize) -> &'static str {
    match act8_kernel(isa) {
        Some("avx512-vnni") if uses_tmac(isa, rows, cols, t) => "avx512-tmac",
        Some("avx512-vnni") if t >= ACT8_GEMM_MIN_TOKENS => "avx512-vnni-gemm",
        Some(name) => name,
        None => "scalar",
    }
}

/// `y[k, i] = Σ_j s_ij · x[k, j]` for a packed sign matrix `bits: [rows, cols]`, `x: [t, cols]`,
/// `y: [t, rows]`. Dispatches on [`selected_isa`] and splits rows over the rayon pool.
pub fn binary_gemm(bits: &[u8], rows: usize, cols: usize, x: &[f32], t: usize, y: &mut [f32]) {
    check_binary_shapes(bits, rows, cols, x, t, y);
    let isa = selected_isa();
    with_binary_tables(isa, x, cols, t, |tables| {
        parallel::for_row_chunks(rows, cols, t, y, |range, yc| binary_range(isa, bits, cols, x, t, tables, range, yc))
    });
}

/// [`binary_gemm`] with `t = 1`: `x: [cols]`, `y: [rows]`.
pub fn binary_gemv(bits: &[u8], rows: usize, cols: usize, x: &[f32], y: &mut [f32]) {
    binary_gemm(bits, rows, cols, x, 1, y);
}

fn dense_gemm<E: SimdElem>(w: &[E], rows: usize, cols: usize, x: &[f32], t: usize, y: &mut [f32]) {
    check_dense_shapes(w.len(), rows, cols, x, t, y);
    let isa = selected_isa();
    parallel::for_row_chunks(rows, cols, t, y, |range, yc| dense_range(isa, w, cols, x, t, range, yc));
}

/// `y = x · Wᵀ` for dense f32 `w: [rows, cols]`, `x: [t, cols]`, `y: [t, rows]`.
pub fn dense_gemm_f32(w: &[f32], rows: usize, cols: usize, x: &[f32], t: usize, y: &mut [f32]) {
    dense_gemm(w, rows, cols, x, t, y);
}

/// `y = x · Wᵀ` for bf16 weights (widened to f32 in registers; activations stay f32).
pub fn dense_gemm_bf16(w: &[bf16], rows: usize, cols: usize, x: &[f32], t: usize, y: &mut [f32]) {
    dense_gemm(w, rows, cols, x, t, y);
}

/// `y = x · Wᵀ` for f16 weights (widened to f32 in registers; activations stay f32).
pub fn dense_gemm_f16(w: &[f16], rows: usize, cols: usize, x: &[f32], t: usize, y: &mut [f32]) {
    dense_gemm(w, rows, cols, x, t, y);
}

/// `y[k, i] = scales[i] · Σ_j q_ij · x[k, j]` for q8 codes `q: [rows, cols]` with per-row
/// `scales: [rows]` (see [`q8`]), `x: [t, cols]` in f32, `y: [t, rows]`. The LM head of a q8
/// model. Dispatches on [`selected_isa`] and splits rows over the rayon pool.
pub fn q8_gemm(q: &[i8], scales: &[f32], rows: usize, cols: usize, x: &[f32], t: usize, y: &mut [f32]) {
    check_q8_shapes(q, scales, rows, cols, x, t, y);
    let isa = selected_isa();
    parallel::for_row_chunks(rows, cols, t, y, |range, yc| q8_range(isa, q, scales, cols, x, t, range, yc));
}

/// The kernel the q8 product with int8 activations ([`q8_act8`]) runs under `isa` on this CPU, by
/// name: `avx512-vnni` (AVX-512 F/BW/VL + VNNI), else `None` (the scalar twin, slower than the
/// f32-activation [`q8_gemm`]).
pub fn q8_act8_kernel(isa: Isa) -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && isa.is_supported() && is_x86_feature_detected!("avx512vnni") {
        return Some("avx512-vnni");
    }
    let _ = isa;
    None
}

/// Whether the q8 product with int8 activations has a SIMD kernel for `isa` on this CPU (where
/// the engine uses it for a q8 head under `--binary-act int8`).
pub fn q8_act8_has_simd(isa: Isa) -> bool {
    q8_act8_kernel(isa).is_some()
}

/// Data a q8 int8-activation product derives from `x` once per call and shares between all row
/// chunks: the quantized tokens and, for the AVX-512 kernel, their panels.
struct Q8Act8Prep {
    a: act8::Act8,
    #[cfg(target_arch = "x86_64")]
    panels: Option<x86::avx512_vnni_q8::Panels>,
}

fn q8_act8_prep(isa: Isa, x: &[f32], cols: usize, t: usize) -> Q8Act8Prep {
    let a = act8::quantize(x, cols, t);
    #[cfg(target_arch = "x86_64")]
    let panels = q8_act8_kernel(isa).map(|_| x86::avx512_vnni_q8::Panels::new(&a));
    let _ = isa;
    Q8Act8Prep {
        a,
        #[cfg(target_arch = "x86_64")]
        panels,
    }
}

/// One ISA's q8 int8-activation kernel over `range` of output rows.
#[allow(clippy::too_many_arguments)]
fn q8_act8_range(
    q: &[i8],
    scales: &[f32],
    row_sums: &[i32],
    cols: usize,
    prep: &Q8Act8Prep,
    range: Range<usize>,
    y: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if let Some(p) = &prep.panels {
        // SAFETY: panels exist only where `q8_act8_kernel` found AVX-512 F/BW/VL and VNNI.
        return unsafe { x86::avx512_vnni_q8::q8_rows(q, scales, row_sums, cols, &prep.a, p, range, y) };
    }
    q8_act8::rows_scalar(q, scales, row_sums, cols, &prep.a, range, y)
}

/// Single-threaded q8 kernel with int8 activations of one ISA over output rows `range` (see
/// [`binary_gemm_with`] and [`q8_act8`]); the activations are quantized here, `row_sums` is
/// [`q8_act8::row_sums`] of `q`. An ISA without the kernel runs the scalar twin. For tests and
/// benchmarks.
#[allow(clippy::too_many_arguments)]
pub fn q8_gemm_i8_with(
    isa: Isa,
    q: &[i8],
    scales: &[f32],
    row_sums: &[i32],
    rows: usize,
    cols: usize,
    x: &[f32],
    t: usize,
    range: Range<usize>,
    y: &mut [f32],
) {
    assert_eq!(q.len(), rows * cols, "q8 kernel: q has {} elements, expected [{rows} x {cols}]", q.len());
    assert_eq!(row_sums.len(), rows, "q8 kernel: {} row sums, expected {rows}", row_sums.len());
    check_range(&range, rows, t, y);
    let prep = q8_act8_prep(isa, x, cols, t);
    q8_act8_range(q, scales, row_sums, cols, &prep, range, y);
}

/// `y[k, v] ≈ scales[v] · Σ_d q[v, d] · x[k, d]` with `x` quantized to int8 per token ([`act8`]'s
/// rule; the product and its distance to [`q8_gemm`] in [`q8_act8`]). `row_sums` is
/// [`q8_act8::row_sums`] of `q`, computed once per matrix. Same shapes as [`q8_gemm`];
/// dispatches on [`selected_isa`] (AVX512-VNNI, else the scalar twin) and splits rows over the
/// rayon pool.
#[allow(clippy::too_many_arguments)]
pub fn q8_gemm_i8(
    q: &[i8],
    scales: &[f32],
    row_sums: &[i32],
    rows: usize,
    cols: usize,
    x: &[f32],
    t: usize,
    y: &mut [f32],
) {
    check_q8_shapes(q, scales, rows, cols, x, t, y);
    assert_eq!(row_sums.len(), rows, "q8 kernel: {} row sums, expected {rows}", row_sums.len());
    let prep = q8_act8_prep(selected_isa(), x, cols, t);
    parallel::for_row_chunks(rows, cols, t, y, |range, yc| q8_act8_range(q, scales, row_sums, cols, &prep, range, yc));
}

/// Data a q8 int8-activation product over panels derives from `x` once per call and shares
/// between all row chunks: the quantized tokens and, for the AVX-512 kernel, their unsigned
/// operand.
struct Q8PanelsPrep {
    a: act8::Act8,
    #[cfg(target_arch = "x86_64")]
    xu: Option<Vec<u8>>,
}

fn q8_panels_prep(isa: Isa, x: &[f32], cols: usize, t: usize) -> Q8PanelsPrep {
    let a = act8::quantize(x, cols, t);
    #[cfg(target_arch = "x86_64")]
    let xu = q8_act8_kernel(isa).map(|_| x86::avx512_vnni_q8_panels::unsigned_activations(&a));
    let _ = isa;
    Q8PanelsPrep {
        a,
        #[cfg(target_arch = "x86_64")]
        xu,
    }
}

/// One ISA's q8 int8-activation kernel over panels, over `range` of output rows.
#[allow(clippy::too_many_arguments)]
fn q8_panels_range(
    q: &[i8],
    scales: &[f32],
    row_sums: &[i32],
    rows: usize,
    cols: usize,
    prep: &Q8PanelsPrep,
    range: Range<usize>,
    y: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if let Some(xu) = &prep.xu {
        // SAFETY: `xu` exists only where `q8_act8_kernel` found AVX-512 F/BW/VL and VNNI.
        return unsafe { x86::avx512_vnni_q8_panels::q8_rows(q, scales, row_sums, rows, cols, &prep.a, xu, range, y) };
    }
    q8_panels::rows_scalar(q, scales, row_sums, rows, cols, &prep.a, range, y)
}

/// Panics unless a q8 matrix in panels and its product agree in shape (caller bugs).
fn check_q8_panels(q: &[i8], scales: &[f32], rows: usize, cols: usize, x: &[f32], t: usize) {
    assert!(q8_panels::supports(cols), "q8 panels kernel: {cols} columns cannot be stored in panels");
    assert_eq!(q.len(), rows * cols, "q8 panels kernel: q has {} elements, expected [{rows} x {cols}]", q.len());
    assert_eq!(scales.len(), rows, "q8 panels kernel: {} scales, expected one per row ({rows})", scales.len());
    assert_eq!(x.len(), t * cols, "q8 panels kernel: x has {} elements, expected [{t} x {cols}]", x.len());
}

/// Single-threaded q8 kernel with int8 activations over a matrix in panels ([`q8_panels`]) of
/// one ISA, over output rows `range` (see [`q8_gemm_i8_with`]: same arguments and bits, `q` in
/// panels). An ISA without the kernel runs the scalar twin. For tests and benchmarks.
#[allow(clippy::too_many_arguments)]
pub fn q8_gemm_i8_panels_with(
    isa: Isa,
    q: &[i8],
    scales: &[f32],
    row_sums: &[i32],
    rows: usize,
    cols: usize,
    x: &[f32],
    t: usize,
    range: Range<usize>,
    y: &mut [f32],
) {
    check_q8_panels(q, scales, rows, cols, x, t);
    assert_eq!(row_sums.len(), rows, "q8 panels kernel: {} row sums, expected {rows}", row_sums.len());
    check_range(&range, rows, t, y);
    let prep = q8_panels_prep(isa, x, cols, t);
    q8_panels_range(q, scales, row_sums, rows, cols, &prep, range, y);
}

/// [`q8_gemm_i8`] over a matrix stored in panels ([`q8_panels`]): the same product and bits,
/// `q` in panels (`q8_panels::supports(cols)`), `row_sums` as for the row-major matrix.
/// Dispatches on [`selected_isa`] (AVX512-VNNI, else the scalar twin) and splits rows over the
/// rayon pool.
#[allow(clippy::too_many_arguments)]
pub fn q8_gemm_i8_panels(
    q: &[i8],
    scales: &[f32],
    row_sums: &[i32],
    rows: usize,
    cols: usize,
    x: &[f32],
    t: usize,
    y: &mut [f32],
) {
    check_q8_panels(q, scales, rows, cols, x, t);
    assert_eq!(row_sums.len(), rows, "q8 panels kernel: {} row sums, expected {rows}", row_sums.len());
    assert_eq!(y.len(), t * rows, "q8 panels kernel: y has {} elements, expected [{t} x {rows}]", y.len());
    let prep = q8_panels_prep(selected_isa(), x, cols, t);
    parallel::for_row_chunks(rows, cols, t, y, |range, yc| {
        q8_panels_range(q, scales, row_sums, rows, cols, &prep, range, yc)
    });
}

/// [`q8_gemm`] (f32 activations) over a matrix stored in panels: each row chunk is copied back
/// to row order and runs [`q8_gemm`]'s kernel, so the bits are [`q8_gemm`]'s. A fallback for a
/// matrix arranged for the int8 kernel meeting f32 activations; the engine arranges a q8 head in
/// rows when it runs f32 activations.
pub fn q8_gemm_panels(q: &[i8], scales: &[f32], rows: usize, cols: usize, x: &[f32], t: usize, y: &mut [f32]) {
    check_q8_panels(q, scales, rows, cols, x, t);
    assert_eq!(y.len(), t * rows, "q8 panels kernel: y has {} elements, expected [{t} x {rows}]", y.len());
    let isa = selected_isa();
    parallel::for_row_chunks(rows, cols, t, y, |range, yc| {
        let mut codes = vec![0i8; range.len() * cols];
        q8_panels::rows_into(q, rows, cols, range.clone(), &mut codes);
        q8_range(isa, &codes, &scales[range.clone()], cols, x, t, 0..range.len(), yc);
    });
}
