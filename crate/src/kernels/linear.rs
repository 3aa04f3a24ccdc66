//! `shaders/linear.wgsl`: y = x · Wᵀ for weights `[N = rows, K = cols]`, with fused epilogues.
//! Small M (decoder steps, M = 2·batch ≤ 16) uses a matrix–vector kernel that reads every weight
//! once for all M rows; larger M (encoder, prefill) a tiled matrix–matrix kernel.
use crate::gpu::{grid_1d, specialize, Dispatch, Gpu, GpuBuffer};
use super::norm::rmsnorm;
use super::{GpuMatrix, Numerics};

const SOURCE: &str = include_str!("../../../shaders/linear.wgsl");

/// Largest M served by the matrix–vector schedule (one pipeline per M up to here).
pub const SMALL_M_MAX: u32 = 16;
/// Partial sums a small-M workgroup may hold: 4096 f32 = 16 KiB of workgroup memory.
const SMALL_M_PARTIALS: u32 = 4096;
/// Workgroups the tiled schedule aims for when choosing its tile: about 2 per SM on an H100 (132 SMs), so that
/// every SM has work and a second workgroup to switch to at barriers.
const TILED_MIN_GROUPS: u32 = 256;

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
    eps: f32,
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

/// Largest M that `linear_rows` serves with matrix–vector passes over blocks of `SMALL_M_MAX` rows (the weights
/// are read once per block); above it the tiled kernel. From `bench_linear --crossover` on the H100 with the
/// straight-line tiled kernel (f16w and f32 alike): the tiled kernel wins from M = 64 on every encoder shape (M = 101:
/// 0.047 vs 0.098 ms for 3072×1024, 0.080 vs 0.242 ms for the 8192-row SwiGLU, 0.070 vs 0.141 ms for 1024×4096); at
/// M = 32 it wins the sum of the three (0.126 vs 0.166 ms) while the blocks still win the K = 4096 product.
pub const BLOCKED_M_MAX: u32 = 32;

/// `linear` for any M as a list of dispatches: for M ≤ `BLOCKED_M_MAX` (when row blocks can be bound at aligned
/// offsets) matrix–vector passes over blocks of 16 rows — one dispatch for every whole block (the grid's z picks
/// the block) and one for the rest — else the single dispatch `linear` picks.
pub fn linear_rows(gpu: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, epilogue: LinearEpilogue) -> Vec<Dispatch> {
    // Tensor cores (native, f16 weights) for the encoder and the prefill.
    if m >= super::linear_coop::COOP_M_MIN && super::linear_coop::coop_supported(gpu, w) {
        check_shapes(x, w, y, m, epilogue);
        return vec![super::linear_coop::linear_coop(gpu, x, w, y, m, epilogue)];
    }
    if m <= SMALL_M_MAX || m > BLOCKED_M_MAX {
        return vec![linear(gpu, x, w, y, m, epilogue)];
    }
    linear_row_blocks(gpu, x, w, y, m, epilogue).unwrap_or_else(|| vec![linear(gpu, x, w, y, m, epilogue)])
}

/// Matrix–vector passes over blocks of `SMALL_M_MAX` rows for any M (what `linear_rows` does up to
/// `BLOCKED_M_MAX`; benchmarks compare it with the tiled kernel above), or None when the blocks of x or y cannot be
/// bound at the adapter's storage offset alignment.
pub fn linear_row_blocks(gpu: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, epilogue: LinearEpilogue) -> Option<Vec<Dispatch>> {
    if m <= SMALL_M_MAX {
        return Some(vec![linear_small_m(gpu, x, w, y, m, epilogue)]);
    }
    let out_cols = check_shapes(x, w, y, m, epilogue);
    let align = gpu.device.limits().min_storage_buffer_offset_alignment as u64;
    let x_block = SMALL_M_MAX as u64 * w.cols as u64 * 4;
    let y_block = SMALL_M_MAX as u64 * out_cols as u64 * 4;
    let aligned = x_block.is_multiple_of(align) && y_block.is_multiple_of(align) && x.offset.is_multiple_of(align) && y.offset.is_multiple_of(align);
    if !aligned {
        return None;
    }
    let (whole, rest) = (m / SMALL_M_MAX, m % SMALL_M_MAX);
    let shape = SmallMShape::for_shape(SMALL_M_MAX, w.rows, w.cols);
    let mut ds = vec![small_m_dispatch(gpu, x, w, y, SMALL_M_MAX, epilogue, shape, None, whole)];
    if rest > 0 {
        let xs = x.slice(whole as u64 * x_block, rest as u64 * w.cols as u64 * 4);
        let ys = y.slice(whole as u64 * y_block, rest as u64 * out_cols as u64 * 4);
        ds.push(linear_small_m(gpu, &xs, w, &ys, rest, epilogue));
    }
    Some(ds)
}

