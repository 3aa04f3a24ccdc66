//! The small-M linear kernel's integer-dot arithmetic (`Arith::Int8Dot`: q8 / q4 weights, x quantized to int8 per
//! chunk, `dot4I8Packed`) against the CPU on the weights as stored: every epilogue, the fused RMSNorm or none, M = 1,
//! 2, 3, 8, 16 and 17 (row blocks), K on both x access paths with ragged last groups and chunks, groups of 32 and 64,
//! x of ordinary and large magnitude, chunks of zeros and single outliers; the policy; every variant through naga.
//!
//! Error bound per output. The kernel quantizes h = x·gain (x with the norm's gain, or x) per chunk of C columns
//! (C = 16 for q8, 32 for q4, from column 0) to q·s with s = max|h| / 127 over the chunk, rounding to nearest, so each
//! element is off by ≤ s/2 (plus a few f32 ulps of the scale: the 1.001 factor). The integer dot product is exact;
//! what follows is f32 (a 1e-5·Σ|h·w| margin). So |error| ≤ r·(Σ_chunks 0.5005·s_c·Σ_{k∈c}|w_k| + 1e-5·Σ|h·w|),
//! r = 1/rms with the norm, else 1. SwiGLU carries the gate's and the up projection's bounds through silu(g)·u.
mod common;

use common::{linear_operands, q64, rel_err, test_gpu_without_tensor_cores, LinearCase as Case, Rng};
use dia_webgpu::gpu::{Gpu, KernelVariant};
use dia_webgpu::kernels::linear::{linear_rows, norm_linear, small_m_arith, Arith, LinearEpilogue, SmallMShape, SmallMVariant, SMALL_M_MAX};
use dia_webgpu::kernels::{GpuMatrix, WeightFormat};
use dia_webgpu::quant::{quantize_rows, QuantBits, QuantFormat};

const EPILOGUES: [LinearEpilogue; 3] = [LinearEpilogue::Store, LinearEpilogue::Accumulate, LinearEpilogue::SwiGlu];
const Q8: WeightFormat = WeightFormat::Quant(QuantFormat::Q8);
const Q4: WeightFormat = WeightFormat::Quant(QuantFormat::Q4);
const F32_MARGIN: f64 = 1e-5;
const EPS: f32 = 1e-5;

/// Columns per x chunk (one 16-byte block of weights).
fn chunk(format: WeightFormat) -> usize {
    match format {
        WeightFormat::Quant(q) => 4 * q.per_word() as usize,
        _ => unreachable!(),
    }
}


struct Outcome {
    got: Vec<f32>,
    want: Vec<f64>,
    bound: Vec<f64>,
    /// Per output, Σ|h·w| (what an error of the kernel's own, not of x's rounding, would be measured against).
    scale: Vec<f64>,
}

impl Outcome {
    /// Asserts every output within its bound and returns the worst error / bound. `sharp`: also that no bound
    /// exceeds 5 % of its output's Σ|h·w| (a chunk with a 1000× outlier legitimately rounds its neighbours away).
    fn check(&self, what: &str, sharp: bool) -> f64 {
        assert!(self.got.iter().all(|v| v.is_finite()), "{what}: non-finite output");
        let mut worst = 0.0f64;
        for (i, ((&g, &w), &b)) in self.got.iter().zip(&self.want).zip(&self.bound).enumerate() {
            let off = (g as f64 - w).abs();
            assert!(off <= b, "{what}: y[{i}] = {g}, want {w} ± {b:.3e} (off by {off:.3e})");
            worst = worst.max(off / b);
        }
        // The bound must be sharp enough that a wrong kernel (a nibble or a row out of place) breaks it: well
        // below the outputs' own magnitude.
        let loose = self.bound.iter().zip(&self.scale).map(|(&b, &s)| b / s.max(1e-30)).fold(0.0, f64::max);
        assert!(!sharp || loose < 0.05, "{what}: the bound allows {loose:.3} of Σ|h·w|");
        worst
    }
}

