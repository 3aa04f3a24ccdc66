//! The forward passes as pre-built dispatch lists: the encoder (run once per request) and decoder graphs
//! (built once per session, recorded every step). Row layout of the decoder: R = 2·B rows, conditional
//! rows 0..B and unconditional rows B..2B (HF's CFG order); a pass over T tokens per row has M = R·T rows,
//! row m = r·T + t.

use crate::config::EncoderConfig;
use crate::gpu::{Dispatch, Gpu, GpuBuffer};
use crate::kernels::attention::{attention_decode, attention_decode_appending, attention_decode_appending_partial, attention_prefill, can_append_in_decode, AttentionArgs};
use crate::kernels::cross_tables::{cross_out, cross_scores, plan_cross_tables, CrossShape, CrossTableSet};
use crate::kernels::embed::{embed_channels_sum, embed_tokens};
use crate::kernels::kv_cache::{pack_kv, rope_kv_write, KvFormat};
use crate::kernels::linear::{linear_attention_o, linear_rows, norm_linear, norm_linear_schedule, schedule as linear_schedule, LinearEpilogue, Schedule, ATTENTION_O_SHAPE};
use crate::kernels::norm::rmsnorm;
use crate::kernels::rope::rope;

use super::model::DiaModel;

const F32: u64 = 4;

/// Text rows packed one after another: the encoder runs on real lengths only (no padding to 1024).
/// Segment b = item b's bytes; the last segment is the unconditional row, a single byte-0 token: every
/// position of an all-zero row gets the same encoder output, so one position is exactly equivalent (spec §3.2).
pub struct PackedText {
    pub tokens: Vec<u32>,
    /// (offset, length) per segment.
    pub segments: Vec<(u32, u32)>,
    /// Tokens the encoder's working buffers are sized for at least (`with_capacity`).
    pub capacity: usize,
}

impl PackedText {
    pub fn new(items: &[Vec<u32>]) -> PackedText {
        let mut tokens = Vec::new();
        let mut segments = Vec::new();
        for it in items {
            segments.push((tokens.len() as u32, it.len() as u32));
            tokens.extend_from_slice(it);
        }
        segments.push((tokens.len() as u32, 1));
        tokens.push(0);
        PackedText { tokens, segments, capacity: 0 }
    }

    /// The same text with the encoder's buffers sized for at least `tokens` tokens: requests made with one
    /// capacity share the kept buffers whatever their lengths (long-form segments keep GPU memory flat).
    pub fn with_capacity(mut self, tokens: usize) -> PackedText {
        self.capacity = tokens;
        self
    }

    /// (segment, position) per token.
    fn qinfo(&self) -> Vec<u32> {
        let mut q = Vec::with_capacity(self.tokens.len() * 2);
        for (s, &(_, len)) in self.segments.iter().enumerate() {
            for p in 0..len {
                q.extend_from_slice(&[s as u32, p]);
            }
        }
        q
    }

    fn seqs(&self) -> Vec<u32> {
        self.segments.iter().flat_map(|&(o, l)| [o, l]).collect()
    }
}

/// Encoder output and the cross-attention K/V of every decoder layer for one request.
pub struct EncoderState {
    pub text: PackedText,
    /// `[tokens, enc_hidden]`.
    pub enc_out: GpuBuffer,
    /// Per decoder layer: `[tokens, 2·Hc_kv·hdc]` = [k | v], held in `cross_format`.
    pub cross_kv: Vec<GpuBuffer>,
    pub cross_format: KvFormat,
    /// (offset, length) per segment, u32 pairs, for cross-attention.
    pub seqs: GpuBuffer,
    /// Per decoder layer, the cross-attention's query and output projections folded into tables of this text
    /// (`kernels::cross_tables`): made when `Gpu::cross_tables` is on and the route applies; decoder steps then use
    /// them in place of the projections and the attention.
    pub cross_tables: Option<CrossTableSet>,
}

