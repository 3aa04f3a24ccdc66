//! Encoder attention alone (`attention_prefill`): the flash kernel (the fallback, forced with a zero scratch cap)
//! against the tiled scores / softmax / P·V passes, at the encoder's shapes: head_dim 128, n tokens packed as two
//! sequences (n − 1 text tokens + the 1-token unconditional row), non-causal, fused QKV rows. Prints ms per pass
//! and the ratio, and the largest difference between the two outputs.
//!
//! cargo run --release --example bench_prefill -- [--heads 16] [--repeats 5]

#[cfg(not(target_arch = "wasm32"))]
#[derive(clap::Parser)]
#[command(name = "bench_prefill", about = "Encoder attention: flash kernel vs tiled passes at the encoder's shapes")]
struct Args {
    /// Attention heads (the model has 16; time scales with heads).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    heads: u32,
    /// Timed passes in one submission, after one warm-up (ms per pass reported).
    #[arg(long, default_value_t = 5, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    repeats: usize,
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    use clap::Parser;
    use dia_webgpu::gpu::{Dispatch, Gpu, GpuOptions};
    use dia_webgpu::random::Rng;
    use dia_webgpu::kernels::attention::{attention_prefill, attention_prefill_limited, AttentionArgs};
    use std::time::Instant;

    let Args { heads, repeats } = Args::parse();
    let gpu = Gpu::new_blocking(GpuOptions { min_storage_binding: 128 << 20, ..Default::default() }).expect("a GPU adapter");
    println!("adapter: {}", gpu.describe());
    if heads < 16 {
        println!("{heads} heads instead of the model's 16 (time scales with heads)");
    }
    let hd = 128u32;
    // ms per pass: one warm-up submission, then `repeats` passes in one submission.
    let time = |ds: &[Dispatch]| -> f64 {
        let once: Vec<&Dispatch> = ds.iter().collect();
        gpu.run(&once);
        gpu.wait_idle().unwrap();
        let all: Vec<&Dispatch> = (0..repeats).flat_map(|_| once.iter().copied()).collect();
        let t0 = Instant::now();
        gpu.run(&all);
        gpu.wait_idle().unwrap();
        t0.elapsed().as_secs_f64() * 1e3 / repeats as f64
    };
    // Entries uniform in ±0.3: q·k of std ≈ 0.34, like trained attention rather than noise-dominated.
    let noise = |n: usize, seed: u32| -> Vec<f32> { Rng::new(seed as u64).vec(n, 0.3) };
    println!("| tokens | heads | flash ms | tiled ms | flash / tiled | max abs diff |");
    println!("|--:|--:|--:|--:|--:|--:|");
    for n in [101u32, 1001] {
        let stride = 3 * heads * hd;
        let qkv = gpu.upload("qkv", &noise((n * stride) as usize, n));
        let qinfo = gpu.upload("qinfo", &(0..n).flat_map(|m| if m < n - 1 { [0, m] } else { [1, 0] }).collect::<Vec<u32>>());
        let seqs = gpu.upload("seqs", &[0u32, n - 1, n - 1, 1]);
        let outs = [gpu.buffer("out_flash", (n * heads * hd * 4) as u64), gpu.buffer("out_tiled", (n * heads * hd * 4) as u64)];
        let args = |out| AttentionArgs {
            q_buf: &qkv,
            q_stride: stride,
            q_col: 0,
            k_buf: &qkv,
            v_buf: &qkv,
            kv_stride: stride,
            k_col: heads * hd,
            v_col: 2 * heads * hd,
            qinfo: &qinfo,
            seqs: &seqs,
            out,
            rows: n,
            heads,
            kv_heads: heads,
            head_dim: hd,
            causal: false,
            max_keys: n,
            kv_format: Default::default(),
        };
        let flash = time(&attention_prefill_limited(&gpu, &args(&outs[0]), 0));
        let tiled_ds = attention_prefill(&gpu, &args(&outs[1]));
        let tiled = time(&tiled_ds);
        if tiled_ds.len() == 3 {
            // Each pass alone (its inputs are in place after the full run).
            let pass: Vec<String> = (0..3).map(|i| format!("{:.2}", time(&tiled_ds[i..i + 1]))).collect();
            println!("n = {n}: tiled passes scores / softmax / P·V: {} ms", pass.join(" / "));
        }
        let (a, b) = (gpu.read_f32_blocking(&outs[0]).unwrap(), gpu.read_f32_blocking(&outs[1]).unwrap());
        let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        println!("| {n} | {heads} | {flash:.2} | {tiled:.2} | {:.1} | {diff:.1e} |", flash / tiled);
    }
}

#[cfg(target_arch = "wasm32")]
fn main() {}
