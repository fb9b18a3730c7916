//! The CubeCL kernels of the fused operations (compiled to CUDA through NVRTC at run time, or to
//! WGSL for the WGPU backend). Launch code and shapes: `../cube.rs`; references: `../reference.rs`.
//! Reductions use cubes of 256 threads and shared-memory trees (no atomics: results do not depend
//! on scheduling).

use cubecl::prelude::*;

pub mod block;
pub mod loss;
pub mod optim;
pub mod reduce;
pub mod ssd;
pub mod ssd_product;
pub mod ssd_product_blocked;
pub mod ssd_scan;

/// Sum over a cube of 256 threads; every thread gets the total.
#[cube]
pub fn cube_sum(x: f32) -> f32 {
    let mut sh = SharedMemory::<f32>::new(256usize);
    let unit = UNIT_POS_X as usize;
    sh[unit] = x;
    sync_cube();
    let mut half = 128usize;
    while half > 0 {
        if unit < half {
            let other = sh[unit + half];
            sh[unit] += other;
        }
        sync_cube();
        half /= 2;
    }
    let out = sh[0];
    sync_cube();
    out
}
