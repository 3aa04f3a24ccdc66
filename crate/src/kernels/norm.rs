//! `shaders/rmsnorm.wgsl`: y[r] = x[r] / sqrt(mean(x[r]²) + eps) · weight, statistics in f32.
use crate::gpu::{grid_1d, specialize, Dispatch, Gpu, GpuBuffer};

const SOURCE: &str = include_str!("../../../shaders/rmsnorm.wgsl");

wgsl_params! {
    /// Uniform parameters of `rmsnorm`.
    struct Params {
        rows: u32,
        dim: u32,
        eps: f32,
        _pad: u32,
    }
}

/// x, y: f32 `[rows, dim]` (may be the same buffer only if the kernel allows; use distinct buffers);
/// weight: f32 `[dim]`. One workgroup per row.
pub fn rmsnorm(gpu: &Gpu, x: &GpuBuffer, weight: &GpuBuffer, y: &GpuBuffer, rows: u32, dim: u32, eps: f32) -> Dispatch {
    let bytes = rows as u64 * dim as u64 * 4;
    assert!(x.size >= bytes && y.size >= bytes, "rmsnorm: x or y holds fewer than {rows} × {dim} f32");
    assert!(weight.size >= dim as u64 * 4, "rmsnorm: weight holds fewer than {dim} f32");
    let pipeline = gpu.pipeline("rmsnorm", "rmsnorm", || specialize(SOURCE, &[("PARAMS", Params::wgsl())]));
    let groups = if dim == 0 { 0 } else { rows };
    gpu.dispatch(&pipeline, &Params { rows, dim, eps, _pad: 0 }, &[x, weight, y], grid_1d(groups))
}
