//! The fused CubeCL kernels against their op-by-op references, on the CPU: Burn's WGPU backend
//! over a software Vulkan driver (Mesa's lavapipe: `apt-get install mesa-vulkan-drivers`).
//! Built with `--features wgpu` (Cargo.toml's required-features); `.ci/run` installs the driver
//! and runs it.

use burn::backend::wgpu::{Wgpu, WgpuDevice};

mod common;

#[test]
fn fused_kernels_equal_their_references_on_wgpu() {
    let checks = bimamba_train::fused::check::run::<Wgpu>(&WgpuDevice::default(), false);
    for c in &checks {
        println!(
            "{:<5} {:<32} {:?} rel_l2 {:.2e} rel_max {:.2e}",
            if c.pass { "ok" } else { "FAIL" },
            c.name,
            c.shape,
            c.rel_l2,
            c.rel_max
        );
    }
    let failed: Vec<_> = checks.iter().filter(|c| !c.pass).map(|c| c.name.clone()).collect();
    assert!(failed.is_empty(), "failed: {failed:?}");
    assert!(checks.len() >= 20);
    // The kernels this runtime must have: the scan with both multiply-add products, and flash
    // attention (CubeCL's kernel on plain multiply-adds here).
    for name in ["ssd_scan_blocked_vs_simple.t64", "ssd_scan_kept_vs_recomputed_backward.x.t64", "causal_attention.f32"]
    {
        assert!(checks.iter().any(|c| c.name == name), "no check {name}");
    }
}

/// Every matmul family that runs on this device gives Burn's product, for each operand layout
/// (plain, the right side transposed, the left side transposed) and a batched product; the
/// plain-unit family runs everywhere.
#[test]
fn matmul_families_equal_burns_product_on_wgpu() {
    use bimamba_train::fused::matmul::{families, launch};
    use burn::tensor::{DType, Distribution, Tensor, TensorPrimitive};
    let dev = WgpuDevice::default();
    let rand = |d: [usize; 3]| Tensor::<Wgpu, 3>::random(d, Distribution::Normal(0.0, 1.0), &dev);
    let cases = [
        ("nn", rand([2, 37, 19]), rand([2, 19, 23])),
        ("nt", rand([2, 37, 19]), rand([2, 23, 19]).swap_dims(1, 2)),
        ("tn", rand([2, 19, 37]).swap_dims(1, 2), rand([2, 19, 23])),
    ];
    let mut ran = Vec::new();
    for (name, family) in families() {
        for (layout, a, b) in &cases {
            let reference = a.clone().matmul(b.clone());
            let prim = |t: &Tensor<Wgpu, 3>| t.clone().into_primitive().tensor();
            let Ok(out) = launch(&family, prim(a), prim(b), DType::F32) else { continue };
            let out = Tensor::<Wgpu, 3>::from_primitive(TensorPrimitive::Float(out));
            let err: f32 = (out - reference.clone()).abs().max().into_scalar();
            let scale: f32 = reference.abs().max().into_scalar();
            assert!(err <= 1e-4 * scale, "{name} {layout}: max error {err} (scale {scale})");
            ran.push(format!("{name} {layout}"));
        }
    }
    println!("ran: {ran:?}");
    for layout in ["nn", "nt", "tn"] {
        assert!(ran.contains(&format!("simple_unit {layout}")), "simple_unit did not run {layout}");
    }
}

