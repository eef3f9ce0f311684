//! `glassgrad merge --model DIR --adapter DIR [--adapter DIR … --weights w,… --combination
//! linear|cat|svd [--svd-rank R]] --out DIR [--overwrite]`: folds a PEFT LoRA adapter
//! into its base (W += scaling·(B·A)ᵀ for GPT-2's Conv1D weights, PEFT's `merge_and_unload`)
//! and writes a plain transformers GPT-2 directory — config.json, model.safetensors (no adapter
//! keys) and the base's tokenizer.json when it has one — saved as one unit (a manifest last, as
//! training checkpoints are). Its logits equal the adapter's within f32 rounding, and inference
//! on it costs exactly what the base costs.
//! Several adapters (or one with --weights) are first combined into one LoRA as PEFT's
//! `add_weighted_adapter` does (src/peft/combine.rs), and that one is merged. Every check —
//! weights that do not match the adapters, `linear` with unequal ranks, an adapter that does not
//! fit the base — happens before anything is written.

use std::path::PathBuf;

use clap::Args;
use glassgrad::io::write_atomic;
use glassgrad::model::quantized::{self, QuantizeSpec};
use glassgrad::peft::combine::{Combination, add_weighted_adapter};
use glassgrad::train::manifest;
use glassgrad::{Error, Gpu, Result};

#[derive(Args)]
pub struct MergeArgs {
    /// Base model directory (config.json + model.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// PEFT adapter directory (adapter_config.json + adapter_model.safetensors). Repeatable:
    /// several LoRA adapters are combined (--weights, --combination) and the result merged.
    #[arg(long, required = true)]
    adapter: Vec<PathBuf>,
    /// One weight per --adapter, comma-separated (PEFT's add_weighted_adapter weights).
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    weights: Option<Vec<f64>>,
    /// How several adapters are combined: linear (equal ranks; an approximation), cat (exact,
    /// rank Σ r) or svd (Σ w·ΔW truncated to --svd-rank).
    #[arg(long, value_parser = ["linear", "cat", "svd"])]
    combination: Option<String>,
    /// The combined rank for --combination svd (default: the largest rank of the adapters).
    #[arg(long)]
    svd_rank: Option<usize>,
    /// The adapter was trained on a quantized base (`finetune --quantize`): quantize the base
    /// the same way, then dequantize it and merge into those values. A base directory holding
    /// Linear4bit state is detected and dequantized without this flag.
    #[arg(long, value_parser = ["nf4", "fp4", "int8"])]
    quantize: Option<String>,
    /// The adapter was trained on an f16 base (`finetune --base-dtype f16`): round the base's
    /// projection weights to f16 the same way, and merge into those values (written in f32).
    #[arg(long, value_parser = ["f32", "f16"], default_value = "f32")]
    base_dtype: String,
    /// With --quantize nf4|fp4: the base was double-quantized.
    #[arg(long)]
    double_quant: bool,
    /// With --quantize nf4|fp4: its absmax blocksize.
    #[arg(long, default_value_t = 64)]
    blocksize: usize,
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
    if args.svd_rank.is_some() && args.combination.as_deref() != Some("svd") {
        return Err(Error::Input("merge: --svd-rank is for --combination svd only".into()));
    }
    manifest::open(&args.model)?; // finish or refuse an interrupted save before reading
    let spec = match &args.quantize {
        Some(kind) => Some(QuantizeSpec::parse(kind, args.blocksize, args.double_quant)?),
        None if args.double_quant || args.blocksize != 64 => {
            return Err(Error::Input(
                "merge: --double-quant and --blocksize need --quantize".into(),
            ));
        }
        None => None,
    };
    let spec = quantized::base_spec(spec, &args.base_dtype)?;
    let gpu = Gpu::new()?;
    let mut model = quantized::load_model(&gpu, &args.model)?; // Linear4bit state as it is
    match (spec, model.quantization()) {
        (Some(spec), None) => model.quantize_base(spec)?,
        (Some(spec), Some(held)) if spec != held => {
            return Err(Error::Input(format!(
                "merge: {} but {} already holds a {} base",
                match spec {
                    QuantizeSpec::F16 => "--base-dtype f16".to_string(),
                    _ => format!("--quantize {}", spec.describe()),
                },
                args.model.display(),
                held.describe()
            )));
        }
        _ => {}
    }
    // A quantized base is merged as PEFT merges into Linear4bit: dequantize, then add ΔW.
    let dequantized = model.dequantize_base()?;
    let adapter: Box<dyn glassgrad::peft::Adapter> = match (&args.weights, &args.combination) {
        (None, None) if args.adapter.len() == 1 => {
            glassgrad::peft::files::load(&mut model, &args.adapter[0])?
        }
        (Some(weights), combination) => {
            let combination = match (combination, args.adapter.len()) {
                (Some(c), _) => Combination::parse(c)?,
                (None, 1) => Combination::Linear, // PEFT: one adapter is combined linearly
                (None, _) => {
                    return Err(Error::Input(
                        "merge: several adapters need --combination linear|cat|svd".into(),
                    ));
                }
            };
            let dirs: Vec<&std::path::Path> = args.adapter.iter().map(|p| p.as_path()).collect();
            Box::new(add_weighted_adapter(&mut model, &dirs, weights, combination, args.svd_rank)?)
        }
        (None, _) => {
            return Err(Error::Input(format!(
                "merge: {} adapters need --weights (one per adapter, e.g. --weights 0.5,0.5) and                  --combination linear|cat|svd",
                args.adapter.len()
            )));
        }
    };
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
    let sources: Vec<String> = args.adapter.iter().map(|p| p.display().to_string()).collect();
    if dequantized == Some(QuantizeSpec::F16) {
        println!(
            "the base is held in f16: rounded c_attn, attn.c_proj, c_fc, mlp.c_proj to f16 as the \
             fine-tune did, merged the adapter into those values, and wrote the merged model in f32"
        );
    } else if let Some(spec) = dequantized {
        println!(
            "the base is quantized ({}): dequantized c_attn, attn.c_proj, c_fc, mlp.c_proj to f32, \
             merged the adapter into those values, and wrote the merged model in f32",
            spec.describe()
        );
    }
    println!(
        "merged {} ({layers} adapted layers) into {} -> {}",
        sources.join(" + "),
        args.model.display(),
        args.out.display()
    );
    Ok(())
}
