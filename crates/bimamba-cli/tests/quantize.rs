//! `bimamba quantize` end to end on the tiny FP fixture: every method writes a model directory
//! that `eval ppl` and `info` accept, with its method and bits in the metadata; user mistakes give
//! one clear error line.

use std::path::{Path, PathBuf};

use bimamba_formats::Checkpoint;

mod common;
use common::{assert_user_error, bimamba, root, scratch};

fn tmp(name: &str) -> PathBuf {
    scratch("quantize", name)
}

fn fixture(name: &str) -> String {
    root().join("fixtures").join(name).display().to_string()
}

fn ppl(model: &str) -> f64 {
    let text = fixture("text/pride_excerpt_short.txt");
    let o = bimamba(&["eval", "ppl", "--model", model, "--text", &text, "--seq-len", "256", "--json"]);
    assert_eq!(o.code, 0, "eval ppl failed: {}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(o.stdout.trim()).expect("one JSON object");
    v["ppl"].as_f64().expect("ppl is a number")
}

/// Every method quantizes the fixture (calibrated on the Pride and Prejudice excerpt), and the
/// result loads, scores in `eval ppl`, differs from the FP model and records its bits.
#[test]
fn every_method_writes_a_model_that_scores() {
    let dir = tmp("methods");
    let src = fixture("ss-mamba2-g1");
    let calib = fixture("text/pride_excerpt.txt");
    let fp = ppl(&src);
    let cases: [(&str, &[&str], f64, f64); 5] = [
        ("xnor", &[], 1.0, 1.0),
        ("gptq", &["--bits", "2"], 2.0, 2.0),
        ("gptq", &["--bits", "3"], 3.0, 3.0),
        ("billm", &[], 1.0, 1.5),
        ("pbllm", &["--salient-fraction", "0.1"], 1.69, 1.71),
    ];
    for (i, (method, extra, lo, hi)) in cases.iter().enumerate() {
        let out = dir.join(format!("{method}-{i}")).display().to_string();
        let mut args = vec!["quantize", "--method", method, "--model", &src, "--out", &out];
        if *method != "xnor" {
            args.extend(["--calib", &calib, "--calib-samples", "6", "--calib-seq-len", "256"]);
        }
        args.extend(extra.iter());
        let o = bimamba(&args);
        assert_eq!(o.code, 0, "{method}: {}", o.stderr);
        assert!(o.stdout.contains("bits/weight"), "{method}: {}", o.stdout);
        assert_eq!(
            o.stderr.lines().filter(|l| l.contains("in_proj")).count(),
            2,
            "{method}: one line per projection: {}",
            o.stderr
        );

        let ck = Checkpoint::open(Path::new(&out)).expect("model.safetensors");
        let meta = ck.metadata();
        assert_eq!(meta.get("quant.method").map(String::as_str), Some(*method));
        assert!(meta["quant.weights"].starts_with("dequantized"));
        let bits: f64 = meta["quant.bits_per_weight"].parse().expect("bits");
        assert!(bits >= *lo && bits <= *hi, "{method}: {bits} bits/weight");
        let settings: serde_json::Value = serde_json::from_str(&meta["quant.settings"]).expect("settings JSON");
        if *method != "xnor" {
            assert_eq!(settings["calibration"]["samples"], 6);
            assert_eq!(settings["calibration"]["overlapping"], false);
        }
        let q = ppl(&out);
        assert!(q.is_finite() && q > 1.0, "{method}: ppl {q}");
        assert!((q - fp).abs() > 1e-6 * fp, "{method}: ppl {q} equals the FP model's {fp}");
        let info = bimamba(&["info", "--model", &out]);
        assert_eq!(info.code, 0, "info on {method}: {}", info.stderr);
    }
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn mistakes_are_one_line_errors() {
    let dir = tmp("mistakes");
    let src = fixture("ss-mamba2-g1");
    let calib = fixture("text/pride_excerpt.txt");
    let out = dir.join("q").display().to_string();
    std::fs::create_dir_all(dir.join("q")).expect("mkdir");
    std::fs::write(dir.join("q").join("keep.txt"), "user data").expect("write");
    let o = bimamba(&["quantize", "--method", "xnor", "--model", &src, "--out", &out]);
    assert_user_error(&o, &["not empty", "q"]);
    assert!(dir.join("q").join("keep.txt").is_file(), "an existing --out is left alone");

    let fresh = dir.join("fresh").display().to_string();
    assert_user_error(&bimamba(&["quantize", "--method", "gptq", "--model", &src, "--out", &fresh]), &["--calib"]);
    assert_user_error(
        &bimamba(&["quantize", "--method", "xnor", "--bits", "2", "--model", &src, "--out", &fresh]),
        &["--bits"],
    );
    assert_user_error(
        &bimamba(&["quantize", "--method", "gptq", "--bits", "9", "--model", &src, "--out", &fresh, "--calib", &calib]),
        &["bits", "9"],
    );
    assert_user_error(
        &bimamba(&[
            "quantize",
            "--method",
            "pbllm",
            "--salient-fraction",
            "1.5",
            "--model",
            &src,
            "--out",
            &fresh,
            "--calib",
            &calib,
        ]),
        &["1.5"],
    );
    assert_user_error(
        &bimamba(&[
            "quantize",
            "--method",
            "billm",
            "--model",
            &src,
            "--out",
            &fresh,
            "--calib",
            &calib,
            "--calib-seq-len",
            "100000",
        ]),
        &["pride_excerpt.txt", "100000"],
    );
    assert_user_error(
        &bimamba(&["quantize", "--method", "xnor", "--model", &fixture("ss-bimamba-col"), "--out", &fresh]),
        &["already 1-bit"],
    );
    assert!(!dir.join("fresh").exists(), "a failed run leaves no --out behind");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
