//! The command line (`Args`) and what it selects: the configs, the (weights, KV cache) combinations to measure,
//! their labels and the binding size the device must allow.

use clap::Parser;

use dia_webgpu::config::{DacConfig, DiaConfig};
use dia_webgpu::dia::{kv_format_for, DiaModel};
use dia_webgpu::kernels::kv_cache::KvFormat;
use dia_webgpu::kernels::Numerics;

use crate::Result;

/// How `--quality` draws random weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum RandomWeights {
    Uniform,
    Gaussian,
}

#[derive(Parser)]
#[command(name = "dia-bench", about = "Dia + DAC speed on this GPU, random weights")]
pub(crate) struct Args {
    /// Model size: `full` (Dia 1.6B + DAC 44.1 kHz), `tiny` (the test fixtures' sizes) or a Dia config.json.
    #[arg(long, default_value = "full")]
    pub(crate) config: String,
    /// Weight storage modes to measure, comma-separated (f32, f16w).
    #[arg(long, value_delimiter = ',', default_value = "f32,f16w")]
    pub(crate) numerics: Vec<Numerics>,
    /// Decoder steps per timed run (submitted back to back, one wait at the end).
    #[arg(long, default_value_t = 500)]
    pub(crate) steps: usize,
    /// Texts generated together (the step has 2·batch rows: conditional and unconditional).
    #[arg(long, default_value_t = 1)]
    pub(crate) batch: usize,
    /// Timed repeats of the encoder and the DAC (median reported, after one warm-up).
    #[arg(long, default_value_t = 5)]
    pub(crate) runs: usize,
    /// Size of the buffer copied for the bandwidth ceiling, MiB (default 1024 full, 64 otherwise).
    #[arg(long)]
    pub(crate) copy_mib: Option<u64>,
    /// Also time parts of the step graph alone (attention only, one tiny dispatch per step dispatch).
    #[arg(long)]
    pub(crate) profile: bool,
    /// `Tts::speak` calls (100 bytes, 64 new rows each) after which GPU memory is compared with the first's
    /// (0 skips the measurement).
    #[arg(long, default_value_t = 100)]
    pub(crate) generations: usize,
    /// Plain kernels only, even where the adapter has tensor cores (A/B measurements)
    #[arg(long)]
    pub(crate) no_tensor_cores: bool,
    /// Skip `Tts::prepare` after loading (pipelines then compile on first use): the first generation's time
    /// to first audio without it, for comparison.
    #[arg(long)]
    pub(crate) no_prepare: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Also measure peak GPU memory of one generation of a 1000-byte text to the decoder's full length
    /// (codec included) per mode.
    #[arg(long)]
    pub(crate) peak_long: bool,
    /// Only the `--peak-long` measurement (per mode: build, then the long generation), nothing timed: for
    /// slow adapters. Prints what was allocated at the peak by group.
    #[arg(long)]
    pub(crate) peak_only: bool,
    /// With `--peak-long` / `--peak-only`: end the long generation once the codec has streamed this many PCM
    /// chunks (0: run to the end). Every buffer is sized for the full length up front (caches for 3072
    /// positions, the codec's window), so on a slow adapter a few chunks show the same composition.
    #[arg(long, default_value_t = 0)]
    pub(crate) peak_pcm_chunks: usize,
    /// Measure quality instead of speed: each `--numerics` mode against f32 on the same inputs, teacher-forced
    /// over `--quality-steps` rows (logits relative error, top-1 agreement), and greedy codes (first
    /// divergence). With `--model DIR` a real checkpoint, else random weights of `--config`.
    #[arg(long)]
    pub(crate) quality: bool,
    /// Rows fed teacher-forced per text in `--quality`.
    #[arg(long, default_value_t = 256)]
    pub(crate) quality_steps: usize,
    /// `--quality` without `--model`: the random weights' distribution, `uniform` (as every other figure of this
    /// program) or `gaussian` (the same variance, with tails as trained weights have: q4's scale choice depends on them).
    #[arg(long, value_enum, default_value_t = RandomWeights::Uniform)]
    pub(crate) random_weights: RandomWeights,
    /// A checkpoint directory for `--quality` (any layout or converted mode; it is loaded per mode).
    #[arg(long)]
    pub(crate) model: Option<std::path::PathBuf>,
    /// Texts for `--quality` (repeatable); default: three built-in dialogue lines.
    #[arg(long)]
    pub(crate) text: Vec<String>,
    /// Also speak a script of this many bytes (`Tts::speak_script`: segments, one continuous stream) per mode
    /// and report its figures beside one segment's (0: skip). Random weights never end on channel 0's EOS
    /// here, so each segment runs to its planned rows.
    #[arg(long, default_value_t = 0)]
    pub(crate) script_bytes: usize,
    /// KV-cache formats to measure each mode with, comma-separated (f32, f16, q8); default: each mode's own
    /// (`dia::kv_format_for`: q8 for q4, f16 for q8, f32 otherwise). Under `--quality` the f32 reference keeps f32
    /// caches, and f32 weights are measured too when another cache format is asked for.
    #[arg(long, value_delimiter = ',')]
    pub(crate) kv_cache: Vec<KvFormat>,
}

