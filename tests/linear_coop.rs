//! The tensor-core linear (`kernels::linear::coop`), f16 and quantized weights: every generated variant through
//! naga's WGSL → SPIR-V translation on the host (no GPU); where the device has tensor cores, every shape, format
//! and epilogue against the CPU on ragged sizes. And the decoder's row counts (M = 1, 2, 3, 8, 16, 17) against the
//! CPU on every path `linear_rows` / `norm_linear` can take there: the matrix–vector kernel on any adapter, the
//! tensor cores where they exist.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::{cpu_linear, cpu_rmsnorm, q64, rel_err, run_linear, stored_weights, test_gpu, Rng};
use dia_webgpu::gpu::{Dispatch, Gpu, GpuBuffer, KernelVariant};
use dia_webgpu::kernels::linear::{
    linear_coop, linear_coop_shaped, linear_rows, linear_small_m, norm_linear, schedule, CoopAccess, CoopShape, CoopVariant, LinearEpilogue, Schedule,
    coop_m_min, SMALL_M_MAX,
};
use dia_webgpu::kernels::{round_f16, GpuMatrix, WeightFormat};
use dia_webgpu::quant::{QuantBits, QuantFormat};
use dia_webgpu::naga_check;

const EPILOGUES: [LinearEpilogue; 3] = [LinearEpilogue::Store, LinearEpilogue::Accumulate, LinearEpilogue::SwiGlu];
const ACCESSES: [CoopAccess; 2] = [CoopAccess::Vec, CoopAccess::Scalar];
/// Against a CPU product of the same f16-rounded operands only the f32 summation order differs.
const TOL: f64 = 1e-4;
const Q8: WeightFormat = WeightFormat::Quant(QuantFormat::Q8);
const Q4: WeightFormat = WeightFormat::Quant(QuantFormat::Q4);
/// The decoder's row counts (2 per text with CFG; 17 is one past the matrix–vector kernel).
const DECODER_MS: [usize; 6] = [1, 2, 3, 8, 16, 17];

/// Every format the tensor-core kernel serves.
fn coop_formats() -> [WeightFormat; 5] {
    [WeightFormat::F16, Q8, Q4, q64(QuantBits::Q8), q64(QuantBits::Q4)]
}

/// Every shape of both lists (encoder and small M), single- and double-buffered.
fn shapes() -> Vec<CoopShape> {
    CoopShape::ALL.iter().chain(CoopShape::SMALL_M.iter()).flat_map(|s| [s.with_stages(1), s.with_stages(2)]).collect()
}

/// Every (format, shape, stages, epilogue, access) parses, validates (cooperative ops in uniform control flow)
/// and becomes SPIR-V under both of wgpu's storage bounds-check policies — notably without naga 30's
/// uncached-expression panic on `coopStoreT`.
#[test]
fn every_coop_linear_variant_translates_on_the_host() {
    let mut count = 0;
    for format in coop_formats() {
        for shape in shapes() {
            for epilogue in EPILOGUES.into_iter().filter(|&e| shape.supports(e)) {
                for access in ACCESSES {
                    let wgsl = CoopVariant { format, access, epilogue, shape }.source();
                    for robust in [false, true] {
                        let words = naga_check::translate_spirv(&wgsl, robust)
                            .unwrap_or_else(|e| panic!("{format:?} {shape:?} {epilogue:?} {access:?} (robust {robust}): {e}"));
                        assert!(words > 1000, "{shape:?}: suspiciously small module ({words} words)");
                        count += 1;
                    }
                }
            }
        }
    }
    println!("{count} tensor-core translations");
}

/// The small-M shapes split K between subgroups; SwiGLU pairs two column blocks, so a one-block shape refuses it.
#[test]
fn coop_shapes_fit_and_small_m_shapes_say_what_they_serve() {
    for shape in shapes() {
        assert!(shape.fits(), "{shape:?}");
    }
    for shape in CoopShape::SMALL_M {
        assert_eq!(shape.tm(), 16, "{shape:?}: one 16-row tile for M ≤ 16");
        assert!(shape.sub_k > 1, "{shape:?}");
    }
    assert!(!CoopShape::ROWS16_N16.supports(LinearEpilogue::SwiGlu));
    assert!(CoopShape::ROWS16_N16.supports(LinearEpilogue::Accumulate));
    // Uneven passes or a subgroup count other than 8 are refused.
    assert!(!CoopShape { sub_m: 1, sub_n: 2, sub_k: 2, frag_m: 1, frag_n: 1, stages: 2 }.fits());
    assert!(!CoopShape { sub_m: 1, sub_n: 2, sub_k: 4, frag_m: 1, frag_n: 1, stages: 3 }.fits());
}

