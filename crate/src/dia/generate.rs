//! Generation (docs/model.md §4, HF semantics): CFG rows, delayed prefix and prompt prefill, GPU-side sampling, the
//! EOS/PAD tail, batches. The CPU never waits on the GPU per step: steps are submitted back to back and the
//! produced rows come back through a small ring of asynchronous readbacks, a few steps behind.

use std::collections::VecDeque;
use std::convert::Infallible;

use crate::gpu::{Dispatch, Gpu, GpuBuffer, GpuError};
use crate::kernels::sampling::{Sampler, SamplerBuffers, SamplerShape, SamplingParams};

use super::delay::{build_prefix, rows_to_feed};
use super::forward::{DecoderGraph, KvCache, PackedText};
use super::model::DiaModel;
use super::tokenizer::encode_text;
use super::DiaError;

/// Options of one `generate` call. Defaults are the reference's (docs/model.md §4.6).
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub sampling: SamplingParams,
    /// Rows generated after the prefix (HF `max_new_tokens`, including the 15-row EOS tail);
    /// `usize::MAX` (the default): as many as the decoder's positions allow.
    pub max_new_tokens: usize,
    /// Steps submitted between two readbacks.
    pub readback_every: usize,
    /// Streamed codec windows (`pipeline`) whose decode may be on the GPU at once while the decoder goes on; their
    /// audio is handed out in order as each readback completes. 1: the decoder waits for each window's audio
    /// (the synchronous path). The first window is always waited for (time to first audio).
    pub codec_windows_in_flight: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            sampling: SamplingParams { cfg_scale: 3.0, cfg_filter_top_k: 45, temperature: 1.2, top_p: 0.95, seed: 0 },
            max_new_tokens: usize::MAX,
            readback_every: 8,
            codec_windows_in_flight: 2,
        }
    }
}

/// Delayed codes of a finished generation: `[rows, batch, channels]`, rows including the BOS/prompt prefix
/// and the EOS/PAD tail (HF `generate` output; crop with `delay::codes_for_decode`).
#[derive(Debug, Clone)]
pub struct Generation {
    pub codes: Vec<u32>,
    pub rows: usize,
    pub batch: usize,
    pub channels: usize,
    /// Rows fed before the first generated one (1 + prompt frames).
    pub prefix_rows: usize,
}

impl Generation {
    /// Item b's delayed codes `[rows, channels]`.
    pub fn item(&self, b: usize) -> Vec<u32> {
        (0..self.rows)
            .flat_map(|r| {
                let o = (r * self.batch + b) * self.channels;
                self.codes[o..o + self.channels].iter().copied()
            })
            .collect()
    }
}

/// Receives produced delayed rows `[n, B, C]` in order, as they reach the CPU. Async so that a consumer
/// (the streaming codec) can do GPU work of its own between readbacks.
#[allow(async_fn_in_trait)]
pub trait RowSink {
    /// The sink's own failure (the streaming codec's), which ends the run as `RunError::Sink`.
    type Error;

    async fn rows(&mut self, first_row: usize, rows: &[u32]) -> Result<(), Self::Error>;

    /// How many rows (from row 0) the sink needs before it can next make progress — the streaming codec's next
    /// chunk — if it knows. The session then ends a readback exactly there instead of at the next full
    /// `readback_every` interval, so e.g. the first audio waits for no step it does not need.
    fn wanted_rows(&self) -> Option<usize> {
        None
    }
}

impl<F: FnMut(usize, &[u32])> RowSink for F {
    type Error = Infallible;

    async fn rows(&mut self, first_row: usize, rows: &[u32]) -> Result<(), Infallible> {
        self(first_row, rows);
        Ok(())
    }
}

/// Why `Session::run_with` stopped before the end: the generation's own error, or the sink's.
#[derive(Debug, thiserror::Error)]
pub enum RunError<E> {
    #[error(transparent)]
    Dia(#[from] DiaError),
    #[error(transparent)]
    Sink(E),
}

impl<E> From<GpuError> for RunError<E> {
    fn from(e: GpuError) -> Self {
        RunError::Dia(e.into())
    }
}

/// GPU working memory a session sizes its buffers for at least, beyond what its own request needs. Sessions made
/// with the same reserve reuse the same kept buffers (`Gpu::reusable_buffer`) whatever their text and prompt
/// lengths, so a long script's segments leave GPU memory exactly where the first one put it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reserve {
    /// Text tokens (the encoder's buffers).
    pub text_tokens: usize,
    /// Decoder positions (the KV cache).
    pub positions: usize,
}

