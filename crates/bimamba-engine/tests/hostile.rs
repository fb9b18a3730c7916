//! Files a user may hand the engine that are not what they should be: every one is either read
//! correctly (Python's spellings of infinity) or refused with an error naming the field or the
//! tensor (absurd sizes, non-finite weights), never a crash or an allocation the size of a config
//! value.

use std::path::{Path, PathBuf};

use bimamba_engine::Model;
use bimamba_formats::{Checkpoint, DType};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures").join(name)
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bimamba-engine-hostile-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A tensor to write: name, dtype, shape, little-endian bytes.
type Tensor = (String, DType, Vec<usize>, Vec<u8>);

/// A copy of fixture `name` whose config.json is `config` and whose weights are `weights`
/// (the fixture's own when `None`).
fn model_dir(name: &str, tag: &str, config: &str, weights: Option<&[Tensor]>) -> PathBuf {
    let d = scratch(tag);
    std::fs::write(d.join("config.json"), config).unwrap();
    match weights {
        None => {
            std::fs::copy(fixture(name).join("model.safetensors"), d.join("model.safetensors")).unwrap();
        }
        Some(w) => {
            let views: Vec<_> = w.iter().map(|(n, t, s, b)| (n.clone(), *t, s.clone(), b.as_slice())).collect();
            bimamba_formats::write_safetensors_atomic(&d.join("model.safetensors"), &views, &Default::default())
                .unwrap();
        }
    }
    d
}

