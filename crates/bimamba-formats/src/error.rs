//! The one error type of this crate. Every variant names the file; variants about a tensor name
//! it too, and size/shape variants carry both the expected and the actual value.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{file}: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{file}: no checkpoint found (looked for {looked_for})")]
    NotFound { file: PathBuf, looked_for: String },

    #[error("{file}: unrecognized checkpoint format: {why}")]
    UnknownFormat { file: PathBuf, why: String },

    #[error("{file}: truncated: {what} needs {expected} bytes, only {actual} available")]
    Truncated { file: PathBuf, what: String, expected: u64, actual: u64 },

    /// A structural problem that is not a simple truncation (bad magic, bad JSON, bad offsets).
    #[error("{file}: corrupt: {what}")]
    Corrupt { file: PathBuf, what: String },

    #[error("{file}: invalid safetensors: {what}")]
    Safetensors { file: PathBuf, what: String },

    #[error("{file}: invalid zip archive: {what}")]
    Zip { file: PathBuf, what: String },

    #[error(
        "{file}: zip entry `{entry}` is stored with compression {method}, expected Stored (torch.save \
         never compresses; this file was repacked: re-save it with torch.save or unzip and re-zip with -0)"
    )]
    CompressedEntry { file: PathBuf, entry: String, method: String },

    /// A malformed pickle stream (truncated, stack underflow, wrong operand types).
    #[error("{file}: data.pkl byte {offset}: {what}")]
    Pickle { file: PathBuf, offset: usize, what: String },

    /// A pickle that asks for something a weights-only loader must not do (an arbitrary global,
    /// an unknown opcode). Nothing in the file is ever executed.
    #[error("{file}: refusing unsafe pickle: {what}")]
    UnsafePickle { file: PathBuf, what: String },

    #[error("{file}: tensor `{tensor}` not found")]
    MissingTensor { file: PathBuf, tensor: String },

    #[error("{file}: tensor `{tensor}` is defined twice ({what})")]
    DuplicateTensor { file: PathBuf, tensor: String, what: String },

    #[error("{file}: tensor `{tensor}`: storage `{storage}` has {actual} bytes, the tensor needs {expected}")]
    StorageTooSmall { file: PathBuf, tensor: String, storage: String, expected: u64, actual: u64 },

    #[error("{file}: tensor `{tensor}` ({dtype}, shape {shape:?}): {actual} bytes, expected {expected}")]
    SizeMismatch { file: PathBuf, tensor: String, dtype: String, shape: Vec<usize>, expected: u64, actual: u64 },

    /// A tensor whose shape, strides or layout cannot be represented.
    #[error("{file}: tensor `{tensor}`: {what}")]
    BadTensor { file: PathBuf, tensor: String, what: String },

    #[error("{file}: tensor `{tensor}`: dtype {dtype} is not supported ({what})")]
    UnsupportedDType { file: PathBuf, tensor: String, dtype: String, what: String },

    #[error("{file}: invalid GGUF: {what}")]
    Gguf { file: PathBuf, what: String },
}

impl FormatError {
    pub(crate) fn io(file: &std::path::Path, source: std::io::Error) -> Self {
        FormatError::Io { file: file.to_path_buf(), source }
    }
}
