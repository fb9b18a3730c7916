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
        let mut l: Vec<f32> = logits[..allowed.min(logits.len())].to_vec();
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
        let mut idx: Vec<usize> = (0..l.len()).collect();
        idx.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
        if self.params.top_k > 0 {
            idx.truncate(self.params.top_k);
        }
        let inv_t = 1.0 / self.params.temperature as f64;
        let max = l[idx[0]] as f64;
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

/// Index of the largest value (the first one on ties).
pub fn argmax(v: &[f32]) -> usize {
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

    #[test]
    fn greedy_and_penalty() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&[0.1, 3.0, 2.0], &[], 3), 1);
        let mut p = Sampler::new(SamplingParams { repeat_penalty: 2.0, ..SamplingParams::greedy() });
        assert_eq!(p.sample(&[0.1, 3.0, 2.0], &[1], 3), 2);
        // Padded rows beyond the tokenizer's vocabulary are never chosen.
        assert_eq!(s.sample(&[0.1, 3.0, 9.0], &[], 2), 1);
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
