//! The DAC's channels-last decode on tensor cores: `kernels::conv::layout` (pack, conv_mono; plain WGSL,
//! against the CPU on any adapter) and `kernels::conv::coop` (every generated variant through naga on the host;
//! against the CPU on ragged shapes where the device has cooperative matrices, skipped with a message elsewhere).
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::conv_ref::{conv_epilogue, snake};
use common::{rel_err, test_gpu, Rng};
use dia_webgpu::gpu::{Gpu, GpuBuffer};
use dia_webgpu::naga_check;
use dia_webgpu::kernels::conv::layout::{conv_mono, pack, SourceLayout};
use dia_webgpu::kernels::conv::plain::{conv1d_len, conv_transpose1d_len, conv_transpose_phase_weights, Conv1dWeights, ConvTranspose1dWeights};
use dia_webgpu::kernels::conv::coop::{self, tap_major, ClEpilogue, ClShape, EPILOGUE_NAMES};
use dia_webgpu::kernels::{round_f16, GpuMatrix, Numerics};

fn variants() -> Vec<(ClShape, &'static str)> {
    let mut out = Vec::new();
    for shape in ClShape::ALL {
        // Each shape as declared and single-buffered (what the per-call choice falls back to).
        for stages in [shape.stages, 1].into_iter().collect::<std::collections::BTreeSet<_>>() {
            for e in EPILOGUE_NAMES {
                out.push((shape.with_stages(stages), e));
            }
        }
    }
    out
}

#[test]
fn every_channels_last_conv_variant_translates_to_spirv() {
    for (shape, e) in variants() {
        let wgsl = coop::shader_source(shape, e);
        for robust in [false, true] {
            let words = naga_check::translate_spirv(&wgsl, robust).unwrap_or_else(|err| panic!("{} {e} (robust {robust}): {err}\n{wgsl}", shape.name()));
            assert!(words > 1000, "{} {e}: suspiciously small module ({words} words)", shape.name());
        }
        let bytes = naga_check::workgroup_bytes(&wgsl);
        assert_eq!(bytes, shape.workgroup_bytes(), "{} {e}", shape.name());
        // NVIDIA's Vulkan driver allows 48 KiB.
        assert!(bytes <= 48 * 1024, "{} {e}: {bytes} bytes", shape.name());
    }
}

#[test]
fn tap_major_moves_each_weight_to_its_tap_block() {
    // 2 rows, 3 channels, 2 taps: value = 100·row + 10·ci + tap.
    let (cin, taps) = (3, 2);
    let rows: Vec<f32> = (0..2).flat_map(|r| (0..cin).flat_map(move |ci| (0..taps).map(move |t| (100 * r + 10 * ci + t) as f32))).collect();
    let got = tap_major(&rows, cin, taps);
    let want: Vec<f32> = (0..2).flat_map(|r| (0..taps).flat_map(move |t| (0..cin).map(move |ci| (100 * r + 10 * ci + t) as f32))).collect();
    assert_eq!(got, want);
}

/// f32 pairs → u32 (low half = even element), as the kernels store f16 channels-last data.
fn pack_pairs(v: &[f32]) -> Vec<u32> {
    v.chunks(2).map(|p| half::f16::from_f32(p[0]).to_bits() as u32 | (half::f16::from_f32(p[1]).to_bits() as u32) << 16).collect()
}

fn unpack_pairs(v: &[u32]) -> Vec<f32> {
    v.iter().flat_map(|&w| [half::f16::from_bits(w as u16).to_f32(), half::f16::from_bits((w >> 16) as u16).to_f32()]).collect()
}

fn read_u32(gpu: &Gpu, b: &GpuBuffer, n: usize) -> Vec<u32> {
    let mut v = gpu.read_u32_blocking(b).unwrap();
    v.truncate(n);
    v
}

