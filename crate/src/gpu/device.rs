//! What the adapter offers and what the device was made with: adapter ranking, features and limits beyond the
//! negotiation in `Gpu::from_adapter`, subgroups (natively and in the browser), tensor cores, f16 arithmetic and
//! the software-OpenGL special cases.

use std::sync::atomic::Ordering;

use super::Gpu;

/// The subgroup sizes an adapter may run compute invocations in (WebGPU: 4 ≤ min ≤ max ≤ 128, powers of two).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubgroupSizes {
    pub min: u32,
    pub max: u32,
}

/// How a kernel family reduces across a workgroup: a typed field of its variant (generator input and pipeline
/// key), so a pipeline built with subgroup operations can never be mistaken for the plain one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reduction {
    /// Trees and scans through workgroup memory, a barrier per round: runs everywhere.
    Workgroup,
    /// `subgroupMax` / `subgroupAdd` / `subgroupInclusiveAdd` within each subgroup, one workgroup-memory exchange
    /// across subgroups (indexed by `subgroup_id`, `num_subgroups` of them): correct for whatever subgroup size the
    /// device runs and however it groups invocations, nothing assumes 32.
    Subgroup,
}

/// First line of every WGSL source that uses subgroup operations: a comment natively (naga 30 rejects
/// `enable subgroups;` and takes subgroup operations without it), `enable subgroups;` in the browser, which
/// requires it (`shader_source_for_target`).
pub const SUBGROUPS_MARKER: &str = "// dia: enable subgroups\n";

/// `source` as this build's shader compiler wants it: on the web the subgroups marker becomes the `enable` line.
pub fn shader_source_for_target(source: &str) -> std::borrow::Cow<'_, str> {
    if cfg!(target_arch = "wasm32") && source.starts_with(SUBGROUPS_MARKER) {
        std::borrow::Cow::Owned(format!("enable subgroups;\n{}", &source[SUBGROUPS_MARKER.len()..]))
    } else {
        std::borrow::Cow::Borrowed(source)
    }
}

impl Gpu {
    /// Whether the device was made with cooperative matrices (16×16×16 f16 → f32 tensor-core products, subgroups
    /// of exactly 32 invocations, `shader-f16`): the DAC and encoder kernels then use them.
    pub fn tensor_cores(&self) -> bool {
        self.features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
    }

    /// The device's subgroup sizes, when it was made with subgroups (whether kernels use them or not).
    pub fn subgroup_sizes(&self) -> Option<SubgroupSizes> {
        self.subgroup_sizes
    }

    /// How kernels built from now on reduce across a workgroup: `Subgroup` where the device has subgroups of the
    /// sizes the kernels are written for (4..=128, at most 64 subgroups in 256 invocations) and they are not
    /// switched off (natively the default: `subgroups_by_default`; `set_subgroups(false)`).
    pub fn reduction(&self) -> Reduction {
        match self.subgroup_sizes {
            Some(s) if self.subgroups_on.load(Ordering::Relaxed) && s.min >= 4 && s.max <= 128 => Reduction::Subgroup,
            _ => Reduction::Workgroup,
        }
    }

    /// Switches the subgroup variants on or off for kernels built from now on (both paths in one process: tests,
    /// A/B benchmarks). Without subgroups on the device, `reduction` stays `Workgroup` either way.
    pub fn set_subgroups(&self, on: bool) {
        self.subgroups_on.store(on, Ordering::Relaxed);
    }

    /// Whether kernels may multiply in f16 where their numerics allow it (`linear::small_m_arith` per matrix, the
    /// DAC's `ConvTile::preferred`): the device has `shader-f16`, and f16 arithmetic is on — by default on GPUs, off on CPU adapters
    /// (they emulate f16); `DIA_F16_ARITH=on|off` (read when the device is made) or `set_f16_arithmetic` override
    /// that. Applies to the dispatches built from then on.
    pub fn f16_arithmetic(&self) -> bool {
        self.features.contains(wgpu::Features::SHADER_F16) && self.f16_arithmetic.load(Ordering::Relaxed)
    }

    /// Allows or forbids f16 arithmetic (benchmarks time both in one process; tests turn it on for CPU adapters, or
    /// off for the f32 arithmetic). Allowing it changes nothing on a device without `shader-f16`.
    pub fn set_f16_arithmetic(&self, on: bool) {
        self.f16_arithmetic.store(on, Ordering::Relaxed);
        self.f16_matvec.store(on, Ordering::Relaxed);
    }

