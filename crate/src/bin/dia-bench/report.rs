//! The figures a speed run reports (`Report` and its parts, printed as JSON with `--json`) and the table printed
//! otherwise.

use serde::Serialize;

use dia_webgpu::gpu::{AllocationGroup, Gpu};

use crate::timing::FRAMES_PER_10S;

#[derive(Serialize)]
pub(crate) struct Report {
    pub(crate) adapter: String,
    /// Whether the DAC and the encoder ran on tensor cores (cooperative matrices).
    pub(crate) tensor_cores: bool,
    /// How the decode attention and the sampler reduced: "Subgroup" (subgroup sizes `min..max`) or "Workgroup"
    /// (no subgroups on the adapter, or natively without `DIA_SUBGROUPS=on`).
    pub(crate) reductions: String,
    pub(crate) config: String,
    pub(crate) batch: usize,
    pub(crate) steps: usize,
    /// Device-to-device copy: bytes read plus bytes written per second.
    pub(crate) copy_bytes: u64,
    pub(crate) copy_gbps_read_write: f64,
    pub(crate) modes: Vec<ModeFigures>,
}

#[derive(Serialize)]
pub(crate) struct ModeFigures {
    pub(crate) numerics: &'static str,
    /// How the attention K/V caches were held (f32 or f16).
    pub(crate) kv_cache: &'static str,
    pub(crate) model_build_s: f64,
    pub(crate) encoder_ms_100_bytes: f64,
    pub(crate) encoder_ms_1000_bytes: f64,
    pub(crate) greedy: DecoderRun,
    pub(crate) sampled: DecoderRun,
    /// Decoder layer matrices (cross K/V excluded: they are read by the encoder pass) + logits head.
    pub(crate) weight_bytes_per_step: u64,
    /// Greedy run: weight bytes per step × steps/s.
    pub(crate) weights_gbps: f64,
    pub(crate) weights_vs_copy: f64,
    /// The same matrices through `linear` alone, M = 2·batch, one submission per pass.
    pub(crate) linear_only_steps_per_s: f64,
    pub(crate) linear_only_gbps: f64,
    pub(crate) weights_vs_linear_only: f64,
    pub(crate) dac_ms_per_10s: f64,
    pub(crate) peak_allocated_bytes: u64,
    /// `--peak-long`: peak GPU memory (model, codec, session) over one `Tts::speak` of 1000 bytes of text
    /// allowed the decoder's full length, and the steps it made (random weights may end earlier).
    pub(crate) peak_long: Option<(u64, usize)>,
    /// `--peak-long`: what was allocated at that peak, by allocation group (labels with layer numbers folded).
    pub(crate) peak_long_groups: Option<Vec<AllocationGroup>>,
    /// `Tts::speak` on 100 bytes of text, from the call to the first PCM chunk (None: no audio came, the
    /// random model ended at once).
    pub(crate) ttfa_ms: Option<f64>,
    /// `Tts::speak` of 100 bytes allowed `--steps` new rows, streamed through the codec (median of `--runs`),
    /// its windows decoded while the decoder goes on (`codec_windows_in_flight` 2, the default).
    pub(crate) whole: WholeRun,
    /// The same with every codec window waited for (`codec_windows_in_flight` 1: the synchronous path), measured
    /// right before `whole`.
    pub(crate) whole_sync: WholeRun,
    /// `--script-bytes`: one `Tts::speak_script` of that many bytes.
    pub(crate) script: Option<ScriptRun>,
    /// `Tts::prepare` right after loading (None with `--no-prepare`): pipelines listed, compiled, seconds and
    /// the pipeline cache's part (`DIA_PIPELINE_CACHE=off` for none).
    pub(crate) prepare: Option<PrepareFigures>,
    /// The first `Tts::speak` after loading (and preparing), 100 bytes: time to first audio, as a fresh
    /// process's first generation sees it (None: no audio came).
    pub(crate) first_ttfa_ms: Option<f64>,
    pub(crate) memory: Option<MemoryRun>,
    pub(crate) profile: Option<Profile>,
}

/// A whole generation as users get it: encoder, steps, readbacks and the streaming codec.
#[derive(Serialize, Clone, Copy)]
pub(crate) struct WholeRun {
    pub(crate) steps: usize,
    pub(crate) steps_per_s: f64,
    /// From the call to the first PCM chunk.
    pub(crate) first_audio_ms: f64,
    /// steps/s over the greedy decoder-alone run's.
    pub(crate) vs_decoder_alone: f64,
    /// The codec windows of the last run: how many, most on the GPU at once, times the host waited for one.
    pub(crate) codec_windows: usize,
    pub(crate) codec_most_in_flight: usize,
    pub(crate) codec_waits: usize,
}

