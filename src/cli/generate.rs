//! `glassgrad generate --model DIR [--adapter DIR [--adapter-name NAME] …] [--adapter-per-row a,b,…]
//! [--prompt TEXT] [--max-new-tokens N] [--temperature T] [--top-k K]`
//! With --adapter-per-row each name gets its own sample of the prompt (row i with adapter i, as a
//! batch with PEFT's adapter_names would; here the rows are sampled one after another, each
//! after a line `[NAME]`), all with the same seed.

use std::path::PathBuf;

use clap::Args;
use std::io::Write;

use glassgrad::model::generate::{SampleOptions, generate_streaming};
use glassgrad::model::gpt2::Gpt2;
use glassgrad::model::{Gpt2Config, size};
use glassgrad::tokenizer::Tokenizer;
use glassgrad::train::manifest;
use glassgrad::{Error, Gpu, Result};

use crate::cli::adapters::{AdapterArgs, Loaded};
use crate::cli::validate;

#[derive(Args)]
pub struct GenerateArgs {
    /// Model directory (config.json, model.safetensors, tokenizer.json for char models).
    #[arg(long)]
    model: PathBuf,
    /// Adapters to sample with (dropout off, as in inference): --adapter DIR, repeatable, with
    /// --adapter-name; the first is active, or --adapter-per-row gives one sample per name.
    #[command(flatten)]
    adapters: AdapterArgs,
    #[arg(long, default_value = "\n")]
    prompt: String,
    /// Tokens to sample, 1..=1e6; printed as they come.
    #[arg(long, default_value = "200", value_parser = validate::max_new_tokens, allow_hyphen_values = true)]
    max_new_tokens: usize,
    /// Softmax temperature, [0, 100]; 0 = greedy (always the most likely token).
    #[arg(long, default_value = "0.8", value_parser = validate::temperature, allow_hyphen_values = true)]
    temperature: f32,
    /// Sample only among the k most likely tokens, 0..=1e6; 0 = no limit (every token).
    #[arg(long, default_value = "40", value_parser = validate::top_k, allow_hyphen_values = true)]
    top_k: usize,
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Hold c_attn, attn.c_proj, c_fc and mlp.c_proj frozen in f16 (computed in f32; half their
    /// memory; the samples can differ from f32's where two tokens are nearly tied).
    #[arg(long, value_parser = ["f32", "f16"], default_value = "f32")]
    base_dtype: String,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    args.adapters.named()?; // the adapter options agree with each other, before any work
    manifest::open(&args.model)?; // finish or refuse an interrupted save before reading
    let config = Gpt2Config::read(args.model.join("config.json"))?;
    let gpu = Gpu::new()?;
    let source = args.model.display().to_string();
    size::check_model(&gpu, &config, 1, config.n_positions, 2, &source)?;
    let tokenizer = Tokenizer::load(&args.model, config.vocab_size)?;
    // A directory holding Linear4bit state (a QLoRA base) loads as it is.
    let mut model = glassgrad::model::quantized::load_model(&gpu, &args.model)?;
    if args.base_dtype == "f16" {
        if let Some(held) = model.quantization() {
            return Err(Error::Input(format!(
                "--base-dtype f16: {source} already holds a {} base; drop --base-dtype",
                held.describe()
            )));
        }
        model.base_to_f16()?;
    }
    let loaded = args.adapters.load(&mut model, None)?;
    loaded.eval();
    let rows: Vec<Option<&str>> = match &args.adapters.adapter_per_row {
        Some(rows) => rows.iter().map(|r| Some(r.as_str())).collect(),
        None => vec![None],
    };
    for row in rows {
        if let (Some(name), Loaded::Set(set)) = (row, &loaded) {
            set.set_adapter(name)?;
            println!("[{name}]");
        }
        sample(&args, &model, &tokenizer)?;
    }
    Ok(())
}

/// Samples one continuation of the prompt and prints it as it comes.
fn sample(args: &GenerateArgs, model: &Gpt2, tokenizer: &Tokenizer) -> Result<()> {
    let prompt = tokenizer.encode(&args.prompt)?;
    let opts = SampleOptions {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        seed: args.seed,
    };
    let mut stdout = std::io::stdout();
    let write = |out: &mut std::io::Stdout, text: &str| -> Result<()> {
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| Error::Input(format!("cannot write to stdout: {e}")))
    };
    write(&mut stdout, &args.prompt)?;
    // Tokens are printed as they come; a BPE token can end inside a UTF-8 character, so tokens
    // wait (at most 8) until they decode to whole characters.
    let mut pending: Vec<u32> = vec![];
    generate_streaming(model, &prompt, &opts, |token| {
        pending.push(token);
        let text = tokenizer.decode(&pending)?;
        if !text.ends_with('\u{FFFD}') || pending.len() >= 8 {
            pending.clear();
            write(&mut stdout, &text)?;
        }
        Ok(())
    })?;
    let rest = tokenizer.decode(&pending)?;
    write(&mut stdout, &(rest + "\n"))
}
