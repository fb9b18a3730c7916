//! `check-kernels`: every fused operation of a backend against its op-by-op reference on fresh
//! random inputs, on that backend. On the CPU the two are the same code (the run checks the
//! harness); on CUDA it compares the CubeCL kernels with Burn's own tensor operations.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, Int, Tensor};
use serde::Serialize;

use super::{reference, AdamStep, FusedOps};

/// One comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// The operation and output compared.
    pub name: String,
    /// The problem size.
    pub shape: Vec<usize>,
    /// ‖fused − reference‖ / ‖reference‖ (L2 over all elements).
    pub rel_l2: f64,
    /// max |fused − reference| / max |reference|.
    pub rel_max: f64,
    /// Whether the error is within `tolerance`.
    pub pass: bool,
    /// The bound the check applies.
    pub tolerance: f64,
}

fn rand<B: Backend>(n: usize, lo: f64, hi: f64, device: &B::Device) -> Tensor<B, 1> {
    Tensor::random([n], Distribution::Uniform(lo, hi), crate::ops::opts::<B>(device))
}

fn compare<B: Backend, const D: usize>(
    name: &str,
    shape: Vec<usize>,
    fused: Tensor<B, D>,
    reference: Tensor<B, D>,
    tolerance: f64,
) -> Check {
    use burn::tensor::ElementConversion;
    let diff = fused.clone() - reference.clone();
    let num = diff.clone().powi_scalar(2).sum().into_scalar().elem::<f64>().sqrt();
    let den = reference.clone().powi_scalar(2).sum().into_scalar().elem::<f64>().sqrt();
    let dmax = diff.abs().max().into_scalar().elem::<f64>();
    let rmax = reference.abs().max().into_scalar().elem::<f64>();
    // A NaN anywhere fails (NaN comparisons are false).
    let any_nan = fused.is_nan().any().into_scalar().elem::<bool>();
    let rel_l2 = if den > 0.0 { num / den } else { num };
    let rel_max = if rmax > 0.0 { dmax / rmax } else { dmax };
    let pass = !any_nan && rel_l2 <= tolerance && rel_max <= tolerance;
    Check { name: name.to_string(), shape, rel_l2, rel_max, pass, tolerance }
}

