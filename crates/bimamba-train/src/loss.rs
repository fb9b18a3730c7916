//! Training objectives (ARCHITECTURE.md §3.1): the paper's soft-target cross-entropy against a frozen teacher,
//! plain next-token cross-entropy, and a weighted mix of the two.
//!
//! With temperature T, the soft loss is `T² · (1/N) Σ_t Σ_v −p_T(v) log q_S(v)` where p_T and q_S
//! are the softmaxes of teacher and student logits divided by T (Hinton's T² keeps gradient
//! magnitudes comparable across T; at the paper's T = 1 it is exactly the formula of ARCHITECTURE.md §3.1).
//! Student logits cover the padded vocabulary; a teacher with fewer columns is compared on its own
//! columns (the student's extra rows still take part in its softmax, as in the official code).

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor};

use crate::fused::FusedOps;
use crate::ops::log_softmax;

/// Mean next-token cross-entropy. The logits may be bf16 (the LM head's product): each row is
/// reduced in f32 without an f32 copy of the whole matrix where the backend has the fused kernel.
///
/// # Shapes
/// - logits: [b, L, V]; targets: [b, L] (ids < V); output: [1]
pub fn cross_entropy<B: FusedOps>(logits: Tensor<B, 3>, targets: Tensor<B, 2, Int>) -> Tensor<B, 1> {
    let [b, l, v] = logits.dims();
    B::ce_rows(logits.reshape([b * l, v]), targets.reshape([b * l])).mean()
}

/// The op-by-op cross-entropy (log-softmax of f32 logits, then a gather): the reference the
/// fused path is measured against.
///
/// # Shapes
/// - as [`cross_entropy`]
pub fn reference_cross_entropy<B: Backend>(logits: Tensor<B, 3>, targets: Tensor<B, 2, Int>) -> Tensor<B, 1> {
    let [b, l, _] = logits.dims();
    log_softmax(logits).gather(2, targets.reshape([b, l, 1])).mean().neg()
}

/// Soft-target cross-entropy against dense teacher logits (either may be bf16).
///
/// # Shapes
/// - student: [b, L, Vs]; teacher: [b, L, Vt] with Vt ≤ Vs; output: [1]
pub fn soft_cross_entropy<B: FusedOps>(student: Tensor<B, 3>, teacher: Tensor<B, 3>, temperature: f64) -> Tensor<B, 1> {
    let [b, l, vs] = student.dims();
    let vt = teacher.dims()[2];
    B::soft_ce_rows(student.reshape([b * l, vs]), teacher.detach().reshape([b * l, vt]), temperature).mean()
}

/// Soft-target cross-entropy against a teacher's top-k log-probabilities, renormalized over the
/// k kept tokens (the mass outside the top k is unknown, so it is dropped).
///
/// # Shapes
/// - student: [b, L, V]; indices: [b, L, k]; teacher_logp: [b, L, k]; output: [1]
pub fn soft_cross_entropy_topk<B: Backend>(
    student: Tensor<B, 3>,
    indices: Tensor<B, 3, Int>,
    teacher_logp: Tensor<B, 3>,
    temperature: f64,
) -> Tensor<B, 1> {
    let [b, l, _] = indices.dims();
    let student =
        if student.dtype() == DType::F32 || student.dtype() == DType::F64 { student } else { student.cast(DType::F32) };
    let logq = log_softmax(student / temperature).gather(2, indices);
    let p = log_softmax(teacher_logp.detach() / temperature).exp();
    (p * logq).sum().neg() * (temperature * temperature / (b * l) as f64)
}

/// Weights of the mixed objective `soft_weight · soft + hard_weight · CE`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossMix {
    /// Weight of the distillation term (ignored without a teacher).
    pub soft_weight: f64,
    /// Weight of next-token cross-entropy on the true labels.
    pub hard_weight: f64,
    /// Distillation temperature T.
    pub temperature: f64,
}

impl Default for LossMix {
    /// The paper: pure distillation at T = 1, true labels unused.
    fn default() -> Self {
        Self { soft_weight: 1.0, hard_weight: 0.0, temperature: 1.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::opts;
    use burn::backend::NdArray;
    use burn::tensor::TensorData;

    type B = NdArray<f64>;

    fn t3(v: Vec<f64>, d: [usize; 3]) -> Tensor<B, 3> {
        Tensor::from_data(TensorData::new(v, d), opts::<B>(&Default::default()))
    }

    fn lsm(z: &[f64]) -> Vec<f64> {
        let m = z.iter().cloned().fold(f64::MIN, f64::max);
        let s = z.iter().map(|x| (x - m).exp()).sum::<f64>().ln() + m;
        z.iter().map(|x| x - s).collect()
    }

    #[test]
    fn losses_match_scalar_formulas() {
        let zs = vec![0.5, -1.0, 2.0, 0.0, 1.0, 1.0, -3.0, 0.25];
        let zt = vec![1.0, 0.0, -1.0, 2.0, -0.5, 0.5];
        let student = t3(zs.clone(), [1, 2, 4]);
        let teacher = t3(zt.clone(), [1, 2, 3]);
        let targets = Tensor::<B, 2, Int>::from_data(TensorData::new(vec![2i64, 0], [1, 2]), &Default::default());
        let ce = cross_entropy(student.clone(), targets).into_scalar();
        let want_ce = -(lsm(&zs[0..4])[2] + lsm(&zs[4..8])[0]) / 2.0;
        assert!((ce - want_ce).abs() < 1e-12);
        for t in [1.0, 2.0] {
            let got = soft_cross_entropy(student.clone(), teacher.clone(), t).into_scalar();
            let mut want = 0.0;
            for pos in 0..2 {
                let q = lsm(&zs[pos * 4..pos * 4 + 4].iter().map(|x| x / t).collect::<Vec<_>>());
                let p = lsm(&zt[pos * 3..pos * 3 + 3].iter().map(|x| x / t).collect::<Vec<_>>());
                want -= (0..3).map(|v| p[v].exp() * q[v]).sum::<f64>();
            }
            want *= t * t / 2.0;
            assert!((got - want).abs() < 1e-12, "T={t}: {got} vs {want}");
        }
        // Top-k with all columns kept equals the dense loss (up to the column order).
        let idx =
            Tensor::<B, 3, Int>::from_data(TensorData::new(vec![2i64, 0, 1, 1, 2, 0], [1, 2, 3]), &Default::default());
        let tl = t3(vec![zt[2], zt[0], zt[1], zt[4], zt[5], zt[3]], [1, 2, 3]);
        let sparse = soft_cross_entropy_topk(student.clone(), idx, tl, 1.0).into_scalar();
        let dense = soft_cross_entropy(student, teacher, 1.0).into_scalar();
        assert!((sparse - dense).abs() < 1e-12);
    }

    /// The soft loss is minimized (its gradient vanishes) when the student equals the teacher.
    #[test]
    fn soft_loss_gradient_vanishes_at_the_teacher() {
        use burn::backend::Autodiff;
        type A = Autodiff<B>;
        let z = vec![0.3, -0.2, 1.5, 0.7, 0.1, -1.0];
        let s = Tensor::<A, 3>::from_data(TensorData::new(z.clone(), [1, 2, 3]), opts::<A>(&Default::default()))
            .require_grad();
        let t = Tensor::<A, 3>::from_data(TensorData::new(z, [1, 2, 3]), opts::<A>(&Default::default()));
        let g = soft_cross_entropy(s.clone(), t, 1.0).backward();
        let gmax = s.grad(&g).expect("grad").abs().max().into_scalar();
        assert!(gmax < 1e-15, "{gmax}");
    }
}
