//! The fused CubeCL kernels against their op-by-op references, on the CPU: Burn's WGPU backend
//! over a software Vulkan driver (Mesa's lavapipe: `apt-get install mesa-vulkan-drivers`).
//! Built with `--features wgpu` (Cargo.toml's required-features); `.ci/run` installs the driver
//! and runs it.

use burn::backend::wgpu::{Wgpu, WgpuDevice};

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
}

/// A whole training step's gradients through the autodiff wiring of the fused operations equal
/// those of the op-by-op model: a small Bi-Mamba (two groups, a length no chunk divides) on WGPU,
/// once with the fused kernels (with the SSD scan differentiated op by op, and as one node with
/// its hand-written backward) and once without, same weights and tokens.
#[test]
fn model_gradients_with_fused_kernels_equal_the_reference_model() {
    use bimamba_train::config::{ModelConfig, Precision};
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

    let cfg = ModelConfig {
        d_model: 32,
        n_layer: 2,
        vocab_size: 50,
        d_state: 8,
        d_conv: 4,
        expand: 2,
        headdim: 8,
        ngroups: 2,
        chunk_size: 16,
        pad_vocab_size_multiple: 8,
        norm_eps: 1e-5,
        precision: Precision::Binary,
    };
    let dev = WgpuDevice::default();
    let model = Mamba2Lm::<A>::init(&cfg, 5, &dev);
    let toks: Vec<i64> = (0..2 * 38).map(|i| (i * 7 + 3) % 50).collect();
    let t = Tensor::<A, 2, Int>::from_data(TensorData::new(toks, [2, 38]), &dev);
    let mut runs = Vec::new();
    for (fused, ssd_node) in [(false, false), (true, false), (true, true)] {
        bimamba_train::fused::set_enabled(fused);
        bimamba_train::fused::set_ssd_scan(ssd_node);
        let loss = cross_entropy(model.forward_logits(t.clone().narrow(1, 0, 37)), t.clone().narrow(1, 1, 37));
        let value: f32 = loss.clone().into_scalar();
        let grads = loss.backward();
        let mut v = Grads { grads: &grads, out: Vec::new() };
        model.visit(&mut v);
        runs.push((value, v.out));
    }
    bimamba_train::fused::set_enabled(true);
    bimamba_train::fused::set_ssd_scan(false);
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
