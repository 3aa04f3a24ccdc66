//! Dia weights on the GPU in the internal layout, filled tensor by tensor.
//!
//! Every buffer is allocated once when the builder is made; each checkpoint tensor (HF names and `[out, in]`
//! layout, whatever the source layout was) is converted and written straight into its place, so a
//! checkpoint streams through without ever being held whole in memory, in any order. Fusions happen here:
//! Q/K/V become one matrix, cross-attention K/V one matrix.

use std::collections::BTreeMap;

use crate::config::DiaConfig;
use crate::gpu::{Gpu, GpuBuffer};
use crate::kernels::{kv_cache::KvFormat, rope::rope_tables, GpuMatrix, Numerics, WeightFormat};
use crate::quant::stored::{self, Part};
use crate::weights::{tensor_to_f32, Dtype, WeightsError};

use super::layout::TensorValues;

use super::DiaError;

pub struct EncoderLayer {
    pub pre_sa_norm: GpuBuffer,
    /// Fused [q; k; v] projection: rows (H + 2·Hkv)·hd.
    pub qkv: GpuMatrix,
    pub o: GpuMatrix,
    pub post_sa_norm: GpuBuffer,
    pub gate_up: GpuMatrix,
    pub down: GpuMatrix,
}

pub struct DecoderLayer {
    pub pre_sa_norm: GpuBuffer,
    pub qkv: GpuMatrix,
    pub o: GpuMatrix,
    pub pre_ca_norm: GpuBuffer,
    pub cross_q: GpuMatrix,
    /// Fused [k; v] cross projection from the encoder output: rows 2·Hc_kv·hdc.
    pub cross_kv: GpuMatrix,
    pub cross_o: GpuMatrix,
    pub pre_mlp_norm: GpuBuffer,
    pub gate_up: GpuMatrix,
    pub down: GpuMatrix,
}

/// The whole model on the GPU.
pub struct DiaModel {
    pub cfg: DiaConfig,
    pub numerics: Numerics,
    pub enc_embedding: GpuMatrix,
    pub enc_layers: Vec<EncoderLayer>,
    pub enc_norm: GpuBuffer,
    /// `[C·V, D]`, row c·V + token.
    pub dec_embedding: GpuMatrix,
    pub dec_layers: Vec<DecoderLayer>,
    pub dec_norm: GpuBuffer,
    /// `[C·V, D]`, row c·V + v.
    pub logits: GpuMatrix,
    /// RoPE tables `[max_pos, head_dim/2]` for the encoder and the decoder (and v0.1 cross-attention).
    pub enc_rope: (GpuBuffer, GpuBuffer),
    pub dec_rope: (GpuBuffer, GpuBuffer),
    pub cross_rope: Option<(GpuBuffer, GpuBuffer)>,
    /// How sessions hold the self- and cross-attention K/V caches (`kv_format_for`'s default for the numerics;
    /// may be changed between sessions).
    pub kv_format: KvFormat,
    /// Whether the encoder's working buffers (`ENCODER_WORKSPACE`) stay pooled (`Gpu::reusable_buffer`) for the
    /// next request after a session's encoder pass, or are freed at once (`keeps_encoder_workspace`'s default for
    /// the numerics; may be changed between sessions).
    pub keep_encoder_workspace: bool,
}

/// Whether a model in `numerics` keeps the encoder's working buffers pooled between requests: yes in `F32` and
/// `F16W` (the next request allocates nothing), no in the memory modes `Q8` and `Q4`, where the ~80 MB they take
/// for a 1000-byte text would otherwise stay allocated through the whole generation and its peak (re-allocating
/// them costs a few device allocations per request).
pub fn keeps_encoder_workspace(numerics: Numerics) -> bool {
    !matches!(numerics, Numerics::Q8 | Numerics::Q4)
}

/// The KV-cache format a model in `numerics` uses unless told otherwise: q8 blocks for q4 weights (its memory target
/// needs them: a quarter of f32, and the caches' rounding is far below the weights', see `tests/parity.rs`), f16 for
/// q8 weights (2.26 GB at the peak with them, within q8's target; q8 caches cost its step 23 % on an H100:
/// docs/performance.md), f32 otherwise (f32 keeps exact parity; f16w keeps its measured figures). Heads whose
/// head_dim suits no smaller format stay f32 (q8 needs whole words per head, up to `Q8_MAX_HEAD_DIM`; f16 pairs
/// otherwise).
pub fn kv_format_for(numerics: Numerics, cfg: &DiaConfig) -> KvFormat {
    let fits = |f: KvFormat| f.supports(cfg.decoder.head_dim as u32) && f.supports(cfg.decoder.cross_head_dim as u32);
    match numerics {
        Numerics::Q4 if fits(KvFormat::Q8) => KvFormat::Q8,
        Numerics::Q8 | Numerics::Q4 if fits(KvFormat::F16) => KvFormat::F16,
        _ => KvFormat::F32,
    }
}

