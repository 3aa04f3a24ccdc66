//! The browser API: the `DiaEngine` JavaScript class (wasm-bindgen), meant to run in a Web Worker.
//!
//! Weights arrive from JavaScript one tensor at a time (HF names, safetensors dtype and bytes); each is
//! converted and written to the GPU at once, so nothing but the GPU copy is kept. Every failure reaches
//! JavaScript as an `Error` carrying the Rust error's message; a `generate` promise rejects rather than hangs.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::config::{DacConfig, DiaConfig};
use crate::dac::{DacModel, DacModelBuilder};
use crate::dia::segment::{ScriptError, SegmentLimits};
use crate::dia::{DiaError, DiaModel, DiaModelBuilder, GenerateOptions};
use crate::gpu::{Gpu, GpuError, GpuOptions};
use crate::kernels::Numerics;
use crate::pipeline::{Audio, BatchProgress, PipelineError, ScriptProgress, SpokenText, Tts, VoicePrompt, SAMPLE_RATE};
use crate::weights::{tensor_to_f32, Dtype};

/// Dia and the DAC codec on one WebGPU device.
#[wasm_bindgen]
pub struct DiaEngine {
    // The builders hold `&'static Gpu` made from `gpu` (see `gpu_ref`): they are declared, hence dropped,
    // before `gpu`, and never handed out.
    dia_builder: Option<DiaModelBuilder<'static>>,
    dac_builder: Option<DacModelBuilder<'static>>,
    dia: Option<Rc<DiaModel>>,
    dac: Option<Rc<DacModel>>,
    numerics: Numerics,
    /// The browser's own words for the adapter (wgpu passes on only its often empty description).
    adapter_label: String,
    run: Rc<RunState>,
    gpu: Rc<Gpu>,
}

/// Shared between the engine and its running `generate`.
#[derive(Default)]
struct RunState {
    busy: Cell<bool>,
    cancel: Cell<bool>,
}

/// Clears `busy` when a generation ends, however it ends.
struct BusyGuard(Rc<RunState>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.busy.set(false);
    }
}

fn js_err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// The `code` a rejected `generate` carries when the GPU device was lost: the engine is unusable (the worker
/// reports an `EngineError` of this code and starts a new engine for the next request).
const DEVICE_LOST: &str = "device-lost";

/// A JavaScript `Error` with `message`, and `code = "device-lost"` when `device_lost`.
fn engine_error(message: impl std::fmt::Display, device_lost: bool) -> JsValue {
    let error = JsValue::from(JsError::new(&message.to_string()));
    if device_lost {
        let _ = js_sys::Reflect::set(&error, &"code".into(), &DEVICE_LOST.into());
    }
    error
}

fn gpu_error(e: GpuError) -> JsValue {
    let lost = matches!(e, GpuError::DeviceLost(_));
    engine_error(e, lost)
}

/// Test-only faults that `generate`'s `testHook` option injects at the generation's second cancellation
/// check (decoder steps submitted, readbacks in flight), for the package's end-to-end tests of recovery.
#[derive(Clone, Copy, Debug, PartialEq)]
enum TestHook {
    /// A Rust panic inside the running generation (the wasm instance traps).
    Panic,
    /// `GPUDevice.destroy()`: the device is lost under the generation.
    LoseDevice,
}

/// The cancellation check at which a `testHook` fault strikes: `speak_script` checks once before the first segment,
/// then the generation once before its first decoder steps and again once they are submitted, readbacks in flight.
const HOOK_CHECK: u32 = 3;

/// A `generate` failure as JavaScript sees it: the message, and a `code` for the failures the package tells
/// apart — a lost device (the engine is unusable), or a script the splitter refuses (the request is at fault:
/// `script-too-long` with `bytes` and `limit`, `nothing-to-speak`, `voice-needs-transcript` with `segments`).
fn pipeline_error(e: PipelineError) -> JsValue {
    let error = engine_error(&e, e.is_device_lost());
    let set = |k: &str, v: JsValue| {
        let _ = js_sys::Reflect::set(&error, &k.into(), &v);
    };
    match e {
        PipelineError::Script(ScriptError::TooLong { bytes, limit }) => {
            set("code", "script-too-long".into());
            set("bytes", JsValue::from_f64(bytes as f64));
            set("limit", JsValue::from_f64(limit as f64));
        }
        PipelineError::Script(ScriptError::NothingToSpeak) | PipelineError::Dia(DiaError::EmptyText) => set("code", "nothing-to-speak".into()),
        PipelineError::VoiceNeedsTranscript { segments } => {
            set("code", "voice-needs-transcript".into());
            set("segments", JsValue::from_f64(segments as f64));
        }
        _ => {}
    }
    error
}

/// `ScriptProgress` as the object `generate`'s `onProgress` receives (`hop`: samples per audio frame).
fn progress_object(p: &ScriptProgress, hop: usize) -> JsValue {
    let out = js_sys::Object::new();
    let set = |k: &str, v: f64| {
        let _ = js_sys::Reflect::set(&out, &k.into(), &JsValue::from_f64(v));
    };
    set("segment", p.segment as f64);
    set("segments", p.segments as f64);
    set("rows", p.rows as f64);
    set("estimatedRows", p.estimated_rows as f64);
    set("framesOut", p.frames_out as f64);
    set("audioSeconds", (p.frames_out * hop) as f64 / SAMPLE_RATE as f64);
    out.into()
}

