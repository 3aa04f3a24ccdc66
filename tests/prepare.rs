//! `Tts::prepare`: every pipeline a generation uses is compiled while loading (a generation afterwards compiles
//! none), the same audio as without it, and the driver pipeline cache kept in a file across runs (a second
//! device finds it; damaged, unwritable or switched-off caches cost only the compile).
mod common;

use common::{fixtures_dir, test_gpu};
use dia_webgpu::dac::DacModel;
use dia_webgpu::dia::segment::SegmentLimits;
use dia_webgpu::dia::{load_model_dir, DiaModel, GenerateOptions};
use dia_webgpu::gpu::Gpu;
use dia_webgpu::kernels::sampling::SamplingParams;
use dia_webgpu::kernels::Numerics;
use dia_webgpu::pipeline::{Audio, CacheUse, PipelineCacheDir, Tts, VoicePrompt};

fn models(gpu: &Gpu) -> (DiaModel, DacModel) {
    let dir = fixtures_dir();
    (load_model_dir(gpu, &dir.join("dia"), Numerics::F32).unwrap(), DacModel::load_dir(gpu, &dir.join("dac"), Numerics::F32, true).unwrap())
}

fn opts(max_new_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        sampling: SamplingParams { cfg_scale: 3.0, cfg_filter_top_k: 45, temperature: 1.0, top_p: 0.95, seed: 7 },
        max_new_tokens,
        ..GenerateOptions::default()
    }
}

fn speak(tts: &Tts, text: &str, prompt: Option<&Audio>, opts: &GenerateOptions) -> Vec<f32> {
    let mut pcm = Vec::new();
    pollster::block_on(tts.speak(text, prompt, opts, &mut |c: &[f32]| pcm.extend_from_slice(c), &|| false)).unwrap();
    pcm
}

/// A voice prompt of `frames` codec frames (a tone).
fn prompt(frames: usize) -> Audio {
    Audio { samples: (0..frames * 512).map(|i| 0.3 * (i as f32 * 0.05).sin()).collect(), sample_rate: 44_100 }
}

/// Requests of every kind: texts of several lengths (1 byte to the encoder's limit), short and long generations,
/// voice prompts of several lengths, a long script whose segments continue each other.
fn every_kind_of_request(tts: &Tts) -> Vec<f32> {
    let limit = tts.dia.cfg.encoder.max_positions;
    let mut out = Vec::new();
    for (text, max_new) in [("a", 3), ("[S1] Hello there.", 40), ("[S1] A somewhat longer sentence, to reach the tiled kernels.", 25)] {
        out.extend(speak(tts, text, None, &opts(max_new)));
    }
    out.extend(speak(tts, &"b".repeat(limit), None, &opts(5)));
    out.extend(speak(tts, "[S1] Hi.", None, &GenerateOptions { max_new_tokens: usize::MAX, ..opts(1) }));
    for frames in [3, 17, 40] {
        out.extend(speak(tts, "[S1] Hello there.", Some(&prompt(frames)), &opts(12)));
    }
    let script = "[S1] First of all, a sentence. [S2] And then another one, as a reply. [S1] And a third.";
    let limits = SegmentLimits { max_bytes: 40, min_bytes: 10 };
    let audio = prompt(9);
    let voice = VoicePrompt { audio: &audio, transcript: Some("[S2] Mm.") };
    pollster::block_on(tts.speak_script(script, Some(voice), &opts(20), &limits, &mut |_| {}, &mut |c: &[f32]| out.extend_from_slice(c), &|| false)).unwrap();
    out
}

#[test]
fn prepare_compiles_every_pipeline_a_generation_uses() {
    let gpu = test_gpu();
    let (dia, dac) = models(&gpu);
    let tts = Tts { gpu: &gpu, dia: &dia, dac: &dac };
    let before = gpu.pipeline_compiles();
    let prepared = tts.prepare().unwrap();
    eprintln!("{prepared}");
    assert_eq!(gpu.pipeline_compiles() - before, prepared.compiled as u64);
    assert!(prepared.compiled > 10 && prepared.compiled <= prepared.pipelines, "{prepared}");
    assert_eq!(prepared.cache, CacheUse::Off);
    let after_prepare = gpu.pipeline_compiles();
    let with = every_kind_of_request(&tts);
    assert_eq!(gpu.pipeline_compiles(), after_prepare, "a generation after prepare compiled {:?}", &gpu.compiled_labels()[after_prepare as usize..]);
    // Prepared again: everything is there.
    let again = tts.prepare().unwrap();
    assert_eq!((again.compiled, again.pipelines), (0, prepared.pipelines));

    // The same audio as a device that compiles on first use (which does compile during generation: the counter
    // sees compiles).
    let lazy_gpu = test_gpu();
    let (dia2, dac2) = models(&lazy_gpu);
    let lazy = Tts { gpu: &lazy_gpu, dia: &dia2, dac: &dac2 };
    let loaded = lazy_gpu.pipeline_compiles();
    let without = every_kind_of_request(&lazy);
    assert!(lazy_gpu.pipeline_compiles() > loaded);
    assert_eq!(with, without);
}

