//! 4-bit weights as bitsandbytes stores them: NF4 and FP4 blockwise quantization with optional
//! double quantization of the absmax ([`nf4`]), the constant tables ([`codes`]), and the saved
//! `Linear4bit` layout in a safetensors file ([`file`]), and LLM.int8's rowwise baseline ([`int8`]). All host-side; the GPU side is
//! `ops::dequant` (shaders/dequant.wgsl). docs/nf4.md explains the format and the math.

pub mod codes;
pub mod file;
pub mod int8;
pub mod nf4;

pub use file::{QuantizeOptions, dequantize_file, quantize_file, read_state, state_tensors};
pub use nf4::{
    Absmax, BLOCKSIZES, Format, Quantized4, bits_per_parameter, dequantize_4bit, quantize_4bit,
};
