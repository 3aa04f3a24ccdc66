//! A checkpoint: one or more safetensors shards, each a byte source with its parsed header.

use std::collections::{BTreeMap, HashMap};

use super::header::{Dtype, Header, TensorInfo};
use super::source::ByteSource;
use super::WeightsError;

struct Shard {
    source: Box<dyn ByteSource>,
    header: Header,
}

/// Tensors by name over a set of shards. Opening reads only the headers; each `read_*` reads one tensor.
pub struct Checkpoint {
    shards: Vec<Shard>,
    /// Tensor name → index into `shards`.
    index: BTreeMap<String, usize>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint").field("shards", &self.shards.len()).field("tensors", &self.index.len()).finish()
    }
}

impl Checkpoint {
    /// Every tensor of every source; a name in two sources is an error.
    pub fn from_sources(sources: Vec<Box<dyn ByteSource>>) -> Result<Checkpoint, WeightsError> {
        let mut shards = Vec::with_capacity(sources.len());
        let mut index = BTreeMap::new();
        for source in sources {
            let header = Header::read_from(source.as_ref())?;
            for name in header.tensors().keys() {
                if index.insert(name.clone(), shards.len()).is_some() {
                    return Err(WeightsError::DuplicateTensor { name: name.clone() });
                }
            }
            shards.push(Shard { source, header });
        }
        Ok(Checkpoint { shards, index })
    }

    /// A sharded checkpoint from `model.safetensors.index.json`: its `weight_map` (tensor → shard file name)
    /// is authoritative; `open` is called once per distinct shard name. A mapped tensor missing from its
    /// shard is an error; tensors a shard holds but the map does not name are ignored.
    pub fn from_index_json(
        index_json: &str,
        mut open: impl FnMut(&str) -> Result<Box<dyn ByteSource>, WeightsError>,
    ) -> Result<Checkpoint, WeightsError> {
        let value: serde_json::Value =
            serde_json::from_str(index_json).map_err(|e| WeightsError::IndexJson(e.to_string()))?;
        let weight_map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| WeightsError::IndexJson("no `weight_map` object".into()))?;

        let mut shards = Vec::new();
        let mut shard_of_file: HashMap<&str, usize> = HashMap::new();
        let mut index = BTreeMap::new();
        for (name, file) in weight_map {
            let file = file
                .as_str()
                .ok_or_else(|| WeightsError::IndexJson(format!("weight_map[{name:?}] is not a string")))?;
            let shard = match shard_of_file.get(file) {
                Some(&i) => i,
                None => {
                    let source = open(file)?;
                    let header = Header::read_from(source.as_ref())?;
                    shards.push(Shard { source, header });
                    shard_of_file.insert(file, shards.len() - 1);
                    shards.len() - 1
                }
            };
            if shards[shard].header.get(name).is_none() {
                return Err(WeightsError::MissingInShard { name: name.clone(), shard: file.to_string() });
            }
            index.insert(name.clone(), shard);
        }
        Ok(Checkpoint { shards, index })
    }

    /// A checkpoint directory: `model.safetensors.index.json` (+ its shards) if present, else `model.safetensors`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_dir(dir: &std::path::Path) -> Result<Checkpoint, WeightsError> {
        use super::source::FileSource;
        let index_path = dir.join("model.safetensors.index.json");
        if index_path.is_file() {
            let json = std::fs::read_to_string(&index_path)
                .map_err(|source| WeightsError::Io { what: index_path.display().to_string(), source })?;
            return Self::from_index_json(&json, |file| {
                // Shards must sit beside the index, never elsewhere on disk.
                let plain = std::path::Path::new(file).file_name().is_some_and(|f| f == file);
                if !plain || file.contains(['/', '\\']) {
                    return Err(WeightsError::BadShardName { shard: file.to_string() });
                }
                Ok(Box::new(FileSource::open(dir.join(file))?) as Box<dyn ByteSource>)
            });
        }
        let single = dir.join("model.safetensors");
        if single.is_file() {
            return Self::from_sources(vec![Box::new(FileSource::open(&single)?)]);
        }
        Err(WeightsError::NoCheckpoint { dir: dir.display().to_string() })
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.index.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        let shard = *self.index.get(name)?;
        self.shards[shard].header.get(name)
    }

    fn locate(&self, name: &str) -> Result<(&Shard, &TensorInfo), WeightsError> {
        let missing = || WeightsError::MissingTensor { name: name.to_string() };
        let shard = &self.shards[*self.index.get(name).ok_or_else(missing)?];
        Ok((shard, shard.header.get(name).ok_or_else(missing)?))
    }

    /// The tensor's raw bytes exactly as stored (little-endian, its own dtype).
    pub fn read_bytes(&self, name: &str) -> Result<Vec<u8>, WeightsError> {
        let (shard, info) = self.locate(name)?;
        let len = usize::try_from(info.byte_len())
            .map_err(|_| WeightsError::TooLarge { name: name.to_string(), bytes: info.byte_len() })?;
        let mut bytes = vec![0u8; len];
        shard.source.read_at(info.range.start, &mut bytes)?;
        Ok(bytes)
    }

    /// The tensor as f32 (row-major, its stored shape), converted from F32, BF16 or F16.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>, WeightsError> {
        let (shard, info) = self.locate(name)?;
        if !info.dtype.is_float_readable() {
            return Err(WeightsError::UnsupportedDtype { name: name.to_string(), dtype: info.dtype.to_string() });
        }
        let too_large = || WeightsError::TooLarge { name: name.to_string(), bytes: info.byte_len() };
        let numel = usize::try_from(info.byte_len() / info.dtype.size_bytes()).map_err(|_| too_large())?;
        if info.dtype == Dtype::F32 {
            // Read straight into the result: no second copy of the largest tensors.
            let mut out = vec![0f32; numel];
            shard.source.read_at(info.range.start, bytemuck::cast_slice_mut(&mut out))?;
            if cfg!(target_endian = "big") {
                out.iter_mut().for_each(|x| *x = f32::from_bits(u32::from_le(x.to_bits())));
            }
            return Ok(out);
        }
        tensor_to_f32(name, info.dtype, &info.shape, &self.read_bytes(name)?)
    }
}

/// One tensor's little-endian bytes (F32, BF16 or F16) as f32 values, checked against `shape`; `name` only
/// labels errors. For tensors that arrive without a checkpoint around them (e.g. from JavaScript).
pub fn tensor_to_f32(name: &str, dtype: Dtype, shape: &[usize], bytes: &[u8]) -> Result<Vec<f32>, WeightsError> {
    if !dtype.is_float_readable() {
        return Err(WeightsError::UnsupportedDtype { name: name.to_string(), dtype: dtype.to_string() });
    }
    let expected = shape.iter().try_fold(dtype.size_bytes(), |n, &d| n.checked_mul(d as u64));
    if expected != Some(bytes.len() as u64) {
        return Err(WeightsError::SizeMismatch {
            name: name.to_string(),
            dtype,
            shape: shape.to_vec(),
            bytes: bytes.len() as u64,
            expected: expected.unwrap_or(u64::MAX),
        });
    }
    Ok(match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        // F16, the only other readable dtype.
        _ => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
    })
}
