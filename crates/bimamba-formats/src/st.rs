//! safetensors: single files and `model.safetensors.index.json` shards (read through the
//! `safetensors` crate over a memory map), and an atomic writer.
//!
//! File layout: u64 LE header length N, N bytes of JSON
//! `{"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}}`,
//! then the data section; offsets are relative to the data section.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Component, Path};

use safetensors::{Dtype, SafeTensors};

use crate::{map_file, DType, Data, Entry, FormatError, Loaded, MappedFile, TensorInfo};

fn from_st(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::F64 => DType::F64,
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::I64 => DType::I64,
        Dtype::I32 => DType::I32,
        Dtype::I16 => DType::I16,
        Dtype::I8 => DType::I8,
        Dtype::U64 => DType::U64,
        Dtype::U32 => DType::U32,
        Dtype::U16 => DType::U16,
        Dtype::U8 => DType::U8,
        Dtype::BOOL => DType::Bool,
        _ => return None,
    })
}

/// Parses one mapped safetensors file (index `file_index` in the checkpoint's file list) and
/// appends its tensors and `__metadata__`.
fn read_file(
    mapped: &MappedFile,
    file_index: usize,
    entries: &mut Vec<Entry>,
    metadata: &mut BTreeMap<String, String>,
) -> Result<(), FormatError> {
    let file = &mapped.path;
    let buf: &[u8] = &mapped.map;
    let bad = |e: safetensors::SafeTensorError| FormatError::Safetensors { file: file.clone(), what: e.to_string() };
    if buf.len() < 8 {
        return Err(FormatError::Truncated {
            file: file.clone(),
            what: "the safetensors header length".into(),
            expected: 8,
            actual: buf.len() as u64,
        });
    }
    let (_, header) = SafeTensors::read_metadata(buf).map_err(bad)?;
    if let Some(m) = header.metadata() {
        metadata.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    // `deserialize` validates that the offsets tile the data section exactly and match
    // dtype × shape, so every view below is in bounds.
    let st = SafeTensors::deserialize(buf).map_err(bad)?;
    for (name, view) in st.iter() {
        let dtype = from_st(view.dtype()).ok_or_else(|| FormatError::UnsupportedDType {
            file: file.clone(),
            tensor: name.to_string(),
            dtype: format!("{:?}", view.dtype()),
            what: "this reader handles F64/F32/F16/BF16, signed/unsigned integers and BOOL".into(),
        })?;
        let data = view.data();
        let start = data.as_ptr() as usize - buf.as_ptr() as usize;
        entries.push(Entry {
            info: TensorInfo { name: name.to_string(), dtype, shape: view.shape().to_vec() },
            data: Data::Mapped { file: file_index, start, len: data.len() },
        });
    }
    Ok(())
}

pub(crate) fn load_single(mapped: MappedFile) -> Result<Loaded, FormatError> {
    let mut entries = Vec::new();
    let mut metadata = BTreeMap::new();
    read_file(&mapped, 0, &mut entries, &mut metadata)?;
    Ok(Loaded { files: vec![mapped], entries, metadata, gguf: None })
}

/// Reads `model.safetensors.index.json` (`{"metadata": {...}, "weight_map": {tensor: shard}}`)
/// and every shard it names; each tensor must be in the shard the index names.
pub(crate) fn load_sharded(index: &Path) -> Result<Loaded, FormatError> {
    let corrupt = |what: String| FormatError::Corrupt { file: index.to_path_buf(), what };
    let text = std::fs::read(index).map_err(|e| FormatError::io(index, e))?;
    let json: serde_json::Value = serde_json::from_slice(&text).map_err(|e| corrupt(format!("not valid JSON: {e}")))?;
    let map =
        json.get("weight_map").and_then(|v| v.as_object()).ok_or_else(|| corrupt("no \"weight_map\" object".into()))?;
    let mut weight_map = BTreeMap::new();
    for (tensor, shard) in map {
        let shard = shard.as_str().ok_or_else(|| corrupt(format!("weight_map[\"{tensor}\"] is not a string")))?;
        // A shard must be a plain file name next to the index, never a path elsewhere.
        let mut comps = Path::new(shard).components();
        if !matches!((comps.next(), comps.next()), (Some(Component::Normal(_)), None)) {
            return Err(corrupt(format!("shard name \"{shard}\" for `{tensor}` is not a plain file name")));
        }
        weight_map.insert(tensor.clone(), shard.to_string());
    }
    if weight_map.is_empty() {
        return Err(corrupt("\"weight_map\" is empty".into()));
    }
    let dir = index.parent().unwrap_or(Path::new("."));
    let shards: BTreeSet<&String> = weight_map.values().collect();
    let mut files = Vec::new();
    let mut entries = Vec::new();
    let mut metadata = BTreeMap::new();
    let mut shard_of = BTreeMap::new();
    for shard in shards {
        let mapped = map_file(&dir.join(shard))?;
        let first = entries.len();
        read_file(&mapped, files.len(), &mut entries, &mut metadata)?;
        for e in &entries[first..] {
            shard_of.insert(e.info.name.clone(), shard.clone());
        }
        files.push(mapped);
    }
    for (tensor, shard) in &weight_map {
        match shard_of.get(tensor) {
            Some(s) if s == shard => {}
            Some(s) => return Err(corrupt(format!("`{tensor}` is listed in {shard} but found in {s}"))),
            None => return Err(FormatError::MissingTensor { file: dir.join(shard), tensor: tensor.clone() }),
        }
    }
    Ok(Loaded { files, entries, metadata, gguf: None })
}

fn st_name(d: DType) -> Option<&'static str> {
    if d.is_quantized() {
        None
    } else {
        Some(d.name())
    }
}

