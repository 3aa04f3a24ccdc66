//! Dia's tensor names and shapes in the HF layout (the internal one: `nn.Linear` `[out, in]`, docs/model.md §2.3)
//! and how each is materialised from a nari-layout checkpoint (Flax-style kernels, input dims first, §2.2/§2.4).

use std::collections::{BTreeSet, HashMap};

use crate::config::DiaConfig;
use crate::quant::{stored, QuantFormat, QuantizedRows};
use crate::weights::{Checkpoint, Dtype, WeightsError};

/// One Dia tensor's values as the checkpoint holds them: numbers (from F32, BF16 or F16), or a quantized matrix
/// (a converted checkpoint, `quant::stored`), which is handed on as is so that nothing is rounded twice.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorValues {
    F32(Vec<f32>),
    Quant(QuantizedRows),
}

impl TensorValues {
    /// The values as f32 (a quantized matrix dequantized).
    pub fn into_f32(self) -> Vec<f32> {
        match self {
            TensorValues::F32(v) => v,
            TensorValues::Quant(q) => q.dequantize(),
        }
    }
}

/// Tensor naming and orientation of a Dia checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiaLayout {
    /// transformers `DiaForConditionalGeneration` (`model.…`, `[out, in]`).
    Hf,
    /// nari `DiaModel` state dict (`encoder.…`, DenseGeneral kernels `[in…, out…]`).
    Nari,
}

impl DiaLayout {
    /// Tells the layouts apart by their encoder embedding's name (a converted q8/q4 checkpoint holds it quantized,
    /// as `….qweight` and `….scales`; only the HF layout is ever written so).
    pub fn detect(ckpt: &Checkpoint) -> Result<DiaLayout, WeightsError> {
        if ckpt.contains("model.encoder.embedding.weight") || ckpt.contains(&format!("model.encoder.embedding{}", crate::quant::stored::VALUES)) {
            Ok(DiaLayout::Hf)
        } else if ckpt.contains("encoder.embedding.weight") {
            Ok(DiaLayout::Nari)
        } else {
            Err(WeightsError::UnknownLayout)
        }
    }
}

/// Where an HF tensor comes from in a nari checkpoint.
#[derive(Debug, Clone)]
enum NariSource {
    /// Same data and shape (norms, encoder embedding).
    Copy { name: String },
    /// A DenseGeneral kernel whose first `n_in` dims are inputs: HF = reshape(W, [∏in, ∏out])ᵀ.
    Dense { name: String, shape: Vec<usize>, n_in: usize },
    /// Tables stacked along dim 0, in order (the per-channel decoder embeddings).
    Concat { names: Vec<String>, shape: Vec<usize> },
}

#[derive(Debug, Clone)]
struct Entry {
    hf_name: String,
    hf_shape: Vec<usize>,
    nari: NariSource,
}

/// Widths of one attention block. The output projection returns to `hidden`, the width queries come from.
struct AttentionShape {
    hidden: usize,
    kv_in: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

/// Builds the tensor list in checkpoint order.
#[derive(Default)]
struct PlanBuilder(Vec<Entry>);

impl PlanBuilder {
    /// A tensor stored identically in both layouts (nari name = HF name without `model.`).
    fn copy(&mut self, nari: String, shape: Vec<usize>) {
        self.0.push(Entry { hf_name: format!("model.{nari}"), hf_shape: shape, nari: NariSource::Copy { name: nari } });
    }

    /// A kernel stored as `nari_shape` = input dims ++ output dims (first `n_in` are inputs); HF [∏out, ∏in].
    fn dense(&mut self, hf_name: String, nari: String, nari_shape: Vec<usize>, n_in: usize) {
        let rows: usize = nari_shape[n_in..].iter().product();
        let cols: usize = nari_shape[..n_in].iter().product();
        let nari = NariSource::Dense { name: nari, shape: nari_shape, n_in };
        self.0.push(Entry { hf_name, hf_shape: vec![rows, cols], nari });
    }

