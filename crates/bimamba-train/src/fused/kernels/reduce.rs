//! Column sums of a tall matrix: the weight and bias gradients that are sums over every position
//! of a batch (RMSNorm weights, FBI-Linear scales, conv weights, per-head parameters).
//!
//! Burn's reduction over a non-contiguous axis (without its autotune) runs one thread per output
//! column looping over all rows: for [8192, 768], 768 threads each making 8,192 loads in turn (on
//! an H100, Burn's reductions took 84.5 ms of the 130M-class backward in 553 launches, those of
//! the op-by-op SSD included; with this kernel and the SSD node, the column sums take 14.4 ms in
//! 482). Here a cube of 32 columns × 8 row lanes sums a band of rows (a warp reads 32
//! neighbouring columns of one row: coalesced), the 8 lanes meet in shared memory, and each band
//! writes one row of partial sums; the launch code repeats the pass on the partials until one row
//! is left. The order of the additions is fixed: results do not depend on scheduling.

use cubecl::prelude::*;

/// Columns per cube (one warp wide).
pub const COLS_PER_CUBE: u32 = 32;
/// Row lanes per cube.
pub const ROW_LANES: u32 = 8;

/// partial[band, n] = Σ_{r in band} x[r, n], with bands of `band` rows.
///
/// # Shapes
/// - x: [R, N] (any strides); partial: [⌈R / band⌉, N]
#[cube(launch)]
pub fn col_sum_kernel(x: &Tensor<f32>, partial: &mut Tensor<f32>, band: u32) {
    let rows = x.shape(0);
    let cols = x.shape(1);
    let col = (CUBE_POS_X * COLS_PER_CUBE + UNIT_POS_X) as usize;
    let lane = UNIT_POS_Y as usize;
    let start = CUBE_POS_Y as usize * band as usize;
    let mut end = start + band as usize;
    if end > rows {
        end = rows;
    }
    let mut acc = 0.0f32;
    if col < cols {
        let mut r = start + lane;
        while r < end {
            acc += x[r * x.stride(0) + col * x.stride(1)];
            r += ROW_LANES as usize;
        }
    }
    // Every thread reaches the barrier; only then do the out-of-range columns drop out.
    let mut sh = SharedMemory::<f32>::new((COLS_PER_CUBE * ROW_LANES) as usize);
    sh[lane * COLS_PER_CUBE as usize + UNIT_POS_X as usize] = acc;
    sync_cube();
    if lane == 0 && col < cols {
        let mut s = 0.0f32;
        for i in 0..ROW_LANES as usize {
            s += sh[i * COLS_PER_CUBE as usize + UNIT_POS_X as usize];
        }
        partial[CUBE_POS_Y as usize * partial.stride(0) + col * partial.stride(1)] = s;
    }
}
