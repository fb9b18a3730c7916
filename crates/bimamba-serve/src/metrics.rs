//! Counters and gauges for `GET /metrics`, in Prometheus' text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the time-to-first-token histogram's buckets.
const TTFT_BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Default)]
pub struct Metrics {
    /// Requests answered, by endpoint and HTTP status.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    pub prompt_tokens: AtomicU64,
    pub cached_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub cancelled: AtomicU64,
    /// Requests accepted but not yet admitted into the batch.
    pub queue_length: AtomicU64,
    /// Sequences being prefilled or decoded.
    pub active_sequences: AtomicU64,
    /// Sequences advanced by the last batched decode step.
    pub batch_size: AtomicU64,
    pub decode_steps: AtomicU64,
    pub cache_bytes: AtomicU64,
    ttft: Mutex<Histogram>,
}

#[derive(Default)]
struct Histogram {
    counts: [u64; TTFT_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
    pub fn request(&self, endpoint: &'static str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((endpoint, status)).or_default() += 1;
        }
    }

    pub fn time_to_first_token(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Ok(mut h) = self.ttft.lock() {
            for (c, &le) in h.counts.iter_mut().zip(&TTFT_BUCKETS) {
                if s <= le {
                    *c += 1;
                }
            }
            h.count += 1;
            h.sum += s;
        }
    }

    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn set(gauge: &AtomicU64, v: usize) {
        gauge.store(v as u64, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.push_str("# HELP bimamba_requests_total Requests answered, by endpoint and HTTP status.\n");
        out.push_str("# TYPE bimamba_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((endpoint, status), n) in m.iter() {
                let _ = writeln!(out, "bimamba_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}");
            }
        }
        let scalars: [(&str, &str, &str, u64); 11] = [
            ("bimamba_prompt_tokens_total", "counter", "Prompt tokens of accepted requests.", get(&self.prompt_tokens)),
            (
                "bimamba_cached_prompt_tokens_total",
                "counter",
                "Prompt tokens taken from the prefix-state cache instead of being prefilled.",
                get(&self.cached_tokens),
            ),
            ("bimamba_generated_tokens_total", "counter", "Tokens generated.", get(&self.generated_tokens)),
            (
                "bimamba_prefix_cache_hits_total",
                "counter",
                "Requests that resumed a cached state.",
                get(&self.cache_hits),
            ),
            (
                "bimamba_prefix_cache_misses_total",
                "counter",
                "Requests prefilled from the start.",
                get(&self.cache_misses),
            ),
            (
                "bimamba_cancelled_total",
                "counter",
                "Sequences dropped because their client went away.",
                get(&self.cancelled),
            ),
            ("bimamba_decode_steps_total", "counter", "Batched decode steps run.", get(&self.decode_steps)),
            ("bimamba_queue_length", "gauge", "Requests waiting to join the batch.", get(&self.queue_length)),
            ("bimamba_active_sequences", "gauge", "Sequences being prefilled or decoded.", get(&self.active_sequences)),
            ("bimamba_batch_size", "gauge", "Sequences advanced by the last decode step.", get(&self.batch_size)),
            ("bimamba_prefix_cache_bytes", "gauge", "Bytes held by the prefix-state cache.", get(&self.cache_bytes)),
        ];
        for (name, kind, help, v) in scalars {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
        out.push_str("# HELP bimamba_time_to_first_token_seconds From a request's arrival to its first token.\n");
        out.push_str("# TYPE bimamba_time_to_first_token_seconds histogram\n");
        if let Ok(h) = self.ttft.lock() {
            for (c, le) in h.counts.iter().zip(TTFT_BUCKETS) {
                let _ = writeln!(out, "bimamba_time_to_first_token_seconds_bucket{{le=\"{le}\"}} {c}");
            }
            let _ = writeln!(out, "bimamba_time_to_first_token_seconds_bucket{{le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "bimamba_time_to_first_token_seconds_sum {}", h.sum);
            let _ = writeln!(out, "bimamba_time_to_first_token_seconds_count {}", h.count);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let m = Metrics::default();
        m.request("completions", 200);
        m.request("completions", 200);
        m.request("chat", 400);
        Metrics::add(&m.generated_tokens, 7);
        m.time_to_first_token(Duration::from_millis(30));
        m.time_to_first_token(Duration::from_secs(3));
        let text = m.render();
        assert!(text.contains("bimamba_requests_total{endpoint=\"completions\",status=\"200\"} 2\n"), "{text}");
        assert!(text.contains("bimamba_requests_total{endpoint=\"chat\",status=\"400\"} 1\n"));
        assert!(text.contains("bimamba_generated_tokens_total 7\n"));
        assert!(text.contains("bimamba_time_to_first_token_seconds_bucket{le=\"0.025\"} 0\n"));
        assert!(text.contains("bimamba_time_to_first_token_seconds_bucket{le=\"0.05\"} 1\n"));
        assert!(text.contains("bimamba_time_to_first_token_seconds_bucket{le=\"5\"} 2\n"));
        assert!(text.contains("bimamba_time_to_first_token_seconds_count 2\n"));
    }
}
