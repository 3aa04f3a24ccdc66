//! `shaders/sampling.wgsl`: GPU-side CFG + sampling + Dia's EOS/delay rules; writes next step's tokens.
//!
//! Per decoder step two dispatches follow the logits in the same compute pass:
//! 1. `select_token`, one workgroup per (item, channel): CFG filter (top-k of the guided logits by radix
//!    select, ties to the lower id), temperature, EOS channel filter, top-p, then argmax or a multinomial
//!    draw from a counter-based RNG;
//! 2. `advance`, one workgroup: the EOS delay pattern, per-channel finished/PAD, the delay-mask override,
//!    and the outputs (codes row, next tokens, positions, status).
//!
//! This is transformers' Dia generation (docs/model.md §4.4–4.7) step for step. The CPU never
//! waits: the row index ℓ lives in the status buffer, and steps recorded after the end change nothing.
//! The sampling top-k warper is not run: it uses the CFG filter's k, and at most k ids survive that filter,
//! so it can never drop one.
//!
//! Edge cases: a row left with no id (k so small that only PAD/BOS made the CFG top-k) produces id 0, as
//! an argmax taking the first maximum gives on an all −inf row; k = vocab keeps every id with its conditional value (HF's
//! `top_k=None`, which returns the guided logits themselves, is not offered). Top-p costs O(n²/256) per row
//! for n candidates (n ≤ k): fast for the usual k ≤ 256, correct but slower for larger k.
use crate::gpu::{grid_1d, specialize, Dispatch, Gpu, GpuBuffer, KernelVariant, Reduction, SUBGROUPS_MARKER};

const SHADER: &str = include_str!("../../../shaders/sampling.wgsl");
const WORKGROUP: u32 = 256;
/// Largest vocabulary the workgroup-memory candidate lists hold (6 ids per invocation, 15 KiB).
pub const MAX_VOCAB: u32 = 6 * WORKGROUP;

/// Shapes and special ids of the sampler.
pub struct SamplerShape {
    pub batch: u32,
    pub channels: u32,
    pub vocab: u32,
    /// Per-channel delay of the delay pattern (Dia: 0, 8, 9, …, 15).
    pub delay: Vec<u32>,
    pub eos: u32,
    pub pad: u32,
    /// The random draws' index of item 0: item b draws as item `first_item + b` (`counter_uniform`), so a list of
    /// texts generated in batches of any size draws the same numbers for each text.
    pub first_item: u32,
}

/// Logit processing settings (HF names: guidance_scale, top_k, temperature, top_p).
#[derive(Clone, Copy, Debug)]
pub struct SamplingParams {
    pub cfg_scale: f32,
    /// k of the CFG filter (and of the no-op top-k warper), 1..=vocab.
    pub cfg_filter_top_k: u32,
    /// 0 = greedy (argmax, no warpers); > 0 = sample.
    pub temperature: f32,
    /// 0 < top_p ≤ 1; 1 disables the top-p warper.
    pub top_p: f32,
    pub seed: u64,
}

/// Buffers shared with the model.
pub struct SamplerBuffers<'a> {
    /// f32 [2B, C, V]: rows 0..B conditional, B..2B unconditional.
    pub logits: &'a GpuBuffer,
    /// u32 [B, C]: written: the next row to feed.
    pub tokens: &'a GpuBuffer,
    /// u32 [max_length, B, C]: row ℓ written when produced (rows < s0 by the host).
    pub codes: &'a GpuBuffer,
    /// u32 [2B, 2] (seq, pos): the sampler writes pos = ℓ of every row.
    pub qinfo: &'a GpuBuffer,
}

