//! `shaders/dac_conv.wgsl`: Conv1d and ConvTranspose1d over f32 `[channels, time]` activations as one
//! tiled implicit GEMM, with Snake fused into the input load and residual add / tanh into the epilogue.
//! The per-thread arithmetic is straight-line WGSL generated here per tile shape and chunk (`conv_code`);
//! the tile and an optional split of the reduction (split-K, partial sums added in order by a second pass)
//! are picked per call from the geometry (`ConvTile::resolve`).
//!
//! ConvTranspose1d (stride s, kernel K) is computed as s phase-wise ordinary convolutions: output time
//! t = q·s + p − padding takes taps k = p + m·s of input q − m. The weights are rewritten once at upload
//! into that per-phase layout (`conv_transpose_phase_weights`).
use crate::gpu::{grid_1d, specialize, Dispatch, Gpu, GpuBuffer, GpuError, KernelVariant};
use crate::kernels::wgsl::Emitter;
use crate::kernels::{weight_decl, GpuMatrix, Numerics, WeightFormat};

const SOURCE: &str = include_str!("../../../../shaders/dac_conv.wgsl");

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
    GpuMatrix::empty(gpu, label, rows, cols, numerics)
}

/// Writes row-major f32 rows `[rows, cols]` into `m` starting at row `row0`, in `m`'s storage format (the codec's
/// weights are f32 or f16, never quantized).
pub fn write_matrix_rows(gpu: &Gpu, m: &GpuMatrix, row0: usize, data: &[f32], rows: usize) {
    assert!(!matches!(m.format, WeightFormat::Quant(_)), "write_matrix_rows: the codec's weights are never quantized");
    m.write_rows(gpu, row0, data, rows).expect("f32 and f16 conversions cannot fail");
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
        self.set_phased_weight(gpu, &self.phased(w));
    }

    /// `w` `[cin, cout, kernel]` in the per-phase layout of `conv_transpose_phase_weights`.
    pub fn phased(&self, w: &[f32]) -> Vec<f32> {
        conv_transpose_phase_weights(w, self.cin as usize, self.cout as usize, self.kernel as usize, self.stride as usize)
    }

    /// Uploads weights already in the per-phase layout (`phased`).
    pub fn set_phased_weight(&self, gpu: &Gpu, phased: &[f32]) {
        write_matrix_rows(gpu, &self.w, 0, phased, (self.stride * self.cout) as usize);
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

/// Workgroups a convolution should launch to fill a big GPU (2 per SM of a 132-SM H100): below it the
/// per-call choice takes smaller tiles, then splits the reduction.
pub const PARALLELISM_TARGET: u32 = 264;
/// Reduction rows (channels × taps) a split must keep at least, so that the partial sums' round trip
/// through memory stays small next to the arithmetic.
pub const MIN_SPLIT_ROWS: u32 = 512;
/// Reduction rows staged per chunk, at most.
const KR_MAX: u32 = 16;
/// Workgroup memory available to a tile.
const WORKGROUP_BYTES: u32 = 16384;

/// Output tile of one 256-thread workgroup: `wm·rm` output channels × `wn·rn` time steps, each thread
/// `rm` (4 or 8, as vec4s) channels × `rn` time steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvShape {
    pub wm: u32,
    pub wn: u32,
    pub rm: u32,
    pub rn: u32,
}

impl ConvShape {
    /// 128 × 128, 8 × 8 per thread: the most arithmetic per shared load, for long inputs.
    pub const LARGE: ConvShape = ConvShape { wm: 16, wn: 16, rm: 8, rn: 8 };
    /// 64 × 64, 4 × 4 per thread.
    pub const MEDIUM: ConvShape = ConvShape { wm: 16, wn: 16, rm: 4, rn: 4 };
    /// 32 × 64, 4 × 2 per thread.
    pub const SMALL: ConvShape = ConvShape { wm: 8, wn: 32, rm: 4, rn: 2 };
    /// 64 × 32, 4 × 2 per thread: short windows (a streaming window's first layers are 18–30 steps long).
    pub const SHORT: ConvShape = ConvShape { wm: 16, wn: 16, rm: 4, rn: 2 };
    /// 4 × 1024, 4 × 4 per thread: few output channels (the decoder's last conv has one).
    pub const NARROW: ConvShape = ConvShape { wm: 1, wn: 256, rm: 4, rn: 4 };
    /// Every shape, largest first (the order `ConvTile`'s per-call choice prefers on ties).
    pub const ALL: [ConvShape; 5] = [ConvShape::LARGE, ConvShape::MEDIUM, ConvShape::SMALL, ConvShape::SHORT, ConvShape::NARROW];

