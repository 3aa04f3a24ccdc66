//! `shaders/kv_cache.wgsl`: in-place KV-cache update that writes only the new rows.
use crate::gpu::{grid_1d, specialize, Dispatch, Gpu, GpuBuffer};

const SHADER: &str = include_str!("../../../shaders/kv_cache.wgsl");
const WORKGROUP: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    row_stride: u32,
    k_col: u32,
    v_col: u32,
    width: u32,
    max_len: u32,
    groups_x: u32,
    _pad: u32,
}

/// For each source row m < rows with (seq, pos) = (qinfo[2m], qinfo[2m+1]):
///   k_cache[(seq·max_len + pos)·width + i] = src[m·row_stride + k_col + i]
///   v_cache[(seq·max_len + pos)·width + i] = src[m·row_stride + v_col + i]     for i < width.
/// Rows with pos ≥ max_len or seq beyond the cache are skipped (they would land in another sequence's rows).
/// qinfo is read when the dispatch runs, so the same dispatch serves every decoder step.
#[allow(clippy::too_many_arguments)]
pub fn kv_write(gpu: &Gpu, src: &GpuBuffer, qinfo: &GpuBuffer, k_cache: &GpuBuffer, v_cache: &GpuBuffer, rows: u32, row_stride: u32, k_col: u32, v_col: u32, width: u32, max_len: u32) -> Dispatch {
    assert!(width > 0 && max_len > 0, "kv_write: width and max_len must be positive");
    let pipeline = gpu.pipeline("kv_cache.kv_write", "kv_write", || specialize(SHADER, &[]));
    let grid = grid_1d((rows as u64 * width as u64).div_ceil(WORKGROUP as u64) as u32);
    let params = Params { rows, row_stride, k_col, v_col, width, max_len, groups_x: grid[0], _pad: 0 };
    gpu.dispatch(&pipeline, &params, &[src, qinfo, k_cache, v_cache], grid)
}
