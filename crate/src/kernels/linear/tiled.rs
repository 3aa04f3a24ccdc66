//! The tiled matrix–matrix schedule of `linear` (any M; the encoder and the prompt prefill where tensor cores are
//! absent): a TM × TN output tile per workgroup, K staged through workgroup memory (`shaders/linear.wgsl`, section
//! `tiled`).
use crate::gpu::{grid_1d, specialize, Dispatch, Gpu, GpuBuffer, KernelVariant};

use super::small_m::quant_group;
use super::{check_shapes, section, LinearEpilogue, Params};
use crate::kernels::wgsl::Emitter;
use crate::kernels::{GpuMatrix, WeightFormat};
use crate::quant::QuantBits;

use crate::kernels::plan::TILED_GROUPS;

/// Work split of the tiled schedule: a workgroup computes `tm` x rows × `tn` weight rows (`tn / 2`
/// outputs under SwiGLU) and stages `bk` columns of K per barrier. Its threads form `kg` groups that split each
/// stage's columns between them (partial sums added in workgroup memory at the end); in each group
/// (`tm / rm`)·(`tn / 8`) threads own `rm` × 8 outputs each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

    /// The largest shape that still gives `TILED_GROUPS` workgroups, else the one with the most workgroups.
    /// Encoder (f16w, K = 1024 / 4096): M = 1001 takes LARGE for N = 4096 and SwiGLU 8192, MEDIUM for 3072, SMALL
    /// for 1024; M = 101 takes SMALL for SwiGLU 8192, TINY for 4096, MICRO for 3072 and 1024 (128 workgroups of
    /// 256 threads: the most this M allows without splitting K across workgroups).
    pub fn for_problem(m: u32, w_rows: u32, epilogue: LinearEpilogue) -> TiledShape {
        let most = TiledShape::ALL.into_iter().max_by_key(|s| s.groups(m, w_rows, epilogue)).unwrap_or(TiledShape::MICRO);
        TiledShape::ALL.into_iter().find(|s| s.groups(m, w_rows, epilogue) >= TILED_GROUPS).unwrap_or(most)
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
    let pipeline = gpu.variant_pipeline(TiledVariant { format: w.format, access: TiledAccess::new(w.format, w.cols, shape), epilogue, shape });
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

/// How the tiled kernel reads x and W: 16-byte x loads (and 8-byte f16 weight loads) need whole 4-column groups in
/// every row; 16-byte f16 weight loads whole 8-column groups, and a stage of whole 8-column units; else element loads.
/// Quantized weights are read in staging units of 4 columns (q8: one word; q4: half a word) or, for q4 where
/// `Vec8` applies, 8 (one word); only x's loads depend on K.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TiledAccess {
    Vec8,
    Vec4,
    Scalar,
}

impl TiledAccess {
    pub fn new(format: WeightFormat, k: u32, shape: TiledShape) -> TiledAccess {
        let unit8 = match format {
            WeightFormat::F16 => k.is_multiple_of(8),
            WeightFormat::Quant(q) => q.bits() == QuantBits::Q4 && k.is_multiple_of(4),
            WeightFormat::F32 => false,
        };
        match format {
            _ if unit8 && shape.bk.is_multiple_of(8) => TiledAccess::Vec8,
            _ if k.is_multiple_of(4) => TiledAccess::Vec4,
            _ => TiledAccess::Scalar,
        }
    }

    fn name(self) -> &'static str {
        match self {
            TiledAccess::Vec8 => "vec8",
            TiledAccess::Vec4 => "vec4",
            TiledAccess::Scalar => "scalar",
        }
    }

    /// Weight columns per staged load.
    fn w_unit(self) -> u32 {
        if self == TiledAccess::Vec8 { 8 } else { 4 }
    }
}

/// One compiled specialisation of the tiled kernel: the WGSL generator's input and the pipeline-cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TiledVariant {
    pub format: WeightFormat,
    pub access: TiledAccess,
    pub epilogue: LinearEpilogue,
    pub shape: TiledShape,
}

