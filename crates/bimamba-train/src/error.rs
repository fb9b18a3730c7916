//! The library's error type.

use std::path::PathBuf;

/// Everything the training library can fail on, with the file or tensor it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A malformed file (bad header, version, JSON, TOML, safetensors).
    #[error("{path}: {msg}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A tensor that the model needs is not in the source.
    #[error("tensor `{name}` is missing from {source_desc}")]
    MissingTensor {
        /// The tensor's checkpoint name.
        name: String,
        /// Where it was looked for.
        source_desc: String,
    },
    /// A tensor has the wrong shape.
    #[error("tensor `{name}` in {source_desc} has shape {got:?}, the model expects {expected:?}")]
    Shape {
        /// The tensor's checkpoint name.
        name: String,
        /// Where it came from.
        source_desc: String,
        /// The model's shape.
        expected: Vec<usize>,
        /// The file's shape.
        got: Vec<usize>,
    },
    /// A model directory's `config.json` refused by the engine's parser (names the file and field).
    #[error(transparent)]
    ModelConfig(#[from] bimamba_lm::ModelError),
    /// An invalid configuration or argument.
    #[error("{0}")]
    Config(String),
}

impl Error {
    /// Wraps an I/O error with its path.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// A format error on `path`.
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format { path: path.into(), msg: msg.into() }
    }
}

/// The library's result type.
pub type Result<T> = std::result::Result<T, Error>;
