// DAC convolutions on tensor cores (wgpu's experimental cooperative matrices; native only, never in the
// browser path): the implicit GEMM of dac_conv.wgsl,
//   y[co, t] = bias[co] + Σ_{k < K} W[phase·cout + co, k] · act(x[k / TAPS, q·in_stride + (k % TAPS)·dil + in_off]),
// t = q·out_stride + phase − out_pad, K = cin·TAPS, with 16×16×16 f16 products accumulated in f32.
//
// A workgroup (8 subgroups of 32) computes TM output channels × TN columns of one phase. Per step of BK
// reduction rows it stages the weight tile (row-major [TM][BK], f16) and the im2col tile of the input
// (row-major [BK][TN], Snake applied, f16) in workgroup memory; the next step's global loads are issued into
// registers before this step's matrix work. Out-of-range weights and inputs are staged as zeros, so ragged
// M, N and K need no slack anywhere. Results leave through a per-subgroup 16×16 f32 tile in workgroup memory,
// from which the subgroup's invocations apply bias / residual add / tanh with bounds checks.
//
// naga 30 rules kept here: cooperative ops only in uniform control flow, and every coopStore argument is a
// `let` or a literal (a computed one panics naga's SPIR-V writer; see examples/probe_coop.rs).
enable f16;
enable wgpu_cooperative_matrix;

