//! `shaders/linear.wgsl`: y = x · Wᵀ for weights `[N = rows, K = cols]`, with fused epilogues.
//! Small M (decoder steps, M = 2·batch ≤ 16) uses a matrix–vector kernel that reads every weight
//! once for all M rows; larger M (encoder, prefill) a tiled matrix–matrix kernel.
use crate::gpu::{grid_1d, specialize, Dispatch, Gpu, GpuBuffer};
use super::GpuMatrix;

const SOURCE: &str = include_str!("../../../shaders/linear.wgsl");

/// Largest M served by the matrix–vector schedule (one pipeline per M up to here).
pub const SMALL_M_MAX: u32 = 16;
/// Partial sums a small-M workgroup may hold: 4096 f32 = 16 KiB of workgroup memory.
const SMALL_M_PARTIALS: u32 = 4096;
/// Output tile of the tiled schedule (x rows × weight rows), and its output columns under SwiGLU.
const TILE: u32 = 64;
const TILE_SWIGLU: u32 = 32;

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

impl LinearEpilogue {
    fn code(self) -> u32 {
        match self {
            LinearEpilogue::Store => 0,
            LinearEpilogue::Accumulate => 1,
            LinearEpilogue::SwiGlu => 2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            LinearEpilogue::Store => "store",
            LinearEpilogue::Accumulate => "acc",
            LinearEpilogue::SwiGlu => "swiglu",
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    stride: u32,
    out_cols: u32,
    groups: u32,
    tiles_n: u32,
    _pad: u32,
}

/// x: f32 `[m, w.cols]` (row stride w.cols); y as the epilogue says; x and y are distinct buffers.
/// Picks the matrix–vector schedule for m ≤ `SMALL_M_MAX`, the tiled one above.
pub fn linear(gpu: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, epilogue: LinearEpilogue) -> Dispatch {
    if m <= SMALL_M_MAX {
        linear_small_m(gpu, x, w, y, m, epilogue)
    } else {
        linear_tiled(gpu, x, w, y, m, epilogue)
    }
}

/// Shape of a small-M workgroup: `rows` weight rows (even, so SwiGLU pairs gate and up rows) read
/// by `threads` threads striding over K. Needs rows · M · threads ≤ 4096 (the partial sums in 16 KiB
/// of workgroup memory) and a power-of-two `threads` ≤ 256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmallMShape {
    pub rows: u32,
    pub threads: u32,
}

impl SmallMShape {
    /// The shape `linear` starts from (then `within_cols`): 4 rows (512 workgroups for N = 2048), as many threads along K as the
    /// partial sums leave room for (256 up to M = 4, 64 at M = 16).
    pub fn for_m(m: u32) -> SmallMShape {
        let rows = 4;
        let budget = SMALL_M_PARTIALS / (rows * m.max(1));
        let threads = [256, 128, 64, 32].into_iter().find(|&t| t <= budget).unwrap_or(32);
        SmallMShape { rows, threads }
    }

    /// This shape with at most as many threads as a row of `cols` columns has chunks (rounded up to a power
    /// of two, at least 16): surplus threads find no work but still pay for every reduction level — ruinously
    /// on software adapters (the tiny test model's logits head: 8.6 s → 45 ms on SwiftShader).
    pub fn within_cols(self, cols: u32) -> SmallMShape {
        let chunks = if cols.is_multiple_of(8) { cols / 8 } else { cols.div_ceil(2) };
        SmallMShape { threads: self.threads.min(chunks.next_power_of_two().max(16)), ..self }
    }

