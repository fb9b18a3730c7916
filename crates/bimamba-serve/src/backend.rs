//! What the scheduler needs from a model beyond [`LanguageModel`]: one decode step for several
//! sequences at once, and the bytes a state holds (for the cache's budget).

use bimamba_engine::State;
use bimamba_lm::{LanguageModel, ModelError, Result};
use bimamba_models::{AnyModel, AnyState};

/// Feeds `tokens[i]` to `states[i]` for every i and returns the logits, [n, vocab_size].
///
/// A Mamba model runs [`bimamba_engine::Model::step_batch`]: one block product per projection
/// for the whole batch. A GGUF (LLaMA) model steps each sequence on its own: its KV caches
/// differ in length, and it serves here for completeness, not for throughput.
pub fn step_batch(model: &AnyModel, states: &mut [&mut AnyState], tokens: &[u32]) -> Result<Vec<f32>> {
    match model {
        AnyModel::Mamba(m) => {
            let mut inner: Vec<&mut State> = Vec::with_capacity(states.len());
            for s in states.iter_mut() {
                match &mut **s {
                    AnyState::Mamba(s) => inner.push(s),
                    AnyState::Llama(_) => return Err(ModelError::StateKind { model: "Mamba-2", state: "LLaMA" }),
                }
            }
            m.step_batch(&mut inner, tokens)
        }
        AnyModel::Llama(_) => {
            let mut logits = Vec::with_capacity(tokens.len() * model.vocab_size());
            for (s, &t) in states.iter_mut().zip(tokens) {
                logits.extend(model.forward_last(s, &[t])?);
            }
            Ok(logits)
        }
    }
}

/// Bytes held by a decoding state.
pub fn state_bytes(state: &AnyState) -> usize {
    match state {
        AnyState::Mamba(s) => s.bytes(),
        AnyState::Llama(c) => c.bytes(),
    }
}
