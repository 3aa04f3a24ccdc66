//! The linear family on quantized weights (q8, q4: `dia_webgpu::quant`) against the CPU on the dequantized
//! matrix, on random ragged shapes: every epilogue, both schedules (small M and tiled, every tile), the fused
//! RMSNorm and the row blocks; and every generated variant through naga's validator on the host.
mod common;

use common::{cpu_linear, cpu_rmsnorm, norm_operands, q64, rel_err, run_linear, stored_weights, test_gpu_f32_arith as test_gpu, Rng};
use dia_webgpu::gpu::{Dispatch, Gpu, GpuBuffer, KernelVariant};
use dia_webgpu::kernels::linear::{
    linear, linear_rows, linear_small_m_shaped, linear_tiled_shaped, norm_linear, Arith, LinearEpilogue, SmallMAccess, SmallMShape, SmallMVariant, TiledAccess,
    TiledShape, TiledVariant, SMALL_M_MAX,
};
use dia_webgpu::kernels::{GpuMatrix, WeightFormat};
use dia_webgpu::quant::{QuantBits, QuantFormat};

const EPILOGUES: [LinearEpilogue; 3] = [LinearEpilogue::Store, LinearEpilogue::Accumulate, LinearEpilogue::SwiGlu];
/// The GPU and the CPU multiply the same dequantized weights; only the order of the f32 sums differs.
const TOL: f64 = 1e-5;
const Q8: WeightFormat = WeightFormat::Quant(QuantFormat::Q8);
const Q4: WeightFormat = WeightFormat::Quant(QuantFormat::Q4);

type Schedule<'a> = &'a dyn Fn(&Gpu, &GpuBuffer, &GpuMatrix, &GpuBuffer, u32, LinearEpilogue) -> Vec<Dispatch>;

/// Random x, W and y; runs `schedule`; returns the relative error against the CPU.
#[allow(clippy::too_many_arguments)]
fn case(gpu: &Gpu, rng: &mut Rng, m: usize, n: usize, k: usize, epilogue: LinearEpilogue, format: WeightFormat, schedule: Schedule<'_>) -> f64 {
    let out_cols = if epilogue == LinearEpilogue::SwiGlu { n / 2 } else { n };
    let x = rng.vec(m * k, 1.0);
    // Rows of different magnitudes, so groups get different scales.
    let w: Vec<f32> = (0..n * k).map(|i| rng.uniform() * (1 + (i / k) % 5) as f32 * 0.3).collect();
    let y0 = rng.vec(m * out_cols, 1.0);
    let got = run_linear(gpu, &x, &w, &y0, n, k, format, |xb, wm, yb| {
        assert_eq!(wm.data.size, n as u64 * format.row_words(k as u32) as u64 * 4);
        schedule(gpu, xb, wm, yb, m as u32, epilogue)
    });
    // The kernels compute with the dequantized matrix.
    rel_err(&got, &cpu_linear(&x, &stored_weights(&w, n, k, format), &y0, m, n, k, epilogue))
}

/// Every (M, N, K, epilogue) through `schedule`; N is the weight rows (doubled for SwiGLU).
fn sweep(name: &str, format: WeightFormat, ms: &[usize], ns: &[usize], ks: &[usize], schedule: Schedule<'_>) {
    let gpu = test_gpu();
    let mut rng = Rng::new(0x9a11 ^ ms[0] as u64 ^ ks[0] as u64);
    let mut worst = 0.0f64;
    for &m in ms {
        for &n in ns {
            for &k in ks {
                for epilogue in EPILOGUES {
                    let n = if epilogue == LinearEpilogue::SwiGlu { 2 * n } else { n };
                    let err = case(&gpu, &mut rng, m, n, k, epilogue, format, schedule);
                    assert!(err <= TOL, "{name} {format:?}: m={m} n={n} k={k} {epilogue:?}: rel err {err:.3e}");
                    worst = worst.max(err);
                }
            }
        }
    }
    println!("{name} {format:?}: worst rel err {worst:.3e}");
}

fn single(gpu: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, e: LinearEpilogue) -> Vec<Dispatch> {
    vec![linear(gpu, x, w, y, m, e)]
}

// K: 3 reads x element by element; 20 and 40 end in a short group (and, for q4, in a partial 32-column chunk);
// 264 takes several chunks per row. (Each distinct K, M and epilogue is a pipeline to compile: the sets stay small.)
const KS: [usize; 4] = [3, 20, 40, 264];

