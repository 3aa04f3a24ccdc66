//! Attention (tiled and flash prefill, split-K decode) and KV-cache update against plain CPU references on random,
//! ragged data: several sequences of different lengths and bases, GQA, causal or not, a sequence with no keys,
//! large logits (Dia's attention scale is 1.0), fused-QKV / packed-KV / cache buffer layouts.
mod common;

use std::time::Instant;

use common::{reductions, rel_err, test_gpu, with_reduction, Rng};
use dia_webgpu::gpu::{Dispatch, Gpu, GpuBuffer, Reduction};
use dia_webgpu::kernels::attention::{attention_decode, attention_prefill, attention_prefill_limited, AttentionArgs};
use dia_webgpu::kernels::kv_cache::{pack_f16, pack_kv, rope_kv_write, KvFormat};
use dia_webgpu::kernels::rope::rope_tables;

/// Where q, k and v live (the three layouts the model uses).
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// One activation buffer `[rows, (H + 2·Hkv)·hd + pad]` holds q, k and v (encoder / prefill self-attention).
    FusedQkv,
    /// q in its own buffer at a column offset; k and v packed side by side in one buffer (cross-attention).
    PackedKv,
    /// q in its own buffer; separate K and V caches `[seq][max_len][Hkv·hd]` (decoder self-attention).
    Cache,
}

/// One attention problem on the host, laid out exactly as the GPU buffers will be.
#[derive(Clone)]
struct Problem {
    q: Vec<f32>,
    q_stride: usize,
    q_col: usize,
    /// k data; v data is `v` or, when None, the k buffer itself (fused / packed layouts).
    k: Vec<f32>,
    v: Option<Vec<f32>>,
    kv_stride: usize,
    k_col: usize,
    v_col: usize,
    qinfo: Vec<u32>,
    seqs: Vec<u32>,
    rows: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    causal: bool,
}

impl Problem {
    fn v(&self) -> &[f32] {
        self.v.as_deref().unwrap_or(&self.k)
    }

    /// Largest number of keys any query can see.
    fn max_keys(&self) -> u32 {
        self.seqs.chunks(2).map(|s| s[1]).max().unwrap_or(0)
    }

    /// softmax(q·kᵀ)·v with f64 accumulation; zeros for a query that sees no key.
    fn reference(&self, qinfo: &[u32]) -> Vec<f32> {
        let (hd, heads) = (self.head_dim, self.heads);
        let n_rep = heads / self.kv_heads;
        let v_data = self.v();
        let mut out = vec![0f32; self.rows * heads * hd];
        for m in 0..self.rows {
            let (seq, pos) = (qinfo[2 * m] as usize, qinfo[2 * m + 1] as usize);
            let (base, kv_len) = (self.seqs[2 * seq] as usize, self.seqs[2 * seq + 1] as usize);
            let visible = if self.causal { kv_len.min(pos + 1) } else { kv_len };
            for h in 0..heads {
                let g = h / n_rep;
                let q = &self.q[m * self.q_stride + self.q_col + h * hd..][..hd];
                let key = |j: usize| (base + j) * self.kv_stride + g * hd;
                let scores: Vec<f64> = (0..visible)
                    .map(|j| {
                        let k = &self.k[key(j) + self.k_col..][..hd];
                        q.iter().zip(k).map(|(a, b)| *a as f64 * *b as f64).sum()
                    })
                    .collect();
                let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
                let total: f64 = weights.iter().sum();
                for d in 0..hd {
                    let acc: f64 = (0..visible).map(|j| weights[j] * v_data[key(j) + self.v_col + d] as f64).sum();
                    out[(m * heads + h) * hd + d] = if visible == 0 { 0.0 } else { (acc / total) as f32 };
                }
            }
        }
        out
    }
}

/// Values as an f16 cache holds them (rounded to nearest).
fn f16_rounded(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
}

/// f16 pairs packed into u32 words (value 2i in the low half of word i), as `KvFormat::F16` caches hold them.
fn f16_words(v: &[f32]) -> Vec<u32> {
    v.chunks(2).map(|p| half::f16::from_f32(p[0]).to_bits() as u32 | (half::f16::from_f32(*p.get(1).unwrap_or(&0.0)).to_bits() as u32) << 16).collect()
}

fn f16_unpacked(words: &[u32]) -> Vec<f32> {
    words.iter().flat_map(|&w| [half::f16::from_bits(w as u16).to_f32(), half::f16::from_bits((w >> 16) as u16).to_f32()]).collect()
}

/// `KvFormat::Q8` blocks of `v` (whole blocks of `hd`), by the format's rule: per block, scale = max |v| / 127 (f32),
/// q = round(v / scale) clamped to ±127 in bytes of words, then the scale's bits.
fn q8_blocks(v: &[f32], hd: usize) -> Vec<u32> {
    assert!(v.len().is_multiple_of(hd));
    v.chunks(hd)
        .flat_map(|block| {
            let scale = block.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
            let q = |x: f32| if scale > 0.0 { (x / scale).round().clamp(-127.0, 127.0) as i32 } else { 0 };
            let words: Vec<u32> = block.chunks(4).map(|c| c.iter().enumerate().fold(0u32, |w, (k, &x)| w | ((q(x) as u32) & 0xff) << (8 * k))).collect();
            words.into_iter().chain([scale.to_bits()])
        })
        .collect()
}

/// The values `KvFormat::Q8` blocks stand for.
fn q8_unpacked(words: &[u32], hd: usize) -> Vec<f32> {
    words
        .chunks(hd / 4 + 1)
        .flat_map(|b| {
            let scale = f32::from_bits(b[hd / 4]);
            b[..hd / 4].iter().flat_map(move |&w| (0..4).map(move |k| ((w >> (8 * k)) as u8 as i8) as f32 * scale))
        })
        .collect()
}

fn q8_rounded(v: &[f32], hd: usize) -> Vec<f32> {
    q8_unpacked(&q8_blocks(v, hd), hd)
}

/// GPU q8 blocks against the f32 values they quantize: each scale max |v| / 127 (within f32 rounding), each value
/// within half a step of the scale (the GPU's division may round a tie the other way).
fn assert_q8_close(got: &[u32], want: &[f32], hd: usize, what: &str) {
    assert_eq!(got.len(), want.len() / hd * (hd / 4 + 1), "{what}: words");
    let values = q8_unpacked(got, hd);
    for (b, block) in want.chunks(hd).enumerate() {
        let scale = f32::from_bits(got[b * (hd / 4 + 1) + hd / 4]);
        let want_scale = block.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
        assert!((scale - want_scale).abs() <= want_scale * 1e-6, "{what}: block {b} scale {scale}, want {want_scale}");
        for (j, (&g, &w)) in values[b * hd..][..hd].iter().zip(block).enumerate() {
            assert!((g - w).abs() <= 0.5 * scale * (1.0 + 1e-4), "{what}: block {b} value {j} is {g}, want {w} within half a step of {scale}");
        }
    }
}

/// GPU q8 cache words against the CPU's (`q8_blocks` of the same values): the blocks in `written` (just quantized
/// on the GPU) with each scale within f32 rounding of the CPU's and each byte within one unit (the GPU's rotation
/// may round a K value differently, and WGSL's division is not correctly rounded, so a value near a half step may
/// round the other way), every other block bit for bit. Returns how many bytes are a unit off.
fn assert_q8_blocks_near(got: &[u32], want: &[u32], hd: usize, written: &[usize], what: &str) -> usize {
    let words = hd / 4 + 1;
    assert_eq!(got.len(), want.len(), "{what}: words");
    let mut off_by_one = 0;
    for (b, (g, w)) in got.chunks(words).zip(want.chunks(words)).enumerate() {
        if !written.contains(&b) {
            assert_eq!(g, w, "{what}: block {b}, not written, changed");
            continue;
        }
        let (scale, want_scale) = (f32::from_bits(g[hd / 4]), f32::from_bits(w[hd / 4]));
        assert!((scale - want_scale).abs() <= want_scale * 1e-6, "{what}: block {b} scale {scale}, want {want_scale}");
        for j in 0..hd {
            let byte = |ws: &[u32]| (ws[j / 4] >> (8 * (j % 4))) as u8 as i8 as i32;
            let (q, want_q) = (byte(g), byte(w));
            assert!((q - want_q).abs() <= 1, "{what}: block {b} value {j} is {q} steps, want {want_q}");
            off_by_one += (q != want_q) as usize;
        }
    }
    off_by_one
}