struct Params {
    cin: u32,
    cout: u32,
    k_total: u32,
    len_in: u32,
    len_out: u32,
    in_stride: u32,
    dil: u32,
    in_off: i32,
    out_stride: u32,
    out_pad: u32,
    nphase: u32,
    w_stride: u32,
    grid_x: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
// F16W: f16 pairs packed in u32 (row stride w_stride words); F32: f32 (row stride w_stride).
@group(0) @binding(2) var<storage, read> w: array<{{W_TYPE}}>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
{{SNAKE_DECL}}

const TM: u32 = {{TM}}u;
const TN: u32 = {{TN}}u;
const BK: u32 = 32u;
const TAPS: u32 = {{TAPS}}u;
const ACCUMULATE: bool = {{ACCUMULATE}};
const TANH: bool = {{TANH}};
// Staged row strides in f16, padded by 8 so that the 16×16 fragment loads avoid bank conflicts.
const LDA: u32 = BK + 8u;
const LDB: u32 = TN + 8u;
// Weight words (f16 pairs) and input elements each invocation stages per step.
const A_PER: u32 = TM * BK / 2u / 256u;
const B_PER: u32 = BK * TN / 256u;
// Rows one pass of 256 invocations covers.
const A_ROWS: u32 = 256u / (BK / 2u);
const B_ROWS: u32 = 256u / TN;

var<workgroup> sa: array<f16, TM * LDA>;
var<workgroup> sb: array<f16, BK * LDB>;
// One 16×16 f32 output fragment per subgroup.
var<workgroup> sc: array<f32, 2048>;

// `fn load_pair(co: u32, row: u32, word: u32) -> u32`: the f16 pair at word `word` of weight row `row`
// (channel `co`), packed, 0 past the matrix.
{{WEIGHT_FN}}
// Writes output value v (bias, residual and tanh still to apply) of channel co at column q of `phase`.
fn store_out(co: u32, q: u32, phase: u32, v: f32) {
    // q·out_stride + phase ≥ out_pad for every q ≥ q_lo, so t never wraps.
    let t = q * P.out_stride + phase - P.out_pad;
    if (co >= P.cout || t >= P.len_out) {
        return;
    }
    let o = co * P.len_out + t;
    var r = v + bias[co];
    if (ACCUMULATE) {
        r += y[o];
    }
    if (TANH) {
        // Clamped: some backends build tanh from exp and overflow to NaN for large inputs.
        r = tanh(clamp(r, -15.0, 15.0));
    }
    y[o] = r;
}

// Global loads of the step at reduction row k0 into this invocation's registers.
fn fetch(
    k0: u32, m0: u32, w_row0: u32, aw: u32, ar: u32, br: u32, q_in: i32,
    wv: ptr<function, array<u32, A_PER>>, xv: ptr<function, array<f32, B_PER>>, av: ptr<function, array<f32, B_PER>>,
) {
    for (var u = 0u; u < A_PER; u++) {
        let co = m0 + ar + u * A_ROWS;
        (*wv)[u] = load_pair(co, w_row0 + co, k0 / 2u + aw);
    }
    for (var u = 0u; u < B_PER; u++) {
        let k = k0 + br + u * B_ROWS;
        let ci = k / TAPS;
        let pos = q_in + i32((k - ci * TAPS) * P.dil);
        (*xv)[u] = 0.0;
        (*av)[u] = 0.0;
        if (k < P.k_total && pos >= 0 && pos < i32(P.len_in)) {
            (*xv)[u] = x[ci * P.len_in + u32(pos)];
            (*av)[u] = alpha_of(ci);
        }
    }
}

// The fetched registers as f16 into the staging tiles (Snake applied to the inputs here).
fn stage(
    aw: u32, ar: u32, bn: u32, br: u32,
    wv: ptr<function, array<u32, A_PER>>, xv: ptr<function, array<f32, B_PER>>, av: ptr<function, array<f32, B_PER>>,
) {
    for (var u = 0u; u < A_PER; u++) {
        let pair = vec2<f16>(unpack2x16float((*wv)[u]));
        let o = (ar + u * A_ROWS) * LDA + 2u * aw;
        sa[o] = pair.x;
        sa[o + 1u] = pair.y;
    }
    for (var u = 0u; u < B_PER; u++) {
        sb[(br + u * B_ROWS) * LDB + bn] = f16(act((*av)[u], (*xv)[u]));
    }
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let phase = wg.z % P.nphase;
    let tile = wg.x + (wg.z / P.nphase) * P.grid_x;
    // First column whose time is ≥ 0 in this phase.
    var q_lo = 0u;
    if (P.out_pad > phase) {
        q_lo = (P.out_pad - phase + P.out_stride - 1u) / P.out_stride;
    }
    let q0 = q_lo + tile * TN;
    let m0 = wg.y * TM;
    let w_row0 = phase * P.cout;
    let nk = (P.k_total + BK - 1u) / BK;

    // Weight staging: word `aw` of rows ar + u·A_ROWS; input staging: column bn of rows br + u·B_ROWS.
    let aw = lid % (BK / 2u);
    let ar = lid / (BK / 2u);
    let bn = lid % TN;
    let br = lid / TN;
    let q_in = i32((q0 + bn) * P.in_stride) + P.in_off;

    // Subgroup sg (32 consecutive invocations) owns rows sm.., columns sn.. of the tile; `lane` is its invocation.
    let sg = lid / 32u;
    let lane = lid % 32u;
{{SUBGROUP_TILE}}
{{ACC_DECL}}
    // This invocation's share of a step, fetched one step ahead: weight pairs and raw inputs (with their
    // Snake α), converted and stored after the current step's matrix work. Cooperative ops stay outside
    // any `if` (naga requires uniform control flow), so the last iteration refetches its own step.
    var wv: array<u32, A_PER>;
    var xv: array<f32, B_PER>;
    var av: array<f32, B_PER>;
    fetch(0u, m0, w_row0, aw, ar, br, q_in, &wv, &xv, &av);
    stage(aw, ar, bn, br, &wv, &xv, &av);
    workgroupBarrier();
    for (var t = 0u; t < nk; t++) {
        fetch(min(t + 1u, nk - 1u) * BK, m0, w_row0, aw, ar, br, q_in, &wv, &xv, &av);
{{COMPUTE}}
        workgroupBarrier();
        stage(aw, ar, bn, br, &wv, &xv, &av);
        workgroupBarrier();
    }
{{EPILOGUE}}
}
