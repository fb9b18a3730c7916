//! PyTorch `torch.save` files (the zip format of torch >= 1.6), e.g. state-spaces'
//! `pytorch_model.bin`.
//!
//! The archive holds `<archive>/data.pkl` (the pickled state dict), `<archive>/data/<key>` (one
//! raw little-endian storage per key), `<archive>/version` and, in newer files,
//! `<archive>/byteorder`. Entries are stored uncompressed, so tensors are borrowed straight from a
//! memory map of the zip at each entry's data offset. data.pkl is decoded by the weights-only
//! pickle subset in [`crate::pickle`]; a tensor there is `_rebuild_tensor_v2(storage,
//! storage_offset, size, stride, ...)` with offset and strides counted in elements, and the
//! storage is a persistent id `('storage', torch.FloatStorage, key, location, numel)`.
//! Several tensors may view one storage (tied embedding / lm_head): they share its bytes.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use zip::CompressionMethod;

use crate::pickle::{self, Map, PickleError, TensorRef, Value};
use crate::{Data, Entry, FormatError, Loaded, MappedFile, TensorInfo};

struct ZipEntry {
    start: Option<u64>,
    size: u64,
    compressed: u64,
    method: CompressionMethod,
    encrypted: bool,
}

/// Compares a stored entry's bytes with the CRC-32 its header records (once per entry, when the
/// archive is opened): a flipped bit in a tensor must not load silently. Entries that cannot be
/// read as stored bytes are left to [`Archive::range`] to report.
fn check_crc(file: &std::path::Path, buf: &[u8], name: &str, e: &ZipEntry, want: u32) -> Result<(), FormatError> {
    if e.encrypted || e.method != CompressionMethod::Stored || e.size != e.compressed {
        return Ok(());
    }
    let Some(start) = e.start else { return Ok(()) };
    let Some(bytes) =
        usize::try_from(start).ok().zip(usize::try_from(e.size).ok()).and_then(|(s, n)| buf.get(s..s.checked_add(n)?))
    else {
        return Ok(());
    };
    let got = crc32fast::hash(bytes);
    if got != want {
        return Err(FormatError::Zip {
            file: file.to_path_buf(),
            what: format!(
                "entry `{}` is damaged: its CRC-32 is {got:08x}, the archive records {want:08x}",
                name.escape_debug()
            ),
        });
    }
    Ok(())
}

/// The zip's entries by name, with bounds-checked access to stored ones.
struct Archive<'a> {
    file: &'a std::path::Path,
    buf: &'a [u8],
    entries: HashMap<String, ZipEntry>,
}

impl<'a> Archive<'a> {
    fn open(file: &'a std::path::Path, buf: &'a [u8]) -> Result<Self, FormatError> {
        let zip_err = |e: zip::result::ZipError| FormatError::Zip { file: file.to_path_buf(), what: e.to_string() };
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(buf)).map_err(zip_err)?;
        let mut entries = HashMap::new();
        for i in 0..zip.len() {
            // `by_index_raw` reads the local header (giving the data offset) without decompressing.
            let f = zip.by_index_raw(i).map_err(zip_err)?;
            let name = String::from_utf8_lossy(f.name_raw()).into_owned();
            let e = ZipEntry {
                start: f.data_start(),
                size: f.size(),
                compressed: f.compressed_size(),
                method: f.compression(),
                encrypted: f.encrypted(),
            };
            check_crc(file, buf, &name, &e, f.crc32())?;
            entries.insert(name, e);
        }
        Ok(Archive { file, buf, entries })
    }

    /// Byte range of a stored (uncompressed) entry, checked against the file.
    fn range(&self, name: &str) -> Result<(usize, usize), FormatError> {
        let file = self.file.to_path_buf();
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| FormatError::Zip { file: file.clone(), what: format!("entry `{name}` is missing") })?;
        if e.encrypted {
            return Err(FormatError::Zip { file, what: format!("entry `{name}` is encrypted") });
        }
        if e.method != CompressionMethod::Stored {
            return Err(FormatError::CompressedEntry { file, entry: name.into(), method: e.method.to_string() });
        }
        if e.size != e.compressed {
            return Err(FormatError::Zip {
                file,
                what: format!("stored entry `{name}`: size {} differs from compressed size {}", e.size, e.compressed),
            });
        }
        let start = e.start.ok_or_else(|| FormatError::Zip {
            file: file.clone(),
            what: format!("entry `{name}` has no data offset"),
        })?;
        let have = (self.buf.len() as u64).saturating_sub(start);
        if e.size > have {
            return Err(FormatError::Truncated {
                file,
                what: format!("zip entry `{name}` at byte {start}"),
                expected: e.size,
                actual: have,
            });
        }
        // start + size <= buf.len(), which is a usize
        Ok((start as usize, e.size as usize))
    }

    fn bytes(&self, name: &str) -> Result<&'a [u8], FormatError> {
        let (start, len) = self.range(name)?;
        Ok(&self.buf[start..start + len])
    }

    /// The `<archive>/` prefix of the single top-level `data.pkl`.
    fn prefix(&self) -> Result<String, FormatError> {
        let mut found: Vec<&str> = self
            .entries
            .keys()
            .filter_map(|n| n.strip_suffix("data.pkl"))
            .filter(|p| p.is_empty() || (p.ends_with('/') && p.matches('/').count() == 1))
            .collect();
        found.sort_unstable();
        match found[..] {
            [p] => Ok(p.to_string()),
            [] => Err(FormatError::Zip {
                file: self.file.to_path_buf(),
                what: "no `<archive>/data.pkl` entry: not a torch.save file".into(),
            }),
            _ => Err(FormatError::Zip {
                file: self.file.to_path_buf(),
                what: format!("several data.pkl entries ({}): ambiguous", found.join("data.pkl, ")),
            }),
        }
    }
}