    pub fn tm(&self) -> u32 {
        self.wm * self.rm
    }

    pub fn tn(&self) -> u32 {
        self.wn * self.rn
    }

    fn check(&self) {
        assert_eq!(self.wm * self.wn, 256, "ConvShape: wm·wn must be 256");
        assert!(self.rm == 4 || self.rm == 8, "ConvShape: rm must be 4 or 8");
        assert!(self.rn > 0, "ConvShape: rn must be positive");
    }

    /// Channels and taps per chunk, staged input span per channel and staged input words (a multiple of
    /// 256), or None when even one tap of one channel does not fit the workgroup memory.
    fn chunking(&self, g: &Geometry, max_channels: u32, elem_bytes: u32) -> Option<Chunking> {
        let budget = WORKGROUP_BYTES / elem_bytes;
        let ws = |rows: u32| rows * (self.tm() + 4);
        let xs = |words: u32| words.div_ceil(256) * 256;
        let span_for = |kt: u32| (self.tn() - 1) * g.in_stride + (kt - 1) * g.dil + 1;
        let kt = (1..=g.taps.min(KR_MAX)).rev().find(|&kt| ws(kt) + xs(span_for(kt)) <= budget)?;
        let span = span_for(kt);
        let cc = if kt == g.taps {
            (1..=(KR_MAX / kt).min(max_channels.max(1))).rev().find(|&cc| ws(cc * kt) + xs(cc * span) <= budget).unwrap_or(1)
        } else {
            1
        };
        Some(Chunking { cc, kt, span, xs: xs(cc * span) })
    }

    fn workgroups(&self, g: &Geometry) -> u32 {
        g.cols.div_ceil(self.tn()) * g.cout.div_ceil(self.tm()) * g.nphase
    }
}

/// How a convolution call is split into workgroups. `Default` (and `preferred`) pick the shape and the
/// split-K per call from the geometry (`ConvTile::resolve`); setting `shape` or `splits` forces them.
/// `f16_math`: stage activations and weights as f16 and multiply in f16 (each chunk's ≤ 16 products summed
/// in f16, chunks in f32); needs the device's `shader-f16` feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ConvTile {
    pub shape: Option<ConvShape>,
    /// Splits of the input channels (1 = no split-K).
    pub splits: Option<u32>,
    pub f16_math: bool,
}

/// What a convolution call launches: its work split and dispatches (1, or 2 with split-K).
pub struct ConvLaunch {
    pub shape: ConvShape,
    pub splits: u32,
    /// Workgroups of the convolution pass.
    pub workgroups: u32,
    pub dispatches: Vec<Dispatch>,
}

impl ConvLaunch {
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        for d in &self.dispatches {
            d.record(pass);
        }
    }
}

struct Chunking {
    cc: u32,
    kt: u32,
    span: u32,
    xs: u32,
}

impl ConvTile {
    /// Per-call choice, with f16 arithmetic for f16 weights where the device allows it (`Gpu::f16_arithmetic`:
    /// `shader-f16` on a GPU — twice the FMA rate with packed f16; CPU adapters emulate f16 and only lose by it).
    pub fn preferred(gpu: &Gpu, numerics: Numerics) -> ConvTile {
        let cpu = gpu.info.device_type == wgpu::DeviceType::Cpu;
        let f16_math = numerics == Numerics::F16W && gpu.f16_arithmetic();
        // Software adapters get the smallest register tile: Chrome's SwiftShader lost the device (GPU process
        // gone after ~2 minutes) compiling the larger tiles' straight-line code; a CPU gains nothing from them.
        let shape = cpu.then_some(ConvShape::SHORT);
        ConvTile { shape, f16_math, ..ConvTile::default() }
    }

