//! Loading the codec: `DacModelBuilder` takes the checkpoint's tensors in any order and any weight-norm form
//! and uploads each as soon as it is complete; `DacModel::load` reads a checkpoint through it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::config::DacConfig;
use crate::gpu::{Gpu, GpuBuffer};
use crate::kernels::conv::plain::{Conv1dWeights, ConvTile, ConvTranspose1dWeights};
use crate::kernels::conv::plain::{empty_matrix, write_matrix_rows};
use crate::kernels::conv::coop;
use crate::kernels::GpuMatrix;
use crate::kernels::dac_rvq::{RvqDims, RvqWeights};
use crate::kernels::Numerics;
use crate::weights::Checkpoint;

use super::layout::{check_dac_layout, check_part_shape, dac_tensor_specs, decoder_widths, encoder_widths, fold_weight_norm, resolve, validate_config, Part, TensorSpec, RES_DILATIONS};
use super::DacError;
use super::model::{DacModel, DecoderBlock, Encoder, EncoderBlock, ResUnit, Weights};


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

    /// An empty tap-major matrix `[rows, taps·cin]` (rows = phases · cout) for a decoder layer that `conv::coop`
    /// can run, else None.
    fn cl_matrix(&self, decoder: bool, base: &str, rows: usize, cout: usize, cin: usize, taps: usize) -> Result<Option<GpuMatrix>, DacError> {
        if !(decoder && self.channels_last && coop::supports(cin as u32, cout as u32)) {
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
        // Tap-major copies for tensor cores double the decoder's weights (~110 MB for the 44.1 kHz codec): made in f16w
        // only, not in the memory modes q8 / q4, whose codec then decodes on the plain kernels.
        let channels_last = gpu.tensor_cores() && numerics == Numerics::F16W;
        // The codec has no quantized path: a q8 / q4 model runs it in f16w.
        let numerics = numerics.codec();
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
                    write_matrix_rows(gpu, m, 0, &coop::tap_major(data, c.cin as usize, c.kernel as usize), m.rows as usize);
                }
            }
            Target::ConvB(id) => self.store.convs[id].set_bias(gpu, data),
            Target::ConvTW(id) => {
                let c = &self.store.convts[id];
                let phased = c.phased(data);
                c.set_phased_weight(gpu, &phased);
                if let Some(m) = &self.store.convts_cl[id] {
                    write_matrix_rows(gpu, m, 0, &coop::tap_major(&phased, c.cin as usize, c.taps() as usize), m.rows as usize);
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
}
