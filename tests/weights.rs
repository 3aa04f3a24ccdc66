//! Config parsing and checkpoint reading (pure CPU): the fixture configs and checkpoint, the real 1.6B layout
//! (as a sparse file), the nari layout, sharded checkpoints, dtype conversion and every malformed-input error.

mod common;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::PathBuf;

use dia_webgpu::config::{ConfigError, ConfigSchema, DacConfig, DiaConfig};
use dia_webgpu::dia::layout::{expected_hf_tensors, DiaLayout, DiaWeights};
use dia_webgpu::weights::{ByteSource, Checkpoint, Dtype, FileSource, Header, MemorySource, WeightsError};
use serde_json::{json, Value};

fn dia_dir() -> PathBuf {
    common::fixtures_dir().join("dia")
}

fn read_text(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn real_layout() -> Value {
    serde_json::from_str(&read_text(common::fixtures_dir().join("../real-layout.json"))).expect("real-layout.json")
}

fn fixture_dia_config_json() -> Value {
    serde_json::from_str(&read_text(dia_dir().join("config.json"))).unwrap()
}

fn fixture_dia_config() -> DiaConfig {
    DiaConfig::from_json_str(&read_text(dia_dir().join("config.json"))).expect("fixture config parses")
}

fn fixture_bytes() -> Vec<u8> {
    std::fs::read(dia_dir().join("model.safetensors")).unwrap()
}

fn memory_checkpoint(bytes: Vec<u8>) -> Result<Checkpoint, WeightsError> {
    Checkpoint::from_sources(vec![Box::new(MemorySource::new(bytes))])
}

/// Little-endian f32 values of a byte slice.
fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

/// Bit-for-bit equality (NaN payloads and signed zeros included), reporting the first difference.
fn assert_same_bits(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let differing = got.iter().zip(want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a.to_bits() != b.to_bits()) {
        panic!("{what}: {differing} of {} values differ, first at {i}: {} vs {}", got.len(), got[i], want[i]);
    }
}

/// Every tensor of a safetensors file read with the `safetensors` crate (independent of the code under test).
fn reference_tensors(bytes: &[u8]) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    st.tensors().into_iter().map(|(n, v)| (n, (v.shape().to_vec(), f32s(v.data())))).collect()
}

/// A safetensors header (JSON padded to 8 bytes, with its length prefix) for (name, dtype, shape, offsets).
fn header_bytes(entries: &[(&str, &str, Vec<usize>, [u64; 2])]) -> Vec<u8> {
    let mut table = serde_json::Map::new();
    table.insert("__metadata__".into(), json!({"format": "pt"}));
    for (name, dtype, shape, offsets) in entries {
        table.insert(name.to_string(), json!({"dtype": dtype, "shape": shape, "data_offsets": offsets}));
    }
    let mut text = serde_json::to_vec(&Value::Object(table)).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out
}

/// Header for tensors laid out back to back in the given order; returns (header, data length).
fn sequential_header(tensors: &[(String, Vec<usize>)], dtype: &str, elem: u64) -> (Vec<u8>, u64) {
    let mut offset = 0u64;
    let mut entries = Vec::new();
    for (name, shape) in tensors {
        let len = shape.iter().product::<usize>() as u64 * elem;
        entries.push((name.as_str(), dtype, shape.clone(), [offset, offset + len]));
        offset += len;
    }
    (header_bytes(&entries), offset)
}

/// A source that is `header` followed by zeros up to `len`, recording the furthest byte any read touched
/// (so a test can prove that validation stays inside the header).
struct HeaderThenZeros {
    header: Vec<u8>,
    len: u64,
    furthest_read: Cell<u64>,
}

