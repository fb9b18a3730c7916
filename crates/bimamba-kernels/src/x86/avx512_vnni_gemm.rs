//! AVX512-VNNI prefill GEMM: the binary product with int8 activations ([`crate::act8`]) for many
//! tokens at once.
//!
//! # The kernel
//! The decode kernel (`avx512_vnni`) expands the sign bits again for every tile of tokens and
//! ends every (row, token) with a horizontal sum. Here a panel of [`PANEL`] rows is unpacked
//! once per call into 0/1 bytes laid out `[group of 4 columns][32 rows][4 bytes]`, the operand
//! layout of `vpdpbusd` with one i32 lane per row, and every token of the call reuses it:
//! ```text
//! acc[h][k] lane i += Σ_{j<4} panel[g][16h + i][j] · q[k][4g + j]     (vpdpbusd, u8 × s8)
//! ```
//! Per group of 4 columns and block of up to [`TOKEN_BLOCK`] tokens: two 64-byte loads of the
//! panel, one 4-byte broadcast of each token's activations and 2 · 12 `vpdpbusd` into 24
//! accumulators (2 row vectors × 12 tokens), i.e. one `vpdpbusd` per 64 weight·token products
//! and almost nothing else. Lanes are rows, so a block ends with 16 outputs per vector:
//! `y = scale_k · (2 · pos − Σ_j q[k, j])` in f32 ([`crate::act8::dequantize`], the same two
//! exact integer steps and one rounding, so the bits equal the scalar twin's).
//!
//! # Unpacking
//! The low (high) 32 bits of a row's 64-bit sign word hold 8 nibbles, columns 4g..4g+3 in bits
//! 4g..4g+3 (LSB first). With the 16 rows' dwords in one vector, `vpermd` with the nibble as
//! index into [`NIBBLE_BYTES`] (16 dwords: entry n holds the bytes `n >> j & 1`) turns nibble g of
//! every row into its 4 bytes at once; `vpermd` reads only the index's low 4 bits, so a shift
//! right by 4g is the only other operation. Rows past the range unpack as zeros and are never
//! stored.

// Register tiles index accumulators as acc[half][token]; explicit ranges read clearer.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;

use crate::act8::{check_rows, Act8};
use crate::pack::row_bytes;

/// Rows per unpacked panel: two vectors of 16 i32 lanes.
pub const PANEL: usize = 32;

/// Tokens per register tile (2 × 12 accumulators, 2 panel vectors, 1 broadcast: 27 of 32 zmm).
pub const TOKEN_BLOCK: usize = 12;

/// Panels ahead of the one being unpacked whose sign bits are prefetched into L2.
const PREFETCH_PANELS: usize = 2;

/// Bytes of the unpacked panel per 4-column group.
const GROUP_BYTES: usize = 4 * PANEL;

/// Dword `n`: byte `j` is bit `j` of `n` (a nibble of sign bits as four 0/1 bytes).
const NIBBLE_BYTES: [u32; 16] = {
    let mut t = [0u32; 16];
    let mut n = 0;
    while n < 16 {
        let mut j = 0;
        while j < 4 {
            t[n] |= (((n >> j) & 1) as u32) << (8 * j);
            j += 1;
        }
        n += 1;
    }
    t
};

/// `vpermt2d` indices picking the low (even) and high (odd) dwords of 16 qwords in two vectors.
const EVEN_DWORDS: [u32; 16] = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30];
const ODD_DWORDS: [u32; 16] = [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31];

