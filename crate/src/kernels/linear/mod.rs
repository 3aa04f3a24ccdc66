//! The linear family: y = x · Wᵀ for weights `[N = rows, K = cols]` (`GpuMatrix`, any `WeightFormat`), with fused
//! epilogues. This module is the family's one policy: the shape checks and the choice of implementation
//! (`Schedule`); each implementation lives in its own file with its typed variant (the WGSL generator's input and
//! the pipeline-cache key):
//! - `small_m`: matrix–vector, every weight read once for all M ≤ 16 rows (decoder steps, M = 2·batch);
//! - `tiled`: matrix–matrix through workgroup memory (encoder, prefill), any adapter;
//! - `coop`: matrix–matrix on tensor cores (native devices with cooperative matrices, f16 and quantized weights),
//!   from `coop_m_min` rows on (16 quantized, 17 f16): quantized decoder steps of batch 8, the encoder and prefill.
//!
//! `small_m` and `tiled` are assembled from the sections of `shaders/linear.wgsl`, `coop` from
//! `shaders/linear_coop.wgsl`.
pub mod coop;
pub mod small_m;
pub mod tiled;

pub use coop::{coop_format, coop_m_min, coop_supported, linear_coop, linear_coop_shaped, CoopAccess, CoopShape, CoopVariant, COOP_M_MIN};
pub use small_m::{linear_attention_o, ATTENTION_O_SHAPE, linear_small_m, linear_small_m_shaped, linear_small_m_tuned, norm_linear_small_m_shaped, small_m_access, Arith, ProbedSmallMVariant, SmallMAccess, SmallMProbe, SmallMShape, SmallMTuning, SmallMVariant};
pub use tiled::{linear_tiled, linear_tiled_shaped, TiledAccess, TiledShape, TiledVariant};

use crate::gpu::{Dispatch, Gpu, GpuBuffer};
use super::norm::rmsnorm;
use super::{GpuMatrix, WeightFormat};
use small_m::small_m_dispatch;

const SOURCE: &str = include_str!("../../../../shaders/linear.wgsl");

/// Largest M served by the matrix–vector schedule (one pipeline per M up to here).
pub const SMALL_M_MAX: u32 = 16;

/// Largest M that `linear_rows` serves with matrix–vector passes over blocks of `SMALL_M_MAX` rows (the weights
/// are read once per block); above it the tiled kernel. From `bench_linear --crossover` on the H100 with the
/// straight-line tiled kernel (f16w and f32 alike): the tiled kernel wins from M = 64 on every encoder shape (M = 101:
/// 0.047 vs 0.098 ms for 3072×1024, 0.080 vs 0.242 ms for the 8192-row SwiGLU, 0.070 vs 0.141 ms for 1024×4096); at
/// M = 32 it wins the sum of the three (0.126 vs 0.166 ms) while the blocks still win the K = 4096 product.
pub const BLOCKED_M_MAX: u32 = 32;

/// What the kernel does with each output value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinearEpilogue {
    /// y[m, n] = Σ_k x[m, k]·W[n, k]; y is `[M, N]`.
    Store,
    /// y[m, n] += Σ_k x[m, k]·W[n, k] (residual add fused into the producer); y is `[M, N]`.
    Accumulate,
    /// W has 2·I rows (gate rows 0..I, up rows I..2I): y[m, j] = silu(gate_j)·up_j; y is `[M, I]`.
    SwiGlu,
}

impl LinearEpilogue {
    /// The shaders' `EPILOGUE` constant.
    fn code(self) -> u32 {
        match self {
            LinearEpilogue::Store => 0,
            LinearEpilogue::Accumulate => 1,
            LinearEpilogue::SwiGlu => 2,
        }
    }
}

wgsl_params! {
    /// Uniform parameters of the `small_m` and `tiled` kernels.
    pub(crate) struct Params {
        /// rows of x and y
        m: u32,
        /// rows of W
        n: u32,
        /// columns of x and W
        k: u32,
        /// words between W rows
        stride: u32,
        /// columns of y: n, or n / 2 for SwiGLU
        out_cols: u32,
        /// workgroups with work (the grid may hold a few more)
        groups: u32,
        /// tiled kernel: tiles along the output columns
        tiles_n: u32,
        /// small-M kernel with fused RMSNorm
        eps: f32,
    }
}

/// Which implementation computes an M-row product (`linear_rows`' choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Tensor cores: M ≥ `coop_m_min` (16 quantized, 17 f16) with f16 or quantized weights on a device with cooperative matrices
    /// (encoder, prefill, decoder steps of 16 rows).
    TensorCores,
    /// One matrix–vector pass: M ≤ `SMALL_M_MAX`.
    SmallM,
    /// Matrix–vector passes over blocks of `SMALL_M_MAX` rows: M ≤ `BLOCKED_M_MAX` with x and y blocks bindable at
    /// the adapter's storage offset alignment.
    RowBlocks,
    /// The tiled matrix–matrix kernel: everything else.
    Tiled,
}

