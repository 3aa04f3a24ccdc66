// KV-cache writes (`crate/src/kernels/kv_cache.rs` assembles a module from the sections below, each starting with
// a `//== section: <name>` line): `common` + `plain` for f32 and f16 caches, `common` + `q8` for q8 caches.
//== section: common
// In-place KV-cache update with the rotary embedding on the way: Q rotated in place in the fused projection, K
// rotated as it is written with V to its (sequence, position) row of the caches `[seq][max_len][width]`,
// touching nothing else (one dispatch instead of a RoPE pass and a copy). The caches hold f32 words, f16 pairs
// packed into u32 words (`store_pair` in section `plain` is generated per format), or q8 blocks (section `q8`).

{{PARAMS}}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> qinfo: array<u32>;
@group(0) @binding(3) var<storage, read_write> k_cache: array<{{KV_WORD}}>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<{{KV_WORD}}>;
@group(0) @binding(5) var<storage, read> cos_table: array<f32>;
@group(0) @binding(6) var<storage, read> sin_table: array<f32>;

fn src(i: u32) -> f32 {
    if i < arrayLength(&qkv) { return qkv[i]; }
    return 0.0;
}

// (lo, hi) rotated at position pos, angle index i (a position beyond the tables rotates nothing).
fn rotated(lo: f32, hi: f32, pos: u32, i: u32) -> vec2<f32> {
    if pos >= p.max_pos {
        return vec2<f32>(lo, hi);
    }
    let half = p.head_dim / 2u;
    let c = cos_table[pos * half + i];
    let s = sin_table[pos * half + i];
    return vec2<f32>(lo * c - hi * s, hi * c + lo * s);
}

//== section: plain
// Cache values d and d + 1 (d even; `two`: d + 1 belongs to this write too).
{{STORE_PAIR}}

// Source rows are [Q heads | K heads | V] (k_col = q_heads·head_dim). Per row: one thread per two consecutive
// rotated pairs of the Q and K heads ("rotate_half" layout: pair i is elements i and i + head_dim/2), one per two
// V elements, so a thread writes whole f16 pairs.
@compute @workgroup_size(256)
fn rope_kv_write(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let idx = (wid.y * p.groups_x + wid.x) * 256u + lid;
    let half = p.head_dim / 2u;
    let quads = (half + 1u) / 2u;
    let heads = p.q_heads + p.width / p.head_dim;
    let rot = heads * quads;
    let per_row = rot + p.width / 2u;
    let m = idx / per_row;
    let e = idx % per_row;
    if m >= p.rows || 2u * m + 1u >= arrayLength(&qinfo) {
        return;
    }
    let seq = qinfo[2u * m];
    let pos = qinfo[2u * m + 1u];
    let cached = pos < p.max_len && seq < arrayLength(&k_cache) * VALUES_PER_WORD / (p.max_len * p.width);
    let dst_row = (seq * p.max_len + pos) * p.width;
    let src_row = m * p.row_stride;
    if e >= rot {
        let i = 2u * (e - rot);
        if cached {
            store_pair_v(dst_row + i, src(src_row + p.v_col + i), src(src_row + p.v_col + i + 1u), true);
        }
        return;
    }
    let head = e / quads;
    let i = 2u * (e % quads);
    let two = i + 1u < half;
    let b = src_row + head * p.head_dim + i;
    let r0 = rotated(src(b), src(b + half), pos, i);
    let r1 = rotated(src(b + 1u), src(b + half + 1u), pos, min(i + 1u, half - 1u));
    if head < p.q_heads {
        if b + half < arrayLength(&qkv) {
            qkv[b] = r0.x;
            qkv[b + half] = r0.y;
        }
        if two && b + half + 1u < arrayLength(&qkv) {
            qkv[b + 1u] = r1.x;
            qkv[b + half + 1u] = r1.y;
        }
    } else if cached {
        let d = dst_row + (head - p.q_heads) * p.head_dim + i;
        store_pair_k(d, r0.x, r1.x, two);
        store_pair_k(d + half, r0.y, r1.y, two);
    }
}

// f32 → packed f16 pairs, for caches written by other kernels (the cross-attention K/V): word i of `packed` holds
// values 2i and 2i + 1 of `values` (a missing last value is 0).
@group(0) @binding(1) var<storage, read> values: array<f32>;
@group(0) @binding(2) var<storage, read_write> packed: array<u32>;

@compute @workgroup_size(256)
fn pack_f16(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let i = (wid.y * p.groups_x + wid.x) * 256u + lid;
    let n = p.rows;
    if i >= arrayLength(&packed) || 2u * i >= n {
        return;
    }
    let a = values[min(2u * i, arrayLength(&values) - 1u)];
    let b = select(0.0, values[min(2u * i + 1u, arrayLength(&values) - 1u)], 2u * i + 1u < n);
    packed[i] = pack2x16float(vec2<f32>(a, b));
}

