//! The chunked ("matrix") form of the SSD scan for prefill (Mamba-2, arXiv 2405.21060 §6): the
//! same recurrence as [`crate::ssm::head_steps_prefill`] for one head over a block of `t` tokens,
//! ```text
//! S_k = a_k·S_{k-1} + dt_k·x_k ⊗ B_k          y_k = S_k·C_k        (a_k = exp(dt_k·A))
//! ```
//! rewritten per chunk of `q` tokens as matrix products. Within a chunk starting at token `k0`
//! (`t`, `s` index its tokens, `S` is the state entering the chunk):
//! ```text
//! L[t][s] = a_{s+1}·a_{s+2}···a_t  (s ≤ t; 1 on the diagonal)   = exp(Λ_t − Λ_s), Λ = cumsum(dt·A)
//! e[t]    = a_0·L[t][0]                                          = exp(Λ_t)
//! G[t][s] = C_t·B_s                                              (shared by the heads of a group)
//! y[t]    = e[t]·(S·C_t)  +  Σ_{s≤t} (L[t][s]·G[t][s]·dt_s)·x_s  (carried-in + intra-chunk)
//! S'      = e[q−1]·S      +  Σ_s (L[q−1][s]·dt_s·x_s) ⊗ B_s      (state passed to the next chunk)
//! ```
//! `L` is built from the decays the recurrence multiplies by (`L[t][s] = a_{s+1}·L[t][s+1]`),
//! not from exponentials of differences, so it costs one multiply per entry and no `exp`.
//! Entries of `L` and `e` below `f32::MIN_POSITIVE` are set to 0: they would only scale
//! contributions by less than 2⁻¹²⁶ (invisible next to the diagonal term) and subnormal operands
//! are slow on some CPUs.
//!
//! Per token and head this is `2·N·P` multiply-adds for the carried-in readout and the state, plus
//! `q·P/2` for the intra-chunk triangle; the recurrence does `2·N·P` multiply-adds plus `N·P`
//! decay multiplies and a horizontal sum per output. With `ngroups = 1` the Gram matrix `G` is
//! computed once per chunk for all heads.
//!
//! [`head_chunks_scalar`] is the specification (sequential sums, computes `G` itself);
//! [`head_chunks_with`] runs the AVX-512 kernel (`x86/ssd_chunk.rs`) on shapes it takes
//! ([`chunked_supported`]) with the group's [`GroupChunks`], else the specification. It agrees
//! with the token-by-token recurrence to f32 rounding (`tests/ssd_chunked.rs`).

use crate::isa::Isa;
use crate::ssm::HeadBlock;

/// Chunk lengths the AVX-512 kernel takes (one, two or four 16-lane vectors of tokens).
pub const CHUNK_LENS: [usize; 3] = [16, 32, 64];

/// The chunk length of the engine's prefill: on the 2.7b head (P = 64, N = 128) over a 64-token
/// block, 16 tokens ran 1.6x faster than the register scan, 32 1.6x and 64 1.46x
/// (`benches/ssd_prefill.rs`, KERNELS.md): the intra-chunk triangle grows with the chunk.
pub const PREFILL_CHUNK: usize = 16;

/// A chunk shorter than this is cheaper token by token: the carried-in readout costs a whole
/// 16-lane vector of tokens whatever the chunk's length (chunked against register scan on the
/// 2.7b head: 4 tokens 0.56x, 8 tokens 1.06x, 12 tokens 1.33x, 16 tokens 1.57x).
pub const MIN_CHUNK_TOKENS: usize = 8;

/// How many leading tokens of a `t`-token block to run in chunks of `q`: the whole chunks, and
/// the last partial one if it has at least [`MIN_CHUNK_TOKENS`]; the rest runs token by token.
pub fn chunked_tokens(t: usize, q: usize) -> usize {
    let whole = t / q.max(1) * q;
    if t - whole >= MIN_CHUNK_TOKENS {
        t
    } else {
        whole
    }
}

/// `v`, or 0 when it is below the smallest normal f32 (see the module doc).
#[inline(always)]
pub(crate) fn flush(v: f32) -> f32 {
    if v < f32::MIN_POSITIVE {
        0.0
    } else {
        v
    }
}