    /// The rule, for what is not forced:
    /// - shape: `NARROW` when cout ≤ 4; else the first of `LARGE`, `MEDIUM`, `SMALL` that launches
    ///   ≥ `PARALLELISM_TARGET` workgroups; else (a short window) the shape with the fewest padded outputs
    ///   (tiles·TM·TN; ties to the most workgroups up to the target, then to the larger tile) — shapes
    ///   whose staged input does not fit are skipped;
    /// - splits: when that still launches fewer than `PARALLELISM_TARGET` workgroups, the input channels are
    ///   split in ⌈target / workgroups⌉ parts, as far as each keeps ≥ `MIN_SPLIT_ROWS` reduction rows.
    fn resolve(&self, g: &Geometry) -> Resolved {
        let elem = if self.f16_math { 2 } else { 4 };
        let fits = |s: &ConvShape| s.chunking(g, g.cin, elem).is_some();
        let shape = match self.shape {
            Some(s) => s,
            None => {
                let narrow = ConvShape::NARROW;
                if g.cout <= narrow.tm() && fits(&narrow) {
                    narrow
                } else {
                    let big = &ConvShape::ALL[..4];
                    let pick = big[..3].iter().find(|s| fits(s) && s.workgroups(g) >= PARALLELISM_TARGET);
                    let padded = |s: &ConvShape| s.workgroups(g) as u64 * (s.tm() * s.tn()) as u64;
                    // Among equally padded shapes, the one closest to the target without split-K.
                    let key = |s: &&ConvShape| (padded(s), std::cmp::Reverse(s.workgroups(g).min(PARALLELISM_TARGET)));
                    let small = || big.iter().filter(|s| fits(s)).min_by_key(key);
                    *pick.or_else(small).unwrap_or(&ConvShape::LARGE)
                }
            }
        };
        shape.check();
        let rows = g.cin * g.taps;
        let wanted = match self.splits {
            Some(n) => n.clamp(1, g.cin.max(1)),
            None => {
                let wgs = shape.workgroups(g).max(1);
                if wgs >= PARALLELISM_TARGET {
                    1
                } else {
                    PARALLELISM_TARGET.div_ceil(wgs).min(rows / MIN_SPLIT_ROWS).max(1)
                }
            }
        };
        let split_ch = g.cin.div_ceil(wanted).max(1);
        let chunking = shape.chunking(g, split_ch, elem).unwrap_or_else(|| {
            panic!("convolution stride {} / dilation {} too large for the {}x{} tile", g.in_stride, g.dil, shape.tm(), shape.tn())
        });
        // Splits in whole chunks of channels.
        let split_ch = split_ch.div_ceil(chunking.cc) * chunking.cc;
        Resolved { shape, splits: g.cin.div_ceil(split_ch).max(1), split_ch, chunking }
    }
}

/// A call's resolved work split.
struct Resolved {
    shape: ConvShape,
    splits: u32,
    /// Input channels per split.
    split_ch: u32,
    chunking: Chunking,
}

wgsl_params! {
    /// Uniform parameters of the convolution kernel (section `conv`).
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
        span: u32,
        /// input channels per split, chunks per split, tap blocks per channel block, splits
        split_ch: u32,
        chunks: u32,
        tap_blocks: u32,
        splits: u32,
        _pad0: u32,
        _pad1: u32,
    }
}

wgsl_params! {
    /// Uniform parameters of the split-K reduction (section `reduce`).
    struct ReduceParams {
        cout: u32,
        len_out: u32,
        splits: u32,
        _pad: u32,
    }
}

/// The text of one `//== section: <name>` of `shaders/dac_conv.wgsl` (up to the next section).
fn section(name: &str) -> &'static str {
    crate::kernels::wgsl::section(SOURCE, "dac_conv.wgsl", name)
}

/// Generated straight-line parts of the conv entry point (see the shader's header).
struct ConvCode {
    setup: String,
    fetch: String,
    store: String,
    compute: String,
    epilogue: String,
}

