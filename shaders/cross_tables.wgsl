// Cross-attention of a decoder step through per-text tables (issue 17): the query projection folded into the keys
// (table A) and the output projection folded into the values (table B), both made once per request.
//
// Table columns: every segment's keys × heads, column col0 + s·heads + h for key s and query head h of the
// segment, each segment's run padded to a multiple of 8 columns (zeros) so that 16-byte loads stay in it.
//   A [cols, hidden]: A[col, k] = Σ_d K[token, g·hd + d] · W_q[h·hd + d, k]
//   B [hidden, cols]: B[n, col] = Σ_d W_o[n, h·hd + d] · V[token, g·hd + d]
// (g = h / n_rep the key/value head). A step is then scores = A · rmsnorm(x) (`cross_scores`) and
// x += B · softmax(scores) (`cross_out`, the softmax per head folded into its loads).
//
// Sections (`//== section: <name>`): `build` (the table builders), `scores` and `out` (the step's two kernels, each
// with `team_dots`).

//== section: build
// The tables as a small matrix product per head: a workgroup stages the keys (or values) of a block of entries in
// workgroup memory and streams its head's weights once for the whole block. (A thread per table value re-read
// W_q / W_o from L2 for every key: ≈17 ms per request on an H100.)
// An entry is (token, its first column, the end of its segment's columns, 0): one per key of each segment (first
// column col0 + s·heads), plus padding entries (token NO_KEY, zeros) over the columns a segment's run is padded
// with. Entry e's column for head h is first + h, written where it is below the end.

{{PARAMS}}

@group(0) @binding(0) var<uniform> p: Params;
// The layer's cross K/V, `[tokens, kv_stride]` values ([K heads | V heads]) in the cache format.
@group(0) @binding(1) var<storage, read> kv: array<{{KV_WORD}}>;
// W_q `[heads·hd, hidden]` (query table) or W_o `[hidden, heads·hd]` (output table), p.w_stride words a row.
@group(0) @binding(2) var<storage, read> w: array<{{TABLE_WORD}}>;
@group(0) @binding(3) var<storage, read> entries: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> table: array<{{TABLE_WORD}}>;

const NO_KEY: u32 = 0xffffffffu;
const HD: u32 = {{HEAD_DIM}}u;
const WG: u32 = 256u;
// Entries per workgroup of the query table; the output table's workgroups take half as many for two heads.
const QUERY_ENTRIES: u32 = 16u;
const OUTPUT_ENTRIES: u32 = 8u;

{{LOAD_KV}}
{{TABLE_ACCESS}}

// 16 values per d, 4 entries a vec4: query table [d][entries 4q..4q+3]; output table [d][head t of the pair][entries
// 4q..4q+3].
var<workgroup> staged: array<vec4<f32>, 4u * HD>;

// Value d of entry e's kv columns from `base`: zero for a padding entry or past the last entry.
fn entry_value(e: u32, base: u32, d: u32) -> f32 {
    if e >= p.entries {
        return 0.0;
    }
    let token = entries[e].x;
    if token == NO_KEY {
        return 0.0;
    }
    return load_kv(token * p.kv_stride + base + d);
}

