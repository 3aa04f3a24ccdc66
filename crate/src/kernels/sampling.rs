//! `shaders/sampling.wgsl`: GPU-side CFG + sampling + Dia's EOS/delay rules; writes next step's tokens.
//! (Interface placeholder; the implementation lands from its own branch.)
use crate::gpu::{Dispatch, Gpu, GpuBuffer};

#[derive(Debug, thiserror::Error)]
pub enum SamplingError {
    #[error("{0}")]
    Invalid(String),
}

pub struct SamplerShape { pub batch: u32, pub channels: u32, pub vocab: u32, pub delay: Vec<u32>, pub eos: u32, pub pad: u32 }
#[derive(Clone, Copy, Debug)]
pub struct SamplingParams { pub cfg_scale: f32, pub cfg_filter_top_k: u32, pub temperature: f32, pub top_p: f32, pub seed: u64 }
pub struct SamplerBuffers<'a> {
    pub logits: &'a GpuBuffer,
    pub tokens: &'a GpuBuffer,
    pub codes: &'a GpuBuffer,
    pub qinfo: &'a GpuBuffer,
}
pub struct Sampler { d: Vec<Dispatch>, status: GpuBuffer }
impl Sampler {
    #[allow(clippy::too_many_arguments)]
    pub fn new(gpu: &Gpu, shape: &SamplerShape, params: &SamplingParams, bufs: &SamplerBuffers, prefix: &[u32], prefix_rows: u32, s0: u32, max_length: u32, record_scores: bool) -> Result<Sampler, SamplingError> {
        let _ = (gpu, shape, params, bufs, prefix, prefix_rows, s0, max_length, record_scores);
        todo!()
    }
    pub fn dispatches(&self) -> Vec<&Dispatch> { self.d.iter().collect() }
    pub fn status(&self) -> &GpuBuffer { &self.status }
    pub fn scores(&self) -> Option<&GpuBuffer> { None }
    pub fn force_next(&self, gpu: &Gpu, tokens: &[u32]) { let _ = (gpu, tokens); }
}
