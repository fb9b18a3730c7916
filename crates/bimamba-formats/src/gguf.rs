//! GGUF v2/v3 (llama.cpp's format), little-endian files only.
//!
//! Layout: magic "GGUF", u32 version, u64 tensor_count, u64 kv_count; kv_count key/values
//! (key: string, u32 value type, value); tensor_count tensor infos (name: string, u32 n_dims,
//! n_dims × u64 ne (fastest-varying first), u32 ggml type, u64 offset); padding up to
//! `general.alignment` (default 32); the data section. A string is u64 length + UTF-8 bytes; an
//! array is u32 element type + u64 count + elements. Tensor offsets are relative to the data
//! section and multiples of the alignment.
//!
//! Shapes are reported row-major: ne = [ne0, ne1, ...] becomes shape [..., ne1, ne0].

use std::collections::BTreeMap;

use crate::reader::{Reader, Short};
use crate::{DType, Data, Entry, FormatError, Loaded, MappedFile, TensorInfo};

const DEFAULT_ALIGNMENT: u64 = 32;
/// GGML_MAX_DIMS is 4; a little slack costs nothing.
const MAX_DIMS: u32 = 8;
/// Arrays of arrays are legal but unused in practice; bound the nesting.
const MAX_ARRAY_DEPTH: u32 = 4;

/// One typed GGUF metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(GgufArray),
}

/// A typed GGUF array (all elements share one type).
#[derive(Clone, Debug, PartialEq)]
pub enum GgufArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<GgufArray>),
}

impl GgufValue {
    /// Any integer value that fits in a u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => v.try_into().ok(),
            GgufValue::I16(v) => v.try_into().ok(),
            GgufValue::I32(v) => v.try_into().ok(),
            GgufValue::I64(v) => v.try_into().ok(),
            _ => None,
        }
    }

    /// Any integer value that fits in an i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::U64(v) => v.try_into().ok(),
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| v.try_into().ok()),
        }
    }

    /// F32 or F64 (F64 rounded).
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            GgufValue::F32(v) => Some(v),
            GgufValue::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&GgufArray> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The GGUF name of the value's type ("u32", "string", "array[string]", ...).
    pub fn type_name(&self) -> String {
        match self {
            GgufValue::U8(_) => "u8".into(),
            GgufValue::I8(_) => "i8".into(),
            GgufValue::U16(_) => "u16".into(),
            GgufValue::I16(_) => "i16".into(),
            GgufValue::U32(_) => "u32".into(),
            GgufValue::I32(_) => "i32".into(),
            GgufValue::U64(_) => "u64".into(),
            GgufValue::I64(_) => "i64".into(),
            GgufValue::F32(_) => "f32".into(),
            GgufValue::F64(_) => "f64".into(),
            GgufValue::Bool(_) => "bool".into(),
            GgufValue::String(_) => "string".into(),
            GgufValue::Array(a) => format!("array[{}]", a.elem_type_name()),
        }
    }
}

