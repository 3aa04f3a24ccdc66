//! A GPU device lost in the middle of a generation (simulated with `Device::destroy`, as a driver reset or
//! the browser reclaiming the GPU would do it): the generation ends with the typed `GpuError::DeviceLost`,
//! never a panic (wgpu's default uncaptured-error handler panics) nor a hang, and a new device in the same
//! process works.
mod common;

use std::cell::Cell;

use common::{fixtures_dir, test_gpu};
use dia_webgpu::dac::DacModel;
use dia_webgpu::dia::{load_model_dir, DiaError, DiaModel, GenerateOptions, Session};
use dia_webgpu::gpu::{Gpu, GpuError};
use dia_webgpu::kernels::Numerics;
use dia_webgpu::pipeline::{PipelineError, Tts};

const TEXT: &str = "[S1] The device goes away in the middle of this. [S2] Does it?";

/// The fixture's dimensions with random weights: it speaks for as long as asked (the fixture itself ends
/// within a few dozen rows), so the loss surely comes before the end.
fn long_talker(gpu: &Gpu) -> (DiaModel, DacModel) {
    let dir = fixtures_dir();
    let cfg = dia_webgpu::config::DiaConfig::from_json_str(&std::fs::read_to_string(dir.join("dia/config.json")).unwrap()).unwrap();
    (DiaModel::random(gpu, &cfg, Numerics::F32, 11).unwrap(), DacModel::load_dir(gpu, &dir.join("dac"), Numerics::F32, false).unwrap())
}

fn opts(max_new_tokens: usize) -> GenerateOptions {
    GenerateOptions { max_new_tokens, ..GenerateOptions::default() }
}

/// A new device and model in the same process generate to the end.
fn fresh_device_generates() {
    let gpu = test_gpu();
    let dia = load_model_dir(&gpu, &fixtures_dir().join("dia"), Numerics::F32).unwrap();
    let g = pollster::block_on(dia.generate(&gpu, &[TEXT], None, &opts(40))).expect("a generation on a new device");
    assert!(g.rows > g.prefix_rows, "the new device generated no rows");
    gpu.check_lost().expect("the new device is not lost");
}

#[test]
fn device_lost_in_the_decoder_loop_is_a_typed_error_then_a_new_device_works() {
    let gpu = test_gpu();
    let (dia, _) = long_talker(&gpu);
    let o = opts(200);
    let mut session = Session::new(&gpu, &dia, &[TEXT], None, &o, false).unwrap();
    let prefix = session.prefix_rows();
    let destroyed_at = Cell::new(None);
    // The first generated rows reach the CPU with more steps in flight: lose the device there.
    let mut sink = |first_row: usize, rows: &[u32]| {
        if first_row >= prefix && !rows.is_empty() && destroyed_at.get().is_none() {
            destroyed_at.set(Some(first_row));
            gpu.device.destroy();
        }
    };
    let r = pollster::block_on(session.run(&o, &mut sink, || false));
    assert!(destroyed_at.get().is_some(), "the sink never saw a generated row");
    assert!(matches!(r, Err(DiaError::Gpu(GpuError::DeviceLost(_)))), "expected DeviceLost, got {r:?}");
    assert!(r.as_ref().unwrap_err().is_device_lost());
    println!("lost after row {:?}: {}", destroyed_at.get(), r.unwrap_err());
    assert!(matches!(gpu.check_lost(), Err(GpuError::DeviceLost(_))), "the old device reports itself lost");
    fresh_device_generates();
}

#[test]
fn device_lost_while_streaming_audio_is_a_typed_error_then_a_new_device_works() {
    // Lost right after the first audio chunk (the window waited for), and after the third (a window handed out
    // while later ones decode between the decoder's steps): decoder steps and codec work are both in flight.
    for lost_after in [1, 3] {
        lost_while_streaming(lost_after);
    }
}

fn lost_while_streaming(lost_after: usize) {
    let gpu = test_gpu();
    let (dia, dac) = long_talker(&gpu);
    let tts = Tts { gpu: &gpu, dia: &dia, dac: &dac };
    let chunks = Cell::new(0);
    let mut on_pcm = |_: &[f32]| {
        chunks.set(chunks.get() + 1);
        if chunks.get() == lost_after {
            gpu.device.destroy();
        }
    };
    let r = pollster::block_on(tts.speak(TEXT, None, &opts(300), &mut on_pcm, &|| false));
    assert!(chunks.get() >= lost_after, "only {} audio chunks before the end", chunks.get());
    match &r {
        Err(e) if e.is_device_lost() => println!("lost after {} chunk(s): {e}", chunks.get()),
        r => panic!("expected a DeviceLost error, got {r:?}"),
    }
    assert!(matches!(r, Err(PipelineError::Dia(DiaError::Gpu(GpuError::DeviceLost(_))) | PipelineError::Dac(dia_webgpu::dac::DacError::Gpu(GpuError::DeviceLost(_))))));
    assert_eq!(chunks.get(), lost_after, "audio kept coming after the device was lost");
    // The lost device refuses further work with the same error instead of hanging or panicking.
    let again = pollster::block_on(tts.speak(TEXT, None, &opts(40), &mut |_: &[f32]| {}, &|| false));
    assert!(again.as_ref().is_err_and(|e| e.is_device_lost()), "a generation on the lost device: {again:?}");
    fresh_device_generates();
}

/// `Gpu::destroy` reports the loss at once (wgpu's callback waits for the queue to drain), and nothing is
/// built or read on a lost device: typed errors, no panic (wgpu's `create_buffer_init` panics there).
#[test]
fn a_destroyed_device_refuses_work_with_device_lost() {
    let gpu = test_gpu();
    let dia = load_model_dir(&gpu, &fixtures_dir().join("dia"), Numerics::F32).unwrap();
    let buf = gpu.upload("before", &[1.0f32, 2.0, 3.0]);
    gpu.destroy();
    assert!(matches!(gpu.check_lost(), Err(GpuError::DeviceLost(_))), "the loss is reported at once");
    let after = gpu.upload("after", &[4.0f32; 64]);
    let read = gpu.read_f32_blocking(&buf);
    assert!(matches!(read, Err(GpuError::DeviceLost(_))), "{read:?}");
    assert!(matches!(gpu.read_f32_blocking(&after), Err(GpuError::DeviceLost(_))));
    let session = Session::new(&gpu, &dia, &[TEXT], None, &opts(10), false);
    assert!(session.as_ref().is_err_and(|e| e.is_device_lost()), "{:?}", session.err());
}
