//! DAC decoder convolutions: the plain kernel (`dac_conv`) against tensor cores (`dac_conv_cl`, channels-last over
//! `layout::pack`ed input), f16w weights.
//!
//! `cargo run --release --example bench_dac_coop -- [--frames 861,18] [--iters 5] [--whole-only]`
//! For each layer shape of the 44.1 kHz decoder at each window length: median milliseconds and TFLOP/s of both
//! kernels (the `pack` of the tensor-core kernel's input timed on its own), then the whole decoder (random
//! weights) on plain kernels and on tensor cores, with the max abs PCM difference. Exits with a message where
//! the device has no tensor cores.

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    if let Err(e) = native::run() {
        eprintln!("bench_dac_coop: {e}");
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
    use dia_webgpu::dac::{DacModel, CHANNELS_LAST_MIN_FRAMES};
    use dia_webgpu::gpu::{Dispatch, Gpu, GpuBuffer, GpuOptions};
    use dia_webgpu::kernels::conv::plain::{self, conv1d_len, conv_transpose1d_len, Conv1dWeights, ConvFusion, ConvTile, ConvTranspose1dWeights};
    use dia_webgpu::kernels::conv::layout::{pack, SourceLayout};
    use dia_webgpu::kernels::conv::plain::conv_transpose_phase_weights;
    use dia_webgpu::kernels::conv::coop::{self, tap_major, ClEpilogue, ClShape};
    use dia_webgpu::kernels::{GpuMatrix, Numerics};
    use dia_webgpu::random::{self, Rng};

    #[derive(Parser)]
    #[command(name = "bench_dac_coop", about = "DAC decoder convolutions: plain kernels against tensor cores")]
    struct Args {
        /// Window lengths in frames, comma-separated (861 = 10 s of audio; a stream's first window is about 18).
        #[arg(long, value_delimiter = ',', default_value = "861,18", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
        frames: Vec<usize>,
        /// Timed batches per measurement (the median is reported).
        #[arg(long, default_value_t = 5, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
        iters: usize,
        /// Only the whole decoder, not each layer.
        #[arg(long)]
        whole_only: bool,
        /// Per layer, also time the tensor-core kernel with every work split of `ClShape::ALL`.
        #[arg(long)]
        sweep: bool,
    }

    /// The decoder with random weights (fan-in scaled so activations stay in a sane range), as bench_dac.
    fn random_decoder(gpu: &Gpu, cfg: &DacConfig) -> Result<DacModel, String> {
        random::dac_decoder(gpu, cfg, Numerics::F16W, &mut Rng::from_state(0x9E37_79B9_7F4A_7C15)).map_err(|e| e.to_string())
    }

    /// One convolution of the decoder.
    #[derive(Clone, Copy)]
    enum Layer {
        /// cin, cout, kernel, dilation, len, snake, accumulate, tanh
        Conv(usize, usize, usize, usize, usize, bool, bool, bool),
        /// cin, cout, stride, len_in
        ConvT(usize, usize, usize, usize),
    }

    impl Layer {
        fn describe(&self) -> String {
            match *self {
                Layer::Conv(cin, cout, k, d, len, ..) => format!("conv {cin:>4}->{cout:<4} k{k} d{d} len {len}"),
                Layer::ConvT(cin, cout, s, len) => format!("convT {cin:>4}->{cout:<4} s{s} len {len}->{}", len * s),
            }
        }

        /// Multiply-add FLOPs.
        fn flops(&self) -> f64 {
            match *self {
                Layer::Conv(cin, cout, k, _, len, ..) => 2.0 * (cin * cout * k) as f64 * len as f64,
                Layer::ConvT(cin, cout, s, len) => 2.0 * (cin * cout * 2 * s) as f64 * len as f64,
            }
        }
    }

    /// Every convolution of the decoder for `frames` frames (each residual unit's two kernels once per dilation).
    fn decoder_layers(cfg: &DacConfig, frames: usize) -> Vec<Layer> {
        let mut out = vec![Layer::Conv(cfg.latent, cfg.decoder_hidden, 7, 1, frames, false, false, false)];
        let (mut c, mut len) = (cfg.decoder_hidden, frames);
        for &s in &cfg.upsampling_ratios {
            out.push(Layer::ConvT(c, c / 2, s, len));
            c /= 2;
            len *= s;
            for d in [1, 3, 9] {
                out.push(Layer::Conv(c, c, 7, d, len, true, false, false));
                out.push(Layer::Conv(c, c, 1, 1, len, true, true, false));
            }
        }
        out.push(Layer::Conv(c, 1, 7, 1, len, true, false, true));
        out
    }

    /// Median seconds per dispatch over `iters` batches (a batch ≥ ~20 ms of work once warmed up).
    fn time(gpu: &Gpu, ds: &[&Dispatch], iters: usize) -> Result<f64, String> {
        let batch = |n: usize| -> Result<f64, String> {
            let t0 = Instant::now();
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                for _ in 0..n {
                    for d in ds {
                        d.record(&mut pass);
                    }
                }
            }
            gpu.queue.submit([enc.finish()]);
            gpu.wait_idle().map_err(|e| e.to_string())?;
            Ok(t0.elapsed().as_secs_f64())
        };
        batch(1)?; // warm-up
        let one = batch(1)?.max(1e-6);
        let n = ((20e-3 / one).ceil() as usize).clamp(1, 1000);
        let mut times: Vec<f64> = (0..iters).map(|_| batch(n).map(|t| t / n as f64)).collect::<Result<_, _>>()?;
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, |m, d| if d.is_nan() { f32::NAN } else { m.max(d) })
    }

    /// Seconds per layer: plain kernel, tensor cores channels-last, and the channels-last input's pack.
    struct LayerTimes {
        plain: f64,
        cl: f64,
        pack: f64,
    }

    /// Times and compares one layer; None where the layer stays on the plain kernel.
    fn layer(gpu: &Gpu, l: Layer, iters: usize, sweep: bool, rng: &mut Rng) -> Result<Option<LayerTimes>, String> {
        let tile = ConvTile::preferred(gpu, Numerics::F16W);
        let (cin, cout, len_in, len_out) = match l {
            Layer::Conv(cin, cout, k, d, len, ..) => (cin, cout, len, conv1d_len(len as u32, k as u32, 1, d as u32, ((k - 1) * d / 2) as u32) as usize),
            Layer::ConvT(cin, cout, s, len) => (cin, cout, len, conv_transpose1d_len(len as u32, 2 * s as u32, s as u32, s.div_ceil(2) as u32) as usize),
        };
        if !coop::supports(cin as u32, cout as u32) {
            println!("  {:<36} stays on the plain kernel ({cout} output channel(s) would idle a tensor-core tile)", l.describe());
            return Ok(None);
        }
        let x: GpuBuffer = gpu.upload("x", &rng.vec(cin * len_in, 1.0));
        let alpha = gpu.upload("alpha", &(0..cin).map(|_| 1.0 + 0.5 * rng.uniform()).collect::<Vec<f32>>());
        let y0 = rng.vec(cout * len_out, 1.0);
        let y_plain = gpu.upload("y_plain", &y0);
        // Channels-last: the f16 input made by `pack` (timed alone: the decode gets it from the previous epilogue),
        // the output f32 [len_out, cout] plus the next input's f16 copy, or Snake'd f16 for a residual unit's k7.
        let x_cl = gpu.upload("x_cl", &rng.vec(cin * len_in, 1.0));
        let x16 = gpu.buffer("x16", (cin * len_in * 2) as u64);
        let y_cl = gpu.upload("y_cl", &y0);
        let y16 = gpu.buffer("y16", (cout * len_out * 2) as u64);
        let alpha_out = gpu.upload("alpha_out", &(0..cout).map(|_| 1.0 + 0.5 * rng.uniform()).collect::<Vec<f32>>());
        type ClWith<'a> = Box<dyn Fn(Option<ClShape>) -> Dispatch + 'a>;
        let (plain, cl_with, packer): (_, ClWith, _) = match l {
            Layer::Conv(_, _, k, d, _, snake, accumulate, tanh) => {
                let wd = rng.vec(cout * cin * k, 1.0 / ((cin * k) as f32).sqrt());
                let w = Conv1dWeights::upload(gpu, "w", &wd, &rng.vec(cout, 0.1), cout, cin, k, Numerics::F16W).map_err(|e| e.to_string())?;
                let w_cl = GpuMatrix::upload(gpu, "w_cl", &tap_major(&wd, cin, k), cout, k * cin, Numerics::F16W).map_err(|e| e.to_string())?;
                let f = ConvFusion { snake_alpha: snake.then_some(&alpha), accumulate, tanh };
                let pad = ((k - 1) * d / 2) as u32;
                // As the decode runs them: residual adds and the first conv also write the next input's f16 copy.
                let epilogue = if accumulate {
                    ClEpilogue::AccumulatePacked(&alpha_out, &y16)
                } else if snake {
                    ClEpilogue::SnakeHalf(&alpha_out)
                } else {
                    ClEpilogue::StorePacked(&alpha_out, &y16)
                };
                let plain = plain::conv1d(gpu, &x, len_in as u32, &w, 1, d as u32, pad, &y_plain, f, tile);
                let (x16, y_cl) = (&x16, &y_cl);
                (
                    plain,
                    Box::new(move |shape| match shape {
                        Some(sh) => coop::conv1d_shaped(gpu, x16, len_in as u32, &w, &w_cl, 1, d as u32, pad, y_cl, epilogue, sh),
                        None => coop::conv1d(gpu, x16, len_in as u32, &w, &w_cl, 1, d as u32, pad, y_cl, epilogue),
                    }),
                    pack(gpu, &x_cl, SourceLayout::ChannelsLast, cin as u32, len_in as u32, snake.then_some(&alpha), &x16),
                )
            }
            Layer::ConvT(_, _, s, _) => {
                let wd = rng.vec(cin * cout * 2 * s, 1.0 / (cin as f32).sqrt());
                let w = ConvTranspose1dWeights::upload(gpu, "wt", &wd, &rng.vec(cout, 0.1), cin, cout, 2 * s, s, Numerics::F16W).map_err(|e| e.to_string())?;
                let phased = conv_transpose_phase_weights(&wd, cin, cout, 2 * s, s);
                let w_cl = GpuMatrix::upload(gpu, "wt_cl", &tap_major(&phased, cin, 2), s * cout, 2 * cin, Numerics::F16W).map_err(|e| e.to_string())?;
                let f = ConvFusion { snake_alpha: Some(&alpha), ..Default::default() };
                let pad = s.div_ceil(2) as u32;
                let plain = plain::conv_transpose1d(gpu, &x, len_in as u32, &w, pad, &y_plain, f, tile);
                let (x16, y_cl, epilogue) = (&x16, &y_cl, ClEpilogue::StorePacked(&alpha_out, &y16));
                (
                    plain,
                    Box::new(move |shape| match shape {
                        Some(sh) => coop::conv_transpose1d_shaped(gpu, x16, len_in as u32, &w, &w_cl, pad, y_cl, epilogue, sh),
                        None => coop::conv_transpose1d(gpu, x16, len_in as u32, &w, &w_cl, pad, y_cl, epilogue),
                    }),
                    pack(gpu, &x_cl, SourceLayout::ChannelsLast, cin as u32, len_in as u32, Some(&alpha), &x16),
                )
            }
        };
        // Timings only: tests/dac_cl.rs checks the values.
        let plain: Vec<&Dispatch> = plain.dispatches.iter().collect();
        let cl = cl_with(None);
        gpu.run(&[&packer]);
        let (tp, tl, tk) = (time(gpu, &plain, iters)?, time(gpu, &[&cl], iters)?, time(gpu, &[&packer], iters)?);
        println!(
            "  {:<36} plain {:7.3} ms {:6.2} TFLOP/s | tensor cores, channels-last {:7.3} ms {:6.2} TFLOP/s, x{:4.1} | its input's pack {:6.3} ms",
            l.describe(),
            tp * 1e3,
            l.flops() / tp / 1e12,
            tl * 1e3,
            l.flops() / tl / 1e12,
            tp / tl,
            tk * 1e3
        );
        if sweep {
            let limit = gpu.limits.max_compute_workgroup_storage_size;
            let mut line = String::from("    work splits:");
            for shape in ClShape::ALL.into_iter().filter(|s| s.workgroup_bytes() <= limit) {
                let t = time(gpu, &[&cl_with(Some(shape))], iters)?;
                line += &format!(" {} {:.3} ms;", shape.name(), t * 1e3);
            }
            println!("{line}");
        }
        Ok(Some(LayerTimes { plain: tp, cl: tl, pack: tk }))
    }

    /// Median ms of one whole decode and its PCM.
    fn decode(gpu: &Gpu, model: &DacModel, frames: usize, iters: usize) -> Result<(f64, Vec<f32>), String> {
        let mut dec = model.decoder(gpu, frames).map_err(|e| e.to_string())?;
        let codes: Vec<u32> = (0..model.config.n_codebooks * frames)
            .map(|i| (i as u64 * 2_654_435_761 % model.config.codebook_size as u64) as u32)
            .collect();
        dec.write_codes(gpu, &codes, frames).map_err(|e| e.to_string())?;
        let mut once = || -> Result<f64, String> {
            let t0 = Instant::now();
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                dec.record(gpu, &mut pass, frames).map_err(|e| e.to_string())?;
            }
            gpu.queue.submit([enc.finish()]);
            gpu.wait_idle().map_err(|e| e.to_string())?;
            Ok(t0.elapsed().as_secs_f64() * 1e3)
        };
        // Untimed first: pipeline compiles, the launch sequence, and two seconds at least, then until three decodes
        // in a row agree within 5 % (at most six): the GPU's clocks come back in steps after the CPU worked alone
        // (docs/performance.md, "After the CPU works alone").
        let warm = Instant::now();
        let mut last: Vec<f64> = Vec::new();
        while warm.elapsed().as_secs_f64() < 6.0 {
            last.push(once()?);
            let tail = &last[last.len().saturating_sub(3)..];
            let settled = tail.len() == 3 && tail.iter().cloned().fold(f64::MIN, f64::max) <= 1.05 * tail.iter().cloned().fold(f64::MAX, f64::min);
            if settled && warm.elapsed().as_secs_f64() >= 2.0 {
                break;
            }
        }
        let mut times = (0..iters).map(|_| once()).collect::<Result<Vec<f64>, String>>()?;
        times.sort_by(f64::total_cmp);
        let n = dec.pcm_len(frames);
        let pcm = gpu.read_f32_blocking(&dec.pcm_buffer().slice(0, n as u64 * 4)).map_err(|e| e.to_string())?;
        Ok((times[times.len() / 2], pcm))
    }

    pub fn run() -> Result<(), String> {
        let args = Args::parse();
        let cfg = DacConfig::dac_44khz();
        let gpu = Gpu::new_blocking(GpuOptions::default()).map_err(|e| e.to_string())?;
        if !gpu.tensor_cores() {
            println!(
                "{}: no tensor cores through wgpu (needs cooperative matrices 16x16x16 f16->f32, shader-f16, subgroups of 32); nothing to compare",
                gpu.describe()
            );
            return Ok(());
        }
        println!("DAC 44.1 kHz decoder convolutions, f16w weights, on {}; median of {} batches", gpu.describe(), args.iters);
        let mut rng = Rng::from_state(0x5EED_1234_ABCD_0001);
        for &frames in args.frames.iter().filter(|_| !args.whole_only) {
            println!("{frames} frames ({:.2} s of audio), per layer:", frames as f64 * 512.0 / 44100.0);
            let mut sum = LayerTimes { plain: 0.0, cl: 0.0, pack: 0.0 };
            for l in decoder_layers(&cfg, frames) {
                if let Some(t) = layer(&gpu, l, args.iters, args.sweep, &mut rng)? {
                    sum.plain += t.plain;
                    sum.cl += t.cl;
                    sum.pack += t.pack;
                }
            }
            println!(
                "  sum over the tensor-core layers: plain {:.2} ms, tensor cores channels-last {:.2} ms (+ packs {:.2} ms, which the decode does only for the latent: the other f16 inputs come from the epilogues)",
                sum.plain * 1e3,
                sum.cl * 1e3,
                sum.pack * 1e3
            );
        }
        let mut model = random_decoder(&gpu, &cfg)?;
        for &frames in &args.frames {
            model.set_tensor_cores(false);
            let (ms_plain, pcm_plain) = decode(&gpu, &model, frames, args.iters)?;
            model.set_tensor_cores(true);
            let (ms_coop, pcm_coop) = decode(&gpu, &model, frames, args.iters)?;
            let per_10s = 441000.0 / 512.0 / frames as f64;
            println!(
                "whole decoder, {frames} frames: plain {ms_plain:.2} ms ({:.2} ms per 10 s), tensor cores ({}) {ms_coop:.2} ms ({:.2} ms per 10 s), x{:.1}; max abs PCM diff {:.2e} over {} samples",
                ms_plain * per_10s,
                if frames >= CHANNELS_LAST_MIN_FRAMES { "channels-last" } else { "plain below CHANNELS_LAST_MIN_FRAMES" },
                ms_coop * per_10s,
                ms_plain / ms_coop,
                max_abs_diff(&pcm_plain, &pcm_coop),
                pcm_plain.len()
            );
        }
        Ok(())
    }
}
