//! The Mamba-2 model as a [`LanguageModel`]: evaluation and generation run on it through the
//! trait of `bimamba-lm`.

use bimamba_lm::{LanguageModel, Result};

use crate::model::Model;
use crate::state::State;

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