    /// Whether the matrix–vector kernel multiplies in f16 (`linear::small_m_arith`): only where asked for
    /// (`DIA_F16_ARITH=on` or `set_f16_arithmetic(true)`) and allowed (`f16_arithmetic`). Off by default: on an H100
    /// it sped whole q8/q4 steps up by 4–5 % but slowed the f16w matrices by 11 %, and two of its CPU-reference
    /// tests exceeded their error bound there once (docs/performance.md, "shader-f16 arithmetic in the small-M kernel").
    pub fn f16_matvec(&self) -> bool {
        self.f16_arithmetic() && self.f16_matvec.load(Ordering::Relaxed)
    }

    /// Whether the matrix–vector kernel multiplies quantized weights by integer dot products on int8-quantized x
    /// (`linear::small_m_arith`, `Arith::Int8Dot`): where the WGSL implementation has `dot4I8Packed` (naga always; a
    /// browser that lists `packed_4x8_integer_dot_product`) and it is on — `DIA_INT8_DOT=on|off` (read when the
    /// device is made) or `set_int8_dot` override the default (`int8_dot_by_default`).
    pub fn int8_dot(&self) -> bool {
        self.int8_dot_available && self.int8_dot.load(Ordering::Relaxed)
    }

    /// Allows or forbids integer dot products in the matrix–vector kernel (benchmarks time both in one process;
    /// tests force each). Allowing them changes nothing where the WGSL implementation lacks `dot4I8Packed`.
    pub fn set_int8_dot(&self, on: bool) {
        self.int8_dot.store(on, Ordering::Relaxed);
    }

    /// Whether the matrix–vector kernel loads each round's weights during the round before (`SmallMVariant::prefetch`):
    /// `DIA_MATVEC_PREFETCH=on` (read when the device is made) or `set_matvec_prefetch`.
    pub fn matvec_prefetch(&self) -> bool {
        self.matvec_prefetch.load(Ordering::Relaxed)
    }

    /// Turns the matrix–vector kernel's prefetching on or off for the dispatches built from now on.
    pub fn set_matvec_prefetch(&self, on: bool) {
        self.matvec_prefetch.store(on, Ordering::Relaxed);
    }

    /// Whether decoder steps with q8 KV caches fold RoPE and the cache write into the self-attention
    /// (`attention_decode_appending`, 18 dispatches fewer per step on Dia) rather than run `rope_kv_write` first:
    /// `DIA_Q8_APPEND=on` (read when the device is made) or `set_q8_cache_append`. Off by default until a GPU
    /// measures it faster (docs/performance.md, "q8 KV caches"); f32 and f16 caches always append.
    pub fn q8_cache_append(&self) -> bool {
        self.q8_cache_append.load(Ordering::Relaxed)
    }

    /// Turns the q8-cache appending decode on or off for the steps built from now on.
    pub fn set_q8_cache_append(&self, on: bool) {
        self.q8_cache_append.store(on, Ordering::Relaxed);
    }

    /// The row count from which `linear`'s schedule takes tensor cores, where set (`DIA_COOP_M_MIN=N`, read when
    /// the device is made, or `set_coop_m_min`); None leaves it to the policy (`kernels::linear::coop_m_min`, per weight format). For
    /// A/B measurements of the crossing point.
    pub fn coop_m_min(&self) -> Option<u32> {
        Some(self.coop_m_min.load(Ordering::Relaxed)).filter(|&m| m > 0)
    }

    /// Sets (Some) or clears (None) `coop_m_min` for the graphs built from now on.
    pub fn set_coop_m_min(&self, rows: Option<u32>) {
        self.coop_m_min.store(rows.unwrap_or(0), Ordering::Relaxed);
    }

    /// Whether a projection with a fused norm (`norm_linear`) takes tensor cores where `linear` would (a norm
    /// dispatch, then the GEMM), or stays on the matrix–vector kernel up to `SMALL_M_MAX` rows with its norm
    /// fused: on by default; `DIA_COOP_NORM_LINEAR=off` or `set_coop_norm_linear(false)` keeps them there.
    pub fn coop_norm_linear(&self) -> bool {
        self.coop_norm_linear.load(Ordering::Relaxed)
    }

    /// Sets `coop_norm_linear` for the graphs built from now on.
    pub fn set_coop_norm_linear(&self, on: bool) {
        self.coop_norm_linear.store(on, Ordering::Relaxed);
    }