impl ByteSource for HeaderThenZeros {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), WeightsError> {
        let end = offset + buf.len() as u64;
        if end > self.len {
            return Err(WeightsError::ReadOutOfRange { offset, len: buf.len() as u64, source_len: self.len });
        }
        self.furthest_read.set(self.furthest_read.get().max(end));
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.header.get(offset as usize + i).copied().unwrap_or(0);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------- configs

#[test]
fn weights_config_fixture_dia() {
    let cfg = fixture_dia_config();
    assert_eq!(cfg.schema, ConfigSchema::Hf);
    assert!(!cfg.cross_attention_rope);
    let e = &cfg.encoder;
    assert_eq!(
        (e.layers, e.hidden, e.intermediate, e.heads, e.kv_heads, e.head_dim, e.vocab, e.max_positions),
        (2, 64, 128, 4, 4, 16, 256, 1024)
    );
    let d = &cfg.decoder;
    assert_eq!(
        (d.layers, d.hidden, d.intermediate, d.heads, d.kv_heads, d.head_dim, d.vocab, d.channels, d.max_positions),
        (2, 96, 192, 4, 2, 16, 1028, 9, 3072)
    );
    assert_eq!((d.cross_heads, d.cross_kv_heads, d.cross_head_dim, d.cross_hidden), (4, 4, 16, 64));
    assert_eq!((e.norm_eps, d.norm_eps, e.rope_theta, d.rope_theta), (1e-5, 1e-5, 10_000.0, 10_000.0));
    // transformers 5 leaves the top-level ids null: they come from decoder_config.
    assert_eq!((cfg.bos, cfg.eos, cfg.pad), (1026, 1024, 1025));
    assert_eq!(cfg.delay_pattern, vec![0, 8, 9, 10, 11, 12, 13, 14, 15]);
    assert_eq!(cfg.max_delay(), 15);
}

#[test]
fn weights_config_real_layout_equals_builtin() {
    let real = real_layout();
    let dia = DiaConfig::from_json_str(&real["dia_config"].to_string()).expect("real dia config parses");
    assert_eq!(dia, DiaConfig::dia_1_6b());
    DiaConfig::dia_1_6b().validate().unwrap();
    let dac = DacConfig::from_json_str(&real["dac_config"].to_string()).expect("real dac config parses");
    assert_eq!(dac, DacConfig::dac_44khz());
    DacConfig::dac_44khz().validate().unwrap();
}

#[test]
fn weights_config_fixture_dac() {
    let dac = DacConfig::from_json_str(&read_text(common::fixtures_dir().join("dac/config.json"))).unwrap();
    assert_eq!(dac.sample_rate, 44_100);
    assert_eq!((dac.encoder_hidden, dac.decoder_hidden, dac.latent), (4, 32, 64));
    assert_eq!(dac.downsampling_ratios, vec![2, 4, 8, 8]);
    assert_eq!(dac.upsampling_ratios, vec![8, 8, 4, 2]);
    assert_eq!((dac.n_codebooks, dac.codebook_size, dac.codebook_dim, dac.hop_length), (9, 1024, 8, 512));
}

#[test]
fn weights_config_dac_defaults_and_errors() {
    let base: Value = serde_json::from_str(&read_text(common::fixtures_dir().join("dac/config.json"))).unwrap();
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut v = base.clone();
        edit(&mut v);
        DacConfig::from_json_str(&v.to_string())
    };
    // Missing upsampling/hop: mirrored ratios and their product.
    let mut skewed = with(&|v| {
        v.as_object_mut().unwrap().remove("upsampling_ratios");
        v.as_object_mut().unwrap().remove("hop_length");
        v["downsampling_ratios"] = json!([2, 4, 8, 5]);
    })
    .unwrap();
    assert_eq!(skewed.upsampling_ratios, vec![5, 8, 4, 2]);
    assert_eq!(skewed.hop_length, 320);
    skewed.hop_length = 512;
    assert!(matches!(
        skewed.validate(),
        Err(ConfigError::DacHopLength { hop_length: 512, downsampling: 320, upsampling: 320 })
    ));

    assert!(matches!(with(&|v| v["hop_length"] = json!(256)), Err(ConfigError::DacHopLength { hop_length: 256, .. })));
    assert!(matches!(
        with(&|v| v["upsampling_ratios"] = json!([8, 8, 8, 2])),
        Err(ConfigError::DacHopLength { upsampling: 1024, .. })
    ));
    // Block widths are floor(40 / 2^(j+1)) = 20, 10, 5, 2 as in the reference; 15 leaves none after 4 halvings.
    assert!(with(&|v| v["decoder_hidden_size"] = json!(40)).is_ok());
    assert!(matches!(with(&|v| v["decoder_hidden_size"] = json!(15)), Err(ConfigError::DacDecoderWidth { .. })));
    assert_eq!(with(&|v| v["n_codebooks"] = json!(0)), Err(ConfigError::ZeroSize("n_codebooks".into())));
    assert_eq!(
        with(&|v| {
            v.as_object_mut().unwrap().remove("codebook_dim");
        }),
        Err(ConfigError::MissingField("codebook_dim".into()))
    );
    assert!(matches!(DacConfig::from_json_str("{\"n_codebooks\": 9,"), Err(ConfigError::Json(_))));
}

/// The fixture config with one edit applied, parsed.
fn edited_dia(edit: impl FnOnce(&mut Value)) -> Result<DiaConfig, ConfigError> {
    let mut v = fixture_dia_config_json();
    edit(&mut v);
    DiaConfig::from_json_str(&v.to_string())
}

#[test]
fn weights_config_dia_errors() {
    assert_eq!(
        edited_dia(|v| v["delay_pattern"] = json!([0, 8, 9, 10, 11, 12, 13, 14])),
        Err(ConfigError::DelayPatternLength { pattern: 8, channels: 9 })
    );
    assert_eq!(
        edited_dia(|v| v["decoder_config"]["num_key_value_heads"] = json!(3)),
        Err(ConfigError::HeadsNotDivisible { stack: "decoder self-attention", heads: 4, kv_heads: 3 })
    );
    assert_eq!(
        edited_dia(|v| v["encoder_config"]["num_key_value_heads"] = json!(3)),
        Err(ConfigError::HeadsNotDivisible { stack: "encoder self-attention", heads: 4, kv_heads: 3 })
    );
    assert_eq!(
        edited_dia(|v| v["decoder_config"]["cross_num_key_value_heads"] = json!(3)),
        Err(ConfigError::HeadsNotDivisible { stack: "decoder cross-attention", heads: 4, kv_heads: 3 })
    );
    assert_eq!(
        edited_dia(|v| v["decoder_config"]["hidden_act"] = json!("gelu")),
        Err(ConfigError::UnsupportedActivation { field: "decoder_config.hidden_act".into(), value: "gelu".into() })
    );
    assert_eq!(
        edited_dia(|v| v["encoder_config"]["rope_parameters"]["rope_type"] = json!("linear")),
        Err(ConfigError::UnsupportedRope {
            field: "encoder_config.rope_parameters.rope_type".into(),
            value: "linear".into()
        })
    );
    assert!(matches!(DiaConfig::from_json_str("{\"encoder_config\": {"), Err(ConfigError::Json(_))));
    assert_eq!(
        edited_dia(|v| {
            v["decoder_config"].as_object_mut().unwrap().remove("num_channels");
        }),
        Err(ConfigError::MissingField("decoder_config.num_channels".into()))
    );
    assert_eq!(
        edited_dia(|v| {
            v["encoder_config"].as_object_mut().unwrap().remove("head_dim");
        }),
        Err(ConfigError::MissingField("encoder_config.head_dim".into()))
    );
    assert_eq!(
        edited_dia(|v| v["encoder_config"]["num_hidden_layers"] = json!(0)),
        Err(ConfigError::ZeroSize("encoder.layers".into()))
    );
    assert_eq!(
        edited_dia(|v| v["decoder_config"]["bos_token_id"] = json!(1028)),
        Err(ConfigError::SpecialIdOutOfVocab { name: "bos", id: 1028, vocab: 1028 })
    );
    assert_eq!(
        edited_dia(|v| v["eos_token_id"] = json!(1000)),
        Err(ConfigError::ConflictingSpecialId { name: "eos", top_level: 1000, decoder: 1024 })
    );
    assert!(matches!(
        edited_dia(|v| v["decoder_config"]["num_attention_heads"] = json!(4.0)),
        Err(ConfigError::WrongType { .. })
    ));
    assert_eq!(DiaConfig::from_json_str("{\"foo\": 1}"), Err(ConfigError::UnknownSchema));
    assert_eq!(
        edited_dia(|v| v["decoder_config"]["head_dim"] = json!(15)),
        Err(ConfigError::OddHeadDim { field: "decoder.head_dim".into(), value: 15 })
    );
}

