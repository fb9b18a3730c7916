//! The real distillation teacher, SmolLM2-135M-Instruct (Q4_1 GGUF, fetched by
//! `scripts/fetch_teacher.sh`; `.ci/run` fetches it and runs this with `--ignored`): an external
//! check of the GGUF reader, the LLaMA forward, the GGUF tokenizer and the perplexity protocol.
//! Expected: about 16 on the first 512 tokens of Pride and Prejudice.

use std::path::Path;
use std::process::Command;

#[test]
#[ignore = "needs the SmolLM2 GGUF: set BIMAMBA_SMOLLM2_GGUF (scripts/fetch_teacher.sh)"]
fn smollm2_perplexity_on_the_opening_of_pride_and_prejudice() {
    let gguf = std::env::var("BIMAMBA_SMOLLM2_GGUF").expect("set BIMAMBA_SMOLLM2_GGUF to the .gguf path");
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/text/pride_excerpt.txt"))
            .unwrap();
    // 2600 bytes hold between 512 and 1023 tokens: exactly the first window is scored.
    let cut = (0..=2600).rev().find(|&i| text.is_char_boundary(i)).unwrap();
    let file = std::env::temp_dir().join(format!("bimamba-teacher-{}.txt", std::process::id()));
    std::fs::write(&file, &text[..cut]).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_bimamba"))
        .args(["eval", "ppl", "--model", &gguf, "--text", file.to_str().unwrap(), "--seq-len", "512", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["windows"], 1);
    assert_eq!(v["tokens"], 511);
    let ppl = v["ppl"].as_f64().unwrap();
    // Measured 16.21 here; a broken RoPE, tokenizer or dequantization lands far outside.
    assert!((14.0..19.0).contains(&ppl), "SmolLM2 perplexity {ppl}, expected about 16");
}
