//! The GPT-2 model: its configuration, its files, and (in gpt2.rs) its forward pass.

pub mod config;
pub mod input_adapter;
pub mod layers;
pub mod quantized;
pub mod size;
pub mod weights;

pub use config::Gpt2Config;
pub use weights::{Gpt2Weights, Param, parameter_shapes};
pub mod generate;
pub mod gpt2;
