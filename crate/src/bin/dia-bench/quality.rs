//! `--quality`: how far each storage mode moves the model from f32 on the same inputs. Per text, the f32 model's
//! greedy codes (cut at its EOS, continued with fixed pseudo-random codes up to `--quality-steps` rows when it
//! ends early) are fed teacher-forced to every mode; the conditional logits are compared with f32's (relative
//! L2 error, top-1 agreement over every row and channel), and each mode's own greedy codes with f32's (first
//! differing step). Models are loaded one at a time, so the GPU holds one model at once.

use serde::Serialize;

use dia_webgpu::config::DiaConfig;
use dia_webgpu::dia::tokenizer::encode_text;
use dia_webgpu::dia::{DiaModel, GenerateOptions};
use dia_webgpu::gpu::{Gpu, GpuOptions};
use dia_webgpu::kernels::sampling::SamplingParams;
use dia_webgpu::kernels::kv_cache::KvFormat;
use dia_webgpu::kernels::Numerics;

use crate::Result;
use crate::args::{Args, combinations, label, configs, biggest_matrix_bytes};
use crate::timing::random_dia;
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
            None => random_dia(&gpu, &cfg, numerics, args.random_weights),
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
