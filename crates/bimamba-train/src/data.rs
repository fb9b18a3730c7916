//! Token files: `data prepare` tokenizes text into memory-mapped token files with document
//! boundaries and a held-out validation split; training samples windows with a seeded RNG.
//!
//! A prepared directory holds `train.tok`, `val.tok` (each a 16-byte header — magic `BMTK`,
//! format version u32, bytes per token u32 (2 or 4), reserved u32 — then little-endian token ids),
//! `meta.json` ([`DataMeta`]) and a copy of the tokenizer (`tokenizer.json`). Every document ends
//! with the EOS token, so boundaries are visible in the stream. The last `val_fraction` of each
//! document's tokens (documents of at least `2 / val_fraction` tokens) go to the validation split.

use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::params::write_atomic;
use crate::rng::SplitMix64;

const MAGIC: &[u8; 4] = b"BMTK";
const VERSION: u32 = 1;
const HEADER: usize = 16;

/// What `data prepare` wrote.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataMeta {
    /// Format version of the token files.
    pub version: u32,
    /// Tokenizer vocabulary size (with added tokens).
    pub vocab_size: usize,
    /// The id appended after every document.
    pub eos_id: u32,
    /// FNV-1a hash of the tokenizer's vocabulary (token → id pairs), to match students and teachers.
    pub vocab_hash: String,
    /// Bytes per stored token.
    pub token_bytes: u32,
    /// Tokens in train.tok.
    pub train_tokens: u64,
    /// Tokens in val.tok.
    pub val_tokens: u64,
    /// Documents (input files).
    pub documents: usize,
    /// The text files, as given.
    pub sources: Vec<String>,
}

