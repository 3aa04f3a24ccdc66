//! Generation behaviour on the tiny model: no per-step CPU synchronisation, seeded reproducibility,
//! streaming of rows in order, and clear errors for bad requests.
mod common;

use common::{fixtures_dir, test_gpu};
use dia_webgpu::dia::generate::RowSink;
use dia_webgpu::dia::{load_model_dir, DiaError, DiaModel, GenerateOptions, RunError, Session};
use dia_webgpu::gpu::Gpu;
use dia_webgpu::kernels::Numerics;

fn tiny(gpu: &Gpu) -> DiaModel {
    load_model_dir(gpu, &fixtures_dir().join("dia"), Numerics::F16W).expect("load the fixture model")
}

/// The fixture's dimensions with random weights: it talks for as long as asked (the fixture model's EOS row
/// was scaled to end runs within a few dozen rows).
fn long_talker(gpu: &Gpu) -> DiaModel {
    let text = std::fs::read_to_string(fixtures_dir().join("dia/config.json")).unwrap();
    let cfg = dia_webgpu::config::DiaConfig::from_json_str(&text).unwrap();
    DiaModel::random(gpu, &cfg, Numerics::F16W, 11).unwrap()
}

fn sampled(seed: u64, max_new_tokens: usize) -> GenerateOptions {
    let mut o = GenerateOptions { max_new_tokens, ..GenerateOptions::default() };
    o.sampling.seed = seed;
    o
}

/// Runs a session and returns (codes, rows, steps run, CPU waits during the run, rows seen by the callback).
fn run(gpu: &Gpu, m: &DiaModel, texts: &[&str], opts: &GenerateOptions) -> (Vec<u32>, usize, usize, u64, usize) {
    let mut s = Session::new(gpu, m, texts, None, opts, false).unwrap();
    let before = gpu.wait_count();
    let mut streamed = Vec::new();
    let mut next_row = 0;
    let g = pollster::block_on(s.run(
        opts,
        &mut |first: usize, rows: &[u32]| {
            assert_eq!(first, next_row, "rows arrive in order, without gaps");
            next_row += rows.len() / (texts.len() * m.cfg.decoder.channels);
            streamed.extend_from_slice(rows);
        },
        || false,
    ))
    .unwrap();
    let waits = gpu.wait_count() - before;
    assert_eq!(streamed, g.codes, "streamed rows equal the final codes");
    (g.codes, g.rows, g.rows - g.prefix_rows, waits, next_row)
}

#[test]
fn generation_300_steps_without_per_step_waits_and_seed_reproducible() {
    let gpu = test_gpu();
    let m = long_talker(&gpu);
    // Sampling (temperature 1.2) so the run is random.
    let text = "[S1] A long enough line of dialogue to keep going for a while. [S2] Indeed.";
    let opts = sampled(1234, 300);
    let (a, rows, steps, waits, _) = run(&gpu, &m, &[text], &opts);
    println!("{steps} steps ({rows} rows), {waits} CPU waits");
    assert_eq!(steps, 300, "ran {steps} steps");
    // One readback per `readback_every` (8) steps at most, plus the final one.
    assert!(waits as usize <= steps / opts.readback_every + 2, "{waits} waits for {steps} steps: the CPU synchronises too often");
    // Seeds: the draw for a row depends only on (seed, row, item, channel), so shorter runs with the same
    // seed agree with the long one until their own end tail starts (max_length − 16).
    let c = m.cfg.decoder.channels;
    let (b, ..) = run(&gpu, &m, &[text], &sampled(1234, 60));
    assert_eq!(a[..40 * c], b[..40 * c], "same seed, same codes");
    let (b2, ..) = run(&gpu, &m, &[text], &sampled(1234, 60));
    assert_eq!(b, b2, "same seed, same codes");
    let (d, ..) = run(&gpu, &m, &[text], &sampled(99, 60));
    assert_ne!(b, d, "another seed gives other codes");
}

