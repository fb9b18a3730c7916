//! `bimamba serve` as a process: its option mistakes are one line, it listens on loopback by
//! default, answers, and exits 0 on SIGTERM. (The endpoints themselves are tested in
//! crates/bimamba-serve/tests/loopback.rs.)

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_user_error, bimamba, root, scratch};

#[test]
fn option_mistakes_are_one_line() {
    let default = root().join("models/default");
    let model = default.to_str().expect("UTF-8 path");
    assert_user_error(&bimamba(&["serve", "--model", model, "--port", "70000"]), &["--port", "70000"]);
    assert_user_error(&bimamba(&["serve", "--model", model, "--host", "localhost:80"]), &["--host"]);
    assert_user_error(&bimamba(&["serve", "--model", model, "--max-batch", "0"]), &["--max-batch", "0"]);
    assert_user_error(&bimamba(&["serve", "--shape", "9b"]), &["--shape 9b", "2.7b"]);
    assert_user_error(&bimamba(&["serve", "--shape", "130m"]), &["--shape 130m", "--tokenizer"]);
    assert_user_error(&bimamba(&["serve", "--model", model, "--gguf-act", "q8"]), &["--gguf-act q8"]);
    let missing = root().join("no-such-model");
    assert_user_error(&bimamba(&["serve", "--model", missing.to_str().expect("UTF-8 path")]), &["no-such-model"]);
}

#[test]
fn chat_template_mistakes_are_one_line_before_listening() {
    let default = root().join("models/default");
    let model = default.to_str().expect("UTF-8 path");
    let dir = scratch("serve", "chat-template");
    let missing = dir.join("missing.jinja");
    let missing = missing.to_str().expect("UTF-8 path");
    let out = bimamba(&["serve", "--model", model, "--port", "0", "--chat-template", missing]);
    assert_user_error(&out, &[missing, "cannot read the chat template"]);
    let broken = dir.join("broken.jinja");
    std::fs::write(&broken, "{% for m in messages %}{{ m.content }}").expect("writes");
    let broken = broken.to_str().expect("UTF-8 path");
    let out = bimamba(&["serve", "--model", model, "--port", "0", "--chat-template", broken]);
    assert_user_error(&out, &[broken, "does not parse"]);
    // A model directory whose tokenizer_config.json has no default among its named templates.
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(default.join(file), dir.join(file)).expect("the shipped model copies");
    }
    std::fs::write(dir.join("tokenizer_config.json"), r#"{"chat_template": [{"name": "rag", "template": "x"}]}"#)
        .expect("writes");
    let copy = dir.to_str().expect("UTF-8 path");
    let out = bimamba(&["serve", "--model", copy, "--port", "0"]);
    assert_user_error(&out, &["tokenizer_config.json: chat_template", "`default`", "--chat-template"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serves_on_loopback_and_exits_cleanly_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bimamba"))
        .args(["serve", "--port", "0", "--threads", "1"])
        .arg("--model")
        .arg(root().join("models/default"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("the bimamba binary runs");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr is piped"));
    let mut line = String::new();
    stderr.read_line(&mut line).expect("a start line");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in: {line}"))
        .to_string();
    assert!(addr.starts_with("127.0.0.1:"), "listens on loopback by default: {line}");
    assert!(line.contains("chat: transcript"), "the shipped model has no chat template: {line}");

    let mut s = TcpStream::connect(&addr).expect("connects");
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("sent");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("a reply");
    assert!(reply.starts_with("HTTP/1.1 200") && reply.contains("\"ok\""), "{reply}");

    let pid = child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
    assert!(killed.success());
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("waits") {
            break st;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no exit within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).expect("the rest of stderr");
    assert_eq!(status.code(), Some(0), "stderr: {rest}");
    assert!(rest.contains("shutting down"), "{rest}");
}
