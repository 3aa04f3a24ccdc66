//! `shaders/linear_coop.wgsl`: `linear` (y = x · Wᵀ with the same epilogues) on tensor cores through wgpu's
//! experimental cooperative matrices, for f16 weights (`WeightFormat::F16`) on devices where
//! `Gpu::tensor_cores()` holds (native only: browsers have no cooperative matrices, so this never runs there).
//! Quantized weights have no tensor-core path: `schedule` gives them the tiled kernel.
//!
//! Numerics: x is rounded to f16 when staged (W already is f16); products are exact in f32 and summed in f32
//! accumulators. Against the plain kernel's f32 x this adds, per output, an error of at most
//! 2⁻¹¹ · Σ_k |x[m,k]·W[n,k]| (half an f16 ulp relative per x element; below 6·10⁻⁵, f16's subnormal range,
//! instead 2⁻²⁵ absolute per element, times |W[n,k]|), i.e. a relative error ≲ 5·10⁻⁴ of the absolute dot
//! product, typically ~2⁻¹¹/√K of it for random signs; |x| must stay below 65504 (f16's largest finite value)
//! or the product becomes ±inf.
use std::fmt::Write;

use crate::kernels::coop_code::{staged_reduction, Staging};

use crate::gpu::{specialize, Dispatch, Gpu, GpuBuffer, KernelVariant};
use super::{check_shapes, LinearEpilogue};
use crate::kernels::{GpuMatrix, WeightFormat};

const SOURCE: &str = include_str!("../../../../shaders/linear_coop.wgsl");

/// Smallest M that `linear_rows` sends here (the decoder's M = 2 steps keep the matrix–vector kernel).
pub const COOP_M_MIN: u32 = 16;
/// Workgroups the shape choice aims for (a big GPU has ~100+ multiprocessors to fill).
const COOP_MIN_GROUPS: u32 = 128;
/// Staged row stride in halves (32 columns of K + 8 of padding), as `LDS` in the shader.
const LDS: u32 = 40;
/// The per-subgroup f32 output blocks (8 × 16 × 16).
const OUT_BYTES: u32 = 8 * 256 * 4;

/// Work split: 8 subgroups of 32 in a `sub_m` × `sub_n` grid, each owning `frag_m` × `frag_n` 16×16
/// accumulators, so a workgroup computes (16·sub_m·frag_m) x rows × (16·sub_n·frag_n) weight rows;
/// `stages` 1 (registers prefetch the next K stage, two barriers per stage) or 2 (double-buffered, one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CoopShape {
    pub sub_m: u32,
    pub sub_n: u32,
    pub frag_m: u32,
    pub frag_n: u32,
    pub stages: u32,
}

impl CoopShape {
    /// 128 × 128 (the probe's tile): most arithmetic per staged element.
    pub const LARGE: CoopShape = CoopShape { sub_m: 4, sub_n: 2, frag_m: 2, frag_n: 4, stages: 2 };
    /// 64 × 128.
    pub const MEDIUM: CoopShape = CoopShape { sub_m: 2, sub_n: 4, frag_m: 2, frag_n: 2, stages: 2 };
    /// 32 × 64: enough workgroups for M ≈ 100.
    pub const SMALL: CoopShape = CoopShape { sub_m: 2, sub_n: 4, frag_m: 1, frag_n: 1, stages: 2 };
    /// Largest first; `for_problem` walks this list.
    pub const ALL: [CoopShape; 3] = [CoopShape::LARGE, CoopShape::MEDIUM, CoopShape::SMALL];

    /// x rows per workgroup.
    pub fn tm(self) -> u32 {
        16 * self.sub_m * self.frag_m
    }

    /// Weight rows per workgroup (`tn() / 2` outputs under SwiGLU).
    pub fn tn(self) -> u32 {
        16 * self.sub_n * self.frag_n
    }

    pub fn with_stages(self, stages: u32) -> CoopShape {
        CoopShape { stages, ..self }
    }

    pub fn name(self) -> String {
        format!("{}x{}.s{}", self.tm(), self.tn(), self.stages)
    }

    /// Bytes of workgroup memory: staged K stages of both operands plus the output blocks.
    pub fn workgroup_bytes(self) -> u32 {
        self.stages * (self.tm() + self.tn()) * LDS * 2 + OUT_BYTES
    }

