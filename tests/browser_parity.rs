//! The f32 parity cases in a browser: wasm-bindgen-test in headless Chromium, WebGPU on SwiftShader (no
//! `shader-f16`), in a dedicated worker as the product runs. Empty on native targets; run by
//! `tests/run-browser-parity`, which sets `DIA_FIXTURES` to the absolute fixture directory: there is no file
//! system in the browser, so the fixtures are embedded at compile time.
#![cfg(target_arch = "wasm32")]

mod common;

use std::cell::RefCell;
use std::rc::Rc;

use common::fixture::{cases, encoder_out, first_difference, generate_tokens, options, parse_expected, prompt_of, text_ids, tf_logits, u32s, Expected};
use common::{rel_err, snr_db};
use dia_webgpu::config::{DacConfig, DiaConfig};
use dia_webgpu::dac::DacModel;
use dia_webgpu::dia::{load_model, DiaModel};
use dia_webgpu::gpu::{Gpu, GpuOptions};
use dia_webgpu::kernels::Numerics;
use dia_webgpu::wasm::DiaEngine;
use dia_webgpu::weights::{Checkpoint, MemorySource};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::{console_log, wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_dedicated_worker);

macro_rules! fixture_file {
    ($mac:ident, $path:literal) => {
        $mac!(concat!(env!("DIA_FIXTURES", "set DIA_FIXTURES to the absolute fixture directory (tests/run-browser-parity does)"), "/", $path))
    };
}

static EXPECTED: &[u8] = fixture_file!(include_bytes, "expected.safetensors");
static EXPECTED_JSON: &str = fixture_file!(include_str, "expected.json");
static DIA_CONFIG: &str = fixture_file!(include_str, "dia/config.json");
static DIA_WEIGHTS: &[u8] = fixture_file!(include_bytes, "dia/model.safetensors");
static DAC_CONFIG: &str = fixture_file!(include_str, "dac/config.json");
static DAC_WEIGHTS: &[u8] = fixture_file!(include_bytes, "dac/model.safetensors");

/// Seconds since `start` (a `Date.now()`).
fn since(start: f64) -> f64 {
    (js_sys::Date::now() - start) / 1000.0
}

fn expected() -> Expected {
    parse_expected(EXPECTED)
}

fn meta() -> serde_json::Value {
    serde_json::from_str(EXPECTED_JSON).unwrap()
}

fn checkpoint(bytes: &'static [u8]) -> Checkpoint {
    Checkpoint::from_sources(vec![Box::new(MemorySource::new(bytes))]).unwrap()
}

thread_local! {
    static GPU: RefCell<Option<Rc<Gpu>>> = const { RefCell::new(None) };
}

/// One device for all the direct tests (tests run one at a time): its pipeline cache saves SwiftShader
/// recompiling every kernel per test.
async fn gpu() -> Rc<Gpu> {
    if let Some(gpu) = GPU.with(|g| g.borrow().clone()) {
        return gpu;
    }
    let gpu = Gpu::new(GpuOptions { high_performance: true, min_storage_binding: 16 << 20, want_shader_f16: true, want_tensor_cores: true })
        .await
        .expect("a WebGPU adapter (Chromium needs --enable-unsafe-webgpu)");
    // Chromium's SwiftShader offers subgroups: the parity cases run the kernels' subgroup variants (the native
    // tests compare them with the workgroup-memory ones).
    console_log!("adapter {}: subgroup sizes {:?}, reductions {:?}", gpu.describe(), gpu.subgroup_sizes(), gpu.reduction());
    assert_eq!(gpu.reduction(), dia_webgpu::gpu::Reduction::Subgroup, "the browser device must have been made with subgroups");
    let gpu = Rc::new(gpu);
    GPU.with(|g| *g.borrow_mut() = Some(gpu.clone()));
    gpu
}

fn dia_model(gpu: &Gpu) -> DiaModel {
    let cfg = DiaConfig::from_json_str(DIA_CONFIG).unwrap();
    load_model(gpu, &cfg, &checkpoint(DIA_WEIGHTS), Numerics::F32).unwrap()
}

fn dac_model(gpu: &Gpu, encoder: bool) -> DacModel {
    let cfg = DacConfig::from_json_str(DAC_CONFIG).unwrap();
    DacModel::load(gpu, &cfg, &checkpoint(DAC_WEIGHTS), Numerics::F32, encoder).unwrap()
}

