//! Test helpers: the fixture tokenizer and two tiny deterministic language models.

use std::path::PathBuf;

use bimamba_lm::{LanguageModel, Result};
use bimamba_text::Tokenizer;

/// The byte-level BPE of the fixture models (451 entries, trained on Pride and Prejudice).
pub fn fixture_tokenizer() -> Tokenizer {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/ss-mamba2-g1/tokenizer.json");
    Tokenizer::from_file(&p).expect("the fixture tokenizer is committed")
}

/// Logits depend on the whole history through a rolling hash: any mistake in which tokens the
/// state has seen changes every later row.
pub struct HashLm {
    pub vocab: usize,
}

fn mix(h: u64, x: u64) -> u64 {
    let mut z = h ^ x.wrapping_add(0x9e37_79b9_7f4a_7c15).wrapping_add(h << 6).wrapping_add(h >> 2);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl LanguageModel for HashLm {
    type State = u64;
    fn vocab_size(&self) -> usize {
        self.vocab
    }
    fn new_state(&self) -> u64 {
        17
    }
    fn forward(&self, state: &mut u64, tokens: &[u32]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(tokens.len() * self.vocab);
        for &t in tokens {
            *state = mix(*state, t as u64);
            out.extend((0..self.vocab).map(|j| (mix(*state, j as u64) % 1000) as f32 / 150.0));
        }
        Ok(out)
    }
}

/// A bigram model: the logits after token a are `table[a]`.
pub struct TableLm {
    pub table: Vec<Vec<f32>>,
}

impl LanguageModel for TableLm {
    /// The last token fed.
    type State = Option<u32>;
    fn vocab_size(&self) -> usize {
        self.table[0].len()
    }
    fn new_state(&self) -> Option<u32> {
        None
    }
    fn forward(&self, state: &mut Option<u32>, tokens: &[u32]) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        for &t in tokens {
            *state = Some(t);
            out.extend_from_slice(&self.table[t as usize]);
        }
        Ok(out)
    }
}