/// Runs every check on `device`; `bf16` adds the bf16-logit cases (backends with kernels only).
pub fn run<B: FusedOps>(device: &B::Device, bf16: bool) -> Vec<Check> {
    let mut out = Vec::new();
    // Sizes that no cube size divides, one cube, and a tensor of several million elements.
    for &n in &[1usize, 255, 4099, 1_048_583, 5_000_011] {
        let p = rand::<B>(n, -1.0, 1.0, device);
        let g = rand::<B>(n, -0.1, 0.1, device);
        // m takes g's sign, so that β₁m + (1−β₁)g never cancels (a relative error of a
        // cancelled sum says nothing about the kernel).
        let m = rand::<B>(n, 0.0, 0.01, device) * g.clone().sign();
        let v = rand::<B>(n, 0.0, 1e-4, device);
        let s = AdamStep {
            lr: 3e-3,
            decay: 1.0 - 3e-3 * 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            bias1: 1.0 - 0.9f64.powi(7),
            bias2: 1.0 - 0.95f64.powi(7),
            grad_scale: 0.37,
        };
        let (fp, fm, fv) = B::adamw_update(p.clone(), g.clone(), m.clone(), v.clone(), &s);
        let (rp, rm, rv) = reference::adamw_update(p, g.clone(), m, v, &s);
        // f32 arithmetic in a different order: a few ulps.
        out.push(compare("adamw.param", vec![n], fp, rp, 1e-6));
        out.push(compare("adamw.m", vec![n], fm, rm, 1e-6));
        out.push(compare("adamw.v", vec![n], fv, rv, 1e-6));
        // Several parameters in one call, each with its own decay (a multi-tensor launch on
        // CubeCL backends), against the single-parameter reference of each.
        let sizes = [1usize, n / 2 + 3, n];
        let many: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(i, &k)| {
                let gk = rand::<B>(k, -0.1, 0.1, device);
                super::AdamParam {
                    p: rand::<B>(k, -1.0, 1.0, device),
                    m: rand::<B>(k, 0.0, 0.01, device) * gk.clone().sign(),
                    v: rand::<B>(k, 0.0, 1e-4, device),
                    g: gk,
                    decay: if i == 1 { 1.0 } else { s.decay },
                }
            })
            .collect();
        let want: Vec<_> = many
            .iter()
            .map(|q| {
                let step = AdamStep { decay: q.decay, ..s };
                reference::adamw_update(q.p.clone(), q.g.clone(), q.m.clone(), q.v.clone(), &step)
            })
            .collect();
        for (((fp, fm, fv), (rp, rm, rv)), &k) in B::adamw_update_many(many, &s).into_iter().zip(want).zip(&sizes) {
            out.push(compare("adamw_many.param", vec![k], fp, rp, 1e-6));
            out.push(compare("adamw_many.m", vec![k], fm, rm, 1e-6));
            out.push(compare("adamw_many.v", vec![k], fv, rv, 1e-6));
        }
        let xs = vec![g.clone(), rand::<B>(n / 3 + 1, -2.0, 2.0, device), g];
        let f = B::sum_squares(&xs, device);
        let r = reference::sum_squares(&xs, device);
        // Sums of millions of f32 terms in different orders.
        out.push(compare("sum_squares", vec![n, n / 3 + 1, n], f, r, 1e-5));
    }
    // Losses: a vocabulary that no cube divides, f32 and bf16 logits, a narrower teacher.
    // Forward tolerance, then backward. The forward sums about 50,000 f32 terms per row in another
    // order than the reference: sqrt(n)·eps ≈ 1.3e-5 relative is typical, so 1e-5 failed on some
    // random draws. The gradient (softmax − target) subtracts terms of similar size, and the two
    // sides compute exp in f32 differently (a few 1e-5 relative).
    let dtypes: &[(DType, f64, f64)] =
        if bf16 { &[(DType::F32, 5e-5, 2e-4), (DType::BF16, 1e-2, 2e-2)] } else { &[(DType::F32, 5e-5, 2e-4)] };
    for &(dtype, tol, btol) in dtypes {
        let (r, v, vt) = (37usize, 50_291usize, 49_152usize);
        let opts = crate::ops::opts::<B>(device);
        let z = Tensor::<B, 2>::random([r, v], Distribution::Normal(0.0, 3.0), opts.clone()).cast(dtype);
        let t = Tensor::<B, 2>::random([r, vt], Distribution::Normal(0.0, 3.0), opts.clone()).cast(dtype);
        let targets = Tensor::<B, 1, Int>::random([r], Distribution::Uniform(0.0, v as f64), device);
        let g = rand::<B>(r, -1.0, 1.0, device);
        let name = |s: &str| format!("{s}.{dtype:?}").to_lowercase();
        let f32_of = |x: Tensor<B, 2>| x.cast(DType::F32);
        out.push(compare(
            &name("ce_rows"),
            vec![r, v],
            B::ce_rows(z.clone(), targets.clone()),
            reference::ce_rows(z.clone(), targets.clone()),
            tol,
        ));
        out.push(compare(
            &name("ce_rows_backward"),
            vec![r, v],
            f32_of(B::ce_rows_backward(z.clone(), targets.clone(), g.clone())),
            f32_of(reference::ce_rows_backward(z.clone(), targets.clone(), g.clone())),
            btol,
        ));
        for temperature in [1.0, 2.0] {
            out.push(compare(
                &name(&format!("soft_ce_rows.T{temperature}")),
                vec![r, v, vt],
                B::soft_ce_rows(z.clone(), t.clone(), temperature),
                reference::soft_ce_rows(z.clone(), t.clone(), temperature),
                tol,
            ));
            out.push(compare(
                &name(&format!("soft_ce_rows_backward.T{temperature}")),
                vec![r, v, vt],
                f32_of(B::soft_ce_rows_backward(z.clone(), t.clone(), temperature, g.clone())),
                f32_of(reference::soft_ce_rows_backward(z.clone(), t.clone(), temperature, g.clone())),
                btol,
            ));
        }
    }
    block_checks::<B>(device, &mut out);
    scan_checks::<B>(device, &mut out);
    attention_checks::<B>(device, bf16, &mut out);
    out
}

