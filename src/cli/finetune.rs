//! `glassgrad finetune --model DIR --method METHOD`: a parameter-efficient fine-tune of a model
//! directory on the bundled movie-review sentences (train/tasks.rs: the `sentiment` task, a
//! labelled `<sentence> => positive|negative`, or the `style` task, plain review text).
//!
//! It reuses the trainer: accumulation, clipping, validation, checkpoints saved as one unit and
//! `--resume`, a progress bar and a loss curve. `--out` receives the adapter in PEFT's layout
//! (`adapter_config.json` + `adapter_model.safetensors`) for the LoRA family, or a whole model
//! directory for `full`, plus the log, `loss.svg`, the optimizer state and `checkpoint.json`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use glassgrad::data::{RatedSentence, movie_sentences, parse_rated_tsv, tweets};
use glassgrad::gpu::Category;
use glassgrad::model::gpt2::Gpt2;
use glassgrad::model::quantized::{self, QuantizeSpec};
use glassgrad::model::size;
use glassgrad::peft::variants::{self, DELTA_LAMBDA, LORAPLUS_RATIO, Variant};
use glassgrad::peft::{Adapter, LoraConfig, files, lora};
use glassgrad::tokenizer::Tokenizer;
use glassgrad::train::manifest;
use glassgrad::train::tasks::{self, Examples, Task};
use glassgrad::train::trainer::{TrainOptions, TrainSummary, evaluate, train_adapter};
use glassgrad::{Error, Gpu, Result};

use crate::cli::train::{ensure_writable, extend_json, memory_json, prepare_out, summary_json};
use crate::cli::validate;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// LoRA: h = xW + b + s·x·Aᵀ·Bᵀ, A and B trained, the base frozen.
    Lora,
    /// LoRA-FA: A frozen after init, only B trained (less activation memory).
    LoraFa,
    /// LoRA+: B's learning rate is --loraplus-lr-ratio × A's.
    LoraPlus,
    /// Delta-LoRA: W also moves by λ·(change of s·B·A) each step, with no gradient for W.
    DeltaLora,
    /// DyLoRA: a rank sampled per step; inference at any rank ≤ r (--rank).
    Dylora,
    /// DoRA: a magnitude per output feature over a LoRA (`use_dora`).
    Dora,
    /// AdaLoRA: LoRA as B·diag(λ)·A, λ pruned by importance from --r (init_r, default 12) to
    /// --target-r per layer on average over --steps, plus an orthogonality penalty.
    Adalora,
    /// VeRA: shared frozen random A, B; per-layer scaling vectors λ_d, λ_b train.
    Vera,
    /// Prefix tuning: learned keys and values in front of every layer's attention.
    Prefix,
    /// Prompt tuning: learned virtual input embeddings in front of the sequence.
    Prompt,
    /// IA3: learned vectors rescale c_attn's output and mlp.c_proj's input.
    Ia3,
    /// BitFit: only the biases train.
    Bitfit,
    /// Bottleneck adapters: serial after attn.c_proj and mlp.c_proj (Houlsby), or parallel
    /// beside the MLP with --adapter-placement parallel (He et al.).
    Adapter,
    /// Selective masking: --sparsity of the projections' own weights train (by --mask-by).
    Mask,
    /// MAM adapter: prefix tuning + a parallel adapter beside the MLP scaled by 4 (He et al.).
    Mam,
    /// Every parameter trains (the baseline).
    Full,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Lora => "lora",
            Method::LoraFa => "lora-fa",
            Method::LoraPlus => "lora-plus",
            Method::DeltaLora => "delta-lora",
            Method::Dylora => "dylora",
            Method::Dora => "dora",
            Method::Adalora => "adalora",
            Method::Vera => "vera",
            Method::Prefix => "prefix",
            Method::Prompt => "prompt",
            Method::Ia3 => "ia3",
            Method::Bitfit => "bitfit",
            Method::Adapter => "adapter",
            Method::Mask => "mask",
            Method::Mam => "mam",
            Method::Full => "full",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TaskArg {
    /// `<sentence> => positive|negative`, accuracy on a held-out split and on tweets.
    Sentiment,
    /// The review sentences as plain text: validation loss before and after.
    Style,
}

