//! Lists of texts (`Tts::speak_batch`): each text equals its generation alone, the audio of a text does not depend
//! on the batch size, typed errors name the text, cancellation, progress, and the memory plan against what a
//! session really allocates.
mod common;

use std::cell::Cell;

use common::{fixtures_dir, snr_db, test_gpu};
use dia_webgpu::config::DiaConfig;
use dia_webgpu::dac::DacModel;
use dia_webgpu::dia::batch_plan::{max_batch, session_size, BatchShape, MAX_BATCH};
use dia_webgpu::dia::tokenizer::encode_text;
use dia_webgpu::dia::{load_model_dir, DiaError, DiaModel, GenerateOptions, Reserve, Session};
use dia_webgpu::gpu::Gpu;
use dia_webgpu::kernels::sampling::SamplingParams;
use dia_webgpu::kernels::Numerics;
use dia_webgpu::pipeline::{BatchProgress, PipelineError, SpokenText, Tts};

fn models(gpu: &Gpu) -> (DiaModel, DacModel) {
    let dir = fixtures_dir();
    (load_model_dir(gpu, &dir.join("dia"), Numerics::F32).unwrap(), DacModel::load_dir(gpu, &dir.join("dac"), Numerics::F32, false).unwrap())
}

fn options(temperature: f32, seed: u64) -> GenerateOptions {
    GenerateOptions {
        sampling: SamplingParams { cfg_scale: 3.0, cfg_filter_top_k: 45, temperature, top_p: 0.95, seed },
        max_new_tokens: 40,
        ..GenerateOptions::default()
    }
}

const TEXTS: [&str; 4] = ["[S1] Hello from the browser. [S2] Hi!", "[S1] (laughs) Short.", "[S2] A third line, a little longer than the others are.", "[S1] Four."];

fn speak_batch(tts: &Tts, texts: &[&str], opts: &GenerateOptions, batch_size: usize) -> Result<(Vec<SpokenText>, Vec<BatchProgress>), PipelineError> {
    let mut spoken = Vec::new();
    let mut progress = Vec::new();
    let done = pollster::block_on(tts.speak_batch(texts, None, opts, batch_size, &mut |p| progress.push(p.clone()), &mut |t| spoken.push(t), &|| false))?;
    assert_eq!(done.texts, texts.len());
    assert_eq!(done.batches, texts.len().div_ceil(batch_size));
    assert_eq!(done.samples, spoken.iter().map(|t| t.samples.len()).sum::<usize>());
    Ok((spoken, progress))
}

fn speak_alone(tts: &Tts, text: &str, opts: &GenerateOptions) -> (Vec<f32>, dia_webgpu::pipeline::Speech) {
    let mut pcm = Vec::new();
    let s = pollster::block_on(tts.speak(text, None, opts, &mut |c: &[f32]| pcm.extend_from_slice(c), &|| false)).unwrap();
    (pcm, s)
}

/// Greedy: every text of a batch is exactly its generation alone (codes, steps, frames) and its audio the same to
/// within float error (the codec's windows may fall elsewhere); texts end at different rows.
#[test]
fn batch_greedy_texts_equal_their_speech_alone() {
    let gpu = test_gpu();
    let (dia, dac) = models(&gpu);
    let tts = Tts { gpu: &gpu, dia: &dia, dac: &dac };
    let opts = options(0.0, 0);
    let (spoken, _) = speak_batch(&tts, &TEXTS, &opts, 3).unwrap();
    assert_eq!(spoken.iter().map(|t| t.index).collect::<Vec<_>>(), [0, 1, 2, 3], "list order");
    let mut steps = Vec::new();
    for (t, text) in spoken.iter().zip(TEXTS) {
        let (pcm, alone) = speak_alone(&tts, text, &opts);
        assert_eq!(t.text, text);
        assert_eq!(t.steps, alone.generation.rows - alone.generation.prefix_rows, "text {}: steps", t.index);
        assert_eq!(t.codes, alone.generation.item(0), "text {}: codes", t.index);
        assert_eq!(t.frames.len() / dia.cfg.decoder.channels, alone.frames, "text {}: frames", t.index);
        assert_eq!(t.samples.len(), pcm.len(), "text {}: samples", t.index);
        if !pcm.is_empty() {
            let snr = snr_db(&t.samples, &pcm);
            assert!(snr >= 60.0, "text {}: SNR {snr:.1} dB against speak", t.index);
        }
        steps.push(t.steps);
    }
    println!("steps per text: {steps:?}");
    assert!(steps[..3].iter().any(|&s| s != steps[0]), "the texts of the first batch end at different rows ({steps:?})");
}

