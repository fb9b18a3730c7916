//! The whole Mamba-2 / Bi-Mamba language model: embedding, a stack of pre-norm mixer blocks
//! with an fp32 residual stream, the final norm and the (usually tied) lm_head.
//!
//! ```text
//! h = embedding[tokens]
//! for each layer:  h = h + mixer(RMSNorm(h) ⊙ norm.weight)
//! logits = lm_head(RMSNorm(h) ⊙ norm_f.weight)
//! ```

use crate::config::Config;
use crate::linear::{BinaryAct, Linear};
use crate::mixer::{rms_norm, Mixer, Proj};
use crate::profile::{Section, Timer};
use crate::state::{LayerState, State, StateDtype};
use crate::workspace::{prefix, Workspace};
use bimamba_lm::{ModelError, Result};

#[derive(Clone, Debug)]
pub struct Layer {
    /// [d_model]
    pub norm: Vec<f32>,
    pub mixer: Mixer,
}

impl Layer {
    /// Parameters besides the two projections (norms, conv, dt_bias, A, D), all f32.
    pub fn small_params(&self) -> usize {
        let m = &self.mixer;
        self.norm.len()
            + m.conv_weight.len()
            + m.conv_bias.len()
            + m.dt_bias.len()
            + m.a.len()
            + m.d.len()
            + m.norm_weight.len()
    }

    /// One residual block, in place: h ← h + mixer(RMSNorm(h) ⊙ norm.weight), 1-bit products
    /// with f32 activations.
    ///
    /// # Shapes
    /// - `h`: [t, d_model]
    pub fn forward(
        &self,
        cfg: &Config,
        state: &mut LayerState,
        h: &mut [f32],
        t: usize,
        observe: &mut dyn FnMut(Proj, &[f32], usize),
    ) {
        self.forward_act(cfg, state, h, t, BinaryAct::F32, observe)
    }

    /// [`Layer::forward`] with the 1-bit products' activations in `act`.
    ///
    /// # Shapes
    /// - `h`: [t, d_model]
    pub fn forward_act(
        &self,
        cfg: &Config,
        state: &mut LayerState,
        h: &mut [f32],
        t: usize,
        act: BinaryAct,
        observe: &mut dyn FnMut(Proj, &[f32], usize),
    ) {
        debug_assert_eq!(h.len(), t * cfg.d_model);
        self.forward_in(cfg, state, h, act, observe, &mut Workspace::new())
    }

    /// [`Layer::forward_act`] over the `h.len() / d_model` tokens of `h`, its temporaries in `ws`
    /// (reused by every layer and block of a forward pass).
    ///
    /// # Shapes
    /// - `h`: [t, d_model]
    pub fn forward_in(
        &self,
        cfg: &Config,
        state: &mut LayerState,
        h: &mut [f32],
        act: BinaryAct,
        observe: &mut dyn FnMut(Proj, &[f32], usize),
        ws: &mut Workspace,
    ) {
        let t = h.len() / cfg.d_model.max(1);
        let mut timer = Timer::start();
        let u = prefix(&mut ws.u, h.len());
        u.copy_from_slice(h);
        for row in u.chunks_exact_mut(cfg.d_model) {
            rms_norm(row, &self.norm, cfg.norm_eps);
        }
        timer.lap(Section::Norms);
        self.mixer.forward(cfg, state, t, act, observe, ws);
        let mut timer = Timer::start();
        h.iter_mut().zip(&ws.out).for_each(|(a, b)| *a += b);
        timer.lap(Section::Norms);
    }
}

#[derive(Clone, Debug)]
pub struct Model {
    pub config: Config,
    /// [padded_vocab, d_model], dense (f32, bf16, f16, or q8 rows).
    pub embedding: Linear,
    pub layers: Vec<Layer>,
    /// [d_model]
    pub norm_f: Vec<f32>,
    /// [padded_vocab, d_model]; `None` when tied to the embedding.
    pub lm_head: Option<Linear>,
    /// Storage precision of the SSM state that [`Model::new_state`] creates (a run-time choice,
    /// not part of the weights; f32 unless set).
    pub state_dtype: StateDtype,
    /// Activation precision of the 1-bit projections (a run-time choice; f32 unless set).
    pub binary_act: BinaryAct,
}

