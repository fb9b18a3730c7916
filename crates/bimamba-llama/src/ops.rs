//! The per-token math of a LLaMA block that is not a matrix product: RMSNorm, rotary position
//! embedding (GGUF convention), causal grouped-query attention over the KV cache, SwiGLU.

use bimamba_kernels::{dense_gemm_with, selected_isa};
use bimamba_lm::softmax::{exp_nonpositive, lane_max, lane_sum};
use rayon::prelude::*;

use crate::config::LlamaConfig;

/// `x ← x / sqrt(mean(x²) + eps) ⊙ w` over one row (the mean of squares in f64).
///
/// # Shapes
/// - `x`, `w`: [d_model]
pub fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    debug_assert_eq!(x.len(), w.len());
    let ms = x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / x.len() as f64;
    let scale = (1.0 / (ms + eps as f64).sqrt()) as f32;
    for (v, &g) in x.iter_mut().zip(w) {
        *v = *v * scale * g;
    }
}

/// Rotary position embedding as llama.cpp applies it to GGUF LLaMA models ("normal" mode).
///
/// For a token at position `p`, within every head, the pair of ADJACENT dimensions
/// (x[2i], x[2i+1]), i < rope_dim/2, is rotated by the angle θ_i = p · base^(−2i/rope_dim):
///
/// ```text
/// x'[2i]   = x[2i] · cos θ_i − x[2i+1] · sin θ_i
/// x'[2i+1] = x[2i] · sin θ_i + x[2i+1] · cos θ_i
/// ```
///
/// Dimensions from `rope_dim` on are left as they are. Hugging Face's LLaMA rotates the pairs
/// (i, i + head_dim/2) instead ("rotate_half", llama.cpp's NeoX mode); llama.cpp's converter
/// permutes the rows of W_q and W_k so that the adjacent-pair rotation of the GGUF weights gives
/// the same attention scores as the half-split rotation of the original ones.
#[derive(Clone, Debug)]
pub struct Rope {
    /// base^(−2i/rope_dim) for i < rope_dim/2.
    inv_freq: Vec<f64>,
    head_dim: usize,
}

impl Rope {
    pub fn new(cfg: &LlamaConfig) -> Rope {
        let base = cfg.rope_theta as f64;
        let inv_freq = (0..cfg.rope_dim / 2).map(|i| base.powf(-2.0 * i as f64 / cfg.rope_dim as f64)).collect();
        Rope { inv_freq, head_dim: cfg.head_dim }
    }

    /// Rotates every head of `t` consecutive tokens, the first at position `pos0`.
    ///
    /// # Shapes
    /// - `x`: [t, n_heads · head_dim], rotated in place
    pub fn apply(&self, x: &mut [f32], n_heads: usize, pos0: usize) {
        let width = n_heads * self.head_dim;
        debug_assert_eq!(x.len() % width, 0);
        let mut cs = vec![(0.0f32, 0.0f32); self.inv_freq.len()];
        for (k, row) in x.chunks_exact_mut(width).enumerate() {
            let p = (pos0 + k) as f64;
            for (c, &f) in cs.iter_mut().zip(&self.inv_freq) {
                let (s, co) = (p * f).sin_cos();
                *c = (co as f32, s as f32);
            }
            for head in row.chunks_exact_mut(self.head_dim) {
                for (pair, &(c, s)) in head.chunks_exact_mut(2).zip(&cs) {
                    let (x0, x1) = (pair[0], pair[1]);
                    pair[0] = x0 * c - x1 * s;
                    pair[1] = x0 * s + x1 * c;
                }
            }
        }
    }
}

/// Query positions per attention work item.
const QUERY_BLOCK: usize = 64;

