//! The matrix–vector schedule of `linear` (M ≤ `SMALL_M_MAX`: decoder steps, M = 2·batch): a workgroup reads each
//! of its weight rows once for all M rows of x (`shaders/linear.wgsl`, section `small_m`).
use crate::gpu::{grid_1d, specialize, Dispatch, Gpu, GpuBuffer, KernelVariant};

use super::{check_shapes, section, small_m_arith, LinearEpilogue, Params, SMALL_M_MAX};
use crate::kernels::attention::{DecodeLayout, DecodePartials};
use crate::kernels::kv_cache::KvFormat;
use crate::kernels::wgsl::Emitter;
use crate::kernels::{GpuMatrix, WeightFormat};

/// Partial sums a small-M workgroup may hold: 4096 f32 = 16 KiB of workgroup memory.
const SMALL_M_PARTIALS: u32 = 4096;

/// Shape of a small-M workgroup: `threads` threads in groups of `k_threads` that share weight rows along
/// K; each group takes `rows_per_thread` rows, so a workgroup owns `rows()` = threads / k_threads ·
/// rows_per_thread rows (even, so SwiGLU pairs gate and up rows). The partial sums,
/// (rows()·M + M)·(k_threads + 1) f32, meet in 16 KiB of workgroup memory: at once where they fit, else in rounds
/// of fewer rows of x with the totals kept between rounds (`reduce_rounds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
        SmallMShape::for_format(WeightFormat::F16, m, n, k)
    }

    /// `for_shape` for a matrix stored in `format` (f32 and f16 alike). Quantized rows have fewer, wider chunks
    /// (16 or 32 columns), so a thread does more work per chunk: swept on an H100 (`bench_linear --sweep`, M = 2, the
    /// decoder's shapes in q8 and q4; `docs/performance.md`), 4 rows per thread everywhere and 64 threads along K
    /// below 8192 rows (32 above, 16 for q4's gate/up) took 3–29 % off each matrix against the f16 rule.
    ///
    /// That is for rows read the way f32 arithmetic reads them by default (`SmallMAccess::preferred`: q4 in 8-column
    /// chunks); `for_access` gives the shape for another way.
    pub fn for_format(format: WeightFormat, m: u32, n: u32, k: u32) -> SmallMShape {
        SmallMShape::for_access(SmallMAccess::preferred(format, k), format, m, n, k)
    }

    /// The shape `linear` uses for this matrix and M on this device (its rows read as `small_m_access` says).
    pub fn for_matrix(gpu: &Gpu, w: &GpuMatrix, m: u32) -> SmallMShape {
        SmallMShape::for_access(small_m_access(gpu, w.format, w.cols), w.format, m, w.rows, w.cols)
    }

    /// `for_format` for rows read through `access`. Quantized rows in 8-column chunks, swept on an H100 (`bench_linear
    /// --chunks cols8 --sweep`, M = 2, q4 at the decoder's shapes, stop 26): 128 threads, 4 rows per thread, 64 threads
    /// along K, 32 from 16384 rows (the sweep's best or within 2 % of it on every matrix).
    ///
    /// Above 2 rows of x (batches) the rule is `for_rows`'.
    pub fn for_access(access: SmallMAccess, format: WeightFormat, m: u32, n: u32, k: u32) -> SmallMShape {
        let m = m.max(1);
        let chunks = k.div_ceil(access.chunk_cols(format));
        let k_max = chunks.next_power_of_two().clamp(4, 64);
        if m > 2 {
            return SmallMShape::for_rows(format, m, n, chunks, k_max);
        }
        let (k_threads, wide) = match format {
            WeightFormat::Quant(_) if access.cols8_chunks() => (if n >= 16384 { 32 } else { 64 }, 4),
            WeightFormat::Quant(_) => (if n >= 16384 && chunks <= 64 { 16 } else if n >= 8192 { 32 } else { 64 }, 4),
            _ => (if n <= 2048 || chunks >= 1024 { 64 } else { 32 }, if n >= 8192 { 4 } else { 2 }),
        };
        let k_threads = k_threads.min(k_max);
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

    /// The shape for more than 2 rows of x (decoder steps of a batch). Each x chunk a thread loads serves its
    /// `rows_per_thread` weight rows, so at large M that count, not the threads along K, decides: swept on an H100
    /// (`bench_linear --sweep`, M = 4, 8 and 16, the decoder's matrices in f16w and q4; docs/performance.md), 4–8 rows
    /// per thread took each matrix 1.8–2.8× below the old rule's 1 at M = 8 and 16 (its partial sums had to fit at
    /// once; `reduce_rounds` lifts that): the decoder's whole set at M = 16 in 3.51 ms per pass instead of 6.32, then 2.84 in f16w
    /// with 128 × 64 × 4 (stop 28).
    fn for_rows(format: WeightFormat, m: u32, n: u32, chunks: u32, k_max: u32) -> SmallMShape {
        let quant = matches!(format, WeightFormat::Quant(_));
        let (threads, k_threads, rows_per_thread) = if n >= 16384 {
            // gate/up: 128 × 16 × 8 was the best of both formats at M = 16 (f16w 63.0 µs, q4 53.4; the old rule 147, 143).
            (128, 16, if m > 8 { 8 } else { 4 })
        } else if m <= 8 || !quant {
            // M = 8, f16w: QKV 18.9 → 10.5 µs, down 54.5 → 18.6. M = 16, f16w, the decoder's whole set of matrices
            // (`bench_linear --decoder --sweep`, every matrix its own buffer; stop 28): 2.84 ms per pass against
            // 3.51 with 64 × 64 × 8, which one-matrix sweeps had favoured (a matrix re-read stays in L2).
            (128, 64, 4)
        } else {
            // M = 16, q4: QKV (3072 rows) 48.6 → 19.9 µs with 32 along K, O 33.1 → 13.6, down 86.9 → 36.2, logits 88.0 → 42.4.
            (64, if n <= 2048 || n >= 8192 || chunks >= 1024 { 64 } else { 32 }, 4)
        };
        let mut shape = SmallMShape { threads, k_threads: k_threads.min(k_max), rows_per_thread };
        while !shape.fits(m) && shape.rows_per_thread > 1 {
            shape.rows_per_thread /= 2;
        }
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
            && self.reduce_rounds(m) > 0
    }

    /// Rounds in which the partial sums meet: 1 where every row of x's fit the workgroup memory at once (the kernel
    /// as it always was), else the fewest whose rows of x per round, with the totals kept between rounds
    /// ((rows() + 1)·M f32), fit; 0 where none does. More rounds let a thread keep more weight rows at large M (each
    /// x load then serves more of them) at the cost of a barrier pair per round, once per workgroup.
    pub fn reduce_rounds(self, m: u32) -> u32 {
        let m = m.max(1);
        if self.partial_words(m) <= SMALL_M_PARTIALS {
            return 1;
        }
        (2..=m).find(|&r| self.round_words(m.div_ceil(r)) + self.total_words(m) <= SMALL_M_PARTIALS).unwrap_or(0)
    }

    /// Rows of x whose partial sums meet per round.
    fn round_rows(self, m: u32) -> u32 {
        m.max(1).div_ceil(self.reduce_rounds(m).max(1))
    }

    /// Workgroup words of one round's partial sums, `mb` rows of x (and their squared-norm sums) by the K lanes.
    fn round_words(self, mb: u32) -> u32 {
        (self.rows() + 1) * mb * (self.k_threads + 1)
    }

    /// Workgroup words of the totals kept between rounds: every output and every row's squared-norm sum.
    fn total_words(self, m: u32) -> u32 {
        (self.rows() + 1) * m.max(1)
    }

    fn partial_words(self, m: u32) -> u32 {
        self.round_words(m.max(1))
    }
}

