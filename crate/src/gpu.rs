//! GPU runtime: adapter/device negotiation with typed errors, a pipeline cache, buffer helpers,
//! pre-built dispatches (bind groups made once and recorded many times) and asynchronous readback.
//!
//! Knows nothing of the model: kernels and the model build on the pieces here.

use std::any::Any;
use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

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

/// One compiled specialisation of a kernel family: a typed value (`#[derive(Clone, Copy, Debug, PartialEq, Eq,
/// Hash)]`: weight format × epilogue × shape × …) that is both the input of the family's WGSL generator and the
/// key of its pipeline in `Gpu::variant_pipeline`, so the key cannot drift from what was generated.
pub trait KernelVariant: Copy + Eq + Hash + Debug + Send + Sync + 'static {
    /// The entry point the pipeline runs.
    fn entry_point(&self) -> &'static str;
    /// The complete WGSL source of this variant.
    fn source(&self) -> String;
}

/// A `KernelVariant` of any type as a map key (equal only to an equal value of the same type).
trait VariantKey: Send + Sync {
    fn as_any(&self) -> &dyn Any;
    fn eq_key(&self, other: &dyn VariantKey) -> bool;
    fn hash_key(&self, state: &mut dyn Hasher);
}

impl<V: KernelVariant> VariantKey for V {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn eq_key(&self, other: &dyn VariantKey) -> bool {
        other.as_any().downcast_ref::<V>() == Some(self)
    }
    fn hash_key(&self, mut state: &mut dyn Hasher) {
        std::any::TypeId::of::<V>().hash(&mut state);
        self.hash(&mut state);
    }
}

impl PartialEq for dyn VariantKey {
    fn eq(&self, other: &Self) -> bool {
        self.eq_key(other)
    }
}

impl Eq for dyn VariantKey {}

impl Hash for dyn VariantKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.hash_key(state)
    }
}

/// Compiled shader code, shared by every key that yields the same source: a module per distinct source text,
/// a pipeline per (module, entry point), so several entry points of one source are parsed and validated once.
#[derive(Default)]
struct ModuleCache {
    by_source: HashMap<String, usize>,
    modules: Vec<wgpu::ShaderModule>,
    pipelines: HashMap<(usize, String), Arc<wgpu::ComputePipeline>>,
}

/// A pipeline that `pipeline` or `variant_pipeline` was asked for during discovery: what it would have compiled.
struct PipelineRequest {
    key: RequestKey,
    label: String,
    source: String,
    entry: String,
}

enum RequestKey {
    Named(String),
    Variant(Box<dyn VariantKey>),
}

/// The distinct pipelines some dispatch building asked for (`Gpu::end_discovery`), compiled already or not.
pub struct PipelineSet {
    requests: Vec<PipelineRequest>,
}

impl PipelineSet {
    pub fn len(&self) -> usize {
        self.requests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// Every (entry point, WGSL source) of the set, in the order they were asked for: what identifies the compiled
    /// code (to name a cache of it).
    pub fn sources(&self) -> impl Iterator<Item = (&str, &str)> {
        self.requests.iter().map(|r| (r.entry.as_str(), r.source.as_str()))
    }

    /// Adds `other`'s requests that this set lacks.
    pub fn merge(&mut self, other: PipelineSet) {
        self.requests.extend(other.requests);
    }
}

/// Discovery state (`Gpu::begin_discovery`): the requests so far and the placeholder handed out for them.
struct Discovery {
    requests: Vec<PipelineRequest>,
    named: std::collections::HashSet<String>,
    variants: std::collections::HashSet<Box<dyn VariantKey>>,
    placeholder: Arc<wgpu::ComputePipeline>,
    empty_group: wgpu::BindGroup,
    uniform: Arc<wgpu::Buffer>,
    /// What `buffer`, `upload`, `reusable_buffer` and `shared_scratch` hand out meanwhile: 16 real bytes behind any
    /// size (nothing is bound or run in discovery, and `write` skips them), so discovering allocates no memory.
    stand_in: wgpu::Buffer,
}

/// One source's module and the pipelines compiled from it by `compile_all`.
struct CompiledJob {
    module: wgpu::ShaderModule,
    entries: Vec<(String, Arc<wgpu::ComputePipeline>)>,
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

/// Parameters of dispatches are packed into shared uniform buffers of `PARAMS_CHUNK` bytes, one slot each at the
/// adapter's uniform offset alignment, instead of one buffer per dispatch: a generation builds several hundred
/// dispatches, and in a browser each buffer created costs a round trip (Dawn under Node on an H100: ~0.9 ms per
/// dispatch built, 140 ms of every generation's time to first audio). Chunks are kept and refilled once no
/// dispatch binds them (a refill is written through the queue, after the work that read the old values), so
/// after the first generation no chunk is allocated and memory stays flat.
#[derive(Default)]
struct ParamsChunk {
    /// Every chunk kept; the one being filled is `chunks[current]`.
    chunks: Vec<Arc<wgpu::Buffer>>,
    current: usize,
    used: u64,
}

const PARAMS_CHUNK: u64 = 64 << 10;

/// Bytes held by the live buffers of `buffer`/`upload`/`uniform`. Each buffer is registered with a weak
/// handle and its bytes are given back once its last handle is gone (noticed at the next allocation or
/// query, so the peak taken at each allocation is exact). Bytes are also kept per allocation group (the buffer's
/// label with its numeric path parts folded, `fold_label`), and the groups' bytes at the peak are kept with it.
#[derive(Default)]
struct Allocations {
    /// (buffer, bytes, group index).
    live: Vec<(Weak<wgpu::Buffer>, u64, usize)>,
    bytes: u64,
    peak: u64,
    /// Group names and their index in `group_bytes` / `peak_groups`.
    groups: Vec<String>,
    group_index: HashMap<String, usize>,
    /// Bytes and live buffers per group now.
    group_bytes: Vec<(u64, u64)>,
    /// `group_bytes` when `peak` was reached.
    peak_groups: Vec<(u64, u64)>,
}

impl Allocations {
    fn sweep(&mut self) {
        let (bytes, groups) = (&mut self.bytes, &mut self.group_bytes);
        self.live.retain(|&(ref buf, size, group)| {
            let alive = buf.strong_count() > 0;
            if !alive {
                *bytes -= size;
                groups[group].0 -= size;
                groups[group].1 -= 1;
            }
            alive
        });
    }

