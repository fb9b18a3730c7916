//! One decode step of several independent sequences at once (a server's continuous batching).
//!
//! A decode step of one sequence reads every projection weight to multiply it by one token's
//! activations. Here the `n` sequences' tokens go through each projection together as a block
//! of `n` rows, the product that prefill uses, so the weights are read once per step for the
//! whole batch. What is private to a sequence stays per sequence: its conv window, its SSM state
//! (each still read and written once per token) and its position.
//!
//! ```text
//! h[i]      = embedding[token_i]                                   i = 0..n
//! per layer: u = RMSNorm(h) ⊙ norm.weight                          [n, d_model]
//!            zxbcdt = in_proj(u)                                   one product, n rows
//!            xBC[i], S_i, y[i] = conv and scan of sequence i on its own state
//!            h += out_proj(gate(y))                                one product, n rows
//! logits    = lm_head(RMSNorm(h) ⊙ norm_f.weight)                  [n, vocab]
//! ```
//!
//! Each row of a block product is the same sum as a one-row product, so the logits equal those
//! of [`Model::step`] on each sequence up to f32 rounding (the kernels may order a block's sums
//! differently); `tests/batch.rs` checks it.

use bimamba_kernels::ssm;
use bimamba_lm::Result;
use rayon::prelude::*;

use crate::config::Config;
use crate::linear::BinaryAct;
use crate::mixer::{rms_norm, softplus, Mixer};
use crate::model::{in_pool, Model};
use crate::profile::{Section, Timer};
use crate::state::{LayerState, SsmState, State};
use crate::workspace::{prefix, Workspace};

/// One head's state update and readout for one token: `(x, B, C, dt, decay, y)`, as
/// `ssm::head_step` computes it.
type HeadStep<'a> = dyn FnMut(&[f32], &[f32], &[f32], f32, f32, &mut [f32]) + 'a;

impl Model {
    /// Feeds one token to each of several independent sequences: `tokens[i]` to `states[i]`.
    /// The logits of row i are those [`Model::step`] would return for sequence i alone.
    ///
    /// # Shapes
    /// - `states`, `tokens`: n each
    /// - returns [n, vocab_size]
    ///
    /// # Panics
    /// When `states` and `tokens` differ in length, or a state belongs to a model with another
    /// number of layers (a caller's bug: states come from [`Model::new_state`]).
    pub fn step_batch(&self, states: &mut [&mut State], tokens: &[u32]) -> Result<Vec<f32>> {
        assert_eq!(states.len(), tokens.len(), "step_batch takes one token per state");
        assert!(
            states.iter().all(|s| s.layers.len() == self.layers.len()),
            "step_batch: every state comes from this model's new_state"
        );
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        self.check_tokens(tokens)?;
        let n = tokens.len();
        let d = self.config.d_model;
        Ok(in_pool(|| {
            let mut h = self.embed(tokens); // [n, d_model]
                                            // The layers' temporaries, one row per sequence, allocated once for the step.
            let mut ws = Workspace::new();
            for (li, layer) in self.layers.iter().enumerate() {
                let mut timer = Timer::start();
                let u = prefix(&mut ws.u, n * d);
                u.copy_from_slice(&h);
                for row in u.chunks_exact_mut(d) {
                    rms_norm(row, &layer.norm, self.config.norm_eps);
                }
                timer.lap(Section::Norms);
                let mut layer_states: Vec<&mut LayerState> = states.iter_mut().map(|s| &mut s.layers[li]).collect();
                layer.mixer.forward_batch(&self.config, &mut layer_states, self.binary_act, &mut ws);
                h.iter_mut().zip(&ws.out).for_each(|(a, b)| *a += b);
            }
            for s in states.iter_mut() {
                s.position += 1;
            }
            for row in h.chunks_exact_mut(d) {
                rms_norm(row, &self.norm_f, self.config.norm_eps);
            }
            let head = self.lm_head();
            let mut logits = vec![0.0f32; n * head.rows()];
            let mut timer = Timer::start();
            head.forward_act(&h, n, &mut logits, self.binary_act);
            timer.lap(Section::LmHead);
            logits
        }))
    }
}

