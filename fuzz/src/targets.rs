//! The fuzz targets: one per parser a user's file reaches, each with its seed corpus taken from
//! the repository's fixtures (or written from them once, for formats no fixture holds). A target
//! gets the mutated bytes and drives the parser as the CLI does, then uses what it accepted
//! (reads every tensor, runs a forward, encodes text); an `Err` is a correct answer, a panic or an
//! abort is a bug.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bimamba_engine::pack::{write_packed, EmbedStorage, KeepDType};
use bimamba_engine::{Config, Model};
use bimamba_formats::Checkpoint;
use bimamba_lm::LanguageModel;
use bimamba_models::AnyModel;
use bimamba_train::checkpoint::{self, RunShape, TrainState, CHECKPOINT_VERSION};
use bimamba_train::data::{Dataset, TokenFile, WindowSampler};
use bimamba_train::teacher::{topk_header, TopkFile};

/// One target: its name, what it drives, and the function given each input (true when the
/// parser accepted it).
pub struct Target {
    pub name: &'static str,
    pub about: &'static str,
    pub run: fn(&Setup, &[u8]) -> bool,
}

/// Files shared by the targets: fixtures, seeds written once, and a scratch folder per process.
pub struct Setup {
    pub root: PathBuf,
    pub scratch: PathBuf,
    /// The stored entries of a real `torch.save` file, for the pickle target to re-zip.
    torch_entries: Vec<(String, Vec<u8>)>,
}

pub const TARGETS: [Target; 14] = [
    Target { name: "config-json", about: "config.json, both dialects (Config::from_json_str)", run: config_json },
    Target { name: "tokenizer-json", about: "tokenizer.json, then encode and decode", run: tokenizer_json },
    Target { name: "safetensors", about: "a safetensors file: header, offsets, every tensor's data", run: safetensors },
    Target { name: "model", about: "a Bi-Mamba model.safetensors loaded by the engine, one forward", run: model },
    Target { name: "packed", about: "a packed 1-bit file with a q8 embedding, loaded, one forward", run: packed },
    Target { name: "torch-zip", about: "pytorch_model.bin as a whole (zip, CRCs, pickle, storages)", run: torch_zip },
    Target { name: "pickle", about: "data.pkl inside a valid zip (the weights-only pickle VM)", run: pickle },
    Target { name: "gguf", about: "a LLaMA GGUF opened as a model: metadata, tensors, tokenizer, forward", run: gguf },
    Target { name: "eval-jsonl", about: "an eval task file in each of the three layouts", run: eval_jsonl },
    Target {
        name: "train-toml",
        about: "a training config (TrainConfig::load, then [model] resolved)",
        run: train_toml,
    },
    Target {
        name: "checkpoint-state",
        about: "a checkpoint's state.json, loaded and checked for --resume",
        run: state_json,
    },
    Target { name: "token-file", about: "a BMTK token file from data prepare, mapped and read", run: token_file },
    Target {
        name: "data-meta",
        about: "a data directory's meta.json against its token files (Dataset::open), one batch",
        run: data_meta,
    },
    Target { name: "topk-file", about: "a BMTL teacher top-k file, opened, one batch read", run: topk_file },
];

fn fixture(s: &Setup, rel: &str) -> Vec<u8> {
    std::fs::read(s.root.join("fixtures").join(rel)).unwrap_or_else(|e| panic!("fixtures/{rel}: {e}"))
}

/// Writes `data` to `name` in the scratch folder and returns the path.
fn put(s: &Setup, name: &str, data: &[u8]) -> PathBuf {
    let p = s.scratch.join(name);
    std::fs::write(&p, data).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    p
}

/// Uses what a checkpoint accepted: every tensor's bytes, and its f32 values when small.
fn read_all(ck: &Checkpoint) {
    for t in ck.tensors() {
        let _ = ck.bytes(&t.name);
        if t.numel() <= 1 << 20 {
            let _ = ck.to_f32(&t.name);
        }
    }
}

