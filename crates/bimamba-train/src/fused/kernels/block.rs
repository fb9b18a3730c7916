//! Kernels of the Mamba-2 block outside the SSD: the causal depthwise convolution with its SiLU,
//! RMSNorm, and the gated grouped RMSNorm. Inputs are indexed through their strides (slices of
//! the in_proj output need no copy); outputs are indexed through theirs too.

use cubecl::prelude::*;

use super::cube_sum;

/// SiLU(x) = x · σ(x).
#[cube]
fn silu(x: f32) -> f32 {
    x / (1.0 + f32::exp(0.0 - x))
}

/// d SiLU / dx = σ · (1 + x · (1 − σ)).
#[cube]
fn dsilu(x: f32) -> f32 {
    let s = 1.0 / (1.0 + f32::exp(0.0 - x));
    s * (1.0 + x * (1.0 - s))
}

/// The convolution before its SiLU at (b, t, c): bias[c] + Σ_j w[c, j] · x[b, t − (K−1) + j, c].
#[cube]
fn conv_at(x: &Tensor<f32>, w: &Tensor<f32>, bias: &Tensor<f32>, b: usize, t: usize, c: usize) -> f32 {
    let k = w.shape(1);
    let mut acc = bias[c];
    for j in 0..k {
        if t + j + 1 >= k {
            let ts = t + j + 1 - k;
            acc += w[c * w.stride(0) + j * w.stride(1)] * x[b * x.stride(0) + ts * x.stride(1) + c * x.stride(2)];
        }
    }
    acc
}

/// y = SiLU(conv(x)), one thread per output element (channels fastest).
#[cube(launch)]
pub fn conv_silu_kernel(x: &Tensor<f32>, w: &Tensor<f32>, bias: &Tensor<f32>, y: &mut Tensor<f32>) {
    let cn = x.shape(2);
    let ln = x.shape(1);
    let idx = ABSOLUTE_POS;
    if idx >= x.shape(0) * ln * cn {
        terminate!();
    }
    let c = idx % cn;
    let t = (idx / cn) % ln;
    let b = idx / (cn * ln);
    let pre = conv_at(x, w, bias, b, t, c);
    y[b * y.stride(0) + t * y.stride(1) + c * y.stride(2)] = silu(pre);
}

/// The conv's gradient before its SiLU, g = gy · SiLU'(pre), and the weight and bias gradients
/// summed over a band of `band` positions of one sequence:
/// partial[band, c, j] = Σ_t g[t, c] · x[t − (K−1) + j, c] for j < K, Σ_t g[t, c] for j = K.
/// One thread per channel walks its band in order with the last K inputs in registers, so x and
/// gy are read once; g goes to [`conv_backward_x_kernel`].
///
/// # Shapes
/// - x, gy, g: [b, L, C]; w: [C, K] with K = `taps`; bias: [C]; partial: [b·⌈L / band⌉, C, K + 1]
#[cube(launch)]
#[allow(clippy::manual_div_ceil)]
pub fn conv_silu_backward_w_kernel(
    x: &Tensor<f32>,
    w: &Tensor<f32>,
    bias: &Tensor<f32>,
    gy: &Tensor<f32>,
    g: &mut Tensor<f32>,
    partial: &mut Tensor<f32>,
    band: u32,
    #[comptime] taps: u32,
) {
    let cn = x.shape(2);
    let ln = x.shape(1);
    let c = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
    if c >= cn {
        terminate!();
    }
    let bands = (ln + band as usize - 1) / band as usize;
    let b = CUBE_POS_Y as usize / bands;
    let t0 = (CUBE_POS_Y as usize % bands) * band as usize;
    let mut t1 = t0 + band as usize;
    if t1 > ln {
        t1 = ln;
    }
    let k = comptime![taps as usize];
    let mut wr = Array::<f32>::new(comptime![taps as usize]);
    let mut win = Array::<f32>::new(comptime![taps as usize]);
    let mut acc = Array::<f32>::new(comptime![taps as usize]);
    #[unroll]
    for j in 0..k {
        wr[j] = w[c * w.stride(0) + j * w.stride(1)];
        acc[j] = 0.0;
        win[j] = 0.0;
    }
    // The K − 1 inputs before the band (zeros before the sequence starts).
    #[unroll]
    for j in 0..k - 1 {
        if t0 + j + 1 >= k {
            win[j] = x[b * x.stride(0) + (t0 + j + 1 - k) * x.stride(1) + c * x.stride(2)];
        }
    }
    let bv = bias[c];
    let mut acc_bias = 0.0f32;
    for t in t0..t1 {
        win[k - 1] = x[b * x.stride(0) + t * x.stride(1) + c * x.stride(2)];
        let mut pre = bv;
        #[unroll]
        for j in 0..k {
            pre += wr[j] * win[j];
        }
        let gv = gy[b * gy.stride(0) + t * gy.stride(1) + c * gy.stride(2)] * dsilu(pre);
        g[b * g.stride(0) + t * g.stride(1) + c * g.stride(2)] = gv;
        acc_bias += gv;
        #[unroll]
        for j in 0..k {
            acc[j] += gv * win[j];
        }
        #[unroll]
        for j in 0..k - 1 {
            win[j] = win[j + 1];
        }
    }
    let base = CUBE_POS_Y as usize * partial.stride(0) + c * partial.stride(1);
    #[unroll]
    for j in 0..k {
        partial[base + j * partial.stride(2)] = acc[j];
    }
    partial[base + k * partial.stride(2)] = acc_bias;
}

