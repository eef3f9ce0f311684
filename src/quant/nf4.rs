//! 4-bit blockwise quantization (NF4, FP4) and double quantization of the absmax, on the host,
//! identical to bitsandbytes 0.50's CPU path (`quantize_4bit` / `dequantize_4bit`).
//!
//! Math, for blocks of `blocksize` consecutive elements of the flattened tensor (row-major):
//!   absmax_b = max |w_i| over block b
//!   s_i      = clamp(w_i / absmax_b, −1, 1)
//!   q_i      = the code whose value is nearest s_i: q = #{midpoints m : m < s} in the sorted
//!              table (a value exactly on a midpoint goes to the LOWER code)
//!   byte k   = q_{2k} << 4 | q_{2k+1}  (first element in the high nibble)
//!   w'_i     = code[q_i] · absmax_b
//! Double quantization (`compress_statistics=True`):
//!   offset   = mean(absmax);  (absmax − offset) is quantized to 8 bits in blocks of 256 against the
//!   dynamic map;  absmax'_b = dyn[c_b] · nested_absmax[b / 256] + offset.
//! NOTE (bitsandbytes' exact arithmetic, which we copy so the bytes match):
//! - full blocks scale by a reciprocal, `w · (1 / max(absmax, 1e-38))`; the last, partial block
//!   divides, `w / max(absmax, 1e-38)`, and stores the CLAMPED absmax (an all-zero tail stores
//!   1e-38, an all-zero full block stores 0). Both in f32.
//! - an odd element count is padded with the value 0 before coding: the pad nibble is the code of
//!   0 (7 in NF4, 0 in FP4), not the nibble 0.
//! - the 8-bit nested step is bitsandbytes' C++ CPU kernel: a 65,536-entry table over [−1, 1]
//!   built from the map's midpoints, indexed by `(s + 1) · 0.5 · 65535 + 0.5` truncated.
//! - the offset is torch's f32 `mean()`, whose sum order we reproduce (see `mean_f32`).

use std::sync::OnceLock;

use super::codes::{FP4_SORTED, NF4_CODE, dynamic_map, fp4_code};
use crate::error::{Error, Result};

/// The two 4-bit data types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Nf4,
    Fp4,
}

impl Format {
    /// "nf4" or "fp4", as bitsandbytes' `quant_type`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Nf4 => "nf4",
            Format::Fp4 => "fp4",
        }
    }
    pub fn parse(s: &str) -> Result<Format> {
        match s {
            "nf4" => Ok(Format::Nf4),
            "fp4" => Ok(Format::Fp4),
            _ => Err(Error::Input(format!("unknown 4-bit format '{s}' (expected nf4 or fp4)"))),
        }
    }
    /// The 16 values by code index.
    pub fn code(self) -> [f32; 16] {
        match self {
            Format::Nf4 => NF4_CODE,
            Format::Fp4 => fp4_code(),
        }
    }
}

/// Block sizes bitsandbytes' `quantize_4bit` accepts.
pub const BLOCKSIZES: [usize; 8] = [32, 64, 128, 256, 512, 1024, 2048, 4096];
/// Elements of the absmax vector per nested block in double quantization.
pub const NESTED_BLOCKSIZE: usize = 256;

/// The per-block scales: plain f32, or double-quantized.
#[derive(Clone, Debug, PartialEq)]
pub enum Absmax {
    /// (blocks) f32
    Plain(Vec<f32>),
    /// codes (blocks) u8 into the dynamic map; nested_absmax (ceil(blocks/256)) f32; offset f32.
    Nested { codes: Vec<u8>, nested_absmax: Vec<f32>, offset: f32 },
}

/// A tensor in bitsandbytes' 4-bit state.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantized4 {
    pub format: Format,
    pub blocksize: usize,
    /// The original shape (e.g. [out, in]); numel n.
    pub shape: Vec<usize>,
    /// (ceil(n/2)) u8, two codes per byte, first element in the high nibble.
    pub packed: Vec<u8>,
    pub absmax: Absmax,
}

impl Quantized4 {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn blocks(&self) -> usize {
        self.numel().div_ceil(self.blocksize)
    }
    /// The f32 absmax per block, decoding the double quantization as bitsandbytes does.
    pub fn absmax_f32(&self) -> Vec<f32> {
        match &self.absmax {
            Absmax::Plain(a) => a.clone(),
            Absmax::Nested { codes, nested_absmax, offset } => {
                dequantize_blockwise_8bit(codes, nested_absmax, NESTED_BLOCKSIZE)
                    .into_iter()
                    .map(|a| a + offset)
                    .collect()
            }
        }
    }
    /// The 4-bit code of element i.
    pub fn code_index(&self, i: usize) -> u8 {
        let byte = self.packed[i / 2];
        if i.is_multiple_of(2) { byte >> 4 } else { byte & 0x0f }
    }
}

/// Checks a blocksize against bitsandbytes' list; `name` and `shape` make the message useful.
pub fn check_blocksize(name: &str, shape: &[usize], blocksize: usize) -> Result<()> {
    if BLOCKSIZES.contains(&blocksize) {
        return Ok(());
    }
    Err(Error::Input(format!(
        "{name} {shape:?}: blocksize {blocksize} is not supported (bitsandbytes allows powers of two \
         from 32 to 4096: {BLOCKSIZES:?})"
    )))
}