/// `CoopShape::workgroup_bytes` (what the shape choice checks against the device limit) is what the shader declares.
#[test]
fn coop_workgroup_memory_is_what_the_shape_says() {
    for shape in shapes() {
        for format in [WeightFormat::F16, Q4] {
            let wgsl = CoopVariant { format, access: CoopAccess::Vec, epilogue: LinearEpilogue::Store, shape }.source();
            let bytes = naga_check::workgroup_bytes(&wgsl);
            assert_eq!(bytes, shape.workgroup_bytes(), "{shape:?} {format:?}");
        }
    }
}

/// The format is part of the variant: the pipeline cache never hands an f16 kernel to quantized weights.
#[test]
fn coop_variants_differ_by_format() {
    let v = |format| CoopVariant { format, access: CoopAccess::Vec, epilogue: LinearEpilogue::Store, shape: CoopShape::SMALL };
    let sources: Vec<String> = coop_formats().into_iter().map(|f| v(f).source()).collect();
    for i in 0..sources.len() {
        for j in 0..i {
            assert_ne!(sources[i], sources[j], "formats {i} and {j} give the same kernel");
        }
    }
    assert_eq!(CoopAccess::new(Q8, 20), CoopAccess::Vec, "quantized weights need only x's 4-column loads");
    assert_eq!(CoopAccess::new(WeightFormat::F16, 20), CoopAccess::Scalar);
}

fn tensor_core_gpu(test: &str) -> Option<Gpu> {
    let gpu = test_gpu();
    if gpu.tensor_cores() {
        Some(gpu)
    } else {
        println!("{test}: skipped, {} has no tensor cores (cooperative matrices)", gpu.describe());
        None
    }
}

type Run<'a> = &'a dyn Fn(&Gpu, &GpuBuffer, &GpuMatrix, &GpuBuffer) -> Vec<Dispatch>;

/// One product on the GPU through `run` against the CPU on W as stored, and (`f16_staged`: the tensor-core path)
/// x and W rounded to f16 as the kernel stages them. Weight rows of different magnitudes, so quantized groups get
/// different scales. Returns the relative error.
#[allow(clippy::too_many_arguments)]
fn check(gpu: &Gpu, rng: &mut Rng, m: usize, n: usize, k: usize, epilogue: LinearEpilogue, format: WeightFormat, f16_staged: bool, run: Run<'_>) -> f64 {
    let x = rng.vec(m * k, 1.0);
    let w: Vec<f32> = (0..n * k).map(|i| rng.uniform() * (1 + (i / k) % 5) as f32 / (k as f32).sqrt()).collect();
    let out_cols = if epilogue == LinearEpilogue::SwiGlu { n / 2 } else { n };
    let y0 = rng.vec(m * out_cols, 1.0);
    let got = run_linear(gpu, &x, &w, &y0, n, k, format, |xg, wg, yg| run(gpu, xg, wg, yg));
    let mut ws = stored_weights(&w, n, k, format);
    let mut xs = x;
    if f16_staged {
        ws.iter_mut().for_each(|v| *v = round_f16(*v));
        xs.iter_mut().for_each(|v| *v = round_f16(*v));
    }
    rel_err(&got, &cpu_linear(&xs, &ws, &y0, m, n, k, epilogue))
}

/// Every shape the device can hold, every epilogue it supports, both access paths (K = 37 reads element-wise), on
/// sizes that are no multiple of the tiles: M = 1, 17, 101, 130; N = 78, 202; K = 37, 40, 1000.
#[test]
fn coop_linear_matches_cpu_on_ragged_shapes() {
    let Some(gpu) = tensor_core_gpu("coop_linear_matches_cpu_on_ragged_shapes") else { return };
    let limit = gpu.limits.max_compute_workgroup_storage_size;
    let mut rng = Rng::new(41);
    let mut worst = 0.0f64;
    for shape in shapes().into_iter().filter(|s| s.workgroup_bytes() <= limit) {
        for epilogue in EPILOGUES.into_iter().filter(|&e| shape.supports(e)) {
            for (m, n, k) in [(1, 78, 40), (17, 202, 1000), (101, 78, 37), (130, 202, 40), (130, 78, 1000), (17, 78, 37)] {
                let err = check(&gpu, &mut rng, m, n, k, epilogue, WeightFormat::F16, true, &|gpu, x, w, y| {
                    vec![linear_coop_shaped(gpu, x, w, y, m as u32, epilogue, shape)]
                });
                assert!(err < TOL, "{shape:?} {epilogue:?} m {m} n {n} k {k}: rel err {err:.2e}");
                worst = worst.max(err);
            }
        }
    }
    println!("coop linear f16: worst rel err {worst:.2e} against the CPU on f16-rounded operands");
}