/// Whether [`head_chunks_with`] runs a fast kernel for this ISA and shape: AVX-512, `N` a
/// multiple of 16, `P` a multiple of 8, `q` one of [`CHUNK_LENS`].
pub fn chunked_supported(isa: Isa, p_n: usize, n: usize, q: usize) -> bool {
    cfg!(target_arch = "x86_64")
        && isa == Isa::Avx512
        && isa.is_supported()
        && p_n > 0
        && p_n.is_multiple_of(8)
        && n > 0
        && n.is_multiple_of(16)
        && CHUNK_LENS.contains(&q)
}

/// What the heads of one group share over a block: per chunk of `q` tokens, `Gᵀ[s][t] = B_s·C_t`
/// for `t ≥ s` (0 elsewhere and beyond the block) and `Cᵀ[n][t]` (0 beyond the block).
#[derive(Clone, Debug)]
pub struct GroupChunks {
    pub(crate) q: usize,
    pub(crate) n: usize,
    pub(crate) t: usize,
    /// [chunks, q, q]
    pub(crate) gt: Vec<f32>,
    /// [chunks, n, q]
    pub(crate) ct: Vec<f32>,
}

impl GroupChunks {
    /// The group's products over `blk`'s `t = blk.dt.len()` tokens (its `B` at `b_off`, `C` at
    /// `c_off`; `x_off` is not read), in chunks of `q` tokens, `n = d_state`.
    pub fn new(blk: &HeadBlock, n: usize, q: usize) -> GroupChunks {
        let t = blk.dt.len();
        assert!(q > 0, "ssd: chunk length 0");
        assert!(
            t == 0 || (t - 1) * blk.stride + blk.b_off.max(blk.c_off) + n <= blk.xbc.len(),
            "ssd: xBC rows too short for B and C"
        );
        let chunks = t.div_ceil(q);
        let mut g = GroupChunks { q, n, t, gt: vec![0.0; chunks * q * q], ct: vec![0.0; chunks * n * q] };
        #[cfg(target_arch = "x86_64")]
        if Isa::Avx512.is_supported() {
            // SAFETY: AVX-512 F is supported (checked above); the extent of xBC was checked above.
            unsafe { build_avx512(&mut g, blk) };
            return g;
        }
        build_lanes(&mut g, blk);
        g
    }
}

