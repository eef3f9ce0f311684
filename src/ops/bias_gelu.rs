//! GELU fused with the bias add before it: y = gelu(x + bias), x [.., C], bias [C].
//!
//! Math (gelu = GPT-2's gelu_new, the same function as `Tensor::gelu`; u = x + bias):
//!   y  = 0.5·u·(1 + tanh(√(2/π)(u + 0.044715u³)))
//!   dx = dout · gelu'(u),   dbias = Σ_rows dx
//! Saved for backward: x and bias (u is recomputed, so no [.., C] pre-activation is kept).
//! One kernel each way instead of add + gelu (two dispatches, one more [.., C] activation).
//! NOTE: tanh is evaluated through exp(−2|u|), so large |u| cannot produce inf/inf.
//! The composed reference is `x.add(bias)?.gelu()`; tests compare the two.

use bytemuck::{Pod, Zeroable};

use super::{launch_1d, output};
use crate::error::{Result, shape_err};
use crate::gpu::Kernel;
use crate::tensor::Tensor;

const SHADER: &str = include_str!("../../shaders/bias_gelu.wgsl");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Params {
    pub n: u32,
    pub cols: u32,
}

static FORWARD: Kernel = Kernel { name: "bias_gelu_forward", source: SHADER, entry: "bias_gelu_forward", reads: 2, writes: 1 };
static BACKWARD: Kernel = Kernel { name: "bias_gelu_backward", source: SHADER, entry: "bias_gelu_backward", reads: 3, writes: 1 };

impl Tensor {
    /// gelu(self + bias) in one kernel; `bias` is [C], the last dimension of `self`.
    pub fn bias_gelu(&self, bias: &Tensor) -> Result<Tensor> {
        let op = "bias_gelu";
        self.check_f32(op)?;
        bias.check_f32(op)?;
        let cols = self.last_dim();
        if self.rank() == 0 || self.numel() == 0 || bias.shape() != [cols] {
            return shape_err(op, format!("x {:?} needs a bias of shape [{cols}], got {:?}", self.shape(), bias.shape()));
        }
        let y = output(self.gpu(), self.shape(), op)?; // (.., C)
        let params = Params { n: self.numel() as u32, cols: cols as u32 };
        launch_1d(&FORWARD, &params, &[self, bias], &[&y], self.numel())?;
        let saved = (self.clone(), bias.clone());
        let bias_grad = bias.requires_grad();
        Ok(y.attach(op, &[self, bias], move |dout| {
            let (x, bias) = saved;
            let dx = output(x.gpu(), x.shape(), "bias_gelu_backward")?; // (.., C)
            launch_1d(&BACKWARD, &params, &[&x, &bias, dout], &[&dx], x.numel())?;
            let dbias = bias_grad.then(|| dx.reshape(&[x.numel() / cols, cols])?.sum_rows()).transpose()?; // (C)
            Ok(vec![Some(dx), dbias])
        }))
    }
}

/// f64 references: forward(x, bias) and backward -> [dx, dbias].
pub mod cpu {
    use crate::cpu::Array;
    use crate::ops::unary::cpu as un;

    fn pre(x: &Array, bias: &Array) -> Array {
        let c = bias.numel();
        Array::new(&x.shape, x.data.iter().enumerate().map(|(i, v)| v + bias.data[i % c]).collect())
    }
    pub fn bias_gelu(x: &Array, bias: &Array) -> Array {
        un::gelu(&pre(x, bias))
    }
    pub fn bias_gelu_backward(x: &Array, bias: &Array, dout: &Array) -> Vec<Array> {
        let c = bias.numel();
        let dx = un::gelu_backward(&pre(x, bias), dout);
        let mut dbias = Array::zeros(&bias.shape);
        for (i, v) in dx.data.iter().enumerate() {
            dbias.data[i % c] += v;
        }
        vec![dx, dbias]
    }
}
