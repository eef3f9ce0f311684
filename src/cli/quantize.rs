//! `glassgrad quantize --format nf4|fp4 [--blocksize 64] [--double-quant] [--gpt2] IN.safetensors OUT.safetensors`
//!
//! Without `--gpt2`, every 2-D f32 tensor `name` (taken as stored, row-major) becomes bitsandbytes' `Linear4bit`
//! state — `name` (u8 packed), `name.absmax`, `name.quant_map`, with `--double-quant` also
//! `name.nested_absmax` and `name.nested_quant_map`, and `name.quant_state.bitsandbytes__<format>`
//! (the JSON as u8 bytes); every other tensor is copied unchanged (src/quant/, docs/nf4.md).
//! With `--gpt2` the input is a GPT-2 checkpoint, quantized as transformers + bitsandbytes do
//! (`quant::file::quantize_gpt2_file`): only the projection weights (c_attn, attn.c_proj, c_fc,
//! mlp.c_proj), each transposed from Conv1D [in, out] to nn.Linear's [out, in] first; embeddings,
//! LayerNorms and biases stay f32; keys under GPT2LMHeadModel names. A model directory holding
//! the output (with the model's config.json) loads as a quantized base, without re-quantizing.

use std::path::PathBuf;

use clap::Args;
use glassgrad::io::{TensorFile, check_regular_file, write_safetensors};
use glassgrad::quant::file::{QuantizeOptions, quantize_file, quantize_gpt2_file};
use glassgrad::quant::nf4::Format;
use glassgrad::{Error, Result};

#[derive(Args)]
pub struct QuantizeArgs {
    /// The 4-bit code: nf4 (normal-float, QLoRA's) or fp4.
    #[arg(long, value_parser = ["nf4", "fp4"])]
    format: String,
    /// Elements per absmax block: 32, 64, 128, 256, 512, 1024, 2048 or 4096 (bitsandbytes' set).
    #[arg(long, default_value_t = 64, value_parser = blocksize)]
    blocksize: usize,
    /// Quantize the absmax values too (8 bits in blocks of 256, QLoRA's double quantization).
    #[arg(long)]
    double_quant: bool,
    /// The input is a GPT-2 checkpoint: quantize only the attention/MLP projection weights,
    /// transposed to nn.Linear's [out, in] as bitsandbytes does (the output loads as a QLoRA
    /// base); embeddings, LayerNorms and biases stay f32.
    #[arg(long)]
    gpt2: bool,
    /// Input safetensors file.
    input: PathBuf,
    /// Output safetensors file (a regular file; replaced atomically).
    output: PathBuf,
}

fn blocksize(s: &str) -> std::result::Result<usize, String> {
    let allowed = [32, 64, 128, 256, 512, 1024, 2048, 4096];
    match s.parse::<usize>() {
        Ok(n) if allowed.contains(&n) => Ok(n),
        _ => Err(format!("{s} is not a blocksize bitsandbytes accepts ({allowed:?})")),
    }
}

pub fn run(args: QuantizeArgs) -> Result<()> {
    check_regular_file(&args.output)?;
    if args.input == args.output {
        return Err(Error::Input(format!(
            "quantize: {} is both the input and the output; write to another file",
            args.input.display()
        )));
    }
    let file = TensorFile::read(&args.input)?;
    let opts = QuantizeOptions {
        format: Format::parse(&args.format)?,
        blocksize: args.blocksize,
        double_quant: args.double_quant,
    };
    let out = if args.gpt2 {
        quantize_gpt2_file(&file.tensors, opts)
    } else {
        quantize_file(&file.tensors, opts)
    }
    .map_err(|e| Error::Input(format!("{}: {e}", args.input.display())))?;
    let state = format!(".{}", glassgrad::quant::file::state_key(opts.format));
    let quantized = out.keys().filter(|k| k.ends_with(&state)).count();
    write_safetensors(&args.output, out.iter().map(|(k, v)| (k.as_str(), v)))?;
    println!(
        "{}: {quantized} tensors quantized to {} (blocksize {}{}{}), {} copied -> {}",
        args.input.display(),
        args.format,
        args.blocksize,
        if args.double_quant { ", double quant" } else { "" },
        if args.gpt2 { ", GPT-2 projections as nn.Linear [out, in]" } else { "" },
        file.tensors.len() - quantized,
        args.output.display()
    );
    Ok(())
}
