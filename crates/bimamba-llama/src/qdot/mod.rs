//! Integer dot products with 8-bit activations for GGUF block-quantized weights: llama.cpp's CPU
//! arithmetic (`ggml_vec_dot_q4_1_q8_1` and its siblings), opt-in with `Activations::Q8`.
//!
//! # The math
//! Every supported weight format is, per block `b` of 32 consecutive elements of a row,
//!
//! ```text
//! w_j = d_b · (u_j − z) + m_b,    u_j ∈ 0..=255 (u8 codes), z a per-format zero point
//! ```
//!
//! | GGUF type | code u | z | m_b |
//! |---|---|---|---|
//! | Q8_0 (f16 d, 32 × i8 q) | q + 128 | 128 | 0 |
//! | Q4_0 (f16 d, nibbles q) | q | 8 | 0 |
//! | Q4_1 (f16 d, f16 m, nibbles q) | q | 0 | m |
//!
//! Each token's activations are quantized per block like llama.cpp's Q8_1:
//! `dx_b = max_j |x_j| / 127`, `q_j = round(x_j / dx_b)` (half to even), with
//! `X_b = Σ_j q_j` and `sx_b = dx_b · X_b`. Then
//!
//! ```text
//! y = Σ_b [ (d_b · dx_b) · (Σ_j u_j q_j − z · X_b) + m_b · sx_b ]
//! ```
//!
//! The inner sum is exact in i32 (|u q| ≤ 255 · 127, 32 terms), so the only rounding besides the
//! activation quantization is the f32 accumulation over blocks. llama.cpp stores `dx_b` as f16;
//! here it stays f32 (slightly more accurate, otherwise the same arithmetic).
//!
//! # The layout
//! Rows are taken in groups of [`GROUP`] = 16 (the i32 lanes of a 512-bit vector; the last group
//! is padded with zero rows). For group `g` and block `b`, 512 bytes hold the codes as eight
//! 64-byte vectors: vector `k` lane `i` is bytes `4k .. 4k+4` of block `b` of row `16g + i`.
//! One `vpdpbusd` of vector `k` with the activation bytes `4k .. 4k+4` broadcast then adds four
//! products to each of 16 rows, and eight of them finish the block ([`avx512`]). Scales `d`, `m`
//! are `[group][block][16]` f32.

#[cfg(target_arch = "x86_64")]
pub mod avx512;
#[cfg(test)]
mod tests;

use std::ops::Range;

use bimamba_formats::{DType, QK};
use half::f16;
use rayon::prelude::*;

/// Rows per group: the 16 i32 lanes of a 512-bit vector.
pub const GROUP: usize = 16;
/// Bytes of codes per (group, block).
const TILE: usize = GROUP * QK;
/// Below this many weight-token products a product stays on the calling thread.
const PAR_MIN_WORK: usize = 1 << 20;

/// A GGUF Q8_0 / Q4_0 / Q4_1 matrix re-laid for 8-bit dot products (see the module docs).
#[derive(Clone, Debug)]
pub struct QdotMatrix {
    pub rows: usize,
    pub cols: usize,
    /// Blocks per row (`cols / 32`).
    nb: usize,
    /// Row groups (`rows / 16`, rounded up).
    groups: usize,
    /// The zero point `z` of the codes.
    zero: i32,
    /// [groups · nb · 512] codes, laid out as the module docs say.
    codes: Vec<u8>,
    /// [groups · nb · 16] block scales `d`.
    d: Vec<f32>,
    /// [groups · nb · 16] block minima `m`; empty when the format has none (Q8_0, Q4_0).
    m: Vec<f32>,
}

/// One token-block of activations, quantized: `[t, cols]` codes and `[t, nb]` block figures.
#[derive(Clone, Debug)]
pub struct QActs {
    pub t: usize,
    pub cols: usize,
    /// [t · cols] codes `q`.
    pub q: Vec<i8>,
    /// [t · nb] block scales `dx`.
    pub dx: Vec<f32>,
    /// [t · nb] `dx · Σ q` per block.
    pub sx: Vec<f32>,
    /// [t · nb] `Σ q` per block.
    pub sum_q: Vec<i32>,
}