fn forward<M: LanguageModel>(m: &M) {
    let mut st = m.new_state();
    let v = m.vocab_size().max(1) as u32;
    let _ = m.forward(&mut st, &[1 % v, 7 % v, 3 % v]);
}

impl Setup {
    /// Creates the scratch folder and the seeds no fixture holds as a file.
    pub fn new(root: &Path, scratch: &Path) -> Setup {
        let _ = std::fs::remove_dir_all(scratch);
        for d in ["model", "packed", "pt", "pt2", "ckpt/checkpoints/step-00000010", "tok"] {
            std::fs::create_dir_all(scratch.join(d)).expect("scratch folder");
        }
        let fx = root.join("fixtures");
        for d in ["model", "packed"] {
            std::fs::copy(fx.join("ss-bimamba-col/config.json"), scratch.join(d).join("config.json")).expect("copy");
        }
        // A packed model with a q8 embedding, from the Bi-Mamba fixture.
        let src = fx.join("ss-bimamba-col");
        let m = Model::load(&src).expect("fixture loads");
        let ck = Checkpoint::open(&src).expect("fixture opens");
        let seed_dir = scratch.join("packed-seed");
        std::fs::create_dir_all(&seed_dir).expect("seed folder");
        write_packed(&m, &ck, &seed_dir, KeepDType::Source, EmbedStorage::Q8).expect("pack the fixture");
        // The checkpoint folder a state.json is resumed from.
        let empty = bimamba_train::params::NamedTensors::new();
        let ck_dir = scratch.join("ckpt/checkpoints/step-00000010");
        for f in ["model.safetensors", "optim.safetensors"] {
            bimamba_train::params::write_safetensors(&ck_dir.join(f), &empty, None).expect("write");
        }
        // The data directory whose meta.json the data-meta target replaces.
        let texts = [root.join("fixtures/text/pride_excerpt_short.txt")];
        let tok = root.join("fixtures/ss-bimamba-col/tokenizer.json");
        bimamba_train::data::prepare(&tok, &scratch.join("meta-data"), &texts, 0.1).expect("data prepare");
        let mut torch_entries = Vec::new();
        let bin = std::fs::read(fx.join("ss-mamba2-g1/pytorch_model.bin")).expect("fixture");
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(bin)).expect("fixture zip");
        for i in 0..z.len() {
            let mut f = z.by_index(i).expect("entry");
            let mut b = Vec::new();
            f.read_to_end(&mut b).expect("read entry");
            torch_entries.push((String::from_utf8_lossy(f.name_raw()).into_owned(), b));
        }
        Setup { root: root.to_path_buf(), scratch: scratch.to_path_buf(), torch_entries }
    }

    /// The seed corpus of `target`.
    pub fn seeds(&self, target: &str) -> Vec<Vec<u8>> {
        let s = self;
        let many = |rels: &[&str]| rels.iter().map(|r| fixture(s, r)).collect::<Vec<_>>();
        match target {
            "config-json" => {
                let mut v = many(&[
                    "ss-bimamba-col/config.json",
                    "ss-bimamba-row/config.json",
                    "ss-mamba2-g1/config.json",
                    "hf-mamba2-g2/config.json",
                    "tiny-austen/config.json",
                ]);
                v.push(std::fs::read(s.root.join("models/default/config.json")).expect("default model config"));
                v
            }
            "tokenizer-json" => many(&["ss-bimamba-col/tokenizer.json", "hf-mamba2-g2/tokenizer.json"]),
            "safetensors" => many(&["hf-mamba2-g2/model.safetensors", "ss-bimamba-col/reference.safetensors"]),
            "model" => many(&["ss-bimamba-col/model.safetensors"]),
            "packed" => vec![std::fs::read(s.scratch.join("packed-seed/model.safetensors")).expect("packed seed")],
            "torch-zip" => many(&["ss-mamba2-g1/pytorch_model.bin", "ss-bimamba-row/pytorch_model.bin"]),
            "pickle" => s.torch_entries.iter().filter(|(n, _)| n.ends_with("data.pkl")).map(|e| e.1.clone()).collect(),
            "gguf" => vec![bimamba_llama::testing::tiny_llama_gguf(7)],
            "eval-jsonl" => {
                // The first few documents of each task file keep every execution short.
                let files = ["boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "lambada_openai"];
                files
                    .iter()
                    .map(|f| {
                        let text = String::from_utf8(fixture(s, &format!("eval/{f}.jsonl"))).expect("UTF-8");
                        text.lines().take(4).collect::<Vec<_>>().join("\n").into_bytes()
                    })
                    .collect()
            }
            "train-toml" => ["tiny-cpu.toml", "distill-bi.toml", "gpu-130m.toml"]
                .iter()
                .filter_map(|f| std::fs::read(s.root.join("configs").join(f)).ok())
                .collect(),
            "checkpoint-state" => {
                let mut sampler = WindowSampler::new(48, false, 7);
                sampler.drawn = 80;
                let st = TrainState {
                    version: CHECKPOINT_VERSION,
                    step: 10,
                    adam_steps: 10,
                    sampler,
                    tokens_seen: 3840,
                    elapsed_s: 1.5,
                    world_size: 1,
                };
                vec![serde_json::to_vec_pretty(&st).expect("serialize")]
            }
            "data-meta" => vec![std::fs::read(s.scratch.join("meta-data/meta.json")).expect("meta.json")],
            "topk-file" => {
                // Two windows of 8 positions, top 4, ids below the fixture vocabulary.
                let (k, seq_len, windows) = (4usize, 8usize, 2usize);
                let mut f = topk_header(k, seq_len, windows, "0123456789abcdef");
                for w in 0..windows {
                    for i in 0..seq_len * k {
                        f.extend_from_slice(&(((w * 31 + i * 7) % 451) as u32).to_le_bytes());
                    }
                    for i in 0..seq_len * k {
                        f.extend_from_slice(&(-0.5 * (i % k + 1) as f32).to_le_bytes());
                    }
                }
                vec![f]
            }
            "token-file" => {
                let out = s.scratch.join("data");
                let _ = std::fs::remove_dir_all(&out);
                let texts = [s.root.join("fixtures/text/pride_excerpt_short.txt")];
                let tok = s.root.join("fixtures/ss-bimamba-col/tokenizer.json");
                bimamba_train::data::prepare(&tok, &out, &texts, 0.1).expect("data prepare");
                vec![std::fs::read(out.join("train.tok")).expect("train.tok")]
            }
            other => panic!("no target {other}"),
        }
    }
}

