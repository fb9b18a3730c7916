//! The optimizer's multi-tensor launches on Burn's CubeCL backends: AdamW and the sum of squares
//! over up to [`TENSORS_PER_LAUNCH`] parameters per launch (a training step of the 130M class has
//! 24 × 13 + 3 parameter tensors: about 10 launches each instead of one per tensor), each cube
//! covering one block of one tensor, found in a small table uploaded with the launch.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::{SequenceArg, Tensor as CubeArg};
use cubecl::{CubeCount, CubeDim};

use super::cube::{empty_f32, wrap_d};
use super::kernels::optim::{adamw_multi_kernel, sum_squares_multi_kernel, MULTI_BLOCK};
use super::{AdamParam, AdamStep};

type Prim<R> = CubeTensor<R>;

/// Tensors per launch at most (each is one kernel argument; the kernel selects its tensor by an
/// unrolled comparison, so its code grows with this).
pub const TENSORS_PER_LAUNCH: usize = 32;

/// Parameters per launch on this device: [`TENSORS_PER_LAUNCH`], or fewer where the device takes
/// fewer buffers per kernel (Vulkan drivers: 32 in all) than `per_param` buffers for each
/// parameter plus `fixed` others.
fn per_launch<R: CubeRuntime>(like: &Prim<R>, per_param: usize, fixed: usize) -> usize {
    let bindings = like.client.properties().hardware.max_bindings as usize;
    (bindings.saturating_sub(fixed) / per_param).clamp(1, TENSORS_PER_LAUNCH)
}

fn flat_f32<B: Backend<FloatTensorPrimitive = Prim<R>>, R: CubeRuntime>(t: Tensor<B, 1>, what: &str) -> Prim<R> {
    let p = into_contiguous(t.into_primitive().tensor());
    assert_eq!(p.dtype, DType::F32, "fused multi-tensor optimizer: f32 {what} only");
    p
}

/// A device buffer of `values`, as a contiguous tensor of `dtype`.
fn upload<R: CubeRuntime>(like: &Prim<R>, bytes: Vec<u8>, len: usize, dtype: DType) -> Prim<R> {
    let handle = like.client.create_from_slice(&bytes);
    CubeTensor::new_contiguous(like.client.clone(), like.device.clone(), [len].into(), handle, dtype)
}

/// Elements between the starts of two parameters in the flat outputs: each starts on a 256-byte
/// boundary, so that its slice is a view of the buffer (Burn copies an unaligned slice).
const SLOT: usize = 64;

/// Where each tensor starts in the flat outputs, and their total length.
fn slots(sizes: &[usize]) -> (Vec<usize>, usize) {
    let mut starts = Vec::with_capacity(sizes.len());
    let mut flat = 0usize;
    for &n in sizes {
        starts.push(flat);
        flat += n.div_ceil(SLOT) * SLOT;
    }
    (starts, flat)
}

/// The cube table of one launch: (tensor, first element, offset in the flat outputs) per cube.
fn blocks<R: CubeRuntime>(like: &Prim<R>, sizes: &[usize]) -> (Prim<R>, usize) {
    let mut table = Vec::new();
    let (starts, _) = slots(sizes);
    for (j, (&n, &flat)) in sizes.iter().zip(&starts).enumerate() {
        for start in (0..n).step_by(MULTI_BLOCK) {
            table.extend([j as u32, start as u32, flat as u32]);
        }
    }
    let cubes = table.len() / 3;
    let bytes = table.iter().flat_map(|x| x.to_le_bytes()).collect();
    (upload(like, bytes, table.len(), DType::U32), cubes)
}

fn sequence<R: CubeRuntime>(ts: &[Prim<R>]) -> SequenceArg<R, CubeArg<f32>> {
    ts.iter().map(|t| t.clone().into_tensor_arg()).collect()
}

/// Elements [start, start + n) of a flat f32 buffer of `total` elements, as a tensor sharing its
/// memory (`start` is a multiple of [`SLOT`]).
fn view<B: Backend<FloatTensorPrimitive = Prim<R>>, R: CubeRuntime>(
    flat: &Prim<R>,
    start: usize,
    n: usize,
    total: usize,
) -> Tensor<B, 1> {
    let handle = flat.handle.clone().offset_start((start * 4) as u64).offset_end(((total - start - n) * 4) as u64);
    wrap_d::<B, R, 1>(CubeTensor::new_contiguous(
        flat.client.clone(),
        flat.device.clone(),
        [n].into(),
        handle,
        DType::F32,
    ))
}

