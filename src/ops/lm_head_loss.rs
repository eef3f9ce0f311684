//! The LM head fused with cross-entropy, for when only the loss is needed (training; `forward`
//! without logits): x [N, C], W [V, C], targets u32 [N] → loss [1], and the [N, V] logits never
//! exist at once — Liger's FusedLinearCrossEntropy / Apple's Cut Cross-Entropy idea.
//!
//! Math (lse_n = log Σ_v exp(l[n, v]), l = x·Wᵀ, counted rows: t_n ≠ IGNORE):
//!   loss = Σ_counted (lse_n − l[n, t_n]) / count
//!   g = dL/dl = dout · (softmax(l_n) − onehot(t_n)) / count    (0 on ignored rows)
//!   dx = g·W        dW = gᵀ·x
//! Chunked over vocabulary windows [v0, v1) of at most `CHUNK_BYTES` (lm_head.rs) of logits
//! (N, Vi) and of W's rows (Vi, C):
//!   forward:  l_i = x·W[v0:v1]ᵀ; a running (max, Σexp) per row is merged chunk by chunk (online
//!             log-sum-exp), and the chunk holding t_n gives l[n, t_n]; then lse and the mean.
//!   backward: l_i recomputed, g_i = dout·(exp(l_i − lse) − onehot)/count in place;
//!             dx += g_i·W[v0:v1];  dW[v0:v1] = g_iᵀ·x (written into its rows of dW).
//! So the peak holds one chunk, not the logits, their softmax and dlogits: at GPT-2 small's
//! B4 T256 that is 16 MiB instead of three times 206 MB. The forward matmul runs twice (again in
//! backward), as in Cut Cross-Entropy.
//! Saved for backward: x, W, the targets, lse [N], and (loss, count) [2] (no read-back).
//! The reference is the unfused `x.lm_head(W).cross_entropy(targets)`; tests/gpu/big.rs compares
//! loss and both gradients.
//! NOTE: online log-sum-exp: exp(m_old − m_new) rescales the old sum; the first chunk starts
//! the state, so no exp(−∞ + ∞) can appear.

use std::rc::Rc;

use bytemuck::{Pod, Zeroable};

use super::lm_head::{CHUNK_BYTES, weight_rows};
use super::output;
use crate::error::{Error, Result, shape_err};
use crate::gpu::{Gpu, Kernel, grid_1d};
use crate::tensor::{DType, Tensor};

const SHADER: &str = include_str!("../../shaders/lm_head_loss.wgsl");

/// Field names match `Params` in shaders/lm_head_loss.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Params {
    pub rows: u32,
    pub width: u32,
    pub col0: u32,
    pub vocab: u32,
    pub first: u32,
    pub _pad: [u32; 3],
}

static UPDATE: Kernel = Kernel {
    name: "lm_head_loss_update",
    source: SHADER,
    entry: "lm_head_loss_update",
    reads: 2,
    writes: 1,
};
static FINISH: Kernel = Kernel {
    name: "lm_head_loss_finish",
    source: SHADER,
    entry: "lm_head_loss_finish",
    reads: 2,
    writes: 2,
};
static DLOGITS: Kernel = Kernel {
    name: "lm_head_loss_dlogits",
    source: SHADER,
    entry: "lm_head_loss_dlogits",
    reads: 4,
    writes: 1,
};

