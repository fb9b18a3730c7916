//! Table-lookup ("T-MAC") form of the int8-activation binary product: the tables, their layout
//! and the scalar twin of `x86::avx512_tmac`. It computes exactly the integer sum of
//! [`crate::act8`] (the same quantized activations, the same bits out), by another route:
//! one table lookup per 4 weights instead of one multiply-add per weight.
//!
//! # The identity
//! Split the (padded) columns into groups of four, `g = 0, 1, ...` (columns `4g .. 4g+4`). For
//! token `k` and every 4-bit pattern `n`, the group's table holds the signed sum
//! ```text
//! S_g[n] = Σ_{b<4} (2·bit_b(n) − 1) · q[k, 4g + b]          ∈ [−508, 508]
//! ```
//! The 4 sign bits of row `i` over group `g` are such a pattern (LSB first, bit 1 = +1, see
//! [`crate::pack`]): nibble `n_ig` of the packed row. So
//! ```text
//! Σ_j s_ij q[k, j] = Σ_g S_g[n_ig] = 2 · Σ_{b_ij = 1} q[k, j] − Σ_j q[k, j]
//! ```
//! the integer that [`crate::act8::dequantize`] forms (padding columns have `q = 0`, so padding
//! bits add nothing), and `y[k, i] = (Σ_g S_g[n_ig]) as f32 · scale_k` has the VNNI kernel's and
//! the scalar twin's bits.
//!
//! `S` needs 10 bits, a byte lookup gives 8: each table entry is stored as two bytes,
//! ```text
//! L = S mod 64 ∈ [0, 63],   H = ⌊S / 64⌋ ∈ [−8, 7],   S = L + 64 · H   (exact)
//! ```
//! and the kernel sums the `L` and `H` bytes separately with `vpdpbusd` (u8 ones × i8 lookups, four
//! groups per i32 lane); the total is `ΣL + 64 · ΣH`, in i32 (|·| ≤ 508 · cols / 4, no overflow
//! below 2²³ columns).
//!
//! # Layout
//! A packed row is read as little-endian dwords of 32 columns (8 groups; `row_bytes / 4` dwords,
//! padding included). Nibble `m` of dword `d` (bits `4m .. 4m+4`) is group `8d + m`; `m = 2j + p`
//! with `j ∈ 0..4` the byte of the dword and `p ∈ {0, 1}` its low or high nibble. Per token and
//! dword there are four 64-byte tables, `[L(p=0), H(p=0), L(p=1), H(p=1)]`; in each, byte
//! `16·j + n` is the entry `n` of group `8d + 2j + p`. The layout is `vpermb`'s: the index byte
//! `16·j + n` is nibble `n` of dword byte `j` moved to the low 4 bits and `j` in bits 4-5.
//! Tables take 8 bytes per column and token (40 KiB at 5120 columns), built once per call and
//! shared by all rows and threads.

use std::ops::Range;

use crate::act8::{check_rows, Act8};
use crate::pack::row_bytes;

/// Bytes of the four tables of one dword (32 columns) of one token.
pub const DWORD_TABLE_BYTES: usize = 256;

/// One 64-byte table (a cache line; the kernel's loads never split lines).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq)]
struct Line([u8; 64]);

/// Lookup tables of `t` tokens of int8 activations (see the module doc).
#[derive(Clone, Debug, PartialEq)]
pub struct Tables {
    /// Dwords per packed row: `row_bytes(cols) / 4`.
    pub dwords: usize,
    /// `[t, dwords, 4]` tables of 64 bytes (`L` in `0..64` as u8, `H` in `−8..8` as i8 bits).
    lines: Vec<Line>,
}

impl Tables {
    /// Zeroed tables of `t` tokens over `cols` columns.
    pub fn zeroed(cols: usize, t: usize) -> Tables {
        let dwords = row_bytes(cols) / 4;
        Tables { dwords, lines: vec![Line([0; 64]); t * dwords * 4] }
    }

