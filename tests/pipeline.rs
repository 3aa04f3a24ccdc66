//! Text (+ voice prompt) → PCM end to end against the reference fixtures, streaming versus whole decoding,
//! cancellation, and prompt audio handling.
mod common;

use common::{fixtures_dir, load_expected, snr_db, test_gpu};
use dia_webgpu::dac::DacModel;
use dia_webgpu::dia::delay::codes_for_decode;
use dia_webgpu::dia::{load_model_dir, DiaError, DiaModel, GenerateOptions};
use dia_webgpu::gpu::Gpu;
use dia_webgpu::kernels::sampling::SamplingParams;
use dia_webgpu::kernels::Numerics;
use dia_webgpu::pipeline::{wav_bytes, Audio, PipelineError, Tts};

fn models(gpu: &Gpu, numerics: Numerics) -> (DiaModel, DacModel) {
    let dir = fixtures_dir();
    (load_model_dir(gpu, &dir.join("dia"), numerics).unwrap(), DacModel::load_dir(gpu, &dir.join("dac"), numerics, true).unwrap())
}

/// The fixture's dimensions with random weights: unlike the fixture (whose EOS row was scaled so that runs
/// end within a few dozen rows) it speaks for as long as asked, which streaming tests need.
fn long_talker(gpu: &Gpu, numerics: Numerics) -> (DiaModel, DacModel) {
    let dir = fixtures_dir();
    let cfg = dia_webgpu::config::DiaConfig::from_json_str(&std::fs::read_to_string(dir.join("dia/config.json")).unwrap()).unwrap();
    (DiaModel::random(gpu, &cfg, numerics, 11).unwrap(), DacModel::load_dir(gpu, &dir.join("dac"), numerics, false).unwrap())
}

fn meta() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures_dir().join("expected.json")).unwrap()).unwrap()
}

fn greedy(meta: &serde_json::Value) -> GenerateOptions {
    let k = &meta["generate_kwargs"];
    GenerateOptions {
        sampling: SamplingParams {
            cfg_scale: k["guidance_scale"].as_f64().unwrap() as f32,
            cfg_filter_top_k: k["top_k"].as_u64().unwrap() as u32,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        },
        max_new_tokens: k["max_new_tokens"].as_u64().unwrap() as usize,
        ..GenerateOptions::default()
    }
}

fn speak(tts: &Tts, text: &str, prompt: Option<&Audio>, opts: &GenerateOptions) -> (Vec<f32>, usize, dia_webgpu::pipeline::Speech) {
    let mut pcm = Vec::new();
    let mut chunks = 0;
    let s = pollster::block_on(tts.speak(text, prompt, opts, &mut |c: &[f32]| {
        chunks += 1;
        pcm.extend_from_slice(c)
    }, &|| false))
    .unwrap();
    assert_eq!(pcm.len(), s.samples);
    (pcm, chunks, s)
}

