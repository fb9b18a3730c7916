//! AArch64 Advanced SIMD (NEON) kernels. Every function here requires NEON at runtime; the
//! dispatcher in `lib.rs` checks [`crate::Isa::is_supported`] before calling.
//!
//! Not exercised by CI on x86-64 hosts; the algorithms mirror the AVX2 kernels and the scalar
//! helpers they rely on (`scalar::f16_to_f32_magic`) are tested on every host.
//!
//! # Binary product
//! Each packed byte covers 8 columns, two groups of 4 lanes. `vtst(dup(byte), [1,2,4,8])` (and
//! `[16,32,64,128]`) gives all-ones lanes where the sign bit is 1; `SIGN & ¬mask` is the IEEE
//! sign flip for `s = −1`, so `s·x = x XOR flip` exactly. The last `cols % 8` columns use the
//! scalar rule, so no load reads past `cols`.
//!
//! # Dense product
//! bf16 widens by a 16-bit left shift; f16 by the branch-free bit construction of
//! `scalar::f16_to_f32_magic` (stable Rust has no f16 vector type to call `fcvtl` on); i8 (the
//! q8 codes) by two sign-extending `sxtl` (`vmovl_s8`, `vmovl_s16`) and `scvtf` (exact).

// Register tiles index accumulators as acc[row][token]; explicit ranges read clearer.
#![allow(clippy::needless_range_loop)]

use std::arch::aarch64::*;
use std::ops::Range;

use half::{bf16, f16};

use crate::pack::row_bytes;
use crate::tiling::{for_each_tile, Tiles};

/// 4 rows × 4 tokens (16 accumulators of 32), 8 rows for one token.
const TILES: Tiles = Tiles { rb: 4, tb: 4, rbv: 8 };

static BITS_LO: [u32; 4] = [1, 2, 4, 8];
static BITS_HI: [u32; 4] = [16, 32, 64, 128];

struct BinCtx<'a> {
    bits: &'a [u8],
    rbytes: usize,
    cols: usize,
    x: &'a [f32],
    r0: usize,
    nr: usize,
}

#[inline(always)]
unsafe fn flip_add(acc: float32x4_t, x: float32x4_t, flip: uint32x4_t) -> float32x4_t {
    vaddq_f32(acc, vreinterpretq_f32_u32(veorq_u32(vreinterpretq_u32_f32(x), flip)))
}

#[target_feature(enable = "neon")]
unsafe fn bin_tile<const RB: usize, const TB: usize>(c: &BinCtx, r: usize, k: usize, y: &mut [f32]) {
    unsafe {
        let cols = c.cols;
        let bp = c.bits.as_ptr().add(r * c.rbytes);
        let xp = c.x.as_ptr().add(k * cols);
        let sign = vdupq_n_u32(0x8000_0000);
        let lo = vld1q_u32(BITS_LO.as_ptr());
        let hi = vld1q_u32(BITS_HI.as_ptr());
        let mut acc = [[vdupq_n_f32(0.0); TB]; RB];
        let nbytes = cols / 8;
        for b in 0..nbytes {
            let mut xl = [vdupq_n_f32(0.0); TB];
            let mut xh = [vdupq_n_f32(0.0); TB];
            for kk in 0..TB {
                xl[kk] = vld1q_f32(xp.add(kk * cols + 8 * b));
                xh[kk] = vld1q_f32(xp.add(kk * cols + 8 * b + 4));
            }
            for i in 0..RB {
                let byte = vdupq_n_u32(*bp.add(i * c.rbytes + b) as u32);
                let fl = vbicq_u32(sign, vtstq_u32(byte, lo));
                let fh = vbicq_u32(sign, vtstq_u32(byte, hi));
                for kk in 0..TB {
                    acc[i][kk] = flip_add(flip_add(acc[i][kk], xl[kk], fl), xh[kk], fh);
                }
            }
        }
        let tail = cols % 8;
        for i in 0..RB {
            for kk in 0..TB {
                let mut s = vaddvq_f32(acc[i][kk]);
                if tail != 0 {
                    // The tail byte exists: 8·nbytes < cols <= 8·rbytes.
                    let last = *bp.add(i * c.rbytes + nbytes);
                    for j in 8 * nbytes..cols {
                        let xj = *xp.add(kk * cols + j);
                        s += if (last >> (j % 8)) & 1 == 1 { xj } else { -xj };
                    }
                }
                *y.get_unchecked_mut((k + kk) * c.nr + r - c.r0 + i) = s;
            }
        }
    }
}

