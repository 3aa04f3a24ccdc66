// In-place KV-cache update: copies the K and V slices of each new source row to its (sequence, position) row of
// the caches `[seq][max_len][width]`, touching nothing else.

struct Params {
    rows: u32,
    row_stride: u32,
    k_col: u32,
    v_col: u32,
    width: u32,
    max_len: u32,
    groups_x: u32,   // workgroups along x of the 2-D grid (flattened index)
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> qinfo: array<u32>;
@group(0) @binding(3) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<f32>;

@compute @workgroup_size(256)
fn kv_write(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let idx = (wid.y * p.groups_x + wid.x) * 256u + lid;
    let m = idx / p.width;
    let i = idx % p.width;
    if m >= p.rows || 2u * m + 1u >= arrayLength(&qinfo) {
        return;
    }
    let seq = qinfo[2u * m];
    let pos = qinfo[2u * m + 1u];
    // A position past max_len would land in the next sequence's rows, a sequence past the cache could wrap the
    // index around: skip both.
    if pos >= p.max_len || seq >= arrayLength(&k_cache) / (p.max_len * p.width) {
        return;
    }
    let dst = (seq * p.max_len + pos) * p.width + i;
    let s = m * p.row_stride + i;
    if dst < arrayLength(&k_cache) && s + p.k_col < arrayLength(&src) {
        k_cache[dst] = src[s + p.k_col];
    }
    if dst < arrayLength(&v_cache) && s + p.v_col < arrayLength(&src) {
        v_cache[dst] = src[s + p.v_col];
    }
}
