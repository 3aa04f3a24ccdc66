//! The one public entry point: text (+ optional voice prompt audio) → PCM, streamed in chunks while the
//! decoder is still generating (`stream`: how chunks are scheduled). Voice prompt audio in `audio`, long scripts
//! in `script`, lists of texts in `batch`, compiling every pipeline at load in `prepare`.

use crate::dac::{DacError, DacModel};
use crate::dia::segment::ScriptError;
use crate::dia::{DiaError, DiaModel, GenerateOptions, Generation, RunError, Session};
use crate::gpu::Gpu;

mod audio;
mod batch;
mod prepare;
mod script;
mod stream;
pub use audio::{wav_bytes, Audio, MAX_PROMPT_AMPLITUDE, MAX_PROMPT_SAMPLE_RATE, MIN_PROMPT_SAMPLE_RATE};
pub use batch::{list_text, BatchProgress, BatchSpeech, SpokenText};
pub use script::{planned_new_rows, segment_context, segment_seed, ScriptProgress, ScriptSpeech, SpokenSegment, VoicePrompt, NEW_ROWS_FACTOR};
pub use prepare::{CacheUse, Prepared};
pub use stream::CodecStats;
#[cfg(not(target_arch = "wasm32"))]
pub use prepare::{cache_file_name, read_cache_file, write_cache_file, PipelineCacheDir};

/// Sample rate of everything this pipeline produces and of the codec.
pub const SAMPLE_RATE: u32 = 44_100;

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

/// A generation stopped by its own error or by the streaming codec's.
impl From<RunError<DacError>> for PipelineError {
    fn from(e: RunError<DacError>) -> Self {
        match e {
            RunError::Dia(e) => PipelineError::Dia(e),
            RunError::Sink(e) => PipelineError::Dac(e),
        }
    }
}

/// What one `speak` call produced.
#[derive(Debug, Clone)]
pub struct Speech {
    /// The delayed codes (BOS/prompt prefix and EOS tail included).
    pub generation: Generation,
    /// Audio frames decoded (= samples / 512).
    pub frames: usize,
    pub samples: usize,
    /// What the streaming codec's windows did (how many, how many on the GPU at once, waits).
    pub codec: CodecStats,
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
        audio::check_sample_rate(audio.sample_rate)?;
        audio::check_samples(&audio.samples)?;
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
        let mut stream = self.frame_stream(on_pcm, opts.codec_windows_in_flight)?;
        let (generation, frames) = self.run_segment(&mut session, opts, &mut stream, true, &mut |_, _| {}, cancelled).await?;
        stream.finish().await?;
        Ok(Speech { frames: frames.len() / self.dia.cfg.decoder.channels, samples: stream.samples, generation, codec: stream.stats })
    }
}

