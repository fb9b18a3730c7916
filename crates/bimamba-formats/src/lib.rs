//! Checkpoint readers for bimamba, with no Python: safetensors (single file or sharded),
//! PyTorch `torch.save` zip archives (through a weights-only pickle subset that never runs code)
//! and GGUF v2/v3 (F32/F16/BF16 and the Q8_0/Q4_0/Q4_1 block quantizations).
//!
//! Every reader memory-maps its files: [`Checkpoint::bytes`] borrows tensor data straight from the
//! map (zero-copy), and [`Checkpoint::to_f32`] converts or dequantizes on demand.
//!
//! Shapes are always reported row-major (PyTorch order, slowest dimension first). GGUF lists its
//! dimensions fastest-first (ne0 = the number of columns), so a GGUF tensor with ne = [576, 49152]
//! is reported as shape [49152, 576]; its bytes are already in that row-major order.
//!
//! Raw bytes are little-endian, as all three formats store them, and are not necessarily aligned
//! to the element size (safetensors offsets are only 8-aligned for files this crate writes).

mod dtype;
mod error;
mod gguf;
mod pickle;
mod reader;
mod st;
mod torch;

#[cfg(test)]
mod tests_gguf;
#[cfg(test)]
mod tests_torch;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

pub use dtype::{DType, QK};
pub use error::FormatError;
pub use gguf::{GgufArray, GgufMetadata, GgufValue};
pub use st::write_safetensors_atomic;

/// Name, element type and shape of one tensor. `shape` is row-major (PyTorch order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl TensorInfo {
    /// Number of elements (1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The container format a checkpoint was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Safetensors,
    /// `model.safetensors.index.json` plus its shards.
    ShardedSafetensors,
    /// A `torch.save` zip archive (`pytorch_model.bin`, `.pt`, `.pth`).
    PyTorch,
    Gguf,
}

/// One memory-mapped file.
pub(crate) struct MappedFile {
    pub path: PathBuf,
    pub map: Mmap,
}

/// Where a tensor's bytes live.
pub(crate) enum Data {
    /// `len` bytes at `start` in `files[file]`; bounds checked when the checkpoint is opened.
    Mapped { file: usize, start: usize, len: usize },
    /// A copy, made only for a non-contiguous PyTorch tensor.
    Owned(Vec<u8>),
}

pub(crate) struct Entry {
    pub info: TensorInfo,
    pub data: Data,
}

/// What a format reader hands back before the entries are indexed by name.
pub(crate) struct Loaded {
    pub files: Vec<MappedFile>,
    pub entries: Vec<Entry>,
    pub metadata: BTreeMap<String, String>,
    pub gguf: Option<GgufMetadata>,
}

/// An opened checkpoint: tensor metadata plus memory-mapped data.
pub struct Checkpoint {
    path: PathBuf,
    format: Format,
    files: Vec<MappedFile>,
    entries: BTreeMap<String, Entry>,
    metadata: BTreeMap<String, String>,
    gguf: Option<GgufMetadata>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("tensors", &self.entries.len())
            .field("file_bytes", &self.file_bytes())
            .finish()
    }
}

const DIR_CANDIDATES: [&str; 3] = ["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"];

impl Checkpoint {
    /// A model directory (model.safetensors | model.safetensors.index.json shards |
    /// pytorch_model.bin, in that order of preference) or a file (.safetensors, a shard index
    /// .json, .bin/.pt/.pth, .gguf). A file's format is recognized by its magic bytes.
    pub fn open(path: &Path) -> Result<Checkpoint, FormatError> {
        if path.is_dir() {
            for name in DIR_CANDIDATES {
                let candidate = path.join(name);
                if candidate.is_file() {
                    return Self::open_file(&candidate, path);
                }
            }
            return Err(FormatError::NotFound { file: path.to_path_buf(), looked_for: DIR_CANDIDATES.join(", ") });
        }
        Self::open_file(path, path)
    }

