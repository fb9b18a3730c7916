//! The shared-context scorer on a real (tiny, random) Mamba-2 checkpoint: scoring every choice
//! from a copy of the state after the context must give what lm-eval computes, i.e. the
//! log-likelihood of `continuation_enc` after feeding `context_enc + continuation_enc` from
//! scratch, including when BPE merges across the context/continuation boundary.

use std::path::{Path, PathBuf};

use bimamba_engine::Model;
use bimamba_eval::tasks::data::Docs;
use bimamba_eval::tasks::request::{self, Group, Origin};
use bimamba_eval::tasks::score::score_group;
use bimamba_eval::tasks::{self, Task};
use bimamba_lm::{log_prob, LanguageModel};
use bimamba_text::Tokenizer;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture() -> (Model, Tokenizer) {
    let dir = root().join("fixtures/ss-mamba2-g1");
    let model = Model::load(&dir).expect("the fixture model is committed");
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).expect("the fixture tokenizer is committed");
    (model, tok)
}

/// lm-eval's computation: one forward over `(context_enc + continuation_enc)[:-1]`.
fn from_scratch(m: &Model, ctx: &[u32], cont: &[u32]) -> (f64, bool) {
    let v = m.vocab_size();
    let mut seq = ctx.to_vec();
    seq.extend_from_slice(&cont[..cont.len() - 1]);
    let logits = LanguageModel::forward(m, &mut m.new_state(), &seq).expect("in vocabulary");
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

fn check(m: &Model, groups: &[Group]) -> usize {
    let mut n = 0;
    for g in groups {
        let got = score_group(m, g).expect("in vocabulary");
        for (c, s) in g.continuations.iter().zip(&got) {
            let (ll, greedy) = from_scratch(m, &g.context, c);
            // Different prefill blocking rounds differently; sums of tens of log-probs agree to ~1e-5.
            assert!((s.loglik - ll).abs() < 1e-3, "{} vs {ll} for {c:?}", s.loglik);
            if (s.loglik - ll).abs() < 1e-5 {
                assert_eq!(s.greedy, greedy);
            }
            n += 1;
        }
    }
    n
}

#[test]
fn shared_context_scoring_matches_scoring_from_scratch_on_every_fixture_task() {
    let (m, tok) = fixture();
    let data = root().join("fixtures/eval");
    let mut scored = 0;
    for t in Task::ALL {
        let docs = tasks::load_task(&data, t, None).expect("fixture files are committed");
        let groups = match &docs {
            Docs::Choice(d) => request::choice_groups(&tok, t.name(), d),
            Docs::Partial(d) => request::partial_groups(&tok, t.name(), d).map(|(g, _)| g),
            Docs::Lambada(d) => request::lambada_groups(&tok, t.name(), d),
        }
        .expect("fixture documents encode");
        scored += check(&m, &groups);
    }
    // boolq 8, piqa 8, hellaswag 16, winogrande 8, arc_easy 4+4+3+5, arc_challenge 16, obqa 16, lambada 4.
    assert_eq!(scored, 92);
}

#[test]
fn boundary_merge_is_scored_after_the_context_encoding() {
    let (m, tok) = fixture();
    let at = Origin { task: "t", line: 1, id: "0" };
    // "Eliza" + "beth": the whole string encodes differently from "Eliza" followed by "beth".
    let p = request::encode_pair(&tok, "Miss Eliza", "beth Bennet", None, at).expect("encodes");
    assert!(p.merged);
    let g = Group { context: p.context.clone(), continuations: vec![p.continuation.clone()], merges: 1 };
    assert_eq!(check(&m, &[g]), 1);
}

#[test]
fn evaluate_reports_consistent_counts_on_the_fixtures() {
    let (m, tok) = fixture();
    let data = root().join("fixtures/eval");
    for t in Task::ALL {
        let docs = tasks::load_task(&data, t, None).expect("fixture files are committed");
        let r = tasks::evaluate(&m, &tok, t, &docs, &|_, _| {}).expect("scores");
        assert_eq!(r.n, 4);
        // Four 0/1 outcomes: acc is k/4 and its stderr sqrt(p(1-p)/3).
        assert_eq!((r.acc * 4.0).fract(), 0.0);
        let se = (r.acc * (1.0 - r.acc) / 3.0).sqrt();
        assert!((r.acc_stderr.expect("n >= 2") - se).abs() < 1e-12);
        assert_eq!(r.acc_norm.is_some(), !matches!(t, Task::WinoGrande | Task::Lambada));
        assert_eq!(r.ppl.is_some(), t == Task::Lambada);
    }
}
