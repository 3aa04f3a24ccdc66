//! Dense kernel families against plain CPU references on random, ragged shapes:
//! linear (both schedules, all epilogues, both numerics), rmsnorm, embeddings, RoPE.
mod common;

use common::{cpu_linear, cpu_rmsnorm, norm_operands, rel_err, run_linear, stored_weights, test_gpu_f32_arith as test_gpu, Rng};
use dia_webgpu::gpu::{Dispatch, Gpu, GpuBuffer};
use dia_webgpu::kernels::embed::{embed_channels_sum, embed_tokens};
use dia_webgpu::kernels::linear::{
    linear, linear_rows, linear_small_m, linear_small_m_shaped, linear_tiled, linear_tiled_shaped, norm_linear, norm_linear_small_m_shaped, LinearEpilogue, SmallMShape,
    TiledShape, SMALL_M_MAX,
};
use dia_webgpu::kernels::norm::rmsnorm;
use dia_webgpu::kernels::rope::{rope, rope_tables};
use dia_webgpu::kernels::{GpuMatrix, Numerics, WeightFormat};
use dia_webgpu::quant::{QuantBits, QuantFormat};

const EPILOGUES: [LinearEpilogue; 3] = [LinearEpilogue::Store, LinearEpilogue::Accumulate, LinearEpilogue::SwiGlu];
const TOL: f64 = 1e-5;
// The M sets below straddle the schedule switch: ≤ 16 small-M, ≥ 17 tiled.
const _: () = assert!(SMALL_M_MAX == 16);

type Schedule<'a> = &'a dyn Fn(&Gpu, &GpuBuffer, &GpuMatrix, &GpuBuffer, u32, LinearEpilogue) -> Dispatch;

fn run(gpu: &Gpu, d: &Dispatch) {
    gpu.run(&[d]);
}



struct Case {
    m: usize,
    n: usize,
    k: usize,
    epilogue: LinearEpilogue,
    numerics: Numerics,
}

/// Random x, W and initial y; runs `schedule`, returns (gpu result, cpu reference).
fn linear_case(gpu: &Gpu, rng: &mut Rng, c: &Case, schedule: Schedule<'_>) -> (Vec<f32>, Vec<f32>) {
    let Case { m, n, k, epilogue, numerics } = *c;
    let out_cols = if epilogue == LinearEpilogue::SwiGlu { n / 2 } else { n };
    let x = rng.vec(m * k, 1.0);
    let w = rng.vec(n * k, 1.0);
    // Store must overwrite whatever y held: start from random values in every epilogue.
    let y0 = rng.vec(m * out_cols, 1.0);
    let got = run_linear(gpu, &x, &w, &y0, n, k, numerics, |xb, wm, yb| vec![schedule(gpu, xb, wm, yb, m as u32, epilogue)]);
    (got, cpu_linear(&x, &stored_weights(&w, n, k, numerics), &y0, m, n, k, epilogue))
}

/// Every (M, N, K, epilogue) combination through `schedule`; N is the weight rows (doubled for SwiGLU).
fn linear_sweep(name: &str, schedule: Schedule<'_>, ms: &[usize], ns: &[usize], ks: &[usize], numerics: Numerics) {
    let gpu = test_gpu();
    let mut rng = Rng::new(0x11ea2 ^ ms[0] as u64 ^ (numerics == Numerics::F16W) as u64);
    let mut worst = 0.0f64;
    for &m in ms {
        for &n in ns {
            for &k in ks {
                for epilogue in EPILOGUES {
                    let n = if epilogue == LinearEpilogue::SwiGlu { 2 * n } else { n };
                    let case = Case { m, n, k, epilogue, numerics };
                    let (got, want) = linear_case(&gpu, &mut rng, &case, schedule);
                    let err = rel_err(&got, &want);
                    assert!(err <= TOL, "{name}: m={m} n={n} k={k} {epilogue:?} {numerics:?}: rel err {err:.3e}");
                    worst = worst.max(err);
                }
            }
        }
    }
    println!("{name}: worst rel err {worst:.3e}");
}

const SMALL_MS: [usize; 5] = [1, 2, 3, 7, 16];
const NS: [usize; 5] = [1, 5, 67, 257, 300];
// 16 and 264 take the 16-byte path (K % 8 == 0), the others the pair path; 264 and 515 make the
// 64-thread (M = 16) workgroups loop over K.
const KS: [usize; 7] = [1, 3, 16, 95, 130, 264, 515];

#[test]
fn linear_small_m_f32_ragged() {
    linear_sweep("linear_small_m_f32_ragged", &linear, &SMALL_MS, &NS, &KS, Numerics::F32);
}

#[test]
fn linear_small_m_f16w_ragged() {
    linear_sweep("linear_small_m_f16w_ragged", &linear, &SMALL_MS, &NS, &KS, Numerics::F16W);
}

