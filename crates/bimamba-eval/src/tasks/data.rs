//! Reading the task files: one JSON document per line, in the three layouts that
//! `scripts/extract_bench.py` writes (see `data/eval` after `scripts/fetch_eval.sh`):
//!
//! ```text
//! multiple choice  {"id", "context", "choices": [" a", " b", ...], "gold": i}
//! partial (Wino)   {"id", "contexts": ["... option A", "... option B"], "continuation": " rest", "gold": i}
//! LAMBADA          {"id", "context", "target": " word"}
//! ```
//!
//! Every error names the file, the 1-based line and the field at fault.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::TaskError;

/// A question with several continuations of one context (BoolQ, PIQA, HellaSwag, ARC, OBQA).
#[derive(Clone, Debug, PartialEq)]
pub struct ChoiceDoc {
    /// 1-based line in the task file.
    pub line: usize,
    pub id: String,
    pub context: String,
    /// Each carries its leading space (lm-eval's target delimiter).
    pub choices: Vec<String>,
    pub gold: usize,
}

/// WinoGrande's partial scoring: one context per option, one shared continuation.
#[derive(Clone, Debug, PartialEq)]
pub struct PartialDoc {
    pub line: usize,
    pub id: String,
    pub contexts: Vec<String>,
    pub continuation: String,
    pub gold: usize,
}

/// LAMBADA: a passage and its last word (with its leading space).
#[derive(Clone, Debug, PartialEq)]
pub struct LambadaDoc {
    pub line: usize,
    pub id: String,
    pub context: String,
    pub target: String,
}

/// The documents of one task file.
#[derive(Clone, Debug, PartialEq)]
pub enum Docs {
    Choice(Vec<ChoiceDoc>),
    Partial(Vec<PartialDoc>),
    Lambada(Vec<LambadaDoc>),
}

