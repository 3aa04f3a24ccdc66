//! `shaders/linear_coop.wgsl`: `linear` (y = x · Wᵀ with the same epilogues) on tensor cores through wgpu's
//! experimental cooperative matrices, for f16 and block-quantized (q8, q4) weights on devices where
//! `Gpu::tensor_cores()` holds (native only: browsers have no cooperative matrices, so this never runs there).
//! Quantized weights are dequantized with their group's scale into the f16 staged tile (`crate::quant` defines the
//! blocks).
//!
//! Numerics: x is rounded to f16 when staged (W already is f16); products are exact in f32 and summed in f32
//! accumulators. Against the plain kernel's f32 x this adds, per output, an error of at most
//! 2⁻¹¹ · Σ_k |x[m,k]·W[n,k]| (half an f16 ulp relative per x element; below 6·10⁻⁵, f16's subnormal range,
//! instead 2⁻²⁵ absolute per element, times |W[n,k]|), i.e. a relative error ≲ 5·10⁻⁴ of the absolute dot
//! product, typically ~2⁻¹¹/√K of it for random signs; |x| must stay below 65504 (f16's largest finite value)
//! or the product becomes ±inf. A quantized weight q·s is exact in f32 and rounded to f16 when staged (q has at
//! most 8 bits, s 11): the same bound again for W, so about twice the f16w figure against the dequantized matrix.
use crate::kernels::wgsl::Emitter;

use crate::kernels::coop_code::{staged_reduction, Staging};

use crate::gpu::{specialize, Dispatch, Gpu, GpuBuffer, KernelVariant};
use super::{check_shapes, LinearEpilogue};
use crate::kernels::{GpuMatrix, WeightFormat};
use crate::quant::QuantBits;

use crate::kernels::plan::COOP_LINEAR_GROUPS;

const SOURCE: &str = include_str!("../../../../shaders/linear_coop.wgsl");

/// Smallest M that `linear_rows` sends to tensor cores with quantized weights (where the device has them): decoder
/// steps of batch 8 (M = 16), the encoder and prefill; from there to `SMALL_M_MAX` a small-M tile (16 rows of x, K
/// split between the subgroups). Below, the matrix–vector kernel with its large-M shapes (`SmallMShape::for_rows`)
/// is faster: the decoder's whole set of matrices (H100, `bench_linear --decoder`) took 1.49 / 2.11 / 4.16 ms per
/// pass at M = 4 / 8 / 16 on it for q4, against 3.84 / 3.85 / 3.90 on the tensor cores; at M = 16 q4's whole step
/// ran 191.8 greedy steps/s on the tensor cores against 180.3 on the matrix–vector kernel (stop 29). f16 weights
/// take them from `coop_m_min`'s 17 rows.
pub const COOP_M_MIN: u32 = 16;

/// Smallest M that `linear_rows` sends to tensor cores for weights in `format` (`Gpu::coop_m_min` overrides it for
/// measurements): `COOP_M_MIN` for quantized weights; one row past `SMALL_M_MAX` for f16 weights, whose
/// matrix–vector kernel takes the decoder's whole set of matrices at M = 16 in 2.78 ms per pass against the tensor
/// cores' 3.11 (109 dispatches against 164: on tensor cores every fused norm is a dispatch of its own), and batch 8
/// ran 247.1–248.5 greedy steps/s on it against 244.5–245.0 (H100, stop 29, `dia-bench --config full --numerics
/// f16w --batch 8 --steps 200`, alternated).
pub fn coop_m_min(format: WeightFormat) -> u32 {
    match format {
        WeightFormat::F16 => super::SMALL_M_MAX + 1,
        _ => COOP_M_MIN,
    }
}

/// The per-subgroup f32 output blocks (8 × 16 × 16).
const OUT_BYTES: u32 = 8 * 256 * 4;