#[test]
fn generation_batch_items_equal_their_solo_runs_greedy() {
    let gpu = test_gpu();
    let m = tiny(&gpu);
    let mut opts = sampled(0, 40);
    opts.sampling.temperature = 0.0;
    let texts = ["[S1] First item.", "[S2] The second item is longer than the first one."];
    let (batch, rows, ..) = run(&gpu, &m, &texts, &opts);
    let c = m.cfg.decoder.channels;
    for (b, t) in texts.iter().enumerate() {
        let (solo, solo_rows, ..) = run(&gpu, &m, &[*t], &opts);
        assert!(solo_rows <= rows);
        for r in 0..rows {
            let got = &batch[(r * 2 + b) * c..][..c];
            if r < solo_rows {
                assert_eq!(got, &solo[r * c..][..c], "item {b} row {r}");
            } else {
                assert!(got.iter().all(|&v| v == m.cfg.pad), "item {b} row {r} after its end must be PAD");
            }
        }
    }
}

#[test]
fn generation_rejects_bad_requests() {
    let gpu = test_gpu();
    let m = tiny(&gpu);
    let opts = sampled(0, 20);
    let err = |texts: &[&str], o: &GenerateOptions| Session::new(&gpu, &m, texts, None, o, false).err().expect("an error");
    assert!(matches!(err(&[""], &opts), DiaError::EmptyText));
    assert!(matches!(err(&[], &opts), DiaError::EmptyText));
    let long = "a".repeat(m.cfg.encoder.max_positions + 1);
    match err(&[&long], &opts) {
        DiaError::TextTooLong { bytes, limit } => assert_eq!((bytes, limit), (m.cfg.encoder.max_positions + 1, m.cfg.encoder.max_positions)),
        e => panic!("unexpected {e}"),
    }
    assert!(matches!(err(&["hi"], &sampled(0, m.cfg.decoder.max_positions)), DiaError::TooLong { .. }));
    assert!(matches!(err(&["hi"], &sampled(0, 0)), DiaError::BadOptions(_)));
    let mut bad = sampled(0, 20);
    bad.sampling.top_p = 0.0;
    assert!(matches!(err(&["hi"], &bad), DiaError::Sampling(_)));
    let mut bad = sampled(0, 20);
    bad.sampling.cfg_filter_top_k = 0;
    assert!(matches!(err(&["hi"], &bad), DiaError::Sampling(_)));
    let prompt_bad = vec![5u32; m.cfg.decoder.channels + 1];
    assert!(matches!(Session::new(&gpu, &m, &["hi"], Some(&prompt_bad), &opts, false).err().unwrap(), DiaError::BadPrompt(_)));
}

#[test]
fn generation_cancel_stops_and_session_model_stays_usable() {
    let gpu = test_gpu();
    let m = tiny(&gpu);
    let opts = sampled(5, 200);
    let mut s = Session::new(&gpu, &m, &["[S1] Cancel me."], None, &opts, false).unwrap();
    let seen = std::cell::Cell::new(0);
    let r = pollster::block_on(s.run(&opts, &mut |_: usize, _: &[u32]| seen.set(seen.get() + 1), || seen.get() >= 2));
    assert!(matches!(r, Err(DiaError::Cancelled)));
    let (_, rows, ..) = run(&gpu, &m, &["[S1] After a cancel."], &sampled(5, 30));
    assert!(rows > 1);
}

/// A sink that can fail (the streaming codec) ends the run with its own error, not a `Cancelled` or any other
/// generation error, and hears no rows after failing; the session's model stays usable.
#[test]
fn generation_a_failing_sink_ends_the_run_with_its_own_error() {
    #[derive(Debug, PartialEq)]
    struct SinkFailed(usize);
    struct FailsOnSecondCall {
        calls: usize,
    }
    impl RowSink for FailsOnSecondCall {
        type Error = SinkFailed;
        async fn rows(&mut self, _first_row: usize, _rows: &[u32]) -> Result<(), SinkFailed> {
            self.calls += 1;
            if self.calls == 2 { Err(SinkFailed(self.calls)) } else { Ok(()) }
        }
    }
    let gpu = test_gpu();
    let m = long_talker(&gpu);
    let opts = sampled(5, 200);
    let mut s = Session::new(&gpu, &m, &["[S1] Fail me."], None, &opts, false).unwrap();
    let mut sink = FailsOnSecondCall { calls: 0 };
    let r = pollster::block_on(s.run_with(&opts, &mut sink, || false));
    assert!(matches!(r, Err(RunError::Sink(SinkFailed(2)))), "{r:?}");
    assert_eq!(sink.calls, 2, "no rows after the sink failed");
    let (_, rows, ..) = run(&gpu, &m, &["[S1] After a failed sink."], &sampled(5, 30));
    assert!(rows > 1);
}

