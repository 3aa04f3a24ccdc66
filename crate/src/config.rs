//! Checkpoint configuration: `config.json` of the HF/0626 schema and of the nari v0.1 schema → one typed
//! `DiaConfig`; the DAC codec's `DacConfig`. Validation with clear errors. Knows nothing of tensors or GPUs.

use serde_json::{Map, Value};

/// Which `config.json` schema a checkpoint came with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSchema {
    /// transformers `DiaConfig` (nari-labs/Dia-1.6B-0626, HF layout).
    Hf,
    /// nari v0.1 (`nari-labs/Dia-1.6B`): `model.encoder.n_layer`, … (docs/model.md §1.1).
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
    /// RoPE in cross-attention: only the v0.1 checkpoint as nari ran it (docs/model.md §3.5).
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

/// Most layers per stack (encoder, decoder) a Dia config may have (the real model: 12 and 18). Loading lists
/// every tensor of every layer before reading any, so a config must not be able to claim unbounded work.
pub const MAX_LAYERS: usize = 1024;

/// Most blocks per side a DAC config may have (the real codec: 4); each block doubles (encoder) or halves
/// (decoder) the width, so more than a few dozen cannot describe a usable codec anyway.
pub const MAX_DAC_BLOCKS: usize = 32;

/// Most codebooks a DAC config may have (the real codec: 9); three tensors each are listed at load.
pub const MAX_CODEBOOKS: usize = 1024;

/// Most elements of any one tensor a config implies (weights, RoPE tables, caches, the code grid): the
/// kernels index elements with `u32`. The real model's largest holds about 19 M.
pub const MAX_TENSOR_ELEMENTS: u64 = u32::MAX as u64;

/// One tensor a config implies, for the size check: what it is and its dimensions (`u64`, so that widths
/// derived by doubling cannot wrap before they are checked).
type ImpliedTensor = (String, Vec<u64>);

/// Element count of a shape, saturating at `u64::MAX` (which is then above any limit).
fn elements(shape: &[u64]) -> u64 {
    shape.iter().fold(1u64, |acc, &d| acc.saturating_mul(d))
}

/// The first implied tensor with more than `MAX_TENSOR_ELEMENTS` elements, as an error.
fn check_tensor_sizes(tensors: impl IntoIterator<Item = ImpliedTensor>) -> Result<(), ConfigError> {
    match tensors.into_iter().find(|(_, shape)| elements(shape) > MAX_TENSOR_ELEMENTS) {
        Some((tensor, shape)) => {
            Err(ConfigError::TensorTooLarge { tensor, elements: elements(&shape), shape, max: MAX_TENSOR_ELEMENTS })
        }
        None => Ok(()),
    }
}

/// `(what, shape)` with the shape's sizes widened to `u64`.
fn implied(what: impl Into<String>, shape: &[usize]) -> ImpliedTensor {
    (what.into(), shape.iter().map(|&d| d as u64).collect())
}

/// The product of a DAC config's stride list (the hop length it implies), or an error if it overflows.
fn ratio_product(field: &'static str, ratios: &[usize]) -> Result<usize, ConfigError> {
    ratios.iter().try_fold(1usize, |acc, &r| acc.checked_mul(r)).ok_or(ConfigError::DacRatioOverflow { field })
}

