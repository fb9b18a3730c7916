//! The Mamba-2 mixer (ARCHITECTURE.md §1.2), one code path for a block of T tokens: T = 1 is a decode step,
//! T > 1 is prefill. Prefill gains by reading every projection weight once per block of tokens
//! (a matrix-matrix product) and by running the scan with each head's state kept in cache
//! ("blocked scan"). With an f32 state (the exact arithmetic) the recurrence is applied token by
//! token, and prefilling N tokens leaves exactly the state N single steps leave. A bf16 state is
//! widened to f32 for a prefill block and rounded once at its end (steps round after every
//! token), and the block runs the SSD's chunked matrix form where the CPU has its kernel
//! (`bimamba_kernels::ssd`: the same recurrence with its sums in another order), so the two agree
//! to bf16 rounding.
//!
//! Per token, per head h (group g = h / (H/G)):
//! ```text
//! zxbcdt   = in_proj(u)                         -> z [d_inner] | xBC [conv_dim] | dt [H]
//! xBC      = SiLU(conv1d_causal(xBC) + bias)    -> x [H,P] | B [G,N] | C [G,N]
//! dt       = softplus(dt + dt_bias), clamped to dt_limit;   A = -exp(A_log)
//! S[h,p,n] = exp(dt·A)·S[h,p,n] + dt·x[h,p]·B[g,n]
//! y[h,p]   = Σ_n S[h,p,n]·C[g,n] + D[h]·x[h,p]
//! y        = RMSNorm_per_group(y ⊙ SiLU(z)) ⊙ norm.weight      (norm_before_gate = false)
//! out      = out_proj(y)
//! ```

use bimamba_kernels::{selected_isa, ssd, ssm};
use rayon::prelude::*;

use crate::activation::{mul_silu, silu_in_place};
use crate::config::Config;
use crate::linear::{BinaryAct, Linear};
use crate::profile::{Section, Timer};
use crate::state::{LayerState, SsmState};
use crate::workspace::{prefix, Workspace};

/// Weights of one mixer. Shapes are checked at load.
#[derive(Clone, Debug)]
pub struct Mixer {
    /// [d_in_proj, d_model]
    pub in_proj: Linear,
    /// [d_conv, conv_dim]: tap-major (checkpoints store [conv_dim, d_conv]; see
    /// [`conv_taps_major`]), so that each tap is one contiguous, vectorizable row.
    pub conv_weight: Vec<f32>,
    /// [conv_dim]
    pub conv_bias: Vec<f32>,
    /// [H]
    pub dt_bias: Vec<f32>,
    /// [H], A = -exp(A_log), precomputed at load.
    pub a: Vec<f32>,
    /// [H]
    pub d: Vec<f32>,
    /// [d_inner]; empty when the config has no gated norm.
    pub norm_weight: Vec<f32>,
    /// [d_model, d_inner]
    pub out_proj: Linear,
}

/// Which projection an observer sees (used by calibration of post-training quantizers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proj {
    In,
    Out,
}

pub fn softplus(v: f32) -> f32 {
    // As torch: linear above 20 to avoid overflow.
    if v > 20.0 {
        v
    } else {
        v.exp().ln_1p()
    }
}

/// One head's state update and readout for one token: `(x, B, C, dt, decay, y)`, as
/// `ssm::head_step` computes it.
type HeadStep<'a> = dyn FnMut(&[f32], &[f32], &[f32], f32, f32, &mut [f32]) + 'a;

/// A checkpoint's conv weight [conv_dim, d_conv] in the mixer's tap-major layout [d_conv, conv_dim].
pub fn conv_taps_major(w: &[f32], d_conv: usize) -> Vec<f32> {
    let conv_dim = w.len().checked_div(d_conv).unwrap_or(0);
    let mut t = vec![0.0; w.len()];
    for c in 0..conv_dim {
        for j in 0..d_conv {
            t[j * conv_dim + c] = w[c * d_conv + j];
        }
    }
    t
}

/// In-place RMSNorm of one vector: v ← v / sqrt(mean(v²) + eps) ⊙ w.
/// The sum of squares runs in f64 over eight interleaved lanes (vectorizes).
pub fn rms_norm(v: &mut [f32], w: &[f32], eps: f64) {
    let mut lanes = [0.0f64; 8];
    let chunks = v.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&x| (x as f64) * (x as f64)).sum();
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l += (x as f64) * (x as f64);
        }
    }
    let ms = (lanes.iter().sum::<f64>() + tail) / v.len() as f64;
    let inv = (1.0 / (ms + eps).sqrt()) as f32;
    for (x, g) in v.iter_mut().zip(w) {
        *x = *x * inv * g;
    }
}