/// `obj[key]` unless missing, undefined or null.
fn get(obj: &JsValue, key: &str) -> Option<JsValue> {
    js_sys::Reflect::get(obj, &JsValue::from_str(key)).ok().filter(|v| !v.is_undefined() && !v.is_null())
}

/// `navigator.gpu` of this global scope (window or worker).
fn navigator_gpu() -> Option<JsValue> {
    get(&js_sys::global().into(), "navigator").and_then(|n| get(&n, "gpu"))
}

/// "vendor architecture device description" of the adapter the browser hands out (`GPUAdapterInfo`).
async fn browser_adapter_label() -> Option<String> {
    let gpu = navigator_gpu()?;
    let request: js_sys::Function = get(&gpu, "requestAdapter")?.dyn_into().ok()?;
    let opts = js_sys::Object::new();
    js_sys::Reflect::set(&opts, &"powerPreference".into(), &"high-performance".into()).ok()?;
    let promise: js_sys::Promise = request.call1(&gpu, &opts).ok()?.dyn_into().ok()?;
    let adapter = wasm_bindgen_futures::JsFuture::from(promise).await.ok()?;
    let info = get(&adapter, "info")?;
    let parts: Vec<String> = ["vendor", "architecture", "device", "description"].iter().filter_map(|k| get(&info, k)?.as_string()).filter(|s| !s.is_empty()).collect();
    Some(parts.join(" "))
}

#[wasm_bindgen]
impl DiaEngine {
    /// Opens a WebGPU device. `numerics`: `"f32"` (exact), `"f16w"` (f16 weights, half the memory; needs no
    /// `shader-f16`), `"q8"` or `"q4"` (block-quantized matrices, a quarter / a sixth of f32's memory).
    pub async fn create(#[wasm_bindgen(unchecked_param_type = "\"f32\" | \"f16w\" | \"q8\" | \"q4\"")] numerics: String) -> Result<DiaEngine, JsError> {
        // After a panic (the wasm instance traps but lives on, e.g. in a test harness) std refuses to
        // change the hook, and would panic again here.
        if !std::thread::panicking() {
            console_error_panic_hook::set_once();
        }
        let numerics: Numerics = numerics.parse().map_err(|e: String| JsError::new(&e))?;
        if navigator_gpu().is_none() {
            return Err(JsError::new("WebGPU is not available here: navigator.gpu is missing (a browser with WebGPU enabled, on https or localhost, is needed)"));
        }
        let adapter_label = browser_adapter_label().await.unwrap_or_default();
        let opts = GpuOptions { high_performance: true, min_storage_binding: crate::dia::largest_matrix_bytes(&DiaConfig::dia_1_6b(), numerics), want_shader_f16: true, want_tensor_cores: false };
        let gpu = Gpu::new(opts).await.map_err(|e| match e {
            GpuError::NoAdapter(why) => JsError::new(&format!(
                "WebGPU gave no adapter: navigator.gpu.requestAdapter() found none (WebGPU disabled, or this GPU blocklisted; Chromium on a machine without a GPU needs --enable-unsafe-webgpu). Detail: {why}"
            )),
            // The browser does not name the adapter to wgpu: use its own words.
            GpuError::LimitTooSmall { adapter, limit, available, required } if adapter.is_empty() => {
                js_err(GpuError::LimitTooSmall { adapter: adapter_label.clone(), limit, available, required })
            }
            e => js_err(e),
        })?;
        // Uncaptured WebGPU errors (the browser would only log them) are kept by `Gpu`: they fail the next check.
        Ok(DiaEngine {
            dia_builder: None,
            dac_builder: None,
            dia: None,
            dac: None,
            numerics,
            adapter_label,
            run: Rc::new(RunState::default()),
            gpu: Rc::new(gpu),
        })
    }

    /// Turns one of the engine's measured experiments on or off for the generations from now on (for benchmarks;
    /// the defaults are what the measurements chose): `"crossTables"` (issue 17's cross-attention tables,
    /// `Gpu::set_cross_tables`) or `"attentionOFused"` (the self-attention's combine in its output projection,
    /// `Gpu::set_attention_o_fused`). Any other name is an error.
    #[wasm_bindgen(js_name = setExperiment)]
    pub fn set_experiment(&self, #[wasm_bindgen(unchecked_param_type = "\"crossTables\" | \"attentionOFused\"")] name: &str, on: bool) -> Result<(), JsError> {
        match name {
            "crossTables" => self.gpu.set_cross_tables(Some(on)),
            "attentionOFused" => self.gpu.set_attention_o_fused(on),
            _ => return Err(JsError::new(&format!("setExperiment: unknown experiment {name:?} (crossTables or attentionOFused)"))),
        }
        Ok(())
    }

    /// Compute pipelines this engine has compiled so far: loading compiles every one a generation uses, so a
    /// generation that adds to the count compiled during it (the benchmark page reports that).
    #[wasm_bindgen(js_name = pipelineCompiles)]
    pub fn pipeline_compiles(&self) -> f64 {
        self.gpu.pipeline_compiles() as f64
    }

