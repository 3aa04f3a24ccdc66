//! `shaders/cross_tables.wgsl`: a decoder step's cross-attention through per-text tables (issue 17).
//!
//! With x̂ = rmsnorm(x)·gain and, per query head h, q_h = W_q[h]·x̂, the scores q_h·k_s equal A_h[s]·x̂ with
//! A_h[s, k] = Σ_d K[s, h·hd + d]·W_q[h·hd + d, k]; likewise the output projection of Σ_s p_h[s]·v_s is
//! Σ_{h,s} B[:, (h, s)]·p_h[s] with B[n, (h, s)] = Σ_d W_o[n, h·hd + d]·V[s, h·hd + d]. A and B depend only on the
//! text, so they are made once per request (`build_query_table`, `build_output_table`: per head a product of a block
//! of keys or values, staged in workgroup memory, with the weights streamed once for the block) and a step runs two
//! dispatches (`cross_scores`, `cross_out`) instead of the query projection, the attention and the output projection.
//! Attention scale 1.0 and no RoPE (a rotated query cannot be folded: the route is for checkpoints without cross RoPE).
//!
//! Tables are stored in their weight's format (f16 pairs for `F16` weights, f32 for `F32`), computed in f32. Their
//! columns hold every text segment's (key, head) pairs at their real lengths (`CrossTablePlan::segment_columns`), so
//! a short segment (the unconditional row's single token) costs no padding to the longest.
use crate::gpu::{specialize, Dispatch, Gpu, GpuBuffer};
use crate::kernels::kv_cache::KvFormat;
use crate::kernels::wgsl::section;
use crate::kernels::{GpuMatrix, WeightFormat};

const SOURCE: &str = include_str!("../../../shaders/cross_tables.wgsl");
const FILE: &str = "shaders/cross_tables.wgsl";
/// Threads per workgroup of every entry point.
const WORKGROUP: u32 = 256;
/// Table rows (`cross_scores`) or outputs (`cross_out`) per step workgroup.
const OUTPUTS_PER_GROUP: u32 = 16;
/// Columns a segment's run is padded to (one 16-byte chunk of f16 values).
const COLUMN_ALIGN: u32 = 8;
/// Most keys a segment may have on this route, and most heads·keys (the step's workgroup memory holds a row's
/// probabilities: 2048 f32 = 8 KiB).
pub const MAX_KEYS: u32 = 128;
const MAX_SCORES: u32 = 2048;
/// Largest hidden size (`cross_scores` stages the normed row: 2048 f32 = 8 KiB).
const MAX_HIDDEN: u32 = 2048;
/// A builder entry that holds no key (it covers segment padding).
const NO_KEY: u32 = u32::MAX;
/// Entries per workgroup of the query-table builder (the output-table builder takes half as many, for two heads).
const QUERY_ENTRIES: u32 = 16;
const OUTPUT_ENTRIES: u32 = 8;

wgsl_params! {
    /// Uniform parameters of the table builders and the step kernels.
    struct Params {
        /// query rows of the step
        rows: u32,
        hidden: u32,
        heads: u32,
        /// heads / kv_heads: query head h reads key/value head h / n_rep
        n_rep: u32,
        head_dim: u32,
        /// table columns, a multiple of 8
        cols: u32,
        /// values per cross K/V row
        kv_stride: u32,
        /// first value of the V heads in a cross K/V row
        v_col: u32,
        /// words per weight row (builders)
        w_stride: u32,
        /// f32 per row of the score scratch
        score_stride: u32,
        /// builder entries (`CrossTablePlan::entries`)
        entries: u32,
        eps: f32,
    }
}

/// The cross-attention's shape, as the decoder and its cross K/V have it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrossShape {
    /// The decoder's hidden size (W_q's columns, W_o's rows).
    pub hidden: u32,
    pub heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    /// How the cross K/V buffers hold their values: `[tokens, 2·kv_heads·head_dim]` = [K heads | V heads].
    pub kv_format: KvFormat,
}

impl CrossShape {
    fn kv_stride(&self) -> u32 {
        2 * self.kv_heads * self.head_dim
    }
}