impl Reserve {
    /// The most any request of `model` can need.
    pub fn full(model: &DiaModel) -> Reserve {
        Reserve { text_tokens: model.cfg.encoder.max_positions, positions: model.cfg.decoder.max_positions }
    }
}

/// One generation request's GPU state: encoder output, KV cache, decoder graphs and the sampler.
pub struct Session<'m> {
    gpu: &'m Gpu,
    model: &'m DiaModel,
    batch: usize,
    s0: usize,
    max_length: usize,
    prefill: Option<DecoderGraph>,
    step: DecoderGraph,
    head: Vec<Dispatch>,
    sampler: Sampler,
    codes: GpuBuffer,
    known: Vec<u32>,
    steps_submitted: usize,
    _keep: (KvCache, GpuBuffer),
}

/// A readback in flight: status and a range of produced rows copied into a mapped staging buffer.
struct Pending {
    slot: usize,
    first_row: usize,
    rows: usize,
    rx: futures::channel::oneshot::Receiver<Result<(), wgpu::BufferAsyncError>>,
    /// The submit of the chunk's steps and copy.
    submission: wgpu::SubmissionIndex,
}

impl<'m> Session<'m> {
    /// Prepares a request: `texts` (one item each), an optional voice prompt as undelayed DAC codes
    /// `[frames, C]` shared by every item, and options. Runs the encoder.
    pub fn new(gpu: &'m Gpu, model: &'m DiaModel, texts: &[&str], prompt: Option<&[u32]>, opts: &GenerateOptions, record_scores: bool) -> Result<Session<'m>, DiaError> {
        // Text that is only whitespace would be spoken as silence at best: refuse it like the empty string.
        if texts.iter().any(|t| t.trim().is_empty()) {
            return Err(DiaError::EmptyText);
        }
        let items: Vec<Vec<u32>> = texts.iter().map(|t| encode_text(t)).collect();
        Self::from_tokens(gpu, model, &items, prompt, opts, record_scores)
    }

    /// `new` with GPU buffers sized for at least `reserve` (same generation, same codes).
    pub fn with_reserve(gpu: &'m Gpu, model: &'m DiaModel, texts: &[&str], prompt: Option<&[u32]>, opts: &GenerateOptions, reserve: Reserve) -> Result<Session<'m>, DiaError> {
        if texts.iter().any(|t| t.trim().is_empty()) {
            return Err(DiaError::EmptyText);
        }
        let items: Vec<Vec<u32>> = texts.iter().map(|t| encode_text(t)).collect();
        Self::build(gpu, model, &items, prompt, opts, false, reserve, 0)
    }

    /// `with_reserve` for one batch of a longer list of texts that starts at list index `first_item`: item b draws
    /// its random numbers as list item `first_item + b` (`SamplerShape::first_item`), so each text of the list gets
    /// the same draws whatever the batch size.
    pub fn list_batch(
        gpu: &'m Gpu,
        model: &'m DiaModel,
        texts: &[&str],
        first_item: u32,
        prompt: Option<&[u32]>,
        opts: &GenerateOptions,
        reserve: Reserve,
    ) -> Result<Session<'m>, DiaError> {
        if texts.iter().any(|t| t.trim().is_empty()) {
            return Err(DiaError::EmptyText);
        }
        let items: Vec<Vec<u32>> = texts.iter().map(|t| encode_text(t)).collect();
        Self::build(gpu, model, &items, prompt, opts, false, reserve, first_item)
    }

    /// `new` for already tokenized texts (one id list per item).
    pub fn from_tokens(gpu: &'m Gpu, model: &'m DiaModel, items: &[Vec<u32>], prompt: Option<&[u32]>, opts: &GenerateOptions, record_scores: bool) -> Result<Session<'m>, DiaError> {
        Self::build(gpu, model, items, prompt, opts, record_scores, Reserve::default(), 0)
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        gpu: &'m Gpu,
        model: &'m DiaModel,
        items: &[Vec<u32>],
        prompt: Option<&[u32]>,
        opts: &GenerateOptions,
        record_scores: bool,
        reserve: Reserve,
        first_item: u32,
    ) -> Result<Session<'m>, DiaError> {
        // Nothing is built on a lost device: its buffers would be invalid.
        gpu.check()?;
        let cfg = &model.cfg;
        let c = cfg.decoder.channels;
        let limit = cfg.encoder.max_positions;
        if items.is_empty() || items.iter().any(|i| i.is_empty()) {
            return Err(DiaError::EmptyText);
        }
        if let Some(long) = items.iter().find(|i| i.len() > limit) {
            return Err(DiaError::TextTooLong { bytes: long.len(), limit });
        }
        if let Some(bad) = items.iter().flatten().find(|&&t| t as usize >= cfg.encoder.vocab) {
            return Err(DiaError::BadOptions(format!("text token {bad} is outside the vocabulary")));
        }
        let batch = items.len();
        let prompt = prompt.unwrap_or(&[]);
        if !prompt.len().is_multiple_of(c) {
            return Err(DiaError::BadPrompt(format!("prompt codes are not a multiple of {c} channels")));
        }
        if let Some(bad) = prompt.iter().find(|&&v| v >= cfg.eos) {
            return Err(DiaError::BadPrompt(format!("prompt code {bad} is outside the codebook")));
        }
        if opts.max_new_tokens == 0 {
            return Err(DiaError::BadOptions("max_new_tokens must be at least 1".into()));
        }
        let one = build_prefix(&cfg.delay_pattern, cfg.bos, cfg.pad, prompt);
        let prefix_rows = one.len() / c;
        let s0 = rows_to_feed(&one, c, cfg.pad);
        let max_length = if opts.max_new_tokens == usize::MAX { cfg.decoder.max_positions } else { s0.saturating_add(opts.max_new_tokens) };
        if max_length <= s0 {
            return Err(DiaError::TooLong { rows: s0 + 1, limit: cfg.decoder.max_positions });
        }
        if max_length > cfg.decoder.max_positions {
            return Err(DiaError::TooLong { rows: max_length, limit: cfg.decoder.max_positions });
        }
        let prefix: Vec<u32> = (0..batch).flat_map(|_| one.iter().copied()).collect();

        let enc = model.encode(gpu, PackedText::new(items).with_capacity(reserve.text_tokens));
        let rows = 2 * batch as u32;
        let cache = KvCache::with_capacity(gpu, model, rows, max_length as u32, reserve.positions as u32);
        let step = DecoderGraph::new(gpu, model, &enc, &cache, batch as u32, 1);
        let prefill = (s0 > 1).then(|| DecoderGraph::new(gpu, model, &enc, &cache, batch as u32, s0 as u32));
        let (head, logits) = model.logits_head(gpu, &step.x, rows);

        let codes = gpu.buffer("codes", (max_length * batch * c) as u64 * 4);
        let shape = SamplerShape {
            batch: batch as u32,
            channels: c as u32,
            vocab: cfg.decoder.vocab as u32,
            delay: cfg.delay_pattern.iter().map(|&d| d as u32).collect(),
            eos: cfg.eos,
            pad: cfg.pad,
            first_item,
        };
        let bufs = SamplerBuffers { logits: &logits, tokens: &step.tokens, codes: &codes, qinfo: &step.qinfo };
        let sampler = Sampler::new(gpu, &shape, &opts.sampling, &bufs, &prefix, prefix_rows as u32, s0 as u32, max_length as u32, record_scores)?;

        // Rows 0..s0 are known: they start the output and are fed first (prefill, or the first step).
        let mut known = vec![0u32; s0 * batch * c];
        for r in 0..s0 {
            for b in 0..batch {
                known[(r * batch + b) * c..][..c].copy_from_slice(&prefix[(b * prefix_rows + r) * c..][..c]);
            }
        }
        gpu.write(&codes, &known);
        // The sampler rewrites only the positions of the step graph's (row, position) pairs: set the rows here.
        step.set_positions(gpu, s0 as u32 - 1);
        match &prefill {
            Some(p) => {
                let toks: Vec<u32> = (0..batch).flat_map(|b| prefix[b * prefix_rows * c..][..s0 * c].iter().copied()).collect();
                gpu.write(&p.tokens, &toks);
                p.set_positions(gpu, 0);
            }
            None => gpu.write(&step.tokens, &known),
        }
        Ok(Session { gpu, model, batch, s0, max_length, prefill, step, head, sampler, codes, known, steps_submitted: 0, _keep: (cache, logits) })
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// One step's dispatches as recorded (profiling): the layers, then the logits head and the sampler.
    pub fn step_dispatches(&self) -> (Vec<&Dispatch>, Vec<&Dispatch>) {
        (self.step.part_all(), self.head.iter().chain(self.sampler.dispatches()).collect())
    }

    /// Delayed rows `[max_length, B, C]` on the GPU (known prefix, then what the submitted steps produce).
    pub fn codes_buffer(&self) -> &GpuBuffer {
        &self.codes
    }

    /// Rows fed before the first generated row.
    pub fn prefix_rows(&self) -> usize {
        self.s0
    }

    /// Submits the next decoder step (the prompt prefill pass first when there is one).
    pub fn submit_step(&mut self) {
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        self.record_steps(&mut enc, 1);
        self.gpu.queue.submit([enc.finish()]);
    }

    /// Records the next `n` decoder steps into `enc` (the prompt prefill pass first when there is one): the steps
    /// in one compute pass, so that a chunk of steps costs one submit. Each step reads its position and the rows
    /// before it from the GPU, so nothing is written between them.
    fn record_steps(&mut self, enc: &mut wgpu::CommandEncoder, n: usize) {
        let mut left = n;
        if let (Some(p), 0, 1..) = (&self.prefill, self.steps_submitted, left) {
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                p.record(&mut pass);
            }
            // The last token of each row continues into the step graph's hidden rows and the shared head.
            let d = self.model.cfg.decoder.hidden as u64 * 4;
            let t = p.t as u64;
            for r in 0..p.rows as u64 {
                enc.copy_buffer_to_buffer(&p.x.buf, p.x.offset + (r * t + t - 1) * d, &self.step.x.buf, self.step.x.offset + r * d, d);
            }
            let mut pass = enc.begin_compute_pass(&Default::default());
            self.record_head(&mut pass);
            left -= 1;
            self.steps_submitted += 1;
        }
        if left > 0 {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for _ in 0..left {
                self.step.record(&mut pass);
                self.record_head(&mut pass);
            }
            self.steps_submitted += left;
        }
    }

    fn record_head(&self, pass: &mut wgpu::ComputePass<'_>) {
        for d in self.head.iter().chain(self.sampler.dispatches()) {
            d.record(pass);
        }
    }

    /// Teacher forcing (tests, scoring): the next step's produced row is `tokens` `[B, C]`.
    pub fn force_next(&self, tokens: &[u32]) {
        self.sampler.force_next(self.gpu, tokens);
    }

    /// The processed scores of the last step `[B, C, V]` (sessions made with `record_scores`).
    pub async fn last_scores(&self) -> Result<Vec<f32>, DiaError> {
        let buf = self.sampler.scores().ok_or_else(|| DiaError::BadOptions("session was made without record_scores".into()))?;
        Ok(self.gpu.read_f32(buf).await?)
    }

    /// Runs to the end. `sink` receives produced delayed rows `[n, B, C]` in order as they reach the CPU
    /// (a few steps after the GPU made them), starting with the known prefix rows; `cancelled()` is checked
    /// between chunks of steps. For sinks that cannot fail (closures); `run_with` for those that can.
    pub async fn run<S: RowSink<Error = Infallible> + ?Sized>(&mut self, opts: &GenerateOptions, sink: &mut S, cancelled: impl Fn() -> bool) -> Result<Generation, DiaError> {
        self.run_with(opts, sink, cancelled).await.map_err(|e| match e {
            RunError::Dia(e) => e,
            RunError::Sink(never) => match never {},
        })
    }

    /// `run` with a sink that may fail: its first error ends the run (no further steps or rows) and comes back
    /// as `RunError::Sink`.
    pub async fn run_with<S: RowSink + ?Sized>(&mut self, opts: &GenerateOptions, sink: &mut S, cancelled: impl Fn() -> bool) -> Result<Generation, RunError<S::Error>> {
        const RING: usize = 3;
        let c = self.model.cfg.decoder.channels;
        let row_bytes = (self.batch * c * 4) as u64;
        let every = opts.readback_every.max(1);
        let staging: Vec<wgpu::Buffer> = (0..RING)
            .map(|_| {
                self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("codes_readback"),
                    size: 16 + every as u64 * row_bytes,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })
            .collect();
        let mut out = self.known.clone();
        sink.rows(0, &self.known).await.map_err(RunError::Sink)?;
        let max_steps = self.max_length - self.s0;
        let mut pending: VecDeque<Pending> = VecDeque::new();
        let mut free: Vec<usize> = (0..RING).collect();
        let mut end: Option<usize> = None;
        while end.is_none() {
            if cancelled() {
                return Err(DiaError::Cancelled.into());
            }
            // A lost device (or a GPU error) ends the generation at once: its rows would be garbage.
            self.gpu.check()?;
            if self.steps_submitted < max_steps && !free.is_empty() {
                let first_row = self.s0 + self.steps_submitted;
                let mut n = every.min(max_steps - self.steps_submitted);
                if let Some(wanted) = sink.wanted_rows().filter(|&w| w > first_row) {
                    n = n.min(wanted - first_row);
                }
                // In a browser a submit costs a trip through the WebGPU implementation that grows with its dispatches
                // (Dawn under Node on an H100: ~1.5 ms for a step's ~166): a chunk of steps and its readback copy go
                // as one. Natively a submit per step lets the GPU start on the first step at once.
                let per_submit = if self.gpu.info.backend == wgpu::Backend::BrowserWebGpu { n } else { 1 };
                let slot = free.pop().unwrap();
                let mut enc = self.gpu.device.create_command_encoder(&Default::default());
                let mut left = n;
                while left > 0 {
                    let k = per_submit.min(left);
                    self.record_steps(&mut enc, k);
                    left -= k;
                    if left > 0 {
                        let full = std::mem::replace(&mut enc, self.gpu.device.create_command_encoder(&Default::default()));
                        self.gpu.queue.submit([full.finish()]);
                    }
                }
                enc.copy_buffer_to_buffer(&self.sampler.status().buf, self.sampler.status().offset, &staging[slot], 0, 16);
                enc.copy_buffer_to_buffer(&self.codes.buf, self.codes.offset + first_row as u64 * row_bytes, &staging[slot], 16, n as u64 * row_bytes);
                let submission = self.gpu.queue.submit([enc.finish()]);
                let (tx, rx) = futures::channel::oneshot::channel();
                staging[slot].slice(..16 + n as u64 * row_bytes).map_async(wgpu::MapMode::Read, move |r| {
                    let _ = tx.send(r);
                });
                pending.push_back(Pending { slot, first_row, rows: n, rx, submission });
                self.gpu.poll_nonblocking();
            }
            // Take what is ready; block only when the ring is full or everything is submitted.
            let must_wait = free.is_empty() || self.steps_submitted >= max_steps;
            let Some(front) = pending.front_mut() else { break };
            let dropped = || GpuError::Readback("map callback dropped".into());
            let ready = match front.rx.try_recv() {
                Ok(Some(r)) => Some(r),
                Ok(None) if must_wait => {
                    // Only for the oldest chunk: the GPU keeps running the later ones while the next is recorded.
                    if let Err(e) = self.gpu.wait_for(front.submission.clone()) {
                        return Err(self.gpu.lost_or(e).await.into());
                    }
                    match (&mut front.rx).await {
                        Ok(r) => Some(r),
                        Err(_) => return Err(self.gpu.lost_or(dropped()).await.into()),
                    }
                }
                Ok(None) => None,
                Err(_) => return Err(self.gpu.lost_or(dropped()).await.into()),
            };
            let Some(result) = ready else { continue };
            let p = pending.pop_front().unwrap();
            let view = result.map_err(|e| GpuError::Readback(e.to_string())).and_then(|()| {
                let view = staging[p.slot].slice(..16 + p.rows as u64 * row_bytes).get_mapped_range().map_err(|e| GpuError::Readback(e.to_string()))?;
                Ok(bytemuck::pod_collect_to_vec::<u8, u32>(&view))
            });
            // A readback fails when the device is lost under it: say so rather than "map failed".
            let data = match view {
                Ok(d) => d,
                Err(e) => return Err(self.gpu.lost_or(e).await.into()),
            };
            staging[p.slot].unmap();
            free.push(p.slot);
            let (over, total) = (data[1] != 0, data[2] as usize);
            let valid = if over { total.saturating_sub(p.first_row).min(p.rows) } else { p.rows };
            let rows = &data[4..4 + valid * self.batch * c];
            out.extend_from_slice(rows);
            if valid > 0 {
                sink.rows(p.first_row, rows).await.map_err(RunError::Sink)?;
            }
            if over {
                end = Some(total);
            }
        }
        self.gpu.check()?;
        let rows = end.ok_or_else(|| DiaError::Gpu(GpuError::Readback("generation ended without a final row count".into())))?;
        out.truncate(rows * self.batch * c);
        Ok(Generation { codes: out, rows, batch: self.batch, channels: c, prefix_rows: self.s0 })
    }
}

impl DiaModel {
    /// Generates delayed codes for `texts` (one batch item each), optionally continuing a voice prompt given
    /// as undelayed DAC codes `[frames, C]`.
    pub async fn generate(&self, gpu: &Gpu, texts: &[&str], prompt: Option<&[u32]>, opts: &GenerateOptions) -> Result<Generation, DiaError> {
        let mut s = Session::new(gpu, self, texts, prompt, opts, false)?;
        s.run(opts, &mut |_: usize, _: &[u32]| {}, || false).await
    }
}