    fn add(&mut self, buf: Weak<wgpu::Buffer>, size: u64, label: &str) {
        let name = fold_label(label);
        let group = match self.group_index.get(&name) {
            Some(&g) => g,
            None => {
                self.groups.push(name.clone());
                self.group_bytes.push((0, 0));
                self.group_index.insert(name, self.groups.len() - 1);
                self.groups.len() - 1
            }
        };
        self.live.push((buf, size, group));
        self.bytes += size;
        self.group_bytes[group].0 += size;
        self.group_bytes[group].1 += 1;
        if self.bytes > self.peak {
            self.peak = self.bytes;
            self.peak_groups.clone_from(&self.group_bytes);
        }
    }

    fn mark_peak(&mut self) {
        self.peak = self.bytes;
        self.peak_groups.clone_from(&self.group_bytes);
    }

    /// Non-empty groups of `by_group` (indexed like `groups`), largest first.
    fn breakdown(&self, by_group: &[(u64, u64)]) -> Vec<AllocationGroup> {
        let mut out: Vec<AllocationGroup> = by_group
            .iter()
            .enumerate()
            .filter(|(_, &(bytes, _))| bytes > 0)
            .map(|(g, &(bytes, buffers))| AllocationGroup { label: self.groups[g].clone(), bytes, buffers })
            .collect();
        out.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.label.cmp(&b.label)));
        out
    }
}

/// Buffers of one allocation group (`Gpu::peak_breakdown`): every buffer whose label folds to `label`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AllocationGroup {
    pub label: String,
    pub bytes: u64,
    pub buffers: u64,
}

