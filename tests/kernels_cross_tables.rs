//! The cross-attention tables (`kernels::cross_tables`) against CPU references on random, ragged problems: several
//! text segments of different lengths (one without keys, one of the route's 128-key maximum, gaps between them),
//! 1–17 query rows mapped to segments, GQA, hidden sizes 96, 256 and 2048, f32 / f16 weights and f32 / f16 / q8
//! cross K/V. Three checks per problem:
//! 1. the tables the builders make, element by element, against A and B computed in f64 from the stored K/V and
//!    weights, within the f32 accumulation bound plus (f16 tables) f16's rounding of each value; padding is zero;
//! 2. the step kernels (`cross_scores` then `cross_out`) against the same step computed in f64 from the tables as read
//!    back (so only the kernels' f32 arithmetic differs): 1e-4 relative;
//! 3. the step against the model's own definition, norm → Q projection → softmax attention → O projection →
//!    residual add in f64: 1e-4 relative for f32 tables; for f16 tables, per output, within the bound that the
//!    tables' f16 rounding (as read back against the exact tables) and f32 arithmetic allow: a score off by at
//!    most Δ moves each probability by a factor within e^{±2Δ}.
//!
//! A row whose segment has no key keeps its x bit for bit (attention over no key is zero).
mod common;

use common::{rel_err, stored_weights, test_gpu, Rng};
use dia_webgpu::gpu::{Gpu, GpuBuffer};
use dia_webgpu::kernels::cross_tables::{cross_out, cross_scores, plan_cross_tables, CrossShape, CrossTablePlan, MAX_KEYS};
use dia_webgpu::kernels::kv_cache::KvFormat;
use dia_webgpu::kernels::{GpuMatrix, WeightFormat};
use dia_webgpu::quant::QuantFormat;

const EPS: f32 = 1e-5;
/// f16's unit roundoff (round to nearest), and the absolute rounding error below its normal range.
const F16_U: f64 = 1.0 / 2048.0;
const F16_TINY: f64 = 1.0 / (1u64 << 25) as f64;

/// γ_n of f32 arithmetic: the relative bound of an n-term sum of products.
fn gamma(n: usize) -> f64 {
    let u = f32::EPSILON as f64 / 2.0;
    n as f64 * u / (1.0 - n as f64 * u)
}

/// One problem on the host, with the values as the GPU stores them.
struct Problem {
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// (token offset, keys) per segment.
    segments: Vec<(u32, u32)>,
    /// Segment of each query row.
    row_segment: Vec<u32>,
    /// `[tokens, 2·kv_heads·head_dim]` as the cache holds them (f16- or q8-rounded where it does).
    kv: Vec<f32>,
    kv_words: Vec<u32>,
    kv_format: KvFormat,
    /// W_q `[heads·hd, hidden]`, W_o `[hidden, heads·hd]`: the f32 values uploaded, and what the GPU holds.
    w_q: Vec<f32>,
    w_o: Vec<f32>,
    w_q_stored: Vec<f32>,
    w_o_stored: Vec<f32>,
    q_format: WeightFormat,
    o_format: WeightFormat,
    x: Vec<f32>,
    gain: Vec<f32>,
}