/// The matrix–vector schedule (m ≤ `SMALL_M_MAX`), for tests and benchmarks; `linear` chooses it itself.
pub fn linear_small_m(gpu: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, epilogue: LinearEpilogue) -> Dispatch {
    linear_small_m_shaped(gpu, x, w, y, m, epilogue, SmallMShape::for_matrix(gpu, w, m))
}

/// The matrix–vector schedule with an explicit workgroup shape (benchmarks tune with this).
pub fn linear_small_m_shaped(gpu: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, epilogue: LinearEpilogue, shape: SmallMShape) -> Dispatch {
    small_m_dispatch(gpu, x, w, y, m, epilogue, shape, None, 1)
}

/// `norm_linear`'s fused matrix–vector dispatch (y = rmsnorm(x; gain, eps) · Wᵀ) with an explicit workgroup shape
/// (tests and benchmarks).
#[allow(clippy::too_many_arguments)]
pub fn norm_linear_small_m_shaped(gpu: &Gpu, x: &GpuBuffer, gain: &GpuBuffer, eps: f32, w: &GpuMatrix, y: &GpuBuffer, m: u32, epilogue: LinearEpilogue, shape: SmallMShape) -> Dispatch {
    assert!(gain.size >= w.cols as u64 * 4, "norm_linear: gain holds fewer than {} f32", w.cols);
    small_m_dispatch(gpu, x, w, y, m, epilogue, shape, Some((gain, eps)), 1)
}

/// How the small-M kernel reads a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SmallMAccess {
    /// f32 / f16: 8-column chunks as 16-byte loads (8 f16, or 2 × 4 f32); K a multiple of 8.
    Vec8,
    /// f32 / f16: 2-column pairs, any K.
    Pair,
    /// Quantized: 16-byte weight blocks, x in 16-byte loads; K a multiple of 4.
    BlockVec4,
    /// Quantized: 16-byte weight blocks, x element by element; any K.
    BlockScalar,
    /// Quantized: 8-column chunks (one q4 word, two q8 words), x in 16-byte loads; K a multiple of 4. Consecutive lanes
    /// take consecutive chunks, so a warp's x load touches 8 cache lines where a 16-byte block's touches 16 (q8) or 32
    /// (q4).
    Cols8Vec4,
    /// Quantized: 8-column chunks, x element by element; any K.
    Cols8Scalar,
}

impl SmallMAccess {
    pub fn new(format: WeightFormat, k: u32) -> SmallMAccess {
        match format {
            WeightFormat::Quant(_) if k.is_multiple_of(4) => SmallMAccess::BlockVec4,
            WeightFormat::Quant(_) => SmallMAccess::BlockScalar,
            _ if k.is_multiple_of(8) => SmallMAccess::Vec8,
            _ => SmallMAccess::Pair,
        }
    }

    /// How f32 arithmetic reads `format` unless told otherwise (`small_m_access`): q4 in 8-column chunks, everything
    /// else as `new`. Measured on an H100 (M = 2, the decoder's shapes, `bench_linear --chunks block,cols8`, stop 26):
    /// 8-column chunks take q4 matrices 7–21 % faster (gate/up 24.3 → 19.2 µs, logits 17.6 → 13.8, down 16.2 → 13.8)
    /// and the whole q4 step 2 %; for q8 (16-column blocks, whose x loads touch half as many lines) they are 0–9 %
    /// slower.
    pub fn preferred(format: WeightFormat, k: u32) -> SmallMAccess {
        match format {
            WeightFormat::Quant(q) if q.bits() == crate::quant::QuantBits::Q4 => SmallMAccess::cols8(format, k),
            _ => SmallMAccess::new(format, k),
        }
    }

