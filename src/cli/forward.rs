//! `glassgrad forward`: one forward (and with --grads one backward) pass, written to safetensors:
//! `logits` (B, T, V; not with --no-logits, which takes the fused head + loss instead),
//! `loss` (shape []), and `grad.<name>` for every trainable parameter.
//! Loss as transformers computes it: logits[:, :-1] predict labels[:, 1:], -100 ignored.
//! `--quantize nf4|fp4` holds the projections in 4 bits (QLoRA's base, model/quantized.rs); a
//! model directory holding bitsandbytes' Linear4bit state is used as it is. `--base-dtype f16`
//! holds them in f16 instead (half the memory, computed in f32).

use std::path::PathBuf;

use clap::Args;
use glassgrad::io::{NamedTensor, TokenFile, write_safetensors};
use glassgrad::model::gpt2::{ForwardOptions, Gpt2};
use glassgrad::model::quantized::{self, QuantizeSpec};
use glassgrad::model::{Gpt2Config, size};
use glassgrad::train::manifest;
use glassgrad::{Error, Gpu, Result, Tensor};

use crate::cli::adapters::AdapterArgs;
use crate::cli::train::{extend_json, memory_json};

#[derive(Args)]
pub struct ForwardArgs {
    /// Model directory (config.json + model.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Adapters (--adapter DIR, repeatable, with --adapter-name and --adapter-per-row); with
    /// --grads only the adapters' gradients are written: one adapter's under its keys in
    /// adapter_model.safetensors (grad.base_model.model.…lora_A.weight, …), several adapters'
    /// under PEFT's model names (grad.base_model.model.…lora_A.<name>.weight), those in use only.
    #[command(flatten)]
    adapters: AdapterArgs,
    /// Hold c_attn, attn.c_proj, c_fc and mlp.c_proj in 4 bits (bitsandbytes' nf4 or fp4), in
    /// nn.Linear layout [out, in], and compute with the dequantized values (QLoRA's base).
    #[arg(long, value_parser = ["nf4", "fp4"])]
    quantize: Option<String>,
    /// Hold c_attn, attn.c_proj, c_fc and mlp.c_proj frozen in f16 (computed in f32; half
    /// their memory). Not with --quantize.
    #[arg(long, value_parser = ["f32", "f16"], default_value = "f32")]
    base_dtype: String,
    /// With --quantize: quantize the absmax constants too (8 bits, blocks of 256).
    #[arg(long)]
    double_quant: bool,
    /// With --quantize: elements per absmax block (32, 64, …, 4096).
    #[arg(long, default_value_t = 64)]
    blocksize: usize,
    /// Gradient checkpointing for --grads: keep only every K-th block's input, recompute in
    /// backward (K = 1..=1000; `--checkpointing` alone means 1). The same gradients.
    #[arg(long, value_name = "K", num_args = 0..=1, default_missing_value = "1",
          value_parser = crate::cli::validate::checkpointing)]
    checkpointing: Option<usize>,
    /// Token file: safetensors with input_ids (i64 [B, T]) and optional labels.
    #[arg(long)]
    tokens: PathBuf,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
    /// Also run backward and write grad.<name> for every trainable parameter.
    #[arg(long)]
    grads: bool,
    /// Write no `logits`: the loss (and gradients) then come from the fused LM head +
    /// cross-entropy, so the (B, T, V) logits are never built (GPT-2 small at B4 T256: 206 MB).
    #[arg(long)]
    no_logits: bool,
    /// Print a JSON summary as the last line.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ForwardArgs) -> Result<()> {
    let spec = match &args.quantize {
        Some(kind) => Some(QuantizeSpec::parse(kind, args.blocksize, args.double_quant)?),
        None if args.double_quant || args.blocksize != 64 => {
            return Err(Error::Input(
                "--double-quant and --blocksize need --quantize nf4|fp4".into(),
            ));
        }
        None => None,
    };
    let spec = quantized::base_spec(spec, &args.base_dtype)?;
    glassgrad::io::check_regular_file(&args.out)?; // before any work: --out /dev/stdout etc.
    manifest::open(&args.model)?; // finish or refuse an interrupted save before reading
    let tokens = TokenFile::read(&args.tokens)?;
    let config = Gpt2Config::read(args.model.join("config.json"))?;
    let tokens_path = args.tokens.display();
    tokens
        .check_vocab(config.vocab_size)
        .map_err(|e| Error::Input(format!("{tokens_path}: {e}")))?;
    if tokens.count_targets() == 0 {
        return Err(Error::Input(format!(
            "{tokens_path}: there are no targets: the loss is a mean over labels[:, 1:] that are \
             not -100, and there are none (T = {} and {} labels are -100); give T ≥ 2 or real labels",
            tokens.seq_len,
            tokens.labels.iter().filter(|&&l| l == glassgrad::io::IGNORE_INDEX).count()
        )));
    }
    let (b, t) = (tokens.batch, tokens.seq_len);
    args.adapters.named()?; // the adapter options agree with each other, before any work
    let rows = args.adapters.rows(b).map_err(|e| Error::Input(format!("{tokens_path}: {e}")))?;
    let gpu = Gpu::new()?;
    size::check_model(
        &gpu,
        &config,
        b,
        t,
        if args.grads { 3 } else { 2 },
        &tokens_path.to_string(),
    )?;
    // A directory holding Linear4bit state loads as it is (no re-quantization).
    let mut model = quantized::load_model(&gpu, &args.model)?;
    if let Some(spec) = spec {
        if let Some(held) = model.quantization() {
            let flag = quantized::flag_of(spec);
            return Err(Error::Input(format!(
                "{flag}: {} already holds a {} base; drop {flag}",
                args.model.display(),
                held.describe()
            )));
        }
        model.quantize_base(spec)?;
    }
    let loaded = args.adapters.load(&mut model, rows.as_deref())?;
    model.check_ids(&tokens.input_ids, &[b, t], 0)?;
    gpu.reset_peaks();
    let ids = Tensor::from_u32(&gpu, &tokens.input_ids, &[b, t])?; // (B, T)
    let targets = Tensor::from_u32(&gpu, &tokens.shifted_targets(), &[b, t])?; // (B, T)
    let opts = ForwardOptions { checkpoint_every: args.checkpointing, ..Default::default() };
    let (loss, logits) = if args.no_logits {
        (model.forward_loss(&ids, &targets, &opts)?, None) // (1); logits never built
    } else {
        let logits = model.forward(&ids, &opts)?.logits; // (B, T, V)
        (Gpt2::loss(&logits, &targets)?, Some(logits))
    };
    if args.grads {
        loss.backward()?;
    }
    let v = model.config.vocab_size;
    let mut tensors: Vec<(String, NamedTensor)> = vec![];
    if let Some(logits) = &logits {
        tensors.push(("logits".into(), NamedTensor::from_f32(&[b, t, v], &logits.to_vec()?)));
    }
    tensors.push(("loss".into(), NamedTensor::from_f32(&[], &loss.to_vec()?)));
    let params = model.named_parameters();
    // With adapters: their parameters only, under their adapter-file keys (interfaces.md).
    let written = loaded.named_parameters(&model).unwrap_or_else(|| params.clone());
    if args.grads {
        for (name, p) in &written {
            let g = p
                .grad()
                .ok_or_else(|| Error::Autograd(format!("parameter {name} received no gradient")))?;
            tensors.push((format!("grad.{name}"), NamedTensor::from_f32(p.shape(), &g.to_vec()?)));
        }
    }
    write_safetensors(&args.out, tensors.iter().map(|(k, v)| (k.as_str(), v)))?;
    let trainable: usize =
        params.iter().filter(|(_, p)| p.requires_grad()).map(|(_, p)| p.numel()).sum();
    let all = model.num_parameters(); // a quantized weight counted as PEFT counts it
    let loss_value = loss.item()?;
    if args.json {
        let summary = serde_json::json!({
            "loss": loss_value,
            "quantize": model.quantization().map(|s| s.describe()),
            "trainable_params": trainable,
            "all_params": all,
        });
        println!("{}", extend_json(summary, memory_json(&gpu)));
    } else {
        println!("loss {loss_value:.6}  ({b}×{t} tokens)  wrote {}", args.out.display());
        println!("trainable params: {trainable} || all params: {all}");
        print!("{}", gpu.memory_report());
    }
    Ok(())
}
