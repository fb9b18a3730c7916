//! Fused training operations: one kernel where the op-by-op formulation launches many.
//!
//! [`FusedOps`] is a backend extension (Burn's route for custom kernels). Every method has a
//! default body written with plain tensor operations: that body is the reference, and it is what
//! the CPU backend (NdArray) runs. The CUDA backend overrides the methods with CubeCL kernels
//! (`cube.rs`); `bimamba-train check-kernels --backend cuda` compares the two on the GPU, and
//! `tests/kernels.rs` on the CPU through the WGPU backend and a software Vulkan driver.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor};

#[cfg(any(feature = "cuda", feature = "wgpu"))]
mod attention_cube;
mod autodiff;
pub mod check;
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub mod cube;
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub mod kernels;
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub mod matmul;
#[cfg(any(feature = "cuda", feature = "wgpu"))]
mod optim_cube;
pub mod reference;
#[cfg(any(feature = "cuda", feature = "wgpu"))]
mod ssd_cube;
mod switches;

pub use switches::*;

/// What the SSD scan's forward can keep for its backward ([`FusedOps::ssd_scan_keeping`]).
#[derive(Clone, Debug)]
pub struct SsdKept<B: Backend> {
    /// The states entering each chunk, [b, chunks, H, P, N].
    pub s_in: Tensor<B, 5>,
    /// The outputs carried in by those states, exp(Λ_l) · C_l · S_inᵀ, [b, chunks, H, T, P].
    pub yoff: Tensor<B, 5>,
}

/// What a device allocator holds ([`FusedOps::device_memory`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Bytes of the live tensors.
    pub in_use: u64,
    /// Bytes the allocator has taken from the device (live tensors, padding, free pages).
    pub reserved: u64,
    /// The device's memory, where the runtime says (CUDA).
    pub capacity: Option<u64>,
}

/// The scalars of one AdamW update (torch's `AdamW` formulas, decoupled decay).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep {
    /// Learning rate of this step.
    pub lr: f64,
    /// Multiplier applied to the parameter before the update: 1 − lr·wd (1 without decay).
    pub decay: f64,
    /// Adam β₁.
    pub beta1: f64,
    /// Adam β₂.
    pub beta2: f64,
    /// Adam ε.
    pub eps: f64,
    /// Bias correction of the first moment, 1 − β₁ᵗ.
    pub bias1: f64,
    /// Bias correction of the second moment, 1 − β₂ᵗ.
    pub bias2: f64,
    /// Factor applied to the gradient first (global-norm clipping).
    pub grad_scale: f64,
}

/// One parameter of a multi-tensor AdamW update ([`FusedOps::adamw_update_many`]).
pub struct AdamParam<B: Backend> {
    /// The flattened parameter, its gradient and its moments: [n] each.
    pub p: Tensor<B, 1>,
    pub g: Tensor<B, 1>,
    pub m: Tensor<B, 1>,
    pub v: Tensor<B, 1>,
    /// Its decay multiplier, 1 − lr·wd (1 without decay); replaces [`AdamStep::decay`].
    pub decay: f64,
}

/// Backend operations that the trainer runs fused where the backend has a kernel for them.
pub trait FusedOps: Backend {
    /// Whether the methods below run kernels of their own (else the reference bodies). The
    /// autodiff wrapper uses it: over a backend with kernels it records one custom operation with
    /// a hand-written backward; over one without, it differentiates the reference body.
    const KERNELS: bool = false;

    /// a · b, batched over the leading dimensions (the same in both). On CubeCL backends with a
    /// family chosen by [`set_matmul_kernel`], that family's kernel; else Burn's product, which is
    /// the reference.
    ///
    /// # Shapes
    /// - a: [..., m, k], b: [..., k, n]; output: [..., m, n]
    fn matmul<const D: usize>(a: Tensor<Self, D>, b: Tensor<Self, D>) -> Tensor<Self, D> {
        a.matmul(b)
    }

    /// The CUDA device address of a contiguous tensor's memory, once every queued kernel has run
    /// (data-parallel gradients summed in place by NCCL); `None` where it is not in CUDA memory.
    fn cuda_address(_t: &Tensor<Self, 1>) -> Option<u64> {
        None
    }

