//! Layer-by-layer calibration of a whole model, the way GPTQ, BiLLM and PB-LLM run (their
//! `quant_sequential`) and the Bi-Mamba paper applied them: layers in model order, each calibrated
//! on the inputs that the already-quantized layers before it produce.
//!
//! The residual streams of all calibration windows are kept at the current layer boundary
//! (`[t, d_model]` each). For layer i:
//! 1. in_proj inputs are the layer's pre-norm of the streams, `RMSNorm(h) ⊙ norm.weight` →
//!    Hessian → quantize in_proj;
//! 2. the layer is run (fresh state per window) with the quantized in_proj, its out_proj inputs
//!    observed → Hessian → quantize out_proj;
//! 3. the streams advance through the fully quantized layer (from the out_proj inputs kept in
//!    step 2 when they fit in memory).

use std::time::Instant;

use rayon::prelude::*;

use bimamba_engine::mixer::rms_norm;
use bimamba_engine::state::{LayerState, StateDtype};
use bimamba_engine::{Config, DenseWeight, Linear, Model, Proj};

use crate::linalg::Hessian;
use crate::sweep::relative_output_error;
use crate::{quantize_weight, Bits, QuantError, Result, Settings};

/// What quantizing one projection did.
#[derive(Clone, Debug, PartialEq)]
pub struct ProjReport {
    pub layer: usize,
    pub proj: Proj,
    pub rows: usize,
    pub cols: usize,
    pub bits: Bits,
    /// See [`crate::Quantized::salient_fraction`].
    pub salient_fraction: Option<f64>,
    /// `‖X Wᵀ − X Ŵᵀ‖² / ‖X Wᵀ‖²` over this projection's calibration inputs X (`None` without
    /// calibration).
    pub rel_error: Option<f64>,
    /// RMS of the calibration inputs (`None` without calibration).
    pub input_rms: Option<f64>,
    pub seconds: f64,
}

/// `in_proj` / `out_proj`.
pub fn proj_name(p: Proj) -> &'static str {
    match p {
        Proj::In => "in_proj",
        Proj::Out => "out_proj",
    }
}

/// `n` windows of `len` tokens from `ids`, evenly spaced and deterministic: window k starts at
/// `⌊k · (ids.len() − len) / (n − 1)⌋`. They do not overlap when `ids` holds at least `n · len`
/// tokens (see [`windows_overlap`]).
pub fn calibration_windows(ids: &[u32], n: usize, len: usize) -> Result<Vec<Vec<u32>>> {
    if n == 0 {
        return Err(QuantError::Setting {
            name: "calibration samples",
            detail: "expected at least 1 window, got 0".into(),
        });
    }
    if len < 2 {
        return Err(QuantError::Setting {
            name: "calibration sequence length",
            detail: format!("expected at least 2 tokens per window, got {len}"),
        });
    }
    if ids.len() < len {
        return Err(QuantError::Setting {
            name: "calibration text",
            detail: format!("it encodes to {} tokens, fewer than one window of {len}", ids.len()),
        });
    }
    let span = ids.len() - len;
    Ok((0..n)
        .map(|k| {
            let start = if n == 1 { 0 } else { (k as u128 * span as u128 / (n - 1) as u128) as usize };
            ids[start..start + len].to_vec()
        })
        .collect())
}

/// Whether [`calibration_windows`] has to overlap windows to fit `n` of them.
pub fn windows_overlap(tokens: usize, n: usize, len: usize) -> bool {
    n > 1 && tokens < n.saturating_mul(len)
}

/// The out_proj inputs of all windows are kept from step 2 to step 3 when they fit in this many
/// bytes (saving one pass through the mixer per layer); otherwise step 3 re-runs the layer.
const CACHE_BYTES: usize = 2 << 30;

fn fresh_state(cfg: &Config) -> LayerState {
    LayerState::new(cfg, StateDtype::F32)
}

