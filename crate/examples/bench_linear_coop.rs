//! The encoder's matrix products on tensor cores (`kernels::linear::coop`) against the plain kernels, then the
//! whole encoder (`DiaModel::encode`, random full-size weights) with tensor cores on and off. Native only.
//!
//! cargo run --release --example bench_linear_coop -- [--iters 20] [--skip-encoder] [--numerics f16w|q8|q4]
//!
//! Per matrix of the Dia encoder (QKV 1024→3072, O 1024→1024 accumulate, gate/up 1024→2×4096 SwiGLU, down
//! 4096→1024 accumulate, cross K/V 1024→4096) and of the decoder prefill (gate/up 2048→2×8192, down 8192→2048) at
//! M = 101 and 1001: the plain path (`linear_rows` on a device made without tensor cores, i.e. today's kernels),
//! `linear_rows` on the tensor-core device (the shape `linear_coop` picks) and every tile shape that fits:
//! median ms per product, TFLOP/s, and the max abs difference to the plain result (x is rounded to f16 on the
//! tensor-core path). Exits cleanly where the adapter has no tensor cores.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    if let Err(e) = native::run() {
        eprintln!("bench_linear_coop: {e}");
        std::process::exit(1);
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::error::Error;
    use std::time::Instant;

    use clap::builder::RangedU64ValueParser;
    use clap::Parser;

    use dia_webgpu::config::DiaConfig;
    use dia_webgpu::dia::forward::PackedText;
    use dia_webgpu::dia::DiaModel;
    use dia_webgpu::gpu::{Dispatch, Gpu, GpuBuffer, GpuOptions};
    use dia_webgpu::kernels::linear::{linear_coop_shaped, linear_rows, CoopShape, LinearEpilogue};
    use dia_webgpu::kernels::{GpuMatrix, Numerics};
    use dia_webgpu::random::Rng;

    type Result<T> = std::result::Result<T, Box<dyn Error>>;

    #[derive(Parser)]
    #[command(name = "bench_linear_coop", about = "The encoder's matrix products and the whole encoder, tensor cores against plain kernels")]
    struct Args {
        /// Timed batches per product, and timed encodes per text size (at least 3); medians reported.
        #[arg(long, default_value_t = 20, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
        iters: usize,
        /// Time the matrix products only, not the whole encoder.
        #[arg(long)]
        skip_encoder: bool,
        /// Weight storage of the matrices (f16w, q8, q4: all of them in that format) and of the random model.
        #[arg(long, default_value = "f16w")]
        numerics: Numerics,
    }

    fn gpu(tensor_cores: bool) -> Result<Gpu> {
        Ok(Gpu::new_blocking(GpuOptions { min_storage_binding: 256 << 20, want_tensor_cores: tensor_cores, ..GpuOptions::default() })?)
    }

    /// Deterministic values in [−scale, scale).
    fn noise(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        Rng::new(seed).vec(n, scale)
    }

    /// One matrix product on one device: its inputs, and y reset to `y0` before each checked run.
    struct Problem {
        x: GpuBuffer,
        w: GpuMatrix,
        y: GpuBuffer,
        y0: Vec<f32>,
    }

    impl Problem {
        fn new(gpu: &Gpu, m: u32, n: u32, k: u32, epilogue: LinearEpilogue, numerics: Numerics) -> Result<Problem> {
            let out_cols = if epilogue == LinearEpilogue::SwiGlu { n / 2 } else { n };
            let x = gpu.upload("bench.x", &noise((m * k) as usize, 1 + m as u64, 1.0));
            let w = GpuMatrix::upload(gpu, "bench.w", &noise((n * k) as usize, 2 + n as u64 * 7 + k as u64, 1.0 / (k as f32).sqrt()), n as usize, k as usize, numerics.weight_format())?;
            let y0 = noise((m * out_cols) as usize, 3, 1.0);
            let y = gpu.upload("bench.y", &y0);
            Ok(Problem { x, w, y, y0 })
        }

        /// y after one run of `ds` from `y0`.
        fn result(&self, gpu: &Gpu, ds: &[Dispatch]) -> Result<Vec<f32>> {
            gpu.write(&self.y, &self.y0);
            gpu.run(&ds.iter().collect::<Vec<_>>());
            Ok(gpu.read_f32_blocking(&self.y)?)
        }
    }

    /// Median seconds per run of `ds` over `iters` timed batches (each long enough for wall-clock timing).
    fn time(gpu: &Gpu, ds: &[Dispatch], iters: usize) -> Result<f64> {
        let refs: Vec<&Dispatch> = ds.iter().collect();
        let batch = |n: usize| -> Result<f64> {
            let t0 = Instant::now();
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                for _ in 0..n {
                    for d in &refs {
                        d.record(&mut pass);
                    }
                }
            }
            gpu.queue.submit([enc.finish()]);
            gpu.wait_idle()?;
            Ok(t0.elapsed().as_secs_f64())
        };
        // Size batches to ~20 ms so submission overhead is small (the first run compiles pipelines).
        batch(1)?;
        let once = batch(1)?.max(1e-6);
        let per = ((20e-3 / once) as usize).clamp(1, 500);
        let mut times = Vec::new();
        for _ in 0..iters {
            times.push(batch(per)? / per as f64);
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs()).fold(0.0, f64::max)
    }

    pub fn run() -> Result<()> {
        let args = Args::parse();
        let tc = gpu(true)?;
        if !tc.tensor_cores() {
            println!("{}: no tensor cores (cooperative matrices 16x16x16 f16->f32, subgroups of 32); nothing to compare", tc.describe());
            return Ok(());
        }
        let plain = gpu(false)?;
        println!("adapter {}; workgroup memory limit {} bytes; weights {}", tc.describe(), tc.limits.max_compute_workgroup_storage_size, args.numerics.name());
        let shapes: Vec<CoopShape> = CoopShape::ALL
            .iter()
            .flat_map(|s| [s.with_stages(1), s.with_stages(2)])
            .filter(|s| s.workgroup_bytes() <= tc.limits.max_compute_workgroup_storage_size)
            .collect();
        use LinearEpilogue::{Accumulate, Store, SwiGlu};
        // (name, N = weight rows, K, epilogue)
        let mats: [(&str, u32, u32, LinearEpilogue); 7] = [
            ("enc qkv", 3072, 1024, Store),
            ("enc o", 1024, 1024, Accumulate),
            ("enc gate/up", 8192, 1024, SwiGlu),
            ("enc down", 1024, 4096, Accumulate),
            ("cross kv", 4096, 1024, Store),
            ("dec gate/up", 16384, 2048, SwiGlu),
            ("dec down", 2048, 8192, Accumulate),
        ];
        println!("{:<12} {:>5} {:>6} {:>5}  {:<14} {:>9} {:>8} {:>10}", "matrix", "M", "N", "K", "path", "ms", "TFLOP/s", "max|diff|");
        for m in [101u32, 1001] {
            for &(name, n, k, epilogue) in &mats {
                let flops = 2.0 * m as f64 * n as f64 * k as f64;
                let row = |path: &str, secs: f64, diff: Option<f64>| {
                    let diff = diff.map_or("-".to_string(), |d| format!("{d:.2e}"));
                    println!("{name:<12} {m:>5} {n:>6} {k:>5}  {path:<14} {:>9.4} {:>8.1} {diff:>10}", secs * 1e3, flops / secs / 1e12);
                };
                let p = Problem::new(&plain, m, n, k, epilogue, args.numerics)?;
                let ds = linear_rows(&plain, &p.x, &p.w, &p.y, m, epilogue);
                let reference = p.result(&plain, &ds)?;
                row("plain", time(&plain, &ds, args.iters)?, None);
                drop((ds, p));
                let c = Problem::new(&tc, m, n, k, epilogue, args.numerics)?;
                let ds = linear_rows(&tc, &c.x, &c.w, &c.y, m, epilogue);
                let d = max_abs_diff(&c.result(&tc, &ds)?, &reference);
                row("coop (auto)", time(&tc, &ds, args.iters)?, Some(d));
                for &s in &shapes {
                    let ds = [linear_coop_shaped(&tc, &c.x, &c.w, &c.y, m, epilogue, s)];
                    let d = max_abs_diff(&c.result(&tc, &ds)?, &reference);
                    row(&format!("coop {}", s.name()), time(&tc, &ds, args.iters)?, Some(d));
                }
            }
        }
        if !args.skip_encoder {
            encoder(&plain, &tc, args.iters, args.numerics)?;
        }
        Ok(())
    }

    /// `DiaModel::encode` (encoder + cross K/V) for 100 and 1000 bytes with random full-size weights: median ms
    /// until the GPU is done, host graph building included, tensor cores off then on; and the max abs difference
    /// of the encoder outputs.
    fn encoder(plain: &Gpu, tc: &Gpu, iters: usize, numerics: Numerics) -> Result<()> {
        let cfg = DiaConfig::dia_1_6b();
        let sizes = [100usize, 1000];
        let mut outputs: Vec<Vec<Vec<f32>>> = Vec::new();
        for (label, gpu) in [("plain", plain), ("tensor cores", tc)] {
            let t0 = Instant::now();
            let model = DiaModel::random(gpu, &cfg, numerics, 7)?;
            gpu.wait_idle()?;
            eprintln!("{label}: random model built in {:.1} s", t0.elapsed().as_secs_f64());
            let mut outs = Vec::new();
            for &bytes in &sizes {
                let tokens: Vec<u32> = (0..bytes).map(|i| 32 + (i * 7 % 90) as u32).collect();
                let mut times = Vec::new();
                let mut out = Vec::new();
                for i in 0..=iters.max(3) {
                    let t = Instant::now();
                    let state = model.encode(gpu, PackedText::new(std::slice::from_ref(&tokens)));
                    gpu.wait_idle()?;
                    if i > 0 {
                        times.push(t.elapsed().as_secs_f64() * 1e3);
                    } else {
                        out = gpu.read_f32_blocking(&state.enc_out)?;
                    }
                }
                times.sort_by(f64::total_cmp);
                println!("encoder {bytes:>5} bytes, {label:<12}: {:.2} ms (median of {})", times[times.len() / 2], times.len());
                outs.push(out);
            }
            outputs.push(outs);
            drop(model);
        }
        for (i, &bytes) in sizes.iter().enumerate() {
            let (a, b) = (&outputs[0][i], &outputs[1][i]);
            let scale = a.iter().map(|v| v.abs() as f64).fold(0.0, f64::max);
            println!("encoder {bytes:>5} bytes: max |out diff| {:.2e} (max |out| {scale:.2e})", max_abs_diff(a, b));
        }
        Ok(())
    }
}
