//! Int8 rowwise linear (LLM.int8's simple baseline, `--quantize int8`): y = x · dequant(Wq)ᵀ, fused,
//! never materialising W.
//!
//! Math:      W[o, i]  = q[o, i] · row_stats[o] · (1/127)     q int8, W [out, in] (nn.Linear)
//!            y[r, o]  = Σ_i x[r, i] · W[o, i]
//! Backward:  dx[r, i] = Σ_o dy[r, o] · W[o, i]                (W decoded again on the fly)
//!            no gradient for W: the int8 weight is frozen (no grad, no optimizer state).
//! Saved for backward: the weight handle only (its GPU tensors, shared, no copy).
//! Layout: x (.., in) row-major → y (.., out); rows = numel(x) / in. The codes sit four to a u32
//! word on the GPU (byte k of the flat weight in bits 8·(k mod 4) of word k/4), the row absmax
//! (bitsandbytes' `SCB`) beside them; both count as `Category::Quantized`.
//! Kernels: one per regime (1..=8 rows: matvec; more: subgroup or tiled), chosen from the adapter
//! by [`Int8Kernel::for_gpu`]; src/ops/linear_int8_kernels.rs lists them.
//! Reference: `linear_int8_composed` (dequantize, then `matmul_t`), the simple fused kernel, and
//! `cpu::dequantize` (f64 from the host codes); `WeightInt8::dequantize` gives the f32
//! W that bitsandbytes' `int8_vectorwise_dequant` gives (`quant::int8`, bit for bit).
//! NOTE: the outlier decomposition of LLM.int8 (columns with |x| > 6 in 16 bits) is not done.

use std::rc::Rc;

pub use super::linear_int8_kernels::Int8Kernel;
use super::linear_int8_kernels::launch;
use crate::error::{Error, Result, shape_err};
use crate::gpu::{Category, Gpu};
use crate::quant::int8::{Int8Rowwise, dequantize_int8_rowwise};
use crate::tensor::Tensor;

/// A frozen int8 rowwise weight [out, in] on the GPU.
#[derive(Clone)]
pub struct WeightInt8 {
    /// [out, in]
    pub shape: [usize; 2],
    /// (out · in) u8: the int8 codes' bytes.
    pub codes: Tensor,
    /// (out) f32 row absmax.
    pub row_stats: Tensor,
}

impl WeightInt8 {
    /// Uploads a host-side int8 weight (`name` for the error when it exceeds one binding).
    pub fn upload(gpu: &Rc<Gpu>, name: &str, q: &Int8Rowwise) -> Result<WeightInt8> {
        let n = q.codes.len();
        let max = gpu.limits.max_storage_buffer_binding_size as usize;
        if n > max || n > u32::MAX as usize {
            return Err(Error::Limit {
                op: "linear_int8",
                message: format!(
                    "{name} {:?}: {n} int8 codes exceed one storage binding ({max} bytes)",
                    q.shape
                ),
            });
        }
        let bytes: Vec<u8> = q.codes.iter().map(|&c| c as u8).collect();
        let codes = Tensor::from_u8(gpu, &bytes, &[n])?; // counted as quantized
        let row_stats = Tensor::from_f32(gpu, &q.row_stats, &[q.row_stats.len()])?;
        row_stats.set_category(Category::Quantized);
        Ok(WeightInt8 { shape: q.shape, codes, row_stats })
    }

    /// Reads the codes and row absmax back to the host.
    pub fn to_host(&self) -> Result<Int8Rowwise> {
        let codes = self.codes.to_vec_u8()?.into_iter().map(|b| b as i8).collect();
        Ok(Int8Rowwise { shape: self.shape, codes, row_stats: self.row_stats.to_vec()? })
    }

    /// The weight in f32, [out, in], no gradient (decoded on the host, bit-exact with
    /// bitsandbytes' `int8_vectorwise_dequant`; for merges and DoRA's norm, not the hot path).
    pub fn dequantize(&self) -> Result<Tensor> {
        let w = dequantize_int8_rowwise(&self.to_host()?);
        Tensor::from_f32(self.codes.gpu(), &w, &self.shape)
    }

    /// Bytes on the GPU: one per code and four per row.
    pub fn bytes(&self) -> usize {
        self.codes.numel() + self.row_stats.numel() * 4
    }
}

impl Tensor {
    /// x (.., in) · dequant(w)ᵀ → (.., out), w [out, in] int8 rowwise and frozen.
    pub fn linear_int8(&self, w: &WeightInt8) -> Result<Tensor> {
        let rows = self.numel() / self.last_dim().max(1);
        self.linear_int8_with_kernel(w, Int8Kernel::for_gpu(self.gpu(), rows))
    }

    /// `linear_int8` with a chosen forward kernel (tests and benchmarks compare the variants);
    /// dx comes from `kernel.backward(gpu)`.
    pub fn linear_int8_with_kernel(&self, w: &WeightInt8, kernel: Int8Kernel) -> Result<Tensor> {
        self.check_f32("linear_int8")?;
        if self.rank() == 0 || self.last_dim() != w.shape[1] {
            return shape_err(
                "linear_int8",
                format!(
                    "x {:?} · Wᵀ with W {:?} [out, in]: x's last dim must be in",
                    self.shape(),
                    w.shape
                ),
            );
        }
        let mut y_shape = self.shape().to_vec();
        *y_shape.last_mut().unwrap() = w.shape[0]; // (.., out)
        let y = launch(kernel, false, w, self, &y_shape)?;
        let w = w.clone();
        let x_shape = self.shape().to_vec();
        let backward = kernel.backward(self.gpu());
        Ok(y.attach("linear_int8", &[self], move |dy| {
            Ok(vec![Some(launch(backward, true, &w, dy, &x_shape)?)]) // (.., in)
        }))
    }

    /// The composed reference: dequantize W (bit-exact with bitsandbytes), then `matmul_t`
    /// (autodiff through matmul gives dx).
    pub fn linear_int8_composed(&self, w: &WeightInt8) -> Result<Tensor> {
        self.matmul_t(&w.dequantize()?, false, true)
    }
}

/// The plain f64 reference from the host codes.
pub mod cpu {
    use crate::quant::int8::Int8Rowwise;

    /// W [out, in] in f64: q · row_stats / 127.
    pub fn dequantize(q: &Int8Rowwise) -> Vec<f64> {
        let cols = q.shape[1];
        let w = |k: usize| q.codes[k] as f64 * q.row_stats[k / cols] as f64 / 127.0;
        (0..q.codes.len()).map(w).collect()
    }
}