#[test]
fn weights_config_dia_older_spellings() {
    // transformers 4.x: rope_theta + rope_scaling null, ids at top level only, kv heads defaulting to heads.
    let cfg = edited_dia(|v| {
        for sub in ["encoder_config", "decoder_config"] {
            let o = v[sub].as_object_mut().unwrap();
            o.remove("rope_parameters");
            o.insert("rope_theta".into(), json!(5000.0));
            o.insert("rope_scaling".into(), Value::Null);
            for id in ["bos_token_id", "eos_token_id", "pad_token_id"] {
                o.remove(id);
            }
        }
        v["decoder_config"].as_object_mut().unwrap().remove("num_key_value_heads");
        v["bos_token_id"] = json!(1026);
        v["eos_token_id"] = json!(1024);
        v["pad_token_id"] = json!(1025);
    })
    .unwrap();
    assert_eq!((cfg.encoder.rope_theta, cfg.decoder.rope_theta), (5000.0, 5000.0));
    assert_eq!(cfg.decoder.kv_heads, cfg.decoder.heads);
    assert_eq!((cfg.bos, cfg.eos, cfg.pad), (1026, 1024, 1025));

    let scaled = edited_dia(|v| {
        let o = v["decoder_config"].as_object_mut().unwrap();
        o.remove("rope_parameters");
        o.insert("rope_theta".into(), json!(10000.0));
        o.insert("rope_scaling".into(), json!({"rope_type": "dynamic", "factor": 2.0}));
    });
    assert!(matches!(scaled, Err(ConfigError::UnsupportedRope { .. })));
    let no_rope = edited_dia(|v| {
        v["decoder_config"].as_object_mut().unwrap().remove("rope_parameters");
    });
    assert!(matches!(no_rope, Err(ConfigError::MissingField(f)) if f.contains("decoder_config.rope_parameters")));
}

/// nari v0.1 `config.json` with the values of docs/model.md §1.1.
fn nari_v01_json() -> Value {
    json!({
        "version": "0.1",
        "model": {
            "encoder": {"n_layer": 12, "n_embd": 1024, "n_hidden": 4096, "n_head": 16, "head_dim": 128},
            "decoder": {
                "n_layer": 18, "n_embd": 2048, "n_hidden": 8192,
                "gqa_query_heads": 16, "kv_heads": 4, "gqa_head_dim": 128,
                "cross_query_heads": 16, "cross_head_dim": 128
            },
            "src_vocab_size": 256, "tgt_vocab_size": 1028, "dropout": 0.0,
            "normalization_layer_epsilon": 1.0e-5, "weight_dtype": "float32",
            "rope_min_timescale": 1, "rope_max_timescale": 10000
        },
        "training": {},
        "data": {
            "text_length": 1024, "audio_length": 3072, "channels": 9, "text_pad_value": 0,
            "audio_eos_value": 1024, "audio_pad_value": 1025, "audio_bos_value": 1026,
            "delay_pattern": [0, 8, 9, 10, 11, 12, 13, 14, 15]
        }
    })
}

