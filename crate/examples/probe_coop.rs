//! Does the adapter expose cooperative matrices (tensor cores) through wgpu, and how fast is a plain
//! 128×128-tile f16 GEMM on them? Prints the configurations and TFLOP/s; checks the product against the CPU.
//! `cargo run --release --example probe_coop` (native; the feature is experimental and native-only in wgpu 30).
//! Written as the first step towards tensor-core kernels for the DAC and the encoder; not yet run on an adapter
//! that has the feature (lavapipe reports none).
#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    native::main()
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::time::Instant;

    fn gen_shader() -> String {
        use std::fmt::Write;
        // 256 threads = 8 subgroups of 32; the 128×128 tile is 4 (M) × 2 (N) subgroup blocks of 32×64,
        // i.e. 2×4 accumulators of 16×16 each; K advances 32 per stage.
        let mut s = String::from(
            "enable f16;\nenable wgpu_cooperative_matrix;\n\
struct P { m: u32, n: u32, k: u32, pad: u32 }\n\
@group(0) @binding(0) var<uniform> p: P;\n\
@group(0) @binding(1) var<storage, read> a: array<f32>;\n\
@group(0) @binding(2) var<storage, read> b: array<f16>;\n\
@group(0) @binding(3) var<storage, read_write> c: array<f32>;\n\
var<workgroup> sa: array<f16, 4096>;\n\
var<workgroup> sb: array<f16, 4096>;\n\
@compute @workgroup_size(256)\n\
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {\n\
    let m0 = wid.y * 128u;\n    let n0 = wid.x * 128u;\n    let sg = lid / 32u;\n    let sm = (sg / 2u) * 32u;\n    let sn = (sg % 2u) * 64u;\n",
        );
        for i in 0..2 {
            for j in 0..4 {
                let _ = writeln!(s, "    var acc_{i}_{j} = coop_mat16x16<f32, C>();");
            }
        }
        s.push_str("    for (var k0 = 0u; k0 < p.k; k0 += 32u) {\n");
        // 4096 elements of each tile, 16 per thread: element e = lid + 256·u → row e / 32, k e % 32.
        for u in 0..16 {
            let _ = writeln!(s, "        let ea_{u} = a[(m0 + {}u + lid / 32u) * p.k + k0 + lid % 32u];", u * 8);
            let _ = writeln!(s, "        let eb_{u} = b[(n0 + {}u + lid / 32u) * p.k + k0 + lid % 32u];", u * 8);
        }
        s.push_str("        workgroupBarrier();\n");
        for u in 0..16 {
            let _ = writeln!(s, "        sa[{}u + lid] = f16(ea_{u});", u * 256);
            let _ = writeln!(s, "        sb[{}u + lid] = eb_{u};", u * 256);
        }
        s.push_str("        workgroupBarrier();\n");
        for kk in 0..2 {
            for i in 0..2 {
                let _ = writeln!(
                    s,
                    "        let fa_{kk}_{i} = coopLoadT<coop_mat16x16<f16, A>>(&sa[(sm + {}u) * 32u + {}u], 32u);",
                    i * 16,
                    kk * 16
                );
            }
            for j in 0..4 {
                let _ = writeln!(
                    s,
                    "        let fb_{kk}_{j} = coopLoad<coop_mat16x16<f16, B>>(&sb[(sn + {}u) * 32u + {}u], 32u);",
                    j * 16,
                    kk * 16
                );
            }
            for i in 0..2 {
                for j in 0..4 {
                    let _ = writeln!(s, "        acc_{i}_{j} = coopMultiplyAdd(fa_{kk}_{i}, fb_{kk}_{j}, acc_{i}_{j});");
                }
            }
        }
        s.push_str("    }\n");
        for i in 0..2 {
            for j in 0..4 {
                let _ = writeln!(
                    s,
                    "    coopStoreT(acc_{i}_{j}, &c[(m0 + sm + {}u) * p.n + n0 + sn + {}u], p.n);",
                    i * 16,
                    j * 16
                );
            }
        }
        s.push_str("}\n");
        s
    }

    pub fn main() {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
            apply_limit_buckets: false,
        }))
        .expect("adapter");
        println!("adapter: {:?}", adapter.get_info().name);
        let want = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SHADER_F16;
        println!(
            "cooperative matrix feature: {}",
            adapter.features().contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
        );
        for p in adapter.cooperative_matrix_properties() {
            println!("  {}x{}x{} {:?} -> {:?}", p.m_size, p.n_size, p.k_size, p.ab_type, p.cr_type);
        }
        if !adapter.features().contains(want) {
            println!("no cooperative matrices here");
            return;
        }
        let mut limits = wgpu::Limits::default();
        limits.max_storage_buffer_binding_size = adapter.limits().max_storage_buffer_binding_size;
        limits.max_buffer_size = adapter.limits().max_buffer_size;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: None,
            required_features: want,
            required_limits: limits,
            // SAFETY: a probe; the experimental feature is exercised on purpose.
            experimental_features: unsafe { wgpu::ExperimentalFeatures::enabled() },
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .expect("device");
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: None,
            source: wgpu::ShaderSource::Wgsl(gen_shader().into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: None,
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        use wgpu::util::DeviceExt;
        for &(m, n, k, iters) in &[
            (256u32, 256u32, 96u32, 1u32),
            (4096, 4096, 4096, 20),
            (8192, 1024, 1024, 50),
            (1024, 3072, 1024, 50),
        ] {
            let mut seed = 1u64;
            let mut rnd = || {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            };
            let av: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
            let bv: Vec<half::f16> = (0..n * k).map(|_| half::f16::from_f32(rnd())).collect();
            let ab = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(&av),
                usage: wgpu::BufferUsages::STORAGE,
            });
            let bb = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(&bv),
                usage: wgpu::BufferUsages::STORAGE,
            });
            let cb = device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: (m * n * 4) as u64,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let ub = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(&[m, n, k, 0]),
                usage: wgpu::BufferUsages::UNIFORM,
            });
            let bg = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipeline.get_bind_group_layout(0),
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: ub.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: ab.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: bb.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 3,
                        resource: cb.as_entire_binding(),
                    },
                ],
            });
            let run = |times: u32| {
                let mut enc = device.create_command_encoder(&Default::default());
                {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    pass.set_pipeline(&pipeline);
                    pass.set_bind_group(0, &bg, &[]);
                    for _ in 0..times {
                        pass.dispatch_workgroups(n / 128, m / 128, 1);
                    }
                }
                queue.submit([enc.finish()]);
                device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
            };
            run(1);
            if iters == 1 {
                let rb = device.create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size: (m * n * 4) as u64,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                let mut enc = device.create_command_encoder(&Default::default());
                enc.copy_buffer_to_buffer(&cb, 0, &rb, 0, (m * n * 4) as u64);
                queue.submit([enc.finish()]);
                rb.slice(..).map_async(wgpu::MapMode::Read, |_| {});
                device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
                let got: Vec<f32> = bytemuck::cast_slice(&rb.slice(..).get_mapped_range().unwrap()).to_vec();
                let mut worst = 0.0f32;
                for i in 0..m as usize {
                    for j in 0..n as usize {
                        let want: f32 = (0..k as usize)
                            .map(|t| half::f16::from_f32(av[i * k as usize + t]).to_f32() * bv[j * k as usize + t].to_f32())
                            .sum();
                        worst = worst.max((got[i * n as usize + j] - want).abs());
                    }
                }
                println!("check {m}x{n}x{k}: max abs err {worst:.2e}");
                continue;
            }
            let t0 = Instant::now();
            run(iters);
            let s = t0.elapsed().as_secs_f64() / iters as f64;
            println!(
                "gemm {m}x{n}x{k}: {:.3} ms, {:.1} TFLOP/s",
                s * 1e3,
                2.0 * m as f64 * n as f64 * k as f64 / s / 1e12
            );
        }
    }
}
