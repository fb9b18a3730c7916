//! Random models of a given shape, built in memory (benchmarks, calibration timing): the paper's
//! Bi-Mamba sizes without any files. Values follow the official initialization loosely (A_log =
//! log U[1,16], dt ≈ 0.01, D = 1, unit norms) and keep activations O(1) through deep stacks.

use std::path::Path;

use half::bf16;

use crate::config::Config;
use crate::linear::{BinaryAct, BinaryScales, DenseWeight, Linear};
use crate::mixer::Mixer;
use crate::model::{Layer, Model};
use crate::state::StateDtype;
use bimamba_lm::sampling::Rng;
use bimamba_lm::Result;

/// How the in_proj/out_proj weights are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProjFormat {
    /// Packed sign bits with column scales (Bi-Mamba).
    Binary,
    DenseF32,
    DenseBF16,
}

/// The Bi-Mamba shapes of ARCHITECTURE.md §1.1 (LLaMA-2 vocabulary of 32000, tied embeddings).
pub fn shape_config(name: &str) -> Option<Config> {
    let (d_model, n_layer) = match name {
        "130m" => (768, 24),
        "780m" => (1536, 48),
        "1.3b" => (2048, 48),
        "2.7b" => (2560, 64),
        _ => return None,
    };
    let json = format!(
        r#"{{"d_model": {d_model}, "n_layer": {n_layer}, "vocab_size": 32000, "pad_vocab_size_multiple": 16,
            "ssm_cfg": {{"layer": "Mamba2", "d_state": 128, "headdim": 64, "ngroups": 1, "expand": 2}},
            "tie_embeddings": true}}"#
    );
    Config::from_json_str(&json, Path::new("<built-in shape>")).ok()
}

pub const SHAPES: [&str; 4] = ["130m", "780m", "1.3b", "2.7b"];

fn uniform(rng: &mut Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.next_f64() as f32
}

fn vec_uniform(rng: &mut Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| uniform(rng, lo, hi)).collect()
}

fn random_linear(rng: &mut Rng, rows: usize, cols: usize, format: ProjFormat) -> Linear {
    // Scale 1/sqrt(cols): outputs stay O(1) for O(1) inputs.
    let a = 1.0 / (cols as f32).sqrt();
    match format {
        ProjFormat::Binary => {
            let rb = bimamba_kernels::pack::row_bytes(cols);
            let mut bits = vec![0u8; rows * rb];
            for row in bits.chunks_exact_mut(rb) {
                for chunk in row.chunks_mut(8) {
                    let r = rng.next_u64().to_le_bytes();
                    chunk.copy_from_slice(&r[..chunk.len()]);
                }
                // Padding bits past `cols` stay zero, as the packing spec requires.
                for j in cols..rb * 8 {
                    row[j / 8] &= !(1 << (j % 8));
                }
            }
            Linear::Binary {
                rows,
                cols,
                bits,
                scales: BinaryScales::Column {
                    alpha: vec_uniform(rng, cols, 0.5 * a, 1.5 * a),
                    beta: vec_uniform(rng, cols, -0.05 * a, 0.05 * a),
                },
            }
        }
        ProjFormat::DenseF32 => {
            Linear::Dense { rows, cols, weight: DenseWeight::F32(vec_uniform(rng, rows * cols, -a, a)) }
        }
        ProjFormat::DenseBF16 => Linear::Dense {
            rows,
            cols,
            weight: DenseWeight::BF16((0..rows * cols).map(|_| bf16::from_f32(uniform(rng, -a, a))).collect()),
        },
    }
}