/// The (weights, KV cache) combinations to measure: every mode with every `--kv-cache` format, or its default.
pub(crate) fn combinations(args: &Args, modes: &[Numerics]) -> Vec<(Numerics, Option<KvFormat>)> {
    modes
        .iter()
        .flat_map(|&n| match args.kv_cache.is_empty() {
            true => vec![(n, None)],
            false => args.kv_cache.iter().map(|&k| (n, Some(k))).collect(),
        })
        .collect()
}

/// A label for a measured combination: the mode, plus the cache format when it is not the mode's default.
pub(crate) fn label(model: &DiaModel) -> String {
    if model.kv_format == kv_format_for(model.numerics, &model.cfg) {
        model.numerics.name().to_string()
    } else {
        format!("{}+kv{}", model.numerics.name(), model.kv_format)
    }
}

/// The Dia and DAC configs for `--config`, and whether they are the full-size models.
pub(crate) fn configs(which: &str) -> Result<(DiaConfig, DacConfig, bool)> {
    match which {
        "full" => Ok((DiaConfig::dia_1_6b(), DacConfig::dac_44khz(), true)),
        "tiny" => Ok((tiny_dia(), tiny_dac(), false)),
        path => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
            let cfg = DiaConfig::from_json_str(&text).map_err(|e| format!("{path}: {e}"))?;
            Ok((cfg, DacConfig::dac_44khz(), false))
        }
    }
}

/// The sizes of `shared/fixtures/tiny/dia/config.json` (2 + 2 layers, hidden 64 / 96).
pub(crate) fn tiny_dia() -> DiaConfig {
    let mut c = DiaConfig::dia_1_6b();
    let e = &mut c.encoder;
    (e.layers, e.hidden, e.intermediate, e.heads, e.kv_heads, e.head_dim) = (2, 64, 128, 4, 4, 16);
    let d = &mut c.decoder;
    (d.layers, d.hidden, d.intermediate, d.heads, d.kv_heads, d.head_dim) = (2, 96, 192, 4, 2, 16);
    (d.cross_heads, d.cross_kv_heads, d.cross_head_dim, d.cross_hidden) = (4, 4, 16, 64);
    c
}

/// The sizes of `shared/fixtures/tiny/dac/config.json` (hop 512 like the real codec).
pub(crate) fn tiny_dac() -> DacConfig {
    DacConfig { encoder_hidden: 4, decoder_hidden: 32, latent: 64, ..DacConfig::dac_44khz() }
}

/// The binding size the device must allow: the largest weight matrix in any of `numerics`.
pub(crate) fn biggest_matrix_bytes(cfg: &DiaConfig, numerics: &[Numerics]) -> u64 {
    numerics.iter().map(|&n| dia_webgpu::dia::largest_matrix_bytes(cfg, n)).max().unwrap_or(0).max(16 << 20)
}