/// The conv's input gradient from g = gy · SiLU'(pre): gx[b, s, c] = Σ_j w[c, j] · g[b, s + (K−1) − j, c]
/// over the positions inside the sequence. One thread per element (channels fastest).
///
/// # Shapes
/// - g, gx: [b, L, C]; w: [C, K]
#[cube(launch)]
pub fn conv_backward_x_kernel(g: &Tensor<f32>, w: &Tensor<f32>, gx: &mut Tensor<f32>) {
    let cn = g.shape(2);
    let ln = g.shape(1);
    let k = w.shape(1);
    let idx = ABSOLUTE_POS;
    if idx >= g.shape(0) * ln * cn {
        terminate!();
    }
    let c = idx % cn;
    let s = (idx / cn) % ln;
    let b = idx / (cn * ln);
    let mut acc = 0.0f32;
    for j in 0..k {
        let t = s + k - 1 - j;
        if t < ln {
            acc += w[c * w.stride(0) + j * w.stride(1)] * g[b * g.stride(0) + t * g.stride(1) + c * g.stride(2)];
        }
    }
    gx[b * gx.stride(0) + s * gx.stride(1) + c * gx.stride(2)] = acc;
}

/// 1 / √(mean x² + ε) over x[base + i·step], i < n, computed by a cube of 256 threads.
#[cube]
fn row_inv_rms(x: &Tensor<f32>, base: usize, step: usize, n: usize, eps: f32) -> f32 {
    let mut ss = 0.0f32;
    let mut i = UNIT_POS_X as usize;
    while i < n {
        let v = x[base + i * step];
        ss += v * v;
        i += 256;
    }
    1.0 / f32::sqrt(cube_sum(ss) / f32::cast_from(n as u32) + eps)
}

/// 1 / √(mean u² + ε) over one group's channels c0..c0 + n of u = y ⊙ SiLU(z), by a cube of 256
/// threads.
#[cube]
fn group_inv_rms(
    y: &Tensor<f32>,
    by: usize,
    sy: usize,
    z: &Tensor<f32>,
    bz: usize,
    sz: usize,
    c0: usize,
    n: usize,
    eps: f32,
) -> f32 {
    let mut ss = 0.0f32;
    let mut i = UNIT_POS_X as usize;
    while i < n {
        let c = c0 + i;
        let u = y[by + c * sy] * silu(z[bz + c * sz]);
        ss += u * u;
        i += 256;
    }
    1.0 / f32::sqrt(cube_sum(ss) / f32::cast_from(n as u32) + eps)
}