    /// The same weight chunks as `new` picks, read in 8-column chunks (quantized formats; others as `new`).
    pub fn cols8(format: WeightFormat, k: u32) -> SmallMAccess {
        match SmallMAccess::new(format, k) {
            SmallMAccess::BlockVec4 => SmallMAccess::Cols8Vec4,
            SmallMAccess::BlockScalar => SmallMAccess::Cols8Scalar,
            other => other,
        }
    }

    /// The name in the section names of `shaders/linear.wgsl` (`access_<format>_<name>`, `norm_<name>`,
    /// `qx_<name>`, `qnorm_<name>`).
    fn name(self) -> &'static str {
        match self {
            SmallMAccess::Vec8 => "vec8",
            SmallMAccess::Pair => "pair",
            SmallMAccess::BlockVec4 | SmallMAccess::Cols8Vec4 => "vec4",
            SmallMAccess::BlockScalar | SmallMAccess::Cols8Scalar => "scalar",
        }
    }

    /// Quantized weight chunks of 8 columns (`qcols8_<format>`) rather than 16-byte blocks (`qsmall_<format>`).
    pub fn cols8_chunks(self) -> bool {
        matches!(self, SmallMAccess::Cols8Vec4 | SmallMAccess::Cols8Scalar)
    }

    /// Columns in one chunk of a row of `format`.
    fn chunk_cols(self, format: WeightFormat) -> u32 {
        match (self, format) {
            (SmallMAccess::Pair, _) => 2,
            (SmallMAccess::BlockVec4 | SmallMAccess::BlockScalar, WeightFormat::Quant(q)) => 4 * q.per_word(),
            _ => 8,
        }
    }
}

/// How the small-M kernel multiplies (`linear::small_m_arith` chooses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arith {
    /// Weights converted to f32, products and sums in f32.
    F32,
    /// `shader-f16`: weights dequantized straight into f16 (quantized values scaled to |w| ≤ 1/8, exactly), x converted
    /// to f16 once per chunk for all the thread's weight rows, products summed in f16 over ≤ 32 weights (a
    /// quantized chunk; an f16w round of ≤ 4 chunks), each such sum added to the f32 accumulator (times the group's
    /// scale). Sums of f16 terms overflow past 65504: safe while |x| ≤ 16376 (q4) / 32752 (q8), and for f16w
    /// while |x·w| ≤ 2047 per product (see `shaders/linear.wgsl`, section `half`).
    F16,
    /// Quantized weights only: each x chunk quantized to int8 once for all the thread's weight rows (its own scale,
    /// largest |x| / 127, round to nearest), each 4-byte word of weights multiplied with 4 bytes of x by one
    /// `dot4I8Packed`, the chunk's integer sum times (x scale × group scale) added in f32 (`shaders/linear.wgsl`,
    /// section `qi8`). x is off by ≤ its chunk's scale / 2 per element; everything after is exact or f32.
    Int8Dot,
}

/// One compiled specialisation of the small-M kernel: the WGSL generator's input and the pipeline-cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SmallMVariant {
    pub format: WeightFormat,
    pub access: SmallMAccess,
    pub epilogue: LinearEpilogue,
    /// RMSNorm fused into the x loads (gain at binding 4, eps in the parameters).
    pub norm: bool,
    /// Rows of x per pass (1..=`SMALL_M_MAX`): one pipeline per M keeps the accumulators in registers.
    pub m: u32,
    pub shape: SmallMShape,
    /// Chunks per row each thread loads per round.
    pub unroll: u32,
    /// Serves a stack of `m`-row blocks, one per grid z (`linear_row_blocks`).
    pub blocked: bool,
    pub arith: Arith,
    /// Loads each round's weight chunks (and quantized scales) during the round before (software pipelining), so a
    /// thread's next DRAM round trip overlaps its arithmetic (`Gpu::matvec_prefetch` decides).
    pub prefetch: bool,
    /// x is a decode's split attention, combined by every workgroup into workgroup memory (`linear_attention_o`).
    pub attention_x: Option<DecodeLayout>,
}

