//! Hostile flags and files at the command line: each is a correct answer or one clear line with a
//! non-zero exit (tests/cli.rs has the first set of user mistakes).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use bimamba_formats::Checkpoint;

mod common;
use common::{assert_user_error, bimamba, bimamba_env, root, scratch};

fn fixture(name: &str) -> String {
    root().join("fixtures").join(name).display().to_string()
}

#[test]
fn threads_beyond_the_machine_are_lowered_with_one_warning() {
    let m = fixture("ss-bimamba-col");
    for n in ["10000", "4294967296"] {
        let t0 = std::time::Instant::now();
        let o = bimamba(&["generate", "--model", &m, "--prompt", "Hi", "--max-tokens", "2", "--threads", n]);
        assert_eq!(o.code, 0, "{}", o.stderr);
        let warning: Vec<&str> = o.stderr.lines().filter(|l| l.starts_with("warning:")).collect();
        assert_eq!(warning.len(), 1, "{}", o.stderr);
        assert!(warning[0].contains(&format!("--threads {n}")) && warning[0].contains("using"), "{}", warning[0]);
        assert!(t0.elapsed().as_secs() < 30, "--threads {n} took {:?}", t0.elapsed());
    }
    assert_user_error(&bimamba(&["info", "--model", &m, "--threads", "0"]), &["--threads", "at least 1"]);
}