/// Why a `config.json` was refused. Field names are dotted JSON paths (`decoder_config.num_channels`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("config is not valid JSON: {0}")]
    Json(String),
    #[error("config matches no known schema (expected `encoder_config`/`decoder_config` (HF) or `model.encoder` (nari v0.1))")]
    UnknownSchema,
    #[error("config field `{0}` is missing")]
    MissingField(String),
    #[error("config field `{field}` should be {expected}")]
    WrongType { field: String, expected: &'static str },
    #[error("config field `{0}` must be non-zero")]
    ZeroSize(String),
    #[error("config field `{field}` must be positive and finite, got {value}")]
    NotPositive { field: String, value: f64 },
    #[error("delay_pattern has {pattern} entries but the decoder has {channels} channels")]
    DelayPatternLength { pattern: usize, channels: usize },
    #[error("{stack}: {heads} query heads are not a multiple of {kv_heads} key/value heads")]
    HeadsNotDivisible { stack: &'static str, heads: usize, kv_heads: usize },
    #[error("config field `{field}` is {value}, but RoPE rotates half-split pairs and needs an even head_dim")]
    OddHeadDim { field: String, value: usize },
    #[error("config field `{field}` = {value:?}: only \"silu\" is supported")]
    UnsupportedActivation { field: String, value: String },
    #[error("config field `{field}` = {value:?}: only the \"default\" RoPE is supported")]
    UnsupportedRope { field: String, value: String },
    #[error("rope_min_timescale is {0}; only 1 (plain RoPE with theta = rope_max_timescale) is supported")]
    RopeMinTimescale(f64),
    #[error("special token `{name}` = {id} is outside the audio vocabulary of {vocab}")]
    SpecialIdOutOfVocab { name: &'static str, id: u64, vocab: usize },
    #[error("special token `{name}` is {top_level} at top level but {decoder} in decoder_config")]
    ConflictingSpecialId { name: &'static str, top_level: u64, decoder: u64 },
    #[error("DAC hop_length {hop_length} must equal the product of downsampling ({downsampling}) and of upsampling ({upsampling}) ratios")]
    DacHopLength { hop_length: usize, downsampling: usize, upsampling: usize },
    #[error(
        "DAC decoder_hidden_size {decoder_hidden} leaves no channel after {blocks} halvings (one per upsampling block): it must be at least 2^{blocks}"
    )]
    DacDecoderWidth { decoder_hidden: usize, blocks: usize },
    #[error("the product of `{field}` (the hop length in samples) overflows")]
    DacRatioOverflow { field: &'static str },
    #[error("config field `{field}` is {value}, more than the {max} supported")]
    TooMany { field: String, value: usize, max: usize },
    #[error("the config's sizes make the {tensor} {shape:?}: {elements} elements, more than the {max} supported")]
    TensorTooLarge { tensor: String, shape: Vec<u64>, elements: u64, max: u64 },
    #[error("delay_pattern holds {delay}, but a delay must be below the decoder's {max_positions} positions")]
    DelayTooLong { delay: usize, max_positions: usize },
}

/// A JSON object with the dotted path it was found at, for error messages.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Obj<'a> {
    fn root(value: &'a Value) -> Result<Obj<'a>, ConfigError> {
        match value {
            Value::Object(map) => Ok(Obj { map, path: String::new() }),
            _ => Err(ConfigError::WrongType { field: "<root>".into(), expected: "a JSON object" }),
        }
    }

    fn field_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The value at `key`, treating JSON `null` as absent.
    fn opt(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn req(&self, key: &str) -> Result<&'a Value, ConfigError> {
        self.opt(key).ok_or_else(|| ConfigError::MissingField(self.field_path(key)))
    }

    fn obj(&self, key: &str) -> Result<Obj<'a>, ConfigError> {
        self.opt_obj(key)?.ok_or_else(|| ConfigError::MissingField(self.field_path(key)))
    }

    fn opt_obj(&self, key: &str) -> Result<Option<Obj<'a>>, ConfigError> {
        match self.opt(key) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Obj { map, path: self.field_path(key) })),
            Some(_) => Err(ConfigError::WrongType { field: self.field_path(key), expected: "an object" }),
        }
    }

    fn as_u64(&self, key: &str, v: &Value) -> Result<u64, ConfigError> {
        v.as_u64()
            .ok_or_else(|| ConfigError::WrongType { field: self.field_path(key), expected: "a non-negative integer" })
    }

    fn opt_u64(&self, key: &str) -> Result<Option<u64>, ConfigError> {
        self.opt(key).map(|v| self.as_u64(key, v)).transpose()
    }

    fn usize(&self, key: &str) -> Result<usize, ConfigError> {
        let v = self.as_u64(key, self.req(key)?)?;
        usize::try_from(v)
            .map_err(|_| ConfigError::WrongType { field: self.field_path(key), expected: "an integer that fits usize" })
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>, ConfigError> {
        self.opt(key).map(|_| self.usize(key)).transpose()
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>, ConfigError> {
        self.opt(key)
            .map(|v| {
                v.as_f64().ok_or_else(|| ConfigError::WrongType { field: self.field_path(key), expected: "a number" })
            })
            .transpose()
    }

    fn f64(&self, key: &str) -> Result<f64, ConfigError> {
        self.opt_f64(key)?.ok_or_else(|| ConfigError::MissingField(self.field_path(key)))
    }

    fn opt_str(&self, key: &str) -> Result<Option<&'a str>, ConfigError> {
        self.opt(key)
            .map(|v| {
                v.as_str().ok_or_else(|| ConfigError::WrongType { field: self.field_path(key), expected: "a string" })
            })
            .transpose()
    }

    fn opt_usize_list(&self, key: &str) -> Result<Option<Vec<usize>>, ConfigError> {
        let Some(v) = self.opt(key) else { return Ok(None) };
        let wrong =
            || ConfigError::WrongType { field: self.field_path(key), expected: "a list of non-negative integers" };
        let items = v.as_array().ok_or_else(wrong)?;
        items
            .iter()
            .map(|x| x.as_u64().and_then(|n| usize::try_from(n).ok()).ok_or_else(wrong))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn usize_list(&self, key: &str) -> Result<Vec<usize>, ConfigError> {
        self.opt_usize_list(key)?.ok_or_else(|| ConfigError::MissingField(self.field_path(key)))
    }
}

fn parse_json(s: &str) -> Result<Value, ConfigError> {
    serde_json::from_str(s).map_err(|e| ConfigError::Json(e.to_string()))
}

/// `hidden_act` of an HF sub-config: only SiLU (the SwiGLU gate) exists in Dia.
fn check_activation(sub: &Obj) -> Result<(), ConfigError> {
    let act = sub.opt_str("hidden_act")?.ok_or_else(|| ConfigError::MissingField(sub.field_path("hidden_act")))?;
    if act != "silu" {
        return Err(ConfigError::UnsupportedActivation { field: sub.field_path("hidden_act"), value: act.to_string() });
    }
    Ok(())
}

/// RoPE theta of an HF sub-config: transformers 5 `rope_parameters {rope_theta, rope_type}`, or the older
/// `rope_theta` (+ `rope_scaling`, which must be null or of the default type).
fn hf_rope_theta(sub: &Obj) -> Result<f64, ConfigError> {
    let check_type = |obj: &Obj, key: &str| -> Result<(), ConfigError> {
        match obj.opt_str(key)? {
            None | Some("default") => Ok(()),
            Some(other) => Err(ConfigError::UnsupportedRope { field: obj.field_path(key), value: other.to_string() }),
        }
    };
    if let Some(params) = sub.opt_obj("rope_parameters")? {
        check_type(&params, "rope_type")?;
        check_type(&params, "type")?;
        return params.f64("rope_theta");
    }
    if let Some(scaling) = sub.opt_obj("rope_scaling")? {
        check_type(&scaling, "rope_type")?;
        check_type(&scaling, "type")?;
    }
    sub.opt_f64("rope_theta")?.ok_or_else(|| {
        ConfigError::MissingField(format!(
            "{} (or {})",
            sub.field_path("rope_parameters"),
            sub.field_path("rope_theta")
        ))
    })
}

/// `norm_eps` of a sub-config, falling back to the top-level value.
fn hf_norm_eps(sub: &Obj, top: &Obj) -> Result<f64, ConfigError> {
    match sub.opt_f64("norm_eps")? {
        Some(eps) => Ok(eps),
        None => top.opt_f64("norm_eps")?.ok_or_else(|| ConfigError::MissingField(sub.field_path("norm_eps"))),
    }
}

/// A special id from `decoder_config` (transformers 5) or the top level (older files); both present must agree.
fn hf_special_id(top: &Obj, dec: &Obj, key: &str, name: &'static str) -> Result<u64, ConfigError> {
    match (top.opt_u64(key)?, dec.opt_u64(key)?) {
        (Some(t), Some(d)) if t != d => Err(ConfigError::ConflictingSpecialId { name, top_level: t, decoder: d }),
        (Some(id), _) | (None, Some(id)) => Ok(id),
        (None, None) => Err(ConfigError::MissingField(dec.field_path(key))),
    }
}

fn to_u32_id(id: u64, name: &'static str, vocab: usize) -> Result<u32, ConfigError> {
    match u32::try_from(id) {
        Ok(v) if (v as usize) < vocab => Ok(v),
        _ => Err(ConfigError::SpecialIdOutOfVocab { name, id, vocab }),
    }
}

/// A checkpoint directory's `config.json` that could not be read or was refused; shows as `<path>: <why>`.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct ConfigFileError {
    pub path: std::path::PathBuf,
    pub source: ConfigFileProblem,
}

