//! Elementwise unary ops. Math (forward / backward):
//!   neg:   −x                 dx = −dout
//!   scale: α·x                dx = α·dout
//!   exp:   eˣ                 dx = dout · y                (saves y)
//!   log:   ln x               dx = dout / x                (saves x)
//!   tanh:  tanh x             dx = dout · (1 − y²)         (saves y)
//!   relu:  max(x, 0)          dx = dout · [x > 0]          (saves x)
//!   sqrt:  √x  (x ≥ 0)        dx = dout / (2y)             (saves y; DoRA's weight norm)
//!   gelu:  0.5x(1 + tanh(√(2/π)(x + 0.044715x³)))  (GPT-2's gelu_new; saves x)
//!          dx = dout · (0.5(1 + t) + 0.5x(1 − t²)√(2/π)(1 + 3·0.044715x²))
//! Kernels: one shader function per direction with an op code; vec4 kernels when numel % 4 == 0.
//! NOTE: tanh is computed as sign(u)(1 − e^{−2|u|})/(1 + e^{−2|u|}) so large |u| cannot overflow.

use bytemuck::{Pod, Zeroable};

use super::{launch_1d, launch_vec4, output};
use crate::error::Result;
use crate::gpu::Kernel;
use crate::tensor::Tensor;

const SHADER: &str = include_str!("../../shaders/unary.wgsl");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Params {
    pub n: u32,
    pub alpha: f32,
    pub op: u32,
    pub _pad: u32,
}

/// One function of the shader: its op code and its scalar and vec4 kernels (named apart, so each
/// op keeps its own line in the profile).
struct Unary {
    code: u32,
    scalar: Kernel,
    vec4: Kernel,
}

macro_rules! unary {
    ($name:ident, $code:literal, $label:literal, $dir:literal, $reads:literal) => {
        static $name: Unary = Unary {
            code: $code,
            scalar: Kernel { name: $label, source: SHADER, entry: $dir, reads: $reads, writes: 1 },
            vec4: Kernel {
                name: concat!($label, "4"),
                source: SHADER,
                entry: concat!($dir, "4"),
                reads: $reads,
                writes: 1,
            },
        };
    };
}
unary!(NEG, 0, "unary_neg", "forward", 1);
unary!(SCALE, 1, "unary_scale", "forward", 1);
unary!(EXP, 2, "unary_exp", "forward", 1);
unary!(LOG, 3, "unary_log", "forward", 1);
unary!(TANH, 4, "unary_tanh", "forward", 1);
unary!(RELU, 5, "unary_relu", "forward", 1);
unary!(GELU, 6, "unary_gelu", "forward", 1);
unary!(SQRT, 7, "unary_sqrt", "forward", 1);
unary!(TANH_BACKWARD, 0, "unary_tanh_backward", "backward", 2);
unary!(RELU_BACKWARD, 1, "unary_relu_backward", "backward", 2);
unary!(GELU_BACKWARD, 2, "unary_gelu_backward", "backward", 2);

/// One dispatch of `f` over `out`: the vec4 kernel when numel % 4 == 0, else the scalar one.
fn launch(f: &'static Unary, alpha: f32, reads: &[&Tensor], out: &Tensor) -> Result<()> {
    let n = out.numel();
    if n.is_multiple_of(4) {
        launch_vec4(
            &f.vec4,
            &Params { n: (n / 4) as u32, alpha, op: f.code, _pad: 0 },
            reads,
            &[out],
            n / 4,
        )
    } else {
        launch_1d(&f.scalar, &Params { n: n as u32, alpha, op: f.code, _pad: 0 }, reads, &[out], n)
    }
}

/// y = f(x) with one kernel.
fn forward(f: &'static Unary, op: &'static str, x: &Tensor, alpha: f32) -> Result<Tensor> {
    x.check_f32(op)?;
    let y = output(x.gpu(), x.shape(), op)?;
    launch(f, alpha, &[x], &y)?;
    Ok(y)
}

/// dx = dout · f'(saved) with one backward kernel.
fn backward(f: &'static Unary, op: &'static str, saved: &Tensor, dout: &Tensor) -> Result<Tensor> {
    let dx = output(saved.gpu(), saved.shape(), op)?;
    launch(f, 0.0, &[saved, dout], &dx)?;
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
        Ok(y.attach("tanh", &[self], move |dout| {
            Ok(vec![Some(backward(&TANH_BACKWARD, "tanh_backward", &saved_y, dout)?)])
        }))
    }

    pub fn relu(&self) -> Result<Tensor> {
        let y = forward(&RELU, "relu", self, 0.0)?;
        let saved_x = self.clone();
        Ok(y.attach("relu", &[self], move |dout| {
            Ok(vec![Some(backward(&RELU_BACKWARD, "relu_backward", &saved_x, dout)?)])
        }))
    }

    pub fn sqrt(&self) -> Result<Tensor> {
        let y = forward(&SQRT, "sqrt", self, 0.0)?;
        let saved_y = y.clone();
        Ok(y.attach("sqrt", &[self], move |dout| Ok(vec![Some(dout.div(&saved_y)?.scale(0.5)?)])))
    }

    pub fn gelu(&self) -> Result<Tensor> {
        let y = forward(&GELU, "gelu", self, 0.0)?;
        let saved_x = self.clone();
        Ok(y.attach("gelu", &[self], move |dout| {
            Ok(vec![Some(backward(&GELU_BACKWARD, "gelu_backward", &saved_x, dout)?)])
        }))
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
    pub fn sqrt(x: &Array) -> Array {
        x.map(f64::sqrt)
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
    pub fn sqrt_backward(x: &Array, dout: &Array) -> Array {
        x.zip(dout, |v, d| d / (2.0 * v.sqrt()))
    }
    pub fn gelu_backward(x: &Array, dout: &Array) -> Array {
        x.zip(dout, |v, d| {
            let t = (GELU_K * (v + 0.044715 * v * v * v)).tanh();
            let dt = (1.0 - t * t) * GELU_K * (1.0 + 3.0 * 0.044715 * v * v);
            d * (0.5 * (1.0 + t) + 0.5 * v * dt)
        })
    }
}