/// Binary product over output rows `range`: `y: [t, range.len()]`.
///
/// # Safety
/// The CPU must support NEON.
pub unsafe fn binary_rows(bits: &[u8], cols: usize, x: &[f32], t: usize, range: Range<usize>, y: &mut [f32]) {
    unsafe {
        let rbytes = row_bytes(cols);
        assert!(bits.len() >= range.end * rbytes && x.len() >= t * cols);
        assert_eq!(y.len(), t * range.len());
        let c = BinCtx { bits, rbytes, cols, x, r0: range.start, nr: range.len() };
        for_each_tile(range, t, TILES, |r, nrows, k, ntok| match (nrows, ntok) {
            (4, 4) => bin_tile::<4, 4>(&c, r, k, y),
            (1, 4) => bin_tile::<1, 4>(&c, r, k, y),
            (8, 1) => bin_tile::<8, 1>(&c, r, k, y),
            _ => bin_tile::<1, 1>(&c, r, k, y),
        });
    }
}

/// Loading 4 consecutive weights as f32 lanes.
trait Load4: Copy {
    unsafe fn load4(p: *const Self) -> float32x4_t;
    fn widen(self) -> f32;
}

impl Load4 for f32 {
    #[inline(always)]
    unsafe fn load4(p: *const f32) -> float32x4_t {
        unsafe { vld1q_f32(p) }
    }
    fn widen(self) -> f32 {
        self
    }
}

