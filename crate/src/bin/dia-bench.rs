//! `dia-bench`: speed of Dia + DAC on this machine's GPU with random weights (no checkpoint needed).
//!
//! ```text
//! dia-bench [--config full|tiny|<config.json>] [--numerics f32,f16w] [--steps 500] [--batch 1] [--json]
//! ```
//!
//! Per numerics mode: encoder time for 100 and 1000 bytes of text, decoder steps/s (greedy and sampled),
//! weight bytes streamed per second against two ceilings measured in the same run (a plain buffer copy and
//! the small-M `linear` kernel alone over the same matrices), DAC decode time per 10 s of audio and peak
//! GPU memory, and time to first audio through `pipeline::Tts::speak`: warm, and for the first generation after
//! loading (after `Tts::prepare`, whose compile time and pipeline-cache use it prints; `--no-prepare` to compare).
//! `--profile` also times parts of the
//! step graph on their own.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    if let Err(e) = native::run() {
        eprintln!("dia-bench: {e}");
        std::process::exit(1);
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::cell::Cell;
    use std::error::Error;
    use std::time::{Duration, Instant};

    use clap::Parser;
    use serde::Serialize;

    use dia_webgpu::config::{DacConfig, DiaConfig};
    use dia_webgpu::dac::DacModel;
    use dia_webgpu::dia::forward::{DecoderGraph, KvCache, PackedText, StepPart};
    use dia_webgpu::dia::tokenizer::encode_text;
    use dia_webgpu::dia::{kv_format_for, DiaError, DiaModel, GenerateOptions, Session};
    use dia_webgpu::gpu::{AllocationGroup, Dispatch, Gpu, GpuOptions};
    use dia_webgpu::kernels::attention::{attention_prefill, AttentionArgs};
    use dia_webgpu::kernels::linear::{linear, linear_rows, linear_small_m_shaped, LinearEpilogue, SmallMShape};
    use dia_webgpu::kernels::norm::rmsnorm;
    use dia_webgpu::kernels::sampling::SamplingParams;
    use dia_webgpu::kernels::kv_cache::KvFormat;
    use dia_webgpu::kernels::{GpuMatrix, Numerics};
    use dia_webgpu::pipeline::{CacheUse, PipelineCacheDir, PipelineError, Tts};
    use dia_webgpu::random::{self, Noise};

    type Result<T> = std::result::Result<T, Box<dyn Error>>;

    /// Frames in 10 s of 44.1 kHz audio at hop 512 (also what one decoder step adds: 1 frame ≈ 11.6 ms).
    const FRAMES_PER_10S: f64 = 441_000.0 / 512.0;
    /// Steps submitted and waited for before a timed decoder run (pipelines compiled, clocks up).
    const WARMUP_STEPS: usize = 16;

    #[derive(Parser)]
    #[command(name = "dia-bench", about = "Dia + DAC speed on this GPU, random weights")]
    struct Args {
        /// Model size: `full` (Dia 1.6B + DAC 44.1 kHz), `tiny` (the test fixtures' sizes) or a Dia config.json.
        #[arg(long, default_value = "full")]
        config: String,
        /// Weight storage modes to measure, comma-separated (f32, f16w).
        #[arg(long, value_delimiter = ',', default_value = "f32,f16w")]
        numerics: Vec<Numerics>,
        /// Decoder steps per timed run (submitted back to back, one wait at the end).
        #[arg(long, default_value_t = 500)]
        steps: usize,
        /// Texts generated together (the step has 2·batch rows: conditional and unconditional).
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Timed repeats of the encoder and the DAC (median reported, after one warm-up).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Size of the buffer copied for the bandwidth ceiling, MiB (default 1024 full, 64 otherwise).
        #[arg(long)]
        copy_mib: Option<u64>,
        /// Also time parts of the step graph alone (attention only, one tiny dispatch per step dispatch).
        #[arg(long)]
        profile: bool,
        /// `Tts::speak` calls (100 bytes, 64 new rows each) after which GPU memory is compared with the first's
        /// (0 skips the measurement).
        #[arg(long, default_value_t = 100)]
        generations: usize,
        /// Plain kernels only, even where the adapter has tensor cores (A/B measurements)
        #[arg(long)]
        no_tensor_cores: bool,
        /// Skip `Tts::prepare` after loading (pipelines then compile on first use): the first generation's time
        /// to first audio without it, for comparison.
        #[arg(long)]
        no_prepare: bool,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Also measure peak GPU memory of one generation of a 1000-byte text to the decoder's full length
        /// (codec included) per mode.
        #[arg(long)]
        peak_long: bool,
        /// Only the `--peak-long` measurement (per mode: build, then the long generation), nothing timed: for
        /// slow adapters. Prints what was allocated at the peak by group.
        #[arg(long)]
        peak_only: bool,
        /// With `--peak-long` / `--peak-only`: end the long generation once the codec has streamed this many PCM
        /// chunks (0: run to the end). Every buffer is sized for the full length up front (caches for 3072
        /// positions, the codec's window), so on a slow adapter a few chunks show the same composition.
        #[arg(long, default_value_t = 0)]
        peak_pcm_chunks: usize,
        /// Measure quality instead of speed: each `--numerics` mode against f32 on the same inputs, teacher-forced
        /// over `--quality-steps` rows (logits relative error, top-1 agreement), and greedy codes (first
        /// divergence). With `--model DIR` a real checkpoint, else random weights of `--config`.
        #[arg(long)]
        quality: bool,
        /// Rows fed teacher-forced per text in `--quality`.
        #[arg(long, default_value_t = 256)]
        quality_steps: usize,
        /// A checkpoint directory for `--quality` (any layout or converted mode; it is loaded per mode).
        #[arg(long)]
        model: Option<std::path::PathBuf>,
        /// Texts for `--quality` (repeatable); default: three built-in dialogue lines.
        #[arg(long)]
        text: Vec<String>,
        /// Also speak a script of this many bytes (`Tts::speak_script`: segments, one continuous stream) per mode
        /// and report its figures beside one segment's (0: skip). Random weights never end on channel 0's EOS
        /// here, so each segment runs to its planned rows.
        #[arg(long, default_value_t = 0)]
        script_bytes: usize,
        /// KV-cache formats to measure each mode with, comma-separated (f32, f16, q8); default: each mode's own
        /// (`dia::kv_format_for`: q8 for q4, f16 for q8, f32 otherwise). Under `--quality` the f32 reference keeps f32
        /// caches, and f32 weights are measured too when another cache format is asked for.
        #[arg(long, value_delimiter = ',')]
        kv_cache: Vec<KvFormat>,
    }

    /// The (weights, KV cache) combinations to measure: every mode with every `--kv-cache` format, or its default.
    fn combinations(args: &Args, modes: &[Numerics]) -> Vec<(Numerics, Option<KvFormat>)> {
        modes
            .iter()
            .flat_map(|&n| match args.kv_cache.is_empty() {
                true => vec![(n, None)],
                false => args.kv_cache.iter().map(|&k| (n, Some(k))).collect(),
            })
            .collect()
    }

    /// A label for a measured combination: the mode, plus the cache format when it is not the mode's default.
    fn label(model: &DiaModel) -> String {
        if model.kv_format == kv_format_for(model.numerics, &model.cfg) {
            model.numerics.name().to_string()
        } else {
            format!("{}+kv{}", model.numerics.name(), model.kv_format)
        }
    }

    #[derive(Serialize)]
    struct Report {
        adapter: String,
        /// Whether the DAC and the encoder ran on tensor cores (cooperative matrices).
        tensor_cores: bool,
        /// How the decode attention and the sampler reduced: "Subgroup" (subgroup sizes `min..max`) or "Workgroup"
        /// (no subgroups on the adapter, or natively without `DIA_SUBGROUPS=on`).
        reductions: String,
        config: String,
        batch: usize,
        steps: usize,
        /// Device-to-device copy: bytes read plus bytes written per second.
        copy_bytes: u64,
        copy_gbps_read_write: f64,
        modes: Vec<ModeFigures>,
    }

    #[derive(Serialize)]
    struct ModeFigures {
        numerics: &'static str,
        /// How the attention K/V caches were held (f32 or f16).
        kv_cache: &'static str,
        model_build_s: f64,
        encoder_ms_100_bytes: f64,
        encoder_ms_1000_bytes: f64,
        greedy: DecoderRun,
        sampled: DecoderRun,
        /// Decoder layer matrices (cross K/V excluded: they are read by the encoder pass) + logits head.
        weight_bytes_per_step: u64,
        /// Greedy run: weight bytes per step × steps/s.
        weights_gbps: f64,
        weights_vs_copy: f64,
        /// The same matrices through `linear` alone, M = 2·batch, one submission per pass.
        linear_only_steps_per_s: f64,
        linear_only_gbps: f64,
        weights_vs_linear_only: f64,
        dac_ms_per_10s: f64,
        peak_allocated_bytes: u64,
        /// `--peak-long`: peak GPU memory (model, codec, session) over one `Tts::speak` of 1000 bytes of text
        /// allowed the decoder's full length, and the steps it made (random weights may end earlier).
        peak_long: Option<(u64, usize)>,
        /// `--peak-long`: what was allocated at that peak, by allocation group (labels with layer numbers folded).
        peak_long_groups: Option<Vec<AllocationGroup>>,
        /// `Tts::speak` on 100 bytes of text, from the call to the first PCM chunk (None: no audio came, the
        /// random model ended at once).
        ttfa_ms: Option<f64>,
        /// `Tts::speak` of 100 bytes allowed `--steps` new rows, streamed through the codec (median of `--runs`),
        /// its windows decoded while the decoder goes on (`codec_windows_in_flight` 2, the default).
        whole: WholeRun,
        /// The same with every codec window waited for (`codec_windows_in_flight` 1: the synchronous path), measured
        /// right before `whole`.
        whole_sync: WholeRun,
        /// `--script-bytes`: one `Tts::speak_script` of that many bytes.
        script: Option<ScriptRun>,
        /// `Tts::prepare` right after loading (None with `--no-prepare`): pipelines listed, compiled, seconds and
        /// the pipeline cache's part (`DIA_PIPELINE_CACHE=off` for none).
        prepare: Option<PrepareFigures>,
        /// The first `Tts::speak` after loading (and preparing), 100 bytes: time to first audio, as a fresh
        /// process's first generation sees it (None: no audio came).
        first_ttfa_ms: Option<f64>,
        memory: Option<MemoryRun>,
        profile: Option<Profile>,
    }

    /// A whole generation as users get it: encoder, steps, readbacks and the streaming codec.
    #[derive(Serialize, Clone, Copy)]
    struct WholeRun {
        steps: usize,
        steps_per_s: f64,
        /// From the call to the first PCM chunk.
        first_audio_ms: f64,
        /// steps/s over the greedy decoder-alone run's.
        vs_decoder_alone: f64,
        /// The codec windows of the last run: how many, most on the GPU at once, times the host waited for one.
        codec_windows: usize,
        codec_most_in_flight: usize,
        codec_waits: usize,
    }

    #[derive(Serialize)]
    struct ScriptRun {
        bytes: usize,
        segments: usize,
        steps: usize,
        audio_s: f64,
        seconds: f64,
        steps_per_s: f64,
        first_audio_ms: f64,
        /// Peak GPU memory over the script (model and codec included).
        peak_bytes: u64,
    }

    #[derive(Serialize)]
    struct PrepareFigures {
        pipelines: usize,
        compiled: usize,
        seconds: f64,
        /// "hit", "miss: <why>", "off" or "unsupported".
        cache: String,
    }

    /// GPU memory after each of `generations` speak calls in one session (model and codec loaded once).
    #[derive(Serialize)]
    struct MemoryRun {
        generations: usize,
        /// Bytes held by the library's buffers after the first and the last call.
        buffers_first: u64,
        buffers_last: u64,
        /// Device memory wgpu's allocator holds (all of wgpu's allocations), after the first and the last call
        /// and the most after any; None where the backend gives no allocator report.
        device_first: Option<u64>,
        device_last: Option<u64>,
        device_max: Option<u64>,
    }

    #[derive(Serialize, Clone, Copy)]
    struct DecoderRun {
        steps_per_s: f64,
        ms_per_step: f64,
        /// CPU time to record and submit one step (if close to ms_per_step, the GPU waits on the CPU).
        host_ms_per_step: f64,
    }

    #[derive(Serialize)]
    struct Profile {
        dispatches_per_step: usize,
        /// Self- and cross-attention of every layer alone (KV length = the timed run's mid position).
        attention_only_ms: f64,
        /// One minimal rmsnorm (one row) per dispatch of the step, all serialised: launch + barrier cost.
        dispatch_floor_ms: f64,
        /// `linear` alone over the step's matrices with other small-M workgroup shapes.
        linear_shapes: Vec<LinearShapeRun>,
        /// The encoder's parts alone for 1000 bytes of text: tiled `linear` over every encoder matrix and the
        /// cross K/V projections; prefill attention of every encoder layer.
        encoder_linear_only_ms: f64,
        encoder_attention_only_ms: f64,
        /// The encoder on 100 / 1000 bytes: host time to build its dispatches, then the GPU time of replaying
        /// them (one submission, waited).
        encoder_build_ms: [f64; 2],
        encoder_replay_ms: [f64; 2],
        /// Time to first audio split at sync points (each part waited for, so their sum exceeds the overlapped
        /// real thing): session set-up on the host, its encoder on the GPU, the streaming codec's set-up, the
        /// decoder steps up to the first decodable chunk with their readback, the first window's decode
        /// (a fresh decoder: plan built) and the same window again (plan reused).
        ttfa_parts: TtfaParts,
    }

    #[derive(Serialize)]
    struct TtfaParts {
        session_host_ms: f64,
        encoder_gpu_ms: f64,
        codec_setup_ms: f64,
        steps: usize,
        steps_ms: f64,
        first_window_frames: usize,
        first_window_ms: f64,
        first_window_again_ms: f64,
    }

    #[derive(Serialize)]
    struct LinearShapeRun {
        /// "auto" (what `linear` picks per matrix) or threads x k_threads x rows_per_thread.
        shape: String,
        steps_per_s: f64,
        gbps: f64,
    }

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

    /// The Dia and DAC configs for `--config`, and whether they are the full-size models.
    fn configs(which: &str) -> Result<(DiaConfig, DacConfig, bool)> {
        match which {
            "full" => Ok((DiaConfig::dia_1_6b(), DacConfig::dac_44khz(), true)),
            "tiny" => Ok((tiny_dia(), tiny_dac(), false)),
            path => {
                let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
                let cfg = DiaConfig::from_json_str(&text).map_err(|e| format!("{path}: {e}"))?;
                Ok((cfg, DacConfig::dac_44khz(), false))
            }
        }
    }

    /// The sizes of `shared/fixtures/tiny/dia/config.json` (2 + 2 layers, hidden 64 / 96).
    fn tiny_dia() -> DiaConfig {
        let mut c = DiaConfig::dia_1_6b();
        let e = &mut c.encoder;
        (e.layers, e.hidden, e.intermediate, e.heads, e.kv_heads, e.head_dim) = (2, 64, 128, 4, 4, 16);
        let d = &mut c.decoder;
        (d.layers, d.hidden, d.intermediate, d.heads, d.kv_heads, d.head_dim) = (2, 96, 192, 4, 2, 16);
        (d.cross_heads, d.cross_kv_heads, d.cross_head_dim, d.cross_hidden) = (4, 4, 16, 64);
        c
    }

    /// The sizes of `shared/fixtures/tiny/dac/config.json` (hop 512 like the real codec).
    fn tiny_dac() -> DacConfig {
        DacConfig { encoder_hidden: 4, decoder_hidden: 32, latent: 64, ..DacConfig::dac_44khz() }
    }

    /// The binding size the device must allow: the largest weight matrix in any of `numerics`.
    fn biggest_matrix_bytes(cfg: &DiaConfig, numerics: &[Numerics]) -> u64 {
        numerics.iter().map(|&n| dia_webgpu::dia::largest_matrix_bytes(cfg, n)).max().unwrap_or(0).max(16 << 20)
    }

    #[allow(clippy::too_many_arguments)]
    fn measure_mode(gpu: &Gpu, cfg: &DiaConfig, dac_cfg: &DacConfig, numerics: Numerics, kv: Option<KvFormat>, args: &Args, copy_gbps: f64) -> Result<ModeFigures> {
        // Buffers kept from the previous mode's sessions are not this mode's.
        gpu.release_reusable();
        gpu.reset_peak_allocated();
        let t0 = Instant::now();
        let mut model = random_dia(gpu, cfg, numerics)?;
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

    /// `--quality`: how far each storage mode moves the model from f32 on the same inputs. Per text, the f32 model's
    /// greedy codes (cut at its EOS, continued with fixed pseudo-random codes up to `--quality-steps` rows when it
    /// ends early) are fed teacher-forced to every mode; the conditional logits are compared with f32's (relative
    /// L2 error, top-1 agreement over every row and channel), and each mode's own greedy codes with f32's (first
    /// differing step). Models are loaded one at a time, so the GPU holds one model at once.
    mod quality {
        use super::*;
        use dia_webgpu::dia::load_model_dir;

        #[derive(Serialize)]
        struct TextFigures {
            text_bytes: usize,
            rows: usize,
            /// Rows the f32 model generated itself before its EOS (the rest are fixed pseudo-random codes).
            generated_rows: usize,
            rel_err: f64,
            top1: f64,
            /// First generated step whose greedy codes differ from f32's (None: identical over `compared` steps).
            first_divergence: Option<usize>,
            compared: usize,
        }

        #[derive(Serialize)]
        struct ModeQuality {
            /// The weights' mode, `+kv<format>` when the caches are not its default.
            numerics: String,
            texts: Vec<TextFigures>,
            rel_err: f64,
            top1: f64,
        }

        const DEFAULT_TEXTS: [&str; 3] = [
            "[S1] Dia is an open weights text to speech model. [S2] You get full control over scripts and voices. [S1] Wow. Amazing. (laughs) [S2] Try it now on GitHub or Hugging Face.",
            "[S1] Did you hear the rain last night? [S2] I did, it kept me awake for hours. (sighs) [S1] Same here. Coffee?",
            "[S1] The quarterly numbers came in this morning, and honestly, they are better than anyone expected. [S2] Better than expected? Tell me everything.",
        ];

        pub fn run(args: &Args) -> Result<()> {
            let modes: Vec<(Numerics, Option<KvFormat>)> = combinations(args, &args.numerics)
                .into_iter()
                .filter(|&(n, kv)| n != Numerics::F32 || kv.is_some_and(|k| k != KvFormat::F32))
                .collect();
            if modes.is_empty() {
                return Err("--quality compares modes with f32: give them with --numerics (e.g. f16w,q8,q4)".into());
            }
            let cfg = match &args.model {
                Some(dir) => DiaConfig::from_dir(dir)?,
                None => configs(&args.config)?.0,
            };
            let steps = args.quality_steps;
            if steps == 0 || steps + 1 > cfg.decoder.max_positions {
                return Err(format!("--quality-steps must be 1..={}", cfg.decoder.max_positions - 1).into());
            }
            let texts: Vec<String> = if args.text.is_empty() { DEFAULT_TEXTS.iter().map(|t| t.to_string()).collect() } else { args.text.clone() };
            for t in &texts {
                if t.trim().is_empty() || t.len() > cfg.encoder.max_positions {
                    return Err(format!("each --text must be 1..={} bytes", cfg.encoder.max_positions).into());
                }
            }
            let gpu = Gpu::new_blocking(GpuOptions {
                min_storage_binding: biggest_matrix_bytes(&cfg, &[Numerics::F32]),
                want_tensor_cores: !args.no_tensor_cores,
                ..Default::default()
            })?;
            eprintln!("adapter: {}", gpu.describe());
            let load = |numerics: Numerics| -> Result<DiaModel> {
                match &args.model {
                    Some(dir) => Ok(load_model_dir(&gpu, dir, numerics)?),
                    None => random_dia(&gpu, &cfg, numerics),
                }
            };
            let c = cfg.decoder.channels;
            let v = cfg.decoder.vocab;
            let greedy = GenerateOptions {
                sampling: SamplingParams { cfg_scale: 3.0, cfg_filter_top_k: 45, temperature: 0.0, top_p: 1.0, seed: 0 },
                max_new_tokens: steps,
                ..GenerateOptions::default()
            };
            // The reference: f32's greedy rows and its teacher-forced logits on them.
            let reference = load(Numerics::F32)?;
            let mut inputs = Vec::new();
            for text in &texts {
                let ids = encode_text(text);
                let generated = pollster::block_on(reference.generate(&gpu, &[text.as_str()], None, &greedy))?.item(0);
                let generated_rows = generated.len() / c;
                let mut rows = generated.clone();
                let mut state = 0x2545_F491_4F6C_DD1Du64;
                while rows.len() < (steps + 1) * c {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    rows.push((state % 1024) as u32);
                }
                let logits = pollster::block_on(reference.teacher_forced_logits(&gpu, &ids, &rows))?;
                eprintln!("f32: {} bytes, {generated_rows} rows generated, {} teacher-forced", text.len(), rows.len() / c);
                inputs.push((ids, generated, rows, logits));
            }
            drop(reference);
            gpu.wait_idle()?;

            let mut report = Vec::new();
            for &(numerics, kv) in &modes {
                let mut model = load(numerics)?;
                model.kv_format = kv.unwrap_or(model.kv_format);
                let name = label(&model);
                let mut figures = Vec::new();
                for (text, (ids, reference_codes, rows, want)) in texts.iter().zip(&inputs) {
                    let got = pollster::block_on(model.teacher_forced_logits(&gpu, ids, rows))?;
                    let codes = pollster::block_on(model.generate(&gpu, &[text.as_str()], None, &greedy))?.item(0);
                    let compared = codes.len().min(reference_codes.len()) / c;
                    let first_divergence = (0..compared).find(|&r| codes[r * c..(r + 1) * c] != reference_codes[r * c..(r + 1) * c]).or((codes.len() != reference_codes.len()).then_some(compared));
                    let f = TextFigures {
                        text_bytes: text.len(),
                        rows: rows.len() / c,
                        generated_rows: reference_codes.len() / c,
                        rel_err: rel_err(&got, want),
                        top1: top1(&got, want, v),
                        first_divergence: first_divergence.map(|r| r.saturating_sub(1)),
                        compared,
                    };
                    eprintln!(
                        "{name}: {} bytes: logits rel err {:.3e}, top-1 {:.1} %, greedy {}",
                        f.text_bytes,
                        f.rel_err,
                        f.top1 * 100.0,
                        f.first_divergence.map_or(format!("identical over {} rows", f.compared), |s| format!("first differs at step {s}"))
                    );
                    figures.push(f);
                }
                let n = figures.len() as f64;
                report.push(ModeQuality {
                    numerics: name,
                    rel_err: figures.iter().map(|f| f.rel_err).sum::<f64>() / n,
                    top1: figures.iter().map(|f| f.top1).sum::<f64>() / n,
                    texts: figures,
                });
                drop(model);
                gpu.wait_idle()?;
            }
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                let source = args.model.as_ref().map_or(format!("random weights, {} config", args.config), |d| d.display().to_string());
                println!("dia-bench --quality: {source}, {} texts, {steps} teacher-forced rows each, against f32, on {}", texts.len(), gpu.describe());
                println!("{:<10} {:>16} {:>10}  greedy codes (first differing step per text)", "mode", "logits rel err", "top-1 %");
                for m in &report {
                    let greedy: Vec<String> = m.texts.iter().map(|f| f.first_divergence.map_or(format!("same/{}", f.compared), |s| s.to_string())).collect();
                    println!("{:<10} {:>16.3e} {:>10.1}  {}", m.numerics, m.rel_err, m.top1 * 100.0, greedy.join(", "));
                }
            }
            Ok(())
        }

        fn rel_err(got: &[f32], want: &[f32]) -> f64 {
            let (mut num, mut den) = (0f64, 0f64);
            for (&a, &b) in got.iter().zip(want) {
                num += (a as f64 - b as f64).powi(2);
                den += (b as f64).powi(2);
            }
            (num / den.max(f64::MIN_POSITIVE)).sqrt()
        }

        /// Share of (row, channel) positions whose largest logit is the same.
        fn top1(got: &[f32], want: &[f32], v: usize) -> f64 {
            let argmax = |x: &[f32]| x.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i);
            let n = want.len() / v;
            (0..n).filter(|&i| argmax(&got[i * v..(i + 1) * v]) == argmax(&want[i * v..(i + 1) * v])).count() as f64 / n as f64
        }
    }

    /// `--peak-long`: the peak, the steps made and what was allocated at the peak.
    #[derive(Serialize)]
    struct LongPeak {
        bytes: u64,
        /// Steps made (when ended early by `--peak-pcm-chunks`: the frames the streamed audio covers).
        steps: usize,
        groups: Vec<AllocationGroup>,
    }

    /// Peak GPU memory (model and codec as loaded, plus everything one generation allocates) of a 1000-byte text
    /// generated up to the decoder's length, the steps made, and what the peak was made of. `pcm_chunks` > 0 ends
    /// the generation once the codec has streamed that many chunks (buffers are sized for the full length anyway).
    fn peak_of_long_generation(gpu: &Gpu, dia: &DiaModel, dac: &DacModel, pcm_chunks: usize) -> Result<LongPeak> {
        let tts = Tts { gpu, dia, dac };
        let text: String = "[S1] Dia is an open-weights text to speech model. [S2] It makes dialogue, one voice per tag. "
            .chars()
            .cycle()
            .take(dia.cfg.encoder.max_positions.min(1000))
            .collect();
        gpu.wait_idle()?;
        // Buffers kept from earlier sessions (of other sizes, or another mode's caches) are not this generation's.
        gpu.release_reusable();
        gpu.reset_peak_allocated();
        let (chunks, samples) = (Cell::new(0usize), Cell::new(0usize));
        let mut on_pcm = |pcm: &[f32]| {
            chunks.set(chunks.get() + 1);
            samples.set(samples.get() + pcm.len());
        };
        let stop = || pcm_chunks > 0 && chunks.get() >= pcm_chunks;
        let steps = match pollster::block_on(tts.speak(&text, None, &GenerateOptions::default(), &mut on_pcm, &stop)) {
            Ok(speech) => speech.generation.rows - speech.generation.prefix_rows,
            Err(PipelineError::Dia(DiaError::Cancelled)) if stop() => samples.get() / dac.config.hop_length.max(1),
            Err(e) => return Err(e.into()),
        };
        gpu.wait_idle()?;
        Ok(LongPeak { bytes: gpu.peak_allocated_bytes(), steps, groups: gpu.peak_breakdown() })
    }

    /// What a group of buffers is, by its label: Dia weights, codec weights, caches or working memory.
    fn group_kind(label: &str) -> &'static str {
        if label.starts_with("model.") || label.starts_with("logits_dense") || label.starts_with("rope_") {
            "Dia weights"
        } else if label.starts_with("decoder.") || label.starts_with("encoder.") || label.starts_with("quantizer") || label.starts_with("rvq.") {
            "codec weights"
        } else if label.starts_with("kv_k") || label.starts_with("kv_v") || (label.starts_with("cross_kv.") && label != "cross_kv.staging") {
            "KV caches"
        } else if label.starts_with("enc_") || label == "cross_kv.staging" || label.starts_with("attention.prefill") {
            "encoder working memory"
        } else if label.starts_with("dac") {
            "codec working memory"
        } else {
            "decoder working memory and other"
        }
    }

    /// The allocation groups of a peak, on stderr: totals by kind, then the largest groups.
    fn print_groups(name: &str, groups: &[AllocationGroup]) {
        let mut kinds: Vec<(&str, u64)> = Vec::new();
        for g in groups {
            let kind = group_kind(&g.label);
            match kinds.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, b)) => *b += g.bytes,
                None => kinds.push((kind, g.bytes)),
            }
        }
        kinds.sort_by(|a, b| b.1.cmp(&a.1));
        let total: u64 = groups.iter().map(|g| g.bytes).sum();
        eprintln!("{name}: at the peak, {:.1} MB in {} groups:", total as f64 / 1e6, groups.len());
        for (kind, bytes) in &kinds {
            eprintln!("{name}:   {kind:<34} {:>9.1} MB", *bytes as f64 / 1e6);
        }
        for g in groups.iter().take(40) {
            eprintln!("{name}:     {:<56} {:>9.3} MB in {} buffers ({})", g.label, g.bytes as f64 / 1e6, g.buffers, group_kind(&g.label));
        }
        if groups.len() > 40 {
            let rest: u64 = groups[40..].iter().map(|g| g.bytes).sum();
            eprintln!("{name}:     {} smaller groups {:>9.3} MB", groups.len() - 40, rest as f64 / 1e6);
        }
    }

    /// `--peak-only`: per mode, the model and codec built, then only the long generation's peak.
    fn peak_only(gpu: &Gpu, cfg: &DiaConfig, dac_cfg: &DacConfig, args: &Args) -> Result<()> {
        #[derive(Serialize)]
        struct PeakOnly {
            numerics: &'static str,
            kv_cache: &'static str,
            #[serde(flatten)]
            peak: LongPeak,
        }
        let mut out = Vec::new();
        for (numerics, kv) in combinations(args, &args.numerics) {
            gpu.release_reusable();
            let mut model = random_dia(gpu, cfg, numerics)?;
            model.kv_format = kv.unwrap_or(model.kv_format);
            let dac = random_dac(gpu, dac_cfg, numerics)?;
            gpu.wait_idle()?;
            let name = label(&model);
            let peak = peak_of_long_generation(gpu, &model, &dac, args.peak_pcm_chunks)?;
            eprintln!("{name}: peak GPU memory, 1000 bytes to {} steps: {:.1} MB", peak.steps, peak.bytes as f64 / 1e6);
            print_groups(&name, &peak.groups);
            out.push(PeakOnly { numerics: numerics.name(), kv_cache: model.kv_format.name(), peak });
        }
        if args.json {
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Ok(())
    }

    /// Runs `n` short generations (100 bytes of text, 64 new rows, streamed through the codec) one after
    /// another and records GPU memory once each has finished and the device is idle.
    fn memory_over_generations(gpu: &Gpu, dia: &DiaModel, dac: &DacModel, n: usize) -> Result<MemoryRun> {
        let tts = Tts { gpu, dia, dac };
        let opts = GenerateOptions { max_new_tokens: 64, ..GenerateOptions::default() };
        let text: String = "[S1] Memory should stay where it was. [S2] After every single generation. ".chars().cycle().take(100).collect();
        let (mut buffers, mut device) = (Vec::new(), Vec::new());
        for i in 0..n {
            let mut sink = |_: &[f32]| {};
            let mut o = opts.clone();
            o.sampling.seed = i as u64;
            pollster::block_on(tts.speak(&text, None, &o, &mut sink, &|| false))?;
            gpu.wait_idle()?;
            buffers.push(gpu.allocated_bytes());
            device.push(gpu.device.generate_allocator_report().map(|r| r.total_allocated_bytes));
        }
        Ok(MemoryRun {
            generations: n,
            buffers_first: buffers[0],
            buffers_last: *buffers.last().unwrap(),
            device_first: device[0],
            device_last: *device.last().unwrap(),
            device_max: device.iter().copied().max().flatten(),
        })
    }

    /// Dia with random weights read from a noise block (generating 1.6 B values fresh would dominate the run);
    /// channel 0's EOS row zeroed so generations run to their length.
    fn random_dia(gpu: &Gpu, cfg: &DiaConfig, numerics: Numerics) -> Result<DiaModel> {
        Ok(random::dia_model(gpu, cfg, numerics, &mut Noise::new(0x9E37_79B9_7F4A_7C15), true)?)
    }

    /// The codec's decoder with random weights (decode-only: the encoder's tensors are not loaded).
    fn random_dac(gpu: &Gpu, cfg: &DacConfig, numerics: Numerics) -> Result<DacModel> {
        Ok(random::dac_decoder(gpu, cfg, numerics, &mut Noise::new(0xD1B5_4A32_D192_ED03))?)
    }

    /// `bytes` text tokens of plausible dialogue (speaker tags and ASCII).
    fn text_tokens(bytes: usize) -> Vec<u32> {
        let sample = encode_text("[S1] Dia is an open-weights text to speech model. [S2] It makes dialogue, one voice per tag, with laughs and pauses (laughs). ");
        sample.iter().copied().cycle().take(bytes).collect()
    }

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            0.5 * (v[n / 2 - 1] + v[n / 2])
        }
    }

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1e3
    }

    /// Milliseconds of `model.encode` (encoder + cross K/V of every layer) until the GPU is done: median of
    /// `runs` after one warm-up. Includes the host's graph building, as a real request pays it.
    fn time_encoder(gpu: &Gpu, model: &DiaModel, bytes: usize, runs: usize) -> Result<f64> {
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
    fn time_steps(gpu: &Gpu, session: &mut Session, steps: usize) -> Result<DecoderRun> {
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
    fn streamed_matrices(model: &DiaModel) -> Vec<&GpuMatrix> {
        let mut v: Vec<&GpuMatrix> = Vec::new();
        for l in &model.dec_layers {
            v.extend([&l.qkv, &l.o, &l.cross_q, &l.cross_o, &l.gate_up, &l.down]);
        }
        v.push(&model.logits);
        v
    }

    /// Seconds per pass of `dispatches`, recorded into one compute pass and submitted `passes` times back
    /// to back (like decoder steps) after a short warm-up.
    fn time_passes(gpu: &Gpu, dispatches: &[&Dispatch], passes: usize) -> Result<f64> {
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
    fn time_linear_only(gpu: &Gpu, mats: &[&GpuMatrix], m: u32, passes: usize) -> Result<f64> {
        let max_cols = mats.iter().map(|w| w.cols).max().unwrap_or(1) as usize;
        let max_rows = mats.iter().map(|w| w.rows).max().unwrap_or(1) as u64;
        let x = gpu.upload("bench.x", &Noise::new(7).take(m as usize * max_cols, 1.0));
        let y = gpu.buffer("bench.y", m as u64 * max_rows * 4);
        let ds: Vec<Dispatch> = mats.iter().map(|w| linear(gpu, &x, w, &y, m, LinearEpilogue::Store)).collect();
        time_passes(gpu, &ds.iter().collect::<Vec<_>>(), passes)
    }

    /// Device-to-device copy bandwidth (bytes read + written per second, GB/s) over two buffers of `bytes`
    /// made outside the allocation counter. The source holds random data, not zeros.
    fn copy_bandwidth(gpu: &Gpu, bytes: u64) -> Result<f64> {
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
    fn time_dac(gpu: &Gpu, dac: &DacModel, frames: usize, runs: usize) -> Result<f64> {
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
    fn time_whole(gpu: &Gpu, dia: &DiaModel, dac: &DacModel, steps: usize, runs: usize, decoder_alone: f64, windows_in_flight: usize) -> Result<WholeRun> {
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
    fn time_script(gpu: &Gpu, dia: &DiaModel, dac: &DacModel, bytes: usize) -> Result<ScriptRun> {
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

    fn time_ttfa(gpu: &Gpu, dia: &DiaModel, dac: &DacModel, runs: usize) -> Result<Option<f64>> {
        let tts = Tts { gpu, dia, dac };
        let mut times = Vec::new();
        for i in 0..=runs {
            if let (true, Some(t)) = (i > 0, ttfa_once(gpu, &tts)?) {
                times.push(t);
            }
        }
        Ok((!times.is_empty()).then(|| median(times)))
    }

    /// One `Tts::speak` of 100 bytes with the default options, cancelled at its first audio: milliseconds from the
    /// call to the first PCM chunk (None: no audio came).
    fn ttfa_once(gpu: &Gpu, tts: &Tts) -> Result<Option<f64>> {
        let text: String = "[S1] Dia is an open-weights text to speech model. [S2] It makes dialogue, one voice per tag. "
            .chars()
            .cycle()
            .take(100)
            .collect();
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

    /// Parts of the step graph alone, built from the same kernels as `DecoderGraph` with its shapes.
    fn profile_step(gpu: &Gpu, model: &DiaModel, dac: &DacModel, batch: usize, steps: usize) -> Result<Profile> {
        let d = &model.cfg.decoder;
        let rows = 2 * batch as u32;
        let max_len = d.max_positions as u32;
        let f32s = |n: usize| gpu.buffer("bench.profile", (rows as usize * n * 4) as u64);
        let enc = model.encode(gpu, PackedText::new(&vec![text_tokens(100); batch]));
        let cache = KvCache::new(gpu, model, rows, max_len);
        // The step graph a session records; its parts are timed alone at the timed run's mid position
        // (attention cost grows with the number of cached keys).
        let graph = DecoderGraph::new(gpu, model, &enc, &cache, batch as u32, 1);
        graph.set_positions(gpu, (WARMUP_STEPS + steps / 2) as u32);
        let self_attention = graph.part(StepPart::SelfAttention);
        let cross_attention = graph.part(StepPart::CrossAttention);
        let self_ms = time_passes(gpu, &self_attention, steps)? * 1e3;
        let cross_ms = time_passes(gpu, &cross_attention, steps)? * 1e3;
        eprintln!(
            "profile: self-attention only {self_ms:.3} ms ({} dispatches), cross-attention only {cross_ms:.3} ms ({} dispatches)",
            self_attention.len(),
            cross_attention.len()
        );
        {
            // The recorded step in parts: layers alone, logits head + sampler alone, the embedding alone.
            let session = Session::from_tokens(gpu, model, &vec![text_tokens(100); batch], None, &GenerateOptions::default(), false)?;
            let (layers, tail) = session.step_dispatches();
            let whole: Vec<&Dispatch> = layers.iter().chain(&tail).copied().collect();
            let whole_ms = time_passes(gpu, &whole, steps)? * 1e3;
            let layers_ms = time_passes(gpu, &layers, steps)? * 1e3;
            let tail_ms = time_passes(gpu, &tail, steps)? * 1e3;
            let embed_ms = time_passes(gpu, &graph.part(StepPart::Embedding), steps)? * 1e3;
            eprintln!("profile: step replayed {whole_ms:.3} ms = layers {layers_ms:.3} ms ({}) + logits head and sampler {tail_ms:.3} ms ({}); embedding alone {embed_ms:.3} ms", layers.len(), tail.len());
        }
        let attention: Vec<&Dispatch> = self_attention.into_iter().chain(cross_attention).collect();
        let attention_only_ms = time_passes(gpu, &attention, steps)? * 1e3;

        // As a session records them: the step graph, the logits head and the sampler's two dispatches.
        let dispatches_per_step = graph.dispatches() + model.logits_head(gpu, &graph.x, rows).0.len() + 2;
        let (x, y) = (f32s(d.hidden), f32s(d.hidden));
        let norm_w = gpu.upload("bench.norm", &vec![1.0f32; d.hidden]);
        let tiny: Vec<Dispatch> = (0..dispatches_per_step).map(|_| rmsnorm(gpu, &x, &norm_w, &y, 1, d.hidden as u32, 1e-5)).collect();
        let dispatch_floor_ms = time_passes(gpu, &tiny.iter().collect::<Vec<_>>(), steps)? * 1e3;

        let streamed = streamed_matrices(model);
        let bytes: u64 = streamed.iter().map(|w| w.data.size).sum();
        let max_cols = streamed.iter().map(|w| w.cols).max().unwrap_or(1) as usize;
        let max_rows = streamed.iter().map(|w| w.rows).max().unwrap_or(1) as u64;
        let x = gpu.upload("bench.x", &Noise::new(17).take(rows as usize * max_cols, 1.0));
        let y = gpu.buffer("bench.y", rows as u64 * max_rows * 4);
        let mut linear_shapes = Vec::new();
        let candidates = [(256, 32, 1), (256, 32, 2), (256, 64, 1), (256, 64, 2), (256, 64, 4), (128, 32, 2), (128, 64, 2)];
        for shape in std::iter::once(None).chain(candidates.map(|(threads, k_threads, rows_per_thread)| Some(SmallMShape { threads, k_threads, rows_per_thread }))) {
            let pick = |w: &GpuMatrix| shape.filter(|s| s.fits(rows)).unwrap_or_else(|| SmallMShape::for_shape(rows, w.rows, w.cols));
            let ds: Vec<Dispatch> = streamed.iter().map(|w| linear_small_m_shaped(gpu, &x, w, &y, rows, LinearEpilogue::Store, pick(w))).collect();
            let sec = time_passes(gpu, &ds.iter().collect::<Vec<_>>(), steps)?;
            let label = shape.map_or("auto".to_string(), |s| format!("{}x{}x{}", s.threads, s.k_threads, s.rows_per_thread));
            linear_shapes.push(LinearShapeRun { shape: label, steps_per_s: 1.0 / sec, gbps: bytes as f64 / sec / 1e9 });
        }

        let (encoder_linear_only_ms, encoder_attention_only_ms) = profile_encoder(gpu, model, 1000.min(model.cfg.encoder.max_positions))?;
        let mut encoder_build_ms = [0.0; 2];
        let mut encoder_replay_ms = [0.0; 2];
        for (i, bytes) in [100, 1000.min(model.cfg.encoder.max_positions)].into_iter().enumerate() {
            let tokens = text_tokens(bytes);
            for _ in 0..3 {
                let t0 = Instant::now();
                let (ds, state) = model.encoder_graph(gpu, PackedText::new(std::slice::from_ref(&tokens)));
                encoder_build_ms[i] = ms(t0.elapsed());
                encoder_replay_ms[i] = time_passes(gpu, &ds.iter().collect::<Vec<_>>(), 3)? * 1e3;
                drop(state);
            }
        }
        eprintln!("profile: encoder 100 / 1000 B: build {:.2} / {:.2} ms (host), replay {:.2} / {:.2} ms (GPU)", encoder_build_ms[0], encoder_build_ms[1], encoder_replay_ms[0], encoder_replay_ms[1]);
        let ttfa_parts = profile_ttfa(gpu, model, dac)?;
        eprintln!(
            "profile: TTFA parts: session {:.2} ms host, encoder {:.2} ms GPU, codec set-up {:.2} ms, {} steps + readback {:.2} ms, first window ({} frames) {:.2} ms, again {:.2} ms",
            ttfa_parts.session_host_ms,
            ttfa_parts.encoder_gpu_ms,
            ttfa_parts.codec_setup_ms,
            ttfa_parts.steps,
            ttfa_parts.steps_ms,
            ttfa_parts.first_window_frames,
            ttfa_parts.first_window_ms,
            ttfa_parts.first_window_again_ms
        );
        Ok(Profile {
            encoder_build_ms,
            encoder_replay_ms,
            ttfa_parts,
            dispatches_per_step,
            attention_only_ms,
            dispatch_floor_ms,
            linear_shapes,
            encoder_linear_only_ms,
            encoder_attention_only_ms,
        })
    }

    /// `Tts::speak`'s way to the first chunk (100 bytes, default options), waited for at each part; the median
    /// of 3 after a warm-up.
    fn profile_ttfa(gpu: &Gpu, dia: &DiaModel, dac: &DacModel) -> Result<TtfaParts> {
        let text: String = "[S1] Dia is an open-weights text to speech model. [S2] It makes dialogue, one voice per tag. "
            .chars()
            .cycle()
            .take(100)
            .collect();
        let opts = GenerateOptions::default();
        let (left, right) = dac.decoder_context();
        let max_delay = dia.cfg.delay_pattern.iter().copied().max().unwrap_or(0);
        // As `StreamDecoder`: 8 new frames plus the right context must be final (delayed rows up to + max delay).
        let first = 8;
        let steps = first + right + max_delay;
        // Session::new's host parts one by one (encoder dispatches, KV cache, step graph, logits head).
        for _ in 0..2 {
            let t = Instant::now();
            let (ds, enc) = dia.encoder_graph(gpu, PackedText::new(&[encode_text(&text)]));
            let enc_ms = ms(t.elapsed());
            let t = Instant::now();
            let cache = KvCache::new(gpu, dia, 2, dia.cfg.decoder.max_positions as u32);
            let cache_ms = ms(t.elapsed());
            let t = Instant::now();
            let graph = DecoderGraph::new(gpu, dia, &enc, &cache, 1, 1);
            let graph_ms = ms(t.elapsed());
            let t = Instant::now();
            let head = dia.logits_head(gpu, &graph.x, 2);
            let head_ms = ms(t.elapsed());
            let t = Instant::now();
            let _ = host_dispatch_costs(gpu);
            eprintln!("profile: session host parts: encoder dispatches {enc_ms:.2} ms ({}), KV cache {cache_ms:.2} ms, step graph {graph_ms:.2} ms ({}), logits head {head_ms:.2} ms; {} ({:.2} ms)", ds.len(), graph.dispatches(), host_dispatch_costs(gpu), ms(t.elapsed()));
            drop((ds, enc, cache, graph, head));
        }
        let mut runs = Vec::new();
        for _ in 0..4 {
            let t0 = Instant::now();
            let mut session = Session::new(gpu, dia, &[&text], None, &opts, false)?;
            let session_host_ms = ms(t0.elapsed());
            let t1 = Instant::now();
            gpu.wait_idle()?;
            let encoder_gpu_ms = ms(t1.elapsed());
            let t2 = Instant::now();
            let mut decoder = dac.stream_decoder(gpu, 32 + left + right)?;
            let codec_setup_ms = ms(t2.elapsed());
            let t3 = Instant::now();
            for _ in 0..steps {
                session.submit_step();
            }
            let _ = gpu.read_u32_blocking(session.codes_buffer())?;
            let steps_ms = ms(t3.elapsed());
            let frames = first + right;
            let codes = vec![0u32; dac.config.n_codebooks * frames];
            let t4 = Instant::now();
            let _ = pollster::block_on(decoder.decode(gpu, &codes, frames))?;
            let first_window_ms = ms(t4.elapsed());
            let t5 = Instant::now();
            let _ = pollster::block_on(decoder.decode(gpu, &codes, frames))?;
            let first_window_again_ms = ms(t5.elapsed());
            runs.push(TtfaParts { session_host_ms, encoder_gpu_ms, codec_setup_ms, steps, steps_ms, first_window_frames: frames, first_window_ms, first_window_again_ms });
        }
        runs.remove(0);
        let med = |f: &dyn Fn(&TtfaParts) -> f64| median(runs.iter().map(f).collect());
        Ok(TtfaParts {
            session_host_ms: med(&|r| r.session_host_ms),
            encoder_gpu_ms: med(&|r| r.encoder_gpu_ms),
            codec_setup_ms: med(&|r| r.codec_setup_ms),
            steps,
            steps_ms: med(&|r| r.steps_ms),
            first_window_frames: first + right,
            first_window_ms: med(&|r| r.first_window_ms),
            first_window_again_ms: med(&|r| r.first_window_again_ms),
        })
    }

    /// Host cost of the runtime's building blocks: a uniform buffer, a whole small dispatch, a 12 MB buffer.
    fn host_dispatch_costs(gpu: &Gpu) -> String {
        let x = gpu.buffer("bench.host_x", 4096 * 4);
        let g = gpu.buffer("bench.host_g", 4096 * 4);
        let y = gpu.buffer("bench.host_y", 4096 * 4);
        let n = 200;
        let t = Instant::now();
        let u: Vec<_> = (0..n).map(|_| gpu.uniform("bench.params", &[0u32; 8])).collect();
        let uniform_us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        drop(u);
        let t = Instant::now();
        let d: Vec<_> = (0..n).map(|_| rmsnorm(gpu, &x, &g, &y, 1, 1024, 1e-5)).collect();
        let dispatch_us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        drop(d);
        let t = Instant::now();
        let b: Vec<_> = (0..36).map(|_| gpu.buffer("bench.host_big", 12 << 20)).collect();
        let big_us = t.elapsed().as_secs_f64() * 1e6 / 36.0;
        drop(b);
        format!("uniform {uniform_us:.1} us, rmsnorm dispatch {dispatch_us:.1} us, 12 MiB buffer {big_us:.1} us")
    }

    /// The encoder's matrix products and its attention, each alone, for one text of `bytes` tokens (plus the
    /// one-token unconditional row, as `encode` packs it): milliseconds per pass.
    fn profile_encoder(gpu: &Gpu, model: &DiaModel, bytes: usize) -> Result<(f64, f64)> {
        let (e, d) = (&model.cfg.encoder, &model.cfg.decoder);
        let n = bytes as u32 + 1;
        let qkv_w = (e.heads + 2 * e.kv_heads) * e.head_dim;
        let widest_in = e.hidden.max(e.intermediate).max(e.heads * e.head_dim);
        let widest_out = qkv_w.max(2 * e.intermediate).max(2 * d.cross_kv_heads * d.cross_head_dim);
        let x = gpu.upload("bench.enc_x", &Noise::new(19).take(n as usize * widest_in, 1.0));
        let y = gpu.buffer("bench.enc_y", n as u64 * widest_out as u64 * 4);
        let mut mats: Vec<&GpuMatrix> = Vec::new();
        for l in &model.enc_layers {
            mats.extend([&l.qkv, &l.o, &l.gate_up, &l.down]);
        }
        mats.extend(model.dec_layers.iter().map(|l| &l.cross_kv));
        let ds: Vec<Dispatch> = mats.iter().flat_map(|w| linear_rows(gpu, &x, w, &y, n, LinearEpilogue::Store)).collect();
        let linear_ms = time_passes(gpu, &ds.iter().collect::<Vec<_>>(), 5)? * 1e3;

        let qkv = gpu.upload("bench.enc_qkv", &Noise::new(23).take(n as usize * qkv_w, 1.0));
        let out = gpu.buffer("bench.enc_attn", n as u64 * (e.heads * e.head_dim) as u64 * 4);
        // Two segments: the text (positions 0..bytes) and the unconditional row's single token.
        let qinfo: Vec<u32> = (0..bytes as u32).flat_map(|p| [0, p]).chain([1, 0]).collect();
        let qinfo = gpu.upload("bench.enc_qinfo", &qinfo);
        let seqs = gpu.upload("bench.enc_seqs", &[0, bytes as u32, bytes as u32, 1]);
        let hd = e.head_dim as u32;
        let mut attention = Vec::new();
        for _ in 0..e.layers {
            attention.extend(attention_prefill(
                gpu,
                &AttentionArgs {
                    q_buf: &qkv,
                    q_stride: qkv_w as u32,
                    q_col: 0,
                    k_buf: &qkv,
                    v_buf: &qkv,
                    kv_stride: qkv_w as u32,
                    k_col: e.heads as u32 * hd,
                    v_col: (e.heads + e.kv_heads) as u32 * hd,
                    qinfo: &qinfo,
                    seqs: &seqs,
                    out: &out,
                    rows: n,
                    heads: e.heads as u32,
                    kv_heads: e.kv_heads as u32,
                    head_dim: hd,
                    causal: false,
                    max_keys: n,
                    kv_format: KvFormat::F32,
                },
            ));
        }
        let attention_ms = time_passes(gpu, &attention.iter().collect::<Vec<_>>(), 5)? * 1e3;
        Ok((linear_ms, attention_ms))
    }

    /// GB/s, with three decimals below 10 (tiny models on a CPU adapter stream a few MB/s).
    fn gbps(x: f64) -> String {
        if x >= 10.0 {
            format!("{x:.1}")
        } else {
            format!("{x:.3}")
        }
    }

    /// `Report::reductions`.
    fn reductions(gpu: &Gpu) -> String {
        match gpu.subgroup_sizes() {
            Some(s) => format!("{:?} (subgroup sizes {}..{})", gpu.reduction(), s.min, s.max),
            None => format!("{:?} (no subgroups)", gpu.reduction()),
        }
    }

    fn print_table(r: &Report) {
        println!(
            "dia-bench: {} config, batch {}, {} steps per decoder run, on {}, tensor cores {}, reductions {}",
            r.config,
            r.batch,
            r.steps,
            r.adapter,
            if r.tensor_cores { "used (DAC, encoder)" } else { "not used" },
            r.reductions
        );
        println!(
            "ceiling (a): buffer copy {:.0} GB/s read+written ({} MiB copied)",
            r.copy_gbps_read_write,
            r.copy_bytes >> 20
        );
        let mut rows: Vec<(String, Vec<String>)> = vec![("numerics".into(), r.modes.iter().map(|m| m.numerics.to_string()).collect())];
        let mut row = |name: &str, f: &dyn Fn(&ModeFigures) -> String| rows.push((name.to_string(), r.modes.iter().map(f).collect()));
        row("KV caches", &|m| m.kv_cache.to_string());
        row("model build (random weights), s", &|m| format!("{:.1}", m.model_build_s));
        row("encoder, 100 bytes, ms", &|m| format!("{:.2}", m.encoder_ms_100_bytes));
        row("encoder, 1000 bytes, ms", &|m| format!("{:.2}", m.encoder_ms_1000_bytes));
        row("decoder steps/s, greedy", &|m| format!("{:.1}", m.greedy.steps_per_s));
        row("decoder steps/s, sampled (T 1.2, p .95, k 45)", &|m| format!("{:.1}", m.sampled.steps_per_s));
        row("  ms/step greedy (host record+submit)", &|m| format!("{:.3} ({:.3})", m.greedy.ms_per_step, m.greedy.host_ms_per_step));
        row("  x real time (86.1 steps per s of audio)", &|m| format!("{:.2}", m.greedy.steps_per_s / (FRAMES_PER_10S / 10.0)));
        row("weights per step, MB", &|m| format!("{:.1}", m.weight_bytes_per_step as f64 / 1e6));
        row("weights streamed, GB/s", &|m| gbps(m.weights_gbps));
        row("  / copy ceiling (a)", &|m| format!("{:.2}", m.weights_vs_copy));
        row("linear only (b): steps/s", &|m| format!("{:.1}", m.linear_only_steps_per_s));
        row("linear only (b): GB/s", &|m| gbps(m.linear_only_gbps));
        row("  weights GB/s / linear-only (b)", &|m| format!("{:.2}", m.weights_vs_linear_only));
        row("DAC decode per 10 s audio, ms", &|m| format!("{:.2}", m.dac_ms_per_10s));
        row("peak GPU memory allocated, MB", &|m| format!("{:.1}", m.peak_allocated_bytes as f64 / 1e6));
        row("peak GPU memory, 1000 bytes full length, MB (steps)", &|m| m.peak_long.map_or("-".into(), |(b, s)| format!("{:.1} ({s})", b as f64 / 1e6)));
        row("TTFA (100 bytes, Tts::speak), ms", &|m| m.ttfa_ms.map_or("n/a (no audio)".into(), |t| format!("{t:.1}")));
        row("whole generation (100 bytes, streamed), steps/s", &|m| format!("{:.1} ({} steps)", m.whole.steps_per_s, m.whole.steps));
        row("  / decoder alone (greedy)", &|m| format!("{:.2}", m.whole.vs_decoder_alone));
        row("  first audio, ms", &|m| format!("{:.1}", m.whole.first_audio_ms));
        row("  codec windows, most in flight, waits", &|m| format!("{}, {}, {}", m.whole.codec_windows, m.whole.codec_most_in_flight, m.whole.codec_waits));
        row("same, every codec window waited for, steps/s", &|m| format!("{:.1} ({} steps)", m.whole_sync.steps_per_s, m.whole_sync.steps));
        row("  / decoder alone (greedy)", &|m| format!("{:.2}", m.whole_sync.vs_decoder_alone));
        row("  first audio, ms", &|m| format!("{:.1}", m.whole_sync.first_audio_ms));
        if r.modes.iter().any(|m| m.script.is_some()) {
            fn script(m: &ModeFigures, f: fn(&ScriptRun) -> String) -> String {
                m.script.as_ref().map_or("-".into(), f)
            }
            row("script: bytes, segments, steps", &|m| script(m, |s| format!("{}, {}, {}", s.bytes, s.segments, s.steps)));
            row("script: steps/s (x real time)", &|m| script(m, |s| format!("{:.1} ({:.2}x)", s.steps_per_s, s.audio_s / s.seconds)));
            row("script: first audio, ms", &|m| script(m, |s| format!("{:.1}", s.first_audio_ms)));
            row("script: peak GPU memory, GB", &|m| script(m, |s| format!("{:.2}", s.peak_bytes as f64 / 1e9)));
        }
        row("pipelines: compiled / listed in s (cache)", &|m| {
            m.prepare.as_ref().map_or("not prepared".into(), |p| format!("{} / {} in {:.2} ({})", p.compiled, p.pipelines, p.seconds, p.cache))
        });
        row("first generation after load: TTFA, ms", &|m| m.first_ttfa_ms.map_or("n/a (no audio)".into(), |t| format!("{t:.1}")));
        if r.modes.iter().any(|m| m.memory.is_some()) {
            let mem = |m: &ModeFigures, f: &dyn Fn(&MemoryRun) -> String| m.memory.as_ref().map_or("-".into(), f);
            let mb = |b: Option<u64>| b.map_or("n/a".into(), |b| format!("{:.1}", b as f64 / 1e6));
            row("generations (Tts::speak, 64 rows each)", &|m| mem(m, &|r| r.generations.to_string()));
            row("  buffers after first / last, MB", &|m| mem(m, &|r| format!("{:.1} / {:.1}", r.buffers_first as f64 / 1e6, r.buffers_last as f64 / 1e6)));
            row("  device memory after first / last, MB", &|m| mem(m, &|r| format!("{} / {}", mb(r.device_first), mb(r.device_last))));
            row("  device memory, most after any, MB", &|m| mem(m, &|r| mb(r.device_max)));
        }
        if r.modes.iter().any(|m| m.profile.is_some()) {
            let p = |m: &ModeFigures, f: &dyn Fn(&Profile) -> String| m.profile.as_ref().map_or("-".into(), f);
            row("profile: dispatches per step", &|m| p(m, &|p| p.dispatches_per_step.to_string()));
            row("profile: attention only, ms/step", &|m| p(m, &|p| format!("{:.3}", p.attention_only_ms)));
            row("profile: dispatch floor, ms/step", &|m| p(m, &|p| format!("{:.3}", p.dispatch_floor_ms)));
            row("profile: best linear-only shape, steps/s", &|m| {
                p(m, &|p| {
                    p.linear_shapes
                        .iter()
                        .max_by(|a, b| a.steps_per_s.total_cmp(&b.steps_per_s))
                        .map_or("-".into(), |s| format!("{:.1} ({})", s.steps_per_s, s.shape))
                })
            });
            row("profile: encoder 1000 B linear only, ms", &|m| p(m, &|p| format!("{:.2}", p.encoder_linear_only_ms)));
            row("profile: encoder 1000 B attention only, ms", &|m| p(m, &|p| format!("{:.2}", p.encoder_attention_only_ms)));
            row("profile: encoder 100 / 1000 B host build, ms", &|m| p(m, &|p| format!("{:.2} / {:.2}", p.encoder_build_ms[0], p.encoder_build_ms[1])));
            row("profile: encoder 100 / 1000 B GPU replay, ms", &|m| p(m, &|p| format!("{:.2} / {:.2}", p.encoder_replay_ms[0], p.encoder_replay_ms[1])));
            row("profile: TTFA session set-up (host), ms", &|m| p(m, &|p| format!("{:.2}", p.ttfa_parts.session_host_ms)));
            row("profile: TTFA encoder wait, ms", &|m| p(m, &|p| format!("{:.2}", p.ttfa_parts.encoder_gpu_ms)));
            row("profile: TTFA codec set-up, ms", &|m| p(m, &|p| format!("{:.2}", p.ttfa_parts.codec_setup_ms)));
            row("profile: TTFA steps to first chunk + readback, ms", &|m| p(m, &|p| format!("{} steps {:.2}", p.ttfa_parts.steps, p.ttfa_parts.steps_ms)));
            row("profile: TTFA first window (again), ms", &|m| {
                p(m, &|p| format!("{} fr {:.2} ({:.2})", p.ttfa_parts.first_window_frames, p.ttfa_parts.first_window_ms, p.ttfa_parts.first_window_again_ms))
            });
        }
        let name_w = rows.iter().map(|(n, _)| n.chars().count()).max().unwrap_or(0);
        let col_w = rows.iter().flat_map(|(_, v)| v.iter().map(|s| s.chars().count())).max().unwrap_or(0);
        for (i, (name, values)) in rows.iter().enumerate() {
            let cells: Vec<String> = values.iter().map(|v| format!("{v:>col_w$}")).collect();
            println!("| {name:<name_w$} | {} |", cells.join(" | "));
            if i == 0 {
                println!("|{}|{}", "-".repeat(name_w + 2), cells.iter().map(|_| format!("{}:|", "-".repeat(col_w + 1))).collect::<String>());
            }
        }
    }
}