#[test]
fn quant_small_m_ragged() {
    for format in [Q8, Q4] {
        sweep("quant_small_m_ragged", format, &[2, 16], &[5, 67], &KS, &single);
    }
}

/// M = 1 and 5 (one and two x chunks per round in flight for q8), and K = 1100 (q8: 69 chunks over 64 threads, so
/// the second chunk of a round is masked on most threads).
#[test]
fn quant_small_m_rounds() {
    for format in [Q8, Q4] {
        sweep("quant_small_m_rounds", format, &[1, 5], &[7], &[1100], &single);
    }
}

/// The way of reading quantized rows that each format does not take by default (`Gpu::set_matvec_cols8`): q8 in
/// 8-column chunks, q4 in 16-byte blocks (the tests above run the defaults: q4 in 8-column chunks, q8 in blocks).
/// K = 3 and 20 read x element by element, 20 and 40 end inside a group, 1100 takes rounds with masked chunks;
/// groups of 32 (the rule's unroll) and 64 (a forced unroll of 3: rounds that run past the row).
#[test]
fn quant_small_m_other_access_ragged() {
    use dia_webgpu::kernels::linear::{linear_small_m_tuned, small_m_access, SmallMTuning};
    for (format, unroll) in [(Q8, None), (Q4, None), (q64(QuantBits::Q8), Some(3)), (q64(QuantBits::Q4), Some(3))] {
        let cols8 = matches!(format, WeightFormat::Quant(q) if q.bits() == QuantBits::Q8);
        let schedule = |g: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, e: LinearEpilogue| {
            g.set_matvec_cols8(Some(cols8));
            let access = small_m_access(g, w.format, w.cols);
            assert_eq!(access, if cols8 { SmallMAccess::cols8(w.format, w.cols) } else { SmallMAccess::new(w.format, w.cols) });
            let shape = SmallMShape::for_matrix(g, w, m);
            let ds = vec![linear_small_m_tuned(g, x, w, y, m, e, shape, SmallMTuning { unroll, ..Default::default() }).unwrap()];
            g.set_matvec_cols8(None);
            ds
        };
        // (A forced unroll at M = 16 makes straight-line code lavapipe takes minutes to compile: 1 and 5 rows there.)
        let ms: &[usize] = if unroll.is_some() { &[1, 5] } else { &[1, 5, 16] };
        sweep("quant_small_m_other_access_ragged", format, ms, &[67], &[3, 20, 40, 1100], &schedule);
    }
    // The 8-column variant is a different pipeline from the 16-byte-block one.
    let block = SmallMVariant::new(Q4, 40, 2, LinearEpilogue::Store, SmallMShape::for_format(Q4, 2, 67, 40), false, false, Arith::F32);
    let cols8 = SmallMVariant::with_access(SmallMAccess::cols8(Q4, 40), Q4, 40, 2, LinearEpilogue::Store, block.shape, false, false, Arith::F32);
    assert_ne!(block.access, cols8.access);
    assert!(cols8.source().contains("fn dequant(q: u32)") && !block.source().contains("fn dequant(q: u32)"));
}

/// Who reads what by default: q4 in 8-column chunks, q8 in blocks, f16 and f32 as before; the switch overrides both
/// ways for quantized rows only; f16 and integer arithmetic keep blocks.
#[test]
fn quant_small_m_access_policy() {
    use dia_webgpu::kernels::linear::small_m_access;
    let gpu = test_gpu();
    let k = 2048;
    assert_eq!(small_m_access(&gpu, Q4, k), SmallMAccess::Cols8Vec4);
    assert_eq!(small_m_access(&gpu, Q4, 30), SmallMAccess::Cols8Scalar);
    assert_eq!(small_m_access(&gpu, Q8, k), SmallMAccess::BlockVec4);
    assert_eq!(small_m_access(&gpu, WeightFormat::F16, k), SmallMAccess::Vec8);
    gpu.set_matvec_cols8(Some(true));
    assert_eq!(small_m_access(&gpu, Q8, k), SmallMAccess::Cols8Vec4);
    assert_eq!(small_m_access(&gpu, WeightFormat::F32, k), SmallMAccess::Vec8);
    gpu.set_matvec_cols8(Some(false));
    assert_eq!(small_m_access(&gpu, Q4, k), SmallMAccess::BlockVec4);
    gpu.set_matvec_cols8(None);
    gpu.set_int8_dot(true);
    if gpu.int8_dot() {
        assert_eq!(small_m_access(&gpu, Q4, k), SmallMAccess::BlockVec4);
    }
    gpu.set_int8_dot(false);
    // The default shape follows the access: 8-column q4 rows split K over 32 threads from 16384 rows.
    let cols8 = SmallMShape::for_format(Q4, 2, 16384, k);
    assert_eq!(cols8, SmallMShape::for_access(SmallMAccess::Cols8Vec4, Q4, 2, 16384, k));
    assert_eq!((cols8.k_threads, cols8.rows_per_thread), (32, 4));
    assert_eq!(SmallMShape::for_access(SmallMAccess::BlockVec4, Q4, 2, 16384, k).k_threads, 16);
}

