//! `shaders/attention.wgsl`: scaled-dot-product attention with scale 1.0 (Dia uses no 1/√d), GQA, masks.
//! Three schedules of the same function: for the encoder and prefill, tiled matrix products over a score matrix
//! materialised in scratch (scores, softmax statistics, P·V), or flash-style tiles of queries when that scratch
//! would not fit; split-K over keys for single-query decode. The decoder
//! step's self-attention also folds in RoPE and the KV-cache update (`attention_decode_appending`): every
//! dependent dispatch costs several µs of ordering on a GPU, so a step saves one per layer.
use crate::gpu::{specialize, Dispatch, Gpu, GpuBuffer, KernelVariant, Reduction, SUBGROUPS_MARKER};
use crate::kernels::kv_cache::KvFormat;
use crate::kernels::wgsl::{tree_sum, Emitter};

const SHADER: &str = include_str!("../../../shaders/attention.wgsl");

/// Threads per workgroup of every entry point.
const WORKGROUP: u32 = 128;
/// Query rows per prefill workgroup (128 threads, 4 lanes per query).
const PREFILL_QUERIES: u32 = 32;
/// Lanes per query in prefill (shader constant TD).
const PREFILL_LANES: u32 = 4;
/// Most query heads one decode workgroup serves (they share a kv head), and the scores a workgroup holds:
/// a chunk has min(128, 256 / heads per workgroup) keys (64 for Dia's 4 query heads per kv head: 3072 keys →
/// 48 chunks × 4 head groups × 2 rows = 384 workgroups per layer; 128 for its cross-attention).
const DECODE_HEADS: u32 = 4;
const DECODE_SCORES: u32 = 256;
const DECODE_MAX_CHUNK: u32 = 128;
/// Chunks the decode combine merges (shader constant MAX_CHUNKS).
const MAX_DECODE_CHUNKS: u32 = 256;
/// Workgroup memory budget (words) for the prefill key tiles (the limit is 16 KiB = 4096 words).
const PREFILL_TILE_WORDS: u32 = 3800;
/// Largest head_dim the kernels take (per-thread vectors are sized from it).
const MAX_HEAD_DIM: u32 = 256;
/// Rows (and keys) per tile of the tiled prefill; the scratch holds a multiple of it rows.
const TILE_ROWS: u32 = 64;
/// Largest score scratch `attention_prefill` asks for (bytes): longer problems go in chunks of rows. Dia's
/// encoder on 1024 text tokens (16 heads) needs ~67 MB, a 2 × 300-row voice prompt over a 3072-row cache ~118 MB.
const PREFILL_SCRATCH_MAX: u64 = 128 << 20;

/// Where queries, keys and values live and which keys each query sees.
///
/// Query row m (< rows), head h (< heads): q = q_buf[m·q_stride + q_col + h·head_dim ..][..head_dim].
/// qinfo u32 `[rows, 2]` = (seq, pos); seqs u32 `[n_seqs, 2]` = (kv_base_row, kv_len).
/// Key j of sequence s, kv head g: k = k_buf[(kv_base_row + j)·kv_stride + k_col + g·head_dim ..],
/// v likewise with v_buf / v_col. Query head h reads kv head h / (heads / kv_heads).
/// Visible keys: j < kv_len, and if `causal` also j ≤ pos.
/// Output: out[m·heads·head_dim + h·head_dim + d] (row stride heads·head_dim).
pub struct AttentionArgs<'a> {
    pub q_buf: &'a GpuBuffer,
    pub q_stride: u32,
    pub q_col: u32,
    pub k_buf: &'a GpuBuffer,
    pub v_buf: &'a GpuBuffer,
    pub kv_stride: u32,
    pub k_col: u32,
    pub v_col: u32,
    pub qinfo: &'a GpuBuffer,
    pub seqs: &'a GpuBuffer,
    pub out: &'a GpuBuffer,
    pub rows: u32,
    pub heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub causal: bool,
    /// Upper bound on any kv_len / pos+1 this dispatch will ever see (sizes the split-K and the prefill score
    /// scratch; the tiled prefill never reads keys past it).
    pub max_keys: u32,
    /// How `k_buf` and `v_buf` hold their values (element indices above are values, whatever the format).
    pub kv_format: KvFormat,
}

wgsl_params! {
    /// Uniform parameters of the attention kernels (prefill, decode, combine).
    struct Params {
        rows: u32,
        heads: u32,
        /// heads / kv_heads: query head h reads kv head h / n_rep
        n_rep: u32,
        causal: u32,
        q_stride: u32,
        q_col: u32,
        kv_stride: u32,
        k_col: u32,
        v_col: u32,
        /// decode: chunks per (row, head) in the scratch buffer
        n_chunks: u32,
        /// tiled prefill: rows row0 .. row0 + chunk_rows; scratch of chunk_cap rows of key_stride words per head
        row0: u32,
        chunk_rows: u32,
        chunk_cap: u32,
        /// a multiple of 4
        key_stride: u32,
        /// keys past it are never read
        max_keys: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

impl AttentionArgs<'_> {
    fn params(&self, n_chunks: u32) -> Params {
        assert!(self.kv_heads > 0 && self.heads.is_multiple_of(self.kv_heads), "attention: heads must be a multiple of kv_heads");
        assert!((1..=MAX_HEAD_DIM).contains(&self.head_dim), "attention: head_dim must be in 1..={MAX_HEAD_DIM}");
        Params {
            rows: self.rows,
            heads: self.heads,
            n_rep: self.heads / self.kv_heads,
            causal: self.causal as u32,
            q_stride: self.q_stride,
            q_col: self.q_col,
            kv_stride: self.kv_stride,
            k_col: self.k_col,
            v_col: self.v_col,
            n_chunks,
            row0: 0,
            chunk_rows: 0,
            chunk_cap: 0,
            key_stride: 0,
            max_keys: self.max_keys,
            _pad0: 0, _pad1: 0, _pad2: 0,
        }
    }
}

/// An entry point of `shaders/attention.wgsl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttentionEntry {
    /// Flash-style prefill (no scratch).
    Prefill,
    /// Tiled prefill: scores, softmax statistics, P·V.
    PrefillScores,
    PrefillSoftmax,
    PrefillPv,
    /// Split-K decode: partials per chunk of keys, then their combination.
    DecodePartial,
    DecodeCombine,
}

impl AttentionEntry {
    fn name(self) -> &'static str {
        match self {
            AttentionEntry::Prefill => "prefill",
            AttentionEntry::PrefillScores => "prefill_scores",
            AttentionEntry::PrefillSoftmax => "prefill_softmax",
            AttentionEntry::PrefillPv => "prefill_pv",
            AttentionEntry::DecodePartial => "decode_partial",
            AttentionEntry::DecodeCombine => "decode_combine",
        }
    }
}

