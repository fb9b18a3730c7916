//! Choosing the next token from logits: greedy, or temperature + top-k + top-p sampling with a
//! seeded generator, with an optional repetition penalty (as llama.cpp and transformers apply
//! it: a seen token's positive logit is divided by the penalty, a negative one multiplied).

/// SplitMix64: tiny, seedable and reproducible across platforms.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no top-k cut.
    pub top_k: usize,
    /// 1 means no nucleus cut.
    pub top_p: f32,
    /// 1 means no penalty.
    pub repeat_penalty: f32,
    pub seed: u64,
}

impl SamplingParams {
    pub fn greedy() -> SamplingParams {
        SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, repeat_penalty: 1.0, seed: 0 }
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let rng = Rng::new(params.seed);
        Sampler { params, rng }
    }

    /// Picks the next token; `history` is every token seen so far (for the penalty); `allowed`
    /// limits the choice to the first `allowed` ids (the tokenizer's real vocabulary when the
    /// model's embedding is padded).
    pub fn sample(&mut self, logits: &[f32], history: &[u32], allowed: usize) -> u32 {
        let logits = &logits[..allowed.min(logits.len())];
        if self.params.temperature <= 0.0 && (self.params.repeat_penalty == 1.0 || history.is_empty()) {
            // Greedy without a penalty: nothing to change, no copy of the vocabulary's logits.
            return argmax(logits) as u32;
        }
        let mut l: Vec<f32> = logits.to_vec();
        if self.params.repeat_penalty != 1.0 {
            let r = self.params.repeat_penalty;
            for &t in history {
                if let Some(v) = l.get_mut(t as usize) {
                    *v = if *v > 0.0 { *v / r } else { *v * r };
                }
            }
        }
        if self.params.temperature <= 0.0 {
            return argmax(&l) as u32;
        }
        // A top-k or top-p cut needs the candidates ranked; without one, the order in which they
        // are walked does not change the distribution drawn from, and they are taken in id order
        // (no sort of the whole vocabulary per token).
        let cut = self.params.top_k > 0 || self.params.top_p < 1.0;
        let idx = if cut { ranked(&l, self.params.top_k) } else { (0..l.len()).collect() };
        let inv_t = 1.0 / self.params.temperature as f64;
        let max = l.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let mut probs: Vec<f64> = idx.iter().map(|&i| ((l[i] as f64 - max) * inv_t).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.params.top_p < 1.0 {
            let mut cum = 0.0;
            let mut keep = probs.len();
            for (k, p) in probs.iter().enumerate() {
                cum += p;
                if cum >= self.params.top_p as f64 {
                    keep = k + 1;
                    break;
                }
            }
            probs.truncate(keep);
            let s: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= s);
        }
        let u = self.rng.next_f64();
        let mut cum = 0.0;
        for (k, p) in probs.iter().enumerate() {
            cum += p;
            if u < cum {
                return idx[k] as u32;
            }
        }
        idx[probs.len() - 1] as u32
    }
}

/// The indices of `l` from the largest value down (ties: lower index first), only the `top_k`
/// first when `top_k > 0`. With a cut, the `top_k` largest are selected in linear time before
/// being sorted, instead of sorting the whole vocabulary (the order is the same).
fn ranked(l: &[f32], top_k: usize) -> Vec<usize> {
    let order = |a: &usize, b: &usize| l[*b].total_cmp(&l[*a]).then(a.cmp(b));
    let mut idx: Vec<usize> = (0..l.len()).collect();
    if top_k > 0 && top_k < idx.len() {
        idx.select_nth_unstable_by(top_k - 1, order);
        idx.truncate(top_k);
    }
    idx.sort_unstable_by(order);
    idx
}

