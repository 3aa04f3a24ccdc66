//! Lists of texts (dialogue lines, audiobook sentences): each text its own audio, generated several at a time in
//! one `Session` (docs/batch.md).
//!
//! Seeds: text i of the list draws its random numbers as item i (`SamplerShape::first_item`), so its audio depends
//! on the seed, its text and its index, not on the batch size or on the other texts. Text 0 is exactly `speak`
//! with the same seed; with greedy decoding (temperature 0) every text is exactly `speak` of it alone.

use super::stream::FrameStream;
use super::{PipelineError, Tts, VoicePrompt};
use crate::dia::batch_plan::{max_batch, session_size, BatchShape, AUTO_BATCH, MAX_BATCH};
use crate::dia::delay::codes_for_decode;
use crate::dia::tokenizer::encode_text;
use crate::dia::{DiaError, GenerateOptions, Reserve, Session};

/// Where a batch run stands: reported when a batch starts (`rows` 0) and with every readback of its rows.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchProgress {
    /// Batch being generated (0-based) and how many there are.
    pub batch: usize,
    pub batches: usize,
    /// List index of the batch's first text, and its number of texts.
    pub first_item: usize,
    pub items: usize,
    /// Rows generated so far in this batch (it ends with its longest text), and the most it may generate.
    pub rows: usize,
    pub max_rows: usize,
    /// Texts of the list handed out so far.
    pub done: usize,
}

/// One text of the list, spoken.
#[derive(Debug, Clone)]
pub struct SpokenText {
    /// Its index in the list.
    pub index: usize,
    /// The text the model read (the voice transcript, if given, in front).
    pub text: String,
    /// Delayed codes `[prefix_rows + steps, C]`, as `speak` of this text alone would generate them: the batch's rows
    /// after this text's EOS tail are cut.
    pub codes: Vec<u32>,
    pub prefix_rows: usize,
    /// Rows generated for this text (EOS tail included).
    pub steps: usize,
    /// Undelayed audio frames `[n, C]` (invalid codes clamped to 0) and their 44.1 kHz samples.
    pub frames: Vec<u32>,
    pub samples: Vec<f32>,
}

/// What one `speak_batch` call did.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchSpeech {
    pub texts: usize,
    pub batches: usize,
    /// Decoder steps run (per batch: its longest text's rows) and audio samples handed out in all.
    pub steps: usize,
    pub samples: usize,
}

/// The text the model reads for one text of a list continuing a voice with `transcript`: the transcript, if given,
/// in front (one space apart).
pub fn list_text(transcript: Option<&str>, text: &str) -> String {
    match transcript.map(str::trim).filter(|t| !t.is_empty()) {
        Some(t) => format!("{t} {text}"),
        None => text.to_string(),
    }
}

