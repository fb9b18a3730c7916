//! AVX512-VNNI q8 product with int8 activations over a matrix stored in panels
//! ([`crate::q8_panels`]; spec and twin: [`crate::q8_act8`], [`crate::q8_panels::rows_scalar`]):
//! the LM head of a q8 model for any number of tokens (decode, batched decode, prefill blocks).
//!
//! # The kernel
//! Lanes are rows. A panel's column group `g` is two 64-byte vectors, rows `0..16` and `16..32`
//! of the panel, each lane the 4 codes `q[v, 4g .. 4g + 4]` of one row. For a block of `K ≤ 8`
//! tokens, the 4 activation bytes of token `k` at those columns, offset to unsigned
//! (`xq + 128 ∈ [1, 255]`), are broadcast to every lane, and one `vpdpbusd` (u8 activations ×
//! s8 codes) per (half, token) adds
//! ```text
//! acc[h][k] lane i += Σ_{j<4} (xq[k, 4g + j] + 128) · q[32p + 16h + i, 4g + j]
//! ```
//! i.e. 64 products per instruction, for every token count, with two plain loads of weights per
//! group shared by the block's `2K` instructions (2 · 8 accumulators, 2 weight vectors and a
//! broadcast: 19 of the 32 registers). The weights stream through once per block of tokens
//! (the panel, `32 · cols` bytes, is in L1 for the blocks after the first); no transpose or
//! reduction afterwards, since the lanes are already outputs. The first block prefetches the
//! weights [`PREFETCH_BYTES`] ahead into L2.
//!
//! # The epilogue
//! The offset adds `128 · Σ_d q[v, d]` to lane `v`; `row_sums` holds those sums (one vector
//! load per 16 rows). Then per lane: subtract (i32 wraps; the true sum fits), convert, `· xs_k`,
//! `· s_v`, one masked store of the rows inside the requested range: the scalar twin's integer
//! and its two roundings, so the same bits.
//!
//! # Rows past the panels
//! The last `rows mod 32` rows (row-major) are copied into a zero-padded panel once per call and
//! run through the same tile; the padding rows are never stored.

// Register tiles index accumulators as acc[half][token]; explicit ranges read clearer.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::ops::Range;

use crate::act8::Act8;
use crate::q8_act8::check_rows;
use crate::q8_panels::{panel_rows, supports, GROUP, GROUP_BYTES, PANEL_ROWS};

/// Tokens per register tile (2 · 8 accumulators). Blocks of 12 (24 accumulators, as the 1-bit
/// prefill GEMM) measured 107 G multiply-adds/s at 12 tokens against 174 at 8 on one thread.
pub const TOKEN_BLOCK: usize = 8;

/// How far ahead of its loads the first token block prefetches the weights into L2, in bytes
/// (the panels are contiguous, so this runs on into the next panel: 8 KiB is one panel at 256
/// columns). The hardware prefetchers alone leave the head waiting on memory once the rest of a
/// batched step has pushed it out of L3: in `batch_profile` at 8 sequences the head took
/// 0.84–1.04x the row-order kernel's time without this, 0.65–0.76x with 8, 16 or 32 KiB ahead
/// (into L1 instead: 0.79–0.90x).
const PREFETCH_BYTES: usize = 8 << 10;

/// The activations of one call as `vpdpbusd`'s unsigned operand: `xq + 128`, `[t, stride]` as
/// [`Act8::q`] (padding columns 128, never read: `cols` is a multiple of 4).
pub fn unsigned_activations(a: &Act8) -> Vec<u8> {
    a.q.iter().map(|&v| (v as u8) ^ 0x80).collect()
}

/// What every tile of a call shares.
struct Call<'a> {
    a: &'a Act8,
    xu: &'a [u8],
    scales: &'a [f32],
    row_sums: &'a [i32],
    groups: usize,
    range: Range<usize>,
}