/// One compiled specialisation of the attention shader: the WGSL generator's input and the pipeline-cache key.
/// Every entry point of one (head_dim, decode_heads, …) shares a source, so they share one shader module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AttentionVariant {
    pub entry: AttentionEntry,
    pub head_dim: u32,
    /// Query heads per decode workgroup (1 for the prefill entry points).
    pub decode_heads: u32,
    /// Every key in one chunk: `decode_partial` normalises and writes the output itself.
    pub single: bool,
    /// The decode pair folds in RoPE and the KV-cache write (`attention_decode_appending`).
    pub append: bool,
    pub kv: KvFormat,
    /// The decode pair's reductions (the prefill entry points take `Reduction::Workgroup`).
    pub reduction: Reduction,
}

impl AttentionVariant {
    /// A prefill entry point for these arguments.
    fn prefill(entry: AttentionEntry, a: &AttentionArgs) -> AttentionVariant {
        AttentionVariant { entry, head_dim: a.head_dim, decode_heads: 1, single: false, append: false, kv: a.kv_format, reduction: Reduction::Workgroup }
    }
}

impl KernelVariant for AttentionVariant {
    fn entry_point(&self) -> &'static str {
        self.entry.name()
    }

    // Generated only on a cache miss: building it per dispatch is most of a session's host set-up.
    fn source(&self) -> String {
        shader_source(self.head_dim, self.decode_heads, self.single, self.append, self.kv, self.reduction)
    }
}

/// The shader specialised for one head_dim: per-thread vector lengths and the prefill key tile.
fn shader_source(head_dim: u32, decode_heads: u32, single: bool, append: bool, kv: KvFormat, reduction: Reduction) -> String {
    // Prefill workgroup memory: K and V tiles (2·BK·HD words) + lane partials (BK·128) + 66 words of row info.
    let fit = PREFILL_TILE_WORDS / (2 * head_dim + WORKGROUP);
    let key_tile = [32, 16, 8, 4, 2, 1].into_iter().find(|&b| b <= fit).unwrap_or(1);
    let chunk = decode_chunk(decode_heads);
    // q8 keys are scored a word at a time (4 values, one scale per key). The appending decode rotates its query by
    // words then, which needs each word's rotary partner in the same lane: head_dim a multiple of 64 (`decode_code`);
    // other head_dims score a value at a time.
    let q8_words = kv == KvFormat::Q8 && head_dim.is_multiple_of(4) && (!append || head_dim.is_multiple_of(64));
    let code = decode_code(head_dim, decode_heads, chunk, append, q8_words);
    let tiled = tiled_code(head_dim);
    let red = decode_reductions(reduction, decode_heads);
    let marker = if reduction == Reduction::Subgroup { SUBGROUPS_MARKER } else { "" };
    marker.to_string()
        + &specialize(
        SHADER,
        &[
            ("PARAMS", Params::wgsl()),
            ("SG_ARGS", red.args.to_string()),
            ("DECODE_REDUCE_FNS", red.decode_fns.clone()),
            ("DECODE_MAX", red.decode_max.to_string()),
            ("DECODE_SUM", red.decode_sum.to_string()),
            ("COMBINE_REDUCE_FNS", red.combine_fns.clone()),
            ("COMBINE_MAX", red.combine_max.to_string()),
            ("COMBINE_SUM", red.combine_sum.to_string()),
            ("KV_WORD", kv.wgsl_word().to_string()),
            ("KV_LOADS", [kv.wgsl_load("load_k", "kbuf", head_dim), kv.wgsl_load("load_v", "vbuf", head_dim), if q8_words { KvFormat::wgsl_q8_words("load_k", "kbuf", head_dim) } else { String::new() }].concat()),
            ("PV_LOAD", kv.wgsl_load("pv_load_v", "pv_v", head_dim)),
            ("KV_STORES", [kv.wgsl_store_head("store_new_key_k", "kcache_c", head_dim, "partial_at", WORKGROUP), kv.wgsl_store_head("store_new_key_v", "vcache_c", head_dim, "partial_at", WORKGROUP)].concat()),
            ("HD", head_dim.to_string()),
            ("DP", head_dim.div_ceil(PREFILL_LANES).to_string()),
            ("BK", key_tile.to_string()),
            ("CH", chunk.to_string()),
            ("SINGLE", single.to_string()),
            ("NR", decode_heads.to_string()),
            ("DECODE_SCORES", code.scores.clone()),
            ("DECODE_V", code.v.clone()),
            ("COMBINE_ROUND", code.combine_round.clone()),
            ("COMBINE_APPEND", if append { combine_append(kv, red.combine_max) } else { String::new() }),
            ("DN", tiled.dn.to_string()),
            ("SCORES", tiled.scores.clone()),
            ("PV_INIT", tiled.pv_init.clone()),
            ("PV_BODY", tiled.pv_body.clone()),
            ("PV_STORE", tiled.pv_store.clone()),
        ],
    )
}

/// For many query rows at once (encoder, prefill): three dispatches (scores, softmax statistics, P·V) per chunk
/// of rows, through a score scratch shared with every other prefill on this device (`Gpu::shared_scratch`) of
/// heads × rows × `max_keys` floats at most (capped by the device's binding and buffer limits and 128 MiB; more
/// rows go in several chunks), or the flash kernel when not even 64 rows fit.
pub fn attention_prefill(gpu: &Gpu, a: &AttentionArgs) -> Vec<Dispatch> {
    let limit = gpu.limits.max_storage_buffer_binding_size.min(gpu.limits.max_buffer_size).min(PREFILL_SCRATCH_MAX);
    attention_prefill_limited(gpu, a, limit)
}

