//! Safetensors reading tensor by tensor from any byte source; dtype conversion. Knows nothing of GPUs, models or
//! their tensor names (Dia's layouts are `dia::layout`, the codec's `dac::layout`).
//!
//! Nothing here assumes a file: a checkpoint is a set of [`ByteSource`]s (memory, native file, later JS
//! chunks), and only the headers plus the tensors actually asked for are ever read.

mod checkpoint;
mod header;
mod source;

pub use checkpoint::{tensor_to_f32, Checkpoint};
pub use header::{Dtype, Header, TensorInfo, MAX_HEADER_LEN};
#[cfg(not(target_arch = "wasm32"))]
pub use source::FileSource;
pub use source::{ByteSource, MemorySource};

/// Why a checkpoint or one of its tensors could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("I/O error on {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A non-file byte source (e.g. a browser store) failed.
    #[error("byte source failed: {0}")]
    Source(String),
    #[error("read of {len} bytes at offset {offset} is beyond the end of a {source_len}-byte source")]
    ReadOutOfRange { offset: u64, len: u64, source_len: u64 },
    #[error("source is {len} bytes, shorter than the 8-byte safetensors length prefix (truncated?)")]
    TooShort { len: u64 },
    #[error("safetensors header length {header_len} is beyond the end of a {file_len}-byte file (truncated or not safetensors?)")]
    HeaderBeyondFile { header_len: u64, file_len: u64 },
    #[error("safetensors header length {header_len} exceeds the {max}-byte limit (not safetensors?)")]
    HeaderTooLarge { header_len: u64, max: u64 },
    #[error("header prefix has {got} bytes but {needed} are needed")]
    PrefixTooShort { got: usize, needed: u64 },
    #[error("malformed safetensors header: {0}")]
    HeaderJson(String),
    #[error(
        "tensor {name}: data_offsets [{begin}, {end}) lie beyond the {data_len} data bytes of the file (truncated?)"
    )]
    OffsetsOutOfRange { name: String, begin: u64, end: u64, data_len: u64 },
    #[error("tensor {name}: {bytes} bytes of data, but {dtype} × {shape:?} needs {expected}")]
    SizeMismatch { name: String, dtype: Dtype, shape: Vec<usize>, bytes: u64, expected: u64 },
    #[error("tensors {first} and {second} overlap in the file")]
    Overlap { first: String, second: String },
    #[error("tensor {name} appears in more than one shard")]
    DuplicateTensor { name: String },
    #[error("tensor {name} is missing from the checkpoint")]
    MissingTensor { name: String },
    #[error("tensor {name} has shape {found:?}, expected {expected:?}")]
    WrongShape { name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("tensor {name} has dtype {dtype}; only F32, BF16 and F16 can be read")]
    UnsupportedDtype { name: String, dtype: String },
    #[error("tensor {name} ({bytes} bytes) does not fit this target's address space")]
    TooLarge { name: String, bytes: u64 },
    #[error("checkpoint holds {} tensors the model does not use: {}", names.len(), names.join(", "))]
    UnexpectedTensors { names: Vec<String> },
    #[error("checkpoint is neither in the HF layout (model.encoder.embedding.weight) nor in the nari layout (encoder.embedding.weight)")]
    UnknownLayout,
    #[error("{name} is not a tensor of the Dia HF layout")]
    UnknownTensor { name: String },
    #[error("malformed safetensors index: {0}")]
    IndexJson(String),
    #[error("index maps tensor {name} to shard {shard}, which does not hold it")]
    MissingInShard { name: String, shard: String },
    #[error("index names shard {shard:?}, which is not a plain file name")]
    BadShardName { shard: String },
    #[error("quantized matrix {name}: {reason}")]
    QuantizedTensor { name: String, reason: String },
    #[error("{dir} holds neither model.safetensors.index.json nor model.safetensors")]
    NoCheckpoint { dir: String },
}
