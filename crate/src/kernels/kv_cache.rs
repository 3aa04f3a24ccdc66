//! `shaders/kv_cache.wgsl`: in-place KV-cache update that writes only the new rows, RoPE applied on the way.
use crate::gpu::{grid_1d, specialize, Dispatch, Gpu, GpuBuffer, KernelVariant};

const SOURCE: &str = include_str!("../../../shaders/kv_cache.wgsl");
const WORKGROUP: u32 = 256;

wgsl_params! {
    /// Uniform parameters of the KV-cache writes and packs.
    struct Params {
        rows: u32,
        row_stride: u32,
        k_col: u32,
        v_col: u32,
        width: u32,
        max_len: u32,
        /// workgroups along x of the 2-D grid (flattened index)
        groups_x: u32,
        /// query heads before the key heads in each source row
        q_heads: u32,
        head_dim: u32,
        /// rows of the cos/sin tables
        max_pos: u32,
        _pad0: u32,
        _pad1: u32,
    }
}

/// How a KV cache holds its values. `F16` halves the caches (Dia's full-length caches for a 1000-byte text: 1.06 GB
/// in f32), at f16's rounding of every cached key and value; `tests/parity.rs` measures what that does to the
/// logits. F16 values are packed in pairs into u32 words (element 2i in the low half of word i), so browsers
/// without `shader-f16` read them too.
///
/// `Q8` quarters them (plus one word per head): each head's `head_dim` values at one position (a block: the cache
/// layouts keep a head's values contiguous and head-aligned) are stored as `head_dim / 4` words of signed bytes
/// (value j in byte j % 4 of word j / 4, two's complement), then one f32 scale word: value = q · scale, with
/// scale = max |v| / 127 over the block and q = round(v / scale) in [-127, 127] (a block of zeros has scale 0).
/// Writers quantize a whole block at once: `rope_kv_write` and `pack_kv` run a workgroup per block, the appending
/// decode's combine (`attention::attention_decode_appending`) reduces a block's maximum over its workgroup and
/// then writes the block (`wgsl_store_head`), all with the same arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KvFormat {
    #[default]
    F32,
    F16,
    Q8,
}

/// Largest head_dim a `Q8` block may have (the writers' workgroup holds one block).
pub const Q8_MAX_HEAD_DIM: u32 = 256;

impl KvFormat {
    pub const ALL: [KvFormat; 3] = [KvFormat::F32, KvFormat::F16, KvFormat::Q8];

