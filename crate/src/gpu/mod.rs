//! GPU runtime: adapter/device negotiation with typed errors, a pipeline cache, buffer helpers,
//! pre-built dispatches (bind groups made once and recorded many times) and asynchronous readback.
//!
//! Knows nothing of the model: kernels and the model build on the pieces here. This file holds the `Gpu` itself
//! (its state, its construction, its health checks) and re-exports the rest, one file per job:
//! `device` (what the adapter offers: features, limits, adapter ranking, subgroups, tensor cores), `pipelines`
//! (shader modules and the pipeline cache: kernel variants, discovery, compiling ahead, the driver's cache),
//! `memory` (buffers and their accounting), `dispatch` (parameter slots, prepared dispatches, recording) and
//! `readback` (reading results back, waiting on the GPU).

mod device;
mod dispatch;
mod memory;
mod pipelines;
mod readback;

pub use device::{adapter_rank, is_software_gl, shader_source_for_target, software_gl_hint, zeroes_workgroup_memory, Reduction, SubgroupSizes, SUBGROUPS_MARKER};
pub use dispatch::{grid_1d, record_counts, Dispatch, RecordCounts};
pub use memory::{fold_label, AllocationGroup, GpuBuffer};
pub use pipelines::{specialize, KernelVariant, PipelineSet};
pub use readback::map_read;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8};
use std::sync::{Arc, Mutex};

use device::{adapter_has_tensor_cores, coop_m_min_by_default, device_subgroup_sizes, int8_dot_available, int8_dot_by_default, subgroups_by_default};
#[cfg(target_arch = "wasm32")]
use device::web_subgroups;
use dispatch::ParamsChunk;
use memory::Allocations;
use pipelines::{Discovery, ModuleCache, VariantKey};

/// Why a GPU could not be used, or an operation on it failed.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no GPU adapter found (WebGPU/Vulkan/Metal/DX12): {0}")]
    NoAdapter(String),
    #[error("the GPU adapter '{adapter}' lacks the required feature {feature}")]
    MissingFeature { adapter: String, feature: String },
    #[error("the GPU adapter '{adapter}' limit {limit} is {available}, at least {required} is needed")]
    LimitTooSmall { adapter: String, limit: &'static str, available: u64, required: u64 },
    #[error("requesting the GPU device failed: {0}")]
    RequestDevice(String),
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),
    #[error("reading a GPU buffer back failed: {0}")]
    Readback(String),
    #[error("GPU validation error: {0}")]
    Validation(String),
    #[error("weights could not be quantized: {0}")]
    Quantization(#[from] crate::quant::QuantError),
}

/// What the caller wants from the adapter.
#[derive(Debug, Clone)]
pub struct GpuOptions {
    /// Prefer a high-performance adapter (discrete GPU).
    pub high_performance: bool,
    /// Smallest storage-buffer binding the caller needs (bytes): the largest single weight matrix.
    pub min_storage_binding: u64,
    /// Use `shader-f16` if the adapter has it (optional speed-up; never required).
    pub want_shader_f16: bool,
    /// Use tensor cores through wgpu's experimental cooperative matrices where the adapter has them (native
    /// only; see `Gpu::tensor_cores`). Off gives the plain kernels everywhere (A/B measurements).
    pub want_tensor_cores: bool,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions { high_performance: true, min_storage_binding: 128 << 20, want_shader_f16: true, want_tensor_cores: true }
    }
}

/// A route a policy picks unless forced on or off (an environment variable `on|off` or a setter).
struct Forced(AtomicU8);

impl Forced {
    fn from_env(name: &str) -> Forced {
        Forced(AtomicU8::new(match std::env::var(name).as_deref() {
            Ok("on") => 1,
            Ok("off") => 2,
            _ => 0,
        }))
    }

    /// Some(true) forced on, Some(false) forced off, None: the policy's.
    fn get(&self) -> Option<bool> {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    }

    fn set(&self, on: Option<bool>) {
        self.0.store(on.map_or(0, |on| if on { 1 } else { 2 }), std::sync::atomic::Ordering::Relaxed);
    }
}