/// AdamW on every parameter of `params`, up to [`TENSORS_PER_LAUNCH`] per launch.
#[allow(clippy::type_complexity)]
pub fn adamw_many<B: Backend<FloatTensorPrimitive = Prim<R>>, R: CubeRuntime>(
    params: Vec<AdamParam<B>>,
    s: &AdamStep,
) -> Vec<(Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>)> {
    let mut out = Vec::with_capacity(params.len());
    let Some(first) = params.first() else { return out };
    // p, g, m, v per parameter; three outputs, the table, the decays and the launch's metadata.
    let per = per_launch(&first.p.clone().into_primitive().tensor(), 4, 6);
    let mut rest = params.into_iter().peekable();
    while rest.peek().is_some() {
        let group: Vec<AdamParam<B>> = rest.by_ref().take(per).collect();
        let mut ps = Vec::new();
        let (mut gs, mut ms, mut vs, mut decays) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for q in group {
            let n = q.p.dims()[0];
            assert!(
                q.g.dims()[0] == n && q.m.dims()[0] == n && q.v.dims()[0] == n,
                "fused AdamW: parameter, gradient and moments differ in size"
            );
            ps.push(flat_f32(q.p, "parameters"));
            gs.push(flat_f32(q.g, "gradients"));
            ms.push(flat_f32(q.m, "moments"));
            vs.push(flat_f32(q.v, "moments"));
            decays.push(q.decay as f32);
        }
        let sizes: Vec<usize> = ps.iter().map(|p| p.meta.shape()[0]).collect();
        let (starts, total) = slots(&sizes);
        let like = ps[0].clone();
        let (po, mo, vo) =
            (empty_f32(&like, vec![total]), empty_f32(&like, vec![total]), empty_f32(&like, vec![total]));
        let (table, cubes) = blocks(&like, &sizes);
        let decay_bytes = decays.iter().flat_map(|x| x.to_le_bytes()).collect();
        let decays = upload(&like, decay_bytes, decays.len(), DType::F32);
        if cubes > 0 {
            adamw_multi_kernel::launch::<R>(
                &like.client,
                CubeCount::new_1d(cubes as u32),
                CubeDim::new_1d(256),
                sequence(&ps),
                sequence(&gs),
                sequence(&ms),
                sequence(&vs),
                po.clone().into_tensor_arg(),
                mo.clone().into_tensor_arg(),
                vo.clone().into_tensor_arg(),
                table.into_tensor_arg(),
                decays.into_tensor_arg(),
                s.lr as f32,
                s.beta1 as f32,
                s.beta2 as f32,
                s.eps as f32,
                s.bias1 as f32,
                s.bias2 as f32,
                s.grad_scale as f32,
            );
        }
        for (&n, &start) in sizes.iter().zip(&starts) {
            out.push((view(&po, start, n, total), view(&mo, start, n, total), view(&vo, start, n, total)));
        }
    }
    out
}

/// Σ x² over every element of every tensor, up to [`TENSORS_PER_LAUNCH`] tensors per launch, one
/// partial sum per cube, summed at the end.
pub fn sum_squares_many<B: Backend<FloatTensorPrimitive = Prim<R>>, R: CubeRuntime>(
    xs: &[Tensor<B, 1>],
    device: &B::Device,
) -> Tensor<B, 1> {
    let opts = crate::ops::opts::<B>(device);
    let xs: Vec<Prim<R>> = xs.iter().filter(|x| x.dims()[0] > 0).map(|x| flat_f32(x.clone(), "tensors")).collect();
    let cubes_of = |n: usize| n.div_ceil(MULTI_BLOCK);
    let total: usize = xs.iter().map(|x| cubes_of(x.meta.shape()[0])).sum();
    if total == 0 {
        return Tensor::zeros([1], opts);
    }
    let partials = empty_f32(&xs[0], vec![total]);
    let mut offset = 0usize;
    // One buffer per tensor; the table, the partial sums and the launch's metadata.
    for group in xs.chunks(per_launch(&xs[0], 1, 3)) {
        let sizes: Vec<usize> = group.iter().map(|x| x.meta.shape()[0]).collect();
        let (table, cubes) = blocks(&group[0], &sizes);
        sum_squares_multi_kernel::launch::<R>(
            &group[0].client,
            CubeCount::new_1d(cubes as u32),
            CubeDim::new_1d(256),
            sequence(group),
            table.into_tensor_arg(),
            partials.clone().into_tensor_arg(),
            offset as u32,
        );
        offset += cubes;
    }
    wrap_d::<B, R, 1>(partials).sum()
}
