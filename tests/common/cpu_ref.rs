//! Plain-Rust CPU reference of the Dia forward pass (docs/model.md §3: nari's `dia/layers.py`, transformers'
//! `modeling_dia.py`), in f64.
//! An oracle for tests: simple loops, no caching, one item, no padding.
//! Activations are row-major `[rows, width]`; head h of a row occupies columns `h·head_dim ..`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

/// Query heads, key/value heads and head width of one attention block.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// The config fields the forward pass needs, read from an HF `config.json`.
#[derive(Clone, Debug)]
pub struct CpuDiaConfig {
    pub enc_layers: usize,
    pub enc_hidden: usize,
    pub enc_attn: AttnShape,
    pub enc_theta: f64,
    pub enc_eps: f64,
    pub text_vocab: usize,
    pub dec_layers: usize,
    pub dec_hidden: usize,
    pub dec_attn: AttnShape,
    pub cross_attn: AttnShape,
    pub dec_theta: f64,
    pub dec_eps: f64,
    pub vocab: usize,
    pub channels: usize,
}

impl CpuDiaConfig {
    pub fn parse(json: &str) -> CpuDiaConfig {
        let raw: Value = serde_json::from_str(json).expect("config.json is not JSON");
        let (enc, dec) = (&raw["encoder_config"], &raw["decoder_config"]);
        let int = |v: &Value, key: &str| v[key].as_u64().unwrap_or_else(|| panic!("config: no integer {key}")) as usize;
        let opt = |v: &Value, key: &str| v[key].as_u64().map(|x| x as usize);
        // transformers 5 nests theta in `rope_parameters`; older configs have a flat `rope_theta`.
        let theta = |v: &Value| {
            v["rope_parameters"]["rope_theta"]
                .as_f64()
                .or(v["rope_theta"].as_f64())
                .unwrap_or(10000.0)
        };
        let eps = |v: &Value| v["norm_eps"].as_f64().or(raw["norm_eps"].as_f64()).unwrap_or(1e-5);
        let self_attn = |v: &Value| {
            let heads = int(v, "num_attention_heads");
            AttnShape {
                heads,
                kv_heads: opt(v, "num_key_value_heads").unwrap_or(heads),
                head_dim: opt(v, "head_dim").unwrap_or(int(v, "hidden_size") / heads),
            }
        };
        CpuDiaConfig {
            enc_layers: int(enc, "num_hidden_layers"),
            enc_hidden: int(enc, "hidden_size"),
            enc_attn: self_attn(enc),
            enc_theta: theta(enc),
            enc_eps: eps(enc),
            text_vocab: int(enc, "vocab_size"),
            dec_layers: int(dec, "num_hidden_layers"),
            dec_hidden: int(dec, "hidden_size"),
            dec_attn: self_attn(dec),
            cross_attn: AttnShape {
                heads: int(dec, "cross_num_attention_heads"),
                kv_heads: int(dec, "cross_num_key_value_heads"),
                head_dim: int(dec, "cross_head_dim"),
            },
            dec_theta: theta(dec),
            dec_eps: eps(dec),
            vocab: int(dec, "vocab_size"),
            channels: int(dec, "num_channels"),
        }
    }
}

/// The Dia model (HF checkpoint layout) with f64 weights.
pub struct CpuDia {
    pub cfg: CpuDiaConfig,
    /// RoPE in cross-attention (nari v0.1, docs/model.md §3.5): queries at their decoder position, keys at 0..L−1,
    /// both with the decoder theta.
    pub cross_rope: bool,
    weights: BTreeMap<String, (Vec<usize>, Vec<f64>)>,
}

