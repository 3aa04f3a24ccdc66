//! Block quantization of weight matrices, q8 and q4: the formats are defined here and nowhere else (the kernels
//! in `kernels::linear` read what `QuantizedRows::gpu_rows` writes; the converter writes `QuantizedRows`).
//!
//! A matrix `[rows, cols]` is quantized row by row along the columns (the reduction dimension K of `linear`):
//! each row is cut into groups of `group` (32 or 64) consecutive columns, the last one padded with zeros when
//! `cols` is no multiple of the group. A group stores one f16 scale `s` and one signed integer `q` per weight, and
//! stands for the weights `q · s` (symmetric: no zero point), with `q` in `[-Q, Q - 1]`, `Q` = 128 (q8) or 8 (q4):
//! - scale: `s = f16(m / -Q)`, `m` the group's weight of largest magnitude (the first one on ties), so `m` itself is
//!   `-Q · s` and the whole two's-complement range is used (for q4 that is 16 levels, not 15: on the fixture's
//!   matrices 11 % less error than `max |w| / 7`; `s` is negative when `m` is positive);
//! - q4 only: of the scales `f16(f · m / -8)`, f in {1, 0.95, 0.9, 0.85, 0.8} (`Q4_SCALE_FRACTIONS`), the group takes
//!   the one whose grid holds it with the least squared error (the first on ties, so the one above unless a smaller
//!   one does better). A smaller scale clips the group's extremes for a finer grid under the rest: on the fixture's
//!   (Gaussian) matrices this took q4's teacher-forced logits error from 0.26 / 0.37 / 0.32 to 0.24 / 0.28 / 0.27
//!   (`tests/parity.rs`), at half the quantization speed (~55 M weights per second on one core here, from ~115);
//!   fractions below 0.8 never won there;
//! - values: `q = round(w / s)` (f32 division, ties away from zero), clamped to `[-Q, Q - 1]` (weights of the other
//!   sign than `m` may reach `+Q · |s|` and are clamped one step; under a smaller q4 scale the extremes clip);
//!   a group whose scale is 0 stores `q = 0`.
//!
//! So rounding is to the nearest point of the grid that the stored scale defines, deterministic on every machine
//! (IEEE arithmetic and f16 rounding only, in a fixed order). Non-finite weights, or a group whose scale overflows f16
//! (max |w| above 65504·Q), are a `QuantError`.
//!
//! Why no zero point: at the same 4.5 bits per weight, symmetric groups of 32 err less than groups of 64 with an f16
//! zero point (relative rms weight error on the fixture's matrices 0.086 against 0.087; groups of 32 with a zero
//! point, at 5 bits, reach 0.078).
//!
//! Packing: `q` is stored offset-binary, `u = q + 128` in a byte (q8) or `u = q + 8` in a nibble (q4), in
//! little-endian fields of u32 words: column `c` of a row is field `c % F` (lowest bits first) of value word
//! `c / F`, F = 4 bytes or 8 nibbles per word. Padding columns hold `q = 0`.
//!
//! On the GPU (`QuantizedRows::gpu_rows`, the layout of a quantized `GpuMatrix`) each row is
//! `[value words][scale words][zero words]`: the row's `groups · group · bits / 32` value words (whole 16-byte
//! blocks), then its scales as f16 pairs (low half = even group), then zero words up to a multiple of 4 words,
//! so every row starts 16-byte aligned and a row's bytes, scales included, are contiguous.

use half::f16;

/// Bits per weight of a quantized format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantBits {
    Q8,
    Q4,
}

/// A block-quantized storage format: bits per weight and weights per f16 scale (32 or 64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuantFormat {
    bits: QuantBits,
    group: u32,
}

