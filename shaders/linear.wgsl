// y = x · Wᵀ with fused epilogues. x: f32 [M, K]; W: [N, K] (f32, f16 pairs packed in u32, or q8 / q4 blocks).
//
// This file is assembled by `crate/src/kernels/linear/` (small_m.rs, tiled.rs) from the sections below (each
// starts with a `//== section: <name>` line): `common`, one weight-access section (`access_<mode>_<vec8|pair>`)
// and one kernel (`small_m` or `tiled`); `{{PARAMS}}` is the Rust side's `Params` declaration (mod.rs). The access
// sections give every kernel the same interface:
//   type Chunk            a few consecutive columns of one row,
//   fn chunks() -> u32    chunks per row,
//   fn load_w(row, c)     chunk c of weight row `row` (row < N, c < chunks()),
//   fn load_x(m, c)       chunk c of x row `m` (m < M, c < chunks()); columns ≥ K read as 0,
//   fn chunk_dot(a, b)    Σ a·b over the chunk.
// `vec8` sections (K a multiple of 8) load 16 bytes at a time; `pair` sections take any K.
// Quantized weights (q8, q4: `crate/src/quant.rs`) take `qdecode` (dequantization) and, for the small-M kernel,
// `qsmall_<q8|q4>` (16-byte weight blocks as chunks) or `qcols8_<q8|q4>` (8-column chunks), + `qsmall_scale`
// (`fn dequant`, `fn load_scale`), `qx_<vec4|scalar>`
// (x loads) and `qnorm_<none|vec4|scalar>` (the fused norm's gain) in place of the access and norm sections; for the
// tiled kernel `tiled_x_<vec4|scalar>`, `tiled_w_quant` and `tiled_w_<q8|q4_unit4|q4_unit8>`.
// The small-M kernel's f16 arithmetic (`Arith::F16`) adds `half` and takes `access_f16w_<vec8|pair>_half` in place
// of the f16w access section, or adds `qhalf_<q8|q4>` to the quantized ones.
// Its integer-dot arithmetic for quantized weights (`Arith::Int8Dot`) adds `qi8` and `qi8_<q8|q4>`.

//== section: common
{{PARAMS}}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

// 0: store, 1: accumulate (y += ...), 2: SwiGLU (gate rows 0..I, up rows I..2I).
const EPILOGUE: u32 = {{EPILOGUE}}u;

fn silu(z: f32) -> f32 {
    return z / (1.0 + exp(-z));
}

// First row of x and y this workgroup works on: the small-M kernel over a stack of 16-row blocks sets it from
// the grid's z (one dispatch for the whole stack); 0 everywhere else.
var<private> row0: u32;

// Store/accumulate one output value of y [M, out_cols].
fn write_out(m: u32, col: u32, v: f32) {
    let i = (row0 + m) * p.out_cols + col;
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
    let b = (row0 + m) * (p.k / 4u) + 2u * c;
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
    let b = (row0 + m) * (p.k / 4u) + 2u * c;
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
    let b = (row0 + m) * p.k;
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
    let b = (row0 + m) * p.k;
    let hi = x[b + min(k0 + 1u, p.k - 1u)];
    return vec2<f32>(x[b + k0], select(0.0, hi, k0 + 1u < p.k));
}

fn chunk_dot(a: Chunk, b: Chunk) -> f32 { return dot(a, b); }

//== section: half
// f16 arithmetic (`Arith::F16`, devices with shader-f16; the module starts with `enable f16;`). Each access section
// below (`access_f16w_<vec8|pair>_half`, `qhalf_<q8|q4>`) adds to its f32 interface:
//   type HChunk                 a chunk of weights, or of x, in f16 (paired as the weights unpack),
//   fn half_w(raw) -> HChunk     the loaded weights (`load_w`) in f16,
//   fn half_x(x, keep) -> HChunk x (after `scale_x`) in f16, zeros unless `keep`,
//   fn hdot_start(x, w) / hdot_more(x, w, t)   the chunk's products summed in f16 (lanes of an f16 vector),
//   fn hsum(t) -> f32           the lanes' total, in f32 from the last pairwise f16 sum on.
// Range: quantized values unpack as q/1024 (q8) and q/64 (q4), exactly, so |w| ≤ 1/8 and a chunk's f16 sum stays
// below 65504 while |x| ≤ 32752 (q8: 16 terms) or 16376 (q4: 32 terms); `QBACK` is folded into the group's scale.
// (This is x scaled down per chunk by 2^-10 / 2^-6 and the sum scaled back, at no cost.) f16w weights are used as
// stored, ≤ 32 products per sum: |x·w| ≤ 2047 per product keeps it finite. Precision: x rounded to f16 (2^-11
// relative) and ≤ 9 f16 roundings per sum bound the error of each output by 10·2^-11·Σ|x·w| (first order);
// products below f16's normal range (6.1e-5 in units of x·w') add at most 2^-25 each.

// A word's two halves as f16 (low half first). naga has no bitcast from u32 to vec2<f16>; the round trip
// f16 → f32 → f16 is exact, and compilers fold it.
fn halves(q: u32) -> vec2<f16> {
    return vec2<f16>(unpack2x16float(q));
}

//== section: access_f16w_vec8_half
// access_f16w_vec8 with f16 arithmetic: a round's chunks (≤ 4 × 8 weights) are summed in one vec4<f16> per row pair.
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;

struct Chunk { lo: vec4<f32>, hi: vec4<f32> }
struct HChunk { lo: vec4<f16>, hi: vec4<f16> }

fn chunks() -> u32 { return p.k / 8u; }

fn load_w(row: u32, c: u32) -> vec4<u32> { return w[row * (p.stride / 4u) + c]; }

fn half_w(q: vec4<u32>) -> HChunk { return HChunk(vec4<f16>(halves(q.x), halves(q.y)), vec4<f16>(halves(q.z), halves(q.w))); }

fn load_x(m: u32, c: u32) -> Chunk {
    let b = (row0 + m) * (p.k / 4u) + 2u * c;
    return Chunk(x[b], x[b + 1u]);
}

fn half_x(a: Chunk, keep: bool) -> HChunk {
    let z = vec4<f16>(0.0);
    return HChunk(select(z, vec4<f16>(a.lo), keep), select(z, vec4<f16>(a.hi), keep));
}

