//! Host-side naga checks of generated WGSL (no GPU): the workgroup memory a module declares, and the WGSL →
//! SPIR-V translation wgpu's Vulkan backend performs. For the kernels' tests and the probes in `examples/`;
//! not part of the library's API.
use wgpu::naga;

/// Bytes of workgroup memory a WGSL module declares (what the device's `max_compute_workgroup_storage_size`
/// must allow), as naga lays the variables out.
pub fn workgroup_bytes(wgsl: &str) -> u32 {
    let module = naga::front::wgsl::parse_str(wgsl).expect("parses");
    module
        .global_variables
        .iter()
        .filter(|(_, g)| g.space == naga::AddressSpace::WorkGroup)
        .map(|(_, g)| module.types[g.ty].inner.size(module.to_ctx()))
        .sum()
}

/// WGSL → naga IR → validation → SPIR-V, as wgpu does for a Vulkan compute pipeline (wgpu-hal's
/// `spv::Options` for a Vulkan 1.3 device). `robust_buffers`: the device has robustBufferAccess2 (wgpu then
/// leaves storage-buffer indices unchecked; otherwise it clamps them). Returns the SPIR-V word count; a panic
/// inside naga comes back as `Err` with its message.
pub fn translate_spirv(wgsl: &str, robust_buffers: bool) -> Result<usize, String> {
    let wgsl = wgsl.to_owned();
    let run = move || -> Result<usize, String> {
        let module =
            naga::front::wgsl::parse_str(&wgsl).map_err(|e| format!("parse: {}", e.emit_to_string(&wgsl)))?;
        let info =
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
                .validate(&module)
                .map_err(|e| format!("validate: {}", e.emit_to_string(&wgsl)))?;
        let (module, info) = naga::back::pipeline_constants::process_overrides(
            &module,
            &info,
            Some((naga::ShaderStage::Compute, "main")),
            &Default::default(),
        )
        .map_err(|e| format!("overrides: {e}"))?;
        let check = |robust| {
            if robust {
                naga::proc::BoundsCheckPolicy::Unchecked
            } else {
                naga::proc::BoundsCheckPolicy::Restrict
            }
        };
        let options = naga::back::spv::Options {
            lang_version: (1, 6),
            flags: naga::back::spv::WriterFlags::FORCE_POINT_SIZE,
            // wgpu-hal maps every binding to the same set/binding; faking the missing map does the same
            fake_missing_bindings: true,
            bounds_check_policies: naga::proc::BoundsCheckPolicies {
                index: naga::proc::BoundsCheckPolicy::Restrict,
                buffer: check(robust_buffers),
                image_load: check(robust_buffers),
                binding_array: naga::proc::BoundsCheckPolicy::Unchecked,
            },
            zero_initialize_workgroup_memory: naga::back::spv::ZeroInitializeWorkgroupMemoryMode::Polyfill,
            ..Default::default()
        };
        let pipeline = naga::back::spv::PipelineOptions {
            shader_stage: naga::ShaderStage::Compute,
            entry_point: "main".into(),
        };
        naga::back::spv::write_vec(&module, &info, &options, Some(&pipeline))
            .map(|words| words.len())
            .map_err(|e| format!("spv: {e}"))
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(result) => result,
        Err(payload) => Err(format!("naga panicked: {}", panic_message(&*payload))),
    }
}

pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(non-string payload)".into())
}
