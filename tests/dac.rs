//! DAC codec: convolution and RVQ kernels against CPU references (`dac_kernel_*`).
mod common;

use common::{rel_err, test_gpu, Rng};
use dia_webgpu::gpu::{Gpu, GpuBuffer};
use dia_webgpu::kernels::dac_conv::{
    conv1d, conv1d_len, conv_transpose1d, conv_transpose1d_len, Conv1dWeights, ConvFusion, ConvTile,
    ConvTranspose1dWeights,
};
use dia_webgpu::kernels::dac_rvq::{rvq_decode, rvq_encode, RvqDims, RvqTensors, RvqWeights};
use dia_webgpu::kernels::{round_f16, Numerics};

const NUMERICS: [Numerics; 2] = [Numerics::F32, Numerics::F16W];

/// What the GPU stores for a weight in `numerics`.
fn stored(w: &[f32], numerics: Numerics) -> Vec<f32> {
    match numerics {
        Numerics::F32 => w.to_vec(),
        Numerics::F16W => w.iter().map(|&v| round_f16(v)).collect(),
    }
}

fn snake_ref(v: f64, a: f64) -> f64 {
    v + (a * v).sin().powi(2) / (a + 1e-9)
}

/// CPU Conv1d: x `[cin, len]`, w `[cout, cin, k]`.
#[allow(clippy::too_many_arguments)]
fn conv1d_ref(
    x: &[f32],
    len: usize,
    w: &[f32],
    b: &[f32],
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    dil: usize,
    pad: usize,
    alpha: Option<&[f32]>,
) -> Vec<f64> {
    let len_out = conv1d_len(len as u32, k as u32, stride as u32, dil as u32, pad as u32) as usize;
    let mut y = vec![0.0f64; cout * len_out];
    for co in 0..cout {
        for t in 0..len_out {
            let mut s = b[co] as f64;
            for ci in 0..cin {
                for kk in 0..k {
                    let pos = (t * stride + kk * dil) as isize - pad as isize;
                    if pos < 0 || pos >= len as isize {
                        continue;
                    }
                    let mut v = x[ci * len + pos as usize] as f64;
                    if let Some(a) = alpha {
                        v = snake_ref(v, a[ci] as f64);
                    }
                    s += w[(co * cin + ci) * k + kk] as f64 * v;
                }
            }
            y[co * len_out + t] = s;
        }
    }
    y
}

/// CPU ConvTranspose1d: x `[cin, len]`, w `[cin, cout, k]`, the scatter form of the reference.
#[allow(clippy::too_many_arguments)]
fn conv_transpose1d_ref(
    x: &[f32],
    len: usize,
    w: &[f32],
    b: &[f32],
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    alpha: Option<&[f32]>,
) -> Vec<f64> {
    let full_len = (len - 1) * stride + k;
    let mut full = vec![0.0f64; cout * full_len];
    for ci in 0..cin {
        for j in 0..len {
            let mut v = x[ci * len + j] as f64;
            if let Some(a) = alpha {
                v = snake_ref(v, a[ci] as f64);
            }
            for co in 0..cout {
                for kk in 0..k {
                    full[co * full_len + j * stride + kk] += w[(ci * cout + co) * k + kk] as f64 * v;
                }
            }
        }
    }
    let len_out = conv_transpose1d_len(len as u32, k as u32, stride as u32, pad as u32) as usize;
    let mut y = vec![0.0f64; cout * len_out];
    for co in 0..cout {
        for t in 0..len_out {
            y[co * len_out + t] = full[co * full_len + t + pad] + b[co] as f64;
        }
    }
    y
}

/// Applies the epilogue fusions to a reference result.
fn epilogue(conv: &[f64], y0: &[f32], accumulate: bool, tanh: bool) -> Vec<f32> {
    conv.iter()
        .zip(y0)
        .map(|(&c, &y)| {
            let v = if accumulate { c + y as f64 } else { c };
            (if tanh { v.tanh() } else { v }) as f32
        })
        .collect()
}

struct Fusions {
    snake: bool,
    accumulate: bool,
    tanh: bool,
}

fn fusions(i: usize) -> Fusions {
    Fusions { snake: i % 2 == 0, accumulate: i % 3 == 1, tanh: i % 4 == 3 }
}

