//! What the end-to-end tests of the `bimamba-train` binary share: the binary, the fixtures, a
//! prepared token directory and a run's metrics.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bimamba-train"))
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

pub fn prepare(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    let out = bin()
        .args(["data", "prepare", "--val-fraction", "0.1", "--tokenizer"])
        .arg(fixtures().join("ss-bimamba-col/tokenizer.json"))
        .arg("--out")
        .arg(&data)
        .arg(fixtures().join("text/pride_excerpt.txt"))
        .output()
        .expect("run data prepare");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    data
}

pub fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}
