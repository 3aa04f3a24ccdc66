//! The DAC 44.1 kHz codec on the GPU: codes → PCM (decoder) and PCM → codes (encoder), HF
//! `descript/dac_44khz` weight layout (spec §5).
//!
//! - `layout`: the checkpoint's tensor names and shapes for a `DacConfig`, validation, weight-norm folding;
//! - `loader`: `DacModelBuilder` (tensors in any order, uploaded as they arrive) and `DacModel::load`;
//! - `model`: `DacModel`, its weight graph, and what decoding and encoding share;
//! - `decoder`: the reusable `DacDecoder` workspace that records a decode of a window of frames into a caller's pass;
//! - `encoder`: PCM to codes.
mod decoder;
mod encoder;
pub mod layout;
mod loader;
pub mod model;

pub use layout::{check_dac_layout, dac_tensor_specs, fold_weight_norm, TensorSpec};
pub use decoder::DacDecoder;
pub use loader::{check_dac_checkpoint, DacModelBuilder};
pub use model::{DacModel, CHANNELS_LAST_MIN_FRAMES};

use crate::config::ConfigError;
use crate::gpu::GpuError;
use crate::weights::WeightsError;

/// Errors of loading the codec and of encoding/decoding.
#[derive(Debug, thiserror::Error)]
pub enum DacError {
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error("invalid DAC config: {0}")]
    Config(#[from] ConfigError),
    #[error("the DAC checkpoint lacks tensor {name} ({count} missing in all)")]
    MissingTensor { name: String, count: usize },
    #[error("DAC tensor {name} has shape {found:?}, expected {expected:?}")]
    WrongShape { name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("the DAC checkpoint has a tensor the codec does not use: {0}")]
    UnexpectedTensor(String),
    #[error("DAC tensor {name} arrived twice")]
    DuplicateTensor { name: String },
    #[error("reading DAC weights: {0}")]
    Weights(#[from] WeightsError),
    #[error("DAC tensor {name}: {found} values for shape {shape:?}")]
    DataLength { name: String, shape: Vec<usize>, found: usize },
    #[error("bad codes: {0}")]
    BadCodes(String),
    #[error("{frames} frames exceed this decoder's capacity of {max} frames")]
    TooManyFrames { frames: usize, max: usize },
    #[error("this DAC model was loaded without its encoder")]
    NoEncoder,
}

impl DacError {
    /// Whether the GPU device was lost (the codec and its device are unusable; a new device is needed).
    pub fn is_device_lost(&self) -> bool {
        matches!(self, DacError::Gpu(GpuError::DeviceLost(_)))
    }
}
