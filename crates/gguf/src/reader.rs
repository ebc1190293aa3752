//! Parsing: a bounds-checked cursor over the file bytes, then the header, metadata
//! and tensor infos in file order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{GgufError, Result};
use crate::types::{GgmlType, Value, ValueType};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Deeper nesting than this is treated as corruption (real files nest at most twice).
const MAX_ARRAY_DEPTH: usize = 8;
const MAX_DIMS: u32 = 4;

/// One tensor's description; its bytes are at `data_offset + offset` in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in GGML order: `dims[0]` is the fastest-varying (row length).
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset relative to the start of the tensor data section.
    pub offset: u64,
    /// Size in bytes, derived from dims and type.
    pub size_bytes: u64,
}

impl TensorInfo {
    pub fn elems(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// Parsed header, metadata and tensor infos of a GGUF file (no tensor bytes).
#[derive(Debug, Clone)]
pub struct Gguf {
    pub file: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset of the tensor data section.
    pub data_offset: u64,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    file: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(GgufError::Truncated {
                file: self.file.to_path_buf(),
                offset: self.pos as u64,
                what: what(),
                len: self.bytes.len() as u64,
            }),
        }
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        Ok(s.try_into().expect("slice has length N: this is a bug"))
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn corrupt(&self, offset: usize, what: String) -> GgufError {
        GgufError::Corrupt {
            file: self.file.to_path_buf(),
            offset: offset as u64,
            what,
        }
    }

    /// A count that must be backed by at least `min_item_bytes` per item of the
    /// remaining file, so a corrupt count cannot trigger a huge allocation.
    fn count(&mut self, min_item_bytes: usize, what: &dyn Fn() -> String) -> Result<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        let remaining = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_item_bytes.max(1) as u64) > remaining {
            return Err(self.corrupt(
                at,
                format!(
                    "{}: count {n} exceeds what the remaining {remaining} bytes can hold",
                    what()
                ),
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let at = self.pos;
        let len = self.count(1, what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| self.corrupt(at, format!("{}: string is not UTF-8 ({e})", what())))
    }

    fn value(&mut self, ty: ValueType, depth: usize, what: &dyn Fn() -> String) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(what)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(what)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => Value::U32(self.u32(what)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            ValueType::U64 => Value::U64(self.u64(what)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            ValueType::Bool => {
                let at = self.pos;
                match self.array::<1>(what)?[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => return Err(self.corrupt(at, format!("{}: bool byte {b}", what()))),
                }
            }
            ValueType::String => Value::String(self.string(what)?),
            ValueType::Array => {
                let at = self.pos;
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.corrupt(
                        at,
                        format!("{}: arrays nested deeper than {MAX_ARRAY_DEPTH}", what()),
                    ));
                }
                let tag = self.u32(what)?;
                let item_ty = ValueType::from_u32(tag).ok_or_else(|| {
                    self.corrupt(at, format!("{}: unknown array element type {tag}", what()))
                })?;
                let n = self.count(min_value_bytes(item_ty), what)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item_ty, depth + 1, what)?);
                }
                Value::Array(item_ty, items)
            }
        })
    }
}

/// Smallest encoding of one value of this type (strings and arrays carry a u64 length).
fn min_value_bytes(ty: ValueType) -> usize {
    match ty {
        ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
        ValueType::U16 | ValueType::I16 => 2,
        ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
        ValueType::U64 | ValueType::I64 | ValueType::F64 | ValueType::String => 8,
        ValueType::Array => 12,
    }
}

