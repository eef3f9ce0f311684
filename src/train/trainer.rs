//! The training loop: AdamW (no weight decay on biases and LayerNorm), linear warmup + cosine
//! decay, global-norm clipping, gradient accumulation, seeded batches, periodic validation,
//! atomic checkpoints that resume with the optimizer state, and a NaN/Inf stop that leaves the
//! last good checkpoint intact.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::autograd::no_grad;
use crate::cpu::Rng;
use crate::data::{Batch, Batches, Split};
use crate::error::{Error, Result};
use crate::model::Param;
use crate::model::gpt2::{ForwardOptions, Gpt2};
use crate::optim::{AdamW, ParamGroup};
use crate::peft::Adapter;
use crate::tensor::Tensor;
use crate::tokenizer::Tokenizer;
use crate::train::checkpoint::{
    AdamState, OPTIMIZER_FILE, read_optimizer_state, save_checkpoint, save_log,
    write_optimizer_state,
};
use crate::train::log::{LOG_FILE, LogRecord, TrainLog};
use crate::train::manifest;
use crate::train::schedule::LrSchedule;

#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub steps: usize,
    pub batch_size: usize,
    pub seq_len: usize,
    /// Micro-batches whose gradients are summed before each optimizer step.
    pub grad_accum: usize,
    pub lr: f32,
    pub min_lr: f32,
    pub warmup: usize,
    pub weight_decay: f32,
    /// Global-norm clip (0 or ∞ = off).
    pub grad_clip: f32,
    pub eval_every: usize,
    pub eval_batches: usize,
    pub seed: u64,
    pub out: PathBuf,
    /// Continue from the checkpoint in `out` (model + optimizer state) if there is one.
    pub resume: bool,
    /// Stop after this many steps as if interrupted (the schedule still spans `steps`): for
    /// time-boxed runs and for testing that a resumed run continues exactly.
    pub stop_after: Option<usize>,
    /// Gradient checkpointing: segments of this many blocks, recomputed in backward.
    pub checkpoint_every: Option<usize>,
}

/// What one logged step reports to the caller (a progress bar, a test).
pub struct Progress<'a> {
    pub step: usize,
    pub steps: usize,
    pub record: &'a LogRecord,
}

#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub steps: usize,
    pub train_loss: f32,
    pub val_loss: f32,
    pub tokens_per_s: f64,
    pub seconds: f64,
    pub out: PathBuf,
}

/// Trainable parameters by name, in the optimizer's groups: (lr multiple, decays, params).
/// As GPT-2/nanoGPT train: matrices and embeddings decay, biases and LayerNorm weights do not.
/// The first two groups are always (1, decay) and (1, no decay), so plain training's checkpoints
/// keep their keys; a method with its own learning rates (LoRA+) adds groups after them.
type Named = Vec<(String, Tensor)>;

/// (lr multiple, whether the group decays, its parameters by name).
type Group = (f32, bool, Named);

fn named_groups(model: &Gpt2, adapter: Option<&dyn Adapter>) -> Vec<Group> {
    let mut groups: Vec<Group> = vec![(1.0, true, vec![]), (1.0, false, vec![])];
    for (name, t) in model.named_parameters().into_iter().filter(|(_, t)| t.requires_grad()) {
        let scale = adapter.map_or(1.0, |a| a.lr_scale(&name, &t));
        let decays = t.rank() >= 2;
        match groups.iter_mut().find(|(s, d, _)| *s == scale && *d == decays) {
            Some(group) => group.2.push((name, t)),
            None => groups.push((scale, decays, vec![(name, t)])),
        }
    }
    groups
}

/// The two AdamW parameter groups of plain training: weight decay on matrices and embeddings.
pub fn param_groups(model: &Gpt2, lr: f32, weight_decay: f32) -> Vec<ParamGroup> {
    to_param_groups(named_groups(model, None), lr, weight_decay)
}

fn to_param_groups(groups: Vec<Group>, lr: f32, weight_decay: f32) -> Vec<ParamGroup> {
    groups
        .into_iter()
        .map(|(scale, decays, named)| ParamGroup {
            params: named.into_iter().map(|(_, t)| t).collect(),
            lr: lr * scale,
            weight_decay: if decays { weight_decay } else { 0.0 },
        })
        .collect()
}

/// (registry name, AdamW's key "group.index") of every trainable parameter, in group order.
fn optimizer_keys(model: &Gpt2, adapter: Option<&dyn Adapter>) -> Vec<(String, String)> {
    let mut keys = vec![];
    for (g, (_, _, named)) in named_groups(model, adapter).into_iter().enumerate() {
        keys.extend(named.into_iter().enumerate().map(|(i, (n, _))| (n, format!("{g}.{i}"))));
    }
    keys
}

