//! Distillation end to end: an in-process full-precision Mamba-2 teacher, a precomputed top-k
//! teacher file, and the refusal of a teacher whose tokenizer differs from the data's.

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bimamba-train"))
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn ok(out: std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn prepare(dir: &Path, tokenizer: &Path) -> PathBuf {
    let data = dir.join("data");
    ok(bin()
        .args(["data", "prepare", "--val-fraction", "0.1", "--tokenizer"])
        .arg(tokenizer)
        .arg("--out")
        .arg(&data)
        .arg(fixtures().join("text/pride_excerpt.txt"))
        .output()
        .expect("data prepare"));
    data
}

fn config(dir: &Path, data: &Path, teacher: &str) -> PathBuf {
    let p = dir.join("cfg.toml");
    std::fs::write(
        &p,
        format!(
            r#"
[model]
d_model = 16
n_layer = 1
d_state = 8
headdim = 8
chunk_size = 8
[data]
dir = "{}"
seq_len = 32
batch_size = 2
[optim]
lr = 1e-3
[loss]
soft_weight = 1.0
hard_weight = 0.0
temperature = 2.0
[teacher]
{teacher}
[train]
steps = 4
eval_windows = 2
"#,
            data.display()
        ),
    )
    .expect("write config");
    p
}

fn train(cfg: &Path, out: &Path) -> std::process::Output {
    bin().args(["train", "--quiet", "--config"]).arg(cfg).arg("--out").arg(out).output().expect("train")
}

fn last_loss(run: &Path) -> f64 {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics");
    let last: serde_json::Value = serde_json::from_str(text.lines().last().expect("a line")).expect("json");
    last["train_loss"].as_f64().expect("train_loss")
}

#[test]
fn distillation_from_model_and_from_topk_file_and_tokenizer_check() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let teacher = fixtures().join("hf-mamba2-g2");
    let data = prepare(tmp.path(), &teacher.join("tokenizer.json"));

    // In-process full-precision teacher (ngroups 2, untied head, bf16 weights).
    let cfg = config(tmp.path(), &data, &format!("kind = \"mamba\"\npath = \"{}\"", teacher.display()));
    let run = tmp.path().join("run-mamba");
    ok(train(&cfg, &run));
    let soft = last_loss(&run);
    assert!(soft.is_finite() && soft > 0.0);

    // Top-k file, then training from it.
    let topk = tmp.path().join("teacher.topk");
    let out = ok(bin()
        .args(["teacher-logits", "--seq-len", "32", "--top-k", "16", "--max-windows", "20", "--teacher"])
        .arg(&teacher)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&topk)
        .output()
        .expect("teacher-logits"));
    assert!(out.contains("20 windows"), "{out}");
    let f = bimamba_train::teacher::TopkFile::open(&topk).expect("opens");
    assert_eq!((f.k, f.seq_len, f.windows), (16, 32, 20));
    let (ids, lp) = f.window(3);
    assert!(ids.iter().all(|&i| (0..451).contains(&i)));
    for pos in lp.chunks(16) {
        assert!(pos.windows(2).all(|w| w[0] >= w[1]), "sorted by probability");
        let mass: f32 = pos.iter().map(|x| x.exp()).sum();
        assert!(mass > 0.0 && mass <= 1.0 + 1e-5);
    }
    let cfg = config(tmp.path(), &data, &format!("kind = \"topk\"\npath = \"{}\"", topk.display()));
    let run = tmp.path().join("run-topk");
    ok(train(&cfg, &run));
    assert!(last_loss(&run).is_finite());

    // Data made with another tokenizer: the teacher is refused, and the message says why.
    let mut tj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(teacher.join("tokenizer.json")).expect("read")).expect("json");
    // Swap the ids of two tokens: a valid tokenizer with another vocabulary.
    let vocab = tj["model"]["vocab"].as_object_mut().expect("BPE vocab");
    let key_of = |id: u64, v: &serde_json::Map<String, serde_json::Value>| {
        v.iter().find(|(_, x)| x.as_u64() == Some(id)).map(|(k, _)| k.clone()).expect("id present")
    };
    let (a, b) = (key_of(300, vocab), key_of(301, vocab));
    vocab.insert(a, serde_json::json!(301));
    vocab.insert(b, serde_json::json!(300));
    let other_tok = tmp.path().join("other.json");
    std::fs::write(&other_tok, tj.to_string()).expect("write");
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).expect("mkdir");
    let other_data = prepare(&other, &other_tok);
    let cfg = config(&other, &other_data, &format!("kind = \"mamba\"\npath = \"{}\"", teacher.display()));
    let out = train(&cfg, &other.join("run"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tokenizer mismatch"), "{err}");
}

/// A LLaMA GGUF teacher in-process and through `teacher-logits`, with data tokenized by the
/// tokenizer rebuilt from the same GGUF.
#[test]
fn distillation_from_a_gguf_llama_teacher() {
    use bimamba_train::llama::LlamaTeacher;
    let tmp = tempfile::tempdir().expect("tempdir");
    let gguf = tmp.path().join("teacher.gguf");
    std::fs::write(&gguf, bimamba_llama::testing::tiny_llama_gguf(3)).expect("write gguf");
    let teacher = LlamaTeacher::<burn::backend::NdArray<f32>>::load(&gguf, &Default::default()).expect("loads");
    // `data prepare --tokenizer FILE.gguf` uses the tokenizer inside the GGUF.
    let data = prepare(tmp.path(), &gguf);
    let saved = bimamba_train::data::load_tokenizer(&data.join("tokenizer.json")).expect("saved tokenizer loads");
    assert_eq!(
        bimamba_train::data::vocab_hash(&saved),
        bimamba_train::data::vocab_hash(teacher.tokenizer.as_ref().expect("a GGUF teacher has its tokenizer"))
    );
    let cfg = config(tmp.path(), &data, &format!("kind = \"gguf\"\npath = \"{}\"", gguf.display()));
    let run = tmp.path().join("run-gguf");
    ok(train(&cfg, &run));
    assert!(last_loss(&run).is_finite());
    let topk = tmp.path().join("gguf.topk");
    let out = ok(bin()
        .args(["teacher-logits", "--seq-len", "32", "--top-k", "4", "--max-windows", "3", "--teacher"])
        .arg(&gguf)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&topk)
        .output()
        .expect("teacher-logits"));
    assert!(out.contains("3 windows"), "{out}");
}