#[test]
fn weights_config_nari_v01() {
    let cfg = DiaConfig::from_json_str(&nari_v01_json().to_string()).expect("nari config parses");
    assert_eq!(cfg.schema, ConfigSchema::NariV01);
    assert!(cfg.cross_attention_rope);
    // Same model as the HF 1.6B config apart from the schema and the cross-attention RoPE.
    let hf = DiaConfig { schema: ConfigSchema::NariV01, cross_attention_rope: true, ..DiaConfig::dia_1_6b() };
    assert_eq!(cfg, hf);

    let mut v = nari_v01_json();
    v["model"]["rope_min_timescale"] = json!(2);
    assert_eq!(DiaConfig::from_json_str(&v.to_string()), Err(ConfigError::RopeMinTimescale(2.0)));
    let mut v = nari_v01_json();
    v["data"]["delay_pattern"] = json!([0, 1]);
    assert_eq!(
        DiaConfig::from_json_str(&v.to_string()),
        Err(ConfigError::DelayPatternLength { pattern: 2, channels: 9 })
    );
    let mut v = nari_v01_json();
    v["model"]["decoder"]["kv_heads"] = json!(5);
    assert!(matches!(DiaConfig::from_json_str(&v.to_string()), Err(ConfigError::HeadsNotDivisible { .. })));
    let mut v = nari_v01_json();
    v["model"]["decoder"].as_object_mut().unwrap().remove("gqa_head_dim");
    assert_eq!(
        DiaConfig::from_json_str(&v.to_string()),
        Err(ConfigError::MissingField("model.decoder.gqa_head_dim".into()))
    );
}

// ----------------------------------------------------------------------------------------- checkpoints

#[test]
fn weights_fixture_checkpoint_reads_file_bytes() {
    let cfg = fixture_dia_config();
    let ckpt = Checkpoint::open_dir(&dia_dir()).expect("fixture opens");
    let weights = DiaWeights::new(&ckpt, &cfg).unwrap();
    assert_eq!(weights.layout(), DiaLayout::Hf);
    weights.validate().expect("fixture validates");

    let bytes = fixture_bytes();
    let reference = reference_tensors(&bytes);
    let expected = expected_hf_tensors(&cfg);
    assert_eq!(expected.len(), reference.len());
    for (name, shape) in &expected {
        let (ref_shape, ref_data) = &reference[name];
        assert_eq!(shape, ref_shape, "{name}");
        assert_eq!(weights.hf_shape(name), Some(shape.as_slice()));
        assert_same_bits(&weights.read(name).unwrap(), ref_data, name);
    }
    // Raw bytes are exactly the file's bytes at the header's absolute range.
    for name in ["model.encoder.norm.weight", "logits_dense.weight", "model.decoder.layers.1.mlp.down_proj.weight"] {
        let info = ckpt.info(name).unwrap();
        assert_eq!(info.dtype, Dtype::F32);
        let range = info.range.start as usize..info.range.end as usize;
        assert_eq!(ckpt.read_bytes(name).unwrap(), &bytes[range], "{name}");
    }
    assert!(matches!(weights.read("model.encoder.nonsense"), Err(WeightsError::UnknownTensor { .. })));
}

#[test]
fn weights_real_layout_sparse_file() {
    let real = real_layout();
    let cfg = DiaConfig::dia_1_6b();
    let layout: Vec<(String, Vec<usize>)> = real["dia"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::from_value(v.clone()).unwrap()))
        .collect();
    assert_eq!(layout.len(), 335);
    // The names and shapes the config implies are exactly those transformers saved.
    let mut expected = expected_hf_tensors(&cfg);
    let mut sorted_layout = layout.clone();
    expected.sort();
    sorted_layout.sort();
    assert_eq!(expected, sorted_layout);

    let (header, data_len) = sequential_header(&layout, "F32", 4);
    let total = header.len() as u64 + data_len;
    assert!(total > 6_400_000_000, "{total}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&header).unwrap();
        f.set_len(total).unwrap(); // sparse: the zeros take no disk
    }
    let ckpt = Checkpoint::open_dir(dir.path()).expect("real layout opens");
    assert_eq!(ckpt.len(), 335);
    let weights = DiaWeights::new(&ckpt, &cfg).unwrap();
    assert_eq!(weights.layout(), DiaLayout::Hf);
    weights.validate().expect("real layout validates");
    let norm = weights.read("model.decoder.layers.17.pre_mlp_norm.weight").unwrap();
    assert_eq!(norm.len(), 2048);
    assert!(norm.iter().all(|&x| x == 0.0));
    let source = FileSource::open(&path).unwrap();
    assert_eq!(source.len(), total);

    // Altered layouts, as virtual sources: header then zeros, nothing on disk.
    let check = |tensors: &[(String, Vec<usize>)]| -> Result<(), WeightsError> {
        let (header, data_len) = sequential_header(tensors, "BF16", 2);
        let len = header.len() as u64 + data_len;
        let source = HeaderThenZeros { header, len, furthest_read: Cell::new(0) };
        let ckpt = Checkpoint::from_sources(vec![Box::new(source)])?;
        DiaWeights::new(&ckpt, &cfg)?.validate()
    };
    check(&layout).expect("the real layout in BF16 validates too");
    let victim = "model.decoder.layers.5.self_attention.k_proj.weight";
    let mut reshaped = layout.clone();
    reshaped.iter_mut().find(|(n, _)| n == victim).unwrap().1 = vec![2048, 2048];
    match check(&reshaped) {
        Err(WeightsError::WrongShape { name, expected, found }) => {
            assert_eq!((name.as_str(), expected, found), (victim, vec![512, 2048], vec![2048, 2048]));
        }
        other => panic!("expected WrongShape, got {other:?}"),
    }
    let dropped: Vec<_> = layout.iter().filter(|(n, _)| n != victim).cloned().collect();
    assert!(matches!(check(&dropped), Err(WeightsError::MissingTensor { name }) if name == victim));
    let mut extra = layout.clone();
    extra.push(("model.decoder.layers.0.self_attention.q_proj.bias".into(), vec![2048]));
    assert!(matches!(check(&extra), Err(WeightsError::UnexpectedTensors { names }) if names.len() == 1));
}

