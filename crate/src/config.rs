//! Checkpoint configuration: `config.json` of the HF/0626 schema and of the nari v0.1 schema → one typed
//! `DiaConfig`; the DAC codec's `DacConfig`. Validation with clear errors. Knows nothing of tensors or GPUs.

/// Which `config.json` schema a checkpoint came with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSchema {
    /// transformers `DiaConfig` (nari-labs/Dia-1.6B-0626, HF layout).
    Hf,
    /// nari v0.1 (`nari-labs/Dia-1.6B`): `model.encoder.n_layer`, … (spec §1.1).
    NariV01,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EncoderConfig {
    pub layers: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    /// Longest text in bytes (1024 for the real model).
    pub max_positions: usize,
    pub norm_eps: f32,
    pub rope_theta: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    pub layers: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub cross_heads: usize,
    pub cross_kv_heads: usize,
    pub cross_head_dim: usize,
    /// Width of the encoder output the cross-attention K/V project from.
    pub cross_hidden: usize,
    pub vocab: usize,
    pub channels: usize,
    /// Longest delayed sequence (3072 for the real model): KV-cache length.
    pub max_positions: usize,
    pub norm_eps: f32,
    pub rope_theta: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DiaConfig {
    pub schema: ConfigSchema,
    pub encoder: EncoderConfig,
    pub decoder: DecoderConfig,
    pub delay_pattern: Vec<usize>,
    pub bos: u32,
    pub eos: u32,
    pub pad: u32,
    /// RoPE in cross-attention: only the v0.1 checkpoint as nari ran it (spec §3.5).
    pub cross_attention_rope: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DacConfig {
    pub sample_rate: u32,
    pub encoder_hidden: usize,
    pub downsampling_ratios: Vec<usize>,
    pub decoder_hidden: usize,
    pub upsampling_ratios: Vec<usize>,
    pub n_codebooks: usize,
    pub codebook_size: usize,
    pub codebook_dim: usize,
    /// Latent width (HF `hidden_size`, 1024 for the real codec).
    pub latent: usize,
    pub hop_length: usize,
}
