//! The products of the chunked SSD scan (`ssd_scan.rs` has the rest of its kernels;
//! `../ssd_cube.rs` launches them).
//!
//! Every product of the scan is one launch of a batched, strided product
//! `out[z][i, j] = r_i · c_j · Σ_k A[z][i, k] · u_k · D(i, k) · B[z][k, j]` over 5-D views
//! `[batch, chunk, head or group, rows, columns]`, with optional scales (u along the inner
//! dimension, r per row, c per column) and the SSD's decay mask D folded into the load of A:
//! D(i, k) = exp(min(0, Λ_i − Λ_k)) for k ≤ i (lower) or exp(min(0, Λ_k − Λ_i)) for k ≥ i
//! (upper), 0 elsewhere. An operand whose third dimension is smaller than the output's (B and C
//! per group, the output per head) is broadcast: head h reads group h·G/H. Under a lower (upper)
//! mask the inner dimension stops at (starts from) the tile's rows, skipping the masked half.
//!
//! Two kernels here compute one 64 × 64 output tile per cube, from shared-memory slices of A and B
//! that both fill through the same loads ([`operand_a`], [`operand_b`]) and both finish through
//! the same epilogue ([`write_out`]):
//! - [`ssd_product_kernel`], on every runtime: 256 threads, each a 4 × 4 block accumulated with
//!   f32 multiply-adds from 16-deep slices (`--ssd-products simple`, the default). It is the
//!   reference of the other two (the third, 128 × 64 tiles of 8 × 8 per thread, is in
//!   `ssd_product_blocked.rs`).
//! - [`ssd_product_tc_kernel`], with `--ssd-products tensor-cores` where the runtime has TF32 tensor-core
//!   products (CUDA from sm_80): 4 warps, each a 32 × 32 quarter as 2 × 2 fragments of 16 × 16 (m16n16k8, TF32
//!   inputs, f32 accumulation), from 32-deep slices. The operands are rounded to TF32 (10
//!   mantissa bits) once, as they enter shared memory: what Burn's f32 products already do on
//!   CUDA. Each slice is stored in the orientation its global loads are contiguous in (rows of A
//!   when A's inner index is the fast one, columns otherwise; likewise B), with 4 floats of
//!   padding per line, so that a warp's 32 stores fall in different banks. On the H100 it is
//!   slower than the multiply-add kernel (81.5 against 60.9 ms of the batch-4 backward's products,
//!   31.4 against 20.5 ms of the forward's), so it is not the default: a product of one 64 × 64
//!   tile per cube over an inner dimension of 64–128 leaves the tensor cores waiting on the loads
//!   (each element of A is scaled, masked and rounded on its way in) and on two barriers per
//!   32-deep slice.

use cubecl::prelude::*;

/// Output rows and columns of one product cube.
pub const TILE: usize = 64;
/// Depth of one shared-memory slice of the inner dimension (f32 multiply-add kernel).
const DEPTH: usize = 16;
/// Threads of an f32 multiply-add product cube: 16 × 16, each computing a 4 × 4 block.
pub const PRODUCT_THREADS: u32 = 256;
/// Depth of one slice of the tensor-core kernel, and its threads (4 warps of 32).
const TC_DEPTH: usize = 32;
pub const TC_THREADS: u32 = 128;
/// Padding of every shared-memory line of the tensor-core kernel, in floats (keeps the fragment
/// pointers 32-byte aligned and the leading dimensions a multiple of 4, as wmma requires).
const PAD: usize = 4;
/// Alignment of the tensor-core kernel's shared arrays, in bytes (wmma's requirement).
const FRAGMENT_ALIGN: usize = 32;

/// The index along an operand's third dimension that output index `z2` (of `n2`) reads: itself,
/// or its group when the operand has fewer entries there.
#[cube]
pub(super) fn third(z2: usize, n2: usize, own: usize) -> usize {
    (z2 * own) / n2
}