fn chunk_dot(a: Chunk, b: Chunk) -> f32 { return dot(a.lo, b.lo) + dot(a.hi, b.hi); }

fn hdot_start(a: HChunk, b: HChunk) -> vec4<f16> { return fma(a.hi, b.hi, a.lo * b.lo); }

fn hdot_more(a: HChunk, b: HChunk, t: vec4<f16>) -> vec4<f16> { return fma(a.hi, b.hi, fma(a.lo, b.lo, t)); }

fn hsum(t: vec4<f16>) -> f32 {
    let h = t.xy + t.zw;
    return f32(h.x) + f32(h.y);
}

//== section: access_f16w_pair_half
// access_f16w_pair with f16 arithmetic: a round's pairs (≤ 4) are summed in one vec2<f16>.
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;

alias Chunk = vec2<f32>;
alias HChunk = vec2<f16>;

fn chunks() -> u32 { return (p.k + 1u) / 2u; }

// Rows of odd K end with a zero half, so the last pair needs no masking here.
fn load_w(row: u32, c: u32) -> u32 { return w[row * p.stride + c]; }

fn half_w(q: u32) -> HChunk { return halves(q); }

fn load_x(m: u32, c: u32) -> Chunk {
    let k0 = 2u * c;
    let b = (row0 + m) * p.k;
    let hi = x[b + min(k0 + 1u, p.k - 1u)];
    return vec2<f32>(x[b + k0], select(0.0, hi, k0 + 1u < p.k));
}

fn half_x(a: Chunk, keep: bool) -> HChunk { return select(vec2<f16>(0.0), vec2<f16>(a), keep); }

fn chunk_dot(a: Chunk, b: Chunk) -> f32 { return dot(a, b); }

fn hdot_start(a: HChunk, b: HChunk) -> vec2<f16> { return a * b; }

fn hdot_more(a: HChunk, b: HChunk, t: vec2<f16>) -> vec2<f16> { return fma(a, b, t); }

fn hsum(t: vec2<f16>) -> f32 { return f32(t.x) + f32(t.y); }

//== section: qdecode
// Quantized weights (`crate/src/quant.rs` defines the format): each row is its value words, then one f16 scale per
// QGROUP columns (pairs, low half = even group), then padding to 16 bytes; a value is offset-binary, column c in
// field c % PER_WORD of value word c / PER_WORD. Columns past K hold q = 0 up to the end of the last group.
const QGROUP: u32 = {{GROUP}}u;

// Words of values in a row: whole groups.
fn value_words() -> u32 {
    return (p.k + QGROUP - 1u) / QGROUP * (QGROUP / PER_WORD);
}

// Offset-binary fields to signed values, exactly and without an integer-to-float conversion: the field in the low
// mantissa bits of 2^23 gives 2^23 + u, from which 2^23 + (the offset) is subtracted.
fn bytes4(q: u32) -> vec4<f32> {
    let u = (vec4<u32>(q) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xffu);
    return bitcast<vec4<f32>>(u | vec4<u32>(0x4b000000u)) - vec4<f32>(8388736.0);
}

// Nibbles `shift / 4` .. `shift / 4 + 3` of q (shift 0 or 16).
fn nibbles4(q: u32, shift: u32) -> vec4<f32> {
    let u = (vec4<u32>(q) >> (vec4<u32>(0u, 4u, 8u, 12u) + vec4<u32>(shift))) & vec4<u32>(0xfu);
    return bitcast<vec4<f32>>(u | vec4<u32>(0x4b000000u)) - vec4<f32>(8388616.0);
}

//== section: qsmall_q8
// Small-M access for q8: a chunk is one 16-byte block of 16 columns (4 words of 4 bytes), within one group.
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;

const PER_WORD: u32 = 4u;
const CHUNK: u32 = 16u;

struct Chunk { a: vec4<f32>, b: vec4<f32>, c: vec4<f32>, d: vec4<f32> }

fn chunks() -> u32 { return (p.k + CHUNK - 1u) / CHUNK; }

fn load_w(row: u32, c: u32) -> vec4<u32> { return w[row * (p.stride / 4u) + c]; }

fn w_word(i: u32) -> u32 { return w[i / 4u][i % 4u]; }

fn dequant(q: vec4<u32>) -> Chunk { return Chunk(bytes4(q.x), bytes4(q.y), bytes4(q.z), bytes4(q.w)); }

fn load_x(m: u32, c: u32) -> Chunk { return Chunk(x4(m, 4u * c), x4(m, 4u * c + 1u), x4(m, 4u * c + 2u), x4(m, 4u * c + 3u)); }

fn scale_x(xc: Chunk, c: u32) -> Chunk {
    let v = 4u * c;
    return Chunk(xc.a * gain4(v), xc.b * gain4(v + 1u), xc.c * gain4(v + 2u), xc.d * gain4(v + 3u));
}

fn chunk_dot(a: Chunk, b: Chunk) -> f32 { return (dot(a.a, b.a) + dot(a.b, b.b)) + (dot(a.c, b.c) + dot(a.d, b.d)); }

//== section: qsmall_q4
// Small-M access for q4: a chunk is one 16-byte block of 32 columns (4 words of 8 nibbles), within one group.
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;

const PER_WORD: u32 = 8u;
const CHUNK: u32 = 32u;

struct Chunk { a: vec4<f32>, b: vec4<f32>, c: vec4<f32>, d: vec4<f32>, e: vec4<f32>, f: vec4<f32>, g: vec4<f32>, h: vec4<f32> }

fn chunks() -> u32 { return (p.k + CHUNK - 1u) / CHUNK; }

fn load_w(row: u32, c: u32) -> vec4<u32> { return w[row * (p.stride / 4u) + c]; }

fn w_word(i: u32) -> u32 { return w[i / 4u][i % 4u]; }

fn dequant(q: vec4<u32>) -> Chunk {
    return Chunk(
        nibbles4(q.x, 0u), nibbles4(q.x, 16u), nibbles4(q.y, 0u), nibbles4(q.y, 16u),
        nibbles4(q.z, 0u), nibbles4(q.z, 16u), nibbles4(q.w, 0u), nibbles4(q.w, 16u),
    );
}

