//! AArch64 kernels, selected at runtime by [`crate::Isa`].

pub mod neon;
pub mod ssm_bf16;
