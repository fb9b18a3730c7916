//! AnyModel against the engines it wraps: the same logits, states kept apart, settings refused
//! by kind, the right tokenizer for each.

use std::path::{Path, PathBuf};

use bimamba_engine::linear::BinaryAct;
use bimamba_engine::{Model, StateDtype};
use bimamba_llama::testing::{tiny_llama_gguf, tmp_path};
use bimamba_llama::{Activations, LlamaModel};
use bimamba_lm::{LanguageModel, ModelError};

use crate::{AnyModel, ModelKind, OpenError, Settings};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures").join(name)
}

fn tiny_gguf(tag: &str) -> PathBuf {
    let p = tmp_path(&format!("models-{tag}"));
    std::fs::write(&p, tiny_llama_gguf(11)).expect("the temp dir is writable");
    p
}

const TOKENS: [u32; 6] = [5, 17, 3, 42, 8, 1];

#[test]
fn kinds_are_told_apart_by_content() {
    let gguf = tiny_gguf("kind");
    assert_eq!(ModelKind::of(&gguf).unwrap(), ModelKind::Llama);
    assert_eq!(ModelKind::of(&fixture("ss-mamba2-g1")).unwrap(), ModelKind::Mamba);
    // A file that is not GGUF is left to the Mamba loader, which names what is wrong.
    let other = fixture("ss-mamba2-g1").join("config.json");
    assert_eq!(ModelKind::of(&other).unwrap(), ModelKind::Mamba);
    assert!(matches!(AnyModel::open(&other), Err(OpenError::Model(_))));
}

#[test]
fn a_mamba_directory_gives_the_engines_logits() {
    let dir = fixture("ss-bimamba-col");
    // A loaded engine model runs the exact arithmetic; so does AnyModel when asked.
    let any = AnyModel::open_with(&dir, &Settings::exact()).unwrap();
    assert_eq!(any.kind(), ModelKind::Mamba);
    let m = Model::load(&dir).unwrap();
    let want = m.forward(&mut m.new_state(), &TOKENS).unwrap();
    assert_eq!(any.forward(&mut any.new_state(), &TOKENS).unwrap(), want);
    let v = any.vocab_size();
    assert_eq!(any.forward_last(&mut any.new_state(), &TOKENS).unwrap(), want[want.len() - v..]);
    let mut state = any.new_state();
    any.forward(&mut state, &TOKENS[..2]).unwrap();
    let mut own = m.new_state();
    m.forward(&mut own, &TOKENS[..2]).unwrap();
    let branches = [&TOKENS[2..], &TOKENS[4..]];
    assert_eq!(any.forward_branches(&state, &branches).unwrap(), m.forward_branches(&own, &branches).unwrap());
}

#[test]
fn a_gguf_file_gives_the_engines_logits_and_its_own_tokenizer() {
    let path = tiny_gguf("logits");
    for act in [Activations::F32, Activations::Q8] {
        let any = AnyModel::open_with(&path, &Settings { gguf_act: act, ..Settings::default() }).unwrap();
        assert_eq!(any.kind(), ModelKind::Llama);
        let m = LlamaModel::load_with(&path, act).unwrap();
        let want = m.forward(&mut m.new_cache(), &TOKENS).unwrap();
        assert_eq!(any.forward(&mut any.new_state(), &TOKENS).unwrap(), want, "{act}");
        let mut state = any.new_state();
        any.forward(&mut state, &TOKENS[..3]).unwrap();
        let mut cache = m.new_cache();
        m.forward(&mut cache, &TOKENS[..3]).unwrap();
        let branches = [&TOKENS[3..], &TOKENS[5..]];
        assert_eq!(any.forward_branches(&state, &branches).unwrap(), m.forward_branches(&cache, &branches).unwrap());

        let tok = any.open_tokenizer(&path, None).unwrap();
        assert_eq!(tok.path(), path);
        // The GGUF names end of sequence id 0; the tokenizer finds the same, so it stops once.
        assert_eq!(any.stop_tokens(&tok), vec![0]);
    }
}

