//! Frozen teachers for autoregressive distillation (ARCHITECTURE.md §3.1; the .topk format is §8.7): a full-precision Mamba-2 model run
//! in-process, or top-k log-probabilities precomputed once into a file by `teacher-logits`.
//!
//! The student must see the teacher's tokenizer: every teacher carries the FNV hash of its
//! vocabulary, compared with the hash recorded by `data prepare`.
//!
//! Top-k file (`.topk`): 48-byte header — magic `BMTL`, version u32, k u32, seq_len u32,
//! windows u64, vocab hash (16 ASCII hex digits), reserved u64 — then for each aligned training
//! window i (input tokens [i·seq_len, (i+1)·seq_len)) `seq_len·k` u32 token ids followed by
//! `seq_len·k` f32 log-probabilities, each position's entries in descending probability.

use std::io::Write;
use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use memmap2::Mmap;

use crate::data::{load_tokenizer, vocab_hash, Dataset};
use crate::error::{Error, Result};
use crate::model::Mamba2Lm;
use crate::modeldir::ModelDir;
use crate::ops::log_softmax;

const MAGIC: &[u8; 4] = b"BMTL";
const VERSION: u32 = 1;
const HEADER: usize = 48;

/// Checks that a teacher's tokenizer is the data's; the error says what to do.
pub fn check_tokenizer(teacher_hash: &str, teacher_desc: &str, data: &Dataset) -> Result<()> {
    if teacher_hash != data.meta.vocab_hash {
        return Err(Error::Config(format!(
            "tokenizer mismatch: the teacher {teacher_desc} has vocabulary hash {teacher_hash}, the data in {} \
             was tokenized with {} (hash {}). Student and teacher must share the tokenizer: re-run \
             `data prepare --tokenizer <the teacher's tokenizer.json>`",
            data.dir.display(),
            data.dir.join("tokenizer.json").display(),
            data.meta.vocab_hash
        )));
    }
    Ok(())
}

/// A frozen model that gives next-token logits: what distillation needs from a teacher.
pub trait Frozen<B: Backend> {
    /// Logits of every position.
    ///
    /// # Shapes
    /// - tokens: [b, L]; output: [b, L, vocab]
    fn logits(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3>;
}

impl<B: crate::fused::FusedOps> Frozen<B> for Mamba2Lm<B> {
    fn logits(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.forward(tokens)
    }
}

impl<B: crate::fused::FusedOps> Frozen<B> for crate::llama::LlamaTeacher<B> {
    fn logits(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.forward(tokens)
    }
}

/// Loads a LLaMA-architecture GGUF teacher and checks its tokenizer (rebuilt from the GGUF).
pub fn load_llama_teacher<B: crate::fused::FusedOps>(
    path: &Path,
    data: &Dataset,
    device: &B::Device,
) -> Result<crate::llama::LlamaTeacher<B>> {
    let t = crate::llama::LlamaTeacher::<B>::load(path, device)?;
    let tok = t.tokenizer.as_ref().ok_or_else(|| Error::format(path, "no tokenizer in the GGUF"))?;
    check_tokenizer(&vocab_hash(tok), &path.display().to_string(), data)?;
    Ok(t)
}

/// Loads the teacher at `path`: a `.gguf` file (LLaMA architecture) or a Mamba-2 model directory.
pub fn load_any<B: crate::fused::FusedOps>(
    path: &Path,
    data: &Dataset,
    device: &B::Device,
) -> Result<Box<dyn Frozen<B>>> {
    if path.extension().is_some_and(|e| e == "gguf") {
        Ok(Box::new(load_llama_teacher::<B>(path, data, device)?))
    } else {
        Ok(Box::new(load_mamba_teacher::<B>(path, data, device)?))
    }
}

/// Loads a full-precision Mamba-2 teacher from a model directory and checks its tokenizer.
pub fn load_mamba_teacher<B: Backend>(dir: &Path, data: &Dataset, device: &B::Device) -> Result<Mamba2Lm<B>> {
    let tpath = dir.join("tokenizer.json");
    if !tpath.exists() {
        return Err(Error::Config(format!(
            "the teacher {} has no tokenizer.json, so its tokenizer cannot be checked against the data's",
            dir.display()
        )));
    }
    check_tokenizer(&vocab_hash(&load_tokenizer(&tpath)?), &dir.display().to_string(), data)?;
    let md = ModelDir::open(dir)?;
    md.build::<B>(device)
}

/// A memory-mapped top-k teacher file.
#[derive(Debug)]
pub struct TopkFile {
    map: Mmap,
    /// Entries per position.
    pub k: usize,
    /// Positions per window.
    pub seq_len: usize,
    /// Windows in the file.
    pub windows: usize,
    /// Vocabulary hash of the teacher's tokenizer.
    pub vocab_hash: String,
}

impl TopkFile {
    /// Maps a file written by [`write_topk`] and checks it.
    pub fn open(path: &Path) -> Result<Self> {
        let f = std::fs::File::open(path).map_err(Error::io(path))?;
        // SAFETY: read-only map of a file that is only ever replaced by rename.
        let map = unsafe { Mmap::map(&f) }.map_err(Error::io(path))?;
        if map.len() < HEADER || &map[0..4] != MAGIC {
            return Err(Error::format(path, "not a teacher top-k file (bad magic)"));
        }
        let u32_at = |i: usize| u32::from_le_bytes([map[i], map[i + 1], map[i + 2], map[i + 3]]);
        if u32_at(4) != VERSION {
            return Err(Error::format(path, format!("top-k file version {} (this build reads {VERSION})", u32_at(4))));
        }
        let (k, seq_len) = (u32_at(8) as usize, u32_at(12) as usize);
        let mut w = [0u8; 8];
        w.copy_from_slice(&map[16..24]);
        let windows = u64::from_le_bytes(w) as usize;
        let vocab_hash = String::from_utf8_lossy(&map[24..40]).to_string();
        // Sizes from a damaged header can overflow: such a file matches no length.
        let want = windows.checked_mul(seq_len).and_then(|n| n.checked_mul(k)).and_then(|n| n.checked_mul(8));
        let want = want.and_then(|n| n.checked_add(HEADER));
        if want != Some(map.len()) || k == 0 || seq_len == 0 {
            let want = want.map(|n| n.to_string()).unwrap_or_else(|| "more than any file holds".into());
            return Err(Error::format(
                path,
                format!(
                    "size {} does not match its header (k {k}, seq_len {seq_len}, windows {windows}: {want})",
                    map.len()
                ),
            ));
        }
        Ok(Self { map, k, seq_len, windows, vocab_hash })
    }

