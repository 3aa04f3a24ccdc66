//! The small-M linear kernel in f16 arithmetic (`Arith::F16`, what `linear` takes for f16w, q8 and q4 weights on a
//! GPU with shader-f16; lavapipe has shader-f16 and the tests turn the arithmetic on for it) against the CPU on the weights as stored: every epilogue, the fused
//! RMSNorm or none, M = 1, 2, 3, 8, 16, K on every access path (16-byte chunks and the element-wise ones), x of
//! ordinary and of large magnitude, aligned sums at the documented range limit; every variant through naga.
//!
//! Error bound per output (first order in the unit roundoff u = 2^-11 of f16; `shaders/linear.wgsl`, section
//! `half`): each product x·w' reaches the f32 accumulator through at most 10 f16 roundings (x converted to f16, ≤ 8
//! chained FMAs on one lane of the chunk's sum, one pairwise sum of lanes), so |error| ≤ 10u·Σ|x·w| + the
//! underflow floor (a rounding below f16's normal range errs by ≤ 2^-25 in units of x·w', w' = the f16 weight:
//! q·2^-10 for q8, q·2^-6 for q4, w for f16w) + f32 rounding (a 1e-5·Σ|x·w| margin). SwiGLU carries the gate's and
//! the up projection's bounds through silu(g)·u (|silu'| ≤ 1.1).
mod common;

use common::{linear_operands, q64, rel_err, test_gpu_without_tensor_cores, LinearCase as Case, Rng};
use dia_webgpu::gpu::{Gpu, KernelVariant};
use dia_webgpu::kernels::linear::{linear, norm_linear, small_m_arith, Arith, LinearEpilogue, SmallMShape, SmallMVariant, SMALL_M_MAX};
use dia_webgpu::kernels::{round_f16, GpuMatrix, WeightFormat};
use dia_webgpu::quant::{quantize_rows, QuantBits, QuantFormat};

const EPILOGUES: [LinearEpilogue; 3] = [LinearEpilogue::Store, LinearEpilogue::Accumulate, LinearEpilogue::SwiGlu];
const F16W: WeightFormat = WeightFormat::F16;
const Q8: WeightFormat = WeightFormat::Quant(QuantFormat::Q8);
const Q4: WeightFormat = WeightFormat::Quant(QuantFormat::Q4);
const FORMATS: [WeightFormat; 3] = [F16W, Q8, Q4];

/// f16's unit roundoff.
const U: f64 = 1.0 / 2048.0;
/// Roundings per product on its way to the accumulator (see the file's comment).
const GAMMA: f64 = 10.0 * U;
/// Error of one rounding below f16's normal range, in units of x·w'.
const FLOOR: f64 = 1.0 / (1u64 << 25) as f64;
/// The f32 part (chunk sums into the accumulator, lanes across threads, the norm's factor, the epilogue).
const F32_MARGIN: f64 = 1e-5;
const EPS: f32 = 1e-5;

/// The matrix as the kernel multiplies it (f16-rounded or dequantized), and per row the factor from x·w' units to
/// x·W units (1 for f16w; the row's largest group scale times 2^10 or 2^6 for q8 / q4).
fn stored(w: &[f32], n: usize, k: usize, format: WeightFormat) -> (Vec<f32>, Vec<f64>) {
    match format {
        WeightFormat::F16 => (w.iter().map(|&v| round_f16(v)).collect(), vec![1.0; n]),
        WeightFormat::Quant(q) => {
            let rows = quantize_rows(w, n, k, q).unwrap();
            let back = 8.0 * q.half_range() as f64;
            let groups = q.groups(k as u32) as usize;
            let factor = (0..n).map(|r| (0..groups).map(|g| rows.scale(r, g).abs() as f64).fold(0.0, f64::max) * back).collect();
            (rows.dequantize(), factor)
        }
        WeightFormat::F32 => panic!("f32 weights never take f16 arithmetic"),
    }
}


/// What one case gave: the GPU's y, the reference, the bound per output.
struct Outcome {
    got: Vec<f32>,
    want: Vec<f64>,
    bound: Vec<f64>,
}

impl Outcome {
    /// The largest |got − want| / bound (≤ 1 passes).
    fn worst_ratio(&self) -> f64 {
        self.got.iter().zip(&self.want).zip(&self.bound).map(|((&g, &w), &b)| (g as f64 - w).abs() / b).fold(0.0, f64::max)
    }

