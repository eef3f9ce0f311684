//! Checkpoint files. A checkpoint is a model directory that transformers can load
//! (`config.json`, `model.safetensors`), plus what we need to use or resume it:
//! `tokenizer.json` (char models), `train_log.jsonl`, `loss.svg`, and optionally
//! `optimizer.safetensors` (AdamW moments `exp_avg.<name>`, `exp_avg_sq.<name>` and `step` i64 []).
//! Each file is written atomically; a crash leaves every file either old or new.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::io::{Dtype, NamedTensor, TensorFile, write_safetensors};
use crate::model::{Gpt2Weights, Param};
use crate::tokenizer::Tokenizer;
use crate::train::log::{LOG_FILE, LOSS_SVG_FILE, LogRecord, write_log, write_loss_svg};

pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// AdamW's state: the step count and the first and second moments, by parameter name.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamState {
    pub step: u64,
    pub exp_avg: BTreeMap<String, Param>,
    pub exp_avg_sq: BTreeMap<String, Param>,
}

/// Writes the model, its tokenizer, the log and the loss curve into `dir`.
pub fn save_checkpoint(
    dir: impl AsRef<Path>,
    weights: &Gpt2Weights,
    tokenizer: &Tokenizer,
    log: &[LogRecord],
) -> Result<()> {
    let dir = dir.as_ref();
    weights.save(dir)?;
    tokenizer.save(dir)?;
    save_log(dir, log)
}

/// The run's log (`train_log.jsonl`) and its loss curve (`loss.svg`, once there is a record).
pub fn save_log(dir: &Path, log: &[LogRecord]) -> Result<()> {
    write_log(dir.join(LOG_FILE), log)?;
    if !log.is_empty() {
        write_loss_svg(dir.join(LOSS_SVG_FILE), log, "loss")?;
    }
    Ok(())
}

/// Writes `state` to `path` (usually `dir/optimizer.safetensors`), atomically.
pub fn write_optimizer_state(path: impl AsRef<Path>, state: &AdamState) -> Result<()> {
    let mut tensors: BTreeMap<String, NamedTensor> = BTreeMap::new();
    tensors.insert("step".into(), NamedTensor::from_i64(&[], &[state.step as i64]));
    for (prefix, moments) in [("exp_avg", &state.exp_avg), ("exp_avg_sq", &state.exp_avg_sq)] {
        for (name, p) in moments {
            tensors.insert(format!("{prefix}.{name}"), NamedTensor::from_f32(&p.shape, &p.data));
        }
    }
    write_safetensors(path, tensors.iter().map(|(k, v)| (k.as_str(), v)))
}

/// Reads what [`write_optimizer_state`] wrote; errors name the file and the bad key.
pub fn read_optimizer_state(path: impl AsRef<Path>) -> Result<AdamState> {
    let file = TensorFile::read(path.as_ref())?;
    let p = path.as_ref().display();
    let step_t = file.get("step")?;
    if step_t.dtype != Dtype::I64 || step_t.numel() != 1 {
        return Err(Error::Input(format!(
            "{p}: 'step' must be one I64, got {:?} {:?}",
            step_t.dtype, step_t.shape
        )));
    }
    let step = step_t.to_i64("step")?[0];
    if step < 0 {
        return Err(Error::Input(format!("{p}: 'step' is {step}; it must be ≥ 0")));
    }
    let mut state =
        AdamState { step: step as u64, exp_avg: BTreeMap::new(), exp_avg_sq: BTreeMap::new() };
    for (key, t) in &file.tensors {
        if key == "step" {
            continue;
        }
        // exp_avg_sq. must be tested first: "exp_avg." is not its prefix, but keep the order explicit.
        let (map, name) = if let Some(n) = key.strip_prefix("exp_avg_sq.") {
            (&mut state.exp_avg_sq, n)
        } else if let Some(n) = key.strip_prefix("exp_avg.") {
            (&mut state.exp_avg, n)
        } else {
            return Err(Error::Input(format!(
                "{p}: unknown tensor '{key}' (expected step, exp_avg.*, exp_avg_sq.*)"
            )));
        };
        let data = t.to_f32(key).map_err(|e| Error::Input(format!("{p}: {e}")))?;
        map.insert(name.to_string(), Param { shape: t.shape.clone(), data });
    }
    if let Some(k) = state.exp_avg.keys().find(|k| !state.exp_avg_sq.contains_key(*k)) {
        return Err(Error::Input(format!("{p}: 'exp_avg.{k}' has no matching 'exp_avg_sq.{k}'")));
    }
    if let Some(k) = state.exp_avg_sq.keys().find(|k| !state.exp_avg.contains_key(*k)) {
        return Err(Error::Input(format!("{p}: 'exp_avg_sq.{k}' has no matching 'exp_avg.{k}'")));
    }
    Ok(state)
}
