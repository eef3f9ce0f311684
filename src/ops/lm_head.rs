//! The tied LM head, for a weight or logits larger than one binding: logits = x·Wᵀ,
//! x [N, C], W [V, C] in [out, in] layout (GPT-2's wte: 154 MB against lavapipe's and WebGPU's
//! 128 MiB per binding; the logits of B4 T256 are 206 MB).
//!
//! Math (dlogits = dL/dlogits):
//!   logits[n, v] = Σ_c x[n, c] W[v, c]        dx = dlogits·W        dW = dlogitsᵀ·x
//! Split over vocabulary windows [v0, v1) (`vocab_windows`), each fitting one binding and at most
//! `CHUNK_BYTES` both as W's rows (Vi, C) and as a logits chunk (N, Vi), Vi = v1 − v0:
//!   logits[:, v0:v1] = x·W[v0:v1]ᵀ
//!   dx = Σ_windows dlogits[:, v0:v1]·W[v0:v1]       dW[v0:v1] = dlogits[:, v0:v1]ᵀ·x
//! A window's rows of W are bound in place (an aligned offset into wte's buffer, no copy:
//! `matmul::matmul_rows`), the products are the ordinary matmul kernels, and the kernels `place` /
//! `take` move the chunk's columns into / out of the full logits, bound in windows of whole rows.
//! When W and the logits both fit, the op is exactly `x.matmul_t(W, false, true)`: the unsplit
//! reference the tests compare the split path with (tests/gpu/big.rs, a forced small limit).
//! Saved for backward: x (when W needs a gradient) and W (when x does).
//! NOTE: each logit is the same K = C dot product either way, so split and unsplit agree to the
//! bit when the matmul kernel's order along K does not depend on N; dx sums windows in order,
//! which only reorders f32 additions (within rounding).

use std::ops::Range;
use std::rc::Rc;

use bytemuck::{Pod, Zeroable};

use super::matmul::{TRANSPOSE_B_MIN_ROWS, matmul_rows, rows_matmul, transpose};
use super::output;
use crate::Category;
use crate::autograd;
use crate::error::{Result, shape_err};
use crate::gpu::{Gpu, Kernel};
use crate::tensor::{DType, Tensor};

const SHADER: &str = include_str!("../../shaders/lm_head.wgsl");

/// Field names match `Params` in shaders/lm_head.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Params {
    pub rows: u32,
    pub row0: u32,
    pub cols: u32,
    pub col0: u32,
    pub width: u32,
    pub n: u32,
    pub _pad: [u32; 2],
}

static PLACE: Kernel =
    Kernel { name: "lm_head_place", source: SHADER, entry: "lm_head_place", reads: 1, writes: 1 };
static PLACE_T: Kernel = Kernel {
    name: "lm_head_place_t",
    source: SHADER,
    entry: "lm_head_place_t",
    reads: 1,
    writes: 1,
};
static TAKE: Kernel =
    Kernel { name: "lm_head_take", source: SHADER, entry: "lm_head_take", reads: 1, writes: 1 };

/// Field names match `Params` in shaders/lm_head_argmax.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct ArgmaxParams {
    pub cols: u32,
    pub _pad: [u32; 3],
}

static ARGMAX: Kernel = Kernel {
    name: "lm_head_argmax",
    source: include_str!("../../shaders/lm_head_argmax.wgsl"),
    entry: "lm_head_argmax",
    reads: 1,
    writes: 1,
};

/// The most bytes a split head holds in one chunk, of W's rows (Vi, C) or of logits (N, Vi), when
/// it has to split at all (a smaller binding limit wins): the copies and chunks are extra memory.
pub const CHUNK_BYTES: usize = 16 << 20;

/// Vocabulary windows for N rows of x against W [V, C]: one window (everything) when W and the
/// logits both fit a binding; otherwise windows whose W rows and logits chunk each hold at most
/// `CHUNK_BYTES` and fit a binding.
pub(crate) fn vocab_windows(gpu: &Gpu, n: usize, v: usize, c: usize) -> Result<Vec<Range<usize>>> {
    let fits = (v * c * 4) as u64 <= gpu.max_binding() && (n * v * 4) as u64 <= gpu.max_binding();
    if fits {
        return Ok(std::iter::once(0..v).collect());
    }
    let budget = CHUNK_BYTES.min(gpu.max_binding() as usize);
    let most = (budget / (4 * n.max(c).max(1))).max(1); // (Vi, C) and (N, Vi) within the budget
    gpu.row_windows_at_most("the LM head weight (V, C)", v, 4 * c, most)
}

