//! `shaders/rope.wgsl`: rotary embedding, half-split ("rotate_half") layout, in place, from tables.
use crate::gpu::{grid_1d, specialize, Dispatch, Gpu, GpuBuffer};

const SOURCE: &str = include_str!("../../../shaders/rope.wgsl");

wgsl_params! {
    /// Uniform parameters of `rope`.
    struct Params {
        rows: u32,
        row_stride: u32,
        col_offset: u32,
        heads: u32,
        head_dim: u32,
        max_pos: u32,
        /// rows · heads · head_dim / 2
        pairs: u32,
        _pad: u32,
    }
}

/// cos/sin tables `[max_pos, head_dim/2]`, computed once the way PyTorch does it:
/// inv_freq_i = 1/θ^(2i/d) rounded to f32, angle = f32(pos)·inv_freq_i rounded to f32, then cos/sin.
///
/// In detail (HF `DiaRotaryEmbedding`, all f32 tensors): the exponent 2i/d is an f32 division, θ^e is
/// rounded to f32 (computed here in f64, i.e. correctly rounded), inv_freq = 1/θ^e is an f32 division,
/// and cos/sin of the f32 angle are evaluated in f64 and rounded.
pub fn rope_tables(max_pos: usize, head_dim: usize, theta: f32) -> (Vec<f32>, Vec<f32>) {
    assert!(head_dim.is_multiple_of(2), "rope_tables: head_dim {head_dim} is odd");
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| {
            let exponent = (2 * i) as f32 / head_dim as f32;
            1.0f32 / (theta as f64).powf(exponent as f64) as f32
        })
        .collect();
    let mut cos = Vec::with_capacity(max_pos * half);
    let mut sin = Vec::with_capacity(max_pos * half);
    for pos in 0..max_pos {
        for &f in &inv_freq {
            let angle = (pos as f32 * f) as f64;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

/// Rotates, for every row m < rows and head h < heads, the vector
/// x[m·row_stride + col_offset + h·head_dim .. + head_dim] by position positions[2·m + 1]
/// (positions is the u32 "query info" buffer `[rows, 2]` = (sequence, position)):
/// out[i] = x[i]·cos − x[i+d/2]·sin, out[i+d/2] = x[i+d/2]·cos + x[i]·sin.
/// cos/sin are `rope_tables` for head_dim; a position beyond them leaves its row unrotated.
#[allow(clippy::too_many_arguments)]
pub fn rope(gpu: &Gpu, x: &GpuBuffer, cos: &GpuBuffer, sin: &GpuBuffer, qinfo: &GpuBuffer, rows: u32, row_stride: u32, col_offset: u32, heads: u32, head_dim: u32) -> Dispatch {
    assert!(head_dim.is_multiple_of(2) && head_dim > 0, "rope: head_dim {head_dim} must be even and positive");
    let half = head_dim / 2;
    assert!(col_offset + heads * head_dim <= row_stride || rows == 0, "rope: heads run past the row stride");
    if rows > 0 {
        let needed = ((rows - 1) as u64 * row_stride as u64 + (col_offset + heads * head_dim) as u64) * 4;
        assert!(x.size >= needed, "rope: x smaller than its rows");
    }
    assert!(qinfo.size >= rows as u64 * 8, "rope: qinfo holds fewer than {rows} (sequence, position) pairs");
    assert_eq!(cos.size, sin.size, "rope: cos and sin tables differ in size");
    let max_pos = (cos.size / 4 / half as u64) as u32;
    let pairs = rows as u64 * heads as u64 * half as u64;
    assert!(pairs <= u32::MAX as u64, "rope: too many pairs for 32-bit indexing");
    let params = Params {
        rows,
        row_stride,
        col_offset,
        heads,
        head_dim,
        max_pos,
        pairs: pairs as u32,
        _pad: 0,
    };
    let pipeline = gpu.pipeline("rope", "rope", || specialize(SOURCE, &[("PARAMS", Params::wgsl())]));
    gpu.dispatch(&pipeline, &params, &[x, cos, sin, qinfo], grid_1d(pairs.div_ceil(256) as u32))
}
