//! A linear layer with LoRA's term added in the base matmul's epilogue:
//!   y = x·W + b + s·(down·Bᵀ),   down = x_d·Aᵀ
//! x [.., in], W [in, out] (GPT-2's Conv1D layout), b [out], x_d [.., in] the input of LoRA's path
//! (x, or dropout(x) as PEFT applies it before A), A = lora_a [R, in], B = lora_b [out, R],
//! y [.., out]. The base product and the R-deep product down·Bᵀ share one tile in one dispatch
//! where the composed form adds three (down·Bᵀ, ·s, +) and an [.., out] intermediate.
//!
//! Backward (dy = dL/dy; u = s·dy is the gradient of the LoRA term's product):
//!   dx = dy·Wᵀ   dW = xᵀ·dy   db = Σ_rows dy   d down = u·B   dB = uᵀ·down
//!   dA = d downᵀ·x_d          dx_d = d down·A
//! computed only for the inputs that need them: with W and b frozen (LoRA), no weight-sized
//! gradient work at all. Saved for backward: W if x needs a gradient, x if W does; down, x_d, A
//! and B for the LoRA term.
//!
//! Kernels (shaders/lora_linear.wgsl, shaders/lora_linear_subgroup.wgsl):
//! - the epilogue, built into the CPU-driver matmuls [`MatmulKernel::for_gpu`] picks: `Subgroup`
//!   (lavapipe) and `RegisterTiled` (other CPU drivers). On a GPU the base matmul is the
//!   workgroup-tiled kernel, which has no such epilogue yet: there [`LoraLinearKernel::for_gpu`] is
//!   `None` and [`Tensor::lora_linear`] composes, so the base path stays the fast kernel.
//! - `lora_rank_product` for the four products whose output is R wide or R high (down, d down,
//!   dA, dB): a matmul's 64-column tile would compute 64 − R columns for nothing (measured on
//!   lavapipe at rows 2048, C 128, R 8: 10–32 ms each with the subgroup matmul, as much as the
//!   base's own weight gradient). R ≤ 16 for the fused op; a larger R composes.
//!
//! The composed reference is [`lora_linear_composed`]; tests compare the two, outputs and
//! gradients.
//!
//! NOTE: the base tile is stored with + b, then the LoRA sum is added scaled, as the composed form
//! does; s multiplies sums (α of the rank kernel) where the composed form scales dy first: equal
//! within f32 rounding, not bit for bit.

use std::cell::Cell;

use bytemuck::{Pod, Zeroable};

use crate::autograd::no_grad;
use crate::error::{Result, shape_err};
use crate::gpu::{Gpu, Kernel, grid_1d};
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

/// Field names match `RankParams` in shaders/lora_linear.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub struct RankParams {
    pub n: u32,
    pub k: u32,
    pub rank: u32,
    pub p_i: u32,
    pub p_k: u32,
    pub q_k: u32,
    pub q_r: u32,
    pub o_i: u32,
    pub o_r: u32,
    pub alpha: f32,
    pub _pad0: u32,
    pub _pad1: u32,
}

/// The largest R `lora_rank_product` takes (its accumulators per invocation).
pub const MAX_RANK: usize = 16;

static RANK_PRODUCT: Kernel = Kernel {
    name: "lora_rank_product",
    source: include_str!("../../shaders/lora_linear.wgsl"),
    entry: "lora_rank_product",
    reads: 2,
    writes: 1,
};

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

