//! DAC codec: convolution and RVQ kernels against CPU references (`dac_kernel_*`).
mod common;

use common::conv_ref::{self, conv_epilogue};
use common::{rel_err, test_gpu, Rng};
use dia_webgpu::gpu::{Gpu, GpuBuffer};
use dia_webgpu::kernels::conv::plain::{
    conv1d, conv1d_len, conv_transpose1d, conv_transpose1d_len, Conv1dWeights, ConvFusion, ConvLaunch, ConvShape, ConvTile,
    ConvTranspose1dWeights,
};
use dia_webgpu::kernels::dac_rvq::{rvq_decode, rvq_encode, RvqDims, RvqTensors, RvqWeights};
use dia_webgpu::kernels::{round_f16, Numerics};

const NUMERICS: [Numerics; 2] = [Numerics::F32, Numerics::F16W];

/// What the GPU stores for a weight in `numerics` (the codec runs q8 and q4 as f16w).
fn stored(w: &[f32], numerics: Numerics) -> Vec<f32> {
    match numerics.codec() {
        Numerics::F32 => w.to_vec(),
        _ => w.iter().map(|&v| round_f16(v)).collect(),
    }
}

struct Fusions {
    snake: bool,
    accumulate: bool,
    tanh: bool,
}

fn fusions(i: usize) -> Fusions {
    Fusions { snake: i.is_multiple_of(2), accumulate: i % 3 == 1, tanh: i % 4 == 3 }
}

/// Runs one convolution call that writes into a fresh `y` initialised with `y0`, returns `y`.
fn run_into(gpu: &Gpu, y0: &[f32], make: impl FnOnce(&GpuBuffer) -> ConvLaunch) -> Vec<f32> {
    let y = gpu.upload("y", y0);
    let launch = make(&y);
    gpu.run(&launch.dispatches.iter().collect::<Vec<_>>());
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
            let conv = conv_ref::conv1d(&x, len, &stored(&w, numerics), &b, cin, cout, k, stride, dil, pad, f.snake.then_some(&alpha[..]));
            let want = conv_epilogue(&conv, &y0, f.accumulate, f.tanh);
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
            let conv = conv_ref::conv_transpose1d(&x, len, &stored(&w, numerics), &b, cin, cout, k, stride, pad, f.snake.then_some(&alpha[..]));
            let want = conv_epilogue(&conv, &y0, f.accumulate, f.tanh);
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

/// Every tile shape, with and without split-K, computes the same function as the per-call choice.
#[test]
fn dac_kernel_conv_other_tiles_match_cpu() {
    let gpu = test_gpu();
    let mut rng = Rng::new(13);
    let mut tiles = Vec::new();
    for (i, shape) in ConvShape::ALL.into_iter().enumerate() {
        tiles.push(ConvTile { shape: Some(shape), splits: Some(1 + 2 * (i % 2) as u32), f16_math: false });
    }
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
        let conv = conv_ref::conv1d(&x, len, &stored(&w, numerics), &b, cin, cout, k, 1, dil, 3 * dil, Some(&alpha));
        check(&format!("conv1d tile {tile:?}"), &got, &conv_epilogue(&conv, &y0, true, false), 2e-5);

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
        let conv = conv_ref::conv_transpose1d(&x, len, &stored(&w, numerics), &b, cin, cout, k, s, p, None);
        check(&format!("convT tile {tile:?}"), &got, &conv_epilogue(&conv, &y0, false, false), 2e-5);
    }
}