/// K = 2056: more 8-column chunks (257) than the 256 threads of an M ≤ 4 workgroup.
#[test]
fn linear_small_m_long_k() {
    for numerics in [Numerics::F32, Numerics::F16W] {
        linear_sweep("linear_small_m_long_k", &linear, &[2, 5], &[7, 66], &[2056, 2055], numerics);
    }
}

#[test]
fn linear_tiled_f32_ragged() {
    linear_sweep("linear_tiled_f32_ragged", &linear, &[17, 37], &NS, &KS, Numerics::F32);
    linear_sweep("linear_tiled_f32_ragged", &linear, &[130], &[67, 300], &[95, 515], Numerics::F32);
}

#[test]
fn linear_tiled_f16w_ragged() {
    linear_sweep("linear_tiled_f16w_ragged", &linear, &[17, 37], &NS, &KS, Numerics::F16W);
    linear_sweep("linear_tiled_f16w_ragged", &linear, &[130], &[67, 300], &[95, 515], Numerics::F16W);
}

/// Every tiled work split (the choice depends on M·N, so small test shapes would only ever reach the
/// smallest) on ragged shapes: M below, at and past a tile, N not a multiple of any tile, K odd (element loads,
/// odd f16 rows), ≡ 2 mod 4 (element loads), ≡ 4 mod 8 (16-byte x / 8-byte f16 loads) and ≡ 0 mod 8 (16-byte f16
/// loads, with stages only partly covered by the last 8-column units of some threads), none a multiple of the
/// staged depth of every shape.
#[test]
fn linear_tiled_shapes_ragged() {
    for shape in TiledShape::ALL {
        assert!(shape.fits(), "{shape:?}");
        let schedule = |g: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, e: LinearEpilogue| {
            linear_tiled_shaped(g, x, w, y, m, e, shape)
        };
        for numerics in [Numerics::F32, Numerics::F16W] {
            let name = format!("linear_tiled_shapes_ragged {shape:?}");
            linear_sweep(&name, &schedule, &[1, 17, 100, 130], &[5, 67, 300], &[3, 20, 40, 130, 264, 515], numerics);
        }
    }
    assert!(!TiledShape { tm: 64, tn: 64, rm: 8, bk: 32, kg: 1 }.fits() && !TiledShape { tm: 256, tn: 128, rm: 8, bk: 8, kg: 1 }.fits());
    // K groups: a power of two dividing the stage, and their partial sums count towards workgroup memory.
    assert!(!TiledShape { tm: 32, tn: 32, rm: 4, bk: 8, kg: 3 }.fits() && !TiledShape { tm: 32, tn: 32, rm: 4, bk: 4, kg: 8 }.fits());
    assert!(!TiledShape { tm: 64, tn: 64, rm: 8, bk: 8, kg: 2 }.fits());
}

/// Shapes outside the list the generator must also get right: the smallest tiles (one thread row or column,
/// tm / 8 = 1), one staged column per K group (bk = kg), more staging slots than threads, 8-row threads with
/// split K; ragged M, N, K in both numerics and all epilogues.
#[test]
fn linear_tiled_generated_shapes_ragged() {
    let shapes = [
        TiledShape { tm: 8, tn: 8, rm: 8, bk: 4, kg: 1 },
        TiledShape { tm: 8, tn: 16, rm: 4, bk: 4, kg: 4 },
        TiledShape { tm: 16, tn: 16, rm: 8, bk: 16, kg: 2 },
        TiledShape { tm: 32, tn: 64, rm: 8, bk: 32, kg: 1 },
    ];
    for shape in shapes {
        assert!(shape.fits(), "{shape:?}");
        let schedule = |g: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, e: LinearEpilogue| {
            linear_tiled_shaped(g, x, w, y, m, e, shape)
        };
        for numerics in [Numerics::F32, Numerics::F16W] {
            let name = format!("linear_tiled_generated_shapes_ragged {shape:?}");
            linear_sweep(&name, &schedule, &[3, 41], &[5, 75], &[7, 36, 104], numerics);
        }
    }
}

