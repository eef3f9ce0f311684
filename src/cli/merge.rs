//! `glassgrad merge --model DIR --adapter DIR --out DIR [--overwrite]`: folds a PEFT LoRA adapter
//! into its base (W += scaling·(B·A)ᵀ for GPT-2's Conv1D weights, PEFT's `merge_and_unload`)
//! and writes a plain transformers GPT-2 directory — config.json, model.safetensors (no adapter
//! keys) and the base's tokenizer.json when it has one — saved as one unit (a manifest last, as
//! training checkpoints are). Its logits equal the adapter's within f32 rounding, and inference
//! on it costs exactly what the base costs.

use std::path::PathBuf;

use clap::Args;
use glassgrad::io::write_atomic;
use glassgrad::model::Gpt2Weights;
use glassgrad::model::gpt2::Gpt2;
use glassgrad::train::manifest;
use glassgrad::{Error, Gpu, Result};

#[derive(Args)]
pub struct MergeArgs {
    /// Base model directory (config.json + model.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    adapter: PathBuf,
    /// Output model directory.
    #[arg(long)]
    out: PathBuf,
    /// Replace a model already in --out.
    #[arg(long)]
    overwrite: bool,
}

pub fn run(args: MergeArgs) -> Result<()> {
    if args.out == args.model {
        return Err(Error::Input(format!(
            "merge: --out {} is the base model's directory; write the merged model elsewhere",
            args.out.display()
        )));
    }
    if args.out.exists() && !args.out.is_dir() {
        return Err(Error::Input(format!(
            "merge: --out {} is not a directory",
            args.out.display()
        )));
    }
    if manifest::holds_model(&args.out) && !args.overwrite {
        return Err(Error::Input(format!(
            "{} already holds a model; pass --overwrite to replace it, or choose another --out",
            args.out.display()
        )));
    }
    manifest::open(&args.model)?; // finish or refuse an interrupted save before reading
    let gpu = Gpu::new()?;
    let weights = Gpt2Weights::load(&args.model)?;
    let mut model = Gpt2::from_weights(&gpu, &weights)?;
    drop(weights);
    let adapter = glassgrad::peft::files::load(&mut model, &args.adapter)?;
    let layers = adapter.merge_and_unload(&mut model)?;
    let merged = model.to_weights()?;
    let tokenizer_path = args.model.join("tokenizer.json");
    let tokenizer = if tokenizer_path.is_file() {
        let bytes = std::fs::read(&tokenizer_path)
            .map_err(|e| Error::Input(format!("cannot read {}: {e}", tokenizer_path.display())))?;
        Some(bytes)
    } else {
        None
    };
    manifest::save_unit(&args.out, 0, |dir| {
        merged.save(dir)?;
        match &tokenizer {
            Some(bytes) => write_atomic(&dir.join("tokenizer.json"), bytes),
            None => Ok(()),
        }
    })?;
    println!(
        "merged {} ({layers} adapted layers) into {} -> {}",
        args.adapter.display(),
        args.model.display(),
        args.out.display()
    );
    Ok(())
}
