//! `glassgrad train`: trains a GPT-2 from scratch (default: the tour's tiny char-level model on the
//! bundled Shakespeare) or continues one (`--resume`).

use std::path::{Path, PathBuf};

use clap::Args;
use glassgrad::data::{SHAKESPEARE, TokenDataset};
use glassgrad::model::gpt2::Gpt2;
use glassgrad::model::{Gpt2Config, Gpt2Weights, size};
use glassgrad::tokenizer::{CharTokenizer, Tokenizer};
use glassgrad::train::manifest::{self, Manifest};
use glassgrad::train::trainer::{Progress, TrainOptions, TrainSummary, train};
use glassgrad::{Category, Error, Gpu, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::validate;

/// Where `train` and the tour write without --out (under the current directory).
pub const DEFAULT_OUT: &str = "runs/shakespeare-char";

/// The tour's model and schedule; `glassgrad train` with no options uses the same.
/// Numeric ranges are checked at parse time (cli/validate.rs; README "Option ranges").
#[derive(Args, Clone, Debug)]
pub struct TrainArgs {
    /// Output directory (model, tokenizer, log, loss curve, optimizer state, checkpoint.json).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A UTF-8 text file to train on, char-level (default: the bundled Shakespeare).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Continue from the checkpoint in --out (model and optimizer state); it must exist.
    #[arg(long)]
    pub resume: bool,
    /// Replace a model already in --out (without it, a new run refuses to).
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Optimizer steps, 1..=1e9.
    #[arg(long, default_value = "1200", value_parser = validate::steps, allow_hyphen_values = true)]
    pub steps: usize,
    /// Sequences per micro-batch, 1..=65536.
    #[arg(long, default_value = "16", value_parser = validate::batch_size, allow_hyphen_values = true)]
    pub batch_size: usize,
    /// Tokens per sequence, 1..=65536 and ≤ the model's n_positions.
    #[arg(long, default_value = "64", value_parser = validate::seq_len, allow_hyphen_values = true)]
    pub seq_len: usize,
    /// Micro-batches summed per step, 1..=1e6.
    #[arg(long, default_value = "1", value_parser = validate::grad_accum, allow_hyphen_values = true)]
    pub grad_accum: usize,
    /// Gradient checkpointing: keep only every K-th block's input and recompute the blocks in
    /// backward (K = 1..=1000 blocks per segment; `--checkpointing` alone means K = 1). Same
    /// gradients, less activation memory, about one extra forward.
    #[arg(long, value_name = "K", num_args = 0..=1, default_missing_value = "1",
          value_parser = validate::checkpointing)]
    pub checkpointing: Option<usize>,
    /// Layers of a new model, 1..=1000 [default: 2]; not with --resume.
    #[arg(long, value_parser = validate::n_layer, allow_hyphen_values = true)]
    pub n_layer: Option<usize>,
    /// Channels of a new model, 1..=65536 [default: 64]; not with --resume.
    #[arg(long, value_parser = validate::n_embd, allow_hyphen_values = true)]
    pub n_embd: Option<usize>,
    /// Heads of a new model, 1..=1024, dividing --n-embd [default: 4]; not with --resume.
    #[arg(long, value_parser = validate::n_head, allow_hyphen_values = true)]
    pub n_head: Option<usize>,
    /// Dropout of a new model (embeddings and residual branches), [0, 1) [default: 0]; not with --resume.
    #[arg(long, value_parser = validate::dropout, allow_hyphen_values = true)]
    pub dropout: Option<f64>,
    /// Peak learning rate, (0, 1].
    #[arg(long, default_value = "3e-3", value_parser = validate::learning_rate, allow_hyphen_values = true)]
    pub lr: f32,
    /// Learning-rate floor of the cosine decay, [0, --lr].
    #[arg(long, default_value = "3e-4", value_parser = validate::min_learning_rate, allow_hyphen_values = true)]
    pub min_lr: f32,
    /// Linear warmup steps, 0..=1e9.
    #[arg(long, default_value = "30", value_parser = validate::warmup, allow_hyphen_values = true)]
    pub warmup: usize,
    /// AdamW weight decay (matrices and embeddings only), [0, 1].
    #[arg(long, default_value = "0.1", value_parser = validate::weight_decay, allow_hyphen_values = true)]
    pub weight_decay: f32,
    /// Global gradient-norm clip, (0, inf]; inf = no clipping.
    #[arg(long, default_value = "1.0", value_parser = validate::grad_clip, allow_hyphen_values = true)]
    pub grad_clip: f32,
    /// Evaluate and checkpoint every N steps, 0..=1e9 (0 = only at the end).
    #[arg(long, default_value = "200", value_parser = validate::eval_every, allow_hyphen_values = true)]
    pub eval_every: usize,
    /// Validation batches per evaluation, 1..=10000.
    #[arg(long, default_value = "8", value_parser = validate::eval_batches, allow_hyphen_values = true)]
    pub eval_batches: usize,
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Print a JSON summary as the last line.
    #[arg(long)]
    pub json: bool,
}