/// Each tile shape forced, without and with split-K (2 and 5 splits of the input channels), on ragged
/// geometries: odd channel counts, lengths off the tile sizes, dilation 9 with cout = 1, a strided conv,
/// stride 2 and 8 transposed convs, a kernel-1 conv; fusions vary (the reduce pass applies them under
/// split-K). The per-call choice is checked on the split-K-sized case too.
#[test]
fn dac_kernel_conv_each_shape_and_split_ragged() {
    let gpu = test_gpu();
    let mut rng = Rng::new(15);
    let mut tiles: Vec<ConvTile> = Vec::new();
    for shape in ConvShape::ALL {
        for splits in [1, 2, 5] {
            tiles.push(ConvTile { shape: Some(shape), splits: Some(splits), f16_math: false });
        }
    }
    tiles.push(ConvTile::default());
    // Conv1d (cin, cout, kernel, stride, dilation, padding, len) and ConvTranspose1d (cin, cout, kernel, stride, padding, len).
    let convs: &[(usize, usize, usize, usize, usize, usize, usize)] =
        &[(21, 1, 7, 1, 9, 27, 77), (13, 37, 4, 2, 1, 1, 61), (35, 19, 1, 1, 1, 0, 45), (151, 6, 7, 1, 1, 3, 5)];
    let convts: &[(usize, usize, usize, usize, usize, usize)] = &[(15, 9, 16, 8, 4, 11), (11, 5, 4, 2, 1, 23)];
    let mut n = 0;
    for tile in tiles {
        for &(cin, cout, k, stride, dil, pad, len) in convs {
            // The narrow tile's 1024 staged columns do not fit a strided input span.
            if tile.shape == Some(ConvShape::NARROW) && stride > 1 {
                continue;
            }
            let numerics = NUMERICS[n % 2];
            let f = fusions(n);
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
            let fusion = ConvFusion { snake_alpha: f.snake.then_some(&a_gpu), accumulate: f.accumulate, tanh: f.tanh };
            let mut splits = 0;
            let got = run_into(&gpu, &y0, |y| {
                let l = conv1d(&gpu, &x_gpu, len as u32, &wg, stride as u32, dil as u32, pad as u32, y, fusion, tile);
                splits = l.splits;
                l
            });
            if let Some(want) = tile.splits {
                assert_eq!(splits > 1, want > 1, "{tile:?}: {splits} splits");
            }
            let conv = conv_ref::conv1d(&x, len, &stored(&w, numerics), &b, cin, cout, k, stride, dil, pad, f.snake.then_some(&alpha[..]));
            let label = format!("conv1d {tile:?} cin {cin} cout {cout} k {k} s {stride} d {dil} len {len} {}", numerics.name());
            check(&label, &got, &conv_epilogue(&conv, &y0, f.accumulate, f.tanh), 2e-5);
        }
        for &(cin, cout, k, stride, pad, len) in convts {
            let numerics = NUMERICS[n % 2];
            let f = fusions(n);
            n += 1;
            let x = rng.vec(cin * len, 2.0);
            let w = rng.vec(cin * cout * k, 1.0 / (cin as f32).sqrt());
            let b = rng.vec(cout, 0.5);
            let alpha: Vec<f32> = (0..cin).map(|_| 1.0 + 0.5 * rng.uniform()).collect();
            let len_out = conv_transpose1d_len(len as u32, k as u32, stride as u32, pad as u32) as usize;
            let y0 = rng.vec(cout * len_out, 1.0);
            let a_gpu = gpu.upload("alpha", &alpha);
            let x_gpu = gpu.upload("x", &x);
            let wg = ConvTranspose1dWeights::upload(&gpu, "w", &w, &b, cin, cout, k, stride, numerics).unwrap();
            let fusion = ConvFusion { snake_alpha: f.snake.then_some(&a_gpu), accumulate: f.accumulate, tanh: f.tanh };
            let got = run_into(&gpu, &y0, |y| conv_transpose1d(&gpu, &x_gpu, len as u32, &wg, pad as u32, y, fusion, tile));
            let conv = conv_ref::conv_transpose1d(&x, len, &stored(&w, numerics), &b, cin, cout, k, stride, pad, f.snake.then_some(&alpha[..]));
            let label = format!("convT {tile:?} cin {cin} cout {cout} k {k} s {stride} len {len} {}", numerics.name());
            check(&label, &got, &conv_epilogue(&conv, &y0, f.accumulate, f.tanh), 2e-5);
        }
    }
    // cin 151 × 7 taps on 5 steps launches one workgroup: the per-call choice splits the reduction.
    let (cin, cout, k, len) = (151, 6, 7, 5);
    let x_gpu = gpu.upload("x", &rng.vec(cin * len, 2.0));
    let wg = Conv1dWeights::upload(&gpu, "w", &rng.vec(cout * cin * k, 0.1), &rng.vec(cout, 0.5), cout, cin, k, Numerics::F32).unwrap();
    let y = gpu.buffer("y", (cout * len * 4) as u64);
    let l = conv1d(&gpu, &x_gpu, len as u32, &wg, 1, 1, 3, &y, ConvFusion::default(), ConvTile::default());
    assert_eq!((l.shape, l.splits), (ConvShape::SMALL, 2), "per-call choice for cin {cin} × k {k} on {len} steps");
}