/// The tile rule on the encoder's shapes (documented on `TiledShape::for_problem`): ≥ 256 workgroups (≈ 2 per
/// H100 SM) wherever a shape gives them, else the most workgroups.
#[test]
fn tiled_shape_choice_encoder() {
    use LinearEpilogue::{Accumulate, Store, SwiGlu};
    let cases = [
        (1001, 4096, Store, TiledShape::LARGE),
        (1001, 8192, SwiGlu, TiledShape::LARGE),
        (1001, 3072, Store, TiledShape::MEDIUM),
        (1001, 1024, Accumulate, TiledShape::SMALL),
        (101, 4096, Store, TiledShape::TINY),
        (101, 8192, SwiGlu, TiledShape::SMALL),
        (101, 3072, Store, TiledShape::MICRO),
        (101, 1024, Accumulate, TiledShape::MICRO),
    ];
    for (m, n, epilogue, want) in cases {
        let got = TiledShape::for_problem(m, n, epilogue);
        assert_eq!(got, want, "m={m} n={n} {epilogue:?}");
        let most = TiledShape::ALL.iter().map(|s| s.groups(m, n, epilogue)).max().unwrap();
        assert!(got.groups(m, n, epilogue) >= 256 || got.groups(m, n, epilogue) == most, "m={m} n={n}");
    }
}

/// Workgroup shapes other than the default (what the benchmark tunes over) compute the same thing.
#[test]
fn linear_small_m_shapes() {
    let gpu = test_gpu();
    let mut rng = Rng::new(29);
    for numerics in [Numerics::F32, Numerics::F16W] {
        // (32, 4, 4) at M = 5 has more outputs than threads; (128, 64, 3) an odd number of SwiGLU outputs;
        // (64, 64, 2) a single thread group.
        for (m, threads, k_threads, rows_per_thread) in [(2usize, 256, 64, 1), (2, 64, 8, 1), (5, 32, 4, 4), (5, 128, 64, 3), (3, 64, 64, 2), (16, 128, 32, 1)] {
            let shape = SmallMShape { threads, k_threads, rows_per_thread };
            assert!(shape.fits(m as u32), "{shape:?} m={m}");
            let schedule = |g: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, e: LinearEpilogue| {
                linear_small_m_shaped(g, x, w, y, m, e, shape)
            };
            for (n, k) in [(67, 95), (300, 264)] {
                for epilogue in EPILOGUES {
                    let n = if epilogue == LinearEpilogue::SwiGlu { 2 * n } else { n };
                    let (got, want) = linear_case(&gpu, &mut rng, &Case { m, n, k, epilogue, numerics }, &schedule);
                    let err = rel_err(&got, &want);
                    assert!(err <= TOL, "{shape:?} m={m} n={n} k={k} {epilogue:?} {numerics:?}: rel err {err:.3e}");
                }
            }
        }
    }
    // Odd rows per workgroup; partial sums that 16 KiB cannot hold even one row of x at a time beside the totals.
    assert!(!SmallMShape { threads: 64, k_threads: 64, rows_per_thread: 3 }.fits(1));
    assert!(!SmallMShape { threads: 256, k_threads: 4, rows_per_thread: 4 }.fits(16));
}

/// Shapes whose partial sums meet in rounds of fewer rows of x (`SmallMShape::reduce_rounds` > 1): whole rounds, a
/// shorter last round, one row per round; plain and with the fused norm, every epilogue, both numerics.
#[test]
fn linear_small_m_reduce_rounds() {
    let gpu = test_gpu();
    let mut rng = Rng::new(0x7d);
    let eps = 1e-5f32;
    let mut worst = 0.0f64;
    // (m, threads, k_threads, rows per thread, rounds wanted)
    let shapes = [(16usize, 256u32, 32u32, 2u32, 3u32), (16, 128, 32, 4, 3), (13, 128, 16, 4, 3), (9, 64, 64, 8, 2), (5, 128, 128, 16, 5)];
    for (m, threads, k_threads, rows_per_thread, rounds) in shapes {
        let shape = SmallMShape { threads, k_threads, rows_per_thread };
        assert!(shape.fits(m as u32), "{shape:?} m={m}");
        assert_eq!(shape.reduce_rounds(m as u32), rounds, "{shape:?} m={m}");
        for numerics in [Numerics::F32, Numerics::F16W] {
            for (n, k) in [(67, 95), (36, 264)] {
                for epilogue in EPILOGUES {
                    let (n, out_cols) = if epilogue == LinearEpilogue::SwiGlu { (2 * n, n) } else { (n, n) };
                    let (x, gain, w, y0) = norm_operands(&mut rng, m, n, k, out_cols);
                    let wm = GpuMatrix::upload(&gpu, "w", &w, n, k, numerics).unwrap();
                    let stored = stored_weights(&w, n, k, numerics);
                    for norm in [false, true] {
                        let (xb, gb, yb) = (gpu.upload("x", &x), gpu.upload("gain", &gain), gpu.upload("y", &y0));
                        let d = if norm {
                            norm_linear_small_m_shaped(&gpu, &xb, &gb, eps, &wm, &yb, m as u32, epilogue, shape)
                        } else {
                            linear_small_m_shaped(&gpu, &xb, &wm, &yb, m as u32, epilogue, shape)
                        };
                        gpu.run(&[&d]);
                        let got = gpu.read_f32_blocking(&yb).unwrap();
                        let h = if norm { cpu_rmsnorm(&x, &gain, eps, m, k) } else { x.clone() };
                        let want = cpu_linear(&h, &stored, &y0, m, n, k, epilogue);
                        let err = rel_err(&got, &want);
                        assert!(err <= TOL, "{shape:?} m={m} n={n} k={k} {epilogue:?} {numerics:?} norm={norm}: rel err {err:.3e}");
                        worst = worst.max(err);
                    }
                }
            }
        }
    }
    println!("linear_small_m_reduce_rounds: worst rel err {worst:.3e}");
}

