//! The forward on tiny GGUF files written here (F32 and Q8_0 tensors), against a plain f64
//! reference written from the definitions: full causal attention recomputed from scratch at
//! every position (no cache), RoPE as complex rotation of adjacent pairs, GQA by head index.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bimamba_lm::{LanguageModel, ModelError};

use crate::testing::{
    f32_bytes, q4_0, q4_1, q8_0, tmp_path, GgufWriter, Lcg, GGML_F32, GGML_Q4_0, GGML_Q4_1, GGML_Q8_0,
};
use crate::LlamaModel;

const VOCAB: usize = 40;
const D: usize = 64;
const N_HEAD: usize = 4;
const N_KV: usize = 2;
const HD: usize = 16;
const FF: usize = 96;
const N_LAYER: usize = 2;
const THETA: f64 = 10000.0;
const EPS: f64 = 1e-5;
const CTX: usize = 32;

/// One tensor to write: row-major shape, ggml type, bytes.
type Tensor = (Vec<usize>, u32, Vec<u8>);

/// A tiny model's file contents and the f64 values its tensors decode to.
struct Tiny {
    tensors: BTreeMap<String, Tensor>,
    values: BTreeMap<String, Vec<f64>>,
    arch: &'static str,
}

impl Tiny {
    /// Random weights; the matrices cycle through Q8_0, Q4_1, Q4_0 and F32 so every path of
    /// the loader and of the product is exercised.
    fn new(tied: bool, seed: u64) -> Tiny {
        let mut rng = Lcg(seed);
        let mut t = Tiny { tensors: BTreeMap::new(), values: BTreeMap::new(), arch: "llama" };
        let mut add = |name: String, shape: Vec<usize>, ty: u32, v: Vec<f32>| {
            let (bytes, deq) = match ty {
                GGML_Q8_0 => q8_0(&v),
                GGML_Q4_1 => q4_1(&v),
                GGML_Q4_0 => q4_0(&v),
                _ => (f32_bytes(&v), v),
            };
            t.values.insert(name.clone(), deq.iter().map(|&x| x as f64).collect());
            t.tensors.insert(name, (shape, ty, bytes));
        };
        let norm = |rng: &mut Lcg| (0..D).map(|_| 1.0 + 0.2 * rng.next_f32()).collect::<Vec<f32>>();
        add("token_embd.weight".into(), vec![VOCAB, D], GGML_Q8_0, rng.vec(VOCAB * D, 1.0));
        if !tied {
            add("output.weight".into(), vec![VOCAB, D], GGML_Q4_1, rng.vec(VOCAB * D, 0.5));
        }
        add("output_norm.weight".into(), vec![D], GGML_F32, norm(&mut rng));
        for i in 0..N_LAYER {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            let s = 1.0 / (D as f32).sqrt();
            add(n("attn_norm"), vec![D], GGML_F32, norm(&mut rng));
            add(n("attn_q"), vec![N_HEAD * HD, D], GGML_Q4_1, rng.vec(N_HEAD * HD * D, 2.0 * s));
            add(n("attn_k"), vec![N_KV * HD, D], GGML_F32, rng.vec(N_KV * HD * D, 2.0 * s));
            add(n("attn_v"), vec![N_KV * HD, D], GGML_Q8_0, rng.vec(N_KV * HD * D, s));
            add(n("attn_output"), vec![D, N_HEAD * HD], GGML_Q4_0, rng.vec(D * N_HEAD * HD, s));
            add(n("ffn_norm"), vec![D], GGML_F32, norm(&mut rng));
            add(n("ffn_gate"), vec![FF, D], GGML_F32, rng.vec(FF * D, s));
            add(n("ffn_up"), vec![FF, D], GGML_Q4_1, rng.vec(FF * D, s));
            add(n("ffn_down"), vec![D, FF], GGML_Q8_0, rng.vec(D * FF, 1.0 / (FF as f32).sqrt()));
        }
        t
    }

