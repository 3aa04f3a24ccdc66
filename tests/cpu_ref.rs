//! Self-checks of the f64 CPU reference (`common::cpu_ref`) against the PyTorch fixtures.

mod common;

use std::collections::BTreeMap;

use common::cpu_ref::CpuDia;

type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

fn fixtures() -> (CpuDia, Tensors) {
    let dir = common::fixtures_dir();
    (
        CpuDia::load(&dir.join("dia")),
        common::load_expected(&dir.join("expected.safetensors")),
    )
}

/// Single-item cases that have an encoder output (t0, t1, clone).
fn cases(exp: &Tensors) -> Vec<String> {
    let cases: Vec<String> = exp
        .keys()
        .filter_map(|k| k.strip_suffix(".encoder_out"))
        .map(str::to_owned)
        .collect();
    assert!(!cases.is_empty(), "no <case>.encoder_out in the fixtures");
    cases
}

fn ints(exp: &Tensors, key: &str) -> Vec<u32> {
    exp[key].1.iter().map(|&x| x as u32).collect()
}

/// The first 24 delayed rows of `<case>.generated`, `[24, C]`.
fn rows24(exp: &Tensors, case: &str, channels: usize) -> Vec<u32> {
    ints(exp, &format!("{case}.generated"))[..24 * channels].to_vec()
}

/// max |a − b| / max |b|.
fn rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    num / b.iter().map(|y| y.abs()).fold(0.0, f64::max).max(1e-300)
}

fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

#[test]
fn cpu_ref_encoder_matches_fixtures() {
    let (model, exp) = fixtures();
    for case in cases(&exp) {
        let enc = model.encode(&ints(&exp, &format!("{case}.in.input_ids")));
        let err = rel(&enc, &to_f64(&exp[&format!("{case}.encoder_out")].1));
        println!("{case}.encoder_out rel {err:.2e}");
        assert!(err < 1e-5, "{case}.encoder_out rel {err:.2e}");
    }
}

#[test]
fn cpu_ref_logits_tf24_match_fixtures() {
    let (model, exp) = fixtures();
    let (nc, vocab) = (model.cfg.channels, model.cfg.vocab);
    for case in cases(&exp) {
        let lg = model.teacher_forced_logits(
            &ints(&exp, &format!("{case}.in.input_ids")),
            &rows24(&exp, &case, nc),
            false,
        );
        // The fixture is channel-major [C, T, V]; ours is [T, C, V].
        let (shape, want) = &exp[&format!("{case}.logits_tf24")];
        assert_eq!(shape, &[nc, 24, vocab]);
        let mut want_tcv = vec![0.0; want.len()];
        for c in 0..nc {
            for t in 0..24 {
                for v in 0..vocab {
                    want_tcv[(t * nc + c) * vocab + v] = want[(c * 24 + t) * vocab + v] as f64;
                }
            }
        }
        let err = rel(&lg, &want_tcv);
        println!("{case}.logits_tf24 rel {err:.2e}");
        assert!(err < 1e-5, "{case}.logits_tf24 rel {err:.2e}");
    }
}

/// docs/model.md §3.2: the unconditional row (L zero bytes) gives the logits of a single zero byte.
#[test]
fn cpu_ref_uncond_equals_single_zero_byte() {
    let (model, exp) = fixtures();
    for case in cases(&exp) {
        let ids = ints(&exp, &format!("{case}.in.input_ids"));
        assert!(ids.len() > 1);
        let rows = rows24(&exp, &case, model.cfg.channels);
        let uncond = model.teacher_forced_logits(&ids, &rows, true);
        let single = model.teacher_forced_logits(&[0], &rows, false);
        let cond = model.teacher_forced_logits(&ids, &rows, false);
        let err = rel(&uncond, &single);
        println!(
            "{case} uncond vs one zero byte rel {err:.2e}; vs cond {:.2e}",
            rel(&uncond, &cond)
        );
        assert!(err < 1e-9, "{case}: uncond vs one zero byte rel {err:.2e}");
        assert!(
            rel(&uncond, &cond) > 1e-3,
            "{case}: uncond row should differ from the conditional one"
        );
    }
}

#[test]
fn cpu_ref_cross_rope_changes_logits() {
    let (mut model, exp) = fixtures();
    let ids = ints(&exp, "t0.in.input_ids");
    let rows = rows24(&exp, "t0", model.cfg.channels);
    let plain = model.teacher_forced_logits(&ids, &rows, false);
    model.cross_rope = true;
    let roped = model.teacher_forced_logits(&ids, &rows, false);
    let diff = rel(&roped, &plain);
    println!("cross RoPE changes t0 logits by rel {diff:.2e}");
    assert!(diff > 1e-3, "cross RoPE had no effect (rel {diff:.2e})");
}

/// One text token at position 0 and only decoder row 0: every cross RoPE angle is 0, so the flag is a no-op.
#[test]
fn cpu_ref_cross_rope_identity_at_position_zero() {
    let (mut model, exp) = fixtures();
    let nc = model.cfg.channels;
    let ids = &ints(&exp, "t0.in.input_ids")[..1];
    let rows = &rows24(&exp, "t0", nc)[..nc];
    let plain = model.teacher_forced_logits(ids, rows, false);
    model.cross_rope = true;
    assert_eq!(model.teacher_forced_logits(ids, rows, false), plain);
}