/// The same inputs through both schedules (small M, where both apply) give the same values.
#[test]
fn linear_schedules_agree() {
    let gpu = test_gpu();
    let mut rng = Rng::new(7);
    let mut worst = 0.0f64;
    for numerics in [Numerics::F32, Numerics::F16W] {
        for (m, n, k) in [(1, 67, 130), (3, 300, 264), (16, 66, 515), (2, 130, 2048)] {
            for epilogue in EPILOGUES {
                let (n, out_cols) = if epilogue == LinearEpilogue::SwiGlu { (2 * n, n) } else { (n, n) };
                let x = gpu.upload("x", &rng.vec(m * k, 1.0));
                let w = GpuMatrix::upload(&gpu, "w", &rng.vec(n * k, 1.0), n, k, numerics).unwrap();
                let y0 = rng.vec(m * out_cols, 1.0);
                let (ys, yt) = (gpu.upload("ys", &y0), gpu.upload("yt", &y0));
                run(&gpu, &linear_small_m(&gpu, &x, &w, &ys, m as u32, epilogue));
                run(&gpu, &linear_tiled(&gpu, &x, &w, &yt, m as u32, epilogue));
                let (a, b) = (gpu.read_f32_blocking(&ys).unwrap(), gpu.read_f32_blocking(&yt).unwrap());
                let err = rel_err(&a, &b);
                assert!(err <= TOL, "m={m} n={n} k={k} {epilogue:?} {numerics:?}: schedules differ by {err:.3e}");
                worst = worst.max(err);
            }
        }
    }
    println!("linear_schedules_agree: worst rel diff {worst:.3e}");
}

/// More than 65535 workgroups: the grid folds into two dimensions and every row is still written once.
#[test]
fn linear_small_m_grid_over_65535() {
    let gpu = test_gpu();
    let mut rng = Rng::new(3);
    let n = 4 * 65535 + 9;
    for (epilogue, numerics) in [(LinearEpilogue::Store, Numerics::F16W), (LinearEpilogue::Accumulate, Numerics::F32)] {
        let case = Case { m: 2, n, k: 3, epilogue, numerics };
        let (got, want) = linear_case(&gpu, &mut rng, &case, &linear);
        let err = rel_err(&got, &want);
        assert!(err <= TOL, "{epilogue:?} {numerics:?}: rel err {err:.3e}");
    }
}

/// RMSNorm fused into the projection (small M: one dispatch; large M: norm then tiled) against the CPU: rows of
/// different scales, ragged K on both access paths, every epilogue, both numerics.
#[test]
fn norm_linear_ragged() {
    let gpu = test_gpu();
    let mut rng = Rng::new(31);
    let eps = 1e-5f32;
    let mut worst = 0.0f64;
    for numerics in [Numerics::F32, Numerics::F16W] {
        for (m, n, k) in [(1usize, 67usize, 95usize), (2, 300, 264), (5, 66, 16), (16, 130, 515), (17, 67, 264), (37, 5, 95)] {
            for epilogue in EPILOGUES {
                let (n, out_cols) = if epilogue == LinearEpilogue::SwiGlu { (2 * n, n) } else { (n, n) };
                let (x, gain, w, y0) = norm_operands(&mut rng, m, n, k, out_cols);
                let (xb, gb, yb) = (gpu.upload("x", &x), gpu.upload("gain", &gain), gpu.upload("y", &y0));
                let wm = GpuMatrix::upload(&gpu, "w", &w, n, k, numerics).unwrap();
                let scratch = gpu.buffer("scratch", (m * k * 4) as u64);
                let ds = norm_linear(&gpu, &xb, &gb, eps, &wm, &yb, m as u32, epilogue, &scratch);
                assert_eq!(ds.len(), if m as u32 <= SMALL_M_MAX { 1 } else { 2 }, "fused only for small M");
                gpu.run(&ds.iter().collect::<Vec<_>>());
                let got = gpu.read_f32_blocking(&yb).unwrap();
                let h = cpu_rmsnorm(&x, &gain, eps, m, k);
                let want = cpu_linear(&h, &stored_weights(&w, n, k, numerics), &y0, m, n, k, epilogue);
                let err = rel_err(&got, &want);
                assert!(err <= TOL, "m={m} n={n} k={k} {epilogue:?} {numerics:?}: rel err {err:.3e}");
                worst = worst.max(err);
            }
        }
    }
    println!("norm_linear_ragged: worst rel err {worst:.3e}");
}