/// RMSNorm, one cube of 256 threads per row.
#[cube(launch)]
pub fn rms_norm_kernel(x: &Tensor<f32>, w: &Tensor<f32>, y: &mut Tensor<f32>, eps: f32) {
    let row = CUBE_POS_X as usize;
    let d = x.shape(1);
    let base = row * x.stride(0);
    let r = row_inv_rms(x, base, x.stride(1), d, eps);
    let mut i = UNIT_POS_X as usize;
    while i < d {
        y[row * y.stride(0) + i * y.stride(1)] = x[base + i * x.stride(1)] * r * w[i];
        i += 256;
    }
}

/// RMSNorm backward, one cube per row: gx = r · (ĝ − x̂ · mean(ĝ ⊙ x̂)) with ĝ = gy ⊙ w, and the
/// per-row weight-gradient terms gwrows = gy ⊙ x̂ (summed over rows afterwards).
#[cube(launch)]
pub fn rms_norm_backward_kernel(
    x: &Tensor<f32>,
    w: &Tensor<f32>,
    gy: &Tensor<f32>,
    gx: &mut Tensor<f32>,
    gwrows: &mut Tensor<f32>,
    eps: f32,
) {
    let row = CUBE_POS_X as usize;
    let d = x.shape(1);
    let dn = f32::cast_from(d as u32);
    let bx = row * x.stride(0);
    let sx = x.stride(1);
    let bg = row * gy.stride(0);
    let sg = gy.stride(1);
    let r = row_inv_rms(x, bx, sx, d, eps);
    let mut dot = 0.0f32;
    let mut i = UNIT_POS_X as usize;
    while i < d {
        dot += gy[bg + i * sg] * w[i] * x[bx + i * sx] * r;
        i += 256;
    }
    let mean = cube_sum(dot) / dn;
    let mut i = UNIT_POS_X as usize;
    while i < d {
        let xh = x[bx + i * sx] * r;
        let g = gy[bg + i * sg];
        gx[row * gx.stride(0) + i * gx.stride(1)] = r * (g * w[i] - xh * mean);
        gwrows[row * gwrows.stride(0) + i * gwrows.stride(1)] = g * xh;
        i += 256;
    }
}

/// Gated grouped RMSNorm, one cube per (row of b·L, group): u = y ⊙ SiLU(z), out = u · r · w.
#[cube(launch)]
pub fn gated_rms_norm_kernel(
    y: &Tensor<f32>,
    z: &Tensor<f32>,
    w: &Tensor<f32>,
    out: &mut Tensor<f32>,
    groups: u32,
    eps: f32,
) {
    let row = CUBE_POS_X as usize;
    let grp = CUBE_POS_Y as usize;
    let ln = y.shape(1);
    let b = row / ln;
    let t = row % ln;
    let gs = y.shape(2) / groups as usize;
    let by = b * y.stride(0) + t * y.stride(1);
    let sy = y.stride(2);
    let bz = b * z.stride(0) + t * z.stride(1);
    let sz = z.stride(2);
    let r = group_inv_rms(y, by, sy, z, bz, sz, grp * gs, gs, eps);
    let mut i = UNIT_POS_X as usize;
    while i < gs {
        let c = grp * gs + i;
        let u = y[by + c * sy] * silu(z[bz + c * sz]);
        out[b * out.stride(0) + t * out.stride(1) + c * out.stride(2)] = u * r * w[c];
        i += 256;
    }
}