/// The labels of the encoder's working buffers (`Gpu::reusable_buffer`): needed during its pass only (`enc_out` until
/// the cross K/V are projected, which is within the pass too).
pub const ENCODER_WORKSPACE: [&str; 6] = ["enc_x", "enc_h", "enc_qkv", "enc_attn", "enc_mlp", "enc_out"];

/// The encoder's self-attention over `rows` packed tokens: queries, keys and values side by side in the fused
/// projection `qkv` (`[rows, (heads + 2·kv_heads)·head_dim]`, RoPE applied), f32, every key visible within its
/// segment (`qinfo`, `seqs` as `PackedText` makes them); output `[rows, heads·head_dim]`.
pub fn encoder_attention<'a>(e: &EncoderConfig, qkv: &'a GpuBuffer, qinfo: &'a GpuBuffer, seqs: &'a GpuBuffer, out: &'a GpuBuffer, rows: u32) -> AttentionArgs<'a> {
    let (hd, qkv_w) = (e.head_dim as u32, ((e.heads + 2 * e.kv_heads) * e.head_dim) as u32);
    AttentionArgs {
        q_buf: qkv,
        q_stride: qkv_w,
        q_col: 0,
        k_buf: qkv,
        v_buf: qkv,
        kv_stride: qkv_w,
        k_col: e.heads as u32 * hd,
        v_col: (e.heads + e.kv_heads) as u32 * hd,
        qinfo,
        seqs,
        out,
        rows,
        heads: e.heads as u32,
        kv_heads: e.kv_heads as u32,
        head_dim: hd,
        causal: false,
        max_keys: rows,
        kv_format: KvFormat::F32,
    }
}

impl DiaModel {
    /// Runs the encoder over the packed text and projects the cross-attention K/V of every layer (once). Unless the
    /// model keeps them (`keep_encoder_workspace`), the working buffers no one holds any more are freed after.
    pub fn encode(&self, gpu: &Gpu, text: PackedText) -> EncoderState {
        let (ds, state) = self.encoder_graph(gpu, text);
        gpu.run(&ds.iter().collect::<Vec<_>>());
        drop(ds);
        self.release_encoder_workspace(gpu);
        state
    }

    /// Frees the idle pooled encoder working buffers unless the model keeps them (`keep_encoder_workspace`). The
    /// memory itself goes once the GPU has finished with it (wgpu holds it while queued work uses it).
    pub fn release_encoder_workspace(&self, gpu: &Gpu) {
        if !self.keep_encoder_workspace {
            gpu.release_reusable_labels(&ENCODER_WORKSPACE);
        }
    }

