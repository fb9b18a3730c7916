//! The register-blocked product kernel of the SSD scan (`--ssd-products blocked`).
//!
//! It computes the same batched, strided product as the kernels of `ssd_product.rs` (that
//! module's documentation has the formula, the factors, the decay mask and the broadcast of
//! groups over heads), with more work per thread and less per element loaded:
//! - one cube of 128 threads computes a 128 × 64 output tile (64 × 128 where the output has fewer
//!   rows than columns), so that the scan's usual outputs (T × P, T × T, T × N, P × N at T = 128)
//!   are one or two cubes per (batch, chunk, head);
//! - each thread accumulates an 8 × 8 block in registers, rows `ty + (rows/8)·i` and columns
//!   `tx + (cols/8)·j`, from 16-deep shared-memory slices: 16 shared loads per 64 multiply-adds
//!   (the 64 × 64 kernel of `ssd_product.rs` makes 8 per 16), with a warp's loads falling on
//!   consecutive or equal words;
//! - the strides are read once per cube, and the cube is launched without CubeCL's per-access
//!   bounds checks: every global read and write is guarded by the tile's own bounds;
//! - shared-memory lines are padded by one word, so that the 16 threads storing one line's
//!   consecutive inner indices hit different banks.
//!
//! The 64 × 64 kernel (`--ssd-products simple`, the default until this one is measured on a
//! GPU) is its reference on the device: both sum each output over the inner index in the same
//! order, and `bimamba-train check-kernels` checks each against the op-by-op scan and the two
//! against each other.

use cubecl::prelude::*;

use super::ssd_product::{decay_factor, place_tile, scale_base, Place};

/// Threads of a blocked product cube.
pub const BLOCKED_THREADS: u32 = 128;
/// The long side of a blocked cube's output tile.
pub const BLOCK_LONG: usize = 128;
/// The short side of a blocked cube's output tile.
pub const BLOCK_SHORT: usize = 64;
/// Depth of one shared-memory slice of the inner dimension.
const DEPTH: usize = 16;
/// Rows (and columns) of each thread's block.
const PER: usize = 8;

/// The strides and extents a cube reads on every load, read once.
#[derive(CubeType)]
struct Strides {
    a_m: usize,
    a_k: usize,
    a_rows: usize,
    b_k: usize,
    b_n: usize,
    b_cols: usize,
    k: usize,
    lam: usize,
}

/// A[gm, gk] · u_gk · D(gm, gk), or 0 outside the matrix and the inner range.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_a(
    a: &Tensor<f32>,
    kscale: &Tensor<f32>,
    acs: &Tensor<f32>,
    p: &Place,
    s: &Strides,
    gm: usize,
    gk: usize,
    #[comptime] has_k: bool,
    #[comptime] decay: u32,
) -> f32 {
    let mut v = 0.0f32;
    if gm < s.a_rows && gk < p.k_end {
        v = a[p.a_base + gm * s.a_m + gk * s.a_k];
        if has_k {
            v *= kscale[p.k_base + gk * s.k];
        }
        if comptime![decay == 1] {
            v *= decay_factor(acs, p.lam, s.lam, gm, gk, false);
        }
        if comptime![decay == 2] {
            v *= decay_factor(acs, p.lam, s.lam, gm, gk, true);
        }
    }
    v
}

/// B[gk, gn], or 0 outside the matrix and the inner range.
#[cube]
fn load_b(b: &Tensor<f32>, p: &Place, s: &Strides, gk: usize, gn: usize) -> f32 {
    let mut w = 0.0f32;
    if gk < p.k_end && gn < s.b_cols {
        w = b[p.b_base + gk * s.b_k + gn * s.b_n];
    }
    w
}

