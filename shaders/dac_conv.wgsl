// DAC convolutions: Conv1d and ConvTranspose1d as one tiled implicit GEMM over f32 `[channels, time]`.
//
// A convolution is a sum over phases p < nphase (1 for Conv1d, the stride s for ConvTranspose1d). For
// phase p, output column q (q ≥ q_lo(p)) is time t = q·out_stride + p − out_pad, and
//   y[co, t] = bias[co] + Σ_{ci < cin, k < taps} W[p·cout + co, ci·taps + k] · act(x[ci, q·in_stride + k·dil + in_off])
// with x zero outside [0, len_in). Conv1d: out_stride 1, out_pad 0, in_off = −padding. ConvTranspose1d:
// the host rewrote W into per-phase taps (see dac_conv.rs), in_stride = dil = 1.
//
// A workgroup computes TM output channels × TN columns of one phase. Per reduction chunk it stages
// chan_chunk input channels × tap_chunk taps of weights, and the input *span* those taps touch for each
// channel (snake applied once per staged element, not once per tap), then every thread accumulates
// RM × RN outputs (RM = 4 or 8 channels as vec4) from workgroup memory: RM/4 + RN shared loads per RM·RN FMAs.
// The next chunk's global loads are issued into registers before the current chunk's arithmetic.

{{ENABLE_F16}}
struct Params {
    cin: u32,
    cout: u32,
    taps: u32,
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
    chan_chunk: u32,
    tap_chunk: u32,
    span: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
{{WEIGHT_DECL}}
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
{{SNAKE_DECL}}

const WM: u32 = {{WM}}u;
const WN: u32 = {{WN}}u;
const RM: u32 = {{RM}}u;
const RN: u32 = {{RN}}u;
const TM: u32 = WM * RM;
const TN: u32 = WN * RN;
// Reduction rows staged per chunk (chan_chunk · tap_chunk ≤ KR_MAX) and input span words (chan_chunk · span ≤ XS_MAX).
const KR_MAX: u32 = {{KR_MAX}}u;
const XS_MAX: u32 = {{XS_MAX}}u;
// Staged words per thread and chunk, at most.
const W_PER: u32 = (TM * KR_MAX + 255u) / 256u;
const X_PER: u32 = (XS_MAX + 255u) / 256u;
// Weight tile rows are padded by 4 words (keeping vec4 alignment) so that lanes storing consecutive rows
// hit distinct banks.
const WS_STRIDE: u32 = TM + 4u;
const ACCUMULATE: bool = {{ACCUMULATE}};
const TANH: bool = {{TANH}};

// Staged and multiplied in H: f32, or f16 in the shader-f16 variant (HALF), which sums each chunk's
// products in f16 (≤ KR_MAX terms) and the chunks in f32.
alias H = {{H}};
const HALF: bool = {{HALF}};

// Weights k-major ([reduction row][channel]), read 4 channels at a time.
var<workgroup> ws: array<vec4<H>, KR_MAX * WS_STRIDE / 4u>;
var<workgroup> xs: array<H, XS_MAX>;

// A thread owns channels 4·tm + i (i < 4) and, when RM = 8, TM/2 + 4·tm + i: each is one vec4 read of a
// staged weight row, and 8 neighbouring lanes read 128 contiguous bytes. It owns time columns tn + j·WN.
@compute @workgroup_size(256)
fn conv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let phase = wg.z % P.nphase;
    let tile = wg.x + (wg.z / P.nphase) * P.grid_x;
    // First column whose time is ≥ 0 in this phase.
    var q_lo = 0u;
    if (P.out_pad > phase) {
        q_lo = (P.out_pad - phase + P.out_stride - 1u) / P.out_stride;
    }
    let q0 = q_lo + tile * TN;
    let m0 = wg.y * TM;
    let tm = lid / WN;
    let tn = lid % WN;
    let cc_n = P.chan_chunk;
    let kt_n = P.tap_chunk;
    let rows = cc_n * kt_n;
    let span = P.span;
    let staged = cc_n * span;
    let w_row0 = phase * P.cout;

    // Weight staging: lane `st_row` of the chunk's rows, channels st_m0, st_m0 + 256/KR_MAX, …
    // (consecutive lanes read consecutive weight columns of one row: coalesced).
    let st_row = lid % KR_MAX;
    let st_m0 = lid / KR_MAX;
    let st_cc = st_row / kt_n;
    let st_kt = st_row % kt_n;
    let tap_chunks = (P.taps + kt_n - 1u) / kt_n;
    let chunks = (P.cin + cc_n - 1u) / cc_n * tap_chunks;

