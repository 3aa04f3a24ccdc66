// y = x · Wᵀ with fused epilogues. x: f32 [M, K]; W: [N, K] (f32, or f16 pairs packed in u32).
//
// This file is assembled by `crate/src/kernels/linear.rs` from the sections below (each starts with a
// `//== section: <name>` line): `common`, one weight-access section (`access_<mode>_<vec8|pair>`) and one
// kernel (`small_m` or `tiled`). The access sections give every kernel the same interface:
//   type Chunk            a few consecutive columns of one row,
//   fn chunks() -> u32    chunks per row,
//   fn load_w(row, c)     chunk c of weight row `row` (row < N, c < chunks()),
//   fn load_x(m, c)       chunk c of x row `m` (m < M, c < chunks()); columns ≥ K read as 0,
//   fn chunk_dot(a, b)    Σ a·b over the chunk.
// `vec8` sections (K a multiple of 8) load 16 bytes at a time; `pair` sections take any K.

//== section: common
struct Params {
    m: u32,        // rows of x and y
    n: u32,        // rows of W
    k: u32,        // columns of x and W
    stride: u32,   // words between W rows
    out_cols: u32, // columns of y: n, or n / 2 for SwiGLU
    groups: u32,   // workgroups with work (the grid may hold a few more)
    tiles_n: u32,  // tiled kernel: tiles along the output columns
    eps: f32,      // small-M kernel with fused RMSNorm
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

// 0: store, 1: accumulate (y += ...), 2: SwiGLU (gate rows 0..I, up rows I..2I).
const EPILOGUE: u32 = {{EPILOGUE}}u;

fn silu(z: f32) -> f32 {
    return z / (1.0 + exp(-z));
}

// Store/accumulate one output value of y [M, out_cols].
fn write_out(m: u32, col: u32, v: f32) {
    let i = m * p.out_cols + col;
    if EPILOGUE == 1u {
        y[i] = y[i] + v;
    } else {
        y[i] = v;
    }
}

//== section: access_f32_vec8
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;

struct Chunk { lo: vec4<f32>, hi: vec4<f32> }

fn chunks() -> u32 { return p.k / 8u; }

fn load_w(row: u32, c: u32) -> Chunk {
    let b = row * (p.stride / 4u) + 2u * c;
    return Chunk(w[b], w[b + 1u]);
}

fn load_x(m: u32, c: u32) -> Chunk {
    let b = m * (p.k / 4u) + 2u * c;
    return Chunk(x[b], x[b + 1u]);
}

fn chunk_dot(a: Chunk, b: Chunk) -> f32 { return dot(a.lo, b.lo) + dot(a.hi, b.hi); }

//== section: access_f16w_vec8
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;

struct Chunk { lo: vec4<f32>, hi: vec4<f32> }

fn chunks() -> u32 { return p.k / 8u; }

fn load_w(row: u32, c: u32) -> Chunk {
    let q = w[row * (p.stride / 4u) + c];
    return Chunk(
        vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y)),
        vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w)),
    );
}

fn load_x(m: u32, c: u32) -> Chunk {
    let b = m * (p.k / 4u) + 2u * c;
    return Chunk(x[b], x[b + 1u]);
}

fn chunk_dot(a: Chunk, b: Chunk) -> f32 { return dot(a.lo, b.lo) + dot(a.hi, b.hi); }

//== section: access_f32_pair
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;

alias Chunk = vec2<f32>;

fn chunks() -> u32 { return (p.k + 1u) / 2u; }

fn load_w(row: u32, c: u32) -> Chunk {
    let k0 = 2u * c;
    let b = row * p.stride;
    // The second column of the last pair of an odd K does not exist: clamp the index, zero the value.
    let hi = w[b + min(k0 + 1u, p.k - 1u)];
    return vec2<f32>(w[b + k0], select(0.0, hi, k0 + 1u < p.k));
}

fn load_x(m: u32, c: u32) -> Chunk {
    let k0 = 2u * c;
    let b = m * p.k;
    let hi = x[b + min(k0 + 1u, p.k - 1u)];
    return vec2<f32>(x[b + k0], select(0.0, hi, k0 + 1u < p.k));
}

fn chunk_dot(a: Chunk, b: Chunk) -> f32 { return dot(a, b); }

//== section: access_f16w_pair
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;

alias Chunk = vec2<f32>;

fn chunks() -> u32 { return (p.k + 1u) / 2u; }

// Rows of odd K end with a zero half, so the last pair needs no masking here.
fn load_w(row: u32, c: u32) -> Chunk {
    return unpack2x16float(w[row * p.stride + c]);
}