/// Row-blocked matrix–vector passes (17 ≤ M ≤ `BLOCKED_M_MAX` = 32, aligned blocks: one dispatch over every whole
/// 16-row block and one for the rest) and the fallbacks (misaligned K or N, M > 32: the tiled kernel) against the CPU.
#[test]
fn linear_rows_blocks_and_fallbacks() {
    let gpu = test_gpu();
    let mut rng = Rng::new(41);
    for numerics in [Numerics::F32, Numerics::F16W] {
        for (m, n, k, dispatches) in [(17usize, 68usize, 264usize, 2usize), (17, 67, 264, 1), (30, 36, 64, 2), (32, 20, 16, 1), (100, 36, 64, 1), (48, 44, 24, 1), (37, 67, 95, 1), (130, 12, 16, 1)] {
            for epilogue in EPILOGUES {
                let n = if epilogue == LinearEpilogue::SwiGlu { 2 * n } else { n };
                let schedule = |g: &Gpu, x: &GpuBuffer, w: &GpuMatrix, y: &GpuBuffer, m: u32, e: LinearEpilogue| {
                    let ds = linear_rows(g, x, w, y, m, e);
                    assert_eq!(ds.len(), dispatches, "m={m} k={k}: dispatches");
                    // Run all but the last here; the caller runs the last one.
                    g.run(&ds[..ds.len() - 1].iter().collect::<Vec<_>>());
                    ds.into_iter().last().unwrap()
                };
                let (got, want) = linear_case(&gpu, &mut rng, &Case { m, n, k, epilogue, numerics }, &schedule);
                let err = rel_err(&got, &want);
                assert!(err <= TOL, "m={m} n={n} k={k} {epilogue:?} {numerics:?}: rel err {err:.3e}");
            }
        }
    }
}

#[test]
fn rmsnorm_ragged() {
    let gpu = test_gpu();
    let mut rng = Rng::new(5);
    let eps = 1e-5f32;
    for dim in [1usize, 7, 96, 1000] {
        for rows in [1usize, 5] {
            // Rows of very different scales: the statistics are per row.
            let x: Vec<f32> = (0..rows * dim).map(|i| rng.uniform() * (1 + i / dim) as f32 * 0.7).collect();
            let weight = rng.vec(dim, 2.0);
            let (xb, wb, yb) = (gpu.upload("x", &x), gpu.upload("w", &weight), gpu.buffer("y", (rows * dim * 4) as u64));
            run(&gpu, &rmsnorm(&gpu, &xb, &wb, &yb, rows as u32, dim as u32, eps));
            let got = gpu.read_f32_blocking(&yb).unwrap();
            let mut want = vec![0f32; rows * dim];
            for r in 0..rows {
                let row = &x[r * dim..(r + 1) * dim];
                let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / dim as f64;
                let inv = 1.0 / (ms + eps as f64).sqrt();
                for i in 0..dim {
                    want[r * dim + i] = (row[i] as f64 * inv * weight[i] as f64) as f32;
                }
            }
            let err = rel_err(&got, &want);
            assert!(err <= TOL, "rmsnorm rows={rows} dim={dim}: rel err {err:.3e}");
        }
    }
}

#[test]
fn embed_tokens_gather_exact() {
    let gpu = test_gpu();
    let mut rng = Rng::new(11);
    let (rows, cols, n) = (37usize, 19usize, 11usize);
    for format in table_formats() {
        let table = rng.vec(rows * cols, 3.0);
        let tm = GpuMatrix::upload(&gpu, "table", &table, rows, cols, format).unwrap();
        let mut tokens: Vec<u32> = (0..n).map(|_| rng.below(rows as u64) as u32).collect();
        tokens[3] = rows as u32 + 5; // outside the table: a zero row
        let tb = gpu.upload("tokens", &tokens);
        let out = gpu.upload("out", &rng.vec(n * cols, 1.0));
        run(&gpu, &embed_tokens(&gpu, &tm, &tb, &out, n as u32));
        let got = gpu.read_f32_blocking(&out).unwrap();
        let table = stored_weights(&table, rows, cols, format);
        for (i, &t) in tokens.iter().enumerate() {
            let want: Vec<f32> = if (t as usize) < rows { table[t as usize * cols..][..cols].to_vec() } else { vec![0.0; cols] };
            assert_eq!(&got[i * cols..][..cols], &want[..], "{format:?}: row {i} (token {t})");
        }
    }
}

