// In-place KV-cache update with the rotary embedding on the way: Q rotated in place in the fused projection, K
// rotated as it is written with V to its (sequence, position) row of the caches `[seq][max_len][width]`,
// touching nothing else (one dispatch instead of a RoPE pass and a copy).

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
@group(0) @binding(3) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<f32>;

@group(0) @binding(1) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(5) var<storage, read> cos_table: array<f32>;
@group(0) @binding(6) var<storage, read> sin_table: array<f32>;

// Source rows are [Q heads | K heads | V] (k_col = q_heads·head_dim). Per row: one thread per rotated pair of
// the Q and K heads ("rotate_half" layout, angles from the tables at the row's position; a position beyond
// them rotates nothing), one per V element.
@compute @workgroup_size(256)
fn rope_kv_write(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let idx = (wid.y * p.groups_x + wid.x) * 256u + lid;
    let half = p.head_dim / 2u;
    let rot = (p.q_heads * p.head_dim + p.width) / 2u;
    let per_row = rot + p.width;
    let m = idx / per_row;
    let e = idx % per_row;
    if m >= p.rows || 2u * m + 1u >= arrayLength(&qinfo) {
        return;
    }
    let seq = qinfo[2u * m];
    let pos = qinfo[2u * m + 1u];
    let cached = pos < p.max_len && seq < arrayLength(&k_cache) / (p.max_len * p.width);
    let dst_row = (seq * p.max_len + pos) * p.width;
    let src_row = m * p.row_stride;
    if e >= rot {
        let i = e - rot;
        if cached && dst_row + i < arrayLength(&v_cache) && src_row + p.v_col + i < arrayLength(&qkv) {
            v_cache[dst_row + i] = qkv[src_row + p.v_col + i];
        }
        return;
    }
    let head = e / half;
    let i = e % half;
    let b = src_row + head * p.head_dim + i;
    if b + half >= arrayLength(&qkv) {
        return;
    }
    var lo = qkv[b];
    var hi = qkv[b + half];
    if pos < p.max_pos {
        let c = cos_table[pos * half + i];
        let s = sin_table[pos * half + i];
        let r_lo = lo * c - hi * s;
        hi = hi * c + lo * s;
        lo = r_lo;
    }
    if head < p.q_heads {
        qkv[b] = lo;
        qkv[b + half] = hi;
    } else if cached {
        let d = dst_row + (head - p.q_heads) * p.head_dim + i;
        if d + half < arrayLength(&k_cache) {
            k_cache[d] = lo;
            k_cache[d + half] = hi;
        }
    }
}
