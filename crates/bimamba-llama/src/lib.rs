//! A LLaMA-architecture forward for GGUF models on the CPU, with f32 activations: the
//! SmolLM2-135M teacher of the distillation (and a reference point for evaluation).
//!
//! LLaMA: Touvron et al., "LLaMA: Open and Efficient Foundation Language Models" (arXiv
//! 2302.13971): pre-norm RMSNorm blocks, rotary position embedding (Su et al., arXiv
//! 2104.09864), grouped-query attention (Ainslie et al., arXiv 2305.13245), SwiGLU feed-forward.
//!
//! Layout: [`config`] (the `llama.*` GGUF keys), [`ops`] (RMSNorm, RoPE in llama.cpp's
//! adjacent-pair convention, attention over the cache, SwiGLU), [`model`] (weights by GGUF key,
//! the [`KvCache`] state, the forward), [`tokenizer`] (the GGUF's own BPE tokenizer). The model
//! implements [`bimamba_engine::LanguageModel`], so perplexity, the zero-shot tasks and
//! generation run on it unchanged.
//!
//! Weights: Q8_0 / Q4_0 / Q4_1 matrices stay in their GGUF blocks and are dequantized panel by
//! panel inside the product ([`weights`]; SmolLM2-135M Q4_1 takes about 100 MB); other float
//! types are converted to f32 at load. Activations are f32 throughout, and every product runs on
//! the dense f32 SIMD kernel of `bimamba_kernels`.

pub mod config;
pub mod model;
pub mod ops;
pub mod qdot;
pub mod tokenizer;
pub mod weights;

/// Test support, for this crate's tests and (with the `testing` feature) other crates'.
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests_model;
#[cfg(test)]
mod tests_tokenizer;

pub use config::LlamaConfig;
pub use model::{Block, KvCache, LayerCache, LlamaModel};
pub use tokenizer::gguf_tokenizer;
pub use weights::{Activations, Matrix, Storage};
