//! `shaders/kv_cache.wgsl`: in-place KV-cache update that writes only the new rows.
use crate::gpu::{Dispatch, Gpu, GpuBuffer};

/// For each source row m < rows with (seq, pos) = (qinfo[2m], qinfo[2m+1]):
///   k_cache[(seq·max_len + pos)·width + i] = src[m·row_stride + k_col + i]
///   v_cache[(seq·max_len + pos)·width + i] = src[m·row_stride + v_col + i]     for i < width.
#[allow(clippy::too_many_arguments)]
pub fn kv_write(gpu: &Gpu, src: &GpuBuffer, qinfo: &GpuBuffer, k_cache: &GpuBuffer, v_cache: &GpuBuffer, rows: u32, row_stride: u32, k_col: u32, v_col: u32, width: u32, max_len: u32) -> Dispatch {
    let _ = (gpu, src, qinfo, k_cache, v_cache, rows, row_stride, k_col, v_col, width, max_len);
    todo!("kv_write")
}
