//! AVX-512 table-lookup ("T-MAC") binary product with int8 activations: `vpermb` on the byte
//! tables of [`crate::tmac`] (the identity, the table layout and the scalar twin are there).
//!
//! # The kernel
//! Sixteen rows live in the 16 i32 lanes of a vector. A 16 × 16 transpose of dwords turns 64
//! bytes of each of 16 rows into 16 vectors whose lane `r` is dword `d` of row `r`: 8 nibbles,
//! groups `8d .. 8d+8` ([`load_transposed`]: the loads place 128-bit chunks of 4 rows with
//! `vinserti32x4`, then 8 unpacks per 4 vectors; a row's partial last strip takes masked loads
//! and the full register transpose of the f32 table kernel). Per such vector and token:
//! ```text
//! ie = (v & 0x0F0F0F0F) | [0x00, 0x10, 0x20, 0x30]      byte j: low nibble + 16·j   (vpternlogd)
//! io = (v >> 4 & 0x0F0F0F0F) | [0x00, 0x10, 0x20, 0x30]  byte j: high nibble + 16·j
//! acc += vpdpbusd(1, vpermb(ie, L_even)),  vpdpbusd(1, vpermb(ie, H_even)), same for io
//! ```
//! `vpermb` looks up 64 bytes at once (a 64-byte table holds the four groups of one index
//! vector: entry `16·j + n`), and `vpdpbusd` with u8 ones sums the four bytes of each lane (four
//! groups of one row) into its i32. So per 512 weights and token: one shift, two ternary-logic
//! ops, four `vpermb`, four `vpdpbusd`, plus the transpose (per vector 2 unpacks and 3 inserts,
//! shared by the tokens). At the end, `y = (ΣL + 64·ΣH) · scale` for 16 rows at once, no
//! horizontal sums. On a core issuing 512-bit µops on two ports this is as fast as the VNNI
//! kernel, not faster (KERNELS.md, "Table-lookup kernel"); without the transpose (the
//! interleaved layout, [`binary_rows_interleaved`]) it is faster with the weights in cache.
//!
//! Rows past the range read the last row again (in bounds) and are never stored; a row's last
//! strip loads only its remaining dwords (masked). The next tile's bits are software-prefetched,
//! since the 64-byte column strips across 16 rows defeat the hardware prefetchers.
//!
//! # Tables
//! [`build_tables`] computes all 16 entries of a group with one `vpdpbusd`:
//! `Σ_b (q_b + 128) · sgn_b(n) = S[n] + 128 · Σ_b sgn_b(n)` (u8 `q ⊕ 0x80` × i8 ±1), started from
//! `−128 · Σ_b sgn_b(n)`; then `S & 63` and `S >> 6` narrowed to bytes (`vpmovdb`).

// Register tiles index accumulators as acc[token][kind]; explicit ranges read clearer.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::ops::Range;

use super::avx512_lut::transpose16;
use crate::act8::Act8;
use crate::pack::row_bytes;
use crate::tmac::{check_tables, tables_len, Tables, DWORD_TABLE_BYTES};

/// Whether this CPU runs the kernel and the builder (AVX-512 F/BW + VNNI + VBMI).
pub fn is_supported() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("avx512vbmi")
}

/// Dword `n`: byte `b` is `2 · bit_b(n) − 1` (i8).
const SIGNS: [u32; 16] = {
    let mut t = [0u32; 16];
    let mut n = 0;
    while n < 16 {
        let mut b = 0;
        while b < 4 {
            let s: u8 = if (n >> b) & 1 == 1 { 1 } else { 0xff };
            t[n] |= (s as u32) << (8 * b);
            b += 1;
        }
        n += 1;
    }
    t
};

/// Lane `n`: `−128 · Σ_b sgn_b(n) = −128 · (2 · popcount(n) − 4)`.
const BIAS: [i32; 16] = {
    let mut t = [0i32; 16];
    let mut n = 0;
    while n < 16 {
        t[n] = -128 * (2 * (n as u32).count_ones() as i32 - 4);
        n += 1;
    }
    t
};