/// bitsandbytes' floor on a block's absmax before dividing (`absmax.clamp(min=1e-38)`): the Python
/// float 1e-38 rounded to f32.
fn absmax_floor() -> f32 {
    1e-38_f64 as f32
}

/// `quantize_4bit(values.reshape(shape), blocksize, quant_type, compress_statistics)`.
/// Errors name the tensor, its shape and the blocksize: a bad blocksize, a size mismatch, NaN/Inf.
pub fn quantize_4bit(
    name: &str,
    values: &[f32],
    shape: &[usize],
    format: Format,
    blocksize: usize,
    double_quant: bool,
) -> Result<Quantized4> {
    check_blocksize(name, shape, blocksize)?;
    let n: usize = shape.iter().product();
    if values.len() != n || n == 0 {
        return Err(Error::Input(format!(
            "{name}: {} values do not fill shape {shape:?} (or the tensor is empty)",
            values.len()
        )));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::Input(format!(
            "{name} {shape:?}: element {i} is {} and cannot be quantized (blocksize {blocksize})",
            values[i]
        )));
    }
    let code = format.code();
    // The table sorted ascending, the sorted position → code index map, and the f32 midpoints.
    let order: [u8; 16] = match format {
        Format::Nf4 => std::array::from_fn(|i| i as u8),
        Format::Fp4 => FP4_SORTED,
    };
    let sorted: [f32; 16] = order.map(|i| code[i as usize]);
    let midpoints: [f32; 15] = std::array::from_fn(|i| (sorted[i] + sorted[i + 1]) / 2.0);
    let encode = |s: f32| -> u8 { order[midpoints.iter().filter(|&&m| m < s).count()] };

    let mut absmax = Vec::with_capacity(n.div_ceil(blocksize));
    let mut q = Vec::with_capacity(n + 1); // (n, padded to even) code indices
    for block in values.chunks(blocksize) {
        let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let floor = amax.max(absmax_floor());
        if block.len() == blocksize {
            let inv = 1.0 / floor; // full block: multiply by the reciprocal
            q.extend(block.iter().map(|&w| encode((w * inv).clamp(-1.0, 1.0))));
            absmax.push(amax);
        } else {
            q.extend(block.iter().map(|&w| encode((w / floor).clamp(-1.0, 1.0))));
            absmax.push(floor); // the tail stores the clamped value
        }
    }
    if n % 2 == 1 {
        q.push(encode(0.0)); // padded with the value 0, then coded
    }
    let packed = q.chunks_exact(2).map(|p| p[0] << 4 | p[1]).collect();
    let absmax = if double_quant { double_quantize(&absmax) } else { Absmax::Plain(absmax) };
    Ok(Quantized4 { format, blocksize, shape: shape.to_vec(), packed, absmax })
}

/// offset = mean(absmax); (absmax − offset) quantized 8-bit in blocks of 256.
pub fn double_quantize(absmax: &[f32]) -> Absmax {
    let offset = mean_f32(absmax);
    let centred: Vec<f32> = absmax.iter().map(|a| a - offset).collect();
    let (codes, nested_absmax) = quantize_blockwise_8bit(&centred, NESTED_BLOCKSIZE);
    Absmax::Nested { codes, nested_absmax, offset }
}

/// `absmax.mean()` as torch 2.x computes it on the CPU, bit for bit: `sum(x) / n` in f32, where the
/// f32 sum is torch's `cascade_sum` over 8-lane vectors (checked against torch on this machine for
/// 760 random vectors of 1..20,000 elements). NOTE: above 32,768 elements torch may split the sum
/// across threads; we follow the one-thread order.
pub fn mean_f32(x: &[f32]) -> f32 {
    torch_sum_f32(x) / x.len() as f32
}

/// Lanes of torch's `Vectorized<float>` in its sum kernel.
const LANES: usize = 8;

/// torch's `vectorized_inner_sum` (or `row_sum` on scalars below 8 elements).
fn torch_sum_f32(x: &[f32]) -> f32 {
    if x.len() < LANES {
        return row_sum::<1>(x.len(), |i| [x[i]])[0];
    }
    let vectors = x.len() / LANES;
    let lanes = row_sum::<LANES>(vectors, |i| x[i * LANES..][..LANES].try_into().unwrap());
    let mut total = x[vectors * LANES..].iter().fold(0.0f32, |a, &v| a + v);
    for lane in lanes {
        total += lane;
    }
    total
}

/// torch's `row_sum`: 4 interleaved accumulators of `multi_row_sum`, the leftovers, then the four
/// added in order. `elem(i)` is element i, a vector of L lanes.
fn row_sum<const L: usize>(size: usize, elem: impl Fn(usize) -> [f32; L]) -> [f32; L] {
    const ILP: usize = 4;
    let rows = size / ILP;
    let mut partial = multi_row_sum::<L>(rows, |i, k| elem(i * ILP + k));
    for i in rows * ILP..size {
        add(&mut partial[0], &elem(i));
    }
    let [mut p0, p1, p2, p3] = partial;
    for p in [p1, p2, p3] {
        add(&mut p0, &p);
    }
    p0
}