/// Each value within one f16 rounding step of `want`'s (the WGSL spec lets `pack2x16float` round either way).
fn assert_f16_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let step = (w.abs() * (1.0 / 1024.0)).max(6.2e-5);
        assert!((g - w).abs() <= step, "{what}: value {i} is {g}, want {w} within one f16 step");
    }
}

impl Problem {
    /// The problem with its keys and values as q8 blocks hold them (separate K/V buffers, head-aligned).
    fn with_q8_kv(mut self) -> Problem {
        self.k = q8_rounded(&self.k, self.head_dim);
        self.v = self.v.as_deref().map(|v| q8_rounded(v, self.head_dim));
        self
    }

    /// The problem with its keys and values rounded to f16, as an f16 cache holds them (separate K/V buffers
    /// only: in the fused layout the queries share the buffer).
    fn with_f16_kv(mut self) -> Problem {
        self.k = f16_rounded(&self.k);
        self.v = self.v.as_deref().map(f16_rounded);
        self
    }
}

/// GPU copies of a problem's buffers; `out` starts as NaN so a value the kernel never writes shows up.
struct GpuProblem {
    format: KvFormat,
    q: GpuBuffer,
    k: GpuBuffer,
    v: Option<GpuBuffer>,
    qinfo: GpuBuffer,
    seqs: GpuBuffer,
    out: GpuBuffer,
}

impl GpuProblem {
    fn new(gpu: &Gpu, p: &Problem, fused: bool) -> GpuProblem {
        GpuProblem::with_format(gpu, p, fused, KvFormat::F32)
    }

    /// K and V held in `format` (F16: the problem's values must already be f16-rounded, `with_f16_kv`).
    fn with_format(gpu: &Gpu, p: &Problem, fused: bool, format: KvFormat) -> GpuProblem {
        assert!(!(fused && format != KvFormat::F32), "the fused layout holds f32 queries");
        let kv = |label: &str, v: &[f32]| match format {
            KvFormat::F32 => gpu.upload(label, v),
            KvFormat::F16 => gpu.upload(label, &f16_words(v)),
            KvFormat::Q8 => gpu.upload(label, &q8_blocks(v, p.head_dim)),
        };
        let k = kv("k", &p.k);
        GpuProblem {
            format,
            // In the fused layout q, k and v are literally one buffer.
            q: if fused { k.clone() } else { gpu.upload("q", &p.q) },
            k,
            v: p.v.as_ref().map(|v| kv("v", v)),
            qinfo: gpu.upload("qinfo", &p.qinfo),
            seqs: gpu.upload("seqs", &p.seqs),
            out: gpu.upload("out", &vec![f32::NAN; p.rows * p.heads * p.head_dim]),
        }
    }

    fn args<'a>(&'a self, p: &Problem, max_keys: u32) -> AttentionArgs<'a> {
        AttentionArgs {
            q_buf: &self.q,
            q_stride: p.q_stride as u32,
            q_col: p.q_col as u32,
            k_buf: &self.k,
            v_buf: self.v.as_ref().unwrap_or(&self.k),
            kv_stride: p.kv_stride as u32,
            k_col: p.k_col as u32,
            v_col: p.v_col as u32,
            qinfo: &self.qinfo,
            seqs: &self.seqs,
            out: &self.out,
            rows: p.rows as u32,
            heads: p.heads as u32,
            kv_heads: p.kv_heads as u32,
            head_dim: p.head_dim as u32,
            causal: p.causal,
            max_keys,
            kv_format: self.format,
        }
    }
}

