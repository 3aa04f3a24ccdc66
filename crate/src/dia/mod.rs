//! The Dia model on the GPU: tokenizer, weights, encoder and decoder passes, generation.
pub mod batch_plan;
pub mod delay;
pub mod forward;
pub mod generate;
pub mod layout;
pub mod model;
pub mod segment;
pub mod stored;
pub mod tokenizer;

pub use generate::{GenerateOptions, Generation, Reserve, RunError, Session};
pub use layout::{expected_hf_tensors, DiaLayout, DiaWeights, TensorValues};
pub use model::{keeps_encoder_workspace, kv_format_for, largest_matrix_bytes, step_weight_bytes, DiaModel, DiaModelBuilder, MatrixRole};

use crate::gpu::GpuError;
use crate::kernels::sampling::SamplingError;

/// Errors of loading the model and of generation.
#[derive(Debug, thiserror::Error)]
pub enum DiaError {
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error("invalid sampling options: {0}")]
    Sampling(#[from] SamplingError),
    #[error("the checkpoint has a tensor the model does not use: {0}")]
    UnexpectedTensor(String),
    #[error("tensor {name} has shape {found:?}, expected {expected:?}")]
    WrongShape { name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("tensor {name}: {source}")]
    Quantization { name: String, source: crate::quant::QuantError },
    #[error("the checkpoint lacks tensor {name} ({count} missing in all)")]
    MissingTensor { name: String, count: usize },
    #[error("reading weights: {0}")]
    Weights(#[from] crate::weights::WeightsError),
    #[error("bad model config: {0}")]
    Config(String),
    #[error("the text is empty (or only whitespace)")]
    EmptyText,
    #[error("the text is {bytes} bytes long; the encoder takes at most {limit} bytes")]
    TextTooLong { bytes: usize, limit: usize },
    #[error("prefix plus max_new_tokens is {rows} rows; the decoder takes at most {limit}")]
    TooLong { rows: usize, limit: usize },
    #[error("bad voice prompt: {0}")]
    BadPrompt(String),
    #[error("bad options: {0}")]
    BadOptions(String),
    #[error("{0}")]
    Io(String),
    #[error("generation was cancelled")]
    Cancelled,
}

impl DiaError {
    /// Whether the GPU device was lost (the model and its device are unusable; a new device is needed).
    pub fn is_device_lost(&self) -> bool {
        matches!(self, DiaError::Gpu(GpuError::DeviceLost(_)))
    }
}

/// Loads a checkpoint (either layout) that has been opened as a `Checkpoint`: shapes are validated against
/// the config before any data is read, then tensors stream to the GPU one at a time.
pub fn load_model(gpu: &crate::gpu::Gpu, cfg: &crate::config::DiaConfig, ckpt: &crate::weights::Checkpoint, numerics: crate::kernels::Numerics) -> Result<DiaModel, DiaError> {
    let weights = DiaWeights::new(ckpt, cfg)?;
    weights.validate()?;
    let mut builder = DiaModelBuilder::new(gpu, cfg, numerics)?;
    builder.put_all(|name, _| Ok(weights.read_values(name)?))?;
    builder.finish()
}

/// The mode a converted checkpoint was written for when it holds quantized matrices (`Q4` if any is q4, else
/// `Q8`); None for a checkpoint of plain numbers. Reads headers only.
pub fn stored_numerics(cfg: &crate::config::DiaConfig, ckpt: &crate::weights::Checkpoint) -> Result<Option<crate::kernels::Numerics>, DiaError> {
    use crate::kernels::Numerics;
    let formats = DiaWeights::new(ckpt, cfg)?.quantized_formats()?;
    Ok(if formats.contains("q4") {
        Some(Numerics::Q4)
    } else if formats.contains("q8") {
        Some(Numerics::Q8)
    } else {
        None
    })
}

/// Loads a checkpoint directory (`config.json` + `model.safetensors` or a sharded index) in either layout.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_model_dir(gpu: &crate::gpu::Gpu, dir: &std::path::Path, numerics: crate::kernels::Numerics) -> Result<DiaModel, DiaError> {
    let cfg = crate::config::DiaConfig::from_dir(dir).map_err(|e| DiaError::Config(e.to_string()))?;
    let ckpt = crate::weights::Checkpoint::open_dir(dir)?;
    load_model(gpu, &cfg, &ckpt, numerics)
}