impl CpuDia {
    /// Reads `config.json` and `model.safetensors` (f32, f16 or bf16) from `dir`.
    pub fn load(dir: &Path) -> CpuDia {
        let cfg = std::fs::read_to_string(dir.join("config.json")).expect("read config.json");
        let bytes = std::fs::read(dir.join("model.safetensors")).expect("read model.safetensors");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("parse model.safetensors");
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let data: Vec<f32> = match view.dtype() {
                safetensors::Dtype::F32 => bytemuck::pod_collect_to_vec(view.data()),
                safetensors::Dtype::F16 => bytemuck::pod_collect_to_vec::<u8, half::f16>(view.data())
                    .iter()
                    .map(|x| x.to_f32())
                    .collect(),
                safetensors::Dtype::BF16 => bytemuck::pod_collect_to_vec::<u8, half::bf16>(view.data())
                    .iter()
                    .map(|x| x.to_f32())
                    .collect(),
                d => panic!("weight {name}: unsupported dtype {d:?}"),
            };
            tensors.insert(name, (view.shape().to_vec(), data));
        }
        CpuDia::from_tensors(&cfg, tensors)
    }

    pub fn from_tensors(cfg_json: &str, tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>) -> CpuDia {
        let weights = tensors
            .into_iter()
            .map(|(name, (shape, data))| (name, (shape, data.into_iter().map(f64::from).collect())))
            .collect();
        CpuDia {
            cfg: CpuDiaConfig::parse(cfg_json),
            cross_rope: false,
            weights,
        }
    }

    /// Encoder output `[L, enc_hidden]` for one unpadded text (full attention, positions 0..L−1).
    pub fn encode(&self, ids: &[u32]) -> Vec<f64> {
        let c = &self.cfg;
        let hid = c.enc_hidden;
        let emb = self.w("model.encoder.embedding.weight", &[c.text_vocab, hid]);
        let mut x = Vec::with_capacity(ids.len() * hid);
        for &id in ids {
            assert!((id as usize) < c.text_vocab, "text token {id} out of range");
            x.extend_from_slice(&emb[id as usize * hid..][..hid]);
        }
        let pos: Vec<usize> = (0..ids.len()).collect();
        for i in 0..c.enc_layers {
            let p = format!("model.encoder.layers.{i}.");
            let h = rms_norm(&x, self.w(&format!("{p}pre_sa_norm.weight"), &[hid]), c.enc_eps);
            let sa = self.self_attention(
                &h,
                &pos,
                &format!("{p}self_attention."),
                hid,
                c.enc_attn,
                c.enc_theta,
                false,
            );
            add(&mut x, &sa);
            let h = rms_norm(&x, self.w(&format!("{p}post_sa_norm.weight"), &[hid]), c.enc_eps);
            add(&mut x, &self.mlp(&h, &format!("{p}mlp."), hid));
        }
        rms_norm(&x, self.w("model.encoder.norm.weight", &[hid]), c.enc_eps)
    }

    /// Logits `[T, C, V]` for the delayed audio rows `rows` (`[T, C]`) fed at positions 0..T−1 with a causal
    /// mask. `uncond`: those of the CFG unconditional row, whose text is `ids.len()` zero bytes (docs/model.md §3.2).
    pub fn teacher_forced_logits(&self, ids: &[u32], rows: &[u32], uncond: bool) -> Vec<f64> {
        let c = &self.cfg;
        let (hid, nc, vocab) = (c.dec_hidden, c.channels, c.vocab);
        let zeros = vec![0u32; ids.len()];
        let enc = self.encode(if uncond { &zeros } else { ids });
        assert_eq!(rows.len() % nc, 0, "rows must be [T, {nc}]");
        let t = rows.len() / nc;
        // The C embedding tables are stacked: channel c's token k is row c·V + k.
        let emb = self.w("model.decoder.embeddings.embed.weight", &[nc * vocab, hid]);
        let mut x = vec![0.0; t * hid];
        for (r, row) in rows.chunks(nc).enumerate() {
            for (ch, &tok) in row.iter().enumerate() {
                assert!((tok as usize) < vocab, "audio token {tok} out of range");
                add(
                    &mut x[r * hid..][..hid],
                    &emb[(ch * vocab + tok as usize) * hid..][..hid],
                );
            }
        }
        let pos: Vec<usize> = (0..t).collect();
        for i in 0..c.dec_layers {
            let p = format!("model.decoder.layers.{i}.");
            let h = rms_norm(&x, self.w(&format!("{p}pre_sa_norm.weight"), &[hid]), c.dec_eps);
            let sa = self.self_attention(
                &h,
                &pos,
                &format!("{p}self_attention."),
                hid,
                c.dec_attn,
                c.dec_theta,
                true,
            );
            add(&mut x, &sa);
            let h = rms_norm(&x, self.w(&format!("{p}pre_ca_norm.weight"), &[hid]), c.dec_eps);
            add(
                &mut x,
                &self.cross_attention(&h, &enc, &pos, &format!("{p}cross_attention.")),
            );
            let h = rms_norm(&x, self.w(&format!("{p}pre_mlp_norm.weight"), &[hid]), c.dec_eps);
            add(&mut x, &self.mlp(&h, &format!("{p}mlp."), hid));
        }
        let h = rms_norm(&x, self.w("model.decoder.norm.weight", &[hid]), c.dec_eps);
        linear(&h, self.w("logits_dense.weight", &[nc * vocab, hid]), nc * vocab, hid)
    }

    /// Weight `name`, checked to have `shape`.
    fn w(&self, name: &str, shape: &[usize]) -> &[f64] {
        let (have, data) = self
            .weights
            .get(name)
            .unwrap_or_else(|| panic!("missing weight {name}"));
        assert_eq!(have, shape, "weight {name}: shape");
        data
    }

    fn self_attention(
        &self,
        x: &[f64],
        pos: &[usize],
        p: &str,
        hid: usize,
        s: AttnShape,
        theta: f64,
        causal: bool,
    ) -> Vec<f64> {
        let (qd, kvd) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
        let mut q = linear(x, self.w(&format!("{p}q_proj.weight"), &[qd, hid]), qd, hid);
        let mut k = linear(x, self.w(&format!("{p}k_proj.weight"), &[kvd, hid]), kvd, hid);
        let v = linear(x, self.w(&format!("{p}v_proj.weight"), &[kvd, hid]), kvd, hid);
        rope(&mut q, pos, s.heads, s.head_dim, theta);
        rope(&mut k, pos, s.kv_heads, s.head_dim, theta);
        let o = attention(&q, &k, &v, pos.len(), pos.len(), s, |i, j| !causal || j <= i);
        linear(&o, self.w(&format!("{p}o_proj.weight"), &[hid, qd]), hid, qd)
    }

    /// Decoder rows `x` at positions `pos` attend every encoder position of `enc`.
    fn cross_attention(&self, x: &[f64], enc: &[f64], pos: &[usize], p: &str) -> Vec<f64> {
        let c = &self.cfg;
        let s = c.cross_attn;
        let (qd, kvd, hid, ehid) = (
            s.heads * s.head_dim,
            s.kv_heads * s.head_dim,
            c.dec_hidden,
            c.enc_hidden,
        );
        let mut q = linear(x, self.w(&format!("{p}q_proj.weight"), &[qd, hid]), qd, hid);
        let mut k = linear(enc, self.w(&format!("{p}k_proj.weight"), &[kvd, ehid]), kvd, ehid);
        let v = linear(enc, self.w(&format!("{p}v_proj.weight"), &[kvd, ehid]), kvd, ehid);
        let enc_len = enc.len() / ehid;
        if self.cross_rope {
            let enc_pos: Vec<usize> = (0..enc_len).collect();
            rope(&mut q, pos, s.heads, s.head_dim, c.dec_theta);
            rope(&mut k, &enc_pos, s.kv_heads, s.head_dim, c.dec_theta);
        }
        let o = attention(&q, &k, &v, pos.len(), enc_len, s, |_, _| true);
        linear(&o, self.w(&format!("{p}o_proj.weight"), &[hid, qd]), hid, qd)
    }

    /// SwiGLU: `gate_up_proj` holds the gate rows, then the up rows.
    fn mlp(&self, x: &[f64], p: &str, hid: usize) -> Vec<f64> {
        let inter = self.weights[&format!("{p}gate_up_proj.weight")].0[0] / 2;
        let gu = linear(
            x,
            self.w(&format!("{p}gate_up_proj.weight"), &[2 * inter, hid]),
            2 * inter,
            hid,
        );
        let act: Vec<f64> = gu
            .chunks(2 * inter)
            .flat_map(|row| (0..inter).map(move |i| row[i] / (1.0 + (-row[i]).exp()) * row[inter + i]))
            .collect();
        linear(&act, self.w(&format!("{p}down_proj.weight"), &[hid, inter]), hid, inter)
    }
}

