//! Tensor cores through wgpu 30's experimental cooperative matrices: a 128×128-tile GEMM
//! C[M,N] (f32) = A[M,K] (f32 or f16, staged as f16) × B[N,K]ᵀ (f16, row-major like our weights), f32 accumulators.
//!
//! `cargo run --release --example probe_coop -- [--naga-only] [--dump <dir>] [--variant <name>]`
//! - `--naga-only`: no GPU; translates the shaders WGSL → SPIR-V on the host with the options wgpu-hal's Vulkan
//!   backend uses, shows that the first probe's shader hits naga 30.0.1's "Expression [..] is not cached!" panic
//!   and that the kernel here does not.
//! - otherwise: lists the adapter's cooperative-matrix configurations, checks every variant against a CPU
//!   reference and times it (median of several batches). Without the feature it says so and exits 0.
//! - `--dump <dir>`: writes each variant's WGSL to `<dir>/<variant>.wgsl`.
//!
//! The naga bug: the WGSL front end lowers `coopStore`/`coopStoreT` by pushing the `CooperativeStore` statement
//! without first flushing its expression emitter, so any argument that needs an `Emit` (a load of a `var`, a
//! uniform field like `p.n`, index arithmetic) is emitted *after* the store, and the SPIR-V writer finds it
//! uncached. Arguments that are already evaluated (`let` names, literals) are fine, so every `coopStore` here
//! takes `let`-bound target, index and stride.
#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    native::main()
}

/// Shader generation, and the host-side naga translation (the library's `naga_check`).
#[cfg(not(target_arch = "wasm32"))]
pub mod coop {
    use std::fmt::Write;

    /// Output tile per 256-invocation workgroup (8 subgroups of 32, each 32×64 = 2×4 accumulators of 16×16).
    pub const TILE_M: u32 = 128;
    pub const TILE_N: u32 = 128;
    /// f32 elements the C buffer needs past M·N: 16×16 blocks outside C are stored there (the store cannot be
    /// skipped: cooperative ops must stay in uniform control flow, and the block position is per subgroup).
    pub const C_SLACK: u32 = 256;

    /// One way of staging K through workgroup memory.
    #[derive(Clone, Copy, Debug)]
    pub struct GemmConfig {
        /// K per stage (16 or 32).
        pub bk: u32,
        /// f16 padding per staged row; 8 makes the 16×16 fragment loads bank-conflict free.
        pub pad: u32,
        /// 1: registers prefetch the next stage, two barriers per stage; 2: double-buffered, one barrier.
        pub stages: u32,
        /// A stored as f16 (else f32, converted while staging).
        pub a_f16: bool,
    }

    impl GemmConfig {
        pub fn name(&self) -> String {
            format!(
                "bk{}-pad{}-s{}-a{}",
                self.bk,
                self.pad,
                self.stages,
                if self.a_f16 { "f16" } else { "f32" }
            )
        }

        /// Bytes of workgroup memory (the limit `max_compute_workgroup_storage_size` must allow).
        pub fn workgroup_bytes(&self) -> u32 {
            2 * self.stages * TILE_M.max(TILE_N) * (self.bk + self.pad) * 2
        }
    }

    /// The variants the probe measures: ≤ 32 KiB of workgroup memory, plus one 40 KiB variant
    /// (padded and double-buffered) run only where the adapter allows it.
    pub fn variants() -> Vec<GemmConfig> {
        let c = |bk, pad, stages, a_f16| GemmConfig { bk, pad, stages, a_f16 };
        vec![
            c(32, 8, 1, false), // 20 KiB
            c(32, 0, 2, false), // 32 KiB
            c(16, 8, 2, false), // 24 KiB
            c(32, 8, 2, false), // 40 KiB
            c(32, 8, 1, true),  // 20 KiB
        ]
    }

