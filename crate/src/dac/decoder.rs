//! Decoding: `DacDecoder`, a reusable workspace that records the decode of a window of frames (plain kernels, or
//! channels-last on tensor cores), and `DacModel::decode`.

use std::collections::HashMap;
use std::sync::Arc;

use crate::gpu::{Dispatch, Gpu, GpuBuffer};
use crate::kernels::conv::plain::{conv1d, conv1d_len, conv_transpose1d, conv_transpose1d_len, ConvFusion, ConvTile};
use crate::kernels::conv::layout::{self, SourceLayout};
use crate::kernels::conv::coop::{self, ClEpilogue};
use crate::kernels::dac_rvq::rvq_decode;

use super::DacError;
use super::model::{CHANNELS_LAST_MIN_FRAMES, DacModel, Weights, checked_buffer, res_unit, same_pad};


/// Lengths along the decoder: [frames, after conv1, after each block…]; the last is the PCM length.
pub(super) fn decode_lengths(w: &Weights, frames: u32) -> Vec<u32> {
    let c1 = &w.convs[w.dec_conv1];
    let mut lens = vec![frames, conv1d_len(frames, c1.kernel, 1, 1, same_pad(c1, 1))];
    for blk in &w.dec_blocks {
        let ct = &w.convts[blk.conv_t];
        lens.push(conv_transpose1d_len(*lens.last().unwrap(), ct.kernel, ct.stride, ct.stride.div_ceil(2)));
    }
    // The final k7 "same" conv keeps the length.
    lens
}

/// A decoding workspace: codes in, PCM out, for windows of up to `max_frames` frames. Record a decode into
/// your own compute pass with `record` (after filling `codes_buffer`, e.g. with `write_codes`), or use
/// `decode` for write + run + read back.
pub struct DacDecoder {
    w: Arc<Weights>,
    tile: ConvTile,
    /// Present when windows of `CHANNELS_LAST_MIN_FRAMES` or more decode channels-last (`plan_channels_last`):
    /// the f16 inputs of its convolutions, alternately.
    act_half: Option<[GpuBuffer; 2]>,
    n_codebooks: usize,
    codebook_size: usize,
    max_frames: usize,
    codes: GpuBuffer,
    z: GpuBuffer,
    a: GpuBuffer,
    b: GpuBuffer,
    h: GpuBuffer,
    pcm: GpuBuffer,
    /// Launch sequences per window length.
    plans: HashMap<u32, Vec<Dispatch>>,
}

impl DacDecoder {
    pub fn max_frames(&self) -> usize {
        self.max_frames
    }

    /// u32 codes `[n_codebooks, frames]`, codebook-major with row length `frames` (the window's own length).
    pub fn codes_buffer(&self) -> &GpuBuffer {
        &self.codes
    }

    /// f32 PCM of the last recorded window: its first `pcm_len(frames)` values.
    pub fn pcm_buffer(&self) -> &GpuBuffer {
        &self.pcm
    }

    pub fn pcm_len(&self, frames: usize) -> usize {
        decode_lengths(&self.w, frames as u32).last().copied().unwrap_or(0) as usize
    }

    /// Checks and uploads codes `[n_codebooks, frames]` for the next recorded decode of `frames` frames.
    pub fn write_codes(&self, gpu: &Gpu, codes: &[u32], frames: usize) -> Result<(), DacError> {
        if frames > self.max_frames {
            return Err(DacError::TooManyFrames { frames, max: self.max_frames });
        }
        if codes.len() != self.n_codebooks * frames {
            return Err(DacError::BadCodes(format!(
                "{} codes for {} codebooks × {frames} frames",
                codes.len(),
                self.n_codebooks
            )));
        }
        if let Some(i) = codes.iter().position(|&c| c as usize >= self.codebook_size) {
            return Err(DacError::BadCodes(format!(
                "code {} at codebook {}, frame {} is not below the codebook size {}",
                codes[i],
                i / frames,
                i % frames,
                self.codebook_size
            )));
        }
        gpu.write(&self.codes, codes);
        Ok(())
    }

    /// Records the decode of a `frames`-frame window (codes already in `codes_buffer`) into `pass`.
    pub fn record(&mut self, gpu: &Gpu, pass: &mut wgpu::ComputePass<'_>, frames: usize) -> Result<(), DacError> {
        if frames > self.max_frames {
            return Err(DacError::TooManyFrames { frames, max: self.max_frames });
        }
        let key = frames as u32;
        if !self.plans.contains_key(&key) {
            let plan = self.plan(gpu, key);
            self.plans.insert(key, plan);
        }
        for d in &self.plans[&key] {
            d.record(pass);
        }
        Ok(())
    }

