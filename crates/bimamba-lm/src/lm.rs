//! What evaluation and generation need from any language model (the Mamba-2 engine and the
//! LLaMA-architecture GGUF engine both implement it): a copyable state and logits for a block of
//! tokens.

use crate::error::Result;
use crate::softmax::log_sum_exp;

pub trait LanguageModel: Sync {
    /// Everything the model carries between calls; cloning it forks the sequence.
    type State: Clone + Send;

    /// Width of the logits (may exceed the tokenizer's vocabulary when padded).
    fn vocab_size(&self) -> usize;

    fn new_state(&self) -> Self::State;

    /// Feeds `tokens`, returning the logits of every position.
    ///
    /// # Shapes
    /// - returns [tokens.len(), vocab_size]
    fn forward(&self, state: &mut Self::State, tokens: &[u32]) -> Result<Vec<f32>>;

    /// Feeds `tokens`, returning the last position's logits only.
    ///
    /// # Shapes
    /// - returns [vocab_size]
    fn forward_last(&self, state: &mut Self::State, tokens: &[u32]) -> Result<Vec<f32>> {
        let v = self.vocab_size();
        let all = self.forward(state, tokens)?;
        Ok(all[all.len() - v..].to_vec())
    }

    /// The logits of several independent continuations of `state`, each as if fed to its own
    /// copy of it; `state` is not changed. Models may batch the branches (the LLaMA forward runs
    /// them through one product per matrix); the default feeds each to a clone.
    ///
    /// # Shapes
    /// - returns one [branches[i].len(), vocab_size] block per branch
    fn forward_branches(&self, state: &Self::State, branches: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        branches.iter().map(|b| self.forward(&mut state.clone(), b)).collect()
    }
}

/// log p(target) under the softmax of one row of logits: the row's log-softmax at one index.
pub fn log_prob(logits: &[f32], target: u32) -> f64 {
    logits[target as usize] as f64 - log_sum_exp(logits)
}
