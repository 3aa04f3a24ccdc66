//! The DAC checkpoint layout (HF `DacModel` names, spec §5.6) derived from a `DacConfig`, its validation
//! from names and shapes alone (before any data is read), and weight-norm folding.
use std::collections::BTreeMap;

use crate::config::DacConfig;

use super::DacError;

/// Dilations of the three residual units of every block.
pub const RES_DILATIONS: [u32; 3] = [1, 3, 9];

/// One logical tensor of the codec, with weight norm folded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// HF name, e.g. `decoder.block.0.conv_t1.weight`.
    pub name: String,
    pub shape: Vec<usize>,
    /// A convolution weight, which a checkpoint may also hold weight-normed: `<base>.weight_g` +
    /// `<base>.weight_v`, or `<base>.parametrizations.weight.original0` (g) + `original1` (v).
    pub weight_norm: bool,
}

/// Input and output widths of the encoder's blocks: block i maps enc·2^i → enc·2^(i+1) channels.
pub fn encoder_widths(cfg: &DacConfig) -> Vec<(usize, usize)> {
    (0..cfg.downsampling_ratios.len()).map(|i| (cfg.encoder_hidden << i, cfg.encoder_hidden << (i + 1))).collect()
}

/// Input and output widths of the decoder's blocks: block j maps ⌊dec/2^j⌋ → ⌊dec/2^(j+1)⌋ channels.
pub fn decoder_widths(cfg: &DacConfig) -> Vec<(usize, usize)> {
    (0..cfg.upsampling_ratios.len()).map(|j| (cfg.decoder_hidden >> j, cfg.decoder_hidden >> (j + 1))).collect()
}

/// Checks what the codec needs of a config (`DacConfig::validate`: no zero sizes, hop = ratio products,
/// a decoder width that halves cleanly per block).
pub fn validate_config(cfg: &DacConfig) -> Result<(), DacError> {
    Ok(cfg.validate()?)
}

/// Every tensor the codec needs, in checkpoint order (encoder, quantizer, decoder).
pub fn dac_tensor_specs(cfg: &DacConfig) -> Vec<TensorSpec> {
    fn conv(out: &mut Vec<TensorSpec>, base: &str, shape: [usize; 3]) {
        out.push(TensorSpec { name: format!("{base}.weight"), shape: shape.to_vec(), weight_norm: true });
        // ConvTranspose weights are [cin, cout, k]: the bias follows axis 1.
        let bias_len = if base.ends_with("conv_t1") { shape[1] } else { shape[0] };
        out.push(TensorSpec { name: format!("{base}.bias"), shape: vec![bias_len], weight_norm: false });
    }
    fn alpha(out: &mut Vec<TensorSpec>, name: String, c: usize) {
        out.push(TensorSpec { name, shape: vec![1, c, 1], weight_norm: false });
    }
    fn res_units(out: &mut Vec<TensorSpec>, p: &str, c: usize) {
        for r in 1..=RES_DILATIONS.len() {
            alpha(out, format!("{p}.res_unit{r}.snake1.alpha"), c);
            conv(out, &format!("{p}.res_unit{r}.conv1"), [c, c, 7]);
            alpha(out, format!("{p}.res_unit{r}.snake2.alpha"), c);
            conv(out, &format!("{p}.res_unit{r}.conv2"), [c, c, 1]);
        }
    }
    let mut out = Vec::new();

    conv(&mut out, "encoder.conv1", [cfg.encoder_hidden, 1, 7]);
    for (i, (&s, (cin, cout))) in cfg.downsampling_ratios.iter().zip(encoder_widths(cfg)).enumerate() {
        let p = format!("encoder.block.{i}");
        res_units(&mut out, &p, cin);
        alpha(&mut out, format!("{p}.snake1.alpha"), cin);
        conv(&mut out, &format!("{p}.conv1"), [cout, cin, 2 * s]);
    }
    let enc_last = encoder_widths(cfg).last().map_or(cfg.encoder_hidden, |w| w.1);
    alpha(&mut out, "encoder.snake1.alpha".into(), enc_last);
    conv(&mut out, "encoder.conv2", [cfg.latent, enc_last, 3]);

    let d = cfg.codebook_dim;
    for i in 0..cfg.n_codebooks {
        let p = format!("quantizer.quantizers.{i}");
        conv(&mut out, &format!("{p}.in_proj"), [d, cfg.latent, 1]);
        conv(&mut out, &format!("{p}.out_proj"), [cfg.latent, d, 1]);
        out.push(TensorSpec { name: format!("{p}.codebook.weight"), shape: vec![cfg.codebook_size, d], weight_norm: false });
    }

    conv(&mut out, "decoder.conv1", [cfg.decoder_hidden, cfg.latent, 7]);
    for (j, (&s, (cin, cout))) in cfg.upsampling_ratios.iter().zip(decoder_widths(cfg)).enumerate() {
        let p = format!("decoder.block.{j}");
        alpha(&mut out, format!("{p}.snake1.alpha"), cin);
        conv(&mut out, &format!("{p}.conv_t1"), [cin, cout, 2 * s]);
        res_units(&mut out, &p, cout);
    }
    let dec_last = decoder_widths(cfg).last().map_or(cfg.decoder_hidden, |w| w.1);
    alpha(&mut out, "decoder.snake1.alpha".into(), dec_last);
    conv(&mut out, "decoder.conv2", [1, dec_last, 7]);
    out
}