impl Docs {
    pub fn len(&self) -> usize {
        match self {
            Docs::Choice(d) => d.len(),
            Docs::Partial(d) => d.len(),
            Docs::Lambada(d) => d.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which of the three layouts a file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Choice,
    Partial,
    Lambada,
}

/// Reads the first `limit` documents (all when `None`) of `path`. Blank lines are skipped.
pub fn load(path: &Path, layout: Layout, limit: Option<usize>) -> Result<Docs, TaskError> {
    let file = std::fs::File::open(path).map_err(|source| TaskError::Io { path: path.to_path_buf(), source })?;
    let limit = limit.unwrap_or(usize::MAX);
    let mut docs = match layout {
        Layout::Choice => Docs::Choice(Vec::new()),
        Layout::Partial => Docs::Partial(Vec::new()),
        Layout::Lambada => Docs::Lambada(Vec::new()),
    };
    for (i, text) in BufReader::new(file).lines().enumerate() {
        if docs.len() >= limit {
            break;
        }
        let text = text.map_err(|source| TaskError::Io { path: path.to_path_buf(), source })?;
        if text.trim().is_empty() {
            continue;
        }
        let mut r = Record::parse(path, i + 1, &text)?;
        match &mut docs {
            Docs::Choice(v) => v.push(r.choice()?),
            Docs::Partial(v) => v.push(r.partial()?),
            Docs::Lambada(v) => v.push(r.lambada()?),
        }
    }
    Ok(docs)
}

/// One parsed line, with what is needed to name it in errors.
struct Record<'a> {
    path: &'a Path,
    line: usize,
    obj: Map<String, Value>,
}

impl<'a> Record<'a> {
    fn parse(path: &'a Path, line: usize, text: &str) -> Result<Record<'a>, TaskError> {
        let value: Value = serde_json::from_str(text).map_err(|e| TaskError::Data {
            file: path.to_path_buf(),
            line,
            field: "(line)".into(),
            detail: format!("not valid JSON: {e}"),
        })?;
        match value {
            Value::Object(obj) => Ok(Record { path, line, obj }),
            other => Err(data_err(path, line, "(line)", format!("expected a JSON object, got {}", kind(&other)))),
        }
    }

    fn err(&self, field: &str, detail: impl Into<String>) -> TaskError {
        data_err(self.path, self.line, field, detail.into())
    }

    fn take(&mut self, field: &str) -> Result<Value, TaskError> {
        self.obj.remove(field).ok_or_else(|| self.err(field, "missing"))
    }

    /// Ids are strings in some files and integers in others; both become strings.
    fn id(&mut self) -> Result<String, TaskError> {
        match self.take("id")? {
            Value::String(s) => Ok(s),
            Value::Number(n) => Ok(n.to_string()),
            other => Err(self.err("id", format!("expected a string or an integer, got {}", kind(&other)))),
        }
    }

    fn string(&mut self, field: &str) -> Result<String, TaskError> {
        match self.take(field)? {
            Value::String(s) => Ok(s),
            other => Err(self.err(field, format!("expected a string, got {}", kind(&other)))),
        }
    }

    /// A non-empty string (a continuation must contribute at least one token).
    fn nonempty(&mut self, field: &str) -> Result<String, TaskError> {
        let s = self.string(field)?;
        if s.is_empty() {
            return Err(self.err(field, "is an empty string"));
        }
        Ok(s)
    }

    /// A list of at least two strings; `nonempty` rejects empty entries.
    fn strings(&mut self, field: &str, nonempty: bool) -> Result<Vec<String>, TaskError> {
        let Value::Array(items) = self.take(field)? else {
            return Err(self.err(field, "expected a list of strings"));
        };
        if items.len() < 2 {
            return Err(self.err(field, format!("expected at least 2 entries, got {}", items.len())));
        }
        let mut out = Vec::with_capacity(items.len());
        for (j, item) in items.into_iter().enumerate() {
            match item {
                Value::String(s) if nonempty && continuation_len(&s) == 0 => {
                    return Err(self.err(&format!("{field}[{j}]"), "is empty (nothing after the leading space)"))
                }
                Value::String(s) => out.push(s),
                other => {
                    return Err(self.err(&format!("{field}[{j}]"), format!("expected a string, got {}", kind(&other))))
                }
            }
        }
        Ok(out)
    }

    fn gold(&mut self, n: usize) -> Result<usize, TaskError> {
        let v = self.take("gold")?;
        match v.as_u64() {
            Some(g) if (g as usize) < n => Ok(g as usize),
            Some(g) => Err(self.err("gold", format!("{g} is out of range for {n} options"))),
            None => Err(self.err("gold", format!("expected a non-negative integer, got {v}"))),
        }
    }

    fn choice(&mut self) -> Result<ChoiceDoc, TaskError> {
        let id = self.id()?;
        let context = self.string("context")?;
        let choices = self.strings("choices", true)?;
        let gold = self.gold(choices.len())?;
        Ok(ChoiceDoc { line: self.line, id, context, choices, gold })
    }

    fn partial(&mut self) -> Result<PartialDoc, TaskError> {
        let id = self.id()?;
        let contexts = self.strings("contexts", false)?;
        let continuation = self.nonempty("continuation")?;
        let gold = self.gold(contexts.len())?;
        Ok(PartialDoc { line: self.line, id, contexts, continuation, gold })
    }

    fn lambada(&mut self) -> Result<LambadaDoc, TaskError> {
        let id = self.id()?;
        let context = self.string("context")?;
        let target = self.nonempty("target")?;
        Ok(LambadaDoc { line: self.line, id, context, target })
    }
}

/// The length that lm-eval 0.4 divides by for acc_norm: `len(choice)` in characters (Unicode
/// code points, as Python's `len`) of the choice as the task lists it, i.e. without the one space
/// that lm-eval prepends as `target_delimiter`. Our files store the continuation with that space.
pub fn continuation_len(choice: &str) -> usize {
    choice.strip_prefix(' ').unwrap_or(choice).chars().count()
}

fn data_err(path: &Path, line: usize, field: &str, detail: String) -> TaskError {
    TaskError::Data { file: PathBuf::from(path), line, field: field.to_string(), detail }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("bimamba-eval-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir is writable");
        let p = dir.join(name);
        std::fs::write(&p, text).expect("temp file is writable");
        p
    }