/// Causal grouped-query attention of `t` new queries against the cache.
///
/// Query `i` sits at position `pos0 + i` and attends to cached positions `0..=pos0 + i` (the
/// cache already holds the keys and values of the `t` new tokens). Query head `h` reads key/value
/// head `h / group_size` (llama.cpp's grouping: consecutive query heads share a KV head).
///
/// ```text
/// s_j = q · k_j / sqrt(head_dim),   out = Σ_j softmax(s)_j · v_j
/// ```
///
/// Work items are (KV head g, block of up to 64 queries), run in parallel. An item stacks the
/// queries of the `group_size` heads that share g into Q [group·m, head_dim], copies the keys it
/// can see, K [nk, head_dim], and the values transposed, Vᵀ [head_dim, nk] (nk = the position
/// of its last query + 1), and computes S = Q·Kᵀ and O = P·V = P·(Vᵀ)ᵀ with the dense f32
/// kernel; P is the row softmax of S / sqrt(head_dim) with the keys after each query's own
/// position set to probability 0. The copies cost 1/(group·m) of the products.
///
/// # Shapes
/// - `q`: [t, n_head · head_dim] (already rotated)
/// - `k_cache`, `v_cache`: [pos0 + t, n_kv_head · head_dim] (keys rotated)
/// - `out`: [t, n_head · head_dim], overwritten
pub fn attention(cfg: &LlamaConfig, q: &[f32], k_cache: &[f32], v_cache: &[f32], pos0: usize, out: &mut [f32]) {
    let (hd, q_dim, kv_dim, group) = (cfg.head_dim, cfg.q_dim(), cfg.kv_dim(), cfg.group_size());
    let t = q.len() / q_dim;
    debug_assert_eq!(out.len(), q.len());
    debug_assert_eq!(k_cache.len(), v_cache.len());
    debug_assert_eq!(k_cache.len(), (pos0 + t) * kv_dim);
    let scale = 1.0 / (hd as f32).sqrt();
    let isa = selected_isa();
    let nb = t.div_ceil(QUERY_BLOCK);
    let blocks: Vec<Vec<f32>> = (0..cfg.n_kv_head * nb)
        .into_par_iter()
        .map(|item| {
            let (g, b) = (item / nb, item % nb);
            let i0 = b * QUERY_BLOCK;
            let m = (t - i0).min(QUERY_BLOCK);
            let nk = pos0 + i0 + m;
            let rows = group * m;
            // Stacked row hh·m + r: query i0 + r of head g·group + hh.
            let mut qs = Vec::with_capacity(rows * hd);
            for hh in 0..group {
                let col = (g * group + hh) * hd;
                for i in i0..i0 + m {
                    qs.extend_from_slice(&q[i * q_dim + col..i * q_dim + col + hd]);
                }
            }
            let mut k = Vec::with_capacity(nk * hd);
            for j in 0..nk {
                k.extend_from_slice(&k_cache[j * kv_dim + g * hd..j * kv_dim + (g + 1) * hd]);
            }
            // Vᵀ in tiles of 8 positions, so the 8 rows read stay in L1 while each of the
            // head_dim output rows gets 8 contiguous values.
            let mut vt = vec![0.0f32; hd * nk];
            for j0 in (0..nk).step_by(8) {
                let j1 = (j0 + 8).min(nk);
                for e in 0..hd {
                    for j in j0..j1 {
                        vt[e * nk + j] = v_cache[j * kv_dim + g * hd + e];
                    }
                }
            }
            let mut s = vec![0.0f32; rows * nk];
            dense_gemm_with(isa, &k, nk, hd, &qs, rows, 0..nk, &mut s);
            for (row_index, row) in s.chunks_exact_mut(nk).enumerate() {
                // Query i0 + r sees keys 0..=pos0 + i0 + r.
                let visible = pos0 + i0 + row_index % m + 1;
                let (seen, future) = row.split_at_mut(visible);
                future.fill(0.0);
                let mx = lane_max(seen) * scale;
                seen.iter_mut().for_each(|x| *x = exp_nonpositive(*x * scale - mx));
                let inv = 1.0 / lane_sum(seen);
                seen.iter_mut().for_each(|x| *x *= inv);
            }
            let mut o = vec![0.0f32; rows * hd];
            dense_gemm_with(isa, &vt, hd, nk, &s, rows, 0..hd, &mut o);
            o
        })
        .collect();
    for (item, o) in blocks.iter().enumerate() {
        let (g, b) = (item / nb, item % nb);
        let i0 = b * QUERY_BLOCK;
        let m = o.len() / (group * hd);
        for (row_index, src) in o.chunks_exact(hd).enumerate() {
            let (hh, r) = (row_index / m, row_index % m);
            let col = (g * group + hh) * hd;
            out[(i0 + r) * q_dim + col..(i0 + r) * q_dim + col + hd].copy_from_slice(src);
        }
    }
}