/// Work split: 8 subgroups of 32 in a `sub_m` × `sub_n` × `sub_k` grid, each owning `frag_m` × `frag_n` 16×16
/// accumulators, so a workgroup computes (16·sub_m·frag_m) x rows × (16·sub_n·frag_n) weight rows; a stage holds
/// 32·`sub_k` columns of K, each of the `sub_k` subgroups of a (row, column) block taking 32 of them (their sums
/// meet in the output); `stages` 1 (registers prefetch the next K stage, two barriers per stage) or 2
/// (double-buffered, one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CoopShape {
    pub sub_m: u32,
    pub sub_n: u32,
    pub sub_k: u32,
    pub frag_m: u32,
    pub frag_n: u32,
    pub stages: u32,
}

impl CoopShape {
    /// 128 × 128 (the probe's tile): most arithmetic per staged element.
    pub const LARGE: CoopShape = CoopShape { sub_m: 4, sub_n: 2, sub_k: 1, frag_m: 2, frag_n: 4, stages: 2 };
    /// 64 × 128.
    pub const MEDIUM: CoopShape = CoopShape { sub_m: 2, sub_n: 4, sub_k: 1, frag_m: 2, frag_n: 2, stages: 2 };
    /// 32 × 64: enough workgroups for M ≈ 100.
    pub const SMALL: CoopShape = CoopShape { sub_m: 2, sub_n: 4, sub_k: 1, frag_m: 1, frag_n: 1, stages: 2 };
    /// Largest first; `for_problem` walks this list for M > 16.
    pub const ALL: [CoopShape; 3] = [CoopShape::LARGE, CoopShape::MEDIUM, CoopShape::SMALL];

    /// Small M (decoder steps, M ≤ 16): 16 × 64, K stages of 128 split 4 ways.
    pub const ROWS16_N64: CoopShape = CoopShape { sub_m: 1, sub_n: 2, sub_k: 4, frag_m: 1, frag_n: 2, stages: 2 };
    /// 16 × 32, K stages of 128 split 4 ways: twice the workgroups.
    pub const ROWS16_N32: CoopShape = CoopShape { sub_m: 1, sub_n: 2, sub_k: 4, frag_m: 1, frag_n: 1, stages: 2 };
    /// 16 × 16, K stages of 256 split 8 ways: the most workgroups (not SwiGLU, which pairs two column blocks).
    pub const ROWS16_N16: CoopShape = CoopShape { sub_m: 1, sub_n: 1, sub_k: 8, frag_m: 1, frag_n: 1, stages: 2 };
    /// Largest first; `for_problem` walks this list for M ≤ 16.
    pub const SMALL_M: [CoopShape; 3] = [CoopShape::ROWS16_N64, CoopShape::ROWS16_N32, CoopShape::ROWS16_N16];

    /// x rows per workgroup.
    pub fn tm(self) -> u32 {
        16 * self.sub_m * self.frag_m
    }

    /// Weight rows per workgroup (`tn() / 2` outputs under SwiGLU).
    pub fn tn(self) -> u32 {
        16 * self.sub_n * self.frag_n
    }

    /// Columns of K per stage.
    pub fn ks(self) -> u32 {
        32 * self.sub_k
    }

    /// Staged row stride in halves: `ks()` columns and 8 of padding (bank-conflict-free fragment loads).
    pub fn lds(self) -> u32 {
        self.ks() + 8
    }

    pub fn with_stages(self, stages: u32) -> CoopShape {
        CoopShape { stages, ..self }
    }

    pub fn name(self) -> String {
        let k = if self.sub_k > 1 { format!(".k{}", self.sub_k) } else { String::new() };
        format!("{}x{}{k}.s{}", self.tm(), self.tn(), self.stages)
    }

    /// Bytes of workgroup memory: staged K stages of both operands plus the output blocks.
    pub fn workgroup_bytes(self) -> u32 {
        self.stages * (self.tm() + self.tn()) * self.lds() * 2 + OUT_BYTES
    }

