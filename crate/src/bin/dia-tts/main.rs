//! `dia-tts`: text (and optionally a voice prompt) in, a 44.1 kHz WAV out, on the GPU through wgpu.

#[cfg(not(target_arch = "wasm32"))]
mod hub;

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    if let Err(e) = native::main() {
        eprintln!("dia-tts: error: {e}");
        std::process::exit(1);
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::path::{Path, PathBuf};
    use std::time::Instant;

    use clap::Parser;
    use dia_webgpu::dac::DacModel;
    use dia_webgpu::config::DiaConfig;
    use dia_webgpu::dia::stored::convert_dir;
    use dia_webgpu::dia::{load_model_dir, stored_numerics, GenerateOptions};
    use dia_webgpu::kernels::kv_cache::KvFormat;
    use dia_webgpu::weights::Checkpoint;
    use dia_webgpu::gpu::{Gpu, GpuOptions};
    use dia_webgpu::kernels::sampling::SamplingParams;
    use dia_webgpu::kernels::Numerics;
    use dia_webgpu::dia::segment::{split_script, SegmentLimits};
    use dia_webgpu::dia::tokenizer::encode_text;
    use dia_webgpu::pipeline::{list_text, wav_bytes, Audio, BatchProgress, PipelineCacheDir, PipelineError, ScriptProgress, SpokenText, Tts, VoicePrompt, SAMPLE_RATE};
    use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

    use super::hub;

    /// Dia 1.6B text-to-speech on the GPU (WebGPU through wgpu): writes a 44.1 kHz mono WAV.
    #[derive(Parser, Debug)]
    #[command(version, about, subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
    struct Args {
        #[command(subcommand)]
        command: Option<Command>,
        /// Text to speak; mark speakers with [S1] and [S2]. A text of any length (up to 256 KiB) is spoken in
        /// segments of about 5 to 11 s, one continuous stream (docs/long-form.md).
        #[arg(long, conflicts_with = "text_file", required_unless_present = "text_file")]
        text: Option<String>,
        /// Read the text from a file (a long script is fine).
        #[arg(long)]
        text_file: Option<PathBuf>,
        /// Speak every non-empty line of --text-file as its own text, several at a time, into one WAV per line:
        /// `<out stem>-<n>.wav`, n from 1 in line order (docs/batch.md). A line must fit one segment (1024 bytes).
        #[arg(long, requires = "text_file")]
        batch: bool,
        /// Lines generated together with --batch. Default: as many (up to 8) as the GPU's limits and memory allow.
        #[arg(long, requires = "batch", value_parser = clap::value_parser!(u64).range(1..=dia_webgpu::dia::batch_plan::MAX_BATCH as u64))]
        batch_size: Option<u64>,
        /// A voice to continue (WAV: integer PCM or 32-bit float, any rate, mono or stereo). Give its transcript
        /// with --prompt-text, or begin the text with it (a short text only).
        #[arg(long)]
        prompt_audio: Option<PathBuf>,
        /// The transcript of --prompt-audio, with its speaker tags. Needed for a text long enough to be spoken in
        /// several segments: every segment continues the prompt, so the speakers keep its voices.
        #[arg(long, requires = "prompt_audio")]
        prompt_text: Option<String>,
        /// Dia checkpoint directory (config.json + safetensors, HF or nari layout). Default: the Hugging Face
        /// cache, then a download of nari-labs/Dia-1.6B-0626.
        #[arg(long)]
        model: Option<PathBuf>,
        /// DAC codec directory. Default: the cache, then a download of descript/dac_44khz.
        #[arg(long)]
        codec: Option<PathBuf>,
        /// Output WAV file.
        #[arg(long, default_value = "out.wav")]
        out: PathBuf,
        /// Sampling temperature; 0 = greedy.
        #[arg(long, default_value_t = 1.2)]
        temperature: f32,
        #[arg(long, default_value_t = 0.95)]
        top_p: f32,
        /// Classifier-free guidance scale.
        #[arg(long, default_value_t = 3.0)]
        cfg_scale: f32,
        /// Candidates kept from the guided logits.
        #[arg(long, default_value_t = 45)]
        cfg_filter_top_k: u32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Rows to generate per segment (86 per second of audio, 15 of them the end tail). Default: up to the
        /// model's limit (3072 rows, about 35 s, less the context a segment continues).
        #[arg(long)]
        max_new_tokens: Option<usize>,
        /// Weights on the GPU: f32 (exact, 6.4 GB), f16w (f16, 3.2 GB), q8 (8-bit, 1.7 GB) or q4 (4-bit MLP and
        /// logits head, 8-bit attention, 1.1 GB). Default: the mode a converted checkpoint was written for, else f16w.
        #[arg(long, value_parser = ["f32", "f16w", "q8", "q4"])]
        dtype: Option<String>,
        /// Attention K/V caches: f32, f16 (half the memory: 0.53 GB instead of 1.06 GB for a 1000-byte text at
        /// full length) or q8 (bytes with a scale per head and position: 0.27 GB). Default: q8 with --dtype q4, f16
        /// with q8, f32 otherwise.
        #[arg(long, value_parser = ["f32", "f16", "q8"])]
        kv_cache: Option<String>,
        /// Also write the generated (delayed) codes as JSON.
        #[arg(long)]
        codes_out: Option<PathBuf>,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Command {
        /// Writes a Dia checkpoint stored as one mode keeps it (config.json + model.safetensors, HF layout), which
        /// loads in that mode with nothing to convert: e.g. a q4 checkpoint of ~1.1 GB instead of 6.4 GB of f32.
        Convert(ConvertArgs),
    }

    #[derive(clap::Args, Debug)]
    struct ConvertArgs {
        /// Source checkpoint directory (F32, BF16 or F16; HF or nari layout; single or sharded). Default: the
        /// Hugging Face cache, then a download of nari-labs/Dia-1.6B-0626.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Storage: f32, f16, q8 or q4 (the modes of `--dtype`; f16 is f16w's).
        #[arg(long, value_parser = ["f32", "f16", "f16w", "q8", "q4"])]
        dtype: String,
        /// Output directory (must not exist; it appears only once complete).
        #[arg(long)]
        out: PathBuf,
    }

    /// `dia-tts convert`.
    fn convert(args: &ConvertArgs) -> Result<(), String> {
        let numerics = match args.dtype.as_str() {
            "f16" => Numerics::F16W,
            other => Numerics::parse(other).expect("clap checked the value"),
        };
        if args.out.exists() {
            return Err(format!("--out {} already exists: give a new directory", args.out.display()));
        }
        let model = resolve(args.model.as_deref(), hub::DIA_REPO)?
            .ok_or_else(|| format!("no source checkpoint: {} could not be found or downloaded; pass --model DIR", hub::DIA_REPO))?;
        let tensors = dia_webgpu::dia::layout::expected_hf_tensors(&read_config(&model)?).len();
        let bar = ProgressBar::new(tensors as u64);
        bar.set_style(ProgressStyle::with_template("{spinner} converting [{bar:40}] {pos}/{len} tensors {msg}").unwrap().progress_chars("=> "));
        let t0 = Instant::now();
        let report = convert_dir(&model, &args.out, numerics, &mut |done, name| {
            bar.set_position(done as u64);
            bar.set_message(name.to_string());
        })
        .map_err(|e| format!("convert {}: {e}", model.display()))?;
        bar.finish_and_clear();
        println!(
            "{}: {} tensors, {:.3} GB ({}) in {:.1} s; use it with --model {} (it loads as --dtype {})",
            report.out_dir.display(),
            report.tensors,
            report.bytes as f64 / 1e9,
            numerics.name(),
            t0.elapsed().as_secs_f64(),
            report.out_dir.display(),
            numerics.name()
        );
        Ok(())
    }

    fn read_config(dir: &Path) -> Result<DiaConfig, String> {
        DiaConfig::from_dir(dir).map_err(|e| e.to_string())
    }

    /// The mode to load `dir` (whose config is `cfg`, if it parsed) in: `--dtype`, else the one it was converted
    /// for, else f16w.
    fn choose_numerics(dtype: Option<&str>, dir: &Path, cfg: Option<&DiaConfig>) -> Result<Numerics, String> {
        // A broken checkpoint is reported by the load itself.
        let stored = cfg.and_then(|cfg| stored_numerics(cfg, &Checkpoint::open_dir(dir).ok()?).ok().flatten());
        Ok(match (dtype.map(|d| Numerics::parse(d).expect("clap checked the value")), stored) {
            (Some(asked), Some(stored)) if asked != stored => {
                eprintln!(
                    "dia-tts: {} was converted for {}; its matrices are dequantized and stored again as {}",
                    dir.display(),
                    stored.name(),
                    asked.name()
                );
                asked
            }
            (Some(asked), _) => asked,
            (None, Some(stored)) => stored,
            (None, None) => Numerics::F16W,
        })
    }

    /// Rows the bundled random-weight model generates by default: 2 s of audio (86 frames per second) plus the
    /// 15-row EOS tail, so the README's first command ends in seconds even on a software adapter.
    const BUNDLED_SAMPLE_ROWS: usize = 2 * 86 + 15;

    /// The tiny random-weight model shipped in the repository, for machines without the real weights.
    fn bundled() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/tiny")
    }

    /// The real checkpoint from `explicit`, the cache or the hub; `None` when unreachable (after saying why).
    fn resolve(explicit: Option<&Path>, repo: &str) -> Result<Option<PathBuf>, String> {
        if let Some(p) = explicit {
            return Ok(Some(p.to_path_buf()));
        }
        if let Some(p) = hub::find_cached(repo) {
            return Ok(Some(p));
        }
        eprintln!("dia-tts: {repo} is not in the Hugging Face cache ({}); downloading from {}", hub::cache_root().display(), hub::endpoint());
        match hub::download(repo) {
            Ok(p) => Ok(Some(p)),
            Err(e) if e.is_unreachable() => {
                eprintln!("dia-tts: cannot download {repo}: {e}");
                Ok(None)
            }
            // An unsafe or corrupt answer is not papered over with the bundled model.
            Err(e) => Err(format!("download of {repo} from {} refused: {e}", hub::endpoint())),
        }
    }

    pub fn main() -> Result<(), String> {
        let args = Args::parse();
        if let Some(Command::Convert(c)) = &args.command {
            return convert(c);
        }
        let text = match (&args.text, &args.text_file) {
            (Some(t), _) => t.clone(),
            (None, Some(f)) => std::fs::read_to_string(f).map_err(|e| format!("cannot read --text-file {}: {e}", f.display()))?,
            (None, None) => unreachable!("clap requires one"),
        };
        let text = text.trim_end_matches(['\n', '\r']).to_string();
        // Everything a user can get wrong is checked before minutes of loading and generating.
        if text.trim().is_empty() {
            return Err("the text is empty (or only whitespace): give the words to speak with --text or --text-file".into());
        }
        let limits = SegmentLimits::default();
        let segments = if args.batch {
            0
        } else {
            // The script's segments now: a bad script, or a long one with a prompt but no transcript, fails before loading.
            let segments = split_script(&text, &limits).map_err(|e| e.to_string())?.len();
            if segments > 1 && args.prompt_audio.is_some() && args.prompt_text.is_none() {
                return Err(format!("the text is {segments} segments long: give the transcript of --prompt-audio with --prompt-text (every segment continues it)"));
            }
            segments
        };
        let lines = if args.batch { batch_lines(&text) } else { Vec::new() };
        check_output_path(&args.out, "--out")?;
        if let Some(p) = &args.codes_out {
            check_output_path(p, "--codes-out")?;
        }
        let prompt = match &args.prompt_audio {
            Some(p) => {
                let bytes = std::fs::read(p).map_err(|e| format!("cannot read --prompt-audio {}: {e}", p.display()))?;
                Some(Audio::from_wav(&bytes).map_err(|e| format!("{}: {e}", p.display()))?)
            }
            None => None,
        };

        let model = resolve(args.model.as_deref(), hub::DIA_REPO)?;
        let codec = resolve(args.codec.as_deref(), hub::DAC_REPO)?;
        let (model, codec) = match (model, codec) {
            (Some(m), Some(c)) => (m, c),
            _ => {
                eprintln!(
                    "dia-tts: the real weights are not available, so this run uses the bundled tiny model with random \
                     weights: the WAV will be noise. For real speech, put nari-labs/Dia-1.6B-0626 and descript/dac_44khz \
                     in the Hugging Face cache (e.g. `huggingface-cli download nari-labs/Dia-1.6B-0626` and \
                     `huggingface-cli download descript/dac_44khz`), set HF_ENDPOINT to a reachable mirror, or pass \
                     --model DIR --codec DIR."
                );
                (bundled().join("dia"), bundled().join("dac"))
            }
        };
        // Random weights speak noise: unless asked otherwise, a short sample of it (it may end sooner, on its EOS).
        let using_bundled = model == bundled().join("dia");
        let max_new_tokens = match args.max_new_tokens {
            Some(n) => Some(n),
            None if using_bundled => {
                eprintln!("dia-tts: the bundled model makes at most {BUNDLED_SAMPLE_ROWS} rows (about 2 s of audio); --max-new-tokens changes that");
                Some(BUNDLED_SAMPLE_ROWS)
            }
            None => None,
        };

        let config = read_config(&model).ok();
        if let Some(cfg) = config.as_ref().filter(|_| args.batch) {
            check_lines(&lines, args.text_file.as_deref().unwrap_or(Path::new("")), args.prompt_text.as_deref(), cfg.encoder.max_positions)?;
        }
        let numerics = choose_numerics(args.dtype.as_deref(), &model, config.as_ref())?;
        // The device must bind the largest matrix; a broken config is reported by the load itself.
        let min_storage_binding = config.as_ref().map_or(64 << 20, |cfg| dia_webgpu::dia::largest_matrix_bytes(cfg, numerics)).max(16 << 20);
        let gpu = Gpu::new_blocking(GpuOptions { min_storage_binding, ..GpuOptions::default() }).map_err(|e| e.to_string())?;
        if let Some(hint) = gpu.software_gl_hint() {
            eprintln!("dia-tts: {hint}");
        }
        let t_load = Instant::now();
        let mut dia = load_model_dir(&gpu, &model, numerics).map_err(|e| format!("model {}: {e}", model.display()))?;
        if let Some(kv) = &args.kv_cache {
            let format: KvFormat = kv.parse()?;
            let d = &dia.cfg.decoder;
            if !(format.supports(d.head_dim as u32) && format.supports(d.cross_head_dim as u32)) {
                return Err(format!("--kv-cache {kv}: this model's head_dim ({}, cross {}) does not suit {kv} caches", d.head_dim, d.cross_head_dim));
            }
            dia.kv_format = format;
        }
        let dac = DacModel::load_dir(&gpu, &codec, numerics, prompt.is_some()).map_err(|e| format!("codec {}: {e}", codec.display()))?;
        let load_s = t_load.elapsed().as_secs_f64();

        let opts = GenerateOptions {
            sampling: SamplingParams {
                cfg_scale: args.cfg_scale,
                cfg_filter_top_k: args.cfg_filter_top_k,
                temperature: args.temperature,
                top_p: args.top_p,
                seed: args.seed,
            },
            max_new_tokens: max_new_tokens.unwrap_or(GenerateOptions::default().max_new_tokens),
            ..GenerateOptions::default()
        };
        let tts = Tts { gpu: &gpu, dia: &dia, dac: &dac };
        // Every pipeline compiled now, in parallel, or found in the pipeline cache of an earlier run: the first
        // audio waits for no compile.
        let (prepared, note) = tts.prepare_cached(PipelineCacheDir::from_env().as_ref()).map_err(|e| e.to_string())?;
        if let Some(note) = note {
            eprintln!("dia-tts: {note}");
        }
        let load_s = format!("{load_s:.1} s, {prepared}");
        if args.batch {
            let file = args.text_file.as_deref().expect("clap requires --text-file with --batch");
            return speak_lines(&args, &tts, file, &lines, prompt.as_ref(), &opts, max_new_tokens, numerics, load_s);
        }
        // One bar for the segments (with the audio so far), one for the rows of the segment being generated.
        let bars = MultiProgress::new();
        let overall = bars.add(ProgressBar::new(segments as u64));
        overall.set_style(ProgressStyle::with_template("{spinner} speaking [{bar:40}] segment {pos}/{len} {msg}").unwrap().progress_chars("=> "));
        let segment_bar = bars.add(ProgressBar::new(0));
        segment_bar.set_style(ProgressStyle::with_template("  segment [{bar:40}] {pos}/{len} rows {per_sec}").unwrap().progress_chars("=> "));
        let mut pcm: Vec<f32> = Vec::new();
        let t0 = Instant::now();
        let mut first_audio = None;
        let voice = prompt.as_ref().map(|audio| VoicePrompt { audio, transcript: args.prompt_text.as_deref() });
        let speech = pollster::block_on(tts.speak_script(
            &text,
            voice,
            &opts,
            &limits,
            &mut |p: &ScriptProgress| {
                if p.rows == 0 {
                    overall.set_position(p.segment as u64 + 1);
                    segment_bar.reset();
                    segment_bar.set_length(max_new_tokens.unwrap_or(p.estimated_rows) as u64);
                }
                segment_bar.set_position(p.rows as u64);
                overall.set_message(format!("{:.1} s of audio", p.frames_out as f64 * 512.0 / SAMPLE_RATE as f64));
            },
            &mut |chunk: &[f32]| {
                first_audio.get_or_insert_with(|| t0.elapsed());
                pcm.extend_from_slice(chunk);
            },
            &|| false,
        ))
        .map_err(|e| e.to_string())?;
        let gen_s = t0.elapsed().as_secs_f64();
        segment_bar.finish_and_clear();
        overall.finish_and_clear();

        write_atomically(&args.out, &wav_bytes(&pcm, SAMPLE_RATE))?;
        if let Some(p) = &args.codes_out {
            let json_of = |g: &dia_webgpu::dia::Generation| {
                let rows: Vec<&[u32]> = g.codes.chunks(g.channels).collect();
                serde_json::json!({ "delayed_codes": rows, "prefix_rows": g.prefix_rows, "channels": g.channels })
            };
            // One segment: the generation as before; several: one entry per segment, with the text it read.
            let json = match &speech.segments[..] {
                [one] => json_of(&one.generation),
                all => serde_json::json!({ "segments": all.iter().map(|s| {
                    let mut j = json_of(&s.generation);
                    j["text"] = s.text.clone().into();
                    j
                }).collect::<Vec<_>>() }),
            };
            write_atomically(p, json.to_string().as_bytes())?;
        }
        let steps: usize = speech.segments.iter().map(|s| s.generation.rows - s.generation.prefix_rows).sum();
        let n = speech.segments.len();
        let audio_s = pcm.len() as f64 / SAMPLE_RATE as f64;
        println!(
            "{}: {:.2} s of audio, {n} segment{}, {steps} steps in {gen_s:.2} s ({:.1} steps/s, {:.2}x real time, first audio after {:.0} ms) on {} [{}] ({} KV caches), weights loaded in {load_s}",
            args.out.display(),
            audio_s,
            if n == 1 { "" } else { "s" },
            steps as f64 / gen_s,
            audio_s / gen_s,
            first_audio.map(|d| d.as_secs_f64() * 1e3).unwrap_or(f64::NAN),
            gpu.describe(),
            numerics.name(),
            dia.kv_format,
        );
        Ok(())
    }

    /// The texts of a --batch file: its non-empty lines (trimmed), with their line numbers (from 1).
    fn batch_lines(text: &str) -> Vec<(usize, String)> {
        text.lines().enumerate().map(|(i, l)| (i + 1, l.trim().to_string())).filter(|(_, l)| !l.is_empty()).collect()
    }

    /// Every line of a --batch file must be one text the encoder takes whole (with the voice transcript in front).
    fn check_lines(lines: &[(usize, String)], file: &Path, transcript: Option<&str>, limit: usize) -> Result<(), String> {
        for (line, text) in lines {
            let bytes = encode_text(&list_text(transcript, text)).len();
            if bytes > limit {
                let with = if transcript.is_some() { " with the --prompt-text in front" } else { "" };
                return Err(format!(
                    "line {line} of {} is {bytes} bytes{with}; one text of --batch holds at most {limit}: split the line, or speak the file without --batch (one long script)",
                    file.display()
                ));
            }
        }
        Ok(())
    }

    /// `<out stem>-<n>.<out extension>` next to `out`.
    fn numbered_path(out: &Path, n: usize) -> PathBuf {
        let stem = out.file_stem().map_or("out".into(), |s| s.to_string_lossy());
        let name = match out.extension() {
            Some(ext) => format!("{stem}-{n}.{}", ext.to_string_lossy()),
            None => format!("{stem}-{n}"),
        };
        out.with_file_name(name)
    }

    /// `dia-tts --batch`: every line its own WAV, written (atomically) as its batch finishes.
    #[allow(clippy::too_many_arguments)]
    fn speak_lines(
        args: &Args,
        tts: &Tts,
        file: &Path,
        lines: &[(usize, String)],
        prompt: Option<&Audio>,
        opts: &GenerateOptions,
        max_new_tokens: Option<usize>,
        numerics: Numerics,
        load_s: String,
    ) -> Result<(), String> {
        let texts: Vec<&str> = lines.iter().map(|(_, t)| t.as_str()).collect();
        let voice = prompt.map(|audio| VoicePrompt { audio, transcript: args.prompt_text.as_deref() });
        // Line numbers in place of list indices.
        let name_line = |e: PipelineError| match e {
            PipelineError::BatchText { index, source } => format!("line {} of {}: {source}", lines[index].0, file.display()),
            e => e.to_string(),
        };
        let batch_size = match args.batch_size {
            Some(n) => n as usize,
            None => {
                let prompt_frames = prompt.map_or(0, |a| (a.samples.len() as u64 * SAMPLE_RATE as u64).div_ceil(a.sample_rate as u64).div_ceil(512) as usize);
                tts.auto_batch_size(&texts, voice, prompt_frames, opts).map_err(name_line)?
            }
        };
        let batches = texts.len().div_ceil(batch_size);
        eprintln!("dia-tts: {} lines in {batches} batch{} of up to {batch_size}", texts.len(), if batches == 1 { "" } else { "es" });
        let bars = MultiProgress::new();
        let rows_bar = bars.add(ProgressBar::new(0));
        rows_bar.set_style(ProgressStyle::with_template("{spinner} batch {msg} [{bar:40}] {pos}/{len} rows {per_sec}").unwrap().progress_chars("=> "));
        let t0 = Instant::now();
        let mut batch_start = Instant::now();
        let write_error: std::cell::RefCell<Option<String>> = Default::default();
        let (mut written, mut audio_s, mut text_steps) = (Vec::new(), 0.0, 0);
        let done = pollster::block_on(tts.speak_batch(
            &texts,
            voice,
            opts,
            batch_size,
            &mut |p: &BatchProgress| {
                if p.rows == 0 {
                    if p.batch > 0 {
                        let took = batch_start.elapsed().as_secs_f64();
                        bars.suspend(|| eprintln!("dia-tts: batch {}/{} done in {took:.1} s ({}/{} lines written)", p.batch, p.batches, p.done, texts.len()));
                    }
                    batch_start = Instant::now();
                    rows_bar.reset();
                    rows_bar.set_length(max_new_tokens.unwrap_or(p.max_rows.max(1)) as u64);
                    rows_bar.set_message(format!("{}/{} (lines {}-{})", p.batch + 1, p.batches, p.first_item + 1, p.first_item + p.items));
                }
                rows_bar.set_position(p.rows as u64);
            },
            &mut |t: SpokenText| {
                if write_error.borrow().is_some() {
                    return;
                }
                let path = numbered_path(&args.out, t.index + 1);
                let mut result = write_atomically(&path, &wav_bytes(&t.samples, SAMPLE_RATE));
                if let (Ok(()), Some(codes)) = (&result, &args.codes_out) {
                    let rows: Vec<&[u32]> = t.codes.chunks(tts.dia.cfg.decoder.channels).collect();
                    let json = serde_json::json!({ "delayed_codes": rows, "prefix_rows": t.prefix_rows, "channels": tts.dia.cfg.decoder.channels, "text": t.text, "line": lines[t.index].0 });
                    result = write_atomically(&numbered_path(codes, t.index + 1), json.to_string().as_bytes());
                }
                match result {
                    Ok(()) => {
                        audio_s += t.samples.len() as f64 / SAMPLE_RATE as f64;
                        text_steps += t.steps;
                        written.push(path);
                    }
                    Err(e) => *write_error.borrow_mut() = Some(e),
                }
            },
            // A write that failed stops the run: the lines after it would have nowhere to go.
            &|| write_error.borrow().is_some(),
        ));
        rows_bar.finish_and_clear();
        if let Some(e) = write_error.borrow_mut().take() {
            return Err(e);
        }
        let done = done.map_err(name_line)?;
        let gen_s = t0.elapsed().as_secs_f64();
        eprintln!("dia-tts: batch {}/{} done in {:.1} s ({}/{} lines written)", done.batches, done.batches, batch_start.elapsed().as_secs_f64(), written.len(), texts.len());
        println!(
            "{} .. {}: {} WAVs, {audio_s:.2} s of audio, {} batch{} of up to {batch_size}, {} steps in {gen_s:.2} s ({:.1} steps/s, {:.1} rows/s over all lines, {:.2}x real time) on {} [{}], weights loaded in {load_s}",
            written.first().map_or(String::new(), |p| p.display().to_string()),
            written.last().map_or(String::new(), |p| p.display().to_string()),
            written.len(),
            done.batches,
            if done.batches == 1 { "" } else { "es" },
            done.steps,
            done.steps as f64 / gen_s,
            text_steps as f64 / gen_s,
            audio_s / gen_s,
            tts.gpu.describe(),
            numerics.name(),
        );
        Ok(())
    }

    /// An output path must name a file in a directory that exists, so a typo fails at once, not after the generation.
    fn check_output_path(path: &Path, flag: &str) -> Result<(), String> {
        if path.as_os_str().is_empty() || path.file_name().is_none() {
            return Err(format!("{flag} {:?} does not name a file", path.display().to_string()));
        }
        if path.is_dir() {
            return Err(format!("{flag} {} is a directory; give a file name", path.display()));
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            return Err(format!("{flag} {}: the directory {} does not exist", path.display(), dir.display()));
        }
        Ok(())
    }

    /// Writes through a temporary file and renames, so a failure never leaves a half-written output.
    fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
        let tmp = path.with_file_name(format!(".{}.partial", path.file_name().and_then(|n| n.to_str()).unwrap_or("out")));
        std::fs::write(&tmp, bytes).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot write {}: {e}", path.display())
        })
    }
}
