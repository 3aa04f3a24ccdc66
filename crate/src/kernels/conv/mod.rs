//! The DAC's convolutions, one family: Conv1d / ConvTranspose1d over f32 channels-first activations on the plain
//! kernels (`plain`, every adapter), and the decoder's convolutions over f16 channels-last activations on tensor
//! cores (`coop`, with its layout helpers in `layout`). `uses_tensor_cores` is the one place that picks between them;
//! within each path the tile is chosen per call from the geometry (`plain::ConvTile::resolve`, `coop`'s
//! `ClShape::for_geometry`).
use crate::gpu::Gpu;
use crate::kernels::Numerics;

pub mod coop;
pub mod layout;
pub mod plain;

/// Whether a codec in `numerics` decodes on the tensor-core path: the device has tensor cores (`Gpu::tensor_cores`),
/// the codec was asked to use them (`allowed`), its weights are f16 (`F16W`; q8 and q4 run the codec as f16w but keep
/// to the plain kernels, whose weights alone stay resident: the tap-major copies cost ~110 MB), and its decoder's
/// channel counts suit the tiles (`channels_ok`).
pub fn uses_tensor_cores(gpu: &Gpu, allowed: bool, numerics: Numerics, channels_ok: bool) -> bool {
    allowed && gpu.tensor_cores() && numerics == Numerics::F16W && channels_ok
}
