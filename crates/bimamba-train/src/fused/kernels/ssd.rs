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

/// Rows of the score matrix one cube of [`ssd_decay_scores_backward_acs_kernel`] takes at once
/// (one per 32-thread lane group), and the longest chunk it handles (its shared arrays, and 32
/// column sums in each thread's registers).
const ACS_ROWS: usize = 8;
const ACS_LANES: usize = 32;
pub const ACS_MAX_CHUNK: usize = 1024;
const ACS_COLS_PER_LANE: usize = ACS_MAX_CHUNK / ACS_LANES;

/// g_acs[b, c, h, l] = Σ_s P[l, s] − Σ_{l'} P[l', l] with P = gs ⊙ scores (row sums minus column
/// sums: exp(Λ_l − Λ_s) grows with Λ_l and shrinks with Λ_s). One cube of 256 threads per
/// (b, c, h): 8 rows at a time, 32 lanes along each row (coalesced loads of gs and C·Bᵀ), every
/// element of P computed once. A row's lanes meet in shared memory; each thread keeps the column
/// sums of its columns (lane, lane + 32, …) over its rows in registers, and the 8 row lanes'
/// column sums meet in shared memory at the end.
#[cube(launch)]
#[allow(clippy::manual_div_ceil)]
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
    let z = CUBE_POS_X as usize;
    let hh = z % h;
    let cc = (z / h) % c;
    let bb = z / (h * c);
    let g = hh / heads_per_group as usize;
    let unit = UNIT_POS_X as usize;
    let lane = unit % ACS_LANES;
    let row = unit / ACS_LANES;
    let mut lam = SharedMemory::<f32>::new(ACS_MAX_CHUNK);
    let mut rows = SharedMemory::<f32>::new(ACS_MAX_CHUNK);
    let mut cols = SharedMemory::<f32>::new(ACS_MAX_CHUNK);
    let mut part = SharedMemory::<f32>::new(ACS_ROWS * ACS_LANES);
    let abase = bb * acs.stride(0) + cc * acs.stride(1) + hh * acs.stride(2);
    let mut i = unit;
    while i < t {
        lam[i] = acs[abase + i * acs.stride(3)];
        i += ACS_ROWS * ACS_LANES;
    }
    sync_cube();
    let mut colacc = Array::<f32>::new(ACS_COLS_PER_LANE);
    #[unroll]
    for k in 0..ACS_COLS_PER_LANE {
        colacc[k] = 0.0;
    }
    let gbase = bb * gs.stride(0) + cc * gs.stride(1) + hh * gs.stride(2);
    let cbase = bb * cb.stride(0) + cc * cb.stride(1) + g * cb.stride(2);
    // Every thread runs every block (the shared-memory syncs need the whole cube).
    let blocks = (t + ACS_ROWS - 1) / ACS_ROWS;
    for blk in 0..blocks {
        let l = blk * ACS_ROWS + row;
        let mut acc = 0.0f32;
        if l < t {
            let ll = lam[l];
            #[unroll]
            for k in 0..ACS_COLS_PER_LANE {
                let s = lane + k * ACS_LANES;
                if s <= l {
                    let mut d = ll - lam[s];
                    if d > 0.0 {
                        d = 0.0;
                    }
                    let v = gs[gbase + l * gs.stride(3) + s * gs.stride(4)]
                        * f32::exp(d)
                        * cb[cbase + l * cb.stride(3) + s * cb.stride(4)];
                    acc += v;
                    colacc[k] += v;
                }
            }
        }
        part[unit] = acc;
        sync_cube();
        if lane == 0 && l < t {
            let mut sum = 0.0f32;
            for k in 0..ACS_LANES {
                sum += part[unit + k];
            }
            rows[l] = sum;
        }
        sync_cube();
    }
    // The column sums of the 8 row lanes, 32 columns at a time.
    #[unroll]
    for k in 0..ACS_COLS_PER_LANE {
        part[unit] = colacc[k];
        sync_cube();
        let s = lane + k * ACS_LANES;
        if row == 0 && s < t {
            let mut col = 0.0f32;
            for r in 0..ACS_ROWS {
                col += part[r * ACS_LANES + lane];
            }
            cols[s] = col;
        }
        sync_cube();
    }
    let mut l = unit;
    while l < t {
        gacs[bb * gacs.stride(0) + cc * gacs.stride(1) + hh * gacs.stride(2) + l * gacs.stride(3)] = rows[l] - cols[l];
        l += ACS_ROWS * ACS_LANES;
    }
}