/// The shader-f16 variant (f16 activations and products, f32 across chunks) stays close to the f64
/// reference on the f16-rounded weights; skipped where the device lacks shader-f16.
#[test]
fn dac_kernel_conv_f16_math_close_to_cpu() {
    let gpu = test_gpu();
    if !gpu.features.contains(wgpu::Features::SHADER_F16) {
        println!("dac_kernel_conv_f16_math_close_to_cpu: no shader-f16 on {}, skipped", gpu.describe());
        return;
    }
    let mut rng = Rng::new(14);
    let tiles = [
        ConvTile { f16_math: true, ..ConvTile::default() },
        ConvTile { shape: Some(ConvShape::LARGE), splits: Some(3), f16_math: true },
        ConvTile { shape: Some(ConvShape::SHORT), splits: Some(2), f16_math: true },
    ];
    for (tile, (cin, cout, k, dil, len)) in tiles.into_iter().flat_map(|t| [(37, 19, 7, 9, 150), (70, 130, 1, 1, 131), (5, 3, 7, 1, 1)].map(|c| (t, c))) {
        let x = rng.vec(cin * len, 2.0);
        let w = rng.vec(cout * cin * k, 1.0 / ((cin * k) as f32).sqrt());
        let b = rng.vec(cout, 0.5);
        let alpha: Vec<f32> = (0..cin).map(|_| 1.0 + 0.5 * rng.uniform()).collect();
        let a_gpu = gpu.upload("alpha", &alpha);
        let x_gpu = gpu.upload("x", &x);
        let wg = Conv1dWeights::upload(&gpu, "w", &w, &b, cout, cin, k, Numerics::F16W).unwrap();
        let fusion = ConvFusion { snake_alpha: Some(&a_gpu), accumulate: true, tanh: false };
        let y0 = rng.vec(cout * len, 1.0);
        let got = run_into(&gpu, &y0, |y| conv1d(&gpu, &x_gpu, len as u32, &wg, 1, dil as u32, 3 * dil as u32, y, fusion, tile));
        let conv = conv_ref::conv1d(&x, len, &stored(&w, Numerics::F16W), &b, cin, cout, k, 1, dil, 3 * dil, Some(&alpha));
        check(&format!("f16 conv1d {tile:?} cin {cin} cout {cout} k {k} d {dil} len {len}"), &got, &conv_epilogue(&conv, &y0, true, false), 2e-3);

        let (s, p) = (4, 2);
        let wt = rng.vec(cin * cout * 2 * s, 1.0 / (cin as f32).sqrt());
        let wg = ConvTranspose1dWeights::upload(&gpu, "w", &wt, &b, cin, cout, 2 * s, s, Numerics::F16W).unwrap();
        let y0 = vec![0.0; cout * conv_transpose1d_len(len as u32, 2 * s as u32, s as u32, p as u32) as usize];
        let got = run_into(&gpu, &y0, |y| conv_transpose1d(&gpu, &x_gpu, len as u32, &wg, p as u32, y, ConvFusion::default(), tile));
        let conv = conv_ref::conv_transpose1d(&x, len, &stored(&wt, Numerics::F16W), &b, cin, cout, 2 * s, s, p, None);
        check(&format!("f16 convT {tile:?} cin {cin} cout {cout} len {len}"), &got, &conv_epilogue(&conv, &y0, false, false), 2e-3);
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

// ------------------------------------------------------------------------------------------------
// The codec: layout, loader, parity against the PyTorch fixtures.
// ------------------------------------------------------------------------------------------------

use dia_webgpu::config::DacConfig;
use dia_webgpu::dac::{check_dac_checkpoint, check_dac_layout, dac_tensor_specs, DacError, DacModel, DacModelBuilder};
use dia_webgpu::weights::{ByteSource, Checkpoint, WeightsError};

fn real_layout() -> (DacConfig, Vec<(String, Vec<usize>)>) {
    let path = common::fixtures_dir().join("../real-layout.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).expect("real-layout.json")).unwrap();
    let tensors = v["dac"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, s)| (k.clone(), serde_json::from_value(s.clone()).unwrap()))
        .collect();
    let cfg = DacConfig::from_json_str(&v["dac_config"].to_string()).unwrap();
    assert_eq!(cfg, DacConfig::dac_44khz());
    (cfg, tensors)
}

fn check_layout(cfg: &DacConfig, tensors: &[(String, Vec<usize>)]) -> Result<(), DacError> {
    check_dac_layout(cfg, tensors.iter().map(|(n, s)| (n.as_str(), s.as_slice())))
}

/// A safetensors source: a fabricated header for `tensors` (back to back, `dtype` of `elem` bytes) followed
/// by zeros that exist nowhere; reading past the header fails, so validation provably reads headers only.
struct HeaderOnly {
    header: Vec<u8>,
    len: u64,
}

impl HeaderOnly {
    fn new(tensors: &[(String, Vec<usize>)], dtype: &str, elem: u64) -> HeaderOnly {
        let mut table = serde_json::Map::new();
        let mut offset = 0u64;
        for (name, shape) in tensors {
            let len = shape.iter().product::<usize>() as u64 * elem;
            table.insert(name.clone(), serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len]}));
            offset += len;
        }
        let mut text = serde_json::to_vec(&serde_json::Value::Object(table)).unwrap();
        text.resize(text.len().div_ceil(8) * 8, b' ');
        let mut header = (text.len() as u64).to_le_bytes().to_vec();
        header.extend_from_slice(&text);
        let len = header.len() as u64 + offset;
        HeaderOnly { header, len }
    }
}