/// A buffer label with every purely numeric dot-separated part replaced by `*` ("kv_k.12" → "kv_k.*",
/// "model.decoder.layers.3.mlp.down_proj.weight" → "model.decoder.layers.*.mlp.down_proj.weight"), so that
/// per-layer buffers count as one group while "conv1" and "conv2" stay apart.
pub fn fold_label(label: &str) -> String {
    label.split('.').map(|part| if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) { "*" } else { part }).collect::<Vec<_>>().join(".")
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

    /// What a failed GPU operation (a readback, a wait) means: `DeviceLost` if the device is lost — the operations
    /// it ends fail a moment before the loss is reported, so this lets the report arrive (natively a wait for the
    /// queue, in the browser up to `LOSS_REPORT_WAIT_MS`) — else `failure`.
    pub async fn lost_or(&self, failure: GpuError) -> GpuError {
        #[cfg(not(target_arch = "wasm32"))]
        let _ = self.device.poll(wgpu::PollType::wait_indefinitely());
        #[cfg(target_arch = "wasm32")]
        for _ in 0..LOSS_REPORT_WAIT_MS / 10 {
            if self.lost.lock().unwrap().is_some() {
                break;
            }
            sleep_ms(10).await;
        }
        match self.check_lost() {
            Err(lost) => lost,
            Ok(()) => failure,
        }
    }

    /// How many times the CPU has waited on the GPU so far.
    pub fn wait_count(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
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

    /// Bytes of GPU memory held now by buffers made through `buffer`, `upload` and `uniform` (sizes as
    /// allocated, 16-byte padding included; readback staging buffers are not counted).
    pub fn allocated_bytes(&self) -> u64 {
        let mut a = self.allocations.lock().unwrap();
        a.sweep();
        a.bytes
    }

    /// The most `allocated_bytes` has been since the device was made or `reset_peak_allocated`.
    pub fn peak_allocated_bytes(&self) -> u64 {
        self.allocations.lock().unwrap().peak
    }

    /// Starts a new peak measurement from what is allocated now.
    pub fn reset_peak_allocated(&self) {
        let mut a = self.allocations.lock().unwrap();
        a.sweep();
        a.mark_peak();
    }

    /// What `allocated_bytes` was made of when it reached `peak_allocated_bytes`: bytes and buffers per allocation
    /// group (labels folded by `fold_label`), largest first. Their bytes sum to the peak.
    pub fn peak_breakdown(&self) -> Vec<AllocationGroup> {
        let a = self.allocations.lock().unwrap();
        a.breakdown(&a.peak_groups)
    }

    /// What `allocated_bytes` is made of now, as `peak_breakdown`.
    pub fn allocated_breakdown(&self) -> Vec<AllocationGroup> {
        let mut a = self.allocations.lock().unwrap();
        a.sweep();
        a.breakdown(&a.group_bytes)
    }

    fn track(&self, label: &str, buf: wgpu::Buffer) -> Arc<wgpu::Buffer> {
        let size = buf.size();
        let buf = Arc::new(buf);
        let mut a = self.allocations.lock().unwrap();
        a.sweep();
        a.add(Arc::downgrade(&buf), size, label);
        buf
    }

    /// Compiles (once) and returns the compute pipeline for `key`; `source` is only called on a miss.
    pub fn pipeline(&self, key: &str, entry: &str, source: impl FnOnce() -> String) -> Arc<wgpu::ComputePipeline> {
        if let Some(d) = self.discovery.lock().unwrap().as_mut() {
            if d.named.insert(key.to_string()) {
                d.requests.push(PipelineRequest { key: RequestKey::Named(key.to_string()), label: key.to_string(), source: source(), entry: entry.to_string() });
            }
            return d.placeholder.clone();
        }
        let mut cache = self.pipelines.lock().unwrap();
        if let Some(p) = cache.get(key) {
            return p.clone();
        }
        let p = self.compile(key, source(), entry);
        cache.insert(key.to_string(), p.clone());
        p
    }

    /// The compute pipeline of a typed kernel variant, generated and compiled on the first request.
    pub fn variant_pipeline<V: KernelVariant>(&self, variant: V) -> Arc<wgpu::ComputePipeline> {
        if let Some(d) = self.discovery.lock().unwrap().as_mut() {
            if !d.variants.contains(&variant as &dyn VariantKey) {
                d.variants.insert(Box::new(variant));
                let (label, source, entry) = (format!("{variant:?}"), variant.source(), variant.entry_point().to_string());
                d.requests.push(PipelineRequest { key: RequestKey::Variant(Box::new(variant)), label, source, entry });
            }
            return d.placeholder.clone();
        }
        let mut cache = self.variants.lock().unwrap();
        if let Some(p) = cache.get(&variant as &dyn VariantKey) {
            return p.clone();
        }
        let p = self.compile(&format!("{variant:?}"), variant.source(), variant.entry_point());
        cache.insert(Box::new(variant), p.clone());
        p
    }

    /// The pipeline running `entry` of `source`, through the module cache.
    fn compile(&self, label: &str, source: String, entry: &str) -> Arc<wgpu::ComputePipeline> {
        let mut cache = self.modules.lock().unwrap();
        let ModuleCache { by_source, modules, pipelines } = &mut *cache;
        let module = match by_source.get(&source) {
            Some(&i) => i,
            None => {
                modules.push(self.shader_module(label, &source));
                by_source.insert(source, modules.len() - 1);
                modules.len() - 1
            }
        };
        let driver_cache = self.pipeline_cache.lock().unwrap().clone();
        pipelines
            .entry((module, entry.to_string()))
            .or_insert_with(|| Arc::new(self.compute_pipeline(label, &modules[module], entry, driver_cache.as_deref())))
            .clone()
    }

    fn shader_module(&self, label: &str, source: &str) -> wgpu::ShaderModule {
        #[cfg(not(target_arch = "wasm32"))]
        dump_wgsl(label, source);
        self.device.create_shader_module(wgpu::ShaderModuleDescriptor { label: Some(label), source: wgpu::ShaderSource::Wgsl(shader_source_for_target(source)) })
    }

    /// Creates (compiles) one compute pipeline: the only place that does, so `pipeline_compiles` counts them all.
    fn compute_pipeline(&self, label: &str, module: &wgpu::ShaderModule, entry: &str, driver_cache: Option<&wgpu::PipelineCache>) -> wgpu::ComputePipeline {
        self.compiles.fetch_add(1, Ordering::Relaxed);
        self.compiled_labels.lock().unwrap().push(label.to_string());
        self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(label),
            layout: None,
            module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions { zero_initialize_workgroup_memory: self.zero_workgroup_memory, ..Default::default() },
            cache: driver_cache,
        })
    }

    /// Compute pipelines compiled so far on this device (each distinct (source, entry) once): a generation that
    /// finds everything compiled adds none.
    pub fn pipeline_compiles(&self) -> u64 {
        self.compiles.load(Ordering::Relaxed)
    }

    /// The labels (kernel keys) of the pipelines compiled so far, in order: which ones a generation compiled.
    pub fn compiled_labels(&self) -> Vec<String> {
        self.compiled_labels.lock().unwrap().clone()
    }

    /// Starts noting the pipelines that dispatch building asks for instead of compiling them: until
    /// `end_discovery`, `pipeline`/`variant_pipeline` record each distinct request (compiled already or not) and
    /// return a placeholder pipeline; every dispatch (`dispatch`) binds nothing and records nothing, and buffers are
    /// stand-ins that hold no memory. So the real code
    /// that builds a generation's dispatches lists exactly the pipelines it needs (the list cannot drift from it),
    /// and `compile_all` then compiles them together (in parallel natively). Work submitted meanwhile computes
    /// nothing: build dispatches in discovery, never generate. One discovery at a time per device.
    pub fn begin_discovery(&self) {
        let layout = self.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some("placeholder"), entries: &[] });
        let pipeline_layout = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("placeholder"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("placeholder"),
            source: wgpu::ShaderSource::Wgsl("@compute @workgroup_size(1) fn main() {}".into()),
        });
        let placeholder = Arc::new(self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("placeholder"),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        }));
        let empty_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some("placeholder"), layout: &layout, entries: &[] });
        let uniform = Arc::new(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("placeholder"),
            size: 16,
            usage: wgpu::BufferUsages::UNIFORM,
            mapped_at_creation: false,
        }));
        let stand_in = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("stand-in"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        *self.discovery.lock().unwrap() =
            Some(Discovery { requests: Vec::new(), named: Default::default(), variants: Default::default(), placeholder, empty_group, uniform, stand_in });
    }

    /// In discovery, a stand-in for a buffer of `bytes` (see `Discovery::stand_in`).
    fn stand_in(&self, bytes: u64) -> Option<GpuBuffer> {
        // A handle of its own (to the same 16 bytes): kernels that tell buffers apart (`Arc::ptr_eq`) choose as they
        // would with real ones.
        self.discovery.lock().unwrap().as_ref().map(|d| GpuBuffer { buf: Arc::new(d.stand_in.clone()), offset: 0, size: bytes.max(4) })
    }

    /// Whether `begin_discovery` is in effect.
    pub fn discovering(&self) -> bool {
        self.discovery.lock().unwrap().is_some()
    }

    /// Ends `begin_discovery` and returns the distinct pipelines asked for meanwhile (compiled already or not).
    pub fn end_discovery(&self) -> PipelineSet {
        PipelineSet { requests: self.discovery.lock().unwrap().take().map(|d| d.requests).unwrap_or_default() }
    }

    /// Compiles every pipeline of `set` not compiled yet, natively on up to `threads` threads (naga's translation
    /// and the driver's compiler are CPU work, and wgpu's device may be used from several threads), in the browser
    /// one after the other. Returns how many pipelines were compiled.
    pub fn compile_all(&self, set: PipelineSet, threads: usize) -> usize {
        // One job per distinct source: its module is parsed and validated once for all its entry points.
        let mut jobs: Vec<(String, Vec<PipelineRequest>)> = Vec::new();
        let mut by_source: HashMap<String, usize> = HashMap::new();
        for r in set.requests {
            let i = *by_source.entry(r.source.clone()).or_insert_with(|| {
                jobs.push((r.source.clone(), Vec::new()));
                jobs.len() - 1
            });
            jobs[i].1.push(r);
        }
        let known: HashMap<String, wgpu::ShaderModule> = {
            let cache = self.modules.lock().unwrap();
            jobs.iter().filter_map(|(src, _)| cache.by_source.get(src).map(|&m| (src.clone(), cache.modules[m].clone()))).collect()
        };
        let driver_cache = self.pipeline_cache.lock().unwrap().clone();
        let run = |(source, requests): &(String, Vec<PipelineRequest>)| -> CompiledJob {
            let module = known.get(source).cloned().unwrap_or_else(|| self.shader_module(&requests[0].label, source));
            let mut entries: HashMap<&str, Arc<wgpu::ComputePipeline>> = HashMap::new();
            for r in requests {
                if !entries.contains_key(r.entry.as_str()) && !self.module_has_pipeline(source, &r.entry) {
                    entries.insert(&r.entry, Arc::new(self.compute_pipeline(&r.label, &module, &r.entry, driver_cache.as_deref())));
                }
            }
            let entries = entries.into_iter().map(|(e, p)| (e.to_string(), p)).collect();
            CompiledJob { module, entries }
        };
        let compiled: Vec<CompiledJob> = {
            #[cfg(not(target_arch = "wasm32"))]
            {
                let next = AtomicUsize::new(0);
                let results: Mutex<Vec<(usize, CompiledJob)>> = Mutex::new(Vec::with_capacity(jobs.len()));
                let workers = threads.clamp(1, jobs.len().max(1));
                std::thread::scope(|scope| {
                    for _ in 0..workers {
                        scope.spawn(|| loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(job) = jobs.get(i) else { break };
                            let done = run(job);
                            results.lock().unwrap().push((i, done));
                        });
                    }
                });
                let mut results = results.into_inner().unwrap();
                results.sort_by_key(|(i, _)| *i);
                results.into_iter().map(|(_, c)| c).collect()
            }
            #[cfg(target_arch = "wasm32")]
            {
                let _ = (threads, AtomicUsize::new(0));
                jobs.iter().map(run).collect()
            }
        };
        let mut count = 0;
        // The order `pipeline` and `variant_pipeline` take these locks in (they lock `modules` inside `compile`).
        let mut named = self.pipelines.lock().unwrap();
        let mut variants = self.variants.lock().unwrap();
        let mut modules = self.modules.lock().unwrap();
        for ((source, requests), done) in jobs.into_iter().zip(compiled) {
            count += done.entries.len();
            let m = match modules.by_source.get(&source) {
                Some(&m) => m,
                None => {
                    modules.modules.push(done.module);
                    let m = modules.modules.len() - 1;
                    modules.by_source.insert(source, m);
                    m
                }
            };
            for (entry, p) in done.entries {
                modules.pipelines.entry((m, entry)).or_insert(p);
            }
            for r in requests {
                let p = modules.pipelines[&(m, r.entry)].clone();
                match r.key {
                    RequestKey::Named(k) => {
                        named.entry(k).or_insert(p);
                    }
                    RequestKey::Variant(v) => {
                        variants.entry(v).or_insert(p);
                    }
                }
            }
        }
        count
    }

    fn module_has_pipeline(&self, source: &str, entry: &str) -> bool {
        let cache = self.modules.lock().unwrap();
        cache.by_source.get(source).is_some_and(|&m| cache.pipelines.contains_key(&(m, entry.to_string())))
    }

    /// Has every later compile go through a driver pipeline cache started from `data` (a previous
    /// `pipeline_cache_data`, or None for an empty one), so pipelines compiled in an earlier run are found
    /// instead of compiled again. False (and nothing changes) where the device lacks `PIPELINE_CACHE`.
    ///
    /// Data the driver cannot use (another driver or wgpu version) gives an empty cache (wgpu's `fallback`); wgpu
    /// checks only a header, not the contents, so callers must hand over data exactly as `pipeline_cache_data`
    /// returned it (`pipeline::read_cache_file` checks the SHA-256 `write_cache_file` stored with it).
    pub fn use_pipeline_cache(&self, data: Option<&[u8]>) -> bool {
        if !self.features.contains(wgpu::Features::PIPELINE_CACHE) {
            return false;
        }
        // SAFETY: `data` comes from `PipelineCache::get_data` of an earlier run (the caller's contract, checked by
        // a digest where it was stored); wgpu rejects data of another adapter, driver or wgpu version.
        let cache = unsafe { self.device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor { label: Some("dia-webgpu"), data, fallback: true }) };
        *self.pipeline_cache.lock().unwrap() = Some(Arc::new(cache));
        true
    }

    /// The driver pipeline cache's contents (to store for the next run), if one is in use and the backend gives them.
    pub fn pipeline_cache_data(&self) -> Option<Vec<u8>> {
        self.pipeline_cache.lock().unwrap().as_ref()?.get_data()
    }

    /// Number of distinct shader modules compiled so far (one per distinct source text).
    pub fn shader_module_count(&self) -> usize {
        self.modules.lock().unwrap().modules.len()
    }

    /// A zero-initialised storage buffer of `bytes` (rounded up to 16) usable as kernel input/output and copy source.
    pub fn buffer(&self, label: &str, bytes: u64) -> GpuBuffer {
        if let Some(b) = self.stand_in(bytes) {
            return b;
        }
        let size = bytes.max(16).div_ceil(16) * 16;
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        GpuBuffer { buf: self.track(label, buf), offset: 0, size: bytes.max(4) }
    }

    /// A scratch buffer of at least `bytes` for `key`, shared with every earlier caller of the same key whose
    /// buffer is still alive (a larger request gets a new buffer). Only for data that a kernel writes and reads
    /// back within consecutive dispatches: the queue runs dispatches in order, so sharers never overlap.
    pub fn shared_scratch(&self, key: &str, bytes: u64) -> GpuBuffer {
        if let Some(b) = self.stand_in(bytes) {
            return b;
        }
        let mut pool = self.scratch.lock().unwrap();
        if let Some(buf) = pool.get(key).and_then(|w| w.upgrade()) {
            if buf.size() >= bytes {
                return GpuBuffer { buf, offset: 0, size: bytes.max(4) };
            }
        }
        let fresh = self.buffer(key, bytes);
        pool.insert(key.to_string(), Arc::downgrade(&fresh.buf));
        fresh
    }

    /// A storage buffer of at least `bytes` for `label` that nobody else holds, kept by the `Gpu` after its
    /// users drop it and handed to the next caller of the same label: per-generation working memory (KV
    /// caches, codec activations) without a device allocation each time (an allocation costs the driver's time on
    /// the host, per request: docs/performance.md). Contents are stale, not zero: only for buffers every reader finds
    /// written first. Idle buffers of the label too small for the request are freed; `release_reusable`
    /// frees every idle one.
    pub fn reusable_buffer(&self, label: &str, bytes: u64) -> GpuBuffer {
        if let Some(b) = self.stand_in(bytes) {
            return b;
        }
        let mut pool = self.reusable.lock().unwrap();
        let list = pool.entry(label.to_string()).or_default();
        // Only the pool holds an idle buffer; clones are made under this lock, so the count cannot rise meanwhile.
        let idle = |b: &Arc<wgpu::Buffer>| Arc::strong_count(b) == 1;
        if let Some(b) = list.iter().filter(|b| idle(b) && b.size() >= bytes).min_by_key(|b| b.size()) {
            return GpuBuffer { buf: b.clone(), offset: 0, size: bytes.max(4) };
        }
        list.retain(|b| !idle(b));
        let fresh = self.buffer(label, bytes);
        list.push(fresh.buf.clone());
        fresh
    }

    /// Frees the idle buffers `reusable_buffer` keeps for `labels` (those in use stay, and stay pooled).
    pub fn release_reusable_labels(&self, labels: &[&str]) {
        let mut pool = self.reusable.lock().unwrap();
        for label in labels {
            if let Some(list) = pool.get_mut(*label) {
                list.retain(|b| Arc::strong_count(b) > 1);
                if list.is_empty() {
                    pool.remove(*label);
                }
            }
        }
    }

    /// Bytes of the kept dispatch-parameter chunks: they grow to what the most dispatches alive at once needed, then
    /// stay (freed when idle by `release_reusable`).
    pub fn params_bytes(&self) -> u64 {
        self.params.lock().unwrap().chunks.len() as u64 * PARAMS_CHUNK
    }

    /// Frees the idle buffers `reusable_buffer` keeps, and the parameter chunks no dispatch binds.
    pub fn release_reusable(&self) {
        let mut pool = self.reusable.lock().unwrap();
        for list in pool.values_mut() {
            list.retain(|b| Arc::strong_count(b) > 1);
        }
        pool.retain(|_, l| !l.is_empty());
        // Parameter chunks too, but the one being filled.
        let mut params = self.params.lock().unwrap();
        if let Some(current) = params.chunks.get(params.current).cloned() {
            params.chunks.retain(|b| Arc::ptr_eq(b, &current) || Arc::strong_count(b) > 1);
            params.current = params.chunks.iter().position(|b| Arc::ptr_eq(b, &current)).unwrap_or(0);
        }
    }

    /// A storage buffer initialised with `data`.
    pub fn upload<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> GpuBuffer {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let size = bytes.len() as u64;
        if let Some(b) = self.stand_in(size) {
            return b;
        }
        if size == 0 {
            return self.buffer(label, 4);
        }
        let buf = self.init_buffer(label, bytes, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST);
        GpuBuffer { buf: self.track(label, buf), offset: 0, size }
    }

    /// A buffer of `bytes` rounded up to 16 (zero padding) holding `bytes`, written while mapped at creation.
    /// Unlike wgpu's `create_buffer_init`, which panics when the mapping fails, a lost device (the only cause
    /// here) leaves the buffer unwritten: it is invalid anyway, and the loss is reported at the next check.
    fn init_buffer(&self, label: &str, bytes: &[u8], usage: wgpu::BufferUsages) -> wgpu::Buffer {
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (bytes.len() as u64).max(16).div_ceil(16) * 16,
            usage,
            mapped_at_creation: true,
        });
        if let Ok(mut view) = buf.get_mapped_range_mut(..) {
            // Mapped-at-creation memory starts zeroed: only the data needs writing.
            view.slice(..bytes.len()).copy_from_slice(bytes);
            drop(view);
            buf.unmap();
        }
        buf
    }

    /// Writes `data` into `dst` at its offset (ordered before the next submit).
    pub fn write<T: bytemuck::Pod>(&self, dst: &GpuBuffer, data: &[T]) {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        debug_assert!(bytes.len() as u64 <= dst.size);
        if !bytes.is_empty() && !self.discovering() {
            self.queue.write_buffer(&dst.buf, dst.offset, bytes);
        }
    }

    /// A slot holding `bytes` (zero-padded to a multiple of 16) in the current parameters chunk, or in a buffer of
    /// its own when larger than a quarter chunk: the buffer, the slot's offset and its size. Written through the
    /// queue, so ordered after work already submitted and before the next submit.
    fn params_slot(&self, bytes: &[u8]) -> (Arc<wgpu::Buffer>, u64, u64) {
        let size = (bytes.len() as u64).max(16).div_ceil(16) * 16;
        if size > PARAMS_CHUNK / 4 {
            return (self.uniform_bytes("params", bytes), 0, size);
        }
        let align = (self.limits.min_uniform_buffer_offset_alignment as u64).max(16);
        let mut chunk = self.params.lock().unwrap();
        let mut start = chunk.used.next_multiple_of(align);
        if chunk.chunks.is_empty() || start + size > PARAMS_CHUNK {
            // A kept chunk that no dispatch binds any more (only this list holds it), else a new one.
            let current = chunk.current;
            let idle = (0..chunk.chunks.len()).find(|&i| i != current && Arc::strong_count(&chunk.chunks[i]) == 1);
            chunk.current = idle.unwrap_or_else(|| {
                chunk.chunks.push(self.track("params", self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("params"),
                    size: PARAMS_CHUNK,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })));
                chunk.chunks.len() - 1
            });
            start = 0;
        }
        let buffer = chunk.chunks[chunk.current].clone();
        chunk.used = start + size;
        if bytes.len() as u64 == size {
            self.queue.write_buffer(&buffer, start, bytes);
        } else {
            let mut padded = bytes.to_vec();
            padded.resize(size as usize, 0);
            self.queue.write_buffer(&buffer, start, &padded);
        }
        (buffer, start, size)
    }

    fn uniform_bytes(&self, label: &str, bytes: &[u8]) -> Arc<wgpu::Buffer> {
        self.track(label, self.init_buffer(label, bytes, wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST))
    }

    /// A uniform buffer of its own holding `params` (a `#[repr(C)]` Pod struct, 16-byte multiple).
    pub fn uniform<T: bytemuck::Pod>(&self, label: &str, params: &T) -> Arc<wgpu::Buffer> {
        self.uniform_bytes(label, bytemuck::bytes_of(params))
    }

    /// Builds a dispatch: binding 0 = a uniform with `params`, bindings 1.. = `buffers` in order.
    /// The bind group is made here, once; `Dispatch::record` only replays it.
    pub fn dispatch<T: bytemuck::Pod>(
        &self,
        pipeline: &Arc<wgpu::ComputePipeline>,
        params: &T,
        buffers: &[&GpuBuffer],
        workgroups: [u32; 3],
    ) -> Dispatch {
        if let Some(d) = self.discovery.lock().unwrap().as_ref() {
            // Discovery: the pipeline may not be compiled yet and the buffers are stand-ins; the dispatch only has to
            // exist (it records nothing).
            return Dispatch { pipeline: d.placeholder.clone(), bind_group: d.empty_group.clone(), workgroups: [0, 0, 0], _uniform: d.uniform.clone(), _bound: Vec::new() };
        }
        let (uniform, offset, size) = self.params_slot(bytemuck::bytes_of(params));
        let params_binding = wgpu::BufferBinding { buffer: &uniform, offset, size: wgpu::BufferSize::new(size) };
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: wgpu::BindingResource::Buffer(params_binding) }];
        for (i, b) in buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry { binding: i as u32 + 1, resource: b.binding() });
        }
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        Dispatch { pipeline: pipeline.clone(), bind_group, workgroups, _uniform: uniform, _bound: buffers.iter().map(|b| b.buf.clone()).collect() }
    }

    /// Records `dispatches` into one compute pass of a fresh encoder and submits it.
    pub fn run(&self, dispatches: &[&Dispatch]) {
        let mut enc = self.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for d in dispatches {
                d.record(&mut pass);
            }
        }
        self.queue.submit([enc.finish()]);
    }

    /// Reads `src` back to the CPU (one wait).
    pub async fn read_bytes(&self, src: &GpuBuffer) -> Result<Vec<u8>, GpuError> {
        let size = src.size.div_ceil(4) * 4;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&src.buf, src.offset, &staging, 0, size);
        self.queue.submit([enc.finish()]);
        let data = map_read(self, &staging, 0, size).await?;
        Ok(data[..src.size as usize].to_vec())
    }

    pub async fn read_f32(&self, src: &GpuBuffer) -> Result<Vec<f32>, GpuError> {
        Ok(bytemuck::pod_collect_to_vec(&self.read_bytes(src).await?))
    }

    pub async fn read_u32(&self, src: &GpuBuffer) -> Result<Vec<u32>, GpuError> {
        Ok(bytemuck::pod_collect_to_vec(&self.read_bytes(src).await?))
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_f32_blocking(&self, src: &GpuBuffer) -> Result<Vec<f32>, GpuError> {
        pollster::block_on(self.read_f32(src))
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_u32_blocking(&self, src: &GpuBuffer) -> Result<Vec<u32>, GpuError> {
        pollster::block_on(self.read_u32(src))
    }

    /// Blocks until the submission `index` is done (natively; counts as a wait). Unlike `wait_idle`, the work
    /// submitted after it keeps the GPU busy meanwhile.
    pub fn wait_for(&self, index: wgpu::SubmissionIndex) -> Result<(), GpuError> {
        self.waits.fetch_add(1, Ordering::Relaxed);
        self.device
            .poll(wgpu::PollType::Wait { submission_index: Some(index), timeout: None })
            .map(|_| ())
            .map_err(|e| GpuError::DeviceLost(e.to_string()))
    }

    /// Lets the device make progress without blocking (native); a no-op on the web.
    pub fn poll_nonblocking(&self) {
        let _ = self.device.poll(wgpu::PollType::Poll);
    }

    /// Blocks until all submitted work is done (counts as a wait).
    pub fn wait_idle(&self) -> Result<(), GpuError> {
        self.waits.fetch_add(1, Ordering::Relaxed);
        // Writes queued since the last submit (dispatch parameters) go with an empty submit, so that they too are
        // done and their staging memory freed when this returns.
        self.queue.submit([]);
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| GpuError::DeviceLost(e.to_string()))
    }
}

