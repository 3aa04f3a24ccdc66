//! Dia 1.6B text-to-speech and the DAC 44.1 kHz codec on WebGPU.
//!
//! Layers (dependencies point downwards only):
//! `config` → `weights` → `gpu` (and `quant`) → `kernels` → `dia` (→ `dac` → `pipeline`) → frontends.
pub mod config;
pub mod weights;
pub mod gpu;
pub mod quant;
pub mod kernels;
pub mod dia;
pub mod pipeline;
pub mod dac;
#[cfg(target_arch = "wasm32")]
pub mod wasm;