    /// The adapter (vendor, architecture, description as the browser gives them; whether it is a software
    /// fallback), the backend, and whether it offers `shader-f16`.
    #[wasm_bindgen(js_name = adapterInfo)]
    pub fn adapter_info(&self) -> String {
        let name = [self.adapter_label.as_str(), self.gpu.info.name.as_str()].into_iter().find(|s| !s.is_empty()).unwrap_or("unnamed adapter");
        let fallback = if self.gpu.info.device_type == wgpu::DeviceType::Cpu { ", software fallback adapter" } else { "" };
        let f16 = if self.gpu.features.contains(wgpu::Features::SHADER_F16) { "yes" } else { "no" };
        let subgroups = match (self.gpu.subgroup_sizes(), self.gpu.reduction()) {
            (Some(s), r) => format!("{}..{} ({})", s.min, s.max, if r == crate::gpu::Reduction::Subgroup { "used" } else { "not used" }),
            (None, _) => "no".to_string(),
        };
        format!("{name} ({:?}{fallback}); shader-f16: {f16}; subgroups: {subgroups}", self.gpu.info.backend)
    }

    /// GPU memory held by the engine's buffers (weights, caches, activations; readback staging not counted), in
    /// bytes: `{ allocated, peak }`, `peak` the most ever held since the device was made (loading and every
    /// generation so far included).
    #[wasm_bindgen(unchecked_return_type = "{ allocated: number, peak: number }")]
    pub fn memory(&self) -> Result<JsValue, JsError> {
        let out = js_sys::Object::new();
        let set = |k: &str, v: u64| js_sys::Reflect::set(&out, &k.into(), &JsValue::from_f64(v as f64)).map(|_| ()).map_err(|_| JsError::new("memory: cannot build the result"));
        set("allocated", self.gpu.allocated_bytes())?;
        set("peak", self.gpu.peak_allocated_bytes())?;
        Ok(out.into())
    }

    /// Starts loading a Dia model from its `config.json` (HF or nari schema); drops the loaded one.
    #[wasm_bindgen(js_name = beginModel)]
    pub fn begin_model(&mut self, #[wasm_bindgen(js_name = configJson)] config_json: &str) -> Result<(), JsError> {
        self.dia_builder = None;
        self.dia = None;
        let cfg = DiaConfig::from_json_str(config_json).map_err(|e| JsError::new(&format!("bad Dia config: {e}")))?;
        self.dia_builder = Some(DiaModelBuilder::new(self.gpu_ref(), &cfg, self.numerics).map_err(js_err)?);
        Ok(())
    }

    /// One tensor of the Dia checkpoint in the HF layout: `dtype` `"F32"`, `"F16"` or `"BF16"`, little-endian
    /// bytes; or one half of a quantized matrix as `storedTensors` gives it (`<base>.qweight` `"U32"`,
    /// `<base>.scales` `"F16"`), the halves in either order.
    #[wasm_bindgen(js_name = putModelTensor)]
    pub fn put_model_tensor(
        &mut self,
        name: &str,
        #[wasm_bindgen(unchecked_param_type = "\"F32\" | \"F16\" | \"BF16\" | \"U32\"")] dtype: &str,
        #[wasm_bindgen(unchecked_param_type = "Uint32Array")] shape: &[u32],
        #[wasm_bindgen(unchecked_param_type = "Uint8Array")] bytes: Vec<u8>,
    ) -> Result<(), JsError> {
        let builder = self.dia_builder.as_mut().ok_or_else(|| JsError::new("no model is being loaded: call beginModel first"))?;
        let dt = parse_dtype(name, dtype)?;
        let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        builder.put_stored(name, dt, &shape, bytes).map_err(js_err)
    }

    /// Names of the model tensors not received yet.
    #[wasm_bindgen(js_name = modelMissing)]
    pub fn model_missing(&self) -> Result<Vec<String>, JsError> {
        let builder = self.dia_builder.as_ref().ok_or_else(|| JsError::new("no model is being loaded: call beginModel first"))?;
        Ok(builder.missing())
    }

    /// Completes the model; with tensors missing it throws and loading can go on.
    #[wasm_bindgen(js_name = finishModel)]
    pub fn finish_model(&mut self) -> Result<(), JsValue> {
        let builder = self.dia_builder.as_ref().ok_or_else(|| JsError::new("no model is being loaded: call beginModel first"))?;
        let missing = builder.missing();
        if let Some(first) = missing.first() {
            return Err(js_err(DiaError::MissingTensor { name: first.clone(), count: missing.len() }).into());
        }
        let builder = self.dia_builder.take().expect("checked above");
        self.dia = Some(Rc::new(builder.finish().map_err(js_err)?));
        self.prepare_when_loaded()
    }

    /// Starts loading the DAC codec from its `config.json`; `withEncoder` is needed for voice prompts
    /// (without it the encoder's tensors are accepted and dropped). Drops the loaded codec.
    #[wasm_bindgen(js_name = beginCodec)]
    pub fn begin_codec(&mut self, #[wasm_bindgen(js_name = configJson)] config_json: &str, #[wasm_bindgen(js_name = withEncoder)] with_encoder: bool) -> Result<(), JsError> {
        self.dac_builder = None;
        self.dac = None;
        let cfg = DacConfig::from_json_str(config_json).map_err(|e| JsError::new(&format!("bad DAC config: {e}")))?;
        self.dac_builder = Some(DacModelBuilder::new(self.gpu_ref(), &cfg, self.numerics, with_encoder).map_err(js_err)?);
        Ok(())
    }

