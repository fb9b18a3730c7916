//! Kernels of the whole chunked SSD scan, forward and backward (`../ssd_cube.rs` launches them;
//! the formulas are those of `crate::ssd::backward`, the op-by-op reference is
//! `crate::ssd::ssd_chunked`).
//!
//! Every product of the scan is one launch of a product kernel of `ssd_product.rs`. The rest are
//! small: the chunk-local cumulative sum of dt·A with the decays the products need,
//! the passing of states between chunks (forward, and backward with the chunk totals' gradient),
//! and the per-position finish of the backward (dx, ddt, dA's partial sums).

use cubecl::prelude::*;

use super::cube_sum;

/// Positions the finishing kernel's 256 threads take at once, and threads per position.
const FINISH_ROWS: usize = 8;
const FINISH_LANES: usize = 32;
/// Longest chunk the finishing kernel handles (its shared arrays).
pub const MAX_CHUNK: usize = 1024;

/// Per (batch, chunk, head), one thread each: Λ_s = Σ_{s' ≤ s} dt_{s'}·A_h within the chunk, and
/// the factors the products take: dt_s, exp(Λ_s), w_s = exp(Λ_end − Λ_s) and dt_s·w_s. dt is read
/// as [b, positions, H] (positions = chunks · T); the outputs are [b, c, H, T].
#[cube(launch)]
pub fn ssd_chunk_cumsum_kernel(
    dt: &Tensor<f32>,
    a: &Tensor<f32>,
    acs: &mut Tensor<f32>,
    dts: &mut Tensor<f32>,
    ex: &mut Tensor<f32>,
    wend: &mut Tensor<f32>,
    dtw: &mut Tensor<f32>,
) {
    let t = acs.shape(3);
    let h = acs.shape(2);
    let c = acs.shape(1);
    let idx = ABSOLUTE_POS;
    if idx >= acs.shape(0) * c * h {
        terminate!();
    }
    let hh = idx % h;
    let cc = (idx / h) % c;
    let bb = idx / (h * c);
    let ah = a[hh * a.stride(0)];
    let o = bb * acs.stride(0) + cc * acs.stride(1) + hh * acs.stride(2);
    let mut s = 0.0f32;
    for i in 0..t {
        let d = dt[bb * dt.stride(0) + (cc * t + i) * dt.stride(1) + hh * dt.stride(2)];
        s += d * ah;
        acs[o + i * acs.stride(3)] = s;
        dts[o + i * dts.stride(3)] = d;
        ex[o + i * ex.stride(3)] = f32::exp(s);
    }
    for i in 0..t {
        let w = f32::exp(s - acs[o + i * acs.stride(3)]);
        wend[o + i * wend.stride(3)] = w;
        dtw[o + i * dtw.stride(3)] = dts[o + i * dts.stride(3)] * w;
    }
}

/// The states entering each chunk, one thread per (batch, head, state element):
/// S_in[0] = 0, S_in[z + 1] = exp(Λ_end[z]) · S_in[z] + states[z]; the last one is the final
/// state. states, s_in: [b, c, H, P·N]; fin: [b, H, P·N].
#[cube(launch)]
pub fn ssd_state_pass_kernel(states: &Tensor<f32>, acs: &Tensor<f32>, s_in: &mut Tensor<f32>, fin: &mut Tensor<f32>) {
    let e_total = states.shape(3);
    let h = states.shape(2);
    let c = states.shape(1);
    let t = acs.shape(3);
    let idx = ABSOLUTE_POS;
    if idx >= states.shape(0) * h * e_total {
        terminate!();
    }
    let e = idx % e_total;
    let hh = (idx / e_total) % h;
    let bb = idx / (e_total * h);
    let mut s = 0.0f32;
    for z in 0..c {
        s_in[bb * s_in.stride(0) + z * s_in.stride(1) + hh * s_in.stride(2) + e * s_in.stride(3)] = s;
        let total = acs[bb * acs.stride(0) + z * acs.stride(1) + hh * acs.stride(2) + (t - 1) * acs.stride(3)];
        let own = states[bb * states.stride(0) + z * states.stride(1) + hh * states.stride(2) + e * states.stride(3)];
        s = f32::exp(total) * s + own;
    }
    fin[bb * fin.stride(0) + hh * fin.stride(1) + e * fin.stride(2)] = s;
}

/// Λ_end of chunk z of head hh: the chunk's total decay exponent.
#[cube]
fn chunk_total(acs: &Tensor<f32>, bb: usize, z: usize, hh: usize, t: usize) -> f32 {
    acs[bb * acs.stride(0) + z * acs.stride(1) + hh * acs.stride(2) + (t - 1) * acs.stride(3)]
}