#[test]
fn parity_pipeline_pcm_f32() {
    let exp = load_expected(&fixtures_dir().join("expected.safetensors"));
    let meta = meta();
    let texts: Vec<&str> = meta["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    let gpu = test_gpu();
    let (dia, dac) = models(&gpu, Numerics::F32);
    let tts = Tts { gpu: &gpu, dia: &dia, dac: &dac };
    let opts = greedy(&meta);
    let prompt = Audio { samples: exp["clone.prompt_pcm"].1.clone(), sample_rate: 44_100 };
    for (case, text, prompt) in [("t0", texts[0], None), ("t1", texts[1], None), ("clone", texts[0], Some(&prompt))] {
        let want = &exp[&format!("{case}.pcm")].1;
        let (pcm, chunks, _) = speak(&tts, text, prompt, &opts);
        assert_eq!(pcm.len(), want.len(), "{case}: {} samples, reference {}", pcm.len(), want.len());
        let snr = snr_db(&pcm, want);
        println!("{case}.pcm: {} samples in {chunks} chunks, SNR {snr:.1} dB", pcm.len());
        assert!(snr >= 60.0, "{case}.pcm SNR {snr:.1} dB");
    }
}

#[test]
fn pipeline_streaming_equals_whole_decoding() {
    let gpu = test_gpu();
    let (dia, dac) = long_talker(&gpu, Numerics::F32);
    let tts = Tts { gpu: &gpu, dia: &dia, dac: &dac };
    // A sampled run long enough for several streamed windows.
    let mut opts = GenerateOptions { max_new_tokens: 160, ..GenerateOptions::default() };
    opts.sampling.seed = 3;
    let (pcm, chunks, speech) = speak(&tts, "[S1] Streaming should not change a single sample. [S2] Right.", None, &opts);
    let g = &speech.generation;
    let cfg = &dia.cfg;
    let codes = codes_for_decode(&g.item(0), &cfg.delay_pattern, cfg.bos, cfg.pad, cfg.eos, Some(g.prefix_rows));
    let frames = codes.len() / cfg.decoder.channels;
    let cm: Vec<u32> = (0..cfg.decoder.channels).flat_map(|ch| (0..frames).map(move |t| (t, ch))).map(|(t, ch)| codes[t * cfg.decoder.channels + ch]).collect();
    let whole = dac.decode_blocking(&gpu, &cm, frames).unwrap();
    assert_eq!(pcm.len(), whole.len());
    let max_diff = pcm.iter().zip(&whole).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let snr = snr_db(&pcm, &whole);
    println!("streamed {frames} frames in {chunks} chunks: max |diff| {max_diff:.2e}, SNR {snr:.1} dB vs whole decoding");
    assert!(chunks >= 3, "only {chunks} chunks: not streaming");
    assert!(max_diff <= 1e-4 && snr >= 80.0, "streamed audio differs from whole decoding: max {max_diff:.2e}, {snr:.1} dB");
}

/// Codec windows decoded while the decoder goes on hand out exactly the samples of the synchronous path (every
/// window waited for), in the same order, with at most `codec_windows_in_flight` windows on the GPU at once.
#[test]
fn pipeline_overlapped_windows_equal_the_synchronous_path() {
    let gpu = test_gpu();
    let (dia, dac) = long_talker(&gpu, Numerics::F32);
    let tts = Tts { gpu: &gpu, dia: &dia, dac: &dac };
    let text = "[S1] Overlap must not change a single sample. [S2] Nor their order.";
    let with = |windows: usize| {
        let mut opts = GenerateOptions { max_new_tokens: 200, codec_windows_in_flight: windows, ..GenerateOptions::default() };
        opts.sampling.seed = 5;
        speak(&tts, text, None, &opts)
    };
    let (sync_pcm, sync_chunks, sync) = with(1);
    println!("synchronous: {} samples in {sync_chunks} chunks, {:?}", sync_pcm.len(), sync.codec);
    assert!(sync_chunks >= 4, "only {sync_chunks} chunks: not streaming");
    assert_eq!(sync.codec.most_in_flight, 1);
    assert_eq!(sync.codec.waits, sync.codec.windows, "the synchronous path waits for every window");
    for windows in [2, 3] {
        let (pcm, chunks, speech) = with(windows);
        println!("{windows} windows in flight: {} samples in {chunks} chunks, {:?}", pcm.len(), speech.codec);
        assert_eq!(speech.generation.codes, sync.generation.codes);
        assert_eq!(pcm.len(), sync_pcm.len());
        assert!(pcm == sync_pcm, "overlapped windows changed the audio: first difference at sample {:?}", pcm.iter().zip(&sync_pcm).position(|(a, b)| a != b));
        let stats = speech.codec;
        assert!(stats.most_in_flight <= windows, "{} windows in flight, at most {windows} allowed", stats.most_in_flight);
        assert!(stats.most_in_flight >= 2, "no window was submitted while another was in flight: {stats:?}");
        assert!(stats.waits < stats.windows, "every window was waited for: {stats:?}");
    }
}

#[test]
fn pipeline_cancel_stops_promptly_and_stays_usable() {
    let gpu = test_gpu();
    let (dia, dac) = long_talker(&gpu, Numerics::F16W);
    let tts = Tts { gpu: &gpu, dia: &dia, dac: &dac };
    let opts = GenerateOptions { max_new_tokens: 300, ..GenerateOptions::default() };
    let chunks = std::cell::Cell::new(0);
    let r = pollster::block_on(tts.speak("[S1] Stop me after the first chunk.", None, &opts, &mut |_: &[f32]| chunks.set(chunks.get() + 1), &|| chunks.get() >= 1));
    assert!(matches!(r, Err(PipelineError::Dia(DiaError::Cancelled))), "{r:?}");
    assert_eq!(chunks.get(), 1, "no chunk after the cancel");
    let (pcm, ..) = speak(&tts, "[S1] Again.", None, &GenerateOptions { max_new_tokens: 40, ..GenerateOptions::default() });
    assert!(!pcm.is_empty(), "a generation after the cancel produces audio");
}

#[test]
fn pipeline_prompt_audio_formats() {
    // 16-bit stereo at 22.05 kHz: mixed to mono, resampled to 44.1 kHz with the pitch kept.
    let rate = 22_050;
    let n = 4410;
    let spec = hound::WavSpec { channels: 2, sample_rate: rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut cur = std::io::Cursor::new(Vec::new());
    {
        let mut w = hound::WavWriter::new(&mut cur, spec).unwrap();
        for i in 0..n {
            let v = (0.5 * (2.0 * std::f32::consts::PI * 441.0 * i as f32 / rate as f32).sin() * 32767.0) as i16;
            w.write_sample(v).unwrap();
            w.write_sample(v / 2).unwrap();
        }
        w.finalize().unwrap();
    }
    let a = Audio::from_wav(cur.get_ref()).unwrap();
    assert_eq!((a.samples.len(), a.sample_rate), (n, rate));
    assert!((a.samples.iter().cloned().fold(0.0f32, f32::max) - 0.375).abs() < 0.01, "stereo mixed down to the mean");
    let r = a.resampled(44_100).unwrap();
    assert_eq!(r.samples.len(), 2 * n);
    // Zero crossings of a 441 Hz sine over 0.2 s: 2·441·0.2 ≈ 176 either way.
    let crossings = |s: &[f32]| s.windows(2).filter(|w| (w[0] < 0.0) != (w[1] < 0.0)).count();
    assert!((crossings(&r.samples) as i64 - crossings(&a.samples) as i64).abs() <= 2);
    // 32-bit float round trip through our writer.
    let f = Audio::from_wav(&wav_bytes(&r.samples, 44_100)).unwrap();
    assert_eq!(f.samples, r.samples);
    // Garbage and truncated files are clear errors.
    assert!(matches!(Audio::from_wav(b"RIFF0000WAVEjunk"), Err(PipelineError::Audio(_))));
    let bytes = wav_bytes(&r.samples, 44_100);
    assert!(matches!(Audio::from_wav(&bytes[..bytes.len() / 2 + 1]), Err(PipelineError::Audio(_))));
}

/// Every length a user may ask for works: from 1 row (nothing but the BOS row's successor) through the lengths
/// cut before the 15-row EOS tail completes (2..15 once indexed past the generated rows) to a few windows. The audio
/// is whole frames of the final rows only, and the streamed audio equals decoding those frames at once.
#[test]
fn pipeline_every_short_max_new_tokens() {
    let gpu = test_gpu();
    let (dia, dac) = long_talker(&gpu, Numerics::F32);
    let tts = Tts { gpu: &gpu, dia: &dia, dac: &dac };
    let cfg = &dia.cfg;
    let c = cfg.decoder.channels;
    for n in 1..=40usize {
        let mut opts = GenerateOptions { max_new_tokens: n, ..GenerateOptions::default() };
        opts.sampling.seed = n as u64;
        let (pcm, _, speech) = speak(&tts, "[S1] Short.", None, &opts);
        let g = &speech.generation;
        // Frames whose every channel exists (delayed row t + 15) and that come before the channel-0 EOS row.
        let finals = g.rows.saturating_sub(15);
        let pads = (0..g.rows).filter(|&r| g.codes[r * c] == cfg.pad).count();
        let end = (g.rows - pads).saturating_sub(1).min(finals).max(g.prefix_rows);
        let frames = end - g.prefix_rows;
        assert_eq!(pcm.len(), frames * 512, "max_new_tokens {n}: {} rows", g.rows);
        let codes = codes_for_decode(&g.item(0), &cfg.delay_pattern, cfg.bos, cfg.pad, cfg.eos, Some(g.prefix_rows));
        assert_eq!(codes.len(), frames * c, "max_new_tokens {n}: whole decoding crops like streaming");
        if frames > 0 {
            let cm: Vec<u32> = (0..c).flat_map(|ch| (0..frames).map(move |t| (t, ch))).map(|(t, ch)| codes[t * c + ch]).collect();
            let whole = dac.decode_blocking(&gpu, &cm, frames).unwrap();
            assert!(snr_db(&pcm, &whole) >= 80.0, "max_new_tokens {n}: streamed audio differs from whole decoding");
        }
    }
}

/// NaN and ±Inf samples in a voice prompt are refused (from a WAV and as samples handed over directly), before
/// the codec sees them.
#[test]
fn pipeline_refuses_non_finite_prompts() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut samples = vec![0.1f32; 1000];
        samples[700] = bad;
        let r = Audio::from_wav(&wav_bytes(&samples, 44_100));
        assert!(matches!(&r, Err(PipelineError::SampleValue { index: 700, .. })), "{bad}: {r:?}");
    }
    let gpu = test_gpu();
    let (dia, dac) = models(&gpu, Numerics::F32);
    let tts = Tts { gpu: &gpu, dia: &dia, dac: &dac };
    let prompt = Audio { samples: vec![0.0, f32::NAN, 0.0], sample_rate: 44_100 };
    let mut got = 0usize;
    let r = pollster::block_on(tts.speak("[S1] Hi.", Some(&prompt), &GenerateOptions::default(), &mut |c: &[f32]| got += c.len(), &|| false));
    assert!(matches!(r, Err(PipelineError::SampleValue { index: 1, .. })), "{r:?}");
    assert_eq!(got, 0);
    // Text that is only whitespace is refused like the empty string.
    let r = pollster::block_on(tts.speak(" \n\t ", None, &GenerateOptions::default(), &mut |_: &[f32]| {}, &|| false));
    assert!(matches!(r, Err(PipelineError::Dia(DiaError::EmptyText))), "{r:?}");
}

