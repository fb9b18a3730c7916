//! The panel layout of a q8 matrix ([`crate::q8`]): the same i8 codes in the operand order of
//! `vpdpbusd` with one i32 lane per row, so that the int8-activation LM head
//! (`x86::avx512_vnni_q8_panels`) reads each weight once, with plain 64-byte loads, for all the
//! tokens of a call. Layout, conversions, and the product's scalar twin.
//!
//! # Layout
//! Rows are grouped in panels of [`PANEL_ROWS`] = 32. Panel `p` (rows `32p .. 32p + 32`) occupies
//! the same `32 · cols` bytes it occupies in row-major order, arranged column group by column
//! group (4 columns per group, `cols` a multiple of 4):
//! ```text
//! byte 32p · cols + 128 · g + 4 · r + j  =  q[32p + r, 4g + j]        r < 32, j < 4, g < cols / 4
//! ```
//! so 64 consecutive bytes are 16 rows × 4 columns, one `vpdpbusd` operand. The last
//! `rows mod 32` rows (fewer than a panel) stay row-major after the panels. Converting either
//! way permutes bytes within a panel only, in place.
//!
//! # The product
//! Exactly [`crate::q8_act8`]'s: `S[k, v] = Σ_d q[v, d] · xq[k, d]` (exact in i32) and
//! `y[k, v] = (f32(S) · xs_k) · s_v`, so a matrix in panels gives the bits of the same matrix in
//! rows. Only the order in which the kernel reads the codes changes.

use std::ops::Range;

use crate::act8::Act8;
use crate::q8_act8::{check_rows, dequantize, MAX_COLS};

/// Rows per panel: two vectors of 16 i32 lanes.
pub const PANEL_ROWS: usize = 32;

/// Columns per group (the four bytes of one `vpdpbusd` lane).
pub const GROUP: usize = 4;

/// Bytes of one column group of a panel: 32 rows × 4 columns.
pub const GROUP_BYTES: usize = PANEL_ROWS * GROUP;

/// Whether a `[rows, cols]` q8 matrix can be stored in panels: `cols` a positive multiple of
/// [`GROUP`] within the kernels' [`MAX_COLS`] (any `rows`; a matrix of fewer than 32 rows is
/// all tail, i.e. unchanged).
pub fn supports(cols: usize) -> bool {
    cols > 0 && cols.is_multiple_of(GROUP) && cols <= MAX_COLS
}

/// Rows stored in panels: `rows` rounded down to a multiple of [`PANEL_ROWS`].
pub fn panel_rows(rows: usize) -> usize {
    rows - rows % PANEL_ROWS
}

/// Position of `q[v, d]` in a matrix stored in panels (see the module doc).
#[inline(always)]
pub fn index(rows: usize, cols: usize, v: usize, d: usize) -> usize {
    if v >= panel_rows(rows) {
        return v * cols + d;
    }
    let (p, r) = (v / PANEL_ROWS, v % PANEL_ROWS);
    p * PANEL_ROWS * cols + GROUP_BYTES * (d / GROUP) + GROUP * r + d % GROUP
}

fn check_layout(q: &[i8], rows: usize, cols: usize, what: &str) {
    assert!(supports(cols), "{what}: {cols} columns cannot be stored in panels");
    assert_eq!(q.len(), rows * cols, "{what}: q has {} elements, expected [{rows} x {cols}]", q.len());
}

/// Rearranges a row-major `q: [rows, cols]` into panels, in place.
///
/// # Panics
/// Unless [`supports`]`(cols)` and `q.len() == rows · cols` (caller bugs).
pub fn to_panels(q: &mut [i8], rows: usize, cols: usize) {
    check_layout(q, rows, cols, "q8 panels");
    let mut tmp = vec![0i8; PANEL_ROWS * cols];
    for panel in q[..panel_rows(rows) * cols].chunks_exact_mut(PANEL_ROWS * cols) {
        tmp.copy_from_slice(panel);
        for (r, row) in tmp.chunks_exact(cols).enumerate() {
            for (g, four) in row.chunks_exact(GROUP).enumerate() {
                panel[GROUP_BYTES * g + GROUP * r..][..GROUP].copy_from_slice(four);
            }
        }
    }
}

/// The inverse of [`to_panels`]: panels back to row-major order, in place.
///
/// # Panics
/// As [`to_panels`].
pub fn to_rows(q: &mut [i8], rows: usize, cols: usize) {
    check_layout(q, rows, cols, "q8 panels");
    let mut tmp = vec![0i8; PANEL_ROWS * cols];
    for panel in q[..panel_rows(rows) * cols].chunks_exact_mut(PANEL_ROWS * cols) {
        tmp.copy_from_slice(panel);
        panel_rows_into(&tmp, cols, panel);
    }
}

/// One panel `src` (`32 · cols` bytes in panel order) into `dst` in row-major order.
fn panel_rows_into(src: &[i8], cols: usize, dst: &mut [i8]) {
    for (r, row) in dst.chunks_exact_mut(cols).enumerate() {
        for (g, four) in row.chunks_exact_mut(GROUP).enumerate() {
            four.copy_from_slice(&src[GROUP_BYTES * g + GROUP * r..][..GROUP]);
        }
    }
}