/// Writes a safetensors file atomically: the data goes to a temporary file in the same
/// directory, is flushed to disk, and is then renamed over `path`, so a reader (or a memory map
/// of the old file) never sees a half-written file.
///
/// Each tuple is (name, dtype, row-major shape, little-endian bytes). Tensors are laid out by
/// decreasing element size, then by name, so that every tensor starts at a multiple of its element
/// size (the header is padded to 8 bytes). Quantized GGUF types cannot be stored in safetensors.
pub fn write_safetensors_atomic(
    path: &Path,
    tensors: &[(String, DType, Vec<usize>, &[u8])],
    metadata: &BTreeMap<String, String>,
) -> Result<(), FormatError> {
    let file = path.to_path_buf();
    let mut names = BTreeSet::new();
    for (name, dtype, shape, bytes) in tensors {
        if name.is_empty() || name == "__metadata__" || !names.insert(name.as_str()) {
            return Err(FormatError::DuplicateTensor {
                file,
                tensor: name.clone(),
                what: "names must be unique, non-empty and not \"__metadata__\"".into(),
            });
        }
        if st_name(*dtype).is_none() {
            return Err(FormatError::UnsupportedDType {
                file,
                tensor: name.clone(),
                dtype: dtype.to_string(),
                what: "safetensors has no block-quantized types".into(),
            });
        }
        let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let expected = numel.and_then(|n| dtype.byte_len(n));
        if expected != Some(bytes.len()) {
            return Err(FormatError::SizeMismatch {
                file,
                tensor: name.clone(),
                dtype: dtype.to_string(),
                shape: shape.clone(),
                expected: expected.map_or(u64::MAX, |e| e as u64),
                actual: bytes.len() as u64,
            });
        }
    }
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| {
        let (ta, tb) = (&tensors[a], &tensors[b]);
        tb.1.block_bytes().cmp(&ta.1.block_bytes()).then_with(|| ta.0.cmp(&tb.0))
    });

    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let m: serde_json::Map<String, serde_json::Value> =
            metadata.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
        header.insert("__metadata__".into(), serde_json::Value::Object(m));
    }
    let mut offset = 0usize;
    for &i in &order {
        let (name, dtype, shape, bytes) = &tensors[i];
        let end = offset + bytes.len();
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": st_name(*dtype), "shape": shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut header = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| FormatError::Corrupt { file: file.clone(), what: format!("cannot encode header: {e}") })?;
    header.resize(header.len().next_multiple_of(8), b' ');

    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let base = path.file_name().ok_or_else(|| FormatError::Io {
        file: file.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name"),
    })?;
    // Unique per process and call, so concurrent writers never share a temporary file.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{}.tmp{}-{n}", base.to_string_lossy(), std::process::id()));
    let write = || -> std::io::Result<()> {
        let f = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        for &i in &order {
            w.write_all(tensors[i].3)?;
        }
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp); // best effort: the error below is what matters
        return Err(FormatError::io(path, e));
    }
    // Persist the rename itself; not every file system supports fsync on a directory, and the
    // file is complete either way, so a failure here is not an error.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Checkpoint;

    fn tmpdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("bimamba-formats-st-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("create temp dir");
        d
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn round_trip_through_the_atomic_writer() {
        let dir = tmpdir("rt");
        let path = dir.join("model.safetensors");
        let a = f32_bytes(&[1.0, -2.5, 3.25, 0.0, 5.0, -6.0]);
        let h: Vec<u8> =
            [half::f16::from_f32(0.5), half::f16::from_f32(-1.0)].iter().flat_map(|x| x.to_le_bytes()).collect();
        let b: Vec<u8> = [-3i8, 7].iter().map(|&x| x as u8).collect();
        let tensors = vec![
            ("w".to_string(), DType::F32, vec![2, 3], &a[..]),
            ("h".to_string(), DType::F16, vec![2], &h[..]),
            ("i".to_string(), DType::I8, vec![2, 1], &b[..]),
        ];
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        write_safetensors_atomic(&path, &tensors, &meta).expect("write");
        let ck = Checkpoint::open(&dir).expect("open dir");
        assert_eq!(ck.format(), crate::Format::Safetensors);
        assert_eq!(ck.path(), dir.as_path());
        let names: Vec<&str> = ck.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["h", "i", "w"]);
        assert_eq!(ck.info("w").map(|t| t.shape.clone()), Some(vec![2, 3]));
        assert_eq!(ck.bytes("w").expect("w"), &a[..]);
        assert_eq!(ck.bytes("i").expect("i"), &b[..]);
        assert_eq!(ck.to_f32("w").expect("w"), vec![1.0, -2.5, 3.25, 0.0, 5.0, -6.0]);
        assert_eq!(ck.to_f32("h").expect("h"), vec![0.5, -1.0]);
        assert!(matches!(ck.to_f32("i"), Err(FormatError::UnsupportedDType { .. })));
        assert!(matches!(ck.bytes("nope"), Err(FormatError::MissingTensor { .. })));
        assert_eq!(ck.metadata(), &meta);
        assert!(ck.gguf().is_none());
        assert_eq!(ck.file_bytes(), std::fs::metadata(&path).expect("stat").len());
        // Layout by decreasing element size: F32 first, 8-aligned in the (page-aligned) map.
        let (pw, ph) = (ck.bytes("w").expect("w").as_ptr(), ck.bytes("h").expect("h").as_ptr());
        assert_eq!(pw as usize % 8, 0);
        assert!(pw < ph);
        // No temp file is left behind.
        let leftovers: Vec<_> = std::fs::read_dir(&dir).expect("ls").filter_map(|e| e.ok()).collect();
        assert_eq!(leftovers.len(), 1);
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Header lengths whose low byte is 0x80 (a pickle's first byte) are still safetensors.
    #[test]
    fn every_header_length_is_recognized() {
        let dir = tmpdir("hdrlen");
        let path = dir.join("m.safetensors");
        let a = f32_bytes(&[1.0]);
        for n in 0..300 {
            let meta = BTreeMap::from([("k".to_string(), "x".repeat(n))]);
            write_safetensors_atomic(&path, &[("w".to_string(), DType::F32, vec![1], &a[..])], &meta).expect("write");
            let ck = Checkpoint::open(&path).unwrap_or_else(|e| panic!("metadata of {n} bytes: {e}"));
            assert_eq!(ck.to_f32("w").expect("w"), vec![1.0]);
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn writer_rejects_bad_input() {
        let dir = tmpdir("bad");
        let path = dir.join("x.safetensors");
        let a = f32_bytes(&[1.0, 2.0]);
        let none = BTreeMap::new();
        let short = [("w".to_string(), DType::F32, vec![3], &a[..])];
        assert!(matches!(
            write_safetensors_atomic(&path, &short, &none),
            Err(FormatError::SizeMismatch { expected: 12, actual: 8, .. })
        ));
        let dup = [("w".to_string(), DType::F32, vec![2], &a[..]), ("w".to_string(), DType::F32, vec![2], &a[..])];
        assert!(matches!(write_safetensors_atomic(&path, &dup, &none), Err(FormatError::DuplicateTensor { .. })));
        let q = [("q".to_string(), DType::Q8_0, vec![32], &[0u8; 34][..])];
        assert!(matches!(write_safetensors_atomic(&path, &q, &none), Err(FormatError::UnsupportedDType { .. })));
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn truncated_and_corrupt_files_are_errors() {
        let dir = tmpdir("corrupt");
        let good = dir.join("good.safetensors");
        let a = f32_bytes(&[1.0, 2.0, 3.0, 4.0]);
        write_safetensors_atomic(&good, &[("w".to_string(), DType::F32, vec![4], &a[..])], &BTreeMap::new())
            .expect("write");
        let bytes = std::fs::read(&good).expect("read");

        let cut = dir.join("cut.safetensors");
        std::fs::write(&cut, &bytes[..bytes.len() - 3]).expect("write");
        let e = Checkpoint::open(&cut).expect_err("truncated data");
        assert!(matches!(e, FormatError::Safetensors { .. }), "{e}");
        assert!(e.to_string().contains("cut.safetensors"), "{e}");

        let tiny = dir.join("tiny.safetensors");
        std::fs::write(&tiny, &bytes[..5]).expect("write");
        assert!(Checkpoint::open(&tiny).is_err());

        // Header length pointing past the end of the file.
        let mut long = bytes.clone();
        long[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let longp = dir.join("long.safetensors");
        std::fs::write(&longp, &long).expect("write");
        assert!(matches!(Checkpoint::open(&longp), Err(FormatError::Safetensors { .. })));

        // Offsets that disagree with dtype × shape.
        let text = String::from_utf8_lossy(&bytes).replace("[4]", "[5]");
        let badp = dir.join("bad.safetensors");
        std::fs::write(&badp, text.as_bytes()).expect("write");
        assert!(Checkpoint::open(&badp).is_err());

        // JSON garbage in the header.
        let mut garbage = bytes.clone();
        garbage[9] = b'!';
        let gp = dir.join("garbage.safetensors");
        std::fs::write(&gp, &garbage).expect("write");
        assert!(matches!(Checkpoint::open(&gp), Err(FormatError::Safetensors { .. })));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn sharded_index() {
        let dir = tmpdir("shards");
        let a = f32_bytes(&[1.0, 2.0]);
        let b = f32_bytes(&[3.0]);
        let none = BTreeMap::new();
        write_safetensors_atomic(&dir.join("s1.safetensors"), &[("a".into(), DType::F32, vec![2], &a[..])], &none)
            .expect("write");
        write_safetensors_atomic(&dir.join("s2.safetensors"), &[("b".into(), DType::F32, vec![1], &b[..])], &none)
            .expect("write");
        let index = dir.join("model.safetensors.index.json");
        std::fs::write(
            &index,
            r#"{"metadata":{"total_size":12},"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}}"#,
        )
        .expect("write");
        let ck = Checkpoint::open(&dir).expect("open");
        assert_eq!(ck.format(), crate::Format::ShardedSafetensors);
        assert_eq!(ck.to_f32("a").expect("a"), vec![1.0, 2.0]);
        assert_eq!(ck.to_f32("b").expect("b"), vec![3.0]);

        std::fs::write(&index, r#"{"weight_map":{"a":"s2.safetensors","b":"s2.safetensors"}}"#).expect("write");
        assert!(matches!(Checkpoint::open(&dir), Err(FormatError::MissingTensor { .. })));
        std::fs::write(&index, r#"{"weight_map":{"a":"../s1.safetensors"}}"#).expect("write");
        assert!(matches!(Checkpoint::open(&dir), Err(FormatError::Corrupt { .. })));
        std::fs::remove_dir_all(&dir).ok();
    }
}
