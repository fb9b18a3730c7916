//! Several models side by side, in the paper's table layout: one row per model, the seven tasks,
//! their average, then LAMBADA and perplexities.
//!
//! Inputs are the JSON objects that `bimamba eval tasks --json` and `bimamba eval ppl --json`
//! print; files are matched to rows by their `"model"` field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::tasks::Task;

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {detail}")]
    Invalid { file: PathBuf, detail: String },
}

/// Which accuracy each task column shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricChoice {
    /// acc_norm for HellaSwag, ARC and OBQA, acc elsewhere ([`Task::paper_metric`]).
    Paper,
    Acc,
    /// acc_norm where the task has one, acc elsewhere.
    AccNorm,
}

impl MetricChoice {
    pub fn from_name(s: &str) -> Option<MetricChoice> {
        match s {
            "paper" => Some(MetricChoice::Paper),
            "acc" => Some(MetricChoice::Acc),
            "acc_norm" => Some(MetricChoice::AccNorm),
            _ => None,
        }
    }
}

/// One task's numbers as a result file gives them.
#[derive(Clone, Copy, Debug, Default)]
struct Scores {
    acc: Option<f64>,
    acc_norm: Option<f64>,
    ppl: Option<f64>,
}

/// What one model has, gathered from its files.
#[derive(Clone, Debug, Default)]
struct Row {
    /// task name → scores
    tasks: BTreeMap<String, Scores>,
    /// text file stem → perplexity
    ppl: BTreeMap<String, f64>,
}

/// A rendered table: header and cells, plus a legend line.
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub legend: String,
}

/// Reads `files` and builds the table.
pub fn compare(files: &[PathBuf], metric: MetricChoice) -> Result<Table, CompareError> {
    let mut order: Vec<String> = Vec::new();
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let mut ppl_columns: Vec<String> = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path).map_err(|source| CompareError::Io { path: path.clone(), source })?;
        let bad = |detail: String| CompareError::Invalid { file: path.clone(), detail };
        let v: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let model = v
            .get("model")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                bad("no string field `model` (expected the output of `eval tasks --json` or `eval ppl --json`)".into())
            })?
            .to_string();
        if !rows.contains_key(&model) {
            order.push(model.clone());
        }
        let row = rows.entry(model).or_default();
        if let Some(results) = v.get("results") {
            let results = results.as_object().ok_or_else(|| bad("field `results` is not an object".into()))?;
            for (task, r) in results {
                let num = |k: &str| -> Result<Option<f64>, CompareError> {
                    match r.get(k) {
                        None | Some(Value::Null) => Ok(None),
                        Some(x) => {
                            x.as_f64().map(Some).ok_or_else(|| bad(format!("results.{task}.{k} is not a number")))
                        }
                    }
                };
                row.tasks
                    .insert(task.clone(), Scores { acc: num("acc")?, acc_norm: num("acc_norm")?, ppl: num("ppl")? });
            }
        } else if let Some(ppl) = v.get("ppl") {
            let ppl = ppl.as_f64().ok_or_else(|| bad("field `ppl` is not a number".into()))?;
            let text = v.get("text").and_then(Value::as_str).unwrap_or("text");
            let stem =
                Path::new(text).file_stem().map_or_else(|| text.to_string(), |s| s.to_string_lossy().into_owned());
            if !ppl_columns.contains(&stem) {
                ppl_columns.push(stem.clone());
            }
            row.ppl.insert(stem, ppl);
        } else {
            return Err(bad("neither `results` (eval tasks --json) nor `ppl` (eval ppl --json)".into()));
        }
    }

    let has = |t: Task| rows.values().any(|r| r.tasks.contains_key(t.name()));
    let columns: Vec<Task> = Task::ALL.into_iter().filter(|&t| t != Task::Lambada && has(t)).collect();
    let lambada = has(Task::Lambada);
    let mut header = vec!["Model".to_string()];
    header.extend(columns.iter().map(|t| t.label().to_string()));
    if !columns.is_empty() {
        header.push("Avg".into());
    }
    if lambada {
        header.push("LAMBADA acc".into());
        header.push("LAMBADA ppl".into());
    }
    header.extend(ppl_columns.iter().map(|c| format!("{c} ppl")));

    let names = display_names(&order);
    let mut out = Vec::new();
    for (model, name) in order.iter().zip(names) {
        let row = &rows[model];
        let mut cells = vec![name];
        let mut sum = 0.0;
        let mut complete = true;
        for &t in &columns {
            match row.tasks.get(t.name()).and_then(|s| pick(t, metric, s.acc, s.acc_norm)) {
                Some(x) => {
                    sum += x;
                    cells.push(format!("{:.1}", 100.0 * x));
                }
                None => {
                    complete = false;
                    cells.push("-".into());
                }
            }
        }
        if !columns.is_empty() {
            cells.push(if complete { format!("{:.1}", 100.0 * sum / columns.len() as f64) } else { "-".into() });
        }
        if lambada {
            let l = row.tasks.get(Task::Lambada.name());
            cells.push(l.and_then(|r| r.acc).map_or("-".into(), |x| format!("{:.1}", 100.0 * x)));
            cells.push(l.and_then(|r| r.ppl).map_or("-".into(), format_ppl));
        }
        for c in &ppl_columns {
            cells.push(row.ppl.get(c).map_or("-".into(), |&x| format_ppl(x)));
        }
        out.push(cells);
    }
    let legend = match metric {
        MetricChoice::Paper => {
            let norm: Vec<&str> =
                columns.iter().filter(|t| t.paper_metric() == "acc_norm").map(|t| t.label()).collect();
            format!(
                "accuracy in %; acc_norm for {}, acc elsewhere",
                if norm.is_empty() { "none".into() } else { norm.join(", ") }
            )
        }
        MetricChoice::Acc => "accuracy in %: acc everywhere".into(),
        MetricChoice::AccNorm => "accuracy in %: acc_norm where the task has one, acc elsewhere".into(),
    };
    Ok(Table { header, rows: out, legend: format!("{legend}; Avg over the task columns; ppl: lower is better") })
}