    pub fn name(self) -> &'static str {
        match self {
            KvFormat::F32 => "f32",
            KvFormat::F16 => "f16",
            KvFormat::Q8 => "q8",
        }
    }

    /// Bytes of a cache holding `values` values of heads of `head_dim` (a multiple of it for `Q8`: whole blocks).
    pub fn bytes(self, values: u64, head_dim: u32) -> u64 {
        match self {
            KvFormat::F32 => values * 4,
            KvFormat::F16 => values * 2,
            KvFormat::Q8 => values.div_ceil(head_dim as u64) * (head_dim as u64 + 4),
        }
    }

    /// Whether caches of heads of `head_dim` can use this format: f16 pairs of a rotated key are written whole by
    /// one thread, which needs head_dim % 4 == 0; a q8 block is whole words and one writer workgroup.
    pub fn supports(self, head_dim: u32) -> bool {
        match self {
            KvFormat::F32 => head_dim.is_multiple_of(2),
            KvFormat::F16 => head_dim.is_multiple_of(4),
            KvFormat::Q8 => head_dim.is_multiple_of(4) && head_dim > 0 && head_dim <= Q8_MAX_HEAD_DIM,
        }
    }

    /// The WGSL type of a cache word.
    pub(crate) fn wgsl_word(self) -> &'static str {
        match self {
            KvFormat::F32 => "f32",
            KvFormat::F16 | KvFormat::Q8 => "u32",
        }
    }

    /// WGSL `fn <name>(i: u32) -> f32`: value i of storage array `var` (0 past its end), for heads of `head_dim`.
    pub(crate) fn wgsl_load(self, name: &str, var: &str, head_dim: u32) -> String {
        match self {
            KvFormat::Q8 => {
                let (words, stride) = (head_dim / 4, head_dim / 4 + 1);
                format!(
                    "fn {name}(i: u32) -> f32 {{\n    let base = (i / {head_dim}u) * {stride}u;\n    let j = i % {head_dim}u;\n    if base + {words}u < arrayLength(&{var}) {{\n        let q = extractBits(bitcast<i32>({var}[base + j / 4u]), (j & 3u) * 8u, 8u);\n        return f32(q) * bitcast<f32>({var}[base + {words}u]);\n    }}\n    return 0.0;\n}}\n"
                )
            }
            KvFormat::F32 => format!("fn {name}(i: u32) -> f32 {{\n    if i < arrayLength(&{var}) {{ return {var}[i]; }}\n    return 0.0;\n}}\n"),
            // The wanted half shifted down and converted alone (one conversion, not two and a select: H100 decode
            // 414 → 423 steps/s with f16 caches).
            KvFormat::F16 => format!(
                "fn {name}(i: u32) -> f32 {{\n    let w = i / 2u;\n    if w < arrayLength(&{var}) {{\n        return unpack2x16float({var}[w] >> ((i & 1u) * 16u)).x;\n    }}\n    return 0.0;\n}}\n"
            ),
        }
    }

    /// `Q8` only: WGSL `fn <name>_word(i: u32, w: u32) -> vec4<f32>`, the 4 signed bytes of word w (< head_dim / 4) of
    /// the block holding value i, unscaled, and `fn <name>_scale(i: u32) -> f32`, that block's scale (both 0 past the
    /// array's end). A reader of whole words loads each word once and the scale once per block, where `wgsl_load`
    /// loads both per value.
    pub(crate) fn wgsl_q8_words(name: &str, var: &str, head_dim: u32) -> String {
        let (words, stride) = (head_dim / 4, head_dim / 4 + 1);
        format!(
            "fn {name}_word(i: u32, w: u32) -> vec4<f32> {{\n    let base = (i / {head_dim}u) * {stride}u;\n    if base + {words}u < arrayLength(&{var}) {{\n        let s = vec4<i32>(bitcast<i32>({var}[base + w]));\n        return vec4<f32>((s << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));\n    }}\n    return vec4<f32>(0.0);\n}}\n\nfn {name}_scale(i: u32) -> f32 {{\n    let base = (i / {head_dim}u) * {stride}u;\n    if base + {words}u < arrayLength(&{var}) {{\n        return bitcast<f32>({var}[base + {words}u]);\n    }}\n    return 0.0;\n}}\n"
        )
    }

    /// WGSL `fn <name>(d: u32, a: f32, b: f32, two: bool)`: values d (even) and, if `two`, d + 1 of storage array `var`
    /// (f16 pairs are always written whole). `Q8` has none (blocks are written whole: `wgsl_store_head`): an empty
    /// function, so the `plain` section's module still builds for every format (`rope_kv_write` takes section `q8`
    /// for q8 caches).
    pub(crate) fn wgsl_store_pair(self, name: &str, var: &str) -> String {
        match self {
            KvFormat::Q8 => format!("fn {name}(d: u32, a: f32, b: f32, two: bool) {{}}\n"),
            KvFormat::F32 => format!(
                "fn {name}(d: u32, a: f32, b: f32, two: bool) {{\n    if d < arrayLength(&{var}) {{ {var}[d] = a; }}\n    if two && d + 1u < arrayLength(&{var}) {{ {var}[d + 1u] = b; }}\n}}\n"
            ),
            KvFormat::F16 => format!(
                "fn {name}(d: u32, a: f32, b: f32, two: bool) {{\n    let w = d / 2u;\n    if w < arrayLength(&{var}) {{ {var}[w] = pack2x16float(vec2<f32>(a, b)); }}\n}}\n"
            ),
        }
    }

    /// WGSL `fn <name>(lid: u32, i: u32, src: u32, scale: f32)`: one head's `head_dim` values, `<read>(src + d)` for
    /// d < head_dim (`read` a WGSL function of the caller's module), into storage array `var` from value i
    /// (head-aligned), by invocations lid < `threads` of one workgroup together. No barriers: callers may run it
    /// under non-uniform control flow. F32 and F16 write a pair of values per invocation and round (`scale`
    /// unused). `Q8` writes the whole block with the caller's `scale` (the block's max |v| / 127, which the caller
    /// reduces in uniform control flow): words lid, lid + threads, … (the last word is the scale), rounded by
    /// `wgsl_q8_word` as `rope_kv_write` rounds, so the same values give the bytes it writes.
    pub(crate) fn wgsl_store_head(self, name: &str, var: &str, head_dim: u32, read: &str, threads: u32) -> String {
        match self {
            KvFormat::F32 | KvFormat::F16 => {
                // Pairs of values (head_dim is even; an f16 pair is one word).
                let pair = format!("{name}_pair");
                self.wgsl_store_pair(&pair, var)
                    + &format!(
                        "fn {name}(lid: u32, i: u32, src: u32, scale: f32) {{\n    for (var d = 2u * lid; d < {head_dim}u; d += {}u) {{\n        {pair}(i + d, {read}(src + d), {read}(src + d + 1u), true);\n    }}\n}}\n",
                        2 * threads
                    )
            }
            KvFormat::Q8 => {
                let (words, stride) = (head_dim / 4, head_dim / 4 + 1);
                format!(
                    "fn {name}(lid: u32, i: u32, src: u32, scale: f32) {{
    let base = (i / {head_dim}u) * {stride}u;
    if base + {words}u >= arrayLength(&{var}) {{
        return;
    }}
    for (var w = lid; w <= {words}u; w += {threads}u) {{
        var word = bitcast<u32>(scale);
        if w < {words}u {{
            word = {name}_word(src, w, scale);
        }}
        {var}[base + w] = word;
    }}
}}
"
                ) + &KvFormat::wgsl_q8_word(&format!("{name}_word"), read)
            }
        }
    }
}

