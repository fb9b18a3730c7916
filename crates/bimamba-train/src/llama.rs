//! A frozen LLaMA-architecture teacher read from GGUF (SmolLM2-135M and kin), run in Burn so it
//! can share the student's device. Weights are dequantized to f32 at load (Q8_0/Q4_0/Q4_1 through
//! `bimamba-formats`); the hyper-parameters and the tokenizer come from the GGUF metadata through
//! `bimamba-llama`, whose CPU forward is the reference in the tests.
//!
//! Per block: `h += W_o · attn(RoPE(W_q x), RoPE(W_k x), W_v x)` with x = RMSNorm(h), causal
//! grouped-query attention (query head h reads KV head h / (H / H_kv)); then
//! `h += W_down · (SiLU(W_gate x) ⊙ W_up x)` with x = RMSNorm(h). RoPE rotates *adjacent* pairs
//! (2i, 2i+1) of the first `rope_dim` channels of each head by angle pos · θ^(−2i/rope_dim): llama.cpp's
//! converter permuted W_q and W_k so that this equals the half-split rotation of the original model.

use std::path::Path;

use bimamba_formats::{Checkpoint, Format};
use bimamba_llama::LlamaConfig;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Int, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::fused::FusedOps;
use crate::ops::{log_softmax, matmul_in, opts, rms_normalize, silu};
use crate::rng::SplitMix64;

struct LlamaBlock<B: Backend> {
    attn_norm: Tensor<B, 1>,
    wq: Tensor<B, 2>,
    wk: Tensor<B, 2>,
    wv: Tensor<B, 2>,
    wo: Tensor<B, 2>,
    ffn_norm: Tensor<B, 1>,
    w_gate: Tensor<B, 2>,
    w_up: Tensor<B, 2>,
    w_down: Tensor<B, 2>,
}

/// The teacher: configuration and weights on a device (f32, or the matrices in the product
/// dtype after [`LlamaTeacher::with_matmul_dtype`]).
pub struct LlamaTeacher<B: Backend> {
    /// Hyper-parameters from the GGUF.
    pub config: LlamaConfig,
    /// The tokenizer rebuilt from the GGUF's vocabulary and merges (None for random weights).
    pub tokenizer: Option<tokenizers::Tokenizer>,
    embedding: Tensor<B, 2>,
    output: Option<Tensor<B, 2>>,
    norm_f: Tensor<B, 1>,
    blocks: Vec<LlamaBlock<B>>,
    /// Dtype of the matrix products (None: f32); the weight matrices are stored in it.
    matmul_dtype: Option<DType>,
}

fn fmt_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::format(path, e.to_string())
}

/// y = x · Wᵀ over the last dimension, in W's dtype (x is cast to it; y comes back in x's).
///
/// # Shapes
/// - x: [b, L, in]; w: [out, in]; output: [b, L, out]
fn linear<B: FusedOps>(x: Tensor<B, 3>, w: &Tensor<B, 2>) -> Tensor<B, 3> {
    let [b, l, i] = x.dims();
    let o = w.dims()[0];
    matmul_in(x.reshape([b * l, i]), w.clone().transpose(), Some(w.dtype())).reshape([b, l, o])
}

/// f32 values uniform in ±bound.
/// Which keys each query may not see: true where key j > start + i (query i is position
/// start + i of a sequence whose first `start` positions are cached).
///
/// # Shapes
/// - output: [b, heads, n, start + n]
pub(crate) fn future_mask<B: Backend>(
    b: usize,
    heads: usize,
    n: usize,
    start: usize,
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    let total = start + n;
    let mask: Vec<bool> = (0..n).flat_map(|i| (0..total).map(move |j| j > start + i)).collect();
    Tensor::<B, 2, Bool>::from_data(TensorData::new(mask, [n, total]), device)
        .unsqueeze::<4>()
        .expand([b, heads, n, total])
}