// A[first + h, k] and A[first + h, k + 1] for head h = wid.z, entries from 16·wid.y, k = 512·wid.x + 2·lid.
@compute @workgroup_size(256)
fn build_query_table(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h = wid.z;
    let e0 = wid.y * QUERY_ENTRIES;
    let base = (h / p.n_rep) * HD;
    for (var i = lid; i < QUERY_ENTRIES * HD; i += WG) {
        let j = i / HD;
        let d = i % HD;
        staged[d * 4u + j / 4u][j % 4u] = entry_value(e0 + j, base, d);
    }
    workgroupBarrier();
    let k = wid.x * 2u * WG + 2u * lid;
    if k >= p.hidden {
        return;
    }
    // lo*: column k, hi*: column k + 1; entries 0–3, 4–7, 8–11, 12–15.
    var lo0 = vec4<f32>(0.0);
    var lo1 = vec4<f32>(0.0);
    var lo2 = vec4<f32>(0.0);
    var lo3 = vec4<f32>(0.0);
    var hi0 = vec4<f32>(0.0);
    var hi1 = vec4<f32>(0.0);
    var hi2 = vec4<f32>(0.0);
    var hi3 = vec4<f32>(0.0);
    for (var d = 0u; d < HD; d++) {
        let wv = load_w2(h * HD + d, k);
        let s = d * 4u;
        lo0 += staged[s] * wv.x;
        lo1 += staged[s + 1u] * wv.x;
        lo2 += staged[s + 2u] * wv.x;
        lo3 += staged[s + 3u] * wv.x;
        hi0 += staged[s] * wv.y;
        hi1 += staged[s + 1u] * wv.y;
        hi2 += staged[s + 2u] * wv.y;
        hi3 += staged[s + 3u] * wv.y;
    }
    let lo = array<vec4<f32>, 4>(lo0, lo1, lo2, lo3);
    let hi = array<vec4<f32>, 4>(hi0, hi1, hi2, hi3);
    for (var j = 0u; j < QUERY_ENTRIES; j++) {
        if e0 + j >= p.entries {
            break;
        }
        let info = entries[e0 + j];
        let col = info.y + h;
        if col < info.z {
            store_pair(col * p.hidden + k, vec2<f32>(lo[j / 4u][j % 4u], hi[j / 4u][j % 4u]));
        }
    }
}

// B[n, first + h0] and B[n, first + h0 + 1] for the head pair h0 = 2·wid.z, h0 + 1 (the pair shares a table word
// where the table is f16), entries from 8·wid.y, n = 256·wid.x + lid.
@compute @workgroup_size(256)
fn build_output_table(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h0 = 2u * wid.z;
    let e0 = wid.y * OUTPUT_ENTRIES;
    for (var i = lid; i < 2u * OUTPUT_ENTRIES * HD; i += WG) {
        let t = i / (OUTPUT_ENTRIES * HD);
        let j = (i / HD) % OUTPUT_ENTRIES;
        let d = i % HD;
        let base = p.v_col + ((h0 + t) / p.n_rep) * HD;
        staged[(d * 2u + t) * 2u + j / 4u][j % 4u] = entry_value(e0 + j, base, d);
    }
    workgroupBarrier();
    let n = wid.x * WG + lid;
    if n >= p.hidden {
        return;
    }
    // a*: head h0, b*: head h0 + 1; entries 0–3, 4–7.
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var b0 = vec4<f32>(0.0);
    var b1 = vec4<f32>(0.0);
    for (var d = 0u; d < HD; d += 2u) {
        let wa = load_w2(n, h0 * HD + d);
        let wb = load_w2(n, (h0 + 1u) * HD + d);
        let s = d * 4u;
        a0 += staged[s] * wa.x + staged[s + 4u] * wa.y;
        a1 += staged[s + 1u] * wa.x + staged[s + 5u] * wa.y;
        b0 += staged[s + 2u] * wb.x + staged[s + 6u] * wb.y;
        b1 += staged[s + 3u] * wb.x + staged[s + 7u] * wb.y;
    }
    let a = array<vec4<f32>, 2>(a0, a1);
    let b = array<vec4<f32>, 2>(b0, b1);
    for (var j = 0u; j < OUTPUT_ENTRIES; j++) {
        if e0 + j >= p.entries {
            break;
        }
        let info = entries[e0 + j];
        let col = info.y + h0;
        if col < info.z {
            store_pair(n * p.cols + col, vec2<f32>(a[j / 4u][j % 4u], b[j / 4u][j % 4u]));
        }
    }
}

//== section: scores
// scores[r, j] = Σ_k A[col0 + j, k] · rmsnorm(x[r])[k] for the j < heads·keys of row r's segment. A workgroup per
// (16 table rows, query row): 8 teams of 32 lanes, 2 table rows a team, lanes over 16-byte chunks of a row. Every
// workgroup recomputes its row's 1/rms (one pass over x, which it stages times the gain).

{{PARAMS}}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> gain: array<vec4<f32>>;
// (segment, position) per query row.
@group(0) @binding(3) var<storage, read> qinfo: array<u32>;
// (token offset, keys, col0, 0) per segment.
@group(0) @binding(4) var<storage, read> segs: array<u32>;
@group(0) @binding(5) var<storage, read> table: array<vec4<{{TABLE_WORD}}>>;
@group(0) @binding(6) var<storage, read_write> scores: array<f32>;

