//! The q8 embedding / tied LM head of the packed format (version 2): the round trip of the
//! Bi-Mamba fixtures, the exact equality with an f32 model holding the dequantized matrix, the
//! file layout, the metadata an older or confused file is refused for, and the head's codes in
//! panel order computing the bits of the row order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bimamba_engine::linear::BinaryAct;
use bimamba_engine::pack::{write_packed, EmbedStorage, KeepDType};
use bimamba_engine::{DenseWeight, Linear, Model};
use bimamba_formats::{Checkpoint, DType};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures").join(name)
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bimamba-packq8-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Packs `src_dir` into a fresh scratch directory and loads the result.
fn pack(src_dir: &Path, tag: &str, keep: KeepDType, embed: EmbedStorage) -> (Model, PathBuf) {
    let src = Model::load(src_dir).unwrap();
    let out = scratch(tag);
    write_packed(&src, &Checkpoint::open(src_dir).unwrap(), &out, keep, embed).unwrap();
    std::fs::copy(src_dir.join("config.json"), out.join("config.json")).unwrap();
    (Model::load(&out).unwrap(), out)
}

/// max |a − b| / max |b|.
fn max_rel(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
    a.iter().zip(b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs() as f64)) / scale
}

fn tokens() -> Vec<u32> {
    (0..48).map(|i| (i * 37 + 5) % 451).collect()
}

/// Round trip of both Bi-Mamba fixtures through `--embed q8`.
///
/// Tolerance, from the 8-bit rounding: every entry of row v moves by at most half a step,
/// `|ΔW[v,d]| ≤ scale_v / 2 = max_d |W[v,d]| / 254`. In the head, `Δlogit_v = Σ_d ΔW[v,d] x_d`
/// with the final normed hidden state x, so `|Δlogit_v| ≤ (max_d |W[v,d]| / 254) · ‖x‖₁`. RMSNorm
/// gives `‖x / norm_f‖₂ ≤ √d_model` (eps only shrinks it), so `‖x‖₁ ≤ max |norm_f| · √d_model ·
/// √d_model`. That worst case, `B = max_v max_d |W[v,d]| / 254 · d_model · max |norm_f|`, adds all
/// rounding errors with one
/// sign; independent errors sum to about B / √d_model. The embedding lookup's rounding enters
/// the stack as an input perturbation of the same relative size (≤ 1/254 of the row's absmax),
/// which the layers pass on with a gain of order one. So we require every logit within B, and
/// the mean error within B / √d_model.
#[test]
fn q8_round_trip_of_the_fixtures() {
    let tokens = tokens();
    for name in ["ss-bimamba-col", "ss-bimamba-row"] {
        let latent = Model::load(&fixture(name)).unwrap();
        let (q8, dir) = pack(&fixture(name), &format!("{name}-q8"), KeepDType::Source, EmbedStorage::Q8);
        assert_eq!(q8.embedding.storage(), "q8");
        let want = latent.forward(&mut latent.new_state(), &tokens).unwrap();
        let got = q8.forward(&mut q8.new_state(), &tokens).unwrap();

        let d = latent.config.d_model;
        let w = latent.embedding.to_dense_f32();
        let absmax = w.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
        let norm_max = latent.norm_f.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
        let bound = absmax / 254.0 * d as f64 * norm_max;
        let errs: Vec<f64> = got.iter().zip(&want).map(|(a, b)| (a - b).abs() as f64).collect();
        let max_err = errs.iter().fold(0.0f64, |m, &e| m.max(e));
        let mean_err = errs.iter().sum::<f64>() / errs.len() as f64;
        let top = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        eprintln!("{name}: max |Δlogit| {max_err:.3e}, mean {mean_err:.3e}, B {bound:.3e}, max |logit| {top:.3}");
        assert!(max_err <= bound, "{name}: max |Δlogit| {max_err:.3e} > B = {bound:.3e}");
        assert!(mean_err <= bound / (d as f64).sqrt(), "{name}: mean |Δlogit| {mean_err:.3e} > B/√d");

        // The file: I8 codes [rows, d_model], F32 scales [rows], version 2, declared storage.
        let ck = Checkpoint::open(&dir).unwrap();
        let e = ck.info("backbone.embedding.weight").unwrap();
        assert_eq!((e.dtype, e.shape.clone()), (DType::I8, vec![464, 64]));
        let s = ck.info("backbone.embedding.weight_scale").unwrap();
        assert_eq!((s.dtype, s.shape.clone()), (DType::F32, vec![464]));
        assert_eq!(ck.metadata().get("version").map(String::as_str), Some("2"));
        assert_eq!(ck.metadata().get("embedding_storage").map(String::as_str), Some("q8"));
        // The codes are the q8 rule applied to the source rows.
        let (q_ref, s_ref) = bimamba_kernels::q8::quantize_rows(&w, 464, 64);
        let Linear::Dense { weight: DenseWeight::Q8 { q, scales, .. }, .. } = &q8.embedding else { unreachable!() };
        assert_eq!((q, scales), (&q_ref, &s_ref), "{name}: stored codes and scales");
    }
}