/// Queries at the interesting positions of every sequence (first, middle, last, past the end) in shuffled order,
/// so workgroups mix sequences, then `run` consecutive prefill-style rows of the longest sequence.
fn mixed_queries(rng: &mut Rng, kv_lens: &[usize], run: usize) -> Vec<(usize, usize)> {
    let mut queries: Vec<(usize, usize)> = Vec::new();
    for (s, &len) in kv_lens.iter().enumerate() {
        for pos in [0, len / 2, len.saturating_sub(1), len + 2] {
            queries.push((s, pos));
        }
    }
    for i in (1..queries.len()).rev() {
        queries.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let longest = (0..kv_lens.len()).max_by_key(|&s| kv_lens[s]).unwrap();
    queries.extend((0..run).map(|pos| (longest, pos)));
    queries
}

/// Random problem: sequences of lengths `kv_lens` at gapped bases (or cache slots), `queries` = (seq, pos) per row.
/// `logit` ≈ the standard deviation of q·k.
#[allow(clippy::too_many_arguments)]
fn make_problem(rng: &mut Rng, layout: Layout, kv_lens: &[usize], queries: &[(usize, usize)], heads: usize, kv_heads: usize, hd: usize, causal: bool, logit: f32) -> Problem {
    let rows = queries.len();
    let qinfo: Vec<u32> = queries.iter().flat_map(|&(s, p)| [s as u32, p as u32]).collect();

    // Entries uniform in ±a give std(q·k) = √hd·a²/3.
    let a = (3.0 * logit / (hd as f32).sqrt()).sqrt();
    let (q_width, kv_width) = (heads * hd, kv_heads * hd);
    let mut seqs = Vec::new();
    let mut next_base = 2;
    for &len in kv_lens {
        seqs.extend([next_base as u32, len as u32]);
        next_base += len + 3;
    }
    let kv_rows = next_base + 2;
    match layout {
        Layout::FusedQkv => {
            let stride = q_width + 2 * kv_width + 3;
            let data = rng.vec(kv_rows.max(rows) * stride, a);
            Problem {
                q: data.clone(),
                q_stride: stride,
                q_col: 0,
                k: data,
                v: None,
                kv_stride: stride,
                k_col: q_width,
                v_col: q_width + kv_width,
                qinfo,
                seqs,
                rows,
                heads,
                kv_heads,
                head_dim: hd,
                causal,
            }
        }
        Layout::PackedKv => Problem {
            q: rng.vec(rows * (q_width + 5), a),
            q_stride: q_width + 5,
            q_col: 5,
            k: rng.vec(kv_rows * 2 * kv_width, a),
            v: None,
            kv_stride: 2 * kv_width,
            k_col: 0,
            v_col: kv_width,
            qinfo,
            seqs,
            rows,
            heads,
            kv_heads,
            head_dim: hd,
            causal,
        },
        Layout::Cache => {
            let max_len = kv_lens.iter().max().unwrap() + 3;
            let seqs = kv_lens.iter().enumerate().flat_map(|(s, &len)| [(s * max_len) as u32, len as u32]).collect();
            Problem {
                q: rng.vec(rows * (q_width + 5), a),
                q_stride: q_width + 5,
                q_col: 5,
                k: rng.vec(kv_lens.len() * max_len * kv_width, a),
                v: Some(rng.vec(kv_lens.len() * max_len * kv_width, 1.0)),
                kv_stride: kv_width,
                k_col: 0,
                v_col: 0,
                qinfo,
                seqs,
                rows,
                heads,
                kv_heads,
                head_dim: hd,
                causal,
            }
        }
    }
}

/// Max error relative to max |reference|.
const TOL: f64 = 1e-5;

/// Checks the GPU output against the reference: finite everywhere, exact zeros where no key is visible,
/// max error relative to max |reference| under TOL.
fn check(p: &Problem, qinfo: &[u32], got: &[f32], what: &str) {
    let want = p.reference(qinfo);
    assert!(got.iter().all(|x| x.is_finite()), "{what}: non-finite output");
    let width = p.heads * p.head_dim;
    for m in 0..p.rows {
        if p.seqs[2 * qinfo[2 * m] as usize + 1] == 0 {
            assert!(got[m * width..][..width].iter().all(|&x| x == 0.0), "{what}: row {m} sees no key but is not zero");
        }
    }
    let err = rel_err(got, &want);
    println!("{what}: rel err {err:.2e}");
    assert!(err < TOL, "{what}: rel err {err:.3e} ≥ {TOL:.0e}");
}

fn run_both(gpu: &Gpu, p: &Problem, fused: bool, what: &str) {
    run_both_in(gpu, p, fused, KvFormat::F32, what);
}

fn run_both_in(gpu: &Gpu, p: &Problem, fused: bool, format: KvFormat, what: &str) {
    let bufs = GpuProblem::with_format(gpu, p, fused, format);
    let args = bufs.args(p, p.max_keys());
    let prefill = attention_prefill(gpu, &args);
    gpu.run(&prefill.iter().collect::<Vec<_>>());
    check(p, &p.qinfo, &gpu.read_f32_blocking(&bufs.out).unwrap(), &format!("{what} prefill"));

    // The decode with workgroup-memory and with subgroup reductions, each against the reference and both within a
    // few ulps of each other (only the order of the sums differs).
    let mut outs = Vec::new();
    for reduction in reductions(gpu) {
        gpu.write(&bufs.out, &vec![f32::NAN; p.rows * p.heads * p.head_dim]);
        let decode = with_reduction(gpu, reduction, || attention_decode(gpu, &args));
        gpu.run(&decode.iter().collect::<Vec<_>>());
        let got = gpu.read_f32_blocking(&bufs.out).unwrap();
        check(p, &p.qinfo, &got, &format!("{what} decode ({reduction:?} reductions)"));
        outs.push(got);
    }
    if let [plain, subgroup] = &outs[..] {
        let err = rel_err(subgroup, plain);
        assert!(err < 1e-5, "{what} decode: subgroup and workgroup reductions differ by {err:.2e}");
    }
}


/// Every heads/kv_heads pairing, causal or not, cycling through layouts and logit magnitudes, for one head_dim.
fn sweep(hd: usize, seed: u64) {
    let gpu = test_gpu();
    let mut rng = Rng::new(seed);
    let layouts = [Layout::FusedQkv, Layout::PackedKv, Layout::Cache];
    let mut case = 0;
    for (heads, kv_heads) in [(4, 2), (4, 4), (16, 4)] {
        for causal in [false, true] {
            let layout = layouts[case % 3];
            // Logits of std 20 (|q·k| up to ~60) in half the cases, causal and not: the online softmax must stay stable.
            let logit = if (case + case / 2) % 2 == 1 { 20.0 } else { 1.0 };
            let kv_lens = [37, 0, 5, 300, 1];
            let queries = mixed_queries(&mut rng, &kv_lens, 41);
            let p = make_problem(&mut rng, layout, &kv_lens, &queries, heads, kv_heads, hd, causal, logit);
            let what = format!("hd {hd} heads {heads}/{kv_heads} causal {causal} {layout:?} logit std {logit}");
            let fused = matches!(layout, Layout::FusedQkv);
            run_both(&gpu, &p, fused, &what);
            if !fused {
                // The same problem over f16 caches: exact against the f16-rounded keys and values.
                run_both_in(&gpu, &p.clone().with_f16_kv(), false, KvFormat::F16, &format!("{what} f16 K/V"));
                // And over q8 blocks: exact against the keys and values the blocks stand for.
                run_both_in(&gpu, &p.with_q8_kv(), false, KvFormat::Q8, &format!("{what} q8 K/V"));
            }
            case += 1;
        }
    }
    // Keys that fit one decode chunk (64 keys at 4 heads per kv head, 128 otherwise): the decode writes the
    // output in its single pass, including zeros for a row without keys.
    for (heads, kv_heads, kv_lens) in [(16, 4, [64usize, 0, 5, 33, 1]), (4, 4, [128, 0, 5, 100, 1]), (4, 2, [128, 0, 77, 3, 1])] {
        for causal in [false, true] {
            let queries = mixed_queries(&mut rng, &kv_lens, 9);
            let p = make_problem(&mut rng, Layout::PackedKv, &kv_lens, &queries, heads, kv_heads, hd, causal, 20.0);
            let what = format!("hd {hd} heads {heads}/{kv_heads} causal {causal} single-chunk decode");
            run_both(&gpu, &p, false, &what);
            run_both_in(&gpu, &p.clone().with_f16_kv(), false, KvFormat::F16, &format!("{what} f16 K/V"));
            run_both_in(&gpu, &p.with_q8_kv(), false, KvFormat::Q8, &format!("{what} q8 K/V"));
        }
    }
}

#[test]
fn attention_head_dim_16() {
    sweep(16, 1);
}

#[test]
fn attention_head_dim_24() {
    sweep(24, 2);
}

#[test]
fn attention_head_dim_128() {
    sweep(128, 3);
}

/// Runs `attention_prefill_limited` with a scratch cap and checks the output and the number of dispatches.
fn run_prefill_limited(gpu: &Gpu, p: &Problem, fused: bool, max_scratch_bytes: u64, dispatches: usize, what: &str) {
    let bufs = GpuProblem::new(gpu, p, fused);
    let ds = attention_prefill_limited(gpu, &bufs.args(p, p.max_keys()), max_scratch_bytes);
    assert_eq!(ds.len(), dispatches, "{what}: dispatches");
    gpu.run(&ds.iter().collect::<Vec<_>>());
    check(p, &p.qinfo, &gpu.read_f32_blocking(&bufs.out).unwrap(), what);
}

/// The flash fallback (no scratch fits) and the tiled path in chunks of 64 rows (a scratch of one 64-row chunk),
/// on the sweep's mixed sequences, causal and not, GQA, large logits.
#[test]
fn attention_prefill_fallback_and_row_chunks() {
    let gpu = test_gpu();
    let mut rng = Rng::new(11);
    for (hd, heads, kv_heads) in [(24usize, 4usize, 2usize), (128, 16, 4)] {
        for causal in [false, true] {
            let kv_lens = [37, 0, 5, 300, 1];
            let queries = mixed_queries(&mut rng, &kv_lens, 130);
            let p = make_problem(&mut rng, Layout::FusedQkv, &kv_lens, &queries, heads, kv_heads, hd, causal, 20.0);
            let what = format!("hd {hd} heads {heads}/{kv_heads} causal {causal}");
            run_prefill_limited(&gpu, &p, true, 0, 1, &format!("{what} flash fallback"));
            // One 64-row chunk of scores + statistics: rows go in ceil(rows / 64) chunks of 3 dispatches.
            let one_chunk = (64 * heads * (p.max_keys() as usize).next_multiple_of(4) * 4 + 64 * heads * 16) as u64;
            run_prefill_limited(&gpu, &p, true, one_chunk, 3 * p.rows.div_ceil(64), &format!("{what} 64-row chunks"));
            run_prefill_limited(&gpu, &p, true, one_chunk - 4, 1, &format!("{what} flash, scratch 4 bytes short"));
        }
    }
}

/// Encoder-style packed segments (queries and keys are the same rows of one fused QKV buffer, segments back to
/// back, so 64-row tiles hold several sequences, some of 1 row), non-causal; and a decoder prompt prefill (2 CFG
/// rows × 77 positions over caches of 200 rows, causal, keys bounded by the cache length). Tiled path, one chunk.
#[test]
fn attention_prefill_packed_segments_and_prompt() {
    let gpu = test_gpu();
    let mut rng = Rng::new(13);
    for (hd, heads, kv_heads) in [(128usize, 16usize, 16usize), (16, 4, 4)] {
        let segments = [37usize, 1, 50, 7, 100, 1, 3];
        let n: usize = segments.iter().sum();
        let stride = (heads + 2 * kv_heads) * hd;
        let a = (3.0 * 4.0 / (hd as f32).sqrt()).sqrt();
        let mut seqs = Vec::new();
        let mut qinfo = Vec::new();
        let mut offset = 0;
        for (s, &len) in segments.iter().enumerate() {
            seqs.extend([offset as u32, len as u32]);
            qinfo.extend((0..len).flat_map(|pos| [s as u32, pos as u32]));
            offset += len;
        }
        let data = rng.vec(n * stride, a);
        let p = Problem {
            q: data.clone(),
            q_stride: stride,
            q_col: 0,
            k: data,
            v: None,
            kv_stride: stride,
            k_col: heads * hd,
            v_col: (heads + kv_heads) * hd,
            qinfo,
            seqs,
            rows: n,
            heads,
            kv_heads,
            head_dim: hd,
            causal: false,
        };
        let bufs = GpuProblem::new(&gpu, &p, true);
        // The encoder's bound on keys: the total token count.
        let ds = attention_prefill(&gpu, &bufs.args(&p, n as u32));
        assert_eq!(ds.len(), 3, "packed segments: one chunk");
        gpu.run(&ds.iter().collect::<Vec<_>>());
        check(&p, &p.qinfo, &gpu.read_f32_blocking(&bufs.out).unwrap(), &format!("hd {hd} heads {heads} packed segments {segments:?}"));
    }
    let queries: Vec<(usize, usize)> = (0..2).flat_map(|s| (0..77).map(move |pos| (s, pos))).collect();
    let p = make_problem(&mut rng, Layout::Cache, &[200, 200], &queries, 16, 4, 128, true, 20.0);
    run_prefill_limited(&gpu, &p, false, u64::MAX, 3, "prompt prefill 2 × 77 rows, causal, 200-row caches, 16/4 heads");
}

/// Decoder steps: one query per sequence, hundreds of keys in a cache, the same dispatches recorded again after
/// the host rewrites qinfo with later positions (chunks past the old length become visible).
#[test]
fn attention_decode_reuses_dispatch_as_pos_grows() {
    let gpu = test_gpu();
    let mut rng = Rng::new(7);
    // Decode shape: one row per sequence, the positions rewritten each step.
    let p = make_problem(&mut rng, Layout::Cache, &[700, 700, 129, 0], &[(0, 0), (1, 0), (2, 0), (3, 0)], 16, 4, 128, true, 4.0);
    let bufs = GpuProblem::new(&gpu, &p, false);
    let decode = attention_decode(&gpu, &bufs.args(&p, 704));
    let steps: [[u32; 8]; 3] = [[0, 10, 1, 63, 2, 64, 3, 0], [0, 64, 1, 511, 2, 128, 3, 5], [0, 699, 1, 650, 2, 900, 3, 9]];
    // Step 0 leaves most chunks invisible; later steps uncover them.
    for (i, qinfo) in steps.iter().enumerate() {
        gpu.write(&bufs.qinfo, qinfo);
        gpu.write(&bufs.out, &vec![f32::NAN; p.rows * p.heads * p.head_dim]);
        gpu.run(&decode.iter().collect::<Vec<_>>());
        check(&p, qinfo, &gpu.read_f32_blocking(&bufs.out).unwrap(), &format!("decode step {i} qinfo {qinfo:?}"));
    }
}

/// RoPE + cache write in one dispatch: Q rotated in place (K and V of the source untouched), rotated K and V at
/// (seq, pos) of the caches, rows past the cache skipped, positions past the tables unrotated; against the CPU,
/// with f32 caches and with f16 caches (every untouched value kept bit for bit, written ones within an f16 step).
#[test]
fn rope_kv_write_rotates_and_writes_new_rows() {
    let gpu = test_gpu();
    let mut rng = Rng::new(23);
    for format in KvFormat::ALL {
        for (head_dim, q_heads, kv_heads, max_pos) in [(8usize, 3usize, 2usize, 9usize), (128, 4, 1, 64), (12, 2, 3, 20), (6, 1, 2, 9)] {
            if !format.supports(head_dim as u32) {
                continue;
            }
            let (n_seq, max_len) = (3usize, 11usize);
            let width = kv_heads * head_dim;
            let row_stride = q_heads * head_dim + 2 * width + 5; // a few unrelated columns at the end of each row
            let (cos, sin) = rope_tables(max_pos, head_dim, 10000.0);
            let (cb, sb) = (gpu.upload("cos", &cos), gpu.upload("sin", &sin));
            let rows = 6usize;
            let cache_len = n_seq * max_len * width;
            let (mut k_want, mut v_want) = (rng.vec(cache_len, 1.0), rng.vec(cache_len, 1.0));
            let upload = |label: &str, v: &mut Vec<f32>| match format {
                KvFormat::F32 => gpu.upload(label, v),
                KvFormat::F16 => {
                    *v = f16_rounded(v);
                    gpu.upload(label, &f16_words(v))
                }
                KvFormat::Q8 => {
                    *v = q8_rounded(v, head_dim);
                    gpu.upload(label, &q8_blocks(v, head_dim))
                }
            };
            let (k_cache, v_cache) = (upload("k_cache", &mut k_want), upload("v_cache", &mut v_want));
            let (k_before, v_before) = (k_want.clone(), v_want.clone());
            // (seq, pos): in range; pos ≥ max_len; seq past the cache; pos ≥ max_pos (unrotated, still cached when < max_len).
            let qinfo: Vec<u32> = [[0u32, 0], [2, 10], [1, 4], [1, max_len as u32], [3, 0], [0, max_pos.min(max_len - 1) as u32]].concat();
            let qinfo = if max_pos < max_len { qinfo } else { [&qinfo[..10], &[0u32, 7]].concat() };
            let x = rng.vec(rows * row_stride, 1.0);
            let (xb, qb) = (gpu.upload("qkv", &x), gpu.upload("qinfo", &qinfo));
            let d = rope_kv_write(&gpu, &xb, &qb, &cb, &sb, &k_cache, &v_cache, rows as u32, row_stride as u32, q_heads as u32, head_dim as u32, width as u32, max_len as u32, format);
            gpu.run(&[&d]);
            let half = head_dim / 2;
            let rotate = |v: &[f32], pos: usize| -> Vec<f32> {
                if pos >= max_pos {
                    return v.to_vec();
                }
                let (c, s) = (&cos[pos * half..][..half], &sin[pos * half..][..half]);
                (0..head_dim)
                    .map(|i| if i < half { v[i] * c[i] - v[i + half] * s[i] } else { v[i] * c[i - half] + v[i - half] * s[i - half] })
                    .collect()
            };
            let mut x_want = x.clone();
            for m in 0..rows {
                let (seq, pos) = (qinfo[2 * m] as usize, qinfo[2 * m + 1] as usize);
                let row = &x[m * row_stride..][..row_stride];
                for h in 0..q_heads {
                    x_want[m * row_stride + h * head_dim..][..head_dim].copy_from_slice(&rotate(&row[h * head_dim..][..head_dim], pos));
                }
                if seq < n_seq && pos < max_len {
                    let dst = (seq * max_len + pos) * width;
                    for g in 0..kv_heads {
                        let k = &row[(q_heads + g) * head_dim..][..head_dim];
                        k_want[dst + g * head_dim..][..head_dim].copy_from_slice(&rotate(k, pos));
                    }
                    v_want[dst..dst + width].copy_from_slice(&row[q_heads * head_dim + width..][..width]);
                }
            }
            let what = format!("{format} caches, hd={head_dim}");
            let e = rel_err(&gpu.read_f32_blocking(&xb).unwrap(), &x_want);
            assert!(e <= 1e-6, "{what}: source rows rel err {e:.3e}");
            match format {
                KvFormat::F32 => {
                    let e = rel_err(&gpu.read_f32_blocking(&k_cache).unwrap(), &k_want);
                    assert!(e <= 1e-6, "{what}: k cache rel err {e:.3e}");
                    assert_eq!(gpu.read_f32_blocking(&v_cache).unwrap(), v_want, "{what}: v cache");
                }
                KvFormat::F16 => {
                    let (k_got, v_got) = (f16_unpacked(&gpu.read_u32_blocking(&k_cache).unwrap()), f16_unpacked(&gpu.read_u32_blocking(&v_cache).unwrap()));
                    for (got, want, before, name) in [(&k_got, &k_want, &k_before, "k"), (&v_got, &v_want, &v_before, "v")] {
                        assert_f16_close(got, want, &format!("{what}: {name} cache"));
                        // Values the write does not touch stay exactly as they were.
                        for i in 0..cache_len {
                            if want[i] == before[i] {
                                assert_eq!(got[i], before[i], "{what}: {name} cache value {i} changed");
                            }
                        }
                    }
                }
                KvFormat::Q8 => {
                    let words = head_dim / 4 + 1;
                    for (cache, want, before, name) in [(&k_cache, &k_want, &k_before, "k"), (&v_cache, &v_want, &v_before, "v")] {
                        let got = gpu.read_u32_blocking(cache).unwrap();
                        let got_values = q8_unpacked(&got, head_dim);
                        let mut written = 0;
                        for b in 0..cache_len / head_dim {
                            let r = b * head_dim..(b + 1) * head_dim;
                            if want[r.clone()] == before[r.clone()] {
                                // A block the write does not touch stays exactly as it was.
                                assert_eq!(&got_values[r.clone()], &before[r], "{what}: {name} cache block {b} changed");
                            } else {
                                assert_q8_close(&got[b * words..][..words], &want[r], head_dim, &format!("{what}: {name} cache block {b}"));
                                written += 1;
                            }
                        }
                        // Rows (0, 0), (2, 10), (1, 4) and the one at max_pos or 7: four positions of kv_heads blocks.
                        assert_eq!(written, 4 * kv_heads, "{what}: {name} blocks written");
                    }
                }
            }
        }
    }
}

/// `pack_kv` into q8 blocks: each head-sized block quantized by the format's rule (scale max |v| / 127, values
/// within half a step), blocks of zeros (scale 0) and of one large value, the words past the blocks untouched;
/// the attention kernels then read the blocks back as `q8_unpacked` does (the sweep above).
#[test]
fn pack_kv_q8_quantizes_blocks() {
    let gpu = test_gpu();
    let mut rng = Rng::new(37);
    for (hd, blocks) in [(4usize, 1usize), (16, 7), (24, 5), (128, 9), (256, 3)] {
        let mut v = rng.vec(hd * blocks, 3.0);
        v[..hd].fill(0.0);
        if blocks > 2 {
            v[2 * hd + hd / 2] = 1e4;
        }
        let src = gpu.upload("values", &v);
        let words = blocks * (hd / 4 + 1);
        assert_eq!(KvFormat::Q8.bytes((hd * blocks) as u64, hd as u32), words as u64 * 4);
        let dst = gpu.upload("packed", &vec![0xdead_beefu32; words + 3]);
        gpu.run(&[&pack_kv(&gpu, &src, &dst, (hd * blocks) as u32, hd as u32, KvFormat::Q8)]);
        let got = gpu.read_u32_blocking(&dst).unwrap();
        let what = format!("hd {hd}, {blocks} blocks");
        assert_q8_close(&got[..words], &v, hd, &what);
        assert!(got[..hd / 4 + 1].iter().all(|&w| w == 0), "{what}: a block of zeros is all zero words");
        assert_eq!(&got[words..], &[0xdead_beefu32; 3], "{what}: words past the blocks");
        // Negative control: the check catches a value off by two steps of its block.
        let last = hd * blocks - 1;
        let step = f32::from_bits(got[words - 1]);
        let mut off = v.clone();
        off[last] += 2.0 * step.max(1e-3);
        let caught = std::panic::catch_unwind(|| assert_q8_close(&got[..words], &off, hd, "off by two steps")).is_err();
        assert!(caught, "{what}: a value off by two steps passes the check");
    }
}

/// `pack_f16`: word i holds values 2i and 2i + 1 rounded to f16, an odd count padded with 0, the rest of the
/// destination untouched.
#[test]
fn pack_f16_packs_pairs() {
    let gpu = test_gpu();
    let mut rng = Rng::new(29);
    for n in [1usize, 2, 7, 513, 1000] {
        let v = rng.vec(n, 3.0);
        let src = gpu.upload("values", &v);
        let dst = gpu.upload("packed", &vec![0xdead_beefu32; n.div_ceil(2) + 3]);
        gpu.run(&[&pack_f16(&gpu, &src, &dst, n as u32)]);
        let got = gpu.read_u32_blocking(&dst).unwrap();
        let mut want_values = v.clone();
        want_values.resize(n.div_ceil(2) * 2, 0.0);
        assert_f16_close(&f16_unpacked(&got[..n.div_ceil(2)]), &f16_rounded(&want_values), &format!("{n} values"));
        assert_eq!(&got[n.div_ceil(2)..], &[0xdead_beefu32; 3], "{n} values: words past the packed ones");
    }
}

/// A decoder step's self-attention with RoPE and the cache update folded in (`attention_decode_appending`),
/// stepped several times through the same dispatches, against the CPU: queries rotated at their positions (past
/// the tables: unrotated), each row's new K (rotated) and V attended and appended to the caches at (seq, pos), a
/// position past the cache attending over it without writing, the fused QKV source left untouched. Over f32, f16
/// and q8 caches; q8 keys are scored a word at a time where head_dim is a multiple of 64 (128 and 64 here), a value
/// at a time otherwise (16 and 32).
#[test]
fn attention_decode_appending_matches_rope_then_attention() {
    let gpu = test_gpu();
    let mut rng = Rng::new(31);
    for reduction in reductions(&gpu) {
        for format in KvFormat::ALL {
            for (hd, heads, kv_heads, max_pos) in [(16usize, 4usize, 2usize, 3072usize), (128, 16, 4, 3072), (32, 4, 4, 150), (64, 4, 2, 150)] {
                let (n_seq, max_len) = (4usize, 300usize);
                let width = kv_heads * hd;
                let stride = heads * hd + 2 * width + 3; // fused projection rows [Q | K | V] + unrelated columns
                let (cos, sin) = rope_tables(max_pos, hd, 10000.0);
                let (cb, sb) = (gpu.upload("cos", &cos), gpu.upload("sin", &sin));
                // Sequence 3 has a shorter cache view: its last step's position lies past it.
                let seqs: Vec<u32> = (0..n_seq).flat_map(|s| [(s * max_len) as u32, if s == 3 { 140 } else { max_len as u32 }]).collect();
                let mut k_cache = rng.vec(n_seq * max_len * width, 1.0);
                let mut v_cache = rng.vec(n_seq * max_len * width, 1.0);
                // q8: the caches' words as the CPU expects them (blocks of hd values, head-aligned in every row).
                let (mut k_words, mut v_words) = (Vec::new(), Vec::new());
                let (kb, vb) = match format {
                    KvFormat::F32 => (gpu.upload("k_cache", &k_cache), gpu.upload("v_cache", &v_cache)),
                    KvFormat::F16 => {
                        k_cache = f16_rounded(&k_cache);
                        v_cache = f16_rounded(&v_cache);
                        (gpu.upload("k_cache", &f16_words(&k_cache)), gpu.upload("v_cache", &f16_words(&v_cache)))
                    }
                    KvFormat::Q8 => {
                        (k_words, v_words) = (q8_blocks(&k_cache, hd), q8_blocks(&v_cache, hd));
                        (k_cache, v_cache) = (q8_unpacked(&k_words, hd), q8_unpacked(&v_words, hd));
                        (gpu.upload("k_cache", &k_words), gpu.upload("v_cache", &v_words))
                    }
                };
                let rows = 4usize;
                let qkv_b = gpu.buffer("qkv", (rows * stride * 4) as u64);
                let qinfo_b = gpu.buffer("qinfo", (rows * 8) as u64);
                let seqs_b = gpu.upload("seqs", &seqs);
                let out = gpu.buffer("out", (rows * heads * hd * 4) as u64);
                let args = AttentionArgs {
                    q_buf: &qkv_b,
                    q_stride: stride as u32,
                    q_col: 0,
                    k_buf: &kb,
                    v_buf: &vb,
                    kv_stride: width as u32,
                    k_col: 0,
                    v_col: 0,
                    qinfo: &qinfo_b,
                    seqs: &seqs_b,
                    out: &out,
                    rows: rows as u32,
                    heads: heads as u32,
                    kv_heads: kv_heads as u32,
                    head_dim: hd as u32,
                    causal: true,
                    max_keys: max_len as u32,
                    kv_format: format,
                };
                assert!(dia_webgpu::kernels::attention::can_append_in_decode(&args));
                let step = with_reduction(&gpu, reduction, || dia_webgpu::kernels::attention::attention_decode_appending(&gpu, &args, &cb, &sb));
                let half = hd / 2;
                let rotate = |v: &[f32], pos: usize| -> Vec<f32> {
                    if pos >= max_pos {
                        return v.to_vec();
                    }
                    let (c, s) = (&cos[pos * half..][..half], &sin[pos * half..][..half]);
                    (0..hd).map(|i| if i < half { v[i] * c[i] - v[i + half] * s[i] } else { v[i] * c[i - half] + v[i - half] * s[i - half] }).collect()
                };
                // Rows: seq 0 from position 0, seq 1 across a chunk edge, seq 2 past the RoPE tables of the last case,
                // seq 3 reaching past its cache view. Row order shuffled against seq order.
                let starts = [(2usize, 160usize), (0, 0), (3, 138), (1, 62)];
                for i in 0..4 {
                    let qinfo: Vec<u32> = starts.iter().flat_map(|&(s, p0)| [s as u32, (p0 + i) as u32]).collect();
                    let x = rng.vec(rows * stride, 0.5);
                    gpu.write(&qkv_b, &x);
                    gpu.write(&qinfo_b, &qinfo);
                    gpu.write(&out, &vec![f32::NAN; rows * heads * hd]);
                    gpu.run(&step.iter().collect::<Vec<_>>());
                    // CPU: rotate the queries, append the new keys, attend over the caches.
                    let mut q = vec![0f32; rows * heads * hd];
                    let mut written_blocks = Vec::new();
                    for m in 0..rows {
                        let (seq, pos) = (qinfo[2 * m] as usize, qinfo[2 * m + 1] as usize);
                        let row = &x[m * stride..][..stride];
                        for h in 0..heads {
                            q[(m * heads + h) * hd..][..hd].copy_from_slice(&rotate(&row[h * hd..][..hd], pos));
                        }
                        if pos < seqs[2 * seq + 1] as usize {
                            let dst = (seq * max_len + pos) * width;
                            for g in 0..kv_heads {
                                k_cache[dst + g * hd..][..hd].copy_from_slice(&rotate(&row[(heads + g) * hd..][..hd], pos));
                            }
                            v_cache[dst..dst + width].copy_from_slice(&row[heads * hd + width..][..width]);
                            if format == KvFormat::Q8 {
                                // The blocks `rope_kv_write` would write: the rotated K and the V quantized.
                                let block_words = hd / 4 + 1;
                                for b in dst / hd..(dst + width) / hd {
                                    k_words[b * block_words..][..block_words].copy_from_slice(&q8_blocks(&k_cache[b * hd..][..hd], hd));
                                    v_words[b * block_words..][..block_words].copy_from_slice(&q8_blocks(&v_cache[b * hd..][..hd], hd));
                                    written_blocks.push(b);
                                }
                            }
                        }
                    }
                    let p = Problem {
                        q,
                        q_stride: heads * hd,
                        q_col: 0,
                        k: k_cache.clone(),
                        v: Some(v_cache.clone()),
                        kv_stride: width,
                        k_col: 0,
                        v_col: 0,
                        qinfo: qinfo.clone(),
                        seqs: seqs.clone(),
                        rows,
                        heads,
                        kv_heads,
                        head_dim: hd,
                        causal: true,
                    };
                    let what = format!("{reduction:?} reductions, {format} caches, hd {hd} heads {heads}/{kv_heads} step {i}");
                    // The step attends over its own new key in f32 (from the QKV row) and over the cached ones as cached.
                    check(&p, &qinfo, &gpu.read_f32_blocking(&out).unwrap(), &what);
                    match format {
                        KvFormat::F32 => {
                            let e = rel_err(&gpu.read_f32_blocking(&kb).unwrap(), &k_cache);
                            assert!(e <= 1e-6, "{what}: k cache rel err {e:.3e}");
                            assert_eq!(gpu.read_f32_blocking(&vb).unwrap(), v_cache, "{what}: v cache");
                        }
                        KvFormat::F16 => {
                            let (k_got, v_got) = (f16_unpacked(&gpu.read_u32_blocking(&kb).unwrap()), f16_unpacked(&gpu.read_u32_blocking(&vb).unwrap()));
                            assert_f16_close(&k_got, &k_cache, &format!("{what}: k cache"));
                            assert_f16_close(&v_got, &v_cache, &format!("{what}: v cache"));
                            // Later steps read the new keys as the cache holds them.
                            (k_cache, v_cache) = (k_got, v_got);
                        }
                        KvFormat::Q8 => {
                            let (k_got, v_got) = (gpu.read_u32_blocking(&kb).unwrap(), gpu.read_u32_blocking(&vb).unwrap());
                            for (got, want, name) in [(&k_got, &k_words, "k"), (&v_got, &v_words, "v")] {
                                let off_by_one = assert_q8_blocks_near(got, want, hd, &written_blocks, &format!("{what}: {name} cache"));
                                println!("{what}: {name} cache, {} blocks written, {off_by_one} bytes a unit off the CPU's", written_blocks.len());
                            }
                            // Later steps read the new keys as the cache holds them.
                            (k_cache, v_cache) = (q8_unpacked(&k_got, hd), q8_unpacked(&v_got, hd));
                            (k_words, v_words) = (k_got, v_got);
                        }
                    }
                    assert_eq!(gpu.read_f32_blocking(&qkv_b).unwrap(), x, "{what}: the QKV rows must stay unrotated");
                }
            }
        }
    }
}

/// The appending decode's generated source over q8 caches: cached keys scored a word at a time (`load_k_word`, one
/// scale per key) where head_dim is a multiple of 64 (a word's rotary partner is then in the same lane), a value at
/// a time otherwise, never by words over f16 caches; the combine writes the new key through the format's generated
/// store, q8 blocks after the workgroup reduced their maxima. Each source validates in naga (uniformity included:
/// the reductions' barriers must stay in uniform control flow).
#[test]
fn appending_decode_scores_q8_keys_by_words_where_head_dim_allows() {
    use dia_webgpu::gpu::KernelVariant;
    use dia_webgpu::kernels::attention::{AttentionEntry, AttentionVariant};
    use wgpu::naga;
    for kv in [KvFormat::Q8, KvFormat::F16] {
        for hd in [16u32, 32, 64, 80, 128, 192, 256] {
            for reduction in [Reduction::Workgroup, Reduction::Subgroup] {
                for nr in [1, 2, 4] {
                    let v = AttentionVariant { entry: AttentionEntry::DecodePartial, head_dim: hd, decode_heads: nr, single: false, append: true, kv, reduction };
                    let what = format!("{kv} caches, hd {hd}, {nr} heads per workgroup, {reduction:?} reductions");
                    let source = dia_webgpu::gpu::shader_source_for_target(&v.source()).to_string();
                    let words = kv == KvFormat::Q8 && hd.is_multiple_of(64);
                    assert_eq!(source.contains("load_k_word("), words, "{what}: keys scored by words");
                    assert!(source.contains("store_new_key_k(lid, dst + p.k_col, slot, k_scale);"), "{what}: the combine stores the new key");
                    // q8 blocks' maxima are reduced by the workgroup before the stores, not scanned per invocation.
                    assert_eq!(source.contains("let k_max = "), kv == KvFormat::Q8, "{what}: the combine reduces the q8 block maxima");
                    let module = naga::front::wgsl::parse_str(&source).unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(&source)));
                    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
                        .validate(&module)
                        .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(&source)));
                }
            }
        }
    }
}