/// What the cooperative-matrix kernels need: the feature with `shader-f16`, the 16×16×16 f16 → f32 configuration,
/// and subgroups of exactly 32 (a kernel's 256 invocations are 8 subgroups of consecutive invocations). Native only:
/// browsers do not expose cooperative matrices.
fn adapter_has_tensor_cores(adapter: &wgpu::Adapter) -> bool {
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

/// Maps `staging[offset..offset+size]` for reading and copies it out (counts as one wait).
pub async fn map_read(gpu: &Gpu, staging: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>, GpuError> {
    gpu.waits.fetch_add(1, Ordering::Relaxed);
    let slice = staging.slice(offset..offset + size);
    let (tx, rx) = futures::channel::oneshot::channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    #[cfg(not(target_arch = "wasm32"))]
    if let Err(e) = gpu.device.poll(wgpu::PollType::wait_indefinitely()) {
        return Err(gpu.lost_or(GpuError::Readback(format!("waiting for the GPU: {e}"))).await);
    }
    let mapped = match rx.await {
        Ok(r) => r.map_err(|e| GpuError::Readback(e.to_string())),
        Err(_) => Err(GpuError::Readback("map callback dropped".into())),
    };
    let data = mapped.and_then(|()| Ok(slice.get_mapped_range().map_err(|e| GpuError::Readback(e.to_string()))?.to_vec()));
    let data = match data {
        Ok(d) => d,
        Err(e) => return Err(gpu.lost_or(e).await),
    };
    staging.unmap();
    gpu.check()?;
    Ok(data)
}

/// How long `Gpu::lost_or` waits in the browser for `GPUDevice.lost` to settle after an operation failed.
#[cfg(target_arch = "wasm32")]
const LOSS_REPORT_WAIT_MS: u32 = 1000;

/// Resolves after `ms` milliseconds (`setTimeout` of the window or worker), letting the browser's tasks run.
#[cfg(target_arch = "wasm32")]
async fn sleep_ms(ms: u32) {
    use wasm_bindgen::JsCast;
    let promise = js_sys::Promise::new(&mut |resolve, _reject| {
        let global = js_sys::global();
        let set_timeout = js_sys::Reflect::get(&global, &"setTimeout".into()).ok().and_then(|f| f.dyn_into::<js_sys::Function>().ok());
        match set_timeout {
            Some(f) => {
                let _ = f.call2(&global, &resolve, &ms.into());
            }
            None => {
                let _ = resolve.call0(&wasm_bindgen::JsValue::UNDEFINED);
            }
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}

/// A byte range of a GPU buffer (offset and size in bytes; offset 256-aligned when bound).
#[derive(Clone, Debug)]
pub struct GpuBuffer {
    pub buf: Arc<wgpu::Buffer>,
    pub offset: u64,
    pub size: u64,
}

impl GpuBuffer {
    pub fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buf,
            offset: self.offset,
            size: wgpu::BufferSize::new(self.size.div_ceil(4) * 4),
        })
    }

    /// A sub-range; `offset` must respect the adapter's storage offset alignment (256) if bound.
    pub fn slice(&self, offset: u64, size: u64) -> GpuBuffer {
        assert!(offset + size <= self.size, "slice out of range");
        GpuBuffer { buf: self.buf.clone(), offset: self.offset + offset, size }
    }

    /// Number of f32/u32 elements in the range.
    pub fn len_words(&self) -> usize {
        (self.size / 4) as usize
    }
}

/// A kernel launch prepared once: pipeline, bind group (with its uniform parameters) and grid size.
pub struct Dispatch {
    pipeline: Arc<wgpu::ComputePipeline>,
    bind_group: wgpu::BindGroup,
    workgroups: [u32; 3],
    /// The parameters' buffer (a shared chunk): held so that `allocated_bytes` counts it while the dispatch lives.
    _uniform: Arc<wgpu::Buffer>,
    /// The buffers the bind group binds. wgpu keeps them alive through the bind group anyway; holding them here
    /// too keeps the accounting true (`Gpu::allocated_bytes` counts a buffer while a dispatch binds it), keeps a
    /// `shared_scratch` buffer shared while dispatches that bind it exist, and keeps `reusable_buffer` from handing
    /// a buffer that live dispatches still write to another user.
    _bound: Vec<Arc<wgpu::Buffer>>,
}

impl Dispatch {
    /// Records the dispatch into `pass`, leaving out the `set_pipeline` / `set_bind_group` that would repeat what
    /// the previous dispatch recorded into the same pass set (in a browser each call is a trip through the WebGPU
    /// implementation; natively wgpu re-binds on each). Only `record` sets pipelines and bind groups on passes.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        if self.workgroups.contains(&0) {
            return;
        }
        let (pass_key, pipeline_key, group_key) = (HandleKey::of(&*pass), HandleKey::of(&*self.pipeline), HandleKey::of(&self.bind_group));
        let (set_pipeline, set_group) = PASS_STATE.with_borrow_mut(|s| {
            if !pass_key.same(&s.pass) {
                *s = PassState { pass: pass_key, counts: s.counts, ..Default::default() };
            }
            let set_pipeline = !pipeline_key.same(&s.pipeline);
            let set_group = !group_key.same(&s.bind_group);
            s.pipeline = pipeline_key;
            s.bind_group = group_key;
            let c = &mut s.counts;
            if set_pipeline { c.pipelines_set += 1 } else { c.pipelines_skipped += 1 }
            if set_group { c.bind_groups_set += 1 } else { c.bind_groups_skipped += 1 }
            (set_pipeline, set_group)
        });
        if set_pipeline {
            pass.set_pipeline(&self.pipeline);
        }
        if set_group {
            pass.set_bind_group(0, &self.bind_group, &[]);
        }
        pass.dispatch_workgroups(self.workgroups[0], self.workgroups[1], self.workgroups[2]);
    }
}

