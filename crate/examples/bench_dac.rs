//! DAC decoder throughput: the real-size 44.1 kHz decoder with random weights decodes a window of frames
//! (861 = 10 s by default) repeatedly; prints milliseconds per 10 s of audio for each numerics mode.
//!
//! `cargo run --release --example bench_dac -- [--frames N] [--iters N] [--numerics f32,f16w] [--tiles]`
//! (`--tiles` also times a few other convolution work splits). f16w runs with f16 arithmetic where the
//! device has `shader-f16`, and once more with f32 arithmetic for comparison.

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

    use dia_webgpu::config::DacConfig;
    use dia_webgpu::dac::{dac_tensor_specs, DacModel, DacModelBuilder};
    use dia_webgpu::gpu::{Gpu, GpuOptions};
    use dia_webgpu::kernels::dac_conv::ConvTile;
    use dia_webgpu::kernels::Numerics;

    /// Frames in 10 s of 44.1 kHz audio at hop 512.
    const FRAMES_PER_10S: f64 = 441000.0 / 512.0;

    struct Args {
        frames: usize,
        iters: usize,
        numerics: Vec<Numerics>,
        tiles: bool,
    }

    fn parse() -> Result<Args, String> {
        let mut a = Args { frames: 861, iters: 5, numerics: vec![Numerics::F32, Numerics::F16W], tiles: false };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or(format!("{flag} needs a value"));
            match flag.as_str() {
                "--frames" => a.frames = value()?.parse().map_err(|e| format!("--frames: {e}"))?,
                "--iters" => a.iters = value()?.parse().map_err(|e| format!("--iters: {e}"))?,
                "--numerics" => {
                    a.numerics = value()?
                        .split(',')
                        .map(|n| Numerics::parse(n).ok_or(format!("unknown numerics {n}")))
                        .collect::<Result<_, _>>()?
                }
                "--tiles" => a.tiles = true,
                _ => return Err(format!("unknown argument {flag}")),
            }
        }
        if a.frames == 0 || a.iters == 0 {
            return Err("--frames and --iters must be positive".into());
        }
        Ok(a)
    }

    /// Small deterministic generator (xorshift64*), uniform in [−1, 1).
    struct Rng(u64);

    impl Rng {
        fn uniform(&mut self) -> f32 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
    }

    /// The decoder with random weights (fan-in scaled so activations stay in a sane range).
    fn random_decoder(gpu: &Gpu, cfg: &DacConfig, numerics: Numerics) -> Result<DacModel, String> {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut b = DacModelBuilder::new(gpu, cfg, numerics, false).map_err(|e| e.to_string())?;
        for spec in dac_tensor_specs(cfg).into_iter().filter(|s| !s.name.starts_with("encoder.")) {
            let n: usize = spec.shape.iter().product();
            let data: Vec<f32> = if spec.name.ends_with(".alpha") {
                (0..n).map(|_| 1.0 + 0.5 * rng.uniform()).collect()
            } else if spec.weight_norm {
                let fan_in = if spec.name.contains("conv_t") { spec.shape[0] } else { n / spec.shape[0] };
                let scale = 1.0 / (fan_in as f32).sqrt();
                (0..n).map(|_| scale * rng.uniform()).collect()
            } else {
                (0..n).map(|_| 0.1 * rng.uniform()).collect()
            };
            b.accept(&spec.name, &spec.shape, &data).map_err(|e| e.to_string())?;
        }
        b.finish().map_err(|e| e.to_string())
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

    pub fn run() -> Result<(), String> {
        let args = parse()?;
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
        let listed = if args.tiles {
            vec![
                ConvTile::default(),
                ConvTile { wm: 16, wn: 16, rm: 4, rn: 4, kr_max: 32, xs_max: 1536, f16_math: false },
                ConvTile { wm: 16, wn: 16, rm: 8, rn: 4, kr_max: 16, xs_max: 1984, f16_math: false },
                ConvTile { wm: 8, wn: 32, rm: 8, rn: 8, kr_max: 32, xs_max: 1920, f16_math: false },
                ConvTile { wm: 8, wn: 32, rm: 8, rn: 4, kr_max: 16, xs_max: 1536, f16_math: false },
                ConvTile { wm: 32, wn: 8, rm: 4, rn: 8, kr_max: 16, xs_max: 1024, f16_math: false },
            ]
        } else {
            vec![ConvTile::default()]
        };
        for &numerics in &args.numerics {
            let mut model = random_decoder(&gpu, &cfg, numerics)?;
            // Each split with the model's arithmetic (f16 for f16w where the device has shader-f16), and
            // the default split in f32 too when that differs.
            let f16_math = model.conv_tile().f16_math;
            let mut tiles: Vec<ConvTile> = listed.iter().map(|&t| ConvTile { f16_math, ..t }).collect();
            if f16_math {
                tiles.push(ConvTile::default());
            }
            for &tile in &tiles {
                model.set_conv_tile(tile);
                let ms = time_decode(&gpu, &model, args.frames, args.iters)?;
                let per_10s = ms * FRAMES_PER_10S / args.frames as f64;
                println!(
                    "{:>5}  tile {}x{} ({}x{} per thread, kr {} xs {}, {} math): {ms:9.2} ms per decode, {per_10s:9.2} ms per 10 s of audio, {:.2}x real time, {:.3} TFLOP/s",
                    numerics.name(),
                    tile.tm(),
                    tile.tn(),
                    tile.rm,
                    tile.rn,
                    tile.kr_max,
                    tile.xs_max,
                    if tile.f16_math { "f16" } else { "f32" },
                    10_000.0 / per_10s,
                    flops / (ms * 1e-3) / 1e12
                );
            }
        }
        Ok(())
    }
}
