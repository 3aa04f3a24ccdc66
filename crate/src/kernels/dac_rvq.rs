//! `shaders/dac_rvq.wgsl`: the DAC residual vector quantiser — codes → latent (decode) and latent → codes
//! (encode, codebook by codebook). Small kernels: ~70 multiply-adds per latent value.
use crate::gpu::{grid_1d, specialize, Dispatch, Gpu, GpuBuffer, GpuError, KernelVariant};
use super::conv::plain::{empty_matrix, write_matrix_rows};
use super::{weight_decl, GpuMatrix, Numerics, WeightFormat};

const SOURCE: &str = include_str!("../../../shaders/dac_rvq.wgsl");

/// Sizes of a residual vector quantiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RvqDims {
    pub n_codebooks: usize,
    pub codebook_size: usize,
    pub codebook_dim: usize,
    pub latent: usize,
}

/// The quantiser on the GPU. Codebooks stay f32 in every numerics mode (0.3 MB for DAC); the projections
/// follow `numerics`. Filled codebook by codebook with the `set_*` methods (or all at once by `upload`).
pub struct RvqWeights {
    pub dims: RvqDims,
    /// Raw entries `[n, size, dim]` (what decode sums).
    pub codebooks: GpuBuffer,
    /// L2-normalised entries (eps 1e-12), what encode compares against.
    pub codebooks_unit: GpuBuffer,
    /// `[n·dim, latent]`: codebook i's in_proj (1×1 conv latent → dim) in rows i·dim…
    pub in_proj: GpuMatrix,
    /// `[n, dim]`.
    pub in_bias: GpuBuffer,
    /// `[n·latent, dim]`: codebook i's out_proj (1×1 conv dim → latent) in rows i·latent…
    pub out_proj: GpuMatrix,
    /// `[n, latent]`.
    pub out_bias: GpuBuffer,
}

/// Host tensors of all codebooks, weight norm already folded, row-major: `codebooks` `[n, size, dim]`;
/// `in_proj_w` `[n, dim, latent]`, `in_proj_b` `[n, dim]`; `out_proj_w` `[n, latent, dim]`, `out_proj_b`
/// `[n, latent]` (the 1×1 convs with their kernel axis dropped).
pub struct RvqTensors<'a> {
    pub codebooks: &'a [f32],
    pub in_proj_w: &'a [f32],
    pub in_proj_b: &'a [f32],
    pub out_proj_w: &'a [f32],
    pub out_proj_b: &'a [f32],
}

fn write_at(gpu: &Gpu, buf: &GpuBuffer, index: usize, len: usize, data: &[f32]) {
    assert_eq!(data.len(), len, "rvq tensor length");
    gpu.write(&buf.slice(index as u64 * len as u64 * 4, len as u64 * 4), data);
}

impl RvqWeights {
    /// All-zero weights to be filled with the `set_*` methods.
    pub fn allocate(gpu: &Gpu, dims: RvqDims, numerics: Numerics) -> Result<RvqWeights, GpuError> {
        let RvqDims { n_codebooks: n, codebook_size: size, codebook_dim: dim, latent } = dims;
        let entries = (n * size * dim * 4) as u64;
        Ok(RvqWeights {
            dims,
            codebooks: gpu.buffer("rvq.codebooks", entries),
            codebooks_unit: gpu.buffer("rvq.codebooks_unit", entries),
            in_proj: empty_matrix(gpu, "rvq.in_proj", n * dim, latent, numerics)?,
            in_bias: gpu.buffer("rvq.in_bias", (n * dim * 4) as u64),
            out_proj: empty_matrix(gpu, "rvq.out_proj", n * latent, dim, numerics)?,
            out_bias: gpu.buffer("rvq.out_bias", (n * latent * 4) as u64),
        })
    }