    /// The GEMM. Bindings: 0 uniform `{m, n, k, 0}`, 1 A, 2 B, 3 C (M·N + `C_SLACK` f32).
    /// M, N, K multiples of 16; dispatch `(ceil(N/128), ceil(M/128), 1)`.
    /// Straight-line code (named values, no per-thread arrays) apart from the loop over K stages.
    pub fn gemm_shader(cfg: &GemmConfig) -> String {
        assert!(cfg.bk == 16 || cfg.bk == 32, "bk must be 16 or 32");
        assert!(cfg.stages == 1 || cfg.stages == 2, "stages must be 1 or 2");
        let lds = cfg.bk + cfg.pad; // staged row stride in f16
        let buf = TILE_M * lds; // one stage of one operand
        let qv = cfg.bk / 4; // vec4s per staged row
        let rstep = 256 / qv; // rows one pass of 256 invocations covers
        let passes = TILE_M / rstep; // vec4 loads per invocation per operand per stage
        let a_ty = if cfg.a_f16 { "vec4<f16>" } else { "vec4<f32>" };
        let mut s = String::new();
        let _ = write!(
            s,
            "enable f16;
enable wgpu_cooperative_matrix;
struct P {{ m: u32, n: u32, k: u32, pad: u32 }}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> a: array<{a_ty}>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f16>>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
var<workgroup> sa: array<f16, {n}>;
var<workgroup> sb: array<f16, {n}>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {{
    let m0 = wid.y * {TILE_M}u;
    let n0 = wid.x * {TILE_N}u;
    let kv = p.k / 4u;
    // subgroup sg (32 invocations, consecutive on NVIDIA) owns rows sm..sm+32, columns sn..sn+64 of the tile
    let sg = lid / 32u;
    let sm = (sg / 2u) * 32u;
    let sn = (sg % 2u) * 64u;
    let q = lid % {qv}u;
    let r = lid / {qv}u;
    let nk = (p.k + {bk1}u) / {bk}u;
",
            n = cfg.stages * buf,
            bk = cfg.bk,
            bk1 = cfg.bk - 1,
        );
        // Per pass u: the global vec4 index of this invocation's A and B row (rows past M/N clamped: they only feed
        // accumulators that are never stored into C) and its offset in the staged tile.
        for u in 0..passes {
            let _ = writeln!(s, "    let ga{u} = min(m0 + r + {}u, p.m - 1u) * kv + q;", u * rstep);
            let _ = writeln!(s, "    let gb{u} = min(n0 + r + {}u, p.n - 1u) * kv + q;", u * rstep);
            let _ = writeln!(s, "    let so{u} = (r + {}u) * {lds}u + q * 4u;", u * rstep);
        }
        for i in 0..2 {
            for j in 0..4 {
                let _ = writeln!(s, "    var acc{i}{j} = coop_mat16x16<f32, C>();");
            }
        }
        // Global loads of the stage starting at K offset `k`, into named registers with suffix `tag`.
        let load = |s: &mut String, tag: &str, k: &str| {
            // K is a multiple of 16, so with bk = 32 the last stage may be half outside: zero it.
            let masked = cfg.bk > 16;
            if masked {
                let _ = writeln!(s, "        let kin{tag} = {k} + q * 4u < p.k;");
            }
            for u in 0..passes {
                for (op, g, ty) in [("a", "ga", a_ty), ("b", "gb", "vec4<f16>")] {
                    if masked {
                        let _ = writeln!(
                            s,
                            "        let x{op}{u}{tag} = select({ty}(), {op}[select(0u, {g}{u} + {k} / 4u, kin{tag})], kin{tag});"
                        );
                    } else {
                        let _ = writeln!(s, "        let x{op}{u}{tag} = {op}[{g}{u} + {k} / 4u];");
                    }
                }
            }
        };
        // Staging stores of registers `tag` into the stage at f16 offset `base`.
        let stage = |s: &mut String, tag: &str, base: &str| {
            for u in 0..passes {
                let conv = if cfg.a_f16 {
                    format!("xa{u}{tag}")
                } else {
                    format!("vec4<f16>(xa{u}{tag})")
                };
                let _ = writeln!(s, "        let ha{u}{tag} = {conv};");
                for (e, comp) in ["x", "y", "z", "w"].iter().enumerate() {
                    let _ = writeln!(s, "        sa[{base} + so{u} + {e}u] = ha{u}{tag}.{comp};");
                    let _ = writeln!(s, "        sb[{base} + so{u} + {e}u] = xb{u}{tag}.{comp};");
                }
            }
        };
        // The tensor-core work on the stage at f16 offset `base`.
        let compute = |s: &mut String, base: &str| {
            for kk in 0..cfg.bk / 16 {
                for i in 0..2 {
                    let _ = writeln!(
                        s,
                        "        let fa{kk}{i} = coopLoadT<coop_mat16x16<f16, A>>(&sa[{base} + (sm + {}u) * {lds}u + {}u], {lds}u);",
                        i * 16,
                        kk * 16
                    );
                }
                for j in 0..4 {
                    let _ = writeln!(
                        s,
                        "        let fb{kk}{j} = coopLoad<coop_mat16x16<f16, B>>(&sb[{base} + (sn + {}u) * {lds}u + {}u], {lds}u);",
                        j * 16,
                        kk * 16
                    );
                }
                for i in 0..2 {
                    for j in 0..4 {
                        let _ = writeln!(
                            s,
                            "        acc{i}{j} = coopMultiplyAdd(fa{kk}{i}, fb{kk}{j}, acc{i}{j});"
                        );
                    }
                }
            }
        };
        s.push_str("    {\n");
        load(&mut s, "p", "0u");
        stage(&mut s, "p", "0u");
        s.push_str("    }\n    workgroupBarrier();\n    for (var t = 0u; t < nk; t++) {\n");
        // The next stage's loads go out before this stage's matrix work (the last iteration reloads itself).
        let _ = writeln!(s, "        let kn = min(t + 1u, nk - 1u) * {}u;", cfg.bk);
        load(&mut s, "n", "kn");
        if cfg.stages == 2 {
            let _ = writeln!(s, "        let cur = (t % 2u) * {buf}u;");
            let _ = writeln!(s, "        let nxt = {buf}u - cur;");
            compute(&mut s, "cur");
            stage(&mut s, "n", "nxt");
        } else {
            compute(&mut s, "0u");
            s.push_str("        workgroupBarrier();\n");
            stage(&mut s, "n", "0u");
        }
        s.push_str("        workgroupBarrier();\n    }\n");
        // Blocks outside C go to the slack past M·N; target, index and stride are `let`s (see the module docs).
        for i in 0..2 {
            for j in 0..4 {
                let _ = writeln!(s, "    let cr{i}{j} = m0 + sm + {}u;", i * 16);
                let _ = writeln!(s, "    let cc{i}{j} = n0 + sn + {}u;", j * 16);
                let _ = writeln!(s, "    let cin{i}{j} = (cr{i}{j} < p.m) & (cc{i}{j} < p.n);");
                let _ = writeln!(
                    s,
                    "    let ci{i}{j} = select(p.m * p.n, cr{i}{j} * p.n + cc{i}{j}, cin{i}{j});"
                );
                let _ = writeln!(s, "    let cs{i}{j} = select(16u, p.n, cin{i}{j});");
                let _ = writeln!(s, "    let cv{i}{j} = acc{i}{j};");
                let _ = writeln!(s, "    coopStoreT(cv{i}{j}, &c[ci{i}{j}], cs{i}{j});");
            }
        }
        s.push_str("}\n");
        s
    }

    /// The first probe's kernel, kept because it reproduces the naga panic: `coopStoreT(acc_i_j, &c[...], p.n)`
    /// with a `var` target, an inline index and a uniform-field stride.
    pub fn first_probe_shader() -> String {
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
        for u in 0..16 {
            let _ = writeln!(
                s,
                "        let ea_{u} = a[(m0 + {}u + lid / 32u) * p.k + k0 + lid % 32u];",
                u * 8
            );
            let _ = writeln!(
                s,
                "        let eb_{u} = b[(n0 + {}u + lid / 32u) * p.k + k0 + lid % 32u];",
                u * 8
            );
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
                    let _ = writeln!(
                        s,
                        "        acc_{i}_{j} = coopMultiplyAdd(fa_{kk}_{i}, fb_{kk}_{j}, acc_{i}_{j});"
                    );
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

    /// Smallest forms of one `coopStoreT`, named by what its arguments are; which of them naga 30.0.1 translates
    /// shows the trigger. Each returns `(name, wgsl)`.
    pub fn store_forms() -> Vec<(&'static str, String)> {
        let head = "enable f16;\nenable wgpu_cooperative_matrix;\n\
struct P { m: u32, n: u32, k: u32, pad: u32 }\n\
@group(0) @binding(0) var<uniform> p: P;\n\
@group(0) @binding(1) var<storage, read_write> c: array<f32>;\n\
@compute @workgroup_size(32)\nfn main(@builtin(workgroup_id) wid: vec3<u32>) {\n\
    var acc = coop_mat16x16<f32, C>();\n";
        let forms: [(&str, &str); 6] = [
            ("literal stride, let target", "    let v = acc;\n    coopStoreT(v, &c[0], 16u);\n"),
            ("let stride/index/target", "    let v = acc;\n    let i = wid.x * 256u;\n    let st = p.n;\n    coopStoreT(v, &c[i], st);\n"),
            ("uniform-field stride", "    let v = acc;\n    coopStoreT(v, &c[0], p.n);\n"),
            ("var target", "    coopStoreT(acc, &c[0], 16u);\n"),
            ("inline index", "    let v = acc;\n    coopStoreT(v, &c[wid.x * 256u], 16u);\n"),
            ("let target from coopMultiplyAdd", "    let v = coopMultiplyAdd(coop_mat16x16<f16, A>(), coop_mat16x16<f16, B>(), acc);\n    coopStoreT(v, &c[0], 16u);\n"),
        ];
        forms
            .iter()
            .map(|(name, body)| (*name, format!("{head}{body}}}\n")))
            .collect()
    }

    // The host-side translation lives in the library, shared with the kernels' tests.
    pub use dia_webgpu::naga_check::{panic_message, translate_spirv, workgroup_bytes};
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use super::coop::{self, GemmConfig};
    use dia_webgpu::random::Rng;
    use std::time::Instant;
    use wgpu::util::DeviceExt;

    struct Args {
        naga_only: bool,
        dump: Option<std::path::PathBuf>,
        variant: Option<String>,
    }

    fn args() -> Args {
        let mut out = Args {
            naga_only: false,
            dump: None,
            variant: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            match a.as_str() {
                "--naga-only" => out.naga_only = true,
                "--dump" => out.dump = it.next().map(Into::into),
                "--variant" => out.variant = it.next(),
                other => {
                    eprintln!("unknown argument {other}; use [--naga-only] [--dump <dir>] [--variant <name>]");
                    std::process::exit(2);
                }
            }
        }
        out
    }

    /// Host-side translation of every shader; returns whether all GEMM variants translate.
    fn naga_report(variants: &[GemmConfig]) -> bool {
        println!("naga WGSL -> SPIR-V on the host (wgpu-hal's Vulkan options):");
        for robust in [false, true] {
            let r = coop::translate_spirv(&coop::first_probe_shader(), robust);
            println!("  first probe shader (robust buffers {robust}): {}", summary(&r));
        }
        for (name, wgsl) in coop::store_forms() {
            println!(
                "  coopStoreT with {name}: {}",
                summary(&coop::translate_spirv(&wgsl, false))
            );
        }
        let mut all_ok = true;
        for cfg in variants {
            for robust in [false, true] {
                let r = coop::translate_spirv(&coop::gemm_shader(cfg), robust);
                all_ok &= r.is_ok();
                println!("  gemm {} (robust buffers {robust}): {}", cfg.name(), summary(&r));
            }
        }
        all_ok
    }

    fn summary(r: &Result<usize, String>) -> String {
        match r {
            Ok(words) => format!("ok, {words} SPIR-V words"),
            Err(e) => format!("FAILED: {}", e.lines().next().unwrap_or("")),
        }
    }

    pub fn main() {
        let args = args();
        let variants: Vec<GemmConfig> = coop::variants()
            .into_iter()
            .filter(|c| args.variant.as_ref().is_none_or(|v| *v == c.name()))
            .collect();
        if variants.is_empty() {
            let names: Vec<String> = coop::variants().iter().map(GemmConfig::name).collect();
            eprintln!("no variant named {:?}; variants: {}", args.variant, names.join(", "));
            std::process::exit(2);
        }
        if let Some(dir) = &args.dump {
            if let Err(e) = std::fs::create_dir_all(dir) {
                eprintln!("--dump {}: {e}", dir.display());
                std::process::exit(1);
            }
            for cfg in &variants {
                let path = dir.join(format!("{}.wgsl", cfg.name()));
                match std::fs::write(&path, coop::gemm_shader(cfg)) {
                    Ok(()) => println!("wrote {}", path.display()),
                    Err(e) => eprintln!("writing {}: {e}", path.display()),
                }
            }
        }
        if args.naga_only {
            std::process::exit(if naga_report(&variants) { 0 } else { 1 });
        }
        gpu(&variants);
    }

    fn gpu(variants: &[GemmConfig]) {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let Some(adapter) = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
            apply_limit_buckets: false,
        }))
        .ok() else {
            println!("no adapter");
            return;
        };
        let info = adapter.get_info();
        println!(
            "adapter: {:?} ({:?}, driver {:?} {:?}), subgroup size {}..{}",
            info.name, info.backend, info.driver, info.driver_info, info.subgroup_min_size, info.subgroup_max_size
        );
        let has_coop = adapter
            .features()
            .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX);
        println!("cooperative matrix feature: {has_coop}");
        let configs = adapter.cooperative_matrix_properties();
        for p in &configs {
            println!(
                "  {}x{}x{} {:?} -> {:?}",
                p.m_size, p.n_size, p.k_size, p.ab_type, p.cr_type
            );
        }
        let want = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SHADER_F16;
        if !adapter.features().contains(want) {
            println!("no cooperative matrices + f16 here; nothing to measure");
            return;
        }
        let f16_f32 = configs.iter().any(|p| {
            (p.m_size, p.n_size, p.k_size) == (16, 16, 16)
                && p.ab_type == wgpu::CooperativeScalarType::F16
                && p.cr_type == wgpu::CooperativeScalarType::F32
        });
        if !f16_f32 {
            println!("no 16x16x16 F16 -> F32 configuration; the kernel needs it");
            return;
        }
        // The kernel maps subgroups to invocation ranges of 32.
        if info.subgroup_min_size != 32 || info.subgroup_max_size != 32 {
            println!("subgroup size is not fixed at 32; the kernel assumes 8 subgroups of 32 consecutive invocations");
            return;
        }
        let adapter_wg = adapter.limits().max_compute_workgroup_storage_size;
        let need_wg = variants
            .iter()
            .map(GemmConfig::workgroup_bytes)
            .filter(|&b| b <= adapter_wg)
            .max()
            .unwrap_or(0);
        let mut limits = wgpu::Limits::default();
        limits.max_storage_buffer_binding_size = adapter.limits().max_storage_buffer_binding_size;
        limits.max_buffer_size = adapter.limits().max_buffer_size;
        limits.max_compute_workgroup_storage_size = limits.max_compute_workgroup_storage_size.max(need_wg);
        println!(
            "workgroup memory: adapter allows {adapter_wg} bytes, requesting {}",
            limits.max_compute_workgroup_storage_size
        );
        let device = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: None,
            required_features: want,
            required_limits: limits.clone(),
            // SAFETY: a probe; the experimental feature is exercised on purpose.
            experimental_features: unsafe { wgpu::ExperimentalFeatures::enabled() },
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }));
        let (device, queue) = match device {
            Ok(dq) => dq,
            Err(e) => {
                println!("request_device failed: {e}");
                return;
            }
        };
        device.on_uncaptured_error(std::sync::Arc::new(|e| eprintln!("uncaptured wgpu error: {e}")));
        for cfg in variants {
            if cfg.workgroup_bytes() > limits.max_compute_workgroup_storage_size {
                println!(
                    "{}: needs {} bytes of workgroup memory; skipped",
                    cfg.name(),
                    cfg.workgroup_bytes()
                );
                continue;
            }
            // A naga panic inside wgpu could leave the device unusable: translate on the host first.
            if let Err(e) = coop::translate_spirv(&coop::gemm_shader(cfg), false) {
                println!("{}: WGSL -> SPIR-V FAILED on the host: {e}", cfg.name());
                continue;
            }
            match pipeline(&device, cfg) {
                Ok(p) => measure(&device, &queue, cfg, &p),
                Err(e) => println!("{}: pipeline FAILED: {e}", cfg.name()),
            }
        }
    }

    fn pipeline(device: &wgpu::Device, cfg: &GemmConfig) -> Result<wgpu::ComputePipeline, String> {
        let wgsl = coop::gemm_shader(cfg);
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("coop gemm"),
                source: wgpu::ShaderSource::Wgsl(wgsl.into()),
            });
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some("coop gemm"),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            })
        }));
        let error = pollster::block_on(scope.pop());
        match (built, error) {
            (Err(payload), _) => Err(format!("panicked: {}", coop::panic_message(&*payload))),
            (Ok(_), Some(e)) => Err(e.to_string()),
            (Ok(p), None) => Ok(p),
        }
    }

    /// Values in [-0.5, 0.5).
    fn rnd_stream(seed: u64) -> impl FnMut() -> f32 {
        let mut rng = Rng::new(seed);
        move || 0.5 * rng.uniform()
    }

    fn measure(device: &wgpu::Device, queue: &wgpu::Queue, cfg: &GemmConfig, pipeline: &wgpu::ComputePipeline) {
        // (M, N, K, check against the CPU)
        let cases = [
            (1024u32, 1024u32, 1024u32, true),
            (1536, 144, 7168, true),
            (96, 9216, 672, true),
            (4096, 4096, 4096, false),
        ];
        for &(m, n, k, check) in &cases {
            let (mu, nu, ku) = (m as usize, n as usize, k as usize);
            let mut rnd = rnd_stream(0x5eed ^ (m as u64) << 20 ^ (n as u64) << 40 ^ k as u64);
            // A as the kernel sees it (f16-rounded); B in f16.
            let a16: Vec<half::f16> = (0..mu * ku).map(|_| half::f16::from_f32(rnd())).collect();
            let b16: Vec<half::f16> = (0..nu * ku).map(|_| half::f16::from_f32(rnd())).collect();
            let a_bytes: Vec<u8> = if cfg.a_f16 {
                bytemuck::cast_slice(&a16).to_vec()
            } else {
                let a32: Vec<f32> = a16.iter().map(|v| v.to_f32()).collect();
                bytemuck::cast_slice(&a32).to_vec()
            };
            let init = |contents: &[u8], usage| {
                device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: None,
                    contents,
                    usage,
                })
            };
            let ab = init(&a_bytes, wgpu::BufferUsages::STORAGE);
            let bb = init(bytemuck::cast_slice(&b16), wgpu::BufferUsages::STORAGE);
            let ub = init(bytemuck::cast_slice(&[m, n, k, 0]), wgpu::BufferUsages::UNIFORM);
            let c_bytes = (mu * nu + coop::C_SLACK as usize) as u64 * 4;
            let cb = device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: c_bytes,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
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
            let groups = (n.div_ceil(coop::TILE_N), m.div_ceil(coop::TILE_M));
            let run = |times: u32| {
                let mut enc = device.create_command_encoder(&Default::default());
                {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    pass.set_pipeline(pipeline);
                    pass.set_bind_group(0, &bg, &[]);
                    for _ in 0..times {
                        pass.dispatch_workgroups(groups.0, groups.1, 1);
                    }
                }
                queue.submit([enc.finish()]);
                device
                    .poll(wgpu::PollType::wait_indefinitely())
                    .map_err(|e| e.to_string())
            };
            if let Err(e) = run(1) {
                println!("{} {m}x{n}x{k}: submission FAILED: {e}", cfg.name());
                continue;
            }
            let mut line = format!("{} {m}x{n}x{k}:", cfg.name());
            if check {
                let got = match read_back(device, queue, &cb, (mu * nu * 4) as u64) {
                    Ok(v) => v,
                    Err(e) => {
                        println!("{line} read-back FAILED: {e}");
                        continue;
                    }
                };
                let (abs, rel) = compare(&a16, &b16, &got, mu, nu, ku);
                line += &format!(
                    " max abs err {abs:.2e}, max rel err {rel:.2e} ({})",
                    if rel < 1e-3 { "ok" } else { "WRONG" }
                );
            }
            // Median over batches; a batch is long enough (≥ ~50 ms of work) for wall-clock timing.
            let flops = 2.0 * m as f64 * n as f64 * k as f64;
            let per_batch = ((50e-3 * 100e12 / flops) as u32).clamp(1, 200);
            let mut times = Vec::new();
            for _ in 0..7 {
                let t0 = Instant::now();
                if run(per_batch).is_err() {
                    break;
                }
                times.push(t0.elapsed().as_secs_f64() / per_batch as f64);
            }
            if times.is_empty() {
                println!("{line} timing FAILED");
                continue;
            }
            times.sort_by(f64::total_cmp);
            let med = times[times.len() / 2];
            println!(
                "{line} {:.3} ms, {:.1} TFLOP/s (median of {} batches of {per_batch})",
                med * 1e3,
                flops / med / 1e12,
                times.len()
            );
        }
    }

    fn read_back(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        src: &wgpu::Buffer,
        bytes: u64,
    ) -> Result<Vec<f32>, String> {
        let rb = device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(src, 0, &rb, 0, bytes);
        queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        rb.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| e.to_string())?;
        rx.recv().map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
        let view = rb.slice(..).get_mapped_range().map_err(|e| e.to_string())?;
        Ok(bytemuck::cast_slice(&view).to_vec())
    }

    /// Max abs error and max abs error relative to the largest |C| against an f64 CPU product of the same f16 inputs.
    fn compare(a: &[half::f16], b: &[half::f16], got: &[f32], m: usize, n: usize, k: usize) -> (f64, f64) {
        let a: Vec<f32> = a.iter().map(|v| v.to_f32()).collect();
        let b: Vec<f32> = b.iter().map(|v| v.to_f32()).collect();
        let (mut worst, mut scale) = (0.0f64, 0.0f64);
        for i in 0..m {
            let ar = &a[i * k..(i + 1) * k];
            for j in 0..n {
                let br = &b[j * k..(j + 1) * k];
                let want: f64 = ar.iter().zip(br).map(|(x, y)| *x as f64 * *y as f64).sum();
                worst = worst.max((got[i * n + j] as f64 - want).abs());
                scale = scale.max(want.abs());
            }
        }
        (worst, worst / scale.max(1e-30))
    }
}