    /// Whether the generator supports this shape: 8 subgroups, a power-of-two `sub_k` ≤ 8, whole passes of 256
    /// invocations over each staged operand with every load width (x: 4 or 1 columns, W: 8 or 2), 1 or 2 stages.
    /// SwiGLU also needs an even `sub_n` (`supports`).
    pub fn fits(self) -> bool {
        let passes_fit = |rows: u32, per_load: u32| {
            let per_row = self.ks() / per_load;
            per_row <= 256 && (256 / per_row) > 0 && rows.is_multiple_of(256 / per_row)
        };
        self.sub_m * self.sub_n * self.sub_k == 8
            && self.sub_k.is_power_of_two()
            && self.frag_m >= 1
            && self.frag_n >= 1
            && [4, 1].into_iter().all(|l| passes_fit(self.tm(), l))
            && [8, 2].into_iter().all(|l| passes_fit(self.tn(), l))
            && (self.stages == 1 || self.stages == 2)
    }

    /// `fits`, and for SwiGLU gate and up subgroups in pairs (an even `sub_n`).
    pub fn supports(self, epilogue: LinearEpilogue) -> bool {
        self.fits() && (epilogue != LinearEpilogue::SwiGlu || self.sub_n.is_multiple_of(2))
    }

    fn tiles_n(self, w_rows: u32, epilogue: LinearEpilogue) -> u32 {
        match epilogue {
            LinearEpilogue::SwiGlu => (w_rows / 2).div_ceil(self.tn() / 2),
            _ => w_rows.div_ceil(self.tn()),
        }
    }

    /// Workgroups for an `m`-row x against `w_rows` weight rows.
    pub fn groups(self, m: u32, w_rows: u32, epilogue: LinearEpilogue) -> u32 {
        self.tiles_n(w_rows, epilogue) * m.div_ceil(self.tm())
    }

    /// The largest tile giving `COOP_LINEAR_GROUPS` workgroups (else the one with the most), double-buffered where
    /// the device's workgroup memory allows it, from `SMALL_M` for M ≤ 16 and `ALL` above; `None` if not even one
    /// stage of any fits.
    pub fn for_problem(gpu: &Gpu, m: u32, w_rows: u32, epilogue: LinearEpilogue) -> Option<CoopShape> {
        let limit = gpu.limits.max_compute_workgroup_storage_size;
        let usable = |s: CoopShape| [2, 1].into_iter().map(|st| s.with_stages(st)).find(|s| s.workgroup_bytes() <= limit);
        let list: &[CoopShape] = if m <= super::SMALL_M_MAX { &CoopShape::SMALL_M } else { &CoopShape::ALL };
        let candidates: Vec<CoopShape> = list.iter().copied().filter(|s| s.supports(epilogue)).filter_map(usable).collect();
        let most = candidates.iter().copied().max_by_key(|s| (s.groups(m, w_rows, epilogue), u32::MAX - s.tm() * s.tn()));
        candidates.iter().copied().find(|s| s.groups(m, w_rows, epilogue) >= COOP_LINEAR_GROUPS).or(most)
    }
}

/// How the kernel reads x and W. f16 weights: 16-byte loads (4 f32 of x, 8 halves of W) when K is a multiple of
/// 8, else one element of x / one packed pair of W at a time. Quantized weights are always read in 8-column units
/// (q8: two words, q4: one), which lie in one group and need no K alignment; only x's loads follow K (16-byte
/// loads when K is a multiple of 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CoopAccess {
    Vec,
    Scalar,
}

impl CoopAccess {
    /// The access for f16 weights with `k` columns.
    pub fn for_k(k: u32) -> CoopAccess {
        CoopAccess::new(WeightFormat::F16, k)
    }

    /// The access for a `k`-column matrix stored in `format`.
    pub fn new(format: WeightFormat, k: u32) -> CoopAccess {
        let vec = match format {
            WeightFormat::Quant(_) => k.is_multiple_of(4),
            _ => k.is_multiple_of(8),
        };
        if vec { CoopAccess::Vec } else { CoopAccess::Scalar }
    }
}

wgsl_params! {
    /// Uniform parameters of the tensor-core kernel.
    struct Params {
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
        pad0: u32,
        pad1: u32,
        pad2: u32,
    }
}

