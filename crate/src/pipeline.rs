//! The one public entry point: text (+ optional voice prompt audio) → PCM, streamed in chunks while the
//! decoder is still generating.
//!
//! Streaming: a frame of audio codes is final once the delayed row `frame + max_delay` exists (the delay
//! pattern). The codec decodes overlapping windows of final frames — the new ones plus the decoder's
//! receptive field on each side (`DacModel::decoder_context`: 10 frames each way for the 44.1 kHz DAC) — and
//! emits only the new samples, so the concatenated stream equals decoding the whole sequence to within float
//! error. The first chunk is small (time to first audio). Later chunks grow up to `STREAM_FRAMES` — less of
//! the GPU spent on recomputed context — as far as the measured pace allows: a chunk must be ready, at the rate
//! frames have been coming, well before the audio already handed out (if played from the first chunk on) runs
//! out, so a device slower than about twice real time keeps small chunks instead of stalling playback.

use crate::dac::{DacDecoder, DacError, DacModel};
use crate::dia::generate::RowSink;
use crate::dia::segment::{self, split_script, ScriptError, SegmentLimits};
use crate::dia::tokenizer::encode_text;
use crate::dia::{DiaError, DiaModel, GenerateOptions, Generation, Reserve, Session};
use crate::gpu::Gpu;

mod batch;
mod prepare;
pub use batch::{list_text, BatchProgress, BatchSpeech, SpokenText};
pub use prepare::{CacheUse, Prepared};
#[cfg(not(target_arch = "wasm32"))]
pub use prepare::{cache_file_name, read_cache_file, write_cache_file, PipelineCacheDir};

/// Sample rate of everything this pipeline produces and of the codec.
pub const SAMPLE_RATE: u32 = 44_100;

/// Voice prompt sample rates accepted for resampling (telephone audio up to 768 kHz studio rates). The
/// resampler's FFT length grows with the rate and the output with `SAMPLE_RATE / rate`, so a rate merely
/// claimed by a WAV header must not reach it unchecked.
pub const MIN_PROMPT_SAMPLE_RATE: u32 = 8_000;
pub const MAX_PROMPT_SAMPLE_RATE: u32 = 768_000;