#[derive(Args, Clone, Debug)]
pub struct FinetuneArgs {
    /// Base model directory (config.json + model.safetensors, e.g. the tour's runs/shakespeare-char).
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, value_enum, default_value = "lora")]
    pub method: Method,
    /// Output directory [default: runs/finetune-<method>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "sentiment")]
    pub task: TaskArg,
    /// Rated sentences (`id<TAB>rating<TAB>text`, VADER's format) instead of the bundled movie
    /// sentences; ratings ≥ 0.5 are positive, ≤ −0.5 negative, the rest dropped.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Optimizer steps, 1..=1e9.
    #[arg(long, default_value = "300", value_parser = validate::steps, allow_hyphen_values = true)]
    pub steps: usize,
    /// Peak learning rate, (0, 1].
    #[arg(long, default_value = "3e-3", value_parser = validate::learning_rate, allow_hyphen_values = true)]
    pub lr: f32,
    /// Learning-rate floor of the cosine decay, [0, --lr].
    #[arg(long, default_value = "3e-4", value_parser = validate::min_learning_rate, allow_hyphen_values = true)]
    pub min_lr: f32,
    /// Linear warmup steps, 0..=1e9.
    #[arg(long, default_value = "10", value_parser = validate::warmup, allow_hyphen_values = true)]
    pub warmup: usize,
    /// AdamW weight decay on matrices, [0, 1].
    #[arg(long, default_value = "0", value_parser = validate::weight_decay, allow_hyphen_values = true)]
    pub weight_decay: f32,
    /// Global gradient-norm clip, (0, inf]; inf = no clipping.
    #[arg(long, default_value = "1.0", value_parser = validate::grad_clip, allow_hyphen_values = true)]
    pub grad_clip: f32,
    /// Sequences per micro-batch, 1..=65536.
    #[arg(long, default_value = "32", value_parser = validate::batch_size, allow_hyphen_values = true)]
    pub batch_size: usize,
    /// Tokens per row, ≤ the model's n_positions [default: min(n_positions, 64)].
    #[arg(long, value_parser = validate::seq_len, allow_hyphen_values = true)]
    pub seq_len: Option<usize>,
    /// Micro-batches summed per step, 1..=1e6.
    #[arg(long, default_value = "1", value_parser = validate::grad_accum, allow_hyphen_values = true)]
    pub grad_accum: usize,
    /// Evaluate and checkpoint every N steps (0 = only at the end).
    #[arg(long, default_value = "100", value_parser = validate::eval_every, allow_hyphen_values = true)]
    pub eval_every: usize,
    /// Validation batches per evaluation, 1..=10000.
    #[arg(long, default_value = "8", value_parser = validate::eval_batches, allow_hyphen_values = true)]
    pub eval_batches: usize,
    /// LoRA rank R [default: 8, PEFT's].
    #[arg(long)]
    pub r: Option<usize>,
    /// LoRA alpha (scaling = alpha / r) [default: 8, PEFT's].
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// Dropout on the adapter's input in training, [0, 1) [default: 0].
    #[arg(long, value_parser = validate::dropout, allow_hyphen_values = true)]
    pub lora_dropout: Option<f64>,
    /// Comma-separated module-name suffixes to wrap [default: c_attn]; `c_proj` matches both.
    #[arg(long)]
    pub target_modules: Option<String>,
    /// rsLoRA: scaling = alpha / √r.
    #[arg(long)]
    pub use_rslora: bool,
    /// LoRA+: B's learning rate over A's.
    #[arg(long, default_value_t = LORAPLUS_RATIO)]
    pub loraplus_lr_ratio: f32,
    /// Delta-LoRA: λ, how far W moves per unit change of s·B·A.
    #[arg(long, default_value_t = DELTA_LAMBDA)]
    pub delta_lambda: f64,
    /// DyLoRA: the rank used for evaluation and inference after training, 1..=r [default: r].
    #[arg(long)]
    pub rank: Option<usize>,
    /// Prefix and prompt tuning: virtual tokens Vt [default: 8; PEFT's is 20, but the tour's
    /// model has 64 positions, shared by the prefix and the sequence].
    #[arg(long)]
    pub num_virtual_tokens: Option<usize>,
    /// Bottleneck adapters: the bottleneck's width [default: 16].
    #[arg(long)]
    pub bottleneck_size: Option<usize>,
    /// Gradient checkpointing: K blocks per recomputed segment (alone: 1).
    #[arg(long, value_name = "K", num_args = 0..=1, default_missing_value = "1",
          value_parser = validate::checkpointing)]
    pub checkpointing: Option<usize>,
    /// Selective masking and parallel / MAM adapters (cli/method_args.rs).
    #[command(flatten)]
    pub methods: crate::cli::method_args::MethodArgs,
    /// QLoRA: hold the base's projection weights (c_attn, attn.c_proj, c_fc, mlp.c_proj) frozen in
    /// nf4 / fp4 (bitsandbytes' 4-bit formats) or int8 (rowwise) and train the adapter on top.
    #[arg(long, value_parser = ["nf4", "fp4", "int8"])]
    pub quantize: Option<String>,
    /// Hold those projection weights frozen in f16 instead (computed in f32; half their
    /// memory) and train the adapter on top. Not with --quantize.
    #[arg(long, value_parser = ["f32", "f16"], default_value = "f32")]
    pub base_dtype: String,
    /// With --quantize nf4|fp4: quantize the absmax constants too (8 bits, blocks of 256).
    #[arg(long)]
    pub double_quant: bool,
    /// With --quantize nf4|fp4: elements per absmax block (32, 64, …, 4096).
    #[arg(long, default_value_t = 64)]
    pub blocksize: usize,
    /// Continue the fine-tune saved in --out (adapter and optimizer state).
    #[arg(long)]
    pub resume: bool,
    /// Replace what --out holds.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Print a JSON summary as the last line.
    #[arg(long)]
    pub json: bool,
}

