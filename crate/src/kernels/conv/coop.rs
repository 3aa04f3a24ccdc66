//! `shaders/dac_conv_cl.wgsl`: the DAC decoder's convolutions on tensor cores over f16 channels-last activations
//! (written by the previous convolution's epilogue or by `super::layout::pack`, Snake applied once per
//! element), as an implicit GEMM with time as the rows and a tap-major reduction, so the input tile of a stage is
//! 32 consecutive channels of TM input rows: plain 16-byte loads. Native only (`Gpu::tensor_cores()`, f16
//! weights). The epilogue adds the bias and writes f32 (stored, or added to the residual stream), the next
//! convolution's Snake'd f16 input, or both.
//!
//! Weights: the convolution's matrix rewritten tap-major (`tap_major`), `[nphase·cout, taps·cin]` f16, kept
//! beside the channels-first matrix the plain kernels use. Products of f16 values accumulate in f32.

use crate::kernels::coop_code::{staged_reduction, Staging};
use crate::kernels::wgsl::Emitter;

use crate::kernels::plan::COOP_CONV_GROUPS;
use super::plain::{snake_decl, Conv1dWeights, ConvTranspose1dWeights, Geometry};
use crate::kernels::{GpuMatrix, WeightFormat};
use crate::gpu::{grid_1d, specialize, Dispatch, Gpu, GpuBuffer, KernelVariant};

const SOURCE: &str = include_str!("../../../../shaders/dac_conv_cl.wgsl");

/// Staged row stride in halves (32 reduction rows + 8 of padding), as `LDS` in the shader.
const LDS: u32 = 40;
/// The per-subgroup f32 output slots (8 × 16 × 16).
const OUT_BYTES: u32 = 8 * 256 * 4;

/// Work split of a workgroup: 8 subgroups in a `sub_m` × `sub_n` grid, each `frag_m` × `frag_n` accumulators
/// of 16×16, i.e. `tm()` time rows × `tn()` output channels; `stages` 2 = double-buffered staging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClShape {
    pub sub_m: u32,
    pub sub_n: u32,
    pub frag_m: u32,
    pub frag_n: u32,
    pub stages: u32,
}

impl ClShape {
    /// 128 × 128.
    pub const LARGE: ClShape = ClShape { sub_m: 4, sub_n: 2, frag_m: 2, frag_n: 4, stages: 2 };
    /// 128 × 96 (96- and 192-channel layers without idle columns).
    pub const LARGE96: ClShape = ClShape { sub_m: 4, sub_n: 2, frag_m: 2, frag_n: 3, stages: 2 };
    /// 128 × 192, single-buffered (192-channel layers in one column tile).
    pub const WIDE192: ClShape = ClShape { sub_m: 4, sub_n: 2, frag_m: 2, frag_n: 6, stages: 1 };
    /// 256 × 96, single-buffered.
    pub const TALL96: ClShape = ClShape { sub_m: 4, sub_n: 2, frag_m: 4, frag_n: 3, stages: 1 };
    /// 256 × 128, single-buffered.
    pub const TALL: ClShape = ClShape { sub_m: 4, sub_n: 2, frag_m: 4, frag_n: 4, stages: 1 };
    pub const ALL: [ClShape; 5] = [ClShape::LARGE, ClShape::LARGE96, ClShape::WIDE192, ClShape::TALL96, ClShape::TALL];

    pub fn tm(self) -> u32 {
        16 * self.sub_m * self.frag_m
    }

    pub fn tn(self) -> u32 {
        16 * self.sub_n * self.frag_n
    }

    /// Weight rows staged per stage: `tn` rounded up to whole passes of 256 invocations (64 rows each).
    fn staged_n(self) -> u32 {
        self.tn().next_multiple_of(64)
    }

    pub fn with_stages(self, stages: u32) -> ClShape {
        ClShape { stages, ..self }
    }

    pub fn name(self) -> String {
        format!("{}x{}.s{}", self.tm(), self.tn(), self.stages)
    }

    /// Bytes of workgroup memory the shader declares.
    pub fn workgroup_bytes(self) -> u32 {
        self.stages * (self.tm() + self.staged_n()) * LDS * 2 + OUT_BYTES
    }