/// Which part of a logical tensor a stored checkpoint tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    Whole,
    /// Weight-norm magnitude, one value per slice of axis 0.
    G,
    /// Weight-norm direction, the logical shape.
    V,
}

/// Maps a stored name to (logical name, part).
pub(crate) fn resolve(stored: &str) -> (String, Part) {
    for (suffix, part) in [
        (".weight_g", Part::G),
        (".weight_v", Part::V),
        (".parametrizations.weight.original0", Part::G),
        (".parametrizations.weight.original1", Part::V),
    ] {
        if let Some(base) = stored.strip_suffix(suffix) {
            return (format!("{base}.weight"), part);
        }
    }
    (stored.to_string(), Part::Whole)
}

/// Checks a stored tensor's shape against its logical spec.
pub(crate) fn check_part_shape(spec: &TensorSpec, stored: &str, part: Part, shape: &[usize]) -> Result<(), DacError> {
    let expected: Vec<usize> = match part {
        Part::Whole | Part::V => spec.shape.clone(),
        // g keeps the weight's rank with size-1 axes (PyTorch); a flat [rows] is accepted too.
        Part::G => {
            let flat = shape.len() == 1 && shape[0] == spec.shape[0];
            if flat {
                return Ok(());
            }
            let mut g = vec![1; spec.shape.len()];
            g[0] = spec.shape[0];
            g
        }
    };
    if shape != expected.as_slice() {
        return Err(DacError::WrongShape { name: stored.to_string(), expected, found: shape.to_vec() });
    }
    Ok(())
}

/// Validates a checkpoint from its names and shapes alone: every spec present exactly once (plain or as a
/// g/v pair), every shape right, nothing unknown. Reads no data.
pub fn check_dac_layout<'a>(cfg: &DacConfig, tensors: impl IntoIterator<Item = (&'a str, &'a [usize])>) -> Result<(), DacError> {
    validate_config(cfg)?;
    let specs: BTreeMap<String, TensorSpec> = dac_tensor_specs(cfg).into_iter().map(|s| (s.name.clone(), s)).collect();
    let mut seen: BTreeMap<String, Vec<Part>> = BTreeMap::new();
    for (stored, shape) in tensors {
        let (logical, part) = resolve(stored);
        let spec = match specs.get(&logical) {
            Some(s) if part == Part::Whole || s.weight_norm => s,
            _ => return Err(DacError::UnexpectedTensor(stored.to_string())),
        };
        check_part_shape(spec, stored, part, shape)?;
        let parts = seen.entry(logical).or_default();
        if parts.contains(&part) || (part == Part::Whole && !parts.is_empty()) || parts.contains(&Part::Whole) {
            return Err(DacError::DuplicateTensor { name: stored.to_string() });
        }
        parts.push(part);
    }
    let missing: Vec<String> = specs
        .values()
        .flat_map(|s| {
            let parts = seen.get(&s.name).map(Vec::as_slice).unwrap_or(&[]);
            let whole = parts.contains(&Part::Whole);
            match (whole, parts.contains(&Part::G), parts.contains(&Part::V)) {
                (true, _, _) | (false, true, true) => vec![],
                (false, true, false) => vec![s.name.replace(".weight", ".weight_v (or original1)")],
                (false, false, true) => vec![s.name.replace(".weight", ".weight_g (or original0)")],
                (false, false, false) => vec![s.name.clone()],
            }
        })
        .collect();
    if let Some(first) = missing.first() {
        return Err(DacError::MissingTensor { name: first.clone(), count: missing.len() });
    }
    Ok(())
}

/// W = g · V / ‖V‖₂ with the norm over all axes but 0 (no epsilon), V `[rows, …]` flattened, g `[rows]`.
pub fn fold_weight_norm(g: &[f32], v: &[f32], rows: usize) -> Vec<f32> {
    assert_eq!(g.len(), rows, "weight-norm g length");
    assert!(rows > 0 && v.len().is_multiple_of(rows), "weight-norm v length");
    let n = v.len() / rows;
    let mut w = Vec::with_capacity(v.len());
    for (r, row) in v.chunks(n).enumerate() {
        let norm = row.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
        let scale = g[r] as f64 / norm;
        w.extend(row.iter().map(|&x| (x as f64 * scale) as f32));
    }
    w
}