/// One batched product tile (module documentation). Grid: x over column tiles, y over row
/// tiles, z over batch × chunk × head; `tall`: 128 × 64 tiles, else 64 × 128. The other
/// arguments are those of `ssd_product_kernel`. Launched unchecked: every access is guarded here.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn ssd_product_blocked_kernel(
    a: &Tensor<f32>,
    b: &Tensor<f32>,
    out: &mut Tensor<f32>,
    kscale: &Tensor<f32>,
    rscale: &Tensor<f32>,
    cscale: &Tensor<f32>,
    acs: &Tensor<f32>,
    #[comptime] has_k: bool,
    #[comptime] has_r: bool,
    #[comptime] has_c: bool,
    #[comptime] decay: u32,
    #[comptime] accumulate: bool,
    #[comptime] a_k_fast: bool,
    #[comptime] b_n_fast: bool,
    #[comptime] tall: bool,
) {
    let bm = comptime![if tall { BLOCK_LONG } else { BLOCK_SHORT }];
    let bn = comptime![if tall { BLOCK_SHORT } else { BLOCK_LONG }];
    // Row and column steps of a thread's block; shared lines of A and B, padded by one word.
    let rs = comptime![bm / PER];
    let cs = comptime![bn / PER];
    let la = comptime![bm + 1];
    let lb = comptime![bn + 1];
    let p = place_tile(a, b, out, kscale, acs, has_k, decay, bm, bn);
    let s = Strides {
        a_m: a.stride(3),
        a_k: a.stride(4),
        a_rows: a.shape(3),
        b_k: b.stride(3),
        b_n: b.stride(4),
        b_cols: b.shape(4),
        k: kscale.stride(3),
        lam: acs.stride(3),
    };
    let unit = UNIT_POS_X as usize;
    let tx = unit % cs;
    let ty = unit / cs;

    let mut sa = SharedMemory::<f32>::new(comptime![DEPTH * (bm + 1)]);
    let mut sb = SharedMemory::<f32>::new(comptime![DEPTH * (bn + 1)]);
    let mut acc = Array::<f32>::new(64usize);
    #[unroll]
    for e in 0..64usize {
        acc[e] = 0.0;
    }
    let mut k0 = p.k_begin;
    while k0 < p.k_end {
        // A's slice, bm × 16, and B's, 16 × bn: consecutive threads load consecutive words.
        #[unroll]
        for r in 0..comptime![bm * DEPTH / 128] {
            let e = unit + r * 128;
            let mut mm = e % bm;
            let mut kk = e / bm;
            if a_k_fast {
                mm = e / DEPTH;
                kk = e % DEPTH;
            }
            sa[kk * la + mm] = load_a(a, kscale, acs, &p, &s, p.tile_m + mm, k0 + kk, has_k, decay);
        }
        #[unroll]
        for r in 0..comptime![bn * DEPTH / 128] {
            let e = unit + r * 128;
            let mut kb = e % DEPTH;
            let mut nn = e / DEPTH;
            if b_n_fast {
                kb = e / bn;
                nn = e % bn;
            }
            sb[kb * lb + nn] = load_b(b, &p, &s, k0 + kb, p.tile_n + nn);
        }
        sync_cube();
        #[unroll]
        for kk in 0..DEPTH {
            let mut av = Array::<f32>::new(8usize);
            let mut bv = Array::<f32>::new(8usize);
            #[unroll]
            for i in 0..PER {
                av[i] = sa[kk * la + ty + rs * i];
            }
            #[unroll]
            for j in 0..PER {
                bv[j] = sb[kk * lb + tx + cs * j];
            }
            #[unroll]
            for i in 0..PER {
                #[unroll]
                for j in 0..PER {
                    acc[i * PER + j] += av[i] * bv[j];
                }
            }
        }
        sync_cube();
        k0 += DEPTH;
    }

    // out (=, or +=) r ⊙ acc ⊙ c, inside the output only.
    let rows = out.shape(3);
    let cols = out.shape(4);
    let o_base = p.z0 * out.stride(0) + p.z1 * out.stride(1) + p.z2 * out.stride(2);
    let o_m = out.stride(3);
    let o_n = out.stride(4);
    let mut cv = Array::<f32>::new(8usize);
    let mut c_base = 0usize;
    if has_c {
        c_base = scale_base(cscale, &p);
    }
    #[unroll]
    for j in 0..PER {
        cv[j] = 1.0;
        if has_c {
            let gn = p.tile_n + tx + cs * j;
            if gn < cols {
                cv[j] = cscale[c_base + gn * cscale.stride(3)];
            }
        }
    }
    let mut r_base = 0usize;
    if has_r {
        r_base = scale_base(rscale, &p);
    }
    #[unroll]
    for i in 0..PER {
        let gm = p.tile_m + ty + rs * i;
        if gm < rows {
            let mut rv = 1.0f32;
            if has_r {
                rv = rscale[r_base + gm * rscale.stride(3)];
            }
            #[unroll]
            for j in 0..PER {
                let gn = p.tile_n + tx + cs * j;
                if gn < cols {
                    let o = o_base + gm * o_m + gn * o_n;
                    let mut v = acc[i * PER + j] * rv * cv[j];
                    if accumulate {
                        v += out[o];
                    }
                    out[o] = v;
                }
            }
        }
    }
}