#[test]
fn weights_validation_reads_only_headers() {
    let cfg = DiaConfig::dia_1_6b();
    let (header, data_len) = sequential_header(&expected_hf_tensors(&cfg), "F32", 4);
    let header_len = header.len() as u64;
    let source = std::rc::Rc::new(HeaderThenZeros { header, len: header_len + data_len, furthest_read: Cell::new(0) });
    struct Shared(std::rc::Rc<HeaderThenZeros>);
    impl ByteSource for Shared {
        fn len(&self) -> u64 {
            self.0.len()
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), WeightsError> {
            self.0.read_at(offset, buf)
        }
    }
    let ckpt = Checkpoint::from_sources(vec![Box::new(Shared(source.clone()))]).unwrap();
    DiaWeights::new(&ckpt, &cfg).unwrap().validate().unwrap();
    assert_eq!(source.furthest_read.get(), header_len);
}

#[test]
fn weights_nari_layout_matches_hf() {
    let cfg = fixture_dia_config();
    let hf_bytes = fixture_bytes();
    let nari_bytes = common::nari::hf_to_nari(&hf_bytes, &cfg);
    let hf_ckpt = memory_checkpoint(hf_bytes.clone()).unwrap();
    let nari_ckpt = memory_checkpoint(nari_bytes.clone()).unwrap();
    let hf = DiaWeights::new(&hf_ckpt, &cfg).unwrap();
    let nari = DiaWeights::new(&nari_ckpt, &cfg).unwrap();
    assert_eq!(nari.layout(), DiaLayout::Nari);
    nari.validate().expect("nari layout validates");
    assert_eq!(nari_ckpt.len(), hf_ckpt.len() + cfg.decoder.channels - 1);

    for (name, shape) in expected_hf_tensors(&cfg) {
        let from_nari = nari.read(&name).unwrap();
        assert_eq!(from_nari.len(), shape.iter().product::<usize>(), "{name}");
        assert_same_bits(&from_nari, &hf.read(&name).unwrap(), &name);
    }

    // Orientation spot checks against the spec's index formulas, on the raw nari tensors.
    let raw = reference_tensors(&nari_bytes);
    let hf_raw = reference_tensors(&hf_bytes);
    let (d, dec_hidden) = (&cfg.decoder, cfg.decoder.hidden);
    let (q_shape, q) = &raw["decoder.layers.1.self_attention.q_proj.weight"];
    assert_eq!(q_shape, &vec![dec_hidden, d.heads, d.head_dim]);
    let hf_q = &hf_raw["model.decoder.layers.1.self_attention.q_proj.weight"].1;
    let (i, h, k) = (37, 3, 5);
    assert_eq!(q[(i * d.heads + h) * d.head_dim + k], hf_q[(h * d.head_dim + k) * dec_hidden + i]);
    let (_, wi) = &raw["decoder.layers.0.mlp.wi_fused.weight"];
    let hf_gu = &hf_raw["model.decoder.layers.0.mlp.gate_up_proj.weight"].1;
    let (g, j) = (1, 11); // up half
    assert_eq!(wi[(i * 2 + g) * d.intermediate + j], hf_gu[(g * d.intermediate + j) * dec_hidden + i]);
    let (_, table) = &raw["decoder.embeddings.7.weight"];
    let hf_embed = &hf_raw["model.decoder.embeddings.embed.weight"].1;
    assert_eq!(table[1000 * dec_hidden + 4], hf_embed[(7 * d.vocab + 1000) * dec_hidden + 4]);
    let (l_shape, logits) = &raw["decoder.logits_dense.weight"];
    assert_eq!(l_shape, &vec![dec_hidden, d.channels, d.vocab]);
    let hf_logits = &hf_raw["logits_dense.weight"].1;
    let (c, v) = (8, 1027);
    assert_eq!(logits[(i * d.channels + c) * d.vocab + v], hf_logits[(c * d.vocab + v) * dec_hidden + i]);

    // A nari checkpoint lacking one channel's table is refused before reading.
    let mut tensors: Vec<common::nari::Tensor> =
        raw.into_iter().filter(|(n, _)| n != "decoder.embeddings.8.weight").map(|(n, (s, d))| (n, s, d)).collect();
    let partial = memory_checkpoint(common::nari::serialize_f32(&tensors)).unwrap();
    let err = DiaWeights::new(&partial, &cfg).unwrap().validate().unwrap_err();
    assert!(matches!(err, WeightsError::MissingTensor { ref name } if name == "decoder.embeddings.8.weight"), "{err}");
    // …and one with an HF-oriented kernel under a nari name fails on shape.
    let wo = tensors.iter_mut().find(|(n, _, _)| n == "encoder.layers.0.mlp.wo.weight").unwrap();
    wo.1.reverse();
    tensors.push(("decoder.embeddings.8.weight".into(), vec![d.vocab, dec_hidden], vec![0.0; d.vocab * dec_hidden]));
    let flipped = memory_checkpoint(common::nari::serialize_f32(&tensors)).unwrap();
    let weights = DiaWeights::new(&flipped, &cfg).unwrap();
    assert!(
        matches!(weights.validate(), Err(WeightsError::WrongShape { ref name, .. }) if name == "encoder.layers.0.mlp.wo.weight")
    );
    assert!(matches!(
        weights.read("model.encoder.layers.0.mlp.down_proj.weight"),
        Err(WeightsError::WrongShape { .. })
    ));
}

