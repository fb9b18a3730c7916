//! [`FusedOps`] on Burn's autodiff backend.
//!
//! Over an inner backend with kernels (`B::KERNELS`), each fused forward is recorded as one node
//! of the autodiff graph whose backward calls the inner backend's fused backward; the node keeps
//! only the forward's inputs. Over one without (NdArray), the reference bodies run on the
//! autodiff backend itself, so their gradients come from Burn's own differentiation: the
//! reference path of every test.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::tensor::backend::{Backend, BackendTypes};
use burn::tensor::{Int, Tensor, TensorPrimitive};

use super::{reference, AdamStep, FusedOps};

type Float<B> = <B as BackendTypes>::FloatTensorPrimitive;
type IntP<B> = <B as BackendTypes>::IntTensorPrimitive;

fn float<B: Backend, const D: usize>(p: Float<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

fn int<B: Backend, const D: usize>(p: IntP<B>) -> Tensor<B, D, Int> {
    Tensor::from_primitive(p)
}

#[derive(Debug)]
struct CeRowsBackward;

impl<B: FusedOps> Backward<B, 1> for CeRowsBackward {
    type State = (Float<B>, IntP<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _c: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (logits, targets) = ops.state;
        if let Some(node) = node {
            let g = B::ce_rows_backward(float(logits), int(targets), float(grad));
            grads.register::<B>(node.id, g.into_primitive().tensor());
        }
    }
}

#[derive(Debug)]
struct SoftCeRowsBackward;

impl<B: FusedOps> Backward<B, 1> for SoftCeRowsBackward {
    type State = (Float<B>, Float<B>, f64);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _c: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (student, teacher, temperature) = ops.state;
        if let Some(node) = node {
            let g = B::soft_ce_rows_backward(float(student), float(teacher), temperature, float(grad));
            grads.register::<B>(node.id, g.into_primitive().tensor());
        }
    }
}

/// Registers gradient `g` for a parent node when that parent is tracked.
macro_rules! register {
    ($grads:expr, $node:expr, $g:expr) => {
        if let Some(node) = $node {
            $grads.register::<B>(node.id, $g.into_primitive().tensor());
        }
    };
}

#[derive(Debug)]
struct SsdDecayScoresBackward;

impl<B: FusedOps> Backward<B, 2> for SsdDecayScoresBackward {
    type State = (Float<B>, Float<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _c: &mut Checkpointer) {
        let [na, nc] = ops.parents;
        let gs = grads.consume::<B>(&ops.node);
        let (acs, cb) = ops.state;
        let (ga, gc) = B::ssd_decay_scores_backward(float(acs), float(cb), float(gs));
        register!(grads, na, ga);
        register!(grads, nc, gc);
    }
}

#[derive(Debug)]
struct MatmulBackward<const D: usize>;

impl<B: FusedOps, const D: usize> Backward<B, 2> for MatmulBackward<D> {
    type State = (Float<B>, Float<B>);

    /// ∂a = g · bᵀ, ∂b = aᵀ · g, through the same kernel family as the forward.
    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _c: &mut Checkpointer) {
        let [na, nb] = ops.parents;
        let g = float::<B, D>(grads.consume::<B>(&ops.node));
        let (a, b) = ops.state;
        if na.is_some() {
            register!(grads, na, B::matmul(g.clone(), float::<B, D>(b).swap_dims(D - 2, D - 1)));
        }
        if nb.is_some() {
            register!(grads, nb, B::matmul(float::<B, D>(a).swap_dims(D - 2, D - 1), g));
        }
    }
}

#[derive(Debug)]
struct FbiWeightBackward;

impl<B: FusedOps> Backward<B, 3> for FbiWeightBackward {
    type State = (Float<B>, Float<B>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _c: &mut Checkpointer) {
        let [nw, na, nb] = ops.parents;
        let g = grads.consume::<B>(&ops.node);
        let (w, alpha) = ops.state;
        let (gw, ga, gb) = B::fbi_weight_backward(float(w), float(alpha), float(g));
        register!(grads, nw, gw);
        register!(grads, na, ga);
        register!(grads, nb, gb);
    }
}

#[derive(Debug)]
struct ConvSiluBackward;

impl<B: FusedOps> Backward<B, 3> for ConvSiluBackward {
    type State = (Float<B>, Float<B>, Float<B>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _c: &mut Checkpointer) {
        let [nx, nw, nb] = ops.parents;
        let gy = grads.consume::<B>(&ops.node);
        let (x, w, bias) = ops.state;
        let (gx, gw, gb) = B::conv_silu_backward(float(x), float(w), float(bias), float(gy));
        register!(grads, nx, gx);
        register!(grads, nw, gw);
        register!(grads, nb, gb);
    }
}

#[derive(Debug)]
struct RmsNormBackward;