    /// Whether the generator supports this shape: 8 subgroups, an even `sub_n` (SwiGLU pairs gate and up
    /// subgroups), whole passes of 256 invocations over each staged operand, 1 or 2 stages.
    pub fn fits(self) -> bool {
        self.sub_m * self.sub_n == 8
            && self.sub_n.is_multiple_of(2)
            && self.frag_m >= 1
            && self.frag_n >= 1
            && self.tm().is_multiple_of(32)
            && self.tn().is_multiple_of(64)
            && (self.stages == 1 || self.stages == 2)
    }

    fn tiles_n(self, w_rows: u32, epilogue: LinearEpilogue) -> u32 {
        match epilogue {
            LinearEpilogue::SwiGlu => (w_rows / 2).div_ceil(self.tn() / 2),
            _ => w_rows.div_ceil(self.tn()),
        }
    }

    fn groups(self, m: u32, w_rows: u32, epilogue: LinearEpilogue) -> u32 {
        self.tiles_n(w_rows, epilogue) * m.div_ceil(self.tm())
    }

    /// The largest tile giving `COOP_MIN_GROUPS` workgroups (else the smallest), double-buffered where the
    /// device's workgroup memory allows it; `None` if not even one stage of the smallest fits.
    pub fn for_problem(gpu: &Gpu, m: u32, w_rows: u32, epilogue: LinearEpilogue) -> Option<CoopShape> {
        let limit = gpu.limits.max_compute_workgroup_storage_size;
        let usable = |s: CoopShape| [2, 1].into_iter().map(|st| s.with_stages(st)).find(|s| s.workgroup_bytes() <= limit);
        let candidates: Vec<CoopShape> = CoopShape::ALL.into_iter().filter_map(usable).collect();
        candidates.iter().copied().find(|s| s.groups(m, w_rows, epilogue) >= COOP_MIN_GROUPS).or(candidates.last().copied())
    }
}

/// How the kernel reads x and W: 16-byte loads (4 f32 of x, 8 halves of W) when K is a multiple of 8, else
/// one element of x / one packed pair of W at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CoopAccess {
    Vec,
    Scalar,
}

impl CoopAccess {
    pub fn for_k(k: u32) -> CoopAccess {
        if k.is_multiple_of(8) { CoopAccess::Vec } else { CoopAccess::Scalar }
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

/// Whether `linear_coop` can serve these weights on this device (the routing test of `linear_rows`).
pub fn coop_supported(gpu: &Gpu, w: &GpuMatrix) -> bool {
    gpu.tensor_cores() && w.format == WeightFormat::F16 && CoopShape::for_problem(gpu, 1, w.rows, LinearEpilogue::Store).is_some()
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
    assert_eq!(w.format, WeightFormat::F16, "linear_coop: f16 weights only");
    assert!(shape.fits(), "linear_coop: unsupported {shape:?}");
    assert!(
        shape.workgroup_bytes() <= gpu.limits.max_compute_workgroup_storage_size,
        "linear_coop: {shape:?} needs {} bytes of workgroup memory",
        shape.workgroup_bytes()
    );
    let out_cols = check_shapes(x, w, y, m, epilogue);
    let pipeline = gpu.variant_pipeline(CoopVariant { access: CoopAccess::for_k(w.cols), epilogue, shape });
    let params = Params { m, n: w.rows, k: w.cols, stride: w.row_stride_words(), out_cols, pad0: 0, pad1: 0, pad2: 0 };
    let grid = [shape.tiles_n(w.rows, epilogue), m.div_ceil(shape.tm()), 1];
    gpu.dispatch(&pipeline, &params, &[x, &w.data, y], grid)
}

/// One compiled specialisation of the tensor-core kernel (f16 weights): the WGSL generator's input and the
/// pipeline-cache key. Host-side translation tests take its `source()` too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CoopVariant {
    pub access: CoopAccess,
    pub epilogue: LinearEpilogue,
    pub shape: CoopShape,
}

impl KernelVariant for CoopVariant {
    fn entry_point(&self) -> &'static str {
        "main"
    }

