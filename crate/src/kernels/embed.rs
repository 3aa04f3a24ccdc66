//! `shaders/embed.wgsl`: embedding gathers. A token outside the table contributes zeros.
//! Tables are f32, f16 or block-quantized (`crate::quant`): a quantized value is `q · scale` exactly as the CPU's
//! `QuantizedRows::dequantize` computes it (one f32 product of two exactly representable factors).
use crate::gpu::{grid_1d, specialize, Dispatch, Gpu, GpuBuffer, KernelVariant};
use crate::quant::{QuantBits, QuantFormat};
use super::{weight_decl, GpuMatrix, WeightFormat};

const SOURCE: &str = include_str!("../../../shaders/embed.wgsl");
const THREADS: u64 = 256;

wgsl_params! {
    /// Uniform parameters of the embedding gathers.
    struct Params {
        n: u32,
        cols: u32,
        stride: u32,
        table_rows: u32,
        token_rows: u32,
        channels: u32,
        vocab: u32,
        _pad: u32,
    }
}

/// out[i, :] = table[tokens[i], :] for i < n; tokens: u32 `[n]`; out: f32 `[n, table.cols]`.
pub fn embed_tokens(gpu: &Gpu, table: &GpuMatrix, tokens: &GpuBuffer, out: &GpuBuffer, n: u32) -> Dispatch {
    assert!(tokens.size >= n as u64 * 4, "embed_tokens: fewer than {n} tokens");
    let params = Params {
        n,
        cols: table.cols,
        stride: table.row_stride_words(),
        table_rows: table.rows,
        token_rows: 0,
        channels: 0,
        vocab: 0,
        _pad: 0,
    };
    gather(gpu, EmbedEntry::Tokens, table, tokens, out, params)
}

/// Decoder input: out[r, :] = Σ_c table[c·vocab + tokens[(r % token_rows)·channels + c], :] for r < rows.
/// tokens: u32 `[token_rows, channels]`; several output rows may share one token row (both CFG rows of an
/// item read the same audio tokens: r % token_rows). out: f32 `[rows, table.cols]`.
/// The sum runs in channel order 0..channels in f32.
#[allow(clippy::too_many_arguments)]
pub fn embed_channels_sum(gpu: &Gpu, table: &GpuMatrix, tokens: &GpuBuffer, out: &GpuBuffer, rows: u32, token_rows: u32, channels: u32, vocab: u32) -> Dispatch {
    assert!(token_rows > 0 || rows == 0, "embed_channels_sum: token_rows = 0");
    assert!(tokens.size >= token_rows as u64 * channels as u64 * 4, "embed_channels_sum: fewer than {token_rows} × {channels} tokens");
    let params = Params {
        n: rows,
        cols: table.cols,
        stride: table.row_stride_words(),
        table_rows: table.rows,
        token_rows,
        channels,
        vocab,
        _pad: 0,
    };
    gather(gpu, EmbedEntry::ChannelsSum, table, tokens, out, params)
}

/// The gathers' entry points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EmbedEntry {
    /// One table row per token (`embed_tokens`).
    Tokens,
    /// One row per channel, summed (`embed_channels_sum`).
    ChannelsSum,
}

/// One compiled specialisation of the gathers: the WGSL generator's input and the pipeline-cache key. A quantized
/// row's scales follow its value words, whose count depends on the table's width, hence `cols`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EmbedVariant {
    pub entry: EmbedEntry,
    pub format: WeightFormat,
    pub cols: u32,
}

impl KernelVariant for EmbedVariant {
    fn entry_point(&self) -> &'static str {
        match self.entry {
            EmbedEntry::Tokens => "embed_tokens",
            EmbedEntry::ChannelsSum => "embed_channels_sum",
        }
    }

    fn source(&self) -> String {
        specialize(SOURCE, &[("PARAMS", Params::wgsl()), ("WEIGHTS", table_decl(self.format, self.cols))])
    }
}

fn gather(gpu: &Gpu, entry: EmbedEntry, table: &GpuMatrix, tokens: &GpuBuffer, out: &GpuBuffer, params: Params) -> Dispatch {
    let variant = EmbedVariant { entry, format: table.format, cols: table.cols };
    let elements = params.n as u64 * params.cols as u64;
    let name = variant.entry_point();
    assert!(out.size >= elements * 4, "{name}: out holds fewer than {} × {} f32", params.n, params.cols);
    assert!(elements <= u32::MAX as u64, "{name}: output too large for 32-bit indexing");
    let pipeline = gpu.variant_pipeline(variant);
    gpu.dispatch(&pipeline, &params, &[tokens, &table.data, out], grid_1d(elements.div_ceil(THREADS) as u32))
}

/// The table's binding and `load_w(row_start_word, col) -> f32`.
fn table_decl(format: WeightFormat, cols: u32) -> String {
    match format {
        WeightFormat::Quant(q) => quant_table_decl(q, cols),
        f => weight_decl(f, 2),
    }
}

/// `load_w` for a quantized table (row layout in `crate::quant`): field `col % per_word` of value word
/// `col / per_word` holds `q + half` (offset binary); the group's f16 scale sits in the scale words after the row's
/// `value_words`, even groups in the low half.
fn quant_table_decl(q: QuantFormat, cols: u32) -> String {
    let bits = q.bit_width();
    let mask = match q.bits() {
        QuantBits::Q8 => "0xffu",
        QuantBits::Q4 => "0xfu",
    };
    format!(
        "@group(0) @binding(2) var<storage, read> w: array<u32>;\n\
         fn load_w(base: u32, col: u32) -> f32 {{\n\
         \x20   let u = (w[base + col / {per}u] >> ((col % {per}u) * {bits}u)) & {mask};\n\
         \x20   let g = col / {group}u;\n\
         \x20   let s = unpack2x16float(w[base + {value_words}u + g / 2u]);\n\
         \x20   return f32(i32(u) - {half}) * select(s.x, s.y, (g & 1u) == 1u);\n\
         }}\n",
        per = q.per_word(),
        group = q.group(),
        value_words = q.value_words(cols),
        half = q.half_range(),
    )
}