/// A model of shape `cfg` with random weights; the embedding (and tied lm_head) is bf16.
pub fn random_model(cfg: Config, format: ProjFormat, seed: u64) -> Result<Model> {
    let mut rng = Rng::new(seed);
    let (d, v) = (cfg.d_model, cfg.padded_vocab_size);
    let embedding = Linear::Dense {
        rows: v,
        cols: d,
        weight: DenseWeight::BF16((0..v * d).map(|_| bf16::from_f32(uniform(&mut rng, -1.0, 1.0))).collect()),
    };
    let h = cfg.nheads;
    let layers = (0..cfg.n_layer)
        .map(|_| Layer {
            norm: vec![1.0; d],
            mixer: Mixer {
                in_proj: random_linear(&mut rng, cfg.d_in_proj(), d, format),
                conv_weight: vec_uniform(&mut rng, cfg.conv_dim() * cfg.d_conv, -0.5, 0.5),
                conv_bias: vec_uniform(&mut rng, cfg.conv_dim(), -0.1, 0.1),
                // softplus(dt_bias) ≈ 0.01 .. 0.1
                dt_bias: vec_uniform(&mut rng, h, -4.6, -2.3),
                a: (0..h).map(|_| -uniform(&mut rng, 1.0, 16.0)).collect(),
                d: vec![1.0; h],
                norm_weight: vec![1.0; cfg.d_inner()],
                out_proj: random_linear(&mut rng, d, cfg.d_inner(), format),
            },
        })
        .collect();
    Ok(Model {
        config: cfg,
        embedding,
        layers,
        norm_f: vec![1.0; d],
        lm_head: None,
        state_dtype: StateDtype::F32,
        binary_act: BinaryAct::F32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_match_the_spec_parameter_counts() {
        // ARCHITECTURE.md §1.1: 752.1M / 1306.3M / 2655.8M parameters with V = 32000, tied.
        for (name, want) in [("780m", 752.1e6), ("1.3b", 1306.3e6), ("2.7b", 2655.8e6)] {
            let c = shape_config(name).unwrap();
            let d = c.d_model;
            let per_layer =
                c.d_in_proj() * d + c.conv_dim() * (c.d_conv + 1) + 3 * c.nheads + c.d_inner() + c.d_inner() * d + d;
            let total = 32000 * d + c.n_layer * per_layer + d;
            assert!((total as f64 - want).abs() / want < 1e-3, "{name}: {total}");
        }
    }

    #[test]
    fn random_models_run_in_every_format() {
        let cfg = Config::from_json_str(
            r#"{"d_model": 64, "n_layer": 3, "vocab_size": 100, "ssm_cfg": {"layer": "Mamba2", "d_state": 16, "headdim": 16}}"#,
            Path::new("t"),
        )
        .unwrap();
        for f in [ProjFormat::Binary, ProjFormat::DenseF32, ProjFormat::DenseBF16] {
            let m = random_model(cfg.clone(), f, 1).unwrap();
            let logits = m.forward(&mut m.new_state(), &[1, 2, 3, 4]).unwrap();
            assert!(logits.iter().all(|x| x.is_finite()), "{f:?}");
        }
    }

    /// Prefill longer than one block (PREFILL_BLOCK) leaves the state and logits of single steps.
    #[test]
    fn multi_block_prefill_equals_single_steps() {
        let cfg = Config::from_json_str(
            r#"{"d_model": 32, "n_layer": 2, "vocab_size": 50, "ssm_cfg": {"layer": "Mamba2", "d_state": 8, "headdim": 16}}"#,
            Path::new("t"),
        )
        .unwrap();
        let m = random_model(cfg, ProjFormat::Binary, 3).unwrap();
        let n = 2 * crate::model::PREFILL_BLOCK + 37;
        let v = m.vocab_size();
        let tokens: Vec<u32> = (0..n as u32).map(|i| (i * 7 + 3) % 50).collect();
        let mut a = m.new_state();
        let full = m.forward(&mut a, &tokens).unwrap();
        let mut b = m.new_state();
        for (k, &t) in tokens.iter().enumerate() {
            let last = m.step(&mut b, t).unwrap();
            let want = &full[k * v..(k + 1) * v];
            let err = last.iter().zip(want).fold(0.0f32, |e, (x, y)| e.max((x - y).abs()));
            assert!(err <= 1e-3 * (1.0 + want.iter().fold(0.0f32, |m, v| m.max(v.abs()))), "token {k}: {err}");
        }
        assert_eq!(a.position, n);
        let last_only = m.forward_last(&mut m.new_state(), &tokens).unwrap();
        assert_eq!(last_only, full[(n - 1) * v..].to_vec());
        for (x, y) in a.layers.iter().zip(&b.layers) {
            let e = x.ssm.to_f32().iter().zip(&y.ssm.to_f32()).fold(0.0f32, |e, (p, q)| e.max((p - q).abs()));
            assert!(e <= 1e-4, "state differs by {e}");
        }
    }
}