    /// The device allocator's memory once every queued kernel has run; `None` on backends
    /// without one (NdArray).
    fn device_memory(_device: &Self::Device) -> Option<DeviceMemory> {
        None
    }

    /// Hands the allocator's free pages back, so that [`FusedOps::device_memory`] measures what
    /// the next work needs rather than what earlier work left reserved.
    fn release_free_memory(_device: &Self::Device) {}

    /// One AdamW update of a flattened parameter: returns (parameter, m, v).
    ///
    /// ```text
    /// g ← s·g;  m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²
    /// p ← p·decay − lr · (m / bias1) / (√(v / bias2) + ε)
    /// ```
    ///
    /// # Shapes
    /// - p, g, m, v: [n]; outputs: [n] each
    fn adamw_update(
        p: Tensor<Self, 1>,
        g: Tensor<Self, 1>,
        m: Tensor<Self, 1>,
        v: Tensor<Self, 1>,
        s: &AdamStep,
    ) -> (Tensor<Self, 1>, Tensor<Self, 1>, Tensor<Self, 1>) {
        reference::adamw_update(p, g, m, v, s)
    }

    /// [`FusedOps::adamw_update`] on several parameters, each with its own decay: (parameter, m,
    /// v) of each, in order. On CubeCL backends a few launches for all of them.
    #[allow(clippy::type_complexity)]
    fn adamw_update_many(
        params: Vec<AdamParam<Self>>,
        s: &AdamStep,
    ) -> Vec<(Tensor<Self, 1>, Tensor<Self, 1>, Tensor<Self, 1>)> {
        params.into_iter().map(|q| Self::adamw_update(q.p, q.g, q.m, q.v, &AdamStep { decay: q.decay, ..*s })).collect()
    }

    /// Causal attention of a whole sequence, softmax(q·kᵀ/√hd, keys j ≤ query i)·v per head, in
    /// one flash-attention kernel (no [b, heads, L, L] scores in memory), q, k and v cast to
    /// `dtype` and the output cast back; for frozen models (no gradient). `None` where the backend
    /// has no such kernel or its kernel refuses the problem: the caller then runs its op-by-op
    /// reference (`crate::llama::attention_reference`).
    ///
    /// # Shapes
    /// - q, k, v: [b, heads, L, hd] (k and v repeated to the query heads); output: as q
    fn causal_attention(
        _q: Tensor<Self, 4>,
        _k: Tensor<Self, 4>,
        _v: Tensor<Self, 4>,
        _dtype: Option<DType>,
    ) -> Option<Tensor<Self, 4>> {
        None
    }

    /// Σ x² over every element of every tensor, as a one-element tensor (the squared global
    /// gradient norm).
    ///
    /// # Shapes
    /// - xs: any number of [nᵢ]; output: [1]
    fn sum_squares(xs: &[Tensor<Self, 1>], device: &Self::Device) -> Tensor<Self, 1> {
        reference::sum_squares(xs, device)
    }

    /// Σ over rows: out[n] = Σ_r x[r, n]. The gradient of a parameter broadcast over every
    /// position; on CubeCL backends a banded kernel (`kernels/reduce.rs`) where Burn's own
    /// reduction over the rows runs one thread per column.
    ///
    /// # Shapes
    /// - x: [R, N]; output: [N]
    fn col_sum(x: Tensor<Self, 2>) -> Tensor<Self, 1> {
        let n = x.dims()[1];
        x.sum_dim(0).reshape([n])
    }

    /// w on each of `rows` rows (a view where the backend has one). On the autodiff backend over
    /// a backend with kernels, one node whose gradient is [`FusedOps::col_sum`] of the output's;
    /// a parameter broadcast through it is reduced in one kernel, where the differentiation of a
    /// broadcast product reduces dimension by dimension through Burn's reduction.
    ///
    /// # Shapes
    /// - w: [N]; output: [rows, N]
    fn expand_rows(w: Tensor<Self, 1>, rows: usize) -> Tensor<Self, 2> {
        let n = w.dims()[0];
        w.reshape([1, n]).expand([rows, n])
    }