/// The conv kernel's per-thread code for `shape` and chunk `cc` × `kt` with `xs` staged input words:
/// named values only, no per-thread arrays.
fn conv_code(shape: ConvShape, cc: u32, kt: u32, xs: u32, f16_math: bool, split: bool) -> ConvCode {
    let (tm, rn, wm) = (shape.tm(), shape.rn, shape.wm);
    let hs = shape.rm / 4;
    let kr = cc * kt;
    let ws_stride = tm + 4;
    let w_per = (tm * kr).div_ceil(256);
    let x_per = xs / 256;
    let h = if f16_math { "f16" } else { "f32" };
    let mut setup = Emitter::new(1);
    let mut fetch = Emitter::new(2);
    let mut store = Emitter::new(2);
    let mut compute = Emitter::new(2);
    let mut epilogue = Emitter::new(1);

    // Staging: weight element e = lid + 256·i of the chunk's KR × TM is row e % KR, channel e / KR
    // (consecutive lanes read consecutive columns of a weight row); input element e is channel e / span,
    // offset e % span.
    for i in 0..w_per {
        let e = format!("(lid + {}u)", 256 * i);
        emit!(setup, "let wm_{i} = {e} / KR;");
        emit!(setup, "let wr_{i} = {e} % KR;");
        emit!(setup, "let wc_{i} = wr_{i} / KT;");
        emit!(setup, "let wk_{i} = wr_{i} % KT;");
        emit!(setup, "let wok_{i} = wm_{i} < TM && m0 + wm_{i} < P.cout;");
        emit!(setup, "let wb_{i} = (w_row0 + min(m0 + wm_{i}, P.cout - 1u)) * P.w_stride;");
        emit!(setup, "let wsi_{i} = wr_{i} * WS + wm_{i};");
        emit!(setup, "var wv_{i} = 0.0;");
    }
    for i in 0..x_per {
        let e = format!("(lid + {}u)", 256 * i);
        emit!(setup, "let xc_{i} = {e} / span;");
        emit!(setup, "let xo_{i} = i32({e} - xc_{i} * span);");
        emit!(setup, "let xok_{i} = xc_{i} < CC;");
        emit!(setup, "var xv_{i} = 0.0;");
    }
    // Offset of reduction row r's input (channel r / KT, tap r % KT) for this thread's first column.
    for r in 0..kr {
        emit!(setup, "let xr_{r} = xb + {}u * span + {}u * dil;", r / kt, r % kt);
    }
    for hh in 0..hs {
        for j in 0..rn {
            emit!(setup, "var acc_{hh}_{j} = vec4<f32>(0.0);");
            if f16_math {
                emit!(setup, "var part_{hh}_{j} = vec4<f16>(0.0);");
            }
        }
    }

    fetch.block("", |fetch| {
        fetch.line("let k0 = (cf % P.tap_blocks) * KT;");
        fetch.line("let ci0 = split_ch0 + cf / P.tap_blocks * CC;");
        fetch.line("let base = i32(q0 * P.in_stride + k0 * dil) + P.in_off;");
        for i in 0..w_per {
            emit!(fetch, "wv_{i} = w_at(wb_{i}, wok_{i}, ci0 + wc_{i}, k0 + wk_{i}, ci_end);");
        }
        for i in 0..x_per {
            emit!(fetch, "xv_{i} = x_at(xok_{i}, ci0 + xc_{i}, base + xo_{i}, ci_end);");
        }
    });

    for i in 0..w_per {
        let st = format!("ws[wsi_{i} / 4u][wsi_{i} % 4u] = H(wv_{i});");
        if 256 * (i + 1) <= tm * kr {
            store.line(&st);
        } else {
            emit!(store, "if (wm_{i} < TM) {{ {st} }}");
        }
    }
    for i in 0..x_per {
        emit!(store, "xs[lid + {}u] = H(xv_{i});", 256 * i);
    }

    // Steps of a few rows: each step's shared loads, then its FMAs.
    let target = if f16_math { "part" } else { "acc" };
    let step = (32 / (shape.rm + rn)).max(1);
    let mut r0 = 0;
    while r0 < kr {
        let rows = r0..(r0 + step).min(kr);
        for r in rows.clone() {
            for hh in 0..hs {
                emit!(compute, "let a_{r}_{hh} = ws[{}u + tm];", r * ws_stride / 4 + hh * wm);
            }
            for j in 0..rn {
                emit!(compute, "let b_{r}_{j} = vec4<H>(xs[xr_{r} + {j}u * cs]);");
            }
        }
        for r in rows {
            for hh in 0..hs {
                for j in 0..rn {
                    emit!(compute, "{target}_{hh}_{j} = fma(a_{r}_{hh}, b_{r}_{j}, {target}_{hh}_{j});");
                }
            }
        }
        r0 += step;
    }
    if f16_math {
        for hh in 0..hs {
            for j in 0..rn {
                emit!(compute, "acc_{hh}_{j} += vec4<f32>(part_{hh}_{j});");
                emit!(compute, "part_{hh}_{j} = vec4<{h}>(0.0);");
            }
        }
    }

    // Thread (tm, tn) owns channels h·4·WM + 4·tm + (0..4) and columns tn + j·WN.
    for j in 0..rn {
        // q·out_stride + phase ≥ out_pad holds for every q ≥ q_lo, so t never wraps.
        emit!(epilogue, "let t_{j} = (q0 + tn + {}u) * P.out_stride + phase - P.out_pad;", j * shape.wn);
    }
    for hh in 0..hs {
        for c in 0..4 {
            emit!(epilogue, "let co_{hh}_{c} = m0 + {}u + 4u * tm;", hh * 4 * wm + c);
        }
    }
    let split_arg = if split { "split, " } else { "" };
    for hh in 0..hs {
        for j in 0..rn {
            for (c, comp) in ["x", "y", "z", "w"].iter().enumerate() {
                emit!(epilogue, "emit({split_arg}co_{hh}_{c}, t_{j}, acc_{hh}_{j}.{comp});");
            }
        }
    }
    ConvCode { setup: setup.finish(), fetch: fetch.finish(), store: store.finish(), compute: compute.finish(), epilogue: epilogue.finish() }
}