fn load_x(m: u32, c: u32) -> Chunk {
    let v = 8u * c;
    return Chunk(x4(m, v), x4(m, v + 1u), x4(m, v + 2u), x4(m, v + 3u), x4(m, v + 4u), x4(m, v + 5u), x4(m, v + 6u), x4(m, v + 7u));
}

fn scale_x(xc: Chunk, c: u32) -> Chunk {
    let v = 8u * c;
    return Chunk(
        xc.a * gain4(v), xc.b * gain4(v + 1u), xc.c * gain4(v + 2u), xc.d * gain4(v + 3u),
        xc.e * gain4(v + 4u), xc.f * gain4(v + 5u), xc.g * gain4(v + 6u), xc.h * gain4(v + 7u),
    );
}

fn chunk_dot(a: Chunk, b: Chunk) -> f32 {
    return ((dot(a.a, b.a) + dot(a.b, b.b)) + (dot(a.c, b.c) + dot(a.d, b.d))) + ((dot(a.e, b.e) + dot(a.f, b.f)) + (dot(a.g, b.g) + dot(a.h, b.h)));
}

//== section: qcols8_q8
// Small-M access for q8 in 8-column chunks (two words of 4 bytes, within one group): consecutive lanes take
// consecutive chunks, so one x load of a warp covers 32-byte steps of an x row (`qsmall_q8`'s 16-column blocks put
// them 64 bytes apart, and each distinct cache line a warp's load touches costs the L1 a cycle).
@group(0) @binding(2) var<storage, read> w: array<vec2<u32>>;

const PER_WORD: u32 = 4u;
const CHUNK: u32 = 8u;

struct Chunk { lo: vec4<f32>, hi: vec4<f32> }

fn chunks() -> u32 { return (p.k + CHUNK - 1u) / CHUNK; }

fn load_w(row: u32, c: u32) -> vec2<u32> { return w[row * (p.stride / 2u) + c]; }

fn w_word(i: u32) -> u32 { return w[i / 2u][i % 2u]; }

fn dequant(q: vec2<u32>) -> Chunk { return Chunk(bytes4(q.x), bytes4(q.y)); }

fn load_x(m: u32, c: u32) -> Chunk { return Chunk(x4(m, 2u * c), x4(m, 2u * c + 1u)); }

fn scale_x(xc: Chunk, c: u32) -> Chunk { return Chunk(xc.lo * gain4(2u * c), xc.hi * gain4(2u * c + 1u)); }

fn chunk_dot(a: Chunk, b: Chunk) -> f32 { return dot(a.lo, b.lo) + dot(a.hi, b.hi); }

//== section: qcols8_q4
// Small-M access for q4 in 8-column chunks (one word of 8 nibbles): as `qcols8_q8`, against `qsmall_q4`'s 32-column
// blocks, whose x loads a warp spreads 128 bytes apart.
@group(0) @binding(2) var<storage, read> w: array<u32>;

const PER_WORD: u32 = 8u;
const CHUNK: u32 = 8u;

struct Chunk { lo: vec4<f32>, hi: vec4<f32> }

fn chunks() -> u32 { return (p.k + CHUNK - 1u) / CHUNK; }

fn load_w(row: u32, c: u32) -> u32 { return w[row * p.stride + c]; }

fn w_word(i: u32) -> u32 { return w[i]; }

fn dequant(q: u32) -> Chunk { return Chunk(nibbles4(q, 0u), nibbles4(q, 16u)); }

fn load_x(m: u32, c: u32) -> Chunk { return Chunk(x4(m, 2u * c), x4(m, 2u * c + 1u)); }

fn scale_x(xc: Chunk, c: u32) -> Chunk { return Chunk(xc.lo * gain4(2u * c), xc.hi * gain4(2u * c + 1u)); }

fn chunk_dot(a: Chunk, b: Chunk) -> f32 { return dot(a.lo, b.lo) + dot(a.hi, b.hi); }

//== section: qsmall_scale
// The f16 scale of the group holding chunk c of weight row `row` (read from the row's scale words; `w_word` is the
// access section's view of word i of the matrix).
fn load_scale(row: u32, c: u32) -> f32 {
    let g = c * CHUNK / QGROUP;
    let i = row * p.stride + value_words() + g / 2u;
    let s = unpack2x16float(w_word(i));
    return select(s.x, s.y, (g & 1u) == 1u);
}

//== section: qhalf_q8
// qsmall_q8 with f16 arithmetic. A word's bytes unpack as f16 pairs (b0, b2), (b1, b3): the byte under the mantissa
// of 1.0 (0x3c00 | b = 1 + b/1024) minus 1.125 is (b − 128)/1024 = q/1024, exactly. x pairs the same way.
const QBACK: f32 = 1024.0;

struct HChunk { a: vec4<f16>, b: vec4<f16>, c: vec4<f16>, d: vec4<f16> }

fn hword(q: u32) -> vec4<f16> {
    let lo = (q & 0x00ff00ffu) | 0x3c003c00u;
    let hi = ((q >> 8u) & 0x00ff00ffu) | 0x3c003c00u;
    return vec4<f16>(halves(lo), halves(hi)) - vec4<f16>(1.125);
}

fn half_w(q: vec4<u32>) -> HChunk { return HChunk(hword(q.x), hword(q.y), hword(q.z), hword(q.w)); }

fn half_x(v: Chunk, keep: bool) -> HChunk {
    let z = vec4<f16>(0.0);
    return HChunk(
        select(z, vec4<f16>(v.a.xzyw), keep), select(z, vec4<f16>(v.b.xzyw), keep),
        select(z, vec4<f16>(v.c.xzyw), keep), select(z, vec4<f16>(v.d.xzyw), keep),
    );
}

fn hdot_start(x: HChunk, w: HChunk) -> vec4<f16> { return fma(x.d, w.d, fma(x.c, w.c, fma(x.b, w.b, x.a * w.a))); }

fn hsum(t: vec4<f16>) -> f32 {
    let h = t.xy + t.zw;
    return f32(h.x) + f32(h.y);
}