    /// The encoder's dispatches (not submitted) and the state they fill: `encode` without the submission, for
    /// profiling (the dispatches can be replayed).
    pub fn encoder_graph(&self, gpu: &Gpu, text: PackedText) -> (Vec<Dispatch>, EncoderState) {
        let e = &self.cfg.encoder;
        let d = &self.cfg.decoder;
        let n = text.tokens.len() as u32;
        let qkv_w = (e.heads + 2 * e.kv_heads) * e.head_dim;
        let tokens = gpu.upload("enc_tokens", &text.tokens);
        let qinfo = gpu.upload("enc_qinfo", &text.qinfo());
        let seqs = gpu.upload("enc_seqs", &text.seqs());
        // Sized in steps of 256 tokens so that texts of similar lengths share the kept buffers.
        let cap = (n as u64).max(text.capacity as u64).next_multiple_of(256);
        let x = gpu.reusable_buffer("enc_x", cap * e.hidden as u64 * F32);
        let h = gpu.reusable_buffer("enc_h", cap * e.hidden as u64 * F32);
        let qkv = gpu.reusable_buffer("enc_qkv", cap * qkv_w as u64 * F32);
        let attn = gpu.reusable_buffer("enc_attn", cap * (e.heads * e.head_dim) as u64 * F32);
        // The MLP's activations, and after the last layer the f32 staging of the f16 / q8 cross K/V (never both at once).
        let kv_w = (2 * d.cross_kv_heads * d.cross_head_dim) as u32;
        let format = self.kv_format;
        let staged_kv = if format == KvFormat::F32 { 0 } else { kv_w as usize };
        let mlp = gpu.reusable_buffer("enc_mlp", cap * e.intermediate.max(staged_kv) as u64 * F32);
        let enc_out = gpu.reusable_buffer("enc_out", cap * e.hidden as u64 * F32);
        let (cos, sin) = (&self.enc_rope.0, &self.enc_rope.1);
        // The activations and the cross K/V come from `reusable_buffer` (no device allocation per request): each
        // is written in full by its producer before anything reads it.

        let mut ds: Vec<Dispatch> = vec![embed_tokens(gpu, &self.enc_embedding, &tokens, &x, n)];
        for l in &self.enc_layers {
            ds.push(rmsnorm(gpu, &x, &l.pre_sa_norm, &h, n, e.hidden as u32, e.norm_eps));
            ds.extend(linear_rows(gpu, &h, &l.qkv, &qkv, n, LinearEpilogue::Store));
            // Q and K heads are adjacent in the fused projection: one rotation covers both.
            ds.push(rope(gpu, &qkv, cos, sin, &qinfo, n, qkv_w as u32, 0, (e.heads + e.kv_heads) as u32, e.head_dim as u32));
            ds.extend(attention_prefill(gpu, &encoder_attention(e, &qkv, &qinfo, &seqs, &attn, n)));
            ds.extend(linear_rows(gpu, &attn, &l.o, &x, n, LinearEpilogue::Accumulate));
            ds.push(rmsnorm(gpu, &x, &l.post_sa_norm, &h, n, e.hidden as u32, e.norm_eps));
            ds.extend(linear_rows(gpu, &h, &l.gate_up, &mlp, n, LinearEpilogue::SwiGlu));
            ds.extend(linear_rows(gpu, &mlp, &l.down, &x, n, LinearEpilogue::Accumulate));
        }
        ds.push(rmsnorm(gpu, &x, &self.enc_norm, &enc_out, n, e.hidden as u32, e.norm_eps));

        let cross_kv: Vec<GpuBuffer> = (0..d.layers).map(|l| gpu.reusable_buffer(&format!("cross_kv.{l}"), format.bytes(cap * kv_w as u64, d.cross_head_dim as u32))).collect();
        // f16 and q8 caches: each layer's K/V is projected in f32 into the MLP's buffer, then packed into its cache.
        let staging = (format != KvFormat::F32).then(|| mlp.clone());
        for (l, kv) in self.dec_layers.iter().zip(&cross_kv) {
            let projected = staging.as_ref().unwrap_or(kv);
            ds.extend(linear_rows(gpu, &enc_out, &l.cross_kv, projected, n, LinearEpilogue::Store));
            if let Some((c, s)) = &self.cross_rope {
                // v0.1 only: keys rotated at their encoder positions.
                ds.push(rope(gpu, projected, c, s, &qinfo, n, kv_w, 0, d.cross_kv_heads as u32, d.cross_head_dim as u32));
            }
            if staging.is_some() {
                ds.push(pack_kv(gpu, projected, kv, n * kv_w, d.cross_head_dim as u32, format));
            }
        }
        let cross_tables = self.cross_tables_graph(gpu, &text, &cross_kv, &mut ds);
        (ds, EncoderState { text, enc_out, cross_kv, cross_format: format, seqs, cross_tables })
    }