/// Sampled: a text's audio depends on the seed and its index, not on the batch size; text 0 is `speak` with the
/// seed; another seed changes the codes.
#[test]
fn batch_sampled_audio_does_not_depend_on_the_batch_size() {
    let gpu = test_gpu();
    let (dia, dac) = models(&gpu);
    let tts = Tts { gpu: &gpu, dia: &dia, dac: &dac };
    let opts = options(1.2, 7);
    let codes = |batch_size: usize, opts: &GenerateOptions| speak_batch(&tts, &TEXTS, opts, batch_size).unwrap().0.into_iter().map(|t| t.codes).collect::<Vec<_>>();
    let one = codes(1, &opts);
    assert_eq!(codes(3, &opts), one, "batches of 3 and of 1");
    assert_eq!(codes(4, &opts), one, "one batch of 4 and batches of 1");
    assert_eq!(one[0], speak_alone(&tts, TEXTS[0], &opts).1.generation.item(0), "text 0 is speak with the seed");
    // Text 1 alone with the seed would draw as item 0: the batch gives it draws of its own.
    assert_ne!(one[1], speak_alone(&tts, TEXTS[1], &opts).1.generation.item(0), "text 1 draws as item 1");
    assert_ne!(codes(4, &options(1.2, 8)), one, "another seed, other codes");
}

#[test]
fn batch_rejects_bad_lists_naming_the_text() {
    let gpu = test_gpu();
    let (dia, dac) = models(&gpu);
    let tts = Tts { gpu: &gpu, dia: &dia, dac: &dac };
    let opts = options(0.0, 0);
    let err = |texts: &[&str], batch_size| speak_batch(&tts, texts, &opts, batch_size).err().expect("an error");
    assert!(matches!(err(&[], 2), PipelineError::EmptyBatch));
    match err(&["[S1] Fine.", "  \t", "[S1] Fine."], 2) {
        PipelineError::BatchText { index: 1, source: DiaError::EmptyText } => {}
        e => panic!("unexpected {e}"),
    }
    let long = format!("[S1] {}", "a".repeat(dia.cfg.encoder.max_positions));
    match err(&["[S1] Fine.", "[S2] Fine.", &long], 2) {
        PipelineError::BatchText { index: 2, source: DiaError::TextTooLong { bytes, limit } } => {
            assert_eq!((bytes, limit), (encode_text(&long).len(), dia.cfg.encoder.max_positions))
        }
        e => panic!("unexpected {e}"),
    }
    assert!(err(&["[S1] Fine.", "", &long], 2).to_string().starts_with("text 1 of the list"), "the first bad text is named");
    assert!(matches!(err(&["[S1] Fine."], 0), PipelineError::BatchSize { size: 0, .. }));
    assert!(matches!(err(&["[S1] Fine."; 2], MAX_BATCH + 1), PipelineError::BatchSize { .. }));
    // Options the session refuses are reported as they are.
    let mut too_many = opts.clone();
    too_many.max_new_tokens = dia.cfg.decoder.max_positions;
    assert!(matches!(speak_batch(&tts, &["[S1] Fine."], &too_many, 1).err().unwrap(), PipelineError::Dia(DiaError::TooLong { .. })));
}

/// Cancelled after the first text is handed out: the first batch's texts stay handed out, nothing after them.
#[test]
fn batch_cancel_and_progress() {
    let gpu = test_gpu();
    let (dia, dac) = models(&gpu);
    let tts = Tts { gpu: &gpu, dia: &dia, dac: &dac };
    let opts = options(0.0, 0);
    let stop = Cell::new(false);
    let mut got = Vec::new();
    let r = pollster::block_on(tts.speak_batch(&TEXTS, None, &opts, 2, &mut |_| {}, &mut |t| {
        got.push(t.index);
        stop.set(true);
    }, &|| stop.get()));
    assert!(matches!(r, Err(PipelineError::Dia(DiaError::Cancelled))), "{r:?}");
    assert_eq!(got, [0], "texts handed out before the cancel");

    let (_, progress) = speak_batch(&tts, &TEXTS, &opts, 3).unwrap();
    let starts: Vec<_> = progress.iter().filter(|p| p.rows == 0).map(|p| (p.batch, p.first_item, p.items, p.done)).collect();
    assert_eq!(starts, [(0, 0, 3, 0), (1, 3, 1, 3)], "each batch's start");
    for w in progress.windows(2).filter(|w| w[0].batch == w[1].batch) {
        assert!(w[1].rows >= w[0].rows && w[1].rows <= w[1].max_rows, "rows grow within the batch: {w:?}");
    }
    assert!(progress.iter().any(|p| p.rows > 0), "rows are reported");
}