/// Why a matrix could not be quantized.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantError {
    #[error("weight at row {row}, column {col} is {value}: only finite weights can be quantized")]
    NonFinite { row: usize, col: usize, value: f32 },
    #[error("row {row}, group {group}: largest |weight| {max} needs a scale beyond f16's range")]
    ScaleOverflow { row: usize, group: usize, max: f32 },
    #[error("{len} values given for a {rows} × {cols} matrix")]
    Length { len: usize, rows: usize, cols: usize },
}

impl QuantFormat {
    /// 8-bit weights, one f16 scale per 32.
    pub const Q8: QuantFormat = QuantFormat { bits: QuantBits::Q8, group: 32 };
    /// 4-bit weights, one f16 scale per 32.
    pub const Q4: QuantFormat = QuantFormat { bits: QuantBits::Q4, group: 32 };

    /// `bits` with `group` weights per scale; None unless the group is 32 or 64.
    pub const fn new(bits: QuantBits, group: u32) -> Option<QuantFormat> {
        if group == 32 || group == 64 { Some(QuantFormat { bits, group }) } else { None }
    }

    pub fn bits(self) -> QuantBits {
        self.bits
    }

    /// Weights per scale.
    pub fn group(self) -> u32 {
        self.group
    }

    /// Bits per stored weight.
    pub fn bit_width(self) -> u32 {
        match self.bits {
            QuantBits::Q8 => 8,
            QuantBits::Q4 => 4,
        }
    }

    /// `Q`: q lies in `[-Q, Q - 1]`, and is stored as `q + Q` (offset-binary).
    pub fn half_range(self) -> i32 {
        match self.bits {
            QuantBits::Q8 => 128,
            QuantBits::Q4 => 8,
        }
    }

    /// Weights per u32 word.
    pub fn per_word(self) -> u32 {
        32 / self.bit_width()
    }

    /// Groups in a row of `cols`.
    pub fn groups(self, cols: u32) -> u32 {
        cols.div_ceil(self.group)
    }

    /// Value words in a row of `cols` (whole groups).
    pub fn value_words(self, cols: u32) -> u32 {
        self.groups(cols) * self.group / self.per_word()
    }

    /// Scale words in a row of `cols` (f16 pairs).
    pub fn scale_words(self, cols: u32) -> u32 {
        self.groups(cols).div_ceil(2)
    }

    /// Words between rows on the GPU: values, scales, padding to a multiple of 4.
    pub fn row_words(self, cols: u32) -> u32 {
        (self.value_words(cols) + self.scale_words(cols)).next_multiple_of(4)
    }

    /// "q8" or "q4".
    pub fn name(self) -> &'static str {
        match self.bits {
            QuantBits::Q8 => "q8",
            QuantBits::Q4 => "q4",
        }
    }
}

/// A quantized matrix: per row, `value_words` packed words and `groups` f16 scales (as bits).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedRows {
    pub format: QuantFormat,
    pub rows: usize,
    pub cols: usize,
    /// `rows × format.value_words(cols)` words, row-major.
    pub values: Vec<u32>,
    /// `rows × format.groups(cols)` f16 bit patterns, row-major.
    pub scales: Vec<u16>,
}

