//! Cross-entropy loss, fused with its log-softmax: logits [N, V], targets u32 [N] → loss [1].
//!
//! Math (lse_r = log Σ_v exp(x[r, v]), counted rows: t_r ≠ IGNORE, count = their number):
//!   loss = Σ_counted (lse_r − x[r, t_r]) / count              (0 when count = 0)
//!   dlogits[r, v] = dout · (softmax(x_r)_v − [v = t_r]) / count   on counted rows, 0 on ignored rows
//! Saved for backward: the logits, the targets, lse [N] and count [1] (on the GPU: no read-back).
//! A target of [`IGNORE`] (= u32::MAX; the host maps PyTorch's label −100 to it) contributes
//! nothing and is not counted.
//! Logits larger than one binding (GPT-2 small at B4 T256: 206 MB) are bound in windows of rows,
//! with the targets, lse and dlogits in the same windows (src/gpu/binding.rs).
//! NOTE: log-sum-exp with max-subtraction; the loss is lse − x_t, never log(softmax) (no log 0).
//! NOTE: with every target ignored the loss is 0 and the gradient is 0, not 0/0 = NaN.
//! NOTE: a target ≥ V other than IGNORE is clamped to V − 1 by the kernels (they cannot raise).
//!
//! `cross_entropy_composed` is the reference: log_softmax, then the targets' entries picked by a
//! one-hot mask built on the host; tests compare it with the fused kernel (loss and gradient).

use bytemuck::{Pod, Zeroable};

use super::output;
use super::softmax::RowKernel;
use crate::error::{Error, Result, shape_err};
use crate::gpu::{Kernel, grid_1d};
use crate::tensor::{DType, Tensor};

/// The target value that is skipped (PyTorch's ignore_index = −100, mapped on the host).
pub const IGNORE: u32 = u32::MAX;

const SHADER: &str = include_str!("../../shaders/cross_entropy.wgsl");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Params {
    pub rows: u32,
    pub cols: u32,
}

static ROWS: Kernel = Kernel {
    name: "cross_entropy_rows",
    source: SHADER,
    entry: "cross_entropy_rows",
    reads: 2,
    writes: 2,
};
static ROWS_WG: Kernel = Kernel {
    name: "cross_entropy_wg",
    source: SHADER,
    entry: "cross_entropy_wg",
    reads: 2,
    writes: 2,
};
static MEAN: Kernel = Kernel {
    name: "cross_entropy_mean",
    source: SHADER,
    entry: "cross_entropy_mean",
    reads: 2,
    writes: 2,
};
static BACKWARD: Kernel = Kernel {
    name: "cross_entropy_backward",
    source: SHADER,
    entry: "cross_entropy_backward",
    reads: 5,
    writes: 1,
};

impl Tensor {
    /// Mean cross-entropy of `self` (logits [N, V]) against `targets` (u32 [N]): → [1].
    pub fn cross_entropy(&self, targets: &Tensor) -> Result<Tensor> {
        let op = "cross_entropy";
        self.check_f32(op)?;
        if self.rank() != 2 || self.numel() == 0 {
            return shape_err(
                op,
                format!("logits must be a non-empty [N, V], got {:?}", self.shape()),
            );
        }
        let (rows, cols) = (self.shape()[0], self.shape()[1]);
        if targets.dtype() != DType::U32 {
            return Err(Error::Input(format!(
                "cross_entropy: targets must be u32, got {:?}",
                targets.dtype()
            )));
        }
        if targets.shape() != [rows] {
            return shape_err(
                op,
                format!(
                    "logits {:?} need targets of shape [{rows}], got {:?}",
                    self.shape(),
                    targets.shape()
                ),
            );
        }
        let gpu = self.gpu();
        let params = Params { rows: rows as u32, cols: cols as u32 };
        let lse = output(gpu, &[rows], op)?; // (N)
        let row_loss = output(gpu, &[rows], op)?; // (N)
        let loss = output(gpu, &[1], op)?; // (1)
        let count = output(gpu, &[1], op)?; // (1)
        // Per-row log-sum-exp: one invocation per row on CPU drivers, a workgroup per row on GPUs.
        let kernel = if gpu.is_cpu() { RowKernel::Rows } else { RowKernel::Workgroup };
        row_losses(self, targets, kernel, &lse, &row_loss)?;
        gpu.dispatch(
            &MEAN,
            &params,
            &[targets.storage(), row_loss.storage()],
            &[loss.storage(), count.storage()],
            [1, 1, 1],
        )?;
        let saved = self.requires_grad().then(|| (self.clone(), targets.clone(), lse, count));
        Ok(loss.attach(op, &[self, targets], move |dout| {
            let Some((logits, targets, lse, count)) = saved else { return Ok(vec![None, None]) };
            let gpu = dout.gpu();
            let dlogits = output(gpu, logits.shape(), "cross_entropy_backward")?; // (N, V)
            for w in gpu.rows_with_vectors("the logits (N, V)", rows, 4 * cols)? {
                gpu.dispatch_windows(
                    &BACKWARD,
                    &Params { rows: w.len() as u32, cols: cols as u32 },
                    &[
                        logits.storage().rows(&w, 4 * cols),
                        targets.storage().rows(&w, 4),
                        lse.storage().rows(&w, 4),
                        count.storage().whole(),
                        dout.storage().whole(),
                    ],
                    &[dlogits.storage().rows(&w, 4 * cols)],
                    grid_1d(w.len() * cols, 256),
                )?;
            }
            Ok(vec![Some(dlogits), None])
        }))
    }
}