    /// One tensor of the DAC checkpoint (HF `descript/dac_44khz` names, any weight-norm form).
    #[wasm_bindgen(js_name = putCodecTensor)]
    pub fn put_codec_tensor(
        &mut self,
        name: &str,
        #[wasm_bindgen(unchecked_param_type = "\"F32\" | \"F16\" | \"BF16\"")] dtype: &str,
        #[wasm_bindgen(unchecked_param_type = "Uint32Array")] shape: &[u32],
        #[wasm_bindgen(unchecked_param_type = "Uint8Array")] bytes: &[u8],
    ) -> Result<(), JsError> {
        let builder = self.dac_builder.as_mut().ok_or_else(|| JsError::new("no codec is being loaded: call beginCodec first"))?;
        let (shape, data) = convert(name, dtype, shape, bytes)?;
        builder.accept(name, &shape, &data).map_err(js_err)
    }

    /// Completes the codec; on an error (e.g. a missing tensor) loading starts again with `beginCodec`.
    #[wasm_bindgen(js_name = finishCodec)]
    pub fn finish_codec(&mut self) -> Result<(), JsValue> {
        let builder = self.dac_builder.take().ok_or_else(|| JsError::new("no codec is being loaded: call beginCodec first"))?;
        self.dac = Some(Rc::new(builder.finish().map_err(js_err)?));
        self.prepare_when_loaded()
    }

    /// Once both models are loaded (whichever finished last), creates every pipeline a generation uses
    /// (`Tts::prepare`), so the first `generate` compiles none; then reports any GPU error of the load.
    /// Not on a software adapter (SwiftShader): there compiling is CPU work in the browser's GPU process, and every
    /// pipeline of every request kind takes minutes, far more than the few a generation compiles on first use (and it
    /// holds the GPU process busy meanwhile).
    fn prepare_when_loaded(&self) -> Result<(), JsValue> {
        let software = self.gpu.info.device_type == wgpu::DeviceType::Cpu;
        if let (Some(dia), Some(dac), false) = (&self.dia, &self.dac, software) {
            Tts { gpu: &self.gpu, dia, dac }.prepare().map_err(js_err)?;
        }
        self.check_gpu_error()
    }

