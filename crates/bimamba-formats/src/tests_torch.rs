//! PyTorch zip/pickle tests on hand-assembled archives: the pickle bytes below follow what
//! `torch.save(state_dict)` writes (protocol 2, BINPUT after every new object, `_metadata` BUILD).

use std::io::Write;
use std::path::{Path, PathBuf};

use zip::write::SimpleFileOptions;
use zip::CompressionMethod;

use crate::{Checkpoint, DType, Format, FormatError};

/// A pickle byte builder that memoizes like CPython's pickler: BINPUT after each string and
/// global, and BINGET when the same global is named again.
#[derive(Default)]
struct P {
    b: Vec<u8>,
    memo: u32,
    globals: std::collections::HashMap<String, u32>,
}

impl P {
    fn op(&mut self, b: u8) -> &mut Self {
        self.b.push(b);
        self
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        let key = format!("{module}\n{name}\n");
        if let Some(&slot) = self.globals.get(&key) {
            return self.get(slot);
        }
        self.b.push(b'c');
        self.b.extend_from_slice(key.as_bytes());
        self.globals.insert(key, self.memo);
        self.put()
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.b.push(b'X');
        self.b.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.b.extend_from_slice(s.as_bytes());
        self.put()
    }
    fn int(&mut self, v: i64) -> &mut Self {
        match v {
            0..=255 => self.b.extend_from_slice(&[b'K', v as u8]),
            256..=65535 => {
                self.b.push(b'M');
                self.b.extend_from_slice(&(v as u16).to_le_bytes());
            }
            _ if i32::try_from(v).is_ok() => {
                self.b.push(b'J');
                self.b.extend_from_slice(&(v as i32).to_le_bytes());
            }
            _ => {
                // LONG1 with 8 bytes of two's complement
                self.b.extend_from_slice(&[0x8a, 8]);
                self.b.extend_from_slice(&v.to_le_bytes());
            }
        }
        self
    }
    /// BINPUT (LONG_BINPUT past 255) into the next memo slot.
    fn put(&mut self) -> &mut Self {
        if self.memo < 256 {
            self.b.extend_from_slice(&[b'q', self.memo as u8]);
        } else {
            self.b.push(b'r');
            self.b.extend_from_slice(&self.memo.to_le_bytes());
        }
        self.memo += 1;
        self
    }
    fn get(&mut self, slot: u32) -> &mut Self {
        if slot < 256 {
            self.b.extend_from_slice(&[b'h', slot as u8]);
        } else {
            self.b.push(b'j');
            self.b.extend_from_slice(&slot.to_le_bytes());
        }
        self
    }
    fn tuple(&mut self, vals: &[i64]) -> &mut Self {
        match vals.len() {
            0 => {
                self.op(b')');
            }
            1..=3 => {
                for &v in vals {
                    self.int(v);
                }
                self.op(0x84 + vals.len() as u8);
            }
            _ => {
                self.op(b'(');
                for &v in vals {
                    self.int(v);
                }
                self.op(b't');
            }
        }
        self
    }
    /// `_rebuild_tensor_v2(('storage', torch.<kind>, key, 'cpu', numel), offset, size, stride,
    /// False, OrderedDict())`, optionally wrapped in `_rebuild_parameter(t, True, OrderedDict())`.
    #[allow(clippy::too_many_arguments)]
    fn tensor(
        &mut self,
        kind: &str,
        key: &str,
        numel: i64,
        offset: i64,
        size: &[i64],
        stride: &[i64],
        param: bool,
    ) -> &mut Self {
        if param {
            self.global("torch._utils", "_rebuild_parameter");
        }
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.op(b'(').op(b'(').str("storage").global("torch", kind).str(key).str("cpu").int(numel).op(b't');
        self.op(b'Q');
        self.int(offset).tuple(size).tuple(stride).op(0x89);
        self.global("collections", "OrderedDict").op(b')').op(b'R');
        self.op(b't').op(b'R');
        if param {
            self.op(0x88).global("collections", "OrderedDict").op(b')').op(b'R');
            self.op(0x87).op(b'R');
        }
        self
    }
    fn begin_dict(&mut self) -> &mut Self {
        self.op(0x80).op(2).global("collections", "OrderedDict").op(b')').op(b'R').put().op(b'(')
    }
    /// SETITEMS, then the `_metadata` BUILD that a real state dict carries, then STOP.
    fn end_dict(&mut self) -> Vec<u8> {
        self.op(b'u');
        self.op(b'}').str("_metadata").global("collections", "OrderedDict").op(b')').op(b'R').op(b's').op(b'b');
        self.op(b'.');
        std::mem::take(&mut self.b)
    }
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bimamba-formats-pt-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes a stored (uncompressed) zip the way torch.save lays it out.
fn write_zip(path: &Path, pkl: &[u8], storages: &[(&str, Vec<u8>)]) {
    let f = std::fs::File::create(path).expect("create zip");
    let mut z = zip::ZipWriter::new(f);
    let opt = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    z.start_file("archive/data.pkl", opt).expect("entry");
    z.write_all(pkl).expect("write");
    z.start_file("archive/byteorder", opt).expect("entry");
    z.write_all(b"little").expect("write");
    for (key, bytes) in storages {
        z.start_file(format!("archive/data/{key}"), opt).expect("entry");
        z.write_all(bytes).expect("write");
    }
    z.start_file("archive/version", opt).expect("entry");
    z.write_all(b"3\n").expect("write");
    z.finish().expect("finish zip");
}

/// The reference state dict: `w` [2,3] f32 (storage 0), `tail` = w.view(-1)[3:] sharing storage 0,
/// `wt` = w.t() (non-contiguous), `h` an f16 Parameter (storage 1), `n` an i64 scalar.
fn reference_pickle() -> Vec<u8> {
    let mut p = P::default();
    p.begin_dict();
    p.str("w").tensor("FloatStorage", "0", 6, 0, &[2, 3], &[3, 1], false);
    p.str("tail").tensor("FloatStorage", "0", 6, 3, &[3], &[1], false);
    p.str("wt").tensor("FloatStorage", "0", 6, 0, &[3, 2], &[1, 3], false);
    p.str("h").tensor("HalfStorage", "1", 2, 0, &[2], &[1], true);
    p.str("n").tensor("LongStorage", "2", 1, 0, &[], &[], false);
    p.end_dict()
}

fn reference_storages() -> Vec<(&'static str, Vec<u8>)> {
    let h: Vec<u8> =
        [half::f16::from_f32(0.5), half::f16::from_f32(-2.0)].iter().flat_map(|x| x.to_le_bytes()).collect();
    vec![("0", f32s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])), ("1", h), ("2", 1234567890123i64.to_le_bytes().to_vec())]
}