/// Largest magnitude a voice prompt sample may have. Integer PCM decodes to [-1, 1) and float WAVs are
/// nominally the same (some tools scale to ±32768); NaN, ±inf or astronomically large values would turn the
/// resampler's FFT into NaN (and used to panic inside it).
pub const MAX_PROMPT_AMPLITUDE: f32 = 1.0e6;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Dia(#[from] DiaError),
    #[error(transparent)]
    Dac(#[from] DacError),
    #[error("unsupported audio: {0}")]
    Audio(String),
    #[error("unsupported audio: a sample rate of {rate} Hz (supported: {min} to {max} Hz)")]
    SampleRate { rate: u32, min: u32, max: u32 },
    #[error("unsupported audio: sample {index} is {value}, not a finite value within ±{max}")]
    SampleValue { index: usize, value: f32, max: f32 },
    #[error(transparent)]
    Script(#[from] ScriptError),
    #[error("the script is {segments} segments long: a voice prompt needs its transcript (kept in front of every segment) for more than one")]
    VoiceNeedsTranscript { segments: usize },
    #[error("the list of texts is empty")]
    EmptyBatch,
    /// A text of a `speak_batch` list that cannot be spoken; `index` is its place in the list (from 0).
    #[error("text {index} of the list: {source}")]
    BatchText { index: usize, source: DiaError },
    #[error("a batch of {size} texts does not fit ({why}); at most {max}")]
    BatchSize { size: usize, max: usize, why: String },
}

/// `PipelineError::SampleValue` for the first sample that is not finite or beyond `MAX_PROMPT_AMPLITUDE`.
fn check_samples(samples: &[f32]) -> Result<(), PipelineError> {
    // `!(|x| <= max)` also catches NaN.
    match samples.iter().position(|x| !(x.abs() <= MAX_PROMPT_AMPLITUDE)) {
        Some(index) => Err(PipelineError::SampleValue { index, value: samples[index], max: MAX_PROMPT_AMPLITUDE }),
        None => Ok(()),
    }
}

/// `PipelineError::SampleRate` unless voice prompts may have `rate`.
fn check_sample_rate(rate: u32) -> Result<(), PipelineError> {
    if (MIN_PROMPT_SAMPLE_RATE..=MAX_PROMPT_SAMPLE_RATE).contains(&rate) {
        Ok(())
    } else {
        Err(PipelineError::SampleRate { rate, min: MIN_PROMPT_SAMPLE_RATE, max: MAX_PROMPT_SAMPLE_RATE })
    }
}

impl PipelineError {
    /// Whether the GPU device was lost during the request (the models and their device are unusable; a new
    /// device and models are needed).
    pub fn is_device_lost(&self) -> bool {
        match self {
            PipelineError::Dia(e) => e.is_device_lost(),
            PipelineError::Dac(e) => e.is_device_lost(),
            PipelineError::Audio(_)
            | PipelineError::SampleRate { .. }
            | PipelineError::SampleValue { .. }
            | PipelineError::Script(_)
            | PipelineError::VoiceNeedsTranscript { .. }
            | PipelineError::EmptyBatch
            | PipelineError::BatchText { .. }
            | PipelineError::BatchSize { .. } => false,
        }
    }
}

/// Mono audio at any sample rate.
#[derive(Debug, Clone)]
pub struct Audio {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
}

impl Audio {
    /// Decodes a WAV file (integer PCM of 8–32 bits or 32-bit float), mixing channels down to mono. Sample
    /// rates outside `MIN_PROMPT_SAMPLE_RATE..=MAX_PROMPT_SAMPLE_RATE` are refused before any sample is read,
    /// samples that are not finite or beyond `MAX_PROMPT_AMPLITUDE` after reading.
    pub fn from_wav(bytes: &[u8]) -> Result<Audio, PipelineError> {
        let reader = hound::WavReader::new(std::io::Cursor::new(bytes)).map_err(|e| PipelineError::Audio(format!("not a readable WAV file: {e}")))?;
        let spec = reader.spec();
        if spec.channels == 0 || spec.sample_rate == 0 {
            return Err(PipelineError::Audio("WAV header has no channels or no sample rate".into()));
        }
        check_sample_rate(spec.sample_rate)?;
        let interleaved: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
            (hound::SampleFormat::Float, 32) => reader.into_samples::<f32>().collect::<Result<_, _>>(),
            (hound::SampleFormat::Int, b @ 8..=32) => {
                let scale = 1.0 / (1u64 << (b - 1)) as f32;
                reader.into_samples::<i32>().map(|s| s.map(|v| v as f32 * scale)).collect::<Result<_, _>>()
            }
            (f, b) => return Err(PipelineError::Audio(format!("{b}-bit {f:?} WAV samples are not supported (use 16-bit PCM or 32-bit float)"))),
        }
        .map_err(|e| PipelineError::Audio(format!("truncated or corrupt WAV data: {e}")))?;
        check_samples(&interleaved)?;
        let ch = spec.channels as usize;
        let samples = interleaved.chunks_exact(ch).map(|f| f.iter().sum::<f32>() / ch as f32).collect();
        Ok(Audio { samples, sample_rate: spec.sample_rate })
    }

    /// The same audio at `rate` Hz (FFT resampler; identity when the rate already matches). Every sample must
    /// be finite and within `MAX_PROMPT_AMPLITUDE`; both rates, if they differ, within
    /// `MIN_PROMPT_SAMPLE_RATE..=MAX_PROMPT_SAMPLE_RATE`.
    pub fn resampled(&self, rate: u32) -> Result<Audio, PipelineError> {
        check_samples(&self.samples)?;
        if self.sample_rate == rate {
            return Ok(self.clone());
        }
        check_sample_rate(self.sample_rate)?;
        check_sample_rate(rate)?;
        use rubato::Resampler;
        let chunk = 1024;
        let mut r = rubato::FftFixedIn::<f32>::new(self.sample_rate as usize, rate as usize, chunk, 2, 1)
            .map_err(|e| PipelineError::Audio(format!("cannot resample {} Hz to {rate} Hz: {e}", self.sample_rate)))?;
        let delay = r.output_delay();
        let want = (self.samples.len() as u64 * rate as u64).div_ceil(self.sample_rate as u64) as usize;
        let mut out = Vec::with_capacity(want + delay + 2 * chunk);
        let mut pos = 0;
        while out.len() < want + delay {
            let need = r.input_frames_next();
            let res = if pos + need <= self.samples.len() {
                let v = r.process(&[&self.samples[pos..pos + need]], None);
                pos += need;
                v
            } else if pos < self.samples.len() {
                let v = r.process_partial(Some(&[&self.samples[pos..]]), None);
                pos = self.samples.len();
                v
            } else {
                r.process_partial::<&[f32]>(None, None)
            };
            let res = res.map_err(|e| PipelineError::Audio(format!("resampling failed: {e}")))?;
            out.extend_from_slice(&res[0]);
        }
        Ok(Audio { samples: out[delay..delay + want].to_vec(), sample_rate: rate })
    }
}

/// Writes mono f32 samples as a 32-bit float WAV.
pub fn wav_bytes(samples: &[f32], sample_rate: u32) -> Vec<u8> {
    let spec = hound::WavSpec { channels: 1, sample_rate, bits_per_sample: 32, sample_format: hound::SampleFormat::Float };
    let mut cursor = std::io::Cursor::new(Vec::new());
    {
        let mut w = hound::WavWriter::new(&mut cursor, spec).expect("in-memory WAV writer");
        for &s in samples {
            w.write_sample(s).expect("in-memory WAV write");
        }
        w.finalize().expect("in-memory WAV finalize");
    }
    cursor.into_inner()
}

/// What one `speak` call produced.
#[derive(Debug, Clone)]
pub struct Speech {
    /// The delayed codes (BOS/prompt prefix and EOS tail included).
    pub generation: Generation,
    /// Audio frames decoded (= samples / 512).
    pub frames: usize,
    pub samples: usize,
}

/// Dia + the codec on one GPU.
pub struct Tts<'a> {
    pub gpu: &'a Gpu,
    pub dia: &'a DiaModel,
    pub dac: &'a DacModel,
}