/// Whether the tensor-core kernel serves weights stored in `format` (f16, q8, q4).
pub fn coop_format(format: WeightFormat) -> bool {
    matches!(format, WeightFormat::F16 | WeightFormat::Quant(_))
}

/// Whether `linear_coop` can serve these weights on this device (the routing test of `linear_rows`).
pub fn coop_supported(gpu: &Gpu, w: &GpuMatrix) -> bool {
    let fits = |m| CoopShape::for_problem(gpu, m, w.rows, LinearEpilogue::SwiGlu).is_some();
    gpu.tensor_cores() && coop_format(w.format) && fits(1) && fits(super::SMALL_M_MAX + 1)
}

/// `linear` on tensor cores, same arguments and semantics (x: f32 `[m, w.cols]`, y as the epilogue says, x and
/// y distinct). Needs `coop_supported(gpu, w)`; x is rounded to f16 (see the module docs for the error bound).
pub fn linear_coop(gpu: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, epilogue: LinearEpilogue) -> Dispatch {
    let shape = CoopShape::for_problem(gpu, m, w.rows, epilogue).expect("linear_coop: no tile fits the device's workgroup memory");
    linear_coop_shaped(gpu, x, w, y, m, epilogue, shape)
}

/// `linear_coop` with an explicit work split (tests and benchmarks).
pub fn linear_coop_shaped(gpu: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, epilogue: LinearEpilogue, shape: CoopShape) -> Dispatch {
    assert!(gpu.tensor_cores(), "linear_coop: the device has no cooperative matrices");
    assert!(coop_format(w.format), "linear_coop: f16 or quantized weights only, not {:?}", w.format);
    assert!(shape.supports(epilogue), "linear_coop: unsupported {shape:?} for {epilogue:?}");
    assert!(
        shape.workgroup_bytes() <= gpu.limits.max_compute_workgroup_storage_size,
        "linear_coop: {shape:?} needs {} bytes of workgroup memory",
        shape.workgroup_bytes()
    );
    let out_cols = check_shapes(x, w, y, m, epilogue);
    let pipeline = gpu.variant_pipeline(CoopVariant { format: w.format, access: CoopAccess::new(w.format, w.cols), epilogue, shape });
    let params = Params { m, n: w.rows, k: w.cols, stride: w.row_stride_words(), out_cols, pad0: 0, pad1: 0, pad2: 0 };
    let grid = [shape.tiles_n(w.rows, epilogue), m.div_ceil(shape.tm()), 1];
    gpu.dispatch(&pipeline, &params, &[x, &w.data, y], grid)
}

/// One compiled specialisation of the tensor-core kernel (weight format × x / W access × epilogue × shape): the
/// WGSL generator's input and the pipeline-cache key. Host-side translation tests take its `source()` too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CoopVariant {
    pub format: WeightFormat,
    pub access: CoopAccess,
    pub epilogue: LinearEpilogue,
    pub shape: CoopShape,
}

/// How a weight row is read: `elem` the WGSL element type of `w`, `words` u32 words per element, `cols` columns
/// per element (one staging load).
struct WeightLoad {
    elem: &'static str,
    zero: &'static str,
    words: u32,
    cols: u32,
}

impl WeightLoad {
    fn new(format: WeightFormat, access: CoopAccess) -> WeightLoad {
        match (format, access) {
            (WeightFormat::Quant(q), _) if q.bits() == QuantBits::Q8 => WeightLoad { elem: "vec2<u32>", zero: "vec2<u32>()", words: 2, cols: 8 },
            (WeightFormat::Quant(_), _) => WeightLoad { elem: "u32", zero: "0u", words: 1, cols: 8 },
            (_, CoopAccess::Vec) => WeightLoad { elem: "vec4<u32>", zero: "vec4<u32>()", words: 4, cols: 8 },
            (_, CoopAccess::Scalar) => WeightLoad { elem: "u32", zero: "0u", words: 1, cols: 2 },
        }
    }
}