    /// Whether the shape fits the limits above for this M.
    pub fn fits(self, m: u32) -> bool {
        self.rows >= 2
            && self.rows.is_multiple_of(2)
            && self.threads.is_power_of_two()
            && self.threads <= 256
            && self.rows * m.max(1) * self.threads <= SMALL_M_PARTIALS
    }
}

/// The matrix–vector schedule (m ≤ `SMALL_M_MAX`), for tests and benchmarks; `linear` chooses it itself.
pub fn linear_small_m(gpu: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, epilogue: LinearEpilogue) -> Dispatch {
    linear_small_m_shaped(gpu, x, w, y, m, epilogue, SmallMShape::for_m(m).within_cols(w.cols))
}

/// The matrix–vector schedule with an explicit workgroup shape (benchmarks tune with this).
pub fn linear_small_m_shaped(gpu: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, epilogue: LinearEpilogue, shape: SmallMShape) -> Dispatch {
    assert!(m <= SMALL_M_MAX, "linear_small_m: m = {m} > {SMALL_M_MAX}");
    assert!(shape.fits(m), "linear_small_m: {shape:?} does not fit m = {m}");
    let out_cols = check_shapes(x, w, y, m, epilogue);
    // 16-byte loads need whole 8-column chunks (8 f16 or 2 × 4 f32) in every row of x and W.
    let access = if w.cols.is_multiple_of(8) { "vec8" } else { "pair" };
    // A pipeline per M keeps the accumulators in registers; m = 0 dispatches nothing.
    let m_spec = m.max(1);
    let SmallMShape { rows, threads } = shape;
    let key = format!("linear.small_m.{}.{access}.{}.m{m_spec}.r{rows}.t{threads}", w.numerics.name(), epilogue.name());
    let pipeline = gpu.pipeline(&key, "small_m", || {
        let src = format!(
            "{}{}{}",
            section("common"),
            section(&format!("access_{}_{access}", w.numerics.name())),
            section("small_m")
        );
        specialize(
            &src,
            &[
                ("EPILOGUE", epilogue.code().to_string()),
                ("M", m_spec.to_string()),
                ("THREADS", threads.to_string()),
                ("ROWS", rows.to_string()),
                ("RED", (threads * rows * m_spec).to_string()),
            ],
        )
    });
    let groups = match epilogue {
        LinearEpilogue::SwiGlu => out_cols.div_ceil(rows / 2),
        _ => w.rows.div_ceil(rows),
    };
    let groups = if m == 0 { 0 } else { groups };
    let params = Params {
        m,
        n: w.rows,
        k: w.cols,
        stride: w.row_stride_words(),
        out_cols,
        groups,
        tiles_n: 0,
        _pad: 0,
    };
    gpu.dispatch(&pipeline, &params, &[x, &w.data, y], grid_1d(groups))
}

/// The tiled matrix–matrix schedule (any m), for tests and benchmarks; `linear` chooses it itself.
pub fn linear_tiled(gpu: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, epilogue: LinearEpilogue) -> Dispatch {
    let out_cols = check_shapes(x, w, y, m, epilogue);
    let key = format!("linear.tiled.{}.{}", w.numerics.name(), epilogue.name());
    let pipeline = gpu.pipeline(&key, "tiled", || {
        let src = format!(
            "{}{}{}",
            section("common"),
            section(&format!("access_{}_pair", w.numerics.name())),
            section("tiled")
        );
        specialize(&src, &[("EPILOGUE", epilogue.code().to_string())])
    });
    let tiles_n = match epilogue {
        LinearEpilogue::SwiGlu => out_cols.div_ceil(TILE_SWIGLU),
        _ => w.rows.div_ceil(TILE),
    };
    let groups = tiles_n * m.div_ceil(TILE);
    let params = Params {
        m,
        n: w.rows,
        k: w.cols,
        stride: w.row_stride_words(),
        out_cols,
        groups,
        tiles_n,
        _pad: 0,
    };
    gpu.dispatch(&pipeline, &params, &[x, &w.data, y], grid_1d(groups))
}

/// Checks buffer sizes against the shapes; returns the number of output columns.
fn check_shapes(x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, epilogue: LinearEpilogue) -> u32 {
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
    let marker = format!("//== section: {name}\n");
    let start = SOURCE.find(&marker).unwrap_or_else(|| panic!("linear.wgsl has no section {name}")) + marker.len();
    let end = SOURCE[start..].find("//== section: ").map_or(SOURCE.len(), |e| start + e);
    &SOURCE[start..end]
}
