//! The loop order shared by every SIMD kernel: register tiles inside row panels.
//!
//! The output block `[t tokens] x [row range]` is cut into panels of [`PANEL`] rows. Within a
//! panel, token blocks of `tb` walk over register tiles of `rb` rows × `tb` tokens, so a panel's
//! weights (64 packed rows are 64 · cols / 8 bytes, ~20 KiB at cols = 2560) stay in L1/L2 while
//! every token block reuses them: weights are read from memory once per call, activations once per
//! panel. Tokens left over after the last full block (`t % tb`, and every token when `t < tb`)
//! use the matrix-vector tile of `rbv` rows × 1 token; rows left over at the end of the range
//! use one-row tiles.

use std::ops::Range;

/// Rows per panel; a multiple of every ISA's `rb` and `rbv`, and of the parallel row chunks.
pub const PANEL: usize = 64;

/// Register-tile shapes of one kernel.
#[derive(Clone, Copy, Debug)]
pub struct Tiles {
    /// Rows per matrix-matrix tile.
    pub rb: usize,
    /// Tokens per matrix-matrix tile.
    pub tb: usize,
    /// Rows per matrix-vector (one token) tile.
    pub rbv: usize,
}

/// Calls `f(row, nrows, token, ntokens)` for every tile covering `range × 0..t`, where
/// `(nrows, ntokens)` is one of `(rb, tb)`, `(1, tb)`, `(rbv, 1)`, `(1, 1)`. Each output element
/// is covered exactly once.
pub fn for_each_tile(range: Range<usize>, t: usize, tiles: Tiles, mut f: impl FnMut(usize, usize, usize, usize)) {
    let Tiles { rb, tb, rbv } = tiles;
    debug_assert!(PANEL.is_multiple_of(rb) && PANEL.is_multiple_of(rbv) && tb >= 1);
    let full_tokens = t / tb * tb;
    let mut p0 = range.start;
    while p0 < range.end {
        let p1 = (p0 + PANEL).min(range.end);
        for k in (0..full_tokens).step_by(tb) {
            let mut r = p0;
            while r + rb <= p1 {
                f(r, rb, k, tb);
                r += rb;
            }
            for r in r..p1 {
                f(r, 1, k, tb);
            }
        }
        for k in full_tokens..t {
            let mut r = p0;
            while r + rbv <= p1 {
                f(r, rbv, k, 1);
                r += rbv;
            }
            for r in r..p1 {
                f(r, 1, k, 1);
            }
        }
        p0 = p1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_each_element_once() {
        let tiles = Tiles { rb: 4, tb: 3, rbv: 8 };
        for &(r0, r1, t) in &[(0, 1, 1), (0, 64, 1), (5, 200, 7), (64, 130, 3), (0, 9, 2)] {
            let nr = r1 - r0;
            let mut hits = vec![0u32; t * nr];
            for_each_tile(r0..r1, t, tiles, |r, nrows, k, nt| {
                assert!(matches!((nrows, nt), (4, 3) | (1, 3) | (8, 1) | (1, 1)));
                for kk in k..k + nt {
                    for i in r..r + nrows {
                        hits[kk * nr + i - r0] += 1;
                    }
                }
            });
            assert!(hits.iter().all(|&h| h == 1), "{r0}..{r1} t={t}");
        }
    }
}