    /// Whether the generator supports the shape: 8 subgroups, whole passes over the time rows, 1 or 2 stages.
    pub fn fits(self) -> bool {
        self.sub_m * self.sub_n == 8 && self.frag_m >= 1 && self.frag_n >= 1 && self.tm().is_multiple_of(64) && (self.stages == 1 || self.stages == 2)
    }

    /// Per call, from a sweep of every layer (`bench_dac_coop --sweep`; the figures are in docs/performance.md,
    /// "Taller tiles beat more workgroups"): the tile covers all of a 192-channel layer (128 × 192), 96 channels
    /// where 128 does not divide the count, else 128; and 256 rows where that still gives `COOP_CONV_GROUPS`
    /// workgroups, else 128 (64-row tiles lost everywhere, even with twice the workgroups).
    fn for_geometry(gpu: &Gpu, g: &Geometry) -> ClShape {
        let (big, small) = if g.cout == 192 {
            (ClShape::WIDE192, ClShape::LARGE96)
        } else if g.cout.is_multiple_of(96) && !g.cout.is_multiple_of(128) {
            (ClShape::TALL96, ClShape::LARGE96)
        } else {
            (ClShape::TALL, ClShape::LARGE)
        };
        let groups = |s: ClShape| g.cols.div_ceil(s.tm()) * g.cout.div_ceil(s.tn()) * g.nphase;
        let shape = if groups(big) >= COOP_CONV_GROUPS { big } else { small };
        let limit = gpu.limits.max_compute_workgroup_storage_size;
        if shape.workgroup_bytes() <= limit { shape } else { shape.with_stages(1) }
    }
}

/// What the epilogue does with bias + the accumulated sum at (t, co).
#[derive(Clone, Copy)]
pub enum ClEpilogue<'a> {
    /// y f32 `[len_out, cout]` = value.
    Store,
    /// y f32 `[len_out, cout]` += value (residual add).
    Accumulate,
    /// y f16 channels-last `[len_out, cout]` (u32 pairs) = Snake(value) with per-channel α (`cout` even): the
    /// packed input of the next convolution, written without a `pack` pass.
    SnakeHalf(&'a GpuBuffer),
    /// `Store`, and the next convolution's input as `SnakeHalf` writes it: (α, f16 destination).
    StorePacked(&'a GpuBuffer, &'a GpuBuffer),
    /// `Accumulate`, and Snake of the sum as f16 into the second buffer with α from the first.
    AccumulatePacked(&'a GpuBuffer, &'a GpuBuffer),
}

impl ClEpilogue<'_> {
    fn name(&self) -> &'static str {
        match self {
            ClEpilogue::Store => "store",
            ClEpilogue::Accumulate => "acc",
            ClEpilogue::SnakeHalf(_) => "snake16",
            ClEpilogue::StorePacked(..) => "store_pack",
            ClEpilogue::AccumulatePacked(..) => "acc_pack",
        }
    }
}

/// The epilogue kinds, for host-side translation checks.
pub const EPILOGUE_NAMES: [&str; 5] = ["store", "acc", "snake16", "store_pack", "acc_pack"];

/// Rewrites rows of `cin·taps` columns from channel-major (`ci·taps + tap`, PyTorch's Conv1d layout and
/// `conv_transpose_phase_weights`') to tap-major (`tap·cin + ci`).
pub fn tap_major(rows: &[f32], cin: usize, taps: usize) -> Vec<f32> {
    let k = cin * taps;
    assert!(k > 0 && rows.len().is_multiple_of(k), "tap_major: rows of {k} columns expected");
    let mut out = vec![0.0f32; rows.len()];
    for (src, dst) in rows.chunks(k).zip(out.chunks_mut(k)) {
        for ci in 0..cin {
            for tap in 0..taps {
                dst[tap * cin + ci] = src[ci * taps + tap];
            }
        }
    }
    out
}

