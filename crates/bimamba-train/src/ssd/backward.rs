//! The chunked SSD's backward written out by hand (ARCHITECTURE.md, SSD): one autodiff node for
//! the whole scan instead of the dozens that differentiating [`super::ssd_chunked`] op by op
//! records, and no intermediate kept from the forward: the node keeps x, dt, A, B, C and
//! recomputes the chunk states (as mamba_ssm's backward does).
//!
//! With x̄ = dt ⊙ x, Λ the chunk-local cumsum of dt·A, M_h = L_h ⊙ C Bᵀ (L the decay mask),
//! w_s = exp(Λ_end − Λ_s), e_l = exp(Λ_l) and S_in the state entering a chunk, the forward is
//! ```text
//! y = M x̄  +  e ⊙ (C S_inᵀ)        states = (w ⊙ x̄)ᵀ B        S_in = chunk-decay · [0; states]
//! ```
//! and, for an output gradient dy, each product's gradient is the usual pair of products:
//! - y_off = e ⊙ C S_inᵀ: dC += (e ⊙ dy) S_in, dS_in = (e ⊙ dy)ᵀ C, dΛ_l += Σ_p dy·y_off;
//! - state passing: d[0; states] = chunk-decayᵀ dS_in, d chunk-decay = dS_in [0; states]ᵀ, and
//!   through the segment decay to the chunk totals Λ_end;
//! - states: d(w ⊙ x̄) = B dstatesᵀ, dB += (w ⊙ x̄) dstates, dΛ_s −= w_s Σ_p x̄·d(w⊙x̄), dΛ_end += Σ_s (same);
//! - y_diag = M x̄: dM = dy x̄ᵀ, dx̄ += Mᵀ dy, then through the decay mask to dΛ and d(C Bᵀ);
//!   dC += d(CBᵀ) B, dB += d(CBᵀ)ᵀ C;
//! - Λ = cumsum(dt·A): d(dt·A) is the reverse cumulative sum of dΛ; dx = dt ⊙ dx̄,
//!   ddt = A·d(dt·A) + Σ_p x ⊙ dx̄, dA = Σ dt ⊙ d(dt·A).
//!
//! Heads of a group share B and C: their contributions are summed by putting the heads of a
//! group side by side in the inner dimension of one product.

use burn::tensor::{DType, Tensor};

use super::{chunk_layout, cumsum_last, reverse_cumsum_last, segment_decay, ChunkLayout};
use crate::fused::FusedOps;
use crate::ops::{matmul_in, opts};

