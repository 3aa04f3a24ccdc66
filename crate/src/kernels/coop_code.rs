//! Generated WGSL shared by the tensor-core kernels (`linear::coop`, `conv::coop`). Both stage each 32-row
//! reduction step of A (`sa`, time or x rows) and B (`sb`, weight rows) in workgroup memory as f16 rows of `lds`
//! halves, and keep `frag_m` × `frag_n` 16×16 f32 accumulators `acc{i}{j}` per subgroup, whose block starts at A
//! row `sm` and B row `sn`. Each kernel generates its own global loads, staging stores and epilogue.
use super::wgsl::Emitter;

/// The tensor-core work on one staged step at offsets `base_a` / `base_b`: two 16-deep fragment rounds, from
/// column `frag_k` of the staged rows (a WGSL expression; empty for column 0).
fn multiply_stage(s: &mut Emitter, frag_m: u32, frag_n: u32, lds: u32, frag_k: &str, base_a: &str, base_b: &str) {
    let col = |kk: u32| if frag_k.is_empty() { format!("{}u", 16 * kk) } else { format!("{frag_k} + {}u", 16 * kk) };
    for kk in 0..2 {
        for i in 0..frag_m {
            emit!(
                s,
                "let fa{kk}{i} = coopLoadT<coop_mat16x16<f16, A>>(&sa[{base_a} + (sm + {}u) * {lds}u + {}], {lds}u);",
                16 * i,
                col(kk)
            );
        }
        for j in 0..frag_n {
            emit!(
                s,
                "let fb{kk}{j} = coopLoad<coop_mat16x16<f16, B>>(&sb[{base_b} + (sn + {}u) * {lds}u + {}], {lds}u);",
                16 * j,
                col(kk)
            );
        }
        for i in 0..frag_m {
            for j in 0..frag_n {
                emit!(s, "acc{i}{j} = coopMultiplyAdd(fa{kk}{i}, fb{kk}{j}, acc{i}{j});");
            }
        }
    }
}

/// How a kernel fills its staging tiles: `load(s, tag, k)` emits the global loads of the step at reduction row
/// `k` into registers suffixed `tag`; `stage(s, tag, base_a, base_b)` stores those registers into `sa` / `sb`.
/// A step is `step` reduction rows; `frag_k` (a WGSL expression, empty for 0) is the staged column where this
/// subgroup's 32 start, when subgroups split a step between them.
pub(crate) struct Staging<'a> {
    pub load: &'a dyn Fn(&mut Emitter, &str, &str),
    pub stage: &'a dyn Fn(&mut Emitter, &str, &str, &str),
    pub step: u32,
    pub frag_k: &'a str,
}

/// The reduction loop over `nk` steps: the first step loaded and staged, then per step the next step's global
/// loads go out before this step's matrix work (the last iteration reloads its own step), double-buffered when
/// `stages` is 2 (`sa_len` / `sb_len` halves per buffer), else with a barrier before restaging.
#[allow(clippy::too_many_arguments)]
pub(crate) fn staged_reduction(s: &mut Emitter, frag_m: u32, frag_n: u32, lds: u32, stages: u32, sa_len: u32, sb_len: u32, staging: Staging) {
    s.block("", |s| {
        (staging.load)(s, "p", "0u");
        (staging.stage)(s, "p", "0u", "0u");
    });
    s.line("workgroupBarrier();");
    s.block("for (var kt = 0u; kt < nk; kt++)", |s| {
        emit!(s, "let kn = min(kt + 1u, nk - 1u) * {}u;", staging.step);
        (staging.load)(s, "n", "kn");
        if stages == 2 {
            emit!(s, "let ca = (kt % 2u) * {sa_len}u;");
            emit!(s, "let na = {sa_len}u - ca;");
            emit!(s, "let cb = (kt % 2u) * {sb_len}u;");
            emit!(s, "let nb = {sb_len}u - cb;");
            multiply_stage(s, frag_m, frag_n, lds, staging.frag_k, "ca", "cb");
            (staging.stage)(s, "n", "na", "nb");
        } else {
            multiply_stage(s, frag_m, frag_n, lds, staging.frag_k, "0u", "0u");
            s.line("workgroupBarrier();");
            (staging.stage)(s, "n", "0u", "0u");
        }
        s.line("workgroupBarrier();");
    });
}
