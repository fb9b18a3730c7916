//! AVX512-VNNI q8 product with int8 activations (spec and twin: [`crate::q8_act8`]): the LM head
//! of a q8 model for 1 to 16 tokens at a time (batched decode, prefill blocks).
//!
//! # The kernel
//! Lanes are tokens. A block of `T ≤ 16` tokens is padded to `T' = T.next_power_of_two()` and
//! each token gets `L = 16 / T'` i32 lanes; per step of `4L` columns, lane `k·L + l` holds the
//! four activation bytes `xq[k, 4L·s + 4l .. +4] + 128` of token `k` (the "panel", built once per
//! call, [`Panels`]). The weight row's `4L` bytes of the same columns are broadcast to every
//! `4L`-byte group of the vector (`vpbroadcastd/q`, `vbroadcasti32x4/64x4`, a plain load at
//! `L = 16`: load-port work only), so one `vpdpbusd` (u8 activations × s8 codes) adds
//! ```text
//! acc[r] lane k·L + l += Σ_{j<4} (xq[k, 4L·s + 4l + j] + 128) · q[v_r, 4L·s + 4l + j]
//! ```
//! for all `T'` tokens: 64 products per instruction, every lane useful when `T` is a power of
//! two (8 streams of batched decode: `L = 2`, 8 columns per step). A tile is 16 rows, so one
//! panel vector is reused by 16 `vpdpbusd` (one per row) and the 16 accumulators stay in
//! registers; every weight byte is read once per block of 16 tokens, and blocks of a longer call
//! reuse the tile's rows from L1.
//!
//! # The epilogue
//! `acc[r]` lane `k·L + l` must become token `k`, row `r`, summed over `l`. A butterfly over the
//! four bits of the lane index does both: for a bit `d < L` it adds lanes of rows `r` and `r + d`
//! pairwise into one vector (halving the vectors), for `d ≥ L` it swaps the off-diagonal halves
//! (one step of a 16 × 16 transpose); two `vpermt2d` per pair of vectors. Afterwards vector `k·L`
//! holds token `k` with lanes = rows, so the rest is per 16 outputs: subtract `128 · Σ_d q[v, d]`
//! (the offset; i32 wraps, the true sum fits), convert, `· xs_k`, `· s_v`, one masked store:
//! the scalar twin's integer and its two roundings, so the same bits.

// Register tiles index accumulators as acc[row]; explicit ranges read clearer.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::ops::Range;

use crate::act8::Act8;
use crate::q8_act8::check_rows;

/// Rows per register tile: 16 accumulators, and 16 lanes after the epilogue's transpose.
pub const TILE_ROWS: usize = 16;

/// Tokens per block (one token per lane at most).
pub const TOKEN_BLOCK: usize = 16;

/// How many tiles ahead the rows are prefetched into L2: a tile is `16 · cols` contiguous bytes
/// (4 KiB at 256 columns, one page, which the hardware prefetchers do not cross). 2, 4 and 8
/// measured the same on the shipped head; none (distance 0) was 20% slower at 8 tokens.
const PREFETCH_TILES: usize = 2;

/// One block of tokens in `vpdpbusd`'s operand layout (see the module doc).
struct Block {
    /// First token of the block and how many it holds (1..=16).
    k0: usize,
    tokens: usize,
    /// i32 lanes per token: `16 / tokens.next_power_of_two()`.
    lanes: usize,
    /// `[steps][16 lanes][4 bytes]`, `steps = ⌈cols / 4L⌉`; padding lanes are 0.
    data: Vec<u8>,
}

/// The activations of one call as panels, built once and shared by every row chunk.
pub struct Panels {
    cols: usize,
    tokens: usize,
    blocks: Vec<Block>,
}

impl Panels {
    /// Lays out `a` (quantized by [`crate::act8::quantize`]) for the kernel.
    pub fn new(a: &Act8) -> Panels {
        let (t, cols) = (a.tokens(), a.cols);
        let mut blocks = Vec::with_capacity(t.div_ceil(TOKEN_BLOCK));
        let mut k0 = 0;
        while k0 < t {
            let tokens = (t - k0).min(TOKEN_BLOCK);
            let lanes = TOKEN_BLOCK / tokens.next_power_of_two();
            let step = 4 * lanes;
            // steps · 4L ≤ cols rounded up to 64 = a.stride: every byte read is in the row.
            let steps = cols.div_ceil(step);
            let mut data = vec![0u8; steps * 64];
            for s in 0..steps {
                for k in 0..tokens {
                    let src = &a.q[(k0 + k) * a.stride + s * step..][..step];
                    let dst = &mut data[s * 64 + k * step..][..step];
                    for (d, &v) in dst.iter_mut().zip(src) {
                        // xq + 128 as an unsigned byte.
                        *d = (v as u8) ^ 0x80;
                    }
                }
            }
            blocks.push(Block { k0, tokens, lanes, data });
            k0 += tokens;
        }
        Panels { cols, tokens: t, blocks }
    }
}