impl<'a> Tts<'a> {
    /// Voice prompt audio → undelayed prompt codes `[frames, C]`: resample to 44.1 kHz, right-pad with zeros
    /// to a whole number of 512-sample frames (as the reference feature extractor does), DAC-encode.
    pub async fn prompt_codes(&self, audio: &Audio) -> Result<Vec<u32>, PipelineError> {
        if audio.samples.is_empty() {
            return Err(PipelineError::Audio("the voice prompt is empty".into()));
        }
        // Checked here too, since samples handed over directly (the browser's) skip `from_wav`.
        check_sample_rate(audio.sample_rate)?;
        check_samples(&audio.samples)?;
        let mut pcm = audio.resampled(SAMPLE_RATE)?.samples;
        let hop = 512;
        pcm.resize(pcm.len().div_ceil(hop) * hop, 0.0);
        let codes = self.dac.encode(self.gpu, &pcm).await?; // [C, T] codebook-major
        let c = self.dia.cfg.decoder.channels;
        let t = codes.len() / c;
        Ok((0..t).flat_map(|f| (0..c).map(move |ch| (f, ch))).map(|(f, ch)| codes[ch * t + f]).collect())
    }

    /// Speaks `text` (continuing the voice of `prompt`, whose transcript should begin `text`), calling
    /// `on_pcm` with consecutive chunks of 44.1 kHz samples as soon as they are final.
    pub async fn speak(
        &self,
        text: &str,
        prompt: Option<&Audio>,
        opts: &GenerateOptions,
        on_pcm: &mut dyn FnMut(&[f32]),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Speech, PipelineError> {
        let prompt_codes = match prompt {
            Some(a) => Some(self.prompt_codes(a).await?),
            None => None,
        };
        let mut session = Session::new(self.gpu, self.dia, &[text], prompt_codes.as_deref(), opts, false)?;
        let mut stream = self.frame_stream(on_pcm)?;
        let (generation, frames) = self.run_segment(&mut session, opts, &mut stream, true, &mut |_, _| {}, cancelled).await?;
        stream.finish().await?;
        Ok(Speech { frames: frames.len() / self.dia.cfg.decoder.channels, samples: stream.samples, generation })
    }

    /// The codec's streaming state for one continuous stream of audio.
    fn frame_stream<'f>(&self, on_pcm: &'f mut dyn FnMut(&[f32])) -> Result<FrameStream<'a, 'f>, PipelineError> {
        let (left, right) = self.dac.decoder_context();
        Ok(FrameStream {
            gpu: self.gpu,
            decoder: self.dac.stream_decoder(self.gpu, STREAM_FRAMES + left + right)?,
            left,
            right,
            channels: self.dia.cfg.decoder.channels,
            first_chunk: None,
            frames: Vec::new(),
            emitted: 0,
            on_pcm,
            samples: 0,
            error: None,
        })
    }

