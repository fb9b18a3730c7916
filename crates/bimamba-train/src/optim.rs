//! AdamW with decoupled weight decay, global-norm gradient clipping and the paper's schedule
//! (ARCHITECTURE.md §3.2): β = (0.9, 0.95), weight decay 0.1, linear warm-up then cosine decay to a floor.
//!
//! The moments are kept by parameter *name*, so the optimizer state is saved and restored with
//! the weights in one safetensors checkpoint, independent of Burn's parameter ids.
//! Weight decay applies to matrices (rank ≥ 2: embedding, latent projection weights, conv
//! kernels); vectors (norms, biases, A_log, D, dt_bias, α, β) are not decayed.

use std::collections::HashMap;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fused::{AdamParam, AdamStep, FusedOps};
use crate::params::NamedTensors;

/// Optimizer and schedule hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// Peak learning rate.
    #[serde(default = "d::lr")]
    pub lr: f64,
    /// Final learning rate as a fraction of the peak.
    #[serde(default = "d::min_lr_ratio")]
    pub min_lr_ratio: f64,
    /// Linear warm-up steps.
    #[serde(default)]
    pub warmup_steps: u64,
    /// Adam β₁.
    #[serde(default = "d::beta1")]
    pub beta1: f64,
    /// Adam β₂.
    #[serde(default = "d::beta2")]
    pub beta2: f64,
    /// Adam ε.
    #[serde(default = "d::eps")]
    pub eps: f64,
    /// Decoupled weight decay (matrices only).
    #[serde(default = "d::wd")]
    pub weight_decay: f64,
    /// Global gradient-norm clip (≤ 0 disables).
    #[serde(default = "d::clip")]
    pub grad_clip: f64,
}

mod d {
    pub fn lr() -> f64 {
        2.5e-4
    }
    pub fn min_lr_ratio() -> f64 {
        0.1
    }
    pub fn beta1() -> f64 {
        0.9
    }
    pub fn beta2() -> f64 {
        0.95
    }
    pub fn eps() -> f64 {
        1e-8
    }
    pub fn wd() -> f64 {
        0.1
    }
    pub fn clip() -> f64 {
        1.0
    }
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: d::lr(),
            min_lr_ratio: d::min_lr_ratio(),
            warmup_steps: 0,
            beta1: d::beta1(),
            beta2: d::beta2(),
            eps: d::eps(),
            weight_decay: d::wd(),
            grad_clip: d::clip(),
        }
    }
}

impl OptimConfig {
    /// Learning rate of optimizer step `step` (0-based) out of `total`: linear warm-up to the peak
    /// over `warmup_steps`, then cosine from the peak down to `min_lr_ratio · peak` at `total`.
    pub fn lr_at(&self, step: u64, total: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let floor = self.lr * self.min_lr_ratio;
        floor + (self.lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// First and second moments of one parameter, flattened.
#[derive(Clone, Debug)]
struct Moments<B: Backend> {
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
}

/// AdamW state: step count and per-parameter moments by name.
#[derive(Clone, Debug)]
pub struct AdamW<B: Backend> {
    /// Hyper-parameters.
    pub config: OptimConfig,
    /// Updates applied so far (for bias correction).
    pub steps: u64,
    /// Run the update through the backend's fused kernels (else the op-by-op reference).
    pub fused: bool,
    moments: HashMap<String, Moments<B>>,
}

struct GradCollector<'a, B: Backend> {
    grads: &'a GradientsParams,
    flat: Vec<Tensor<B, 1>>,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for GradCollector<'_, AB::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        if let Some(g) = self.grads.get::<AB::InnerBackend, D>(param.id) {
            let n = g.shape().num_elements();
            self.flat.push(g.reshape([n]));
        }
    }
}

/// One parameter that has a gradient: its id, name, rank, and the flattened parameter and gradient.
struct Update<B: Backend> {
    id: ParamId,
    name: String,
    rank: usize,
    p: Tensor<B, 1>,
    g: Tensor<B, 1>,
}

/// The parameters that have a gradient, in the model's order.
struct UpdateCollector<'a, B: Backend> {
    path: Vec<String>,
    grads: &'a mut GradientsParams,
    out: Vec<Update<B>>,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for UpdateCollector<'_, AB::InnerBackend> {
    fn enter_module(&mut self, name: &str, _c: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _n: &str, _c: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        let Some(grad) = self.grads.remove::<AB::InnerBackend, D>(param.id) else { return };
        let n = grad.shape().num_elements();
        let p = param.val().inner().reshape([n]);
        self.out.push(Update { id: param.id, name: self.path.join("."), rank: D, p, g: grad.reshape([n]) });
    }
}

/// Puts the updated parameters (flattened, by id) back into the model.
struct UpdateMapper<B: Backend> {
    updated: HashMap<ParamId, Tensor<B, 1>>,
}