/// Index of the largest value (the first one on ties); NaNs are never chosen, except index 0
/// when `v[0]` is NaN (the scan below compares against it and nothing is greater). The same
/// index as [`argmax_scalar`] (tested), in two passes that vectorize: the maximum over
/// [`ARGMAX_LANES`] lanes, then the first element equal to it.
pub fn argmax(v: &[f32]) -> usize {
    if v.first().is_none_or(|x| x.is_nan()) {
        return 0;
    }
    let mut lanes = [f32::NEG_INFINITY; ARGMAX_LANES];
    let chunks = v.chunks_exact(ARGMAX_LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in lanes.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    // v[0] is a number, so the maximum is one; `==` finds a zero of either sign, as `>` does
    // not prefer one over the other.
    let m = lanes.iter().chain(tail).fold(v[0], |a, &x| if x > a { x } else { a });
    let first_chunk = v.chunks(ARGMAX_LANES).position(|c| c.iter().fold(false, |f, &x| f | (x == m)));
    let c = first_chunk.expect("the maximum is an element");
    c * ARGMAX_LANES + v[c * ARGMAX_LANES..].iter().position(|&x| x == m).expect("in this chunk")
}

/// Lanes of [`argmax`]'s maximum (two AVX-512 or four AVX2 vectors' worth; SSE2 runs it too).
const ARGMAX_LANES: usize = 32;

/// The specification of [`argmax`]: one scan, keeping the first strictly larger value.
pub fn argmax_scalar(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two-pass argmax picks the scan's index: ties, signed zeros, NaNs (first or not),
    /// infinities, every length around the lane count.
    #[test]
    fn argmax_equals_the_scan() {
        let mut rng = Rng::new(9);
        let mut cases: Vec<Vec<f32>> = vec![
            vec![],
            vec![f32::NAN, 1.0, 2.0],
            vec![1.0, f32::NAN, 2.0, f32::NAN],
            vec![-0.0, 0.0, -0.0],
            vec![0.0, -0.0],
            vec![f32::NEG_INFINITY; 40],
            vec![f32::NAN; 3],
            vec![1.0, f32::INFINITY, 3.0, f32::INFINITY],
        ];
        for n in [1, 5, 31, 32, 33, 63, 64, 65, 100, 49_152] {
            for ties in [false, true] {
                let v: Vec<f32> = (0..n)
                    .map(|_| {
                        let u = rng.next_f64() as f32;
                        // Few distinct values: many ties of the maximum.
                        if ties {
                            (u * 4.0).floor()
                        } else {
                            u * 20.0 - 10.0
                        }
                    })
                    .collect();
                let mut with_nan = v.clone();
                with_nan[(n - 1) / 2] = f32::NAN;
                cases.extend([v, with_nan]);
            }
        }
        for v in &cases {
            assert_eq!(argmax(v), argmax_scalar(v), "{:?}", &v[..v.len().min(8)]);
        }
    }

    #[test]
    fn greedy_and_penalty() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&[0.1, 3.0, 2.0], &[], 3), 1);
        let mut p = Sampler::new(SamplingParams { repeat_penalty: 2.0, ..SamplingParams::greedy() });
        assert_eq!(p.sample(&[0.1, 3.0, 2.0], &[1], 3), 2);
        // Padded rows beyond the tokenizer's vocabulary are never chosen.
        assert_eq!(s.sample(&[0.1, 3.0, 9.0], &[], 2), 1);
    }

    /// The top-k selection ranks exactly as sorting everything and cutting does, ties included.
    #[test]
    fn ranked_selection_matches_a_full_sort() {
        let mut rng = Rng::new(9);
        for n in [1usize, 2, 10, 1000] {
            // Few distinct values, so that many ties cross the cut.
            let l: Vec<f32> = (0..n).map(|_| (rng.next_u64() % 7) as f32 - 3.0).collect();
            let mut full: Vec<usize> = (0..n).collect();
            full.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
            for k in [0usize, 1, 3, n / 2, n, n + 5] {
                let want: Vec<usize> = if k == 0 { full.clone() } else { full.iter().copied().take(k).collect() };
                assert_eq!(ranked(&l, k), want, "n {n}, k {k}");
            }
        }
    }

    /// Without a cut the candidates are walked in id order: the draws still follow the softmax.
    #[test]
    fn plain_temperature_follows_the_softmax() {
        // p = softmax([0, ln 3, -inf-ish]) = [0.25, 0.75, ~0].
        let logits = [0.0, 3f32.ln(), -80.0];
        let mut s =
            Sampler::new(SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, repeat_penalty: 1.0, seed: 5 });
        let n = 20_000;
        let ones = (0..n).filter(|_| s.sample(&logits, &[], 3) == 1).count() as f64 / n as f64;
        assert!((ones - 0.75).abs() < 0.015, "token 1 drawn {ones:.3} of the time, expected 0.75");
        // At T = 2 the logits are halved: p1 = √3 / (1 + √3) = 0.634.
        let mut s =
            Sampler::new(SamplingParams { temperature: 2.0, top_k: 0, top_p: 1.0, repeat_penalty: 1.0, seed: 6 });
        let ones = (0..n).filter(|_| s.sample(&logits, &[], 3) == 1).count() as f64 / n as f64;
        assert!((ones - 0.634).abs() < 0.015, "token 1 drawn {ones:.3} of the time at T = 2");
    }

    #[test]
    fn top_k_one_is_greedy_and_seed_reproduces() {
        let logits = [0.3, 0.1, 0.9, 0.5];
        let mut k1 =
            Sampler::new(SamplingParams { temperature: 1.0, top_k: 1, top_p: 1.0, repeat_penalty: 1.0, seed: 3 });
        for _ in 0..20 {
            assert_eq!(k1.sample(&logits, &[], 4), 2);
        }
        let params = SamplingParams { temperature: 1.0, top_k: 0, top_p: 0.9, repeat_penalty: 1.0, seed: 42 };
        let a: Vec<u32> = {
            let mut s = Sampler::new(params.clone());
            (0..50).map(|_| s.sample(&logits, &[], 4)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(params);
            (0..50).map(|_| s.sample(&logits, &[], 4)).collect()
        };
        assert_eq!(a, b);
        assert!(a.iter().any(|&t| t != a[0]), "sampling at T=1 should vary");
    }
}