/// Shape of a small-M workgroup: `threads` threads in groups of `k_threads` that share weight rows along
/// K; each group takes `rows_per_thread` rows, so a workgroup owns `rows()` = threads / k_threads ·
/// rows_per_thread rows (even, so SwiGLU pairs gate and up rows). The partial sums,
/// (rows()·M + M)·(k_threads + 1) f32, must fit 16 KiB of workgroup memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmallMShape {
    pub threads: u32,
    pub k_threads: u32,
    pub rows_per_thread: u32,
}

impl SmallMShape {
    /// Weight rows per workgroup.
    pub fn rows(self) -> u32 {
        self.threads / self.k_threads.max(1) * self.rows_per_thread
    }

    /// The shape `linear` uses for an `n × k` matrix at this M. Measured on an H100 with the generated
    /// straight-line loop (bench_linear --sweep, M = 2, the decoder's matrices): 128 threads, 2 rows per thread
    /// (4 for the wide gate/up and logits matrices), 64 threads along K for the 2048-row and the long-K matrices
    /// and 32 otherwise — 1.2–1.9× the one-row-per-group shape on each matrix.
    pub fn for_shape(m: u32, n: u32, k: u32) -> SmallMShape {
        let m = m.max(1);
        let chunks = chunks_per_row(k);
        let k_max = chunks.next_power_of_two().clamp(4, 64);
        let k_threads = (if n <= 2048 || chunks >= 1024 { 64 } else { 32 }).min(k_max);
        let wide = if n >= 8192 { 4 } else { 2 };
        let mut shape = SmallMShape { threads: 128, k_threads, rows_per_thread: (wide * 2 / m).max(1) };
        while !shape.fits(m) && shape.rows_per_thread > 1 {
            shape.rows_per_thread /= 2;
        }
        while !shape.fits(m) && shape.threads > k_threads {
            shape.threads /= 2;
        }
        // A single thread group needs two rows per thread for SwiGLU pairs.
        if shape.rows() % 2 == 1 {
            shape.rows_per_thread = 2;
        }
        shape
    }

    /// Whether the shape fits the limits above for this M.
    pub fn fits(self, m: u32) -> bool {
        self.threads.is_power_of_two()
            && self.threads <= 256
            && self.k_threads.is_power_of_two()
            && self.k_threads <= self.threads
            && self.rows_per_thread >= 1
            && self.rows().is_multiple_of(2)
            && self.partial_words(m) <= SMALL_M_PARTIALS
    }

    fn partial_words(self, m: u32) -> u32 {
        (self.rows() + 1) * m.max(1) * (self.k_threads + 1)
    }
}

/// 8-column chunks per row on the 16-byte path, 2-column pairs otherwise.
fn chunks_per_row(k: u32) -> u32 {
    if k.is_multiple_of(8) { k / 8 } else { k.div_ceil(2) }
}

/// The matrix–vector schedule (m ≤ `SMALL_M_MAX`), for tests and benchmarks; `linear` chooses it itself.
pub fn linear_small_m(gpu: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, epilogue: LinearEpilogue) -> Dispatch {
    linear_small_m_shaped(gpu, x, w, y, m, epilogue, SmallMShape::for_shape(m, w.rows, w.cols))
}

/// The matrix–vector schedule with an explicit workgroup shape (benchmarks tune with this).
pub fn linear_small_m_shaped(gpu: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, epilogue: LinearEpilogue, shape: SmallMShape) -> Dispatch {
    small_m_dispatch(gpu, x, w, y, m, epilogue, shape, None, 1)
}

