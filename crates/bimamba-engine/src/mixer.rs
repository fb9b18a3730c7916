//! The Mamba-2 mixer (SPEC §1), one code path for a block of T tokens: T = 1 is a decode step,
//! T > 1 is prefill. Prefill gains by reading every projection weight once per block of tokens
//! (a matrix-matrix product) and by running the scan with each head's state kept in cache
//! ("blocked scan"); the recurrence itself is applied token by token, so prefilling N tokens
//! leaves exactly the state N single steps leave.
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

use bimamba_kernels::ssm;
use rayon::prelude::*;

use crate::config::Config;
use crate::linear::Linear;
use crate::state::{LayerState, SsmState};

/// Weights of one mixer. Shapes are checked at load.
#[derive(Clone, Debug)]
pub struct Mixer {
    /// [d_in_proj, d_model]
    pub in_proj: Linear,
    /// [conv_dim, d_conv]
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

pub fn silu(v: f32) -> f32 {
    v / (1.0 + (-v).exp())
}

pub fn softplus(v: f32) -> f32 {
    // As torch: linear above 20 to avoid overflow.
    if v > 20.0 {
        v
    } else {
        v.exp().ln_1p()
    }
}

/// In-place RMSNorm of one vector: v ← v / sqrt(mean(v²) + eps) ⊙ w.
pub fn rms_norm(v: &mut [f32], w: &[f32], eps: f64) {
    let ms: f64 = v.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>() / v.len() as f64;
    let inv = (1.0 / (ms + eps).sqrt()) as f32;
    for (x, g) in v.iter_mut().zip(w) {
        *x = *x * inv * g;
    }
}

impl Mixer {
    /// Runs the mixer over `t` tokens, updating `state` in place.
    ///
    /// # Shapes
    /// - `u`: [t, d_model] (already RMS-normed)
    /// - returns [t, d_model]
    pub fn forward(
        &self,
        cfg: &Config,
        state: &mut LayerState,
        u: &[f32],
        t: usize,
        observe: &mut dyn FnMut(Proj, &[f32], usize),
    ) -> Vec<f32> {
        let d_inner = cfg.d_inner();
        let (h_n, p_n, n_n, g_n) = (cfg.nheads, cfg.headdim, cfg.d_state, cfg.ngroups);
        let conv_dim = cfg.conv_dim();
        let dip = cfg.d_in_proj();

        observe(Proj::In, u, t);
        let mut zxbcdt = vec![0.0f32; t * dip]; // [t, d_in_proj]
        self.in_proj.forward(u, t, &mut zxbcdt);

        // Causal depthwise conv over [old window | new tokens], then SiLU. xbc: [t, conv_dim].
        let xbc = self.conv(cfg, state, &zxbcdt, t);

        // dt: [t, H]
        let mut dt = vec![0.0f32; t * h_n];
        for k in 0..t {
            for h in 0..h_n {
                let raw = zxbcdt[k * dip + 2 * d_inner + 2 * g_n * n_n + h] + self.dt_bias[h];
                dt[k * h_n + h] = (softplus(raw) as f64).clamp(cfg.dt_limit.0, cfg.dt_limit.1) as f32;
            }
        }

        // Scan, parallel over heads; each head's [P, N] state stays in cache across the block.
        let hpg = cfg.heads_per_group();
        let scan_head = |h: usize, step: &mut dyn FnMut(&[f32], &[f32], &[f32], f32, f32, &mut [f32])| {
            let g = h / hpg;
            let mut y = vec![0.0f32; t * p_n]; // [t, P]
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
            y
        };
        let heads: Vec<Vec<f32>> = match &mut state.ssm {
            SsmState::F32(ssm) => ssm
                .par_chunks_mut(p_n * n_n)
                .enumerate()
                .map(|(h, s)| scan_head(h, &mut |x, b, c, dtv, decay, yk| ssm::head_step(s, x, b, c, dtv, decay, yk)))
                .collect(),
            // Same recurrence, S stored as bf16 and rounded once per token (prefill included).
            SsmState::Bf16(ssm) => ssm
                .par_chunks_mut(p_n * n_n)
                .enumerate()
                .map(|(h, s)| {
                    scan_head(h, &mut |x, b, c, dtv, decay, yk| ssm::head_step_bf16(s, x, b, c, dtv, decay, yk))
                })
                .collect(),
        };

        // Gate and grouped RMSNorm, per token. y: [t, d_inner]
        let mut y = vec![0.0f32; t * d_inner];
        let gsize = d_inner / g_n;
        for k in 0..t {
            let yk = &mut y[k * d_inner..(k + 1) * d_inner];
            for (h, hy) in heads.iter().enumerate() {
                yk[h * p_n..(h + 1) * p_n].copy_from_slice(&hy[k * p_n..(k + 1) * p_n]);
            }
            let z = &zxbcdt[k * dip..k * dip + d_inner];
            if !cfg.gated_norm {
                yk.iter_mut().zip(z).for_each(|(v, &zv)| *v *= silu(zv));
            } else if cfg.norm_before_gate {
                for (yg, wg) in yk.chunks_exact_mut(gsize).zip(self.norm_weight.chunks_exact(gsize)) {
                    rms_norm(yg, wg, cfg.norm_eps);
                }
                yk.iter_mut().zip(z).for_each(|(v, &zv)| *v *= silu(zv));
            } else {
                yk.iter_mut().zip(z).for_each(|(v, &zv)| *v *= silu(zv));
                for (yg, wg) in yk.chunks_exact_mut(gsize).zip(self.norm_weight.chunks_exact(gsize)) {
                    rms_norm(yg, wg, cfg.norm_eps);
                }
            }
        }

        observe(Proj::Out, &y, t);
        let mut out = vec![0.0f32; t * cfg.d_model];
        self.out_proj.forward(&y, t, &mut out);
        out
    }

