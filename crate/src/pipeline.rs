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
use crate::dia::{DiaError, DiaModel, GenerateOptions, Generation, Session};
use crate::gpu::Gpu;

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
            PipelineError::Audio(_) | PipelineError::SampleRate { .. } | PipelineError::SampleValue { .. } => false,
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
        let cfg = &self.dia.cfg;
        let (left, right) = self.dac.decoder_context();
        let mut stream = StreamDecoder {
            gpu: self.gpu,
            decoder: self.dac.stream_decoder(self.gpu, STREAM_FRAMES + left + right)?,
            left,
            right,
            first_chunk: None,
            rows: Vec::new(),
            delay: cfg.delay_pattern.clone(),
            eos: cfg.eos,
            start: session.prefix_rows(),
            emitted: session.prefix_rows(),
            end: None,
            on_pcm,
            samples: 0,
            error: None,
        };
        let generation = session.run(opts, &mut stream, cancelled).await;
        if let Some(e) = stream.error.take() {
            return Err(e);
        }
        let generation = generation?;
        // The channel-0 EOS row ends the audio (HF batch_decode crop); flush everything up to it.
        let c = cfg.decoder.channels;
        let pads = (0..generation.rows).filter(|&r| generation.codes[r * c] == cfg.pad).count();
        // A generation cut before its EOS tail (max_new_tokens < 16) has frames whose later channels were never
        // produced: only final frames are audio.
        let end = (generation.rows - pads).saturating_sub(1).min(stream.final_frames()).max(stream.start);
        stream.end = Some(end);
        stream.flush(end, end).await?;
        Ok(Speech { frames: stream.emitted - stream.start, samples: stream.samples, generation })
    }
}

/// Most new frames decoded per streamed window.
const STREAM_FRAMES: usize = 32;
/// New frames of the first streamed chunk (93 ms of audio), and of any chunk the pace does not allow to grow.
const FIRST_CHUNK_FRAMES: usize = 8;
/// Share of the audio queued ahead of playback that producing the next chunk may take.
const PACE_MARGIN: f64 = 0.75;

/// Collects delayed rows and decodes the final frames in overlapping windows.
struct StreamDecoder<'a, 'f> {
    gpu: &'a Gpu,
    decoder: DacDecoder,
    /// Frames of context each window needs on each side (the codec's receptive field).
    left: usize,
    right: usize,
    /// When the first chunk was handed out, and the frames emitted by then.
    first_chunk: Option<(web_time::Instant, usize)>,
    /// Delayed rows `[n, C]` so far (batch of one).
    rows: Vec<u32>,
    delay: Vec<usize>,
    eos: u32,
    /// First audio frame (after BOS and prompt).
    start: usize,
    /// Next frame to emit.
    emitted: usize,
    /// The channel-0 EOS row once seen: frames from it on are not audio.
    end: Option<usize>,
    on_pcm: &'f mut dyn FnMut(&[f32]),
    samples: usize,
    error: Option<PipelineError>,
}

impl StreamDecoder<'_, '_> {
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

    /// Undelayed codes of frames [a, b), codebook-major `[C, b − a]`, invalid values clamped to 0.
    fn window_codes(&self, a: usize, b: usize) -> Vec<u32> {
        let c = self.channels();
        let mut out = vec![0u32; c * (b - a)];
        for (ch, &d) in self.delay.iter().enumerate() {
            for t in a..b {
                let v = self.rows[(t + d) * c + ch];
                out[ch * (b - a) + t - a] = if v < self.eos { v } else { 0 };
            }
        }
        out
    }

    /// Emits frames [emitted, upto) in windows; `right_edge` is the last frame that may serve as context
    /// (the sequence end once known, so the window edge matches whole-sequence decoding there).
    async fn flush(&mut self, upto: usize, right_edge: usize) -> Result<(), PipelineError> {
        while self.emitted < upto {
            let b = upto.min(self.emitted + STREAM_FRAMES);
            let ws = self.emitted.saturating_sub(self.left).max(self.start);
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

impl RowSink for StreamDecoder<'_, '_> {
    /// The next chunk's frames plus the right context must be final: frame f is final with delayed row
    /// f + max delay.
    fn wanted_rows(&self) -> Option<usize> {
        if self.end.is_some() {
            return None;
        }
        Some(self.emitted + self.next_chunk() + self.right + self.max_delay())
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
        let finals = self.final_frames();
        // With the end known, frames up to it are exact with the end as the window edge; before that, keep
        // the right context's final frames to the right of every emitted one.
        let (upto, edge) = match self.end {
            Some(e) if finals >= e => (e, e),
            Some(e) => (finals.saturating_sub(self.right).min(e), finals),
            None => (finals.saturating_sub(self.right), finals),
        };
        if upto >= self.emitted + self.next_chunk() {
            if let Err(e) = self.flush(upto, edge).await {
                self.error = Some(e);
                return Err(DiaError::Cancelled);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::paced_chunk;

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