    /// Next-token cross-entropy of each row: lse(z_r) − z_r[t_r], in f32 whatever the logits'
    /// dtype (bf16 logits are read as they are: no f32 copy of the batch × vocabulary matrix).
    ///
    /// # Shapes
    /// - logits: [R, V]; targets: [R] (ids < V); output: [R]
    fn ce_rows(logits: Tensor<Self, 2>, targets: Tensor<Self, 1, Int>) -> Tensor<Self, 1> {
        reference::ce_rows(logits, targets)
    }

    /// The gradient of `Σ_r g_r · ce_rows(z)_r` with respect to z: g_r · (softmax(z_r) − onehot(t_r)),
    /// in the logits' dtype.
    ///
    /// # Shapes
    /// - logits: [R, V]; targets, grad: [R]; output: [R, V]
    fn ce_rows_backward(
        logits: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
        grad: Tensor<Self, 1>,
    ) -> Tensor<Self, 2> {
        reference::ce_rows_backward(logits, targets, grad)
    }

    /// Soft-target cross-entropy of each row at temperature T: T² · Σ_v −p_v log q_v with
    /// p = softmax(teacher/T) over the teacher's Vt ≤ V columns and q = softmax(student/T) over
    /// all V columns; equal to T² · (lse(z/T) − Σ_v p_v z_v / T).
    ///
    /// # Shapes
    /// - student: [R, V]; teacher: [R, Vt]; output: [R]
    fn soft_ce_rows(student: Tensor<Self, 2>, teacher: Tensor<Self, 2>, temperature: f64) -> Tensor<Self, 1> {
        reference::soft_ce_rows(student, teacher, temperature)
    }

    /// The gradient of `Σ_r g_r · soft_ce_rows(z)_r` with respect to the student logits:
    /// g_r · T · (q − p) (p is 0 beyond the teacher's columns), in the student's dtype.
    ///
    /// # Shapes
    /// - student: [R, V]; teacher: [R, Vt]; grad: [R]; output: [R, V]
    fn soft_ce_rows_backward(
        student: Tensor<Self, 2>,
        teacher: Tensor<Self, 2>,
        temperature: f64,
        grad: Tensor<Self, 1>,
    ) -> Tensor<Self, 2> {
        reference::soft_ce_rows_backward(student, teacher, temperature, grad)
    }

    /// FBI-Linear's effective weight W̃ = α ⊙ sign(W) + β (sign(±0) = +1), written once in `dtype`
    /// (the product's dtype: bf16 under mixed precision). The derivative with respect to W is
    /// the identity (straight-through estimator).
    ///
    /// # Shapes
    /// - w: [out, in]; alpha, beta: [1, in] (column scales) or [out, 1] (row scales);
    ///   output: [out, in]
    fn fbi_weight(w: Tensor<Self, 2>, alpha: Tensor<Self, 2>, beta: Tensor<Self, 2>, dtype: DType) -> Tensor<Self, 2> {
        reference::fbi_weight(w, alpha, beta, dtype)
    }

    /// Gradients of `Σ g ⊙ fbi_weight(w, α, β)`: (g ⊙ α, Σ g ⊙ sign(W), Σ g), the sums over
    /// the axis the scales broadcast along; `g` may be in the product's dtype.
    ///
    /// # Shapes
    /// - w: [out, in]; alpha: as in [`FusedOps::fbi_weight`]; g: [out, in];
    ///   outputs: [out, in], alpha's shape, alpha's shape
    fn fbi_weight_backward(
        w: Tensor<Self, 2>,
        alpha: Tensor<Self, 2>,
        g: Tensor<Self, 2>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>, Tensor<Self, 2>) {
        reference::fbi_weight_backward(w, alpha, g)
    }

