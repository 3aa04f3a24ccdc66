//! `shaders/dac_conv_coop.wgsl`: the DAC convolutions of `dac_conv` on tensor cores (wgpu 30's experimental
//! cooperative matrices, 16×16×16 f16 → f32), for devices where `Gpu::tensor_cores()` holds. Native only: the
//! shader enables `f16` and `wgpu_cooperative_matrix`, which browsers do not offer.
//!
//! Same weights, geometry and fusions as `dac_conv::conv1d` / `dac_conv::conv_transpose1d`; weights and
//! activations (Snake applied) are rounded to f16 while staged, products accumulate in f32. The straight-line
//! fragment code (loads, multiply-adds, output) is generated here per tile shape and spliced into the WGSL.
use std::fmt::Write;

use super::dac_conv::{Conv1dWeights, ConvFusion, ConvTranspose1dWeights, Geometry};
use super::{GpuMatrix, Numerics};
use crate::gpu::{grid_1d, specialize, Dispatch, Gpu, GpuBuffer};

const SOURCE: &str = include_str!("../../../shaders/dac_conv_coop.wgsl");

/// Reduction rows per staged step (the shader's BK).
const BK: u32 = 32;
/// Output columns per workgroup in every tile shape.
const TN: u32 = 128;

/// How the 8 subgroups of a workgroup split its TM × 128 output tile: `sg_rows` × (8 / `sg_rows`) subgroups,
/// each `frag_rows` × `frag_cols` accumulators of 16×16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CoopTile {
    pub sg_rows: u32,
    pub frag_rows: u32,
    pub frag_cols: u32,
}

impl CoopTile {
    /// 128 channels × 128 columns, 2 × 4 accumulators per subgroup.
    pub const WIDE: CoopTile = CoopTile { sg_rows: 4, frag_rows: 2, frag_cols: 4 };
    /// 96 channels × 128 columns, 3 × 2 accumulators per subgroup (96- and 192-channel layers without idle rows).
    pub const NARROW: CoopTile = CoopTile { sg_rows: 2, frag_rows: 3, frag_cols: 2 };

    pub fn tm(&self) -> u32 {
        self.sg_rows * self.frag_rows * 16
    }

    fn sg_cols(&self) -> u32 {
        8 / self.sg_rows
    }

    /// The shape that leaves the fewest idle channel rows for `cout` (the wide one on a tie).
    pub fn for_channels(cout: u32) -> CoopTile {
        let padded = |t: CoopTile| cout.div_ceil(t.tm()) * t.tm();
        if padded(CoopTile::NARROW) < padded(CoopTile::WIDE) {
            CoopTile::NARROW
        } else {
            CoopTile::WIDE
        }
    }

    /// Bytes of workgroup memory the shader declares.
    pub fn workgroup_bytes(&self) -> u32 {
        2 * self.tm() * (BK + 8) + 2 * BK * (TN + 8) + 4 * 2048
    }
}

/// One specialisation of the shader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CoopVariant {
    pub tile: CoopTile,
    pub numerics: Numerics,
    /// Taps per input channel (kernel size; ⌈kernel / stride⌉ per phase for ConvTranspose1d).
    pub taps: u32,
    pub snake: bool,
    pub accumulate: bool,
    pub tanh: bool,
}

impl CoopVariant {
    pub fn key(&self) -> String {
        format!(
            "dac_conv_coop:{}:{}x{}x{}:k{}:s{}a{}t{}",
            self.numerics.name(),
            self.tile.sg_rows,
            self.tile.frag_rows,
            self.tile.frag_cols,
            self.taps,
            self.snake as u8,
            self.accumulate as u8,
            self.tanh as u8
        )
    }
}

/// The variants the DAC's decoder and its tests use (both tile shapes × both numerics × taps 1, 2, 3, 7, 8 ×
/// fusions), for host-side translation checks.
pub fn variants() -> Vec<CoopVariant> {
    let mut out = Vec::new();
    for tile in [CoopTile::WIDE, CoopTile::NARROW] {
        for numerics in [Numerics::F16W, Numerics::F32] {
            for taps in [1, 2, 3, 7, 8] {
                for (snake, accumulate, tanh) in [(false, false, false), (true, false, false), (true, true, false), (true, false, true), (true, true, true)] {
                    out.push(CoopVariant { tile, numerics, taps, snake, accumulate, tanh });
                }
            }
        }
    }
    out
}

