// Attention with scale 1.0 (Dia uses no 1/sqrt(d)), GQA and per-query masks. The decode pair and the flash-style
// prefill never materialise scores; the three-pass prefill does, in a scratch buffer.
// Specialised on {{HD}} (head_dim) and derived tile sizes, so the per-thread vectors below live in registers.
//
// Entry points:
//   prefill_scores, prefill_softmax, prefill_pv: the encoder and prefill, scores materialised in a scratch buffer
//                    (tiled matrix products; attention.rs picks them when the scratch fits).
//   prefill:         flash-style fallback, a workgroup = BQ queries of one head, key tiles staged in workgroup memory.
//   decode_partial:  split-K, a workgroup = (query heads sharing a kv head, key chunk, row): chunk max, sum and
//                    weighted V to scratch.
//   decode_combine:  a workgroup = (head, row): merges the chunks that hold visible keys.
// The appending specialisation of the decode pair (a decoder step's self-attention) rotates the query on load,
// takes the row's new key from the fused QKV row, and the combine writes that key into the caches.
//
// Logits can be large (no 1/sqrt(d)): all softmax arithmetic is max-subtracted in f32. A query that sees no key
// writes zeros. Every buffer access is bounds-checked (ragged shapes, fused or shared buffers).

{{PARAMS}}

const HD: u32 = {{HD}}u;
const NONE: u32 = 0xffffffffu;
// Finite "minus infinity": exp(NEG - x) is 0 and exp(NEG - NEG) is 1, never NaN.
const NEG: f32 = -3.0e38;

// Bindings shared by all entry points; the last ones differ per entry point (a binding number may be reused by
// variables that no single entry point uses together).
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qinfo: array<u32>;
@group(0) @binding(2) var<storage, read> seqs: array<u32>;
@group(0) @binding(3) var<storage, read> qbuf: array<f32>;
// K and V: f32 words, f16 pairs packed in u32 words, or q8 blocks of u32 words ({{KV_WORD}}; `load_k`, `load_v`,
// `pv_load_v` and the appending combine's `store_new_key_k` / `store_new_key_v` are generated per format:
// `kv_cache::KvFormat`).
@group(0) @binding(4) var<storage, read> kbuf: array<{{KV_WORD}}>;
@group(0) @binding(5) var<storage, read> vbuf: array<{{KV_WORD}}>;

// Visible key count of query row `row` (0 if the row or its sequence is out of range).
fn visible_keys(row: u32) -> u32 {
    if row >= p.rows || 2u * row + 1u >= arrayLength(&qinfo) {
        return 0u;
    }
    let seq = qinfo[2u * row];
    if seq >= arrayLength(&seqs) / 2u {
        return 0u;
    }
    let kv_len = seqs[2u * seq + 1u];
    let pos = qinfo[2u * row + 1u];
    // j <= pos  <=>  j < pos + 1, written without overflowing pos + 1
    if p.causal != 0u && pos < kv_len {
        return pos + 1u;
    }
    return kv_len;
}

// Sequence of query row `row`, or NONE if it has no valid one.
fn row_seq(row: u32) -> u32 {
    if row >= p.rows || 2u * row + 1u >= arrayLength(&qinfo) {
        return NONE;
    }
    let seq = qinfo[2u * row];
    if seq >= arrayLength(&seqs) / 2u {
        return NONE;
    }
    return seq;
}

