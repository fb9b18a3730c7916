//! One error type for loading and running a language model, shared by both engines: every
//! variant names the file, tensor or field at fault and, where it applies, the expected and the
//! actual value.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Format(#[from] bimamba_formats::FormatError),

    #[error("{file}: field `{field}`: {detail}")]
    Config { file: PathBuf, field: String, detail: String },

    #[error("{file}: tensor `{tensor}` has shape {actual:?}, expected {expected:?}")]
    Shape { file: PathBuf, tensor: String, expected: Vec<usize>, actual: Vec<usize> },

    #[error("{file}: tensor `{tensor}` is missing{hint}")]
    MissingTensor { file: PathBuf, tensor: String, hint: String },

    #[error("{file}: {detail}")]
    Invalid { file: PathBuf, detail: String },

    #[error("token id {id} is outside the model's vocabulary of {vocab} entries")]
    TokenOutOfRange { id: u32, vocab: usize },

    /// A decoding state handed to a model of another kind (a caller's mistake: states come from
    /// the model's own `new_state`).
    #[error("a {state} decoding state was passed to a {model} model")]
    StateKind { model: &'static str, state: &'static str },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, ModelError>;

/// An error and its causes (outermost first) as one line joined by ": ", leaving out a cause
/// whose text the line already holds: most errors here print their cause themselves
/// (`{file}: {source}`), and a chain printer would otherwise repeat it.
pub fn one_line<I, S>(messages: I) -> String
where
    I: IntoIterator<Item = S>,
    S: std::fmt::Display,
{
    let mut line = String::new();
    for m in messages {
        let m = m.to_string();
        let m = m.trim();
        if m.is_empty() || line.contains(m) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(m);
    }
    // A message spanning lines (a parser's excerpt) stays one line, and a control character
    // read from a file (a tensor name with an escape sequence) is shown escaped, not sent to
    // the terminal.
    let joined = line.split('\n').map(str::trim_end).collect::<Vec<_>>().join(" ");
    joined.chars().flat_map(|c| if c.is_control() { c.escape_default().collect() } else { vec![c] }).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_line_drops_repeated_causes() {
        let io = "No such file or directory (os error 2)";
        let top = format!("/x/config.json: {io}");
        assert_eq!(super::one_line([top.as_str(), io]), top);
        assert_eq!(super::one_line(["reading a.toml", "line 3\nbad key"]), "reading a.toml: line 3 bad key");
        assert_eq!(super::one_line(["tensor `a\u{1b}[31mb\0`"]), "tensor `a\\u{1b}[31mb\\u{0}`");
    }
}