    /// Speaks `text`, a script of any length up to 256 KiB, calling `onChunk` with consecutive chunks of 44.1 kHz
    /// mono samples as they become final. A text longer than one segment (160 bytes) is split at speaker turns and
    /// sentences and spoken segment by segment, each continuing the previous one, as one continuous stream
    /// (`Tts::speak_script`, docs/long-form.md); a text of one segment is spoken exactly as a single generation.
    /// `options.maxNewTokens` applies to each segment. `promptPcm` (mono, 44.1 kHz) is a voice to continue:
    /// with `promptTranscript` (what it says, with speaker tags) every segment continues it; without, `text`
    /// must begin with its transcript and be one segment long. `onProgress` hears `{ segment, segments, rows,
    /// estimatedRows, framesOut, audioSeconds }` at the start of every segment (`rows` 0) and with every batch
    /// of rows. Resolves to `{ samples, steps, seconds, segments }` (`steps`: decoder steps of all segments);
    /// rejects with the error's message (containing "cancelled" after `cancel()`, which is checked between and
    /// within segments, or the callback's own exception if `onChunk` or `onProgress` throws). A script the
    /// splitter refuses rejects with `code` "script-too-long" (with `bytes`, `limit`) or "nothing-to-speak"; a
    /// voice prompt without its transcript on a longer script with "voice-needs-transcript" (with `segments`),
    /// before any GPU work. When the GPU device was lost the error has `code: "device-lost"` and the engine is
    /// unusable: create another. `options.testHook` is test-only (the package's own tests): `"panic"` panics
    /// inside the generation, `"lose-device"` destroys the GPU device under it.
    #[allow(clippy::too_many_arguments)]
    #[wasm_bindgen(unchecked_return_type = "Promise<{ samples: number, steps: number, seconds: number, segments: number }>")]
    pub fn generate(
        &self,
        text: String,
        #[wasm_bindgen(unchecked_param_type = "{ temperature?: number, topP?: number, cfgScale?: number, cfgFilterTopK?: number, seed?: number, maxNewTokens?: number, testHook?: \"panic\" | \"lose-device\" }")]
        options: JsValue,
        #[wasm_bindgen(js_name = promptPcm, unchecked_param_type = "Float32Array | undefined")] prompt_pcm: Option<Vec<f32>>,
        #[wasm_bindgen(js_name = onChunk, unchecked_param_type = "(pcm: Float32Array) => void")] on_chunk: js_sys::Function,
        #[wasm_bindgen(js_name = promptTranscript, unchecked_param_type = "string | undefined")] prompt_transcript: Option<String>,
        #[wasm_bindgen(
            js_name = onProgress,
            unchecked_param_type = "((progress: { segment: number, segments: number, rows: number, estimatedRows: number, framesOut: number, audioSeconds: number }) => void) | undefined"
        )]
        on_progress: Option<js_sys::Function>,
    ) -> js_sys::Promise {
        let job = self.start_job(&options);
        wasm_bindgen_futures::future_to_promise(async move {
            let (run, gpu, dia, dac, opts, hook) = job?;
            let _busy = BusyGuard(run.clone());
            let tts = Tts { gpu: &gpu, dia: &dia, dac: &dac };
            let prompt = prompt_pcm.map(|samples| Audio { samples, sample_rate: SAMPLE_RATE });
            let voice = prompt.as_ref().map(|audio| VoicePrompt { audio, transcript: prompt_transcript.as_deref() });
            // The first exception a callback throws: it stops the generation and is what the promise rejects with.
            let thrown: RefCell<Option<JsValue>> = RefCell::new(None);
            let call = |f: &js_sys::Function, arg: &JsValue| {
                if thrown.borrow().is_none() {
                    if let Err(e) = f.call1(&JsValue::NULL, arg) {
                        *thrown.borrow_mut() = Some(e);
                    }
                }
            };
            let mut on_pcm = |pcm: &[f32]| call(&on_chunk, &js_sys::Float32Array::from(pcm).into());
            let mut report = |p: &ScriptProgress| {
                if let Some(f) = &on_progress {
                    call(f, &progress_object(p, dac.config.hop_length));
                }
            };
            let checks = Cell::new(0u32);
            let cancelled = || {
                checks.set(checks.get() + 1);
                if checks.get() == HOOK_CHECK {
                    match hook {
                        Some(TestHook::Panic) => panic!("forced panic (test-only generate option testHook: \"panic\")"),
                        Some(TestHook::LoseDevice) => gpu.destroy(),
                        None => {}
                    }
                }
                run.cancel.get() || thrown.borrow().is_some() || gpu.has_uncaptured_error()
            };
            let start = js_sys::Date::now();
            let result = tts.speak_script(&text, voice, &opts, &SegmentLimits::default(), &mut report, &mut on_pcm, &cancelled).await;
            // A lost device or a GPU error explains whatever else went wrong: it comes first.
            gpu.check().map_err(gpu_error)?;
            if let Some(e) = thrown.take() {
                return Err(e);
            }
            let speech = result.map_err(pipeline_error)?;
            let steps: usize = speech.segments.iter().map(|s| s.generation.rows - s.generation.prefix_rows).sum();
            let out = js_sys::Object::new();
            let set = |k: &str, v: f64| js_sys::Reflect::set(&out, &JsValue::from_str(k), &JsValue::from_f64(v));
            set("samples", speech.samples as f64)?;
            set("steps", steps as f64)?;
            set("seconds", (js_sys::Date::now() - start) / 1000.0)?;
            set("segments", speech.segments.len() as f64)?;
            Ok(out.into())
        })
    }

    /// Stops the running `generate` at its next check (a few decoder steps); the engine stays usable.
    pub fn cancel(&self) {
        if self.run.busy.get() {
            self.run.cancel.set(true);
        }
    }
}

type Job = (Rc<RunState>, Rc<Gpu>, Rc<DiaModel>, Rc<DacModel>, GenerateOptions, Option<TestHook>);

impl DiaEngine {
    /// The device as a `'static` borrow for the builders.
    fn gpu_ref(&self) -> &'static Gpu {
        // SAFETY: `self.gpu` is an `Rc` that the engine keeps for its whole life, so the `Gpu` stays at this
        // address until the engine drops; the only holders of this reference are the builder fields, which
        // drop before `gpu` (field order) and are never moved out of the engine except into `finish`, whose
        // results (`DiaModel`, `DacModel`) hold no reference to the device.
        unsafe { &*Rc::as_ptr(&self.gpu) }
    }

    /// Throws if the device was lost or a GPU error was recorded since the last check.
    fn check_gpu_error(&self) -> Result<(), JsValue> {
        self.gpu.check().map_err(gpu_error)
    }

    /// Everything a generation needs, checked and shared; marks the engine busy.
    fn start_job(&self, options: &JsValue) -> Result<Job, JsValue> {
        if self.run.busy.get() {
            return Err(JsError::new("a generation is already running on this engine (cancel it or wait for it)").into());
        }
        let dia = self.dia.clone().ok_or_else(|| JsError::new("no model loaded: call beginModel, putModelTensor… and finishModel first"))?;
        let dac = self.dac.clone().ok_or_else(|| JsError::new("no codec loaded: call beginCodec, putCodecTensor… and finishCodec first"))?;
        let (opts, hook) = parse_options(options)?;
        self.check_gpu_error()?;
        self.run.busy.set(true);
        self.run.cancel.set(false);
        Ok((self.run.clone(), self.gpu.clone(), dia, dac, opts, hook))
    }
}

/// A safetensors dtype name from JavaScript.
fn parse_dtype(name: &str, dtype: &str) -> Result<Dtype, JsError> {
    Dtype::parse(dtype).ok_or_else(|| JsError::new(&format!("tensor {name}: unknown dtype {dtype:?} (use \"F32\", \"F16\", \"BF16\", or \"U32\" for a quantized matrix's .qweight)")))
}

