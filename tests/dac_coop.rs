//! The DAC convolutions on tensor cores (`kernels::dac_conv_coop`): every generated shader variant through
//! naga's WGSL → SPIR-V translation on the host (no GPU; runs in CI), and, where the device has cooperative
//! matrices, the kernels against a CPU reference on ragged shapes (skipped, with a message, elsewhere).
#![cfg(not(target_arch = "wasm32"))]

mod common;

// The example's `native` half (GPU probe) is unused here; its `coop::translate_spirv` is wgpu's own translation.
#[allow(dead_code)]
#[path = "../crate/examples/probe_coop.rs"]
mod probe_coop;

use dia_webgpu::kernels::dac_conv_coop::{self, CoopTile};

#[test]
fn every_coop_conv_variant_translates_to_spirv() {
    let variants = dac_conv_coop::variants();
    assert!(variants.len() >= 40);
    for v in &variants {
        let wgsl = dac_conv_coop::shader(v);
        for robust in [false, true] {
            let words = probe_coop::coop::translate_spirv(&wgsl, robust).unwrap_or_else(|e| panic!("{} (robust {robust}): {e}\n{wgsl}", v.key()));
            assert!(words > 1000, "{}: suspiciously small module ({words} words)", v.key());
        }
    }
}

#[test]
fn coop_conv_workgroup_memory_matches_the_declared_size() {
    for v in dac_conv_coop::variants() {
        let wgsl = dac_conv_coop::shader(&v);
        let bytes = probe_coop::coop::workgroup_bytes(&wgsl);
        assert_eq!(bytes, v.tile.workgroup_bytes(), "{}", v.key());
        // NVIDIA's Vulkan driver allows 48 KiB.
        assert!(bytes <= 48 * 1024, "{}: {bytes} bytes", v.key());
    }
}

#[test]
fn coop_tile_choice_wastes_fewest_rows() {
    assert_eq!(CoopTile::for_channels(96), CoopTile::NARROW);
    assert_eq!(CoopTile::for_channels(192), CoopTile::NARROW);
    assert_eq!(CoopTile::for_channels(384), CoopTile::WIDE);
    assert_eq!(CoopTile::for_channels(1536), CoopTile::WIDE);
    assert_eq!(CoopTile::for_channels(100), CoopTile::WIDE);
}

use common::{conv_epilogue, rel_err, test_gpu, Rng};
use dia_webgpu::gpu::{Gpu, GpuBuffer};
use dia_webgpu::kernels::dac_conv::{conv1d_len, conv_transpose1d_len, Conv1dWeights, ConvFusion, ConvTranspose1dWeights};
use dia_webgpu::kernels::{round_f16, Numerics};

/// Snake as the kernel stages it: f64 math, then rounded to f16.
fn staged(v: f32, alpha: Option<f32>) -> f64 {
    let v = v as f64;
    let a = match alpha {
        Some(a) => a as f64,
        None => return round_f16(v as f32) as f64,
    };
    round_f16((v + (a * v).sin().powi(2) / (a + 1e-9)) as f32) as f64
}

/// CPU Conv1d on f16-rounded weights and staged inputs: x `[cin, len]`, w `[cout, cin, k]`.
#[allow(clippy::too_many_arguments)]
fn conv1d_ref(x: &[f32], len: usize, w: &[f32], b: &[f32], cin: usize, cout: usize, k: usize, stride: usize, dil: usize, pad: usize, alpha: Option<&[f32]>) -> Vec<f64> {
    let len_out = conv1d_len(len as u32, k as u32, stride as u32, dil as u32, pad as u32) as usize;
    let mut y = vec![0.0f64; cout * len_out];
    for co in 0..cout {
        for t in 0..len_out {
            let mut s = b[co] as f64;
            for ci in 0..cin {
                for kk in 0..k {
                    let pos = (t * stride + kk * dil) as isize - pad as isize;
                    if pos >= 0 && pos < len as isize {
                        let v = staged(x[ci * len + pos as usize], alpha.map(|a| a[ci]));
                        s += round_f16(w[(co * cin + ci) * k + kk]) as f64 * v;
                    }
                }
            }
            y[co * len_out + t] = s;
        }
    }
    y
}