/// Whether a convolution from `cin` to `cout` channels can run here: 16-byte input loads need cin a multiple of
/// 8; a tile's 96+ channels would mostly idle below 32 outputs (the decoder's 1-channel last layer).
pub fn supports(cin: u32, cout: u32) -> bool {
    cin.is_multiple_of(8) && cout >= 32 && cout.is_multiple_of(2)
}

/// One compiled specialisation of the channels-last convolution (tile shape × epilogue, one of `EPILOGUE_NAMES`):
/// the WGSL generator's input and the pipeline-cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClVariant {
    pub shape: ClShape,
    pub epilogue: &'static str,
}

impl KernelVariant for ClVariant {
    fn entry_point(&self) -> &'static str {
        "main"
    }

    fn source(&self) -> String {
        shader_source(self.shape, self.epilogue)
    }
}

/// The WGSL of one specialisation (entry point `main`).
pub fn shader_source(shape: ClShape, epilogue: &str) -> String {
    assert!(shape.fits(), "dac_conv_cl: unsupported {shape:?}");
    let snake = snake_decl(5);
    let out_decl = match epilogue {
        "store" | "acc" => "@group(0) @binding(4) var<storage, read_write> y: array<f32>;\n".to_string(),
        "snake16" => format!("@group(0) @binding(4) var<storage, read_write> y: array<u32>;\n{snake}"),
        "store_pack" | "acc_pack" => {
            format!("@group(0) @binding(4) var<storage, read_write> y: array<f32>;\n{snake}@group(0) @binding(6) var<storage, read_write> y16: array<u32>;\n")
        }
        other => panic!("dac_conv_cl: unknown epilogue {other}"),
    };
    specialize(
        SOURCE,
        &[
            ("PARAMS", Params::wgsl()),
            ("OUT_DECL", out_decl),
            ("TM", shape.tm().to_string()),
            ("TN", shape.tn().to_string()),
            ("SA_LEN", (shape.stages * shape.tm() * LDS).to_string()),
            ("SB_LEN", (shape.stages * shape.staged_n() * LDS).to_string()),
            ("BODY", body(shape, epilogue)),
        ],
    )
}