/// `set_pipeline` / `set_bind_group` calls `Dispatch::record` made and left out as repeats, on this thread so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordCounts {
    pub pipelines_set: u64,
    pub pipelines_skipped: u64,
    pub bind_groups_set: u64,
    pub bind_groups_skipped: u64,
}

impl RecordCounts {
    /// The calls made between `earlier` (an older `record_counts()`) and these.
    pub fn since(self, earlier: RecordCounts) -> RecordCounts {
        RecordCounts {
            pipelines_set: self.pipelines_set - earlier.pipelines_set,
            pipelines_skipped: self.pipelines_skipped - earlier.pipelines_skipped,
            bind_groups_set: self.bind_groups_set - earlier.bind_groups_set,
            bind_groups_skipped: self.bind_groups_skipped - earlier.bind_groups_skipped,
        }
    }
}

/// This thread's `RecordCounts` (recording happens on the thread that builds the command buffer).
pub fn record_counts() -> RecordCounts {
    PASS_STATE.with_borrow(|s| s.counts)
}

/// What the last `Dispatch::record` on this thread left set, and in which pass.
#[derive(Default)]
struct PassState {
    pass: HandleKey,
    pipeline: HandleKey,
    bind_group: HandleKey,
    counts: RecordCounts,
}

thread_local! {
    static PASS_STATE: std::cell::RefCell<PassState> = std::cell::RefCell::new(PassState::default());
}