/// Every flag at its default (the tour and `compare` start from these).
pub fn defaults() -> FinetuneArgs {
    super::flag_defaults(&["--model", "-"])
}

/// The task's data, built for the model's tokenizer.
pub enum TaskData {
    Style(glassgrad::data::TokenDataset),
    Sentiment { examples: Examples, tweets: Vec<tasks::Example> },
}

impl TaskData {
    pub fn batches(&self) -> &dyn glassgrad::data::Batches {
        match self {
            TaskData::Style(d) => d,
            TaskData::Sentiment { examples, .. } => examples,
        }
    }
}

fn sentences(data: &Option<PathBuf>) -> Result<Vec<RatedSentence>> {
    match data {
        None => Ok(movie_sentences()),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?;
            parse_rated_tsv(&text, &path.display().to_string())
        }
    }
}

/// The task's data for `tokenizer` at `seq_len`; the count of characters dropped.
pub fn task_data(
    task: Task,
    data: &Option<PathBuf>,
    tokenizer: &Tokenizer,
    seq_len: usize,
) -> Result<(TaskData, usize)> {
    let sentences = sentences(data)?;
    Ok(match task {
        Task::Style => {
            let (d, dropped) = tasks::style_dataset(&sentences, tokenizer)?;
            (TaskData::Style(d), dropped)
        }
        Task::Sentiment => {
            let examples = Examples::new(&sentences, tokenizer, seq_len)?;
            let (tweets, dropped) = tasks::encode_examples(&tweets(), tokenizer, seq_len)?;
            let d = examples.dropped + dropped;
            (TaskData::Sentiment { examples, tweets }, d)
        }
    })
}

/// Accuracy on the held-out split and on the tweets (sentiment only).
pub fn accuracies(model: &Gpt2, data: &TaskData) -> Result<Option<(f64, f64)>> {
    match data {
        TaskData::Style(_) => Ok(None),
        TaskData::Sentiment { examples: e, tweets } => Ok(Some((
            tasks::accuracy(model, &e.test, e.positive, e.negative)?,
            tasks::accuracy(model, tweets, e.positive, e.negative)?,
        ))),
    }
}

/// The LoRA config the flags describe (PEFT's defaults where a flag is absent).
pub fn lora_config(args: &FinetuneArgs) -> LoraConfig {
    let d = LoraConfig::default();
    LoraConfig {
        r: args.r.unwrap_or(d.r),
        lora_alpha: args.lora_alpha.unwrap_or(d.lora_alpha),
        lora_dropout: args.lora_dropout.unwrap_or(d.lora_dropout),
        target_modules: match &args.target_modules {
            Some(t) => t.split(',').map(|s| s.trim().to_string()).collect(),
            None => d.target_modules.clone(),
        },
        use_rslora: args.use_rslora,
        use_dora: args.method == Method::Dora,
        base_model_name_or_path: Some(args.model.display().to_string()),
        ..d
    }
}