/// A q8 model computes exactly what an f32 model whose embedding is the dequantized q8 matrix
/// computes: lookups are bit-identical, and the head differs only in the rounding of
/// `scale · q` and the summation order (1e-5 of the largest logit).
#[test]
fn q8_equals_f32_with_the_dequantized_embedding() {
    let tokens = tokens();
    for name in ["ss-bimamba-col", "ss-bimamba-row"] {
        let (q8, _) = pack(&fixture(name), &format!("{name}-q8eq"), KeepDType::Source, EmbedStorage::Q8);
        let mut f32_twin = q8.clone();
        let (rows, cols) = (q8.embedding.rows(), q8.embedding.cols());
        f32_twin.embedding = Linear::Dense { rows, cols, weight: DenseWeight::F32(q8.embedding.to_dense_f32()) };
        assert_eq!(q8.embed(&tokens), f32_twin.embed(&tokens), "{name}: lookups");
        let a = q8.forward(&mut q8.new_state(), &tokens).unwrap();
        let b = f32_twin.forward(&mut f32_twin.new_state(), &tokens).unwrap();
        let e = max_rel(&a, &b);
        assert!(e <= 1e-5, "{name}: q8 vs dequantized f32 logits rel err {e:.2e}");
        // Decode steps take the same path with t = 1.
        let (mut sa, mut sb) = (q8.new_state(), f32_twin.new_state());
        for &t in &tokens[..8] {
            let e = max_rel(&q8.step(&mut sa, t).unwrap(), &f32_twin.step(&mut sb, t).unwrap());
            assert!(e <= 1e-5, "{name}: step rel err {e:.2e}");
        }
    }
}

/// Packing a packed model again: q8 → q8 keeps the codes, q8 → dense writes the dequantized
/// matrix (version 1 again), dense → dense is unchanged.
#[test]
fn packed_models_can_be_packed_again() {
    let (q8, q8_dir) = pack(&fixture("ss-bimamba-col"), "again-q8", KeepDType::F16, EmbedStorage::Q8);
    let (q8b, _) = pack(&q8_dir, "again-q8-q8", KeepDType::Source, EmbedStorage::Q8);
    assert_eq!(q8.embedding.to_dense_f32(), q8b.embedding.to_dense_f32());
    let (dense, dense_dir) = pack(&q8_dir, "again-q8-dense", KeepDType::Source, EmbedStorage::Dense);
    assert_eq!(dense.embedding.storage(), "f32");
    assert_eq!(dense.embedding.to_dense_f32(), q8.embedding.to_dense_f32());
    let ck = Checkpoint::open(&dense_dir).unwrap();
    assert_eq!(ck.metadata().get("version").map(String::as_str), Some("1"));
    assert!(ck.info("backbone.embedding.weight_scale").is_none());
    for (a, b) in q8.layers.iter().zip(&dense.layers) {
        assert_eq!(a.mixer.in_proj.to_dense_f32(), b.mixer.in_proj.to_dense_f32());
    }
    let tokens = tokens();
    let a = q8.forward(&mut q8.new_state(), &tokens).unwrap();
    let b = dense.forward(&mut dense.new_state(), &tokens).unwrap();
    assert!(max_rel(&a, &b) <= 1e-5);
}

/// Rewrites a q8-packed file with other metadata (or the scale tensor dropped) and expects the
/// loader's error to name the file and contain `needle`.
#[test]
fn inconsistent_q8_files_are_refused() {
    let (_, dir) = pack(&fixture("ss-bimamba-col"), "bad-src", KeepDType::Source, EmbedStorage::Q8);
    let ck = Checkpoint::open(&dir).unwrap();
    let infos: Vec<_> = ck.tensors().into_iter().cloned().collect();
    let meta = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        let mut m: BTreeMap<String, String> = ck.metadata().clone().into_iter().collect();
        for (k, v) in pairs {
            if v.is_empty() {
                m.remove(*k);
            } else {
                m.insert(k.to_string(), v.to_string());
            }
        }
        m
    };
    let cases: Vec<(&str, BTreeMap<String, String>, bool, &str)> = vec![
        // What a reader of version 1 sees: the version it does not read.
        ("v3", meta(&[("version", "3")]), false, "version"),
        ("undeclared", meta(&[("embedding_storage", "")]), false, "does not declare embedding_storage"),
        ("v1-q8", meta(&[("version", "1")]), false, "needs packed format version 2"),
        ("q4", meta(&[("embedding_storage", "q4")]), false, "\"q4\" is not supported"),
        ("noscale", meta(&[]), true, "backbone.embedding.weight_scale"),
    ];
    for (tag, m, drop_scale, needle) in cases {
        let out = scratch(&format!("bad-{tag}"));
        std::fs::copy(dir.join("config.json"), out.join("config.json")).unwrap();
        let views: Vec<(String, DType, Vec<usize>, &[u8])> = infos
            .iter()
            .filter(|i| !(drop_scale && i.name.ends_with("_scale")))
            .map(|i| (i.name.clone(), i.dtype, i.shape.clone(), ck.bytes(&i.name).unwrap()))
            .collect();
        bimamba_formats::write_safetensors_atomic(&out.join("model.safetensors"), &views, &m).unwrap();
        let err = Model::load(&out).unwrap_err().to_string();
        assert!(err.contains(needle) && err.contains("model.safetensors"), "{tag}: {err}");
    }
}

