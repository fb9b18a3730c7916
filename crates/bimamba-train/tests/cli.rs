//! End-to-end tests of the `bimamba-train` binary on the repository's fixture text: data
//! preparation, a training run whose validation loss falls, exact resume after SIGKILL and after a
//! `--max-seconds` stop, the stop on a non-finite loss, and the export round trip.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bimamba_train::modeldir::ModelDir;
use bimamba_train::{checkpoint, params, Mamba2Lm};
use burn::backend::NdArray;
use burn::tensor::{Int, Tensor, TensorData};

mod common;
use common::{bin, metrics, prepare, TinyRun};

fn write_config(dir: &Path, data: &Path, steps: u64, lr: f64, ckpt_every: u64) -> PathBuf {
    let run = TinyRun { steps, lr, checkpoint_every: ckpt_every, ..TinyRun::default() };
    run.write(dir, data, &format!("cfg-{steps}-{lr}"))
}

fn train(cfg: &Path, out: &Path, resume: bool) -> std::process::Output {
    let mut c = bin();
    c.args(["train", "--quiet", "--config"]).arg(cfg).arg("--out").arg(out);
    if resume {
        c.arg("--resume");
    }
    c.output().expect("run train")
}

#[test]
fn train_resume_after_sigkill_export_and_nonfinite_stop() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = prepare(tmp.path());
    let steps = 30;
    let cfg = write_config(tmp.path(), &data, steps, 3e-3, 5);

    // 1. An uninterrupted run: validation loss falls, files are in place.
    let run_a = tmp.path().join("a");
    let out = train(&cfg, &run_a, false);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in ["config.toml", "run.json", "metrics.jsonl", "loss.png"] {
        assert!(run_a.join(f).exists(), "{f} missing");
    }
    let ma = metrics(&run_a);
    let val: Vec<f64> = ma.iter().filter_map(|m| m.get("val_loss").and_then(|v| v.as_f64())).collect();
    assert!(val.len() >= 3);
    assert!(val[val.len() - 1] < val[0] - 0.5, "validation loss did not fall: {val:?}");
    for key in ["train_loss", "lr", "grad_norm", "tokens_per_s"] {
        assert!(ma[1].get(key).is_some(), "metrics lack {key}");
    }

    // 2. The same run, killed with SIGKILL after its first checkpoint, then resumed.
    let run_b = tmp.path().join("b");
    let mut child = bin()
        .args(["train", "--quiet", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&run_b)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let t0 = Instant::now();
    while !run_b.join("checkpoints/latest").exists() {
        assert!(t0.elapsed() < Duration::from_secs(300), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let killed_at = checkpoint::load(&checkpoint::latest(&run_b).expect("ok").expect("some")).expect("load").state.step;
    assert!(killed_at < steps, "the run finished before it could be killed");
    let out = train(&cfg, &run_b, true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mb = metrics(&run_b);
    assert_eq!(ma.len(), mb.len());
    for (a, b) in ma.iter().zip(&mb) {
        assert_eq!(a["step"], b["step"]);
        assert_eq!(a.get("train_loss"), b.get("train_loss"), "step {}", a["step"]);
        assert_eq!(a.get("val_loss"), b.get("val_loss"), "step {}", a["step"]);
    }

    // 2b. `--max-seconds 0` stops after one step with a checkpoint; `--resume` finishes the run
    // with the same losses as the uninterrupted one.
    let run_t = tmp.path().join("t");
    let out = bin()
        .args(["train", "--quiet", "--max-seconds", "0", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&run_t)
        .output()
        .expect("run train");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("time limit reached"));
    let st = checkpoint::load(&checkpoint::latest(&run_t).expect("ok").expect("some")).expect("load").state;
    assert_eq!(st.step, 1);
    let out = train(&cfg, &run_t, true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mt = metrics(&run_t);
    assert_eq!(ma.len(), mt.len());
    for (a, t) in ma.iter().zip(&mt) {
        assert_eq!(a.get("train_loss"), t.get("train_loss"), "step {}", a["step"]);
    }

    // 3. A resumed run refuses a changed configuration, and a fresh run refuses a used directory.
    let cfg2 = write_config(tmp.path(), &data, steps, 1e-3, 5);
    let out = train(&cfg2, &run_b, true);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("differs"));
    assert!(!train(&cfg, &run_b, false).status.success());

    // 3b. An edited or damaged state.json is refused on --resume, one line naming the field.
    let state_path = checkpoint::latest(&run_b).expect("ok").expect("some").join("state.json");
    let orig = std::fs::read_to_string(&state_path).expect("state.json");
    let v: serde_json::Value = serde_json::from_str(&orig).expect("json");
    let edits: [(&str, serde_json::Value, &str); 5] = [
        ("/sampler/seq_len", 0.into(), "sampler.seq_len"),
        ("/step", 1_000_000_000_000_000u64.into(), "step"),
        ("/adam_steps", 3.into(), "adam_steps"),
        ("/sampler/drawn", 1.into(), "sampler.drawn"),
        ("/tokens_seen", 7.into(), "tokens_seen"),
    ];
    for (pointer, value, field) in edits {
        let mut e = v.clone();
        *e.pointer_mut(pointer).expect(pointer) = value;
        std::fs::write(&state_path, e.to_string()).expect("edit state.json");
        let out = train(&cfg, &run_b, true);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{pointer}: the edited checkpoint was accepted");
        assert_eq!(err.lines().count(), 1, "{pointer}: {err}");
        assert!(err.contains("state.json") && err.contains(&format!("{field} is")), "{pointer}: {err}");
    }
    std::fs::write(&state_path, orig).expect("restore state.json");

    // 4. Export: the model directory loads and computes what the checkpoint computes. The run
    // keeps its own tokenizer, so the export does not need the data directory.
    assert!(run_a.join("tokenizer.json").exists());
    std::fs::rename(&data, tmp.path().join("data-moved")).expect("move the data away");
    let model_dir = tmp.path().join("export");
    let out = bin().args(["export", "--run"]).arg(&run_a).arg("--out").arg(&model_dir).output().expect("export");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::rename(tmp.path().join("data-moved"), &data).expect("move the data back");
    let cfg_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model_dir.join("config.json")).expect("config")).expect("json");
    assert_eq!(cfg_json["ssm_cfg"]["layer"], "Mamba2");
    assert_eq!(cfg_json["tie_embeddings"], true);
    assert_eq!(cfg_json["vocab_size"], 451);
    let md = ModelDir::open(&model_dir).expect("open export");
    let names: Vec<&String> = md.tensors.keys().collect();
    for want in [
        "backbone.embedding.weight",
        "backbone.layers.1.mixer.in_proj.wscale",
        "backbone.layers.1.mixer.out_proj.wbias",
        "backbone.layers.0.mixer.conv1d.weight",
        "backbone.layers.0.mixer.A_log",
        "backbone.norm_f.weight",
    ] {
        assert!(md.tensors.contains_key(want), "{want} not in {names:?}");
    }
    assert_eq!(md.tensors["backbone.layers.0.mixer.in_proj.wscale"].shape.to_vec(), vec![1, 32]);
    assert_eq!(md.tensors["backbone.layers.0.mixer.conv1d.weight"].shape.to_vec(), vec![64 + 16, 1, 4]);
    assert!(!md.tensors.contains_key("lm_head.weight"));
    type B = NdArray<f32>;
    let dev = Default::default();
    let exported = md.build::<B>(&dev).expect("build");
    let ck = checkpoint::load(&checkpoint::latest(&run_a).expect("ok").expect("some")).expect("load");
    let trained = params::load(Mamba2Lm::<B>::init(&md.config, 0, &dev), &ck.model, "ckpt").expect("load");
    let toks = Tensor::<B, 2, Int>::from_data(
        TensorData::new((0..40i64).map(|i| i * 11 % 451).collect::<Vec<_>>(), [1, 40]),
        &dev,
    );
    let d = (exported.forward(toks.clone()) - trained.forward(toks)).abs().max().into_scalar();
    assert_eq!(d, 0.0);

    // 5. A diverging run stops on the non-finite loss and keeps its last good checkpoint.
    let bad = write_config(tmp.path(), &data, 20, 1e30, 1);
    let run_c = tmp.path().join("c");
    let out = train(&bad, &run_c, false);
    assert!(!out.status.success(), "a non-finite loss must fail the run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("non-finite loss"), "{err}");
    let stopped = std::fs::read_to_string(run_c.join("STOPPED")).expect("STOPPED written");
    let last = checkpoint::latest(&run_c).expect("ok").expect("a good checkpoint is kept");
    let st = checkpoint::load(&last).expect("loads").state;
    assert!(stopped.contains(&format!("step {}", st.step + 1)), "{stopped} vs {}", st.step);
}

/// `bench` on the CPU: the distillation step (teacher timed apart, inside the forward) and a
/// clear refusal of `--batch auto`, which needs a device allocator.
#[test]
fn bench_times_the_distillation_step() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let json = tmp.path().join("bench.json");
    let shape = common::tiny_bench_args("ndarray");
    let out = bin().args(&shape).args(["--batch", "2", "--distill", "--json"]).arg(&json).output().expect("run bench");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("valid json");
    assert_eq!(r["distill"], true);
    assert_eq!(r["batch"], 2);
    let (teacher, forward) = (r["teacher_s"].as_f64().expect("teacher_s"), r["forward_s"].as_f64().expect("forward_s"));
    assert!(teacher > 0.0 && teacher < forward, "teacher {teacher} s, forward {forward} s");
    assert!(r["memory_reserved_gb"].is_null(), "no device allocator on the CPU");

    let out = bin().args(&shape).args(["--batch", "auto"]).output().expect("run bench");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--batch auto needs a GPU backend"), "{err}");
    let out = bin().args(&shape).args(["--batch", "0"]).output().expect("run bench");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected `auto` or a number"));
}
