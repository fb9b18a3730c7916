//! FBI-Linear, the binarized projection of Bi-Mamba (ARCHITECTURE.md §2), and its full-precision twin.
//!
//! `W̃[i,j] = α_j · sign(W[i,j]) + β_j`, `y = x · W̃ᵀ`, with the latent weight W in full precision
//! and one (α, β) pair per input column (`scaling_pattern='column'`, shape [1, in]). Scales of
//! shape [out, 1] (the "row" pattern) broadcast the same way and are accepted too.
//!
//! sign(±0) = +1 (the packed format has no zero; the reference fixtures use the same rule).
//!
//! Straight-through estimator: the forward value is sign(W), the backward is the identity, with
//! no clipping. It is built as `sign(W).detach() + (W − W.detach())`: the second term is exactly
//! zero in value (x − x = 0 for every finite float) and has derivative 1, so autodiff yields
//! ∂L/∂W = α ⊙ ∂L/∂W̃, ∂L/∂α_j = Σ_i sign(W_ij) ∂L/∂W̃_ij and ∂L/∂β_j = Σ_i ∂L/∂W̃_ij.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

use crate::fused::FusedOps;
use crate::ops::opts;

/// A bias-free linear layer, binarized (FBI-Linear) when the scales are present.
#[derive(Module, Debug)]
pub struct Projection<B: Backend> {
    /// Latent weight W. Shape [out, in].
    pub weight: Param<Tensor<B, 2>>,
    /// α: shape [1, in] (column pattern) or [out, 1] (row pattern); None in full precision.
    pub wscale: Option<Param<Tensor<B, 2>>>,
    /// β: same shape as α; None in full precision.
    pub wbias: Option<Param<Tensor<B, 2>>>,
    /// Dtype of the matrix product (None: the tensors' own); not a parameter.
    pub matmul_dtype: Option<DType>,
}

/// Column-wise "xnor" scales of a latent weight W [out, in] stored row-major:
/// β_j = mean_i W_ij, α_j = mean_i |W_ij − β_j|. Returns (α, β), each of length `in`.
pub fn xnor_column_scales(w: &[f32], out: usize, inp: usize) -> (Vec<f32>, Vec<f32>) {
    let mut beta = vec![0f64; inp];
    for row in w.chunks_exact(inp) {
        for (b, &x) in beta.iter_mut().zip(row) {
            *b += x as f64;
        }
    }
    beta.iter_mut().for_each(|b| *b /= out as f64);
    let mut alpha = vec![0f64; inp];
    for row in w.chunks_exact(inp) {
        for ((a, &x), &b) in alpha.iter_mut().zip(row).zip(&beta) {
            *a += (x as f64 - b).abs();
        }
    }
    alpha.iter_mut().for_each(|a| *a /= out as f64);
    (alpha.into_iter().map(|a| a as f32).collect(), beta.into_iter().map(|b| b as f32).collect())
}

impl<B: Backend> Projection<B> {
    /// A projection from a row-major latent weight [out, in]; `binary` adds xnor-initialized
    /// column scales.
    pub fn from_latent(w: Vec<f32>, out: usize, inp: usize, binary: bool, device: &B::Device) -> Self {
        let scales = binary.then(|| xnor_column_scales(&w, out, inp));
        let weight = Tensor::from_data(TensorData::new(w, [out, inp]), opts::<B>(device));
        let (wscale, wbias) = match scales {
            Some((a, b)) => {
                let a = Tensor::from_data(TensorData::new(a, [1, inp]), opts::<B>(device));
                let b = Tensor::from_data(TensorData::new(b, [1, inp]), opts::<B>(device));
                (Some(Param::from_tensor(a)), Some(Param::from_tensor(b)))
            }
            None => (None, None),
        };
        Self { weight: Param::from_tensor(weight), wscale, wbias, matmul_dtype: None }
    }

    /// Whether the projection is binarized.
    pub fn is_binary(&self) -> bool {
        self.wscale.is_some() && self.wbias.is_some()
    }

    /// The weight the forward multiplies by: W̃ = α ⊙ sign(W) + β (STE) or W itself.
    ///
    /// # Shapes
    /// - output: [out, in]
    pub fn effective_weight(&self) -> Tensor<B, 2> {
        let w = self.weight.val();
        match (&self.wscale, &self.wbias) {
            (Some(alpha), Some(beta)) => {
                crate::fused::reference::fbi_weight(w.clone(), alpha.val(), beta.val(), w.dtype())
            }
            _ => w,
        }
    }
}