    /// Builds the launch sequences of windows of every length up to `max_frames` now rather than on first use (with
    /// `Gpu::begin_discovery`: lists the pipelines a stream of windows of any length needs).
    pub fn plan_every_window(&mut self, gpu: &Gpu) {
        for frames in 1..=self.max_frames as u32 {
            if !self.plans.contains_key(&frames) {
                let plan = self.plan(gpu, frames);
                self.plans.insert(frames, plan);
            }
        }
    }

    fn plan(&self, gpu: &Gpu, frames: u32) -> Vec<Dispatch> {
        if let Some(halves) = &self.act_half {
            if frames as usize >= CHANNELS_LAST_MIN_FRAMES {
                return self.plan_channels_last(gpu, frames, halves);
            }
        }
        let w = &*self.w;
        let tile = self.tile;
        let lens = decode_lengths(w, frames);
        let mut ds = vec![rvq_decode(gpu, &self.codes, &w.rvq, &self.z, frames)];
        let c1 = &w.convs[w.dec_conv1];
        ds.extend(conv1d(gpu, &self.z, frames, c1, 1, 1, same_pad(c1, 1), &self.a, ConvFusion::default(), tile).dispatches);
        let (mut cur, mut other) = (&self.a, &self.b);
        let mut len = lens[1];
        for (blk, &next) in w.dec_blocks.iter().zip(&lens[2..]) {
            let ct = &w.convts[blk.conv_t];
            let fusion = ConvFusion { snake_alpha: Some(&w.alphas[blk.snake]), ..Default::default() };
            ds.extend(conv_transpose1d(gpu, cur, len, ct, ct.stride.div_ceil(2), other, fusion, tile).dispatches);
            std::mem::swap(&mut cur, &mut other);
            len = next;
            for ru in &blk.res {
                res_unit(gpu, w, ru, cur, &self.h, len, tile, &mut ds);
            }
        }
        let c2 = &w.convs[w.dec_conv2];
        let fusion = ConvFusion { snake_alpha: Some(&w.alphas[w.dec_snake]), accumulate: false, tanh: true };
        ds.extend(conv1d(gpu, cur, len, c2, 1, 1, same_pad(c2, 1), &self.pcm, fusion, tile).dispatches);
        ds
    }

    /// The decode on tensor cores over channels-last activations. The residual stream stays f32 `[time, C]` in
    /// `a` / `b`; every convolution reads an f16 `[time, C]` copy with Snake applied, which the convolution before
    /// it writes from its epilogue into one of `halves` (alternately: a convolution's input and its packed output
    /// are different buffers). Only the latent is packed by a pass of its own; a residual unit's inner activation
    /// goes through `h`.
    fn plan_channels_last(&self, gpu: &Gpu, frames: u32, halves: &[GpuBuffer; 2]) -> Vec<Dispatch> {
        let w = &*self.w;
        let lens = decode_lengths(w, frames);
        let cl = |id: usize| w.convs_cl[id].as_ref().expect("tap-major decoder weights");
        // The Snake of each convolution input in decode order; the convolution before each writes its copy.
        let mut consumers = Vec::new();
        for blk in &w.dec_blocks {
            consumers.push(blk.snake);
            consumers.extend(blk.res.iter().map(|r| r.snake1));
        }
        consumers.push(w.dec_snake);
        let mut next_alpha = consumers.into_iter().map(|a| &w.alphas[a]);
        let mut next = || next_alpha.next().expect("one packed copy per convolution input");
        let (mut input, mut spare) = (&halves[0], &halves[1]);

        let c1 = &w.convs[w.dec_conv1];
        let mut ds = vec![
            rvq_decode(gpu, &self.codes, &w.rvq, &self.z, frames),
            layout::pack(gpu, &self.z, SourceLayout::ChannelsFirst, c1.cin, frames, None, input),
            coop::conv1d(gpu, input, frames, c1, cl(w.dec_conv1), 1, 1, same_pad(c1, 1), &self.a, ClEpilogue::StorePacked(next(), spare)),
        ];
        std::mem::swap(&mut input, &mut spare);
        let (mut cur, mut other) = (&self.a, &self.b);
        let mut len = lens[1];
        for (blk, &next_len) in w.dec_blocks.iter().zip(&lens[2..]) {
            let ct = &w.convts[blk.conv_t];
            let ct_cl = w.convts_cl[blk.conv_t].as_ref().expect("tap-major decoder weights");
            ds.push(coop::conv_transpose1d(gpu, input, len, ct, ct_cl, ct.stride.div_ceil(2), other, ClEpilogue::StorePacked(next(), spare)));
            std::mem::swap(&mut cur, &mut other);
            std::mem::swap(&mut input, &mut spare);
            len = next_len;
            for ru in &blk.res {
                let (r1, r2) = (&w.convs[ru.conv1], &w.convs[ru.conv2]);
                let inner = ClEpilogue::SnakeHalf(&w.alphas[ru.snake2]);
                ds.push(coop::conv1d(gpu, input, len, r1, cl(ru.conv1), 1, ru.dilation, same_pad(r1, ru.dilation), &self.h, inner));
                let add = ClEpilogue::AccumulatePacked(next(), spare);
                ds.push(coop::conv1d(gpu, &self.h, len, r2, cl(ru.conv2), 1, 1, same_pad(r2, 1), cur, add));
                std::mem::swap(&mut input, &mut spare);
            }
        }
        let c2 = &w.convs[w.dec_conv2];
        ds.push(layout::conv_mono(gpu, input, len, c2, 1, same_pad(c2, 1), &self.pcm));
        ds
    }