/// Quantized weights (q8, q4; groups of 32 and 64) dequantized into the staged tile, every shape and epilogue, on
/// ragged sizes: K = 20 and 100 end in a short group (and for the small-M shapes' 128- and 256-column stages, far
/// inside one stage), K = 37 reads x element-wise, K = 1000 spans many groups; N and M off the tiles.
#[test]
fn coop_quant_linear_matches_cpu_on_ragged_shapes() {
    let Some(gpu) = tensor_core_gpu("coop_quant_linear_matches_cpu_on_ragged_shapes") else { return };
    let limit = gpu.limits.max_compute_workgroup_storage_size;
    let mut rng = Rng::new(47);
    for format in [Q8, Q4, q64(QuantBits::Q8), q64(QuantBits::Q4)] {
        let mut worst = 0.0f64;
        for shape in shapes().into_iter().filter(|s| s.workgroup_bytes() <= limit) {
            for epilogue in EPILOGUES.into_iter().filter(|&e| shape.supports(e)) {
                for (m, n, k) in [(1, 78, 20), (17, 202, 1000), (101, 78, 37), (130, 202, 100), (16, 66, 264)] {
                    let err = check(&gpu, &mut rng, m, n, k, epilogue, format, true, &|gpu, x, w, y| {
                        vec![linear_coop_shaped(gpu, x, w, y, m as u32, epilogue, shape)]
                    });
                    assert!(err < TOL, "{format:?} {shape:?} {epilogue:?} m {m} n {n} k {k}: rel err {err:.2e}");
                    worst = worst.max(err);
                }
            }
        }
        println!("coop linear {format:?}: worst rel err {worst:.2e} against the CPU on f16-rounded operands");
    }
}

/// `linear_rows` (the encoder's, the prefill's and the decoder step's entry) takes the tensor-core path from
/// `coop_m_min` rows on (16 quantized, 17 f16), with f16 and quantized weights, and gives the same products.
#[test]
fn linear_rows_routes_to_tensor_cores_from_coop_m_min() {
    let Some(gpu) = tensor_core_gpu("linear_rows_routes_to_tensor_cores_from_coop_m_min") else { return };
    let mut rng = Rng::new(43);
    for format in [WeightFormat::F16, Q8, Q4] {
        for epilogue in EPILOGUES {
            for m in [coop_m_min(format) as usize, 17, 101] {
                let err = check(&gpu, &mut rng, m, 202, 1000, epilogue, format, true, &|gpu, x, w, y| {
                    assert_eq!(schedule(gpu, x, w, y, m as u32, epilogue), Schedule::TensorCores);
                    let ds = linear_rows(gpu, x, w, y, m as u32, epilogue);
                    assert_eq!(ds.len(), 1, "one tensor-core dispatch");
                    ds
                });
                assert!(err < TOL, "{format:?} {epilogue:?} m {m}: rel err {err:.2e}");
            }
        }
    }
}

