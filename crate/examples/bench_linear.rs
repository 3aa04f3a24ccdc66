//! Weight-streaming rate of the small-M linear kernel (the decoder step's hot path), or with `--tiled`
//! the arithmetic rate of the tiled kernel on the encoder's shapes.
//!
//! cargo run --release --example bench_linear -- [--rows 16384] [--cols 2048] [--m 2] [--iters 200] [--numerics f16w]
//! cargo run --release --example bench_linear -- --tiled --iters 20 --numerics f16w
//!
//! cargo run --release --example bench_linear -- --crossover --iters 20 --numerics f16w
//! cargo run --release --example bench_linear -- --decoder --numerics f16w [--decoder-ms 2,8,16] [--iters 200]
//! cargo run --release --example bench_linear -- --numerics q4 --arith f32,f16   (the small-M kernel's arithmetic)
//!
//! `--tiled` times M = 101 and 1001 rows of x (or `--m`) against the encoder's matrices (QKV 3072×1024 store,
//! O 1024×1024 accumulate, gate/up 8192×1024 SwiGLU, down 1024×4096 accumulate, cross K/V 4096×1024 store) and
//! prints TFLOP/s of the tile `linear` picks (with `--sweep`: of every tile shape). `--crossover` times the
//! 16-row matrix–vector blocks against the tiled kernel at M = 16 … 1001 (where `BLOCKED_M_MAX` should sit).
//! `--decoder` times every matrix a decoder step reads (all layers of the 1.6B model and the logits head, each in
//! the format `--numerics` gives its role, random weights), as the step runs them (`norm_linear` for QKV, cross Q,
//! gate/up and logits, `linear_rows` for the rest), at each M of `--decoder-ms` (default 2 and 16: batch 1 and 8),
//! on each path forced (`small-M`: the matrix–vector kernel with its fused norm, M ≤ 16; `tensor-cores`: where the
//! device has them) and as the policy picks (`policy`, `COOP_M_MIN` decides): passes/s and GB/s of weights; with
//! `--sweep` also the tensor cores on each tile shape forced.
//!
//! With `--decoder --sweep` at 2 < M ≤ 16 the matrix–vector kernel also runs with each of a few shapes forced on every
//! matrix but gate/up (threads × along K × rows per thread).
//!
//! `--per-matrix` (with `--decoder`) also times each kind of matrix on its own (QKV, O, cross Q, cross O, gate/up,
//! down, logits: every layer's call of it back to back) and prints µs per call, per path.
//!
//! `--unroll 1,2,4` times each number of chunks per thread and round in place of the kernel's rule.
//! `--probe x,w,xw` also times the kernel with x's loads, the weights' loads or both made broadcast reads of one
//! address (`SmallMProbe`: what the rest costs; results wrong by design).
//! `--arith f32,f16` times the small-M kernel (plain and `--decoder`) in each arithmetic, one after the other in
//! this process (`Gpu::set_f16_arithmetic`; f16 needs shader-f16 and f16w/q8/q4 weights); without it, `linear`'s
//! policy decides (f16 where offered, unless `DIA_F16_ARITH=off`).
//!
//! Other flags (`--help` lists them all): `--epilogue store|acc|swiglu` (default store), `--batch B`
//! (dispatches per command buffer, default 10), `--threads T --k-threads K --rows-per-thread R` (workgroup
//! shape, default the one `linear` uses), `--sweep` (time every workgroup shape that fits M instead; with
//! `--tiled` every tile shape).
//!
//! Records `--batch` dispatches per command buffer (consecutive dispatches write the same output, so
//! they run one after another as decoder layers do), submits `--iters` of them back to back after a
//! warm-up, waits once for completion, and prints the weight bytes streamed per second.

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    if let Err(e) = bench() {
        eprintln!("bench_linear: {e}");
        std::process::exit(1);
    }
}

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
#[derive(clap::Parser)]
#[command(name = "bench_linear", about = "Weight-streaming rate of the small-M linear kernel, or the tiled kernel's arithmetic rate")]
struct Args {
    /// Weight matrix rows (output features; twice the outputs with `--epilogue swiglu`).
    #[arg(long, default_value_t = 16384, value_parser = positive())]
    rows: usize,
    /// Weight matrix columns (K).
    #[arg(long, default_value_t = 2048, value_parser = positive())]
    cols: usize,
    /// Rows of x: 1 ..= SMALL_M_MAX for the small-M kernel; with `--tiled`, a value above SMALL_M_MAX replaces 101 and 1001.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    m: u32,
    /// Command buffers submitted back to back after the warm-up.
    #[arg(long, default_value_t = 200, value_parser = positive())]
    iters: usize,
    /// Dispatches per command buffer.
    #[arg(long, default_value_t = 10, value_parser = positive())]
    batch: usize,
    /// Weight storage (f32, f16w).
    #[arg(long, default_value = "f16w")]
    numerics: dia_webgpu::kernels::Numerics,
    /// What the kernel does with each output (store, acc, swiglu).
    #[arg(long, default_value = "store", value_parser = parse_epilogue)]
    epilogue: dia_webgpu::kernels::linear::LinearEpilogue,
    /// Workgroup threads (default: the workgroup shape `linear` uses).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    threads: Option<u32>,
    /// Threads along K (default: the workgroup shape `linear` uses).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    k_threads: Option<u32>,
    /// Weight rows per thread (default: the workgroup shape `linear` uses).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    rows_per_thread: Option<u32>,
    /// Time every workgroup shape that fits M (with `--tiled`: every tile shape).
    #[arg(long)]
    sweep: bool,
    /// The tiled kernel on the encoder's matrices instead of the small-M kernel.
    #[arg(long)]
    tiled: bool,
    /// 16-row matrix–vector blocks against the tiled kernel at M = 16 … 1001.
    #[arg(long)]
    crossover: bool,
    /// The decoder step's whole set of matrices, each path forced and the policy's choice, at `--decoder-ms`.
    #[arg(long)]
    decoder: bool,
    /// Rows of x for `--decoder` (2 per text with CFG).
    #[arg(long, value_delimiter = ',', default_value = "2,16", value_parser = clap::value_parser!(u32).range(1..))]
    decoder_ms: Vec<u32>,
    /// With `--decoder`: also time each kind of matrix on its own (its calls of every layer back to back), µs per call.
    #[arg(long)]
    per_matrix: bool,
    /// Decoder layers for `--decoder` (default the 1.6B model's 18).
    #[arg(long)]
    layers: Option<usize>,
    /// Arithmetic of the small-M kernel, each timed in turn (f32, f16, i8; a `+pf` suffix also prefetches each
    /// round's weights during the round before); default: `linear`'s policy.
    #[arg(long, value_delimiter = ',', value_parser = parse_arith)]
    arith: Vec<Mode>,
    /// Also time the small-M kernel under each probe (x, w, xw: that operand's loads, or both, read one broadcast
    /// address; `SmallMProbe`), after the plain kernel: what the rest of the kernel costs.
    #[arg(long, value_delimiter = ',', value_parser = parse_probe)]
    probe: Vec<dia_webgpu::kernels::linear::SmallMProbe>,
    /// Chunks per row each small-M thread loads per round, each value timed in turn (default: the kernel's rule).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..))]
    unroll: Vec<u32>,
    /// How the small-M kernel reads quantized rows, each timed in turn: block (16-byte blocks: 16 q8 / 32 q4 columns)
    /// or cols8 (8-column chunks, f32 arithmetic); default: `linear`'s.
    #[arg(long, value_delimiter = ',', value_parser = parse_chunks)]
    chunks: Vec<bool>,
}