fn load_q(i: u32) -> f32 {
    if i < arrayLength(&qbuf) { return qbuf[i]; }
    return 0.0;
}
{{KV_LOADS}}
// ---------------------------------------------------------------------------------------------------------------
// Tiled prefill, three passes per chunk of rows. WebGPU's 16 KiB of workgroup memory leaves flash tiles for
// head_dim 128 too small to reuse loads; plain tiled products over a materialised score matrix fit easily.
//   prefill_scores:  S[h][row][j] = q·k for j below the row's visible keys; 64 rows × 64 keys × head per
//                    workgroup, head_dim staged KD at a time, each thread a 4 × 4 block.
//   prefill_softmax: per (head, row): max and 1 / sum of exp(S − max) over the visible keys.
//   prefill_pv:      out = exp(S − max) · V / sum; 64 rows × DN columns × head per workgroup, keys staged KD at
//                    a time, each thread 4 rows × 4·NV columns. The exp happens as the P tile is loaded.
// Scratch (array of vec4): scores [heads][chunk_cap][key_stride], then vec4(max, 1 / sum, 0, 0) per (head, row).
// The rows of a tile may belong to several sequences (packed segments): the tile passes over the sequences present
// one at a time, in increasing order, each with its own keys, and only rows of that sequence take the result.
// Straight-line generated code (attention.rs, `tiled_code`) keeps every load of a stage in flight at once.

const TR: u32 = 64u;     // rows per tile (and keys per score tile)
const KD: u32 = 16u;     // K dimension per stage
const DN: u32 = {{DN}}u; // output columns per PV tile: 64, or 128 when head_dim > 64

@group(0) @binding(5) var<storage, read_write> sc_out: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> sm_scratch: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> pv_scratch: array<f32>;
@group(0) @binding(4) var<storage, read> pv_v: array<{{KV_WORD}}>;
@group(0) @binding(5) var<storage, read_write> pv_out: array<f32>;

var<workgroup> ta: array<vec4<f32>, 256>;  // [kk][row / 4]: queries (scores) or probabilities (PV)
var<workgroup> tb: array<vec4<f32>, 512>;  // [kk][key / 4] (scores) or [kk][column / 4] (PV)
var<workgroup> t_seq: array<u32, TR>;      // sequence of each tile row (NONE: none)
var<workgroup> t_lim: array<u32, TR>;      // its visible keys
var<workgroup> t_mx: array<f32, TR>;       // PV: its score max and 1 / sum
var<workgroup> t_inv: array<f32, TR>;
var<workgroup> t_cur_seq: u32;
var<workgroup> t_cur_lim: u32;
var<workgroup> sm_red: array<f32, 256>;

// Sequence and visible keys of each row of the tile at chunk row ml0.
fn tile_rows(lid: u32, ml0: u32) {
    if lid < TR {
        let ml = ml0 + lid;
        var s = NONE;
        var lim = 0u;
        if ml < p.chunk_rows {
            s = row_seq(p.row0 + ml);
            lim = min(visible_keys(p.row0 + ml), p.max_keys);
        }
        t_seq[lid] = s;
        t_lim[lid] = lim;
    }
}

// One thread: the smallest sequence ≥ next among the tile rows (NONE when none) and the most keys its rows see.
fn pick_seq(next: u32) {
    var best = NONE;
    for (var i = 0u; i < TR; i++) {
        let s = t_seq[i];
        if s != NONE && s >= next && s < best {
            best = s;
        }
    }
    var lim = 0u;
    for (var i = 0u; i < TR; i++) {
        if best != NONE && t_seq[i] == best {
            lim = max(lim, t_lim[i]);
        }
    }
    t_cur_seq = best;
    t_cur_lim = lim;
}