/// The form in which the mode `numerics` keeps one Dia tensor (HF name and layout; `dtype` `"F32"`, `"F16"` or
/// `"BF16"`): what the worker stores, and what `putModelTensor` takes back with nothing left to round. An array
/// of one tensor (norms as F32, matrices as F32 or F16), or of a quantized matrix's two halves (`<base>.qweight`
/// U32, `<base>.scales` F16). A half of an already converted checkpoint is returned as it is.
#[wasm_bindgen(js_name = storedTensors, unchecked_return_type = "{ name: string, dtype: \"F32\" | \"F16\" | \"U32\", shape: Uint32Array, bytes: Uint8Array }[]")]
pub fn stored_tensors(
    name: &str,
    #[wasm_bindgen(unchecked_param_type = "\"F32\" | \"F16\" | \"BF16\" | \"U32\"")] dtype: &str,
    #[wasm_bindgen(unchecked_param_type = "Uint32Array")] shape: &[u32],
    #[wasm_bindgen(unchecked_param_type = "Uint8Array")] bytes: Vec<u8>,
    #[wasm_bindgen(unchecked_param_type = "\"f32\" | \"f16w\" | \"q8\" | \"q4\"")] numerics: &str,
) -> Result<js_sys::Array, JsError> {
    let mode: Numerics = numerics.parse().map_err(|e: String| JsError::new(&e))?;
    let dt = parse_dtype(name, dtype)?;
    let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let parts = if crate::quant::stored::split_part(name).is_some() {
        vec![crate::dia::stored::StoredTensor { name: name.to_string(), dtype: dt, shape, bytes }]
    } else {
        // Block by block: the tensor is never held whole as f32 (the wasm heap keeps its peak).
        crate::dia::stored::stored_form_from_bytes(name, dt, &shape, &bytes, mode).map_err(js_err)?
    };
    let out = js_sys::Array::new();
    for p in parts {
        let o = js_sys::Object::new();
        let shape: Vec<u32> = p.shape.iter().map(|&d| d as u32).collect();
        let set = |k: &str, v: &JsValue| js_sys::Reflect::set(&o, &k.into(), v).map(|_| ()).map_err(|_| JsError::new("storedTensors: cannot build the result"));
        set("name", &p.name.as_str().into())?;
        set("dtype", &p.dtype.name().into())?;
        set("shape", &js_sys::Uint32Array::from(shape.as_slice()).into())?;
        set("bytes", &js_sys::Uint8Array::from(p.bytes.as_slice()).into())?;
        out.push(&o);
    }
    Ok(out)
}

/// A tensor from JavaScript as a shape and f32 data, checked against its dtype.
fn convert(name: &str, dtype: &str, shape: &[u32], bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>), JsError> {
    let dt = parse_dtype(name, dtype)?;
    let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let data = tensor_to_f32(name, dt, &shape, bytes).map_err(js_err)?;
    Ok((shape, data))
}

/// `generate`'s options object; absent fields keep the reference defaults (`GenerateOptions::default`).
fn parse_options(options: &JsValue) -> Result<(GenerateOptions, Option<TestHook>), JsError> {
    let mut opts = GenerateOptions::default();
    if options.is_undefined() || options.is_null() {
        return Ok((opts, None));
    }
    if !options.is_object() {
        return Err(JsError::new("generate: options must be an object"));
    }
    let number = |key: &str| -> Result<Option<f64>, JsError> {
        let v = js_sys::Reflect::get(options, &JsValue::from_str(key)).map_err(|_| JsError::new(&format!("generate: cannot read options.{key}")))?;
        if v.is_undefined() || v.is_null() {
            return Ok(None);
        }
        match v.as_f64() {
            Some(x) if x.is_finite() => Ok(Some(x)),
            _ => Err(JsError::new(&format!("generate: options.{key} must be a finite number"))),
        }
    };
    let integer = |key: &str, min: f64| -> Result<Option<f64>, JsError> {
        match number(key)? {
            Some(x) if x.fract() != 0.0 || x < min || x > 9_007_199_254_740_991.0 => Err(JsError::new(&format!("generate: options.{key} must be a whole number ≥ {min}"))),
            x => Ok(x),
        }
    };
    let s = &mut opts.sampling;
    if let Some(x) = number("temperature")? {
        s.temperature = x as f32;
    }
    if let Some(x) = number("topP")? {
        s.top_p = x as f32;
    }
    if let Some(x) = number("cfgScale")? {
        s.cfg_scale = x as f32;
    }
    if let Some(x) = integer("cfgFilterTopK", 1.0)? {
        s.cfg_filter_top_k = x.min(u32::MAX as f64) as u32;
    }
    if let Some(x) = integer("seed", 0.0)? {
        s.seed = x as u64;
    }
    if let Some(x) = integer("maxNewTokens", 1.0)? {
        opts.max_new_tokens = x as usize;
    }
    let hook = match get(options, "testHook").map(|v| v.as_string()) {
        None => None,
        Some(Some(h)) if h == "panic" => Some(TestHook::Panic),
        Some(Some(h)) if h == "lose-device" => Some(TestHook::LoseDevice),
        Some(_) => return Err(JsError::new("generate: options.testHook (test-only) must be \"panic\" or \"lose-device\"")),
    };
    Ok((opts, hook))
}