/// Two decimals, or scientific notation for the huge perplexities of untrained models.
pub fn format_ppl(x: f64) -> String {
    if x.abs() >= 1e6 {
        format!("{x:.3e}")
    } else {
        format!("{x:.2}")
    }
}

fn pick(t: Task, metric: MetricChoice, acc: Option<f64>, norm: Option<f64>) -> Option<f64> {
    let want_norm = match metric {
        MetricChoice::Paper => t.paper_metric() == "acc_norm",
        MetricChoice::Acc => false,
        MetricChoice::AccNorm => true,
    };
    if want_norm {
        norm.or(acc)
    } else {
        acc
    }
}

/// The last path component of each model, unless two rows would share it.
fn display_names(models: &[String]) -> Vec<String> {
    let short: Vec<String> = models
        .iter()
        .map(|m| {
            Path::new(m.trim_end_matches('/'))
                .file_name()
                .map_or_else(|| m.clone(), |s| s.to_string_lossy().into_owned())
        })
        .collect();
    short
        .iter()
        .zip(models)
        .map(|(s, m)| if short.iter().filter(|x| *x == s).count() > 1 { m.clone() } else { s.clone() })
        .collect()
}

/// Plain text with aligned columns, or a Markdown table.
pub fn render(t: &Table, markdown: bool) -> String {
    let mut width: Vec<usize> = t.header.iter().map(|h| h.chars().count()).collect();
    for r in &t.rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let parts: Vec<String> = cells
            .iter()
            .zip(&width)
            .enumerate()
            .map(|(i, (c, &w))| if i == 0 { format!("{c:<w$}") } else { format!("{c:>w$}") })
            .collect();
        if markdown {
            format!("| {} |", parts.join(" | "))
        } else {
            parts.join("  ").trim_end().to_string()
        }
    };
    let mut s = line(&t.header) + "\n";
    if markdown {
        let rule: Vec<String> = width
            .iter()
            .enumerate()
            .map(|(i, &w)| if i == 0 { "-".repeat(w) } else { format!("{}:", "-".repeat(w - 1)) })
            .collect();
        s += &format!("| {} |\n", rule.join(" | "));
    }
    for r in &t.rows {
        s += &line(r);
        s += "\n";
    }
    s + &t.legend + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, v: &Value) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("bimamba-compare-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir is writable");
        let p = dir.join(name);
        std::fs::write(&p, v.to_string()).expect("temp file is writable");
        p
    }

    fn tasks(model: &str, hs_acc: f64, hs_norm: f64, wg: f64) -> Value {
        serde_json::json!({
            "model": model, "elapsed_s": 1.0,
            "results": {
                "hellaswag": {"acc": hs_acc, "acc_norm": hs_norm, "acc_stderr": 0.01, "n": 10},
                "winogrande": {"acc": wg, "acc_stderr": 0.01, "n": 10},
                "lambada_openai": {"acc": 0.25, "ppl": 30.5, "n": 10}
            }
        })
    }

    #[test]
    fn rows_per_model_with_average_lambada_and_perplexities() {
        let a = write("a.json", &tasks("models/a", 0.30, 0.40, 0.50));
        let b = write("b.json", &tasks("runs/b/", 0.31, 0.20, 0.70));
        let p = write("p.json", &serde_json::json!({"model": "models/a", "ppl": 12.345, "text": "data/wiki.txt"}));
        let t = compare(&[a.clone(), b.clone(), p.clone()], MetricChoice::Paper).expect("valid files");
        assert_eq!(t.header, ["Model", "HellaSwag", "WinoGrande", "Avg", "LAMBADA acc", "LAMBADA ppl", "wiki ppl"]);
        // Paper metric: HellaSwag acc_norm. Avg of 40 and 50.
        assert_eq!(t.rows[0], ["a", "40.0", "50.0", "45.0", "25.0", "30.50", "12.35"]);
        assert_eq!(t.rows[1], ["b", "20.0", "70.0", "45.0", "25.0", "30.50", "-"]);
        let t = compare(&[a, b, p], MetricChoice::Acc).expect("valid files");
        assert_eq!(t.rows[0][1..4], ["30.0", "50.0", "40.0"]);
        let text = render(&t, false);
        assert!(text.lines().next().expect("header").starts_with("Model"));
        assert!(render(&t, true).lines().nth(1).expect("rule").starts_with("| -"));
        assert_eq!((format_ppl(12.345), format_ppl(2.5e16)), ("12.35".to_string(), "2.500e16".to_string()));
    }

    #[test]
    fn same_short_names_fall_back_to_full_paths_and_bad_files_are_named() {
        let a = write("c.json", &tasks("x/final", 0.3, 0.3, 0.3));
        let b = write("d.json", &tasks("y/final", 0.3, 0.3, 0.3));
        let t = compare(&[a, b], MetricChoice::Paper).expect("valid files");
        assert_eq!((t.rows[0][0].as_str(), t.rows[1][0].as_str()), ("x/final", "y/final"));
        let bad = write("e.json", &serde_json::json!({"results": {}}));
        let e = compare(std::slice::from_ref(&bad), MetricChoice::Paper).expect_err("no model").to_string();
        assert!(e.starts_with(&bad.display().to_string()) && e.contains("`model`"), "{e}");
        let bad = write("f.json", &serde_json::json!({"model": "m", "results": {"piqa": {"acc": "high"}}}));
        assert!(compare(&[bad], MetricChoice::Paper)
            .expect_err("not a number")
            .to_string()
            .contains("results.piqa.acc"));
    }
}