/// The implementation `linear_rows` uses for these operands (after checking their shapes).
pub fn schedule(gpu: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, epilogue: LinearEpilogue) -> Schedule {
    let out_cols = check_shapes(x, w, y, m, epilogue);
    // Below `coop_m_min` rows the matrix–vector kernel beats the tensor cores (H100, `bench_linear --decoder`:
    // docs/performance.md "Batches on the matrix–vector kernel"); from there, they win.
    if m >= gpu.coop_m_min().unwrap_or(coop_m_min(w.format)) && coop_supported(gpu, w) {
        Schedule::TensorCores
    } else if m <= SMALL_M_MAX {
        Schedule::SmallM
    } else if m <= BLOCKED_M_MAX && row_blocks_aligned(gpu, x, w, y, out_cols) {
        Schedule::RowBlocks
    } else {
        Schedule::Tiled
    }
}

/// The arithmetic of the matrix–vector kernel for weights stored in `format` on this device (the one place that
/// decides it): for quantized weights integer dot products on int8-quantized x (`Arith::Int8Dot`) where on
/// (`Gpu::int8_dot`), else f16 products (`Arith::F16`) where asked for and allowed (`Gpu::f16_matvec`: opt-in, `shader-f16`)
/// and the weights are f16 or quantized (numerics f16w, q8, q4, natively and in the browser); f32 weights
/// (numerics f32, the parity mode) always multiply in f32.
pub fn small_m_arith(gpu: &Gpu, format: WeightFormat) -> Arith {
    match format {
        WeightFormat::Quant(_) if gpu.int8_dot() => Arith::Int8Dot,
        WeightFormat::F16 | WeightFormat::Quant(_) if gpu.f16_matvec() => Arith::F16,
        _ => Arith::F32,
    }
}

/// x: f32 `[m, w.cols]` (row stride w.cols); y as the epilogue says; x and y are distinct buffers.
/// One dispatch on any adapter: the matrix–vector schedule for m ≤ `SMALL_M_MAX`, the tiled one above.
pub fn linear(gpu: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, epilogue: LinearEpilogue) -> Dispatch {
    if m <= SMALL_M_MAX {
        linear_small_m(gpu, x, w, y, m, epilogue)
    } else {
        linear_tiled(gpu, x, w, y, m, epilogue)
    }
}

/// `linear` for any M as a list of dispatches, by `schedule`: tensor cores where they serve, else for
/// M ≤ `BLOCKED_M_MAX` matrix–vector passes (over blocks of 16 rows above `SMALL_M_MAX`: one dispatch for every
/// whole block, the grid's z picking the block, and one for the rest), else the tiled kernel.
pub fn linear_rows(gpu: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, epilogue: LinearEpilogue) -> Vec<Dispatch> {
    linear_scheduled(gpu, x, w, y, m, epilogue, schedule(gpu, x, w, y, m, epilogue))
}

/// `linear_rows` on the implementation `path` rather than `schedule`'s choice (benchmarks force one path to
/// compare them). Panics where `path` cannot serve: `SmallM` above `SMALL_M_MAX`, `TensorCores` without
/// `coop_supported`, `RowBlocks` on blocks the adapter cannot bind.
pub fn linear_scheduled(gpu: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, epilogue: LinearEpilogue, path: Schedule) -> Vec<Dispatch> {
    match path {
        Schedule::TensorCores => vec![linear_coop(gpu, x, w, y, m, epilogue)],
        Schedule::SmallM => vec![linear_small_m(gpu, x, w, y, m, epilogue)],
        Schedule::RowBlocks => linear_row_blocks(gpu, x, w, y, m, epilogue).expect("linear_scheduled: row blocks not bindable at this alignment"),
        Schedule::Tiled => vec![linear_tiled(gpu, x, w, y, m, epilogue)],
    }
}

/// Matrix–vector passes over blocks of `SMALL_M_MAX` rows for any M (what `linear_rows` does up to
/// `BLOCKED_M_MAX`; benchmarks compare it with the tiled kernel above), or None when the blocks of x or y cannot be
/// bound at the adapter's storage offset alignment.
pub fn linear_row_blocks(gpu: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, epilogue: LinearEpilogue) -> Option<Vec<Dispatch>> {
    if m <= SMALL_M_MAX {
        return Some(vec![linear_small_m(gpu, x, w, y, m, epilogue)]);
    }
    let out_cols = check_shapes(x, w, y, m, epilogue);
    row_blocks_aligned(gpu, x, w, y, out_cols).then(|| row_blocks(gpu, x, w, y, m, epilogue))
}

/// Whether 16-row blocks of x and y start at offsets the adapter can bind.
fn row_blocks_aligned(gpu: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, out_cols: u32) -> bool {
    let align = gpu.device.limits().min_storage_buffer_offset_alignment as u64;
    let x_block = SMALL_M_MAX as u64 * w.cols as u64 * 4;
    let y_block = SMALL_M_MAX as u64 * out_cols as u64 * 4;
    x_block.is_multiple_of(align) && y_block.is_multiple_of(align) && x.offset.is_multiple_of(align) && y.offset.is_multiple_of(align)
}