#[test]
fn reads_a_torch_style_archive() {
    let dir = tmpdir("ok");
    let path = dir.join("pytorch_model.bin");
    write_zip(&path, &reference_pickle(), &reference_storages());
    let ck = Checkpoint::open(&dir).expect("open");
    assert_eq!(ck.format(), Format::PyTorch);
    let names: Vec<&str> = ck.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["h", "n", "tail", "w", "wt"]);
    assert_eq!(ck.info("w").map(|t| (t.dtype, t.shape.clone())), Some((DType::F32, vec![2, 3])));
    assert_eq!(ck.to_f32("w").expect("w"), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(ck.to_f32("tail").expect("tail"), vec![4.0, 5.0, 6.0]);
    assert_eq!(ck.to_f32("wt").expect("wt"), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    assert_eq!(ck.to_f32("h").expect("h"), vec![0.5, -2.0]);
    assert_eq!(ck.info("n").map(|t| (t.dtype, t.shape.clone())), Some((DType::I64, vec![])));
    assert_eq!(ck.bytes("n").expect("n"), &1234567890123i64.to_le_bytes());
    // Shared storage: `tail` is a zero-copy view 3 floats into `w`'s bytes.
    let (w, tail) = (ck.bytes("w").expect("w"), ck.bytes("tail").expect("tail"));
    assert_eq!(w.as_ptr().wrapping_add(12), tail.as_ptr());
    assert_eq!(ck.file_bytes(), std::fs::metadata(&path).expect("stat").len());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn nested_state_dict_under_model() {
    let dir = tmpdir("nested");
    let path = dir.join("ckpt.pt");
    let mut p = P::default();
    p.op(0x80).op(2).op(b'}').op(b'(');
    p.str("epoch").int(3);
    p.str("model").op(b'}').op(b'(');
    p.str("w").tensor("FloatStorage", "0", 6, 0, &[6], &[1], false);
    p.op(b'u');
    p.op(b'u').op(b'.');
    write_zip(&path, &p.b, &reference_storages());
    let ck = Checkpoint::open(&path).expect("open");
    assert_eq!(ck.tensors().len(), 1);
    assert_eq!(ck.to_f32("w").expect("w"), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    std::fs::remove_dir_all(&dir).ok();
}

fn open_with_pickle(tag: &str, pkl: &[u8], storages: &[(&str, Vec<u8>)]) -> FormatError {
    let dir = tmpdir(tag);
    let path = dir.join("model.pt");
    write_zip(&path, pkl, storages);
    let e = Checkpoint::open(&path).expect_err("must be refused");
    assert!(e.to_string().contains("model.pt"), "error names the file: {e}");
    std::fs::remove_dir_all(&dir).ok();
    e
}

#[test]
fn malicious_global_is_refused() {
    // The classic payload: os.system("echo pwned") via GLOBAL + REDUCE.
    let mut p = P::default();
    p.op(0x80).op(2).global("os", "system").str("echo pwned").op(0x85).op(b'R').op(b'.');
    let e = open_with_pickle("evil", &p.b, &[]);
    assert!(matches!(&e, FormatError::UnsafePickle { what, .. } if what.contains("os.system")), "{e}");

    // The same through STACK_GLOBAL (protocol 4).
    let mut p = P::default();
    p.op(0x80).op(4).str("builtins").str("eval").op(0x93).str("1").op(0x85).op(b'R').op(b'.');
    let e = open_with_pickle("evil4", &p.b, &[]);
    assert!(matches!(&e, FormatError::UnsafePickle { what, .. } if what.contains("builtins.eval")), "{e}");

    // An allowed class may still not be called.
    let mut p = P::default();
    p.op(0x80).op(2).global("torch", "FloatStorage").op(b')').op(b'R').op(b'.');
    assert!(matches!(open_with_pickle("call", &p.b, &[]), FormatError::UnsafePickle { .. }));
}

#[test]
fn unknown_opcode_is_refused() {
    // 0x81 NEWOBJ (cls.__new__) and b'i' INST are outside the subset.
    for (i, op) in [0x81u8, b'i', 0xff].into_iter().enumerate() {
        let mut p = P::default();
        p.op(0x80).op(2).op(b'}').op(op).op(b'.');
        let e = open_with_pickle(&format!("op{i}"), &p.b, &[]);
        assert!(matches!(&e, FormatError::UnsafePickle { what, .. } if what.contains("opcode")), "{e}");
    }
}

#[test]
fn truncated_pickle_is_an_error() {
    let pkl = reference_pickle();
    for cut in [1, 2, 30, pkl.len() / 2, pkl.len() - 1] {
        let e = open_with_pickle(&format!("cut{cut}"), &pkl[..cut], &reference_storages());
        assert!(matches!(e, FormatError::Pickle { .. }), "cut at {cut}: {e}");
    }
}

#[test]
fn malformed_pickles_are_errors() {
    // Stack underflow, a bad memo slot, containers nested 100 deep.
    let mut deep = P::default();
    deep.op(0x80).op(2).op(b')');
    for _ in 0..100 {
        deep.op(0x85);
    }
    deep.op(b'.');
    for (i, pkl) in [vec![0x80, 2, b'R', b'.'], vec![0x80, 2, b'h', 7, b'.'], deep.b].into_iter().enumerate() {
        let e = open_with_pickle(&format!("mal{i}"), &pkl, &[]);
        assert!(matches!(e, FormatError::Pickle { .. }), "{e}");
    }
    // Not a dict at the top.
    let e = open_with_pickle("list", &[0x80, 2, b']', b'.'], &[]);
    assert!(matches!(e, FormatError::Corrupt { .. }), "{e}");
}

#[test]
fn storage_shorter_than_tensor() {
    // The entry holds 2 floats but the persistent id claims 6.
    let mut p = P::default();
    p.begin_dict().str("w").tensor("FloatStorage", "0", 6, 0, &[6], &[1], false);
    let e = open_with_pickle("short", &p.end_dict(), &[("0", f32s(&[1.0, 2.0]))]);
    assert!(matches!(e, FormatError::StorageTooSmall { expected: 24, actual: 8, .. }), "{e}");
    assert!(e.to_string().contains("`w`"), "{e}");

    // The view (offset 4, 4 elements) runs past a 6-element storage.
    let mut p = P::default();
    p.begin_dict().str("w").tensor("FloatStorage", "0", 6, 4, &[4], &[1], false);
    let e = open_with_pickle("extent", &p.end_dict(), &[("0", f32s(&[0.0; 6]))]);
    assert!(matches!(e, FormatError::StorageTooSmall { expected: 32, actual: 24, .. }), "{e}");

    // A storage entry that does not exist.
    let mut p = P::default();
    p.begin_dict().str("w").tensor("FloatStorage", "9", 1, 0, &[1], &[1], false);
    let e = open_with_pickle("missing", &p.end_dict(), &[("0", f32s(&[0.0]))]);
    assert!(matches!(&e, FormatError::Zip { what, .. } if what.contains("archive/data/9")), "{e}");
}

#[test]
fn broken_archives() {
    let dir = tmpdir("zip");
    let path = dir.join("model.bin");
    write_zip(&path, &reference_pickle(), &reference_storages());
    let bytes = std::fs::read(&path).expect("read");

    // Cut anywhere: the central directory is gone (or points past the end).
    for cut in [10, bytes.len() / 2, bytes.len() - 10] {
        std::fs::write(&path, &bytes[..cut]).expect("write");
        let e = Checkpoint::open(&path).expect_err("truncated zip");
        assert!(matches!(e, FormatError::Zip { .. } | FormatError::Truncated { .. }), "cut {cut}: {e}");
    }

    // One flipped bit in a tensor's storage: the entry's CRC-32 no longer matches.
    let mut flipped = bytes.clone();
    let at = flipped.windows(14).position(|w| w == b"archive/data/0").expect("storage 0") + 14;
    flipped[at + 5] ^= 0x10; // inside the six floats (the local header's name is followed by the data)
    std::fs::write(&path, &flipped).expect("write");
    let e = Checkpoint::open(&path).expect_err("damaged storage");
    assert!(matches!(&e, FormatError::Zip { what, .. } if what.contains("`archive/data/0` is damaged")), "{e}");

    // Mark every entry as deflated (method 8) in the local and central headers.
    let mut deflated = bytes.clone();
    for i in 0..deflated.len().saturating_sub(12) {
        match &deflated[i..i + 4] {
            b"PK\x03\x04" => deflated[i + 8] = 8,
            b"PK\x01\x02" => deflated[i + 10] = 8,
            _ => {}
        }
    }
    std::fs::write(&path, &deflated).expect("write");
    let e = Checkpoint::open(&path).expect_err("compressed");
    assert!(matches!(&e, FormatError::CompressedEntry { entry, .. } if entry.starts_with("archive/")), "{e}");

    // A zip that is not a torch archive.
    let f = std::fs::File::create(&path).expect("create");
    let mut z = zip::ZipWriter::new(f);
    let opt = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    z.start_file("readme.txt", opt).expect("entry");
    z.write_all(b"hello").expect("write");
    z.finish().expect("finish");
    assert!(matches!(Checkpoint::open(&path), Err(FormatError::Zip { .. })));
    std::fs::remove_dir_all(&dir).ok();
}

/// Single-byte mutations of every position of data.pkl, and of every byte of a whole archive:
/// each must open or fail with an error, never panic (a panic fails the test).
#[test]
fn mutations_never_panic() {
    let pkl = reference_pickle();
    let storages = reference_storages();
    let file = Path::new("mutated.bin");
    let zip_of = |pkl: &[u8]| {
        let dir = tmpdir("mut");
        let path = dir.join("m.bin");
        write_zip(&path, pkl, &storages);
        let bytes = std::fs::read(&path).expect("read");
        std::fs::remove_dir_all(&dir).ok();
        bytes
    };
    // Mutating data.pkl: build each archive in memory from the mutated pickle.
    let mut outcomes = [0usize; 2];
    for i in 0..pkl.len() {
        for v in [0x00, 0xFF, pkl[i] ^ 0x01, pkl[i].wrapping_add(1), b'(', b'.', b'R', b'b'] {
            let mut m = pkl.clone();
            m[i] = v;
            let ok = crate::pickle::unpickle(&m).is_ok();
            outcomes[usize::from(ok)] += 1;
        }
    }
    assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
    // The full path (zip, pickle, storages, strides) on a sample of mutated pickles.
    for i in (0..pkl.len()).step_by(7) {
        let mut m = pkl.clone();
        m[i] = m[i].wrapping_add(1);
        let _ = crate::torch::entries(file, &zip_of(&m));
    }
    // Mutating the archive bytes themselves.
    let zip = zip_of(&pkl);
    for i in 0..zip.len() {
        let mut m = zip.clone();
        m[i] ^= 0x55;
        let _ = crate::torch::entries(file, &m);
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures").join(name)
}

/// The state-spaces tensor list of fixtures/README.md (d_model 64, 2 layers, d_inner 128, 8 heads,
/// d_state 16, G 1, vocab padded to 464), with Bi-Mamba scale/bias shapes when given.
fn expected_shapes(bimamba_row: bool) -> Vec<(String, Vec<usize>)> {
    let mut v = vec![
        ("backbone.embedding.weight".to_string(), vec![464, 64]),
        ("backbone.norm_f.weight".into(), vec![64]),
        ("lm_head.weight".into(), vec![464, 64]),
    ];
    for i in 0..2 {
        let l = format!("backbone.layers.{i}");
        v.push((format!("{l}.norm.weight"), vec![64]));
        v.push((format!("{l}.mixer.in_proj.weight"), vec![296, 64]));
        v.push((format!("{l}.mixer.conv1d.weight"), vec![160, 1, 4]));
        v.push((format!("{l}.mixer.conv1d.bias"), vec![160]));
        v.push((format!("{l}.mixer.dt_bias"), vec![8]));
        v.push((format!("{l}.mixer.A_log"), vec![8]));
        v.push((format!("{l}.mixer.D"), vec![8]));
        v.push((format!("{l}.mixer.norm.weight"), vec![128]));
        v.push((format!("{l}.mixer.out_proj.weight"), vec![64, 128]));
        if bimamba_row {
            for (proj, out) in [("in_proj", 296), ("out_proj", 64)] {
                v.push((format!("{l}.mixer.{proj}.wscale"), vec![out, 1]));
                v.push((format!("{l}.mixer.{proj}.wbias"), vec![out, 1]));
            }
        }
    }
    v.sort();
    v
}

/// Checks a fixture made by real `torch.save` (fixtures/ss-*/pytorch_model.bin, written by
/// scripts/make_fixtures.py with torch 2.11) against facts stated in fixtures/README.md.
fn check_real_fixture(dir: &str, dtype: DType, bimamba_row: bool) -> Checkpoint {
    let ck = Checkpoint::open(&fixture(dir)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ck.format(), Format::PyTorch);
    let got: Vec<(String, Vec<usize>)> = ck.tensors().iter().map(|t| (t.name.clone(), t.shape.clone())).collect();
    assert_eq!(got, expected_shapes(bimamba_row));
    assert!(ck.tensors().iter().all(|t| t.dtype == dtype));
    // Tied: lm_head.weight views the embedding's storage, zero-copy.
    let emb = ck.bytes("backbone.embedding.weight").unwrap_or_else(|e| panic!("{e}"));
    let head = ck.bytes("lm_head.weight").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(emb.as_ptr(), head.as_ptr());
    // Value ranges from the documented draws: A_log = log U[1, 16], norms 1 ± U(0.1),
    // embedding N(0, 0.3) (13 padded rows 5x smaller).
    let get = |n: &str| ck.to_f32(n).unwrap_or_else(|e| panic!("{e}"));
    for i in 0..2 {
        let a = get(&format!("backbone.layers.{i}.mixer.A_log"));
        assert!(a.iter().all(|&x| (-1e-3..=16f32.ln() + 1e-3).contains(&x)), "A_log {a:?}");
        let n = get(&format!("backbone.layers.{i}.norm.weight"));
        assert!(n.iter().all(|&x| (0.899..=1.101).contains(&x)), "norm {n:?}");
    }
    let e = get("backbone.embedding.weight");
    let std = (e.iter().map(|x| x * x).sum::<f32>() / e.len() as f32).sqrt();
    assert!((0.27..0.32).contains(&std), "embedding std {std}");
    ck
}

#[test]
fn real_torch_save_mamba2_f32() {
    check_real_fixture("ss-mamba2-g1", DType::F32, false);
}

#[test]
fn real_torch_save_bimamba_row_f16() {
    let ck = check_real_fixture("ss-bimamba-row", DType::F16, true);
    for i in 0..2 {
        for proj in ["in_proj", "out_proj"] {
            let name = format!("backbone.layers.{i}.mixer.{proj}");
            // Each binarized latent matrix has exactly 3 entries +0.0 and 2 entries -0.0.
            let w = ck.bytes(&format!("{name}.weight")).unwrap_or_else(|e| panic!("{e}"));
            let bits: Vec<u16> = w.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
            assert_eq!(bits.iter().filter(|&&b| b == 0x0000).count(), 3, "{name}: +0.0 count");
            assert_eq!(bits.iter().filter(|&&b| b == 0x8000).count(), 2, "{name}: -0.0 count");
            let alpha = ck.to_f32(&format!("{name}.wscale")).unwrap_or_else(|e| panic!("{e}"));
            assert!(alpha.iter().all(|&a| a > 0.0), "{name}.wscale must be positive");
        }
    }
}
