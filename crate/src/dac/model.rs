//! The codec's weights on the GPU, filled tensor by tensor, and its decode/encode graphs.
//!
//! Decode: RVQ → conv1 (k7) → per block [Snake → ConvTranspose (k 2s, stride s) → 3 residual units] →
//! Snake → conv2 (k7) → tanh. A residual unit is x += conv_k1(Snake(conv_k7,dil d(Snake(x)))): two kernel
//! launches, Snake fused into each input load and the residual add into the second one's epilogue.
//! Encode mirrors it with strided convolutions and ends in the RVQ's codebook-by-codebook assignment.
//!
//! This file holds `DacModel` and its weight graph (shared with the decoders behind an `Arc`) and the helpers both
//! plans use; `loader` fills the weights tensor by tensor, `decoder` holds the decode plans and `DacDecoder`,
//! `encoder` the encode.

use std::sync::Arc;

use crate::config::DacConfig;
use crate::gpu::{Dispatch, Gpu, GpuBuffer, GpuError};
use crate::kernels::conv::plain::{conv1d, Conv1dWeights, ConvFusion, ConvTile, ConvTranspose1dWeights};
use crate::kernels::GpuMatrix;
use crate::kernels::dac_rvq::RvqWeights;
use crate::kernels::Numerics;

use super::decoder::decode_lengths;
use super::encoder::encode_lengths;
use super::DacError;


pub(super) struct ResUnit {
    pub(super) snake1: usize,
    pub(super) conv1: usize,
    pub(super) snake2: usize,
    pub(super) conv2: usize,
    pub(super) dilation: u32,
}

pub(super) struct DecoderBlock {
    pub(super) snake: usize,
    pub(super) conv_t: usize,
    pub(super) res: Vec<ResUnit>,
}

pub(super) struct EncoderBlock {
    pub(super) res: Vec<ResUnit>,
    pub(super) snake: usize,
    pub(super) conv: usize,
}

pub(super) struct Encoder {
    pub(super) conv1: usize,
    pub(super) blocks: Vec<EncoderBlock>,
    pub(super) snake: usize,
    pub(super) conv2: usize,
}

pub(super) struct Weights {
    pub(super) convs: Vec<Conv1dWeights>,
    pub(super) convts: Vec<ConvTranspose1dWeights>,
    /// Tap-major copies for the channels-last decode on tensor cores (`kernels::conv::coop`), per conv / conv-transpose;
    /// made for the decoder's layers when the device has tensor cores and the mode is f16w (not in the memory modes
    /// q8 / q4, whose f16 codec weights would double).
    pub(super) convs_cl: Vec<Option<GpuMatrix>>,
    pub(super) convts_cl: Vec<Option<GpuMatrix>>,
    /// Snake α per channel, f32 `[C]`.
    pub(super) alphas: Vec<GpuBuffer>,
    pub(super) rvq: RvqWeights,
    pub(super) dec_conv1: usize,
    pub(super) dec_blocks: Vec<DecoderBlock>,
    pub(super) dec_snake: usize,
    pub(super) dec_conv2: usize,
    pub(super) encoder: Option<Encoder>,
}

impl Weights {
    /// Whether the whole decoder can run channels-last on tensor cores: every layer but the last, one-channel
    /// convolution has its tap-major copy, and that last one reads 8 channels per load.
    pub(super) fn decoder_channels_last(&self) -> bool {
        let conv_cl = |id: usize| self.convs_cl[id].is_some();
        conv_cl(self.dec_conv1)
            && self.dec_blocks.iter().all(|b| self.convts_cl[b.conv_t].is_some() && b.res.iter().all(|r| conv_cl(r.conv1) && conv_cl(r.conv2)))
            && self.convs[self.dec_conv2].cout == 1
            && self.convs[self.dec_conv2].cin.is_multiple_of(8)
    }
}

/// Windows of at least this many frames decode channels-last on tensor cores (where available), shorter ones on
/// the plain kernels. Measured on an H100 (`bench_dac_coop`): tensor cores win from the stream's first windows on
/// (18 frames 2.4 against 3.3 ms, 32 frames 2.6 against 4.1); below 16 frames nothing was measured.
pub const CHANNELS_LAST_MIN_FRAMES: usize = 16;

/// The codec on the GPU. Cheap to share: the weights sit behind an `Arc` that decoders keep too.
pub struct DacModel {
    pub config: DacConfig,
    pub numerics: Numerics,
    pub(super) tile: ConvTile,
    /// Decode on tensor cores where the device has them and the weights are f16 (`set_tensor_cores`).
    pub(super) tensor_cores: bool,
    pub(super) w: Arc<Weights>,
}

/// A storage buffer of `words` 32-bit values, or a typed error past the adapter's binding limit.
/// A buffer of `words` f32 within the binding limit; `reuse` takes it from `Gpu::reusable_buffer` (every
/// codec kernel writes what it later reads, so stale contents are fine).
pub(super) fn checked_buffer(gpu: &Gpu, label: &str, words: usize, reuse: bool) -> Result<GpuBuffer, DacError> {
    let bytes = words as u64 * 4;
    if bytes > gpu.limits.max_storage_buffer_binding_size {
        return Err(DacError::Gpu(GpuError::LimitTooSmall {
            adapter: gpu.info.name.clone(),
            limit: "max_storage_buffer_binding_size",
            available: gpu.limits.max_storage_buffer_binding_size,
            required: bytes,
        }));
    }
    Ok(if reuse { gpu.reusable_buffer(label, bytes) } else { gpu.buffer(label, bytes) })
}