/// `attention_prefill` with the score scratch capped at `max_scratch_bytes` (0: always the flash kernel); for
/// tests and benchmarks of the chunked and fallback paths.
pub fn attention_prefill_limited(gpu: &Gpu, a: &AttentionArgs, max_scratch_bytes: u64) -> Vec<Dispatch> {
    // Under 4 GiB, word indices into the scratch stay within u32.
    let max_scratch_bytes = max_scratch_bytes.min(u32::MAX as u64);
    let key_stride = a.max_keys.max(1).next_multiple_of(4);
    // Scores plus one vec4 of statistics per (head, row).
    let row_bytes = a.heads as u64 * (key_stride as u64 + 4) * 4;
    let fit = max_scratch_bytes / row_bytes.max(1) / TILE_ROWS as u64 * TILE_ROWS as u64;
    if fit == 0 {
        return vec![prefill_flash(gpu, a)];
    }
    let cap = fit.min(a.rows.max(1).next_multiple_of(TILE_ROWS) as u64) as u32;
    let scratch = gpu.shared_scratch("attention.prefill.scores", row_bytes * cap as u64);
    let scores = gpu.variant_pipeline(AttentionVariant::prefill(AttentionEntry::PrefillScores, a));
    let softmax = gpu.variant_pipeline(AttentionVariant::prefill(AttentionEntry::PrefillSoftmax, a));
    let pv = gpu.variant_pipeline(AttentionVariant::prefill(AttentionEntry::PrefillPv, a));
    let dn = tiled_columns(a.head_dim);
    let mut ds = Vec::new();
    for row0 in (0..a.rows).step_by(cap as usize) {
        let chunk_rows = cap.min(a.rows - row0);
        let params = Params { row0, chunk_rows, chunk_cap: cap, key_stride, ..a.params(0) };
        let row_tiles = chunk_rows.div_ceil(TILE_ROWS);
        ds.push(gpu.dispatch(&scores, &params, &[a.qinfo, a.seqs, a.q_buf, a.k_buf, &scratch], [a.max_keys.div_ceil(TILE_ROWS), row_tiles, a.heads]));
        ds.push(gpu.dispatch(&softmax, &params, &[a.qinfo, a.seqs, &scratch], [chunk_rows.div_ceil(4), a.heads, 1]));
        ds.push(gpu.dispatch(&pv, &params, &[a.qinfo, a.seqs, &scratch, a.v_buf, a.out], [a.head_dim.div_ceil(dn), row_tiles, a.heads]));
    }
    ds
}

/// Flash-style: a workgroup per 32 query rows and head, no scratch.
fn prefill_flash(gpu: &Gpu, a: &AttentionArgs) -> Dispatch {
    let params = a.params(0);
    let pipeline = gpu.variant_pipeline(AttentionVariant::prefill(AttentionEntry::Prefill, a));
    let buffers = [a.qinfo, a.seqs, a.q_buf, a.k_buf, a.v_buf, a.out];
    gpu.dispatch(&pipeline, &params, &buffers, [a.rows.div_ceil(PREFILL_QUERIES), a.heads, 1])
}

/// Output columns per P·V tile for head_dim `hd` (shader constant DN): 128 covers Dia's head_dim in one tile.
fn tiled_columns(hd: u32) -> u32 {
    if hd > 64 { 128 } else { 64 }
}

/// Generated parts of the tiled prefill kernels.
struct TiledCode {
    /// Output columns per P·V tile (shader constant DN).
    dn: u32,
    scores: String,
    pv_init: String,
    pv_body: String,
    pv_store: String,
}

/// For head_dim `hd`: the score tile's stages (4 query rows and 4 keys loaded per thread, the next stage's loads
/// issued before the current stage's 16 × 16 products) and the P·V tile (4 probabilities and 4·DN/64 V words per
/// thread and stage, 4 × 4·NV accumulators). Shader names: TR = 64, KD = 16, 256 threads.
fn tiled_code(hd: u32) -> TiledCode {
    const KD: u32 = 16;
    let dn = tiled_columns(hd);
    let nv = dn / 64; // column vec4s per thread and row
    let v_passes = dn / 64; // V loads: (DN / 4) column groups × (1024 / DN) keys per pass
    let v_keys = 1024 / dn;
    let comp = ["x", "y", "z", "w"];
    // Dimensions past head_dim (last stage) must not add to the dot products.
    let masked = !hd.is_multiple_of(KD);
    let q_load = |r: u32, off: &str| if masked { format!("select(0.0, load_q(qr_{r} + {off}), {off} + lk < HD)") } else { format!("load_q(qr_{r} + {off})") };
    let k_load = |r: u32, off: &str| if masked { format!("select(0.0, load_k(kr_{r} + {off}), {off} + lk < HD)") } else { format!("load_k(kr_{r} + {off})") };

    let mut sc = Emitter::new(2);
    for r in 0..4 {
        emit!(sc, "let qr_{r} = q0 + {r}u * p.q_stride;");
        emit!(sc, "let kr_{r} = (kv_base + min(j0 + 4u * lg + {r}u, lim - 1u)) * p.kv_stride + k0r;");
    }
    for r in 0..4 {
        emit!(sc, "var q_{r} = {};", q_load(r, "0u"));
        emit!(sc, "var k_{r} = {};", k_load(r, "0u"));
        emit!(sc, "var acc_{r} = vec4<f32>(0.0);");
    }
    sc.block("for (var k0 = 0u; k0 < HD; k0 += KD)", |sc| {
        sc.line("workgroupBarrier();");
        sc.line("ta[lk * 16u + lg] = vec4<f32>(q_0, q_1, q_2, q_3);");
        sc.line("tb[lk * 16u + lg] = vec4<f32>(k_0, k_1, k_2, k_3);");
        sc.line("workgroupBarrier();");
        sc.line("let kn = k0 + KD;");
        for r in 0..4 {
            emit!(sc, "q_{r} = {};", q_load(r, "kn"));
            emit!(sc, "k_{r} = {};", k_load(r, "kn"));
        }
        // Two chains of 8 products per stage, added to the running sum: rounding errors grow with chain length, and
        // logits are large (no 1/√d), so score errors show up amplified in the softmax.
        for kk in 0..KD {
            emit!(sc, "let a_{kk} = ta[{}u + tm];", kk * 16);
            emit!(sc, "let b_{kk} = tb[{}u + tn];", kk * 16);
            for (r, c) in comp.iter().enumerate() {
                let chain = if kk < KD / 2 { "e" } else { "o" };
                let op = if kk % (KD / 2) == 0 { format!("var {chain}_{r} =") } else { format!("{chain}_{r} +=") };
                emit!(sc, "{op} a_{kk}.{c} * b_{kk};");
            }
        }
        for r in 0..4 {
            emit!(sc, "acc_{r} += e_{r} + o_{r};");
        }
    });
    for r in 0..4 {
        sc.block(&format!("if t_seq[4u * tm + {r}u] == s && j0 + 4u * tn < t_lim[4u * tm + {r}u]"), |sc| {
            emit!(sc, "let i = (h * p.chunk_cap + ml0 + 4u * tm + {r}u) * s_row + j0 / 4u + tn;");
            emit!(sc, "if i < arrayLength(&sc_out) {{ sc_out[i] = acc_{r}; }}");
        });
    }

    let mut pv_init = Emitter::new(1);
    for r in 0..4 {
        for c in 0..nv {
            emit!(pv_init, "var acc_{r}_{c} = vec4<f32>(0.0);");
        }
    }
    let mut pv = Emitter::new(2);
    for r in 0..4 {
        // Rows of other sequences take no keys in this pass.
        emit!(pv, "let pl_{r} = select(0u, t_lim[4u * lg + {r}u], t_seq[4u * lg + {r}u] == s);");
        emit!(pv, "let pm_{r} = t_mx[4u * lg + {r}u];");
        emit!(pv, "let pb_{r} = (h * p.chunk_cap + ml0 + 4u * lg + {r}u) * p.key_stride + lk;");
        emit!(pv, "var p_{r} = select(0.0, exp(pv_s(pb_{r}) - pm_{r}), lk < pl_{r});");
    }
    // V rows past the visible keys are read clamped (their probabilities are 0).
    let v_load = |pass: u32, e: u32, off: &str| format!("pv_load_v((kv_base + min({off}vk + {}u, lim - 1u)) * p.kv_stride + v0 + {e}u)", pass * v_keys);
    for pass in 0..v_passes {
        for e in 0..4 {
            emit!(pv, "var v_{pass}_{e} = {};", v_load(pass, e, ""));
        }
    }
    pv.block("for (var k0 = 0u; k0 < lim; k0 += KD)", |pv| {
        pv.line("workgroupBarrier();");
        pv.line("ta[lk * 16u + lg] = vec4<f32>(p_0, p_1, p_2, p_3);");
        for pass in 0..v_passes {
            emit!(pv, "tb[(vk + {}u) * (DN / 4u) + vc] = vec4<f32>(v_{pass}_0, v_{pass}_1, v_{pass}_2, v_{pass}_3);", pass * v_keys);
        }
        pv.line("workgroupBarrier();");
        pv.line("let kn = k0 + KD;");
        for r in 0..4 {
            emit!(pv, "p_{r} = select(0.0, exp(pv_s(pb_{r} + kn) - pm_{r}), kn + lk < pl_{r});");
        }
        for pass in 0..v_passes {
            for e in 0..4 {
                emit!(pv, "v_{pass}_{e} = {};", v_load(pass, e, "kn + "));
            }
        }
        for kk in 0..KD {
            emit!(pv, "let a_{kk} = ta[{}u + tm];", kk * 16);
            for c in 0..nv {
                emit!(pv, "let b_{kk}_{c} = tb[{}u + tn];", kk * dn / 4 + 16 * c);
                for (r, rc) in comp.iter().enumerate() {
                    emit!(pv, "acc_{r}_{c} += a_{kk}.{rc} * b_{kk}_{c};");
                }
            }
        }
    });

    let mut store = Emitter::new(1);
    for r in 0..4 {
        store.block(&format!("if ml0 + 4u * tm + {r}u < p.chunk_rows && p.row0 + ml0 + 4u * tm + {r}u < p.rows"), |store| {
            emit!(store, "let ob_{r} = ((p.row0 + ml0 + 4u * tm + {r}u) * p.heads + h) * HD;");
            emit!(store, "let inv_{r} = t_inv[4u * tm + {r}u];");
            for c in 0..nv {
                for (e, ce) in comp.iter().enumerate() {
                    emit!(store, "let d_{r}_{c}_{e} = d0 + 4u * (tn + {}u) + {e}u;", 16 * c);
                    emit!(store, "if d_{r}_{c}_{e} < HD && ob_{r} + d_{r}_{c}_{e} < arrayLength(&pv_out) {{ pv_out[ob_{r} + d_{r}_{c}_{e}] = acc_{r}_{c}.{ce} * inv_{r}; }}");
                }
            }
        });
    }
    TiledCode { dn, scores: sc.finish(), pv_init: pv_init.finish(), pv_body: pv.finish(), pv_store: store.finish() }
}

