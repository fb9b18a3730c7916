//! The LLaMA model: weights found by their GGUF key, the KV cache as the decoding state, and one
//! forward over a block of tokens that serves prefill and decode.
//!
//! Per block (pre-norm residual):
//! ```text
//! h = x + W_o · Attn(RoPE(W_q · n1), RoPE(W_k · n1), W_v · n1),   n1 = RMSNorm(x) ⊙ g_attn
//! x' = h + W_down · (silu(W_gate · n2) ⊙ (W_up · n2)),            n2 = RMSNorm(h) ⊙ g_ffn
//! ```
//! then logits = W_out · (RMSNorm(x_L) ⊙ g_out), with W_out = token_embd when `output.weight` is
//! absent (tied embeddings).

use std::path::{Path, PathBuf};

use bimamba_formats::{Checkpoint, Format};
use bimamba_lm::{LanguageModel, ModelError, Result};
use rayon::prelude::*;

use crate::config::LlamaConfig;
use crate::ops::{attention, rms_norm, swiglu, Rope};
use crate::weights::{forward_shared, Activations, Matrix, DEQUANTIZE_AT_LOAD_MAX_BYTES};

/// The weights of one transformer block.
#[derive(Clone, Debug)]
pub struct Block {
    /// [d_model]
    pub attn_norm: Vec<f32>,
    /// [n_head · head_dim, d_model], rows permuted by the GGUF converter for adjacent-pair RoPE
    pub wq: Matrix,
    /// [n_kv_head · head_dim, d_model], permuted likewise
    pub wk: Matrix,
    /// [n_kv_head · head_dim, d_model]
    pub wv: Matrix,
    /// [d_model, n_head · head_dim]
    pub wo: Matrix,
    /// [d_model]
    pub ffn_norm: Vec<f32>,
    /// [d_ff, d_model]
    pub w_gate: Matrix,
    /// [d_ff, d_model]
    pub w_up: Matrix,
    /// [d_model, d_ff]
    pub w_down: Matrix,
}

/// A LLaMA-architecture language model loaded from a GGUF file.
#[derive(Clone, Debug)]
pub struct LlamaModel {
    pub config: LlamaConfig,
    /// The file it came from (named in errors).
    pub path: PathBuf,
    /// token_embd.weight: [vocab_size, d_model]
    pub embedding: Matrix,
    /// output.weight: [vocab_size, d_model]; `None` when tied to the embedding.
    pub output: Option<Matrix>,
    /// output_norm.weight: [d_model]
    pub norm_f: Vec<f32>,
    pub blocks: Vec<Block>,
    /// `tokenizer.ggml.eos_token_id`, where the file names one (generation stops there).
    pub eos_token_id: Option<u32>,
    /// How the products treat activations (chosen at load: [`LlamaModel::load_with`]).
    activations: Activations,
    rope: Rope,
}

/// The keys and values of one block for every position seen so far.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerCache {
    /// [position, n_kv_head · head_dim], after RoPE
    pub k: Vec<f32>,
    /// [position, n_kv_head · head_dim]
    pub v: Vec<f32>,
}

/// The decoding state of a [`LlamaModel`]: the KV cache. Cloning it forks the sequence.
#[derive(Clone, Debug, PartialEq)]
pub struct KvCache {
    pub layers: Vec<LayerCache>,
    /// Tokens fed so far (the position of the next token).
    pub position: usize,
}

impl KvCache {
    /// Memory held by the cached keys and values.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| 4 * (l.k.len() + l.v.len())).sum()
    }
}

/// Whether `name` is a tensor the loader reads for `n_layer` blocks: anything else in the file
/// (biases, RoPE frequency factors, ...) belongs to a variant this forward does not implement and
/// is refused.
fn is_known(name: &str, n_layer: usize) -> bool {
    const BLOCK: [&str; 9] =
        ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"];
    if ["token_embd.weight", "output_norm.weight", "output.weight"].contains(&name) {
        return true;
    }
    let Some((i, t)) = name.strip_prefix("blk.").and_then(|r| r.strip_suffix(".weight")?.split_once('.')) else {
        return false;
    };
    i.parse::<usize>().is_ok_and(|i| i < n_layer) && BLOCK.contains(&t)
}