impl Problem {
    #[allow(clippy::too_many_arguments)]
    fn random(seed: u64, hidden: usize, heads: usize, kv_heads: usize, head_dim: usize, lens: &[u32], rows: usize, q_format: WeightFormat, o_format: WeightFormat, kv_format: KvFormat) -> Problem {
        let mut rng = Rng::new(seed);
        // Segments with a gap of 0–2 unused tokens before each (offsets need not be contiguous).
        let mut segments = Vec::new();
        let mut tokens = 0u32;
        for &len in lens {
            tokens += rng.below(3) as u32;
            segments.push((tokens, len));
            tokens += len;
        }
        let kv_stride = 2 * kv_heads * head_dim;
        // Keys scaled so that scores are a few units (a softmax neither flat nor one-hot), values of order 1.
        let k_scale = (12.0 / head_dim as f32).sqrt();
        let mut kv = Vec::with_capacity(tokens as usize * kv_stride);
        for _ in 0..tokens {
            kv.extend(rng.vec(kv_stride / 2, k_scale));
            kv.extend(rng.vec(kv_stride / 2, 1.0));
        }
        let (kv, kv_words) = stored_kv(&kv, head_dim, kv_format);
        let inner = heads * head_dim;
        let w_q = rng.vec(inner * hidden, (3.0 / hidden as f32).sqrt());
        let w_o = rng.vec(hidden * inner, (3.0 / inner as f32).sqrt());
        // Every segment gets a row where there are enough rows; the rest at random.
        let row_segment = (0..rows).map(|r| if r < segments.len() { r as u32 } else { rng.below(segments.len() as u64) as u32 }).collect();
        Problem {
            hidden,
            heads,
            kv_heads,
            head_dim,
            segments,
            row_segment,
            kv,
            kv_words,
            kv_format,
            w_q_stored: stored_weights(&w_q, inner, hidden, q_format),
            w_o_stored: stored_weights(&w_o, hidden, inner, o_format),
            w_q,
            w_o,
            q_format,
            o_format,
            // A small residual beside the attention's output: the comparison sees the output, not x.
            x: rng.vec(rows * hidden, 0.1),
            gain: rng.vec(hidden, 0.5).into_iter().map(|g| 1.0 + g).collect(),
        }
    }

    fn rows(&self) -> usize {
        self.row_segment.len()
    }

    fn kv_stride(&self) -> usize {
        2 * self.kv_heads * self.head_dim
    }

    fn shape(&self) -> CrossShape {
        CrossShape { hidden: self.hidden as u32, heads: self.heads as u32, kv_heads: self.kv_heads as u32, head_dim: self.head_dim as u32, kv_format: self.kv_format }
    }

    fn key(&self, token: usize, h: usize, d: usize) -> f64 {
        self.kv[token * self.kv_stride() + (h / (self.heads / self.kv_heads)) * self.head_dim + d] as f64
    }

    fn value(&self, token: usize, h: usize, d: usize) -> f64 {
        self.kv[token * self.kv_stride() + self.kv_stride() / 2 + (h / (self.heads / self.kv_heads)) * self.head_dim + d] as f64
    }

    /// x[r]·gain and 1/rms of x[r], in f64.
    fn normed(&self, r: usize) -> (Vec<f64>, f64) {
        let x = &self.x[r * self.hidden..][..self.hidden];
        let inv = 1.0 / (x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / self.hidden as f64 + EPS as f64).sqrt();
        (x.iter().zip(&self.gain).map(|(&v, &g)| v as f64 * g as f64).collect(), inv)
    }

    /// The model's definition, per row: rmsnorm → W_q → per-head softmax(q·k) → ·v → W_o (the increment of x).
    fn reference(&self) -> Vec<f64> {
        let (hd, inner) = (self.head_dim, self.heads * self.head_dim);
        let mut out = vec![0f64; self.rows() * self.hidden];
        for (r, &seg) in self.row_segment.iter().enumerate() {
            let (offset, keys) = self.segments[seg as usize];
            if keys == 0 {
                continue;
            }
            let (xg, inv) = self.normed(r);
            let q: Vec<f64> = (0..inner).map(|i| (0..self.hidden).map(|k| self.w_q_stored[i * self.hidden + k] as f64 * xg[k] * inv).sum()).collect();
            let mut attn = vec![0f64; inner];
            for h in 0..self.heads {
                let scores: Vec<f64> = (0..keys as usize).map(|s| (0..hd).map(|d| q[h * hd + d] * self.key(offset as usize + s, h, d)).sum()).collect();
                let p = softmax(&scores);
                for d in 0..hd {
                    attn[h * hd + d] = p.iter().enumerate().map(|(s, ps)| ps * self.value(offset as usize + s, h, d)).sum();
                }
            }
            for n in 0..self.hidden {
                out[r * self.hidden + n] = (0..inner).map(|i| self.w_o_stored[n * inner + i] as f64 * attn[i]).sum();
            }
        }
        out
    }