/// Quantizes row-major f32 `data` of `[rows, cols]` (see the module docs for the rule). Natively a large matrix's
/// rows are split over the machine's cores (each row is quantized on its own, so the result is the same bits); the
/// error of the first failing row is the one returned either way.
pub fn quantize_rows(data: &[f32], rows: usize, cols: usize, format: QuantFormat) -> Result<QuantizedRows, QuantError> {
    if data.len() != rows * cols {
        return Err(QuantError::Length { len: data.len(), rows, cols });
    }
    let groups = format.groups(cols as u32) as usize;
    let vw = format.value_words(cols as u32) as usize;
    let mut values = vec![0u32; rows * vw];
    let mut scales = vec![0u16; rows * groups];
    // Rows [r0, r0 + n) into their slices of `values` and `scales`.
    let part = |r0: usize, values: &mut [u32], scales: &mut [u16]| -> Result<(), QuantError> {
        for (i, (v, s)) in values.chunks_mut(vw.max(1)).zip(scales.chunks_mut(groups.max(1))).enumerate() {
            let r = r0 + i;
            quantize_row(&data[r * cols..][..cols], r, format, v, s)?;
        }
        Ok(())
    };
    let threads = quantize_threads(rows * cols);
    if threads <= 1 || vw == 0 || groups == 0 {
        part(0, &mut values, &mut scales)?;
    } else {
        #[cfg(not(target_arch = "wasm32"))]
        std::thread::scope(|scope| {
            let per = rows.div_ceil(threads);
            let handles: Vec<_> = values
                .chunks_mut(per * vw)
                .zip(scales.chunks_mut(per * groups))
                .enumerate()
                .map(|(t, (v, s))| scope.spawn(move || part(t * per, v, s)))
                .collect();
            // In row order, so the first failing row's error is the one returned.
            handles.into_iter().try_for_each(|h| h.join().expect("a quantizing thread panicked"))
        })?;
    }
    Ok(QuantizedRows { format, rows, cols, values, scales })
}

/// Threads `quantize_rows` uses for `weights` weights: one below 2²⁰ weights or in the browser (no threads there),
/// else every core (at most 16).
fn quantize_threads(weights: usize) -> usize {
    #[cfg(not(target_arch = "wasm32"))]
    {
        if weights >= 1 << 20 {
            return std::thread::available_parallelism().map_or(1, |n| n.get()).min(16);
        }
    }
    let _ = weights;
    1
}

/// One row `r` of `format` into its value words and f16 scales.
fn quantize_row(row: &[f32], r: usize, format: QuantFormat, values: &mut [u32], scales: &mut [u16]) -> Result<(), QuantError> {
    let cols = row.len();
    let (group, per_word, bits) = (format.group as usize, format.per_word() as usize, format.bit_width());
    let half_range = format.half_range();
    if let Some(c) = row.iter().position(|v| !v.is_finite()) {
        return Err(QuantError::NonFinite { row: r, col: c, value: row[c] });
    }
    for (g, scale_bits) in scales.iter_mut().enumerate() {
        let cols_g = &row[(g * group).min(cols)..((g + 1) * group).min(cols)];
        let m = cols_g.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let scale = f16::from_f32(m / -(half_range as f32));
        if !scale.is_finite() {
            return Err(QuantError::ScaleOverflow { row: r, group: g, max: m.abs() });
        }
        let scale = match format.bits {
            QuantBits::Q4 => q4_scale(cols_g, m, scale),
            QuantBits::Q8 => scale,
        };
        *scale_bits = scale.to_bits();
        let s = scale.to_f32();
        for i in 0..group {
            let c = g * group + i;
            let q = match row.get(c) {
                Some(&w) if s != 0.0 => (round_half_away(w / s) as i32).clamp(-half_range, half_range - 1),
                _ => 0,
            };
            let u = (q + half_range) as u32;
            values[c / per_word] |= u << (bits * (c % per_word) as u32);
        }
    }
    Ok(())
}

/// `v.round()` (to nearest, ties away from zero) for |v| < 2³¹, without the library call `f32::round` becomes on
/// x86-64's baseline (no SSE4.1): `v - trunc(v)` is exact, and a fraction of ±0.5 or more steps away from zero.
fn round_half_away(v: f32) -> f32 {
    let t = v as i32 as f32;
    let f = v - t;
    t + ((f >= 0.5) as i32 - (f <= -0.5) as i32) as f32
}

/// q4's candidate scales, as fractions of the largest-magnitude scale `m / -8` (the module docs): smaller scales clip
/// the extreme weights of a group for a finer grid under the others. Fractions below 0.8 never won on the fixture's
/// matrices.
const Q4_SCALE_FRACTIONS: [f32; 5] = [1.0, 0.95, 0.9, 0.85, 0.8];

