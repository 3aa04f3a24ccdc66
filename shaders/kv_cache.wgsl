// In-place KV-cache update with the rotary embedding on the way: Q rotated in place in the fused projection, K
// rotated as it is written with V to its (sequence, position) row of the caches `[seq][max_len][width]`,
// touching nothing else (one dispatch instead of a RoPE pass and a copy). The caches hold f32 words, or f16 pairs
// packed into u32 words ({{KV_WORD}}; `store_pair` below is generated per format: `kv_cache.rs`).

struct Params {
    rows: u32,
    row_stride: u32,
    k_col: u32,
    v_col: u32,
    width: u32,
    max_len: u32,
    groups_x: u32,   // workgroups along x of the 2-D grid (flattened index)
    q_heads: u32,    // query heads before the key heads in each source row
    head_dim: u32,
    max_pos: u32,    // rows of the cos/sin tables
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> qinfo: array<u32>;
@group(0) @binding(3) var<storage, read_write> k_cache: array<{{KV_WORD}}>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<{{KV_WORD}}>;

@group(0) @binding(1) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(5) var<storage, read> cos_table: array<f32>;
@group(0) @binding(6) var<storage, read> sin_table: array<f32>;

// Cache values d and d + 1 (d even; `two`: d + 1 belongs to this write too).
{{STORE_PAIR}}

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
