//! The layer every language model of this workspace shares, below both engines (the Mamba-2 /
//! Bi-Mamba engine and the LLaMA-architecture GGUF engine): the [`LanguageModel`] trait that
//! generation and evaluation run on, the arithmetic on its logits (the vectorized log-sum-exp of
//! [`softmax`] and the log-softmax of one entry, [`log_prob`]; greedy and seeded sampling in
//! [`sampling`]) and one error type, [`ModelError`].

pub mod error;
pub mod lm;
pub mod sampling;
pub mod softmax;

pub use error::{one_line, ModelError, Result};
pub use lm::{log_prob, LanguageModel};