impl<AB: AutodiffBackend> ModuleMapper<AB> for UpdateMapper<AB::InnerBackend> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<AB, D>>) -> Param<Tensor<AB, D>> {
        let (id, tensor, mapper): (ParamId, _, _) = param.consume();
        let Some(p) = self.updated.remove(&id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let t = Tensor::<AB, D>::from_inner(p.reshape(tensor.shape())).require_grad();
        Param::from_mapped_value(id, t, mapper)
    }
}

impl<B: FusedOps> AdamW<B> {
    /// A fresh optimizer.
    pub fn new(config: OptimConfig) -> Self {
        Self { config, steps: 0, fused: true, moments: HashMap::new() }
    }

    /// Global L2 norm of the gradients of `model`'s parameters.
    pub fn grad_norm<AB, M>(model: &M, grads: &GradientsParams, fused: bool) -> f64
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        let mut v = GradCollector::<B> { grads, flat: Vec::new() };
        model.visit(&mut v);
        let Some(first) = v.flat.first() else { return 0.0 };
        let device = first.device();
        let sum = if fused {
            B::sum_squares(&v.flat, &device)
        } else {
            crate::fused::reference::sum_squares(&v.flat, &device)
        };
        sum.into_scalar().elem::<f64>().sqrt()
    }

    /// One update with learning rate `lr`; gradients are first scaled so that their global norm
    /// is at most `config.grad_clip`. Returns the updated model and the norm before clipping.
    pub fn step<AB, M>(&mut self, model: M, mut grads: GradientsParams, lr: f64) -> (M, f64)
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        let norm = Self::grad_norm::<AB, M>(&model, &grads, self.fused);
        let clip = self.config.grad_clip;
        let grad_scale = if clip > 0.0 && norm > clip { clip / (norm + 1e-6) } else { 1.0 };
        self.steps += 1;
        let t = self.steps as i32;
        let c = &self.config;
        let step = AdamStep {
            lr,
            decay: 1.0,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            bias1: 1.0 - c.beta1.powi(t),
            bias2: 1.0 - c.beta2.powi(t),
            grad_scale,
        };
        let mut collect = UpdateCollector::<B> { path: Vec::new(), grads: &mut grads, out: Vec::new() };
        model.visit(&mut collect);
        let (mut ids, mut names, mut params) = (Vec::new(), Vec::new(), Vec::new());
        for Update { id, name, rank, p, g } in collect.out {
            let (m, v) = match self.moments.remove(&name) {
                Some(mo) => (mo.m, mo.v),
                None => (p.zeros_like(), p.zeros_like()),
            };
            // Decoupled weight decay on matrices only.
            let decay = if rank >= 2 { 1.0 - lr * c.weight_decay } else { 1.0 };
            params.push(AdamParam { p, g, m, v, decay });
            ids.push(id);
            names.push(name);
        }
        let results = if self.fused {
            B::adamw_update_many(params, &step)
        } else {
            params
                .into_iter()
                .map(|q| {
                    crate::fused::reference::adamw_update(q.p, q.g, q.m, q.v, &AdamStep { decay: q.decay, ..step })
                })
                .collect()
        };
        let mut updated = HashMap::with_capacity(ids.len());
        for ((id, name), (p, m, v)) in ids.into_iter().zip(names).zip(results) {
            self.moments.insert(name, Moments { m, v });
            updated.insert(id, p);
        }
        (model.map(&mut UpdateMapper::<B> { updated }), norm)
    }

    /// The moments as host tensors named `exp_avg.<param>` and `exp_avg_sq.<param>`.
    pub fn state_tensors(&self) -> NamedTensors {
        let mut out = NamedTensors::new();
        for (name, mo) in &self.moments {
            out.insert(format!("exp_avg.{name}"), mo.m.to_data());
            out.insert(format!("exp_avg_sq.{name}"), mo.v.to_data());
        }
        out
    }

    /// Restores moments saved by [`AdamW::state_tensors`] and the step count.
    pub fn load_state(&mut self, tensors: &NamedTensors, steps: u64, device: &B::Device) -> Result<()> {
        self.moments.clear();
        self.steps = steps;
        for (key, m) in tensors {
            let Some(name) = key.strip_prefix("exp_avg.") else { continue };
            let v = tensors
                .get(&format!("exp_avg_sq.{name}"))
                .ok_or_else(|| Error::Config(format!("optimizer state has exp_avg.{name} without exp_avg_sq")))?;
            let opts = crate::ops::opts::<B>(device);
            let n = m.shape.num_elements();
            let mt = Tensor::<B, 1>::from_data(m.clone(), opts.clone()).reshape([n]);
            let vt = Tensor::<B, 1>::from_data(v.clone(), opts).reshape([n]);
            self.moments.insert(name.to_string(), Moments { m: mt, v: vt });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ModelSpec, Precision};
    use crate::model::Mamba2Lm;
    use crate::params;
    use burn::backend::{Autodiff, NdArray};
    use burn::module::Module;

    type A = Autodiff<NdArray<f64>>;
    type B = NdArray<f64>;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let c = OptimConfig { lr: 1.0, warmup_steps: 10, ..Default::default() };
        assert!((c.lr_at(0, 110) - 0.1).abs() < 1e-12);
        assert!((c.lr_at(9, 110) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(10, 110) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(60, 110) - 0.55).abs() < 1e-12);
        assert!((c.lr_at(110, 110) - 0.1).abs() < 1e-12);
        assert!((c.lr_at(500, 110) - 0.1).abs() < 1e-12);
    }

    /// Two AdamW steps on a small model against a scalar re-implementation of the torch formulas,
    /// with clipping active, decay on matrices only, and a save/load of the moments in between.
    #[test]
    fn adamw_matches_scalar_reference_and_state_round_trips() {
        let spec = ModelSpec {
            d_state: 2,
            d_conv: 2,
            headdim: 4,
            chunk_size: 4,
            pad_vocab_size_multiple: 8,
            precision: Precision::Binary,
            ..ModelSpec::new(4, 1, 8)
        };
        let cfg = spec.resolve(0).expect("valid model");
        let dev = Default::default();
        let oc = OptimConfig { lr: 0.01, grad_clip: 0.01, ..Default::default() };
        let mut model = Mamba2Lm::<A>::init(&cfg, 3, &dev);
        let mut opt = AdamW::<B>::new(oc.clone());
        let tokens = burn::tensor::Tensor::<A, 2, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(vec![1i64, 2, 3, 4, 5], [1, 5]),
            &dev,
        );
        let mut ref_p: NamedTensors = params::collect(&model);
        let mut ref_m: HashMap<String, (Vec<f64>, Vec<f64>)> = HashMap::new();
        for step in 1..=2 {
            let loss = model.forward(tokens.clone()).powi_scalar(2).mean();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            // Reference gradients by name, before the optimizer consumes them.
            let named_g: Vec<(String, Vec<f64>)> = {
                struct G<'a> {
                    path: Vec<String>,
                    g: &'a GradientsParams,
                    out: Vec<(String, Vec<f64>)>,
                }
                impl ModuleVisitor<A> for G<'_> {
                    fn enter_module(&mut self, n: &str, _c: &str) {
                        self.path.push(n.into());
                    }
                    fn exit_module(&mut self, _n: &str, _c: &str) {
                        self.path.pop();
                    }
                    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<A, D>>) {
                        if let Some(t) = self.g.get::<B, D>(p.id) {
                            self.out.push((self.path.join("."), t.to_data().iter::<f64>().collect()));
                        }
                    }
                }
                let mut v = G { path: vec![], g: &grads, out: vec![] };
                model.visit(&mut v);
                v.out
            };
            let norm: f64 = named_g.iter().flat_map(|(_, g)| g.iter()).map(|x| x * x).sum::<f64>().sqrt();
            assert!(norm > 0.01, "clipping must be active for this test ({norm})");
            let (m2, got_norm) = opt.step::<A, _>(model, grads, oc.lr);
            model = m2;
            assert!((got_norm - norm).abs() < 1e-9 * norm);
            let scale = 0.01 / (norm + 1e-6);
            for (name, g) in named_g {
                let p = ref_p.get_mut(&name).expect("param");
                let mut pv: Vec<f64> = p.iter::<f64>().collect();
                let (m, v) = ref_m.entry(name.clone()).or_insert((vec![0.0; g.len()], vec![0.0; g.len()]));
                let decay = if p.shape.len() >= 2 { 1.0 - oc.lr * oc.weight_decay } else { 1.0 };
                for i in 0..g.len() {
                    let gi = g[i] * scale;
                    m[i] = 0.9 * m[i] + 0.1 * gi;
                    v[i] = 0.95 * v[i] + 0.05 * gi * gi;
                    let mh = m[i] / (1.0 - 0.9f64.powi(step));
                    let vh = v[i] / (1.0 - 0.95f64.powi(step));
                    pv[i] = pv[i] * decay - oc.lr * mh / (vh.sqrt() + oc.eps);
                }
                *p = burn::tensor::TensorData::new(pv, p.shape.clone());
            }
            let got = params::collect(&model);
            for (name, want) in &ref_p {
                let a: Vec<f64> = got[name].iter::<f64>().collect();
                let b: Vec<f64> = want.iter::<f64>().collect();
                let err =
                    a.iter()
                        .zip(&b)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0f64, |e, d| if d.is_nan() || d > e { d } else { e });
                assert!(err < 1e-12, "step {step} {name}: {err}");
            }
            // Save and restore the moments: the next step must not notice.
            let saved = opt.state_tensors();
            let mut fresh = AdamW::<B>::new(oc.clone());
            fresh.load_state(&saved, opt.steps, &dev).expect("state loads");
            opt = fresh;
        }
    }
}
