//! The Mamba-2 state-space duality (SSD) scan in chunked matrix form, and the step-by-step
//! recurrence it must equal.
//!
//! The recurrence per head h (group g = h / (H/G)), with a_t = dt_t·A_h and x̄_t = dt_t·x_t:
//! ```text
//! S_t[p,n] = exp(a_t) · S_{t−1}[p,n] + x̄_t[p] · B_t[g,n]        y_t[p] = Σ_n S_t[p,n] · C_t[g,n]
//! ```
//! Unrolled, y_l = Σ_{s≤l} exp(a_{s+1} + … + a_l) · (C_l·B_s) · x̄_s. Cutting the sequence into chunks
//! of T positions (mamba_ssm's `ssd_minimal_discrete`):
//! 1. within a chunk, with Λ = cumsum(a): y_diag = (L ⊙ C Bᵀ) · x̄ where L[l,s] = exp(Λ_l − Λ_s) for
//!    s ≤ l and 0 above the diagonal (a T×T "attention" matrix: matrix-multiply work);
//! 2. each chunk's own end state: S_c = Σ_s exp(Λ_{T−1} − Λ_s) · x̄_s ⊗ B_s;
//! 3. the states entering each chunk, by the same segment-sum trick over chunks:
//!    S_in[z] = Σ_{j≤z} exp(Λ'_z − Λ'_j) · S'_j with S'_0 the initial state, S'_j = S_{j−1} and Λ' the
//!    exclusive cumulative sum of the chunk totals Λ_{T−1};
//! 4. y_off = exp(Λ_l) · C_l · S_in (the carried-in state seen through the decay so far).
//!
//! Exponents are clamped at 0 before exp and the upper triangle masked after, so no infinity
//! ever appears (an upper entry Λ_l − Λ_s is positive and could overflow).

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

use crate::fused::FusedOps;
use crate::ops::{matmul_in, opts};

pub mod backward;

/// v times a triangular matrix of ones over the last dimension: upper (U[s, l] = 1 for s ≤ l)
/// gives the inclusive cumulative sum, lower the reverse one. Matrix work, on every backend.
///
/// # Shapes
/// - v: [..., T]; output: [..., T]
fn times_ones_triangle<B: Backend, const D: usize>(v: Tensor<B, D>, upper: bool) -> Tensor<B, D> {
    let dims = v.dims();
    let t = dims[D - 1];
    let rows = v.shape().num_elements() / t;
    let ones = Tensor::<B, 2>::ones([t, t], opts::<B>(&v.device()));
    let tri = if upper { ones.triu(0) } else { ones.tril(0) };
    v.reshape([rows, t]).matmul(tri).reshape(dims)
}

/// Inclusive cumulative sum over the last dimension.
fn cumsum_last<B: Backend, const D: usize>(v: Tensor<B, D>) -> Tensor<B, D> {
    times_ones_triangle(v, true)
}

/// Reverse inclusive cumulative sum over the last dimension, out[k] = Σ_{i ≥ k} v[i]: the
/// adjoint of [`cumsum_last`].
fn reverse_cumsum_last<B: Backend, const D: usize>(v: Tensor<B, D>) -> Tensor<B, D> {
    times_ones_triangle(v, false)
}

/// Zero-pads dimension 1 (positions) to `lp`.
pub(crate) fn pad_positions<B: Backend, const D: usize>(v: Tensor<B, D>, lp: usize) -> Tensor<B, D> {
    let mut dims = v.dims();
    if dims[1] == lp {
        return v;
    }
    dims[1] = lp - dims[1];
    let device = v.device();
    Tensor::cat(vec![v, Tensor::zeros(dims, opts::<B>(&device))], 1)
}

/// The inputs of a scan cut into chunks, heads and groups before positions.
struct ChunkLayout<B: Backend> {
    /// Chunk length T.
    t: usize,
    /// Number of chunks c (the sequence zero-padded to c·T).
    c: usize,
    /// dt per chunk: [b,c,H,T].
    dtc: Tensor<B, 4>,
    /// Λ, the chunk-local inclusive cumsum of dt·A: [b,c,H,T].
    acs: Tensor<B, 4>,
    /// x: [b,c,H,T,P].
    xc: Tensor<B, 5>,
    /// x̄ = dt ⊙ x: [b,c,H,T,P].
    xdt: Tensor<B, 5>,
    /// B: [b,c,G,T,N].
    bc: Tensor<B, 5>,
    /// C: [b,c,G,T,N].
    cc: Tensor<B, 5>,
}