/// WGSL declaring Snake's α at `@binding(binding)`, `fn snake(a: f32, v: f32) -> f32` (Snake with α = a) and
/// `fn act(ci: u32, v: f32) -> f32` (Snake of channel ci).
pub(crate) fn snake_decl(binding: u32) -> String {
    // sin² has period π: reducing the argument first keeps approximate hardware sin accurate for large
    // |αx| (π split in two so n·PI_HI is exact).
    format!(
        "@group(0) @binding({binding}) var<storage, read> alpha: array<f32>;\n\
         fn snake(a: f32, v: f32) -> f32 {{\n\
             let z = a * v;\n\
             let n = round(z * 0.318309886);\n\
             let r = (z - n * 3.140625) - n * 9.67653589793e-4;\n\
             let s = sin(r);\n\
             return v + s * s / (a + 1e-9);\n\
         }}\n\
         fn act(ci: u32, v: f32) -> f32 {{\n\
             return snake(alpha[ci], v);\n\
         }}\n"
    )
}

fn finish_section(fusion: &ConvFusion) -> String {
    specialize(section("finish"), &[("ACCUMULATE", fusion.accumulate.to_string()), ("TANH", fusion.tanh.to_string())])
}

#[allow(clippy::too_many_arguments)]
fn conv_pipeline(
    gpu: &Gpu,
    format: WeightFormat,
    shape: ConvShape,
    ch: &Chunking,
    f16_math: bool,
    split: bool,
    fusion: &ConvFusion,
) -> std::sync::Arc<wgpu::ComputePipeline> {
    assert!(!f16_math || gpu.features.contains(wgpu::Features::SHADER_F16), "ConvTile::f16_math needs a device with shader-f16");
    let snake = fusion.snake_alpha.is_some();
    // The epilogue's fusions live in the reduce pass under split-K.
    let (acc, tanh) = if split { (false, false) } else { (fusion.accumulate, fusion.tanh) };
    gpu.variant_pipeline(ConvVariant { format, shape, cc: ch.cc, kt: ch.kt, xs: ch.xs, f16_math, split, snake, accumulate: acc, tanh })
}

/// One compiled specialisation of the convolution pass (section `conv`): the WGSL generator's input and the
/// pipeline-cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvVariant {
    pub format: WeightFormat,
    pub shape: ConvShape,
    /// Input channels and taps per staged chunk, and staged input words (see `ConvShape::chunking`).
    pub cc: u32,
    pub kt: u32,
    pub xs: u32,
    pub f16_math: bool,
    /// Writes one split's partial sums (split-K) instead of the outputs.
    pub split: bool,
    /// Snake on the input loads.
    pub snake: bool,
    /// Residual add and tanh in the epilogue (off under split-K, where the reduce pass applies them).
    pub accumulate: bool,
    pub tanh: bool,
}