thread_local! {
    /// The unpacked panel of the calling thread, reused across calls (160 KiB at 5120 columns).
    static PANEL_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Unpacks rows `row0 .. row0 + n` (n ≤ PANEL) of the packed matrix into `panel`
/// (`[words · 16 groups][32 rows][4 bytes]`); rows `n..PANEL` become zeros.
#[inline(always)]
unsafe fn unpack_panel(bits: &[u8], rb: usize, row0: usize, n: usize, panel: &mut [u8]) {
    unsafe {
        let words = rb / 8;
        debug_assert!(panel.len() >= words * 16 * GROUP_BYTES && bits.len() >= (row0 + n) * rb);
        let table = _mm512_loadu_si512(NIBBLE_BYTES.as_ptr().cast());
        let even = _mm512_loadu_si512(EVEN_DWORDS.as_ptr().cast());
        let odd = _mm512_loadu_si512(ODD_DWORDS.as_ptr().cast());
        let src = bits.as_ptr().add(row0 * rb);
        let out = panel.as_mut_ptr();
        let mut rw = [0u64; PANEL];
        // The panel walks 32 rows word by word, which the hardware prefetchers follow poorly from
        // DRAM: prefetch the panel PREFETCH_PANELS ahead into L2, 4 lines per word step (its rows
        // are contiguous, PANEL · words · 8 bytes, so the steps cover it exactly). A prefetch past
        // the end of the matrix is harmless (never faults).
        let ahead = src.wrapping_add(PREFETCH_PANELS * PANEL * rb);
        for w in 0..words {
            for line in 0..PANEL * 8 / 64 {
                _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(w * PANEL * 8 + 64 * line).cast());
            }
            for r in 0..n {
                rw[r] = src.add(r * rb + 8 * w).cast::<u64>().read_unaligned();
            }
            for h in 0..2 {
                let a = _mm512_loadu_si512(rw.as_ptr().add(16 * h).cast());
                let b = _mm512_loadu_si512(rw.as_ptr().add(16 * h + 8).cast());
                for (half_word, idx) in [even, odd].into_iter().enumerate() {
                    let d = _mm512_permutex2var_epi32(a, idx, b);
                    for g in 0..8 {
                        let nib = _mm512_srlv_epi32(d, _mm512_set1_epi32(4 * g as i32));
                        let group = w * 16 + half_word * 8 + g;
                        let dst = out.add(group * GROUP_BYTES + 64 * h);
                        _mm512_storeu_si512(dst.cast(), _mm512_permutexvar_epi32(nib, table));
                    }
                }
            }
        }
    }
}

/// Tokens `k0 .. k0 + K` against the unpacked panel of rows `row0 .. row0 + n`; writes
/// `y[k · nr + row0 − r0 + i]` for `i < n`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const K: usize>(
    panel: &[u8],
    groups: usize,
    a: &Act8,
    k0: usize,
    row_off: usize,
    n: usize,
    nr: usize,
    y: &mut [f32],
) {
    unsafe {
        let mut acc = [[_mm512_setzero_si512(); K]; 2];
        let p = panel.as_ptr();
        let q: [*const i8; K] = std::array::from_fn(|kk| a.q.as_ptr().add((k0 + kk) * a.stride));
        for g in 0..groups {
            let w0 = _mm512_loadu_si512(p.add(g * GROUP_BYTES).cast());
            let w1 = _mm512_loadu_si512(p.add(g * GROUP_BYTES + 64).cast());
            for kk in 0..K {
                let b = _mm512_set1_epi32(q[kk].add(4 * g).cast::<i32>().read_unaligned());
                acc[0][kk] = _mm512_dpbusd_epi32(acc[0][kk], w0, b);
                acc[1][kk] = _mm512_dpbusd_epi32(acc[1][kk], w1, b);
            }
        }
        for kk in 0..K {
            let k = k0 + kk;
            let sum = _mm512_set1_epi32(a.sums[k]);
            let scale = _mm512_set1_ps(a.scales[k]);
            for h in 0..2 {
                let lo = 16 * h;
                if lo >= n {
                    break;
                }
                let m = (n - lo).min(16);
                let mask: __mmask16 = if m == 16 { 0xffff } else { (1u16 << m) - 1 };
                // (2 · pos − Σq) · scale: exact in i32, exact to f32 (< 2²⁴), one rounding.
                let v = _mm512_sub_epi32(_mm512_slli_epi32::<1>(acc[h][kk]), sum);
                let out = _mm512_mul_ps(_mm512_cvtepi32_ps(v), scale);
                let at = k * nr + row_off + lo;
                debug_assert!(at + m <= y.len());
                _mm512_mask_storeu_ps(y.as_mut_ptr().add(at), mask, out);
            }
        }
    }
}

