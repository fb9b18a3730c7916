//! The engine against implementations nobody here wrote: transformers' `Mamba2ForCausalLM` and a
//! float64 NumPy recurrence from ARCHITECTURE.md §1.2 (see fixtures/README.md and scripts/make_fixtures.py).
//! Four checkpoints in both dialects and both file types, f32/f16/bf16, ngroups 1 and 2, and
//! Bi-Mamba in the column and row patterns.

use std::path::{Path, PathBuf};

use bimamba_engine::{Model, State, StateDtype};
use bimamba_formats::Checkpoint;

/// Named error budget: f32 engine arithmetic against float64 references.
const MAX_REL_ERR: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures").join(name)
}

struct Reference {
    ckpt: Checkpoint,
}

impl Reference {
    fn open(name: &str) -> Reference {
        let ckpt = Checkpoint::open(&fixture(name).join("reference.safetensors")).expect("reference.safetensors");
        Reference { ckpt }
    }
    fn f64(&self, name: &str) -> Vec<f64> {
        let b = self.ckpt.bytes(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        match self.ckpt.info(name).map(|i| i.dtype) {
            Some(bimamba_formats::DType::F64) => {
                b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()
            }
            _ => self.ckpt.to_f32(name).unwrap().into_iter().map(f64::from).collect(),
        }
    }
    fn tokens(&self, name: &str) -> Vec<u32> {
        self.f64_i64(name).into_iter().map(|v| v as u32).collect()
    }
    fn f64_i64(&self, name: &str) -> Vec<i64> {
        let b = self.ckpt.bytes(name).unwrap();
        b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
    }
}

/// max |a − b| / max |b| over the whole array.
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let diff = got.iter().zip(want).fold(0.0f64, |m, (a, b)| m.max((*a as f64 - b).abs()));
    diff / scale
}

