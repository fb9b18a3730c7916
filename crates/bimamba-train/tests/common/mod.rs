//! What the end-to-end tests of the `bimamba-train` binary share: the binary, the fixtures, a
//! prepared token directory, the config of a tiny run and a run's metrics.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// `bench` arguments of a tiny model (2 layers, d_model 32, vocabulary 96, sequences of 24), one
/// timed step and no warm-up, on `backend`.
pub fn tiny_bench_args(backend: &str) -> Vec<String> {
    let args = "bench --d-model 32 --n-layer 2 --vocab 96 --d-state 8 --headdim 8 --chunk-size 16 --seq-len 24 \
                --steps 1 --warmup 0 --matmul-size 16 --backend";
    args.split_whitespace().map(str::to_string).chain([backend.to_string()]).collect()
}

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

/// The knobs of a 2-layer, 32-wide run on the fixture text with next-token loss only.
pub struct TinyRun {
    pub batch: usize,
    pub steps: u64,
    pub lr: f64,
    pub warmup: u64,
    pub seed: u64,
    pub eval_every: u64,
    pub eval_windows: usize,
    pub checkpoint_every: u64,
}

impl Default for TinyRun {
    fn default() -> Self {
        Self { batch: 4, steps: 10, lr: 3e-3, warmup: 3, seed: 7, eval_every: 10, eval_windows: 8, checkpoint_every: 5 }
    }
}

impl TinyRun {
    /// Writes `dir/<name>.toml` for the data in `data` and returns its path.
    pub fn write(&self, dir: &Path, data: &Path, name: &str) -> PathBuf {
        let p = dir.join(format!("{name}.toml"));
        let text = format!(
            r#"
[model]
d_model = 32
n_layer = 2
d_state = 8
headdim = 8
chunk_size = 16
[data]
dir = "{}"
seq_len = 48
batch_size = {}
grad_accum = 2
[optim]
lr = {:e}
warmup_steps = {}
[loss]
soft_weight = 0.0
hard_weight = 1.0
temperature = 1.0
[train]
steps = {}
seed = {}
eval_every = {}
eval_windows = {}
checkpoint_every = {}
"#,
            data.display(),
            self.batch,
            self.lr,
            self.warmup,
            self.steps,
            self.seed,
            self.eval_every,
            self.eval_windows,
            self.checkpoint_every
        );
        std::fs::write(&p, text).expect("write config");
        p
    }
}
