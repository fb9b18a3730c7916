//! What evaluation and generation need from any language model (Mamba-2 here, the LLaMA-style
//! GGUF teacher elsewhere): a copyable state and logits for a block of tokens.

use crate::error::Result;
use crate::model::Model;
use crate::state::State;

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

impl LanguageModel for Model {
    type State = State;
    fn vocab_size(&self) -> usize {
        Model::vocab_size(self)
    }
    fn new_state(&self) -> State {
        Model::new_state(self)
    }
    fn forward(&self, state: &mut State, tokens: &[u32]) -> Result<Vec<f32>> {
        Model::forward(self, state, tokens)
    }
    fn forward_last(&self, state: &mut State, tokens: &[u32]) -> Result<Vec<f32>> {
        Model::forward_last(self, state, tokens)
    }
}

pub use crate::softmax::log_sum_exp;

/// log p(target) under the softmax of one row of logits.
pub fn log_prob(logits: &[f32], target: u32) -> f64 {
    logits[target as usize] as f64 - log_sum_exp(logits)
}