/// `--chunks`: whether quantized rows are read in 8-column chunks.
#[cfg(not(target_arch = "wasm32"))]
fn parse_chunks(s: &str) -> Result<bool, String> {
    match s {
        "block" => Ok(false),
        "cols8" => Ok(true),
        _ => Err(format!("unknown chunks {s:?} (block, cols8)")),
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn parse_probe(s: &str) -> Result<dia_webgpu::kernels::linear::SmallMProbe, String> {
    use dia_webgpu::kernels::linear::SmallMProbe;
    match s {
        "x" => Ok(SmallMProbe::BroadcastX),
        "w" => Ok(SmallMProbe::BroadcastW),
        "xw" => Ok(SmallMProbe::BroadcastBoth),
        _ => Err(format!("unknown probe {s:?} (x, w, xw)")),
    }
}

/// One way to run the small-M kernel: its arithmetic, with or without prefetching.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug, Clone, Copy, PartialEq)]
struct Mode {
    arith: dia_webgpu::kernels::linear::Arith,
    prefetch: bool,
}

#[cfg(not(target_arch = "wasm32"))]
fn parse_arith(s: &str) -> Result<Mode, String> {
    use dia_webgpu::kernels::linear::Arith;
    let (name, prefetch) = match s.strip_suffix("+pf") {
        Some(name) => (name, true),
        None => (s, false),
    };
    let arith = match name {
        "f32" => Arith::F32,
        "f16" => Arith::F16,
        "i8" => Arith::Int8Dot,
        _ => return Err(format!("unknown arithmetic {s:?} (f32, f16, i8, each optionally with +pf)")),
    };
    Ok(Mode { arith, prefetch })
}

/// The arithmetics to time: each of `--arith` forced in turn (None: the policy's choice, untouched). Forcing f16
/// where the device or the weights cannot take it is an error.
#[cfg(not(target_arch = "wasm32"))]
fn arith_runs(a: &Args, gpu: &dia_webgpu::gpu::Gpu) -> Result<Vec<Option<Mode>>, String> {
    use dia_webgpu::kernels::linear::Arith;
    let ariths: Vec<Arith> = a.arith.iter().map(|m| m.arith).collect();
    if ariths.contains(&Arith::F16) && !gpu.features.contains(wgpu::Features::SHADER_F16) {
        return Err("--arith f16: the device has no shader-f16".into());
    }
    if ariths.contains(&Arith::F16) && a.numerics == dia_webgpu::kernels::Numerics::F32 {
        return Err("--arith f16: f32 weights always multiply in f32".into());
    }
    if ariths.contains(&Arith::Int8Dot) && !matches!(a.numerics, dia_webgpu::kernels::Numerics::Q8 | dia_webgpu::kernels::Numerics::Q4) {
        return Err("--arith i8: integer dot products serve q8 and q4 weights only".into());
    }
    Ok(if a.arith.is_empty() { vec![None] } else { a.arith.iter().map(|&x| Some(x)).collect() })
}

/// Forces `arith` on the dispatches built from now on (None leaves the policy as it is).
#[cfg(not(target_arch = "wasm32"))]
fn force_arith(gpu: &dia_webgpu::gpu::Gpu, mode: Option<Mode>) {
    if let Some(Mode { arith, prefetch }) = mode {
        gpu.set_f16_arithmetic(arith == dia_webgpu::kernels::linear::Arith::F16);
        gpu.set_int8_dot(arith == dia_webgpu::kernels::linear::Arith::Int8Dot);
        gpu.set_matvec_prefetch(prefetch);
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn positive() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}

#[cfg(not(target_arch = "wasm32"))]
#[cfg(not(target_arch = "wasm32"))]
fn parse_epilogue(s: &str) -> Result<dia_webgpu::kernels::linear::LinearEpilogue, String> {
    use dia_webgpu::kernels::linear::LinearEpilogue;
    match s {
        "store" => Ok(LinearEpilogue::Store),
        "acc" => Ok(LinearEpilogue::Accumulate),
        "swiglu" => Ok(LinearEpilogue::SwiGlu),
        _ => Err(format!("unknown epilogue {s:?} (store, acc, swiglu)")),
    }
}

/// Seconds per submission of `refs` (one command buffer each), `iters` submissions back to back after `warmups` of them
/// (pipeline creation, first touch of the buffers, clocks ramping up) and one wait at the end.
#[cfg(not(target_arch = "wasm32"))]
fn seconds_per_submission(gpu: &dia_webgpu::gpu::Gpu, refs: &[&dia_webgpu::gpu::Dispatch], warmups: usize, iters: usize) -> Result<f64, String> {
    for _ in 0..warmups {
        gpu.run(refs);
    }
    gpu.wait_idle().map_err(|e| e.to_string())?;
    let start = std::time::Instant::now();
    for _ in 0..iters {
        gpu.run(refs);
    }
    gpu.wait_idle().map_err(|e| e.to_string())?;
    gpu.check_lost().map_err(|e| e.to_string())?;
    Ok(start.elapsed().as_secs_f64() / iters as f64)
}

/// The small-M workgroup shape to time: `linear`'s choice, with any of `--threads --k-threads --rows-per-thread`
/// put in its place; an error where the problem or the shape does not suit the small-M kernel.
#[cfg(not(target_arch = "wasm32"))]
fn small_m_shape(a: &Args) -> Result<dia_webgpu::kernels::linear::SmallMShape, String> {
    use dia_webgpu::kernels::linear::{LinearEpilogue, SmallMShape, SMALL_M_MAX};
    if a.m > SMALL_M_MAX {
        return Err(format!("need 1 ≤ m ≤ {SMALL_M_MAX} for the small-M kernel"));
    }
    if a.epilogue == LinearEpilogue::SwiGlu && a.rows % 2 == 1 {
        return Err("swiglu needs an even number of rows".into());
    }
    let default = SmallMShape::for_format(a.numerics.weight_format(), a.m, a.rows as u32, a.cols as u32);
    // (With `--chunks`, each way of reading rows takes this one shape: `--sweep` times every shape for each.)
    let shape = SmallMShape {
        threads: a.threads.unwrap_or(default.threads),
        k_threads: a.k_threads.unwrap_or(default.k_threads),
        rows_per_thread: a.rows_per_thread.unwrap_or(default.rows_per_thread),
    };
    if !shape.fits(a.m) {
        return Err(format!("{shape:?} does not fit m = {}: powers of two, k_threads ≤ threads ≤ 256, even rows, partial sums ≤ 16 KiB", a.m));
    }
    Ok(shape)
}

#[cfg(not(target_arch = "wasm32"))]
fn bench() -> Result<(), String> {
    use clap::Parser;
    use dia_webgpu::gpu::{Gpu, GpuOptions};
    use dia_webgpu::kernels::linear::{linear_small_m_shaped, small_m_arith, LinearEpilogue, SmallMShape};
    use dia_webgpu::kernels::{stride_words, GpuMatrix};
    use dia_webgpu::random::Rng;

    let a = Args::parse();
    if a.decoder {
        return decoder::bench(&a);
    }
    if a.crossover {
        return tiled::crossover(&a);
    }
    if a.tiled {
        return tiled::bench(&a);
    }
    let shape = small_m_shape(&a)?;
    let weight_bytes = a.rows as u64 * stride_words(a.cols as u32, a.numerics) as u64 * 4;
    let gpu = Gpu::new_blocking(GpuOptions { min_storage_binding: weight_bytes, ..Default::default() }).map_err(|e| e.to_string())?;
    println!("adapter: {}", gpu.describe());

    // Deterministic pseudo-random weights in [-1, 1) (values do not affect the timing, but keep them finite).
    let mut rng = Rng::new(1);
    let w = rng.vec(a.rows * a.cols, 1.0);
    let x = rng.vec(a.m as usize * a.cols, 1.0);
    let wm = GpuMatrix::upload(&gpu, "w", &w, a.rows, a.cols, a.numerics).map_err(|e| e.to_string())?;
    drop(w);
    let out_cols = if a.epilogue == LinearEpilogue::SwiGlu { a.rows / 2 } else { a.rows };
    let xb = gpu.upload("x", &x);
    let yb = gpu.buffer("y", (a.m as usize * out_cols * 4) as u64);
    let shapes: Vec<SmallMShape> = if a.sweep {
        let all = [64, 128, 256].into_iter().flat_map(|threads| {
            [4, 8, 16, 32, 64].into_iter().flat_map(move |k_threads| [1, 2, 4, 8].map(move |rows_per_thread| SmallMShape { threads, k_threads, rows_per_thread }))
        });
        all.filter(|s| s.fits(a.m)).collect()
    } else {
        vec![shape]
    };
    let probes: Vec<Option<_>> = std::iter::once(None).chain(a.probe.iter().map(|&p| Some(p))).collect();
    let unrolls: Vec<Option<u32>> = if a.unroll.is_empty() { vec![None] } else { a.unroll.iter().map(|&u| Some(u)).collect() };
    let chunks: Vec<Option<bool>> = if a.chunks.is_empty() { vec![None] } else { a.chunks.iter().map(|&c| Some(c)).collect() };
    let mut tunings = Vec::new();
    for &cols8 in &chunks {
        for &unroll in &unrolls {
            tunings.extend(probes.iter().map(|&probe| (cols8, dia_webgpu::kernels::linear::SmallMTuning { unroll, probe })));
        }
    }
    let runs: Vec<_> = arith_runs(&a, &gpu)?.into_iter().flat_map(|x| shapes.iter().map(move |&s| (x, s))).flat_map(|r| tunings.iter().map(move |&t| (r.0, r.1, t))).collect();
    for (arith, shape, (cols8, tuning)) in runs {
        force_arith(&gpu, arith);
        gpu.set_matvec_cols8(cols8);
        let cols8 = dia_webgpu::kernels::linear::small_m_access(&gpu, wm.format, wm.cols).cols8_chunks();
        let probe = tuning.probe;
        let dispatch = if tuning == Default::default() {
            linear_small_m_shaped(&gpu, &xb, &wm, &yb, a.m, a.epilogue, shape)
        } else {
            dia_webgpu::kernels::linear::linear_small_m_tuned(&gpu, &xb, &wm, &yb, a.m, a.epilogue, shape, tuning)?
        };
        let batch: Vec<_> = std::iter::repeat_n(&dispatch, a.batch).collect();

        let seconds = seconds_per_submission(&gpu, &batch, a.iters.div_ceil(10).max(3), a.iters)? * a.iters as f64;
        let calls = (a.iters * a.batch) as f64;
        let per_call = seconds / calls;
        // What was forced beyond the arithmetic: 8-column chunks, an unroll, a probe.
        let variant = format!("{}{}{}", if cols8 { " cols8" } else { "" }, tuning.unroll.map_or(String::new(), |u| format!(" unroll {u}")), probe.map_or(String::new(), |p| format!(" (probe {p:?})")));
        println!(
            "linear small-M {} {:?} {:?}{}{} arithmetic: W {}x{} ({:.1} MB), M={}, {} threads x {} along K x {} rows each{}: {} calls in {:.3} s, {:.2} us/call, {:.3} GB/s of weights",
            a.numerics.name(),
            a.epilogue,
            small_m_arith(&gpu, wm.format),
            if gpu.matvec_prefetch() { "+prefetch" } else { "" },
            variant,
            a.rows,
            a.cols,
            weight_bytes as f64 / 1e6,
            a.m,
            shape.threads,
            shape.k_threads,
            shape.rows_per_thread,
            if shape == SmallMShape::for_format(a.numerics.weight_format(), a.m, a.rows as u32, a.cols as u32) { " (default)" } else { "" },
            calls,
            seconds,
            per_call * 1e6,
            weight_bytes as f64 / per_call / 1e9
        );
    }
    Ok(())
}

#[cfg(not(target_arch = "wasm32"))]
mod tiled {
    use super::Args;
    use dia_webgpu::gpu::{Dispatch, Gpu, GpuBuffer, GpuOptions};
    use dia_webgpu::kernels::linear::{linear_row_blocks, linear_tiled_shaped, LinearEpilogue, TiledShape, BLOCKED_M_MAX};
    use dia_webgpu::kernels::GpuMatrix;
    use dia_webgpu::random::Rng;
    use std::time::Instant;

    /// Seconds per call of the dispatch list `ds` (after a warm-up), `iters` calls recorded in batches of `batch`.
    fn time(gpu: &Gpu, ds: &[Dispatch], iters: usize, batch: usize) -> Result<f64, String> {
        let calls: Vec<&Dispatch> = (0..batch).flat_map(|_| ds.iter()).collect();
        gpu.run(&calls);
        gpu.wait_idle().map_err(|e| e.to_string())?;
        let start = Instant::now();
        for _ in 0..iters {
            gpu.run(&calls);
        }
        gpu.wait_idle().map_err(|e| e.to_string())?;
        gpu.check_lost().map_err(|e| e.to_string())?;
        Ok(start.elapsed().as_secs_f64() / (iters * batch) as f64)
    }

    /// One weight matrix of the encoder with its epilogue, x and y sized for the largest M timed.
    struct Case {
        rows: usize,
        k: usize,
        epilogue: LinearEpilogue,
        w: GpuMatrix,
        x: GpuBuffer,
        y: GpuBuffer,
    }

    fn cases(gpu: &Gpu, a: &Args, shapes: &[(usize, usize, LinearEpilogue)], max_m: u32) -> Result<Vec<Case>, String> {
        let mut rng = Rng::new(2);
        let mut out = Vec::new();
        for &(rows, k, epilogue) in shapes {
            let w = rng.vec(rows * k, 1.0);
            let wm = GpuMatrix::upload(gpu, "w", &w, rows, k, a.numerics).map_err(|e| e.to_string())?;
            let x = gpu.upload("x", &rng.vec(max_m as usize * k, 1.0));
            let out_cols = if epilogue == LinearEpilogue::SwiGlu { rows / 2 } else { rows };
            let y = gpu.buffer("y", (max_m as usize * out_cols * 4) as u64);
            out.push(Case { rows, k, epilogue, w: wm, x, y });
        }
        Ok(out)
    }

    fn open(max_rows: usize, max_k: usize) -> Result<Gpu, String> {
        let gpu = Gpu::new_blocking(GpuOptions { min_storage_binding: (max_rows * max_k * 4) as u64, ..Default::default() }).map_err(|e| e.to_string())?;
        println!("adapter: {}", gpu.describe());
        Ok(gpu)
    }

    /// The encoder's GEMMs at M = 101 and 1001 (100 / 1000 bytes of text; or `--m`): TFLOP/s of the shape
    /// `linear` picks, or of every shape with `--sweep`.
    pub fn bench(a: &Args) -> Result<(), String> {
        // QKV, attention out (+ residual), SwiGLU gate/up, down (+ residual), a cross-attention K/V projection.
        let shapes = [
            (3072, 1024, LinearEpilogue::Store),
            (1024, 1024, LinearEpilogue::Accumulate),
            (8192, 1024, LinearEpilogue::SwiGlu),
            (1024, 4096, LinearEpilogue::Accumulate),
            (4096, 1024, LinearEpilogue::Store),
        ];
        let ms = if a.m > dia_webgpu::kernels::linear::SMALL_M_MAX { vec![a.m] } else { vec![101, 1001] };
        let max_m = ms.iter().copied().max().unwrap_or(1);
        let gpu = open(8192, 4096)?;
        let cases = cases(&gpu, a, &shapes, max_m)?;
        for &m in &ms {
            for c in &cases {
                let default = TiledShape::for_problem(m, c.rows as u32, c.epilogue);
                let tried: Vec<TiledShape> = if a.sweep { TiledShape::ALL.to_vec() } else { vec![default] };
                let flops = 2.0 * m as f64 * c.k as f64 * c.rows as f64;
                for shape in tried {
                    let d = linear_tiled_shaped(&gpu, &c.x, &c.w, &c.y, m, c.epilogue, shape);
                    let s = time(&gpu, &[d], a.iters, a.batch)?;
                    println!(
                        "linear tiled {} {:?}: M={m} N={} K={} tile {}x{} r{} k{} g{} ({} workgroups){}: {:9.2} us/call, {:7.3} TFLOP/s",
                        a.numerics.name(),
                        c.epilogue,
                        c.rows,
                        c.k,
                        shape.tm,
                        shape.tn,
                        shape.rm,
                        shape.bk,
                        shape.kg,
                        shape.groups(m, c.rows as u32, c.epilogue),
                        if shape == default { " (default)" } else { "" },
                        s * 1e6,
                        flops / s / 1e12
                    );
                }
            }
        }
        Ok(())
    }

    /// 16-row matrix–vector blocks (`linear_row_blocks`) vs the tiled kernel (default shape) per M: where
    /// `BLOCKED_M_MAX` should sit.
    pub fn crossover(a: &Args) -> Result<(), String> {
        let shapes = [(3072, 1024, LinearEpilogue::Store), (8192, 1024, LinearEpilogue::SwiGlu), (1024, 4096, LinearEpilogue::Accumulate)];
        let ms = [16u32, 32, 64, 101, 128, 256, 1001];
        let gpu = open(8192, 4096)?;
        let cases = cases(&gpu, a, &shapes, 1001)?;
        println!("BLOCKED_M_MAX = {BLOCKED_M_MAX} (linear_rows takes blocks up to it, the tiled kernel above)");
        for c in &cases {
            for m in ms {
                let flops = 2.0 * m as f64 * c.k as f64 * c.rows as f64;
                let blocks = linear_row_blocks(&gpu, &c.x, &c.w, &c.y, m, c.epilogue).ok_or("row blocks not aligned")?;
                let tb = time(&gpu, &blocks, a.iters, a.batch)?;
                let shape = TiledShape::for_problem(m, c.rows as u32, c.epilogue);
                let tt = time(&gpu, &[linear_tiled_shaped(&gpu, &c.x, &c.w, &c.y, m, c.epilogue, shape)], a.iters, a.batch)?;
                println!(
                    "crossover {} {:?} N={} K={} M={m:4}: blocks {:8.4} ms ({:6.2} TFLOP/s), tiled {}x{} g{} {:8.4} ms ({:6.2} TFLOP/s): {} faster",
                    a.numerics.name(),
                    c.epilogue,
                    c.rows,
                    c.k,
                    tb * 1e3,
                    flops / tb / 1e12,
                    shape.tm,
                    shape.tn,
                    shape.kg,
                    tt * 1e3,
                    flops / tt / 1e12,
                    if tb <= tt { "blocks" } else { "tiled" }
                );
            }
        }
        Ok(())
    }
}

/// `--decoder`: the decoder step's matrices as the step multiplies them, per M and path.
#[cfg(not(target_arch = "wasm32"))]
mod decoder {
    use super::Args;
    use dia_webgpu::config::DiaConfig;
    use dia_webgpu::dia::MatrixRole;
    use dia_webgpu::gpu::{Dispatch, Gpu, GpuOptions};
    use dia_webgpu::kernels::linear::{
        coop_supported, linear_coop_shaped, linear_scheduled, linear_small_m_shaped, norm_linear_scheduled, norm_linear_small_m_shaped, schedule, small_m_arith, CoopShape,
        LinearEpilogue, Schedule, SmallMShape, COOP_M_MIN,
        SMALL_M_MAX,
    };
    use dia_webgpu::kernels::norm::rmsnorm;
    use dia_webgpu::kernels::GpuMatrix;

    /// One matrix of a layer: rows, columns, epilogue, role, whether the step normalizes its input first.
    struct Spec {
        rows: usize,
        cols: usize,
        epilogue: LinearEpilogue,
        role: MatrixRole,
        norm: bool,
    }

    /// One timed pass of the step's matrices: its name, its dispatches, the paths it took, and which matrix kind
    /// (index into a layer's matrices, the logits last) each dispatch belongs to.
    struct Run {
        name: String,
        ds: Vec<Dispatch>,
        picked: Vec<Schedule>,
        kinds: Vec<usize>,
    }

    /// `--per-matrix` labels, in the order of a layer's matrices, the logits head last.
    const KIND_LABELS: [&str; 7] = ["qkv", "o", "xq", "xo", "gateup", "down", "logits"];

    pub fn bench(a: &Args) -> Result<(), String> {
        let d = DiaConfig::dia_1_6b().decoder;
        let layers = a.layers.unwrap_or(d.layers);
        let (attn, cross) = (d.heads * d.head_dim, d.cross_heads * d.cross_head_dim);
        let layer = [
            Spec { rows: attn + 2 * d.kv_heads * d.head_dim, cols: d.hidden, epilogue: LinearEpilogue::Store, role: MatrixRole::Attention, norm: true },
            Spec { rows: d.hidden, cols: attn, epilogue: LinearEpilogue::Accumulate, role: MatrixRole::Attention, norm: false },
            Spec { rows: cross, cols: d.hidden, epilogue: LinearEpilogue::Store, role: MatrixRole::Attention, norm: true },
            Spec { rows: d.hidden, cols: cross, epilogue: LinearEpilogue::Accumulate, role: MatrixRole::Attention, norm: false },
            Spec { rows: 2 * d.intermediate, cols: d.hidden, epilogue: LinearEpilogue::SwiGlu, role: MatrixRole::Mlp, norm: true },
            Spec { rows: d.hidden, cols: d.intermediate, epilogue: LinearEpilogue::Accumulate, role: MatrixRole::Mlp, norm: false },
        ];
        let logits = Spec { rows: d.channels * d.vocab, cols: d.hidden, epilogue: LinearEpilogue::Store, role: MatrixRole::Logits, norm: true };
        let specs: Vec<&Spec> = (0..layers).flat_map(|_| layer.iter()).chain([&logits]).collect();
        let kind_of = |i: usize| if i + 1 == specs.len() { layer.len() } else { i % layer.len() };

        let largest = specs.iter().map(|s| s.rows as u64 * s.role.format(a.numerics).row_words(s.cols as u32) as u64 * 4).max().unwrap_or(0);
        let gpu = Gpu::new_blocking(GpuOptions { min_storage_binding: largest, ..Default::default() }).map_err(|e| e.to_string())?;
        println!("adapter: {} (tensor cores: {})", gpu.describe(), gpu.tensor_cores());

        // One random matrix per distinct (spec, format), encoded once and written into every layer's own buffer (so
        // the pass streams the whole model's bytes, as a step does).
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        };
        let mut encoded: Vec<Vec<u32>> = Vec::new();
        for s in layer.iter().chain([&logits]) {
            let w: Vec<f32> = (0..s.rows * s.cols).map(|_| next() / (s.cols as f32).sqrt()).collect();
            encoded.push(s.role.format(a.numerics).encode_rows(&w, s.rows, s.cols).map_err(|e| e.to_string())?);
        }
        let mut mats = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            let which = if i + 1 == specs.len() { layer.len() } else { i % layer.len() };
            let m = GpuMatrix::empty(&gpu, "w", s.rows, s.cols, s.role.format(a.numerics)).map_err(|e| e.to_string())?;
            m.write_gpu_rows(&gpu, 0, &encoded[which], s.rows);
            mats.push(m);
        }
        drop(encoded);
        let bytes: u64 = mats.iter().map(|m| m.data.size).sum();
        let max_m = a.decoder_ms.iter().copied().max().unwrap_or(1).max(1) as u64;
        let max_cols = specs.iter().map(|s| s.cols).max().unwrap_or(1) as u64;
        let max_rows = specs.iter().map(|s| s.rows).max().unwrap_or(1) as u64;
        let x = gpu.upload("x", &(0..(max_m * max_cols) as usize).map(|_| next()).collect::<Vec<f32>>());
        let y = gpu.buffer("y", max_m * max_rows * 4);
        let scratch = gpu.buffer("scratch", max_m * max_cols * 4);
        let gain = gpu.upload("gain", &vec![1.0f32; max_cols as usize]);
        let coop = gpu.tensor_cores() && mats.iter().all(|w| coop_supported(&gpu, w));
        println!(
            "decoder matrices: {layers} layers + logits, {} numerics, {:.1} MB of weights per pass; COOP_M_MIN = {COOP_M_MIN}, SMALL_M_MAX = {SMALL_M_MAX}",
            a.numerics.name(),
            bytes as f64 / 1e6
        );
        for &m in &a.decoder_ms {
            let mut paths: Vec<(&str, Option<Schedule>)> = Vec::new();
            if m <= SMALL_M_MAX {
                paths.push(("small-M", Some(Schedule::SmallM)));
            }
            if coop {
                paths.push(("tensor-cores", Some(Schedule::TensorCores)));
            }
            paths.push(("policy", None));
            // With --sweep, the tensor cores on every tile of the list `linear_coop` picks from at this M, forced on
            // each matrix whose epilogue it serves (the others keep the default tile).
            let limit = gpu.limits.max_compute_workgroup_storage_size;
            let list: &[CoopShape] = if m <= SMALL_M_MAX { &CoopShape::SMALL_M } else { &CoopShape::ALL };
            let tiles: Vec<CoopShape> = if coop && a.sweep {
                list.iter().filter_map(|s| [2, 1].into_iter().map(|st| s.with_stages(st)).find(|s| s.workgroup_bytes() <= limit)).collect()
            } else {
                Vec::new()
            };
            let mut runs: Vec<Run> = Vec::new();
            let ariths = super::arith_runs(a, &gpu)?;
            for (arith, (name, path)) in ariths.iter().flat_map(|&x| paths.iter().map(move |&p| (x, p))) {
                super::force_arith(&gpu, arith);
                // The arithmetic each small-M dispatch of this run takes, per weight format of the pass.
                let mut formats: Vec<_> = mats.iter().map(|w| w.format).collect();
                formats.dedup();
                let pf = if gpu.matvec_prefetch() { "+prefetch" } else { "" };
                let name = format!("{name} {:?}{pf}", formats.iter().map(|&f| small_m_arith(&gpu, f)).collect::<Vec<_>>());
                let mut ds: Vec<Dispatch> = Vec::new();
                let mut kinds = Vec::new();
                let mut picked = Vec::new();
                for (i, (s, w)) in specs.iter().zip(&mats).enumerate() {
                    let xs = if s.norm { &x } else { &scratch };
                    let p = path.unwrap_or_else(|| schedule(&gpu, xs, w, &y, m, s.epilogue));
                    if !picked.contains(&p) {
                        picked.push(p);
                    }
                    if s.norm {
                        ds.extend(norm_linear_scheduled(&gpu, &x, &gain, 1e-5, w, &y, m, s.epilogue, &scratch, p));
                    } else {
                        ds.extend(linear_scheduled(&gpu, &scratch, w, &y, m, s.epilogue, p));
                    }
                    kinds.resize(ds.len(), kind_of(i));
                }
                runs.push(Run { name, ds, picked, kinds });
            }
            for tile in tiles {
                let mut ds: Vec<Dispatch> = Vec::new();
                let mut kinds = Vec::new();
                for (i, (s, w)) in specs.iter().zip(&mats).enumerate() {
                    if s.norm {
                        ds.push(rmsnorm(&gpu, &x, &gain, &scratch, m, w.cols, 1e-5));
                    }
                    let shape = if tile.supports(s.epilogue) { tile } else { CoopShape::for_problem(&gpu, m, w.rows, s.epilogue).ok_or("no tile fits")? };
                    ds.push(linear_coop_shaped(&gpu, &scratch, w, &y, m, s.epilogue, shape));
                    kinds.resize(ds.len(), kind_of(i));
                }
                runs.push(Run { name: format!("tile {}", tile.name()), ds, picked: vec![Schedule::TensorCores], kinds });
            }
            // With --sweep at M > 2, the matrix–vector kernel with each of these shapes forced on every matrix but
            // gate/up, which keeps the rule's (the whole set, every matrix its own buffer: no single matrix sits in
            // L2, as in the one-matrix sweep).
            if a.sweep && m > 2 && m <= SMALL_M_MAX {
                let gate_up = layer.iter().position(|s| s.epilogue == LinearEpilogue::SwiGlu);
                for (threads, k_threads, rows_per_thread) in [(64, 64, 8), (64, 64, 4), (128, 64, 4), (64, 32, 4), (64, 32, 8), (128, 32, 8), (128, 64, 8)] {
                    let shape = SmallMShape { threads, k_threads, rows_per_thread };
                    if !shape.fits(m) {
                        continue;
                    }
                    let mut ds: Vec<Dispatch> = Vec::new();
                    let mut kinds = Vec::new();
                    for (i, (s, w)) in specs.iter().zip(&mats).enumerate() {
                        let forced = if Some(kind_of(i)) == gate_up { SmallMShape::for_matrix(&gpu, w, m) } else { shape };
                        ds.push(if s.norm {
                            norm_linear_small_m_shaped(&gpu, &x, &gain, 1e-5, w, &y, m, s.epilogue, forced)
                        } else {
                            linear_small_m_shaped(&gpu, &scratch, w, &y, m, s.epilogue, forced)
                        });
                        kinds.resize(ds.len(), kind_of(i));
                    }
                    runs.push(Run { name: format!("small-M {threads}x{k_threads}x{rows_per_thread}"), ds, picked: vec![Schedule::SmallM], kinds });
                }
            }
            for Run { name, ds, picked, kinds } in runs {
                let refs: Vec<&Dispatch> = ds.iter().collect();
                let per_pass = super::seconds_per_submission(&gpu, &refs, a.iters.div_ceil(10).max(3), a.iters)?;
                println!(
                    "decoder linear {} M={m:2} {name:24}: {:8.1} passes/s, {:7.3} ms/pass, {:7.1} GB/s of weights, {} dispatches ({picked:?})",
                    a.numerics.name(),
                    1.0 / per_pass,
                    per_pass * 1e3,
                    bytes as f64 / per_pass / 1e9,
                    ds.len()
                );
                if a.per_matrix {
                    // Each kind's dispatches (its norm included) of every layer, back to back; µs per matrix call.
                    let mut line = String::new();
                    for (k, label) in KIND_LABELS.iter().enumerate() {
                        let refs: Vec<&Dispatch> = ds.iter().zip(&kinds).filter(|(_, &kd)| kd == k).map(|(d, _)| d).collect();
                        let calls = specs.iter().enumerate().filter(|&(i, _)| kind_of(i) == k).count();
                        if refs.is_empty() || calls == 0 {
                            continue;
                        }
                        let us = super::seconds_per_submission(&gpu, &refs, 3, a.iters)? * 1e6 / calls as f64;
                        line.push_str(&format!(" {label} {us:.2}"));
                    }
                    println!("  per matrix µs (M={m}, {name}):{line}");
                }
            }
        }
        Ok(())
    }
}