/// GPU memory is flat over many generations in one session: after each `speak` (texts and lengths varying,
/// every fourth one asked to cancel after its first chunk) the library's buffers and wgpu's device allocations
/// are where they were after the first one, but for the kept dispatch-parameter chunks, which stay bounded.
#[test]
fn pipeline_memory_flat_over_generations() {
    let gpu = test_gpu();
    let (dia, dac) = long_talker(&gpu, Numerics::F32);
    let tts = Tts { gpu: &gpu, dia: &dia, dac: &dac };
    let mut after = Vec::new();
    for i in 0..12u64 {
        let mut opts = GenerateOptions { max_new_tokens: 40 + 16 * (i as usize % 3), ..GenerateOptions::default() };
        opts.sampling.seed = i;
        let text = "[S1] Once more. [S2] And again, a little longer each time. ".repeat(1 + i as usize % 4);
        let chunks = std::cell::Cell::new(0);
        let cancel = i % 4 == 3;
        let r = pollster::block_on(tts.speak(&text, None, &opts, &mut |_: &[f32]| chunks.set(chunks.get() + 1), &|| cancel && chunks.get() > 0));
        // A cancel asked for may come after the generation has ended by itself.
        match r {
            Err(PipelineError::Dia(DiaError::Cancelled)) => assert!(cancel, "generation {i} cancelled unasked"),
            r => assert!(r.is_ok(), "generation {i}: {r:?}"),
        }
        assert!(chunks.get() > 0, "generation {i} produced no audio");
        gpu.wait_idle().unwrap();
        // Dispatch parameters live in kept chunks that grow to the most dispatches alive at once (a few, bounded
        // below); everything else must be exactly where it was.
        let params = gpu.params_bytes();
        assert!(params <= 16 * 65536, "generation {i}: {params} bytes of parameter chunks");
        let device = gpu.device.generate_allocator_report().map(|r| r.total_allocated_bytes - params);
        after.push((gpu.allocated_bytes() - params, device));
    }
    println!("after each generation, without the parameter chunks (buffers, device allocations): {after:?}");
    assert!(after.iter().all(|&a| a == after[0]), "memory changed across generations: {after:?}");
}