impl KernelVariant for TiledVariant {
    fn entry_point(&self) -> &'static str {
        "tiled"
    }

    fn source(&self) -> String {
        let TiledVariant { format, access, epilogue, shape } = *self;
        let TiledShape { tm, tn, rm, bk, kg } = shape;
        let src = match format {
            WeightFormat::Quant(q) => {
                let w_section = match (q.bits(), access) {
                    (QuantBits::Q8, _) => "tiled_w_q8",
                    (QuantBits::Q4, TiledAccess::Vec8) => "tiled_w_q4_unit8",
                    (QuantBits::Q4, _) => "tiled_w_q4_unit4",
                };
                let x_section = if access == TiledAccess::Scalar { "tiled_x_scalar" } else { "tiled_x_vec4" };
                [section("common"), section(x_section), section("qdecode"), section("tiled_w_quant"), section(w_section), section("tiled")].concat()
            }
            _ => format!("{}{}{}", section("common"), section(&format!("tiled_access_{}_{}", format.name(), access.name())), section("tiled")),
        };
        let red = if kg > 1 { format!("var<workgroup> red: array<f32, {}>;", tm * tn) } else { String::new() };
        specialize(
            &src,
            &[
                ("PARAMS", Params::wgsl()),
                ("EPILOGUE", epilogue.code().to_string()),
                ("TM", tm.to_string()),
                ("TN", tn.to_string()),
                ("RM", rm.to_string()),
                ("BK", bk.to_string()),
                ("KG", kg.to_string()),
                ("THREADS", shape.threads().to_string()),
                ("RED_DECL", red),
                ("BODY", tiled_code(shape, access.w_unit(), epilogue)),
                ("GROUP", quant_group(format).to_string()),
            ],
        )
    }
}

