//! One Rust wrapper per WGSL kernel family (`shaders/<family>.wgsl`): shapes in, `Dispatch` out.
//!
//! Conventions shared by every family:
//! - activations are f32 storage buffers, row-major;
//! - weights are `GpuMatrix` in one of the `WeightFormat`s, `[rows = out, cols = in]`;
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
pub mod cross_tables;
pub mod sampling;
pub mod conv;
pub mod plan;
pub mod dac_rvq;
#[doc(hidden)]
pub mod catalog;

use crate::gpu::{Gpu, GpuBuffer, GpuError};
use crate::quant::{QuantError, QuantFormat};

/// How a model's weights are stored on the GPU (arithmetic is f32 in every mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Numerics {
    /// f32 weights: parity mode.
    F32,
    /// f16 weights packed two per u32 (low half = even column), unpacked with `unpack2x16float`.
    F16W,
    /// Dia's projection matrices (attention, MLP, logits head) block-quantized to 8 bits (`QuantFormat::Q8`);
    /// embedding tables f16, norms f32; the codec runs as `F16W`.
    Q8,
    /// As `Q8` with the MLP, logits-head and cross-attention K/V matrices at 4 bits (`QuantFormat::Q4`); the other
    /// attention projections and the embedding tables stay at q8 (`dia::MatrixRole::format` says why).
    Q4,
}

impl Numerics {
    pub fn name(self) -> &'static str {
        match self {
            Numerics::F32 => "f32",
            Numerics::F16W => "f16w",
            Numerics::Q8 => "q8",
            Numerics::Q4 => "q4",
        }
    }

    pub fn parse(s: &str) -> Option<Numerics> {
        match s {
            "f32" => Some(Numerics::F32),
            "f16w" => Some(Numerics::F16W),
            "q8" => Some(Numerics::Q8),
            "q4" => Some(Numerics::Q4),
            _ => None,
        }
    }

    /// How the model's weight matrices are stored in this mode (`dia::MatrixRole::format` refines it per matrix).
    pub fn weight_format(self) -> WeightFormat {
        match self {
            Numerics::F32 => WeightFormat::F32,
            Numerics::F16W => WeightFormat::F16,
            Numerics::Q8 => WeightFormat::Quant(QuantFormat::Q8),
            Numerics::Q4 => WeightFormat::Quant(QuantFormat::Q4),
        }
    }

    /// The mode the codec runs in: the DAC has no quantized path, so `Q8` and `Q4` run it as `F16W`.
    pub fn codec(self) -> Numerics {
        match self {
            Numerics::Q8 | Numerics::Q4 => Numerics::F16W,
            n => n,
        }
    }
}

/// `"f32"`, `"f16w"`, `"q8"` or `"q4"` (`Numerics::name`): what every front end parses (clap takes it as is).
impl std::str::FromStr for Numerics {
    type Err = String;

    fn from_str(s: &str) -> Result<Numerics, String> {
        Numerics::parse(s).ok_or_else(|| format!("unknown numerics {s:?}: use f32, f16w, q8 or q4"))
    }
}

impl std::fmt::Display for Numerics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl From<Numerics> for WeightFormat {
    fn from(n: Numerics) -> WeightFormat {
        n.weight_format()
    }
}

/// How a `GpuMatrix` stores its values: part of every weight-reading kernel variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// f32 values, one per word.
    F32,
    /// f16 values, two per word (low half = even column); rows of odd length end with a zero half.
    F16,
    /// Block-quantized values with f16 scales (`crate::quant` defines the format and the row layout).
    Quant(QuantFormat),
}

impl WeightFormat {
    /// The name in kernel source sections (`access_<name>_…`).
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::F16 => "f16w",
            WeightFormat::Quant(q) => q.name(),
        }
    }

    /// Words between the rows of a matrix of `cols` columns.
    pub fn row_words(self, cols: u32) -> u32 {
        match self {
            WeightFormat::F32 => cols,
            WeightFormat::F16 => cols.div_ceil(2),
            WeightFormat::Quant(q) => q.row_words(cols),
        }
    }

    /// Row-major f32 `data` of `[rows, cols]` in this format, `rows × row_words(cols)` words.
    pub fn encode_rows(self, data: &[f32], rows: usize, cols: usize) -> Result<Vec<u32>, QuantError> {
        Ok(match self {
            WeightFormat::F32 => bytemuck::cast_slice(data).to_vec(),
            WeightFormat::F16 => pack_f16_rows(data, rows, cols),
            WeightFormat::Quant(q) => crate::quant::quantize_gpu_rows(data, rows, cols, q)?,
        })
    }
}

/// A weight matrix `[rows, cols]` on the GPU. Row `r` starts at word `r * row_stride_words()`.
/// In `F16` a row with an odd number of columns is padded with one zero half.
pub struct GpuMatrix {
    pub data: GpuBuffer,
    pub rows: u32,
    pub cols: u32,
    pub format: WeightFormat,
}