    /// Ids and log-probabilities of window `i`, each `seq_len · k` long.
    pub fn window(&self, i: usize) -> (Vec<i64>, Vec<f32>) {
        let n = self.seq_len * self.k;
        let base = HEADER + i * n * 8;
        let ids = self.map[base..base + 4 * n]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
            .collect();
        let lp = self.map[base + 4 * n..base + 8 * n]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        (ids, lp)
    }

    /// Teacher tensors for a batch of aligned window starts; every id must be below `vocab` (the
    /// tokenizer's vocabulary, which the student's logits cover).
    ///
    /// # Shapes
    /// - output: ids [b, seq_len, k], log-probabilities [b, seq_len, k]
    pub fn batch<B: Backend>(
        &self,
        starts: &[usize],
        vocab: usize,
        device: &B::Device,
    ) -> Result<(Tensor<B, 3, Int>, Tensor<B, 3>)> {
        let (mut ids, mut lps) = (Vec::new(), Vec::new());
        for &s in starts {
            if s % self.seq_len != 0 || s / self.seq_len >= self.windows {
                return Err(Error::Config(format!("window start {s} is not covered by the top-k file")));
            }
            let (i, l) = self.window(s / self.seq_len);
            if let Some(bad) = i.iter().find(|&&id| id as usize >= vocab) {
                return Err(Error::Config(format!(
                    "the top-k file holds token id {bad} in window {}, outside the vocabulary of {vocab} (the file is damaged or from another tokenizer)",
                    s / self.seq_len
                )));
            }
            ids.extend(i);
            lps.extend(l);
        }
        let dims = [starts.len(), self.seq_len, self.k];
        Ok((
            Tensor::from_data(TensorData::new(ids, dims), device),
            Tensor::from_data(TensorData::new(lps, dims), crate::ops::opts::<B>(device)),
        ))
    }
}

/// The header of a top-k file (`BMTL` v1, 48 bytes): magic, version, k, seq_len (u32 each),
/// windows (u64), the first 16 bytes of the vocabulary hash, 8 reserved bytes. Each window
/// follows as `seq_len · k` u32 ids, then as many f32 log-probabilities.
pub fn topk_header(k: usize, seq_len: usize, windows: usize, vocab_hash: &str) -> Vec<u8> {
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&(k as u32).to_le_bytes());
    header.extend_from_slice(&(seq_len as u32).to_le_bytes());
    header.extend_from_slice(&(windows as u64).to_le_bytes());
    let mut hash = [b'0'; 16];
    let h = vocab_hash.as_bytes();
    hash[..h.len().min(16)].copy_from_slice(&h[..h.len().min(16)]);
    header.extend_from_slice(&hash);
    header.extend_from_slice(&0u64.to_le_bytes());
    header
}