/// `vpermt2d` indices of the butterfly for lane bit `d = 1 << b`: `LO` takes lanes with bit `d`
/// clear from the first vector and the others from the second one `d` lanes down; `HI` the
/// first vector's lanes `d` up and the second's own.
const BUTTERFLY: [[[u32; 16]; 2]; 4] = {
    let mut t = [[[0u32; 16]; 2]; 4];
    let mut b = 0;
    while b < 4 {
        let d = 1u32 << b;
        let mut l = 0;
        while l < 16 {
            let lu = l as u32;
            if lu & d == 0 {
                t[b][0][l] = lu;
                t[b][1][l] = lu + d;
            } else {
                t[b][0][l] = 16 + lu - d;
                t[b][1][l] = 16 + lu;
            }
            l += 1;
        }
        b += 1;
    }
    t
};

/// The `4L` weight bytes at `p` broadcast to every `4L`-byte group.
#[inline(always)]
unsafe fn load_w<const L: usize>(p: *const i8) -> __m512i {
    unsafe {
        match L {
            16 => _mm512_loadu_si512(p.cast()),
            8 => _mm512_broadcast_i64x4(_mm256_loadu_si256(p.cast())),
            4 => _mm512_broadcast_i32x4(_mm_loadu_si128(p.cast())),
            2 => _mm512_set1_epi64(p.cast::<i64>().read_unaligned()),
            _ => _mm512_set1_epi32(p.cast::<i32>().read_unaligned()),
        }
    }
}

/// As [`load_w`] for the last `n < 4L` bytes of a row; the rest of each group is zero.
#[inline(always)]
unsafe fn load_w_tail<const L: usize>(p: *const i8, n: usize) -> __m512i {
    unsafe {
        let m = (1u64 << n) - 1;
        match L {
            16 => _mm512_maskz_loadu_epi8(m, p),
            8 => _mm512_broadcast_i64x4(_mm256_maskz_loadu_epi8(m as u32, p)),
            4 => _mm512_broadcast_i32x4(_mm_maskz_loadu_epi8(m as u16, p)),
            2 => _mm512_broadcastq_epi64(_mm_maskz_loadu_epi8(m as u16, p)),
            _ => _mm512_broadcastd_epi32(_mm_maskz_loadu_epi8(m as u16, p)),
        }
    }
}

/// The outputs of one call: `y[k · nr + v − r0]`.
struct Out<'a> {
    scales: &'a [f32],
    row_sums: &'a [i32],
    xscales: &'a [f32],
    r0: usize,
    nr: usize,
}