    fn source(&self) -> String {
        let CoopVariant { access, epilogue, shape } = *self;
        assert!(shape.fits(), "linear_coop: unsupported {shape:?}");
        let (x_elem, w_elem) = match access {
            CoopAccess::Vec => ("vec4<f32>", "vec4<u32>"),
            CoopAccess::Scalar => ("f32", "u32"),
        };
        specialize(
            SOURCE,
            &[
                ("PARAMS", Params::wgsl()),
                ("X_ELEM", x_elem.to_string()),
                ("W_ELEM", w_elem.to_string()),
                ("EPILOGUE", epilogue.code().to_string()),
                ("TM", shape.tm().to_string()),
                ("TN", shape.tn().to_string()),
                ("SA_LEN", (shape.stages * shape.tm() * LDS).to_string()),
                ("SB_LEN", (shape.stages * shape.tn() * LDS).to_string()),
                ("BODY", body(shape, epilogue, access)),
            ],
        )
    }
}

/// How one operand is read: `per_load` staged halves per load, `per_row` loads per staged row of 32.
struct Operand {
    /// "a" (x) or "b" (W).
    op: &'static str,
    rows: u32,
    per_load: u32,
}

impl Operand {
    fn per_row(&self) -> u32 {
        32 / self.per_load
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
fn body(shape: CoopShape, epilogue: LinearEpilogue, access: CoopAccess) -> String {
    let (tm, tn) = (shape.tm(), shape.tn());
    let (xl, wl) = match access {
        CoopAccess::Vec => (4, 8),
        CoopAccess::Scalar => (1, 2),
    };
    let a = Operand { op: "a", rows: tm, per_load: xl };
    let b = Operand { op: "b", rows: tn, per_load: wl };
    let mut s = String::new();
    let _ = writeln!(s, "    let sm = (sg / {}u) * {}u;", shape.sub_n, 16 * shape.frag_m);
    let _ = writeln!(s, "    let sn = (sg % {}u) * {}u;", shape.sub_n, 16 * shape.frag_n);
    // Per pass u: this invocation's staged row, its x / W row (NONE outside), the first element of that row's
    // load and the offset in the staged tile.
    for o in [&a, &b] {
        let op = o.op;
        let _ = writeln!(s, "    let q{op} = lid % {}u;", o.per_row());
        let _ = writeln!(s, "    let r{op} = lid / {}u;", o.per_row());
        for u in 0..o.passes() {
            let row = if op == "a" { format!("x_row(m0, r{op} + {}u)", u * o.row_step()) } else { format!("w_row(t, r{op} + {}u)", u * o.row_step()) };
            let _ = writeln!(s, "    let g{op}r{u} = {row};");
            let _ = writeln!(s, "    let g{op}v{u} = g{op}r{u} != NONE;");
            let first = match (op, access) {
                ("a", CoopAccess::Vec) => format!("g{op}r{u} * (p.k / 4u) + q{op}"),
                ("a", CoopAccess::Scalar) => format!("g{op}r{u} * p.k + q{op}"),
                (_, CoopAccess::Vec) => format!("g{op}r{u} * (p.stride / 4u) + q{op}"),
                (_, CoopAccess::Scalar) => format!("g{op}r{u} * p.stride + q{op}"),
            };
            let _ = writeln!(s, "    let g{op}i{u} = select(0u, {first}, g{op}v{u});");
            let _ = writeln!(s, "    let s{op}o{u} = (r{op} + {}u) * {LDS}u + q{op} * {}u;", u * o.row_step(), o.per_load);
        }
    }
    for i in 0..shape.frag_m {
        for j in 0..shape.frag_n {
            let _ = writeln!(s, "    var acc{i}{j} = coop_mat16x16<f32, C>();");
        }
    }
    // Global loads of the stage at K offset `k` into registers suffixed `tag`; outside x / W they read as 0.
    let load = |s: &mut String, tag: &str, k: &str| {
        for o in [&a, &b] {
            let op = o.op;
            let _ = writeln!(s, "        let kin{op}{tag} = {k} + q{op} * {}u < p.k;", o.per_load);
            let (ty, zero, scale) = match (op, access) {
                ("a", CoopAccess::Vec) => ("x", "vec4<f32>()", "4u"),
                ("a", CoopAccess::Scalar) => ("x", "0.0", "1u"),
                (_, CoopAccess::Vec) => ("w", "vec4<u32>()", "8u"),
                (_, CoopAccess::Scalar) => ("w", "0u", "2u"),
            };
            for u in 0..o.passes() {
                let _ = writeln!(s, "        let ok{op}{u}{tag} = kin{op}{tag} && g{op}v{u};");
                let _ = writeln!(
                    s,
                    "        let v{op}{u}{tag} = select({zero}, {ty}[select(0u, g{op}i{u} + {k} / {scale}, ok{op}{u}{tag})], ok{op}{u}{tag});"
                );
            }
        }
    };
    // Stores of registers `tag` into the stage at offsets `base_a` / `base_b`.
    let stage = |s: &mut String, tag: &str, base_a: &str, base_b: &str| {
        for u in 0..a.passes() {
            match access {
                CoopAccess::Vec => {
                    let _ = writeln!(s, "        let ha{u}{tag} = vec4<f16>(va{u}{tag});");
                    for (e, c) in ["x", "y", "z", "w"].iter().enumerate() {
                        let _ = writeln!(s, "        sa[{base_a} + sao{u} + {e}u] = ha{u}{tag}.{c};");
                    }
                }
                CoopAccess::Scalar => {
                    let _ = writeln!(s, "        sa[{base_a} + sao{u}] = f16(va{u}{tag});");
                }
            }
        }
        for u in 0..b.passes() {
            let words: &[&str] = match access {
                CoopAccess::Vec => &[".x", ".y", ".z", ".w"],
                CoopAccess::Scalar => &[""],
            };
            for (e, c) in words.iter().enumerate() {
                let _ = writeln!(s, "        let hb{u}{e}{tag} = vec2<f16>(unpack2x16float(vb{u}{tag}{c}));");
                let _ = writeln!(s, "        sb[{base_b} + sbo{u} + {}u] = hb{u}{e}{tag}.x;", 2 * e);
                let _ = writeln!(s, "        sb[{base_b} + sbo{u} + {}u] = hb{u}{e}{tag}.y;", 2 * e + 1);
            }
        }
    };
    staged_reduction(&mut s, shape.frag_m, shape.frag_n, LDS, shape.stages, tm * LDS, tn * LDS, Staging { load: &load, stage: &stage });
    output(&mut s, shape, epilogue);
    s
}

/// One round per accumulator index (i, j): every subgroup stores its block (i, j) into its 16×16 slot of `so`
/// (`let`-bound arguments: naga bug), then each invocation writes element `lid` of every slot that lies in y.
fn output(s: &mut String, shape: CoopShape, epilogue: LinearEpilogue) {
    s.push_str("    let obase = sg * 256u;\n    let lr = lid / 16u;\n    let lc = lid % 16u;\n");
    let sub_row = |g: u32, i: u32| (g / shape.sub_n) * 16 * shape.frag_m + 16 * i;
    let sub_col = |g: u32, j: u32| (g % shape.sub_n) * 16 * shape.frag_n + 16 * j;
    for i in 0..shape.frag_m {
        for j in 0..shape.frag_n {
            let _ = writeln!(s, "    let ov{i}{j} = acc{i}{j};");
            let _ = writeln!(s, "    coopStoreT(ov{i}{j}, &so[obase], 16u);");
            s.push_str("    workgroupBarrier();\n");
            for g in 0..8 {
                let half = shape.sub_n / 2;
                if epilogue == LinearEpilogue::SwiGlu {
                    // Gate subgroups (left half of the grid's columns) pair with the up subgroup `half` to the right.
                    if g % shape.sub_n >= half {
                        continue;
                    }
                    let _ = writeln!(
                        s,
                        "    {{ let row = m0 + {}u + lr; let col = t * {}u + {}u + lc; if row < p.m && col < p.out_cols {{ y[row * p.out_cols + col] = silu(so[{}u + lid]) * so[{}u + lid]; }} }}",
                        sub_row(g, i),
                        shape.tn() / 2,
                        sub_col(g, j),
                        g * 256,
                        (g + half) * 256
                    );
                } else {
                    let _ = writeln!(
                        s,
                        "    {{ let row = m0 + {}u + lr; let col = t * {}u + {}u + lc; if row < p.m && col < p.n {{ write_out(row, col, so[{}u + lid]); }} }}",
                        sub_row(g, i),
                        shape.tn(),
                        sub_col(g, j),
                        g * 256
                    );
                }
            }
            s.push_str("    workgroupBarrier();\n");
        }
    }
}
