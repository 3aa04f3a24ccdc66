//! Shared helpers for the integration tests: fixture location, a test GPU, random data, error metrics.
#![allow(dead_code)]

pub mod fixture;
pub mod nari;

use std::path::PathBuf;

use dia_webgpu::kernels::linear::LinearEpilogue;
use dia_webgpu::kernels::{round_f16, WeightFormat};
use dia_webgpu::quant::{quantize_rows, QuantBits, QuantFormat};

pub mod conv_ref;
pub mod cpu_ref;

#[cfg(not(target_arch = "wasm32"))]
use dia_webgpu::gpu::{Dispatch, Gpu, GpuBuffer, GpuOptions, Reduction};
#[cfg(not(target_arch = "wasm32"))]
use dia_webgpu::kernels::GpuMatrix;

/// Repository root (tests run with the crate directory as working directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `$DIA_FIXTURES`, else `../shared/fixtures/tiny` beside the repository. A missing directory is a failure.
pub fn fixtures_dir() -> PathBuf {
    let dir = match std::env::var_os("DIA_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => repo_root().join("../shared/fixtures/tiny"),
    };
    assert!(
        dir.join("expected.safetensors").is_file(),
        "fixture directory {} has no expected.safetensors (set DIA_FIXTURES)",
        dir.display()
    );
    dir
}

/// A device on whatever adapter this machine has (lavapipe in CI), with small required limits.
#[cfg(not(target_arch = "wasm32"))]
pub fn test_gpu() -> Gpu {
    Gpu::new_blocking(GpuOptions { high_performance: true, min_storage_binding: 16 << 20, want_shader_f16: true, want_tensor_cores: true })
        .expect("a GPU adapter (install mesa-vulkan-drivers for lavapipe)")
}

/// `test_gpu` without tensor cores (`GpuOptions::want_tensor_cores` off): `linear` takes the matrix–vector kernel at
/// every M ≤ 16 whatever the adapter, for tests of that kernel on GPUs that have tensor cores.
#[cfg(not(target_arch = "wasm32"))]
pub fn test_gpu_without_tensor_cores() -> Gpu {
    Gpu::new_blocking(GpuOptions { high_performance: true, min_storage_binding: 16 << 20, want_shader_f16: true, want_tensor_cores: false })
        .expect("a GPU adapter (install mesa-vulkan-drivers for lavapipe)")
}

/// `test_gpu` with f16 arithmetic turned off (`Gpu::set_f16_arithmetic`): the f32-arithmetic tests of the kernels,
/// exact to f32 rounding, run on it; `tests/kernels_linear_f16.rs` tests the f16 arithmetic.
#[cfg(not(target_arch = "wasm32"))]
pub fn test_gpu_f32_arith() -> Gpu {
    let gpu = test_gpu();
    gpu.set_f16_arithmetic(false);
    gpu
}

/// The library's generator (xorshift64*), shared with the benchmarks and `DiaModel::random`.
#[allow(unused_imports)]
pub use dia_webgpu::random::Rng;

/// max |a − b| / max |b|.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs()).fold(0.0, f64::max);
    let den = b.iter().map(|y| (*y as f64).abs()).fold(0.0, f64::max);
    num / den.max(1e-30)
}

/// Signal-to-noise ratio of `a` against reference `b`, in dB.
pub fn snr_db(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let sig: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    let noise: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    10.0 * (sig / noise.max(1e-300)).log10()
}

/// Reads every tensor of a safetensors file as (shape, f32 data) — for fixtures; int tensors are converted.
pub fn load_expected(path: &std::path::Path) -> fixture::Expected {
    fixture::parse_expected(&std::fs::read(path).expect("read fixture"))
}

/// `linear`'s reference: y as the epilogue defines it, accumulated in f64; `y0` is y before the kernel (used by
/// Accumulate).
pub fn cpu_linear(x: &[f32], w: &[f32], y0: &[f32], m: usize, n: usize, k: usize, epilogue: LinearEpilogue) -> Vec<f32> {
    let dot = |mi: usize, ni: usize| -> f64 { (0..k).map(|ki| x[mi * k + ki] as f64 * w[ni * k + ki] as f64).sum() };
    match epilogue {
        LinearEpilogue::Store => (0..m * n).map(|i| dot(i / n, i % n) as f32).collect(),
        LinearEpilogue::Accumulate => (0..m * n).map(|i| (y0[i] as f64 + dot(i / n, i % n)) as f32).collect(),
        LinearEpilogue::SwiGlu => {
            let half = n / 2;
            (0..m * half)
                .map(|i| {
                    let (mi, j) = (i / half, i % half);
                    let gate = dot(mi, j);
                    (gate / (1.0 + (-gate).exp()) * dot(mi, half + j)) as f32
                })
                .collect()
        }
    }
}

/// What the linear kernels multiply by: W `[n, k]` as stored in `format` (f32, rounded to f16, or dequantized).
pub fn stored_weights(w: &[f32], n: usize, k: usize, format: impl Into<WeightFormat>) -> Vec<f32> {
    match format.into() {
        WeightFormat::F32 => w.to_vec(),
        WeightFormat::F16 => w.iter().map(|&v| round_f16(v)).collect(),
        WeightFormat::Quant(q) => quantize_rows(w, n, k, q).expect("quantizable weights").dequantize(),
    }
}