    fn write(&self, tag: &str) -> PathBuf {
        let mut g = GgufWriter::default();
        g.str("general.architecture", self.arch)
            .u32("llama.block_count", N_LAYER as u32)
            .u32("llama.context_length", CTX as u32)
            .u32("llama.embedding_length", D as u32)
            .u32("llama.feed_forward_length", FF as u32)
            .u32("llama.attention.head_count", N_HEAD as u32)
            .u32("llama.attention.head_count_kv", N_KV as u32)
            .u32("llama.rope.dimension_count", HD as u32)
            .f32("llama.rope.freq_base", THETA as f32)
            .f32("llama.attention.layer_norm_rms_epsilon", EPS as f32)
            .u32("llama.vocab_size", VOCAB as u32);
        for (name, (shape, ty, bytes)) in &self.tensors {
            g.tensor(name, shape, *ty, bytes);
        }
        let path = tmp_path(tag);
        std::fs::write(&path, g.finish()).expect("the temp file is writable");
        path
    }

    fn load(&self, tag: &str) -> Result<LlamaModel, ModelError> {
        let path = self.write(tag);
        let r = LlamaModel::load(&path);
        std::fs::remove_file(&path).ok();
        r
    }

    fn v(&self, name: &str) -> &[f64] {
        &self.values[name]
    }

    /// `W · x` for a [rows, cols] tensor.
    fn matvec(&self, name: &str, x: &[f64]) -> Vec<f64> {
        self.v(name).chunks_exact(x.len()).map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum()).collect()
    }

    fn rms(&self, name: &str, x: &[f64]) -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let s = 1.0 / (ms + EPS).sqrt();
        x.iter().zip(self.v(name)).map(|(a, g)| a * s * g).collect()
    }

    /// Rotates each head's pairs (x[2i], x[2i+1]) as the complex number x[2i] + i·x[2i+1]
    /// multiplied by e^{i·pos·θ^(−2i/HD)}.
    fn rope(x: &mut [f64], pos: usize) {
        for head in x.chunks_exact_mut(HD) {
            for i in 0..HD / 2 {
                let angle = pos as f64 * THETA.powf(-((2 * i) as f64) / HD as f64);
                let (re, im) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = re * angle.cos() - im * angle.sin();
                head[2 * i + 1] = re * angle.sin() + im * angle.cos();
            }
        }
    }

    /// Logits [n, VOCAB] of the whole sequence, every position recomputed from the raw tokens.
    fn reference(&self, tokens: &[u32]) -> Vec<f64> {
        let n = tokens.len();
        let emb = self.v("token_embd.weight");
        let mut x: Vec<Vec<f64>> = tokens.iter().map(|&t| emb[t as usize * D..(t as usize + 1) * D].to_vec()).collect();
        for l in 0..N_LAYER {
            let w = |s: &str| format!("blk.{l}.{s}.weight");
            let normed: Vec<Vec<f64>> = x.iter().map(|xi| self.rms(&w("attn_norm"), xi)).collect();
            let mut q: Vec<Vec<f64>> = normed.iter().map(|h| self.matvec(&w("attn_q"), h)).collect();
            let mut k: Vec<Vec<f64>> = normed.iter().map(|h| self.matvec(&w("attn_k"), h)).collect();
            let v: Vec<Vec<f64>> = normed.iter().map(|h| self.matvec(&w("attn_v"), h)).collect();
            for (i, (qi, ki)) in q.iter_mut().zip(k.iter_mut()).enumerate() {
                Self::rope(qi, i);
                Self::rope(ki, i);
            }
            for i in 0..n {
                let mut att = vec![0.0f64; N_HEAD * HD];
                for h in 0..N_HEAD {
                    let g = h / (N_HEAD / N_KV);
                    let qh = &q[i][h * HD..(h + 1) * HD];
                    let s: Vec<f64> = (0..=i)
                        .map(|j| {
                            qh.iter().zip(&k[j][g * HD..(g + 1) * HD]).map(|(a, b)| a * b).sum::<f64>()
                                / (HD as f64).sqrt()
                        })
                        .collect();
                    let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|sj| (sj - m).exp()).sum();
                    for (j, sj) in s.iter().enumerate() {
                        for e in 0..HD {
                            att[h * HD + e] += (sj - m).exp() / z * v[j][g * HD + e];
                        }
                    }
                }
                let o = self.matvec(&w("attn_output"), &att);
                x[i].iter_mut().zip(o).for_each(|(a, b)| *a += b);
                let h2 = self.rms(&w("ffn_norm"), &x[i]);
                let gate = self.matvec(&w("ffn_gate"), &h2);
                let up = self.matvec(&w("ffn_up"), &h2);
                let act: Vec<f64> = gate.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
                let down = self.matvec(&w("ffn_down"), &act);
                x[i].iter_mut().zip(down).for_each(|(a, b)| *a += b);
            }
        }
        let head = if self.values.contains_key("output.weight") { "output.weight" } else { "token_embd.weight" };
        x.iter().flat_map(|xi| self.matvec(head, &self.rms("output_norm.weight", xi))).collect()
    }
}