/// `data sample-teacher` writes text continuing prompts cut from the data, and its record; the
/// text prepares like any other, the same seed writes the same text, and an existing output is
/// kept when the teacher's tokenizer is not the data's.
#[test]
fn teacher_samples_become_training_text() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let gguf = tmp.path().join("teacher.gguf");
    std::fs::write(&gguf, bimamba_llama::testing::tiny_llama_gguf(3)).expect("write gguf");
    let data = prepare(tmp.path(), &gguf);
    let sample = |out: &Path, seed: &str| {
        bin()
            .args(["data", "sample-teacher", "--samples", "5", "--batch", "2", "--prompt-tokens", "4"])
            .args(["--new-tokens", "12", "--seed", seed, "--teacher"])
            .arg(&gguf)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(out)
            .output()
            .expect("sample-teacher")
    };
    let a = tmp.path().join("a.txt");
    let said = ok(sample(&a, "3"));
    assert!(said.contains("5 samples, 60 tokens generated"), "{said}");
    let text = std::fs::read_to_string(&a).expect("samples written");
    assert!(!text.trim().is_empty());
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("a.txt.json")).expect("record")).expect("json");
    assert_eq!(record["samples"], 5);
    assert_eq!(record["options"]["new_tokens"], 12);
    let b = tmp.path().join("b.txt");
    ok(sample(&b, "3"));
    assert_eq!(text, std::fs::read_to_string(&b).expect("b"));
    // The samples prepare as training text.
    ok(bin()
        .args(["data", "prepare", "--tokenizer"])
        .arg(&gguf)
        .arg("--out")
        .arg(tmp.path().join("grown"))
        .arg(fixtures().join("text/pride_excerpt.txt"))
        .arg(&a)
        .output()
        .expect("prepare with samples"));
    // Data of another tokenizer: refused with one line, the earlier output untouched.
    let other = prepare(&tmp.path().join("other"), &fixtures().join("ss-bimamba-col/tokenizer.json"));
    let out = bin()
        .args(["data", "sample-teacher", "--samples", "2", "--teacher"])
        .arg(&gguf)
        .arg("--data")
        .arg(&other)
        .arg("--out")
        .arg(&a)
        .output()
        .expect("sample-teacher");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tokenizer mismatch") && err.lines().count() == 1, "{err}");
    assert_eq!(text, std::fs::read_to_string(&a).expect("a kept"));
}
