//! The codec's weights on the GPU, filled tensor by tensor, and its decode/encode graphs.
//!
//! Decode: RVQ → conv1 (k7) → per block [Snake → ConvTranspose (k 2s, stride s) → 3 residual units] →
//! Snake → conv2 (k7) → tanh. A residual unit is x += conv_k1(Snake(conv_k7,dil d(Snake(x)))): two kernel
//! launches, Snake fused into each input load and the residual add into the second one's epilogue.
//! Encode mirrors it with strided convolutions and ends in the RVQ's codebook-by-codebook assignment.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::config::DacConfig;
use crate::gpu::{Dispatch, Gpu, GpuBuffer, GpuError};
use crate::kernels::dac_conv::{
    conv1d, conv1d_len, conv_transpose1d, conv_transpose1d_len, Conv1dWeights, ConvFusion, ConvTile, ConvTranspose1dWeights,
};
use crate::kernels::dac_channels_last::{self, SourceLayout};
use crate::kernels::dac_conv::{empty_matrix, write_matrix_rows};
use crate::kernels::dac_conv_cl::{self, ClEpilogue};
use crate::kernels::GpuMatrix;
use crate::kernels::dac_rvq::{rvq_decode, rvq_encode, RvqDims, RvqWeights};
use crate::kernels::Numerics;
use crate::weights::Checkpoint;

use super::layout::{check_dac_layout, check_part_shape, dac_tensor_specs, decoder_widths, encoder_widths, fold_weight_norm, resolve, validate_config, Part, TensorSpec, RES_DILATIONS};
use super::DacError;

/// Where a logical tensor goes once complete (indices into `Weights`' arrays).
#[derive(Debug, Clone, Copy)]
enum Target {
    ConvW(usize),
    ConvB(usize),
    ConvTW(usize),
    ConvTB(usize),
    Alpha(usize),
    Codebook(usize),
    InProjW(usize),
    InProjB(usize),
    OutProjW(usize),
    OutProjB(usize),
    /// Not loaded (the encoder of a decode-only model).
    Skip,
}

struct ResUnit {
    snake1: usize,
    conv1: usize,
    snake2: usize,
    conv2: usize,
    dilation: u32,
}

struct DecoderBlock {
    snake: usize,
    conv_t: usize,
    res: Vec<ResUnit>,
}

struct EncoderBlock {
    res: Vec<ResUnit>,
    snake: usize,
    conv: usize,
}

struct Encoder {
    conv1: usize,
    blocks: Vec<EncoderBlock>,
    snake: usize,
    conv2: usize,
}

struct Weights {
    convs: Vec<Conv1dWeights>,
    convts: Vec<ConvTranspose1dWeights>,
    /// Tap-major copies for the channels-last decode on tensor cores (`dac_conv_cl`), per conv / conv-transpose;
    /// made for the decoder's layers when the device has tensor cores and the weights are f16.
    convs_cl: Vec<Option<GpuMatrix>>,
    convts_cl: Vec<Option<GpuMatrix>>,
    /// Snake α per channel, f32 `[C]`.
    alphas: Vec<GpuBuffer>,
    rvq: RvqWeights,
    dec_conv1: usize,
    dec_blocks: Vec<DecoderBlock>,
    dec_snake: usize,
    dec_conv2: usize,
    encoder: Option<Encoder>,
}

impl Weights {
    /// Whether the whole decoder can run channels-last on tensor cores: every layer but the last, one-channel
    /// convolution has its tap-major copy, and that last one reads 8 channels per load.
    fn decoder_channels_last(&self) -> bool {
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

/// GPU objects being allocated, and which checkpoint tensor fills which.
struct Store<'g> {
    gpu: &'g Gpu,
    numerics: Numerics,
    /// Whether the decoder's layers get tap-major copies (`Weights::convs_cl`).
    channels_last: bool,
    convs: Vec<Conv1dWeights>,
    convts: Vec<ConvTranspose1dWeights>,
    convs_cl: Vec<Option<GpuMatrix>>,
    convts_cl: Vec<Option<GpuMatrix>>,
    alphas: Vec<GpuBuffer>,
    targets: BTreeMap<String, Target>,
}

/// Index stored for a module that is not loaded; never dereferenced (its graph is dropped).
const NOT_LOADED: usize = usize::MAX;

impl Store<'_> {
    /// `decoder`: a decoder layer (gets a tap-major copy where `channels_last`).
    fn conv(&mut self, base: &str, cout: usize, cin: usize, kernel: usize, load: bool, decoder: bool) -> Result<usize, DacError> {
        if !load {
            self.skip(&[format!("{base}.weight"), format!("{base}.bias")]);
            return Ok(NOT_LOADED);
        }
        let id = self.convs.len();
        self.convs.push(Conv1dWeights::allocate(self.gpu, base, cout, cin, kernel, self.numerics)?);
        self.convs_cl.push(self.cl_matrix(decoder, base, cout, cout, cin, kernel)?);
        self.targets.insert(format!("{base}.weight"), Target::ConvW(id));
        self.targets.insert(format!("{base}.bias"), Target::ConvB(id));
        Ok(id)
    }