/// The decay factor D(i, k) (see the module documentation); `lam` offsets a row of Λ, whose
/// positions are `stride` apart.
#[cube]
pub(super) fn decay_factor(
    acs: &Tensor<f32>,
    lam: usize,
    stride: usize,
    i: usize,
    k: usize,
    #[comptime] upper: bool,
) -> f32 {
    let mut v = 0.0f32;
    let li = acs[lam + i * stride];
    let lk = acs[lam + k * stride];
    if upper {
        if k >= i {
            let mut d = lk - li;
            if d > 0.0 {
                d = 0.0;
            }
            v = f32::exp(d);
        }
    } else if k <= i {
        let mut d = li - lk;
        if d > 0.0 {
            d = 0.0;
        }
        v = f32::exp(d);
    }
    v
}

/// Where one cube's product reads and writes: the operands' offsets for its (batch, chunk,
/// head), its tile's first row and column, and the inner range the mask leaves.
#[derive(CubeType)]
pub(super) struct Place {
    pub(super) z0: usize,
    pub(super) z1: usize,
    pub(super) z2: usize,
    pub(super) n2: usize,
    pub(super) a_base: usize,
    pub(super) b_base: usize,
    pub(super) k_base: usize,
    pub(super) lam: usize,
    pub(super) tile_m: usize,
    pub(super) tile_n: usize,
    pub(super) k_begin: usize,
    pub(super) k_end: usize,
}

/// [`place_tile`] for a [`TILE`] × [`TILE`] output tile.
#[cube]
fn place(
    a: &Tensor<f32>,
    b: &Tensor<f32>,
    out: &Tensor<f32>,
    kscale: &Tensor<f32>,
    acs: &Tensor<f32>,
    #[comptime] has_k: bool,
    #[comptime] decay: u32,
) -> Place {
    place_tile(a, b, out, kscale, acs, has_k, decay, TILE, TILE)
}

/// The [`Place`] of this cube, for output tiles of `rows` × `cols`.
#[cube]
#[allow(clippy::collapsible_if, clippy::too_many_arguments)]
pub(super) fn place_tile(
    a: &Tensor<f32>,
    b: &Tensor<f32>,
    out: &Tensor<f32>,
    kscale: &Tensor<f32>,
    acs: &Tensor<f32>,
    #[comptime] has_k: bool,
    #[comptime] decay: u32,
    #[comptime] rows: usize,
    #[comptime] cols: usize,
) -> Place {
    let k_total = a.shape(4);
    let n2 = out.shape(2);
    let n1 = out.shape(1);
    let z = CUBE_POS_Z as usize;
    let z2 = z % n2;
    let z1 = (z / n2) % n1;
    let z0 = z / (n2 * n1);
    let tile_m = CUBE_POS_Y as usize * rows;
    let tile_n = CUBE_POS_X as usize * cols;
    let a_base = z0 * a.stride(0) + z1 * a.stride(1) + third(z2, n2, a.shape(2)) * a.stride(2);
    let b_base = z0 * b.stride(0) + z1 * b.stride(1) + third(z2, n2, b.shape(2)) * b.stride(2);
    let mut k_base = 0usize;
    if has_k {
        k_base = z0 * kscale.stride(0) + z1 * kscale.stride(1) + third(z2, n2, kscale.shape(2)) * kscale.stride(2);
    }
    let mut lam = 0usize;
    if comptime![decay > 0] {
        lam = z0 * acs.stride(0) + z1 * acs.stride(1) + third(z2, n2, acs.shape(2)) * acs.stride(2);
    }
    let mut k_begin = 0usize;
    let mut k_end = k_total;
    if comptime![decay == 1] {
        if tile_m + rows < k_total {
            k_end = tile_m + rows;
        }
    }
    if comptime![decay == 2] {
        k_begin = tile_m;
    }
    Place { z0, z1, z2, n2, a_base, b_base, k_base, lam, tile_m, tile_n, k_begin, k_end }
}

