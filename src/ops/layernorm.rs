//! LayerNorm over the last dimension C, any leading shape ([.., C] viewed as [rows, C]).
//!
//! Math, per row (GPT-2's ln_1, ln_2, ln_f):
//!   mean = Σ_c x_c / C,  var = Σ_c (x_c − mean)² / C,  rstd = 1 / √(var + eps)
//!   norm_c = (x_c − mean) · rstd,  y_c = norm_c · weight_c + bias_c
//! Backward (derivation: docs/layernorm.md), with dnorm = dout ⊙ weight:
//!   dx_c      = rstd · (dnorm_c − mean_k(dnorm_k) − norm_c · mean_k(dnorm_k · norm_k))
//!   dweight_c = Σ_rows dout_c · norm_c          dbias_c = Σ_rows dout_c
//! Saved for backward: x, mean and rstd [rows] when x or weight needs a gradient; weight when x
//! does (bias needs nothing saved). Column sums are deterministic, no atomics: partial sums over
//! chunks of 64 rows, then one invocation per column adds its chunks in order.
//! NOTE: biased variance (÷ C), computed over x − mean in a second pass (no E[x²] − mean²).
//! NOTE: eps is added to the variance inside the square root (PyTorch's placement).
//!
//! `layernorm_composed` builds the same function from mean_last, sub, mul, log, exp and
//! `expand_last`; tests compare it with the fused kernel, outputs and all three gradients.

use bytemuck::{Pod, Zeroable};

use super::output;
use super::softmax::{RowKernel, expand_rows, rows_cols};
use crate::error::{Result, shape_err};
use crate::gpu::{Category, Kernel, grid_1d};
use crate::tensor::{DType, Tensor};

const SHADER: &str = include_str!("../../shaders/layernorm.wgsl");
const SHADER_WG: &str = include_str!("../../shaders/layernorm_wg.wgsl");
const SHADER_PARAMS: &str = include_str!("../../shaders/layernorm_params.wgsl");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Params {
    pub rows: u32,
    pub cols: u32,
    pub eps: f32,
}

static FORWARD: Kernel = Kernel {
    name: "layernorm_forward",
    source: SHADER,
    entry: "layernorm_forward",
    reads: 3,
    writes: 3,
};
static FORWARD4: Kernel = Kernel {
    name: "layernorm_forward4",
    source: SHADER,
    entry: "layernorm_forward4",
    reads: 3,
    writes: 3,
};
static BACKWARD_X: Kernel = Kernel {
    name: "layernorm_backward_x",
    source: SHADER,
    entry: "layernorm_backward_x",
    reads: 5,
    writes: 1,
};
static FORWARD_WG: Kernel = Kernel {
    name: "layernorm_forward_wg",
    source: SHADER_WG,
    entry: "layernorm_forward_wg",
    reads: 3,
    writes: 3,
};
static BACKWARD_X_WG: Kernel = Kernel {
    name: "layernorm_backward_x_wg",
    source: SHADER_WG,
    entry: "layernorm_backward_x_wg",
    reads: 5,
    writes: 1,
};
static BACKWARD_X4: Kernel = Kernel {
    name: "layernorm_backward_x4",
    source: SHADER,
    entry: "layernorm_backward_x4",
    reads: 5,
    writes: 1,
};
static PARAMS_PARTIAL: Kernel = Kernel {
    name: "layernorm_backward_params_partial",
    source: SHADER_PARAMS,
    entry: "layernorm_backward_params_partial",
    reads: 4,
    writes: 2,
};
static PARAMS_SUM: Kernel = Kernel {
    name: "layernorm_backward_params_sum",
    source: SHADER_PARAMS,
    entry: "layernorm_backward_params_sum",
    reads: 2,
    writes: 2,
};

/// Rows per partial column sum (`ROWS_PER_CHUNK` in the shader).
const ROWS_PER_CHUNK: usize = 64;

/// Invocations per workgroup (`WG` in the shader).
const WG: u32 = 64;

/// What backward needs, kept only for the gradients that are wanted.
struct Saved {
    x: Tensor,              // (rows, C)
    mean: Tensor,           // (rows)
    rstd: Tensor,           // (rows)
    weight: Option<Tensor>, // (C), only when x needs a gradient
}

