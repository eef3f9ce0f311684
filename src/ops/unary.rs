//! Elementwise unary ops. Math (forward / backward):
//!   neg:   −x                 dx = −dout
//!   scale: α·x                dx = α·dout
//!   exp:   eˣ                 dx = dout · y                (saves y)
//!   log:   ln x               dx = dout / x                (saves x)
//!   tanh:  tanh x             dx = dout · (1 − y²)         (saves y)
//!   relu:  max(x, 0)          dx = dout · [x > 0]          (saves x)
//!   gelu:  0.5x(1 + tanh(√(2/π)(x + 0.044715x³)))  (GPT-2's gelu_new; saves x)
//!          dx = dout · (0.5(1 + t) + 0.5x(1 − t²)√(2/π)(1 + 3·0.044715x²))
//! NOTE: tanh is computed as sign(u)(1 − e^{−2|u|})/(1 + e^{−2|u|}) so large |u| cannot overflow.

use bytemuck::{Pod, Zeroable};

use super::{launch_1d, output};
use crate::error::Result;
use crate::gpu::Kernel;
use crate::tensor::Tensor;

const SHADER: &str = include_str!("../../shaders/unary.wgsl");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Params {
    pub n: u32,
    pub alpha: f32,
}

macro_rules! kernel {
    ($name:ident, $label:literal, $entry:literal, $reads:literal) => {
        static $name: Kernel = Kernel { name: $label, source: SHADER, entry: $entry, reads: $reads, writes: 1 };
    };
}
kernel!(NEG, "unary_neg", "neg", 1);
kernel!(SCALE, "unary_scale", "scale", 1);
kernel!(EXP, "unary_exp", "exp_", 1);
kernel!(LOG, "unary_log", "log_", 1);
kernel!(TANH, "unary_tanh", "tanh_", 1);
kernel!(RELU, "unary_relu", "relu", 1);
kernel!(GELU, "unary_gelu", "gelu", 1);
kernel!(TANH_BACKWARD, "unary_tanh_backward", "tanh_backward", 2);
kernel!(RELU_BACKWARD, "unary_relu_backward", "relu_backward", 2);
kernel!(GELU_BACKWARD, "unary_gelu_backward", "gelu_backward", 2);

/// y = f(x) with one kernel.
fn forward(kernel: &'static Kernel, op: &'static str, x: &Tensor, alpha: f32) -> Result<Tensor> {
    x.check_f32(op)?;
    let y = output(x.gpu(), x.shape(), op)?;
    launch_1d(kernel, &Params { n: x.numel() as u32, alpha }, &[x], &[&y], x.numel())?;
    Ok(y)
}

/// dx = dout · f'(saved) with one backward kernel.
fn backward(kernel: &'static Kernel, op: &'static str, saved: &Tensor, dout: &Tensor) -> Result<Tensor> {
    let dx = output(saved.gpu(), saved.shape(), op)?;
    launch_1d(kernel, &Params { n: saved.numel() as u32, alpha: 0.0 }, &[saved, dout], &[&dx], saved.numel())?;
    Ok(dx)
}

impl Tensor {
    pub fn neg(&self) -> Result<Tensor> {
        let y = forward(&NEG, "neg", self, 0.0)?;
        Ok(y.attach("neg", &[self], |dout| Ok(vec![Some(dout.neg()?)])))
    }

    pub fn scale(&self, alpha: f32) -> Result<Tensor> {
        let y = forward(&SCALE, "scale", self, alpha)?;
        Ok(y.attach("scale", &[self], move |dout| Ok(vec![Some(dout.scale(alpha)?)])))
    }

    pub fn exp(&self) -> Result<Tensor> {
        let y = forward(&EXP, "exp", self, 0.0)?;
        let saved_y = y.clone();
        Ok(y.attach("exp", &[self], move |dout| Ok(vec![Some(dout.mul(&saved_y)?)])))
    }

    pub fn log(&self) -> Result<Tensor> {
        let y = forward(&LOG, "log", self, 0.0)?;
        let saved_x = self.clone();
        Ok(y.attach("log", &[self], move |dout| Ok(vec![Some(dout.div(&saved_x)?)])))
    }

    pub fn tanh(&self) -> Result<Tensor> {
        let y = forward(&TANH, "tanh", self, 0.0)?;
        let saved_y = y.clone();
        Ok(y.attach("tanh", &[self], move |dout| Ok(vec![Some(backward(&TANH_BACKWARD, "tanh_backward", &saved_y, dout)?)])))
    }

    pub fn relu(&self) -> Result<Tensor> {
        let y = forward(&RELU, "relu", self, 0.0)?;
        let saved_x = self.clone();
        Ok(y.attach("relu", &[self], move |dout| Ok(vec![Some(backward(&RELU_BACKWARD, "relu_backward", &saved_x, dout)?)])))
    }

    pub fn gelu(&self) -> Result<Tensor> {
        let y = forward(&GELU, "gelu", self, 0.0)?;
        let saved_x = self.clone();
        Ok(y.attach("gelu", &[self], move |dout| Ok(vec![Some(backward(&GELU_BACKWARD, "gelu_backward", &saved_x, dout)?)])))
    }
}

/// f64 references: forward(x) and backward(x, dout) -> dx.
pub mod cpu {
    use crate::cpu::Array;

    const GELU_K: f64 = 0.797_884_560_802_865_4; // √(2/π)

    pub fn neg(x: &Array) -> Array {
        x.map(|v| -v)
    }
    pub fn scale(x: &Array, alpha: f64) -> Array {
        x.map(|v| alpha * v)
    }
    pub fn exp(x: &Array) -> Array {
        x.map(f64::exp)
    }
    pub fn log(x: &Array) -> Array {
        x.map(f64::ln)
    }
    pub fn tanh(x: &Array) -> Array {
        x.map(f64::tanh)
    }
    pub fn relu(x: &Array) -> Array {
        x.map(|v| v.max(0.0))
    }
    pub fn gelu(x: &Array) -> Array {
        x.map(|v| 0.5 * v * (1.0 + (GELU_K * (v + 0.044715 * v * v * v)).tanh()))
    }

    pub fn neg_backward(_x: &Array, dout: &Array) -> Array {
        dout.map(|d| -d)
    }
    pub fn scale_backward(_x: &Array, dout: &Array, alpha: f64) -> Array {
        dout.map(|d| alpha * d)
    }
    pub fn exp_backward(x: &Array, dout: &Array) -> Array {
        x.zip(dout, |v, d| d * v.exp())
    }
    pub fn log_backward(x: &Array, dout: &Array) -> Array {
        x.zip(dout, |v, d| d / v)
    }
    pub fn tanh_backward(x: &Array, dout: &Array) -> Array {
        x.zip(dout, |v, d| d * (1.0 - v.tanh().powi(2)))
    }
    pub fn relu_backward(x: &Array, dout: &Array) -> Array {
        x.zip(dout, |v, d| if v > 0.0 { d } else { 0.0 })
    }
    pub fn gelu_backward(x: &Array, dout: &Array) -> Array {
        x.zip(dout, |v, d| {
            let t = (GELU_K * (v + 0.044715 * v * v * v)).tanh();
            let dt = (1.0 - t * t) * GELU_K * (1.0 + 3.0 * 0.044715 * v * v);
            d * (0.5 * (1.0 + t) + 0.5 * v * dt)
        })
    }
}
