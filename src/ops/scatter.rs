//! A dense tensor with a sparse update at K distinct flat indices (selective fine-tuning's
//! W + scatter(indices, values)), and its adjoint, a gather:
//!
//! Math (base: any shape, N elements, read flat; indices: u32 (K), distinct, < N; values: (K)):
//!   out = base;  out[idx[k]] += values[k]
//!   dbase = dout                          (every element passes straight through)
//!   dvalues[k] = dout[idx[k]]             (a gather; the indices get no gradient)
//! So a method that trains K entries of a frozen W has a K-sized gradient: the dense dout is
//! read at the K indices and nothing W-sized is kept for the update.
//! Kernels (shaders/scatter.wgsl): the base is copied into the output with a buffer copy (no
//! binding, no dispatch), then one invocation per k adds its value; backward one invocation per
//! k reads dout. The indices are distinct, so no two invocations write one element (no atomics,
//! deterministic). A base larger than one binding is bound in windows of its flat elements, and
//! indices and values beyond one binding in windows of k, one dispatch per pair of windows
//! (`Gpu::row_windows`); an index outside a dispatch's base window is skipped by it.
//! Saved for backward: the indices (only when the values require grad).
//! NOTE: a kernel cannot report a bad index; one ≥ N is skipped and a repeated one would race.
//! Indices uploaded through [`scatter_indices`] are checked on the host first (in range,
//! strictly increasing), with an error naming the index.

use std::rc::Rc;

use bytemuck::{Pod, Zeroable};

use super::output;
use crate::error::{Error, Result, shape_err};
use crate::gpu::{Category, Gpu, Kernel, grid_1d};
use crate::tensor::{DType, Tensor};

const SHADER: &str = include_str!("../../shaders/scatter.wgsl");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Params {
    pub k: u32,
    /// The window of flat base elements one dispatch sees: [row0, row0 + rows).
    pub row0: u32,
    pub rows: u32,
}

static SCATTER_ADD: Kernel =
    Kernel { name: "scatter_add", source: SHADER, entry: "scatter_add", reads: 2, writes: 1 };
static GATHER: Kernel =
    Kernel { name: "scatter_gather", source: SHADER, entry: "gather", reads: 2, writes: 1 };

/// Uploads flat indices into a tensor of `n` elements after checking that they are strictly
/// increasing (so distinct) and < `n` (the kernels could only skip a bad one, or race on a
/// repeated one).
pub fn scatter_indices(gpu: &Rc<Gpu>, indices: &[u32], n: usize) -> Result<Tensor> {
    if indices.is_empty() {
        return Err(Error::Input("scatter: no indices (give at least one)".into()));
    }
    if n > u32::MAX as usize {
        return Err(Error::Input(format!(
            "scatter: a tensor of {n} elements is beyond u32 flat indices"
        )));
    }
    if let Some((pos, &i)) = indices.iter().enumerate().find(|&(_, &i)| i as usize >= n) {
        return Err(Error::Input(format!(
            "scatter: index {i} at position {pos} is out of range for a tensor of {n} elements"
        )));
    }
    if let Some(pos) = indices.windows(2).position(|w| w[0] >= w[1]) {
        return Err(Error::Input(format!(
            "scatter: indices must be strictly increasing (distinct); {} at position {pos} is \
             followed by {}",
            indices[pos],
            indices[pos + 1]
        )));
    }
    Tensor::from_u32(gpu, indices, &[indices.len()])
}

impl Tensor {
    /// A copy of `self` with `values[k]` added at flat index `indices[k]`: → `self`'s shape.
    /// `indices` u32 (K) distinct and < numel (see [`scatter_indices`]), `values` f32 (K).
    pub fn scatter_add(&self, indices: &Tensor, values: &Tensor) -> Result<Tensor> {
        let op = "scatter_add";
        self.check_f32(op)?;
        values.check_f32(op)?;
        if indices.dtype() != DType::U32 || indices.rank() != 1 || indices.numel() == 0 {
            return shape_err(
                op,
                format!(
                    "indices must be a non-empty u32 (K), got {:?} of shape {:?}",
                    indices.dtype(),
                    indices.shape()
                ),
            );
        }
        if values.shape() != indices.shape() {
            return shape_err(
                op,
                format!("values {:?} must match indices {:?}", values.shape(), indices.shape()),
            );
        }
        let (n, k) = (self.numel(), indices.numel());
        let gpu = self.gpu();
        let out = output(gpu, self.shape(), op)?; // (base's shape)
        gpu.copy_range(self.storage(), 0, out.storage(), 0, (n * 4) as u64)?;
        let windows = gpu.row_windows("the scattered tensor", n, 4)?;
        let k_windows = gpu.row_windows("the scatter indices", k, 4)?;
        for ks in &k_windows {
            for rows in &windows {
                let params =
                    Params { k: ks.len() as u32, row0: rows.start as u32, rows: rows.len() as u32 };
                gpu.dispatch_windows(
                    &SCATTER_ADD,
                    &params,
                    &[indices.storage().rows(ks, 4), values.storage().rows(ks, 4)],
                    &[out.storage().rows(rows, 4)],
                    grid_1d(ks.len(), 256),
                )?;
            }
        }
        let saved = values.requires_grad().then(|| indices.clone());
        let base_needs = self.requires_grad();
        Ok(out.attach(op, &[self, indices, values], move |dout| {
            let dbase = base_needs.then(|| dout.clone());
            let Some(indices) = saved else { return Ok(vec![dbase, None, None]) };
            let gpu = dout.gpu();
            let dvalues =
                Tensor::empty(gpu, &[k], DType::F32, Category::Activations, "scatter_gather")?;
            gpu.clear(dvalues.storage(), 0, dvalues.storage().bytes)?;
            for ks in &k_windows {
                for rows in &windows {
                    let params = Params {
                        k: ks.len() as u32,
                        row0: rows.start as u32,
                        rows: rows.len() as u32,
                    };
                    gpu.dispatch_windows(
                        &GATHER,
                        &params,
                        &[indices.storage().rows(ks, 4), dout.storage().rows(rows, 4)],
                        &[dvalues.storage().rows(ks, 4)],
                        grid_1d(ks.len(), 256),
                    )?;
                }
            }
            Ok(vec![dbase, None, Some(dvalues)])
        }))
    }
}

/// f64 references. `indices` holds integer values (as the test harness stores them).
pub mod cpu {
    use crate::cpu::Array;

    pub fn scatter_add(base: &Array, indices: &Array, values: &Array) -> Array {
        let mut out = base.clone();
        for (&i, &v) in indices.data.iter().zip(&values.data) {
            out.data[i as usize] += v;
        }
        out
    }
    /// [dbase, dindices (zeros: not differentiable), dvalues]
    pub fn scatter_add_backward(
        base: &Array,
        indices: &Array,
        _values: &Array,
        dout: &Array,
    ) -> Vec<Array> {
        let dvalues = indices.data.iter().map(|&i| dout.data[i as usize]).collect();
        let dbase = Array::new(&base.shape, dout.data.clone());
        vec![dbase, Array::zeros(&indices.shape), Array::new(&indices.shape, dvalues)]
    }
}
