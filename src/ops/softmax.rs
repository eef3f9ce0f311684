//! Softmax and log-softmax over the last dimension, any leading shape ([.., C] viewed as [rows, C]).
//!
//! Math, per row (m = max_c x_c):
//!   softmax:      y_c = exp(x_c − m) / Σ_k exp(x_k − m)
//!                 dx = y ⊙ (dout − Σ_c dout_c y_c)
//!   log_softmax:  y_c = x_c − m − log Σ_k exp(x_k − m)
//!                 dx = dout − softmax(x) · Σ_c dout_c      (softmax(x) = exp(y))
//! Derivations: docs/softmax.md. Saved for backward: the output y only (both backward formulas
//! need nothing else), and only when x requires grad.
//! Layout: contiguous row-major; one row = C consecutive floats.
//! Kernels: one invocation per row without barriers on CPU drivers (lavapipe; vec4 loads when
//! C % 4 == 0), one 256-wide workgroup per row with a barrier tree on GPUs (`Gpu::is_cpu`
//! chooses). On lavapipe at 4096×1024 the workgroup kernel took 308 ms, the scalar row kernel
//! 36–48 ms and the vec4 row kernel 13–30 ms (the machine was shared; `glassgrad bench softmax`).
//! NOTE: the max is subtracted before exp, so no exp overflows and the row sum is ≥ 1.
//! NOTE: log_softmax is computed directly (x − m − log s), never as log(softmax): log of a
//! softmax that underflowed to 0 would be −inf.
//!
//! The composed definitions (`softmax_composed`, `log_softmax_composed`) build the same functions
//! from exp, log, sum_last, sub, div and `expand_last`; tests compare them with the fused kernels,
//! outputs and gradients.

use bytemuck::{Pod, Zeroable};

use super::output;
use crate::error::{Result, shape_err};
use crate::gpu::{Kernel, grid_1d};
use crate::tensor::Tensor;

const SHADER: &str = include_str!("../../shaders/softmax.wgsl");
const SHADER_WG: &str = include_str!("../../shaders/softmax_wg.wgsl");
const SHADER_BACKWARD: &str = include_str!("../../shaders/softmax_backward.wgsl");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Params {
    pub rows: u32,
    pub cols: u32,
}

macro_rules! kernel {
    ($name:ident, $source:ident, $entry:literal, $reads:literal) => {
        static $name: Kernel = Kernel {
            name: concat!("softmax_", $entry),
            source: $source,
            entry: $entry,
            reads: $reads,
            writes: 1,
        };
    };
}
kernel!(SOFTMAX_ROWS, SHADER, "softmax_rows", 1);
kernel!(SOFTMAX_ROWS4, SHADER, "softmax_rows4", 1);
kernel!(SOFTMAX_WG, SHADER_WG, "softmax_wg", 1);
kernel!(LOG_SOFTMAX_ROWS, SHADER, "log_softmax_rows", 1);
kernel!(LOG_SOFTMAX_ROWS4, SHADER, "log_softmax_rows4", 1);
kernel!(LOG_SOFTMAX_WG, SHADER_WG, "log_softmax_wg", 1);
kernel!(SOFTMAX_BACKWARD, SHADER_BACKWARD, "softmax_backward", 2);
kernel!(LOG_SOFTMAX_BACKWARD, SHADER_BACKWARD, "log_softmax_backward", 2);
kernel!(SOFTMAX_BACKWARD4, SHADER_BACKWARD, "softmax_backward4", 2);
kernel!(LOG_SOFTMAX_BACKWARD4, SHADER_BACKWARD, "log_softmax_backward4", 2);
kernel!(ROW_MAX, SHADER, "row_max", 1);
kernel!(EXPAND_LAST, SHADER, "expand_last", 1);

/// Rows per workgroup of the one-invocation-per-row kernels (`WG` in the shader).
const ROWS_PER_GROUP: u32 = 64;

/// [.., C] as (rows, C), with the shape checks every row op shares.
pub(crate) fn rows_cols(x: &Tensor, op: &'static str) -> Result<(usize, usize)> {
    x.check_f32(op)?;
    let c = x.last_dim();
    if x.rank() == 0 || c == 0 || x.numel() == 0 {
        return shape_err(op, format!("needs a non-empty last dimension, got {:?}", x.shape()));
    }
    Ok((x.numel() / c, c))
}

/// One dispatch of a per-row kernel: a 64-row workgroup (CPU variant) or a workgroup per row.
fn launch_rows(
    kernel: &'static Kernel,
    per_workgroup: bool,
    rows: usize,
    cols: usize,
    reads: &[&Tensor],
    out: &Tensor,
) -> Result<()> {
    let params = Params { rows: rows as u32, cols: cols as u32 };
    let groups = if per_workgroup { grid_1d(rows, 1) } else { grid_1d(rows, ROWS_PER_GROUP) };
    let r: Vec<_> = reads.iter().map(|t| t.storage()).collect();
    out.gpu().dispatch(kernel, &params, &r, &[out.storage()], groups)
}