/// Runs one dispatch that writes into a fresh `y` initialised with `y0`, returns `y`.
fn run_into(gpu: &Gpu, y0: &[f32], make: impl FnOnce(&GpuBuffer) -> dia_webgpu::gpu::Dispatch) -> Vec<f32> {
    let y = gpu.upload("y", y0);
    let d = make(&y);
    gpu.run(&[&d]);
    let mut out = gpu.read_f32_blocking(&y).unwrap();
    out.truncate(y0.len());
    out
}

fn check(label: &str, got: &[f32], want: &[f32], tol: f64) {
    assert_eq!(got.len(), want.len(), "{label}: length");
    assert!(got.iter().all(|v| v.is_finite()), "{label}: non-finite output");
    let e = rel_err(got, want);
    assert!(e <= tol, "{label}: rel err {e:.3e} > {tol:.1e}");
}

#[test]
fn dac_kernel_conv1d_matches_cpu() {
    let gpu = test_gpu();
    let mut rng = Rng::new(11);
    // (cin, cout, kernel, stride, dilation, padding, len): ragged channels and lengths, the DAC's
    // dilations and strides, a length-1 input, a kernel longer than one staged chunk of taps.
    let cases: &[(usize, usize, usize, usize, usize, usize, usize)] = &[
        (3, 17, 7, 1, 1, 3, 130),
        (17, 70, 7, 1, 3, 9, 9),
        (70, 3, 7, 1, 9, 27, 130),
        (1, 5, 7, 1, 1, 3, 1),
        (70, 33, 1, 1, 1, 0, 130),
        (5, 17, 4, 2, 1, 1, 130),
        (17, 9, 8, 4, 1, 2, 67),
        (3, 70, 16, 8, 1, 4, 130),
        (70, 1, 7, 1, 1, 3, 130),
        (5, 9, 40, 1, 1, 20, 50),
        (9, 7, 3, 1, 1, 1, 1),
        (17, 17, 7, 1, 9, 27, 9),
    ];
    let mut n = 0;
    for (ci_case, &(cin, cout, k, stride, dil, pad, len)) in cases.iter().enumerate() {
        for numerics in NUMERICS {
            let f = fusions(ci_case + n);
            n += 1;
            let x = rng.vec(cin * len, 2.0);
            let w = rng.vec(cout * cin * k, 1.0 / ((cin * k) as f32).sqrt());
            let b = rng.vec(cout, 0.5);
            let alpha: Vec<f32> = (0..cin).map(|_| 1.0 + 0.5 * rng.uniform()).collect();
            let len_out = conv1d_len(len as u32, k as u32, stride as u32, dil as u32, pad as u32) as usize;
            let y0 = rng.vec(cout * len_out, 1.0);
            let a_gpu = gpu.upload("alpha", &alpha);
            let x_gpu = gpu.upload("x", &x);
            let wg = Conv1dWeights::upload(&gpu, "w", &w, &b, cout, cin, k, numerics).unwrap();
            let fusion = ConvFusion {
                snake_alpha: f.snake.then_some(&a_gpu),
                accumulate: f.accumulate,
                tanh: f.tanh,
            };
            let got = run_into(&gpu, &y0, |y| {
                conv1d(&gpu, &x_gpu, len as u32, &wg, stride as u32, dil as u32, pad as u32, y, fusion, ConvTile::default())
            });
            let conv = conv1d_ref(&x, len, &stored(&w, numerics), &b, cin, cout, k, stride, dil, pad, f.snake.then_some(&alpha[..]));
            let want = epilogue(&conv, &y0, f.accumulate, f.tanh);
            let label = format!(
                "conv1d cin {cin} cout {cout} k {k} s {stride} d {dil} p {pad} len {len} {} snake {} acc {} tanh {}",
                numerics.name(),
                f.snake,
                f.accumulate,
                f.tanh
            );
            check(&label, &got, &want, 2e-5);
        }
    }
}