/// Reads tensors by key, checking each shape against the configuration.
struct Loader<'a> {
    ck: &'a Checkpoint,
}

impl Loader<'_> {
    /// Checks that `name` exists with `shape`.
    fn info(&self, name: &str, shape: &[usize]) -> Result<&bimamba_formats::TensorInfo> {
        let file = self.ck.path().to_path_buf();
        let info = self.ck.info(name).ok_or_else(|| ModelError::MissingTensor {
            file: file.clone(),
            tensor: name.to_string(),
            hint: String::new(),
        })?;
        if info.shape != shape {
            return Err(ModelError::Shape {
                file,
                tensor: name.to_string(),
                expected: shape.to_vec(),
                actual: info.shape.clone(),
            });
        }
        Ok(info)
    }

    /// A vector, as f32.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.info(name, shape)?;
        Ok(self.ck.to_f32(name)?)
    }

    /// A matrix: Q8_0/Q4_0/Q4_1 blocks kept packed, any other float type converted to f32.
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix> {
        let dtype = self.info(name, &[rows, cols])?.dtype;
        if !dtype.is_quantized() {
            return Ok(Matrix::f32(self.ck.to_f32(name)?, rows, cols));
        }
        let bytes = self.ck.bytes(name)?;
        let n = bytes.len();
        Matrix::quantized(dtype, bytes.to_vec(), rows, cols).ok_or_else(|| ModelError::Invalid {
            file: self.ck.path().to_path_buf(),
            detail: format!("tensor `{name}`: {n} bytes of {dtype} do not hold [{rows} x {cols}] in whole blocks"),
        })
    }
}

impl LlamaModel {
    /// Opens a GGUF file and loads the model with f32 activations (the tokenizer is read by
    /// [`crate::gguf_tokenizer`]).
    pub fn load(path: &Path) -> Result<LlamaModel> {
        LlamaModel::load_with(path, Activations::F32)
    }

    /// Opens a GGUF file and loads the model for products with `act` activations.
    pub fn load_with(path: &Path, act: Activations) -> Result<LlamaModel> {
        LlamaModel::from_checkpoint_with(&Checkpoint::open(path)?, act)
    }

    /// Loads from an opened GGUF checkpoint, with f32 activations.
    pub fn from_checkpoint(ck: &Checkpoint) -> Result<LlamaModel> {
        LlamaModel::from_checkpoint_with(ck, Activations::F32)
    }