/// Which implementation of a fused forward runs (chosen from the adapter by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowKernel {
    /// One invocation per row, scalar loads (CPU drivers, any C).
    Rows,
    /// One invocation per row, vec4 loads (CPU drivers, C % 4 == 0).
    Rows4,
    /// One 256-wide workgroup per row with a barrier tree (GPUs).
    Workgroup,
}

/// The three variants of a fused forward kernel.
struct Variants {
    rows: &'static Kernel,
    rows4: &'static Kernel,
    workgroup: &'static Kernel,
}

/// Fused forward: one invocation per row on CPU drivers (vec4 when C % 4 == 0), one workgroup
/// per row on GPUs.
fn forward(x: &Tensor, op: &'static str, v: Variants) -> Result<Tensor> {
    let cols = x.last_dim();
    let choice = match (x.gpu().is_cpu(), cols.is_multiple_of(4)) {
        (true, true) => RowKernel::Rows4,
        (true, false) => RowKernel::Rows,
        (false, _) => RowKernel::Workgroup,
    };
    forward_with(x, op, v, choice)
}

fn forward_with(x: &Tensor, op: &'static str, v: Variants, choice: RowKernel) -> Result<Tensor> {
    let (rows, cols) = rows_cols(x, op)?;
    let y = output(x.gpu(), x.shape(), op)?; // (.., C)
    match choice {
        RowKernel::Rows4 if !cols.is_multiple_of(4) => {
            return shape_err(op, format!("the vec4 kernel needs C % 4 == 0, got {:?}", x.shape()));
        }
        RowKernel::Rows4 => launch_rows(v.rows4, false, rows, cols, &[x], &y)?,
        RowKernel::Rows => launch_rows(v.rows, false, rows, cols, &[x], &y)?,
        RowKernel::Workgroup => launch_rows(v.workgroup, true, rows, cols, &[x], &y)?,
    }
    Ok(y)
}

/// The forward of softmax (or log-softmax when `log`) with a chosen kernel, no autodiff: lets
/// tests check every variant on any adapter, and benchmarks compare them.
pub fn softmax_forward_with(x: &Tensor, log: bool, kernel: RowKernel) -> Result<Tensor> {
    if log {
        forward_with(x, "log_softmax", LOG_SOFTMAX, kernel)
    } else {
        forward_with(x, "softmax", SOFTMAX, kernel)
    }
}

const SOFTMAX: Variants =
    Variants { rows: &SOFTMAX_ROWS, rows4: &SOFTMAX_ROWS4, workgroup: &SOFTMAX_WG };
const LOG_SOFTMAX: Variants =
    Variants { rows: &LOG_SOFTMAX_ROWS, rows4: &LOG_SOFTMAX_ROWS4, workgroup: &LOG_SOFTMAX_WG };

/// Backward with one invocation per row (`kernel4`, vec4 loads, when C % 4 == 0).
fn backward(
    kernel: &'static Kernel,
    kernel4: &'static Kernel,
    op: &'static str,
    y: &Tensor,
    dout: &Tensor,
) -> Result<Tensor> {
    let cols = y.last_dim();
    let kernel = if cols.is_multiple_of(4) { kernel4 } else { kernel };
    let dx = output(y.gpu(), y.shape(), op)?; // (.., C)
    launch_rows(kernel, false, y.numel() / cols, cols, &[y, dout], &dx)?;
    Ok(dx)
}

impl Tensor {
    /// Softmax over the last dimension.
    pub fn softmax(&self) -> Result<Tensor> {
        let y = forward(self, "softmax", SOFTMAX)?;
        let saved_y = self.requires_grad().then(|| y.clone());
        Ok(y.attach("softmax", &[self], move |dout| {
            Ok(vec![
                saved_y
                    .map(|y| {
                        backward(
                            &SOFTMAX_BACKWARD,
                            &SOFTMAX_BACKWARD4,
                            "softmax_backward",
                            &y,
                            dout,
                        )
                    })
                    .transpose()?,
            ])
        }))
    }

    /// Log-softmax over the last dimension.
    pub fn log_softmax(&self) -> Result<Tensor> {
        let y = forward(self, "log_softmax", LOG_SOFTMAX)?;
        let saved_y = self.requires_grad().then(|| y.clone());
        Ok(y.attach("log_softmax", &[self], move |dout| {
            Ok(vec![
                saved_y
                    .map(|y| {
                        backward(
                            &LOG_SOFTMAX_BACKWARD,
                            &LOG_SOFTMAX_BACKWARD4,
                            "log_softmax_backward",
                            &y,
                            dout,
                        )
                    })
                    .transpose()?,
            ])
        }))
    }

