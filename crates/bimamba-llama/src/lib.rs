//! A LLaMA-architecture forward for GGUF models on the CPU, with f32 or 8-bit activations: the
//! SmolLM2-135M teacher of the distillation (and a reference point for evaluation).
//!
//! LLaMA: Touvron et al., "LLaMA: Open and Efficient Foundation Language Models" (arXiv
//! 2302.13971): pre-norm RMSNorm blocks, rotary position embedding (Su et al., arXiv
//! 2104.09864), grouped-query attention (Ainslie et al., arXiv 2305.13245), SwiGLU feed-forward.
//!
//! Layout: [`config`] (the `llama.*` GGUF keys), [`ops`] (RMSNorm, RoPE in llama.cpp's
//! adjacent-pair convention, attention over the cache, SwiGLU), [`weights`] and [`qdot`] (the
//! matrix products), [`model`] (weights by GGUF key, the [`KvCache`] state, the forward, batched
//! branches of one cache), [`tokenizer`] (the GGUF's own BPE tokenizer). The model
//! implements [`bimamba_lm::LanguageModel`], so perplexity, the zero-shot tasks and
//! generation run on it unchanged.
//!
//! Weights and activations ([`Activations`], chosen at load): with f32 activations (the
//! default) Q8_0 / Q4_0 / Q4_1 matrices are dequantized to f32 once at load (SmolLM2-135M Q4_1:
//! 538 MB; a model whose f32 copy would pass 2 GiB keeps its GGUF blocks and dequantizes them
//! panel by panel inside each product, [`weights`]) and every product runs on the dense f32 SIMD
//! kernel of `bimamba_kernels`: the exact result on the file's values. With 8-bit activations
//! ([`qdot`], llama.cpp's CPU arithmetic) the blocks are re-laid for `vpdpbusd` (165 MB) and
//! each product quantizes its input per block of 32: about 3x faster on AVX-512 VNNI, perplexity
//! +0.3-0.6% on SmolLM2 (crates/bimamba-llama/KERNELS.md). Other float types are converted to
//! f32 at load in both modes.

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