/// `Gpu::reusable_buffer` hands a kept buffer only to one holder at a time, reuses it once dropped (a larger
/// request replaces it), and `release_reusable` frees what is idle.
#[test]
fn gpu_reusable_buffers_are_shared_only_when_idle() {
    let gpu = test_gpu();
    let base = gpu.allocated_bytes();
    let a = gpu.reusable_buffer("test.reuse", 4096);
    let b = gpu.reusable_buffer("test.reuse", 1024);
    assert!(!std::sync::Arc::ptr_eq(&a.buf, &b.buf), "a held buffer was handed out twice");
    assert_eq!(b.size, 1024);
    let a_ptr = std::sync::Arc::as_ptr(&a.buf);
    drop(a);
    let c = gpu.reusable_buffer("test.reuse", 2048);
    assert_eq!(std::sync::Arc::as_ptr(&c.buf), a_ptr, "the idle 4096-byte buffer was not reused");
    assert_eq!(c.size, 2048);
    drop((c, b));
    // Both idle: a larger request frees them and takes a new one.
    let d = gpu.reusable_buffer("test.reuse", 8192);
    assert_eq!(gpu.allocated_bytes() - base, 8192);
    drop(d);
    assert_eq!(gpu.allocated_bytes() - base, 8192, "an idle buffer is kept");
    gpu.release_reusable();
    assert_eq!(gpu.allocated_bytes(), base);
}

