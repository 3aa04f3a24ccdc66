//! The fuzzed entry points: one function per target, each taking arbitrary bytes, running only CPU parsing
//! code of `dia-webgpu`, and panicking only when a checked property is broken (an `Err` is fine).
//!
//! The cargo-fuzz targets (`fuzz_targets/*.rs`) call these, and `tests/fuzz_regressions.rs` includes this
//! same file (`#[path]`) to replay `regressions/<target>/*` through the very same code in the normal suite,
//! so keep it free of anything but `dia_webgpu` and std.

use dia_webgpu::config::{DacConfig, DiaConfig};
use dia_webgpu::dac::layout::{check_dac_layout, dac_tensor_specs, decoder_widths, encoder_widths};
use dia_webgpu::dia::delay::build_prefix;
use dia_webgpu::dia::tokenizer::encode_text;
use dia_webgpu::pipeline::{Audio, SAMPLE_RATE};
use dia_webgpu::dia::layout::{expected_hf_tensors, DiaLayout, DiaWeights};
use dia_webgpu::weights::{ByteSource, Checkpoint, Header, MemorySource};

/// The bundled tiny model's configs: a parsed header is also checked against them, as loading does.
const TINY_DIA_CONFIG: &str = include_str!("../../../assets/tiny/dia/config.json");
const TINY_DAC_CONFIG: &str = include_str!("../../../assets/tiny/dac/config.json");

/// Voice prompts longer than this many samples are decoded but not resampled (keeps one run short).
pub const MAX_RESAMPLED_SAMPLES: usize = 1 << 14;

/// Every target: (name, entry point). The name is the cargo-fuzz target and the regressions folder.
pub const TARGETS: [(&str, fn(&[u8])); 5] = [
    ("safetensors_header", safetensors_header),
    ("dia_config", dia_config),
    ("dac_config", dac_config),
    ("wav_prompt", wav_prompt),
    ("text_tokenizer", text_tokenizer),
];

/// A safetensors file held in memory: header parsing (both the prefix path and the byte-source path),
/// then every tensor read back, then the name/shape checks loading runs against the tiny configs.
pub fn safetensors_header(data: &[u8]) {
    let total_len = data.len() as u64;
    let from_prefix = Header::parse(data, total_len);
    let source = MemorySource::new(data.to_vec());
    let from_source = Header::read_from(&source);
    // The two paths read the same bytes and must agree.
    assert_eq!(from_prefix.is_ok(), from_source.is_ok(), "{from_prefix:?} vs {from_source:?}");
    let Ok(header) = from_source else { return };
    for (name, info) in header.tensors() {
        assert!(info.range.start >= header.data_start() && info.range.end <= total_len, "{name}: {info:?}");
        assert_eq!(info.byte_len(), info.numel() as u64 * info.dtype.size_bytes(), "{name}: {info:?}");
    }

    let ckpt = match Checkpoint::from_sources(vec![Box::new(source) as Box<dyn ByteSource>]) {
        Ok(ckpt) => ckpt,
        Err(e) => panic!("the header parsed, so the checkpoint must open: {e}"),
    };
    let names: Vec<String> = ckpt.names().map(str::to_string).collect();
    for name in &names {
        let info = ckpt.info(name).expect("listed").clone();
        let bytes = ckpt.read_bytes(name).expect("a checked range reads");
        assert_eq!(bytes.len() as u64, info.byte_len());
        if info.dtype.is_float_readable() {
            let values = ckpt.read_f32(name).expect("a checked float tensor converts");
            assert_eq!(values.len(), info.numel());
        } else {
            assert!(ckpt.read_f32(name).is_err());
        }
    }

    if DiaLayout::detect(&ckpt).is_ok() {
        let cfg = DiaConfig::from_json_str(TINY_DIA_CONFIG).expect("the tiny Dia config parses");
        let weights = DiaWeights::new(&ckpt, &cfg).expect("the layout was detected");
        if weights.validate().is_ok() {
            for (name, shape) in expected_hf_tensors(&cfg) {
                let values = weights.read(&name).expect("a validated checkpoint reads");
                assert_eq!(values.len(), shape.iter().product::<usize>(), "{name}");
            }
        }
    }
    if names.iter().any(|n| n.starts_with("encoder.") || n.starts_with("decoder.") || n.starts_with("quantizer.")) {
        let cfg = DacConfig::from_json_str(TINY_DAC_CONFIG).expect("the tiny DAC config parses");
        let shapes: Vec<(String, Vec<usize>)> =
            names.iter().map(|n| (n.clone(), ckpt.info(n).expect("listed").shape.clone())).collect();
        let _ = check_dac_layout(&cfg, shapes.iter().map(|(n, s)| (n.as_str(), s.as_slice())));
    }
}