fn max_rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).abs() / (1.0 + w.abs())).fold(0.0, f64::max)
}

const TOKENS: [u32; 9] = [3, 17, 39, 0, 17, 17, 22, 8, 31];

/// The forward equals the f64 reference, tied and untied heads.
#[test]
fn forward_matches_reference() {
    for tied in [true, false] {
        let tiny = Tiny::new(tied, 11 + tied as u64);
        let model = tiny.load(&format!("ref-{tied}")).expect("the tiny model loads");
        assert_eq!(model.output.is_none(), tied);
        let mut cache = model.new_cache();
        let got = model.forward(&mut cache, &TOKENS).expect("forward");
        let want = tiny.reference(&TOKENS);
        let err = max_rel_err(&got, &want);
        assert!(err < 1e-4, "tied {tied}: max relative error {err}");
        // The reference's logits vary along the sequence (attention is not trivially uniform).
        assert!((want[0] - want[(TOKENS.len() - 1) * VOCAB]).abs() > 1e-3);
        assert_eq!(cache.position, TOKENS.len());
    }
}

/// With 8-bit activations (llama.cpp's arithmetic) the quantized matrices are re-laid, the f32
/// ones stay, and the logits stay within the activation rounding of the f64 reference.
#[test]
fn q8_activations_stay_close_to_reference() {
    use crate::{Activations, Storage};
    for tied in [true, false] {
        let tiny = Tiny::new(tied, 21 + tied as u64);
        let path = tiny.write(&format!("q8-{tied}"));
        let model = LlamaModel::load_with(&path, Activations::Q8).expect("the tiny model loads");
        let exact = LlamaModel::load(&path).expect("the tiny model loads");
        std::fs::remove_file(&path).ok();
        assert_eq!(model.activations(), Activations::Q8);
        let b = &model.blocks[0];
        assert!(matches!(b.wq.storage, Storage::Qdot(_)) && matches!(b.w_down.storage, Storage::Qdot(_)));
        assert!(matches!(b.wk.storage, Storage::F32(_)), "an F32 tensor stays f32");
        assert!(matches!(exact.blocks[0].wq.storage, Storage::F32(_)), "f32 mode dequantizes at load");
        let got = model.forward(&mut model.new_cache(), &TOKENS).expect("forward");
        let want = tiny.reference(&TOKENS);
        let err = max_rel_err(&got, &want);
        // Rounding errors of about 1/254 per block compound over two layers and the head; a wrong
        // kernel gives errors of order 1.
        assert!(err < 8e-2, "tied {tied}: max relative error {err}");
        let f32_err = max_rel_err(&exact.forward(&mut exact.new_cache(), &TOKENS).expect("forward"), &want);
        assert!(err > f32_err, "8-bit activations should round more than f32 ({err} vs {f32_err})");
        // Prefill and single steps agree in this mode too (each token is quantized on its own).
        let mut stepped = model.new_cache();
        for (i, &t) in TOKENS.iter().enumerate() {
            let row = model.forward(&mut stepped, &[t]).expect("step");
            let w: Vec<f64> = got[i * VOCAB..(i + 1) * VOCAB].iter().map(|&x| x as f64).collect();
            assert!(max_rel_err(&row, &w) < 1e-5, "position {i}");
        }
    }
}

/// Branches run together give each continuation the logits of feeding it to its own copy of the
/// cache (different lengths, one empty), in both activation modes; the cache is unchanged.
#[test]
fn branches_equal_separate_forks() {
    use crate::Activations;
    let tiny = Tiny::new(false, 31);
    let path = tiny.write("branches");
    for act in [Activations::F32, Activations::Q8] {
        let model = LlamaModel::load_with(&path, act).expect("the tiny model loads");
        let mut cache = model.new_cache();
        model.forward(&mut cache, &TOKENS[..5]).expect("context");
        let before = cache.clone();
        let branches: [&[u32]; 4] = [&[7, 1, 2], &[], &[39], &[5, 5, 6, 0, 12]];
        let got = model.forward_branches(&cache, &branches).expect("branches");
        assert_eq!(cache, before, "the cache is left as it was");
        for (b, rows) in branches.iter().zip(&got) {
            let want = model.forward(&mut cache.clone(), b).expect("fork");
            assert_eq!(rows.len(), want.len());
            let want: Vec<f64> = want.iter().map(|&x| x as f64).collect();
            assert!(max_rel_err(rows, &want) < 1e-5, "{act}: branch {b:?}");
        }
    }
    std::fs::remove_file(&path).ok();
}