impl Default for TrainArgs {
    fn default() -> Self {
        super::flag_defaults(&[])
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
    let out = crate::cli::out_dir(&args.out, DEFAULT_OUT);
    check_args(args)?;
    let checkpoint = prepare_out(&out, args.resume, args.overwrite)?;
    let (model, tokenizer) = if args.resume {
        let step = checkpoint.map_or(0, |m| m.step);
        let weights = Gpt2Weights::load(&out)?;
        let tokenizer = Tokenizer::load(&out, weights.config.vocab_size)?;
        if !args.json {
            println!("resuming {} from step {step}", out.display());
        }
        size::check_model(gpu, &weights.config, args.batch_size, args.seq_len, 5, "--resume")?;
        (Gpt2::from_weights(gpu, &weights)?, tokenizer)
    } else {
        let chars = CharTokenizer::from_text(&text);
        let mut config = Gpt2Config::new(
            chars.vocab_size(),
            args.seq_len.max(64),
            args.n_embd.unwrap_or(64),
            args.n_layer.unwrap_or(2),
            args.n_head.unwrap_or(4),
        );
        let dropout = args.dropout.unwrap_or(0.0);
        (config.embd_pdrop, config.resid_pdrop) = (dropout, dropout);
        config.validate("the command line")?;
        size::check_model(gpu, &config, args.batch_size, args.seq_len, 5, "the command line")?;
        (Gpt2::new_random(gpu, config, args.seed)?, Tokenizer::Char(chars))
    };
    ensure_writable(&out)?;
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
        checkpoint_every: args.checkpointing,
    };
    Ok(Setup { model, tokenizer, data, options })
}

/// Checks between options that clap cannot express.
fn check_args(args: &TrainArgs) -> Result<()> {
    if args.min_lr > args.lr {
        return Err(Error::Input(format!(
            "--min-lr {} is above --lr {}; the floor of the decay must be at most the peak",
            args.min_lr, args.lr
        )));
    }
    if args.resume {
        let given = [
            (args.n_layer.is_some(), "--n-layer"),
            (args.n_embd.is_some(), "--n-embd"),
            (args.n_head.is_some(), "--n-head"),
            (args.dropout.is_some(), "--dropout"),
        ];
        if let Some((_, name)) = given.iter().find(|(g, _)| *g) {
            return Err(Error::Input(format!(
                "--resume continues the model saved in --out, so {name} cannot change it; drop \
                 {name}, or start a new run (--overwrite) with it"
            )));
        }
    }
    Ok(())
}

/// Checks --out before anything is trained: it must be a directory we can write, it must hold a
/// checkpoint when resuming, and must not hold a model (unless --overwrite) when not. Finishes or
/// cleans up an interrupted save first. Returns the checkpoint's manifest, if there is one.
pub fn prepare_out(out: &Path, resume: bool, overwrite: bool) -> Result<Option<Manifest>> {
    let shown = out.display();
    if let Ok(meta) = std::fs::metadata(out)
        && !meta.is_dir()
    {
        return Err(Error::Input(format!("--out {shown} exists and is not a directory")));
    }
    let checkpoint = manifest::open(out)?;
    if resume && checkpoint.is_none() {
        return Err(Error::Input(format!(
            "--resume: {shown} holds no checkpoint ({}); train without --resume to start one",
            manifest::MANIFEST_FILE
        )));
    }
    if !resume && !overwrite && manifest::holds_model(out) {
        let step = checkpoint.as_ref().map(|m| format!(" (step {})", m.step)).unwrap_or_default();
        return Err(Error::Input(format!(
            "{shown} already holds a model{step}; pass --resume to continue it, --overwrite to \
             replace it, or choose another --out"
        )));
    }
    Ok(checkpoint)
}

/// Creates --out and proves it writable, so a bad --out is found now, not at the first checkpoint.
pub fn ensure_writable(out: &Path) -> Result<()> {
    let shown = out.display();
    std::fs::create_dir_all(out)
        .map_err(|e| Error::Input(format!("--out {shown}: cannot create it: {e}")))?;
    let probe = out.join(format!(".write-test.tmp-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| Error::Input(format!("--out {shown} is not writable: {e}")))
}

/// Trains with a progress bar on stderr.
pub fn train_with_progress(s: &mut Setup) -> Result<TrainSummary> {
    with_progress(s.options.steps, |progress| {
        train(&mut s.model, &s.data, &s.tokenizer, &s.options, progress)
    })
}

/// Runs `run` (a training loop) with a progress bar on stderr fed by its progress callback, and
/// a line per evaluation.
pub fn with_progress(
    steps: usize,
    run: impl FnOnce(&mut dyn FnMut(&Progress)) -> Result<TrainSummary>,
) -> Result<TrainSummary> {
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  [{elapsed} < {eta}]")
            .expect("valid template"),
    );
    let summary = run(&mut |p: &Progress| {
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

/// The peak bytes of a run, in total and by category, from the engine's own accounting:
/// `{"peak_bytes": …, "memory": {"parameters": …, "gradients": …, "optimizer": …,
/// "activations": …, "quantized": …}}` (the `--json` summaries of train, finetune, forward and
/// compare all carry it).
pub fn memory_json(gpu: &Gpu) -> serde_json::Value {
    let mem = gpu.memory();
    let memory: serde_json::Map<String, serde_json::Value> = Category::ALL
        .into_iter()
        .filter(|c| *c != Category::Scratch)
        .map(|c| (c.name().to_string(), serde_json::json!(mem.peak(c))))
        .collect();
    serde_json::json!({ "peak_bytes": mem.total_peak, "memory": memory })
}

/// `extra`'s fields added to the object `base`.
pub fn extend_json(mut base: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
    if let (Some(o), serde_json::Value::Object(e)) = (base.as_object_mut(), extra) {
        o.extend(e);
    }
    base
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
        println!("{}", extend_json(summary_json(&summary), memory_json(&gpu)));
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
