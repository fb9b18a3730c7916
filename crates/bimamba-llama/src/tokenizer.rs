//! The tokenizer stored inside a GGUF file, rebuilt as a Hugging Face `tokenizers::Tokenizer`.
//!
//! llama.cpp's converter writes a byte-level BPE ("gpt2" model) as `tokenizer.ggml.tokens` (the
//! vocabulary, id = index, in the byte-to-unicode alphabet of GPT-2), `tokenizer.ggml.merges`
//! ("left right", in rank order), `tokenizer.ggml.token_type` (3 = control, 4 = user-defined:
//! both become added tokens, matched before BPE) and `tokenizer.ggml.pre`, the name of the
//! pre-tokenizer's regex. Supported pre-tokenizers, written as the `tokenizers` pipeline that
//! Hugging Face's own tokenizer.json uses for those models:
//!
//! | `tokenizer.ggml.pre` | pipeline |
//! |---|---|
//! | `gpt2` | ByteLevel (GPT-2 regex) |
//! | `smollm` | Digits (each digit alone), then ByteLevel (GPT-2 regex) |

use std::path::Path;

use bimamba_formats::{Checkpoint, GgufMetadata};
use bimamba_lm::{ModelError, Result};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper};

/// llama.cpp's `LLAMA_TOKEN_TYPE_CONTROL`.
const TOKEN_TYPE_CONTROL: i32 = 3;
/// llama.cpp's `LLAMA_TOKEN_TYPE_USER_DEFINED`.
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The GGUF's own tokenizer, wrapped for the rest of the project; errors name the file and key.
pub fn gguf_tokenizer(ck: &Checkpoint) -> Result<bimamba_text::Tokenizer> {
    let file = ck.path();
    let meta = ck.gguf().ok_or_else(|| ModelError::Invalid {
        file: file.to_path_buf(),
        detail: "not a GGUF file: no tokenizer.ggml.* metadata to build a tokenizer from".into(),
    })?;
    let inner = build(meta, file)?;
    Ok(bimamba_text::Tokenizer::from_inner(inner, file))
}

/// Builds the `tokenizers` pipeline from `tokenizer.ggml.*` keys.
pub fn build(meta: &GgufMetadata, file: &Path) -> Result<tokenizers::Tokenizer> {
    let bad =
        |field: &str, detail: String| ModelError::Config { file: file.to_path_buf(), field: field.to_string(), detail };
    match meta.get_str("tokenizer.ggml.model") {
        Some("gpt2") => {}
        Some(other) => {
            return Err(bad(
                "tokenizer.ggml.model",
                format!("`{other}` is not supported (only the byte-level BPE `gpt2`); pass --tokenizer FILE"),
            ))
        }
        None => return Err(bad("tokenizer.ggml.model", "missing".into())),
    }
    let tokens = meta
        .get_str_array("tokenizer.ggml.tokens")
        .ok_or_else(|| bad("tokenizer.ggml.tokens", "missing or not an array of strings".into()))?;
    let merges_raw = meta
        .get_str_array("tokenizer.ggml.merges")
        .ok_or_else(|| bad("tokenizer.ggml.merges", "missing or not an array of strings".into()))?;
    let types = meta.get_i32_array("tokenizer.ggml.token_type");
    if let Some(ty) = types {
        if ty.len() != tokens.len() {
            return Err(bad("tokenizer.ggml.token_type", format!("{} entries for {} tokens", ty.len(), tokens.len())));
        }
    }
    let pre = meta.get_str("tokenizer.ggml.pre").unwrap_or("(missing)");
    let byte_level = ByteLevel::new(false, true, true);
    let pre_tokenizer: PreTokenizerWrapper = match pre {
        "gpt2" => byte_level.into(),
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        other => {
            return Err(bad(
                "tokenizer.ggml.pre",
                format!("pre-tokenizer `{other}` is not supported (gpt2, smollm); pass --tokenizer FILE"),
            ))
        }
    };

    let mut vocab = Vocab::with_capacity(tokens.len());
    for (id, tok) in tokens.iter().enumerate() {
        let id = u32::try_from(id).map_err(|_| bad("tokenizer.ggml.tokens", "more than 2^32 tokens".into()))?;
        if let Some(first) = vocab.insert(tok.clone(), id) {
            return Err(bad("tokenizer.ggml.tokens", format!("token {tok:?} appears twice (ids {first} and {id})")));
        }
    }
    let merges = merges_raw
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| bad("tokenizer.ggml.merges", format!("entry {i} {m:?} is not `left right`")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| bad("tokenizer.ggml.merges", format!("not a valid BPE: {e}")))?;

    let mut tk = tokenizers::Tokenizer::new(bpe);
    tk.with_pre_tokenizer(Some(pre_tokenizer));
    tk.with_decoder(Some(ByteLevel::default()));
    // Control and user-defined tokens are matched whole in the input, before BPE, as llama.cpp
    // does; they keep the ids they have in the vocabulary.
    let of_type = |want: i32, special: bool| -> Vec<AddedToken> {
        types
            .unwrap_or(&[])
            .iter()
            .zip(tokens)
            .filter(|(&ty, _)| ty == want)
            .map(|(_, tok)| AddedToken::from(tok.clone(), special).normalized(false))
            .collect()
    };
    let added_err = |e: tokenizers::Error| bad("tokenizer.ggml.token_type", format!("added tokens: {e}"));
    tk.add_special_tokens(of_type(TOKEN_TYPE_CONTROL, true)).map_err(added_err)?;
    tk.add_tokens(of_type(TOKEN_TYPE_USER_DEFINED, false)).map_err(added_err)?;
    Ok(tk)
}