impl GpuMatrix {
    /// Row stride in 32-bit words (f32 elements for `F32`, packed pairs for `F16`, see `quant` for the others).
    pub fn row_stride_words(&self) -> u32 {
        self.format.row_words(self.cols)
    }

    /// A matrix of zeros (words) to be filled later, checked against the device's largest binding.
    pub fn empty(gpu: &Gpu, label: &str, rows: usize, cols: usize, format: impl Into<WeightFormat>) -> Result<GpuMatrix, GpuError> {
        let format = format.into();
        let bytes = rows as u64 * format.row_words(cols as u32) as u64 * 4;
        check_binding(gpu, bytes)?;
        Ok(GpuMatrix { data: gpu.buffer(label, bytes), rows: rows as u32, cols: cols as u32, format })
    }

    /// Writes row-major f32 `data` of `[rows, cols]` into rows `row0..row0 + rows`, converted to the storage format
    /// (ordered before the next submit).
    pub fn write_rows(&self, gpu: &Gpu, row0: usize, data: &[f32], rows: usize) -> Result<(), QuantError> {
        let cols = self.cols as usize;
        assert_eq!(data.len(), rows * cols, "matrix rows length");
        assert!(row0 + rows <= self.rows as usize, "matrix rows out of range");
        let offset = self.data.offset + row0 as u64 * self.row_stride_words() as u64 * 4;
        match self.format {
            WeightFormat::F32 => gpu.queue.write_buffer(&self.data.buf, offset, bytemuck::cast_slice(data)),
            format => gpu.queue.write_buffer(&self.data.buf, offset, bytemuck::cast_slice(&format.encode_rows(data, rows, cols)?)),
        }
        Ok(())
    }

    /// Writes `rows` rows already in this matrix's storage layout (`row_stride_words()` words each) at `row0`.
    pub fn write_gpu_rows(&self, gpu: &Gpu, row0: usize, words: &[u32], rows: usize) {
        assert_eq!(words.len(), rows * self.row_stride_words() as usize, "matrix rows length");
        assert!(row0 + rows <= self.rows as usize, "matrix rows out of range");
        let offset = self.data.offset + row0 as u64 * self.row_stride_words() as u64 * 4;
        gpu.queue.write_buffer(&self.data.buf, offset, bytemuck::cast_slice(words));
    }

    /// Converts row-major f32 `data` to the storage format and uploads it.
    pub fn upload(gpu: &Gpu, label: &str, data: &[f32], rows: usize, cols: usize, format: impl Into<WeightFormat>) -> Result<GpuMatrix, GpuError> {
        let format = format.into();
        assert_eq!(data.len(), rows * cols, "matrix data length");
        check_binding(gpu, rows as u64 * format.row_words(cols as u32) as u64 * 4)?;
        let words = format.encode_rows(data, rows, cols)?;
        Ok(GpuMatrix { data: gpu.upload(label, &words), rows: rows as u32, cols: cols as u32, format })
    }
}

/// An error unless `bytes` fit one storage binding of the device.
fn check_binding(gpu: &Gpu, bytes: u64) -> Result<(), GpuError> {
    if bytes > gpu.limits.max_storage_buffer_binding_size {
        return Err(GpuError::LimitTooSmall {
            adapter: gpu.info.name.clone(),
            limit: "max_storage_buffer_binding_size",
            available: gpu.limits.max_storage_buffer_binding_size,
            required: bytes,
        });
    }
    Ok(())
}

/// Words between the rows of a `cols`-column matrix stored in `format`.
pub fn stride_words(cols: u32, format: impl Into<WeightFormat>) -> u32 {
    format.into().row_words(cols)
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

/// WGSL snippet defining the weight array at `binding` and `fn load_w(row_word_base: u32, col: u32) -> f32`, for
/// f32 and f16 matrices (lookup tables and the codec's weights, which are never quantized). Kernels that want wide
/// loads may instead branch on the format and write their own access code.
pub fn weight_decl(format: WeightFormat, binding: u32) -> String {
    match format {
        WeightFormat::F32 => format!(
            "@group(0) @binding({binding}) var<storage, read> w: array<f32>;\n\
             fn load_w(base: u32, col: u32) -> f32 {{ return w[base + col]; }}\n"
        ),
        WeightFormat::F16 => format!(
            "@group(0) @binding({binding}) var<storage, read> w: array<u32>;\n\
             fn load_w(base: u32, col: u32) -> f32 {{ let p = unpack2x16float(w[base + col / 2u]); return select(p.x, p.y, (col & 1u) == 1u); }}\n"
        ),
        WeightFormat::Quant(q) => panic!("weight_decl: {} matrices are read by the linear kernels only", q.name()),
    }
}
