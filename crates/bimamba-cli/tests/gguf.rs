//! `--model FILE.gguf`: the LLaMA forward and the GGUF's own tokenizer behind `eval ppl`,
//! `eval tasks` and `generate`, on a tiny model file written by `bimamba_llama::testing`. The
//! binary's numbers must equal the library's on the same file.

use std::path::PathBuf;

use bimamba_formats::Checkpoint;
use bimamba_llama::{gguf_tokenizer, testing::tiny_llama_gguf, LlamaModel};
use bimamba_lm::LanguageModel;

mod common;
use common::{assert_user_error, bimamba};

/// A scratch directory holding the tiny GGUF model and a text file.
fn setup(name: &str) -> (PathBuf, PathBuf) {
    let d = std::env::temp_dir().join(format!("bimamba-cli-gguf-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("the temp dir is writable");
    let model = d.join("tiny.gguf");
    std::fs::write(&model, tiny_llama_gguf(7)).expect("the model file is writable");
    let text = d.join("text.txt");
    std::fs::write(&text, "hello world, 12 worlds.\n<|im_start|>hello hello world\n".repeat(6)).expect("writable");
    (model, text)
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

#[test]
fn eval_ppl_on_a_gguf_equals_the_library() {
    let (model_path, text_path) = setup("ppl");
    let o = bimamba(&[
        "eval",
        "ppl",
        "--model",
        path(&model_path),
        "--text",
        path(&text_path),
        "--seq-len",
        "16",
        "--json",
    ]);
    assert_eq!(o.code, 0, "stderr: {}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(o.stdout.trim()).expect("one JSON object");
    assert_eq!(v["tokenizer"].as_str(), Some(path(&model_path)), "the tokenizer comes from the GGUF");

    let ck = Checkpoint::open(&model_path).expect("opens");
    let model = LlamaModel::from_checkpoint(&ck).expect("loads");
    let tok = gguf_tokenizer(&ck).expect("tokenizer");
    let text = std::fs::read_to_string(&text_path).expect("readable");
    let (ids, ends) = tok.encode_with_ends(&text).expect("encodes");
    assert!(ids.contains(&1), "the control token is matched whole");
    let r = bimamba_eval::perplexity(&model, &ids, &ends, 16, |_| {}).expect("scores").expect("two windows at least");
    assert!(r.windows >= 2);
    assert_eq!(v["windows"].as_u64(), Some(r.windows as u64));
    let ppl = v["ppl"].as_f64().expect("ppl is a number");
    assert!((ppl - r.ppl).abs() < 1e-9 * r.ppl, "binary {ppl} vs library {}", r.ppl);
    assert!(r.ppl > 1.0 && r.ppl.is_finite());
}

#[test]
fn generate_on_a_gguf_is_the_greedy_continuation() {
    let (model_path, _) = setup("generate");
    let prompt = "hello world";
    let o = bimamba(&["generate", "--model", path(&model_path), "--prompt", prompt, "--greedy", "--max-tokens", "12"]);
    assert_eq!(o.code, 0, "stderr: {}", o.stderr);
    assert!(o.stderr.contains("decode:"), "speed line: {}", o.stderr);

    let ck = Checkpoint::open(&model_path).expect("opens");
    let model = LlamaModel::from_checkpoint(&ck).expect("loads");
    let tok = gguf_tokenizer(&ck).expect("tokenizer");
    let mut state = model.new_state();
    let mut logits = model.forward_last(&mut state, &tok.encode(prompt).expect("encodes")).expect("prefill");
    let mut ids = Vec::new();
    for _ in 0..12 {
        let next = (0..logits.len()).fold(0, |b, i| if logits[i] > logits[b] { i } else { b }) as u32;
        if Some(next) == tok.eos_id() || Some(next) == model.eos_token_id {
            break;
        }
        ids.push(next);
        logits = model.forward_last(&mut state, &[next]).expect("step");
    }
    let want = tok.decode(&ids).expect("decodes");
    assert_eq!(o.stdout.strip_suffix('\n'), Some(want.as_str()));
}

#[test]
fn eval_tasks_run_on_a_gguf() {
    let (model_path, _) = setup("tasks");
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/eval");
    let o = bimamba(&[
        "eval",
        "tasks",
        "--model",
        path(&model_path),
        "--tasks",
        "all",
        "--data-dir",
        path(&data),
        "--json",
    ]);
    assert_eq!(o.code, 0, "stderr: {}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(o.stdout.trim()).expect("one JSON object");
    let results = v["results"].as_object().expect("a results object");
    assert_eq!(results.len(), 8, "seven tasks and LAMBADA: {results:?}");
    for (task, r) in results {
        assert!(r["n"].as_u64().is_some_and(|n| n > 0), "{task}: {r}");
        assert!(r["acc"].as_f64().is_some_and(|a| (0.0..=1.0).contains(&a)), "{task}: {r}");
    }
}

#[test]
fn a_bad_gguf_is_one_clear_line() {
    let (model_path, text_path) = setup("bad");
    let mut bytes = std::fs::read(&model_path).expect("readable");
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&model_path, &bytes).expect("writable");
    let o = bimamba(&["eval", "ppl", "--model", path(&model_path), "--text", path(&text_path), "--seq-len", "16"]);
    assert_ne!(o.code, 0);
    assert!(!o.stderr.contains("panicked"), "panic: {}", o.stderr);
    let lines: Vec<&str> = o.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {}", o.stderr);
    assert!(lines[0].contains("tiny.gguf"), "the file is named: {}", lines[0]);
}

#[test]
fn gguf_act_q8_equals_the_library_and_bad_values_are_one_line() {
    let (model_path, text_path) = setup("q8");
    let args = |act: &str| -> Vec<String> {
        ["eval", "ppl", "--model", path(&model_path), "--text", path(&text_path), "--seq-len", "16", "--json"]
            .iter()
            .map(|s| s.to_string())
            .chain(["--gguf-act".to_string(), act.to_string()])
            .collect()
    };
    let run = |act: &str| bimamba(&args(act).iter().map(String::as_str).collect::<Vec<_>>());
    let o = run("q8");
    assert_eq!(o.code, 0, "stderr: {}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(o.stdout.trim()).expect("one JSON object");
    assert_eq!(v["gguf_act"].as_str(), Some("q8"));
    let ck = Checkpoint::open(&model_path).expect("opens");
    let model = LlamaModel::from_checkpoint_with(&ck, bimamba_llama::Activations::Q8).expect("loads");
    let tok = gguf_tokenizer(&ck).expect("tokenizer");
    let (ids, ends) = tok.encode_with_ends(&std::fs::read_to_string(&text_path).expect("readable")).expect("encodes");
    let r = bimamba_eval::perplexity(&model, &ids, &ends, 16, |_| {}).expect("scores").expect("two windows at least");
    let ppl = v["ppl"].as_f64().expect("ppl is a number");
    assert!((ppl - r.ppl).abs() < 1e-9 * r.ppl, "binary {ppl} vs library {}", r.ppl);
    let f32_ppl: serde_json::Value = serde_json::from_str(run("f32").stdout.trim()).expect("one JSON object");
    assert_ne!(f32_ppl["ppl"].as_f64(), Some(ppl), "q8 rounds the activations, so the figure moves");

    let bad = run("q4");
    assert_ne!(bad.code, 0);
    let lines: Vec<&str> = bad.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {}", bad.stderr);
    assert!(lines[0].contains("--gguf-act") && lines[0].contains("q4"), "{}", lines[0]);
}

#[test]
fn gguf_act_q8_on_a_mamba_model_is_refused() {
    let (_, text_path) = setup("q8-mamba");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-austen");
    let o = bimamba(&[
        "eval",
        "ppl",
        "--model",
        root.to_str().expect("UTF-8 path"),
        "--text",
        path(&text_path),
        "--seq-len",
        "16",
        "--gguf-act",
        "q8",
    ]);
    assert_ne!(o.code, 0);
    assert!(!o.stderr.contains("panicked"), "panic: {}", o.stderr);
    assert!(o.stderr.contains("--gguf-act q8") && o.stderr.contains("not a .gguf model"), "{}", o.stderr);
}

#[test]
fn bench_measures_a_gguf_and_refuses_what_it_has_not() {
    let (model_path, _) = setup("bench");
    let m = path(&model_path);
    let base = ["bench", "--model", m, "--threads", "1", "--decode-tokens", "3", "--prefill-tokens", "5", "--json"];
    let o = bimamba(&[&base[..], &["--gguf-act", "q8"]].concat());
    assert_eq!(o.code, 0, "stderr: {}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(o.stdout.trim()).expect("one JSON object");
    assert_eq!(v["gguf_act"], "q8");
    assert!(v["decode_tok_s"].as_f64().is_some_and(|t| t > 0.0), "{v}");
    assert!(v["dense"].is_null(), "no dense comparison for a GGUF: {v}");
    // Weights, plus the f32 KV cache (2 layers x 32 wide, keys and values) of 5 + 3/2 positions
    // and the one written.
    let model = LlamaModel::load_with(&model_path, bimamba_llama::Activations::Q8).expect("loads");
    let kv = 2 * 4 * 2 * 32 * (5 + 1 + 1);
    assert_eq!(v["bytes_per_token"].as_u64(), Some((model.weight_bytes() + kv) as u64), "{v}");

    for (extra, needles) in [
        (&["--embed", "q8"][..], &["--embed q8", "LLaMA"][..]),
        (&["--profile"], &["--profile", "LLaMA"]),
        (&["--state-dtype", "bf16"], &["--state-dtype bf16", "tiny.gguf", "no SSM state"]),
        (&["--binary-act", "int8"], &["--binary-act int8", "tiny.gguf", "no 1-bit projections"]),
    ] {
        assert_user_error(&bimamba(&[&base[..], extra].concat()), needles);
    }
    let o = bimamba(&["generate", "--model", m, "--prompt", "hello", "--state-dtype", "bf16"]);
    assert_user_error(&o, &["--state-dtype bf16", "no SSM state"]);
    let o = bimamba(&["info", "--model", m]);
    assert_user_error(&o, &["tiny.gguf", "info reads Mamba-2"]);
}