    // part[h·RN + j] (and acc) hold channels h·TM/2 + 4·tm + (0..4) at column j. In f32 part is the whole
    // sum; in f16 it is one chunk's, added into acc after the chunk.
    var part: array<vec4<H>, RM * RN / 4u>;
    var acc: array<vec4<f32>, RM * RN / 4u>;
    // This thread's share of a chunk, fetched into registers one chunk ahead: weights (channel
    // st_m0 + i·256/KR_MAX of row st_row) and input span words lid + i·256 (Snake applied).
    var wv: array<f32, W_PER>;
    var xv: array<f32, X_PER>;
    // Iteration c fetches chunk c while computing chunk c − 1 from workgroup memory, then stages chunk c.
    for (var c = 0u; c <= chunks; c++) {
        if (c < chunks) {
            let ci0 = c / tap_chunks * cc_n;
            let k0 = c % tap_chunks * kt_n;
            let ci = ci0 + st_cc;
            let k = k0 + st_kt;
            let live = st_row < rows && ci < P.cin && k < P.taps;
            let col = ci * P.taps + k;
            for (var i = 0u; i < W_PER; i++) {
                let co = m0 + st_m0 + i * (256u / KR_MAX);
                wv[i] = 0.0;
                if (live && co < P.cout) {
                    wv[i] = load_w((w_row0 + co) * P.w_stride, col);
                }
            }
            let base = i32(q0 * P.in_stride + k0 * P.dil) + P.in_off;
            for (var i = 0u; i < X_PER; i++) {
                let e = lid + i * 256u;
                let cc = e / span;
                let ci = ci0 + cc;
                let pos = base + i32(e - cc * span);
                xv[i] = 0.0;
                if (e < staged && ci < P.cin && pos >= 0 && pos < i32(P.len_in)) {
                    xv[i] = act(ci, x[ci * P.len_in + u32(pos)]);
                }
            }
        }
        if (c > 0u) {
            if (HALF) {
                for (var i = 0u; i < RM * RN / 4u; i++) {
                    part[i] = vec4<H>(0.0);
                }
            }
            for (var cc = 0u; cc < cc_n; cc++) {
                for (var kt = 0u; kt < kt_n; kt++) {
                    let wrow = (cc * kt_n + kt) * (WS_STRIDE / 4u) + tm;
                    let xb = cc * span + kt * P.dil + tn * P.in_stride;
                    var b: array<H, RN>;
                    for (var j = 0u; j < RN; j++) {
                        b[j] = xs[xb + j * WN * P.in_stride];
                    }
                    let a0 = ws[wrow];
                    for (var j = 0u; j < RN; j++) {
                        part[j] = fma(a0, vec4<H>(b[j]), part[j]);
                    }
                    if (RM == 8u) {
                        let a1 = ws[wrow + TM / 8u];
                        for (var j = 0u; j < RN; j++) {
                            part[RN + j] = fma(a1, vec4<H>(b[j]), part[RN + j]);
                        }
                    }
                }
            }
            if (HALF) {
                for (var i = 0u; i < RM * RN / 4u; i++) {
                    acc[i] += vec4<f32>(part[i]);
                }
            }
        }
        workgroupBarrier();
        if (c < chunks) {
            if (st_row < rows) {
                for (var i = 0u; i < W_PER; i++) {
                    let m = st_m0 + i * (256u / KR_MAX);
                    if (m < TM) {
                        let e = st_row * WS_STRIDE + m;
                        ws[e / 4u][e % 4u] = H(wv[i]);
                    }
                }
            }
            for (var i = 0u; i < X_PER; i++) {
                let e = lid + i * 256u;
                if (e < staged) {
                    xs[e] = H(xv[i]);
                }
            }
        }
        workgroupBarrier();
    }

    if (!HALF) {
        for (var i = 0u; i < RM * RN / 4u; i++) {
            acc[i] = vec4<f32>(part[i]);
        }
    }
    for (var i = 0u; i < RM; i++) {
        let h = i / 4u;
        let co = m0 + h * (TM / 2u) + 4u * tm + i % 4u;
        if (co >= P.cout) {
            continue;
        }
        let bv = bias[co];
        for (var j = 0u; j < RN; j++) {
            // q·out_stride + phase ≥ out_pad holds for every q ≥ q_lo, so t never wraps.
            let t = (q0 + tn + j * WN) * P.out_stride + phase - P.out_pad;
            if (t >= P.len_out) {
                break;
            }
            var v = acc[h * RN + j][i % 4u] + bv;
            let o = co * P.len_out + t;
            if (ACCUMULATE) {
                v += y[o];
            }
            if (TANH) {
                // Clamped: some backends build tanh from exp and overflow to NaN for large inputs.
                v = tanh(clamp(v, -15.0, 15.0));
            }
            y[o] = v;
        }
    }
}