/// Split over keys: for few query rows with many keys (decoder steps). May return several dispatches
/// (partials + combine); scratch buffers are allocated here, once.
///
/// The grid covers `max_keys` keys in chunks; chunks past a query's visible keys exit at once, so the same
/// dispatches can be recorded every step while the host rewrites `qinfo`. Keys past `max_keys` are never read.
pub fn attention_decode(gpu: &Gpu, a: &AttentionArgs) -> Vec<Dispatch> {
    decode_dispatches(gpu, a, None)
}

/// Whether `attention_decode_appending` takes these arguments: causal self-attention over more keys than one
/// chunk holds (the combine pass writes the new key), head_dim a multiple of 16 (rotary pairs share a lane) that
/// the cache format takes (q8: up to `Q8_MAX_HEAD_DIM`), and separate K and V caches (both are written).
pub fn can_append_in_decode(a: &AttentionArgs) -> bool {
    let (_, chunk) = decode_shape(a);
    a.causal
        && a.head_dim.is_multiple_of(16)
        && a.kv_format.supports(a.head_dim)
        && a.max_keys.div_ceil(chunk) > 1
        && !std::sync::Arc::ptr_eq(&a.k_buf.buf, &a.v_buf.buf)
}

/// `attention_decode` for a decoder step's self-attention with RoPE and the KV-cache update folded in (what
/// `kv_cache::rope_kv_write` followed by `attention_decode` computes, in two dispatches instead of three).
///
/// `q_buf` holds each row's fused projection `[Q heads | K heads | V heads]` from `q_col`, unrotated; `k_buf` and
/// `v_buf` are the caches. Query row m at position pos (qinfo) is rotated on load with the `cos`/`sin` tables
/// `[max_pos, head_dim / 2]` (rotate_half; a position past the tables is not rotated), attends over the cached keys
/// before pos plus its own rotated K and V (in f32, as the QKV row holds them), and the combine writes that K and V
/// into the caches at (seq, pos) when pos < kv_len (q8: each quantized as one block, as `rope_kv_write` would).
/// `q_buf` itself is left unrotated. Panics unless `can_append_in_decode(a)`.
pub fn attention_decode_appending(gpu: &Gpu, a: &AttentionArgs, cos: &GpuBuffer, sin: &GpuBuffer) -> Vec<Dispatch> {
    assert!(can_append_in_decode(a), "attention_decode_appending: needs causal attention over several chunks, head_dim % 16 == 0 (within the cache format's) and separate K/V caches");
    decode_dispatches(gpu, a, Some((cos, sin)))
}

/// Query heads per workgroup and keys per chunk.
fn decode_shape(a: &AttentionArgs) -> (u32, u32) {
    let n_rep = a.params(0).n_rep;
    // The query heads of one kv head are consecutive: a workgroup takes the largest group that divides them.
    let nr = [DECODE_HEADS, 2, 1].into_iter().find(|&r| n_rep.is_multiple_of(r)).unwrap_or(1);
    (nr, decode_chunk(nr))
}