//== section: qhalf_q4
// qsmall_q4 with f16 arithmetic. Nibbles i and i + 4 of a word unpack as one f16 pair: the nibble under the
// mantissa of 16.0 (0x4c00 | n = 16 + n/64) minus 16.125 is (n − 8)/64 = q/64, exactly; a word gives the pairs
// (0, 4), (1, 5), (2, 6), (3, 7). x pairs the same way.
const QBACK: f32 = 64.0;

// Word i: lo = columns 8i + (0, 4, 1, 5), hi = 8i + (2, 6, 3, 7).
struct HWord { lo: vec4<f16>, hi: vec4<f16> }
struct HChunk { a: HWord, b: HWord, c: HWord, d: HWord }

fn hword(q: u32) -> HWord {
    let m = 0x000f000fu;
    let f = 0x4c004c00u;
    let p0 = halves((q & m) | f);
    let p1 = halves(((q >> 4u) & m) | f);
    let p2 = halves(((q >> 8u) & m) | f);
    let p3 = halves(((q >> 12u) & m) | f);
    let o = vec4<f16>(16.125);
    return HWord(vec4<f16>(p0, p1) - o, vec4<f16>(p2, p3) - o);
}

fn half_w(q: vec4<u32>) -> HChunk { return HChunk(hword(q.x), hword(q.y), hword(q.z), hword(q.w)); }

// Columns 8i .. 8i + 3 (u) and 8i + 4 .. 8i + 7 (v) paired as `hword` pairs them.
fn hx(u: vec4<f32>, v: vec4<f32>, keep: bool) -> HWord {
    let z = vec4<f16>(0.0);
    return HWord(select(z, vec4<f16>(vec4<f32>(u.x, v.x, u.y, v.y)), keep), select(z, vec4<f16>(vec4<f32>(u.z, v.z, u.w, v.w)), keep));
}

fn half_x(v: Chunk, keep: bool) -> HChunk { return HChunk(hx(v.a, v.b, keep), hx(v.c, v.d, keep), hx(v.e, v.f, keep), hx(v.g, v.h, keep)); }

fn hdot_start(x: HChunk, w: HChunk) -> vec4<f16> {
    var t = x.a.lo * w.a.lo;
    t = fma(x.a.hi, w.a.hi, t);
    t = fma(x.b.lo, w.b.lo, t);
    t = fma(x.b.hi, w.b.hi, t);
    t = fma(x.c.lo, w.c.lo, t);
    t = fma(x.c.hi, w.c.hi, t);
    t = fma(x.d.lo, w.d.lo, t);
    return fma(x.d.hi, w.d.hi, t);
}

fn hsum(t: vec4<f16>) -> f32 {
    let h = t.xy + t.zw;
    return f32(h.x) + f32(h.y);
}

//== section: qi8
// Integer-dot arithmetic for quantized weights (`Arith::Int8Dot`): each x chunk is quantized to int8 once for all of
// the thread's weight rows, with its own scale (the chunk's largest |x| / 127, round to nearest), and each 4-byte
// word of weights meets 4 bytes of x in one `dot4I8Packed`; the chunk's integer sum times (x scale × group scale)
// is added to the f32 accumulator. Error: x·gain is off by ≤ scale/2 per element (the only rounding before the
// f32 part). Rounding: 1.5·2^23 + t holds round(t) in its low mantissa bits (|t| ≤ 127), whose low byte is the
// two's-complement int8 that `pack4xU8` keeps.
const QROUND: f32 = 12582912.0;

fn qbytes(v: vec4<f32>, inv: f32) -> u32 {
    return pack4xU8(bitcast<vec4<u32>>(fma(v, vec4<f32>(inv), vec4<f32>(QROUND))));
}

// 127 / amax, or 0 for a chunk of zeros (or of values too small to scale: they then count as zeros).
fn qinv(m4: vec4<f32>) -> f32 {
    let amax = max(max(m4.x, m4.y), max(m4.z, m4.w));
    return select(0.0, 127.0 / amax, amax >= 1e-30);
}

//== section: qi8_q8
// qi8 for q8: a word's 4 offset-binary bytes (b = q + 128) become two's complement by flipping their top bits, so
// word k of the chunk (columns 4k .. 4k + 3) meets x's columns 4k .. 4k + 3 packed the same way.
struct XQ { q: vec4<u32>, s: f32 }

fn quant_x(v: Chunk) -> XQ {
    let m4 = max(max(abs(v.a), abs(v.b)), max(abs(v.c), abs(v.d)));
    let inv = qinv(m4);
    return XQ(vec4<u32>(qbytes(v.a, inv), qbytes(v.b, inv), qbytes(v.c, inv), qbytes(v.d, inv)), max(max(m4.x, m4.y), max(m4.z, m4.w)) / 127.0);
}

fn int_w(q: vec4<u32>) -> vec4<u32> { return q ^ vec4<u32>(0x80808080u); }

fn idot(x: XQ, w: vec4<u32>) -> i32 {
    return (dot4I8Packed(x.q.x, w.x) + dot4I8Packed(x.q.y, w.y)) + (dot4I8Packed(x.q.z, w.z) + dot4I8Packed(x.q.w, w.w));
}

//== section: qi8_q4
// qi8 for q4: a word's even nibbles (columns 8k + 0, 2, 4, 6) and odd nibbles (8k + 1, 3, 5, 7), masked into bytes,
// are unsigned 0..15 (q + 8), so the dot of x with q is the bytes' dot minus 8 · (the sum of x's int8 values).
struct XQ { lo: vec4<u32>, hi: vec4<u32>, bias: i32, s: f32 }
struct IW { lo: vec4<u32>, hi: vec4<u32> }