/// AdamW's state under parameter names (the checkpoint's layout).
fn named_state(
    model: &Gpt2,
    adapter: Option<&dyn Adapter>,
    optimizer: &AdamW,
) -> Result<AdamState> {
    let raw = optimizer.state()?;
    let find = |key: &str| raw.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let shapes: std::collections::HashMap<String, Vec<usize>> =
        model.named_parameters().into_iter().map(|(n, t)| (n, t.shape().to_vec())).collect();
    let mut state = AdamState {
        step: optimizer.step,
        exp_avg: Default::default(),
        exp_avg_sq: Default::default(),
    };
    for (name, key) in optimizer_keys(model, adapter) {
        let shape = shapes[&name].clone();
        let m = find(&format!("{key}.exp_avg"))
            .ok_or_else(|| Error::Input(format!("optimizer has no state for {name}")))?;
        let v = find(&format!("{key}.exp_avg_sq"))
            .ok_or_else(|| Error::Input(format!("optimizer has no state for {name}")))?;
        state.exp_avg.insert(name.clone(), Param { shape: shape.clone(), data: m });
        state.exp_avg_sq.insert(name, Param { shape, data: v });
    }
    Ok(state)
}

/// Restores a checkpoint's named AdamW state; `path` (the optimizer file) is for messages.
fn load_named_state(
    model: &Gpt2,
    adapter: Option<&dyn Adapter>,
    optimizer: &mut AdamW,
    state: &AdamState,
    path: &Path,
) -> Result<()> {
    let shapes: std::collections::HashMap<String, Vec<usize>> =
        model.named_parameters().into_iter().map(|(n, t)| (n, t.shape().to_vec())).collect();
    let mut raw = vec![("step".to_string(), vec![state.step as f32])];
    for (name, key) in optimizer_keys(model, adapter) {
        for (moments, suffix) in [(&state.exp_avg, "exp_avg"), (&state.exp_avg_sq, "exp_avg_sq")] {
            let p = moments.get(&name).ok_or_else(|| {
                Error::Input(format!(
                    "{}: no '{suffix}.{name}' for parameter {name}",
                    path.display()
                ))
            })?;
            if p.shape != shapes[&name] {
                return Err(Error::Input(format!(
                    "{}: '{suffix}.{name}' has shape {:?} but parameter {name} has shape {:?}; \
                     the optimizer state belongs to another model",
                    path.display(),
                    p.shape,
                    shapes[&name]
                )));
            }
            raw.push((format!("{key}.{suffix}"), p.data.clone()));
        }
    }
    if let Some(extra) = state.exp_avg.keys().find(|k| !shapes.contains_key(*k)) {
        return Err(Error::Input(format!(
            "{}: 'exp_avg.{extra}' names no parameter of this model",
            path.display()
        )));
    }
    optimizer.load_state(&raw)
}

/// Where a resumed run starts: the checkpoint in `out` must be complete (manifest checked), hold
/// the optimizer state, and be short of `steps`.
fn resume_step(
    model: &Gpt2,
    adapter: Option<&dyn Adapter>,
    optimizer: &mut AdamW,
    opts: &TrainOptions,
) -> Result<usize> {
    let out = opts.out.display();
    let Some(manifest) = manifest::open(&opts.out)? else {
        return Err(Error::Input(format!(
            "--resume: {out} holds no checkpoint ({}); train without --resume to start one",
            manifest::MANIFEST_FILE
        )));
    };
    if !manifest.files.contains_key(OPTIMIZER_FILE) {
        return Err(Error::Input(format!(
            "--resume: the checkpoint in {out} has no {OPTIMIZER_FILE}; it cannot be resumed \
             exactly (start a new run with --overwrite)"
        )));
    }
    let path = opts.out.join(OPTIMIZER_FILE);
    let state = read_optimizer_state(&path)?;
    if state.step != manifest.step {
        return Err(Error::Input(format!(
            "{}: step {} but {} says step {}; refusing to resume a mixed checkpoint",
            path.display(),
            state.step,
            manifest::MANIFEST_FILE,
            manifest.step
        )));
    }
    if state.step as usize >= opts.steps {
        return Err(Error::Input(format!(
            "--resume: the checkpoint in {out} has already done {} steps; give --steps greater \
             than {} to train further (--steps {} was given)",
            state.step, state.step, opts.steps
        )));
    }
    load_named_state(model, adapter, optimizer, &state, &path)?;
    Ok(state.step as usize)
}