impl KvFormat {
    /// WGSL `fn <name>(base: u32, w: u32, scale: f32) -> u32`: word w of a q8 block, the values `<read>(base + 4w)` ..
    /// `<read>(base + 4w + 3)` as signed bytes q = round(v / scale) clamped to [-127, 127] (0 where the scale is 0).
    /// The one definition of q8's rounding: `rope_kv_write_q8` and `pack_q8` (`shaders/kv_cache.wgsl`, reading their
    /// workgroup's staged values) and the appending decode's combine (`wgsl_store_head`) all take it.
    pub(crate) fn wgsl_q8_word(name: &str, read: &str) -> String {
        format!(
            "fn {name}(base: u32, w: u32, scale: f32) -> u32 {{
    var word = 0u;
    for (var k = 0u; k < 4u; k++) {{
        var q = 0.0;
        if scale > 0.0 {{
            q = clamp(round({read}(base + 4u * w + k) / scale), -127.0, 127.0);
        }}
        word |= (bitcast<u32>(i32(q)) & 0xffu) << (8u * k);
    }}
    return word;
}}
"
        )
    }
}

impl std::fmt::Display for KvFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KvFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<KvFormat, String> {
        KvFormat::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| format!("unknown KV-cache format `{s}` (expected f32, f16 or q8)"))
    }
}

/// The kernels of `shaders/kv_cache.wgsl`, each a pipeline: the WGSL generator's input and the pipeline-cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvCacheKernel {
    /// `rope_kv_write` into f32 or f16 caches (section `plain`).
    RopeKvWrite(KvFormat),
    /// `rope_kv_write_q8`: a workgroup per head, each K and V head one q8 block (section `q8`).
    RopeKvWriteQ8,
    /// `pack_q8` (section `q8`).
    PackQ8,
    /// `pack_f16` (section `plain`, f16 caches).
    PackF16,
}