impl<B: FusedOps> Backward<B, 2> for RmsNormBackward {
    type State = (Float<B>, Float<B>, f64);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _c: &mut Checkpointer) {
        let [nx, nw] = ops.parents;
        let gy = grads.consume::<B>(&ops.node);
        let (x, w, eps) = ops.state;
        let (gx, gw) = B::rms_norm_backward(float(x), float(w), eps, float(gy));
        register!(grads, nx, gx);
        register!(grads, nw, gw);
    }
}

#[derive(Debug)]
struct GatedRmsNormBackward;

impl<B: FusedOps> Backward<B, 3> for GatedRmsNormBackward {
    type State = (Float<B>, Float<B>, Float<B>, usize, f64);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _c: &mut Checkpointer) {
        let [ny, nz, nw] = ops.parents;
        let go = grads.consume::<B>(&ops.node);
        let (y, z, w, groups, eps) = ops.state;
        let (gy, gz, gw) = B::gated_rms_norm_backward(float(y), float(z), float(w), groups, eps, float(go));
        register!(grads, ny, gy);
        register!(grads, nz, gz);
        register!(grads, nw, gw);
    }
}

#[derive(Debug)]
struct SsdScanBackward;

/// The forward's inputs, the chunk length, the products' dtype, and what the forward kept for the
/// backward (the states entering each chunk and the carried-in outputs: [`super::SsdKept`]).
type SsdScanState<B> = (
    Float<B>,
    Float<B>,
    Float<B>,
    Float<B>,
    Float<B>,
    usize,
    Option<burn::tensor::DType>,
    Option<(Float<B>, Float<B>)>,
);

impl<B: FusedOps> Backward<B, 5> for SsdScanBackward {
    type State = SsdScanState<B>;

    fn backward(self, ops: Ops<Self::State, 5>, grads: &mut Gradients, _c: &mut Checkpointer) {
        let [nx, ndt, na, nb, nc] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (x, dt, a, bm, cm, chunk, dtype, kept) = ops.state;
        let (x, dt, a, bm, cm, dy) = (float(x), float(dt), float(a), float(bm), float(cm), float(dy));
        let (gx, gdt, ga, gb, gc) = match kept {
            Some((s_in, yoff)) => {
                let kept = super::SsdKept { s_in: float(s_in), yoff: float(yoff) };
                B::ssd_scan_backward_kept(x, dt, a, bm, cm, chunk, dy, dtype, kept)
            }
            None => B::ssd_scan_backward(x, dt, a, bm, cm, chunk, dy, dtype),
        };
        register!(grads, nx, gx);
        register!(grads, ndt, gdt);
        register!(grads, na, ga);
        register!(grads, nb, gb);
        register!(grads, nc, gc);
    }
}

#[derive(Debug)]
struct ExpandRowsBackward;

impl<B: FusedOps> Backward<B, 1> for ExpandRowsBackward {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _c: &mut Checkpointer) {
        let [node] = ops.parents;
        let g = grads.consume::<B>(&ops.node);
        register!(grads, node, B::col_sum(float(g)));
    }
}