/// Puts `method` on `model`: the LoRA family wraps its layers (or, resuming, loads the adapter
/// saved in `out`) and becomes a variant; `full` unfreezes everything and has no adapter.
pub fn attach(
    model: &mut Gpt2,
    args: &FinetuneArgs,
    out: &std::path::Path,
) -> Result<Option<Box<dyn Adapter>>> {
    if args.method != Method::Dylora && args.rank.is_some() {
        return Err(Error::Input(
            "--rank is DyLoRA's inference rank; use it with --method dylora".into(),
        ));
    }
    use crate::cli::method_args;
    use glassgrad::peft::{bitfit, bottleneck, ia3, prefix_tuning, prompt_tuning, vera};
    let base = || Some(args.model.display().to_string());
    let targets = |default: Vec<String>| match &args.target_modules {
        Some(t) => t.split(',').map(|s| s.trim().to_string()).collect(),
        None => default,
    };
    let vt = args.num_virtual_tokens.unwrap_or(DEFAULT_VIRTUAL_TOKENS);
    if args.resume && !matches!(args.method, Method::Full) && !is_lora_family(args.method) {
        return Ok(Some(files::load(model, out)?));
    }
    let adapter: Box<dyn Adapter> = match args.method {
        Method::Full => {
            model.set_requires_grad(true)?;
            return Ok(None);
        }
        Method::Vera => {
            let d = vera::VeraConfig::default();
            let mut c = vera::VeraConfig { r: args.r.unwrap_or(d.r), ..d };
            c.target_modules = targets(c.target_modules.clone());
            c.common.base_model_name_or_path = base();
            Box::new(vera::inject(model, &c, args.seed)?)
        }
        Method::Prefix => {
            let mut c =
                prefix_tuning::PrefixTuningConfig { num_virtual_tokens: vt, ..Default::default() };
            c.common.base_model_name_or_path = base();
            Box::new(prefix_tuning::inject(model, &c, args.seed)?)
        }
        Method::Prompt => {
            let mut c =
                prompt_tuning::PromptTuningConfig { num_virtual_tokens: vt, ..Default::default() };
            c.common.base_model_name_or_path = base();
            Box::new(prompt_tuning::inject(model, &c, args.seed)?)
        }
        Method::Ia3 => {
            let mut c = ia3::Ia3Config::default();
            c.target_modules = targets(c.target_modules.clone());
            c.common.base_model_name_or_path = base();
            Box::new(ia3::inject(model, &c, args.seed)?)
        }
        Method::Bitfit => {
            let mut c = bitfit::BitFitConfig::default();
            c.common.base_model_name_or_path = base();
            Box::new(bitfit::inject(model, &c)?)
        }
        Method::Adapter => {
            Box::new(bottleneck::inject(model, &method_args::bottleneck_config(args), args.seed)?)
        }
        Method::Mask | Method::Mam => method_args::attach(model, args, None)?,
        Method::Adalora => method_args::adalora(model, args)?,
        _ => return attach_lora(model, args, out).map(Some),
    };
    Ok(Some(adapter))
}

/// Prefix and prompt tuning's Vt when none is given.
pub const DEFAULT_VIRTUAL_TOKENS: usize = 8;
/// The bottleneck adapters' width when none is given.
pub const DEFAULT_BOTTLENECK: usize = 16;

fn is_lora_family(m: Method) -> bool {
    use Method::*;
    matches!(m, Lora | LoraFa | LoraPlus | DeltaLora | Dylora | Dora)
}

/// The LoRA family: a LoRA (DoRA: `use_dora`) made into its training variant.
fn attach_lora(
    model: &mut Gpt2,
    args: &FinetuneArgs,
    out: &std::path::Path,
) -> Result<Box<dyn Adapter>> {
    let variant = match args.method {
        Method::LoraFa => Variant::Fa,
        Method::LoraPlus => Variant::Plus { ratio: args.loraplus_lr_ratio },
        Method::DeltaLora => {
            Variant::Delta { lambda: args.delta_lambda, previous: Default::default() }
        }
        Method::Dylora => Variant::Dy { eval_rank: args.rank.unwrap_or(lora_config(args).r) },
        _ => Variant::Lora,
    };
    let mut lora = if args.resume {
        files::load_adapter(model, out)?
    } else {
        lora::inject(model, &lora_config(args), args.seed)?
    };
    variants::apply(&mut lora, variant)?;
    Ok(Box::new(lora))
}

