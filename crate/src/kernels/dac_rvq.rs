//! `shaders/dac_rvq.wgsl`: the DAC residual vector quantiser — codes → latent (decode) and latent → codes
//! (encode, codebook by codebook). Small kernels: ~70 multiply-adds per latent value.
use crate::gpu::{grid_1d, specialize, Dispatch, Gpu, GpuBuffer, GpuError};
use super::{weight_decl, GpuMatrix, Numerics};

const SOURCE: &str = include_str!("../../../shaders/dac_rvq.wgsl");

/// Sizes of a residual vector quantiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RvqDims {
    pub n_codebooks: usize,
    pub codebook_size: usize,
    pub codebook_dim: usize,
    pub latent: usize,
}

/// Host tensors of all codebooks, weight norm already folded. Row-major layouts:
/// `codebooks` `[n, size, dim]`; `in_proj_w` `[n, dim, latent]`, `in_proj_b` `[n, dim]`;
/// `out_proj_w` `[n, latent, dim]`, `out_proj_b` `[n, latent]` (the 1×1 convs with the kernel axis dropped).
pub struct RvqTensors<'a> {
    pub codebooks: &'a [f32],
    pub in_proj_w: &'a [f32],
    pub in_proj_b: &'a [f32],
    pub out_proj_w: &'a [f32],
    pub out_proj_b: &'a [f32],
}

/// The quantiser on the GPU. Codebooks stay f32 in every numerics mode (0.3 MB); the projections follow
/// `numerics`.
pub struct RvqWeights {
    pub dims: RvqDims,
    /// Raw entries `[n, size, dim]` (what decode sums).
    pub codebooks: GpuBuffer,
    /// L2-normalised entries (eps 1e-12), what encode compares against.
    pub codebooks_unit: GpuBuffer,
    /// `[n·dim, latent]`: codebook i's in_proj in rows i·dim…
    pub in_proj: GpuMatrix,
    pub in_bias: GpuBuffer,
    /// `[latent, n·dim]`: codebook i's out_proj in columns i·dim…
    pub out_proj: GpuMatrix,
    /// `[n, latent]`.
    pub out_bias: GpuBuffer,
}

