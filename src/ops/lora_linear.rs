//! A linear layer with LoRA's term added in the base matmul's epilogue:
//!   y = x·W + b + s·(down·Bᵀ),   down = dropout(x)·Aᵀ computed before (a small matmul)
//! x [.., in], W [in, out] (GPT-2's Conv1D layout), b [out], down [.., R], B = lora_b [out, R],
//! y [.., out]. One dispatch where the composed form takes three after the base (down·Bᵀ, ·s, +)
//! and keeps an [.., out] intermediate.
//!
//! Backward (dy = dL/dy; u = s·dy is the gradient of the LoRA term's product):
//!   dx = dy·Wᵀ      dW = xᵀ·dy      db = Σ_rows dy      d down = u·B      dB = uᵀ·down
//! each an existing op (matmul_t, sum_rows, scale), computed only for the inputs that need it: with
//! W and b frozen (LoRA), no dW and no weight-sized work. dA and the rest of dx flow back through
//! `down`'s own matmul. Saved for backward: W if x needs a gradient, x if W does, B and down for
//! the LoRA term.
//!
//! Kernels (shaders/lora_linear.wgsl, shaders/lora_linear_subgroup.wgsl): the epilogue is built
//! into the CPU-driver matmuls, the ones [`MatmulKernel::for_gpu`] picks without workgroup memory:
//! `Subgroup` (lavapipe) and `RegisterTiled` (other CPU drivers). On a GPU the base matmul is the
//! workgroup-tiled kernel, which has no such epilogue yet: there [`LoraLinearKernel::for_gpu`] is
//! `None` and [`Tensor::lora_linear`] composes, so the base path stays the fast kernel.
//! The composed reference is [`lora_linear_composed`]; tests compare the two, outputs and
//! gradients.
//! NOTE: the base tile is stored with + b, then the LoRA sum is added scaled: the same operations
//!       as the composed form (a driver may fuse s·acc + base into one FMA: equal within rounding).

use std::cell::Cell;

use bytemuck::{Pod, Zeroable};

use crate::autograd::no_grad;
use crate::error::{Result, shape_err};
use crate::gpu::{Gpu, Kernel};
use crate::ops::matmul::MatmulKernel;
use crate::ops::output;
use crate::tensor::Tensor;

/// Field names match `Params` in shaders/lora_linear*.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub struct Params {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub rank: u32,
    pub has_bias: u32,
    pub tiles_m: u32,
    pub scaling: f32,
    pub _pad: u32,
}

static REGISTER_TILED: Kernel = Kernel {
    name: "lora_linear_register_tiled",
    source: include_str!("../../shaders/lora_linear.wgsl"),
    entry: "lora_linear_register_tiled",
    reads: 5,
    writes: 1,
};
static SUBGROUP: Kernel = Kernel {
    name: "lora_linear_subgroup",
    source: include_str!("../../shaders/lora_linear_subgroup.wgsl"),
    entry: "lora_linear_subgroup",
    reads: 5,
    writes: 1,
};

/// The matmul variants that carry the LoRA epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoraLinearKernel {
    RegisterTiled,
    Subgroup,
}

impl LoraLinearKernel {
    /// The fused kernel matching this adapter's base matmul, or `None` (compose) where the base
    /// matmul is one without the epilogue (the workgroup-tiled kernel of real GPUs).
    pub fn for_gpu(gpu: &Gpu) -> Option<LoraLinearKernel> {
        match MatmulKernel::for_gpu(gpu) {
            MatmulKernel::Subgroup => Some(LoraLinearKernel::Subgroup),
            MatmulKernel::RegisterTiled => Some(LoraLinearKernel::RegisterTiled),
            _ => None,
        }
    }

    /// The variants this adapter can run (the subgroup one needs subgroups of exactly 8).
    pub fn available(gpu: &Gpu) -> Vec<LoraLinearKernel> {
        let mut out = vec![LoraLinearKernel::RegisterTiled];
        if MatmulKernel::Subgroup.supported(gpu) {
            out.push(LoraLinearKernel::Subgroup);
        }
        out
    }

    /// The kernel, and the output tile one workgroup covers: (rows, columns).
    fn kernel(self) -> (&'static Kernel, usize, usize) {
        match self {
            LoraLinearKernel::RegisterTiled => (&REGISTER_TILED, 4, 64 * 4),
            LoraLinearKernel::Subgroup => (&SUBGROUP, 128, 64),
        }
    }
}