    fn conv_t(&mut self, base: &str, cin: usize, cout: usize, stride: usize) -> Result<usize, DacError> {
        let id = self.convts.len();
        self.convts.push(ConvTranspose1dWeights::allocate(self.gpu, base, cin, cout, 2 * stride, stride, self.numerics)?);
        self.convts_cl.push(self.cl_matrix(true, base, stride * cout, cout, cin, self.convts[id].taps() as usize)?);
        self.targets.insert(format!("{base}.weight"), Target::ConvTW(id));
        self.targets.insert(format!("{base}.bias"), Target::ConvTB(id));
        Ok(id)
    }

    /// An empty tap-major matrix `[rows, taps·cin]` (rows = phases · cout) for a decoder layer that `dac_conv_cl`
    /// can run, else None.
    fn cl_matrix(&self, decoder: bool, base: &str, rows: usize, cout: usize, cin: usize, taps: usize) -> Result<Option<GpuMatrix>, DacError> {
        if !(decoder && self.channels_last && dac_conv_cl::supports(cin as u32, cout as u32)) {
            return Ok(None);
        }
        Ok(Some(empty_matrix(self.gpu, &format!("{base}.cl"), rows, taps * cin, Numerics::F16W)?))
    }

    fn alpha(&mut self, name: String, channels: usize, load: bool) -> usize {
        if !load {
            self.skip(&[name]);
            return NOT_LOADED;
        }
        let id = self.alphas.len();
        self.alphas.push(self.gpu.buffer(&name, channels as u64 * 4));
        self.targets.insert(name, Target::Alpha(id));
        id
    }

    fn res_units(&mut self, p: &str, channels: usize, load: bool, decoder: bool) -> Result<Vec<ResUnit>, DacError> {
        let mut out = Vec::new();
        for (r, &dilation) in RES_DILATIONS.iter().enumerate() {
            let u = format!("{p}.res_unit{}", r + 1);
            out.push(ResUnit {
                snake1: self.alpha(format!("{u}.snake1.alpha"), channels, load),
                conv1: self.conv(&format!("{u}.conv1"), channels, channels, 7, load, decoder)?,
                snake2: self.alpha(format!("{u}.snake2.alpha"), channels, load),
                conv2: self.conv(&format!("{u}.conv2"), channels, channels, 1, load, decoder)?,
                dilation,
            });
        }
        Ok(out)
    }

    fn skip(&mut self, names: &[String]) {
        for n in names {
            self.targets.insert(n.clone(), Target::Skip);
        }
    }
}

/// (g, v) of a weight-normed tensor, as far as they have arrived.
type WeightNormHalves = (Option<Vec<f32>>, Option<Vec<f32>>);

/// Receives the checkpoint's tensors one at a time, in any order, in any of the three weight forms
/// (plain, `weight_g`/`weight_v`, `parametrizations.weight.original0/1`), and uploads each as soon as it is
/// complete (a weight-norm half waits for its partner), so the checkpoint is never held whole.
pub struct DacModelBuilder<'g> {
    cfg: DacConfig,
    numerics: Numerics,
    store: Store<'g>,
    rvq: RvqWeights,
    specs: BTreeMap<String, TensorSpec>,
    /// Weight-norm halves waiting for their partner.
    pending: HashMap<String, WeightNormHalves>,
    received: BTreeMap<String, ()>,
    dec_conv1: usize,
    dec_blocks: Vec<DecoderBlock>,
    dec_snake: usize,
    dec_conv2: usize,
    encoder: Option<Encoder>,
}

