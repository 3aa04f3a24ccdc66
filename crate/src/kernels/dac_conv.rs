//! `shaders/dac_conv.wgsl`: Conv1d and ConvTranspose1d over f32 `[channels, time]` activations as one
//! tiled implicit GEMM, with Snake fused into the input load and residual add / tanh into the epilogue.
//!
//! ConvTranspose1d (stride s, kernel K) is computed as s phase-wise ordinary convolutions: output time
//! t = q·s + p − padding takes taps k = p + m·s of input q − m. The weights are rewritten once at upload
//! into that per-phase layout (`conv_transpose_phase_weights`).
use crate::gpu::{grid_1d, specialize, Dispatch, Gpu, GpuBuffer, GpuError};
use super::{pack_f16_rows, stride_words, weight_decl, GpuMatrix, Numerics};

const SOURCE: &str = include_str!("../../../shaders/dac_conv.wgsl");

/// Output length of a Conv1d (PyTorch formula).
pub fn conv1d_len(len_in: u32, kernel: u32, stride: u32, dilation: u32, padding: u32) -> u32 {
    let span = dilation * (kernel - 1) + 1;
    let padded = len_in + 2 * padding;
    if padded < span {
        0
    } else {
        (padded - span) / stride + 1
    }
}

/// Output length of a ConvTranspose1d: (L − 1)·s − 2p + K (0 when that is negative or L = 0).
pub fn conv_transpose1d_len(len_in: u32, kernel: u32, stride: u32, padding: u32) -> u32 {
    if len_in == 0 {
        return 0;
    }
    ((len_in as i64 - 1) * stride as i64 - 2 * padding as i64 + kernel as i64).max(0) as u32
}

/// An all-zero weight matrix `[rows, cols]` to be filled with `write_matrix` (same limit check as upload).
pub fn empty_matrix(gpu: &Gpu, label: &str, rows: usize, cols: usize, numerics: Numerics) -> Result<GpuMatrix, GpuError> {
    let bytes = rows as u64 * stride_words(cols as u32, numerics) as u64 * 4;
    if bytes > gpu.limits.max_storage_buffer_binding_size {
        return Err(GpuError::LimitTooSmall {
            adapter: gpu.info.name.clone(),
            limit: "max_storage_buffer_binding_size",
            available: gpu.limits.max_storage_buffer_binding_size,
            required: bytes,
        });
    }
    Ok(GpuMatrix { data: gpu.buffer(label, bytes), rows: rows as u32, cols: cols as u32, numerics })
}

/// Writes row-major f32 rows `[rows, cols]` into `m` starting at row `row0`, in `m`'s storage format.
pub fn write_matrix_rows(gpu: &Gpu, m: &GpuMatrix, row0: usize, data: &[f32], rows: usize) {
    let cols = m.cols as usize;
    assert_eq!(data.len(), rows * cols, "matrix rows length");
    assert!(row0 + rows <= m.rows as usize, "matrix rows out of range");
    let stride_bytes = m.row_stride_words() as u64 * 4;
    let dst = m.data.slice(row0 as u64 * stride_bytes, rows as u64 * stride_bytes);
    match m.numerics {
        Numerics::F32 => gpu.write(&dst, data),
        Numerics::F16W => gpu.write(&dst, &pack_f16_rows(data, rows, cols)),
    }
}

/// Conv1d weights: matrix `[cout, cin·kernel]` (the PyTorch `[cout, cin, kernel]` tensor flattened) and bias.
pub struct Conv1dWeights {
    pub w: GpuMatrix,
    pub bias: GpuBuffer,
    pub cin: u32,
    pub cout: u32,
    pub kernel: u32,
}

impl Conv1dWeights {
    /// Zero weights and bias, to be filled with `set_weight` / `set_bias`.
    pub fn allocate(gpu: &Gpu, label: &str, cout: usize, cin: usize, kernel: usize, numerics: Numerics) -> Result<Conv1dWeights, GpuError> {
        Ok(Conv1dWeights {
            w: empty_matrix(gpu, label, cout, cin * kernel, numerics)?,
            bias: gpu.buffer(label, cout as u64 * 4),
            cin: cin as u32,
            cout: cout as u32,
            kernel: kernel as u32,
        })
    }

