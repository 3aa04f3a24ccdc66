//! Long scripts: split into segments, each generated as the continuation of its context, all decoded as one
//! stream (docs/long-form.md).

use crate::dia::segment::{self, split_script, SegmentLimits};
use crate::dia::tokenizer::encode_text;
use crate::dia::{DiaError, GenerateOptions, Generation, Reserve, Session};

use super::{Audio, PipelineError, Tts};

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
        let mut stream = self.frame_stream(on_pcm, opts.codec_windows_in_flight)?;
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
                stream.advance(false, cancelled).await?;
            }
            spoken.push(SpokenSegment { script_text: seg.clone(), text, prompt_codes, carried_previous, generation, frames });
        }
        Ok(ScriptSpeech { frames: stream.emitted, samples: stream.samples, segments: spoken })
    }
}

#[cfg(test)]
mod tests {
    use super::segment_context;

    /// A previous segment is carried with its frames; one that made no frames is not (its text alone would make
    /// the next segment speak it again).
    #[test]
    fn a_previous_segment_without_audio_is_not_carried() {
        let cfg = crate::config::DiaConfig::from_json_str(include_str!("../../../assets/tiny/dia/config.json")).unwrap();
        let c = cfg.decoder.channels;
        let frames = vec![7u32; 3 * c];
        let (text, codes, carried) = segment_context(&cfg, None, Some(("[S1] Hello there.", &frames)), "[S2] Hi.", 50);
        assert!(carried && text == "[S1] Hello there. [S2] Hi." && codes == frames, "{text:?} {carried}");
        let (text, codes, carried) = segment_context(&cfg, None, Some(("[S1] Hello there.", &[])), "[S2] Hi.", 50);
        assert!(!carried && text == "[S2] Hi." && codes.is_empty(), "{text:?} {carried}");
    }
}