/// Mean loss of `batches` validation batches (no graph recorded).
pub fn evaluate(
    model: &Gpt2,
    data: &dyn Batches,
    batch_size: usize,
    seq_len: usize,
    batches: usize,
    seed: u64,
) -> Result<f32> {
    let _g = no_grad();
    let mut rng = Rng::new(seed);
    let mut total = 0.0;
    let classes = data.classes();
    for _ in 0..batches {
        let batch = data.sample(Split::Val, batch_size, seq_len, &mut rng)?;
        let shape = (batch_size, seq_len);
        total += batch_loss(model, &batch, classes.as_deref(), shape, None, None)?.item()?;
    }
    Ok(total / batches as f32)
}

/// Loss tensor of one batch of `(b, t)`; over `classes`' logits only for a classification task;
/// `dropout_seed` = Some(..) in training.
fn batch_loss(
    model: &Gpt2,
    batch: &Batch,
    classes: Option<&[u32]>,
    (b, t): (usize, usize),
    dropout_seed: Option<u64>,
    checkpoint_every: Option<usize>,
) -> Result<Tensor> {
    let gpu = model.gpu();
    model.check_ids(&batch.inputs, &[b, t], 0)?;
    let ids = Tensor::from_u32(gpu, &batch.inputs, &[b, t])?; // (B, T)
    let opts = ForwardOptions { dropout_seed, checkpoint_every, ..Default::default() };
    model.task_loss(&ids, &batch.targets, classes, &opts) // (1)
}

pub fn train(
    model: &mut Gpt2,
    data: &dyn Batches,
    tokenizer: &Tokenizer,
    opts: &TrainOptions,
    progress: impl FnMut(&Progress),
) -> Result<TrainSummary> {
    train_adapter(model, None, data, tokenizer, opts, progress)
}