/// FNV-1a over the sorted (token, id) pairs of a tokenizer's vocabulary.
pub fn vocab_hash(tok: &tokenizers::Tokenizer) -> String {
    let mut pairs: Vec<(String, u32)> = tok.get_vocab(true).into_iter().collect();
    pairs.sort();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (s, id) in pairs {
        for b in s.bytes().chain(id.to_le_bytes()).chain([0xff]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// Loads a tokenizer.json, or rebuilds the tokenizer stored in a `.gguf` file's metadata (so data
/// for a GGUF teacher uses exactly its vocabulary); the file is named in errors.
pub fn load_tokenizer(path: &Path) -> Result<tokenizers::Tokenizer> {
    if path.extension().is_some_and(|e| e == "gguf") {
        let ck = bimamba_formats::Checkpoint::open(path).map_err(|e| Error::format(path, e.to_string()))?;
        let meta = ck.gguf().ok_or_else(|| Error::format(path, "not a GGUF file"))?;
        return bimamba_llama::tokenizer::build(meta, path).map_err(|e| Error::format(path, e.to_string()));
    }
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    bimamba_text::parse_tokenizer_json(&bytes).map_err(|e| Error::format(path, e))
}

/// The end-of-document id: the first special token among the usual names.
pub fn find_eos(tok: &tokenizers::Tokenizer) -> Option<u32> {
    ["<|endoftext|>", "</s>", "<|im_end|>", "<eos>", "<|end_of_text|>"].iter().find_map(|t| tok.token_to_id(t))
}

fn write_tokens(path: &Path, ids: &[u32], width: u32) -> Result<()> {
    let mut buf = Vec::with_capacity(HEADER + ids.len() * width as usize);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&VERSION.to_le_bytes());
    buf.extend_from_slice(&width.to_le_bytes());
    buf.extend_from_slice(&0u32.to_le_bytes());
    for &id in ids {
        if width == 2 {
            buf.extend_from_slice(&(id as u16).to_le_bytes());
        } else {
            buf.extend_from_slice(&id.to_le_bytes());
        }
    }
    write_atomic(path, &buf)
}

/// Tokenizes `texts` with the tokenizer at `tokenizer_path` into `out` (see the module docs).
pub fn prepare(tokenizer_path: &Path, out: &Path, texts: &[PathBuf], val_fraction: f64) -> Result<DataMeta> {
    if !(0.0..0.5).contains(&val_fraction) {
        return Err(Error::Config(format!("val fraction {val_fraction} must be in [0, 0.5)")));
    }
    if texts.is_empty() {
        return Err(Error::Config("no text files given".into()));
    }
    let tok = load_tokenizer(tokenizer_path)?;
    let eos = find_eos(&tok).ok_or_else(|| {
        Error::format(tokenizer_path, "no end-of-text token (<|endoftext|>, </s>, ...) to mark document boundaries")
    })?;
    let vocab_size = tok.get_vocab_size(true);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for path in texts {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        // Encode in pieces cut at paragraph breaks (one call on megabytes is slow), keeping the
        // breaks themselves so the token stream is the tokenization of the whole text.
        let mut pieces = Vec::new();
        let mut rest = text.as_str();
        while rest.len() > 1 << 16 {
            let cut = rest[1 << 15..].find("\n\n").map(|i| i + (1 << 15) + 2).unwrap_or(rest.len());
            let (a, b) = rest.split_at(cut);
            pieces.push(a);
            rest = b;
        }
        pieces.push(rest);
        let enc = tok.encode_batch(pieces, false).map_err(|e| Error::format(path, format!("tokenizing: {e}")))?;
        let mut ids: Vec<u32> = enc.iter().flat_map(|e| e.get_ids().iter().copied()).collect();
        let n_val = if val_fraction > 0.0 && ids.len() as f64 * val_fraction >= 2.0 {
            (ids.len() as f64 * val_fraction) as usize
        } else {
            0
        };
        let v = ids.split_off(ids.len() - n_val);
        train.extend(ids);
        train.push(eos);
        if !v.is_empty() {
            val.extend(v);
            val.push(eos);
        }
    }
    std::fs::create_dir_all(out).map_err(Error::io(out))?;
    let width = if vocab_size <= 1 << 16 { 2 } else { 4 };
    write_tokens(&out.join("train.tok"), &train, width)?;
    write_tokens(&out.join("val.tok"), &val, width)?;
    // A tokenizer.json is copied byte for byte; one rebuilt from a GGUF is serialized.
    let tok_bytes = if tokenizer_path.extension().is_some_and(|e| e == "gguf") {
        tok.to_string(false).map_err(|e| Error::format(tokenizer_path, e.to_string()))?.into_bytes()
    } else {
        std::fs::read(tokenizer_path).map_err(Error::io(tokenizer_path))?
    };
    write_atomic(&out.join("tokenizer.json"), &tok_bytes)?;
    let meta = DataMeta {
        version: VERSION,
        vocab_size,
        eos_id: eos,
        vocab_hash: vocab_hash(&tok),
        token_bytes: width,
        train_tokens: train.len() as u64,
        val_tokens: val.len() as u64,
        documents: texts.len(),
        sources: texts.iter().map(|p| p.display().to_string()).collect(),
    };
    let json = serde_json::to_vec_pretty(&meta).map_err(|e| Error::Config(e.to_string()))?;
    write_atomic(&out.join("meta.json"), &json)?;
    Ok(meta)
}

/// A memory-mapped token file.
#[derive(Debug)]
pub struct TokenFile {
    map: Mmap,
    width: usize,
    len: usize,
}

impl TokenFile {
    /// Maps `path` and checks its header.
    pub fn open(path: &Path) -> Result<Self> {
        let f = std::fs::File::open(path).map_err(Error::io(path))?;
        // SAFETY: the file is opened read-only and token files are written once by rename;
        // a concurrent writer would replace the inode, not modify this mapping.
        let map = unsafe { Mmap::map(&f) }.map_err(Error::io(path))?;
        if map.len() < HEADER || &map[0..4] != MAGIC {
            return Err(Error::format(path, "not a bimamba token file (bad magic)"));
        }
        let word = |i: usize| u32::from_le_bytes([map[i], map[i + 1], map[i + 2], map[i + 3]]);
        if word(4) != VERSION {
            return Err(Error::format(path, format!("token file version {} (this build reads {VERSION})", word(4))));
        }
        let width = word(8) as usize;
        if width != 2 && width != 4 {
            return Err(Error::format(path, format!("bytes per token {width} (2 or 4 expected)")));
        }
        if !(map.len() - HEADER).is_multiple_of(width) {
            return Err(Error::format(path, "truncated token file"));
        }
        let len = (map.len() - HEADER) / width;
        Ok(Self { map, width, len })
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the file holds no tokens.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Token `i` (panics past the end: callers index within `len`).
    pub fn get(&self, i: usize) -> u32 {
        let o = HEADER + i * self.width;
        let b = &self.map[o..o + self.width];
        if self.width == 2 {
            u16::from_le_bytes([b[0], b[1]]) as u32
        } else {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }
    }

    /// The largest token id in the file (None when it is empty): one pass over the mapping.
    pub fn max_id(&self) -> Option<u32> {
        let body = &self.map[HEADER..];
        if self.width == 2 {
            body.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as u32).max()
        } else {
            body.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).max()
        }
    }

    /// Tokens [start, start + n) as i64 ids.
    pub fn window(&self, start: usize, n: usize) -> Vec<i64> {
        (start..start + n).map(|i| self.get(i) as i64).collect()
    }
}

/// A prepared data directory.
#[derive(Debug)]
pub struct Dataset {
    /// The directory.
    pub dir: PathBuf,
    /// Its meta.json.
    pub meta: DataMeta,
    /// Training tokens.
    pub train: TokenFile,
    /// Validation tokens.
    pub val: TokenFile,
}

impl Dataset {
    /// Opens a directory written by [`prepare`].
    pub fn open(dir: &Path) -> Result<Self> {
        let mpath = dir.join("meta.json");
        let text = std::fs::read_to_string(&mpath).map_err(Error::io(&mpath))?;
        let meta: DataMeta = serde_json::from_str(&text).map_err(|e| Error::format(&mpath, e.to_string()))?;
        let (train, val) = (TokenFile::open(&dir.join("train.tok"))?, TokenFile::open(&dir.join("val.tok"))?);
        // meta.json must describe these files: the model's vocabulary is taken from it, and a
        // token id beyond it would index past the embedding.
        let bad = |field: &str, detail: String| Err(Error::format(&mpath, format!("field `{field}`: {detail}")));
        if meta.vocab_size == 0 {
            return bad("vocab_size", "must be at least 1".into());
        }
        if meta.eos_id as usize >= meta.vocab_size {
            return bad("eos_id", format!("{} is outside the vocabulary of {}", meta.eos_id, meta.vocab_size));
        }
        for (name, file, count) in [("train", &train, meta.train_tokens), ("val", &val, meta.val_tokens)] {
            if count != file.len() as u64 {
                return bad(&format!("{name}_tokens"), format!("says {count} but {name}.tok holds {}", file.len()));
            }
            if meta.token_bytes as usize != file.width {
                return bad(
                    "token_bytes",
                    format!("says {} but {name}.tok stores {} bytes per token", meta.token_bytes, file.width),
                );
            }
            if let Some(max) = file.max_id().filter(|&m| m as usize >= meta.vocab_size) {
                return bad("vocab_size", format!("{} but {name}.tok holds token id {max}", meta.vocab_size));
            }
        }
        Ok(Self { dir: dir.to_path_buf(), meta, train, val })
    }
}

/// Draws training windows of `seq_len + 1` tokens (inputs and shifted targets).
///
/// `aligned` windows start at multiples of `seq_len` (needed when a precomputed teacher file
/// covers exactly those windows); otherwise any start is allowed. The generator state and the
/// number of windows drawn are the sampler's whole state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowSampler {
    /// Tokens per window, without the extra target token.
    pub seq_len: usize,
    /// Start windows at multiples of `seq_len`.
    pub aligned: bool,
    /// Generator state.
    pub rng: SplitMix64,
    /// Windows drawn so far.
    pub drawn: u64,
}

