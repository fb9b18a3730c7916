//! `bimamba eval tasks` and `bimamba eval compare` end to end on the fixture models and the
//! committed task fixtures (fixtures/eval: four real documents per task).

use std::path::PathBuf;

use serde_json::Value;

mod common;
use common::{assert_user_error, bimamba_env, root, scratch, Out};

fn bimamba(args: &[&str], data_env: Option<&str>) -> Out {
    match data_env {
        Some(d) => bimamba_env(args, &[("BIMAMBA_EVAL_DATA", d)]),
        None => bimamba_env(args, &[]),
    }
}

fn tmp(name: &str) -> PathBuf {
    scratch("eval-tasks", name)
}

fn path(rel: &str) -> String {
    root().join(rel).display().to_string()
}

fn tasks_json(model: &str) -> Value {
    let o = bimamba(
        &["eval", "tasks", "--model", &path(model), "--tasks", "all", "--data-dir", &path("fixtures/eval"), "--json"],
        None,
    );
    assert_eq!(o.code, 0, "stderr: {}", o.stderr);
    serde_json::from_str(&o.stdout).expect("--json prints one JSON object")
}

#[test]
fn eval_tasks_scores_every_task_on_a_fixture_model() {
    let v = tasks_json("fixtures/ss-mamba2-g1");
    assert!(v["model"].as_str().expect("model").ends_with("ss-mamba2-g1"));
    assert!(v["elapsed_s"].as_f64().expect("elapsed_s") > 0.0);
    let results = v["results"].as_object().expect("results");
    let names =
        ["boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa", "lambada_openai"];
    assert_eq!(results.len(), names.len());
    for name in names {
        let r = &results[name];
        assert_eq!(r["n"], 4, "{name}");
        let acc = r["acc"].as_f64().expect("acc");
        assert_eq!((acc * 4.0).fract(), 0.0, "{name}: acc {acc} is not k/4");
        let se = r["acc_stderr"].as_f64().expect("acc_stderr");
        assert!((se - (acc * (1.0 - acc) / 3.0).sqrt()).abs() < 1e-12, "{name}: stderr {se}");
        let has_norm = !matches!(name, "winogrande" | "lambada_openai");
        assert_eq!(r.get("acc_norm").is_some(), has_norm, "{name}");
        assert_eq!(r.get("acc_norm_stderr").is_some(), has_norm, "{name}");
    }
    let ppl = results["lambada_openai"]["ppl"].as_f64().expect("LAMBADA has a perplexity");
    assert!(ppl.is_finite() && ppl > 1.0, "{ppl}");
    // A random 451-token model is no better than chance on LAMBADA's greedy check.
    assert_eq!(results["lambada_openai"]["acc"], 0.0);
}

#[test]
fn eval_tasks_prints_a_table_and_honours_the_data_env_and_limit() {
    let o = bimamba(
        &["eval", "tasks", "--model", &path("fixtures/ss-bimamba-col"), "--tasks", "piqa,winogrande", "--limit", "2"],
        Some(&path("fixtures/eval")),
    );
    assert_eq!(o.code, 0, "stderr: {}", o.stderr);
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert!(lines[0].starts_with("task") && lines[0].contains("acc_norm"), "{}", o.stdout);
    assert!(lines[1].starts_with("piqa") && lines[1].split_whitespace().nth(1) == Some("2"), "{}", o.stdout);
    assert!(lines[2].starts_with("winogrande"), "{}", o.stdout);
    assert!(o.stdout.contains("first 2 documents"), "{}", o.stdout);
}

