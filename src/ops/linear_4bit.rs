//! Fused 4-bit linear (the QLoRA base layer): y = x · dequant(Wq)ᵀ, never materialising W.
//!
//! Math:      y[r, o]  = Σ_i x[r, i] · W[o, i]       W = dequant(Wq) [out, in] (nn.Linear layout)
//! Backward:  dx[r, i] = Σ_o dy[r, o] · W[o, i]      (W decoded again on the fly)
//!            no gradient for W: the 4-bit weight is frozen (no grad, no optimizer state).
//! Saved for backward: the weight handle only (its GPU tensors, shared, no copy).
//! Layout: x (.., in) row-major → y (.., out); rows = numel(x) / in.
//! Kernels: one per regime (1..=8 rows: matvec; more: tiled), chosen from the adapter by
//! [`Linear4bitKernel::for_gpu`]; src/ops/linear_4bit_kernels.rs lists them.
//! Reference: `linear_4bit_composed` = `x.matmul_t(&w.dequantize()?, false, true)`, and the
//! simple fused kernel; tests compare every variant's outputs and dx with both.
//! NOTE: GPT-2's Conv1D weight is stored [in, out]; quantize its transpose.

use bytemuck::{Pod, Zeroable};

use super::dequant::Weight4bit;
pub use super::linear_4bit_kernels::Linear4bitKernel;
use super::linear_4bit_kernels::launch;
use crate::error::{Result, shape_err};
use crate::tensor::Tensor;

/// The params of every shaders/linear_4bit*.wgsl kernel (field names match).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Params {
    pub n: u32,
    pub blocksize: u32,
    pub nested: u32,
    pub offset: f32,
    pub rows: u32,
    pub in_features: u32,
    pub out_features: u32,
    /// Row tiles of the tiled kernels (the fold's padding tiles store nothing).
    pub tiles_m: u32,
}

impl Tensor {
    /// x (.., in) · dequant(w)ᵀ → (.., out), w [out, in] 4-bit and frozen.
    pub fn linear_4bit(&self, w: &Weight4bit) -> Result<Tensor> {
        let rows = self.numel() / self.last_dim().max(1);
        self.linear_4bit_with_kernel(w, Linear4bitKernel::for_gpu(self.gpu(), rows))
    }

    /// `linear_4bit` with a chosen forward kernel (tests and benchmarks compare the variants);
    /// dx comes from `kernel.backward(gpu)`.
    pub fn linear_4bit_with_kernel(
        &self,
        w: &Weight4bit,
        kernel: Linear4bitKernel,
    ) -> Result<Tensor> {
        self.check_f32("linear_4bit")?;
        if w.shape.len() != 2 || self.rank() == 0 || self.last_dim() != w.shape[1] {
            return shape_err(
                "linear_4bit",
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
        Ok(y.attach("linear_4bit", &[self], move |dy| {
            Ok(vec![Some(launch(backward, true, &w, dy, &x_shape)?)]) // (.., in)
        }))
    }

    /// The composed reference: dequantize W, then `matmul_t` (autodiff through matmul gives dx).
    pub fn linear_4bit_composed(&self, w: &Weight4bit) -> Result<Tensor> {
        self.matmul_t(&w.dequantize()?, false, true)
    }
}
