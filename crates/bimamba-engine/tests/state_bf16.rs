//! The bf16 SSM state (the default of the commands) against the f32 state on the reference
//! fixtures: prefill and step-by-step logits within a named budget, the prefill state (rounded
//! once per block) and the step state (rounded every token) within their budgets of the f32
//! state, and save/load recording the dtype.

use std::path::{Path, PathBuf};

use bimamba_engine::{Model, State, StateDtype};
use bimamba_formats::Checkpoint;

/// Named error budget: max |logit_bf16 − logit_f32| / max |logit_f32| over a fixture sequence.
///
/// Why 1e-2: each stored state entry is rounded to bf16 once per token, a relative error of at
/// most 2⁻⁸ = 3.9e-3 (bf16's unit roundoff). The decay exp(dt·A) < 1 damps earlier roundings, so
/// an entry's accumulated error stays within a few roundings; the readout Σ_n S·C then mixes
/// d_state such errors of random sign, and the residual stream adds the (unrounded) skip path, so
/// the logits move by less than one rounding relative to their largest value. Measured on these
/// fixtures (37 tokens): 2.5e-4 to 1.1e-3 (printed with --nocapture); the budget is about 10x the
/// worst, 2.5x one bf16 rounding, and 100x the f32 path's 1e-4 against float64.
const BF16_STATE_REL_ERR: f64 = 1e-2;

/// Named budget: max |S_steps − S_f32| / max |S_f32| for a state rounded to bf16 after every one
/// of the fixtures' 37 tokens. Each rounding moves an entry by at most half a bf16 step (2⁻⁹
/// relative); with decays near 1 they accumulate like a random walk, √37 · 2⁻⁹ ≈ 3 half-steps
/// expected. Measured up to 1.3e-2 (3.3 steps of 2⁻⁸); budget 8 steps.
const BF16_STEPS_STATE_DRIFT: f64 = 8.0 / 256.0;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures").join(name)
}

fn tokens(name: &str) -> Vec<u32> {
    let ckpt = Checkpoint::open(&fixture(name).join("reference.safetensors")).expect("reference.safetensors");
    let b = ckpt.bytes("tokens").expect("tokens");
    b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as u32).collect()
}

/// max |a − b| / max |b|.
fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
    let diff = got.iter().zip(want).fold(0.0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
    diff / scale
}

#[test]
fn bf16_state_logits_stay_close_to_f32_state() {
    for name in ["ss-mamba2-g1", "hf-mamba2-g2", "ss-bimamba-col", "ss-bimamba-row"] {
        let mut model = Model::load(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let toks = tokens(name);
        let want = model.forward(&mut model.new_state(), &toks).expect("in vocabulary");

        model.set_state_dtype(StateDtype::Bf16);
        let mut s_pre = model.new_state();
        assert_eq!(s_pre.dtype(), StateDtype::Bf16);
        let prefill = model.forward(&mut s_pre, &toks).expect("in vocabulary");
        let mut s_step = model.new_state();
        let mut stepped = Vec::new();
        for &t in &toks {
            stepped.extend(model.step(&mut s_step, t).expect("in vocabulary"));
        }
        let (e_pre, e_step) = (rel_err(&prefill, &want), rel_err(&stepped, &want));
        eprintln!("{name}: bf16 state vs f32 state, {} tokens: prefill {e_pre:.2e}, steps {e_step:.2e}", toks.len());
        assert!(e_pre <= BF16_STATE_REL_ERR, "{name}: prefill rel err {e_pre:.2e}");
        assert!(e_step <= BF16_STATE_REL_ERR, "{name}: step rel err {e_step:.2e}");
        // Prefill widens the state to f32 for a block (up to 64 tokens: all of these) and
        // rounds it once at the end: its state is the f32 state rounded once, within one bf16
        // step (2⁻⁸ relative) plus the fused scan's f32 rounding. Steps round after every token,
        // and those roundings add up along the sequence (decays near 1 keep them): budget
        // BF16_STEPS_STATE_DRIFT of the f32 state.
        let mut s_f32 = State::with_dtype(&model.config, StateDtype::F32);
        model.set_state_dtype(StateDtype::F32);
        model.forward(&mut s_f32, &toks).expect("in vocabulary");
        for (l, ((a, b), f)) in s_pre.layers.iter().zip(&s_step.layers).zip(&s_f32.layers).enumerate() {
            let f = f.ssm.to_f32();
            let (e_pre, e_step) = (rel_err(&a.ssm.to_f32(), &f), rel_err(&b.ssm.to_f32(), &f));
            assert!(e_pre <= 1.0 / 256.0, "{name}: layer {l}: prefill bf16 state vs f32 state: {e_pre:.2e}");
            assert!(e_step <= BF16_STEPS_STATE_DRIFT, "{name}: layer {l}: step bf16 state vs f32 state: {e_step:.2e}");
        }
        let e = rel_err(&prefill, &stepped);
        assert!(e <= BF16_STATE_REL_ERR, "{name}: prefill vs step logits: {e:.2e}");
    }
}

#[test]
fn bf16_state_halves_the_ssm_bytes() {
    let model = Model::load(&fixture("ss-mamba2-g1")).expect("fixture");
    let c = &model.config;
    let f = State::with_dtype(c, StateDtype::F32);
    let b = State::with_dtype(c, StateDtype::Bf16);
    let ssm = c.n_layer * c.nheads * c.headdim * c.d_state;
    assert_eq!(f.bytes() - b.bytes(), 2 * ssm);
    assert_eq!(f, State::new(c), "f32 stays the default");
}

#[test]
fn saved_state_records_its_dtype_and_refuses_a_mismatch() {
    let mut model = Model::load(&fixture("ss-mamba2-g1")).expect("fixture");
    model.set_state_dtype(StateDtype::Bf16);
    let toks = tokens("ss-mamba2-g1");
    let mut s = model.new_state();
    model.forward(&mut s, &toks[..20]).expect("in vocabulary");
    let dir = std::env::temp_dir().join(format!("bimamba-state-bf16-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("state.safetensors");
    s.save(&model.config, &path).expect("save");
    let mut restored = State::load(&model.config, StateDtype::Bf16, &path).expect("load");
    assert_eq!(restored, s);
    let a = model.forward(&mut s, &toks[20..]).expect("in vocabulary");
    let b = model.forward(&mut restored, &toks[20..]).expect("in vocabulary");
    assert_eq!(a, b);
    let err = State::load(&model.config, StateDtype::F32, &path).unwrap_err().to_string();
    assert!(err.contains("saved in bf16") && err.contains("--state-dtype bf16") && !err.contains('\n'), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
