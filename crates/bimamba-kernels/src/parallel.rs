//! Splitting output rows over the rayon pool.
//!
//! In decode every projection is one call with `t = 1` (~100-200 calls per token), so chunks must
//! be large enough that rayon's per-task cost (~µs) is small next to the kernel, and small enough
//! to balance two to a few dozen threads. A product below [`PAR_MIN_WORK`] runs on the caller's
//! thread.

use rayon::prelude::*;
use std::ops::Range;

use crate::scratch;

/// Below this many weight-token products (`rows · cols · t`) a call stays single-threaded.
pub const PAR_MIN_WORK: usize = 1 << 20;

/// Row chunks are multiples of this (the row panel of the SIMD kernels).
pub const ROW_ALIGN: usize = 64;

/// Chunks per thread, for load balance when threads finish at different times.
const CHUNKS_PER_THREAD: usize = 4;

/// `*mut f32` that may cross threads; see the SAFETY note where it is written through.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: only used to write disjoint column ranges of `y` from scoped rayon tasks.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// A method (not a field access) so closures capture the whole `Send` wrapper.
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// Runs `kernel(range, y_chunk)` over disjoint row ranges covering `0..rows`, where `y_chunk` is
/// `[t, range.len()]` row-major, and assembles the chunks into `y: [t, rows]`.
pub fn for_row_chunks<F>(rows: usize, cols: usize, t: usize, y: &mut [f32], kernel: F)
where
    F: Fn(Range<usize>, &mut [f32]) + Sync,
{
    debug_assert_eq!(y.len(), t * rows);
    let threads = rayon::current_num_threads();
    if threads <= 1 || rows.saturating_mul(cols).saturating_mul(t) < PAR_MIN_WORK || rows <= ROW_ALIGN {
        kernel(0..rows, y);
        return;
    }
    let chunk = rows.div_ceil(threads * CHUNKS_PER_THREAD).next_multiple_of(ROW_ALIGN);
    if t == 1 {
        // y is [1, rows]: chunks of y are contiguous, each task writes its own slice.
        y.par_chunks_mut(chunk).enumerate().for_each(|(c, yc)| {
            let r0 = c * chunk;
            kernel(r0..r0 + yc.len(), yc);
        });
        return;
    }
    // y is [t, rows]: a row range is a strided column block. Each task computes into a local
    // [t, nr] buffer and copies it into its own columns.
    let out = SharedOut(y.as_mut_ptr());
    let nchunks = rows.div_ceil(chunk);
    (0..nchunks).into_par_iter().for_each(|c| {
        let r0 = c * chunk;
        let r1 = (r0 + chunk).min(rows);
        let nr = r1 - r0;
        // The chunk's [t, nr] output, in this thread's reused buffer (the kernel overwrites it).
        scratch::with_buffer(&scratch::ROW_CHUNK, t * nr, f32::NAN, |local| {
            kernel(r0..r1, local);
            for k in 0..t {
                // SAFETY: `y` has t·rows elements and outlives this scoped `for_each`; the region
                // y[k·rows + r0 .. k·rows + r1] lies inside it and belongs to chunk `c` alone (row
                // ranges of different chunks are disjoint), so no two tasks write the same element
                // and nothing reads `y` until all tasks have joined.
                unsafe {
                    std::ptr::copy_nonoverlapping(local.as_ptr().add(k * nr), out.ptr().add(k * rows + r0), nr);
                }
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every output element is written exactly once with the value of its (row, token).
    #[test]
    fn chunks_cover_all_rows_once() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("thread pool");
        for &(rows, t) in &[(1, 1), (65, 1), (1000, 1), (1000, 3), (4097, 2), (10, 7)] {
            let cols = PAR_MIN_WORK / rows + 1; // force the parallel path where rows allow
            let mut y = vec![f32::NAN; t * rows];
            pool.install(|| {
                for_row_chunks(rows, cols, t, &mut y, |range, yc| {
                    let nr = range.len();
                    for k in 0..t {
                        for (ii, i) in range.clone().enumerate() {
                            yc[k * nr + ii] = (k * rows + i) as f32;
                        }
                    }
                })
            });
            for (idx, v) in y.iter().enumerate() {
                assert_eq!(*v, idx as f32, "rows={rows} t={t}");
            }
        }
    }
}