impl KernelVariant for CoopVariant {
    fn entry_point(&self) -> &'static str {
        "main"
    }

    fn source(&self) -> String {
        let CoopVariant { format, access, epilogue, shape } = *self;
        assert!(shape.supports(epilogue), "linear_coop: unsupported {shape:?} for {epilogue:?}");
        assert!(coop_format(format), "linear_coop: no tensor-core kernel for {format:?}");
        let x_elem = match access {
            CoopAccess::Vec => "vec4<f32>",
            CoopAccess::Scalar => "f32",
        };
        let wl = WeightLoad::new(format, access);
        specialize(
            SOURCE,
            &[
                ("PARAMS", Params::wgsl()),
                ("X_ELEM", x_elem.to_string()),
                ("W_ELEM", wl.elem.to_string()),
                ("WEIGHT_FNS", weight_fns(format)),
                ("EPILOGUE", epilogue.code().to_string()),
                ("TM", shape.tm().to_string()),
                ("TN", shape.tn().to_string()),
                ("KS", shape.ks().to_string()),
                ("LDS", shape.lds().to_string()),
                ("SA_LEN", (shape.stages * shape.tm() * shape.lds()).to_string()),
                ("SB_LEN", (shape.stages * shape.tn() * shape.lds()).to_string()),
                ("BODY", body(format, shape, epilogue, access)),
            ],
        )
    }
}

/// Quantized formats: the block decoding of `shaders/linear.wgsl` (section `qdecode`) and `w_scale(row, c)`, the
/// f16 scale of the group holding column c of weight row `row`; nothing for f16.
fn weight_fns(format: WeightFormat) -> String {
    let WeightFormat::Quant(q) = format else { return String::new() };
    let word = match q.bits() {
        QuantBits::Q8 => "w[i / 2u][i % 2u]",
        QuantBits::Q4 => "w[i]",
    };
    let decode = specialize(super::section("qdecode"), &[("GROUP", q.group().to_string())]);
    format!(
        "const PER_WORD: u32 = {}u;\n{decode}\nfn w_scale(row: u32, c: u32) -> f32 {{\n    let g = c / QGROUP;\n    let i = row * p.stride + value_words() + g / 2u;\n    let s = unpack2x16float({word});\n    return select(s.x, s.y, (g & 1u) == 1u);\n}}\n",
        q.per_word()
    )
}

/// How one operand is read: `per_load` staged halves per load, `per_row` loads per staged row of `ks` columns.
struct Operand {
    /// "a" (x) or "b" (W).
    op: &'static str,
    rows: u32,
    per_load: u32,
    ks: u32,
}

impl Operand {
    fn per_row(&self) -> u32 {
        self.ks / self.per_load
    }
    /// Staged rows one pass of 256 invocations covers.
    fn row_step(&self) -> u32 {
        256 / self.per_row()
    }
    fn passes(&self) -> u32 {
        self.rows / self.row_step()
    }
}