    /// Loads from an opened GGUF checkpoint; the block-quantized matrices are stored for `act`
    /// ([`Matrix::prepare`]): dequantized to f32 for [`Activations::F32`] (when the whole model
    /// fits in [`DEQUANTIZE_AT_LOAD_MAX_BYTES`] as f32), re-laid for 8-bit dot products for
    /// [`Activations::Q8`].
    pub fn from_checkpoint_with(ck: &Checkpoint, act: Activations) -> Result<LlamaModel> {
        let file = ck.path().to_path_buf();
        let (Format::Gguf, Some(meta)) = (ck.format(), ck.gguf()) else {
            return Err(ModelError::Invalid {
                file,
                detail: "not a GGUF file: a LLaMA-architecture model is read from GGUF only".into(),
            });
        };
        let embd = ck.info("token_embd.weight").ok_or_else(|| ModelError::MissingTensor {
            file: file.clone(),
            tensor: "token_embd.weight".into(),
            hint: " (the token embedding every LLaMA GGUF has)".into(),
        })?;
        let vocab_size = match embd.shape[..] {
            [v, _] => v,
            _ => {
                return Err(ModelError::Invalid {
                    file,
                    detail: format!("tensor `token_embd.weight` has shape {:?}, expected 2 dimensions", embd.shape),
                })
            }
        };
        let cfg = LlamaConfig::from_gguf(meta, vocab_size, &file)?;
        let unknown: Vec<&str> =
            ck.tensors().into_iter().map(|t| t.name.as_str()).filter(|n| !is_known(n, cfg.n_layer)).collect();
        if !unknown.is_empty() {
            return Err(ModelError::Invalid {
                file,
                detail: format!(
                    "tensors this LLaMA forward does not implement (biases, RoPE factors, another variant?): {}",
                    unknown.join(", ")
                ),
            });
        }

        // The block count comes from the metadata: checked against the tensors before the blocks
        // are built (a corrupted count must not size anything).
        let last = format!("blk.{}.attn_norm.weight", cfg.n_layer.saturating_sub(1));
        if cfg.n_layer > 0 && ck.info(&last).is_none() {
            return Err(ModelError::Invalid {
                file,
                detail: format!("llama.block_count is {} but the file has no tensor `{last}`", cfg.n_layer),
            });
        }
        let l = Loader { ck };
        let (d, ff, qd, kvd) = (cfg.d_model, cfg.d_ff, cfg.q_dim(), cfg.kv_dim());
        let embedding = l.matrix("token_embd.weight", vocab_size, d)?;
        let output = match ck.info("output.weight") {
            Some(_) => Some(l.matrix("output.weight", vocab_size, d)?),
            None => None,
        };
        let norm_f = l.get("output_norm.weight", &[d])?;
        let blocks = (0..cfg.n_layer)
            .map(|i| {
                let n = |t: &str| format!("blk.{i}.{t}.weight");
                Ok(Block {
                    attn_norm: l.get(&n("attn_norm"), &[d])?,
                    wq: l.matrix(&n("attn_q"), qd, d)?,
                    wk: l.matrix(&n("attn_k"), kvd, d)?,
                    wv: l.matrix(&n("attn_v"), kvd, d)?,
                    wo: l.matrix(&n("attn_output"), d, qd)?,
                    ffn_norm: l.get(&n("ffn_norm"), &[d])?,
                    w_gate: l.matrix(&n("ffn_gate"), ff, d)?,
                    w_up: l.matrix(&n("ffn_up"), ff, d)?,
                    w_down: l.matrix(&n("ffn_down"), d, ff)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let rope = Rope::new(&cfg);
        let eos_token_id = meta.get_u32("tokenizer.ggml.eos_token_id").filter(|&id| (id as usize) < vocab_size);
        let mut model = LlamaModel {
            config: cfg,
            path: file,
            embedding,
            output,
            norm_f,
            blocks,
            eos_token_id,
            activations: act,
            rope,
        };
        model.prepare(act);
        Ok(model)
    }

    /// Re-stores every block-quantized matrix for `act`, in parallel.
    fn prepare(&mut self, act: Activations) {
        let mats = self
            .blocks
            .iter_mut()
            .flat_map(|b| [&mut b.wq, &mut b.wk, &mut b.wv, &mut b.wo, &mut b.w_gate, &mut b.w_up, &mut b.w_down]);
        let all: Vec<&mut Matrix> =
            mats.chain(std::iter::once(&mut self.embedding)).chain(self.output.as_mut()).collect();
        let f32_bytes: usize = all.iter().map(|m| m.dequantized_bytes()).sum();
        let dequantize = f32_bytes <= DEQUANTIZE_AT_LOAD_MAX_BYTES;
        all.into_par_iter().for_each(|m| m.prepare(act, dequantize));
    }

    /// How the products treat activations.
    pub fn activations(&self) -> Activations {
        self.activations
    }

    /// The output projection (the embedding when tied).
    pub fn lm_head(&self) -> &Matrix {
        self.output.as_ref().unwrap_or(&self.embedding)
    }

    /// An empty cache (position 0).
    pub fn new_cache(&self) -> KvCache {
        KvCache { layers: vec![LayerCache { k: Vec::new(), v: Vec::new() }; self.config.n_layer], position: 0 }
    }

    /// Parameters in the file (the tied head counted once).
    pub fn parameter_count(&self) -> usize {
        let m = |x: &Matrix| x.rows * x.cols;
        let blocks: usize = self
            .blocks
            .iter()
            .map(|b| {
                b.attn_norm.len()
                    + b.ffn_norm.len()
                    + [&b.wq, &b.wk, &b.wv, &b.wo, &b.w_gate, &b.w_up, &b.w_down].iter().map(|x| m(x)).sum::<usize>()
            })
            .sum();
        m(&self.embedding) + self.output.as_ref().map_or(0, m) + self.norm_f.len() + blocks
    }

    /// Bytes the weights occupy in memory (packed blocks count at their packed size).
    pub fn weight_bytes(&self) -> usize {
        let vec = |v: &Vec<f32>| 4 * v.len();
        let blocks: usize = self
            .blocks
            .iter()
            .map(|b| {
                vec(&b.attn_norm)
                    + vec(&b.ffn_norm)
                    + [&b.wq, &b.wk, &b.wv, &b.wo, &b.w_gate, &b.w_up, &b.w_down]
                        .iter()
                        .map(|x| x.bytes())
                        .sum::<usize>()
            })
            .sum();
        self.embedding.bytes() + self.output.as_ref().map_or(0, Matrix::bytes) + vec(&self.norm_f) + blocks
    }

    fn check(&self, cache: &KvCache, tokens: &[u32]) -> Result<()> {
        let vocab = self.config.vocab_size;
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(ModelError::TokenOutOfRange { id, vocab });
        }
        if cache.layers.len() != self.config.n_layer {
            return Err(ModelError::Invalid {
                file: self.path.clone(),
                detail: format!(
                    "a KV cache of {} layers was passed to a model of {}",
                    cache.layers.len(),
                    self.config.n_layer
                ),
            });
        }
        let kv = cache.position * self.config.kv_dim();
        if cache.layers.iter().any(|l| l.k.len() != kv || l.v.len() != kv) {
            return Err(ModelError::Invalid {
                file: self.path.clone(),
                detail: format!(
                    "a KV cache whose layers do not hold {} positions of width {} was passed to this model",
                    cache.position,
                    self.config.kv_dim()
                ),
            });
        }
        let end = cache.position + tokens.len();
        if end > self.config.context_length {
            return Err(ModelError::Invalid {
                file: self.path.clone(),
                detail: format!(
                    "{} tokens would exceed the model's context length of {} (llama.context_length)",
                    end, self.config.context_length
                ),
            });
        }
        Ok(())
    }

    /// Runs `tokens` through every block, appending to the cache; returns the residual stream
    /// after the last block (before the final norm).
    ///
    /// # Shapes
    /// - returns [t, d_model]
    fn residual(&self, cache: &mut KvCache, tokens: &[u32]) -> Result<Vec<f32>> {
        self.check(cache, tokens)?;
        let c = &self.config;
        let pos0 = cache.position;
        let x = self.blocks_forward(tokens, |layer, q, k, v, att| {
            let lc = &mut cache.layers[layer];
            self.rope.apply(q, c.n_head, pos0);
            self.rope.apply(k, c.n_kv_head, pos0);
            lc.k.extend_from_slice(k);
            lc.v.extend_from_slice(v);
            attention(c, q, &lc.k, &lc.v, pos0, att);
        });
        cache.position += tokens.len();
        Ok(x)
    }

    /// The residual stream of several independent continuations of the cached sequence, run
    /// through the blocks together (one product per matrix for all of them). Continuation `b`
    /// attends to the cache and to its own earlier tokens only; the cache is left as it is.
    ///
    /// # Shapes
    /// - returns [Σ branch lengths, d_model], the branches one after another
    fn branches_residual(&self, cache: &KvCache, branches: &[&[u32]]) -> Result<Vec<f32>> {
        for b in branches {
            self.check(cache, b)?;
        }
        let c = &self.config;
        let (pos0, kvd, qd) = (cache.position, c.kv_dim(), c.q_dim());
        let tokens: Vec<u32> = branches.concat();
        Ok(self.blocks_forward(&tokens, |layer, q, k, v, att| {
            let lc = &cache.layers[layer];
            let mut start = 0;
            for b in branches {
                let (s, e) = (start, start + b.len());
                start = e;
                let (qb, kb) = (&mut q[s * qd..e * qd], &mut k[s * kvd..e * kvd]);
                self.rope.apply(qb, c.n_head, pos0);
                self.rope.apply(kb, c.n_kv_head, pos0);
                let keys = [&lc.k[..], kb].concat();
                let values = [&lc.v[..], &v[s * kvd..e * kvd]].concat();
                attention(c, qb, &keys, &values, pos0, &mut att[s * qd..e * qd]);
            }
        }))
    }

    /// The blocks over `tokens`: embedding, then per block the pre-norm attention (its queries,
    /// keys and values handed to `attend(layer, q, k, v, out)`, which rotates them, attends and
    /// writes `out: [t, q_dim]`) and the SwiGLU feed-forward. Returns the residual stream.
    fn blocks_forward<F>(&self, tokens: &[u32], mut attend: F) -> Vec<f32>
    where
        F: FnMut(usize, &mut [f32], &mut [f32], &[f32], &mut [f32]),
    {
        let c = &self.config;
        let (t, d) = (tokens.len(), c.d_model);
        // x: [t, d_model]
        let mut x = vec![0.0f32; t * d];
        for (row, &id) in x.chunks_exact_mut(d).zip(tokens) {
            self.embedding.row_into(id as usize, row);
        }
        let mut n = vec![0.0f32; t * d];
        let mut att = vec![0.0f32; t * c.q_dim()];
        for (layer, b) in self.blocks.iter().enumerate() {
            n.copy_from_slice(&x);
            n.chunks_exact_mut(d).for_each(|r| rms_norm(r, &b.attn_norm, c.norm_eps));
            // q: [t, n_head · head_dim]; k, v: [t, n_kv_head · head_dim]
            let [mut q, mut k, v] = forward_shared([&b.wq, &b.wk, &b.wv], &n, t);
            attend(layer, &mut q, &mut k, &v, &mut att);
            let o = b.wo.forward(&att, t); // [t, d_model]
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);

            n.copy_from_slice(&x);
            n.chunks_exact_mut(d).for_each(|r| rms_norm(r, &b.ffn_norm, c.norm_eps));
            let [mut g, u] = forward_shared([&b.w_gate, &b.w_up], &n, t); // [t, d_ff] each
            swiglu(&mut g, &u);
            let down = b.w_down.forward(&g, t); // [t, d_model]
            x.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
        }
        x
    }

    /// The logits of several independent continuations of the cached sequence, computed together
    /// (see [`LanguageModel::forward_branches`]); the cache is not changed.
    ///
    /// # Shapes
    /// - returns one [branch length, vocab_size] block per branch
    pub fn forward_branches(&self, cache: &KvCache, branches: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let total: usize = branches.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Ok(branches.iter().map(|_| Vec::new()).collect());
        }
        let d = self.config.d_model;
        let mut x = self.branches_residual(cache, branches)?;
        x.chunks_exact_mut(d).for_each(|r| rms_norm(r, &self.norm_f, self.config.norm_eps));
        let logits = self.lm_head().forward(&x, total);
        let v = self.config.vocab_size;
        let mut out = Vec::with_capacity(branches.len());
        let mut start = 0;
        for b in branches {
            out.push(logits[start * v..(start + b.len()) * v].to_vec());
            start += b.len();
        }
        Ok(out)
    }

    /// Feeds `tokens` (prefill when more than one), returning the logits of every position.
    ///
    /// # Shapes
    /// - returns [tokens.len(), vocab_size]
    pub fn forward(&self, cache: &mut KvCache, tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let mut x = self.residual(cache, tokens)?;
        x.chunks_exact_mut(self.config.d_model).for_each(|r| rms_norm(r, &self.norm_f, self.config.norm_eps));
        Ok(self.lm_head().forward(&x, tokens.len()))
    }

    /// Feeds `tokens`, returning the last position's logits only (the head runs on one row).
    ///
    /// # Shapes
    /// - returns [vocab_size]
    pub fn forward_last(&self, cache: &mut KvCache, tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let d = self.config.d_model;
        let x = self.residual(cache, tokens)?;
        let mut last = x[x.len() - d..].to_vec();
        rms_norm(&mut last, &self.norm_f, self.config.norm_eps);
        Ok(self.lm_head().forward(&last, 1))
    }
}

impl LanguageModel for LlamaModel {
    type State = KvCache;
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }
    fn new_state(&self) -> KvCache {
        self.new_cache()
    }
    fn forward(&self, state: &mut KvCache, tokens: &[u32]) -> Result<Vec<f32>> {
        LlamaModel::forward(self, state, tokens)
    }
    fn forward_last(&self, state: &mut KvCache, tokens: &[u32]) -> Result<Vec<f32>> {
        LlamaModel::forward_last(self, state, tokens)
    }
    fn forward_branches(&self, state: &KvCache, branches: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        LlamaModel::forward_branches(self, state, branches)
    }
}
