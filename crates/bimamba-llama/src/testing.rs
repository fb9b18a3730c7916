//! Test support (unit tests, and other crates' tests through the `testing` feature): a minimal
//! GGUF v3 writer, Q8_0/Q4_0/Q4_1 quantizers that also return the values they decode to (so a
//! test's reference does not go through the loader's decoding), a seeded generator, a tiny
//! byte-level BPE vocabulary, and [`tiny_llama_gguf`], a complete small model file.

use std::path::PathBuf;

use half::f16;

/// GGUF metadata value type ids.
pub const T_U32: u32 = 4;
pub const T_F32: u32 = 6;
pub const T_STRING: u32 = 8;
pub const T_ARRAY: u32 = 9;
pub const T_I32: u32 = 5;
/// ggml tensor type ids.
pub const GGML_F32: u32 = 0;
pub const GGML_Q8_0: u32 = 8;
pub const GGML_Q4_0: u32 = 2;
pub const GGML_Q4_1: u32 = 3;

const ALIGN: usize = 32;

/// Accumulates key/values and tensors, then lays out a GGUF v3 file.
#[derive(Default)]
pub struct GgufWriter {
    kv: Vec<u8>,
    n_kv: u64,
    infos: Vec<u8>,
    n_tensors: u64,
    data: Vec<u8>,
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

impl GgufWriter {
    fn key(&mut self, key: &str, ty: u32, value: &[u8]) -> &mut Self {
        put_str(&mut self.kv, key);
        self.kv.extend_from_slice(&ty.to_le_bytes());
        self.kv.extend_from_slice(value);
        self.n_kv += 1;
        self
    }
    pub fn u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.key(key, T_U32, &v.to_le_bytes())
    }
    pub fn f32(&mut self, key: &str, v: f32) -> &mut Self {
        self.key(key, T_F32, &v.to_le_bytes())
    }
    pub fn str(&mut self, key: &str, v: &str) -> &mut Self {
        let mut b = Vec::new();
        put_str(&mut b, v);
        self.key(key, T_STRING, &b)
    }
    pub fn strs(&mut self, key: &str, v: &[String]) -> &mut Self {
        let mut b = T_STRING.to_le_bytes().to_vec();
        b.extend_from_slice(&(v.len() as u64).to_le_bytes());
        v.iter().for_each(|s| put_str(&mut b, s));
        self.key(key, T_ARRAY, &b)
    }
    pub fn i32s(&mut self, key: &str, v: &[i32]) -> &mut Self {
        let mut b = T_I32.to_le_bytes().to_vec();
        b.extend_from_slice(&(v.len() as u64).to_le_bytes());
        v.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
        self.key(key, T_ARRAY, &b)
    }
    /// A tensor of row-major `shape` (written with GGUF's reversed dimension order).
    pub fn tensor(&mut self, name: &str, shape: &[usize], ggml_type: u32, bytes: &[u8]) -> &mut Self {
        put_str(&mut self.infos, name);
        self.infos.extend_from_slice(&(shape.len() as u32).to_le_bytes());
        shape.iter().rev().for_each(|&d| self.infos.extend_from_slice(&(d as u64).to_le_bytes()));
        self.infos.extend_from_slice(&ggml_type.to_le_bytes());
        self.infos.extend_from_slice(&(self.data.len() as u64).to_le_bytes());
        self.data.extend_from_slice(bytes);
        self.data.resize(self.data.len().next_multiple_of(ALIGN), 0);
        self.n_tensors += 1;
        self
    }
    pub fn finish(&self) -> Vec<u8> {
        let mut f = b"GGUF".to_vec();
        f.extend_from_slice(&3u32.to_le_bytes());
        f.extend_from_slice(&self.n_tensors.to_le_bytes());
        f.extend_from_slice(&self.n_kv.to_le_bytes());
        f.extend_from_slice(&self.kv);
        f.extend_from_slice(&self.infos);
        f.resize(f.len().next_multiple_of(ALIGN), 0);
        f.extend_from_slice(&self.data);
        f
    }
}