impl Tensor {
    /// Mean cross-entropy of the logits x·Wᵀ (x = self [N, C], W [V, C]) against `targets`
    /// (u32 [N], IGNORE skipped), computed over vocabulary chunks: → [1].
    pub fn lm_head_loss(&self, weight: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let op = "lm_head_loss";
        self.check_f32(op)?;
        weight.check_f32(op)?;
        if self.rank() != 2 || weight.rank() != 2 || self.shape()[1] != weight.shape()[1] {
            return shape_err(
                op,
                format!(
                    "expects x [N, C] and W [V, C], got {:?} and {:?}",
                    self.shape(),
                    weight.shape()
                ),
            );
        }
        let (n, c, v) = (self.shape()[0], self.shape()[1], weight.shape()[0]);
        if targets.dtype() != DType::U32 || targets.shape() != [n] {
            return Err(Error::Input(format!(
                "{op}: targets must be u32 [{n}], got {:?} {:?}",
                targets.dtype(),
                targets.shape()
            )));
        }
        let gpu: &Rc<Gpu> = self.gpu();
        let windows = chunk_windows(gpu, n, v, c)?;
        let state = output(gpu, &[3, n], op)?; // (3, N): running max, Σexp, target logit
        let tape_off = crate::autograd::no_grad(); // the chunks are internal; one node below
        for (i, cols) in windows.iter().enumerate() {
            let chunk = self.matmul_t(&weight_rows(weight, cols)?, false, true)?; // (N, Vi)
            let params = chunk_params(n, v, cols, i == 0);
            gpu.dispatch(
                &UPDATE,
                &params,
                &[chunk.storage(), targets.storage()],
                &[state.storage()],
                grid_1d(n, 64),
            )?;
        }
        let lse = output(gpu, &[n], op)?; // (N)
        let loss = output(gpu, &[2], op)?; // (2): loss, count
        let params = chunk_params(n, v, &(0..v), true);
        gpu.dispatch(
            &FINISH,
            &params,
            &[targets.storage(), state.storage()],
            &[lse.storage(), loss.storage()],
            [1, 1, 1],
        )?;
        drop((state, tape_off));
        let mean = output(gpu, &[1], op)?; // (1)
        gpu.copy_range(loss.storage(), 0, mean.storage(), 0, 4)?;
        let needs_grad = self.requires_grad() || weight.requires_grad();
        let saved = needs_grad.then(|| (self.clone(), weight.clone(), targets.clone(), lse, loss));
        Ok(mean.attach(op, &[self, weight, targets], move |dout| {
            let Some((x, w, targets, lse, loss)) = saved else { return Ok(vec![None; 3]) };
            let gpu = dout.gpu();
            let mut dx: Option<Tensor> = None;
            let dw = if w.requires_grad() {
                Some(Tensor::empty(gpu, &[v, c], DType::F32, crate::Category::Activations, op)?)
            } else {
                None
            }; // (V, C)
            for cols in &windows {
                let w_rows = weight_rows(&w, cols)?; // (Vi, C)
                let g = x.matmul_t(&w_rows, false, true)?; // (N, Vi): logits, then dlogits
                gpu.dispatch(
                    &DLOGITS,
                    &chunk_params(n, v, cols, false),
                    &[targets.storage(), lse.storage(), loss.storage(), dout.storage()],
                    &[g.storage()],
                    grid_1d(n * cols.len(), 256),
                )?;
                if x.requires_grad() {
                    let part = g.matmul(&w_rows)?; // (N, C)
                    dx = Some(match dx {
                        Some(sum) => sum.add(&part)?,
                        None => part,
                    });
                }
                if let Some(dw) = &dw {
                    let part = g.matmul_t(&x, true, false)?; // (Vi, C)
                    let (offset, bytes) =
                        ((cols.start * c * 4) as u64, (cols.len() * c * 4) as u64);
                    gpu.copy_range(part.storage(), 0, dw.storage(), offset, bytes)?;
                }
            }
            Ok(vec![dx, dw, None])
        }))
    }
}

/// Vocabulary windows whose W rows (Vi, C) and logits chunk (N, Vi) each hold at most
/// `CHUNK_BYTES` (always chunked: that is the point of fusing).
fn chunk_windows(gpu: &Gpu, n: usize, v: usize, c: usize) -> Result<Vec<std::ops::Range<usize>>> {
    let budget = CHUNK_BYTES.min(gpu.max_binding() as usize);
    let most = (budget / (4 * n.max(c).max(1))).max(1);
    // W is only copied from (weight_rows), never bound, so windows need no aligned offsets.
    Ok((0..v).step_by(most).map(|s| s..(s + most).min(v)).collect())
}

fn chunk_params(n: usize, v: usize, cols: &std::ops::Range<usize>, first: bool) -> Params {
    Params {
        rows: n as u32,
        width: cols.len() as u32,
        col0: cols.start as u32,
        vocab: v as u32,
        first: first as u32,
        _pad: [0; 3],
    }
}

/// The f64 reference: the unfused head's logits, then cross-entropy, and their gradients.
pub mod cpu {
    use crate::cpu::Array;
    use crate::ops::cross_entropy::cpu as ce;
    use crate::ops::lm_head::cpu as head;

    pub fn lm_head_loss(x: &Array, w: &Array, targets: &Array) -> Array {
        ce::cross_entropy(&head::lm_head(x, w), targets)
    }

    /// [dx, dW, dtargets (zeros)]
    pub fn lm_head_loss_backward(
        x: &Array,
        w: &Array,
        targets: &Array,
        dout: &Array,
    ) -> Vec<Array> {
        let logits = head::lm_head(x, w);
        let dlogits = ce::cross_entropy_backward(&logits, targets, dout).remove(0);
        let mut grads = head::lm_head_backward(x, w, &dlogits);
        grads.push(Array::zeros(&targets.shape));
        grads
    }
}