    /// `w`: `[cout, cin, kernel]` row-major (PyTorch Conv1d layout), `bias`: `[cout]`.
    #[allow(clippy::too_many_arguments)]
    pub fn upload(
        gpu: &Gpu,
        label: &str,
        w: &[f32],
        bias: &[f32],
        cout: usize,
        cin: usize,
        kernel: usize,
        numerics: Numerics,
    ) -> Result<Conv1dWeights, GpuError> {
        let c = Conv1dWeights::allocate(gpu, label, cout, cin, kernel, numerics)?;
        c.set_weight(gpu, w);
        c.set_bias(gpu, bias);
        Ok(c)
    }

    /// `w`: `[cout, cin, kernel]` row-major.
    pub fn set_weight(&self, gpu: &Gpu, w: &[f32]) {
        write_matrix_rows(gpu, &self.w, 0, w, self.cout as usize);
    }

    pub fn set_bias(&self, gpu: &Gpu, bias: &[f32]) {
        assert_eq!(bias.len(), self.cout as usize, "conv bias length");
        gpu.write(&self.bias, bias);
    }
}

/// ConvTranspose1d weights in the per-phase layout of `conv_transpose_phase_weights`, and bias.
pub struct ConvTranspose1dWeights {
    pub w: GpuMatrix,
    pub bias: GpuBuffer,
    pub cin: u32,
    pub cout: u32,
    pub kernel: u32,
    pub stride: u32,
}

impl ConvTranspose1dWeights {
    /// Zero weights and bias, to be filled with `set_weight` / `set_bias`.
    #[allow(clippy::too_many_arguments)]
    pub fn allocate(
        gpu: &Gpu,
        label: &str,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        numerics: Numerics,
    ) -> Result<ConvTranspose1dWeights, GpuError> {
        assert!(stride > 0 && kernel > 0, "conv-transpose stride and kernel must be positive");
        Ok(ConvTranspose1dWeights {
            w: empty_matrix(gpu, label, stride * cout, cin * kernel.div_ceil(stride), numerics)?,
            bias: gpu.buffer(label, cout as u64 * 4),
            cin: cin as u32,
            cout: cout as u32,
            kernel: kernel as u32,
            stride: stride as u32,
        })
    }

    /// `w`: `[cin, cout, kernel]` row-major (PyTorch ConvTranspose1d layout), `bias`: `[cout]`.
    #[allow(clippy::too_many_arguments)]
    pub fn upload(
        gpu: &Gpu,
        label: &str,
        w: &[f32],
        bias: &[f32],
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        numerics: Numerics,
    ) -> Result<ConvTranspose1dWeights, GpuError> {
        let c = ConvTranspose1dWeights::allocate(gpu, label, cin, cout, kernel, stride, numerics)?;
        c.set_weight(gpu, w);
        c.set_bias(gpu, bias);
        Ok(c)
    }

    /// `w`: `[cin, cout, kernel]` row-major; rewritten into the per-phase layout here.
    pub fn set_weight(&self, gpu: &Gpu, w: &[f32]) {
        let (cin, cout, kernel, stride) = (self.cin as usize, self.cout as usize, self.kernel as usize, self.stride as usize);
        let phased = conv_transpose_phase_weights(w, cin, cout, kernel, stride);
        write_matrix_rows(gpu, &self.w, 0, &phased, stride * cout);
    }

    pub fn set_bias(&self, gpu: &Gpu, bias: &[f32]) {
        assert_eq!(bias.len(), self.cout as usize, "conv-transpose bias length");
        gpu.write(&self.bias, bias);
    }

    /// Taps per phase: ⌈kernel / stride⌉.
    pub fn taps(&self) -> u32 {
        self.kernel.div_ceil(self.stride)
    }
}