    /// The per-layer cross-attention tables of this text (dispatches appended to `ds`, after the cross K/V they read),
    /// where the route applies: no cross RoPE (a rotated query cannot be folded), and what `plan_cross_tables` accepts
    /// (f32 / f16 projections, segments of at most 128 keys). By default (`Gpu::cross_tables` None) only where the
    /// tables hold no more bytes than the W_q and W_o they replace, as a step reads all of them: one text of up to
    /// ≈ 127 bytes on Dia, not a batch (each text has its own tables).
    fn cross_tables_graph(&self, gpu: &Gpu, text: &PackedText, cross_kv: &[GpuBuffer], ds: &mut Vec<Dispatch>) -> Option<CrossTableSet> {
        let d = &self.cfg.decoder;
        let forced = gpu.cross_tables();
        if forced == Some(false) || self.cross_rope.is_some() {
            return None;
        }
        let shape = CrossShape {
            hidden: d.hidden as u32,
            heads: d.cross_heads as u32,
            kv_heads: d.cross_kv_heads as u32,
            head_dim: d.cross_head_dim as u32,
            kv_format: self.kv_format,
        };
        let first = self.dec_layers.first()?;
        let plan = plan_cross_tables(gpu, shape, &text.segments, &first.cross_q, &first.cross_o)?;
        if forced.is_none() && plan.query_bytes() + plan.output_bytes() > first.cross_q.data.size + first.cross_o.data.size {
            return None;
        }
        // Every layer's projections in the formats of the first (the plan's).
        if self.dec_layers.iter().any(|l| l.cross_q.format != plan.query_format || l.cross_o.format != plan.output_format) {
            return None;
        }
        let mut layers = Vec::with_capacity(self.dec_layers.len());
        for (li, (l, kv)) in self.dec_layers.iter().zip(cross_kv).enumerate() {
            let (built, tables) = plan.build(gpu, &format!("cross_tables.{li}"), kv, &l.cross_q, &l.cross_o);
            ds.extend(built);
            layers.push(tables);
        }
        Some(CrossTableSet { plan, layers })
    }
}

impl DiaModel {
    /// The logits head: writes `[rows, C·V]` f32 (row c·V + v).
    /// `x` is the decoder's residual stream `[rows, D]`; the final norm is fused into the head where the policy picks the
    /// matrix–vector kernel (`norm_linear`).
    pub fn logits_head(&self, gpu: &Gpu, x: &GpuBuffer, rows: u32) -> (Vec<Dispatch>, GpuBuffer) {
        let d = &self.cfg.decoder;
        let out = gpu.buffer("logits", rows as u64 * (d.channels * d.vocab) as u64 * F32);
        // The norm runs on its own (into `scratch`) wherever the policy does not pick the matrix–vector kernel:
        // above `SMALL_M_MAX`, and on tensor cores from `coop_m_min` rows.
        let fused = norm_linear_schedule(gpu, x, &self.logits, &out, rows, LinearEpilogue::Store) == Schedule::SmallM;
        let scratch = gpu.buffer("logits.normed", if fused { 4 } else { rows as u64 * d.hidden as u64 * F32 });
        let ds = norm_linear(gpu, x, &self.dec_norm, d.norm_eps, &self.logits, &out, rows, LinearEpilogue::Store, &scratch);
        (ds, out)
    }
}

/// Self-attention KV caches of one session: per layer K and V, `[R, max_len, Hkv·hd]`.
pub struct KvCache {
    pub k: Vec<GpuBuffer>,
    pub v: Vec<GpuBuffer>,
    pub format: KvFormat,
    pub max_len: u32,
    pub rows: u32,
}

impl KvCache {
    pub fn new(gpu: &Gpu, model: &DiaModel, rows: u32, max_len: u32) -> KvCache {
        Self::with_capacity(gpu, model, rows, max_len, 0)
    }

    /// `new` with buffers sized for at least `capacity` positions: sessions made with one capacity share the
    /// kept buffers whatever their lengths.
    pub fn with_capacity(gpu: &Gpu, model: &DiaModel, rows: u32, max_len: u32, capacity: u32) -> KvCache {
        let d = &model.cfg.decoder;
        // Sized in steps of 512 positions so that generations of similar lengths share the kept buffers.
        let format = model.kv_format;
        let bytes = format.bytes(rows as u64 * max_len.max(capacity).next_multiple_of(512) as u64 * (d.kv_heads * d.head_dim) as u64, d.head_dim as u32);
        KvCache {
            format,
            // Kept for the next session: every position is written (prefill or step) before attention reads it.
            k: (0..d.layers).map(|l| gpu.reusable_buffer(&format!("kv_k.{l}"), bytes)).collect(),
            v: (0..d.layers).map(|l| gpu.reusable_buffer(&format!("kv_v.{l}"), bytes)).collect(),
            max_len,
            rows,
        }
    }
}