/// Where every text segment's table columns are, for one request (shared by all layers), and the GPU copies of it.
pub struct CrossTablePlan {
    pub shape: CrossShape,
    /// Per segment (first column, keys): the segment's column for key s and head h is first + s·heads + h.
    pub segment_columns: Vec<(u32, u32)>,
    /// Table columns: every segment's heads·keys, each run padded to a multiple of 8.
    pub cols: u32,
    /// The most keys of any segment (sizes the step's score scratch).
    pub max_keys: u32,
    /// Cross K/V rows the segments span (the end of the last one).
    pub tokens: u32,
    pub query_format: WeightFormat,
    pub output_format: WeightFormat,
    /// u32 (token offset, keys, first column, 0) per segment.
    segs: GpuBuffer,
    /// Builder entries: one per key of every segment and a few over each run's padding columns.
    entries: u32,
    /// u32 (token or `NO_KEY`, first column, end of the segment's columns, 0) per builder entry.
    entry_words: GpuBuffer,
}

/// One decoder layer's tables: A `[cols, hidden]` in `query_format`, B `[hidden, cols]` in `output_format`.
pub struct CrossTables {
    pub query: GpuBuffer,
    pub output: GpuBuffer,
}

/// A request's tables: the plan and one `CrossTables` per decoder layer.
pub struct CrossTableSet {
    pub plan: CrossTablePlan,
    pub layers: Vec<CrossTables>,
}

/// Bytes of a table of `values` values in `format` (F32 or F16).
fn table_bytes(format: WeightFormat, values: u64) -> u64 {
    match format {
        WeightFormat::F16 => values * 2,
        _ => values * 4,
    }
}

/// The plan for a text of `segments` (token offset, length) pairs, or None where this route does not apply (the
/// caller keeps the projections and the attention): weights other than F32 / F16, a segment longer than `MAX_KEYS`
/// keys (or heads·keys above 2048), a hidden size that is no multiple of 8 or above 2048, an odd head count (the
/// output-table builder writes two heads' columns a word), a head size whose builder block (16 keys × head_dim
/// f32) overflows workgroup memory, or tables larger than one storage binding. `w_q` is `[heads·head_dim, hidden]`,
/// `w_o` `[hidden, heads·head_dim]`.
pub fn plan_cross_tables(gpu: &Gpu, shape: CrossShape, segments: &[(u32, u32)], w_q: &GpuMatrix, w_o: &GpuMatrix) -> Option<CrossTablePlan> {
    let CrossShape { hidden, heads, kv_heads, head_dim, .. } = shape;
    let inner = heads * head_dim;
    assert!(w_q.rows == inner && w_q.cols == hidden, "cross tables: W_q is {}×{}, expected {inner}×{hidden}", w_q.rows, w_q.cols);
    assert!(w_o.rows == hidden && w_o.cols == inner, "cross tables: W_o is {}×{}, expected {hidden}×{inner}", w_o.rows, w_o.cols);
    assert!(kv_heads > 0 && heads.is_multiple_of(kv_heads), "cross tables: heads must be a multiple of kv_heads");
    let plain = |f: WeightFormat| matches!(f, WeightFormat::F32 | WeightFormat::F16);
    let max_keys = segments.iter().map(|s| s.1).max().unwrap_or(0);
    if !plain(w_q.format) || !plain(w_o.format) || head_dim == 0 || !head_dim.is_multiple_of(2) || heads > WORKGROUP || !heads.is_multiple_of(2) {
        return None;
    }
    if QUERY_ENTRIES as u64 * head_dim as u64 * 4 > gpu.limits.max_compute_workgroup_storage_size as u64 {
        return None;
    }
    if hidden == 0 || !hidden.is_multiple_of(COLUMN_ALIGN) || hidden > MAX_HIDDEN || max_keys > MAX_KEYS || heads * max_keys > MAX_SCORES {
        return None;
    }
    if shape.kv_format == KvFormat::Q8 && !shape.kv_format.supports(head_dim) {
        return None;
    }
    let mut segment_columns = Vec::with_capacity(segments.len());
    let mut cols = 0u64;
    for &(_, keys) in segments {
        segment_columns.push((cols as u32, keys));
        cols += (keys as u64 * heads as u64).next_multiple_of(COLUMN_ALIGN as u64);
    }
    let values = cols * hidden as u64;
    let largest = table_bytes(w_q.format, values).max(table_bytes(w_o.format, values));
    if values >= 1 << 31 || largest > gpu.limits.max_storage_buffer_binding_size {
        return None;
    }
    let cols = cols as u32;
    let mut entry_words = Vec::new();
    let mut seg_words = Vec::with_capacity(segments.len() * 4);
    for (&(offset, keys), &(first, _)) in segments.iter().zip(&segment_columns) {
        let end = first + (keys * heads).next_multiple_of(COLUMN_ALIGN);
        for s in 0..keys {
            entry_words.extend_from_slice(&[offset + s, first + s * heads, end, 0]);
        }
        // Padding entries (zeros) from the run's last key to its end, `heads` columns each.
        let mut pad = first + keys * heads;
        while pad < end {
            entry_words.extend_from_slice(&[NO_KEY, pad, end, 0]);
            pad += heads;
        }
        seg_words.extend_from_slice(&[offset, keys, first, 0]);
    }
    let entries = (entry_words.len() / 4) as u32;
    if entries.div_ceil(OUTPUT_ENTRIES) > gpu.limits.max_compute_workgroups_per_dimension {
        return None;
    }
    if entry_words.is_empty() {
        entry_words.extend_from_slice(&[NO_KEY, 0, 0, 0]);
    }
    Some(CrossTablePlan {
        shape,
        segment_columns,
        cols,
        max_keys,
        tokens: segments.iter().map(|&(o, l)| o + l).max().unwrap_or(0),
        query_format: w_q.format,
        output_format: w_o.format,
        segs: gpu.upload("cross_tables.segs", &seg_words),
        entries,
        entry_words: gpu.upload("cross_tables.entries", &entry_words),
    })
}