impl SmallMVariant {
    /// The variant for `m` rows of x against a matrix of `format` with `k` columns, its rows read as `SmallMAccess::new`
    /// says (quantized rows in 16-byte blocks; `linear` reads q4 in 8-column chunks: `small_m_access`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(format: WeightFormat, k: u32, m: u32, epilogue: LinearEpilogue, shape: SmallMShape, norm: bool, blocked: bool, arith: Arith) -> SmallMVariant {
        SmallMVariant::with_access(SmallMAccess::new(format, k), format, k, m, epilogue, shape, norm, blocked, arith)
    }

    /// `new` with the rows read through `access` (which must suit the format and K: `SmallMAccess::new` or
    /// `SmallMAccess::cols8`; 8-column quantized chunks take f32 arithmetic only).
    #[allow(clippy::too_many_arguments)]
    pub fn with_access(access: SmallMAccess, format: WeightFormat, k: u32, m: u32, epilogue: LinearEpilogue, shape: SmallMShape, norm: bool, blocked: bool, arith: Arith) -> SmallMVariant {
        // m = 0 dispatches nothing but still needs a pipeline.
        let m = m.max(1);
        // Chunks per row each thread loads per round: more loads in flight at small M (registers allow it: up to
        // 64 f32 of x chunks per thread, M rounded up to 2, 4 or 8), never more rounds' worth than the row has.
        // 8-column quantized chunks count as 16 here: 2 per round at M = 2 measured 2–3 % faster than 4 on every q4 matrix.
        let chunk_floats = if access.cols8_chunks() { 16 } else { access.chunk_cols(format).max(8) };
        let per_thread = k.div_ceil(access.chunk_cols(format)).div_ceil(shape.k_threads).max(1);
        let m_bucket = match m { 1..=2 => 2, 3..=4 => 4, _ => 8 };
        let unroll = (64 / (m_bucket * chunk_floats)).clamp(1, 4).min(per_thread);
        assert!(arith == Arith::F32 || format != WeightFormat::F32, "f16 arithmetic serves f16 and quantized weights only");
        assert!(arith != Arith::Int8Dot || matches!(format, WeightFormat::Quant(_)), "integer dot products serve quantized weights only");
        assert!(arith == Arith::F32 || !access.cols8_chunks(), "8-column quantized chunks take f32 arithmetic only");
        assert!(access == SmallMAccess::new(format, k) || access == SmallMAccess::cols8(format, k), "{access:?} does not read {format:?} weights with {k} columns");
        SmallMVariant { format, access, epilogue, norm, m, shape, unroll, blocked, arith, prefetch: false, attention_x: None }
    }

    /// This variant with the next round's weights loaded during each round (`prefetch`) or not.
    pub fn with_prefetch(self, prefetch: bool) -> SmallMVariant {
        SmallMVariant { prefetch, ..self }
    }
}

impl KernelVariant for SmallMVariant {
    fn entry_point(&self) -> &'static str {
        "small_m"
    }

    fn source(&self) -> String {
        let SmallMVariant { format, access, epilogue, norm, m, shape, unroll, blocked, arith, prefetch, attention_x } = *self;
        let SmallMShape { threads, k_threads, rows_per_thread } = shape;
        let quant = matches!(format, WeightFormat::Quant(_));
        let half = arith == Arith::F16;
        let int8 = arith == Arith::Int8Dot;
        let rounds = shape.reduce_rounds(m);
        assert!(rounds > 0, "linear_small_m: {shape:?} does not fit m = {m}");
        let code = small_m_code(m, rows_per_thread, unroll, k_threads, norm, quant, half, int8, prefetch, shape.round_rows(m));
        let norm_section = if norm { access.name() } else { "none" };
        // `enable f16;` must open the module, and only modules that use f16 may carry it (devices without shader-f16
        // reject it).
        let enable = if half { "enable f16;\n" } else { "" };
        let src = if quant {
            [
                enable,
                section("common"),
                section("qdecode"),
                section(&format!("{}_{}", if access.cols8_chunks() { "qcols8" } else { "qsmall" }, format.name())),
                section("qsmall_scale"),
                section(&format!("qx_{}", access.name())),
                section(&format!("qnorm_{norm_section}")),
                if half { section("half") } else { "" },
                if half { section(&format!("qhalf_{}", format.name())) } else { "" },
                if int8 { section("qi8") } else { "" },
                if int8 { section(&format!("qi8_{}", format.name())) } else { "" },
                section("small_m"),
            ]
            .concat()
        } else {
            let h = if half { "_half" } else { "" };
            [
                enable,
                section("common"),
                if half { section("half") } else { "" },
                section(&format!("access_{}_{}{h}", format.name(), access.name())),
                section(&format!("norm_{norm_section}")),
                section("small_m"),
            ]
            .concat()
        };
        let (src, prologue, x_defs) = match attention_x {
            None => (src, String::new(), vec![]),
            Some(l) => attention_x_source(src, l, shape.threads),
        };
        let mut defs = vec![
                ("PARAMS", Params::wgsl()),
                ("EPILOGUE", epilogue.code().to_string()),
                ("M", m.to_string()),
                ("THREADS", threads.to_string()),
                ("K_THREADS", k_threads.to_string()),
                ("ROWS_PER_THREAD", rows_per_thread.to_string()),
                ("NORM", norm.to_string()),
                ("BLOCKED", blocked.to_string()),
                ("RED", shape.round_words(shape.round_rows(m)).to_string()),
                ("TOTALS", code.totals),
                ("UNROLL", unroll.to_string()),
                ("DECLS", code.decls),
                ("BODY", code.body),
                ("REDUCE", code.reduce),
                ("GROUP", quant_group(format).to_string()),
                ("PROLOGUE", prologue),
        ];
        defs.extend(x_defs);
        specialize(&src, &defs)
    }
}