/// What a dispatch of the decoder graph does (for profiling parts of a step alone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepPart {
    Embedding,
    /// Projections, with their fused norms and epilogues.
    Linear,
    /// RoPE + KV-cache write when it is not folded into the attention.
    RopeKv,
    SelfAttention,
    CrossAttention,
}

/// One decoder pass over T tokens for each of R rows, prepared once and recordable any number of times.
pub struct DecoderGraph {
    pub t: u32,
    pub rows: u32,
    /// u32 `[B·T, C]` input tokens (both CFG rows of an item share one token row).
    pub tokens: GpuBuffer,
    /// u32 `[M, 2]` (row, position) for self-attention and RoPE; positions rewritten per step.
    pub qinfo: GpuBuffer,
    /// The residual stream after the last layer `[M, D]` (the logits head applies the final norm).
    pub x: GpuBuffer,
    body: Vec<(StepPart, Dispatch)>,
    _keep: Vec<GpuBuffer>,
}

impl DecoderGraph {
    /// `batch` items (R = 2·batch rows), `t` tokens per row.
    pub fn new(gpu: &Gpu, model: &DiaModel, enc: &EncoderState, cache: &KvCache, batch: u32, t: u32) -> DecoderGraph {
        let d = &model.cfg.decoder;
        let rows = 2 * batch;
        let m = rows * t;
        let hidden = d.hidden as u32;
        let hd = d.head_dim as u32;
        let qkv_w = ((d.heads + 2 * d.kv_heads) * d.head_dim) as u32;
        let cq_w = (d.cross_heads * d.cross_head_dim) as u32;
        let ckv_w = (2 * d.cross_kv_heads * d.cross_head_dim) as u32;
        let buf = |label: &str, cols: u32| gpu.buffer(label, m as u64 * cols as u64 * F32);
        let tokens = gpu.buffer("dec_tokens", (batch * t) as u64 * d.channels as u64 * 4);
        let qinfo = gpu.buffer("dec_qinfo", m as u64 * 8);
        let x = buf("dec_x", hidden);
        let h = buf("dec_h", hidden);
        let qkv = buf("dec_qkv", qkv_w);
        let attn = buf("dec_attn", (d.heads * d.head_dim) as u32);
        let cq = buf("dec_cq", cq_w);
        let cattn = buf("dec_cattn", cq_w);
        let mlp = buf("dec_mlp", d.intermediate as u32);
        // Self-attention: row r's keys live at [r·max_len, r·max_len + pos].
        let self_seqs = gpu.upload("self_seqs", &(0..rows).flat_map(|r| [r * cache.max_len, cache.max_len]).collect::<Vec<_>>());
        // Cross-attention: conditional row b reads item b's text, every unconditional row the shared zero row.
        let cross_qinfo = gpu.upload(
            "cross_qinfo",
            &(0..m).flat_map(|i| [((i / t) % rows).min(batch), 0]).collect::<Vec<u32>>(),
        );
        // A step's cross-attention through the text's tables (`EncoderState::cross_tables`), where they were made.
        let cross_tables = enc.cross_tables.as_ref().filter(|_| t == 1);
        let cross_scores_buf = gpu.buffer("dec_cross_scores", cross_tables.map_or(4, |set| m as u64 * set.plan.score_stride() as u64 * F32));
        let (cos, sin) = (&model.dec_rope.0, &model.dec_rope.1);
        let attend = |a: &AttentionArgs| if t == 1 { attention_decode(gpu, a) } else { attention_prefill(gpu, a) };

        let mut body = vec![(StepPart::Embedding, embed_channels_sum(gpu, &model.dec_embedding, &tokens, &x, m, batch * t, d.channels as u32, d.vocab as u32))];
        let tag = |part: StepPart, ds: Vec<Dispatch>| ds.into_iter().map(move |d| (part, d));
        let eps = d.norm_eps;
        for (li, l) in model.dec_layers.iter().enumerate() {
            // Norms are fused into the projections that consume them (small M; `h` is the scratch otherwise).
            body.extend(tag(StepPart::Linear, norm_linear(gpu, &x, &l.pre_sa_norm, eps, &l.qkv, &qkv, m, LinearEpilogue::Store, &h)));
            let kv_width = (d.kv_heads * d.head_dim) as u32;
            let self_attention = AttentionArgs {
                q_buf: &qkv,
                q_stride: qkv_w,
                q_col: 0,
                k_buf: &cache.k[li],
                v_buf: &cache.v[li],
                kv_stride: kv_width,
                k_col: 0,
                v_col: 0,
                qinfo: &qinfo,
                seqs: &self_seqs,
                out: &attn,
                rows: m,
                heads: d.heads as u32,
                kv_heads: d.kv_heads as u32,
                head_dim: hd,
                causal: true,
                max_keys: cache.max_len,
                kv_format: cache.format,
            };
            let append = can_append_in_decode(&self_attention) && (cache.format != KvFormat::Q8 || gpu.q8_cache_append());
            // Issue 17's second fusion (opt-in): the attention's combine pass folded into the output projection.
            let fused_o = (t == 1 && append && gpu.attention_o_fused() && linear_schedule(gpu, &attn, &l.o, &x, m, LinearEpilogue::Accumulate) == Schedule::SmallM)
                .then(|| {
                    let (partial, partials) = attention_decode_appending_partial(gpu, &self_attention, cos, sin);
                    let o = linear_attention_o(gpu, &partials, &qinfo, &self_seqs, &cache.k[li], &cache.v[li], &l.o, &x, m, LinearEpilogue::Accumulate, ATTENTION_O_SHAPE)?;
                    Some([(StepPart::SelfAttention, partial), (StepPart::Linear, o)])
                })
                .flatten();
            if let Some(fused) = fused_o {
                body.extend(fused);
            } else if t == 1 && append {
                // A step: RoPE and the cache update happen inside the attention's two passes.
                body.extend(tag(StepPart::SelfAttention, attention_decode_appending(gpu, &self_attention, cos, sin)));
                body.extend(tag(StepPart::Linear, linear_rows(gpu, &attn, &l.o, &x, m, LinearEpilogue::Accumulate)));
            } else {
                // RoPE on Q and K, K and V into the cache (one dispatch), then attention over the cache.
                body.push((StepPart::RopeKv, rope_kv_write(gpu, &qkv, &qinfo, cos, sin, &cache.k[li], &cache.v[li], m, qkv_w, d.heads as u32, hd, kv_width, cache.max_len, cache.format)));
                body.extend(tag(StepPart::SelfAttention, attend(&self_attention)));
                body.extend(tag(StepPart::Linear, linear_rows(gpu, &attn, &l.o, &x, m, LinearEpilogue::Accumulate)));
            }

            if let Some(set) = cross_tables {
                // A step through the text's tables: scores = A·rmsnorm(x), then x += B·softmax(scores).
                let tables = &set.layers[li];
                body.push((StepPart::CrossAttention, cross_scores(gpu, &set.plan, tables, &x, &l.pre_ca_norm, eps, &cross_qinfo, &cross_scores_buf, m)));
                body.push((StepPart::CrossAttention, cross_out(gpu, &set.plan, tables, &cross_scores_buf, &cross_qinfo, &x, m)));
            } else {
                body.extend(tag(StepPart::Linear, norm_linear(gpu, &x, &l.pre_ca_norm, eps, &l.cross_q, &cq, m, LinearEpilogue::Store, &h)));
                if let Some((c, s)) = &model.cross_rope {
                    body.push((StepPart::RopeKv, rope(gpu, &cq, c, s, &qinfo, m, cq_w, 0, d.cross_heads as u32, d.cross_head_dim as u32)));
                }
                let max_text = enc.text.segments.iter().map(|s| s.1).max().unwrap_or(1);
                body.extend(tag(StepPart::CrossAttention, attend(&AttentionArgs {
                    q_buf: &cq,
                    q_stride: cq_w,
                    q_col: 0,
                    k_buf: &enc.cross_kv[li],
                    v_buf: &enc.cross_kv[li],
                    kv_stride: ckv_w,
                    k_col: 0,
                    v_col: ckv_w / 2,
                    qinfo: &cross_qinfo,
                    seqs: &enc.seqs,
                    out: &cattn,
                    rows: m,
                    heads: d.cross_heads as u32,
                    kv_heads: d.cross_kv_heads as u32,
                    head_dim: d.cross_head_dim as u32,
                    causal: false,
                    max_keys: max_text,
                    kv_format: enc.cross_format,
                })));
                body.extend(tag(StepPart::Linear, linear_rows(gpu, &cattn, &l.cross_o, &x, m, LinearEpilogue::Accumulate)));
            }

            body.extend(tag(StepPart::Linear, norm_linear(gpu, &x, &l.pre_mlp_norm, eps, &l.gate_up, &mlp, m, LinearEpilogue::SwiGlu, &h)));
            body.extend(tag(StepPart::Linear, linear_rows(gpu, &mlp, &l.down, &x, m, LinearEpilogue::Accumulate)));
        }
        DecoderGraph { t, rows, tokens, qinfo, x, body, _keep: vec![h, qkv, attn, cq, cattn, mlp, self_seqs, cross_qinfo, cross_scores_buf] }
    }