/// "Same" padding of a stride-1 convolution.
pub(super) fn same_pad(c: &Conv1dWeights, dilation: u32) -> u32 {
    (c.kernel - 1) * dilation / 2
}

/// x += conv2(Snake₂(conv1_dil(Snake₁(x)))) over `[C, len]`, through `h`.
#[allow(clippy::too_many_arguments)]
pub(super) fn res_unit(gpu: &Gpu, w: &Weights, ru: &ResUnit, x: &GpuBuffer, h: &GpuBuffer, len: u32, tile: ConvTile, out: &mut Vec<Dispatch>) {
    let (c1, c2) = (&w.convs[ru.conv1], &w.convs[ru.conv2]);
    let f1 = ConvFusion { snake_alpha: Some(&w.alphas[ru.snake1]), ..Default::default() };
    out.extend(conv1d(gpu, x, len, c1, 1, ru.dilation, same_pad(c1, ru.dilation), h, f1, tile).dispatches);
    let f2 = ConvFusion { snake_alpha: Some(&w.alphas[ru.snake2]), accumulate: true, tanh: false };
    out.extend(conv1d(gpu, h, len, c2, 1, 1, same_pad(c2, 1), x, f2, tile).dispatches);
}

impl DacModel {
    /// The convolution work split used by decoders and encodes made from now on (by default each call
    /// picks its tile and split-K from its geometry, see `ConvTile`; encodes ignore `f16_math`).
    pub fn set_conv_tile(&mut self, tile: ConvTile) {
        self.tile = tile;
    }

    pub fn conv_tile(&self) -> ConvTile {
        self.tile
    }

    /// Whether decoders made from now on may decode on tensor cores (channels-last, `kernels::conv::coop`, for
    /// windows of `CHANNELS_LAST_MIN_FRAMES` or more); they do where `Gpu::tensor_cores()`, the weights are f16w
    /// (f32 models keep f32 weights exact on `conv::plain`) and every layer's widths suit `conv::coop`. Off forces
    /// the plain kernels (A/B comparisons). The encoder always uses `conv::plain` (f32 arithmetic).
    pub fn set_tensor_cores(&mut self, on: bool) {
        self.tensor_cores = on;
    }

    /// Whether decoders made on `gpu` now would use tensor cores.
    pub fn uses_tensor_cores(&self, gpu: &Gpu) -> bool {
        crate::kernels::conv::uses_tensor_cores(gpu, self.tensor_cores, self.numerics, self.w.decoder_channels_last())
    }

    pub fn has_encoder(&self) -> bool {
        self.w.encoder.is_some()
    }

    /// Samples decoded from `frames` frames (hop_length · frames for the DAC's strides).
    pub fn pcm_len(&self, frames: usize) -> usize {
        decode_lengths(&self.w, frames as u32).last().copied().unwrap_or(0) as usize
    }

    /// The decoder's receptive field in frames of codes: (left, right) such that the samples of frame f depend
    /// only on frames f − left ..= f + right. A window decoded with that much context on each side reproduces
    /// whole-sequence decoding in its middle (the streaming decoder relies on it). Exact: the dependency
    /// interval of one frame's samples is traced back through every layer.
    pub fn decoder_context(&self) -> (usize, usize) {
        let w = &*self.w;
        // A frame far from both ends, so no interval is clipped.
        let f: i64 = 1 << 20;
        let hop: i64 = w.dec_blocks.iter().map(|b| w.convts[b.conv_t].stride as i64).product();
        let (mut lo, mut hi) = (f * hop, f * hop + hop - 1);
        // Output samples [lo, hi] of a "same" conv read inputs [lo − pad, hi − pad + (k − 1)·dilation].
        let same = |c: &Conv1dWeights, dil: u32, (lo, hi): (i64, i64)| {
            let pad = same_pad(c, dil) as i64;
            (lo - pad, hi - pad + (c.kernel as i64 - 1) * dil as i64)
        };
        (lo, hi) = same(&w.convs[w.dec_conv2], 1, (lo, hi));
        for blk in w.dec_blocks.iter().rev() {
            for ru in blk.res.iter().rev() {
                (lo, hi) = same(&w.convs[ru.conv2], 1, (lo, hi));
                (lo, hi) = same(&w.convs[ru.conv1], ru.dilation, (lo, hi));
            }
            // Transposed conv: output t = i·stride − pad + tap, tap < kernel.
            let ct = &w.convts[blk.conv_t];
            let (k, st, pad) = (ct.kernel as i64, ct.stride as i64, ct.stride.div_ceil(2) as i64);
            (lo, hi) = ((lo + pad - k + 1).div_euclid(st) + i64::from((lo + pad - k + 1).rem_euclid(st) != 0), (hi + pad).div_euclid(st));
        }
        (lo, hi) = same(&w.convs[w.dec_conv1], 1, (lo, hi));
        ((f - lo).max(0) as usize, (hi - f).max(0) as usize)
    }

    /// Frames the encoder makes of `samples` samples (⌊samples / hop⌋ for the DAC; no padding inside).
    pub fn frames_for_samples(&self, samples: usize) -> usize {
        match &self.w.encoder {
            Some(e) => encode_lengths(&self.w, e, samples as u32).last().copied().unwrap_or(0) as usize,
            None => samples / self.config.hop_length.max(1),
        }
    }
}
