//! A weights-only pickle reader: the subset of the pickle VM that `torch.save` emits for a
//! state dict (protocol 2, plus the few protocol 3/4 opcodes a newer pickler may use), in the spirit
//! of PyTorch's `weights_only=True` unpickler. It never runs code: GLOBAL may only name the
//! callables a tensor state dict needs, which are interpreted here, and anything else (another
//! global, an unknown opcode) is refused.
//!
//! Memo semantics differ from CPython in one deliberate way: values are immutable and shared, so
//! a memoized list/dict that is mutated later (APPEND/SETITEMS) is copied on write and the memo
//! keeps the earlier snapshot. `torch.save` never reads a container back from the memo after
//! filling it, so state dicts decode identically; in exchange no reference cycles can exist and
//! nesting depth and copy work are bounded, so a hostile file cannot exhaust stack or memory.

use std::collections::HashMap;
use std::rc::Rc;

use crate::reader::Reader;
use crate::DType;

/// Deepest allowed container nesting (a state dict needs about 4).
const MAX_DEPTH: u32 = 64;
/// Total elements copied by copy-on-write before the stream is refused as pathological (a real
/// state dict copies none: each container is filled right after it is memoized, once).
const MAX_COPY_WORK: usize = 1 << 22;
/// Values on the stack plus open MARKs; torch.save needs a few thousand (SETITEMS batches of 1000).
const MAX_STACK: usize = 1 << 20;

/// A callable or class a GLOBAL opcode may name.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    RebuildParameterWithState,
    RebuildFromTypeV2,
    /// `torch.Tensor` / `torch.nn.parameter.Parameter`, only as the `new_type` argument of
    /// `_rebuild_from_type_v2`.
    TensorType,
    /// `torch.FloatStorage` and friends: the element type of a persistent storage.
    Storage(DType),
    /// `torch.float32` and friends.
    TorchDType(DType),
}

fn resolve_global(module: &str, name: &str) -> Option<Global> {
    let storage = |n: &str| {
        Some(match n {
            "DoubleStorage" => DType::F64,
            "FloatStorage" => DType::F32,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            _ => return None,
        })
    };
    let dtype = |n: &str| {
        Some(match n {
            "float64" | "double" => DType::F64,
            "float32" | "float" => DType::F32,
            "float16" | "half" => DType::F16,
            "bfloat16" => DType::BF16,
            "int64" | "long" => DType::I64,
            "int32" | "int" => DType::I32,
            "int16" | "short" => DType::I16,
            "int8" => DType::I8,
            "uint8" => DType::U8,
            "bool" => DType::Bool,
            _ => return None,
        })
    };
    match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("torch._utils", "_rebuild_parameter_with_state") => Some(Global::RebuildParameterWithState),
        ("torch._tensor", "_rebuild_from_type_v2") => Some(Global::RebuildFromTypeV2),
        ("torch", "Tensor") | ("torch.nn.parameter", "Parameter") => Some(Global::TensorType),
        ("torch", n) => storage(n).map(Global::Storage).or_else(|| dtype(n).map(Global::TorchDType)),
        _ => None,
    }
}

/// A persistent storage reference: `('storage', <Storage class>, key, location, numel)`.
#[derive(Debug, PartialEq)]
pub(crate) struct StorageRef {
    pub key: String,
    pub dtype: DType,
    /// Elements (of `dtype`) in the storage.
    pub numel: u64,
}

/// The arguments of `_rebuild_tensor_v2`: a strided view of a storage, in elements.
#[derive(Debug, PartialEq)]
pub(crate) struct TensorRef {
    pub storage: Rc<StorageRef>,
    pub offset: u64,
    pub size: Vec<u64>,
    pub stride: Vec<u64>,
}

#[derive(Clone, Debug)]
pub(crate) struct Seq {
    depth: u32,
    pub items: Vec<Value>,
}

#[derive(Clone, Debug)]
pub(crate) struct Map {
    depth: u32,
    /// Insertion order; a repeated key appears twice and the later one wins (as in Python).
    pub items: Vec<(Value, Value)>,
}

/// A decoded pickle value. Scalars other than ints and strings (requires_grad flags, floats in
/// training checkpoints) are decoded only so that the stream can be followed; nothing reads them.
#[derive(Clone, Debug)]
#[allow(dead_code)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Rc<Seq>),
    List(Rc<Seq>),
    Dict(Rc<Map>),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

