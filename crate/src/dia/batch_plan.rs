//! How many texts one generation batch may hold on a device: the GPU memory a `Session` takes, from the same
//! sizes its buffers are allocated with (`forward.rs`, `generate.rs`), against the device's binding limits and
//! memory. GPU-free, so a caller can plan before anything is built.

use crate::config::DiaConfig;
use crate::kernels::kv_cache::KvFormat;

const F32: u64 = 4;

/// Largest batch any request may ask for (the rows of a step are 2 × batch); beyond a few dozen items a step's
/// cost grows with the batch, so larger batches only hold more memory.
pub const MAX_BATCH: usize = 64;

/// Largest batch chosen without being asked (`max_batch`): 16 decoder rows, the row count the small-M kernels are
/// built for (issue 17).
pub const AUTO_BATCH: usize = 8;

/// Share of the device memory left after the weights that a batch may plan to use; the rest stays for the codec,
/// the readback staging and what other programs hold.
pub const MEMORY_SHARE: f64 = 0.75;

/// What a batch request looks like to the memory plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchShape {
    /// Items (texts) in the batch.
    pub batch: usize,
    /// Text tokens (bytes) of the longest item.
    pub text_tokens: usize,
    /// Decoder positions the session is sized for (its `max_length`).
    pub positions: usize,
    /// Voice prompt frames every item continues (0 without a prompt).
    pub prompt_frames: usize,
    /// How the attention caches hold their values (the model's `kv_format`).
    pub kv_format: KvFormat,
}

/// GPU memory of one session, as far as it grows with the batch (the fixed few MiB are not counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSize {
    /// All its buffers together.
    pub bytes: u64,
    /// The largest single buffer (one binding).
    pub largest_binding: u64,
}

/// What `Session` allocates for `shape`, from the sizes its allocators use (KV caches in steps of 512 positions,
/// encoder buffers in steps of 256 tokens).
pub fn session_size(cfg: &DiaConfig, shape: &BatchShape) -> SessionSize {
    let (e, d) = (&cfg.encoder, &cfg.decoder);
    let b = shape.batch as u64;
    let rows = 2 * b;
    // Packed text: every item's bytes, then the unconditional row's one token.
    let tokens = (b * shape.text_tokens as u64 + 1).next_multiple_of(256);
    let positions = (shape.positions as u64).next_multiple_of(512);
    // Rows fed at once by the prefill: BOS, the prompt and the delay staircase.
    let prefill = rows * (1 + shape.prompt_frames as u64 + cfg.delay_pattern.iter().copied().max().unwrap_or(0) as u64);
    let dec_width = (2 * d.hidden + (d.heads + 2 * d.kv_heads) * d.head_dim + d.heads * d.head_dim + 2 * d.cross_heads * d.cross_head_dim + d.intermediate) as u64;
    let enc_width = (3 * e.hidden + (e.heads + 2 * e.kv_heads) * e.head_dim + e.heads * e.head_dim + e.intermediate) as u64;

    let kv_layer = shape.kv_format.bytes(rows * positions * (d.kv_heads * d.head_dim) as u64, d.head_dim as u32);
    let cross_layer = shape.kv_format.bytes(tokens * (2 * d.cross_kv_heads * d.cross_head_dim) as u64, d.cross_head_dim as u32);
    // f16 / q8 cross caches are projected through f32 staging of a layer's size: the encoder's MLP buffer, widened
    // where a layer's K/V is wider than the MLP.
    let staged = if shape.kv_format == KvFormat::F32 { 0 } else { 2 * d.cross_kv_heads * d.cross_head_dim };
    let cross_staging = tokens * staged.saturating_sub(e.intermediate) as u64 * F32;
    let encoder_mlp = tokens * e.intermediate.max(staged) as u64 * F32;
    let prefill_mlp = prefill * d.intermediate as u64 * F32;
    let logits = rows * (d.channels * d.vocab) as u64 * F32;
    let bytes = 2 * d.layers as u64 * kv_layer
        + d.layers as u64 * cross_layer
        + cross_staging
        + tokens * enc_width * F32
        + (prefill + rows) * dec_width * F32
        + logits
        + positions * b * d.channels as u64 * 4;
    SessionSize { bytes, largest_binding: kv_layer.max(cross_layer).max(cross_staging).max(encoder_mlp).max(prefill_mlp).max(logits) }
}

/// The largest batch (1..=`limit`, at most `MAX_BATCH`) whose session fits the device: every binding within
/// `max_binding` bytes and, when the device memory left after the weights (`free_memory`) is known, the whole
/// session within `MEMORY_SHARE` of it. 0 when not even one item fits. `shape.batch` is ignored.
pub fn max_batch(cfg: &DiaConfig, shape: &BatchShape, max_binding: u64, free_memory: Option<u64>, limit: usize) -> usize {
    let fits = |batch: usize| {
        let size = session_size(cfg, &BatchShape { batch, ..*shape });
        size.largest_binding <= max_binding && free_memory.is_none_or(|free| size.bytes as f64 <= MEMORY_SHARE * free as f64)
    };
    // Every size grows with the batch, so the fitting sizes are 1..=answer.
    (1..=limit.min(MAX_BATCH)).take_while(|&b| fits(b)).last().unwrap_or(0)
}