/// y = rmsnorm(x; gain, eps) · Wᵀ with the epilogue: one fused matrix–vector dispatch for m ≤ `SMALL_M_MAX`,
/// else RMSNorm into `scratch` (f32 `[m, w.cols]`) and `linear_rows`.
#[allow(clippy::too_many_arguments)]
pub fn norm_linear(gpu: &Gpu, x: &GpuBuffer, gain: &GpuBuffer, eps: f32, w: &GpuMatrix, y: &GpuBuffer, m: u32, epilogue: LinearEpilogue, scratch: &GpuBuffer) -> Vec<Dispatch> {
    assert!(gain.size >= w.cols as u64 * 4, "norm_linear: gain holds fewer than {} f32", w.cols);
    if m <= SMALL_M_MAX {
        let shape = SmallMShape::for_shape(m, w.rows, w.cols);
        vec![small_m_dispatch(gpu, x, w, y, m, epilogue, shape, Some((gain, eps)), 1)]
    } else {
        let mut ds = vec![rmsnorm(gpu, x, gain, scratch, m, w.cols, eps)];
        ds.extend(linear_rows(gpu, scratch, w, y, m, epilogue));
        ds
    }
}

/// The small-M kernel over `blocks` consecutive blocks of `m` rows of x and y (the grid's z).
#[allow(clippy::too_many_arguments)]
fn small_m_dispatch(gpu: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, epilogue: LinearEpilogue, shape: SmallMShape, norm: Option<(&GpuBuffer, f32)>, blocks: u32) -> Dispatch {
    assert!(m <= SMALL_M_MAX, "linear_small_m: m = {m} > {SMALL_M_MAX}");
    assert!(shape.fits(m), "linear_small_m: {shape:?} does not fit m = {m}");
    let out_cols = check_shapes(x, w, y, m * blocks, epilogue);
    // 16-byte loads need whole 8-column chunks (8 f16 or 2 × 4 f32) in every row of x and W.
    let access = if w.cols.is_multiple_of(8) { "vec8" } else { "pair" };
    // A pipeline per M keeps the accumulators in registers; m = 0 dispatches nothing.
    let m_spec = m.max(1);
    let SmallMShape { threads, k_threads, rows_per_thread } = shape;
    let norm_section = if norm.is_some() { access } else { "none" };
    // Chunks per row each thread loads per round: more loads in flight at small M (registers allow it), never
    // more rounds' worth than the row has.
    let per_thread = chunks_per_row(w.cols).div_ceil(k_threads).max(1);
    let unroll = (match m_spec { 1..=2 => 4, 3..=4 => 2, _ => 1 }).min(per_thread);
    let key = format!(
        "linear.small_m.{}.{access}.{}.norm_{norm_section}.m{m_spec}.t{threads}.k{k_threads}.r{rows_per_thread}.u{unroll}.blocked{}",
        w.numerics.name(),
        epilogue.name(),
        blocks > 1
    );
    let pipeline = gpu.pipeline(&key, "small_m", || {
        let code = small_m_code(m_spec, rows_per_thread, unroll, k_threads, norm.is_some());
        let src = [
            section("common"),
            section(&format!("access_{}_{access}", w.numerics.name())),
            section(&format!("norm_{norm_section}")),
            section("small_m"),
        ]
        .concat();
        specialize(
            &src,
            &[
                ("EPILOGUE", epilogue.code().to_string()),
                ("M", m_spec.to_string()),
                ("THREADS", threads.to_string()),
                ("K_THREADS", k_threads.to_string()),
                ("ROWS_PER_THREAD", rows_per_thread.to_string()),
                ("NORM", norm.is_some().to_string()),
                ("BLOCKED", (blocks > 1).to_string()),
                ("RED", shape.partial_words(m_spec).to_string()),
                ("UNROLL", unroll.to_string()),
                ("DECLS", code.decls.clone()),
                ("BODY", code.body.clone()),
                ("STORES", code.stores.clone()),
                ("LANE_SUM", code.lane_sum.clone()),
            ],
        )
    });
    let rows = shape.rows();
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
        eps: norm.map_or(0.0, |n| n.1),
    };
    let [gx, gy, _] = grid_1d(groups);
    let grid = [gx, gy, blocks];
    match norm {
        Some((gain, _)) => gpu.dispatch(&pipeline, &params, &[x, &w.data, y, gain], grid),
        None => gpu.dispatch(&pipeline, &params, &[x, &w.data, y], grid),
    }
}