    /// Runs a prepared session, appending its new audio frames to `stream` (and decoding what they allow) as rows
    /// come in; `last`: no frames follow this session's in the stream. Returns the generation and its new frames
    /// (undelayed `[n, C]`, invalid codes clamped to 0, as the stream holds them). `on_rows` hears the rows
    /// generated so far.
    async fn run_segment(
        &self,
        session: &mut Session<'_>,
        opts: &GenerateOptions,
        stream: &mut FrameStream<'_, '_>,
        last: bool,
        on_rows: &mut dyn FnMut(usize, usize),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<(Generation, Vec<u32>), PipelineError> {
        let cfg = &self.dia.cfg;
        let c = cfg.decoder.channels;
        let offset = stream.len();
        let mut sink = SegmentSink {
            stream,
            rows: Vec::new(),
            delay: cfg.delay_pattern.clone(),
            eos: cfg.eos,
            start: session.prefix_rows(),
            pushed: session.prefix_rows(),
            offset,
            end: None,
            last,
            on_rows,
        };
        let generation = session.run(opts, &mut sink, cancelled).await;
        if let Some(e) = sink.stream.error.take() {
            return Err(e);
        }
        let generation = generation?;
        // The channel-0 EOS row ends the audio (HF batch_decode crop).
        let pads = (0..generation.rows).filter(|&r| generation.codes[r * c] == cfg.pad).count();
        // A generation cut before its EOS tail (max_new_tokens < 16) has frames whose later channels were never
        // produced: only final frames are audio.
        let end = (generation.rows - pads).saturating_sub(1).min(sink.final_frames()).max(sink.start);
        sink.end = Some(end);
        sink.push_final(end);
        let frames = sink.stream.frames[offset * c..].to_vec();
        Ok((generation, frames))
    }
}

/// Most new frames decoded per streamed window.
const STREAM_FRAMES: usize = 32;
/// New frames of the first streamed chunk (93 ms of audio), and of any chunk the pace does not allow to grow.
const FIRST_CHUNK_FRAMES: usize = 8;
/// Share of the audio queued ahead of playback that producing the next chunk may take.
const PACE_MARGIN: f64 = 0.75;

/// One continuous stream of undelayed audio frames — from one generation, or from the segments of a long script
/// one after another — decoded in overlapping windows as the frames come.
struct FrameStream<'a, 'f> {
    gpu: &'a Gpu,
    decoder: DacDecoder,
    /// Frames of context each window needs on each side (the codec's receptive field).
    left: usize,
    right: usize,
    channels: usize,
    /// When the first chunk was handed out, and the frames emitted by then.
    first_chunk: Option<(web_time::Instant, usize)>,
    /// Every frame so far, `[n, C]`, invalid codes clamped to 0.
    frames: Vec<u32>,
    /// Next frame to emit.
    emitted: usize,
    on_pcm: &'f mut dyn FnMut(&[f32]),
    samples: usize,
    error: Option<PipelineError>,
}

impl FrameStream<'_, '_> {
    fn len(&self) -> usize {
        self.frames.len() / self.channels
    }

