//! The LM head fused with cross-entropy, for when only the loss is needed (training; `forward`
//! without logits): x [N, C], W [V, C], targets u32 [N] → loss [1], and the [N, V] logits never
//! exist at once — Liger's FusedLinearCrossEntropy / Apple's Cut Cross-Entropy idea.
//!
//! Math (lse_n = log Σ_v exp(l[n, v]), l = x·Wᵀ, counted rows: t_n ≠ IGNORE):
//!   loss = Σ_counted (lse_n − l[n, t_n]) / count
//!   g = dL/dl = dout · (softmax(l_n) − onehot(t_n)) / count    (0 on ignored rows)
//!   dx = g·W        dW = gᵀ·x
//! Chunked over vocabulary windows [v0, v1) and row blocks [r0, r1) (`chunks`), so that W's rows
//! (Vi, C), x's rows (Nr, C) and a logits chunk (Nr, Vi) each hold at most `CHUNK_BYTES`
//! (lm_head.rs) whatever N = B·T is:
//!   forward:  per row block, lᵀ = W[v0:v1]·x[r0:r1]ᵀ window by window (transposed, so every
//!             product reads its operands along their rows: see matmul.rs); a running (max, Σexp) per
//!             row is merged chunk by chunk (online log-sum-exp), and the chunk holding t_n gives
//!             l[n, t_n]; then lse and the mean over all rows.
//!   backward: lᵀ recomputed, gᵀ = dout·(exp(lᵀ − lse) − onehot)/count in place;
//!             dx[r0:r1] += g·W[v0:v1];  dW[v0:v1] += gᵀ·x[r0:r1].
//! W's windows are bound in place (aligned offsets into wte, `matmul::matmul_rows`); x's row
//! blocks are copies when there is more than one (a buffer copy binds nothing).
//! So the peak holds one chunk, not the logits, their softmax and dlogits: at GPT-2 small's
//! B4 T256 that is 16 MiB instead of three times 206 MB. The forward matmul runs twice (again in
//! backward), as in Cut Cross-Entropy.
//! Saved for backward: x, W, the targets, lse [N], and (loss, count) [2] (no read-back).
//! The reference is the unfused `x.lm_head(W).cross_entropy(targets)`; tests/gpu/big.rs compares
//! loss and both gradients, with chunks forced small over both the vocabulary and the rows.
//! NOTE: online log-sum-exp: exp(m_old − m_new) rescales the old sum; the first chunk starts
//! the state, so no exp(−∞ + ∞) can appear.

use std::ops::Range;
use std::rc::Rc;

use bytemuck::{Pod, Zeroable};

use super::lm_head::CHUNK_BYTES;
use super::matmul::{TRANSPOSE_B_MIN_ROWS, matmul_rows, rows_matmul, transpose};
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
    pub row0: u32,
    pub total_rows: u32,
    pub _pad: u32,
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

/// The narrowest vocabulary window the row blocks leave room for (a chunk of fewer columns
/// would make many small products).
const MIN_WIDTH: usize = 256;

/// (vocabulary windows, row blocks) of the fused head.
pub type Chunks = (Vec<Range<usize>>, Vec<Range<usize>>);

/// How the fused head splits N rows of x [N, C] against W [V, C]: (vocabulary windows, row
/// blocks). Row blocks of at most budget / (4·max(C, MIN_WIDTH)) rows, windows of at most
/// budget / (4·max(Nr, C)) aligned rows of W, budget = min(`CHUNK_BYTES`, the binding limit):
/// so (Vi, C), (Nr, C) and (Nr, Vi) each fit the budget for any N.
pub fn chunks(gpu: &Gpu, n: usize, v: usize, c: usize) -> Result<Chunks> {
    let budget = CHUNK_BYTES.min(gpu.max_binding() as usize) / 4; // in f32s
    let rows_most = (budget / c.max(MIN_WIDTH)).max(1);
    let blocks: Vec<Range<usize>> =
        (0..n).step_by(rows_most).map(|r| r..(r + rows_most).min(n)).collect();
    let nr = blocks.first().map_or(1, |b| b.len());
    let most = (budget / nr.max(c).max(1)).max(1);
    let windows = gpu.row_windows_at_most("the LM head weight (V, C)", v, 4 * c, most)?;
    Ok((windows, blocks))
}

/// Rows `rows` of x [N, C]: x itself when that is all of it, else a copy [Nr, C].
fn row_block(x: &Tensor, rows: &Range<usize>) -> Result<Tensor> {
    let (n, c) = (x.shape()[0], x.shape()[1]);
    if rows.len() == n {
        return Ok(x.clone());
    }
    let block = output(x.gpu(), &[rows.len(), c], "lm_head_loss")?; // (Nr, C)
    let bytes = (rows.len() * c * 4) as u64;
    x.gpu().copy_range(x.storage(), (rows.start * c * 4) as u64, block.storage(), 0, bytes)?;
    Ok(block)
}

/// xᵀ of a row block when `logits_t` multiplies by it (see there).
fn x_rows_t(x: &Tensor) -> Result<Option<Tensor>> {
    (x.shape()[0] >= TRANSPOSE_B_MIN_ROWS).then(|| transpose(x)).transpose()
}

