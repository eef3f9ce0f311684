//! Ops that move elements without changing them: transpose, slice, concat.
//!
//! Math (forward / backward, with dout = dL/dout):
//!   transpose: [.., M, N] → [.., N, M]   y[b, n, m] = x[b, m, n]      dx = transpose(dout)
//!   slice:     x[.., start:end, ..] along `dim`                       dx = dout padded with zeros
//!                                                                     to x's shape (the `pad` kernel)
//!   concat:    [x₀, x₁, …] joined along `dim`                         dxₖ = slice of dout at xₖ's rows
//! Saved for backward: only shapes and offsets — these ops are linear, their adjoints need no values.
//! Layout: around the sliced/concatenated dim every tensor is viewed as [outer, D, inner]
//! (contiguous row-major), so one kernel serves every dim.
//! Kernels: slice / place / pad have vec4 variants (a run of up to 8 vec4s per invocation) used
//! when len·inner, D·inner and start·inner are multiples of 4; the scalar ones otherwise.
//! NOTE: the results are copies, exact to the bit; only indexing can be wrong, which is why the
//! tests use odd shapes and a weighted loss (a permuted gradient would not pass).

use bytemuck::{Pod, Zeroable};

use super::{launch_1d, output};
use crate::error::{Result, shape_err};
use crate::gpu::Kernel;
use crate::tensor::Tensor;