    /// The SSD's intra-chunk score matrices: scores[h, l, s] = exp(Λ_l − Λ_s) · CB[g(h), l, s] for
    /// s ≤ l and 0 above the diagonal (Λ: the chunk's cumulative sums of dt·A, non-increasing;
    /// CB = C·Bᵀ per group, shared by the group's heads).
    ///
    /// # Shapes
    /// - acs: [b, c, H, T]; cb: [b, c, G, T, T]; output: [b, c, H, T, T]
    fn ssd_decay_scores(acs: Tensor<Self, 4>, cb: Tensor<Self, 5>) -> Tensor<Self, 5> {
        reference::ssd_decay_scores(acs, cb)
    }

    /// Gradients of `Σ gs ⊙ ssd_decay_scores(acs, cb)`: (g_acs, g_cb).
    ///
    /// # Shapes
    /// - as [`FusedOps::ssd_decay_scores`], gs: [b, c, H, T, T]
    fn ssd_decay_scores_backward(
        acs: Tensor<Self, 4>,
        cb: Tensor<Self, 5>,
        gs: Tensor<Self, 5>,
    ) -> (Tensor<Self, 4>, Tensor<Self, 5>) {
        reference::ssd_decay_scores_backward(acs, cb, gs)
    }

    /// Whether the runtime of `device` has the tensor-core product [`FusedOps::ssd_scan`] can run
    /// its products on (TF32 inputs, f32 accumulation) under [`SsdProducts::TensorCores`].
    fn ssd_tensor_cores_available(_device: &Self::Device) -> bool {
        false
    }

    /// The whole chunked SSD scan of a training step (no initial state, final state unused):
    /// y without the D·x skip term. On the autodiff backend it is one node with the hand-written
    /// backward of [`crate::ssd::backward`]; its reference is [`crate::ssd::ssd_chunked`].
    ///
    /// # Shapes
    /// - x: [b, L, H, P], dt: [b, L, H], a: [H], bm, cm: [b, L, G, N]; output: [b, L, H, P]
    #[allow(clippy::too_many_arguments)]
    fn ssd_scan(
        x: Tensor<Self, 4>,
        dt: Tensor<Self, 3>,
        a: Tensor<Self, 1>,
        bm: Tensor<Self, 4>,
        cm: Tensor<Self, 4>,
        chunk: usize,
        dtype: Option<DType>,
    ) -> Tensor<Self, 4> {
        crate::ssd::ssd_chunked(x, dt, a, bm, cm, chunk, None, dtype).0
    }

    /// [`FusedOps::ssd_scan`], and what its backward can take instead of computing it again
    /// (`None` where the backend keeps nothing: its backward recomputes).
    ///
    /// # Shapes
    /// - as [`FusedOps::ssd_scan`]
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn ssd_scan_keeping(
        x: Tensor<Self, 4>,
        dt: Tensor<Self, 3>,
        a: Tensor<Self, 1>,
        bm: Tensor<Self, 4>,
        cm: Tensor<Self, 4>,
        chunk: usize,
        dtype: Option<DType>,
    ) -> (Tensor<Self, 4>, Option<SsdKept<Self>>) {
        (Self::ssd_scan(x, dt, a, bm, cm, chunk, dtype), None)
    }

    /// [`FusedOps::ssd_scan_backward`] from what [`FusedOps::ssd_scan_keeping`] kept: the same
    /// gradients, fewer products.
    ///
    /// # Shapes
    /// - as [`FusedOps::ssd_scan_backward`]
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn ssd_scan_backward_kept(
        x: Tensor<Self, 4>,
        dt: Tensor<Self, 3>,
        a: Tensor<Self, 1>,
        bm: Tensor<Self, 4>,
        cm: Tensor<Self, 4>,
        chunk: usize,
        dy: Tensor<Self, 4>,
        dtype: Option<DType>,
        _kept: SsdKept<Self>,
    ) -> (Tensor<Self, 4>, Tensor<Self, 3>, Tensor<Self, 1>, Tensor<Self, 4>, Tensor<Self, 4>) {
        Self::ssd_scan_backward(x, dt, a, bm, cm, chunk, dy, dtype)
    }

