//! One Rust wrapper per WGSL kernel family (`shaders/<family>.wgsl`): shapes in, `Dispatch` out.
//!
//! Conventions shared by every family:
//! - activations are f32 storage buffers, row-major;
//! - weights are `GpuMatrix` in one of the `Numerics` storage formats, `[rows = out, cols = in]`;
//! - each WGSL entry point has `@binding(0)` = a uniform `Params` struct, storage buffers from 1;
//! - a wrapper returns a `Dispatch` built once (bind group included) that callers record as often as
//!   they like; values that change per decoder step live in small storage buffers the host rewrites
//!   with `queue.write_buffer` (never in the uniform), so dispatches are reused unchanged.
#[macro_use]
mod wgsl;
pub mod linear;
mod coop_code;
pub mod norm;
pub mod embed;
pub mod rope;
pub mod kv_cache;
pub mod attention;
pub mod sampling;
pub mod dac_conv;
pub mod dac_conv_cl;
pub mod dac_channels_last;
pub mod dac_rvq;

use crate::gpu::{Gpu, GpuBuffer, GpuError};

/// How weights are stored on the GPU (arithmetic is f32 in both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Numerics {
    /// f32 weights: parity mode.
    F32,
    /// f16 weights packed two per u32 (low half = even column), unpacked with `unpack2x16float`.
    F16W,
}

impl Numerics {
    pub fn name(self) -> &'static str {
        match self {
            Numerics::F32 => "f32",
            Numerics::F16W => "f16w",
        }
    }

    pub fn parse(s: &str) -> Option<Numerics> {
        match s {
            "f32" => Some(Numerics::F32),
            "f16w" => Some(Numerics::F16W),
            _ => None,
        }
    }
}

/// How a `GpuMatrix` stores its values: part of every weight-reading kernel variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// f32 values, one per word.
    F32,
    /// f16 values, two per word (low half = even column); rows of odd length end with a zero half.
    F16,
}

impl WeightFormat {
    /// The name in kernel source sections (`access_<name>_…`).
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::F16 => "f16w",
        }
    }
}

/// A weight matrix `[rows, cols]` on the GPU. Row `r` starts at word `r * row_stride_words()`.
/// In `F16W` a row with an odd number of columns is padded with one zero half.
pub struct GpuMatrix {
    pub data: GpuBuffer,
    pub rows: u32,
    pub cols: u32,
    pub numerics: Numerics,
}

impl GpuMatrix {
    /// How the values are stored.
    pub fn format(&self) -> WeightFormat {
        match self.numerics {
            Numerics::F32 => WeightFormat::F32,
            Numerics::F16W => WeightFormat::F16,
        }
    }

    /// Row stride in 32-bit words (f32 elements for `F32`, packed pairs for `F16W`).
    pub fn row_stride_words(&self) -> u32 {
        stride_words(self.cols, self.numerics)
    }

    /// Converts row-major f32 `data` to the storage format and uploads it.
    pub fn upload(gpu: &Gpu, label: &str, data: &[f32], rows: usize, cols: usize, numerics: Numerics) -> Result<GpuMatrix, GpuError> {
        assert_eq!(data.len(), rows * cols, "matrix data length");
        let words = rows as u64 * stride_words(cols as u32, numerics) as u64;
        if words * 4 > gpu.limits.max_storage_buffer_binding_size {
            return Err(GpuError::LimitTooSmall {
                adapter: gpu.info.name.clone(),
                limit: "max_storage_buffer_binding_size",
                available: gpu.limits.max_storage_buffer_binding_size,
                required: words * 4,
            });
        }
        let data = match numerics {
            Numerics::F32 => gpu.upload(label, data),
            Numerics::F16W => gpu.upload(label, &pack_f16_rows(data, rows, cols)),
        };
        Ok(GpuMatrix { data, rows: rows as u32, cols: cols as u32, numerics })
    }
}

pub fn stride_words(cols: u32, numerics: Numerics) -> u32 {
    match numerics {
        Numerics::F32 => cols,
        Numerics::F16W => cols.div_ceil(2),
    }
}

/// f32 rows → f16 pairs packed in u32 (low 16 bits = even column), each row padded to whole words.
pub fn pack_f16_rows(data: &[f32], rows: usize, cols: usize) -> Vec<u32> {
    let stride = cols.div_ceil(2);
    let mut out = vec![0u32; rows * stride];
    for r in 0..rows {
        let row = &data[r * cols..(r + 1) * cols];
        for (i, pair) in row.chunks(2).enumerate() {
            let lo = half::f16::from_f32(pair[0]).to_bits() as u32;
            let hi = if pair.len() > 1 { half::f16::from_f32(pair[1]).to_bits() as u32 } else { 0 };
            out[r * stride + i] = lo | (hi << 16);
        }
    }
    out
}

/// What `F16W` storage does to a value (for CPU references of f16w kernels).
pub fn round_f16(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// WGSL snippet defining the weight array at `binding` and `fn load_w(row_word_base: u32, col: u32) -> f32`.
/// Kernels that want wide loads may instead branch on `numerics` and write their own access code.
pub fn weight_decl(numerics: Numerics, binding: u32) -> String {
    match numerics {
        Numerics::F32 => format!(
            "@group(0) @binding({binding}) var<storage, read> w: array<f32>;\n\
             fn load_w(base: u32, col: u32) -> f32 {{ return w[base + col]; }}\n"
        ),
        Numerics::F16W => format!(
            "@group(0) @binding({binding}) var<storage, read> w: array<u32>;\n\
             fn load_w(base: u32, col: u32) -> f32 {{ let p = unpack2x16float(w[base + col / 2u]); return select(p.x, p.y, (col & 1u) == 1u); }}\n"
        ),
    }
}

/// `a + b + …` as a balanced tree of WGSL additions (independent loads, short dependency chains) for the
/// generated straight-line kernel code.
pub(crate) fn wgsl_tree_sum(terms: &[String]) -> String {
    match terms.len() {
        0 => "0.0".into(),
        1 => terms[0].clone(),
        n => format!("({} + {})", wgsl_tree_sum(&terms[..n / 2]), wgsl_tree_sum(&terms[n / 2..])),
    }
}
