//! Kernel benchmarks at the Bi-Mamba 2.7B projection shapes (ARCHITECTURE.md §1.1):
//! in_proj `[10576 x 2560]` and out_proj `[2560 x 5120]`, for t = 1 (decode, gemv) and t = 64
//! (prefill, gemm), binary vs dense f32 vs dense bf16, on 1 and 2 rayon threads; and the tied
//! LM head `[32000 x 2560]` in bf16 and q8 (8-bit rows, `q8_gemm`).
//!
//! Throughput is reported as GB/s of weight bytes (10⁹ B/s; a call reads every weight once).
//! Each iteration uses the next of several copies of the weights, together larger than the last
//! level cache, so weights come from DRAM as they do in a real forward pass.
//!
//! ```text
//! cargo bench -p bimamba-kernels --bench kernels              # criterion + summary table
//! cargo bench -p bimamba-kernels --bench kernels -- in_proj   # criterion filter
//! BIMAMBA_ISA=avx2 cargo bench -p bimamba-kernels --bench kernels
//! ```
//! After criterion, a markdown table (time, GB/s, % of the measured read bandwidth at the same
//! thread count) is printed for KERNELS.md.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bimamba_kernels::{measure_read_bandwidth_gbs, pack, q8, selected_isa};
use criterion::{Criterion, Throughput};
use half::bf16;

/// Weight copies per case add up to at least this many bytes (L3 here is 32 MiB);
/// `BIMAMBA_BENCH_ROTATION_MB=0` uses one copy (cache-hot weights where they fit).
fn rotation_bytes() -> usize {
    std::env::var("BIMAMBA_BENCH_ROTATION_MB").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(256) << 20
}
/// Buffer for the bandwidth probe.
const BANDWIDTH_BYTES: usize = 512 << 20;
const THREADS: [usize; 2] = [1, 2];
/// Token counts per call; `BIMAMBA_BENCH_TOKENS=1,64,256` overrides them.
fn tokens() -> Vec<usize> {
    std::env::var("BIMAMBA_BENCH_TOKENS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect::<Vec<usize>>())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| vec![1, 64])
}
const SHAPES: [(&str, usize, usize, &[Kind]); 3] = [
    ("in_proj", 10576, 2560, &[Kind::Binary, Kind::BinaryI8, Kind::F32, Kind::Bf16]),
    ("out_proj", 2560, 5120, &[Kind::Binary, Kind::BinaryI8, Kind::F32, Kind::Bf16]),
    ("lm_head", 32000, 2560, &[Kind::Bf16, Kind::Q8]),
];

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Binary,
    /// The same sign bits, int8 activations (`binary_gemm_i8`, quantization included).
    BinaryI8,
    F32,
    Bf16,
    Q8,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Binary => "binary",
            Kind::BinaryI8 => "binary_i8",
            Kind::F32 => "dense_f32",
            Kind::Bf16 => "dense_bf16",
            Kind::Q8 => "q8",
        }
    }
}

/// Copies of one weight matrix in one format.
enum Weights {
    Binary(Vec<Vec<u8>>),
    BinaryI8(Vec<Vec<u8>>),
    F32(Vec<Vec<f32>>),
    Bf16(Vec<Vec<bf16>>),
    /// (codes, row scales)
    Q8(Vec<(Vec<i8>, Vec<f32>)>),
}

struct Case {
    shape: &'static str,
    rows: usize,
    cols: usize,
    weights: Weights,
    bytes: usize,
}

#[path = "../tests/common/mod.rs"]
mod common;

fn random_f32(n: usize, seed: u64) -> Vec<f32> {
    common::Rng(seed | 1).vec(n)
}

fn make_case(shape: &'static str, rows: usize, cols: usize, kind: Kind, rotate: bool) -> Case {
    let w = random_f32(rows * cols, 17);
    let bytes = match kind {
        Kind::Binary | Kind::BinaryI8 => pack::packed_len(rows, cols),
        Kind::F32 => rows * cols * 4,
        Kind::Bf16 => rows * cols * 2,
        Kind::Q8 => rows * cols + rows * 4,
    };
    // `cargo test --benches` runs each benchmark once: one copy is enough there.
    let copies = if rotate { rotation_bytes().div_ceil(bytes).max(1) } else { 1 };
    let weights = match kind {
        Kind::Binary => Weights::Binary(vec![pack::pack_signs(&w, rows, cols); copies]),
        Kind::BinaryI8 => Weights::BinaryI8(vec![pack::pack_signs(&w, rows, cols); copies]),
        Kind::F32 => Weights::F32(vec![w; copies]),
        Kind::Bf16 => Weights::Bf16(vec![w.iter().map(|&v| bf16::from_f32(v)).collect(); copies]),
        Kind::Q8 => Weights::Q8(vec![q8::quantize_rows(&w, rows, cols); copies]),
    };
    Case { shape, rows, cols, weights, bytes }
}