/// The small-M source with x made from a decode's partials (`SmallMVariant::attention_x`): the access section's x
/// binding becomes section `attention_x`'s workgroup copy; returns the source, the prologue's call and the section's
/// definitions.
fn attention_x_source(src: String, l: DecodeLayout, threads: u32) -> (String, String, Vec<(&'static str, String)>) {
    const X_BINDING: &str = "@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;\n";
    assert_eq!(src.matches(X_BINDING).count(), 1, "linear_attention_o: the access section must read x in 16-byte loads");
    let src = src.replace(X_BINDING, "") + section("attention_x");
    let stores = [l.kv.wgsl_store_head("store_new_k", "att_kcache", l.head_dim, "part_at", threads), l.kv.wgsl_store_head("store_new_v", "att_vcache", l.head_dim, "part_at", threads)].concat();
    let defs = vec![
        ("KV_WORD", l.kv.wgsl_word().to_string()),
        ("KV_STORES", stores),
        ("X_HEADS", l.heads.to_string()),
        ("X_HEAD_DIM", l.head_dim.to_string()),
        ("X_CHUNK", l.chunk.to_string()),
        ("X_CHUNKS", l.n_chunks.to_string()),
        ("X_KV_HEADS", (l.heads / l.n_rep).to_string()),
        ("X_KV_STRIDE", l.kv_stride.to_string()),
        ("X_K_COL", l.k_col.to_string()),
        ("X_V_COL", l.v_col.to_string()),
        ("X_SUMS", attention_x_sums(l).max(1).to_string()),
    ];
    (src, "    combine_attention_x(tid, g == 0u);".to_string(), defs)
}

/// Words of section `attention_x`'s own array of chunk sums: none where they fit in x (at most head_dim chunks).
fn attention_x_sums(l: DecodeLayout) -> u32 {
    if l.n_chunks <= l.head_dim { 0 } else { l.rows * l.heads * l.n_chunks }
}

/// The shape of `linear_attention_o`'s workgroups: 16 weight rows each (256 threads, 64 along K), so that fewer
/// workgroups re-read the partials than the plain M = 2 shape's 4 rows would have.
pub const ATTENTION_O_SHAPE: SmallMShape = SmallMShape { threads: 256, k_threads: 64, rows_per_thread: 4 };

/// `linear_small_m(attention, w, y, m, epilogue)` where `attention` is the self-attention output that
/// `attention_decode_appending` would have produced from `partials`: every workgroup combines the partials into
/// workgroup memory itself (as `decode_combine` does) and the first writes the step's new keys into `k_cache` /
/// `v_cache` (`qinfo` and `seqs` as the attention's), so the attention's combine pass is not dispatched (issue 17's
/// second fusion). None where this device or layout cannot take it: q8 caches (their blocks need a reduction this
/// prologue does not do), rows of x the access cannot load in 16-byte words, or workgroup memory over the limit.
#[allow(clippy::too_many_arguments)]
pub fn linear_attention_o(
    gpu: &Gpu,
    partials: &DecodePartials,
    qinfo: &GpuBuffer,
    seqs: &GpuBuffer,
    k_cache: &GpuBuffer,
    v_cache: &GpuBuffer,
    w: &GpuMatrix,
    y: &GpuBuffer,
    m: u32,
    epilogue: LinearEpilogue,
    shape: SmallMShape,
) -> Option<Dispatch> {
    let l = partials.layout;
    assert_eq!(l.rows, m, "linear_attention_o: the partials hold {} rows, not {m}", l.rows);
    assert_eq!(l.heads * l.head_dim, w.cols, "linear_attention_o: {} heads of {} are not the matrix's {} columns", l.heads, l.head_dim, w.cols);
    let variant = SmallMVariant { attention_x: Some(l), ..small_m_variant(gpu, w, m, epilogue, shape, false, false) };
    let x_words = m * w.cols + m * l.heads * (l.n_chunks + 2) + attention_x_sums(l).max(1);
    let red_words = shape.round_words(shape.round_rows(m)) + if shape.reduce_rounds(m) > 1 { shape.total_words(m) } else { 0 };
    let fits = l.kv != KvFormat::Q8
        && matches!(variant.access, SmallMAccess::Vec8 | SmallMAccess::BlockVec4 | SmallMAccess::Cols8Vec4)
        && (1..=SMALL_M_MAX).contains(&m)
        && shape.fits(m)
        && (x_words + red_words) * 4 <= gpu.limits.max_compute_workgroup_storage_size;
    if !fits {
        return None;
    }
    let out_cols = match epilogue {
        LinearEpilogue::SwiGlu => w.rows / 2,
        _ => w.rows,
    };
    assert!(y.size >= m as u64 * out_cols as u64 * 4, "linear_attention_o: y holds fewer than {m} × {out_cols} f32");
    let pipeline = gpu.variant_pipeline(variant);
    let rows = shape.rows();
    let groups = match epilogue {
        LinearEpilogue::SwiGlu => out_cols.div_ceil(rows / 2),
        _ => w.rows.div_ceil(rows),
    };
    let params = Params { m, n: w.rows, k: w.cols, stride: w.row_stride_words(), out_cols, groups, tiles_n: 0, eps: 0.0 };
    Some(gpu.dispatch(&pipeline, &params, &[&partials.scratch, &w.data, y, qinfo, seqs, k_cache, v_cache], grid_1d(groups)))
}

/// A benchmark probe of the small-M kernel (`linear_small_m_probed`, `bench_linear --probe`): the same kernel with
/// x's loads, the weights' loads or both turned into loads of one address (every lane reads the same 16 bytes, and
/// the values differ per lane only by arithmetic on the index), to time what the rest of the kernel costs. Its
/// results are wrong by design; nothing but benchmarks uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SmallMProbe {
    BroadcastX,
    BroadcastW,
    BroadcastBoth,
}

/// A small-M variant under a probe: the pipeline-cache key of `linear_small_m_probed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProbedSmallMVariant {
    pub variant: SmallMVariant,
    pub probe: SmallMProbe,
}

