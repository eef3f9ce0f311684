//! GELU fused with the bias add before it: y = gelu(x + bias), x [.., C], bias [C].
//!
//! Math (gelu = GPT-2's gelu_new, the same function as `Tensor::gelu`; u = x + bias):
//!   y  = 0.5·u·(1 + tanh(√(2/π)(u + 0.044715u³)))
//!   dx = dout · gelu'(u),   dbias = Σ_rows dx
//! Saved for backward: x and bias (u is recomputed, so no [.., C] pre-activation is kept).
//! One kernel each way instead of add + gelu (two dispatches, one more [.., C] activation).
//! Kernels: vec4 ones (a thread per bias vec4 and 4 rows) when C % 4 == 0, else one per element.
//! NOTE: tanh is evaluated through exp(−2|u|), so large |u| cannot produce inf/inf.
//! The composed reference is `x.add(bias)?.gelu()`; tests compare the two.

use bytemuck::{Pod, Zeroable};

use super::{VEC4_PER_THREAD, launch_1d, output};
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

static FORWARD: Kernel = Kernel {
    name: "bias_gelu_forward",
    source: SHADER,
    entry: "bias_gelu_forward",
    reads: 2,
    writes: 1,
};
static BACKWARD: Kernel = Kernel {
    name: "bias_gelu_backward",
    source: SHADER,
    entry: "bias_gelu_backward",
    reads: 3,
    writes: 1,
};
static FORWARD4: Kernel = Kernel {
    name: "bias_gelu_forward4",
    source: SHADER,
    entry: "bias_gelu_forward4",
    reads: 2,
    writes: 1,
};
static BACKWARD4: Kernel = Kernel {
    name: "bias_gelu_backward4",
    source: SHADER,
    entry: "bias_gelu_backward4",
    reads: 3,
    writes: 1,
};

/// Params of the vec4 kernels (C % 4 == 0).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Params4 {
    pub rows: u32,
    pub c4: u32,
}

/// One dispatch of `scalar`, or of `vec4` when C % 4 == 0 (2-4x faster on lavapipe): one thread
/// per (vec4 column, VEC4_PER_THREAD rows).
fn launch(
    scalar: &'static Kernel,
    vec4: &'static Kernel,
    x: &Tensor,
    cols: usize,
    reads: &[&Tensor],
    out: &Tensor,
) -> Result<()> {
    let n = x.numel();
    if cols.is_multiple_of(4) {
        let q = Params4 { rows: (n / cols) as u32, c4: (cols / 4) as u32 };
        launch_1d(vec4, &q, reads, &[out], cols / 4 * (n / cols).div_ceil(VEC4_PER_THREAD))
    } else {
        launch_1d(scalar, &Params { n: n as u32, cols: cols as u32 }, reads, &[out], n)
    }
}

impl Tensor {
    /// gelu(self + bias) in one kernel; `bias` is [C], the last dimension of `self`.
    pub fn bias_gelu(&self, bias: &Tensor) -> Result<Tensor> {
        let op = "bias_gelu";
        self.check_f32(op)?;
        bias.check_f32(op)?;
        let cols = self.last_dim();
        if self.rank() == 0 || self.numel() == 0 || bias.shape() != [cols] {
            return shape_err(
                op,
                format!(
                    "x {:?} needs a bias of shape [{cols}], got {:?}",
                    self.shape(),
                    bias.shape()
                ),
            );
        }
        let y = output(self.gpu(), self.shape(), op)?; // (.., C)
        launch(&FORWARD, &FORWARD4, self, cols, &[self, bias], &y)?;
        let saved = (self.clone(), bias.clone());
        let bias_grad = bias.requires_grad();
        Ok(y.attach(op, &[self, bias], move |dout| {
            let (x, bias) = saved;
            let dx = output(x.gpu(), x.shape(), "bias_gelu_backward")?; // (.., C)
            launch(&BACKWARD, &BACKWARD4, &x, cols, &[&x, &bias, dout], &dx)?;
            let dbias =
                bias_grad.then(|| dx.reshape(&[x.numel() / cols, cols])?.sum_rows()).transpose()?; // (C)
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
