//! The guided tour (`cargo run --release`): train a tiny char-level GPT on the bundled Shakespeare,
//! show samples before and after, save the model and its loss curve.

use clap::Args;
use glassgrad::model::generate::{SampleOptions, generate};
use glassgrad::{Gpu, Result};

use crate::cli::train::{TrainArgs, setup, summary_json, train_with_progress};

#[derive(Args, Clone, Debug, Default)]
pub struct TourArgs {
    #[command(flatten)]
    train: TrainArgs,
}

fn sample(s: &crate::cli::train::Setup, seed: u64) -> Result<String> {
    let prompt = s.tokenizer.encode("ROMEO:")?;
    let opts = SampleOptions { max_new_tokens: 200, temperature: 0.8, top_k: 40, seed };
    Ok(format!("ROMEO:{}", s.tokenizer.decode(&generate(&s.model, &prompt, &opts)?)?))
}

pub fn run(args: TourArgs) -> Result<()> {
    let gpu = Gpu::new()?;
    println!("glassgrad guided tour\n=====================");
    println!("adapter: {}", gpu.describe());
    let mut train_args = args.train.clone();
    // A second `cargo run --release` must simply work: the tour replaces its own previous run
    // (the default directory) and says so; an explicit --out is treated as `train` treats it.
    if train_args.out.is_none() && !train_args.resume {
        let out = crate::cli::out_dir(&None, crate::cli::train::DEFAULT_OUT);
        if glassgrad::train::manifest::holds_model(&out) {
            println!("(replacing the tour's previous run in {})", out.display());
        }
        train_args.overwrite = true;
    }
    let mut s = setup(&train_args, &gpu)?;
    let c = &s.model.config;
    println!(
        "\n1. A tiny GPT-2 ({} layers, {} channels, {} heads, {} parameters) over {} characters of Shakespeare ({} distinct).",
        c.n_layer,
        c.n_embd,
        c.n_head,
        s.model.num_parameters(),
        s.data.train.len() + s.data.val.len(),
        c.vocab_size
    );
    println!("\nBefore training, it writes noise:\n---\n{}\n---", sample(&s, 7)?);
    println!(
        "\n2. Training {} steps of {}×{} characters (AdamW, warmup + cosine, clip 1.0):",
        s.options.steps, s.options.batch_size, s.options.seq_len
    );
    let summary = train_with_progress(&mut s)?;
    println!(
        "   {:.1} s, {:.0} tokens/s; train loss {:.3}, validation loss {:.3}",
        summary.seconds, summary.tokens_per_s, summary.train_loss, summary.val_loss
    );
    println!("\nAfter training:\n---\n{}\n---", sample(&s, 7)?);
    println!(
        "\n3. Saved the model (transformers layout), tokenizer.json, train_log.jsonl and loss.svg to {}",
        summary.out.display()
    );
    println!("\nGPU memory, by what it holds:\n{}", gpu.memory_report());
    println!("{}", summary_json(&summary));
    Ok(())
}
