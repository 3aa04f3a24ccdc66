//! GPU sampler (`kernels::sampling`) against a CPU reference of transformers' chain (docs/model.md §4.4–4.7:
//! CFG filter, EOS channel filter, top-k, top-p, EOS delay pattern, the batch loop, known-cell forcing), driven over many consecutive steps recorded into one command buffer.
mod common;

use std::collections::BTreeMap;

use common::{reductions, test_gpu, with_reduction, Rng};
use dia_webgpu::gpu::{Gpu, GpuBuffer, Reduction};
use dia_webgpu::kernels::sampling::{
    counter_uniform, Sampler, SamplerBuffers, SamplerShape, SamplingError, SamplingParams,
};

const NEG_INF: f32 = f32::NEG_INFINITY;

#[derive(Clone)]
struct Shape {
    b: usize,
    c: usize,
    v: usize,
    delay: Vec<u32>,
    eos: u32,
    pad: u32,
    bos: u32,
    /// The sampler's `first_item`: item b draws as item first_item + b.
    first_item: u32,
}

impl Shape {
    /// Dia: 9 channels, 1028 ids, EOS 1024, PAD 1025, BOS 1026.
    fn dia(b: usize) -> Shape {
        Shape { b, c: 9, v: 1028, delay: vec![0, 8, 9, 10, 11, 12, 13, 14, 15], eos: 1024, pad: 1025, bos: 1026, first_item: 0 }
    }
    /// Ragged: not a multiple of the workgroup size, fewer channels, shorter delays.
    fn ragged(b: usize) -> Shape {
        Shape { b, c: 4, v: 517, delay: vec![0, 2, 3, 5], eos: 513, pad: 514, bos: 515, first_item: 0 }
    }
    fn max_delay(&self) -> u32 {
        *self.delay.iter().max().unwrap()
    }
    fn gpu(&self) -> SamplerShape {
        SamplerShape {
            batch: self.b as u32,
            channels: self.c as u32,
            vocab: self.v as u32,
            delay: self.delay.clone(),
            eos: self.eos,
            pad: self.pad,
            first_item: self.first_item,
        }
    }
    /// The delayed prefix (docs/model.md §4.2) for every item: [B, P, C] and s0 (prompt frames n per item, same n).
    fn prefix(&self, prompts: &[Vec<Vec<u32>>]) -> (Vec<u32>, usize, usize) {
        let n = prompts[0].len();
        let md = self.max_delay() as usize;
        let p = 1 + n + md;
        let mut out = vec![0u32; self.b * p * self.c];
        for b in 0..self.b {
            for t in 0..p {
                for c in 0..self.c {
                    let src = t as i64 - self.delay[c] as i64;
                    let v = if src <= 0 {
                        self.bos
                    } else if (src as usize) <= n {
                        prompts[b][src as usize - 1][c]
                    } else {
                        self.pad
                    };
                    out[(b * p + t) * self.c + c] = v;
                }
            }
        }
        (out, p, 1 + n)
    }
}

#[derive(Clone, Copy)]
struct Cfg {
    scale: f32,
    k: usize,
    temperature: f32,
    top_p: f32,
    seed: u64,
}

impl Cfg {
    fn greedy(k: usize) -> Cfg {
        Cfg { scale: 3.0, k, temperature: 0.0, top_p: 1.0, seed: 0 }
    }
    fn params(&self) -> SamplingParams {
        SamplingParams {
            cfg_scale: self.scale,
            cfg_filter_top_k: self.k as u32,
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
        }
    }
    fn sampling(&self) -> bool {
        self.temperature > 0.0
    }
}

// ------------------------------------------------------------------------------------------------
// CPU reference: transformers' chain (docs/model.md §4.4–4.7), f32 throughout
// ------------------------------------------------------------------------------------------------

/// argmax: first index of the maximum (0 when every value is −inf).
fn argmax(s: &[f32]) -> usize {
    let mut best = 0;
    for i in 1..s.len() {
        if s[i] > s[best] {
            best = i;
        }
    }
    best
}

fn cfg_filter(cond: &[f32], uncond: &[f32], scale: f32, k: usize) -> Vec<f32> {
    let g: Vec<f32> = cond.iter().zip(uncond).map(|(&c, &u)| c + (c - u) * scale).collect();
    let mut order: Vec<usize> = (0..g.len()).collect();
    order.sort_by(|&a, &b| (-g[a]).partial_cmp(&-g[b]).unwrap()); // stable, like kind="stable"
    let mut out = vec![NEG_INF; g.len()];
    for &i in &order[..k] {
        out[i] = cond[i];
    }
    out
}

fn eos_channel_filter(s: &mut [f32], channel: usize, eos: usize) {
    let from = if channel == 0 { eos + 1 } else { eos };
    for x in &mut s[from..] {
        *x = NEG_INF;
    }
    if argmax(s) == eos {
        for x in &mut s[..eos] {
            *x = NEG_INF;
        }
    } else {
        s[eos] = NEG_INF;
    }
}

fn top_k_filter(s: &mut [f32], k: usize) {
    let mut sorted = s.to_vec();
    sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
    let kth = sorted[k - 1];
    for x in s.iter_mut() {
        if *x < kth {
            *x = NEG_INF;
        }
    }
}