#[test]
fn dac_kernel_conv_transpose1d_matches_cpu() {
    let gpu = test_gpu();
    let mut rng = Rng::new(12);
    // (cin, cout, kernel, stride, padding, len): the DAC's k = 2s, p = ⌈s/2⌉ for s = 2, 4, 8, and the
    // general formula (kernel not a multiple of the stride, no padding, padding wider than a stride).
    let cases: &[(usize, usize, usize, usize, usize, usize)] = &[
        (17, 9, 4, 2, 1, 130),
        (70, 17, 8, 4, 2, 9),
        (3, 70, 16, 8, 4, 1),
        (9, 5, 16, 8, 4, 33),
        (5, 7, 5, 3, 2, 11),
        (4, 6, 3, 2, 0, 10),
        (6, 3, 7, 2, 3, 13),
        (70, 33, 16, 8, 4, 17),
    ];
    let mut n = 0;
    for (ci_case, &(cin, cout, k, stride, pad, len)) in cases.iter().enumerate() {
        for numerics in NUMERICS {
            let f = fusions(ci_case + n);
            n += 1;
            let x = rng.vec(cin * len, 2.0);
            let w = rng.vec(cin * cout * k, 1.0 / (cin as f32).sqrt());
            let b = rng.vec(cout, 0.5);
            let alpha: Vec<f32> = (0..cin).map(|_| 1.0 + 0.5 * rng.uniform()).collect();
            let len_out = conv_transpose1d_len(len as u32, k as u32, stride as u32, pad as u32) as usize;
            assert_eq!(len_out, (len - 1) * stride + k - 2 * pad);
            let y0 = rng.vec(cout * len_out, 1.0);
            let a_gpu = gpu.upload("alpha", &alpha);
            let x_gpu = gpu.upload("x", &x);
            let wg = ConvTranspose1dWeights::upload(&gpu, "w", &w, &b, cin, cout, k, stride, numerics).unwrap();
            let fusion = ConvFusion {
                snake_alpha: f.snake.then_some(&a_gpu),
                accumulate: f.accumulate,
                tanh: f.tanh,
            };
            let got = run_into(&gpu, &y0, |y| {
                conv_transpose1d(&gpu, &x_gpu, len as u32, &wg, pad as u32, y, fusion, ConvTile::default())
            });
            let conv = conv_transpose1d_ref(&x, len, &stored(&w, numerics), &b, cin, cout, k, stride, pad, f.snake.then_some(&alpha[..]));
            let want = epilogue(&conv, &y0, f.accumulate, f.tanh);
            let label = format!(
                "convT cin {cin} cout {cout} k {k} s {stride} p {pad} len {len} {} snake {} acc {} tanh {}",
                numerics.name(),
                f.snake,
                f.accumulate,
                f.tanh
            );
            check(&label, &got, &want, 2e-5);
        }
    }
}

/// Other work splits (the benchmark may pick one) compute the same function.
#[test]
fn dac_kernel_conv_other_tiles_match_cpu() {
    let gpu = test_gpu();
    let mut rng = Rng::new(13);
    let tiles = [
        ConvTile { wm: 8, wn: 32, rm: 8, rn: 2, kr_max: 16, xs_max: 1024 },
        ConvTile { wm: 32, wn: 8, rm: 2, rn: 8, kr_max: 8, xs_max: 1024 },
        ConvTile { wm: 16, wn: 16, rm: 8, rn: 4, kr_max: 16, xs_max: 1024 },
    ];
    for (i, tile) in tiles.into_iter().enumerate() {
        let (cin, cout, k, dil, len) = (19, 37, 7, 3, 101);
        let numerics = NUMERICS[i % 2];
        let x = rng.vec(cin * len, 2.0);
        let w = rng.vec(cout * cin * k, 0.1);
        let b = rng.vec(cout, 0.5);
        let alpha: Vec<f32> = (0..cin).map(|_| 1.0 + 0.5 * rng.uniform()).collect();
        let a_gpu = gpu.upload("alpha", &alpha);
        let x_gpu = gpu.upload("x", &x);
        let wg = Conv1dWeights::upload(&gpu, "w", &w, &b, cout, cin, k, numerics).unwrap();
        let fusion = ConvFusion { snake_alpha: Some(&a_gpu), accumulate: true, tanh: false };
        let y0 = rng.vec(cout * len, 1.0);
        let got = run_into(&gpu, &y0, |y| conv1d(&gpu, &x_gpu, len as u32, &wg, 1, dil as u32, 3 * dil as u32, y, fusion, tile));
        let conv = conv1d_ref(&x, len, &stored(&w, numerics), &b, cin, cout, k, 1, dil, 3 * dil, Some(&alpha));
        check(&format!("conv1d tile {tile:?}"), &got, &epilogue(&conv, &y0, true, false), 2e-5);

        let (cin, cout, k, s, p, len) = (23, 11, 8, 4, 2, 29);
        let x = rng.vec(cin * len, 2.0);
        let w = rng.vec(cin * cout * k, 0.2);
        let b = rng.vec(cout, 0.5);
        let x_gpu = gpu.upload("x", &x);
        let wg = ConvTranspose1dWeights::upload(&gpu, "w", &w, &b, cin, cout, k, s, numerics).unwrap();
        let y0 = vec![0.0; cout * conv_transpose1d_len(len as u32, k as u32, s as u32, p as u32) as usize];
        let got = run_into(&gpu, &y0, |y| {
            conv_transpose1d(&gpu, &x_gpu, len as u32, &wg, p as u32, y, ConvFusion::default(), tile)
        });
        let conv = conv_transpose1d_ref(&x, len, &stored(&w, numerics), &b, cin, cout, k, s, p, None);
        check(&format!("convT tile {tile:?}"), &got, &epilogue(&conv, &y0, false, false), 2e-5);
    }
}