/// The logits of a row block x [Nr, C] and a vocabulary window, transposed: (Vi, Nr). Many rows:
/// W[v0:v1]·xᵀ, both operands read along their rows (x·Wᵀ would read W across them; see
/// matmul.rs). Few rows (a decode step's, where W·xᵀ would fill 64-column tiles with one):
/// x·W[v0:v1]ᵀ, then transposed.
fn logits_t(x: &Tensor, x_t: &Option<Tensor>, w: &Tensor, cols: &Range<usize>) -> Result<Tensor> {
    match x_t {
        Some(x_t) => rows_matmul(w, cols, x_t, false, false),
        None => transpose(&matmul_rows(x, w, cols, false, true)?),
    }
}

/// dst[rows] (+)= part, for dst [R, C] and part [rows.len(), C]: a copy when `first`, else the
/// rows copied out, added and copied back.
fn accumulate_rows(dst: &Tensor, rows: &Range<usize>, part: &Tensor, first: bool) -> Result<()> {
    let (gpu, c) = (dst.gpu(), dst.shape()[1]);
    let (offset, bytes) = ((rows.start * c * 4) as u64, (rows.len() * c * 4) as u64);
    let part = if first {
        part.clone()
    } else {
        let old = output(gpu, part.shape(), "lm_head_loss_backward")?; // (rows, C)
        gpu.copy_range(dst.storage(), offset, old.storage(), 0, bytes)?;
        old.add(part)?
    };
    gpu.copy_range(part.storage(), 0, dst.storage(), offset, bytes)
}

impl Tensor {
    /// Mean cross-entropy of the logits x·Wᵀ (x = self [N, C], W [V, C]) against `targets`
    /// (u32 [N], IGNORE skipped), computed over vocabulary chunks and row blocks: → [1].
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
        let (windows, blocks) = chunks(gpu, n, v, c)?;
        let state = output(gpu, &[3, n], op)?; // (3, N): running max, Σexp, target logit
        let tape_off = crate::autograd::no_grad(); // the chunks are internal; one node below
        for rows in &blocks {
            let x = row_block(self, rows)?; // (Nr, C)
            let x_t = x_rows_t(&x)?; // (C, Nr)
            for (i, cols) in windows.iter().enumerate() {
                let chunk = logits_t(&x, &x_t, weight, cols)?; // (Vi, Nr)
                gpu.dispatch(
                    &UPDATE,
                    &chunk_params(rows, n, v, cols, i == 0),
                    &[chunk.storage(), targets.storage()],
                    &[state.storage()],
                    grid_1d(rows.len(), 64),
                )?;
            }
        }
        let lse = output(gpu, &[n], op)?; // (N)
        let loss = output(gpu, &[2], op)?; // (2): loss, count
        gpu.dispatch(
            &FINISH,
            &chunk_params(&(0..n), n, v, &(0..v), true),
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
            let category = crate::Category::Activations;
            let dx = match x.requires_grad() {
                true if blocks.len() > 1 => {
                    Some(Tensor::empty(gpu, &[n, c], DType::F32, category, op)?)
                }
                _ => None,
            }; // (N, C), filled block by block (one block: its sum is dx)
            let dw = match w.requires_grad() {
                true => Some(Tensor::empty(gpu, &[v, c], DType::F32, category, op)?),
                false => None,
            }; // (V, C)
            let mut dx_whole = None;
            for (b, rows) in blocks.iter().enumerate() {
                let xb = row_block(&x, rows)?; // (Nr, C)
                let xb_t = x_rows_t(&xb)?; // (C, Nr)
                let mut dx_block: Option<Tensor> = None; // (Nr, C)
                for cols in &windows {
                    let g = logits_t(&xb, &xb_t, &w, cols)?; // (Vi, Nr): logitsᵀ, then gᵀ
                    let blocks_of_8 = cols.len().div_ceil(8);
                    let groups = [
                        rows.len().div_ceil(64) as u32,
                        blocks_of_8.min(65_535) as u32,
                        blocks_of_8.div_ceil(65_535) as u32,
                    ];
                    gpu.dispatch(
                        &DLOGITS,
                        &chunk_params(rows, n, v, cols, false),
                        &[targets.storage(), lse.storage(), loss.storage(), dout.storage()],
                        &[g.storage()],
                        groups,
                    )?;
                    if x.requires_grad() {
                        let part = matmul_rows(&g, &w, cols, true, false)?; // (Nr, C) = g·W[v0:v1]
                        dx_block = Some(match dx_block {
                            Some(sum) => sum.add(&part)?,
                            None => part,
                        });
                    }
                    if let Some(dw) = &dw {
                        let part = g.matmul(&xb)?; // (Vi, C) = gᵀ·x[r0:r1]
                        accumulate_rows(dw, cols, &part, b == 0)?;
                    }
                }
                match (&dx, dx_block) {
                    (Some(dx), Some(part)) => accumulate_rows(dx, rows, &part, true)?,
                    (None, part) => dx_whole = part,
                    _ => {}
                }
            }
            Ok(vec![dx.or(dx_whole), dw, None])
        }))
    }
}

fn chunk_params(
    rows: &Range<usize>,
    n: usize,
    v: usize,
    cols: &Range<usize>,
    first: bool,
) -> Params {
    Params {
        rows: rows.len() as u32,
        width: cols.len() as u32,
        col0: cols.start as u32,
        vocab: v as u32,
        first: first as u32,
        row0: rows.start as u32,
        total_rows: n as u32,
        _pad: 0,
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