/// Attention op by op: softmax(q·kᵀ/√hd, the `future` keys masked)·v, the two products in
/// `dtype` (the reference of [`FusedOps::causal_attention`]).
///
/// # Shapes
/// - q: [b, heads, n, hd]; k, v: [b, heads, total, hd]; future: [b, heads, n, total];
///   output: [b, heads, n, hd]
pub(crate) fn attention_reference<B: FusedOps>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    future: Option<&Tensor<B, 4, Bool>>,
    dtype: Option<DType>,
) -> Tensor<B, 4> {
    let scale = 1.0 / (q.dims()[3] as f64).sqrt();
    let mut scores = matmul_in(q, k.swap_dims(2, 3), dtype) * scale;
    if let Some(future) = future {
        scores = scores.mask_fill(future.clone(), f32::NEG_INFINITY);
    }
    matmul_in(log_softmax(scores).exp(), v, dtype)
}

fn uniform(rng: &mut SplitMix64, n: usize, bound: f64) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(-bound, bound) as f32).collect()
}

impl<B: FusedOps> LlamaTeacher<B> {
    /// Loads a LLaMA-architecture GGUF file onto `device`.
    pub fn load(path: &Path, device: &B::Device) -> Result<Self> {
        let ck = Checkpoint::open(path).map_err(|e| fmt_err(path, e))?;
        let (Format::Gguf, Some(meta)) = (ck.format(), ck.gguf()) else {
            return Err(Error::format(path, "not a GGUF file"));
        };
        let vocab = ck
            .info("token_embd.weight")
            .and_then(|t| t.shape.first().copied())
            .ok_or_else(|| Error::format(path, "no token_embd.weight"))?;
        let config = LlamaConfig::from_gguf(meta, vocab, path).map_err(|e| fmt_err(path, e))?;
        let tokenizer = bimamba_llama::tokenizer::build(meta, path).map_err(|e| fmt_err(path, e))?;
        let get = |name: &str, dims: &[usize]| -> Result<Vec<f32>> {
            let info = ck.info(name).ok_or_else(|| Error::MissingTensor {
                name: name.to_string(),
                source_desc: path.display().to_string(),
            })?;
            if info.shape != dims {
                return Err(Error::Shape {
                    name: name.to_string(),
                    source_desc: path.display().to_string(),
                    expected: dims.to_vec(),
                    got: info.shape.clone(),
                });
            }
            ck.to_f32(name).map_err(|e| fmt_err(path, e))
        };
        let t2 = |name: &str, r: usize, c: usize| -> Result<Tensor<B, 2>> {
            Ok(Tensor::from_data(TensorData::new(get(name, &[r, c])?, [r, c]), opts::<B>(device)))
        };
        let t1 = |name: &str, n: usize| -> Result<Tensor<B, 1>> {
            Ok(Tensor::from_data(TensorData::new(get(name, &[n])?, [n]), opts::<B>(device)))
        };
        let (d, ff, qd, kvd) = (config.d_model, config.d_ff, config.q_dim(), config.kv_dim());
        let blocks = (0..config.n_layer)
            .map(|i| {
                let n = |t: &str| format!("blk.{i}.{t}.weight");
                Ok(LlamaBlock {
                    attn_norm: t1(&n("attn_norm"), d)?,
                    wq: t2(&n("attn_q"), qd, d)?,
                    wk: t2(&n("attn_k"), kvd, d)?,
                    wv: t2(&n("attn_v"), kvd, d)?,
                    wo: t2(&n("attn_output"), d, qd)?,
                    ffn_norm: t1(&n("ffn_norm"), d)?,
                    w_gate: t2(&n("ffn_gate"), ff, d)?,
                    w_up: t2(&n("ffn_up"), ff, d)?,
                    w_down: t2(&n("ffn_down"), d, ff)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let output = match ck.info("output.weight") {
            Some(_) => Some(t2("output.weight", vocab, d)?),
            None => None,
        };
        Ok(Self {
            embedding: t2("token_embd.weight", vocab, d)?,
            output,
            norm_f: t1("output_norm.weight", d)?,
            blocks,
            tokenizer: Some(tokenizer),
            config,
            matmul_dtype: None,
        })
    }

    /// A teacher of shape `config` with random weights (uniform in ±1/√fan_in, norms at 1, tied
    /// head): for throughput measurements, where only the shape matters.
    pub fn random(config: LlamaConfig, seed: u64, device: &B::Device) -> Self {
        let mut rng = SplitMix64::new(seed);
        let (d, ff, qd, kvd, v) = (config.d_model, config.d_ff, config.q_dim(), config.kv_dim(), config.vocab_size);
        let mut t2 = |r: usize, c: usize| {
            let w = uniform(&mut rng, r * c, 1.0 / (c as f64).sqrt());
            Tensor::<B, 2>::from_data(TensorData::new(w, [r, c]), opts::<B>(device))
        };
        let ones = |n: usize| Tensor::<B, 1>::ones([n], opts::<B>(device));
        let blocks = (0..config.n_layer)
            .map(|_| LlamaBlock {
                attn_norm: ones(d),
                wq: t2(qd, d),
                wk: t2(kvd, d),
                wv: t2(kvd, d),
                wo: t2(d, qd),
                ffn_norm: ones(d),
                w_gate: t2(ff, d),
                w_up: t2(ff, d),
                w_down: t2(d, ff),
            })
            .collect();
        Self { embedding: t2(v, d), output: None, norm_f: ones(d), blocks, tokenizer: None, config, matmul_dtype: None }
    }

    /// Runs the matrix products (projections, attention, head) in `dtype` (e.g. bf16), the weight
    /// matrices stored in it; norms, RoPE, softmax and the residual stream stay f32.
    pub fn with_matmul_dtype(mut self, dtype: Option<DType>) -> Self {
        let Some(dt) = dtype else { return self };
        let cast = |t: Tensor<B, 2>| t.cast(dt);
        for blk in self.blocks.iter_mut() {
            for w in
                [&mut blk.wq, &mut blk.wk, &mut blk.wv, &mut blk.wo, &mut blk.w_gate, &mut blk.w_up, &mut blk.w_down]
            {
                *w = cast(w.clone());
            }
        }
        // The embedding is read by the lookup in f32 and by the tied head in `dt`: the head gets
        // its own copy.
        let head = self.output.take().unwrap_or_else(|| self.embedding.clone());
        self.output = Some(cast(head));
        self.matmul_dtype = dtype;
        self
    }

    /// Rotates adjacent channel pairs of the first `rope_dim` channels of every head; the
    /// positions are `start..start + L`.
    ///
    /// # Shapes
    /// - x: [b, L, heads, head_dim]; output: same
    fn rope(&self, x: Tensor<B, 4>, start: usize) -> Tensor<B, 4> {
        let [b, l, h, hd] = x.dims();
        let rd = self.config.rope_dim;
        let device = x.device();
        // angle[pos, i] = pos · θ^(−2i/rope_dim), computed in f64 on the host.
        let theta = self.config.rope_theta as f64;
        let (mut cos, mut sin) = (Vec::with_capacity(l * rd / 2), Vec::with_capacity(l * rd / 2));
        for pos in start..start + l {
            for i in 0..rd / 2 {
                let a = pos as f64 * theta.powf(-2.0 * i as f64 / rd as f64);
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        let c = Tensor::<B, 4>::from_data(TensorData::new(cos, [1, l, 1, rd / 2]), opts::<B>(&device));
        let s = Tensor::<B, 4>::from_data(TensorData::new(sin, [1, l, 1, rd / 2]), opts::<B>(&device));
        let pairs = x.clone().narrow(3, 0, rd).reshape([b, l, h, rd / 2, 2]);
        let x0 = pairs.clone().narrow(4, 0, 1).reshape([b, l, h, rd / 2]);
        let x1 = pairs.narrow(4, 1, 1).reshape([b, l, h, rd / 2]);
        let r0 = x0.clone() * c.clone() - x1.clone() * s.clone();
        let r1 = x0 * s + x1 * c;
        let rotated = Tensor::cat(vec![r0.unsqueeze_dim::<5>(4), r1.unsqueeze_dim::<5>(4)], 4).reshape([b, l, h, rd]);
        if rd == hd {
            rotated
        } else {
            Tensor::cat(vec![rotated, x.narrow(3, rd, hd - rd)], 3)
        }
    }

    /// Logits of every position (in the product dtype after [`Self::with_matmul_dtype`]).
    ///
    /// # Shapes
    /// - tokens: [b, L]; output: [b, L, vocab]
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.head(self.hidden(tokens, None))
    }

    /// An empty key/value cache for `batch` sequences of up to `capacity` positions.
    pub fn new_cache(&self, batch: usize, capacity: usize, device: &B::Device) -> KvCache<B> {
        let c = &self.config;
        let zeros = || Tensor::<B, 4>::zeros([batch, capacity, c.n_kv_head, c.head_dim], opts::<B>(device));
        KvCache {
            k: (0..c.n_layer).map(|_| zeros()).collect(),
            v: (0..c.n_layer).map(|_| zeros()).collect(),
            len: 0,
            capacity,
        }
    }

    /// Runs `tokens` after the positions already in `cache` (which it extends) and returns the
    /// logits of the last one: prefill with the whole prompt, then one token per call.
    ///
    /// # Shapes
    /// - tokens: [b, n] (b the cache's batch, len + n ≤ its capacity); output: [b, vocab]
    pub fn forward_step(&self, tokens: Tensor<B, 2, Int>, cache: &mut KvCache<B>) -> Result<Tensor<B, 2>> {
        let [b, n] = tokens.dims();
        if n == 0 || cache.len + n > cache.capacity || cache.k.first().is_some_and(|k| k.dims()[0] != b) {
            return Err(Error::Config(format!(
                "teacher step: {n} tokens for {b} sequences after {} of a cache of {} positions",
                cache.len, cache.capacity
            )));
        }
        let x = self.hidden(tokens, Some(cache));
        let logits = self.head(x.narrow(1, n - 1, 1));
        let v = logits.dims()[2];
        Ok(logits.reshape([b, v]))
    }

    /// The final normalized hidden states of `tokens`, which follow the positions in `cache`
    /// (none without one).
    ///
    /// # Shapes
    /// - tokens: [b, n]; output: [b, n, d_model]
    fn hidden(&self, tokens: Tensor<B, 2, Int>, mut cache: Option<&mut KvCache<B>>) -> Tensor<B, 3> {
        let c = &self.config;
        let [b, n] = tokens.dims();
        let start = cache.as_ref().map_or(0, |k| k.len);
        let total = start + n;
        let (h, kv, hd) = (c.n_head, c.n_kv_head, c.head_dim);
        let eps = c.norm_eps as f64;
        let device = tokens.device();
        let mut x = burn::tensor::module::embedding(self.embedding.clone(), tokens);
        let d = x.dims()[2];
        // A whole sequence may go through the flash-attention kernel; otherwise query i
        // (position start + i) sees the keys up to its own position, and one query every key.
        let flash = cache.is_none() && crate::fused::flash_attention_enabled();
        let mut future = (n > 1 && !flash).then(|| future_mask::<B>(b, h, n, start, &device));
        for (layer, blk) in self.blocks.iter().enumerate() {
            let u = rms_normalize(x.clone(), eps) * blk.attn_norm.clone().reshape([1, 1, d]);
            let q = self.rope(linear(u.clone(), &blk.wq).reshape([b, n, h, hd]), start).swap_dims(1, 2); // [b,H,n,hd]
            let k = self.rope(linear(u.clone(), &blk.wk).reshape([b, n, kv, hd]), start);
            let v = linear(u, &blk.wv).reshape([b, n, kv, hd]);
            let (k, v) = match cache.as_deref_mut() {
                Some(cache) => {
                    let at = [0..b, start..total, 0..kv, 0..hd];
                    cache.k[layer] = cache.k[layer].clone().slice_assign(at.clone(), k);
                    cache.v[layer] = cache.v[layer].clone().slice_assign(at, v);
                    (cache.k[layer].clone().narrow(1, 0, total), cache.v[layer].clone().narrow(1, 0, total))
                }
                None => (k, v),
            };
            // Consecutive query heads share a KV head: repeat each KV head H/H_kv times.
            let rep = |t: Tensor<B, 4>| {
                t.reshape([b, total, kv, 1, hd])
                    .expand([b, total, kv, h / kv, hd])
                    .reshape([b, total, h, hd])
                    .swap_dims(1, 2)
            };
            let (k, v) = (rep(k), rep(v));
            let fused = match flash {
                true => B::causal_attention(q.clone(), k.clone(), v.clone(), self.matmul_dtype),
                false => None,
            };
            let attn = match fused {
                Some(attn) => attn,
                None => {
                    if n > 1 && future.is_none() {
                        future = Some(future_mask::<B>(b, h, n, start, &device));
                    }
                    attention_reference(q, k, v, future.as_ref(), self.matmul_dtype)
                }
            }; // [b,H,n,hd]
            x = x + linear(attn.swap_dims(1, 2).reshape([b, n, h * hd]), &blk.wo);
            let u = rms_normalize(x.clone(), eps) * blk.ffn_norm.clone().reshape([1, 1, d]);
            let gated = silu(linear(u.clone(), &blk.w_gate)) * linear(u, &blk.w_up);
            x = x + linear(gated, &blk.w_down);
        }
        if let Some(cache) = cache {
            cache.len = total;
        }
        rms_normalize(x, eps) * self.norm_f.clone().reshape([1, 1, d])
    }

    /// The LM head over normalized hidden states.
    ///
    /// # Shapes
    /// - x: [b, L, d_model]; output: [b, L, vocab]
    fn head(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, l, d] = x.dims();
        let head = self.output.as_ref().unwrap_or(&self.embedding);
        match self.matmul_dtype {
            // The logits stay in the product dtype: the losses read bf16 rows as they are, without
            // an f32 copy of the batch × vocabulary matrix.
            Some(dt) if dt != x.dtype() => {
                let v = head.dims()[0];
                B::matmul(x.reshape([b * l, d]).cast(dt), head.clone().transpose()).reshape([b, l, v])
            }
            _ => linear(x, head),
        }
    }
}

/// The keys and values of every layer for the positions run so far ([`LlamaTeacher::forward_step`]).
pub struct KvCache<B: Backend> {
    /// Per layer, [b, capacity, kv heads, head_dim]; the first `len` positions are filled.
    k: Vec<Tensor<B, 4>>,
    v: Vec<Tensor<B, 4>>,
    len: usize,
    capacity: usize,
}

impl<B: Backend> KvCache<B> {
    /// Positions run so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position has run yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray<f32>;

    /// A two-layer shape with grouped-query heads (4 query heads over 2 KV heads of 4 channels)
    /// and a vocabulary of 19: RoPE on the first `rope_dim` channels of each head.
    pub(crate) fn tiny_config(rope_dim: usize, context_length: usize) -> LlamaConfig {
        LlamaConfig {
            n_layer: 2,
            d_model: 16,
            d_ff: 24,
            n_head: 4,
            n_kv_head: 2,
            head_dim: 4,
            rope_dim,
            rope_theta: 10_000.0,
            norm_eps: 1e-5,
            vocab_size: 19,
            context_length,
        }
    }

    /// The Burn forward equals bimamba-llama's CPU forward on a tiny GGUF (Q8_0, Q4_1, F32).
    #[test]
    fn forward_matches_the_cpu_llama_engine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tiny.gguf");
        std::fs::write(&path, bimamba_llama::testing::tiny_llama_gguf(5)).expect("write gguf");
        let teacher = LlamaTeacher::<B>::load(&path, &Default::default()).expect("load");
        let reference = bimamba_llama::LlamaModel::load(&path).expect("reference loads");
        let ids: Vec<u32> = (0..23u32).map(|i| (i * 37 + 5) % teacher.config.vocab_size as u32).collect();
        let mut cache = reference.new_cache();
        let want = reference.forward(&mut cache, &ids).expect("reference forward");
        let t = Tensor::<B, 2, Int>::from_data(
            TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, ids.len()]),
            &Default::default(),
        );
        let got: Vec<f32> = teacher.forward(t).to_data().iter::<f32>().collect();
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(got.iter().all(|x| x.is_finite()), "non-finite logits");
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, |m, d| if d.is_nan() || d > m { d } else { m })
            / scale;
        assert!(err < 1e-4, "max relative error {err}");
    }