    fn check(&self, what: &str) -> f64 {
        assert!(self.got.iter().all(|v| v.is_finite()), "{what}: non-finite output");
        for (i, ((&g, &w), &b)) in self.got.iter().zip(&self.want).zip(&self.bound).enumerate() {
            assert!((g as f64 - w).abs() <= b, "{what}: y[{i}] = {g}, want {w} ± {b:.3e} (off by {:.3e})", (g as f64 - w).abs());
        }
        self.worst_ratio()
    }

    fn rel_err(&self) -> f64 {
        rel_err(&self.got, &self.want.iter().map(|&v| v as f32).collect::<Vec<_>>())
    }
}

/// Runs `c` on x, gain (with `norm`), W and y0 through `linear` / `norm_linear` and returns y with its reference and
/// bound.
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
        vec![linear(gpu, &xb, &wm, &yb, m as u32, epilogue)]
    };
    assert_eq!(ds.len(), 1, "one small-M dispatch");
    gpu.run(&ds.iter().collect::<Vec<_>>());
    let got = gpu.read_f32_blocking(&yb).unwrap();

    let (ws, factor) = stored(w, n, k, format);
    // Per x row: the operand the kernel converts to f16 (x, or x·gain with the norm) and the f32 factor after the sum.
    let mut z = vec![0f64; m * n];
    let mut bz = vec![0f64; m * n];
    for mi in 0..m {
        let row = &x[mi * k..][..k];
        let h: Vec<f64> = (0..k).map(|i| row[i] as f64 * if norm { gain[i] as f64 } else { 1.0 }).collect();
        let inv = if norm { 1.0 / (row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / k as f64 + EPS as f64).sqrt() } else { 1.0 };
        for r in 0..n {
            let wr = &ws[r * k..][..k];
            let dot: f64 = (0..k).map(|i| h[i] * wr[i] as f64).sum();
            let abs: f64 = (0..k).map(|i| (h[i] * wr[i] as f64).abs()).sum();
            z[mi * n + r] = inv * dot;
            bz[mi * n + r] = inv * ((GAMMA + F32_MARGIN) * abs + 10.0 * k as f64 * FLOOR * factor[r]);
        }
    }
    let silu = |v: f64| v / (1.0 + (-v).exp());
    let (want, bound): (Vec<f64>, Vec<f64>) = match epilogue {
        LinearEpilogue::Store => (z, bz),
        LinearEpilogue::Accumulate => {
            let want: Vec<f64> = z.iter().zip(y0).map(|(&v, &y)| v + y as f64).collect();
            let bound = bz.iter().zip(&want).map(|(&b, &v)| b + 1e-6 * v.abs()).collect();
            (want, bound)
        }
        LinearEpilogue::SwiGlu => (0..m * out_cols)
            .map(|i| {
                let (mi, j) = (i / out_cols, i % out_cols);
                let (g, u) = (z[mi * n + j], z[mi * n + out_cols + j]);
                let (bg, bu) = (bz[mi * n + j], bz[mi * n + out_cols + j]);
                let v = silu(g) * u;
                (v, 1.1 * u.abs() * bg + silu(g).abs() * bu + 1.1 * bg * bu + 1e-6 * v.abs())
            })
            .unzip(),
    };
    Outcome { got, want, bound }
}


/// The device offers shader-f16 and `linear` takes f16 arithmetic for these weights (else nothing here tests it);
/// on by default on GPUs only, so turned on here. Without tensor cores, so that `linear` takes the matrix–vector
/// kernel at every M ≤ 16 (on an H100 it sent M ≥ `COOP_M_MIN` to the tensor cores, which have no f16-arithmetic
/// variant to test).
fn f16_gpu() -> Gpu {
    let gpu = test_gpu_without_tensor_cores();
    gpu.set_f16_arithmetic(true);
    for format in FORMATS {
        assert_eq!(small_m_arith(&gpu, format), Arith::F16, "{format:?}: the test adapter must offer shader-f16 ({})", gpu.describe());
    }
    gpu
}

/// K per access path: f16w 16-byte chunks (K % 8 == 0: 16, 264, 2056 = 257 chunks, more than a round of threads)
/// and pairs (95, 3); quantized 16-byte x loads (K % 4 == 0: 20, 264 — ragged last group and chunk) and element
/// loads (3, 95).
fn ks(format: WeightFormat) -> &'static [usize] {
    match format {
        WeightFormat::F16 => &[16, 95, 264, 3],
        _ => &[20, 95, 264, 3],
    }
}

