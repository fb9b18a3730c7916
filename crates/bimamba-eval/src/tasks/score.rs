//! Log-likelihood of continuations, one context at a time.
//!
//! A Mamba's state after a context is constant-size, so a document's context is fed once and
//! every continuation is scored from a copy of that state:
//!
//! ```text
//! state, last = forward_last(new_state, context_enc)   // last: logits predicting cont[0]
//! for each continuation c (n tokens), all together as branches of `state`:
//!     rows = [last] ++ forward(state.clone(), c[..n-1]) // row k predicts c[k]
//!     loglik = Σ_k log_softmax(rows[k])[c[k]];  greedy = ∀k argmax(rows[k]) == c[k]
//! ```
//!
//! which is exactly what lm-eval computes from `(context_enc + continuation_enc)[:-1]`: the last
//! continuation token is scored, never fed. Documents are spread over the rayon pool.

use std::sync::atomic::{AtomicUsize, Ordering};

use bimamba_lm::softmax::{lane_max, log_sum_exp};
use bimamba_lm::{LanguageModel, ModelError, Result};
use rayon::prelude::*;

use super::request::Group;

/// The score of one continuation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ContScore {
    /// Σ log p(token | everything before it), in nats.
    pub loglik: f64,
    /// Every token was the argmax of its row (lm-eval's `is_greedy`).
    pub greedy: bool,
}

/// Scores every continuation of `g` from one pass over its context.
pub fn score_group<M: LanguageModel>(model: &M, g: &Group) -> Result<Vec<ContScore>> {
    let v = model.vocab_size();
    let mut state = model.new_state();
    let last = model.forward_last(&mut state, &g.context)?;
    // The fed part of each continuation (all but its last token); those that feed anything run
    // together as branches of the context state.
    let fed: Vec<&[u32]> = g.continuations.iter().map(|c| c.split_last().map_or(&[][..], |(_, f)| f)).collect();
    let busy: Vec<&[u32]> = fed.iter().copied().filter(|f| !f.is_empty()).collect();
    let mut rows = if busy.is_empty() { Vec::new() } else { model.forward_branches(&state, &busy)? }.into_iter();
    let mut out = Vec::with_capacity(g.continuations.len());
    for (cont, f) in g.continuations.iter().zip(&fed) {
        let mut score = RowScore::default();
        // An empty continuation scores 0 and counts as greedy, as in lm-eval (request building
        // rejects them, so only direct callers can pass one).
        if let Some(&first) = cont.first() {
            score.add(&last, first)?;
        }
        if !f.is_empty() {
            let r = rows.next().expect("one block of rows per continuation that feeds tokens"); // [f.len(), v]
            for (row, &target) in r.chunks_exact(v).zip(&cont[1..]) {
                score.add(row, target)?;
            }
        }
        out.push(ContScore { loglik: score.loglik, greedy: score.greedy });
    }
    Ok(out)
}