/// Timings at the real model's shapes (head_dim 128), for a real GPU:
/// `cargo test --release --test kernels_attention -- --ignored --nocapture`. Decoder self-attention decode over a
/// full 3072-row cache, cross-attention decode over 1024 keys, encoder prefill over 2 × 1024 tokens, decoder prefill
/// over a 2 × 300-row prompt; all but the encoder are also checked against the reference.
#[test]
#[ignore]
fn attention_bench_model_shapes() {
    let gpu = test_gpu();
    println!("adapter: {}", gpu.describe());
    let mut rng = Rng::new(5);
    let all_rows = |len: usize| -> Vec<(usize, usize)> { (0..2).flat_map(|s| (0..len).map(move |pos| (s, pos))).collect() };
    // (name, layout, keys per sequence, queries, heads, kv_heads, causal, decode)
    let cases = [
        ("decode self-attn, 2 rows × 3072 keys, 16/4 heads", Layout::Cache, 3072, vec![(0, 3071), (1, 3071)], 16, 4, true, true),
        ("decode cross-attn, 2 rows × 1024 keys, 16/16 heads", Layout::PackedKv, 1024, vec![(0, 0), (1, 0)], 16, 16, false, true),
        ("prefill encoder, 2 × 1024 tokens, 16/16 heads", Layout::FusedQkv, 1024, all_rows(1024), 16, 16, false, false),
        ("prefill prompt, 2 × 300 rows causal, 16/4 heads", Layout::FusedQkv, 300, all_rows(300), 16, 4, true, false),
    ];
    for (name, layout, len, queries, heads, kv_heads, causal, decode) in cases {
        let p = make_problem(&mut rng, layout, &[len, len], &queries, heads, kv_heads, 128, causal, 4.0);
        let bufs = GpuProblem::new(&gpu, &p, matches!(layout, Layout::FusedQkv));
        let args = bufs.args(&p, len as u32);
        let dispatches = if decode { attention_decode(&gpu, &args) } else { attention_prefill(&gpu, &args) };
        let once: Vec<&Dispatch> = dispatches.iter().collect();
        let start = Instant::now();
        gpu.run(&once);
        gpu.wait_idle().unwrap();
        let first = start.elapsed().as_secs_f64();
        if len < 1024 || decode {
            check(&p, &p.qinfo, &gpu.read_f32_blocking(&bufs.out).unwrap(), name);
        }
        // About half a second of repeats in one submission.
        let iters = ((0.5 / first) as usize).clamp(3, 500);
        let repeated: Vec<&Dispatch> = (0..iters).flat_map(|_| once.iter().copied()).collect();
        let start = Instant::now();
        gpu.run(&repeated);
        gpu.wait_idle().unwrap();
        let secs = start.elapsed().as_secs_f64() / iters as f64;
        let keys_seen: usize = queries.iter().map(|&(_, pos)| if causal { len.min(pos + 1) } else { len }).sum();
        let flops = 4.0 * keys_seen as f64 * heads as f64 * 128.0;
        let kv_bytes = 2.0 * 2.0 * len as f64 * kv_heads as f64 * 128.0 * 4.0;
        println!(
            "{name}: {:.1} µs ({iters} runs), {:.2} TFLOP/s, K/V read once = {:.0} GB/s",
            secs * 1e6,
            flops / secs / 1e12,
            kv_bytes / secs / 1e9
        );
    }
}