/// The scale of a q4 group `ws` (at most 64 weights) whose weight of largest magnitude is `m` (`absmax` =
/// f16(m / -8), finite): of the candidates f16(f · m / -8), f in `Q4_SCALE_FRACTIONS`, the one whose grid holds the
/// group with the least squared error (the first on ties, so `absmax` where none does better). The error is summed
/// in 8 lanes in a fixed order (the same on every machine; a quarter faster here than one running sum, and this
/// search is most of q4's quantization time), each weight rounded and clamped exactly as stored.
fn q4_scale(ws: &[f32], m: f32, absmax: f16) -> f16 {
    let mut padded = [0f32; 64];
    padded[..ws.len()].copy_from_slice(ws);
    let padded = &padded[..ws.len().next_multiple_of(8)];
    let error = |s: f32| -> f32 {
        let mut lanes = [0f32; 8];
        for chunk in padded.chunks_exact(8) {
            for (lane, &w) in lanes.iter_mut().zip(chunk) {
                let q = round_half_away(w / s).clamp(-8.0, 7.0);
                let d = w - q * s;
                *lane += d * d;
            }
        }
        lanes.iter().sum()
    };
    if absmax.to_f32() == 0.0 {
        return absmax;
    }
    let mut best = (error(absmax.to_f32()), absmax);
    for f in &Q4_SCALE_FRACTIONS[1..] {
        let s = f16::from_f32(f * m / -8.0);
        let e = error(s.to_f32());
        if e < best.0 {
            best = (e, s);
        }
    }
    best.1
}

impl QuantizedRows {
    /// The integer `q` of row `r`, column `c` (c may reach into the padding of the last group).
    pub fn q(&self, r: usize, c: usize) -> i32 {
        let f = self.format;
        let (bits, per_word) = (f.bit_width(), f.per_word() as usize);
        let word = self.values[r * f.value_words(self.cols as u32) as usize + c / per_word];
        let u = (word >> (bits * (c % per_word) as u32)) & ((1 << bits) - 1);
        u as i32 - f.half_range()
    }

    /// The f16 scale of row `r`, group `g`, as f32.
    pub fn scale(&self, r: usize, g: usize) -> f32 {
        f16::from_bits(self.scales[r * self.format.groups(self.cols as u32) as usize + g]).to_f32()
    }

    /// What the matrix stands for: `q · s` per weight, row-major `[rows, cols]` (the CPU reference of the kernels).
    pub fn dequantize(&self) -> Vec<f32> {
        let group = self.format.group as usize;
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            for c in 0..self.cols {
                out.push(self.q(r, c) as f32 * self.scale(r, c / group));
            }
        }
        out
    }

    /// The rows in the GPU layout (module docs): `rows × format.row_words(cols)` words.
    pub fn gpu_rows(&self) -> Vec<u32> {
        let f = self.format;
        let cols = self.cols as u32;
        let (vw, stride, groups) = (f.value_words(cols) as usize, f.row_words(cols) as usize, f.groups(cols) as usize);
        let mut out = vec![0u32; self.rows * stride];
        for r in 0..self.rows {
            let row = &mut out[r * stride..][..stride];
            row[..vw].copy_from_slice(&self.values[r * vw..][..vw]);
            for (g, &s) in self.scales[r * groups..][..groups].iter().enumerate() {
                row[vw + g / 2] |= (s as u32) << (16 * (g % 2));
            }
        }
        out
    }
}

/// How a quantized matrix is kept in a safetensors checkpoint (what `dia-tts convert` writes): two tensors beside
/// each other, named after the matrix's `<base>.weight`:
/// - `<base>.qweight`: U32 `[rows, value_words]`, the packed values exactly as `QuantizedRows::values`;
/// - `<base>.scales`: F16 `[rows, groups]`, the scales exactly as `QuantizedRows::scales`.
///
/// Stored checkpoints always use groups of 32, so the format follows from the shapes: 8 value words per group is
/// q8, 4 is q4.
pub mod stored {
    use super::{QuantFormat, QuantizedRows};

