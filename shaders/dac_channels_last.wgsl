// Helpers of the DAC's channels-last decode (dac_conv_cl.wgsl does its convolutions on tensor cores):
//
// - `pack`: f32 activations → f16 channels-last `[time, C]` (pairs packed in u32, low half = even channel),
//   Snake applied on the way (x + sin²(αx)/(α + 1e-9), α per channel). The source is channels-last `[time, C]`
//   or, with TRANSPOSED, channels-first `[C, time]` (the RVQ's latent).
// - `conv_mono`: the decoder's last convolution, C → 1 channel, reading packed f16 channels-last input
//   (Snake already applied by `pack`), bias and tanh in the epilogue. Too narrow for a matrix unit.
//
// Plain WGSL (no f16, no cooperative matrices), so both also run on software adapters for the tests.
// dac_channels_last.rs builds one module per entry point: section `common` + the entry point's section.
//== section: common
{{PARAMS}}

@group(0) @binding(0) var<uniform> P: Params;

//== section: pack
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;
// `fn act(c: u32, v: f32) -> f32`: Snake with α of channel c (binding 3), or the identity.
{{SNAKE_DECL}}
const TRANSPOSED: bool = {{TRANSPOSED}};

// One invocation per packed pair (time t, channels 2j and 2j + 1).
@compute @workgroup_size(256)
fn pack(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * P.row;
    let pairs = P.channels / 2u;
    if (i >= P.len_in * pairs) {
        return;
    }
    let t = i / pairs;
    let c = 2u * (i - t * pairs);
    var v: vec2<f32>;
    if (TRANSPOSED) {
        v = vec2<f32>(src[c * P.len_in + t], src[(c + 1u) * P.len_in + t]);
    } else {
        v = vec2<f32>(src[t * P.channels + c], src[t * P.channels + c + 1u]);
    }
    dst[i] = pack2x16float(vec2<f32>(act(c, v.x), act(c + 1u, v.y)));
}

//== section: conv_mono
@group(0) @binding(1) var<storage, read> xv: array<vec4<u32>>;
// `fn load_w(base: u32, col: u32) -> f32` over the weight row [c·taps + tap].
{{WEIGHT_DECL}}
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

// One invocation per output sample: y[t] = tanh(bias + Σ_tap Σ_c w[c·taps + tap] · x[t + tap·dil − pad, c]).
// `x` holds 8 channels per vec4 (channels is a multiple of 8).
@compute @workgroup_size(256)
fn conv_mono(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x + gid.y * P.row;
    if (t >= P.len_out) {
        return;
    }
    let groups = P.channels / 8u;
    var s = bias[0];
    for (var tap = 0u; tap < P.taps; tap++) {
        let pos = i32(t + tap * P.dil) - i32(P.pad);
        if (pos < 0 || pos >= i32(P.len_in)) {
            continue;
        }
        let base = u32(pos) * groups;
        var part = 0.0;
        for (var g = 0u; g < groups; g++) {
            let q = xv[base + g];
            let c = 8u * g;
            let a = unpack2x16float(q.x);
            let b = unpack2x16float(q.y);
            let d = unpack2x16float(q.z);
            let e = unpack2x16float(q.w);
            part += a.x * load_w(0u, c * P.taps + tap) + a.y * load_w(0u, (c + 1u) * P.taps + tap)
                + b.x * load_w(0u, (c + 2u) * P.taps + tap) + b.y * load_w(0u, (c + 3u) * P.taps + tap)
                + d.x * load_w(0u, (c + 4u) * P.taps + tap) + d.y * load_w(0u, (c + 5u) * P.taps + tap)
                + e.x * load_w(0u, (c + 6u) * P.taps + tap) + e.y * load_w(0u, (c + 7u) * P.taps + tap);
        }
        s += part;
    }
    // Clamped: some backends build tanh from exp and overflow to NaN for large inputs.
    y[t] = tanh(clamp(s, -15.0, 15.0));
}