fn f16_at(b: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

impl QActs {
    /// Quantizes `x: [t, cols]` per token and per block of 32 (`cols` a multiple of 32).
    pub fn quantize(x: &[f32], t: usize, cols: usize) -> QActs {
        assert!(
            cols.is_multiple_of(QK) && x.len() == t * cols,
            "QActs::quantize: [{t} x {cols}] from {} values",
            x.len()
        );
        let nb = cols / QK;
        let mut a = QActs {
            t,
            cols,
            q: vec![0; t * cols],
            dx: vec![0.0; t * nb],
            sx: vec![0.0; t * nb],
            sum_q: vec![0; t * nb],
        };
        #[cfg(target_arch = "x86_64")]
        if avx512::usable() {
            // SAFETY: AVX-512 F support checked by usable().
            unsafe { avx512::quantize(x, &mut a) };
            return a;
        }
        quantize_scalar(x, &mut a);
        a
    }
}

/// Per block: `dx = max |x| / 127`, `q = round(x / dx)` half to even (as llama.cpp's SIMD
/// quantizer rounds), `Σ q`, `dx · Σ q`. The AVX-512 version gives the same bits.
pub fn quantize_scalar(x: &[f32], a: &mut QActs) {
    // Adding and subtracting 1.5 · 2^23 rounds an |r| < 2^22 to an integer, half to even, in
    // plain f32 arithmetic (no libm call, so the loop vectorizes).
    const MAGIC: f32 = 12_582_912.0;
    for (i, (xb, qb)) in x.chunks_exact(QK).zip(a.q.chunks_exact_mut(QK)).enumerate() {
        let mut amax = 0.0f32;
        for &v in xb {
            let m = v.abs();
            amax = if m > amax { m } else { amax };
        }
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut r = [0.0f32; QK];
        for (o, &v) in r.iter_mut().zip(xb) {
            // |v · id| ≤ 127 up to rounding; the clamp only guards that rounding.
            *o = ((v * id).clamp(-127.0, 127.0) + MAGIC) - MAGIC;
        }
        let mut s = 0i32;
        for (q, &v) in qb.iter_mut().zip(&r) {
            *q = v as i8;
            s += v as i32;
        }
        a.dx[i] = d;
        a.sum_q[i] = s;
        a.sx[i] = d * s as f32;
    }
}

impl QdotMatrix {
    /// Re-lays GGUF blocks of a `rows × cols` matrix; `None` for another type or wrong sizes.
    pub fn from_gguf(dtype: DType, bytes: &[u8], rows: usize, cols: usize) -> Option<QdotMatrix> {
        let ok = matches!(dtype, DType::Q8_0 | DType::Q4_0 | DType::Q4_1)
            && cols.is_multiple_of(QK)
            && rows.checked_mul(cols).and_then(|n| dtype.byte_len(n)) == Some(bytes.len());
        if !ok {
            return None;
        }
        let (nb, groups) = (cols / QK, rows.div_ceil(GROUP));
        let has_m = dtype == DType::Q4_1;
        let mut m = QdotMatrix {
            rows,
            cols,
            nb,
            groups,
            zero: match dtype {
                DType::Q8_0 => 128,
                DType::Q4_0 => 8,
                _ => 0,
            },
            codes: vec![0; groups * nb * TILE],
            d: vec![0.0; groups * nb * GROUP],
            m: if has_m { vec![0.0; groups * nb * GROUP] } else { Vec::new() },
        };
        let bb = dtype.block_bytes();
        let mut u = [0u8; QK];
        for r in 0..rows {
            let (g, i) = (r / GROUP, r % GROUP);
            for b in 0..nb {
                let blk = &bytes[(r * nb + b) * bb..(r * nb + b + 1) * bb];
                let nibbles = |q: &[u8], u: &mut [u8; QK]| {
                    for (j, &v) in q.iter().enumerate() {
                        u[j] = v & 15;
                        u[j + QK / 2] = v >> 4;
                    }
                };
                match dtype {
                    DType::Q8_0 => u.iter_mut().zip(&blk[2..]).for_each(|(c, &q)| *c = q ^ 0x80),
                    DType::Q4_0 => nibbles(&blk[2..], &mut u),
                    _ => nibbles(&blk[4..], &mut u),
                }
                let s = (g * nb + b) * GROUP + i;
                m.d[s] = f16_at(blk);
                if has_m {
                    m.m[s] = f16_at(&blk[2..]);
                }
                for (j, &c) in u.iter().enumerate() {
                    let o = m.offset(r, b * QK + j);
                    m.codes[o] = c;
                }
            }
        }
        Some(m)
    }

    /// Where the code of element (r, j) lives in `codes`.
    #[inline]
    fn offset(&self, r: usize, j: usize) -> usize {
        let (g, i, b, w) = (r / GROUP, r % GROUP, j / QK, j % QK);
        (g * self.nb + b) * TILE + (w / 4) * 64 + i * 4 + w % 4
    }

    /// Bytes held in memory.
    pub fn bytes(&self) -> usize {
        self.codes.len() + 4 * (self.d.len() + self.m.len())
    }

    /// Row `r` decoded to f32 (`d · (u − z) + m`: the same values as dequantizing the GGUF block).
    ///
    /// # Shapes
    /// - `out`: [cols]
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        assert_eq!(out.len(), self.cols);
        let (g, i) = (r / GROUP, r % GROUP);
        for (j, o) in out.iter_mut().enumerate() {
            let s = (g * self.nb + j / QK) * GROUP + i;
            let v = self.d[s] * (self.codes[self.offset(r, j)] as i32 - self.zero) as f32;
            *o = if self.m.is_empty() { v } else { v + self.m[s] };
        }
    }

    /// `z · Σ q` per (token, block): the zero-point correction of the integer sums.
    fn zero_terms(&self, a: &QActs) -> Vec<i32> {
        a.sum_q.iter().map(|&s| self.zero * s).collect()
    }

    /// `y = x · Wᵀ` with `x` quantized per block of 32 to 8 bits.
    ///
    /// # Shapes
    /// - `x`: [t, cols]; returns [t, rows]
    pub fn forward(&self, x: &[f32], t: usize) -> Vec<f32> {
        self.forward_q(&QActs::quantize(x, t, self.cols))
    }

    /// The product on activations already quantized (shared by matrices with the same input).
    pub fn forward_q(&self, a: &QActs) -> Vec<f32> {
        assert_eq!(a.cols, self.cols, "QdotMatrix: activations of width {} for {} columns", a.cols, self.cols);
        let (t, rows) = (a.t, self.rows);
        let mut y = vec![0.0f32; t * rows];
        let zx = self.zero_terms(a);
        let kernel = select();
        let run = |gr: Range<usize>, out: &mut [f32]| kernel(self, a, &zx, gr, out);
        let work = rows * self.cols * t;
        let threads = rayon::current_num_threads();
        if threads <= 1 || work < PAR_MIN_WORK || self.groups < 2 {
            run(0..self.groups, &mut y);
            return y;
        }
        // Chunks of whole groups, about 4 per thread; each computes its [t, rows of the chunk]
        // block, copied into its columns of y afterwards.
        let per = self.groups.div_ceil(threads * 4).max(1);
        let chunks: Vec<(usize, Vec<f32>)> = (0..self.groups.div_ceil(per))
            .into_par_iter()
            .map(|c| {
                let g0 = c * per;
                let g1 = (g0 + per).min(self.groups);
                let nr = (g1 * GROUP).min(rows) - g0 * GROUP;
                let mut out = vec![0.0f32; t * nr];
                run(g0..g1, &mut out);
                (g0 * GROUP, out)
            })
            .collect();
        for (r0, out) in chunks {
            let nr = out.len() / t;
            for (k, src) in out.chunks_exact(nr).enumerate() {
                y[k * rows + r0..k * rows + r0 + nr].copy_from_slice(src);
            }
        }
        y
    }
}