/// The prefill's score scratch is one buffer for every layer's prefill while their dispatches exist (a dispatch
/// holds what it binds), and the GPU memory accounting sees it for as long as the bind groups hold it: before,
/// each call's scratch handle was dropped on return, so every layer made its own (uncounted) scratch that the
/// bind groups kept alive, 12 of ~66 MB for the full encoder on 1000 bytes.
#[test]
fn prefill_score_scratch_is_shared_and_counted_while_bound() {
    let gpu = test_gpu();
    let mut rng = Rng::new(21);
    let kv_lens = [37, 5, 300];
    let queries = mixed_queries(&mut rng, &kv_lens, 40);
    let p = make_problem(&mut rng, Layout::FusedQkv, &kv_lens, &queries, 4, 2, 16, false, 1.0);
    let bufs = GpuProblem::new(&gpu, &p, true);
    let scratch_groups = |gpu: &Gpu| gpu.allocated_breakdown().into_iter().filter(|g| g.label == "attention.prefill.scores").collect::<Vec<_>>();
    let first = attention_prefill(&gpu, &bufs.args(&p, p.max_keys()));
    let second = attention_prefill(&gpu, &bufs.args(&p, p.max_keys()));
    let groups = scratch_groups(&gpu);
    assert_eq!(groups.len(), 1, "the scratch bound by live dispatches is counted: {groups:?}");
    assert_eq!(groups[0].buffers, 1, "two prefills share one scratch: {groups:?}");
    gpu.run(&first.iter().chain(&second).collect::<Vec<_>>());
    check(&p, &p.qinfo, &gpu.read_f32_blocking(&bufs.out).unwrap(), "shared scratch");
    drop((first, second));
    assert!(scratch_groups(&gpu).is_empty(), "freed with the dispatches");
}

