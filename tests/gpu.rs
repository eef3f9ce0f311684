//! Every test that needs a GPU adapter, in one binary (each test binary links wgpu on its own).
//! With no adapter these tests fail and say what to install; they never skip.

mod gpu {
    pub mod harness;
}
#[path = "gpu/attention.rs"]
mod attention;
#[path = "gpu/autograd.rs"]
mod autograd;
#[path = "gpu/checkpoint_files.rs"]
mod checkpoint_files;
#[path = "gpu/checkpointing.rs"]
mod checkpointing;
#[path = "gpu/cli.rs"]
mod cli;
#[path = "gpu/fold.rs"]
mod fold;
#[path = "gpu/gpt2.rs"]
mod gpt2;
#[path = "gpu/layers.rs"]
mod layers;
#[path = "gpu/lora.rs"]
mod lora;
#[path = "gpu/lora_linear.rs"]
mod lora_linear;
#[path = "gpu/matmul.rs"]
mod matmul;
#[path = "gpu/ops.rs"]
mod ops;
#[path = "gpu/optim.rs"]
mod optim;
#[path = "gpu/optim_groups.rs"]
mod optim_groups;
#[path = "gpu/optim_multi_tensor.rs"]
mod optim_multi_tensor;
#[path = "gpu/quant.rs"]
mod quant;
#[path = "gpu/reliability.rs"]
mod reliability;
#[path = "gpu/runtime.rs"]
mod runtime;
#[path = "gpu/shape.rs"]
mod shape;
#[path = "support/temp_dir.rs"]
mod temp_dir;
#[path = "gpu/train.rs"]
mod train;
#[path = "gpu/transformer.rs"]
mod transformer;