impl ProbedSmallMVariant {
    /// The probed source, or None where the variant's access sections have no probe (x: the 16-byte paths; weights:
    /// f16w and quantized without f16 arithmetic).
    pub fn probed_source(&self) -> Option<String> {
        let mut src = self.variant.source();
        let (x, w) = match self.probe {
            SmallMProbe::BroadcastX => (true, false),
            SmallMProbe::BroadcastW => (false, true),
            SmallMProbe::BroadcastBoth => (true, true),
        };
        // (original, replacement) per access section; a probe applies when one of its pairs matched.
        let x_pairs = [
            ("select(vec4<f32>(0.0), x[(row0 + m) * n + min(v, n - 1u)], v < n)", "x[0u] + vec4<f32>(f32(v))"),
            ("return Chunk(x[b], x[b + 1u]);", "return Chunk(x[0u] + vec4<f32>(f32(b)), x[0u]);"),
        ];
        let w_pairs = [
            ("fn load_w(row: u32, c: u32) -> vec4<u32> { return w[row * (p.stride / 4u) + c]; }", "fn load_w(row: u32, c: u32) -> vec4<u32> { return w[0u] ^ vec4<u32>(row + c); }"),
            ("let q = w[row * (p.stride / 4u) + c];", "let q = w[0u] ^ vec4<u32>(row + c);"),
            ("fn load_w(row: u32, c: u32) -> vec2<u32> { return w[row * (p.stride / 2u) + c]; }", "fn load_w(row: u32, c: u32) -> vec2<u32> { return w[0u] ^ vec2<u32>(row + c); }"),
            ("fn load_w(row: u32, c: u32) -> u32 { return w[row * p.stride + c]; }", "fn load_w(row: u32, c: u32) -> u32 { return w[0u] ^ (row + c); }"),
        ];
        for (on, pairs) in [(x, &x_pairs[..]), (w, &w_pairs[..])] {
            if on {
                let hit = pairs.iter().find(|(from, _)| src.contains(from))?;
                src = src.replace(hit.0, hit.1);
            }
        }
        Some(src)
    }
}

impl KernelVariant for ProbedSmallMVariant {
    fn entry_point(&self) -> &'static str {
        "small_m"
    }

    fn source(&self) -> String {
        self.probed_source().expect("linear_small_m_probed checks that the probe applies")
    }
}

/// What a benchmark may change in the small-M kernel beyond its workgroup shape (`linear_small_m_tuned`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SmallMTuning {
    /// Chunks per row each thread loads per round, in place of `SmallMVariant::new`'s rule (≥ 1; rounds past the
    /// row's end are masked, so any value is correct).
    pub unroll: Option<u32>,
    /// A probe (`SmallMProbe`): results wrong by design.
    pub probe: Option<SmallMProbe>,
}

/// The small-M kernel with `shape` and `tuning` (benchmarks only); Err where the probe does not apply to this
/// matrix's access path or the unroll is 0.
#[allow(clippy::too_many_arguments)]
pub fn linear_small_m_tuned(gpu: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, epilogue: LinearEpilogue, shape: SmallMShape, tuning: SmallMTuning) -> Result<Dispatch, String> {
    if tuning.unroll == Some(0) {
        return Err("unroll must be at least 1".into());
    }
    let tune = |v: SmallMVariant| SmallMVariant { unroll: tuning.unroll.unwrap_or(v.unroll), ..v };
    match tuning.probe {
        None => Ok(small_m_dispatch_with(gpu, x, w, y, m, epilogue, shape, None, 1, |v| gpu.variant_pipeline(tune(v)))),
        Some(probe) => {
            let key = |v: SmallMVariant| ProbedSmallMVariant { variant: tune(v), probe };
            if key(small_m_variant(gpu, w, m, epilogue, shape, false, false)).probed_source().is_none() {
                return Err(format!("no {probe:?} probe for {:?} weights with {} columns", w.format, w.cols));
            }
            Ok(small_m_dispatch_with(gpu, x, w, y, m, epilogue, shape, None, 1, |v| gpu.variant_pipeline(key(v))))
        }
    }
}

/// The variant `linear` compiles for this matrix, M, epilogue and shape on this device.
fn small_m_variant(gpu: &Gpu, w: &GpuMatrix, m: u32, epilogue: LinearEpilogue, shape: SmallMShape, norm: bool, blocked: bool) -> SmallMVariant {
    let arith = small_m_arith(gpu, w.format);
    SmallMVariant::with_access(small_m_access(gpu, w.format, w.cols), w.format, w.cols, m, epilogue, shape, norm, blocked, arith).with_prefetch(gpu.matvec_prefetch())
}

/// How `linear` reads a matrix's rows on this device: `SmallMAccess::preferred` where the kernel multiplies in f32
/// (`Gpu::matvec_cols8` forces 8-column quantized chunks on or off), 16-byte blocks under f16 or integer arithmetic.
pub fn small_m_access(gpu: &Gpu, format: WeightFormat, k: u32) -> SmallMAccess {
    match (small_m_arith(gpu, format), gpu.matvec_cols8()) {
        (Arith::F32, None) => SmallMAccess::preferred(format, k),
        (Arith::F32, Some(true)) => SmallMAccess::cols8(format, k),
        _ => SmallMAccess::new(format, k),
    }
}

/// The small-M kernel over `blocks` consecutive blocks of `m` rows of x and y (the grid's z).
#[allow(clippy::too_many_arguments)]
pub(super) fn small_m_dispatch(gpu: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, epilogue: LinearEpilogue, shape: SmallMShape, norm: Option<(&GpuBuffer, f32)>, blocks: u32) -> Dispatch {
    small_m_dispatch_with(gpu, x, w, y, m, epilogue, shape, norm, blocks, |v| gpu.variant_pipeline(v))
}