impl KernelVariant for ConvVariant {
    fn entry_point(&self) -> &'static str {
        "conv"
    }

    fn source(&self) -> String {
        let v = self;
        conv_source(v.format, v.shape, v.cc, v.kt, v.xs, v.f16_math, v.split, v.snake, v.accumulate, v.tanh)
    }
}

/// The split-K reduction pass (section `reduce`) with the epilogue's fusions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvReduceVariant {
    pub accumulate: bool,
    pub tanh: bool,
}

impl KernelVariant for ConvReduceVariant {
    fn entry_point(&self) -> &'static str {
        "reduce"
    }

    fn source(&self) -> String {
        let fusion = ConvFusion { snake_alpha: None, accumulate: self.accumulate, tanh: self.tanh };
        format!("{}{}", specialize(section("reduce"), &[("PARAMS", ReduceParams::wgsl())]), finish_section(&fusion))
    }
}

/// The convolution pass's WGSL (`acc` and `tanh` as the pass applies them: off under split-K).
#[allow(clippy::too_many_arguments)]
fn conv_source(format: WeightFormat, shape: ConvShape, cc: u32, kt: u32, xs: u32, f16_math: bool, split: bool, snake: bool, acc: bool, tanh: bool) -> String {
    let code = conv_code(shape, cc, kt, xs, f16_math, split);
    let out_decl = if split {
        "@group(0) @binding(3) var<storage, read_write> part: array<f32>;\n\
         // One split's partial sum.\n\
         fn emit(split: u32, co: u32, t: u32, acc: f32) {\n\
             if (co < P.cout && t < P.len_out) {\n\
                 part[(split * P.cout + co) * P.len_out + t] = acc;\n\
             }\n\
         }\n"
            .to_string()
    } else {
        let f = ConvFusion { snake_alpha: None, accumulate: acc, tanh };
        format!(
            "@group(0) @binding(3) var<storage, read> bias: array<f32>;\n\
             @group(0) @binding(4) var<storage, read_write> y: array<f32>;\n\
             // One output: bias, then residual add and tanh.\n\
             fn emit(co: u32, t: u32, acc: f32) {{\n\
                 if (co < P.cout && t < P.len_out) {{\n\
                     finish(co * P.len_out + t, acc + bias[co]);\n\
                 }}\n\
             }}\n{}",
            finish_section(&f)
        )
    };
    let snake_decl = if snake { snake_decl(if split { 4 } else { 5 }) } else { "fn act(ci: u32, v: f32) -> f32 { return v; }\n".into() };
    specialize(
        section("conv"),
        &[
            ("PARAMS", ConvParams::wgsl()),
            ("ENABLE_F16", if f16_math { "enable f16;" } else { "" }.to_string()),
            ("WEIGHT_DECL", weight_decl(format, 2)),
            ("OUT_DECL", out_decl),
            ("SNAKE_DECL", snake_decl),
            ("WM", shape.wm.to_string()),
            ("WN", shape.wn.to_string()),
            ("TM", shape.tm().to_string()),
            ("TN", shape.tn().to_string()),
            ("CC", cc.to_string()),
            ("KT", kt.to_string()),
            ("XS", xs.to_string()),
            ("H", if f16_math { "f16" } else { "f32" }.to_string()),
            ("SETUP", code.setup),
            ("FETCH", code.fetch),
            ("STORE", code.store),
            ("COMPUTE", code.compute),
            ("EPILOGUE", code.epilogue),
        ],
    )
}

fn reduce_pipeline(gpu: &Gpu, fusion: &ConvFusion) -> std::sync::Arc<wgpu::ComputePipeline> {
    gpu.variant_pipeline(ConvReduceVariant { accumulate: fusion.accumulate, tanh: fusion.tanh })
}

