//! Data-parallel training on the CPU: `--nproc 2` starts two rank processes that exchange
//! gradients over TCP. After K steps their weights must equal those of one process trained with
//! twice the batch (up to the order of f32 sums), the losses likewise; rank 0 alone writes the run;
//! a resume needs the same number of ranks; an external launcher's environment works too.

use std::path::{Path, PathBuf};

use bimamba_train::{checkpoint, params};

mod common;
use common::{bin, metrics, prepare, TinyRun};

fn write_config(dir: &Path, data: &Path, name: &str, batch: usize, steps: u64) -> PathBuf {
    let run = TinyRun {
        batch,
        steps,
        warmup: 2,
        seed: 11,
        eval_every: 0,
        eval_windows: 4,
        checkpoint_every: 2,
        ..TinyRun::default()
    };
    run.write(dir, data, name)
}

fn train(cfg: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    bin().args(["train", "--quiet", "--config"]).arg(cfg).arg("--out").arg(out).args(extra).output().expect("run train")
}

fn ok(o: &std::process::Output) {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The metric lines of training steps (the step-0 line holds only a validation loss).
fn steps_of(run: &Path) -> Vec<serde_json::Value> {
    metrics(run).into_iter().filter(|l| l.get("train_loss").is_some()).collect()
}

/// The latest checkpoint's weights, by name.
fn weights(run: &Path) -> params::NamedTensors {
    let dir = checkpoint::latest(run).expect("readable").expect("a checkpoint");
    checkpoint::load(&dir).expect("loads").model
}

/// Largest |a − b| / (max |b| of the tensor) over every tensor.
fn max_rel_diff(a: &params::NamedTensors, b: &params::NamedTensors) -> f64 {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let mut worst = 0.0f64;
    for (k, ta) in a {
        let x: Vec<f32> = ta.iter::<f32>().collect();
        let y: Vec<f32> = b[k].iter::<f32>().collect();
        let scale = y.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12) as f64;
        for (p, q) in x.iter().zip(&y) {
            worst = worst.max((p - q).abs() as f64 / scale);
        }
    }
    worst
}

#[test]
fn two_ranks_equal_one_process_with_twice_the_batch() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = prepare(tmp.path());
    let steps = 4;
    let one = tmp.path().join("one");
    ok(&train(&write_config(tmp.path(), &data, "b4", 4, steps), &one, &[]));
    let two = tmp.path().join("two");
    let cfg2 = write_config(tmp.path(), &data, "b2", 2, steps);
    let out = train(&cfg2, &two, &["--nproc", "2"]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("all 2 ranks finished"));

    // Same losses, step by step, and the same tokens counted.
    let (m1, m2) = (steps_of(&one), steps_of(&two));
    assert_eq!(m1.len() as u64, steps);
    assert_eq!(m1.len(), m2.len());
    for (a, b) in m1.iter().zip(&m2) {
        let (la, lb) = (a["train_loss"].as_f64().expect("loss"), b["train_loss"].as_f64().expect("loss"));
        assert!((la - lb).abs() <= 1e-5 * la.abs(), "step {}: {la} vs {lb}", a["step"]);
        assert_eq!(a["tokens"], b["tokens"]);
    }
    // Same weights after K steps (f32 sums in another order, then AdamW).
    let d = max_rel_diff(&weights(&two), &weights(&one));
    eprintln!("2 ranks against 1 process after {steps} steps: weights differ by {d:.2e} of their scale at most");
    assert!(d < 1e-4, "weights differ by {d:e} of their scale");
    // A different seed is a different run: the comparison can tell runs apart.
    let other = tmp.path().join("other");
    let text = std::fs::read_to_string(&cfg2).expect("read").replace("seed = 11", "seed = 12");
    let cfg_other = tmp.path().join("other.toml");
    std::fs::write(&cfg_other, text).expect("write");
    ok(&train(&cfg_other, &other, &["--nproc", "2"]));
    assert!(max_rel_diff(&weights(&other), &weights(&one)) > 1e-2);

    // Rank 0 alone wrote the run; the checkpoint knows its ranks and a resume needs as many.
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(two.join("run.json")).expect("run.json")).expect("json");
    assert_eq!(run["ranks"], 2);
    let more = write_config(tmp.path(), &data, "b2", 2, steps + 2);
    let refused = train(&more, &two, &["--resume"]);
    assert!(!refused.status.success());
    let msg = String::from_utf8_lossy(&refused.stderr);
    assert!(msg.contains("--nproc 2") && msg.lines().count() == 1, "{msg}");
    ok(&train(&more, &two, &["--resume", "--nproc", "2"]));
    ok(&train(&write_config(tmp.path(), &data, "b4", 4, steps + 2), &one, &["--resume"]));
    let d = max_rel_diff(&weights(&two), &weights(&one));
    assert!(d < 1e-4, "after resume, weights differ by {d:e} of their scale");
}

#[test]
fn an_external_launchers_environment_and_a_failing_rank() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = prepare(tmp.path());
    let cfg = write_config(tmp.path(), &data, "b2", 2, 2);
    // torchrun-style: two processes started by hand with WORLD_SIZE, RANK and MASTER_PORT.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let run = tmp.path().join("ext");
    let rank = |r: &str| {
        let mut c = bin();
        c.args(["train", "--quiet", "--config"])
            .arg(&cfg)
            .arg("--out")
            .arg(&run)
            .env("WORLD_SIZE", "2")
            .env("RANK", r)
            .env("MASTER_PORT", port.to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c
    };
    let r1 = rank("1").env("MASTER_ADDR", "127.0.0.1").spawn().expect("start rank 1");
    let r0 = rank("0").output().expect("rank 0");
    ok(&r0);
    ok(&r1.wait_with_output().expect("rank 1"));
    assert_eq!(steps_of(&run).len(), 2);

    // A mismatched --nproc under a launcher, and bad launcher variables, are one-line errors.
    let o = bin()
        .args(["train", "--config"])
        .arg(&cfg)
        .args(["--nproc", "3"])
        .env("WORLD_SIZE", "2")
        .env("RANK", "0")
        .env("MASTER_PORT", "1")
        .output()
        .expect("run");
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && msg.contains("WORLD_SIZE 2") && msg.lines().count() == 1, "{msg}");
    let o = bin().args(["train", "--config"]).arg(&cfg).env("WORLD_SIZE", "2").env("RANK", "7").output().expect("run");
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && msg.contains("RANK") && msg.lines().count() == 1, "{msg}");

    // One rank cannot start (its data directory is missing): the launcher stops the other and
    // says which rank failed, instead of waiting for it.
    let broken = std::fs::read_to_string(&cfg).expect("read").replace(&data.display().to_string(), "/nonexistent-data");
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, broken).expect("write");
    let o = train(&bad, &tmp.path().join("bad"), &["--nproc", "2"]);
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && msg.contains("failed") && msg.contains("nonexistent-data"), "{msg}");
}