    /// Writes `codes` `[n_codebooks, frames]`, decodes them and reads the `pcm_len(frames)` samples back.
    pub async fn decode(&mut self, gpu: &Gpu, codes: &[u32], frames: usize) -> Result<Vec<f32>, DacError> {
        self.write_codes(gpu, codes, frames)?;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            self.record(gpu, &mut pass, frames)?;
        }
        gpu.queue.submit([enc.finish()]);
        let n = self.pcm_len(frames);
        if n == 0 {
            return Ok(Vec::new());
        }
        Ok(gpu.read_f32(&self.pcm.slice(0, n as u64 * 4)).await?)
    }
}

impl DacModel {
    /// A decoding workspace for windows of up to `max_frames` frames: buffers allocated once, launch
    /// sequences built once per distinct window length.
    pub fn decoder(&self, gpu: &Gpu, max_frames: usize) -> Result<DacDecoder, DacError> {
        self.workspace(gpu, max_frames, false)
    }

    /// `decoder` for repeated short-lived use (a streaming generation's windows): its buffers come from
    /// `Gpu::reusable_buffer`, so the next generation's workspace costs no device allocation.
    pub fn stream_decoder(&self, gpu: &Gpu, max_frames: usize) -> Result<DacDecoder, DacError> {
        self.workspace(gpu, max_frames, true)
    }

    fn workspace(&self, gpu: &Gpu, max_frames: usize, reuse: bool) -> Result<DacDecoder, DacError> {
        let buffer = |label: &str, words: usize| checked_buffer(gpu, label, words, reuse);
        let max = max_frames as u32;
        let lens = decode_lengths(&self.w, max);
        let cfg = &self.config;
        // Widest activation: conv1's output or any block's output (its residual units run at that size).
        let mut act = cfg.decoder_hidden * max_frames;
        for (blk, len) in self.w.dec_blocks.iter().zip(&lens[2..]) {
            act = act.max(self.w.convts[blk.conv_t].cout as usize * *len as usize);
        }
        let channels_last = self.uses_tensor_cores(gpu) && self.w.decoder_channels_last();
        Ok(DacDecoder {
            w: self.w.clone(),
            tile: self.tile,
            // Two f16 copies of the widest activation (or of the latent), written and read in turn.
            act_half: if channels_last {
                let words = act.max(cfg.latent * max_frames).div_ceil(2);
                Some([buffer("dac.act_half_0", words)?, buffer("dac.act_half_1", words)?])
            } else {
                None
            },
            n_codebooks: cfg.n_codebooks,
            codebook_size: cfg.codebook_size,
            max_frames,
            codes: buffer("dac.codes", cfg.n_codebooks * max_frames)?,
            z: buffer("dac.z", cfg.latent * max_frames)?,
            a: buffer("dac.act_a", act)?,
            b: buffer("dac.act_b", act)?,
            h: buffer("dac.act_h", act)?,
            pcm: buffer("dac.pcm", *lens.last().unwrap() as usize)?,
            plans: HashMap::new(),
        })
    }

    /// Decodes codes `[n_codebooks, frames]` (codebook-major) to `pcm_len(frames)` samples in (−1, 1).
    pub async fn decode(&self, gpu: &Gpu, codes: &[u32], frames: usize) -> Result<Vec<f32>, DacError> {
        self.decoder(gpu, frames)?.decode(gpu, codes, frames).await
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn decode_blocking(&self, gpu: &Gpu, codes: &[u32], frames: usize) -> Result<Vec<f32>, DacError> {
        pollster::block_on(self.decode(gpu, codes, frames))
    }
}