struct RvqHost {
    dims: RvqDims,
    codebooks: Vec<f32>,
    in_w: Vec<f32>,
    in_b: Vec<f32>,
    out_w: Vec<f32>,
    out_b: Vec<f32>,
}

impl RvqHost {
    fn random(rng: &mut Rng, dims: RvqDims) -> RvqHost {
        let RvqDims { n_codebooks: n, codebook_size: size, codebook_dim: dim, latent } = dims;
        let mut codebooks = rng.vec(n * size * dim, 1.0);
        // Exact duplicates of earlier entries: ties must go to the first index. Past 256 entries, entries
        // 256… copy entries 0… (the same GPU lane scans both); otherwise entry size − 3 copies entry 2.
        let (src, dst, count) = if size > 256 { (0, 256, size - 256) } else { (2, size.saturating_sub(3), 1) };
        for q in 0..n {
            let at = |j: usize| (q * size + j) * dim;
            codebooks.copy_within(at(src)..at(src + count), at(dst));
        }
        RvqHost {
            dims,
            codebooks,
            in_w: rng.vec(n * dim * latent, 1.0 / (latent as f32).sqrt()),
            in_b: rng.vec(n * dim, 0.1),
            out_w: rng.vec(n * latent * dim, 0.5),
            out_b: rng.vec(n * latent, 0.1),
        }
    }

    fn upload(&self, gpu: &Gpu, numerics: Numerics) -> RvqWeights {
        let t = RvqTensors {
            codebooks: &self.codebooks,
            in_proj_w: &self.in_w,
            in_proj_b: &self.in_b,
            out_proj_w: &self.out_w,
            out_proj_b: &self.out_b,
        };
        RvqWeights::upload(gpu, self.dims, &t, numerics).unwrap()
    }

    /// out_proj_q(codebook_q[code]) for every latent channel, f64.
    fn out_term(&self, out_w: &[f32], q: usize, code: usize) -> Vec<f64> {
        let RvqDims { codebook_size: size, codebook_dim: dim, latent, .. } = self.dims;
        let e = &self.codebooks[(q * size + code) * dim..(q * size + code + 1) * dim];
        (0..latent)
            .map(|co| {
                let row = &out_w[(q * latent + co) * dim..(q * latent + co + 1) * dim];
                self.out_b[q * latent + co] as f64 + row.iter().zip(e).map(|(w, v)| *w as f64 * *v as f64).sum::<f64>()
            })
            .collect()
    }

    fn decode_ref(&self, codes: &[u32], frames: usize, numerics: Numerics) -> Vec<f32> {
        let out_w = stored(&self.out_w, numerics);
        let latent = self.dims.latent;
        let mut z = vec![0.0f64; latent * frames];
        for q in 0..self.dims.n_codebooks {
            for t in 0..frames {
                for (co, v) in self.out_term(&out_w, q, codes[q * frames + t] as usize).into_iter().enumerate() {
                    z[co * frames + t] += v;
                }
            }
        }
        z.into_iter().map(|v| v as f32).collect()
    }

