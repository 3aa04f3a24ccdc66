//! Voice prompt audio in: WAV decoding, checks on rates and samples, resampling to the codec's rate; and WAV out.

use super::PipelineError;

/// Voice prompt sample rates accepted for resampling (telephone audio up to 768 kHz studio rates). The
/// resampler's FFT length grows with the rate and the output with `SAMPLE_RATE / rate`, so a rate merely
/// claimed by a WAV header must not reach it unchecked.
pub const MIN_PROMPT_SAMPLE_RATE: u32 = 8_000;
pub const MAX_PROMPT_SAMPLE_RATE: u32 = 768_000;

/// Largest magnitude a voice prompt sample may have. Integer PCM decodes to [-1, 1) and float WAVs are
/// nominally the same (some tools scale to ±32768); NaN, ±inf or astronomically large values would turn the
/// resampler's FFT into NaN (and used to panic inside it).
pub const MAX_PROMPT_AMPLITUDE: f32 = 1.0e6;

/// `PipelineError::SampleValue` for the first sample that is not finite or beyond `MAX_PROMPT_AMPLITUDE`.
pub(super) fn check_samples(samples: &[f32]) -> Result<(), PipelineError> {
    // `!(|x| <= max)` also catches NaN.
    match samples.iter().position(|x| !(x.abs() <= MAX_PROMPT_AMPLITUDE)) {
        Some(index) => Err(PipelineError::SampleValue { index, value: samples[index], max: MAX_PROMPT_AMPLITUDE }),
        None => Ok(()),
    }
}

/// `PipelineError::SampleRate` unless voice prompts may have `rate`.
pub(super) fn check_sample_rate(rate: u32) -> Result<(), PipelineError> {
    if (MIN_PROMPT_SAMPLE_RATE..=MAX_PROMPT_SAMPLE_RATE).contains(&rate) {
        Ok(())
    } else {
        Err(PipelineError::SampleRate { rate, min: MIN_PROMPT_SAMPLE_RATE, max: MAX_PROMPT_SAMPLE_RATE })
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