/// Lists of texts (docs/batch.md): kept apart from `generate` so that both can change on their own.
#[wasm_bindgen]
impl DiaEngine {
    /// Speaks every text of `texts` as its own audio, several at a time (`Tts::speak_batch`), calling `onText(index,
    /// pcm, steps)` with each text's whole 44.1 kHz audio in list order as its batch finishes. `options` as for
    /// `generate`, plus `batchSize` (1 to 64; default: as many, up to 8, as the device's binding limit allows).
    /// `promptPcm`: a voice every text continues; `promptTranscript` (what it says, with speaker tags) is put in
    /// front of every text, as `dia-tts --batch --prompt-text` and `generate`'s long scripts do (without it, every
    /// text must begin with the transcript). Text i samples as item i, so its audio does not depend on the batch
    /// size; greedy, every text is exactly `generate` of it alone. `onProgress` hears `{ batch, batches, firstItem,
    /// items, rows, maxRows, done }` when a batch starts (`rows` 0) and with every readback of its rows. Resolves to
    /// `{ texts, batches, batchSize, steps, samples, seconds }`; rejects like `generate`, a list the engine refuses
    /// before any GPU work with a `code`: "empty-list", "nothing-to-speak" or "text-too-long" (with `index`, the
    /// text's place in the list, and `bytes`, `limit`), "batch-too-large" (with `size`, `max`).
    #[allow(clippy::too_many_arguments)]
    #[wasm_bindgen(js_name = generateBatch, unchecked_return_type = "Promise<{ texts: number, batches: number, batchSize: number, steps: number, samples: number, seconds: number }>")]
    pub fn generate_batch(
        &self,
        texts: Vec<String>,
        #[wasm_bindgen(unchecked_param_type = "{ temperature?: number, topP?: number, cfgScale?: number, cfgFilterTopK?: number, seed?: number, maxNewTokens?: number, batchSize?: number }")]
        options: JsValue,
        #[wasm_bindgen(js_name = promptPcm, unchecked_param_type = "Float32Array | undefined")] prompt_pcm: Option<Vec<f32>>,
        #[wasm_bindgen(js_name = onText, unchecked_param_type = "(index: number, pcm: Float32Array, steps: number) => void")] on_text: js_sys::Function,
        #[wasm_bindgen(js_name = promptTranscript, unchecked_param_type = "string | undefined")] prompt_transcript: Option<String>,
        #[wasm_bindgen(
            js_name = onProgress,
            unchecked_param_type = "((progress: { batch: number, batches: number, firstItem: number, items: number, rows: number, maxRows: number, done: number }) => void) | undefined"
        )]
        on_progress: Option<js_sys::Function>,
    ) -> js_sys::Promise {
        let batch_size = batch_size_option(&options);
        let job = self.start_job(&options);
        wasm_bindgen_futures::future_to_promise(async move {
            let (run, gpu, dia, dac, opts, _) = job?;
            let _busy = BusyGuard(run.clone());
            let batch_size = batch_size?;
            let tts = Tts { gpu: &gpu, dia: &dia, dac: &dac };
            let prompt = prompt_pcm.map(|samples| Audio { samples, sample_rate: SAMPLE_RATE });
            let voice = prompt.as_ref().map(|audio| VoicePrompt { audio, transcript: prompt_transcript.as_deref() });
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let batch_size = match batch_size {
                Some(n) => n,
                None => {
                    let frames = prompt.as_ref().map_or(0, |a| a.samples.len().div_ceil(dac.config.hop_length));
                    tts.auto_batch_size(&refs, voice, frames, &opts).map_err(batch_error)?
                }
            };
            // The first exception a callback throws: it stops the generation and is what the promise rejects with.
            let thrown: RefCell<Option<JsValue>> = RefCell::new(None);
            let call = |f: &js_sys::Function, args: &[JsValue]| {
                if thrown.borrow().is_none() {
                    let result = match args {
                        [a] => f.call1(&JsValue::NULL, a),
                        [a, b, c] => f.call3(&JsValue::NULL, a, b, c),
                        _ => unreachable!("callbacks take one or three arguments"),
                    };
                    if let Err(e) = result {
                        *thrown.borrow_mut() = Some(e);
                    }
                }
            };
            let mut on_spoken = |t: SpokenText| {
                let pcm = js_sys::Float32Array::from(t.samples.as_slice());
                call(&on_text, &[JsValue::from_f64(t.index as f64), pcm.into(), JsValue::from_f64(t.steps as f64)]);
            };
            let mut report = |p: &BatchProgress| {
                if let Some(f) = &on_progress {
                    call(f, &[batch_progress_object(p)]);
                }
            };
            let cancelled = || run.cancel.get() || thrown.borrow().is_some() || gpu.has_uncaptured_error();
            let start = js_sys::Date::now();
            let result = tts.speak_batch(&refs, voice, &opts, batch_size, &mut report, &mut on_spoken, &cancelled).await;
            gpu.check().map_err(gpu_error)?;
            if let Some(e) = thrown.take() {
                return Err(e);
            }
            let done = result.map_err(batch_error)?;
            let out = js_sys::Object::new();
            let set = |k: &str, v: f64| js_sys::Reflect::set(&out, &JsValue::from_str(k), &JsValue::from_f64(v));
            set("texts", done.texts as f64)?;
            set("batches", done.batches as f64)?;
            set("batchSize", batch_size.min(texts.len()) as f64)?;
            set("steps", done.steps as f64)?;
            set("samples", done.samples as f64)?;
            set("seconds", (js_sys::Date::now() - start) / 1000.0)?;
            Ok(out.into())
        })
    }
}