/// `step_weight_bytes` (the browser benchmark's weights per step) counts exactly the buffers of the matrices a
/// decoder step reads, as the builder allocates them, in every mode.
#[test]
fn step_weight_bytes_match_the_built_model() {
    let gpu = test_gpu();
    let text = std::fs::read_to_string(fixtures_dir().join("dia/config.json")).unwrap();
    let cfg = dia_webgpu::config::DiaConfig::from_json_str(&text).unwrap();
    for numerics in [Numerics::F32, Numerics::F16W, Numerics::Q8, Numerics::Q4] {
        let m = DiaModel::random(&gpu, &cfg, numerics, 3).unwrap();
        let mut built = m.logits.data.size;
        for l in &m.dec_layers {
            built += [&l.qkv, &l.o, &l.cross_q, &l.cross_o, &l.gate_up, &l.down].iter().map(|w| w.data.size).sum::<u64>();
        }
        assert_eq!(dia_webgpu::dia::step_weight_bytes(&cfg, numerics), built, "{}", numerics.name());
    }
}

/// `Dispatch::record` leaves out a `set_pipeline` or `set_bind_group` that repeats what the previous dispatch set in
/// the same pass, sets them again in a new pass, and the results stay those of every dispatch run in order.
#[test]
fn recording_skips_repeated_pipeline_and_bind_group() {
    use dia_webgpu::gpu::record_counts;
    let gpu = test_gpu();
    let src = "struct P { add: u32, a: u32, b: u32, c: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> x: array<u32>;
@compute @workgroup_size(1) fn main() { x[0] = x[0] + p.add; }";
    let add = gpu.pipeline("test.record_add", "main", || src.to_string());
    let times_ten = gpu.pipeline("test.record_mul", "main", || src.replace("x[0] + p.add", "x[0] * p.add"));
    let (a, b) = (gpu.upload("test.a", &[0u32]), gpu.upload("test.b", &[1u32]));
    let add_a = gpu.dispatch(&add, &[1u32, 0, 0, 0], &[&a], [1, 1, 1]);
    let add_b = gpu.dispatch(&add, &[2u32, 0, 0, 0], &[&b], [1, 1, 1]);
    let mul_b = gpu.dispatch(&times_ten, &[10u32, 0, 0, 0], &[&b], [1, 1, 1]);
    let before = record_counts();
    // One pass: add_a, add_a (both repeats), add_b (same pipeline, another bind group), mul_b (both new).
    gpu.run(&[&add_a, &add_a, &add_b, &mul_b]);
    let mid = record_counts();
    let first = mid.since(before);
    assert_eq!((first.pipelines_set, first.pipelines_skipped), (2, 2), "pipelines set and skipped in the first pass");
    assert_eq!((first.bind_groups_set, first.bind_groups_skipped), (3, 1), "bind groups set and skipped in the first pass");
    // A new pass starting with what the last one ended with sets both again.
    gpu.run(&[&mul_b]);
    let second = record_counts().since(mid);
    assert_eq!((second.pipelines_set, second.bind_groups_set), (1, 1), "a new pass sets its state");
    assert_eq!(gpu.read_u32_blocking(&a).unwrap(), vec![2], "add_a ran twice");
    assert_eq!(gpu.read_u32_blocking(&b).unwrap(), vec![300], "(1 + 2) × 10 × 10");

    // A decoder step's recording: what it leaves out (printed), with the rows still those of a plain run.
    let m = long_talker(&gpu);
    let opts = sampled(4, 24);
    let before = record_counts();
    let (codes, ..) = run(&gpu, &m, &["[S1] Count the calls."], &opts);
    let c = record_counts().since(before);
    println!(
        "24 steps: set_pipeline {} (skipped {}), set_bind_group {} (skipped {})",
        c.pipelines_set, c.pipelines_skipped, c.bind_groups_set, c.bind_groups_skipped
    );
    let (again, ..) = run(&gpu, &m, &["[S1] Count the calls."], &opts);
    assert_eq!(codes, again);
}
