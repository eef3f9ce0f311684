//! Fused 4-bit linear (the QLoRA base layer): y = x · dequant(Wq)ᵀ, never materialising W.
//!
//! Math:      y[r, o]  = Σ_i x[r, i] · W[o, i]       W = dequant(Wq) [out, in] (nn.Linear layout)
//! Backward:  dx[r, i] = Σ_o dy[r, o] · W[o, i]      (W decoded again on the fly)
//!            no gradient for W: the 4-bit weight is frozen (no grad, no optimizer state).
//! Saved for backward: the weight handle only (its GPU tensors, shared, no copy).
//! Layout: x (.., in) row-major → y (.., out); rows = numel(x) / in.
//! Reference: `linear_4bit_composed` = `x.matmul_t(&w.dequantize()?, false, true)`; tests compare
//! outputs and dx. NOTE: GPT-2's Conv1D weight is stored [in, out]; quantize its transpose.
//! NOTE: this kernel is the simple one (one column and 4 rows per invocation, weights decoded per
//! use); a tiled variant per regime is what the speed targets of issue 16 still need.

use bytemuck::{Pod, Zeroable};

use super::dequant::Weight4bit;
use super::{launch_1d, output};
use crate::error::{Result, shape_err};
use crate::gpu::Kernel;
use crate::tensor::Tensor;

const SHADER: &str = include_str!("../../shaders/linear_4bit.wgsl");

/// Rows of x per invocation (`R` in the shader).
const ROWS_PER_THREAD: usize = 4;

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
    pub pad: u32,
}

static FORWARD: Kernel = Kernel {
    name: "linear_4bit_forward",
    source: SHADER,
    entry: "linear_4bit_forward",
    reads: 5,
    writes: 1,
};
static BACKWARD_X: Kernel = Kernel {
    name: "linear_4bit_backward_x",
    source: SHADER,
    entry: "linear_4bit_backward_x",
    reads: 5,
    writes: 1,
};

fn params(w: &Weight4bit, rows: usize) -> Params {
    let base = w.params();
    Params {
        n: base.n,
        blocksize: base.blocksize,
        nested: base.nested,
        offset: base.offset,
        rows: rows as u32,
        in_features: w.shape[1] as u32,
        out_features: w.shape[0] as u32,
        pad: 0,
    }
}

/// One dispatch of `kernel`: `a` (rows, k_in) → c (rows, k_out), one thread per 4 rows × column.
fn run(kernel: &'static Kernel, w: &Weight4bit, a: &Tensor, c_shape: &[usize]) -> Result<Tensor> {
    let c_cols = c_shape[c_shape.len() - 1];
    let rows = a.numel() / a.last_dim().max(1);
    let c = output(a.gpu(), c_shape, kernel.name)?;
    let [p0, p1, p2, p3] = w.reads();
    let threads = rows.div_ceil(ROWS_PER_THREAD) * c_cols;
    launch_1d(kernel, &params(w, rows), &[p0, p1, p2, p3, a], &[&c], threads)?;
    Ok(c)
}

impl Tensor {
    /// x (.., in) · dequant(w)ᵀ → (.., out), w [out, in] 4-bit and frozen.
    pub fn linear_4bit(&self, w: &Weight4bit) -> Result<Tensor> {
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
        let y = run(&FORWARD, w, self, &y_shape)?;
        let w = w.clone();
        let x_shape = self.shape().to_vec();
        Ok(y.attach("linear_4bit", &[self], move |dy| {
            Ok(vec![Some(run(&BACKWARD_X, &w, dy, &x_shape)?)]) // (.., in)
        }))
    }

    /// The composed reference: dequantize W, then `matmul_t` (autodiff through matmul gives dx).
    pub fn linear_4bit_composed(&self, w: &Weight4bit) -> Result<Tensor> {
        self.matmul_t(&w.dequantize()?, false, true)
    }
}