    #[test]
    fn reads_each_layout_and_skips_blank_lines() {
        let p = write(
            "mc.jsonl",
            "{\"id\": \"q1\", \"context\": \"Q\\nAnswer:\", \"choices\": [\" yes\", \" no\"], \"gold\": 1}\n\n",
        );
        let Docs::Choice(d) = load(&p, Layout::Choice, None).expect("valid file") else { panic!("layout") };
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].id.as_str(), d[0].gold, d[0].line), ("q1", 1, 1));
        assert_eq!(d[0].choices, vec![" yes", " no"]);

        let p =
            write("wg.jsonl", "{\"id\": 7, \"contexts\": [\"a A\", \"a B\"], \"continuation\": \" c\", \"gold\": 0}\n");
        let Docs::Partial(d) = load(&p, Layout::Partial, None).expect("valid file") else { panic!("layout") };
        assert_eq!((d[0].id.as_str(), d[0].continuation.as_str()), ("7", " c"));

        let p = write("lb.jsonl", "{\"id\": 0, \"context\": \"x\", \"target\": \" y\"}\n{\"id\": 1, \"context\": \"x\", \"target\": \" z\"}\n");
        assert_eq!(load(&p, Layout::Lambada, Some(1)).expect("valid file").len(), 1);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let good = "{\"id\": 0, \"context\": \"c\", \"choices\": [\" a\", \" b\"], \"gold\": 0}\n";
        let cases = [
            ("{\"id\": 0, \"context\": \"c\", \"choices\": [\" a\", \" b\"], \"gold\": 2}", "gold", "out of range"),
            ("{\"id\": 0, \"context\": \"c\", \"choices\": [\" a\", \" b\"]}", "gold", "missing"),
            ("{\"id\": 0, \"context\": 3, \"choices\": [\" a\", \" b\"], \"gold\": 0}", "context", "expected a string"),
            (
                "{\"id\": 0, \"context\": \"c\", \"choices\": [\" a\", 5], \"gold\": 0}",
                "choices[1]",
                "expected a string",
            ),
            ("{\"id\": 0, \"context\": \"c\", \"choices\": [\" a\", \" \"], \"gold\": 0}", "choices[1]", "empty"),
            ("{\"id\": 0, \"context\": \"c\", \"choices\": [\" a\"], \"gold\": 0}", "choices", "at least 2"),
            ("{\"id\": 0, \"context\": \"c\", \"choices\": [\" a\", \" b\"], \"gold\": -1}", "gold", "non-negative"),
            (
                "{\"id\": [], \"context\": \"c\", \"choices\": [\" a\", \" b\"], \"gold\": 0}",
                "id",
                "string or an integer",
            ),
            ("[1, 2]", "(line)", "JSON object"),
            ("{\"id\": 0, ", "(line)", "not valid JSON"),
        ];
        for (i, (bad, field, detail)) in cases.iter().enumerate() {
            let p = write(&format!("bad{i}.jsonl"), &format!("{good}{bad}\n"));
            let e = load(&p, Layout::Choice, None).expect_err(bad).to_string();
            let want = format!("{}:2: field `{field}`", p.display());
            assert!(e.starts_with(&want), "{e:?} should start with {want:?}");
            assert!(e.contains(detail), "{e:?} should mention {detail:?}");
        }
    }

    #[test]
    fn acc_norm_length_drops_only_the_delimiter_space() {
        assert_eq!(continuation_len(" yes"), 3);
        assert_eq!(continuation_len("  Earn it"), 8); // HellaSwag: lm-eval's choice is " Earn it"
        assert_eq!(continuation_len("no"), 2);
        assert_eq!(continuation_len(" café"), 4); // characters, not bytes
    }
}
