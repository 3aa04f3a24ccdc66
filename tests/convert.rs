//! Converted checkpoints (`dia::stored`, `dia-tts convert`): a checkpoint converted for a mode loads in it with
//! bit-identical GPU weights to quantizing (or packing) the original on load, from either layout; quantized
//! halves arriving one at a time (the browser's path) land the same; malformed converted checkpoints and bad
//! conversions are typed errors that leave nothing behind.

mod common;

use std::path::{Path, PathBuf};

use dia_webgpu::config::DiaConfig;
use dia_webgpu::dia::stored::{convert_dir, stored_form, NUMERICS_METADATA_KEY};
use dia_webgpu::dia::{load_model_dir, stored_numerics, DiaError, DiaModel, DiaModelBuilder};
use dia_webgpu::gpu::Gpu;
use dia_webgpu::kernels::{GpuMatrix, Numerics};
use dia_webgpu::dia::layout::DiaWeights;
use dia_webgpu::weights::{Checkpoint, WeightsError};
use safetensors::tensor::TensorView;
use safetensors::SafeTensors;

fn dia_dir() -> PathBuf {
    common::fixtures_dir().join("dia")
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dia-convert-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn convert(src: &Path, out: &Path, numerics: Numerics) -> Result<(), DiaError> {
    convert_dir(src, out, numerics, &mut |_, _| {}).map(|_| ())
}

/// Every weight buffer of a model, in a fixed order, as bytes.
fn weight_bytes(gpu: &Gpu, m: &DiaModel) -> Vec<(String, Vec<u8>)> {
    let mut mats: Vec<(String, &GpuMatrix)> = vec![("enc_embedding".into(), &m.enc_embedding), ("dec_embedding".into(), &m.dec_embedding), ("logits".into(), &m.logits)];
    let mut vecs = vec![("enc_norm".to_string(), &m.enc_norm), ("dec_norm".to_string(), &m.dec_norm)];
    for (i, l) in m.enc_layers.iter().enumerate() {
        for (n, w) in [("qkv", &l.qkv), ("o", &l.o), ("gate_up", &l.gate_up), ("down", &l.down)] {
            mats.push((format!("enc{i}.{n}"), w));
        }
        vecs.extend([(format!("enc{i}.pre_sa"), &l.pre_sa_norm), (format!("enc{i}.post_sa"), &l.post_sa_norm)]);
    }
    for (i, l) in m.dec_layers.iter().enumerate() {
        for (n, w) in [("qkv", &l.qkv), ("o", &l.o), ("cross_q", &l.cross_q), ("cross_kv", &l.cross_kv), ("cross_o", &l.cross_o), ("gate_up", &l.gate_up), ("down", &l.down)] {
            mats.push((format!("dec{i}.{n}"), w));
        }
        vecs.extend([(format!("dec{i}.pre_sa"), &l.pre_sa_norm), (format!("dec{i}.pre_ca"), &l.pre_ca_norm), (format!("dec{i}.pre_mlp"), &l.pre_mlp_norm)]);
    }
    let mut out: Vec<(String, Vec<u8>)> =
        mats.into_iter().map(|(n, w)| (format!("{n} [{}]", w.format.name()), bytes(gpu, &w.data))).collect();
    out.extend(vecs.into_iter().map(|(n, b)| (n, bytes(gpu, b))));
    out
}

fn bytes(gpu: &Gpu, b: &dia_webgpu::gpu::GpuBuffer) -> Vec<u8> {
    gpu.read_u32_blocking(b).unwrap().iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn assert_same_weights(gpu: &Gpu, got: &DiaModel, want: &DiaModel, what: &str) {
    let (got, want) = (weight_bytes(gpu, got), weight_bytes(gpu, want));
    assert_eq!(got.len(), want.len());
    for ((gn, gb), (wn, wb)) in got.iter().zip(&want) {
        assert_eq!(gn, wn, "{what}: buffer order");
        assert!(gb == wb, "{what}: {gn} differs ({} bytes)", gb.len());
    }
}

#[test]
fn convert_loads_bit_identical_to_converting_on_load() {
    let gpu = common::test_gpu();
    let dir = temp_dir("identical");
    // The nari layout too: the converter writes the HF layout whatever it reads.
    let cfg_text = std::fs::read_to_string(dia_dir().join("config.json")).unwrap();
    let cfg = DiaConfig::from_json_str(&cfg_text).unwrap();
    let nari = dir.join("nari");
    std::fs::create_dir(&nari).unwrap();
    std::fs::write(nari.join("config.json"), &cfg_text).unwrap();
    std::fs::write(nari.join("model.safetensors"), common::nari::hf_to_nari(&std::fs::read(dia_dir().join("model.safetensors")).unwrap(), &cfg)).unwrap();
    for numerics in [Numerics::F32, Numerics::F16W, Numerics::Q8, Numerics::Q4] {
        let original = load_model_dir(&gpu, &dia_dir(), numerics).unwrap();
        for (tag, src) in [("hf", dia_dir()), ("nari", nari.clone())] {
            let out = dir.join(format!("{tag}-{}", numerics.name()));
            convert(&src, &out, numerics).unwrap();
            let converted = load_model_dir(&gpu, &out, numerics).unwrap();
            assert_same_weights(&gpu, &converted, &original, &format!("{tag} → {}", numerics.name()));
            // The mode is recognisable from the checkpoint, and the file says it too.
            let ckpt = Checkpoint::open_dir(&out).unwrap();
            let expect = matches!(numerics, Numerics::Q8 | Numerics::Q4).then_some(numerics);
            assert_eq!(stored_numerics(&cfg, &ckpt).unwrap(), expect);
            let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
            let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
            assert_eq!(meta.metadata().as_ref().and_then(|m| m.get(NUMERICS_METADATA_KEY)).map(String::as_str), Some(numerics.name()));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn convert_sizes_follow_the_mode() {
    let dir = temp_dir("sizes");
    let size = |n: Numerics| {
        let out = dir.join(n.name());
        convert(&dia_dir(), &out, n).unwrap();
        std::fs::metadata(out.join("model.safetensors")).unwrap().len()
    };
    let (f32, f16, q8, q4) = (size(Numerics::F32), size(Numerics::F16W), size(Numerics::Q8), size(Numerics::Q4));
    assert!(f16 < f32 * 6 / 10 && q8 < f16 && q4 < q8, "f32 {f32}, f16 {f16}, q8 {q8}, q4 {q4}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The browser's path: tensors arrive one at a time as stored bytes, a quantized matrix's halves in either order.
#[test]
fn convert_stored_halves_in_any_order_load_the_same() {
    let gpu = common::test_gpu();
    let cfg = DiaConfig::from_json_str(&std::fs::read_to_string(dia_dir().join("config.json")).unwrap()).unwrap();
    let ckpt = Checkpoint::open_dir(&dia_dir()).unwrap();
    let weights = DiaWeights::new(&ckpt, &cfg).unwrap();
    let numerics = Numerics::Q4;
    let want = load_model_dir(&gpu, &dia_dir(), numerics).unwrap();
    let mut b = DiaModelBuilder::new(&gpu, &cfg, numerics).unwrap();
    for (i, (name, shape)) in b.expected().into_iter().enumerate() {
        let mut parts = stored_form(&name, &shape, weights.read_values(&name).unwrap(), numerics).unwrap();
        if i % 2 == 1 {
            parts.reverse();
        }
        for p in parts {
            b.put_stored(&p.name, p.dtype, &p.shape, p.bytes).unwrap();
        }
    }
    assert!(b.missing().is_empty());
    assert_same_weights(&gpu, &b.finish().unwrap(), &want, "halves");

    // A half of the wrong dtype, a half of a tensor the model lacks, a mismatched pair.
    let mut b = DiaModelBuilder::new(&gpu, &cfg, numerics).unwrap();
    let name = "model.decoder.layers.0.mlp.down_proj.weight";
    let shape = weights.hf_shape(name).unwrap().to_vec();
    let parts = stored_form(name, &shape, weights.read_values(name).unwrap(), numerics).unwrap();
    let (values, scales) = (&parts[0], &parts[1]);
    assert!(matches!(b.put_stored(&values.name, scales.dtype, &values.shape, values.bytes.clone()), Err(DiaError::Weights(WeightsError::UnsupportedDtype { .. }))));
    assert!(matches!(b.put_stored("model.decoder.layers.99.mlp.down_proj.qweight", values.dtype, &values.shape, values.bytes.clone()), Err(DiaError::UnexpectedTensor(_))));
    b.put_stored(&values.name, values.dtype, &values.shape, values.bytes.clone()).unwrap();
    let err = b.put_stored(&scales.name, scales.dtype, &[scales.shape[0], scales.shape[1] + 1], scales.bytes.clone()).unwrap_err();
    assert!(matches!(err, DiaError::Weights(WeightsError::QuantizedTensor { .. })), "{err}");
    assert!(b.missing().contains(&name.to_string()));
}

/// Rewrites a converted checkpoint's file with `edit` applied to its (name, dtype, shape, bytes) list.
fn edited_copy(src: &Path, dst: &Path, edit: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>)) {
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> =
        st.tensors().into_iter().map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec())).collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> = tensors.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    std::fs::create_dir_all(dst).unwrap();
    std::fs::copy(src.join("config.json"), dst.join("config.json")).unwrap();
    std::fs::write(dst.join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn convert_malformed_converted_checkpoints_are_typed_errors() {
    let gpu = common::test_gpu();
    let dir = temp_dir("malformed");
    let q4 = dir.join("q4");
    convert(&dia_dir(), &q4, Numerics::Q4).unwrap();
    let down = "model.decoder.layers.0.mlp.down_proj";
    let load = |d: &Path| load_model_dir(&gpu, d, Numerics::Q4).map(|_| ());

    edited_copy(&q4, &dir.join("no-scales"), |t| t.retain(|x| x.0 != format!("{down}.scales")));
    let e = load(&dir.join("no-scales")).unwrap_err();
    assert!(matches!(&e, DiaError::Weights(WeightsError::MissingTensor { name }) if name.ends_with(".scales")), "{e}");

    edited_copy(&q4, &dir.join("i32"), |t| t.iter_mut().filter(|x| x.0 == format!("{down}.qweight")).for_each(|x| x.1 = safetensors::Dtype::I32));
    let e = load(&dir.join("i32")).unwrap_err();
    assert!(matches!(&e, DiaError::Weights(WeightsError::UnsupportedDtype { .. })), "{e}");

    edited_copy(&q4, &dir.join("short"), |t| {
        let x = t.iter_mut().find(|x| x.0 == format!("{down}.qweight")).unwrap();
        x.2[1] -= 1;
        x.3.truncate(x.2.iter().product::<usize>() * 4);
    });
    let e = load(&dir.join("short")).unwrap_err();
    assert!(matches!(&e, DiaError::Weights(WeightsError::QuantizedTensor { .. })), "{e}");

    // Both the plain matrix and a quantized half: the extra tensor is named.
    edited_copy(&q4, &dir.join("both"), |t| {
        let x = t.iter().find(|x| x.0 == format!("{down}.scales")).unwrap().clone();
        t.push((format!("{down}.weight"), x.1, x.2, x.3));
    });
    let e = load(&dir.join("both")).unwrap_err();
    assert!(matches!(&e, DiaError::Weights(WeightsError::UnexpectedTensors { names }) if names == &[format!("{down}.weight")]), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn convert_refusals_leave_nothing_behind() {
    let dir = temp_dir("refusals");
    let listing = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    };
    // An existing output is never touched.
    std::fs::create_dir(dir.join("taken")).unwrap();
    assert!(matches!(convert(&dia_dir(), &dir.join("taken"), Numerics::Q8), Err(DiaError::BadOptions(_))));
    // A converted checkpoint is not converted again.
    convert(&dia_dir(), &dir.join("q8"), Numerics::Q8).unwrap();
    let e = convert(&dir.join("q8"), &dir.join("again"), Numerics::Q4).unwrap_err();
    assert!(e.to_string().contains("already a converted checkpoint"), "{e}");
    // A weight that cannot be quantized fails after writing has begun: the partial output is removed.
    let bad = dir.join("nan");
    edited_copy(&dia_dir(), &bad, |t| {
        let x = t.iter_mut().find(|x| x.0.ends_with("mlp.down_proj.weight")).unwrap();
        x.3[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    let e = convert(&bad, &dir.join("out"), Numerics::Q4).unwrap_err();
    assert!(matches!(e, DiaError::Quantization { .. }), "{e}");
    // A missing output parent and a missing source.
    assert!(matches!(convert(&dia_dir(), &dir.join("no/such/dir"), Numerics::Q8), Err(DiaError::BadOptions(_))));
    assert!(convert(&dir.join("nowhere"), &dir.join("out2"), Numerics::Q8).is_err());
    assert_eq!(listing(&dir), ["nan", "q8", "taken"]);
    assert!(listing(&dir.join("taken")).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The browser's block-wise conversion from stored bytes gives exactly the whole-tensor conversion, from every
/// float dtype, in every mode, on row counts that are no multiple of its block; a NaN is reported at its row.
#[test]
fn convert_from_bytes_block_by_block_equals_whole_tensor() {
    use dia_webgpu::dia::stored::stored_form_from_bytes;
    use dia_webgpu::dia::layout::TensorValues;
    use dia_webgpu::weights::Dtype;
    let mut rng = common::Rng::new(7);
    let names = ["model.decoder.layers.0.mlp.down_proj.weight", "model.decoder.layers.0.self_attention.q_proj.weight", "model.decoder.embeddings.embed.weight", "model.decoder.norm.weight"];
    for name in names {
        for shape in [vec![1usize, 40], vec![63, 70], vec![64, 32], vec![130, 33], vec![200]] {
            if (shape.len() == 1) != name.ends_with("norm.weight") {
                continue;
            }
            let data = rng.vec(shape.iter().product(), 2.0);
            for dtype in [Dtype::F32, Dtype::BF16, Dtype::F16] {
                let bytes: Vec<u8> = match dtype {
                    Dtype::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    Dtype::BF16 => data.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
                    _ => data.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
                };
                let values = TensorValues::F32(dia_webgpu::weights::tensor_to_f32(name, dtype, &shape, &bytes).unwrap());
                for numerics in [Numerics::F32, Numerics::F16W, Numerics::Q8, Numerics::Q4] {
                    let want = stored_form(name, &shape, values.clone(), numerics).unwrap();
                    let got = stored_form_from_bytes(name, dtype, &shape, &bytes, numerics).unwrap();
                    assert_eq!(got, want, "{name} {shape:?} {dtype} {}", numerics.name());
                }
            }
        }
    }
    // A NaN in row 100 of a 130-row matrix (second block) is reported at row 100; a short buffer is a size error.
    let mut data = vec![0.5f32; 130 * 33];
    data[100 * 33 + 5] = f32::NAN;
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let e = stored_form_from_bytes(names[0], Dtype::F32, &[130, 33], &bytes, Numerics::Q4).unwrap_err();
    assert!(matches!(&e, DiaError::Quantization { source: dia_webgpu::quant::QuantError::NonFinite { row: 100, col: 5, .. }, .. }), "{e}");
    let e = stored_form_from_bytes(names[0], Dtype::F32, &[130, 33], &bytes[4..], Numerics::Q4).unwrap_err();
    assert!(matches!(&e, DiaError::Weights(WeightsError::SizeMismatch { .. })), "{e}");
}
