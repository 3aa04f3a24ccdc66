//! `shaders/attention.wgsl`: scaled-dot-product attention with scale 1.0 (Dia uses no 1/√d), GQA, masks,
//! never materialising the score matrix. Two schedules of the same function:
//! flash-style tiles of queries for the encoder and prefill, split-K over keys for single-query decode. The decoder
//! step's self-attention also folds in RoPE and the KV-cache update (`attention_decode_appending`): every
//! dependent dispatch costs several µs of ordering on a GPU, so a step saves one per layer.
use crate::gpu::{specialize, Dispatch, Gpu, GpuBuffer};

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
    /// Upper bound on any kv_len / pos+1 this dispatch will ever see (sizes split-K scratch).
    pub max_keys: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    heads: u32,
    n_rep: u32,
    causal: u32,
    q_stride: u32,
    q_col: u32,
    kv_stride: u32,
    k_col: u32,
    v_col: u32,
    n_chunks: u32,
    _pad: [u32; 2],
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
            _pad: [0; 2],
        }
    }
}

/// The shader specialised for one head_dim: per-thread vector lengths and the prefill key tile.
fn pipeline(gpu: &Gpu, entry: &str, head_dim: u32, decode_heads: u32, single: bool, append: bool) -> std::sync::Arc<wgpu::ComputePipeline> {
    // Prefill workgroup memory: K and V tiles (2·BK·HD words) + lane partials (BK·128) + 66 words of row info.
    let fit = PREFILL_TILE_WORDS / (2 * head_dim + WORKGROUP);
    let key_tile = [32, 16, 8, 4, 2, 1].into_iter().find(|&b| b <= fit).unwrap_or(1);
    let chunk = decode_chunk(decode_heads);
    let code = decode_code(head_dim, decode_heads, chunk, append);
    gpu.pipeline(&format!("attention.{entry}.hd{head_dim}.nr{decode_heads}.single{single}.append{append}"), entry, || {
        specialize(
            SHADER,
            &[
                ("HD", head_dim.to_string()),
                ("DP", head_dim.div_ceil(PREFILL_LANES).to_string()),
                ("BK", key_tile.to_string()),
                ("CH", chunk.to_string()),
                ("SINGLE", single.to_string()),
                ("NR", decode_heads.to_string()),
                ("DECODE_SCORES", code.scores.clone()),
                ("DECODE_V", code.v.clone()),
                ("COMBINE_ROUND", code.combine_round.clone()),
                ("COMBINE_APPEND", code.combine_append.clone()),
            ],
        )
    })
}