#[test]
fn quant_tiled_ragged() {
    for format in [Q8, Q4] {
        sweep("quant_tiled_ragged", format, &[17, 37], &[5, 67], &KS, &single);
    }
}

/// Groups of 64 on both schedules.
#[test]
fn quant_group_64_ragged() {
    for format in [q64(QuantBits::Q8), q64(QuantBits::Q4)] {
        sweep("quant_group_64_ragged", format, &[2, 17], &[67], &[100, 264], &single);
    }
}

/// Every tiled work split (its staging units decide the weight loads: q4 takes 8-column units where the stage allows)
/// and a few outside the list (4-column stages, 8-row threads with split K), accumulating (the epilogues are the
/// generator's, checked above).
#[test]
fn quant_tiled_shapes_ragged() {
    let mut shapes = TiledShape::ALL.to_vec();
    shapes.extend([TiledShape { tm: 8, tn: 8, rm: 8, bk: 4, kg: 1 }, TiledShape { tm: 16, tn: 16, rm: 8, bk: 16, kg: 2 }]);
    let gpu = test_gpu();
    let mut rng = Rng::new(0x5a);
    for shape in shapes {
        let schedule = |g: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, e: LinearEpilogue| vec![linear_tiled_shaped(g, x, w, y, m, e, shape)];
        for format in [Q8, Q4] {
            for (m, n, k) in [(3, 67, 30), (100, 67, 264), (37, 20, 40)] {
                let err = case(&gpu, &mut rng, m, n, k, LinearEpilogue::Accumulate, format, &schedule);
                assert!(err <= TOL, "{shape:?} {format:?}: m={m} n={n} k={k}: rel err {err:.3e}");
            }
        }
    }
}

/// Workgroup shapes other than the default: more outputs than threads, an odd number of SwiGLU outputs, one thread
/// group, K split over 4 threads (several chunks per thread), partial sums meeting in 3 rounds of rows of x (the last
/// one shorter).
#[test]
fn quant_small_m_shapes() {
    let gpu = test_gpu();
    let mut rng = Rng::new(0x5b);
    for (m, threads, k_threads, rows_per_thread) in [(5usize, 32u32, 4u32, 4u32), (5, 128, 64, 3), (3, 64, 64, 2), (2, 64, 8, 1), (13, 128, 16, 4)] {
        let shape = SmallMShape { threads, k_threads, rows_per_thread };
        assert!(shape.fits(m as u32), "{shape:?}");
        let schedule = |g: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, e: LinearEpilogue| vec![linear_small_m_shaped(g, x, w, y, m, e, shape)];
        for format in [Q8, Q4] {
            for epilogue in [LinearEpilogue::Store, LinearEpilogue::SwiGlu] {
                let err = case(&gpu, &mut rng, m, 134, 264, epilogue, format, &schedule);
                assert!(err <= TOL, "{shape:?} {format:?} {epilogue:?}: m={m}: rel err {err:.3e}");
            }
        }
    }
}

/// `linear_rows`: row blocks for 17 ≤ M ≤ 32 where they bind at aligned offsets, the tiled kernel otherwise.
#[test]
fn quant_linear_rows() {
    let schedule = |g: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, e: LinearEpilogue| linear_rows(g, x, w, y, m, e);
    for format in [Q8, Q4] {
        sweep("quant_linear_rows", format, &[17, 48], &[36], &[64], &schedule);
    }
}