/// What a fine-tune leaves: the model with its method on, the method, the task's data, figures.
pub struct Session {
    pub model: Gpt2,
    pub adapter: Option<Box<dyn Adapter>>,
    pub data: TaskData,
    pub tokenizer: Tokenizer,
    pub done: Finetuned,
}

pub struct Finetuned {
    pub summary: TrainSummary,
    pub val_loss_before: f32,
    pub accuracy_before: Option<(f64, f64)>,
    pub accuracy: Option<(f64, f64)>,
    pub trainable_params: usize,
    pub all_params: usize,
    pub dropped: usize,
    pub majority: Option<f64>,
    /// The model's answers for the first [`SHOWN`] held-out examples before training.
    pub shown_before: Vec<glassgrad::data::Sentiment>,
}

/// How many held-out examples the tour shows before and after.
pub const SHOWN: usize = 6;

/// The whole fine-tune: model and task from the flags, method attached, trained, measured.
/// `show` gets the human-readable lines as they happen (the tour prints them).
pub fn finetune(
    gpu: &std::rc::Rc<Gpu>,
    args: &FinetuneArgs,
    mut show: impl FnMut(&str),
) -> Result<Session> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("runs/finetune-{}", args.method.name())));
    if out == args.model {
        return Err(Error::Input(format!(
            "finetune: --out {} is the base model's directory; write the fine-tune elsewhere",
            out.display()
        )));
    }
    let spec = quantize_spec(args)?;
    prepare_out(&out, args.resume, args.overwrite)?;
    manifest::open(&args.model)?; // finish or refuse an interrupted save before reading
    let config = quantized::read_config(&args.model)?;
    let tokenizer = Tokenizer::load(&args.model, config.vocab_size)?;
    // Prefix and prompt tuning's virtual tokens take positions in front of the sequence.
    let virtual_tokens = match args.method {
        Method::Prefix | Method::Prompt | Method::Mam => {
            args.num_virtual_tokens.unwrap_or(DEFAULT_VIRTUAL_TOKENS)
        }
        _ => 0,
    };
    let positions = config.n_positions;
    let seq_len = args.seq_len.unwrap_or(positions.min(64).saturating_sub(virtual_tokens).max(1));
    if seq_len + virtual_tokens > positions {
        return Err(Error::Input(format!(
            "--seq-len {seq_len} + {virtual_tokens} virtual tokens is longer than the model's \
             n_positions {positions}"
        )));
    }
    size::check_model(gpu, &config, args.batch_size, seq_len, 5, "finetune --model")?;
    // A directory holding Linear4bit state loads as it is (no re-quantization).
    let mut model = quantized::load_model(gpu, &args.model)?;
    if let Some(spec) = spec {
        if let Some(held) = model.quantization() {
            let flag = quantized::flag_of(spec);
            return Err(Error::Input(format!(
                "{flag}: {} already holds a {} base; drop {flag} to train on it",
                args.model.display(),
                held.describe()
            )));
        }
        model.quantize_base(spec)?;
    }
    if let Some(held) = model.quantization() {
        show(&format!(
            "base: c_attn, attn.c_proj, c_fc, mlp.c_proj held in {} ({} bytes, frozen)",
            held.describe(),
            gpu.memory().live(Category::Quantized)
        ));
    }
    let task = match args.task {
        TaskArg::Sentiment => Task::Sentiment,
        TaskArg::Style => Task::Style,
    };
    let (data, dropped) = task_data(task, &args.data, &tokenizer, seq_len)?;
    let adapter = match args.method {
        // Fisher selection reads the task's training batches.
        Method::Mask if !args.resume => {
            let fisher = (data.batches(), args.batch_size, seq_len);
            Some(crate::cli::method_args::attach(&mut model, args, Some(fisher))?)
        }
        _ => attach(&mut model, args, &out)?,
    };
    ensure_writable(&out)?;
    show(&model.trainable_summary());
    let options = TrainOptions {
        steps: args.steps,
        batch_size: args.batch_size,
        seq_len,
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
    let b = data.batches();
    let val_loss_before = evaluate(
        &model,
        b,
        args.batch_size,
        seq_len,
        args.eval_batches,
        args.seed.wrapping_add(1),
    )?;
    let accuracy_before = accuracies(&model, &data)?;
    let shown_before = match &data {
        TaskData::Sentiment { examples: e, .. } => {
            let n = SHOWN.min(e.test.len());
            tasks::predict(&model, &e.test[..n], e.positive, e.negative)?
        }
        TaskData::Style(_) => vec![],
    };
    show(&format!("before: validation loss {val_loss_before:.4}{}", acc_text(accuracy_before)));
    gpu.reset_peaks();
    let summary = crate::cli::train::with_progress(options.steps, |progress| {
        train_adapter(&mut model, adapter.as_deref(), b, &tokenizer, &options, progress)
    })?;
    let accuracy = accuracies(&model, &data)?;
    show(&format!(
        "after {} steps ({:.1} s, {:.0} tokens/s): validation loss {:.4}{}",
        summary.steps,
        summary.seconds,
        summary.tokens_per_s,
        summary.val_loss,
        acc_text(accuracy)
    ));
    let majority = match &data {
        TaskData::Sentiment { examples, .. } => Some(tasks::majority(&examples.test)),
        TaskData::Style(_) => None,
    };
    let done = Finetuned {
        summary,
        val_loss_before,
        accuracy_before,
        accuracy,
        trainable_params: model.num_trainable_parameters(),
        all_params: model.num_parameters(),
        dropped,
        majority,
        shown_before,
    };
    Ok(Session { model, adapter, data, tokenizer, done })
}

