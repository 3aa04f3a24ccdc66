// RMSNorm: y[r] = x[r] / sqrt(mean(x[r]²) + eps) · weight, one workgroup per row, statistics in f32.

{{PARAMS}}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

const T: u32 = 256u;
var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256)
fn rmsnorm(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = wid.x + wid.y * nwg.x;
    if row >= p.rows {
        return;
    }
    let base = row * p.dim;
    var s = 0.0;
    for (var i = tid; i < p.dim; i += T) {
        let v = x[base + i];
        s += v * v;
    }
    partial[tid] = s;
    for (var st = T / 2u; st > 0u; st >>= 1u) {
        workgroupBarrier();
        if tid < st {
            partial[tid] += partial[tid + st];
        }
    }
    workgroupBarrier();
    let inv = 1.0 / sqrt(partial[0] / f32(p.dim) + p.eps);
    for (var i = tid; i < p.dim; i += T) {
        y[base + i] = x[base + i] * inv * weight[i];
    }
}
