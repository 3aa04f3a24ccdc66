//! `shaders/embed.wgsl`: embedding gathers.
use crate::gpu::{Dispatch, Gpu, GpuBuffer};
use super::GpuMatrix;

/// out[i, :] = table[tokens[i], :] for i < n; tokens: u32 `[n]`; out: f32 `[n, table.cols]`.
pub fn embed_tokens(gpu: &Gpu, table: &GpuMatrix, tokens: &GpuBuffer, out: &GpuBuffer, n: u32) -> Dispatch {
    let _ = (gpu, table, tokens, out, n);
    todo!("embed_tokens")
}

/// Decoder input: out[r, :] = Σ_c table[c·vocab + tokens[(r % token_rows)·channels + c], :] for r < rows.
/// tokens: u32 `[token_rows, channels]`; several output rows may share one token row (both CFG rows of an
/// item read the same audio tokens: r % token_rows). out: f32 `[rows, table.cols]`.
pub fn embed_channels_sum(gpu: &Gpu, table: &GpuMatrix, tokens: &GpuBuffer, out: &GpuBuffer, rows: u32, token_rows: u32, channels: u32, vocab: u32) -> Dispatch {
    let _ = (gpu, table, tokens, out, rows, token_rows, channels, vocab);
    todo!("embed_channels_sum")
}