fn sm_at(i: u32) -> vec4<f32> {
    if i < arrayLength(&sm_scratch) { return sm_scratch[i]; }
    return vec4<f32>(0.0);
}
fn pv_s(i: u32) -> f32 {
    if i < arrayLength(&pv_scratch) { return pv_scratch[i]; }
    return 0.0;
}
{{PV_LOAD}}
@compute @workgroup_size(256)
fn prefill_scores(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let j0 = wid.x * TR;
    let ml0 = wid.y * TR;
    let h = wid.z;
    let g = h / p.n_rep;
    tile_rows(lid, ml0);
    // Loads: dimension lk of rows (keys) 4·lg .. 4·lg + 3. Arithmetic: rows 4·tm .., keys 4·tn ...
    let lk = lid % KD;
    let lg = lid / KD;
    let tm = lid / 16u;
    let tn = lid % 16u;
    let q0 = (p.row0 + ml0 + 4u * lg) * p.q_stride + p.q_col + h * HD + lk;
    let s_row = p.key_stride / 4u;
    var next = 0u;
    loop {
        workgroupBarrier();
        if lid == 0u {
            pick_seq(next);
        }
        let s = workgroupUniformLoad(&t_cur_seq);
        if s == NONE {
            break;
        }
        let lim = workgroupUniformLoad(&t_cur_lim);
        next = s + 1u;
        if j0 >= lim {
            continue;
        }
        // Keys past the sequence's visible ones are read clamped; their scores are never written.
        let kv_base = seqs[2u * s];
        let k0r = p.k_col + g * HD + lk;
{{SCORES}}
    }
}

@compute @workgroup_size(256)
fn prefill_softmax(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    // 4 rows per workgroup, 64 threads per row.
    let lr = lid / 64u;
    let lane = lid % 64u;
    let ml = wid.x * 4u + lr;
    let h = wid.y;
    var lim = 0u;
    if ml < p.chunk_rows {
        lim = min(visible_keys(p.row0 + ml), p.max_keys);
    }
    let base = (h * p.chunk_cap + ml) * (p.key_stride / 4u);
    let n4 = (lim + 3u) / 4u;
    var mx = NEG;
    for (var i = lane; i < n4; i += 64u) {
        let x = sm_at(base + i);
        let j = 4u * i;
        let a = max(select(NEG, x.x, j < lim), select(NEG, x.y, j + 1u < lim));
        let b = max(select(NEG, x.z, j + 2u < lim), select(NEG, x.w, j + 3u < lim));
        mx = max(mx, max(a, b));
    }
    sm_red[lid] = mx;
    for (var w = 32u; w > 0u; w >>= 1u) {
        workgroupBarrier();
        if lane < w {
            sm_red[lid] = max(sm_red[lid], sm_red[lid + w]);
        }
    }
    workgroupBarrier();
    mx = sm_red[lr * 64u];
    var sum = 0.0;
    for (var i = lane; i < n4; i += 64u) {
        let x = sm_at(base + i);
        let j = 4u * i;
        let a = select(0.0, exp(x.x - mx), j < lim) + select(0.0, exp(x.y - mx), j + 1u < lim);
        let b = select(0.0, exp(x.z - mx), j + 2u < lim) + select(0.0, exp(x.w - mx), j + 3u < lim);
        sum += a + b;
    }
    workgroupBarrier();
    sm_red[lid] = sum;
    for (var w = 32u; w > 0u; w >>= 1u) {
        workgroupBarrier();
        if lane < w {
            sm_red[lid] += sm_red[lid + w];
        }
    }
    workgroupBarrier();
    let total = sm_red[lr * 64u];
    let st = p.heads * p.chunk_cap * (p.key_stride / 4u) + h * p.chunk_cap + ml;
    if lane == 0u && ml < p.chunk_rows && st < arrayLength(&sm_scratch) {
        // A row without visible keys gets 1 / sum = 0: its output is zeros.
        sm_scratch[st] = vec4<f32>(mx, select(0.0, 1.0 / total, total > 0.0), 0.0, 0.0);
    }
}