impl Gguf {
    /// Parses header, metadata and tensor infos from `bytes` (the whole file).
    /// `file` only names the source in errors.
    pub fn parse(bytes: &[u8], file: &Path) -> Result<Gguf> {
        let mut c = Cursor {
            bytes,
            pos: 0,
            file,
        };
        let magic: [u8; 4] = c.array(&|| "magic".into())?;
        if &magic != MAGIC {
            return Err(GgufError::BadMagic {
                file: file.to_path_buf(),
                found: magic,
            });
        }
        let version = c.u32(&|| "version".into())?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion {
                file: file.to_path_buf(),
                version,
            });
        }
        // Each tensor info is at least a name length, n_dims, type and offset.
        let n_tensors = c.count(24, &|| "tensor count".into())?;
        // Each key/value pair is at least a key length and a type tag.
        let n_kv = c.count(12, &|| "metadata count".into())?;

        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&|| format!("key of metadata entry {i}"))?;
            let what = || format!("metadata key `{key}`");
            let at = c.pos;
            let tag = c.u32(&what)?;
            let ty = ValueType::from_u32(tag)
                .ok_or_else(|| c.corrupt(at, format!("{}: unknown value type {tag}", what())))?;
            let value = c.value(ty, 0, &what)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(c.corrupt(at, format!("metadata key `{key}` appears twice")));
            }
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(GgufError::Metadata {
                        file: file.to_path_buf(),
                        key: "general.alignment".into(),
                        what: format!("must be a power of two, got {v:?}"),
                    })
                }
            },
        };

        let mut tensors = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = c.string(&|| format!("name of tensor {i}"))?;
            let what = || format!("tensor `{name}`");
            let at = c.pos;
            let n_dims = c.u32(&what)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(c.corrupt(
                    at,
                    format!("{}: {n_dims} dimensions (1..={MAX_DIMS} supported)", what()),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&what)?);
            }
            let at = c.pos;
            let tag = c.u32(&what)?;
            let ggml_type = GgmlType::from_u32(tag).ok_or_else(|| GgufError::Tensor {
                file: file.to_path_buf(),
                tensor: name.clone(),
                what: format!("unsupported tensor type {tag} (at offset {at})"),
            })?;
            let offset = c.u64(&what)?;
            let tensor_err = |what: String| GgufError::Tensor {
                file: file.to_path_buf(),
                tensor: name.clone(),
                what,
            };
            let elems = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| tensor_err(format!("dimensions {dims:?} overflow")))?;
            let size_bytes = ggml_type.bytes_for(elems).ok_or_else(|| {
                tensor_err(format!(
                    "{elems} elements is not a multiple of the {ggml_type} block size {}",
                    ggml_type.block_elems()
                ))
            })?;
            if offset % alignment != 0 {
                return Err(tensor_err(format!(
                    "data offset {offset} is not aligned to {alignment}"
                )));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
                size_bytes,
            });
        }

        let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
        let len = bytes.len() as u64;
        let mut seen = std::collections::HashSet::new();
        for t in &tensors {
            if !seen.insert(t.name.as_str()) {
                return Err(GgufError::Tensor {
                    file: file.to_path_buf(),
                    tensor: t.name.clone(),
                    what: "name appears twice".into(),
                });
            }
            let end = data_offset
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(t.size_bytes));
            if end.is_none_or(|e| e > len) {
                return Err(GgufError::Tensor {
                    file: file.to_path_buf(),
                    tensor: t.name.clone(),
                    what: format!(
                        "data [{}..+{}] runs past the end of the file ({len} bytes): truncated?",
                        data_offset.saturating_add(t.offset),
                        t.size_bytes
                    ),
                });
            }
        }

        Ok(Gguf {
            file: file.to_path_buf(),
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    fn meta_err(&self, key: &str, what: String) -> GgufError {
        GgufError::Metadata {
            file: self.file.clone(),
            key: key.into(),
            what,
        }
    }

    fn required(&self, key: &str) -> Result<&Value> {
        self.get(key)
            .ok_or_else(|| self.meta_err(key, "missing".into()))
    }

    /// A required unsigned integer.
    pub fn u64(&self, key: &str) -> Result<u64> {
        let v = self.required(key)?;
        v.as_u64()
            .ok_or_else(|| self.meta_err(key, format!("expected an unsigned integer, got {v:?}")))
    }

    /// A required number (float or integer).
    pub fn f64(&self, key: &str) -> Result<f64> {
        let v = self.required(key)?;
        v.as_f64()
            .ok_or_else(|| self.meta_err(key, format!("expected a number, got {v:?}")))
    }

    pub fn str(&self, key: &str) -> Result<&str> {
        let v = self.required(key)?;
        v.as_str().ok_or_else(|| {
            self.meta_err(key, format!("expected a string, got {:?}", v.value_type()))
        })
    }

    /// An optional value that, when present, must have the right type.
    pub fn opt<T>(&self, key: &str, f: impl Fn(&Value) -> Option<T>) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => f(v)
                .map(Some)
                .ok_or_else(|| self.meta_err(key, format!("unexpected type {:?}", v.value_type()))),
        }
    }

    /// A required array of strings.
    pub fn strings(&self, key: &str) -> Result<Vec<String>> {
        let v = self.required(key)?;
        let items = v
            .as_array()
            .ok_or_else(|| self.meta_err(key, "expected an array".into()))?;
        items
            .iter()
            .map(|i| i.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| self.meta_err(key, "expected an array of strings".into()))
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// A GGUF file opened with its bytes memory-mapped.
pub struct GgufFile {
    pub info: Gguf,
    mmap: memmap2::Mmap,
}

impl GgufFile {
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let io_err = |source| GgufError::Io {
            file: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io_err)?;
        // SAFETY: the mapping is read-only; a model file changed underneath a running
        // process is outside what any mmap-based loader can guard against.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err)?;
        let info = Gguf::parse(&mmap, path)?;
        Ok(GgufFile { info, mmap })
    }

    /// The whole mapped file.
    pub fn bytes(&self) -> &[u8] {
        &self.mmap
    }

    /// The raw bytes of a tensor (bounds were checked at open).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        let start = (self.info.data_offset + t.offset) as usize;
        &self.mmap[start..start + t.size_bytes as usize]
    }

    /// Looks a tensor up by name; the error names the missing tensor.
    pub fn tensor(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let t = self.info.tensor(name).ok_or_else(|| GgufError::Tensor {
            file: self.info.file.clone(),
            tensor: name.into(),
            what: "missing".into(),
        })?;
        Ok((t, self.tensor_bytes(t)))
    }
}