/// `--quantize …` / `--base-dtype f16` as a spec, refused for the methods that change the base
/// weight itself.
fn quantize_spec(args: &FinetuneArgs) -> Result<Option<QuantizeSpec>> {
    let quantize = match &args.quantize {
        None if args.double_quant || args.blocksize != 64 => {
            return Err(Error::Input(
                "--double-quant and --blocksize need --quantize nf4|fp4".into(),
            ));
        }
        None => None,
        Some(kind) => Some(QuantizeSpec::parse(kind, args.blocksize, args.double_quant)?),
    };
    let Some(spec) = quantized::base_spec(quantize, &args.base_dtype)? else { return Ok(None) };
    if matches!(args.method, Method::Full | Method::DeltaLora | Method::Mask) {
        let (flag, held) = match spec {
            QuantizeSpec::F16 => ("--base-dtype f16", "in f16"),
            _ => ("--quantize", "in 4 or 8 bits"),
        };
        return Err(Error::Input(format!(
            "{flag} with --method {}: that method changes the base weights, which a frozen base \
             holds {held}; use lora, dora, vera, ia3, …",
            args.method.name()
        )));
    }
    Ok(Some(spec))
}

fn acc_text(a: Option<(f64, f64)>) -> String {
    a.map(|(test, tw)| {
        format!(", accuracy {:.1}% (held-out), {:.1}% (tweets)", 100.0 * test, 100.0 * tw)
    })
    .unwrap_or_default()
}

pub fn run(args: FinetuneArgs) -> Result<()> {
    let gpu = Gpu::new()?;
    let quiet = args.json;
    if !quiet {
        println!("adapter: {}", gpu.describe());
    }
    let show = |line: &str| {
        if !quiet {
            println!("{line}")
        }
    };
    let f = finetune(&gpu, &args, show)?.done;
    if !quiet {
        if f.dropped > 0 {
            println!("({} characters outside the model's vocabulary were dropped)", f.dropped);
        }
        if let Some(m) = f.majority {
            println!("majority class on the held-out split: {:.1}%", 100.0 * m);
        }
        println!("saved to {}", f.summary.out.display());
        println!("GPU memory, by what it holds:\n{}", gpu.memory_report());
    }
    if args.json {
        let json = extend_json(summary_json(&f.summary), memory_json(&gpu));
        let extra = serde_json::json!({
            "method": args.method.name(),
            "quantize": quantize_spec(&args)?.map(|s| s.describe()),
            "task": match args.task { TaskArg::Sentiment => "sentiment", TaskArg::Style => "style" },
            "trainable_params": f.trainable_params,
            "all_params": f.all_params,
            "val_loss_before": f.val_loss_before,
            "accuracy": f.accuracy.map(|a| a.0),
            "accuracy_tweets": f.accuracy.map(|a| a.1),
            "accuracy_before": f.accuracy_before.map(|a| a.0),
            "majority": f.majority,
            "dropped_chars": f.dropped,
        });
        println!("{}", extend_json(json, extra));
    }
    Ok(())
}