    /// Causal depthwise conv with the carried window, SiLU applied; updates the window.
    ///
    /// # Shapes
    /// - `zxbcdt`: [t, d_in_proj]; returns xBC [t, conv_dim]
    fn conv(&self, cfg: &Config, state: &mut LayerState, zxbcdt: &[f32], t: usize) -> Vec<f32> {
        let (conv_dim, kw, dip, off) = (cfg.conv_dim(), cfg.d_conv, cfg.d_in_proj(), cfg.d_inner());
        // Input of token k (k may be negative: the carried window supplies the last kw-1 inputs).
        let input = |k: isize, c: usize, window: &[f32]| -> f32 {
            if k >= 0 {
                zxbcdt[k as usize * dip + off + c]
            } else {
                window[c * kw + (kw as isize + k) as usize]
            }
        };
        // Row-major over tokens so every access to zxbcdt and out is sequential.
        let mut out = vec![0.0f32; t * conv_dim];
        for k in 0..t {
            let row = &mut out[k * conv_dim..(k + 1) * conv_dim];
            row.copy_from_slice(&self.conv_bias);
            for j in 0..kw {
                // Tap j multiplies the input kw-1-j tokens back.
                let src = k as isize - (kw - 1 - j) as isize;
                if src >= 0 {
                    let x = &zxbcdt[src as usize * dip + off..src as usize * dip + off + conv_dim];
                    for (c, (o, xv)) in row.iter_mut().zip(x).enumerate() {
                        *o += self.conv_weight[c * kw + j] * xv;
                    }
                } else {
                    for (c, o) in row.iter_mut().enumerate() {
                        *o += self.conv_weight[c * kw + j] * input(src, c, &state.conv);
                    }
                }
            }
            row.iter_mut().for_each(|v| *v = silu(*v));
        }
        // New window: the last kw inputs of each channel, oldest first.
        let old = state.conv.clone();
        for c in 0..conv_dim {
            for j in 0..kw {
                state.conv[c * kw + j] = input(t as isize - kw as isize + j as isize, c, &old);
            }
        }
        out
    }
}
