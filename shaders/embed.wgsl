// Embedding gathers from a weight table [table_rows, cols] (f32, or f16 pairs: see `load_w`).
// One thread per output value; a token outside the table gives zeros.

{{PARAMS}}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> tokens: array<u32>;
{{WEIGHTS}}
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;

fn element(lid: u32, wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid;
}

@compute @workgroup_size(256)
fn embed_tokens(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = element(lid, wid, nwg);
    if i >= p.n * p.cols {
        return;
    }
    let tok = tokens[i / p.cols];
    var v = 0.0;
    if tok < p.table_rows {
        v = load_w(tok * p.stride, i % p.cols);
    }
    dst[i] = v;
}

// out[r, :] = Σ_c table[c·vocab + tokens[(r % token_rows)·channels + c], :], summed in channel order.
@compute @workgroup_size(256)
fn embed_channels_sum(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = element(lid, wid, nwg);
    if i >= p.n * p.cols {
        return;
    }
    let col = i % p.cols;
    let tbase = ((i / p.cols) % p.token_rows) * p.channels;
    var s = 0.0;
    for (var c = 0u; c < p.channels; c++) {
        let tok = tokens[tbase + c];
        let row = c * p.vocab + tok;
        if tok < p.vocab && row < p.table_rows {
            s += load_w(row * p.stride, col);
        }
    }
    dst[i] = s;
}
