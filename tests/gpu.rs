//! Every test that needs a GPU adapter, in one binary (each test binary links wgpu on its own).
//! With no adapter these tests fail and say what to install; they never skip.

mod gpu {
    pub mod harness;
}
#[path = "gpu/adalora.rs"]
mod adalora;
#[path = "gpu/attention.rs"]
mod attention;
#[path = "gpu/autograd.rs"]
mod autograd;
#[path = "gpu/base_f16.rs"]
mod base_f16;
#[path = "gpu/big.rs"]
mod big;
#[path = "gpu/big_optim.rs"]
mod big_optim;
#[path = "gpu/bitfit.rs"]
mod bitfit;
#[path = "gpu/bottleneck.rs"]
mod bottleneck;
#[path = "gpu/checkpoint_files.rs"]
mod checkpoint_files;
#[path = "gpu/checkpointing.rs"]
mod checkpointing;
#[path = "gpu/class_loss.rs"]
mod class_loss;
#[path = "gpu/cli.rs"]
mod cli;
#[path = "gpu/cli_adapters.rs"]
mod cli_adapters;
#[path = "gpu/dora.rs"]
mod dora;
#[path = "gpu/finetune.rs"]
mod finetune;
#[path = "gpu/fold.rs"]
mod fold;
#[path = "gpu/gpt2.rs"]
mod gpt2;
#[path = "gpu/gpt2_small.rs"]
mod gpt2_small;
#[path = "gpu/ia3.rs"]
mod ia3;
#[path = "gpu/int8_kernels.rs"]
mod int8_kernels;
#[path = "gpu/layers.rs"]
mod layers;
#[path = "gpu/lora.rs"]
mod lora;
#[path = "gpu/lora_linear.rs"]
mod lora_linear;
#[path = "gpu/matmul.rs"]
mod matmul;
#[path = "gpu/multi.rs"]
mod multi;
#[path = "gpu/ops.rs"]
mod ops;
#[path = "gpu/optim.rs"]
mod optim;
#[path = "gpu/optim_groups.rs"]
mod optim_groups;
#[path = "gpu/optim_multi_tensor.rs"]
mod optim_multi_tensor;
#[path = "gpu/parallel_adapter.rs"]
mod parallel_adapter;
#[path = "gpu/peft_support.rs"]
mod peft_support;
#[path = "gpu/prefix_tuning.rs"]
mod prefix_tuning;
#[path = "gpu/prompt_tuning.rs"]
mod prompt_tuning;
#[path = "gpu/qlora.rs"]
mod qlora;
#[path = "gpu/qlora_cli.rs"]
mod qlora_cli;
#[path = "gpu/quant.rs"]
mod quant;
#[path = "gpu/quant_kernels.rs"]
mod quant_kernels;
#[path = "gpu/quantize_cli.rs"]
mod quantize_cli;
#[path = "gpu/reliability.rs"]
mod reliability;
#[path = "gpu/runtime.rs"]
mod runtime;
#[path = "gpu/scatter.rs"]
mod scatter;
#[path = "gpu/shape.rs"]
mod shape;
#[path = "gpu/sparse_mask.rs"]
mod sparse_mask;
#[path = "support/temp_dir.rs"]
mod temp_dir;
#[path = "gpu/train.rs"]
mod train;
#[path = "gpu/transformer.rs"]
mod transformer;
#[path = "gpu/variants.rs"]
mod variants;
#[path = "gpu/vera.rs"]
mod vera;
