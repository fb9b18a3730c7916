//! Optimizer kernels: AdamW and the sum of squares of the global gradient norm.

use cubecl::prelude::*;

use super::cube_sum;

/// AdamW on one flattened parameter, one thread per element (see `FusedOps::adamw_update`).
#[cube(launch)]
pub fn adamw_kernel(
    p: &Tensor<f32>,
    g: &Tensor<f32>,
    m: &Tensor<f32>,
    v: &Tensor<f32>,
    p_out: &mut Tensor<f32>,
    m_out: &mut Tensor<f32>,
    v_out: &mut Tensor<f32>,
    lr: f32,
    decay: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    bias1: f32,
    bias2: f32,
    grad_scale: f32,
) {
    let i = ABSOLUTE_POS;
    if i >= p.len() {
        terminate!();
    }
    let gi = g[i] * grad_scale;
    let mi = m[i] * beta1 + gi * (1.0 - beta1);
    let vi = v[i] * beta2 + gi * gi * (1.0 - beta2);
    let denom = f32::sqrt(vi / bias2) + eps;
    p_out[i] = p[i] * decay - (mi / bias1) / denom * lr;
    m_out[i] = mi;
    v_out[i] = vi;
}

/// Elements of one tensor that one cube of the multi-tensor kernels covers (256 threads × 32).
pub const MULTI_BLOCK: usize = 8192;

/// AdamW over several parameters in one launch (`FusedOps::adamw_update_many`): cube c updates
/// elements [start, start + MULTI_BLOCK) of parameter `which` (blocks[3c] = which, blocks[3c + 1]
/// = start, blocks[3c + 2] = that parameter's offset in the flat outputs), with the parameter's
/// own decay factor. Parameters, gradients and moments are contiguous tensors of any size; the
/// updated values go to three flat buffers that the caller slices back into parameters.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn adamw_multi_kernel(
    p: &Sequence<Tensor<f32>>,
    g: &Sequence<Tensor<f32>>,
    m: &Sequence<Tensor<f32>>,
    v: &Sequence<Tensor<f32>>,
    p_out: &mut Tensor<f32>,
    m_out: &mut Tensor<f32>,
    v_out: &mut Tensor<f32>,
    blocks: &Tensor<u32>,
    decays: &Tensor<f32>,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    bias1: f32,
    bias2: f32,
    grad_scale: f32,
) {
    let cube = CUBE_POS_X as usize;
    let which = blocks[cube * 3] as usize;
    let start = blocks[cube * 3 + 1] as usize;
    let flat = blocks[cube * 3 + 2] as usize;
    #[unroll]
    for j in 0..p.len() {
        if which == j {
            let pj = p.index(j);
            let gj = g.index(j);
            let mj = m.index(j);
            let vj = v.index(j);
            let decay = decays[j];
            let mut end = start + MULTI_BLOCK;
            if end > pj.len() {
                end = pj.len();
            }
            let mut i = start + UNIT_POS_X as usize;
            while i < end {
                let gi = gj[i] * grad_scale;
                let mi = mj[i] * beta1 + gi * (1.0 - beta1);
                let vi = vj[i] * beta2 + gi * gi * (1.0 - beta2);
                let denom = f32::sqrt(vi / bias2) + eps;
                p_out[flat + i] = pj[i] * decay - (mi / bias1) / denom * lr;
                m_out[flat + i] = mi;
                v_out[flat + i] = vi;
                i += 256;
            }
        }
    }
}

/// Partial sums of squares of several tensors in one launch: cube c sums the squares of elements
/// [start, start + MULTI_BLOCK) of tensor `which` (blocks as in [`adamw_multi_kernel`]) into
/// partials[offset + c].
#[cube(launch)]
pub fn sum_squares_multi_kernel(
    xs: &Sequence<Tensor<f32>>,
    blocks: &Tensor<u32>,
    partials: &mut Tensor<f32>,
    offset: u32,
) {
    let cube = CUBE_POS_X as usize;
    let which = blocks[cube * 3] as usize;
    let start = blocks[cube * 3 + 1] as usize;
    let mut acc = 0.0f32;
    #[unroll]
    for j in 0..xs.len() {
        if which == j {
            let x = xs.index(j);
            let mut end = start + MULTI_BLOCK;
            if end > x.len() {
                end = x.len();
            }
            let mut i = start + UNIT_POS_X as usize;
            while i < end {
                let xi = x[i];
                acc += xi * xi;
                i += 256;
            }
        }
    }
    let total = cube_sum(acc);
    if UNIT_POS_X == 0 {
        partials[offset as usize + cube] = total;
    }
}