#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileProblem {
    #[error(transparent)]
    Read(#[from] std::io::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl DiaConfig {
    /// Reads and parses `<dir>/config.json` (either schema); also returns the file's text, for copying it as is.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_dir_with_text(dir: &std::path::Path) -> Result<(DiaConfig, String), ConfigFileError> {
        let path = dir.join("config.json");
        let read = std::fs::read_to_string(&path).map_err(ConfigFileProblem::from).and_then(|text| Ok((DiaConfig::from_json_str(&text)?, text)));
        read.map_err(|source| ConfigFileError { path, source })
    }

    /// Reads and parses `<dir>/config.json` (either schema).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_dir(dir: &std::path::Path) -> Result<DiaConfig, ConfigFileError> {
        Self::from_dir_with_text(dir).map(|(cfg, _)| cfg)
    }

    /// Parses `config.json` of either schema (detected from its keys) and validates it.
    pub fn from_json_str(s: &str) -> Result<DiaConfig, ConfigError> {
        let value = parse_json(s)?;
        let root = Obj::root(&value)?;
        let cfg = if root.opt("encoder_config").is_some() || root.opt("decoder_config").is_some() {
            Self::from_hf(&root)?
        } else if root.opt_obj("model")?.is_some_and(|m| m.opt("encoder").is_some()) {
            Self::from_nari(&root)?
        } else {
            return Err(ConfigError::UnknownSchema);
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn from_hf(top: &Obj) -> Result<DiaConfig, ConfigError> {
        let enc = top.obj("encoder_config")?;
        let dec = top.obj("decoder_config")?;
        check_activation(&enc)?;
        check_activation(&dec)?;

        let enc_heads = enc.usize("num_attention_heads")?;
        let encoder = EncoderConfig {
            layers: enc.usize("num_hidden_layers")?,
            hidden: enc.usize("hidden_size")?,
            intermediate: enc.usize("intermediate_size")?,
            heads: enc_heads,
            kv_heads: enc.opt_usize("num_key_value_heads")?.unwrap_or(enc_heads),
            head_dim: enc.usize("head_dim")?,
            vocab: enc.usize("vocab_size")?,
            max_positions: enc.usize("max_position_embeddings")?,
            norm_eps: hf_norm_eps(&enc, top)? as f32,
            rope_theta: hf_rope_theta(&enc)? as f32,
        };

        let dec_heads = dec.usize("num_attention_heads")?;
        let cross_heads = dec.usize("cross_num_attention_heads")?;
        let decoder = DecoderConfig {
            layers: dec.usize("num_hidden_layers")?,
            hidden: dec.usize("hidden_size")?,
            intermediate: dec.usize("intermediate_size")?,
            heads: dec_heads,
            kv_heads: dec.opt_usize("num_key_value_heads")?.unwrap_or(dec_heads),
            head_dim: dec.usize("head_dim")?,
            cross_heads,
            cross_kv_heads: dec.opt_usize("cross_num_key_value_heads")?.unwrap_or(cross_heads),
            cross_head_dim: dec.usize("cross_head_dim")?,
            cross_hidden: dec.usize("cross_hidden_size")?,
            vocab: dec.usize("vocab_size")?,
            channels: dec.usize("num_channels")?,
            max_positions: dec.usize("max_position_embeddings")?,
            norm_eps: hf_norm_eps(&dec, top)? as f32,
            rope_theta: hf_rope_theta(&dec)? as f32,
        };

        let vocab = decoder.vocab;
        Ok(DiaConfig {
            schema: ConfigSchema::Hf,
            delay_pattern: top.usize_list("delay_pattern")?,
            bos: to_u32_id(hf_special_id(top, &dec, "bos_token_id", "bos")?, "bos", vocab)?,
            eos: to_u32_id(hf_special_id(top, &dec, "eos_token_id", "eos")?, "eos", vocab)?,
            pad: to_u32_id(hf_special_id(top, &dec, "pad_token_id", "pad")?, "pad", vocab)?,
            encoder,
            decoder,
            cross_attention_rope: false,
        })
    }

    fn from_nari(top: &Obj) -> Result<DiaConfig, ConfigError> {
        let model = top.obj("model")?;
        let enc = model.obj("encoder")?;
        let dec = model.obj("decoder")?;
        let data = top.obj("data")?;

        // nari builds RoPE from timescales min·(max/min)^(2i/d); with min = 1 that is θ = max.
        let min_timescale = model.opt_f64("rope_min_timescale")?.unwrap_or(1.0);
        if min_timescale != 1.0 {
            return Err(ConfigError::RopeMinTimescale(min_timescale));
        }
        let theta = model.opt_f64("rope_max_timescale")?.unwrap_or(10_000.0) as f32;
        let eps = model.opt_f64("normalization_layer_epsilon")?.unwrap_or(1e-5) as f32;

        let enc_heads = enc.usize("n_head")?;
        let enc_hidden = enc.usize("n_embd")?;
        let encoder = EncoderConfig {
            layers: enc.usize("n_layer")?,
            hidden: enc_hidden,
            intermediate: enc.usize("n_hidden")?,
            heads: enc_heads,
            kv_heads: enc_heads,
            head_dim: enc.usize("head_dim")?,
            vocab: model.usize("src_vocab_size")?,
            max_positions: data.usize("text_length")?,
            norm_eps: eps,
            rope_theta: theta,
        };
        let cross_heads = dec.usize("cross_query_heads")?;
        let decoder = DecoderConfig {
            layers: dec.usize("n_layer")?,
            hidden: dec.usize("n_embd")?,
            intermediate: dec.usize("n_hidden")?,
            heads: dec.usize("gqa_query_heads")?,
            kv_heads: dec.usize("kv_heads")?,
            head_dim: dec.usize("gqa_head_dim")?,
            cross_heads,
            cross_kv_heads: cross_heads,
            cross_head_dim: dec.usize("cross_head_dim")?,
            cross_hidden: enc_hidden,
            vocab: model.usize("tgt_vocab_size")?,
            channels: data.usize("channels")?,
            max_positions: data.usize("audio_length")?,
            norm_eps: eps,
            rope_theta: theta,
        };
        let vocab = decoder.vocab;
        let id = |key: &str, name: &'static str| -> Result<u32, ConfigError> {
            to_u32_id(data.as_u64(key, data.req(key)?)?, name, vocab)
        };
        Ok(DiaConfig {
            schema: ConfigSchema::NariV01,
            delay_pattern: data.usize_list("delay_pattern")?,
            bos: id("audio_bos_value", "bos")?,
            eos: id("audio_eos_value", "eos")?,
            pad: id("audio_pad_value", "pad")?,
            encoder,
            decoder,
            cross_attention_rope: true,
        })
    }

    /// Checks the invariants the model relies on (also for configs built in code).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let (e, d) = (&self.encoder, &self.decoder);
        let sizes = [
            ("encoder.layers", e.layers),
            ("encoder.hidden", e.hidden),
            ("encoder.intermediate", e.intermediate),
            ("encoder.heads", e.heads),
            ("encoder.kv_heads", e.kv_heads),
            ("encoder.head_dim", e.head_dim),
            ("encoder.vocab", e.vocab),
            ("encoder.max_positions", e.max_positions),
            ("decoder.layers", d.layers),
            ("decoder.hidden", d.hidden),
            ("decoder.intermediate", d.intermediate),
            ("decoder.heads", d.heads),
            ("decoder.kv_heads", d.kv_heads),
            ("decoder.head_dim", d.head_dim),
            ("decoder.cross_heads", d.cross_heads),
            ("decoder.cross_kv_heads", d.cross_kv_heads),
            ("decoder.cross_head_dim", d.cross_head_dim),
            ("decoder.cross_hidden", d.cross_hidden),
            ("decoder.vocab", d.vocab),
            ("decoder.channels", d.channels),
            ("decoder.max_positions", d.max_positions),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::ZeroSize(name.to_string()));
        }
        for (field, layers) in [("encoder.layers", e.layers), ("decoder.layers", d.layers)] {
            if layers > MAX_LAYERS {
                return Err(ConfigError::TooMany { field: field.into(), value: layers, max: MAX_LAYERS });
            }
        }
        // What loading builds from these sizes, before any weight is read.
        let positions = e.max_positions.max(d.max_positions);
        check_tensor_sizes([
            implied("encoder embedding", &[e.vocab, e.hidden]),
            implied("encoder query projection", &[e.heads, e.head_dim, e.hidden]),
            implied("encoder key/value projection", &[e.kv_heads, e.head_dim, e.hidden]),
            implied("encoder MLP", &[2, e.intermediate, e.hidden]),
            implied("encoder RoPE table", &[e.max_positions, e.head_dim]),
            implied("decoder embedding", &[d.channels, d.vocab, d.hidden]),
            implied("decoder query projection", &[d.heads, d.head_dim, d.hidden]),
            implied("decoder key/value projection", &[d.kv_heads, d.head_dim, d.hidden]),
            implied("decoder self-attention cache", &[d.max_positions, d.kv_heads, d.head_dim]),
            implied("decoder RoPE table", &[d.max_positions, d.head_dim]),
            implied("cross-attention query projection", &[d.cross_heads, d.cross_head_dim, d.hidden]),
            implied("cross-attention key/value projection", &[d.cross_kv_heads, d.cross_head_dim, d.cross_hidden]),
            implied("cross-attention cache", &[e.max_positions, d.cross_kv_heads, d.cross_head_dim]),
            implied("cross-attention RoPE table", &[positions, d.cross_head_dim]),
            implied("decoder MLP", &[2, d.intermediate, d.hidden]),
            implied("code grid", &[d.max_positions, d.channels]),
        ])?;
        let positive = [
            ("encoder.norm_eps", e.norm_eps),
            ("encoder.rope_theta", e.rope_theta),
            ("decoder.norm_eps", d.norm_eps),
            ("decoder.rope_theta", d.rope_theta),
        ];
        if let Some((name, v)) = positive.iter().find(|(_, v)| !(v.is_finite() && *v > 0.0)) {
            return Err(ConfigError::NotPositive { field: name.to_string(), value: *v as f64 });
        }
        for (stack, heads, kv_heads) in [
            ("encoder self-attention", e.heads, e.kv_heads),
            ("decoder self-attention", d.heads, d.kv_heads),
            ("decoder cross-attention", d.cross_heads, d.cross_kv_heads),
        ] {
            if !heads.is_multiple_of(kv_heads) {
                return Err(ConfigError::HeadsNotDivisible { stack, heads, kv_heads });
            }
        }
        let mut rotated = vec![("encoder.head_dim", e.head_dim), ("decoder.head_dim", d.head_dim)];
        if self.cross_attention_rope {
            rotated.push(("decoder.cross_head_dim", d.cross_head_dim));
        }
        if let Some((field, value)) = rotated.into_iter().find(|(_, v)| v % 2 != 0) {
            return Err(ConfigError::OddHeadDim { field: field.to_string(), value });
        }
        if self.delay_pattern.len() != d.channels {
            return Err(ConfigError::DelayPatternLength { pattern: self.delay_pattern.len(), channels: d.channels });
        }
        // A frame is final only once the row `frame + max_delay` exists: a longer delay never finishes one.
        if let Some(&delay) = self.delay_pattern.iter().find(|&&delay| delay >= d.max_positions) {
            return Err(ConfigError::DelayTooLong { delay, max_positions: d.max_positions });
        }
        for (name, id) in [("bos", self.bos), ("eos", self.eos), ("pad", self.pad)] {
            if id as usize >= d.vocab {
                return Err(ConfigError::SpecialIdOutOfVocab { name, id: id as u64, vocab: d.vocab });
            }
        }
        Ok(())
    }

    /// Largest per-channel delay (15 for the real model): rows a sequence needs beyond its last frame.
    pub fn max_delay(&self) -> usize {
        self.delay_pattern.iter().copied().max().unwrap_or(0)
    }

    /// The full-size Dia 1.6B (`nari-labs/Dia-1.6B-0626`, HF schema, docs/model.md §1.2).
    pub fn dia_1_6b() -> DiaConfig {
        DiaConfig {
            schema: ConfigSchema::Hf,
            encoder: EncoderConfig {
                layers: 12,
                hidden: 1024,
                intermediate: 4096,
                heads: 16,
                kv_heads: 16,
                head_dim: 128,
                vocab: 256,
                max_positions: 1024,
                norm_eps: 1e-5,
                rope_theta: 10_000.0,
            },
            decoder: DecoderConfig {
                layers: 18,
                hidden: 2048,
                intermediate: 8192,
                heads: 16,
                kv_heads: 4,
                head_dim: 128,
                cross_heads: 16,
                cross_kv_heads: 16,
                cross_head_dim: 128,
                cross_hidden: 1024,
                vocab: 1028,
                channels: 9,
                max_positions: 3072,
                norm_eps: 1e-5,
                rope_theta: 10_000.0,
            },
            delay_pattern: vec![0, 8, 9, 10, 11, 12, 13, 14, 15],
            bos: 1026,
            eos: 1024,
            pad: 1025,
            cross_attention_rope: false,
        }
    }
}