#[test]
fn weights_sharded_open_dir() {
    let cfg = fixture_dia_config();
    let bytes = fixture_bytes();
    let reference = reference_tensors(&bytes);
    let dir = tempfile::tempdir().unwrap();
    let shard_names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
    let mut shards: [Vec<common::nari::Tensor>; 2] = [Vec::new(), Vec::new()];
    let mut weight_map = serde_json::Map::new();
    for (i, (name, (shape, data))) in reference.iter().enumerate() {
        shards[i % 2].push((name.clone(), shape.clone(), data.clone()));
        weight_map.insert(name.clone(), json!(shard_names[i % 2]));
    }
    for (file, tensors) in shard_names.iter().zip(&shards) {
        std::fs::write(dir.path().join(file), common::nari::serialize_f32(tensors)).unwrap();
    }
    let index = json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();

    let ckpt = Checkpoint::open_dir(dir.path()).expect("sharded checkpoint opens");
    let weights = DiaWeights::new(&ckpt, &cfg).unwrap();
    weights.validate().unwrap();
    for (name, (_, data)) in &reference {
        assert_same_bits(&weights.read(name).unwrap(), data, name);
    }

    // A mapped tensor that its shard lacks.
    let moved = "model.encoder.norm.weight";
    let holder = shards.iter().position(|s| s.iter().any(|t| t.0 == moved)).unwrap();
    let mut bad_map = weight_map.clone();
    bad_map.insert(moved.into(), json!(shard_names[1 - holder]));
    let bad_index = json!({"weight_map": bad_map}).to_string();
    let err = Checkpoint::from_index_json(&bad_index, |f| {
        Ok(Box::new(FileSource::open(dir.path().join(f))?) as Box<dyn ByteSource>)
    })
    .unwrap_err();
    assert!(matches!(err, WeightsError::MissingInShard { ref name, .. } if name == moved), "{err}");
    // Shard names that leave the directory, malformed index JSON, an empty directory.
    let escape = json!({"weight_map": {"x": "../model.safetensors"}}).to_string();
    std::fs::write(dir.path().join("model.safetensors.index.json"), escape).unwrap();
    assert!(matches!(Checkpoint::open_dir(dir.path()), Err(WeightsError::BadShardName { .. })));
    assert!(matches!(
        Checkpoint::from_index_json("{\"weight_map\": [", |_| unreachable!()),
        Err(WeightsError::IndexJson(_))
    ));
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(Checkpoint::open_dir(empty.path()), Err(WeightsError::NoCheckpoint { .. })));
}

#[test]
fn weights_bf16_f16_conversion() {
    use safetensors::tensor::TensorView;
    let reference = reference_tensors(&fixture_bytes());
    let mut values = reference["model.decoder.layers.0.self_attention.o_proj.weight"].1.clone();
    // Edge values: exact halves, the f16 max and beyond it, an f16 subnormal, infinities, signed zero.
    values.extend_from_slice(&[1.0, -2.5, 65504.0, 1e6, 6.0e-8, f32::INFINITY, f32::NEG_INFINITY, -0.0, 3.0e38]);
    let bf: Vec<u8> = values.iter().flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes()).collect();
    let hf: Vec<u8> = values.iter().flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes()).collect();
    let n = values.len();
    let bytes = safetensors::serialize(
        [
            ("as_bf16", TensorView::new(safetensors::Dtype::BF16, vec![n], &bf).unwrap()),
            ("as_f16", TensorView::new(safetensors::Dtype::F16, vec![n], &hf).unwrap()),
        ],
        None,
    )
    .unwrap();
    let ckpt = memory_checkpoint(bytes).unwrap();
    assert_eq!(ckpt.info("as_bf16").unwrap().dtype, Dtype::BF16);
    let got_bf = ckpt.read_f32("as_bf16").unwrap();
    let got_h = ckpt.read_f32("as_f16").unwrap();
    let want_bf: Vec<f32> = values.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect();
    let want_h: Vec<f32> = values.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
    assert_same_bits(&got_bf, &want_bf, "bf16");
    assert_same_bits(&got_h, &want_h, "f16");
    // bf16 is the top half of the f32 bit pattern; f16 values are within half-precision rounding.
    for (&x, &y) in values.iter().zip(&got_bf).take(n - 9) {
        assert!((x - y).abs() <= x.abs() * 2f32.powi(-8), "{x} vs {y}");
    }
    for (&x, &y) in values.iter().zip(&got_h).take(n - 9) {
        assert!((x - y).abs() <= x.abs() * 2f32.powi(-11) + 2f32.powi(-25), "{x} vs {y}");
    }
    assert_eq!(got_h[n - 6], f32::INFINITY); // 1e6 overflows f16
    assert_eq!(got_h[n - 5], 2f32.powi(-24)); // nearest f16 subnormal to 6e-8

    // A whole checkpoint in BF16 validates and reads through the layout mapping.
    let cfg = fixture_dia_config();
    let bf_tensors: Vec<(String, Vec<usize>, Vec<u8>)> = reference
        .iter()
        .map(|(n, (s, d))| {
            (n.clone(), s.clone(), d.iter().flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes()).collect())
        })
        .collect();
    let views: Vec<(String, TensorView)> = bf_tensors
        .iter()
        .map(|(n, s, b)| (n.clone(), TensorView::new(safetensors::Dtype::BF16, s.clone(), b).unwrap()))
        .collect();
    let ckpt = memory_checkpoint(safetensors::serialize(views, None).unwrap()).unwrap();
    let weights = DiaWeights::new(&ckpt, &cfg).unwrap();
    weights.validate().unwrap();
    let name = "model.encoder.layers.1.mlp.gate_up_proj.weight";
    let want: Vec<f32> = reference[name].1.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect();
    assert_same_bits(&weights.read(name).unwrap(), &want, name);
}

