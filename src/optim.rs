//! AdamW (torch.optim.AdamW's formula) and global gradient-norm clipping, both on the GPU with no
//! read-back.
//!
//! Per parameter p with gradient g, at step t (counted from 1):
//!   m = β1·m + (1 − β1)·g,   v = β2·v + (1 − β2)·g²
//!   p ← p − lr·( m̂/(√v̂ + eps) + weight_decay·p ),   m̂ = m/(1 − β1ᵗ),  v̂ = v/(1 − β2ᵗ)
//! Multi-tensor: every trainable parameter has a place in flat arenas (`optim/arena.rs`), and one
//! dispatch of shaders/adamw.wgsl per arena bucket updates them all, each with its group's lr and
//! weight decay. A bucket holds up to one storage binding (128 MiB on lavapipe), so a step is a
//! fixed number of dispatches for a given number of trainable bytes, however many tensors hold
//! them. A parameter larger than one binding (GPT-2 small's wte) is cut into pieces across
//! buckets, with the same bits as unsplit (`optim/arena.rs`). Only parameters that require grad get state (m, v, counted as `Category::Optimizer`:
//! exactly 8 bytes per trainable element); a frozen parameter is never touched, and a trainable
//! one with no gradient this step is skipped (torch does the same).
//!
//! Clipping (shaders/grad_norm.wgsl): ‖g‖ over all gradients of all groups, as
//! torch.nn.utils.clip_grad_norm_: scale = min(1, max_norm / (‖g‖ + 1e-6)). The scale is applied
//! on the GPU from the norm buffer, so [`AdamW::clip_grad_norm_lazy`] needs no read-back and
//! returns the norm as a [1] tensor; [`AdamW::clip_grad_norm`] is the same plus one read of that
//! scalar (a sync: use the lazy form inside a training step and read the norm when logging).
//! [`AdamW::step_clipped`] fuses the two: the update reads each gradient scaled on the fly
//! (bit-identical to clipping then stepping). The partial sums of the norm are taken per gradient
//! in chunks of 1024, so the norm has the same bits as the per-tensor kernels gave.
//!
//! Dispatches of one step, B buckets (B = 1 up to 32M trainable values), c = ⌈log₁₀₂₄ chunks⌉:
//! `step` B; `step_clipped` 2B + c + 1; `clip_grad_norm_lazy` 2B + c + 1.
//!
//! Files: this one (the groups, packing, the update), `optim/arena.rs` (the arenas and the slot
//! table), `optim/clip.rs` (the norm and clipping), `optim/state.rs` (checkpoint state).
//!
//! Checkpoint state ([`AdamW::state`] / [`AdamW::load_state`]): one entry per moment, named
//! `"{group}.{index}.exp_avg"` and `"{group}.{index}.exp_avg_sq"` (torch's names; index counts
//! the group's params, frozen ones included), plus `"step"` = [t as f32] (exact up to 2²⁴ steps).

mod arena;
mod clip;
mod state;

pub use clip::NormParams;

use bytemuck::{Pod, Zeroable};

use self::arena::{Bucket, Gathered, Slot};
use crate::error::{Error, Result};
use crate::gpu::{Kernel, grid_1d};
use crate::tensor::{DType, Tensor};

/// Parameters sharing one learning rate and weight decay (e.g. no decay for biases and norms).
#[derive(Clone)]
pub struct ParamGroup {
    pub params: Vec<Tensor>,
    pub lr: f32,
    pub weight_decay: f32,
}

/// One parameter and where its optimizer state lies, paired when the parameter joins the
/// optimizer, so a parameter can never lose or swap its moments.
struct ParamState {
    param: Tensor,
    /// (bucket, index in the bucket's places) of each of its pieces, in order (one unless it is
    /// larger than a bucket), for a parameter that required grad when it joined; empty when
    /// frozen.
    places: Vec<(usize, usize)>,
}

struct GroupState {
    lr: f32,
    weight_decay: f32,
    params: Vec<ParamState>,
}