fn in_context(layer: usize, proj: Proj) -> impl FnOnce(QuantError) -> QuantError {
    move |e| QuantError::Layer { layer, proj: proj_name(proj), source: Box::new(e) }
}

/// Quantizes one projection, returning the dequantized replacement and its report.
fn quantize_proj(
    settings: &Settings,
    lin: &Linear,
    hess: Option<&Hessian>,
    layer: usize,
    proj: Proj,
) -> Result<(Linear, ProjReport)> {
    let t0 = Instant::now();
    let (rows, cols) = (lin.rows(), lin.cols());
    let w = lin.to_dense_f32();
    let q = quantize_weight(settings, &w, rows, cols, hess).map_err(in_context(layer, proj))?;
    let rel_error = hess.map(|h| relative_output_error(&w, &q.weight, rows, cols, h));
    let report = ProjReport {
        layer,
        proj,
        rows,
        cols,
        bits: q.bits,
        salient_fraction: q.salient_fraction,
        rel_error,
        input_rms: hess.map(Hessian::input_rms),
        seconds: t0.elapsed().as_secs_f64(),
    };
    let dense = Linear::Dense { rows, cols, weight: DenseWeight::F32(q.weight) };
    Ok((dense, report))
}

/// Quantizes every in_proj and out_proj of `model` in place (each becomes a dense f32 matrix of
/// the dequantized values), calibrating on `windows` of token ids when the method needs it.
/// `progress` sees each projection's report as soon as it is done.
pub fn quantize_model(
    model: &mut Model,
    windows: &[Vec<u32>],
    settings: &Settings,
    progress: &mut dyn FnMut(&ProjReport),
) -> Result<Vec<ProjReport>> {
    quantize_model_with(model, windows, settings, progress, CACHE_BYTES)
}