macro_rules! token_blocks {
    ($panel:expr, $groups:expr, $a:expr, $row_off:expr, $n:expr, $nr:expr, $y:expr; $($k:literal)*) => {{
        let t = $a.tokens();
        let mut k0 = 0;
        while k0 < t {
            let kb = (t - k0).min(TOKEN_BLOCK);
            match kb {
                $($k => tile::<$k>($panel, $groups, $a, k0, $row_off, $n, $nr, $y),)*
                _ => unreachable!("token blocks hold 1..=TOKEN_BLOCK tokens"),
            }
            k0 += kb;
        }
    }};
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn rows(bits: &[u8], rb: usize, a: &Act8, range: Range<usize>, panel: &mut [u8], y: &mut [f32]) {
    unsafe {
        let groups = rb / 8 * 16;
        let nr = range.len();
        // The panels prefetch PREFETCH_PANELS ahead of themselves: request the range's first ones
        // (a batched decode step splits a product into a few row ranges) before starting.
        let head = (nr.min(PREFETCH_PANELS * PANEL) * rb).div_ceil(64);
        let first = bits.as_ptr().add(range.start * rb);
        for line in 0..head {
            _mm_prefetch::<_MM_HINT_T1>(first.wrapping_add(64 * line).cast());
        }
        let mut row0 = range.start;
        while row0 < range.end {
            let n = (range.end - row0).min(PANEL);
            unpack_panel(bits, rb, row0, n, panel);
            let row_off = row0 - range.start;
            token_blocks!(panel, groups, a, row_off, n, nr, y; 1 2 3 4 5 6 7 8 9 10 11 12);
            row0 += n;
        }
    }
}

/// Binary product with int8 activations over output rows `range`, `y: [t, range.len()]`, for
/// prefill-sized `t` (any `t` is correct; see the module doc).
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VNNI.
pub unsafe fn binary_rows(bits: &[u8], cols: usize, a: &Act8, range: Range<usize>, y: &mut [f32]) {
    check_rows(bits, cols, a, &range, y);
    let rb = row_bytes(cols);
    if range.is_empty() || a.tokens() == 0 || rb == 0 {
        return;
    }
    let need = rb / 8 * 16 * GROUP_BYTES;
    PANEL_BUF.with(|buf| {
        let mut panel = buf.borrow_mut();
        if panel.len() < need {
            panel.resize(need, 0);
        }
        // SAFETY: the caller guarantees the CPU features; `check_rows` bounds every row of
        // `range` in `bits`, `a.q` holds t rows of `a.stride = 8 · rb` bytes (so every group's
        // 4 bytes are in range) and `y` is [t, nr]; the panel holds `need` bytes.
        unsafe { rows(bits, rb, a, range, &mut panel[..need], y) }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::act8::{binary_rows_scalar, quantize};
    use crate::pack::pack_signs;

    fn supported() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }

    #[test]
    fn nibble_table_spreads_bits_lsb_first() {
        assert_eq!(NIBBLE_BYTES[0], 0);
        assert_eq!(NIBBLE_BYTES[1], 0x0000_0001);
        assert_eq!(NIBBLE_BYTES[0b1010], 0x0100_0100);
        assert_eq!(NIBBLE_BYTES[15], 0x0101_0101);
    }

    /// Every token count from 1 to 2 · TOKEN_BLOCK + 3 (every tile width and remainder), row
    /// counts no panel divides, columns no word divides, row sub-ranges: bit for bit.
    #[test]
    fn matches_the_scalar_twin_bit_for_bit() {
        if !supported() {
            eprintln!("skipped: no AVX512-VNNI on this CPU");
            return;
        }
        let mut s = 0x9e37_79b9_u64;
        let mut r = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        };
        for (rows, cols) in [(1, 1), (33, 65), (70, 200), (31, 64), (97, 131), (5, 520), (64, 127)] {
            let w: Vec<f32> = (0..rows * cols).map(|_| r()).collect();
            let bits = pack_signs(&w, rows, cols);
            for t in 1..=2 * TOKEN_BLOCK + 3 {
                let x: Vec<f32> = (0..t * cols).map(|i| r() * (1 + i / cols % 3) as f32).collect();
                let a = quantize(&x, cols, t);
                for range in [0..rows, rows / 3..rows - rows / 4] {
                    let mut want = vec![0.0; t * range.len()];
                    binary_rows_scalar(&bits, cols, &a, range.clone(), &mut want);
                    let mut got = vec![f32::NAN; t * range.len()];
                    // SAFETY: features checked above.
                    unsafe { binary_rows(&bits, cols, &a, range.clone(), &mut got) };
                    assert_eq!(got, want, "rows {rows} cols {cols} t {t} range {range:?}");
                }
            }
        }
    }
}