#[test]
fn eval_tasks_user_mistakes_get_one_clear_line() {
    let model = path("fixtures/ss-mamba2-g1");
    let o = bimamba(&["eval", "tasks", "--model", &model, "--tasks", "boolq", "--data-dir", "/nonexistent/eval"], None);
    assert_user_error(&o, &["/nonexistent/eval/boolq.jsonl", "scripts/fetch_eval.sh"]);

    let o = bimamba(&["eval", "tasks", "--model", &model, "--tasks", "boolq,mmlu"], None);
    assert_user_error(&o, &["unknown task `mmlu`", "lambada_openai"]);

    let o = bimamba(&["eval", "tasks", "--model", &model, "--tasks", "piqa", "--limit", "0"], None);
    assert_user_error(&o, &["--limit"]);

    // A bad line in the middle of a file: the file, the 1-based line and the field.
    let d = tmp("bad");
    let good = std::fs::read_to_string(root().join("fixtures/eval/piqa.jsonl")).expect("fixture");
    let mut lines: Vec<&str> = good.lines().collect();
    lines.insert(2, r#"{"id": 9, "context": "Goal: x\nAnswer:", "choices": [" a", " b"], "gold": 5}"#);
    std::fs::write(d.join("piqa.jsonl"), lines.join("\n")).expect("temp file is writable");
    let dir = d.display().to_string();
    let o = bimamba(&["eval", "tasks", "--model", &model, "--tasks", "piqa", "--data-dir", &dir], None);
    assert_user_error(&o, &["piqa.jsonl:3", "field `gold`", "out of range"]);

    std::fs::write(d.join("piqa.jsonl"), "{\"id\": 1, \"context\": \"c\", \"choices\": [\" a\", \" b\"]\n")
        .expect("writable");
    let o = bimamba(&["eval", "tasks", "--model", &model, "--tasks", "piqa", "--data-dir", &dir], None);
    assert_user_error(&o, &["piqa.jsonl:1", "not valid JSON"]);
}

#[test]
fn eval_compare_puts_models_side_by_side() {
    let d = tmp("compare");
    let mut files = Vec::new();
    for m in ["fixtures/ss-mamba2-g1", "fixtures/ss-bimamba-col"] {
        let f = d.join(format!("{}.json", m.replace('/', "_")));
        std::fs::write(&f, tasks_json(m).to_string()).expect("writable");
        files.push(f.display().to_string());
    }
    let o = bimamba(
        &[
            "eval",
            "ppl",
            "--model",
            &path("fixtures/ss-mamba2-g1"),
            "--text",
            &path("fixtures/text/pride_excerpt_short.txt"),
            "--seq-len",
            "256",
            "--json",
        ],
        None,
    );
    assert_eq!(o.code, 0, "stderr: {}", o.stderr);
    let f = d.join("ppl.json");
    std::fs::write(&f, &o.stdout).expect("writable");
    files.push(f.display().to_string());

    let mut args = vec!["eval", "compare"];
    args.extend(files.iter().map(String::as_str));
    let o = bimamba(&args, None);
    assert_eq!(o.code, 0, "stderr: {}", o.stderr);
    let lines: Vec<&str> = o.stdout.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "Model",
            "BoolQ",
            "PIQA",
            "HellaSwag",
            "WinoGrande",
            "ARC-e",
            "ARC-c",
            "OBQA",
            "Avg",
            "LAMBADA",
            "acc",
            "LAMBADA",
            "ppl",
            "pride_excerpt_short",
            "ppl"
        ]
    );
    assert!(lines[1].starts_with("ss-mamba2-g1 "), "{}", o.stdout);
    assert!(lines[2].starts_with("ss-bimamba-col "), "{}", o.stdout);
    // The perplexity column is filled for the model that has one and "-" for the other.
    assert_ne!(lines[1].split_whitespace().last(), Some("-"));
    assert_eq!(lines[2].split_whitespace().last(), Some("-"));

    let o = bimamba(&["eval", "compare", &files[0], "--metric", "best"], None);
    assert_user_error(&o, &["--metric"]);
    let o = bimamba(&["eval", "compare", "/nonexistent.json"], None);
    assert_user_error(&o, &["/nonexistent.json"]);
}