/// Why a sampler could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SamplingError {
    #[error("cfg_filter_top_k must be in 1..={vocab}, got {top_k}")]
    TopK { top_k: u32, vocab: u32 },
    #[error("top_p must be in (0, 1], got {0}")]
    TopP(f32),
    #[error("temperature must be finite and ≥ 0, got {0}")]
    Temperature(f32),
    #[error("cfg_scale must be finite, got {0}")]
    CfgScale(f32),
    #[error("invalid sampler shape: {0}")]
    Shape(String),
    #[error("buffer `{name}` holds {have} bytes, {need} are needed")]
    BufferTooSmall { name: &'static str, have: u64, need: u64 },
    #[error("prefix holds {have} values, [batch, prefix_rows, channels] needs {need}")]
    Prefix { have: usize, need: usize },
    #[error("the first row to produce ({s0}) must be below max_length ({max_length})")]
    Rows { s0: u32, max_length: u32 },
}

wgsl_params! {
    /// Uniform parameters of the sampler (`select_token`, `advance`).
    struct Params {
        batch: u32,
        channels: u32,
        vocab: u32,
        eos: u32,
        pad: u32,
        max_length: u32,
        /// max_length − max_delay − 1 (wrapped: never reached when negative)
        trigger_row: u32,
        prefix_rows: u32,
        top_k: u32,
        /// 0 ⇒ greedy chain
        temperature: f32,
        /// f32(1 − top_p): drop ids whose ascending cumulative mass is ≤ this
        top_p_drop: f32,
        cfg_scale: f32,
        seed_lo: u32,
        seed_hi: u32,
        use_top_p: u32,
        sampling: u32,
        off_force: u32,
        off_active: u32,
        off_counter: u32,
        off_finished: u32,
        off_choice: u32,
        off_eos0: u32,
        off_forced: u32,
        /// the RNG index of item 0: item b draws as first_item + b
        first_item: u32,
    }
}

/// Word offsets of the sampler's state buffer (layout documented in the shader).
struct StateLayout {
    force: u32,
    active: u32,
    counter: u32,
    finished: u32,
    choice: u32,
    eos0: u32,
    forced: u32,
    words: u32,
}

impl StateLayout {
    fn new(batch: u32, channels: u32) -> StateLayout {
        let n = batch * channels;
        let force = 4;
        let active = force + 1 + n;
        let counter = active + batch;
        let finished = counter + n;
        let choice = finished + n;
        let eos0 = choice + n;
        let forced = eos0 + batch;
        StateLayout { force, active, counter, finished, choice, eos0, forced, words: forced + n }
    }
}

/// The per-step sampler: dispatches built once, state kept on the GPU.
pub struct Sampler {
    select: Dispatch,
    advance: Dispatch,
    status: GpuBuffer,
    scores: Option<GpuBuffer>,
    force: GpuBuffer,
    rows: u32,
    // Bound by the dispatches; kept so the sampler owns what it created.
    _prefix: GpuBuffer,
}