/// Tokens `k0 .. k0 + K` against the panel at `w` (rows `row0 .. row0 + 32`), storing the rows
/// inside `c.range`: lanes `lo .. hi` of the panel.
#[inline(always)]
unsafe fn tile<const K: usize>(c: &Call, w: *const i8, row0: usize, k0: usize, lo: usize, hi: usize, y: &mut [f32]) {
    unsafe {
        let mut acc = [[_mm512_setzero_si512(); K]; 2];
        let x: [*const u8; K] = std::array::from_fn(|kk| c.xu.as_ptr().add((k0 + kk) * c.a.stride));
        for g in 0..c.groups {
            if k0 == 0 {
                // A hint: an address past the matrix is harmless (no fault, no access).
                let ahead = w.wrapping_add(g * GROUP_BYTES + PREFETCH_BYTES);
                _mm_prefetch::<_MM_HINT_T1>(ahead.cast());
                _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(64).cast());
            }
            let w0 = _mm512_loadu_si512(w.add(g * GROUP_BYTES).cast());
            let w1 = _mm512_loadu_si512(w.add(g * GROUP_BYTES + 64).cast());
            for kk in 0..K {
                let b = _mm512_set1_epi32(x[kk].add(GROUP * g).cast::<i32>().read_unaligned());
                acc[0][kk] = _mm512_dpbusd_epi32(acc[0][kk], b, w0);
                acc[1][kk] = _mm512_dpbusd_epi32(acc[1][kk], b, w1);
            }
        }
        // Lanes lo..hi of the 32 (lo < hi ≤ 32).
        let lanes: u32 = (u32::MAX >> (32 - hi)) & (u32::MAX << lo);
        let nr = c.range.len();
        for h in 0..2 {
            let mask = (lanes >> (16 * h)) as __mmask16;
            if mask == 0 {
                continue;
            }
            // Row row0 + 16h + i of lane i; masked lanes are never read or written, so the
            // pointers may start before the slices (wrapping arithmetic, no access).
            let v0 = row0 + 16 * h;
            let corr =
                _mm512_slli_epi32::<7>(_mm512_maskz_loadu_epi32(mask, c.row_sums.as_ptr().wrapping_add(v0).cast()));
            let sv = _mm512_maskz_loadu_ps(mask, c.scales.as_ptr().wrapping_add(v0));
            for kk in 0..K {
                let k = k0 + kk;
                let s = _mm512_sub_epi32(acc[h][kk], corr);
                let f = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(c.a.scales[k])), sv);
                let at = (k * nr + v0).wrapping_sub(c.range.start);
                _mm512_mask_storeu_ps(y.as_mut_ptr().wrapping_add(at), mask, f);
            }
        }
    }
}

macro_rules! token_blocks {
    ($c:expr, $w:expr, $row0:expr, $lo:expr, $hi:expr, $y:expr; $($k:literal)*) => {{
        let t = $c.a.tokens();
        let mut k0 = 0;
        while k0 < t {
            let kb = (t - k0).min(TOKEN_BLOCK);
            match kb {
                $($k => tile::<$k>($c, $w, $row0, k0, $lo, $hi, $y),)*
                _ => unreachable!("token blocks hold 1..=TOKEN_BLOCK tokens"),
            }
            k0 += kb;
        }
    }};
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn panels(q: &[i8], rows: usize, c: &Call, y: &mut [f32]) {
    unsafe {
        let cols = c.groups * GROUP;
        let full = panel_rows(rows);
        let mut pad = Vec::new();
        let mut row0 = c.range.start - c.range.start % PANEL_ROWS;
        while row0 < c.range.end {
            let w = if row0 < full {
                q.as_ptr().add(row0 * cols)
            } else {
                // The rows past the panels, laid out as a zero-padded panel.
                pad.resize(PANEL_ROWS * cols, 0i8);
                for r in 0..rows - row0 {
                    for g in 0..c.groups {
                        let src = &q[(row0 + r) * cols + GROUP * g..][..GROUP];
                        pad[GROUP_BYTES * g + GROUP * r..][..GROUP].copy_from_slice(src);
                    }
                }
                pad.as_ptr()
            };
            let lo = c.range.start.max(row0) - row0;
            let hi = c.range.end.min(row0 + PANEL_ROWS) - row0;
            token_blocks!(c, w, row0, lo, hi, y; 1 2 3 4 5 6 7 8);
            row0 += PANEL_ROWS;
        }
    }
}

/// The q8 product with int8 activations over output rows `range` of `q: [rows, cols]` stored in
/// panels: `y: [t, range.len()]`, `xu` from [`unsigned_activations`] of `a`, `row_sums` from
/// [`crate::q8_act8::row_sums`] (of the row-major codes; the sums do not depend on the layout).
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VNNI.
#[allow(clippy::too_many_arguments)]
pub unsafe fn q8_rows(
    q: &[i8],
    scales: &[f32],
    row_sums: &[i32],
    rows: usize,
    cols: usize,
    a: &Act8,
    xu: &[u8],
    range: Range<usize>,
    y: &mut [f32],
) {
    check_rows(q, scales, row_sums, cols, a, &range, y);
    assert!(supports(cols) && q.len() == rows * cols, "q8 panels kernel: [{rows} x {cols}] in panels");
    assert_eq!(xu.len(), a.q.len(), "q8 panels kernel: unsigned activations of other activations");
    if range.is_empty() || a.tokens() == 0 {
        return;
    }
    let c = Call { a, xu, scales, row_sums, groups: cols / GROUP, range };
    // SAFETY: the caller guarantees the CPU features. `q` holds `rows · cols` codes and every
    // panel read lies below `panel_rows(rows) · cols` (the tail goes through a padded copy);
    // activation reads stop at column `cols ≤ stride` of each token; `check_rows` bounds
    // `scales`, `row_sums` and `y` for `range`, and the loads and stores of each tile are masked
    // to the rows inside `range`.
    unsafe { panels(q, rows, &c, y) }
}
