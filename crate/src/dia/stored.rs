//! Dia checkpoints in a storage format: each tensor as a numerics mode keeps it, so that a converted checkpoint
//! (`dia-tts convert`, or the browser's weight store) loads in that mode with nothing left to round.
//!
//! Per HF-layout tensor, by `MatrixRole::format` in the mode: norms stay F32; a matrix in `WeightFormat::F32`
//! is F32, in `F16` it is F16, in a quantized format it is the pair `<base>.qweight` / `<base>.scales`
//! (`quant::stored`). Loading such a checkpoint in its mode writes exactly what quantizing on load would
//! (the same `quant::quantize_rows`, and f16 → f32 → f16 is exact).

use crate::kernels::{Numerics, WeightFormat};
use crate::quant::{quantize_rows, stored};
use crate::weights::Dtype;

use super::layout::TensorValues;

use super::{DiaError, MatrixRole};

/// One tensor as a safetensors file holds it: name, dtype, shape and little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// Safetensors metadata key naming the mode a converted checkpoint was written for ("f32", "f16w", "q8", "q4").
pub const NUMERICS_METADATA_KEY: &str = "dia_webgpu.numerics";

/// How `numerics` stores the HF-layout tensor `name`: F32 for norms, else the matrix's weight format.
pub fn storage_format(name: &str, numerics: Numerics) -> WeightFormat {
    MatrixRole::of_tensor(name).map_or(WeightFormat::F32, |role| role.format(numerics))
}

/// The stored form of one HF-layout tensor (`shape` `[rows, cols]` for matrices) in `numerics`: one tensor, or a
/// quantized matrix's two. A matrix already quantized in the wanted format is kept as it is.
pub fn stored_form(name: &str, shape: &[usize], values: TensorValues, numerics: Numerics) -> Result<Vec<StoredTensor>, DiaError> {
    let one = |dtype: Dtype, bytes: Vec<u8>| vec![StoredTensor { name: name.to_string(), dtype, shape: shape.to_vec(), bytes }];
    match storage_format(name, numerics) {
        WeightFormat::F32 => Ok(one(Dtype::F32, values.into_f32().iter().flat_map(|v| v.to_le_bytes()).collect())),
        WeightFormat::F16 => Ok(one(Dtype::F16, values.into_f32().iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect())),
        WeightFormat::Quant(format) => {
            let [rows, cols] = *shape else {
                return Err(DiaError::WrongShape { name: name.to_string(), expected: vec![0, 0], found: shape.to_vec() });
            };
            let q = match values {
                TensorValues::Quant(q) if q.format == format && q.rows == rows && q.cols == cols => q,
                values => quantize_rows(&values.into_f32(), rows, cols, format).map_err(|source| DiaError::Quantization { name: name.to_string(), source })?,
            };
            let (values_name, scales_name) = stored::part_names(name).ok_or_else(|| DiaError::UnexpectedTensor(name.to_string()))?;
            let ((vbytes, vshape), (sbytes, sshape)) = stored::to_parts(&q);
            Ok(vec![
                StoredTensor { name: values_name, dtype: Dtype::U32, shape: vshape.to_vec(), bytes: vbytes },
                StoredTensor { name: scales_name, dtype: Dtype::F16, shape: sshape.to_vec(), bytes: sbytes },
            ])
        }
    }
}

/// Rows converted at a time by `stored_form_from_bytes`.
const BLOCK_ROWS: usize = 64;