fn top_p_filter(s: &mut [f32], p: f32) {
    let mut order: Vec<usize> = (0..s.len()).collect();
    order.sort_by(|&a, &b| s[a].partial_cmp(&s[b]).unwrap()); // ascending, stable
    let top = s[*order.last().unwrap()];
    let e: Vec<f32> = order.iter().map(|&i| (s[i] - top).exp()).collect();
    let total: f32 = e.iter().sum();
    let thr = (1.0 - p as f64) as f32;
    let mut cum = 0.0f32;
    let n = order.len();
    let mut drop = Vec::new();
    for (r, &i) in order.iter().enumerate() {
        cum += e[r] / total;
        if cum <= thr && r + 1 < n {
            drop.push(i);
        }
    }
    for i in drop {
        s[i] = NEG_INF;
    }
}

/// Inverse-CDF draw in id order with the GPU's counter-based uniform.
fn draw(s: &[f32], u: f32) -> usize {
    let m = s.iter().cloned().fold(NEG_INF, f32::max);
    if m == NEG_INF {
        return 0;
    }
    let e: Vec<f32> = s.iter().map(|&x| if x == NEG_INF { 0.0 } else { (x - m).exp() }).collect();
    let total: f32 = e.iter().sum();
    let goal = u * total;
    let mut running = 0.0f32;
    let mut last = 0;
    for (i, &x) in e.iter().enumerate() {
        if x > 0.0 {
            running += x;
            if running > goal {
                return i;
            }
            last = i;
        }
    }
    last
}

struct RefOut {
    /// rows ℓ = s0..S, each [B, C]
    rows: Vec<Vec<u32>>,
    scores: Vec<Vec<f32>>,
    s: usize,
}

/// One sampler run over precomputed logits: the shape, the parameters, the prompt prefix (`p` rows; generation
/// starts at row `s0`), the row limit, the logits of every step (`steps[j]` feeds row s0 + j), and teacher forcing
/// (`force`: step `at` takes these B·C tokens instead of its choices).
#[derive(Clone, Copy)]
struct Case<'a> {
    sh: &'a Shape,
    cfg: &'a Cfg,
    prefix: &'a [u32],
    p: usize,
    s0: usize,
    max_length: usize,
    steps: &'a [Vec<f32>],
    force: Option<(usize, &'a [u32])>,
}

/// The generation loop of `c` on the CPU.
fn reference(c: &Case) -> RefOut {
    let Case { sh, cfg, prefix, p, s0, max_length, steps, .. } = *c;
    let forced: BTreeMap<usize, &[u32]> = c.force.iter().map(|&(at, toks)| (s0 + at, toks)).collect();
    let (bn, cn, v) = (sh.b, sh.c, sh.v);
    let eos = sh.eos as usize;
    let mut counter: Vec<i64> = (0..bn * cn).map(|r| sh.delay[r % cn] as i64).collect();
    let mut active = vec![false; bn];
    let mut finished = vec![false; bn * cn];
    let trigger_len = max_length as i64 - sh.max_delay() as i64 - 1;
    let mut out = RefOut { rows: vec![], scores: vec![], s: max_length };
    for (j, logits) in steps.iter().enumerate() {
        let l = s0 + j;
        if l >= max_length {
            break;
        }
        let mut scores = vec![0f32; bn * cn * v];
        for b in 0..bn {
            for c in 0..cn {
                let row = b * cn + c;
                let cond = &logits[row * v..(row + 1) * v];
                let uncond = &logits[(bn * cn + row) * v..(bn * cn + row + 1) * v];
                let mut s = cfg_filter(cond, uncond, cfg.scale, cfg.k);
                if cfg.sampling() {
                    for x in &mut s {
                        *x /= cfg.temperature;
                    }
                }
                eos_channel_filter(&mut s, c, eos);
                if cfg.sampling() {
                    top_k_filter(&mut s, cfg.k);
                    if cfg.top_p < 1.0 {
                        top_p_filter(&mut s, cfg.top_p);
                    }
                }
                scores[row * v..(row + 1) * v].copy_from_slice(&s);
            }
        }
        // EosDelayPattern
        for b in 0..bn {
            let trig = argmax(&scores[b * cn * v..b * cn * v + v]) == eos || l as i64 == trigger_len;
            active[b] |= trig;
            for c in 0..cn {
                let row = b * cn + c;
                if active[b] && counter[row] == 0 {
                    let s = &mut scores[row * v..(row + 1) * v];
                    s.fill(NEG_INF);
                    s[eos] = 0.0;
                }
                if active[b] {
                    counter[row] -= 1;
                }
            }
        }
        let mut nxt: Vec<u32> = (0..bn * cn)
            .map(|row| {
                let s = &scores[row * v..(row + 1) * v];
                if cfg.sampling() {
                    draw(s, counter_uniform(cfg.seed, l as u32, sh.first_item.wrapping_add((row / cn) as u32), (row % cn) as u32)) as u32
                } else {
                    argmax(s) as u32
                }
            })
            .collect();
        if let Some(f) = forced.get(&l) {
            nxt = f.to_vec();
        }
        for row in 0..bn * cn {
            if finished[row] {
                nxt[row] = sh.pad;
            }
            finished[row] |= nxt[row] == sh.eos;
        }
        // force_known
        if l < p {
            for b in 0..bn {
                for c in 0..cn {
                    let known = prefix[(b * p + l) * cn + c];
                    if known != sh.pad {
                        nxt[b * cn + c] = known;
                    }
                }
            }
        }
        out.rows.push(nxt);
        out.scores.push(scores);
        if finished.iter().all(|&f| f) {
            out.s = l + 1;
            break;
        }
    }
    out
}

// ------------------------------------------------------------------------------------------------
// GPU harness: every step = copy that step's logits in, the sampler's dispatches, copies of the
// outputs into per-step archives; all steps of a segment in ONE command buffer (no CPU wait).
// ------------------------------------------------------------------------------------------------