/// Work split of the tiled schedule: a workgroup computes `tm` x rows × `tn` weight rows (`tn / 2`
/// outputs under SwiGLU) and stages `bk` columns of K per barrier. Its threads form `kg` groups that split each
/// stage's columns between them (partial sums added in workgroup memory at the end); in each group
/// (`tm / rm`)·(`tn / 8`) threads own `rm` × 8 outputs each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TiledShape {
    pub tm: u32,
    pub tn: u32,
    pub rm: u32,
    pub bk: u32,
    pub kg: u32,
}

impl TiledShape {
    /// 128 × 128, 8 × 8 per thread (256 threads): the most arithmetic per staged value, for large M·N.
    pub const LARGE: TiledShape = TiledShape { tm: 128, tn: 128, rm: 8, bk: 8, kg: 1 };
    /// 64 × 128, 8 × 8 per thread (128 threads).
    pub const MEDIUM: TiledShape = TiledShape { tm: 64, tn: 128, rm: 8, bk: 8, kg: 1 };
    /// 64 × 64, 4 × 8 per thread (128 threads).
    pub const SMALL: TiledShape = TiledShape { tm: 64, tn: 64, rm: 4, bk: 16, kg: 1 };
    /// 32 × 64, 4 × 8 per thread, K split 4 ways (256 threads): enough threads per tile for M ≈ 100.
    pub const TINY: TiledShape = TiledShape { tm: 32, tn: 64, rm: 4, bk: 16, kg: 4 };
    /// 32 × 32, 4 × 8 per thread, K split 8 ways (256 threads): M ≈ 100 against narrow matrices (N = 1024).
    pub const MICRO: TiledShape = TiledShape { tm: 32, tn: 32, rm: 4, bk: 32, kg: 8 };
    /// Largest first; `for_problem` walks this list.
    pub const ALL: [TiledShape; 5] = [TiledShape::LARGE, TiledShape::MEDIUM, TiledShape::SMALL, TiledShape::TINY, TiledShape::MICRO];

    /// The largest shape that still gives `TILED_MIN_GROUPS` workgroups, else the one with the most workgroups.
    /// Encoder (f16w, K = 1024 / 4096): M = 1001 takes LARGE for N = 4096 and SwiGLU 8192, MEDIUM for 3072, SMALL
    /// for 1024; M = 101 takes SMALL for SwiGLU 8192, TINY for 4096, MICRO for 3072 and 1024 (128 workgroups of
    /// 256 threads: the most this M allows without splitting K across workgroups).
    pub fn for_problem(m: u32, w_rows: u32, epilogue: LinearEpilogue) -> TiledShape {
        let most = TiledShape::ALL.into_iter().max_by_key(|s| s.groups(m, w_rows, epilogue)).unwrap_or(TiledShape::MICRO);
        TiledShape::ALL.into_iter().find(|s| s.groups(m, w_rows, epilogue) >= TILED_MIN_GROUPS).unwrap_or(most)
    }

    pub fn threads(self) -> u32 {
        self.kg * (self.tm / self.rm.max(1)) * (self.tn / 8)
    }

    /// Workgroup memory: the staged k-rows of x and W (each padded by 4 words), and the partial sums when
    /// K is split.
    pub fn workgroup_bytes(self) -> u32 {
        let partials = if self.kg > 1 { self.tm * self.tn } else { 0 };
        4 * (self.bk * (self.tm + 4 + self.tn + 4) + partials)
    }