impl Tensor {
    /// LayerNorm of `self` [.., C] with `weight` and `bias` [C].
    pub fn layernorm(&self, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
        let kernel = match (self.gpu().is_cpu(), self.last_dim().is_multiple_of(4)) {
            (true, true) => RowKernel::Rows4,
            (true, false) => RowKernel::Rows,
            (false, _) => RowKernel::Workgroup,
        };
        self.layernorm_with(weight, bias, eps, kernel)
    }

    /// `layernorm` with a chosen kernel variant for the per-row forward and dx (tests run each
    /// variant on any adapter). `Rows4` needs C % 4 == 0.
    pub fn layernorm_with(
        &self,
        weight: &Tensor,
        bias: &Tensor,
        eps: f32,
        kernel: RowKernel,
    ) -> Result<Tensor> {
        let op = "layernorm";
        let (rows, cols) = rows_cols(self, op)?;
        weight.check_f32(op)?;
        bias.check_f32(op)?;
        if weight.shape() != [cols] || bias.shape() != [cols] {
            return shape_err(
                op,
                format!(
                    "x {:?} needs weight and bias of shape [{cols}], got {:?} and {:?}",
                    self.shape(),
                    weight.shape(),
                    bias.shape()
                ),
            );
        }
        let gpu = self.gpu();
        let y = output(gpu, self.shape(), op)?; // (.., C)
        let mean = output(gpu, &[rows], op)?; // (rows)
        let rstd = output(gpu, &[rows], op)?; // (rows)
        let params = Params { rows: rows as u32, cols: cols as u32, eps };
        if kernel == RowKernel::Rows4 && !cols.is_multiple_of(4) {
            return shape_err(
                op,
                format!("the vec4 kernel needs C % 4 == 0, got {:?}", self.shape()),
            );
        }
        // (forward, dx backward, workgroups): vec4 loads help a CPU driver, which gathers each
        // lane's loads; a workgroup per row suits a GPU.
        let (forward, backward_x, groups) = match kernel {
            RowKernel::Rows => (&FORWARD, &BACKWARD_X, grid_1d(rows, WG)),
            RowKernel::Rows4 => (&FORWARD4, &BACKWARD_X4, grid_1d(rows, WG)),
            RowKernel::Workgroup => (&FORWARD_WG, &BACKWARD_X_WG, grid_1d(rows, 1)),
        };
        gpu.dispatch(
            forward,
            &params,
            &[self.storage(), weight.storage(), bias.storage()],
            &[y.storage(), mean.storage(), rstd.storage()],
            groups,
        )?;
        let saved = (self.requires_grad() || weight.requires_grad()).then(|| Saved {
            x: self.clone(),
            mean,
            rstd,
            weight: self.requires_grad().then(|| weight.clone()),
        });
        let (x_grad, params_grad) =
            (self.requires_grad(), weight.requires_grad() || bias.requires_grad());
        Ok(y.attach(op, &[self, weight, bias], move |dout| {
            let mut grads = vec![None, None, None];
            let Some(s) = saved else {
                // Only bias needs a gradient: a column sum of dout.
                grads[2] = Some(dout.reshape(&[rows, cols])?.sum_rows()?);
                return Ok(grads);
            };
            if x_grad {
                let w = s.weight.as_ref().expect("weight saved when x needs a gradient");
                let dx = output(dout.gpu(), dout.shape(), "layernorm_backward")?; // (.., C)
                dout.gpu().dispatch(
                    backward_x,
                    &params,
                    &[
                        s.x.storage(),
                        w.storage(),
                        s.mean.storage(),
                        s.rstd.storage(),
                        dout.storage(),
                    ],
                    &[dx.storage()],
                    groups,
                )?;
                grads[0] = Some(dx);
            }
            if params_grad {
                let gpu = dout.gpu();
                let chunks = rows.div_ceil(ROWS_PER_CHUNK);
                let part_dweight = Tensor::empty(
                    gpu,
                    &[chunks, cols],
                    DType::F32,
                    Category::Scratch,
                    "layernorm_backward",
                )?; // (chunks, C)
                let part_dbias = Tensor::empty(
                    gpu,
                    &[chunks, cols],
                    DType::F32,
                    Category::Scratch,
                    "layernorm_backward",
                )?; // (chunks, C)
                gpu.dispatch(
                    &PARAMS_PARTIAL,
                    &params,
                    &[s.x.storage(), s.mean.storage(), s.rstd.storage(), dout.storage()],
                    &[part_dweight.storage(), part_dbias.storage()],
                    grid_1d(chunks * cols, WG),
                )?;
                let dweight = output(gpu, &[cols], "layernorm_backward")?; // (C)
                let dbias = output(gpu, &[cols], "layernorm_backward")?; // (C)
                gpu.dispatch(
                    &PARAMS_SUM,
                    &params,
                    &[part_dweight.storage(), part_dbias.storage()],
                    &[dweight.storage(), dbias.storage()],
                    grid_1d(cols, WG),
                )?;
                grads[1] = Some(dweight);
                grads[2] = Some(dbias);
            }
            Ok(grads)
        }))
    }
}