/// Rewrites ConvTranspose1d weights `[cin, cout, kernel]` into `[stride·cout, cin·taps]`, taps = ⌈K/s⌉:
/// row `p·cout + co`, column `ci·taps + j` holds W[ci, co, p + (taps − 1 − j)·s] (0 past the kernel), so that
/// phase p is an ordinary convolution of the input starting at offset −(taps − 1).
pub fn conv_transpose_phase_weights(w: &[f32], cin: usize, cout: usize, kernel: usize, stride: usize) -> Vec<f32> {
    assert_eq!(w.len(), cin * cout * kernel, "conv-transpose weight length");
    assert!(stride > 0 && kernel > 0, "conv-transpose stride and kernel must be positive");
    let taps = kernel.div_ceil(stride);
    let mut out = vec![0.0f32; stride * cout * cin * taps];
    for p in 0..stride {
        for co in 0..cout {
            let row = &mut out[(p * cout + co) * cin * taps..(p * cout + co + 1) * cin * taps];
            for ci in 0..cin {
                for j in 0..taps {
                    let k = p + (taps - 1 - j) * stride;
                    if k < kernel {
                        row[ci * taps + j] = w[(ci * cout + co) * kernel + k];
                    }
                }
            }
        }
    }
    out
}

/// Optional fusions of one convolution call.
#[derive(Clone, Copy, Default)]
pub struct ConvFusion<'a> {
    /// Snake on the input, per input channel α (f32 `[cin]`): x → x + sin²(αx)/(α + 1e-9).
    pub snake_alpha: Option<&'a GpuBuffer>,
    /// y += conv(x) instead of y = conv(x) (residual add).
    pub accumulate: bool,
    /// y = tanh(…) (the decoder's last layer); applied after the residual add if both are set.
    pub tanh: bool,
}

/// Work split of the convolution kernel: a workgroup of 256 = `wm`·`wn` threads computes `wm·rm` output
/// channels × `wn·rn` time steps, `rm` (4 or 8) × `rn` per thread; `kr_max` reduction rows (power of two
/// ≤ 256) and `xs_max` input words are staged per chunk. Workgroup memory is `4·(kr_max·(wm·rm + 4) + xs_max)`
/// bytes (≤ 16 KiB). `f16_math`: stage activations and weights as f16 and multiply in f16 (each chunk's
/// ≤ `kr_max` products summed in f16, chunks in f32); needs the device's `shader-f16` feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvTile {
    pub wm: u32,
    pub wn: u32,
    pub rm: u32,
    pub rn: u32,
    pub kr_max: u32,
    pub xs_max: u32,
    pub f16_math: bool,
}

impl Default for ConvTile {
    fn default() -> ConvTile {
        // 128 × 128 outputs, 8 × 8 per thread (64 FMAs per 10 shared loads); 16 reduction rows and
        // the rest of 16 KiB for input spans (dilation 9 × 6 taps + 128 columns per channel).
        ConvTile { wm: 16, wn: 16, rm: 8, rn: 8, kr_max: 16, xs_max: 1984, f16_math: false }
    }
}

impl ConvTile {
    /// The default split, with f16 arithmetic for f16 weights where a GPU has `shader-f16` (twice the
    /// FMA rate with packed f16; CPU adapters emulate f16 and only lose by it).
    pub fn preferred(gpu: &Gpu, numerics: Numerics) -> ConvTile {
        let f16_math = numerics == Numerics::F16W
            && gpu.features.contains(wgpu::Features::SHADER_F16)
            && gpu.info.device_type != wgpu::DeviceType::Cpu;
        ConvTile { f16_math, ..ConvTile::default() }
    }

    pub fn tm(&self) -> u32 {
        self.wm * self.rm
    }

    pub fn tn(&self) -> u32 {
        self.wn * self.rn
    }