    fn open_file(file: &Path, shown: &Path) -> Result<Checkpoint, FormatError> {
        if file.extension().is_some_and(|e| e == "json") {
            return Self::assemble(shown, Format::ShardedSafetensors, st::load_sharded(file)?);
        }
        let mapped = map_file(file)?;
        let head = &mapped.map[..mapped.map.len().min(16)];
        let (format, loaded) = if head.starts_with(b"GGUF") {
            (Format::Gguf, gguf::load(mapped)?)
        } else if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
            (Format::PyTorch, torch::load(mapped)?)
        } else if head.len() > 8 && head[8] == b'{' {
            // Before the pickle test: a safetensors header length whose low byte is 0x80 would
            // otherwise read as a pickle's PROTO opcode (a pickle never has `{` at byte 8 here).
            (Format::Safetensors, st::load_single(mapped)?)
        } else if head.first() == Some(&0x80) {
            return Err(FormatError::UnknownFormat {
                file: file.to_path_buf(),
                why: "a bare pickle: the legacy (pre-1.6) torch.save format is not supported; \
                      re-save it with torch >= 1.6 (zip format)"
                    .into(),
            });
        } else {
            return Err(FormatError::UnknownFormat {
                file: file.to_path_buf(),
                why: format!("no safetensors, zip or GGUF magic in the first bytes {head:02x?}"),
            });
        };
        Self::assemble(shown, format, loaded)
    }

    fn assemble(path: &Path, format: Format, loaded: Loaded) -> Result<Checkpoint, FormatError> {
        let mut entries = BTreeMap::new();
        for entry in loaded.entries {
            let name = entry.info.name.clone();
            if let Some(old) = entries.insert(name.clone(), entry) {
                let where_ = |e: &Entry| match e.data {
                    Data::Mapped { file, .. } => loaded.files[file].path.display().to_string(),
                    Data::Owned(_) => "a copied tensor".to_string(),
                };
                let new = &entries[&name];
                return Err(FormatError::DuplicateTensor {
                    file: path.to_path_buf(),
                    tensor: name,
                    what: format!("in {} and in {}", where_(&old), where_(new)),
                });
            }
        }
        Ok(Checkpoint {
            path: path.to_path_buf(),
            format,
            files: loaded.files,
            entries,
            metadata: loaded.metadata,
            gguf: loaded.gguf,
        })
    }

    /// The path given to [`Checkpoint::open`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// All tensors, sorted by name.
    pub fn tensors(&self) -> Vec<&TensorInfo> {
        self.entries.values().map(|e| &e.info).collect()
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.entries.get(name).map(|e| &e.info)
    }

    fn entry(&self, name: &str) -> Result<&Entry, FormatError> {
        self.entries
            .get(name)
            .ok_or_else(|| FormatError::MissingTensor { file: self.path.clone(), tensor: name.to_string() })
    }

    /// Raw little-endian data, zero-copy from the memory map (a non-contiguous PyTorch tensor
    /// is the one exception: it was copied into row-major order when the file was opened).
    pub fn bytes(&self, name: &str) -> Result<&[u8], FormatError> {
        match &self.entry(name)?.data {
            Data::Owned(v) => Ok(v),
            Data::Mapped { file, start, len } => {
                let f = &self.files[*file];
                // Bounds were validated at open; re-check instead of trusting that invariant.
                start.checked_add(*len).and_then(|end| f.map.get(*start..end)).ok_or_else(|| FormatError::Truncated {
                    file: f.path.clone(),
                    what: format!("tensor `{name}` at byte {start}"),
                    expected: *len as u64,
                    actual: f.map.len().saturating_sub(*start) as u64,
                })
            }
        }
    }

    /// The tensor as f32 in row-major order: F64/F32/F16/BF16 converted, GGUF Q8_0/Q4_0/Q4_1
    /// dequantized. Integer and bool tensors are an error.
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>, FormatError> {
        let info = &self.entry(name)?.info;
        let bytes = self.bytes(name)?;
        dtype::to_f32(info.dtype, bytes, info.numel()).map_err(|e| match e {
            dtype::ConvertError::NotFloat => FormatError::UnsupportedDType {
                file: self.path.clone(),
                tensor: name.to_string(),
                dtype: info.dtype.to_string(),
                what: "to_f32 converts only float and quantized tensors".into(),
            },
            dtype::ConvertError::Length { expected, actual } => FormatError::SizeMismatch {
                file: self.path.clone(),
                tensor: name.to_string(),
                dtype: info.dtype.to_string(),
                shape: info.shape.clone(),
                expected: expected as u64,
                actual: actual as u64,
            },
        })
    }

    /// safetensors `__metadata__` (merged over shards); empty for other formats.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The typed key/value metadata of a GGUF file; `None` for other formats.
    pub fn gguf(&self) -> Option<&GgufMetadata> {
        self.gguf.as_ref()
    }

    /// Total size on disk of the mapped data files (shards summed; a shard index is not counted).
    pub fn file_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.map.len() as u64).sum()
    }
}

/// Memory-maps a whole file read-only.
pub(crate) fn map_file(path: &Path) -> Result<MappedFile, FormatError> {
    let file = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
    // SAFETY: the map is read-only and outlives every slice handed out (they borrow the
    // Checkpoint). As with every mmap-based loader (safetensors, candle, llama.cpp), the file must
    // not be truncated or rewritten while it is open; writers in this crate replace files by
    // rename, which leaves existing maps intact.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?;
    Ok(MappedFile { path: path.to_path_buf(), map })
}