/// Pads the inputs to whole chunks of `chunk` positions and lays them out chunk-major.
fn chunk_layout<B: Backend>(
    x: Tensor<B, 4>,
    dt: Tensor<B, 3>,
    a: Tensor<B, 1>,
    bm: Tensor<B, 4>,
    cm: Tensor<B, 4>,
    chunk: usize,
) -> ChunkLayout<B> {
    let [b, l, h, p] = x.dims();
    let [_, _, g, n] = bm.dims();
    let t = chunk.clamp(1, l.max(1));
    let c = l.div_ceil(t);
    let lp = c * t;
    let (x, dt, bm, cm) = (pad_positions(x, lp), pad_positions(dt, lp), pad_positions(bm, lp), pad_positions(cm, lp));
    let dtc = dt.reshape([b, c, t, h]).swap_dims(2, 3); // [b,c,H,T]
    let acs = cumsum_last(dtc.clone() * a.reshape([1, 1, h, 1]));
    let xc = x.reshape([b, c, t, h, p]).swap_dims(2, 3);
    let xdt = xc.clone() * dtc.clone().unsqueeze_dim::<5>(4);
    let bc = bm.reshape([b, c, t, g, n]).swap_dims(2, 3);
    let cc = cm.reshape([b, c, t, g, n]).swap_dims(2, 3);
    ChunkLayout { t, c, dtc, acs, xc, xdt, bc, cc }
}

/// Lower-triangular decay matrix exp(v_l − v_s) for s ≤ l, 0 above the diagonal.
///
/// `v` is non-increasing along its last dimension (a cumulative sum of dt·A ≤ 0), so the entries
/// on and below the diagonal are ≤ 0; clamping at 0 before exp keeps the upper entries (which
/// are positive and could overflow) finite, and the triangular mask then zeroes them.
///
/// # Shapes
/// - v: [..., T] as a rank-`D` tensor (cumulative sums)
/// - output: [..., T, T] as a rank-`D2` tensor (`D2 = D + 1`)
pub fn segment_decay<B: Backend, const D: usize, const D2: usize>(v: Tensor<B, D>) -> Tensor<B, D2> {
    let t = v.dims()[D - 1];
    let seg: Tensor<B, D2> = v.clone().unsqueeze_dim(D) - v.unsqueeze_dim(D - 1);
    let lower = Tensor::<B, 2>::ones([t, t], opts::<B>(&seg.device())).tril(0);
    seg.clamp_max(0.0).exp() * lower.unsqueeze::<D2>()
}