pub struct AdamW {
    /// Private: groups change only through [`AdamW::add_param_group`], which creates the state.
    groups: Vec<GroupState>,
    /// The trainable parameters' arenas and moments (`optim/arena.rs`).
    buckets: Vec<Bucket>,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Steps taken so far (t of the last step).
    pub step: u64,
    /// Elements a bucket holds at most: the binding limit / 4, or what
    /// [`split_buckets_at`](Self::split_buckets_at) set.
    bucket_elements: Option<usize>,
}

/// adamw.wgsl's `MultiParams`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct MultiParams {
    pub n: u32,
    pub slots: u32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub bias_correction1: f32,
    pub bias_correction2: f32,
    /// Used by the clipped step only.
    pub max_norm: f32,
}

/// adamw.wgsl's per-tensor `Params` (the reference kernels `adamw_step[_clipped]`).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct AdamWParams {
    pub n: u32,
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub bias_correction1: f32,
    pub bias_correction2: f32,
    /// Used by the clipped step only.
    pub max_norm: f32,
    pub _pad0: u32,
    pub _pad1: u32,
    pub _pad2: u32,
}

const ADAMW: &str = include_str!("../shaders/adamw.wgsl");
static STEP: Kernel = Kernel {
    name: "adamw_multi_tensor",
    source: ADAMW,
    entry: "adamw_multi_tensor",
    reads: 2,
    writes: 3,
};
static STEP_CLIPPED: Kernel = Kernel {
    name: "adamw_multi_tensor_clipped",
    source: ADAMW,
    entry: "adamw_multi_tensor_clipped",
    reads: 3,
    writes: 3,
};
/// Chunk length of the norm's partial sums.
pub const CHUNK: usize = 1024;

impl AdamW {
    pub fn new(groups: Vec<ParamGroup>, beta1: f32, beta2: f32, eps: f32) -> Result<AdamW> {
        let mut adamw = AdamW {
            groups: vec![],
            buckets: vec![],
            beta1,
            beta2,
            eps,
            step: 0,
            bucket_elements: None,
        };
        // Every group joins first, then one packing: packing after each group would hold the
        // old and the new arenas at once (the optimizer's peak bytes doubled).
        for group in groups {
            adamw.push_group(group)?;
        }
        adamw.repack()?;
        Ok(adamw)
    }

    /// Adds a group (torch's `add_param_group`): its trainable parameters get zeroed moments now.
    /// A parameter already in the optimizer (the same storage) is refused, as torch refuses it.
    pub fn add_param_group(&mut self, group: ParamGroup) -> Result<()> {
        self.push_group(group)?;
        self.repack()
    }

    /// Checks a group's parameters and appends it, without packing its moments yet.
    fn push_group(&mut self, group: ParamGroup) -> Result<()> {
        let gi = self.groups.len();
        let mut params: Vec<ParamState> = Vec::with_capacity(group.params.len());
        for (pi, p) in group.params.into_iter().enumerate() {
            let already = self
                .groups
                .iter()
                .flat_map(|g| &g.params)
                .chain(&params)
                .any(|s| std::ptr::eq(s.param.storage(), p.storage()));
            if already {
                return Err(Error::Input(format!(
                    "AdamW: parameter {pi} of group {gi} (shape {:?}) is already in the optimizer",
                    p.shape()
                )));
            }
            if p.requires_grad() && p.dtype() != DType::F32 {
                return Err(Error::Input(format!(
                    "AdamW: parameter {pi} of group {gi} is {:?}, not f32",
                    p.dtype()
                )));
            }
            params.push(ParamState { param: p, places: vec![] });
        }
        self.groups.push(GroupState { lr: group.lr, weight_decay: group.weight_decay, params });
        Ok(())
    }

