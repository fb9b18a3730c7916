//! `bimamba eval`: perplexity, zero-shot tasks (lm-evaluation-harness 0.4 semantics) and a
//! side-by-side table of result files.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use bimamba_eval::compare::{self, MetricChoice};
use bimamba_eval::tasks::{self, Task, TaskResult};
use bimamba_text::{read_text_file, Tokenizer};
use clap::{Args, Subcommand};

use bimamba_models::AnyModel;

use crate::model_args::{ModelArgs, Opened};
use crate::progress::Progress;

#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// Perplexity over non-overlapping windows of a text file (the paper's protocol).
    Ppl(PplArgs),
    /// Zero-shot accuracy on BoolQ, PIQA, HellaSwag, WinoGrande, ARC-e/c, OpenBookQA and LAMBADA.
    Tasks(TasksArgs),
    /// One table of several models side by side from `eval tasks --json` / `eval ppl --json` files.
    Compare(CompareArgs),
}

#[derive(Args, Debug)]
pub struct TasksArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Comma-separated tasks: boolq, piqa, hellaswag, winogrande, arc_easy, arc_challenge,
    /// openbookqa, lambada_openai, or all.
    #[arg(long, default_value = "all", value_name = "LIST")]
    pub tasks: String,

    /// Directory of TASK.jsonl files (default: $BIMAMBA_EVAL_DATA, else data/eval in the repository).
    /// Fetch them with `scripts/fetch_eval.sh data/eval`.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Score only the first N documents of each task.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,

    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Result files: the output of `eval tasks --json` and `eval ppl --json`, matched by model.
    #[arg(required = true, value_name = "RESULT.json")]
    pub files: Vec<PathBuf>,

    /// Accuracy per task column: paper (acc_norm for HellaSwag, ARC, OBQA; acc elsewhere), acc, acc_norm.
    #[arg(long, default_value = "paper")]
    pub metric: String,

    /// Print a Markdown table.
    #[arg(long)]
    pub markdown: bool,
}

#[derive(Args, Debug)]
pub struct PplArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// UTF-8 text file, encoded once without special tokens.
    #[arg(long, value_name = "FILE")]
    pub text: PathBuf,

    /// Window length in tokens; the remainder after the last full window is dropped.
    #[arg(long, default_value_t = 2048)]
    pub seq_len: usize,

    /// Print one JSON object instead of a sentence.
    #[arg(long)]
    pub json: bool,
}

pub fn run(c: EvalCommand) -> Result<()> {
    match c {
        EvalCommand::Ppl(a) => ppl(a),
        EvalCommand::Tasks(a) => tasks_cmd(a),
        EvalCommand::Compare(a) => compare_cmd(a),
    }
}

fn ppl(a: PplArgs) -> Result<()> {
    if a.seq_len < 2 {
        bail!("--seq-len: expected at least 2 tokens per window, got {}", a.seq_len);
    }
    let text = read_text_file(&a.text)?;
    let Opened { model, tokenizer: tok, path: dir } = a.model.open()?;
    let (ids, ends) = tok.encode_with_ends(&text)?;
    let windows = ids.len() / a.seq_len;
    if windows == 0 {
        bail!(
            "{}: the text encodes to {} tokens, fewer than one window of --seq-len {}",
            a.text.display(),
            ids.len(),
            a.seq_len
        );
    }
    let template = "{bar:40} {pos}/{len} windows [{elapsed_precise} < {eta_precise}]";
    let mut bar = Progress::new(windows as u64, template, "windows", windows < 4);
    let t0 = std::time::Instant::now();
    let r = bimamba_eval::perplexity(&model, &ids, &ends, a.seq_len, |w| bar.set(w as u64, windows as u64))?
        .expect("at least one window was checked above");
    bar.finish();
    let elapsed = t0.elapsed().as_secs_f64();
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        v["model"] = dir.display().to_string().into();
        v["text"] = a.text.display().to_string().into();
        v["tokenizer"] = tok.path().display().to_string().into();
        v["tokenizer_vocab"] = tok.vocab_size().into();
        v["elapsed_s"] = elapsed.into();
        a.model.runtime.record(model.kind(), &mut v);
        v["tokens_per_s"] = ((r.windows * r.seq_len) as f64 / elapsed.max(1e-9)).into();
        println!("{v}");
    } else {
        println!(
            "perplexity {:.4} over {} tokens ({} windows of {}), {:.4} bits/byte, {:.1} s",
            r.ppl, r.tokens, r.windows, r.seq_len, r.bits_per_byte, elapsed
        );
    }
    Ok(())
}