impl CrossTablePlan {
    /// Bytes of the query table A.
    pub fn query_bytes(&self) -> u64 {
        table_bytes(self.query_format, self.cols as u64 * self.shape.hidden as u64)
    }

    /// Bytes of the output table B.
    pub fn output_bytes(&self) -> u64 {
        table_bytes(self.output_format, self.cols as u64 * self.shape.hidden as u64)
    }

    /// f32 per query row of the score scratch `cross_scores` writes and `cross_out` reads.
    pub fn score_stride(&self) -> u32 {
        self.shape.heads * self.max_keys
    }

    /// The tables of one layer, in buffers from `gpu.reusable_buffer` under `label`.a / `label`.b (every word is
    /// written by the builders), and the two dispatches that fill them from the layer's cross K/V and weights.
    pub fn build(&self, gpu: &Gpu, label: &str, kv: &GpuBuffer, w_q: &GpuMatrix, w_o: &GpuMatrix) -> (Vec<Dispatch>, CrossTables) {
        let tables = CrossTables { query: gpu.reusable_buffer(&format!("{label}.a"), self.query_bytes()), output: gpu.reusable_buffer(&format!("{label}.b"), self.output_bytes()) };
        let ds = vec![build_query_table(gpu, self, kv, w_q, &tables.query), build_output_table(gpu, self, kv, w_o, &tables.output)];
        (ds, tables)
    }

    fn params(&self, rows: u32, w_stride: u32, eps: f32) -> Params {
        let s = &self.shape;
        Params {
            rows,
            hidden: s.hidden,
            heads: s.heads,
            n_rep: s.heads / s.kv_heads,
            head_dim: s.head_dim,
            cols: self.cols,
            kv_stride: s.kv_stride(),
            v_col: s.kv_stride() / 2,
            w_stride,
            score_stride: self.score_stride(),
            entries: self.entries,
            eps,
        }
    }
}

/// WGSL of the table word type.
fn table_word(format: WeightFormat) -> &'static str {
    match format {
        WeightFormat::F16 => "u32",
        _ => "f32",
    }
}

/// The builders' weight access and table store: `load_w2(row, col)` (col even: values col and col + 1) and
/// `store_pair(e, v)` (table values e, e + 1; e even).
fn table_access(format: WeightFormat) -> &'static str {
    match format {
        WeightFormat::F16 => {
            "fn load_w2(row: u32, col: u32) -> vec2<f32> {\n    return unpack2x16float(w[row * p.w_stride + col / 2u]);\n}\n\n\
             fn store_pair(e: u32, v: vec2<f32>) {\n    table[e / 2u] = pack2x16float(v);\n}\n"
        }
        _ => {
            "fn load_w2(row: u32, col: u32) -> vec2<f32> {\n    let i = row * p.w_stride + col;\n    return vec2<f32>(w[i], w[i + 1u]);\n}\n\n\
             fn store_pair(e: u32, v: vec2<f32>) {\n    table[e] = v.x;\n    table[e + 1u] = v.y;\n}\n"
        }
    }
}

/// The step kernels' `table_dot(i, c)`: table chunk i (16 bytes) dotted with staged chunk c.
fn table_dot(format: WeightFormat) -> &'static str {
    match format {
        WeightFormat::F16 => {
            "fn table_dot(i: u32, c: u32) -> f32 {\n    let t = table[i];\n    \
             let lo = vec4<f32>(unpack2x16float(t.x), unpack2x16float(t.y));\n    \
             let hi = vec4<f32>(unpack2x16float(t.z), unpack2x16float(t.w));\n    \
             return dot(lo, staged4(2u * c)) + dot(hi, staged4(2u * c + 1u));\n}\n"
        }
        _ => "fn table_dot(i: u32, c: u32) -> f32 {\n    return dot(table[i], staged4(c));\n}\n",
    }
}