impl ByteSource for HeaderOnly {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), WeightsError> {
        let end = offset as usize + buf.len();
        if end > self.header.len() {
            return Err(WeightsError::Source(format!("read of tensor data at {offset} (validation must not read data)")));
        }
        buf.copy_from_slice(&self.header[offset as usize..end]);
        Ok(())
    }
}

fn header_checkpoint(tensors: &[(String, Vec<usize>)], dtype: &str, elem: u64) -> Checkpoint {
    Checkpoint::from_sources(vec![Box::new(HeaderOnly::new(tensors, dtype, elem))]).unwrap()
}

#[test]
fn dac_layout_accepts_real_checkpoint_names_and_shapes() {
    let (cfg, tensors) = real_layout();
    assert_eq!(tensors.len(), 223);
    assert_eq!(dac_tensor_specs(&cfg).len(), 223);
    check_layout(&cfg, &tensors).expect("the real descript/dac_44khz layout");
    // The same through a checkpoint whose header is fabricated (F32 and BF16) and whose data is never read.
    check_dac_checkpoint(&cfg, &header_checkpoint(&tensors, "F32", 4)).expect("real layout, F32 header");
    check_dac_checkpoint(&cfg, &header_checkpoint(&tensors, "BF16", 2)).expect("real layout, BF16 header");
    let mut specs: Vec<(String, Vec<usize>)> = dac_tensor_specs(&cfg).into_iter().map(|s| (s.name, s.shape)).collect();
    let mut sorted = tensors.clone();
    specs.sort();
    sorted.sort();
    assert_eq!(specs, sorted, "the config's implied layout is exactly the real one");

    // Weight-normed forms of the same tensors (g per slice of axis 0, also for ConvTranspose's [Cin, …]).
    for (g_suffix, v_suffix) in [("weight_g", "weight_v"), ("parametrizations.weight.original0", "parametrizations.weight.original1")] {
        let normed: Vec<(String, Vec<usize>)> = tensors
            .iter()
            .flat_map(|(n, s)| match n.strip_suffix(".weight") {
                Some(base) if !n.contains("codebook") => vec![
                    (format!("{base}.{g_suffix}"), vec![s[0], 1, 1]),
                    (format!("{base}.{v_suffix}"), s.clone()),
                ],
                _ => vec![(n.clone(), s.clone())],
            })
            .collect();
        check_layout(&cfg, &normed).unwrap_or_else(|e| panic!("{g_suffix} form: {e}"));
    }

    let without = |name: &str| tensors.iter().filter(|(n, _)| n != name).cloned().collect::<Vec<_>>();
    match check_layout(&cfg, &without("decoder.block.2.conv_t1.weight")) {
        Err(DacError::MissingTensor { name, count: 1 }) => assert_eq!(name, "decoder.block.2.conv_t1.weight"),
        other => panic!("missing tensor not reported: {other:?}"),
    }
    let mut reshaped = tensors.clone();
    let i = reshaped.iter().position(|(n, _)| n == "decoder.block.0.conv_t1.weight").unwrap();
    reshaped[i].1 = vec![768, 1536, 16]; // the Conv1d orientation, a classic mistake
    assert!(matches!(check_layout(&cfg, &reshaped), Err(DacError::WrongShape { .. })));
    let mut extra = tensors.clone();
    extra.push(("decoder.model.0.weight_v".into(), vec![1536, 1024, 7]));
    assert!(matches!(check_layout(&cfg, &extra), Err(DacError::UnexpectedTensor(_))));
    let mut twice = tensors.clone();
    twice.push(("decoder.conv1.weight_g".into(), vec![1536, 1, 1]));
    assert!(matches!(check_layout(&cfg, &twice), Err(DacError::DuplicateTensor { .. })));
}