/// SwiGLU's gate: `gate ← silu(gate) ⊙ up`, silu(x) = x · σ(x), σ(x) = 1 / (1 + e^(−x)).
///
/// With e = e^(−|x|) ≤ 1 (the vectorizable [`exp_nonpositive`]), σ(x) = 1 / (1 + e) for x ≥ 0
/// and e / (1 + e) for x < 0: no overflow on either side.
///
/// # Shapes
/// - `gate`, `up`: [t, d_ff]
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    debug_assert_eq!(gate.len(), up.len());
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        let e = exp_nonpositive(-x.abs());
        let sigma = if x >= 0.0 { 1.0 } else { e } / (1.0 + e);
        *g = x * sigma * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(head_dim: usize, rope_dim: usize, theta: f32) -> LlamaConfig {
        LlamaConfig {
            n_layer: 1,
            d_model: head_dim,
            d_ff: 1,
            n_head: 1,
            n_kv_head: 1,
            head_dim,
            rope_dim,
            rope_theta: theta,
            norm_eps: 1e-5,
            vocab_size: 1,
            context_length: 16,
        }
    }

    /// Pins the adjacent-pair convention with hand-computed values: head_dim 4, base 10000, so
    /// pair 0 turns by p rad and pair 1 by p / 100 rad. The NeoX (half-split) convention would
    /// pair dimensions (0, 2) and (1, 3) and give [cos 1, −sin 0.01, sin 1, cos 0.01] instead.
    #[test]
    fn rope_rotates_adjacent_pairs() {
        let rope = Rope::new(&cfg(4, 4, 10000.0));
        let mut x = vec![1.0f32, 0.0, 0.0, 1.0];
        rope.apply(&mut x, 1, 1);
        let want = [0.540_302_3, 0.841_470_96, -0.009_999_833, 0.999_950_03];
        for (a, b) in x.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{x:?} vs {want:?}");
        }
        // Position 0 is the identity; position 3 of the second token in a block of two starting
        // at 2 equals position 3 applied alone.
        let mut y = vec![0.3f32, -0.7, 1.1, 0.2, 0.3, -0.7, 1.1, 0.2];
        let mut z = vec![0.3f32, -0.7, 1.1, 0.2];
        rope.apply(&mut y, 1, 2);
        rope.apply(&mut z, 1, 3);
        assert_eq!(&y[4..], &z[..]);
        let mut w = vec![0.3f32, -0.7, 1.1, 0.2];
        rope.apply(&mut w, 1, 0);
        assert_eq!(w, vec![0.3f32, -0.7, 1.1, 0.2]);
    }

    /// With rope_dim < head_dim only the leading dimensions turn (partial rotary).
    #[test]
    fn rope_partial_leaves_tail() {
        let rope = Rope::new(&cfg(6, 2, 10000.0));
        let mut x = vec![0.0f32, 1.0, 5.0, 6.0, 7.0, 8.0];
        rope.apply(&mut x, 1, 2);
        assert!((x[0] + 2.0f32.sin()).abs() < 1e-6 && (x[1] - 2.0f32.cos()).abs() < 1e-6);
        assert_eq!(&x[2..], &[5.0, 6.0, 7.0, 8.0]);
    }

    #[test]
    fn rms_norm_matches_definition() {
        let mut x = vec![3.0f32, -4.0];
        rms_norm(&mut x, &[1.0, 2.0], 0.0);
        // mean square 12.5, rms 3.5355
        assert!((x[0] - 3.0 / 12.5f32.sqrt()).abs() < 1e-6);
        assert!((x[1] + 8.0 / 12.5f32.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn swiglu_matches_f64() {
        let gate: Vec<f32> = (-400..=400).map(|i| i as f32 * 0.25).collect();
        let up: Vec<f32> = gate.iter().map(|&x| 1.0 - 0.01 * x).collect();
        let mut got = gate.clone();
        swiglu(&mut got, &up);
        for ((&x, &u), &g) in gate.iter().zip(&up).zip(&got) {
            let (x, u) = (x as f64, u as f64);
            let want = x / (1.0 + (-x).exp()) * u;
            assert!((g as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()), "silu({x}) · {u}: {g} vs {want}");
        }
    }

    /// Attention against a plain f64 loop, with a cache already holding `pos0` positions, over
    /// sizes that cover one and several query blocks (and a partial last block).
    #[test]
    fn attention_matches_naive() {
        let mut c = cfg(16, 16, 10000.0);
        (c.n_head, c.n_kv_head) = (6, 2);
        let (hd, qd, kvd) = (c.head_dim, c.q_dim(), c.kv_dim());
        let mut seed = 1u64;
        let mut rnd = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((seed >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
                })
                .collect()
        };
        for &(pos0, t) in &[(0usize, 1usize), (7, 1), (0, 5), (3, 64), (10, 130)] {
            let q = rnd(t * qd);
            let k = rnd((pos0 + t) * kvd);
            let v = rnd((pos0 + t) * kvd);
            let mut out = vec![f32::NAN; t * qd];
            attention(&c, &q, &k, &v, pos0, &mut out);
            for i in 0..t {
                for h in 0..c.n_head {
                    let g = h / c.group_size();
                    let s: Vec<f64> = (0..=pos0 + i)
                        .map(|j| {
                            (0..hd).map(|e| q[i * qd + h * hd + e] as f64 * k[j * kvd + g * hd + e] as f64).sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                        .collect();
                    let mx = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|x| (x - mx).exp()).sum();
                    for e in 0..hd {
                        let want: f64 = s
                            .iter()
                            .enumerate()
                            .map(|(j, x)| (x - mx).exp() / z * v[j * kvd + g * hd + e] as f64)
                            .sum();
                        let got = out[i * qd + h * hd + e] as f64;
                        assert!(
                            (got - want).abs() < 1e-5,
                            "pos0 {pos0} t {t} query {i} head {h} dim {e}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
