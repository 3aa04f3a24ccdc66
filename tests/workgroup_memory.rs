//! Workgroup memory without wgpu's zeroing (what software OpenGL gets, `gpu::zeroes_workgroup_memory`): no kernel
//! reads workgroup memory it has not written. On this adapter a workgroup's memory keeps what the previous
//! workgroup of the dispatch left there, so a kernel that relied on the zeroing would read stale values and speak
//! differently.
#![cfg(not(target_arch = "wasm32"))]
mod common;

use common::{fixtures_dir, test_gpu};
use dia_webgpu::dac::DacModel;
use dia_webgpu::dia::{DiaModel, GenerateOptions};
use dia_webgpu::gpu::Gpu;
use dia_webgpu::kernels::Numerics;
use dia_webgpu::pipeline::{Audio, Tts};

/// Workgroups of the probe and the words each one reads and writes (the adapters' minimum of 16 KiB).
const GROUPS: u32 = 64;
const WORDS: u32 = 4096;

/// Each workgroup stores what its workgroup memory holds before writing it, then fills it with 1 + its index.
const PROBE: &str = r#"
@group(0) @binding(0) var<uniform> groups: vec4<u32>;
@group(0) @binding(1) var<storage, read_write> found: array<f32>;
var<workgroup> mem: array<f32, 4096>;

@compute @workgroup_size(256)
fn probe(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    if wid.x >= groups.x {
        return;
    }
    for (var i = lid; i < 4096u; i += 256u) {
        found[wid.x * 4096u + i] = mem[i];
    }
    workgroupBarrier();
    for (var i = lid; i < 4096u; i += 256u) {
        mem[i] = f32(wid.x + 1u);
    }
}
"#;

/// What each workgroup of the probe found in its workgroup memory.
fn probe(gpu: &Gpu) -> Vec<f32> {
    let found = gpu.buffer("found", (GROUPS * WORDS) as u64 * 4);
    let pipeline = gpu.pipeline("workgroup memory probe", "probe", || PROBE.to_string());
    gpu.run(&[&gpu.dispatch(&pipeline, &[GROUPS, 0, 0, 0], &[&found], [GROUPS, 1, 1])]);
    gpu.read_f32_blocking(&found).unwrap()
}

/// The premise of the test below: without the zeroing a workgroup finds what an earlier one of the same dispatch
/// left (the adapter runs more workgroups than it has threads, each thread reusing its memory); with it, zeros.
#[test]
fn stale_workgroup_memory_shows_without_the_zeroing() {
    let zeroed = probe(&test_gpu().with_workgroup_zeroing(true));
    assert!(zeroed.iter().all(|&v| v == 0.0), "wgpu's zeroing leaves zeros");
    let stale = probe(&test_gpu().with_workgroup_zeroing(false));
    let left_over = stale.iter().filter(|&&v| v >= 1.0 && v <= GROUPS as f32 && v.fract() == 0.0).count();
    assert!(left_over > 0, "without the zeroing some workgroup should find an earlier one's values (if this adapter zeroes anyway, the test below proves nothing here)");
}

/// Text (+ voice prompt) to PCM on the fixture's dimensions (random weights, sampled, f32 and f16 weights) with and
/// without the zeroing: the same codes and bit-identical samples. The texts give encoder lengths for each linear
/// schedule (matrix–vector, row blocks, tiled), and the prompt runs the codec's encoder: every kernel `dia-tts` runs.
#[test]
fn speech_is_bit_identical_without_the_zeroing() {
    let dir = fixtures_dir();
    let cfg = dia_webgpu::config::DiaConfig::from_json_str(&std::fs::read_to_string(dir.join("dia/config.json")).unwrap()).unwrap();
    // 0.1 s of a 441 Hz tone at the codec's rate.
    let tone = Audio { samples: (0..4410).map(|i| 0.5 * (2.0 * std::f32::consts::PI * 441.0 * i as f32 / 44_100.0).sin()).collect(), sample_rate: 44_100 };
    let cases = [
        ("[S1] Hi.", None),
        ("[S1] Hello there, GPU.", None),
        ("[S1] Hello from the GPU. [S2] Hi!", None),
        ("[S1] A longer line, so that the encoder runs the tiled kernel. [S2] Yes.", None),
        ("[S1] Hello from the GPU.", Some(&tone)),
    ];
    for numerics in [Numerics::F16W, Numerics::F32] {
        let speak = |zeroing: bool| {
            let gpu = test_gpu().with_workgroup_zeroing(zeroing);
            let dia = DiaModel::random(&gpu, &cfg, numerics, 7).unwrap();
            let dac = DacModel::load_dir(&gpu, &dir.join("dac"), numerics, true).unwrap();
            let tts = Tts { gpu: &gpu, dia: &dia, dac: &dac };
            let mut out = Vec::new();
            for (i, (text, prompt)) in cases.iter().enumerate() {
                let mut opts = GenerateOptions { max_new_tokens: 40, ..GenerateOptions::default() };
                opts.sampling.seed = i as u64;
                let mut pcm = Vec::new();
                let speech = pollster::block_on(tts.speak(text, *prompt, &opts, &mut |c: &[f32]| pcm.extend_from_slice(c), &|| false)).unwrap();
                out.push((speech.generation.codes.clone(), pcm));
            }
            out
        };
        let (zeroed, stale) = (speak(true), speak(false));
        for (i, ((codes_z, pcm_z), (codes_s, pcm_s))) in zeroed.iter().zip(&stale).enumerate() {
            let first = codes_z.iter().zip(codes_s).position(|(a, b)| a != b);
            assert!(codes_z == codes_s, "{numerics:?} case {i}: codes differ without the zeroing (first at {first:?})");
            assert!(!pcm_z.is_empty(), "{numerics:?} case {i}: no audio");
            let same = pcm_z.len() == pcm_s.len() && pcm_z.iter().zip(pcm_s).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{numerics:?} case {i}: samples differ without the zeroing");
        }
    }
}
