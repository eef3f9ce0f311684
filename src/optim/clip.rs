//! Global gradient-norm clipping over the gathered arenas (shaders/grad_norm.wgsl), as
//! torch.nn.utils.clip_grad_norm_: scale = min(1, max_norm / (‖g‖ + 1e-6)), no read-back.

use bytemuck::{Pod, Zeroable};

use super::arena::{self, Gathered};
use super::{AdamW, CHUNK};
use crate::error::Result;
use crate::gpu::{Category, Kernel, grid_1d};
use crate::tensor::{DType, Tensor};

/// grad_norm.wgsl's `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct NormParams {
    pub n: u32,
    pub k: u32,
    pub offset: u32,
    pub max_norm: f32,
    pub slots: u32,
    pub _pad0: u32,
    pub _pad1: u32,
    pub _pad2: u32,
}

const GRAD_NORM: &str = include_str!("../../shaders/grad_norm.wgsl");
static SUMSQ: Kernel = Kernel {
    name: "grad_norm_sumsq_slots",
    source: GRAD_NORM,
    entry: "sumsq_slots",
    reads: 2,
    writes: 1,
};
static SUM: Kernel = Kernel {
    name: "grad_norm_sum_chunks",
    source: GRAD_NORM,
    entry: "sum_chunks",
    reads: 1,
    writes: 1,
};
static FINISH: Kernel = Kernel {
    name: "grad_norm_finish",
    source: GRAD_NORM,
    entry: "finish_norm",
    reads: 1,
    writes: 1,
};
static CLIP: Kernel = Kernel {
    name: "grad_norm_clip_scale",
    source: GRAD_NORM,
    entry: "clip_scale",
    reads: 1,
    writes: 1,
};

impl AdamW {
    /// Clips all gradients to a global L2 norm of `max_norm` in place; returns the norm before
    /// clipping as a [1] tensor (no read-back). With no gradients at all, the norm is 0.
    pub fn clip_grad_norm_lazy(&self, max_norm: f32) -> Result<Option<Tensor>> {
        let gathered = self.gather_grads()?;
        let Some(norm) = self.grad_norm(&gathered)? else { return Ok(None) };
        // Scale each arena in place and copy it back. Two gradients may share one buffer
        // (autograd hands the same dout to both inputs of an add): both copies carry the same
        // scaled values.
        for g in &gathered {
            let bucket = &self.buckets[g.bucket];
            let gpu = bucket.m.gpu();
            let n = bucket.numel;
            let params =
                NormParams { n: n as u32, k: 0, offset: 0, max_norm, slots: 0, ..zeroed() };
            gpu.dispatch(&CLIP, &params, &[norm.storage()], &[g.grads.storage()], grid_1d(n, 256))?;
            let grads: Vec<Option<Tensor>> =
                self.bucket_params(g.bucket).map(|p| p.grad()).collect();
            arena::scatter(gpu, &g.grads, &bucket.places, &grads)?;
        }
        Ok(Some(norm))
    }

    /// The global L2 norm of the gathered gradients as a [1] tensor (no read-back); None
    /// without gradients.
    pub(super) fn grad_norm(&self, gathered: &[Gathered]) -> Result<Option<Tensor>> {
        let Some(first) = gathered.first() else { return Ok(None) };
        let gpu = first.grads.gpu().clone();
        // 1. Per-gradient chunk sums of squares, every bucket's side by side in one buffer, in
        //    the order of the parameters (the same partials the per-tensor kernels wrote).
        let total_chunks: usize = gathered.iter().map(|g| g.chunks).sum();
        let mut partial =
            Tensor::empty(&gpu, &[total_chunks], DType::F32, Category::Scratch, "clip_grad_norm")?; // (chunks)
        let mut offset = 0;
        for g in gathered {
            let params = NormParams {
                n: g.chunks as u32,
                k: CHUNK as u32,
                offset: offset as u32,
                slots: g.slots.len() as u32,
                ..zeroed()
            };
            gpu.dispatch(
                &SUMSQ,
                &params,
                &[g.table.storage(), g.grads.storage()],
                &[partial.storage()],
                grid_1d(g.chunks, 256),
            )?;
            offset += g.chunks;
        }
        // 2. Sum the partials down to one value, 3. its square root.
        while partial.numel() > 1 {
            let n = partial.numel();
            let next = Tensor::empty(
                &gpu,
                &[n.div_ceil(CHUNK)],
                DType::F32,
                Category::Scratch,
                "clip_grad_norm",
            )?;
            let params = NormParams { n: n as u32, k: CHUNK as u32, ..zeroed() };
            gpu.dispatch(
                &SUM,
                &params,
                &[partial.storage()],
                &[next.storage()],
                grid_1d(n.div_ceil(CHUNK), 256),
            )?;
            partial = next;
        }
        let norm = Tensor::empty(&gpu, &[1], DType::F32, Category::Scratch, "clip_grad_norm")?; // (1)
        gpu.dispatch(
            &FINISH,
            &NormParams { n: 1, k: 1, ..zeroed() },
            &[partial.storage()],
            &[norm.storage()],
            [1, 1, 1],
        )?;
        Ok(Some(norm))
    }

    /// [`clip_grad_norm_lazy`](Self::clip_grad_norm_lazy), then reads the norm back (waits for the GPU).
    pub fn clip_grad_norm(&self, max_norm: f32) -> Result<f32> {
        match self.clip_grad_norm_lazy(max_norm)? {
            Some(norm) => norm.item(),
            None => Ok(0.0),
        }
    }
}

fn zeroed() -> NormParams {
    Zeroable::zeroed()
}