#[wasm_bindgen_test]
async fn browser_parity_encoder_out_f32() {
    let start = js_sys::Date::now();
    let (exp, gpu) = (expected(), gpu().await);
    let m = dia_model(&gpu);
    for case in cases(&exp, ".encoder_out") {
        let (got, want) = encoder_out(&gpu, &m, &exp, &case).await;
        let err = rel_err(&got, &want);
        console_log!("{case}.encoder_out rel err {err:.2e} ({:.1} s)", since(start));
        assert!(err <= 1e-4, "{case}.encoder_out rel err {err:.2e}");
    }
}

#[wasm_bindgen_test]
async fn browser_parity_logits_tf24_f32() {
    let start = js_sys::Date::now();
    let (exp, gpu) = (expected(), gpu().await);
    let m = dia_model(&gpu);
    for case in cases(&exp, ".logits_tf24") {
        let (got, want) = tf_logits(&gpu, &m, &exp, &case).await;
        let err = rel_err(&got, &want);
        console_log!("{case}.logits_tf24 rel err {err:.2e} ({:.1} s)", since(start));
        assert!(err <= 1e-4, "{case}.logits_tf24 rel err {err:.2e}");
    }
}

#[wasm_bindgen_test]
async fn browser_parity_generated_greedy_f32() {
    let start = js_sys::Date::now();
    let (exp, gpu) = (expected(), gpu().await);
    let m = dia_model(&gpu);
    let opts = options(&meta(), "generate_kwargs");
    for case in cases(&exp, ".generated").into_iter().filter(|c| c != "batch") {
        let (shape, want) = &exp[&format!("{case}.generated")];
        let prompt = prompt_of(&exp, &case, &m.cfg);
        let got = generate_tokens(&gpu, &m, &[text_ids(&exp, &case, 0)], &prompt, &opts).await;
        if let Some(d) = first_difference(&got, &u32s(want), shape[2]) {
            console_log!("{case}: {d}");
        }
        assert_eq!(got, u32s(want), "{case}.generated differs ({} rows, reference {})", got.len() / shape[2], shape[1]);
        console_log!("{case}.generated identical ({} rows; {:.1} s)", shape[1], since(start));
    }
}

/// Issue 17's two opt-in fusions (cross-attention tables, the self-attention's combine in its output projection)
/// compiled by the browser's WebGPU and generating the reference's greedy codes; each takes a dispatch per layer out
/// of the step, so the test cannot pass on the plain route.
#[wasm_bindgen_test]
async fn browser_parity_generated_greedy_f32_fusions() {
    use dia_webgpu::dia::forward::{DecoderGraph, KvCache, PackedText};
    let start = js_sys::Date::now();
    let (exp, gpu) = (expected(), gpu().await);
    let m = dia_model(&gpu);
    let set = |on: bool| {
        gpu.set_cross_tables(Some(on));
        gpu.set_attention_o_fused(on);
    };
    let step_dispatches = |on: bool| {
        set(on);
        let enc = m.encode(&gpu, PackedText::new(&[text_ids(&exp, "t0", 0)]));
        let cache = KvCache::new(&gpu, &m, 2, m.cfg.decoder.max_positions as u32);
        DecoderGraph::new(&gpu, &m, &enc, &cache, 1, 1).dispatches()
    };
    let (plain, fused) = (step_dispatches(false), step_dispatches(true));
    assert_eq!(plain - fused, 2 * m.cfg.decoder.layers, "dispatches per step: {plain} plain, {fused} with both fusions");
    let opts = options(&meta(), "generate_kwargs");
    let (shape, want) = &exp["t0.generated"];
    let prompt = prompt_of(&exp, "t0", &m.cfg);
    let got = generate_tokens(&gpu, &m, &[text_ids(&exp, "t0", 0)], &prompt, &opts).await;
    set(false);
    if let Some(d) = first_difference(&got, &u32s(want), shape[2]) {
        console_log!("t0 with both fusions: {d}");
    }
    assert_eq!(got, u32s(want), "t0.generated differs with both fusions");
    console_log!("t0.generated identical with both fusions ({} rows; {:.1} s)", shape[1], since(start));
}

#[wasm_bindgen_test]
async fn browser_parity_batch_generated_f32() {
    let start = js_sys::Date::now();
    let (exp, gpu) = (expected(), gpu().await);
    let m = dia_model(&gpu);
    let (shape, want) = &exp["batch.generated"];
    let items: Vec<Vec<u32>> = (0..shape[0]).map(|b| text_ids(&exp, "batch", b)).collect();
    let got = generate_tokens(&gpu, &m, &items, &[], &options(&meta(), "generate_kwargs")).await;
    assert_eq!(got, u32s(want), "batch.generated differs");
    console_log!("batch.generated identical ({} items × {} rows; {:.1} s)", shape[0], shape[1], since(start));
}

