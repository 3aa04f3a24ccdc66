//! `shaders/dac_channels_last.wgsl`: the plain helper kernels of the DAC's channels-last decode on tensor cores
//! (`super::coop`): `pack` turns f32 activations into the f16 channels-last input of a convolution (Snake applied
//! once per element, not once per tap; the decode packs only the RVQ's latent this way, the convolutions' epilogues
//! write the other inputs), `conv_mono` is the last, one-channel convolution.
//!
//! Channels-last f16 activations `[time, C]` are stored as u32 pairs (low half = even channel); C is even
//! (a multiple of 8 for `conv_mono` and the convolutions, which read 8 channels per 16-byte load).
use super::plain::{snake_decl, Conv1dWeights};
use crate::kernels::{weight_decl, WeightFormat};
use crate::gpu::{grid_1d, specialize, Dispatch, Gpu, GpuBuffer, KernelVariant};

const SOURCE: &str = include_str!("../../../../shaders/dac_channels_last.wgsl");

fn section(name: &str) -> &'static str {
    crate::kernels::wgsl::section(SOURCE, "dac_channels_last.wgsl", name)
}

/// Section `common` with the parameters declared.
fn common() -> String {
    specialize(section("common"), &[("PARAMS", Params::wgsl())])
}

wgsl_params! {
    /// Uniform parameters of the channels-last layout kernels.
    struct Params {
        channels: u32,
        len_in: u32,
        len_out: u32,
        /// conv_mono: taps, dilation, left padding
        taps: u32,
        dil: u32,
        pad: u32,
        /// invocations per row of the dispatch grid (grid_1d may fold a long dispatch into 2-D)
        row: u32,
        pad0: u32,
    }
}

/// Where `pack` reads its f32 source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceLayout {
    /// `[time, C]`.
    ChannelsLast,
    /// `[C, time]` (the RVQ's latent).
    ChannelsFirst,
}

/// 256-invocation workgroups covering `n` invocations, and the invocations per grid row.
fn grid(n: u32) -> ([u32; 3], u32) {
    let g = grid_1d(n.div_ceil(256));
    (g, g[0] * 256)
}

/// dst (f16 channels-last `[len, channels]`, `len·channels/2` u32) = Snake(src) (or src without `alpha`).
pub fn pack(gpu: &Gpu, src: &GpuBuffer, layout: SourceLayout, channels: u32, len: u32, alpha: Option<&GpuBuffer>, dst: &GpuBuffer) -> Dispatch {
    assert!(channels.is_multiple_of(2), "pack: channels must be even");
    assert!(dst.size >= len as u64 * channels as u64 * 2, "pack: destination too small");
    let transposed = layout == SourceLayout::ChannelsFirst;
    let pipe = gpu.variant_pipeline(PackVariant { transposed, snake: alpha.is_some() });
    let (workgroups, row) = grid(len * channels / 2);
    let params = Params { channels, len_in: len, len_out: len, taps: 0, dil: 0, pad: 0, row, pad0: 0 };
    let mut buffers = vec![src, dst];
    if let Some(a) = alpha {
        buffers.push(a);
    }
    gpu.dispatch(&pipe, &params, &buffers, if len == 0 { [0, 0, 0] } else { workgroups })
}

/// y (f32 `[len_out]`) = tanh(Conv1d(x)) for a one-output-channel convolution `w` over packed f16 channels-last
/// x `[len_in, w.cin]` with "same"-style zero padding `pad` on the left (len_out by the PyTorch formula).
pub fn conv_mono(gpu: &Gpu, x: &GpuBuffer, len_in: u32, w: &Conv1dWeights, dilation: u32, pad: u32, y: &GpuBuffer) -> Dispatch {
    assert_eq!(w.cout, 1, "conv_mono: one output channel");
    assert!(w.cin.is_multiple_of(8), "conv_mono: input channels must be a multiple of 8");
    let len_out = super::plain::conv1d_len(len_in, w.kernel, 1, dilation, pad);
    let pipe = gpu.variant_pipeline(ConvMonoVariant { format: w.w.format });
    let (workgroups, row) = grid(len_out);
    let params = Params { channels: w.cin, len_in, len_out, taps: w.kernel, dil: dilation, pad, row, pad0: 0 };
    gpu.dispatch(&pipe, &params, &[x, &w.w.data, &w.bias, y], if len_out == 0 { [0, 0, 0] } else { workgroups })
}

/// A specialisation of `pack` (the WGSL generator's input and the pipeline-cache key): from channels-first
/// (`transposed`) or channels-last f32, with or without Snake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PackVariant {
    pub transposed: bool,
    pub snake: bool,
}

impl KernelVariant for PackVariant {
    fn entry_point(&self) -> &'static str {
        "pack"
    }

    fn source(&self) -> String {
        let snake = if self.snake { snake_decl(3) } else { "fn act(ci: u32, v: f32) -> f32 { return v; }\n".into() };
        let body = specialize(section("pack"), &[("SNAKE_DECL", snake), ("TRANSPOSED", self.transposed.to_string())]);
        format!("{}{}", common(), body)
    }
}

/// A specialisation of `conv_mono`: weights stored in `format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvMonoVariant {
    pub format: WeightFormat,
}

impl KernelVariant for ConvMonoVariant {
    fn entry_point(&self) -> &'static str {
        "conv_mono"
    }

    fn source(&self) -> String {
        format!("{}{}", common(), specialize(section("conv_mono"), &[("WEIGHT_DECL", weight_decl(self.format, 2))]))
    }
}