/// The composed definition — x·W + b, then (x_d·Aᵀ)·Bᵀ scaled and added — that the fused op
/// replaces: its reference.
pub fn lora_linear_composed(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    x_lora: &Tensor,
    lora_a: &Tensor,
    lora_b: &Tensor,
    scaling: f32,
) -> Result<Tensor> {
    let base = x.linear(weight, bias)?; // (.., out)
    let down = x_lora.matmul_t(lora_a, false, true)?; // (.., R) = x_d·Aᵀ
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
    /// x·W + b + s·(x_d·Aᵀ)·Bᵀ with the LoRA term in the matmul's epilogue where this adapter's
    /// matmul has one (R ≤ 16, and [`force_composed`] off), composed otherwise. `self` and
    /// `x_lora` [.., in], `lora_a` [R, in], `lora_b` [out, R].
    pub fn lora_linear(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        x_lora: &Tensor,
        lora_a: &Tensor,
        lora_b: &Tensor,
        scaling: f32,
    ) -> Result<Tensor> {
        let fused = LoraLinearKernel::for_gpu(self.gpu())
            .filter(|_| !COMPOSED.with(Cell::get) && lora_a.shape().first() <= Some(&MAX_RANK));
        match fused {
            Some(k) => {
                self.lora_linear_with_kernel(weight, bias, x_lora, lora_a, lora_b, scaling, k)
            }
            None => lora_linear_composed(self, weight, bias, x_lora, lora_a, lora_b, scaling),
        }
    }

    /// `lora_linear` through a chosen fused kernel (tests compare the variants).
    #[allow(clippy::too_many_arguments)]
    pub fn lora_linear_with_kernel(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        x_lora: &Tensor,
        lora_a: &Tensor,
        lora_b: &Tensor,
        scaling: f32,
        kernel: LoraLinearKernel,
    ) -> Result<Tensor> {
        let op = "lora_linear";
        for t in [self, weight, x_lora, lora_a, lora_b].into_iter().chain(bias) {
            t.check_f32(op)?;
        }
        let (cols, rank) = (self.last_dim(), lora_b.last_dim());
        let rows = self.numel() / cols.max(1);
        let out_features = weight.shape().get(1).copied().unwrap_or(0);
        let fits = self.rank() >= 1
            && weight.shape() == [cols, out_features]
            && x_lora.shape() == self.shape()
            && lora_a.shape() == [rank, cols]
            && lora_b.shape() == [out_features, rank]
            && bias.is_none_or(|b| b.shape() == [out_features]);
        if !fits {
            return shape_err(
                op,
                format!(
                    "expects x [.., in], weight [in, out], bias [out], x_lora as x, lora_a [R, in], \
                     lora_b [out, R]; got {:?}, {:?}, {:?}, {:?}, {:?}, {:?}",
                    self.shape(),
                    weight.shape(),
                    bias.map(|b| b.shape().to_vec()),
                    x_lora.shape(),
                    lora_a.shape(),
                    lora_b.shape()
                ),
            );
        }
        if rank == 0 || rank > MAX_RANK {
            return Err(crate::Error::Input(format!(
                "{op}: rank {rank} is outside 1..={MAX_RANK}, what the fused kernels take; \
                 Tensor::lora_linear composes for it"
            )));
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
        // Without dropout x_d is x: one input, whose two gradients autograd adds.
        let xl2 =
            if x_lora.id() == self.id() { x2.clone() } else { x_lora.reshape(&[rows, cols])? }; // (rows, in)
        let y = fused(&x2, weight, bias, &xl2, lora_a, lora_b, scaling, kernel)?; // (rows, out)
        let mut shape = self.shape().to_vec();
        *shape.last_mut().unwrap() = out_features;
        y.reshape(&shape) // (.., out)
    }
}

/// out[i, r] = α·Σ_k P[i, k]·Q[k, r] for i < n, k < k_len, r < R, each operand read through the
/// strides of its layout: ((p_i, p_k), (q_k, q_r), (o_i, o_r)). `out_shape` is out's stored shape.
fn rank_product(
    p: &Tensor,
    q: &Tensor,
    [n, k_len, rank]: [usize; 3],
    [p_i, p_k, q_k, q_r, o_i, o_r]: [usize; 6],
    alpha: f32,
    out_shape: &[usize],
) -> Result<Tensor> {
    let out = output(p.gpu(), out_shape, "lora_linear")?;
    let params = RankParams {
        n: n as u32,
        k: k_len as u32,
        rank: rank as u32,
        p_i: p_i as u32,
        p_k: p_k as u32,
        q_k: q_k as u32,
        q_r: q_r as u32,
        o_i: o_i as u32,
        o_r: o_r as u32,
        alpha,
        _pad0: 0,
        _pad1: 0,
    };
    if n > 0 {
        let groups = grid_1d(n, 64);
        p.gpu().dispatch(
            &RANK_PRODUCT,
            &params,
            &[p.storage(), q.storage()],
            &[out.storage()],
            groups,
        )?;
    }
    Ok(out)
}

/// The fused forward on 2-D operands, and its backward.
#[allow(clippy::too_many_arguments)]
fn fused(
    x: &Tensor,            // (M, in)
    weight: &Tensor,       // (in, out)
    bias: Option<&Tensor>, // (out)
    x_lora: &Tensor,       // (M, in)
    lora_a: &Tensor,       // (R, in)
    lora_b: &Tensor,       // (out, R)
    scaling: f32,
    kernel: LoraLinearKernel,
) -> Result<Tensor> {
    let (m, k) = (x.shape()[0], x.shape()[1]);
    let (n, rank) = (lora_b.shape()[0], lora_b.shape()[1]);
    // down[i, r] = Σ_k x_d[i, k]·A[r, k]
    let down = rank_product(x_lora, lora_a, [m, k, rank], [k, 1, 1, k, rank, 1], 1.0, &[m, rank])?; // (M, R)
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
    let (a_grad, b_grad, xl_grad) =
        (lora_a.requires_grad(), lora_b.requires_grad(), x_lora.requires_grad());
    // x_d only for A's gradient: LoRA-FA (A frozen) keeps no copy of the layer's input alive.
    let saved = (a_grad.then(|| x_lora.clone()), lora_a.clone(), lora_b.clone(), down);
    let mut inputs = vec![x, weight];
    inputs.extend(bias);
    inputs.extend([x_lora, lora_a, lora_b]);
    let has_bias = bias.is_some();
    Ok(y.attach("lora_linear", &inputs, move |dy| {
        let _no_graph = no_grad();
        let (x_lora, lora_a, lora_b, down) = &saved;
        let dx = saved_weight.as_ref().map(|w| dy.matmul_t(w, false, true)).transpose()?; // (M, in)
        let dw = saved_x.as_ref().map(|x| x.matmul_t(dy, true, false)).transpose()?; // (in, out)
        let dbias = bias_grad.then(|| dy.sum_rows()).transpose()?; // (out)
        // d down[i, r] = s·Σ_j dy[i, j]·B[j, r]
        let ddown = (a_grad || xl_grad)
            .then(|| {
                rank_product(
                    dy,
                    lora_b,
                    [m, n, rank],
                    [n, 1, rank, 1, rank, 1],
                    scaling,
                    &[m, rank],
                )
            })
            .transpose()?; // (M, R)
        // dB[j, r] = s·Σ_i dy[i, j]·down[i, r]
        let db = b_grad
            .then(|| {
                rank_product(dy, down, [n, m, rank], [1, n, rank, 1, rank, 1], scaling, &[n, rank])
            })
            .transpose()?; // (out, R)
        // dA[r, c] = Σ_i d down[i, r]·x_d[i, c]: i over c, out (R, in)
        let da = match (&ddown, x_lora) {
            (Some(dd), Some(x_lora)) => Some(rank_product(
                x_lora,
                dd,
                [k, m, rank],
                [1, k, rank, 1, 1, k],
                1.0,
                &[rank, k],
            )?),
            _ => None,
        }; // (R, in)
        let dxl = match (&ddown, xl_grad) {
            (Some(dd), true) => Some(dd.matmul(lora_a)?),
            _ => None,
        }; // (M, in) = d down·A
        let mut grads = vec![dx, dw];
        if has_bias {
            grads.push(dbias);
        }
        grads.extend([dxl, da, db]);
        Ok(grads)
    }))
}

/// f64 references with clear loops: forward and backward → [dx, dW, (db), dx_d, dA, dB].
#[path = "lora_linear_cpu.rs"]
pub mod cpu;
