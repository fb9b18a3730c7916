//! Text in and out of the models: a `tokenizer.json` (Hugging Face `tokenizers`), strict UTF-8
//! reading of text files, and a streaming decoder that only ever emits whole characters.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("{path}: no such tokenizer file (pass --tokenizer FILE, or put tokenizer.json in the model directory)")]
    TokenizerMissing { path: PathBuf },
    #[error("{path}: not a valid tokenizer.json: {detail}")]
    TokenizerInvalid { path: PathBuf, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid UTF-8 text (first bad byte at offset {offset})")]
    NotUtf8 { path: PathBuf, offset: usize },
    #[error("{path}: the text is empty")]
    Empty { path: PathBuf },
    #[error("tokenizer {path}: {detail}")]
    Codec { path: PathBuf, detail: String },
}

pub type Result<T> = std::result::Result<T, TextError>;

/// A Hugging Face tokenizer, used without special tokens (the paper's protocol and lm-eval's).
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

/// Names that tokenizers commonly give their end-of-sequence token, most specific first.
const EOS_NAMES: [&str; 6] = ["<|endoftext|>", "</s>", "<|im_end|>", "<eos>", "<|end_of_text|>", "<|eot_id|>"];

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        if !path.is_file() {
            return Err(TextError::TokenizerMissing { path: path.to_path_buf() });
        }
        let bytes = std::fs::read(path).map_err(|source| TextError::Io { path: path.to_path_buf(), source })?;
        let inner = parse_tokenizer_json(&bytes)
            .map_err(|detail| TextError::TokenizerInvalid { path: path.to_path_buf(), detail })?;
        Ok(Tokenizer { inner, path: path.to_path_buf() })
    }

    /// Wraps a tokenizer built in memory (e.g. from a GGUF's vocabulary); `origin` names it in errors.
    pub fn from_inner(inner: tokenizers::Tokenizer, origin: &Path) -> Tokenizer {
        Tokenizer { inner, path: origin.to_path_buf() }
    }

    /// `explicit` if given, else `DIR/tokenizer.json`.
    pub fn for_model(model_dir: &Path, explicit: Option<&Path>) -> Result<Tokenizer> {
        match explicit {
            Some(p) => Tokenizer::from_file(p),
            None => Tokenizer::from_file(&model_dir.join("tokenizer.json")),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Vocabulary size including added tokens: every id the tokenizer can produce is below it.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Encodes without adding special tokens (BOS/EOS).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.inner
            .encode_fast(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TextError::Codec { path: self.path.clone(), detail: e.to_string() })
    }

    /// Encodes without special tokens and also returns, for each token, the byte offset in `text`
    /// where the token's span ends (used to count the bytes a scored token covers).
    pub fn encode_with_ends(&self, text: &str) -> Result<(Vec<u32>, Vec<usize>)> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| TextError::Codec { path: self.path.clone(), detail: e.to_string() })?;
        // Offsets are byte offsets; a token inside a multi-byte character shares its span, so
        // ends are made monotone.
        let mut last = 0;
        let ends = enc
            .get_offsets()
            .iter()
            .map(|&(_, e)| {
                last = last.max(e);
                last
            })
            .collect();
        Ok((enc.get_ids().to_vec(), ends))
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| TextError::Codec { path: self.path.clone(), detail: e.to_string() })
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The end-of-sequence id, found by the usual names.
    pub fn eos_id(&self) -> Option<u32> {
        EOS_NAMES.iter().find_map(|n| self.inner.token_to_id(n))
    }
}

/// Turns a growing token sequence into text, emitting only complete UTF-8 characters: a token
/// that ends inside a multi-byte character is held back until the character completes.
pub struct StreamDecoder {
    ids: Vec<u32>,
    emitted: usize,
}

impl Default for StreamDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamDecoder {
    pub fn new() -> StreamDecoder {
        StreamDecoder { ids: Vec::new(), emitted: 0 }
    }

    /// Adds a token; returns the newly completed text (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = tok.decode(&self.ids)?;
        // A trailing U+FFFD means the last bytes do not yet form a character.
        if text.ends_with('\u{FFFD}') || text.len() < self.emitted || !text.is_char_boundary(self.emitted) {
            return Ok(String::new());
        }
        let new = text[self.emitted..].to_string();
        self.emitted = text.len();
        Ok(new)
    }

    /// At the end of generation: whatever was held back, with incomplete bytes shown as U+FFFD.
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<String> {
        let text = tok.decode(&self.ids)?;
        if text.len() <= self.emitted || !text.is_char_boundary(self.emitted) {
            return Ok(String::new());
        }
        let rest = text[self.emitted..].to_string();
        self.emitted = text.len();
        Ok(rest)
    }
}

