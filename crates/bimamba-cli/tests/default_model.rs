//! The model that ships in models/default (the Bi-Mamba student of RESULTS.md) is what every
//! command uses without --model: it loads, reports itself, generates words and scores held-out
//! text far better than chance.

mod common;
use common::{bimamba, root};

fn json(args: &[&str]) -> serde_json::Value {
    let o = bimamba(args);
    assert_eq!(o.code, 0, "bimamba {args:?}: {}", o.stderr);
    serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("bimamba {args:?}: not JSON ({e}): {}", o.stdout))
}

#[test]
fn the_default_model_is_the_packed_bi_mamba_student() {
    let info = json(&["info", "--json"]);
    assert_eq!(info["embedding_storage"], "q8", "{info}");
    assert_eq!(info["vocab_size"], 49152, "{info}");
    assert!(info["params_binary"].as_u64().unwrap() > 6_000_000, "{info}");
    assert!(info["projection_bits_per_weight"].as_f64().unwrap() < 1.2, "{info}");
    assert!(info["file_bytes"].as_u64().unwrap() < 16_000_000, "{info}");
}

#[test]
fn the_default_model_generates_words() {
    let g = json(
        &["generate", "--prompt", "It is a truth universally acknowledged", "--greedy", "--max-tokens", "32"]
            .iter()
            .chain(&["--ignore-eos", "--json"])
            .copied()
            .collect::<Vec<_>>(),
    );
    assert_eq!(g["tokens"].as_array().unwrap().len(), 32);
    let text = g["text"].as_str().unwrap();
    let words = text.split_whitespace().filter(|w| w.chars().any(|c| c.is_ascii_alphabetic())).count();
    assert!(words >= 12, "too few words in {text:?}");
}

/// Pride and Prejudice was held out of training: chance is a perplexity of 49,152.
#[test]
fn the_default_model_scores_held_out_text() {
    let text = root().join("fixtures/text/pride_excerpt_short.txt");
    let v = json(&["eval", "ppl", "--text", text.to_str().unwrap(), "--seq-len", "256", "--json"]);
    let ppl = v["ppl"].as_f64().unwrap();
    assert!(ppl > 1.0 && ppl < 400.0, "perplexity {ppl}");
}
