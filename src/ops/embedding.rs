//! Embedding lookup (GPT-2's wte and wpe): table [V, C], ids u32 [..] → out [.., C].
//!
//! Math:  out[n, c] = table[ids[n], c]
//!        dtable[v, c] = Σ_{n : ids[n] = v} dout[n, c]      (ids get no gradient)
//! Saved for backward: the ids (only when the table requires grad).
//! Backward is a scatter-add done without float atomics, so it is deterministic: invocation (k, c)
//! owns column c of the rows v ≡ k (mod buckets) and visits the positions in order. For GPT-2
//! (V = 50257, N = B·T = 2048, C = 768) that is a buffer clear of V·C floats plus
//! buckets·C invocations each reading N ids — O(V·C + buckets·N·C), not O(V·N·C).
//! A table larger than one binding (GPT-2's wte: 154 MB against lavapipe's 128 MiB) is bound in
//! windows of rows, one dispatch each (`Gpu::row_windows`); the gradient is written the same way.
//! Unsplit there is one window, the whole table.
//! NOTE: ids ≥ V cannot be reported by a kernel; the kernel clamps them to V − 1. Ids uploaded
//! from host data through [`embedding_ids`] are checked first, with an error naming the id.

use std::rc::Rc;

use bytemuck::{Pod, Zeroable};

use super::output;
use crate::error::{Error, Result, shape_err};
use crate::gpu::{Category, Gpu, Kernel, grid_1d};
use crate::tensor::{DType, Tensor};

const SHADER: &str = include_str!("../../shaders/embedding.wgsl");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Params {
    pub n: u32,
    pub vocab: u32,
    pub cols: u32,
    pub buckets: u32,
    /// The window of table rows one dispatch sees: [row0, row0 + rows).
    pub row0: u32,
    pub rows: u32,
}

static FORWARD: Kernel = Kernel {
    name: "embedding_forward",
    source: SHADER,
    entry: "embedding_forward",
    reads: 2,
    writes: 1,
};
static FORWARD4: Kernel = Kernel {
    name: "embedding_forward4",
    source: SHADER,
    entry: "embedding_forward4",
    reads: 2,
    writes: 1,
};
static BACKWARD: Kernel = Kernel {
    name: "embedding_backward",
    source: SHADER,
    entry: "embedding_backward",
    reads: 2,
    writes: 1,
};

/// Uploads token ids after checking each is < `vocab_size` (the kernels could only clamp).
pub fn embedding_ids(
    gpu: &Rc<Gpu>,
    ids: &[u32],
    shape: &[usize],
    vocab_size: usize,
) -> Result<Tensor> {
    if let Some((pos, &id)) = ids.iter().enumerate().find(|&(_, &id)| id as usize >= vocab_size) {
        return Err(Error::Input(format!(
            "embedding: token id {id} at position {pos} is out of range for a vocabulary of V = {vocab_size}"
        )));
    }
    Tensor::from_u32(gpu, ids, shape)
}

impl Tensor {
    /// Rows of `self` (the table [V, C]) picked by `ids` (u32, any shape): → [..ids, C].
    pub fn embedding(&self, ids: &Tensor) -> Result<Tensor> {
        let op = "embedding";
        self.check_f32(op)?;
        if self.rank() != 2 || self.numel() == 0 {
            return shape_err(
                op,
                format!("table must be a non-empty [V, C], got {:?}", self.shape()),
            );
        }
        if ids.dtype() != DType::U32 {
            return Err(Error::Input(format!(
                "embedding: ids must be u32, got {:?} of shape {:?}",
                ids.dtype(),
                ids.shape()
            )));
        }
        let (vocab, cols) = (self.shape()[0], self.shape()[1]);
        let n = ids.numel();
        let mut shape = ids.shape().to_vec();
        shape.push(cols);
        let out = output(self.gpu(), &shape, op)?; // (.., C)
        let windows = self.gpu().row_windows("the embedding table", vocab, cols * 4)?;
        let params = Params {
            n: n as u32,
            vocab: vocab as u32,
            cols: cols as u32,
            buckets: 1,
            row0: 0,
            rows: vocab as u32,
        };
        let (kernel, threads) =
            if cols.is_multiple_of(4) { (&FORWARD4, n * cols / 4) } else { (&FORWARD, n * cols) };
        for rows in &windows {
            let window = Params { row0: rows.start as u32, rows: rows.len() as u32, ..params };
            self.gpu().dispatch_windows(
                kernel,
                &window,
                &[self.storage().rows(rows, cols * 4), ids.storage().whole()],
                &[out.storage().whole()],
                grid_1d(threads, 256),
            )?;
        }
        let saved_ids = self.requires_grad().then(|| ids.clone());
        Ok(out.attach(op, &[self, ids], move |dout| {
            let Some(ids) = saved_ids else { return Ok(vec![None, None]) };
            let gpu = dout.gpu();
            // More invocations per column help a GPU; on lavapipe 1 was fastest (V=40000, N=2048, C=768:
            // 141 ms at 1, 170 at 4, 259 at 16, most of it the zero fill).
            let buckets = if gpu.is_cpu() { 1 } else { 16 };
            let params = Params { buckets, ..params };
            let dtable = Tensor::empty(
                gpu,
                &[vocab, cols],
                DType::F32,
                Category::Activations,
                "embedding_backward",
            )?; // (V, C)
            gpu.clear(dtable.storage(), 0, dtable.storage().bytes)?;
            for rows in &windows {
                let window = Params { row0: rows.start as u32, rows: rows.len() as u32, ..params };
                gpu.dispatch_windows(
                    &BACKWARD,
                    &window,
                    &[ids.storage().whole(), dout.storage().whole()],
                    &[dtable.storage().rows(rows, cols * 4)],
                    grid_1d(buckets as usize * cols, 256),
                )?;
            }
            Ok(vec![Some(dtable), None])
        }))
    }
}

/// f64 references. `ids` holds integer values (as the test harness stores them).
pub mod cpu {
    use crate::cpu::Array;

    pub fn embedding(table: &Array, ids: &Array) -> Array {
        let c = table.shape[1];
        let mut shape = ids.shape.clone();
        shape.push(c);
        let data = ids
            .data
            .iter()
            .flat_map(|&id| table.data[id as usize * c..(id as usize + 1) * c].to_vec())
            .collect();
        Array::new(&shape, data)
    }
    /// [dtable, dids (zeros: ids are not differentiable)]
    pub fn embedding_backward(table: &Array, ids: &Array, dout: &Array) -> Vec<Array> {
        let c = table.shape[1];
        let mut dtable = Array::zeros(&table.shape);
        for (n, &id) in ids.data.iter().enumerate() {
            for k in 0..c {
                dtable.data[id as usize * c + k] += dout.data[n * c + k];
            }
        }
        vec![dtable, Array::zeros(&ids.shape)]
    }
}