#[test]
fn weights_malformed_files() {
    let bytes = fixture_bytes();
    let header_len = Header::prefix_len_needed(&bytes[..8]).unwrap();
    assert_eq!(header_len, 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()));

    // Cut in the middle of the data: caught at open, naming a tensor whose range is past the end.
    let cut = bytes[..(header_len as usize + bytes.len()) / 2].to_vec();
    assert!(matches!(memory_checkpoint(cut), Err(WeightsError::OffsetsOutOfRange { .. })));
    // Cut inside the header, and shorter than the length prefix.
    assert!(matches!(memory_checkpoint(bytes[..100].to_vec()), Err(WeightsError::HeaderBeyondFile { .. })));
    assert!(matches!(memory_checkpoint(bytes[..5].to_vec()), Err(WeightsError::TooShort { len: 5 })));
    assert!(matches!(Header::prefix_len_needed(&bytes[..7]), Err(WeightsError::TooShort { len: 7 })));
    // A header length beyond the file, and an absurd one.
    let mut long = bytes.clone();
    long[..8].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
    assert!(matches!(memory_checkpoint(long), Err(WeightsError::HeaderBeyondFile { .. })));
    let mut huge = bytes.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(memory_checkpoint(huge), Err(WeightsError::HeaderTooLarge { .. })));
    // A prefix shorter than the header it announces.
    assert!(matches!(
        Header::parse(&bytes[..64], bytes.len() as u64),
        Err(WeightsError::PrefixTooShort { got: 64, needed }) if needed == header_len
    ));
    // Malformed JSON of the same length.
    let mut garbled = bytes.clone();
    garbled[8 + 10] = b'}';
    assert!(matches!(memory_checkpoint(garbled), Err(WeightsError::HeaderJson(_))));
    // Metadata alone is an empty (valid) checkpoint.
    assert!(memory_checkpoint(header_bytes(&[])).unwrap().is_empty());
    let mut array = 8u64.to_le_bytes().to_vec();
    array.extend_from_slice(b"[1, 2]  ");
    assert!(matches!(memory_checkpoint(array), Err(WeightsError::HeaderJson(_))));

    let with_data = |entries: &[(&str, &str, Vec<usize>, [u64; 2])], data_len: usize| {
        let mut b = header_bytes(entries);
        b.resize(b.len() + data_len, 0);
        memory_checkpoint(b)
    };
    let overlap = with_data(&[("a", "F32", vec![4], [0, 16]), ("b", "F32", vec![4], [8, 24])], 24);
    assert!(matches!(overlap, Err(WeightsError::Overlap { ref first, ref second }) if first == "a" && second == "b"));
    let size = with_data(&[("a", "F32", vec![3], [0, 16])], 16);
    assert!(matches!(size, Err(WeightsError::SizeMismatch { expected: 12, bytes: 16, .. })));
    let beyond = with_data(&[("a", "F32", vec![4], [0, 16])], 15);
    assert!(matches!(beyond, Err(WeightsError::OffsetsOutOfRange { end: 16, data_len: 15, .. })));
    let reversed = with_data(&[("a", "F32", vec![0], [8, 0])], 16);
    assert!(matches!(reversed, Err(WeightsError::OffsetsOutOfRange { .. })));
    let unknown = with_data(&[("q", "Q4_K", vec![4], [0, 16])], 16);
    assert!(matches!(unknown, Err(WeightsError::UnsupportedDtype { ref dtype, .. }) if dtype == "Q4_K"));
    let no_shape = {
        let mut b = 8u64.to_le_bytes().to_vec();
        let json = br#"{"a": {"dtype": "F32", "data_offsets": [0, 4]}}"#;
        b[..8].copy_from_slice(&(json.len() as u64).to_le_bytes());
        b.extend_from_slice(json);
        b.extend_from_slice(&[0; 4]);
        memory_checkpoint(b)
    };
    assert!(matches!(no_shape, Err(WeightsError::HeaderJson(m)) if m.contains("shape")));

    // F64 and integer tensors open (their ranges check out) but cannot be read as f32.
    let ckpt = with_data(
        &[("d", "F64", vec![2], [0, 16]), ("i", "I32", vec![2], [16, 24]), ("e", "F32", vec![0], [24, 24])],
        24,
    )
    .unwrap();
    assert!(
        matches!(ckpt.read_f32("d"), Err(WeightsError::UnsupportedDtype { ref name, ref dtype }) if name == "d" && dtype == "F64")
    );
    assert!(matches!(ckpt.read_f32("i"), Err(WeightsError::UnsupportedDtype { .. })));
    assert_eq!(ckpt.read_f32("e").unwrap(), Vec::<f32>::new());
    assert!(matches!(ckpt.read_f32("nope"), Err(WeightsError::MissingTensor { ref name }) if name == "nope"));
    assert!(matches!(DiaWeights::new(&ckpt, &fixture_dia_config()), Err(WeightsError::UnknownLayout)));
    // An F64 tensor where the model expects a float one fails validation before any read.
    let cfg = fixture_dia_config();
    let entries = expected_hf_tensors(&cfg);
    let (header, data_len) = {
        let mut offset = 0u64;
        let mut e = Vec::new();
        for (name, shape) in &entries {
            let dtype = if name == "model.encoder.norm.weight" { "F64" } else { "F32" };
            let len = shape.iter().product::<usize>() as u64 * if dtype == "F64" { 8 } else { 4 };
            e.push((name.as_str(), dtype, shape.clone(), [offset, offset + len]));
            offset += len;
        }
        (header_bytes(&e), offset)
    };
    let mut b = header;
    b.resize(b.len() + data_len as usize, 0);
    let ckpt = memory_checkpoint(b).unwrap();
    let err = DiaWeights::new(&ckpt, &cfg).unwrap().validate().unwrap_err();
    assert!(
        matches!(err, WeightsError::UnsupportedDtype { ref name, .. } if name == "model.encoder.norm.weight"),
        "{err}"
    );

    // Two sources holding the same tensor.
    let twice =
        Checkpoint::from_sources(vec![Box::new(MemorySource::new(bytes.clone())), Box::new(MemorySource::new(bytes))]);
    assert!(matches!(twice, Err(WeightsError::DuplicateTensor { .. })));
}