impl Sampler {
    /// prefix: u32 [B, P, C] delayed prefix (PAD = to be generated); s0 = first row to produce.
    ///
    /// The host writes codes rows < s0 and the first step's tokens and qinfo itself. `record_scores`
    /// keeps the fully processed scores of the last step (f32 [B, C, V], −inf outside the kept set).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        gpu: &Gpu,
        shape: &SamplerShape,
        params: &SamplingParams,
        bufs: &SamplerBuffers,
        prefix: &[u32],
        prefix_rows: u32,
        s0: u32,
        max_length: u32,
        record_scores: bool,
    ) -> Result<Sampler, SamplingError> {
        let (b, c, v) = (shape.batch, shape.channels, shape.vocab);
        validate(shape, params)?;
        if s0 >= max_length {
            return Err(SamplingError::Rows { s0, max_length });
        }
        let need_prefix = (b * prefix_rows * c) as usize;
        if prefix.len() != need_prefix {
            return Err(SamplingError::Prefix { have: prefix.len(), need: need_prefix });
        }
        let n = (b * c) as u64;
        check_size("logits", bufs.logits, 2 * n * v as u64 * 4)?;
        check_size("tokens", bufs.tokens, n * 4)?;
        check_size("codes", bufs.codes, max_length as u64 * n * 4)?;
        check_size("qinfo", bufs.qinfo, 2 * b as u64 * 2 * 4)?;

        let layout = StateLayout::new(b, c);
        let mut init = vec![0u32; layout.words as usize];
        init[0] = s0;
        for item in 0..b {
            for ch in 0..c {
                init[(layout.counter + item * c + ch) as usize] = shape.delay[ch as usize];
            }
        }
        let state = gpu.upload("sampling.state", &init);
        let status = state.slice(0, 16);
        let force = state.slice(layout.force as u64 * 4, (1 + n) * 4);
        let prefix_buf = gpu.upload("sampling.prefix", prefix);
        let scores = record_scores.then(|| gpu.buffer("sampling.scores", n * v as u64 * 4));

        let max_delay = shape.delay.iter().copied().max().unwrap_or(0);
        let sampling = params.temperature > 0.0;
        let p = Params {
            batch: b,
            channels: c,
            vocab: v,
            eos: shape.eos,
            pad: shape.pad,
            max_length,
            trigger_row: max_length.wrapping_sub(max_delay + 1),
            prefix_rows,
            top_k: params.cfg_filter_top_k,
            temperature: if sampling { params.temperature } else { 1.0 },
            // transformers compares the f32 cumulative sums with 1 − p computed in float64 (Python) and rounded to f32.
            top_p_drop: (1.0 - params.top_p as f64) as f32,
            cfg_scale: params.cfg_scale,
            seed_lo: params.seed as u32,
            seed_hi: (params.seed >> 32) as u32,
            use_top_p: (params.top_p < 1.0) as u32,
            sampling: sampling as u32,
            off_force: layout.force,
            off_active: layout.active,
            off_counter: layout.counter,
            off_finished: layout.finished,
            off_choice: layout.choice,
            off_eos0: layout.eos0,
            off_forced: layout.forced,
            first_item: shape.first_item,
        };

        let chunk = v.div_ceil(WORKGROUP);
        let reduction = gpu.reduction();
        let variant = |entry| SamplerVariant { entry, chunk, record_scores, reduction };
        let select_pipe = gpu.variant_pipeline(variant(SamplerEntry::SelectToken));
        let advance_pipe = gpu.variant_pipeline(variant(SamplerEntry::Advance));

        let mut select_bufs = vec![bufs.logits, &state];
        let mut advance_bufs = vec![&state, &prefix_buf, bufs.codes, bufs.tokens, bufs.qinfo];
        if let Some(s) = &scores {
            select_bufs.push(s);
            advance_bufs.push(s);
        }
        let select = gpu.dispatch(&select_pipe, &p, &select_bufs, grid_1d(b * c));
        let advance = gpu.dispatch(&advance_pipe, &p, &advance_bufs, [1, 1, 1]);
        Ok(Sampler { select, advance, status, scores, force, rows: b * c, _prefix: prefix_buf })
    }

    /// Record after the logits each step, in the same pass.
    pub fn dispatches(&self) -> Vec<&Dispatch> {
        vec![&self.select, &self.advance]
    }

    /// u32 [4]: [0] next ℓ, [1] 1 when over, [2] S (rows in the sequences) when over.
    pub fn status(&self) -> &GpuBuffer {
        &self.status
    }

    /// Processed scores of the last step (f32 [B, C, V], −inf outside the kept set; a row forced by the
    /// EOS delay pattern is −inf except 0 at EOS), when built with `record_scores`.
    pub fn scores(&self) -> Option<&GpuBuffer> {
        self.scores.as_ref()
    }

    /// Teacher forcing: the first step of the next submission produces `tokens` (u32 [B, C]) instead
    /// of its choices; the EOS/PAD state machine and the delay mask run on them as usual.
    ///
    /// Panics if `tokens.len() != B·C`.
    pub fn force_next(&self, gpu: &Gpu, tokens: &[u32]) {
        assert_eq!(tokens.len(), self.rows as usize, "force_next needs B·C tokens");
        let mut words = Vec::with_capacity(tokens.len() + 1);
        words.push(1u32);
        words.extend_from_slice(tokens);
        gpu.write(&self.force, &words);
    }
}