fn decode_dispatches(gpu: &Gpu, a: &AttentionArgs, rope: Option<(&GpuBuffer, &GpuBuffer)>) -> Vec<Dispatch> {
    let (nr, chunk) = decode_shape(a);
    let n_chunks = a.max_keys.div_ceil(chunk).max(1);
    if n_chunks == 1 {
        // Every key in one chunk: the partial pass normalises and writes the output itself.
        let params = a.params(n_chunks);
        let single = gpu.variant_pipeline(AttentionVariant { append: false, ..decode_variant(gpu, a, AttentionEntry::DecodePartial, true, false) });
        return vec![gpu.dispatch(&single, &params, &[a.qinfo, a.seqs, a.q_buf, a.k_buf, a.v_buf, a.out], [a.heads / nr, n_chunks, a.rows])];
    }
    let (partial, partials) = decode_partial_pass(gpu, a, rope);
    let params = a.params(n_chunks);
    let combine = gpu.variant_pipeline(decode_variant(gpu, a, AttentionEntry::DecodeCombine, false, rope.is_some()));
    let combine = match rope {
        None => gpu.dispatch(&combine, &params, &[a.qinfo, a.seqs, &partials.scratch, a.out], [a.heads, a.rows, 1]),
        Some(_) => gpu.dispatch(&combine, &params, &[a.qinfo, a.seqs, &partials.scratch, a.out, a.k_buf, a.v_buf], [a.heads, a.rows, 1]),
    };
    vec![partial, combine]
}

fn decode_variant(gpu: &Gpu, a: &AttentionArgs, entry: AttentionEntry, single: bool, append: bool) -> AttentionVariant {
    let (nr, _) = decode_shape(a);
    AttentionVariant { entry, head_dim: a.head_dim, decode_heads: nr, single, append, kv: a.kv_format, reduction: gpu.reduction() }
}

/// The split decode's first pass over more than one chunk (with RoPE and the new key staged where `rope` is given)
/// and the scratch it fills.
fn decode_partial_pass(gpu: &Gpu, a: &AttentionArgs, rope: Option<(&GpuBuffer, &GpuBuffer)>) -> (Dispatch, DecodePartials) {
    let (nr, chunk) = decode_shape(a);
    let n_chunks = a.max_keys.div_ceil(chunk).max(1);
    assert!(n_chunks > 1, "decode_partial_pass: one chunk needs no partials");
    assert!(n_chunks <= MAX_DECODE_CHUNKS, "attention_decode: {} keys exceed {} chunks of {chunk}", a.max_keys, MAX_DECODE_CHUNKS);
    let params = a.params(n_chunks);
    let grid = [a.heads / nr, n_chunks, a.rows];
    let mut words = a.rows as u64 * a.heads as u64 * n_chunks as u64 * (a.head_dim as u64 + 2);
    if rope.is_some() {
        // The new keys' rotated K and V per (row, kv head), staged for the combine.
        words += a.rows as u64 * a.kv_heads as u64 * 2 * a.head_dim as u64;
    }
    // Written by the partial pass and read by the combine right after it: one buffer for every layer's decode
    // (36 of ~0.47 MB for Dia's self and cross attention at 3072 positions otherwise).
    let scratch = gpu.shared_scratch("attention.decode.partials", words * 4);
    let partial = gpu.variant_pipeline(decode_variant(gpu, a, AttentionEntry::DecodePartial, false, rope.is_some()));
    let dispatch = match rope {
        None => gpu.dispatch(&partial, &params, &[a.qinfo, a.seqs, a.q_buf, a.k_buf, a.v_buf, &scratch], grid),
        Some((cos, sin)) => gpu.dispatch(&partial, &params, &[a.qinfo, a.seqs, a.q_buf, a.k_buf, a.v_buf, &scratch, cos, sin], grid),
    };
    let layout = DecodeLayout {
        rows: a.rows,
        heads: a.heads,
        head_dim: a.head_dim,
        n_rep: a.params(0).n_rep,
        chunk,
        n_chunks,
        kv_stride: a.kv_stride,
        k_col: a.k_col,
        v_col: a.v_col,
        kv: a.kv_format,
    };
    (dispatch, DecodePartials { scratch, layout })
}

/// The split partials of a decode's first pass, for a consumer that combines them itself.
pub struct DecodePartials {
    /// Per (row, head, chunk): `head_dim` softmax-weighted V sums, the chunk's max score, its sum of exp(score −
    /// max); then, for the appending decode, each (row, kv head)'s new rotated K and its V (`head_dim` each).
    pub scratch: GpuBuffer,
    pub layout: DecodeLayout,
}

/// Where a decode's partials and new keys lie: the scratch's shape and the caches' layout (`AttentionArgs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecodeLayout {
    pub rows: u32,
    pub heads: u32,
    pub head_dim: u32,
    /// Query heads per kv head.
    pub n_rep: u32,
    /// Keys per chunk; row m's live chunks are ⌈visible keys / chunk⌉.
    pub chunk: u32,
    /// Chunks per (row, head) in the scratch.
    pub n_chunks: u32,
    pub kv_stride: u32,
    pub k_col: u32,
    pub v_col: u32,
    pub kv: KvFormat,
}

/// `attention_decode_appending`'s first pass alone, for an output projection that combines the partials and writes
/// the new keys into the caches itself (`linear::linear_attention_o`, issue 17's second fusion): the dispatch and
/// the partials. Panics unless `can_append_in_decode(a)`.
pub fn attention_decode_appending_partial(gpu: &Gpu, a: &AttentionArgs, cos: &GpuBuffer, sin: &GpuBuffer) -> (Dispatch, DecodePartials) {
    assert!(can_append_in_decode(a), "attention_decode_appending_partial: needs causal attention over several chunks, head_dim % 16 == 0 (within the cache format's) and separate K/V caches");
    decode_partial_pass(gpu, a, Some((cos, sin)))
}

/// The decode pair's reductions as generated WGSL: helper functions, the calls that replace the reductions in
/// `decode_partial` (per-head max and sum over a chunk) and `decode_combine` (max and sum over the chunks), and the
/// entry points' extra builtins.
struct DecodeReductions {
    args: &'static str,
    decode_fns: String,
    decode_max: &'static str,
    decode_sum: &'static str,
    combine_fns: String,
    combine_max: &'static str,
    combine_sum: &'static str,
}

/// Most subgroups in a decode_partial workgroup (256 invocations in subgroups of at least 4: `Gpu::reduction`).
const MAX_SUBGROUPS: u32 = 64;