impl<'g> DacModelBuilder<'g> {
    /// Allocates every GPU buffer for `cfg`. With `load_encoder` false the encoder's tensors are accepted
    /// and dropped (a decode-only codec, 22 M parameters lighter for the real model).
    pub fn new(gpu: &'g Gpu, cfg: &DacConfig, numerics: Numerics, load_encoder: bool) -> Result<DacModelBuilder<'g>, DacError> {
        validate_config(cfg)?;
        // The codec has no quantized path: a q8 / q4 model runs it in f16w.
        let numerics = numerics.codec();
        let channels_last = gpu.tensor_cores() && numerics == Numerics::F16W;
        let mut st = Store {
            gpu,
            numerics,
            channels_last,
            convs: Vec::new(),
            convts: Vec::new(),
            convs_cl: Vec::new(),
            convts_cl: Vec::new(),
            alphas: Vec::new(),
            targets: BTreeMap::new(),
        };
        let enc = load_encoder;

        let conv1 = st.conv("encoder.conv1", cfg.encoder_hidden, 1, 7, enc, false)?;
        let mut blocks = Vec::new();
        for (i, (&s, (cin, cout))) in cfg.downsampling_ratios.iter().zip(encoder_widths(cfg)).enumerate() {
            let p = format!("encoder.block.{i}");
            let res = st.res_units(&p, cin, enc, false)?;
            let snake = st.alpha(format!("{p}.snake1.alpha"), cin, enc);
            let conv = st.conv(&format!("{p}.conv1"), cout, cin, 2 * s, enc, false)?;
            blocks.push(EncoderBlock { res, snake, conv });
        }
        let enc_last = encoder_widths(cfg).last().map_or(cfg.encoder_hidden, |w| w.1);
        let snake = st.alpha("encoder.snake1.alpha".into(), enc_last, enc);
        let conv2 = st.conv("encoder.conv2", cfg.latent, enc_last, 3, enc, false)?;
        let encoder = enc.then_some(Encoder { conv1, blocks, snake, conv2 });

        let dims = RvqDims {
            n_codebooks: cfg.n_codebooks,
            codebook_size: cfg.codebook_size,
            codebook_dim: cfg.codebook_dim,
            latent: cfg.latent,
        };
        let rvq = RvqWeights::allocate(gpu, dims, numerics)?;
        for i in 0..cfg.n_codebooks {
            let p = format!("quantizer.quantizers.{i}");
            st.targets.insert(format!("{p}.in_proj.weight"), Target::InProjW(i));
            st.targets.insert(format!("{p}.in_proj.bias"), Target::InProjB(i));
            st.targets.insert(format!("{p}.out_proj.weight"), Target::OutProjW(i));
            st.targets.insert(format!("{p}.out_proj.bias"), Target::OutProjB(i));
            st.targets.insert(format!("{p}.codebook.weight"), Target::Codebook(i));
        }

        let dec_conv1 = st.conv("decoder.conv1", cfg.decoder_hidden, cfg.latent, 7, true, true)?;
        let mut dec_blocks = Vec::new();
        for (j, (&s, (cin, cout))) in cfg.upsampling_ratios.iter().zip(decoder_widths(cfg)).enumerate() {
            let p = format!("decoder.block.{j}");
            let snake = st.alpha(format!("{p}.snake1.alpha"), cin, true);
            let conv_t = st.conv_t(&format!("{p}.conv_t1"), cin, cout, s)?;
            let res = st.res_units(&p, cout, true, true)?;
            dec_blocks.push(DecoderBlock { snake, conv_t, res });
        }
        let dec_last = decoder_widths(cfg).last().map_or(cfg.decoder_hidden, |w| w.1);
        let dec_snake = st.alpha("decoder.snake1.alpha".into(), dec_last, true);
        let dec_conv2 = st.conv("decoder.conv2", 1, dec_last, 7, true, true)?;

        // The graph above and `dac_tensor_specs` describe the same layout; a mismatch is a bug here.
        let specs: BTreeMap<String, TensorSpec> = dac_tensor_specs(cfg).into_iter().map(|s| (s.name.clone(), s)).collect();
        assert!(
            specs.len() == st.targets.len() && specs.keys().all(|k| st.targets.contains_key(k)),
            "DAC graph and layout disagree"
        );
        Ok(DacModelBuilder {
            cfg: cfg.clone(),
            numerics,
            store: st,
            rvq,
            specs,
            pending: HashMap::new(),
            received: BTreeMap::new(),
            dec_conv1,
            dec_blocks,
            dec_snake,
            dec_conv2,
            encoder,
        })
    }

    /// Takes one checkpoint tensor (f32 data, row-major, `shape` as stored).
    pub fn accept(&mut self, name: &str, shape: &[usize], data: &[f32]) -> Result<(), DacError> {
        let (logical, part) = resolve(name);
        let spec = match self.specs.get(&logical) {
            Some(s) if part == Part::Whole || s.weight_norm => s,
            _ => return Err(DacError::UnexpectedTensor(name.to_string())),
        };
        check_part_shape(spec, name, part, shape)?;
        if data.len() != shape.iter().product::<usize>() {
            return Err(DacError::DataLength { name: name.to_string(), shape: shape.to_vec(), found: data.len() });
        }
        if self.received.contains_key(&logical) {
            return Err(DacError::DuplicateTensor { name: name.to_string() });
        }
        let rows = spec.shape[0];
        let whole = match part {
            Part::Whole => data.to_vec(),
            Part::G | Part::V => {
                let halves = self.pending.entry(logical.clone()).or_default();
                let slot = if part == Part::G { &mut halves.0 } else { &mut halves.1 };
                if slot.is_some() {
                    return Err(DacError::DuplicateTensor { name: name.to_string() });
                }
                *slot = Some(data.to_vec());
                match halves {
                    (Some(g), Some(v)) => {
                        let w = fold_weight_norm(g, v, rows);
                        self.pending.remove(&logical);
                        w
                    }
                    _ => return Ok(()),
                }
            }
        };
        self.install(&logical, &whole);
        self.received.insert(logical, ());
        Ok(())
    }

    fn install(&self, logical: &str, data: &[f32]) {
        let gpu = self.store.gpu;
        match self.store.targets[logical] {
            Target::ConvW(id) => {
                let c = &self.store.convs[id];
                c.set_weight(gpu, data);
                if let Some(m) = &self.store.convs_cl[id] {
                    write_matrix_rows(gpu, m, 0, &dac_conv_cl::tap_major(data, c.cin as usize, c.kernel as usize), m.rows as usize);
                }
            }
            Target::ConvB(id) => self.store.convs[id].set_bias(gpu, data),
            Target::ConvTW(id) => {
                let c = &self.store.convts[id];
                let phased = c.phased(data);
                c.set_phased_weight(gpu, &phased);
                if let Some(m) = &self.store.convts_cl[id] {
                    write_matrix_rows(gpu, m, 0, &dac_conv_cl::tap_major(&phased, c.cin as usize, c.taps() as usize), m.rows as usize);
                }
            }
            Target::ConvTB(id) => self.store.convts[id].set_bias(gpu, data),
            Target::Alpha(id) => gpu.write(&self.store.alphas[id], data),
            Target::Codebook(i) => self.rvq.set_codebook(gpu, i, data),
            Target::InProjW(i) => self.rvq.set_in_proj_weight(gpu, i, data),
            Target::InProjB(i) => self.rvq.set_in_proj_bias(gpu, i, data),
            Target::OutProjW(i) => self.rvq.set_out_proj_weight(gpu, i, data),
            Target::OutProjB(i) => self.rvq.set_out_proj_bias(gpu, i, data),
            Target::Skip => {}
        }
    }

    /// The model, once every loaded tensor has arrived.
    pub fn finish(self) -> Result<DacModel, DacError> {
        let missing: Vec<&String> = self
            .specs
            .keys()
            .filter(|k| !self.received.contains_key(*k) && !matches!(self.store.targets[*k], Target::Skip))
            .collect();
        if let Some(first) = missing.first() {
            return Err(DacError::MissingTensor { name: (*first).clone(), count: missing.len() });
        }
        let w = Weights {
            convs: self.store.convs,
            convts: self.store.convts,
            convs_cl: self.store.convs_cl,
            convts_cl: self.store.convts_cl,
            alphas: self.store.alphas,
            rvq: self.rvq,
            dec_conv1: self.dec_conv1,
            dec_blocks: self.dec_blocks,
            dec_snake: self.dec_snake,
            dec_conv2: self.dec_conv2,
            encoder: self.encoder,
        };
        let tile = ConvTile::preferred(self.store.gpu, self.numerics);
        Ok(DacModel { config: self.cfg, numerics: self.numerics, tile, tensor_cores: true, w: Arc::new(w) })
    }
}

/// The codec on the GPU. Cheap to share: the weights sit behind an `Arc` that decoders keep too.
pub struct DacModel {
    pub config: DacConfig,
    pub numerics: Numerics,
    tile: ConvTile,
    /// Decode on tensor cores where the device has them and the weights are f16 (`set_tensor_cores`).
    tensor_cores: bool,
    w: Arc<Weights>,
}

/// A storage buffer of `words` 32-bit values, or a typed error past the adapter's binding limit.
/// A buffer of `words` f32 within the binding limit; `reuse` takes it from `Gpu::reusable_buffer` (every
/// codec kernel writes what it later reads, so stale contents are fine).
fn checked_buffer(gpu: &Gpu, label: &str, words: usize, reuse: bool) -> Result<GpuBuffer, DacError> {
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
fn same_pad(c: &Conv1dWeights, dilation: u32) -> u32 {
    (c.kernel - 1) * dilation / 2
}

/// Validates a checkpoint's names and shapes against `cfg` from its header alone (no tensor data read).
pub fn check_dac_checkpoint(cfg: &DacConfig, ckpt: &Checkpoint) -> Result<(), DacError> {
    let tensors: Vec<(&str, &[usize])> =
        ckpt.names().map(|n| (n, ckpt.info(n).map_or(&[][..], |i| i.shape.as_slice()))).collect();
    check_dac_layout(cfg, tensors)
}

impl DacModel {
    /// Loads a checkpoint (HF `descript/dac_44khz` layout, F32/BF16/F16, any of the three weight forms):
    /// validated from its header first, then read and uploaded one tensor at a time.
    pub fn load(gpu: &Gpu, cfg: &DacConfig, ckpt: &Checkpoint, numerics: Numerics, load_encoder: bool) -> Result<DacModel, DacError> {
        check_dac_checkpoint(cfg, ckpt)?;
        let mut b = DacModelBuilder::new(gpu, cfg, numerics, load_encoder)?;
        for name in ckpt.names() {
            if !load_encoder && name.starts_with("encoder.") {
                continue;
            }
            let shape = ckpt.info(name).map(|i| i.shape.clone()).unwrap_or_default();
            b.accept(name, &shape, &ckpt.read_f32(name)?)?;
        }
        b.finish()
    }

    /// Loads `config.json` + `model.safetensors` (or a sharded index) from a directory.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_dir(gpu: &Gpu, dir: &std::path::Path, numerics: Numerics, load_encoder: bool) -> Result<DacModel, DacError> {
        let path = dir.join("config.json");
        let json = std::fs::read_to_string(&path)
            .map_err(|source| crate::weights::WeightsError::Io { what: path.display().to_string(), source })?;
        let cfg = DacConfig::from_json_str(&json)?;
        DacModel::load(gpu, &cfg, &Checkpoint::open_dir(dir)?, numerics, load_encoder)
    }

    /// The convolution work split used by decoders and encodes made from now on (by default each call
    /// picks its tile and split-K from its geometry, see `ConvTile`; encodes ignore `f16_math`).
    pub fn set_conv_tile(&mut self, tile: ConvTile) {
        self.tile = tile;
    }

    pub fn conv_tile(&self) -> ConvTile {
        self.tile
    }

    /// Whether decoders made from now on may decode on tensor cores (channels-last, `kernels::dac_conv_cl`, for
    /// windows of `CHANNELS_LAST_MIN_FRAMES` or more); they do where `Gpu::tensor_cores()`, the weights are f16w
    /// (f32 models keep f32 weights exact on `dac_conv`) and every layer's widths suit `dac_conv_cl`. Off forces
    /// the plain kernels (A/B comparisons). The encoder always uses `dac_conv` (f32 arithmetic).
    pub fn set_tensor_cores(&mut self, on: bool) {
        self.tensor_cores = on;
    }

    /// Whether decoders made on `gpu` now would use tensor cores.
    pub fn uses_tensor_cores(&self, gpu: &Gpu) -> bool {
        self.tensor_cores && gpu.tensor_cores() && self.numerics == Numerics::F16W
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

    /// Encodes mono 44.1 kHz samples to codes `[n_codebooks, T]` (codebook-major), T = `frames_for_samples`.
    /// No padding is added: a caller wanting every sample covered pads to a multiple of the hop first.
    pub async fn encode(&self, gpu: &Gpu, pcm: &[f32]) -> Result<Vec<u32>, DacError> {
        let e = self.w.encoder.as_ref().ok_or(DacError::NoEncoder)?;
        let lens = encode_lengths(&self.w, e, pcm.len() as u32);
        let frames = *lens.last().unwrap();
        if frames == 0 {
            return Ok(Vec::new());
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
        gpu.run(&ds.iter().collect::<Vec<_>>());
        let mut out = gpu.read_u32(&codes).await?;
        out.truncate(self.config.n_codebooks * frames as usize);
        Ok(out)
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn encode_blocking(&self, gpu: &Gpu, pcm: &[f32]) -> Result<Vec<u32>, DacError> {
        pollster::block_on(self.encode(gpu, pcm))
    }
}

/// Lengths along the decoder: [frames, after conv1, after each block…]; the last is the PCM length.
fn decode_lengths(w: &Weights, frames: u32) -> Vec<u32> {
    let c1 = &w.convs[w.dec_conv1];
    let mut lens = vec![frames, conv1d_len(frames, c1.kernel, 1, 1, same_pad(c1, 1))];
    for blk in &w.dec_blocks {
        let ct = &w.convts[blk.conv_t];
        lens.push(conv_transpose1d_len(*lens.last().unwrap(), ct.kernel, ct.stride, ct.stride.div_ceil(2)));
    }
    // The final k7 "same" conv keeps the length.
    lens
}

/// Lengths along the encoder: [samples, after conv1, after each block…, frames].
fn encode_lengths(w: &Weights, e: &Encoder, samples: u32) -> Vec<u32> {
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

/// x += conv2(Snake₂(conv1_dil(Snake₁(x)))) over `[C, len]`, through `h`.
#[allow(clippy::too_many_arguments)]
fn res_unit(gpu: &Gpu, w: &Weights, ru: &ResUnit, x: &GpuBuffer, h: &GpuBuffer, len: u32, tile: ConvTile, out: &mut Vec<Dispatch>) {
    let (c1, c2) = (&w.convs[ru.conv1], &w.convs[ru.conv2]);
    let f1 = ConvFusion { snake_alpha: Some(&w.alphas[ru.snake1]), ..Default::default() };
    out.extend(conv1d(gpu, x, len, c1, 1, ru.dilation, same_pad(c1, ru.dilation), h, f1, tile).dispatches);
    let f2 = ConvFusion { snake_alpha: Some(&w.alphas[ru.snake2]), accumulate: true, tanh: false };
    out.extend(conv1d(gpu, h, len, c2, 1, 1, same_pad(c2, 1), x, f2, tile).dispatches);
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
            dac_channels_last::pack(gpu, &self.z, SourceLayout::ChannelsFirst, c1.cin, frames, None, input),
            dac_conv_cl::conv1d(gpu, input, frames, c1, cl(w.dec_conv1), 1, 1, same_pad(c1, 1), &self.a, ClEpilogue::StorePacked(next(), spare)),
        ];
        std::mem::swap(&mut input, &mut spare);
        let (mut cur, mut other) = (&self.a, &self.b);
        let mut len = lens[1];
        for (blk, &next_len) in w.dec_blocks.iter().zip(&lens[2..]) {
            let ct = &w.convts[blk.conv_t];
            let ct_cl = w.convts_cl[blk.conv_t].as_ref().expect("tap-major decoder weights");
            ds.push(dac_conv_cl::conv_transpose1d(gpu, input, len, ct, ct_cl, ct.stride.div_ceil(2), other, ClEpilogue::StorePacked(next(), spare)));
            std::mem::swap(&mut cur, &mut other);
            std::mem::swap(&mut input, &mut spare);
            len = next_len;
            for ru in &blk.res {
                let (r1, r2) = (&w.convs[ru.conv1], &w.convs[ru.conv2]);
                let inner = ClEpilogue::SnakeHalf(&w.alphas[ru.snake2]);
                ds.push(dac_conv_cl::conv1d(gpu, input, len, r1, cl(ru.conv1), 1, ru.dilation, same_pad(r1, ru.dilation), &self.h, inner));
                let add = ClEpilogue::AccumulatePacked(next(), spare);
                ds.push(dac_conv_cl::conv1d(gpu, &self.h, len, r2, cl(ru.conv2), 1, 1, same_pad(r2, 1), cur, add));
                std::mem::swap(&mut input, &mut spare);
            }
        }
        let c2 = &w.convs[w.dec_conv2];
        ds.push(dac_channels_last::conv_mono(gpu, input, len, c2, 1, same_pad(c2, 1), &self.pcm));
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
