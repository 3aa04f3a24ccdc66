//! Generated WGSL shared by the tensor-core kernels (`linear::coop`, `dac_conv_cl`). Both stage each 32-row
//! reduction step of A (`sa`, time or x rows) and B (`sb`, weight rows) in workgroup memory as f16 rows of `lds`
//! halves, and keep `frag_m` × `frag_n` 16×16 f32 accumulators `acc{i}{j}` per subgroup, whose block starts at A
//! row `sm` and B row `sn`. Each kernel generates its own global loads, staging stores and epilogue.
use std::fmt::Write;

/// The tensor-core work on one staged step at offsets `base_a` / `base_b`: two 16-deep fragment rounds.
fn multiply_stage(s: &mut String, frag_m: u32, frag_n: u32, lds: u32, base_a: &str, base_b: &str) {
    for kk in 0..2 {
        for i in 0..frag_m {
            let _ = writeln!(
                s,
                "        let fa{kk}{i} = coopLoadT<coop_mat16x16<f16, A>>(&sa[{base_a} + (sm + {}u) * {lds}u + {}u], {lds}u);",
                16 * i,
                16 * kk
            );
        }
        for j in 0..frag_n {
            let _ = writeln!(
                s,
                "        let fb{kk}{j} = coopLoad<coop_mat16x16<f16, B>>(&sb[{base_b} + (sn + {}u) * {lds}u + {}u], {lds}u);",
                16 * j,
                16 * kk
            );
        }
        for i in 0..frag_m {
            for j in 0..frag_n {
                let _ = writeln!(s, "        acc{i}{j} = coopMultiplyAdd(fa{kk}{i}, fb{kk}{j}, acc{i}{j});");
            }
        }
    }
}

/// How a kernel fills its staging tiles: `load(s, tag, k)` emits the global loads of the step at reduction row
/// `k` into registers suffixed `tag`; `stage(s, tag, base_a, base_b)` stores those registers into `sa` / `sb`.
pub(crate) struct Staging<'a> {
    pub load: &'a dyn Fn(&mut String, &str, &str),
    pub stage: &'a dyn Fn(&mut String, &str, &str, &str),
}

/// The reduction loop over `nk` steps: the first step loaded and staged, then per step the next step's global
/// loads go out before this step's matrix work (the last iteration reloads its own step), double-buffered when
/// `stages` is 2 (`sa_len` / `sb_len` halves per buffer), else with a barrier before restaging.
#[allow(clippy::too_many_arguments)]
pub(crate) fn staged_reduction(s: &mut String, frag_m: u32, frag_n: u32, lds: u32, stages: u32, sa_len: u32, sb_len: u32, staging: Staging) {
    s.push_str("    {\n");
    (staging.load)(s, "p", "0u");
    (staging.stage)(s, "p", "0u", "0u");
    s.push_str("    }\n    workgroupBarrier();\n    for (var kt = 0u; kt < nk; kt++) {\n");
    s.push_str("        let kn = min(kt + 1u, nk - 1u) * 32u;\n");
    (staging.load)(s, "n", "kn");
    if stages == 2 {
        let _ = writeln!(s, "        let ca = (kt % 2u) * {sa_len}u;");
        let _ = writeln!(s, "        let na = {sa_len}u - ca;");
        let _ = writeln!(s, "        let cb = (kt % 2u) * {sb_len}u;");
        let _ = writeln!(s, "        let nb = {sb_len}u - cb;");
        multiply_stage(s, frag_m, frag_n, lds, "ca", "cb");
        (staging.stage)(s, "n", "na", "nb");
    } else {
        multiply_stage(s, frag_m, frag_n, lds, "0u", "0u");
        s.push_str("        workgroupBarrier();\n");
        (staging.stage)(s, "n", "0u", "0u");
    }
    s.push_str("        workgroupBarrier();\n    }\n");
}