/// Parses the bytes of a tokenizer.json. What the tokenizers crate assumes without checking, and
/// panics on (found by fuzzing), is checked first: the JSON syntax (a syntax error inside the
/// `decoder` section) and the BPE merges (see [`check_bpe_merges`]).
pub fn parse_tokenizer_json(bytes: &[u8]) -> std::result::Result<tokenizers::Tokenizer, String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    check_bpe_merges(&v["model"])?;
    tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| e.to_string())
}

/// The BPE builder of the tokenizers crate concatenates each merge `(a, b)` as
/// `a + b[prefix..]` (prefix = `continuing_subword_prefix`) into a buffer as long as the longest
/// vocabulary entry, before looking the result up; a `b` shorter than the prefix or a result
/// longer than the buffer panics there. Both are refused here, naming the merge.
fn check_bpe_merges(model: &serde_json::Value) -> std::result::Result<(), String> {
    use serde_json::Value;
    let (Some(vocab), Some(merges)) = (model["vocab"].as_object(), model["merges"].as_array()) else {
        return Ok(());
    };
    let longest = vocab.keys().map(String::len).max().unwrap_or(0);
    let prefix = model["continuing_subword_prefix"].as_str().unwrap_or("");
    for (i, merge) in merges.iter().enumerate() {
        let (a, b) = match merge {
            Value::String(s) => match s.split_once(' ') {
                Some(pair) => pair,
                None => continue,
            },
            Value::Array(pair) if pair.len() == 2 => match (pair[0].as_str(), pair[1].as_str()) {
                (Some(a), Some(b)) => (a, b),
                _ => continue,
            },
            _ => continue,
        };
        let fits = b.len() >= prefix.len() && a.len() + b.len() - prefix.len() <= longest;
        if !fits {
            return Err(format!(
                "model.merges[{i}] ({a:?}, {b:?}) cannot be a merge: with continuing_subword_prefix {prefix:?} it makes a token longer than every vocabulary entry"
            ));
        }
    }
    Ok(())
}

/// Reads a whole text file, refusing invalid UTF-8 (with the offset) and empty files.
pub fn read_text_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|source| TextError::Io { path: path.to_path_buf(), source })?;
    text_from_bytes(bytes, path)
}

/// [`read_text_file`] on bytes already read (standard input, say); `path` names them in errors.
pub fn text_from_bytes(bytes: Vec<u8>, path: &Path) -> Result<String> {
    let text = String::from_utf8(bytes)
        .map_err(|e| TextError::NotUtf8 { path: path.to_path_buf(), offset: e.utf8_error().valid_up_to() })?;
    if text.trim().is_empty() {
        return Err(TextError::Empty { path: path.to_path_buf() });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_text_rejects_bad_utf8_and_empty() {
        let dir = std::env::temp_dir().join(format!("bimamba-text-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.txt");
        std::fs::write(&bad, b"abc\xff\xfe").unwrap();
        match read_text_file(&bad) {
            Err(TextError::NotUtf8 { offset, .. }) => assert_eq!(offset, 3),
            other => panic!("expected NotUtf8, got {other:?}"),
        }
        let empty = dir.join("empty.txt");
        std::fs::write(&empty, "  \n").unwrap();
        assert!(matches!(read_text_file(&empty), Err(TextError::Empty { .. })));
        assert!(matches!(Tokenizer::from_file(&dir.join("nope.json")), Err(TextError::TokenizerMissing { .. })));
        std::fs::write(dir.join("junk.json"), "{not json").unwrap();
        assert!(matches!(Tokenizer::from_file(&dir.join("junk.json")), Err(TextError::TokenizerInvalid { .. })));
        // A syntax error inside the decoder section (the tokenizers crate panics on it).
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/ss-bimamba-col/tokenizer.json");
        let text = std::fs::read_to_string(fixture).unwrap();
        let at = text.find("\"decoder\"").expect("a decoder section");
        let bad = format!("{}\"decoder\": {{\"type\": \"Byte\u{1}Level\"{}", &text[..at], &text[at + 11..]);
        std::fs::write(dir.join("decoder.json"), bad).unwrap();
        let refused = |name: &str| match Tokenizer::from_file(&dir.join(name)) {
            Err(TextError::TokenizerInvalid { detail, .. }) => detail,
            Err(other) => panic!("{name}: expected TokenizerInvalid, got {other}"),
            Ok(_) => panic!("{name} was accepted"),
        };
        assert!(refused("decoder.json").contains("JSON"));
        // Merges the tokenizers crate's BPE builder would index out of bounds with.
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["model"]["continuing_subword_prefix"] = "\u{0}\u{1b}[31m".into();
        std::fs::write(dir.join("prefix.json"), v.to_string()).unwrap();
        assert!(refused("prefix.json").contains("model.merges[0]"));
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["model"]["merges"][0] = serde_json::json!(["abcdefghijklmnopqrstuvwxyz", "abcdefghijklmnopqrstuvwxyz"]);
        std::fs::write(dir.join("long.json"), v.to_string()).unwrap();
        assert!(refused("long.json").contains("model.merges[0]"));
    }
}