/// The row-block passes for M > `SMALL_M_MAX` (blocks already known to be aligned).
fn row_blocks(gpu: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, epilogue: LinearEpilogue) -> Vec<Dispatch> {
    let out_cols = check_shapes(x, w, y, m, epilogue);
    let x_block = SMALL_M_MAX as u64 * w.cols as u64 * 4;
    let y_block = SMALL_M_MAX as u64 * out_cols as u64 * 4;
    let (whole, rest) = (m / SMALL_M_MAX, m % SMALL_M_MAX);
    let shape = SmallMShape::for_matrix(gpu, w, SMALL_M_MAX);
    let mut ds = vec![small_m_dispatch(gpu, x, w, y, SMALL_M_MAX, epilogue, shape, None, whole)];
    if rest > 0 {
        let xs = x.slice(whole as u64 * x_block, rest as u64 * w.cols as u64 * 4);
        let ys = y.slice(whole as u64 * y_block, rest as u64 * out_cols as u64 * 4);
        ds.push(linear_small_m(gpu, &xs, w, &ys, rest, epilogue));
    }
    ds
}

/// y = rmsnorm(x; gain, eps) · Wᵀ with the epilogue: one fused matrix–vector dispatch where `schedule` picks the
/// matrix–vector kernel, else (tensor cores, or m > `SMALL_M_MAX`) RMSNorm into `scratch` (f32 `[m, w.cols]`)
/// and `linear_rows`.
#[allow(clippy::too_many_arguments)]
pub fn norm_linear(gpu: &Gpu, x: &GpuBuffer, gain: &GpuBuffer, eps: f32, w: &GpuMatrix, y: &GpuBuffer, m: u32, epilogue: LinearEpilogue, scratch: &GpuBuffer) -> Vec<Dispatch> {
    norm_linear_scheduled(gpu, x, gain, eps, w, y, m, epilogue, scratch, norm_linear_schedule(gpu, x, w, y, m, epilogue))
}

/// The implementation `norm_linear` uses: `schedule`'s, except that with `Gpu::coop_norm_linear` off a product the
/// tensor cores would take stays on the matrix–vector kernel (its norm fused, one dispatch) up to `SMALL_M_MAX` rows.
pub fn norm_linear_schedule(gpu: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, epilogue: LinearEpilogue) -> Schedule {
    match schedule(gpu, x, w, y, m, epilogue) {
        Schedule::TensorCores if m <= SMALL_M_MAX && !gpu.coop_norm_linear() => Schedule::SmallM,
        s => s,
    }
}

/// `norm_linear` on the implementation `path` (as `linear_scheduled`): `SmallM` fuses the norm into its one
/// dispatch, every other path normalizes into `scratch` first.
#[allow(clippy::too_many_arguments)]
pub fn norm_linear_scheduled(
    gpu: &Gpu,
    x: &GpuBuffer,
    gain: &GpuBuffer,
    eps: f32,
    w: &GpuMatrix,
    y: &GpuBuffer,
    m: u32,
    epilogue: LinearEpilogue,
    scratch: &GpuBuffer,
    path: Schedule,
) -> Vec<Dispatch> {
    assert!(gain.size >= w.cols as u64 * 4, "norm_linear: gain holds fewer than {} f32", w.cols);
    if path == Schedule::SmallM {
        let shape = SmallMShape::for_matrix(gpu, w, m);
        vec![small_m_dispatch(gpu, x, w, y, m, epilogue, shape, Some((gain, eps)), 1)]
    } else {
        let mut ds = vec![rmsnorm(gpu, x, gain, scratch, m, w.cols, eps)];
        ds.extend(linear_scheduled(gpu, scratch, w, y, m, epilogue, path));
        ds
    }
}


/// Checks buffer sizes against the shapes; returns the number of output columns.
pub(crate) fn check_shapes(x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, epilogue: LinearEpilogue) -> u32 {
    assert!(w.rows > 0 && w.cols > 0, "linear: empty weight matrix");
    let out_cols = match epilogue {
        LinearEpilogue::SwiGlu => {
            assert!(w.rows.is_multiple_of(2), "linear SwiGLU: weight rows {} not even", w.rows);
            w.rows / 2
        }
        _ => w.rows,
    };
    assert!(x.size >= m as u64 * w.cols as u64 * 4, "linear: x holds fewer than {m} × {} f32", w.cols);
    assert!(y.size >= m as u64 * out_cols as u64 * 4, "linear: y holds fewer than {m} × {out_cols} f32");
    let words = w.rows as u64 * w.row_stride_words() as u64;
    assert!(w.data.size >= words * 4, "linear: weight buffer smaller than its shape");
    out_cols
}

/// The text of one `//== section: <name>` of `shaders/linear.wgsl` (up to the next section).
fn section(name: &str) -> &'static str {
    crate::kernels::wgsl::section(SOURCE, "linear.wgsl", name)
}
