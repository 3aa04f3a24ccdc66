//! `shaders/attention.wgsl`: scaled-dot-product attention with scale 1.0 (Dia uses no 1/√d), GQA, masks,
//! never materialising the score matrix. Two schedules of the same function:
//! flash-style tiles of queries for the encoder and prefill, split-K over keys for single-query decode.
use crate::gpu::{Dispatch, Gpu, GpuBuffer};

/// Where queries, keys and values live and which keys each query sees.
///
/// Query row m (< rows), head h (< heads): q = q_buf[m·q_stride + q_col + h·head_dim ..][..head_dim].
/// qinfo u32 `[rows, 2]` = (seq, pos); seqs u32 `[n_seqs, 2]` = (kv_base_row, kv_len).
/// Key j of sequence s, kv head g: k = k_buf[(kv_base_row + j)·kv_stride + k_col + g·head_dim ..],
/// v likewise with v_buf / v_col. Query head h reads kv head h / (heads / kv_heads).
/// Visible keys: j < kv_len, and if `causal` also j ≤ pos.
/// Output: out[m·heads·head_dim + h·head_dim + d] (row stride heads·head_dim).
pub struct AttentionArgs<'a> {
    pub q_buf: &'a GpuBuffer,
    pub q_stride: u32,
    pub q_col: u32,
    pub k_buf: &'a GpuBuffer,
    pub v_buf: &'a GpuBuffer,
    pub kv_stride: u32,
    pub k_col: u32,
    pub v_col: u32,
    pub qinfo: &'a GpuBuffer,
    pub seqs: &'a GpuBuffer,
    pub out: &'a GpuBuffer,
    pub rows: u32,
    pub heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub causal: bool,
    /// Upper bound on any kv_len / pos+1 this dispatch will ever see (sizes split-K scratch).
    pub max_keys: u32,
}

/// Flash-style: for many query rows at once (encoder, prefill). May return several dispatches.
pub fn attention_prefill(gpu: &Gpu, a: &AttentionArgs) -> Vec<Dispatch> {
    let _ = (gpu, a);
    todo!("flash attention")
}

/// Split over keys: for few query rows with many keys (decoder steps). May return several dispatches
/// (partials + combine); scratch buffers are allocated here, once.
pub fn attention_decode(gpu: &Gpu, a: &AttentionArgs) -> Vec<Dispatch> {
    let _ = (gpu, a);
    todo!("split-K decode attention")
}
