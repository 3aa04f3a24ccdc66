//! The speed run: `run` picks what the flags ask for, and `measure_mode` takes every figure of one
//! (weights, KV cache) combination in turn, logging each on stderr as it comes.

use std::time::{Duration, Instant};

use clap::Parser;

use dia_webgpu::config::{DacConfig, DiaConfig};
use dia_webgpu::dia::{GenerateOptions, Session};
use dia_webgpu::gpu::{Gpu, GpuOptions};
use dia_webgpu::kernels::sampling::SamplingParams;
use dia_webgpu::kernels::kv_cache::KvFormat;
use dia_webgpu::kernels::Numerics;
use dia_webgpu::pipeline::{CacheUse, PipelineCacheDir, Tts};

use crate::Result;
use crate::args::{Args, RandomWeights, combinations, label, configs, biggest_matrix_bytes};
use crate::report::{Report, ModeFigures, PrepareFigures, reductions, print_table};
use crate::timing::{FRAMES_PER_10S, WARMUP_STEPS, random_dia, random_dac, text_tokens, time_encoder, time_steps, streamed_matrices, time_linear_only, copy_bandwidth, time_dac, time_whole, time_script, time_ttfa, ttfa_once};
use crate::profile::profile_step;
use crate::memory::{peak_of_long_generation, print_groups, peak_only, memory_over_generations};
use crate::quality;