/// `Workgroup`: trees in workgroup memory, a barrier per round (log2 CH rounds per reduction). `Subgroup`: each
/// subgroup reduces its invocations' values of every head at once (a subgroup may hold several heads' keys, or part
/// of one, whatever its size and however the device maps invocations to subgroups), its first invocation stores
/// the result by `subgroup_id`, and after one barrier every invocation folds the partials of its head.
fn decode_reductions(reduction: Reduction, nr: u32) -> DecodeReductions {
    match reduction {
        Reduction::Workgroup => DecodeReductions {
            args: "",
            decode_fns: "var<workgroup> d_red: array<f32, NR * CH>;        // tree reductions (max, then sum) per head

fn head_max(e: u32, eh: u32, ek: u32, live: bool, x: f32) -> f32 {
    if live {
        d_red[e] = x;
    }
    for (var w = CH / 2u; w > 0u; w >>= 1u) {
        workgroupBarrier();
        if live && ek < w {
            d_red[e] = max(d_red[e], d_red[e + w]);
        }
    }
    workgroupBarrier();
    return d_red[min(eh, NR - 1u) * CH];
}

// Leaves each head's sum in d_red[head · CH], visible after the caller's next barrier.
fn head_sum(e: u32, ek: u32, live: bool, x: f32) {
    if live {
        d_red[e] = x;
    }
    for (var w = CH / 2u; w > 0u; w >>= 1u) {
        workgroupBarrier();
        if live && ek < w {
            d_red[e] += d_red[e + w];
        }
    }
}

fn head_total(h: u32) -> f32 {
    return d_red[h * CH];
}
"
            .to_string(),
            decode_max: "head_max(e, eh, ek, live, sc)",
            decode_sum: "head_sum(e, ek, live, pk)",
            combine_fns: "var<workgroup> c_red: array<f32, WG>;

fn all_max(lid: u32, x: f32) -> f32 {
    c_red[lid] = x;
    for (var w = WG / 2u; w > 0u; w >>= 1u) {
        workgroupBarrier();
        if lid < w {
            c_red[lid] = max(c_red[lid], c_red[lid + w]);
        }
    }
    workgroupBarrier();
    return c_red[0];
}

fn all_sum(lid: u32, x: f32) -> f32 {
    c_red[lid] = x;
    for (var w = WG / 2u; w > 0u; w >>= 1u) {
        workgroupBarrier();
        if lid < w {
            c_red[lid] += c_red[lid + w];
        }
    }
    workgroupBarrier();
    return c_red[0];
}
"
            .to_string(),
            combine_max: "all_max(lid, mx)",
            combine_sum: "all_sum(lid, sum)",
        },
        Reduction::Subgroup => {
            // One subgroup operation per head (unrolled: NR is a constant), each over the values of that head.
            let per_head = |op: &str, neutral: &str| {
                let mut code = Emitter::new(1);
                for h in 0..nr {
                    emit!(code, "let r_{h} = {op}(select({neutral}, x, eh == {h}u));");
                }
                code.block("if sg_lane == 0u && sg_id < MAX_SG", |code| {
                    for h in 0..nr {
                        emit!(code, "d_sg[sg_id * NR + {h}u] = r_{h};");
                    }
                });
                code.finish()
            };
            let decode_fns = format!(
                "const MAX_SG: u32 = {MAX_SUBGROUPS}u;
var<workgroup> d_sg: array<f32, MAX_SG * NR>;   // per subgroup and head
var<workgroup> d_tot: array<f32, NR>;           // each head's sum

fn head_max(x: f32, eh: u32, sg_id: u32, sg_count: u32, sg_lane: u32) -> f32 {{
{}    workgroupBarrier();
    let hh = min(eh, NR - 1u);
    var r = NEG;
    for (var s = 0u; s < min(sg_count, MAX_SG); s++) {{
        r = max(r, d_sg[s * NR + hh]);
    }}
    workgroupBarrier();
    return r;
}}

// Leaves each head's sum in d_tot, visible after the caller's next barrier.
fn head_sum(x: f32, eh: u32, ek: u32, live: bool, sg_id: u32, sg_count: u32, sg_lane: u32) {{
{}    workgroupBarrier();
    let hh = min(eh, NR - 1u);
    var r = 0.0;
    for (var s = 0u; s < min(sg_count, MAX_SG); s++) {{
        r += d_sg[s * NR + hh];
    }}
    workgroupBarrier();
    if live && ek == 0u {{
        d_tot[eh] = r;
    }}
}}

fn head_total(h: u32) -> f32 {{
    return d_tot[h];
}}
",
                per_head("subgroupMax", "NEG"),
                per_head("subgroupAdd", "0.0")
            );
            DecodeReductions {
                args: ", @builtin(subgroup_id) sg_id: u32, @builtin(num_subgroups) sg_count: u32, @builtin(subgroup_invocation_id) sg_lane: u32",
                decode_fns,
                decode_max: "head_max(sc, eh, sg_id, sg_count, sg_lane)",
                decode_sum: "head_sum(pk, eh, ek, live, sg_id, sg_count, sg_lane)",
                combine_fns: "var<workgroup> c_sg: array<f32, WG>;   // per subgroup (at most WG)

fn all_max(x: f32, sg_id: u32, sg_count: u32, sg_lane: u32) -> f32 {
    let r = subgroupMax(x);
    if sg_lane == 0u && sg_id < WG {
        c_sg[sg_id] = r;
    }
    workgroupBarrier();
    var m = NEG;
    for (var s = 0u; s < min(sg_count, WG); s++) {
        m = max(m, c_sg[s]);
    }
    workgroupBarrier();
    return m;
}

fn all_sum(x: f32, sg_id: u32, sg_count: u32, sg_lane: u32) -> f32 {
    let r = subgroupAdd(x);
    if sg_lane == 0u && sg_id < WG {
        c_sg[sg_id] = r;
    }
    workgroupBarrier();
    var t = 0.0;
    for (var s = 0u; s < min(sg_count, WG); s++) {
        t += c_sg[s];
    }
    workgroupBarrier();
    return t;
}
"
                .to_string(),
                combine_max: "all_max(mx, sg_id, sg_count, sg_lane)",
                combine_sum: "all_sum(sum, sg_id, sg_count, sg_lane)",
            }
        }
    }
}

/// Keys per decode chunk for `nr` query heads per workgroup.
fn decode_chunk(nr: u32) -> u32 {
    (DECODE_SCORES / nr).min(DECODE_MAX_CHUNK)
}

/// Generated parts of the decode kernels (straight-line code: every load of a phase in flight at once).
struct DecodeCode {
    scores: String,
    v: String,
    combine_round: String,
}

/// Rotates `{raw}_{i}` into `{name}_{i}` (the appending decode: rotate_half, pairs of slots i and i + half).
type Rotate<'a> = &'a dyn Fn(&mut Emitter, &str, &str);

/// Values 4w .. 4w + 3 of the head at `base` of the QKV row (`w` a WGSL word index), as one vec4.
fn q_word(base: &str, w: &str) -> String {
    format!("vec4<f32>(load_q({base} + 4u * ({w})), load_q({base} + 4u * ({w}) + 1u), load_q({base} + 4u * ({w}) + 2u), load_q({base} + 4u * ({w}) + 3u))")
}

