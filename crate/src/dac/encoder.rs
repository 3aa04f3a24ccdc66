//! Encoding PCM to codes (voice prompts): strided convolutions, then the RVQ's codebook-by-codebook nearest code.


use crate::gpu::{Dispatch, Gpu, GpuBuffer};
use crate::kernels::conv::plain::{conv1d, conv1d_len, ConvFusion, ConvTile};
use crate::kernels::dac_rvq::rvq_encode;

use super::DacError;
use super::model::{DacModel, Encoder, Weights, checked_buffer, res_unit, same_pad};


/// Lengths along the encoder: [samples, after conv1, after each block…, frames].
pub(super) fn encode_lengths(w: &Weights, e: &Encoder, samples: u32) -> Vec<u32> {
    let c1 = &w.convs[e.conv1];
    let mut lens = vec![samples, conv1d_len(samples, c1.kernel, 1, 1, same_pad(c1, 1))];
    for blk in &e.blocks {
        let c = &w.convs[blk.conv];
        let stride = c.kernel / 2;
        lens.push(conv1d_len(*lens.last().unwrap(), c.kernel, stride, 1, stride.div_ceil(2)));
    }
    let c2 = &w.convs[e.conv2];
    lens.push(conv1d_len(*lens.last().unwrap(), c2.kernel, 1, 1, same_pad(c2, 1)));
    lens
}

impl DacModel {
    /// Encodes mono 44.1 kHz samples to codes `[n_codebooks, T]` (codebook-major), T = `frames_for_samples`.
    /// No padding is added: a caller wanting every sample covered pads to a multiple of the hop first.
    pub async fn encode(&self, gpu: &Gpu, pcm: &[f32]) -> Result<Vec<u32>, DacError> {
        let Some((ds, codes, words)) = self.encode_graph(gpu, pcm)? else { return Ok(Vec::new()) };
        gpu.run(&ds.iter().collect::<Vec<_>>());
        let mut out = gpu.read_u32(&codes).await?;
        out.truncate(words);
        Ok(out)
    }

    /// The encode's dispatches (not submitted), the buffer they write the codes to and how many words of it are
    /// codes; None when the samples make no frame.
    pub(crate) fn encode_graph(&self, gpu: &Gpu, pcm: &[f32]) -> Result<Option<(Vec<Dispatch>, GpuBuffer, usize)>, DacError> {
        let e = self.w.encoder.as_ref().ok_or(DacError::NoEncoder)?;
        let lens = encode_lengths(&self.w, e, pcm.len() as u32);
        let frames = *lens.last().unwrap();
        if frames == 0 {
            return Ok(None);
        }
        let w = &*self.w;
        // f32 arithmetic here even where decoding uses f16: the codes are argmins, sensitive to near-ties.
        let tile = ConvTile { f16_math: false, ..self.tile };
        // Widest activation: conv1's output or any block's strided output.
        let mut act = self.config.encoder_hidden * pcm.len();
        for (blk, len) in e.blocks.iter().zip(&lens[2..]) {
            act = act.max(w.convs[blk.conv].cout as usize * *len as usize);
        }
        let x = gpu.upload("dac.pcm_in", pcm);
        let a = checked_buffer(gpu, "dac.enc_a", act, false)?;
        let b = checked_buffer(gpu, "dac.enc_b", act, false)?;
        let h = checked_buffer(gpu, "dac.enc_h", act, false)?;
        let z = checked_buffer(gpu, "dac.enc_z", self.config.latent * frames as usize, false)?;
        let codes = checked_buffer(gpu, "dac.enc_codes", self.config.n_codebooks * frames as usize, false)?;

        let mut ds = Vec::new();
        let c1 = &w.convs[e.conv1];
        ds.extend(conv1d(gpu, &x, lens[0], c1, 1, 1, same_pad(c1, 1), &a, ConvFusion::default(), tile).dispatches);
        let (mut cur, mut other) = (&a, &b);
        let mut len = lens[1];
        for (blk, &next) in e.blocks.iter().zip(&lens[2..]) {
            for ru in &blk.res {
                res_unit(gpu, w, ru, cur, &h, len, tile, &mut ds);
            }
            let c = &w.convs[blk.conv];
            let stride = c.kernel / 2;
            let fusion = ConvFusion { snake_alpha: Some(&w.alphas[blk.snake]), ..Default::default() };
            ds.extend(conv1d(gpu, cur, len, c, stride, 1, stride.div_ceil(2), other, fusion, tile).dispatches);
            std::mem::swap(&mut cur, &mut other);
            len = next;
        }
        let c2 = &w.convs[e.conv2];
        let fusion = ConvFusion { snake_alpha: Some(&w.alphas[e.snake]), ..Default::default() };
        ds.extend(conv1d(gpu, cur, len, c2, 1, 1, same_pad(c2, 1), &z, fusion, tile).dispatches);
        ds.extend(rvq_encode(gpu, &z, &w.rvq, &codes, frames));
        Ok(Some((ds, codes, self.config.n_codebooks * frames as usize)))
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn encode_blocking(&self, gpu: &Gpu, pcm: &[f32]) -> Result<Vec<u32>, DacError> {
        pollster::block_on(self.encode(gpu, pcm))
    }
}