#[wasm_bindgen_test]
async fn browser_parity_dac_decode_f32() {
    let start = js_sys::Date::now();
    let (exp, gpu) = (expected(), gpu().await);
    let (cshape, codes) = &exp["dac.codes"];
    let want = &exp["dac.decoded"].1;
    let got = dac_model(&gpu, false).decode(&gpu, &u32s(codes), cshape[2]).await.unwrap();
    assert_eq!(got.len(), want.len());
    let snr = snr_db(&got, want);
    console_log!("dac.decoded SNR {snr:.1} dB, rel err {:.2e} ({:.1} s)", rel_err(&got, want), since(start));
    assert!(snr >= 60.0, "dac.decoded SNR {snr:.1} dB");
}

#[wasm_bindgen_test]
async fn browser_parity_dac_encode_codes_identical() {
    let start = js_sys::Date::now();
    let (exp, gpu) = (expected(), gpu().await);
    let got = dac_model(&gpu, true).encode(&gpu, &exp["clone.prompt_pcm"].1).await.unwrap();
    let (shape, want) = &exp["dac.encoded_codes"];
    assert_eq!(got, u32s(want), "dac.encoded_codes differ");
    console_log!("dac.encoded_codes identical ({} codebooks × {} frames; {:.1} s)", shape[1], shape[2], since(start));
}

/// The message of a thrown JS value.
fn message(e: JsValue) -> String {
    e.dyn_ref::<js_sys::Error>().map(|e| String::from(e.message())).unwrap_or_else(|| format!("{e:?}"))
}

/// Streams every tensor of a safetensors file through `put(name, dtype, shape, bytes)`, as the worker does.
fn put_all(bytes: &'static [u8], mut put: impl FnMut(&str, &str, &[u32], &[u8]) -> Result<(), JsError>) {
    let ckpt = checkpoint(bytes);
    for name in ckpt.names() {
        let info = ckpt.info(name).unwrap();
        let shape: Vec<u32> = info.shape.iter().map(|&d| d as u32).collect();
        put(name, info.dtype.name(), &shape, &ckpt.read_bytes(name).unwrap()).map_err(|e| message(e.into())).unwrap();
    }
}

/// `engine.generate(text, options, prompt, chunk => …)`: (samples collected, number of chunks, result or error).
async fn speak(engine: &DiaEngine, text: &str, opts: &js_sys::Object, prompt: Option<Vec<f32>>) -> (Vec<f32>, usize, Result<JsValue, String>) {
    let pcm = Rc::new(RefCell::new((Vec::new(), 0)));
    let sink = pcm.clone();
    let on_chunk = Closure::<dyn FnMut(js_sys::Float32Array)>::new(move |a: js_sys::Float32Array| {
        let mut s = sink.borrow_mut();
        s.0.extend(a.to_vec());
        s.1 += 1;
    });
    let promise = engine.generate(text.to_string(), opts.into(), prompt, on_chunk.as_ref().unchecked_ref::<js_sys::Function>().clone(), None, None);
    let result = JsFuture::from(promise).await.map_err(message);
    let (samples, chunks) = pcm.take();
    (samples, chunks, result)
}

fn field(obj: &JsValue, key: &str) -> f64 {
    js_sys::Reflect::get(obj, &key.into()).unwrap().as_f64().unwrap()
}

