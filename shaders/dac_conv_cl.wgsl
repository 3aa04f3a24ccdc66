// DAC convolutions over f16 channels-last activations on tensor cores (wgpu's experimental cooperative
// matrices; native only, never on the web path): an implicit GEMM with time as the rows,
//   y[t, co] = bias[co] + Σ_{tap < TAPS, ci < cin} x[q·in_stride + tap·dil + in_off, ci] · W[phase·cout + co, tap·cin + ci],
// t = q·out_stride + phase − out_pad (ConvTranspose1d: one phase per stride step, see dac_conv.rs), x zero
// outside [0, len_in). The reduction runs tap-major, so 8 consecutive reduction rows are 8 consecutive
// channels of one input row: one 16-byte load, no index arithmetic per element and no Snake per tap (the
// input arrives Snake'd and packed by dac_channels_last.wgsl). cin is a multiple of 8.
//
// A workgroup (8 subgroups of 32) owns TM time rows × TN output channels of one phase; per stage of 32
// reduction rows both operands go through workgroup memory as f16 (double-buffered where it fits), the next
// stage's global loads issued before this stage's matrix work. `crate/src/kernels/dac_conv_cl.rs` generates
// the body as straight-line code.
//
// Output: each 16×16 accumulator goes through the subgroup's slot of `so`; after a barrier the workgroup
// writes the slots' elements that lie inside y with the epilogue: store or add (f32 channels-last), or
// Snake of the next convolution and f16 packing (the residual unit's inner activation).
//
// naga 30 rules: cooperative ops only in uniform control flow; every coopStore argument a `let` or literal.
enable f16;
enable wgpu_cooperative_matrix;

{{PARAMS}}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
{{OUT_DECL}}

const TM: u32 = {{TM}}u;
const TN: u32 = {{TN}}u;
// Staged row stride in halves: 32 reduction rows + 8 of padding (conflict-free fragment loads).
const LDS: u32 = 40u;
const NONE: u32 = 0xffffffffu;

var<workgroup> sa: array<f16, {{SA_LEN}}>;
var<workgroup> sb: array<f16, {{SB_LEN}}>;
var<workgroup> so: array<f32, 2048>;

// Time t of column q in `phase` (q ≥ q_lo, so never below 0).
fn time_of(q: u32, phase: u32) -> u32 {
    return q * P.out_stride + phase - P.out_pad;
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let phase = wg.z % P.nphase;
    let tile = wg.x + (wg.z / P.nphase) * P.grid_x;
    // First column whose time is ≥ 0 in this phase.
    var q_lo = 0u;
    if (P.out_pad > phase) {
        q_lo = (P.out_pad - phase + P.out_stride - 1u) / P.out_stride;
    }
    let q0 = q_lo + tile * TM;
    let n0 = wg.y * TN;
    let w_row0 = phase * P.cout;
    let sg = lid / 32u;
    let nk = (P.k_total + 31u) / 32u;
{{BODY}}
}