    /// Dispatches per pass.
    pub fn dispatches(&self) -> usize {
        self.body.len()
    }

    /// Records the layers.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        for (_, d) in &self.body {
            d.record(pass);
        }
    }

    /// The dispatches of one part of the pass, in order (to time it alone).
    /// Every dispatch of the graph, in order.
    pub fn part_all(&self) -> Vec<&Dispatch> {
        self.body.iter().map(|(_, d)| d).collect()
    }

    pub fn part(&self, part: StepPart) -> Vec<&Dispatch> {
        self.body.iter().filter(|(p, _)| *p == part).map(|(_, d)| d).collect()
    }

    /// Writes (row, position) for every row: positions `start..start+T` in each of the R rows.
    pub fn set_positions(&self, gpu: &Gpu, start: u32) {
        let q: Vec<u32> = (0..self.rows).flat_map(|r| (0..self.t).flat_map(move |t| [r, start + t])).collect();
        gpu.write(&self.qinfo, &q);
    }
}

impl DiaModel {
    /// Conditional-row logits `[T, C, V]` for delayed audio rows `rows` (`[T, C]`) fed teacher-forced after the
    /// text `ids` (one item). For parity checks and scoring; one pass, one readback.
    pub async fn teacher_forced_logits(&self, gpu: &Gpu, ids: &[u32], rows: &[u32]) -> Result<Vec<f32>, crate::gpu::GpuError> {
        let d = &self.cfg.decoder;
        let t = (rows.len() / d.channels) as u32;
        let enc = self.encode(gpu, PackedText::new(&[ids.to_vec()]));
        let cache = KvCache::new(gpu, self, 2, t);
        let graph = DecoderGraph::new(gpu, self, &enc, &cache, 1, t);
        gpu.write(&graph.tokens, rows);
        graph.set_positions(gpu, 0);
        // Only the conditional row's T hidden states (rows 0..T) go through the head.
        let (head, logits) = self.logits_head(gpu, &graph.x, t);
        let mut enc_cmd = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc_cmd.begin_compute_pass(&Default::default());
            graph.record(&mut pass);
            for d in &head {
                d.record(&mut pass);
            }
        }
        gpu.queue.submit([enc_cmd.finish()]);
        gpu.read_f32(&logits).await
    }
}