/// `stored_form` straight from a tensor's stored bytes (`dtype` F32, BF16 or F16, little-endian), converting
/// `BLOCK_ROWS` rows at a time: only the input, the output and one block are in memory, never the whole tensor as
/// f32 (in the browser a wasm heap grows to its peak and stays there). Gives exactly what `stored_form` gives.
pub fn stored_form_from_bytes(name: &str, dtype: Dtype, shape: &[usize], bytes: &[u8], numerics: Numerics) -> Result<Vec<StoredTensor>, DiaError> {
    let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    if !dtype.is_float_readable() || numel.and_then(|n| n.checked_mul(dtype.size_bytes() as usize)) != Some(bytes.len()) {
        // Let the whole-tensor conversion name the problem.
        crate::weights::tensor_to_f32(name, dtype, shape, bytes)?;
    }
    let (rows, cols) = match shape {
        [rows, cols] => (*rows, *cols),
        _ => (1, numel.unwrap_or(0)),
    };
    let elem = dtype.size_bytes() as usize;
    let block = |r0: usize| -> Result<Vec<f32>, DiaError> {
        let r1 = (r0 + BLOCK_ROWS).min(rows);
        Ok(crate::weights::tensor_to_f32(name, dtype, &[r1 - r0, cols], &bytes[r0 * cols * elem..r1 * cols * elem])?)
    };
    let one = |dtype: Dtype, bytes: Vec<u8>| vec![StoredTensor { name: name.to_string(), dtype, shape: shape.to_vec(), bytes }];
    match storage_format(name, numerics) {
        WeightFormat::F32 | WeightFormat::F16 if cols == 0 || rows == 0 => stored_form(name, shape, TensorValues::F32(Vec::new()), numerics),
        WeightFormat::F32 => {
            let mut out = Vec::with_capacity(rows * cols * 4);
            for r0 in (0..rows).step_by(BLOCK_ROWS) {
                out.extend(block(r0)?.iter().flat_map(|v| v.to_le_bytes()));
            }
            Ok(one(Dtype::F32, out))
        }
        WeightFormat::F16 => {
            let mut out = Vec::with_capacity(rows * cols * 2);
            for r0 in (0..rows).step_by(BLOCK_ROWS) {
                out.extend(block(r0)?.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()));
            }
            Ok(one(Dtype::F16, out))
        }
        WeightFormat::Quant(format) => {
            if shape.len() != 2 {
                return Err(DiaError::WrongShape { name: name.to_string(), expected: vec![0, 0], found: shape.to_vec() });
            }
            let mut q = crate::quant::QuantizedRows { format, rows, cols, values: Vec::new(), scales: Vec::new() };
            for r0 in (0..rows).step_by(BLOCK_ROWS) {
                let data = block(r0)?;
                let part = quantize_rows(&data, data.len() / cols.max(1), cols, format).map_err(|source| {
                    let source = match source {
                        crate::quant::QuantError::NonFinite { row, col, value } => crate::quant::QuantError::NonFinite { row: row + r0, col, value },
                        crate::quant::QuantError::ScaleOverflow { row, group, max } => crate::quant::QuantError::ScaleOverflow { row: row + r0, group, max },
                        e => e,
                    };
                    DiaError::Quantization { name: name.to_string(), source }
                })?;
                q.values.extend(part.values);
                q.scales.extend(part.scales);
            }
            stored_form(name, shape, TensorValues::Quant(q), numerics)
        }
    }
}