/// F32 tensor bytes.
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Q8_0-quantizes `v` (length a multiple of 32): per block d = max|x| / 127 stored as f16,
/// q = round(x / d). Returns the bytes and the values they decode to (d_f16 · q).
pub fn q8_0(v: &[f32]) -> (Vec<u8>, Vec<f32>) {
    assert_eq!(v.len() % 32, 0, "Q8_0 rows are whole blocks of 32");
    let mut bytes = Vec::new();
    let mut deq = Vec::new();
    for block in v.chunks_exact(32) {
        let amax = block.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let d = f16::from_f32(amax / 127.0);
        let df = d.to_f32();
        bytes.extend_from_slice(&d.to_le_bytes());
        for &x in block {
            let q = if df == 0.0 { 0 } else { (x / df).round().clamp(-127.0, 127.0) as i8 };
            bytes.push(q as u8);
            deq.push(df * q as f32);
        }
    }
    (bytes, deq)
}

/// Packs 32 nibbles: byte j = q[j] | q[j + 16] << 4 (GGML's order).
fn nibbles(q: &[u8]) -> Vec<u8> {
    (0..16).map(|j| q[j] | (q[j + 16] << 4)).collect()
}

/// Q4_0-quantizes `v`: per block d = (the signed value of largest magnitude) / −8 as f16,
/// q = clamp(round(x / d) + 8, 0, 15). Returns the bytes and the values d_f16 · (q − 8).
pub fn q4_0(v: &[f32]) -> (Vec<u8>, Vec<f32>) {
    assert_eq!(v.len() % 32, 0, "Q4_0 rows are whole blocks of 32");
    let mut bytes = Vec::new();
    let mut deq = Vec::new();
    for block in v.chunks_exact(32) {
        let max = block.iter().copied().fold(0.0f32, |m, x| if x.abs() > m.abs() { x } else { m });
        let d = f16::from_f32(max / -8.0);
        let df = d.to_f32();
        let q: Vec<u8> = block
            .iter()
            .map(|&x| if df == 0.0 { 8 } else { ((x / df).round() + 8.0).clamp(0.0, 15.0) as u8 })
            .collect();
        bytes.extend_from_slice(&d.to_le_bytes());
        bytes.extend(nibbles(&q));
        deq.extend(q.iter().map(|&q| df * (q as i32 - 8) as f32));
    }
    (bytes, deq)
}

/// Q4_1-quantizes `v`: per block m = min, d = (max − min) / 15, both f16,
/// q = clamp(round((x − m) / d), 0, 15). Returns the bytes and the values d_f16 · q + m_f16.
pub fn q4_1(v: &[f32]) -> (Vec<u8>, Vec<f32>) {
    assert_eq!(v.len() % 32, 0, "Q4_1 rows are whole blocks of 32");
    let mut bytes = Vec::new();
    let mut deq = Vec::new();
    for block in v.chunks_exact(32) {
        let lo = block.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let (d, m) = (f16::from_f32((hi - lo) / 15.0), f16::from_f32(lo));
        let (df, mf) = (d.to_f32(), m.to_f32());
        let q: Vec<u8> =
            block.iter().map(|&x| if df == 0.0 { 0 } else { ((x - mf) / df).round().clamp(0.0, 15.0) as u8 }).collect();
        bytes.extend_from_slice(&d.to_le_bytes());
        bytes.extend_from_slice(&m.to_le_bytes());
        bytes.extend(nibbles(&q));
        deq.extend(q.iter().map(|&q| df * q as f32 + mf));
    }
    (bytes, deq)
}

/// A deterministic generator of floats in [-1, 1).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next_f32() * scale).collect()
    }
}

/// GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the other bytes to
/// U+0100 onwards in byte order (so the space 0x20 becomes 'Ġ' = U+0120).
pub fn byte_char(b: u8) -> char {
    let printable = |x: u32| (0x21..=0x7E).contains(&x) || (0xA1..=0xAC).contains(&x) || (0xAE..=0xFF).contains(&x);
    if printable(b as u32) {
        return char::from(b);
    }
    let n = (0..b as u32).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).expect("U+0100..U+0143 are characters")
}

/// Merges of the tiny vocabulary, in rank order.
pub const MERGES: [&str; 10] = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d", "1 2"];
/// Its control tokens (ids 0 and 1).
pub const SPECIAL: [&str; 2] = ["<|endoftext|>", "<|im_start|>"];