/// Chunked SSD scan (matrix form). Does not add the D·x skip term.
///
/// `dtype` (e.g. bf16) is the dtype of the products over positions and states (C·Bᵀ, the
/// intra-chunk scores times x̄, the chunk states, the carried-in outputs), as mamba_ssm runs them
/// under mixed precision; the cumulative sums, decays and the passing of states between chunks
/// stay in the tensors' own dtype. `chunk` is the chunk length T (the sequence is zero-padded to a multiple of T; padded positions
/// have dt = 0, so they neither decay nor feed the state). Returns (y, final state).
///
/// # Shapes
/// - x: [b, L, H, P], dt: [b, L, H] (after softplus), a: [H] (A = −exp(A_log))
/// - bm, cm: [b, L, G, N]; initial_state: [b, H, P, N]
/// - output: y [b, L, H, P], final state [b, H, P, N]
#[allow(clippy::too_many_arguments)]
pub fn ssd_chunked<B: FusedOps>(
    x: Tensor<B, 4>,
    dt: Tensor<B, 3>,
    a: Tensor<B, 1>,
    bm: Tensor<B, 4>,
    cm: Tensor<B, 4>,
    chunk: usize,
    initial_state: Option<Tensor<B, 4>>,
    dtype: Option<DType>,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let device = x.device();
    let [b, l, h, p] = x.dims();
    let [_, _, g, n] = bm.dims();
    let hg = h / g;
    let ChunkLayout { t, c, acs, xdt, bc, cc, .. } = chunk_layout(x, dt, a, bm, cm, chunk);
    let lp = c * t;

    // 1. Intra-chunk outputs: ((L ⊙ C Bᵀ) x̄), C Bᵀ computed once per group.
    let cb = matmul_in(cc.clone(), bc.clone().swap_dims(3, 4), dtype); // [b,c,G,T,T]
    let scores = B::ssd_decay_scores(acs.clone(), cb); // [b,c,H,T,T]
    let y_diag = matmul_in(scores, xdt.clone(), dtype); // [b,c,H,T,P]
    crate::profile::mark::<B>("ssd.1_intra_chunk", &device);

    // 2. Each chunk's end state, Σ_s exp(Λ_{T−1} − Λ_s) x̄_s ⊗ B_s, heads of a group batched.
    let last = acs.clone().narrow(3, t - 1, 1); // [b,c,H,1]
    let decay_to_end = (last.clone() - acs.clone()).exp(); // [b,c,H,T]
    let xw = (xdt * decay_to_end.unsqueeze_dim::<5>(4)) // [b,c,H,T,P]
        .reshape([b, c, g, hg, t, p])
        .permute([0, 1, 2, 3, 5, 4])
        .reshape([b, c, g, hg * p, t]);
    let states = matmul_in(xw, bc, dtype).reshape([b, c, h, p * n]); // [b,c,H,P·N]
    crate::profile::mark::<B>("ssd.2_chunk_states", &device);

    // 3. States entering each chunk: segment decay over chunk totals, initial state first.
    let totals = last.reshape([b, c, h]).swap_dims(1, 2); // [b,H,c]
    let excl = Tensor::cat(vec![Tensor::zeros([b, h, 1], opts::<B>(&device)), cumsum_last(totals)], 2); // Λ': [b,H,c+1]
    let chunk_decay: Tensor<B, 4> = segment_decay(excl); // [b,H,c+1,c+1]
    let init = match initial_state {
        Some(s) => s.reshape([b, h, 1, p * n]),
        None => Tensor::zeros([b, h, 1, p * n], opts::<B>(&device)),
    };
    let carried = chunk_decay.matmul(Tensor::cat(vec![init, states.swap_dims(1, 2)], 2)); // [b,H,c+1,P·N]
    let final_state = carried.clone().narrow(2, c, 1).reshape([b, h, p, n]);
    let s_in = carried
        .narrow(2, 0, c) // [b,H,c,P·N]
        .swap_dims(1, 2)
        .reshape([b, c, g, hg, p, n])
        .permute([0, 1, 2, 5, 3, 4])
        .reshape([b, c, g, n, hg * p]);
    crate::profile::mark::<B>("ssd.3_state_passing", &device);

    // 4. Outputs of the carried-in state: exp(Λ_l) · C_l · S_in.
    let y_off = matmul_in(cc, s_in, dtype) // [b,c,G,T,hg·P]
        .reshape([b, c, g, t, hg, p])
        .permute([0, 1, 2, 4, 3, 5])
        .reshape([b, c, h, t, p])
        * acs.exp().unsqueeze_dim::<5>(4);

    let y = (y_diag + y_off).swap_dims(2, 3).reshape([b, lp, h, p]);
    crate::profile::mark::<B>("ssd.4_carried_outputs", &device);
    // Burn differentiates a narrow as a zero-filled tensor of the input's size with the gradient
    // copied in, even when it keeps everything.
    let y = if lp == l { y } else { y.narrow(1, 0, l) };
    (y, final_state)
}

/// The same scan one position at a time (the decoding recurrence); the reference for tests.
///
/// # Shapes
/// - as [`ssd_chunked`]
pub fn ssd_recurrent<B: Backend>(
    x: Tensor<B, 4>,
    dt: Tensor<B, 3>,
    a: Tensor<B, 1>,
    bm: Tensor<B, 4>,
    cm: Tensor<B, 4>,
    initial_state: Option<Tensor<B, 4>>,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let device = x.device();
    let [b, l, h, p] = x.dims();
    let [_, _, g, n] = bm.dims();
    let hg = h / g;
    let per_head =
        |m: Tensor<B, 4>, i: usize| m.narrow(1, i, 1).reshape([b, g, 1, n]).expand([b, g, hg, n]).reshape([b, h, 1, n]);
    let mut state = initial_state.unwrap_or_else(|| Tensor::zeros([b, h, p, n], opts::<B>(&device)));
    let mut ys = Vec::with_capacity(l);
    for i in 0..l {
        let dti = dt.clone().narrow(1, i, 1).reshape([b, h]);
        let decay = (dti.clone() * a.clone().reshape([1, h])).exp().reshape([b, h, 1, 1]);
        let xi = x.clone().narrow(1, i, 1).reshape([b, h, p]) * dti.reshape([b, h, 1]);
        state = state * decay + xi.reshape([b, h, p, 1]) * per_head(bm.clone(), i);
        let y = (state.clone() * per_head(cm.clone(), i)).sum_dim(3); // [b,H,P,1]
        ys.push(y.reshape([b, 1, h, p]));
    }
    (Tensor::cat(ys, 1), state)
}