/// The teacher's attention through the backend's flash-attention kernel against the op-by-op
/// attention (`causal_attention`, where the backend has the kernel), in the teacher's layouts
/// (queries a transposed view, keys and values repeated from fewer heads): lengths that no block
/// of queries or keys divides, two head sizes, f32 inputs (and bf16 with `bf16`). The reference's
/// f32 products run on TF32 tensor cores on CUDA (as the scan's do), hence the f32 tolerance.
fn attention_checks<B: FusedOps>(device: &B::Device, bf16: bool, out: &mut Vec<Check>) {
    let dtypes: &[(Option<DType>, &str, f64)] =
        if bf16 { &[(None, "f32", 2e-3), (Some(DType::BF16), "bf16", 2e-2)] } else { &[(None, "f32", 2e-3)] };
    for (b, h, kv, l, hd) in [(2usize, 6usize, 2usize, 37usize, 16usize), (1, 2, 1, 130, 64)] {
        let q = rand_t::<B, 4>([b, l, h, hd], 1.0, device).swap_dims(1, 2);
        let repeated = || {
            rand_t::<B, 4>([b, l, kv, hd], 1.0, device)
                .reshape([b, l, kv, 1, hd])
                .expand([b, l, kv, h / kv, hd])
                .reshape([b, l, h, hd])
                .swap_dims(1, 2)
        };
        let (k, v) = (repeated(), repeated());
        let future = crate::llama::future_mask::<B>(b, h, l, 0, device);
        for &(dtype, tag, tol) in dtypes {
            let Some(fused) = B::causal_attention(q.clone(), k.clone(), v.clone(), dtype) else { continue };
            let reference = crate::llama::attention_reference(q.clone(), k.clone(), v.clone(), Some(&future), dtype);
            out.push(compare(&format!("causal_attention.{tag}"), vec![b, h, l, hd], fused, reference, tol));
        }
    }
}