fn quant_x(v: Chunk) -> XQ {
    let m4 = max(max(max(abs(v.a), abs(v.b)), max(abs(v.c), abs(v.d))), max(max(abs(v.e), abs(v.f)), max(abs(v.g), abs(v.h))));
    let inv = qinv(m4);
    let lo = vec4<u32>(
        qbytes(vec4<f32>(v.a.x, v.a.z, v.b.x, v.b.z), inv), qbytes(vec4<f32>(v.c.x, v.c.z, v.d.x, v.d.z), inv),
        qbytes(vec4<f32>(v.e.x, v.e.z, v.f.x, v.f.z), inv), qbytes(vec4<f32>(v.g.x, v.g.z, v.h.x, v.h.z), inv),
    );
    let hi = vec4<u32>(
        qbytes(vec4<f32>(v.a.y, v.a.w, v.b.y, v.b.w), inv), qbytes(vec4<f32>(v.c.y, v.c.w, v.d.y, v.d.w), inv),
        qbytes(vec4<f32>(v.e.y, v.e.w, v.f.y, v.f.w), inv), qbytes(vec4<f32>(v.g.y, v.g.w, v.h.y, v.h.w), inv),
    );
    let ones = 0x01010101u;
    let sum = ((dot4I8Packed(lo.x, ones) + dot4I8Packed(lo.y, ones)) + (dot4I8Packed(lo.z, ones) + dot4I8Packed(lo.w, ones)))
        + ((dot4I8Packed(hi.x, ones) + dot4I8Packed(hi.y, ones)) + (dot4I8Packed(hi.z, ones) + dot4I8Packed(hi.w, ones)));
    return XQ(lo, hi, 8 * sum, max(max(m4.x, m4.y), max(m4.z, m4.w)) / 127.0);
}

fn int_w(q: vec4<u32>) -> IW {
    let m = vec4<u32>(0x0f0f0f0fu);
    return IW(q & m, (q >> vec4<u32>(4u)) & m);
}

fn idot(x: XQ, w: IW) -> i32 {
    let a = (dot4I8Packed(x.lo.x, w.lo.x) + dot4I8Packed(x.hi.x, w.hi.x)) + (dot4I8Packed(x.lo.y, w.lo.y) + dot4I8Packed(x.hi.y, w.hi.y));
    let b = (dot4I8Packed(x.lo.z, w.lo.z) + dot4I8Packed(x.hi.z, w.hi.z)) + (dot4I8Packed(x.lo.w, w.lo.w) + dot4I8Packed(x.hi.w, w.hi.w));
    return (a + b) - x.bias;
}

//== section: qx_vec4
// x4(m, v): columns 4v .. 4v + 3 of x row m (K % 4 == 0: one 16-byte load); zeros past K.
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;

fn x4(m: u32, v: u32) -> vec4<f32> {
    let n = p.k / 4u;
    return select(vec4<f32>(0.0), x[(row0 + m) * n + min(v, n - 1u)], v < n);
}

//== section: qx_scalar
// x4(m, v) for any K: element loads, zeros past K (indices clamped so no access leaves the row).
@group(0) @binding(1) var<storage, read> x: array<f32>;

fn x4(m: u32, v: u32) -> vec4<f32> {
    let b = (row0 + m) * p.k;
    let k = 4u * v;
    let l = p.k - 1u;
    return vec4<f32>(
        select(0.0, x[b + min(k, l)], k < p.k),
        select(0.0, x[b + min(k + 1u, l)], k + 1u < p.k),
        select(0.0, x[b + min(k + 2u, l)], k + 2u < p.k),
        select(0.0, x[b + min(k + 3u, l)], k + 3u < p.k),
    );
}

//== section: qnorm_none
fn gain4(v: u32) -> vec4<f32> { return vec4<f32>(1.0); }

//== section: qnorm_vec4
// Fused RMSNorm: gain at columns 4v .. 4v + 3 (past K it multiplies zeros, so its index is only clamped).
@group(0) @binding(4) var<storage, read> gain: array<vec4<f32>>;

fn gain4(v: u32) -> vec4<f32> { return gain[min(v, p.k / 4u - 1u)]; }

//== section: qnorm_scalar
@group(0) @binding(4) var<storage, read> gain: array<f32>;

fn gain4(v: u32) -> vec4<f32> {
    let k = 4u * v;
    let l = p.k - 1u;
    return vec4<f32>(gain[min(k, l)], gain[min(k + 1u, l)], gain[min(k + 2u, l)], gain[min(k + 3u, l)]);
}

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
// thread loads serves RPT rows. The KT partial sums of each output meet in workgroup memory (at once, or in
// rounds of fewer rows of x where they do not fit: small_m.rs, `reduce_rounds`).
// With NORM (fused RMSNorm), x is multiplied by the gain on load and the sums by 1/rms(x row).
const M: u32 = {{M}}u;
const T: u32 = {{THREADS}}u;
const KT: u32 = {{K_THREADS}}u;
const RPT: u32 = {{ROWS_PER_THREAD}}u;
const U: u32 = {{UNROLL}}u;   // chunks per row a thread loads per round
const G: u32 = T / KT;
const R: u32 = G * RPT;
const HALF_R: u32 = R / 2u;
const OUTS: u32 = R * M;
const NORM: bool = {{NORM}};
// Partial sums are [OUTS (+ M squared-norm sums)][KT] (per round: [R·MB (+ MB)][KT]), rows padded to an odd
// stride against bank conflicts.
const LANES: u32 = KT + 1u;

var<workgroup> red: array<f32, {{RED}}>;
// Where the totals lie once the partial sums have met (`total(o)`): in `red` (one round) or `tot` (rounds).
{{TOTALS}}

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
    // Constant 0 (folded away) unless this pipeline serves a stack of blocks.
    row0 = select(0u, wid.z * M, {{BLOCKED}});
    let kt = tid % KT;
    let rg = tid / KT;
    // Straight-line code generated per shape (small_m.rs, `small_m_code`): a loop of loads into arrays would
    // wait out each load's latency in turn, while named values let all U·(RPT + M) loads of a round be in flight.
    // With prefetching, a round's weights were loaded during the round before, so their latency overlaps its math.
{{PROLOGUE}}
    let nc = chunks();
{{DECLS}}
    for (var c = kt; c < nc; c += U * KT) {
{{BODY}}
    }
{{REDUCE}}
    // Outputs may outnumber the threads (small workgroups, many rows).
    if EPILOGUE == 2u {
        for (var o = tid; o < HALF_R * M; o += T) {
            let jj = o / M;
            let m = o % M;
            let j = g * HALF_R + jj;
            if j < p.out_cols {
                let scale = row_scale(m);
                let gate = total(jj * M + m) * scale;
                let up = total((HALF_R + jj) * M + m) * scale;
                y[(row0 + m) * p.out_cols + j] = silu(gate) * up;
            }
        }
    } else {
        for (var o = tid; o < OUTS; o += T) {
            let n = g * R + o / M;
            if n < p.n {
                write_out(o % M, n, total(o) * row_scale(o % M));
            }
        }
    }
}