// ---- Long-form scripts (issue 16) ----

use dia_webgpu::dia::segment::SegmentLimits;
use dia_webgpu::pipeline::{segment_seed, ScriptProgress, ScriptSpeech, VoicePrompt};

/// A dialogue of `turns` speaker turns of growing length (so later segments read longer texts).
fn script(turns: usize) -> String {
    (0..turns).map(|i| format!("[S{}] Turn {i} says {}.", 1 + i % 2, "more and more words ".repeat(1 + i % 5).trim_end())).collect::<Vec<_>>().join(" ")
}

/// Runs `speak_script`, returning the streamed PCM, the progress reports and the result.
fn speak_script(tts: &Tts, text: &str, voice: Option<VoicePrompt>, opts: &GenerateOptions, limits: &SegmentLimits) -> (Vec<f32>, Vec<ScriptProgress>, ScriptSpeech) {
    let mut pcm = Vec::new();
    let mut progress = Vec::new();
    let s = pollster::block_on(tts.speak_script(text, voice, opts, limits, &mut |p: &ScriptProgress| progress.push(p.clone()), &mut |c: &[f32]| pcm.extend_from_slice(c), &|| false)).unwrap();
    assert_eq!(pcm.len(), s.samples);
    (pcm, progress, s)
}

/// Decodes undelayed frames `[n, C]` at once.
fn decode_whole(gpu: &Gpu, dac: &DacModel, frames: &[u32], c: usize) -> Vec<f32> {
    let n = frames.len() / c;
    let cm: Vec<u32> = (0..c).flat_map(|ch| (0..n).map(move |t| (t, ch))).map(|(t, ch)| frames[t * c + ch]).collect();
    dac.decode_blocking(gpu, &cm, n).unwrap()
}

