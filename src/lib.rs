//! glassgrad: a tensor autodiff engine whose kernels are WGSL compute shaders run through wgpu.
//!
//! Map of the crate:
//! - [`gpu`]: the device handle, the buffer pool with memory accounting, and the one dispatch helper.
//! - [`tensor`]: the `Tensor` type (shape + GPU storage + autodiff node).
//! - [`autograd`]: `backward()`, `no_grad`, how gradients are accumulated.
//! - [`ops`]: every op, forward and backward side by side, each with its WGSL file in `shaders/`.
//! - [`cpu`]: the plain f64 reference array the tests compare against.
//! - [`io`]: safetensors and token files; [`model`]: GPT-2's config.json and weights;
//!   [`tokenizer`]: char-level and GPT-2 BPE; [`data`]: the bundled texts and batch sampling;
//!   [`train`]: learning-rate schedule, training log, checkpoint files.
//! - [`peft`]: LoRA on a frozen base, PEFT's adapter files both ways, merge and unmerge.
//! - [`quant`]: NF4/FP4 4-bit weights as bitsandbytes stores them.

pub mod autograd;
pub mod bench;
pub mod cpu;
pub mod data;
pub mod error;
pub mod gpu;
pub mod io;
pub mod model;
pub mod ops;
pub mod optim;
pub mod peft;
pub mod quant;
pub mod tensor;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};
pub use gpu::{Category, Gpu};
pub use tensor::{DType, Tensor};
