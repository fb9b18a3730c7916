//! The runtime options every model command shares (`--isa`, `--threads`, `--state-dtype`,
//! `--binary-act`, `--gguf-act`, `--exact`): the same spellings everywhere, applied where they
//! mean something, fast by default, and every mistake one line naming the flag.

mod common;
use common::{assert_user_error, bimamba, root};

fn fixture(name: &str) -> String {
    root().join("fixtures").join(name).display().to_string()
}

#[test]
fn every_model_command_takes_them_and_a_bad_value_is_one_line() {
    let m = fixture("ss-bimamba-col");
    let text = root().join("fixtures/text/pride_excerpt_short.txt").display().to_string();
    let commands: [&[&str]; 6] = [
        &["generate", "--model", &m, "--prompt", "x"],
        &["eval", "ppl", "--model", &m, "--text", &text],
        &["eval", "tasks", "--model", &m],
        &["info", "--model", &m],
        &["quantize", "--method", "xnor", "--model", &m, "--out", "/nonexistent/out"],
        &["bench", "--model", &m],
    ];
    let bad: [(&str, &str, &str); 5] = [
        ("--isa", "sse9", "scalar, avx2, avx512 or neon"),
        ("--threads", "0", "at least 1"),
        ("--state-dtype", "f16", "f32 or bf16"),
        ("--binary-act", "int4", "f32 or int8"),
        ("--gguf-act", "q4", "f32 or q8"),
    ];
    for cmd in commands {
        for (flag, value, expected) in bad {
            let args: Vec<&str> = cmd.iter().copied().chain([flag, value]).collect();
            assert_user_error(&bimamba(&args), &[flag, value, expected]);
        }
    }
}

#[test]
fn spellings_and_case_of_the_isa_are_kept() {
    let m = fixture("ss-mamba2-g1");
    for isa in ["scalar", "SCALAR"] {
        let o = bimamba(&["info", "--model", &m, "--isa", isa, "--threads", "1", "--json"]);
        assert_eq!(o.code, 0, "--isa {isa}: {}", o.stderr);
    }
}

#[test]
fn info_reports_the_state_in_the_dtype_asked_for() {
    let m = fixture("ss-mamba2-g1");
    let bytes = |dtype: &str| {
        let o = bimamba(&["info", "--model", &m, "--state-dtype", dtype, "--json"]);
        assert_eq!(o.code, 0, "{}", o.stderr);
        let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("one JSON object");
        v["state_bytes"].as_u64().expect("state_bytes")
    };
    let (f32_bytes, bf16_bytes) = (bytes("f32"), bytes("bf16"));
    assert!(bf16_bytes < f32_bytes, "bf16 {bf16_bytes} vs f32 {f32_bytes}");
}

#[test]
fn settings_a_command_does_not_use_are_refused() {
    let m = fixture("ss-mamba2-g1");
    let out = common::scratch("runtime", "quantize").join("out");
    let out = out.to_str().expect("UTF-8 path");
    for (flag, value) in [("--state-dtype", "bf16"), ("--binary-act", "int8"), ("--gguf-act", "q8")] {
        let o = bimamba(&["quantize", "--method", "xnor", "--model", &m, "--out", out, flag, value]);
        assert_user_error(&o, &[flag, value, "quantize"]);
    }
    assert!(!std::path::Path::new(out).exists(), "nothing was written");
}

#[test]
fn a_missing_argument_is_one_line_and_help_still_shows() {
    assert_user_error(&bimamba(&["generate"]), &["--prompt"]);
    let o = bimamba(&["generate", "--help"]);
    assert_eq!(o.code, 0);
    assert!(o.stdout.contains("Runtime options:") && o.stdout.contains("--gguf-act"), "{}", o.stdout);
}

#[test]
fn the_defaults_are_fast_and_exact_restores_f32() {
    let m = fixture("ss-bimamba-col");
    let text = root().join("fixtures/text/pride_excerpt_short.txt").display().to_string();
    let ppl = |extra: &[&str]| {
        let args: Vec<&str> = ["eval", "ppl", "--model", &m, "--text", &text, "--seq-len", "32", "--json"]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        let o = bimamba(&args);
        assert_eq!(o.code, 0, "{args:?}: {}", o.stderr);
        serde_json::from_str::<serde_json::Value>(&o.stdout).expect("JSON")
    };
    let (fast, exact) = (ppl(&[]), ppl(&["--exact"]));
    // This machine's default: int8 where a SIMD int8 kernel runs it, else f32.
    let int8 = bimamba_kernels::act8_has_simd(bimamba_kernels::selected_isa());
    assert_eq!(fast["binary_act"], if int8 { "int8" } else { "f32" }, "{fast}");
    assert_eq!(fast["state_dtype"], "bf16", "{fast}");
    assert_eq!((&exact["binary_act"], &exact["state_dtype"]), (&"f32".into(), &"f32".into()), "{exact}");
    // A flag given beside the default keeps the other default.
    let f32_act = ppl(&["--binary-act", "f32"]);
    assert_eq!((&f32_act["binary_act"], &f32_act["state_dtype"]), (&"f32".into(), &"bf16".into()), "{f32_act}");
    let (a, b) = (fast["ppl"].as_f64().unwrap(), exact["ppl"].as_f64().unwrap());
    assert!(a != b && (a - b).abs() <= 0.01 * b, "fast {a} vs exact {b}");

    // --exact and an explicit precision contradict each other: one line.
    for (flag, value) in [("--binary-act", "int8"), ("--state-dtype", "bf16"), ("--gguf-act", "q8")] {
        let o = bimamba(&["eval", "ppl", "--model", &m, "--text", &text, "--exact", flag, value]);
        assert_user_error(&o, &["--exact", flag]);
    }
}