impl Mixer {
    /// Runs the mixer over `t` tokens, updating `state` in place; `act` is the activation
    /// precision of the 1-bit projections. Reads its input from `ws.u`, writes its output to
    /// `ws.out`, and keeps every temporary in `ws` (see [`Workspace`] for the buffers).
    ///
    /// # Shapes
    /// - `ws.u[..t * d_model]`: [t, d_model] (already RMS-normed)
    /// - `ws.out[..t * d_model]`: [t, d_model] (written)
    pub fn forward(
        &self,
        cfg: &Config,
        state: &mut LayerState,
        t: usize,
        act: BinaryAct,
        observe: &mut dyn FnMut(Proj, &[f32], usize),
        ws: &mut Workspace,
    ) {
        let d_inner = cfg.d_inner();
        let (h_n, p_n, n_n, g_n) = (cfg.nheads, cfg.headdim, cfg.d_state, cfg.ngroups);
        let conv_dim = cfg.conv_dim();
        let dip = cfg.d_in_proj();
        let Workspace { u, zxbcdt, xbc, dt, ys, y, out, xs } = ws;
        let u = prefix(u, t * cfg.d_model);

        let mut timer = Timer::start();
        observe(Proj::In, u, t);
        let zxbcdt = prefix(zxbcdt, t * dip); // [t, d_in_proj]
        self.in_proj.forward_with(u, t, zxbcdt, act, xs);
        let zxbcdt = &*zxbcdt;
        timer.lap(Section::InProj);

        // Causal depthwise conv over [old window | new tokens], then SiLU. xbc: [t, conv_dim].
        let xbc = prefix(xbc, t * conv_dim);
        self.conv(cfg, state, zxbcdt, t, xbc, true);
        let xbc = &*xbc;
        timer.lap(Section::Conv);

        // dt: [t, H]
        let dt = prefix(dt, t * h_n);
        for k in 0..t {
            for h in 0..h_n {
                let raw = zxbcdt[k * dip + 2 * d_inner + 2 * g_n * n_n + h] + self.dt_bias[h];
                dt[k * h_n + h] = (softplus(raw) as f64).clamp(cfg.dt_limit.0, cfg.dt_limit.1) as f32;
            }
        }

        let dt = &*dt;
        timer.lap(Section::Dt);

        // Scan, parallel over heads; each head's [P, N] state stays in cache across the block.
        let hpg = cfg.heads_per_group();
        // ys: [H, t, P], written by the scan in place (no per-head allocation on the workers).
        let ys = prefix(ys, h_n * t * p_n);
        let scan_head = |h: usize, y: &mut [f32], step: &mut HeadStep<'_>| {
            let g = h / hpg;
            for k in 0..t {
                let row = &xbc[k * conv_dim..(k + 1) * conv_dim];
                let x = &row[h * p_n..(h + 1) * p_n];
                let b = &row[d_inner + g * n_n..d_inner + (g + 1) * n_n];
                let c = &row[d_inner + g_n * n_n + g * n_n..d_inner + g_n * n_n + (g + 1) * n_n];
                let dtv = dt[k * h_n + h];
                let decay = (dtv * self.a[h]).exp();
                let yk = &mut y[k * p_n..(k + 1) * p_n];
                // S ← decay·S + dt·x⊗B and y = S·C, each state row touched once.
                step(x, b, c, dtv, decay, yk);
                for (v, xv) in yk.iter_mut().zip(x) {
                    *v += self.d[h] * xv;
                }
            }
        };
        // Head h's dt and decay exp(dt·A) per token, and its skip term y += D·x.
        let head_dt = |h: usize| {
            let dts: Vec<f32> = (0..t).map(|k| dt[k * h_n + h]).collect();
            let decays: Vec<f32> = dts.iter().map(|&dtv| (dtv * self.a[h]).exp()).collect();
            (dts, decays)
        };
        let add_skip = |h: usize, y: &mut [f32]| {
            for (yk, row) in y.chunks_exact_mut(p_n.max(1)).zip(xbc.chunks_exact(conv_dim.max(1))) {
                for (v, xv) in yk.iter_mut().zip(&row[h * p_n..(h + 1) * p_n]) {
                    *v += self.d[h] * xv;
                }
            }
        };
        let y_heads = ys.par_chunks_mut((t * p_n).max(1));
        match &mut state.ssm {
            // Several tokens per state row load (`head_steps`, bit-identical to token by token).
            SsmState::F32(ssm) => ssm.par_chunks_mut(p_n * n_n).zip(y_heads).enumerate().for_each(|(h, (s, y))| {
                let (dts, decays) = head_dt(h);
                ssm::head_steps(s, p_n, n_n, &head_block(cfg, xbc, h, &dts, &decays), y);
                add_skip(h, y);
            }),
            // Decode: same recurrence, S stored as bf16 and rounded once per token.
            SsmState::Bf16(ssm) if t == 1 => {
                ssm.par_chunks_mut(p_n * n_n).zip(y_heads).enumerate().for_each(|(h, (s, y))| {
                    scan_head(h, y, &mut |x, b, c, dtv, decay, yk| ssm::head_step_bf16(s, x, b, c, dtv, decay, yk))
                })
            }
            // Prefill of a bf16 state: widened to f32 for the block, rounded to bf16 once at the
            // block's end. In between, where the CPU and shape have the kernel, the chunked SSD
            // (`ssd::head_chunks`) over the first `t_c` tokens, with each group's C·Bᵀ products
            // computed once for its heads; the register-blocked scan
            // (`ssm::head_steps_prefill`) over the rest (a short last chunk, or everything).
            SsmState::Bf16(ssm) => {
                let q = ssd::PREFILL_CHUNK;
                let t_c =
                    if ssd::chunked_supported(selected_isa(), p_n, n_n, q) { ssd::chunked_tokens(t, q) } else { 0 };
                let groups: Vec<ssd::GroupChunks> = if t_c > 0 {
                    let no_dt = vec![0.0f32; t_c];
                    (0..g_n)
                        .map(|g| ssd::GroupChunks::new(&head_block(cfg, xbc, g * hpg, &no_dt, &no_dt), n_n, q))
                        .collect()
                } else {
                    Vec::new()
                };
                ssm.par_chunks_mut(p_n * n_n).zip(y_heads).enumerate().for_each(|(h, (s, y))| {
                    let (dts, decays) = head_dt(h);
                    let mut wide: Vec<f32> = s.iter().map(|&v| ssm::bf16_widen(v)).collect();
                    let (y_c, y_r) = y.split_at_mut(t_c * p_n);
                    if t_c > 0 {
                        let blk = head_block(cfg, xbc, h, &dts[..t_c], &decays[..t_c]);
                        ssd::head_chunks(&mut wide, p_n, n_n, &blk, &groups[h / hpg], y_c);
                    }
                    if t_c < t {
                        let rest = &xbc[t_c * conv_dim..];
                        let blk = head_block(cfg, rest, h, &dts[t_c..], &decays[t_c..]);
                        ssm::head_steps_prefill(&mut wide, p_n, n_n, &blk, y_r);
                    }
                    for (d, v) in s.iter_mut().zip(&wide) {
                        *d = ssm::bf16_round(*v);
                    }
                    add_skip(h, y);
                })
            }
        }