/// Greedy, every segment: its codes are exactly a voice-cloning generation with the same prompt codes and text,
/// its prompt is the previous segment's frames (the voice's in front when given), and the streamed PCM of the
/// whole script is bit-identical to decoding all segments' frames at once (no gap, click or repeat at a join).
#[test]
fn longform_segments_are_voice_cloning_and_stream_as_one() {
    let gpu = test_gpu();
    let (dia, _) = long_talker(&gpu, Numerics::F32);
    let dac = DacModel::load_dir(&gpu, &fixtures_dir().join("dac"), Numerics::F32, true).unwrap(); // with its encoder, for the voice
    let tts = Tts { gpu: &gpu, dia: &dia, dac: &dac };
    let c = dia.cfg.decoder.channels;
    let mut opts = greedy(&meta());
    opts.max_new_tokens = 40;
    let limits = SegmentLimits { max_bytes: 60, min_bytes: 20 };
    let voice_audio = Audio { samples: (0..11_000).map(|i| 0.3 * (i as f32 * 0.05).sin()).collect(), sample_rate: 44_100 };
    let transcript = "[S1] A voice. [S2] Another.";
    let text = script(8);
    for voice in [None, Some(VoicePrompt { audio: &voice_audio, transcript: Some(transcript) })] {
        let (pcm, progress, speech) = speak_script(&tts, &text, voice, &opts, &limits);
        let n = speech.segments.len();
        assert!(n >= 6, "{n} segments");
        assert!(speech.segments.iter().filter(|s| s.carried_previous).count() >= n / 2, "most segments continue the previous one");
        let voice_codes = match voice {
            Some(v) => pollster::block_on(tts.prompt_codes(v.audio)).unwrap(),
            None => Vec::new(),
        };
        for (i, seg) in speech.segments.iter().enumerate() {
            assert!(seg.script_text.starts_with("[S1] ") || seg.script_text.starts_with("[S2] "));
            let mut want_prompt = voice_codes.clone();
            // The previous segment rides along whenever it made audio (one without frames is not carried: its text
            // would be spoken again).
            if i > 0 && !speech.segments[i - 1].frames.is_empty() {
                assert!(seg.carried_previous, "segment {i} did not carry the previous one");
                want_prompt.extend_from_slice(&speech.segments[i - 1].frames);
                assert!(seg.text.ends_with(&format!("{} {}", speech.segments[i - 1].script_text, seg.script_text)));
            } else {
                assert!(!seg.carried_previous, "segment {i} carried a previous segment without audio");
            }
            assert_eq!(seg.prompt_codes, want_prompt, "segment {i}: prompt codes");
            if voice.is_some() {
                assert!(seg.text.starts_with(transcript), "segment {i}: the voice's transcript leads");
            }
            let mut o = opts.clone();
            o.sampling.seed = segment_seed(opts.sampling.seed, i);
            let prompt = (!seg.prompt_codes.is_empty()).then_some(seg.prompt_codes.as_slice());
            let cloned = pollster::block_on(dia.generate(&gpu, &[&seg.text], prompt, &o)).unwrap();
            assert_eq!(cloned.codes, seg.generation.codes, "segment {i}: codes differ from voice cloning");
            // Its frames are the HF crop of its generation (ended by length after 24 frames, or earlier by EOS).
            let g = &seg.generation;
            let cfg = &dia.cfg;
            assert_eq!(seg.frames, codes_for_decode(&g.item(0), &cfg.delay_pattern, cfg.bos, cfg.pad, cfg.eos, Some(g.prefix_rows)), "segment {i}: frames");
            assert!(seg.frames.len() / c <= 40 - 16);
        }
        // Progress: every segment announced in order with its count, rows rising within it.
        let starts: Vec<usize> = progress.iter().filter(|p| p.rows == 0).map(|p| p.segment).collect();
        assert_eq!(starts, (0..n).collect::<Vec<_>>());
        assert!(progress.iter().all(|p| p.segments == n));
        assert!(progress.windows(2).all(|w| w[0].segment < w[1].segment || w[0].rows <= w[1].rows));
        let all: Vec<u32> = speech.segments.iter().flat_map(|s| s.frames.iter().copied()).collect();
        assert_eq!(speech.frames * c, all.len());
        let whole = decode_whole(&gpu, &dac, &all, c);
        assert_eq!(pcm.len(), whole.len());
        let diff = pcm.iter().zip(&whole).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        println!("{n} segments, {} frames: streamed vs whole max |diff| {diff:e}", speech.frames);
        assert!(pcm == whole, "streamed script differs from decoding its frames at once: max |diff| {diff:e}");
    }
}

