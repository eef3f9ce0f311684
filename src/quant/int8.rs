//! LLM.int8-style rowwise absmax quantization (`load_in_8bit`'s simple baseline), identical to
//! bitsandbytes 0.50.2's `int8_vectorwise_quant(A, threshold=0)` / `int8_vectorwise_dequant`.
//!
//! Math, per row r of a 2-D weight:
//!   row_stats_r = max_j |w_rj|
//!   q_rj        = round_half_even(w_rj · (127 · (1 / row_stats_r)))     int8 in [−127, 127]
//!   w'_rj       = q_rj · row_stats_r · (1/127)
//! NOTE: torch computes `127.0 / t` as `reciprocal(t) · 127` (two f32 roundings), rounds halves to
//! even, and a zero row gives 0 · inf = NaN, which the int8 cast turns into 0; we give 0 directly.
//! The outlier decomposition (columns with |x| > 6 kept in 16 bits) is not part of this baseline.

use crate::error::{Error, Result};

/// A rowwise int8 weight: (rows, cols) codes and (rows) absmax.
#[derive(Clone, Debug, PartialEq)]
pub struct Int8Rowwise {
    pub shape: [usize; 2],
    /// (rows, cols) row-major
    pub codes: Vec<i8>,
    /// (rows) f32, bitsandbytes' `SCB`
    pub row_stats: Vec<f32>,
}

/// bitsandbytes' f32 constant for 1/127 in `int8_vectorwise_dequant`.
pub const INV_127: f32 = 7.874_015_718_698_502e-3_f64 as f32; // the Python float, cast as torch does

/// Quantizes a 2-D weight `name` rowwise. NaN/Inf and non-2-D shapes are errors naming it.
pub fn quantize_int8_rowwise(name: &str, values: &[f32], shape: &[usize]) -> Result<Int8Rowwise> {
    let [rows, cols] = match shape {
        [r, c] if r * c == values.len() && r * c > 0 => [*r, *c],
        _ => {
            return Err(Error::Input(format!(
                "{name}: int8 rowwise quantization needs a non-empty 2-D weight, got shape {shape:?} \
                 with {} values",
                values.len()
            )));
        }
    };
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::Input(format!(
            "{name} {shape:?}: element {i} is {} and cannot be quantized to int8",
            values[i]
        )));
    }
    let mut codes = Vec::with_capacity(rows * cols);
    let mut row_stats = Vec::with_capacity(rows);
    for row in values.chunks_exact(cols) {
        let absmax = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        row_stats.push(absmax);
        if absmax == 0.0 {
            codes.extend(std::iter::repeat_n(0i8, cols));
            continue;
        }
        let scale = (1.0 / absmax) * 127.0;
        codes.extend(row.iter().map(|&w| (w * scale).round_ties_even() as i8));
    }
    Ok(Int8Rowwise { shape: [rows, cols], codes, row_stats })
}

/// w' = q · row_stats · (1/127), in f32 in that order.
pub fn dequantize_int8_rowwise(q: &Int8Rowwise) -> Vec<f32> {
    let cols = q.shape[1];
    q.codes.iter().enumerate().map(|(i, &c)| c as f32 * q.row_stats[i / cols] * INV_127).collect()
}