impl<B: FusedOps> Projection<B> {
    /// y = x · W̃ᵀ over the last dimension.
    ///
    /// # Shapes
    /// - x: [..., in]
    /// - output: [..., out]
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let out = self.weight.dims()[0];
        self.forward_split(x, &[out]).pop().expect("one part")
    }

    /// x · W̃ᵀ in consecutive blocks of output features (`sizes` add up to `out`), one product
    /// per block with the weight's rows for it: the same values as slicing [`Self::forward`]'s
    /// output, but each block is its own tensor, so the backward never assembles a gradient of
    /// the whole output from zero-filled slices. W̃ is made once.
    ///
    /// # Shapes
    /// - x: [..., in]
    /// - output: one [..., sizes[i]] per block
    pub fn forward_split<const D: usize>(&self, x: Tensor<B, D>, sizes: &[usize]) -> Vec<Tensor<B, D>> {
        let dims = x.dims();
        let inp = dims[D - 1];
        let rows = dims[..D - 1].iter().product::<usize>();
        let orig = x.dtype();
        let dtype = self.matmul_dtype.unwrap_or(orig);
        let w = self.weight.val();
        // W̃ is written once, directly in the product's dtype.
        let w = match (&self.wscale, &self.wbias) {
            (Some(alpha), Some(beta)) => B::fbi_weight(w, alpha.val(), beta.val(), dtype),
            _ if w.dtype() != dtype => w.cast(dtype),
            _ => w,
        };
        let x = x.reshape([rows, inp]);
        let x = if dtype != orig { x.cast(dtype) } else { x };
        let mut start = 0;
        let mut parts = Vec::with_capacity(sizes.len());
        for &k in sizes {
            let wk = if sizes.len() == 1 { w.clone() } else { w.clone().narrow(0, start, k) };
            let y = B::matmul(x.clone(), wk.transpose());
            let y = if dtype != orig { y.cast(orig) } else { y };
            let mut out_dims = dims;
            out_dims[D - 1] = k;
            parts.push(y.reshape(out_dims));
            start += k;
        }
        parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;
    use burn::backend::{Autodiff, NdArray};

    type B = Autodiff<NdArray<f64>>;

    fn vec_of(t: Tensor<NdArray<f64>, 2>) -> Vec<f64> {
        t.to_data().to_vec::<f64>().expect("f64 data")
    }

    #[test]
    fn xnor_scales_are_column_mean_and_mean_abs_deviation() {
        let w = [1.0, -2.0, 3.0, 0.5, 5.0, -1.0f32];
        let (a, b) = xnor_column_scales(&w, 2, 3);
        // Columns (1, 0.5), (−2, 5), (3, −1).
        assert_eq!(b, vec![0.75, 1.5, 1.0]);
        assert_eq!(a, vec![0.25, 3.5, 2.0]);
    }

    /// The straight-through gradients equal the formulas of ARCHITECTURE.md §2.3, computed from ∂L/∂W̃ of a
    /// plain linear layer with weight W̃, and that ∂L/∂W̃ matches finite differences.
    #[test]
    fn ste_gradients_follow_the_spec_formulas() {
        let dev = Default::default();
        let (out, inp, rows) = (5, 4, 3);
        let mut rng = SplitMix64::new(3);
        let w: Vec<f32> = (0..out * inp).map(|_| rng.normal() as f32).collect();
        let x: Vec<f64> = (0..rows * inp).map(|_| rng.normal()).collect();
        let r: Vec<f64> = (0..rows * out).map(|_| rng.normal()).collect();
        let proj = Projection::<B>::from_latent(w.clone(), out, inp, true, &dev);
        let xt = Tensor::<B, 2>::from_data(TensorData::new(x.clone(), [rows, inp]), opts::<B>(&dev));
        let rt = Tensor::<B, 2>::from_data(TensorData::new(r.clone(), [rows, out]), opts::<B>(&dev));
        // L = Σ (x W̃ᵀ) ⊙ R: ∂L/∂W̃ = Rᵀ x, known in closed form.
        let loss = (proj.forward(xt.clone()) * rt.clone()).sum();
        let grads = loss.backward();
        let gw = vec_of(proj.weight.val().grad(&grads).expect("grad W"));
        let ga = vec_of(proj.wscale.as_ref().expect("binary").val().grad(&grads).expect("grad α"));
        let gb = vec_of(proj.wbias.as_ref().expect("binary").val().grad(&grads).expect("grad β"));
        let alpha = vec_of(proj.wscale.as_ref().expect("binary").val().inner());
        let mut gwt = vec![0f64; out * inp];
        for i in 0..out {
            for j in 0..inp {
                gwt[i * inp + j] = (0..rows).map(|t| r[t * out + i] * x[t * inp + j]).sum();
            }
        }
        for i in 0..out {
            for (j, a) in alpha.iter().enumerate() {
                let k = i * inp + j;
                assert!((gw[k] - a * gwt[k]).abs() < 1e-12, "dL/dW[{i},{j}]");
            }
        }
        for j in 0..inp {
            let want_a: f64 = (0..out).map(|i| (w[i * inp + j] as f64).signum() * gwt[i * inp + j]).sum();
            let want_b: f64 = (0..out).map(|i| gwt[i * inp + j]).sum();
            assert!((ga[j] - want_a).abs() < 1e-12, "dL/dα[{j}]");
            assert!((gb[j] - want_b).abs() < 1e-12, "dL/dβ[{j}]");
        }
        // The forward value is exactly α·sign(W)+β, untouched by the STE term.
        let we = vec_of(proj.effective_weight().inner());
        let beta = vec_of(proj.wbias.as_ref().expect("binary").val().inner());
        for i in 0..out {
            for j in 0..inp {
                let want = alpha[j] * (w[i * inp + j] as f64).signum() + beta[j];
                assert_eq!(we[i * inp + j], want);
            }
        }
    }
}