/// A device plus everything the kernels share: pipeline cache and wait counter.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub features: wgpu::Features,
    pub limits: wgpu::Limits,
    /// Whether pipelines ask wgpu to zero workgroup memory at the start of each workgroup (WebGPU's default): off on
    /// software OpenGL (`zeroes_workgroup_memory`), where it costs minutes of shader compilation.
    zero_workgroup_memory: bool,
    /// The device's subgroup sizes, when it was made with subgroups (`SUBGROUP` natively, the browser's
    /// `subgroups` feature on the web).
    subgroup_sizes: Option<SubgroupSizes>,
    /// Whether kernels take their subgroup variants (`reduction`): `subgroups_by_default`, or `set_subgroups`.
    subgroups_on: AtomicBool,
    /// Whether kernels may multiply in f16 where the device has `shader-f16` (see `f16_arithmetic`).
    f16_arithmetic: AtomicBool,
    /// Whether the matrix–vector kernel takes its f16-arithmetic variant (see `f16_matvec`): opt-in.
    f16_matvec: AtomicBool,
    /// Whether the WGSL implementation has `dot4I8Packed` (see `int8_dot`).
    int8_dot_available: bool,
    /// Whether the matrix–vector kernel takes integer dot products for quantized weights (see `int8_dot`).
    int8_dot: AtomicBool,
    /// Whether the matrix–vector kernel loads each round's weights during the round before (see `matvec_prefetch`).
    matvec_prefetch: AtomicBool,
    /// Whether decoder steps with q8 KV caches take the appending decode (see `q8_cache_append`).
    q8_cache_append: AtomicBool,
    /// Whether the matrix–vector kernel reads quantized rows in 8-column chunks (see `matvec_cols8`).
    /// 1 always, 2 never.
    matvec_cols8: Forced,
    /// Rows from which `linear`'s schedule takes tensor cores (see `coop_m_min`); 0: the policy's.
    coop_m_min: AtomicU32,
    /// Whether a projection with a fused norm goes to tensor cores like any other (see `coop_norm_linear`).
    coop_norm_linear: AtomicBool,
    /// Whether decoder steps fold the cross-attention's query and output projections into per-text tables (see
    /// `cross_tables`).
    cross_tables: Forced,
    /// Whether decoder steps combine the self-attention's split partials inside the output projection (see
    /// `attention_o_fused`).
    attention_o_fused: AtomicBool,
    /// `pipeline`'s string keys.
    pipelines: Mutex<HashMap<String, Arc<wgpu::ComputePipeline>>>,
    /// `variant_pipeline`'s typed keys.
    variants: Mutex<HashMap<Box<dyn VariantKey>, Arc<wgpu::ComputePipeline>>>,
    modules: Mutex<ModuleCache>,
    /// Compute pipelines created so far (`pipeline_compiles`), and their labels in order (`compiled_labels`).
    compiles: AtomicU64,
    compiled_labels: Mutex<Vec<String>>,
    /// While set (`begin_discovery`), pipeline misses are noted instead of compiled (see `Discovery`).
    discovery: Mutex<Option<Discovery>>,
    /// The driver's pipeline cache every compile passes, once `use_pipeline_cache` opened one (native Vulkan).
    pipeline_cache: Mutex<Option<Arc<wgpu::PipelineCache>>>,
    /// Number of times the CPU blocked on (or awaited) the GPU: readbacks and explicit waits.
    waits: AtomicU64,
    /// Why the device was lost, once it is.
    lost: Arc<Mutex<Option<String>>>,
    /// The first uncaptured wgpu error (validation, out of memory) not reported yet: wgpu's default handler
    /// would panic on it; kept here, it fails the next check with a typed error.
    uncaptured: Arc<Mutex<Option<String>>>,
    allocations: Mutex<Allocations>,
    /// `shared_scratch` buffers by key, alive while some dispatch still binds them.
    scratch: Mutex<HashMap<String, std::sync::Weak<wgpu::Buffer>>>,
    /// `reusable_buffer` buffers by label, kept between users (strongly held here).
    reusable: Mutex<HashMap<String, Vec<Arc<wgpu::Buffer>>>>,
    /// The uniform buffer that `dispatch` is packing parameters into (see `params_slot`).
    params: Mutex<ParamsChunk>,
}