    /// Packs every trainable parameter into buckets anew (after a group joined), carrying the
    /// moments of those that had a place over by GPU copies; the new ones start at zero.
    fn repack(&mut self) -> Result<()> {
        let mut sizes = vec![];
        let mut gpu = None;
        for (gi, group) in self.groups.iter().enumerate() {
            for (pi, s) in group.params.iter().enumerate() {
                if !s.places.is_empty() || s.param.requires_grad() {
                    sizes.push((gi, pi, s.param.numel()));
                    gpu = Some(s.param.gpu().clone());
                }
            }
        }
        let Some(gpu) = gpu else { return Ok(()) };
        let binding = (gpu.max_binding() / 4) as usize;
        let capacity = self.bucket_elements.unwrap_or(binding).min(binding);
        let mut buckets = vec![];
        for places in arena::pack(&sizes, capacity, CHUNK) {
            buckets.push(Bucket::zeroed(&gpu, places)?);
        }
        let mut new_places = vec![vec![]; sizes.len()];
        let index_of = |g: usize, i: usize| sizes.iter().position(|s| (s.0, s.1) == (g, i));
        for (bi, bucket) in buckets.iter().enumerate() {
            for (k, new) in bucket.places.iter().enumerate() {
                // The old pieces' moments, over the range this piece covers.
                let state = &self.groups[new.group].params[new.index];
                for &(old_b, old_k) in &state.places {
                    let (old, at) = (&self.buckets[old_b], self.buckets[old_b].places[old_k]);
                    let from = at.offset.max(new.offset);
                    let to = (at.offset + at.numel).min(new.offset + new.numel);
                    if from >= to {
                        continue;
                    }
                    let src = 4 * (at.start + from - at.offset) as u64;
                    let dst = 4 * (new.start + from - new.offset) as u64;
                    for (a, b) in [(&old.m, &bucket.m), (&old.v, &bucket.v)] {
                        gpu.copy_range(a.storage(), src, b.storage(), dst, 4 * (to - from) as u64)?;
                    }
                }
                let slot = index_of(new.group, new.index).expect("every place comes from sizes");
                new_places[slot].push((bi, k));
            }
        }
        for (&(gi, pi, _), places) in sizes.iter().zip(new_places) {
            self.groups[gi].params[pi].places = places;
        }
        self.buckets = buckets;
        Ok(())
    }

    /// Buckets of at most `elements` values from now on (moments carried over), so that the
    /// split into several buckets — at 32M values on a 128 MiB binding — and the split of a
    /// parameter larger than one bucket run at small sizes in tests. Never above the binding
    /// limit.
    pub fn split_buckets_at(&mut self, elements: usize) -> Result<()> {
        self.bucket_elements = Some(elements.max(1));
        self.repack()
    }

    /// How many buckets the trainable parameters fill (each costs its own dispatches).
    pub fn num_buckets(&self) -> usize {
        self.buckets.len()
    }

    pub fn num_groups(&self) -> usize {
        self.groups.len()
    }

    /// The parameters of group `group`, in the order they were given.
    pub fn params(&self, group: usize) -> impl Iterator<Item = &Tensor> {
        self.groups[group].params.iter().map(|s| &s.param)
    }

    /// Sets every group's learning rate (a schedule's value for this step).
    pub fn set_lr_all(&mut self, lr: f32) {
        self.groups.iter_mut().for_each(|g| g.lr = lr);
    }

    pub fn set_lr(&mut self, group: usize, lr: f32) {
        self.groups[group].lr = lr;
    }

    pub fn lr(&self, group: usize) -> f32 {
        self.groups[group].lr
    }

    pub fn weight_decay(&self, group: usize) -> f32 {
        self.groups[group].weight_decay
    }

    /// One AdamW step over every parameter that has a gradient (records dispatches only).
    pub fn step(&mut self) -> Result<()> {
        self.check_frozen()?;
        let gathered = self.gather_grads()?;
        self.update(&gathered, None)
    }

    /// Clipping and the step in one pass over the gradients: the global norm is computed as
    /// [`clip_grad_norm_lazy`](Self::clip_grad_norm_lazy) does, and the update scales each
    /// gradient on the fly instead of rewriting it — the same bits as clipping then stepping.
    /// The gradients are left unscaled. Returns the norm.
    pub fn step_clipped(&mut self, max_norm: f32) -> Result<Option<Tensor>> {
        self.check_frozen()?;
        let gathered = self.gather_grads()?;
        let norm = self.grad_norm(&gathered)?;
        self.update(&gathered, norm.as_ref().map(|n| (n, max_norm)))?;
        Ok(norm)
    }