struct Tiny {
    cfg: DacConfig,
    /// (name, shape, data) as stored.
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

fn tiny_dir() -> std::path::PathBuf {
    common::fixtures_dir().join("dac")
}

fn tiny() -> Tiny {
    let dir = tiny_dir();
    let cfg = DacConfig::from_json_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let ckpt = Checkpoint::open_dir(&dir).unwrap();
    let tensors = ckpt.names().map(|n| (n.to_string(), ckpt.info(n).unwrap().shape.clone(), ckpt.read_f32(n).unwrap())).collect();
    Tiny { cfg, tensors }
}

fn load_tiny(gpu: &Gpu, t: &Tiny, numerics: Numerics, encoder: bool) -> DacModel {
    let mut b = DacModelBuilder::new(gpu, &t.cfg, numerics, encoder).unwrap();
    for (n, s, d) in &t.tensors {
        b.accept(n, s, d).unwrap();
    }
    b.finish().unwrap()
}

fn expected() -> std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    common::load_expected(&common::fixtures_dir().join("expected.safetensors"))
}

fn as_codes(v: &[f32]) -> Vec<u32> {
    v.iter().map(|&c| c as u32).collect()
}

#[test]
fn dac_parity_decode_f32_and_f16w() {
    let gpu = test_gpu();
    let exp = expected();
    let (cshape, codes) = &exp["dac.codes"];
    let frames = cshape[2];
    let want = &exp["dac.decoded"].1;
    // f16 storage rounds each weight by ≤ 2⁻¹¹ relative (≈ −71 dB RMS after averaging over a fan-in);
    // ~25 layers add such noise roughly independently (≈ −57 dB), Snake and tanh are 1–2-Lipschitz:
    // 55 dB leaves margin over that estimate (measured on the tiny fixture: 74.9 dB, 65.7 dB with f16 arithmetic).
    // f16w also with f16 arithmetic where the device has shader-f16 (whatever ConvTile::preferred picks here).
    let f16_math = gpu.features.contains(wgpu::Features::SHADER_F16);
    for (numerics, math, min_snr) in [(Numerics::F32, false, 60.0), (Numerics::F16W, false, 55.0), (Numerics::F16W, true, 55.0)] {
        if math && !f16_math {
            println!("dac decode f16w (f16 math): no shader-f16 on {}, skipped", gpu.describe());
            continue;
        }
        let mut model = DacModel::load_dir(&gpu, &tiny_dir(), numerics, false).unwrap();
        model.set_conv_tile(ConvTile { f16_math: math, ..ConvTile::default() });
        assert_eq!(model.pcm_len(frames), 512 * frames);
        let got = model.decode_blocking(&gpu, &as_codes(codes), frames).unwrap();
        let snr = common::snr_db(&got, want);
        let math = if math { "f16" } else { "f32" };
        println!("dac decode {} ({math} math): SNR {snr:.1} dB, rel err {:.2e}", numerics.name(), rel_err(&got, want));
        assert!(snr >= min_snr, "{} {math} math: SNR {snr:.1} dB < {min_snr} dB", numerics.name());
    }
}