// 1 / rms of x row m under NORM (its squared sum is in slot OUTS + m), else 1.
fn row_scale(m: u32) -> f32 {
    if NORM {
        return inverseSqrt(total(OUTS + m) / f32(p.k) + p.eps);
    }
    return 1.0;
}

//== section: tiled
// Matrix–matrix schedule: a TM × TN tile of (x rows) × (weight rows) per workgroup. K is staged through
// workgroup memory BK columns at a time, k-major, so a thread reads 4 of its rows (or columns) as one vec4.
// A thread owns RM (4 or 8) rows × 8 columns: rows 4·ty.. (and TM/2 + 4·ty..), columns 4·tx.. and
// TN/2 + 4·tx.., so the lanes of a 128-bit shared-memory phase read contiguous bytes (no bank conflicts).
// Under SwiGLU the first half of a tile's weight rows are gate rows and the second half their up rows,
// so each thread holds both factors of its outputs.
// KG > 1 splits each stage's BK columns between KG groups of threads (more threads per tile for small M);
// their partial sums meet in workgroup memory at the end.
// The body is straight-line code generated per shape (tiled.rs, `tiled_code`): named accumulators and named
// global loads for the next stage issued before this stage's arithmetic, so every load is in flight at once.
const TM: u32 = {{TM}}u;
const TN: u32 = {{TN}}u;
const RM: u32 = {{RM}}u;
const BK: u32 = {{BK}}u;
const KG: u32 = {{KG}}u;
const THREADS_N: u32 = TN / 8u;
// Threads per k group.
const GROUP: u32 = (TM / RM) * THREADS_N;
// Staged k-rows are padded by 4 words: the 4 k of one loaded vec4 then land in distinct banks.
const XS4: u32 = (TM + 4u) / 4u;
const WS4: u32 = (TN + 4u) / 4u;

var<workgroup> xs: array<vec4<f32>, BK * XS4>;
var<workgroup> ws: array<vec4<f32>, BK * WS4>;
{{RED_DECL}}

// Weight row staged in row r of tile tn, or N if there is none.
fn tile_row(tn: u32, r: u32) -> u32 {
    if EPILOGUE == 2u {
        let half = TN / 2u;
        let j = half * tn + r % half;
        if j >= p.out_cols {
            return p.n;
        }
        return select(j, j + p.out_cols, r >= half);
    }
    return min(TN * tn + r, p.n);
}

@compute @workgroup_size({{THREADS}})
fn tiled(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let tile = wid.x + wid.y * nwg.x;
    if tile >= p.groups {
        return;
    }
    let tn = tile % p.tiles_n;
    let tm = tile / p.tiles_n;
    let lt = tid % GROUP;
    let kg = tid / GROUP;
    let tx = lt % THREADS_N;
    let ty = lt / THREADS_N;
{{BODY}}
}

//== section: tiled_x_vec4
// Tiled-kernel loads of x for quantized weights (as in the f32 / f16 sections): K % 4 == 0, one 16-byte load.
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;

fn tiled_load_x(m: u32, k: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), x[(m * p.k + min(k, p.k - 4u)) / 4u], k < p.k);
}

//== section: tiled_x_scalar
@group(0) @binding(1) var<storage, read> x: array<f32>;

fn tiled_load_x(m: u32, k: u32) -> vec4<f32> {
    let b = m * p.k;
    let l = p.k - 1u;
    return vec4<f32>(
        select(0.0, x[b + min(k, l)], k < p.k),
        select(0.0, x[b + min(k + 1u, l)], k + 1u < p.k),
        select(0.0, x[b + min(k + 2u, l)], k + 2u < p.k),
        select(0.0, x[b + min(k + 3u, l)], k + 3u < p.k),
    );
}

//== section: tiled_w_quant
// Tiled-kernel weight loads for quantized weights, dequantized (with their group's scale) as they are staged. k is
// a multiple of the staging unit, which lies in one group; a unit past K reads as 0 (its word index is clamped to
// the row's last value word, and the padding up to the group's end holds q = 0).
@group(0) @binding(2) var<storage, read> w: array<u32>;

fn tiled_scale(n: u32, k: u32) -> f32 {
    let g = k / QGROUP;
    let s = unpack2x16float(w[n * p.stride + value_words() + g / 2u]);
    return select(s.x, s.y, (g & 1u) == 1u);
}

fn tiled_word(n: u32, k: u32) -> u32 {
    return w[n * p.stride + min(k / PER_WORD, value_words() - 1u)];
}

//== section: tiled_w_q8
const PER_WORD: u32 = 4u;

// Columns k .. k + 3: one word.
fn tiled_load_w(n: u32, k: u32) -> vec4<f32> {
    let kk = min(k, p.k - 1u);
    return select(vec4<f32>(0.0), bytes4(tiled_word(n, kk)) * tiled_scale(n, kk), k < p.k);
}

//== section: tiled_w_q4_unit4
const PER_WORD: u32 = 8u;

// Columns k .. k + 3 (k % 4 == 0): half a word.
fn tiled_load_w(n: u32, k: u32) -> vec4<f32> {
    let kk = min(k, p.k - 1u);
    return select(vec4<f32>(0.0), nibbles4(tiled_word(n, kk), (k % 8u) * 4u) * tiled_scale(n, kk), k < p.k);
}

//== section: tiled_w_q4_unit8
const PER_WORD: u32 = 8u;

struct W8 { lo: vec4<f32>, hi: vec4<f32> }

// Columns k .. k + 7 (k % 8 == 0): one word.
fn tiled_load_w8(n: u32, k: u32) -> W8 {
    let kk = min(k, p.k - 1u);
    let q = tiled_word(n, kk);
    let s = select(0.0, tiled_scale(n, kk), k < p.k);
    return W8(nibbles4(q, 0u) * s, nibbles4(q, 16u) * s);
}