/// `main`'s body after its prologue (phase, q0, n0, w_row0, sg, nk).
fn body(shape: ClShape, epilogue: &str) -> String {
    let (tm, sn_rows) = (shape.tm(), shape.staged_n());
    let (passes_a, passes_b) = (tm / 64, sn_rows / 64);
    let mut s = Emitter::new(1);
    emit!(s, "let sm = (sg / {}u) * {}u;", shape.sub_n, 16 * shape.frag_m);
    emit!(s, "let sn = (sg % {}u) * {}u;", shape.sub_n, 16 * shape.frag_n);
    // Staging: invocation lid loads halves 8·ql.. of row rl (+ 64 per pass) of both operands.
    s.line("let ql = lid % 4u;");
    s.line("let rl = lid / 4u;");
    for u in 0..passes_a {
        emit!(s, "let pa{u} = i32((q0 + rl + {}u) * P.in_stride) + P.in_off;", 64 * u);
        emit!(s, "let sao{u} = (rl + {}u) * {LDS}u + ql * 8u;", 64 * u);
    }
    for u in 0..passes_b {
        let r = 64 * u;
        emit!(s, "let co{u} = n0 + rl + {r}u;");
        emit!(s, "let vb{u} = rl + {r}u < {}u && co{u} < P.cout;", shape.tn());
        emit!(s, "let wr{u} = select(0u, (w_row0 + co{u}) * P.w_stride4, vb{u});");
        emit!(s, "let sbo{u} = (rl + {r}u) * {LDS}u + ql * 8u;");
    }
    for i in 0..shape.frag_m {
        for j in 0..shape.frag_n {
            emit!(s, "var acc{i}{j} = coop_mat16x16<f32, C>();");
        }
    }
    // Global loads of the stage at reduction row `k` into registers suffixed `tag` (zeros outside x / W).
    let load = |s: &mut Emitter, tag: &str, k: &str| {
        emit!(s, "let kk{tag} = {k} + ql * 8u;");
        emit!(s, "let kin{tag} = kk{tag} < P.k_total;");
        emit!(s, "let tap{tag} = kk{tag} / P.cin;");
        emit!(s, "let ci{tag} = kk{tag} - tap{tag} * P.cin;");
        emit!(s, "let sh{tag} = i32(tap{tag} * P.dil);");
        for u in 0..passes_a {
            emit!(s, "let pos{u}{tag} = pa{u} + sh{tag};");
            emit!(s, "let oka{u}{tag} = kin{tag} && pos{u}{tag} >= 0 && pos{u}{tag} < i32(P.len_in);");
            emit!(s, "let va{u}{tag} = select(vec4<u32>(), x[select(0u, (u32(pos{u}{tag}) * P.cin + ci{tag}) / 8u, oka{u}{tag})], oka{u}{tag});"
            );
        }
        for u in 0..passes_b {
            emit!(s, "let okb{u}{tag} = kin{tag} && vb{u};");
            emit!(s, "let vw{u}{tag} = select(vec4<u32>(), w[select(0u, wr{u} + kk{tag} / 8u, okb{u}{tag})], okb{u}{tag});");
        }
    };
    // Stores of registers `tag` into the stage at `base_a` / `base_b`.
    let stage = |s: &mut Emitter, tag: &str, base_a: &str, base_b: &str| {
        let halves = |s: &mut Emitter, arr: &str, base: &str, off: &str, v: &str| {
            for (e, c) in ["x", "y", "z", "w"].iter().enumerate() {
                emit!(s, "let h{v}{e} = vec2<f16>(unpack2x16float({v}.{c}));");
                emit!(s, "{arr}[{base} + {off} + {}u] = h{v}{e}.x;", 2 * e);
                emit!(s, "{arr}[{base} + {off} + {}u] = h{v}{e}.y;", 2 * e + 1);
            }
        };
        for u in 0..passes_a {
            halves(s, "sa", base_a, &format!("sao{u}"), &format!("va{u}{tag}"));
        }
        for u in 0..passes_b {
            halves(s, "sb", base_b, &format!("sbo{u}"), &format!("vw{u}{tag}"));
        }
    };
    staged_reduction(&mut s, shape.frag_m, shape.frag_n, LDS, shape.stages, tm * LDS, sn_rows * LDS, Staging { load: &load, stage: &stage, step: 32, frag_k: "" });
    output(&mut s, shape, epilogue);
    s.finish()
}