/// Prefilling a block leaves the same logits and KV cache as feeding the tokens one at a time
/// (and as any split of the block).
#[test]
fn prefill_equals_steps() {
    let tiny = Tiny::new(true, 5);
    let model = tiny.load("steps").expect("the tiny model loads");
    let mut whole = model.new_cache();
    let all = model.forward(&mut whole, &TOKENS).expect("forward");
    let mut stepped = model.new_cache();
    for (i, &t) in TOKENS.iter().enumerate() {
        let row = model.forward(&mut stepped, &[t]).expect("step");
        let want: Vec<f64> = all[i * VOCAB..(i + 1) * VOCAB].iter().map(|&x| x as f64).collect();
        assert!(max_rel_err(&row, &want) < 1e-5, "position {i}");
    }
    let mut split = model.new_cache();
    model.forward(&mut split, &TOKENS[..4]).expect("first part");
    let tail = model.forward(&mut split, &TOKENS[4..]).expect("second part");
    let want: Vec<f64> = all[4 * VOCAB..].iter().map(|&x| x as f64).collect();
    assert!(max_rel_err(&tail, &want) < 1e-5);
    for cache in [&stepped, &split] {
        assert_eq!(cache.position, whole.position);
        for (a, b) in cache.layers.iter().zip(&whole.layers) {
            let d =
                a.k.iter().chain(&a.v).zip(b.k.iter().chain(&b.v)).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(d < 1e-5, "KV caches differ by {d}");
        }
    }
}

/// forward_last is the last row of forward; a cloned cache forks the sequence.
#[test]
fn forward_last_and_fork() {
    let tiny = Tiny::new(false, 9);
    let model = tiny.load("fork").expect("the tiny model loads");
    let mut a = model.new_state();
    let all = LanguageModel::forward(&model, &mut a, &TOKENS).expect("forward");
    let mut b = model.new_state();
    let last = LanguageModel::forward_last(&model, &mut b, &TOKENS).expect("forward_last");
    let want: Vec<f64> = all[all.len() - VOCAB..].iter().map(|&x| x as f64).collect();
    assert!(max_rel_err(&last, &want) < 1e-6);
    assert_eq!(a, b);

    let mut prefix = model.new_cache();
    model.forward(&mut prefix, &TOKENS[..5]).expect("prefix");
    for suffix in [&[1u32, 2][..], &[38, 38, 4][..]] {
        let mut fork = prefix.clone();
        let got = model.forward_last(&mut fork, suffix).expect("fork");
        let full: Vec<u32> = TOKENS[..5].iter().chain(suffix).copied().collect();
        let want = tiny.reference(&full);
        assert!(max_rel_err(&got, &want[want.len() - VOCAB..]) < 1e-4);
    }
    assert_eq!(prefix.position, 5);
    assert_eq!(model.parameter_count(), 2 * VOCAB * D + D + N_LAYER * (2 * D + 2 * D * 64 + 2 * D * 32 + 3 * D * FF));
}

/// Bad input is an error, and leaves the cache untouched.
#[test]
fn rejects_bad_tokens_and_overflow() {
    let tiny = Tiny::new(true, 3);
    let model = tiny.load("bad-input").expect("the tiny model loads");
    let mut cache = model.new_cache();
    match model.forward(&mut cache, &[1, VOCAB as u32]) {
        Err(ModelError::TokenOutOfRange { id, vocab }) => assert_eq!((id as usize, vocab), (VOCAB, VOCAB)),
        other => panic!("expected TokenOutOfRange, got {other:?}"),
    }
    assert_eq!(cache, model.new_cache());
    model.forward(&mut cache, &[1; CTX - 1]).expect("fits the context");
    let before = cache.clone();
    let err = model.forward(&mut cache, &[1, 2]).expect_err("33 tokens exceed a context of 32");
    assert!(err.to_string().contains("context length of 32"), "{err}");
    assert_eq!(cache, before);
    model.forward(&mut cache, &[2]).expect("exactly the context length");
    let other = Tiny::new(true, 4).load("bad-input-other").expect("loads");
    let mut foreign = other.new_cache();
    other.forward(&mut foreign, &[1]).expect("forward");
    foreign.layers.pop();
    assert!(model.forward(&mut foreign, &[1]).is_err());
}