fn add(x: &mut [f64], y: &[f64]) {
    assert_eq!(x.len(), y.len());
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// `x [rows, inp] · wᵀ` with `w [out, inp]` (nn.Linear, no bias).
fn linear(x: &[f64], w: &[f64], out: usize, inp: usize) -> Vec<f64> {
    assert_eq!(x.len() % inp, 0);
    x.chunks(inp)
        .flat_map(|row| {
            w.chunks(inp)
                .take(out)
                .map(move |wr| row.iter().zip(wr).map(|(a, b)| a * b).sum::<f64>())
        })
        .collect()
}

fn rms_norm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    x.chunks(w.len())
        .flat_map(|row| {
            let inv = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / row.len() as f64 + eps).sqrt();
            row.iter().zip(w).map(move |(v, g)| v * inv * g)
        })
        .collect()
}

/// Half-split ("rotate_half") RoPE in place on `x [rows, heads·d]`, row r at position `pos[r]`.
fn rope(x: &mut [f64], pos: &[usize], heads: usize, d: usize, theta: f64) {
    let half = d / 2;
    for (r, &p) in pos.iter().enumerate() {
        for i in 0..half {
            // PyTorch builds the angle in f32: inv_freq = 1/θ^(2i/d), angle = pos·inv_freq.
            let inv_freq = 1.0f32 / (theta as f32).powf((2 * i) as f32 / d as f32);
            let (sin, cos) = f64::from(p as f32 * inv_freq).sin_cos();
            for h in 0..heads {
                let base = (r * heads + h) * d;
                let (a, b) = (x[base + i], x[base + half + i]);
                x[base + i] = a * cos - b * sin;
                x[base + half + i] = b * cos + a * sin;
            }
        }
    }
}