/// The names, dtypes and shapes `stored_form` gives `name` (nothing computed): for sizing files before writing.
pub fn stored_layout(name: &str, shape: &[usize], numerics: Numerics) -> Vec<(String, Dtype, Vec<usize>)> {
    match (storage_format(name, numerics), shape, stored::part_names(name)) {
        (WeightFormat::Quant(format), &[rows, cols], Some((values, scales))) => vec![
            (values, Dtype::U32, vec![rows, format.value_words(cols as u32) as usize]),
            (scales, Dtype::F16, vec![rows, format.groups(cols as u32) as usize]),
        ],
        (WeightFormat::F16, _, _) => vec![(name.to_string(), Dtype::F16, shape.to_vec())],
        _ => vec![(name.to_string(), Dtype::F32, shape.to_vec())],
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub use convert::{convert_dir, ConvertReport};

#[cfg(not(target_arch = "wasm32"))]
mod convert {
    use std::borrow::Cow;
    use std::cell::RefCell;
    use std::collections::{BTreeMap, HashMap};
    use std::path::{Path, PathBuf};
    use std::rc::Rc;

    use super::{stored_form, stored_layout, NUMERICS_METADATA_KEY};
    use crate::config::DiaConfig;
    use crate::dia::DiaError;
    use crate::kernels::Numerics;
    use crate::dia::layout::DiaWeights;
    use crate::weights::{Checkpoint, Dtype};

    /// What `convert_dir` wrote.
    #[derive(Debug, Clone)]
    pub struct ConvertReport {
        pub out_dir: PathBuf,
        /// Bytes of the written `model.safetensors`.
        pub bytes: u64,
        /// Tensors in it.
        pub tensors: usize,
    }

    /// The conversion shared by all lazily written tensors: the source, and the second halves of quantized
    /// matrices computed with their first (safetensors writes every U32 tensor before any F16 one).
    struct Source<'a> {
        weights: DiaWeights<'a>,
        numerics: Numerics,
        waiting: RefCell<HashMap<String, Vec<u8>>>,
        error: RefCell<Option<DiaError>>,
        done: RefCell<usize>,
        progress: RefCell<&'a mut dyn FnMut(usize, &str)>,
    }

    /// One output tensor, produced when the writer reaches it, so only one source tensor is in memory at a time.
    struct LazyTensor<'a> {
        source: Rc<Source<'a>>,
        /// The HF tensor it comes from, and its shape.
        hf_name: String,
        hf_shape: Vec<usize>,
        name: String,
        dtype: safetensors::Dtype,
        shape: Vec<usize>,
        len: usize,
    }

    impl safetensors::View for LazyTensor<'_> {
        fn dtype(&self) -> safetensors::Dtype {
            self.dtype
        }
        fn shape(&self) -> &[usize] {
            &self.shape
        }
        fn data_len(&self) -> usize {
            self.len
        }
        fn data(&self) -> Cow<'_, [u8]> {
            let src = &self.source;
            if let Some(bytes) = src.waiting.borrow_mut().remove(&self.name) {
                return Cow::Owned(bytes);
            }
            let produced = (|| {
                let values = src.weights.read_values(&self.hf_name)?;
                stored_form(&self.hf_name, &self.hf_shape, values, src.numerics)
            })();
            *src.done.borrow_mut() += 1;
            (src.progress.borrow_mut())(*src.done.borrow(), &self.hf_name);
            match produced {
                Ok(parts) => {
                    let mut mine = None;
                    for part in parts {
                        if part.name == self.name {
                            mine = Some(part.bytes);
                        } else {
                            src.waiting.borrow_mut().insert(part.name, part.bytes);
                        }
                    }
                    Cow::Owned(mine.filter(|b| b.len() == self.len).unwrap_or_else(|| vec![0; self.len]))
                }
                Err(e) => {
                    src.error.borrow_mut().get_or_insert(e);
                    // The file is discarded; keep its length consistent until then.
                    Cow::Owned(vec![0; self.len])
                }
            }
        }
    }

    fn to_safetensors_dtype(dtype: Dtype) -> safetensors::Dtype {
        match dtype {
            Dtype::U32 => safetensors::Dtype::U32,
            Dtype::F16 => safetensors::Dtype::F16,
            _ => safetensors::Dtype::F32,
        }
    }

    /// Converts the Dia checkpoint in `src` (config.json + safetensors, HF or nari layout, F32/BF16/F16, single or
    /// sharded) to `out` (config.json + model.safetensors in the HF layout) stored as `numerics` keeps it.
    /// Tensors are read, converted and written one at a time. `out` must not exist; it appears only when
    /// complete (written beside it under a temporary name, then renamed). `progress(done, name)` is called
    /// after each source tensor.
    pub fn convert_dir(src: &Path, out: &Path, numerics: Numerics, progress: &mut dyn FnMut(usize, &str)) -> Result<ConvertReport, DiaError> {
        let (cfg, config_text) = DiaConfig::from_dir_with_text(src).map_err(|e| DiaError::Config(e.to_string()))?;
        let ckpt = Checkpoint::open_dir(src)?;
        let weights = DiaWeights::new(&ckpt, &cfg)?;
        weights.validate()?;
        let already = weights.quantized_formats()?;
        if !already.is_empty() {
            let formats: Vec<&str> = already.into_iter().collect();
            return Err(DiaError::BadOptions(format!(
                "{} is already a converted checkpoint ({} matrices): convert from the original f32/bf16/f16 checkpoint, so that nothing is rounded twice",
                src.display(),
                formats.join(" and ")
            )));
        }
        if out.exists() {
            return Err(DiaError::BadOptions(format!("{} already exists: give a new directory", out.display())));
        }
        let name = out.file_name().ok_or_else(|| DiaError::BadOptions(format!("{} does not name a directory", out.display())))?;
        let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !parent.is_dir() {
            return Err(DiaError::BadOptions(format!("{}: the directory {} does not exist", out.display(), parent.display())));
        }
        let tmp = parent.join(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
        let io = |what: &Path, e: std::io::Error| DiaError::Io(format!("cannot write {}: {e}", what.display()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp).map_err(|e| io(&tmp, e))?;
        let result = (|| {
            std::fs::write(tmp.join("config.json"), &config_text).map_err(|e| io(&tmp, e))?;
            let expected = crate::dia::layout::expected_hf_tensors(&cfg);
            let source = Rc::new(Source {
                weights,
                numerics,
                waiting: RefCell::new(HashMap::new()),
                error: RefCell::new(None),
                done: RefCell::new(0),
                progress: RefCell::new(progress),
            });
            let mut tensors = Vec::new();
            for (hf_name, hf_shape) in &expected {
                for (name, dtype, shape) in stored_layout(hf_name, hf_shape, numerics) {
                    let len = shape.iter().product::<usize>() * dtype.size_bytes() as usize;
                    let lazy = LazyTensor { source: source.clone(), hf_name: hf_name.clone(), hf_shape: hf_shape.clone(), name: name.clone(), dtype: to_safetensors_dtype(dtype), shape, len };
                    tensors.push((name, lazy));
                }
            }
            let count = tensors.len();
            let metadata: BTreeMap<String, String> =
                [("format".to_string(), "pt".to_string()), (NUMERICS_METADATA_KEY.to_string(), numerics.name().to_string())].into();
            let file = tmp.join("model.safetensors");
            safetensors::serialize_to_file(tensors, Some(metadata.into_iter().collect()), &file)
                .map_err(|e| DiaError::Io(format!("cannot write {}: {e}", file.display())))?;
            if let Some(e) = source.error.borrow_mut().take() {
                return Err(e);
            }
            let bytes = std::fs::metadata(&file).map_err(|e| io(&file, e))?.len();
            Ok((bytes, count))
        })();
        match result {
            Ok((bytes, tensors)) => {
                std::fs::rename(&tmp, out).map_err(|e| {
                    let _ = std::fs::remove_dir_all(&tmp);
                    io(out, e)
                })?;
                Ok(ConvertReport { out_dir: out.to_path_buf(), bytes, tensors })
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(e)
            }
        }
    }
}