/// The sampler's two entry points (one source).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SamplerEntry {
    /// Per (item, channel): guidance, filters and the choice of the next token.
    SelectToken,
    /// Once per step: the EOS/PAD state machine, the delay pattern and the next step's inputs.
    Advance,
}

/// One compiled specialisation of `shaders/sampling.wgsl`: the WGSL generator's input and the pipeline-cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SamplerVariant {
    pub entry: SamplerEntry,
    /// Vocabulary entries per thread (vocab / 256, rounded up).
    pub chunk: u32,
    /// Whether the processed scores are written out (`Sampler::scores`).
    pub record_scores: bool,
    pub reduction: Reduction,
}

impl KernelVariant for SamplerVariant {
    fn entry_point(&self) -> &'static str {
        match self.entry {
            SamplerEntry::SelectToken => "select_token",
            SamplerEntry::Advance => "advance",
        }
    }

    fn source(&self) -> String {
        shader_source(self.chunk, self.record_scores, self.reduction)
    }
}

/// The sampler's WGSL for vocabulary chunks of `chunk` per thread, with or without the score record.
fn shader_source(chunk: u32, record_scores: bool, reduction: Reduction) -> String {
    let code = reduction_code(reduction);
    let record = if record_scores {
        "const RECORD: bool = true;\n\
         @group(0) @binding(3) var<storage, read_write> sel_scores: array<u32>;\n\
         @group(0) @binding(6) var<storage, read_write> adv_scores: array<u32>;\n\
         fn put_score(i: u32, bits: u32) { sel_scores[i] = bits; }\n\
         fn put_forced_score(i: u32, bits: u32) { adv_scores[i] = bits; }\n"
    } else {
        "const RECORD: bool = false;\n\
         fn put_score(i: u32, bits: u32) {}\n\
         fn put_forced_score(i: u32, bits: u32) {}\n"
    };
    let marker = if reduction == Reduction::Subgroup { SUBGROUPS_MARKER } else { "" };
    marker.to_string()
        + &specialize(
        SHADER,
        &[
            ("PARAMS", Params::wgsl()),
            ("REDUCE_FNS", code.fns),
            ("SG_ARGS", code.args.to_string()),
            ("LANE", code.lane.to_string()),
            ("CHUNK", chunk.to_string()),
            ("MAXC", (chunk * WORKGROUP).to_string()),
            ("RECORD", record.to_string()),
        ],
    )
}

/// `select_token`'s workgroup-wide scans, sum and argmax as generated WGSL (see the shader), its extra builtins, and
/// the code that sets its logical invocation index `lid`.
struct ReductionCode {
    fns: String,
    args: &'static str,
    lane: &'static str,
}

/// `Workgroup`: trees over workgroup memory (a scan is 8 rounds of two barriers), `lid` the local invocation index.
/// `Subgroup`: `lid` numbers the invocations subgroup by subgroup (by `subgroup_id`, then by rank among the
/// subgroup's invocations), so a subgroup holds consecutive indices whatever its size and however the device forms
/// subgroups; a scan is then `subgroupInclusiveAdd` plus the totals of the subgroups before it (one exchange, two
/// barriers), and the argmax and sum reduce each subgroup before one exchange. `wg_u`/`wg_f` hold the per-subgroup
/// values (at most one subgroup per invocation).
fn reduction_code(reduction: Reduction) -> ReductionCode {
    match reduction {
        Reduction::Workgroup => ReductionCode {
            fns: WORKGROUP_REDUCTIONS.to_string(),
            args: "",
            lane: "    let lid = hw_lid;",
        },
        Reduction::Subgroup => ReductionCode {
            fns: SUBGROUP_REDUCTIONS.to_string(),
            args: "\n    @builtin(subgroup_id) sg_id: u32,\n    @builtin(num_subgroups) sg_count: u32,",
            lane: "    let sg_r = subgroupExclusiveAdd(1u);
    let sg_n = subgroupAdd(1u);
    sg_rank = sg_r;
    sg_size = sg_n;
    sg_index = sg_id;
    sg_total = sg_count;
    if sg_r == 0u {
        wg_u[sg_id] = sg_n;
    }
    workgroupBarrier();
    var sg_base = 0u;
    for (var s = 0u; s < sg_id; s++) {
        sg_base += wg_u[s];
    }
    workgroupBarrier();
    let lid = sg_base + sg_r;",
        },
    }
}