/// A[gm, gk] · u_gk · D(gm, gk), or 0 outside the matrix and the inner range.
#[cube]
#[allow(clippy::too_many_arguments)]
fn operand_a(
    a: &Tensor<f32>,
    kscale: &Tensor<f32>,
    acs: &Tensor<f32>,
    p: &Place,
    gm: usize,
    gk: usize,
    #[comptime] has_k: bool,
    #[comptime] decay: u32,
) -> f32 {
    let mut v = 0.0f32;
    if gm < a.shape(3) && gk < p.k_end {
        v = a[p.a_base + gm * a.stride(3) + gk * a.stride(4)];
        if has_k {
            v *= kscale[p.k_base + gk * kscale.stride(3)];
        }
        if comptime![decay == 1] {
            v *= decay_factor(acs, p.lam, acs.stride(3), gm, gk, false);
        }
        if comptime![decay == 2] {
            v *= decay_factor(acs, p.lam, acs.stride(3), gm, gk, true);
        }
    }
    v
}

/// B[gk, gn], or 0 outside the matrix and the inner range.
#[cube]
fn operand_b(b: &Tensor<f32>, p: &Place, gk: usize, gn: usize) -> f32 {
    let mut w = 0.0f32;
    if gk < p.k_end && gn < b.shape(4) {
        w = b[p.b_base + gk * b.stride(3) + gn * b.stride(4)];
    }
    w
}

/// Where a per-row or per-column scale's line for this cube's (batch, chunk, head) starts (a
/// scale per group is read by the group's heads).
#[cube]
pub(super) fn scale_base(t: &Tensor<f32>, p: &Place) -> usize {
    p.z0 * t.stride(0) + p.z1 * t.stride(1) + third(p.z2, p.n2, t.shape(2)) * t.stride(2)
}

/// out[gm, gn] (=, or +=) r_gm · c_gn · v, for an element inside the output.
#[cube]
#[allow(clippy::too_many_arguments)]
fn write_out(
    out: &mut Tensor<f32>,
    rscale: &Tensor<f32>,
    cscale: &Tensor<f32>,
    p: &Place,
    gm: usize,
    gn: usize,
    v: f32,
    #[comptime] has_r: bool,
    #[comptime] has_c: bool,
    #[comptime] accumulate: bool,
) {
    let mut v = v;
    if has_r {
        v *= rscale[scale_base(rscale, p) + gm * rscale.stride(3)];
    }
    if has_c {
        v *= cscale[scale_base(cscale, p) + gn * cscale.stride(3)];
    }
    let o =
        p.z0 * out.stride(0) + p.z1 * out.stride(1) + p.z2 * out.stride(2) + gm * out.stride(3) + gn * out.stride(4);
    if accumulate {
        v += out[o];
    }
    out[o] = v;
}

/// One batched product tile with f32 multiply-adds (module documentation). Grid: x over column
/// tiles, y over row tiles, z over batch × chunk × head. `decay`: 0 none, 1 lower, 2 upper.
/// `a_k_fast` / `b_n_fast` say which index of A (B) is contiguous in memory, so that
/// neighbouring threads load neighbours.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn ssd_product_kernel(
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
) {
    let p = place(a, b, out, kscale, acs, has_k, decay);
    let unit = UNIT_POS_X as usize;
    let tx = unit % 16;
    let ty = unit / 16;

    let mut sa = SharedMemory::<f32>::new(DEPTH * TILE);
    let mut sb = SharedMemory::<f32>::new(DEPTH * TILE);
    let mut acc = Array::<f32>::new(16usize);
    #[unroll]
    for e in 0..16usize {
        acc[e] = 0.0;
    }
    let mut k0 = p.k_begin;
    while k0 < p.k_end {
        #[unroll]
        for r in 0..4usize {
            let e = unit + r * 256;
            let mut mm = e % TILE;
            let mut kk = e / TILE;
            if a_k_fast {
                mm = e / DEPTH;
                kk = e % DEPTH;
            }
            sa[kk * TILE + mm] = operand_a(a, kscale, acs, &p, p.tile_m + mm, k0 + kk, has_k, decay);
            let mut kb = e % DEPTH;
            let mut nn = e / DEPTH;
            if b_n_fast {
                kb = e / TILE;
                nn = e % TILE;
            }
            sb[kb * TILE + nn] = operand_b(b, &p, k0 + kb, p.tile_n + nn);
        }
        sync_cube();
        #[unroll]
        for kk in 0..DEPTH {
            let mut av = Array::<f32>::new(4usize);
            let mut bv = Array::<f32>::new(4usize);
            #[unroll]
            for i in 0..4usize {
                av[i] = sa[kk * TILE + ty + 16 * i];
                bv[i] = sb[kk * TILE + tx + 16 * i];
            }
            #[unroll]
            for i in 0..4usize {
                #[unroll]
                for j in 0..4usize {
                    acc[i * 4 + j] += av[i] * bv[j];
                }
            }
        }
        sync_cube();
        k0 += DEPTH;
    }

    #[unroll]
    for i in 0..4usize {
        let gm = p.tile_m + ty + 16 * i;
        #[unroll]
        for j in 0..4usize {
            let gn = p.tile_n + tx + 16 * j;
            if gm < out.shape(3) && gn < out.shape(4) {
                write_out(out, rscale, cscale, &p, gm, gn, acc[i * 4 + j], has_r, has_c, accumulate);
            }
        }
    }
}