/// One round per accumulator index (i, j): every subgroup stores its block into its slot of `so`, then the
/// workgroup writes each slot's elements that lie inside y, two adjacent channels per invocation (an f16 pair
/// packs into one word), two slots per pass. Each round issues all its global loads (bias, α, the
/// residual) before its stores: loads after a store to a possibly aliasing buffer wait for it, and a
/// load-add-store chain per element made the k1 convolutions latency-bound.
fn output(s: &mut Emitter, shape: ClShape, epilogue: &str) {
    let (packs, f32_out) = match epilogue {
        "snake16" => (true, false),
        "store_pack" | "acc_pack" => (true, true),
        _ => (false, true),
    };
    let residual = epilogue.starts_with("acc");
    // Two slots per pass: invocation lid takes columns lc, lc + 1 of row lr of slot 2·pass + hi.
    for line in ["let obase = sg * 256u;", "let hi = lid / 128u;", "let lp = lid % 128u;", "let lr = lp / 8u;", "let lc = (lp % 8u) * 2u;"] {
        s.line(line);
    }
    let sub_row = |g: u32, i: u32| (g / shape.sub_n) * 16 * shape.frag_m + 16 * i;
    let sub_col = |g: u32, j: u32| (g % shape.sub_n) * 16 * shape.frag_n + 16 * j;
    for i in 0..shape.frag_m {
        for j in 0..shape.frag_n {
            emit!(s, "let ov{i}{j} = acc{i}{j};");
            emit!(s, "coopStoreT(ov{i}{j}, &so[obase], 16u);");
            s.line("workgroupBarrier();");
            s.block("", |s| {
                for p in 0..4 {
                    let (g0, g1) = (2 * p, 2 * p + 1);
                    emit!(s, "let t{p} = time_of(q0 + select({}u, {}u, hi == 1u) + lr, phase);", sub_row(g0, i), sub_row(g1, i));
                    emit!(s, "let co{p} = n0 + select({}u, {}u, hi == 1u) + lc;", sub_col(g0, j), sub_col(g1, j));
                    // cout is even, so co < cout covers co + 1.
                    emit!(s, "let ok{p} = t{p} < P.len_out && co{p} < P.cout;");
                    emit!(s, "let c{p} = select(0u, co{p}, ok{p});");
                    emit!(s, "let i{p} = select(0u, t{p} * P.cout + co{p}, ok{p});");
                    emit!(s, "let e{p} = ({}u + hi * 256u) + lr * 16u + lc;", g0 * 256);
                    let res = if residual { format!(" + vec2<f32>(y[i{p}], y[i{p} + 1u])") } else { String::new() };
                    emit!(s, "let v{p} = vec2<f32>(so[e{p}], so[e{p} + 1u]) + vec2<f32>(bias[c{p}], bias[c{p} + 1u]){res};");
                    if packs {
                        emit!(s, "let a{p} = vec2<f32>(alpha[c{p}], alpha[c{p} + 1u]);");
                    }
                }
                for p in 0..4 {
                    let mut stores = String::new();
                    if f32_out {
                        stores.push_str(&format!("y[i{p}] = v{p}.x; y[i{p} + 1u] = v{p}.y; "));
                    }
                    if packs {
                        let target = if f32_out { "y16" } else { "y" };
                        stores.push_str(&format!("{target}[i{p} / 2u] = pack2x16float(vec2<f32>(snake(a{p}.x, v{p}.x), snake(a{p}.y, v{p}.y))); "));
                    }
                    emit!(s, "if ok{p} {{ {stores}}}");
                }
            });
            s.line("workgroupBarrier();");
        }
    }
}

wgsl_params! {
    /// Uniform parameters of the channels-last (tensor-core) convolution.
    struct Params {
        cin: u32,
        cout: u32,
        k_total: u32,
        len_in: u32,
        len_out: u32,
        in_stride: u32,
        dil: u32,
        in_off: i32,
        out_stride: u32,
        out_pad: u32,
        nphase: u32,
        /// 16-byte words between weight rows
        w_stride4: u32,
        grid_x: u32,
        pad0: u32,
        pad1: u32,
        pad2: u32,
    }
}

#[allow(clippy::too_many_arguments)]
fn build(gpu: &Gpu, g: Geometry, x: &GpuBuffer, w_cl: &GpuMatrix, bias: &GpuBuffer, y: &GpuBuffer, epilogue: ClEpilogue, shape: Option<ClShape>) -> Dispatch {
    assert!(gpu.tensor_cores(), "dac_conv_cl needs a device with tensor cores (Gpu::tensor_cores)");
    assert!(supports(g.cin, g.cout), "dac_conv_cl: {} → {} channels unsupported", g.cin, g.cout);
    assert_eq!(w_cl.format, WeightFormat::F16, "dac_conv_cl: f16 weights only");
    assert_eq!((w_cl.rows, w_cl.cols), (g.nphase * g.cout, g.taps * g.cin), "dac_conv_cl: tap-major weights of the wrong shape");
    assert!(x.size >= g.len_in as u64 * g.cin as u64 * 2, "dac_conv_cl: input smaller than [len_in, cin] f16");
    let out_bytes = match epilogue {
        ClEpilogue::SnakeHalf(_) => 2,
        _ => 4,
    };
    if let ClEpilogue::StorePacked(_, y16) | ClEpilogue::AccumulatePacked(_, y16) = epilogue {
        assert!(y16.size >= g.len_out as u64 * g.cout as u64 * 2, "dac_conv_cl: packed output smaller than [len_out, cout]");
    }
    assert!(y.size >= g.len_out as u64 * g.cout as u64 * out_bytes, "dac_conv_cl: output smaller than [len_out, cout]");
    let shape = shape.unwrap_or_else(|| ClShape::for_geometry(gpu, &g));
    assert!(
        shape.workgroup_bytes() <= gpu.limits.max_compute_workgroup_storage_size,
        "dac_conv_cl: {shape:?} needs {} bytes of workgroup memory",
        shape.workgroup_bytes()
    );
    let pipe = gpu.variant_pipeline(ClVariant { shape, epilogue: epilogue.name() });
    let [grid_x, split, _] = grid_1d(g.cols.div_ceil(shape.tm()));
    let params = Params {
        cin: g.cin,
        cout: g.cout,
        k_total: g.cin * g.taps,
        len_in: g.len_in,
        len_out: g.len_out,
        in_stride: g.in_stride,
        dil: g.dil,
        in_off: g.in_off,
        out_stride: g.out_stride,
        out_pad: g.out_pad,
        nphase: g.nphase,
        w_stride4: w_cl.row_stride_words() / 4,
        grid_x,
        pad0: 0,
        pad1: 0,
        pad2: 0,
    };
    let workgroups = if g.len_out == 0 { [0, 0, 0] } else { [grid_x, g.cout.div_ceil(shape.tn()), g.nphase * split] };
    let mut buffers = vec![x, &w_cl.data, bias, y];
    match epilogue {
        ClEpilogue::SnakeHalf(alpha) => buffers.push(alpha),
        ClEpilogue::StorePacked(alpha, y16) | ClEpilogue::AccumulatePacked(alpha, y16) => buffers.extend([alpha, y16]),
        ClEpilogue::Store | ClEpilogue::Accumulate => {}
    }
    gpu.dispatch(&pipe, &params, &buffers, workgroups)
}