/// The offset of (batch, chunk, head) in a tensor indexed [b, c, H, ...].
#[cube]
fn row_of(v: &Tensor<f32>, bb: usize, cc: usize, hh: usize) -> usize {
    bb * v.stride(0) + cc * v.stride(1) + hh * v.stride(2)
}

/// Threads of a state-passing-backward cube, each one state element.
pub const STATE_PASS_THREADS: usize = 256;

/// The state passing backward, chunks last to first, one thread per (batch, head, state element)
/// in cubes of [`STATE_PASS_THREADS`] elements (grid: x over element blocks, y heads, z batch):
/// dstates[z] = dS_in[z + 1] + exp(Λ_end[z + 1]) · dstates[z + 1] (0 for the last chunk: the final
/// state has no gradient), and the block's share of the gradient of chunk z's total decay,
/// dtot[z] = exp(Λ_end[z]) · Σ dstates[z] ⊙ S_in[z], written to dtot_part[block] (summed over the
/// blocks afterwards). dsin, s_in, dstates: [b, c, H, P·N]; dtot_part: [blocks, b, c, H].
#[cube(launch)]
pub fn ssd_state_pass_backward_kernel(
    dsin: &Tensor<f32>,
    s_in: &Tensor<f32>,
    acs: &Tensor<f32>,
    dstates: &mut Tensor<f32>,
    dtot_part: &mut Tensor<f32>,
) {
    let e_total = dsin.shape(3);
    let c = dsin.shape(1);
    let t = acs.shape(3);
    let blk = CUBE_POS_X as usize;
    let hh = CUBE_POS_Y as usize;
    let bb = CUBE_POS_Z as usize;
    let unit = UNIT_POS_X as usize;
    let e = blk * STATE_PASS_THREADS + unit;
    let inside = e < e_total;
    // dstates of the chunk after the current one, carried in a register.
    let mut g = 0.0f32;
    for zi in 0..c {
        let z = c - 1 - zi;
        let mut part = 0.0f32;
        if inside {
            if z + 1 < c {
                g = dsin[row_of(dsin, bb, z + 1, hh) + e * dsin.stride(3)]
                    + f32::exp(chunk_total(acs, bb, z + 1, hh, t)) * g;
            }
            dstates[row_of(dstates, bb, z, hh) + e * dstates.stride(3)] = g;
            part = g * s_in[row_of(s_in, bb, z, hh) + e * s_in.stride(3)];
        }
        let sum = cube_sum(part);
        if unit == 0 {
            dtot_part[blk * dtot_part.stride(0)
                + bb * dtot_part.stride(1)
                + z * dtot_part.stride(2)
                + hh * dtot_part.stride(3)] = f32::exp(chunk_total(acs, bb, z, hh, t)) * sum;
        }
    }
}