    /// Whether decoder steps must (Some(true)) or must not (Some(false)) fold the cross-attention's query and output
    /// projections into per-text tables made at encode time (issue 17's first fusion: 3 dispatches per layer → 2),
    /// wherever the route applies; None leaves it to the policy (`DiaModel::encode`: tables where they are no larger
    /// than the weights they replace). `DIA_CROSS_TABLES=on|off` (read when the device is made) or
    /// `set_cross_tables`; docs/performance.md has the figures.
    pub fn cross_tables(&self) -> Option<bool> {
        self.cross_tables.get()
    }

    /// Forces the cross-attention tables on or off (None: the policy) for the encodings made from now on.
    pub fn set_cross_tables(&self, on: Option<bool>) {
        self.cross_tables.set(on);
    }

    /// Whether decoder steps combine the self-attention's split partials inside the output projection instead of a
    /// combine pass of their own (issue 17's second fusion: one dispatch fewer per layer where it applies):
    /// `DIA_ATTENTION_O=fused` (read when the device is made) or `set_attention_o_fused`. Off by default (an
    /// experiment: docs/performance.md has its figures).
    pub fn attention_o_fused(&self) -> bool {
        self.attention_o_fused.load(Ordering::Relaxed)
    }

    /// Sets `attention_o_fused` for the graphs built from now on.
    pub fn set_attention_o_fused(&self, on: bool) {
        self.attention_o_fused.store(on, Ordering::Relaxed);
    }

    /// Whether the matrix–vector kernel must (Some(true)) or must not (Some(false)) read quantized rows in 8-column
    /// chunks where it multiplies in f32 (`SmallMAccess::cols8`); None leaves it to `SmallMAccess::preferred` (q4
    /// yes, q8 no). `DIA_MATVEC_COLS8=on|off` (read when the device is made) or `set_matvec_cols8`.
    pub fn matvec_cols8(&self) -> Option<bool> {
        self.matvec_cols8.get()
    }

    /// Forces 8-column quantized chunks on or off (None: the policy) for the dispatches built from now on.
    pub fn set_matvec_cols8(&self, on: Option<bool>) {
        self.matvec_cols8.set(on);
    }

    /// The same device with wgpu's zeroing of workgroup memory forced on or off for the pipelines compiled from now
    /// on (tests run the kernels without it on adapters that are not software OpenGL).
    pub fn with_workgroup_zeroing(mut self, on: bool) -> Gpu {
        self.zero_workgroup_memory = on;
        self
    }

    /// Whether pipelines compiled now zero their workgroup memory first (see `zeroes_workgroup_memory`).
    pub fn workgroup_zeroing(&self) -> bool {
        self.zero_workgroup_memory
    }

    /// A short human description: adapter name and backend.
    pub fn describe(&self) -> String {
        format!("{} ({:?})", self.info.name, self.info.backend)
    }

    /// For a software OpenGL adapter (Mesa's llvmpipe: wgpu's last resort where no Vulkan driver is installed), one
    /// line saying so and how to install the software Vulkan driver, which is far faster; None otherwise.
    pub fn software_gl_hint(&self) -> Option<String> {
        software_gl_hint(&self.info)
    }

    /// Bytes of device-local memory the adapter has (its largest device-local Vulkan heap), or None where the
    /// backend does not tell (WebGPU in a browser, Metal, DX12, OpenGL). Software Vulkan reports system memory.
    pub fn device_memory(&self) -> Option<u64> {
        #[cfg(all(not(target_arch = "wasm32"), any(target_os = "linux", target_os = "windows", target_os = "android")))]
        {
            // SAFETY: only reads a property of the physical device behind this device; nothing is created,
            // destroyed or used concurrently (wgpu-hal's own adapter code makes the same call).
            let hal = unsafe { self.device.as_hal::<wgpu::hal::api::Vulkan>() }?;
            let props = unsafe { hal.shared_instance().raw_instance().get_physical_device_memory_properties(hal.raw_physical_device()) };
            // VK_MEMORY_HEAP_DEVICE_LOCAL_BIT (without naming the `ash` crate).
            const DEVICE_LOCAL: u32 = 1;
            props.memory_heaps[..props.memory_heap_count as usize].iter().filter(|h| h.flags.as_raw() & DEVICE_LOCAL != 0).map(|h| h.size).max()
        }
        #[cfg(not(all(not(target_arch = "wasm32"), any(target_os = "linux", target_os = "windows", target_os = "android"))))]
        {
            None
        }
    }
}

