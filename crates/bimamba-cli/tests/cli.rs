//! End-to-end checks of the `bimamba` binary on the reference fixtures, and of what a user's
//! mistakes produce: one clear line naming the file/tensor/field, a non-zero exit, no panic.

use std::path::{Path, PathBuf};

use bimamba_formats::Checkpoint;

mod common;
use common::{assert_user_error, bimamba, root, scratch};

fn tmp(name: &str) -> PathBuf {
    scratch("cli", name)
}

fn fixture(name: &str) -> PathBuf {
    root().join("fixtures").join(name)
}

/// Copies a fixture model directory (config, weights, tokenizer) to a scratch place.
fn copy_model(name: &str, to: &Path) {
    for f in ["config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json"] {
        let src = fixture(name).join(f);
        if src.exists() {
            std::fs::copy(&src, to.join(f)).unwrap();
        }
    }
}

fn reference_json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("reference.json")).unwrap()).unwrap()
}

fn reference_ids(name: &str, tensor: &str) -> Vec<u32> {
    let c = Checkpoint::open(&fixture(name).join("reference.safetensors")).unwrap();
    c.bytes(tensor).unwrap().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32).collect()
}

#[test]
fn eval_ppl_matches_the_reference_on_every_fixture() {
    let text = root().join("fixtures/text/pride_excerpt_short.txt");
    for name in ["ss-mamba2-g1", "hf-mamba2-g2", "ss-bimamba-col", "ss-bimamba-row"] {
        let dir = fixture(name);
        let o = bimamba(&[
            "eval",
            "ppl",
            "--model",
            dir.to_str().unwrap(),
            "--text",
            text.to_str().unwrap(),
            "--seq-len",
            "32",
            "--json",
            "--exact",
        ]);
        assert_eq!(o.code, 0, "{name}: {}", o.stderr);
        let got: serde_json::Value = serde_json::from_str(o.stdout.trim()).unwrap();
        let want = &reference_json(name)["ppl"];
        assert_eq!(got["tokens"], want["tokens"], "{name}");
        assert_eq!(got["windows"], want["windows"], "{name}");
        let (g, w) = (got["ppl"].as_f64().unwrap(), want["ppl"].as_f64().unwrap());
        assert!((g - w).abs() / w < 1e-4, "{name}: ppl {g} vs reference {w}");
        assert!(got["bits_per_byte"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn generate_greedy_matches_the_reference_continuation() {
    for name in ["ss-mamba2-g1", "ss-bimamba-col", "ss-bimamba-row"] {
        let dir = fixture(name);
        let tok = bimamba_text::Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
        let prompt_ids = reference_ids(name, "greedy_prompt");
        let expect_ids = reference_ids(name, "greedy_tokens");
        let prompt = tok.decode(&prompt_ids).unwrap();
        assert_eq!(tok.encode(&prompt).unwrap(), prompt_ids, "{name}: the prompt round-trips through the tokenizer");
        let n = expect_ids.len().to_string();
        let o = bimamba(&[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            &prompt,
            "--greedy",
            "--max-tokens",
            &n,
            "--exact",
        ]);
        assert_eq!(o.code, 0, "{name}: {}", o.stderr);
        let eos = tok.eos_id();
        let until_eos: Vec<u32> = expect_ids.iter().copied().take_while(|&t| Some(t) != eos).collect();
        let want = tok.decode(&until_eos).unwrap();
        assert_eq!(o.stdout.trim_end_matches('\n'), want, "{name}");
        assert!(o.stderr.contains("tok/s"), "{name}: speed on stderr: {}", o.stderr);
    }
}

#[test]
fn info_describes_a_bimamba_model() {
    let o = bimamba(&["info", "--model", fixture("ss-bimamba-col").to_str().unwrap(), "--json"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(o.stdout.trim()).unwrap();
    assert_eq!(v["n_layer"], 2);
    assert!(v["params_binary"].as_u64().unwrap() > 0);
    let pbw = v["projection_bits_per_weight"].as_f64().unwrap();
    assert!(pbw > 1.0 && pbw < 2.0, "1 bit + scales per projection weight, got {pbw}");
}

#[test]
fn user_mistakes_get_one_clear_line() {
    let text = root().join("fixtures/text/pride_excerpt_short.txt");
    let text = text.to_str().unwrap();

    // Missing model directory.
    let o = bimamba(&["eval", "ppl", "--model", "/nonexistent/model", "--text", text]);
    assert_user_error(&o, &["/nonexistent/model"]);

    // Model directory without weights.
    let d = tmp("noweights");
    std::fs::copy(fixture("ss-mamba2-g1").join("config.json"), d.join("config.json")).unwrap();
    let o = bimamba(&["info", "--model", d.to_str().unwrap()]);
    assert_user_error(&o, &[d.to_str().unwrap()]);

    // Truncated safetensors.
    let d = tmp("truncated");
    copy_model("ss-bimamba-col", &d);
    let w = std::fs::read(d.join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &w[..w.len() / 2]).unwrap();
    let o = bimamba(&["info", "--model", d.to_str().unwrap()]);
    assert_user_error(&o, &["model.safetensors"]);

    // Corrupt pickle inside pytorch_model.bin.
    let d = tmp("corruptpickle");
    copy_model("ss-mamba2-g1", &d);
    let mut b = std::fs::read(d.join("pytorch_model.bin")).unwrap();
    let at = b.windows(8).position(|w| w == b"data.pkl").expect("data.pkl entry") + 200;
    for x in &mut b[at..at + 64] {
        *x = 0xEE;
    }
    std::fs::write(d.join("pytorch_model.bin"), &b).unwrap();
    let o = bimamba(&["info", "--model", d.to_str().unwrap()]);
    assert_user_error(&o, &["pytorch_model.bin"]);

    // A tensor with the wrong shape: the error names the tensor and both shapes.
    let d = tmp("wrongshape");
    copy_model("ss-bimamba-col", &d);
    let src = Checkpoint::open(&fixture("ss-bimamba-col").join("model.safetensors")).unwrap();
    let infos: Vec<_> = src.tensors().into_iter().cloned().collect();
    let tensors: Vec<(String, bimamba_formats::DType, Vec<usize>, &[u8])> = infos
        .iter()
        .map(|i| {
            let mut shape = i.shape.clone();
            if i.name == "backbone.layers.1.mixer.D" {
                shape = vec![2, shape[0] / 2];
            }
            (i.name.clone(), i.dtype, shape, src.bytes(&i.name).unwrap())
        })
        .collect();
    bimamba_formats::write_safetensors_atomic(&d.join("model.safetensors"), &tensors, &Default::default()).unwrap();
    let o = bimamba(&["info", "--model", d.to_str().unwrap()]);
    assert_user_error(&o, &["backbone.layers.1.mixer.D", "[2, 4]", "[8]"]);

    // A config the engine does not support names the field.
    let d = tmp("badconfig");
    copy_model("ss-mamba2-g1", &d);
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap().replace("\"Mamba2\"", "\"Mamba1\"");
    std::fs::write(d.join("config.json"), cfg).unwrap();
    let o = bimamba(&["generate", "--model", d.to_str().unwrap(), "--prompt", "Hello"]);
    assert_user_error(&o, &["config.json", "ssm_cfg.layer", "Mamba1"]);

    // A tokenizer with more entries than the model has embedding rows.
    let d = tmp("bigtok");
    let mut tj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("ss-mamba2-g1").join("tokenizer.json")).unwrap())
            .unwrap();
    let vocab = tj["model"]["vocab"].as_object_mut().unwrap();
    let n = vocab.len();
    for k in 0..40 {
        vocab.insert(format!("zzextra{k}"), serde_json::Value::from(n + k));
    }
    let big = d.join("big.json");
    std::fs::write(&big, tj.to_string()).unwrap();
    let m = fixture("ss-mamba2-g1");
    let o =
        bimamba(&["generate", "--model", m.to_str().unwrap(), "--tokenizer", big.to_str().unwrap(), "--prompt", "Hi"]);
    assert_user_error(&o, &["big.json", "464"]);

    // Empty prompt, empty text, non-UTF-8 text.
    let o = bimamba(&["generate", "--model", m.to_str().unwrap(), "--prompt", ""]);
    assert_user_error(&o, &["--prompt"]);
    let d = tmp("texts");
    std::fs::write(d.join("empty.txt"), "").unwrap();
    std::fs::write(d.join("latin1.txt"), b"caf\xe9 au lait").unwrap();
    let o = bimamba(&["eval", "ppl", "--model", m.to_str().unwrap(), "--text", d.join("empty.txt").to_str().unwrap()]);
    assert_user_error(&o, &["empty.txt", "empty"]);
    let o = bimamba(&["eval", "ppl", "--model", m.to_str().unwrap(), "--text", d.join("latin1.txt").to_str().unwrap()]);
    assert_user_error(&o, &["latin1.txt", "UTF-8", "offset 3"]);

    // A bad flag value.
    let o = bimamba(&["eval", "ppl", "--model", m.to_str().unwrap(), "--text", text, "--seq-len", "1"]);
    assert_user_error(&o, &["--seq-len"]);
}