fn tasks_cmd(a: TasksArgs) -> Result<()> {
    let list = Task::parse_list(&a.tasks)?;
    if a.limit == Some(0) {
        bail!("--limit: expected at least 1 document, got 0");
    }
    let data_dir = a.data_dir.clone().unwrap_or_else(tasks::default_data_dir);
    // Every file is checked before the model loads, so a missing one fails at once.
    for &t in &list {
        tasks::task_file(&data_dir, t)?;
    }
    let Opened { model, tokenizer: tok, path: dir } = a.model.open()?;
    run_tasks(&model, &tok, &dir, &data_dir, &list, &a)
}

fn run_tasks(
    model: &AnyModel,
    tok: &Tokenizer,
    dir: &Path,
    data_dir: &Path,
    list: &[Task],
    a: &TasksArgs,
) -> Result<()> {
    let t0 = Instant::now();
    let mut results: Vec<(Task, TaskResult)> = Vec::new();
    for &t in list {
        let docs = tasks::load_task(data_dir, t, a.limit)?;
        if docs.is_empty() {
            bail!("{}: no documents", tasks::task_file(data_dir, t)?.display());
        }
        let template = "{prefix:>14} {bar:40} {pos}/{len} [{elapsed_precise} < {eta_precise}]";
        // Shared with the scoring threads, which report as they finish.
        let bar = std::sync::Mutex::new(Progress::new(0, template, &format!("{} requests", t.name()), false));
        let bar_of = || bar.lock().unwrap_or_else(|e| e.into_inner());
        bar_of().set_prefix(t.name());
        let r = tasks::evaluate(model, tok, t, &docs, &|done, total| bar_of().set(done as u64, total as u64))?;
        bar_of().finish();
        results.push((t, r));
    }
    let elapsed = t0.elapsed().as_secs_f64();
    if a.json {
        let mut map = serde_json::Map::new();
        for (t, r) in &results {
            map.insert(t.name().to_string(), serde_json::to_value(r)?);
        }
        let mut v = serde_json::json!({
            "results": map,
            "model": dir.display().to_string(),
            "tokenizer": tok.path().display().to_string(),
            "data_dir": data_dir.display().to_string(),
            "limit": a.limit,
            "elapsed_s": elapsed,
        });
        a.model.runtime.record(model.kind(), &mut v);
        println!("{v}");
        return Ok(());
    }
    print!("{}", task_table(&results));
    let merges: usize = results.iter().map(|(_, r)| r.boundary_merges).sum();
    println!(
        "model {}; data {}{}; {} boundary merges; {:.1} s",
        dir.display(),
        data_dir.display(),
        a.limit.map_or(String::new(), |n| format!(" (first {n} documents per task)")),
        merges,
        elapsed
    );
    Ok(())
}

/// Accuracies in %, each with its standard error.
fn task_table(results: &[(Task, TaskResult)]) -> String {
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{:.2}", 100.0 * x));
    let mut s = format!(
        "{:<15} {:>6} {:>7} {:>6} {:>8} {:>6} {:>8} {:>8}\n",
        "task", "n", "acc", "±", "acc_norm", "±", "ppl", "time s"
    );
    for (t, r) in results {
        s += &format!(
            "{:<15} {:>6} {:>7} {:>6} {:>8} {:>6} {:>8} {:>8.1}\n",
            t.name(),
            r.n,
            pct(Some(r.acc)),
            pct(r.acc_stderr),
            pct(r.acc_norm),
            pct(r.acc_norm_stderr),
            r.ppl.map_or("-".to_string(), compare::format_ppl),
            r.elapsed_s
        );
    }
    s
}

fn compare_cmd(a: CompareArgs) -> Result<()> {
    let Some(metric) = MetricChoice::from_name(&a.metric) else {
        bail!("--metric: expected paper, acc or acc_norm, got {:?}", a.metric);
    };
    let table = compare::compare(&a.files, metric)?;
    print!("{}", compare::render(&table, a.markdown));
    Ok(())
}
