//== section: conv
// DAC convolutions: Conv1d and ConvTranspose1d as one tiled implicit GEMM over f32 `[channels, time]`.
//
// A convolution is a sum over phases p < nphase (1 for Conv1d, the stride s for ConvTranspose1d). For
// phase p, output column q (q ≥ q_lo(p)) is time t = q·out_stride + p − out_pad, and
//   y[co, t] = bias[co] + Σ_{ci < cin, k < taps} W[p·cout + co, ci·taps + k] · act(x[ci, q·in_stride + k·dil + in_off])
// with x zero outside [0, len_in). Conv1d: out_stride 1, out_pad 0, in_off = −padding. ConvTranspose1d:
// the host rewrote W into per-phase taps (see dac_conv.rs), in_stride = dil = 1.
//
// A workgroup computes TM output channels × TN columns of one phase over the input channels of its
// split (all of them unless split-K: then its partial sums go to `part` and the `reduce` entry point adds
// the splits in order and applies the epilogue). Per chunk it stages CC channels × KT taps of weights and
// the input span those taps touch per channel (Snake applied once per staged element). The arithmetic on a
// staged chunk is straight-line code generated on the host (dac_conv.rs): every shared load of a step into
// a named value, then the FMAs into named accumulators, because loops over per-thread arrays serialise the
// loads on some drivers. The next chunk's global loads are issued before the current chunk's arithmetic.
{{ENABLE_F16}}
{{PARAMS}}

@group(0) @binding(0) var<uniform> P: ConvParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
{{WEIGHT_DECL}}
{{OUT_DECL}}
{{SNAKE_DECL}}

const WM: u32 = {{WM}}u;
const WN: u32 = {{WN}}u;
const TM: u32 = {{TM}}u;
const TN: u32 = {{TN}}u;
// Channels and taps per chunk (KR = CC·KT reduction rows), staged input words.
const CC: u32 = {{CC}}u;
const KT: u32 = {{KT}}u;
const KR: u32 = CC * KT;
const XS: u32 = {{XS}}u;
// Staged weight rows are padded by 4 words (keeping vec4 alignment) so that lanes storing consecutive
// rows hit distinct banks.
const WS: u32 = TM + 4u;

// Staged and multiplied in H: f32, or f16 in the shader-f16 variant, which sums each chunk's products in
// f16 (≤ KR terms) and the chunks in f32.
alias H = {{H}};

// Weights k-major ([reduction row][channel]), read 4 channels at a time.
var<workgroup> ws: array<vec4<H>, KR * WS / 4u>;
var<workgroup> xs: array<H, XS>;

// Weight of output row `row_base` (a word offset, valid when `ok`) at channel ci, tap k; 0 outside.
fn w_at(row_base: u32, ok: bool, ci: u32, k: u32, ci_end: u32) -> f32 {
    let live = ok && ci < ci_end && k < P.taps;
    let col = select(0u, ci * P.taps + k, live);
    return select(0.0, load_w(row_base, col), live);
}

// act(x[ci, pos]) for a staged element, 0 outside the input (and for dead lanes).
fn x_at(ok: bool, ci: u32, pos: i32, ci_end: u32) -> f32 {
    let live = ok && ci < ci_end && pos >= 0 && pos < i32(P.len_in);
    let c = select(0u, ci, live);
    return select(0.0, act(c, x[c * P.len_in + select(0u, u32(pos), live)]), live);
}

@compute @workgroup_size(256)
fn conv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let phase = wg.z % P.nphase;
    let rest = wg.z / P.nphase;
    let split = rest % P.splits;
    let tile = wg.x + (rest / P.splits) * P.grid_x;
    // First column whose time is ≥ 0 in this phase.
    var q_lo = 0u;
    if (P.out_pad > phase) {
        q_lo = (P.out_pad - phase + P.out_stride - 1u) / P.out_stride;
    }
    let q0 = q_lo + tile * TN;
    let m0 = wg.y * TM;
    let tm = lid / WN;
    let tn = lid % WN;
    let w_row0 = phase * P.cout;
    let span = P.span;
    let dil = P.dil;
    let xb = tn * P.in_stride;
    let cs = WN * P.in_stride;
    let split_ch0 = split * P.split_ch;
    let ci_end = min(split_ch0 + P.split_ch, P.cin);

{{SETUP}}
    // Iteration c stages chunk c (fetched into registers by the previous iteration), fetches chunk c + 1
    // and computes chunk c from workgroup memory.
    var cf = 0u;
{{FETCH}}
    for (var c = 0u; c < P.chunks; c++) {
        workgroupBarrier();
{{STORE}}
        workgroupBarrier();
        if (c + 1u < P.chunks) {
            cf = c + 1u;
{{FETCH}}
        }
{{COMPUTE}}
    }
{{EPILOGUE}}
}

//== section: finish
fn finish(o: u32, acc: f32) {
    var v = acc;
    if ({{ACCUMULATE}}) {
        v += y[o];
    }
    if ({{TANH}}) {
        // Clamped: some backends build tanh from exp and overflow to NaN for large inputs.
        v = tanh(clamp(v, -15.0, 15.0));
    }
    y[o] = v;
}

//== section: reduce
// Split-K epilogue: y[co, t] = (Σ_s part[s, co, t]) + bias[co] (+ y, tanh), the splits added in order so the
// result does not depend on scheduling.
{{PARAMS}}

@group(0) @binding(0) var<uniform> P: ReduceParams;
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = gid.x + gid.y * nwg.x * 256u;
    let n = P.cout * P.len_out;
    if (o >= n) {
        return;
    }
    var acc = 0.0;
    for (var s = 0u; s < P.splits; s++) {
        acc += part[s * n + o];
    }
    finish(o, acc + bias[o / P.len_out]);
}
