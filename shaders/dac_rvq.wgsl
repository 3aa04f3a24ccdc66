// DAC residual vector quantiser, f32 latents `[latent, frames]`, codes `[n_codebooks, frames]` (u32).
//
// `project_out`: act[co, t] (= or −=) Σ_{i ∈ [q_first, q_first + q_count)} out_b[i, co] + Σ_d out_w[i·latent + co, d] · cb[i, code[i, t], d]
//   decode: all codebooks, store; encode: one codebook, subtract from the residual.
// `assign`: for codebook q_first and each frame t, p = in_w[q·D + d, :] · r[:, t] + in_b[q·D + d];
//   code[q, t] = argmax_j cos(p, cb[q, j]) (cb bound here is the L2-normalised codebook; first index on ties).
//
// Both entry points share one binding layout, so the declarations serve both.

{{PARAMS}}

@group(0) @binding(0) var<uniform> P: RvqParams;
@group(0) @binding(1) var<storage, read_write> codes: array<u32>;
@group(0) @binding(2) var<storage, read> cb: array<f32>;
{{WEIGHT_DECL}}
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> act: array<f32>;

const D: u32 = {{CB_DIM}}u;

@compute @workgroup_size(256)
fn project_out(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let idx = (wg.x + wg.y * P.grid_x) * 256u + lid;
    if (idx >= P.latent * P.frames) {
        return;
    }
    let co = idx / P.frames;
    let t = idx % P.frames;
    var sum = 0.0;
    for (var i = P.q_first; i < P.q_first + P.q_count; i++) {
        // Codes are validated on the host; the clamp only keeps a bad one inside the buffer.
        let code = min(codes[i * P.frames + t], P.cb_size - 1u);
        let e = (i * P.cb_size + code) * D;
        let row = (i * P.latent + co) * P.w_stride;
        var v = bias[i * P.latent + co];
        for (var d = 0u; d < D; d++) {
            v = fma(load_w(row, d), cb[e + d], v);
        }
        sum += v;
    }
    if (P.subtract != 0u) {
        act[idx] -= sum;
    } else {
        act[idx] = sum;
    }
}

var<workgroup> red: array<f32, 256>;
var<workgroup> best_score: array<f32, 256>;
var<workgroup> best_index: array<u32, 256>;

@compute @workgroup_size(256)
fn assign(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    // One workgroup per frame; the whole workgroup takes the same path, so the barriers are uniform.
    let t = wg.x + wg.y * P.grid_x;
    let live = t < P.frames;
    let q = P.q_first;

    // p = in_proj(r[:, t]): each lane sums a strided slice of the latent for all D outputs.
    var part: array<f32, D>;
    if (live) {
        for (var c = lid; c < P.latent; c += 256u) {
            let r = act[c * P.frames + t];
            for (var d = 0u; d < D; d++) {
                part[d] = fma(load_w((q * D + d) * P.w_stride, c), r, part[d]);
            }
        }
    }
    var p: array<f32, D>;
    for (var d = 0u; d < D; d++) {
        red[lid] = part[d];
        workgroupBarrier();
        for (var h = 128u; h > 0u; h >>= 1u) {
            if (lid < h) {
                red[lid] += red[lid + h];
            }
            workgroupBarrier();
        }
        p[d] = red[0] + bias[q * D + d];
        workgroupBarrier();
    }
    var norm2 = 0.0;
    for (var d = 0u; d < D; d++) {
        norm2 += p[d] * p[d];
    }
    let inv = 1.0 / max(sqrt(norm2), 1e-12);

    // Each lane scores entries lid, lid + 256, … in ascending order, keeping the first best.
    var bs = -3.0e38;
    var bi = 0u;
    for (var j = lid; j < P.cb_size; j += 256u) {
        let e = (q * P.cb_size + j) * D;
        var s = 0.0;
        for (var d = 0u; d < D; d++) {
            s = fma(cb[e + d], p[d] * inv, s);
        }
        if (s > bs) {
            bs = s;
            bi = j;
        }
    }
    best_score[lid] = bs;
    best_index[lid] = bi;
    workgroupBarrier();
    for (var h = 128u; h > 0u; h >>= 1u) {
        if (lid < h) {
            let os = best_score[lid + h];
            let oi = best_index[lid + h];
            if (os > best_score[lid] || (os == best_score[lid] && oi < best_index[lid])) {
                best_score[lid] = os;
                best_index[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    if (live && lid == 0u) {
        codes[q * P.frames + t] = best_index[0];
    }
}
