#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dia_webgpu_fuzz::dia_config(data));