/// Builds the tables of `a` (the same bytes as [`crate::tmac::build_tables_scalar`]).
///
/// # Safety
/// The CPU must pass [`is_supported`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn build_tables(a: &Act8) -> Tables {
    unsafe {
        let mut tables = Tables::zeroed(a.cols, a.tokens());
        let dwords = tables.dwords;
        assert!(a.q.len() >= a.tokens() * a.stride && a.stride == 32 * dwords);
        let signs = _mm512_loadu_si512(SIGNS.as_ptr().cast());
        let bias = _mm512_loadu_si512(BIAS.as_ptr().cast());
        let low6 = _mm512_set1_epi32(63);
        let flip = _mm512_set1_epi32(0x8080_8080u32 as i32);
        let out = tables.bytes_mut().as_mut_ptr();
        for k in 0..a.tokens() {
            let q = a.q.as_ptr().add(k * a.stride).cast::<i32>();
            for g in 0..8 * dwords {
                // All 16 entries of group g (lane n), then the L and H bytes.
                let qg = _mm512_xor_si512(_mm512_set1_epi32(q.add(g).read_unaligned()), flip);
                let s = _mm512_dpbusd_epi32(bias, qg, signs);
                let (d, m) = (g / 8, g % 8);
                let o = out.add((k * dwords + d) * DWORD_TABLE_BYTES + 128 * (m % 2) + 16 * (m / 2));
                _mm_storeu_si128(o.cast(), _mm512_cvtepi32_epi8(_mm512_and_si512(s, low6)));
                _mm_storeu_si128(o.add(64).cast(), _mm512_cvtepi32_epi8(_mm512_srai_epi32::<6>(s)));
            }
        }
        tables
    }
}

struct Ctx<'a> {
    bits: &'a [u8],
    rb: usize,
    dwords: usize,
    a: &'a Act8,
    tab: &'a Tables,
    /// First row of the output block and its width: `y[k, i]` is at `y[k·nr + i − r0]`.
    r0: usize,
    nr: usize,
}

/// How many 16-row tiles ahead the sign bits are prefetched (into L2).
const PREFETCH_TILES: usize = 4;

/// Looks up one transposed dword vector `v` (16 rows × 8 groups) for `K` tokens into the
/// accumulators `acc[token][kind]` (kinds: L and H of the low nibbles, then of the high ones).
#[inline(always)]
unsafe fn lookup<const K: usize>(c: &Ctx, v: __m512i, d: usize, k0: usize, acc: &mut [[__m512i; 4]; K]) {
    unsafe {
        let nib = _mm512_set1_epi32(0x0f0f_0f0f);
        let slot = _mm512_set1_epi32(0x3020_1000);
        let ones = _mm512_set1_epi32(0x0101_0101);
        // (v & nib) | slot: vpternlogd truth table 0xEA is (A & B) | C.
        let ie = _mm512_ternarylogic_epi32::<0xEA>(v, nib, slot);
        let io = _mm512_ternarylogic_epi32::<0xEA>(_mm512_srli_epi32::<4>(v), nib, slot);
        let tab = c.tab.bytes().as_ptr();
        for kk in 0..K {
            let t = tab.add(c.tab.offset(k0 + kk, d));
            let a = &mut acc[kk];
            a[0] = _mm512_dpbusd_epi32(a[0], ones, _mm512_permutexvar_epi8(ie, _mm512_loadu_si512(t.cast())));
            a[1] = _mm512_dpbusd_epi32(a[1], ones, _mm512_permutexvar_epi8(ie, _mm512_loadu_si512(t.add(64).cast())));
            a[2] = _mm512_dpbusd_epi32(a[2], ones, _mm512_permutexvar_epi8(io, _mm512_loadu_si512(t.add(128).cast())));
            a[3] = _mm512_dpbusd_epi32(a[3], ones, _mm512_permutexvar_epi8(io, _mm512_loadu_si512(t.add(192).cast())));
        }
    }
}

/// A full strip (16 dwords) of 16 rows, transposed: lane `r` of vector `d` is dword `d` at
/// `rows[r] + off`. The 128-bit lanes are placed by the loads (`vinserti32x4` from memory, which
/// needs no shuffle port), then one 4 × 4 dword transpose within each lane (8 unpacks per 4
/// vectors), where the full transpose takes 4 shuffles per vector.
#[inline(always)]
unsafe fn load_transposed(rows: &[*const u8; 16], off: usize) -> [__m512i; 16] {
    unsafe {
        let mut v = [_mm512_setzero_si512(); 16];
        for c in 0..4 {
            // y[i] lane l: dwords 4c .. 4c+4 of row 4l + i.
            // A plain loop, not a closure: a closure does not inherit the target features.
            let mut y = [_mm512_setzero_si512(); 4];
            for (i, yi) in y.iter_mut().enumerate() {
                let p: [*const __m128i; 4] = std::array::from_fn(|l| rows[4 * l + i].add(off + 16 * c).cast());
                let x = _mm512_castsi128_si512(_mm_loadu_si128(p[0]));
                let x = _mm512_inserti32x4::<1>(x, _mm_loadu_si128(p[1]));
                let x = _mm512_inserti32x4::<2>(x, _mm_loadu_si128(p[2]));
                *yi = _mm512_inserti32x4::<3>(x, _mm_loadu_si128(p[3]));
            }
            let t0 = _mm512_unpacklo_epi32(y[0], y[1]);
            let t1 = _mm512_unpackhi_epi32(y[0], y[1]);
            let t2 = _mm512_unpacklo_epi32(y[2], y[3]);
            let t3 = _mm512_unpackhi_epi32(y[2], y[3]);
            v[4 * c] = _mm512_unpacklo_epi64(t0, t2);
            v[4 * c + 1] = _mm512_unpackhi_epi64(t0, t2);
            v[4 * c + 2] = _mm512_unpacklo_epi64(t1, t3);
            v[4 * c + 3] = _mm512_unpackhi_epi64(t1, t3);
        }
        v
    }
}