/// The codec has no quantized path: a q8 or q4 model's codec loads and decodes exactly as in f16w.
#[test]
fn dac_quantized_modes_run_the_codec_in_f16w() {
    let gpu = test_gpu();
    let exp = expected();
    let (cshape, codes) = &exp["dac.codes"];
    let frames = cshape[2];
    let f16w = DacModel::load_dir(&gpu, &tiny_dir(), Numerics::F16W, false).unwrap().decode_blocking(&gpu, &as_codes(codes), frames).unwrap();
    for numerics in [Numerics::Q8, Numerics::Q4] {
        let model = DacModel::load_dir(&gpu, &tiny_dir(), numerics, false).unwrap();
        assert_eq!(model.numerics, Numerics::F16W, "{numerics:?}");
        assert_eq!(model.decode_blocking(&gpu, &as_codes(codes), frames).unwrap(), f16w, "{numerics:?}");
    }
}

#[test]
fn dac_parity_encode_codes_identical() {
    let gpu = test_gpu();
    let exp = expected();
    let pcm = &exp["clone.prompt_pcm"].1;
    let (shape, want) = &exp["dac.encoded_codes"];
    let model = DacModel::load_dir(&gpu, &tiny_dir(), Numerics::F32, true).unwrap();
    assert_eq!(model.frames_for_samples(pcm.len()), shape[2]);
    let got = model.encode_blocking(&gpu, pcm).unwrap();
    assert_eq!(got, as_codes(want), "encoded codes differ from the reference");
    let f16 = DacModel::load_dir(&gpu, &tiny_dir(), Numerics::F16W, true).unwrap().encode_blocking(&gpu, pcm).unwrap();
    let same = f16.iter().zip(&got).filter(|(a, b)| a == b).count();
    println!("dac encode f16w: {same}/{} codes equal to the reference", got.len());
    // The first codebook sees the least error; later ones quantise residuals and may flip near-ties.
    let first_same = f16[..shape[2]].iter().zip(&got[..shape[2]]).filter(|(a, b)| a == b).count();
    assert!(first_same * 10 >= shape[2] * 9, "f16w first-codebook agreement {first_same}/{}", shape[2]);
}

/// A decoder width that is not a multiple of 2^blocks (36: blocks of 18, 9, 4 and 2 channels, floor division as in
/// the reference) decodes and encodes like HF transformers' DacModel (`tests/fixtures/dac-width-36`, made by its
/// `make.py`).
#[test]
fn dac_parity_decoder_width_not_a_multiple_of_2_pow_blocks() {
    let gpu = test_gpu();
    let dir = common::repo_root().join("tests/fixtures/dac-width-36");
    let exp = common::load_expected(&dir.join("expected.safetensors"));
    let cfg = DacConfig::from_json_str(&std::fs::read_to_string(dir.join("dac/config.json")).unwrap()).unwrap();
    assert_eq!(cfg.decoder_hidden, 36);
    let (cshape, codes) = &exp["dac.codes"];
    let frames = cshape[2];
    for (numerics, min_snr) in [(Numerics::F32, 60.0), (Numerics::F16W, 55.0)] {
        let model = DacModel::load_dir(&gpu, &dir.join("dac"), numerics, true).unwrap();
        let got = model.decode_blocking(&gpu, &as_codes(codes), frames).unwrap();
        let snr = common::snr_db(&got, &exp["dac.decoded"].1);
        println!("dac width 36 decode {}: SNR {snr:.1} dB", numerics.name());
        assert!(snr >= min_snr, "{}: SNR {snr:.1} dB < {min_snr} dB", numerics.name());
    }
    let model = DacModel::load_dir(&gpu, &dir.join("dac"), Numerics::F32, true).unwrap();
    let got = model.encode_blocking(&gpu, &exp["dac.prompt_pcm"].1).unwrap();
    assert_eq!(got, as_codes(&exp["dac.encoded_codes"].1), "encoded codes differ from the reference");
}

