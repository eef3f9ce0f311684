//! AdamW (torch.optim.AdamW's formula) and global gradient-norm clipping, both on the GPU with no
//! read-back.
//!
//! Per parameter p with gradient g, at step t (counted from 1):
//!   m = β1·m + (1 − β1)·g,   v = β2·v + (1 − β2)·g²
//!   p ← p − lr·( m̂/(√v̂ + eps) + weight_decay·p ),   m̂ = m/(1 − β1ᵗ),  v̂ = v/(1 − β2ᵗ)
//! One dispatch per parameter (shaders/adamw.wgsl) updates p, m and v in place. Only parameters
//! that require grad get state (m, v, counted as `Category::Optimizer`); a frozen parameter is
//! never touched, and a trainable one with no gradient this step is skipped (torch does the same).
//!
//! Clipping (shaders/grad_norm.wgsl): ‖g‖ over all gradients of all groups, as
//! torch.nn.utils.clip_grad_norm_: scale = min(1, max_norm / (‖g‖ + 1e-6)). The scale is applied
//! on the GPU from the norm buffer, so [`AdamW::clip_grad_norm_lazy`] needs no read-back and
//! returns the norm as a [1] tensor; [`AdamW::clip_grad_norm`] is the same plus one read of that
//! scalar (a sync: use the lazy form inside a training step and read the norm when logging).
//! [`AdamW::step_clipped`] fuses the two: each parameter's update reads its gradient scaled on the
//! fly (bit-identical to clipping then stepping, one dispatch per parameter fewer).
//!
//! Checkpoint state ([`AdamW::state`] / [`AdamW::load_state`]): one entry per moment, named
//! `"{group}.{index}.exp_avg"` and `"{group}.{index}.exp_avg_sq"` (torch's names; index counts
//! the group's params, frozen ones included), plus `"step"` = [t as f32] (exact up to 2²⁴ steps).

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{Category, Kernel, Storage, grid_1d};
use crate::tensor::{DType, Tensor};

/// Parameters sharing one learning rate and weight decay (e.g. no decay for biases and norms).
#[derive(Clone)]
pub struct ParamGroup {
    pub params: Vec<Tensor>,
    pub lr: f32,
    pub weight_decay: f32,
}

/// One parameter and its optimizer state, paired when the parameter joins the optimizer, so a
/// parameter can never lose or swap its moments.
struct ParamState {
    param: Tensor,
    /// (m, v), created for a parameter that required grad when it joined; `None` when frozen.
    moments: Option<(Tensor, Tensor)>,
}

struct GroupState {
    lr: f32,
    weight_decay: f32,
    params: Vec<ParamState>,
}

pub struct AdamW {
    /// Private: groups change only through [`AdamW::add_param_group`], which creates the state.
    groups: Vec<GroupState>,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Steps taken so far (t of the last step).
    pub step: u64,
}

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

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct NormParams {
    pub n: u32,
    pub k: u32,
    pub offset: u32,
    pub max_norm: f32,
}

const ADAMW: &str = include_str!("../shaders/adamw.wgsl");
const GRAD_NORM: &str = include_str!("../shaders/grad_norm.wgsl");
static STEP: Kernel =
    Kernel { name: "adamw_step", source: ADAMW, entry: "adamw_step", reads: 1, writes: 3 };
