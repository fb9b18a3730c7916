//! Forward and backward milliseconds of each part of a training step, each part timed alone on
//! inputs of the model's shape (`bench --parts`): where the backward's time goes, which the
//! whole-step timers cannot split.
//!
//! Every part runs on fresh leaf tensors that require gradients; its backward is that of the sum
//! of its output, so it includes the gradients of the part's inputs and parameters (as in the
//! real step) plus one broadcast of ones. Each `backward()` call also has a fixed cost of its
//! own (graph traversal, gradient bookkeeping), paid once per step in real training: it is timed
//! on a one-element graph (`backward_call`) and subtracted from every part. Per-layer parts are
//! timed on layer 0 and multiplied by the number of layers. Parts named `a.b` are pieces of part
//! `a` (they are not added into the sum).

use std::collections::BTreeMap;
use std::time::Instant;

use burn::tensor::{Distribution, Int, Tensor, TensorData};

use crate::fused::TrainBackend;
use crate::loss::cross_entropy;
use crate::model::{Mamba2Lm, MixerInputs};
use crate::rng::SplitMix64;

/// Seconds of (forward, backward) of `f`, averaged over `reps` runs after one warm-up run.
fn time_part<B: TrainBackend, const D: usize>(
    reps: usize,
    device: &B::Device,
    f: impl Fn() -> Tensor<B, D>,
) -> (f64, f64) {
    let _ = f().sum().backward();
    let (mut fw, mut bw) = (0.0, 0.0);
    for _ in 0..reps {
        let _ = B::sync(device);
        let t0 = Instant::now();
        let out = f();
        let _ = B::sync(device);
        let t1 = Instant::now();
        let _ = out.sum().backward();
        let _ = B::sync(device);
        fw += (t1 - t0).as_secs_f64();
        bw += (Instant::now() - t1).as_secs_f64();
    }
    (fw / reps as f64, bw / reps as f64)
}

fn leaf<B: TrainBackend, const D: usize>(dims: [usize; D], lo: f64, hi: f64, device: &B::Device) -> Tensor<B, D> {
    Tensor::<B, D>::random(dims, Distribution::Uniform(lo, hi), device).require_grad()
}

/// Milliseconds per step, `[forward, backward]`, of each part of the model: the residual norms,
/// the mixer's in_proj, conv + dt, SSD scan, gated norm and out_proj (all layers), and the LM
/// head with the next-token loss.
///
/// # Shapes
/// - batch × seq_len tokens per step
pub fn parts<B: TrainBackend>(
    model: &Mamba2Lm<B>,
    batch: usize,
    seq_len: usize,
    reps: usize,
    device: &B::Device,
) -> BTreeMap<String, [f64; 2]> {
    let cfg = &model.config;
    let (b, l, d) = (batch, seq_len, cfg.d_model);
    let layers = cfg.n_layer as f64;
    let block = &model.backbone.layers[0];
    let mixer = &block.mixer;
    let mut out = BTreeMap::new();
    let one = leaf::<B, 1>([1], 1.0, 2.0, device);
    let (call_fw, call_bw) = time_part(reps, device, || one.clone() * 2.0);
    out.insert("backward_call".to_string(), [1e3 * call_fw, 1e3 * call_bw]);
    let mut put = |name: &str, (fw, bw): (f64, f64), times: f64| {
        out.insert(name.to_string(), [1e3 * fw * times, 1e3 * (bw - call_bw).max(0.0) * times]);
    };

    let hidden = leaf::<B, 3>([b, l, d], -1.0, 1.0, device);
    put("residual_norm", time_part(reps, device, || block.norm.forward(hidden.clone(), cfg.norm_eps)), layers + 1.0);
    let sum5 = |m: MixerInputs<B>| m.z.sum() + m.x.sum() + m.bm.sum() + m.cm.sum() + m.dt.sum();
    put("in_proj", time_part(reps, device, || sum5(mixer.project_in(hidden.clone()))), layers);
    // The same as one product whose output is sliced into the five blocks (the layout
    // `project_in` avoids), for comparison.
    put(
        "in_proj.sliced",
        time_part(reps, device, || {
            let all = mixer.in_proj.forward(hidden.clone());
            let (di, gn) = (cfg.d_inner(), cfg.ngroups * cfg.d_state);
            let mut start = 0;
            let mut total = Tensor::<B, 1>::zeros([1], crate::ops::opts::<B>(device));
            for k in [di, di, gn, gn, cfg.nheads] {
                total = total + all.clone().narrow(2, start, k).sum();
                start += k;
            }
            total
        }),
        layers,
    );
    // Its pieces: W̃ = α ⊙ sign(W) + β alone, and one product of the whole width alone (W̃ a
    // leaf in the product's dtype).
    let proj = &mixer.in_proj;
    let dtype = proj.matmul_dtype.unwrap_or(crate::ops::float_dtype::<B>());
    if let (Some(alpha), Some(beta)) = (&proj.wscale, &proj.wbias) {
        put(
            "in_proj.fbi_weight",
            time_part(reps, device, || B::fbi_weight(proj.weight.val(), alpha.val(), beta.val(), dtype)),
            layers,
        );
    }
    let [o, i] = proj.weight.dims();
    let we = Tensor::<B, 2>::random([o, i], Distribution::Uniform(-0.1, 0.1), (device, dtype)).require_grad();
    put(
        "in_proj.matmul",
        time_part(reps, device, || {
            crate::ops::matmul_in(hidden.clone().reshape([b * l, d]), we.clone().transpose(), Some(dtype))
        }),
        layers,
    );

    let (di, gn, h) = (cfg.d_inner(), cfg.ngroups * cfg.d_state, cfg.nheads);
    let inputs = MixerInputs {
        z: leaf::<B, 3>([b, l, di], -1.0, 1.0, device),
        x: leaf::<B, 3>([b, l, di], -1.0, 1.0, device),
        bm: leaf::<B, 3>([b, l, gn], -1.0, 1.0, device),
        cm: leaf::<B, 3>([b, l, gn], -1.0, 1.0, device),
        dt: leaf::<B, 3>([b, l, h], -1.0, 1.0, device),
    };
    put("conv_dt", time_part(reps, device, || sum5(mixer.conv_dt(inputs.clone()))), layers);
    let scan_in = MixerInputs { dt: leaf::<B, 3>([b, l, h], 0.001, 0.1, device), ..inputs.clone() };
    put("ssd", time_part(reps, device, || mixer.scan(scan_in.clone())), layers);

    let y = leaf::<B, 4>([b, l, cfg.nheads, cfg.headdim], -1.0, 1.0, device);
    let z = leaf::<B, 3>([b, l, cfg.d_inner()], -1.0, 1.0, device);
    put("gate_norm", time_part(reps, device, || mixer.gate_norm(y.clone(), z.clone())), layers);

    let normed = leaf::<B, 3>([b, l, cfg.d_inner()], -1.0, 1.0, device);
    put("out_proj", time_part(reps, device, || mixer.out_proj.forward(normed.clone())), layers);

    let mut rng = SplitMix64::new(3);
    let toks: Vec<i64> = (0..b * l).map(|_| rng.below(cfg.vocab_size as u64) as i64).collect();
    let targets = Tensor::<B, 2, Int>::from_data(TensorData::new(toks, [b, l]), device);
    put(
        "lm_head_loss",
        time_part(reps, device, || cross_entropy(model.head_logits(hidden.clone()), targets.clone())),
        1.0,
    );
    out
}