/// `Cᵀ` by transposition, then each row of `Gᵀ` as `Σ_n B_s[n]·Cᵀ[n][..]` (contiguous in `t`,
/// so it vectorizes); entries with `t < s` are zeroed.
#[inline(always)]
fn build_lanes(g: &mut GroupChunks, blk: &HeadBlock) {
    let (q, n, t) = (g.q, g.n, g.t);
    for (c, (gt, ct)) in g.gt.chunks_exact_mut(q * q).zip(g.ct.chunks_exact_mut(n * q)).enumerate() {
        let k0 = c * q;
        let len = q.min(t - k0);
        for tt in 0..len {
            let row = (k0 + tt) * blk.stride + blk.c_off;
            for (j, &v) in blk.xbc[row..row + n].iter().enumerate() {
                ct[j * q + tt] = v;
            }
        }
        for s in 0..len {
            let row = (k0 + s) * blk.stride + blk.b_off;
            let gs = &mut gt[s * q..(s + 1) * q];
            for (j, &b) in blk.xbc[row..row + n].iter().enumerate() {
                for (gv, cv) in gs.iter_mut().zip(&ct[j * q..(j + 1) * q]) {
                    *gv += b * cv;
                }
            }
            gs[..s].iter_mut().for_each(|v| *v = 0.0);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn build_avx512(g: &mut GroupChunks, blk: &HeadBlock) {
    build_lanes(g, blk)
}

/// The specification: `t = blk.dt.len()` tokens of one head in chunks of `q` (module doc), every
/// sum sequential. The state `s: [P, N]` is updated in place; `y: [t, P]` receives the readouts
/// (no `D` skip: as [`crate::ssm::head_steps_prefill`]).
pub fn head_chunks_scalar(s: &mut [f32], p_n: usize, n: usize, blk: &HeadBlock, q: usize, y: &mut [f32]) {
    let t = blk.dt.len();
    check(s, p_n, n, blk, y);
    assert!(q > 0, "ssd: chunk length 0");
    let x = |k: usize, p: usize| blk.xbc[k * blk.stride + blk.x_off + p];
    let b = |k: usize| &blk.xbc[k * blk.stride + blk.b_off..][..n];
    let c = |k: usize| &blk.xbc[k * blk.stride + blk.c_off..][..n];
    let mut l = vec![0.0f32; q * q]; // L[t][s] at l[t·q + s]
    let mut k0 = 0;
    while k0 < t {
        let len = q.min(t - k0);
        // L[t][t] = 1, L[t][s] = a_{s+1}·L[t][s+1].
        for tt in 0..len {
            l[tt * q + tt] = 1.0;
            for ss in (0..tt).rev() {
                l[tt * q + ss] = flush(blk.decay[k0 + ss + 1] * l[tt * q + ss + 1]);
            }
        }
        let e = |tt: usize| flush(blk.decay[k0] * l[tt * q]);
        for tt in 0..len {
            let ct = c(k0 + tt);
            for p in 0..p_n {
                let row = &s[p * n..(p + 1) * n];
                let mut carry = 0.0f32;
                for (sv, cv) in row.iter().zip(ct) {
                    carry += sv * cv;
                }
                let mut acc = e(tt) * carry;
                for ss in 0..=tt {
                    let mut g = 0.0f32;
                    for (cv, bv) in ct.iter().zip(b(k0 + ss)) {
                        g += cv * bv;
                    }
                    acc += l[tt * q + ss] * g * blk.dt[k0 + ss] * x(k0 + ss, p);
                }
                y[(k0 + tt) * p_n + p] = acc;
            }
        }
        let last = len - 1;
        let e_end = e(last);
        for p in 0..p_n {
            let row = &mut s[p * n..(p + 1) * n];
            for (j, sv) in row.iter_mut().enumerate() {
                let mut acc = e_end * *sv;
                for ss in 0..len {
                    acc += l[last * q + ss] * blk.dt[k0 + ss] * x(k0 + ss, p) * b(k0 + ss)[j];
                }
                *sv = acc;
            }
        }
        k0 += len;
    }
}

fn check(s: &[f32], p_n: usize, n: usize, blk: &HeadBlock, y: &[f32]) {
    let t = blk.dt.len();
    assert!(
        s.len() == p_n * n && blk.decay.len() == t && y.len() == t * p_n,
        "ssd head_chunks: s {} for [{p_n} x {n}], {t} tokens, {} decays, y {}",
        s.len(),
        blk.decay.len(),
        y.len()
    );
    let need = |off: usize, len: usize| t == 0 || (t - 1) * blk.stride + off + len <= blk.xbc.len();
    assert!(need(blk.x_off, p_n) && need(blk.b_off, n) && need(blk.c_off, n), "ssd head_chunks: xBC rows too short");
}

/// The chunked scan of one head on the given ISA, with the group's shared products `grp` (built
/// from the same block, `B` and `C` of this head's group): the AVX-512 kernel where
/// [`chunked_supported`], else [`head_chunks_scalar`].
///
/// # Shapes
/// - `s`: [P, N] (updated in place); `y`: [t, P]
pub fn head_chunks_with(
    isa: Isa,
    s: &mut [f32],
    p_n: usize,
    n: usize,
    blk: &HeadBlock,
    grp: &GroupChunks,
    y: &mut [f32],
) {
    check(s, p_n, n, blk, y);
    assert!(grp.n == n && grp.t == blk.dt.len(), "ssd head_chunks: group products for N {} t {}", grp.n, grp.t);
    #[cfg(target_arch = "x86_64")]
    if chunked_supported(isa, p_n, n, grp.q) {
        use crate::x86::ssd_chunk::head_chunks as k;
        // SAFETY: AVX-512 F is supported and the shapes are ones the kernel takes (checked by
        // `chunked_supported`); the extents of s, y and xBC were checked above, `grp` was
        // checked to match them.
        unsafe {
            match grp.q {
                16 => k::<1, 8>(s, p_n, n, blk, grp, y),
                32 => k::<2, 8>(s, p_n, n, blk, grp, y),
                _ => k::<4, 4>(s, p_n, n, blk, grp, y),
            }
        }
        return;
    }
    let _ = isa;
    head_chunks_scalar(s, p_n, n, blk, grp.q, y)
}

/// [`head_chunks_with`] on the selected ISA.
pub fn head_chunks(s: &mut [f32], p_n: usize, n: usize, blk: &HeadBlock, grp: &GroupChunks, y: &mut [f32]) {
    head_chunks_with(crate::selected_isa(), s, p_n, n, blk, grp, y)
}