/// The decode's scores over q8 keys, a word at a time: lane t takes words t, t + 8, … of the key (4 values each, so
/// its query values are 4w .. 4w + 3 of those words), loads each once with one scale per key, and scales the dot
/// product once (the value-at-a-time path loads a word and the scale per value: 8× the loads). With `rotate` (the
/// appending decode) the query is loaded as `qr_*` and rotated into `q_*`.
fn decode_q8_scores(scores: &mut Emitter, hd: u32, nr: u32, passes: u32, rotate: Option<Rotate>) {
    const DL: u32 = 8;
    // 256 threads, DL lanes per key.
    const KEYS_PER_PASS: u32 = 256 / DL;
    let words = hd / 4;
    let per_lane = words.div_ceil(DL);
    // Lane t's i-th word; clamped where the last round of words is partial (its query is zero there).
    let word = |i: u32| if DL * (i + 1) > words { format!("min(t + {}u, {}u)", DL * i, words - 1) } else { format!("t + {}u", DL * i) };
    let raw = if rotate.is_some() { "qr" } else { "q" };
    for h in 0..nr {
        emit!(scores, "let qb_{h} = row * p.q_stride + p.q_col + (h0 + {h}u) * HD;");
        for i in 0..per_lane {
            let load = q_word(&format!("qb_{h}"), &word(i));
            let value = if DL * (i + 1) > words { format!("select(vec4<f32>(0.0), {load}, t + {}u < {words}u)", DL * i) } else { load };
            emit!(scores, "let {raw}_{h}_{i} = {value};");
        }
        if let Some(rotate) = rotate {
            rotate(scores, &format!("q_{h}"), &format!("qr_{h}"));
        }
    }
    for pass in 0..passes {
        emit!(scores, "let kr_{pass} = (kv_base + c0 + min({}u + kl, nk)) * p.kv_stride + p.k_col + g * HD;", pass * KEYS_PER_PASS);
        for i in 0..per_lane {
            emit!(scores, "let k_{pass}_{i} = load_k_word(kr_{pass}, {});", word(i));
        }
        emit!(scores, "let ks_{pass} = load_k_scale(kr_{pass});");
    }
    for pass in 0..passes {
        for h in 0..nr {
            let terms: Vec<String> = (0..per_lane).map(|i| format!("dot(q_{h}_{i}, k_{pass}_{i})")).collect();
            emit!(scores, "d_part[({h}u * CH + {}u + kl) * DL + t] = ({}) * ks_{pass};", pass * KEYS_PER_PASS, tree_sum(&terms));
        }
    }
}

/// The end of the appending decode's combine: the new key's K and V into the caches (`append_new_key`). A q8 block's
/// scale needs its max |v| before any byte is written: the writing workgroups (the first head of each kv head's
/// group) reduce both maxima together here with the combine's own reduction (`max_expr`, over `mx`), in uniform
/// control flow, since `append_new_key` returns early on storage values. (Each invocation scanning all HD values
/// itself instead made the H100's q4 step 7 % slower: a serial chain of loads per layer.)
fn combine_append(kv: KvFormat, max_expr: &str) -> String {
    if kv != KvFormat::Q8 {
        return "    append_new_key(lid, h, row, 0.0, 0.0);".to_string();
    }
    let mut s = Emitter::new(1);
    s.block("if h % p.n_rep == 0u", |s| {
        s.line("let nslot = new_key_slot(row, h / p.n_rep);");
        s.line("var mx = 0.0;");
        s.block("for (var d = lid; d < HD; d += WG)", |s| s.line("mx = max(mx, abs(partial_at(nslot + d)));"));
        // The reductions reuse workgroup memory the combine's sum reduction read last.
        s.line("workgroupBarrier();");
        emit!(s, "let k_max = {max_expr};");
        s.line("mx = 0.0;");
        s.block("for (var d = lid; d < HD; d += WG)", |s| s.line("mx = max(mx, abs(partial_at(nslot + HD + d)));"));
        s.line("workgroupBarrier();");
        emit!(s, "let v_max = {max_expr};");
        s.line("append_new_key(lid, h, row, k_max / 127.0, v_max / 127.0);");
    });
    s.finish()
}