    /// All tables as bytes, `[t, dwords, 4, 64]`.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `Line` is 64 bytes of u8 with no padding (size = align = 64), so the lines are
        // `64 · len` initialized bytes, borrowed for the lifetime of `&self`.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.lines.len() * 64) }
    }

    /// All tables as mutable bytes.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, borrowed mutably for the lifetime of `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.lines.len() * 64) }
    }

    /// Byte offset of the tables of token `k`, dword `d`.
    #[inline(always)]
    pub fn offset(&self, k: usize, d: usize) -> usize {
        (k * self.dwords + d) * DWORD_TABLE_BYTES
    }
}

/// Bytes of the tables of `t` tokens over `cols` columns.
pub fn tables_len(cols: usize, t: usize) -> usize {
    t * row_bytes(cols) / 4 * DWORD_TABLE_BYTES
}

/// `S_g[n]` of the module doc for the four activations `q` of one group.
#[inline(always)]
pub fn signed_sum(q: &[i8], n: usize) -> i32 {
    q.iter().enumerate().map(|(b, &v)| if (n >> b) & 1 == 1 { v as i32 } else { -(v as i32) }).sum()
}

/// Splits `S` into its table bytes `(L, H)`, `S = L + 64 · H`.
#[inline(always)]
pub fn split(s: i32) -> (u8, u8) {
    ((s & 63) as u8, (s >> 6) as i8 as u8)
}

/// Builds the tables of `a` with the portable code (the spec; [`build_tables`] dispatches).
pub fn build_tables_scalar(a: &Act8) -> Tables {
    let mut tables = Tables::zeroed(a.cols, a.tokens());
    let dwords = tables.dwords;
    let bytes = tables.bytes_mut();
    for k in 0..a.tokens() {
        let q = &a.q[k * a.stride..(k + 1) * a.stride];
        for d in 0..dwords {
            let tab = &mut bytes[(k * dwords + d) * DWORD_TABLE_BYTES..][..DWORD_TABLE_BYTES];
            for m in 0..8 {
                let (j, p) = (m / 2, m % 2);
                let g = 8 * d + m;
                for n in 0..16 {
                    let (l, h) = split(signed_sum(&q[4 * g..4 * g + 4], n));
                    tab[128 * p + 16 * j + n] = l;
                    tab[128 * p + 64 + 16 * j + n] = h;
                }
            }
        }
    }
    tables
}

/// Builds the tables of `a`: the AVX-512 VNNI builder where the CPU has it, else the scalar one
/// (both give the same bytes).
pub fn build_tables(a: &Act8) -> Tables {
    #[cfg(target_arch = "x86_64")]
    if crate::x86::avx512_tmac::is_supported() {
        // SAFETY: `is_supported` checked the features the builder is compiled for.
        return unsafe { crate::x86::avx512_tmac::build_tables(a) };
    }
    build_tables_scalar(a)
}

/// The argument checks of every table kernel (the SIMD one indexes with raw pointers).
pub(crate) fn check_tables(bits: &[u8], cols: usize, a: &Act8, tab: &Tables, range: &Range<usize>, y: &[f32]) {
    check_rows(bits, cols, a, range, y);
    assert!(
        tab.dwords == row_bytes(cols) / 4 && tab.bytes().len() == tables_len(cols, a.tokens()),
        "tmac kernel: tables built for other activations"
    );
}