/// The three stored weight forms load to the same model: weight norm is folded with g per slice of
/// axis 0 (per input channel for ConvTranspose).
#[test]
fn dac_loader_folds_weight_norm_forms() {
    let gpu = test_gpu();
    let t = tiny();
    let exp = expected();
    let (cshape, codes) = &exp["dac.codes"];
    let frames = 12;
    let codes: Vec<u32> = (0..cshape[1]).flat_map(|q| as_codes(&codes[q * cshape[2]..q * cshape[2] + frames])).collect();
    let plain = load_tiny(&gpu, &t, Numerics::F32, false).decode_blocking(&gpu, &codes, frames).unwrap();
    let mut rng = Rng::new(5);
    for (g_suffix, v_suffix) in [("weight_g", "weight_v"), ("parametrizations.weight.original0", "parametrizations.weight.original1")] {
        // v = W scaled by a random positive factor per slice of axis 0, g = ‖W_slice‖: folding gives W back.
        let mut normed = Vec::new();
        for (n, s, d) in &t.tensors {
            match n.strip_suffix(".weight") {
                Some(base) if !n.contains("codebook") => {
                    let per = d.len() / s[0];
                    let mut g = Vec::new();
                    let mut v = Vec::new();
                    for row in d.chunks(per) {
                        g.push(row.iter().map(|x| x * x).sum::<f32>().sqrt());
                        let f = 0.5 + rng.uniform().abs();
                        v.extend(row.iter().map(|x| x * f));
                    }
                    normed.push((format!("{base}.{v_suffix}"), s.clone(), v));
                    normed.push((format!("{base}.{g_suffix}"), vec![s[0], 1, 1], g));
                }
                _ => normed.push((n.clone(), s.clone(), d.clone())),
            }
        }
        let model = load_tiny(&gpu, &Tiny { cfg: t.cfg.clone(), tensors: normed }, Numerics::F32, false);
        let got = model.decode_blocking(&gpu, &codes, frames).unwrap();
        let snr = common::snr_db(&got, &plain);
        assert!(snr > 100.0, "{g_suffix}: SNR {snr:.1} dB against the plain-weight model");
    }
}