impl GgufArray {
    pub fn len(&self) -> usize {
        match self {
            GgufArray::U8(v) => v.len(),
            GgufArray::I8(v) => v.len(),
            GgufArray::U16(v) => v.len(),
            GgufArray::I16(v) => v.len(),
            GgufArray::U32(v) => v.len(),
            GgufArray::I32(v) => v.len(),
            GgufArray::U64(v) => v.len(),
            GgufArray::I64(v) => v.len(),
            GgufArray::F32(v) => v.len(),
            GgufArray::F64(v) => v.len(),
            GgufArray::Bool(v) => v.len(),
            GgufArray::String(v) => v.len(),
            GgufArray::Array(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn elem_type_name(&self) -> &'static str {
        match self {
            GgufArray::U8(_) => "u8",
            GgufArray::I8(_) => "i8",
            GgufArray::U16(_) => "u16",
            GgufArray::I16(_) => "i16",
            GgufArray::U32(_) => "u32",
            GgufArray::I32(_) => "i32",
            GgufArray::U64(_) => "u64",
            GgufArray::I64(_) => "i64",
            GgufArray::F32(_) => "f32",
            GgufArray::F64(_) => "f64",
            GgufArray::Bool(_) => "bool",
            GgufArray::String(_) => "string",
            GgufArray::Array(_) => "array",
        }
    }
}

/// The header and typed key/values of a GGUF file.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufMetadata {
    pub version: u32,
    /// `general.alignment`, or 32 when absent.
    pub alignment: u64,
    pub kv: BTreeMap<String, GgufValue>,
}

impl GgufMetadata {
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.kv.get(key)
    }
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }
    /// Any integer type that fits in a u32.
    pub fn get_u32(&self, key: &str) -> Option<u32> {
        self.get(key)?.as_u64()?.try_into().ok()
    }
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key)?.as_f32()
    }
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }
    pub fn get_array(&self, key: &str) -> Option<&GgufArray> {
        self.get(key)?.as_array()
    }
    /// A string array, such as `tokenizer.ggml.tokens` or `tokenizer.ggml.merges`.
    pub fn get_str_array(&self, key: &str) -> Option<&[String]> {
        match self.get_array(key)? {
            GgufArray::String(v) => Some(v),
            _ => None,
        }
    }
    pub fn get_f32_array(&self, key: &str) -> Option<&[f32]> {
        match self.get_array(key)? {
            GgufArray::F32(v) => Some(v),
            _ => None,
        }
    }
    pub fn get_i32_array(&self, key: &str) -> Option<&[i32]> {
        match self.get_array(key)? {
            GgufArray::I32(v) => Some(v),
            _ => None,
        }
    }
    /// `general.architecture` ("llama", "mamba2", ...).
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }
    /// `<architecture>.<suffix>`, e.g. `arch_get("block_count")` reads `llama.block_count`.
    pub fn arch_get(&self, suffix: &str) -> Option<&GgufValue> {
        self.get(&format!("{}.{suffix}", self.architecture()?))
    }
}

/// A ggml tensor type id mapped to a DType, or its name when unsupported.
fn ggml_type(id: u32) -> Result<DType, String> {
    Ok(match id {
        0 => DType::F32,
        1 => DType::F16,
        2 => DType::Q4_0,
        3 => DType::Q4_1,
        8 => DType::Q8_0,
        24 => DType::I8,
        25 => DType::I16,
        26 => DType::I32,
        27 => DType::I64,
        28 => DType::F64,
        30 => DType::BF16,
        _ => {
            let names = [
                (6, "Q5_0"),
                (7, "Q5_1"),
                (9, "Q8_1"),
                (10, "Q2_K"),
                (11, "Q3_K"),
                (12, "Q4_K"),
                (13, "Q5_K"),
                (14, "Q6_K"),
                (15, "Q8_K"),
                (34, "TQ1_0"),
                (35, "TQ2_0"),
            ];
            let name = names.iter().find(|(i, _)| *i == id).map_or("IQ*/other", |(_, n)| n);
            return Err(format!("ggml type {id} ({name})"));
        }
    })
}

/// Parse failures before the file name is attached.
enum PErr {
    Short(String, Short),
    Bad(String),
    Dtype { tensor: String, dtype: String },
}

type PResult<T> = Result<T, PErr>;

fn short(what: &str) -> impl FnOnce(Short) -> PErr + '_ {
    move |s| PErr::Short(what.to_string(), s)
}

fn read_string(r: &mut Reader<'_>, what: &str) -> PResult<String> {
    let n = r.u64().map_err(short(what))?;
    let bytes = r.take(n).map_err(short(what))?;
    String::from_utf8(bytes.to_vec()).map_err(|e| PErr::Bad(format!("{what} is not UTF-8: {e}")))
}

/// Minimum encoded size of one element of value type `ty`; used to reject absurd counts before
/// allocating.
fn min_size(ty: u32) -> u64 {
    match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => 1,
    }
}

fn read_value(r: &mut Reader<'_>, ty: u32, key: &str, depth: u32) -> PResult<GgufValue> {
    let w = |s| PErr::Short(format!("value of `{key}`"), s);
    Ok(match ty {
        0 => GgufValue::U8(r.u8().map_err(w)?),
        1 => GgufValue::I8(r.i8().map_err(w)?),
        2 => GgufValue::U16(r.u16().map_err(w)?),
        3 => GgufValue::I16(r.i16().map_err(w)?),
        4 => GgufValue::U32(r.u32().map_err(w)?),
        5 => GgufValue::I32(r.i32().map_err(w)?),
        6 => GgufValue::F32(r.f32().map_err(w)?),
        7 => GgufValue::Bool(read_bool(r, key)?),
        8 => GgufValue::String(read_string(r, &format!("value of `{key}`"))?),
        9 => GgufValue::Array(read_array(r, key, depth)?),
        10 => GgufValue::U64(r.u64().map_err(w)?),
        11 => GgufValue::I64(r.i64().map_err(w)?),
        12 => GgufValue::F64(r.f64().map_err(w)?),
        _ => return Err(PErr::Bad(format!("`{key}` has unknown value type {ty}"))),
    })
}