    /// q/k/v: nari [in, heads, hd] → HF [heads·hd, in]; o: nari [heads, hd, hidden] → HF [hidden, heads·hd].
    fn attention(&mut self, prefix: &str, a: AttentionShape) {
        for (proj, input, heads) in
            [("q_proj", a.hidden, a.heads), ("k_proj", a.kv_in, a.kv_heads), ("v_proj", a.kv_in, a.kv_heads)]
        {
            let nari = format!("{prefix}.{proj}.weight");
            self.dense(format!("model.{nari}"), nari, vec![input, heads, a.head_dim], 1);
        }
        let nari = format!("{prefix}.o_proj.weight");
        self.dense(format!("model.{nari}"), nari, vec![a.heads, a.head_dim, a.hidden], 2);
    }

    /// `wi_fused` [hidden, 2, I] → `gate_up_proj` [2I, hidden] (gate rows first); `wo` [I, hidden] → `down_proj`.
    fn mlp(&mut self, prefix: &str, hidden: usize, inter: usize) {
        let (hf, nari) = (format!("model.{prefix}"), prefix);
        self.dense(format!("{hf}.gate_up_proj.weight"), format!("{nari}.wi_fused.weight"), vec![hidden, 2, inter], 1);
        self.dense(format!("{hf}.down_proj.weight"), format!("{nari}.wo.weight"), vec![inter, hidden], 1);
    }
}

/// Every Dia tensor with its HF shape and nari source, derived from the config alone. Projection widths are
/// heads × head_dim, never the hidden size.
fn plan(cfg: &DiaConfig) -> Vec<Entry> {
    let (e, d) = (&cfg.encoder, &cfg.decoder);
    let mut plan = PlanBuilder::default();

    plan.copy("encoder.embedding.weight".into(), vec![e.vocab, e.hidden]);
    for l in 0..e.layers {
        let p = format!("encoder.layers.{l}");
        plan.copy(format!("{p}.pre_sa_norm.weight"), vec![e.hidden]);
        let shape = AttentionShape {
            hidden: e.hidden,
            kv_in: e.hidden,
            heads: e.heads,
            kv_heads: e.kv_heads,
            head_dim: e.head_dim,
        };
        plan.attention(&format!("{p}.self_attention"), shape);
        plan.copy(format!("{p}.post_sa_norm.weight"), vec![e.hidden]);
        plan.mlp(&format!("{p}.mlp"), e.hidden, e.intermediate);
    }
    plan.copy("encoder.norm.weight".into(), vec![e.hidden]);

    plan.0.push(Entry {
        hf_name: "model.decoder.embeddings.embed.weight".into(),
        hf_shape: vec![d.channels * d.vocab, d.hidden],
        nari: NariSource::Concat {
            names: (0..d.channels).map(|c| format!("decoder.embeddings.{c}.weight")).collect(),
            shape: vec![d.vocab, d.hidden],
        },
    });
    for l in 0..d.layers {
        let p = format!("decoder.layers.{l}");
        let self_shape = AttentionShape {
            hidden: d.hidden,
            kv_in: d.hidden,
            heads: d.heads,
            kv_heads: d.kv_heads,
            head_dim: d.head_dim,
        };
        plan.attention(&format!("{p}.self_attention"), self_shape);
        let cross_shape = AttentionShape {
            hidden: d.hidden,
            kv_in: d.cross_hidden,
            heads: d.cross_heads,
            kv_heads: d.cross_kv_heads,
            head_dim: d.cross_head_dim,
        };
        plan.attention(&format!("{p}.cross_attention"), cross_shape);
        for norm in ["pre_sa_norm", "pre_ca_norm", "pre_mlp_norm"] {
            plan.copy(format!("{p}.{norm}.weight"), vec![d.hidden]);
        }
        plan.mlp(&format!("{p}.mlp"), d.hidden, d.intermediate);
    }
    plan.copy("decoder.norm.weight".into(), vec![d.hidden]);
    plan.dense(
        "logits_dense.weight".into(),
        "decoder.logits_dense.weight".into(),
        vec![d.hidden, d.channels, d.vocab],
        1,
    );
    plan.0
}

/// Every tensor of the HF layout with the shape the config implies (docs/model.md §2.3).
pub fn expected_hf_tensors(cfg: &DiaConfig) -> Vec<(String, Vec<usize>)> {
    plan(cfg).into_iter().map(|e| (e.hf_name, e.hf_shape)).collect()
}

/// Reads Dia tensors in the HF layout from a checkpoint of either layout.
pub struct DiaWeights<'a> {
    ckpt: &'a Checkpoint,
    cfg: &'a DiaConfig,
    layout: DiaLayout,
    plan: Vec<Entry>,
    by_hf_name: HashMap<String, usize>,
}