/// `small_m_dispatch` with the pipeline made from the variant by `pipeline` (the plain kernel, or a probe).
#[allow(clippy::too_many_arguments)]
fn small_m_dispatch_with(
    gpu: &Gpu,
    x: &GpuBuffer,
    w: &GpuMatrix,
    y: &GpuBuffer,
    m: u32,
    epilogue: LinearEpilogue,
    shape: SmallMShape,
    norm: Option<(&GpuBuffer, f32)>,
    blocks: u32,
    pipeline: impl FnOnce(SmallMVariant) -> std::sync::Arc<wgpu::ComputePipeline>,
) -> Dispatch {
    assert!(m <= SMALL_M_MAX, "linear_small_m: m = {m} > {SMALL_M_MAX}");
    assert!(shape.fits(m), "linear_small_m: {shape:?} does not fit m = {m}");
    let out_cols = check_shapes(x, w, y, m * blocks, epilogue);
    let pipeline = pipeline(small_m_variant(gpu, w, m, epilogue, shape, norm.is_some(), blocks > 1));
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

/// The generated parts of the small-M kernel for one specialisation.
struct SmallMCode {
    decls: String,
    body: String,
    /// The partial sums' meeting, after the loop: every output's total then lies where `total(o)` reads it.
    reduce: String,
    /// `fn total(o: u32) -> f32` (output o, or OUTS + m for row m's squared-norm sum), and the totals' array when
    /// the sums meet in rounds.
    totals: String,
}

/// Weights per scale of a quantized format (the `GROUP` constant; unused by f32 and f16).
pub(super) fn quant_group(format: WeightFormat) -> u32 {
    match format {
        WeightFormat::Quant(q) => q.group(),
        _ => 0,
    }
}

/// Straight-line WGSL for `m` rows of x, `rpt` weight rows per thread and `unroll` chunks per round: all loads of a
/// round first (clamped chunk indices, so they need no branch), then the dot products, masked for chunks past the
/// row. Accumulators are named scalars (acc_<row>_<m>), so nothing lives in an indexed array. Quantized chunks are
/// loaded packed with their group's scale, dequantized once for all M rows, and the scale multiplies each chunk's
/// dot product. With `int8` (`Arith::Int8Dot`) each x chunk is quantized to int8 once for all `rpt` rows, the
/// weights' words are masked into signed bytes, and a chunk's integer dot product times both scales joins the
/// accumulator. With `half` (`Arith::F16`) weights are dequantized into f16 and each x chunk is converted to f16
/// once for all `rpt` rows; a quantized chunk's products are summed in f16 and added to the accumulator times the
/// scale, an f16w round's products (≤ 4 chunks of 8) are summed in f16 (t_<row>_<m>) and added once per round.
///
/// The K lanes' partial sums meet in `red` for `mb` rows of x at a time (`SmallMShape::reduce_rounds`): all M at once
/// (each total then stays in its row's lane 0), or in rounds whose totals go to `tot`.
#[allow(clippy::too_many_arguments)]
fn small_m_code(m: u32, rpt: u32, unroll: u32, k_threads: u32, norm: bool, quant: bool, half: bool, int8: bool, prefetch: bool, mb: u32) -> SmallMCode {
    let mut decls = Emitter::new(1);
    let mut body = Emitter::new(2);
    let mut reduce = Emitter::new(1);
    for i in 0..rpt {
        emit!(decls, "let row_{i} = slot_row(g, {i}u * G + rg);");
        for mi in 0..m {
            emit!(decls, "var acc_{i}_{mi} = 0.0;");
        }
    }
    if norm {
        for mi in 0..m {
            emit!(decls, "var sq_{mi} = 0.0;");
        }
    }
    for j in 0..unroll {
        emit!(body, "let c_{j} = min(c + {j}u * KT, nc - 1u);");
    }
    // In f16 the quantized values are scaled down exactly (`QBACK`); the scale takes that back.
    let back = if half { " * QBACK" } else { "" };
    // Row i's weights (and scale) of chunk `c{j}` into `{w}_{i}_{j}` (and `{s}_{i}_{j}`), after `bind` ("let ",
    // "var " or "" to assign).
    let load_round = |e: &mut Emitter, j: u32, bind: &str, (w, s): (&str, &str), c: &str| {
        for i in 0..rpt {
            emit!(e, "{bind}{w}_{i}_{j} = load_w(row_{i}, {c}_{j});");
            if quant {
                emit!(e, "{bind}{s}_{i}_{j} = load_scale(row_{i}, {c}_{j}){back};");
            }
        }
    };
    if prefetch {
        // The first round's weights before the loop; each round takes its own and loads the next round's (clamped:
        // the last round loads a chunk it never uses).
        for j in 0..unroll {
            emit!(decls, "let c0_{j} = min(kt + {j}u * KT, nc - 1u);");
            load_round(&mut decls, j, "var ", ("pw", "ps"), "c0");
        }
        for j in 0..unroll {
            emit!(body, "let cn_{j} = min(c + (U + {j}u) * KT, nc - 1u);");
            for i in 0..rpt {
                emit!(body, "let w_{i}_{j} = pw_{i}_{j};");
                if quant {
                    emit!(body, "let s_{i}_{j} = ps_{i}_{j};");
                }
            }
            load_round(&mut body, j, "", ("pw", "ps"), "cn");
        }
    }
    for j in 0..unroll {
        if !prefetch {
            load_round(&mut body, j, "let ", ("w", "s"), "c");
        }
        for mi in 0..m {
            emit!(body, "let xr_{mi}_{j} = load_x({mi}u, c_{j});");
        }
    }
    for j in 0..unroll {
        // Chunk j of the round exists when c + j·KT < nc (always for j = 0).
        let exists = format!("c + {j}u * KT < nc");
        let mask = |e: String| if j == 0 { e } else { format!("select(0.0, {e}, {exists})") };
        if quant || half {
            let dequant = if half { "half_w" } else if int8 { "int_w" } else { "dequant" };
            for i in 0..rpt {
                emit!(body, "let d_{i}_{j} = {dequant}(w_{i}_{j});");
            }
        }
        for mi in 0..m {
            if norm {
                emit!(body, "sq_{mi} += {};", mask(format!("chunk_dot(xr_{mi}_{j}, xr_{mi}_{j})")));
            }
            emit!(body, "let x_{mi}_{j} = scale_x(xr_{mi}_{j}, c_{j});");
            if int8 {
                emit!(body, "let q_{mi}_{j} = quant_x(x_{mi}_{j});");
            }
            if half {
                // An f16w round sums its chunks in f16, so a chunk past the row enters as zeros; a quantized chunk's
                // sum is masked in f32 as in the f32 arithmetic.
                let keep = if j == 0 || quant { "true".to_string() } else { exists.clone() };
                emit!(body, "let h_{mi}_{j} = half_x(x_{mi}_{j}, {keep});");
            }
            for i in 0..rpt {
                match (half, quant) {
                    _ if int8 => {
                        emit!(body, "acc_{i}_{mi} += {};", mask(format!("f32(idot(q_{mi}_{j}, d_{i}_{j})) * (q_{mi}_{j}.s * s_{i}_{j})")));
                    }
                    (false, false) => {
                        emit!(body, "acc_{i}_{mi} += {};", mask(format!("chunk_dot(x_{mi}_{j}, w_{i}_{j})")));
                    }
                    (false, true) => {
                        emit!(body, "acc_{i}_{mi} += {};", mask(format!("chunk_dot(x_{mi}_{j}, d_{i}_{j}) * s_{i}_{j}")));
                    }
                    (true, true) => {
                        emit!(body, "acc_{i}_{mi} += {};", mask(format!("hsum(hdot_start(h_{mi}_{j}, d_{i}_{j})) * s_{i}_{j}")));
                    }
                    (true, false) if j == 0 => {
                        emit!(body, "var t_{i}_{mi} = hdot_start(h_{mi}_{j}, d_{i}_{j});");
                    }
                    (true, false) => {
                        emit!(body, "t_{i}_{mi} = hdot_more(h_{mi}_{j}, d_{i}_{j}, t_{i}_{mi});");
                    }
                }
            }
        }
    }
    if half && !quant {
        for i in 0..rpt {
            for mi in 0..m {
                emit!(body, "acc_{i}_{mi} += hsum(t_{i}_{mi});");
            }
        }
    }
    let lanes: Vec<String> = (0..k_threads).map(|j| format!("red[b + {j}u]")).collect();
    let lane_sum = crate::kernels::wgsl::tree_sum(&lanes);
    let rounds: Vec<(u32, u32)> = (0..m).step_by(mb.max(1) as usize).map(|m0| (m0, (m0 + mb).min(m))).collect();
    let totals = if rounds.len() == 1 {
        for i in 0..rpt {
            for mi in 0..m {
                emit!(reduce, "red[(({i}u * G + rg) * M + {mi}u) * LANES + kt] = acc_{i}_{mi};");
            }
        }
        if norm {
            // Every thread group saw the same x chunks: group 0's squares are the row's.
            reduce.block("if rg == 0u", |reduce| {
                for mi in 0..m {
                    emit!(reduce, "red[(OUTS + {mi}u) * LANES + kt] = sq_{mi};");
                }
            });
        }
        reduce.line("workgroupBarrier();");
        reduce.line("let sums = select(OUTS, OUTS + M, NORM);");
        reduce.block("for (var o = tid; o < sums; o += T)", |reduce| {
            reduce.line("let b = o * LANES;");
            emit!(reduce, "red[b] = {lane_sum};");
        });
        reduce.line("workgroupBarrier();");
        "fn total(o: u32) -> f32 { return red[o * LANES]; }\n".to_string()
    } else {
        // Round (m0, m1): slot s of `red` holds weight-row slot s / MB (R: the squared-norm sums) of x row
        // m0 + s % MB; its total goes to tot[(s / MB) · M + m0 + s % MB] (= OUTS + m for the norm slot).
        for (r, &(m0, m1)) in rounds.iter().enumerate() {
            if r > 0 {
                // The previous round's lane sums have read `red`.
                reduce.line("workgroupBarrier();");
            }
            for i in 0..rpt {
                for mi in m0..m1 {
                    emit!(reduce, "red[(({i}u * G + rg) * {mb}u + {}u) * LANES + kt] = acc_{i}_{mi};", mi - m0);
                }
            }
            if norm {
                reduce.block("if rg == 0u", |reduce| {
                    for mi in m0..m1 {
                        emit!(reduce, "red[(R * {mb}u + {}u) * LANES + kt] = sq_{mi};", mi - m0);
                    }
                });
            }
            reduce.line("workgroupBarrier();");
            let slots = if norm { "(R + 1u)" } else { "R" };
            emit!(reduce, "for (var o = tid; o < {slots} * {mb}u; o += T) {{");
            reduce.line("    let b = o * LANES;");
            emit!(reduce, "    if o % {mb}u < {}u {{", m1 - m0);
            emit!(reduce, "        tot[(o / {mb}u) * M + {m0}u + o % {mb}u] = {lane_sum};");
            reduce.line("    }");
            reduce.line("}");
        }
        reduce.line("workgroupBarrier();");
        "var<workgroup> tot: array<f32, OUTS + M>;\n\nfn total(o: u32) -> f32 { return tot[o]; }\n".to_string()
    };
    SmallMCode { decls: decls.finish(), body: body.finish(), reduce: reduce.finish(), totals }
}
