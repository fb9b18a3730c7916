//! Text sampled from the teacher, to grow a distillation corpus past the real text available:
//! many sequences at once on the training device, each started from a short prompt cut from the
//! training tokens at a seeded random place, continued with the teacher's KV cache
//! ([`LlamaTeacher::forward_step`]) at a temperature (Gumbel-max sampling: argmax of logits / T
//! plus Gumbel noise draws from softmax(logits / T); T = 0 is greedy).
//!
//! `bimamba-train data sample-teacher` writes the samples as one UTF-8 text file (prompt and
//! continuation, cut at the first end-of-text token, blank lines between samples) that
//! `bimamba-train data prepare` takes like any other text; its JSON sidecar records how it was made.

use std::path::Path;

use burn::tensor::{Distribution, Int, Tensor, TensorData};
use serde::Serialize;

use crate::data::TokenFile;
use crate::error::{Error, Result};
use crate::fused::FusedOps;
use crate::llama::LlamaTeacher;
use crate::ops::opts;
use crate::rng::SplitMix64;

/// How to sample.
#[derive(Debug, Clone, Serialize)]
pub struct SampleOptions {
    /// Tokens generated after each prompt.
    pub new_tokens: usize,
    /// Softmax temperature; 0 picks the most likely token.
    pub temperature: f64,
    /// Seed of the backend's random draws.
    pub seed: u64,
}

/// Continues every prompt (all of one length) by `o.new_tokens` tokens: the generated ids of each,
/// the prompt not included.
pub fn sample<B: FusedOps>(
    teacher: &LlamaTeacher<B>,
    prompts: &[Vec<u32>],
    o: &SampleOptions,
    device: &B::Device,
) -> Result<Vec<Vec<u32>>> {
    let b = prompts.len();
    let p = prompts.first().map_or(0, Vec::len);
    if b == 0 || p == 0 || prompts.iter().any(|q| q.len() != p) {
        return Err(Error::Config("sampling needs one or more prompts, all of the same non-zero length".into()));
    }
    let vocab = teacher.config.vocab_size;
    if let Some(bad) = prompts.iter().flatten().find(|&&t| t as usize >= vocab) {
        return Err(Error::Config(format!("prompt token {bad} is outside the teacher's vocabulary of {vocab}")));
    }
    if !(o.temperature >= 0.0 && o.temperature.is_finite()) {
        return Err(Error::Config(format!("temperature {} must be a finite number >= 0", o.temperature)));
    }
    let capacity = p + o.new_tokens;
    if capacity > teacher.config.context_length {
        return Err(Error::Config(format!(
            "prompt ({p}) + new tokens ({}) exceed the teacher's context of {}",
            o.new_tokens, teacher.config.context_length
        )));
    }
    B::seed(device, o.seed);
    let ids: Vec<i64> = prompts.iter().flatten().map(|&t| i64::from(t)).collect();
    let mut cache = teacher.new_cache(b, capacity, device);
    let mut logits = teacher.forward_step(Tensor::from_data(TensorData::new(ids, [b, p]), device), &mut cache)?;
    let mut picked: Vec<Tensor<B, 2, Int>> = Vec::with_capacity(o.new_tokens);
    for i in 0..o.new_tokens {
        let next = pick(logits.clone(), o.temperature).reshape([b, 1]);
        picked.push(next.clone());
        if i + 1 < o.new_tokens {
            logits = teacher.forward_step(next, &mut cache)?;
        }
    }
    if picked.is_empty() {
        return Ok(vec![Vec::new(); b]);
    }
    let all = Tensor::cat(picked, 1);
    let flat: Vec<i64> = all.to_data().convert::<i64>().to_vec().map_err(|e| Error::Config(format!("{e:?}")))?;
    Ok(flat.chunks(o.new_tokens).map(|row| row.iter().map(|&t| t as u32).collect()).collect())
}