const WG: u32 = 256u;
const HIDDEN4: u32 = {{HIDDEN4}}u;
// 16-byte chunks of a table row.
const CHUNKS: u32 = {{CHUNKS}}u;

// x[r] · gain, in vec4s: the vector the table rows are dotted with (1/rms applied to the sums).
var<workgroup> staged: array<vec4<f32>, HIDDEN4>;
// (col0, heads·keys) of the row's segment.
var<workgroup> seg: vec2<u32>;

fn staged4(q: u32) -> vec4<f32> {
    return staged[q];
}

{{TABLE_DOT}}

@compute @workgroup_size(256)
fn cross_scores(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let r = wid.y;
    if lid == 0u {
        let s = qinfo[2u * r];
        seg = vec2<u32>(segs[4u * s + 2u], segs[4u * s + 1u] * p.heads);
    }
    let info = workgroupUniformLoad(&seg);
    let j0 = wid.x * OUTS;
    if j0 >= info.y {
        return;
    }
    var ss = 0.0;
    for (var i = lid; i < HIDDEN4; i += WG) {
        let v = x[r * HIDDEN4 + i];
        ss += dot(v, v);
        staged[i] = v * gain[i];
    }
    red[lid] = ss;
    for (var st = WG / 2u; st > 0u; st >>= 1u) {
        workgroupBarrier();
        if lid < st {
            red[lid] += red[lid + st];
        }
    }
    workgroupBarrier();
    let inv = 1.0 / sqrt(red[0] / f32(p.hidden) + p.eps);
    // Every thread has read red[0] (and the staged vector is complete) before red is reused.
    workgroupBarrier();

    let team = lid / LANES;
    let lane = lid % LANES;
    let ja = j0 + team * 2u;
    let last = info.y - 1u;
    // A team's rows past the segment's end repeat its last row (never stored).
    let row0 = (info.x + min(ja, last)) * CHUNKS;
    let row1 = (info.x + min(ja + 1u, last)) * CHUNKS;
    let slot = team_dots(team, lane, row0, row1, CHUNKS);
    if lane == 0u {
        let out = r * p.score_stride;
        if ja < info.y {
            scores[out + ja] = red[slot] * inv;
        }
        if ja + 1u < info.y {
            scores[out + ja + 1u] = red[slot + LANES] * inv;
        }
    }
}

//== section: out
// x[r, n] += Σ_j B[n, col0 + j] · softmax_h(scores[r])[j] over the heads·keys of row r's segment (nothing for a
// segment without keys, as attention over no key gives zeros). A workgroup per (16 outputs, query row): it first
// turns the row's scores into probabilities in workgroup memory (per head: max, exponentials, sum, the threads
// split (key, head) as lanes × heads), then 8 teams of 32 lanes take 2 outputs each over 16-byte chunks of B.

{{PARAMS}}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> scores: array<f32>;
@group(0) @binding(2) var<storage, read> qinfo: array<u32>;
@group(0) @binding(3) var<storage, read> segs: array<u32>;
@group(0) @binding(4) var<storage, read> table: array<vec4<{{TABLE_WORD}}>>;
@group(0) @binding(5) var<storage, read_write> x: array<f32>;

const WG: u32 = 256u;
const HEADS: u32 = {{HEADS}}u;
// Threads per head in the softmax: a power of two, HEADS · HEAD_LANES ≤ WG.
const HEAD_LANES: u32 = {{HEAD_LANES}}u;
// Values per 16-byte chunk of B (4 f32 or 8 f16).
const CHUNK_VALUES: u32 = {{CHUNK_VALUES}}u;
// Most heads·keys of one segment (2048).
const MAX_SCORES4: u32 = 512u;

// The row's probabilities, zero from heads·keys to the next whole chunk.
var<workgroup> staged: array<vec4<f32>, MAX_SCORES4>;
var<workgroup> red_sum: array<f32, 256>;
var<workgroup> seg: vec2<u32>;

fn staged4(q: u32) -> vec4<f32> {
    return staged[q];
}

{{TABLE_DOT}}

