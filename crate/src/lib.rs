//! Dia 1.6B text-to-speech and the DAC 44.1 kHz codec on WebGPU.
//!
//! Layers (dependencies point downwards only):
//! `config` → `weights` → `gpu` (and `quant`) → `kernels` → `dia` (→ `dac` → `pipeline`) → frontends;
//! `random` (random data and models for tests and benchmarks) beside `pipeline`.
pub mod config;
pub mod weights;
pub mod gpu;
pub mod quant;
pub mod kernels;
pub mod dia;
pub mod pipeline;
pub mod dac;
pub mod random;
#[doc(hidden)]
#[cfg(not(target_arch = "wasm32"))]
pub mod naga_check;
#[cfg(target_arch = "wasm32")]
pub mod wasm;