    /// A exactly (f64) for segment `seg`: `[keys·heads, hidden]`, row s·heads + h; and Ā = Σ_d |K|·|W_q| alike.
    fn exact_query_table(&self, seg: usize) -> (Vec<f64>, Vec<f64>) {
        let (offset, keys) = self.segments[seg];
        let (hd, n) = (self.head_dim, self.hidden);
        let mut a = vec![0f64; keys as usize * self.heads * n];
        let mut abs = vec![0f64; a.len()];
        for s in 0..keys as usize {
            for h in 0..self.heads {
                let row = (s * self.heads + h) * n;
                for d in 0..hd {
                    let kv = self.key(offset as usize + s, h, d);
                    let w = &self.w_q_stored[(h * hd + d) * n..][..n];
                    for k in 0..n {
                        a[row + k] += kv * w[k] as f64;
                        abs[row + k] += (kv * w[k] as f64).abs();
                    }
                }
            }
        }
        (a, abs)
    }

    /// B exactly (f64) for segment `seg`: `[hidden, keys·heads]`; and B̄ = Σ_d |W_o|·|V| alike.
    fn exact_output_table(&self, seg: usize) -> (Vec<f64>, Vec<f64>) {
        let (offset, keys) = self.segments[seg];
        let (hd, inner) = (self.head_dim, self.heads * self.head_dim);
        let width = keys as usize * self.heads;
        let mut b = vec![0f64; self.hidden * width];
        let mut abs = vec![0f64; b.len()];
        for n in 0..self.hidden {
            for s in 0..keys as usize {
                for h in 0..self.heads {
                    let (mut acc, mut acc_abs) = (0f64, 0f64);
                    for d in 0..hd {
                        let t = self.w_o_stored[n * inner + h * hd + d] as f64 * self.value(offset as usize + s, h, d);
                        acc += t;
                        acc_abs += t.abs();
                    }
                    b[n * width + s * self.heads + h] = acc;
                    abs[n * width + s * self.heads + h] = acc_abs;
                }
            }
        }
        (b, abs)
    }
}

fn softmax(scores: &[f64]) -> Vec<f64> {
    let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
    let total: f64 = e.iter().sum();
    e.iter().map(|v| v / total).collect()
}

/// The values a cache of `format` holds for `v` (whole heads of `hd`), and its words.
fn stored_kv(v: &[f32], hd: usize, format: KvFormat) -> (Vec<f32>, Vec<u32>) {
    match format {
        KvFormat::F32 => (v.to_vec(), bytemuck::cast_slice(v).to_vec()),
        KvFormat::F16 => {
            let words: Vec<u32> = v.chunks(2).map(|p| half::f16::from_f32(p[0]).to_bits() as u32 | (half::f16::from_f32(p[1]).to_bits() as u32) << 16).collect();
            (unpack_f16(&words), words)
        }
        KvFormat::Q8 => {
            // Per block of hd values: scale = max |v| / 127, bytes round(v / scale), then the scale's bits.
            let mut words = Vec::new();
            let mut values = Vec::new();
            for block in v.chunks(hd) {
                let scale = block.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
                let q: Vec<i32> = block.iter().map(|&x| if scale > 0.0 { (x / scale).round().clamp(-127.0, 127.0) as i32 } else { 0 }).collect();
                words.extend(q.chunks(4).map(|c| c.iter().enumerate().fold(0u32, |w, (i, &b)| w | ((b as u32) & 0xff) << (8 * i))));
                words.push(scale.to_bits());
                values.extend(q.iter().map(|&b| b as f32 * scale));
            }
            (values, words)
        }
    }
}

