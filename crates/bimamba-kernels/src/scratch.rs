//! Per-thread buffers that the products reuse from call to call for their temporaries (row-chunk
//! outputs, quantized activations, lookup tables), so that a forward pass does not allocate,
//! free and page-fault them again in every layer.
//!
//! A buffer is taken out of its thread-local slot for the duration of one use and put back
//! afterwards, so a nested use on the same thread (rayon may run another task while a thread
//! waits) finds the slot empty and allocates its own buffer instead of aliasing. Buffers larger
//! than [`KEEP_MAX_BYTES`] are freed after use, which bounds what an idle thread holds.

use std::cell::Cell;
use std::thread::LocalKey;

use crate::act8::{self, Act8};

thread_local! {
    /// Row-chunk outputs `[t, rows of the chunk]` of a parallel product (`parallel.rs`).
    pub(crate) static ROW_CHUNK: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    /// f32 lookup tables `[t, groups, 16]` of a binary product ([`crate::lut`]).
    pub(crate) static LUT_TABLES: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    /// Quantized activations of an int8-activation binary product ([`act8`]).
    static ACT8: Cell<Act8> = Cell::new(Act8::default());
}

/// Largest buffer a thread keeps between calls. The products of a Bi-Mamba layer need far less
/// (the 2.7b shape's largest, the f32 lookup tables of out_proj over 64 tokens, is 5.2 MB); the
/// logits of a long evaluation window (tens of MB) are freed as before.
pub(crate) const KEEP_MAX_BYTES: usize = 8 << 20;

/// Runs `f` on `len` elements of the buffer in `slot`, grown if needed. The elements hold what
/// an earlier use left (zeros when newly grown): `f` must overwrite what it reads. Debug builds
/// fill them with `poison` first, so that tests catch a kernel that reads before writing.
pub(crate) fn with_buffer<T: Copy + Default, R>(
    slot: &'static LocalKey<Cell<Vec<T>>>,
    len: usize,
    poison: T,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    let mut buf = slot.take();
    if buf.len() < len {
        buf.resize(len, T::default());
    }
    let used = &mut buf[..len];
    if cfg!(debug_assertions) {
        used.fill(poison);
    }
    let out = f(used);
    keep(slot, buf);
    out
}

/// Puts `buf` back into `slot` unless it is over [`KEEP_MAX_BYTES`].
pub(crate) fn keep<T>(slot: &'static LocalKey<Cell<Vec<T>>>, buf: Vec<T>) {
    if buf.capacity() * size_of::<T>() <= KEEP_MAX_BYTES {
        slot.set(buf);
    }
}

/// Runs `f` on `x: [t, cols]` quantized per token ([`act8::quantize`]) into this thread's
/// reused buffers.
pub(crate) fn with_act8<R>(x: &[f32], cols: usize, t: usize, f: impl FnOnce(&Act8) -> R) -> R {
    let mut a = ACT8.take();
    act8::quantize_into(x, cols, t, &mut a);
    let out = f(&a);
    if a.q.capacity() <= KEEP_MAX_BYTES {
        ACT8.set(a);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static SLOT: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
    }

    #[test]
    fn reused_and_nested_uses_get_their_own_memory() {
        let first = with_buffer(&SLOT, 16, 7, |b| {
            b.fill(1);
            // A nested use on the same thread gets another buffer.
            with_buffer(&SLOT, 4, 7, |inner| {
                assert_ne!(inner.as_ptr(), b.as_ptr());
                inner.fill(2);
            });
            b.as_ptr() as usize
        });
        // The outer buffer went back last and is reused; shorter uses take a prefix.
        let second = with_buffer(&SLOT, 8, 7, |b| b.as_ptr() as usize);
        assert_eq!(first, second);
    }

    #[test]
    fn large_buffers_are_not_kept() {
        let big = KEEP_MAX_BYTES / 4 + 1;
        with_buffer(&SLOT, big, 0, |b| assert_eq!(b.len(), big));
        assert!(SLOT.take().capacity() < big);
    }
}