/// The scalar twin: the binary product with int8 activations over output rows `range` of a
/// packed `[rows, cols]` sign matrix by table lookup; `y: [t, range.len()]`. Equal, bit for bit,
/// to [`crate::act8::binary_rows_scalar`].
pub fn binary_rows_scalar(bits: &[u8], cols: usize, a: &Act8, tab: &Tables, range: Range<usize>, y: &mut [f32]) {
    check_tables(bits, cols, a, tab, &range, y);
    let rb = row_bytes(cols);
    let (t, nr) = (a.tokens(), range.len());
    for (ii, i) in range.enumerate() {
        let row = &bits[i * rb..(i + 1) * rb];
        for k in 0..t {
            let (mut lo, mut hi) = (0i32, 0i32);
            for (d, dw) in row.chunks_exact(4).enumerate() {
                let tk = &tab.bytes()[tab.offset(k, d)..][..DWORD_TABLE_BYTES];
                for (j, &byte) in dw.iter().enumerate() {
                    for p in 0..2 {
                        let n = ((byte >> (4 * p)) & 15) as usize;
                        lo += tk[128 * p + 16 * j + n] as i32;
                        hi += tk[128 * p + 64 + 16 * j + n] as i8 as i32;
                    }
                }
            }
            // Σ_g S_g[n_ig] = ΣL + 64 · ΣH, then one rounding as in `act8::dequantize`.
            y[k * nr + ii] = (lo + 64 * hi) as f32 * a.scales[k];
        }
    }
}

/// Rows per tile of the interleaved layout ([`interleave16`]).
pub const TILE_ROWS: usize = 16;

/// The sign bits re-laid for the table kernel without its transpose: tiles of 16 rows, and
/// within a tile, dword `d` of its 16 rows side by side (`[rows / 16][dwords][16 rows][4 bytes]`,
/// rows past `rows` zero). The engine does not use it (every other kernel, the file format and
/// the f32 path read the row-major layout of [`crate::pack`]); it measures what the transpose
/// costs the table kernel (KERNELS.md).
pub fn interleave16(bits: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    let rb = row_bytes(cols);
    assert_eq!(bits.len(), rows * rb, "interleave16: {} bytes, expected [{rows} x {rb}]", bits.len());
    let dwords = rb / 4;
    let mut out = vec![0u8; rows.div_ceil(TILE_ROWS) * TILE_ROWS * rb];
    for i in 0..rows {
        let (tile, r) = (i / TILE_ROWS, i % TILE_ROWS);
        for d in 0..dwords {
            let o = ((tile * dwords + d) * TILE_ROWS + r) * 4;
            out[o..o + 4].copy_from_slice(&bits[i * rb + 4 * d..][..4]);
        }
    }
    out
}

/// The scalar twin over the interleaved layout: [`binary_rows_scalar`]'s arithmetic, reading
/// row `i`'s dword `d` from [`interleave16`]'s position. `range.start` must be a multiple of 16.
pub fn binary_rows_interleaved_scalar(
    ibits: &[u8],
    cols: usize,
    a: &Act8,
    tab: &Tables,
    range: Range<usize>,
    y: &mut [f32],
) {
    let dwords = row_bytes(cols) / 4;
    assert!(range.start.is_multiple_of(TILE_ROWS), "interleaved kernel: row range {range:?} not tile-aligned");
    assert!(ibits.len() >= range.end.div_ceil(TILE_ROWS) * TILE_ROWS * dwords * 4, "interleaved bits too short");
    assert!(tab.dwords == dwords && tab.bytes().len() == tables_len(cols, a.tokens()), "tables for other activations");
    let (t, nr) = (a.tokens(), range.len());
    assert_eq!(y.len(), t * nr, "interleaved kernel: y has {} elements, expected [{t} x {nr}]", y.len());
    for (ii, i) in range.enumerate() {
        let (tile, r) = (i / TILE_ROWS, i % TILE_ROWS);
        for k in 0..t {
            let (mut lo, mut hi) = (0i32, 0i32);
            for d in 0..dwords {
                let tk = &tab.bytes()[tab.offset(k, d)..][..DWORD_TABLE_BYTES];
                let dw = &ibits[((tile * dwords + d) * TILE_ROWS + r) * 4..][..4];
                for (j, &byte) in dw.iter().enumerate() {
                    for p in 0..2 {
                        let n = ((byte >> (4 * p)) & 15) as usize;
                        lo += tk[128 * p + 16 * j + n] as i32;
                        hi += tk[128 * p + 64 + 16 * j + n] as i8 as i32;
                    }
                }
            }
            y[k * nr + ii] = (lo + 64 * hi) as f32 * a.scales[k];
        }
    }
}