/// CPU ConvTranspose1d (scatter form) on f16-rounded weights and staged inputs: x `[cin, len]`, w `[cin, cout, k]`.
#[allow(clippy::too_many_arguments)]
fn conv_transpose1d_ref(x: &[f32], len: usize, w: &[f32], b: &[f32], cin: usize, cout: usize, k: usize, stride: usize, pad: usize, alpha: Option<&[f32]>) -> Vec<f64> {
    let full_len = (len - 1) * stride + k;
    let mut full = vec![0.0f64; cout * full_len];
    for ci in 0..cin {
        for j in 0..len {
            let v = staged(x[ci * len + j], alpha.map(|a| a[ci]));
            for co in 0..cout {
                for kk in 0..k {
                    full[co * full_len + j * stride + kk] += round_f16(w[(ci * cout + co) * k + kk]) as f64 * v;
                }
            }
        }
    }
    let len_out = conv_transpose1d_len(len as u32, k as u32, stride as u32, pad as u32) as usize;
    let mut y = vec![0.0f64; cout * len_out];
    for co in 0..cout {
        for t in 0..len_out {
            y[co * len_out + t] = full[co * full_len + t + pad] + b[co] as f64;
        }
    }
    y
}


/// Runs one dispatch writing into a fresh `y` initialised with `y0`; returns `y`.
fn run_into(gpu: &Gpu, y0: &[f32], make: impl FnOnce(&GpuBuffer) -> dia_webgpu::gpu::Dispatch) -> Vec<f32> {
    let y = gpu.upload("y", y0);
    let d = make(&y);
    gpu.run(&[&d]);
    let mut out = gpu.read_f32_blocking(&y).unwrap();
    out.truncate(y0.len());
    out
}

/// f16 staging with f32 accumulation against an f64 reference on the same f16 values: what is left is f32
/// summation order and the odd activation rounded to the other neighbouring f16 (f32 vs f64 Snake).
const TOL: f64 = 2e-3;

fn check(label: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{label}: length");
    assert!(got.iter().all(|v| v.is_finite()), "{label}: non-finite output");
    let e = rel_err(got, want);
    println!("{label}: rel err {e:.2e}");
    assert!(e <= TOL, "{label}: rel err {e:.3e} > {TOL:.1e}");
}

fn tensor_core_gpu() -> Option<Gpu> {
    let gpu = test_gpu();
    if gpu.tensor_cores() {
        Some(gpu)
    } else {
        println!("skipped: {} has no cooperative matrices (Gpu::tensor_cores is false)", gpu.describe());
        None
    }
}

/// Ragged Conv1d shapes: odd cin, cout off the 96/128 tiles (both tile shapes), lengths off the 128-column
/// tile, dilation 9, a strided convolution, Snake, residual add and tanh, both weight formats.
#[test]
fn dac_coop_conv1d_matches_cpu_on_ragged_shapes() {
    let Some(gpu) = tensor_core_gpu() else { return };
    let mut rng = Rng::new(41);
    // (cin, cout, k, stride, dil, pad, len, snake, accumulate, tanh)
    let cases = [
        (37, 50, 7, 1, 9, 27, 300, true, false, false),
        (33, 200, 1, 1, 1, 0, 129, true, true, false),
        (19, 97, 7, 1, 1, 3, 17, false, false, true),
        (45, 130, 7, 1, 3, 9, 261, true, true, true),
        (24, 40, 8, 4, 1, 2, 203, true, false, false),
    ];
    for (idx, &(cin, cout, k, stride, dil, pad, len, snake, accumulate, tanh)) in cases.iter().enumerate() {
        let numerics = if idx % 2 == 0 { Numerics::F16W } else { Numerics::F32 };
        let x = rng.vec(cin * len, 2.0);
        let w = rng.vec(cout * cin * k, 1.0 / ((cin * k) as f32).sqrt());
        let b = rng.vec(cout, 0.1);
        let alpha: Vec<f32> = (0..cin).map(|_| 1.0 + 0.5 * rng.uniform()).collect();
        let cw = Conv1dWeights::upload(&gpu, "w", &w, &b, cout, cin, k, numerics).unwrap();
        let x_gpu = gpu.upload("x", &x);
        let a_gpu = gpu.upload("alpha", &alpha);
        let len_out = conv1d_len(len as u32, k as u32, stride as u32, dil as u32, pad as u32) as usize;
        let y0 = rng.vec(cout * len_out, 1.0);
        let fusion = ConvFusion { snake_alpha: snake.then_some(&a_gpu), accumulate, tanh };
        let got = run_into(&gpu, &y0, |y| dac_conv_coop::conv1d(&gpu, &x_gpu, len as u32, &cw, stride as u32, dil as u32, pad as u32, y, fusion));
        let conv = conv1d_ref(&x, len, &w, &b, cin, cout, k, stride, dil, pad, snake.then_some(&alpha[..]));
        let label = format!("conv1d cin {cin} cout {cout} k {k} s {stride} d {dil} len {len} {} snake {snake} acc {accumulate} tanh {tanh}", numerics.name());
        check(&label, &got, &conv_epilogue(&conv, &y0, accumulate, tanh));
    }
}