fn config_json(_: &Setup, data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let Ok(c) = Config::from_json_str(&text, Path::new("config.json")) else { return false };
    let _ = (c.parameter_count(), c.d_in_proj(), c.conv_dim(), c.heads_per_group());
    true
}

fn tokenizer_json(s: &Setup, data: &[u8]) -> bool {
    let Ok(inner) = bimamba_text::parse_tokenizer_json(data) else { return false };
    let tok = bimamba_text::Tokenizer::from_inner(inner, &s.scratch.join("tokenizer.json"));
    let _ = tok.vocab_size();
    let _ = tok.eos_id();
    if let Ok(ids) = tok.encode("It is a truth universally acknowledged, café 😀\n") {
        let _ = tok.decode(&ids);
        let mut dec = bimamba_text::StreamDecoder::new();
        for id in ids {
            let _ = dec.push(&tok, id);
        }
        let _ = dec.finish(&tok);
    }
    true
}

fn safetensors(s: &Setup, data: &[u8]) -> bool {
    let p = put(s, "one.safetensors", data);
    let Ok(ck) = Checkpoint::open(&p) else { return false };
    read_all(&ck);
    let _ = ck.metadata();
    true
}

fn load_and_run(dir: &Path) -> bool {
    let Ok(m) = Model::load(dir) else { return false };
    forward(&m);
    true
}

fn model(s: &Setup, data: &[u8]) -> bool {
    put(s, "model/model.safetensors", data);
    load_and_run(&s.scratch.join("model"))
}