const WORKGROUP_REDUCTIONS: &str = "fn scan_u32(lid: u32, x: u32) -> vec2<u32> {
    wg_u[lid] = x;
    workgroupBarrier();
    for (var off = 1u; off < WG; off = off << 1u) {
        var v = wg_u[lid];
        if lid >= off {
            v += wg_u[lid - off];
        }
        workgroupBarrier();
        wg_u[lid] = v;
        workgroupBarrier();
    }
    let r = vec2<u32>(wg_u[lid], wg_u[WG - 1u]);
    workgroupBarrier();
    return r;
}

fn scan_f32(lid: u32, x: f32) -> vec2<f32> {
    wg_f[lid] = x;
    workgroupBarrier();
    for (var off = 1u; off < WG; off = off << 1u) {
        var v = wg_f[lid];
        if lid >= off {
            v += wg_f[lid - off];
        }
        workgroupBarrier();
        wg_f[lid] = v;
        workgroupBarrier();
    }
    let r = vec2<f32>(wg_f[lid], wg_f[WG - 1u]);
    workgroupBarrier();
    return r;
}

fn sum_f32(lid: u32, x: f32) -> f32 {
    wg_f[lid] = x;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if lid < s {
            wg_f[lid] += wg_f[lid + s];
        }
        workgroupBarrier();
    }
    let r = wg_f[0];
    workgroupBarrier();
    return r;
}

fn argmax_reduce(lid: u32, v: f32, i: u32, top: ptr<function, f32>) -> u32 {
    wg_f[lid] = v;
    wg_u[lid] = i;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if lid < s {
            let io = wg_u[lid + s];
            let vo = wg_f[lid + s];
            let is = wg_u[lid];
            let vs = wg_f[lid];
            if io != NONE && (is == NONE || vo > vs || (vo == vs && io < is)) {
                wg_u[lid] = io;
                wg_f[lid] = vo;
            }
        }
        workgroupBarrier();
    }
    *top = wg_f[0];
    return uniform_u32(lid == 0u, wg_u[0]);
}
";

/// Subgroup reductions (see `reduction_code`). `sg_*` are set at the start of `select_token`.
const SUBGROUP_REDUCTIONS: &str = "var<private> sg_rank: u32;   // rank among the subgroup's invocations
var<private> sg_size: u32;   // invocations in the subgroup
var<private> sg_index: u32;  // subgroup_id
var<private> sg_total: u32;  // num_subgroups

// Inclusive scan: within the subgroup, then the totals of the subgroups before (lower `lid`s all sit there).
fn scan_u32(lid: u32, x: u32) -> vec2<u32> {
    let within = subgroupInclusiveAdd(x);
    if sg_rank + 1u == sg_size {
        wg_u[sg_index] = within;
    }
    workgroupBarrier();
    var before = 0u;
    var total = 0u;
    for (var s = 0u; s < sg_total; s++) {
        let t = wg_u[s];
        before += select(0u, t, s < sg_index);
        total += t;
    }
    workgroupBarrier();
    return vec2<u32>(before + within, total);
}

fn scan_f32(lid: u32, x: f32) -> vec2<f32> {
    let within = subgroupInclusiveAdd(x);
    if sg_rank + 1u == sg_size {
        wg_f[sg_index] = within;
    }
    workgroupBarrier();
    var before = 0.0;
    var total = 0.0;
    for (var s = 0u; s < sg_total; s++) {
        let t = wg_f[s];
        if s < sg_index {
            before += t;
        }
        total += t;
    }
    workgroupBarrier();
    return vec2<f32>(before + within, total);
}

