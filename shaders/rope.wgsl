// Rotary embedding in place, half-split ("rotate_half") layout, angles from precomputed cos/sin tables
// [max_pos, head_dim / 2]. One thread per rotated pair (i, i + d/2) of one head of one row.

{{PARAMS}}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> cos_table: array<f32>;
@group(0) @binding(3) var<storage, read> sin_table: array<f32>;
// (sequence, position) per row.
@group(0) @binding(4) var<storage, read> qinfo: array<u32>;

@compute @workgroup_size(256)
fn rope(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let idx = (wid.x + wid.y * nwg.x) * 256u + lid;
    if idx >= p.pairs {
        return;
    }
    let half_dim = p.head_dim / 2u;
    let i = idx % half_dim;
    let head = (idx / half_dim) % p.heads;
    let row = idx / (half_dim * p.heads);
    let pos = qinfo[2u * row + 1u];
    // A position beyond the tables has no angle: leave the row as it is.
    if pos >= p.max_pos {
        return;
    }
    let c = cos_table[pos * half_dim + i];
    let s = sin_table[pos * half_dim + i];
    let b = row * p.row_stride + p.col_offset + head * p.head_dim + i;
    let lo = x[b];
    let hi = x[b + half_dim];
    x[b] = lo * c - hi * s;
    x[b + half_dim] = hi * c + lo * s;
}