/// The geometry shared by both convolution kinds (see the shader's header).
pub(crate) struct Geometry {
    pub(crate) cin: u32,
    pub(crate) cout: u32,
    pub(crate) taps: u32,
    pub(crate) len_in: u32,
    pub(crate) len_out: u32,
    pub(crate) in_stride: u32,
    pub(crate) dil: u32,
    pub(crate) in_off: i32,
    pub(crate) out_stride: u32,
    pub(crate) out_pad: u32,
    pub(crate) nphase: u32,
    /// Columns per phase to cover (an upper bound over phases; the kernel drops t ≥ len_out).
    pub(crate) cols: u32,
}

impl Geometry {
    /// Conv1d over `len_in` input steps: output steps by the PyTorch formula, zero padding both sides.
    pub(crate) fn conv1d(len_in: u32, w: &Conv1dWeights, stride: u32, dilation: u32, padding: u32) -> Geometry {
        assert!(stride > 0 && dilation > 0, "conv1d stride and dilation must be positive");
        let len_out = conv1d_len(len_in, w.kernel, stride, dilation, padding);
        Geometry {
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
        }
    }

    /// ConvTranspose1d as `stride` phase convolutions over the per-phase weights, `padding` cropped both ends.
    pub(crate) fn conv_transpose1d(len_in: u32, w: &ConvTranspose1dWeights, padding: u32) -> Geometry {
        let len_out = conv_transpose1d_len(len_in, w.kernel, w.stride, padding);
        let taps = w.taps();
        Geometry {
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
        }
    }
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
) -> ConvLaunch {
    let Resolved { shape, splits, split_ch, chunking: ch } = tile.resolve(&g);
    let split = splits > 1;
    let pipe = conv_pipeline(gpu, w.format, shape, &ch, tile.f16_math, split, &fusion);
    let tiles_n = g.cols.div_ceil(shape.tn());
    let tiles_m = g.cout.div_ceil(shape.tm());
    // Time tiles past the per-dimension limit continue along z (z = phase + nphase·(split + splits·row)).
    let [grid_x, rows, _] = grid_1d(tiles_n);
    let tap_blocks = g.taps.div_ceil(ch.kt);
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
        span: ch.span,
        split_ch,
        chunks: split_ch.div_ceil(ch.cc) * tap_blocks,
        tap_blocks,
        splits,
        _pad0: 0, _pad1: 0,
    };
    let empty = g.len_out == 0 || g.cout == 0;
    let workgroups = if empty { [0, 0, 0] } else { [grid_x, tiles_m, g.nphase * splits * rows] };
    let count = workgroups.iter().product();
    let mut dispatches = Vec::new();
    if split {
        let n = g.cout as u64 * g.len_out as u64;
        // Written by the split-K pass and read by the reduce right after it: one buffer for every conv of a decode
        // (9 of them took 23 MB for the 44.1 kHz codec's streaming window).
        let part = gpu.shared_scratch("dac_conv.split_k", (splits as u64 * n).max(1) * 4);
        let mut buffers: Vec<&GpuBuffer> = vec![x, &w.data, &part];
        buffers.extend(fusion.snake_alpha);
        dispatches.push(gpu.dispatch(&pipe, &params, &buffers, workgroups));
        let rp = ReduceParams { cout: g.cout, len_out: g.len_out, splits, _pad: 0 };
        let [rx, ry, _] = grid_1d(n.div_ceil(256) as u32);
        let rgrid = if empty { [0, 0, 0] } else { [rx, ry, 1] };
        dispatches.push(gpu.dispatch(&reduce_pipeline(gpu, &fusion), &rp, &[&part, bias, y], rgrid));
    } else {
        let mut buffers: Vec<&GpuBuffer> = vec![x, &w.data, bias, y];
        buffers.extend(fusion.snake_alpha);
        dispatches.push(gpu.dispatch(&pipe, &params, &buffers, workgroups));
    }
    ConvLaunch { shape, splits, workgroups: count, dispatches }
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
) -> ConvLaunch {
    build(gpu, Geometry::conv1d(len_in, w, stride, dilation, padding), x, &w.w, &w.bias, y, fusion, tile)
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
) -> ConvLaunch {
    build(gpu, Geometry::conv_transpose1d(len_in, w, padding), x, &w.w, &w.bias, y, fusion, tile)
}
