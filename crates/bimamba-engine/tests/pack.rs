//! The packed 1-bit format round-trips: packed and latent models give the same logits, the file
//! really holds 1 bit per projection weight, and unknown versions are refused.

use std::path::{Path, PathBuf};

use bimamba_engine::pack::{write_packed, EmbedStorage, KeepDType};
use bimamba_engine::Model;
use bimamba_formats::Checkpoint;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures").join(name)
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bimamba-pack-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn pack_fixture(name: &str, keep: KeepDType) -> (Model, Model, PathBuf) {
    let src_dir = fixture(name);
    let latent = Model::load(&src_dir).unwrap();
    let out = scratch(&format!("{name}-{keep:?}"));
    write_packed(&latent, &Checkpoint::open(&src_dir).unwrap(), &out, keep, EmbedStorage::Dense).unwrap();
    std::fs::copy(src_dir.join("config.json"), out.join("config.json")).unwrap();
    let packed = Model::load(&out).unwrap();
    (latent, packed, out)
}

fn max_rel(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
    a.iter().zip(b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs() as f64)) / scale
}

#[test]
fn packed_equals_latent_both_patterns() {
    let tokens: Vec<u32> = (0..40).map(|i| (i * 37 + 5) % 451).collect();
    for name in ["ss-bimamba-col", "ss-bimamba-row"] {
        let (latent, packed, dir) = pack_fixture(name, KeepDType::Source);
        let a = latent.forward(&mut latent.new_state(), &tokens).unwrap();
        let b = packed.forward(&mut packed.new_state(), &tokens).unwrap();
        let e = max_rel(&b, &a);
        assert!(e <= 1e-5, "{name}: packed vs latent logits rel err {e:.2e}");
        for (l, p) in latent.layers.iter().zip(&packed.layers) {
            assert_eq!(l.mixer.in_proj.to_dense_f32(), p.mixer.in_proj.to_dense_f32(), "{name}: exact round trip");
        }
        // 1 bit per weight on disk: the bits tensor is rows × ceil(cols/64)·8 bytes.
        let ck = Checkpoint::open(&dir).unwrap();
        let info = ck.info("backbone.layers.0.mixer.in_proj.bits").unwrap();
        assert_eq!(info.shape, vec![296, 8]);
        assert!(ck.info("backbone.layers.0.mixer.in_proj.weight").is_none());
        assert_eq!(ck.metadata().get("format").map(String::as_str), Some("bimamba-packed"));
    }
}

#[test]
fn unknown_version_and_undeclared_bits_are_refused() {
    let (_, _, dir) = pack_fixture("ss-bimamba-col", KeepDType::F16);
    let ck = Checkpoint::open(&dir).unwrap();
    let infos: Vec<_> = ck.tensors().into_iter().cloned().collect();
    let views: Vec<(String, bimamba_formats::DType, Vec<usize>, &[u8])> =
        infos.iter().map(|i| (i.name.clone(), i.dtype, i.shape.clone(), ck.bytes(&i.name).unwrap())).collect();
    for (meta, needle) in
        [(vec![("format", "bimamba-packed"), ("version", "3")], "version"), (vec![], "does not declare")]
    {
        let out = scratch(&format!("bad-{needle}"));
        std::fs::copy(dir.join("config.json"), out.join("config.json")).unwrap();
        let m = meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        bimamba_formats::write_safetensors_atomic(&out.join("model.safetensors"), &views, &m).unwrap();
        let err = Model::load(&out).unwrap_err().to_string();
        assert!(err.contains(needle) && err.contains("model.safetensors"), "{err}");
    }
}

#[test]
fn full_precision_models_cannot_be_packed() {
    let dir = fixture("ss-mamba2-g1");
    let m = Model::load(&dir).unwrap();
    let err =
        write_packed(&m, &Checkpoint::open(&dir).unwrap(), &scratch("fp"), KeepDType::Source, EmbedStorage::Dense)
            .unwrap_err()
            .to_string();
    assert!(err.contains("wscale"), "{err}");
}