/// [`train`] with a parameter-efficient method on the model: only its trainable parameters get
/// optimizer state, its hooks run around each step (learning-rate multiples, `before_step`,
/// `after_step`, train/eval mode), and a checkpoint holds the adapter in PEFT's layout
/// (`adapter_config.json` + `adapter_model.safetensors`) instead of the base model.
pub fn train_adapter(
    model: &mut Gpt2,
    adapter: Option<&dyn Adapter>,
    data: &dyn Batches,
    tokenizer: &Tokenizer,
    opts: &TrainOptions,
    mut progress: impl FnMut(&Progress),
) -> Result<TrainSummary> {
    if opts.steps == 0 || opts.batch_size == 0 || opts.seq_len == 0 || opts.grad_accum == 0 {
        return Err(Error::Input(
            "steps, batch size, sequence length and grad accumulation must all be ≥ 1".into(),
        ));
    }
    if opts.eval_batches == 0 {
        return Err(Error::Input("eval batches must be ≥ 1 (a mean over 0 batches is NaN)".into()));
    }
    let rates = [("lr", opts.lr), ("min lr", opts.min_lr), ("weight decay", opts.weight_decay)];
    if let Some((name, v)) = rates.iter().find(|(_, v)| !(v.is_finite() && *v >= 0.0)) {
        return Err(Error::Input(format!("{name} is {v}; it must be finite and ≥ 0")));
    }
    // `!(lr > 0)` so that a NaN learning rate fails too.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    if !(opts.lr > 0.0) || opts.min_lr > opts.lr || opts.grad_clip.is_nan() || opts.grad_clip < 0.0
    {
        return Err(Error::Input(format!(
            "need lr > 0, min lr ≤ lr and grad clip ≥ 0 (0 or inf = off); got lr {}, min lr {}, clip {}",
            opts.lr, opts.min_lr, opts.grad_clip
        )));
    }
    if opts.seq_len > model.config.n_positions {
        return Err(Error::Input(format!(
            "--seq-len {} is longer than the model's n_positions {}",
            opts.seq_len, model.config.n_positions
        )));
    }
    let groups = named_groups(model, adapter);
    let lr_scales: Vec<f32> = groups.iter().map(|(scale, _, _)| *scale).collect();
    let groups = to_param_groups(groups, opts.lr, opts.weight_decay);
    let mut optimizer = AdamW::new(groups, 0.9, 0.95, 1e-8)?;
    let start = if opts.resume { resume_step(model, adapter, &mut optimizer, opts)? } else { 0 };
    let mut saved = start > 0; // a complete checkpoint is on disk
    let schedule = LrSchedule {
        max_lr: opts.lr,
        min_lr: opts.min_lr,
        warmup_steps: opts.warmup,
        total_steps: opts.steps,
    };
    let mut log: Vec<LogRecord> = vec![];
    if start > 0 && opts.out.join(LOG_FILE).exists() {
        log = TrainLog::read(opts.out.join(LOG_FILE))?
            .into_iter()
            .filter(|r| r.step < start)
            .collect();
    }
    let clock = Instant::now();
    let mut tokens = 0usize;
    let (mut train_loss, mut val_loss) = (f32::NAN, f32::NAN);
    let end = opts.stop_after.map_or(opts.steps, |s| s.min(opts.steps));
    let classes = data.classes(); // the classifier's tokens, or None: the whole vocabulary
    for step in start..end {
        let lr = schedule.lr(step);
        for (g, scale) in lr_scales.iter().enumerate() {
            optimizer.set_lr(g, lr * scale);
        }
        if let Some(a) = adapter {
            a.before_step(step, opts.seed ^ (step as u64).wrapping_mul(0xA24B_AED4_963E_E407))?;
        }
        // Batches depend only on (seed, step, micro-batch): a resumed run sees the same data.
        let mut rng = Rng::new(opts.seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut loss_sum: Option<Tensor> = None;
        for micro in 0..opts.grad_accum {
            let batch = data.sample(Split::Train, opts.batch_size, opts.seq_len, &mut rng)?;
            let dropout_seed = Some(
                opts.seed
                    ^ ((step * opts.grad_accum + micro) as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
            );
            if let (Some(a), Some(seed)) = (adapter, dropout_seed) {
                a.train(seed);
            }
            let loss = batch_loss(
                model,
                &batch,
                classes.as_deref(),
                (opts.batch_size, opts.seq_len),
                dropout_seed,
                opts.checkpoint_every,
            )?;
            let loss = match adapter.map(|a| a.loss_term()).transpose()?.flatten() {
                Some(term) => loss.add(&term)?, // AdaLoRA's regularizer joins the loss
                None => loss,
            };
            let scaled = loss.scale(1.0 / opts.grad_accum as f32)?;
            scaled.backward()?;
            let l = scaled.detach();
            loss_sum = Some(match loss_sum {
                Some(s) => {
                    let _g = no_grad();
                    s.add(&l)?
                }
                None => l,
            });
            tokens += opts.batch_size * opts.seq_len;
        }
        if opts.grad_clip > 0.0 && opts.grad_clip.is_finite() {
            optimizer.step_clipped(opts.grad_clip)?; // norm and scale on the GPU, no read-back
        } else {
            optimizer.step()?;
        }
        if let Some(a) = adapter {
            a.after_optimizer_step(step + 1)?; // the gradients are still there
        }
        optimizer.zero_grad();
        if let Some(a) = adapter {
            a.after_step(model)?;
            a.eval();
        }
        train_loss = loss_sum.expect("grad_accum ≥ 1").item()?; // one read-back per step
        if !train_loss.is_finite() {
            let kept = if saved {
                format!("the last good checkpoint in {} is intact", opts.out.display())
            } else {
                "no checkpoint had been written yet".to_string()
            };
            return Err(Error::Input(format!(
                "the training loss became {train_loss} at step {step}; stopped, {kept} (try a lower --lr or --grad-clip)"
            )));
        }
        let last = step + 1 == end;
        let eval_now = last || (opts.eval_every > 0 && (step + 1) % opts.eval_every == 0);
        let val = if eval_now {
            val_loss = evaluate(
                model,
                data,
                opts.batch_size,
                opts.seq_len,
                opts.eval_batches,
                opts.seed.wrapping_add(1),
            )?;
            Some(val_loss)
        } else {
            None
        };
        let record = LogRecord {
            step,
            train_loss,
            val_loss: val,
            lr,
            tokens_per_s: tokens as f64 / clock.elapsed().as_secs_f64(),
        };
        log.push(record.clone());
        progress(&Progress { step, steps: opts.steps, record: &record });
        if eval_now {
            save(model, adapter, &optimizer, tokenizer, &log, &opts.out)?;
            saved = true;
        }
    }
    let seconds = clock.elapsed().as_secs_f64();
    Ok(TrainSummary {
        steps: end,
        train_loss,
        val_loss,
        tokens_per_s: tokens as f64 / seconds.max(1e-9),
        seconds,
        out: opts.out.clone(),
    })
}

/// Model (or, with an adapter, the adapter's files alone), tokenizer, log, loss curve and
/// optimizer state, saved as one unit (manifest.rs).
fn save(
    model: &Gpt2,
    adapter: Option<&dyn Adapter>,
    optimizer: &AdamW,
    tokenizer: &Tokenizer,
    log: &[LogRecord],
    out: &Path,
) -> Result<()> {
    let state = named_state(model, adapter, optimizer)?;
    match adapter {
        None => {
            let weights = model.to_weights()?;
            manifest::save_unit(out, state.step, |dir| {
                save_checkpoint(dir, &weights, tokenizer, log)?;
                write_optimizer_state(dir.join(OPTIMIZER_FILE), &state)
            })
        }
        Some(adapter) => manifest::save_unit(out, state.step, |dir| {
            crate::peft::files::save(model, adapter, dir)?;
            save_log(dir, log)?;
            write_optimizer_state(dir.join(OPTIMIZER_FILE), &state)
        }),
    }
}