@compute @workgroup_size(256)
fn prefill_pv(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let d0 = wid.x * DN;
    let ml0 = wid.y * TR;
    let h = wid.z;
    let g = h / p.n_rep;
    tile_rows(lid, ml0);
    if lid < TR {
        let st = 4u * (p.heads * p.chunk_cap * (p.key_stride / 4u) + h * p.chunk_cap + ml0 + lid);
        t_mx[lid] = pv_s(st);
        t_inv[lid] = pv_s(st + 1u);
    }
    // P loads: key lk of rows 4·lg ..; V loads: columns 4·vc .. of key vk (+ 256 / (DN / 4) per pass).
    // Arithmetic: rows 4·tm .., column vec4s tn, tn + 16, ...
    let lk = lid % KD;
    let lg = lid / KD;
    let vc = lid % (DN / 4u);
    let vk = lid / (DN / 4u);
    let tm = lid / 16u;
    let tn = lid % 16u;
    let v0 = p.v_col + g * HD + d0 + 4u * vc;
{{PV_INIT}}
    var next = 0u;
    loop {
        workgroupBarrier();
        if lid == 0u {
            pick_seq(next);
        }
        let s = workgroupUniformLoad(&t_cur_seq);
        if s == NONE {
            break;
        }
        let lim = workgroupUniformLoad(&t_cur_lim);
        next = s + 1u;
        if lim == 0u {
            continue;
        }
        let kv_base = seqs[2u * s];
{{PV_BODY}}
    }
{{PV_STORE}}
}

// ---------------------------------------------------------------------------------------------------------------
// Flash prefill. WG = 128 threads = BQ queries x TD lanes; lane t owns dims t, t+TD, ... (DP of them), so the TD
// lanes of a query read adjacent words. Per key tile: partial dots per lane -> `part`, summed by every lane of the
// query (identical order, so the lanes agree on m and l), then the online-softmax update of the lane's dims.

const WG: u32 = 128u;
const TD: u32 = 4u;
const BQ: u32 = WG / TD;
const DP: u32 = {{DP}}u;     // ceil(HD / TD)
const BK: u32 = {{BK}}u;     // keys per tile, sized so workgroup memory stays under 16 KiB

@group(0) @binding(6) var<storage, read_write> out: array<f32>;

var<workgroup> k_tile: array<f32, BK * HD>;
var<workgroup> v_tile: array<f32, BK * HD>;
var<workgroup> part: array<f32, BK * WG>;   // part[key * WG + thread]: lane-partial dot products
var<workgroup> q_seq: array<u32, BQ>;
var<workgroup> q_lim: array<u32, BQ>;
var<workgroup> cur_seq: u32;
var<workgroup> cur_lim: u32;