fn load_x(m: u32, c: u32) -> Chunk {
    let k0 = 2u * c;
    let b = m * p.k;
    let hi = x[b + min(k0 + 1u, p.k - 1u)];
    return vec2<f32>(x[b + k0], select(0.0, hi, k0 + 1u < p.k));
}

fn chunk_dot(a: Chunk, b: Chunk) -> f32 { return dot(a, b); }

//== section: norm_none
fn scale_x(xc: Chunk, c: u32) -> Chunk { return xc; }

//== section: norm_vec8
// Fused RMSNorm: x is scaled by the norm's gain as it is read; the 1/rms factor is applied to the sums.
@group(0) @binding(4) var<storage, read> gain: array<vec4<f32>>;

fn scale_x(xc: Chunk, c: u32) -> Chunk { return Chunk(xc.lo * gain[2u * c], xc.hi * gain[2u * c + 1u]); }

//== section: norm_pair
@group(0) @binding(4) var<storage, read> gain: array<f32>;

fn scale_x(xc: Chunk, c: u32) -> Chunk {
    let k0 = 2u * c;
    return xc * vec2<f32>(gain[k0], gain[min(k0 + 1u, p.k - 1u)]);
}

//== section: small_m
// Matrix–vector schedule for M ≤ 16: a workgroup owns R weight rows and reads each of their weights
// once for all M rows of x. KT threads share a row along K (consecutive threads read consecutive
// 16-byte chunks, so reads coalesce); the T / KT thread groups each take RPT rows, so every x chunk a
// thread loads serves RPT rows. The KT partial sums of each output meet once in workgroup memory.
// With NORM (fused RMSNorm), x is multiplied by the gain on load and the sums by 1/rms(x row).
const M: u32 = {{M}}u;
const T: u32 = {{THREADS}}u;
const KT: u32 = {{K_THREADS}}u;
const RPT: u32 = {{ROWS_PER_THREAD}}u;
const G: u32 = T / KT;
const R: u32 = G * RPT;
const HALF_R: u32 = R / 2u;
const OUTS: u32 = R * M;
const NORM: bool = {{NORM}};
// Partial sums are [OUTS (+ M squared-norm sums)][KT], rows padded to an odd stride against bank conflicts.
const LANES: u32 = KT + 1u;

var<workgroup> red: array<f32, {{RED}}>;

// Weight row in slot s of workgroup g. Store/accumulate: R consecutive rows. SwiGLU: slots
// 0..R/2 are the gate rows of outputs g·R/2 .. (g+1)·R/2 and slots R/2..R their up rows. Rows past
// the end are clamped (read but never stored) so every thread runs the same loop.
fn slot_row(g: u32, s: u32) -> u32 {
    if EPILOGUE == 2u {
        let j = min(g * HALF_R + s % HALF_R, p.out_cols - 1u);
        return select(j, j + p.out_cols, s >= HALF_R);
    }
    return min(g * R + s, p.n - 1u);
}

@compute @workgroup_size({{THREADS}})
fn small_m(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let g = wid.x + wid.y * nwg.x;
    if g >= p.groups {
        return;
    }
    let kt = tid % KT;
    let rg = tid / KT;
    var rows: array<u32, RPT>;
    for (var i = 0u; i < RPT; i++) {
        rows[i] = slot_row(g, i * G + rg);
    }
    var acc: array<f32, RPT * M>;
    var sq: array<f32, M>;
    let nc = chunks();
    for (var c = kt; c < nc; c += KT) {
        var wc: array<Chunk, RPT>;
        for (var i = 0u; i < RPT; i++) {
            wc[i] = load_w(rows[i], c);
        }
        for (var m = 0u; m < M; m++) {
            let xr = load_x(m, c);
            if NORM {
                sq[m] += chunk_dot(xr, xr);
            }
            let xc = scale_x(xr, c);
            for (var i = 0u; i < RPT; i++) {
                acc[i * M + m] += chunk_dot(xc, wc[i]);
            }
        }
    }
    for (var i = 0u; i < RPT; i++) {
        for (var m = 0u; m < M; m++) {
            red[((i * G + rg) * M + m) * LANES + kt] = acc[i * M + m];
        }
    }
    // Every thread group saw the same x chunks: group 0's squares are the row's.
    if NORM && rg == 0u {
        for (var m = 0u; m < M; m++) {
            red[(OUTS + m) * LANES + kt] = sq[m];
        }
    }
    workgroupBarrier();
    let sums = select(OUTS, OUTS + M, NORM);
    for (var o = tid; o < sums; o += T) {
        var s = 0.0;
        for (var j = 0u; j < KT; j++) {
            s += red[o * LANES + j];
        }
        red[o * LANES] = s;
    }
    workgroupBarrier();
    // Outputs may outnumber the threads (small workgroups, many rows).
    if EPILOGUE == 2u {
        for (var o = tid; o < HALF_R * M; o += T) {
            let jj = o / M;
            let m = o % M;
            let j = g * HALF_R + jj;
            if j < p.out_cols {
                let scale = row_scale(m);
                let gate = red[(jj * M + m) * LANES] * scale;
                let up = red[((HALF_R + jj) * M + m) * LANES] * scale;
                y[m * p.out_cols + j] = silu(gate) * up;
            }
        }
    } else {
        for (var o = tid; o < OUTS; o += T) {
            let n = g * R + o / M;
            if n < p.n {
                write_out(o % M, n, red[o * LANES] * row_scale(o % M));
            }
        }
    }
}

