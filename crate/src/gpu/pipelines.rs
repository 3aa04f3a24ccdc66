//! Shader modules and compute pipelines: the caches (by string key and by typed `KernelVariant`, one module per
//! distinct source), discovery of the pipelines a generation needs, compiling them ahead in parallel, and the
//! driver's on-disk pipeline cache.

use std::any::Any;
use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
#[cfg(not(target_arch = "wasm32"))]
use std::sync::Mutex;

use super::{shader_source_for_target, Gpu, GpuBuffer};

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
pub(super) trait VariantKey: Send + Sync {
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
pub(super) struct ModuleCache {
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
pub(super) struct Discovery {
    requests: Vec<PipelineRequest>,
    named: std::collections::HashSet<String>,
    variants: std::collections::HashSet<Box<dyn VariantKey>>,
    pub(super) placeholder: Arc<wgpu::ComputePipeline>,
    pub(super) empty_group: wgpu::BindGroup,
    pub(super) uniform: Arc<wgpu::Buffer>,
    /// What `buffer`, `upload`, `reusable_buffer` and `shared_scratch` hand out meanwhile: 16 real bytes behind any
    /// size (nothing is bound or run in discovery, and `write` skips them), so discovering allocates no memory.
    stand_in: wgpu::Buffer,
}

/// One source's module and the pipelines compiled from it by `compile_all`.
struct CompiledJob {
    module: wgpu::ShaderModule,
    entries: Vec<(String, Arc<wgpu::ComputePipeline>)>,
}

impl Gpu {
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
    pub(super) fn stand_in(&self, bytes: u64) -> Option<GpuBuffer> {
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

/// Replaces `{{KEY}}` placeholders in WGSL source (kernel specialisation: numerics mode, tile sizes).
pub fn specialize(src: &str, defs: &[(&str, String)]) -> String {
    let mut out = src.to_string();
    for (k, v) in defs {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    debug_assert!(!out.contains("{{"), "unreplaced placeholder in shader");
    out
}
