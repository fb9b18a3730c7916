//! Lookup tables for the table-driven binary kernels (AVX-512 and AVX2): the T-MAC idea with
//! f32 tables, so that activations are never quantized.
//!
//! # The identity
//! Split the columns into groups of four, `g = 0, 1, ...` (columns `4g .. 4g+4`). For a token
//! `k`, the table of group `g` holds all 16 signed sums of its four activations:
//! `T_k[g][n] = Σ_{b<4} (bit b of n ? +x_k[4g+b] : −x_k[4g+b])`, `n = 0..16`,
//! summed as `((±x0 ± x1) ± x2) ± x3` in f32. Activations beyond `cols` count as 0, so the
//! padding bits of a row never matter. The 4 packed bits of a row for group `g` are exactly such
//! an `n` (bit `b` = column `4g + b`, LSB first; see [`crate::pack`]), hence
//! `y[k, i] = Σ_g T_k[g][nibble_g(row i)]`: one lookup and one add per 4 weights, instead of 4
//! adds. Tables are built once per call and shared by every row and thread.

use rayon::prelude::*;

use crate::pack::row_bytes;

/// Number of 4-column groups covered by a packed row, padding included.
pub fn groups(cols: usize) -> usize {
    row_bytes(cols) * 2
}

/// Length of the table buffer for `t` tokens: `[t, groups(cols), 16]` f32.
pub fn tables_len(cols: usize, t: usize) -> usize {
    t * groups(cols) * 16
}

/// Builds `tab: [t, groups(cols), 16]` from `x: [t, cols]` (see the module doc).
/// Costs `16 · cols` adds per token, negligible next to the `rows · cols / 4` lookups it saves.
pub fn build_tables(x: &[f32], cols: usize, t: usize, tab: &mut [f32]) {
    let g_n = groups(cols);
    assert!(x.len() >= t * cols, "build_tables: x has {} elements, expected [{t} x {cols}]", x.len());
    assert_eq!(tab.len(), t * g_n * 16, "build_tables: table buffer has the wrong length");
    if cols == 0 {
        tab.fill(0.0);
        return;
    }
    // Tokens are independent: split them over the rayon pool when there are many (prefill).
    let x = &x[..t * cols];
    x.par_chunks_exact(cols).zip(tab.par_chunks_exact_mut(g_n * 16)).with_min_len(16).for_each(|(xr, tk)| {
        for (g, tg) in tk.chunks_exact_mut(16).enumerate() {
            let xs: [f32; 4] = std::array::from_fn(|b| xr.get(4 * g + b).copied().unwrap_or(0.0));
            // Multiplying by ±1 is exact, so this is ((±x0 ± x1) ± x2) ± x3, written so that
            // the compiler vectorizes over n.
            for (n, e) in tg.iter_mut().enumerate() {
                *e = ((SIGNS[0][n] * xs[0] + SIGNS[1][n] * xs[1]) + SIGNS[2][n] * xs[2]) + SIGNS[3][n] * xs[3];
            }
        }
    });
}

/// `SIGNS[b][n]` = +1 if bit `b` of `n` is set, else −1.
const SIGNS: [[f32; 16]; 4] = {
    let mut s = [[0.0f32; 16]; 4];
    let mut b = 0;
    while b < 4 {
        let mut n = 0;
        while n < 16 {
            s[b][n] = if (n >> b) & 1 == 1 { 1.0 } else { -1.0 };
            n += 1;
        }
        b += 1;
    }
    s
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_hold_every_signed_sum() {
        let cols = 6; // two groups in the row plus padding groups
        let x: Vec<f32> = vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, -1.0, -2.0, -4.0, -8.0, -16.0, -32.0];
        let mut tab = vec![f32::NAN; tables_len(cols, 2)];
        build_tables(&x, cols, 2, &mut tab);
        assert_eq!(groups(cols), 16);
        for k in 0..2 {
            for g in 0..groups(cols) {
                for n in 0..16 {
                    let want: f32 = (0..4)
                        .map(|b| {
                            let v = x[k * cols..(k + 1) * cols].get(4 * g + b).copied().unwrap_or(0.0);
                            if (n >> b) & 1 == 1 {
                                v
                            } else {
                                -v
                            }
                        })
                        .sum();
                    assert_eq!(tab[(k * groups(cols) + g) * 16 + n], want, "k={k} g={g} n={n}");
                }
            }
        }
        // Group 0, n = 0b1010: −1 + 2 − 4 + 8.
        assert_eq!(tab[10], 5.0);
    }
}