//== section: tiled_access_f32_vec4
// Tiled-kernel loads of 4 consecutive columns k.. (k a multiple of 4) of row m < M (n < N) when K % 4 == 0:
// one 16-byte load; columns ≥ K read as 0 (the index is clamped so no access leaves the row).
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;

fn tiled_load_x(m: u32, k: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), x[(m * p.k + min(k, p.k - 4u)) / 4u], k < p.k);
}

fn tiled_load_w(n: u32, k: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), w[(n * p.stride + min(k, p.k - 4u)) / 4u], k < p.k);
}

//== section: tiled_access_f16w_vec4
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec2<u32>>;

fn tiled_load_x(m: u32, k: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), x[(m * p.k + min(k, p.k - 4u)) / 4u], k < p.k);
}

// 4 halves = 2 words = one 8-byte load (stride = K/2 is even when K % 4 == 0).
fn tiled_load_w(n: u32, k: u32) -> vec4<f32> {
    let q = w[(n * p.stride + min(k, p.k - 4u) / 2u) / 2u];
    return select(vec4<f32>(0.0), vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y)), k < p.k);
}

//== section: tiled_access_f16w_vec8
// K % 8 == 0: weights in 8-column units, one 16-byte load of 4 words (stride = K/2 is a multiple of 4).
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;

struct W8 { lo: vec4<f32>, hi: vec4<f32> }

fn tiled_load_x(m: u32, k: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), x[(m * p.k + min(k, p.k - 4u)) / 4u], k < p.k);
}

fn tiled_load_w8(n: u32, k: u32) -> W8 {
    let q = w[(n * p.stride + min(k, p.k - 8u) / 2u) / 4u];
    let ok = k < p.k;
    return W8(
        select(vec4<f32>(0.0), vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y)), ok),
        select(vec4<f32>(0.0), vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w)), ok),
    );
}

//== section: tiled_access_f32_scalar
// Any K: element loads, columns ≥ K read as 0 (indices clamped so no access leaves the row).
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;

fn tiled_load_x(m: u32, k: u32) -> vec4<f32> {
    let b = m * p.k;
    let l = p.k - 1u;
    return vec4<f32>(
        select(0.0, x[b + min(k, l)], k < p.k),
        select(0.0, x[b + min(k + 1u, l)], k + 1u < p.k),
        select(0.0, x[b + min(k + 2u, l)], k + 2u < p.k),
        select(0.0, x[b + min(k + 3u, l)], k + 3u < p.k),
    );
}

fn tiled_load_w(n: u32, k: u32) -> vec4<f32> {
    let b = n * p.stride;
    let l = p.k - 1u;
    return vec4<f32>(
        select(0.0, w[b + min(k, l)], k < p.k),
        select(0.0, w[b + min(k + 1u, l)], k + 1u < p.k),
        select(0.0, w[b + min(k + 2u, l)], k + 2u < p.k),
        select(0.0, w[b + min(k + 3u, l)], k + 3u < p.k),
    );
}

//== section: tiled_access_f16w_scalar
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;

fn tiled_load_x(m: u32, k: u32) -> vec4<f32> {
    let b = m * p.k;
    let l = p.k - 1u;
    return vec4<f32>(
        select(0.0, x[b + min(k, l)], k < p.k),
        select(0.0, x[b + min(k + 1u, l)], k + 1u < p.k),
        select(0.0, x[b + min(k + 2u, l)], k + 2u < p.k),
        select(0.0, x[b + min(k + 3u, l)], k + 3u < p.k),
    );
}

// Words k/2 and k/2 + 1 of the row (k even); a word past the row is clamped to its last one and zeroed, and an odd
// K's last word ends in a zero half.
fn tiled_load_w(n: u32, k: u32) -> vec4<f32> {
    let b = n * p.stride;
    let l = p.stride - 1u;
    let lo = unpack2x16float(w[b + min(k / 2u, l)]);
    let hi = unpack2x16float(w[b + min(k / 2u + 1u, l)]);
    return vec4<f32>(select(vec2<f32>(0.0), lo, k < p.k), select(vec2<f32>(0.0), hi, k + 2u < p.k));
}

//== section: attention_x
// The output projection of a decoder step's self-attention with the attention's combine pass folded in (issue 17's
// second fusion: `linear_attention_o`). x is not bound: the access section's `x` is this workgroup-memory copy, which
// every workgroup first fills from the split decode's partials (`attention_decode_appending_partial`: per (row,
// head, chunk) XHD weighted V sums, the chunk's max score and its sum of exp), as `decode_combine` would; the first
// workgroup also writes the step's new keys into the caches (the combine's other job). Every workgroup re-reads
// all partials (M · XK · live chunks words): that L2 traffic is this fusion's price.
@group(0) @binding(1) var<storage, read> parts: array<f32>;
@group(0) @binding(4) var<storage, read> att_qinfo: array<u32>;
@group(0) @binding(5) var<storage, read> att_seqs: array<u32>;
@group(0) @binding(6) var<storage, read_write> att_kcache: array<{{KV_WORD}}>;
@group(0) @binding(7) var<storage, read_write> att_vcache: array<{{KV_WORD}}>;
const XH: u32 = {{X_HEADS}}u;           // query heads; XK = XH · XHD columns of x
const XHD: u32 = {{X_HEAD_DIM}}u;
const XK4: u32 = XH * XHD / 4u;
const XCH: u32 = {{X_CHUNK}}u;          // keys per chunk
const XNC: u32 = {{X_CHUNKS}}u;         // chunks per (row, head) in the scratch
const XKVH: u32 = {{X_KV_HEADS}}u;
const XKV_STRIDE: u32 = {{X_KV_STRIDE}}u;
const XK_COL: u32 = {{X_K_COL}}u;
const XV_COL: u32 = {{X_V_COL}}u;
const XENTRY: u32 = XHD + 2u;
const XNEG: f32 = -3.0e38;

var<workgroup> x: array<vec4<f32>, M * XK4>;
// Per (row, head, chunk): the chunk's max score, then its weight exp(max_c − max) / Σ_c exp(max_c − max)·sum_c.
var<workgroup> x_cw: array<f32, M * XH * XNC>;
// The chunks' sums of exp: in x until the values go there where they fit (at most XHD chunks), else here.
const SUMS_IN_X: bool = XNC <= XHD;
var<workgroup> x_sums: array<f32, {{X_SUMS}}>;