#[test]
fn dac_loader_reports_missing_and_bad_tensors() {
    let gpu = test_gpu();
    let t = tiny();
    let mut b = DacModelBuilder::new(&gpu, &t.cfg, Numerics::F32, true).unwrap();
    for (n, s, d) in t.tensors.iter().filter(|(n, _, _)| n != "quantizer.quantizers.3.codebook.weight") {
        b.accept(n, s, d).unwrap();
    }
    let (n, s, d) = &t.tensors[0];
    assert!(matches!(b.accept(n, s, d), Err(DacError::DuplicateTensor { .. })));
    assert!(matches!(b.accept("decoder.conv1.weight", &[1, 2, 3], &[0.0; 6]), Err(DacError::WrongShape { .. })));
    assert!(matches!(b.accept("decoder.bogus.weight", &[1], &[0.0]), Err(DacError::UnexpectedTensor(_))));
    match b.finish() {
        Err(DacError::MissingTensor { name, count: 1 }) => assert_eq!(name, "quantizer.quantizers.3.codebook.weight"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("an incomplete checkpoint loaded"),
    }
    // A decode-only model needs no encoder tensors.
    let mut b = DacModelBuilder::new(&gpu, &t.cfg, Numerics::F32, false).unwrap();
    for (n, s, d) in t.tensors.iter().filter(|(n, _, _)| !n.starts_with("encoder.")) {
        b.accept(n, s, d).unwrap();
    }
    let model = b.finish().unwrap();
    assert!(matches!(model.encode_blocking(&gpu, &[0.0; 1024]), Err(DacError::NoEncoder)));
}

/// A decoder workspace decodes windows of different lengths with the same buffers, bit-identically to a
/// fresh one-shot decode, and checks its inputs.
#[test]
fn dac_decoder_windows_reuse_buffers() {
    let gpu = test_gpu();
    let t = tiny();
    let exp = expected();
    let (cshape, codes) = &exp["dac.codes"];
    let (n_q, all) = (cshape[1], cshape[2]);
    let model = load_tiny(&gpu, &t, Numerics::F16W, false);
    let window = |start: usize, len: usize| -> Vec<u32> {
        (0..n_q).flat_map(|q| as_codes(&codes[q * all + start..q * all + start + len])).collect()
    };
    let mut dec = model.decoder(&gpu, 20).unwrap();
    for (start, len) in [(0, 20), (5, 7), (20, 20), (3, 1), (5, 7)] {
        let got = pollster::block_on(dec.decode(&gpu, &window(start, len), len)).unwrap();
        let fresh = model.decode_blocking(&gpu, &window(start, len), len).unwrap();
        assert_eq!(got.len(), 512 * len);
        assert!(got == fresh, "window ({start}, {len}) differs from a one-shot decode");
    }
    assert!(matches!(
        pollster::block_on(dec.decode(&gpu, &window(0, 21), 21)),
        Err(DacError::TooManyFrames { frames: 21, max: 20 })
    ));
    let mut bad = window(0, 4);
    bad[6] = t.cfg.codebook_size as u32;
    assert!(matches!(pollster::block_on(dec.decode(&gpu, &bad, 4)), Err(DacError::BadCodes(_))));
    assert!(matches!(pollster::block_on(dec.decode(&gpu, &bad[1..], 4)), Err(DacError::BadCodes(_))));
}

/// `decoder_context` is the decoder's exact receptive field. Independently of how the crate traces it: an
/// impulse at one frame pushed through the decoder's layer shapes (CPU reference convolutions with all-ones
/// weights, so nothing cancels) reaches exactly the frames `decoder_context` says depend on it. And a window
/// decoded on the GPU with that context reproduces whole-sequence decoding of its middle frames.
#[test]
fn dac_decoder_context_is_the_exact_receptive_field() {
    let gpu = test_gpu();
    let t = tiny();
    let model = DacModel::load_dir(&gpu, &tiny_dir(), Numerics::F32, false).unwrap();
    let (left, right) = model.decoder_context();
    println!("decoder context: {left} frames left, {right} right");

    // Support of the decoder's output for an impulse at frame j: conv k7, then per upsampling ratio s a
    // transposed conv (kernel 2s, padding ⌈s/2⌉) and residual units (k7 at dilations 1, 3, 9), then conv k7.
    let (frames, j) = (48usize, 24usize);
    let ones = [1.0f32; 16];
    let zero = [0.0f32];
    let same = |x: &[f32], dil: usize| -> Vec<f32> {
        conv_ref::conv1d(x, x.len(), &ones[..7], &zero, 1, 1, 7, 1, dil, 3 * dil, None).iter().map(|&v| v as f32).collect()
    };
    let mut x = vec![0.0f32; frames];
    x[j] = 1.0;
    x = same(&x, 1);
    for &st in &t.cfg.upsampling_ratios {
        x = conv_ref::conv_transpose1d(&x, x.len(), &ones[..2 * st], &zero, 1, 1, 2 * st, st, st.div_ceil(2), None).iter().map(|&v| v as f32).collect();
        for dil in [1, 3, 9] {
            let r = same(&x, dil);
            x = x.iter().zip(&r).map(|(a, b)| a + b).collect();
        }
    }
    x = same(&x, 1);
    let hop = x.len() / frames;
    let first = x.iter().position(|&v| v != 0.0).unwrap() / hop;
    let last = x.iter().rposition(|&v| v != 0.0).unwrap() / hop;
    println!("an impulse at frame {j} reaches frames {first}..={last} (hop {hop})");
    // Frame f depends on frame f + right at most: the impulse reaches back to j − right, and on to j + left.
    assert_eq!((j - first, last - j), (right, left), "decoder_context disagrees with the impulse support");

    let (frames, n_q) = (60usize, 9usize);
    let mut rng = Rng::new(17);
    let codes: Vec<u32> = (0..n_q * frames).map(|_| rng.below(1024) as u32).collect();
    let whole = model.decode_blocking(&gpu, &codes, frames).unwrap();
    let (a, b) = (25, 33);
    let (ws, we) = (a - left, b + right);
    let cut: Vec<u32> = (0..n_q).flat_map(|q| codes[q * frames + ws..q * frames + we].iter().copied()).collect();
    let pcm = model.decode_blocking(&gpu, &cut, we - ws).unwrap();
    let got = &pcm[(a - ws) * hop..(b - ws) * hop];
    let diff = got.iter().zip(&whole[a * hop..]).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    println!("frames {a}..{b} from the window {ws}..{we}: max |diff| vs whole decoding {diff:.2e}");
    assert!(diff <= 1e-6, "window with the full context differs by {diff:.2e}");
}
