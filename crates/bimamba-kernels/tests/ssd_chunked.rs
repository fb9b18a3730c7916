//! The chunked SSD scan (`ssd::head_chunks*`) against the token-by-token recurrence
//! (`ssm::head_step_scalar`, f32 state), and the AVX-512 kernel against its scalar twin: states
//! and readouts, chunk lengths 1–64, partial last chunks, one token, no tokens, decays from
//! ≈ 1 (tiny dt) to ≈ 0 (where the products of decays underflow), head dims and state sizes the
//! kernel takes and ones it leaves to the twin.

#[path = "common/mod.rs"]
mod common;

use bimamba_kernels::ssd::{chunked_supported, head_chunks_scalar, head_chunks_with, GroupChunks, CHUNK_LENS};
use bimamba_kernels::ssm::{head_step_scalar, HeadBlock};
use bimamba_kernels::Isa;
use common::Rng;

/// How the per-token `dt` (and so the decay `a = exp(dt·A)`) is drawn.
#[derive(Clone, Copy, Debug)]
enum Dt {
    /// dt ∈ [1e-3, 0.1], A ∈ [−16, −1]: decays 0.2–1.
    Typical,
    /// dt ∈ [1e-7, 1e-4]: decays within 2e-3 of 1 (the state remembers the whole block).
    Tiny,
    /// dt·A ∈ [−40, −2]: products of a few decays go below f32's normal range.
    Steep,
    /// A mix of the three per token.
    Mixed,
}

/// One head's inputs laid out like the mixer's `xBC` rows (x, B, C at offsets, with padding).
struct Inputs {
    xbc: Vec<f32>,
    stride: usize,
    offs: (usize, usize, usize),
    dt: Vec<f32>,
    decay: Vec<f32>,
    s0: Vec<f32>,
}

impl Inputs {
    fn new(rng: &mut Rng, p: usize, n: usize, t: usize, dt_kind: Dt) -> Inputs {
        let (x_off, b_off) = (3, 3 + p + 5);
        let c_off = b_off + n + 2;
        let stride = c_off + n + 7;
        let xbc = rng.vec(t * stride);
        let a = -1.0 - 15.0 * rng.f32().abs();
        let mut dt = Vec::with_capacity(t);
        let mut decay = Vec::with_capacity(t);
        for _ in 0..t {
            let u = rng.f32().abs();
            let kind = match dt_kind {
                Dt::Mixed => [Dt::Typical, Dt::Tiny, Dt::Steep][rng.below(3)],
                k => k,
            };
            let (d, log_a) = match kind {
                Dt::Tiny => {
                    let d = 10f32.powf(-7.0 + 3.0 * u);
                    (d, d * a)
                }
                Dt::Steep => (0.5 + u, -2.0 - 38.0 * u),
                _ => {
                    let d = 10f32.powf(-3.0 + 2.0 * u);
                    (d, d * a)
                }
            };
            dt.push(d);
            decay.push(log_a.exp());
        }
        let s0 = rng.vec(p * n);
        Inputs { xbc, stride, offs: (x_off, b_off, c_off), dt, decay, s0 }
    }

    fn block(&self) -> HeadBlock<'_> {
        let (x_off, b_off, c_off) = self.offs;
        HeadBlock { xbc: &self.xbc, stride: self.stride, x_off, b_off, c_off, dt: &self.dt, decay: &self.decay }
    }
}

/// The recurrence token by token (the reference), and the magnitudes every computed value is
/// bounded by: the same recurrence on absolute values in f64 (`|S|` entries, `Σ_n |S·C|`).
struct Reference {
    s: Vec<f32>,
    y: Vec<f32>,
    mag_s: Vec<f64>,
    mag_y: Vec<f64>,
}

fn reference(inp: &Inputs, p: usize, n: usize) -> Reference {
    let t = inp.dt.len();
    let (x_off, b_off, c_off) = inp.offs;
    let mut s = inp.s0.clone();
    let mut y = vec![0.0f32; t * p];
    let mut abs_s: Vec<f64> = inp.s0.iter().map(|v| v.abs() as f64).collect();
    let mut mag_y = vec![0.0f64; t * p];
    for k in 0..t {
        let row = &inp.xbc[k * inp.stride..];
        let (x, b, c) = (&row[x_off..x_off + p], &row[b_off..b_off + n], &row[c_off..c_off + n]);
        head_step_scalar(&mut s, x, b, c, inp.dt[k], inp.decay[k], &mut y[k * p..(k + 1) * p]);
        for i in 0..p {
            let mut m = 0.0;
            for j in 0..n {
                let v = &mut abs_s[i * n + j];
                *v = inp.decay[k] as f64 * *v + (inp.dt[k] * x[i]).abs() as f64 * b[j].abs() as f64;
                m += *v * c[j].abs() as f64;
            }
            mag_y[k * p + i] = m;
        }
    }
    Reference { s, y, mag_s: abs_s, mag_y }
}