impl DacConfig {
    /// Parses an HF `DacConfig` `config.json` and validates it.
    pub fn from_json_str(s: &str) -> Result<DacConfig, ConfigError> {
        let value = parse_json(s)?;
        let root = Obj::root(&value)?;
        let downsampling_ratios = root.usize_list("downsampling_ratios")?;
        // HF's default decoder mirrors the encoder.
        let upsampling_ratios = match root.opt_usize_list("upsampling_ratios")? {
            Some(r) => r,
            None => downsampling_ratios.iter().rev().copied().collect(),
        };
        let hop_length = match root.opt_usize("hop_length")? {
            Some(h) => h,
            None => ratio_product("downsampling_ratios", &downsampling_ratios)?,
        };
        let rate = root.usize("sampling_rate")?;
        let sample_rate = u32::try_from(rate)
            .map_err(|_| ConfigError::WrongType { field: "sampling_rate".into(), expected: "a rate that fits u32" })?;
        let cfg = DacConfig {
            sample_rate,
            encoder_hidden: root.usize("encoder_hidden_size")?,
            downsampling_ratios,
            decoder_hidden: root.usize("decoder_hidden_size")?,
            upsampling_ratios,
            n_codebooks: root.usize("n_codebooks")?,
            codebook_size: root.usize("codebook_size")?,
            codebook_dim: root.usize("codebook_dim")?,
            latent: root.usize("hidden_size")?,
            hop_length,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the invariants the codec relies on (also for configs built in code).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let sizes = [
            ("sampling_rate", self.sample_rate as usize),
            ("encoder_hidden_size", self.encoder_hidden),
            ("decoder_hidden_size", self.decoder_hidden),
            ("n_codebooks", self.n_codebooks),
            ("codebook_size", self.codebook_size),
            ("codebook_dim", self.codebook_dim),
            ("hidden_size", self.latent),
            ("hop_length", self.hop_length),
            ("downsampling_ratios", self.downsampling_ratios.len()),
            ("upsampling_ratios", self.upsampling_ratios.len()),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::ZeroSize(name.to_string()));
        }
        if self.downsampling_ratios.contains(&0) {
            return Err(ConfigError::ZeroSize("downsampling_ratios[..]".into()));
        }
        if self.upsampling_ratios.contains(&0) {
            return Err(ConfigError::ZeroSize("upsampling_ratios[..]".into()));
        }
        for (field, value, max) in [
            ("downsampling_ratios", self.downsampling_ratios.len(), MAX_DAC_BLOCKS),
            ("upsampling_ratios", self.upsampling_ratios.len(), MAX_DAC_BLOCKS),
            ("n_codebooks", self.n_codebooks, MAX_CODEBOOKS),
        ] {
            if value > max {
                return Err(ConfigError::TooMany { field: field.into(), value, max });
            }
        }
        let down = ratio_product("downsampling_ratios", &self.downsampling_ratios)?;
        let up = ratio_product("upsampling_ratios", &self.upsampling_ratios)?;
        if down != self.hop_length || up != self.hop_length {
            return Err(ConfigError::DacHopLength { hop_length: self.hop_length, downsampling: down, upsampling: up });
        }
        // Decoder block j outputs decoder_hidden / 2^(j+1) channels, rounded down as the reference does; the last
        // block must keep at least one.
        let blocks = self.upsampling_ratios.len();
        if blocks >= usize::BITS as usize || self.decoder_hidden >> blocks == 0 {
            return Err(ConfigError::DacDecoderWidth { decoder_hidden: self.decoder_hidden, blocks });
        }
        check_tensor_sizes(self.largest_tensors())
    }

