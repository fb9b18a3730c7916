//! The op-by-op formulations of the fused operations: what the CPU backend runs, and what the
//! kernels are checked against.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor};

use super::AdamStep;

/// AdamW on a flattened parameter (see [`super::FusedOps::adamw_update`]).
pub fn adamw_update<B: Backend>(
    p: Tensor<B, 1>,
    g: Tensor<B, 1>,
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
    s: &AdamStep,
) -> (Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>) {
    let g = g * s.grad_scale;
    let m = m * s.beta1 + g.clone() * (1.0 - s.beta1);
    let v = v * s.beta2 + g.powi_scalar(2) * (1.0 - s.beta2);
    let denom = (v.clone() / s.bias2).sqrt() + s.eps;
    let update = (m.clone() / s.bias1) / denom;
    let p = p * s.decay - update * s.lr;
    (p, m, v)
}

/// Σ x² over all tensors (see [`super::FusedOps::sum_squares`]).
pub fn sum_squares<B: Backend>(xs: &[Tensor<B, 1>], device: &B::Device) -> Tensor<B, 1> {
    let mut acc = Tensor::<B, 1>::zeros([1], crate::ops::opts::<B>(device));
    for x in xs {
        acc = acc + x.clone().powi_scalar(2).sum();
    }
    acc
}

fn f32_of<B: Backend>(t: Tensor<B, 2>) -> Tensor<B, 2> {
    match t.dtype() {
        DType::BF16 | DType::F16 => t.cast(DType::F32),
        _ => t,
    }
}

/// Log-sum-exp of each row, with the row maximum taken out (detached) for stability.
///
/// # Shapes
/// - x: [R, V]; output: [R, 1]
fn lse_rows<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let m = x.clone().max_dim(1).detach();
    (x - m.clone()).exp().sum_dim(1).log() + m
}

/// Next-token cross-entropy per row (see [`super::FusedOps::ce_rows`]).
pub fn ce_rows<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let z = f32_of(logits);
    let r = z.dims()[0];
    let picked = z.clone().gather(1, targets.reshape([r, 1]));
    (lse_rows(z) - picked).reshape([r])
}

/// Its gradient (see [`super::FusedOps::ce_rows_backward`]).
pub fn ce_rows_backward<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    grad: Tensor<B, 1>,
) -> Tensor<B, 2> {
    let dtype = logits.dtype();
    let z = f32_of(logits);
    let [r, v] = z.dims();
    let soft = (z.clone() - lse_rows(z.clone())).exp();
    let onehot = z.zeros_like().scatter(
        1,
        targets.reshape([r, 1]),
        Tensor::ones([r, 1], crate::ops::opts::<B>(&soft.device())),
        burn::tensor::IndexingUpdateOp::Add,
    );
    let g = (soft - onehot) * grad.reshape([r, 1]).expand([r, v]);
    if g.dtype() != dtype {
        g.cast(dtype)
    } else {
        g
    }
}

/// Soft-target cross-entropy per row (see [`super::FusedOps::soft_ce_rows`]).
pub fn soft_ce_rows<B: Backend>(student: Tensor<B, 2>, teacher: Tensor<B, 2>, temperature: f64) -> Tensor<B, 1> {
    let (zs, zt) = (f32_of(student) / temperature, f32_of(teacher).detach() / temperature);
    let [r, vt] = zt.dims();
    let logq = zs.clone() - lse_rows(zs);
    let p = (zt.clone() - lse_rows(zt)).exp();
    (p * logq.narrow(1, 0, vt)).sum_dim(1).reshape([r]).neg() * (temperature * temperature)
}

/// Its gradient (see [`super::FusedOps::soft_ce_rows_backward`]).
pub fn soft_ce_rows_backward<B: Backend>(
    student: Tensor<B, 2>,
    teacher: Tensor<B, 2>,
    temperature: f64,
    grad: Tensor<B, 1>,
) -> Tensor<B, 2> {
    let dtype = student.dtype();
    let (zs, zt) = (f32_of(student) / temperature, f32_of(teacher) / temperature);
    let [r, v] = zs.dims();
    let vt = zt.dims()[1];
    let q = (zs.clone() - lse_rows(zs)).exp();
    let p = (zt.clone() - lse_rows(zt)).exp();
    let p = if vt < v {
        Tensor::cat(vec![p, Tensor::zeros([r, v - vt], crate::ops::opts::<B>(&q.device()))], 1)
    } else {
        p
    };
    let g = (q - p) * (grad.reshape([r, 1]) * temperature).expand([r, v]);
    if g.dtype() != dtype {
        g.cast(dtype)
    } else {
        g
    }
}

/// σ(x) = 1 / (1 + e^{−x}).
fn sigmoid<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    (x.neg().exp() + 1.0).recip()
}

