//! A frozen 4-bit weight on the GPU (bitsandbytes' NF4/FP4 state) and its dequantization to f32.
//!
//! Math: w[i] = table[q_i] · absmax(i / blocksize) (in f32; `dequantize_f16` rounds it once to f16), and when double-quantized
//! absmax(b) = dyn[c_b] · nested_absmax[b/256] + offset (src/quant/nf4.rs has the format; docs/nf4.md the why).
//! Layout: the weight is [out, in] (nn.Linear, as bitsandbytes quantizes it), flattened row-major;
//! packed codes (ceil(n/2)) u8 with the first element in the high nibble; u8 tensors sit four to a
//! u32 word on the GPU. The double-quantized absmax is decoded inside the kernel, never expanded
//! on the host.
//! Backward: none. The weight is frozen (QLoRA): it has no gradient and no optimizer state, and
//! `dequantize` returns a tensor that does not require grad. A gradient for the input of a
//! quantized layer flows through `x.matmul_t(&w.dequantize()?, false, true)` or `linear_4bit`.
//! NOTE: on the GPU the nested `dyn · nested_absmax + offset` may be fused into one fma, one ulp
//! away from bitsandbytes' two roundings; the host path (`quant::dequantize_4bit`) is bit-exact.

use std::rc::Rc;

use bytemuck::{Pod, Zeroable};

use super::{launch_1d, output};
use crate::error::{Error, Result};
use crate::gpu::{Category, Gpu, Kernel};
use crate::quant::codes::dynamic_map;
use crate::quant::{Absmax, Format, Quantized4};
use crate::tensor::{DType, Tensor};

const SHADER: &str = include_str!("../../shaders/dequant.wgsl"); // f32; dequant_f16.wgsl: f16

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Params {
    pub n: u32,
    pub blocksize: u32,
    pub nested: u32,
    pub offset: f32,
}

static DEQUANTIZE_4BIT_F16: Kernel = Kernel {
    name: "dequantize_4bit_f16",
    source: include_str!("../../shaders/dequant_f16.wgsl"),
    entry: "dequantize_4bit_f16",
    reads: 4,
    writes: 1,
};

static DEQUANTIZE_4BIT: Kernel = Kernel {
    name: "dequantize_4bit",
    source: SHADER,
    entry: "dequantize_4bit",
    reads: 4,
    writes: 1,
};

/// A frozen 4-bit weight on the GPU. All its tensors count as `Category::Quantized`.
#[derive(Clone)]
pub struct Weight4bit {
    pub format: Format,
    pub blocksize: usize,
    /// [out, in] (any shape works for `dequantize`; `linear_4bit` needs 2-D).
    pub shape: Vec<usize>,
    /// (ceil(n/2)) u8 packed codes.
    pub packed: Tensor,
    /// (blocks) f32, or (blocks) u8 codes into the dynamic map when `nested_absmax` is Some.
    pub absmax: Tensor,
    /// (ceil(blocks/256)) f32; a one-element placeholder when not double-quantized.
    pub nested_absmax: Option<Tensor>,
    pub offset: f32,
    /// (16 + 256) f32: the 4-bit table, then the dynamic map.
    pub tables: Tensor,
    placeholder: Tensor,
}