/// Without `--embed q8` the file is version 1, as before.
#[test]
fn dense_packing_stays_version_1() {
    let (m, dir) = pack(&fixture("ss-bimamba-col"), "dense-v1", KeepDType::F16, EmbedStorage::Dense);
    assert_eq!(m.embedding.storage(), "f16");
    let ck = Checkpoint::open(&dir).unwrap();
    assert_eq!(ck.metadata().get("version").map(String::as_str), Some("1"));
    assert!(ck.metadata().get("embedding_storage").is_none());
}

/// `Model::set_binary_act` stores a q8 head in panel order where the int8 head runs the
/// AVX512-VNNI kernel (else in row order); the order changes no bit: lookups, prefill, steps and
/// a batched step equal those of the same model with the codes in row order, under int8 and
/// under f32 activations (the latter through the panel fallback when `binary_act` is assigned
/// without re-arranging), and packing it again writes the row-order codes.
#[test]
fn panel_order_gives_the_same_bits() {
    let tokens = tokens();
    // 464 rows: 14 whole panels and a row-major tail of 16 rows; 64 columns.
    let (mut m, _) = pack(&fixture("ss-bimamba-col"), "panels", KeepDType::Source, EmbedStorage::Q8);
    let row_codes = m.embedding.clone();
    m.set_binary_act(BinaryAct::Int8);
    let vnni = m.lm_head().effective_act(BinaryAct::Int8) == BinaryAct::Int8;
    let is_panels = matches!(m.embedding, Linear::Dense { weight: DenseWeight::Q8Panels { .. }, .. });
    assert_eq!(is_panels, vnni, "panel order exactly where the int8 head has its SIMD kernel");
    eprintln!("q8 head in panel order: {is_panels}");
    let mut rows = m.clone();
    rows.embedding.arrange_q8(false);
    assert!(matches!(rows.embedding, Linear::Dense { weight: DenseWeight::Q8 { .. }, .. }));
    if let (
        Linear::Dense { weight: DenseWeight::Q8 { q: a, .. }, .. },
        Linear::Dense { weight: DenseWeight::Q8 { q: b, .. }, .. },
    ) = (&row_codes, &m.embedding.to_q8())
    {
        assert_eq!(a, b, "to_q8 gives the codes in row order");
    }
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    for act in [BinaryAct::Int8, BinaryAct::F32] {
        m.binary_act = act;
        rows.binary_act = act;
        assert_eq!(m.embed(&tokens), rows.embed(&tokens), "{act}: lookups");
        let (a, b) =
            (m.forward(&mut m.new_state(), &tokens).unwrap(), rows.forward(&mut rows.new_state(), &tokens).unwrap());
        assert_eq!(bits(a), bits(b), "{act}: prefill logits");
        let (mut sa, mut sb) = (m.new_state(), rows.new_state());
        for &t in &tokens[..8] {
            assert_eq!(bits(m.step(&mut sa, t).unwrap()), bits(rows.step(&mut sb, t).unwrap()), "{act}: step");
        }
        let mut states_a: Vec<_> = (0..8).map(|_| m.new_state()).collect();
        let mut states_b: Vec<_> = (0..8).map(|_| rows.new_state()).collect();
        let (mut ra, mut rb): (Vec<_>, Vec<_>) = (states_a.iter_mut().collect(), states_b.iter_mut().collect());
        for step in 0..3 {
            let toks = &tokens[8 * step..8 * step + 8];
            let (a, b) = (m.step_batch(&mut ra, toks).unwrap(), rows.step_batch(&mut rb, toks).unwrap());
            assert_eq!(bits(a), bits(b), "{act}: batched step {step}");
        }
    }
    // Back to f32 activations through the setter: row order again.
    m.set_binary_act(BinaryAct::F32);
    assert!(matches!(m.embedding, Linear::Dense { weight: DenseWeight::Q8 { .. }, .. }));
}
