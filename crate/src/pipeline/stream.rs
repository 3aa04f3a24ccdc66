//! The stream scheduler: one continuous stream of audio frames, decoded by the codec in overlapping windows as
//! the decoder makes them final, in chunks as large as the measured pace allows.
//!
//! A frame of audio codes is final once the delayed row `frame + max_delay` exists (the delay pattern). The
//! codec decodes overlapping windows of final frames — the new ones plus the decoder's receptive field on each
//! side (`DacModel::decoder_context`: 10 frames each way for the 44.1 kHz DAC) — and emits only the new samples,
//! so the concatenated stream equals decoding the whole sequence to within float error. The first chunk is small
//! (time to first audio). Later chunks grow up to `STREAM_FRAMES` — less of the GPU spent on recomputed context —
//! as far as the measured pace allows: a chunk must be ready, at the rate frames have been coming, well before the
//! audio already handed out (if played from the first chunk on) runs out, so a device slower than about twice real
//! time keeps small chunks instead of stalling playback.
//!
//! Windows do not stall the decoder: a window's decode and the copy of its PCM into a staging buffer are submitted
//! between the decoder's steps, and its samples are handed out (in order) once that buffer maps, found at a later
//! readback of rows, while the decoder's steps keep the GPU busy. At most `GenerateOptions::codec_windows_in_flight`
//! windows are on the GPU at once (one staging buffer each, reused); the first window is waited for, so that
//! the first audio comes as soon as it can.

use std::collections::VecDeque;

use crate::dac::{DacDecoder, DacError};
use crate::dia::generate::RowSink;
use crate::dia::{GenerateOptions, Generation, Session};
use crate::gpu::{Gpu, GpuError};

use super::{PipelineError, Tts, SAMPLE_RATE};

impl<'a> Tts<'a> {
    /// The codec's streaming state for one continuous stream of audio.
    /// `windows_in_flight`: how many windows' decodes may be on the GPU at once (1: each is waited for).
    pub(super) fn frame_stream<'f>(&self, on_pcm: &'f mut dyn FnMut(&[f32]), windows_in_flight: usize) -> Result<FrameStream<'a, 'f>, PipelineError> {
        let (left, right) = self.dac.decoder_context();
        Ok(FrameStream {
            gpu: self.gpu,
            decoder: self.dac.stream_decoder(self.gpu, STREAM_FRAMES + left + right)?,
            left,
            right,
            channels: self.dia.cfg.decoder.channels,
            first_chunk: None,
            frames: Vec::new(),
            submitted: 0,
            emitted: 0,
            on_pcm,
            samples: 0,
            limit: windows_in_flight.max(1),
            staging: Vec::new(),
            free: Vec::new(),
            in_flight: VecDeque::new(),
            stats: CodecStats::default(),
        })
    }

    /// Runs a prepared session, appending its new audio frames to `stream` (and decoding what they allow) as rows
    /// come in; `last`: no frames follow this session's in the stream. Returns the generation and its new frames
    /// (undelayed `[n, C]`, invalid codes clamped to 0, as the stream holds them). `on_rows` hears the rows
    /// generated so far.
    pub(super) async fn run_segment(
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
            cancelled,
        };
        let generation = session.run_with(opts, &mut sink, cancelled).await?;
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
pub(super) const STREAM_FRAMES: usize = 32;
/// New frames of the first streamed chunk (93 ms of audio), and of any chunk the pace does not allow to grow.
const FIRST_CHUNK_FRAMES: usize = 8;
/// Share of the audio queued ahead of playback that producing the next chunk may take.
const PACE_MARGIN: f64 = 0.75;

/// One continuous stream of undelayed audio frames — from one generation, or from the segments of a long script
/// one after another — decoded in overlapping windows as the frames come.
pub(super) struct FrameStream<'a, 'f> {
    gpu: &'a Gpu,
    decoder: DacDecoder,
    /// Frames of context each window needs on each side (the codec's receptive field).
    left: usize,
    right: usize,
    channels: usize,
    /// When the first chunk was handed out, and the frames emitted by then.
    first_chunk: Option<(web_time::Instant, usize)>,
    /// Every frame so far, `[n, C]`, invalid codes clamped to 0.
    pub(super) frames: Vec<u32>,
    /// Next frame whose window is to be submitted.
    submitted: usize,
    /// Next frame to hand out (frames before it went to `on_pcm`).
    pub(super) emitted: usize,
    on_pcm: &'f mut dyn FnMut(&[f32]),
    /// Samples handed out.
    pub(super) samples: usize,
    /// Most windows on the GPU at once.
    limit: usize,
    /// Staging buffers for windows' PCM (`limit` at most, made as needed), and those not in use.
    staging: Vec<wgpu::Buffer>,
    free: Vec<usize>,
    /// Submitted windows whose samples are not handed out yet, oldest first.
    in_flight: VecDeque<InFlight>,
    pub(super) stats: CodecStats,
}