/// y (`[len_out, cout]` per `epilogue`) = Conv1d of packed f16 channels-last x `[len_in, cin]` with zero padding
/// `padding` both sides; `w_cl` = `tap_major` of `w`'s weights. Needs `gpu.tensor_cores()` and `supports`.
#[allow(clippy::too_many_arguments)]
pub fn conv1d(gpu: &Gpu, x: &GpuBuffer, len_in: u32, w: &Conv1dWeights, w_cl: &GpuMatrix, stride: u32, dilation: u32, padding: u32, y: &GpuBuffer, epilogue: ClEpilogue) -> Dispatch {
    build(gpu, Geometry::conv1d(len_in, w, stride, dilation, padding), x, w_cl, &w.bias, y, epilogue, None)
}

/// `conv1d` with a forced work split (tests and benchmarks).
#[allow(clippy::too_many_arguments)]
pub fn conv1d_shaped(gpu: &Gpu, x: &GpuBuffer, len_in: u32, w: &Conv1dWeights, w_cl: &GpuMatrix, stride: u32, dilation: u32, padding: u32, y: &GpuBuffer, epilogue: ClEpilogue, shape: ClShape) -> Dispatch {
    build(gpu, Geometry::conv1d(len_in, w, stride, dilation, padding), x, w_cl, &w.bias, y, epilogue, Some(shape))
}

/// `conv_transpose1d` with a forced work split (tests and benchmarks).
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose1d_shaped(gpu: &Gpu, x: &GpuBuffer, len_in: u32, w: &ConvTranspose1dWeights, w_cl: &GpuMatrix, padding: u32, y: &GpuBuffer, epilogue: ClEpilogue, shape: ClShape) -> Dispatch {
    build(gpu, Geometry::conv_transpose1d(len_in, w, padding), x, w_cl, &w.bias, y, epilogue, Some(shape))
}

/// y (`[len_out, cout]` per `epilogue`) = ConvTranspose1d of packed f16 channels-last x `[len_in, cin]` with
/// `padding` cropped from both ends; `w_cl` = `tap_major` of `w`'s per-phase matrix.
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose1d(gpu: &Gpu, x: &GpuBuffer, len_in: u32, w: &ConvTranspose1dWeights, w_cl: &GpuMatrix, padding: u32, y: &GpuBuffer, epilogue: ClEpilogue) -> Dispatch {
    build(gpu, Geometry::conv_transpose1d(len_in, w, padding), x, w_cl, &w.bias, y, epilogue, None)
}