@compute @workgroup_size(128)
fn prefill(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h = wid.y;
    let g = h / p.n_rep;
    let qi = lid / TD;
    let t = lid % TD;
    let row = wid.x * BQ + qi;

    if t == 0u {
        q_seq[qi] = row_seq(row);
        q_lim[qi] = visible_keys(row);
    }
    var q: array<f32, DP>;
    var o: array<f32, DP>;
    let q_base = row * p.q_stride + p.q_col + h * HD;
    for (var i = 0u; i < DP; i++) {
        let d = t + TD * i;
        var x = 0.0;
        if row < p.rows && d < HD {
            x = load_q(q_base + d);
        }
        q[i] = x;
        o[i] = 0.0;
    }
    var m = NEG;
    var l = 0.0;

    // The rows of one workgroup may belong to several sequences (key sets): take them one at a time, in
    // increasing sequence order; the common case is a single pass.
    var next_seq = 0u;
    loop {
        workgroupBarrier();
        if lid == 0u {
            var best = NONE;
            for (var i = 0u; i < BQ; i++) {
                let s = q_seq[i];
                if s != NONE && s >= next_seq && s < best {
                    best = s;
                }
            }
            var lim = 0u;
            for (var i = 0u; i < BQ; i++) {
                if best != NONE && q_seq[i] == best {
                    lim = max(lim, q_lim[i]);
                }
            }
            cur_seq = best;
            cur_lim = lim;
        }
        let s = workgroupUniformLoad(&cur_seq);
        if s == NONE {
            break;
        }
        let lim = workgroupUniformLoad(&cur_lim);
        next_seq = s + 1u;
        let my_lim = select(0u, q_lim[qi], q_seq[qi] == s);
        let kv_base = seqs[2u * s];

        for (var kb = 0u; kb < lim; kb += BK) {
            for (var e = lid; e < BK * HD; e += WG) {
                let j = kb + e / HD;
                var kx = 0.0;
                var vx = 0.0;
                if j < lim {
                    let r = (kv_base + j) * p.kv_stride + g * HD + e % HD;
                    kx = load_k(r + p.k_col);
                    vx = load_v(r + p.v_col);
                }
                k_tile[e] = kx;
                v_tile[e] = vx;
            }
            workgroupBarrier();
            for (var kk = 0u; kk < BK; kk++) {
                var acc = 0.0;
                for (var i = 0u; i < DP; i++) {
                    let d = t + TD * i;
                    if d < HD {
                        acc += q[i] * k_tile[kk * HD + d];
                    }
                }
                part[kk * WG + lid] = acc;
            }
            workgroupBarrier();
            let lane0 = qi * TD;
            var tile_max = NEG;
            for (var kk = 0u; kk < BK; kk++) {
                if kb + kk < my_lim {
                    var sc = 0.0;
                    for (var u = 0u; u < TD; u++) {
                        sc += part[kk * WG + lane0 + u];
                    }
                    tile_max = max(tile_max, sc);
                }
            }
            let m_new = max(m, tile_max);
            let corr = exp(m - m_new);
            l *= corr;
            for (var i = 0u; i < DP; i++) {
                o[i] *= corr;
            }
            for (var kk = 0u; kk < BK; kk++) {
                if kb + kk < my_lim {
                    var sc = 0.0;
                    for (var u = 0u; u < TD; u++) {
                        sc += part[kk * WG + lane0 + u];
                    }
                    let pk = exp(sc - m_new);
                    l += pk;
                    for (var i = 0u; i < DP; i++) {
                        let d = t + TD * i;
                        if d < HD {
                            o[i] += pk * v_tile[kk * HD + d];
                        }
                    }
                }
            }
            m = m_new;
            workgroupBarrier();
        }
    }

    if row < p.rows {
        let inv = select(0.0, 1.0 / l, l > 0.0);
        let o_base = (row * p.heads + h) * HD;
        for (var i = 0u; i < DP; i++) {
            let d = t + TD * i;
            if d < HD && o_base + d < arrayLength(&out) {
                out[o_base + d] = o[i] * inv;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Split-K decode. The grid covers every chunk the scratch holds (sized for the largest key count); a chunk past
// the query's visible keys returns at once and the combine ignores it, so the same dispatch serves every step.
// A workgroup takes NR query heads that share one kv head, so each K and V row is read once for all of them.
// Scratch entry (row, head, chunk) = [weighted V sum (HD), chunk max, sum of exp] with exp taken from chunk max.

const DWG: u32 = 256u;       // threads of a decode_partial workgroup
const CH: u32 = {{CH}}u;     // keys per chunk
const NR: u32 = {{NR}}u;     // query heads per workgroup; NR · CH ≤ DWG
// One chunk holds every key (the grid has one chunk per row): write the normalised output, no combine pass.
const SINGLE: bool = {{SINGLE}};
const DL: u32 = 8u;          // lanes per key in the score phase (lane t owns dims t, t + DL, ...)
const VG: u32 = DWG / HD;    // key groups in the V phase (thread = column × key group)

// The scratch, or under SINGLE the output (row stride heads · HD).
@group(0) @binding(6) var<storage, read_write> partials: array<f32>;
// Appending decode (self-attention of a step, `attention_decode_appending`): RoPE tables `[max_pos, HD / 2]`.
// Only the generated code of that specialisation refers to them (through `rope_cs`).
@group(0) @binding(7) var<storage, read> rope_cos_t: array<f32>;
@group(0) @binding(8) var<storage, read> rope_sin_t: array<f32>;

// (cos, sin) of rotary pair i at position pos; a position past the tables rotates nothing.
fn rope_cs(pos: u32, i: u32) -> vec2<f32> {
    let j = pos * (HD / 2u) + i;
    if j < arrayLength(&rope_cos_t) && j < arrayLength(&rope_sin_t) {
        return vec2<f32>(rope_cos_t[j], rope_sin_t[j]);
    }
    return vec2<f32>(1.0, 0.0);
}

fn store_partial(i: u32, x: f32) {
    if i < arrayLength(&partials) {
        partials[i] = x;
    }
}

// Appending decode: where the new key's rotated K (HD words) and its V (HD words) of (row, kv head g) are
// staged, after the chunk entries.
fn new_key_slot(row: u32, g: u32) -> u32 {
    return p.rows * p.heads * p.n_chunks * (HD + 2u) + (row * (p.heads / p.n_rep) + g) * 2u * HD;
}

var<workgroup> d_part: array<f32, NR * CH * DL>;  // lane-partial dots [head][key][lane]
var<workgroup> d_prob: array<f32, NR * CH>;       // scores, then exp(score - chunk max)
var<workgroup> d_vred: array<f32, NR * VG * HD>;  // V sums per key group

// Per-head max and sum over a chunk, and the head totals the output reads: workgroup-memory trees, or subgroup
// operations with one exchange across subgroups (generated per `Reduction`: attention.rs, `decode_reductions`).
{{DECODE_REDUCE_FNS}}

@compute @workgroup_size(256)
fn decode_partial(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>{{SG_ARGS}}) {
    let h0 = wid.x * NR;
    let c = wid.y;
    let row = wid.z;
    let lim = visible_keys(row);
    let c0 = c * CH;
    // Under SINGLE a row without visible keys still writes its (zero) output.
    if c0 >= lim && !SINGLE {
        return;
    }
    let n = select(0u, min(CH, lim - c0), lim > c0);
    let g = h0 / p.n_rep;
    let s = qinfo[2u * row];
    let kv_base = seqs[2u * s];
    let kl = lid / DL;
    let t = lid % DL;

    // Generated straight-line code (attention.rs, `decode_code`): the query words, then every key word this lane
    // scores in the chunk, all loads in flight at once (loops over arrays would wait out each load in turn).
    // Keys past the visible ones are read clamped and masked below.
    let nk = max(n, 1u) - 1u;
{{DECODE_SCORES}}
    workgroupBarrier();
    // One thread per (head, key): the score, then per-head max and sum by tree reductions over the chunk.
    let e = lid;
    let eh = e / CH;
    let ek = e % CH;
    let live = e < NR * CH;
    var sc = NEG;
    if live && ek < n {
        let b = e * DL; // DL = 8 lanes
        sc = ((d_part[b] + d_part[b + 1u]) + (d_part[b + 2u] + d_part[b + 3u])) + ((d_part[b + 4u] + d_part[b + 5u]) + (d_part[b + 6u] + d_part[b + 7u]));
    }
    let chunk_max = {{DECODE_MAX}};
    var mx = NEG;
    var pk = 0.0;
    if live {
        mx = chunk_max;
        pk = select(0.0, exp(sc - mx), ek < n);
        d_prob[e] = pk;
    }
    workgroupBarrier();
    {{DECODE_SUM}};
    // V: thread = (column, key group); every loaded V word serves the NR heads.
    let col = lid % HD;
    let kg = lid / HD;
    if kg < VG {
{{DECODE_V}}
    }
    workgroupBarrier();
    for (var o = lid; o < NR * HD; o += DWG) {
        let h = o / HD;
        let d = o % HD;
        var acc = 0.0;
        for (var j = 0u; j < VG; j++) {
            acc += d_vred[(h * VG + j) * HD + d];
        }
        if SINGLE {
            let total = head_total(h);
            let o = (row * p.heads + h0 + h) * HD + d;
            if o < arrayLength(&partials) {
                partials[o] = select(0.0, acc / total, total > 0.0);
            }
            continue;
        }
        let base = ((row * p.heads + h0 + h) * p.n_chunks + c) * (HD + 2u);
        if base + d < arrayLength(&partials) {
            partials[base + d] = acc;
        }
    }
    if live && ek == 0u && !SINGLE {
        let base = ((row * p.heads + h0 + eh) * p.n_chunks + c) * (HD + 2u);
        if base + HD + 1u < arrayLength(&partials) {
            partials[base + HD] = mx;
            partials[base + HD + 1u] = head_total(eh);
        }
    }
}

@group(0) @binding(3) var<storage, read> partials_in: array<f32>;
@group(0) @binding(4) var<storage, read_write> out_c: array<f32>;
// Appending decode: the K and V caches the new key goes into.
@group(0) @binding(5) var<storage, read_write> kcache_c: array<{{KV_WORD}}>;
@group(0) @binding(6) var<storage, read_write> vcache_c: array<{{KV_WORD}}>;
{{KV_STORES}}

// Appending decode: the first head of each kv head's group copies the new key's staged K and V into the caches
// at (seq, pos) (a q8 cache quantizes each as one block). No pass of this step reads that cache row any more (the
// partials took the new key from the QKV row), and the next step's partials run after this pass. No barriers
// here or in the stores: the early returns depend on storage loads.
// `k_scale` / `v_scale`: q8 caches' block scales (max |v| / 127, reduced by the caller); unused otherwise.
fn append_new_key(lid: u32, h: u32, row: u32, k_scale: f32, v_scale: f32) {
    if h % p.n_rep != 0u || visible_keys(row) == 0u {
        return;
    }
    let pos = qinfo[2u * row + 1u];
    let s = qinfo[2u * row];
    if pos >= seqs[2u * s + 1u] {
        return;
    }
    let g = h / p.n_rep;
    let slot = new_key_slot(row, g);
    let dst = (seqs[2u * s] + pos) * p.kv_stride + g * HD;
    store_new_key_k(lid, dst + p.k_col, slot, k_scale);
    store_new_key_v(lid, dst + p.v_col, slot + HD, v_scale);
}

fn partial_at(i: u32) -> f32 {
    if i < arrayLength(&partials_in) { return partials_in[i]; }
    return 0.0;
}

// Chunk weights exp(chunk max − max) of one (row, head); at most MAX_CHUNKS chunks (the host checks).
const MAX_CHUNKS: u32 = 256u;
var<workgroup> c_w: array<f32, MAX_CHUNKS>;

{{COMBINE_REDUCE_FNS}}

@compute @workgroup_size(128)
fn decode_combine(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>{{SG_ARGS}}) {
    let h = wid.x;
    let row = wid.y;
    let nc = min(min((visible_keys(row) + CH - 1u) / CH, p.n_chunks), MAX_CHUNKS);
    let base = (row * p.heads + h) * p.n_chunks * (HD + 2u);
    // Chunk statistics are read once, in parallel; max and sum by tree reductions.
    var mx = NEG;
    for (var c = lid; c < nc; c += WG) {
        let m = partial_at(base + c * (HD + 2u) + HD);
        c_w[c] = m;
        mx = max(mx, m);
    }
    mx = {{COMBINE_MAX}};
    var sum = 0.0;
    for (var c = lid; c < nc; c += WG) {
        let wc = exp(c_w[c] - mx);
        c_w[c] = wc;
        sum += wc * partial_at(base + c * (HD + 2u) + HD + 1u);
    }
    workgroupBarrier();
    sum = {{COMBINE_SUM}};
    let inv = select(0.0, 1.0 / sum, sum > 0.0);
    let o_base = (row * p.heads + h) * HD;
    for (var d = lid; d < HD; d += WG) {
        var acc = 0.0;
        // Eight independent loads per round (generated: `decode_code`).
        for (var c = 0u; c < nc; c += 8u) {
{{COMBINE_ROUND}}
        }
        if o_base + d < arrayLength(&out_c) {
            out_c[o_base + d] = acc * inv;
        }
    }
{{COMBINE_APPEND}}
}