    /// Codes of frames [a, b), codebook-major `[C, b − a]`.
    fn window_codes(&self, a: usize, b: usize) -> Vec<u32> {
        let c = self.channels;
        let mut out = vec![0u32; c * (b - a)];
        for ch in 0..c {
            for t in a..b {
                out[ch * (b - a) + t - a] = self.frames[t * c + ch];
            }
        }
        out
    }

    /// Emits frames [emitted, upto) in windows; `right_edge` is the last frame that may serve as context
    /// (the stream's end once known, so the window edge matches whole-sequence decoding there).
    async fn flush(&mut self, upto: usize, right_edge: usize) -> Result<(), PipelineError> {
        while self.emitted < upto {
            let b = upto.min(self.emitted + STREAM_FRAMES);
            let ws = self.emitted.saturating_sub(self.left);
            let we = (b + self.right).min(right_edge);
            let codes = self.window_codes(ws, we);
            let pcm = self.decoder.decode(self.gpu, &codes, we - ws).await?;
            let hop = pcm.len() / (we - ws);
            let chunk = &pcm[(self.emitted - ws) * hop..(b - ws) * hop];
            (self.on_pcm)(chunk);
            self.samples += chunk.len();
            self.emitted = b;
            if self.first_chunk.is_none() {
                self.first_chunk = Some((web_time::Instant::now(), b));
            }
        }
        Ok(())
    }

    /// Decodes the next chunk once the frames allow it: with `complete` (no frame will follow) everything, else
    /// up to the right context's frames before the last one.
    async fn advance(&mut self, complete: bool) -> Result<(), PipelineError> {
        let n = self.len();
        let upto = if complete { n } else { n.saturating_sub(self.right) };
        if upto >= self.emitted + self.next_chunk() {
            self.flush(upto, n).await?;
        }
        Ok(())
    }

    /// Emits every frame left (the stream has ended).
    async fn finish(&mut self) -> Result<(), PipelineError> {
        let n = self.len();
        self.flush(n, n).await
    }

    /// New frames the next chunk waits for: the largest of 32, 16 or 8 that, at the rate frames have been
    /// handed out since the first chunk, is ready within `PACE_MARGIN` of the audio queued ahead of real-time
    /// playback; 8 until a rate is known.
    fn next_chunk(&self) -> usize {
        let Some((t0, frames0)) = self.first_chunk else { return FIRST_CHUNK_FRAMES };
        let elapsed = t0.elapsed().as_secs_f64();
        let produced = self.emitted - frames0;
        if produced == 0 || elapsed <= 0.0 {
            return FIRST_CHUNK_FRAMES;
        }
        paced_chunk(produced as f64 / elapsed, self.samples as f64 / SAMPLE_RATE as f64 - elapsed)
    }
}

/// The largest chunk (32, 16 or 8 frames) that frames coming at `rate` per second deliver within `PACE_MARGIN`
/// of `ahead_s` seconds of queued audio; 8 when none does.
fn paced_chunk(rate: f64, ahead_s: f64) -> usize {
    [STREAM_FRAMES, STREAM_FRAMES / 2, FIRST_CHUNK_FRAMES]
        .into_iter()
        .find(|&s| s as f64 / rate <= PACE_MARGIN * ahead_s)
        .unwrap_or(FIRST_CHUNK_FRAMES)
}

/// Collects one session's delayed rows and moves its final frames into the stream.
struct SegmentSink<'s, 'a, 'f> {
    stream: &'s mut FrameStream<'a, 'f>,
    /// Delayed rows `[n, C]` so far (batch of one).
    rows: Vec<u32>,
    delay: Vec<usize>,
    eos: u32,
    /// First audio frame (after BOS and prompt), in this session's rows.
    start: usize,
    /// Next frame (in this session's rows) to move into the stream.
    pushed: usize,
    /// Stream index of this session's first frame.
    offset: usize,
    /// The channel-0 EOS row once seen: frames from it on are not audio.
    end: Option<usize>,
    /// No session follows this one in the stream.
    last: bool,
    on_rows: &'s mut dyn FnMut(usize, usize),
}

