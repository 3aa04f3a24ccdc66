//! `shaders/rope.wgsl`: rotary embedding, half-split ("rotate_half") layout, in place, from tables.
use crate::gpu::{Dispatch, Gpu, GpuBuffer};

/// cos/sin tables `[max_pos, head_dim/2]`, computed once the way PyTorch does it:
/// inv_freq_i = 1/θ^(2i/d) rounded to f32, angle = f32(pos)·inv_freq_i rounded to f32, then cos/sin.
pub fn rope_tables(max_pos: usize, head_dim: usize, theta: f32) -> (Vec<f32>, Vec<f32>) {
    let _ = (max_pos, head_dim, theta);
    todo!("rope tables")
}

/// Rotates, for every row m < rows and head h < heads, the vector
/// x[m·row_stride + col_offset + h·head_dim .. + head_dim] by position positions[2·m + 1]
/// (positions is the u32 "query info" buffer `[rows, 2]` = (sequence, position)):
/// out[i] = x[i]·cos − x[i+d/2]·sin, out[i+d/2] = x[i+d/2]·cos + x[i]·sin.
#[allow(clippy::too_many_arguments)]
pub fn rope(gpu: &Gpu, x: &GpuBuffer, cos: &GpuBuffer, sin: &GpuBuffer, qinfo: &GpuBuffer, rows: u32, row_stride: u32, col_offset: u32, heads: u32, head_dim: u32) -> Dispatch {
    let _ = (gpu, x, cos, sin, qinfo, rows, row_stride, col_offset, heads, head_dim);
    todo!("rope kernel")
}