/// Prefill runs over blocks of at most this many tokens: each projection's weights are read once
/// per block, and the scratch memory stays bounded whatever the prompt length. 64 tokens keep the
/// 1-bit products compute-bound (prefill of the 2.7b shape is as fast as with 256) while the
/// block's scratch (activations, f32 tables) stays near 15 MB instead of 60 (peak RSS 661 instead
/// of 706 MiB; crates/bimamba-kernels/KERNELS.md).
pub const PREFILL_BLOCK: usize = 64;

/// Which final hidden states [`Model::hidden`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Keep {
    All,
    Last,
}

/// Where calibration observers are told an input was seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProjSite {
    pub layer: usize,
    pub proj: Proj,
}

impl Model {
    /// Rows of the embedding / logits width.
    pub fn vocab_size(&self) -> usize {
        self.embedding.rows()
    }

    pub fn new_state(&self) -> State {
        State::with_dtype(&self.config, self.state_dtype)
    }

    /// Chooses the SSM state's storage precision for the states [`Model::new_state`] creates.
    pub fn set_state_dtype(&mut self, dtype: StateDtype) {
        self.state_dtype = dtype;
    }

    pub fn lm_head(&self) -> &Linear {
        self.lm_head.as_ref().unwrap_or(&self.embedding)
    }

    /// Chooses the activation precision of the 1-bit projections (see [`BinaryAct::fastest`]),
    /// and with it the order of a q8 head's codes (see [`Model::arrange_head`]).
    pub fn set_binary_act(&mut self, act: BinaryAct) {
        self.binary_act = act;
        self.arrange_head();
    }

    /// Stores the embedding (and an untied lm_head) as 8-bit rows (`bimamba_kernels::q8`):
    /// lookups then dequantize one row, the head runs the q8 kernel.
    pub fn quantize_vocab_q8(&mut self) {
        self.embedding = self.embedding.to_q8();
        self.lm_head = self.lm_head.as_ref().map(Linear::to_q8);
        self.arrange_head();
    }

    /// Orders a q8 head's codes for the kernel that [`Model::binary_act`] runs it with: in
    /// panels (`bimamba_kernels::q8_panels`) where that is the AVX512-VNNI int8 kernel, in rows
    /// otherwise (the f32-activation kernel reads rows). A tied head is the embedding, whose
    /// lookups read either order. Only the speed depends on it: both orders give the same bits
    /// under either activation precision. A model whose `binary_act` is assigned directly keeps
    /// its order until the next call of this.
    pub fn arrange_head(&mut self) {
        let panels = self.lm_head().effective_act(self.binary_act) == BinaryAct::Int8;
        match &mut self.lm_head {
            Some(head) => head.arrange_q8(panels),
            None => self.embedding.arrange_q8(panels),
        }
    }

    /// Embedding rows of `tokens`: the residual stream entering layer 0.
    ///
    /// # Shapes
    /// - returns [tokens.len(), d_model]
    pub fn embed(&self, tokens: &[u32]) -> Vec<f32> {
        let mut h = Vec::new();
        self.embed_into(tokens, &mut h);
        h
    }

    /// [`Model::embed`] into `h` (cleared first; its memory is reused).
    pub fn embed_into(&self, tokens: &[u32], h: &mut Vec<f32>) {
        h.clear();
        for &tok in tokens {
            h.extend_from_slice(&self.embedding.row_f32(tok as usize));
        }
    }

