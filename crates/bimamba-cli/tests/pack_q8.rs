//! `bimamba pack --embed q8` end to end: the packed model loads in every command, `info`
//! reports the embedding's storage and bytes, greedy generation runs a fixed number of tokens
//! with `--ignore-eos --json`, and a wrong `--embed` value is one clear line.

use serde_json::Value;

mod common;
use common::{assert_user_error, bimamba, root, scratch};

fn path(rel: &str) -> String {
    root().join(rel).display().to_string()
}

/// Packs the col fixture with `--embed q8` into a fresh directory; returns its path.
fn packed_q8(tag: &str) -> String {
    let out = scratch("pack-q8", tag).join("model");
    let out = out.to_str().unwrap().to_string();
    let o = bimamba(&["pack", "--model", &path("fixtures/ss-bimamba-col"), "--out", &out, "--embed", "q8"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stderr.contains("embedding q8"), "{}", o.stderr);
    out
}

fn json(args: &[&str]) -> Value {
    let o = bimamba(args);
    assert_eq!(o.code, 0, "{args:?}: {}", o.stderr);
    serde_json::from_str(o.stdout.trim()).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", o.stdout))
}

#[test]
fn a_q8_model_loads_in_every_command() {
    let m = packed_q8("every");
    let text = path("fixtures/text/pride_excerpt_short.txt");

    let info = json(&["info", "--model", &m, "--json"]);
    assert_eq!(info["embedding_storage"], "q8");
    assert_eq!(info["embedding_bytes"], 464 * 64 + 464 * 4);
    assert_eq!(info["lm_head_storage"], "tied");
    let plain = bimamba(&["info", "--model", &m]);
    assert!(plain.stdout.contains("embedding    q8 [464 x 64]"), "{}", plain.stdout);

    // Perplexity within 2% of the f32 fixture's (the 8-bit rounding moves logits by ~1%).
    let ppl = |model: &str| json(&["eval", "ppl", "--model", model, "--text", &text, "--seq-len", "64", "--json"]);
    let (q, f) = (ppl(&m)["ppl"].as_f64().unwrap(), ppl(&path("fixtures/ss-bimamba-col"))["ppl"].as_f64().unwrap());
    assert!((q / f - 1.0).abs() < 0.02, "ppl q8 {q} vs f32 {f}");

    let g = json(&["generate", "--model", &m, "--prompt", "It is a truth", "--greedy", "--max-tokens", "12", "--json"]);
    assert!(g["tokens"].as_array().unwrap().len() <= 12);

    let t = json(&[
        "eval",
        "tasks",
        "--model",
        &m,
        "--tasks",
        "piqa,lambada_openai",
        "--data-dir",
        &path("fixtures/eval"),
        "--json",
    ]);
    assert_eq!(t["results"]["piqa"]["n"], 4);

    // `bench` on the packed model, and `bench --embed q8` quantizing the f32 fixture in memory:
    // the same model, so the same bytes per token (each call also probes the bandwidth, ~2 s).
    let bench = |model: &str, extra: &[&str]| {
        let base = ["bench", "--model", model, "--threads", "1", "--decode-tokens", "2", "--prefill-tokens", "4"];
        json(&[&base[..], &["--no-dense", "--json"], extra].concat())
    };
    let b = bench(&m, &[]);
    let b2 = bench(&path("fixtures/ss-bimamba-col"), &["--embed", "q8"]);
    assert_eq!((b["embedding"].as_str(), b2["embedding"].as_str()), (Some("q8"), Some("q8")));
    assert!(b["decode_tok_s"].as_f64().unwrap() > 0.0);
    assert_eq!(b["bytes_per_token"], b2["bytes_per_token"]);
}

/// `--ignore-eos` generates exactly `--max-tokens` tokens; `--json` reports them.
#[test]
fn greedy_generation_of_a_fixed_length() {
    let m = path("models/default");
    let args = ["generate", "--model", &m, "--prompt", "It is", "--greedy", "--max-tokens", "40", "--ignore-eos"];
    let g = json(&[&args[..], &["--json"]].concat());
    let tokens = g["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 40);
    assert!(!g["prompt_tokens"].as_array().unwrap().is_empty());
    // The streamed text is the JSON's text.
    let o = bimamba(&args);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout.trim_end_matches('\n'), g["text"].as_str().unwrap());
}

#[test]
fn a_wrong_embed_value_is_one_line() {
    let out = scratch("pack-q8", "bad").join("model");
    let o = bimamba(&[
        "pack",
        "--model",
        &path("fixtures/ss-bimamba-col"),
        "--out",
        out.to_str().unwrap(),
        "--embed",
        "q4",
    ]);
    assert_user_error(&o, &["--embed", "q4", "q8"]);
    assert!(!out.exists());
    let o = bimamba(&["bench", "--shape", "130m", "--embed", "q4"]);
    assert_user_error(&o, &["--embed", "q4"]);
}