impl SegmentSink<'_, '_, '_> {
    fn channels(&self) -> usize {
        self.delay.len()
    }

    fn max_delay(&self) -> usize {
        self.delay.iter().copied().max().unwrap_or(0)
    }

    /// Frames whose codes are all known: frame t needs delayed rows up to t + max delay.
    fn final_frames(&self) -> usize {
        (self.rows.len() / self.channels()).saturating_sub(self.max_delay())
    }

    /// Moves frames [pushed, upto) into the stream, undelayed, invalid values clamped to 0.
    fn push_final(&mut self, upto: usize) {
        let c = self.channels();
        for t in self.pushed..upto {
            for (ch, &d) in self.delay.iter().enumerate() {
                let v = self.rows[(t + d) * c + ch];
                self.stream.frames.push(if v < self.eos { v } else { 0 });
            }
        }
        self.pushed = self.pushed.max(upto);
    }
}

impl RowSink for SegmentSink<'_, '_, '_> {
    /// The next chunk's frames plus the right context must be final: frame f is final with delayed row
    /// f + max delay.
    fn wanted_rows(&self) -> Option<usize> {
        if self.end.is_some() {
            return None;
        }
        let needed = self.stream.emitted + self.stream.next_chunk() + self.stream.right;
        Some(self.start + needed.saturating_sub(self.offset) + self.max_delay())
    }

    async fn rows(&mut self, first_row: usize, rows: &[u32]) -> Result<(), DiaError> {
        let c = self.channels();
        debug_assert_eq!(first_row * c, self.rows.len());
        for (i, row) in rows.chunks_exact(c).enumerate() {
            if self.end.is_none() && first_row + i >= self.start && row[0] == self.eos {
                self.end = Some(first_row + i);
            }
        }
        self.rows.extend_from_slice(rows);
        let generated = (self.rows.len() / c).saturating_sub(self.start);
        if generated > 0 {
            (self.on_rows)(generated, self.stream.emitted);
        }
        let finals = self.final_frames();
        let upto = self.end.map_or(finals, |e| finals.min(e));
        self.push_final(upto);
        // The stream is complete once this last session's frames reach its end.
        let complete = self.last && self.end.is_some_and(|e| finals >= e);
        if let Err(e) = self.stream.advance(complete).await {
            self.stream.error = Some(e);
            return Err(DiaError::Cancelled);
        }
        Ok(())
    }
}

/// A voice for `Tts::speak_script`: prompt audio and, for a script of more than one segment, its transcript.
#[derive(Debug, Clone, Copy)]
pub struct VoicePrompt<'p> {
    pub audio: &'p Audio,
    /// What the prompt audio says, with its speaker tags. Without it the script itself must begin with the
    /// transcript (as for `speak`), which only works for a script of one segment.
    pub transcript: Option<&'p str>,
}

/// Where a long script stands, reported at the start of every segment (`rows` 0, before its GPU work is
/// prepared) and with every batch of rows generated.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptProgress {
    /// Segment being generated (0-based) and how many there are.
    pub segment: usize,
    pub segments: usize,
    /// Rows generated so far for this segment, and the estimate of its rows (`segment::estimated_rows`).
    pub rows: usize,
    pub estimated_rows: usize,
    /// Audio frames handed out so far over the whole script.
    pub frames_out: usize,
}

/// One spoken segment of a script.
#[derive(Debug, Clone)]
pub struct SpokenSegment {
    /// The segment's own text (from `segment::split_script`).
    pub script_text: String,
    /// The text the model read: the context's transcripts, then the segment.
    pub text: String,
    /// The voice prompt codes it continued (undelayed `[frames, C]`): the user's voice and/or the previous
    /// segment's frames.
    pub prompt_codes: Vec<u32>,
    /// Whether the previous segment rode along as context.
    pub carried_previous: bool,
    pub generation: Generation,
    /// New audio frames (undelayed `[n, C]`, as streamed).
    pub frames: Vec<u32>,
}

/// What one `speak_script` call produced.
#[derive(Debug, Clone)]
pub struct ScriptSpeech {
    pub segments: Vec<SpokenSegment>,
    /// Audio frames and samples streamed in all.
    pub frames: usize,
    pub samples: usize,
}