#[derive(Serialize)]
pub(crate) struct ScriptRun {
    pub(crate) bytes: usize,
    pub(crate) segments: usize,
    pub(crate) steps: usize,
    pub(crate) audio_s: f64,
    pub(crate) seconds: f64,
    pub(crate) steps_per_s: f64,
    pub(crate) first_audio_ms: f64,
    /// Peak GPU memory over the script (model and codec included).
    pub(crate) peak_bytes: u64,
}

#[derive(Serialize)]
pub(crate) struct PrepareFigures {
    pub(crate) pipelines: usize,
    pub(crate) compiled: usize,
    pub(crate) seconds: f64,
    /// "hit", "miss: <why>", "off" or "unsupported".
    pub(crate) cache: String,
}

/// GPU memory after each of `generations` speak calls in one session (model and codec loaded once).
#[derive(Serialize)]
pub(crate) struct MemoryRun {
    pub(crate) generations: usize,
    /// Bytes held by the library's buffers after the first and the last call.
    pub(crate) buffers_first: u64,
    pub(crate) buffers_last: u64,
    /// Device memory wgpu's allocator holds (all of wgpu's allocations), after the first and the last call
    /// and the most after any; None where the backend gives no allocator report.
    pub(crate) device_first: Option<u64>,
    pub(crate) device_last: Option<u64>,
    pub(crate) device_max: Option<u64>,
}

#[derive(Serialize, Clone, Copy)]
pub(crate) struct DecoderRun {
    pub(crate) steps_per_s: f64,
    pub(crate) ms_per_step: f64,
    /// CPU time to record and submit one step (if close to ms_per_step, the GPU waits on the CPU).
    pub(crate) host_ms_per_step: f64,
}

#[derive(Serialize)]
pub(crate) struct Profile {
    pub(crate) dispatches_per_step: usize,
    /// Self- and cross-attention of every layer alone (KV length = the timed run's mid position).
    pub(crate) attention_only_ms: f64,
    /// One minimal rmsnorm (one row) per dispatch of the step, all serialised: launch + barrier cost.
    pub(crate) dispatch_floor_ms: f64,
    /// `linear` alone over the step's matrices with other small-M workgroup shapes.
    pub(crate) linear_shapes: Vec<LinearShapeRun>,
    /// The encoder's parts alone for 1000 bytes of text: tiled `linear` over every encoder matrix and the
    /// cross K/V projections; prefill attention of every encoder layer.
    pub(crate) encoder_linear_only_ms: f64,
    pub(crate) encoder_attention_only_ms: f64,
    /// The encoder on 100 / 1000 bytes: host time to build its dispatches, then the GPU time of replaying
    /// them (one submission, waited).
    pub(crate) encoder_build_ms: [f64; 2],
    pub(crate) encoder_replay_ms: [f64; 2],
    /// Time to first audio split at sync points (each part waited for, so their sum exceeds the overlapped
    /// real thing): session set-up on the host, its encoder on the GPU, the streaming codec's set-up, the
    /// decoder steps up to the first decodable chunk with their readback, the first window's decode
    /// (a fresh decoder: plan built) and the same window again (plan reused).
    pub(crate) ttfa_parts: TtfaParts,
}

#[derive(Serialize)]
pub(crate) struct TtfaParts {
    pub(crate) session_host_ms: f64,
    pub(crate) encoder_gpu_ms: f64,
    pub(crate) codec_setup_ms: f64,
    pub(crate) steps: usize,
    pub(crate) steps_ms: f64,
    pub(crate) first_window_frames: usize,
    pub(crate) first_window_ms: f64,
    pub(crate) first_window_again_ms: f64,
}

#[derive(Serialize)]
pub(crate) struct LinearShapeRun {
    /// "auto" (what `linear` picks per matrix) or threads x k_threads x rows_per_thread.
    pub(crate) shape: String,
    pub(crate) steps_per_s: f64,
    pub(crate) gbps: f64,
}

/// GB/s, with three decimals below 10 (tiny models on a CPU adapter stream a few MB/s).
pub(crate) fn gbps(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

/// `Report::reductions`.
pub(crate) fn reductions(gpu: &Gpu) -> String {
    match gpu.subgroup_sizes() {
        Some(s) => format!("{:?} (subgroup sizes {}..{})", gpu.reduction(), s.min, s.max),
        None => format!("{:?} (no subgroups)", gpu.reduction()),
    }
}

pub(crate) fn print_table(r: &Report) {
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