/// Flash-style: for many query rows at once (encoder, prefill). May return several dispatches.
pub fn attention_prefill(gpu: &Gpu, a: &AttentionArgs) -> Vec<Dispatch> {
    let params = a.params(0);
    let pipeline = pipeline(gpu, "prefill", a.head_dim, 1, false, false);
    let buffers = [a.qinfo, a.seqs, a.q_buf, a.k_buf, a.v_buf, a.out];
    vec![gpu.dispatch(&pipeline, &params, &buffers, [a.rows.div_ceil(PREFILL_QUERIES), a.heads, 1])]
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
/// chunk holds (the combine pass writes the new key), head_dim a multiple of 16 (rotary pairs share a lane), and
/// separate K and V caches (both are written).
pub fn can_append_in_decode(a: &AttentionArgs) -> bool {
    let (_, chunk) = decode_shape(a);
    a.causal && a.head_dim.is_multiple_of(16) && a.max_keys.div_ceil(chunk) > 1 && !std::sync::Arc::ptr_eq(&a.k_buf.buf, &a.v_buf.buf)
}

/// `attention_decode` for a decoder step's self-attention with RoPE and the KV-cache update folded in (what
/// `kv_cache::rope_kv_write` followed by `attention_decode` computes, in two dispatches instead of three).
///
/// `q_buf` holds each row's fused projection `[Q heads | K heads | V heads]` from `q_col`, unrotated; `k_buf` and
/// `v_buf` are the caches. Query row m at position pos (qinfo) is rotated on load with the `cos`/`sin` tables
/// `[max_pos, head_dim / 2]` (rotate_half; a position past the tables is not rotated), attends over the cached keys
/// before pos plus its own rotated K and V, and the combine writes that K and V into the caches at (seq, pos) when
/// pos < kv_len. `q_buf` itself is left unrotated. Panics unless `can_append_in_decode(a)`.
pub fn attention_decode_appending(gpu: &Gpu, a: &AttentionArgs, cos: &GpuBuffer, sin: &GpuBuffer) -> Vec<Dispatch> {
    assert!(can_append_in_decode(a), "attention_decode_appending: needs causal attention over several chunks, head_dim % 16 == 0 and separate K/V caches");
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
    assert!(n_chunks <= MAX_DECODE_CHUNKS, "attention_decode: {} keys exceed {} chunks of {chunk}", a.max_keys, MAX_DECODE_CHUNKS);
    let params = a.params(n_chunks);
    let grid = [a.heads / nr, n_chunks, a.rows];
    if n_chunks == 1 {
        // Every key in one chunk: the partial pass normalises and writes the output itself.
        let single = pipeline(gpu, "decode_partial", a.head_dim, nr, true, false);
        return vec![gpu.dispatch(&single, &params, &[a.qinfo, a.seqs, a.q_buf, a.k_buf, a.v_buf, a.out], grid)];
    }
    let append = rope.is_some();
    let mut words = a.rows as u64 * a.heads as u64 * n_chunks as u64 * (a.head_dim as u64 + 2);
    if append {
        // The new keys' rotated K and V per (row, kv head), staged for the combine.
        words += a.rows as u64 * a.kv_heads as u64 * 2 * a.head_dim as u64;
    }
    let partials = gpu.buffer("attention.decode.partials", words * 4);
    let partial = pipeline(gpu, "decode_partial", a.head_dim, nr, false, append);
    let combine = pipeline(gpu, "decode_combine", a.head_dim, nr, false, append);
    match rope {
        None => vec![
            gpu.dispatch(&partial, &params, &[a.qinfo, a.seqs, a.q_buf, a.k_buf, a.v_buf, &partials], grid),
            gpu.dispatch(&combine, &params, &[a.qinfo, a.seqs, &partials, a.out], [a.heads, a.rows, 1]),
        ],
        Some((cos, sin)) => vec![
            gpu.dispatch(&partial, &params, &[a.qinfo, a.seqs, a.q_buf, a.k_buf, a.v_buf, &partials, cos, sin], grid),
            gpu.dispatch(&combine, &params, &[a.qinfo, a.seqs, &partials, a.out, a.k_buf, a.v_buf], [a.heads, a.rows, 1]),
        ],
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
    /// The combine's cache write of the new key (appending only).
    combine_append: String,
}

/// For head_dim `hd`, `nr` query heads per workgroup and chunks of `chunk` keys (shader constants HD, NR, CH;
/// DL = 8 lanes per key, 256 threads). With `append` (self-attention of a decoder step, HD a multiple of 16) the
/// query is rotated on load and the row's new key is scored and weighted from the fused QKV row instead of the
/// cache (its cache row is stale until the combine writes it).
fn decode_code(hd: u32, nr: u32, chunk: u32, append: bool) -> DecodeCode {
    use std::fmt::Write;
    const DL: u32 = 8;
    const THREADS: u32 = 256;
    let dims = hd.div_ceil(DL);
    // Rotary pairs (d, d + HD/2) sit in one lane: dims i and i + h8 of lane t.
    let h8 = hd / 16;
    assert!(!append || hd.is_multiple_of(16), "decode_code: appending needs head_dim a multiple of 16");
    // Lane t holds dims t + 8·i; the last i is partial when HD is not a multiple of 8.
    let lane_dim = |i: u32| if DL * (i + 1) > hd { format!("min(t + {}u, HD - 1u)", DL * i) } else { format!("t + {}u", DL * i) };
    let mut scores = String::new();
    if append {
        let _ = writeln!(scores, "    let pos = qinfo[2u * row + 1u];");
        let _ = writeln!(scores, "    let is_new = pos >= c0 && pos - c0 < CH && pos < lim;");
        let _ = writeln!(scores, "    let kp = select(0u, pos - c0, is_new);");
        let _ = writeln!(scores, "    let vlim = select(CH, kp, is_new);");
        for i in 0..h8 {
            let _ = writeln!(scores, "    let rcs_{i} = rope_cs(pos, t + {}u);", DL * i);
        }
    } else {
        let _ = writeln!(scores, "    let vlim = CH;");
    }
    // `name_{i}` rotated from `raw_{i}` (rotate_half: the first half pairs with the second).
    let rotate = |out: &mut String, name: &str, raw: &str| {
        for i in 0..h8 {
            let j = i + h8;
            let _ = writeln!(out, "    let {name}_{i} = {raw}_{i} * rcs_{i}.x - {raw}_{j} * rcs_{i}.y;");
            let _ = writeln!(out, "    let {name}_{j} = {raw}_{j} * rcs_{i}.x + {raw}_{i} * rcs_{i}.y;");
        }
    };
    for h in 0..nr {
        let _ = writeln!(scores, "    let qb_{h} = row * p.q_stride + p.q_col + (h0 + {h}u) * HD;");
        let raw = if append { "qr" } else { "q" };
        for i in 0..dims {
            let load = format!("load_q(qb_{h} + {})", lane_dim(i));
            let value = if DL * (i + 1) > hd { format!("select(0.0, {load}, t + {}u < HD)", DL * i) } else { load };
            let _ = writeln!(scores, "    let {raw}_{h}_{i} = {value};");
        }
        if append {
            rotate(&mut scores, &format!("q_{h}"), &format!("qr_{h}"));
        }
    }
    let passes = chunk / (THREADS / DL);
    for pass in 0..passes {
        let _ = writeln!(scores, "    let kr_{pass} = (kv_base + c0 + min({}u + kl, nk)) * p.kv_stride + p.k_col + g * HD;", pass * THREADS / DL);
        for i in 0..dims {
            let _ = writeln!(scores, "    let k_{pass}_{i} = load_k(kr_{pass} + {});", lane_dim(i));
        }
    }
    for pass in 0..passes {
        for h in 0..nr {
            let terms: Vec<String> = (0..dims).map(|i| format!("q_{h}_{i} * k_{pass}_{i}")).collect();
            let _ = writeln!(scores, "    d_part[({h}u * CH + {}u + kl) * DL + t] = {};", pass * THREADS / DL, super::wgsl_tree_sum(&terms));
        }
    }
    if append {
        // The new key from the QKV row (K heads follow the query heads), rotated; the lanes that scored its stale
        // cache row above overwrite that score, and stage it for the combine to write into the cache.
        let _ = writeln!(scores, "    if is_new && kl == kp % {}u {{", THREADS / DL);
        let _ = writeln!(scores, "    let nb = row * p.q_stride + p.q_col + (p.heads + g) * HD;");
        for i in 0..dims {
            let _ = writeln!(scores, "    let nr_{i} = load_q(nb + {});", lane_dim(i));
        }
        rotate(&mut scores, "nk", "nr");
        for h in 0..nr {
            let terms: Vec<String> = (0..dims).map(|i| format!("q_{h}_{i} * nk_{i}")).collect();
            let _ = writeln!(scores, "    d_part[({h}u * CH + kp) * DL + t] = {};", super::wgsl_tree_sum(&terms));
        }
        let _ = writeln!(scores, "    if h0 % p.n_rep == 0u {{");
        let _ = writeln!(scores, "    let slot = new_key_slot(row, g);");
        for i in 0..dims {
            let _ = writeln!(scores, "    store_partial(slot + {}, nk_{i});", lane_dim(i));
        }
        let _ = writeln!(scores, "    }}");
        let _ = writeln!(scores, "    }}");
    }

    // V: key group kg takes keys kg, kg + VG, ...; rounds of 16 loads.
    let vg = (THREADS / hd).max(1);
    let per_group = chunk.div_ceil(vg);
    let mut v = String::new();
    for h in 0..nr {
        let _ = writeln!(v, "        var vacc_{h} = 0.0;");
    }
    for round in (0..per_group).collect::<Vec<_>>().chunks(16) {
        for &j in round {
            let _ = writeln!(v, "        let kv_{j} = kg + {}u;", j * vg);
            let _ = writeln!(v, "        let v_{j} = load_v((kv_base + c0 + min(kv_{j}, nk)) * p.kv_stride + p.v_col + g * HD + col);");
        }
        for &j in round {
            for h in 0..nr {
                // Probabilities past the visible keys are 0; keys past the chunk do not exist.
                let _ = writeln!(v, "        vacc_{h} += select(0.0, d_prob[{h}u * CH + min(kv_{j}, CH - 1u)] * v_{j}, kv_{j} < vlim);");
            }
        }
    }
    if append {
        // The new key's V (after the K heads), weighted once, and staged like its K.
        let _ = writeln!(v, "        if is_new && kg == 0u {{");
        let _ = writeln!(v, "            let nv = load_q(row * p.q_stride + p.q_col + (p.heads + p.heads / p.n_rep + g) * HD + col);");
        for h in 0..nr {
            let _ = writeln!(v, "            vacc_{h} += d_prob[{h}u * CH + kp] * nv;");
        }
        let _ = writeln!(v, "            if h0 % p.n_rep == 0u {{ store_partial(new_key_slot(row, g) + HD + col, nv); }}");
        let _ = writeln!(v, "        }}");
    }
    for h in 0..nr {
        let _ = writeln!(v, "        d_vred[({h}u * VG + kg) * HD + col] = vacc_{h};");
    }

    let mut combine_round = String::new();
    for u in 0..8 {
        let _ = writeln!(combine_round, "            let cc_{u} = min(c + {u}u, nc - 1u);");
        let _ = writeln!(combine_round, "            let pv_{u} = partial_at(base + cc_{u} * (HD + 2u) + d);");
    }
    for u in 0..8 {
        let _ = writeln!(combine_round, "            acc += select(0.0, c_w[cc_{u}] * pv_{u}, c + {u}u < nc);");
    }
    let combine_append = if append { "    append_new_key(lid, h, row);".to_string() } else { String::new() };
    DecodeCode { scores, v, combine_round, combine_append }
}
