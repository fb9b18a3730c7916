//! x86-64 kernels, selected at runtime by [`crate::Isa`].

pub mod act8_quantize;
pub mod avx2;
pub mod avx2_i8;
pub mod avx2_lut;
pub mod avx512;
pub mod avx512_lut;
pub mod avx512_tmac;
pub mod avx512_vnni;
pub mod avx512_vnni_gemm;
pub mod avx512_vnni_q8;
pub mod avx512_vnni_q8_panels;
pub mod ssd_chunk;
pub mod ssm_bf16;
pub mod ssm_prefill;