/// The next token of each row: argmax of logits / T + Gumbel noise (T > 0), or of the logits.
///
/// # Shapes
/// - logits: [b, vocab]; output: [b]
fn pick<B: FusedOps>(logits: Tensor<B, 2>, temperature: f64) -> Tensor<B, 1, Int> {
    let [b, v] = logits.dims();
    let logits = logits.cast(burn::tensor::DType::F32);
    let scores = if temperature == 0.0 {
        logits
    } else {
        // U in (0, 1) kept off 0 and 1, so that −log(−log U) is finite.
        let u = Tensor::<B, 2>::random([b, v], Distribution::Uniform(0.0, 1.0), opts::<B>(&logits.device()))
            .clamp(1e-12, 1.0 - 1e-7);
        logits / temperature - u.log().neg().log()
    };
    scores.argmax(1).reshape([b])
}

/// `count` prompts of `len` tokens each, cut from `file` at seeded random places.
pub fn prompts_from(file: &TokenFile, count: usize, len: usize, seed: u64) -> Result<Vec<Vec<u32>>> {
    if len == 0 || file.len() < len {
        return Err(Error::Config(format!(
            "prompts of {len} tokens need a token file of at least that many (it has {})",
            file.len()
        )));
    }
    let mut rng = SplitMix64::new(seed);
    let starts = (file.len() - len + 1) as u64;
    Ok((0..count)
        .map(|_| {
            let s = rng.below(starts) as usize;
            (s..s + len).map(|i| file.get(i)).collect()
        })
        .collect())
}

/// What `data sample-teacher` records beside the text it writes.
#[derive(Debug, Serialize)]
pub struct SampleRecord {
    /// The teacher file.
    pub teacher: String,
    /// The token directory the prompts came from.
    pub prompts_from: String,
    /// Samples written.
    pub samples: usize,
    /// Tokens per prompt.
    pub prompt_tokens: usize,
    /// Sampling options (tokens after each prompt, temperature, seed).
    pub options: SampleOptions,
    /// Sequences generated at once.
    pub batch: usize,
    /// Tokens generated in all (before cutting at end-of-text).
    pub generated_tokens: usize,
    /// Seconds of sampling (the teacher's load not counted).
    pub seconds: f64,
}

/// One `data sample-teacher` run.
pub struct SampleJob<'a> {
    /// The teacher (.gguf, LLaMA architecture).
    pub teacher: &'a Path,
    /// The token directory (from `data prepare` with the teacher's tokenizer) the prompts are cut from.
    pub data: &'a Path,
    /// The text file to write (its record goes beside it, with `.json` appended).
    pub out: &'a Path,
    /// Samples in all.
    pub samples: usize,
    /// Sequences generated at once.
    pub batch: usize,
    /// Tokens per prompt.
    pub prompt_tokens: usize,
    /// Products in bf16 (the GPU's rate) instead of f32.
    pub bf16: bool,
    /// Tokens per sample, temperature, seed.
    pub options: SampleOptions,
}

/// Runs a [`SampleJob`] on `device`: loads the teacher (checking its tokenizer against the
/// data's), samples batch after batch (batch i seeded with seed + i), and writes the text and
/// its record atomically.
pub fn run_job<B: FusedOps>(job: &SampleJob<'_>, device: &B::Device) -> Result<SampleRecord> {
    if job.samples == 0 || job.batch == 0 {
        return Err(Error::Config("--samples and --batch must be positive".into()));
    }
    if job.teacher.extension().is_none_or(|e| e != "gguf") {
        return Err(Error::Config(format!(
            "{}: sampling needs a LLaMA-architecture .gguf teacher",
            job.teacher.display()
        )));
    }
    let data = crate::data::Dataset::open(job.data)?;
    let teacher = crate::teacher::load_llama_teacher::<B>(job.teacher, &data, device)?
        .with_matmul_dtype(job.bf16.then_some(burn::tensor::DType::BF16));
    let tok = teacher.tokenizer.clone().ok_or_else(|| Error::format(job.teacher, "no tokenizer in the GGUF"))?;
    let prompts = prompts_from(&data.train, job.samples, job.prompt_tokens, job.options.seed)?;
    let started = std::time::Instant::now();
    let mut texts = Vec::with_capacity(job.samples);
    for (i, chunk) in prompts.chunks(job.batch).enumerate() {
        let o = SampleOptions { seed: job.options.seed.wrapping_add(i as u64), ..job.options.clone() };
        let out = sample(&teacher, chunk, &o, device)?;
        for (p, c) in chunk.iter().zip(&out) {
            texts.push(sample_text(&tok, p, c, Some(data.meta.eos_id)));
        }
        eprint!("\r{}/{} samples", texts.len(), job.samples);
    }
    eprintln!();
    let seconds = started.elapsed().as_secs_f64();
    write_text(job.out, &(texts.join("\n\n") + "\n"))?;
    let record = SampleRecord {
        teacher: job.teacher.display().to_string(),
        prompts_from: job.data.display().to_string(),
        samples: job.samples,
        prompt_tokens: job.prompt_tokens,
        options: job.options.clone(),
        batch: job.batch,
        generated_tokens: job.samples * job.options.new_tokens,
        seconds,
    };
    let json = serde_json::to_string_pretty(&record).map_err(|e| Error::Config(e.to_string()))?;
    let mut side = job.out.as_os_str().to_owned();
    side.push(".json");
    crate::params::write_atomic(Path::new(&side), json.as_bytes())?;
    Ok(record)
}

