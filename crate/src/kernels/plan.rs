//! How many workgroups the kernel families' shape choices aim for: the one place for the "fill the GPU" figures.
//! WebGPU does not tell how many multiprocessors an adapter has, so each family aims for a fixed count, tuned on an
//! H100 (132 SMs) with its own tiles; a family takes its largest tile that still gives that many workgroups.
//!
//! The other execution decisions are each made in one place too: tensor cores for `linear` by `linear::schedule`
//! (from `coop_m_min` rows, where `Gpu::tensor_cores`), for the codec by `conv::uses_tensor_cores`; f16 arithmetic
//! by `linear::small_m_arith` (the matrix–vector kernel) and `Gpu::f16_arithmetic` (the codec); subgroup
//! reductions by `Gpu::reduction`.

/// The tiled GEMM (plain kernels, M > 16): about 2 per SM, so every SM has a second workgroup to switch to at
/// barriers.
pub const TILED_GROUPS: u32 = 256;
/// The tensor-core GEMM of `linear`: about 1 per SM (its tiles hold 8 subgroups; taller tiles beat more workgroups).
pub const COOP_LINEAR_GROUPS: u32 = 128;
/// The tensor-core DAC convolutions: 2 per SM of a 132-SM H100 before the taller tile is taken.
pub const COOP_CONV_GROUPS: u32 = 264;
