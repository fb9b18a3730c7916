//! The GGUF tokenizer on a tiny byte-level BPE vocabulary written here: merges applied in rank
//! order, control tokens matched whole, the `smollm` pre-tokenizer splitting digits, exact
//! byte round trips, and refusals of what is not implemented.

use bimamba_formats::Checkpoint;
use bimamba_lm::ModelError;

use crate::gguf_tokenizer;
use crate::testing::{byte_char, put_tiny_tokenizer, tiny_vocab, tmp_path, GgufWriter, MERGES};

fn id(tok: &str) -> u32 {
    tiny_vocab().iter().position(|t| t == tok).expect("the token is in the test vocabulary") as u32
}

fn open(tag: &str, model: &str, pre: &str) -> Result<bimamba_text::Tokenizer, ModelError> {
    let mut g = GgufWriter::default();
    g.str("general.architecture", "llama");
    put_tiny_tokenizer(&mut g, model, pre);
    let path = tmp_path(tag);
    std::fs::write(&path, g.finish()).expect("the temp file is writable");
    let ck = Checkpoint::open(&path).expect("the tokenizer-only GGUF opens");
    let r = gguf_tokenizer(&ck);
    std::fs::remove_file(&path).ok();
    r
}

#[test]
fn bpe_merges_and_control_tokens() {
    let tok = open("tok-smollm", "gpt2", "smollm").expect("builds");
    assert_eq!(tok.vocab_size(), 2 + 256 + MERGES.len());
    assert_eq!(tok.encode("hello world").expect("encodes"), vec![id("hello"), id("Ġworld")]);
    // Control tokens are matched whole, even with no space around them.
    assert_eq!(tok.encode("<|im_start|>hello<|endoftext|>").expect("encodes"), vec![1, id("hello"), 0]);
    // "wor" without the leading space has no merge path past "or".
    assert_eq!(tok.encode("wor").expect("encodes"), vec![id("w"), id("or")]);
    assert_eq!(tok.eos_id(), Some(0));
}

/// `smollm` splits every digit before BPE, so the merge "1 2" never applies; `gpt2` lets it.
#[test]
fn smollm_splits_digits() {
    let smol = open("tok-digits-smollm", "gpt2", "smollm").expect("builds");
    assert_eq!(smol.encode("12").expect("encodes"), vec![id("1"), id("2")]);
    let gpt2 = open("tok-digits-gpt2", "gpt2", "gpt2").expect("builds");
    assert_eq!(gpt2.encode("12").expect("encodes"), vec![id("12")]);
}

/// Any UTF-8 text survives encode → decode byte for byte.
#[test]
fn round_trips_bytes() {
    let tok = open("tok-roundtrip", "gpt2", "smollm").expect("builds");
    for text in ["hello world", "  two  spaces\n\ttab", "héllo wörld ✓ 123", "日本"] {
        let ids = tok.encode(text).expect("encodes");
        assert_eq!(tok.decode(&ids).expect("decodes"), text);
    }
    // 'é' is two bytes, so two byte tokens.
    assert_eq!(
        tok.encode("é").expect("encodes"),
        vec![id(&byte_char(0xC3).to_string()), id(&byte_char(0xA9).to_string())]
    );
}

#[test]
fn refuses_unsupported_tokenizers() {
    match open("tok-spm", "llama", "default") {
        Err(ModelError::Config { field, .. }) => assert_eq!(field, "tokenizer.ggml.model"),
        other => panic!("expected a Config error, got {:?}", other.map(|_| ())),
    }
    match open("tok-pre", "gpt2", "qwen2") {
        Err(ModelError::Config { field, detail, .. }) => {
            assert_eq!(field, "tokenizer.ggml.pre");
            assert!(detail.contains("qwen2"));
        }
        other => panic!("expected a Config error, got {:?}", other.map(|_| ())),
    }
}