    /// Refuses, before recording anything, a parameter frozen when it joined (so without
    /// moments) that has a gradient now: it would otherwise be skipped without a word.
    fn check_frozen(&self) -> Result<()> {
        for (gi, group) in self.groups.iter().enumerate() {
            for (pi, s) in group.params.iter().enumerate() {
                if s.places.is_empty() && s.param.grad().is_some() {
                    return Err(Error::Input(format!(
                        "AdamW: parameter {pi} of group {gi} (shape {:?}) has a gradient but was \
                         frozen when it joined the optimizer, so it has no moments; choose what \
                         trains before building the optimizer",
                        s.param.shape()
                    )));
                }
            }
        }
        Ok(())
    }

    /// The parameters of bucket `b`'s places, in order.
    fn bucket_params(&self, b: usize) -> impl Iterator<Item = &Tensor> {
        self.buckets[b].places.iter().map(|p| &self.groups[p.group].params[p.index].param)
    }

    /// Each bucket's gradients copied into an arena, with its slot table; buckets where no
    /// parameter has a gradient are left out.
    fn gather_grads(&self) -> Result<Vec<Gathered>> {
        let mut out = vec![];
        for (b, bucket) in self.buckets.iter().enumerate() {
            let grads: Vec<Option<Tensor>> = self.bucket_params(b).map(|p| p.grad()).collect();
            if grads.iter().all(Option::is_none) {
                continue;
            }
            let mut slots = Vec::with_capacity(grads.len());
            let mut chunks = 0;
            for (place, g) in bucket.places.iter().zip(&grads) {
                let group = &self.groups[place.group];
                let chunk_start = chunks;
                if g.is_some() {
                    chunks += place.numel.div_ceil(CHUNK);
                }
                slots.push(Slot {
                    start: place.start as u32,
                    end: (place.start + place.numel) as u32,
                    chunk_start: chunk_start as u32,
                    chunk_end: chunks as u32,
                    lr: group.lr,
                    weight_decay: group.weight_decay,
                    has_grad: g.is_some() as u32,
                    _pad: 0,
                });
            }
            let gpu = bucket.m.gpu();
            let grads =
                arena::gather(gpu, bucket.numel, &bucket.places, &grads, "adamw gradients")?;
            let table = arena::upload_table(gpu, &slots)?;
            out.push(Gathered { bucket: b, grads, slots, table, chunks });
        }
        Ok(out)
    }

    /// One AdamW step of every gathered bucket: its parameters are copied into an arena, updated
    /// by one dispatch, and copied back. `clip` = (norm, max_norm) scales the gradients by
    /// min(1, max_norm / (norm + 1e-6)) as they are read.
    fn update(&mut self, gathered: &[Gathered], clip: Option<(&Tensor, f32)>) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let bias_correction1 = (1.0 - (self.beta1 as f64).powi(t)) as f32;
        let bias_correction2 = (1.0 - (self.beta2 as f64).powi(t)) as f32;
        for g in gathered {
            let bucket = &self.buckets[g.bucket];
            let gpu = bucket.m.gpu();
            let active: Vec<Option<Tensor>> = self
                .bucket_params(g.bucket)
                .zip(&g.slots)
                .map(|(p, s)| (s.has_grad == 1).then(|| p.clone()))
                .collect();
            let params = arena::gather(gpu, bucket.numel, &bucket.places, &active, "adamw params")?;
            let uniform = MultiParams {
                n: bucket.numel as u32,
                slots: g.slots.len() as u32,
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.eps,
                bias_correction1,
                bias_correction2,
                max_norm: clip.map_or(0.0, |(_, max)| max),
            };
            let writes = [params.storage(), bucket.m.storage(), bucket.v.storage()];
            let groups = grid_1d(bucket.numel, 256);
            let (table, grads) = (g.table.storage(), g.grads.storage());
            match clip {
                Some((norm, _)) => gpu.dispatch(
                    &STEP_CLIPPED,
                    &uniform,
                    &[table, grads, norm.storage()],
                    &writes,
                    groups,
                )?,
                None => gpu.dispatch(&STEP, &uniform, &[table, grads], &writes, groups)?,
            }
            arena::scatter(gpu, &params, &bucket.places, &active)?;
        }
        Ok(())
    }

    /// Drops every parameter's gradient.
    pub fn zero_grad(&self) {
        for s in self.groups.iter().flat_map(|g| &g.params) {
            s.param.zero_grad();
        }
    }
}
