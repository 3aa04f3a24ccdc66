//! `shaders/linear.wgsl`: y = x · Wᵀ for weights `[N = rows, K = cols]`, with fused epilogues.
//! Small M (decoder steps, M = 2·batch ≤ 16) uses a matrix–vector kernel that reads every weight
//! once for all M rows; larger M (encoder, prefill) a tiled matrix–matrix kernel.
use crate::gpu::{Dispatch, Gpu, GpuBuffer};
use super::GpuMatrix;

/// What the kernel does with each output value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearEpilogue {
    /// y[m, n] = Σ_k x[m, k]·W[n, k]; y is `[M, N]`.
    Store,
    /// y[m, n] += Σ_k x[m, k]·W[n, k] (residual add fused into the producer); y is `[M, N]`.
    Accumulate,
    /// W has 2·I rows (gate rows 0..I, up rows I..2I): y[m, j] = silu(gate_j)·up_j; y is `[M, I]`.
    SwiGlu,
}

/// x: f32 `[m, w.cols]` (row stride w.cols); y as the epilogue says.
pub fn linear(gpu: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, epilogue: LinearEpilogue) -> Dispatch {
    let _ = (gpu, x, w, y, m, epilogue);
    todo!("linear kernel")
}