/// The WGSL of one variant (entry point `main`).
pub fn shader(v: &CoopVariant) -> String {
    let t = v.tile;
    let (lda, ldb) = (BK + 8, TN + 8);
    let mut tile_code = String::new();
    let _ = writeln!(tile_code, "    let sm = (sg / {}u) * {}u;", t.sg_cols(), t.frag_rows * 16);
    let _ = writeln!(tile_code, "    let sn = (sg % {}u) * {}u;", t.sg_cols(), t.frag_cols * 16);
    let mut acc = String::new();
    for i in 0..t.frag_rows {
        for j in 0..t.frag_cols {
            let _ = writeln!(acc, "    var acc{i}{j} = coop_mat16x16<f32, C>();");
        }
    }
    // Fragment strides are literals: naga resolves them without needing an emitted expression.
    let mut compute = String::new();
    for kk in 0..BK / 16 {
        for i in 0..t.frag_rows {
            let _ = writeln!(
                compute,
                "        let fa{kk}{i} = coopLoadT<coop_mat16x16<f16, A>>(&sa[(sm + {}u) * {lda}u + {}u], {lda}u);",
                16 * i,
                16 * kk
            );
        }
        for j in 0..t.frag_cols {
            let _ = writeln!(
                compute,
                "        let fb{kk}{j} = coopLoadT<coop_mat16x16<f16, B>>(&sb[{}u + sn + {}u], {ldb}u);",
                16 * kk * ldb,
                16 * j
            );
        }
        for i in 0..t.frag_rows {
            for j in 0..t.frag_cols {
                let _ = writeln!(compute, "        acc{i}{j} = coopMultiplyAdd(fa{kk}{i}, fb{kk}{j}, acc{i}{j});");
            }
        }
    }
    // Each accumulator goes through the subgroup's 16×16 slot of `sc`; store arguments are `let`s (naga 30).
    let mut epilogue = String::from("    let slot = sg * 256u;\n");
    for i in 0..t.frag_rows {
        for j in 0..t.frag_cols {
            let _ = writeln!(epilogue, "    let cv{i}{j} = acc{i}{j};");
            let _ = writeln!(epilogue, "    coopStoreT(cv{i}{j}, &sc[slot], 16u);");
            epilogue.push_str("    workgroupBarrier();\n");
            let _ = writeln!(
                epilogue,
                "    for (var u = 0u; u < 8u; u++) {{\n        let e = lane + 32u * u;\n        store_out(m0 + sm + {}u + e / 16u, q0 + sn + {}u + e % 16u, phase, sc[slot + e]);\n    }}",
                16 * i,
                16 * j
            );
            epilogue.push_str("    workgroupBarrier();\n");
        }
    }
    let weight_fn = match v.numerics {
        Numerics::F16W => r#"fn load_pair(co: u32, row: u32, word: u32) -> u32 {
    if (co >= P.cout || 2u * word >= P.k_total) {
        return 0u;
    }
    return w[row * P.w_stride + word];
}
"#,
        Numerics::F32 => r#"fn load_pair(co: u32, row: u32, word: u32) -> u32 {
    let k = 2u * word;
    if (co >= P.cout || k >= P.k_total) {
        return 0u;
    }
    let i = row * P.w_stride + k;
    var hi = 0.0;
    if (k + 1u < P.k_total) {
        hi = w[i + 1u];
    }
    return pack2x16float(vec2<f32>(w[i], hi));
}
"#,
    };
    let snake_decl = if v.snake {
        // As in dac_conv.rs: sin² has period π, so the argument is reduced first (π split in two so n·PI_HI is
        // exact) to keep approximate hardware sin accurate for large |αx|.
        r#"@group(0) @binding(5) var<storage, read> alpha: array<f32>;
fn alpha_of(ci: u32) -> f32 {
    return alpha[ci];
}
fn act(a: f32, v: f32) -> f32 {
    let z = a * v;
    let n = round(z * 0.318309886);
    let r = (z - n * 3.140625) - n * 9.67653589793e-4;
    let s = sin(r);
    return v + s * s / (a + 1e-9);
}
"#
    } else {
        r#"fn alpha_of(ci: u32) -> f32 {
    return 0.0;
}
fn act(a: f32, v: f32) -> f32 {
    return v;
}
"#
    };
    specialize(
        SOURCE,
        &[
            ("W_TYPE", if v.numerics == Numerics::F16W { "u32" } else { "f32" }.to_string()),
            ("WEIGHT_FN", weight_fn.to_string()),
            ("SNAKE_DECL", snake_decl.to_string()),
            ("TM", t.tm().to_string()),
            ("TN", TN.to_string()),
            ("TAPS", v.taps.to_string()),
            ("ACCUMULATE", v.accumulate.to_string()),
            ("TANH", v.tanh.to_string()),
            ("SUBGROUP_TILE", tile_code),
            ("ACC_DECL", acc),
            ("COMPUTE", compute),
            ("EPILOGUE", epilogue),
        ],
    )
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
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
    w_stride: u32,
    grid_x: u32,
    pad: [u32; 3],
}