/// Runs `c` through `linear_rows` / `norm_linear` with integer dot products on, returns y with reference and bound.
fn run(gpu: &Gpu, c: &Case, x: &[f32], gain: &[f32], w: &[f32], y0: &[f32]) -> Outcome {
    let Case { format, m, n, k, epilogue, norm } = *c;
    let out_cols = if epilogue == LinearEpilogue::SwiGlu { n / 2 } else { n };
    let (xb, yb) = (gpu.upload("x", x), gpu.upload("y", y0));
    let wm = GpuMatrix::upload(gpu, "w", w, n, k, format).unwrap();
    let ds = if norm {
        let gb = gpu.upload("gain", gain);
        let scratch = gpu.buffer("scratch", (m * k * 4) as u64);
        norm_linear(gpu, &xb, &gb, EPS, &wm, &yb, m as u32, epilogue, &scratch)
    } else {
        linear_rows(gpu, &xb, &wm, &yb, m as u32, epilogue)
    };
    gpu.run(&ds.iter().collect::<Vec<_>>());
    let got = gpu.read_f32_blocking(&yb).unwrap();

    let WeightFormat::Quant(q) = format else { unreachable!() };
    let ws = quantize_rows(w, n, k, q).unwrap().dequantize();
    let cw = chunk(format);
    let mut z = vec![0f64; m * n];
    let mut bz = vec![0f64; m * n];
    let mut sz = vec![0f64; m * n];
    for mi in 0..m {
        let row = &x[mi * k..][..k];
        let h: Vec<f64> = (0..k).map(|i| (row[i] * if norm { gain[i] } else { 1.0 }) as f64).collect();
        let inv = if norm { 1.0 / (row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / k as f64 + EPS as f64).sqrt() } else { 1.0 };
        // Each column's share of the rounding: half its chunk's scale.
        let half_step: Vec<f64> = (0..k).map(|i| {
            let c0 = i / cw * cw;
            let amax = h[c0..(c0 + cw).min(k)].iter().fold(0.0f64, |a, v| a.max(v.abs()));
            0.5005 * amax / 127.0
        }).collect();
        for r in 0..n {
            let wr = &ws[r * k..][..k];
            let dot: f64 = (0..k).map(|i| h[i] * wr[i] as f64).sum();
            let abs: f64 = (0..k).map(|i| (h[i] * wr[i] as f64).abs()).sum();
            let round: f64 = (0..k).map(|i| half_step[i] * (wr[i] as f64).abs()).sum();
            z[mi * n + r] = inv * dot;
            bz[mi * n + r] = inv * (round + F32_MARGIN * abs);
            sz[mi * n + r] = inv * abs;
        }
    }
    let silu = |v: f64| v / (1.0 + (-v).exp());
    match epilogue {
        LinearEpilogue::Store => Outcome { got, want: z, bound: bz, scale: sz },
        LinearEpilogue::Accumulate => {
            let want: Vec<f64> = z.iter().zip(y0).map(|(&v, &y)| v + y as f64).collect();
            let bound = bz.iter().zip(&want).map(|(&b, &v)| b + 1e-6 * v.abs()).collect();
            let scale = sz.iter().zip(y0).map(|(&s, &y)| s + (y as f64).abs()).collect();
            Outcome { got, want, bound, scale }
        }
        LinearEpilogue::SwiGlu => {
            let mut want = vec![0f64; m * out_cols];
            let mut bound = vec![0f64; m * out_cols];
            let mut scale = vec![0f64; m * out_cols];
            for i in 0..m * out_cols {
                let (mi, j) = (i / out_cols, i % out_cols);
                let (g, u) = (z[mi * n + j], z[mi * n + out_cols + j]);
                let (bg, bu) = (bz[mi * n + j], bz[mi * n + out_cols + j]);
                let (sg, su) = (sz[mi * n + j], sz[mi * n + out_cols + j]);
                let v = silu(g) * u;
                want[i] = v;
                bound[i] = 1.1 * u.abs() * bg + silu(g).abs() * bu + 1.1 * bg * bu + 1e-6 * v.abs();
                scale[i] = 1.1 * u.abs() * sg + silu(g).abs() * su + 1.1 * sg * su;
            }
            Outcome { got, want, bound, scale }
        }
    }
}