impl Weight4bit {
    /// Uploads a host-side quantized weight.
    pub fn upload(gpu: &Rc<Gpu>, q: &Quantized4) -> Result<Weight4bit> {
        if q.numel() > u32::MAX as usize / 2 {
            return Err(Error::Limit {
                op: "dequantize_4bit",
                message: format!("a weight of shape {:?} has more than 2³¹ elements", q.shape),
            });
        }
        let quantized = |t: Tensor| {
            t.set_category(Category::Quantized);
            t
        };
        let packed = Tensor::from_u8(gpu, &q.packed, &[q.packed.len()])?;
        let (absmax, nested_absmax, offset) = match &q.absmax {
            Absmax::Plain(a) => (quantized(Tensor::from_f32(gpu, a, &[a.len()])?), None, 0.0),
            Absmax::Nested { codes, nested_absmax, offset } => (
                Tensor::from_u8(gpu, codes, &[codes.len()])?,
                Some(quantized(Tensor::from_f32(gpu, nested_absmax, &[nested_absmax.len()])?)),
                *offset,
            ),
        };
        let mut table = q.format.code().to_vec();
        table.extend(dynamic_map());
        let tables = quantized(Tensor::from_f32(gpu, &table, &[table.len()])?);
        let placeholder = quantized(Tensor::from_f32(gpu, &[0.0], &[1])?);
        Ok(Weight4bit {
            format: q.format,
            blocksize: q.blocksize,
            shape: q.shape.clone(),
            packed,
            absmax,
            nested_absmax,
            offset,
            tables,
            placeholder,
        })
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The kernel params shared by every 4-bit kernel.
    pub(crate) fn params(&self) -> Params {
        Params {
            n: self.numel() as u32,
            blocksize: self.blocksize as u32,
            nested: self.nested_absmax.is_some() as u32,
            offset: self.offset,
        }
    }

    /// The four read buffers of every 4-bit kernel: packed, absmax, nested_absmax, tables.
    pub(crate) fn reads(&self) -> [&Tensor; 4] {
        let nested = self.nested_absmax.as_ref().unwrap_or(&self.placeholder);
        [&self.packed, &self.absmax, nested, &self.tables]
    }

    /// The weight in f32, `shape` (no gradient: the weight is frozen).
    pub fn dequantize(&self) -> Result<Tensor> {
        let w = output(self.packed.gpu(), &self.shape, "dequantize_4bit")?; // (out, in)
        let r = self.reads();
        launch_1d(&DEQUANTIZE_4BIT, &self.params(), &r, &[&w], self.numel())?;
        Ok(w)
    }

    /// Whether `dequantize_f16` runs here: the adapter has `SHADER_F16` (WGSL `enable f16;`).
    pub fn f16_supported(gpu: &Gpu) -> bool {
        gpu.features.contains(wgpu::Features::SHADER_F16)
    }

    /// The weight in f16, two to a u32 (element 2k in the low half, as an f16 array lies in
    /// memory): a U32 tensor (ceil(n/2)). Needs `SHADER_F16`; `dequantize` (f32) is the portable
    /// path. Each value is the f32 product rounded once to f16.
    pub fn dequantize_f16(&self) -> Result<Tensor> {
        let gpu = self.packed.gpu();
        if !Self::f16_supported(gpu) {
            return Err(Error::Input(format!(
                "dequantize_4bit_f16: adapter {} lacks SHADER_F16; use dequantize (f32)",
                gpu.info.name
            )));
        }
        let pairs = self.numel().div_ceil(2);
        let w =
            Tensor::empty(gpu, &[pairs], DType::U32, Category::Activations, "dequantize_4bit_f16")?;
        let r = self.reads();
        launch_1d(&DEQUANTIZE_4BIT_F16, &self.params(), &r, &[&w], pairs)?;
        Ok(w)
    }

    /// Bytes this weight holds on the GPU (packed codes + absmax + nested), what the memory
    /// report's `quantized` category counts for it, less the per-tensor tables.
    pub fn bytes(&self) -> usize {
        let nested = self.nested_absmax.as_ref().map_or(0, |t| t.numel() * 4);
        self.packed.numel() + self.absmax.numel() * self.absmax.dtype().size() + nested
    }
}

/// The plain f64 reference: table[q] · absmax in f64 from the host state.
pub mod cpu {
    use crate::quant::Quantized4;

    pub fn dequantize_4bit(q: &Quantized4) -> Vec<f64> {
        let code = q.format.code();
        let absmax = q.absmax_f32();
        (0..q.numel())
            .map(|i| code[q.code_index(i) as usize] as f64 * absmax[i / q.blocksize] as f64)
            .collect()
    }
}
