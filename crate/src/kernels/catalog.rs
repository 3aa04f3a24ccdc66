//! Every generated shader a representative set of variants yields, by a stable name: what `examples/dump_wgsl.rs`
//! writes out (to compare a generator's output before and after a change, byte for byte) and what
//! `tests/shaders.rs` runs through naga. Names do not depend on how the kernels key their pipelines, so two
//! dumps of different code line up file by file.
use crate::gpu::{KernelVariant, Reduction};
use crate::kernels::attention::DecodeLayout;
use crate::kernels::kv_cache::{KvCacheKernel, KvFormat};
use crate::kernels::sampling::{SamplerEntry, SamplerVariant};
use crate::kernels::linear::{Arith, CoopAccess, CoopShape, CoopVariant, LinearEpilogue, SmallMAccess, SmallMShape, SmallMVariant, TiledAccess, TiledShape, TiledVariant};
use crate::kernels::WeightFormat;
use crate::quant::{QuantBits, QuantFormat};

/// (name, WGSL source) of every shader below, names unique.
pub fn generated_shaders() -> Vec<(String, String)> {
    let mut out = Vec::new();
    attention(&mut out);
    sampling(&mut out);
    dac(&mut out);
    kv_cache(&mut out);
    linear(&mut out);
    cross_tables(&mut out);
    embed(&mut out);
    out
}

fn cross_tables(out: &mut Vec<(String, String)>) {
    use crate::kernels::cross_tables::{build_source, out_source, scores_source};
    for format in [WeightFormat::F32, WeightFormat::F16] {
        let f = format_name(format);
        for kv in KvFormat::ALL {
            for hd in [32u32, 128] {
                out.push((format!("cross_tables/build_{f}_{kv}_hd{hd}"), build_source(format, kv, hd)));
            }
        }
        for hidden in [96u32, 2048] {
            out.push((format!("cross_tables/scores_{f}_h{hidden}"), scores_source(format, hidden)));
        }
        for heads in [2u32, 3, 16] {
            out.push((format!("cross_tables/out_{f}_heads{heads}"), out_source(format, heads)));
        }
    }
}

const REDUCTIONS: [Reduction; 2] = [Reduction::Workgroup, Reduction::Subgroup];

fn weight_formats() -> [WeightFormat; 5] {
    let q4g64 = QuantFormat::new(QuantBits::Q4, 64).expect("group 64 is a quantized format");
    [WeightFormat::F32, WeightFormat::F16, WeightFormat::Quant(QuantFormat::Q8), WeightFormat::Quant(QuantFormat::Q4), WeightFormat::Quant(q4g64)]
}

fn format_name(f: WeightFormat) -> String {
    match f {
        WeightFormat::Quant(q) => format!("{}g{}", f.name(), q.group()),
        _ => f.name().to_string(),
    }
}

fn attention(out: &mut Vec<(String, String)>) {
    use crate::kernels::attention::{AttentionEntry, AttentionVariant};
    for hd in [32u32, 48, 64, 80, 128, 256] {
        for nr in [1, 2, 4] {
            for kv in KvFormat::ALL {
                for reduction in REDUCTIONS {
                    for (single, append) in [(false, false), (true, false), (false, true)] {
                        if append && !hd.is_multiple_of(16) {
                            continue;
                        }
                        let name = format!("attention/hd{hd}_nr{nr}_{kv}_{reduction:?}_single{single}_append{append}");
                        let v = AttentionVariant { entry: AttentionEntry::DecodePartial, head_dim: hd, decode_heads: nr, single, append, kv, reduction };
                        out.push((name, v.source()));
                    }
                }
            }
        }
    }
}

fn sampling(out: &mut Vec<(String, String)>) {
    for chunk in [1, 2, 5, 9, 33] {
        for record in [false, true] {
            for reduction in REDUCTIONS {
                let name = format!("sampling/c{chunk}_record{record}_{reduction:?}");
                let v = SamplerVariant { entry: SamplerEntry::SelectToken, chunk, record_scores: record, reduction };
                out.push((name, v.source()));
            }
        }
    }
}

fn dac(out: &mut Vec<(String, String)>) {
    use crate::kernels::conv::layout::{ConvMonoVariant, PackVariant};
    use crate::kernels::conv::plain::{ConvReduceVariant, ConvShape, ConvVariant};
    use crate::kernels::dac_rvq::{RvqEntry, RvqVariant};
    use crate::kernels::conv::coop::{self, ClShape, EPILOGUE_NAMES};
    for format in [WeightFormat::F32, WeightFormat::F16] {
        for shape in ConvShape::ALL {
            for (cc, kt, xs) in [(1, 7, 512), (2, 1, 256), (16, 1, 1024), (1, 3, 768)] {
                for f16_math in [false, true] {
                    if f16_math && format != WeightFormat::F16 {
                        continue;
                    }
                    for split in [false, true] {
                        for snake in [false, true] {
                            for (acc, tanh) in [(false, false), (true, false), (false, true), (true, true)] {
                                if split && (acc || tanh) {
                                    continue;
                                }
                                let name = format!(
                                    "dac_conv/{}_{}x{}x{}x{}_c{cc}k{kt}x{xs}_h{f16_math}_split{split}_snake{snake}_acc{acc}_tanh{tanh}",
                                    format.name(),
                                    shape.wm,
                                    shape.wn,
                                    shape.rm,
                                    shape.rn
                                );
                                let v = ConvVariant { format, shape, cc, kt, xs, f16_math, split, snake, accumulate: acc, tanh };
                                out.push((name, v.source()));
                            }
                        }
                    }
                }
            }
        }
    }
    for acc in [false, true] {
        for tanh in [false, true] {
            out.push((format!("dac_conv_reduce/acc{acc}_tanh{tanh}"), ConvReduceVariant { accumulate: acc, tanh }.source()));
        }
    }
    for shape in ClShape::ALL {
        for stages in [shape.stages, 1].into_iter().collect::<std::collections::BTreeSet<_>>() {
            for e in EPILOGUE_NAMES {
                let shape = shape.with_stages(stages);
                out.push((format!("dac_conv_cl/{}_{e}", shape.name()), coop::shader_source(shape, e)));
            }
        }
    }
    for format in [WeightFormat::F32, WeightFormat::F16] {
        for dim in [8, 16] {
            out.push((format!("dac_rvq/{}_d{dim}", format.name()), RvqVariant { entry: RvqEntry::Assign, format, codebook_dim: dim }.source()));
        }
        out.push((format!("dac_conv_mono/{}", format.name()), ConvMonoVariant { format }.source()));
    }
    for transposed in [false, true] {
        for snake in [false, true] {
            out.push((format!("dac_pack/t{transposed}_s{snake}"), PackVariant { transposed, snake }.source()));
        }
    }
}