/// The table kernel over the interleaved layout ([`interleave16`]), `x: [t, cols]` quantized
/// here, rows split over the rayon pool in tile-aligned chunks: the AVX-512 kernel where the CPU
/// has it, else the twin. Same bits as [`crate::binary_gemm_i8`]. For tests and benchmarks.
pub fn binary_gemm_i8_interleaved(ibits: &[u8], rows: usize, cols: usize, x: &[f32], t: usize, y: &mut [f32]) {
    assert!(ibits.len() == rows.div_ceil(TILE_ROWS) * TILE_ROWS * row_bytes(cols), "interleaved bits: wrong length");
    assert!(x.len() == t * cols && y.len() == t * rows, "interleaved kernel: x or y has the wrong shape");
    let a = crate::act8::quantize(x, cols, t);
    let tab = build_tables(&a);
    // Row chunks are multiples of 64 rows, so every chunk starts on a tile.
    crate::parallel::for_row_chunks(rows, cols, t, y, |range, yc| {
        #[cfg(target_arch = "x86_64")]
        if crate::x86::avx512_tmac::is_supported() {
            // SAFETY: `is_supported` checked every feature the kernel is compiled for.
            return unsafe { crate::x86::avx512_tmac::binary_rows_interleaved(ibits, cols, &a, &tab, range, yc) };
        }
        binary_rows_interleaved_scalar(ibits, cols, &a, &tab, range, yc)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::act8::{self, quantize};
    use crate::pack::pack_signs;

    struct Rng(u64);
    impl Rng {
        fn f32(&mut self) -> f32 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }
    }

    #[test]
    fn split_is_exact_over_the_whole_range() {
        for s in -508..=508 {
            let (l, h) = split(s);
            assert!(l < 64 && (-8..8).contains(&(h as i8)), "{s}");
            assert_eq!(l as i32 + 64 * h as i8 as i32, s);
        }
    }

    #[test]
    fn tables_hold_every_signed_sum() {
        // Two tokens, 40 columns: one full dword, one of 8 real columns and 24 of padding (q = 0).
        let mut r = Rng(3);
        let x: Vec<f32> = (0..80).map(|_| r.f32()).collect();
        let a = quantize(&x, 40, 2);
        let tab = build_tables_scalar(&a);
        assert_eq!(tab.dwords, 2);
        for k in 0..2 {
            for g in 0..8 * tab.dwords {
                let (d, m) = (g / 8, g % 8);
                for n in 0..16 {
                    let q = &a.q[k * a.stride + 4 * g..][..4];
                    let want: i32 = (0..4).map(|b| if (n >> b) & 1 == 1 { q[b] as i32 } else { -(q[b] as i32) }).sum();
                    let o = tab.offset(k, d) + 128 * (m % 2) + 16 * (m / 2) + n;
                    let got = tab.bytes()[o] as i32 + 64 * tab.bytes()[o + 64] as i8 as i32;
                    assert_eq!(got, want, "k={k} g={g} n={n}");
                }
            }
        }
    }

    #[test]
    fn twin_equals_the_act8_twin() {
        let mut r = Rng(11);
        for (rows, cols, t) in [(1, 1, 1), (3, 5, 2), (5, 33, 1), (7, 64, 3), (4, 65, 2), (9, 300, 4)] {
            let w: Vec<f32> = (0..rows * cols).map(|_| r.f32()).collect();
            let x: Vec<f32> = (0..t * cols).map(|_| r.f32() * 3.0).collect();
            let bits = pack_signs(&w, rows, cols);
            let a = quantize(&x, cols, t);
            let tab = build_tables_scalar(&a);
            let (mut want, mut got) = (vec![0.0; t * rows], vec![f32::NAN; t * rows]);
            act8::binary_rows_scalar(&bits, cols, &a, 0..rows, &mut want);
            binary_rows_scalar(&bits, cols, &a, &tab, 0..rows, &mut got);
            assert_eq!(got, want, "({rows},{cols},{t})");
        }
    }
}