/// The fragment of A at rows `m0..m0 + 16`, inner indices `k0..k0 + 8` of a slice stored by rows
/// (`k_fast`: line m holds A[m, ·]) or by columns.
#[cube]
fn fragment_a(sa: &SharedMemory<tf32>, m0: usize, k0: usize, #[comptime] k_fast: bool) -> cmma::Matrix<tf32> {
    if k_fast {
        cmma::Matrix::<tf32>::from_slice(
            cmma::MatrixIdent::A,
            16usize,
            16usize,
            8usize,
            cmma::MatrixLayout::RowMajor,
            &sa.slice(m0 * (TC_DEPTH + PAD) + k0, TILE * (TC_DEPTH + PAD)),
            (TC_DEPTH + PAD) as u32,
        )
    } else {
        cmma::Matrix::<tf32>::from_slice(
            cmma::MatrixIdent::A,
            16usize,
            16usize,
            8usize,
            cmma::MatrixLayout::ColMajor,
            &sa.slice(k0 * (TILE + PAD) + m0, TC_DEPTH * (TILE + PAD)),
            (TILE + PAD) as u32,
        )
    }
}

/// The fragment of B at inner indices `k0..k0 + 8`, columns `n0..n0 + 16` of a slice stored by
/// rows (`n_fast`: line k holds B[k, ·]) or by columns.
#[cube]
fn fragment_b(sb: &SharedMemory<tf32>, k0: usize, n0: usize, #[comptime] n_fast: bool) -> cmma::Matrix<tf32> {
    if n_fast {
        cmma::Matrix::<tf32>::from_slice(
            cmma::MatrixIdent::B,
            16usize,
            16usize,
            8usize,
            cmma::MatrixLayout::RowMajor,
            &sb.slice(k0 * (TILE + PAD) + n0, TC_DEPTH * (TILE + PAD)),
            (TILE + PAD) as u32,
        )
    } else {
        cmma::Matrix::<tf32>::from_slice(
            cmma::MatrixIdent::B,
            16usize,
            16usize,
            8usize,
            cmma::MatrixLayout::ColMajor,
            &sb.slice(n0 * (TC_DEPTH + PAD) + k0, TILE * (TC_DEPTH + PAD)),
            (TC_DEPTH + PAD) as u32,
        )
    }
}

/// v in the element type of a shared-memory slice (TF32: rounded to 10 mantissa bits).
#[cube]
fn rounded<S: CubePrimitive>(v: f32) -> S {
    S::cast_from(v)
}

/// An accumulator fragment of zeros.
#[cube]
fn zeros() -> cmma::Matrix<f32> {
    cmma::Matrix::<f32>::from_value(
        cmma::MatrixIdent::Accumulator,
        16usize,
        16usize,
        8usize,
        cmma::MatrixLayout::Undefined,
        0.0f32,
    )
}