/// What the cooperative-matrix kernels need: the feature with `shader-f16`, the 16×16×16 f16 → f32 configuration,
/// and subgroups of exactly 32 (a kernel's 256 invocations are 8 subgroups of consecutive invocations). Native only:
/// browsers do not expose cooperative matrices.
pub(super) fn adapter_has_tensor_cores(adapter: &wgpu::Adapter) -> bool {
    #[cfg(target_arch = "wasm32")]
    {
        let _ = adapter;
        false
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let info = adapter.get_info();
        adapter.features().contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SHADER_F16)
            && info.subgroup_min_size == 32
            && info.subgroup_max_size == 32
            && adapter.cooperative_matrix_properties().iter().any(|p| {
                (p.m_size, p.n_size, p.k_size) == (16, 16, 16) && p.ab_type == wgpu::CooperativeScalarType::F16 && p.cr_type == wgpu::CooperativeScalarType::F32
            })
    }
}

/// Whether wgpu should zero each workgroup's memory before a kernel runs on this adapter: everywhere except on software
/// OpenGL (Mesa's llvmpipe through wgpu's GL backend). There naga writes the zeroing as one invocation assigning an
/// array constructor of every element (`red = float[2448](0.0, 0.0, …)`) before a barrier, which llvmpipe's
/// compiler turns into thousands of stores in a coroutine (invocations suspend at each barrier): compiling one
/// matrix–vector pipeline took minutes, against 1-3 s without it. Every kernel writes the workgroup memory it
/// reads before reading it (tests/workgroup_memory.rs runs them on poisoned workgroup memory), so the zeroing
/// changes no result; elsewhere it stays on (a Vulkan driver zeroes natively, and browsers always do).
pub fn zeroes_workgroup_memory(info: &wgpu::AdapterInfo) -> bool {
    !is_software_gl(info)
}

/// OpenGL on a CPU (Mesa's llvmpipe): the adapter `software_gl_hint` warns about and `zeroes_workgroup_memory` spares.
pub fn is_software_gl(info: &wgpu::AdapterInfo) -> bool {
    let software = info.device_type == wgpu::DeviceType::Cpu || info.name.to_lowercase().contains("llvmpipe");
    info.backend == wgpu::Backend::Gl && software
}

/// Sort key for adapters, smallest first: the device type the caller prefers (discrete for high performance,
/// integrated otherwise), then the other GPU kind, virtual, CPU; among equal types, OpenGL last.
pub fn adapter_rank(info: &wgpu::AdapterInfo, high_performance: bool) -> (u8, u8) {
    use wgpu::DeviceType::*;
    let device = match (info.device_type, high_performance) {
        (DiscreteGpu, true) | (IntegratedGpu, false) => 0,
        (IntegratedGpu, true) | (DiscreteGpu, false) => 1,
        (VirtualGpu, _) => 2,
        (Cpu, _) => 3,
        (Other, _) => 4,
    };
    (device, u8::from(info.backend == wgpu::Backend::Gl))
}

/// The device's subgroup sizes, if it was made with subgroups.
pub(super) fn device_subgroup_sizes(device: &wgpu::Device, features: wgpu::Features, info: &wgpu::AdapterInfo) -> Option<SubgroupSizes> {
    // On the web wgpu never lists `subgroups` (its WebGPU backend does not map it): ask the device itself.
    #[cfg(target_arch = "wasm32")]
    let has = {
        let _ = features;
        device.as_webgpu().is_some_and(|d| web_subgroups::has_subgroups(d.as_ref()))
    };
    #[cfg(not(target_arch = "wasm32"))]
    let has = {
        let _ = device;
        features.contains(wgpu::Features::SUBGROUP)
    };
    (has && info.subgroup_min_size > 0 && info.subgroup_min_size <= info.subgroup_max_size)
        .then_some(SubgroupSizes { min: info.subgroup_min_size, max: info.subgroup_max_size })
}

/// Subgroups in the browser. wgpu 30's WebGPU backend leaves `subgroups` out of its feature table, so it neither
/// reports the feature nor requests it, and a shader with `enable subgroups;` then fails on the device it made.
/// While `AskForSubgroups` lives, `navigator.gpu.requestAdapter` hands out adapters whose `requestDevice` (an own
/// property for that one call, the prototype's method underneath) adds `subgroups` to the required features when
/// the adapter offers it; the device then says whether it has it (`has_subgroups`).
#[cfg(target_arch = "wasm32")]
pub(super) mod web_subgroups {
    use js_sys::{Array, Function, Reflect};
    use wasm_bindgen::prelude::*;
    use wasm_bindgen::JsCast;

