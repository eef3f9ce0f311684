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
//! A window's rows of W are copied into a small tensor (a buffer copy binds nothing, so it has no
//! binding limit), the products are the ordinary matmul, and the kernels `place` / `take` move the
//! chunk's columns into / out of the full logits, which are bound in windows of whole rows.
//! When W and the logits both fit, the op is exactly `x.matmul_t(W, false, true)`: the unsplit
//! reference the tests compare the split path with (tests/gpu/big.rs, a forced small limit).
//! Saved for backward: x (when W needs a gradient) and W (when x does).
//! NOTE: each logit is the same K = C dot product either way, so split and unsplit agree to the
//! bit when the matmul kernel's order along K does not depend on N; dx sums windows in order,
//! which only reorders f32 additions (within rounding).

use std::ops::Range;
use std::rc::Rc;

use bytemuck::{Pod, Zeroable};

use super::output;
use crate::Category;
use crate::autograd;
use crate::error::{Result, shape_err};
use crate::gpu::{Gpu, Kernel, grid_1d};
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
    pub _pad: [u32; 3],
}

static PLACE: Kernel =
    Kernel { name: "lm_head_place", source: SHADER, entry: "lm_head_place", reads: 1, writes: 1 };
static TAKE: Kernel =
    Kernel { name: "lm_head_take", source: SHADER, entry: "lm_head_take", reads: 1, writes: 1 };

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

/// Rows `rows` of W [V, C] as a fresh tensor [Vi, C] (a buffer copy).
pub(crate) fn weight_rows(w: &Tensor, rows: &Range<usize>) -> Result<Tensor> {
    let c = w.shape()[1];
    let chunk = output(w.gpu(), &[rows.len(), c], "lm_head")?; // (Vi, C)
    let bytes = (rows.len() * c * 4) as u64;
    w.gpu().copy_range(w.storage(), (rows.start * c * 4) as u64, chunk.storage(), 0, bytes)?;
    Ok(chunk)
}

/// Which way `move_columns` copies.
#[derive(Clone, Copy, PartialEq)]
enum Move {
    /// chunk → full[:, cols]
    Place,
    /// full[:, cols] → chunk
    Take,
}

/// Moves columns `cols` between `chunk` (N, Vi) and `full` (N, V), over row windows of `full`.
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
            _pad: [0; 3],
        };
        let window = full.storage().rows(&rows, 4 * v);
        let (kernel, reads, writes) = match way {
            Move::Place => (&PLACE, [chunk.storage().whole()], [window]),
            Move::Take => (&TAKE, [window], [chunk.storage().whole()]),
        };
        let groups = grid_1d(rows.len() * cols.len(), 256);
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
            let part = dchunk.matmul(&weight_rows(w, cols)?)?; // (N, C)
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
            for cols in &windows {
                let chunk = self.matmul_t(&weight_rows(weight, cols)?, false, true)?; // (N, Vi)
                move_columns(Move::Place, &logits, &chunk, cols)?;
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

/// f64 reference: logits[n, v] = Σ_c x[n, c] W[v, c] and its gradients.
pub mod cpu {
    use crate::cpu::Array;

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