#[test]
fn a_bad_isa_variable_is_refused_like_the_flag() {
    let m = fixture("ss-bimamba-col");
    let o = bimamba_env(&["info", "--model", &m], &[("BIMAMBA_ISA", "bogus")]);
    assert_user_error(&o, &["BIMAMBA_ISA=bogus", "scalar, avx2, avx512, neon"]);
    // The flag, when given, wins over the variable.
    let o = bimamba_env(&["info", "--model", &m, "--isa", "scalar"], &[("BIMAMBA_ISA", "bogus")]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = bimamba_env(&["info", "--model", &m], &[("BIMAMBA_ISA", "SCALAR")]);
    assert_eq!(o.code, 0, "{}", o.stderr);
}

#[test]
fn zero_tokens_and_negative_numbers_reach_the_range_checks() {
    let m = fixture("ss-bimamba-col");
    let text = root().join("fixtures/text/pride_excerpt_short.txt").display().to_string();
    assert_user_error(
        &bimamba(&["generate", "--model", &m, "--prompt", "Hi", "--max-tokens", "0"]),
        &["--max-tokens 0", "at least 1"],
    );
    let cases: [(&[&str], &[&str]); 5] = [
        (&["generate", "--model", &m, "--prompt", "Hi", "--temperature", "-1"], &["--temperature", ">= 0", "-1"]),
        (&["generate", "--model", &m, "--prompt", "Hi", "--top-p", "-0.5"], &["--top-p", "-0.5"]),
        (&["generate", "--model", &m, "--prompt", "Hi", "--repeat-penalty", "-2"], &["--repeat-penalty", "-2"]),
        (&["eval", "ppl", "--model", &m, "--text", &text, "--seq-len", "-5"], &["--seq-len -5", "negative"]),
        (&["generate", "--model", &m, "--prompt", "Hi", "--max-tokens", "-3"], &["--max-tokens -3", "negative"]),
    ];
    for (args, needles) in cases {
        let o = bimamba(args);
        assert!(!o.stderr.contains("unexpected argument"), "{args:?}: {}", o.stderr);
        assert_user_error(&o, needles);
    }
}

fn greedy_json(extra: &[&str], stdin: Option<&[u8]>) -> serde_json::Value {
    let m = fixture("ss-bimamba-col");
    let mut args = vec!["generate", "--model", &m, "--greedy", "--ignore-eos", "--max-tokens", "4", "--json"];
    args.extend_from_slice(extra);
    let mut child = Command::new(env!("CARGO_BIN_EXE_bimamba"))
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the bimamba binary runs");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.unwrap_or_default().to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let o = child.wait_with_output().expect("wait");
    writer.join().expect("writer");
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("one JSON object")
}

#[test]
fn a_prompt_comes_from_a_file_or_standard_input() {
    let d = scratch("hostile", "prompt");
    let prompt = "It is a truth universally acknowledged";
    let want = greedy_json(&["--prompt", prompt], None);
    let file = d.join("prompt.txt");
    std::fs::write(&file, format!("{prompt}\n")).unwrap();
    let from_file = greedy_json(&["--prompt-file", file.to_str().unwrap()], None);
    assert_eq!(from_file["prompt_tokens"], want["prompt_tokens"]);
    assert_eq!(from_file["tokens"], want["tokens"]);
    let from_stdin = greedy_json(&["--prompt-file", "-"], Some(prompt.as_bytes()));
    assert_eq!(from_stdin["tokens"], want["tokens"]);

    // Longer than one command-line argument may be (128 KiB on Linux).
    let long = "It is a truth universally acknowledged. ".repeat(3400);
    assert!(long.len() > 131_072);
    let v = greedy_json(&["--prompt-file", "-"], Some(long.as_bytes()));
    assert!(v["prompt_tokens"].as_array().unwrap().len() > 10_000);

    let m = fixture("ss-bimamba-col");
    std::fs::write(d.join("latin1.txt"), b"caf\xe9").unwrap();
    let bad = d.join("latin1.txt").display().to_string();
    assert_user_error(&bimamba(&["generate", "--model", &m, "--prompt-file", &bad]), &["latin1.txt", "UTF-8"]);
    let missing = d.join("missing.txt").display().to_string();
    assert_user_error(&bimamba(&["generate", "--model", &m, "--prompt-file", &missing]), &["missing.txt"]);
    assert_user_error(
        &bimamba(&["generate", "--model", &m, "--prompt", "x", "--prompt-file", &missing]),
        &["--prompt", "--prompt-file"],
    );
}

#[test]
fn packing_a_packed_model_keeps_its_8bit_embedding() {
    let d = scratch("hostile", "repack");
    let (q8, again, dense) = (d.join("q8"), d.join("again"), d.join("dense"));
    let src = fixture("ss-bimamba-col");
    let pack = |from: &Path, to: &Path, extra: &[&str]| {
        let mut args = vec!["pack", "--model", from.to_str().unwrap(), "--out", to.to_str().unwrap()];
        args.extend_from_slice(extra);
        let o = bimamba(&args);
        assert_eq!(o.code, 0, "{}", o.stderr);
    };
    pack(Path::new(&src), &q8, &["--embed", "q8"]);
    pack(&q8, &again, &[]);
    let storage = |dir: &Path| {
        let o = bimamba(&["info", "--model", dir.to_str().unwrap(), "--json"]);
        assert_eq!(o.code, 0, "{}", o.stderr);
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        v["embedding_storage"].as_str().unwrap().to_string()
    };
    assert_eq!(storage(&again), "q8");
    let size = |dir: &Path| std::fs::metadata(dir.join("model.safetensors")).unwrap().len();
    assert_eq!(size(&again), size(&q8));
    // Asked for, the dense embedding is still there.
    pack(&q8, &dense, &["--embed", "dense"]);
    assert_ne!(storage(&dense), "q8");
}

#[test]
fn gguf_help_and_behaviour_agree() {
    for cmd in ["info", "quantize"] {
        let o = bimamba(&[cmd, "--help"]);
        assert_eq!(o.code, 0);
        assert!(!o.stdout.contains("FILE.gguf"), "{cmd} --help: {}", o.stdout);
        assert!(o.stdout.contains("--model <DIR>"), "{cmd} --help: {}", o.stdout);
    }
    let o = bimamba(&["generate", "--help"]);
    assert!(o.stdout.contains("DIR|FILE.gguf"), "{}", o.stdout);
    let d = scratch("hostile", "badgguf");
    let f = d.join("model.gguf");
    std::fs::write(&f, b"GGUX\x03\0\0\0 not really").unwrap();
    let o = bimamba(&["generate", "--model", f.to_str().unwrap(), "--prompt", "Hi"]);
    assert_user_error(&o, &["model.gguf", "not a GGUF file", "47 47 55 58"]);
    assert!(!o.stderr.contains("model directory"), "{}", o.stderr);
}

#[test]
fn error_lines_say_each_thing_once_and_escape_what_the_file_holds() {
    let m = fixture("ss-bimamba-col");
    let o = bimamba(&["eval", "ppl", "--model", &m, "--text", "/nonexistent/text.txt"]);
    assert_user_error(&o, &["/nonexistent/text.txt", "os error 2"]);
    assert_eq!(o.stderr.matches("os error 2").count(), 1, "{}", o.stderr);

    let out = scratch("hostile", "q").join("out").display().to_string();
    let o = bimamba(&["quantize", "--method", "xnor", "--model", &m, "--out", &out]);
    assert_user_error(&o, &["already 1-bit"]);
    assert_eq!(o.stderr.matches("already 1-bit").count(), 1, "{}", o.stderr);

    // A packed file of a version this build does not read: the version as written.
    let src = Checkpoint::open(Path::new(&m).join("model.safetensors").as_path()).unwrap();
    let tensors: Vec<_> = src
        .tensors()
        .into_iter()
        .map(|i| (i.name.clone(), i.dtype, i.shape.clone(), src.bytes(&i.name).unwrap()))
        .collect();
    let d = scratch("hostile", "version");
    std::fs::copy(Path::new(&m).join("config.json"), d.join("config.json")).unwrap();
    let meta = [("format".to_string(), "bimamba-packed".to_string()), ("version".to_string(), "3".to_string())];
    bimamba_formats::write_safetensors_atomic(&d.join("model.safetensors"), &tensors, &meta.into_iter().collect())
        .unwrap();
    let o = bimamba(&["info", "--model", d.to_str().unwrap()]);
    assert_user_error(&o, &["version \"3\""]);
    assert!(!o.stderr.contains("Some("), "{}", o.stderr);

    // A tensor name with a terminal escape sequence and a bell is shown escaped.
    let d = scratch("hostile", "evilname");
    std::fs::copy(Path::new(&m).join("config.json"), d.join("config.json")).unwrap();
    let index = r#"{"metadata": {}, "weight_map": {"evil\u001b[31m\u0007": "../elsewhere.safetensors"}}"#;
    std::fs::write(d.join("model.safetensors.index.json"), index).unwrap();
    let o = bimamba(&["info", "--model", d.to_str().unwrap()]);
    assert_user_error(&o, &["model.safetensors.index.json", "evil"]);
    assert!(!o.stderr.contains('\u{1b}') && !o.stderr.contains('\u{7}'), "{:?}", o.stderr);
    assert!(o.stderr.contains("\\u{1b}[31m"), "{}", o.stderr);
}

#[test]
fn long_work_off_a_terminal_prints_progress_lines() {
    let m = fixture("ss-bimamba-col");
    let text = root().join("fixtures/text/pride_excerpt_short.txt").display().to_string();
    let args = ["eval", "ppl", "--model", &m, "--text", &text, "--seq-len", "16", "--json"];
    // stderr is a pipe here, not a terminal; a line at every window.
    let o = bimamba_env(&args, &[("BIMAMBA_PROGRESS_SECS", "0")]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let lines: Vec<&str> = o.stderr.lines().filter(|l| l.starts_with("progress: ")).collect();
    assert!(lines.len() >= 4 && lines.iter().all(|l| l.contains(" windows in ")), "{}", o.stderr);
    serde_json::from_str::<serde_json::Value>(&o.stdout).expect("stdout is still one JSON object");
    // At the default interval a run of a second says nothing.
    let o = bimamba(&args);
    assert!(!o.stderr.contains("progress: "), "{}", o.stderr);
}