impl KernelVariant for KvCacheKernel {
    fn entry_point(&self) -> &'static str {
        match self {
            KvCacheKernel::RopeKvWrite(_) => "rope_kv_write",
            KvCacheKernel::RopeKvWriteQ8 => "rope_kv_write_q8",
            KvCacheKernel::PackQ8 => "pack_q8",
            KvCacheKernel::PackF16 => "pack_f16",
        }
    }

    fn source(&self) -> String {
        match *self {
            KvCacheKernel::RopeKvWrite(format) => shader(format),
            KvCacheKernel::PackF16 => shader(KvFormat::F16),
            KvCacheKernel::RopeKvWriteQ8 | KvCacheKernel::PackQ8 => q8_shader(),
        }
    }
}

fn shader(format: KvFormat) -> String {
    let store = [format.wgsl_store_pair("store_pair_k", "k_cache"), format.wgsl_store_pair("store_pair_v", "v_cache")].concat();
    // Cache values per word, for the bound check of a (seq, pos) row (q8: the check uses whole blocks instead).
    let per_word = match format {
        KvFormat::F32 => 1,
        KvFormat::F16 => 2,
        KvFormat::Q8 => 4,
    };
    let store = format!("const VALUES_PER_WORD: u32 = {per_word}u;\n{store}");
    let src = [section("common"), section("plain")].concat();
    specialize(&src, &[("PARAMS", Params::wgsl()), ("KV_WORD", format.wgsl_word().to_string()), ("STORE_PAIR", store)])
}

fn q8_shader() -> String {
    let src = [section("common"), section("q8")].concat();
    specialize(
        &src,
        &[
            ("PARAMS", Params::wgsl()),
            ("KV_WORD", KvFormat::Q8.wgsl_word().to_string()),
            ("MAX_HD", Q8_MAX_HEAD_DIM.to_string()),
            ("BLOCK_WORD", KvFormat::wgsl_q8_word("block_word", "staged")),
        ],
    )
}

/// The text of one `//== section: <name>` of `shaders/kv_cache.wgsl` (up to the next section).
fn section(name: &str) -> &'static str {
    crate::kernels::wgsl::section(SOURCE, "kv_cache.wgsl", name)
}

