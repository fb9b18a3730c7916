//! `Model::step_batch` against `Model::step` on each sequence alone: several sequences at
//! different positions (different histories, f32 and bf16 states mixed), several steps, on the
//! reference fixtures (dense and 1-bit projections, G = 1 and 2) and the shipped default model.

use std::path::{Path, PathBuf};

use bimamba_engine::{Model, State, StateDtype};

/// Named budget: max |batched − alone| / max |alone| over a step's logits. The block product
/// may order a row's f32 sums differently from the one-row product (the same bound as prefill
/// against single steps, 1e-5); the recurrence itself is the same per sequence.
const BATCH_REL_ERR: f64 = 1e-5;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
    let diff = got.iter().zip(want).fold(0.0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
    diff / scale.max(f64::MIN_POSITIVE)
}

/// Sequences with histories of 0, 1, 5 and 70 tokens (70 crosses a prefill block).
fn histories(model: &Model) -> Vec<State> {
    let vocab = model.vocab_size() as u32;
    [0usize, 1, 5, 70]
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let mut s = model.new_state();
            let toks: Vec<u32> = (0..len as u32).map(|k| (k * 31 + i as u32 * 7 + 3) % vocab).collect();
            model.forward(&mut s, &toks).expect("in vocabulary");
            s
        })
        .collect()
}

fn check(model: &Model, name: &str) {
    let vocab = model.vocab_size();
    let mut alone = histories(model);
    let mut batched = alone.clone();
    for step in 0..4u32 {
        let tokens: Vec<u32> = (0..alone.len() as u32).map(|i| (step * 13 + i * 101 + 1) % vocab as u32).collect();
        let mut refs: Vec<&mut State> = batched.iter_mut().collect();
        let got = model.step_batch(&mut refs, &tokens).expect("in vocabulary");
        assert_eq!(got.len(), tokens.len() * vocab);
        for (i, (s, &t)) in alone.iter_mut().zip(&tokens).enumerate() {
            let want = model.step(s, t).expect("in vocabulary");
            let e = rel_err(&got[i * vocab..(i + 1) * vocab], &want);
            assert!(e <= BATCH_REL_ERR, "{name}: step {step}, sequence {i}: rel err {e:.2e}");
        }
    }
    for (i, (a, b)) in batched.iter().zip(&alone).enumerate() {
        assert_eq!(a.position, b.position, "{name}: sequence {i}");
        for (l, (la, lb)) in a.layers.iter().zip(&b.layers).enumerate() {
            let e = rel_err(&la.ssm.to_f32(), &lb.ssm.to_f32());
            assert!(e <= 1e-4, "{name}: sequence {i}, layer {l}: SSM state rel err {e:.2e}");
            let e = rel_err(&la.conv, &lb.conv);
            assert!(e <= 1e-5, "{name}: sequence {i}, layer {l}: conv window rel err {e:.2e}");
        }
    }
}

#[test]
fn step_batch_matches_single_steps_on_the_fixtures() {
    for name in ["ss-mamba2-g1", "hf-mamba2-g2", "ss-bimamba-col", "ss-bimamba-row"] {
        let model = Model::load(&repo("fixtures").join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        check(&model, name);
    }
}

#[test]
fn step_batch_matches_single_steps_on_the_default_model() {
    let model = Model::load(&repo("models/default")).expect("models/default");
    check(&model, "models/default");
    // With fewer sequences (4) than threads the step splits each sequence's conv and heads over
    // tasks; with at least as many it runs each sequence as one task. Both, whatever this
    // machine's thread count.
    for threads in [1, 8] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
        pool.install(|| check(&model, &format!("models/default, {threads} threads")));
    }
}

#[test]
fn step_batch_mixes_state_dtypes_and_checks_tokens() {
    let mut model = Model::load(&repo("fixtures/ss-bimamba-col")).expect("fixture");
    let f32_state = model.new_state();
    model.set_state_dtype(StateDtype::Bf16);
    let bf16_state = model.new_state();
    let mut alone = vec![f32_state, bf16_state];
    let mut batched = alone.clone();
    let mut refs: Vec<&mut State> = batched.iter_mut().collect();
    let got = model.step_batch(&mut refs, &[5, 9]).expect("in vocabulary");
    let vocab = model.vocab_size();
    for (i, (s, t)) in alone.iter_mut().zip([5, 9]).enumerate() {
        let want = model.step(s, t).expect("in vocabulary");
        assert!(rel_err(&got[i * vocab..(i + 1) * vocab], &want) <= BATCH_REL_ERR, "sequence {i}");
    }
    assert_eq!(batched[1].dtype(), StateDtype::Bf16);

    let before = batched.clone();
    let mut refs: Vec<&mut State> = batched.iter_mut().collect();
    let err = model.step_batch(&mut refs, &[1, vocab as u32]).unwrap_err().to_string();
    assert!(err.contains("outside the model's vocabulary"), "{err}");
    assert_eq!(batched, before, "a refused batch leaves every state unchanged");
    assert!(model.step_batch(&mut [], &[]).expect("empty batch").is_empty());
}