impl Tts<'_> {
    /// The decoder positions a session of these options is sized for (its `max_length`).
    fn batch_positions(&self, prompt_frames: usize, opts: &GenerateOptions) -> usize {
        let max = self.dia.cfg.decoder.max_positions;
        if opts.max_new_tokens == usize::MAX {
            max
        } else {
            (1 + prompt_frames).saturating_add(opts.max_new_tokens).min(max)
        }
    }

    /// Checks a list before any GPU work: not empty, and every text speakable on its own (not blank, within the
    /// encoder's length with the voice transcript in front). Returns the texts the model will read.
    pub fn check_batch(&self, texts: &[&str], voice: Option<VoicePrompt<'_>>) -> Result<Vec<String>, PipelineError> {
        if texts.is_empty() {
            return Err(PipelineError::EmptyBatch);
        }
        let limit = self.dia.cfg.encoder.max_positions;
        texts
            .iter()
            .enumerate()
            .map(|(index, t)| {
                if t.trim().is_empty() {
                    return Err(PipelineError::BatchText { index, source: DiaError::EmptyText });
                }
                let text = list_text(voice.and_then(|v| v.transcript), t);
                let bytes = encode_text(&text).len();
                if bytes > limit {
                    return Err(PipelineError::BatchText { index, source: DiaError::TextTooLong { bytes, limit } });
                }
                Ok(text)
            })
            .collect()
    }

    /// The memory plan's view of a batch of `batch` of these texts.
    fn batch_shape(&self, texts: &[String], prompt_frames: usize, opts: &GenerateOptions, batch: usize) -> BatchShape {
        BatchShape {
            kv_format: self.dia.kv_format,
            batch,
            text_tokens: texts.iter().map(|t| encode_text(t).len()).max().unwrap_or(1),
            positions: self.batch_positions(prompt_frames, opts),
            prompt_frames,
        }
    }

    /// The batch size `speak_batch` should use for `texts` on this device: the largest up to `AUTO_BATCH` whose
    /// session fits the device's binding limits and, where the device tells its memory (`Gpu::device_memory`),
    /// `MEMORY_SHARE` of the memory the loaded models leave. `prompt_frames`: frames of the voice prompt, if any.
    pub fn auto_batch_size(&self, texts: &[&str], voice: Option<VoicePrompt<'_>>, prompt_frames: usize, opts: &GenerateOptions) -> Result<usize, PipelineError> {
        let texts = self.check_batch(texts, voice)?;
        let shape = self.batch_shape(&texts, prompt_frames, opts, 1);
        let free = self.gpu.device_memory().map(|total| total.saturating_sub(self.gpu.allocated_bytes()));
        let fits = max_batch(&self.dia.cfg, &shape, self.max_binding(), free, AUTO_BATCH.min(texts.len()));
        if fits == 0 {
            let need = session_size(&self.dia.cfg, &shape);
            return Err(PipelineError::BatchSize { size: 1, max: 0, why: format!("one text needs a {} MiB buffer and {} MiB in all", need.largest_binding >> 20, need.bytes >> 20) });
        }
        Ok(fits)
    }

    fn max_binding(&self) -> u64 {
        self.gpu.limits.max_storage_buffer_binding_size.min(self.gpu.limits.max_buffer_size)
    }

    /// Speaks every text of `texts` as its own audio, `batch_size` texts at a time (one `Session` each: one decoder
    /// step advances all of them), handing each to `on_text` in list order as its batch finishes. A voice prompt is
    /// continued by every text (its transcript, if given, is put in front of each; without it every text must begin
    /// with the transcript). `opts.max_new_tokens` applies to each text. `cancelled` is checked between steps,
    /// batches and texts; texts handed out before stay handed out.
    ///
    /// Errors (before any GPU work): an empty list, a blank text or one longer than the encoder takes (naming its
    /// list index), a batch size outside 1..=`MAX_BATCH` or too large for the device's bindings.
    #[allow(clippy::too_many_arguments)]
    pub async fn speak_batch(
        &self,
        texts: &[&str],
        voice: Option<VoicePrompt<'_>>,
        opts: &GenerateOptions,
        batch_size: usize,
        on_progress: &mut dyn FnMut(&BatchProgress),
        on_text: &mut dyn FnMut(SpokenText),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<BatchSpeech, PipelineError> {
        let model_texts = self.check_batch(texts, voice)?;
        if !(1..=MAX_BATCH).contains(&batch_size) {
            return Err(PipelineError::BatchSize { size: batch_size, max: MAX_BATCH, why: "the batch size must be at least 1".into() });
        }
        let prompt_codes = match voice {
            Some(v) => Some(self.prompt_codes(v.audio).await?),
            None => None,
        };
        let cfg = &self.dia.cfg;
        let c = cfg.decoder.channels;
        let prompt_frames = prompt_codes.as_ref().map_or(0, |p| p.len() / c);
        let batch_size = batch_size.min(texts.len());
        let shape = self.batch_shape(&model_texts, prompt_frames, opts, batch_size);
        let fits = max_batch(cfg, &shape, self.max_binding(), None, batch_size);
        if fits < batch_size {
            let binding = session_size(cfg, &shape).largest_binding;
            return Err(PipelineError::BatchSize {
                size: batch_size,
                max: fits,
                why: format!("it needs a {} MiB buffer; the device binds at most {} MiB", binding >> 20, self.max_binding() >> 20),
            });
        }
        // Every batch sizes its buffers for the largest, so GPU memory stays where the first batch put it.
        let reserve = Reserve { text_tokens: batch_size * shape.text_tokens + 1, positions: shape.positions };
        let batches = texts.len().div_ceil(batch_size);
        let mut done = BatchSpeech { texts: texts.len(), batches, steps: 0, samples: 0 };
        let mut handed_out = 0;
        for (batch, chunk) in model_texts.chunks(batch_size).enumerate() {
            if cancelled() {
                return Err(DiaError::Cancelled.into());
            }
            let first_item = batch * batch_size;
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let mut progress = BatchProgress { batch, batches, first_item, items: chunk.len(), rows: 0, max_rows: 0, done: handed_out };
            on_progress(&progress);
            // Per-text problems were caught above; what the session can still refuse is about the options.
            let mut session = Session::list_batch(self.gpu, self.dia, &refs, first_item as u32, prompt_codes.as_deref(), opts, reserve)?;
            let prefix_rows = session.prefix_rows();
            progress.max_rows = shape.positions - prefix_rows;
            let generation = session
                .run(
                    opts,
                    &mut |first_row: usize, rows: &[u32]| {
                        // The first rows handed over are the known prefix: nothing generated yet.
                        let generated = (first_row + rows.len() / (chunk.len() * c)).saturating_sub(prefix_rows);
                        if generated > 0 {
                            progress.rows = generated;
                            on_progress(&progress);
                        }
                    },
                    cancelled,
                )
                .await?;
            drop(session);
            done.steps += generation.rows - prefix_rows;
            for (b, text) in chunk.iter().enumerate() {
                if cancelled() {
                    return Err(DiaError::Cancelled.into());
                }
                let mut codes = generation.item(b);
                let steps = self.item_steps(&codes, prefix_rows);
                codes.truncate((prefix_rows + steps) * c);
                let frames = codes_for_decode(&codes, &cfg.delay_pattern, cfg.bos, cfg.pad, cfg.eos, Some(prefix_rows));
                let samples = self.decode_frames(&frames, opts.codec_windows_in_flight).await?;
                done.samples += samples.len();
                handed_out += 1;
                on_text(SpokenText { index: first_item + b, text: text.clone(), codes, prefix_rows, steps, frames, samples });
            }
        }
        Ok(done)
    }

    /// Rows one item of a batch generated: up to its own channel-0 EOS and the delay tail after it (all the rows
    /// when it never ended), as a generation of it alone would have run.
    fn item_steps(&self, codes: &[u32], prefix_rows: usize) -> usize {
        let cfg = &self.dia.cfg;
        let c = cfg.decoder.channels;
        let rows = codes.len() / c;
        let tail = cfg.delay_pattern.iter().copied().max().unwrap_or(0);
        let end = (prefix_rows..rows).find(|&r| codes[r * c] == cfg.eos).map_or(rows, |eos| (eos + 1 + tail).min(rows));
        end - prefix_rows
    }

    /// Undelayed frames `[n, C]` to samples, in the streaming codec's windows (bounded GPU memory for any length).
    /// `windows_in_flight` as `GenerateOptions::codec_windows_in_flight`.
    async fn decode_frames(&self, frames: &[u32], windows_in_flight: usize) -> Result<Vec<f32>, PipelineError> {
        let mut samples = Vec::new();
        let mut on_pcm = |chunk: &[f32]| samples.extend_from_slice(chunk);
        let mut stream: FrameStream = self.frame_stream(&mut on_pcm, windows_in_flight)?;
        stream.frames.extend_from_slice(frames);
        stream.finish().await?;
        drop(stream);
        Ok(samples)
    }
}