/// The `k` largest entries of `row` with their indices, in descending order.
fn top_k(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    let k = k.min(row.len());
    idx.select_nth_unstable_by(k.saturating_sub(1), |&a, &b| row[b as usize].total_cmp(&row[a as usize]));
    idx.truncate(k);
    idx.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
    idx.into_iter().map(|i| (i, row[i as usize])).collect()
}

/// Runs `teacher` over the first `max_windows` aligned training windows of `data` and writes their
/// top-k log-probabilities (over the tokenizer's vocabulary) to `out`. Returns the window count.
#[allow(clippy::too_many_arguments)]
pub fn write_topk<B: Backend>(
    teacher: &dyn Frozen<B>,
    data: &Dataset,
    out: &Path,
    seq_len: usize,
    k: usize,
    max_windows: usize,
    batch: usize,
    device: &B::Device,
    mut progress: impl FnMut(usize, usize),
) -> Result<usize> {
    let vocab = data.meta.vocab_size;
    if k == 0 || k > vocab {
        return Err(Error::Config(format!("top-k {k} must be in 1..={vocab}")));
    }
    let windows = ((data.train.len().saturating_sub(1)) / seq_len).min(max_windows);
    if windows == 0 {
        return Err(Error::Config("the training split is shorter than one window".into()));
    }
    let tmp = out.with_extension("topk.tmp");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(Error::io(&tmp))?);
    f.write_all(&topk_header(k, seq_len, windows, &data.meta.vocab_hash)).map_err(Error::io(&tmp))?;
    let mut done = 0;
    while done < windows {
        let nb = batch.max(1).min(windows - done);
        let toks: Vec<i64> = (done..done + nb).flat_map(|w| data.train.window(w * seq_len, seq_len)).collect();
        let t = Tensor::<B, 2, Int>::from_data(TensorData::new(toks, [nb, seq_len]), device);
        let logits = teacher.logits(t);
        let v = logits.dims()[2].min(vocab);
        let lp = log_softmax(logits.narrow(2, 0, v));
        let host: Vec<f32> = lp.to_data().iter::<f32>().collect();
        for w in 0..nb {
            let (mut ids, mut vals) = (Vec::with_capacity(seq_len * k * 4), Vec::with_capacity(seq_len * k * 4));
            for pos in 0..seq_len {
                let row = &host[(w * seq_len + pos) * v..(w * seq_len + pos + 1) * v];
                for (i, x) in top_k(row, k) {
                    ids.extend_from_slice(&i.to_le_bytes());
                    vals.extend_from_slice(&x.to_le_bytes());
                }
            }
            f.write_all(&ids).map_err(Error::io(&tmp))?;
            f.write_all(&vals).map_err(Error::io(&tmp))?;
        }
        done += nb;
        progress(done, windows);
    }
    let file = f.into_inner().map_err(|e| Error::io(&tmp)(e.into_error()))?;
    file.sync_all().map_err(Error::io(&tmp))?;
    std::fs::rename(&tmp, out).map_err(Error::io(out))?;
    Ok(windows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_top_k_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("t.topk");
        // Header sizes whose product overflows: no panic, no wrap-around match.
        let mut h = topk_header(1 << 31, 1 << 31, 0, "abc");
        h[16..24].copy_from_slice(&(1u64 << 62).to_le_bytes());
        std::fs::write(&p, &h).expect("write");
        let msg = TopkFile::open(&p).expect_err("overflow").to_string();
        assert!(msg.contains("does not match its header"), "{msg}");
        // A valid file whose ids leave the vocabulary.
        let (k, seq_len) = (2usize, 3usize);
        let mut f = topk_header(k, seq_len, 1, "abc");
        for id in [0u32, 1, 2, 3, 4, 999] {
            f.extend_from_slice(&id.to_le_bytes());
        }
        for _ in 0..k * seq_len {
            f.extend_from_slice(&(-1.0f32).to_le_bytes());
        }
        std::fs::write(&p, &f).expect("write");
        let t = TopkFile::open(&p).expect("opens");
        let dev = Default::default();
        t.batch::<burn::backend::NdArray<f32>>(&[0], 1000, &dev).expect("ids within 1000");
        let msg = t.batch::<burn::backend::NdArray<f32>>(&[0], 451, &dev).expect_err("id 999").to_string();
        assert!(msg.contains("999") && msg.contains("451"), "{msg}");
    }

    #[test]
    fn top_k_is_sorted_and_exact() {
        let row = [0.1, 3.0, -1.0, 2.5, 3.0, 0.0];
        let t = top_k(&row, 3);
        assert_eq!(t.iter().map(|x| x.1).collect::<Vec<_>>(), vec![3.0, 3.0, 2.5]);
        assert_eq!(t[2].0, 3);
        assert_eq!(top_k(&row, 10).len(), 6);
    }
}