/// Seed of segment `i`: the given one for the first (so a one-segment script is exactly `speak`), a distinct one
/// derived from it for each later segment (the same seed gives the same audio).
pub fn segment_seed(seed: u64, i: usize) -> u64 {
    if i == 0 {
        seed
    } else {
        seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}

/// Rows a segment is planned to need after its prompt: the user's `max_new_tokens` if set, else room for speech
/// `NEW_ROWS_FACTOR` times as long as estimated plus the 15-row EOS tail.
pub fn planned_new_rows(segment: &str, max_new_tokens: usize) -> usize {
    if max_new_tokens != usize::MAX {
        max_new_tokens
    } else {
        (NEW_ROWS_FACTOR * segment::estimated_rows(segment) as f64).ceil() as usize + 15
    }
}

/// How much longer than estimated a segment may turn out and still fit beside its context.
pub const NEW_ROWS_FACTOR: f64 = 1.6;

/// The context rule (docs/long-form.md): a segment continues the user's voice (always, when given) and the whole
/// previous segment — its frames and its text — when it made audio, the decoder keeps `planned_new_rows` after
/// them and the encoder takes both texts; otherwise the previous segment is left out. Returns (text, prompt codes, whether
/// the previous segment was carried).
pub fn segment_context(
    cfg: &crate::config::DiaConfig,
    voice: Option<(&str, &[u32])>,
    previous: Option<(&str, &[u32])>,
    segment: &str,
    max_new_tokens: usize,
) -> (String, Vec<u32>, bool) {
    let c = cfg.decoder.channels;
    // The transcripts go in front, one space apart; the segment itself is kept as it is (a one-segment script is
    // the caller's text byte for byte).
    let join = |context: &[&str]| {
        let context: Vec<&str> = context.iter().map(|p| p.trim()).filter(|p| !p.is_empty()).collect();
        if context.is_empty() {
            segment.to_string()
        } else {
            format!("{} {segment}", context.join(" "))
        }
    };
    let (vt, vc) = voice.unwrap_or(("", &[]));
    let new_rows = planned_new_rows(segment, max_new_tokens);
    // A previous segment that made no audio is not carried: its text without frames would be spoken again.
    if let Some((pt, pc)) = previous.filter(|(_, pc)| !pc.is_empty()) {
        let text = join(&[vt, pt]);
        let frames = (vc.len() + pc.len()) / c;
        let fits_rows = 1 + frames + new_rows <= cfg.decoder.max_positions;
        let fits_text = encode_text(&text).len() <= cfg.encoder.max_positions;
        if fits_rows && fits_text {
            return (text, [vc, pc].concat(), true);
        }
    }
    (join(&[vt]), vc.to_vec(), false)
}

impl Tts<'_> {
    /// Speaks a script of any length (up to `segment::MAX_SCRIPT_BYTES`) as one continuous stream: split into
    /// segments (`segment::split_script`), each generated as a continuation of the context `segment_context`
    /// chooses, their new frames decoded by one streaming codec. A script that is one segment is exactly
    /// `speak(script, voice audio)` (the transcript, if given, in front). `opts.max_new_tokens` applies to every
    /// segment; segment i samples with `segment_seed(seed, i)`. `cancelled` is checked within and between
    /// segments.
    #[allow(clippy::too_many_arguments)]
    pub async fn speak_script(
        &self,
        script: &str,
        voice: Option<VoicePrompt<'_>>,
        opts: &GenerateOptions,
        limits: &SegmentLimits,
        on_progress: &mut dyn FnMut(&ScriptProgress),
        on_pcm: &mut dyn FnMut(&[f32]),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<ScriptSpeech, PipelineError> {
        let segments = split_script(script, limits)?;
        if segments.len() > 1 && voice.is_some_and(|v| v.transcript.is_none()) {
            return Err(PipelineError::VoiceNeedsTranscript { segments: segments.len() });
        }
        let voice_codes = match voice {
            Some(v) => Some(self.prompt_codes(v.audio).await?),
            None => None,
        };
        let voice_ctx = voice_codes.as_deref().map(|codes| (voice.and_then(|v| v.transcript).unwrap_or(""), codes));
        // Every segment of a long script sizes its GPU buffers for the largest request, so memory stays flat.
        let reserve = if segments.len() > 1 { Reserve::full(self.dia) } else { Reserve::default() };
        let mut stream = self.frame_stream(on_pcm)?;
        let mut spoken: Vec<SpokenSegment> = Vec::with_capacity(segments.len());
        let n = segments.len();
        for (i, seg) in segments.iter().enumerate() {
            if cancelled() {
                return Err(DiaError::Cancelled.into());
            }
            let previous = spoken.last().map(|s| (s.script_text.as_str(), s.frames.as_slice()));
            let (text, prompt_codes, carried_previous) = segment_context(&self.dia.cfg, voice_ctx, previous, seg, opts.max_new_tokens);
            let mut seg_opts = opts.clone();
            seg_opts.sampling.seed = segment_seed(opts.sampling.seed, i);
            let estimated_rows = segment::estimated_rows(seg);
            let mut progress = ScriptProgress { segment: i, segments: n, rows: 0, estimated_rows, frames_out: stream.emitted };
            on_progress(&progress);
            let prompt = (!prompt_codes.is_empty()).then_some(prompt_codes.as_slice());
            let mut session = Session::with_reserve(self.gpu, self.dia, &[&text], prompt, &seg_opts, reserve)?;
            let (generation, frames) = self
                .run_segment(
                    &mut session,
                    &seg_opts,
                    &mut stream,
                    i + 1 == n,
                    &mut |rows, frames_out| {
                        progress.rows = rows;
                        progress.frames_out = frames_out;
                        on_progress(&progress);
                    },
                    cancelled,
                )
                .await?;
            drop(session);
            if i + 1 == n {
                stream.finish().await?;
            } else {
                stream.advance(false).await?;
            }
            spoken.push(SpokenSegment { script_text: seg.clone(), text, prompt_codes, carried_previous, generation, frames });
        }
        Ok(ScriptSpeech { frames: stream.emitted, samples: stream.samples, segments: spoken })
    }
}

#[cfg(test)]
mod tests {
    use super::{paced_chunk, segment_context};

    /// A previous segment is carried with its frames; one that made no frames is not (its text alone would make
    /// the next segment speak it again).
    #[test]
    fn a_previous_segment_without_audio_is_not_carried() {
        let cfg = crate::config::DiaConfig::from_json_str(include_str!("../../assets/tiny/dia/config.json")).unwrap();
        let c = cfg.decoder.channels;
        let frames = vec![7u32; 3 * c];
        let (text, codes, carried) = segment_context(&cfg, None, Some(("[S1] Hello there.", &frames)), "[S2] Hi.", 50);
        assert!(carried && text == "[S1] Hello there. [S2] Hi." && codes == frames, "{text:?} {carried}");
        let (text, codes, carried) = segment_context(&cfg, None, Some(("[S1] Hello there.", &[])), "[S2] Hi.", 50);
        assert!(!carried && text == "[S2] Hi." && codes.is_empty(), "{text:?} {carried}");
    }

    /// Frames per second of audio.
    const REAL_TIME: f64 = 44_100.0 / 512.0;

    #[test]
    fn chunks_grow_only_as_far_as_the_pace_allows() {
        // 4x real time with 186 ms queued: 32 frames take 93 ms, within 75 % of it.
        assert_eq!(paced_chunk(4.0 * REAL_TIME, 0.186), 32);
        // 2x real time with 186 ms queued: 32 frames take 186 ms (too long), 16 take 93 ms.
        assert_eq!(paced_chunk(2.0 * REAL_TIME, 0.186), 16);
        // 1.25x real time: even 16 frames (149 ms) would outlast the queue; stay at 8.
        assert_eq!(paced_chunk(1.25 * REAL_TIME, 0.150), 8);
        // Behind real time (nothing queued): the smallest chunk.
        assert_eq!(paced_chunk(0.5 * REAL_TIME, -0.2), 8);
    }
}