#[test]
fn embed_channels_sum_exact() {
    let gpu = test_gpu();
    let mut rng = Rng::new(13);
    let (channels, vocab, cols, token_rows, rows) = (9usize, 13usize, 21usize, 3usize, 6usize);
    for format in table_formats() {
        let table = rng.vec(channels * vocab * cols, 1.0);
        let tm = GpuMatrix::upload(&gpu, "table", &table, channels * vocab, cols, format).unwrap();
        let tokens: Vec<u32> = (0..token_rows * channels).map(|_| rng.below(vocab as u64) as u32).collect();
        let tb = gpu.upload("tokens", &tokens);
        let out = gpu.upload("out", &rng.vec(rows * cols, 1.0));
        let d = embed_channels_sum(&gpu, &tm, &tb, &out, rows as u32, token_rows as u32, channels as u32, vocab as u32);
        run(&gpu, &d);
        let got = gpu.read_f32_blocking(&out).unwrap();
        let table = stored_weights(&table, channels * vocab, cols, format);
        let mut want = vec![0f32; rows * cols];
        for r in 0..rows {
            let tr = r % token_rows;
            for c in 0..channels {
                let row = c * vocab + tokens[tr * channels + c] as usize;
                for j in 0..cols {
                    want[r * cols + j] += table[row * cols + j];
                }
            }
        }
        assert_eq!(got, want, "{format:?}");
    }
}

/// Every format an embedding table is stored in (`dia::MatrixRole::Embedding`), and q4 with groups of 64.
fn table_formats() -> Vec<WeightFormat> {
    let mut formats: Vec<WeightFormat> = [Numerics::F32, Numerics::F16W, Numerics::Q8, Numerics::Q4].map(Numerics::weight_format).to_vec();
    formats.push(WeightFormat::Quant(QuantFormat::new(QuantBits::Q4, 64).unwrap()));
    formats
}

/// rotate_half form: out = x·cos + rotate_half(x)·sin with rotate_half(x) = [−x₂, x₁] and full-width tables.
fn cpu_rope(v: &[f32], cos_half: &[f32], sin_half: &[f32]) -> Vec<f32> {
    let d = v.len();
    let h = d / 2;
    let rotated: Vec<f32> = v[h..].iter().map(|&a| -a).chain(v[..h].iter().copied()).collect();
    (0..d).map(|i| v[i] * cos_half[i % h] + rotated[i] * sin_half[i % h]).collect()
}

#[test]
fn rope_matches_rotate_half() {
    let gpu = test_gpu();
    let mut rng = Rng::new(17);
    let max_pos = 3072;
    for (head_dim, q_heads, kv_heads) in [(8usize, 3usize, 2usize), (128, 2, 1)] {
        let (cos, sin) = rope_tables(max_pos, head_dim, 10000.0);
        let (cb, sb) = (gpu.upload("cos", &cos), gpu.upload("sin", &sin));
        // A fused QKV row: Q heads, then K heads, then V heads (V must stay untouched).
        let row_stride = (q_heads + 2 * kv_heads) * head_dim;
        let positions = [0u32, 1, 7, 100, 3071, max_pos as u32, 2500];
        let rows = positions.len();
        let qinfo: Vec<u32> = positions.iter().enumerate().flat_map(|(i, &p)| [i as u32 % 2, p]).collect();
        let x = rng.vec(rows * row_stride, 1.0);
        let (xb, qb) = (gpu.upload("x", &x), gpu.upload("qinfo", &qinfo));
        let q = rope(&gpu, &xb, &cb, &sb, &qb, rows as u32, row_stride as u32, 0, q_heads as u32, head_dim as u32);
        let k = rope(&gpu, &xb, &cb, &sb, &qb, rows as u32, row_stride as u32, (q_heads * head_dim) as u32, kv_heads as u32, head_dim as u32);
        gpu.run(&[&q, &k]);
        let got = gpu.read_f32_blocking(&xb).unwrap();
        let half = head_dim / 2;
        let mut want = x.clone();
        for (r, &pos) in positions.iter().enumerate() {
            if pos as usize >= max_pos {
                continue; // no angle for it: the row is left as it was
            }
            let (ct, st) = (&cos[pos as usize * half..][..half], &sin[pos as usize * half..][..half]);
            for h in 0..q_heads + kv_heads {
                let b = r * row_stride + h * head_dim;
                want[b..b + head_dim].copy_from_slice(&cpu_rope(&x[b..b + head_dim], ct, st));
            }
        }
        let err = rel_err(&got, &want);
        assert!(err <= 1e-6, "rope head_dim={head_dim}: rel err {err:.3e}");
        assert_ne!(got, x, "rope changed nothing");
    }
}