/// Integer dot products on (so `linear` takes them for quantized weights), on a device without tensor cores so that
/// every M ≤ 16 runs the matrix–vector kernel.
fn i8_gpu() -> Gpu {
    let gpu = test_gpu_without_tensor_cores();
    gpu.set_f16_arithmetic(false);
    gpu.set_int8_dot(true);
    for format in [Q8, Q4] {
        assert_eq!(small_m_arith(&gpu, format), Arith::Int8Dot, "{format:?}: {}", gpu.describe());
    }
    gpu
}

/// Every (epilogue, norm) pair per format, M through 1, 2, 3, 8, 16 and 17 (two row blocks' worth: one block of 16
/// and one of 1), K through both x access paths (K % 4 == 0: 20, 264, 1100 — several rounds; else 3, 95).
#[test]
fn int8_dot_small_m_ragged_within_bound() {
    let gpu = i8_gpu();
    let mut rng = Rng::new(0x18d0);
    let combos: Vec<(LinearEpilogue, bool)> = EPILOGUES.iter().flat_map(|&e| [(e, false), (e, true)]).collect();
    let ms = [1usize, 2, 3, 8, 16, 17];
    let ks = [20usize, 95, 264, 3, 1100];
    for format in [Q8, Q4, q64(QuantBits::Q8), q64(QuantBits::Q4)] {
        let mut worst = 0.0f64;
        for (ci, &(epilogue, norm)) in combos.iter().enumerate() {
            let (m, k) = (ms[ci], ks[ci % ks.len()]);
            let n = if ci % 3 == 0 { 6 } else { 67 };
            let n = if epilogue == LinearEpilogue::SwiGlu { 2 * n } else { n };
            let c = Case { format, m, n, k, epilogue, norm };
            let (x, gain, w, y0) = linear_operands(&mut rng, &c, 1.0);
            worst = worst.max(run(&gpu, &c, &x, &gain, &w, &y0).check(&format!("{format:?} m={m} n={n} k={k} {epilogue:?} norm={norm}"), true));
        }
        println!("{format:?}: {} cases, worst error / bound {worst:.3}", combos.len());
    }
}

/// x of magnitude ~300, a chunk of zeros and a chunk with one outlier 1000× its neighbours in each x row: each chunk
/// keeps its own scale.
#[test]
fn int8_dot_zero_chunks_outliers_and_large_x() {
    let gpu = i8_gpu();
    let mut rng = Rng::new(0x18d1);
    for format in [Q8, Q4] {
        let cw = chunk(format);
        for (m, k, epilogue, norm) in [(2usize, 264usize, LinearEpilogue::Store, false), (3, 95, LinearEpilogue::SwiGlu, true), (2, 2048, LinearEpilogue::Accumulate, true)] {
            let c = Case { format, m, n: 40, k, epilogue, norm };
            let (mut x, gain, w, y0) = linear_operands(&mut rng, &c, 300.0);
            for mi in 0..m {
                x[mi * k..][..cw].fill(0.0);
                x[mi * k + cw + 3] *= 1000.0;
            }
            let ratio = run(&gpu, &c, &x, &gain, &w, &y0).check(&format!("{format:?} m={m} k={k} {epilogue:?} norm={norm}"), false);
            println!("{format:?} m={m} k={k} {epilogue:?} norm={norm}: error / bound {ratio:.3}");
        }
    }
}

