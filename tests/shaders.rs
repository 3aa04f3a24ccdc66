//! Every shader of `kernels::catalog` (a representative set of every generated kernel family's variants) parses
//! and validates in naga, as wgpu checks a module when it is created: a generator change that breaks some variant
//! the GPU tests do not reach fails here, on the host. (`examples/dump_wgsl.rs` writes the same set out, to compare
//! a generator's output before and after a change.)
#![cfg(not(target_arch = "wasm32"))]

use wgpu::naga;

#[test]
fn every_generated_shader_validates() {
    let shaders = dia_webgpu::kernels::catalog::generated_shaders();
    let families: std::collections::BTreeSet<&str> = shaders.iter().map(|(name, _)| name.split('/').next().unwrap()).collect();
    for family in ["attention", "sampling", "dac_conv", "dac_conv_reduce", "dac_conv_cl", "dac_rvq", "dac_pack", "dac_conv_mono", "kv_cache", "linear_small_m", "linear_tiled", "linear_coop", "linear_attention_o", "cross_tables"] {
        assert!(families.contains(family), "the catalog lacks {family}");
    }
    let mut failures = Vec::new();
    for (name, source) in &shaders {
        let source = dia_webgpu::gpu::shader_source_for_target(source);
        let checked = naga::front::wgsl::parse_str(&source).map_err(|e| e.emit_to_string(&source)).and_then(|module| {
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
                .validate(&module)
                .map(|_| ())
                .map_err(|e| e.emit_to_string(&source))
        });
        if let Err(e) = checked {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} shaders fail:\n{}", failures.len(), shaders.len(), failures.join("\n"));
}