fn unpack_f16(words: &[u32]) -> Vec<f32> {
    words.iter().flat_map(|&w| [half::f16::from_bits(w as u16).to_f32(), half::f16::from_bits((w >> 16) as u16).to_f32()]).collect()
}

/// A table's values as read back (f32 words, or f16 pairs).
fn table_values(words: &[u32], format: WeightFormat) -> Vec<f32> {
    match format {
        WeightFormat::F16 => unpack_f16(words),
        _ => words.iter().map(|&w| f32::from_bits(w)).collect(),
    }
}

/// Relative rounding of a table value in `format`.
fn table_u(format: WeightFormat) -> f64 {
    if format == WeightFormat::F16 {
        F16_U
    } else {
        0.0
    }
}

struct GpuRun {
    /// x after the step.
    x: Vec<f32>,
    /// The tables as read back, as values: A `[cols, hidden]`, B `[hidden, cols]`.
    a: Vec<f32>,
    b: Vec<f32>,
    plan: CrossTablePlan,
}

fn run_gpu(gpu: &Gpu, p: &Problem) -> GpuRun {
    let (inner, rows) = (p.heads * p.head_dim, p.rows());
    let w_q = GpuMatrix::upload(gpu, "w_q", &p.w_q, inner, p.hidden, p.q_format).unwrap();
    let w_o = GpuMatrix::upload(gpu, "w_o", &p.w_o, p.hidden, inner, p.o_format).unwrap();
    let kv = gpu.upload("kv", &p.kv_words);
    let plan = plan_cross_tables(gpu, p.shape(), &p.segments, &w_q, &w_o).expect("the route applies");
    let (build, tables) = plan.build(gpu, "test_tables", &kv, &w_q, &w_o);
    // NaN-filled tables (a reused buffer holds an earlier request's values): a word the builders leave shows.
    gpu.write(&tables.query, &vec![u32::MAX; (tables.query.size / 4) as usize]);
    gpu.write(&tables.output, &vec![u32::MAX; (tables.output.size / 4) as usize]);
    let x = gpu.upload("x", &p.x);
    let gain = gpu.upload("gain", &p.gain);
    let qinfo = gpu.upload("qinfo", &p.row_segment.iter().flat_map(|&s| [s, 0]).collect::<Vec<u32>>());
    // NaN scratch: a score the step reads but `cross_scores` did not write shows.
    let scores: GpuBuffer = gpu.upload("scores", &vec![f32::NAN; rows * plan.score_stride() as usize]);
    let step = [
        cross_scores(gpu, &plan, &tables, &x, &gain, EPS, &qinfo, &scores, rows as u32),
        cross_out(gpu, &plan, &tables, &scores, &qinfo, &x, rows as u32),
    ];
    gpu.run(&build.iter().chain(&step).collect::<Vec<_>>());
    GpuRun {
        x: gpu.read_f32_blocking(&x).unwrap(),
        a: table_values(&gpu.read_u32_blocking(&tables.query).unwrap(), plan.query_format),
        b: table_values(&gpu.read_u32_blocking(&tables.output).unwrap(), plan.output_format),
        plan,
    }
}

