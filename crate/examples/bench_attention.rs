//! Decode attention at the real model's shapes, each case timed two ways in one submission of many repeats:
//! chained (every repeat writes the same output, so the GPU orders them with a barrier, as in the decoder) and
//! independent (each repeat has its own output: no barrier, launches may overlap). The difference is what the
//! ordering costs; the independent figure is closer to the kernels' own time.
//!
//! cargo run --release --example bench_attention -- [--repeats 200] [--kv f32,f16,q8]

#[cfg(not(target_arch = "wasm32"))]
#[derive(clap::Parser)]
#[command(name = "bench_attention", about = "Decode attention at the model's shapes: chained vs independent repeats")]
struct Args {
    /// Repeats of each case in one submission (µs per repeat reported).
    #[arg(long, default_value_t = 200, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    repeats: usize,
    /// KV-cache formats, each timed in turn (f32, f16, q8).
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    kv: Vec<dia_webgpu::kernels::kv_cache::KvFormat>,
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    use clap::Parser;
    use dia_webgpu::gpu::{Dispatch, Gpu, GpuOptions};
    use dia_webgpu::kernels::attention::{attention_decode, AttentionArgs};
    use dia_webgpu::kernels::kv_cache::{pack_kv, KvFormat};
    use dia_webgpu::kernels::norm::rmsnorm;
    use dia_webgpu::random::Rng;
    use std::time::Instant;

    let Args { repeats, kv: formats } = Args::parse();
    let gpu = Gpu::new_blocking(GpuOptions { min_storage_binding: 128 << 20, ..Default::default() }).expect("a GPU adapter");
    println!("adapter: {}", gpu.describe());
    let time = |ds: &[Dispatch]| -> f64 {
        let refs: Vec<&Dispatch> = ds.iter().collect();
        for _ in 0..3 {
            gpu.run(&refs);
        }
        gpu.wait_idle().unwrap();
        let t0 = Instant::now();
        for _ in 0..5 {
            gpu.run(&refs);
        }
        gpu.wait_idle().unwrap();
        t0.elapsed().as_secs_f64() / 5.0 / repeats as f64 * 1e6
    };
    let noise = |n: usize, seed: u64| -> Vec<f32> { Rng::new(seed).vec(n, 0.5) };

    // Launch + ordering cost alone: a one-row RMSNorm of 2048 values.
    let x = gpu.upload("x", &noise(2048, 1));
    let w = gpu.upload("w", &vec![1.0f32; 2048]);
    let y = gpu.buffer("y", 2048 * 4);
    let chained: Vec<Dispatch> = (0..repeats).map(|_| rmsnorm(&gpu, &x, &w, &y, 1, 2048, 1e-5)).collect();
    let outs: Vec<_> = (0..repeats).map(|_| gpu.buffer("y", 2048 * 4)).collect();
    let independent: Vec<Dispatch> = outs.iter().map(|o| rmsnorm(&gpu, &x, &w, o, 1, 2048, 1e-5)).collect();
    println!("| case | chained µs | independent µs |");
    println!("|---|--:|--:|");
    println!("| rmsnorm, 1 row | {:.1} | {:.1} |", time(&chained), time(&independent));

    // f32 values packed into `format` on the GPU (the caches' own writer).
    let cache = |label: &str, values: &[f32], format: KvFormat| {
        let src = gpu.upload(label, values);
        if format == KvFormat::F32 {
            return src;
        }
        let dst = gpu.buffer(label, format.bytes(values.len() as u64, 128));
        gpu.run(&[&pack_kv(&gpu, &src, &dst, values.len() as u32, 128, format)]);
        dst
    };
    for kv_format in formats {
        println!("| **{kv_format} caches** | | |");
        let (rows, hd, max_len) = (2u32, 128u32, 3072u32);
        // Self-attention: 16 query heads, 4 kv heads, caches [row][max_len][4·128].
        let kv_w = 4 * hd;
        let k = cache("k", &noise((rows * max_len * kv_w) as usize, 2), kv_format);
        let v = cache("v", &noise((rows * max_len * kv_w) as usize, 3), kv_format);
        let q = gpu.upload("q", &noise((rows * 24 * hd) as usize, 4));
        let seqs = gpu.upload("seqs", &(0..rows).flat_map(|r| [r * max_len, max_len]).collect::<Vec<u32>>());
        for pos in [16u32, 266, 1000, 3071] {
            let qinfo = gpu.upload("qinfo", &(0..rows).flat_map(|r| [r, pos]).collect::<Vec<u32>>());
            let outs: Vec<_> = (0..repeats).map(|_| gpu.buffer("out", (rows * 16 * hd * 4) as u64)).collect();
            let args = |out| AttentionArgs {
                q_buf: &q, q_stride: 24 * hd, q_col: 0, k_buf: &k, v_buf: &v, kv_stride: kv_w, k_col: 0, v_col: 0,
                qinfo: &qinfo, seqs: &seqs, out, rows, heads: 16, kv_heads: 4, head_dim: hd, causal: true, max_keys: max_len, kv_format,
            };
            let chained: Vec<Dispatch> = (0..repeats).flat_map(|_| attention_decode(&gpu, &args(&outs[0]))).collect();
            let independent: Vec<Dispatch> = outs.iter().flat_map(|o| attention_decode(&gpu, &args(o))).collect();
            let per = chained.len() / repeats;
            println!("| self-attention, {} keys, {per} dispatches | {:.1} | {:.1} |", pos + 1, time(&chained), time(&independent));
        }
        // Cross-attention: 16 query heads over 16 kv heads, [k | v] packed per text position.
        for text in [101u32, 1024] {
            let ckv_w = 2 * 16 * hd;
            let kv = cache("ckv", &noise((2 * text * ckv_w) as usize, 5), kv_format);
            let seqs = gpu.upload("cseqs", &[0u32, text, text, 1]);
            let qinfo = gpu.upload("cqinfo", &[0u32, 0, 1, 0]);
            let cq = gpu.upload("cq", &noise((rows * 16 * hd) as usize, 6));
            let outs: Vec<_> = (0..repeats).map(|_| gpu.buffer("out", (rows * 16 * hd * 4) as u64)).collect();
            let args = |out| AttentionArgs {
                q_buf: &cq, q_stride: 16 * hd, q_col: 0, k_buf: &kv, v_buf: &kv, kv_stride: ckv_w, k_col: 0, v_col: ckv_w / 2,
                qinfo: &qinfo, seqs: &seqs, out, rows, heads: 16, kv_heads: 16, head_dim: hd, causal: false, max_keys: text, kv_format,
            };
            let chained: Vec<Dispatch> = (0..repeats).flat_map(|_| attention_decode(&gpu, &args(&outs[0]))).collect();
            let independent: Vec<Dispatch> = outs.iter().flat_map(|o| attention_decode(&gpu, &args(o))).collect();
            let per = chained.len() / repeats;
            println!("| cross-attention, {text} keys, {per} dispatches | {:.1} | {:.1} |", time(&chained), time(&independent));
        }
    }
}

#[cfg(target_arch = "wasm32")]
fn main() {}
