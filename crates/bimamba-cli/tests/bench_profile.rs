//! `bimamba bench --profile`: milliseconds per token for every section of the forward pass, for
//! prefill and decode; absent without the flag.

use serde_json::Value;

mod common;
use common::{bimamba, root};

fn bench(extra: &[&str]) -> Value {
    let m = root().join("fixtures/ss-bimamba-col").display().to_string();
    let base = ["bench", "--model", &m, "--threads", "1", "--decode-tokens", "3", "--prefill-tokens", "5"];
    let o = bimamba(&[&base[..], &["--no-dense", "--json"], extra].concat());
    assert_eq!(o.code, 0, "{}", o.stderr);
    serde_json::from_str(&o.stdout).unwrap()
}

#[test]
fn profile_reports_every_section() {
    let v = bench(&["--profile"]);
    let p = &v["profile_ms_per_token"];
    for phase in ["prefill", "decode"] {
        let sections = p[phase].as_object().unwrap_or_else(|| panic!("no {phase} profile in {v}"));
        let names: Vec<&str> = sections.keys().map(String::as_str).collect();
        for want in ["norms", "in_proj", "conv", "dt", "scan", "gate", "out_proj", "lm_head"] {
            assert!(names.contains(&want), "{phase}: {want} missing from {names:?}");
        }
        for (name, ms) in sections {
            let ms = ms.as_f64().unwrap();
            assert!(ms.is_finite() && ms >= 0.0, "{phase} {name}: {ms}");
        }
        // Work that always runs took measurable time, and the sections fit in the step's time.
        let total: f64 = sections.values().map(|x| x.as_f64().unwrap()).sum();
        assert!(sections["in_proj"].as_f64().unwrap() > 0.0 && sections["scan"].as_f64().unwrap() > 0.0);
        let tok_s = v[format!("{phase}_tok_s")].as_f64().unwrap();
        assert!(
            total <= 1e3 / tok_s * 1.01,
            "{phase}: sections sum to {total} ms/token, the step took {}",
            1e3 / tok_s
        );
    }
    assert!(p["decode"]["lm_head"].as_f64().unwrap() > 0.0, "decode computes the head every token");
    assert!(bench(&[])["profile_ms_per_token"].is_null(), "no profile without --profile");
}

#[test]
fn peak_rss_of_the_model_and_of_the_probe_are_told_apart() {
    let v = bench(&[]);
    let (model, probe) = (v["peak_rss_mb"].as_f64().unwrap(), v["peak_rss_with_probe_mb"].as_f64().unwrap());
    // The probe reads a 1 GiB buffer: the process's peak includes it, the model's does not.
    assert!(model > 0.0 && model < 900.0, "model {model} MiB");
    assert!(probe >= model + 900.0, "model {model} MiB, with the probe {probe} MiB");
}

#[cfg(target_os = "linux")]
#[test]
fn page_faults_of_prefill_and_decode_are_reported() {
    let v = bench(&[]);
    for key in ["prefill_page_faults", "decode_page_faults"] {
        assert!(v[key].as_u64().is_some(), "{key}: {}", v[key]);
    }
}
