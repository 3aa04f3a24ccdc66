//! The safetensors header: `u64` little-endian JSON length, then the JSON table of
//! `name → {dtype, shape, data_offsets}` with offsets relative to the end of the header.

use std::collections::BTreeMap;
use std::ops::Range;

use serde_json::Value;

use super::source::ByteSource;
use super::WeightsError;

/// Headers beyond this are refused before anything is allocated (the safetensors reference uses the same cap).
pub const MAX_HEADER_LEN: u64 = 100 << 20;

/// Element type as safetensors spells it. Only `F32`, `BF16` and `F16` can be read as numbers; the rest are
/// known so that their byte ranges can still be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    Bool,
    U8,
    I8,
    F8E5M2,
    F8E4M3,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    I64,
    U64,
    F64,
}

impl Dtype {
    pub fn parse(s: &str) -> Option<Dtype> {
        Some(match s {
            "BOOL" => Dtype::Bool,
            "U8" => Dtype::U8,
            "I8" => Dtype::I8,
            "F8_E5M2" => Dtype::F8E5M2,
            "F8_E4M3" => Dtype::F8E4M3,
            "I16" => Dtype::I16,
            "U16" => Dtype::U16,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "I32" => Dtype::I32,
            "U32" => Dtype::U32,
            "F32" => Dtype::F32,
            "I64" => Dtype::I64,
            "U64" => Dtype::U64,
            "F64" => Dtype::F64,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
            Dtype::F64 => "F64",
        }
    }

    pub fn size_bytes(self) -> u64 {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 | Dtype::F8E5M2 | Dtype::F8E4M3 => 1,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::I64 | Dtype::U64 | Dtype::F64 => 8,
        }
    }

    /// Whether `Checkpoint::read_f32` converts this dtype.
    pub fn is_float_readable(self) -> bool {
        matches!(self, Dtype::F32 | Dtype::BF16 | Dtype::F16)
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One tensor of a safetensors file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Absolute byte range in the source (header included in the offset).
    pub range: Range<u64>,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn byte_len(&self) -> u64 {
        self.range.end - self.range.start
    }
}

/// A parsed, checked safetensors header: every tensor's range lies inside the source, matches its dtype ×
/// shape, and no two tensors overlap.
#[derive(Debug, Clone)]
pub struct Header {
    data_start: u64,
    tensors: BTreeMap<String, TensorInfo>,
}

fn json_err(msg: impl Into<String>) -> WeightsError {
    WeightsError::HeaderJson(msg.into())
}

impl Header {
    /// How many leading bytes of the source `parse` needs (8 + the JSON length), from its first 8 bytes.
    pub fn prefix_len_needed(first8: &[u8]) -> Result<u64, WeightsError> {
        let Some(len_bytes) = first8.get(..8) else {
            return Err(WeightsError::TooShort { len: first8.len() as u64 });
        };
        let header_len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
        if header_len > MAX_HEADER_LEN {
            return Err(WeightsError::HeaderTooLarge { header_len, max: MAX_HEADER_LEN });
        }
        Ok(8 + header_len)
    }

    /// Parses the header from the first bytes of a source whose total length is `total_len`. `prefix` must
    /// hold at least `prefix_len_needed` bytes; more is fine.
    pub fn parse(prefix: &[u8], total_len: u64) -> Result<Header, WeightsError> {
        if total_len < 8 {
            return Err(WeightsError::TooShort { len: total_len });
        }
        let needed = Self::prefix_len_needed(prefix)?;
        if needed > total_len {
            return Err(WeightsError::HeaderBeyondFile { header_len: needed - 8, file_len: total_len });
        }
        if (prefix.len() as u64) < needed {
            return Err(WeightsError::PrefixTooShort { got: prefix.len(), needed });
        }
        let json: Value = serde_json::from_slice(&prefix[8..needed as usize]).map_err(|e| json_err(e.to_string()))?;
        let Value::Object(entries) = json else {
            return Err(json_err("the header is not a JSON object"));
        };

        let data_start = needed;
        let data_len = total_len - data_start;
        let mut tensors = BTreeMap::new();
        for (name, entry) in entries {
            if name == "__metadata__" {
                continue;
            }
            let info = Self::parse_entry(&name, &entry, data_start, data_len)?;
            tensors.insert(name, info);
        }

        // Non-empty ranges sorted by start must not overlap.
        let mut by_start: Vec<(&String, &TensorInfo)> = tensors.iter().filter(|(_, t)| t.byte_len() > 0).collect();
        by_start.sort_by_key(|(_, t)| t.range.start);
        for pair in by_start.windows(2) {
            if pair[1].1.range.start < pair[0].1.range.end {
                return Err(WeightsError::Overlap { first: pair[0].0.clone(), second: pair[1].0.clone() });
            }
        }
        Ok(Header { data_start, tensors })
    }

    fn parse_entry(name: &str, entry: &Value, data_start: u64, data_len: u64) -> Result<TensorInfo, WeightsError> {
        let field = |key: &str| entry.get(key).ok_or_else(|| json_err(format!("tensor {name}: no `{key}`")));
        let dtype_str =
            field("dtype")?.as_str().ok_or_else(|| json_err(format!("tensor {name}: `dtype` is not a string")))?;
        let dtype = Dtype::parse(dtype_str)
            .ok_or_else(|| WeightsError::UnsupportedDtype { name: name.to_string(), dtype: dtype_str.to_string() })?;
        let ints = |key: &str| -> Result<Vec<u64>, WeightsError> {
            let bad = || json_err(format!("tensor {name}: `{key}` is not a list of non-negative integers"));
            field(key)?.as_array().ok_or_else(bad)?.iter().map(|v| v.as_u64().ok_or_else(bad)).collect()
        };
        let shape64 = ints("shape")?;
        let offsets = ints("data_offsets")?;
        let [begin, end] = offsets[..] else {
            return Err(json_err(format!("tensor {name}: `data_offsets` must hold two numbers")));
        };
        if begin > end || end > data_len {
            return Err(WeightsError::OffsetsOutOfRange { name: name.to_string(), begin, end, data_len });
        }
        let shape = shape64
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<Vec<usize>, _>>()
            .map_err(|_| json_err(format!("tensor {name}: shape {shape64:?} does not fit usize")))?;
        let expected = shape64
            .iter()
            .try_fold(dtype.size_bytes(), |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| json_err(format!("tensor {name}: shape {shape64:?} overflows")))?;
        if end - begin != expected {
            return Err(WeightsError::SizeMismatch {
                name: name.to_string(),
                dtype,
                shape,
                bytes: end - begin,
                expected,
            });
        }
        Ok(TensorInfo { dtype, shape, range: data_start + begin..data_start + end })
    }

    /// Reads and parses the header of a byte source (two small reads; the tensor data is not touched).
    pub fn read_from(source: &dyn ByteSource) -> Result<Header, WeightsError> {
        let total_len = source.len();
        if total_len < 8 {
            return Err(WeightsError::TooShort { len: total_len });
        }
        let mut first8 = [0u8; 8];
        source.read_at(0, &mut first8)?;
        let needed = Self::prefix_len_needed(&first8)?;
        if needed > total_len {
            return Err(WeightsError::HeaderBeyondFile { header_len: needed - 8, file_len: total_len });
        }
        let mut prefix = vec![0u8; needed as usize]; // ≤ MAX_HEADER_LEN + 8
        source.read_at(0, &mut prefix)?;
        Self::parse(&prefix, total_len)
    }

    /// Absolute offset of the first data byte (8 + JSON length).
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// Tensors by name (sorted), `__metadata__` excluded.
    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }
}