impl Mixer {
    /// The mixer for one token of each of `states.len()` sequences: the projections as block
    /// products over the sequences, conv and scan on each sequence's own state. Reads its input
    /// from `ws.u`, writes its output to `ws.out`, temporaries in `ws` (one row per sequence
    /// where [`Workspace`] says one row per token; `ws.ys` is [n, d_inner] here).
    ///
    /// # Shapes
    /// - `ws.u[..n * d_model]`: [n, d_model] (already RMS-normed), one row per state
    /// - `ws.out[..n * d_model]`: [n, d_model] (written)
    fn forward_batch(&self, cfg: &Config, states: &mut [&mut LayerState], act: BinaryAct, ws: &mut Workspace) {
        let n = states.len();
        let d_inner = cfg.d_inner();
        let (p_n, n_n, g_n) = (cfg.headdim, cfg.d_state, cfg.ngroups);
        let dip = cfg.d_in_proj();
        let conv_dim = cfg.conv_dim();
        let hpg = cfg.heads_per_group();
        let Workspace { u, zxbcdt, xbc, ys, out, xs, .. } = ws;
        let u = prefix(u, n * cfg.d_model);

        let mut timer = Timer::start();
        let zxbcdt = prefix(zxbcdt, n * dip); // [n, d_in_proj]
        self.in_proj.forward_with(u, n, zxbcdt, act, xs);
        timer.lap(Section::InProj);

        // Conv, scan and gate, sequences in parallel. With at least as many sequences as threads
        // each sequence is one task (its conv, heads and gate in turn: one parallel region per
        // layer, no tasks of a microsecond); with fewer, the conv's channels and the heads are
        // split too and the gate is a second region. The same arithmetic either way.
        // ys: [n, d_inner], head-major.
        let per_sequence = n >= rayon::current_num_threads();
        let head_min = if per_sequence { usize::MAX } else { 1 };
        let ys = prefix(ys, n * d_inner);
        let xbc = prefix(xbc, n * conv_dim);
        let seqs = states.par_iter_mut().zip(ys.par_chunks_mut(d_inner.max(1)));
        let inputs = zxbcdt.par_chunks(dip.max(1)).zip(xbc.par_chunks_mut(conv_dim.max(1)));
        seqs.zip(inputs).for_each(|((state, y), (zx, xbc))| {
            self.conv(cfg, state, zx, 1, xbc, !per_sequence); // [conv_dim]
            let xbc = &*xbc;
            let head = |h: usize, yh: &mut [f32], step: &mut HeadStep<'_>| {
                let g = h / hpg;
                let x = &xbc[h * p_n..(h + 1) * p_n];
                let b = &xbc[d_inner + g * n_n..d_inner + (g + 1) * n_n];
                let c = &xbc[d_inner + g_n * n_n + g * n_n..d_inner + g_n * n_n + (g + 1) * n_n];
                let raw = zx[2 * d_inner + 2 * g_n * n_n + h] + self.dt_bias[h];
                let dtv = (softplus(raw) as f64).clamp(cfg.dt_limit.0, cfg.dt_limit.1) as f32;
                let decay = (dtv * self.a[h]).exp();
                // S ← decay·S + dt·x⊗B and y = S·C + D·x.
                step(x, b, c, dtv, decay, yh);
                for (v, xv) in yh.iter_mut().zip(x) {
                    *v += self.d[h] * xv;
                }
            };
            let y_heads = y.par_chunks_mut(p_n.max(1));
            match &mut state.ssm {
                SsmState::F32(s) => {
                    s.par_chunks_mut((p_n * n_n).max(1)).zip(y_heads).enumerate().with_min_len(head_min).for_each(
                        |(h, (sh, yh))| {
                            head(h, yh, &mut |x, b, c, dtv, decay, yk| ssm::head_step(sh, x, b, c, dtv, decay, yk))
                        },
                    )
                }
                SsmState::Bf16(s) => {
                    s.par_chunks_mut((p_n * n_n).max(1)).zip(y_heads).enumerate().with_min_len(head_min).for_each(
                        |(h, (sh, yh))| {
                            head(h, yh, &mut |x, b, c, dtv, decay, yk| ssm::head_step_bf16(sh, x, b, c, dtv, decay, yk))
                        },
                    )
                }
            }
            if per_sequence {
                // Gate and grouped RMSNorm, as `Mixer::forward` does per token.
                self.gate_norm(cfg, y, &zx[..d_inner]);
            }
        });
        timer.lap(Section::Scan);

        if !per_sequence {
            ys.par_chunks_mut(d_inner.max(1))
                .zip(zxbcdt.par_chunks(dip.max(1)))
                .for_each(|(yk, zx)| self.gate_norm(cfg, yk, &zx[..d_inner]));
        }
        timer.lap(Section::Gate);

        let out = prefix(out, n * cfg.d_model);
        self.out_proj.forward_with(ys, n, out, act, xs);
        timer.lap(Section::OutProj);
    }
}