    /// Gradients of `Σ dy ⊙ ssd_scan(x, dt, a, bm, cm)`: (dx, ddt, da, dbm, dcm).
    ///
    /// # Shapes
    /// - as [`FusedOps::ssd_scan`], dy: [b, L, H, P]
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn ssd_scan_backward(
        x: Tensor<Self, 4>,
        dt: Tensor<Self, 3>,
        a: Tensor<Self, 1>,
        bm: Tensor<Self, 4>,
        cm: Tensor<Self, 4>,
        chunk: usize,
        dy: Tensor<Self, 4>,
        dtype: Option<DType>,
    ) -> (Tensor<Self, 4>, Tensor<Self, 3>, Tensor<Self, 1>, Tensor<Self, 4>, Tensor<Self, 4>) {
        crate::ssd::backward::ssd_scan_backward(x, dt, a, bm, cm, chunk, dy, dtype)
    }

    /// Depthwise causal convolution over time, then SiLU:
    /// y[t, c] = SiLU(bias[c] + Σ_k w[c, k] · x[t − (K−1) + k, c]), zeros before the start.
    /// `x` may be a strided view (a slice of the in_proj output).
    ///
    /// # Shapes
    /// - x: [b, L, C]; w: [C, K]; bias: [C]; output: [b, L, C]
    fn conv_silu(x: Tensor<Self, 3>, w: Tensor<Self, 2>, bias: Tensor<Self, 1>) -> Tensor<Self, 3> {
        reference::conv_silu(x, w, bias)
    }

    /// Gradients of `Σ gy ⊙ conv_silu(x, w, bias)`: (gx, gw, gbias).
    ///
    /// # Shapes
    /// - as [`FusedOps::conv_silu`], gy: [b, L, C]
    fn conv_silu_backward(
        x: Tensor<Self, 3>,
        w: Tensor<Self, 2>,
        bias: Tensor<Self, 1>,
        gy: Tensor<Self, 3>,
    ) -> (Tensor<Self, 3>, Tensor<Self, 2>, Tensor<Self, 1>) {
        reference::conv_silu_backward(x, w, bias, gy)
    }

    /// RMSNorm of each row: x / √(mean x² + ε) · w.
    ///
    /// # Shapes
    /// - x: [R, D]; w: [D]; output: [R, D]
    fn rms_norm(x: Tensor<Self, 2>, w: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 2> {
        reference::rms_norm(x, w, eps)
    }

    /// Gradients of `Σ gy ⊙ rms_norm(x, w)`: (gx, gw).
    ///
    /// # Shapes
    /// - as [`FusedOps::rms_norm`], gy: [R, D]
    fn rms_norm_backward(
        x: Tensor<Self, 2>,
        w: Tensor<Self, 1>,
        eps: f64,
        gy: Tensor<Self, 2>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 1>) {
        reference::rms_norm_backward(x, w, eps, gy)
    }

    /// Mamba-2's gated grouped RMSNorm (norm_before_gate = false): u = y ⊙ SiLU(z), each group of
    /// di/G channels normalized by its own RMS, times w. `z` may be a strided view.
    ///
    /// # Shapes
    /// - y, z: [b, L, di]; w: [di]; output: [b, L, di]
    fn gated_rms_norm(
        y: Tensor<Self, 3>,
        z: Tensor<Self, 3>,
        w: Tensor<Self, 1>,
        groups: usize,
        eps: f64,
    ) -> Tensor<Self, 3> {
        reference::gated_rms_norm(y, z, w, groups, eps)
    }

    /// Gradients of `Σ gout ⊙ gated_rms_norm(y, z, w)`: (gy, gz, gw).
    ///
    /// # Shapes
    /// - as [`FusedOps::gated_rms_norm`], gout: [b, L, di]
    fn gated_rms_norm_backward(
        y: Tensor<Self, 3>,
        z: Tensor<Self, 3>,
        w: Tensor<Self, 1>,
        groups: usize,
        eps: f64,
        gout: Tensor<Self, 3>,
    ) -> (Tensor<Self, 3>, Tensor<Self, 3>, Tensor<Self, 1>) {
        reference::gated_rms_norm_backward(y, z, w, groups, eps, gout)
    }
}

// The CPU backend runs the reference bodies.
impl FusedOps for burn::backend::NdArray<f32> {}
impl FusedOps for burn::backend::NdArray<f64> {}

/// An autodiff backend with the fused operations, over an inner backend that has them too (the
/// optimizer runs there): what the trainer runs on.
pub trait TrainBackend: burn::tensor::backend::AutodiffBackend<InnerBackend: FusedOps> + FusedOps {}

impl<T> TrainBackend for T where T: burn::tensor::backend::AutodiffBackend<InnerBackend: FusedOps> + FusedOps {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::opts;
    use crate::rng::SplitMix64;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::TensorData;