/// A window whose decode and PCM copy into `staging[slot]` are submitted.
struct InFlight {
    slot: usize,
    /// The window's samples to hand out: `[skip, skip + len)` of its PCM (the rest is context).
    skip: usize,
    len: usize,
    /// Frames handed out once it is (its last new frame + 1).
    upto: usize,
    submission: wgpu::SubmissionIndex,
    mapped: futures::channel::oneshot::Receiver<Result<(), wgpu::BufferAsyncError>>,
}

/// What a stream's codec windows did (`Speech::codec`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CodecStats {
    /// Windows decoded.
    pub windows: usize,
    /// Most windows on the GPU at once (submitted, samples not yet handed out), the one just submitted included.
    pub most_in_flight: usize,
    /// Times the host blocked for a window's samples: the first window, a window when `codec_windows_in_flight`
    /// were already on the GPU, each window on the synchronous path, and what is left at the end.
    pub waits: usize,
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

    /// Submits the windows of frames [submitted, upto); `right_edge` is the last frame that may serve as context
    /// (the stream's end once known, so the window edge matches whole-sequence decoding there). Waits for the
    /// oldest window when `limit` are on the GPU, and for the first window (time to first audio).
    async fn flush(&mut self, upto: usize, right_edge: usize) -> Result<(), DacError> {
        while self.submitted < upto {
            let b = upto.min(self.submitted + STREAM_FRAMES);
            let ws = self.submitted.saturating_sub(self.left);
            let we = (b + self.right).min(right_edge);
            if self.in_flight.len() >= self.limit {
                self.hand_out_oldest().await?;
            }
            self.submit_window(ws, we, b)?;
            if self.first_chunk.is_none() || self.limit == 1 {
                self.hand_out_oldest().await?;
            }
        }
        Ok(())
    }

    /// Records the decode of frames [ws, we) and the copy of its PCM into a free staging buffer, submits them and
    /// asks for the buffer's mapping; frames [submitted, b) are the window's new ones.
    fn submit_window(&mut self, ws: usize, we: usize, b: usize) -> Result<(), DacError> {
        let frames = we - ws;
        self.decoder.write_codes(self.gpu, &self.window_codes(ws, we), frames)?;
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            self.decoder.record(self.gpu, &mut pass, frames)?;
        }
        let bytes = self.decoder.pcm_len(frames) as u64 * 4;
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.staging.push(self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("dac.pcm_readback"),
                    size: self.decoder.pcm_len(self.decoder.max_frames()) as u64 * 4,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }));
                self.staging.len() - 1
            }
        };
        let pcm = self.decoder.pcm_buffer();
        enc.copy_buffer_to_buffer(&pcm.buf, pcm.offset, &self.staging[slot], 0, bytes);
        let submission = self.gpu.queue.submit([enc.finish()]);
        let (tx, mapped) = futures::channel::oneshot::channel();
        self.staging[slot].slice(..bytes).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        let hop = self.decoder.pcm_len(frames) / frames;
        self.in_flight.push_back(InFlight { slot, skip: (self.submitted - ws) * hop, len: (b - self.submitted) * hop, upto: b, submission, mapped });
        self.submitted = b;
        self.stats.windows += 1;
        self.stats.most_in_flight = self.stats.most_in_flight.max(self.in_flight.len());
        self.gpu.poll_nonblocking();
        Ok(())
    }

    /// Hands out the windows whose samples have arrived, in order, without waiting; stops once `cancelled`
    /// (nothing more reaches `on_pcm` after a cancel).
    async fn hand_out_ready(&mut self, cancelled: &dyn Fn() -> bool) -> Result<(), DacError> {
        if self.in_flight.is_empty() {
            return Ok(());
        }
        self.gpu.poll_nonblocking();
        while let Some(front) = self.in_flight.front_mut() {
            if cancelled() {
                break;
            }
            match front.mapped.try_recv() {
                Ok(Some(result)) => self.hand_out(result).await?,
                Ok(None) => break,
                Err(_) => return Err(self.gpu.lost_or(map_dropped()).await.into()),
            }
        }
        Ok(())
    }

    /// Waits for the oldest window's samples and hands them out.
    async fn hand_out_oldest(&mut self) -> Result<(), DacError> {
        let Some(front) = self.in_flight.front_mut() else { return Ok(()) };
        let result = match front.mapped.try_recv() {
            Ok(Some(result)) => result,
            Ok(None) => {
                self.stats.waits += 1;
                // Only this window's submission: the decoder's steps submitted after it keep the GPU busy.
                if let Err(e) = self.gpu.wait_for(front.submission.clone()) {
                    return Err(self.gpu.lost_or(e).await.into());
                }
                match (&mut front.mapped).await {
                    Ok(result) => result,
                    Err(_) => return Err(self.gpu.lost_or(map_dropped()).await.into()),
                }
            }
            Err(_) => return Err(self.gpu.lost_or(map_dropped()).await.into()),
        };
        self.hand_out(result).await
    }

    /// Hands out the oldest window's samples, its mapping `result` in.
    async fn hand_out(&mut self, result: Result<(), wgpu::BufferAsyncError>) -> Result<(), DacError> {
        let w = self.in_flight.pop_front().expect("a window in flight");
        let staging = &self.staging[w.slot];
        let range = (w.skip * 4) as u64..((w.skip + w.len) * 4) as u64;
        let chunk = result.map_err(|e| GpuError::Readback(e.to_string())).and_then(|()| {
            let view = staging.slice(range).get_mapped_range().map_err(|e| GpuError::Readback(e.to_string()))?;
            Ok(bytemuck::pod_collect_to_vec::<u8, f32>(&view))
        });
        // A readback fails when the device is lost under it: say so rather than "map failed".
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => return Err(self.gpu.lost_or(e).await.into()),
        };
        staging.unmap();
        self.free.push(w.slot);
        // An error the GPU raised meanwhile (validation, memory) makes these samples suspect: report it instead.
        self.gpu.check()?;
        (self.on_pcm)(&chunk);
        self.samples += chunk.len();
        self.emitted = w.upto;
        if self.first_chunk.is_none() {
            self.first_chunk = Some((web_time::Instant::now(), w.upto));
        }
        Ok(())
    }

    /// Hands out what has arrived, then submits the next chunk once the frames allow it: with `complete` (no frame
    /// will follow) everything, else up to the right context's frames before the last one.
    pub(super) async fn advance(&mut self, complete: bool, cancelled: &dyn Fn() -> bool) -> Result<(), DacError> {
        self.hand_out_ready(cancelled).await?;
        // Submitting now could mean waiting for (and handing out) the oldest window: not after a cancel.
        if cancelled() {
            return Ok(());
        }
        let n = self.len();
        let upto = if complete { n } else { n.saturating_sub(self.right) };
        if upto >= self.submitted + self.next_chunk() {
            self.flush(upto, n).await?;
        }
        Ok(())
    }

    /// Emits every frame left (the stream has ended): submits the last windows and hands out all in order.
    pub(super) async fn finish(&mut self) -> Result<(), DacError> {
        let n = self.len();
        self.flush(n, n).await?;
        while !self.in_flight.is_empty() {
            self.hand_out_oldest().await?;
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

fn map_dropped() -> GpuError {
    GpuError::Readback("map callback dropped".into())
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
    cancelled: &'s dyn Fn() -> bool,
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
    /// The codec failed decoding a window.
    type Error = DacError;

    /// The next chunk's frames plus the right context must be final: frame f is final with delayed row
    /// f + max delay.
    fn wanted_rows(&self) -> Option<usize> {
        if self.end.is_some() {
            return None;
        }
        let needed = self.stream.submitted + self.stream.next_chunk() + self.stream.right;
        Some(self.start + needed.saturating_sub(self.offset) + self.max_delay())
    }

    async fn rows(&mut self, first_row: usize, rows: &[u32]) -> Result<(), DacError> {
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
        self.stream.advance(complete, self.cancelled).await
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