/// `main`'s body after the common prologue (m0, t, sg, nk).
fn body(format: WeightFormat, shape: CoopShape, epilogue: LinearEpilogue, access: CoopAccess) -> String {
    let (tm, tn, lds) = (shape.tm(), shape.tn(), shape.lds());
    let wl = WeightLoad::new(format, access);
    let quant = match format {
        WeightFormat::Quant(q) => Some(q.bits()),
        _ => None,
    };
    let xl = match access {
        CoopAccess::Vec => 4,
        CoopAccess::Scalar => 1,
    };
    let a = Operand { op: "a", rows: tm, per_load: xl, ks: shape.ks() };
    let b = Operand { op: "b", rows: tn, per_load: wl.cols, ks: shape.ks() };
    let mut s = Emitter::new(1);
    // Subgroup sg: block mn of the sub_m × sub_n grid, K block kq (32 staged columns from kc).
    let blocks = shape.sub_m * shape.sub_n;
    emit!(s, "let mn = sg % {blocks}u;");
    emit!(s, "let sm = (mn / {}u) * {}u;", shape.sub_n, 16 * shape.frag_m);
    emit!(s, "let sn = (mn % {}u) * {}u;", shape.sub_n, 16 * shape.frag_n);
    emit!(s, "let kc = (sg / {blocks}u) * 32u;");
    // Per pass u: this invocation's staged row, its x / W row (NONE outside), the first element of that row's
    // load and the offset in the staged tile.
    for o in [&a, &b] {
        let op = o.op;
        emit!(s, "let q{op} = lid % {}u;", o.per_row());
        emit!(s, "let r{op} = lid / {}u;", o.per_row());
        for u in 0..o.passes() {
            let row = if op == "a" { format!("x_row(m0, r{op} + {}u)", u * o.row_step()) } else { format!("w_row(t, r{op} + {}u)", u * o.row_step()) };
            emit!(s, "let g{op}r{u} = {row};");
            emit!(s, "let g{op}v{u} = g{op}r{u} != NONE;");
            let first = match (op, access) {
                ("a", CoopAccess::Vec) => format!("g{op}r{u} * (p.k / 4u) + q{op}"),
                ("a", CoopAccess::Scalar) => format!("g{op}r{u} * p.k + q{op}"),
                _ if wl.words == 1 => format!("g{op}r{u} * p.stride + q{op}"),
                _ => format!("g{op}r{u} * (p.stride / {}u) + q{op}", wl.words),
            };
            emit!(s, "let g{op}i{u} = select(0u, {first}, g{op}v{u});");
            emit!(s, "let s{op}o{u} = (r{op} + {}u) * {lds}u + q{op} * {}u;", u * o.row_step(), o.per_load);
        }
    }
    for i in 0..shape.frag_m {
        for j in 0..shape.frag_n {
            emit!(s, "var acc{i}{j} = coop_mat16x16<f32, C>();");
        }
    }
    // Global loads of the stage at K offset `k` into registers suffixed `tag`; outside x / W they read as 0 (a
    // quantized unit outside takes scale 0: its packed zeros stand for -Q).
    let load = |s: &mut Emitter, tag: &str, k: &str| {
        for o in [&a, &b] {
            let op = o.op;
            emit!(s, "let kin{op}{tag} = {k} + q{op} * {}u < p.k;", o.per_load);
            let (ty, zero, scale) = match (op, access) {
                ("a", CoopAccess::Vec) => ("x", "vec4<f32>()", 4),
                ("a", CoopAccess::Scalar) => ("x", "0.0", 1),
                _ => ("w", wl.zero, wl.cols),
            };
            for u in 0..o.passes() {
                emit!(s, "let ok{op}{u}{tag} = kin{op}{tag} && g{op}v{u};");
                emit!(s, "let v{op}{u}{tag} = select({zero}, {ty}[select(0u, g{op}i{u} + {k} / {scale}u, ok{op}{u}{tag})], ok{op}{u}{tag});"
                );
                if op == "b" && quant.is_some() {
                    emit!(s, "let ws{u}{tag} = select(0.0, w_scale(select(0u, g{op}r{u}, ok{op}{u}{tag}), select(0u, {k} + q{op} * 8u, ok{op}{u}{tag})), ok{op}{u}{tag});"
                    );
                }
            }
        }
    };
    // Stores of registers `tag` into the stage at offsets `base_a` / `base_b`.
    let stage = |s: &mut Emitter, tag: &str, base_a: &str, base_b: &str| {
        for u in 0..a.passes() {
            match access {
                CoopAccess::Vec => {
                    emit!(s, "let ha{u}{tag} = vec4<f16>(va{u}{tag});");
                    for (e, c) in ["x", "y", "z", "w"].iter().enumerate() {
                        emit!(s, "sa[{base_a} + sao{u} + {e}u] = ha{u}{tag}.{c};");
                    }
                }
                CoopAccess::Scalar => {
                    emit!(s, "sa[{base_a} + sao{u}] = f16(va{u}{tag});");
                }
            }
        }
        for u in 0..b.passes() {
            if let Some(bits) = quant {
                // Two groups of 4 columns, dequantized in f32 (exact) and rounded to f16 once.
                let halves = match bits {
                    QuantBits::Q8 => [format!("bytes4(vb{u}{tag}.x)"), format!("bytes4(vb{u}{tag}.y)")],
                    QuantBits::Q4 => [format!("nibbles4(vb{u}{tag}, 0u)"), format!("nibbles4(vb{u}{tag}, 16u)")],
                };
                for (e, h) in halves.iter().enumerate() {
                    emit!(s, "let hb{u}{e}{tag} = vec4<f16>({h} * ws{u}{tag});");
                    for (c, cc) in ["x", "y", "z", "w"].iter().enumerate() {
                        emit!(s, "sb[{base_b} + sbo{u} + {}u] = hb{u}{e}{tag}.{cc};", 4 * e + c);
                    }
                }
                continue;
            }
            let words: &[&str] = match access {
                CoopAccess::Vec => &[".x", ".y", ".z", ".w"],
                CoopAccess::Scalar => &[""],
            };
            for (e, c) in words.iter().enumerate() {
                emit!(s, "let hb{u}{e}{tag} = vec2<f16>(unpack2x16float(vb{u}{tag}{c}));");
                emit!(s, "sb[{base_b} + sbo{u} + {}u] = hb{u}{e}{tag}.x;", 2 * e);
                emit!(s, "sb[{base_b} + sbo{u} + {}u] = hb{u}{e}{tag}.y;", 2 * e + 1);
            }
        }
    };
    let frag_k = if shape.sub_k > 1 { "kc" } else { "" };
    let staging = Staging { load: &load, stage: &stage, step: shape.ks(), frag_k };
    staged_reduction(&mut s, shape.frag_m, shape.frag_n, lds, shape.stages, tm * lds, tn * lds, staging);
    output(&mut s, shape, epilogue);
    s.finish()
}

