//! Prompt tuning (Lester et al. 2021): Vt learned input embeddings in front of the tokens, as
//! PEFT's `tuners/prompt_tuning` does for a causal LM.
//!
//!   x = [P ; wte[ids]] + wpe[0 .. Vt + T)        P = prompt_embeddings: (Vt, C)
//! What it trains: P alone (init N(0, 1), PEFT's "RANDOM"); the whole base is frozen.
//! The model applies it through its input adapter (`model::input_adapter`): the logits are the
//! real tokens' positions only, (B, T, V), so the loss, the trainer and `generate` are unchanged.
//! NOTE: PEFT's own loss pads the labels with Vt × -100 and keeps the virtual positions' logits,
//! so the last virtual position also predicts the first real token; ours starts at the first
//! real position (interfaces.md). The gradient of P is what flows back through attention.
//! Mixed-task batches: several prompt tables (one per task, the same Vt) on one base, and a
//! per-row table index ([`PromptTuningModel::set_row_tasks`]): row b gets table task[b]. The
//! tables are stacked (K·Vt, C) and looked up with ids task[b]·Vt + j, so each table gets the
//! gradient of its own rows only. [`PromptTuningModel::set_task`] picks one task for every row of
//! any batch (`generate` runs batches of one row).
//! File: one tensor `prompt_embeddings` (Vt, C) — table 0.

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

use serde_json::json;

use crate::cpu::Rng;
use crate::error::{Error, Result};
use crate::model::gpt2::Gpt2;
use crate::model::input_adapter::InputAdapter;
use crate::ops::shape::concat;
use crate::peft::adapter::Adapter;
use crate::peft::fields::{ConfigFields, PeftFields, read_weights, to_json};
use crate::tensor::Tensor;

/// The file key (and registry name) of the prompt table.
pub const PROMPT_EMBEDDINGS: &str = "prompt_embeddings";

/// PEFT's `PromptTuningConfig` (the fields we honour). The model dimensions are filled in by
/// [`inject`] and checked against the base on loading.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptTuningConfig {
    /// Vt.
    pub num_virtual_tokens: usize,
    /// C of the base (n_embd).
    pub token_dim: Option<usize>,
    pub num_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    /// "RANDOM" (N(0, 1)); "TEXT" and "SAMPLE_VOCAB" need PEFT's tokenizer and are refused for
    /// a fresh adapter (a loaded one does not use its init).
    pub prompt_tuning_init: String,
    pub common: PeftFields,
}

impl Default for PromptTuningConfig {
    /// PEFT has no default Vt; 20 is the value its examples use.
    fn default() -> PromptTuningConfig {
        PromptTuningConfig {
            num_virtual_tokens: 20,
            token_dim: None,
            num_layers: None,
            num_attention_heads: None,
            prompt_tuning_init: "RANDOM".into(),
            common: PeftFields::default(),
        }
    }
}

/// Checks Vt and the model dimensions a prompt/prefix config names against `model`.
pub fn check_dims(
    method: &str,
    model: &Gpt2,
    vt: usize,
    dims: [(&str, Option<usize>); 3],
) -> Result<()> {
    if vt == 0 {
        return Err(Error::Input(format!(
            "{method}: num_virtual_tokens = 0; give at least one virtual token"
        )));
    }
    let c = &model.config;
    if vt >= c.n_positions {
        return Err(Error::Input(format!(
            "{method}: num_virtual_tokens = {vt} leaves no room for a token in n_positions {}",
            c.n_positions
        )));
    }
    let have = [c.n_embd, c.n_layer, c.n_head];
    for ((name, want), have) in dims.iter().zip(have) {
        if let Some(want) = want.filter(|w| *w != have) {
            return Err(Error::Input(format!(
                "{method}: {name} = {want}, but the base has {have}; the adapter was made for \
                 another base"
            )));
        }
    }
    Ok(())
}

impl PromptTuningConfig {
    pub fn from_json_str(text: &str, source: &str) -> Result<PromptTuningConfig> {
        let mut f = ConfigFields::parse(text, source, "PROMPT_TUNING")?;
        let num_virtual_tokens = f.usize("num_virtual_tokens")?.unwrap_or(0);
        if f.usize("num_transformer_submodules")?.is_some_and(|n| n != 1) {
            return Err(f.err("num_transformer_submodules must be 1 for a causal LM".into()));
        }
        Ok(PromptTuningConfig {
            num_virtual_tokens,
            token_dim: f.usize("token_dim")?,
            num_layers: f.usize("num_layers")?,
            num_attention_heads: f.usize("num_attention_heads")?,
            prompt_tuning_init: f.string("prompt_tuning_init")?.unwrap_or("RANDOM".into()),
            common: f.finish("prompt tuning")?,
        })
    }