/// A Dia `config.json` (either schema); an accepted config must stay valid and describe a tensor list that
/// can be built (what loading derives from it before any tensor is read).
pub fn dia_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(cfg) = DiaConfig::from_json_str(text) else { return };
    cfg.validate().expect("a parsed config validates");
    assert_eq!(cfg.delay_pattern.len(), cfg.decoder.channels);
    // The code grid a generation starts from (BOS row + delay tail), built on the CPU from the config.
    let prefix = build_prefix(&cfg.delay_pattern, cfg.bos, cfg.pad, &[]);
    assert_eq!(prefix.len(), (1 + cfg.max_delay()) * cfg.decoder.channels);
    for (name, shape) in expected_hf_tensors(&cfg) {
        let elements = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        assert!(elements.is_some(), "{name}: {shape:?} overflows usize");
    }
}

/// A DAC `config.json`; an accepted config must stay valid and give block widths and a tensor list.
pub fn dac_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(cfg) = DacConfig::from_json_str(text) else { return };
    cfg.validate().expect("a parsed config validates");
    // Each encoder block doubles the width, each decoder block halves it: exactly, never wrapped to 0.
    let mut width = cfg.encoder_hidden;
    for (cin, cout) in encoder_widths(&cfg) {
        assert_eq!(cin, width, "encoder widths {:?}", encoder_widths(&cfg));
        assert_eq!(Some(cout), cin.checked_mul(2), "encoder widths {:?}", encoder_widths(&cfg));
        width = cout;
    }
    for (cin, cout) in decoder_widths(&cfg) {
        assert!(cin > 0 && cout > 0, "a decoder block without channels: {cin} → {cout}");
    }
    for spec in dac_tensor_specs(&cfg) {
        let elements = spec.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        assert!(elements.is_some(), "{}: {:?} overflows usize", spec.name, spec.shape);
    }
}

/// A WAV voice prompt: decoded to mono, then (if short) resampled to the codec's 44.1 kHz as `prompt_codes`
/// does.
pub fn wav_prompt(data: &[u8]) {
    let Ok(audio) = Audio::from_wav(data) else { return };
    if audio.samples.len() > MAX_RESAMPLED_SAMPLES {
        return;
    }
    let Ok(resampled) = audio.resampled(SAMPLE_RATE) else { return };
    let want = (audio.samples.len() as u64 * SAMPLE_RATE as u64).div_ceil(audio.sample_rate as u64);
    assert_eq!(resampled.sample_rate, SAMPLE_RATE);
    assert_eq!(resampled.samples.len() as u64, want);
}

/// Text → token ids: every id is a byte, and expanding ids 1/2 back into `[S1]`/`[S2]` gives the text with
/// its raw 0x01/0x02 bytes spelled the same way (the tokenizer loses only that distinction).
pub fn text_tokenizer(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let ids = encode_text(text);
    assert!(ids.len() <= text.len());
    let expand = |ids: &mut dyn Iterator<Item = u32>| -> Vec<u8> {
        let mut bytes = Vec::with_capacity(text.len() * 4);
        for id in ids {
            match id {
                1 => bytes.extend_from_slice(b"[S1]"),
                2 => bytes.extend_from_slice(b"[S2]"),
                b => bytes.push(u8::try_from(b).expect("every id is a byte")),
            }
        }
        bytes
    };
    let decoded = expand(&mut ids.iter().copied());
    let original = expand(&mut text.bytes().map(u32::from));
    assert_eq!(decoded, original);
}