fn check_fixture(name: &str, compare_hf: bool) {
    let model = Model::load(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let r = Reference::open(name);
    let tokens = r.tokens("tokens");
    let want = r.f64("logits_ref");

    // Full sequence (prefill).
    let mut state = model.new_state();
    let full = model.forward(&mut state, &tokens).unwrap();
    let e_full = rel_err(&full, &want);
    eprintln!("{name}: prefill vs float64 reference: rel err {e_full:.2e}");
    assert!(e_full <= MAX_REL_ERR, "{name}: prefill logits vs float64 reference: rel err {e_full:.2e}");
    if compare_hf {
        let e_hf = rel_err(&full, &r.f64("logits_hf"));
        assert!(e_hf <= MAX_REL_ERR, "{name}: prefill logits vs transformers: rel err {e_hf:.2e}");
    }

    // Step by step (decode).
    let mut stepped_state = model.new_state();
    let mut stepped = Vec::new();
    for &t in &tokens {
        stepped.extend(model.step(&mut stepped_state, t).unwrap());
    }
    let e_step = rel_err(&stepped, &want);
    assert!(e_step <= MAX_REL_ERR, "{name}: step logits vs float64 reference: rel err {e_step:.2e}");
    if compare_hf {
        let e = rel_err(&stepped, &r.f64("logits_hf_step"));
        assert!(e <= MAX_REL_ERR, "{name}: step logits vs transformers stepping: rel err {e:.2e}");
    }

    // Prefilling N tokens leaves the state that N single steps leave, and the reference's.
    for (l, (a, b)) in state.layers.iter().zip(&stepped_state.layers).enumerate() {
        let ssm_ref = r.f64(&format!("ssm_state.{l}"));
        let conv_ref = r.f64(&format!("conv_state.{l}"));
        let (a_ssm, b_ssm) = (a.ssm.to_f32(), b.ssm.to_f32());
        let (a_conv, b_conv) = (a.conv_channel_major(model.config.d_conv), b.conv_channel_major(model.config.d_conv));
        for (what, got, other, want) in [("ssm", &a_ssm, &b_ssm, &ssm_ref), ("conv", &a_conv, &b_conv, &conv_ref)] {
            let e = rel_err(got, want);
            assert!(e <= MAX_REL_ERR, "{name}: layer {l} {what} state after prefill vs reference: {e:.2e}");
            let e2 = rel_err(other, &got.iter().map(|&v| v as f64).collect::<Vec<_>>());
            assert!(e2 <= 1e-5, "{name}: layer {l} {what} state, prefill vs steps: {e2:.2e}");
        }
    }
    assert_eq!(state.position, tokens.len());

    // Prefill in two uneven blocks continues exactly where the first left off.
    let mut split = model.new_state();
    let mut two = model.forward(&mut split, &tokens[..11]).unwrap();
    two.extend(model.forward(&mut split, &tokens[11..]).unwrap());
    let e_split = rel_err(&two, &want);
    assert!(e_split <= MAX_REL_ERR, "{name}: prefill in two blocks: rel err {e_split:.2e}");

    // Greedy continuation equals the reference's.
    let prompt = r.tokens("greedy_prompt");
    let expect = r.tokens("greedy_tokens");
    let mut st = model.new_state();
    let mut logits = model.forward_last(&mut st, &prompt).unwrap();
    let mut got = Vec::new();
    for _ in 0..expect.len() {
        let next = bimamba_lm::sampling::argmax(&logits) as u32;
        got.push(next);
        logits = model.step(&mut st, next).unwrap();
    }
    assert_eq!(got, expect, "{name}: greedy continuation");
}

#[test]
fn state_spaces_pytorch_bin_f32_ngroups1() {
    check_fixture("ss-mamba2-g1", true);
}

/// transformers normalizes the gated RMSNorm over all of d_inner; mamba_ssm (and ARCHITECTURE.md §1.2) per
/// group, so for ngroups 2 only the float64 reference is authoritative.
#[test]
fn transformers_safetensors_bf16_ngroups2() {
    check_fixture("hf-mamba2-g2", false);
    let r = Reference::open("hf-mamba2-g2");
    let model = Model::load(&fixture("hf-mamba2-g2")).unwrap();
    let mut s = model.new_state();
    let full = model.forward(&mut s, &r.tokens("tokens")).unwrap();
    let e = rel_err(&full, &r.f64("logits_hf_groupnorm"));
    assert!(e <= MAX_REL_ERR, "vs transformers with the per-group norm: {e:.2e}");
}

#[test]
fn bimamba_column_pattern_safetensors() {
    check_fixture("ss-bimamba-col", true);
    let model = Model::load(&fixture("ss-bimamba-col")).unwrap();
    assert!(model.layers.iter().all(|l| l.mixer.in_proj.is_binary() && l.mixer.out_proj.is_binary()));
}

#[test]
fn bimamba_row_pattern_pytorch_bin_f16() {
    check_fixture("ss-bimamba-row", true);
}

#[test]
fn state_save_and_restore() {
    let model = Model::load(&fixture("ss-mamba2-g1")).unwrap();
    let r = Reference::open("ss-mamba2-g1");
    let tokens = r.tokens("tokens");
    let mut s = model.new_state();
    model.forward(&mut s, &tokens[..20]).unwrap();
    let dir = std::env::temp_dir().join(format!("bimamba-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("state.safetensors");
    s.save(&model.config, &path).unwrap();
    let mut restored = State::load(&model.config, StateDtype::F32, &path).unwrap();
    assert_eq!(restored, s);
    let a = model.forward(&mut s, &tokens[20..]).unwrap();
    let b = model.forward(&mut restored, &tokens[20..]).unwrap();
    assert_eq!(a, b);
    // A state of another model is refused with the tensor's name and both shapes.
    let other = Model::load(&fixture("hf-mamba2-g2")).unwrap();
    let err = State::load(&other.config, StateDtype::F32, &path).unwrap_err().to_string();
    assert!(err.contains("layers.0.conv") && err.contains("expected"), "{err}");
}