    pub fn upload(gpu: &Gpu, dims: RvqDims, t: &RvqTensors, numerics: Numerics) -> Result<RvqWeights, GpuError> {
        let r = RvqWeights::allocate(gpu, dims, numerics)?;
        let RvqDims { n_codebooks: n, codebook_size: size, codebook_dim: dim, latent } = dims;
        for i in 0..n {
            r.set_codebook(gpu, i, &t.codebooks[i * size * dim..(i + 1) * size * dim]);
            r.set_in_proj_weight(gpu, i, &t.in_proj_w[i * dim * latent..(i + 1) * dim * latent]);
            r.set_in_proj_bias(gpu, i, &t.in_proj_b[i * dim..(i + 1) * dim]);
            r.set_out_proj_weight(gpu, i, &t.out_proj_w[i * latent * dim..(i + 1) * latent * dim]);
            r.set_out_proj_bias(gpu, i, &t.out_proj_b[i * latent..(i + 1) * latent]);
        }
        Ok(r)
    }

    /// Codebook i's entries `[size, dim]`.
    pub fn set_codebook(&self, gpu: &Gpu, i: usize, entries: &[f32]) {
        let dim = self.dims.codebook_dim;
        let len = self.dims.codebook_size * dim;
        let unit: Vec<f32> = entries
            .chunks(dim)
            .flat_map(|e| {
                let norm = e.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                e.iter().map(move |v| v / norm)
            })
            .collect();
        write_at(gpu, &self.codebooks, i, len, entries);
        write_at(gpu, &self.codebooks_unit, i, len, &unit);
    }

    /// Codebook i's in_proj weight `[dim, latent]`.
    pub fn set_in_proj_weight(&self, gpu: &Gpu, i: usize, w: &[f32]) {
        let dim = self.dims.codebook_dim;
        write_matrix_rows(gpu, &self.in_proj, i * dim, w, dim);
    }

    pub fn set_in_proj_bias(&self, gpu: &Gpu, i: usize, b: &[f32]) {
        write_at(gpu, &self.in_bias, i, self.dims.codebook_dim, b);
    }

    /// Codebook i's out_proj weight `[latent, dim]`.
    pub fn set_out_proj_weight(&self, gpu: &Gpu, i: usize, w: &[f32]) {
        let latent = self.dims.latent;
        write_matrix_rows(gpu, &self.out_proj, i * latent, w, latent);
    }

    pub fn set_out_proj_bias(&self, gpu: &Gpu, i: usize, b: &[f32]) {
        write_at(gpu, &self.out_bias, i, self.dims.latent, b);
    }
}

wgsl_params! {
    /// Uniform parameters of the residual vector quantizer kernels.
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
}

fn pipeline(gpu: &Gpu, rvq: &RvqWeights, format: WeightFormat, entry: RvqEntry) -> std::sync::Arc<wgpu::ComputePipeline> {
    gpu.variant_pipeline(RvqVariant { entry, format, codebook_dim: rvq.dims.codebook_dim })
}

/// An entry point of `shaders/dac_rvq.wgsl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RvqEntry {
    /// Encoding: the nearest code of each frame, and the residual's update.
    Assign,
    /// Decoding: the chosen codes' projections summed into the latent.
    ProjectOut,
}

/// One compiled specialisation of the codebook shader: the WGSL generator's input and the pipeline-cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RvqVariant {
    pub entry: RvqEntry,
    /// How the projection weights this entry point reads are stored.
    pub format: WeightFormat,
    pub codebook_dim: usize,
}

impl KernelVariant for RvqVariant {
    fn entry_point(&self) -> &'static str {
        match self.entry {
            RvqEntry::Assign => "assign",
            RvqEntry::ProjectOut => "project_out",
        }
    }

    fn source(&self) -> String {
        specialize(SOURCE, &[("PARAMS", RvqParams::wgsl()), ("WEIGHT_DECL", weight_decl(self.format, 3)), ("CB_DIM", self.codebook_dim.to_string())])
    }
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
    let pipe = pipeline(gpu, rvq, rvq.out_proj.format, RvqEntry::ProjectOut);
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
    let assign = pipeline(gpu, rvq, rvq.in_proj.format, RvqEntry::Assign);
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
