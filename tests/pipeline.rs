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
/// are where they were after the first one.
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
        after.push((gpu.allocated_bytes(), gpu.device.generate_allocator_report().map(|r| r.total_allocated_bytes)));
    }
    println!("after each generation (buffers, device allocations): {after:?}");
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
