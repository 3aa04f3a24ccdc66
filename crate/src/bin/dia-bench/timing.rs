//! Timing the pieces: random models, the encoder, decoder steps, `linear` alone, the copy ceiling, the DAC, whole
//! generations, scripts and time to first audio.

use std::cell::Cell;
use std::time::{Duration, Instant};

use dia_webgpu::config::{DacConfig, DiaConfig};
use dia_webgpu::dac::DacModel;
use dia_webgpu::dia::forward::PackedText;
use dia_webgpu::dia::tokenizer::encode_text;
use dia_webgpu::dia::{DiaError, DiaModel, GenerateOptions, Session};
use dia_webgpu::gpu::{Dispatch, Gpu};
use dia_webgpu::kernels::linear::{linear, LinearEpilogue};
use dia_webgpu::kernels::{GpuMatrix, Numerics};
use dia_webgpu::pipeline::{PipelineError, Tts};
use dia_webgpu::random::{self, Noise};

use crate::Result;
use crate::args::RandomWeights;
use crate::report::{WholeRun, ScriptRun, DecoderRun};

/// Frames in 10 s of 44.1 kHz audio at hop 512 (also what one decoder step adds: 1 frame ≈ 11.6 ms).
pub(crate) const FRAMES_PER_10S: f64 = 441_000.0 / 512.0;

/// Steps submitted and waited for before a timed decoder run (pipelines compiled, clocks up).
pub(crate) const WARMUP_STEPS: usize = 16;

/// Dia with random weights read from a noise block (generating 1.6 B values fresh would dominate the run), drawn
/// as `weights` says; channel 0's EOS row zeroed so generations run to their length.
pub(crate) fn random_dia(gpu: &Gpu, cfg: &DiaConfig, numerics: Numerics, weights: RandomWeights) -> Result<DiaModel> {
    const SEED: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut noise = match weights {
        RandomWeights::Uniform => Noise::new(SEED),
        RandomWeights::Gaussian => Noise::gaussian(SEED),
    };
    Ok(random::dia_model(gpu, cfg, numerics, &mut noise, true)?)
}

/// The codec's decoder with random weights (decode-only: the encoder's tensors are not loaded).
pub(crate) fn random_dac(gpu: &Gpu, cfg: &DacConfig, numerics: Numerics) -> Result<DacModel> {
    Ok(random::dac_decoder(gpu, cfg, numerics, &mut Noise::new(0xD1B5_4A32_D192_ED03))?)
}

