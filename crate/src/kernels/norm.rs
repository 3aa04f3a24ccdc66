//! `shaders/rmsnorm.wgsl`: y[r] = x[r] / sqrt(mean(x[r]²) + eps) · weight, statistics in f32.
use crate::gpu::{Dispatch, Gpu, GpuBuffer};

/// x, y: f32 `[rows, dim]` (may be the same buffer only if the kernel allows; use distinct buffers);
/// weight: f32 `[dim]`.
pub fn rmsnorm(gpu: &Gpu, x: &GpuBuffer, weight: &GpuBuffer, y: &GpuBuffer, rows: u32, dim: u32, eps: f32) -> Dispatch {
    let _ = (gpu, x, weight, y, rows, dim, eps);
    todo!("rmsnorm kernel")
}
