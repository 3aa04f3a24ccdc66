//! The tensor-core linear (`kernels::linear::coop`): every generated variant through naga's WGSL → SPIR-V
//! translation on the host (no GPU), and, where the device has tensor cores, every shape and epilogue against
//! the CPU on ragged sizes.
#![cfg(not(target_arch = "wasm32"))]

mod common;

// Only the example's host-side naga translation is used here.
#[allow(dead_code)]
#[path = "../crate/examples/probe_coop.rs"]
mod probe_coop;

use common::{cpu_linear, rel_err, test_gpu, Rng};
use dia_webgpu::gpu::Gpu;
use dia_webgpu::gpu::KernelVariant;
use dia_webgpu::kernels::linear::{linear_coop_shaped, linear_rows, CoopAccess, CoopShape, CoopVariant, LinearEpilogue, COOP_M_MIN};
use dia_webgpu::kernels::{round_f16, GpuMatrix, Numerics};
use probe_coop::coop;

const EPILOGUES: [LinearEpilogue; 3] = [LinearEpilogue::Store, LinearEpilogue::Accumulate, LinearEpilogue::SwiGlu];
const ACCESSES: [CoopAccess; 2] = [CoopAccess::Vec, CoopAccess::Scalar];
/// Against a CPU product of the same f16-rounded operands only the f32 summation order differs.
const TOL: f64 = 1e-4;

fn shapes() -> Vec<CoopShape> {
    CoopShape::ALL.iter().flat_map(|s| [s.with_stages(1), s.with_stages(2)]).collect()
}

/// Every (shape, stages, epilogue, access) parses, validates (cooperative ops in uniform control flow) and
/// becomes SPIR-V under both of wgpu's storage bounds-check policies — notably without naga 30's
/// uncached-expression panic on `coopStoreT`.
#[test]
fn every_coop_linear_variant_translates_on_the_host() {
    for shape in shapes() {
        for epilogue in EPILOGUES {
            for access in ACCESSES {
                let wgsl = CoopVariant { access, epilogue, shape }.source();
                for robust in [false, true] {
                    let words = coop::translate_spirv(&wgsl, robust)
                        .unwrap_or_else(|e| panic!("{shape:?} {epilogue:?} {access:?} (robust {robust}): {e}"));
                    assert!(words > 1000, "{shape:?}: suspiciously small module ({words} words)");
                }
            }
        }
    }
}

/// `CoopShape::workgroup_bytes` (what the shape choice checks against the device limit) is what the shader declares.
#[test]
fn coop_workgroup_memory_is_what_the_shape_says() {
    for shape in shapes() {
        let wgsl = CoopVariant { access: CoopAccess::Vec, epilogue: LinearEpilogue::Store, shape }.source();
        let bytes = probe_coop::coop::workgroup_bytes(&wgsl);
        assert_eq!(bytes, shape.workgroup_bytes(), "{shape:?}");
    }
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

/// One product on the GPU through `run` (which builds the dispatches) against the CPU on f16-rounded x and W.
/// Returns the relative error.
fn check(gpu: &Gpu, rng: &mut Rng, m: usize, n: usize, k: usize, epilogue: LinearEpilogue, run: &dyn Fn(&Gpu, &dia_webgpu::gpu::GpuBuffer, &GpuMatrix, &dia_webgpu::gpu::GpuBuffer)) -> f64 {
    let x = rng.vec(m * k, 1.0);
    let w = rng.vec(n * k, 1.0 / (k as f32).sqrt());
    let out_cols = if epilogue == LinearEpilogue::SwiGlu { n / 2 } else { n };
    let y0 = rng.vec(m * out_cols, 1.0);
    let xg = gpu.upload("x", &x);
    let wg = GpuMatrix::upload(gpu, "w", &w, n, k, Numerics::F16W).expect("upload");
    let yg = gpu.upload("y", &y0);
    run(gpu, &xg, &wg, &yg);
    let got = gpu.read_f32_blocking(&yg).expect("readback");
    let x16: Vec<f32> = x.iter().map(|&v| round_f16(v)).collect();
    let w16: Vec<f32> = w.iter().map(|&v| round_f16(v)).collect();
    let want = cpu_linear(&x16, &w16, &y0, m, n, k, epilogue);
    rel_err(&got, &want)
}

/// Every shape the device can hold, every epilogue, both access paths (K = 37 reads element-wise), on sizes
/// that are no multiple of the tiles: M = 1, 17, 101, 130; N = 78, 202; K = 37, 40, 1000.
#[test]
fn coop_linear_matches_cpu_on_ragged_shapes() {
    let Some(gpu) = tensor_core_gpu("coop_linear_matches_cpu_on_ragged_shapes") else { return };
    let limit = gpu.limits.max_compute_workgroup_storage_size;
    let mut rng = Rng::new(41);
    let mut worst = 0.0f64;
    for shape in shapes().into_iter().filter(|s| s.workgroup_bytes() <= limit) {
        for epilogue in EPILOGUES {
            for (m, n, k) in [(1, 78, 40), (17, 202, 1000), (101, 78, 37), (130, 202, 40), (130, 78, 1000), (17, 78, 37)] {
                let err = check(&gpu, &mut rng, m, n, k, epilogue, &|gpu, x, w, y| {
                    gpu.run(&[&linear_coop_shaped(gpu, x, w, y, m as u32, epilogue, shape)]);
                });
                assert!(err < TOL, "{shape:?} {epilogue:?} m {m} n {n} k {k}: rel err {err:.2e}");
                worst = worst.max(err);
            }
        }
    }
    println!("coop linear: worst rel err {worst:.2e} against the CPU on f16-rounded operands");
}

/// `linear_rows` (the encoder's and the prefill's entry) takes the tensor-core path from `COOP_M_MIN` rows on
/// with f16 weights and gives the same products.
#[test]
fn linear_rows_routes_large_m_to_tensor_cores() {
    let Some(gpu) = tensor_core_gpu("linear_rows_routes_large_m_to_tensor_cores") else { return };
    let mut rng = Rng::new(43);
    for epilogue in EPILOGUES {
        for m in [COOP_M_MIN as usize, 101] {
            let err = check(&gpu, &mut rng, m, 202, 1000, epilogue, &|gpu, x, w, y| {
                let ds = linear_rows(gpu, x, w, y, m as u32, epilogue);
                assert_eq!(ds.len(), 1, "one tensor-core dispatch");
                gpu.run(&ds.iter().collect::<Vec<_>>());
            });
            assert!(err < TOL, "{epilogue:?} m {m}: rel err {err:.2e}");
        }
    }
}