    /// Suffix of the packed values' tensor.
    pub const VALUES: &str = ".qweight";
    /// Suffix of the scales' tensor.
    pub const SCALES: &str = ".scales";

    /// `("<base>.qweight", "<base>.scales")` for the matrix `<base>.weight`; None for a name not ending in `.weight`.
    pub fn part_names(weight_name: &str) -> Option<(String, String)> {
        let base = weight_name.strip_suffix(".weight")?;
        Some((format!("{base}{VALUES}"), format!("{base}{SCALES}")))
    }

    /// Which half of a stored quantized matrix `name` is, and the matrix's `<base>.weight` name.
    pub fn split_part(name: &str) -> Option<(String, Part)> {
        if let Some(base) = name.strip_suffix(VALUES) {
            Some((format!("{base}.weight"), Part::Values))
        } else {
            name.strip_suffix(SCALES).map(|base| (format!("{base}.weight"), Part::Scales))
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Part {
        Values,
        Scales,
    }

    /// Why two stored tensors do not make a quantized `[rows, cols]` matrix.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum StoredQuantError {
        #[error("{part} has shape {found:?}; a quantized {rows} × {cols} matrix stores {expected}")]
        Shape { part: String, found: Vec<usize>, rows: usize, cols: usize, expected: String },
        #[error("{part}: {bytes} bytes for shape {shape:?}")]
        Bytes { part: String, bytes: usize, shape: Vec<usize> },
    }

    /// The format a `[rows, cols]` matrix was stored in, from the shapes of its two tensors.
    pub fn format_of(weight_name: &str, rows: usize, cols: usize, values_shape: &[usize], scales_shape: &[usize]) -> Result<QuantFormat, StoredQuantError> {
        let groups = QuantFormat::Q8.groups(cols as u32) as usize;
        let (values_name, scales_name) = part_names(weight_name).unwrap_or_default();
        if scales_shape != [rows, groups] {
            return Err(StoredQuantError::Shape { part: scales_name, found: scales_shape.to_vec(), rows, cols, expected: format!("[{rows}, {groups}] (F16)") });
        }
        [QuantFormat::Q8, QuantFormat::Q4]
            .into_iter()
            .find(|f| values_shape == [rows, f.value_words(cols as u32) as usize])
            .ok_or_else(|| StoredQuantError::Shape {
                part: values_name,
                found: values_shape.to_vec(),
                rows,
                cols,
                expected: format!("[{rows}, {}] (U32, q8) or [{rows}, {}] (U32, q4)", QuantFormat::Q8.value_words(cols as u32), QuantFormat::Q4.value_words(cols as u32)),
            })
    }

    /// Rebuilds the matrix from its two tensors' little-endian bytes (shapes already checked by `format_of`).
    pub fn from_parts(weight_name: &str, format: QuantFormat, rows: usize, cols: usize, values: &[u8], scales: &[u8]) -> Result<QuantizedRows, StoredQuantError> {
        let (values_name, scales_name) = part_names(weight_name).unwrap_or_default();
        let vw = format.value_words(cols as u32) as usize;
        let groups = format.groups(cols as u32) as usize;
        if values.len() != rows * vw * 4 {
            return Err(StoredQuantError::Bytes { part: values_name, bytes: values.len(), shape: vec![rows, vw] });
        }
        if scales.len() != rows * groups * 2 {
            return Err(StoredQuantError::Bytes { part: scales_name, bytes: scales.len(), shape: vec![rows, groups] });
        }
        Ok(QuantizedRows {
            format,
            rows,
            cols,
            values: values.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            scales: scales.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect(),
        })
    }

    /// The two tensors' little-endian bytes and shapes: `(values, [rows, value_words]), (scales, [rows, groups])`.
    pub fn to_parts(q: &QuantizedRows) -> ((Vec<u8>, [usize; 2]), (Vec<u8>, [usize; 2])) {
        let cols = q.cols as u32;
        let values = q.values.iter().flat_map(|w| w.to_le_bytes()).collect();
        let scales = q.scales.iter().flat_map(|s| s.to_le_bytes()).collect();
        ((values, [q.rows, q.format.value_words(cols) as usize]), (scales, [q.rows, q.format.groups(cols) as usize]))
    }
}

/// Row-major f32 `data` of `[rows, cols]` straight to the GPU layout of `format`.
pub fn quantize_gpu_rows(data: &[f32], rows: usize, cols: usize, format: QuantFormat) -> Result<Vec<u32>, QuantError> {
    Ok(quantize_rows(data, rows, cols, format)?.gpu_rows())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Squared error of weights `ws` on the grid `q · s`, q rounded to nearest and clamped to [-h, h - 1]: the test's
    /// own reference for the stored grids.
    fn grid_error(ws: &[f32], s: f32, h: f32) -> f32 {
        ws.iter().map(|&v| (v - (v / s).round().clamp(-h, h - 1.0) * s).powi(2)).sum()
    }

    #[test]
    fn round_to_nearest_on_the_stored_scale_grid() {
        // One q8 group whose largest magnitude is positive (1.27): s = f16(1.27 / -128) < 0, 1.27 → q = -128.
        let w: Vec<f32> = (0..32).map(|i| (i as f32 - 16.8) * -0.0837).collect();
        let q = quantize_rows(&w, 1, 32, QuantFormat::Q8).unwrap();
        let s = q.scale(0, 0);
        let m = w.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        assert_eq!(s, f16::from_f32(m / -128.0).to_f32());
        assert!(s < 0.0 && m > 0.0);
        let extreme = w.iter().position(|&v| v == m).unwrap();
        assert_eq!(q.q(0, extreme), -128);
        for (c, &v) in w.iter().enumerate() {
            let got = q.q(0, c);
            assert!((-128..=127).contains(&got));
            // The nearest grid point, or the clamp at +127 for weights of the other sign.
            assert!((v - got as f32 * s).abs() <= s.abs() * 0.5 + 1e-6 || got == 127, "col {c}: {v} -> {got}");
        }
    }

    #[test]
    fn packing_places_column_c_in_field_c_mod_f_of_word_c_div_f() {
        // q4, K = 40: one full group and a short one padded with zeros; 8 nibbles per word.
        let mut w = vec![0f32; 40];
        w[0] = -8.0; // s = 1 for group 0
        w[9] = 3.0;
        w[33] = 2.0; // group 1: s = -0.25 → q = -8
        let q = quantize_rows(&w, 1, 40, QuantFormat::Q4).unwrap();
        assert_eq!(q.values.len(), 8, "two groups of 4 words");
        assert_eq!(q.values[0] & 0xF, 0, "column 0: q = -8 → u = 0");
        assert_eq!((q.values[1] >> 4) & 0xF, 11, "column 9: q = 3 → u = 11");
        assert_eq!((q.values[4] >> 4) & 0xF, 0, "column 33");
        assert_eq!(q.values[7], 0x8888_8888, "padding columns 40..64 hold q = 0");
        let gpu = q.gpu_rows();
        assert_eq!(gpu.len(), 12, "8 value words, 1 scale word, padded to 12");
        assert_eq!(gpu[8], (f16::from_f32(1.0).to_bits() as u32) | ((f16::from_f32(-0.25).to_bits() as u32) << 16));
    }

    #[test]
    fn dequantized_error_is_half_a_step_or_a_clip_that_pays() {
        let mut rng = crate::random::Rng::new(0x1234_5678_9abc_def0);
        let mut next = || rng.uniform();
        for format in [QuantFormat::Q8, QuantFormat::Q4, QuantFormat::new(QuantBits::Q4, 64).unwrap()] {
            for (rows, cols) in [(3, 1), (5, 33), (2, 100), (4, 257)] {
                let w: Vec<f32> = (0..rows * cols).map(|_| next() * 3.0).collect();
                let q = quantize_rows(&w, rows, cols, format).unwrap();
                let d = q.dequantize();
                for r in 0..rows {
                    for c in 0..cols {
                        let s = q.scale(r, c / format.group() as usize).abs();
                        let clamped = q.q(r, c) == format.half_range() - 1 || q.q(r, c) == -format.half_range();
                        // Half a step; a whole one where a weight of the other sign than the extreme is clamped.
                        // q4's scale may clip a group's extremes (`q4_scale`): its clamped weights are bounded below.
                        let bound = if q.q(r, c) == format.half_range() - 1 { s * 1.0001 } else { s * 0.5 * 1.0001 };
                        assert!((d[r * cols + c] - w[r * cols + c]).abs() <= bound || (format.bits() == QuantBits::Q4 && clamped), "{format:?} {rows}x{cols} ({r}, {c})");
                    }
                    // Per group, q4 errs no more than on the largest-magnitude scale's grid (its first candidate).
                    let g = format.group() as usize;
                    for (gi, ws) in w[r * cols..(r + 1) * cols].chunks(g).enumerate() {
                        let got: f32 = ws.iter().zip(&d[r * cols + gi * g..]).map(|(a, b)| (a - b).powi(2)).sum();
                        let m = ws.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                        let h = format.half_range() as f32;
                        let s0 = f16::from_f32(m / -h).to_f32();
                        let absmax = grid_error(ws, s0, h);
                        assert!(got <= absmax * 1.000001 + 1e-12, "{format:?} ({r}, group {gi}): {got} > {absmax}");
                    }
                }
                assert_eq!(q.gpu_rows().len(), rows * format.row_words(cols as u32) as usize);
            }
        }
    }

    #[test]
    fn stored_parts_round_trip_and_name_their_format() {
        let w: Vec<f32> = (0..3 * 70).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
        for format in [QuantFormat::Q8, QuantFormat::Q4] {
            let q = quantize_rows(&w, 3, 70, format).unwrap();
            let ((values, vshape), (scales, sshape)) = stored::to_parts(&q);
            assert_eq!(sshape, [3, 3]);
            assert_eq!(stored::format_of("a.weight", 3, 70, &vshape, &sshape), Ok(format));
            assert_eq!(stored::from_parts("a.weight", format, 3, 70, &values, &scales).unwrap(), q);
            assert!(stored::from_parts("a.weight", format, 3, 70, &values[4..], &scales).is_err());
            assert!(stored::format_of("a.weight", 3, 70, &[3, 5], &sshape).is_err());
            assert!(stored::format_of("a.weight", 3, 70, &vshape, &[3, 2]).is_err());
        }
        assert_eq!(stored::split_part("x.y.qweight"), Some(("x.y.weight".to_string(), stored::Part::Values)));
        assert_eq!(stored::split_part("x.y.scales"), Some(("x.y.weight".to_string(), stored::Part::Scales)));
        assert_eq!(stored::split_part("x.y.weight"), None);
    }

    #[test]
    fn round_half_away_is_f32_round() {
        let mut rng = crate::random::Rng::new(0x0bad_5eed);
        let mut cases: Vec<f32> = (0..100_000).map(|_| rng.uniform() * 300.0).collect();
        for k in -300..=300 {
            let h = k as f32 * 0.5;
            cases.extend([h, h.next_up(), h.next_down(), 0.49999997, -0.49999997, 1e-30, -0.0]);
        }
        for v in cases {
            assert_eq!(round_half_away(v).to_bits() & 0x7fff_ffff, v.round().to_bits() & 0x7fff_ffff, "{v}");
            assert_eq!(round_half_away(v) as i32, v.round() as i32, "{v}");
        }
    }

    #[test]
    fn q4_scale_is_the_candidate_with_least_error() {
        // A group with one outlier: clipping it (a smaller scale) must win, and the stored grid's error must be at
        // most that of the largest-magnitude scale.
        let mut rng = crate::random::Rng::new(7);
        let mut w: Vec<f32> = (0..32).map(|_| rng.uniform() * 0.1).collect();
        w[5] = 0.5;
        let q = quantize_rows(&w, 1, 32, QuantFormat::Q4).unwrap();
        let absmax = f16::from_f32(0.5 / -8.0).to_f32();
        let s = q.scale(0, 0);
        assert!(s.abs() < absmax.abs(), "scale {s} against {absmax}");
        let err = |s: f32| grid_error(&w, s, 8.0);
        let d = q.dequantize();
        let stored: f32 = w.iter().zip(&d).map(|(a, b)| (a - b).powi(2)).sum();
        assert!((stored - err(s)).abs() <= 1e-9 && stored < err(absmax), "{stored} {} {}", err(s), err(absmax));
        for f in Q4_SCALE_FRACTIONS {
            assert!(stored <= err(f16::from_f32(f * 0.5 / -8.0).to_f32()) + 1e-9, "fraction {f}");
        }
        // Evenly spread weights: the largest-magnitude scale is exact on a grid they lie on.
        let grid: Vec<f32> = (0..32).map(|i| (i % 16) as f32 - 8.0).collect();
        assert_eq!(quantize_rows(&grid, 1, 32, QuantFormat::Q4).unwrap().scale(0, 0), 1.0);
    }

    #[test]
    fn large_matrices_split_over_threads_give_the_same_bits() {
        // 1030 rows × 1100 columns (above the threading threshold, a short last group): against the same rows
        // quantized in blocks small enough for one thread.
        let (rows, cols) = (1030, 1100);
        let mut rng = crate::random::Rng::new(11);
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.uniform() * rng.uniform()).collect();
        for format in [QuantFormat::Q8, QuantFormat::Q4] {
            let whole = quantize_rows(&w, rows, cols, format).unwrap();
            let mut values = Vec::new();
            let mut scales = Vec::new();
            for block in w.chunks(100 * cols) {
                let q = quantize_rows(block, block.len() / cols, cols, format).unwrap();
                values.extend(q.values);
                scales.extend(q.scales);
            }
            assert_eq!((whole.values, whole.scales), (values, scales), "{format:?}");
        }
        // The first failing row's error, whichever thread met it.
        let mut bad = w.clone();
        bad[900 * cols + 7] = f32::NAN;
        bad[1000 * cols + 3] = f32::INFINITY;
        assert!(matches!(quantize_rows(&bad, rows, cols, QuantFormat::Q4), Err(QuantError::NonFinite { row: 900, col: 7, .. })));
        bad[3 * cols + 5] = 1e9;
        assert!(matches!(quantize_rows(&bad, rows, cols, QuantFormat::Q4), Err(QuantError::ScaleOverflow { row: 3, group: 0, .. })));
    }

    #[test]
    fn zeros_and_bad_input() {
        let q = quantize_rows(&[0.0; 40], 1, 40, QuantFormat::Q8).unwrap();
        assert!(q.dequantize().iter().all(|&v| v == 0.0));
        assert!(matches!(quantize_rows(&[1.0, f32::NAN], 1, 2, QuantFormat::Q4), Err(QuantError::NonFinite { row: 0, col: 1, .. })));
        assert!(matches!(quantize_rows(&[1.0, f32::INFINITY], 1, 2, QuantFormat::Q4), Err(QuantError::NonFinite { row: 0, col: 1, .. })));
        assert!(matches!(quantize_rows(&[1e7, 0.0], 1, 2, QuantFormat::Q4), Err(QuantError::ScaleOverflow { row: 0, group: 0, .. })));
        assert!(matches!(quantize_rows(&[1.0; 3], 2, 2, QuantFormat::Q8), Err(QuantError::Length { len: 3, rows: 2, cols: 2 })));
        assert!(QuantFormat::new(QuantBits::Q8, 48).is_none());
    }
}