/// [`quantize_model`] with the out_proj-input cache limited to `cache_bytes`.
fn quantize_model_with(
    model: &mut Model,
    windows: &[Vec<u32>],
    settings: &Settings,
    progress: &mut dyn FnMut(&ProjReport),
    cache_bytes: usize,
) -> Result<Vec<ProjReport>> {
    settings.validate()?;
    for (i, l) in model.layers.iter().enumerate() {
        for (p, lin) in [(Proj::In, &l.mixer.in_proj), (Proj::Out, &l.mixer.out_proj)] {
            if lin.is_binary() {
                return Err(in_context(i, p)(QuantError::Setting {
                    name: "model",
                    detail: "this projection is already 1-bit (a Bi-Mamba checkpoint); quantize a full-precision model"
                        .into(),
                }));
            }
        }
    }
    let mut reports = Vec::with_capacity(2 * model.layers.len());
    if !settings.method.needs_calibration() {
        for i in 0..model.layers.len() {
            for p in [Proj::In, Proj::Out] {
                let m = &mut model.layers[i].mixer;
                let slot = if p == Proj::In { &mut m.in_proj } else { &mut m.out_proj };
                let (lin, rep) = quantize_proj(settings, slot, None, i, p)?;
                *slot = lin;
                progress(&rep);
                reports.push(rep);
            }
        }
        return Ok(reports);
    }

    let vocab = model.vocab_size();
    if windows.is_empty() || windows.iter().any(|w| w.is_empty()) {
        return Err(QuantError::Setting {
            name: "calibration",
            detail: format!("{} needs at least one non-empty calibration window", settings.method.name()),
        });
    }
    if let Some(&id) = windows.iter().flatten().find(|&&id| id as usize >= vocab) {
        return Err(QuantError::Setting {
            name: "calibration",
            detail: format!(
                "token id {id} is outside the model's {vocab} embedding rows; use the model's own tokenizer"
            ),
        });
    }
    let cfg = model.config.clone();
    let d = cfg.d_model;
    // One residual stream [t, d_model] per window, at the boundary of the layer being quantized.
    let mut streams: Vec<Vec<f32>> = windows.iter().map(|w| model.embed(w)).collect();
    let n_layer = model.layers.len();
    let tokens: usize = windows.iter().map(Vec::len).sum();
    let cache = tokens.saturating_mul(cfg.d_inner()).saturating_mul(4) <= cache_bytes;
    // Windows run through a layer in parallel, a chunk at a time; their Gram matrices are added
    // in window order, so the result does not depend on the thread count.
    let chunk = rayon::current_num_threads().max(1);
    for li in 0..n_layer {
        let layer = &model.layers[li];
        // 1. in_proj: its input is the layer's pre-norm of the stream (as Layer::forward computes it).
        let mut h_in = Hessian::new(d);
        for (sc, wc) in streams.chunks(chunk).zip(windows.chunks(chunk)) {
            let us: Vec<Vec<f32>> = sc
                .par_iter()
                .map(|h| {
                    let mut u = h.clone();
                    for row in u.chunks_exact_mut(d) {
                        rms_norm(row, &layer.norm, cfg.norm_eps);
                    }
                    u
                })
                .collect();
            for (u, win) in us.iter().zip(wc) {
                h_in.add(u, win.len());
            }
        }
        let (lin, rep) = quantize_proj(settings, &layer.mixer.in_proj, Some(&h_in), li, Proj::In)?;
        drop(h_in);
        model.layers[li].mixer.in_proj = lin;
        progress(&rep);
        reports.push(rep);

        // 2. out_proj: inputs observed while running the layer with its quantized in_proj.
        let layer = &model.layers[li];
        let mut h_out = Hessian::new(cfg.d_inner());
        let mut cached: Vec<Vec<f32>> = Vec::new();
        for (sc, wc) in streams.chunks(chunk).zip(windows.chunks(chunk)) {
            let ys: Vec<Vec<f32>> = sc
                .par_iter()
                .zip(wc)
                .map(|(h, win)| {
                    let mut scratch = h.clone();
                    let mut st = fresh_state(&cfg);
                    let mut y = Vec::new();
                    layer.forward(&cfg, &mut st, &mut scratch, win.len(), &mut |p, x, _| {
                        if p == Proj::Out {
                            y = x.to_vec();
                        }
                    });
                    y
                })
                .collect();
            for (y, win) in ys.iter().zip(wc) {
                h_out.add(y, win.len());
            }
            if cache {
                cached.extend(ys);
            }
        }
        let (lin, rep) = quantize_proj(settings, &layer.mixer.out_proj, Some(&h_out), li, Proj::Out)?;
        drop(h_out);
        model.layers[li].mixer.out_proj = lin;
        progress(&rep);
        reports.push(rep);

        // 3. Advance the streams through the quantized layer: h += out_proj(y) from the cached
        // out_proj inputs (the last step of Layer::forward), else by running the layer again.
        if li + 1 < n_layer {
            let layer = &model.layers[li];
            if cache {
                streams.par_iter_mut().zip(windows).zip(&cached).for_each(|((h, win), y)| {
                    let mut out = vec![0.0f32; win.len() * d];
                    layer.mixer.out_proj.forward(y, win.len(), &mut out);
                    h.iter_mut().zip(&out).for_each(|(a, b)| *a += b);
                });
            } else {
                streams.par_iter_mut().zip(windows).for_each(|(h, win)| {
                    let mut st = fresh_state(&cfg);
                    layer.forward(&cfg, &mut st, h, win.len(), &mut |_, _, _| {});
                });
            }
        }
    }
    Ok(reports)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;

    use bimamba_engine::ProjSite;

    use super::*;
    use crate::linalg::tests::Lcg;
    use crate::Method;

    pub(crate) fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures").join(name)
    }

    pub(crate) fn random_windows(n: usize, len: usize, vocab: usize, seed: u64) -> Vec<Vec<u32>> {
        let mut r = Lcg(seed);
        (0..n)
            .map(|_| (0..len).map(|_| ((r.next() + 1.0) * 0.5 * vocab as f64) as u32 % vocab as u32).collect())
            .collect()
    }

    /// Hessians of every projection's inputs when `model` runs `windows`.
    fn observed_hessians(model: &Model, windows: &[Vec<u32>]) -> Vec<(ProjSite, Hessian)> {
        let cfg = &model.config;
        let mut hs: Vec<(ProjSite, Hessian)> = Vec::new();
        for layer in 0..cfg.n_layer {
            hs.push((ProjSite { layer, proj: Proj::In }, Hessian::new(cfg.d_model)));
            hs.push((ProjSite { layer, proj: Proj::Out }, Hessian::new(cfg.d_inner())));
        }
        for w in windows {
            let mut st = model.new_state();
            model
                .forward_observed(&mut st, w, &mut |site, x, t| {
                    let h = hs.iter_mut().find(|(s, _)| *s == site).expect("every site has a Hessian");
                    h.1.add(x, t);
                })
                .expect("forward");
        }
        hs
    }

    #[test]
    fn windows_are_even_and_deterministic() {
        let ids: Vec<u32> = (0..100).collect();
        let w = calibration_windows(&ids, 3, 10).expect("windows");
        assert_eq!(w, vec![(0..10).collect::<Vec<u32>>(), (45..55).collect(), (90..100).collect()]);
        assert_eq!(calibration_windows(&ids, 1, 100).expect("one")[0], ids);
        assert!(!windows_overlap(100, 10, 10));
        assert!(windows_overlap(100, 11, 10));
        assert!(calibration_windows(&ids, 2, 101).is_err());
        assert!(calibration_windows(&ids, 0, 10).is_err());
        assert!(calibration_windows(&ids, 2, 1).is_err());
    }

    /// The in_proj input computed from the stream is exactly what the layer feeds its in_proj.
    #[test]
    fn in_proj_input_is_the_layer_prenorm() {
        let model = Model::load(&fixture("ss-mamba2-g1")).expect("fixture");
        let win = &random_windows(1, 23, model.vocab_size(), 3)[0];
        let mut u = model.embed(win);
        for row in u.chunks_exact_mut(model.config.d_model) {
            rms_norm(row, &model.layers[0].norm, model.config.norm_eps);
        }
        let mut seen = Vec::new();
        let mut st = model.new_state();
        model
            .forward_observed(&mut st, win, &mut |site, x, _| {
                if site == (ProjSite { layer: 0, proj: Proj::In }) {
                    seen = x.to_vec();
                }
            })
            .expect("forward");
        assert_eq!(seen, u);
    }

    /// Each projection was calibrated on the inputs of the quantized model, not the FP one: the
    /// reported error is reproduced with the inputs the final quantized model sees, and differs
    /// from the error under the FP model's inputs (except layer 0's in_proj, which has none
    /// quantized before it).
    #[test]
    fn calibration_is_sequential() {
        let fp = Model::load(&fixture("ss-mamba2-g1")).expect("fixture");
        let windows = random_windows(3, 48, fp.vocab_size(), 5);
        let mut q = fp.clone();
        let reports =
            quantize_model(&mut q, &windows, &Settings::new(Method::Gptq { bits: 2 }), &mut |_| {}).expect("quantize");
        assert_eq!(reports.len(), 2 * fp.config.n_layer);
        let hq = observed_hessians(&q, &windows);
        let hf = observed_hessians(&fp, &windows);
        for rep in &reports {
            let site = ProjSite { layer: rep.layer, proj: rep.proj };
            let pick =
                |hs: &[(ProjSite, Hessian)]| hs.iter().find(|(s, _)| *s == site).map(|(_, h)| h.clone()).expect("site");
            let m = &fp.layers[rep.layer].mixer;
            let w = if rep.proj == Proj::In { m.in_proj.to_dense_f32() } else { m.out_proj.to_dense_f32() };
            let qm = &q.layers[rep.layer].mixer;
            let wq = if rep.proj == Proj::In { qm.in_proj.to_dense_f32() } else { qm.out_proj.to_dense_f32() };
            let reported = rep.rel_error.expect("calibrated");
            let with_q = relative_output_error(&w, &wq, rep.rows, rep.cols, &pick(&hq));
            let with_fp = relative_output_error(&w, &wq, rep.rows, rep.cols, &pick(&hf));
            assert!(
                (reported - with_q).abs() <= 1e-3 * reported,
                "{site:?}: reported {reported} vs quantized-model inputs {with_q}"
            );
            if !(rep.layer == 0 && rep.proj == Proj::In) {
                assert!((reported - with_fp).abs() > 1e-2 * reported, "{site:?}: {reported} vs FP inputs {with_fp}");
            }
            assert!(reported > 0.0 && reported < 1.0, "{site:?}: relative error {reported}");
        }
    }

    /// Advancing the streams from the cached out_proj inputs equals re-running the layer.
    #[test]
    fn cached_and_rerun_streams_agree() {
        let fp = Model::load(&fixture("ss-mamba2-g1")).expect("fixture");
        let windows = random_windows(2, 40, fp.vocab_size(), 9);
        let s = Settings::new(Method::Billm);
        let (mut a, mut b) = (fp.clone(), fp.clone());
        let ra = quantize_model_with(&mut a, &windows, &s, &mut |_| {}, CACHE_BYTES).expect("cached");
        let rb = quantize_model_with(&mut b, &windows, &s, &mut |_| {}, 0).expect("re-run");
        for (x, y) in ra.iter().zip(&rb) {
            assert_eq!((x.rel_error, x.input_rms, x.bits), (y.rel_error, y.input_rms, y.bits));
        }
        for (la, lb) in a.layers.iter().zip(&b.layers) {
            assert_eq!(la.mixer.in_proj.to_dense_f32(), lb.mixer.in_proj.to_dense_f32());
            assert_eq!(la.mixer.out_proj.to_dense_f32(), lb.mixer.out_proj.to_dense_f32());
        }
    }

    #[test]
    fn xnor_needs_no_calibration_and_binary_models_are_refused() {
        let mut m = Model::load(&fixture("ss-mamba2-g1")).expect("fixture");
        let before = m.layers[1].mixer.out_proj.to_dense_f32();
        let reports = quantize_model(&mut m, &[], &Settings::new(Method::Xnor), &mut |_| {}).expect("xnor");
        assert!(reports.iter().all(|r| r.rel_error.is_none() && r.bits.paper == 1.0));
        let cols = m.layers[1].mixer.out_proj.cols();
        let want = crate::xnor::xnor(&before, before.len() / cols, cols).weight;
        assert_eq!(m.layers[1].mixer.out_proj.to_dense_f32(), want);

        let mut fp = Model::load(&fixture("ss-mamba2-g1")).expect("fixture");
        let err =
            quantize_model(&mut fp, &[], &Settings::new(Method::Billm), &mut |_| {}).expect_err("needs calibration");
        assert!(err.to_string().contains("calibration"), "{err}");

        let mut bin = Model::load(&fixture("ss-bimamba-col")).expect("fixture");
        let err = quantize_model(&mut bin, &[], &Settings::new(Method::Xnor), &mut |_| {}).expect_err("binary");
        assert!(err.to_string().contains("already 1-bit"), "{err}");

        let mut fp = Model::load(&fixture("ss-mamba2-g1")).expect("fixture");
        let bad = vec![vec![0u32, 9999]];
        let err = quantize_model(&mut fp, &bad, &Settings::new(Method::Gptq { bits: 3 }), &mut |_| {})
            .expect_err("token range");
        assert!(err.to_string().contains("9999"), "{err}");
    }
}