fn embed(out: &mut Vec<(String, String)>) {
    use crate::kernels::embed::{EmbedEntry, EmbedVariant};
    for entry in [EmbedEntry::Tokens, EmbedEntry::ChannelsSum] {
        for format in weight_formats() {
            for cols in [19u32, 1024, 2048] {
                out.push((format!("embed/{entry:?}_{}_c{cols}", format_name(format)), EmbedVariant { entry, format, cols }.source()));
            }
        }
    }
}

fn kv_cache(out: &mut Vec<(String, String)>) {
    for format in KvFormat::ALL {
        out.push((format!("kv_cache/plain_{format}"), KvCacheKernel::RopeKvWrite(format).source()));
    }
    out.push(("kv_cache/q8".to_string(), KvCacheKernel::PackQ8.source()));
}

fn linear(out: &mut Vec<(String, String)>) {
    const EPILOGUES: [LinearEpilogue; 3] = [LinearEpilogue::Store, LinearEpilogue::Accumulate, LinearEpilogue::SwiGlu];
    for format in weight_formats() {
        let f = format_name(format);
        for k in [1024, 1028, 1030] {
            for epilogue in EPILOGUES {
                for m in [1, 2, 5] {
                    for (norm, blocked) in [(false, false), (true, false), (false, true)] {
                        for arith in [Arith::F32, Arith::F16, Arith::Int8Dot] {
                            if (arith == Arith::F16 && format == WeightFormat::F32) || (arith == Arith::Int8Dot && !matches!(format, WeightFormat::Quant(_))) {
                                continue;
                            }
                            let shape = SmallMShape::for_format(format, m, 1024, k);
                            let v = SmallMVariant::new(format, k, m, epilogue, shape, norm, blocked, arith);
                            let name = format!("linear_small_m/{f}_k{k}_{epilogue:?}_m{m}_norm{norm}_blocked{blocked}_{arith:?}");
                            out.push((name, v.source()));
                            if k == 1024 && !norm && !blocked {
                                // x combined from a decode's partials (`linear_attention_o`): 8 heads of 128, 4 per kv head.
                                for (kv, n_chunks) in [(KvFormat::F32, 48), (KvFormat::F16, 200)] {
                                    let layout = DecodeLayout { rows: m, heads: 8, head_dim: 128, n_rep: 4, chunk: 64, n_chunks, kv_stride: 256, k_col: 0, v_col: 0, kv };
                                    let v = SmallMVariant { attention_x: Some(layout), ..v };
                                    out.push((format!("linear_attention_o/{f}_{epilogue:?}_m{m}_{arith:?}_{kv}_c{n_chunks}"), v.source()));
                                }
                            }
                        }
                        if matches!(format, WeightFormat::Quant(_)) {
                            let shape = SmallMShape::for_access(SmallMAccess::cols8(format, k), format, m, 1024, k);
                            let v = SmallMVariant::with_access(SmallMAccess::cols8(format, k), format, k, m, epilogue, shape, norm, blocked, Arith::F32);
                            out.push((format!("linear_small_m/{f}_k{k}_{epilogue:?}_m{m}_norm{norm}_blocked{blocked}_F32_cols8"), v.source()));
                        }
                    }
                }
                for shape in TiledShape::ALL {
                    let v = TiledVariant { format, access: TiledAccess::new(format, k, shape), epilogue, shape };
                    let name = format!("linear_tiled/{f}_k{k}_{epilogue:?}_{}x{}x{}x{}x{}", shape.tm, shape.tn, shape.rm, shape.bk, shape.kg);
                    out.push((name, v.source()));
                }
                if format != WeightFormat::F32 {
                    for shape in CoopShape::ALL.into_iter().chain(CoopShape::SMALL_M) {
                        if !shape.supports(epilogue) {
                            continue;
                        }
                        let v = CoopVariant { format, access: CoopAccess::new(format, k), epilogue, shape };
                        let s = shape;
                        let name = format!("linear_coop/{f}_k{k}_{epilogue:?}_{}x{}x{}x{}x{}x{}", s.sub_m, s.sub_n, s.sub_k, s.frag_m, s.frag_n, s.stages);
                        out.push((name, v.source()));
                    }
                }
            }
        }
    }
}