@compute @workgroup_size(256)
fn cross_out(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let r = wid.y;
    if lid == 0u {
        let s = qinfo[2u * r];
        seg = vec2<u32>(segs[4u * s + 2u], segs[4u * s + 1u]);
    }
    let info = workgroupUniformLoad(&seg);
    let keys = info.y;
    let n_scores = keys * HEADS;
    if n_scores == 0u {
        return;
    }
    let row_scores = r * p.score_stride;
    let h = lid % HEADS;
    let hl = lid / HEADS;
    let in_softmax = hl < HEAD_LANES;

    // Per-head maximum in red (scores are finite: a finite start keeps idle threads harmless), then per-head sum of
    // the exponentials in red_sum; head h's results end at index h.
    var mx = -3.0e38;
    if in_softmax {
        for (var s = hl; s < keys; s += HEAD_LANES) {
            mx = max(mx, scores[row_scores + s * HEADS + h]);
        }
    }
    red[lid] = mx;
    for (var st = HEAD_LANES / 2u; st > 0u; st >>= 1u) {
        workgroupBarrier();
        if hl < st {
            red[lid] = max(red[lid], red[lid + st * HEADS]);
        }
    }
    workgroupBarrier();
    mx = red[h];
    var sum = 0.0;
    if in_softmax {
        for (var s = hl; s < keys; s += HEAD_LANES) {
            sum += exp(scores[row_scores + s * HEADS + h] - mx);
        }
    }
    red_sum[lid] = sum;
    for (var st = HEAD_LANES / 2u; st > 0u; st >>= 1u) {
        workgroupBarrier();
        if hl < st {
            red_sum[lid] += red_sum[lid + st * HEADS];
        }
    }
    workgroupBarrier();
    // Probabilities a whole vec4 per thread (no two threads write one vector), zeros up to the last whole chunk.
    let padded = (n_scores + CHUNK_VALUES - 1u) / CHUNK_VALUES * CHUNK_VALUES;
    for (var q = lid; q < padded / 4u; q += WG) {
        var v = vec4<f32>(0.0);
        for (var i = 0u; i < 4u; i++) {
            let j = 4u * q + i;
            if j < n_scores {
                let g = j % HEADS;
                v[i] = exp(scores[row_scores + j] - red[g]) / red_sum[g];
            }
        }
        staged[q] = v;
    }
    // The probabilities are complete, and every thread is done with red, before the products.
    workgroupBarrier();

    let team = lid / LANES;
    let lane = lid % LANES;
    let na = wid.x * OUTS + team * 2u;
    let last = p.hidden - 1u;
    let chunks = padded / CHUNK_VALUES;
    // A team's outputs past the last repeat it (never stored). p.cols and col0 are multiples of 8.
    let row0 = (min(na, last) * p.cols + info.x) / CHUNK_VALUES;
    let row1 = (min(na + 1u, last) * p.cols + info.x) / CHUNK_VALUES;
    let slot = team_dots(team, lane, row0, row1, chunks);
    if lane == 0u {
        let out = r * p.hidden;
        if na < p.hidden {
            x[out + na] += red[slot];
        }
        if na + 1u < p.hidden {
            x[out + na + 1u] += red[slot + LANES];
        }
    }
}

//== section: team_dots
// What `scores` and `out` share: a workgroup of 8 teams of LANES lanes, each team dotting two table rows with the
// staged vector (`table_dot`), the lanes over 16-byte chunks.
const LANES: u32 = 32u;
const OUTS: u32 = 16u;

var<workgroup> red: array<f32, 512>;

// Team `team`'s two sums of rows starting at chunks row0 and row1, over `chunks` chunks: returns the slot whose
// red[slot] and red[slot + LANES] hold them. Its barriers need uniform control flow at the call.
fn team_dots(team: u32, lane: u32, row0: u32, row1: u32, chunks: u32) -> u32 {
    var acc0 = 0.0;
    var acc1 = 0.0;
    for (var c = lane; c < chunks; c += LANES) {
        acc0 += table_dot(row0 + c, c);
        acc1 += table_dot(row1 + c, c);
    }
    let slot = team * 2u * LANES;
    red[slot + lane] = acc0;
    red[slot + LANES + lane] = acc1;
    for (var st = LANES / 2u; st > 0u; st >>= 1u) {
        workgroupBarrier();
        if lane < st {
            red[slot + lane] += red[slot + lane + st];
            red[slot + LANES + lane] += red[slot + LANES + lane + st];
        }
    }
    return slot;
}