/// RMSNorm of each of the `m` rows of x `[m, k]` times `gain`, in f64 (the fused `norm_linear`'s first half).
pub fn cpu_rmsnorm(x: &[f32], gain: &[f32], eps: f32, m: usize, k: usize) -> Vec<f32> {
    let mut h = vec![0f32; m * k];
    for r in 0..m {
        let row = &x[r * k..][..k];
        let inv = 1.0 / ((row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / k as f64) + eps as f64).sqrt();
        for i in 0..k {
            h[r * k + i] = (row[i] as f64 * inv * gain[i] as f64) as f32;
        }
    }
    h
}

/// One product on the GPU: x `[m, k]`, W `[n, k]` (uploaded in `format`) and y starting as `y0`; runs the
/// dispatches `build` makes for them and returns y as read back.
#[cfg(not(target_arch = "wasm32"))]
#[allow(clippy::too_many_arguments)]
pub fn run_linear(
    gpu: &Gpu,
    x: &[f32],
    w: &[f32],
    y0: &[f32],
    n: usize,
    k: usize,
    format: impl Into<WeightFormat>,
    build: impl FnOnce(&GpuBuffer, &GpuMatrix, &GpuBuffer) -> Vec<Dispatch>,
) -> Vec<f32> {
    let xb = gpu.upload("x", x);
    let wm = GpuMatrix::upload(gpu, "w", w, n, k, format).expect("upload");
    let yb = gpu.upload("y", y0);
    let ds = build(&xb, &wm, &yb);
    gpu.run(&ds.iter().collect::<Vec<_>>());
    gpu.read_f32_blocking(&yb).expect("readback")
}

/// The reductions this device can run: always `Workgroup`, and `Subgroup` where the adapter has subgroups (lavapipe
/// and every GPU we test on do: a device without them fails here rather than skip half the tests).
#[cfg(not(target_arch = "wasm32"))]
pub fn reductions(gpu: &Gpu) -> Vec<Reduction> {
    assert!(
        gpu.subgroup_sizes().is_some() || std::env::var_os("DIA_TEST_NO_SUBGROUPS").is_some(),
        "the test adapter {} offers no subgroups: the subgroup variants would go untested (set DIA_TEST_NO_SUBGROUPS=1 to allow)",
        gpu.describe()
    );
    let mut r = vec![Reduction::Workgroup];
    if gpu.subgroup_sizes().is_some() {
        r.push(Reduction::Subgroup);
    }
    r
}

/// `build` run with `gpu` set to `reduction`, the device's previous choice restored afterwards.
#[cfg(not(target_arch = "wasm32"))]
pub fn with_reduction<T>(gpu: &Gpu, reduction: Reduction, build: impl FnOnce() -> T) -> T {
    let before = gpu.reduction();
    gpu.set_subgroups(reduction == Reduction::Subgroup);
    assert_eq!(gpu.reduction(), reduction, "the device must take the {reduction:?} variant");
    let out = build();
    gpu.set_subgroups(before == Reduction::Subgroup);
    out
}

/// `bits` quantization with groups of 64 weights (the default groups are 32).
pub fn q64(bits: QuantBits) -> WeightFormat {
    WeightFormat::Quant(QuantFormat::new(bits, 64).unwrap())
}

/// One small-M linear case of the arithmetic tests (`kernels_linear_f16`, `kernels_linear_i8`).
pub struct LinearCase {
    pub format: WeightFormat,
    pub m: usize,
    /// Weight rows (twice the outputs for SwiGLU).
    pub n: usize,
    pub k: usize,
    pub epilogue: LinearEpilogue,
    pub norm: bool,
}

/// Random operands of the fused-norm tests for `m` rows of x against `n` weight rows of `k` columns and `out_cols`
/// outputs: x rows of growing scale (row r uniform in 0.8·(r + 1)·[−1, 1)), gain in ±2, W in ±1, y0 in ±1.
pub fn norm_operands(rng: &mut Rng, m: usize, n: usize, k: usize, out_cols: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let x: Vec<f32> = (0..m * k).map(|i| rng.uniform() * (1 + i / k) as f32 * 0.8).collect();
    let gain = rng.vec(k, 2.0);
    let w = rng.vec(n * k, 1.0);
    let y0 = rng.vec(m * out_cols, 1.0);
    (x, gain, w, y0)
}

/// Random operands for `c`: x uniform in ±`x_scale`, gain in ±2, weight rows of different magnitudes (so quantized
/// groups get different scales), y0 in ±1.
pub fn linear_operands(rng: &mut Rng, c: &LinearCase, x_scale: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let out_cols = if c.epilogue == LinearEpilogue::SwiGlu { c.n / 2 } else { c.n };
    let x = rng.vec(c.m * c.k, x_scale);
    let gain = rng.vec(c.k, 2.0);
    let w: Vec<f32> = (0..c.n * c.k).map(|i| rng.uniform() * (1 + (i / c.k) % 5) as f32 * 0.3).collect();
    let y0 = rng.vec(c.m * out_cols, 1.0);
    (x, gain, w, y0)
}
