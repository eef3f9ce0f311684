//! Every op, forward and backward side by side in one file, with its WGSL kernels in
//! `shaders/<file>.wgsl` and its plain f64 reference in the file's `cpu` module.
//!
//! [`ALL_OPS`] is the one list that names them: the test suite fails if an op on it has no
//! gradient check, and if an op records a name on the tape (`.attach("name", …)` anywhere in
//! src/) that the list lacks (tests/gpu/ops.rs reads the sources).

pub mod attention;
pub mod attention_composed;
pub mod bias_gelu;
pub mod binary;
pub mod cross_entropy;
pub mod dequant;
pub mod dropout;
pub mod embedding;
pub mod layernorm;
pub mod linear_4bit;
pub(crate) mod linear_4bit_kernels;
pub mod linear_f16;
pub mod linear_int8;
pub(crate) mod linear_int8_kernels;
pub mod lm_head;
pub mod lm_head_loss;
pub mod lora_linear;
pub mod matmul;
pub mod permute;
pub mod reduce;
pub mod scatter;
pub mod shape;
pub mod softmax;
pub mod unary;

use crate::gpu::{Gpu, Kernel, grid_1d};
use crate::tensor::{DType, Tensor};
use crate::{Category, Result};

/// Every differentiable op. Adding an op: its file, its shader, and one line here.
pub const ALL_OPS: &[&str] = &[
    // binary.rs
    "add",
    "sub",
    "mul",
    "div",
    // unary.rs
    "neg",
    "scale",
    "exp",
    "log",
    "tanh",
    "relu",
    "gelu",
    "sqrt",
    // reduce.rs (mean_last and mean_all are composed: a sum, then scale)
    "sum_last",
    "mean_last",
    "sum_all",
    "mean_all",
    "sum_rows",
    // tensor.rs
    "reshape",
    // shape.rs, dropout.rs
    "transpose",
    "concat",
    "slice",
    "dropout",
    // matmul.rs
    "matmul",
    "matmul_t",
    "linear",
    // lm_head.rs (x·Wᵀ over vocabulary windows when W or the logits exceed one binding)
    "lm_head",
    // lm_head_loss.rs (the LM head fused with cross-entropy, chunked over the vocabulary)
    "lm_head_loss",
    // linear_4bit.rs (a frozen 4-bit weight: the gradient is for x only)
    "linear_4bit",
    // linear_int8.rs (a frozen int8 rowwise weight: the gradient is for x only)
    "linear_int8",
    // linear_f16.rs (a frozen f16 weight, computed in f32: the gradient is for x only)
    "linear_f16",
    // lora_linear.rs (LoRA's term in the base matmul's epilogue)
    "lora_linear",
    // softmax.rs, layernorm.rs, embedding.rs, cross_entropy.rs
    "softmax",
    "log_softmax",
    "expand_last",
    "layernorm",
    "embedding",
    "cross_entropy",
    // scatter.rs (a sparse update of a dense tensor; its gradient for the values is a gather)
    "scatter_add",
    "bias_gelu",
    // attention.rs, attention_composed.rs, permute.rs
    "attention",
    "masked_softmax",
    "permute",
    // autograd.rs: a recomputed segment (gradient checkpointing)
    "checkpoint",
];

/// Output tensor for an elementwise-style op: f32, `shape`, counted as activations.
pub(crate) fn output(gpu: &std::rc::Rc<Gpu>, shape: &[usize], op: &'static str) -> Result<Tensor> {
    Tensor::empty(gpu, shape, DType::F32, Category::Activations, op)
}

/// One dispatch of a 256-wide elementwise kernel over `n` threads.
pub(crate) fn launch_1d<P: bytemuck::Pod>(
    kernel: &'static Kernel,
    params: &P,
    reads: &[&Tensor],
    writes: &[&Tensor],
    n: usize,
) -> Result<()> {
    let gpu = writes[0].gpu();
    let r: Vec<_> = reads.iter().map(|t| t.storage()).collect();
    let w: Vec<_> = writes.iter().map(|t| t.storage()).collect();
    gpu.dispatch(kernel, params, &r, &w, grid_1d(n, 256))
}

/// Vec4s per invocation of the `*4` kernels (`V` in their shaders).
pub(crate) const VEC4_PER_THREAD: usize = 4;

/// One dispatch of a 256-wide vec4 kernel over `n4` vec4s, `VEC4_PER_THREAD` per invocation.
pub(crate) fn launch_vec4<P: bytemuck::Pod>(
    kernel: &'static Kernel,
    params: &P,
    reads: &[&Tensor],
    writes: &[&Tensor],
    n4: usize,
) -> Result<()> {
    launch_1d(kernel, params, reads, writes, n4.div_ceil(VEC4_PER_THREAD))
}