/// The composed definition: x·W + b, then (down·Bᵀ)·s added — what the fused kernel replaces.
pub fn lora_linear_composed(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    down: &Tensor,
    lora_b: &Tensor,
    scaling: f32,
) -> Result<Tensor> {
    let base = x.linear(weight, bias)?; // (.., out)
    let up = down.matmul_t(lora_b, false, true)?; // (.., out) = down·Bᵀ
    base.add(&up.scale(scaling)?) // (.., out)
}

thread_local! {
    static COMPOSED: Cell<bool> = const { Cell::new(false) };
}

/// Until the guard drops, [`Tensor::lora_linear`] on this thread composes instead of fusing (the
/// tests compare a model's fused and composed runs through it).
pub fn force_composed() -> ComposedGuard {
    ComposedGuard(COMPOSED.with(|c| c.replace(true)))
}

/// Restores the previous choice when dropped.
pub struct ComposedGuard(bool);

impl Drop for ComposedGuard {
    fn drop(&mut self) {
        COMPOSED.with(|c| c.set(self.0));
    }
}

impl Tensor {
    /// x·W + b + s·(down·Bᵀ) with the LoRA term in the matmul's epilogue where this adapter's
    /// matmul has one (and [`force_composed`] is off), composed otherwise. `self` [.., in], `down` [.., R] (the same leading
    /// dims), `lora_b` [out, R].
    pub fn lora_linear(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        down: &Tensor,
        lora_b: &Tensor,
        scaling: f32,
    ) -> Result<Tensor> {
        match LoraLinearKernel::for_gpu(self.gpu()).filter(|_| !COMPOSED.with(Cell::get)) {
            Some(k) => self.lora_linear_with_kernel(weight, bias, down, lora_b, scaling, k),
            None => lora_linear_composed(self, weight, bias, down, lora_b, scaling),
        }
    }

    /// `lora_linear` through a chosen fused kernel (tests compare the variants).
    pub fn lora_linear_with_kernel(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        down: &Tensor,
        lora_b: &Tensor,
        scaling: f32,
        kernel: LoraLinearKernel,
    ) -> Result<Tensor> {
        let op = "lora_linear";
        for t in [self, weight, down, lora_b].into_iter().chain(bias) {
            t.check_f32(op)?;
        }
        let (cols, rank) = (self.last_dim(), lora_b.last_dim());
        let rows = self.numel() / cols.max(1);
        let out_features = weight.shape().get(1).copied().unwrap_or(0);
        let fits = self.rank() >= 1
            && weight.shape() == [cols, out_features]
            && lora_b.shape() == [out_features, rank]
            && down.rank() == self.rank()
            && down.shape()[..down.rank() - 1] == self.shape()[..self.rank() - 1]
            && down.last_dim() == rank
            && bias.is_none_or(|b| b.shape() == [out_features]);
        if !fits {
            return shape_err(
                op,
                format!(
                    "expects x [.., in], weight [in, out], bias [out], down [.., R], lora_b [out, R]; \
                     got {:?}, {:?}, {:?}, {:?}, {:?}",
                    self.shape(),
                    weight.shape(),
                    bias.map(|b| b.shape().to_vec()),
                    down.shape(),
                    lora_b.shape()
                ),
            );
        }
        if kernel == LoraLinearKernel::Subgroup && !MatmulKernel::Subgroup.supported(self.gpu()) {
            return Err(crate::Error::Input(format!(
                "{op}: the subgroup kernel needs subgroups of exactly 8 invocations; adapter {} has {}..{}",
                self.gpu().info.name,
                self.gpu().info.subgroup_min_size,
                self.gpu().info.subgroup_max_size
            )));
        }
        let x2 = self.reshape(&[rows, cols])?; // (rows, in)
        let down2 = down.reshape(&[rows, rank])?; // (rows, R)
        let y = fused(&x2, weight, bias, &down2, lora_b, scaling, kernel)?; // (rows, out)
        let mut shape = self.shape().to_vec();
        *shape.last_mut().unwrap() = out_features;
        y.reshape(&shape) // (.., out)
    }
}