/// The tables against the formula evaluated directly in f32 (f32 exponent, powf, angle, cos/sin),
/// and against f64 for small positions, where f32 rounding of the angle is negligible.
#[test]
fn rope_tables_match_f32_formula() {
    for (head_dim, theta) in [(128usize, 10000.0f32), (64, 10000.0), (6, 500.0)] {
        let max_pos = 3072;
        let (cos, sin) = rope_tables(max_pos, head_dim, theta);
        let half = head_dim / 2;
        assert_eq!((cos.len(), sin.len()), (max_pos * half, max_pos * half));
        let mut worst = 0.0f32;
        for pos in 0..max_pos {
            for i in 0..half {
                let inv_freq = 1.0f32 / theta.powf((2 * i) as f32 / head_dim as f32);
                let angle = pos as f32 * inv_freq;
                let (c, s) = (cos[pos * half + i], sin[pos * half + i]);
                worst = worst.max((c - angle.cos()).abs()).max((s - angle.sin()).abs());
                if pos < 16 {
                    let exact = pos as f64 * (theta as f64).powf(-((2 * i) as f64) / head_dim as f64);
                    assert!((c as f64 - exact.cos()).abs() < 1e-6 && (s as f64 - exact.sin()).abs() < 1e-6, "pos {pos} i {i}");
                }
            }
        }
        assert!(worst <= 2e-7, "head_dim {head_dim}: table differs from the f32 formula by {worst:.3e}");
    }
}

/// The default small-M shape fits every M and matrix shape it is asked for, including tiny K and M = 16.
#[test]
fn small_m_default_shapes_fit() {
    for m in 1..=SMALL_M_MAX {
        for (n, k) in [(1, 1), (2, 3), (67, 64), (2048, 2048), (3072, 2048), (16384, 2048), (2048, 8192), (9252, 2048), (5, 515)] {
            let s = SmallMShape::for_shape(m, n, k);
            assert!(s.fits(m), "m={m} n={n} k={k}: {s:?}");
        }
    }
}

/// The pipeline cache: one shader module per distinct source (entry points and keys of one source share it, as the
/// attention family's three prefill entry points do), and one pipeline per typed variant.
#[test]
fn pipeline_cache_shares_modules_and_variants() {
    use dia_webgpu::gpu::KernelVariant;
    use dia_webgpu::kernels::linear::{Arith, SmallMVariant};
    use dia_webgpu::kernels::WeightFormat;
    use std::sync::Arc;
    let gpu = test_gpu();
    let src = || {
        "@group(0) @binding(1) var<storage, read_write> y: array<f32>;\n\
         @compute @workgroup_size(1) fn a() { y[0] = 1.0; }\n\
         @compute @workgroup_size(1) fn b() { y[0] = 2.0; }\n"
            .to_string()
    };
    let modules = gpu.shader_module_count();
    let pa = gpu.pipeline("cache_test.a", "a", src);
    let pb = gpu.pipeline("cache_test.b", "b", src);
    assert_eq!(gpu.shader_module_count(), modules + 1, "two entry points of one source: one module");
    assert!(!Arc::ptr_eq(&pa, &pb), "two entry points: two pipelines");
    assert!(Arc::ptr_eq(&pa, &gpu.pipeline("cache_test.a_again", "a", src)), "same source and entry point under another key");
    let v = SmallMVariant::new(WeightFormat::F32, 16, 1, LinearEpilogue::Store, SmallMShape::for_shape(1, 8, 16), false, false, Arith::F32);
    let p1 = gpu.variant_pipeline(v);
    assert!(Arc::ptr_eq(&p1, &gpu.variant_pipeline(v)), "a variant compiles once");
    let acc = SmallMVariant { epilogue: LinearEpilogue::Accumulate, ..v };
    assert_ne!(v.source(), acc.source());
    assert!(!Arc::ptr_eq(&p1, &gpu.variant_pipeline(acc)), "another variant, another pipeline");
    assert_eq!(gpu.shader_module_count(), modules + 3);
}