/// Which way `move_columns` copies.
#[derive(Clone, Copy, PartialEq)]
enum Move {
    /// chunk (N, Vi) → full[:, cols]
    Place,
    /// chunk_t (Vi, N) → full[:, cols]
    PlaceT,
    /// full[:, cols] → chunk (N, Vi)
    Take,
}

/// Moves columns `cols` between `chunk` and `full` (N, V), over row windows of `full`.
fn move_columns(way: Move, full: &Tensor, chunk: &Tensor, cols: &Range<usize>) -> Result<()> {
    let gpu = full.gpu();
    let (n, v) = (full.shape()[0], full.shape()[1]);
    for rows in gpu.row_windows("the logits (N, V)", n, 4 * v)? {
        let params = Params {
            rows: rows.len() as u32,
            row0: rows.start as u32,
            cols: v as u32,
            col0: cols.start as u32,
            width: cols.len() as u32,
            n: n as u32,
            _pad: [0; 2],
        };
        let window = full.storage().rows(&rows, 4 * v);
        let (kernel, reads, writes) = match way {
            Move::Place => (&PLACE, [chunk.storage().whole()], [window]),
            Move::PlaceT => (&PLACE_T, [chunk.storage().whole()], [window]),
            Move::Take => (&TAKE, [window], [chunk.storage().whole()]),
        };
        // x over the columns, (y, z) over the window's rows (see shaders/lm_head.wgsl).
        let r = rows.len();
        let groups =
            [cols.len().div_ceil(64) as u32, r.min(65_535) as u32, r.div_ceil(65_535) as u32];
        gpu.dispatch_windows(kernel, &params, &reads, &writes, groups)?;
    }
    Ok(())
}

/// dlogits[:, cols] as a fresh (N, Vi) tensor.
pub(crate) fn take_columns(full: &Tensor, cols: &Range<usize>) -> Result<Tensor> {
    let chunk = output(full.gpu(), &[full.shape()[0], cols.len()], "lm_head_backward")?; // (N, Vi)
    move_columns(Move::Take, full, &chunk, cols)?;
    Ok(chunk)
}

/// dx = dlogits·W and dW = dlogitsᵀ·x window by window (None where not needed).
fn backward(
    dlogits: &Tensor,
    x: Option<&Tensor>,
    w: Option<&Tensor>,
    windows: &[Range<usize>],
    shape: (usize, usize, usize),
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let (_, v, c) = shape;
    let gpu = dlogits.gpu();
    let mut dx: Option<Tensor> = None;
    let dw = match x {
        Some(_) => Some(Tensor::empty(gpu, &[v, c], DType::F32, Category::Activations, "lm_head")?),
        None => None,
    }; // (V, C)
    for cols in windows {
        let dchunk = take_columns(dlogits, cols)?; // (N, Vi)
        if let Some(w) = w {
            let part = matmul_rows(&dchunk, w, cols, false, false)?; // (N, C) = dchunk·W[v0:v1]
            dx = Some(match dx {
                Some(sum) => sum.add(&part)?,
                None => part,
            });
        }
        if let (Some(x), Some(dw)) = (x, &dw) {
            let part = dchunk.matmul_t(x, true, false)?; // (Vi, C)
            let offset = (cols.start * c * 4) as u64;
            gpu.copy_range(part.storage(), 0, dw.storage(), offset, (cols.len() * c * 4) as u64)?;
        }
    }
    Ok((dx, dw))
}