fn read_bool(r: &mut Reader<'_>, key: &str) -> PResult<bool> {
    match r.u8().map_err(|s| PErr::Short(format!("value of `{key}`"), s))? {
        0 => Ok(false),
        1 => Ok(true),
        b => Err(PErr::Bad(format!("`{key}`: bool byte {b}, expected 0 or 1"))),
    }
}

/// Reads `n` fixed-size elements in one bounds check.
fn fixed<const N: usize, T>(r: &mut Reader<'_>, n: u64, key: &str, f: fn([u8; N]) -> T) -> PResult<Vec<T>> {
    let bytes = n.checked_mul(N as u64).ok_or_else(|| PErr::Bad(format!("`{key}`: array count {n} overflows")))?;
    let raw = r.take(bytes).map_err(|s| PErr::Short(format!("array `{key}`"), s))?;
    Ok(raw
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(a)
        })
        .collect())
}

fn read_array(r: &mut Reader<'_>, key: &str, depth: u32) -> PResult<GgufArray> {
    if depth >= MAX_ARRAY_DEPTH {
        return Err(PErr::Bad(format!("`{key}`: arrays nested deeper than {MAX_ARRAY_DEPTH}")));
    }
    let w = |s| PErr::Short(format!("array header of `{key}`"), s);
    let ty = r.u32().map_err(w)?;
    let n = r.u64().map_err(w)?;
    if n.saturating_mul(min_size(ty)) > r.remaining() as u64 {
        return Err(PErr::Short(
            format!("array `{key}` of {n} elements"),
            Short { at: r.pos(), need: n.saturating_mul(min_size(ty)), have: r.remaining() as u64 },
        ));
    }
    let n_usize = n as usize; // bounded by the remaining bytes above
    Ok(match ty {
        0 => GgufArray::U8(fixed(r, n, key, u8::from_le_bytes)?),
        1 => GgufArray::I8(fixed(r, n, key, i8::from_le_bytes)?),
        2 => GgufArray::U16(fixed(r, n, key, u16::from_le_bytes)?),
        3 => GgufArray::I16(fixed(r, n, key, i16::from_le_bytes)?),
        4 => GgufArray::U32(fixed(r, n, key, u32::from_le_bytes)?),
        5 => GgufArray::I32(fixed(r, n, key, i32::from_le_bytes)?),
        6 => GgufArray::F32(fixed(r, n, key, f32::from_le_bytes)?),
        10 => GgufArray::U64(fixed(r, n, key, u64::from_le_bytes)?),
        11 => GgufArray::I64(fixed(r, n, key, i64::from_le_bytes)?),
        12 => GgufArray::F64(fixed(r, n, key, f64::from_le_bytes)?),
        7 => GgufArray::Bool((0..n_usize).map(|_| read_bool(r, key)).collect::<PResult<_>>()?),
        8 => {
            let what = format!("element of `{key}`");
            GgufArray::String((0..n_usize).map(|_| read_string(r, &what)).collect::<PResult<_>>()?)
        }
        9 => GgufArray::Array((0..n_usize).map(|_| read_array(r, key, depth + 1)).collect::<PResult<_>>()?),
        _ => return Err(PErr::Bad(format!("array `{key}` has unknown element type {ty}"))),
    })
}

struct RawTensor {
    info: TensorInfo,
    offset: u64,
    nbytes: u64,
}