//== section: q8
// q8 KV caches (`kv_cache::KvFormat::Q8`): each head's head_dim values at one position form a block of
// head_dim / 4 words of signed bytes (value j in byte j % 4 of word j / 4) and one f32 scale word,
// value = q · scale, scale = max |v| / 127, q = round(v / scale) clamped to [-127, 127]. A block needs its maximum
// before any byte is written, so one workgroup writes one block: `rope_kv_write_q8` (what `rope_kv_write` does for
// f32 / f16 caches) and `pack_q8` (f32 values into blocks, the cross-attention K/V).

const WG: u32 = 64u;
const MAX_HD: u32 = {{MAX_HD}}u;


// One block's values, and the lanes' partial maxima of |v|.
var<workgroup> vals: array<f32, MAX_HD>;
var<workgroup> red: array<f32, WG>;

// The block's scale, once every lane has put its values into `vals` and its max |v| into `red[lid]`.
fn block_scale(lid: u32) -> f32 {
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    return red[0] / 127.0;
}

fn staged(j: u32) -> f32 {
    return vals[j];
}

// `block_word(0u, w, scale)`: word w of the block, values 4w .. 4w + 3 as signed bytes (`KvFormat::wgsl_q8_word`).
{{BLOCK_WORD}}

// Source rows are [Q heads | K heads | V heads] (k_col = q_heads·head_dim). A workgroup per (row m, head): a Q head is
// rotated in place ("rotate_half" pairs i, i + head_dim/2); a K head rotated and a V head as it is go to the caches'
// block of (seq, pos) = (qinfo[2m], qinfo[2m+1]), when pos < max_len and the block lies within the cache.
@compute @workgroup_size(64)
fn rope_kv_write_q8(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let b = wid.y * p.groups_x + wid.x;
    let kv_heads = p.width / p.head_dim;
    let per_row = p.q_heads + 2u * kv_heads;
    let m = b / per_row;
    let h = b % per_row;
    if m >= p.rows || 2u * m + 1u >= arrayLength(&qinfo) || p.head_dim > MAX_HD {
        return;
    }
    let seq = qinfo[2u * m];
    let pos = qinfo[2u * m + 1u];
    let half = p.head_dim / 2u;
    let src_row = m * p.row_stride;
    if h < p.q_heads {
        for (var i = lid; i < half; i += WG) {
            let at = src_row + h * p.head_dim + i;
            let r = rotated(src(at), src(at + half), pos, i);
            if at + half < arrayLength(&qkv) {
                qkv[at] = r.x;
                qkv[at + half] = r.y;
            }
        }
        return;
    }
    let is_k = h < p.q_heads + kv_heads;
    let g = select(h - p.q_heads - kv_heads, h - p.q_heads, is_k);
    var local_max = 0.0;
    for (var j = lid; j < p.head_dim; j += WG) {
        var v: f32;
        if is_k {
            let base = src_row + p.k_col + g * p.head_dim;
            if j < half {
                v = rotated(src(base + j), src(base + j + half), pos, j).x;
            } else {
                v = rotated(src(base + j - half), src(base + j), pos, j - half).y;
            }
        } else {
            v = src(src_row + p.v_col + g * p.head_dim + j);
        }
        vals[j] = v;
        local_max = max(local_max, abs(v));
    }
    red[lid] = local_max;
    let scale = block_scale(lid);
    let words = p.head_dim / 4u;
    let base = ((seq * p.max_len + pos) * kv_heads + g) * (words + 1u);
    if pos >= p.max_len {
        return;
    }
    for (var w = lid; w <= words; w += WG) {
        var word = bitcast<u32>(scale);
        if w < words {
            word = block_word(0u, w, scale);
        }
        if is_k {
            if base + words < arrayLength(&k_cache) { k_cache[base + w] = word; }
        } else {
            if base + words < arrayLength(&v_cache) { v_cache[base + w] = word; }
        }
    }
}

// f32 values (whole blocks of head_dim; p.rows values in all) into q8 blocks: a workgroup per block.
@group(0) @binding(1) var<storage, read> values: array<f32>;
@group(0) @binding(2) var<storage, read_write> packed: array<u32>;

@compute @workgroup_size(64)
fn pack_q8(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let b = wid.y * p.groups_x + wid.x;
    if b >= p.rows / p.head_dim || p.head_dim > MAX_HD {
        return;
    }
    var local_max = 0.0;
    for (var j = lid; j < p.head_dim; j += WG) {
        let i = b * p.head_dim + j;
        var v = 0.0;
        if i < arrayLength(&values) { v = values[i]; }
        vals[j] = v;
        local_max = max(local_max, abs(v));
    }
    red[lid] = local_max;
    let scale = block_scale(lid);
    let words = p.head_dim / 4u;
    let base = b * (words + 1u);
    for (var w = lid; w <= words; w += WG) {
        if base + words < arrayLength(&packed) {
            var word = bitcast<u32>(scale);
            if w < words {
                word = block_word(0u, w, scale);
            }
            packed[base + w] = word;
        }
    }
}
