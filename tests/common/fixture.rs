//! The reference fixture cases, shared by the native parity tests and the browser ones: no file system and
//! no blocking here, so the same code runs under wasm-bindgen-test. Dims, texts and generation arguments
//! come from the fixture files.

use std::collections::BTreeMap;

use dia_webgpu::config::DiaConfig;
use dia_webgpu::dia::delay::prompt_from_prefix;
use dia_webgpu::dia::forward::PackedText;
use dia_webgpu::dia::{DiaModel, GenerateOptions, Session};
use dia_webgpu::gpu::Gpu;
use dia_webgpu::kernels::sampling::SamplingParams;

/// Tensor name → (shape, values as f32).
pub type Expected = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Every tensor of a safetensors file as (shape, f32 data); integer and f64 tensors are converted.
pub fn parse_expected(bytes: &[u8]) -> Expected {
    let st = safetensors::SafeTensors::deserialize(bytes).expect("parse fixture");
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let data: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => bytemuck::pod_collect_to_vec(view.data()),
            safetensors::Dtype::F64 => {
                let v: Vec<f64> = bytemuck::pod_collect_to_vec(view.data());
                v.into_iter().map(|x| x as f32).collect()
            }
            safetensors::Dtype::I64 => {
                let v: Vec<i64> = bytemuck::pod_collect_to_vec(view.data());
                v.into_iter().map(|x| x as f32).collect()
            }
            safetensors::Dtype::I32 => {
                let v: Vec<i32> = bytemuck::pod_collect_to_vec(view.data());
                v.into_iter().map(|x| x as f32).collect()
            }
            d => panic!("fixture tensor {name}: unexpected dtype {d:?}"),
        };
        out.insert(name, (shape, data));
    }
    out
}

/// Cases that have a given suffix, e.g. ".encoder_out" → ["clone", "t0", "t1"].
pub fn cases(exp: &Expected, suffix: &str) -> Vec<String> {
    let v: Vec<String> = exp.keys().filter_map(|k| k.strip_suffix(suffix)).filter(|c| !c.contains('.')).map(String::from).collect();
    assert!(!v.is_empty(), "no fixture case has {suffix}");
    v
}

pub fn u32s(v: &[f32]) -> Vec<u32> {
    v.iter().map(|&x| x as u32).collect()
}

/// The real (unpadded) text ids of batch item `b` of `<case>.in.input_ids`.
pub fn text_ids(exp: &Expected, case: &str, b: usize) -> Vec<u32> {
    let (shape, ids) = &exp[&format!("{case}.in.input_ids")];
    let (_, mask) = &exp[&format!("{case}.in.attention_mask")];
    let l = shape[1];
    (0..l).filter(|&i| mask[b * l + i] != 0.0).map(|i| ids[b * l + i] as u32).collect()
}

/// Generation options from expected.json's `generate_kwargs` / `sampled_kwargs`.
pub fn options(meta: &serde_json::Value, key: &str) -> GenerateOptions {
    let k = &meta[key];
    let sample = k["do_sample"].as_bool().unwrap_or(false);
    GenerateOptions {
        sampling: SamplingParams {
            cfg_scale: k["guidance_scale"].as_f64().unwrap() as f32,
            cfg_filter_top_k: k["top_k"].as_u64().unwrap() as u32,
            temperature: if sample { k["temperature"].as_f64().unwrap_or(1.0) as f32 } else { 0.0 },
            top_p: if sample { k["top_p"].as_f64().unwrap_or(1.0) as f32 } else { 1.0 },
            seed: 0,
        },
        max_new_tokens: k["max_new_tokens"].as_u64().unwrap() as usize,
        ..GenerateOptions::default()
    }
}

/// Undelayed prompt codes carried by a case's delayed decoder prefix (empty without a prompt).
pub fn prompt_of(exp: &Expected, case: &str, cfg: &DiaConfig) -> Vec<u32> {
    let (shape, prefix) = &exp[&format!("{case}.in.decoder_input_ids")];
    let c = shape[2];
    let item0 = u32s(&prefix[..shape[1] * c]);
    prompt_from_prefix(&item0, &cfg.delay_pattern, cfg.pad)
}

/// `[C, T, V]` (fixture layout) from `[T, C, V]`.
pub fn channel_major(tcv: &[f32], t: usize, c: usize, v: usize) -> Vec<f32> {
    let mut out = vec![0.0; tcv.len()];
    for ti in 0..t {
        for ci in 0..c {
            out[(ci * t + ti) * v..][..v].copy_from_slice(&tcv[(ti * c + ci) * v..][..v]);
        }
    }
    out
}

/// (got, want) encoder output of `case`'s conditional row.
pub async fn encoder_out(gpu: &Gpu, m: &DiaModel, exp: &Expected, case: &str) -> (Vec<f32>, Vec<f32>) {
    let enc = m.encode(gpu, PackedText::new(&[text_ids(exp, case, 0)]));
    let got = gpu.read_f32(&enc.enc_out).await.unwrap();
    let want = exp[&format!("{case}.encoder_out")].1.clone();
    (got[..want.len()].to_vec(), want)
}

/// (got, want) conditional logits of the first rows of `case`'s generation fed teacher-forced, `[C, T, V]`.
pub async fn tf_logits(gpu: &Gpu, m: &DiaModel, exp: &Expected, case: &str) -> (Vec<f32>, Vec<f32>) {
    let (shape, want) = &exp[&format!("{case}.logits_tf24")];
    let (c, t, v) = (shape[0], shape[1], shape[2]);
    let (_, gen) = &exp[&format!("{case}.generated")];
    let rows = u32s(&gen[..t * c]);
    let got = m.teacher_forced_logits(gpu, &text_ids(exp, case, 0), &rows).await.unwrap();
    (channel_major(&got, t, c, v), want.clone())
}

/// Delayed codes of one generation, `[B, rows, C]` (the fixtures' layout).
pub async fn generate_tokens(gpu: &Gpu, m: &DiaModel, items: &[Vec<u32>], prompt: &[u32], opts: &GenerateOptions) -> Vec<u32> {
    let mut s = Session::from_tokens(gpu, m, items, (!prompt.is_empty()).then_some(prompt), opts, false).unwrap();
    let g = s.run(opts, &mut |_: usize, _: &[u32]| {}, || false).await.unwrap();
    (0..g.batch).flat_map(|b| g.item(b)).collect()
}

/// Where two code sequences of `c` channels first differ, for failure messages.
pub fn first_difference(got: &[u32], want: &[u32], c: usize) -> Option<String> {
    let i = (0..got.len().min(want.len())).find(|&i| got[i] != want[i])?;
    let r = i / c;
    Some(format!("first differing row {r}: got {:?} want {:?}", &got[r * c..][..c], &want[r * c..][..c]))
}
