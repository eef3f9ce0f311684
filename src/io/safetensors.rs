//! Reading and writing safetensors files (Hugging Face's format: an 8-byte little-endian header
//! length, a JSON header naming each tensor's dtype, shape and byte range, then the raw bytes).
//!
//! We read a whole file into owned [`NamedTensor`]s (dtype + shape + little-endian bytes) and convert
//! to f32 on request; we write atomically (temp file in the same directory, fsync, rename) so a crash
//! mid-save never leaves a half-written checkpoint under the real name.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::write_atomic;

/// Element types as safetensors names them (F32, F16, BF16, I64, I32, U8, …).
pub use safetensors::Dtype;

/// One tensor as stored: its element type, its shape and its bytes (little-endian, row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl NamedTensor {
    /// Wraps raw bytes; panics if they do not fill `shape` (a programming error, not user input).
    pub fn new(dtype: Dtype, shape: &[usize], data: Vec<u8>) -> NamedTensor {
        let want = shape.iter().product::<usize>() * dtype.bitsize() / 8;
        assert_eq!(
            data.len(),
            want,
            "NamedTensor::new: {} bytes do not fill {dtype:?} {shape:?}",
            data.len()
        );
        NamedTensor { dtype, shape: shape.to_vec(), data }
    }
    pub fn from_f32(shape: &[usize], values: &[f32]) -> NamedTensor {
        NamedTensor::new(Dtype::F32, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
    pub fn from_i64(shape: &[usize], values: &[i64]) -> NamedTensor {
        NamedTensor::new(Dtype::I64, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
    pub fn from_u8(shape: &[usize], values: &[u8]) -> NamedTensor {
        NamedTensor::new(Dtype::U8, shape, values.to_vec())
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values as f32. F32 is copied; F16, BF16 and F64 are converted (F64 rounds).
    /// `name` only makes the error message useful.
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>> {
        let d = &self.data;
        Ok(match self.dtype {
            Dtype::F32 => {
                d.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
            }
            Dtype::F16 => d
                .chunks_exact(2)
                .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect(),
            Dtype::BF16 => d
                .chunks_exact(2)
                .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect(),
            Dtype::F64 => d
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)
                .collect(),
            other => {
                return Err(Error::Input(format!(
                    "tensor '{name}' has dtype {other:?}; expected a floating-point dtype (F32, F16, BF16 or F64)"
                )));
            }
        })
    }

    /// The values as i64, from I64, I32, U32, I16, U16, I8 or U8 storage.
    pub fn to_i64(&self, name: &str) -> Result<Vec<i64>> {
        let d = &self.data;
        Ok(match self.dtype {
            Dtype::I64 => {
                d.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect()
            }
            Dtype::I32 => d
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64)
                .collect(),
            Dtype::U32 => d
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap()) as i64)
                .collect(),
            Dtype::I16 => {
                d.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]]) as i64).collect()
            }
            Dtype::U16 => {
                d.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as i64).collect()
            }
            Dtype::I8 => d.iter().map(|&b| b as i8 as i64).collect(),
            Dtype::U8 => d.iter().map(|&b| b as i64).collect(),
            other => {
                return Err(Error::Input(format!(
                    "tensor '{name}' has dtype {other:?}; expected an integer dtype"
                )));
            }
        })
    }
}

impl safetensors::View for &NamedTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// The contents of one safetensors file, by name (sorted), with the file's path for messages.
#[derive(Clone, Debug)]
pub struct TensorFile {
    pub path: PathBuf,
    pub metadata: HashMap<String, String>,
    pub tensors: BTreeMap<String, NamedTensor>,
}

impl TensorFile {
    /// Reads and validates a whole file. A missing, truncated or corrupt file is an error that names it.
    pub fn read(path: impl AsRef<Path>) -> Result<TensorFile> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?;
        TensorFile::from_bytes(&bytes, path)
    }

    /// Parses the bytes of a safetensors file; `path` is used in messages only.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<TensorFile> {
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| {
            Error::Input(format!(
                "{} is not a valid safetensors file ({e}); it may be truncated or corrupt, or not safetensors at all",
                path.display()
            ))
        })?;
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| {
            Error::Input(format!("{}: bad safetensors header: {e}", path.display()))
        })?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.iter() {
            let t = NamedTensor {
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
                data: view.data().to_vec(),
            };
            tensors.insert(name.to_string(), t);
        }
        let metadata = header.metadata().clone().unwrap_or_default();
        Ok(TensorFile { path: path.to_path_buf(), metadata, tensors })
    }

    /// The tensor called `name`, or an error naming the file and the keys it does have.
    pub fn get(&self, name: &str) -> Result<&NamedTensor> {
        self.tensors.get(name).ok_or_else(|| {
            let mut keys: Vec<&str> = self.tensors.keys().map(|k| k.as_str()).collect();
            let more = keys.len().saturating_sub(8);
            keys.truncate(8);
            Error::Input(format!(
                "{} has no tensor '{name}' (it has: {}{})",
                self.path.display(),
                keys.join(", "),
                if more > 0 { format!(", … {more} more") } else { String::new() }
            ))
        })
    }

    /// The tensor `name` as f32 with its shape.
    pub fn f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = self.get(name)?;
        let values =
            t.to_f32(name).map_err(|e| Error::Input(format!("{}: {e}", self.path.display())))?;
        Ok((t.shape.clone(), values))
    }
}

/// Serialises `tensors` with metadata `{"format": "pt"}` (what torch and transformers expect).
pub fn to_bytes<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a NamedTensor)>,
) -> Result<Vec<u8>> {
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(tensors, Some(metadata))
        .map_err(|e| Error::Input(format!("cannot serialise safetensors: {e}")))
}

/// Writes `tensors` to `path` atomically (temp file beside it, fsync, rename), metadata {"format":"pt"}.
pub fn write_safetensors<'a>(
    path: impl AsRef<Path>,
    tensors: impl IntoIterator<Item = (&'a str, &'a NamedTensor)>,
) -> Result<()> {
    let bytes = to_bytes(tensors)?;
    write_atomic(path.as_ref(), &bytes)
}
