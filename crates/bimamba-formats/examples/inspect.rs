//! Prints a checkpoint's format, tensors (dtype, row-major shape) and metadata.
//!
//! `cargo run -p bimamba-formats --example inspect -- PATH [--all] [--dump TENSOR OUT.f32]`
//! By default long arrays such as a tokenizer vocabulary are summarized by length and first
//! entries; `--dump` also writes one tensor, converted by `to_f32`, as raw little-endian f32.

use std::path::PathBuf;

use bimamba_formats::{Checkpoint, GgufArray, GgufValue};

fn show(v: &GgufValue, all: bool) -> String {
    match v {
        GgufValue::String(s) => format!("{s:?}"),
        GgufValue::Array(GgufArray::String(a)) if !all && a.len() > 8 => {
            format!("[{} strings: {:?} ...]", a.len(), &a[..5])
        }
        GgufValue::Array(a) if !all && a.len() > 8 => format!("[{} × {}]", a.len(), v.type_name()),
        other => format!("{other:?}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first().map(PathBuf::from) else {
        eprintln!("usage: inspect PATH [--all] [--dump TENSOR OUT.f32]");
        std::process::exit(2);
    };
    let all = args.iter().any(|a| a == "--all");
    let dump = args.iter().position(|a| a == "--dump").map(|i| (args.get(i + 1), args.get(i + 2)));
    let ck = match Checkpoint::open(&path) {
        Ok(ck) => ck,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    println!("{} ({:?}, {} bytes, {} tensors)", ck.path().display(), ck.format(), ck.file_bytes(), ck.tensors().len());
    for t in ck.tensors() {
        println!("  {:<48} {:<5} {:?}", t.name, t.dtype.name(), t.shape);
    }
    for (k, v) in ck.metadata() {
        println!("  meta {k} = {v}");
    }
    if let Some(g) = ck.gguf() {
        println!("GGUF v{} alignment {}", g.version, g.alignment);
        for (k, v) in &g.kv {
            println!("  {k}: {} = {}", v.type_name(), show(v, all));
        }
    }
    match dump {
        None => {}
        Some((Some(name), Some(out))) => {
            let values = ck.to_f32(name).unwrap_or_else(|e| {
                eprintln!("error: {e}");
                std::process::exit(1)
            });
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            if let Err(e) = std::fs::write(out, bytes) {
                eprintln!("error: {out}: {e}");
                std::process::exit(1);
            }
            println!("wrote {} f32 values of `{name}` to {out}", values.len());
        }
        Some(_) => {
            eprintln!("--dump needs TENSOR and OUT");
            std::process::exit(2);
        }
    }
}
