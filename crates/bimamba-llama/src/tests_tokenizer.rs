//! The GGUF tokenizer on a tiny byte-level BPE vocabulary written here: merges applied in rank
//! order, control tokens matched whole, the `smollm` pre-tokenizer splitting digits, exact
//! byte round trips, and refusals of what is not implemented.

use bimamba_engine::EngineError;
use bimamba_formats::Checkpoint;

use crate::gguf_tokenizer;
use crate::test_gguf::{tmp_path, GgufWriter};

/// GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the other bytes to
/// U+0100 onwards in byte order (so the space 0x20 becomes 'Ġ' = U+0120).
fn byte_char(b: u8) -> char {
    let printable = |x: u32| (0x21..=0x7E).contains(&x) || (0xA1..=0xAC).contains(&x) || (0xAE..=0xFF).contains(&x);
    if printable(b as u32) {
        return char::from(b);
    }
    let n = (0..b as u32).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).expect("U+0100..U+0143 are characters")
}

const MERGES: [&str; 10] = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d", "1 2"];
const SPECIAL: [&str; 2] = ["<|endoftext|>", "<|im_start|>"];

/// Vocabulary: the two control tokens, the 256 byte characters, then one token per merge.
fn vocab() -> Vec<String> {
    let mut v: Vec<String> = SPECIAL.iter().map(|s| s.to_string()).collect();
    v.extend((0..=255u8).map(|b| byte_char(b).to_string()));
    v.extend(MERGES.iter().map(|m| m.replace(' ', "")));
    v
}

fn id(tok: &str) -> u32 {
    vocab().iter().position(|t| t == tok).expect("the token is in the test vocabulary") as u32
}

fn open(tag: &str, model: &str, pre: &str) -> Result<bimamba_text::Tokenizer, EngineError> {
    let tokens = vocab();
    let types: Vec<i32> = (0..tokens.len()).map(|i| if i < SPECIAL.len() { 3 } else { 1 }).collect();
    let merges: Vec<String> = MERGES.iter().map(|s| s.to_string()).collect();
    let mut g = GgufWriter::default();
    g.str("general.architecture", "llama")
        .str("tokenizer.ggml.model", model)
        .str("tokenizer.ggml.pre", pre)
        .strs("tokenizer.ggml.tokens", &tokens)
        .strs("tokenizer.ggml.merges", &merges)
        .i32s("tokenizer.ggml.token_type", &types)
        .u32("tokenizer.ggml.eos_token_id", 0);
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
    assert_eq!(
        tok.encode("<|im_start|>hello<|endoftext|>").expect("encodes"),
        vec![1, id("hello"), 0]
    );
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
    assert_eq!(tok.encode("é").expect("encodes"), vec![id(&byte_char(0xC3).to_string()), id(&byte_char(0xA9).to_string())]);
}

#[test]
fn refuses_unsupported_tokenizers() {
    match open("tok-spm", "llama", "default") {
        Err(EngineError::Config { field, .. }) => assert_eq!(field, "tokenizer.ggml.model"),
        other => panic!("expected a Config error, got {:?}", other.map(|_| ())),
    }
    match open("tok-pre", "gpt2", "qwen2") {
        Err(EngineError::Config { field, detail, .. }) => {
            assert_eq!(field, "tokenizer.ggml.pre");
            assert!(detail.contains("qwen2"));
        }
        other => panic!("expected a Config error, got {:?}", other.map(|_| ())),
    }
}