/// The text of one sample: prompt and continuation, cut before the first end-of-text token.
pub fn sample_text(tok: &tokenizers::Tokenizer, prompt: &[u32], continuation: &[u32], eos: Option<u32>) -> String {
    let ids: Vec<u32> = prompt.iter().chain(continuation).copied().take_while(|&t| Some(t) != eos).collect();
    tok.decode(&ids, true).unwrap_or_default()
}

/// Writes `text` to `path` atomically (a temporary file beside it, then a rename).
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    crate::params::write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray<f32>;

    fn teacher() -> LlamaTeacher<B> {
        let cfg = crate::llama::tests::tiny_config(4, 32);
        LlamaTeacher::<B>::random(cfg, 11, &Default::default())
    }

    /// At temperature 0 each new token is the argmax of the whole-sequence forward's logits at
    /// the position before it.
    #[test]
    fn greedy_sampling_follows_the_forward() {
        let t = teacher();
        let dev = Default::default();
        let prompts = vec![vec![3u32, 7, 1], vec![0, 18, 5]];
        let o = SampleOptions { new_tokens: 6, temperature: 0.0, seed: 1 };
        let out = sample(&t, &prompts, &o, &dev).expect("sample");
        for (p, c) in prompts.iter().zip(&out) {
            assert_eq!(c.len(), 6);
            let seq: Vec<i64> = p.iter().chain(c).map(|&x| i64::from(x)).collect();
            let n = seq.len();
            let logits = t.forward(Tensor::from_data(TensorData::new(seq.clone(), [1, n]), &dev));
            let best: Vec<i64> = logits.argmax(2).reshape([n]).to_data().convert::<i64>().to_vec().expect("ids");
            for i in p.len()..n {
                assert_eq!(best[i - 1], seq[i], "position {i}");
            }
        }
    }

    /// The same seed gives the same samples; another seed, other ones; every id is in the
    /// vocabulary.
    #[test]
    fn sampling_is_seeded() {
        let t = teacher();
        let dev = Default::default();
        let prompts = vec![vec![2u32, 4]; 8];
        let run = |seed| sample(&t, &prompts, &SampleOptions { new_tokens: 12, temperature: 1.0, seed }, &dev);
        let a = run(7).expect("sample");
        assert_eq!(a, run(7).expect("sample"));
        assert_ne!(a, run(8).expect("sample"));
        assert!(a.iter().flatten().all(|&x| x < 19));
        // Eight sequences from one prompt at temperature 1 do not all agree.
        assert!(a.iter().any(|s| s != &a[0]));
    }

    #[test]
    fn bad_requests_are_refused() {
        let t = teacher();
        let dev = Default::default();
        let o = SampleOptions { new_tokens: 4, temperature: 1.0, seed: 0 };
        assert!(sample(&t, &[], &o, &dev).is_err());
        assert!(sample(&t, &[vec![1, 2], vec![3]], &o, &dev).is_err());
        assert!(sample(&t, &[vec![19]], &o, &dev).is_err());
        let long = SampleOptions { new_tokens: 40, ..o.clone() };
        assert!(sample(&t, &[vec![1]], &long, &dev).is_err());
        let hot = SampleOptions { temperature: f64::NAN, ..o };
        assert!(sample(&t, &[vec![1]], &hot, &dev).is_err());
    }
}