/// Checks 1–3 of the file's comment on one problem.
fn check(gpu: &Gpu, p: &Problem, what: &str) {
    let run = run_gpu(gpu, p);
    let (plan, n, heads) = (&run.plan, p.hidden, p.heads);
    let cols = plan.cols as usize;
    assert_eq!(run.a.len(), cols * n, "{what}: query table size");
    let (ua, ub) = (table_u(plan.query_format), table_u(plan.output_format));
    let tiny = |u: f64| if u > 0.0 { F16_TINY } else { 0.0 };
    let gh = gamma(p.head_dim) * (1.0 + F16_U);

    // 1. The tables, element by element; padding columns zero.
    let mut key_column = vec![false; cols];
    let mut worst_table = 0f64;
    let mut exact = Vec::new();
    for (seg, &(first, keys)) in plan.segment_columns.iter().enumerate() {
        let (first, width) = (first as usize, keys as usize * heads);
        key_column[first..first + width].iter_mut().for_each(|c| *c = true);
        let (a, a_abs) = p.exact_query_table(seg);
        let (b, b_abs) = p.exact_output_table(seg);
        for j in 0..width {
            for k in 0..n {
                let (got, want) = (run.a[(first + j) * n + k] as f64, a[j * n + k]);
                let bound = ua * want.abs() + gh * a_abs[j * n + k] + tiny(ua) + 1e-30;
                worst_table = worst_table.max((got - want).abs() / bound);
                assert!((got - want).abs() <= bound, "{what}: A[{}, {k}] = {got}, exact {want} (bound {bound:.2e})", first + j);
            }
        }
        for row in 0..n {
            for j in 0..width {
                let (got, want) = (run.b[row * cols + first + j] as f64, b[row * width + j]);
                let bound = ub * want.abs() + gh * b_abs[row * width + j] + tiny(ub) + 1e-30;
                worst_table = worst_table.max((got - want).abs() / bound);
                assert!((got - want).abs() <= bound, "{what}: B[{row}, {}] = {got}, exact {want} (bound {bound:.2e})", first + j);
            }
        }
        exact.push((a, b));
    }
    for (c, _) in key_column.iter().enumerate().filter(|(_, key)| !**key) {
        assert!((0..n).all(|k| run.a[c * n + k] == 0.0 && run.b[k * cols + c] == 0.0), "{what}: padding column {c} is not zero");
    }

    // 2. and 3. The step: increments of x against the tables as read back and against the model's definition.
    // (rel_err's maximum passes NaN over)
    assert!(run.x.iter().all(|v| v.is_finite()), "{what}: the step wrote a non-finite value");
    let increment: Vec<f64> = run.x.iter().zip(&p.x).map(|(&a, &b)| a as f64 - b as f64).collect();
    let model = p.reference();
    let mut from_tables = vec![0f64; increment.len()];
    let mut bound = vec![0f64; increment.len()];
    for (r, &seg) in p.row_segment.iter().enumerate() {
        let (first, keys) = plan.segment_columns[seg as usize];
        let (first, keys) = (first as usize, keys as usize);
        let row = r * n..(r + 1) * n;
        if keys == 0 {
            assert!(run.x[row.clone()] == p.x[row.clone()], "{what}: row {r} (a segment without keys) changed");
            continue;
        }
        let width = keys * heads;
        let (xg, inv) = p.normed(r);
        let (a, b) = (&exact[seg as usize].0, &exact[seg as usize].1);
        // From the read-back tables (scores j = s·heads + h).
        let scores: Vec<f64> = (0..width).map(|j| inv * (0..n).map(|k| run.a[(first + j) * n + k] as f64 * xg[k]).sum::<f64>()).collect();
        let mut probs = vec![0f64; width];
        // Per head: the probabilities, and Δ_h, the most a score can be off the exact one: by the tables' actual
        // rounding and the f32 arithmetic.
        let mut delta = vec![0f64; heads];
        for h in 0..heads {
            let sc: Vec<f64> = (0..keys).map(|s| scores[s * heads + h]).collect();
            for (s, ps) in softmax(&sc).into_iter().enumerate() {
                probs[s * heads + h] = ps;
            }
            for (s, score) in sc.iter().enumerate() {
                let j = s * heads + h;
                // The tables' rounding as it happened (signed, summed), then the kernel's f32 sums over |A|·|x̂|.
                let a16 = |k: usize| run.a[(first + j) * n + k] as f64;
                let err = (0..n).map(|k| (a16(k) - a[j * n + k]) * xg[k]).sum::<f64>().abs()
                    + gamma(n + 2) * (0..n).map(|k| a16(k).abs() * xg[k].abs()).sum::<f64>();
                // The softmax's own f32 rounding of (score − max), exp and division.
                delta[h] = delta[h].max(inv * err + 8.0 * f32::EPSILON as f64 * (1.0 + score.abs()));
            }
        }
        for o in 0..n {
            from_tables[r * n + o] = (0..width).map(|j| run.b[o * cols + first + j] as f64 * probs[j]).sum();
            bound[r * n + o] = (0..width)
                .map(|j| {
                    let grow = (2.0 * delta[j % heads]).exp();
                    let (b16, b_exact) = (run.b[o * cols + first + j] as f64, b[o * width + j]);
                    probs[j] * (((b16 - b_exact).abs() + gamma(width) * b16.abs()) * grow + b_exact.abs() * (grow - 1.0))
                })
                .sum::<f64>()
                // The residual add's rounding.
                + f32::EPSILON as f64 * (p.x[r * n + o].abs() as f64 + increment[r * n + o].abs());
        }
    }
    let as_f32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let (got, tables, model32) = (as_f32(&increment), as_f32(&from_tables), as_f32(&model));
    let step_err = rel_err(&got, &tables);
    let model_err = rel_err(&got, &model32);
    let scale = model.iter().fold(0f64, |m, v| m.max(v.abs()));
    let worst_bound = increment.iter().zip(&model).zip(&bound).map(|((g, w), b)| (g - w).abs() / b.max(1e-300)).fold(0.0, f64::max);
    println!(
        "{what}: tables within {worst_table:.2} of their bound; step vs read-back tables rel err {step_err:.2e}; vs the model rel err {model_err:.2e} ({worst_bound:.3} of the derived bound, max bound {:.2e} of max |out| {scale:.2e})",
        bound.iter().fold(0f64, |m, &b| m.max(b))
    );
    assert!(scale > 1e-3, "{what}: the attention's output is too small to test anything");
    assert!(step_err <= 1e-4, "{what}: step against the read-back tables rel err {step_err:.2e}");
    if plan.query_format == WeightFormat::F32 && plan.output_format == WeightFormat::F32 {
        assert!(model_err <= 1e-4, "{what}: step against the model rel err {model_err:.2e}");
    } else {
        for (i, ((g, w), b)) in increment.iter().zip(&model).zip(&bound).enumerate() {
            assert!((g - w).abs() <= *b, "{what}: output {i}: {g} against the model's {w}, beyond the f16 bound {b:.2e}");
        }
    }
}