struct GpuOut {
    codes: Vec<u32>,       // [max_length, B, C]
    status: Vec<[u32; 4]>, // after each recorded step
    tokens: Vec<Vec<u32>>, // after each recorded step
    pos: Vec<Vec<u32>>,    // qinfo pos column after each recorded step
    scores: Vec<Vec<f32>>, // after each recorded step (record_scores)
    waits: u64,            // CPU waits during the recorded steps
}

/// `run_once` with the sampler built on workgroup-memory and on subgroup reductions (where the device has
/// subgroups): both must give the same codes, tokens, positions, status and scores, bit for bit (the kept sets and
/// choices come from exact integer work and comparisons; only a top-p or draw boundary met within rounding could
/// differ, and these tests' logits stay clear of that). Returns the subgroup run's output.
#[allow(clippy::too_many_arguments)]
fn run_gpu(gpu: &Gpu, c: &Case) -> GpuOut {
    let mut outs: Vec<(Reduction, GpuOut)> = Vec::new();
    for reduction in reductions(gpu) {
        let out = with_reduction(gpu, reduction, || run_once(gpu, c));
        outs.push((reduction, out));
    }
    let (_, last) = outs.pop().unwrap();
    for (reduction, other) in &outs {
        assert_eq!(other.codes, last.codes, "codes: {reduction:?} and subgroup reductions differ");
        assert_eq!(other.tokens, last.tokens, "tokens: {reduction:?} and subgroup reductions differ");
        assert_eq!(other.status, last.status, "status: {reduction:?} and subgroup reductions differ");
        assert_eq!(other.pos, last.pos, "positions: {reduction:?} and subgroup reductions differ");
        let same_scores = other.scores.iter().flatten().zip(last.scores.iter().flatten()).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same_scores, "scores: {reduction:?} and subgroup reductions differ");
    }
    last
}


fn run_once(gpu: &Gpu, c: &Case) -> GpuOut {
    let Case { sh, cfg, prefix, p, s0, max_length, steps, force } = *c;
    let (bn, cn, v) = (sh.b, sh.c, sh.v);
    let n = bn * cn;
    let logits = gpu.buffer("logits", (2 * n * v * 4) as u64);
    let tokens = gpu.buffer("tokens", (n * 4) as u64);
    let codes = gpu.buffer("codes", (max_length * n * 4) as u64);
    let qinfo0: Vec<u32> = (0..2 * bn as u32).flat_map(|r| [r, s0 as u32 - 1]).collect();
    let qinfo = gpu.upload("qinfo", &qinfo0);
    let bufs = SamplerBuffers { logits: &logits, tokens: &tokens, codes: &codes, qinfo: &qinfo };
    let sampler =
        Sampler::new(gpu, &sh.gpu(), &cfg.params(), &bufs, prefix, p as u32, s0 as u32, max_length as u32, true)
            .expect("valid sampler");
    let all_logits = gpu.upload("all_logits", &steps.concat());
    let scores = sampler.scores().unwrap();
    let ns = steps.len() as u64;
    let arch_scores = gpu.buffer("arch_scores", ns * scores.size);
    let arch_status = gpu.buffer("arch_status", ns * 16);
    let arch_tokens = gpu.buffer("arch_tokens", ns * tokens.size);
    let arch_qinfo = gpu.buffer("arch_qinfo", ns * qinfo.size);
    let step_bytes = logits.size;
    let copy = |enc: &mut wgpu::CommandEncoder, src: &GpuBuffer, dst: &GpuBuffer, j: u64| {
        enc.copy_buffer_to_buffer(&src.buf, src.offset, &dst.buf, dst.offset + j * src.size, src.size);
    };
    let record = |range: std::ops::Range<usize>| {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        for j in range {
            enc.copy_buffer_to_buffer(&all_logits.buf, j as u64 * step_bytes, &logits.buf, 0, step_bytes);
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                for d in sampler.dispatches() {
                    d.record(&mut pass);
                }
            }
            let j = j as u64;
            copy(&mut enc, scores, &arch_scores, j);
            copy(&mut enc, sampler.status(), &arch_status, j);
            copy(&mut enc, &tokens, &arch_tokens, j);
            copy(&mut enc, &qinfo, &arch_qinfo, j);
        }
        gpu.queue.submit([enc.finish()]);
    };
    let waits = gpu.wait_count();
    match force {
        Some((at, toks)) => {
            record(0..at);
            sampler.force_next(gpu, toks);
            record(at..steps.len());
        }
        None => record(0..steps.len()),
    }
    let waits = gpu.wait_count() - waits;
    let rd = |b: &GpuBuffer| gpu.read_u32_blocking(b).unwrap();
    let per = |data: Vec<u32>, len: usize| -> Vec<Vec<u32>> { data.chunks(len).map(|c| c.to_vec()).collect() };
    let status = per(rd(&arch_status), 4).into_iter().map(|s| [s[0], s[1], s[2], s[3]]).collect();
    let scores = gpu.read_f32_blocking(&arch_scores).unwrap().chunks(n * v).map(|c| c.to_vec()).collect();
    let pos =
        per(rd(&arch_qinfo), 4 * bn).into_iter().map(|q| q.iter().skip(1).step_by(2).cloned().collect()).collect();
    GpuOut { codes: rd(&codes), status, tokens: per(rd(&arch_tokens), n), pos, scores, waits }
}