/// A script that is one segment is exactly `speak`: same codes, same PCM, with and without a voice prompt.
#[test]
fn longform_one_segment_is_exactly_speak() {
    let gpu = test_gpu();
    let (dia, dac) = models(&gpu, Numerics::F32);
    let tts = Tts { gpu: &gpu, dia: &dia, dac: &dac };
    let meta = meta();
    let opts = greedy(&meta);
    let exp = load_expected(&fixtures_dir().join("expected.safetensors"));
    let prompt = Audio { samples: exp["clone.prompt_pcm"].1.clone(), sample_rate: 44_100 };
    let text = meta["texts"][0].as_str().unwrap();
    for voice in [None, Some(VoicePrompt { audio: &prompt, transcript: None })] {
        let (want, _, speech) = speak(&tts, text, voice.map(|v| v.audio), &opts);
        let (pcm, progress, script) = speak_script(&tts, text, voice, &opts, &SegmentLimits::default());
        assert_eq!(script.segments.len(), 1);
        assert_eq!(script.segments[0].generation.codes, speech.generation.codes);
        assert!(pcm == want, "one-segment script differs from speak");
        assert_eq!(progress[0], ScriptProgress { segment: 0, segments: 1, rows: 0, estimated_rows: dia_webgpu::dia::segment::estimated_rows(text), frames_out: 0 });
    }
    // Whitespace around a short text is the caller's: kept as it is.
    let padded = format!("  {text} \n");
    let (want, _, speech) = speak(&tts, &padded, None, &opts);
    let (pcm, _, spoken) = speak_script(&tts, &padded, None, &opts, &SegmentLimits::default());
    assert_eq!(spoken.segments[0].text, padded);
    assert!(spoken.segments[0].generation.codes == speech.generation.codes && pcm == want);
    // A transcript given separately goes in front of the script.
    let (want, ..) = speak(&tts, &format!("[S1] Hello. {text}"), Some(&prompt), &opts);
    let (pcm, ..) = speak_script(&tts, text, Some(VoicePrompt { audio: &prompt, transcript: Some("[S1] Hello.") }), &opts, &SegmentLimits::default());
    assert!(pcm == want);
    // A long script with a voice but no transcript is refused before anything runs.
    let mut got = 0;
    let r = pollster::block_on(tts.speak_script(&script(30), Some(VoicePrompt { audio: &prompt, transcript: None }), &opts, &SegmentLimits::default(), &mut |_: &ScriptProgress| {}, &mut |c: &[f32]| got += c.len(), &|| false));
    assert!(matches!(r, Err(PipelineError::VoiceNeedsTranscript { .. })), "{r:?}");
    let r = pollster::block_on(tts.speak_script(&"[S1][S2]".repeat(200), None, &opts, &SegmentLimits::default(), &mut |_: &ScriptProgress| {}, &mut |c: &[f32]| got += c.len(), &|| false));
    assert!(matches!(r, Err(PipelineError::Script(dia_webgpu::dia::segment::ScriptError::NothingToSpeak))), "{r:?}");
    assert_eq!(got, 0);
}