impl Case {
    /// One call on copy `i % copies`.
    fn run(&self, i: usize, x: &[f32], t: usize, y: &mut [f32]) {
        let (r, c) = (self.rows, self.cols);
        match &self.weights {
            Weights::Binary(v) => bimamba_kernels::binary_gemm(&v[i % v.len()], r, c, x, t, y),
            Weights::BinaryI8(v) => bimamba_kernels::binary_gemm_i8(&v[i % v.len()], r, c, x, t, y),
            Weights::F32(v) => bimamba_kernels::dense_gemm_f32(&v[i % v.len()], r, c, x, t, y),
            Weights::Bf16(v) => bimamba_kernels::dense_gemm_bf16(&v[i % v.len()], r, c, x, t, y),
            Weights::Q8(v) => {
                let (q, s) = &v[i % v.len()];
                bimamba_kernels::q8_gemm(q, s, r, c, x, t, y)
            }
        }
    }
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("building a rayon pool")
}

/// On-CPU nanoseconds of the calling thread so far (Linux `/proc/thread-self/schedstat`), to
/// separate a kernel's own time from time-slicing on a shared machine. `None` elsewhere.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Timing of one case: best wall time per call, and mean on-CPU time per call of the thread
/// that ran the loop (meaningful for 1 thread only).
struct Timing {
    best_s: f64,
    cpu_s: Option<f64>,
}

/// Runs calls for about `budget` of wall time (at least 5 calls).
fn time_case(case: &Case, x: &[f32], t: usize, budget: Duration) -> Timing {
    let mut y = vec![0.0f32; t * case.rows];
    case.run(0, x, t, &mut y);
    let mut best = f64::INFINITY;
    let cpu0 = thread_cpu_ns();
    let start = Instant::now();
    let mut calls = 0usize;
    while calls < 5 || start.elapsed() < budget {
        let t0 = Instant::now();
        case.run(calls + 1, x, t, &mut y);
        best = best.min(t0.elapsed().as_secs_f64());
        black_box(&y);
        calls += 1;
    }
    let cpu_s = match (cpu0, thread_cpu_ns()) {
        (Some(a), Some(b)) => Some((b - a) as f64 / 1e9 / calls as f64),
        _ => None,
    };
    Timing { best_s: best, cpu_s }
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let isa = selected_isa();
    let bw: Vec<f64> = THREADS
        .iter()
        .map(|&n| if bench_mode { measure_read_bandwidth_gbs(BANDWIDTH_BYTES, n) } else { 0.0 })
        .collect();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "cpu: {cpu} ({} logical) | load average at start: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.trim()
    );
    println!("isa: {} | read bandwidth (512 MiB): {}", isa.name(), {
        let parts: Vec<String> = THREADS.iter().zip(&bw).map(|(n, g)| format!("{n} thr {g:.1} GB/s")).collect();
        parts.join(", ")
    });

    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    // `BIMAMBA_BENCH_ONLY=substring` restricts the summary table to matching cases.
    let only = std::env::var("BIMAMBA_BENCH_ONLY").ok();
    let pools: Vec<rayon::ThreadPool> = THREADS.iter().map(|&n| pool(n)).collect();
    let mut table = Vec::new();
    for &(shape, rows, cols, kinds) in &SHAPES {
        for &kind in kinds {
            let case = make_case(shape, rows, cols, kind, bench_mode);
            for &t in &tokens() {
                let x = random_f32(t * cols, 5);
                for (ti, &threads) in THREADS.iter().enumerate() {
                    let name = format!("{}/{}/t{}/thr{}", case.shape, kind.name(), t, threads);
                    let mut g = c.benchmark_group(&name);
                    g.throughput(Throughput::BytesDecimal(case.bytes as u64));
                    let mut y = vec![0.0f32; t * rows];
                    let mut i = 0usize;
                    let pool = &pools[ti];
                    // One `install` per batch of calls: the kernels' rayon calls then start from a
                    // pool thread, as they do inside the engine's decode loop.
                    g.bench_function(isa.name(), |b| {
                        b.iter_custom(|iters| {
                            pool.install(|| {
                                let start = Instant::now();
                                for _ in 0..iters {
                                    i += 1;
                                    case.run(i, black_box(&x), t, &mut y);
                                }
                                start.elapsed()
                            })
                        })
                    });
                    g.finish();
                    if bench_mode && only.as_ref().is_none_or(|o| name.contains(o.as_str())) {
                        let tm = pools[ti].install(|| time_case(&case, &x, t, Duration::from_millis(1500)));
                        let gbs = case.bytes as f64 / tm.best_s / 1e9;
                        let cpu = if threads == 1 { tm.cpu_s } else { None };
                        table.push((name, case.bytes, tm.best_s, gbs, 100.0 * gbs / bw[ti], cpu));
                    }
                }
            }
        }
    }
    c.final_summary();
    if bench_mode {
        println!("\n| case | weight MB | best time/call | GB/s (weights) | % of read BW (same threads) | on-CPU time/call (1 thr) |");
        println!("|---|---|---|---|---|---|");
        for (name, bytes, secs, gbs, pct, cpu) in table {
            let cpu = cpu.map_or("-".to_string(), |c| format!("{:.3} ms", c * 1e3));
            println!("| {name} | {:.1} | {:.3} ms | {gbs:.1} | {pct:.0}% | {cpu} |", bytes as f64 / 1e6, secs * 1e3);
        }
    }
}
