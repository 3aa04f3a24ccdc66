//! CPU references of the codec's convolutions, in f64, in the reference's channels-first layout.
use dia_webgpu::kernels::conv::plain::{conv1d_len, conv_transpose1d_len};

/// Snake: x + sin²(αx) / (α + 1e-9).
pub fn snake(v: f64, a: f64) -> f64 {
    v + (a * v).sin().powi(2) / (a + 1e-9)
}

/// CPU Conv1d: x `[cin, len]`, w `[cout, cin, k]`.
#[allow(clippy::too_many_arguments)]
pub fn conv1d(
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
                        v = snake(v, a[ci] as f64);
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
pub fn conv_transpose1d(
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
                v = snake(v, a[ci] as f64);
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

/// A convolution's reference result with the kernels' epilogue fusions applied (residual add, then tanh).
pub fn conv_epilogue(conv: &[f64], y0: &[f32], accumulate: bool, tanh: bool) -> Vec<f32> {
    conv.iter()
        .zip(y0)
        .map(|(&c, &y)| {
            let v = if accumulate { c + y as f64 } else { c };
            (if tanh { v.tanh() } else { v }) as f32
        })
        .collect()
}