/// lse [N] and per-row losses [N] with a chosen kernel (`Rows` or `Workgroup`; tests run both).
pub fn row_losses(
    logits: &Tensor,
    targets: &Tensor,
    kernel: RowKernel,
    lse: &Tensor,
    row_loss: &Tensor,
) -> Result<()> {
    let (rows, cols) = (logits.shape()[0], logits.shape()[1]);
    let gpu = logits.gpu();
    // Logits larger than one binding go in windows of rows (src/gpu/binding.rs); one otherwise.
    for w in gpu.rows_with_vectors("the logits (N, V)", rows, 4 * cols)? {
        let params = Params { rows: w.len() as u32, cols: cols as u32 };
        let (k, groups) = match kernel {
            RowKernel::Workgroup => (&ROWS_WG, grid_1d(w.len(), 1)),
            _ => (&ROWS, grid_1d(w.len(), 64)),
        };
        gpu.dispatch_windows(
            k,
            &params,
            &[logits.storage().rows(&w, 4 * cols), targets.storage().rows(&w, 4)],
            &[lse.storage().rows(&w, 4), row_loss.storage().rows(&w, 4)],
            groups,
        )?;
    }
    Ok(())
}

/// The reference composition: −Σ_r log_softmax(x)[r, t_r] / count, the pick done by a one-hot
/// mask scaled by −1/count (built on the host from the targets read back).
pub fn cross_entropy_composed(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (rows, cols) = (logits.shape()[0], logits.shape()[1]);
    let t = targets.to_vec_u32()?;
    let count = t.iter().filter(|&&v| v != IGNORE).count();
    let mut mask = vec![0.0f32; rows * cols]; // (N, V)
    for (r, &v) in t.iter().enumerate() {
        if v != IGNORE {
            mask[r * cols + (v as usize).min(cols - 1)] = -1.0 / count as f32;
        }
    }
    let mask = Tensor::from_f32(logits.gpu(), &mask, &[rows, cols])?;
    logits.log_softmax()?.mul(&mask)?.sum_all()
}

/// f64 references. `targets` holds integer values; IGNORE as f64 (4294967295.0) is ignored.
// The references are plain index loops on purpose (style.md: clear loops, no cleverness).
#[allow(clippy::needless_range_loop)]
pub mod cpu {
    use super::IGNORE;
    use crate::cpu::Array;

    fn counted(targets: &Array) -> usize {
        targets.data.iter().filter(|&&t| t != IGNORE as f64).count()
    }

    pub fn cross_entropy(logits: &Array, targets: &Array) -> Array {
        let v = logits.shape[1];
        let count = counted(targets);
        let mut total = 0.0;
        for (r, &t) in targets.data.iter().enumerate() {
            if t == IGNORE as f64 {
                continue;
            }
            let row = &logits.data[r * v..(r + 1) * v];
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            total += lse - row[t as usize];
        }
        Array::new(&[1], vec![if count == 0 { 0.0 } else { total / count as f64 }])
    }

    /// [dlogits, dtargets (zeros)]
    pub fn cross_entropy_backward(logits: &Array, targets: &Array, dout: &Array) -> Vec<Array> {
        let v = logits.shape[1];
        let count = counted(targets);
        let mut dx = Array::zeros(&logits.shape);
        for (r, &t) in targets.data.iter().enumerate() {
            if t == IGNORE as f64 {
                continue;
            }
            let row = &logits.data[r * v..(r + 1) * v];
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = row.iter().map(|x| (x - m).exp()).sum();
            for k in 0..v {
                let onehot = if k == t as usize { 1.0 } else { 0.0 };
                dx.data[r * v + k] =
                    dout.data[0] * ((row[k] - m).exp() / s - onehot) / count as f64;
            }
        }
        vec![dx, Array::zeros(&targets.shape)]
    }
}