/// `bytes` text tokens of plausible dialogue (speaker tags and ASCII).
pub(crate) fn text_tokens(bytes: usize) -> Vec<u32> {
    let sample = encode_text("[S1] Dia is an open-weights text to speech model. [S2] It makes dialogue, one voice per tag, with laughs and pauses (laughs). ");
    sample.iter().copied().cycle().take(bytes).collect()
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Milliseconds of `model.encode` (encoder + cross K/V of every layer) until the GPU is done: median of
/// `runs` after one warm-up. Includes the host's graph building, as a real request pays it.
pub(crate) fn time_encoder(gpu: &Gpu, model: &DiaModel, bytes: usize, runs: usize) -> Result<f64> {
    let tokens = text_tokens(bytes);
    let mut times = Vec::new();
    for i in 0..=runs {
        let t0 = Instant::now();
        let state = model.encode(gpu, PackedText::new(std::slice::from_ref(&tokens)));
        gpu.wait_idle()?;
        let t = ms(t0.elapsed());
        drop(state);
        if i > 0 {
            times.push(t);
        }
    }
    gpu.check_lost()?;
    Ok(median(times))
}

/// Decoder steps per second over `steps` steps submitted back to back with a single wait at the end.
///
/// With random weights the sampler may declare EOS early; the session then stops advancing positions,
/// but every step still records and runs the whole graph (layers, logits head, sampler), so the timing
/// measures the same work. Positions stay below the KV cache's length: the session is sized for the
/// decoder's full 3072 rows and warm-up plus timed steps are checked to fit.
pub(crate) fn time_steps(gpu: &Gpu, session: &mut Session, steps: usize) -> Result<DecoderRun> {
    for _ in 0..WARMUP_STEPS {
        session.submit_step();
    }
    gpu.wait_idle()?;
    let t0 = Instant::now();
    for _ in 0..steps {
        session.submit_step();
    }
    let host = t0.elapsed();
    gpu.wait_idle()?;
    let total = t0.elapsed();
    gpu.check_lost()?;
    Ok(DecoderRun {
        steps_per_s: steps as f64 / total.as_secs_f64(),
        ms_per_step: ms(total) / steps as f64,
        host_ms_per_step: ms(host) / steps as f64,
    })
}

/// Every matrix a decoder step reads: the decoder layers' (cross K/V excluded) and the logits head.
pub(crate) fn streamed_matrices(model: &DiaModel) -> Vec<&GpuMatrix> {
    let mut v: Vec<&GpuMatrix> = Vec::new();
    for l in &model.dec_layers {
        v.extend([&l.qkv, &l.o, &l.cross_q, &l.cross_o, &l.gate_up, &l.down]);
    }
    v.push(&model.logits);
    v
}

/// Seconds per pass of `dispatches`, recorded into one compute pass and submitted `passes` times back
/// to back (like decoder steps) after a short warm-up.
pub(crate) fn time_passes(gpu: &Gpu, dispatches: &[&Dispatch], passes: usize) -> Result<f64> {
    for _ in 0..3 {
        gpu.run(dispatches);
    }
    gpu.wait_idle()?;
    let t0 = Instant::now();
    for _ in 0..passes {
        gpu.run(dispatches);
    }
    gpu.wait_idle()?;
    gpu.check_lost()?;
    Ok(t0.elapsed().as_secs_f64() / passes as f64)
}

/// The small-M `linear` kernel alone over `mats` (M rows): seconds per pass. Every dispatch writes the
/// same output buffer, so they run one after another as in the decoder.
pub(crate) fn time_linear_only(gpu: &Gpu, mats: &[&GpuMatrix], m: u32, passes: usize) -> Result<f64> {
    let max_cols = mats.iter().map(|w| w.cols).max().unwrap_or(1) as usize;
    let max_rows = mats.iter().map(|w| w.rows).max().unwrap_or(1) as u64;
    let x = gpu.upload("bench.x", &Noise::new(7).take(m as usize * max_cols, 1.0));
    let y = gpu.buffer("bench.y", m as u64 * max_rows * 4);
    let ds: Vec<Dispatch> = mats.iter().map(|w| linear(gpu, &x, w, &y, m, LinearEpilogue::Store)).collect();
    time_passes(gpu, &ds.iter().collect::<Vec<_>>(), passes)
}

/// Device-to-device copy bandwidth (bytes read + written per second, GB/s) over two buffers of `bytes`
/// made outside the allocation counter. The source holds random data, not zeros.
pub(crate) fn copy_bandwidth(gpu: &Gpu, bytes: u64) -> Result<f64> {
    let make = |label| {
        gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    };
    let (src, dst) = (make("bench.copy_src"), make("bench.copy_dst"));
    let block: Vec<u8> = bytemuck::cast_slice(&Noise::new(3).take(4 << 20, 1.0)).to_vec();
    let mut at = 0;
    while at < bytes {
        let n = (block.len() as u64).min(bytes - at);
        gpu.queue.write_buffer(&src, at, &block[..n as usize]);
        gpu.queue.submit(std::iter::empty());
        at += n;
    }
    let copies = |n: usize| {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        for _ in 0..n {
            enc.copy_buffer_to_buffer(&src, 0, &dst, 0, bytes);
        }
        gpu.queue.submit([enc.finish()]);
    };
    copies(2);
    gpu.wait_idle()?;
    const REPS: usize = 20;
    let t0 = Instant::now();
    copies(REPS);
    gpu.wait_idle()?;
    let s = t0.elapsed().as_secs_f64() / REPS as f64;
    gpu.check_lost()?;
    Ok(2.0 * bytes as f64 / s / 1e9)
}

/// Milliseconds to decode `frames` frames with the DAC (codes already on the GPU, PCM left there):
/// median of `runs` after warm-up decodes (which also build the launch sequence) have settled.
pub(crate) fn time_dac(gpu: &Gpu, dac: &DacModel, frames: usize, runs: usize) -> Result<f64> {
    let mut dec = dac.decoder(gpu, frames)?;
    let book = dac.config.codebook_size as u64;
    let codes: Vec<u32> = (0..dac.config.n_codebooks * frames).map(|i| (i as u64 * 2_654_435_761 % book) as u32).collect();
    dec.write_codes(gpu, &codes, frames)?;
    let mut decode_once = || -> Result<f64> {
        let t0 = Instant::now();
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            dec.record(gpu, &mut pass, frames)?;
        }
        gpu.queue.submit([enc.finish()]);
        gpu.wait_idle()?;
        Ok(ms(t0.elapsed()))
    };
    // Warm-up: two seconds at least, then until three decodes in a row agree within 5 % (at most six seconds). The
    // GPU's clocks come back in steps after the CPU made the codec's random weights, with plateaus of several alike
    // decodes, so agreement alone is no sign (docs/performance.md, "After the CPU works alone").
    let warm = Instant::now();
    let mut last: Vec<f64> = Vec::new();
    while warm.elapsed() < Duration::from_secs(6) {
        last.push(decode_once()?);
        let tail = &last[last.len().saturating_sub(3)..];
        let settled = tail.len() == 3 && tail.iter().cloned().fold(f64::MIN, f64::max) <= 1.05 * tail.iter().cloned().fold(f64::MAX, f64::min);
        if settled && warm.elapsed() >= Duration::from_secs(2) {
            break;
        }
    }
    let times = (0..runs).map(|_| decode_once()).collect::<Result<Vec<f64>>>()?;
    eprintln!("DAC decodes of {frames} frames, ms: {}", times.iter().map(|t| format!("{t:.2}")).collect::<Vec<_>>().join(", "));
    let head = gpu.read_f32_blocking(&dec.pcm_buffer().slice(0, 4 * dec.pcm_len(frames).min(4096) as u64))?;
    if head.iter().any(|v| !v.is_finite()) {
        return Err("the DAC produced non-finite samples".into());
    }
    Ok(median(times))
}