/// Straight-line body of the tiled kernel for one shape, `w_unit` (4 or 8) weight columns per load, and the
/// epilogue: per-thread load slots (global → registers → k-major workgroup memory; rows past M or N are clamped
/// and their columns pushed past K, which reads as 0), the stage loop with the next stage's loads issued before
/// this stage's FMAs into named accumulators acc_<row>_<col>, the sum over the K groups, and the bounds-checked
/// stores.
fn tiled_code(shape: TiledShape, w_unit: u32, epilogue: LinearEpilogue) -> String {
    let TiledShape { tm, tn, rm, bk, kg } = shape;
    let threads = shape.threads();
    let comp = ["x", "y", "z", "w"];
    let mut s = Emitter::new(1);
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
            emit!(s, "let {c}e_{i} = tid + {}u;", i * threads);
            emit!(s, "let {c}row_{i} = {row};");
            // Threads past the stage's units (last slot only) load nothing.
            let in_stage = if (i + 1) * threads > sl.units { format!(" && {c}e_{i} < {}u", sl.units) } else { String::new() };
            emit!(s, "let {c}ok_{i} = {c}row_{i} < {bound}{in_stage};");
            emit!(s, "let {c}r_{i} = min({c}row_{i}, {bound} - 1u);");
            emit!(s, "let {c}k_{i} = {unit}u * ({c}e_{i} % {}u);", sl.per_row);
            let stride = if c == 'x' { "XS4" } else { "WS4" };
            emit!(s, "let {c}st_{i} = {c}k_{i} * {stride} + {c}e_{i} / {}u / 4u;", sl.per_row);
            emit!(s, "let {c}c_{i} = {c}e_{i} / {}u % 4u;", sl.per_row);
        }
    }
    // Loads of the stage at `k` into the slot registers (declared with `var` the first time).
    let loads = |l: &mut Emitter, k: &str, decl: bool| {
        let v = if decl { "var " } else { "" };
        let t = if decl { "wl0" } else { "wl" };
        for i in 0..xs.units.div_ceil(threads) {
            emit!(l, "{v}xv_{i} = tiled_load_x(xr_{i}, select(p.k, {k} + xk_{i}, xok_{i}));");
        }
        for i in 0..ws.units.div_ceil(threads) {
            if w_unit == 8 {
                emit!(l, "let {t}_{i} = tiled_load_w8(wr_{i}, select(p.k, {k} + wk_{i}, wok_{i}));");
                emit!(l, "{v}wv_{i} = {t}_{i}.lo;");
                emit!(l, "{v}wh_{i} = {t}_{i}.hi;");
            } else {
                emit!(l, "{v}wv_{i} = tiled_load_w(wr_{i}, select(p.k, {k} + wk_{i}, wok_{i}));");
            }
        }
    };
    loads(&mut s, "0u", true);
    for r in 0..rm {
        for c in 0..8 {
            emit!(s, "var acc_{r}_{c} = 0.0;");
        }
    }
    let sub = bk / kg;
    emit!(s, "let xa = kg * {}u * XS4 + ty;", sub);
    emit!(s, "let wa = kg * {}u * WS4 + tx;", sub);
    s.block("for (var k0 = 0u; k0 < p.k; k0 += BK)", |s| {
        s.line("workgroupBarrier();");
        for sl in [&xs, &ws] {
            let c = sl.name;
            let (arr, stride) = if c == 'x' { ("xs", "XS4") } else { ("ws", "WS4") };
            for i in 0..sl.units.div_ceil(threads) {
                let regs: Vec<String> = if c == 'w' && w_unit == 8 { vec![format!("wv_{i}"), format!("wh_{i}")] } else { vec![format!("{c}v_{i}")] };
                let store = |s: &mut Emitter| {
                    for (h, reg) in regs.iter().enumerate() {
                        for (j, cc) in comp.iter().enumerate() {
                            let off = 4 * h + j;
                            emit!(s, "{arr}[{c}st_{i} + {off}u * {stride}][{c}c_{i}] = {reg}.{cc};");
                        }
                    }
                };
                // The last slot may cover only some threads.
                if (i + 1) * threads > sl.units {
                    s.block(&format!("if {c}e_{i} < {}u", sl.units), store);
                } else {
                    store(s);
                }
            }
        }
        s.line("workgroupBarrier();");
        s.line("let kn = k0 + BK;");
        loads(s, "kn", false);
        for k in 0..sub {
            emit!(s, "let a0_{k} = xs[xa + {k}u * XS4];");
            if rm == 8 {
                emit!(s, "let a1_{k} = xs[xa + {k}u * XS4 + TM / 8u];");
            }
            emit!(s, "let b0_{k} = ws[wa + {k}u * WS4];");
            emit!(s, "let b1_{k} = ws[wa + {k}u * WS4 + TN / 8u];");
            for r in 0..rm {
                for c in 0..8 {
                    emit!(s, "acc_{r}_{c} += a{}_{k}.{} * b{}_{k}.{};", r / 4, comp[(r % 4) as usize], c / 4, comp[c % 4]);
                }
            }
        }
    });
    if kg > 1 {
        // One group at a time adds its sums into group 0's (workgroup memory holds one tile of partials).
        s.block("for (var g = 1u; g < KG; g++)", |s| {
            s.block("if kg == g", |s| {
                for r in 0..rm {
                    for c in 0..8 {
                        emit!(s, "red[{}u * GROUP + lt] = acc_{r}_{c};", r * 8 + c);
                    }
                }
            });
            s.line("workgroupBarrier();");
            s.block("if kg == 0u", |s| {
                for r in 0..rm {
                    for c in 0..8 {
                        emit!(s, "acc_{r}_{c} += red[{}u * GROUP + lt];", r * 8 + c);
                    }
                }
            });
            s.line("workgroupBarrier();");
        });
        s.block("if kg != 0u", |s| s.line("return;"));
    }
    // Columns 4·tx.. and TN/2 + 4·tx.. of the tile; SwiGLU pairs column c (gate) with c + 4 (up).
    if epilogue == LinearEpilogue::SwiGlu {
        for c in 0..4 {
            emit!(s, "let o_{c} = TN / 2u * tn + 4u * tx + {c}u;");
        }
    } else {
        for c in 0..8 {
            let half = if c < 4 { "" } else { " + TN / 2u" };
            emit!(s, "let n_{c} = TN * tn + 4u * tx + {}u{half};", c % 4);
        }
    }
    for r in 0..rm {
        let half = if r < 4 { "" } else { " + TM / 2u" };
        emit!(s, "let m_{r} = TM * tm + 4u * ty + {}u{half};", r % 4);
        s.block(&format!("if m_{r} < p.m"), |s| {
            if epilogue == LinearEpilogue::SwiGlu {
                for c in 0..4 {
                    emit!(s, "if o_{c} < p.out_cols {{ y[m_{r} * p.out_cols + o_{c}] = silu(acc_{r}_{c}) * acc_{r}_{}; }}", c + 4);
                }
            } else {
                for c in 0..8 {
                    emit!(s, "if n_{c} < p.n {{ write_out(m_{r}, n_{c}, acc_{r}_{c}); }}");
                }
            }
        });
    }
    s.finish()
}