impl RvqWeights {
    pub fn upload(gpu: &Gpu, dims: RvqDims, t: &RvqTensors, numerics: Numerics) -> Result<RvqWeights, GpuError> {
        let RvqDims { n_codebooks: n, codebook_size: size, codebook_dim: dim, latent } = dims;
        assert_eq!(t.codebooks.len(), n * size * dim, "codebooks length");
        assert_eq!(t.in_proj_w.len(), n * dim * latent, "in_proj weight length");
        assert_eq!(t.in_proj_b.len(), n * dim, "in_proj bias length");
        assert_eq!(t.out_proj_w.len(), n * latent * dim, "out_proj weight length");
        assert_eq!(t.out_proj_b.len(), n * latent, "out_proj bias length");
        let unit: Vec<f32> = t
            .codebooks
            .chunks(dim)
            .flat_map(|e| {
                let norm = e.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                e.iter().map(move |v| v / norm)
            })
            .collect();
        let mut out_cat = vec![0.0f32; latent * n * dim];
        for i in 0..n {
            for co in 0..latent {
                for d in 0..dim {
                    out_cat[co * n * dim + i * dim + d] = t.out_proj_w[(i * latent + co) * dim + d];
                }
            }
        }
        Ok(RvqWeights {
            dims,
            codebooks: gpu.upload("rvq.codebooks", t.codebooks),
            codebooks_unit: gpu.upload("rvq.codebooks_unit", &unit),
            in_proj: GpuMatrix::upload(gpu, "rvq.in_proj", t.in_proj_w, n * dim, latent, numerics)?,
            in_bias: gpu.upload("rvq.in_bias", t.in_proj_b),
            out_proj: GpuMatrix::upload(gpu, "rvq.out_proj", &out_cat, latent, n * dim, numerics)?,
            out_bias: gpu.upload("rvq.out_bias", t.out_proj_b),
        })
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct RvqParams {
    latent: u32,
    frames: u32,
    cb_size: u32,
    q_first: u32,
    q_count: u32,
    subtract: u32,
    w_stride: u32,
    grid_x: u32,
}

fn pipeline(gpu: &Gpu, rvq: &RvqWeights, numerics: Numerics, entry: &str) -> std::sync::Arc<wgpu::ComputePipeline> {
    let dim = rvq.dims.codebook_dim;
    let key = format!("dac_rvq:{entry}:{}:d{dim}", numerics.name());
    gpu.pipeline(&key, entry, || {
        specialize(SOURCE, &[("WEIGHT_DECL", weight_decl(numerics, 3)), ("CB_DIM", dim.to_string())])
    })
}

/// z `[latent, frames]` = Σ_i out_proj_i(codebook_i[codes[i, t]]); codes u32 `[n_codebooks, frames]`
/// (each < codebook_size; larger values are clamped, so validate them on the host).
pub fn rvq_decode(gpu: &Gpu, codes: &GpuBuffer, rvq: &RvqWeights, z: &GpuBuffer, frames: u32) -> Dispatch {
    project_out(gpu, codes, rvq, z, frames, 0, rvq.dims.n_codebooks as u32, false)
}

#[allow(clippy::too_many_arguments)]
fn project_out(
    gpu: &Gpu,
    codes: &GpuBuffer,
    rvq: &RvqWeights,
    act: &GpuBuffer,
    frames: u32,
    q_first: u32,
    q_count: u32,
    subtract: bool,
) -> Dispatch {
    let pipe = pipeline(gpu, rvq, rvq.out_proj.numerics, "project_out");
    let total = rvq.dims.latent as u32 * frames;
    let grid = grid_1d(total.div_ceil(256));
    let params = RvqParams {
        latent: rvq.dims.latent as u32,
        frames,
        cb_size: rvq.dims.codebook_size as u32,
        q_first,
        q_count,
        subtract: subtract as u32,
        w_stride: rvq.out_proj.row_stride_words(),
        grid_x: grid[0],
    };
    let workgroups = if total == 0 { [0, 0, 0] } else { grid };
    gpu.dispatch(&pipe, &params, &[codes, &rvq.codebooks, &rvq.out_proj.data, &rvq.out_bias, act], workgroups)
}

/// Residual VQ encode of `residual` `[latent, frames]` into `codes` `[n_codebooks, frames]`: per codebook i,
/// code = argmax_j cos(in_proj_i(r), codebook_i[j]) (first index on ties), then r −= out_proj_i(codebook_i[code]).
/// `residual` is consumed (it ends as the quantisation error). Two dispatches per codebook, in order.
pub fn rvq_encode(gpu: &Gpu, residual: &GpuBuffer, rvq: &RvqWeights, codes: &GpuBuffer, frames: u32) -> Vec<Dispatch> {
    let assign = pipeline(gpu, rvq, rvq.in_proj.numerics, "assign");
    let grid = grid_1d(frames);
    let mut out = Vec::with_capacity(2 * rvq.dims.n_codebooks);
    for i in 0..rvq.dims.n_codebooks as u32 {
        let params = RvqParams {
            latent: rvq.dims.latent as u32,
            frames,
            cb_size: rvq.dims.codebook_size as u32,
            q_first: i,
            q_count: 1,
            subtract: 0,
            w_stride: rvq.in_proj.row_stride_words(),
            grid_x: grid[0],
        };
        let workgroups = if frames == 0 { [0, 0, 0] } else { grid };
        out.push(gpu.dispatch(
            &assign,
            &params,
            &[codes, &rvq.codebooks_unit, &rvq.in_proj.data, &rvq.in_bias, residual],
            workgroups,
        ));
        out.push(project_out(gpu, codes, rvq, residual, frames, i, 1, true));
    }
    out
}