    /// Whether the kernel supports this shape: rm 4 or 8 with tm a multiple of 4, or of 8 for rm = 8 (rows 4·ty..
    /// and tm/2 + 4·ty..), tn a multiple of 8 (columns 4·tx.. and tn/2 + 4·tx..), bk a multiple of 4 split evenly between a power-of-two kg,
    /// ≤ 256 threads, ≤ 16 KiB of workgroup memory.
    pub fn fits(self) -> bool {
        (self.rm == 4 || self.rm == 8)
            && self.tm > 0
            && self.tm.is_multiple_of(if self.rm == 8 { 8 } else { 4 })
            && self.tn > 0
            && self.tn.is_multiple_of(8)
            && self.bk > 0
            && self.bk.is_multiple_of(4)
            && self.kg.is_power_of_two()
            && self.bk.is_multiple_of(self.kg)
            && self.threads() <= 256
            && self.workgroup_bytes() <= 16384
    }

    fn tiles_n(self, w_rows: u32, epilogue: LinearEpilogue) -> u32 {
        match epilogue {
            LinearEpilogue::SwiGlu => (w_rows / 2).div_ceil(self.tn / 2),
            _ => w_rows.div_ceil(self.tn),
        }
    }

    /// Workgroups for an `m`-row x against `w_rows` weight rows.
    pub fn groups(self, m: u32, w_rows: u32, epilogue: LinearEpilogue) -> u32 {
        self.tiles_n(w_rows, epilogue) * m.div_ceil(self.tm)
    }
}

/// The tiled matrix–matrix schedule (any m), for tests and benchmarks; `linear` chooses it itself.
pub fn linear_tiled(gpu: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, epilogue: LinearEpilogue) -> Dispatch {
    linear_tiled_shaped(gpu, x, w, y, m, epilogue, TiledShape::for_problem(m, w.rows, epilogue))
}

/// The tiled schedule with an explicit work split (tests and benchmarks).
pub fn linear_tiled_shaped(gpu: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, epilogue: LinearEpilogue, shape: TiledShape) -> Dispatch {
    assert!(shape.fits(), "linear_tiled: unsupported {shape:?}");
    let out_cols = check_shapes(x, w, y, m, epilogue);
    // 16-byte x loads (and 8-byte f16 weight loads) need whole 4-column groups in every row; 16-byte f16 weight
    // loads whole 8-column groups, and a stage of whole 8-column units.
    let access = match w.numerics {
        Numerics::F16W if w.cols.is_multiple_of(8) && shape.bk.is_multiple_of(8) => "vec8",
        _ if w.cols.is_multiple_of(4) => "vec4",
        _ => "scalar",
    };
    let w_unit = if access == "vec8" { 8 } else { 4 };
    let TiledShape { tm, tn, rm, bk, kg } = shape;
    let key = format!("linear.tiled.{}.{access}.{}.{tm}x{tn}.r{rm}.k{bk}.g{kg}", w.numerics.name(), epilogue.name());
    let pipeline = gpu.pipeline(&key, "tiled", || {
        let src = format!(
            "{}{}{}",
            section("common"),
            section(&format!("tiled_access_{}_{access}", w.numerics.name())),
            section("tiled")
        );
        let red = if kg > 1 { format!("var<workgroup> red: array<f32, {}>;", tm * tn) } else { String::new() };
        specialize(
            &src,
            &[
                ("EPILOGUE", epilogue.code().to_string()),
                ("TM", tm.to_string()),
                ("TN", tn.to_string()),
                ("RM", rm.to_string()),
                ("BK", bk.to_string()),
                ("KG", kg.to_string()),
                ("THREADS", shape.threads().to_string()),
                ("RED_DECL", red),
                ("BODY", tiled_code(shape, w_unit, epilogue)),
            ],
        )
    });
    let tiles_n = shape.tiles_n(w.rows, epilogue);
    let groups = if m == 0 { 0 } else { shape.groups(m, w.rows, epilogue) };
    let params = Params {
        m,
        n: w.rows,
        k: w.cols,
        stride: w.row_stride_words(),
        out_cols,
        groups,
        tiles_n,
        eps: 0.0,
    };
    gpu.dispatch(&pipeline, &params, &[x, &w.data, y], grid_1d(groups))
}