/// Compares every step with the reference; steps after the end must leave everything unchanged.
fn check(sh: &Shape, s0: usize, max_length: usize, r: &RefOut, g: &GpuOut, what: &str) -> f64 {
    let n = sh.b * sh.c;
    let mut max_err = 0f64;
    for (j, row) in r.rows.iter().enumerate() {
        let l = s0 + j;
        assert_eq!(&g.codes[l * n..(l + 1) * n], &row[..], "{what}: codes row {l}");
        assert_eq!(&g.tokens[j], row, "{what}: tokens after row {l}");
        assert!(g.pos[j].iter().all(|&p| p == l as u32), "{what}: qinfo pos after row {l}: {:?}", g.pos[j]);
        let over = l + 1 == r.s;
        assert_eq!(
            g.status[j],
            [l as u32 + 1, over as u32, if over { r.s as u32 } else { 0 }, 0],
            "{what}: status after row {l}"
        );
        for (i, (&a, &e)) in g.scores[j].iter().zip(&r.scores[j]).enumerate() {
            let (row_i, id) = (i / sh.v, i % sh.v);
            if e == NEG_INF || a == NEG_INF {
                assert!(
                    a == e,
                    "{what}: row {l} (item {}, ch {}) id {id}: kept sets differ: gpu {a} ref {e}",
                    row_i / sh.c,
                    row_i % sh.c
                );
            } else {
                let err = (a as f64 - e as f64).abs() / (e.abs() as f64).max(1.0);
                max_err = max_err.max(err);
                assert!(err <= 1e-5, "{what}: row {l} id {id}: gpu {a} ref {e}");
            }
        }
    }
    let last = r.rows.len() - 1;
    assert_eq!(r.s, s0 + r.rows.len(), "{what}: reference length");
    for j in r.rows.len()..g.status.len() {
        assert_eq!(g.status[j], g.status[last], "{what}: status changed after the end (step {j})");
        assert_eq!(g.tokens[j], g.tokens[last], "{what}: tokens changed after the end");
        assert_eq!(g.pos[j], g.pos[last], "{what}: qinfo changed after the end");
        assert!(
            g.scores[j].iter().zip(&g.scores[last]).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{what}: scores changed after the end"
        );
    }
    assert!(g.codes[r.s * n..max_length * n].iter().all(|&x| x == 0), "{what}: codes written past S");
    max_err
}

/// Random logits for one step: large magnitudes on a coarse grid (many exact ties in cond and in the
/// guided logits), duplicated (cond, uncond) pairs, specials sometimes ranked high by the guidance,
/// and channel-0 EOS suppressed unless `eos_at` asks for a natural EOS of that item.
fn step_logits(rng: &mut Rng, sh: &Shape, scale: f32, grid: f32, eos_items: &[usize]) -> Vec<f32> {
    let (bn, cn, v) = (sh.b, sh.c, sh.v);
    let mut out = vec![0f32; 2 * bn * cn * v];
    let eos = sh.eos as usize;
    for row in 0..bn * cn {
        let (co, uo) = (row * v, (bn * cn + row) * v);
        for i in 0..v {
            out[co + i] = (rng.uniform() * scale / grid).round() * grid;
            out[uo + i] = (rng.uniform() * scale / grid).round() * grid;
        }
        for _ in 0..v / 10 {
            let (a, b) = (rng.below(v as u64) as usize, rng.below(v as u64) as usize);
            out[co + a] = out[co + b];
            out[uo + a] = out[uo + b];
        }
        // Specials compete for CFG slots: PAD/BOS with a strongly negative unconditional logit.
        if rng.below(3) == 0 {
            let s = eos + 1 + rng.below((v - eos - 1) as u64) as usize;
            out[co + s] = scale;
            out[uo + s] = -scale;
        }
        let (b, c) = (row / cn, row % cn);
        if c == 0 {
            if eos_items.contains(&b) {
                let top = (0..v).map(|i| out[co + i]).fold(f32::MIN, f32::max);
                out[co + eos] = top + grid;
                out[uo + eos] = top - 10.0 * scale;
            } else {
                out[co + eos] = -2.0 * scale;
            }
        }
    }
    out
}