/// Values per 16-byte chunk of a table.
fn chunk_values(format: WeightFormat) -> u32 {
    match format {
        WeightFormat::F16 => 8,
        _ => 4,
    }
}

/// Which builder: the query table from W_q and the keys, or the output table from W_o and the values.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Builder {
    Query,
    Output,
}

fn build_table(gpu: &Gpu, builder: Builder, plan: &CrossTablePlan, kv: &GpuBuffer, w: &GpuMatrix, table: &GpuBuffer) -> Dispatch {
    let s = &plan.shape;
    let (format, entry, bytes) = match builder {
        Builder::Query => (plan.query_format, "build_query_table", plan.query_bytes()),
        Builder::Output => (plan.output_format, "build_output_table", plan.output_bytes()),
    };
    assert_eq!(w.format, format, "cross tables: the weight's format changed since the plan");
    assert!(table.size >= bytes, "cross tables: table buffer holds {} bytes, {bytes} needed", table.size);
    let needed = s.kv_format.bytes(plan.tokens as u64 * s.kv_stride() as u64, s.head_dim);
    assert!(kv.size >= needed, "cross tables: cross K/V of {} bytes holds fewer than the segments' {} tokens", kv.size, plan.tokens);
    let key = format!("cross_tables.{entry}.{}.{}.hd{}", format.name(), s.kv_format.name(), s.head_dim);
    let pipeline = gpu.pipeline(&key, entry, || build_source(format, s.kv_format, s.head_dim));
    let params = plan.params(0, w.row_stride_words(), 0.0);
    let grid = match builder {
        Builder::Query => [s.hidden.div_ceil(2 * WORKGROUP), plan.entries.div_ceil(QUERY_ENTRIES), s.heads],
        Builder::Output => [s.hidden.div_ceil(WORKGROUP), plan.entries.div_ceil(OUTPUT_ENTRIES), s.heads / 2],
    };
    gpu.dispatch(&pipeline, &params, &[kv, &w.data, &plan.entry_words, table], grid)
}

/// Table A of one layer into `table`: A[col, k] = Σ_d K[token, g·hd + d]·W_q[h·hd + d, k] for the (token, h) of
/// column col (zeros for padding columns); `kv` is the layer's cross K/V in `plan.shape.kv_format`.
pub fn build_query_table(gpu: &Gpu, plan: &CrossTablePlan, kv: &GpuBuffer, w_q: &GpuMatrix, table: &GpuBuffer) -> Dispatch {
    build_table(gpu, Builder::Query, plan, kv, w_q, table)
}

/// Table B of one layer into `table`: B[n, col] = Σ_d W_o[n, h·hd + d]·V[token, g·hd + d].
pub fn build_output_table(gpu: &Gpu, plan: &CrossTablePlan, kv: &GpuBuffer, w_o: &GpuMatrix, table: &GpuBuffer) -> Dispatch {
    build_table(gpu, Builder::Output, plan, kv, w_o, table)
}

/// The step's scores: for each of `rows` query rows r (segment `qinfo[2r]`, u32 (segment, position) pairs),
/// scores[r·score_stride + s·heads + h] = A_h[s]·(rmsnorm(x[r])·gain) for the keys s of its segment (the rest of the
/// row is left as it is). x: f32 `[rows, hidden]`; gain: f32 `[hidden]`; scores: f32 `[rows, plan.score_stride()]`.
#[allow(clippy::too_many_arguments)]
pub fn cross_scores(gpu: &Gpu, plan: &CrossTablePlan, tables: &CrossTables, x: &GpuBuffer, gain: &GpuBuffer, eps: f32, qinfo: &GpuBuffer, scores: &GpuBuffer, rows: u32) -> Dispatch {
    let s = &plan.shape;
    check_rows(plan, qinfo, rows);
    assert!(x.size >= rows as u64 * s.hidden as u64 * 4, "cross_scores: x holds fewer than {rows} × {} f32", s.hidden);
    assert!(gain.size >= s.hidden as u64 * 4, "cross_scores: gain holds fewer than {} f32", s.hidden);
    assert!(scores.size >= rows as u64 * plan.score_stride() as u64 * 4, "cross_scores: score scratch too small");
    assert!(tables.query.size >= plan.query_bytes(), "cross_scores: query table too small");
    let format = plan.query_format;
    let key = format!("cross_tables.cross_scores.{}.h{}", format.name(), s.hidden);
    let pipeline = gpu.pipeline(&key, "cross_scores", || scores_source(format, s.hidden));
    let groups = (s.heads * plan.max_keys).div_ceil(OUTPUTS_PER_GROUP);
    gpu.dispatch(&pipeline, &plan.params(rows, 0, eps), &[x, gain, qinfo, &plan.segs, &tables.query, scores], [groups, rows, 1])
}