impl Value {
    fn depth(&self) -> u32 {
        match self {
            Value::Tuple(s) | Value::List(s) => s.depth,
            Value::Dict(m) => m.depth,
            _ => 0,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }
}

/// Why unpickling stopped, with the byte offset of the opcode.
#[derive(Debug)]
pub(crate) enum PickleError {
    /// Malformed input: truncation, stack underflow, wrong operand types.
    Malformed { offset: usize, what: String },
    /// Something a weights-only loader refuses: a forbidden global or an unknown opcode.
    Unsafe { offset: usize, what: String },
}

struct Vm {
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    copy_work: usize,
    /// Offset of the opcode being executed, for error messages.
    at: usize,
}

type Res<T> = Result<T, PickleError>;

impl Vm {
    fn bad<T>(&self, what: impl Into<String>) -> Res<T> {
        Err(PickleError::Malformed { offset: self.at, what: what.into() })
    }

    fn pop(&mut self) -> Res<Value> {
        match self.stack.pop() {
            Some(v) if self.marks.last().is_none_or(|&m| self.stack.len() >= m) => Ok(v),
            _ => self.bad("stack underflow"),
        }
    }

    fn top(&mut self) -> Res<&mut Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return self.bad("stack underflow");
        }
        let at = self.at;
        self.stack.last_mut().ok_or(PickleError::Malformed { offset: at, what: "stack underflow".into() })
    }

    fn pop_mark(&mut self) -> Res<Vec<Value>> {
        match self.marks.pop() {
            Some(m) => Ok(self.stack.split_off(m)),
            None => self.bad("no MARK on the stack"),
        }
    }

    fn push(&mut self, v: Value) -> Res<()> {
        if v.depth() > MAX_DEPTH {
            return self.bad(format!("containers nested deeper than {MAX_DEPTH}"));
        }
        if self.stack.len() + self.marks.len() >= MAX_STACK {
            return self.bad(format!("more than {MAX_STACK} values on the stack"));
        }
        self.stack.push(v);
        Ok(())
    }

    fn seq(items: Vec<Value>) -> Seq {
        let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
        Seq { depth, items }
    }

    /// Copy-on-write access to a shared container, charging the copy to the work budget.
    fn make_mut<'a, T: Clone>(work: &mut usize, rc: &'a mut Rc<T>, len: usize) -> Option<&'a mut T> {
        if Rc::strong_count(rc) > 1 {
            *work += len;
            if *work > MAX_COPY_WORK {
                return None;
            }
        }
        Some(Rc::make_mut(rc))
    }

    /// APPEND/APPENDS: extend the list at the top of the stack.
    fn append(&mut self, items: Vec<Value>) -> Res<()> {
        let item_depth = items.iter().map(Value::depth).max().unwrap_or(0);
        let mut work = self.copy_work;
        let at = self.at;
        let Value::List(list) = self.top()? else {
            return self.bad("APPEND to a non-list");
        };
        let len = list.items.len();
        let Some(list) = Self::make_mut(&mut work, list, len) else {
            return Err(PickleError::Malformed { offset: at, what: "too much copy-on-write work".into() });
        };
        list.depth = list.depth.max(item_depth + 1);
        list.items.extend(items);
        let depth = list.depth;
        self.copy_work = work;
        if depth > MAX_DEPTH {
            return self.bad(format!("containers nested deeper than {MAX_DEPTH}"));
        }
        Ok(())
    }

    /// SETITEM/SETITEMS: insert key/value pairs into the dict at the top of the stack.
    fn set_items(&mut self, flat: Vec<Value>) -> Res<()> {
        if !flat.len().is_multiple_of(2) {
            return self.bad("SETITEMS with an odd number of items");
        }
        let item_depth = flat.iter().map(Value::depth).max().unwrap_or(0);
        let mut work = self.copy_work;
        let at = self.at;
        let Value::Dict(dict) = self.top()? else {
            return self.bad("SETITEM on a non-dict");
        };
        let len = dict.items.len();
        let Some(dict) = Self::make_mut(&mut work, dict, len) else {
            return Err(PickleError::Malformed { offset: at, what: "too much copy-on-write work".into() });
        };
        dict.depth = dict.depth.max(item_depth + 1);
        let mut it = flat.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            dict.items.push((k, v));
        }
        let depth = dict.depth;
        self.copy_work = work;
        if depth > MAX_DEPTH {
            return self.bad(format!("containers nested deeper than {MAX_DEPTH}"));
        }
        Ok(())
    }

    fn int(&self, v: &Value, what: &str) -> Res<u64> {
        match v {
            Value::Int(i) if *i >= 0 => Ok(*i as u64),
            _ => self.bad(format!("{what}: expected a non-negative int, got {}", v.kind())),
        }
    }

    fn int_tuple(&self, v: &Value, what: &str) -> Res<Vec<u64>> {
        match v {
            Value::Tuple(t) => t.items.iter().map(|x| self.int(x, what)).collect(),
            _ => self.bad(format!("{what}: expected a tuple, got {}", v.kind())),
        }
    }

    /// BINPERSID: `('storage', storage_class, key, location, numel)` -> a storage reference.
    fn persistent_load(&self, pid: Value) -> Res<Value> {
        let Value::Tuple(t) = &pid else {
            return self.bad(format!("persistent id is a {}, expected a tuple", pid.kind()));
        };
        match &t.items[..] {
            [Value::Str(tag), Value::Global(Global::Storage(dtype)), key, _location, numel] if &**tag == "storage" => {
                let key = match key {
                    Value::Str(s) => s.to_string(),
                    Value::Int(i) => i.to_string(),
                    _ => return self.bad("storage key is not a string"),
                };
                let numel = self.int(numel, "storage numel")?;
                Ok(Value::Storage(Rc::new(StorageRef { key, dtype: *dtype, numel })))
            }
            _ => Err(PickleError::Unsafe {
                offset: self.at,
                what: "persistent id is not ('storage', torch.<Type>Storage, key, location, numel)".into(),
            }),
        }
    }

    /// REDUCE: apply one of the allowed callables. Nothing else can be called.
    fn call(&self, f: Global, args: &[Value]) -> Res<Value> {
        match (f, args) {
            (Global::OrderedDict, []) => Ok(Value::Dict(Rc::new(Map { depth: 1, items: Vec::new() }))),
            (Global::OrderedDict, [Value::List(pairs) | Value::Tuple(pairs)]) => {
                let mut items = Vec::with_capacity(pairs.items.len());
                for p in &pairs.items {
                    match p {
                        Value::Tuple(kv) | Value::List(kv) if kv.items.len() == 2 => {
                            items.push((kv.items[0].clone(), kv.items[1].clone()))
                        }
                        _ => return self.bad("OrderedDict argument is not a sequence of pairs"),
                    }
                }
                Ok(Value::Dict(Rc::new(Map { depth: pairs.depth, items })))
            }
            // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
            //                    backward_hooks[, metadata])
            (Global::RebuildTensorV2, [Value::Storage(s), offset, size, stride, _grad, _hooks, ..])
                if args.len() <= 7 =>
            {
                let size = self.int_tuple(size, "tensor size")?;
                let stride = self.int_tuple(stride, "tensor stride")?;
                if size.len() != stride.len() {
                    return self.bad(format!("tensor size {size:?} and stride {stride:?} differ in rank"));
                }
                let offset = self.int(offset, "storage offset")?;
                Ok(Value::Tensor(Rc::new(TensorRef { storage: s.clone(), offset, size, stride })))
            }
            // _rebuild_parameter(data, requires_grad, backward_hooks[, state])
            (Global::RebuildParameter, [t @ Value::Tensor(_), _, _])
            | (Global::RebuildParameterWithState, [t @ Value::Tensor(_), _, _, _]) => Ok(t.clone()),
            // _rebuild_from_type_v2(func, new_type, args, state): func(*args) as new_type
            (
                Global::RebuildFromTypeV2,
                [Value::Global(func), Value::Global(Global::TensorType), Value::Tuple(a), _],
            ) if matches!(
                func,
                Global::RebuildTensorV2 | Global::RebuildParameter | Global::RebuildParameterWithState
            ) =>
            {
                self.call(*func, &a.items)
            }
            (f, args) => {
                let kinds: Vec<&str> = args.iter().map(Value::kind).collect();
                match f {
                    Global::Storage(_) | Global::TorchDType(_) | Global::TensorType => {
                        Err(PickleError::Unsafe { offset: self.at, what: format!("calling {f:?} is not allowed") })
                    }
                    _ => self.bad(format!("{f:?} called with unexpected arguments ({})", kinds.join(", "))),
                }
            }
        }
    }
}