fn add<const L: usize>(acc: &mut [f32; L], v: &[f32; L]) {
    for (a, b) in acc.iter_mut().zip(v) {
        *a += b;
    }
}

/// torch's `multi_row_sum`: a 4-level cascade (pairwise-like) summation of 4 interleaved rows.
// Index loops on purpose: they mirror torch's SumKernel.cpp line by line.
#[allow(clippy::needless_range_loop)]
fn multi_row_sum<const L: usize>(
    size: usize,
    elem: impl Fn(usize, usize) -> [f32; L],
) -> [[f32; L]; 4] {
    const LEVELS: usize = 4;
    let ceil_log2 = if size <= 1 { 0 } else { usize::BITS - (size - 1).leading_zeros() } as usize;
    let level_power = (ceil_log2 / LEVELS).max(4);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[[0.0f32; L]; 4]; LEVELS];
    let mut i = 0;
    while i + level_step <= size {
        for _ in 0..level_step {
            for k in 0..4 {
                add(&mut acc[0][k], &elem(i, k));
            }
            i += 1;
        }
        for j in 1..LEVELS {
            for k in 0..4 {
                let lower = acc[j - 1][k];
                add(&mut acc[j][k], &lower);
                acc[j - 1][k] = [0.0; L];
            }
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    while i < size {
        for k in 0..4 {
            add(&mut acc[0][k], &elem(i, k));
        }
        i += 1;
    }
    for j in 1..LEVELS {
        for k in 0..4 {
            let upper = acc[j][k];
            add(&mut acc[0][k], &upper);
        }
    }
    acc[0]
}

/// w'_i = code[q_i] · absmax_b in f32: `dequantize_4bit`.
pub fn dequantize_4bit(q: &Quantized4) -> Vec<f32> {
    let code = q.format.code();
    let absmax = q.absmax_f32();
    (0..q.numel()).map(|i| code[q.code_index(i) as usize] * absmax[i / q.blocksize]).collect()
}

const LUT_SIZE: usize = 65_536;

/// bitsandbytes' CPU lookup table: for 65,536 evenly spaced values in [−1, 1], the index of the
/// first map entry whose upper midpoint is not below the value.
fn lut() -> &'static [u8] {
    static LUT: OnceLock<Vec<u8>> = OnceLock::new();
    LUT.get_or_init(|| {
        let map = dynamic_map();
        let midpoints: Vec<f32> = (0..255).map(|i| 0.5 * (map[i] + map[i + 1])).collect();
        let mut code_index = 0;
        (0..LUT_SIZE)
            .map(|i| {
                let val = -1.0f32 + (2.0 * i as f32) / (LUT_SIZE - 1) as f32;
                while code_index < 255 && midpoints[code_index] < val {
                    code_index += 1;
                }
                code_index as u8
            })
            .collect()
    })
}

/// The LUT slot of a normalised value, truncated as the C++ `static_cast<uint16_t>`.
fn lut_index(s: f32) -> usize {
    let s = s.clamp(-1.0, 1.0);
    ((s + 1.0) * 0.5 * (LUT_SIZE - 1) as f32 + 0.5) as u16 as usize
}

/// bitsandbytes' CPU `quantize_blockwise` (8-bit, dynamic map): (codes (n), absmax (blocks)).
/// An all-zero block stores absmax 0 and codes 0.
pub fn quantize_blockwise_8bit(x: &[f32], blocksize: usize) -> (Vec<u8>, Vec<f32>) {
    let lut = lut();
    let mut codes = Vec::with_capacity(x.len());
    let mut absmax = Vec::with_capacity(x.len().div_ceil(blocksize));
    for block in x.chunks(blocksize) {
        let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        absmax.push(amax);
        if amax == 0.0 {
            codes.extend(std::iter::repeat_n(0u8, block.len()));
            continue;
        }
        let inv = 1.0 / amax;
        codes.extend(block.iter().map(|&v| lut[lut_index(v * inv)]));
    }
    (codes, absmax)
}

/// dyn[c_i] · absmax[i / blocksize] in f32: `dequantize_blockwise`.
pub fn dequantize_blockwise_8bit(codes: &[u8], absmax: &[f32], blocksize: usize) -> Vec<f32> {
    let map = dynamic_map();
    codes.iter().enumerate().map(|(i, &c)| map[c as usize] * absmax[i / blocksize]).collect()
}

/// Bits of storage per parameter: 4 + 32/blocksize, or with double quantization
/// 4 + 8/blocksize + 32/(blocksize·256) (the offset and maps are per tensor and not counted).
pub fn bits_per_parameter(blocksize: usize, double_quant: bool) -> f64 {
    let b = blocksize as f64;
    if double_quant { 4.0 + 8.0 / b + 32.0 / (b * NESTED_BLOCKSIZE as f64) } else { 4.0 + 32.0 / b }
}