/// Row `v` of a matrix stored in panels, into `out` (`cols` codes).
pub fn row_into(q: &[i8], rows: usize, cols: usize, v: usize, out: &mut [i8]) {
    check_layout(q, rows, cols, "q8 panels row");
    assert!(v < rows && out.len() == cols, "q8 panels row: row {v} of {rows} into {} codes", out.len());
    if v >= panel_rows(rows) {
        out.copy_from_slice(&q[v * cols..(v + 1) * cols]);
        return;
    }
    let base = (v / PANEL_ROWS) * PANEL_ROWS * cols + GROUP * (v % PANEL_ROWS);
    for (g, four) in out.chunks_exact_mut(GROUP).enumerate() {
        four.copy_from_slice(&q[base + GROUP_BYTES * g..][..GROUP]);
    }
}

/// Rows `range` of a matrix stored in panels, row-major into `out: [range.len(), cols]` (the
/// f32-activation product's way to the row kernels).
pub fn rows_into(q: &[i8], rows: usize, cols: usize, range: Range<usize>, out: &mut [i8]) {
    check_layout(q, rows, cols, "q8 panels rows");
    assert!(range.start <= range.end && range.end <= rows, "q8 panels rows: {range:?} of {rows}");
    assert_eq!(out.len(), range.len() * cols, "q8 panels rows: output of {} codes", out.len());
    let mut v = range.start;
    while v < range.end {
        let dst = &mut out[(v - range.start) * cols..];
        if v.is_multiple_of(PANEL_ROWS) && v + PANEL_ROWS <= range.end && v < panel_rows(rows) {
            // A whole panel at once.
            panel_rows_into(&q[v * cols..(v + PANEL_ROWS) * cols], cols, &mut dst[..PANEL_ROWS * cols]);
            v += PANEL_ROWS;
        } else {
            row_into(q, rows, cols, v, &mut dst[..cols]);
            v += 1;
        }
    }
}

/// The scalar twin of the panel kernel: [`crate::q8_act8::rows_scalar`] reading `q` in panels
/// (`y: [t, range.len()]`, the same integer sums and roundings, so the same bits).
#[allow(clippy::too_many_arguments)]
pub fn rows_scalar(
    q: &[i8],
    scales: &[f32],
    row_sums: &[i32],
    rows: usize,
    cols: usize,
    a: &Act8,
    range: Range<usize>,
    y: &mut [f32],
) {
    check_layout(q, rows, cols, "q8 panels kernel");
    check_rows(q, scales, row_sums, cols, a, &range, y);
    let (t, nr) = (a.tokens(), range.len());
    let mut row = vec![0i8; cols];
    for (ii, v) in range.enumerate() {
        row_into(q, rows, cols, v, &mut row);
        for k in 0..t {
            let xq = &a.q[k * a.stride..k * a.stride + cols];
            let s: i32 = row.iter().zip(xq).map(|(&w, &x)| w as i32 * x as i32).sum();
            y[k * nr + ii] = dequantize(s, a.scales[k], scales[v]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(rows: usize, cols: usize) -> Vec<i8> {
        (0..rows * cols).map(|i| (i.wrapping_mul(2654435761) >> 7) as i8).collect()
    }

    /// The index formula, the in-place conversions and the row readers agree, for row counts
    /// around whole panels.
    #[test]
    fn conversions_follow_the_index() {
        for (rows, cols) in [(1, 4), (31, 8), (32, 4), (33, 12), (64, 256), (100, 20)] {
            let q = codes(rows, cols);
            let mut p = q.clone();
            to_panels(&mut p, rows, cols);
            for v in 0..rows {
                for d in 0..cols {
                    assert_eq!(p[index(rows, cols, v, d)], q[v * cols + d], "({rows},{cols}) [{v},{d}]");
                }
                let mut r = vec![0; cols];
                row_into(&p, rows, cols, v, &mut r);
                assert_eq!(r, q[v * cols..(v + 1) * cols]);
            }
            for range in [0..rows, rows / 3..rows, 1.min(rows)..rows.saturating_sub(1).max(1)] {
                let mut out = vec![0; range.len() * cols];
                rows_into(&p, rows, cols, range.clone(), &mut out);
                assert_eq!(out, q[range.start * cols..range.end * cols], "({rows},{cols}) {range:?}");
            }
            // Rows past the last whole panel are untouched; whole panels are permuted.
            let tail = panel_rows(rows) * cols;
            assert_eq!(p[tail..], q[tail..]);
            to_rows(&mut p, rows, cols);
            assert_eq!(p, q, "({rows},{cols}) round trip");
        }
    }

    #[test]
    fn supported_widths() {
        assert!(supports(4) && supports(256) && supports(MAX_COLS));
        assert!(!supports(0) && !supports(6) && !supports(MAX_COLS + 4));
    }
}