fn packed(s: &Setup, data: &[u8]) -> bool {
    put(s, "packed/model.safetensors", data);
    load_and_run(&s.scratch.join("packed"))
}

fn open_and_read(dir: &Path) -> bool {
    let Ok(ck) = Checkpoint::open(dir) else { return false };
    read_all(&ck);
    true
}

fn torch_zip(s: &Setup, data: &[u8]) -> bool {
    put(s, "pt/pytorch_model.bin", data);
    open_and_read(&s.scratch.join("pt"))
}

fn pickle(s: &Setup, data: &[u8]) -> bool {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opt = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in &s.torch_entries {
        let body: &[u8] = if name.ends_with("data.pkl") { data } else { bytes };
        z.start_file(name.as_str(), opt).expect("entry");
        z.write_all(body).expect("write");
    }
    let bytes = z.finish().expect("zip").into_inner();
    put(s, "pt2/pytorch_model.bin", &bytes);
    open_and_read(&s.scratch.join("pt2"))
}

fn gguf(s: &Setup, data: &[u8]) -> bool {
    let p = put(s, "model.gguf", data);
    let Ok(m) = AnyModel::open(&p) else { return false };
    if let Ok(tok) = m.open_tokenizer(&p, None) {
        let _ = tok.encode("Hello, world");
    }
    forward(&m);
    true
}

fn eval_jsonl(s: &Setup, data: &[u8]) -> bool {
    use bimamba_eval::tasks::data::{load, Layout};
    let p = put(s, "task.jsonl", data);
    [Layout::Choice, Layout::Partial, Layout::Lambada].into_iter().filter(|l| load(&p, *l, None).is_ok()).count() > 0
}

fn train_toml(s: &Setup, data: &[u8]) -> bool {
    let p = put(s, "run.toml", data);
    let Ok(cfg) = bimamba_train::runconfig::TrainConfig::load(&p) else { return false };
    let _ = cfg.to_toml();
    cfg.model.resolve(451).is_ok()
}

fn state_json(s: &Setup, data: &[u8]) -> bool {
    let dir = s.scratch.join("ckpt/checkpoints/step-00000010");
    std::fs::write(dir.join("state.json"), data).expect("write state.json");
    let Ok(ck) = checkpoint::load(&dir) else { return false };
    let shape = RunShape { seq_len: 48, aligned: false, world: 1, windows_per_step: 8, tokens_per_step: 384 };
    ck.check(&shape).is_ok()
}

fn data_meta(s: &Setup, data: &[u8]) -> bool {
    let dir = s.scratch.join("meta-data");
    std::fs::write(dir.join("meta.json"), data).expect("write meta.json");
    let Ok(ds) = Dataset::open(&dir) else { return false };
    // What training does with an accepted directory: windows whose ids index the embedding.
    let mut sampler = WindowSampler::new(8, false, 1);
    if let Ok((toks, _)) = sampler.next_batch_in(&ds.train, ds.train.len(), 2) {
        assert!(toks.iter().all(|&t| (t as usize) < ds.meta.vocab_size), "a token id beyond meta.json's vocabulary");
    }
    true
}

fn topk_file(s: &Setup, data: &[u8]) -> bool {
    let p = put(s, "teacher.topk", data);
    let Ok(f) = TopkFile::open(&p) else { return false };
    if f.windows > 0 {
        let _ = f.window(f.windows - 1);
        let dev = Default::default();
        let starts = [0, (f.windows - 1) * f.seq_len];
        let _ = f.batch::<bimamba_train::backend::Cpu>(&starts, 451, &dev);
    }
    true
}

fn token_file(s: &Setup, data: &[u8]) -> bool {
    let p = put(s, "tok/train.tok", data);
    let Ok(f) = TokenFile::open(&p) else { return false };
    let n = f.len();
    if n > 0 {
        let _ = f.get(n - 1);
        let _ = f.window(0, n.min(64));
        let mut sampler = WindowSampler::new(8, false, 1);
        let _ = sampler.next_batch(&f, 2);
    }
    true
}
