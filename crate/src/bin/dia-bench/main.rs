//! `dia-bench`: speed of Dia + DAC on this machine's GPU with random weights (no checkpoint needed).
//!
//! ```text
//! dia-bench [--config full|tiny|<config.json>] [--numerics f32,f16w] [--steps 500] [--batch 1] [--json]
//! ```
//!
//! Per numerics mode: encoder time for 100 and 1000 bytes of text, decoder steps/s (greedy and sampled),
//! weight bytes streamed per second against two ceilings measured in the same run (a plain buffer copy and
//! the small-M `linear` kernel alone over the same matrices), DAC decode time per 10 s of audio and peak
//! GPU memory, and time to first audio through `pipeline::Tts::speak`: warm, and for the first generation after
//! loading (after `Tts::prepare`, whose compile time and pipeline-cache use it prints; `--no-prepare` to compare).
//! `--profile` also times parts of the
//! step graph on their own.

#[cfg(not(target_arch = "wasm32"))]
mod args;
#[cfg(not(target_arch = "wasm32"))]
mod measure;
#[cfg(not(target_arch = "wasm32"))]
mod memory;
#[cfg(not(target_arch = "wasm32"))]
mod profile;
#[cfg(not(target_arch = "wasm32"))]
mod quality;
#[cfg(not(target_arch = "wasm32"))]
mod report;
#[cfg(not(target_arch = "wasm32"))]
mod timing;

#[cfg(not(target_arch = "wasm32"))]
type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    if let Err(e) = measure::run() {
        eprintln!("dia-bench: {e}");
        std::process::exit(1);
    }
}