/// Error budget relative to the magnitudes above, as a multiple of f32's machine epsilon
/// (2u, u = 2⁻²⁴). Each chunked output is a sum of at most `n` carried-in and `q` intra-chunk
/// products whose decay factors are products of at most `q` decays, and the state it reads has
/// passed through `t/q` earlier chunk updates of `q + 1` terms each: first-order rounding bound
/// about `(n + 2q + t)·u` of the magnitude. The reference recurrence rounds twice per token and
/// `n` times in the readout: about `(n + 2t)·u`. Both together stay below
/// `(n + q + 2t + 16)·ε`; measured errors are 10–100x smaller (random signs), and a wrong index
/// or decay is an error of the order of the magnitude itself.
fn budget(n: usize, q: usize, t: usize) -> f64 {
    (n + q + 2 * t + 16) as f64 * f32::EPSILON as f64
}

/// Largest `|got − want| / mag` (mag floored at 1e-30), and asserts it within the budget.
fn check(what: &str, got: &[f32], want: &[f32], mag: &[f64], tol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let mut worst = 0.0f64;
    for (i, ((g, w), m)) in got.iter().zip(want).zip(mag).enumerate() {
        let e = (*g as f64 - *w as f64).abs() / m.max(1e-30);
        assert!(e <= tol, "{what}[{i}]: {g} vs {w} (magnitude {m:.3e}): {e:.2e} of it > {tol:.2e}");
        worst = worst.max(e);
    }
    worst
}

fn run_case(rng: &mut Rng, p: usize, n: usize, t: usize, q: usize, dt_kind: Dt) -> f64 {
    let inp = Inputs::new(rng, p, n, t, dt_kind);
    let blk = inp.block();
    let want = reference(&inp, p, n);
    let tol = budget(n, q, t);
    let tag = format!("P{p} N{n} t{t} q{q} {dt_kind:?}");
    let (mut s, mut y) = (inp.s0.clone(), vec![f32::NAN; t * p]);
    head_chunks_scalar(&mut s, p, n, &blk, q, &mut y);
    let mut worst = check(&format!("{tag} scalar y"), &y, &want.y, &want.mag_y, tol);
    worst = worst.max(check(&format!("{tag} scalar state"), &s, &want.s, &want.mag_s, tol));
    let grp = GroupChunks::new(&blk, n, q);
    for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon].into_iter().filter(|i| i.is_supported()) {
        let (mut s2, mut y2) = (inp.s0.clone(), vec![f32::NAN; t * p]);
        head_chunks_with(isa, &mut s2, p, n, &blk, &grp, &mut y2);
        let tag = format!("{tag} {isa:?}");
        // Against the twin (same tolerance: both are within it of the recurrence) and the reference.
        worst = worst.max(check(&format!("{tag} y vs twin"), &y2, &y, &want.mag_y, tol));
        worst = worst.max(check(&format!("{tag} state vs twin"), &s2, &s, &want.mag_s, tol));
        worst = worst.max(check(&format!("{tag} y"), &y2, &want.y, &want.mag_y, tol));
        worst = worst.max(check(&format!("{tag} state"), &s2, &want.s, &want.mag_s, tol));
    }
    worst / tol
}

#[test]
fn chunked_scan_equals_the_recurrence() {
    let mut rng = Rng(0x55D_C4A1);
    let mut worst: f64 = 0.0;
    // (P, N, t): the 2.7b head (64, 128) over a prefill block and partial chunks; P not a
    // multiple of 16 (scalar transpose), N with a 16-wide remainder after 64-wide tiles, tiny
    // shapes; then shapes the kernel does not take (P % 8, N % 16).
    let shapes = [
        (64, 128, 64),
        (64, 128, 1),
        (64, 128, 37),
        (64, 128, 100),
        (16, 16, 17),
        (8, 48, 33),
        (24, 80, 50),
        (16, 144, 64),
        (32, 64, 2),
        (5, 7, 9),
        (4, 16, 20),
        (8, 20, 11),
    ];
    for (p, n, t) in shapes {
        for q in CHUNK_LENS {
            for dt in [Dt::Typical, Dt::Tiny, Dt::Steep, Dt::Mixed] {
                worst = worst.max(run_case(&mut rng, p, n, t, q, dt));
            }
        }
    }
    // The specification at other chunk lengths (the fast path needs 16, 32 or 64).
    for q in [1, 3, 7, 100] {
        worst = worst.max(run_case(&mut rng, 8, 32, 41, q, Dt::Mixed));
    }
    eprintln!("worst error: {worst:.3} of the budget");
}

#[test]
fn no_tokens_leave_the_state_alone() {
    let mut rng = Rng(7);
    let inp = Inputs::new(&mut rng, 64, 128, 0, Dt::Typical);
    let grp = GroupChunks::new(&inp.block(), 128, 32);
    let mut s = inp.s0.clone();
    head_chunks_with(Isa::detect(), &mut s, 64, 128, &inp.block(), &grp, &mut []);
    assert_eq!(s, inp.s0);
}

#[test]
fn fast_path_shapes() {
    let avx512 = Isa::Avx512.is_supported();
    assert_eq!(chunked_supported(Isa::Avx512, 64, 128, 32), avx512);
    assert!(!chunked_supported(Isa::Scalar, 64, 128, 32));
    assert!(!chunked_supported(Isa::Avx512, 64, 128, 48));
    assert!(!chunked_supported(Isa::Avx512, 60, 128, 32));
    assert!(!chunked_supported(Isa::Avx512, 64, 120, 32));
}