/// Gradients of [`super::ssd_chunked`] without initial state (its final state unused) for the
/// output gradient `dy`: (dx, ddt, dA, dB, dC). `dtype` is that of the forward's products over
/// positions and states (the state passing stays in the tensors' dtype).
///
/// # Shapes
/// - x: [b, L, H, P], dt: [b, L, H], a: [H], bm, cm: [b, L, G, N], dy: [b, L, H, P]
/// - output: dx [b, L, H, P], ddt [b, L, H], da [H], dbm, dcm [b, L, G, N]
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
pub fn ssd_scan_backward<B: FusedOps>(
    x: Tensor<B, 4>,
    dt: Tensor<B, 3>,
    a: Tensor<B, 1>,
    bm: Tensor<B, 4>,
    cm: Tensor<B, 4>,
    chunk: usize,
    dy: Tensor<B, 4>,
    dtype: Option<DType>,
) -> (Tensor<B, 4>, Tensor<B, 3>, Tensor<B, 1>, Tensor<B, 4>, Tensor<B, 4>) {
    let device = x.device();
    let [b, l, h, p] = x.dims();
    let [_, _, g, n] = bm.dims();
    let hg = h / g;
    let ChunkLayout { t, c, dtc, acs, xc, xdt, bc, cc } = chunk_layout(x, dt, a.clone(), bm, cm, chunk);
    let lp = c * t;
    let dyc = super::pad_positions(dy, lp).reshape([b, c, t, h, p]).swap_dims(2, 3); // [b,c,H,T,P]
                                                                                     // Heads of a group side by side: [b,c,H,T,P] → [b,c,G,T,hg·P] and back.
    let to_group = |v: Tensor<B, 5>| v.reshape([b, c, g, hg, t, p]).swap_dims(3, 4).reshape([b, c, g, t, hg * p]);
    let from_group = |v: Tensor<B, 5>| v.reshape([b, c, g, t, hg, p]).swap_dims(3, 4).reshape([b, c, h, t, p]);

    // Recompute the chunk states and the states entering each chunk.
    let cb = matmul_in(cc.clone(), bc.clone().swap_dims(3, 4), dtype); // [b,c,G,T,T]
    let last = acs.clone().narrow(3, t - 1, 1); // [b,c,H,1]
    let w = (last.clone() - acs.clone()).exp(); // [b,c,H,T]
    let xw_g = to_group(xdt.clone() * w.clone().unsqueeze_dim::<5>(4)); // [b,c,G,T,hg·P]
    let states = matmul_in(xw_g.clone().swap_dims(3, 4), bc.clone(), dtype).reshape([b, c, h, p * n]); // [b,c,H,P·N]
    let totals = last.reshape([b, c, h]).swap_dims(1, 2); // [b,H,c]
    let excl = Tensor::cat(vec![Tensor::zeros([b, h, 1], opts::<B>(&device)), cumsum_last(totals)], 2); // [b,H,c+1]
    let chunk_decay: Tensor<B, 4> = segment_decay(excl); // [b,H,c+1,c+1]
    let srcs = Tensor::cat(vec![Tensor::zeros([b, h, 1, p * n], opts::<B>(&device)), states.swap_dims(1, 2)], 2);
    let s_in_g = chunk_decay
        .clone()
        .matmul(srcs.clone())
        .narrow(2, 0, c) // [b,H,c,P·N]
        .swap_dims(1, 2)
        .reshape([b, c, g, hg * p, n]); // [b,c,G,hg·P,N]

    // Outputs of the carried-in state: y_off = e ⊙ C S_inᵀ.
    let e = acs.clone().exp().unsqueeze_dim::<5>(4); // [b,c,H,T,1]
    let dyo_g = to_group(dyc.clone() * e.clone()); // [b,c,G,T,hg·P]
    let mut dcc = matmul_in(dyo_g.clone(), s_in_g.clone(), dtype); // [b,c,G,T,N]
    let dsin = matmul_in(dyo_g.swap_dims(3, 4), cc.clone(), dtype).reshape([b, c, h, p * n]); // [b,c,H,P·N]
    let y_off = from_group(matmul_in(cc.clone(), s_in_g.swap_dims(3, 4), dtype)) * e; // [b,c,H,T,P]
    let mut dacs = (dyc.clone() * y_off).sum_dim(4).reshape([b, c, h, t]);

    // State passing: carried = chunk_decay · [0; states]; the final state is unused.
    let dcarried = Tensor::cat(vec![dsin.swap_dims(1, 2), Tensor::zeros([b, h, 1, p * n], opts::<B>(&device))], 2);
    let dsrcs = chunk_decay.clone().swap_dims(2, 3).matmul(dcarried.clone()); // [b,H,c+1,P·N]
    let pd = dcarried.matmul(srcs.swap_dims(2, 3)) * chunk_decay; // [b,H,c+1,c+1]
    let dexcl = pd.clone().sum_dim(3).reshape([b, h, c + 1]) - pd.sum_dim(2).reshape([b, h, c + 1]);
    // excl_i = Σ_{k<i} totals_k: dtotals_k = Σ_{i>k} dexcl_i.
    let dtotals = reverse_cumsum_last(dexcl.narrow(2, 1, c)); // [b,H,c]
    let mut dlast = dtotals.swap_dims(1, 2); // [b,c,H]
    let dstates_g = dsrcs.narrow(2, 1, c).swap_dims(1, 2).reshape([b, c, g, hg * p, n]);

    // Chunk states: states = (w ⊙ x̄)ᵀ B per group.
    let dxw = from_group(matmul_in(dstates_g.clone(), bc.clone().swap_dims(3, 4), dtype).swap_dims(3, 4)); // [b,c,H,T,P]
    let mut dbc = matmul_in(xw_g, dstates_g, dtype); // [b,c,G,T,N]
    let q = (dxw.clone() * xdt.clone()).sum_dim(4).reshape([b, c, h, t]) * w.clone(); // [b,c,H,T]
    let mut dxdt = dxw * w.unsqueeze_dim::<5>(4);
    dacs = dacs - q.clone();
    dlast = dlast + q.sum_dim(3).reshape([b, c, h]);

    // Intra-chunk outputs: y_diag = scores · x̄.
    let scores = B::ssd_decay_scores(acs.clone(), cb.clone()); // [b,c,H,T,T]
    let dscores = matmul_in(dyc.clone(), xdt.clone().swap_dims(3, 4), dtype); // [b,c,H,T,T]
    dxdt = dxdt + matmul_in(scores.swap_dims(3, 4), dyc, dtype);
    let (dacs_diag, dcb) = B::ssd_decay_scores_backward(acs, cb, dscores);
    dacs = dacs + dacs_diag;
    dcc = dcc + matmul_in(dcb.clone(), bc, dtype);
    dbc = dbc + matmul_in(dcb.swap_dims(3, 4), cc, dtype);

    // Λ_end is the last entry of Λ.
    let dacs =
        dacs + Tensor::cat(vec![Tensor::zeros([b, c, h, t - 1], opts::<B>(&device)), dlast.reshape([b, c, h, 1])], 3);
    // Λ = cumsum(dt·A) within the chunk.
    let dda = reverse_cumsum_last(dacs); // [b,c,H,T]
    let ddtc = dda.clone() * a.reshape([1, 1, h, 1]) + (xc * dxdt.clone()).sum_dim(4).reshape([b, c, h, t]);
    let da = (dda * dtc.clone()).sum_dim(3).sum_dim(1).sum_dim(0).reshape([h]);
    let dx = dxdt * dtc.clone().unsqueeze_dim::<5>(4);

    let unchunk4 = |v: Tensor<B, 5>, k: usize, m: usize| v.swap_dims(2, 3).reshape([b, lp, k, m]).narrow(1, 0, l);
    let ddt = ddtc.swap_dims(2, 3).reshape([b, lp, h]).narrow(1, 0, l);
    (unchunk4(dx, h, p), ddt, da, unchunk4(dbc, g, n), unchunk4(dcc, g, n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;
    use crate::ssd::testing::{scan_inputs, B, SHAPE};
    use burn::backend::Autodiff;

    type A = Autodiff<B>;

    fn max_rel<const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f64 {
        let scale = b.clone().abs().max().into_scalar().max(1e-30);
        (a - b).abs().max().into_scalar() / scale
    }

    /// The hand-written backward equals Burn's differentiation of the op-by-op scan, for every
    /// input, with two groups of two heads and chunkings that leave a partial last chunk, a single
    /// chunk and one position per chunk.
    #[test]
    fn backward_equals_autodiff_of_the_reference_scan() {
        let mut rng = SplitMix64::new(17);
        let (b, l, h, p, _, _) = SHAPE;
        let (x, dt, a, bm, cm) = scan_inputs(&mut rng, (0.05, 0.8), (-2.0, -0.3));
        let dy = crate::ssd::testing::rand(&mut rng, [b, l, h, p], -1.0, 1.0);
        for chunk in [4, 5, 13, 1] {
            let lift = |t: &Tensor<B, 4>| Tensor::<A, 4>::from_inner(t.clone()).require_grad();
            let (xa, bma, cma) = (lift(&x), lift(&bm), lift(&cm));
            let dta = Tensor::<A, 3>::from_inner(dt.clone()).require_grad();
            let aa = Tensor::<A, 1>::from_inner(a.clone()).require_grad();
            let (y, _) = crate::ssd::ssd_chunked(
                xa.clone(),
                dta.clone(),
                aa.clone(),
                bma.clone(),
                cma.clone(),
                chunk,
                None,
                None,
            );
            let grads = (y * Tensor::<A, 4>::from_inner(dy.clone())).sum().backward();
            let (gx, gdt, ga, gb, gc) =
                ssd_scan_backward(x.clone(), dt.clone(), a.clone(), bm.clone(), cm.clone(), chunk, dy.clone(), None);
            let checks = [
                ("x", max_rel(gx, xa.grad(&grads).unwrap())),
                ("dt", max_rel(gdt, dta.grad(&grads).unwrap())),
                ("A", max_rel(ga, aa.grad(&grads).unwrap())),
                ("B", max_rel(gb, bma.grad(&grads).unwrap())),
                ("C", max_rel(gc, cma.grad(&grads).unwrap())),
            ];
            for (name, err) in checks {
                assert!(err < 1e-10, "chunk {chunk}: d{name} relative error {err}");
            }
        }
    }
}