/// The convolution before its SiLU: bias[c] + Σ_k w[c, k] · x[t − (K−1) + k, c].
fn conv_pre<B: Backend>(x: Tensor<B, 3>, w: Tensor<B, 2>, bias: Tensor<B, 1>) -> Tensor<B, 3> {
    let [b, l, c] = x.dims();
    let k = w.dims()[1];
    let device = x.device();
    let xp =
        if k > 1 { Tensor::cat(vec![Tensor::zeros([b, k - 1, c], crate::ops::opts::<B>(&device)), x], 1) } else { x };
    let mut y = xp.clone().narrow(1, 0, l) * w.clone().narrow(1, 0, 1).reshape([1, 1, c]);
    for j in 1..k {
        y = y + xp.clone().narrow(1, j, l) * w.clone().narrow(1, j, 1).reshape([1, 1, c]);
    }
    y + bias.reshape([1, 1, c])
}

/// Depthwise causal convolution then SiLU (see [`super::FusedOps::conv_silu`]).
pub fn conv_silu<B: Backend>(x: Tensor<B, 3>, w: Tensor<B, 2>, bias: Tensor<B, 1>) -> Tensor<B, 3> {
    crate::ops::silu(conv_pre(x, w, bias))
}

/// Its gradients (see [`super::FusedOps::conv_silu_backward`]).
pub fn conv_silu_backward<B: Backend>(
    x: Tensor<B, 3>,
    w: Tensor<B, 2>,
    bias: Tensor<B, 1>,
    gy: Tensor<B, 3>,
) -> (Tensor<B, 3>, Tensor<B, 2>, Tensor<B, 1>) {
    let [b, l, c] = x.dims();
    let k = w.dims()[1];
    let device = x.device();
    let pre = conv_pre(x.clone(), w.clone(), bias);
    let s = sigmoid(pre.clone());
    // d SiLU / d pre = σ · (1 + pre · (1 − σ))
    let gpre = gy * s.clone() * (pre * (s.neg() + 1.0) + 1.0);
    let zeros = |n: usize| Tensor::<B, 3>::zeros([b, n, c], crate::ops::opts::<B>(&device));
    let xp = if k > 1 { Tensor::cat(vec![zeros(k - 1), x], 1) } else { x };
    let gp = if k > 1 { Tensor::cat(vec![gpre.clone(), zeros(k - 1)], 1) } else { gpre.clone() };
    let mut gx = gp.clone().narrow(1, k - 1, l) * w.clone().narrow(1, 0, 1).reshape([1, 1, c]);
    let mut gw = Vec::with_capacity(k);
    for j in 0..k {
        // y[t] uses x[t − (K−1) + j]: x[s] feeds y[s + (K−1) − j].
        if j > 0 {
            gx = gx + gp.clone().narrow(1, k - 1 - j, l) * w.clone().narrow(1, j, 1).reshape([1, 1, c]);
        }
        gw.push((gpre.clone() * xp.clone().narrow(1, j, l)).sum_dim(0).sum_dim(1).reshape([c, 1]));
    }
    let gbias = gpre.sum_dim(0).sum_dim(1).reshape([c]);
    (gx, Tensor::cat(gw, 1), gbias)
}

/// RMSNorm of each row with a learned weight (see [`super::FusedOps::rms_norm`]).
pub fn rms_norm<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 1>, eps: f64) -> Tensor<B, 2> {
    let d = x.dims()[1];
    crate::ops::rms_normalize(x, eps) * w.reshape([1, d])
}

/// Its gradients (see [`super::FusedOps::rms_norm_backward`]).
pub fn rms_norm_backward<B: Backend>(
    x: Tensor<B, 2>,
    w: Tensor<B, 1>,
    eps: f64,
    gy: Tensor<B, 2>,
) -> (Tensor<B, 2>, Tensor<B, 1>) {
    let d = x.dims()[1];
    let r = (x.clone().powi_scalar(2).mean_dim(1) + eps).sqrt().recip(); // [R, 1]
    let xh = x * r.clone();
    let gw = (gy.clone() * xh.clone()).sum_dim(0).reshape([d]);
    let gxh = gy * w.reshape([1, d]);
    // x̂ = x·r with r = (mean x² + ε)^{-1/2}: ∂L/∂x = r · (ĝ − x̂ · mean(ĝ ⊙ x̂))
    let gx = (gxh.clone() - xh.clone() * (gxh * xh).mean_dim(1)) * r;
    (gx, gw)
}

/// Gated grouped RMSNorm (norm_before_gate = false) (see [`super::FusedOps::gated_rms_norm`]).
pub fn gated_rms_norm<B: Backend>(
    y: Tensor<B, 3>,
    z: Tensor<B, 3>,
    w: Tensor<B, 1>,
    groups: usize,
    eps: f64,
) -> Tensor<B, 3> {
    let [b, l, di] = y.dims();
    let u = y * crate::ops::silu(z);
    crate::ops::rms_normalize(u.reshape([b, l, groups, di / groups]), eps).reshape([b, l, di]) * w.reshape([1, 1, di])
}