/// A whole training step's gradients through the autodiff wiring of the fused operations equal
/// those of the op-by-op model: a small Bi-Mamba (two groups, a length no chunk divides) on WGPU,
/// once with the fused kernels (with the SSD scan differentiated op by op, and as one node with
/// its hand-written backward, recomputing or keeping its states) and once without, same weights
/// and tokens.
#[test]
fn model_gradients_with_fused_kernels_equal_the_reference_model() {
    use bimamba_train::config::{ModelSpec, Precision};
    use bimamba_train::loss::cross_entropy;
    use bimamba_train::model::Mamba2Lm;
    use burn::backend::Autodiff;
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::tensor::{Int, Tensor, TensorData};
    type A = Autodiff<Wgpu>;

    struct Grads<'a> {
        grads: &'a <A as burn::tensor::backend::AutodiffBackend>::Gradients,
        out: Vec<Vec<f32>>,
    }
    impl ModuleVisitor<A> for Grads<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<A, D>>) {
            let g = p.val().grad(self.grads).expect("every parameter has a gradient");
            self.out.push(g.to_data().to_vec::<f32>().expect("f32"));
        }
    }

    let spec = ModelSpec {
        d_state: 8,
        headdim: 8,
        ngroups: 2,
        chunk_size: 16,
        pad_vocab_size_multiple: 8,
        precision: Precision::Binary,
        ..ModelSpec::new(32, 2, 50)
    };
    let cfg = spec.resolve(0).expect("valid model");
    let dev = WgpuDevice::default();
    let model = Mamba2Lm::<A>::init(&cfg, 5, &dev);
    let toks: Vec<i64> = (0..2 * 38).map(|i| (i * 7 + 3) % 50).collect();
    let t = Tensor::<A, 2, Int>::from_data(TensorData::new(toks, [2, 38]), &dev);
    let mut runs = Vec::new();
    // The fourth run keeps the scan's states from the forward for the backward; the last takes
    // the products through the matmul autodiff node (its f32 products fall back to Burn's
    // kernel; the node's backward formulas are what it checks).
    for (fused, ssd_node, keep, matmul) in [
        (false, false, false, None),
        (true, false, false, None),
        (true, true, false, None),
        (true, true, true, None),
        (true, false, false, Some("simple_unit")),
    ] {
        bimamba_train::fused::set_enabled(fused);
        bimamba_train::fused::set_ssd_scan(ssd_node);
        bimamba_train::fused::set_ssd_keep(keep);
        bimamba_train::fused::set_matmul_kernel(matmul).expect("a known family");
        let loss = cross_entropy(model.forward_logits(t.clone().narrow(1, 0, 37)), t.clone().narrow(1, 1, 37));
        let value: f32 = loss.clone().into_scalar();
        let grads = loss.backward();
        let mut v = Grads { grads: &grads, out: Vec::new() };
        model.visit(&mut v);
        runs.push((value, v.out));
    }
    bimamba_train::fused::set_enabled(true);
    bimamba_train::fused::set_ssd_scan(true);
    bimamba_train::fused::set_ssd_keep(false);
    bimamba_train::fused::set_matmul_kernel(None).expect("none");
    let (l2, g2) = &runs[0];
    for (run, (l1, g1)) in runs.iter().enumerate().skip(1) {
        assert!((l1 - l2).abs() < 1e-5 * l2.abs(), "run {run}: loss {l1} vs {l2}");
        assert_eq!(g1.len(), g2.len());
        for (i, (a, b)) in g1.iter().zip(g2).enumerate() {
            let num: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt();
            let den: f32 = b.iter().map(|y| y * y).sum::<f32>().sqrt();
            assert!(num <= 1e-4 * den + 1e-12, "run {run}, parameter {i}: relative gradient error {}", num / den);
        }
    }
}

/// `bench --batch auto` on a device allocator: steps at batches 1 and 2 measure the memory, the
/// chosen batch's steps run within the budget (50 MB here: room for many sequences of this tiny
/// model, so the choice is more than 2).
#[test]
fn bench_picks_the_largest_batch_that_fits_on_wgpu() {
    use burn::backend::Autodiff;
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: bimamba_train::bench::BenchArgs,
    }
    let mut argv = common::tiny_bench_args("wgpu");
    argv.extend(["--batch", "auto", "--memory-gb", "0.05"].map(str::to_string));
    let args = Cli::parse_from(argv).bench;
    let r = bimamba_train::bench::bench::<Autodiff<Wgpu>>(&args, &WgpuDevice::default(), burn::tensor::DType::F32)
        .expect("bench --batch auto");
    let held = r.memory_reserved_gb.expect("the WGPU allocator reports its memory");
    println!("batch {} chosen, {held:.3} GB held after its steps", r.batch);
    assert!(r.batch > 2, "batch {}", r.batch);
    assert!(held <= 0.05, "{held} GB held against 0.05 GB allowed");
}

/// The teacher's forward with its attention through the flash-attention kernel equals the
/// op-by-op forward: the model's own layouts (queries a transposed view, keys and values
/// repeated from fewer heads), a length that no block of keys divides.
#[test]
fn teacher_logits_with_flash_attention_equal_op_by_op_on_wgpu() {
    use bimamba_train::llama::LlamaTeacher;
    use burn::tensor::{Int, Tensor, TensorData};
    let dev = WgpuDevice::default();
    let cfg = bimamba_llama::LlamaConfig {
        n_layer: 2,
        d_model: 48,
        d_ff: 64,
        n_head: 6,
        n_kv_head: 2,
        head_dim: 8,
        rope_dim: 8,
        rope_theta: 10_000.0,
        norm_eps: 1e-5,
        vocab_size: 41,
        context_length: 256,
    };
    let teacher = LlamaTeacher::<Wgpu>::random(cfg, 11, &dev);
    let toks: Vec<i64> = (0..2 * 75).map(|i| (i * 13 + 5) % 41).collect();
    let t = Tensor::<Wgpu, 2, Int>::from_data(TensorData::new(toks, [2, 75]), &dev);
    let logits = |flash| {
        bimamba_train::fused::set_flash_attention(flash);
        let l = teacher.forward(t.clone());
        bimamba_train::fused::set_flash_attention(false);
        l
    };
    let (reference, flash) = (logits(false), logits(true));
    let err: f32 = (flash - reference.clone()).abs().max().into_scalar();
    let scale: f32 = reference.abs().max().into_scalar();
    println!("max error {err} (scale {scale})");
    assert!(scale > 0.1, "degenerate logits");
    assert!(err <= 2e-3 * scale, "max error {err} against scale {scale}");
}