fn utf8(vm: &Vm, b: &[u8]) -> Res<Rc<str>> {
    match std::str::from_utf8(b) {
        Ok(s) => Ok(Rc::from(s)),
        Err(e) => vm.bad(format!("string is not UTF-8: {e}")),
    }
}

/// Runs the pickle in `data` and returns the value left by STOP.
pub(crate) fn unpickle(data: &[u8]) -> Result<Value, PickleError> {
    let mut r = Reader::new(data);
    let mut vm = Vm { stack: Vec::new(), marks: Vec::new(), memo: HashMap::new(), copy_work: 0, at: 0 };
    loop {
        vm.at = r.pos();
        let at = vm.at;
        let short = |s: crate::reader::Short| PickleError::Malformed {
            offset: at,
            what: format!("truncated: needs {} more bytes, {} left", s.need, s.have),
        };
        let op = r.u8().map_err(|_| PickleError::Malformed { offset: at, what: "truncated: no STOP opcode".into() })?;
        match op {
            0x80 => {
                // PROTO
                let v = r.u8().map_err(short)?;
                if v > 5 {
                    return vm.bad(format!("pickle protocol {v} is not supported"));
                }
            }
            0x95 => {
                r.u64().map_err(short)?; // FRAME: a length hint only
            }
            b'.' => return vm.pop(), // STOP
            b'}' => vm.push(Value::Dict(Rc::new(Map { depth: 1, items: Vec::new() })))?,
            b']' => vm.push(Value::List(Rc::new(Vm::seq(Vec::new()))))?,
            b')' => vm.push(Value::Tuple(Rc::new(Vm::seq(Vec::new()))))?,
            b'(' => {
                if vm.stack.len() + vm.marks.len() >= MAX_STACK {
                    return vm.bad(format!("more than {MAX_STACK} values on the stack"));
                }
                vm.marks.push(vm.stack.len())
            }
            b'0' => {
                vm.pop()?;
            }
            b'1' => {
                vm.pop_mark()?;
            }
            b'2' => {
                let v = vm.top()?.clone();
                vm.push(v)?;
            }
            b'q' | b'r' | 0x94 => {
                // BINPUT, LONG_BINPUT, MEMOIZE
                let idx = match op {
                    b'q' => u32::from(r.u8().map_err(short)?),
                    b'r' => r.u32().map_err(short)?,
                    // MEMOIZE uses the memo's size as the index, as CPython does; a memo of 2^32
                    // entries cannot be built from a file that fits in memory.
                    _ => vm.memo.len() as u32,
                };
                let v = vm.top()?.clone();
                vm.memo.insert(idx, v);
            }
            b'h' | b'j' => {
                // BINGET, LONG_BINGET
                let idx = if op == b'h' { u32::from(r.u8().map_err(short)?) } else { r.u32().map_err(short)? };
                match vm.memo.get(&idx) {
                    Some(v) => {
                        let v = v.clone();
                        vm.push(v)?
                    }
                    None => return vm.bad(format!("memo slot {idx} is empty")),
                }
            }
            b'X' | 0x8c | 0x8d | b'T' | b'U' => {
                // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8, BINSTRING, SHORT_BINSTRING
                let n = match op {
                    b'X' | b'T' => u64::from(r.u32().map_err(short)?),
                    0x8c | b'U' => u64::from(r.u8().map_err(short)?),
                    _ => r.u64().map_err(short)?,
                };
                let s = utf8(&vm, r.take(n).map_err(short)?)?;
                vm.push(Value::Str(s))?;
            }
            b'B' | b'C' | 0x8e => {
                // BINBYTES, SHORT_BINBYTES, BINBYTES8
                let n = match op {
                    b'B' => u64::from(r.u32().map_err(short)?),
                    b'C' => u64::from(r.u8().map_err(short)?),
                    _ => r.u64().map_err(short)?,
                };
                let b = r.take(n).map_err(short)?;
                vm.push(Value::Bytes(Rc::from(b)))?;
            }
            b'J' => vm.push(Value::Int(r.i32().map_err(short)?.into()))?,
            b'K' => vm.push(Value::Int(r.u8().map_err(short)?.into()))?,
            b'M' => vm.push(Value::Int(r.u16().map_err(short)?.into()))?,
            0x8a | 0x8b => {
                // LONG1, LONG4: little-endian two's complement of n bytes
                let n = if op == 0x8a { u64::from(r.u8().map_err(short)?) } else { u64::from(r.u32().map_err(short)?) };
                let b = r.take(n).map_err(short)?;
                if b.len() > 8 {
                    return vm.bad(format!("integer of {} bytes does not fit in 64 bits", b.len()));
                }
                let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) { [0xFF; 8] } else { [0; 8] };
                buf[..b.len()].copy_from_slice(b);
                vm.push(Value::Int(i64::from_le_bytes(buf)))?;
            }
            b'G' => {
                // BINFLOAT: big-endian, unlike everything else
                let b = r.array::<8>().map_err(short)?;
                vm.push(Value::Float(f64::from_be_bytes(b)))?;
            }
            0x88 => vm.push(Value::Bool(true))?,
            0x89 => vm.push(Value::Bool(false))?,
            b'N' => vm.push(Value::None)?,
            b't' => {
                let items = vm.pop_mark()?;
                vm.push(Value::Tuple(Rc::new(Vm::seq(items))))?;
            }
            0x85..=0x87 => {
                // TUPLE1..TUPLE3
                let n = usize::from(op - 0x84);
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(vm.pop()?);
                }
                items.reverse();
                vm.push(Value::Tuple(Rc::new(Vm::seq(items))))?;
            }
            b'l' => {
                let items = vm.pop_mark()?;
                vm.push(Value::List(Rc::new(Vm::seq(items))))?;
            }
            b'd' => {
                let flat = vm.pop_mark()?;
                vm.push(Value::Dict(Rc::new(Map { depth: 1, items: Vec::new() })))?;
                vm.set_items(flat)?;
            }
            b'Q' => {
                let pid = vm.pop()?;
                let v = vm.persistent_load(pid)?;
                vm.push(v)?;
            }
            b'c' | 0x93 => {
                // GLOBAL ("module\nname\n") or STACK_GLOBAL (module and name from the stack)
                let (module, name): (Rc<str>, Rc<str>) = if op == b'c' {
                    let m = utf8(&vm, r.line().map_err(short)?)?;
                    (m, utf8(&vm, r.line().map_err(short)?)?)
                } else {
                    match (vm.pop()?, vm.pop()?) {
                        (Value::Str(n), Value::Str(m)) => (m, n),
                        _ => return vm.bad("STACK_GLOBAL operands are not strings"),
                    }
                };
                match resolve_global(&module, &name) {
                    Some(g) => vm.push(Value::Global(g))?,
                    None => {
                        return Err(PickleError::Unsafe {
                            offset: at,
                            what: format!("global `{module}.{name}` is not allowed in a weights-only load"),
                        })
                    }
                }
            }
            b'R' => {
                let args = vm.pop()?;
                let f = vm.pop()?;
                let (Value::Global(f), Value::Tuple(args)) = (&f, &args) else {
                    return vm.bad(format!("REDUCE of a {} with a {}", f.kind(), args.kind()));
                };
                let v = vm.call(*f, &args.items)?;
                vm.push(v)?;
            }
            b'b' => {
                // BUILD: sets attributes (an OrderedDict's `_metadata`); weights do not need them.
                let _state = vm.pop()?;
                match vm.top()? {
                    Value::Dict(_) | Value::Tensor(_) => {}
                    other => {
                        let k = other.kind();
                        return vm.bad(format!("BUILD on a {k}"));
                    }
                }
            }
            b's' => {
                let v = vm.pop()?;
                let k = vm.pop()?;
                vm.set_items(vec![k, v])?;
            }
            b'u' => {
                let flat = vm.pop_mark()?;
                vm.set_items(flat)?;
            }
            b'a' => {
                let v = vm.pop()?;
                vm.append(vec![v])?;
            }
            b'e' => {
                let items = vm.pop_mark()?;
                vm.append(items)?;
            }
            _ => {
                return Err(PickleError::Unsafe {
                    offset: at,
                    what: format!("opcode 0x{op:02x} ({:?}) is not in the weights-only subset", op as char),
                })
            }
        }
    }
}