/// Host-only (no GPU): naga 30's WGSL → SPIR-V translation, with wgpu-hal's Vulkan options, of the GEMM above
/// and of the store forms that show naga's bug. Run by `cargo test` (the example has `test = true`).
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::coop;

    /// The first probe's shader panics in naga's SPIR-V writer exactly as on the H100.
    #[test]
    fn first_probe_shader_reproduces_the_uncached_expression_panic() {
        for robust in [false, true] {
            let err = coop::translate_spirv(&coop::first_probe_shader(), robust).expect_err("naga 30.0.1 should panic");
            assert!(err.contains("is not cached"), "unexpected failure: {err}");
        }
    }

    /// A `coopStoreT` stride computed inside the call is the trigger; `let`-bound arguments and literals translate.
    #[test]
    fn only_a_computed_store_argument_trips_naga() {
        for (name, wgsl) in coop::store_forms() {
            let result = coop::translate_spirv(&wgsl, false);
            if name == "uniform-field stride" {
                assert!(
                    result.as_ref().is_err_and(|e| e.contains("is not cached")),
                    "{name}: {result:?}"
                );
            } else {
                assert!(result.is_ok(), "{name}: {result:?}");
            }
        }
    }

    /// Every GEMM variant parses, validates (cooperative ops in uniform control flow) and becomes SPIR-V, with
    /// storage-buffer indices clamped or unchecked (the two policies wgpu picks between).
    #[test]
    fn every_gemm_variant_translates() {
        for cfg in coop::variants() {
            for robust in [false, true] {
                let words = coop::translate_spirv(&coop::gemm_shader(&cfg), robust)
                    .unwrap_or_else(|e| panic!("{} (robust {robust}): {e}", cfg.name()));
                assert!(
                    words > 1000,
                    "{}: suspiciously small module ({words} words)",
                    cfg.name()
                );
            }
        }
    }

    /// The shaders stay within what the probe asks of the device.
    #[test]
    fn workgroup_memory_fits_the_requested_limit() {
        for cfg in coop::variants() {
            let wgsl = coop::gemm_shader(&cfg);
            let bytes = coop::workgroup_bytes(&wgsl);
            assert_eq!(bytes, cfg.workgroup_bytes(), "{}", cfg.name());
            assert!(bytes <= 40 * 1024, "{}: {bytes} bytes", cfg.name());
        }
    }
}