/// Time to first audio: `Tts::speak` on 100 bytes of text with the default options, from the call
/// (tokenising, encoder and session set-up included) to the first PCM chunk it hands out; the generation is
/// cancelled there. Median of `runs` after one warm-up; None if no run produced audio.
/// `Tts::speak` of 100 bytes allowed `steps` new rows, `runs` times after a warm-up: median steps/s and first
/// audio.
/// `windows_in_flight`: `GenerateOptions::codec_windows_in_flight`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn time_whole(gpu: &Gpu, dia: &DiaModel, dac: &DacModel, steps: usize, runs: usize, decoder_alone: f64, windows_in_flight: usize) -> Result<WholeRun> {
    let text: String = "[S1] Dia is an open-weights text to speech model. [S2] It makes dialogue, one voice per tag. ".chars().cycle().take(100).collect();
    let tts = Tts { gpu, dia, dac };
    let opts = GenerateOptions { max_new_tokens: steps, codec_windows_in_flight: windows_in_flight, ..GenerateOptions::default() };
    let (mut rates, mut firsts, mut made) = (Vec::new(), Vec::new(), 0);
    let mut codec = Default::default();
    let calls = dia_webgpu::gpu::record_counts();
    for i in 0..=runs.max(1) {
        let first = Cell::new(None);
        let t0 = Instant::now();
        let mut on_pcm = |chunk: &[f32]| {
            if first.get().is_none() && !chunk.is_empty() {
                first.set(Some(ms(t0.elapsed())));
            }
        };
        let speech = pollster::block_on(tts.speak(&text, None, &opts, &mut on_pcm, &|| false))?;
        gpu.wait_idle()?;
        let seconds = t0.elapsed().as_secs_f64();
        let g = &speech.generation;
        made = g.rows - g.prefix_rows;
        codec = speech.codec;
        if i > 0 {
            rates.push(made as f64 / seconds);
            firsts.push(first.get().unwrap_or(f64::NAN));
        }
    }
    let steps_per_s = median(rates);
    let codec: dia_webgpu::pipeline::CodecStats = codec;
    let c = dia_webgpu::gpu::record_counts().since(calls);
    eprintln!(
        "whole generations with {windows_in_flight} codec window(s) in flight: set_pipeline {} recorded, {} left out as repeats; set_bind_group {} recorded, {} left out",
        c.pipelines_set, c.pipelines_skipped, c.bind_groups_set, c.bind_groups_skipped
    );
    Ok(WholeRun {
        steps: made,
        steps_per_s,
        first_audio_ms: median(firsts),
        vs_decoder_alone: steps_per_s / decoder_alone,
        codec_windows: codec.windows,
        codec_most_in_flight: codec.most_in_flight,
        codec_waits: codec.waits,
    })
}

