//! [`super::FusedOps::causal_attention`] on Burn's CubeCL backends: CubeCL's flash-attention
//! kernels (cubek's attention library, launched through burn-cubecl), for the frozen teacher.
//!
//! The op-by-op teacher attention (`crate::llama::attention_reference`) writes the scores of every
//! (query, key) pair, [b, heads, L, L] in f32, masks them, takes a log-softmax and multiplies by
//! v: at batch 4 and L = 2048, 600 MB per layer, read and written several times. A flash kernel
//! keeps each block of scores on chip and carries the softmax's running maximum and sum over the
//! blocks of keys. Two of cubek's kernels are tried in turn: the one on the tensor cores
//! (`BlackboxAccelerated`, 4 planes per cube; half-precision inputs where the runtime has them)
//! and the one on plain multiply-adds (`Unit`, every runtime). `check-kernels` compares whichever
//! runs with the reference.

use burn::tensor::backend::Backend;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Tensor};
use burn_cubecl::kernel::attention::flash_attention;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubek::attention::launch::{BlueprintStrategy, Strategy};
use cubek::attention::routines::blackbox_accelerated::BlackboxAcceleratedStrategy;

use super::cube::{float_prim, wrap_d};

type Prim<R> = CubeTensor<R>;

/// softmax(q·kᵀ/√hd, causal)·v with q, k, v in `dtype` (none: as they are), the output in q's
/// dtype; `None` if neither kernel takes the problem.
pub fn causal_attention<B: Backend<FloatTensorPrimitive = Prim<R>>, R: CubeRuntime>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    dtype: Option<DType>,
) -> Option<Tensor<B, 4>> {
    let orig = q.dtype();
    let cast = |t: Tensor<B, 4>| match dtype {
        Some(d) if d != t.dtype() => t.cast(d),
        _ => t,
    };
    // The kernels read their inputs as if contiguous (a transposed view gives wrong values):
    // one copy of each where it is a view (q, and k, v repeated to the query heads).
    let dense = |t: Tensor<B, 4>| into_contiguous(float_prim(cast(t)));
    let (q, k, v) = (dense(q), dense(k), dense(v));
    let options = AttentionModuleOptions { scale: None, softcap: None, is_causal: true };
    let accelerated = Strategy::BlackboxAccelerated(BlueprintStrategy::Inferred(BlackboxAcceleratedStrategy {
        num_planes: 4,
        seq_q: 1,
        seq_kv: 1,
    }));
    let unit = Strategy::Unit(BlueprintStrategy::Inferred(()));
    let run = |strategy| flash_attention(q.clone(), k.clone(), v.clone(), None, None, options, strategy);
    let out = run(accelerated).or_else(|_| run(unit)).ok()?;
    let out: Tensor<B, 4> = wrap_d(out);
    Some(if out.dtype() != orig { out.cast(orig) } else { out })
}
