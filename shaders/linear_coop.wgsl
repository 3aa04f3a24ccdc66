// y = x · Wᵀ on tensor cores (wgpu's experimental cooperative matrices; native only, never on the web path).
// x: f32 [M, K]; W [N, K], rows `stride` words apart: f16 pairs packed in u32, or q8 / q4 blocks (crate/src/quant.rs),
// dequantized with their group's scale into the f16 staged tile; epilogues as in linear.wgsl.
//
// A workgroup of 256 invocations = 8 subgroups of 32 owns a TM × TN tile of (x rows) × (weight rows); subgroup
// sg owns FM × FN 16×16 f32 accumulators at rows SM(sg).., columns SN(sg)... K goes through workgroup memory
// KS columns per stage as f16 (x is rounded to f16 here), rows padded to LDS halves (bank-conflict-free
// fragment loads); rows and columns outside x / W are staged as zeros. With KS > 32 (small-M shapes) the
// subgroups split each stage's columns in blocks of 32 and their partial sums meet in the output. `crate/src/kernels/linear/coop.rs`
// generates `main`'s body as straight-line code (named registers, no per-thread arrays).
//
// Output: cooperative stores cannot be skipped per subgroup (uniform control flow), so each accumulator goes
// through a per-subgroup 16×16 f32 block of `so`; after a barrier every invocation writes the elements that
// lie inside y, applying the epilogue per element. y needs no slack.
//
// naga 30 bug (see examples/probe_coop.rs): a `coopStore`/`coopStoreT` argument that is a computed expression
// panics the SPIR-V writer, so every store takes `let`-bound or literal arguments.
enable f16;
enable wgpu_cooperative_matrix;

{{PARAMS}}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<{{X_ELEM}}>;
@group(0) @binding(2) var<storage, read> w: array<{{W_ELEM}}>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

// 0: store, 1: accumulate (y += ...), 2: SwiGLU (gate rows 0..I, up rows I..2I; y[m, j] = silu(gate_j)·up_j).
const EPILOGUE: u32 = {{EPILOGUE}}u;
const TM: u32 = {{TM}}u;
const TN: u32 = {{TN}}u;
// Columns of K per stage, and the staged row stride in halves: KS columns + 8 of padding.
const KS: u32 = {{KS}}u;
const LDS: u32 = {{LDS}}u;
const NONE: u32 = 0xffffffffu;

var<workgroup> sa: array<f16, {{SA_LEN}}>;
var<workgroup> sb: array<f16, {{SB_LEN}}>;
var<workgroup> so: array<f32, 2048>;

{{WEIGHT_FNS}}
fn silu(z: f32) -> f32 {
    return z / (1.0 + exp(-z));
}

// Weight row staged in row r of column tile t, or NONE. Under SwiGLU the first TN/2 staged rows are gate rows
// and the rest their up rows, so a workgroup holds both factors of its TN/2 outputs.
fn w_row(t: u32, r: u32) -> u32 {
    if EPILOGUE == 2u {
        let half = TN / 2u;
        let j = half * t + r % half;
        return select(NONE, select(j, j + p.out_cols, r >= half), j < p.out_cols);
    }
    let row = TN * t + r;
    return select(NONE, row, row < p.n);
}

// x row m0 + r, or NONE.
fn x_row(m0: u32, r: u32) -> u32 {
    let row = m0 + r;
    return select(NONE, row, row < p.m);
}

fn write_out(row: u32, col: u32, v: f32) {
    let i = row * p.out_cols + col;
    if EPILOGUE == 1u {
        y[i] = y[i] + v;
    } else {
        y[i] = v;
    }
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let m0 = wid.y * TM;
    let t = wid.x;
    let sg = lid / 32u;
    let nk = (p.k + KS - 1u) / KS;
{{BODY}}
}