/// One batched product tile on TF32 tensor cores (module documentation); the launch and the
/// arguments are those of [`ssd_product_kernel`], with [`TC_THREADS`] threads per cube.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn ssd_product_tc_kernel(
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
) {
    let p = place(a, b, out, kscale, acs, has_k, decay);
    let unit = UNIT_POS_X as usize;
    // The warp's quarter of the tile.
    let warp = unit / 32;
    let wm = (warp / 2) * 32;
    let wn = (warp % 2) * 32;

    // wmma loads and stores need 32-byte aligned pointers: the arrays start aligned, and every
    // fragment's offset is a multiple of 8 floats.
    let mut sa = SharedMemory::<tf32>::new_aligned(TILE * (TC_DEPTH + PAD), FRAGMENT_ALIGN);
    let mut sb = SharedMemory::<tf32>::new_aligned(TILE * (TC_DEPTH + PAD), FRAGMENT_ALIGN);
    let c00 = zeros();
    let c01 = zeros();
    let c10 = zeros();
    let c11 = zeros();

    let mut k0 = p.k_begin;
    while k0 < p.k_end {
        // 64 × 32 elements of each operand, 16 per thread; a warp's 32 loads are consecutive in
        // memory, and its 32 stores consecutive in the line.
        #[unroll]
        for r in 0..16usize {
            let e = unit + r * 128;
            if a_k_fast {
                let mm = e / TC_DEPTH;
                let kk = e % TC_DEPTH;
                let v = operand_a(a, kscale, acs, &p, p.tile_m + mm, k0 + kk, has_k, decay);
                sa[mm * (TC_DEPTH + PAD) + kk] = rounded::<tf32>(v);
            } else {
                let mm = e % TILE;
                let kk = e / TILE;
                let v = operand_a(a, kscale, acs, &p, p.tile_m + mm, k0 + kk, has_k, decay);
                sa[kk * (TILE + PAD) + mm] = rounded::<tf32>(v);
            }
            if b_n_fast {
                let nn = e % TILE;
                let kb = e / TILE;
                sb[kb * (TILE + PAD) + nn] = rounded::<tf32>(operand_b(b, &p, k0 + kb, p.tile_n + nn));
            } else {
                let nn = e / TC_DEPTH;
                let kb = e % TC_DEPTH;
                sb[nn * (TC_DEPTH + PAD) + kb] = rounded::<tf32>(operand_b(b, &p, k0 + kb, p.tile_n + nn));
            }
        }
        sync_cube();
        #[unroll]
        for ks in 0..TC_DEPTH / 8 {
            let a0 = fragment_a(&sa, wm, ks * 8, a_k_fast);
            let a1 = fragment_a(&sa, wm + 16, ks * 8, a_k_fast);
            let b0 = fragment_b(&sb, ks * 8, wn, b_n_fast);
            let b1 = fragment_b(&sb, ks * 8, wn + 16, b_n_fast);
            cmma::execute::<tf32, tf32, f32, f32>(&a0, &b0, &c00, &c00);
            cmma::execute::<tf32, tf32, f32, f32>(&a0, &b1, &c01, &c01);
            cmma::execute::<tf32, tf32, f32, f32>(&a1, &b0, &c10, &c10);
            cmma::execute::<tf32, tf32, f32, f32>(&a1, &b1, &c11, &c11);
        }
        sync_cube();
        k0 += TC_DEPTH;
    }

    // The accumulators through shared memory, then the scales and the bounds per element.
    let mut so = SharedMemory::<f32>::new_aligned(TILE * (TILE + PAD), FRAGMENT_ALIGN);
    let line = TILE + PAD;
    let size = TILE * line;
    cmma::store(&mut so.slice_mut(wm * line + wn, size), &c00, line as u32, cmma::MatrixLayout::RowMajor);
    cmma::store(&mut so.slice_mut(wm * line + wn + 16, size), &c01, line as u32, cmma::MatrixLayout::RowMajor);
    cmma::store(&mut so.slice_mut((wm + 16) * line + wn, size), &c10, line as u32, cmma::MatrixLayout::RowMajor);
    cmma::store(&mut so.slice_mut((wm + 16) * line + wn + 16, size), &c11, line as u32, cmma::MatrixLayout::RowMajor);
    sync_cube();
    #[unroll]
    for r in 0..32usize {
        let e = unit + r * 128;
        let mm = e / TILE;
        let nn = e % TILE;
        let gm = p.tile_m + mm;
        let gn = p.tile_n + nn;
        if gm < out.shape(3) && gn < out.shape(4) {
            write_out(out, rscale, cscale, &p, gm, gn, so[mm * line + nn], has_r, has_c, accumulate);
        }
    }
}