/// RoPE and the cache write in one dispatch, for source rows laid out [Q heads | K heads | V] (the fused
/// projection, row stride `row_stride`, `q_heads` query heads and `width / head_dim` key heads of `head_dim`):
/// rotates Q in place and writes the rotated K and the V of row m to (seq, pos) = (qinfo[2m], qinfo[2m+1])
/// of the caches (held in `format`), as `rope` followed by a plain copy would (K is not written back to the
/// source). cos/sin are `rope::rope_tables` for head_dim; a position beyond them is left unrotated.
#[allow(clippy::too_many_arguments)]
pub fn rope_kv_write(
    gpu: &Gpu, qkv: &GpuBuffer, qinfo: &GpuBuffer, cos: &GpuBuffer, sin: &GpuBuffer, k_cache: &GpuBuffer, v_cache: &GpuBuffer,
    rows: u32, row_stride: u32, q_heads: u32, head_dim: u32, width: u32, max_len: u32, format: KvFormat,
) -> Dispatch {
    assert!(width > 0 && max_len > 0, "rope_kv_write: width and max_len must be positive");
    assert!(format.supports(head_dim) && width.is_multiple_of(head_dim), "rope_kv_write: head_dim {head_dim} must suit {format} caches and divide width {width}");
    assert!((q_heads * head_dim + 2 * width) <= row_stride, "rope_kv_write: Q, K and V run past the row stride");
    assert_eq!(cos.size, sin.size, "rope_kv_write: cos and sin tables differ in size");
    let max_pos = (cos.size / 4 / (head_dim / 2) as u64) as u32;
    let k_col = q_heads * head_dim;
    if format == KvFormat::Q8 {
        // A workgroup per (row, head): Q heads rotated in place, each K and V head quantized as one block.
        let blocks = rows * (q_heads + 2 * width / head_dim);
        let pipeline = gpu.variant_pipeline(KvCacheKernel::RopeKvWriteQ8);
        let grid = grid_1d(blocks.max(1));
        let params = Params { rows, row_stride, k_col, v_col: k_col + width, width, max_len, groups_x: grid[0], q_heads, head_dim, max_pos, _pad0: 0, _pad1: 0 };
        return gpu.dispatch(&pipeline, &params, &[qkv, qinfo, k_cache, v_cache, cos, sin], grid);
    }
    let heads = q_heads + width / head_dim;
    let per_row = heads * (head_dim / 2).div_ceil(2) + width / 2;
    let pipeline = gpu.variant_pipeline(KvCacheKernel::RopeKvWrite(format));
    let grid = grid_1d((rows as u64 * per_row as u64).div_ceil(WORKGROUP as u64) as u32);
    let params = Params { rows, row_stride, k_col, v_col: k_col + width, width, max_len, groups_x: grid[0], q_heads, head_dim, max_pos, _pad0: 0, _pad1: 0 };
    gpu.dispatch(&pipeline, &params, &[qkv, qinfo, k_cache, v_cache, cos, sin], grid)
}

/// `values` f32 values of `src` (whole heads of `head_dim`) into a cache of `format` in `dst`, for caches written by
/// other kernels (the cross-attention K/V): `pack_f16` for `F16`, one q8 block per head for `Q8`. Panics for `F32`
/// (nothing to pack).
pub fn pack_kv(gpu: &Gpu, src: &GpuBuffer, dst: &GpuBuffer, values: u32, head_dim: u32, format: KvFormat) -> Dispatch {
    match format {
        KvFormat::F16 => pack_f16(gpu, src, dst, values),
        KvFormat::Q8 => {
            assert!(format.supports(head_dim) && values.is_multiple_of(head_dim), "pack_kv: {values} values are no whole q8 blocks of {head_dim}");
            assert!(src.size >= values as u64 * 4 && dst.size >= format.bytes(values as u64, head_dim), "pack_kv: buffers too small for {values} values");
            let pipeline = gpu.variant_pipeline(KvCacheKernel::PackQ8);
            let grid = grid_1d((values / head_dim).max(1));
            let params = Params { rows: values, row_stride: 0, k_col: 0, v_col: 0, width: 0, max_len: 0, groups_x: grid[0], q_heads: 0, head_dim, max_pos: 0, _pad0: 0, _pad1: 0 };
            gpu.dispatch(&pipeline, &params, &[src, dst], grid)
        }
        KvFormat::F32 => panic!("pack_kv: f32 caches are written directly"),
    }
}

/// `values` f32 values of `src` into f16 pairs in `dst` (word i = values 2i, 2i + 1; an odd count pads with 0).
pub fn pack_f16(gpu: &Gpu, src: &GpuBuffer, dst: &GpuBuffer, values: u32) -> Dispatch {
    assert!(src.size >= values as u64 * 4 && dst.size >= values.div_ceil(2) as u64 * 4, "pack_f16: buffers too small for {values} values");
    let pipeline = gpu.variant_pipeline(KvCacheKernel::PackF16);
    let grid = grid_1d(values.div_ceil(2).div_ceil(WORKGROUP).max(1));
    let params = Params { rows: values, row_stride: 0, k_col: 0, v_col: 0, width: 0, max_len: 0, groups_x: grid[0], q_heads: 0, head_dim: 0, max_pos: 0, _pad0: 0, _pad1: 0 };
    gpu.dispatch(&pipeline, &params, &[src, dst], grid)
}