/// Its gradients (see [`super::FusedOps::gated_rms_norm_backward`]).
pub fn gated_rms_norm_backward<B: Backend>(
    y: Tensor<B, 3>,
    z: Tensor<B, 3>,
    w: Tensor<B, 1>,
    groups: usize,
    eps: f64,
    gout: Tensor<B, 3>,
) -> (Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 1>) {
    let [b, l, di] = y.dims();
    let gs = di / groups;
    let s = sigmoid(z.clone());
    let silu_z = z.clone() * s.clone();
    let u = (y.clone() * silu_z.clone()).reshape([b, l, groups, gs]);
    let r = (u.clone().powi_scalar(2).mean_dim(3) + eps).sqrt().recip(); // [b,L,G,1]
    let uh = u * r.clone();
    let gw = (gout.clone() * uh.clone().reshape([b, l, di])).sum_dim(0).sum_dim(1).reshape([di]);
    let guh = (gout * w.reshape([1, 1, di])).reshape([b, l, groups, gs]);
    let gu = ((guh.clone() - uh.clone() * (guh * uh).mean_dim(3)) * r).reshape([b, l, di]);
    let gy = gu.clone() * silu_z;
    // d SiLU(z) / dz = σ · (1 + z · (1 − σ))
    let gz = gu * y * s.clone() * (z * (s.neg() + 1.0) + 1.0);
    (gy, gz, gw)
}

/// ±1 with sign(±0) = +1.
fn sign_of<B: Backend>(w: Tensor<B, 2>) -> Tensor<B, 2> {
    w.clone().ones_like().mask_fill(w.lower_elem(0.0), -1.0)
}

/// Sums `g` over the dimensions along which a scale of shape `like` ([1, in] or [out, 1])
/// broadcasts.
fn sum_to<B: Backend>(g: Tensor<B, 2>, like: [usize; 2]) -> Tensor<B, 2> {
    let g = if like[0] == 1 { g.sum_dim(0) } else { g };
    if like[1] == 1 {
        g.sum_dim(1)
    } else {
        g
    }
}

/// FBI-Linear's effective weight α ⊙ sign(W) + β in `dtype` (see [`super::FusedOps::fbi_weight`]).
pub fn fbi_weight<B: Backend>(w: Tensor<B, 2>, alpha: Tensor<B, 2>, beta: Tensor<B, 2>, dtype: DType) -> Tensor<B, 2> {
    let wd = w.clone().detach();
    // Straight-through: the value is sign(W), the derivative with respect to W is 1.
    let sign_ste = sign_of(wd) + (w.clone() - w.detach());
    let eff = sign_ste * alpha + beta;
    if eff.dtype() != dtype {
        eff.cast(dtype)
    } else {
        eff
    }
}

/// Its gradients (see [`super::FusedOps::fbi_weight_backward`]).
pub fn fbi_weight_backward<B: Backend>(
    w: Tensor<B, 2>,
    alpha: Tensor<B, 2>,
    g: Tensor<B, 2>,
) -> (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>) {
    let g = if g.dtype() != w.dtype() { g.cast(w.dtype()) } else { g };
    let like = alpha.dims();
    let ga = sum_to(g.clone() * sign_of(w), like);
    let gb = sum_to(g.clone(), like);
    (g * alpha, ga, gb)
}

/// The SSD's intra-chunk score matrices (see [`super::FusedOps::ssd_decay_scores`]).
pub fn ssd_decay_scores<B: Backend>(acs: Tensor<B, 4>, cb: Tensor<B, 5>) -> Tensor<B, 5> {
    let [b, c, h, t] = acs.dims();
    let g = cb.dims()[2];
    let lmat: Tensor<B, 5> = crate::ssd::segment_decay(acs);
    (lmat.reshape([b, c, g, h / g, t, t]) * cb.unsqueeze_dim::<6>(3)).reshape([b, c, h, t, t])
}

/// Its gradients (see [`super::FusedOps::ssd_decay_scores_backward`]).
pub fn ssd_decay_scores_backward<B: Backend>(
    acs: Tensor<B, 4>,
    cb: Tensor<B, 5>,
    gs: Tensor<B, 5>,
) -> (Tensor<B, 4>, Tensor<B, 5>) {
    let [b, c, h, t] = acs.dims();
    let g = cb.dims()[2];
    let lmat: Tensor<B, 5> = crate::ssd::segment_decay(acs);
    // g_cb = Σ over the heads of a group of g ⊙ L
    let gl = (gs.clone() * lmat.clone()).reshape([b, c, g, h / g, t, t]);
    let gcb = gl.sum_dim(3).reshape([b, c, g, t, t]);
    // P = g ⊙ scores; ∂/∂Λ_l of exp(Λ_l − Λ_s) is +1 on rows, −1 on columns.
    let scores = (lmat.reshape([b, c, g, h / g, t, t]) * cb.unsqueeze_dim::<6>(3)).reshape([b, c, h, t, t]);
    let p = gs * scores;
    let rows: Tensor<B, 4> = p.clone().sum_dim(4).reshape([b, c, h, t]);
    let cols: Tensor<B, 4> = p.sum_dim(3).reshape([b, c, h, t]);
    (rows - cols, gcb)
}