impl<'a> DiaWeights<'a> {
    /// Detects the layout; reads nothing. Call `validate` before the first `read`.
    pub fn new(ckpt: &'a Checkpoint, cfg: &'a DiaConfig) -> Result<DiaWeights<'a>, WeightsError> {
        let layout = DiaLayout::detect(ckpt)?;
        let plan = plan(cfg);
        let by_hf_name = plan.iter().enumerate().map(|(i, e)| (e.hf_name.clone(), i)).collect();
        Ok(DiaWeights { ckpt, cfg, layout, plan, by_hf_name })
    }

    pub fn layout(&self) -> DiaLayout {
        self.layout
    }

    pub fn config(&self) -> &'a DiaConfig {
        self.cfg
    }

    pub fn checkpoint(&self) -> &'a Checkpoint {
        self.ckpt
    }

    /// The HF-layout shape `read(hf_name)` returns, if `hf_name` is a Dia tensor.
    pub fn hf_shape(&self, hf_name: &str) -> Option<&[usize]> {
        self.by_hf_name.get(hf_name).map(|&i| self.plan[i].hf_shape.as_slice())
    }

    /// The stored tensors (name, shape in this layout) that make up one HF tensor.
    fn sources(&self, entry: &Entry) -> Vec<(String, Vec<usize>)> {
        match (self.layout, &entry.nari) {
            (DiaLayout::Hf, _) => vec![(entry.hf_name.clone(), entry.hf_shape.clone())],
            (DiaLayout::Nari, NariSource::Copy { name }) => vec![(name.clone(), entry.hf_shape.clone())],
            (DiaLayout::Nari, NariSource::Dense { name, shape, .. }) => vec![(name.clone(), shape.clone())],
            (DiaLayout::Nari, NariSource::Concat { names, shape }) => {
                names.iter().map(|n| (n.clone(), shape.clone())).collect()
            }
        }
    }

    /// Presence, shape and a readable dtype of one stored tensor (header only).
    fn check_source(&self, name: &str, shape: &[usize]) -> Result<(), WeightsError> {
        let info = self.ckpt.info(name).ok_or_else(|| WeightsError::MissingTensor { name: name.to_string() })?;
        if info.shape != shape {
            return Err(WeightsError::WrongShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                found: info.shape.clone(),
            });
        }
        if !info.dtype.is_float_readable() {
            return Err(WeightsError::UnsupportedDtype { name: name.to_string(), dtype: info.dtype.to_string() });
        }
        Ok(())
    }

    /// The format of `entry` when the checkpoint stores it quantized (HF layout only: `<base>.qweight` and
    /// `<base>.scales` instead of `<base>.weight`), after checking both halves' presence, dtypes and shapes.
    fn quantized_format(&self, entry: &Entry) -> Result<Option<QuantFormat>, WeightsError> {
        let Some((values, scales)) = stored::part_names(&entry.hf_name) else { return Ok(None) };
        if self.layout != DiaLayout::Hf || entry.hf_shape.len() != 2 || !(self.ckpt.contains(&values) || self.ckpt.contains(&scales)) {
            return Ok(None);
        }
        let info = |name: &str, dtype: Dtype| {
            let info = self.ckpt.info(name).ok_or_else(|| WeightsError::MissingTensor { name: name.to_string() })?;
            if info.dtype != dtype {
                return Err(WeightsError::UnsupportedDtype { name: name.to_string(), dtype: format!("{} (a quantized matrix's {} must be {dtype})", info.dtype, if dtype == Dtype::U32 { "values" } else { "scales" }) });
            }
            Ok(info)
        };
        let (vi, si) = (info(&values, Dtype::U32)?, info(&scales, Dtype::F16)?);
        let (rows, cols) = (entry.hf_shape[0], entry.hf_shape[1]);
        stored::format_of(&entry.hf_name, rows, cols, &vi.shape, &si.shape)
            .map(Some)
            .map_err(|e| WeightsError::QuantizedTensor { name: entry.hf_name.clone(), reason: e.to_string() })
    }

    /// Checks, from the headers alone, that the checkpoint holds exactly the tensors this config needs in
    /// this layout: each present, of the expected shape and a readable dtype (or a well-formed quantized pair),
    /// and nothing else.
    pub fn validate(&self) -> Result<(), WeightsError> {
        let mut expected = BTreeSet::new();
        for entry in &self.plan {
            if self.quantized_format(entry)?.is_some() {
                let (values, scales) = stored::part_names(&entry.hf_name).expect("checked by quantized_format");
                expected.extend([values, scales]);
                continue;
            }
            for (name, shape) in self.sources(entry) {
                self.check_source(&name, &shape)?;
                expected.insert(name);
            }
        }
        let extra: Vec<String> = self.ckpt.names().filter(|n| !expected.contains(*n)).map(str::to_string).collect();
        if !extra.is_empty() {
            return Err(WeightsError::UnexpectedTensors { names: extra });
        }
        Ok(())
    }

    /// One tensor in the HF layout (row-major, shape `hf_shape(hf_name)`), converted to f32 (a quantized matrix
    /// dequantized). Checks the stored shapes before reading any data.
    pub fn read(&self, hf_name: &str) -> Result<Vec<f32>, WeightsError> {
        Ok(self.read_values(hf_name)?.into_f32())
    }

    /// Whether the checkpoint stores any matrix quantized (a converted checkpoint), and in which formats.
    pub fn quantized_formats(&self) -> Result<BTreeSet<&'static str>, WeightsError> {
        let mut formats = BTreeSet::new();
        for entry in &self.plan {
            if let Some(f) = self.quantized_format(entry)? {
                formats.insert(f.name());
            }
        }
        Ok(formats)
    }

    /// One tensor in the HF layout as stored: numbers converted to f32, or a quantized matrix as it is.
    pub fn read_values(&self, hf_name: &str) -> Result<TensorValues, WeightsError> {
        let entry = self
            .by_hf_name
            .get(hf_name)
            .map(|&i| &self.plan[i])
            .ok_or_else(|| WeightsError::UnknownTensor { name: hf_name.to_string() })?;
        if let Some(format) = self.quantized_format(entry)? {
            let (values, scales) = stored::part_names(hf_name).expect("checked by quantized_format");
            let (rows, cols) = (entry.hf_shape[0], entry.hf_shape[1]);
            return stored::from_parts(hf_name, format, rows, cols, &self.ckpt.read_bytes(&values)?, &self.ckpt.read_bytes(&scales)?)
                .map(TensorValues::Quant)
                .map_err(|e| WeightsError::QuantizedTensor { name: hf_name.to_string(), reason: e.to_string() });
        }
        let sources = self.sources(entry);
        for (name, shape) in &sources {
            self.check_source(name, shape)?;
        }
        let values = match (self.layout, &entry.nari) {
            (DiaLayout::Hf, _) | (DiaLayout::Nari, NariSource::Copy { .. }) => self.ckpt.read_f32(&sources[0].0)?,
            (DiaLayout::Nari, NariSource::Dense { name, shape, n_in }) => {
                let rows: usize = shape[..*n_in].iter().product();
                let cols: usize = shape[*n_in..].iter().product();
                transpose(&self.ckpt.read_f32(name)?, rows, cols)
            }
            (DiaLayout::Nari, NariSource::Concat { names, .. }) => {
                let mut out = Vec::with_capacity(entry.hf_shape.iter().product());
                for name in names {
                    out.extend_from_slice(&self.ckpt.read_f32(name)?);
                }
                out
            }
        };
        Ok(TensorValues::F32(values))
    }
}

/// `[rows, cols]` row-major → `[cols, rows]` row-major, in cache-sized tiles.
fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    debug_assert_eq!(src.len(), rows * cols);
    let mut dst = vec![0f32; src.len()];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    dst[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
    dst
}