/// Text → PCM through the exported `DiaEngine`, weights streamed in tensor by tensor: the reference's audio
/// for a text-only and a voice-prompt case; errors are JS `Error`s; a cancelled run leaves the engine usable.
#[wasm_bindgen_test]
async fn browser_engine_pcm_f32() {
    let start = js_sys::Date::now();
    let exp = expected();
    let meta = meta();
    let texts: Vec<&str> = meta["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    let bad = DiaEngine::create("f64".into()).await.map(|_| ()).map_err(|e| message(e.into()));
    assert!(bad.as_ref().is_err_and(|m| m.contains("unknown numerics")), "{bad:?}");
    let mut engine = DiaEngine::create("f32".into()).await.map_err(|e| message(e.into())).unwrap();
    console_log!("engine adapter: {}", engine.adapter_info());
    assert!(engine.adapter_info().contains("(used)"), "the engine's device must use subgroups: {}", engine.adapter_info());

    // Nothing loaded: generate rejects at once with a readable message.
    let k = &meta["generate_kwargs"];
    let opts = js_sys::Object::new();
    for (key, v) in [("temperature", 0.0), ("topP", 1.0), ("cfgScale", k["guidance_scale"].as_f64().unwrap()), ("cfgFilterTopK", k["top_k"].as_f64().unwrap()), ("maxNewTokens", k["max_new_tokens"].as_f64().unwrap())] {
        js_sys::Reflect::set(&opts, &key.into(), &v.into()).unwrap();
    }
    let (_, _, r) = speak(&engine, texts[0], &opts, None).await;
    assert!(r.as_ref().is_err_and(|m| m.contains("no model loaded")), "{r:?}");

    engine.begin_model(DIA_CONFIG).unwrap();
    let bad = engine.put_model_tensor("model.encoder.norm.weight", "F32", &[3], vec![0; 12]).map_err(|e| message(e.into()));
    assert!(bad.as_ref().is_err_and(|m| m.contains("model.encoder.norm.weight") && m.contains("shape")), "{bad:?}");
    let short = engine.put_model_tensor("model.encoder.norm.weight", "BF16", &[64], vec![0; 12]).map_err(|e| message(e.into()));
    assert!(short.as_ref().is_err_and(|m| m.contains("12 bytes") && m.contains("needs 128")), "{short:?}");
    let int = engine.put_model_tensor("model.encoder.norm.weight", "I64", &[64], vec![0; 512]).map_err(|e| message(e.into()));
    assert!(int.as_ref().is_err_and(|m| m.contains("I64")), "{int:?}");
    let total = engine.model_missing().unwrap().len();
    put_all(DIA_WEIGHTS, |n, d, s, b| engine.put_model_tensor(n, d, s, b.to_vec()));
    assert!(engine.model_missing().unwrap().is_empty());
    engine.finish_model().unwrap();
    let memory = engine.memory().unwrap();
    assert!(field(&memory, "allocated") > 0.0 && field(&memory, "peak") >= field(&memory, "allocated"), "memory() after loading the model: {memory:?}");
    engine.begin_codec(DAC_CONFIG, true).unwrap();
    put_all(DAC_WEIGHTS, |n, d, s, b| engine.put_codec_tensor(n, d, s, b));
    engine.finish_codec().unwrap();
    console_log!("engine: {total} model tensors and the codec streamed in ({:.1} s)", since(start));

    // One generation at a time; cancelled before its first step, it rejects with "cancelled".
    let promise = engine.generate(texts[0].to_string(), opts.clone().into(), None, js_sys::Function::new_no_args(""), None, None);
    let second = JsFuture::from(engine.generate(texts[0].to_string(), opts.clone().into(), None, js_sys::Function::new_no_args(""), None, None)).await.map_err(message);
    assert!(second.as_ref().is_err_and(|m| m.contains("already running")), "{second:?}");
    engine.cancel();
    let r = JsFuture::from(promise).await.map_err(message);
    assert!(r.as_ref().is_err_and(|m| m.contains("cancelled")), "{r:?}");

    // An exception thrown by onChunk rejects the generation with that exception.
    let short = js_sys::Object::assign(&js_sys::Object::new(), &opts);
    js_sys::Reflect::set(&short, &"maxNewTokens".into(), &24.into()).unwrap();
    let throwing = js_sys::Function::new_with_args("pcm", "throw new Error(`player full after ${pcm.length} samples`)");
    let r = JsFuture::from(engine.generate(texts[0].to_string(), short.into(), None, throwing, None, None)).await.map_err(message);
    assert!(r.as_ref().is_err_and(|m| m.starts_with("player full after")), "{r:?}");

    let prompt = exp["clone.prompt_pcm"].1.clone();
    for (case, text, prompt) in [("t0", texts[0], None), ("clone", texts[0], Some(prompt))] {
        let want = &exp[&format!("{case}.pcm")].1;
        let (pcm, chunks, r) = speak(&engine, text, &opts, prompt).await;
        let r = r.unwrap();
        assert_eq!(pcm.len(), want.len(), "{case}: {} samples, reference {}", pcm.len(), want.len());
        assert_eq!(field(&r, "samples") as usize, pcm.len());
        let snr = snr_db(&pcm, want);
        console_log!("engine {case}.pcm: {} samples in {chunks} chunks, {} steps, {:.1} s, SNR {snr:.1} dB", pcm.len(), field(&r, "steps"), field(&r, "seconds"));
        assert!(snr >= 60.0, "{case}.pcm SNR {snr:.1} dB");
    }
}
