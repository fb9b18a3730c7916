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