/// One `Tts::speak_script` of `bytes` bytes of dialogue (after a short warm-up speak).
pub(crate) fn time_script(gpu: &Gpu, dia: &DiaModel, dac: &DacModel, bytes: usize) -> Result<ScriptRun> {
    use dia_webgpu::dia::segment::SegmentLimits;
    let lines = [
        "[S1] Dia is an open-weights text to speech model, and it speaks dialogue. ",
        "[S2] One voice per tag, kept across the whole script, however long it runs. ",
        "[S1] Long scripts are cut into segments of a few sentences each. (laughs) ",
        "[S2] Every segment continues the one before it, so the voices stay the same. ",
    ];
    let script: String = lines.iter().cycle().flat_map(|l| l.chars()).take(bytes).collect();
    let tts = Tts { gpu, dia, dac };
    let opts = GenerateOptions::default();
    gpu.wait_idle()?;
    gpu.release_reusable();
    gpu.reset_peak_allocated();
    let first = Cell::new(None);
    let t0 = Instant::now();
    let mut on_pcm = |chunk: &[f32]| {
        if first.get().is_none() && !chunk.is_empty() {
            first.set(Some(ms(t0.elapsed())));
        }
    };
    let speech = pollster::block_on(tts.speak_script(script.trim_end(), None, &opts, &SegmentLimits::default(), &mut |_| {}, &mut on_pcm, &|| false))?;
    gpu.wait_idle()?;
    let seconds = t0.elapsed().as_secs_f64();
    let steps: usize = speech.segments.iter().map(|s| s.generation.rows - s.generation.prefix_rows).sum();
    Ok(ScriptRun {
        bytes: script.trim_end().len(),
        segments: speech.segments.len(),
        steps,
        audio_s: speech.samples as f64 / 44_100.0,
        seconds,
        steps_per_s: steps as f64 / seconds,
        first_audio_ms: first.get().unwrap_or(f64::NAN),
        peak_bytes: gpu.peak_allocated_bytes(),
    })
}

pub(crate) fn time_ttfa(gpu: &Gpu, dia: &DiaModel, dac: &DacModel, runs: usize) -> Result<Option<f64>> {
    let tts = Tts { gpu, dia, dac };
    let mut times = Vec::new();
    for i in 0..=runs {
        if let (true, Some(t)) = (i > 0, ttfa_once(gpu, &tts)?) {
            times.push(t);
        }
    }
    Ok((!times.is_empty()).then(|| median(times)))
}

/// The 100-byte dialogue text every time-to-first-audio figure speaks.
pub(crate) fn ttfa_text() -> String {
    "[S1] Dia is an open-weights text to speech model. [S2] It makes dialogue, one voice per tag. ".chars().cycle().take(100).collect()
}

/// One `Tts::speak` of 100 bytes with the default options, cancelled at its first audio: milliseconds from the
/// call to the first PCM chunk (None: no audio came).
pub(crate) fn ttfa_once(gpu: &Gpu, tts: &Tts) -> Result<Option<f64>> {
    let text = ttfa_text();
    let opts = GenerateOptions::default();
    let first = Cell::new(None);
    let t0 = Instant::now();
    let mut on_pcm = |chunk: &[f32]| {
        if first.get().is_none() && !chunk.is_empty() {
            first.set(Some(ms(t0.elapsed())));
        }
    };
    let cancelled = || first.get().is_some();
    match pollster::block_on(tts.speak(&text, None, &opts, &mut on_pcm, &cancelled)) {
        Ok(_) | Err(PipelineError::Dia(DiaError::Cancelled)) => {}
        Err(e) => return Err(e.into()),
    }
    gpu.wait_idle()?;
    Ok(first.get())
}