/// The whole SSD scan, forward and every input's gradient, against the op-by-op chunked scan
/// and its hand-written backward: a partial last chunk, tiles that neither the head size, the
/// state size nor the chunk fills (two groups of two heads), and one group of six heads with a
/// chunk longer than one product tile. The scan runs with each products' kernel: the default
/// 64 × 64 one (`ssd_scan`), the register-blocked one (`ssd_scan_blocked`), the two against each
/// other (`ssd_scan_blocked_vs_simple`: the same f32 sums in the same order), and where the
/// runtime has tensor cores, on them (`ssd_scan_tc`, and against the default `ssd_scan_tc_vs_fma`).
fn scan_checks<B: FusedOps>(device: &B::Device, out: &mut Vec<Check>) {
    let opts = crate::ops::opts::<B>(device);
    let tensor_cores = B::ssd_tensor_cores_available(device);
    let chosen = super::ssd_products();
    // TF32 keeps 10 of f32's 23 mantissa bits: each operand is off by up to 2^-11 ≈ 4.9e-4
    // relative, and a product of random terms by about that much (an H100 measured 1.6e-4 to
    // 4.2e-4). dA is a sum over every position with cancellation, so its relative error is
    // larger (1.4e-3 to 1.8e-3 there).
    let (tc_tol, tc_tol_a) = (2e-3, 2e-2);
    for (b, l, h, p, g, n, chunk) in
        [(2usize, 150usize, 4usize, 70usize, 2usize, 66usize, 64usize), (1, 256, 6, 16, 1, 24, 100)]
    {
        let x = rand_t::<B, 4>([b, l, h, p], 1.0, device);
        let dt = Tensor::<B, 3>::random([b, l, h], Distribution::Uniform(0.01, 0.5), opts.clone());
        let a = Tensor::<B, 1>::random([h], Distribution::Uniform(-3.0, -0.5), opts.clone());
        let bm = rand_t::<B, 4>([b, l, g, n], 1.0, device);
        let cm = rand_t::<B, 4>([b, l, g, n], 1.0, device);
        let dy = rand_t::<B, 4>([b, l, h, p], 1.0, device);
        let shape = vec![b, l, h, p, g, n, chunk];
        let (y, _) =
            crate::ssd::ssd_chunked(x.clone(), dt.clone(), a.clone(), bm.clone(), cm.clone(), chunk, None, None);
        let reference = crate::ssd::backward::ssd_scan_backward(
            x.clone(),
            dt.clone(),
            a.clone(),
            bm.clone(),
            cm.clone(),
            chunk,
            dy.clone(),
            None,
        );
        let fused = || {
            let y = B::ssd_scan(x.clone(), dt.clone(), a.clone(), bm.clone(), cm.clone(), chunk, None);
            let g =
                B::ssd_scan_backward(x.clone(), dt.clone(), a.clone(), bm.clone(), cm.clone(), chunk, dy.clone(), None);
            (y, g)
        };
        let mut push = |tag: &str,
                        (fy, (fx, fdt, fa, fb, fc)): ScanOut<B>,
                        (ry, (rx, rdt, ra, rb, rc)): ScanOut<B>,
                        tol: f64,
                        tol_a: f64| {
            let name = |what: &str| format!("{tag}{what}.t{chunk}");
            out.push(compare(&name(""), shape.clone(), fy, ry, tol));
            out.push(compare(&name("_backward.x"), shape.clone(), fx, rx, tol));
            out.push(compare(&name("_backward.dt"), shape.clone(), fdt, rdt, tol));
            out.push(compare(&name("_backward.a"), shape.clone(), fa, ra, tol_a));
            out.push(compare(&name("_backward.b"), shape.clone(), fb, rb, tol));
            out.push(compare(&name("_backward.c"), shape.clone(), fc, rc, tol));
        };
        use super::SsdProducts;
        super::set_ssd_products(SsdProducts::Simple);
        let simple = fused();
        push("ssd_scan", simple.clone(), (y.clone(), reference.clone()), 1e-4, 1e-4);
        super::set_ssd_products(SsdProducts::Blocked);
        let blocked = fused();
        push("ssd_scan_blocked", blocked.clone(), (y.clone(), reference.clone()), 1e-4, 1e-4);
        push("ssd_scan_blocked_vs_simple", blocked, simple.clone(), 1e-5, 1e-4);
        // The backward from what the forward kept equals the one that computes it again (the
        // same kernels on the same values: exactly, on every runtime).
        super::set_ssd_products(SsdProducts::Simple);
        let (y_kept, kept) = B::ssd_scan_keeping(x.clone(), dt.clone(), a.clone(), bm.clone(), cm.clone(), chunk, None);
        if let Some(kept) = kept {
            let g = B::ssd_scan_backward_kept(
                x.clone(),
                dt.clone(),
                a.clone(),
                bm.clone(),
                cm.clone(),
                chunk,
                dy.clone(),
                None,
                kept,
            );
            push("ssd_scan_kept_vs_recomputed", (y_kept, g), simple.clone(), 0.0, 0.0);
        }
        if tensor_cores {
            super::set_ssd_products(SsdProducts::TensorCores);
            let tc = fused();
            push("ssd_scan_tc", tc.clone(), (y, reference), tc_tol, tc_tol_a);
            push("ssd_scan_tc_vs_fma", tc, simple, tc_tol, tc_tol_a);
        }
        super::set_ssd_products(chosen);
    }
}

/// The scan's output and its five gradients.
type ScanOut<B> = (Tensor<B, 4>, (Tensor<B, 4>, Tensor<B, 3>, Tensor<B, 1>, Tensor<B, 4>, Tensor<B, 4>));

fn rand_t<B: Backend, const D: usize>(dims: [usize; D], std: f64, device: &B::Device) -> Tensor<B, D> {
    Tensor::random(dims, Distribution::Normal(0.0, std), crate::ops::opts::<B>(device))
}