/// `Gpu::peak_breakdown` sums to the peak, by group (labels with numeric parts folded), and keeps the peak's
/// composition after buffers are freed.
#[test]
fn peak_breakdown_sums_to_the_peak() {
    use dia_webgpu::gpu::fold_label;
    assert_eq!(fold_label("kv_k.12"), "kv_k.*");
    assert_eq!(fold_label("model.decoder.layers.3.mlp.down_proj.weight"), "model.decoder.layers.*.mlp.down_proj.weight");
    assert_eq!(fold_label("decoder.block.0.res_unit1.conv2"), "decoder.block.*.res_unit1.conv2");
    let gpu = test_gpu();
    gpu.reset_peak_allocated();
    let base = gpu.peak_allocated_bytes();
    let a: Vec<GpuBuffer> = (0..3).map(|l| gpu.buffer(&format!("peak_test.{l}"), 1000)).collect();
    let b = gpu.buffer("peak_test_other", 4096);
    drop(a);
    let _c = gpu.buffer("peak_test_small", 16);
    let peak = gpu.peak_allocated_bytes();
    assert_eq!(peak, base + 3 * 1008 + 4096);
    let groups = gpu.peak_breakdown();
    assert_eq!(groups.iter().map(|g| g.bytes).sum::<u64>(), peak);
    let find = |label: &str| groups.iter().find(|g| g.label == label).cloned();
    assert_eq!(find("peak_test.*").map(|g| (g.bytes, g.buffers)), Some((3024, 3)));
    assert_eq!(find("peak_test_other").map(|g| g.bytes), Some(4096));
    assert_eq!(find("peak_test_small"), None, "allocated after the peak");
    drop(b);
}