fn logits(dir: &Path) -> Vec<f32> {
    let m = Model::load(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut s = m.new_state();
    m.forward(&mut s, &[1, 5, 9, 2, 7]).unwrap()
}

/// The fixture's config.json text with `time_step_limit` spelled as `limit`.
fn hf_config_with_limit(limit: &str) -> String {
    let text = std::fs::read_to_string(fixture("hf-mamba2-g2").join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v.as_object_mut().unwrap().remove("time_step_limit");
    let rest = v.to_string();
    format!("{{\"time_step_limit\": {limit}, {}", &rest[1..])
}

#[test]
fn python_spellings_of_infinity_give_the_same_model() {
    let want = logits(&model_dir(
        "hf-mamba2-g2",
        "inf-ref",
        &hf_config_with_limit(r#"[0.0, {"__float__": "Infinity"}]"#),
        None,
    ));
    for (i, limit) in
        ["[0.0, Infinity]", r#"[0.0, "Infinity"]"#, r#"[-Infinity, "inf"]"#, r#"[0.0, {"__float__": "inf"}]"#]
            .iter()
            .enumerate()
    {
        let d = model_dir("hf-mamba2-g2", &format!("inf-{i}"), &hf_config_with_limit(limit), None);
        assert_eq!(logits(&d), want, "time_step_limit {limit}");
    }
    // A finite limit is honoured (so the spellings above were read, not ignored).
    let d = model_dir("hf-mamba2-g2", "inf-finite", &hf_config_with_limit("[0.0, 1e-3]"), None);
    assert_ne!(logits(&d), want);
}

#[test]
fn nan_where_a_float_is_expected_is_read_then_refused_by_its_rule() {
    let text = hf_config_with_limit("[0.0, Infinity]")
        .replace("\"layer_norm_epsilon\":0.00001", "\"layer_norm_epsilon\": NaN");
    assert!(text.contains("NaN"), "{text}");
    let d = model_dir("hf-mamba2-g2", "nan-eps", &text, None);
    let e = Model::load(&d).unwrap_err().to_string();
    assert!(e.contains("layer_norm_epsilon") && e.contains("NaN") && !e.contains("JSON"), "{e}");
    let d = model_dir("hf-mamba2-g2", "nan-limit", &hf_config_with_limit("[NaN, Infinity]"), None);
    let e = Model::load(&d).unwrap_err().to_string();
    assert!(e.contains("time_step_limit"), "{e}");
    // Inside a string the words are text, not numbers.
    let text = hf_config_with_limit("[0.0, Infinity]").replace("\"silu\"", "\"NaN Infinity\"");
    let d = model_dir("hf-mamba2-g2", "nan-string", &text, None);
    let e = Model::load(&d).unwrap_err().to_string();
    assert!(e.contains("hidden_act") && e.contains("\"NaN Infinity\""), "{e}");
}

fn ss_config(edit: impl Fn(&mut serde_json::Value)) -> String {
    let text = std::fs::read_to_string(fixture("ss-bimamba-col").join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(&mut v);
    v.to_string()
}

#[test]
fn absurd_sizes_are_refused_before_anything_is_allocated() {
    let cases: [(&str, &str, serde_json::Value, &str); 6] = [
        ("n_layer", "/n_layer", 1_000_000_000u64.into(), "n_layer = 1000000000"),
        ("d_model", "/d_model", 100_000u64.into(), "backbone.embedding.weight"),
        ("d_model_overflow", "/d_model", (u64::MAX / 2).into(), "too large"),
        ("vocab", "/vocab_size", u64::MAX.into(), "overflows"),
        ("d_state", "/ssm_cfg/d_state", (u64::MAX / 3).into(), "too large"),
        ("expand", "/ssm_cfg/expand", (1u64 << 62).into(), "too large"),
    ];
    for (tag, pointer, value, needle) in cases {
        let cfg = ss_config(|v| *v.pointer_mut(pointer).unwrap_or_else(|| panic!("{pointer}")) = value.clone());
        let d = model_dir("ss-bimamba-col", tag, &cfg, None);
        let e = Model::load(&d).expect_err(tag).to_string();
        assert!(e.contains(needle), "{tag}: {e}");
    }
}

/// The fixture's tensors with `name`'s element 3 set to `value`.
fn poisoned(name: &str, value: f32) -> Vec<Tensor> {
    let src = Checkpoint::open(&fixture("ss-bimamba-col").join("model.safetensors")).unwrap();
    let mut found = false;
    let out = src
        .tensors()
        .into_iter()
        .map(|i| {
            let mut bytes = src.bytes(&i.name).unwrap().to_vec();
            if i.name == name {
                found = true;
                match i.dtype {
                    DType::F32 => bytes[12..16].copy_from_slice(&value.to_le_bytes()),
                    DType::F16 => bytes[6..8].copy_from_slice(&half::f16::from_f32(value).to_le_bytes()),
                    DType::BF16 => bytes[6..8].copy_from_slice(&half::bf16::from_f32(value).to_le_bytes()),
                    other => panic!("{name} is {other:?}"),
                }
            }
            (i.name.clone(), i.dtype, i.shape.clone(), bytes)
        })
        .collect();
    assert!(found, "{name} is in the fixture");
    out
}

#[test]
fn non_finite_weights_are_refused_with_the_tensor_name() {
    let cfg = std::fs::read_to_string(fixture("ss-bimamba-col").join("config.json")).unwrap();
    let names = [
        "backbone.embedding.weight",
        "backbone.layers.0.norm.weight",
        "backbone.layers.1.mixer.A_log",
        "backbone.layers.0.mixer.conv1d.weight",
        "backbone.layers.0.mixer.in_proj.weight",
        "backbone.layers.0.mixer.in_proj.wscale",
        "backbone.layers.1.mixer.out_proj.wbias",
        "backbone.norm_f.weight",
    ];
    for (i, name) in names.iter().enumerate() {
        for (j, value) in [f32::NAN, f32::INFINITY].into_iter().enumerate() {
            let d = model_dir("ss-bimamba-col", &format!("nan-{i}-{j}"), &cfg, Some(&poisoned(name, value)));
            let e = Model::load(&d).expect_err(name).to_string();
            assert!(e.contains(name) && e.contains("non-finite"), "{name} = {value}: {e}");
        }
    }
}
