//! `glassgrad train`: trains a GPT-2 from scratch (default: the tour's tiny char-level model on the
//! bundled Shakespeare) or continues one (`--resume`).

use std::path::PathBuf;

use clap::Args;
use glassgrad::data::{SHAKESPEARE, TokenDataset};
use glassgrad::model::gpt2::Gpt2;
use glassgrad::model::{Gpt2Config, Gpt2Weights};
use glassgrad::tokenizer::{CharTokenizer, Tokenizer};
use glassgrad::train::trainer::{TrainOptions, TrainSummary, train};
use glassgrad::{Error, Gpu, Result};
use indicatif::{ProgressBar, ProgressStyle};

/// The tour's model and schedule; `glassgrad train` with no options uses the same.
#[derive(Args, Clone, Debug)]
pub struct TrainArgs {
    /// Output directory (model, tokenizer, log, loss curve, optimizer state).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A UTF-8 text file to train on, char-level (default: the bundled Shakespeare).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Continue from the checkpoint in --out (model and optimizer state).
    #[arg(long)]
    pub resume: bool,
    #[arg(long, default_value_t = 1200)]
    pub steps: usize,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 64)]
    pub seq_len: usize,
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    #[arg(long, default_value_t = 2)]
    pub n_layer: usize,
    #[arg(long, default_value_t = 64)]
    pub n_embd: usize,
    #[arg(long, default_value_t = 4)]
    pub n_head: usize,
    /// Dropout (embeddings and residual branches) for a new model; 0 = off.
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f32,
    #[arg(long, default_value_t = 3e-4)]
    pub min_lr: f32,
    #[arg(long, default_value_t = 30)]
    pub warmup: usize,
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f32,
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f32,
    #[arg(long, default_value_t = 200)]
    pub eval_every: usize,
    #[arg(long, default_value_t = 8)]
    pub eval_batches: usize,
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Print a JSON summary as the last line.
    #[arg(long)]
    pub json: bool,
}

impl Default for TrainArgs {
    fn default() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: TrainArgs,
        }
        Wrapper::parse_from(["glassgrad"]).args
    }
}

/// The model to train, its tokenizer and dataset, built from the arguments.
pub struct Setup {
    pub model: Gpt2,
    pub tokenizer: Tokenizer,
    pub data: TokenDataset,
    pub options: TrainOptions,
}

pub fn setup(args: &TrainArgs, gpu: &std::rc::Rc<Gpu>) -> Result<Setup> {
    let text = match &args.data {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?,
        None => SHAKESPEARE.to_string(),
    };
    if text.is_empty() {
        return Err(Error::Input("the training text is empty".into()));
    }
    let out = crate::cli::out_dir(&args.out, "runs/shakespeare-char");
    let (model, tokenizer) = if args.resume && out.join("model.safetensors").exists() {
        let weights = Gpt2Weights::load(&out)?;
        let tokenizer = Tokenizer::load(&out, weights.config.vocab_size)?;
        (Gpt2::from_weights(gpu, &weights)?, tokenizer)
    } else {
        let chars = CharTokenizer::from_text(&text);
        let mut config = Gpt2Config::new(
            chars.vocab_size(),
            args.seq_len.max(64),
            args.n_embd,
            args.n_layer,
            args.n_head,
        );
        (config.embd_pdrop, config.resid_pdrop) = (args.dropout, args.dropout);
        config.validate("the command line")?;
        (Gpt2::new_random(gpu, config, args.seed)?, Tokenizer::Char(chars))
    };
    let ids = tokenizer.encode(&text)?;
    let data = TokenDataset::split(&ids, 0.1)?;
    let options = TrainOptions {
        steps: args.steps,
        batch_size: args.batch_size,
        seq_len: args.seq_len,
        grad_accum: args.grad_accum,
        lr: args.lr,
        min_lr: args.min_lr,
        warmup: args.warmup,
        weight_decay: args.weight_decay,
        grad_clip: args.grad_clip,
        eval_every: args.eval_every,
        eval_batches: args.eval_batches,
        seed: args.seed,
        out,
        resume: args.resume,
        stop_after: None,
    };
    Ok(Setup { model, tokenizer, data, options })
}

/// Trains with a progress bar on stderr.
pub fn train_with_progress(s: &mut Setup) -> Result<TrainSummary> {
    let bar = ProgressBar::new(s.options.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  [{elapsed} < {eta}]")
            .expect("valid template"),
    );
    let summary = train(&mut s.model, &s.data, &s.tokenizer, &s.options, |p| {
        bar.set_position(p.step as u64 + 1);
        let val = p.record.val_loss.map(|v| format!("  val {v:.3}")).unwrap_or_default();
        bar.set_message(format!(
            "loss {:.3}{val}  {:.0} tok/s",
            p.record.train_loss, p.record.tokens_per_s
        ));
        if let Some(v) = p.record.val_loss {
            let line = format!(
                "step {:>5}  train loss {:.4}  val loss {v:.4}",
                p.step + 1,
                p.record.train_loss
            );
            // A hidden bar (stderr not a terminal) drops println: print the line plainly then.
            if bar.is_hidden() { eprintln!("{line}") } else { bar.println(line) }
        }
    });
    bar.finish_and_clear();
    summary
}

pub fn summary_json(s: &TrainSummary) -> serde_json::Value {
    serde_json::json!({
        "steps": s.steps,
        "train_loss": s.train_loss,
        "val_loss": s.val_loss,
        "tokens_per_s": s.tokens_per_s,
        "seconds": s.seconds,
        "out": s.out.display().to_string(),
    })
}

pub fn run(args: TrainArgs) -> Result<()> {
    let gpu = Gpu::new()?;
    if !args.json {
        println!("adapter: {}", gpu.describe());
    }
    let mut s = setup(&args, &gpu)?;
    if !args.json {
        println!(
            "model: {} parameters, {} layers, {} channels, {} heads, vocab {}",
            s.model.num_parameters(),
            s.model.config.n_layer,
            s.model.config.n_embd,
            s.model.config.n_head,
            s.model.config.vocab_size
        );
    }
    let summary = train_with_progress(&mut s)?;
    if std::env::var("GLASSGRAD_PROFILE").is_ok_and(|v| v == "1") {
        eprint!("{}", gpu.profile_report());
    }
    if args.json {
        println!("{}", summary_json(&summary));
    } else {
        println!(
            "done: {} steps in {:.1} s ({:.0} tokens/s), train loss {:.4}, val loss {:.4}; saved to {}",
            summary.steps,
            summary.seconds,
            summary.tokens_per_s,
            summary.train_loss,
            summary.val_loss,
            summary.out.display()
        );
    }
    Ok(())
}
