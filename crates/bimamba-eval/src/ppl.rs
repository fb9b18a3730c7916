//! Perplexity as the paper measures it: the whole text encoded once (no special tokens), cut into
//! non-overlapping windows of `seq_len` tokens (the remainder dropped), each window scored from a
//! fresh state, predicting tokens 2..seq_len of the window. PPL = exp(mean NLL).
//!
//! Bits per byte make models with different tokenizers comparable: the NLL in bits divided by the
//! UTF-8 bytes of text that the scored tokens cover.

use bimamba_lm::{log_prob, LanguageModel, Result};
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PplResult {
    pub ppl: f64,
    /// Mean negative log-likelihood per scored token, in nats.
    pub nll: f64,
    /// Tokens scored (windows × (seq_len − 1)).
    pub tokens: usize,
    pub windows: usize,
    pub seq_len: usize,
    /// UTF-8 bytes covered by the scored tokens.
    pub bytes: usize,
    pub bits_per_byte: f64,
}

/// Scores `ids` (with `ends[i]` the byte offset where token i's text ends); `progress(w)` is
/// called after each window. Returns `None` when the text is shorter than one window.
///
/// # Shapes
/// - `ids`, `ends`: [n_tokens]
pub fn perplexity<M: LanguageModel>(
    model: &M,
    ids: &[u32],
    ends: &[usize],
    seq_len: usize,
    mut progress: impl FnMut(usize),
) -> Result<Option<PplResult>> {
    assert!(seq_len >= 2, "seq_len >= 2 is checked by the caller");
    let windows = ids.len() / seq_len;
    if windows == 0 {
        return Ok(None);
    }
    let v = model.vocab_size();
    let mut nll = 0.0f64;
    let mut bytes = 0usize;
    for w in 0..windows {
        let win = &ids[w * seq_len..(w + 1) * seq_len];
        let mut state = model.new_state();
        let logits = model.forward(&mut state, win)?;
        // Position k predicts token k+1.
        for k in 0..seq_len - 1 {
            nll -= log_prob(&logits[k * v..(k + 1) * v], win[k + 1]);
        }
        let e = &ends[w * seq_len..(w + 1) * seq_len];
        bytes += e[seq_len - 1] - e[0];
        progress(w + 1);
    }
    let tokens = windows * (seq_len - 1);
    let mean = nll / tokens as f64;
    Ok(Some(PplResult {
        ppl: mean.exp(),
        nll: mean,
        tokens,
        windows,
        seq_len,
        bytes,
        bits_per_byte: if bytes == 0 { f64::NAN } else { nll / std::f64::consts::LN_2 / bytes as f64 },
    }))
}