/// Straight-line body of the tiled kernel for one shape, `w_unit` (4 or 8) weight columns per load, and the
/// epilogue: per-thread load slots (global → registers → k-major workgroup memory; rows past M or N are clamped
/// and their columns pushed past K, which reads as 0), the stage loop with the next stage's loads issued before
/// this stage's FMAs into named accumulators acc_<row>_<col>, the sum over the K groups, and the bounds-checked
/// stores.
fn tiled_code(shape: TiledShape, w_unit: u32, epilogue: LinearEpilogue) -> String {
    use std::fmt::Write;
    let TiledShape { tm, tn, rm, bk, kg } = shape;
    let threads = shape.threads();
    let comp = ["x", "y", "z", "w"];
    let mut s = String::new();
    // One slot per `threads` staging units of a stage; the last may cover only some threads.
    struct Slots {
        name: char,
        per_row: u32,
        units: u32,
    }
    let xs = Slots { name: 'x', per_row: bk / 4, units: tm * bk / 4 };
    let ws = Slots { name: 'w', per_row: bk / w_unit, units: tn * bk / w_unit };
    for sl in [&xs, &ws] {
        let c = sl.name;
        for i in 0..sl.units.div_ceil(threads) {
            let row = if c == 'x' { format!("TM * tm + {c}e_{i} / {}u", sl.per_row) } else { format!("tile_row(tn, {c}e_{i} / {}u)", sl.per_row) };
            let (bound, unit) = if c == 'x' { ("p.m", 4) } else { ("p.n", w_unit) };
            let _ = writeln!(s, "    let {c}e_{i} = tid + {}u;", i * threads);
            let _ = writeln!(s, "    let {c}row_{i} = {row};");
            // Threads past the stage's units (last slot only) load nothing.
            let in_stage = if (i + 1) * threads > sl.units { format!(" && {c}e_{i} < {}u", sl.units) } else { String::new() };
            let _ = writeln!(s, "    let {c}ok_{i} = {c}row_{i} < {bound}{in_stage};");
            let _ = writeln!(s, "    let {c}r_{i} = min({c}row_{i}, {bound} - 1u);");
            let _ = writeln!(s, "    let {c}k_{i} = {unit}u * ({c}e_{i} % {}u);", sl.per_row);
            let stride = if c == 'x' { "XS4" } else { "WS4" };
            let _ = writeln!(s, "    let {c}st_{i} = {c}k_{i} * {stride} + {c}e_{i} / {}u / 4u;", sl.per_row);
            let _ = writeln!(s, "    let {c}c_{i} = {c}e_{i} / {}u % 4u;", sl.per_row);
        }
    }
    // Loads of the stage at `k` into the slot registers (declared with `var` the first time).
    let loads = |k: &str, decl: bool, indent: &str| -> String {
        let mut l = String::new();
        let v = if decl { "var " } else { "" };
        let t = if decl { "wl0" } else { "wl" };
        for i in 0..xs.units.div_ceil(threads) {
            let _ = writeln!(l, "{indent}{v}xv_{i} = tiled_load_x(xr_{i}, select(p.k, {k} + xk_{i}, xok_{i}));");
        }
        for i in 0..ws.units.div_ceil(threads) {
            if w_unit == 8 {
                let _ = writeln!(l, "{indent}let {t}_{i} = tiled_load_w8(wr_{i}, select(p.k, {k} + wk_{i}, wok_{i}));");
                let _ = writeln!(l, "{indent}{v}wv_{i} = {t}_{i}.lo;");
                let _ = writeln!(l, "{indent}{v}wh_{i} = {t}_{i}.hi;");
            } else {
                let _ = writeln!(l, "{indent}{v}wv_{i} = tiled_load_w(wr_{i}, select(p.k, {k} + wk_{i}, wok_{i}));");
            }
        }
        l
    };
    s.push_str(&loads("0u", true, "    "));
    for r in 0..rm {
        for c in 0..8 {
            let _ = writeln!(s, "    var acc_{r}_{c} = 0.0;");
        }
    }
    let sub = bk / kg;
    let _ = writeln!(s, "    let xa = kg * {}u * XS4 + ty;", sub);
    let _ = writeln!(s, "    let wa = kg * {}u * WS4 + tx;", sub);
    let _ = writeln!(s, "    for (var k0 = 0u; k0 < p.k; k0 += BK) {{");
    let _ = writeln!(s, "        workgroupBarrier();");
    for sl in [&xs, &ws] {
        let c = sl.name;
        let (arr, stride) = if c == 'x' { ("xs", "XS4") } else { ("ws", "WS4") };
        for i in 0..sl.units.div_ceil(threads) {
            let partial = (i + 1) * threads > sl.units;
            let ind = if partial { "            " } else { "        " };
            if partial {
                let _ = writeln!(s, "        if {c}e_{i} < {}u {{", sl.units);
            }
            let regs: Vec<String> = if c == 'w' && w_unit == 8 { vec![format!("wv_{i}"), format!("wh_{i}")] } else { vec![format!("{c}v_{i}")] };
            for (h, reg) in regs.iter().enumerate() {
                for (j, cc) in comp.iter().enumerate() {
                    let off = 4 * h + j;
                    let _ = writeln!(s, "{ind}{arr}[{c}st_{i} + {off}u * {stride}][{c}c_{i}] = {reg}.{cc};");
                }
            }
            if partial {
                let _ = writeln!(s, "        }}");
            }
        }
    }
    let _ = writeln!(s, "        workgroupBarrier();");
    let _ = writeln!(s, "        let kn = k0 + BK;");
    s.push_str(&loads("kn", false, "        "));
    for k in 0..sub {
        let _ = writeln!(s, "        let a0_{k} = xs[xa + {k}u * XS4];");
        if rm == 8 {
            let _ = writeln!(s, "        let a1_{k} = xs[xa + {k}u * XS4 + TM / 8u];");
        }
        let _ = writeln!(s, "        let b0_{k} = ws[wa + {k}u * WS4];");
        let _ = writeln!(s, "        let b1_{k} = ws[wa + {k}u * WS4 + TN / 8u];");
        for r in 0..rm {
            for c in 0..8 {
                let _ = writeln!(s, "        acc_{r}_{c} += a{}_{k}.{} * b{}_{k}.{};", r / 4, comp[(r % 4) as usize], c / 4, comp[c % 4]);
            }
        }
    }
    let _ = writeln!(s, "    }}");
    if kg > 1 {
        // One group at a time adds its sums into group 0's (workgroup memory holds one tile of partials).
        let _ = writeln!(s, "    for (var g = 1u; g < KG; g++) {{");
        let _ = writeln!(s, "        if kg == g {{");
        for r in 0..rm {
            for c in 0..8 {
                let _ = writeln!(s, "            red[{}u * GROUP + lt] = acc_{r}_{c};", r * 8 + c);
            }
        }
        let _ = writeln!(s, "        }}");
        let _ = writeln!(s, "        workgroupBarrier();");
        let _ = writeln!(s, "        if kg == 0u {{");
        for r in 0..rm {
            for c in 0..8 {
                let _ = writeln!(s, "            acc_{r}_{c} += red[{}u * GROUP + lt];", r * 8 + c);
            }
        }
        let _ = writeln!(s, "        }}");
        let _ = writeln!(s, "        workgroupBarrier();");
        let _ = writeln!(s, "    }}");
        let _ = writeln!(s, "    if kg != 0u {{");
        let _ = writeln!(s, "        return;");
        let _ = writeln!(s, "    }}");
    }
    // Columns 4·tx.. and TN/2 + 4·tx.. of the tile; SwiGLU pairs column c (gate) with c + 4 (up).
    if epilogue == LinearEpilogue::SwiGlu {
        for c in 0..4 {
            let _ = writeln!(s, "    let o_{c} = TN / 2u * tn + 4u * tx + {c}u;");
        }
    } else {
        for c in 0..8 {
            let half = if c < 4 { "" } else { " + TN / 2u" };
            let _ = writeln!(s, "    let n_{c} = TN * tn + 4u * tx + {}u{half};", c % 4);
        }
    }
    for r in 0..rm {
        let half = if r < 4 { "" } else { " + TM / 2u" };
        let _ = writeln!(s, "    let m_{r} = TM * tm + 4u * ty + {}u{half};", r % 4);
        let _ = writeln!(s, "    if m_{r} < p.m {{");
        if epilogue == LinearEpilogue::SwiGlu {
            for c in 0..4 {
                let _ = writeln!(s, "        if o_{c} < p.out_cols {{ y[m_{r} * p.out_cols + o_{c}] = silu(acc_{r}_{c}) * acc_{r}_{}; }}", c + 4);
            }
        } else {
            for c in 0..8 {
                let _ = writeln!(s, "        if n_{c} < p.n {{ write_out(m_{r}, n_{c}, acc_{r}_{c}); }}");
            }
        }
        let _ = writeln!(s, "    }}");
    }
    s
}