impl Gpu {
    /// Negotiates an adapter and a device. Limits are raised to what the adapter offers so large
    /// weight matrices fit one binding; a too-small adapter is a typed error, not a later crash.
    pub async fn new(opts: GpuOptions) -> Result<Gpu, GpuError> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        if std::env::var_os("WGPU_BACKEND").is_none() {
            desc.backends = wgpu::Backends::all();
        }
        let backends = desc.backends;
        let instance = wgpu::Instance::new(desc);
        // Natively, rank the adapters ourselves: a real GPU first, and among equals any backend before OpenGL
        // (software OpenGL, llvmpipe, compiles this model's pipelines far more slowly than software Vulkan, lavapipe).
        #[cfg(not(target_arch = "wasm32"))]
        {
            let mut adapters = instance.enumerate_adapters(backends).await;
            adapters.sort_by_key(|a| adapter_rank(&a.get_info(), opts.high_performance));
            if let Some(adapter) = adapters.into_iter().next() {
                return Self::from_adapter(adapter, opts).await;
            }
        }
        #[cfg(target_arch = "wasm32")]
        let _ = backends;
        // Until the adapter is made: its `requestDevice` asks for `subgroups` where offered (see `web_subgroups`).
        #[cfg(target_arch = "wasm32")]
        let _ask_for_subgroups = web_subgroups::AskForSubgroups::install();
        let power = if opts.high_performance {
            wgpu::PowerPreference::HighPerformance
        } else {
            wgpu::PowerPreference::LowPower
        };
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: power,
                force_fallback_adapter: false,
                compatible_surface: None,
                apply_limit_buckets: false,
            })
            .await
            .map_err(|e| GpuError::NoAdapter(e.to_string()))?;
        Self::from_adapter(adapter, opts).await
    }

    /// Blocking constructor for native programs and tests.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking(opts: GpuOptions) -> Result<Gpu, GpuError> {
        pollster::block_on(Self::new(opts))
    }

    pub async fn from_adapter(adapter: wgpu::Adapter, opts: GpuOptions) -> Result<Gpu, GpuError> {
        let info = adapter.get_info();
        let have = adapter.limits();
        let name = info.name.clone();
        if have.max_storage_buffer_binding_size < opts.min_storage_binding {
            return Err(GpuError::LimitTooSmall {
                adapter: name,
                limit: "max_storage_buffer_binding_size",
                available: have.max_storage_buffer_binding_size,
                required: opts.min_storage_binding,
            });
        }
        if have.max_storage_buffers_per_shader_stage < 8 {
            return Err(GpuError::LimitTooSmall {
                adapter: name,
                limit: "max_storage_buffers_per_shader_stage",
                available: have.max_storage_buffers_per_shader_stage as u64,
                required: 8,
            });
        }
        if have.max_compute_invocations_per_workgroup < 256 {
            return Err(GpuError::LimitTooSmall {
                adapter: name,
                limit: "max_compute_invocations_per_workgroup",
                available: have.max_compute_invocations_per_workgroup as u64,
                required: 256,
            });
        }
        let mut features = wgpu::Features::empty();
        if opts.want_shader_f16 && adapter.features().contains(wgpu::Features::SHADER_F16) {
            features |= wgpu::Features::SHADER_F16;
        }
        // Lets compiled pipelines be kept across runs (`use_pipeline_cache`); Vulkan offers it, browsers do not.
        if adapter.features().contains(wgpu::Features::PIPELINE_CACHE) {
            features |= wgpu::Features::PIPELINE_CACHE;
        }
        // Subgroup variants of the reductions (`Reduction::Subgroup`); natively only (wgpu's WebGPU backend neither
        // reports nor requests `subgroups`: `web_subgroups` asks the browser directly).
        if adapter.features().contains(wgpu::Features::SUBGROUP) {
            features |= wgpu::Features::SUBGROUP;
        }
        let tensor_cores = opts.want_tensor_cores && features.contains(wgpu::Features::SHADER_F16) && adapter_has_tensor_cores(&adapter);
        if tensor_cores {
            features |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        }
        // Ask for the adapter's own limits: the defaults cap bindings at 128 MiB.
        let mut limits = wgpu::Limits::downlevel_defaults().using_resolution(have.clone());
        limits.max_storage_buffer_binding_size = have.max_storage_buffer_binding_size;
        limits.max_buffer_size = have.max_buffer_size;
        limits.max_storage_buffers_per_shader_stage = have.max_storage_buffers_per_shader_stage;
        limits.max_compute_invocations_per_workgroup = have.max_compute_invocations_per_workgroup;
        limits.max_compute_workgroup_size_x = have.max_compute_workgroup_size_x;
        limits.max_compute_workgroup_size_y = have.max_compute_workgroup_size_y;
        limits.max_compute_workgroup_storage_size = have.max_compute_workgroup_storage_size;
        limits.max_compute_workgroups_per_dimension = have.max_compute_workgroups_per_dimension;
        limits.max_bind_groups = have.max_bind_groups.min(4);
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("dia-webgpu"),
                required_features: features,
                required_limits: limits.clone(),
                // SAFETY: wgpu marks cooperative matrices experimental (its shader translation has had bugs, e.g.
                // naga 30 drops a computed `coopStore` stride); our cooperative-matrix kernels are translated on the
                // host in tests (tests/linear_coop.rs, tests/dac_cl.rs) and checked against the plain kernels on a GPU that has them.
                experimental_features: if tensor_cores { unsafe { wgpu::ExperimentalFeatures::enabled() } } else { wgpu::ExperimentalFeatures::disabled() },
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| GpuError::RequestDevice(e.to_string()))?;
        let lost = Arc::new(Mutex::new(None));
        let lost_cb = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            let reason = match reason {
                wgpu::DeviceLostReason::Destroyed => "destroyed",
                wgpu::DeviceLostReason::Unknown => "unknown reason",
            };
            lost_cb.lock().unwrap().get_or_insert_with(|| if msg.is_empty() { reason.to_string() } else { format!("{reason}: {msg}") });
        });
        // Errors of a lost device never come here (wgpu reports them through the lost callback), others do.
        let uncaptured = Arc::new(Mutex::new(None));
        let first_error = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            first_error.lock().unwrap().get_or_insert_with(|| e.to_string());
        }));
        Ok(Gpu {
            zero_workgroup_memory: zeroes_workgroup_memory(&info),
            subgroup_sizes: device_subgroup_sizes(&device, features, &info),
            subgroups_on: AtomicBool::new(subgroups_by_default()),
            f16_arithmetic: AtomicBool::new(match std::env::var("DIA_F16_ARITH").as_deref() {
                Ok("off") => false,
                Ok("on") => true,
                // CPU adapters emulate f16: lavapipe compiles a quantized f16 small-M pipeline 15–120× slower
                // (q8, M = 2: 16 s; M = 16: 132 s against 1.1 s in f32) and gains nothing at run time.
                _ => info.device_type != wgpu::DeviceType::Cpu,
            }),
            f16_matvec: AtomicBool::new(std::env::var("DIA_F16_ARITH").is_ok_and(|v| v == "on")),
            int8_dot_available: int8_dot_available(),
            int8_dot: AtomicBool::new(int8_dot_by_default()),
            matvec_prefetch: AtomicBool::new(std::env::var("DIA_MATVEC_PREFETCH").is_ok_and(|v| v == "on")),
            q8_cache_append: AtomicBool::new(std::env::var("DIA_Q8_APPEND").is_ok_and(|v| v == "on")),
            matvec_cols8: Forced::from_env("DIA_MATVEC_COLS8"),
            coop_m_min: AtomicU32::new(coop_m_min_by_default()),
            coop_norm_linear: AtomicBool::new(!std::env::var("DIA_COOP_NORM_LINEAR").is_ok_and(|v| v == "off")),
            cross_tables: Forced::from_env("DIA_CROSS_TABLES"),
            attention_o_fused: AtomicBool::new(std::env::var("DIA_ATTENTION_O").is_ok_and(|v| v == "fused")),
            device,
            queue,
            info,
            features,
            limits,
            pipelines: Mutex::new(HashMap::new()),
            variants: Mutex::new(HashMap::new()),
            modules: Mutex::new(ModuleCache::default()),
            compiles: AtomicU64::new(0),
            compiled_labels: Mutex::new(Vec::new()),
            discovery: Mutex::new(None),
            pipeline_cache: Mutex::new(None),
            waits: AtomicU64::new(0),
            lost,
            uncaptured,
            allocations: Mutex::new(Allocations::default()),
            scratch: Mutex::new(HashMap::new()),
            reusable: Mutex::new(HashMap::new()),
            params: Mutex::new(ParamsChunk::default()),
        })
    }

    /// Error if the device has been lost since creation. Natively a loss is noticed when the device is polled
    /// (every wait does), in the browser when `GPUDevice.lost` settles.
    pub fn check_lost(&self) -> Result<(), GpuError> {
        match self.lost.lock().unwrap().as_ref() {
            Some(m) => Err(GpuError::DeviceLost(m.clone())),
            None => Ok(()),
        }
    }

    /// Destroys the device (its memory is freed, every later operation on it fails) and records the loss at once:
    /// wgpu's lost callback comes only once the work in flight has drained (in Chromium on SwiftShader, ~20 s
    /// after a `destroy` with a few decoder steps queued), and until then a failed readback could not tell why.
    pub fn destroy(&self) {
        self.lost.lock().unwrap().get_or_insert_with(|| "destroyed".to_string());
        self.device.destroy();
    }

    /// Whether an uncaptured GPU error (validation, out of memory) is waiting to be reported.
    pub fn has_uncaptured_error(&self) -> bool {
        self.uncaptured.lock().unwrap().is_some()
    }

    /// `check_lost`, then the uncaptured GPU error recorded since the last check, if any (reported once).
    pub fn check(&self) -> Result<(), GpuError> {
        self.check_lost()?;
        match self.uncaptured.lock().unwrap().take() {
            Some(e) => Err(GpuError::Validation(e)),
            None => Ok(()),
        }
    }
}