/// Negative control for the subgroup variants: with subgroups on, the decode pair's generated WGSL uses subgroup
/// operations (and carries the marker that becomes `enable subgroups;` on the web); switched off, it has none, so
/// the comparisons above really ran two different kernels.
#[test]
fn decode_takes_subgroup_reductions_only_when_on() {
    let gpu = test_gpu();
    let mut rng = Rng::new(41);
    let kv_lens = [300usize, 3];
    let queries = mixed_queries(&mut rng, &kv_lens, 2);
    let p = make_problem(&mut rng, Layout::PackedKv, &kv_lens, &queries, 16, 4, 128, true, 1.0);
    let bufs = GpuProblem::new(&gpu, &p, false);
    println!("{}: subgroup sizes {:?}", gpu.describe(), gpu.subgroup_sizes());
    for reduction in reductions(&gpu) {
        let sources: Vec<(String, String)> = with_reduction(&gpu, reduction, || {
            gpu.begin_discovery();
            let _ = attention_decode(&gpu, &bufs.args(&p, p.max_keys()));
            gpu.end_discovery().sources().map(|(e, s)| (e.to_string(), s.to_string())).collect()
        });
        assert_eq!(sources.len(), 2, "decode_partial and decode_combine");
        for (entry, source) in &sources {
            let subgroup_ops = source.contains("subgroupMax(") && source.contains("subgroupAdd(");
            let marked = source.starts_with(dia_webgpu::gpu::SUBGROUPS_MARKER);
            assert_eq!(subgroup_ops, reduction == Reduction::Subgroup, "{entry} ({reduction:?}): subgroup operations in the source");
            assert_eq!(marked, reduction == Reduction::Subgroup, "{entry} ({reduction:?}): subgroups marker");
            assert!(!dia_webgpu::gpu::shader_source_for_target(source).lines().any(|l| l.trim_start().starts_with("enable subgroups")), "{entry}: native WGSL must not enable subgroups (naga rejects it)");
        }
    }
}