/// What a weight matrix does, which decides its storage format in each `Numerics` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatrixRole {
    /// Token embedding tables, looked up a few rows at a time (the decoder's 9 × 1028 × 2048 table: 37.9 MB in f16,
    /// 20.1 MB in q8; the gathers read f32, f16 and both block formats).
    Embedding,
    /// Attention projections applied every step or every encoder layer: self-attention (encoder and decoder, fused
    /// q/k/v) and the decoder's cross-attention query and output.
    Attention,
    /// The decoder's cross-attention key and value projections (fused k/v): applied once per generation, to the
    /// encoder's output.
    CrossKv,
    /// MLP gate/up and down projections.
    Mlp,
    /// The logits head.
    Logits,
}

impl MatrixRole {
    /// The role of a Dia matrix by its HF-layout tensor name; None for a tensor that is no matrix (the norms)
    /// or not Dia's. The builder allocates by this too, so the converter and the loader always agree.
    pub fn of_tensor(hf_name: &str) -> Option<MatrixRole> {
        let name = hf_name.strip_suffix(".weight")?;
        if name == "model.encoder.embedding" || name == "model.decoder.embeddings.embed" {
            Some(MatrixRole::Embedding)
        } else if name == "logits_dense" {
            Some(MatrixRole::Logits)
        } else if name.ends_with(".cross_attention.k_proj") || name.ends_with(".cross_attention.v_proj") {
            Some(MatrixRole::CrossKv)
        } else if name.contains(".self_attention.") || name.contains(".cross_attention.") {
            Some(MatrixRole::Attention)
        } else if name.contains(".mlp.") {
            Some(MatrixRole::Mlp)
        } else {
            None
        }
    }

    /// The storage format of this matrix in `numerics`: the mode's own format, except that `Q8` keeps the embedding
    /// tables in f16 (in q8 they would raise its fixture error by 10–30 %, and q8 meets its memory target without the
    /// 17.8 MB), and `Q4` keeps the attention projections and the embedding tables at q8. Measured in the CPU reference on the fixture model
    /// (`tests/parity.rs`, `parity_q4_formats_cpu`, teacher-forced logits of t0 / t1 / clone against f32):
    /// - attention at q8 halves the error of an all-q4 model (relative error 0.45 → 0.23 on t0, top-1 agreement
    ///   41 → 69 %), while keeping the MLP (0.40) or the logits head (0.43) at higher precision barely helps: Dia's
    ///   attention has no 1/√d scaling of the scores, so errors in q and k reach the softmax unscaled;
    /// - the decoder embedding in q4 would add 0.07–0.14 to the error (top-1 −6 to −9 points), in q8 nothing
    ///   measurable; the cross-attention K/V projections in q4 add 0.02–0.04 (top-1 −2 to −7 points). q4's peak-memory
    ///   target (≤ 1.5 GB, missed by 43 MB with both at q8 and f16) takes both cheaper cuts together: the q8 embedding
    ///   (−17.8 MB for Dia 1.6B) and q4 cross K/V (−37.7 MB); a q4 embedding (−27.2 MB) would err more and save less.
    ///
    /// (Figures above with q4 scales from the largest magnitude; since stop 29 q4 picks the scale that errs least per
    /// group (`quant`): q4's formats 0.24 / 0.28 / 0.27, q4 everywhere 0.55 / 0.65 / 0.60, so attention at q8 still
    /// more than halves the error.)
    pub fn format(self, numerics: Numerics) -> WeightFormat {
        match (self, numerics) {
            (MatrixRole::Embedding, Numerics::Q8) => Numerics::F16W.weight_format(),
            (MatrixRole::Attention | MatrixRole::Embedding, Numerics::Q4) => Numerics::Q8.weight_format(),
            (_, n) => n.weight_format(),
        }
    }
}

