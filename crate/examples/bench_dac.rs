//! DAC decoder throughput: the real-size 44.1 kHz decoder with random weights decodes a window of frames
//! (861 = 10 s by default) repeatedly; prints milliseconds per 10 s of audio for each numerics mode.
//!
//! `cargo run --release --example bench_dac -- [--frames 861] [--iters 5] [--numerics f32,f16w] [--tiles] [--layers]`
//! (`--tiles` also times every convolution tile shape forced on all layers; `--layers` times each layer of
//! the decoder alone, with the tile and split-K the per-call choice gives it). f16w runs with f16
//! arithmetic where the device has `shader-f16`, and once more with f32 arithmetic for comparison.
//! The streaming decoder's first window is about 18 frames: `--frames 18`.

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    if let Err(e) = native::run() {
        eprintln!("bench_dac: {e}");
        std::process::exit(1);
    }
}

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::time::Instant;

    use clap::builder::RangedU64ValueParser;
    use clap::Parser;

    use dia_webgpu::config::DacConfig;
    use dia_webgpu::dac::DacModel;
    use dia_webgpu::gpu::{Gpu, GpuOptions};
    use dia_webgpu::gpu::GpuBuffer;
    use dia_webgpu::kernels::conv::plain::{
        conv1d, conv1d_len, conv_transpose1d, conv_transpose1d_len, Conv1dWeights, ConvFusion, ConvLaunch, ConvShape, ConvTile,
        ConvTranspose1dWeights,
    };
    use dia_webgpu::kernels::Numerics;
    use dia_webgpu::random::{self, Rng};

    /// Frames in 10 s of 44.1 kHz audio at hop 512.
    const FRAMES_PER_10S: f64 = 441000.0 / 512.0;

    #[derive(Parser)]
    #[command(name = "bench_dac", about = "DAC 44.1 kHz decoder throughput with random weights")]
    struct Args {
        /// Frames decoded per run (861 = 10 s of audio; the streaming decoder's first window is about 18).
        #[arg(long, default_value_t = 861, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
        frames: usize,
        /// Timed runs after one untimed run (best reported).
        #[arg(long, default_value_t = 5, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
        iters: usize,
        /// Weight storage modes to measure, comma-separated (f32, f16w).
        #[arg(long, value_delimiter = ',', default_value = "f32,f16w")]
        numerics: Vec<Numerics>,
        /// Also time every convolution tile shape forced on all layers.
        #[arg(long)]
        tiles: bool,
        /// Also time each layer of the decoder alone (tile and split-K as the per-call choice gives them).
        #[arg(long)]
        layers: bool,
    }

    /// The decoder with random weights (fan-in scaled so activations stay in a sane range).
    fn random_decoder(gpu: &Gpu, cfg: &DacConfig, numerics: Numerics) -> Result<DacModel, String> {
        random::dac_decoder(gpu, cfg, numerics, &mut Rng::from_state(0x9E37_79B9_7F4A_7C15)).map_err(|e| e.to_string())
    }

    /// Multiply-add FLOPs of one decode of `frames` frames (convolutions only; RVQ and Snake excluded).
    fn decode_flops(cfg: &DacConfig, frames: usize) -> f64 {
        let mut len = frames as f64;
        let mut flops = 2.0 * (cfg.latent * cfg.decoder_hidden * 7) as f64 * len;
        let mut c = cfg.decoder_hidden;
        for &s in &cfg.upsampling_ratios {
            let out = c / 2;
            flops += 2.0 * (c * out * 2 * s) as f64 * len;
            len *= s as f64;
            flops += 3.0 * 2.0 * (out * out * 8) as f64 * len;
            c = out;
        }
        flops + 2.0 * (c * 7) as f64 * len
    }

    fn time_decode(gpu: &Gpu, model: &DacModel, frames: usize, iters: usize) -> Result<f64, String> {
        let mut dec = model.decoder(gpu, frames).map_err(|e| e.to_string())?;
        let codes: Vec<u32> = (0..model.config.n_codebooks * frames)
            .map(|i| (i as u64 * 2_654_435_761 % model.config.codebook_size as u64) as u32)
            .collect();
        dec.write_codes(gpu, &codes, frames).map_err(|e| e.to_string())?;
        let mut best = f64::INFINITY;
        // The first run compiles pipelines and builds the launch sequence: not timed.
        for i in 0..=iters {
            let t0 = Instant::now();
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                dec.record(gpu, &mut pass, frames).map_err(|e| e.to_string())?;
            }
            gpu.queue.submit([enc.finish()]);
            gpu.wait_idle().map_err(|e| e.to_string())?;
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            if i > 0 {
                best = best.min(ms);
            }
        }
        let pcm = pollster::block_on(gpu.read_f32(&dec.pcm_buffer().slice(0, 4 * 4096.min(dec.pcm_len(frames)) as u64)))
            .map_err(|e| e.to_string())?;
        if pcm.iter().any(|v| !v.is_finite()) {
            return Err("non-finite PCM".into());
        }
        Ok(best)
    }

    /// One decoder layer on its own: a name, its multiply-add FLOPs and a way to launch it.
    struct Layer {
        name: String,
        flops: f64,
        launch: ConvLaunch,
    }

    /// Times each convolution of the decoder alone (same shapes, tiles and fusions as a decode of `frames`
    /// frames; random weights, activations left as they come): best of `iters` runs of 5 back-to-back launches.
    fn time_layers(gpu: &Gpu, cfg: &DacConfig, numerics: Numerics, tile: ConvTile, frames: usize, iters: usize) -> Result<(), String> {
        let mut rng = Rng::from_state(0x5DEE_CE66_D1CE_4E5B);
        let mut random = |n: usize, scale: f32| -> Vec<f32> { rng.vec(n, scale) };
        let err = |e: dia_webgpu::gpu::GpuError| e.to_string();
        // Widest activation of the decode.
        let mut widest = cfg.decoder_hidden * frames;
        let mut len = frames;
        let mut c = cfg.decoder_hidden;
        for &s in &cfg.upsampling_ratios {
            len *= s;
            c /= 2;
            widest = widest.max(c * len);
        }
        let zero = vec![0.0f32; widest.max(cfg.latent * frames)];
        let (a, b, h) = (gpu.upload("a", &zero), gpu.upload("b", &zero), gpu.upload("h", &zero));
        let (a, b, h) = (&a, &b, &h);
        let conv = |cout: usize, cin: usize, k: usize, r: &mut dyn FnMut(usize, f32) -> Vec<f32>| {
            Conv1dWeights::upload(gpu, "w", &r(cout * cin * k, 1.0 / ((cin * k) as f32).sqrt()), &r(cout, 0.1), cout, cin, k, numerics)
        };
        let alpha = |n: usize| gpu.upload("alpha", &vec![1.0f32; n]);
        let mut layers: Vec<Layer> = Vec::new();
        let mut weights: Vec<Conv1dWeights> = Vec::new();
        let mut alphas: Vec<GpuBuffer> = Vec::new();
        let mut convts: Vec<ConvTranspose1dWeights> = Vec::new();
        // Built first (buffers must outlive the launches), launched below.
        let mut len = frames as u32;
        let mut c = cfg.decoder_hidden;
        weights.push(conv(c, cfg.latent, 7, &mut random).map_err(err)?);
        let w = weights.last().unwrap();
        let launch = conv1d(gpu, a, len, w, 1, 1, 3, b, ConvFusion::default(), tile);
        layers.push(Layer { name: format!("conv1 {}->{c} k7 len {len}", cfg.latent), flops: 2.0 * (cfg.latent * c * 7) as f64 * len as f64, launch });
        let mut plan: Vec<(String, f64, Box<dyn Fn(&[Conv1dWeights], &[ConvTranspose1dWeights], &[GpuBuffer]) -> ConvLaunch + '_>)> = Vec::new();
        for (blk, &s) in cfg.upsampling_ratios.iter().enumerate() {
            let out = c / 2;
            let s32 = s as u32;
            let len_out = conv_transpose1d_len(len, 2 * s32, s32, s32.div_ceil(2));
            let wt = random(c * out * 2 * s, 1.0 / (c as f32).sqrt());
            convts.push(ConvTranspose1dWeights::upload(gpu, "wt", &wt, &random(out, 0.1), c, out, 2 * s, s, numerics).map_err(err)?);
            alphas.push(alpha(c));
            let (ti, ai) = (convts.len() - 1, alphas.len() - 1);
            let l_in = len;
            plan.push((
                format!("block{blk} convT {c}->{out} s{s} len {l_in}->{len_out}"),
                2.0 * (c * out * 2 * s) as f64 * l_in as f64,
                Box::new(move |_, ts, al| {
                    let f = ConvFusion { snake_alpha: Some(&al[ai]), ..Default::default() };
                    conv_transpose1d(gpu, b, l_in, &ts[ti], s32.div_ceil(2), a, f, tile)
                }),
            ));
            len = len_out;
            for dil in [1u32, 3, 9] {
                weights.push(conv(out, out, 7, &mut random).map_err(err)?);
                alphas.push(alpha(out));
                let (wi, ai) = (weights.len() - 1, alphas.len() - 1);
                let l = len;
                plan.push((
                    format!("block{blk} res d{dil} k7 {out}ch len {l}"),
                    2.0 * (out * out * 7) as f64 * l as f64,
                    Box::new(move |ws, _, al| {
                        let f = ConvFusion { snake_alpha: Some(&al[ai]), ..Default::default() };
                        conv1d(gpu, a, l, &ws[wi], 1, dil, 3 * dil, h, f, tile)
                    }),
                ));
                weights.push(conv(out, out, 1, &mut random).map_err(err)?);
                alphas.push(alpha(out));
                let (wi, ai) = (weights.len() - 1, alphas.len() - 1);
                plan.push((
                    format!("block{blk} res d{dil} k1 {out}ch len {l}"),
                    2.0 * (out * out) as f64 * l as f64,
                    Box::new(move |ws, _, al| {
                        let f = ConvFusion { snake_alpha: Some(&al[ai]), accumulate: true, tanh: false };
                        conv1d(gpu, h, l, &ws[wi], 1, 1, 0, a, f, tile)
                    }),
                ));
            }
            c = out;
        }
        weights.push(conv(1, c, 7, &mut random).map_err(err)?);
        alphas.push(alpha(c));
        let (wi, ai, l) = (weights.len() - 1, alphas.len() - 1, len);
        assert_eq!(conv1d_len(l, 7, 1, 1, 3), l);
        plan.push((
            format!("conv2 {c}->1 k7 len {l}"),
            2.0 * (c * 7) as f64 * l as f64,
            Box::new(move |ws, _, al| {
                let f = ConvFusion { snake_alpha: Some(&al[ai]), accumulate: false, tanh: true };
                conv1d(gpu, a, l, &ws[wi], 1, 1, 3, b, f, tile)
            }),
        ));
        for (name, flops, make) in &plan {
            layers.push(Layer { name: name.clone(), flops: *flops, launch: make(&weights, &convts, &alphas) });
        }
        const REPEATS: usize = 5;
        let mut rows = Vec::new();
        for layer in &layers {
            let mut best = f64::INFINITY;
            for i in 0..=iters {
                let t0 = Instant::now();
                let mut enc = gpu.device.create_command_encoder(&Default::default());
                {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    for _ in 0..REPEATS {
                        layer.launch.record(&mut pass);
                    }
                }
                gpu.queue.submit([enc.finish()]);
                gpu.wait_idle().map_err(|e| e.to_string())?;
                if i > 0 {
                    best = best.min(t0.elapsed().as_secs_f64() * 1e3 / REPEATS as f64);
                }
            }
            rows.push(best);
        }
        let total: f64 = rows.iter().sum();
        println!("{:>5}  per layer ({} frames, {} math), each alone:", numerics.name(), frames, if tile.f16_math { "f16" } else { "f32" });
        for (layer, ms) in layers.iter().zip(&rows) {
            let l = &layer.launch;
            println!(
                "    {:<40} {:>4}x{:<4} split {:>2} {:>6} wg {ms:9.3} ms {:5.1} % {:7.3} TFLOP/s",
                layer.name,
                l.shape.tm(),
                l.shape.tn(),
                l.splits,
                l.workgroups,
                100.0 * ms / total,
                layer.flops / (ms * 1e-3) / 1e12
            );
        }
        println!("    sum of layers {total:.3} ms");
        Ok(())
    }

    pub fn run() -> Result<(), String> {
        let args = Args::parse();
        let cfg = DacConfig::dac_44khz();
        let gpu = Gpu::new_blocking(GpuOptions::default()).map_err(|e| e.to_string())?;
        let flops = decode_flops(&cfg, args.frames);
        println!(
            "DAC 44.1 kHz decoder, {} frames ({:.2} s of audio), {:.1} GFLOP per decode, best of {} on {}",
            args.frames,
            args.frames as f64 * 512.0 / 44100.0,
            flops / 1e9,
            args.iters,
            gpu.describe()
        );
        // The per-call choice, then (with --tiles) each shape forced on every layer.
        let mut listed = vec![ConvTile::default()];
        if args.tiles {
            listed.extend(ConvShape::ALL[..4].iter().map(|&s| ConvTile { shape: Some(s), ..ConvTile::default() }));
        }
        for &numerics in &args.numerics {
            let mut model = random_decoder(&gpu, &cfg, numerics)?;
            // Each split with the model's arithmetic (f16 for f16w where the device has shader-f16), and
            // the per-call choice in f32 too when that differs.
            let f16_math = model.conv_tile().f16_math;
            let mut tiles: Vec<ConvTile> = listed.iter().map(|&t| ConvTile { f16_math, ..t }).collect();
            if f16_math {
                tiles.push(ConvTile::default());
            }
            for &tile in &tiles {
                model.set_conv_tile(tile);
                let ms = time_decode(&gpu, &model, args.frames, args.iters)?;
                let per_10s = ms * FRAMES_PER_10S / args.frames as f64;
                let shape = tile.shape.map_or("per call".to_string(), |s| format!("{}x{}", s.tm(), s.tn()));
                println!(
                    "{:>5}  tile {shape} ({} math): {ms:9.2} ms per decode, {per_10s:9.2} ms per 10 s of audio, {:.2}x real time, {:.3} TFLOP/s",
                    numerics.name(),
                    if tile.f16_math { "f16" } else { "f32" },
                    10_000.0 / per_10s,
                    flops / (ms * 1e-3) / 1e12
                );
            }
            if args.layers {
                time_layers(&gpu, &cfg, numerics, ConvTile { f16_math, ..ConvTile::default() }, args.frames, args.iters)?;
            }
        }
        Ok(())
    }
}