/// Ragged ConvTranspose1d shapes at the DAC's strides 8 and 2 (and 3 with a kernel that is no multiple of it).
#[test]
fn dac_coop_conv_transpose1d_matches_cpu_on_ragged_shapes() {
    let Some(gpu) = tensor_core_gpu() else { return };
    let mut rng = Rng::new(43);
    // (cin, cout, k, stride, pad, len, snake, accumulate, tanh)
    let cases = [
        (45, 34, 16, 8, 4, 23, true, false, false),
        (70, 130, 4, 2, 1, 150, true, true, true),
        (31, 100, 7, 3, 2, 41, false, true, false),
    ];
    for (idx, &(cin, cout, k, stride, pad, len, snake, accumulate, tanh)) in cases.iter().enumerate() {
        let numerics = if idx % 2 == 0 { Numerics::F16W } else { Numerics::F32 };
        let x = rng.vec(cin * len, 2.0);
        let w = rng.vec(cin * cout * k, 1.0 / (cin as f32).sqrt());
        let b = rng.vec(cout, 0.1);
        let alpha: Vec<f32> = (0..cin).map(|_| 1.0 + 0.5 * rng.uniform()).collect();
        let cw = ConvTranspose1dWeights::upload(&gpu, "wt", &w, &b, cin, cout, k, stride, numerics).unwrap();
        let x_gpu = gpu.upload("x", &x);
        let a_gpu = gpu.upload("alpha", &alpha);
        let len_out = conv_transpose1d_len(len as u32, k as u32, stride as u32, pad as u32) as usize;
        let y0 = rng.vec(cout * len_out, 1.0);
        let fusion = ConvFusion { snake_alpha: snake.then_some(&a_gpu), accumulate, tanh };
        let got = run_into(&gpu, &y0, |y| dac_conv_coop::conv_transpose1d(&gpu, &x_gpu, len as u32, &cw, pad as u32, y, fusion));
        let conv = conv_transpose1d_ref(&x, len, &w, &b, cin, cout, k, stride, pad, snake.then_some(&alpha[..]));
        let label = format!("convT cin {cin} cout {cout} k {k} s {stride} p {pad} len {len} {} snake {snake} acc {accumulate} tanh {tanh}", numerics.name());
        check(&label, &got, &conv_epilogue(&conv, &y0, accumulate, tanh));
    }
}

/// The real-size 44.1 kHz decoder (random weights, f16w) decodes the same codes to nearly the same PCM with and
/// without tensor cores (both stage in f16; the plain kernel may also sum in f16 on GPUs with shader-f16).
#[test]
fn dac_coop_decoder_matches_the_plain_decoder() {
    use dia_webgpu::config::DacConfig;
    use dia_webgpu::dac::{dac_tensor_specs, DacModelBuilder};
    let Some(gpu) = tensor_core_gpu() else { return };
    let cfg = DacConfig::dac_44khz();
    let mut rng = Rng::new(47);
    let mut b = DacModelBuilder::new(&gpu, &cfg, Numerics::F16W, false).unwrap();
    for spec in dac_tensor_specs(&cfg).into_iter().filter(|s| !s.name.starts_with("encoder.")) {
        let n: usize = spec.shape.iter().product();
        let data: Vec<f32> = if spec.name.ends_with(".alpha") {
            (0..n).map(|_| 1.0 + 0.5 * rng.uniform()).collect()
        } else if spec.weight_norm {
            let fan_in = if spec.name.contains("conv_t") { spec.shape[0] } else { n / spec.shape[0] };
            rng.vec(n, 1.0 / (fan_in as f32).sqrt())
        } else {
            rng.vec(n, 0.1)
        };
        b.accept(&spec.name, &spec.shape, &data).unwrap();
    }
    let mut model = b.finish().unwrap();
    assert!(model.uses_tensor_cores(&gpu));
    // Long enough that the last block's layers (96 channels × ≥ 2^17 samples) take the tensor-core kernel.
    let frames = 300;
    let codes: Vec<u32> = (0..cfg.n_codebooks * frames).map(|_| rng.below(cfg.codebook_size as u64) as u32).collect();
    let coop = model.decode_blocking(&gpu, &codes, frames).unwrap();
    model.set_tensor_cores(false);
    assert!(!model.uses_tensor_cores(&gpu));
    let plain = model.decode_blocking(&gpu, &codes, frames).unwrap();
    assert_eq!(coop.len(), plain.len());
    assert!(coop.iter().all(|v| v.is_finite()));
    let snr = common::snr_db(&coop, &plain);
    println!("decoder, {frames} frames: tensor cores vs plain SNR {snr:.1} dB, rel err {:.2e}", rel_err(&coop, &plain));
    assert!(snr > 30.0, "SNR {snr:.1} dB");
}