    type B = NdArray<f64>;
    type A = Autodiff<B>;

    fn rand2(rng: &mut SplitMix64, r: usize, c: usize, scale: f64) -> Tensor<B, 2> {
        let v: Vec<f64> = (0..r * c).map(|_| scale * rng.normal()).collect();
        Tensor::from_data(TensorData::new(v, [r, c]), opts::<B>(&Default::default()))
    }

    fn max_abs(t: Tensor<B, 2>) -> f64 {
        t.abs().max().into_scalar()
    }

    /// The hand-written backward formulas that the kernels implement equal Burn's differentiation
    /// of the reference forward, with a random weight per row.
    #[test]
    fn loss_backward_formulas_equal_autodiff() {
        let dev = Default::default();
        let mut rng = SplitMix64::new(21);
        let (r, v, vt) = (5, 13, 9);
        let z = rand2(&mut rng, r, v, 2.0);
        let t = rand2(&mut rng, r, vt, 2.0);
        let w: Vec<f64> = (0..r).map(|_| rng.normal()).collect();
        let wt = Tensor::<B, 1>::from_data(TensorData::new(w.clone(), [r]), opts::<B>(&dev));
        let targets: Vec<i64> = (0..r).map(|_| rng.below(v as u64) as i64).collect();
        let tt = Tensor::<B, 1, Int>::from_data(TensorData::new(targets, [r]), &dev);

        let za = Tensor::<A, 2>::from_inner(z.clone()).require_grad();
        let loss =
            (reference::ce_rows(za.clone(), Tensor::from_inner(tt.clone())) * Tensor::from_inner(wt.clone())).sum();
        let auto = za.grad(&loss.backward()).expect("grad");
        let formula = reference::ce_rows_backward(z.clone(), tt, wt.clone());
        assert!(max_abs(auto - formula) < 1e-12);

        for temperature in [1.0, 2.5] {
            let za = Tensor::<A, 2>::from_inner(z.clone()).require_grad();
            let loss = (reference::soft_ce_rows(za.clone(), Tensor::from_inner(t.clone()), temperature)
                * Tensor::from_inner(wt.clone()))
            .sum();
            let auto = za.grad(&loss.backward()).expect("grad");
            let formula = reference::soft_ce_rows_backward(z.clone(), t.clone(), temperature, wt.clone());
            // Burn rounds a tensor-scalar operand through f32 (1/2.5 is not exact there): the
            // autodiff path carries a relative 1.5e-8 from that, the formula does not.
            let scale = max_abs(auto.clone());
            assert!(max_abs(auto - formula) < 1e-7 * scale, "T = {temperature}");
        }
    }

    fn rand3(rng: &mut SplitMix64, d: [usize; 3], scale: f64) -> Tensor<B, 3> {
        let v: Vec<f64> = (0..d.iter().product::<usize>()).map(|_| scale * rng.normal()).collect();
        Tensor::from_data(TensorData::new(v, d), opts::<B>(&Default::default()))
    }

    fn rand1(rng: &mut SplitMix64, n: usize, scale: f64, offset: f64) -> Tensor<B, 1> {
        let v: Vec<f64> = (0..n).map(|_| offset + scale * rng.normal()).collect();
        Tensor::from_data(TensorData::new(v, [n]), opts::<B>(&Default::default()))
    }

    fn diff<const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f64 {
        let scale = b.clone().abs().max().into_scalar().max(1e-300);
        (a - b).abs().max().into_scalar() / scale
    }

    fn ad<const D: usize>(t: &Tensor<B, D>) -> Tensor<A, D> {
        Tensor::<A, D>::from_inner(t.clone()).require_grad()
    }

