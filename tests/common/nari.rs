//! Test-only: rewrites an HF-layout Dia checkpoint into the nari layout (the inverse of docs/model.md §2.4), written
//! from the spec's tables independently of the library's mapping so the two can check each other.

use dia_webgpu::config::DiaConfig;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// (name, shape, row-major data).
pub type Tensor = (String, Vec<usize>, Vec<f32>);

/// `[rows, cols]` → `[cols, rows]`, row-major.
fn transposed(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; src.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = src[r * cols + c];
        }
    }
    out
}

/// (heads, head_dim) of a projection's output (q/k/v) or input (o) for the attention block in `name`.
fn heads_of(name: &str, cfg: &DiaConfig) -> (usize, usize) {
    let (e, d) = (&cfg.encoder, &cfg.decoder);
    let kv = name.contains("k_proj") || name.contains("v_proj");
    if name.starts_with("encoder.") {
        (if kv { e.kv_heads } else { e.heads }, e.head_dim)
    } else if name.contains("cross_attention") {
        (if kv { d.cross_kv_heads } else { d.cross_heads }, d.cross_head_dim)
    } else {
        (if kv { d.kv_heads } else { d.heads }, d.head_dim)
    }
}

/// Serialises an HF-layout (f32) safetensors file as the nari layout: DenseGeneral kernels `[in…, out…]`,
/// nine per-channel embedding tables, `decoder.logits_dense.weight` `[D, C, V]`, `mlp.wi_fused`/`mlp.wo`.
pub fn hf_to_nari(hf_bytes: &[u8], cfg: &DiaConfig) -> Vec<u8> {
    let st = SafeTensors::deserialize(hf_bytes).expect("HF checkpoint parses");
    let (channels, vocab) = (cfg.decoder.channels, cfg.decoder.vocab);
    let mut out: Vec<Tensor> = Vec::new();
    for (hf_name, view) in st.tensors() {
        assert_eq!(view.dtype(), Dtype::F32, "{hf_name}: the helper expects f32");
        let data: Vec<f32> = bytemuck::pod_collect_to_vec(view.data());
        let shape = view.shape().to_vec();
        if hf_name == "logits_dense.weight" {
            let (rows, hidden) = (shape[0], shape[1]);
            assert_eq!(rows, channels * vocab);
            out.push((
                "decoder.logits_dense.weight".into(),
                vec![hidden, channels, vocab],
                transposed(&data, rows, hidden),
            ));
            continue;
        }
        let name =
            hf_name.strip_prefix("model.").expect("HF names other than the logits start with model.").to_string();
        if name == "decoder.embeddings.embed.weight" {
            let hidden = shape[1];
            for (c, table) in data.chunks(vocab * hidden).enumerate() {
                out.push((format!("decoder.embeddings.{c}.weight"), vec![vocab, hidden], table.to_vec()));
            }
            continue;
        }
        if name.ends_with("norm.weight") || name == "encoder.embedding.weight" {
            out.push((name, shape, data));
            continue;
        }
        let (rows, cols) = (shape[0], shape[1]); // [out, in]
        let t = transposed(&data, rows, cols); // [in, out]
        let (nari_name, nari_shape) =
            if name.ends_with("q_proj.weight") || name.ends_with("k_proj.weight") || name.ends_with("v_proj.weight") {
                let (h, hd) = heads_of(&name, cfg);
                assert_eq!(rows, h * hd, "{hf_name}");
                (name.clone(), vec![cols, h, hd])
            } else if name.ends_with("o_proj.weight") {
                let (h, hd) = heads_of(&name, cfg);
                assert_eq!(cols, h * hd, "{hf_name}");
                (name.clone(), vec![h, hd, rows])
            } else if name.ends_with("mlp.gate_up_proj.weight") {
                (name.replace("gate_up_proj", "wi_fused"), vec![cols, 2, rows / 2])
            } else if name.ends_with("mlp.down_proj.weight") {
                (name.replace("down_proj", "wo"), vec![cols, rows])
            } else {
                panic!("unexpected HF tensor {hf_name}");
            };
        out.push((nari_name, nari_shape, t));
    }
    serialize_f32(&out)
}

/// Serialises f32 tensors (name, shape, data) with the `safetensors` crate.
pub fn serialize_f32(tensors: &[Tensor]) -> Vec<u8> {
    let bytes: Vec<Vec<u8>> =
        tensors.iter().map(|(_, _, d)| d.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| (name.clone(), TensorView::new(Dtype::F32, shape.clone(), b).expect("view")))
        .collect();
    safetensors::serialize(views, None).expect("serialize")
}
