//! The flat arenas behind the multi-tensor AdamW step.
//!
//! Every trainable parameter has a place in one *bucket*: its elements lie back to back with the
//! others' (no padding) in the bucket's arenas, whose bytes stay within one storage binding
//! (`max_storage_buffer_binding_size`, 128 MiB on lavapipe). The moments m and v live there for
//! good (they are the optimizer's own). The gradients and the parameters belong to autograd and
//! to the model, so each step copies them in (`copy_range`: buffer copies, not dispatches) and
//! copies the updated parameters back out:
//!
//!   gradients ──copy──▶ grad arena ─┬─ sumsq_slots ─▶ partial sums ─▶ ‖g‖   (when clipping)
//!   parameters ─copy──▶ param arena ┴─ adamw_multi_tensor (m, v arenas) ─copy─▶ parameters
//!
//! A slot table (one [`Slot`] per parameter, uploaded each step) gives each parameter's range,
//! its group's lr and weight decay, and whether it has a gradient this step. So one step costs a
//! fixed number of dispatches per bucket — and the number of buckets depends on the trainable
//! bytes, not on how many tensors hold them — plus three small copies per parameter.
//!
//! A parameter larger than a bucket (GPT-2 small's wte, 154 MB against a 128 MiB binding) is cut
//! into *pieces*, each a place of its own: elements [offset, offset + numel) of the parameter.
//! Its storage is one buffer (up to `max_buffer_size`), and buffer copies bind nothing, so only
//! the arenas must fit a binding. Pieces are whole multiples of the norm's chunk (1024 values)
//! except the last, so the norm's partial sums are the unsplit ones, in the same order: the split
//! step gives the unsplit bits (AdamW itself is elementwise). A split tensor adds buckets, i.e. a
//! few dispatches; a step over parameters that each fit stays as it was.

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::gpu::{Category, Gpu};
use crate::tensor::{DType, Tensor};

/// Where (a piece of) one trainable parameter lies: group and index in the optimizer, its first
/// element in the parameter (0 unless the parameter is split), first element and length in its
/// bucket's arenas.
#[derive(Clone, Copy, Debug)]
pub(super) struct Place {
    pub group: usize,
    pub index: usize,
    pub offset: usize,
    pub start: usize,
    pub numel: usize,
}

/// Trainable parameters packed into arenas of at most one binding, with their moments.
pub(super) struct Bucket {
    pub places: Vec<Place>,
    /// Elements in the arenas (the sum of the places' lengths).
    pub numel: usize,
    pub m: Tensor, // (numel) first moments, Category::Optimizer
    pub v: Tensor, // (numel) second moments, Category::Optimizer
}

/// One parameter's row of the slot table (adamw.wgsl's and grad_norm.wgsl's `Slot`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(super) struct Slot {
    pub start: u32,
    pub end: u32,
    /// Its partial sums of the norm: [chunk_start, chunk_end), empty without a gradient.
    pub chunk_start: u32,
    pub chunk_end: u32,
    pub lr: f32,
    pub weight_decay: f32,
    /// 1 when the parameter has a gradient this step.
    pub has_grad: u32,
    pub _pad: u32,
}

/// Packs parameters of `sizes` = (group, index, numel), in that order, into buckets of at most
/// `capacity` elements each. A parameter larger than `capacity` is cut into pieces of
/// `capacity` rounded down to a multiple of `chunk` (the norm's chunk; `capacity` itself when it
/// holds less than one chunk), in order; each piece is placed like a parameter.
pub(super) fn pack(
    sizes: &[(usize, usize, usize)],
    capacity: usize,
    chunk: usize,
) -> Vec<Vec<Place>> {
    let piece = if capacity >= chunk { capacity / chunk * chunk } else { capacity };
    let mut buckets: Vec<Vec<Place>> = vec![];
    let mut filled = 0;
    for &(group, index, total) in sizes {
        let step = if total > capacity { piece } else { total.max(1) };
        for offset in (0..total.max(1)).step_by(step) {
            let numel = step.min(total - offset);
            if buckets.is_empty() || filled + numel > capacity {
                buckets.push(vec![]);
                filled = 0;
            }
            buckets.last_mut().unwrap().push(Place { group, index, offset, start: filled, numel });
            filled += numel;
        }
    }
    buckets
}

impl Bucket {
    /// A bucket over `places` with zeroed moments.
    pub fn zeroed(gpu: &std::rc::Rc<Gpu>, places: Vec<Place>) -> Result<Bucket> {
        let numel = places.iter().map(|p| p.numel).sum();
        let zeros = || -> Result<Tensor> {
            let t = Tensor::zeros(gpu, &[numel])?; // (numel)
            t.set_category(Category::Optimizer);
            Ok(t)
        };
        Ok(Bucket { places, numel, m: zeros()?, v: zeros()? })
    }
}

/// One bucket's gradients for one step, copied into a scratch arena, and its slot table.
pub(super) struct Gathered {
    pub bucket: usize,
    pub grads: Tensor, // (numel) the gradients side by side; garbage where a slot is inactive
    pub slots: Vec<Slot>,
    pub table: Tensor, // (slots · 8) u32, the slot table on the GPU
    /// Partial sums of the norm this bucket writes.
    pub chunks: usize,
}

/// Copies `tensors[k]`'s piece (its place's offset and length) into a new scratch arena of
/// `numel` elements at the places' starts; `None` entries are left out.
pub(super) fn gather(
    gpu: &std::rc::Rc<Gpu>,
    numel: usize,
    places: &[Place],
    tensors: &[Option<Tensor>],
    label: &'static str,
) -> Result<Tensor> {
    let arena = Tensor::empty(gpu, &[numel], DType::F32, Category::Scratch, label)?; // (numel)
    for (place, t) in places.iter().zip(tensors) {
        if let Some(t) = t {
            let (from, to) = (4 * place.offset as u64, 4 * place.start as u64);
            gpu.copy_range(t.storage(), from, arena.storage(), to, 4 * place.numel as u64)?;
        }
    }
    Ok(arena)
}

/// The inverse of [`gather`]: copies each present tensor's range of `arena` back into it.
pub(super) fn scatter(
    gpu: &Gpu,
    arena: &Tensor,
    places: &[Place],
    tensors: &[Option<Tensor>],
) -> Result<()> {
    for (place, t) in places.iter().zip(tensors) {
        if let Some(t) = t {
            let (from, to) = (4 * place.start as u64, 4 * place.offset as u64);
            gpu.copy_range(arena.storage(), from, t.storage(), to, 4 * place.numel as u64)?;
        }
    }
    Ok(())
}

/// The slot table on the GPU.
pub(super) fn upload_table(gpu: &std::rc::Rc<Gpu>, slots: &[Slot]) -> Result<Tensor> {
    let table =
        Tensor::empty(gpu, &[slots.len() * 8], DType::U32, Category::Scratch, "adamw slots")?; // (slots · 8)
    gpu.upload(table.storage(), bytemuck::cast_slice(slots))?;
    Ok(table)
}
