//! [`AnyModel`]: a model of either engine behind one [`LanguageModel`], opened from a path.

use std::path::Path;

use bimamba_engine::{Model, State};
use bimamba_formats::Checkpoint;
use bimamba_llama::{KvCache, LlamaModel};
use bimamba_lm::{LanguageModel, ModelError, Result};
use bimamba_text::{TextError, Tokenizer};

use crate::settings::{ModelKind, SettingError, Settings};

/// What can go wrong opening a model and its tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Text(#[from] TextError),
    #[error(transparent)]
    Setting(#[from] SettingError),
}

/// A model of either engine. Code generic over [`LanguageModel`] runs on it unchanged; each
/// call goes to the engine it holds.
pub enum AnyModel {
    /// Mamba-2 or Bi-Mamba (a model directory).
    Mamba(Model),
    /// A LLaMA-architecture GGUF model (the SmolLM2 teacher).
    Llama(LlamaModel),
}

/// The decoding state of an [`AnyModel`]: the state of the engine it holds.
#[derive(Clone, Debug)]
pub enum AnyState {
    Mamba(State),
    Llama(KvCache),
}

impl AnyModel {
    /// Opens a Mamba model directory or a LLaMA GGUF file ([`ModelKind::of`]) with the default
    /// settings (the fast arithmetic; [`Settings::exact`] gives the reference one).
    pub fn open(path: &Path) -> std::result::Result<AnyModel, OpenError> {
        AnyModel::open_with(path, &Settings::default())
    }

    /// Opens a Mamba model directory or a LLaMA GGUF file with `settings`; a setting the model
    /// has no use for is refused ([`Settings::check`]) before anything is loaded.
    pub fn open_with(path: &Path, settings: &Settings) -> std::result::Result<AnyModel, OpenError> {
        let kind = ModelKind::of(path)?;
        settings.check(kind, path)?;
        Ok(match kind {
            ModelKind::Mamba => {
                let mut m = Model::load(path)?;
                m.set_state_dtype(settings.state_dtype());
                m.set_binary_act(settings.binary_act());
                AnyModel::Mamba(m)
            }
            ModelKind::Llama => AnyModel::Llama(LlamaModel::load_with(path, settings.gguf_act)?),
        })
    }

    pub fn kind(&self) -> ModelKind {
        match self {
            AnyModel::Mamba(_) => ModelKind::Mamba,
            AnyModel::Llama(_) => ModelKind::Llama,
        }
    }

    /// The tokenizer of the model opened from `path`: `explicit` when given, else the model
    /// directory's `tokenizer.json`, else (GGUF) the tokenizer stored in the file. Every id it can
    /// produce must index a row of the model's embedding ([`check_vocab`]).
    pub fn open_tokenizer(&self, path: &Path, explicit: Option<&Path>) -> std::result::Result<Tokenizer, OpenError> {
        let tok = match (self, explicit) {
            (AnyModel::Llama(_), None) => {
                bimamba_llama::gguf_tokenizer(&Checkpoint::open(path).map_err(ModelError::from)?)?
            }
            _ => Tokenizer::for_model(path, explicit)?,
        };
        check_vocab(self, &tok, path)?;
        Ok(tok)
    }

    /// The tokens at which generation stops: the tokenizer's end-of-sequence token and, for a
    /// GGUF model, the one its metadata names.
    pub fn stop_tokens(&self, tok: &Tokenizer) -> Vec<u32> {
        let mut stops: Vec<u32> = tok.eos_id().into_iter().collect();
        if let AnyModel::Llama(m) = self {
            stops.extend(m.eos_token_id.filter(|id| !stops.contains(id)));
        }
        stops
    }
}

/// Every id the tokenizer can produce must index a row of the embedding: a tokenizer with more
/// entries than the model at `model_path` has rows is refused, naming both.
pub fn check_vocab<M: LanguageModel>(model: &M, tok: &Tokenizer, model_path: &Path) -> Result<()> {
    if tok.vocab_size() > model.vocab_size() {
        return Err(ModelError::Invalid {
            file: tok.path().to_path_buf(),
            detail: format!(
                "the tokenizer has {} entries but the model {} has only {} embedding rows; use the model's own tokenizer",
                tok.vocab_size(),
                model_path.display(),
                model.vocab_size()
            ),
        });
    }
    Ok(())
}

impl AnyState {
    pub fn kind(&self) -> ModelKind {
        match self {
            AnyState::Mamba(_) => ModelKind::Mamba,
            AnyState::Llama(_) => ModelKind::Llama,
        }
    }
}

impl AnyModel {
    /// The mismatch error for a state of the other engine.
    fn wrong_state(&self, state: &AnyState) -> ModelError {
        ModelError::StateKind { model: self.kind().name(), state: state.kind().name() }
    }
}

impl LanguageModel for AnyModel {
    type State = AnyState;

    fn vocab_size(&self) -> usize {
        match self {
            AnyModel::Mamba(m) => LanguageModel::vocab_size(m),
            AnyModel::Llama(m) => LanguageModel::vocab_size(m),
        }
    }

    fn new_state(&self) -> AnyState {
        match self {
            AnyModel::Mamba(m) => AnyState::Mamba(m.new_state()),
            AnyModel::Llama(m) => AnyState::Llama(m.new_cache()),
        }
    }

    fn forward(&self, state: &mut AnyState, tokens: &[u32]) -> Result<Vec<f32>> {
        match (self, state) {
            (AnyModel::Mamba(m), AnyState::Mamba(s)) => m.forward(s, tokens),
            (AnyModel::Llama(m), AnyState::Llama(s)) => m.forward(s, tokens),
            (_, s) => Err(self.wrong_state(s)),
        }
    }

    fn forward_last(&self, state: &mut AnyState, tokens: &[u32]) -> Result<Vec<f32>> {
        match (self, state) {
            (AnyModel::Mamba(m), AnyState::Mamba(s)) => m.forward_last(s, tokens),
            (AnyModel::Llama(m), AnyState::Llama(s)) => m.forward_last(s, tokens),
            (_, s) => Err(self.wrong_state(s)),
        }
    }

    fn forward_branches(&self, state: &AnyState, branches: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        match (self, state) {
            (AnyModel::Mamba(m), AnyState::Mamba(s)) => LanguageModel::forward_branches(m, s, branches),
            (AnyModel::Llama(m), AnyState::Llama(s)) => m.forward_branches(s, branches),
            (_, s) => Err(self.wrong_state(s)),
        }
    }
}