#[test]
fn weights_sources_bounds() {
    let mem = MemorySource::new(std::sync::Arc::<[u8]>::from(&[1u8, 2, 3, 4, 5][..]));
    let mut buf = [0u8; 3];
    mem.read_at(2, &mut buf).unwrap();
    assert_eq!(buf, [3, 4, 5]);
    assert!(matches!(mem.read_at(3, &mut buf), Err(WeightsError::ReadOutOfRange { offset: 3, len: 3, source_len: 5 })));
    assert!(matches!(mem.read_at(u64::MAX, &mut buf), Err(WeightsError::ReadOutOfRange { .. })));

    let file = FileSource::open(dia_dir().join("model.safetensors")).unwrap();
    let bytes = fixture_bytes();
    assert_eq!(file.len(), bytes.len() as u64);
    let mut tail = [0u8; 16];
    file.read_at(file.len() - 16, &mut tail).unwrap();
    assert_eq!(&tail[..], &bytes[bytes.len() - 16..]);
    assert!(matches!(file.read_at(file.len() - 15, &mut tail), Err(WeightsError::ReadOutOfRange { .. })));
    assert!(matches!(FileSource::open(dia_dir().join("absent.safetensors")), Err(WeightsError::Io { .. })));
}

/// The browser's feature check (web/src/features.js) asks for the same largest binding as the engine does.
#[test]
fn weights_largest_binding_matches_the_browser_check() {
    use dia_webgpu::kernels::Numerics;
    let js = std::fs::read_to_string(common::repo_root().join("web/src/features.js")).unwrap();
    let line = js.lines().find(|l| l.contains("export const LARGEST_BINDING")).expect("LARGEST_BINDING in features.js");
    let cfg = DiaConfig::dia_1_6b();
    for n in [Numerics::F32, Numerics::F16W, Numerics::Q8, Numerics::Q4] {
        let want = dia_webgpu::dia::largest_matrix_bytes(&cfg, n);
        assert!(line.contains(&format!("{}: {want}", n.name())), "features.js: {} should be {want}: {line}", n.name());
    }
    assert_eq!(dia_webgpu::dia::largest_matrix_bytes(&cfg, Numerics::F32), 16384 * 2048 * 4);
}

/// Weights one decoder step of Dia 1.6B reads (the browser benchmark's GB/s), counted by hand from the model's
/// shapes: per layer, with hidden 2048, the rows of 2048 columns are q/k/v (16·128 + 2·4·128 = 3072), o, cross q
/// and cross o (2048 each) and gate/up (2·8192); down has 2048 rows of 8192 columns; the logits head 9·1028 rows
/// of 2048. Cross K/V (1024 columns, once per generation) and the embeddings are not read per step.
#[test]
fn weights_step_bytes_of_the_1_6b_model() {
    use dia_webgpu::kernels::Numerics;
    let cfg = DiaConfig::dia_1_6b();
    let (layers, logits_rows) = (18u64, 9 * 1028u64);
    let attention_rows = 3072 + 2048 + 2048 + 2048u64;
    let (gate_up_rows, down_rows) = (16384u64, 2048u64);
    let elements = layers * ((attention_rows + gate_up_rows) * 2048 + down_rows * 8192) + logits_rows * 2048;
    assert_eq!(dia_webgpu::dia::step_weight_bytes(&cfg, Numerics::F32), elements * 4);
    assert_eq!(dia_webgpu::dia::step_weight_bytes(&cfg, Numerics::F16W), elements * 2);
    // Quantized rows: per group of 32 values, 8 words (q8) or 4 (q4) and one f16 scale; a row padded to 4 words.
    // 2048 columns: 64 groups → q8 512 + 32 = 544 words, q4 256 + 32 = 288; 8192 columns: q8 2176, q4 1152.
    let q8_words = layers * ((attention_rows + gate_up_rows) * 544 + down_rows * 2176) + logits_rows * 544;
    assert_eq!(dia_webgpu::dia::step_weight_bytes(&cfg, Numerics::Q8), q8_words * 4);
    // q4 keeps attention at q8 (MatrixRole::format).
    let q4_words = layers * (attention_rows * 544 + gate_up_rows * 288 + down_rows * 1152) + logits_rows * 288;
    assert_eq!(dia_webgpu::dia::step_weight_bytes(&cfg, Numerics::Q4), q4_words * 4);
}
