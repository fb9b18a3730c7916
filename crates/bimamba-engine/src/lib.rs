//! Mamba-2 and Bi-Mamba inference on the CPU.
//!
//! Mamba-2: Dao & Gu, "Transformers are SSMs" (arXiv 2405.21060). Bi-Mamba: Tang et al.,
//! "Bi-Mamba: Towards Accurate 1-Bit State Space Models" (arXiv 2411.11843).
//!
//! One model definition ([`Model`]) serves full-precision and 1-bit checkpoints: the difference
//! lives in [`Linear`]. The decoding state ([`State`]) is separate from the weights; prefill and
//! decode are one code path over a block of tokens (see `mixer`). The model implements
//! `bimamba_lm::LanguageModel`, and its errors are `bimamba_lm::ModelError`.

pub mod activation;
mod batch;
pub mod config;
pub mod linear;
mod lm;
mod load;
pub mod mixer;
pub mod model;
pub mod pack;
pub mod profile;
pub mod random;
pub mod state;
mod workspace;

pub use bimamba_lm::{LanguageModel, ModelError, Result};
pub use config::{Config, Dialect};
pub use linear::{BinaryScales, DenseWeight, Linear};
pub use mixer::Proj;
pub use model::{Layer, Model, ProjSite};
pub use state::{SsmState, State, StateDtype};
pub use workspace::Workspace;