    /// Codes, final residual, the smallest best-vs-runner-up cosine gap among distinct entries, and how
    /// many choices were exact ties (a duplicated entry won).
    fn encode_ref(&self, z: &[f32], frames: usize, numerics: Numerics) -> (Vec<u32>, Vec<f32>, f64, usize) {
        let RvqDims { n_codebooks: n, codebook_size: size, codebook_dim: dim, latent } = self.dims;
        let in_w = stored(&self.in_w, numerics);
        let out_w = stored(&self.out_w, numerics);
        let mut r: Vec<f64> = z.iter().map(|&v| v as f64).collect();
        let mut codes = vec![0u32; n * frames];
        let mut min_gap = f64::INFINITY;
        let mut ties = 0;
        for q in 0..n {
            for t in 0..frames {
                let p: Vec<f64> = (0..dim)
                    .map(|d| {
                        let row = &in_w[(q * dim + d) * latent..(q * dim + d + 1) * latent];
                        self.in_b[q * dim + d] as f64 + (0..latent).map(|c| row[c] as f64 * r[c * frames + t]).sum::<f64>()
                    })
                    .collect();
                let pn = p.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
                let scores: Vec<f64> = (0..size)
                    .map(|j| {
                        let e = &self.codebooks[(q * size + j) * dim..(q * size + j + 1) * dim];
                        let en = e.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt().max(1e-12);
                        e.iter().zip(&p).map(|(a, b)| *a as f64 * b).sum::<f64>() / (en * pn)
                    })
                    .collect();
                let mut best = 0;
                for j in 1..size {
                    if scores[j] > scores[best] {
                        best = j;
                    }
                }
                let best_entry = &self.codebooks[(q * size + best) * dim..(q * size + best + 1) * dim];
                for (j, s) in scores.iter().enumerate() {
                    let entry = &self.codebooks[(q * size + j) * dim..(q * size + j + 1) * dim];
                    if entry != best_entry {
                        min_gap = min_gap.min(scores[best] - s);
                    } else if j != best {
                        ties += 1;
                    }
                }
                codes[q * frames + t] = best as u32;
                for (co, v) in self.out_term(&out_w, q, best).into_iter().enumerate() {
                    r[co * frames + t] -= v;
                }
            }
        }
        (codes, r.into_iter().map(|v| v as f32).collect(), min_gap, ties)
    }
}

#[test]
fn dac_kernel_rvq_decode_matches_cpu() {
    let gpu = test_gpu();
    let mut rng = Rng::new(21);
    for (i, &(n, size, dim, latent, frames)) in [(3, 37, 8, 70, 9), (9, 1024, 8, 17, 130), (2, 5, 3, 33, 1)].iter().enumerate() {
        let numerics = NUMERICS[i % 2];
        let host = RvqHost::random(&mut rng, RvqDims { n_codebooks: n, codebook_size: size, codebook_dim: dim, latent });
        let rvq = host.upload(&gpu, numerics);
        let codes: Vec<u32> = (0..n * frames).map(|_| rng.below(size as u64) as u32).collect();
        let codes_gpu = gpu.upload("codes", &codes);
        let z = gpu.buffer("z", (latent * frames * 4) as u64);
        gpu.run(&[&rvq_decode(&gpu, &codes_gpu, &rvq, &z, frames as u32)]);
        let got = gpu.read_f32_blocking(&z).unwrap();
        let want = host.decode_ref(&codes, frames, numerics);
        check(&format!("rvq decode n {n} size {size} dim {dim} latent {latent} frames {frames} {}", numerics.name()), &got, &want, 1e-5);
    }
}

#[test]
fn dac_kernel_rvq_encode_matches_cpu() {
    let gpu = test_gpu();
    let mut rng = Rng::new(22);
    let mut ties = 0;
    for (i, &(n, size, dim, latent, frames)) in [(4, 37, 8, 70, 130), (3, 300, 8, 301, 9), (2, 5, 3, 33, 1)].iter().enumerate() {
        for numerics in NUMERICS {
            let host = RvqHost::random(&mut rng, RvqDims { n_codebooks: n, codebook_size: size, codebook_dim: dim, latent });
            let rvq = host.upload(&gpu, numerics);
            let z = rng.vec(latent * frames, 1.0);
            let (want_codes, want_r, gap, case_ties) = host.encode_ref(&z, frames, numerics);
            ties += case_ties;
            // The data must not hold near-ties between distinct entries, or f32 vs f64 may pick differently.
            assert!(gap > 1e-5, "case {i}: test data has a near-tie (gap {gap:.2e}); change the seed");
            let r_gpu = gpu.upload("r", &z);
            let codes_gpu = gpu.buffer("codes", (n * frames * 4) as u64);
            let ds = rvq_encode(&gpu, &r_gpu, &rvq, &codes_gpu, frames as u32);
            gpu.run(&ds.iter().collect::<Vec<_>>());
            let got_codes = gpu.read_u32_blocking(&codes_gpu).unwrap();
            let label = format!("rvq encode n {n} size {size} dim {dim} latent {latent} frames {frames} {}", numerics.name());
            assert_eq!(got_codes, want_codes, "{label}: codes");
            let got_r = gpu.read_f32_blocking(&r_gpu).unwrap();
            check(&label, &got_r, &want_r, 1e-4);
        }
    }
    assert!(ties > 0, "no exact tie was exercised");
}
