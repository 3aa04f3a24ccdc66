//! `--profile`: parts of the decoder step, the encoder and time to first audio timed on their own.

use std::time::Instant;

use dia_webgpu::dac::DacModel;
use dia_webgpu::dia::forward::{encoder_attention, DecoderGraph, KvCache, PackedText, StepPart};
use dia_webgpu::dia::tokenizer::encode_text;
use dia_webgpu::dia::{DiaModel, GenerateOptions, Session};
use dia_webgpu::gpu::{Dispatch, Gpu};
use dia_webgpu::kernels::attention::attention_prefill;
use dia_webgpu::kernels::linear::{linear_rows, linear_small_m_shaped, LinearEpilogue, SmallMShape};
use dia_webgpu::kernels::norm::rmsnorm;
use dia_webgpu::kernels::GpuMatrix;
use dia_webgpu::random::Noise;

use crate::Result;
use crate::report::{Profile, TtfaParts, LinearShapeRun};
use crate::timing::{WARMUP_STEPS, text_tokens, median, ms, streamed_matrices, time_passes, ttfa_text};

/// Parts of the step graph alone, built from the same kernels as `DecoderGraph` with its shapes.
pub(crate) fn profile_step(gpu: &Gpu, model: &DiaModel, dac: &DacModel, batch: usize, steps: usize) -> Result<Profile> {
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
        let pick = |w: &GpuMatrix| shape.filter(|s| s.fits(rows)).unwrap_or_else(|| SmallMShape::for_matrix(gpu, w, rows));
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
pub(crate) fn profile_ttfa(gpu: &Gpu, dia: &DiaModel, dac: &DacModel) -> Result<TtfaParts> {
    let text = ttfa_text();
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
pub(crate) fn host_dispatch_costs(gpu: &Gpu) -> String {
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
pub(crate) fn profile_encoder(gpu: &Gpu, model: &DiaModel, bytes: usize) -> Result<(f64, f64)> {
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
    let mut attention = Vec::new();
    for _ in 0..e.layers {
        attention.extend(attention_prefill(gpu, &encoder_attention(e, &qkv, &qinfo, &seqs, &out, n)));
    }
    let attention_ms = time_passes(gpu, &attention.iter().collect::<Vec<_>>(), 5)? * 1e3;
    Ok((linear_ms, attention_ms))
}
