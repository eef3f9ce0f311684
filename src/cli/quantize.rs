//! `glassgrad quantize --format nf4|fp4 [--blocksize 64] [--double-quant] IN.safetensors OUT.safetensors`
//!
//! Every 2-D f32 tensor `name` (taken as stored, row-major) becomes bitsandbytes' `Linear4bit`
//! state — `name` (u8 packed), `name.absmax`, `name.quant_map`, with `--double-quant` also
//! `name.nested_absmax` and `name.nested_quant_map`, and `name.quant_state.bitsandbytes__<format>`
//! (the JSON as u8 bytes); every other tensor is copied unchanged (src/quant/, docs/nf4.md).
//! NOTE: a GPT-2 Conv1D weight is stored [in, out]; bitsandbytes quantizes nn.Linear's [out, in],
//! so to match a bitsandbytes-quantized GPT-2 transpose first. This command quantizes as stored.

use std::path::PathBuf;

use clap::Args;
use glassgrad::io::{Dtype, TensorFile, check_regular_file, write_safetensors};
use glassgrad::quant::file::{QuantizeOptions, quantize_file};
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
    let out = quantize_file(&file.tensors, opts)
        .map_err(|e| Error::Input(format!("{}: {e}", args.input.display())))?;
    let quantized =
        file.tensors.values().filter(|t| t.shape.len() == 2 && t.dtype == Dtype::F32).count();
    write_safetensors(&args.output, out.iter().map(|(k, v)| (k.as_str(), v)))?;
    println!(
        "{}: {quantized} tensors quantized to {} (blocksize {}{}), {} copied -> {}",
        args.input.display(),
        args.format,
        args.blocksize,
        if args.double_quant { ", double quant" } else { "" },
        file.tensors.len() - quantized,
        args.output.display()
    );
    Ok(())
}