#[test]
fn pack_applies_snake_and_converts_layouts() {
    let gpu = test_gpu();
    let mut rng = Rng::new(5);
    for (channels, len, layout, snake_on) in [(6usize, 37usize, SourceLayout::ChannelsLast, true), (10, 29, SourceLayout::ChannelsFirst, false), (34, 301, SourceLayout::ChannelsFirst, true), (96, 70, SourceLayout::ChannelsLast, false)] {
        let x = rng.vec(channels * len, 3.0);
        let alpha: Vec<f32> = (0..channels).map(|_| 0.5 + rng.uniform()).collect();
        let src = gpu.upload("src", &x);
        let a = gpu.upload("alpha", &alpha);
        let dst = gpu.buffer("dst", (channels * len * 2) as u64);
        gpu.run(&[&pack(&gpu, &src, layout, channels as u32, len as u32, snake_on.then_some(&a), &dst)]);
        let got = unpack_pairs(&read_u32(&gpu, &dst, channels * len / 2));
        let want: Vec<f32> = (0..len)
            .flat_map(|t| (0..channels).map(move |c| (t, c)))
            .map(|(t, c)| {
                let v = match layout {
                    SourceLayout::ChannelsLast => x[t * channels + c],
                    SourceLayout::ChannelsFirst => x[c * len + t],
                } as f64;
                round_f16((if snake_on { snake(v, alpha[c] as f64) } else { v }) as f32)
            })
            .collect();
        let e = rel_err(&got, &want);
        println!("pack {channels}×{len} {layout:?} snake {snake_on}: rel err {e:.2e}");
        // f16 rounding of values computed in f32 on the GPU vs f64 here: at most the odd neighbouring f16.
        assert!(e < 1e-3, "pack {channels}×{len} {layout:?}: rel err {e:.2e}");
    }
}