    pub fn to_json_string(&self) -> String {
        let fields = vec![
            ("peft_type", json!("PROMPT_TUNING")),
            ("num_virtual_tokens", json!(self.num_virtual_tokens)),
            ("token_dim", json!(self.token_dim)),
            ("num_layers", json!(self.num_layers)),
            ("num_attention_heads", json!(self.num_attention_heads)),
            ("num_transformer_submodules", json!(1)),
            ("prompt_tuning_init", json!(self.prompt_tuning_init)),
        ];
        let null = serde_json::Value::Null;
        let defaults = [
            ("modules_to_save", null.clone()),
            ("prompt_tuning_init_text", null.clone()),
            ("tokenizer_kwargs", null.clone()),
            ("tokenizer_name_or_path", null),
        ];
        to_json(&self.common, fields, &defaults)
    }
}

/// The model's input adapter: the prompt tables and which one each batch row uses.
pub struct PromptEncoder {
    pub num_virtual_tokens: usize,
    /// One (Vt, C) table per task; table 0 is the adapter's own (the one saved).
    tables: RefCell<Vec<Tensor>>,
    /// Row b uses table `rows[b]`; `None`: every row uses table 0.
    rows: RefCell<Option<Vec<usize>>>,
}

impl InputAdapter for PromptEncoder {
    fn num_virtual_tokens(&self) -> usize {
        self.num_virtual_tokens
    }

    fn embed(&self, tokens: &Tensor) -> Result<Option<Tensor>> {
        let (b, vt) = (tokens.shape()[0], self.num_virtual_tokens);
        let tables = self.tables.borrow();
        let rows = match self.rows.borrow().clone() {
            None => vec![0; b],
            Some(one) if one.len() == 1 => vec![one[0]; b], // one task for every row
            Some(rows) if rows.len() == b => rows,
            Some(rows) => {
                return Err(Error::Input(format!(
                    "prompt tuning: row tasks {rows:?} are set for a batch of {} rows, but this \
                     forward has {b}; set one task per row of this batch \
                     (set_row_tasks(Some(vec![..; {b}]))), or one task for every row \
                     (set_task(k), e.g. before `generate`, which runs one row), or None for task 0",
                    rows.len()
                )));
            }
        };
        let stacked = match tables.len() {
            1 => tables[0].clone(),                              // (Vt, C)
            _ => concat(&tables.iter().collect::<Vec<_>>(), 0)?, // (K·Vt, C)
        };
        let ids: Vec<u32> =
            rows.iter().flat_map(|&k| (0..vt).map(move |j| (k * vt + j) as u32)).collect();
        let ids = Tensor::from_u32(tokens.gpu(), &ids, &[b, vt])?; // (B, Vt)
        let prompts = stacked.embedding(&ids)?; // (B, Vt, C)
        Ok(Some(concat(&[&prompts, tokens], 1)?)) // (B, Vt + T, C)
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        for (k, t) in self.tables.borrow().iter().enumerate() {
            match k {
                0 => f(format!("{prefix}{PROMPT_EMBEDDINGS}"), t),
                _ => f(format!("{prefix}{PROMPT_EMBEDDINGS}.task{k}"), t),
            }
        }
    }
}

/// What [`inject`] did.
pub struct PromptTuningModel {
    pub config: PromptTuningConfig,
    pub encoder: Rc<PromptEncoder>,
}

/// Freezes the base and puts a fresh prompt table (N(0, 1) from `seed`) in front of its input.
/// Errors: Vt = 0 or ≥ n_positions, dimensions that are not the base's, an init we do not have,
/// a model that already carries an input adapter.
pub fn inject(
    model: &mut Gpt2,
    config: &PromptTuningConfig,
    seed: u64,
) -> Result<PromptTuningModel> {
    if config.prompt_tuning_init != "RANDOM" {
        return Err(Error::Input(format!(
            "prompt tuning: prompt_tuning_init {:?} is not supported (it needs PEFT's tokenizer); \
             use \"RANDOM\"",
            config.prompt_tuning_init
        )));
    }
    let mut rng = Rng::new(seed);
    let n = config.num_virtual_tokens * model.config.n_embd;
    let values: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
    attach(model, config, &values)
}