/// Scores all groups in parallel, in order; `progress(done)` after each group.
pub fn score_groups<M: LanguageModel>(
    model: &M,
    groups: &[Group],
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Vec<Vec<ContScore>>> {
    let done = AtomicUsize::new(0);
    groups
        .par_iter()
        .with_max_len(1)
        .map(|g| {
            let s = score_group(model, g)?;
            progress(done.fetch_add(1, Ordering::Relaxed) + 1);
            Ok(s)
        })
        .collect()
}

/// Running sum over the rows of one continuation.
struct RowScore {
    loglik: f64,
    greedy: bool,
}

impl Default for RowScore {
    fn default() -> Self {
        RowScore { loglik: 0.0, greedy: true }
    }
}

impl RowScore {
    /// Adds log_softmax(row)[target]; greedy stays true while `target` is the first maximum
    /// (torch's `argmax` tie rule).
    fn add(&mut self, row: &[f32], target: u32) -> Result<()> {
        let t = target as usize;
        if t >= row.len() {
            return Err(ModelError::TokenOutOfRange { id: target, vocab: row.len() });
        }
        // The first index holding the maximum (NaN entries are never the maximum).
        let max = lane_max(row);
        let best = row.iter().position(|&x| x == max).unwrap_or(0);
        self.loglik += row[t] as f64 - log_sum_exp(row);
        self.greedy &= best == t;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::testing::{HashLm, TableLm};
    use bimamba_lm::log_prob;

    /// The naive way: feed context + continuation[..n-1] from a fresh state, read the rows.
    fn naive<M: LanguageModel>(m: &M, ctx: &[u32], cont: &[u32]) -> (f64, bool) {
        let v = m.vocab_size();
        let mut seq = ctx.to_vec();
        seq.extend_from_slice(&cont[..cont.len() - 1]);
        let logits = m.forward(&mut m.new_state(), &seq).expect("in vocabulary");
        let mut ll = 0.0;
        let mut greedy = true;
        for (k, &t) in cont.iter().enumerate() {
            let row = &logits[(ctx.len() - 1 + k) * v..(ctx.len() + k) * v];
            ll += log_prob(row, t);
            let best = (0..v).fold(0, |b, j| if row[j] > row[b] { j } else { b });
            greedy &= best == t as usize;
        }
        (ll, greedy)
    }

    #[test]
    fn shared_state_equals_scoring_each_sequence_from_scratch() {
        let m = HashLm { vocab: 40 };
        let g = Group {
            context: vec![3, 1, 4, 1, 5],
            continuations: vec![vec![9], vec![2, 6, 5], vec![3, 5], vec![8, 9, 7, 9]],
            merges: 0,
        };
        let got = score_group(&m, &g).expect("in vocabulary");
        for (c, s) in g.continuations.iter().zip(&got) {
            let (ll, greedy) = naive(&m, &g.context, c);
            assert!((s.loglik - ll).abs() < 1e-12, "{} vs {ll}", s.loglik);
            assert_eq!(s.greedy, greedy);
        }
        let all = score_groups(&m, &[g.clone(), g.clone(), g], &|_| {}).expect("in vocabulary");
        assert!(all.iter().all(|s| s == &got));
    }

    #[test]
    fn hand_checked_log_likelihood_and_greedy() {
        // Bigram table over 3 tokens: after token a, logits row table[a].
        // After 0: [ln 1, ln 2, ln 1] -> p = [1/4, 1/2, 1/4]; after 1: [0, 0, ln 2] -> [1/4, 1/4, 1/2].
        let l2 = 2f32.ln();
        let m = TableLm { table: vec![vec![0.0, l2, 0.0], vec![0.0, 0.0, l2], vec![0.0, 0.0, 0.0]] };
        let g = Group { context: vec![2, 0], continuations: vec![vec![1, 2], vec![1, 0], vec![2]], merges: 0 };
        let s = score_group(&m, &g).expect("in vocabulary");
        let ln = |p: f64| p.ln();
        assert!((s[0].loglik - (ln(0.5) + ln(0.5))).abs() < 1e-6);
        assert!(s[0].greedy, "1 is the argmax after 0, 2 after 1");
        assert!((s[1].loglik - (ln(0.5) + ln(0.25))).abs() < 1e-6);
        assert!(!s[1].greedy);
        assert!((s[2].loglik - ln(0.25)).abs() < 1e-6);
        assert!(!s[2].greedy);
    }

    #[test]
    fn ties_follow_torch_argmax_first_index() {
        let m = TableLm { table: vec![vec![1.0, 1.0]] };
        let g = Group { context: vec![0], continuations: vec![vec![0], vec![1]], merges: 0 };
        let s = score_group(&m, &g).expect("in vocabulary");
        assert!(s[0].greedy && !s[1].greedy);
    }

    #[test]
    fn out_of_vocabulary_target_is_an_error() {
        let m = TableLm { table: vec![vec![0.0, 0.0]] };
        let g = Group { context: vec![0], continuations: vec![vec![5]], merges: 0 };
        assert!(score_group(&m, &g).is_err());
    }
}