/// The fused forward on 2-D operands, and its backward.
fn fused(
    x: &Tensor,            // (M, in)
    weight: &Tensor,       // (in, out)
    bias: Option<&Tensor>, // (out)
    down: &Tensor,         // (M, R)
    lora_b: &Tensor,       // (out, R)
    scaling: f32,
    kernel: LoraLinearKernel,
) -> Result<Tensor> {
    let (m, k) = (x.shape()[0], x.shape()[1]);
    let (n, rank) = (lora_b.shape()[0], lora_b.shape()[1]);
    let y = output(x.gpu(), &[m, n], "lora_linear")?; // (M, out)
    if m > 0 && n > 0 {
        let (kern, tile_m, tile_n) = kernel.kernel();
        let tiles_m = m.div_ceil(tile_m);
        let params = Params {
            m: m as u32,
            n: n as u32,
            k: k as u32,
            rank: rank as u32,
            has_bias: bias.is_some() as u32,
            tiles_m: tiles_m as u32,
            scaling,
            _pad: 0,
        };
        let groups = [
            n.div_ceil(tile_n) as u32,
            tiles_m.min(65_535) as u32,
            tiles_m.div_ceil(65_535) as u32,
        ];
        let b = bias.unwrap_or(weight); // bound but unread without a bias
        let reads = [x.storage(), weight.storage(), b.storage(), down.storage(), lora_b.storage()];
        x.gpu().dispatch(kern, &params, &reads, &[y.storage()], groups)?;
    }
    let want = |t: &Tensor| t.requires_grad().then(|| t.clone());
    let saved_weight = want(x).map(|_| weight.clone()); // for dx
    let saved_x = want(weight).map(|_| x.clone()); // for dW
    let bias_grad = bias.is_some_and(Tensor::requires_grad);
    let (saved_b, saved_down) = (lora_b.clone(), down.clone());
    let (down_grad, b_grad) = (down.requires_grad(), lora_b.requires_grad());
    let mut inputs = vec![x, weight];
    inputs.extend(bias);
    inputs.extend([down, lora_b]);
    let has_bias = bias.is_some();
    Ok(y.attach("lora_linear", &inputs, move |dy| {
        let _no_graph = no_grad();
        let dx = saved_weight.as_ref().map(|w| dy.matmul_t(w, false, true)).transpose()?; // (M, in)
        let dw = saved_x.as_ref().map(|x| x.matmul_t(dy, true, false)).transpose()?; // (in, out)
        let dbias = bias_grad.then(|| dy.sum_rows()).transpose()?; // (out)
        let u = (down_grad || b_grad).then(|| dy.scale(scaling)).transpose()?; // (M, out) = s·dy
        let ddown = u.as_ref().filter(|_| down_grad).map(|u| u.matmul(&saved_b)).transpose()?; // (M, R)
        let db = u.as_ref().filter(|_| b_grad).map(|u| u.matmul_t(&saved_down, true, false));
        let db = db.transpose()?; // (out, R) = uᵀ·down
        let mut grads = vec![dx, dw];
        if has_bias {
            grads.push(dbias);
        }
        grads.extend([ddown, db]);
        Ok(grads)
    }))
}

/// f64 references: forward and backward → [dx, dW, (db), d down, dB] over 2-D operands.
pub mod cpu {
    use crate::cpu::Array;
    use crate::ops::matmul::cpu as mm;

    pub fn lora_linear(
        x: &Array,
        weight: &Array,
        bias: Option<&Array>,
        down: &Array,
        lora_b: &Array,
        scaling: f64,
    ) -> Array {
        let base = mm::linear(x, weight, bias);
        let up = mm::matmul_t(down, lora_b, false, true);
        Array::new(
            &base.shape,
            base.data.iter().zip(&up.data).map(|(b, u)| b + scaling * u).collect(),
        )
    }

    pub fn lora_linear_backward(
        x: &Array,
        weight: &Array,
        bias: Option<&Array>,
        down: &Array,
        lora_b: &Array,
        scaling: f64,
        dy: &Array,
    ) -> Vec<Array> {
        let mut grads = mm::linear_backward(x, weight, bias, dy); // [dx, dW, (db)]
        let u = Array::new(&dy.shape, dy.data.iter().map(|d| scaling * d).collect());
        grads.extend(mm::matmul_t_backward(down, lora_b, false, true, &u)); // [d down, dB]
        grads
    }
}