/// One round per accumulator index (i, j): every subgroup stores its block (i, j) into its 16×16 slot of `so`
/// (`let`-bound arguments: naga bug), then each invocation writes element `lid` of every block that lies in y,
/// the sum of the `sub_k` slots that hold its partial sums.
fn output(s: &mut Emitter, shape: CoopShape, epilogue: LinearEpilogue) {
    s.line("let obase = sg * 256u;");
    s.line("let lr = lid / 16u;");
    s.line("let lc = lid % 16u;");
    let blocks = shape.sub_m * shape.sub_n;
    let sub_row = |g: u32, i: u32| (g / shape.sub_n) * 16 * shape.frag_m + 16 * i;
    let sub_col = |g: u32, j: u32| (g % shape.sub_n) * 16 * shape.frag_n + 16 * j;
    // Block g's value at this invocation's element: its K blocks' slots summed.
    let value = |g: u32| (0..shape.sub_k).map(|kq| format!("so[{}u + lid]", (g + kq * blocks) * 256)).collect::<Vec<_>>().join(" + ");
    for i in 0..shape.frag_m {
        for j in 0..shape.frag_n {
            emit!(s, "let ov{i}{j} = acc{i}{j};");
            emit!(s, "coopStoreT(ov{i}{j}, &so[obase], 16u);");
            s.line("workgroupBarrier();");
            for g in 0..blocks {
                let half = shape.sub_n / 2;
                if epilogue == LinearEpilogue::SwiGlu {
                    // Gate blocks (left half of the grid's columns) pair with the up block `half` to the right.
                    if g % shape.sub_n >= half {
                        continue;
                    }
                    emit!(
                        s,
                        "{{ let row = m0 + {}u + lr; let col = t * {}u + {}u + lc; if row < p.m && col < p.out_cols {{ y[row * p.out_cols + col] = silu({}) * ({}); }} }}",
                        sub_row(g, i),
                        shape.tn() / 2,
                        sub_col(g, j),
                        value(g),
                        value(g + half)
                    );
                } else {
                    emit!(
                        s,
                        "{{ let row = m0 + {}u + lr; let col = t * {}u + {}u + lc; if row < p.m && col < p.n {{ write_out(row, col, {}); }} }}",
                        sub_row(g, i),
                        shape.tn(),
                        sub_col(g, j),
                        value(g)
                    );
                }
            }
            s.line("workgroupBarrier();");
        }
    }
}
