//! Bi-Mamba training on Burn (arXiv 2411.11843): 1-bit Mamba-2 language models trained from
//! scratch by autoregressive distillation.
//!
//! Data flow: [`data`] (token files, window sampling) → [`model`] (Mamba-2 with the chunked SSD
//! of [`ssd`] and the FBI-Linear projections of [`bitlinear`]) → [`loss`] (soft-target and
//! next-token cross-entropy) → [`optim`] (AdamW, warm-up + cosine, global-norm clipping) →
//! [`run`] (the training loop, metrics, atomic checkpoints, exact resume) → [`export`] (the
//! state-spaces model directory that the inference engine loads). Teachers ([`teacher`]): a
//! Mamba-2 model directory ([`modeldir`]), a LLaMA-architecture GGUF ([`llama`]), or top-k
//! log-probabilities precomputed into a file. [`bench`] measures throughput and MFU; [`backend`]
//! picks NdArray (CPU) or CUDA at run time.
//!
//! Only this crate depends on Burn; the inference crates read the exported files.

pub mod backend;
pub mod bench;
pub mod bitlinear;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dist;
pub mod error;
pub mod export;
pub mod fused;
pub mod llama;
pub mod loss;
pub mod model;
pub mod modeldir;
pub mod ops;
pub mod optim;
pub mod params;
pub mod plot;
pub mod profile;
pub mod rng;
pub mod run;
pub mod runconfig;
pub mod sample;
pub mod ssd;
pub mod teacher;

pub use config::{ModelConfig, Precision};
pub use error::{Error, Result};
pub use model::Mamba2Lm;