impl Load4 for bf16 {
    /// bf16 is the top half of an f32: zero-extend to 32 bits and shift left by 16 (exact).
    #[inline(always)]
    unsafe fn load4(p: *const bf16) -> float32x4_t {
        unsafe { vreinterpretq_f32_u32(vshlq_n_u32::<16>(vmovl_u16(vld1_u16(p.cast())))) }
    }
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

impl Load4 for f16 {
    /// Lane-wise `scalar::f16_to_f32_magic`: `(h & 0x7fff) << 13` read as f32 and scaled by
    /// 2^112 rebiases the exponent (exact for normals and subnormals); inf/NaN get exponent 255.
    #[inline(always)]
    unsafe fn load4(p: *const f16) -> float32x4_t {
        unsafe {
            let h = vmovl_u16(vld1_u16(p.cast()));
            let em = vandq_u32(h, vdupq_n_u32(0x7fff));
            let shifted = vshlq_n_u32::<13>(em);
            let scaled = vreinterpretq_u32_f32(vmulq_f32(
                vreinterpretq_f32_u32(shifted),
                vdupq_n_f32(f32::from_bits(0x7780_0000)),
            ));
            let special = vcgeq_u32(em, vdupq_n_u32(0x7c00));
            let mag = vbslq_u32(special, vorrq_u32(shifted, vdupq_n_u32(0x7f80_0000)), scaled);
            let sign = vshlq_n_u32::<16>(vandq_u32(h, vdupq_n_u32(0x8000)));
            vreinterpretq_f32_u32(vorrq_u32(mag, sign))
        }
    }
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

impl Load4 for i8 {
    /// The 4 codes read as one unaligned u32 (exactly 4 bytes), sign-extended i8 → i16 → i32,
    /// converted to f32 (exact for every i8).
    #[inline(always)]
    unsafe fn load4(p: *const i8) -> float32x4_t {
        unsafe {
            let word = std::ptr::read_unaligned(p.cast::<u32>());
            let b = vreinterpret_s8_u32(vdup_n_u32(word));
            vcvtq_f32_s32(vmovl_s16(vget_low_s16(vmovl_s8(b))))
        }
    }
    fn widen(self) -> f32 {
        self as f32
    }
}

struct DenseCtx<'a, E> {
    w: &'a [E],
    cols: usize,
    x: &'a [f32],
    r0: usize,
    nr: usize,
}

#[target_feature(enable = "neon")]
unsafe fn dense_tile<E: Load4, const RB: usize, const TB: usize>(c: &DenseCtx<E>, r: usize, k: usize, y: &mut [f32]) {
    unsafe {
        let cols = c.cols;
        let wp = c.w.as_ptr().add(r * cols);
        let xp = c.x.as_ptr().add(k * cols);
        let mut acc = [[vdupq_n_f32(0.0); TB]; RB];
        let nfull = cols / 4;
        for ch in 0..nfull {
            let mut wv = [vdupq_n_f32(0.0); RB];
            for (i, wi) in wv.iter_mut().enumerate() {
                *wi = E::load4(wp.add(i * cols + 4 * ch));
            }
            for kk in 0..TB {
                let xv = vld1q_f32(xp.add(kk * cols + 4 * ch));
                for i in 0..RB {
                    acc[i][kk] = vfmaq_f32(acc[i][kk], wv[i], xv);
                }
            }
        }
        for i in 0..RB {
            for kk in 0..TB {
                let mut s = vaddvq_f32(acc[i][kk]);
                for j in 4 * nfull..cols {
                    s += (*wp.add(i * cols + j)).widen() * *xp.add(kk * cols + j);
                }
                *y.get_unchecked_mut((k + kk) * c.nr + r - c.r0 + i) = s;
            }
        }
    }
}

#[target_feature(enable = "neon")]
unsafe fn dense_rows<E: Load4>(w: &[E], cols: usize, x: &[f32], t: usize, range: Range<usize>, y: &mut [f32]) {
    unsafe {
        assert!(w.len() >= range.end * cols && x.len() >= t * cols);
        assert_eq!(y.len(), t * range.len());
        let c = DenseCtx { w, cols, x, r0: range.start, nr: range.len() };
        for_each_tile(range, t, TILES, |r, nrows, k, ntok| match (nrows, ntok) {
            (4, 4) => dense_tile::<E, 4, 4>(&c, r, k, y),
            (1, 4) => dense_tile::<E, 1, 4>(&c, r, k, y),
            (8, 1) => dense_tile::<E, 8, 1>(&c, r, k, y),
            _ => dense_tile::<E, 1, 1>(&c, r, k, y),
        });
    }
}

/// Dense f32 product over output rows `range`: `y: [t, range.len()]`.
///
/// # Safety
/// The CPU must support NEON.
pub unsafe fn dense_rows_f32(w: &[f32], cols: usize, x: &[f32], t: usize, range: Range<usize>, y: &mut [f32]) {
    unsafe { dense_rows(w, cols, x, t, range, y) }
}

/// Dense bf16 product (see [`dense_rows_f32`]).
///
/// # Safety
/// The CPU must support NEON.
pub unsafe fn dense_rows_bf16(w: &[bf16], cols: usize, x: &[f32], t: usize, range: Range<usize>, y: &mut [f32]) {
    unsafe { dense_rows(w, cols, x, t, range, y) }
}

/// Dense f16 product (see [`dense_rows_f32`]).
///
/// # Safety
/// The CPU must support NEON.
pub unsafe fn dense_rows_f16(w: &[f16], cols: usize, x: &[f32], t: usize, range: Range<usize>, y: &mut [f32]) {
    unsafe { dense_rows(w, cols, x, t, range, y) }
}

/// Dense product over i8 codes (the q8 kernel before its row scales; see `crate::q8_gemm`).
///
/// # Safety
/// The CPU must support NEON.
pub unsafe fn dense_rows_i8(w: &[i8], cols: usize, x: &[f32], t: usize, range: Range<usize>, y: &mut [f32]) {
    unsafe { dense_rows(w, cols, x, t, range, y) }
}