fn pickle_error(file: &std::path::Path, e: PickleError) -> FormatError {
    match e {
        PickleError::Malformed { offset, what } => FormatError::Pickle { file: file.to_path_buf(), offset, what },
        PickleError::Unsafe { offset, what } => {
            FormatError::UnsafePickle { file: file.to_path_buf(), what: format!("{what} (data.pkl byte {offset})") }
        }
    }
}

fn has_tensor(m: &Map) -> bool {
    m.items.iter().any(|(_, v)| matches!(v, Value::Tensor(_)))
}

/// The state dict: the top-level dict, or the dict under "state_dict"/"model" when the top level
/// holds no tensors itself (a training checkpoint). Non-tensor values (step counters, config
/// strings) are skipped; later duplicates of a key win, as in Python.
fn state_dict(file: &std::path::Path, top: &Value) -> Result<BTreeMap<String, Rc<TensorRef>>, FormatError> {
    let corrupt = |what: String| FormatError::Corrupt { file: file.to_path_buf(), what };
    let Value::Dict(top) = top else {
        return Err(corrupt("data.pkl does not hold a dict of tensors".into()));
    };
    let mut dict: &Map = top;
    if !has_tensor(top) {
        for key in ["state_dict", "model"] {
            let nested = top.items.iter().rev().find(|(k, _)| matches!(k, Value::Str(s) if &**s == key));
            if let Some((_, Value::Dict(inner))) = nested {
                if has_tensor(inner) {
                    dict = inner;
                    break;
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    for (k, v) in &dict.items {
        if let Value::Tensor(t) = v {
            let name = match k {
                Value::Str(s) => s.to_string(),
                _ => return Err(corrupt("a tensor is stored under a key that is not a string".into())),
            };
            out.insert(name, t.clone());
        }
    }
    if out.is_empty() {
        return Err(corrupt("no tensors in the state dict (nor under \"state_dict\"/\"model\")".into()));
    }
    Ok(out)
}

/// Row-major (C-contiguous) strides for `size`; dimensions of size 1 may have any stride.
fn is_contiguous(size: &[u64], stride: &[u64]) -> bool {
    let mut expected = 1u64;
    for (&n, &s) in size.iter().zip(stride).rev() {
        if n != 1 && s != expected {
            return false;
        }
        expected = expected.saturating_mul(n);
    }
    true
}

/// Copies a strided view into row-major order, `es` bytes per element.
fn gather(storage: &[u8], es: usize, offset: u64, size: &[u64], stride: &[u64], numel: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    out.try_reserve_exact(numel.checked_mul(es)?).ok()?;
    let mut idx = vec![0u64; size.len()];
    for _ in 0..numel {
        let elem: u64 = offset + idx.iter().zip(stride).map(|(i, s)| i * s).sum::<u64>();
        let at = usize::try_from(elem).ok()?.checked_mul(es)?;
        out.extend_from_slice(storage.get(at..at + es)?);
        // Odometer increment, last dimension fastest.
        for d in (0..size.len()).rev() {
            idx[d] += 1;
            if idx[d] < size[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Some(out)
}

fn tensor_entry(
    file: &std::path::Path,
    archive: &Archive<'_>,
    prefix: &str,
    name: String,
    t: &TensorRef,
) -> Result<Entry, FormatError> {
    let bad = |what: String| FormatError::BadTensor { file: file.to_path_buf(), tensor: name.clone(), what };
    let storage_name = format!("{prefix}data/{}", t.storage.key);
    let (start, len) = archive.range(&storage_name)?;
    let dtype = t.storage.dtype;
    let es = dtype.block_bytes();
    let too_small = |expected: Option<u64>, actual: u64| FormatError::StorageTooSmall {
        file: file.to_path_buf(),
        tensor: name.clone(),
        storage: storage_name.clone(),
        expected: expected.unwrap_or(u64::MAX),
        actual,
    };
    let storage_bytes = t.storage.numel.checked_mul(es as u64);
    if storage_bytes.is_none_or(|b| b > len as u64) {
        return Err(too_small(storage_bytes, len as u64));
    }
    let storage_numel = t.storage.numel;
    let shape: Vec<usize> = t
        .size
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| bad(format!("size {:?} does not fit in memory", t.size)))?;
    let numel = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("size {:?} overflows", t.size)))?;
    let info = TensorInfo { name: name.clone(), dtype, shape };
    if numel == 0 {
        return Ok(Entry { info, data: Data::Mapped { file: 0, start, len: 0 } });
    }
    // Last element touched: offset + Σ (size_i − 1)·stride_i; it must lie inside the storage.
    let last =
        t.size.iter().zip(&t.stride).try_fold(t.offset, |acc, (&n, &s)| (n - 1).checked_mul(s)?.checked_add(acc));
    let extent = last.and_then(|l| l.checked_add(1));
    if extent.is_none_or(|e| e > storage_numel) {
        return Err(too_small(extent.and_then(|e| e.checked_mul(es as u64)), storage_numel * es as u64));
    }
    let data = if is_contiguous(&t.size, &t.stride) {
        // offset + numel <= extent <= storage_numel, so these fit in the entry
        Data::Mapped { file: 0, start: start + t.offset as usize * es, len: numel * es }
    } else {
        // A non-overlapping view cannot have more elements than its storage; refusing overlap also
        // bounds the copy by the file size.
        if numel as u64 > storage_numel {
            return Err(bad(format!(
                "size {:?} with stride {:?} overlaps itself ({numel} elements in a storage of {storage_numel})",
                t.size, t.stride
            )));
        }
        let storage = &archive.buf[start..start + len];
        let copy = gather(storage, es, t.offset, &t.size, &t.stride, numel)
            .ok_or_else(|| bad(format!("cannot copy the strided view {:?}/{:?}", t.size, t.stride)))?;
        Data::Owned(copy)
    };
    Ok(Entry { info, data })
}

/// Reads the tensors of a torch.save zip held in `buf` (the whole file); data ranges refer to it.
pub(crate) fn entries(file: &std::path::Path, buf: &[u8]) -> Result<Vec<Entry>, FormatError> {
    let archive = Archive::open(file, buf)?;
    let prefix = archive.prefix()?;
    let byteorder = format!("{prefix}byteorder");
    if archive.entries.contains_key(&byteorder) {
        let order = archive.bytes(&byteorder)?;
        if order != b"little" {
            return Err(FormatError::Corrupt {
                file: file.to_path_buf(),
                what: format!("byteorder is {:?}, only \"little\" is supported", String::from_utf8_lossy(order)),
            });
        }
    }
    let pkl = archive.bytes(&format!("{prefix}data.pkl"))?;
    let top = pickle::unpickle(pkl).map_err(|e| pickle_error(file, e))?;
    let tensors = state_dict(file, &top)?;
    let mut entries = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        entries.push(tensor_entry(file, &archive, &prefix, name, &t)?);
    }
    Ok(entries)
}

pub(crate) fn load(mapped: MappedFile) -> Result<Loaded, FormatError> {
    let entries = entries(&mapped.path, &mapped.map)?;
    Ok(Loaded { files: vec![mapped], entries, metadata: BTreeMap::new(), gguf: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguity() {
        assert!(is_contiguous(&[2, 3], &[3, 1]));
        assert!(is_contiguous(&[1, 3], &[99, 1]));
        assert!(is_contiguous(&[], &[]));
        assert!(!is_contiguous(&[2, 3], &[1, 2]));
    }

    #[test]
    fn gather_transpose() {
        // storage [0, 1, 2, 3, 4, 5] as u8; a 3x2 transpose of the 2x3 row-major matrix
        let s = [0u8, 1, 2, 3, 4, 5];
        let out = gather(&s, 1, 0, &[3, 2], &[1, 3], 6).expect("in bounds");
        assert_eq!(out, vec![0, 3, 1, 4, 2, 5]);
        assert!(gather(&s, 1, 1, &[3, 2], &[1, 3], 6).is_none(), "reads past the storage");
    }
}