        timer.lap(Section::Scan);

        // Gate and grouped RMSNorm, per token (tokens in parallel in prefill). y: [t, d_inner]
        let ys = &*ys;
        let y = prefix(y, t * d_inner);
        let gate = |k: usize, yk: &mut [f32]| {
            for (h, hy) in ys.chunks_exact((t * p_n).max(1)).enumerate().take(h_n) {
                yk[h * p_n..(h + 1) * p_n].copy_from_slice(&hy[k * p_n..(k + 1) * p_n]);
            }
            self.gate_norm(cfg, yk, &zxbcdt[k * dip..k * dip + d_inner]);
        };
        if t == 1 {
            gate(0, y);
        } else {
            y.par_chunks_mut(d_inner.max(1)).enumerate().for_each(|(k, yk)| gate(k, yk));
        }

        timer.lap(Section::Gate);
        observe(Proj::Out, y, t);
        let out = prefix(out, t * cfg.d_model);
        self.out_proj.forward_with(y, t, out, act, xs);
        timer.lap(Section::OutProj);
    }

    /// The output gate of one token's y (d_inner), in place: y ⊙ SiLU(z), with the grouped
    /// RMSNorm before or after it when the config has one.
    pub(crate) fn gate_norm(&self, cfg: &Config, y: &mut [f32], z: &[f32]) {
        let gsize = cfg.d_inner() / cfg.ngroups;
        let norm = |y: &mut [f32]| {
            for (yg, wg) in y.chunks_exact_mut(gsize).zip(self.norm_weight.chunks_exact(gsize)) {
                rms_norm(yg, wg, cfg.norm_eps);
            }
        };
        if !cfg.gated_norm {
            mul_silu(y, z);
        } else if cfg.norm_before_gate {
            norm(y);
            mul_silu(y, z);
        } else {
            mul_silu(y, z);
            norm(y);
        }
    }

    /// Causal depthwise conv with the carried window, SiLU applied; updates the window.
    ///
    /// `out[k, c] = SiLU(bias[c] + Σ_j w[j, c] · in[k − (kw−1) + j, c])`, the taps added in
    /// order j = 0, 1, ... (as the f32 reference does), where inputs before the block come from the
    /// carried window (`state.conv`: [kw, conv_dim], oldest first).
    ///
    /// # Shapes
    /// - `zxbcdt`: [t, d_in_proj]; `out`: xBC [t, conv_dim] (overwritten)
    ///
    /// `split`: whether a single token's channels may be split over two rayon tasks (decode of
    /// one sequence); a batched step, already parallel over sequences, passes false.
    pub(crate) fn conv(
        &self,
        cfg: &Config,
        state: &mut LayerState,
        zxbcdt: &[f32],
        t: usize,
        out: &mut [f32],
        split: bool,
    ) {
        let (conv_dim, kw, dip, off) = (cfg.conv_dim(), cfg.d_conv, cfg.d_in_proj(), cfg.d_inner());
        let input = |k: usize| &zxbcdt[k * dip + off..k * dip + off + conv_dim];
        let past = &state.conv;
        debug_assert_eq!(out.len(), t * conv_dim);
        // Channels [c0, c0 + seg.len()) of token k; every element's sum runs in the same order
        // however the work is split.
        let conv_part = |k: usize, c0: usize, seg: &mut [f32]| {
            let c1 = c0 + seg.len();
            seg.copy_from_slice(&self.conv_bias[c0..c1]);
            for j in 0..kw {
                // Tap j multiplies the input kw-1-j tokens back: token k + j - (kw-1), or window
                // slot kw + (k + j - (kw-1)) when that is before the block.
                let x = match (k + j).checked_sub(kw - 1) {
                    Some(src) => &input(src)[c0..c1],
                    None => &past[(k + j + 1) * conv_dim + c0..(k + j + 1) * conv_dim + c1],
                };
                let w = &self.conv_weight[j * conv_dim + c0..j * conv_dim + c1];
                for ((o, xv), wv) in seg.iter_mut().zip(x).zip(w) {
                    *o += wv * xv;
                }
            }
            silu_in_place(seg);
        };
        if t == 1 && !split {
            conv_part(0, 0, out);
        } else if t == 1 {
            // Decode: channel halves on two threads (the weights and window come from DRAM).
            let half = conv_dim.div_ceil(2).next_multiple_of(16).max(16);
            out.par_chunks_mut(half).enumerate().for_each(|(i, seg)| conv_part(0, i * half, seg));
        } else {
            out.par_chunks_mut(conv_dim.max(1)).enumerate().for_each(|(k, row)| conv_part(k, 0, row));
        }
        // New window: the last kw inputs, oldest first. Old slots t.. move down to 0..kw-t; the
        // rest are the block's last inputs.
        let keep = kw.saturating_sub(t);
        state.conv.copy_within(t.min(kw) * conv_dim..kw * conv_dim, 0);
        for p in keep..kw {
            state.conv[p * conv_dim..(p + 1) * conv_dim].copy_from_slice(input(t + p - kw));
        }
    }
}

/// Head `h`'s inputs over a block, read in place from `xbc: [t, conv_dim]`.
fn head_block<'a>(cfg: &Config, xbc: &'a [f32], h: usize, dt: &'a [f32], decay: &'a [f32]) -> ssm::HeadBlock<'a> {
    let (p_n, n_n, g_n, d_inner) = (cfg.headdim, cfg.d_state, cfg.ngroups, cfg.d_inner());
    let g = h / cfg.heads_per_group();
    ssm::HeadBlock {
        xbc,
        stride: cfg.conv_dim(),
        x_off: h * p_n,
        b_off: d_inner + g * n_n,
        c_off: d_inner + g_n * n_n + g * n_n,
        dt,
        decay,
    }
}