// 1 / rms of x row m under NORM (its squared sum is in slot OUTS + m), else 1.
fn row_scale(m: u32) -> f32 {
    if NORM {
        return inverseSqrt(red[(OUTS + m) * LANES] / f32(p.k) + p.eps);
    }
    return 1.0;
}

//== section: tiled
// Matrix–matrix schedule: a 64 × 64 tile of (x rows) × (weight rows) per workgroup, K staged through
// workgroup memory 16 columns at a time, each thread accumulating a 4 × 4 micro-tile.
const TILE: u32 = 64u;
const BK: u32 = 16u;
// Staged tiles are [TILE rows][BK columns] with a padded row stride to spread banks.
const LDS: u32 = 17u;

var<workgroup> xs: array<f32, 1088>;
var<workgroup> ws: array<f32, 1088>;

// Weight row for row r of tile tn, or N if there is none. Store/accumulate: 64 consecutive rows.
// SwiGLU: rows 0..32 are the gate rows of outputs 32·tn .. 32·tn + 32, rows 32..64 their up rows.
fn tile_row(tn: u32, r: u32) -> u32 {
    if EPILOGUE == 2u {
        let j = 32u * tn + (r & 31u);
        if j >= p.out_cols {
            return p.n;
        }
        return select(j, j + p.out_cols, r >= 32u);
    }
    return min(TILE * tn + r, p.n);
}

@compute @workgroup_size(16, 16)
fn tiled(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let tile = wid.x + wid.y * nwg.x;
    if tile >= p.groups {
        return;
    }
    let tn = tile % p.tiles_n;
    let tm = tile / p.tiles_n;
    let t = lid.y * 16u + lid.x;
    // This thread's tile columns: two adjacent pairs 32 apart, so under SwiGLU it holds the gate and
    // the up value of outputs 2·lid.x and 2·lid.x + 1.
    let c0 = 2u * lid.x;
    var cols = array<u32, 4>(c0, c0 + 1u, c0 + 32u, c0 + 33u);
    var acc: array<f32, 16>;
    let nc = chunks();
    for (var cb = 0u; cb < nc; cb += BK / 2u) {
        // 64 rows × 8 chunks of 2 columns for each of x and W: two of each per thread.
        for (var i = 0u; i < 2u; i++) {
            let e = t + i * 256u;
            let r = e / 8u;
            let cl = e % 8u;
            let c = cb + cl;
            let m = TILE * tm + r;
            var xv = vec2<f32>(0.0);
            if m < p.m && c < nc {
                xv = load_x(m, c);
            }
            xs[r * LDS + 2u * cl] = xv.x;
            xs[r * LDS + 2u * cl + 1u] = xv.y;
            let wr = tile_row(tn, r);
            var wv = vec2<f32>(0.0);
            if wr < p.n && c < nc {
                wv = load_w(wr, c);
            }
            ws[r * LDS + 2u * cl] = wv.x;
            ws[r * LDS + 2u * cl + 1u] = wv.y;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                a[i] = xs[(4u * lid.y + i) * LDS + kk];
                b[i] = ws[cols[i] * LDS + kk];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] += a[i] * b[j];
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let m = TILE * tm + 4u * lid.y + i;
        if m >= p.m {
            continue;
        }
        if EPILOGUE == 2u {
            for (var jj = 0u; jj < 2u; jj++) {
                let j = 32u * tn + c0 + jj;
                if j < p.out_cols {
                    y[m * p.out_cols + j] = silu(acc[i * 4u + jj]) * acc[i * 4u + 2u + jj];
                }
            }
        } else {
            for (var j = 0u; j < 4u; j++) {
                let n = TILE * tn + cols[j];
                if n < p.n {
                    write_out(m, n, acc[i * 4u + j]);
                }
            }
        }
    }
}
