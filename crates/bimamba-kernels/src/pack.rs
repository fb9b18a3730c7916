//! The packing spec: how a latent f32 weight matrix becomes 1-bit signs.
//!
//! This module is the reference for every kernel in the crate and for the on-disk format that
//! stores binarized `in_proj`/`out_proj` weights (ARCHITECTURE.md §2, §8.2).
//!
//! # Sign rule
//! `s = +1` if `w >= 0.0`, including both `+0.0` and `-0.0`; `s = -1` if `w < 0.0`.
//! `torch.sign(0) = 0`, but a packed format has no zero, so an exact zero maps to `+1`.
//! NaN also maps to `+1` (a NaN latent weight is a training bug; we pick the deterministic
//! answer rather than panic). In code: `bit = w >= 0.0 || w.is_nan()`.
//!
//! # Layout
//! A sign matrix `S[rows, cols]` is stored row-major. Each row is padded to a whole number of
//! 64-bit words: `row_bytes(cols) = ceil(cols / 64) * 8`. Bit `j` of row `i` lives at byte
//! `i * row_bytes + j / 8`, bit position `j % 8` (least significant bit first). Equivalently,
//! reading a row as little-endian `u64` words, column `j` is bit `j % 64` of word `j / 64`.
//! Bit value 1 means `+1`, bit value 0 means `-1`. Padding bits (columns `cols..row_bytes*8`)
//! are 0. Kernels never read activations beyond `cols`, so padding never reaches a result.

/// Bits per packing word: every row is padded to a multiple of this.
pub const WORD_BITS: usize = 64;

/// Bytes of one packed row of `cols` signs: `ceil(cols / 64) * 8`.
pub fn row_bytes(cols: usize) -> usize {
    cols.div_ceil(WORD_BITS) * (WORD_BITS / 8)
}

/// Total bytes of a packed `[rows, cols]` sign matrix.
pub fn packed_len(rows: usize, cols: usize) -> usize {
    rows * row_bytes(cols)
}

/// The sign bit of one latent weight: `true` (+1) unless `w < 0.0`; see the module doc for
/// why zeros and NaN map to `+1`.
#[inline]
pub fn sign_bit(w: f32) -> bool {
    w >= 0.0 || w.is_nan()
}

/// Packs the signs of a row-major latent matrix `w: [rows, cols]` into the layout above.
///
/// # Panics
/// If `w.len() != rows * cols` (a caller bug: shapes are validated at load time).
pub fn pack_signs(w: &[f32], rows: usize, cols: usize) -> Vec<u8> {
    assert_eq!(w.len(), rows * cols, "pack_signs: w has {} elements, expected {rows}x{cols}", w.len());
    let rb = row_bytes(cols);
    let mut out = vec![0u8; rows * rb];
    if cols == 0 {
        return out;
    }
    for (wrow, orow) in w.chunks_exact(cols).zip(out.chunks_exact_mut(rb)) {
        for (j, &v) in wrow.iter().enumerate() {
            if sign_bit(v) {
                orow[j / 8] |= 1 << (j % 8);
            }
        }
    }
    out
}

/// Expands packed signs back to a row-major `[rows, cols]` matrix of `+1.0` / `-1.0`.
///
/// # Panics
/// If `bits.len() != rows * row_bytes(cols)`.
pub fn unpack_signs(bits: &[u8], rows: usize, cols: usize) -> Vec<f32> {
    assert_eq!(
        bits.len(),
        packed_len(rows, cols),
        "unpack_signs: {} bytes, expected {rows} rows x {} bytes",
        bits.len(),
        row_bytes(cols)
    );
    let rb = row_bytes(cols);
    let mut out = Vec::with_capacity(rows * cols);
    for i in 0..rows {
        let row = &bits[i * rb..(i + 1) * rb];
        out.extend((0..cols).map(|j| if (row[j / 8] >> (j % 8)) & 1 == 1 { 1.0 } else { -1.0 }));
    }
    out
}

/// Whether every padding bit of a packed matrix is 0, as the layout requires. Loaders call this
/// on untrusted files; kernels stay correct either way (they mask the tail), but a file with set
/// padding bits was not written by this spec.
pub fn padding_is_zero(bits: &[u8], rows: usize, cols: usize) -> bool {
    let rb = row_bytes(cols);
    if bits.len() != rows * rb {
        return false;
    }
    (0..rows).all(|i| {
        let row = &bits[i * rb..(i + 1) * rb];
        (cols..rb * 8).all(|j| (row[j / 8] >> (j % 8)) & 1 == 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_bytes_pads_to_words() {
        assert_eq!(row_bytes(0), 0);
        assert_eq!(row_bytes(1), 8);
        assert_eq!(row_bytes(64), 8);
        assert_eq!(row_bytes(65), 16);
        assert_eq!(row_bytes(2560), 320);
    }

    #[test]
    fn zero_and_nan_map_to_plus_one() {
        let w = [0.0f32, -0.0, f32::NAN, -1e-30, 1e-30, f32::NEG_INFINITY, f32::INFINITY];
        let bits = pack_signs(&w, 1, w.len());
        assert_eq!(unpack_signs(&bits, 1, w.len()), vec![1.0, 1.0, 1.0, -1.0, 1.0, -1.0, 1.0]);
    }

    #[test]
    fn bit_order_is_lsb_first_little_endian() {
        // Row 0: only column 0 positive; row 1: only column 9 positive; row 2: only column 64.
        let cols = 70;
        let mut w = vec![-1.0f32; 3 * cols];
        w[0] = 1.0;
        w[cols + 9] = 1.0;
        w[2 * cols + 64] = 1.0;
        let bits = pack_signs(&w, 3, cols);
        let rb = row_bytes(cols);
        assert_eq!(rb, 16);
        assert_eq!(bits[0], 0b0000_0001);
        assert_eq!(bits[rb + 1], 0b0000_0010);
        let word1 = u64::from_le_bytes(bits[2 * rb + 8..2 * rb + 16].try_into().expect("8 bytes"));
        assert_eq!(word1, 1);
        assert!(padding_is_zero(&bits, 3, cols));
    }

    #[test]
    fn round_trip_random_shapes() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for &(rows, cols) in &[(1, 1), (3, 63), (5, 64), (7, 65), (2, 200), (4, 1000)] {
            let w: Vec<f32> = (0..rows * cols)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
                })
                .collect();
            let bits = pack_signs(&w, rows, cols);
            assert_eq!(bits.len(), packed_len(rows, cols));
            assert!(padding_is_zero(&bits, rows, cols));
            let s = unpack_signs(&bits, rows, cols);
            for (a, b) in w.iter().zip(&s) {
                assert_eq!(*b, if *a < 0.0 { -1.0 } else { 1.0 });
            }
            // Packing the unpacked signs is the identity on bits.
            assert_eq!(pack_signs(&s, rows, cols), bits);
        }
    }

    #[test]
    fn set_padding_bit_is_detected() {
        let mut bits = pack_signs(&[1.0; 10], 1, 10);
        assert!(padding_is_zero(&bits, 1, 10));
        bits[7] |= 0x80;
        assert!(!padding_is_zero(&bits, 1, 10));
    }
}