impl<B: FusedOps, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    const KERNELS: bool = B::KERNELS;

    fn device_memory(device: &Self::Device) -> Option<super::DeviceMemory> {
        B::device_memory(device)
    }

    fn release_free_memory(device: &Self::Device) {
        B::release_free_memory(device)
    }

    fn ssd_tensor_cores_available(device: &Self::Device) -> bool {
        B::ssd_tensor_cores_available(device)
    }

    fn adamw_update(
        p: Tensor<Self, 1>,
        g: Tensor<Self, 1>,
        m: Tensor<Self, 1>,
        v: Tensor<Self, 1>,
        s: &AdamStep,
    ) -> (Tensor<Self, 1>, Tensor<Self, 1>, Tensor<Self, 1>) {
        // The optimizer runs on the inner backend; this is only here for completeness.
        reference::adamw_update(p, g, m, v, s)
    }

    fn expand_rows(w: Tensor<Self, 1>, rows: usize) -> Tensor<Self, 2> {
        let n = w.dims()[0];
        if !B::KERNELS || !super::enabled() {
            return w.reshape([1, n]).expand([rows, n]);
        }
        let w = w.into_primitive().tensor();
        let y = B::expand_rows(float(w.primitive), rows).into_primitive().tensor();
        let ad = ExpandRowsBackward.prepare::<C>([w.node]).compute_bound().stateless(y);
        Tensor::from_primitive(TensorPrimitive::Float(ad))
    }

    fn ce_rows(logits: Tensor<Self, 2>, targets: Tensor<Self, 1, Int>) -> Tensor<Self, 1> {
        if !B::KERNELS || !super::enabled() {
            return reference::ce_rows(logits, targets);
        }
        let logits = logits.into_primitive().tensor();
        let targets: IntP<B> = targets.into_primitive();
        let out = |l: Float<B>, t: IntP<B>| B::ce_rows(float(l), int(t)).into_primitive().tensor();
        let ad = match CeRowsBackward.prepare::<C>([logits.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = out(logits.primitive.clone(), targets.clone());
                prep.finish((logits.primitive, targets), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(out(logits.primitive, targets)),
        };
        Tensor::from_primitive(TensorPrimitive::Float(ad))
    }

    fn soft_ce_rows(student: Tensor<Self, 2>, teacher: Tensor<Self, 2>, temperature: f64) -> Tensor<Self, 1> {
        if !B::KERNELS || !super::enabled() {
            return reference::soft_ce_rows(student, teacher, temperature);
        }
        let student = student.into_primitive().tensor();
        // The teacher is a constant: only its values enter.
        let teacher = teacher.into_primitive().tensor().primitive;
        let out = |s: Float<B>, t: Float<B>| B::soft_ce_rows(float(s), float(t), temperature).into_primitive().tensor();
        let ad = match SoftCeRowsBackward.prepare::<C>([student.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = out(student.primitive.clone(), teacher.clone());
                prep.finish((student.primitive, teacher, temperature), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(out(student.primitive, teacher)),
        };
        Tensor::from_primitive(TensorPrimitive::Float(ad))
    }

    fn matmul<const D: usize>(a: Tensor<Self, D>, b: Tensor<Self, D>) -> Tensor<Self, D> {
        if !B::KERNELS || !super::enabled() || super::matmul_kernel().is_none() {
            return a.matmul(b);
        }
        let (a, b) = (a.into_primitive().tensor(), b.into_primitive().tensor());
        let out = |a: Float<B>, b: Float<B>| B::matmul::<D>(float(a), float(b)).into_primitive().tensor();
        let ad = match MatmulBackward::<D>.prepare::<C>([a.node.clone(), b.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = out(a.primitive.clone(), b.primitive.clone());
                prep.finish((a.primitive, b.primitive), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(out(a.primitive, b.primitive)),
        };
        Tensor::from_primitive(TensorPrimitive::Float(ad))
    }

    fn conv_silu(x: Tensor<Self, 3>, w: Tensor<Self, 2>, bias: Tensor<Self, 1>) -> Tensor<Self, 3> {
        if !B::KERNELS || !super::enabled() {
            return reference::conv_silu(x, w, bias);
        }
        let (x, w, bias) = (x.into_primitive().tensor(), w.into_primitive().tensor(), bias.into_primitive().tensor());
        let out = |x: Float<B>, w: Float<B>, b: Float<B>| {
            B::conv_silu(float(x), float(w), float(b)).into_primitive().tensor()
        };
        let nodes = [x.node.clone(), w.node.clone(), bias.node.clone()];
        let ad = match ConvSiluBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = out(x.primitive.clone(), w.primitive.clone(), bias.primitive.clone());
                prep.finish((x.primitive, w.primitive, bias.primitive), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(out(x.primitive, w.primitive, bias.primitive)),
        };
        Tensor::from_primitive(TensorPrimitive::Float(ad))
    }

    fn rms_norm(x: Tensor<Self, 2>, w: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 2> {
        if !B::KERNELS || !super::enabled() {
            return reference::rms_norm(x, w, eps);
        }
        let (x, w) = (x.into_primitive().tensor(), w.into_primitive().tensor());
        let out = |x: Float<B>, w: Float<B>| B::rms_norm(float(x), float(w), eps).into_primitive().tensor();
        let ad = match RmsNormBackward.prepare::<C>([x.node.clone(), w.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = out(x.primitive.clone(), w.primitive.clone());
                prep.finish((x.primitive, w.primitive, eps), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(out(x.primitive, w.primitive)),
        };
        Tensor::from_primitive(TensorPrimitive::Float(ad))
    }

    fn gated_rms_norm(
        y: Tensor<Self, 3>,
        z: Tensor<Self, 3>,
        w: Tensor<Self, 1>,
        groups: usize,
        eps: f64,
    ) -> Tensor<Self, 3> {
        if !B::KERNELS || !super::enabled() {
            return reference::gated_rms_norm(y, z, w, groups, eps);
        }
        let (y, z, w) = (y.into_primitive().tensor(), z.into_primitive().tensor(), w.into_primitive().tensor());
        let out = |y: Float<B>, z: Float<B>, w: Float<B>| {
            B::gated_rms_norm(float(y), float(z), float(w), groups, eps).into_primitive().tensor()
        };
        let nodes = [y.node.clone(), z.node.clone(), w.node.clone()];
        let ad = match GatedRmsNormBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let o = out(y.primitive.clone(), z.primitive.clone(), w.primitive.clone());
                prep.finish((y.primitive, z.primitive, w.primitive, groups, eps), o)
            }
            OpsKind::UnTracked(prep) => prep.finish(out(y.primitive, z.primitive, w.primitive)),
        };
        Tensor::from_primitive(TensorPrimitive::Float(ad))
    }

    fn fbi_weight(
        w: Tensor<Self, 2>,
        alpha: Tensor<Self, 2>,
        beta: Tensor<Self, 2>,
        dtype: burn::tensor::DType,
    ) -> Tensor<Self, 2> {
        if !B::KERNELS || !super::enabled() {
            return reference::fbi_weight(w, alpha, beta, dtype);
        }
        let (w, alpha, beta) =
            (w.into_primitive().tensor(), alpha.into_primitive().tensor(), beta.into_primitive().tensor());
        let out = |w: Float<B>, a: Float<B>, b: Float<B>| {
            B::fbi_weight(float(w), float(a), float(b), dtype).into_primitive().tensor()
        };
        let nodes = [w.node.clone(), alpha.node.clone(), beta.node.clone()];
        let ad = match FbiWeightBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = out(w.primitive.clone(), alpha.primitive.clone(), beta.primitive);
                prep.finish((w.primitive, alpha.primitive), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(out(w.primitive, alpha.primitive, beta.primitive)),
        };
        Tensor::from_primitive(TensorPrimitive::Float(ad))
    }

    fn ssd_scan(
        x: Tensor<Self, 4>,
        dt: Tensor<Self, 3>,
        a: Tensor<Self, 1>,
        bm: Tensor<Self, 4>,
        cm: Tensor<Self, 4>,
        chunk: usize,
        dtype: Option<burn::tensor::DType>,
    ) -> Tensor<Self, 4> {
        if !B::KERNELS || !super::enabled() || !super::ssd_scan_enabled() {
            return crate::ssd::ssd_chunked(x, dt, a, bm, cm, chunk, None, dtype).0;
        }
        let prims = [x, bm, cm].map(|t| t.into_primitive().tensor());
        let [x, bm, cm] = prims;
        let (dt, a) = (dt.into_primitive().tensor(), a.into_primitive().tensor());
        let out = |x: Float<B>, dt: Float<B>, a: Float<B>, bm: Float<B>, cm: Float<B>| {
            B::ssd_scan(float(x), float(dt), float(a), float(bm), float(cm), chunk, dtype).into_primitive().tensor()
        };
        let nodes = [x.node.clone(), dt.node.clone(), a.node.clone(), bm.node.clone(), cm.node.clone()];
        let ad = match SsdScanBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (y, kept) = match super::ssd_keep_enabled() {
                    true => {
                        let (xs, dts, as_, bs, cs) = (
                            float(x.primitive.clone()),
                            float(dt.primitive.clone()),
                            float(a.primitive.clone()),
                            float(bm.primitive.clone()),
                            float(cm.primitive.clone()),
                        );
                        let (y, kept) = B::ssd_scan_keeping(xs, dts, as_, bs, cs, chunk, dtype);
                        let kept = kept.map(|k| (k.s_in.into_primitive().tensor(), k.yoff.into_primitive().tensor()));
                        (y.into_primitive().tensor(), kept)
                    }
                    false => (
                        out(
                            x.primitive.clone(),
                            dt.primitive.clone(),
                            a.primitive.clone(),
                            bm.primitive.clone(),
                            cm.primitive.clone(),
                        ),
                        None,
                    ),
                };
                let state = (x.primitive, dt.primitive, a.primitive, bm.primitive, cm.primitive, chunk, dtype, kept);
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(out(x.primitive, dt.primitive, a.primitive, bm.primitive, cm.primitive))
            }
        };
        Tensor::from_primitive(TensorPrimitive::Float(ad))
    }

    fn ssd_decay_scores(acs: Tensor<Self, 4>, cb: Tensor<Self, 5>) -> Tensor<Self, 5> {
        if !B::KERNELS || !super::enabled() {
            return reference::ssd_decay_scores(acs, cb);
        }
        let (acs, cb) = (acs.into_primitive().tensor(), cb.into_primitive().tensor());
        let out = |a: Float<B>, c: Float<B>| B::ssd_decay_scores(float(a), float(c)).into_primitive().tensor();
        let ad =
            match SsdDecayScoresBackward.prepare::<C>([acs.node.clone(), cb.node.clone()]).compute_bound().stateful() {
                OpsKind::Tracked(prep) => {
                    let y = out(acs.primitive.clone(), cb.primitive.clone());
                    prep.finish((acs.primitive, cb.primitive), y)
                }
                OpsKind::UnTracked(prep) => prep.finish(out(acs.primitive, cb.primitive)),
            };
        Tensor::from_primitive(TensorPrimitive::Float(ad))
    }
}
