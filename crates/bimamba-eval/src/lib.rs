//! Evaluation: perplexity (the paper's protocol), zero-shot tasks with lm-evaluation-harness 0.4
//! semantics, and side-by-side comparison of result files.

pub mod compare;
pub mod ppl;
pub mod tasks;

pub use ppl::{perplexity, PplResult};
pub use tasks::{evaluate, Task, TaskError, TaskResult};
