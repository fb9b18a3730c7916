//! What the alternating A/B benches share: environment knobs, the median, a timed loop, rayon
//! pools and the shape list (`BIMAMBA_AB_SHAPE=ROWSxCOLS` measures that shape instead,
//! `BIMAMBA_AB_ONLY=substring` keeps the shapes whose name contains it).
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// `name` parsed as a number, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

/// Median of `v` (sorted in place); NaN when empty.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

/// Mean seconds per call over about `budget` of calls (at least 3).
pub fn run_for(budget: Duration, mut call: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0usize;
    while n < 3 || start.elapsed() < budget {
        call();
        n += 1;
    }
    start.elapsed().as_secs_f64() / n as f64
}

/// One rayon pool per thread count.
pub fn pools(threads: &[usize]) -> Vec<rayon::ThreadPool> {
    threads
        .iter()
        .map(|&n| rayon::ThreadPoolBuilder::new().num_threads(n).build().expect("building a rayon pool"))
        .collect()
}

/// `defaults`, or the shape of `BIMAMBA_AB_SHAPE`, filtered by `BIMAMBA_AB_ONLY`.
pub fn shapes(defaults: &[(&'static str, usize, usize)]) -> Vec<(&'static str, usize, usize)> {
    let custom: Option<(&'static str, usize, usize)> = std::env::var("BIMAMBA_AB_SHAPE").ok().and_then(|v| {
        let (r, c) = v.split_once('x')?;
        Some(("custom", r.trim().parse().ok()?, c.trim().parse().ok()?))
    });
    let only = std::env::var("BIMAMBA_AB_ONLY").ok();
    let all = custom.map_or_else(|| defaults.to_vec(), |c| vec![c]);
    all.into_iter().filter(|s| only.as_ref().is_none_or(|o| s.0.contains(o.as_str()))).collect()
}
