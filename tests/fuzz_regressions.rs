//! Replays every fuzz seed and regression case (`tests/fuzz/seeds/<target>/*`,
//! `tests/fuzz/regressions/<target>/*`: crashes cargo-fuzz found, and handcrafted hostile inputs) through the
//! fuzz targets' own entry points, asserting that none panics (an `Err` from the library is fine). Then checks
//! that the fixed findings give the typed error they now give. CPU only; `tests/fuzz/run` does the fuzzing.

#[path = "fuzz/src/lib.rs"]
mod fuzz_entry;

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz")
}

/// Every file of `<fuzz_dir>/<kind>/<target>/`, sorted.
fn cases(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every case of `kind` through its target; returns how many ran, fails listing every panicking file.
fn replay(kind: &str) -> usize {
    let mut ran = 0;
    let mut panicked = Vec::new();
    for (target, entry) in fuzz_entry::TARGETS {
        for path in cases(kind, target) {
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if std::panic::catch_unwind(|| entry(&bytes)).is_err() {
                panicked.push(path.display().to_string());
            }
            ran += 1;
        }
    }
    assert!(panicked.is_empty(), "{} of {ran} {kind} cases panicked:\n{}", panicked.len(), panicked.join("\n"));
    ran
}

#[test]
fn fuzz_regressions_replay_without_panic() {
    let ran = replay("regressions");
    // Every target keeps at least its handcrafted hostile inputs.
    for (target, _) in fuzz_entry::TARGETS {
        assert!(!cases("regressions", target).is_empty(), "no regression cases for {target}");
    }
    eprintln!("{ran} regression cases replayed");
}

#[test]
fn fuzz_seeds_replay_without_panic() {
    let ran = replay("seeds");
    for (target, _) in fuzz_entry::TARGETS {
        assert!(!cases("seeds", target).is_empty(), "no seeds for {target}");
    }
    eprintln!("{ran} seeds replayed");
}

fn hostile(target: &str, name: &str) -> Vec<u8> {
    let path = fuzz_dir().join("regressions").join(target).join(format!("hostile-{name}"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn hostile_str(target: &str, name: &str) -> String {
    String::from_utf8(hostile(target, name)).expect("UTF-8")
}

/// A config may not claim unbounded layers: loading lists every layer's tensors before reading any (a
/// 10^15-layer config ran out of memory building that list).
#[test]
fn fuzz_dia_config_layer_count_is_bounded() {
    use dia_webgpu::config::{ConfigError, DiaConfig, MAX_LAYERS};
    for name in ["layers-1e15.json", "layers-u64-max.json", "nari-layers-1e15.json"] {
        let err = DiaConfig::from_json_str(&hostile_str("dia_config", name)).unwrap_err();
        assert!(matches!(err, ConfigError::TooMany { max: MAX_LAYERS, .. }), "{name}: {err}");
    }
}

/// Sizes whose products overflow (or exceed what the kernels can index) are refused with the tensor named.
#[test]
fn fuzz_dia_config_tensor_sizes_are_bounded() {
    use dia_webgpu::config::{ConfigError, DiaConfig};
    for (name, tensor) in [
        ("hidden-2e62.json", "decoder embedding"),
        ("vocab-2e62.json", "decoder embedding"),
        ("heads-times-dim-overflow.json", "encoder query projection"),
        ("intermediate-2e63.json", "encoder MLP"),
        ("max-positions-u64-max.json", "decoder self-attention cache"),
    ] {
        let err = DiaConfig::from_json_str(&hostile_str("dia_config", name)).unwrap_err();
        assert!(matches!(&err, ConfigError::TensorTooLarge { tensor: t, .. } if t == tensor), "{name}: {err}");
    }
}

/// A delay at or beyond the decoder's positions can never make a frame final (and sized the CPU code grid).
#[test]
fn fuzz_dia_config_delay_below_positions() {
    use dia_webgpu::config::{ConfigError, DiaConfig};
    let mut cfg: serde_json::Value = serde_json::from_str(&hostile_str("dia_config", "layers-1e15.json")).unwrap();
    cfg["encoder_config"]["num_hidden_layers"] = 1.into();
    let positions = cfg["decoder_config"]["max_position_embeddings"].as_u64().unwrap() as usize;
    assert!(DiaConfig::from_json_str(&cfg.to_string()).is_ok());
    for delay in [positions, usize::MAX] {
        cfg["delay_pattern"][1] = delay.into();
        let err = DiaConfig::from_json_str(&cfg.to_string()).unwrap_err();
        assert_eq!(err, ConfigError::DelayTooLong { delay, max_positions: positions });
    }
}

/// Block and codebook counts are bounded, and the encoder's doubling widths cannot wrap (70 blocks of
/// stride 1 shifted a width by 64 bits: an overflow panic, or a width of 0 without overflow checks).
#[test]
fn fuzz_dac_config_counts_and_widths_are_bounded() {
    use dia_webgpu::config::{ConfigError, DacConfig, MAX_CODEBOOKS, MAX_DAC_BLOCKS};
    for (name, max) in [
        ("ratios-70-ones.json", MAX_DAC_BLOCKS),
        ("encoder-ratios-70-ones.json", MAX_DAC_BLOCKS),
        ("codebooks-1e15.json", MAX_CODEBOOKS),
    ] {
        let err = DacConfig::from_json_str(&hostile_str("dac_config", name)).unwrap_err();
        assert!(matches!(err, ConfigError::TooMany { max: m, .. } if m == max), "{name}: {err}");
    }
    for name in [
        "encoder-hidden-2e62.json",
        "ratio-2e62.json",
        "codebook-size-2e62.json",
        "latent-2e62.json",
        "decoder-hidden-2e63.json",
    ] {
        let err = DacConfig::from_json_str(&hostile_str("dac_config", name)).unwrap_err();
        assert!(matches!(err, ConfigError::TensorTooLarge { .. }), "{name}: {err}");
    }
}

/// Found by cargo-fuzz: without `hop_length`, the default (the product of `downsampling_ratios`) overflowed
/// and panicked; the product is now checked there and in `validate`.
#[test]
fn fuzz_dac_config_ratio_product_overflow() {
    use dia_webgpu::config::{ConfigError, DacConfig};
    let crash = fuzz_dir().join("regressions/dac_config/crash-hop-product-overflow-68276589");
    let err = DacConfig::from_json_str(&String::from_utf8(std::fs::read(crash).unwrap()).unwrap()).unwrap_err();
    assert_eq!(err, ConfigError::DacRatioOverflow { field: "downsampling_ratios" });
    let mut cfg = DacConfig::dac_44khz();
    cfg.upsampling_ratios = vec![1 << 40, 1 << 40];
    assert_eq!(cfg.validate(), Err(ConfigError::DacRatioOverflow { field: "upsampling_ratios" }));
}

/// A WAV header's sample rate decides the resampler's FFT length and the output length: 1 Hz made a
/// 4000-sample prompt 176 M samples, a prime rate near 2^32 asked for a 16 GiB filter. Both are refused
/// before any sample is read or resampled.
#[test]
fn fuzz_wav_prompt_sample_rate_is_bounded() {
    use dia_webgpu::pipeline::{Audio, PipelineError, MAX_PROMPT_SAMPLE_RATE, MIN_PROMPT_SAMPLE_RATE};
    for (name, rate) in [("rate-1.wav", 1), ("rate-u32-max.wav", u32::MAX), ("rate-prime-4294967291.wav", 4294967291)] {
        let err = Audio::from_wav(&hostile("wav_prompt", name)).unwrap_err();
        assert!(matches!(err, PipelineError::SampleRate { rate: r, .. } if r == rate), "{name}: {err}");
    }
    // Audio built in code goes through the same check.
    let audio = Audio { samples: vec![0.0; 16], sample_rate: 4294967291 };
    assert!(matches!(audio.resampled(44_100), Err(PipelineError::SampleRate { .. })));
    let audio = Audio { samples: vec![0.0; 16], sample_rate: 16_000 };
    assert!(matches!(audio.resampled(1), Err(PipelineError::SampleRate { rate: 1, .. })));
    // The bounds themselves resample.
    for rate in [MIN_PROMPT_SAMPLE_RATE, MAX_PROMPT_SAMPLE_RATE] {
        let audio = Audio { samples: vec![0.25; 100], sample_rate: rate };
        let out = audio.resampled(44_100).unwrap();
        assert_eq!(out.samples.len() as u64, (100u64 * 44_100).div_ceil(rate as u64));
    }
}

/// Found by cargo-fuzz: a float WAV holding NaN (or ±inf, or values so large that the FFT overflows) made
/// the resampler panic inside rubato. Such samples are refused when read and before resampling.
#[test]
fn fuzz_wav_prompt_samples_must_be_finite() {
    use dia_webgpu::pipeline::{Audio, PipelineError, MAX_PROMPT_AMPLITUDE};
    let crash = std::fs::read(fuzz_dir().join("regressions/wav_prompt/crash-rubato-nan-panic-56e755a7")).unwrap();
    assert!(matches!(Audio::from_wav(&crash), Err(PipelineError::SampleValue { .. })));
    let err = Audio::from_wav(&hostile("wav_prompt", "float-nan-inf.wav")).unwrap_err();
    assert!(matches!(err, PipelineError::SampleValue { index: 0, value, .. } if value.is_nan()), "{err}");
    let err = Audio::from_wav(&hostile("wav_prompt", "float-huge.wav")).unwrap_err();
    assert!(matches!(err, PipelineError::SampleValue { index: 0, value: 3.0e38, .. }), "{err}");
    // Audio built in code: refused before resampling, and at the codec's own rate too.
    for (bad, rate) in [(f32::NAN, 16_000), (f32::NEG_INFINITY, 44_100), (2.0 * MAX_PROMPT_AMPLITUDE, 48_000)] {
        let mut samples = vec![0.1; 64];
        samples[7] = bad;
        let err = Audio { samples, sample_rate: rate }.resampled(44_100).unwrap_err();
        assert!(matches!(err, PipelineError::SampleValue { index: 7, .. }), "{err}");
    }
    let loud = Audio { samples: vec![MAX_PROMPT_AMPLITUDE, -MAX_PROMPT_AMPLITUDE], sample_rate: 16_000 };
    assert_eq!(loud.resampled(44_100).unwrap().samples.len(), 6);
}
