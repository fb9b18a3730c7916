//! Speed of one GGUF matrix product, f32 activations (dequantized weights, the dense f32 kernel)
//! against 8-bit activations (`qdot`), on SmolLM2-135M's shapes with random Q4_1 weights.
//!
//! `cargo run --release -p bimamba-llama --features testing --example bench_qdot -- [T] [THREADS]` (defaults 64, 1).
//! Prints the best of about one second per case, in G weight·token products per second.

use std::time::Instant;

use bimamba_formats::DType;
use bimamba_llama::qdot::{select, QActs, QdotMatrix};
use bimamba_llama::testing::{q4_1, Lcg};
use bimamba_llama::Matrix;

fn best(mut f: impl FnMut()) -> f64 {
    let (mut best, start) = (f64::INFINITY, Instant::now());
    while start.elapsed().as_secs_f64() < 1.0 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("T and THREADS are counts")).collect();
    let (t, threads) = (args.first().copied().unwrap_or(64), args.get(1).copied().unwrap_or(1));
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
    let vnni = select() as *const () != bimamba_llama::qdot::groups_scalar as *const ();
    println!("t = {t}, {threads} thread(s), qdot kernel: {}", if vnni { "AVX-512 VNNI" } else { "scalar" });
    for (name, rows, cols) in
        [("attn_q", 576, 576), ("ffn_up", 1536, 576), ("ffn_down", 576, 1536), ("head", 49152, 576)]
    {
        let (bytes, deq) = q4_1(&Lcg(1).vec(rows * cols, 1.0));
        let dense = Matrix::f32(deq, rows, cols);
        let q = QdotMatrix::from_gguf(DType::Q4_1, &bytes, rows, cols).expect("valid sizes");
        let x = Lcg(2).vec(t * cols, 1.0);
        let a = QActs::quantize(&x, t, cols);
        let work = (rows * cols * t) as f64 / 1e9;
        pool.install(|| {
            let f = best(|| drop(dense.forward(&x, t)));
            let qq = best(|| drop(q.forward_q(&a)));
            let qa = best(|| drop(QActs::quantize(&x, t, cols)));
            println!(
                "{name:9} [{rows:5} x {cols:4}]  f32 {:6.1} G/s   q8 {:6.1} G/s ({:.2}x)   quantizing x: {:.1} us",
                work / f,
                work / qq,
                f / qq,
                qa * 1e6
            );
        });
    }
}