/// softmax(q·kᵀ)·v per head with scale 1 and GQA (query head h reads kv head h / (heads / kv_heads));
/// key j is visible to query i iff `allowed(i, j)`. q `[tq, heads·d]`, k/v `[tk, kv_heads·d]`.
fn attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    tq: usize,
    tk: usize,
    s: AttnShape,
    allowed: impl Fn(usize, usize) -> bool,
) -> Vec<f64> {
    let (hq, hkv, d) = (s.heads, s.kv_heads, s.head_dim);
    let group = hq / hkv;
    let mut out = vec![0.0; tq * hq * d];
    let mut p = vec![0.0; tk];
    for i in 0..tq {
        for h in 0..hq {
            let qi = &q[(i * hq + h) * d..][..d];
            let kv_off = |j: usize| (j * hkv + h / group) * d;
            for (j, pj) in p.iter_mut().enumerate() {
                *pj = if allowed(i, j) {
                    qi.iter().zip(&k[kv_off(j)..][..d]).map(|(a, b)| a * b).sum()
                } else {
                    f64::NEG_INFINITY
                };
            }
            let max = p.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            p.iter_mut().for_each(|x| *x = (*x - max).exp());
            let sum: f64 = p.iter().sum();
            let o = &mut out[(i * hq + h) * d..][..d];
            for (j, pj) in p.iter().enumerate() {
                o.iter_mut()
                    .zip(&v[kv_off(j)..][..d])
                    .for_each(|(a, b)| *a += pj / sum * b);
            }
        }
    }
    out
}
