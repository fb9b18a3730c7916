//! Evaluation: perplexity (the paper's protocol) and zero-shot multiple-choice tasks with
//! lm-evaluation-harness 0.4 semantics.

pub mod ppl;

pub use ppl::{perplexity, PplResult};