pub fn run() -> Result<()> {
    let args = Args::parse();
    if args.steps == 0 || args.batch == 0 || args.runs == 0 {
        return Err("--steps, --batch and --runs must be positive".into());
    }
    if args.quality {
        return quality::run(&args);
    }
    let (cfg, dac_cfg, full) = configs(&args.config)?;
    let max_new = cfg.decoder.max_positions - 1;
    if WARMUP_STEPS + args.steps > max_new {
        return Err(format!("--steps {} + {WARMUP_STEPS} warm-up steps exceed the decoder's {max_new} positions", args.steps).into());
    }
    let biggest = biggest_matrix_bytes(&cfg, &args.numerics);
    let gpu = Gpu::new_blocking(GpuOptions { min_storage_binding: biggest, want_tensor_cores: !args.no_tensor_cores, ..Default::default() })?;
    eprintln!("adapter: {}; reductions: {}", gpu.describe(), reductions(&gpu));
    if args.peak_only {
        return peak_only(&gpu, &cfg, &dac_cfg, &args);
    }

    let copy_bytes = args.copy_mib.unwrap_or(if full { 1024 } else { 64 }) << 20;
    let copy_bytes = copy_bytes.min(gpu.limits.max_buffer_size) / 16 * 16;
    let copy_gbps = copy_bandwidth(&gpu, copy_bytes)?;
    eprintln!("copy ceiling: {copy_gbps:.1} GB/s read+written");
    let mut modes = Vec::new();
    for (numerics, kv) in combinations(&args, &args.numerics) {
        modes.push(measure_mode(&gpu, &cfg, &dac_cfg, numerics, kv, &args, copy_gbps)?);
    }
    let report = Report {
        adapter: gpu.describe(),
        tensor_cores: gpu.tensor_cores(),
        reductions: reductions(&gpu),
        config: args.config.clone(),
        batch: args.batch,
        steps: args.steps,
        copy_bytes,
        copy_gbps_read_write: copy_gbps,
        modes,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn measure_mode(gpu: &Gpu, cfg: &DiaConfig, dac_cfg: &DacConfig, numerics: Numerics, kv: Option<KvFormat>, args: &Args, copy_gbps: f64) -> Result<ModeFigures> {
    // Buffers kept from the previous mode's sessions are not this mode's.
    gpu.release_reusable();
    gpu.reset_peak_allocated();
    let t0 = Instant::now();
    let mut model = random_dia(gpu, cfg, numerics, RandomWeights::Uniform)?;
    model.kv_format = kv.unwrap_or(model.kv_format);
    gpu.wait_idle()?;
    let model_build_s = t0.elapsed().as_secs_f64();
    // Progress on stderr as figures come in: a run cut short still shows what it measured.
    let name = label(&model);
    let log = |what: &str| eprintln!("{name}: {what}");
    log(&format!("model built from random weights in {model_build_s:.1} s"));
    // First use, as a fresh `dia-tts` sees it: the codec, `prepare` (compiles, or finds the pipeline cache of an
    // earlier run), then the first generation. Before anything else in this mode compiles a pipeline (a
    // fresh process per mode measures it cold: `--numerics` one mode).
    let dac = random_dac(gpu, dac_cfg, numerics)?;
    let tts = Tts { gpu, dia: &model, dac: &dac };
    let prepare = if args.no_prepare {
        None
    } else {
        let (p, note) = tts.prepare_cached(PipelineCacheDir::from_env().as_ref())?;
        if let Some(note) = note {
            log(&note);
        }
        log(&format!("pipelines: {p}"));
        let cache = match &p.cache {
            CacheUse::Hit { .. } => "hit".to_string(),
            CacheUse::Miss { why } => format!("miss: {why}"),
            CacheUse::Off => "off".into(),
            CacheUse::Unsupported => "unsupported".into(),
        };
        Some(PrepareFigures { pipelines: p.pipelines, compiled: p.compiled, seconds: p.seconds, cache })
    };
    let compiles = gpu.pipeline_compiles();
    let first_ttfa_ms = ttfa_once(gpu, &tts)?;
    log(&format!(
        "first generation after load: time to first audio {} ({} pipelines compiled during it)",
        first_ttfa_ms.map_or("n/a (no audio)".into(), |t| format!("{t:.1} ms")),
        gpu.pipeline_compiles() - compiles
    ));

    // The GPU idled while the CPU made the random weights: bring its clocks up before the first timing (the
    // encoder's short runs otherwise measured the ramp: docs/performance.md).
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(500) {
        time_linear_only(gpu, &streamed_matrices(&model), 2 * args.batch as u32, 20)?;
    }
    let encoder_ms_100_bytes = time_encoder(gpu, &model, 100, args.runs)?;
    let encoder_ms_1000_bytes = time_encoder(gpu, &model, cfg.encoder.max_positions.min(1000), args.runs)?;
    log(&format!("encoder {encoder_ms_100_bytes:.2} ms (100 bytes), {encoder_ms_1000_bytes:.2} ms (1000 bytes)"));

    let greedy_params = SamplingParams { cfg_scale: 3.0, cfg_filter_top_k: 45, temperature: 0.0, top_p: 1.0, seed: 0 };
    let sampled_params = SamplingParams { temperature: 1.2, top_p: 0.95, seed: 1, ..greedy_params };
    let opts = |sampling| GenerateOptions { sampling, max_new_tokens: cfg.decoder.max_positions - 1, ..GenerateOptions::default() };
    let items = vec![text_tokens(100); args.batch];
    let greedy = {
        let mut session = Session::from_tokens(gpu, &model, &items, None, &opts(greedy_params), false)?;
        time_steps(gpu, &mut session, args.steps)?
    };
    log(&format!("greedy {:.1} steps/s (host {:.3} ms/step)", greedy.steps_per_s, greedy.host_ms_per_step));
    // The sampled session stays alive through the DAC measurement: the peak then covers the model, a
    // full-length KV cache and the codec together, as in a real generation.
    let mut session = Session::from_tokens(gpu, &model, &items, None, &opts(sampled_params), false)?;
    let sampled = time_steps(gpu, &mut session, args.steps)?;
    log(&format!("sampled {:.1} steps/s (host {:.3} ms/step)", sampled.steps_per_s, sampled.host_ms_per_step));

    let streamed = streamed_matrices(&model);
    let weight_bytes_per_step: u64 = streamed.iter().map(|m| m.data.size).sum();
    let m = 2 * args.batch as u32;
    let linear_s = time_linear_only(gpu, &streamed, m, args.steps)?;
    let weights_gbps = weight_bytes_per_step as f64 * greedy.steps_per_s / 1e9;
    let linear_only_gbps = weight_bytes_per_step as f64 / linear_s / 1e9;
    log(&format!("linear only {:.1} passes/s, {linear_only_gbps:.1} GB/s", 1.0 / linear_s));

    let dac_ms = time_dac(gpu, &dac, FRAMES_PER_10S.round() as usize, args.runs)?;
    let peak = gpu.peak_allocated_bytes();
    log(&format!("DAC {dac_ms:.2} ms per {} frames; peak allocated {:.1} MB", FRAMES_PER_10S.round(), peak as f64 / 1e6));
    drop(session);
    let ttfa_ms = time_ttfa(gpu, &model, &dac, args.runs)?;
    log(&format!("time to first audio {}", ttfa_ms.map_or("n/a (no audio)".into(), |t| format!("{t:.1} ms"))));
    let whole_sync = time_whole(gpu, &model, &dac, args.steps, args.runs, greedy.steps_per_s, 1)?;
    let whole = time_whole(gpu, &model, &dac, args.steps, args.runs, greedy.steps_per_s, 2)?;
    for (how, w) in [("codec windows waited for", &whole_sync), ("codec windows overlapped", &whole)] {
        log(&format!(
            "whole generation ({} steps, streamed, {how}): {:.1} steps/s ({:.2}x the decoder alone), first audio {:.1} ms; {} windows, at most {} in flight, {} waits",
            w.steps, w.steps_per_s, w.vs_decoder_alone, w.first_audio_ms, w.codec_windows, w.codec_most_in_flight, w.codec_waits
        ));
    }
    let script = if args.script_bytes > 0 { Some(time_script(gpu, &model, &dac, args.script_bytes)?) } else { None };
    if let Some(r) = &script {
        log(&format!(
            "script of {} bytes: {} segments, {} steps, {:.1} s of audio in {:.2} s ({:.1} steps/s, {:.2}x real time), first audio {:.1} ms, peak {:.2} GB",
            r.bytes, r.segments, r.steps, r.audio_s, r.seconds, r.steps_per_s, r.audio_s / r.seconds, r.first_audio_ms, r.peak_bytes as f64 / 1e9
        ));
    }
    let profile = if args.profile { Some(profile_step(gpu, &model, &dac, args.batch, args.steps)?) } else { None };
    if let Some(p) = &profile {
        log(&format!("profile: attention only {:.3} ms, {} tiny dispatches {:.3} ms", p.attention_only_ms, p.dispatches_per_step, p.dispatch_floor_ms));
        for s in &p.linear_shapes {
            log(&format!("profile: linear only, shape {}: {:.1} passes/s, {:.1} GB/s", s.shape, s.steps_per_s, s.gbps));
        }
        log(&format!("profile: encoder (1000 bytes) linear only {:.2} ms, attention only {:.2} ms", p.encoder_linear_only_ms, p.encoder_attention_only_ms));
    }

    let long = if args.peak_long { Some(peak_of_long_generation(gpu, &model, &dac, args.peak_pcm_chunks)?) } else { None };
    if let Some(p) = &long {
        log(&format!("peak GPU memory, 1000 bytes to {} steps: {:.1} MB", p.steps, p.bytes as f64 / 1e6));
        print_groups(&name, &p.groups);
    }
    let (peak_long, peak_long_groups) = match long {
        Some(p) => (Some((p.bytes, p.steps)), Some(p.groups)),
        None => (None, None),
    };
    let memory = (args.generations > 0).then(|| memory_over_generations(gpu, &model, &dac, args.generations)).transpose()?;
    if let Some(m) = &memory {
        let mb = |b: Option<u64>| b.map_or("n/a".into(), |b| format!("{:.1} MB", b as f64 / 1e6));
        log(&format!(
            "memory over {} generations: buffers {:.1} -> {:.1} MB, device {} -> {} (max {})",
            m.generations,
            m.buffers_first as f64 / 1e6,
            m.buffers_last as f64 / 1e6,
            mb(m.device_first),
            mb(m.device_last),
            mb(m.device_max)
        ));
    }
    gpu.check_lost()?;

    Ok(ModeFigures {
        numerics: numerics.name(),
        kv_cache: model.kv_format.name(),
        model_build_s,
        encoder_ms_100_bytes,
        encoder_ms_1000_bytes,
        greedy,
        sampled,
        weight_bytes_per_step,
        weights_gbps,
        weights_vs_copy: weights_gbps / copy_gbps,
        linear_only_steps_per_s: 1.0 / linear_s,
        linear_only_gbps,
        weights_vs_linear_only: weights_gbps / linear_only_gbps,
        dac_ms_per_10s: dac_ms * FRAMES_PER_10S / FRAMES_PER_10S.round(),
        peak_allocated_bytes: peak,
        peak_long,
        peak_long_groups,
        ttfa_ms,
        whole,
        whole_sync,
        script,
        prepare,
        first_ttfa_ms,
        memory,
        profile,
    })
}