/// A 20-segment script keeps GPU memory flat: every segment's session starts from the same allocation, the peak
/// is that of a 2-segment script, and nothing is left over at the end. Cancelling stops within a segment and
/// between segments; the same seed gives the same audio.
#[test]
fn longform_memory_flat_cancel_and_seed() {
    let gpu = test_gpu();
    let (dia, dac) = long_talker(&gpu, Numerics::F32);
    let tts = Tts { gpu: &gpu, dia: &dia, dac: &dac };
    let mut opts = GenerateOptions { max_new_tokens: 24, ..GenerateOptions::default() };
    opts.sampling.seed = 7;
    // One turn per segment (no two fit in 320 bytes), of 150 to 310 bytes: texts with the previous segment
    // from ~300 to ~620 bytes, across the encoder's 512-token buffer step.
    let limits = SegmentLimits { max_bytes: 320, min_bytes: 0 };
    let long: String = (0..20).map(|i| format!("[S{}] {}.", 1 + i % 2, "word ".repeat(30 + 8 * (i % 5)).trim_end())).collect::<Vec<_>>().join(" ");
    let run = |text: &str, at_start: &mut Vec<u64>| {
        let mut pcm = Vec::new();
        let s = pollster::block_on(tts.speak_script(
            text,
            None,
            &opts,
            &limits,
            &mut |p: &ScriptProgress| {
                if p.rows == 0 {
                    at_start.push(gpu.allocated_bytes() - gpu.params_bytes());
                }
            },
            &mut |c: &[f32]| pcm.extend_from_slice(c),
            &|| false,
        ))
        .unwrap();
        (pcm, s)
    };
    let turns: Vec<&str> = long.split(" [S").collect();
    // The two longest adjacent turns: the largest text any segment of `long` reads.
    let two = format!("[S{} [S{}", turns[3], turns[4]);
    let _ = run(&two, &mut Vec::new()); // warm the kept buffers
    gpu.wait_idle().unwrap();
    // Dispatch parameters live in kept chunks (`Gpu::params_bytes`) that grow with the codec's launch plans (one
    // per window length the stream has decoded) and stay: counted apart, and bounded.
    let without_params = || gpu.allocated_bytes() - gpu.params_bytes();
    let base = without_params();
    gpu.reset_peak_allocated();
    let mut starts2 = Vec::new();
    let _ = run(&two, &mut starts2);
    let peak2 = gpu.peak_allocated_bytes();
    gpu.reset_peak_allocated();
    let params_before = gpu.params_bytes();
    let mut starts = Vec::new();
    let (_, speech) = run(&long, &mut starts);
    let params_grew = gpu.params_bytes() - params_before;
    let peak20 = gpu.peak_allocated_bytes() - params_grew;
    gpu.wait_idle().unwrap();
    println!(
        "20 segments: allocated at segment starts {starts:?}; peak {peak20} vs {peak2} for 2 segments; {base} before, {} after; parameter chunks {} B (+{params_grew})",
        without_params(),
        gpu.params_bytes()
    );
    assert!(gpu.params_bytes() <= 32 * 65536, "parameter chunks: {} B", gpu.params_bytes());
    assert_eq!(speech.segments.len(), 20);
    // Between segments only the streaming codec's launch plans may be added: one per window length it has
    // decoded (a few KiB of uniforms each, at most 32 + the context's lengths, all freed with the stream).
    let (lo, hi) = (*starts[1..].iter().min().unwrap(), *starts.iter().max().unwrap());
    assert!(lo == starts[1] && hi - lo <= 128 << 10, "memory moved between segments: {starts:?}");
    assert!(starts2[1] <= hi);
    // Within a segment its text's encoder scratch depends on its length: the 2-segment script reads the longest.
    assert!(peak20 <= peak2 + (128 << 10), "a 20-segment script peaks higher than a 2-segment one: {peak20} vs {peak2}");
    assert_eq!(without_params(), base, "memory left over after the script");

    // Same seed, same audio; another seed, other audio.
    let three: String = long.split(" [S").take(3).collect::<Vec<_>>().join(" [S");
    let (a, sa) = run(&three, &mut Vec::new());
    for (x, y) in sa.segments.iter().zip(&speech.segments) {
        assert_eq!(x.generation.codes, y.generation.codes, "the first segments of the same script and seed differ");
    }
    let (b, _) = run(&three, &mut Vec::new());
    assert!(a == b && !a.is_empty(), "same script and seed, different audio");
    let mut other = opts.clone();
    other.sampling.seed = 8;
    let c = pollster::block_on(tts.speak_script(&three, None, &other, &limits, &mut |_: &ScriptProgress| {}, &mut |_: &[f32]| {}, &|| false)).unwrap();
    assert_ne!(c.segments[1].generation.codes, sa.segments[1].generation.codes, "another seed, same codes");

    // Cancel between segments (asked at the end of segment 1) and within one (after its first rows).
    for within in [false, true] {
        let cancel = std::cell::Cell::new(false);
        let mut segments_seen = Vec::new();
        let r = pollster::block_on(tts.speak_script(
            &long,
            None,
            &opts,
            &limits,
            &mut |p: &ScriptProgress| {
                segments_seen.push(p.segment);
                if (within && p.segment == 2 && p.rows > 0) || (!within && p.segment == 1 && p.rows >= opts.max_new_tokens) {
                    cancel.set(true);
                }
            },
            &mut |_: &[f32]| {},
            &|| cancel.get(),
        ));
        assert!(matches!(r, Err(PipelineError::Dia(DiaError::Cancelled))), "{r:?}");
        let last = *segments_seen.last().unwrap();
        assert_eq!(last, if within { 2 } else { 1 }, "segments after the cancel: {segments_seen:?}");
    }
    gpu.wait_idle().unwrap();
    assert_eq!(without_params(), base, "memory left over after cancelled scripts");
}