#[test]
fn a_state_of_the_other_engine_is_an_error() {
    let mamba = AnyModel::open(&fixture("ss-mamba2-g1")).unwrap();
    let llama = AnyModel::open(&tiny_gguf("state")).unwrap();
    let err = mamba.forward(&mut llama.new_state(), &TOKENS).unwrap_err();
    assert!(matches!(err, ModelError::StateKind { model: "Mamba-2", state: "LLaMA" }), "{err}");
    assert!(llama.forward_branches(&mamba.new_state(), &[&TOKENS]).is_err());
}

#[test]
fn settings_apply_to_their_kind_only() {
    let dir = fixture("ss-bimamba-col");
    let gguf = tiny_gguf("settings");
    let q8 = Settings { gguf_act: Activations::Q8, ..Settings::default() };
    let bf16 = Settings { state_dtype: Some(StateDtype::Bf16), ..Settings::default() };
    let int8 = Settings { binary_act: Some(BinaryAct::Int8), ..Settings::default() };

    let e = q8.check(ModelKind::Mamba, &dir).unwrap_err();
    assert_eq!(e.setting, "gguf_act");
    assert!(e.to_string().starts_with("gguf_act q8: ") && e.to_string().contains("not a .gguf model"), "{e}");
    for (s, name) in [(bf16, "state_dtype"), (int8, "binary_act")] {
        let e = s.check(ModelKind::Llama, &gguf).unwrap_err();
        assert_eq!(e.setting, name);
        assert!(matches!(AnyModel::open_with(&gguf, &s), Err(OpenError::Setting(_))));
        assert!(s.check(ModelKind::Mamba, &dir).is_ok());
    }
    assert!(matches!(AnyModel::open_with(&dir, &q8), Err(OpenError::Setting(_))));
    // The defaults and the exact arithmetic apply to both kinds.
    for s in [Settings::default(), Settings::exact()] {
        assert!(s.check(ModelKind::Llama, &gguf).is_ok() && s.check(ModelKind::Mamba, &dir).is_ok());
    }

    // Applied: the state is stored in bf16, the 1-bit products take int8 activations.
    let AnyModel::Mamba(m) =
        AnyModel::open_with(&dir, &Settings { binary_act: Some(BinaryAct::Int8), ..bf16 }).unwrap()
    else {
        panic!("a directory opens as Mamba");
    };
    assert_eq!(m.new_state().dtype(), StateDtype::Bf16);
    assert_eq!(m.binary_act, BinaryAct::Int8);
}

#[test]
fn the_defaults_are_fast_and_exact_is_f32() {
    let dir = fixture("ss-bimamba-col");
    let AnyModel::Mamba(fast) = AnyModel::open(&dir).unwrap() else { panic!("a directory opens as Mamba") };
    assert_eq!(fast.new_state().dtype(), StateDtype::Bf16);
    assert_eq!(fast.binary_act, BinaryAct::fastest());
    let AnyModel::Mamba(exact) = AnyModel::open_with(&dir, &Settings::exact()).unwrap() else {
        panic!("a directory opens as Mamba")
    };
    assert_eq!(exact.new_state().dtype(), StateDtype::F32);
    assert_eq!(exact.binary_act, BinaryAct::F32);
    // A choice that is set wins over `exact`.
    let s = Settings { state_dtype: Some(StateDtype::Bf16), ..Settings::exact() };
    assert_eq!((s.state_dtype(), s.binary_act()), (StateDtype::Bf16, BinaryAct::F32));
}

#[test]
fn a_tokenizer_larger_than_the_embedding_is_refused() {
    let dir = fixture("ss-mamba2-g1");
    let any = AnyModel::open(&dir).unwrap();
    assert!(any.open_tokenizer(&dir, None).is_ok());
    // The GGUF's tokenizer has fewer entries than this model's rows, the reverse is refused.
    let gguf = tiny_gguf("vocab");
    let llama = AnyModel::open(&gguf).unwrap();
    let Err(err) = llama.open_tokenizer(&gguf, Some(&dir.join("tokenizer.json"))) else {
        panic!("a 451-entry tokenizer on a 268-row model is refused");
    };
    let msg = err.to_string();
    assert!(msg.contains("tokenizer.json") && msg.contains("embedding rows"), "{msg}");
}