/// Per format every (epilogue, norm) pair, M cycling through 1, 2, 3, 8, 16 and K through the four access paths
/// (lavapipe compiles a quantized f16 pipeline in 15–130 s, so each case is one pipeline and the set stays small).
#[test]
fn f16_arith_small_m_ragged_within_bound() {
    let gpu = f16_gpu();
    let mut rng = Rng::new(0xf16a);
    let combos: Vec<(LinearEpilogue, bool)> = EPILOGUES.iter().flat_map(|&e| [(e, false), (e, true)]).collect();
    let ms = [1usize, 2, 3, 8, 16, 2];
    for format in FORMATS {
        let (mut worst, mut worst_rel) = (0.0f64, 0.0f64);
        for (ci, &(epilogue, norm)) in combos.iter().enumerate() {
            let m = ms[ci];
            let k = ks(format)[ci % 4];
            // Rows under one workgroup's, or over several workgroups with a ragged end.
            let n = if ci % 3 == 0 { 6 } else { 67 };
            let n = if epilogue == LinearEpilogue::SwiGlu { 2 * n } else { n };
            let c = Case { format, m, n, k, epilogue, norm };
            let (x, gain, w, y0) = linear_operands(&mut rng, &c, 1.0);
            let out = run(&gpu, &c, &x, &gain, &w, &y0);
            worst = worst.max(out.check(&format!("{format:?} m={m} n={n} k={k} {epilogue:?} norm={norm}")));
            worst_rel = worst_rel.max(out.rel_err());
        }
        println!("{format:?}: {} cases, worst error / bound {worst:.3}, worst max-norm rel err {worst_rel:.3e}", combos.len());
    }
}

/// M beyond a round's worth of chunks per thread (K = 2056 f16w / 1100 quantized: the unrolled chunks of the last
/// round are masked on most threads) and groups of 64.
#[test]
fn f16_arith_long_rows_and_groups_of_64() {
    let gpu = f16_gpu();
    let mut rng = Rng::new(0xf16b);
    let cases = [
        (F16W, 2056, 1, LinearEpilogue::Accumulate, false),
        (F16W, 2055, 5, LinearEpilogue::SwiGlu, true),
        (Q8, 1100, 1, LinearEpilogue::SwiGlu, true),
        (Q4, 1100, 5, LinearEpilogue::Accumulate, false),
        (q64(QuantBits::Q8), 264, 2, LinearEpilogue::Accumulate, true),
        (q64(QuantBits::Q4), 100, 1, LinearEpilogue::SwiGlu, false),
    ];
    for (format, k, m, epilogue, norm) in cases {
        let c = Case { format, m, n: 14, k, epilogue, norm };
        let (x, gain, w, y0) = linear_operands(&mut rng, &c, 1.0);
        let ratio = run(&gpu, &c, &x, &gain, &w, &y0).check(&format!("{format:?} m={m} k={k} {epilogue:?} norm={norm}"));
        println!("{format:?} m={m} k={k} {epilogue:?} norm={norm}: error / bound {ratio:.3}");
    }
}

/// x of magnitude ~300 (×2 gain with the norm: the un-normalized residual stream): no overflow, within the bound.
#[test]
fn f16_arith_large_x_within_bound() {
    let gpu = f16_gpu();
    let mut rng = Rng::new(0xf16c);
    for format in FORMATS {
        let mut worst = 0.0f64;
        // M = 16 for f16w only: lavapipe takes minutes over a quantized f16 pipeline at M = 16 (the sweep has one).
        let mut cases = vec![(2usize, 264usize, LinearEpilogue::Store, false), (3, 95, LinearEpilogue::SwiGlu, true)];
        if format == F16W {
            cases.push((16, 95, LinearEpilogue::Store, true));
        }
        for (m, k, epilogue, norm) in cases {
            let c = Case { format, m, n: 40, k, epilogue, norm };
            let (x, gain, w, y0) = linear_operands(&mut rng, &c, 300.0);
            worst = worst.max(run(&gpu, &c, &x, &gain, &w, &y0).check(&format!("{format:?} m={m} k={k} {epilogue:?} norm={norm}")));
        }
        println!("{format:?}, |x| ≤ 300: worst error / bound {worst:.3}");
    }
}

/// Every product of a sum at its largest and of one sign, at the documented range limits (`Arith::F16`): x = 32000
/// against q8 weights all at q = −128 (w' = −1/8), x = 16000 against q4 at q = −8, x = 2000 against f16w weights −1
/// (≤ 32 products per f16 sum). Each f16 sum then reaches 64000 (f16's largest finite value is 65504): the results
/// are finite and exact.
#[test]
fn f16_arith_sums_at_the_range_limit() {
    let gpu = f16_gpu();
    for (format, xv) in [(Q8, 32000.0f32), (Q4, 16000.0), (F16W, 2000.0)] {
        // f16w: 32 products per f16 sum at M ≤ 2 (4 chunks a round), 8 at M = 16.
        let ms: &[usize] = if format == F16W { &[2, 16] } else { &[2] };
        for &m in ms {
            let (n, k) = (8usize, 2048usize);
            let x = vec![xv; m * k];
            let w = vec![-1.0f32; n * k];
            let c = Case { format, m, n, k, epilogue: LinearEpilogue::Store, norm: false };
            let out = run(&gpu, &c, &x, &[], &w, &vec![0.0; m * n]);
            let want = -(k as f64) * xv as f64;
            assert!(out.got.iter().all(|&v| v as f64 == want), "{format:?} m={m}: got {:?}, want {want}", &out.got[..4]);
        }
    }
}