/// Issue 17's second fusion: the appending decode's partial pass, then the output projection combining the partials
/// itself (`linear_attention_o`), against (a) the CPU: the partials read back, combined in f64 as `decode_combine`
/// does, projected through the stored (dequantized) weights onto the residual; (b) the two-pass decode followed by the
/// plain projection: the same y within f32 rounding and the same new keys in the caches, bit for bit. Ragged: 1, 2, 3,
/// 8 and 16 rows over several sequences (one from position 0, one across chunk edges, one past its cache view), f32
/// and f16 caches, f32 / f16 / q8 / q4 weights, Dia's shape (16 heads of 128 over 4 kv heads) and a small one.
#[test]
fn attention_o_fused_matches_combine_then_projection() {
    use dia_webgpu::kernels::attention::{attention_decode_appending, attention_decode_appending_partial};
    use dia_webgpu::kernels::linear::{linear_attention_o, linear_rows, LinearEpilogue, ATTENTION_O_SHAPE};
    use dia_webgpu::kernels::{GpuMatrix, WeightFormat};
    use dia_webgpu::quant::QuantFormat;
    let gpu = common::test_gpu_f32_arith();
    let mut rng = Rng::new(47);
    let formats = [WeightFormat::F32, WeightFormat::F16, WeightFormat::Quant(QuantFormat::Q8), WeightFormat::Quant(QuantFormat::Q4)];
    let mut cases = vec![];
    for m in [1usize, 2, 3, 8, 16] {
        cases.push((16usize, 4usize, 2usize, m, formats[m % 4], KvFormat::F32));
        cases.push((32, 4, 4, m, formats[(m + 1) % 4], KvFormat::F16));
    }
    cases.push((128, 16, 4, 2, WeightFormat::F16, KvFormat::F32));
    cases.push((128, 16, 4, 2, WeightFormat::Quant(QuantFormat::Q4), KvFormat::F16));
    let mut fused_cases = 0;
    for (hd, heads, kv_heads, rows, wformat, kv) in cases {
        // hd 16: more chunks (18 of 128 keys) than head_dim, so the chunk sums take their own workgroup array.
        let max_len = if hd == 16 { 2200usize } else { 300 };
        let n_seq = rows.max(2);
        let width = kv_heads * hd;
        let k = heads * hd;
        let n_out = k + 24; // the projection's rows need not be a multiple of the workgroup's
        let stride = k + 2 * width;
        let (cos, sin) = rope_tables(max_len, hd, 10000.0);
        let (cb, sb) = (gpu.upload("cos", &cos), gpu.upload("sin", &sin));
        // The last sequence's cache view is shorter than the positions some rows reach.
        let seqs: Vec<u32> = (0..n_seq).flat_map(|s| [(s * max_len) as u32, if s == n_seq - 1 { 140 } else { max_len as u32 }]).collect();
        let cache = |rng: &mut Rng| {
            let v = rng.vec(n_seq * max_len * width, 1.0);
            match kv {
                KvFormat::F16 => f16_words(&v),
                _ => v.iter().map(|x| x.to_bits()).collect(),
            }
        };
        let (k0, v0) = (cache(&mut rng), cache(&mut rng));
        let w = rng.vec(n_out * k, 0.1);
        let wm = GpuMatrix::upload(&gpu, "w_o", &w, n_out, k, wformat).unwrap();
        let w_stored = common::stored_weights(&w, n_out, k, wformat);
        let y0 = rng.vec(rows * n_out, 1.0);
        let qkv_b = gpu.upload("qkv", &rng.vec(rows * stride, 0.5));
        // Row r: sequence r % n_seq at a position from 0 up to past the short view, across chunk edges.
        let qinfo: Vec<u32> = (0..rows).flat_map(|r| [(r % n_seq) as u32, [0u32, 63, 64, 129, 150, 299, 200, 7][r % 8]]).collect();
        let (qinfo_b, seqs_b) = (gpu.upload("qinfo", &qinfo), gpu.upload("seqs", &seqs));
        // (y, K cache words, V cache words, the partials where fused)
        type Run = (Vec<f32>, Vec<u32>, Vec<u32>, Vec<f32>);
        let run = |fused: bool| -> Option<Run> {
            let (kb, vb) = (gpu.upload("k_cache", &k0), gpu.upload("v_cache", &v0));
            let (attn, y) = (gpu.buffer("attn", (rows * k * 4) as u64), gpu.upload("y", &y0));
            let args = AttentionArgs {
                q_buf: &qkv_b,
                q_stride: stride as u32,
                q_col: 0,
                k_buf: &kb,
                v_buf: &vb,
                kv_stride: width as u32,
                k_col: 0,
                v_col: 0,
                qinfo: &qinfo_b,
                seqs: &seqs_b,
                out: &attn,
                rows: rows as u32,
                heads: heads as u32,
                kv_heads: kv_heads as u32,
                head_dim: hd as u32,
                causal: true,
                max_keys: max_len as u32,
                kv_format: kv,
            };
            let (ds, scratch) = if fused {
                let (partial, partials) = attention_decode_appending_partial(&gpu, &args, &cb, &sb);
                let o = linear_attention_o(&gpu, &partials, &qinfo_b, &seqs_b, &kb, &vb, &wm, &y, rows as u32, LinearEpilogue::Accumulate, ATTENTION_O_SHAPE)?;
                (vec![partial, o], Some(partials.scratch))
            } else {
                let mut ds = attention_decode_appending(&gpu, &args, &cb, &sb);
                ds.extend(linear_rows(&gpu, &attn, &wm, &y, rows as u32, LinearEpilogue::Accumulate));
                (ds, None)
            };
            gpu.run(&ds.iter().collect::<Vec<_>>());
            let partials = scratch.map(|s| gpu.read_f32_blocking(&s).unwrap()).unwrap_or_default();
            Some((gpu.read_f32_blocking(&y).unwrap(), gpu.read_u32_blocking(&kb).unwrap(), gpu.read_u32_blocking(&vb).unwrap(), partials))
        };
        let what = format!("{rows} rows, hd {hd}, heads {heads}/{kv_heads}, {wformat:?} weights, {kv} caches");
        let (y_plain, k_plain, v_plain, _) = run(false).unwrap();
        let Some((y_fused, k_fused, v_fused, parts)) = run(true) else {
            // Only the workgroup memory may refuse these cases (x itself must then take a large share of it).
            let x_bytes = (rows * k + rows * heads * (max_len.div_ceil(64))) * 4;
            assert!(x_bytes as u32 > gpu.limits.max_compute_workgroup_storage_size / 2, "{what}: refused although x takes {x_bytes} bytes");
            println!("{what}: refused (workgroup memory)");
            continue;
        };
        fused_cases += 1;
        assert_eq!(k_fused, k_plain, "{what}: k caches");
        assert_eq!(v_fused, v_plain, "{what}: v caches");
        assert_ne!(k_fused, k0, "{what}: the new keys were written");
        // CPU: combine the partials (layout: `DecodePartials`) in f64, then project.
        let n_rep = heads / kv_heads;
        let chunk = (256 / [4usize, 2, 1].into_iter().find(|r| n_rep % r == 0).unwrap()).min(128);
        let n_chunks = max_len.div_ceil(chunk);
        let mut x = vec![0f32; rows * k];
        for r in 0..rows {
            let (s, pos) = (qinfo[2 * r] as usize, qinfo[2 * r + 1] as usize);
            let len = seqs[2 * s + 1] as usize;
            let visible = if pos < len { pos + 1 } else { len };
            let nc = visible.div_ceil(chunk);
            for h in 0..heads {
                let e = |c: usize| ((r * heads + h) * n_chunks + c) * (hd + 2);
                let mx = (0..nc).map(|c| parts[e(c) + hd] as f64).fold(f64::NEG_INFINITY, f64::max);
                let total: f64 = (0..nc).map(|c| (parts[e(c) + hd] as f64 - mx).exp() * parts[e(c) + hd + 1] as f64).sum();
                for d in 0..hd {
                    let acc: f64 = (0..nc).map(|c| (parts[e(c) + hd] as f64 - mx).exp() * parts[e(c) + d] as f64).sum();
                    x[r * k + h * hd + d] = if total > 0.0 { (acc / total) as f32 } else { 0.0 };
                }
            }
        }
        let y_cpu = common::cpu_linear(&x, &w_stored, &y0, rows, n_out, k, LinearEpilogue::Accumulate);
        let (e_cpu, e_plain) = (rel_err(&y_fused, &y_cpu), rel_err(&y_fused, &y_plain));
        println!("{what}: y rel err {e_cpu:.2e} vs CPU, {e_plain:.2e} vs the two-pass route");
        assert!(e_cpu <= 2e-6 && e_plain <= 2e-6, "{what}: y rel err {e_cpu:.3e} vs CPU, {e_plain:.3e} vs the two-pass route");
    }
    assert!(fused_cases >= 8, "only {fused_cases} cases took the fused route");
}