/// Malformed files are refused with the tensor or key named.
#[test]
fn rejects_malformed_files() {
    let mut t = Tiny::new(true, 1);
    t.tensors.remove("blk.1.ffn_down.weight");
    match t.load("missing") {
        Err(ModelError::MissingTensor { tensor, .. }) => assert_eq!(tensor, "blk.1.ffn_down.weight"),
        other => panic!("expected MissingTensor, got {other:?}"),
    }

    let mut t = Tiny::new(true, 1);
    t.tensors.insert("blk.0.attn_k.weight".into(), (vec![D, D], GGML_F32, f32_bytes(&vec![0.0; D * D])));
    match t.load("shape") {
        Err(ModelError::Shape { tensor, expected, actual, .. }) => {
            assert_eq!(tensor, "blk.0.attn_k.weight");
            assert_eq!((expected, actual), (vec![N_KV * HD, D], vec![D, D]));
        }
        other => panic!("expected Shape, got {other:?}"),
    }

    let mut t = Tiny::new(true, 1);
    t.tensors.insert("blk.0.attn_q.bias".into(), (vec![D], GGML_F32, f32_bytes(&[0.0; D])));
    let err = t.load("bias").expect_err("a bias is not implemented");
    assert!(err.to_string().contains("blk.0.attn_q.bias"), "{err}");

    let mut t = Tiny::new(true, 1);
    t.arch = "mamba2";
    match t.load("arch") {
        Err(ModelError::Config { field, .. }) => assert_eq!(field, "general.architecture"),
        other => panic!("expected Config, got {other:?}"),
    }
}

/// The shared tiny file (the CLI's tests use it) loads with its own tokenizer, sized to its
/// embedding, and its prefill agrees with single steps.
#[test]
fn tiny_llama_gguf_loads_with_its_tokenizer() {
    let path = tmp_path("tiny-shared");
    std::fs::write(&path, crate::testing::tiny_llama_gguf(3)).expect("the temp file is writable");
    let ck = bimamba_formats::Checkpoint::open(&path).expect("opens");
    let model = LlamaModel::from_checkpoint(&ck).expect("loads");
    let tok = crate::gguf_tokenizer(&ck).expect("tokenizer");
    std::fs::remove_file(&path).ok();
    assert_eq!(tok.vocab_size(), model.config.vocab_size);
    assert_eq!(model.eos_token_id, Some(0));
    let ids = tok.encode("<|im_start|>hello world 12").expect("encodes");
    let mut whole = model.new_cache();
    let all = model.forward(&mut whole, &ids).expect("forward");
    let mut stepped = model.new_cache();
    let v = model.config.vocab_size;
    for (i, &t) in ids.iter().enumerate() {
        let row = model.forward(&mut stepped, &[t]).expect("step");
        let want: Vec<f64> = all[i * v..(i + 1) * v].iter().map(|&x| x as f64).collect();
        assert!(max_rel_err(&row, &want) < 1e-5, "position {i}");
    }
}

/// A block count far beyond the file's tensors is refused before anything is sized by it (it
/// used to build a list of nine names per block first: 10^9 blocks aborted the process).
#[test]
fn an_absurd_block_count_is_refused() {
    let mut bytes = crate::testing::tiny_llama_gguf(3);
    let key = b"llama.block_count";
    let at = bytes.windows(key.len()).position(|w| w == key).expect("the key") + key.len();
    // The value follows the key and its 4-byte type (u32).
    bytes[at + 4..at + 8].copy_from_slice(&1_000_000_000u32.to_le_bytes());
    let path = tmp_path("blocks");
    std::fs::write(&path, &bytes).expect("the temp file is writable");
    let ck = bimamba_formats::Checkpoint::open(&path).expect("opens");
    std::fs::remove_file(&path).ok();
    let err = LlamaModel::from_checkpoint(&ck).expect_err("refused").to_string();
    assert!(err.contains("llama.block_count is 1000000000") && err.contains("blk.999999999"), "{err}");
}