/// Exactness where x needs no rounding: x integer in ±127 with 127 in every chunk and weights at q = ±1 steps give
/// the f32 result exactly.
#[test]
fn int8_dot_exact_on_integer_x() {
    let gpu = i8_gpu();
    let mut rng = Rng::new(0x18d2);
    for format in [Q8, Q4] {
        let cw = chunk(format);
        let (m, n, k) = (2usize, 24usize, 256usize);
        let x: Vec<f32> = (0..m * k).map(|i| if i % cw == 0 { 127.0 } else { (rng.uniform() * 127.0).round() }).collect();
        // Rows of ±1 with −8 (q4) / −128 (q8) first in each group of 32, so every group's scale is exactly 1 and
        // every weight a whole q.
        let top = if format == Q4 { -8.0 } else { -128.0 };
        let w: Vec<f32> = (0..n * k).map(|i| if i % 32 == 0 { top } else if rng.uniform() > 0.0 { 1.0 } else { -1.0 }).collect();
        let c = Case { format, m, n, k, epilogue: LinearEpilogue::Store, norm: false };
        let out = run(&gpu, &c, &x, &[], &w, &vec![0.0; m * n]);
        for (i, (&g, &want)) in out.got.iter().zip(&out.want).enumerate() {
            assert_eq!(g as f64, want, "{format:?}: y[{i}]");
        }
    }
}

/// The negative control: with integer dot products off the same operands give f32-exact results; with them on the
/// results differ from those (so the integer path ran) by less than the bound.
#[test]
fn int8_dot_differs_from_f32_arith() {
    let gpu = i8_gpu();
    let mut rng = Rng::new(0x18d3);
    for format in [Q8, Q4] {
        let c = Case { format, m: 2, n: 67, k: 264, epilogue: LinearEpilogue::Store, norm: false };
        let (x, gain, w, y0) = linear_operands(&mut rng, &c, 1.0);
        gpu.set_int8_dot(false);
        assert_eq!(small_m_arith(&gpu, format), Arith::F32);
        let exact = run(&gpu, &c, &x, &gain, &w, &y0);
        gpu.set_int8_dot(true);
        let int8 = run(&gpu, &c, &x, &gain, &w, &y0);
        let e32 = rel_err(&exact.got, &exact.want.iter().map(|&v| v as f32).collect::<Vec<_>>());
        assert!(e32 <= 1e-5, "{format:?}: f32 arithmetic rel err {e32:.3e}");
        let diff = rel_err(&int8.got, &exact.got);
        assert!(diff > 0.0, "{format:?}: integer dot products gave the f32 results bit for bit: not taken");
        int8.check(&format!("{format:?}"), true);
        println!("{format:?}: integer dot products differ from f32 arithmetic by {diff:.2e} (rel)");
    }
}

/// `linear`'s policy: integer dot products for quantized weights only, while on; f32 and f16w weights never.
#[test]
fn int8_dot_policy() {
    let gpu = i8_gpu();
    assert_eq!(small_m_arith(&gpu, WeightFormat::F32), Arith::F32);
    assert_eq!(small_m_arith(&gpu, WeightFormat::F16), Arith::F32);
    assert_eq!(small_m_arith(&gpu, Q4), Arith::Int8Dot);
    gpu.set_int8_dot(false);
    assert_eq!(small_m_arith(&gpu, Q8), Arith::F32);
}

/// Every integer-dot variant parses, validates and translates to SPIR-V on the host (naga, as wgpu does).
#[test]
fn every_int8_dot_variant_translates_on_the_host() {
    use dia_webgpu::naga_check::translate_spirv;
    let mut count = 0;
    for format in [Q8, Q4, q64(QuantBits::Q8), q64(QuantBits::Q4)] {
        for k in [3u32, 20, 95, 2048] {
            for m in 1..=SMALL_M_MAX {
                let shape = SmallMShape::for_format(format, m, 2048, k);
                for epilogue in EPILOGUES {
                    for (norm, blocked) in [(false, false), (true, false), (false, true)] {
                        let v = SmallMVariant::new(format, k, m, epilogue, shape, norm, blocked, Arith::Int8Dot);
                        let src = v.source();
                        assert!(src.contains("dot4I8Packed"), "{v:?}");
                        translate_spirv(&src.replace("fn small_m(", "fn main("), true).unwrap_or_else(|e| panic!("{v:?}: {e}"));
                        count += 1;
                    }
                }
            }
        }
    }
    println!("{count} integer-dot variants translate");
}