fn parse(buf: &[u8]) -> PResult<(GgufMetadata, Vec<RawTensor>, u64)> {
    let mut r = Reader::new(buf);
    let magic = r.array::<4>().map_err(short("magic"))?;
    if &magic != b"GGUF" {
        return Err(PErr::Bad(format!("magic {magic:02x?}, expected \"GGUF\"")));
    }
    let version = r.u32().map_err(short("version"))?;
    if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
        return Err(PErr::Bad("big-endian GGUF files are not supported".into()));
    }
    if version != 2 && version != 3 {
        return Err(PErr::Bad(format!("version {version}, expected 2 or 3")));
    }
    let n_tensors = r.u64().map_err(short("tensor count"))?;
    let n_kv = r.u64().map_err(short("key/value count"))?;

    let mut kv = BTreeMap::new();
    for _ in 0..n_kv {
        let key = read_string(&mut r, "metadata key")?;
        let ty = r.u32().map_err(|s| PErr::Short(format!("type of `{key}`"), s))?;
        let value = read_value(&mut r, ty, &key, 0)?;
        if kv.insert(key.clone(), value).is_some() {
            return Err(PErr::Bad(format!("metadata key `{key}` appears twice")));
        }
    }
    let alignment = match kv.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() => a,
            _ => return Err(PErr::Bad(format!("general.alignment = {v:?}, expected a power of two"))),
        },
    };

    let mut tensors = Vec::new();
    for _ in 0..n_tensors {
        let name = read_string(&mut r, "tensor name")?;
        let sh = |s| PErr::Short(format!("info of tensor `{name}`"), s);
        let n_dims = r.u32().map_err(sh)?;
        if n_dims > MAX_DIMS {
            return Err(PErr::Bad(format!("tensor `{name}` has {n_dims} dimensions, at most {MAX_DIMS} allowed")));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = r.u64().map_err(sh)?;
            ne.push(usize::try_from(d).map_err(|_| PErr::Bad(format!("tensor `{name}`: dimension {d} too large")))?);
        }
        let type_id = r.u32().map_err(sh)?;
        let offset = r.u64().map_err(sh)?;
        let dtype = ggml_type(type_id).map_err(|dtype| PErr::Dtype { tensor: name.clone(), dtype })?;
        let numel = ne.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let ne0 = ne.first().copied().unwrap_or(1);
        // Quantized blocks never straddle rows: ne0 must be a multiple of the block size.
        let nbytes = match numel {
            Some(n) if ne0 % dtype.block_size() == 0 => dtype.byte_len(n),
            _ => None,
        }
        .ok_or_else(|| {
            PErr::Bad(format!("tensor `{name}`: ne {ne:?} is not a whole number of {dtype} blocks (or overflows)"))
        })?;
        if offset % alignment != 0 {
            return Err(PErr::Bad(format!(
                "tensor `{name}`: data offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        ne.reverse(); // fastest-first -> row-major
        tensors.push(RawTensor { info: TensorInfo { name, dtype, shape: ne }, offset, nbytes: nbytes as u64 });
    }
    let data_start = (r.pos() as u64).next_multiple_of(alignment);
    Ok((GgufMetadata { version, alignment, kv }, tensors, data_start))
}

pub(crate) fn load(mapped: MappedFile) -> Result<Loaded, FormatError> {
    let file = mapped.path.clone();
    let len = mapped.map.len() as u64;
    let (meta, raw, data_start) = parse(&mapped.map).map_err(|e| match e {
        PErr::Short(what, s) => FormatError::Truncated {
            file: file.clone(),
            what: format!("{what} at byte {}", s.at),
            expected: s.need,
            actual: s.have,
        },
        PErr::Bad(what) => FormatError::Gguf { file: file.clone(), what },
        PErr::Dtype { tensor, dtype } => FormatError::UnsupportedDType {
            file: file.clone(),
            tensor,
            dtype,
            what: "supported GGUF tensor types: F32, F16, BF16, F64, I8-I64, Q8_0, Q4_0, Q4_1".into(),
        },
    })?;
    let mut entries = Vec::with_capacity(raw.len());
    for t in raw {
        let start = data_start.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.nbytes));
        match (start, end) {
            (Some(start), Some(end)) if end <= len => entries.push(Entry {
                // end <= len, which is a usize, so both fit
                data: Data::Mapped { file: 0, start: start as usize, len: t.nbytes as usize },
                info: t.info,
            }),
            _ => {
                return Err(FormatError::Truncated {
                    file,
                    what: format!("data of tensor `{}` at offset {} of the data section", t.info.name, t.offset),
                    expected: t.nbytes,
                    actual: len.saturating_sub(data_start.saturating_add(t.offset)),
                })
            }
        }
    }
    Ok(Loaded { files: vec![mapped], entries, metadata: BTreeMap::new(), gguf: Some(meta) })
}
