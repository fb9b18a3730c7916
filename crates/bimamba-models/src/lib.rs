//! Opens whatever model a path holds as one [`bimamba_lm::LanguageModel`]: a Mamba-2 / Bi-Mamba
//! model directory (`bimamba-engine`) or a LLaMA-architecture GGUF file (`bimamba-llama`).
//!
//! This is the only crate that sees both engines. [`ModelKind::of`] tells the two apart (GGUF's
//! magic bytes), [`Settings`] carries the run-time choices and refuses the ones a kind of model
//! has no use for, [`AnyModel::open_with`] loads the model and [`AnyModel::open_tokenizer`] the
//! tokenizer that goes with it. [`AnyModel`] implements the trait by handing each call to the
//! engine it holds, so perplexity, the zero-shot tasks and generation are written once.

mod any;
mod settings;
#[cfg(test)]
mod tests;

pub use any::{check_vocab, AnyModel, AnyState, OpenError};
pub use settings::{ModelKind, SettingError, Settings};