/// The pipeline cache in a file: written after the first prepare, found by a second device; a damaged file or an
/// unwritable directory only costs the compile (no crash, a note); no directory means no cache.
#[test]
fn prepare_keeps_compiled_pipelines_in_a_cache_file() {
    let gpu = test_gpu();
    let (dia, dac) = models(&gpu);
    let tts = Tts { gpu: &gpu, dia: &dia, dac: &dac };
    let vulkan = gpu.features.contains(wgpu::Features::PIPELINE_CACHE);
    eprintln!("adapter {}: PIPELINE_CACHE {vulkan}", gpu.describe());
    let tmp = tempfile::tempdir().unwrap();
    let dir = PipelineCacheDir(tmp.path().join("pipelines"));
    let (first, note) = tts.prepare_cached(Some(&dir)).unwrap();
    eprintln!("first: {first} {note:?}");
    assert_eq!(note, None);
    let files = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&dir.0).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default()
    };
    if !vulkan {
        assert_eq!(first.cache, CacheUse::Unsupported);
        assert!(files().is_empty());
        return;
    }
    assert!(matches!(first.cache, CacheUse::Miss { ref why } if why == "no file yet"), "{first}");
    let written = files();
    assert_eq!(written.len(), 1, "{written:?}");
    let name = written[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("wgpu_pipeline_cache_vulkan_") && name.ends_with(".bin"), "{name}");

    // A second device (a second run) starts from the file.
    let run2 = || {
        let gpu = test_gpu();
        let (dia, dac) = models(&gpu);
        let tts = Tts { gpu: &gpu, dia: &dia, dac: &dac };
        let r = tts.prepare_cached(Some(&dir)).unwrap();
        let pcm = speak(&tts, "[S1] Hello there.", None, &opts(20));
        (r, pcm)
    };
    let ((second, note), pcm_hit) = run2();
    eprintln!("second: {second} {note:?}");
    assert!(matches!(second.cache, CacheUse::Hit { bytes } if bytes > 0), "{second}");
    assert_eq!(note, None);
    assert_eq!(pcm_hit, speak(&tts, "[S1] Hello there.", None, &opts(20)));

    // Damaged: the payload's last byte flipped (wgpu's own header still valid), then cut short.
    let good = std::fs::read(&written[0]).unwrap();
    let mut flipped = good.clone();
    *flipped.last_mut().unwrap() ^= 0x5a;
    for damaged in [flipped, good[..good.len() / 2].to_vec(), b"junk".to_vec()] {
        std::fs::write(&written[0], &damaged).unwrap();
        let ((r, note), pcm) = run2();
        eprintln!("damaged: {r} {note:?}");
        assert!(matches!(r.cache, CacheUse::Miss { .. }), "{r}");
        assert!(note.is_some_and(|n| n.starts_with("pipeline cache: ")));
        assert_eq!(pcm, pcm_hit);
        // Written anew, whole.
        assert!(dia_webgpu::pipeline::read_cache_file(&written[0]).is_ok());
    }

    // Unwritable: the directory's place is taken by a file (root ignores permission bits).
    let blocked = tmp.path().join("blocked");
    std::fs::write(&blocked, b"a file").unwrap();
    let gpu3 = test_gpu();
    let (dia3, dac3) = models(&gpu3);
    let tts3 = Tts { gpu: &gpu3, dia: &dia3, dac: &dac3 };
    let (r, note) = tts3.prepare_cached(Some(&PipelineCacheDir(blocked.join("pipelines")))).unwrap();
    eprintln!("unwritable: {r} {note:?}");
    assert!(matches!(r.cache, CacheUse::Miss { .. }));
    let note = note.expect("a note about the cache");
    assert!(note.contains("cannot") && !note.contains('\n'), "{note}");
    assert_eq!(speak(&tts3, "[S1] Hello there.", None, &opts(20)), pcm_hit);

    // No directory: no cache at all.
    let gpu4 = test_gpu();
    let (dia4, dac4) = models(&gpu4);
    let (r, note) = Tts { gpu: &gpu4, dia: &dia4, dac: &dac4 }.prepare_cached(None).unwrap();
    assert_eq!((r.cache, note), (CacheUse::Off, None));
}