    /// Row maximum over the last dimension, [.., C] → [..] ([C] → [1]). Not differentiable: the
    /// result is detached (softmax is invariant to the shift it is used for).
    pub fn max_last(&self) -> Result<Tensor> {
        let (rows, cols) = rows_cols(self, "max_last")?;
        let mut shape = self.shape()[..self.rank() - 1].to_vec();
        if shape.is_empty() {
            shape.push(1);
        }
        let m = output(self.gpu(), &shape, "max_last")?; // (..)
        launch_rows(&ROW_MAX, false, rows, cols, &[self], &m)?;
        Ok(m)
    }

    /// Repeats each element along a new last dimension of size `c`: [..] → [.., c].
    /// The adjoint of `sum_last`: its gradient is `dout.sum_last()`.
    pub fn expand_last(&self, c: usize) -> Result<Tensor> {
        self.check_f32("expand_last")?;
        if c == 0 {
            return shape_err(
                "expand_last",
                format!("cannot expand {:?} to a last dimension of 0", self.shape()),
            );
        }
        let mut shape = self.shape().to_vec();
        shape.push(c);
        let out = output(self.gpu(), &shape, "expand_last")?; // (.., c)
        let params = Params { rows: self.numel() as u32, cols: c as u32 };
        out.gpu().dispatch(
            &EXPAND_LAST,
            &params,
            &[self.storage()],
            &[out.storage()],
            grid_1d(out.numel(), ROWS_PER_GROUP),
        )?;
        Ok(out.attach("expand_last", &[self], |dout| Ok(vec![Some(dout.sum_last()?)])))
    }
}

/// `v` [..] (one value per row of `like` [.., C]) repeated along the rows: → [.., C].
pub fn expand_rows(v: &Tensor, like: &Tensor) -> Result<Tensor> {
    let leading = if like.rank() > 1 { like.shape()[..like.rank() - 1].to_vec() } else { vec![1] };
    v.reshape(&leading)?.expand_last(like.last_dim())?.reshape(like.shape())
}

/// The reference definition from primitives: e = exp(x − m) with m = max detached; e / Σ e.
pub fn softmax_composed(x: &Tensor) -> Result<Tensor> {
    let z = x.sub(&expand_rows(&x.max_last()?, x)?)?; // (.., C)
    let e = z.exp()?; // (.., C)
    e.div(&expand_rows(&e.sum_last()?, x)?)
}

/// The reference definition of log-softmax: z − log Σ exp(z), z = x − max (detached).
pub fn log_softmax_composed(x: &Tensor) -> Result<Tensor> {
    let z = x.sub(&expand_rows(&x.max_last()?, x)?)?; // (.., C)
    let lse = z.exp()?.sum_last()?.log()?; // (..)
    z.sub(&expand_rows(&lse, x)?)
}

/// f64 references.
pub mod cpu {
    use crate::cpu::Array;

    pub fn softmax(x: &Array) -> Array {
        let c = x.last_dim();
        let mut y = x.clone();
        for row in y.data.chunks_mut(c) {
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
            for v in row.iter_mut() {
                *v = (*v - m).exp() / s;
            }
        }
        y
    }
    pub fn softmax_backward(x: &Array, dout: &Array) -> Array {
        let c = x.last_dim();
        let y = softmax(x);
        let mut dx = Array::zeros(&x.shape);
        for r in 0..x.rows() {
            let row = r * c..(r + 1) * c;
            let dot: f64 = row.clone().map(|i| dout.data[i] * y.data[i]).sum();
            for i in row {
                dx.data[i] = y.data[i] * (dout.data[i] - dot);
            }
        }
        dx
    }
    pub fn log_softmax(x: &Array) -> Array {
        softmax(x).map(f64::ln)
    }
    pub fn log_softmax_backward(x: &Array, dout: &Array) -> Array {
        let c = x.last_dim();
        let y = softmax(x);
        let mut dx = Array::zeros(&x.shape);
        for r in 0..x.rows() {
            let row = r * c..(r + 1) * c;
            let total: f64 = row.clone().map(|i| dout.data[i]).sum();
            for i in row {
                dx.data[i] = dout.data[i] - y.data[i] * total;
            }
        }
        dx
    }
    /// [..] → [.., c]: y[r, k] = x[r].
    pub fn expand_last(x: &Array, c: usize) -> Array {
        let mut shape = x.shape.clone();
        shape.push(c);
        Array::new(&shape, x.data.iter().flat_map(|&v| std::iter::repeat_n(v, c)).collect())
    }
    pub fn expand_last_backward(x: &Array, dout: &Array, c: usize) -> Array {
        Array::new(&x.shape, dout.data.chunks(c).map(|row| row.iter().sum()).collect())
    }
}