/// A wgpu handle's identity: the bytes its `Hash` writes. wgpu hashes a handle (pass, pipeline, bind group) by an id
/// unique to the object (a counter, or wgpu-core's index with its reuse epoch), so equal keys are the same object,
/// and a new pass never matches an ended one. Keys longer than the buffer compare as unknown (never the same).
#[derive(Clone, Copy, Default)]
struct HandleKey {
    bytes: [u8; 32],
    /// Bytes written; None: nothing written or too many (unknown).
    len: Option<usize>,
}

impl HandleKey {
    fn of<T: Hash + ?Sized>(handle: &T) -> HandleKey {
        let mut key = HandleKey { bytes: [0; 32], len: Some(0) };
        handle.hash(&mut key);
        if key.len == Some(0) {
            key.len = None;
        }
        key
    }

    fn same(&self, other: &HandleKey) -> bool {
        match (self.len, other.len) {
            (Some(a), Some(b)) => a == b && self.bytes[..a] == other.bytes[..b],
            _ => false,
        }
    }
}

impl Hasher for HandleKey {
    fn write(&mut self, bytes: &[u8]) {
        self.len = self.len.and_then(|n| {
            let end = n + bytes.len();
            (end <= self.bytes.len()).then(|| {
                self.bytes[n..end].copy_from_slice(bytes);
                end
            })
        });
    }

