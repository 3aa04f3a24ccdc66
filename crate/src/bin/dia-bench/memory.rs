//! GPU memory: `--peak-long` / `--peak-only` (the peak of one long generation and what it was made of) and memory
//! over many generations.

use std::cell::Cell;

use serde::Serialize;

use dia_webgpu::config::{DacConfig, DiaConfig};
use dia_webgpu::dac::DacModel;
use dia_webgpu::dia::{DiaError, DiaModel, GenerateOptions};
use dia_webgpu::gpu::{AllocationGroup, Gpu};
use dia_webgpu::pipeline::{PipelineError, Tts};

use crate::Result;
use crate::args::{Args, RandomWeights, combinations, label};
use crate::report::MemoryRun;
use crate::timing::{random_dia, random_dac};

/// `--peak-long`: the peak, the steps made and what was allocated at the peak.
#[derive(Serialize)]
pub(crate) struct LongPeak {
    pub(crate) bytes: u64,
    /// Steps made (when ended early by `--peak-pcm-chunks`: the frames the streamed audio covers).
    pub(crate) steps: usize,
    pub(crate) groups: Vec<AllocationGroup>,
}

/// Peak GPU memory (model and codec as loaded, plus everything one generation allocates) of a 1000-byte text
/// generated up to the decoder's length, the steps made, and what the peak was made of. `pcm_chunks` > 0 ends
/// the generation once the codec has streamed that many chunks (buffers are sized for the full length anyway).
pub(crate) fn peak_of_long_generation(gpu: &Gpu, dia: &DiaModel, dac: &DacModel, pcm_chunks: usize) -> Result<LongPeak> {
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
pub(crate) fn group_kind(label: &str) -> &'static str {
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
pub(crate) fn print_groups(name: &str, groups: &[AllocationGroup]) {
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
pub(crate) fn peak_only(gpu: &Gpu, cfg: &DiaConfig, dac_cfg: &DacConfig, args: &Args) -> Result<()> {
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
        let mut model = random_dia(gpu, cfg, numerics, RandomWeights::Uniform)?;
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
pub(crate) fn memory_over_generations(gpu: &Gpu, dia: &DiaModel, dac: &DacModel, n: usize) -> Result<MemoryRun> {
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