fn sum_f32(lid: u32, x: f32) -> f32 {
    let within = subgroupAdd(x);
    if sg_rank == 0u {
        wg_f[sg_index] = within;
    }
    workgroupBarrier();
    var total = 0.0;
    for (var s = 0u; s < sg_total; s++) {
        total += wg_f[s];
    }
    workgroupBarrier();
    return total;
}

// The value of an order key (`order_key` inverted; -0 comes back as +0, which compares equal).
fn key_value(k: u32) -> f32 {
    return bitcast<f32>(select(~k, k & 0x7fffffffu, (k & 0x80000000u) != 0u));
}

// Within a subgroup: the largest value by its order key, then the lowest id holding it; across subgroups the
// workgroup rule on (value, id).
fn argmax_reduce(lid: u32, v: f32, i: u32, top: ptr<function, f32>) -> u32 {
    let kept = i != NONE;
    let best_key = subgroupMax(select(0u, order_key(v), kept));
    let best_id = subgroupMin(select(NONE, i, kept && order_key(v) == best_key));
    if sg_rank == 0u {
        wg_u[sg_index] = best_id;
        wg_f[sg_index] = key_value(best_key);
    }
    workgroupBarrier();
    var bi = NONE;
    var bv = 0.0;
    for (var s = 0u; s < sg_total; s++) {
        let io = wg_u[s];
        let vo = wg_f[s];
        if io != NONE && (bi == NONE || vo > bv || (vo == bv && io < bi)) {
            bi = io;
            bv = vo;
        }
    }
    workgroupBarrier();
    *top = bv;
    return uniform_u32(lid == 0u, bi);
}
";

fn validate(shape: &SamplerShape, params: &SamplingParams) -> Result<(), SamplingError> {
    let v = shape.vocab;
    if shape.batch == 0 || shape.channels == 0 {
        return Err(SamplingError::Shape("batch and channels must be positive".into()));
    }
    if v == 0 || v > MAX_VOCAB {
        return Err(SamplingError::Shape(format!("vocab {v} outside 1..={MAX_VOCAB}")));
    }
    if shape.delay.len() != shape.channels as usize {
        return Err(SamplingError::Shape(format!("{} delays for {} channels", shape.delay.len(), shape.channels)));
    }
    if shape.eos >= v {
        return Err(SamplingError::Shape(format!("eos {} outside the vocab {v}", shape.eos)));
    }
    if params.cfg_filter_top_k == 0 || params.cfg_filter_top_k > v {
        return Err(SamplingError::TopK { top_k: params.cfg_filter_top_k, vocab: v });
    }
    if !(params.top_p > 0.0 && params.top_p <= 1.0) {
        return Err(SamplingError::TopP(params.top_p));
    }
    if !(params.temperature.is_finite() && params.temperature >= 0.0) {
        return Err(SamplingError::Temperature(params.temperature));
    }
    if !params.cfg_scale.is_finite() {
        return Err(SamplingError::CfgScale(params.cfg_scale));
    }
    Ok(())
}

fn check_size(name: &'static str, buf: &GpuBuffer, need: u64) -> Result<(), SamplingError> {
    if buf.size < need {
        return Err(SamplingError::BufferTooSmall { name, have: buf.size, need });
    }
    Ok(())
}

fn mix32(x: u32) -> u32 {
    let mut h = x;
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^= h >> 16;
    h
}

/// The GPU's uniform draw for (seed, row ℓ, item, channel), in [0, 1) with 24 bits (`item`: the sampler's
/// `first_item` plus the batch index): the inverse-CDF
/// target of that row is this value times the total mass of the kept ids, accumulated in id order.
pub fn counter_uniform(seed: u64, row: u32, item: u32, channel: u32) -> f32 {
    let mut h = mix32(seed as u32 ^ 0x9e37_79b9);
    h = mix32(h ^ (seed >> 32) as u32);
    h = mix32(h ^ row);
    h = mix32(h ^ item);
    h = mix32(h ^ channel);
    (h >> 8) as f32 * (1.0 / 16_777_216.0)
}