const F32W: WeightFormat = WeightFormat::F32;
const F16W: WeightFormat = WeightFormat::F16;

#[test]
fn small_shapes_every_format() {
    let gpu = test_gpu();
    let mut seed = 1;
    // (hidden, heads, kv_heads, head_dim)
    for (hidden, heads, kv_heads, hd) in [(96, 2, 2, 32), (256, 4, 2, 64), (96, 6, 2, 16)] {
        for (q_format, o_format, kv_format) in [
            (F32W, F32W, KvFormat::F32),
            (F32W, F32W, KvFormat::F16),
            (F16W, F16W, KvFormat::F16),
            (F16W, F16W, KvFormat::F32),
            (F16W, F32W, KvFormat::Q8),
            (F32W, F16W, KvFormat::F16),
        ] {
            seed += 1;
            let lens = [7, 0, 128, 1, 33];
            let rows = 1 + (seed as usize * 7) % 17;
            let p = Problem::random(seed, hidden, heads, kv_heads, hd, &lens, rows.max(lens.len()), q_format, o_format, kv_format);
            check(&gpu, &p, &format!("hidden {hidden}, {heads}/{kv_heads} heads of {hd}, W_q {q_format:?} W_o {o_format:?}, {kv_format:?} K/V, {} rows", p.rows()));
        }
    }
}

#[test]
fn few_rows_and_one_segment() {
    let gpu = test_gpu();
    // One query row; a single segment of 1 key (the unconditional row's shape); a row count of 17.
    for (seed, lens, rows) in [(40u64, vec![19u32, 5], 1usize), (41, vec![1], 2), (42, vec![128, 0, 64], 17)] {
        for format in [F32W, F16W] {
            let p = Problem::random(seed, 96, 4, 4, 16, &lens, rows, format, format, KvFormat::F16);
            check(&gpu, &p, &format!("lens {lens:?}, {rows} rows, {format:?}"));
        }
    }
}