/// The tiny vocabulary: the control tokens, the 256 byte characters, then one token per merge.
pub fn tiny_vocab() -> Vec<String> {
    let mut v: Vec<String> = SPECIAL.iter().map(|s| s.to_string()).collect();
    v.extend((0..=255u8).map(|b| byte_char(b).to_string()));
    v.extend(MERGES.iter().map(|m| m.replace(' ', "")));
    v
}

/// Writes the `tokenizer.ggml.*` keys of the tiny vocabulary (end of sequence: id 0).
pub fn put_tiny_tokenizer(g: &mut GgufWriter, model: &str, pre: &str) {
    let tokens = tiny_vocab();
    let types: Vec<i32> = (0..tokens.len()).map(|i| if i < SPECIAL.len() { 3 } else { 1 }).collect();
    let merges: Vec<String> = MERGES.iter().map(|s| s.to_string()).collect();
    g.str("tokenizer.ggml.model", model)
        .str("tokenizer.ggml.pre", pre)
        .strs("tokenizer.ggml.tokens", &tokens)
        .strs("tokenizer.ggml.merges", &merges)
        .i32s("tokenizer.ggml.token_type", &types)
        .u32("tokenizer.ggml.eos_token_id", 0);
}

/// A complete tiny LLaMA GGUF with the tiny tokenizer: 2 blocks, d_model 64, 4 query / 2 KV
/// heads of 16, SwiGLU width 96, context 4096, tied embeddings; matrices in Q8_0, Q4_1 and F32.
pub fn tiny_llama_gguf(seed: u64) -> Vec<u8> {
    let (d, ff, layers) = (64usize, 96usize, 2usize);
    let vocab = tiny_vocab().len();
    let mut rng = Lcg(seed);
    let mut g = GgufWriter::default();
    g.str("general.architecture", "llama")
        .u32("llama.block_count", layers as u32)
        .u32("llama.context_length", 4096)
        .u32("llama.embedding_length", d as u32)
        .u32("llama.feed_forward_length", ff as u32)
        .u32("llama.attention.head_count", 4)
        .u32("llama.attention.head_count_kv", 2)
        .f32("llama.rope.freq_base", 10000.0)
        .f32("llama.attention.layer_norm_rms_epsilon", 1e-5);
    put_tiny_tokenizer(&mut g, "gpt2", "smollm");
    let norm = |rng: &mut Lcg| f32_bytes(&(0..d).map(|_| 1.0 + 0.2 * rng.next_f32()).collect::<Vec<_>>());
    let s = 2.0 / (d as f32).sqrt();
    g.tensor("token_embd.weight", &[vocab, d], GGML_Q8_0, &q8_0(&rng.vec(vocab * d, 1.0)).0);
    g.tensor("output_norm.weight", &[d], GGML_F32, &norm(&mut rng));
    for i in 0..layers {
        let n = |t: &str| format!("blk.{i}.{t}.weight");
        g.tensor(&n("attn_norm"), &[d], GGML_F32, &norm(&mut rng))
            .tensor(&n("attn_q"), &[64, d], GGML_Q4_1, &q4_1(&rng.vec(64 * d, s)).0)
            .tensor(&n("attn_k"), &[32, d], GGML_Q8_0, &q8_0(&rng.vec(32 * d, s)).0)
            .tensor(&n("attn_v"), &[32, d], GGML_F32, &f32_bytes(&rng.vec(32 * d, s)))
            .tensor(&n("attn_output"), &[d, 64], GGML_Q4_1, &q4_1(&rng.vec(d * 64, s)).0)
            .tensor(&n("ffn_norm"), &[d], GGML_F32, &norm(&mut rng))
            .tensor(&n("ffn_gate"), &[ff, d], GGML_Q8_0, &q8_0(&rng.vec(ff * d, s)).0)
            .tensor(&n("ffn_up"), &[ff, d], GGML_Q4_1, &q4_1(&rng.vec(ff * d, s)).0)
            .tensor(&n("ffn_down"), &[d, ff], GGML_Q8_0, &q8_0(&rng.vec(d * ff, s)).0);
    }
    g.finish()
}

/// A unique temporary path for one test's file.
pub fn tmp_path(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bimamba-llama-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("the temp dir is writable");
    d.join(format!("{tag}.gguf"))
}
