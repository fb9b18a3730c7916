//! Optimizer kernels: AdamW and the sum of squares of the global gradient norm.

use cubecl::prelude::*;

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

/// Partial sums of squares (cubes of 256 threads): cube c of this launch writes Σ x[i]² over its grid-stride share to
/// partials[offset + c] (a shared-memory tree inside the cube; no atomics, so the result does not
/// depend on scheduling).
#[cube(launch)]
pub fn sum_squares_kernel(x: &Tensor<f32>, partials: &mut Tensor<f32>, offset: u32) {
    let n = x.len();
    let stride = (CUBE_COUNT_X * CUBE_DIM_X) as usize;
    let mut i = ABSOLUTE_POS_X as usize;
    let mut acc = 0.0f32;
    while i < n {
        let xi = x[i];
        acc += xi * xi;
        i += stride;
    }
    let mut shared = SharedMemory::<f32>::new(256usize);
    let unit = UNIT_POS_X as usize;
    shared[unit] = acc;
    sync_cube();
    let mut half = 128usize;
    while half > 0 {
        if unit < half {
            let other = shared[unit + half];
            shared[unit] += other;
        }
        sync_cube();
        half /= 2;
    }
    if unit == 0 {
        partials[offset as usize + CUBE_POS_X as usize] = shared[0];
    }
}