/// `BatchProgress` as the object `generateBatch`'s `onProgress` receives.
fn batch_progress_object(p: &BatchProgress) -> JsValue {
    let out = js_sys::Object::new();
    let set = |k: &str, v: usize| {
        let _ = js_sys::Reflect::set(&out, &k.into(), &JsValue::from_f64(v as f64));
    };
    set("batch", p.batch);
    set("batches", p.batches);
    set("firstItem", p.first_item);
    set("items", p.items);
    set("rows", p.rows);
    set("maxRows", p.max_rows);
    set("done", p.done);
    out.into()
}

/// A `generateBatch` failure as JavaScript sees it: as `pipeline_error`, plus a `code` for a list the engine refuses
/// (the request is at fault): "empty-list"; "nothing-to-speak" or "text-too-long" (`bytes`, `limit`) with `index`,
/// the text's place in the list; "batch-too-large" (`size`, `max`).
fn batch_error(e: PipelineError) -> JsValue {
    let error = engine_error(&e, e.is_device_lost());
    let set = |k: &str, v: JsValue| {
        let _ = js_sys::Reflect::set(&error, &k.into(), &v);
    };
    let num = |x: usize| JsValue::from_f64(x as f64);
    match e {
        PipelineError::EmptyBatch => set("code", "empty-list".into()),
        PipelineError::BatchText { index, source } => {
            set("index", num(index));
            match source {
                DiaError::EmptyText => set("code", "nothing-to-speak".into()),
                DiaError::TextTooLong { bytes, limit } => {
                    set("code", "text-too-long".into());
                    set("bytes", num(bytes));
                    set("limit", num(limit));
                }
                _ => {}
            }
        }
        PipelineError::BatchSize { size, max, .. } => {
            set("code", "batch-too-large".into());
            set("size", num(size));
            set("max", num(max));
        }
        other => return pipeline_error(other),
    }
    error
}

/// `options.batchSize` of `generateBatch`: None when absent, else a whole number in 1..=`MAX_BATCH`.
fn batch_size_option(options: &JsValue) -> Result<Option<usize>, JsValue> {
    let max = crate::dia::batch_plan::MAX_BATCH;
    match get(options, "batchSize").map(|v| v.as_f64()) {
        None => Ok(None),
        Some(Some(x)) if x.fract() == 0.0 && (1.0..=max as f64).contains(&x) => Ok(Some(x as usize)),
        Some(_) => Err(JsError::new(&format!("generateBatch: options.batchSize must be a whole number from 1 to {max}")).into()),
    }
}

/// What a model of these configs is made of, for building one from generated weights without a checkpoint (the
/// browser benchmark, web/demo/bench.html): `dia` and `dac`, every checkpoint tensor's HF name and shape
/// (`dac` as plain weights, encoder included), and `stepWeightBytes`, the weight bytes one decoder step reads in
/// `numerics` (for the weight bandwidth a generation reaches).
#[wasm_bindgen(
    js_name = checkpointLayout,
    unchecked_return_type = "{ dia: { name: string, shape: number[] }[], dac: { name: string, shape: number[] }[], stepWeightBytes: number }"
)]
pub fn checkpoint_layout(
    #[wasm_bindgen(js_name = diaConfigJson)] dia_config_json: &str,
    #[wasm_bindgen(js_name = dacConfigJson)] dac_config_json: &str,
    #[wasm_bindgen(unchecked_param_type = "\"f32\" | \"f16w\" | \"q8\" | \"q4\"")] numerics: &str,
) -> Result<JsValue, JsError> {
    let mode: Numerics = numerics.parse().map_err(|e: String| JsError::new(&e))?;
    let dia = DiaConfig::from_json_str(dia_config_json).map_err(|e| JsError::new(&format!("bad Dia config: {e}")))?;
    let dac = DacConfig::from_json_str(dac_config_json).map_err(|e| JsError::new(&format!("bad DAC config: {e}")))?;
    dac.validate().map_err(|e| JsError::new(&format!("bad DAC config: {e}")))?;
    let tensors = |list: Vec<(String, Vec<usize>)>| list.into_iter().map(|(name, shape)| serde_json::json!({ "name": name, "shape": shape })).collect::<Vec<_>>();
    let layout = serde_json::json!({
        "dia": tensors(crate::dia::layout::expected_hf_tensors(&dia)),
        "dac": tensors(crate::dac::layout::dac_tensor_specs(&dac).into_iter().map(|s| (s.name, s.shape)).collect()),
        "stepWeightBytes": crate::dia::step_weight_bytes(&dia, mode),
    });
    js_sys::JSON::parse(&layout.to_string()).map_err(|_| JsError::new("checkpointLayout: cannot build the result"))
}
