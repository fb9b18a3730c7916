//! Kernels of the chunked SSD: the intra-chunk decay-masked score matrices and their gradients.
//! Λ is the chunk-local cumulative sum of dt·A (non-increasing); L[l, s] = exp(Λ_l − Λ_s) for
//! s ≤ l, 0 above the diagonal (the exponent is clamped at 0 first, so nothing overflows).

use cubecl::prelude::*;

/// L[l, s] of head h of (batch b, chunk c), 0 above the diagonal.
#[cube]
fn decay(acs: &Tensor<f32>, b: usize, c: usize, h: usize, l: usize, s: usize) -> f32 {
    let mut v = 0.0f32;
    if s <= l {
        let base = b * acs.stride(0) + c * acs.stride(1) + h * acs.stride(2);
        let mut d = acs[base + l * acs.stride(3)] - acs[base + s * acs.stride(3)];
        if d > 0.0 {
            d = 0.0;
        }
        v = f32::exp(d);
    }
    v
}

/// CB[b, c, g, l, s].
#[cube]
fn cb_at(cb: &Tensor<f32>, b: usize, c: usize, g: usize, l: usize, s: usize) -> f32 {
    cb[b * cb.stride(0) + c * cb.stride(1) + g * cb.stride(2) + l * cb.stride(3) + s * cb.stride(4)]
}

/// scores[b, c, h, l, s] = L[l, s] · CB[b, c, h / heads_per_group, l, s], one thread per element.
#[cube(launch)]
pub fn ssd_decay_scores_kernel(acs: &Tensor<f32>, cb: &Tensor<f32>, out: &mut Tensor<f32>, heads_per_group: u32) {
    let t = acs.shape(3);
    let h = acs.shape(2);
    let c = acs.shape(1);
    let idx = ABSOLUTE_POS;
    if idx >= acs.shape(0) * c * h * t * t {
        terminate!();
    }
    let s = idx % t;
    let l = (idx / t) % t;
    let hh = (idx / (t * t)) % h;
    let cc = (idx / (t * t * h)) % c;
    let bb = idx / (t * t * h * c);
    let mut v = 0.0f32;
    if s <= l {
        v = decay(acs, bb, cc, hh, l, s) * cb_at(cb, bb, cc, hh / heads_per_group as usize, l, s);
    }
    out[bb * out.stride(0) + cc * out.stride(1) + hh * out.stride(2) + l * out.stride(3) + s * out.stride(4)] = v;
}

/// g_cb[b, c, g, l, s] = Σ over the group's heads of gs[h, l, s] · L_h[l, s].
#[cube(launch)]
pub fn ssd_decay_scores_backward_cb_kernel(
    acs: &Tensor<f32>,
    gs: &Tensor<f32>,
    gcb: &mut Tensor<f32>,
    heads_per_group: u32,
) {
    let t = acs.shape(3);
    let groups = gcb.shape(2);
    let c = acs.shape(1);
    let idx = ABSOLUTE_POS;
    if idx >= acs.shape(0) * c * groups * t * t {
        terminate!();
    }
    let s = idx % t;
    let l = (idx / t) % t;
    let g = (idx / (t * t)) % groups;
    let cc = (idx / (t * t * groups)) % c;
    let bb = idx / (t * t * groups * c);
    let hpg = heads_per_group as usize;
    let mut acc = 0.0f32;
    if s <= l {
        for k in 0..hpg {
            let hh = g * hpg + k;
            let gv =
                gs[bb * gs.stride(0) + cc * gs.stride(1) + hh * gs.stride(2) + l * gs.stride(3) + s * gs.stride(4)];
            acc += gv * decay(acs, bb, cc, hh, l, s);
        }
    }
    gcb[bb * gcb.stride(0) + cc * gcb.stride(1) + g * gcb.stride(2) + l * gcb.stride(3) + s * gcb.stride(4)] = acc;
}

/// g_acs[b, c, h, l] = Σ_s P[l, s] − Σ_{l'} P[l', l] with P = gs ⊙ scores (row sums minus column
/// sums: exp(Λ_l − Λ_s) grows with Λ_l and shrinks with Λ_s), one thread per (b, c, h, l).
#[cube(launch)]
pub fn ssd_decay_scores_backward_acs_kernel(
    acs: &Tensor<f32>,
    cb: &Tensor<f32>,
    gs: &Tensor<f32>,
    gacs: &mut Tensor<f32>,
    heads_per_group: u32,
) {
    let t = acs.shape(3);
    let h = acs.shape(2);
    let c = acs.shape(1);
    let idx = ABSOLUTE_POS;
    if idx >= acs.shape(0) * c * h * t {
        terminate!();
    }
    let l = idx % t;
    let hh = (idx / t) % h;
    let cc = (idx / (t * h)) % c;
    let bb = idx / (t * h * c);
    let g = hh / heads_per_group as usize;
    let gbase = bb * gs.stride(0) + cc * gs.stride(1) + hh * gs.stride(2);
    let mut acc = 0.0f32;
    for s in 0..l + 1 {
        acc +=
            gs[gbase + l * gs.stride(3) + s * gs.stride(4)] * decay(acs, bb, cc, hh, l, s) * cb_at(cb, bb, cc, g, l, s);
    }
    for r in l..t {
        acc -=
            gs[gbase + r * gs.stride(3) + l * gs.stride(4)] * decay(acs, bb, cc, hh, r, l) * cb_at(cb, bb, cc, g, r, l);
    }
    gacs[bb * gacs.stride(0) + cc * gacs.stride(1) + hh * gacs.stride(2) + l * gacs.stride(3)] = acc;
}