    /// Products in another dtype (f64 here: NdArray has no bf16) keep the logits, which come
    /// back in that dtype; bf16 runs on the CUDA backend.
    #[test]
    fn product_dtype_keeps_the_logits() {
        let cfg = tiny_config(4, 64);
        let dev = Default::default();
        let plain = LlamaTeacher::<B>::random(cfg.clone(), 3, &dev);
        let cast = LlamaTeacher::<B>::random(cfg, 3, &dev).with_matmul_dtype(Some(DType::F64));
        let ids: Vec<i64> = (0..14).map(|i| (i * 7 + 2) % 19).collect();
        let t = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [2, 7]), &dev);
        let a = plain.forward(t.clone());
        let b = cast.forward(t);
        assert_eq!(b.dtype(), DType::F64);
        let (a, b): (Vec<f64>, Vec<f64>) = (a.to_data().iter::<f64>().collect(), b.to_data().iter::<f64>().collect());
        let scale = a.iter().fold(0f64, |m, x| m.max(x.abs()));
        assert!(scale > 0.1, "degenerate logits");
        let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f64, f64::max) / scale;
        assert!(err < 1e-5, "relative error {err}");
    }

    /// Prefill of a prompt then one token at a time through the cache gives the logits of the
    /// whole-sequence forward at every position (grouped-query heads, partial RoPE).
    #[test]
    fn cached_steps_equal_the_whole_forward() {
        let cfg = tiny_config(2, 64);
        let dev = Default::default();
        let teacher = LlamaTeacher::<B>::random(cfg, 5, &dev);
        let (b, l, prompt) = (2usize, 9usize, 4usize);
        let ids: Vec<i64> = (0..b * l).map(|i| ((i * 7 + 3) % 19) as i64).collect();
        let all = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, l]), &dev);
        let want = teacher.forward(all.clone());
        let mut cache = teacher.new_cache(b, l, &dev);
        let mut got = vec![teacher.forward_step(all.clone().narrow(1, 0, prompt), &mut cache).expect("prefill")];
        for t in prompt..l {
            got.push(teacher.forward_step(all.clone().narrow(1, t, 1), &mut cache).expect("step"));
        }
        assert_eq!(cache.len(), l);
        for (i, g) in got.into_iter().enumerate() {
            let w = want.clone().narrow(1, prompt - 1 + i, 1).reshape([b, 19]);
            let err: f32 = (g - w.clone()).abs().max().into_scalar();
            let scale: f32 = w.abs().max().into_scalar();
            assert!(err <= 1e-5 * scale, "position {}: max error {err} (scale {scale})", prompt - 1 + i);
        }
        // A step past the capacity is refused.
        assert!(teacher.forward_step(all.narrow(1, 0, 1), &mut cache).is_err());
    }
}