/// The memory plan covers what a session of a batch allocates (its buffers that grow with the batch), and not by
/// more than half again.
#[test]
fn batch_memory_plan_covers_a_real_session() {
    let gpu = test_gpu();
    let (mut dia, _) = models(&gpu);
    let opts = options(0.0, 0);
    let text = TEXTS[2];
    for format in dia_webgpu::kernels::kv_cache::KvFormat::ALL {
        dia.kv_format = format;
        let session_bytes = |batch: usize| {
            gpu.release_reusable();
            let before = gpu.allocated_bytes();
            let texts = vec![text; batch];
            let positions = 1 + opts.max_new_tokens;
            let reserve = Reserve { text_tokens: batch * text.len() + 1, positions };
            let s = Session::list_batch(&gpu, &dia, &texts, 0, None, &opts, reserve).unwrap();
            let used = gpu.allocated_bytes() - before;
            drop(s);
            (used, session_size(&dia.cfg, &BatchShape { batch, text_tokens: text.len(), positions, prompt_frames: 0, kv_format: dia.kv_format }).bytes)
        };
        let (used1, plan1) = session_bytes(1);
        let (used5, plan5) = session_bytes(5);
        let (grow, plan_grow) = (used5 - used1, plan5 - plan1);
        println!("{format} caches: session: batch 1 {used1} B (plan {plan1}), batch 5 {used5} B (plan {plan5}); growth {grow} B per 4 texts, plan {plan_grow}");
        assert!(plan_grow >= grow, "{format} caches: the plan's growth {plan_grow} covers the real {grow}");
        assert!(plan_grow as f64 <= 1.5 * grow as f64, "{format} caches: the plan's growth {plan_grow} is near the real {grow}");
    }
    // Vulkan tells the device's memory (lavapipe: system memory); the tiny model then fits the automatic batch.
    if gpu.info.backend == wgpu::Backend::Vulkan {
        let memory = gpu.device_memory().expect("a Vulkan device tells its memory");
        println!("device memory: {} MiB", memory >> 20);
        assert!(memory > gpu.allocated_bytes());
    }
    let (_, dac) = models(&gpu);
    let tts = Tts { gpu: &gpu, dia: &dia, dac: &dac };
    assert_eq!(tts.auto_batch_size(&TEXTS, None, 0, &opts).unwrap(), TEXTS.len(), "all four texts in one batch");
    assert_eq!(tts.auto_batch_size(&[TEXTS[0]; 20], None, 0, &opts).unwrap(), dia_webgpu::dia::batch_plan::AUTO_BATCH);
}

/// `max_batch`: the binding limit and the memory each bound the batch; nothing fits when one text does not.
#[test]
fn batch_max_batch_follows_the_limits() {
    let cfg = DiaConfig::from_json_str(&std::fs::read_to_string(fixtures_dir().join("dia/config.json")).unwrap()).unwrap();
    let shape = BatchShape { batch: 1, text_tokens: 100, positions: 3072, prompt_frames: 0, kv_format: Default::default() };
    let size = |b| session_size(&cfg, &BatchShape { batch: b, ..shape });
    assert_eq!(max_batch(&cfg, &shape, u64::MAX, None, 8), 8, "only the limit asked");
    assert_eq!(max_batch(&cfg, &shape, u64::MAX, None, 1000), MAX_BATCH);
    assert_eq!(max_batch(&cfg, &shape, size(3).largest_binding, None, 8), 3, "the binding of 3 texts");
    let free = (size(5).bytes as f64 / dia_webgpu::dia::batch_plan::MEMORY_SHARE).ceil() as u64;
    assert_eq!(max_batch(&cfg, &shape, u64::MAX, Some(free), 8), 5, "the memory of 5 texts");
    assert_eq!(max_batch(&cfg, &shape, size(1).largest_binding - 1, None, 8), 0, "not one text");
}