/// The backward's last step, one cube of 256 threads per (batch, chunk, head). With dx̄ = dxd +
/// dxs (the gradients of x̄ = dt ⊙ x through the intra-chunk scores and through the chunk state):
/// - dx = dt ⊙ dx̄;
/// - dΛ_s = dΛ_diag[s] + Σ_p dy ⊙ y_off − q_s with q_s = Σ_p x̄ ⊙ dxs, and the chunk's last
///   position also gets dtot + Σ_s q_s;
/// - dda = the reverse cumulative sum of dΛ over the chunk (Λ = cumsum(dt·A));
/// - ddt = A_h · dda + Σ_p x ⊙ dx̄, and dA's partial sum Σ_s dt_s · dda_s.
///
/// The [b, c, H, T, P] tensors are views; dx is a view of the [b, positions, H, P] output and
/// ddt of the [b, positions, H] one; dapart is [b, c, H]. The threads take [`FINISH_ROWS`]
/// positions at a time, [`FINISH_LANES`] threads per position reading consecutive channels (so
/// the loads of a warp are coalesced), and the channel sums of each position meet in shared
/// memory.
#[cube(launch)]
#[allow(clippy::too_many_arguments, clippy::manual_div_ceil, clippy::collapsible_if)]
pub fn ssd_finish_kernel(
    x: &Tensor<f32>,
    dy: &Tensor<f32>,
    dxd: &Tensor<f32>,
    dxs: &Tensor<f32>,
    yoff: &Tensor<f32>,
    dts: &Tensor<f32>,
    dldiag: &Tensor<f32>,
    dtot: &Tensor<f32>,
    a: &Tensor<f32>,
    dx: &mut Tensor<f32>,
    ddt: &mut Tensor<f32>,
    dapart: &mut Tensor<f32>,
) {
    let p_total = x.shape(4);
    let t = x.shape(3);
    let h = x.shape(2);
    let c = x.shape(1);
    let z = CUBE_POS_X as usize;
    let hh = z % h;
    let cc = (z / h) % c;
    let bb = z / (h * c);
    let unit = UNIT_POS_X as usize;
    let lane = unit % FINISH_LANES;
    let row = unit / FINISH_LANES;
    let mut dl = SharedMemory::<f32>::new(MAX_CHUNK);
    let mut xd = SharedMemory::<f32>::new(MAX_CHUNK);
    let mut sh_xdx = SharedMemory::<f32>::new(256usize);
    let mut sh_xq = SharedMemory::<f32>::new(256usize);
    let mut sh_off = SharedMemory::<f32>::new(256usize);

    let xb = row_of(x, bb, cc, hh);
    let dyb = row_of(dy, bb, cc, hh);
    let db = row_of(dxd, bb, cc, hh);
    let sb = row_of(dxs, bb, cc, hh);
    let yb = row_of(yoff, bb, cc, hh);
    let ob = row_of(dx, bb, cc, hh);
    let tb = row_of(dts, bb, cc, hh);
    let lb = row_of(dldiag, bb, cc, hh);

    let mut qpart = 0.0f32;
    // Every thread runs every block (the shared-memory syncs need the whole cube).
    let blocks = (t + FINISH_ROWS - 1) / FINISH_ROWS;
    for blk in 0..blocks {
        let s = blk * FINISH_ROWS + row;
        let mut xdx = 0.0f32;
        let mut xq = 0.0f32;
        let mut off = 0.0f32;
        if s < t {
            let d = dts[tb + s * dts.stride(3)];
            let mut p = lane;
            while p < p_total {
                let xv = x[xb + s * x.stride(3) + p * x.stride(4)];
                let ds = dxs[sb + s * dxs.stride(3) + p * dxs.stride(4)];
                let dbar = dxd[db + s * dxd.stride(3) + p * dxd.stride(4)] + ds;
                dx[ob + s * dx.stride(3) + p * dx.stride(4)] = d * dbar;
                xdx += xv * dbar;
                xq += xv * ds;
                off +=
                    dy[dyb + s * dy.stride(3) + p * dy.stride(4)] * yoff[yb + s * yoff.stride(3) + p * yoff.stride(4)];
                p += FINISH_LANES;
            }
        }
        sh_xdx[unit] = xdx;
        sh_xq[unit] = xq;
        sh_off[unit] = off;
        sync_cube();
        if lane == 0 {
            if s < t {
                let mut sum_xdx = 0.0f32;
                let mut sum_xq = 0.0f32;
                let mut sum_off = 0.0f32;
                for i in 0..FINISH_LANES {
                    sum_xdx += sh_xdx[unit + i];
                    sum_xq += sh_xq[unit + i];
                    sum_off += sh_off[unit + i];
                }
                let q = dts[tb + s * dts.stride(3)] * sum_xq;
                qpart += q;
                dl[s] = dldiag[lb + s * dldiag.stride(3)] + sum_off - q;
                xd[s] = sum_xdx;
            }
        }
        sync_cube();
    }
    let qsum = cube_sum(qpart);
    if unit == 0 {
        let last = dl[t - 1] + qsum + dtot[bb * dtot.stride(0) + cc * dtot.stride(1) + hh * dtot.stride(2)];
        dl[t - 1] = last;
        // Reverse cumulative sum, in place.
        let mut run = 0.0f32;
        for i in 0..t {
            let k = t - 1 - i;
            run += dl[k];
            dl[k] = run;
        }
    }
    sync_cube();
    let ah = a[hh * a.stride(0)];
    let mut apart = 0.0f32;
    let mut s = unit;
    while s < t {
        let d = dts[tb + s * dts.stride(3)];
        ddt[bb * ddt.stride(0) + cc * ddt.stride(1) + hh * ddt.stride(2) + s * ddt.stride(3)] = ah * dl[s] + xd[s];
        apart += d * dl[s];
        s += 256;
    }
    let asum = cube_sum(apart);
    if unit == 0 {
        dapart[bb * dapart.stride(0) + cc * dapart.stride(1) + hh * dapart.stride(2)] = asum;
    }
}