/// The decoder's row counts on every weight format and epilogue, against the CPU: `linear_rows` (whatever the
/// policy picks on this device: the matrix–vector kernel, its row blocks at 17, or the tensor cores from
/// `coop_m_min` where they exist), the matrix–vector kernel forced (M ≤ 16), and the tensor cores forced where
/// they exist. N = 70 (35 SwiGLU outputs), K = 100: a short last group, and f16 pairs rather than 16-byte loads.
#[test]
fn decoder_rows_match_cpu_on_every_path() {
    let gpu = test_gpu();
    let tensor_cores = gpu.tensor_cores();
    let mut rng = Rng::new(53);
    let (n, k) = (70, 100);
    let mut worst = 0.0f64;
    for format in [WeightFormat::F32, WeightFormat::F16, Q8, Q4] {
        for m in DECODER_MS {
            for epilogue in EPILOGUES {
                let mu = m as u32;
                // The policy's choice; the reference rounds x to f16 only where it is the tensor cores.
                let probe_x = gpu.buffer("probe_x", (m * k * 4) as u64);
                let probe_w = GpuMatrix::empty(&gpu, "probe_w", n, k, format).unwrap();
                let probe_y = gpu.buffer("probe_y", (m * n * 4) as u64);
                let picked = schedule(&gpu, &probe_x, &probe_w, &probe_y, mu, epilogue);
                let coop_expected = tensor_cores && format != WeightFormat::F32 && mu >= coop_m_min(format);
                assert_eq!(picked == Schedule::TensorCores, coop_expected, "{format:?} m {m}: {picked:?}");
                let rows = |g: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer| linear_rows(g, x, w, y, mu, epilogue);
                let small_m = |g: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer| vec![linear_small_m(g, x, w, y, mu, epilogue)];
                let coop = |g: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer| vec![linear_coop(g, x, w, y, mu, epilogue)];
                let mut paths: Vec<(&str, bool, Run<'_>)> = vec![("linear_rows", coop_expected, &rows)];
                if mu <= SMALL_M_MAX {
                    paths.push(("small_m", false, &small_m));
                }
                if tensor_cores && format != WeightFormat::F32 {
                    paths.push(("coop", true, &coop));
                }
                for (name, f16_staged, run) in paths {
                    let err = check(&gpu, &mut rng, m, n, k, epilogue, format, f16_staged, run);
                    let tol = if f16_staged { TOL } else { 1e-5 };
                    assert!(err < tol, "{name} {format:?} {epilogue:?} m {m}: rel err {err:.2e}");
                    worst = worst.max(err);
                }
            }
        }
    }
    println!("decoder rows: worst rel err {worst:.2e} ({})", if tensor_cores { "with tensor cores" } else { "matrix–vector only" });
}

/// `norm_linear` at the decoder's row counts: one fused matrix–vector dispatch where the policy picks that kernel,
/// else the RMSNorm then the tensor cores (or, at 17 rows, the row blocks). The reference normalizes in f64; on
/// the tensor-core path x is rounded to f16 after the GPU's f32 norm, so an element may round the other way
/// (one f16 step): a looser bound there.
#[test]
fn decoder_norm_linear_matches_cpu() {
    let gpu = test_gpu();
    let tensor_cores = gpu.tensor_cores();
    let mut rng = Rng::new(59);
    let (n, k, eps) = (70usize, 100usize, 1e-5f32);
    for format in [WeightFormat::F16, Q8, Q4] {
        for m in DECODER_MS {
            for epilogue in [LinearEpilogue::Store, LinearEpilogue::SwiGlu] {
                let out_cols = if epilogue == LinearEpilogue::SwiGlu { n / 2 } else { n };
                let x: Vec<f32> = (0..m * k).map(|i| rng.uniform() * (1 + i / k) as f32 * 0.8).collect();
                let gain = rng.vec(k, 2.0);
                let w = rng.vec(n * k, 1.0);
                let y0 = rng.vec(m * out_cols, 1.0);
                let (xb, gb, yb) = (gpu.upload("x", &x), gpu.upload("gain", &gain), gpu.upload("y", &y0));
                let wm = GpuMatrix::upload(&gpu, "w", &w, n, k, format).unwrap();
                let scratch = gpu.buffer("scratch", (m * k * 4) as u64);
                let coop = tensor_cores && m as u32 >= coop_m_min(format);
                let fused = !coop && m as u32 <= SMALL_M_MAX;
                let ds = norm_linear(&gpu, &xb, &gb, eps, &wm, &yb, m as u32, epilogue, &scratch);
                assert_eq!(ds.len() == 1, fused, "{format:?} m {m}: {} dispatches", ds.len());
                gpu.run(&ds.iter().collect::<Vec<_>>());
                let got = gpu.read_f32_blocking(&yb).unwrap();
                let mut h = cpu_rmsnorm(&x, &gain, eps, m, k);
                let mut ws = stored_weights(&w, n, k, format);
                if coop {
                    h.iter_mut().for_each(|v| *v = round_f16(*v));
                    ws.iter_mut().for_each(|v| *v = round_f16(*v));
                }
                let err = rel_err(&got, &cpu_linear(&h, &ws, &y0, m, n, k, epilogue));
                let tol = if coop { 1e-3 } else { 1e-5 };
                assert!(err < tol, "{format:?} m {m} {epilogue:?}: rel err {err:.2e}");
            }
        }
    }
}


/// The logits head at the decoder's row counts (the fixture's config, random weights): where the policy does not
/// fuse the final norm (tensor cores from `coop_m_min` rows, or above `SMALL_M_MAX`) it needs a scratch of
/// `[rows, D]` (a 4-byte one at 8–16 rows made `rmsnorm` panic on tensor-core devices). Against the norm, then the
/// plain kernels on f32 x.
#[test]
fn logits_head_serves_every_decoder_row_count() {
    use dia_webgpu::config::DiaConfig;
    use dia_webgpu::dia::DiaModel;
    use dia_webgpu::kernels::linear::{linear_scheduled, Schedule};
    use dia_webgpu::kernels::norm::rmsnorm;
    use dia_webgpu::kernels::Numerics;
    let gpu = test_gpu();
    let cfg = DiaConfig::from_json_str(&std::fs::read_to_string(common::fixtures_dir().join("dia/config.json")).unwrap()).unwrap();
    let d = cfg.decoder.clone();
    let mut rng = Rng::new(61);
    for numerics in [Numerics::F16W, Numerics::Q4] {
        let model = DiaModel::random(&gpu, &cfg, numerics, 5).unwrap();
        for rows in DECODER_MS {
            let x = gpu.upload("x", &rng.vec(rows * d.hidden, 2.0));
            let (ds, out) = model.logits_head(&gpu, &x, rows as u32);
            gpu.run(&ds.iter().collect::<Vec<_>>());
            let got = gpu.read_f32_blocking(&out).unwrap();
            let normed = gpu.buffer("normed", (rows * d.hidden * 4) as u64);
            let want_buf = gpu.buffer("want", out.size);
            let plain = if rows as u32 <= SMALL_M_MAX { Schedule::SmallM } else { Schedule::Tiled };
            let mut reference = vec![rmsnorm(&gpu, &x, &model.dec_norm, &normed, rows as u32, d.hidden as u32, d.norm_eps)];
            reference.extend(linear_scheduled(&gpu, &normed, &model.logits, &want_buf, rows as u32, LinearEpilogue::Store, plain));
            gpu.run(&reference.iter().collect::<Vec<_>>());
            let want = gpu.read_f32_blocking(&want_buf).unwrap();
            let coop = gpu.tensor_cores() && rows as u32 >= coop_m_min(model.logits.format);
            let err = rel_err(&got, &want);
            assert!(err < if coop { 1e-3 } else { 1e-5 }, "{numerics:?} rows {rows}: rel err {err:.2e}");
        }
    }
}

/// The A/B switches of the crossing (`Gpu::set_coop_m_min`, `DIA_COOP_M_MIN`; `Gpu::set_coop_norm_linear`,
/// `DIA_COOP_NORM_LINEAR`): they move where `schedule` takes tensor cores and keep norm-fused projections on the
/// matrix–vector kernel up to `SMALL_M_MAX` rows; cleared, the policy (`coop_m_min`) is back. Without tensor cores
/// nothing goes to them whatever the switches say.
#[test]
fn coop_switches_move_the_crossing() {
    use dia_webgpu::kernels::linear::norm_linear_schedule;
    let gpu = test_gpu();
    let tc = gpu.tensor_cores();
    let (n, k) = (70u32, 100u32);
    for format in [WeightFormat::F16, Q8, Q4] {
        let w = GpuMatrix::empty(&gpu, "probe_w", n as usize, k as usize, format).unwrap();
        let x = gpu.buffer("probe_x", 32 * k as u64 * 4);
        let y = gpu.buffer("probe_y", 32 * n as u64 * 4);
        let on_tc = |m: u32| schedule(&gpu, &x, &w, &y, m, LinearEpilogue::Store) == Schedule::TensorCores;
        for m in [8u32, 16, 17] {
            assert_eq!(on_tc(m), tc && m >= coop_m_min(format), "{format:?} m {m}: policy");
        }
        gpu.set_coop_m_min(Some(8));
        assert_eq!((on_tc(7), on_tc(8), on_tc(16)), (false, tc, tc), "{format:?}: from 8 rows");
        gpu.set_coop_m_min(Some(17));
        assert_eq!((on_tc(16), on_tc(17)), (false, tc), "{format:?}: from 17 rows");
        gpu.set_coop_m_min(None);
        assert_eq!(on_tc(16), tc && 16 >= coop_m_min(format), "{format:?}: cleared");
        gpu.set_coop_norm_linear(false);
        assert_eq!(norm_linear_schedule(&gpu, &x, &w, &y, 16, LinearEpilogue::Store), Schedule::SmallM, "{format:?}: norm-fused at 16 rows");
        assert_eq!(norm_linear_schedule(&gpu, &x, &w, &y, 17, LinearEpilogue::Store) == Schedule::TensorCores, tc, "{format:?}: 17 rows");
        gpu.set_coop_norm_linear(true);
        assert_eq!(norm_linear_schedule(&gpu, &x, &w, &y, 16, LinearEpilogue::Store), schedule(&gpu, &x, &w, &y, 16, LinearEpilogue::Store), "{format:?}");
    }
}