fn set_chunk_sum(i: u32, l: f32) {
    if SUMS_IN_X {
        x[i / 4u][i % 4u] = l;
    } else {
        x_sums[i] = l;
    }
}

fn chunk_sum(i: u32) -> f32 {
    if SUMS_IN_X {
        return x[i / 4u][i % 4u];
    }
    return x_sums[i];
}

fn part_at(i: u32) -> f32 {
    if i < arrayLength(&parts) { return parts[i]; }
    return 0.0;
}

// Keys row m attends to (`visible_keys` of the causal decode).
fn x_visible(m: u32) -> u32 {
    if 2u * m + 1u >= arrayLength(&att_qinfo) {
        return 0u;
    }
    let s = att_qinfo[2u * m];
    if s >= arrayLength(&att_seqs) / 2u {
        return 0u;
    }
    let kv_len = att_seqs[2u * s + 1u];
    let pos = att_qinfo[2u * m + 1u];
    return select(kv_len, pos + 1u, pos < kv_len);
}

fn x_chunks(m: u32) -> u32 {
    return min((x_visible(m) + XCH - 1u) / XCH, XNC);
}

{{KV_STORES}}

fn part4(i: u32) -> vec4<f32> {
    return vec4<f32>(part_at(i), part_at(i + 1u), part_at(i + 2u), part_at(i + 3u));
}

// Per (row, head): its largest chunk max and 1 / Σ_c exp(max_c − max)·sum_c (0 for a row with no key).
var<workgroup> x_max: array<f32, M * XH>;
var<workgroup> x_inv: array<f32, M * XH>;

fn combine_attention_x(tid: u32, first: bool) {
    // Chunk maxima and sums into workgroup memory, all loads at once.
    for (var i = tid; i < M * XH * XNC; i += T) {
        let mh = i / XNC;
        var mx = XNEG;
        var l = 0.0;
        if i % XNC < x_chunks(mh / XH) {
            let b = i * XENTRY + XHD;
            mx = part_at(b);
            l = part_at(b + 1u);
        }
        x_cw[i] = mx;
        set_chunk_sum(i, l);
    }
    workgroupBarrier();
    // Per (row, head): the largest chunk max and the total over its live chunks.
    for (var mh = tid; mh < M * XH; mh += T) {
        let nc = x_chunks(mh / XH);
        let b = mh * XNC;
        var mx = XNEG;
        for (var c = 0u; c < nc; c++) {
            mx = max(mx, x_cw[b + c]);
        }
        var total = 0.0;
        for (var c = 0u; c < nc; c++) {
            total += exp(x_cw[b + c] - mx) * chunk_sum(b + c);
        }
        x_max[mh] = mx;
        x_inv[mh] = select(0.0, 1.0 / total, total > 0.0);
    }
    workgroupBarrier();
    // Every chunk's weight exp(max_c − max) / total, in parallel (dead chunks are masked where they are read).
    for (var i = tid; i < M * XH * XNC; i += T) {
        let mh = i / XNC;
        x_cw[i] = exp(x_cw[i] - x_max[mh]) * x_inv[mh];
    }
    workgroupBarrier();
    // x = Σ_c weight_c · V sums_c, four columns per invocation, eight chunks per round with all their loads in flight
    // (a loop of one chunk at a time waits out an L2 round trip per chunk). Chunks past the row's live ones hold
    // stale scratch: masked, not weighted by 0 (a stale NaN times 0 is NaN).
    for (var e = tid; e < M * XK4; e += T) {
        let m = e / XK4;
        let j = 4u * (e % XK4);
        let mh = m * XH + j / XHD;
        let nc = x_chunks(m);
        let src = mh * XNC * XENTRY + j % XHD;
        let wb = mh * XNC;
        var acc = vec4<f32>(0.0);
        for (var c = 0u; c < nc; c += 8u) {
            let b = src + c * XENTRY;
            let v0 = part4(b);
            let v1 = part4(b + XENTRY);
            let v2 = part4(b + 2u * XENTRY);
            let v3 = part4(b + 3u * XENTRY);
            let v4 = part4(b + 4u * XENTRY);
            let v5 = part4(b + 5u * XENTRY);
            let v6 = part4(b + 6u * XENTRY);
            let v7 = part4(b + 7u * XENTRY);
            let z = vec4<f32>(0.0);
            acc += select(z, x_cw[min(wb + c, wb + XNC - 1u)] * v0, c < nc);
            acc += select(z, x_cw[min(wb + c + 1u, wb + XNC - 1u)] * v1, c + 1u < nc);
            acc += select(z, x_cw[min(wb + c + 2u, wb + XNC - 1u)] * v2, c + 2u < nc);
            acc += select(z, x_cw[min(wb + c + 3u, wb + XNC - 1u)] * v3, c + 3u < nc);
            acc += select(z, x_cw[min(wb + c + 4u, wb + XNC - 1u)] * v4, c + 4u < nc);
            acc += select(z, x_cw[min(wb + c + 5u, wb + XNC - 1u)] * v5, c + 5u < nc);
            acc += select(z, x_cw[min(wb + c + 6u, wb + XNC - 1u)] * v6, c + 6u < nc);
            acc += select(z, x_cw[min(wb + c + 7u, wb + XNC - 1u)] * v7, c + 7u < nc);
        }
        x[e] = acc;
    }
    if first {
        // The new keys, staged after the chunk entries, into the caches at (seq, pos) unless pos lies past the cache.
        for (var m = 0u; m < M; m++) {
            let pos = att_qinfo[2u * m + 1u];
            let s = att_qinfo[2u * m];
            if x_visible(m) == 0u || pos >= att_seqs[2u * s + 1u] {
                continue;
            }
            for (var g = 0u; g < XKVH; g++) {
                let slot = M * XH * XNC * XENTRY + (m * XKVH + g) * 2u * XHD;
                let dst = (att_seqs[2u * s] + pos) * XKV_STRIDE + g * XHD;
                store_new_k(tid, dst + XK_COL, slot, 0.0);
                store_new_v(tid, dst + XV_COL, slot + XHD, 0.0);
            }
        }
    }
    workgroupBarrier();
}
