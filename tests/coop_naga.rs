//! Host-only (no GPU): naga 30's WGSL → SPIR-V translation, with wgpu-hal's Vulkan options, of the
//! cooperative-matrix GEMM in `examples/probe_coop.rs` and of the store forms that show naga's bug.
#![cfg(not(target_arch = "wasm32"))]

// The example's `native` half (GPU run) is unused here.
#[allow(dead_code)]
#[path = "../crate/examples/probe_coop.rs"]
mod probe_coop;

use probe_coop::coop;

/// The first probe's shader panics in naga's SPIR-V writer exactly as on the H100.
#[test]
fn first_probe_shader_reproduces_the_uncached_expression_panic() {
    for robust in [false, true] {
        let err = coop::translate_spirv(&coop::first_probe_shader(), robust).expect_err("naga 30.0.1 should panic");
        assert!(err.contains("is not cached"), "unexpected failure: {err}");
    }
}

/// A `coopStoreT` stride computed inside the call is the trigger; `let`-bound arguments and literals translate.
#[test]
fn only_a_computed_store_argument_trips_naga() {
    for (name, wgsl) in coop::store_forms() {
        let result = coop::translate_spirv(&wgsl, false);
        if name == "uniform-field stride" {
            assert!(
                result.as_ref().is_err_and(|e| e.contains("is not cached")),
                "{name}: {result:?}"
            );
        } else {
            assert!(result.is_ok(), "{name}: {result:?}");
        }
    }
}

/// Every GEMM variant parses, validates (cooperative ops in uniform control flow) and becomes SPIR-V, with
/// storage-buffer indices clamped or unchecked (the two policies wgpu picks between).
#[test]
fn every_gemm_variant_translates() {
    for cfg in coop::variants() {
        for robust in [false, true] {
            let words = coop::translate_spirv(&coop::gemm_shader(&cfg), robust)
                .unwrap_or_else(|e| panic!("{} (robust {robust}): {e}", cfg.name()));
            assert!(
                words > 1000,
                "{}: suspiciously small module ({words} words)",
                cfg.name()
            );
        }
    }
}

/// The shaders stay within what the probe asks of the device.
#[test]
fn workgroup_memory_fits_the_requested_limit() {
    for cfg in coop::variants() {
        let wgsl = coop::gemm_shader(&cfg);
        let bytes = coop::workgroup_bytes(&wgsl);
        assert_eq!(bytes, cfg.workgroup_bytes(), "{}", cfg.name());
        assert!(bytes <= 40 * 1024, "{}: {bytes} bytes", cfg.name());
    }
}