#[test]
fn conv_mono_matches_cpu() {
    let gpu = test_gpu();
    let mut rng = Rng::new(7);
    for (cin, k, dil, pad, len, numerics) in [(8usize, 7usize, 1usize, 3usize, 53usize, Numerics::F32), (24, 7, 1, 3, 300, Numerics::F16W), (16, 3, 2, 1, 17, Numerics::F16W)] {
        let x: Vec<f32> = rng.vec(cin * len, 1.0).into_iter().map(round_f16).collect();
        let w = rng.vec(cin * k, 1.0 / ((cin * k) as f32).sqrt());
        let b = rng.vec(1, 0.1);
        let cw = Conv1dWeights::upload(&gpu, "w", &w, &b, 1, cin, k, numerics).unwrap();
        let xg = gpu.upload("x", &pack_pairs(&x));
        let len_out = conv1d_len(len as u32, k as u32, 1, dil as u32, pad as u32) as usize;
        let y = gpu.buffer("y", len_out as u64 * 4);
        gpu.run(&[&conv_mono(&gpu, &xg, len as u32, &cw, dil as u32, pad as u32, &y)]);
        let mut got = gpu.read_f32_blocking(&y).unwrap();
        got.truncate(len_out);
        let wq = |i: usize| if numerics == Numerics::F16W { round_f16(w[i]) } else { w[i] } as f64;
        let want: Vec<f32> = (0..len_out)
            .map(|t| {
                let mut s = b[0] as f64;
                for tap in 0..k {
                    let pos = (t + tap * dil) as isize - pad as isize;
                    if pos >= 0 && (pos as usize) < len {
                        for ci in 0..cin {
                            s += wq(ci * k + tap) * x[pos as usize * cin + ci] as f64;
                        }
                    }
                }
                s.clamp(-15.0, 15.0).tanh() as f32
            })
            .collect();
        let e = rel_err(&got, &want);
        println!("conv_mono cin {cin} k {k} dil {dil} len {len} {}: rel err {e:.2e}", numerics.name());
        assert!(e < 1e-5, "conv_mono: rel err {e:.2e}");
    }
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

/// Runs the epilogue `kind` ("store", "acc", "snake16") of one convolution with `conv` (f64 sums without bias)
/// and checks it against the CPU: y0 is the residual for "acc".
#[allow(clippy::too_many_arguments)]
fn check_epilogues(gpu: &Gpu, label: &str, len_out: usize, cout: usize, b: &[f32], conv: &[f64], rng: &mut Rng, run: &dyn Fn(&GpuBuffer, ClEpilogue)) {
    let alpha: Vec<f32> = (0..cout).map(|_| 0.5 + rng.uniform()).collect();
    let a = gpu.upload("alpha", &alpha);
    let biased: Vec<f64> = (0..len_out * cout).map(|i| conv[i] + b[i % cout] as f64).collect();
    for kind in EPILOGUE_NAMES {
        let y0 = rng.vec(len_out * cout, 1.0);
        let (got, want) = match kind {
            "snake16" => {
                let y = gpu.buffer("y16", (len_out * cout * 2) as u64);
                run(&y, ClEpilogue::SnakeHalf(&a));
                let got = unpack_pairs(&read_u32(gpu, &y, len_out * cout / 2));
                let want: Vec<f32> = biased.iter().enumerate().map(|(i, &v)| round_f16(snake(v, alpha[i % cout] as f64) as f32)).collect();
                (got, want)
            }
            _ => {
                let y = gpu.upload("y", &y0);
                let acc = kind.starts_with("acc");
                let y16 = gpu.buffer("y16", (len_out * cout * 2) as u64);
                run(
                    &y,
                    match kind {
                        "store" => ClEpilogue::Store,
                        "acc" => ClEpilogue::Accumulate,
                        "store_pack" => ClEpilogue::StorePacked(&a, &y16),
                        _ => ClEpilogue::AccumulatePacked(&a, &y16),
                    },
                );
                let mut got = gpu.read_f32_blocking(&y).unwrap();
                got.truncate(len_out * cout);
                let want = conv_epilogue(&biased, &y0, acc, false);
                if kind.ends_with("_pack") {
                    // The f16 copy is Snake of the f32 result, as the next convolution reads it.
                    let packed = unpack_pairs(&read_u32(gpu, &y16, len_out * cout / 2));
                    let want16: Vec<f32> = got.iter().enumerate().map(|(i, &v)| round_f16(snake(v as f64, alpha[i % cout] as f64) as f32)).collect();
                    let e = rel_err(&packed, &want16);
                    println!("{label} {kind} (f16 copy): rel err {e:.2e}");
                    assert!(e < 1e-3, "{label} {kind} (f16 copy): rel err {e:.3e}");
                }
                (got, want)
            }
        };
        assert!(got.iter().all(|v| v.is_finite()), "{label} {kind}: non-finite output");
        let e = rel_err(&got, &want);
        println!("{label} {kind}: rel err {e:.2e}");
        // f16 operands with f32 sums against f64 sums of the same f16 values (+ one f16 rounding for snake16).
        assert!(e < 2e-3, "{label} {kind}: rel err {e:.3e}");
    }
}

/// Ragged Conv1d shapes: channels off the 96/128 tiles, lengths off the 64/128-row tiles, dilation 9, a
/// strided convolution, every epilogue and both tile heights.
#[test]
fn channels_last_conv1d_matches_cpu_on_ragged_shapes() {
    let Some(gpu) = tensor_core_gpu() else { return };
    let mut rng = Rng::new(41);
    // (cin, cout, k, stride, dil, pad, len, forced shape)
    let cases = [
        (40, 34, 7, 1, 9, 27, 300, None),
        (96, 96, 7, 1, 3, 9, 1000, Some(ClShape::LARGE96)),
        (24, 200, 1, 1, 1, 0, 129, None),
        (56, 130, 7, 1, 1, 3, 17, Some(ClShape::LARGE)),
        (64, 40, 8, 4, 1, 2, 203, Some(ClShape::LARGE.with_stages(1))),
        (96, 96, 7, 1, 9, 27, 700, Some(ClShape::TALL96)),
        (64, 192, 7, 1, 3, 9, 600, Some(ClShape::WIDE192)),
        (128, 256, 1, 1, 1, 0, 513, Some(ClShape::TALL)),
    ];
    for (cin, cout, k, stride, dil, pad, len, shape) in cases {
        let x: Vec<f32> = rng.vec(len * cin, 2.0).into_iter().map(round_f16).collect();
        let w = rng.vec(cout * cin * k, 1.0 / ((cin * k) as f32).sqrt());
        let b = rng.vec(cout, 0.1);
        let cw = Conv1dWeights::upload(&gpu, "w", &w, &b, cout, cin, k, Numerics::F16W).unwrap();
        let w_cl = GpuMatrix::upload(&gpu, "w_cl", &tap_major(&w, cin, k), cout, k * cin, Numerics::F16W).unwrap();
        let xg = gpu.upload("x", &pack_pairs(&x));
        let len_out = conv1d_len(len as u32, k as u32, stride as u32, dil as u32, pad as u32) as usize;
        let mut conv = vec![0.0f64; len_out * cout];
        for t in 0..len_out {
            for co in 0..cout {
                let mut s = 0.0f64;
                for tap in 0..k {
                    let pos = (t * stride + tap * dil) as isize - pad as isize;
                    if pos >= 0 && (pos as usize) < len {
                        for ci in 0..cin {
                            s += round_f16(w[(co * cin + ci) * k + tap]) as f64 * x[pos as usize * cin + ci] as f64;
                        }
                    }
                }
                conv[t * cout + co] = s;
            }
        }
        let label = format!("conv1d cin {cin} cout {cout} k {k} s {stride} d {dil} len {len} {:?}", shape.map(|s| s.name()));
        let run = |y: &GpuBuffer, e: ClEpilogue| {
            let (l, s, d, p) = (len as u32, stride as u32, dil as u32, pad as u32);
            let disp = match shape {
                Some(sh) => coop::conv1d_shaped(&gpu, &xg, l, &cw, &w_cl, s, d, p, y, e, sh),
                None => coop::conv1d(&gpu, &xg, l, &cw, &w_cl, s, d, p, y, e),
            };
            gpu.run(&[&disp]);
        };
        check_epilogues(&gpu, &label, len_out, cout, &b, &conv, &mut rng, &run);
    }
}

/// Ragged ConvTranspose1d shapes at the DAC's strides 8 and 2, and 3 with a kernel that is no multiple of it.
#[test]
fn channels_last_conv_transpose1d_matches_cpu_on_ragged_shapes() {
    let Some(gpu) = tensor_core_gpu() else { return };
    let mut rng = Rng::new(43);
    // (cin, cout, k, stride, pad, len)
    for (cin, cout, k, stride, pad, len) in [(48, 34, 16, 8, 4, 23), (72, 130, 4, 2, 1, 150), (32, 96, 7, 3, 2, 41)] {
        let x: Vec<f32> = rng.vec(len * cin, 2.0).into_iter().map(round_f16).collect();
        let w = rng.vec(cin * cout * k, 1.0 / (cin as f32).sqrt());
        let b = rng.vec(cout, 0.1);
        let cw = ConvTranspose1dWeights::upload(&gpu, "wt", &w, &b, cin, cout, k, stride, Numerics::F16W).unwrap();
        let taps = k.div_ceil(stride);
        let phased = conv_transpose_phase_weights(&w, cin, cout, k, stride);
        let w_cl = GpuMatrix::upload(&gpu, "wt_cl", &tap_major(&phased, cin, taps), stride * cout, taps * cin, Numerics::F16W).unwrap();
        let xg = gpu.upload("x", &pack_pairs(&x));
        let full_len = (len - 1) * stride + k;
        let mut full = vec![0.0f64; full_len * cout];
        for j in 0..len {
            for ci in 0..cin {
                let v = x[j * cin + ci] as f64;
                for co in 0..cout {
                    for kk in 0..k {
                        full[(j * stride + kk) * cout + co] += round_f16(w[(ci * cout + co) * k + kk]) as f64 * v;
                    }
                }
            }
        }
        let len_out = conv_transpose1d_len(len as u32, k as u32, stride as u32, pad as u32) as usize;
        let conv: Vec<f64> = (0..len_out * cout).map(|i| full[(i / cout + pad) * cout + i % cout]).collect();
        let label = format!("convT cin {cin} cout {cout} k {k} s {stride} p {pad} len {len}");
        let run = |y: &GpuBuffer, e: ClEpilogue| gpu.run(&[&coop::conv_transpose1d(&gpu, &xg, len as u32, &cw, &w_cl, pad as u32, y, e)]);
        check_epilogues(&gpu, &label, len_out, cout, &b, &conv, &mut rng, &run);
    }
}

/// The real-size 44.1 kHz decoder (random weights, f16w) decodes the same codes to nearly the same PCM channels-last
/// on tensor cores and on the plain kernels (both stage in f16; the plain kernel may also sum in f16 on GPUs with
/// shader-f16).
#[test]
fn channels_last_decoder_matches_the_plain_decoder() {
    use dia_webgpu::config::DacConfig;
    let Some(gpu) = tensor_core_gpu() else { return };
    let cfg = DacConfig::dac_44khz();
    let mut rng = Rng::new(47);
    let mut model = dia_webgpu::random::dac_decoder(&gpu, &cfg, Numerics::F16W, &mut rng).unwrap();
    assert!(model.uses_tensor_cores(&gpu));
    // Long enough for the channels-last decode (CHANNELS_LAST_MIN_FRAMES).
    let frames = 300;
    assert!(frames >= dia_webgpu::dac::CHANNELS_LAST_MIN_FRAMES);
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