const SHADER: &str = include_str!("../../shaders/shape.wgsl");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct TransposeParams {
    pub n: u32,
    pub rows: u32,
    pub cols: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct SliceParams {
    pub n: u32,
    pub inner: u32,
    pub big: u32,
    pub start: u32,
    pub len: u32,
}

static TRANSPOSE: Kernel =
    Kernel { name: "shape_transpose", source: SHADER, entry: "transpose", reads: 1, writes: 1 };
static SLICE: Kernel =
    Kernel { name: "shape_slice", source: SHADER, entry: "slice", reads: 1, writes: 1 };
static PLACE: Kernel =
    Kernel { name: "shape_place", source: SHADER, entry: "place", reads: 1, writes: 1 };
static PAD: Kernel =
    Kernel { name: "shape_pad", source: SHADER, entry: "pad", reads: 1, writes: 1 };

static SLICE4: Kernel =
    Kernel { name: "shape_slice4", source: SHADER, entry: "slice4", reads: 1, writes: 1 };
static PLACE4: Kernel =
    Kernel { name: "shape_place4", source: SHADER, entry: "place4", reads: 1, writes: 1 };
static PAD4: Kernel =
    Kernel { name: "shape_pad4", source: SHADER, entry: "pad4", reads: 1, writes: 1 };

/// Vec4s one invocation of the vec4 kernels copies (`RUN` in the shader).
const RUN: usize = 8;

/// One dispatch of a slice-family kernel over the `n` elements of the small tensor (slice, place)
/// or of the big one (pad); `params.n` is ignored. The vec4 kernel when every row of the
/// [outer, D·inner] view starts on a vec4 (2-4x faster on lavapipe), else the scalar one.
fn launch_slice(
    scalar: &'static Kernel,
    vec4: &'static Kernel,
    pad: bool,
    params: SliceParams,
    n: usize,
    x: &Tensor,
    y: &Tensor,
) -> Result<()> {
    let SliceParams { inner, big, start, len, .. } = params;
    if n > 0 && inner > 0 && [len, big, start].iter().all(|v| v * inner % 4 == 0) {
        let mut q = SliceParams {
            n: 0,
            inner: 1,
            big: big * inner / 4,
            start: start * inner / 4,
            len: len * inner / 4,
        };
        // One thread per run of up to RUN vec4s of a row: rows of len (slice, place) or big (pad).
        let width = if pad { q.big } else { q.len } as usize;
        let threads = n / 4 / width * width.div_ceil(RUN);
        q.n = threads as u32;
        launch_1d(vec4, &q, &[x], &[y], threads)
    } else {
        launch_1d(scalar, &SliceParams { n: n as u32, ..params }, &[x], &[y], n)
    }
}

/// Product of the dims after `dim`.
fn inner(shape: &[usize], dim: usize) -> usize {
    shape[dim + 1..].iter().product()
}

impl Tensor {
    /// Swaps the last two dims: [.., M, N] → [.., N, M] (a copy).
    pub fn transpose(&self) -> Result<Tensor> {
        self.check_f32("transpose")?;
        let r = self.rank();
        if r < 2 {
            return shape_err(
                "transpose",
                format!("needs at least 2 dims [.., M, N], got {:?}", self.shape()),
            );
        }
        let (m, n) = (self.shape()[r - 2], self.shape()[r - 1]);
        let mut out_shape = self.shape().to_vec();
        out_shape.swap(r - 2, r - 1);
        let y = output(self.gpu(), &out_shape, "transpose")?; // (.., N, M)
        let params = TransposeParams { n: self.numel() as u32, rows: m as u32, cols: n as u32 };
        launch_1d(&TRANSPOSE, &params, &[self], &[&y], self.numel())?;
        Ok(y.attach("transpose", &[self], |dout| Ok(vec![Some(dout.transpose()?)])))
    }

    /// `self[.., start..end, ..]` along `dim` (a copy). Needs `start < end <= shape[dim]`.
    pub fn slice(&self, dim: usize, start: usize, end: usize) -> Result<Tensor> {
        self.check_f32("slice")?;
        let shape = self.shape().to_vec();
        if dim >= shape.len() {
            return shape_err("slice", format!("dim {dim} out of range for shape {shape:?}"));
        }
        if !(start < end && end <= shape[dim]) {
            return shape_err(
                "slice",
                format!("range {start}..{end} of dim {dim} is empty or outside shape {shape:?}"),
            );
        }
        let mut out_shape = shape.clone();
        out_shape[dim] = end - start;
        let y = output(self.gpu(), &out_shape, "slice")?; // (outer, end − start, inner)
        let params = SliceParams {
            n: y.numel() as u32,
            inner: inner(&shape, dim) as u32,
            big: shape[dim] as u32,
            start: start as u32,
            len: (end - start) as u32,
        };
        launch_slice(&SLICE, &SLICE4, false, params, y.numel(), self, &y)?;
        Ok(y.attach("slice", &[self], move |dout| {
            // dx: dout inside rows start..end of `dim`, zeros elsewhere.
            let dx = output(dout.gpu(), &shape, "slice_backward")?; // (outer, D, inner)
            launch_slice(&PAD, &PAD4, true, params, dx.numel(), dout, &dx)?;
            Ok(vec![Some(dx)])
        }))
    }

    /// Joins tensors along `dim`; all other dims must match. See [`concat`].
    pub fn concat(tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
        concat(tensors, dim)
    }
}

/// Joins `tensors` along `dim`: shapes must agree everywhere except `dim`. One `place` dispatch per
/// input writes it at its offset; backward slices dout back into one gradient per input.
pub fn concat(tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
    let Some(first) = tensors.first() else {
        return shape_err("concat", "needs at least one tensor");
    };
    let shapes: Vec<Vec<usize>> = tensors.iter().map(|t| t.shape().to_vec()).collect();
    for t in tensors {
        t.check_f32("concat")?;
    }
    if dim >= first.rank() {
        return shape_err("concat", format!("dim {dim} out of range for shapes {shapes:?}"));
    }
    let agrees = |s: &Vec<usize>| {
        s.len() == shapes[0].len() && (0..s.len()).all(|d| d == dim || s[d] == shapes[0][d])
    };
    if !shapes.iter().all(agrees) {
        return shape_err("concat", format!("shapes {shapes:?} differ outside dim {dim}"));
    }
    let total: usize = shapes.iter().map(|s| s[dim]).sum();
    let mut out_shape = shapes[0].clone();
    out_shape[dim] = total;
    let y = output(first.gpu(), &out_shape, "concat")?; // (outer, Σ Dₖ, inner)
    let inner = inner(&out_shape, dim);
    let mut offsets = Vec::with_capacity(tensors.len());
    let mut start = 0;
    for t in tensors {
        let len = t.shape()[dim];
        if t.numel() > 0 {
            let params = SliceParams {
                n: t.numel() as u32,
                inner: inner as u32,
                big: total as u32,
                start: start as u32,
                len: len as u32,
            };
            launch_slice(&PLACE, &PLACE4, false, params, t.numel(), t, &y)?;
        }
        offsets.push((start, start + len, t.requires_grad()));
        start += len;
    }
    Ok(y.attach("concat", tensors, move |dout| {
        offsets
            .iter()
            .map(
                |&(s, e, needed)| {
                    if needed && e > s { dout.slice(dim, s, e).map(Some) } else { Ok(None) }
                },
            )
            .collect()
    }))
}

/// f64 references, with the same [outer, D, inner] indexing written as plain loops.
pub mod cpu {
    use crate::cpu::Array;

    pub fn transpose(x: &Array) -> Array {
        let r = x.shape.len();
        let (m, n) = (x.shape[r - 2], x.shape[r - 1]);
        let mut shape = x.shape.clone();
        shape.swap(r - 2, r - 1);
        let mut y = Array::zeros(&shape);
        for b in 0..x.numel() / (m * n) {
            for i in 0..m {
                for j in 0..n {
                    y.data[b * m * n + j * m + i] = x.data[b * m * n + i * n + j];
                }
            }
        }
        y
    }
    pub fn transpose_backward(_x: &Array, dout: &Array) -> Array {
        transpose(dout)
    }

    /// (outer, D, inner) for `dim` of `shape`.
    fn split(shape: &[usize], dim: usize) -> (usize, usize, usize) {
        (shape[..dim].iter().product(), shape[dim], shape[dim + 1..].iter().product())
    }

    pub fn slice(x: &Array, dim: usize, start: usize, end: usize) -> Array {
        let (outer, d, inner) = split(&x.shape, dim);
        let mut shape = x.shape.clone();
        shape[dim] = end - start;
        let mut y = Array::zeros(&shape);
        let mut k = 0;
        for o in 0..outer {
            for r in start..end {
                for c in 0..inner {
                    y.data[k] = x.data[(o * d + r) * inner + c];
                    k += 1;
                }
            }
        }
        y
    }
    pub fn slice_backward(x: &Array, dout: &Array, dim: usize, start: usize, end: usize) -> Array {
        let (outer, d, inner) = split(&x.shape, dim);
        let mut dx = Array::zeros(&x.shape);
        let mut k = 0;
        for o in 0..outer {
            for r in start..end {
                for c in 0..inner {
                    dx.data[(o * d + r) * inner + c] = dout.data[k];
                    k += 1;
                }
            }
        }
        dx
    }

    pub fn concat(xs: &[Array], dim: usize) -> Array {
        let mut shape = xs[0].shape.clone();
        shape[dim] = xs.iter().map(|x| x.shape[dim]).sum();
        let (outer, _, inner) = split(&shape, dim);
        let mut data = Vec::with_capacity(shape.iter().product());
        for o in 0..outer {
            for x in xs {
                let block = x.shape[dim] * inner;
                data.extend_from_slice(&x.data[o * block..(o + 1) * block]);
            }
        }
        Array::new(&shape, data)
    }
    pub fn concat_backward(xs: &[Array], dout: &Array, dim: usize) -> Vec<Array> {
        let mut start = 0;
        xs.iter()
            .map(|x| {
                let end = start + x.shape[dim];
                let dx = slice(dout, dim, start, end);
                start = end;
                dx
            })
            .collect()
    }
}