fn xdg() {
    let dir = std::env::temp_dir().join(format!("xdg-sampling-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    }
    std::env::set_var("XDG_RUNTIME_DIR", &dir);
}

/// No prompt: prefix = BOS staircase + PAD, s0 = 1.
fn no_prompt(sh: &Shape) -> (Vec<u32>, usize, usize) {
    sh.prefix(&vec![vec![]; sh.b])
}

// ------------------------------------------------------------------------------------------------
// tests
// ------------------------------------------------------------------------------------------------

/// Greedy chain, several k (including k = 1, k = V and k with special ids in the top k), B ∈ {1, 3},
/// Dia and ragged shapes: codes, tokens, positions, status and processed scores at every step,
/// natural EOS and length trigger, steps recorded after the end.
#[test]
fn sampling_greedy_matches_reference() {
    xdg();
    let gpu = test_gpu();
    for (case, (sh, k, eos_plan)) in [
        (Shape::dia(1), 45, vec![(6usize, 0usize)]),
        (Shape::dia(3), 5, vec![(4, 1)]),
        (Shape::ragged(3), 517, vec![(3, 0), (9, 2)]),
        (Shape::ragged(1), 1, vec![]),
        (Shape::ragged(3), 300, vec![]),
    ]
    .into_iter()
    .enumerate()
    {
        let mut rng = Rng::new(100 + case as u64);
        let (prefix, p, s0) = no_prompt(&sh);
        let max_length = s0 + 18 + sh.max_delay() as usize;
        let n_steps = max_length - s0 + 3; // three more than can ever run
        let steps: Vec<Vec<f32>> = (0..n_steps)
            .map(|j| {
                let items: Vec<usize> = eos_plan.iter().filter(|(at, _)| *at == j).map(|(_, b)| *b).collect();
                step_logits(&mut rng, &sh, 1000.0, 0.5, &items)
            })
            .collect();
        let cfg = Cfg::greedy(k);
        let run_case = Case { sh: &sh, cfg: &cfg, prefix: &prefix, p, s0, max_length, steps: &steps, force: None };
        let r = reference(&run_case);
        let g = run_gpu(&gpu, &run_case);
        assert_eq!(g.waits, 0, "recording and submitting the steps waited on the GPU");
        let err = check(&sh, s0, max_length, &r, &g, &format!("greedy case {case} (B={}, V={}, k={k})", sh.b, sh.v));
        println!(
            "greedy case {case}: B={} V={} k={k}: S={} (max_length {max_length}), max score err {err:.2e}",
            sh.b, sh.v, r.s
        );
    }
}

/// The EOS/PAD staircase per item: item 0 natural EOS at one row, item 1 at another, item 2 by the
/// length trigger; channel c carries EOS at trigger + delay[c] and PAD after; S from the last item.
#[test]
fn sampling_eos_staircase_per_item() {
    xdg();
    let gpu = test_gpu();
    for sh in [Shape::dia(3), Shape::ragged(3)] {
        let md = sh.max_delay() as usize;
        let (prefix, p, s0) = no_prompt(&sh);
        let max_length = s0 + 12 + 2 * md;
        let natural = [(0usize, s0 + 2), (1usize, s0 + 7)];
        let mut rng = Rng::new(7);
        let steps: Vec<Vec<f32>> = (0..max_length - s0 + 2)
            .map(|j| {
                let items: Vec<usize> = natural.iter().filter(|(_, row)| *row == s0 + j).map(|(b, _)| *b).collect();
                step_logits(&mut rng, &sh, 50.0, 0.25, &items)
            })
            .collect();
        let cfg = Cfg::greedy(45);
        let run_case = Case { sh: &sh, cfg: &cfg, prefix: &prefix, p, s0, max_length, steps: &steps, force: None };
        let g = run_gpu(&gpu, &run_case);
        let length_trigger = max_length - md - 1;
        let triggers = [natural[0].1, natural[1].1, length_trigger];
        let expect_s = max_length.min(triggers.iter().max().unwrap() + md + 1);
        let last = g.status.iter().position(|s| s[1] == 1).expect("generation ended");
        assert_eq!(g.status[last][2] as usize, expect_s, "S");
        let n = sh.b * sh.c;
        for (b, &r) in triggers.iter().enumerate() {
            for c in 0..sh.c {
                let at = r + sh.delay[c] as usize;
                for l in s0..expect_s {
                    let x = g.codes[l * n + b * sh.c + c];
                    if l <= sh.delay[c] as usize {
                        assert_eq!(x, sh.bos, "item {b} ch {c} row {l}: BOS of the delay pattern");
                    } else if l < at {
                        assert!(x < sh.eos, "item {b} ch {c} row {l}: {x} before its EOS row {at}");
                    } else if l == at {
                        assert_eq!(x, sh.eos, "item {b} ch {c} row {l}: EOS expected");
                    } else {
                        assert_eq!(x, sh.pad, "item {b} ch {c} row {l}: PAD expected");
                    }
                }
            }
        }
        let r = reference(&run_case);
        check(&sh, s0, max_length, &r, &g, "staircase");
    }
}

/// Voice-prompt prefix: known delayed values override the produced tokens (and the decoder input) for
/// rows < P; a crafted known value on a row where channel 0 picks EOS shows that `finished` uses the
/// choice, not the override.
#[test]
fn sampling_prefix_override() {
    xdg();
    let gpu = test_gpu();
    for sh in [Shape::ragged(3), Shape::dia(1)] {
        let mut rng = Rng::new(11);
        let prompts: Vec<Vec<Vec<u32>>> = (0..sh.b)
            .map(|_| (0..3).map(|_| (0..sh.c).map(|_| rng.below(sh.eos as u64) as u32).collect()).collect())
            .collect();
        let (mut prefix, p, s0) = sh.prefix(&prompts);
        let pick_eos_row = s0 + 1;
        prefix[pick_eos_row * sh.c] = 7; // item 0, channel 0: known value where EOS is chosen
        let max_length = p + 10;
        let steps: Vec<Vec<f32>> = (0..max_length - s0 + 1)
            .map(|j| step_logits(&mut rng, &sh, 300.0, 0.5, if s0 + j == pick_eos_row { &[0] } else { &[] }))
            .collect();
        let cfg = Cfg::greedy(45);
        let run_case = Case { sh: &sh, cfg: &cfg, prefix: &prefix, p, s0, max_length, steps: &steps, force: None };
        let r = reference(&run_case);
        let g = run_gpu(&gpu, &run_case);
        check(&sh, s0, max_length, &r, &g, "prefix");
        let n = sh.b * sh.c;
        let mut overridden = 0;
        for l in s0..p.min(r.s) {
            for b in 0..sh.b {
                for c in 0..sh.c {
                    let known = prefix[(b * p + l) * sh.c + c];
                    if known != sh.pad {
                        assert_eq!(g.codes[l * n + b * sh.c + c], known, "row {l} item {b} ch {c}");
                        overridden += 1;
                    }
                }
            }
        }
        assert!(overridden > sh.b * sh.c, "the prefix overrides something");
        assert_eq!(g.codes[pick_eos_row * n], 7, "override wins in the output");
        assert_eq!(g.codes[(pick_eos_row + 1) * n], sh.pad, "channel 0 finished by the chosen EOS");
    }
}

/// Sampling chain (temperature, EOS filter, top-k, top-p, counter-based multinomial) against the
/// reference that draws with the same uniforms: identical tokens and processed scores.
#[test]
fn sampling_sampled_matches_reference() {
    xdg();
    let gpu = test_gpu();
    let cases = [
        (Shape::dia(1), Cfg { scale: 3.0, k: 45, temperature: 1.2, top_p: 0.95, seed: 1 }, 6.0, 1.0 / 64.0),
        (Shape::dia(3), Cfg { scale: 3.0, k: 50, temperature: 1.8, top_p: 0.9, seed: 2 }, 6.0, 1.0 / 64.0),
        (Shape::ragged(3), Cfg { scale: 2.0, k: 517, temperature: 1.0, top_p: 1.0, seed: 3 }, 8.0, 1.0 / 32.0),
        (
            Shape::ragged(3),
            Cfg { scale: 0.0, k: 400, temperature: 0.7, top_p: 0.6, seed: u64::MAX - 5 },
            3.0,
            1.0 / 128.0,
        ),
        (Shape::ragged(1), Cfg { scale: 1.5, k: 7, temperature: 0.5, top_p: 0.3, seed: 9 }, 1000.0, 0.5),
        // A later batch of a list: its items draw as items 5, 6, 7 (and wrap at u32::MAX like the GPU).
        (Shape { first_item: 5, ..Shape::dia(3) }, Cfg { scale: 3.0, k: 50, temperature: 1.8, top_p: 0.9, seed: 2 }, 6.0, 1.0 / 64.0),
        (Shape { first_item: u32::MAX, ..Shape::ragged(3) }, Cfg { scale: 2.0, k: 517, temperature: 1.0, top_p: 1.0, seed: 3 }, 8.0, 1.0 / 32.0),
    ];
    for (case, (sh, cfg, scale, grid)) in cases.into_iter().enumerate() {
        let mut rng = Rng::new(200 + case as u64);
        let (prefix, p, s0) = no_prompt(&sh);
        let max_length = s0 + 14 + sh.max_delay() as usize;
        let steps: Vec<Vec<f32>> = (0..max_length - s0 + 2)
            .map(|j| step_logits(&mut rng, &sh, scale, grid, if j == 5 { &[0] } else { &[] }))
            .collect();
        let run_case = Case { sh: &sh, cfg: &cfg, prefix: &prefix, p, s0, max_length, steps: &steps, force: None };
        let r = reference(&run_case);
        let g = run_gpu(&gpu, &run_case);
        let err = check(&sh, s0, max_length, &r, &g, &format!("sampled case {case}"));
        let distinct: std::collections::BTreeSet<u32> = r.rows.iter().flatten().cloned().collect();
        assert!(distinct.len() > 10, "case {case}: the draws vary ({} distinct tokens)", distinct.len());
        let kept =
            r.scores.iter().flatten().filter(|x| x.is_finite()).count() as f64 / (r.scores.len() * sh.b * sh.c) as f64;
        println!(
            "sampled case {case}: S={}, {} distinct tokens, {kept:.1} kept ids per row, max score err {err:.2e}",
            r.s,
            distinct.len()
        );
    }
}

/// Same seed ⇒ the same codes; another seed ⇒ other codes.
#[test]
fn sampling_seed_determinism() {
    xdg();
    let gpu = test_gpu();
    let sh = Shape::ragged(3);
    let (prefix, p, s0) = no_prompt(&sh);
    let max_length = 20;
    let mut rng = Rng::new(5);
    let steps: Vec<Vec<f32>> = (0..max_length - s0).map(|_| step_logits(&mut rng, &sh, 4.0, 1.0 / 64.0, &[])).collect();
    let cfg = |seed| Cfg { scale: 3.0, k: 45, temperature: 1.2, top_p: 0.95, seed };
    let run = |seed| run_gpu(&gpu, &Case { sh: &sh, cfg: &cfg(seed), prefix: &prefix, p, s0, max_length, steps: &steps, force: None }).codes;
    let (a, b, c) = (run(42), run(42), run(43));
    assert_eq!(a, b, "same seed, same codes");
    let n = sh.b * sh.c;
    let differ = (s0 * n..max_length * n).filter(|&i| a[i] != c[i]).count();
    assert!(differ > n, "another seed changes the draws ({differ} of {} differ)", (max_length - s0) * n);
}

/// Empirical frequencies of the multinomial draw: every (item, channel) row and step has the same
/// six-token distribution; temperature 0.8 and top-p 0.9 remove two of them. Chi-square on 3 dof.
#[test]
fn sampling_multinomial_frequencies() {
    xdg();
    let gpu = test_gpu();
    let sh = Shape { b: 24, ..Shape::ragged(1) };
    let (prefix, p, s0) = no_prompt(&sh);
    let steps_n = 40;
    let max_length = s0 + steps_n + 100; // no length trigger within the steps
    let support = [(3usize, 2.0f32), (100, 1.5), (257, 1.0), (300, 0.5), (511, 0.0), (0, -1.0)];
    let mut row = vec![-30.0f32; sh.v];
    for &(i, l) in &support {
        row[i] = l;
    }
    let one: Vec<f32> = (0..2 * sh.b * sh.c).flat_map(|_| row.clone()).collect();
    let steps = vec![one; steps_n];
    let cfg = Cfg { scale: 0.0, k: 6, temperature: 0.8, top_p: 0.9, seed: 1234 };
    let g = run_gpu(&gpu, &Case { sh: &sh, cfg: &cfg, prefix: &prefix, p, s0, max_length, steps: &steps, force: None });
    // Expected: softmax(l / T), drop ascending cumulative mass ≤ 0.1 (the two smallest), renormalise.
    let w: Vec<f64> = support.iter().map(|&(_, l)| (l as f64 / 0.8).exp()).collect();
    let kept_mass: f64 = w[..4].iter().sum();
    let n = sh.b * sh.c;
    let mut counts = BTreeMap::new();
    // Rows ≤ delay[c] hold the prefix's BOS; count the drawn cells only.
    let mut total = 0;
    for l in s0..s0 + steps_n {
        for (i, &x) in g.codes[l * n..(l + 1) * n].iter().enumerate() {
            if l > sh.delay[i % sh.c] as usize {
                *counts.entry(x as usize).or_insert(0usize) += 1;
                total += 1;
            }
        }
    }
    let mut chi2 = 0.0;
    for (k, &(i, _)) in support.iter().enumerate() {
        let seen = counts.remove(&i).unwrap_or(0) as f64;
        if k < 4 {
            let expect = total as f64 * w[k] / kept_mass;
            chi2 += (seen - expect).powi(2) / expect;
            println!("id {i}: seen {seen}, expected {expect:.1}");
        } else {
            assert_eq!(seen, 0.0, "id {i} is removed by top-p");
        }
    }
    assert!(counts.is_empty(), "ids outside the support drawn: {counts:?}");
    println!("chi-square {chi2:.2} over {total} draws (3 dof)");
    assert!(chi2 < 25.0, "chi-square {chi2} (3 dof, p < 1e-4)");
}

/// Teacher forcing: one row uses the given tokens (an EOS among them finishes its channel); the state
/// machine and the scores continue as the reference's `forced` path.
#[test]
fn sampling_teacher_forcing() {
    xdg();
    let gpu = test_gpu();
    for (sh, cfg) in [
        (Shape::dia(3), Cfg::greedy(45)),
        (Shape::ragged(3), Cfg { scale: 3.0, k: 45, temperature: 1.2, top_p: 0.95, seed: 77 }),
    ] {
        let mut rng = Rng::new(31);
        let (prefix, p, s0) = no_prompt(&sh);
        let max_length = s0 + 14 + 2 * sh.max_delay() as usize; // length trigger after the forced row
        let steps: Vec<Vec<f32>> =
            (0..max_length - s0 + 1).map(|_| step_logits(&mut rng, &sh, 100.0, 0.5, &[])).collect();
        let at = sh.max_delay() as usize + 2; // past the BOS rows of the prefix
        let mut toks: Vec<u32> = (0..sh.b * sh.c).map(|_| rng.below(sh.eos as u64) as u32).collect();
        toks[sh.c] = sh.eos; // item 1, channel 0
        toks[2 * sh.c + 1] = sh.eos; // item 2, channel 1
        let run_case = Case { sh: &sh, cfg: &cfg, prefix: &prefix, p, s0, max_length, steps: &steps, force: Some((at, &toks)) };
        let r = reference(&run_case);
        let g = run_gpu(&gpu, &run_case);
        check(&sh, s0, max_length, &r, &g, "teacher forcing");
        let n = sh.b * sh.c;
        let l = s0 + at;
        assert_eq!(&g.codes[l * n..(l + 1) * n], &toks[..], "forced row");
        assert_eq!(g.codes[(l + 1) * n + sh.c], sh.pad, "item 1 channel 0 finished by the forced EOS");
        assert_eq!(g.codes[(l + 1) * n + 2 * sh.c + 1], sh.pad, "item 2 channel 1 finished by the forced EOS");
    }
}

/// Bad parameters and shapes are typed errors.
#[test]
fn sampling_rejects_bad_input() {
    xdg();
    let gpu = test_gpu();
    let sh = Shape::ragged(1);
    let n = sh.c;
    let logits = gpu.buffer("logits", (2 * n * sh.v * 4) as u64);
    let tokens = gpu.buffer("tokens", (n * 4) as u64);
    let codes = gpu.buffer("codes", (10 * n * 4) as u64);
    let qinfo = gpu.buffer("qinfo", 16);
    let bufs = SamplerBuffers { logits: &logits, tokens: &tokens, codes: &codes, qinfo: &qinfo };
    let good = Cfg { scale: 3.0, k: 45, temperature: 1.0, top_p: 0.9, seed: 0 }.params();
    let make = |shape: &SamplerShape, params: SamplingParams, s0: u32, max_length: u32| {
        Sampler::new(&gpu, shape, &params, &bufs, &[], 0, s0, max_length, false).err()
    };
    assert!(make(&sh.gpu(), good, 1, 10).is_none());
    assert!(matches!(
        make(&sh.gpu(), SamplingParams { cfg_filter_top_k: 0, ..good }, 1, 10),
        Some(SamplingError::TopK { .. })
    ));
    assert!(matches!(
        make(&sh.gpu(), SamplingParams { cfg_filter_top_k: 518, ..good }, 1, 10),
        Some(SamplingError::TopK { .. })
    ));
    assert!(matches!(make(&sh.gpu(), SamplingParams { top_p: 0.0, ..good }, 1, 10), Some(SamplingError::TopP(_))));
    assert!(matches!(make(&sh.gpu(), SamplingParams { top_p: 1.5, ..good }, 1, 10), Some(SamplingError::TopP(_))));
    assert!(matches!(
        make(&sh.gpu(), SamplingParams { temperature: -1.0, ..good }, 1, 10),
        Some(SamplingError::Temperature(_))
    ));
    assert!(matches!(
        make(&sh.gpu(), SamplingParams { cfg_scale: f32::NAN, ..good }, 1, 10),
        Some(SamplingError::CfgScale(_))
    ));
    assert!(matches!(make(&sh.gpu(), good, 10, 10), Some(SamplingError::Rows { .. })));
    assert!(matches!(make(&sh.gpu(), good, 1, 11), Some(SamplingError::BufferTooSmall { name: "codes", .. })));
    let wrong_delay = SamplerShape { delay: vec![0, 1], ..sh.gpu() };
    assert!(matches!(make(&wrong_delay, good, 1, 10), Some(SamplingError::Shape(_))));
    let bad_prefix = Sampler::new(&gpu, &sh.gpu(), &good, &bufs, &[1, 2, 3], 1, 1, 10, false).err();
    assert!(matches!(bad_prefix, Some(SamplingError::Prefix { .. })));
}

/// Throughput of the sampler alone (B = 1, Dia shape, sampling chain): many steps in one submission.
/// `cargo test --release --test kernels_sampling -- --ignored --nocapture sampling_bench`
#[test]
#[ignore]
fn sampling_bench() {
    xdg();
    let gpu = test_gpu();
    for (batch, cfg) in [
        (1, Cfg { scale: 3.0, k: 45, temperature: 1.2, top_p: 0.95, seed: 1 }),
        (1, Cfg::greedy(45)),
        (1, Cfg { scale: 3.0, k: 1028, temperature: 1.2, top_p: 0.95, seed: 1 }),
        (4, Cfg { scale: 3.0, k: 45, temperature: 1.2, top_p: 0.95, seed: 1 }),
    ] {
        let sh = Shape::dia(batch);
        let n = sh.b * sh.c;
        let steps = std::env::var("SAMPLING_BENCH_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(200usize);
        let mut rng = Rng::new(1);
        let (prefix, p, s0) = no_prompt(&sh);
        let max_length = s0 + steps + 100;
        let logits = gpu.upload("logits", &step_logits(&mut rng, &sh, 6.0, 1.0 / 64.0, &[]));
        let tokens = gpu.buffer("tokens", (n * 4) as u64);
        let codes = gpu.buffer("codes", (max_length * n * 4) as u64);
        let qinfo = gpu.buffer("qinfo", (4 * sh.b * 4) as u64);
        let bufs = SamplerBuffers { logits: &logits, tokens: &tokens, codes: &codes, qinfo: &qinfo };
        let sampler =
            Sampler::new(&gpu, &sh.gpu(), &cfg.params(), &bufs, &prefix, p as u32, s0 as u32, max_length as u32, false)
                .unwrap();
        let run = |count: usize| {
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            for _ in 0..count {
                let mut pass = enc.begin_compute_pass(&Default::default());
                for d in sampler.dispatches() {
                    d.record(&mut pass);
                }
            }
            gpu.queue.submit([enc.finish()]);
            gpu.wait_idle().unwrap();
        };
        run(5); // warm-up (pipelines, first submit)
        let t = std::time::Instant::now();
        run(steps);
        let per = t.elapsed().as_secs_f64() / steps as f64;
        let status = gpu.read_u32_blocking(sampler.status()).unwrap();
        assert_eq!(status[0] as usize, s0 + 5 + steps, "every step ran");
        println!(
            "{}: B={batch} k={} T={}: {:.1} µs/step over {steps} steps",
            gpu.describe(),
            cfg.k,
            cfg.temperature,
            per * 1e6
        );
    }
}

/// Negative control for the subgroup variant: with subgroups on, the sampler's WGSL uses subgroup operations (and
/// carries the marker that becomes `enable subgroups;` on the web); switched off, it has none.
#[test]
fn sampler_takes_subgroup_reductions_only_when_on() {
    xdg();
    let gpu = test_gpu();
    let sh = Shape::dia(2);
    let (prefix, p, s0) = no_prompt(&sh);
    let n = sh.b * sh.c;
    let logits = gpu.buffer("logits", (2 * n * sh.v * 4) as u64);
    let tokens = gpu.buffer("tokens", (n * 4) as u64);
    let codes = gpu.buffer("codes", (64 * n * 4) as u64);
    let qinfo = gpu.buffer("qinfo", (2 * sh.b * 2 * 4) as u64);
    let bufs = SamplerBuffers { logits: &logits, tokens: &tokens, codes: &codes, qinfo: &qinfo };
    println!("{}: subgroup sizes {:?}", gpu.describe(), gpu.subgroup_sizes());
    for reduction in reductions(&gpu) {
        let (sampler, sources) = with_reduction(&gpu, reduction, || {
            gpu.begin_discovery();
            let sampler = Sampler::new(&gpu, &sh.gpu(), &Cfg::greedy(45).params(), &bufs, &prefix, p as u32, s0 as u32, 64, false);
            let sources: Vec<(String, String)> = gpu.end_discovery().sources().map(|(e, s)| (e.to_string(), s.to_string())).collect();
            (sampler, sources)
        });
        assert!(sampler.is_ok());
        let (_, select) = sources.iter().find(|(e, _)| e == "select_token").expect("select_token asked for");
        let ops = ["subgroupInclusiveAdd(", "subgroupAdd(", "subgroupMax(", "subgroupMin("];
        for op in ops {
            assert_eq!(select.contains(op), reduction == Reduction::Subgroup, "select_token ({reduction:?}): {op}");
        }
        assert_eq!(select.starts_with(dia_webgpu::gpu::SUBGROUPS_MARKER), reduction == Reduction::Subgroup, "{reduction:?}: subgroups marker");
        assert!(!dia_webgpu::gpu::shader_source_for_target(select).lines().any(|l| l.trim_start().starts_with("enable subgroups")), "native WGSL must not enable subgroups");
    }
}