    /// Property `key` of `o`, unless undefined or null.
    pub(in crate::gpu) fn get(o: &JsValue, key: &str) -> Option<JsValue> {
        Reflect::get(o, &JsValue::from_str(key)).ok().filter(|v| !v.is_undefined() && !v.is_null())
    }

    /// Whether the JS set-like `set` (a `GPUSupportedFeatures`, `WGSLLanguageFeatures`) holds `name`.
    pub(in crate::gpu) fn set_has(set: &JsValue, name: &str) -> bool {
        let Some(has) = get(set, "has").and_then(|f| f.dyn_into::<Function>().ok()) else { return false };
        has.call1(set, &JsValue::from_str(name)).is_ok_and(|v| v.is_truthy())
    }

    /// Whether a `GPUAdapter` or `GPUDevice` lists the `subgroups` feature.
    pub fn has_subgroups(o: &JsValue) -> bool {
        get(o, "features").is_some_and(|features| set_has(&features, "subgroups"))
    }

    /// Gives `adapter` (if it offers subgroups) a one-shot `requestDevice` that also requires them.
    fn ask_on(adapter: &JsValue) {
        if !has_subgroups(adapter) {
            return;
        }
        let Some(original) = get(adapter, "requestDevice").and_then(|f| f.dyn_into::<Function>().ok()) else { return };
        let target = adapter.clone();
        let once = Closure::once_into_js(move |desc: JsValue| -> JsValue {
            let _ = Reflect::delete_property::<JsValue>(target.unchecked_ref(), &JsValue::from_str("requestDevice"));
            if desc.is_object() {
                let features = get(&desc, "requiredFeatures").map(|f| Array::from(&f)).unwrap_or_default();
                features.push(&JsValue::from_str("subgroups"));
                let _ = Reflect::set(&desc, &JsValue::from_str("requiredFeatures"), &features);
            }
            original.call1(&target, &desc).unwrap_or_else(|e| js_sys::Promise::reject(&e).into())
        });
        let _ = Reflect::set(adapter, &JsValue::from_str("requestDevice"), &once);
    }

    /// See the module: wraps `navigator.gpu.requestAdapter` (an own property, removed on drop).
    pub struct AskForSubgroups {
        gpu: JsValue,
    }

    impl AskForSubgroups {
        pub fn install() -> Option<AskForSubgroups> {
            let gpu = get(&get(&js_sys::global(), "navigator")?, "gpu")?;
            let original = get(&gpu, "requestAdapter")?.dyn_into::<Function>().ok()?;
            let this = gpu.clone();
            let wrapped = Closure::<dyn FnMut(JsValue) -> JsValue>::new(move |options: JsValue| -> JsValue {
                let promise = match original.call1(&this, &options) {
                    Ok(p) => p,
                    Err(e) => return js_sys::Promise::reject(&e).into(),
                };
                let on_adapter = Closure::once_into_js(|adapter: JsValue| -> JsValue {
                    ask_on(&adapter);
                    adapter
                });
                match get(&promise, "then").and_then(|f| f.dyn_into::<Function>().ok()) {
                    Some(then) => then.call1(&promise, &on_adapter).unwrap_or(promise),
                    None => promise,
                }
            });
            Reflect::set(&gpu, &JsValue::from_str("requestAdapter"), &wrapped.into_js_value()).ok()?;
            Some(AskForSubgroups { gpu })
        }
    }

    impl Drop for AskForSubgroups {
        fn drop(&mut self) {
            let _ = Reflect::delete_property::<JsValue>(self.gpu.unchecked_ref(), &JsValue::from_str("requestAdapter"));
        }
    }
}