/// A kernel over row groups `gr`: writes `out: [t, nr]` where `nr` counts the real rows of the
/// groups (the padding rows of the last group are computed but not stored).
pub type Kernel = fn(&QdotMatrix, &QActs, &[i32], Range<usize>, &mut [f32]);

/// The AVX-512 VNNI kernel when this CPU has it and the kernel ISA is not forced below
/// AVX-512 (`--isa` / `BIMAMBA_ISA`), else the scalar one.
pub fn select() -> Kernel {
    #[cfg(target_arch = "x86_64")]
    if avx512::usable() {
        return avx512::groups_safe;
    }
    groups_scalar
}

/// The scalar kernel: the specification (module docs) in the order the SIMD kernel adds.
pub fn groups_scalar(m: &QdotMatrix, a: &QActs, zx: &[i32], gr: Range<usize>, out: &mut [f32]) {
    let (nb, t) = (m.nb, a.t);
    let r0 = gr.start * GROUP;
    let nr = (gr.end * GROUP).min(m.rows) - r0;
    assert_eq!(out.len(), t * nr);
    for r in r0..r0 + nr {
        let (g, i) = (r / GROUP, r % GROUP);
        for k in 0..t {
            let mut y = 0.0f32;
            for b in 0..nb {
                let q = &a.q[k * m.cols + b * QK..][..QK];
                let mut v = 0i32;
                for (w, &qj) in q.iter().enumerate() {
                    v += m.codes[m.offset(r, b * QK + w)] as i32 * qj as i32;
                }
                let s = (g * nb + b) * GROUP + i;
                let kb = k * nb + b;
                y += (v - zx[kb]) as f32 * (m.d[s] * a.dx[kb]);
                if !m.m.is_empty() {
                    y += m.m[s] * a.sx[kb];
                }
            }
            out[k * nr + r - r0] = y;
        }
    }
}
