//! The per-token math of a LLaMA block that is not a matrix product: RMSNorm, rotary position
//! embedding (GGUF convention), causal grouped-query attention over the KV cache, SwiGLU.

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
        let inv_freq = (0..cfg.rope_dim / 2)
            .map(|i| base.powf(-2.0 * i as f64 / cfg.rope_dim as f64))
            .collect();
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

/// Dot product with eight independent accumulators (so the compiler vectorizes it).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    let mut acc = [0.0f32; 8];
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

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
/// # Shapes
/// - `q`: [t, n_head · head_dim] (already rotated)
/// - `k_cache`, `v_cache`: [pos0 + t, n_kv_head · head_dim] (keys rotated)
/// - `out`: [t, n_head · head_dim], overwritten
pub fn attention(cfg: &LlamaConfig, q: &[f32], k_cache: &[f32], v_cache: &[f32], pos0: usize, out: &mut [f32]) {
    let (hd, n_head, kv_dim) = (cfg.head_dim, cfg.n_head, cfg.kv_dim());
    let group = cfg.group_size();
    let scale = 1.0 / (hd as f32).sqrt();
    debug_assert_eq!(q.len(), out.len());
    debug_assert_eq!(k_cache.len(), v_cache.len());
    debug_assert_eq!(k_cache.len(), (pos0 + q.len() / cfg.q_dim()) * kv_dim);
    // One task per (query, head): out is [t, n_head, head_dim], so chunk r is query r / n_head,
    // head r % n_head.
    out.par_chunks_mut(hd).enumerate().for_each_init(Vec::new, |scores: &mut Vec<f32>, (r, o)| {
        let (i, h) = (r / n_head, r % n_head);
        let qh = &q[r * hd..(r + 1) * hd];
        let koff = (h / group) * hd;
        let n_ctx = pos0 + i + 1;
        scores.clear();
        scores.extend((0..n_ctx).map(|j| dot(qh, &k_cache[j * kv_dim + koff..j * kv_dim + koff + hd]) * scale));
        let m = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for s in scores.iter_mut() {
            *s = (*s - m).exp();
            sum += *s;
        }
        let inv = 1.0 / sum;
        o.fill(0.0);
        for (j, &p) in scores.iter().enumerate() {
            let vj = &v_cache[j * kv_dim + koff..j * kv_dim + koff + hd];
            let w = p * inv;
            for (a, &b) in o.iter_mut().zip(vj) {
                *a += w * b;
            }
        }
    });
}

/// SwiGLU's gate: `gate ← silu(gate) ⊙ up`, silu(x) = x / (1 + e^(−x)).
///
/// # Shapes
/// - `gate`, `up`: [t, d_ff]
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    debug_assert_eq!(gate.len(), up.len());
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
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
    fn dot_handles_tails() {
        for n in [0usize, 1, 7, 8, 9, 17, 64, 67] {
            let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
            let b: Vec<f32> = (0..n).map(|i| 1.0 - i as f32 * 0.25).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - want).abs() < 1e-3, "n = {n}");
        }
    }
}