/// The benchmark probes (`SmallMProbe`, `bench_linear --probe`) apply to every variant a decoder step of f16w, q8 or
/// q4 compiles (16-byte paths, f32 and integer-dot arithmetic, prefetching or not), change the source, and still
/// validate in naga; where a probe cannot apply (element-wise x), it says so instead of timing the plain kernel.
#[test]
fn small_m_probes_apply_and_validate() {
    use dia_webgpu::kernels::linear::{Arith, ProbedSmallMVariant, SmallMAccess, SmallMProbe, SmallMShape, SmallMVariant};
    let q8 = WeightFormat::Quant(QuantFormat::new(QuantBits::Q8, 32).unwrap());
    let q4 = WeightFormat::Quant(QuantFormat::new(QuantBits::Q4, 32).unwrap());
    let probes = [SmallMProbe::BroadcastX, SmallMProbe::BroadcastW, SmallMProbe::BroadcastBoth];
    let mut count = 0;
    let mut check = |variant: SmallMVariant, probe: SmallMProbe| {
        let probed = ProbedSmallMVariant { variant, probe }.probed_source().unwrap_or_else(|| panic!("{variant:?}: no {probe:?} probe"));
        assert_ne!(probed, dia_webgpu::gpu::KernelVariant::source(&variant), "{variant:?} {probe:?}: source unchanged");
        let module = wgpu::naga::front::wgsl::parse_str(&probed).unwrap_or_else(|e| panic!("{variant:?} {probe:?}: {}", e.emit_to_string(&probed)));
        wgpu::naga::valid::Validator::new(wgpu::naga::valid::ValidationFlags::all(), wgpu::naga::valid::Capabilities::all())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{variant:?} {probe:?}: {}", e.emit_to_string(&probed)));
        count += 1;
    };
    for format in [WeightFormat::F16, q8, q4] {
        let shape = SmallMShape::for_format(format, 2, 2048, 2048);
        let ariths: &[Arith] = if format == WeightFormat::F16 { &[Arith::F32] } else { &[Arith::F32, Arith::Int8Dot] };
        for &arith in ariths {
            for prefetch in [false, true] {
                for probe in probes {
                    check(SmallMVariant::new(format, 2048, 2, LinearEpilogue::SwiGlu, shape, true, false, arith).with_prefetch(prefetch), probe);
                }
            }
        }
        // Quantized rows in 8-column chunks (f32 arithmetic).
        if format != WeightFormat::F16 {
            for probe in probes {
                check(SmallMVariant::with_access(SmallMAccess::cols8(format, 2048), format, 2048, 2, LinearEpilogue::SwiGlu, shape, true, false, Arith::F32), probe);
            }
        }
    }
    // Element-wise x (K % 4 != 0) has no broadcast-x probe.
    let shape = SmallMShape::for_format(q4, 2, 64, 95);
    let variant = SmallMVariant::new(q4, 95, 2, LinearEpilogue::Store, shape, false, false, Arith::F32);
    assert!(ProbedSmallMVariant { variant, probe: SmallMProbe::BroadcastX }.probed_source().is_none());
    println!("{count} probed variants validate");
}

/// A forced unroll (`SmallMTuning::unroll`, `bench_linear --unroll`) of 1, 2, 3 and 5 chunks per thread and round,
/// with and without prefetching, matches the CPU on ragged rows for f16w, q8 and q4 (rounds past the row's end are masked).
#[test]
fn small_m_forced_unroll_matches_cpu() {
    use dia_webgpu::kernels::linear::{linear_small_m_tuned, SmallMShape, SmallMTuning};
    let gpu = test_gpu();
    let mut rng = Rng::new(0x0411);
    let q8 = WeightFormat::Quant(QuantFormat::new(QuantBits::Q8, 32).unwrap());
    let q4 = WeightFormat::Quant(QuantFormat::new(QuantBits::Q4, 32).unwrap());
    for (format, k) in [(WeightFormat::F16, 1032usize), (q8, 1100), (q4, 1100), (q4, 95)] {
        for (m, n, epilogue) in [(2usize, 37usize, LinearEpilogue::Store), (5, 24, LinearEpilogue::SwiGlu)] {
            let out_cols = if epilogue == LinearEpilogue::SwiGlu { n / 2 } else { n };
            let (x, w, y0) = (rng.vec(m * k, 1.0), rng.vec(n * k, 0.5), rng.vec(m * out_cols, 1.0));
            let want = cpu_linear(&x, &stored_weights(&w, n, k, format), &y0, m, n, k, epilogue);
            let wm = GpuMatrix::upload(&gpu, "w", &w, n, k, format).unwrap();
            let xb = gpu.upload("x", &x);
            // Each unroll once, with or without prefetching (lavapipe compiles each pipeline in about a second).
            for (unroll, prefetch) in [(1, false), (2, true), (3, false), (5, true)] {
                gpu.set_matvec_prefetch(prefetch);
                {
                    let yb = gpu.upload("y", &y0);
                    let shape = SmallMShape::for_format(format, m as u32, n as u32, k as u32);
                    let d = linear_small_m_tuned(&gpu, &xb, &wm, &yb, m as u32, epilogue, shape, SmallMTuning { unroll: Some(unroll), ..Default::default() }).unwrap();
                    gpu.run(&[&d]);
                    let got = gpu.read_f32_blocking(&yb).unwrap();
                    let err = rel_err(&got, &want);
                    assert!(err < 1e-5, "{format:?} k={k} m={m} {epilogue:?} unroll {unroll} prefetch {prefetch}: rel err {err:.2e}");
                }
            }
            gpu.set_matvec_prefetch(false);
        }
    }
}