    /// The conv, RMSNorm and gated-norm backward formulas (what the kernels implement) equal
    /// Burn's differentiation of the reference forwards.
    #[test]
    fn block_backward_formulas_equal_autodiff() {
        let mut rng = SplitMix64::new(33);
        let (b, l, c, k) = (2, 7, 5, 4);
        let x = rand3(&mut rng, [b, l, c], 1.0);
        let w = Tensor::<B, 1>::from_data(
            TensorData::new((0..c * k).map(|_| rng.normal()).collect::<Vec<f64>>(), [c * k]),
            opts::<B>(&Default::default()),
        )
        .reshape([c, k]);
        let bias = rand1(&mut rng, c, 0.5, 0.0);
        let gy = rand3(&mut rng, [b, l, c], 1.0);
        let (xa, wa, ba) = (ad(&x), ad(&w), ad(&bias));
        let grads = (reference::conv_silu(xa.clone(), wa.clone(), ba.clone()) * Tensor::from_inner(gy.clone()))
            .sum()
            .backward();
        let (gx, gw, gb) = reference::conv_silu_backward(x.clone(), w.clone(), bias.clone(), gy);
        assert!(diff(gx, xa.grad(&grads).expect("gx")) < 1e-12);
        assert!(diff(gw, wa.grad(&grads).expect("gw")) < 1e-12);
        assert!(diff(gb, ba.grad(&grads).expect("gb")) < 1e-12);

        let (r, d) = (6, 8);
        let x = rand3(&mut rng, [1, r, d], 1.0).reshape([r, d]);
        let w = rand1(&mut rng, d, 0.3, 1.0);
        let gy = rand3(&mut rng, [1, r, d], 1.0).reshape([r, d]);
        let (xa, wa) = (ad(&x), ad(&w));
        let grads =
            (reference::rms_norm(xa.clone(), wa.clone(), 1e-5) * Tensor::from_inner(gy.clone())).sum().backward();
        let (gx, gw) = reference::rms_norm_backward(x, w, 1e-5, gy);
        assert!(diff(gx, xa.grad(&grads).expect("gx")) < 1e-10);
        assert!(diff(gw, wa.grad(&grads).expect("gw")) < 1e-12);

        let (di, groups) = (8, 2);
        let y = rand3(&mut rng, [b, l, di], 1.0);
        let z = rand3(&mut rng, [b, l, di], 1.5);
        let w = rand1(&mut rng, di, 0.3, 1.0);
        let go = rand3(&mut rng, [b, l, di], 1.0);
        let (ya, za, wa) = (ad(&y), ad(&z), ad(&w));
        let out = reference::gated_rms_norm(ya.clone(), za.clone(), wa.clone(), groups, 1e-5);
        let grads = (out * Tensor::from_inner(go.clone())).sum().backward();
        let (gy, gz, gw) = reference::gated_rms_norm_backward(y, z, w, groups, 1e-5, go);
        assert!(diff(gy, ya.grad(&grads).expect("gy")) < 1e-10);
        assert!(diff(gz, za.grad(&grads).expect("gz")) < 1e-10);
        assert!(diff(gw, wa.grad(&grads).expect("gw")) < 1e-12);
    }

    /// The FBI-Linear backward formula equals autodiff of the straight-through forward, for both
    /// scale patterns.
    #[test]
    fn fbi_weight_backward_equals_autodiff() {
        let mut rng = SplitMix64::new(8);
        let (o, i) = (5, 7);
        let w = rand2(&mut rng, o, i, 1.0);
        let g = rand2(&mut rng, o, i, 1.0);
        for like in [[1, i], [o, 1]] {
            let a = rand2(&mut rng, like[0], like[1], 0.5);
            let b = rand2(&mut rng, like[0], like[1], 0.1);
            let (wa, aa, ba) = (ad(&w), ad(&a), ad(&b));
            let out = reference::fbi_weight(wa.clone(), aa.clone(), ba.clone(), burn::tensor::DType::F64);
            let grads = (out * Tensor::from_inner(g.clone())).sum().backward();
            let (gw, ga, gb) = reference::fbi_weight_backward(w.clone(), a, g.clone());
            assert!(diff(gw, wa.grad(&grads).expect("gw")) < 1e-12);
            assert!(diff(ga, aa.grad(&grads).expect("ga")) < 1e-12);
            assert!(diff(gb, ba.grad(&grads).expect("gb")) < 1e-12);
        }
    }