/// The negative control: with f16 arithmetic turned off the same operands give f32-exact results, and with it on
/// they differ from those (so the f16 path ran) by less than the bound.
#[test]
fn f16_arith_differs_from_f32_arith() {
    let gpu = f16_gpu();
    let mut rng = Rng::new(0xf16d);
    for format in FORMATS {
        for (m, k, norm) in [(2usize, 264usize, false)] {
            let c = Case { format, m, n: 67, k, epilogue: LinearEpilogue::Store, norm };
            let (x, gain, w, y0) = linear_operands(&mut rng, &c, 1.0);
            gpu.set_f16_arithmetic(false);
            assert_eq!(small_m_arith(&gpu, format), Arith::F32);
            let exact = run(&gpu, &c, &x, &gain, &w, &y0);
            gpu.set_f16_arithmetic(true);
            let half = run(&gpu, &c, &x, &gain, &w, &y0);
            let (e32, e16) = (exact.rel_err(), half.rel_err());
            assert!(e32 <= 1e-5, "{format:?} m={m}: f32 arithmetic rel err {e32:.3e}");
            let diff = rel_err(&half.got, &exact.got);
            assert!(diff > 0.0, "{format:?} m={m}: f16 arithmetic gave the f32 results bit for bit: not taken");
            half.check(&format!("{format:?} m={m}"));
            println!("{format:?} m={m} k={k} norm={norm}: rel err f32 arith {e32:.2e}, f16 arith {e16:.2e}");
        }
    }
}

/// `linear`'s policy: f32 weights always multiply in f32; f16 and quantized weights in f16 while allowed.
#[test]
fn f16_arith_policy() {
    let gpu = f16_gpu();
    assert_eq!(small_m_arith(&gpu, WeightFormat::F32), Arith::F32);
    gpu.set_f16_arithmetic(false);
    for format in [WeightFormat::F32, F16W, Q8, Q4] {
        assert_eq!(small_m_arith(&gpu, format), Arith::F32, "{format:?}");
    }
    gpu.set_f16_arithmetic(true);
    assert_eq!(small_m_arith(&gpu, Q4), Arith::F16);
}

/// Every f16-arithmetic variant parses, validates and translates to SPIR-V on the host (naga, as wgpu does), opens with
/// `enable f16;`; the f32-arithmetic variants carry no f16.
#[test]
fn every_f16_variant_validates_on_the_host() {
    use dia_webgpu::naga_check::translate_spirv;
    use wgpu::naga;
    let mut count = 0;
    for format in [F16W, Q8, Q4, q64(QuantBits::Q8), q64(QuantBits::Q4), WeightFormat::F32] {
        for k in [3u32, 20, 95, 2048] {
            for m in 1..=SMALL_M_MAX {
                let shape = SmallMShape::for_format(format, m, 2048, k);
                for epilogue in EPILOGUES {
                    for (norm, blocked) in [(false, false), (true, false), (false, true)] {
                        let arith = if format == WeightFormat::F32 { Arith::F32 } else { Arith::F16 };
                        let v = SmallMVariant::new(format, k, m, epilogue, shape, norm, blocked, arith);
                        let src = v.source();
                        if arith == Arith::F16 {
                            assert!(src.starts_with("enable f16;\n"), "{v:?}");
                            let module = naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| panic!("{v:?}: {}", e.emit_to_string(&src)));
                            let caps = naga::valid::Capabilities::SHADER_FLOAT16 | naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32;
                            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
                                .validate(&module)
                                .unwrap_or_else(|e| panic!("{v:?}: {}", e.emit_to_string(&src)));
                            if m <= 3 || m == SMALL_M_MAX {
                                translate_spirv(&src.replace("fn small_m(", "fn main("), true).unwrap_or_else(|e| panic!("{v:?}: {e}"));
                            }
                        } else {
                            assert!(!src.contains("f16;") && !src.contains("vec4<f16>"), "{v:?} uses f16");
                        }
                        count += 1;
                    }
                }
            }
        }
    }
    println!("{count} variants checked");
}