/// Random scan inputs for the tests of this module and of [`backward`].
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::rng::SplitMix64;
    use burn::backend::NdArray;
    use burn::tensor::TensorData;

    pub type B = NdArray<f64>;

    /// A tensor of uniform values in [lo, hi).
    pub fn rand<const D: usize>(rng: &mut SplitMix64, dims: [usize; D], lo: f64, hi: f64) -> Tensor<B, D> {
        let v: Vec<f64> = (0..dims.iter().product::<usize>()).map(|_| rng.uniform(lo, hi)).collect();
        Tensor::from_data(TensorData::new(v, dims), opts::<B>(&Default::default()))
    }

    /// Shape of [`scan_inputs`]: batch 2, a length of 13 (no chunk size below it divides it),
    /// H = 4 heads in G = 2 groups, P = 3, N = 5.
    pub const SHAPE: (usize, usize, usize, usize, usize, usize) = (2, 13, 4, 3, 2, 5);

    /// x, dt, A, B, C of a scan of [`SHAPE`], with dt and A drawn from the given ranges.
    #[allow(clippy::type_complexity)]
    pub fn scan_inputs(
        rng: &mut SplitMix64,
        dt: (f64, f64),
        a: (f64, f64),
    ) -> (Tensor<B, 4>, Tensor<B, 3>, Tensor<B, 1>, Tensor<B, 4>, Tensor<B, 4>) {
        let (b, l, h, p, g, n) = SHAPE;
        (
            rand(rng, [b, l, h, p], -1.0, 1.0),
            rand(rng, [b, l, h], dt.0, dt.1),
            rand(rng, [h], a.0, a.1),
            rand(rng, [b, l, g, n], -1.0, 1.0),
            rand(rng, [b, l, g, n], -1.0, 1.0),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    use super::testing::{rand, scan_inputs, B, SHAPE};

    fn max_diff<const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f64 {
        (a - b).abs().max().into_scalar()
    }

    #[test]
    fn chunked_scan_equals_recurrence_for_every_chunking() {
        let mut rng = SplitMix64::new(11);
        let (b, l, h, p, _, n) = SHAPE;
        let (x, dt, a, bm, cm) = scan_inputs(&mut rng, (0.01, 0.5), (-3.0, -0.5));
        let s0 = rand(&mut rng, [b, h, p, n], -1.0, 1.0);
        let (y_ref, s_ref) = ssd_recurrent(x.clone(), dt.clone(), a.clone(), bm.clone(), cm.clone(), Some(s0.clone()));
        for chunk in [1, 4, 5, 13, 64] {
            let (y, s) =
                ssd_chunked(x.clone(), dt.clone(), a.clone(), bm.clone(), cm.clone(), chunk, Some(s0.clone()), None);
            assert_eq!(y.dims(), [b, l, h, p]);
            let dy = max_diff(y, y_ref.clone());
            let ds = max_diff(s, s_ref.clone());
            assert!(dy < 1e-12, "chunk {chunk}: max |Δy| = {dy}");
            assert!(ds < 1e-12, "chunk {chunk}: max |Δstate| = {ds}");
        }
        // Without an initial state the scan starts from zero.
        let (y0, _) = ssd_chunked(x.clone(), dt.clone(), a.clone(), bm.clone(), cm.clone(), 4, None, None);
        let (y1, _) = ssd_recurrent(x, dt, a, bm, cm, None);
        assert!(max_diff(y0, y1) < 1e-12);
    }

    /// Strong decay (dt·A down to −40 per step, hundreds over a chunk) must not overflow.
    #[test]
    fn long_chunks_with_strong_decay_stay_finite() {
        let mut rng = SplitMix64::new(5);
        let (b, l, h, p, g, n) = (1, 64, 2, 2, 1, 3);
        let x = rand(&mut rng, [b, l, h, p], -1.0, 1.0);
        let dt = rand(&mut rng, [b, l, h], 1.0, 4.0);
        let a = rand(&mut rng, [h], -10.0, -5.0);
        let bm = rand(&mut rng, [b, l, g, n], -1.0, 1.0);
        let cm = rand(&mut rng, [b, l, g, n], -1.0, 1.0);
        let (y, _) = ssd_chunked(x.clone(), dt.clone(), a.clone(), bm.clone(), cm.clone(), 64, None, None);
        let (y_ref, _) = ssd_recurrent(x, dt, a, bm, cm, None);
        assert!(!y.clone().is_nan().any().into_scalar());
        assert!(max_diff(y, y_ref) < 1e-10);
    }
}