/// Rows `row0 .. row0 + n` (n ≤ 16) × tokens `k0 .. k0 + K`. Two accumulator sets (even and odd
/// dwords) keep eight independent `vpdpbusd` chains per token.
#[inline(always)]
unsafe fn tile<const K: usize>(c: &Ctx, row0: usize, n: usize, k0: usize, y: &mut [f32]) {
    unsafe {
        let z = _mm512_setzero_si512();
        let mut acc0 = [[z; 4]; K];
        let mut acc1 = [[z; 4]; K];
        let bits = c.bits.as_ptr();
        let rows: [*const u8; 16] = std::array::from_fn(|r| bits.add((row0 + r.min(n - 1)) * c.rb));
        // The tile PREFETCH_TILES ahead: 16 contiguous rows, one line per row and strip below.
        let ahead = bits.wrapping_add((row0 + 16 * PREFETCH_TILES) * c.rb);
        for s in 0..c.dwords.div_ceil(16) {
            // `dwords` is even (rows are whole u64 words), so `nd` is too.
            let nd = (c.dwords - 16 * s).min(16);
            let mask = ((1u32 << nd) - 1) as u16;
            let v = if nd == 16 {
                load_transposed(&rows, 64 * s)
            } else {
                // A row's last, partial strip: masked loads (never past the row), full transpose.
                let mut v: [__m512i; 16] =
                    std::array::from_fn(|r| _mm512_maskz_loadu_epi32(mask, rows[r].add(64 * s).cast()));
                transpose16(&mut v);
                v
            };
            for r in 0..16 {
                // A prefetch past the end of the matrix is harmless (never faults).
                _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(r * c.rb + 64 * s).cast());
            }
            for dd in 0..nd / 2 {
                lookup::<K>(c, v[2 * dd], 16 * s + 2 * dd, k0, &mut acc0);
                lookup::<K>(c, v[2 * dd + 1], 16 * s + 2 * dd + 1, k0, &mut acc1);
            }
        }
        let lanes = ((1u32 << n) - 1) as u16;
        for kk in 0..K {
            let (a, b) = (&acc0[kk], &acc1[kk]);
            let lo = _mm512_add_epi32(_mm512_add_epi32(a[0], a[2]), _mm512_add_epi32(b[0], b[2]));
            let hi = _mm512_add_epi32(_mm512_add_epi32(a[1], a[3]), _mm512_add_epi32(b[1], b[3]));
            // ΣL + 64·ΣH is the exact integer of `act8::dequantize`; one f32 rounding each.
            let sum = _mm512_add_epi32(lo, _mm512_slli_epi32::<6>(hi));
            let k = k0 + kk;
            let yv = _mm512_mul_ps(_mm512_cvtepi32_ps(sum), _mm512_set1_ps(c.a.scales[k]));
            _mm512_mask_storeu_ps(y.as_mut_ptr().add(k * c.nr + row0 - c.r0), lanes, yv);
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
unsafe fn rows_k<const K: usize>(c: &Ctx, range: Range<usize>, k0: usize, y: &mut [f32]) {
    unsafe {
        let mut i = range.start;
        while i < range.end {
            let n = (range.end - i).min(16);
            tile::<K>(c, i, n, k0, y);
            i += n;
        }
    }
}

/// Interleaved kernel: rows per panel and dwords per column block. A block's tables (256 B per
/// dword and token: 16 KiB for 64 dwords) stay in L1 while the panel's tiles pass over them;
/// wider rows (5120 columns: 40 KiB of tables) would otherwise evict them with the sign bits.
const IL_PANEL_TILES: usize = 8;
const IL_BLOCK_DWORDS: usize = 64;

/// Rows `p0 .. p1` (at most `16 · IL_PANEL_TILES`, `p0` tile-aligned) × token `k` of the
/// interleaved layout: the transposed dwords are loaded as they are.
#[inline(always)]
unsafe fn panel_interleaved(c: &Ctx, p0: usize, p1: usize, k: usize, y: &mut [f32]) {
    unsafe {
        let z = _mm512_setzero_si512();
        let ntiles = (p1 - p0).div_ceil(16);
        let mut accs = [[[[z; 4]; 1]; 2]; IL_PANEL_TILES];
        let tile_bytes = c.dwords * 64;
        let first = c.bits.as_ptr().add(p0 / 16 * tile_bytes);
        for b0 in (0..c.dwords).step_by(IL_BLOCK_DWORDS) {
            let b1 = (b0 + IL_BLOCK_DWORDS).min(c.dwords);
            for (tl, slot) in accs.iter_mut().enumerate().take(ntiles) {
                // A by-value copy keeps the accumulators in registers within the block.
                let mut acc = *slot;
                let base = first.add(tl * tile_bytes);
                // The same block of the tile one panel ahead (a prefetch past the end never faults).
                let ahead = base.wrapping_add(IL_PANEL_TILES * tile_bytes);
                // `dwords` and the block bounds are even.
                for d in (b0..b1).step_by(2) {
                    _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(d * 64).cast());
                    _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(d * 64 + 64).cast());
                    lookup::<1>(c, _mm512_loadu_si512(base.add(d * 64).cast()), d, k, &mut acc[0]);
                    lookup::<1>(c, _mm512_loadu_si512(base.add(d * 64 + 64).cast()), d + 1, k, &mut acc[1]);
                }
                *slot = acc;
            }
        }
        for (tl, acc) in accs.iter().enumerate().take(ntiles) {
            let row0 = p0 + 16 * tl;
            let lanes = ((1u32 << (p1 - row0).min(16)) - 1) as u16;
            let (a, b) = (&acc[0][0], &acc[1][0]);
            let lo = _mm512_add_epi32(_mm512_add_epi32(a[0], a[2]), _mm512_add_epi32(b[0], b[2]));
            let hi = _mm512_add_epi32(_mm512_add_epi32(a[1], a[3]), _mm512_add_epi32(b[1], b[3]));
            let sum = _mm512_add_epi32(lo, _mm512_slli_epi32::<6>(hi));
            let yv = _mm512_mul_ps(_mm512_cvtepi32_ps(sum), _mm512_set1_ps(c.a.scales[k]));
            _mm512_mask_storeu_ps(y.as_mut_ptr().add(k * c.nr + row0 - c.r0), lanes, yv);
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
unsafe fn rows_interleaved(c: &Ctx, range: Range<usize>, k: usize, y: &mut [f32]) {
    unsafe {
        let mut p0 = range.start;
        while p0 < range.end {
            let p1 = (p0 + 16 * IL_PANEL_TILES).min(range.end);
            panel_interleaved(c, p0, p1, k, y);
            p0 = p1;
        }
    }
}

/// [`binary_rows`] over the interleaved layout of [`crate::tmac::interleave16`] (no transpose);
/// `range.start` must be a multiple of 16.
///
/// # Safety
/// The CPU must pass [`is_supported`].
pub unsafe fn binary_rows_interleaved(
    ibits: &[u8],
    cols: usize,
    a: &Act8,
    tab: &Tables,
    range: Range<usize>,
    y: &mut [f32],
) {
    unsafe {
        let rb = row_bytes(cols);
        assert!(range.start.is_multiple_of(16), "interleaved kernel: row range {range:?} not tile-aligned");
        assert!(ibits.len() >= range.end.div_ceil(16) * 16 * rb, "interleaved kernel: bits too short");
        assert!(tab.dwords == rb / 4 && tab.bytes().len() == tables_len(cols, a.tokens()) && a.cols == cols);
        assert_eq!(y.len(), a.tokens() * range.len());
        let c = Ctx { bits: ibits, rb, dwords: rb / 4, a, tab, r0: range.start, nr: range.len() };
        if c.dwords == 0 {
            y.fill(0.0);
            return;
        }
        let t = a.tokens();
        for k in 0..t {
            rows_interleaved(&c, range.clone(), k, y);
        }
    }
}

/// Binary product with int8 activations over output rows `range` by table lookup: `y: [t,
/// range.len()]`, `tab` from [`crate::tmac::build_tables`] for the same `a`.
///
/// # Safety
/// The CPU must pass [`is_supported`].
pub unsafe fn binary_rows(bits: &[u8], cols: usize, a: &Act8, tab: &Tables, range: Range<usize>, y: &mut [f32]) {
    unsafe {
        check_tables(bits, cols, a, tab, &range, y);
        let rb = row_bytes(cols);
        let c = Ctx { bits, rb, dwords: rb / 4, a, tab, r0: range.start, nr: range.len() };
        if c.dwords == 0 {
            y.fill(0.0);
            return;
        }
        let t = a.tokens();
        let full = t / 2 * 2;
        for k in (0..full).step_by(2) {
            rows_k::<2>(&c, range.clone(), k, y);
        }
        for k in full..t {
            rows_k::<1>(&c, range.clone(), k, y);
        }
    }
}