    fn check(&self) {
        assert_eq!(self.wm * self.wn, 256, "ConvTile: wm·wn must be 256");
        assert!(self.rm == 4 || self.rm == 8, "ConvTile: rm must be 4 or 8");
        assert!(self.rn > 0, "ConvTile: rn must be positive");
        assert!(self.kr_max.is_power_of_two() && self.kr_max <= 256, "ConvTile: kr_max must be a power of two ≤ 256");
        let bytes = 4 * (self.kr_max * (self.tm() + 4) + self.xs_max);
        assert!(bytes <= 16384, "ConvTile uses {bytes} bytes of workgroup memory (> 16 KiB)");
    }

    /// Channels and taps per reduction chunk and the staged span per channel, for a given geometry.
    fn chunking(&self, cin: u32, taps: u32, in_stride: u32, dil: u32) -> (u32, u32, u32) {
        let span_for = |kt: u32| (self.tn() - 1) * in_stride + (kt - 1) * dil + 1;
        let mut kt = taps.min(self.kr_max);
        while kt > 1 && span_for(kt) > self.xs_max {
            kt -= 1;
        }
        let span = span_for(kt);
        assert!(
            span <= self.xs_max,
            "convolution stride {in_stride} too large for the tile ({} time steps, {} staged words)",
            self.tn(),
            self.xs_max
        );
        let cc = if kt == taps { (self.kr_max / kt).min(self.xs_max / span).clamp(1, cin.max(1)) } else { 1 };
        (cc, kt, span)
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ConvParams {
    cin: u32,
    cout: u32,
    taps: u32,
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
    chan_chunk: u32,
    tap_chunk: u32,
    span: u32,
}

fn pipeline(gpu: &Gpu, numerics: Numerics, tile: ConvTile, fusion: &ConvFusion) -> std::sync::Arc<wgpu::ComputePipeline> {
    tile.check();
    let snake = fusion.snake_alpha.is_some();
    assert!(
        !tile.f16_math || gpu.features.contains(wgpu::Features::SHADER_F16),
        "ConvTile::f16_math needs a device with shader-f16"
    );
    let key = format!(
        "dac_conv:{}:{}:{}x{}x{}x{}:{}:{}:s{}a{}t{}",
        numerics.name(),
        if tile.f16_math { "h" } else { "f" },
        tile.wm,
        tile.wn,
        tile.rm,
        tile.rn,
        tile.kr_max,
        tile.xs_max,
        snake as u8,
        fusion.accumulate as u8,
        fusion.tanh as u8
    );
    gpu.pipeline(&key, "conv", || {
        let snake_decl = if snake {
            // sin² has period π: reducing the argument first keeps approximate hardware sin accurate
            // for large |αx| (π split in two so n·PI_HI is exact).
            "@group(0) @binding(5) var<storage, read> alpha: array<f32>;\n\
             fn act(ci: u32, v: f32) -> f32 {\n\
                 let a = alpha[ci];\n\
                 let z = a * v;\n\
                 let n = round(z * 0.318309886);\n\
                 let r = (z - n * 3.140625) - n * 9.67653589793e-4;\n\
                 let s = sin(r);\n\
                 return v + s * s / (a + 1e-9);\n\
             }\n"
        } else {
            "fn act(ci: u32, v: f32) -> f32 { return v; }\n"
        };
        specialize(
            SOURCE,
            &[
                ("WEIGHT_DECL", weight_decl(numerics, 2)),
                ("SNAKE_DECL", snake_decl.to_string()),
                ("WM", tile.wm.to_string()),
                ("WN", tile.wn.to_string()),
                ("RM", tile.rm.to_string()),
                ("RN", tile.rn.to_string()),
                ("KR_MAX", tile.kr_max.to_string()),
                ("XS_MAX", tile.xs_max.to_string()),
                ("ACCUMULATE", fusion.accumulate.to_string()),
                ("TANH", fusion.tanh.to_string()),
                ("ENABLE_F16", if tile.f16_math { "enable f16;" } else { "" }.to_string()),
                ("H", if tile.f16_math { "f16" } else { "f32" }.to_string()),
                ("HALF", tile.f16_math.to_string()),
            ],
        )
    })
}

/// The geometry shared by both convolution kinds (see the shader's header).
struct Geometry {
    cin: u32,
    cout: u32,
    taps: u32,
    len_in: u32,
    len_out: u32,
    in_stride: u32,
    dil: u32,
    in_off: i32,
    out_stride: u32,
    out_pad: u32,
    nphase: u32,
    /// Columns per phase to cover (an upper bound over phases; the kernel drops t ≥ len_out).
    cols: u32,
}

#[allow(clippy::too_many_arguments)]
fn build(
    gpu: &Gpu,
    g: Geometry,
    x: &GpuBuffer,
    w: &GpuMatrix,
    bias: &GpuBuffer,
    y: &GpuBuffer,
    fusion: ConvFusion,
    tile: ConvTile,
) -> Dispatch {
    let pipe = pipeline(gpu, w.numerics, tile, &fusion);
    let (chan_chunk, tap_chunk, span) = tile.chunking(g.cin, g.taps, g.in_stride, g.dil);
    let tiles_n = g.cols.div_ceil(tile.tn());
    let tiles_m = g.cout.div_ceil(tile.tm());
    // Time tiles past the per-dimension limit continue along z (z = phase + nphase·split).
    let [grid_x, split, _] = grid_1d(tiles_n);
    let params = ConvParams {
        cin: g.cin,
        cout: g.cout,
        taps: g.taps,
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
        chan_chunk,
        tap_chunk,
        span,
    };
    let workgroups = if g.len_out == 0 { [0, 0, 0] } else { [grid_x, tiles_m, g.nphase * split] };
    let mut buffers: Vec<&GpuBuffer> = vec![x, &w.data, bias, y];
    if let Some(alpha) = fusion.snake_alpha {
        buffers.push(alpha);
    }
    gpu.dispatch(&pipe, &params, &buffers, workgroups)
}

/// y `[cout, len_out]` (= or += per `fusion`) Conv1d(x `[cin, len_in]`), zero padding `padding` both sides.
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
    tile: ConvTile,
) -> Dispatch {
    assert!(stride > 0 && dilation > 0, "conv1d stride and dilation must be positive");
    let len_out = conv1d_len(len_in, w.kernel, stride, dilation, padding);
    let g = Geometry {
        cin: w.cin,
        cout: w.cout,
        taps: w.kernel,
        len_in,
        len_out,
        in_stride: stride,
        dil: dilation,
        in_off: -(padding as i32),
        out_stride: 1,
        out_pad: 0,
        nphase: 1,
        cols: len_out,
    };
    build(gpu, g, x, &w.w, &w.bias, y, fusion, tile)
}

/// y `[cout, len_out]` (= or += per `fusion`) ConvTranspose1d(x `[cin, len_in]`) with `padding` cropped
/// from both ends: len_out = (len_in − 1)·stride − 2·padding + kernel.
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose1d(
    gpu: &Gpu,
    x: &GpuBuffer,
    len_in: u32,
    w: &ConvTranspose1dWeights,
    padding: u32,
    y: &GpuBuffer,
    fusion: ConvFusion,
    tile: ConvTile,
) -> Dispatch {
    let len_out = conv_transpose1d_len(len_in, w.kernel, w.stride, padding);
    let taps = w.taps();
    let g = Geometry {
        cin: w.cin,
        cout: w.cout,
        taps,
        len_in,
        len_out,
        in_stride: 1,
        dil: 1,
        in_off: -(taps as i32 - 1),
        out_stride: w.stride,
        out_pad: padding,
        nphase: w.stride,
        // Phase p holds ⌈(len_out + pad − p)/s⌉ − ⌈(pad − p)/s⌉ ≤ ⌈len_out/s⌉ columns.
        cols: len_out.div_ceil(w.stride),
    };
    build(gpu, g, x, &w.w, &w.bias, y, fusion, tile)
}
