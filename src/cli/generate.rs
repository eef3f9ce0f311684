//! `glassgrad generate --model DIR [--prompt TEXT] [--max-new-tokens N] [--temperature T] [--top-k K]`

use std::path::PathBuf;

use clap::Args;
use glassgrad::model::Gpt2Weights;
use glassgrad::model::generate::{SampleOptions, generate};
use glassgrad::model::gpt2::Gpt2;
use glassgrad::tokenizer::Tokenizer;
use glassgrad::{Gpu, Result};

#[derive(Args)]
pub struct GenerateArgs {
    /// Model directory (config.json, model.safetensors, tokenizer.json for char models).
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value = "\n")]
    prompt: String,
    #[arg(long, default_value_t = 200)]
    max_new_tokens: usize,
    /// Softmax temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    #[arg(long, default_value_t = 1337)]
    seed: u64,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let weights = Gpt2Weights::load(&args.model)?;
    let tokenizer = Tokenizer::load(&args.model, weights.config.vocab_size)?;
    let gpu = Gpu::new()?;
    let model = Gpt2::from_weights(&gpu, &weights)?;
    let prompt = tokenizer.encode(&args.prompt)?;
    let opts = SampleOptions {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        seed: args.seed,
    };
    let new = generate(&model, &prompt, &opts)?;
    println!("{}{}", args.prompt, tokenizer.decode(&new)?);
    Ok(())
}