/// The generated parts of the small-M kernel for one specialisation.
struct SmallMCode {
    decls: String,
    body: String,
    stores: String,
    lane_sum: String,
}

/// Straight-line WGSL for `m` rows of x, `rpt` weight rows per thread and `unroll` chunks per round: all loads of a
/// round first (clamped chunk indices, so they need no branch), then the dot products, masked for chunks past the
/// row. Accumulators are named scalars (acc_<row>_<m>), so nothing lives in an indexed array.
fn small_m_code(m: u32, rpt: u32, unroll: u32, k_threads: u32, norm: bool) -> SmallMCode {
    use std::fmt::Write;
    let mut decls = String::new();
    let mut body = String::new();
    let mut stores = String::new();
    for i in 0..rpt {
        let _ = writeln!(decls, "    let row_{i} = slot_row(g, {i}u * G + rg);");
        for mi in 0..m {
            let _ = writeln!(decls, "    var acc_{i}_{mi} = 0.0;");
        }
    }
    if norm {
        for mi in 0..m {
            let _ = writeln!(decls, "    var sq_{mi} = 0.0;");
        }
    }
    for j in 0..unroll {
        let _ = writeln!(body, "        let c_{j} = min(c + {j}u * KT, nc - 1u);");
    }
    for j in 0..unroll {
        for i in 0..rpt {
            let _ = writeln!(body, "        let w_{i}_{j} = load_w(row_{i}, c_{j});");
        }
        for mi in 0..m {
            let _ = writeln!(body, "        let xr_{mi}_{j} = load_x({mi}u, c_{j});");
        }
    }
    for j in 0..unroll {
        // Chunk j of the round exists when c + j·KT < nc (always for j = 0).
        let mask = |e: String| if j == 0 { e } else { format!("select(0.0, {e}, c + {j}u * KT < nc)") };
        for mi in 0..m {
            if norm {
                let _ = writeln!(body, "        sq_{mi} += {};", mask(format!("chunk_dot(xr_{mi}_{j}, xr_{mi}_{j})")));
            }
            let _ = writeln!(body, "        let x_{mi}_{j} = scale_x(xr_{mi}_{j}, c_{j});");
            for i in 0..rpt {
                let _ = writeln!(body, "        acc_{i}_{mi} += {};", mask(format!("chunk_dot(x_{mi}_{j}, w_{i}_{j})")));
            }
        }
    }
    for i in 0..rpt {
        for mi in 0..m {
            let _ = writeln!(stores, "    red[(({i}u * G + rg) * M + {mi}u) * LANES + kt] = acc_{i}_{mi};");
        }
    }
    if norm {
        // Every thread group saw the same x chunks: group 0's squares are the row's.
        let _ = writeln!(stores, "    if rg == 0u {{");
        for mi in 0..m {
            let _ = writeln!(stores, "        red[(OUTS + {mi}u) * LANES + kt] = sq_{mi};");
        }
        let _ = writeln!(stores, "    }}");
    }
    let lanes: Vec<String> = (0..k_threads).map(|j| format!("red[b + {j}u]")).collect();
    SmallMCode { decls, body, stores, lane_sum: super::wgsl_tree_sum(&lanes) }
}

/// Checks buffer sizes against the shapes; returns the number of output columns.
pub(super) fn check_shapes(x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, epilogue: LinearEpilogue) -> u32 {
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
