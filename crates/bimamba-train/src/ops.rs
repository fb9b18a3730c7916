//! Elementwise building blocks written with basic tensor ops, so they keep the backend's float
//! precision (Burn 0.21's `sigmoid`/`silu` compute in f32 even for f64 tensors, which would spoil
//! the f64 gradient checks) and stay differentiable everywhere.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Element, Tensor, TensorCreationOptions};

/// The float dtype of backend `B`; pass it to every tensor creation so mixed-precision test
/// processes do not pick up another device default.
pub fn float_dtype<B: Backend>() -> DType {
    <B::FloatElem as Element>::dtype()
}

/// Creation options for a float tensor of backend `B` on `device`.
pub fn opts<B: Backend>(device: &B::Device) -> TensorCreationOptions<B> {
    TensorCreationOptions::new(device.clone()).with_dtype(float_dtype::<B>())
}

/// a · b, computed in `dtype` when given (mixed precision: bf16 matrix products on f32 tensors,
/// the result cast back to the input's dtype; autodiff casts the gradients the same way).
///
/// # Shapes
/// - a: [..., m, k]; b: [..., k, n]; output: [..., m, n]
pub fn matmul_in<B: crate::fused::FusedOps, const D: usize>(
    a: Tensor<B, D>,
    b: Tensor<B, D>,
    dtype: Option<DType>,
) -> Tensor<B, D> {
    match dtype {
        Some(dt) if dt != a.dtype() => {
            let orig = a.dtype();
            B::matmul(a.cast(dt), b.cast(dt)).cast(orig)
        }
        _ => B::matmul(a, b),
    }
}

/// SiLU(x) = x · σ(x) = x / (1 + e^{−x}).
pub fn silu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clone() / (x.neg().exp() + 1.0)
}

/// softplus(x) = log(1 + eˣ), computed as max(x, 0) + log1p(e^{−|x|}) so that it never overflows.
pub fn softplus<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clone().clamp_min(0.0) + x.abs().neg().exp().log1p()
}

/// RMSNorm over the last dimension: x / sqrt(mean(x²) + eps) (no weight).
pub fn rms_normalize<B: Backend, const D: usize>(x: Tensor<B, D>, eps: f64) -> Tensor<B, D> {
    let ms = x.clone().powi_scalar(2).mean_dim(D - 1);
    x * (ms + eps).sqrt().recip()
}

/// log softmax over the last dimension, with the max subtracted (and detached) for stability.
pub fn log_softmax<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let m = x.clone().max_dim(D - 1).detach();
    let shifted = x - m;
    let lse = shifted.clone().exp().sum_dim(D - 1).log();
    shifted - lse
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::TensorData;

    type B = NdArray<f64>;

    #[test]
    fn elementwise_ops_match_scalar_formulas() {
        let dev = Default::default();
        let v = [-30.0, -2.5, -0.1, 0.0, 0.7, 3.0, 40.0];
        let x = Tensor::<B, 1>::from_data(TensorData::new(v.to_vec(), [v.len()]), opts::<B>(&dev));
        let s = silu(x.clone()).to_data().to_vec::<f64>().expect("f64");
        let sp = softplus(x.clone()).to_data().to_vec::<f64>().expect("f64");
        for (i, &xi) in v.iter().enumerate() {
            let sig = 1.0 / (1.0 + f64::exp(-xi));
            assert!((s[i] - xi * sig).abs() < 1e-14, "silu({xi})");
            let want = if xi > 30.0 { xi } else { (1.0 + xi.exp()).ln() };
            assert!((sp[i] - want).abs() < 1e-12, "softplus({xi}) = {} vs {want}", sp[i]);
        }
        let ls = log_softmax(x.clone().reshape([1, v.len()])).to_data().to_vec::<f64>().expect("f64");
        let lse = v.iter().map(|a| (a - 40.0f64).exp()).sum::<f64>().ln() + 40.0;
        for (i, &xi) in v.iter().enumerate() {
            assert!((ls[i] - (xi - lse)).abs() < 1e-12);
        }
        let r = rms_normalize(x.reshape([1, v.len()]), 0.0).to_data().to_vec::<f64>().expect("f64");
        let rms = (v.iter().map(|a| a * a).sum::<f64>() / v.len() as f64).sqrt();
        assert!((r[6] - 40.0 / rms).abs() < 1e-12);
    }
}
