//! Parameters by name: the module path of each parameter (`backbone.layers.3.mixer.A_log`) is its
//! tensor name, in checkpoints, exports and optimizer state alike.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use safetensors::tensor::{Dtype, TensorView};

use crate::error::{Error, Result};
use crate::ops::float_dtype;

/// Host copies of tensors, by name, in any float dtype.
pub type NamedTensors = BTreeMap<String, TensorData>;

struct Collector {
    path: Vec<String>,
    out: NamedTensors,
}

impl<B: Backend> ModuleVisitor<B> for Collector {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.out.insert(self.path.join("."), param.val().to_data());
    }
}

/// Every float parameter of `module`, by module path.
pub fn collect<B: Backend, M: Module<B>>(module: &M) -> NamedTensors {
    let mut c = Collector { path: Vec::new(), out: NamedTensors::new() };
    module.visit(&mut c);
    c.out
}

/// Every float parameter name with its shape, in module order.
pub fn names_and_shapes<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, Vec<usize>)> {
    struct Shapes {
        path: Vec<String>,
        out: Vec<(String, Vec<usize>)>,
    }
    impl<B: Backend> ModuleVisitor<B> for Shapes {
        fn enter_module(&mut self, name: &str, _c: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _n: &str, _c: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.out.push((self.path.join("."), param.lazy_shape().to_vec()));
        }
    }
    let mut s = Shapes { path: Vec::new(), out: Vec::new() };
    module.visit(&mut s);
    s.out
}

struct Loader<'a> {
    path: Vec<String>,
    src: &'a NamedTensors,
    source_desc: &'a str,
    error: Option<Error>,
}

impl<B: Backend> ModuleMapper<B> for Loader<'_> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let name = self.path.join(".");
        let (id, tensor, mapper) = param.consume();
        let expected = tensor.shape().to_vec();
        let replaced = match self.src.get(&name) {
            None => Err(Error::MissingTensor { name, source_desc: self.source_desc.to_string() }),
            Some(d) if d.shape.to_vec() != expected => {
                Err(Error::Shape { name, source_desc: self.source_desc.to_string(), expected, got: d.shape.to_vec() })
            }
            Some(d) => {
                let device = tensor.device();
                let t = Tensor::<B, D>::from_data(d.clone(), (&device, float_dtype::<B>()));
                Ok(t.set_require_grad(tensor.is_require_grad()))
            }
        };
        let value = match replaced {
            Ok(t) => t,
            Err(e) => {
                self.error.get_or_insert(e);
                tensor
            }
        };
        Param::from_mapped_value(id, value, mapper)
    }
}

/// Replaces every float parameter of `module` by the tensor of the same name in `src`
/// (converted to the backend's float dtype). Fails on the first missing or misshapen tensor.
pub fn load<B: Backend, M: Module<B>>(module: M, src: &NamedTensors, source_desc: &str) -> Result<M> {
    let mut l = Loader { path: Vec::new(), src, source_desc, error: None };
    let m = module.map(&mut l);
    match l.error {
        Some(e) => Err(e),
        None => Ok(m),
    }
}

/// f32 little-endian bytes of a tensor (any float dtype converts).
pub fn f32_bytes(data: &TensorData) -> Vec<u8> {
    let v: Vec<f32> = data.iter::<f32>().collect();
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Writes `tensors` as an f32 safetensors file, atomically (temporary file, fsync, rename).
pub fn write_safetensors(path: &Path, tensors: &NamedTensors, metadata: Option<HashMap<String, String>>) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> =
        tensors.iter().map(|(k, d)| (k.clone(), f32_bytes(d), d.shape.to_vec())).collect();
    let views = bytes
        .iter()
        .map(|(k, b, s)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|e| Error::format(path, format!("tensor {k}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let buf = safetensors::serialize(views, metadata).map_err(|e| Error::format(path, e.to_string()))?;
    write_atomic(path, &buf)
}

/// Writes `bytes` to `path` through a temporary file in the same folder, fsynced, then renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(Error::io(&tmp))?;
    f.write_all(bytes).map_err(Error::io(&tmp))?;
    f.sync_all().map_err(Error::io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(Error::io(path))
}

/// Reads a safetensors file into host tensors: f16/bf16/f32 become f32; f64, i64 and i32 stay.
pub fn read_safetensors(path: &Path) -> Result<NamedTensors> {
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::format(path, e.to_string()))?;
    let mut out = NamedTensors::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let raw = view.data();
        let data = match view.dtype() {
            Dtype::F32 => TensorData::new(
                raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<_>>(),
                shape,
            ),
            Dtype::F64 => TensorData::new(
                raw.chunks_exact(8)
                    .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect::<Vec<_>>(),
                shape,
            ),
            Dtype::F16 => TensorData::new(
                raw.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect::<Vec<_>>(),
                shape,
            ),
            Dtype::BF16 => TensorData::new(
                raw.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect::<Vec<_>>(),
                shape,
            ),
            Dtype::I64 => TensorData::new(
                raw.chunks_exact(8)
                    .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect::<Vec<_>>(),
                shape,
            ),
            Dtype::I32 => TensorData::new(
                raw.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<_>>(),
                shape,
            ),
            other => {
                return Err(Error::format(path, format!("tensor {name}: unsupported dtype {other:?}")));
            }
        };
        out.insert(name, data);
    }
    Ok(out)
}

/// The metadata map of a safetensors file.
pub fn read_safetensors_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| Error::format(path, e.to_string()))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}
