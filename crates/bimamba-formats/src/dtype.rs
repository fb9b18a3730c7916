//! Element types and their conversion to f32, including the GGUF block quantizations.
//!
//! All raw data is little-endian. Quantized types are stored in blocks of [`QK`] = 32 consecutive
//! elements of a row (GGUF's ne0, the row-major last dimension), so dequantizing the blocks in file
//! order yields the tensor in row-major order:
//!
//! | type | bytes/block | layout | value |
//! |---|---|---|---|
//! | Q8_0 | 34 | f16 d, 32 × i8 q | w = d·q |
//! | Q4_0 | 18 | f16 d, 16 bytes of nibbles | w = d·(q − 8) |
//! | Q4_1 | 20 | f16 d, f16 m, 16 bytes of nibbles | w = d·q + m |
//!
//! Nibble order (Q4_0, Q4_1): byte j holds element j in its low nibble and element j + 16 in its
//! high nibble, so the low nibbles are elements 0..15 and the high nibbles elements 16..31.

use half::{bf16, f16};

/// Elements per quantization block of Q8_0, Q4_0 and Q4_1.
pub const QK: usize = 32;
const Q8_0_BYTES: usize = 2 + QK;
const Q4_0_BYTES: usize = 2 + QK / 2;
const Q4_1_BYTES: usize = 2 + 2 + QK / 2;

/// The element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U64,
    U32,
    U16,
    U8,
    Bool,
    /// GGUF block type: f16 scale + 32 × i8 (34 bytes per 32 elements).
    Q8_0,
    /// GGUF block type: f16 scale + 32 × 4-bit, offset 8 (18 bytes per 32 elements).
    Q4_0,
    /// GGUF block type: f16 scale, f16 min + 32 × 4-bit (20 bytes per 32 elements).
    Q4_1,
}

impl DType {
    /// The name used by safetensors and GGUF ("F32", "BF16", "Q4_1", ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F64 => "F64",
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I64 => "I64",
            DType::I32 => "I32",
            DType::I16 => "I16",
            DType::I8 => "I8",
            DType::U64 => "U64",
            DType::U32 => "U32",
            DType::U16 => "U16",
            DType::U8 => "U8",
            DType::Bool => "BOOL",
            DType::Q8_0 => "Q8_0",
            DType::Q4_0 => "Q4_0",
            DType::Q4_1 => "Q4_1",
        }
    }

    /// Elements per storage block: 1 for plain types, 32 for the GGUF block quantizations.
    pub fn block_size(self) -> usize {
        if self.is_quantized() {
            QK
        } else {
            1
        }
    }

    /// Bytes per storage block (for plain types: the element size).
    pub fn block_bytes(self) -> usize {
        match self {
            DType::F64 | DType::I64 | DType::U64 => 8,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::Q8_0 => Q8_0_BYTES,
            DType::Q4_0 => Q4_0_BYTES,
            DType::Q4_1 => Q4_1_BYTES,
        }
    }

    /// Bytes that `numel` elements occupy; `None` on overflow or when `numel` is not a whole
    /// number of blocks.
    pub fn byte_len(self, numel: usize) -> Option<usize> {
        if !numel.is_multiple_of(self.block_size()) {
            return None;
        }
        (numel / self.block_size()).checked_mul(self.block_bytes())
    }

    pub fn is_quantized(self) -> bool {
        matches!(self, DType::Q8_0 | DType::Q4_0 | DType::Q4_1)
    }

    /// True for the types [`to_f32`] converts: floats and the GGUF block quantizations.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F64 | DType::F32 | DType::F16 | DType::BF16) || self.is_quantized()
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a conversion failed (the caller adds file and tensor names).
#[derive(Debug)]
pub(crate) enum ConvertError {
    NotFloat,
    /// The byte length is not a whole number of elements/blocks.
    Length {
        expected: usize,
        actual: usize,
    },
}