/// The step's output: for each of `rows` query rows r, x[r] += B · p with p the per-head softmax of the row's scores
/// (`cross_scores`) over its segment's keys; a row whose segment has no key is left as it is (attention over no key
/// is zero).
pub fn cross_out(gpu: &Gpu, plan: &CrossTablePlan, tables: &CrossTables, scores: &GpuBuffer, qinfo: &GpuBuffer, x: &GpuBuffer, rows: u32) -> Dispatch {
    let s = &plan.shape;
    check_rows(plan, qinfo, rows);
    assert!(x.size >= rows as u64 * s.hidden as u64 * 4, "cross_out: x holds fewer than {rows} × {} f32", s.hidden);
    assert!(scores.size >= rows as u64 * plan.score_stride() as u64 * 4, "cross_out: score scratch too small");
    assert!(tables.output.size >= plan.output_bytes(), "cross_out: output table too small");
    let format = plan.output_format;
    let key = format!("cross_tables.cross_out.{}.heads{}", format.name(), s.heads);
    let pipeline = gpu.pipeline(&key, "cross_out", || out_source(format, s.heads));
    let groups = s.hidden.div_ceil(OUTPUTS_PER_GROUP);
    gpu.dispatch(&pipeline, &plan.params(rows, 0, 0.0), &[scores, qinfo, &plan.segs, &tables.output, x], [groups, rows, 1])
}

/// The table builders' shader (entry points `build_query_table`, `build_output_table`) for tables in `format` from
/// cross K/V in `kv` with heads of `head_dim`.
pub(crate) fn build_source(format: WeightFormat, kv: KvFormat, head_dim: u32) -> String {
    specialize(
        section(SOURCE, FILE, "build"),
        &[
            ("PARAMS", Params::wgsl()),
            ("KV_WORD", kv.wgsl_word().to_string()),
            ("TABLE_WORD", table_word(format).to_string()),
            ("HEAD_DIM", head_dim.to_string()),
            ("LOAD_KV", kv.wgsl_load("load_kv", "kv", head_dim)),
            ("TABLE_ACCESS", table_access(format).to_string()),
        ],
    )
}

/// `cross_scores`' shader for a query table in `format` and a decoder of `hidden` columns.
pub(crate) fn scores_source(format: WeightFormat, hidden: u32) -> String {
    specialize(
        &[section(SOURCE, FILE, "scores"), section(SOURCE, FILE, "team_dots")].concat(),
        &[
            ("PARAMS", Params::wgsl()),
            ("TABLE_WORD", table_word(format).to_string()),
            ("HIDDEN4", (hidden / 4).to_string()),
            ("CHUNKS", (hidden / chunk_values(format)).to_string()),
            ("TABLE_DOT", table_dot(format).to_string()),
        ],
    )
}

/// `cross_out`'s shader for an output table in `format` and `heads` cross-attention heads.
pub(crate) fn out_source(format: WeightFormat, heads: u32) -> String {
    // Threads per head in the softmax: the largest power of two that fits the workgroup.
    let head_lanes = 1u32 << (WORKGROUP / heads).ilog2();
    specialize(
        &[section(SOURCE, FILE, "out"), section(SOURCE, FILE, "team_dots")].concat(),
        &[
            ("PARAMS", Params::wgsl()),
            ("TABLE_WORD", table_word(format).to_string()),
            ("HEADS", heads.to_string()),
            ("HEAD_LANES", head_lanes.to_string()),
            ("CHUNK_VALUES", chunk_values(format).to_string()),
            ("TABLE_DOT", table_dot(format).to_string()),
        ],
    )
}

fn check_rows(plan: &CrossTablePlan, qinfo: &GpuBuffer, rows: u32) {
    assert!(rows <= 65535, "cross tables: {rows} query rows exceed one grid dimension");
    assert!(qinfo.size >= rows as u64 * 8, "cross tables: qinfo holds fewer than {rows} (segment, position) pairs");
    assert!(!plan.segment_columns.is_empty() || rows == 0, "cross tables: no segment for the rows to read");
}
