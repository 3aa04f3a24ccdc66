//! `shaders/kv_cache.wgsl`: in-place KV-cache update that writes only the new rows, RoPE applied on the way.
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
    q_heads: u32,
    head_dim: u32,
    max_pos: u32,
    _pad: [u32; 2],
}

/// RoPE and the cache write in one dispatch, for source rows laid out [Q heads | K heads | V] (the fused
/// projection, row stride `row_stride`, `q_heads` query heads and `width / head_dim` key heads of `head_dim`):
/// rotates Q in place and writes the rotated K and the V of row m to (seq, pos) = (qinfo[2m], qinfo[2m+1])
/// of the caches, as `rope` followed by a plain copy would (K is not written back to the source).
/// cos/sin are `rope::rope_tables` for head_dim; a position beyond them is left unrotated.
#[allow(clippy::too_many_arguments)]
pub fn rope_kv_write(
    gpu: &Gpu, qkv: &GpuBuffer, qinfo: &GpuBuffer, cos: &GpuBuffer, sin: &GpuBuffer, k_cache: &GpuBuffer, v_cache: &GpuBuffer,
    rows: u32, row_stride: u32, q_heads: u32, head_dim: u32, width: u32, max_len: u32,
) -> Dispatch {
    assert!(width > 0 && max_len > 0, "rope_kv_write: width and max_len must be positive");
    assert!(head_dim > 0 && head_dim.is_multiple_of(2) && width.is_multiple_of(head_dim), "rope_kv_write: head_dim {head_dim} must be even and divide width {width}");
    assert!((q_heads * head_dim + 2 * width) <= row_stride, "rope_kv_write: Q, K and V run past the row stride");
    assert_eq!(cos.size, sin.size, "rope_kv_write: cos and sin tables differ in size");
    let max_pos = (cos.size / 4 / (head_dim / 2) as u64) as u32;
    let k_col = q_heads * head_dim;
    let per_row = (k_col + width) / 2 + width;
    let pipeline = gpu.pipeline("kv_cache.rope_kv_write", "rope_kv_write", || specialize(SHADER, &[]));
    let grid = grid_1d((rows as u64 * per_row as u64).div_ceil(WORKGROUP as u64) as u32);
    let params = Params { rows, row_stride, k_col, v_col: k_col + width, width, max_len, groups_x: grid[0], q_heads, head_dim, max_pos, _pad: [0; 2] };
    gpu.dispatch(&pipeline, &params, &[qkv, qinfo, k_cache, v_cache, cos, sin], grid)
}
