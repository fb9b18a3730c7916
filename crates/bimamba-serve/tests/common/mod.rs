//! A server on a loopback port with the model shipped in models/default (or another model
//! directory), and a minimal HTTP/1.1 client (one request per connection) to talk to it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use bimamba_models::AnyModel;
use bimamba_serve::{ChatTemplate, ServeOptions, Server};
use serde_json::Value;

pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

pub fn options() -> ServeOptions {
    ServeOptions {
        addr: "127.0.0.1:0".parse().expect("an address"),
        model_id: "default".into(),
        max_batch: 8,
        max_queue: 16,
        state_cache_bytes: 256 << 20,
        api_key: None,
        max_prompt_tokens: 2048,
        max_tokens: 512,
        drain_timeout: Duration::from_secs(10),
    }
}

/// A running server; `stop` shuts it down and waits for it.
pub struct Running {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    pub fn stop(mut self) {
        self.shutdown_and_join();
    }

    fn shutdown_and_join(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("the server thread ends without panicking");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown_and_join();
    }
}

pub fn start(options: ServeOptions) -> Running {
    start_model(&repo("models/default"), options)
}

/// A server over the model at `path`, with the chat template it ships (if any), as
/// `bimamba serve` opens it.
pub fn start_model(path: &Path, options: ServeOptions) -> Running {
    let model = AnyModel::open(path).expect("the model opens");
    let tokenizer = model.open_tokenizer(path, None).expect("its tokenizer");
    let chat = ChatTemplate::load(Some(path), &tokenizer, None).expect("its chat template");
    let server = Server::bind_with_template(model, tokenizer, chat, &options).expect("binds a loopback port");
    let addr = server.local_addr().expect("an address");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        server
            .run(async move {
                let _ = rx.await;
            })
            .expect("the server runs and stops cleanly");
    });
    Running { addr, shutdown: Some(tx), thread: Some(thread) }
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The `data:` payloads of a server-sent event stream.
    pub fn events(&self) -> Vec<String> {
        self.body.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_string).collect()
    }
}

fn write_request(stream: &mut TcpStream, method: &str, path: &str, headers: &[(&str, &str)], body: &str) {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).expect("request sent");
}

/// Sends one request and reads the whole response (chunked bodies decoded).
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connects");
    stream.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout set");
    write_request(&mut stream, method, path, headers, body);
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("response read");
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, rest) = text.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).expect("status");
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked { dechunk(rest) } else { rest.to_string() };
    Response { status, headers, body }
}

pub fn post(addr: SocketAddr, path: &str, body: &Value) -> Response {
    request(addr, "POST", path, &[], &body.to_string())
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// A streamed request left open: its `data:` lines are read one at a time.
pub struct OpenStream {
    reader: BufReader<TcpStream>,
}

impl OpenStream {
    pub fn open(addr: SocketAddr, path: &str, body: &Value) -> OpenStream {
        let mut stream = TcpStream::connect(addr).expect("connects");
        stream.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout set");
        write_request(&mut stream, "POST", path, &[], &body.to_string());
        OpenStream { reader: BufReader::new(stream) }
    }

    /// The next `data:` payload.
    pub fn next_data(&mut self) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.reader.read_line(&mut line).expect("a line");
            assert!(n > 0, "the stream ended");
            if let Some(d) = line.trim_end().strip_prefix("data: ") {
                return d.to_string();
            }
        }
    }
}

/// The value of one unlabelled metric in a /metrics page.
pub fn metric(addr: SocketAddr, name: &str) -> f64 {
    let page = request(addr, "GET", "/metrics", &[], "").body;
    page.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{page}"))
}