/// The reference definition from primitives: (x − mean)·rstd·weight + bias with
/// rstd = exp(−½·log(var + eps)) (there is no sqrt op; this is the same function).
pub fn layernorm_composed(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    let (rows, _) = rows_cols(x, "layernorm_composed")?;
    let centered = x.sub(&expand_rows(&x.mean_last()?, x)?)?; // (.., C)
    let var = centered.mul(&centered)?.mean_last()?.reshape(&[rows])?; // (rows)
    let eps_t = Tensor::full(x.gpu(), &[rows], eps)?; // (rows)
    let rstd = var.add(&eps_t)?.log()?.scale(-0.5)?.exp()?; // (rows)
    centered.mul(&expand_rows(&rstd, x)?)?.mul(weight)?.add(bias)
}

/// f64 references: forward and backward -> [dx, dweight, dbias].
// The references are plain index loops on purpose (style.md: clear loops, no cleverness).
#[allow(clippy::needless_range_loop)]
pub mod cpu {
    use crate::cpu::Array;

    /// (y, mean, rstd)
    pub fn layernorm_stats(
        x: &Array,
        weight: &Array,
        bias: &Array,
        eps: f64,
    ) -> (Array, Vec<f64>, Vec<f64>) {
        let c = x.last_dim();
        let mut y = Array::zeros(&x.shape);
        let (mut means, mut rstds) = (vec![], vec![]);
        for r in 0..x.rows() {
            let row = &x.data[r * c..(r + 1) * c];
            let mean = row.iter().sum::<f64>() / c as f64;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / c as f64;
            let rstd = 1.0 / (var + eps).sqrt();
            for i in 0..c {
                y.data[r * c + i] = (row[i] - mean) * rstd * weight.data[i] + bias.data[i];
            }
            means.push(mean);
            rstds.push(rstd);
        }
        (y, means, rstds)
    }
    pub fn layernorm(x: &Array, weight: &Array, bias: &Array, eps: f64) -> Array {
        layernorm_stats(x, weight, bias, eps).0
    }
    pub fn layernorm_backward(
        x: &Array,
        weight: &Array,
        bias: &Array,
        eps: f64,
        dout: &Array,
    ) -> Vec<Array> {
        let c = x.last_dim();
        let (_, means, rstds) = layernorm_stats(x, weight, bias, eps);
        let mut dx = Array::zeros(&x.shape);
        let mut dweight = Array::zeros(&[c]);
        let mut dbias = Array::zeros(&[c]);
        for r in 0..x.rows() {
            let norm: Vec<f64> =
                (0..c).map(|i| (x.data[r * c + i] - means[r]) * rstds[r]).collect();
            let dnorm: Vec<f64> = (0..c).map(|i| dout.data[r * c + i] * weight.data[i]).collect();
            let dnorm_mean = dnorm.iter().sum::<f64>() / c as f64;
            let dnorm_norm_mean = (0..c).map(|i| dnorm[i] * norm[i]).sum::<f64>() / c as f64;
            for i in 0..c {
                dx.data[r * c + i] = rstds[r] * (dnorm[i] - dnorm_mean - norm[i] * dnorm_norm_mean);
                dweight.data[i] += dout.data[r * c + i] * norm[i];
                dbias.data[i] += dout.data[r * c + i];
            }
        }
        vec![dx, dweight, dbias]
    }
}