/// Converts `numel` elements of `dtype` from `bytes` to f32 (F64 is rounded, quantized blocks are
/// dequantized). `bytes` must hold exactly `dtype.byte_len(numel)` bytes.
pub(crate) fn to_f32(dtype: DType, bytes: &[u8], numel: usize) -> Result<Vec<f32>, ConvertError> {
    if !dtype.is_float() {
        return Err(ConvertError::NotFloat);
    }
    let expected = dtype.byte_len(numel).ok_or(ConvertError::Length { expected: usize::MAX, actual: bytes.len() })?;
    if bytes.len() != expected {
        return Err(ConvertError::Length { expected, actual: bytes.len() });
    }
    let mut out = Vec::with_capacity(numel);
    match dtype {
        DType::F32 => out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        DType::F64 => out.extend(bytes.chunks_exact(8).map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            f64::from_le_bytes(a) as f32
        })),
        DType::F16 => out.extend(bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())),
        DType::BF16 => out.extend(bytes.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        DType::Q8_0 => bytes.chunks_exact(Q8_0_BYTES).for_each(|b| dequant_q8_0(b, &mut out)),
        DType::Q4_0 => bytes.chunks_exact(Q4_0_BYTES).for_each(|b| dequant_q4_0(b, &mut out)),
        DType::Q4_1 => bytes.chunks_exact(Q4_1_BYTES).for_each(|b| dequant_q4_1(b, &mut out)),
        _ => return Err(ConvertError::NotFloat),
    }
    debug_assert_eq!(out.len(), numel);
    Ok(out)
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// One Q8_0 block (34 bytes): w[i] = d · q[i].
fn dequant_q8_0(block: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(block, 0);
    out.extend(block[2..].iter().map(|&q| d * f32::from(q as i8)));
}

/// One Q4_0 block (18 bytes): w = d · (q − 8), low nibbles first (see the module doc).
fn dequant_q4_0(block: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(block, 0);
    let qs = &block[2..];
    out.extend(qs.iter().map(|&q| d * (f32::from(q & 0x0F) - 8.0)));
    out.extend(qs.iter().map(|&q| d * (f32::from(q >> 4) - 8.0)));
}

/// One Q4_1 block (20 bytes): w = d · q + m, low nibbles first (see the module doc).
fn dequant_q4_1(block: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(block, 0);
    let m = f16_at(block, 2);
    let qs = &block[4..];
    out.extend(qs.iter().map(|&q| d * f32::from(q & 0x0F) + m));
    out.extend(qs.iter().map(|&q| d * f32::from(q >> 4) + m));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_lengths() {
        assert_eq!(DType::F32.byte_len(3), Some(12));
        assert_eq!(DType::Q4_1.byte_len(64), Some(40));
        assert_eq!(DType::Q8_0.byte_len(32), Some(34));
        assert_eq!(DType::Q4_0.byte_len(33), None);
        assert_eq!(DType::F64.byte_len(usize::MAX), None);
    }

    #[test]
    fn q4_0_nibble_order() {
        // d = 0.5; byte j = (hi = j % 16) << 4 | (lo = 15 - j)
        let mut block = f16::from_f32(0.5).to_le_bytes().to_vec();
        block.extend((0..16u8).map(|j| (j << 4) | (15 - j)));
        let w = to_f32(DType::Q4_0, &block, 32).expect("valid block");
        for j in 0..16 {
            assert_eq!(w[j], 0.5 * (15.0 - j as f32 - 8.0), "low nibble {j}");
            assert_eq!(w[16 + j], 0.5 * (j as f32 - 8.0), "high nibble {j}");
        }
    }

    #[test]
    fn floats_and_errors() {
        let bytes: Vec<u8> = [1.5f64, -2.25].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(to_f32(DType::F64, &bytes, 2).expect("f64"), vec![1.5, -2.25]);
        let bytes: Vec<u8> =
            [bf16::from_f32(3.0), bf16::from_f32(-0.125)].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(to_f32(DType::BF16, &bytes, 2).expect("bf16"), vec![3.0, -0.125]);
        assert!(matches!(to_f32(DType::I32, &[0; 4], 1), Err(ConvertError::NotFloat)));
        assert!(matches!(to_f32(DType::F32, &[0; 7], 2), Err(ConvertError::Length { expected: 8, actual: 7 })));
    }
}