/// One GPU buffer of the model, in allocation order: a matrix of `cols` columns made of `parts` (checkpoint
/// tensor suffix, rows) stacked by rows (see `DiaModelBuilder::matrix`), or a norm vector.
enum Planned {
    Matrix { name: String, parts: Vec<(&'static str, usize)>, cols: usize },
    Vector { name: String, len: usize },
}

/// Every buffer the model allocates for `cfg`, in the order `finish` takes them back (GPU-free, so sizes can be
/// known before a device exists).
fn buffer_plan(cfg: &DiaConfig) -> Vec<Planned> {
    let mut plan = Vec::new();
    {
        // Two closures push to one list, in order.
        let plan = std::cell::RefCell::new(&mut plan);
        let m = |name: &str, parts: &[(&'static str, usize)], cols: usize| plan.borrow_mut().push(Planned::Matrix { name: name.to_string(), parts: parts.to_vec(), cols });
        let v = |name: &str, len: usize| plan.borrow_mut().push(Planned::Vector { name: name.to_string(), len });
        let e = &cfg.encoder;
        let d = &cfg.decoder;
        m("model.encoder.embedding.weight", &[("", e.vocab)], e.hidden);
        for i in 0..e.layers {
            let p = format!("model.encoder.layers.{i}.");
            v(&format!("{p}pre_sa_norm.weight"), e.hidden);
            m(
                &format!("{p}self_attention.qkv"),
                &[("q_proj", e.heads * e.head_dim), ("k_proj", e.kv_heads * e.head_dim), ("v_proj", e.kv_heads * e.head_dim)],
                e.hidden,
            );
            m(&format!("{p}self_attention.o_proj.weight"), &[("", e.hidden)], e.heads * e.head_dim);
            v(&format!("{p}post_sa_norm.weight"), e.hidden);
            m(&format!("{p}mlp.gate_up_proj.weight"), &[("", 2 * e.intermediate)], e.hidden);
            m(&format!("{p}mlp.down_proj.weight"), &[("", e.hidden)], e.intermediate);
        }
        v("model.encoder.norm.weight", e.hidden);
        m("model.decoder.embeddings.embed.weight", &[("", d.channels * d.vocab)], d.hidden);
        for i in 0..d.layers {
            let p = format!("model.decoder.layers.{i}.");
            v(&format!("{p}pre_sa_norm.weight"), d.hidden);
            m(
                &format!("{p}self_attention.qkv"),
                &[("q_proj", d.heads * d.head_dim), ("k_proj", d.kv_heads * d.head_dim), ("v_proj", d.kv_heads * d.head_dim)],
                d.hidden,
            );
            m(&format!("{p}self_attention.o_proj.weight"), &[("", d.hidden)], d.heads * d.head_dim);
            v(&format!("{p}pre_ca_norm.weight"), d.hidden);
            m(&format!("{p}cross_attention.q_proj.weight"), &[("", d.cross_heads * d.cross_head_dim)], d.hidden);
            m(
                &format!("{p}cross_attention.kv"),
                &[("k_proj", d.cross_kv_heads * d.cross_head_dim), ("v_proj", d.cross_kv_heads * d.cross_head_dim)],
                d.cross_hidden,
            );
            m(&format!("{p}cross_attention.o_proj.weight"), &[("", d.hidden)], d.cross_heads * d.cross_head_dim);
            v(&format!("{p}pre_mlp_norm.weight"), d.hidden);
            m(&format!("{p}mlp.gate_up_proj.weight"), &[("", 2 * d.intermediate)], d.hidden);
            m(&format!("{p}mlp.down_proj.weight"), &[("", d.hidden)], d.intermediate);
        }
        v("model.decoder.norm.weight", d.hidden);
        m("logits_dense.weight", &[("", d.channels * d.vocab)], d.hidden);
    }
    plan
}

/// Bytes of the model's largest weight matrix stored as `numerics` keeps it: the storage binding a device must
/// allow (for the 1.6B model 134 MB in f32, 67 MB in f16w: the MLP's gate/up matrix; in q8 38 MB and in q4 20 MB:
/// the decoder embedding, f16 in q8 and q8 in q4).
pub fn largest_matrix_bytes(cfg: &DiaConfig, numerics: Numerics) -> u64 {
    buffer_plan(cfg)
        .iter()
        .filter_map(|item| match item {
            Planned::Matrix { name, parts, cols } => {
                let role = MatrixRole::of_tensor(&part_tensors(name, parts)[0])?;
                let rows: usize = parts.iter().map(|p| p.1).sum();
                Some(rows as u64 * role.format(numerics).row_words(*cols as u32) as u64 * 4)
            }
            Planned::Vector { .. } => None,
        })
        .max()
        .unwrap_or(0)
}

/// Bytes of weights one decoder step reads in `numerics`: every decoder layer's self-attention, cross-attention
/// query and output, and MLP matrices, and the logits head, as stored on the GPU. Not the cross-attention K/V
/// projections (applied once per generation, to the encoder's output) nor the embedding tables (a step reads
/// a few rows). A step's time divided into this is the weight bandwidth a generation reaches (dia-bench's
/// "weights per step", the browser benchmark's GB/s).
pub fn step_weight_bytes(cfg: &DiaConfig, numerics: Numerics) -> u64 {
    buffer_plan(cfg)
        .iter()
        .filter_map(|item| match item {
            Planned::Matrix { name, parts, cols } if is_read_every_step(name) => {
                let role = MatrixRole::of_tensor(&part_tensors(name, parts)[0])?;
                let rows: usize = parts.iter().map(|p| p.1).sum();
                Some(rows as u64 * role.format(numerics).row_words(*cols as u32) as u64 * 4)
            }
            _ => None,
        })
        .sum()
}

/// Whether a planned matrix (by its plan name) is read by every decoder step.
fn is_read_every_step(plan_name: &str) -> bool {
    plan_name == "logits_dense.weight" || (plan_name.starts_with("model.decoder.layers.") && !plan_name.ends_with(".cross_attention.kv"))
}

/// The checkpoint tensors a planned matrix is made of: `name` itself for a part with an empty suffix; otherwise
/// `name` ends in a fused pseudo-name (`.qkv`, `.kv`) and the part is `<prefix>.<suffix>.weight`.
fn part_tensors(name: &str, parts: &[(&str, usize)]) -> Vec<String> {
    parts
        .iter()
        .map(|&(suffix, _)| match name.rsplit_once('.') {
            Some((prefix, _)) if !suffix.is_empty() => format!("{prefix}.{suffix}.weight"),
            _ => name.to_string(),
        })
        .collect()
}

/// Where a checkpoint tensor goes: a matrix slot at a row offset, or a norm vector.
#[derive(Clone, Copy)]
enum Slot {
    Matrix { id: usize, row: usize, rows: usize, cols: usize },
    Vector { id: usize, len: usize },
}

/// Receives the checkpoint's tensors one at a time (any order) and places them on the GPU.
pub struct DiaModelBuilder<'g> {
    gpu: &'g Gpu,
    cfg: DiaConfig,
    numerics: Numerics,
    matrices: Vec<GpuMatrix>,
    vectors: Vec<GpuBuffer>,
    slots: BTreeMap<String, Slot>,
    received: BTreeMap<String, ()>,
    /// One half of a quantized matrix (`put_stored`) waiting for the other: matrix name → (shape, bytes).
    pending_halves: BTreeMap<String, (Vec<usize>, Vec<u8>)>,
}

impl<'g> DiaModelBuilder<'g> {
    pub fn new(gpu: &'g Gpu, cfg: &DiaConfig, numerics: Numerics) -> Result<DiaModelBuilder<'g>, DiaError> {
        let mut b = DiaModelBuilder {
            gpu,
            cfg: cfg.clone(),
            numerics,
            matrices: Vec::new(),
            vectors: Vec::new(),
            slots: BTreeMap::new(),
            received: BTreeMap::new(),
            pending_halves: BTreeMap::new(),
        };
        for item in buffer_plan(cfg) {
            match item {
                Planned::Matrix { name, parts, cols } => {
                    let parts: Vec<(&str, usize)> = parts.iter().map(|(s, n)| (*s, *n)).collect();
                    b.matrix(&name, &parts, cols)?;
                }
                Planned::Vector { name, len } => b.vector(&name, len),
            }
        }
        Ok(b)
    }

    /// Allocates one matrix of `cols` columns made of the listed parts stacked by rows. A part with an empty
    /// suffix is the tensor `name` itself; otherwise `name` ends in a fused pseudo-name (`.qkv`, `.kv`) and the
    /// part is the checkpoint tensor `<prefix>.<suffix>.weight`.
    fn matrix(&mut self, name: &str, parts: &[(&str, usize)], cols: usize) -> Result<(), DiaError> {
        let rows: usize = parts.iter().map(|p| p.1).sum();
        let tensors = part_tensors(name, parts);
        let role = MatrixRole::of_tensor(&tensors[0]).ok_or_else(|| DiaError::UnexpectedTensor(tensors[0].clone()))?;
        let id = self.matrices.len();
        self.matrices.push(GpuMatrix::empty(self.gpu, name, rows, cols, role.format(self.numerics))?);
        let mut row = 0;
        for (tensor, &(_, n)) in tensors.into_iter().zip(parts) {
            self.slots.insert(tensor, Slot::Matrix { id, row, rows: n, cols });
            row += n;
        }
        Ok(())
    }

    fn vector(&mut self, name: &str, len: usize) {
        let id = self.vectors.len();
        self.vectors.push(self.gpu.buffer(name, len as u64 * 4));
        self.slots.insert(name.to_string(), Slot::Vector { id, len });
    }

    /// Every tensor the builder expects, with its HF shape.
    pub fn expected(&self) -> Vec<(String, Vec<usize>)> {
        self.slots
            .iter()
            .map(|(n, s)| match *s {
                Slot::Matrix { rows, cols, .. } => (n.clone(), vec![rows, cols]),
                Slot::Vector { len, .. } => (n.clone(), vec![len]),
            })
            .collect()
    }

    /// Names not yet received.
    pub fn missing(&self) -> Vec<String> {
        self.slots.keys().filter(|n| !self.received.contains_key(*n)).cloned().collect()
    }

    /// Places one tensor (HF name, HF layout, row-major f32 `data` of `shape`).
    pub fn put(&mut self, name: &str, shape: &[usize], data: &[f32]) -> Result<(), DiaError> {
        let slot = *self.slots.get(name).ok_or_else(|| DiaError::UnexpectedTensor(name.to_string()))?;
        let expected = match slot {
            Slot::Matrix { rows, cols, .. } => vec![rows, cols],
            Slot::Vector { len, .. } => vec![len],
        };
        if shape != expected.as_slice() || data.len() != expected.iter().product::<usize>() {
            return Err(DiaError::WrongShape { name: name.to_string(), expected, found: shape.to_vec() });
        }
        match slot {
            Slot::Matrix { id, row, rows, .. } => self.matrices[id]
                .write_rows(self.gpu, row, data, rows)
                .map_err(|source| DiaError::Quantization { name: name.to_string(), source })?,
            Slot::Vector { id, .. } => self.gpu.write(&self.vectors[id], data),
        }
        self.received.insert(name.to_string(), ());
        Ok(())
    }

    /// Places one tensor as a checkpoint holds it: numbers (as `put`), or a quantized matrix, written as it is
    /// when the slot has its format (so a converted checkpoint gives bit-identical weights to quantizing on load)
    /// and dequantized into the slot's format otherwise.
    pub fn put_values(&mut self, name: &str, shape: &[usize], values: TensorValues) -> Result<(), DiaError> {
        let q = match values {
            TensorValues::F32(data) => return self.put(name, shape, &data),
            TensorValues::Quant(q) => q,
        };
        match self.slots.get(name).copied() {
            Some(Slot::Matrix { id, row, rows, cols }) if self.matrices[id].format == WeightFormat::Quant(q.format) && shape == [rows, cols] && q.rows == rows && q.cols == cols => {
                self.matrices[id].write_gpu_rows(self.gpu, row, &q.gpu_rows(), rows);
                self.received.insert(name.to_string(), ());
                Ok(())
            }
            _ => self.put(name, shape, &q.dequantize()),
        }
    }

    /// Places one tensor from its stored bytes (`dtype` F32, BF16 or F16), or one half of a quantized matrix
    /// (`<base>.qweight` U32 or `<base>.scales` F16, `quant::stored`): the first half waits for the second, in
    /// either order. For tensors that arrive one at a time without a checkpoint around them (the browser).
    pub fn put_stored(&mut self, name: &str, dtype: Dtype, shape: &[usize], bytes: Vec<u8>) -> Result<(), DiaError> {
        let Some((weight, part)) = stored::split_part(name) else {
            let data = tensor_to_f32(name, dtype, shape, &bytes)?;
            return self.put(name, shape, &data);
        };
        let Some(Slot::Matrix { rows, cols, .. }) = self.slots.get(&weight).copied() else {
            return Err(DiaError::UnexpectedTensor(name.to_string()));
        };
        let want = if part == Part::Values { Dtype::U32 } else { Dtype::F16 };
        if dtype != want {
            return Err(WeightsError::UnsupportedDtype { name: name.to_string(), dtype: format!("{dtype} (must be {want})") }.into());
        }
        let Some((other_shape, other_bytes)) = self.pending_halves.remove(&weight) else {
            self.pending_halves.insert(weight, (shape.to_vec(), bytes));
            return Ok(());
        };
        let ((vshape, vbytes), (sshape, sbytes)) =
            if part == Part::Values { ((shape.to_vec(), bytes), (other_shape, other_bytes)) } else { ((other_shape, other_bytes), (shape.to_vec(), bytes)) };
        let quantized = stored::format_of(&weight, rows, cols, &vshape, &sshape)
            .and_then(|format| stored::from_parts(&weight, format, rows, cols, &vbytes, &sbytes))
            .map_err(|e| WeightsError::QuantizedTensor { name: weight.clone(), reason: e.to_string() })?;
        self.put_values(&weight, &[rows, cols], TensorValues::Quant(quantized))
    }

    /// Fills every tensor from `read(name, shape) -> values` (e.g. a checkpoint reader or random weights).
    pub fn put_all(&mut self, mut read: impl FnMut(&str, &[usize]) -> Result<TensorValues, DiaError>) -> Result<(), DiaError> {
        for (name, shape) in self.expected() {
            let values = read(&name, &shape)?;
            self.put_values(&name, &shape, values)?;
            // Let large uploads drain so staging memory stays bounded while streaming a checkpoint.
            self.gpu.poll_nonblocking();
        }
        Ok(())
    }

    pub fn finish(self) -> Result<DiaModel, DiaError> {
        let missing = self.missing();
        if let Some(first) = missing.first() {
            return Err(DiaError::MissingTensor { name: first.clone(), count: missing.len() });
        }
        let cfg = self.cfg;
        let gpu = self.gpu;
        let mut mats = self.matrices.into_iter();
        let mut vecs = self.vectors.into_iter();
        // Consumed in the order `new` allocated them.
        let mut m = || mats.next().unwrap();
        let mut v = || vecs.next().unwrap();
        let enc_embedding = m();
        let mut enc_layers = Vec::new();
        for _ in 0..cfg.encoder.layers {
            enc_layers.push(EncoderLayer { pre_sa_norm: v(), qkv: m(), o: m(), post_sa_norm: v(), gate_up: m(), down: m() });
        }
        let enc_norm = v();
        let dec_embedding = m();
        let mut dec_layers = Vec::new();
        for _ in 0..cfg.decoder.layers {
            dec_layers.push(DecoderLayer {
                pre_sa_norm: v(),
                qkv: m(),
                o: m(),
                pre_ca_norm: v(),
                cross_q: m(),
                cross_kv: m(),
                cross_o: m(),
                pre_mlp_norm: v(),
                gate_up: m(),
                down: m(),
            });
        }
        let dec_norm = v();
        let logits = m();
        let tables = |max_pos: usize, hd: usize, theta: f32| {
            let (c, s) = rope_tables(max_pos, hd, theta);
            (gpu.upload("rope_cos", &c), gpu.upload("rope_sin", &s))
        };
        let e = &cfg.encoder;
        let d = &cfg.decoder;
        let enc_rope = tables(e.max_positions, e.head_dim, e.rope_theta);
        let dec_rope = tables(d.max_positions, d.head_dim, d.rope_theta);
        // v0.1 cross-attention rotates queries at decoder positions and keys at encoder positions.
        let cross_rope = cfg
            .cross_attention_rope
            .then(|| tables(d.max_positions.max(e.max_positions), d.cross_head_dim, d.rope_theta));
        Ok(DiaModel {
            kv_format: kv_format_for(self.numerics, &cfg),
            keep_encoder_workspace: keeps_encoder_workspace(self.numerics),
            numerics: self.numerics,
            enc_embedding,
            enc_layers,
            enc_norm,
            dec_embedding,
            dec_layers,
            dec_norm,
            logits,
            enc_rope,
            dec_rope,
            cross_rope,
            cfg,
        })
    }
}

impl DiaModel {
    /// A model with random weights (tests, and runs without a checkpoint). Deterministic in `seed`; see
    /// `random::dia_model` for how the values are drawn.
    pub fn random(gpu: &Gpu, cfg: &DiaConfig, numerics: Numerics, seed: u64) -> Result<DiaModel, DiaError> {
        crate::random::dia_model(gpu, cfg, numerics, &mut crate::random::Rng::new(seed), false)
    }
}