impl WindowSampler {
    /// A sampler seeded with `seed`.
    pub fn new(seq_len: usize, aligned: bool, seed: u64) -> Self {
        Self { seq_len, aligned, rng: SplitMix64::new(seed).fork(0x5A3D), drawn: 0 }
    }

    /// Number of distinct window starts in a file of `n` tokens.
    pub fn starts(&self, n: usize) -> usize {
        let span = n.saturating_sub(self.seq_len + 1) + 1;
        if n < self.seq_len + 1 {
            0
        } else if self.aligned {
            (n - 1) / self.seq_len
        } else {
            span
        }
    }

    /// The next window start in a file of `n` tokens (errors if the file is too short).
    pub fn next_start(&mut self, n: usize) -> Result<usize> {
        let k = self.starts(n);
        if k == 0 {
            return Err(Error::Config(format!(
                "the training split has {n} tokens, fewer than one window of {}",
                self.seq_len + 1
            )));
        }
        self.drawn += 1;
        let i = self.rng.below(k as u64) as usize;
        Ok(if self.aligned { i * self.seq_len } else { i })
    }

    /// The next `batch` windows, flattened row-major: `[batch, seq_len + 1]`; also returns the
    /// starts (to look up precomputed teacher outputs).
    pub fn next_batch(&mut self, file: &TokenFile, batch: usize) -> Result<(Vec<i64>, Vec<usize>)> {
        self.next_batch_in(file, file.len(), batch)
    }

