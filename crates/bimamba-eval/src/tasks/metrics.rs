//! lm-evaluation-harness 0.4 metrics over per-document outcomes.
//!
//! ```text
//! acc          = mean_d [argmax_i ll_i == gold]                 (np.argmax: first maximum)
//! acc_norm     = mean_d [argmax_i ll_i / len_i == gold]         (len_i: characters of choice i)
//! stderr(x)    = sample_stddev(x) / sqrt(n) = sqrt(p(1-p) / (n-1)) for 0/1 outcomes
//! perplexity   = exp(-mean_d ll_d)                               (LAMBADA: ll_d summed over the target)
//! ```

/// A mean with lm-eval's `mean_stderr`; `stderr` is `None` for fewer than two documents.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mean {
    pub value: f64,
    pub stderr: Option<f64>,
}

/// lm-eval's `mean` and `mean_stderr` (`sample_stddev(arr) / sqrt(len(arr))`, with the n-1
/// denominator).
pub fn mean_with_stderr(xs: &[f64]) -> Mean {
    let n = xs.len();
    if n == 0 {
        return Mean { value: f64::NAN, stderr: None };
    }
    let mu = xs.iter().sum::<f64>() / n as f64;
    let stderr = (n >= 2).then(|| {
        let var = xs.iter().map(|x| (x - mu) * (x - mu)).sum::<f64>() / (n - 1) as f64;
        (var / n as f64).sqrt()
    });
    Mean { value: mu, stderr }
}

/// Mean of 0/1 outcomes.
pub fn accuracy(hits: &[bool]) -> Mean {
    let xs: Vec<f64> = hits.iter().map(|&h| if h { 1.0 } else { 0.0 }).collect();
    mean_with_stderr(&xs)
}

/// Index of the first maximum (NumPy's `argmax`).
pub fn argmax(xs: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

/// One multiple-choice document: (acc hit, acc_norm hit). `lens[i]` is the acc_norm length of
/// choice i (see `data::continuation_len`); a zero length counts as one.
pub fn choice_hits(lls: &[f64], lens: &[usize], gold: usize) -> (bool, bool) {
    debug_assert_eq!(lls.len(), lens.len());
    let normed: Vec<f64> = lls.iter().zip(lens).map(|(&ll, &n)| ll / n.max(1) as f64).collect();
    (argmax(lls) == gold, argmax(&normed) == gold)
}

/// lm-eval's `perplexity` aggregation: exp of minus the mean per-document log-likelihood.
pub fn perplexity(lls: &[f64]) -> f64 {
    (-lls.iter().sum::<f64>() / lls.len() as f64).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_is_lm_evals_sample_stderr() {
        // [1, 0, 1, 1]: mean 0.75, sample variance 0.25, stderr sqrt(0.25 / 4) = 0.25
        // = sqrt(p(1-p)/(n-1)) = sqrt(0.1875 / 3).
        let m = accuracy(&[true, false, true, true]);
        assert_eq!(m.value, 0.75);
        let s = m.stderr.expect("n >= 2");
        assert!((s - 0.25).abs() < 1e-15, "{s}");
        assert!((s - (0.75f64 * 0.25 / 3.0).sqrt()).abs() < 1e-15);
        // General values: [2, 4, 9] -> mean 5, var (9+1+16)/2 = 13, stderr sqrt(13/3).
        let m = mean_with_stderr(&[2.0, 4.0, 9.0]);
        assert_eq!(m.value, 5.0);
        assert!((m.stderr.expect("n >= 2") - (13.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(accuracy(&[true]).stderr, None);
        assert_eq!(accuracy(&[true, true]).stderr, Some(0.0));
    }

    #[test]
    fn acc_norm_divides_by_characters_hand_checked() {
        // Choices " ab" and " abcd" (lengths 2 and 4 without the delimiter space), ll -4 and -7:
        // acc picks 0 (-4 > -7); acc_norm compares -2.0 with -1.75 and picks 1. Dividing by the
        // lengths with the space (3 and 5: -1.33 vs -1.4) would pick 0, so this pins the rule.
        let lens = [super::super::data::continuation_len(" ab"), super::super::data::continuation_len(" abcd")];
        assert_eq!(lens, [2, 4]);
        assert_eq!(choice_hits(&[-4.0, -7.0], &lens, 1), (false, true));
        assert_eq!(choice_hits(&[-4.0, -7.0], &lens, 0), (true, false));
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[-1.0, -0.5, -0.5]), 1);
        assert_eq!(choice_hits(&[-3.0, -3.0], &[3, 3], 0), (true, true));
    }

    #[test]
    fn perplexity_is_exp_of_minus_mean_document_loglik() {
        // Two documents with ll -1 and -3 (each summed over its target): exp(2).
        assert!((perplexity(&[-1.0, -3.0]) - 2f64.exp()).abs() < 1e-12);
    }
}