/// See `Gpu::software_gl_hint`.
pub fn software_gl_hint(info: &wgpu::AdapterInfo) -> Option<String> {
    is_software_gl(info).then(|| {
        format!(
            "this runs on software OpenGL ({}): no Vulkan adapter was found (or WGPU_BACKEND excluded it), and the first run here \
             spends a minute or more compiling GPU pipelines (software Vulkan: seconds). \
             Install Mesa's lavapipe: `sudo apt-get install mesa-vulkan-drivers` (Debian/Ubuntu), \
             `sudo dnf install mesa-vulkan-drivers` (Fedora), `sudo pacman -S vulkan-swrast` (Arch); \
             with a GPU, install its vendor's Vulkan driver",
            info.name
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, device_type: wgpu::DeviceType, backend: wgpu::Backend) -> wgpu::AdapterInfo {
        wgpu::AdapterInfo {
            name: name.into(),
            vendor: 0,
            device: 0,
            device_type,
            device_pci_bus_id: String::new(),
            driver: String::new(),
            driver_info: String::new(),
            backend,
            subgroup_min_size: 0,
            subgroup_max_size: 0,
            transient_saves_memory: None,
            limit_bucket: None,
        }
    }

    #[test]
    fn adapters_rank_real_gpus_first_and_opengl_last_among_equals() {
        use wgpu::{Backend::*, DeviceType::*};
        let gl_cpu = info("llvmpipe (LLVM 15.0.6, 256 bits)", Cpu, Gl);
        let vk_cpu = info("llvmpipe (LLVM 15.0.6, 256 bits)", Cpu, Vulkan);
        let gl_gpu = info("NVIDIA", DiscreteGpu, Gl);
        let vk_igpu = info("Intel", IntegratedGpu, Vulkan);
        let mut all = [&gl_cpu, &vk_cpu, &vk_igpu, &gl_gpu];
        all.sort_by_key(|i| adapter_rank(i, true));
        assert_eq!(all.map(|i| (i.device_type, i.backend)), [(DiscreteGpu, Gl), (IntegratedGpu, Vulkan), (Cpu, Vulkan), (Cpu, Gl)]);
        all.sort_by_key(|i| adapter_rank(i, false));
        assert_eq!(all[0].device_type, IntegratedGpu);
        assert!(software_gl_hint(&gl_cpu).unwrap().contains("mesa-vulkan-drivers"));
        assert!(software_gl_hint(&vk_cpu).is_none() && software_gl_hint(&gl_gpu).is_none());
    }

    #[test]
    fn only_software_opengl_skips_the_workgroup_zeroing() {
        use wgpu::{Backend::*, DeviceType::*};
        assert!(!zeroes_workgroup_memory(&info("llvmpipe (LLVM 15.0.6, 256 bits)", Cpu, Gl)));
        assert!(!zeroes_workgroup_memory(&info("llvmpipe (LLVM 19.1.7, 256 bits)", Other, Gl)));
        for (device, backend) in [(Cpu, Vulkan), (DiscreteGpu, Gl), (DiscreteGpu, Vulkan), (Cpu, BrowserWebGpu), (IntegratedGpu, Metal)] {
            assert!(zeroes_workgroup_memory(&info("any", device, backend)), "{device:?} {backend:?}");
        }
    }
}

/// Whether WGSL's packed 4×8-bit integer dot products (`dot4I8Packed`, `pack4xU8`) compile here: always through
/// naga (native); in a browser when `navigator.gpu.wgslLanguageFeatures` lists `packed_4x8_integer_dot_product`.
pub(super) fn int8_dot_available() -> bool {
    #[cfg(target_arch = "wasm32")]
    {
        use web_subgroups::{get, set_has};
        get(&js_sys::global(), "navigator")
            .and_then(|n| get(&n, "gpu"))
            .and_then(|g| get(&g, "wgslLanguageFeatures"))
            .is_some_and(|features| set_has(&features, "packed_4x8_integer_dot_product"))
    }
    #[cfg(not(target_arch = "wasm32"))]
    true
}

/// Whether the matrix–vector kernel takes integer dot products for quantized weights unless told
/// (`DIA_INT8_DOT=on|off`).
pub(super) fn int8_dot_by_default() -> bool {
    std::env::var("DIA_INT8_DOT").is_ok_and(|v| v == "on")
}

/// `Gpu::coop_m_min` unless told: `DIA_COOP_M_MIN=N` (rows), else 0 (the policy's, `kernels::linear::coop_m_min`).
pub(super) fn coop_m_min_by_default() -> u32 {
    std::env::var("DIA_COOP_M_MIN").ok().and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Whether kernels take their subgroup variants unless told (`Gpu::set_subgroups`): in the browser yes (the engine
/// asks Chrome for `subgroups`); natively only with `DIA_SUBGROUPS=on`, because on an H100 (Vulkan) the decoder
/// measured 3–6 % fewer steps/s with them (docs/performance.md, "Codec windows overlapped with the decoder, subgroup
/// reductions, q8 caches").
pub(super) fn subgroups_by_default() -> bool {
    if cfg!(target_arch = "wasm32") {
        true
    } else {
        std::env::var("DIA_SUBGROUPS").is_ok_and(|v| v == "on")
    }
}