#[allow(clippy::too_many_arguments)]
fn build(gpu: &Gpu, g: Geometry, x: &GpuBuffer, w: &GpuMatrix, bias: &GpuBuffer, y: &GpuBuffer, fusion: ConvFusion, tile: CoopTile) -> Dispatch {
    assert!(gpu.tensor_cores(), "dac_conv_coop needs a device with tensor cores (Gpu::tensor_cores)");
    let v = CoopVariant {
        tile,
        numerics: w.numerics,
        taps: g.taps,
        snake: fusion.snake_alpha.is_some(),
        accumulate: fusion.accumulate,
        tanh: fusion.tanh,
    };
    let bytes = v.tile.workgroup_bytes();
    assert!(
        bytes <= gpu.limits.max_compute_workgroup_storage_size,
        "dac_conv_coop needs {bytes} bytes of workgroup memory, the device allows {}",
        gpu.limits.max_compute_workgroup_storage_size
    );
    let pipe = gpu.pipeline(&v.key(), "main", || shader(&v));
    let tiles_m = g.cout.div_ceil(v.tile.tm());
    // Time tiles past the per-dimension limit continue along z (z = phase + nphase·split).
    let [grid_x, split, _] = grid_1d(g.cols.div_ceil(TN));
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
        w_stride: w.row_stride_words(),
        grid_x,
        pad: [0; 3],
    };
    let workgroups = if g.len_out == 0 || g.cout == 0 { [0, 0, 0] } else { [grid_x, tiles_m, g.nphase * split] };
    let mut buffers: Vec<&GpuBuffer> = vec![x, &w.data, bias, y];
    if let Some(alpha) = fusion.snake_alpha {
        buffers.push(alpha);
    }
    gpu.dispatch(&pipe, &params, &buffers, workgroups)
}

/// `dac_conv::conv1d` on tensor cores: y `[cout, len_out]` (= or += per `fusion`) Conv1d(x `[cin, len_in]`),
/// zero padding `padding` both sides. Needs `gpu.tensor_cores()`.
#[allow(clippy::too_many_arguments)]
pub fn conv1d(
    gpu: &Gpu,
    x: &GpuBuffer,
    len_in: u32,
    w: &Conv1dWeights,
    stride: u32,
    dilation: u32,
    padding: u32,
    y: &GpuBuffer,
    fusion: ConvFusion,
) -> Dispatch {
    conv1d_with_tile(gpu, x, len_in, w, stride, dilation, padding, y, fusion, CoopTile::for_channels(w.cout))
}

/// `conv1d` with a chosen tile shape (measurements).
#[allow(clippy::too_many_arguments)]
pub fn conv1d_with_tile(
    gpu: &Gpu,
    x: &GpuBuffer,
    len_in: u32,
    w: &Conv1dWeights,
    stride: u32,
    dilation: u32,
    padding: u32,
    y: &GpuBuffer,
    fusion: ConvFusion,
    tile: CoopTile,
) -> Dispatch {
    build(gpu, Geometry::conv1d(len_in, w, stride, dilation, padding), x, &w.w, &w.bias, y, fusion, tile)
}

/// `dac_conv::conv_transpose1d` on tensor cores: y `[cout, len_out]` (= or += per `fusion`)
/// ConvTranspose1d(x `[cin, len_in]`) with `padding` cropped from both ends. Needs `gpu.tensor_cores()`.
pub fn conv_transpose1d(
    gpu: &Gpu,
    x: &GpuBuffer,
    len_in: u32,
    w: &ConvTranspose1dWeights,
    padding: u32,
    y: &GpuBuffer,
    fusion: ConvFusion,
) -> Dispatch {
    conv_transpose1d_with_tile(gpu, x, len_in, w, padding, y, fusion, CoopTile::for_channels(w.cout))
}

/// `conv_transpose1d` with a chosen tile shape (measurements).
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose1d_with_tile(
    gpu: &Gpu,
    x: &GpuBuffer,
    len_in: u32,
    w: &ConvTranspose1dWeights,
    padding: u32,
    y: &GpuBuffer,
    fusion: ConvFusion,
    tile: CoopTile,
) -> Dispatch {
    build(gpu, Geometry::conv_transpose1d(len_in, w, padding), x, &w.w, &w.bias, y, fusion, tile)
}

/// Whether a convolution with `cout` output channels suits the tensor-core kernel at all: a tile's 96 or 128 rows
/// would mostly idle below 32 channels (the decoder's last, 1-channel convolution stays on `dac_conv`).
pub fn worthwhile(cout: u32) -> bool {
    cout >= 32
}

/// Whether this kernel beats the plain straight-line `dac_conv` for a layer with `cout` channels and `len_out`
/// output samples. Measured on an H100 (`bench_dac_coop`, f16w): it wins only on the long, narrow layers of the
/// last two blocks (192 channels × 220k samples 5.3 vs 6.6 ms, 96 × 441k 2.5 vs 3.4 ms for k7, 0.93 vs 1.38 ms
/// for k1) and loses on the wide ones and on every short window (18 frames: 13.9 vs 3.2 ms for the decoder):
/// its im2col staging, not the tensor cores, is the limit there.
pub fn faster_than_plain(cout: u32, len_out: u32) -> bool {
    worthwhile(cout) && cout <= 192 && len_out >= 1 << 17
}