    /// The codec's largest tensors per block and stage (`dac::layout::dac_tensor_specs` lists them all), in
    /// `u64` so that the encoder's doubling widths cannot wrap.
    fn largest_tensors(&self) -> Vec<ImpliedTensor> {
        let (enc, dec, latent) = (self.encoder_hidden as u64, self.decoder_hidden as u64, self.latent as u64);
        let mut out = vec![implied("encoder.conv1", &[self.encoder_hidden, 7])];
        let mut width = enc;
        for (i, &stride) in self.downsampling_ratios.iter().enumerate() {
            let wider = width.saturating_mul(2);
            out.push((format!("encoder.block.{i}.conv1"), vec![wider, width, (stride as u64).saturating_mul(2)]));
            out.push((format!("encoder.block.{i} residual convolution"), vec![width, width, 7]));
            width = wider;
        }
        out.push(("encoder.conv2".into(), vec![latent, width, 3]));
        out.push(implied("quantizer projection", &[self.codebook_dim, self.latent]));
        out.push(implied("codebook", &[self.codebook_size, self.codebook_dim]));
        out.push(("decoder.conv1".into(), vec![dec, latent, 7]));
        let mut width = dec;
        for (j, &stride) in self.upsampling_ratios.iter().enumerate() {
            out.push((format!("decoder.block.{j}.conv_t1"), vec![width, width / 2, (stride as u64).saturating_mul(2)]));
            width /= 2;
            out.push((format!("decoder.block.{j} residual convolution"), vec![width, width, 7]));
        }
        out
    }

