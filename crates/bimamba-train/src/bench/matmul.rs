//! `matmul-kernels`: every matmul kernel family of `fused::matmul` at the training step's product
//! shapes, timed on the device and checked against Burn's own product.
//!
//! The shapes are those of the 130M-class step (rows M = batch × sequence): the in_proj, out_proj
//! and LM-head forwards (the weight transposed, "nt"), an input gradient ("nn") and the weight
//! gradients ("tn", the activations transposed), plus an 8192³ square for the peak.

use std::time::Instant;

use burn::tensor::{DType, Distribution, Tensor, TensorPrimitive};
use burn_cubecl::{CubeBackend, CubeRuntime};
use serde::Serialize;

use crate::fused::matmul::{families, launch};

type B<R> = CubeBackend<R, f32, i32, u8>;

/// One product: `a · b` with a [m, k], b [k, n], either stored transposed.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// What the product is in the training step.
    pub name: String,
    /// Rows of the output.
    pub m: usize,
    /// Inner dimension.
    pub k: usize,
    /// Columns of the output.
    pub n: usize,
    /// a is stored [k, m] and read transposed.
    pub a_transposed: bool,
    /// b is stored [n, k] and read transposed.
    pub b_transposed: bool,
}

/// One family on one problem.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The family (`--matmul-kernel` name).
    pub kernel: String,
    /// The problem's name.
    pub problem: String,
    /// Seconds of the first call (compilation included).
    pub first_call_s: f64,
    /// Measured rate (2mnk per product).
    pub tflops: Option<f64>,
    /// ‖ours − Burn's‖ / ‖Burn's‖ (both bf16 in, bf16 out).
    pub rel_l2: Option<f64>,
    /// Why the family could not run the problem.
    pub error: Option<String>,
}

/// The products of one training step of the model (d_model, d_inner, in_proj width, vocab) at M
/// rows, and the square peak.
pub fn step_problems(m: usize, d: usize, di: usize, d_in_proj: usize, vocab: usize) -> Vec<Problem> {
    let p = |name: &str, m, k, n, at, bt| Problem { name: name.into(), m, k, n, a_transposed: at, b_transposed: bt };
    vec![
        p("in_proj z|x forward", m, d, di, false, true),
        p("in_proj B|C|dt forward", m, d, d_in_proj - 2 * di, false, true),
        p("out_proj forward", m, di, d, false, true),
        p("head forward", m, d, vocab, false, true),
        p("in_proj input gradient", m, di, d, false, false),
        p("in_proj weight gradient", di, m, d, true, false),
        p("head weight gradient", vocab, m, d, true, false),
        p("square 8192", 8192, 8192, 8192, false, false),
    ]
}

fn operand<R: CubeRuntime>(rows: usize, cols: usize, transposed: bool, dev: &R::Device) -> Tensor<B<R>, 2> {
    let dist = Distribution::Normal(0.0, 1.0);
    if transposed {
        Tensor::<B<R>, 2>::random([cols, rows], dist, (dev, DType::BF16)).transpose()
    } else {
        Tensor::<B<R>, 2>::random([rows, cols], dist, (dev, DType::BF16))
    }
}

fn run<R: CubeRuntime>(
    family: &cubek::matmul::launch::Strategy,
    a: &Tensor<B<R>, 2>,
    b: &Tensor<B<R>, 2>,
) -> Result<Tensor<B<R>, 2>, String> {
    let prim = |t: &Tensor<B<R>, 2>| t.clone().into_primitive().tensor();
    launch(family, prim(a), prim(b), DType::BF16).map(|p| Tensor::from_primitive(TensorPrimitive::Float(p)))
}

/// Times every family (or those named in `only`) on every problem, `reps` products each after
/// one untimed call; calls `report` with each row as it is measured.
pub fn probe<R: CubeRuntime>(
    problems: &[Problem],
    only: &[String],
    reps: usize,
    dev: &R::Device,
    mut report: impl FnMut(&Row),
) -> Vec<Row> {
    let mut rows = Vec::new();
    for p in problems {
        let a = operand::<R>(p.m, p.k, p.a_transposed, dev);
        let b = operand::<R>(p.k, p.n, p.b_transposed, dev);
        let reference = a.clone().matmul(b.clone()).cast(DType::F32);
        let ref_norm = reference.clone().powi_scalar(2).sum().into_scalar().sqrt();
        for (name, family) in families() {
            if !only.is_empty() && !only.iter().any(|o| o == name) {
                continue;
            }
            let t0 = Instant::now();
            let first = run::<R>(&family, &a, &b);
            let _ = <B<R> as burn::tensor::backend::Backend>::sync(dev);
            let first_call_s = t0.elapsed().as_secs_f64();
            let row = match first {
                Err(e) => Row {
                    kernel: name.into(),
                    problem: p.name.clone(),
                    first_call_s,
                    tflops: None,
                    rel_l2: None,
                    error: Some(e),
                },
                Ok(out) => {
                    let diff = (out.cast(DType::F32) - reference.clone()).powi_scalar(2).sum().into_scalar().sqrt();
                    let t = Instant::now();
                    let mut outs = Vec::with_capacity(reps);
                    for _ in 0..reps {
                        outs.extend(run::<R>(&family, &a, &b).ok());
                    }
                    let _ = <B<R> as burn::tensor::backend::Backend>::sync(dev);
                    let s = t.elapsed().as_secs_f64();
                    drop(outs);
                    let flops = 2.0 * (p.m * p.k * p.n) as f64 * reps as f64;
                    Row {
                        kernel: name.into(),
                        problem: p.name.clone(),
                        first_call_s,
                        tflops: Some(flops / s / 1e12),
                        rel_l2: Some(f64::from(diff) / f64::from(ref_norm).max(f64::MIN_POSITIVE)),
                        error: None,
                    }
                }
            };
            report(&row);
            rows.push(row);
        }
    }
    rows
}