    fn finish(&self) -> u64 {
        0
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

/// With `DIA_WGSL_DUMP=<dir>`, writes each distinct shader source compiled to `<dir>/<label>.wgsl` (the label's
/// punctuation replaced): to compare generated shaders before and after a change, or to translate them offline.
#[cfg(not(target_arch = "wasm32"))]
fn dump_wgsl(label: &str, source: &str) {
    let Some(dir) = std::env::var_os("DIA_WGSL_DUMP") else { return };
    let name: String = label.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).take(240).collect();
    let path = std::path::Path::new(&dir).join(format!("{name}.wgsl"));
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, source)) {
        eprintln!("DIA_WGSL_DUMP: cannot write {}: {e}", path.display());
    }
}

/// Splits a 1-D count of workgroups into a 2-D grid within the per-dimension limit (65535).
pub fn grid_1d(groups: u32) -> [u32; 3] {
    if groups <= 65535 {
        [groups, 1, 1]
    } else {
        let y = groups.div_ceil(65535);
        [groups.div_ceil(y), y, 1]
    }
}

/// Replaces `{{KEY}}` placeholders in WGSL source (kernel specialisation: numerics mode, tile sizes).
pub fn specialize(src: &str, defs: &[(&str, String)]) -> String {
    let mut out = src.to_string();
    for (k, v) in defs {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    debug_assert!(!out.contains("{{"), "unreplaced placeholder in shader");
    out
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
fn device_subgroup_sizes(device: &wgpu::Device, features: wgpu::Features, info: &wgpu::AdapterInfo) -> Option<SubgroupSizes> {
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
mod web_subgroups {
    use js_sys::{Array, Function, Reflect};
    use wasm_bindgen::prelude::*;
    use wasm_bindgen::JsCast;

    fn get(o: &JsValue, key: &str) -> Option<JsValue> {
        Reflect::get(o, &JsValue::from_str(key)).ok().filter(|v| !v.is_undefined() && !v.is_null())
    }

    /// Whether a `GPUAdapter` or `GPUDevice` lists the `subgroups` feature.
    pub fn has_subgroups(o: &JsValue) -> bool {
        let Some(features) = get(o, "features") else { return false };
        let Some(has) = get(&features, "has").and_then(|f| f.dyn_into::<Function>().ok()) else { return false };
        has.call1(&features, &JsValue::from_str("subgroups")).is_ok_and(|v| v.is_truthy())
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

/// Whether kernels take their subgroup variants unless told (`Gpu::set_subgroups`): in the browser yes (the engine
/// asks Chrome for `subgroups`); natively only with `DIA_SUBGROUPS=on`, because on an H100 (Vulkan) the decoder
/// measured 3–6 % fewer steps/s with them (docs/performance.md, "Codec windows overlapped with the decoder, subgroup
/// reductions, q8 caches").
fn subgroups_by_default() -> bool {
    if cfg!(target_arch = "wasm32") {
        true
    } else {
        std::env::var("DIA_SUBGROUPS").is_ok_and(|v| v == "on")
    }
}