    /// The SSD score backward formula equals autodiff of the reference forward (two groups of two
    /// heads, a decreasing Λ as dt·A gives).
    #[test]
    fn ssd_decay_scores_backward_equals_autodiff() {
        let mut rng = SplitMix64::new(12);
        let (b, c, h, g, t) = (2, 3, 4, 2, 5);
        let steps: Vec<f64> = (0..b * c * h * t).map(|_| -rng.uniform(0.01, 1.0)).collect();
        let acs =
            Tensor::<B, 4>::from_data(TensorData::new(steps, [b, c, h, t]), opts::<B>(&Default::default())).cumsum(3);
        let cbv: Vec<f64> = (0..b * c * g * t * t).map(|_| rng.normal()).collect();
        let cb = Tensor::<B, 5>::from_data(TensorData::new(cbv, [b, c, g, t, t]), opts::<B>(&Default::default()));
        let gv: Vec<f64> = (0..b * c * h * t * t).map(|_| rng.normal()).collect();
        let gs = Tensor::<B, 5>::from_data(TensorData::new(gv, [b, c, h, t, t]), opts::<B>(&Default::default()));
        let (aa, ca) = (ad(&acs), ad(&cb));
        let grads =
            (reference::ssd_decay_scores(aa.clone(), ca.clone()) * Tensor::from_inner(gs.clone())).sum().backward();
        let (ga, gc) = reference::ssd_decay_scores_backward(acs, cb, gs);
        let want_a = aa.grad(&grads).expect("g acs");
        let scale = want_a.clone().abs().max().into_scalar();
        assert!((ga - want_a).abs().max().into_scalar() < 1e-12 * scale.max(1.0));
        let want_c = ca.grad(&grads).expect("g cb");
        assert!((gc - want_c).abs().max().into_scalar() < 1e-12);
    }

    /// The per-row losses equal the scalar formulas.
    #[test]
    fn row_losses_match_scalar_formulas() {
        let mut rng = SplitMix64::new(4);
        let (r, v, vt) = (3, 7, 5);
        let z = rand2(&mut rng, r, v, 3.0);
        let t = rand2(&mut rng, r, vt, 3.0);
        let zv: Vec<f64> = z.to_data().to_vec().expect("f64");
        let tv: Vec<f64> = t.to_data().to_vec().expect("f64");
        let lse = |x: &[f64], s: f64| {
            let m = x.iter().map(|a| a * s).fold(f64::MIN, f64::max);
            m + x.iter().map(|a| (a * s - m).exp()).sum::<f64>().ln()
        };
        let targets = [6i64, 0, 3];
        let tt = Tensor::<B, 1, Int>::from_data(TensorData::new(targets.to_vec(), [r]), &Default::default());
        let ce: Vec<f64> = reference::ce_rows(z.clone(), tt).to_data().to_vec().expect("f64");
        let temperature = 1.7;
        let soft: Vec<f64> = reference::soft_ce_rows(z, t, temperature).to_data().to_vec().expect("f64");
        for i in 0..r {
            let row = &zv[i * v..(i + 1) * v];
            let trow = &tv[i * vt..(i + 1) * vt];
            assert!((ce[i] - (lse(row, 1.0) - row[targets[i] as usize])).abs() < 1e-12);
            let (ls, lt) = (lse(row, 1.0 / temperature), lse(trow, 1.0 / temperature));
            let want: f64 =
                -(0..vt).map(|k| (trow[k] / temperature - lt).exp() * (row[k] / temperature - ls)).sum::<f64>()
                    * temperature
                    * temperature;
            assert!((soft[i] - want).abs() < 1e-12, "row {i}: {} vs {want}", soft[i]);
        }
    }
}