    /// As [`WindowSampler::next_batch`], drawing only from the first `limit` tokens of `file`.
    pub fn next_batch_in(&mut self, file: &TokenFile, limit: usize, batch: usize) -> Result<(Vec<i64>, Vec<usize>)> {
        let mut out = Vec::with_capacity(batch * (self.seq_len + 1));
        let mut starts = Vec::with_capacity(batch);
        for _ in 0..batch {
            let s = self.next_start(limit.min(file.len()))?;
            out.extend(file.window(s, self.seq_len + 1));
            starts.push(s);
        }
        Ok((out, starts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
    }

    #[test]
    fn meta_json_that_disagrees_with_the_token_files_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tok_path = fixtures().join("ss-bimamba-col/tokenizer.json");
        let meta =
            prepare(&tok_path, dir.path(), &[fixtures().join("text/pride_excerpt_short.txt")], 0.1).expect("prepare");
        let max = Dataset::open(dir.path()).expect("open").train.max_id().expect("tokens") as usize;
        let cases: [(&str, serde_json::Value, &str); 6] = [
            ("vocab_size", 0.into(), "at least 1"),
            ("vocab_size", max.into(), "holds token id"),
            ("eos_id", (meta.vocab_size as u64 + 5).into(), "outside the vocabulary"),
            ("train_tokens", (meta.train_tokens + 1).into(), "train.tok holds"),
            ("val_tokens", 0.into(), "val.tok holds"),
            ("token_bytes", 4.into(), "bytes per token"),
        ];
        let good = serde_json::to_value(&meta).expect("json");
        for (field, value, needle) in cases {
            let mut m = good.clone();
            m[field] = value;
            std::fs::write(dir.path().join("meta.json"), m.to_string()).expect("write");
            let msg = Dataset::open(dir.path()).expect_err(field).to_string();
            assert!(msg.contains(&format!("`{field}`")) && msg.contains(needle) && !msg.contains('\n'), "{msg}");
        }
    }

    #[test]
    fn prepare_round_trips_tokens_and_boundaries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tok_path = fixtures().join("ss-bimamba-col/tokenizer.json");
        let texts = [fixtures().join("text/pride_excerpt.txt"), fixtures().join("text/pride_excerpt_short.txt")];
        let meta = prepare(&tok_path, dir.path(), &texts, 0.1).expect("prepare");
        let ds = Dataset::open(dir.path()).expect("open");
        assert_eq!(ds.meta, meta);
        assert_eq!(meta.token_bytes, 2);
        assert_eq!(meta.eos_id, 0);
        assert_eq!(ds.train.len() as u64, meta.train_tokens);
        // The short text encodes to 1,137 ids (fixtures/README.md): 90% train, 10% val, + EOS each.
        let tok = load_tokenizer(&tok_path).expect("tokenizer");
        let short = std::fs::read_to_string(&texts[1]).expect("text");
        let ids = tok.encode(short.as_str(), false).expect("encode").get_ids().to_vec();
        assert_eq!(ids.len(), 1137);
        let n_val = (1137.0 * 0.1) as usize;
        let tail: Vec<i64> = ds.train.window(ds.train.len() - (1137 - n_val) - 1, 1137 - n_val + 1);
        let want: Vec<i64> = ids[..1137 - n_val].iter().map(|&x| x as i64).chain([0]).collect();
        assert_eq!(tail, want);
        let vtail = ds.val.window(ds.val.len() - n_val - 1, n_val + 1);
        let vwant: Vec<i64> = ids[1137 - n_val..].iter().map(|&x| x as i64).chain([0]).collect();
        assert_eq!(vtail, vwant);
        assert_eq!(meta.vocab_hash, vocab_hash(&tok));
    }

    #[test]
    fn bad_token_files_are_rejected_with_their_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.tok");
        std::fs::write(&p, b"BMTK\x02\0\0\0\x02\0\0\0\0\0\0\0").expect("write");
        let e = TokenFile::open(&p).expect_err("version 2 is unknown").to_string();
        assert!(e.contains("x.tok") && e.contains("version 2"), "{e}");
        std::fs::write(&p, b"nope").expect("write");
        assert!(TokenFile::open(&p).is_err());
    }

    #[test]
    fn sampler_is_seeded_resumable_and_in_range() {
        let mut a = WindowSampler::new(8, false, 1);
        let starts: Vec<usize> = (0..1000).map(|_| a.next_start(20).expect("fits")).collect();
        assert!(starts.iter().all(|&s| s + 9 <= 20));
        assert_eq!(*starts.iter().max().expect("some"), 11);
        assert_eq!(*starts.iter().min().expect("some"), 0);
        let snapshot = a.clone();
        let next: Vec<usize> = (0..5).map(|_| a.next_start(20).expect("fits")).collect();
        let mut b = snapshot;
        assert_eq!(next, (0..5).map(|_| b.next_start(20).expect("fits")).collect::<Vec<_>>());
        let mut al = WindowSampler::new(8, true, 1);
        assert!((0..100).all(|_| al.next_start(25).expect("fits").is_multiple_of(8)));
        assert!(WindowSampler::new(8, false, 1).next_start(5).is_err());
    }
}