/// Dia's shape: hidden 2048, 16 heads of 128, segments up to the route's 128 keys.
#[test]
fn dia_shape() {
    let gpu = test_gpu();
    for (seed, format, kv) in [(50u64, F16W, KvFormat::F16), (51, F32W, KvFormat::F32)] {
        let p = Problem::random(seed, 2048, 16, 16, 128, &[100, 1, 0, 128], 5, format, format, kv);
        check(&gpu, &p, &format!("Dia shape, {format:?} weights, {kv:?} K/V"));
    }
}

/// Where the route does not apply, planning says so (the caller keeps the projections and the attention).
#[test]
fn plan_refuses_what_the_route_cannot_take() {
    let gpu = test_gpu();
    let (hidden, heads, hd) = (96usize, 2usize, 16usize);
    let shape = CrossShape { hidden: hidden as u32, heads: heads as u32, kv_heads: heads as u32, head_dim: hd as u32, kv_format: KvFormat::F32 };
    let mut rng = Rng::new(9);
    let mut matrix = |rows: usize, cols: usize, format: WeightFormat| GpuMatrix::upload(&gpu, "w", &rng.vec(rows * cols, 0.1), rows, cols, format).unwrap();
    let (w_q, w_o) = (matrix(heads * hd, hidden, F16W), matrix(hidden, heads * hd, F16W));
    assert!(plan_cross_tables(&gpu, shape, &[(0, MAX_KEYS), (MAX_KEYS, 0)], &w_q, &w_o).is_some());
    assert!(plan_cross_tables(&gpu, shape, &[(0, MAX_KEYS + 1)], &w_q, &w_o).is_none(), "a segment past the key limit");
    let mut rng = Rng::new(10);
    let q8 = GpuMatrix::upload(&gpu, "w", &rng.vec(heads * hd * hidden, 0.1), heads * hd, hidden, WeightFormat::Quant(QuantFormat::Q8)).unwrap();
    assert!(plan_cross_tables(&gpu, shape, &[(0, 4)], &q8, &w_o).is_none(), "quantized W_q");
    let odd = CrossShape { hidden: 100, ..shape };
    let mut rng = Rng::new(11);
    let (q100, o100) = (
        GpuMatrix::upload(&gpu, "w", &rng.vec(heads * hd * 100, 0.1), heads * hd, 100, F32W).unwrap(),
        GpuMatrix::upload(&gpu, "w", &rng.vec(100 * heads * hd, 0.1), 100, heads * hd, F32W).unwrap(),
    );
    assert!(plan_cross_tables(&gpu, odd, &[(0, 4)], &q100, &o100).is_none(), "hidden not a multiple of 8");
    let three = CrossShape { heads: 3, kv_heads: 3, ..shape };
    let mut rng = Rng::new(12);
    let (q3, o3) = (
        GpuMatrix::upload(&gpu, "w", &rng.vec(3 * hd * hidden, 0.1), 3 * hd, hidden, F32W).unwrap(),
        GpuMatrix::upload(&gpu, "w", &rng.vec(hidden * 3 * hd, 0.1), hidden, 3 * hd, F32W).unwrap(),
    );
    assert!(plan_cross_tables(&gpu, three, &[(0, 4)], &q3, &o3).is_none(), "an odd head count");
    // Columns: each segment's heads·keys padded to 8.
    let plan = plan_cross_tables(&gpu, shape, &[(0, 3), (3, 0), (5, 4)], &w_q, &w_o).unwrap();
    assert_eq!(plan.segment_columns, vec![(0, 3), (8, 0), (8, 4)]);
    assert_eq!((plan.cols, plan.max_keys, plan.tokens), (16, 4, 9));
}