/// Gated grouped RMSNorm backward, one cube per (row, group): gu = r · (ĝ − û · mean(ĝ ⊙ û)),
/// ĝ = gout ⊙ w; gy = gu ⊙ SiLU(z); gz = gu ⊙ y ⊙ SiLU'(z); gwrows = gout ⊙ û.
#[cube(launch)]
pub fn gated_rms_norm_backward_kernel(
    y: &Tensor<f32>,
    z: &Tensor<f32>,
    w: &Tensor<f32>,
    gout: &Tensor<f32>,
    gy: &mut Tensor<f32>,
    gz: &mut Tensor<f32>,
    gwrows: &mut Tensor<f32>,
    groups: u32,
    eps: f32,
) {
    let row = CUBE_POS_X as usize;
    let grp = CUBE_POS_Y as usize;
    let ln = y.shape(1);
    let b = row / ln;
    let t = row % ln;
    let gs = y.shape(2) / groups as usize;
    let gsn = f32::cast_from(gs as u32);
    let by = b * y.stride(0) + t * y.stride(1);
    let sy = y.stride(2);
    let bz = b * z.stride(0) + t * z.stride(1);
    let sz = z.stride(2);
    let bo = b * gout.stride(0) + t * gout.stride(1);
    let so = gout.stride(2);
    let r = group_inv_rms(y, by, sy, z, bz, sz, grp * gs, gs, eps);
    let mut dot = 0.0f32;
    let mut i = UNIT_POS_X as usize;
    while i < gs {
        let c = grp * gs + i;
        let u = y[by + c * sy] * silu(z[bz + c * sz]);
        dot += gout[bo + c * so] * w[c] * u * r;
        i += 256;
    }
    let mean = cube_sum(dot) / gsn;
    let mut i = UNIT_POS_X as usize;
    while i < gs {
        let c = grp * gs + i;
        let yv = y[by + c * sy];
        let zv = z[bz + c * sz];
        let uh = yv * silu(zv) * r;
        let g = gout[bo + c * so];
        let gu = r * (g * w[c] - uh * mean);
        gy[b * gy.stride(0) + t * gy.stride(1) + c * gy.stride(2)] = gu * silu(zv);
        gz[b * gz.stride(0) + t * gz.stride(1) + c * gz.stride(2)] = gu * yv * dsilu(zv);
        gwrows[row * gwrows.stride(0) + c * gwrows.stride(1)] = g * uh;
        i += 256;
    }
}

/// The index of the scale that broadcasts to weight element (i, j): scales are [1, in] or
/// [out, 1].
#[cube]
fn scale_index(s: &Tensor<f32>, i: usize, j: usize) -> usize {
    let mut at = 0usize;
    if s.shape(0) > 1 {
        at += i * s.stride(0);
    }
    if s.shape(1) > 1 {
        at += j * s.stride(1);
    }
    at
}

/// W̃ = α ⊙ sign(W) + β, written in the product's dtype E, one thread per element.
#[cube(launch)]
pub fn fbi_weight_kernel<E: Float>(
    w: &Tensor<f32>,
    alpha: &Tensor<f32>,
    beta: &Tensor<f32>,
    out: &mut Tensor<E>,
    #[define(E)] _dtype: StorageType,
) {
    let cols = w.shape(1);
    let idx = ABSOLUTE_POS;
    if idx >= w.shape(0) * cols {
        terminate!();
    }
    let i = idx / cols;
    let j = idx % cols;
    let mut s = 1.0f32;
    if w[i * w.stride(0) + j * w.stride(1)] < 0.0 {
        s = -1.0;
    }
    let v = s * alpha[scale_index(alpha, i, j)] + beta[scale_index(beta, i, j)];
    out[i * out.stride(0) + j * out.stride(1)] = E::cast_from(v);
}

/// The elementwise parts of the FBI-Linear gradients: gw = g ⊙ α (straight-through) and gs =
/// g ⊙ sign(W) (g itself and gs are summed over the broadcast axis afterwards for β and α).
#[cube(launch)]
pub fn fbi_weight_backward_kernel(
    w: &Tensor<f32>,
    alpha: &Tensor<f32>,
    g: &Tensor<f32>,
    gw: &mut Tensor<f32>,
    gs: &mut Tensor<f32>,
) {
    let cols = w.shape(1);
    let idx = ABSOLUTE_POS;
    if idx >= w.shape(0) * cols {
        terminate!();
    }
    let i = idx / cols;
    let j = idx % cols;
    let gv = g[i * g.stride(0) + j * g.stride(1)];
    let mut s = 1.0f32;
    if w[i * w.stride(0) + j * w.stride(1)] < 0.0 {
        s = -1.0;
    }
    // Outputs are indexed through their strides: a fresh 2-D buffer may have padded rows.
    gw[i * gw.stride(0) + j * gw.stride(1)] = gv * alpha[scale_index(alpha, i, j)];
    gs[i * gs.stride(0) + j * gs.stride(1)] = gv * s;
}