fn attach(
    model: &mut Gpt2,
    config: &PromptTuningConfig,
    table: &[f32],
) -> Result<PromptTuningModel> {
    let dims = [
        ("token_dim", config.token_dim),
        ("num_layers", config.num_layers),
        ("num_attention_heads", config.num_attention_heads),
    ];
    check_dims("prompt tuning", model, config.num_virtual_tokens, dims)?;
    if model.input_adapter.is_some() {
        return Err(Error::Input(
            "prompt tuning: the model already carries an input adapter".into(),
        ));
    }
    let (vt, c) = (config.num_virtual_tokens, model.config.n_embd);
    let t = Tensor::parameter(model.gpu(), table, &[vt, c], true)?; // (Vt, C)
    let encoder = Rc::new(PromptEncoder {
        num_virtual_tokens: vt,
        tables: RefCell::new(vec![t]),
        rows: RefCell::new(None),
    });
    model.set_trainable(|_| false)?;
    model.input_adapter = Some(encoder.clone());
    let mut config = config.clone();
    config.token_dim = Some(c);
    config.num_layers = Some(model.config.n_layer);
    config.num_attention_heads = Some(model.config.n_head);
    Ok(PromptTuningModel { config, encoder })
}

/// Reads a prompt-tuning adapter directory's config and table, checked against `model`.
fn read(model: &Gpt2, dir: &Path) -> Result<(PromptTuningConfig, Vec<f32>)> {
    let path = dir.join(crate::peft::files::CONFIG_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?;
    let config = PromptTuningConfig::from_json_str(&text, &path.display().to_string())?;
    let dims = [
        ("token_dim", config.token_dim),
        ("num_layers", config.num_layers),
        ("num_attention_heads", config.num_attention_heads),
    ];
    check_dims("prompt tuning", model, config.num_virtual_tokens, dims)
        .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
    let shape = vec![config.num_virtual_tokens, model.config.n_embd];
    let want = [(PROMPT_EMBEDDINGS.to_string(), shape)].into_iter().collect();
    let mut values = read_weights(dir, &want, config.common.base_model_name_or_path.as_deref())?;
    let table = values.remove(PROMPT_EMBEDDINGS).unwrap_or_default();
    Ok((config, table))
}

/// Loads PEFT's prompt-tuning adapter directory onto `model`; the table is trainable.
pub fn load(model: &mut Gpt2, dir: &Path) -> Result<PromptTuningModel> {
    let (config, table) = read(model, dir)?;
    attach(model, &config, &table)
}

impl PromptTuningModel {
    /// Adds another task's prompt (a prompt-tuning directory with the same Vt), frozen, for
    /// mixed-task batches; returns its task index.
    pub fn load_task(&self, model: &Gpt2, dir: &Path) -> Result<usize> {
        let (config, table) = read(model, dir)?;
        if config.num_virtual_tokens != self.encoder.num_virtual_tokens {
            return Err(Error::Input(format!(
                "{}: {} virtual tokens, but this model's prompts have {}; a mixed batch needs \
                 one Vt",
                dir.display(),
                config.num_virtual_tokens,
                self.encoder.num_virtual_tokens
            )));
        }
        let shape = [config.num_virtual_tokens, model.config.n_embd];
        let t = Tensor::parameter(model.gpu(), &table, &shape, false)?; // (Vt, C)
        let mut tables = self.encoder.tables.borrow_mut();
        tables.push(t);
        Ok(tables.len() - 1)
    }

    /// Row b of the next batches uses task `rows[b]` (0 is this adapter's own prompt); `None`:
    /// every row uses task 0; a list of one task: every row of any batch uses it. A batch of
    /// another size than the list (but one) is refused with what to pass.
    pub fn set_row_tasks(&self, rows: Option<Vec<usize>>) -> Result<()> {
        let k = self.encoder.tables.borrow().len();
        if let Some(bad) = rows.iter().flatten().find(|&&r| r >= k) {
            return Err(Error::Input(format!(
                "prompt tuning: row task {bad}, but only {k} prompt(s) are loaded (0..{k})"
            )));
        }
        *self.encoder.rows.borrow_mut() = rows;
        Ok(())
    }
}

impl PromptTuningModel {
    /// Every row of every batch (any size: `generate`'s one row too) uses task `task`.
    pub fn set_task(&self, task: usize) -> Result<()> {
        self.set_row_tasks(Some(vec![task]))
    }
}

impl Adapter for PromptTuningModel {
    fn peft_type(&self) -> &str {
        "PROMPT_TUNING"
    }
    fn named_parameters(&self, _model: &Gpt2) -> Vec<(String, Tensor)> {
        vec![(PROMPT_EMBEDDINGS.into(), self.encoder.tables.borrow()[0].clone())]
    }
    fn config_json(&self) -> String {
        let mut c = self.config.clone();
        c.common.inference_mode = true;
        c.to_json_string()
    }
}