    /// The 44.1 kHz codec Dia uses (`descript/dac_44khz`).
    pub fn dac_44khz() -> DacConfig {
        DacConfig {
            sample_rate: 44_100,
            encoder_hidden: 64,
            downsampling_ratios: vec![2, 4, 8, 8],
            decoder_hidden: 1536,
            upsampling_ratios: vec![8, 8, 4, 2],
            n_codebooks: 9,
            codebook_size: 1024,
            codebook_dim: 8,
            latent: 1024,
            hop_length: 512,
        }
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    /// A checkpoint directory's config: read and parsed, or an error that names the file and says why.
    #[test]
    fn from_dir_reads_the_config_or_names_the_file() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/tiny/dia");
        let (cfg, text) = DiaConfig::from_dir_with_text(&dir).unwrap();
        assert_eq!(text, std::fs::read_to_string(dir.join("config.json")).unwrap());
        assert_eq!(cfg, DiaConfig::from_json_str(&text).unwrap());

        let missing = dir.join("no-such-dir");
        let err = DiaConfig::from_dir(&missing).unwrap_err();
        assert!(matches!(err.source, ConfigFileProblem::Read(_)), "{err:?}");
        assert!(err.to_string().starts_with(&format!("{}: ", missing.join("config.json").display())), "{err}");

        let bad = std::env::temp_dir().join(format!("dia-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&bad).unwrap();
        std::fs::write(bad.join("config.json"), "{\"hidden_size\": 1}").unwrap();
        let err = DiaConfig::from_dir(&bad).unwrap_err();
        std::fs::remove_dir_all(&bad).unwrap();
        assert!(matches!(err.source, ConfigFileProblem::Config(ConfigError::UnknownSchema)), "{err:?}");
    }
}