/// The conv, the norms: forward and every gradient, on strided inputs (slices of a wider
/// tensor, as the model passes them) and sizes that no cube divides.
fn block_checks<B: FusedOps>(device: &B::Device, out: &mut Vec<Check>) {
    // SSD scores: two groups of three heads, a chunk no cube divides, Λ decreasing as dt·A makes it.
    let (b, c, h, g, t) = (2usize, 3usize, 6usize, 2usize, 67usize);
    let steps =
        Tensor::<B, 4>::random([b, c, h, t], Distribution::Uniform(-0.5, -0.001), crate::ops::opts::<B>(device));
    let acs = steps.cumsum(3);
    let cb = rand_t::<B, 5>([b, c, g, t, t], 1.0, device);
    let gs = rand_t::<B, 5>([b, c, h, t, t], 1.0, device);
    let shape = vec![b, c, h, g, t];
    out.push(compare(
        "ssd_decay_scores",
        shape.clone(),
        B::ssd_decay_scores(acs.clone(), cb.clone()),
        reference::ssd_decay_scores(acs.clone(), cb.clone()),
        1e-5,
    ));
    let (fa, fc) = B::ssd_decay_scores_backward(acs.clone(), cb.clone(), gs.clone());
    let (ra, rc) = reference::ssd_decay_scores_backward(acs, cb, gs);
    out.push(compare("ssd_decay_scores_backward.acs", shape.clone(), fa, ra, 1e-4));
    out.push(compare("ssd_decay_scores_backward.cb", shape, fc, rc, 1e-5));

    // FBI-Linear's weight, both scale patterns, f32 output (the bf16 output rounds the same f32),
    // on an odd shape and on the 130M class's in_proj shape.
    for (o, i, like, name) in
        [(333, 771, [1, 771], "column"), (333, 771, [333, 1], "row"), (3352, 768, [1, 768], "column.in_proj")]
    {
        let w = rand_t::<B, 2>([o, i], 1.0, device);
        let g = rand_t::<B, 2>([o, i], 1.0, device);
        let a = rand_t::<B, 2>(like, 0.5, device);
        let b = rand_t::<B, 2>(like, 0.1, device);
        out.push(compare(
            &format!("fbi_weight.{name}"),
            vec![o, i],
            B::fbi_weight(w.clone(), a.clone(), b.clone(), DType::F32),
            reference::fbi_weight(w.clone(), a.clone(), b, DType::F32),
            1e-6,
        ));
        let (fw, fa, fb) = B::fbi_weight_backward(w.clone(), a.clone(), g.clone());
        let (rw, ra, rb) = reference::fbi_weight_backward(w.clone(), a, g.clone());
        out.push(compare(&format!("fbi_weight_backward.w.{name}"), vec![o, i], fw, rw, 1e-6));
        out.push(compare(&format!("fbi_weight_backward.alpha.{name}"), vec![o, i], fa, ra, 1e-5));
        out.push(compare(&format!("fbi_weight_backward.beta.{name}"), vec![o, i], fb, rb, 1e-5));
    }

    // Column sums: one band, several bands with a ragged last one, a second pass over the
    // partials, a strided slice, and fewer columns than a cube is wide.
    for (rows, cols, extra) in [(1usize, 5usize, 0usize), (300, 777, 0), (70_001, 3, 0), (8192, 768, 5)] {
        let x = rand_t::<B, 2>([rows, cols + extra], 1.0, device).narrow(1, extra, cols);
        // The reference sums on the host in f64: Burn's own reduction over rows is what col_sum
        // replaces, and on WGPU (lavapipe) it is off by 0.3 relative L2 at [70001, 3].
        let host: Vec<f32> = x.clone().into_data().convert::<f32>().into_vec().unwrap_or_default();
        let mut sums = vec![0f64; cols];
        for (i, v) in host.iter().enumerate() {
            sums[i % cols] += *v as f64;
        }
        let sums: Vec<f32> = sums.into_iter().map(|v| v as f32).collect();
        let want =
            Tensor::<B, 1>::from_data(burn::tensor::TensorData::new(sums, [cols]), crate::ops::opts::<B>(device));
        out.push(compare("col_sum", vec![rows, cols], B::col_sum(x), want, 1e-5));
    }

    let (b, l, c, k, extra) = (2usize, 333usize, 389usize, 4usize, 7usize);
    // x is a slice of a wider matrix, like the xBC part of the in_proj output.
    let wide = rand_t::<B, 3>([b, l, c + extra], 1.0, device);
    let x = wide.narrow(2, 3, c);
    let w = rand_t::<B, 2>([c, k], 0.5, device);
    let bias = rand_t::<B, 1>([c], 0.5, device);
    let gy = rand_t::<B, 3>([b, l, c], 1.0, device);
    let shape = vec![b, l, c, k];
    out.push(compare(
        "conv_silu",
        shape.clone(),
        B::conv_silu(x.clone(), w.clone(), bias.clone()),
        reference::conv_silu(x.clone(), w.clone(), bias.clone()),
        1e-5,
    ));
    let (fx, fw, fb) = B::conv_silu_backward(x.clone(), w.clone(), bias.clone(), gy.clone());
    let (rx, rw, rb) = reference::conv_silu_backward(x, w, bias, gy);
    out.push(compare("conv_silu_backward.x", shape.clone(), fx, rx, 1e-5));
    out.push(compare("conv_silu_backward.w", shape.clone(), fw, rw, 1e-4));
    out.push(compare("conv_silu_backward.bias", shape, fb, rb, 1e-4));

    let (rows, d) = (301usize, 777usize);
    let x = rand_t::<B, 2>([rows, d + extra], 1.0, device).narrow(1, extra, d);
    let w = rand_t::<B, 1>([d], 0.3, device) + 1.0;
    let gy = rand_t::<B, 2>([rows, d], 1.0, device);
    out.push(compare(
        "rms_norm",
        vec![rows, d],
        B::rms_norm(x.clone(), w.clone(), 1e-5),
        reference::rms_norm(x.clone(), w.clone(), 1e-5),
        1e-5,
    ));
    let (fx, fw) = B::rms_norm_backward(x.clone(), w.clone(), 1e-5, gy.clone());
    let (rx, rw) = reference::rms_norm_backward(x, w, 1e-5, gy);
    out.push(compare("rms_norm_backward.x", vec![rows, d], fx, rx, 1e-4));
    out.push(compare("rms_norm_backward.w", vec![rows, d], fw, rw, 1e-4));

    for groups in [1usize, 3] {
        let di = 3 * 257;
        let y = rand_t::<B, 3>([b, l, di], 1.0, device);
        let z = rand_t::<B, 3>([b, l, 2 * di + extra], 1.5, device).narrow(2, extra, di);
        let w = rand_t::<B, 1>([di], 0.3, device) + 1.0;
        let go = rand_t::<B, 3>([b, l, di], 1.0, device);
        let shape = vec![b, l, di, groups];
        out.push(compare(
            &format!("gated_rms_norm.g{groups}"),
            shape.clone(),
            B::gated_rms_norm(y.clone(), z.clone(), w.clone(), groups, 1e-5),
            reference::gated_rms_norm(y.clone(), z.clone(), w.clone(), groups, 1e-5),
            1e-5,
        ));
        let (fy, fz, fw) = B::gated_rms_norm_backward(y.clone(), z.clone(), w.clone(), groups, 1e-5, go.clone());
        let (ry, rz, rw) = reference::gated_rms_norm_backward(y, z, w, groups, 1e-5, go);
        out.push(compare(&format!("gated_rms_norm_backward.y.g{groups}"), shape.clone(), fy, ry, 1e-4));
        out.push(compare(&format!("gated_rms_norm_backward.z.g{groups}"), shape.clone(), fz, rz, 1e-4));
        out.push(compare(&format!("gated_rms_norm_backward.w.g{groups}"), shape, fw, rw, 1e-4));
    }
}