/// Rows `row0 .. row0 + n` (n ≤ 16; `w` points at 16 rows of `cols` codes, rows past `n` zero
/// or repeated, never stored) against one token block.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const L: usize>(
    w: *const i8,
    cols: usize,
    blk: &Block,
    o: &Out,
    row0: usize,
    n: usize,
    ahead: Option<*const i8>,
    y: &mut [f32],
) {
    unsafe {
        let step = 4 * L;
        let (full, tail) = (cols / step, cols % step);
        let xp = blk.data.as_ptr();
        let mut acc = [_mm512_setzero_si512(); TILE_ROWS];
        // The tile PREFETCH_TILES ahead, spread over the steps (a burst of 64 prefetches at the
        // tile's start fills the miss buffers and measured slower).
        let lines = (TILE_ROWS * cols).div_ceil(64);
        let per_step = lines.div_ceil(full.max(1));
        for s in 0..full {
            if let Some(p) = ahead {
                for i in s * per_step..((s + 1) * per_step).min(lines) {
                    _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(64 * i).cast());
                }
            }
            let xv = _mm512_loadu_si512(xp.add(64 * s).cast());
            for r in 0..TILE_ROWS {
                acc[r] = _mm512_dpbusd_epi32(acc[r], xv, load_w::<L>(w.add(r * cols + s * step)));
            }
        }
        if tail > 0 {
            let xv = _mm512_loadu_si512(xp.add(64 * full).cast());
            for r in 0..TILE_ROWS {
                acc[r] = _mm512_dpbusd_epi32(acc[r], xv, load_w_tail::<L>(w.add(r * cols + full * step), tail));
            }
        }
        // The butterfly (module doc): reduce over the lane bits below L, transpose the others.
        for (b, idx) in BUTTERFLY.iter().enumerate() {
            let d = 1 << b;
            let lo = _mm512_loadu_si512(idx[0].as_ptr().cast());
            let hi = _mm512_loadu_si512(idx[1].as_ptr().cast());
            for r in 0..TILE_ROWS {
                // Live vectors: multiples of d while reducing, of L while transposing.
                if r & d != 0 || r % d.min(L) != 0 {
                    continue;
                }
                let x = _mm512_permutex2var_epi32(acc[r], lo, acc[r + d]);
                let z = _mm512_permutex2var_epi32(acc[r], hi, acc[r + d]);
                if d < L {
                    acc[r] = _mm512_add_epi32(x, z);
                } else {
                    acc[r] = x;
                    acc[r + d] = z;
                }
            }
        }
        let mask: __mmask16 = if n == 16 { 0xffff } else { (1u16 << n) - 1 };
        let corr = _mm512_slli_epi32::<7>(_mm512_maskz_loadu_epi32(mask, o.row_sums.as_ptr().add(row0).cast()));
        let sv = _mm512_maskz_loadu_ps(mask, o.scales.as_ptr().add(row0));
        for k in 0..blk.tokens {
            let kk = blk.k0 + k;
            let s = _mm512_sub_epi32(acc[k * L], corr);
            let f = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(o.xscales[kk])), sv);
            let at = kk * o.nr + row0 - o.r0;
            debug_assert!(at + n <= y.len());
            _mm512_mask_storeu_ps(y.as_mut_ptr().add(at), mask, f);
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn rows(q: &[i8], cols: usize, panels: &Panels, o: &Out, range: Range<usize>, y: &mut [f32]) {
    unsafe {
        // A last tile of fewer than 16 rows reads a zero-padded copy (no reads past the matrix).
        let mut pad = Vec::new();
        let mut row0 = range.start;
        while row0 < range.end {
            let n = (range.end - row0).min(TILE_ROWS);
            let ahead = q.as_ptr().wrapping_add((row0 + PREFETCH_TILES * TILE_ROWS) * cols);
            let w = if n == TILE_ROWS {
                q.as_ptr().add(row0 * cols)
            } else {
                pad.resize(TILE_ROWS * cols, 0i8);
                pad[..n * cols].copy_from_slice(&q[row0 * cols..(row0 + n) * cols]);
                pad.as_ptr()
            };
            for (bi, blk) in panels.blocks.iter().enumerate() {
                // The first block of tokens prefetches; the others find the tile in L1.
                let pf = (bi == 0).then_some(ahead);
                match blk.lanes {
                    16 => tile::<16>(w, cols, blk, o, row0, n, pf, y),
                    8 => tile::<8>(w, cols, blk, o, row0, n, pf, y),
                    4 => tile::<4>(w, cols, blk, o, row0, n, pf, y),
                    2 => tile::<2>(w, cols, blk, o, row0, n, pf, y),
                    _ => tile::<1>(w, cols, blk, o, row0, n, pf, y),
                }
            }
            row0 += n;
        }
    }
}

/// The q8 product with int8 activations over output rows `range`: `y: [t, range.len()]`,
/// `panels` built from `a` by [`Panels::new`], `row_sums` from [`crate::q8_act8::row_sums`].
///
/// # Safety
/// The CPU must support AVX-512 F, BW, VL and VNNI.
#[allow(clippy::too_many_arguments)]
pub unsafe fn q8_rows(
    q: &[i8],
    scales: &[f32],
    row_sums: &[i32],
    cols: usize,
    a: &Act8,
    panels: &Panels,
    range: Range<usize>,
    y: &mut [f32],
) {
    check_rows(q, scales, row_sums, cols, a, &range, y);
    assert!(panels.cols == cols && panels.tokens == a.tokens(), "q8 int8 kernel: panels of other activations");
    let o = Out { scales, row_sums, xscales: &a.scales, r0: range.start, nr: range.len() };
    // SAFETY: the caller guarantees the CPU features. `check_rows` bounds rows `range` of `q`
    // (each `cols` codes), `scales`, `row_sums` and `y` ([t, nr]); every panel holds
    // ⌈cols / 4L⌉ steps of 64 bytes, which is what a tile reads; tail loads are masked to the
    // row's last bytes.
    unsafe { rows(q, cols, panels, &o, range, y) }
}