/// For head_dim `hd`, `nr` query heads per workgroup and chunks of `chunk` keys (shader constants HD, NR, CH;
/// DL = 8 lanes per key, 256 threads). With `append` (self-attention of a decoder step, HD a multiple of 16) the
/// query is rotated on load and the row's new key is scored and weighted from the fused QKV row instead of the
/// cache (its cache row is stale until the combine writes it). `q8_words`: q8 keys scored a word at a time
/// (`decode_q8_scores`; with `append`, HD a multiple of 64).
fn decode_code(hd: u32, nr: u32, chunk: u32, append: bool, q8_words: bool) -> DecodeCode {
    const DL: u32 = 8;
    const THREADS: u32 = 256;
    let dims = hd.div_ceil(DL);
    assert!(!append || hd.is_multiple_of(16), "decode_code: appending needs head_dim a multiple of 16");
    assert!(!(append && q8_words) || hd.is_multiple_of(64), "decode_code: appending over q8 words needs head_dim a multiple of 64");
    // Lane t holds dims t + 8·i; the last i is partial when HD is not a multiple of 8.
    let lane_dim = |i: u32| if DL * (i + 1) > hd { format!("min(t + {}u, HD - 1u)", DL * i) } else { format!("t + {}u", DL * i) };
    // A lane's slots of a head in the score phase: dims t + 8·i, or with q8 words words t + 8·i (a vec4 of dims
    // 4(t + 8·i) .. + 3 each). Rotary pairs (d, d + HD/2) sit in one lane either way: slots i and i + half
    // (HD/16 dims or HD/64 words on).
    let (slots, half) = if q8_words { (hd / 4 / DL, hd / 64) } else { (dims, hd / 16) };
    let mut scores = Emitter::new(1);
    if append {
        scores.line("let pos = qinfo[2u * row + 1u];");
        scores.line("let is_new = pos >= c0 && pos - c0 < CH && pos < lim;");
        scores.line("let kp = select(0u, pos - c0, is_new);");
        scores.line("let vlim = select(CH, kp, is_new);");
        for i in 0..half {
            if q8_words {
                for c in 0..4 {
                    emit!(scores, "let rcs_{i}_{c} = rope_cs(pos, 4u * (t + {}u) + {c}u);", DL * i);
                }
                emit!(scores, "let rc_{i} = vec4<f32>(rcs_{i}_0.x, rcs_{i}_1.x, rcs_{i}_2.x, rcs_{i}_3.x);");
                emit!(scores, "let rs_{i} = vec4<f32>(rcs_{i}_0.y, rcs_{i}_1.y, rcs_{i}_2.y, rcs_{i}_3.y);");
            } else {
                emit!(scores, "let rcs_{i} = rope_cs(pos, t + {}u);", DL * i);
            }
        }
    } else {
        scores.line("let vlim = CH;");
    }
    // (cos, sin) of slot i's rotary pairs: scalars, or vec4s of a word's four.
    let cos_sin = |i: u32| if q8_words { (format!("rc_{i}"), format!("rs_{i}")) } else { (format!("rcs_{i}.x"), format!("rcs_{i}.y")) };
    // `name_{i}` rotated from `raw_{i}` (rotate_half: the first half pairs with the second).
    let rotate = |out: &mut Emitter, name: &str, raw: &str| {
        for i in 0..half {
            let j = i + half;
            let (c, s) = cos_sin(i);
            emit!(out, "let {name}_{i} = {raw}_{i} * {c} - {raw}_{j} * {s};");
            emit!(out, "let {name}_{j} = {raw}_{j} * {c} + {raw}_{i} * {s};");
        }
    };
    if q8_words {
        decode_q8_scores(&mut scores, hd, nr, chunk / (THREADS / DL), if append { Some(&rotate) } else { None });
    } else {
        for h in 0..nr {
            emit!(scores, "let qb_{h} = row * p.q_stride + p.q_col + (h0 + {h}u) * HD;");
            let raw = if append { "qr" } else { "q" };
            for i in 0..dims {
                let load = format!("load_q(qb_{h} + {})", lane_dim(i));
                let value = if DL * (i + 1) > hd { format!("select(0.0, {load}, t + {}u < HD)", DL * i) } else { load };
                emit!(scores, "let {raw}_{h}_{i} = {value};");
            }
            if append {
                rotate(&mut scores, &format!("q_{h}"), &format!("qr_{h}"));
            }
        }
        let passes = chunk / (THREADS / DL);
        for pass in 0..passes {
            emit!(scores, "let kr_{pass} = (kv_base + c0 + min({}u + kl, nk)) * p.kv_stride + p.k_col + g * HD;", pass * THREADS / DL);
            for i in 0..dims {
                emit!(scores, "let k_{pass}_{i} = load_k(kr_{pass} + {});", lane_dim(i));
            }
        }
        for pass in 0..passes {
            for h in 0..nr {
                let terms: Vec<String> = (0..dims).map(|i| format!("q_{h}_{i} * k_{pass}_{i}")).collect();
                emit!(scores, "d_part[({h}u * CH + {}u + kl) * DL + t] = {};", pass * THREADS / DL, tree_sum(&terms));
            }
        }
    }
    if append {
        // The new key from the QKV row (K heads follow the query heads), rotated; the lanes that scored its stale
        // cache row above overwrite that score, and stage it (in dim order, whatever the lanes' slots) for the
        // combine to write into the cache. (These two `if` bodies are written at the `if`'s own depth: unindented,
        // as the shaders have always had them.)
        emit!(scores, "if is_new && kl == kp % {}u {{", THREADS / DL);
        scores.line("let nb = row * p.q_stride + p.q_col + (p.heads + g) * HD;");
        let word = |i: u32| format!("t + {}u", DL * i);
        for i in 0..slots {
            let load = if q8_words { q_word("nb", &word(i)) } else { format!("load_q(nb + {})", lane_dim(i)) };
            emit!(scores, "let nr_{i} = {load};");
        }
        rotate(&mut scores, "nk", "nr");
        for h in 0..nr {
            let terms: Vec<String> = (0..slots).map(|i| if q8_words { format!("dot(q_{h}_{i}, nk_{i})") } else { format!("q_{h}_{i} * nk_{i}") }).collect();
            emit!(scores, "d_part[({h}u * CH + kp) * DL + t] = {};", tree_sum(&terms));
        }
        scores.line("if h0 % p.n_rep == 0u {");
        scores.line("let slot = new_key_slot(row, g);");
        for i in 0..slots {
            if q8_words {
                for (c, comp) in ["x", "y", "z", "w"].iter().enumerate() {
                    emit!(scores, "store_partial(slot + 4u * ({}) + {c}u, nk_{i}.{comp});", word(i));
                }
            } else {
                emit!(scores, "store_partial(slot + {}, nk_{i});", lane_dim(i));
            }
        }
        scores.line("}");
        scores.line("}");
    }

    // V: key group kg takes keys kg, kg + VG, ...; rounds of 16 loads.
    let vg = (THREADS / hd).max(1);
    let per_group = chunk.div_ceil(vg);
    let mut v = Emitter::new(2);
    for h in 0..nr {
        emit!(v, "var vacc_{h} = 0.0;");
    }
    for round in (0..per_group).collect::<Vec<_>>().chunks(16) {
        for &j in round {
            emit!(v, "let kv_{j} = kg + {}u;", j * vg);
            emit!(v, "let v_{j} = load_v((kv_base + c0 + min(kv_{j}, nk)) * p.kv_stride + p.v_col + g * HD + col);");
        }
        for &j in round {
            for h in 0..nr {
                // Probabilities past the visible keys are 0; keys past the chunk do not exist.
                emit!(v, "vacc_{h} += select(0.0, d_prob[{h}u * CH + min(kv_{j}, CH - 1u)] * v_{j}, kv_{j} < vlim);");
            }
        }
    }
    if append {
        // The new key's V (after the K heads), weighted once, and staged like its K.
        v.block("if is_new && kg == 0u", |v| {
            v.line("let nv = load_q(row * p.q_stride + p.q_col + (p.heads + p.heads / p.n_rep + g) * HD + col);");
            for h in 0..nr {
                emit!(v, "vacc_{h} += d_prob[{h}u * CH + kp] * nv;");
            }
            v.line("if h0 % p.n_rep == 0u { store_partial(new_key_slot(row, g) + HD + col, nv); }");
        });
    }
    for h in 0..nr {
        emit!(v, "d_vred[({h}u * VG + kg) * HD + col] = vacc_{h};");
    }

    let mut combine_round = Emitter::new(3);
    for u in 0..8 {
        emit!(combine_round, "let cc_{u} = min(c + {u}u, nc - 1u);");
        emit!(combine_round, "let pv_{u} = partial_at(base + cc_{u} * (HD + 2u) + d);");
    }
    for u in 0..8 {
        emit!(combine_round, "acc += select(0.0, c_w[cc_{u}] * pv_{u}, c + {u}u < nc);");
    }
    DecodeCode { scores: scores.finish(), v: v.finish(), combine_round: combine_round.finish() }
}
