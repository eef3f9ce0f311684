//! The guided tour (`cargo run --release`): train a tiny char-level GPT on the bundled Shakespeare,
//! show samples before and after, save the model and its loss curve.

use clap::Args;
use glassgrad::model::generate::{SampleOptions, generate};
use glassgrad::{Gpu, Result};

use crate::cli::train::{TrainArgs, setup, summary_json, train_with_progress};

#[derive(Args, Clone, Debug)]
pub struct TourArgs {
    #[command(flatten)]
    train: TrainArgs,
    /// Stop after pretraining (skip the LoRA fine-tuning half).
    #[arg(long)]
    skip_finetune: bool,
    /// Steps of the LoRA fine-tuning half.
    #[arg(long, default_value = "300", value_parser = crate::cli::validate::steps, allow_hyphen_values = true)]
    finetune_steps: usize,
}

/// The flags' own defaults (`cargo run --release` with no command): a derived `Default` would
/// give 0 fine-tuning steps, not the 300 that `--finetune-steps` defaults to.
impl Default for TourArgs {
    fn default() -> Self {
        super::flag_defaults(&[])
    }
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
    if args.skip_finetune {
        return Ok(());
    }
    drop(s);
    finetune_half(&gpu, &summary.out, args.finetune_steps)
}

/// The second half: LoRA on the pretrained model, for the sentiment task.
fn finetune_half(gpu: &std::rc::Rc<Gpu>, base: &std::path::Path, steps: usize) -> Result<()> {
    use crate::cli::finetune::{FinetuneArgs, SHOWN, TaskData, finetune};
    use glassgrad::train::tasks;
    let out = base.with_file_name(format!(
        "{}-lora",
        base.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
    ));
    let args = FinetuneArgs {
        model: base.to_path_buf(),
        out: Some(out),
        steps,
        eval_every: (steps / 3).max(1),
        ..tour_finetune_args()
    };
    println!(
        "\n4. Fine-tuning it with LoRA (r = {}, alpha = {}, on {}) to answer `<movie-review sentence> :: positive|negative`.",
        args.r.unwrap_or(8),
        args.lora_alpha.unwrap_or(8.0),
        args.target_modules.as_deref().unwrap_or("c_attn")
    );
    println!("   The base is frozen; only the adapter trains:");
    let session = finetune(gpu, &args, |line| println!("   {line}"))?;
    let (mut model, adapter, data, f) =
        (session.model, session.adapter, session.data, session.done);
    let tokenizer = session.tokenizer; // the base's, loaded once by `finetune`
    let TaskData::Sentiment { examples, .. } = &data else { unreachable!("the tour's task") };
    if let Some(m) = f.majority {
        println!("   (always answering the commoner label scores {:.1}%)", 100.0 * m);
    }
    println!("\nHeld-out sentences, the model's answer before -> after fine-tuning:");
    let shown: Vec<tasks::Example> = examples.test.iter().take(SHOWN).cloned().collect();
    let after = tasks::predict(&model, &shown, examples.positive, examples.negative)?;
    for ((e, a), b) in shown.iter().zip(&after).zip(&f.shown_before) {
        let text = tokenizer.decode(&e.prompt)?;
        let (b, a, truth) = (b.as_str(), a.as_str(), e.sentiment.as_str());
        println!("   {text:<56} {b} -> {a} (truth: {truth})");
    }
    // The merged model computes x·(W + s·(B·A)ᵀ) in one matmul: the same logits, no adapter.
    let ids: Vec<u32> = shown[0].prompt.clone();
    let logits = |m: &glassgrad::model::gpt2::Gpt2| -> Result<Vec<f32>> {
        let _g = glassgrad::autograd::no_grad();
        let t = glassgrad::Tensor::from_u32(gpu, &ids, &[1, ids.len()])?;
        m.forward(&t, &Default::default())?.logits.to_vec()
    };
    let with_adapter = logits(&model)?;
    let layers = adapter.expect("LoRA").merge_and_unload(&mut model)?;
    let merged = logits(&model)?;
    let scale = with_adapter.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = with_adapter.iter().zip(&merged).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    println!(
        "\n5. Merged the adapter into the {layers} layers' weights: logits differ from the adapter's by at most {diff:.2e} (largest logit {scale:.1}); the merged model costs what the base costs."
    );
    println!("   Adapter, log and loss curve saved to {}", f.summary.out.display());
    Ok(())
}

/// The tour's fine-tune: LoRA on every projection, sized to finish in about a minute.
fn tour_finetune_args() -> crate::cli::finetune::FinetuneArgs {
    crate::cli::finetune::FinetuneArgs {
        overwrite: true,
        lr: 3e-3,
        r: Some(16),
        lora_alpha: Some(32.0),
        target_modules: Some("c_attn,c_proj,c_fc".into()),
        ..crate::cli::finetune::defaults()
    }
}