impl Tensor {
    /// logits = x·Wᵀ for x (self) [N, C] and W [V, C], split over vocabulary windows when W or
    /// the logits exceed one binding: → [N, V].
    pub fn lm_head(&self, weight: &Tensor) -> Result<Tensor> {
        let op = "lm_head";
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
        let gpu: &Rc<Gpu> = self.gpu();
        let windows = vocab_windows(gpu, n, v, c)?;
        let logits_fit = (n * v * 4) as u64 <= gpu.max_binding();
        if windows.len() == 1 && logits_fit {
            return self.matmul_t(weight, false, true); // the unsplit reference
        }
        let logits = output(gpu, &[n, v], op)?; // (N, V)
        {
            let _tape_off = autograd::no_grad(); // the chunks are internal; one node below
            // Many rows: W[v0:v1]·xᵀ, where both operands are read along their rows (x·Wᵀ
            // would read W across them; see matmul.rs). Few rows: x·W[v0:v1]ᵀ (the matvec).
            let x_t = (n >= TRANSPOSE_B_MIN_ROWS).then(|| transpose(self)).transpose()?; // (C, N)
            for cols in &windows {
                match &x_t {
                    Some(x_t) => {
                        let chunk_t = rows_matmul(weight, cols, x_t, false, false)?; // (Vi, N)
                        move_columns(Move::PlaceT, &logits, &chunk_t, cols)?;
                    }
                    None => {
                        let chunk = matmul_rows(self, weight, cols, false, true)?; // (N, Vi)
                        move_columns(Move::Place, &logits, &chunk, cols)?;
                    }
                }
            }
        }
        let saved_x = weight.requires_grad().then(|| self.clone()); // for dW
        let saved_w = self.requires_grad().then(|| weight.clone()); // for dx
        Ok(logits.attach(op, &[self, weight], move |dlogits| {
            let (dx, dw) =
                backward(dlogits, saved_x.as_ref(), saved_w.as_ref(), &windows, (n, v, c))?;
            Ok(vec![dx, dw])
        }))
    }
}

impl Tensor {
    /// The index of the largest value of a row of logits (shape [V] or [1, V]), the first among
    /// equal values, computed on the GPU (shaders/lm_head_argmax.wgsl): greedy decoding reads
    /// back one u32 instead of the row. No gradient.
    pub fn argmax(&self) -> Result<u32> {
        let op = "argmax";
        self.check_f32(op)?;
        let v = self.numel();
        if v == 0 || self.shape().iter().rev().skip(1).any(|&d| d != 1) {
            return shape_err(
                op,
                format!("expects one non-empty row [V] or [1, V], got {:?}", self.shape()),
            );
        }
        let best = Tensor::empty(self.gpu(), &[1], DType::U32, Category::Activations, op)?; // (1)
        let params = ArgmaxParams { cols: v as u32, _pad: [0; 3] };
        self.gpu().dispatch(&ARGMAX, &params, &[self.storage()], &[best.storage()], [1, 1, 1])?;
        Ok(best.to_vec_u32()?[0])
    }
}

/// f64 reference: logits[n, v] = Σ_c x[n, c] W[v, c] and its gradients.
pub mod cpu {
    use crate::cpu::Array;

    /// The first index of the largest value (torch.argmax's rule; the GPU's `Tensor::argmax`).
    pub fn argmax(row: &[f32]) -> usize {
        (1..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best })
    }

    pub fn lm_head(x: &Array, w: &Array) -> Array {
        let (n, c, v) = (x.shape[0], x.shape[1], w.shape[0]);
        let mut out = Array::zeros(&[n, v]);
        for i in 0..n {
            for j in 0..v {
                out.data[i * v + j] = (0..c).map(|k| x.data[i * c + k] * w.data[j * c + k]).sum();
            }
        }
        out
    }

    /// [dx, dW]
    pub fn lm_head_backward(x: &Array, w: &Array, dout: &Array) -> Vec<Array> {
        let (n, c, v) = (x.shape[0], x.shape[1], w.shape[0]);
        let (mut dx, mut dw) = (Array::zeros(&x.shape), Array::zeros(&w.shape));
        for i in 0..n {
            for j in 0..v {
                let g = dout.data[i * v + j];
                for k in 0..c {
                    dx.data[i * c + k] += g * w.data[j * c + k];
                    dw.data[j * c + k] += g * x.data[i * c + k];
                }
            }
        }
        vec![dx, dw]
    }
}