static STEP_CLIPPED: Kernel = Kernel {
    name: "adamw_step_clipped",
    source: ADAMW,
    entry: "adamw_step_clipped",
    reads: 2,
    writes: 3,
};
static SUMSQ: Kernel = Kernel {
    name: "grad_norm_sumsq_chunks",
    source: GRAD_NORM,
    entry: "sumsq_chunks",
    reads: 1,
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

/// Chunk length of the norm's partial sums.
const CHUNK: usize = 1024;

impl AdamW {
    pub fn new(groups: Vec<ParamGroup>, beta1: f32, beta2: f32, eps: f32) -> Result<AdamW> {
        let mut adamw = AdamW { groups: vec![], beta1, beta2, eps, step: 0 };
        for group in groups {
            adamw.add_param_group(group)?;
        }
        Ok(adamw)
    }

    /// Adds a group (torch's `add_param_group`): its trainable parameters get zeroed moments now.
    /// A parameter already in the optimizer (the same storage) is refused, as torch refuses it.
    pub fn add_param_group(&mut self, group: ParamGroup) -> Result<()> {
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
            let moments = if p.requires_grad() {
                if p.dtype() != DType::F32 {
                    return Err(Error::Input(format!(
                        "AdamW: parameter {pi} of group {gi} is {:?}, not f32",
                        p.dtype()
                    )));
                }
                let zeros = || -> Result<Tensor> {
                    let t = Tensor::zeros(p.gpu(), p.shape())?;
                    t.set_category(Category::Optimizer);
                    Ok(t)
                };
                Some((zeros()?, zeros()?))
            } else {
                None
            };
            params.push(ParamState { param: p, moments });
        }
        self.groups.push(GroupState { lr: group.lr, weight_decay: group.weight_decay, params });
        Ok(())
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
        self.update(None)
    }

    /// Clipping and the step in one pass over the gradients: the global norm is computed as
    /// [`clip_grad_norm_lazy`](Self::clip_grad_norm_lazy) does, and each parameter's update scales
    /// its gradient on the fly instead of rewriting it — one dispatch per parameter fewer, and the
    /// same bits as clipping then stepping. The gradients are left unscaled. Returns the norm.
    pub fn step_clipped(&mut self, max_norm: f32) -> Result<Option<Tensor>> {
        let norm = self.grad_norm()?;
        self.update(norm.as_ref().map(|n| (n, max_norm)))?;
        Ok(norm)
    }

    /// One AdamW step of every parameter with a gradient; `clip` = (norm, max_norm) scales the
    /// gradients by min(1, max_norm / (norm + 1e-6)) as they are read.
    fn update(&mut self, clip: Option<(&Tensor, f32)>) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let bias_correction1 = (1.0 - (self.beta1 as f64).powi(t)) as f32;
        let bias_correction2 = (1.0 - (self.beta2 as f64).powi(t)) as f32;
        // Refuse before recording anything: a parameter frozen when it joined (so without
        // moments) that has a gradient now would otherwise be skipped without a word.
        for (gi, group) in self.groups.iter().enumerate() {
            for (pi, s) in group.params.iter().enumerate() {
                if s.moments.is_none() && s.param.grad().is_some() {
                    return Err(Error::Input(format!(
                        "AdamW: parameter {pi} of group {gi} (shape {:?}) has a gradient but was \
                         frozen when it joined the optimizer, so it has no moments; choose what \
                         trains before building the optimizer",
                        s.param.shape()
                    )));
                }
            }
        }
        for group in &self.groups {
            for ParamState { param: p, moments } in &group.params {
                let (Some((m, v)), Some(g)) = (moments, p.grad()) else { continue };
                let params = AdamWParams {
                    n: p.numel() as u32,
                    lr: group.lr,
                    beta1: self.beta1,
                    beta2: self.beta2,
                    eps: self.eps,
                    weight_decay: group.weight_decay,
                    bias_correction1,
                    bias_correction2,
                    max_norm: clip.map_or(0.0, |(_, max)| max),
                    _pad0: 0,
                    _pad1: 0,
                    _pad2: 0,
                };
                let writes = [p.storage(), m.storage(), v.storage()];
                let groups = grid_1d(p.numel(), 256);
                match clip {
                    Some((norm, _)) => p.gpu().dispatch(
                        &STEP_CLIPPED,
                        &params,
                        &[g.storage(), norm.storage()],
                        &writes,
                        groups,
                    )?,
                    None => p.gpu().dispatch(&STEP, &params, &[g.storage()], &writes, groups)?,
                }
            }
        }
        Ok(())
    }

    /// Drops every parameter's gradient.
    pub fn zero_grad(&self) {
        for s in self.groups.iter().flat_map(|g| &g.params) {
            s.param.zero_grad();
        }
    }

    fn grads(&self) -> Vec<Tensor> {
        self.groups.iter().flat_map(|g| &g.params).filter_map(|s| s.param.grad()).collect()
    }

    /// Clips all gradients to a global L2 norm of `max_norm` in place; returns the norm before
    /// clipping as a [1] tensor (no read-back). With no gradients at all, the norm is 0.
    pub fn clip_grad_norm_lazy(&self, max_norm: f32) -> Result<Option<Tensor>> {
        let Some(norm) = self.grad_norm()? else { return Ok(None) };
        let gpu = norm.gpu().clone();
        // Scale in place. Two gradients may share one buffer (autograd hands the same dout to
        // both inputs of an add): scale each buffer once.
        let mut seen: Vec<*const Storage> = Vec::new();
        for g in &self.grads() {
            let key = g.storage() as *const Storage;
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
            let params = NormParams { n: g.numel() as u32, k: CHUNK as u32, offset: 0, max_norm };
            gpu.dispatch(
                &CLIP,
                &params,
                &[norm.storage()],
                &[g.storage()],
                grid_1d(g.numel(), 256),
            )?;
        }
        Ok(Some(norm))
    }

    /// The global L2 norm of all gradients as a [1] tensor (no read-back); None without gradients.
    fn grad_norm(&self) -> Result<Option<Tensor>> {
        let max_norm = 0.0; // unused by the norm kernels
        let grads = self.grads();
        let Some(first) = grads.first() else { return Ok(None) };
        let gpu = first.gpu().clone();
        // 1. Per-gradient chunk sums of squares, side by side in one buffer.
        let total_chunks: usize = grads.iter().map(|g| g.numel().div_ceil(CHUNK)).sum();
        let mut partial =
            Tensor::empty(&gpu, &[total_chunks], DType::F32, Category::Scratch, "clip_grad_norm")?;
        let mut offset = 0;
        for g in &grads {
            let chunks = g.numel().div_ceil(CHUNK);
            let params = NormParams {
                n: g.numel() as u32,
                k: CHUNK as u32,
                offset: offset as u32,
                max_norm,
            };
            gpu.dispatch(
                &SUMSQ,
                &params,
                &[g.storage()],
                &[partial.storage()],
                grid_1d(chunks, 256),
            )?;
            offset += chunks;
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
            let params = NormParams { n: n as u32, k: CHUNK as u32, offset: 0, max_norm };
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
            &NormParams { n: 1, k: 1, offset: 0, max_norm },
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

    /// m and v of every trainable parameter, and the step count (see the module docs for names).
    pub fn state(&self) -> Result<Vec<(String, Vec<f32>)>> {
        let mut out = vec![("step".to_string(), vec![self.step as f32])];
        for (gi, group) in self.groups.iter().enumerate() {
            for (pi, s) in group.params.iter().enumerate() {
                if let Some((m, v)) = &s.moments {
                    out.push((format!("{gi}.{pi}.exp_avg"), m.to_vec()?));
                    out.push((format!("{gi}.{pi}.exp_avg_sq"), v.to_vec()?));
                }
            }
        }
        Ok(out)
    }

    /// Restores what [`state`](Self::state) returned. Every trainable parameter's m and v and
    /// the step must be present, with matching sizes.
    pub fn load_state(&mut self, state: &[(String, Vec<f32>)]) -> Result<()> {
        let find = |name: &str| state.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        let step = find("step")
            .ok_or_else(|| Error::Input("AdamW::load_state: no \"step\" entry".into()))?;
        for (gi, group) in self.groups.iter().enumerate() {
            for (pi, s) in group.params.iter().enumerate() {
                let Some((m, v)) = &s.moments else { continue };
                for (t, suffix) in [(m, "exp_avg"), (v, "exp_avg_sq")] {
                    let name = format!("{gi}.{pi}.{suffix}");
                    let data = find(&name).ok_or_else(|| {
                        Error::Input(format!("AdamW::load_state: no entry {name:?}"))
                    })?;
                    if data.len() != t.numel() {
                        return Err(Error::Input(format!(
                            "AdamW::load_state: {name:?} has {} values, the parameter has {} (shape {:?})",
                            data.len(),
                            t.numel(),
                            t.shape()
                        )));
                    }
                    t.gpu().upload(t.storage(), bytemuck::cast_slice(data))?;
                }
            }
        }
        self.step = step.first().copied().unwrap_or(0.0) as u64;
        Ok(())
    }
}
