//! Compares the tokenizer rebuilt from a GGUF file with a Hugging Face tokenizer.json, id for id,
//! on a few fixed strings and on every paragraph of the given text files.
//!
//! `cargo run --release -p bimamba-llama --example check_tokenizer -- MODEL.gguf TOKENIZER.json [TEXT...]`
//!
//! Prints one line per input source and exits with status 1 on the first difference.

use std::path::PathBuf;
use std::process::ExitCode;

use bimamba_formats::Checkpoint;
use bimamba_text::{read_text_file, Tokenizer};

const FIXED: [&str; 8] = [
    "Hello world! 123",
    "  multiple   spaces",
    "Café déjà vu. 日本語 ✓",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "def f(x):\n\treturn x**2  # 3.14159\n",
    "I'm, you're, we'll, they've, he'd... 1,000,000 $5.99",
    "\n\n\n   \t  trailing   ",
];

/// The two encodings of a text when they differ.
type Difference = Option<(Vec<u32>, Vec<u32>)>;

fn run() -> Result<bool, String> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [gguf, json, texts @ ..] = &args[..] else {
        return Err("usage: check_tokenizer MODEL.gguf TOKENIZER.json [TEXT...]".into());
    };
    let ck = Checkpoint::open(gguf).map_err(|e| e.to_string())?;
    let ours = bimamba_llama::gguf_tokenizer(&ck).map_err(|e| e.to_string())?;
    let theirs = Tokenizer::from_file(json).map_err(|e| e.to_string())?;
    println!("vocab: gguf {} / json {}", ours.vocab_size(), theirs.vocab_size());
    let same = |text: &str| -> Result<Difference, String> {
        let a = ours.encode(text).map_err(|e| e.to_string())?;
        let b = theirs.encode(text).map_err(|e| e.to_string())?;
        Ok((a != b).then_some((a, b)))
    };
    for text in FIXED {
        if let Some((a, b)) = same(text)? {
            println!("DIFFER on {text:?}:\n  gguf {a:?}\n  json {b:?}");
            return Ok(false);
        }
        let ids = ours.encode(text).map_err(|e| e.to_string())?;
        let back = ours.decode(&ids).map_err(|e| e.to_string())?;
        if back != text {
            println!("round trip fails on {text:?}: {back:?}");
            return Ok(false);
        }
    }
    println!("fixed strings: {} / {} identical, round trips exact", FIXED.len(), FIXED.len());
    for path in texts {
        let text = read_text_file(path).map_err(|e| e.to_string())?;
        let mut n = 0usize;
        let mut tokens = 0usize;
        for para in text.split("\n\n").filter(|p| !p.trim().is_empty()) {
            if let Some((a, b)) = same(para)? {
                println!("{}: DIFFER on paragraph {n}", path.display());
                println!("  text {para:?}\n  gguf {a:?}\n  json {b:?}");
                return Ok(false);
            }
            n += 1;
            tokens += ours.encode(para).map_err(|e| e.to_string())?.len();
        }
        // The whole file at once as well (paragraph breaks and all).
        let whole = same(&text)?.is_none();
        println!("{}: {n} paragraphs ({tokens} tokens) identical; whole file identical: {whole}", path.display());
        if !whole {
            return Ok(false);
        }
    }
    Ok(true)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