    pub(crate) fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        let vocab = self.vocab_size();
        match tokens.iter().find(|&&t| t as usize >= vocab) {
            Some(&id) => Err(ModelError::TokenOutOfRange { id, vocab }),
            None => Ok(()),
        }
    }

    /// Runs `tokens` through the blocks, returning the final normed hidden states.
    ///
    /// # Shapes
    /// - returns [t, d_model]
    fn hidden(
        &self,
        state: &mut State,
        tokens: &[u32],
        observe: &mut dyn FnMut(ProjSite, &[f32], usize),
        keep: Keep,
    ) -> Result<Vec<f32>> {
        self.check_tokens(tokens)?;
        let d = self.config.d_model;
        let mut out = Vec::with_capacity(if keep == Keep::All { tokens.len() * d } else { d });
        // Blocks bound the scratch memory; within a block every weight is read once. The block's
        // residual stream `h` [t, d_model] and the layers' temporaries (`ws`) are allocated once
        // for the whole call.
        let mut ws = Workspace::new();
        let mut h = Vec::new();
        for block in tokens.chunks(PREFILL_BLOCK) {
            let t = block.len();
            self.embed_into(block, &mut h);
            for (li, (layer, ls)) in self.layers.iter().zip(state.layers.iter_mut()).enumerate() {
                let mut obs = |proj: Proj, x: &[f32], n: usize| observe(ProjSite { layer: li, proj }, x, n);
                layer.forward_in(&self.config, ls, &mut h, self.binary_act, &mut obs, &mut ws);
            }
            state.position += t;
            let rows = match keep {
                Keep::All => &mut h[..],
                Keep::Last => {
                    out.clear();
                    &mut h[(t - 1) * d..]
                }
            };
            for row in rows.chunks_exact_mut(d) {
                rms_norm(row, &self.norm_f, self.config.norm_eps);
            }
            out.extend_from_slice(rows);
        }
        Ok(out)
    }

    /// Feeds `tokens` (prefill when more than one), returning the logits of every position.
    ///
    /// # Shapes
    /// - returns [tokens.len(), vocab_size]
    pub fn forward(&self, state: &mut State, tokens: &[u32]) -> Result<Vec<f32>> {
        // Run on a pool thread: the ~3 parallel sections per layer then fork by work stealing
        // instead of each being injected into the pool from outside.
        in_pool(|| self.forward_observed(state, tokens, &mut |_, _, _| {}))
    }

    /// As [`Model::forward`], calling `observe(site, x, t)` with the input `x` [t, in] of every
    /// in_proj and out_proj (calibration of post-training quantizers).
    pub fn forward_observed(
        &self,
        state: &mut State,
        tokens: &[u32],
        observe: &mut dyn FnMut(ProjSite, &[f32], usize),
    ) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let h = self.hidden(state, tokens, observe, Keep::All)?;
        let head = self.lm_head();
        let mut logits = vec![0.0f32; tokens.len() * head.rows()];
        head.forward_act(&h, tokens.len(), &mut logits, self.binary_act);
        Ok(logits)
    }

    /// Feeds `tokens` and returns only the last position's logits (generation's prefill).
    ///
    /// # Shapes
    /// - returns [vocab_size]
    pub fn forward_last(&self, state: &mut State, tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        in_pool(|| {
            let h = self.hidden(state, tokens, &mut |_, _, _| {}, Keep::Last)?;
            let head = self.lm_head();
            let mut logits = vec![0.0f32; head.rows()];
            let mut timer = Timer::start();
            head.forward_act(&h, 1, &mut logits, self.binary_act);
            timer.lap(Section::LmHead);
            Ok(logits)
        })
    }

    /// One decode step.
    ///
    /// # Shapes
    /// - returns [vocab_size]
    pub fn step(&self, state: &mut State, token: u32) -> Result<Vec<f32>> {
        self.forward_last(state, &[token])
    }

    /// Parameter counts: (binarized projection weights, everything else).
    pub fn parameter_counts(&self) -> (usize, usize) {
        let mut binary = 0;
        let mut dense = self.embedding.rows() * self.embedding.cols() + self.norm_f.len();
        if let Some(h) = &self.lm_head {
            dense += h.rows() * h.cols();
        }
        for l in &self.layers {
            for p in [&l.mixer.in_proj, &l.mixer.out_proj] {
                let n = p.rows() * p.cols();
                if p.is_binary() {
                    binary += n
                } else {
                    dense += n
                }
            }
            dense += l.small_params();
        }
        (binary, dense)
    }

    /// Bytes of all weights in memory (projections in their format, f32 small tensors).
    pub fn weight_bytes(&self) -> usize {
        let head = self.lm_head.as_ref().map_or(0, Linear::weight_bytes);
        let layers: usize = self
            .layers
            .iter()
            .map(|l| l.mixer.in_proj.weight_bytes() + l.mixer.out_proj.weight_bytes() + 4 * l.small_params())
            .sum();
        self.embedding.weight_bytes() + head + layers + 4 * self.norm_f.len()
    }
}

/// Runs `f` on a thread of the global rayon pool (directly if already on one).
pub(crate) fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    let mut out = None;
    rayon::scope(|_| out = Some(f()));
    out.expect("rayon::scope runs its closure to completion")
}