/// RMSNorm fused into the small-M kernel (and norm then tiled above 16 rows) against the CPU.
#[test]
fn quant_norm_linear_ragged() {
    let gpu = test_gpu();
    let mut rng = Rng::new(77);
    let eps = 1e-5f32;
    let mut worst = 0.0f64;
    for format in [Q8, Q4] {
        for (m, n, k) in [(1usize, 67usize, 30usize), (2, 36, 264), (16, 20, 40), (17, 67, 64)] {
            for epilogue in EPILOGUES {
                let (n, out_cols) = if epilogue == LinearEpilogue::SwiGlu { (2 * n, n) } else { (n, n) };
                let (x, gain, w, y0) = norm_operands(&mut rng, m, n, k, out_cols);
                let (xb, gb, yb) = (gpu.upload("x", &x), gpu.upload("gain", &gain), gpu.upload("y", &y0));
                let wm = GpuMatrix::upload(&gpu, "w", &w, n, k, format).unwrap();
                let scratch = gpu.buffer("scratch", (m * k * 4) as u64);
                let ds = norm_linear(&gpu, &xb, &gb, eps, &wm, &yb, m as u32, epilogue, &scratch);
                assert_eq!(ds.len(), if m as u32 <= SMALL_M_MAX { 1 } else { 2 }, "fused only for small M");
                gpu.run(&ds.iter().collect::<Vec<_>>());
                let got = gpu.read_f32_blocking(&yb).unwrap();
                let h = cpu_rmsnorm(&x, &gain, eps, m, k);
                let err = rel_err(&got, &cpu_linear(&h, &stored_weights(&w, n, k, format), &y0, m, n, k, epilogue));
                assert!(err <= TOL, "{format:?} m={m} n={n} k={k} {epilogue:?}: rel err {err:.3e}");
                worst = worst.max(err);
            }
        }
    }
    println!("quant_norm_linear_ragged: worst rel err {worst:.3e}");
}

/// Every quantized variant the kernels can ask for parses and validates (naga, as wgpu does before compiling), with
/// no capability beyond `unpack2x16float`'s (which the f16 kernels need too).
#[test]
fn every_quant_variant_validates_on_the_host() {
    let validate = |what: String, src: String| {
        let module = wgpu::naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(&src)));
        let flags = wgpu::naga::valid::ValidationFlags::all();
        wgpu::naga::valid::Validator::new(flags, wgpu::naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32)
            .validate(&module)
            .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(&src)));
    };
    let mut count = 0;
    for format in [Q8, Q4, q64(QuantBits::Q8), q64(QuantBits::Q4)] {
        // K % 4 != 0, ragged, aligned.
        for k in [3u32, 20, 2048] {
            for m in 1..=SMALL_M_MAX {
                let shape = SmallMShape::for_format(format, m, 2048, k);
                for epilogue in EPILOGUES {
                    for (norm, blocked) in [(false, false), (true, false), (false, true)] {
                        for arith in [Arith::F32, Arith::Int8Dot] {
                            let v = SmallMVariant::new(format, k, m, epilogue, shape, norm, blocked, arith);
                            validate(format!("{v:?}"), v.source());
                            count += 1;
                        }
                        let v = SmallMVariant::with_access(SmallMAccess::cols8(format, k), format, k, m, epilogue, shape, norm, blocked, Arith::F32);
                        validate(format!("{v:?}"), v.source());
                        count += 1;
                    }
                }
            }
            for shape in TiledShape::ALL {
                for epilogue in EPILOGUES {
                    let v = TiledVariant { format, access: TiledAccess::new(format, k, shape), epilogue, shape };
                    validate(format!("{v:?}"), v.source());
                    count += 1;
                }
            }
        }
    }
    println!("{count} quantized variants validate");
}

/// The default small-M shape fits every M on the decoder's matrices and on tiny ones.
#[test]
fn quant_small_m_default_shapes_fit() {
    for format in [Q8, Q4, q64(QuantBits::Q8), q64(QuantBits::Q4)] {
        for m in 1..=SMALL_M_MAX {
            for (n, k) in [(1, 1), (2, 3), (67, 64), (2048, 2048), (16384, 2048), (2048, 8192), (9252, 2048), (5, 515)] {
                let s = SmallMShape::for_format(format, m, n, k);
                assert!(s.fits(m), "{format:?} m={m} n={n} k={k}: {s:?}");
            }
        }
    }
}
